//! backstop's own telemetry: Prometheus metrics (`metrics`) and OpenTelemetry traces (`trace`).

pub mod metrics;
pub mod trace;
