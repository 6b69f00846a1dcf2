//! backstop: an always-on rollback responder for Kubernetes and Istio.
//!
//! Data flows one way: **sources** turn bytes into events; the **pipeline** records them and
//! hands them to the **rules** engine, which returns decisions; the **state** (the fold of the
//! audit log) and its guards vet them; **actions** change a **target**; the **audit** log
//! records each step. `docs/design.md` walks the tree along that path.

pub mod actions;
pub mod audit;
pub mod cluster;
pub mod config;

pub mod digest;
pub mod event;
pub mod failpoint;
pub mod feedback;
pub mod fsutil;
pub mod http;
pub mod kafka;
pub mod pipeline;
pub mod prometheus;
pub mod promotion;
pub mod redact;
pub mod reload;
pub mod rules;
pub mod secret;
pub mod server;
pub mod sinks;
pub mod sources;
pub mod state;

pub mod target;
pub mod task;
pub mod telemetry;
pub mod template;
#[cfg(test)]
mod testing;
pub mod when;
pub mod yaml;
