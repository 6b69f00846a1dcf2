//! Sinks copy what backstop recorded to somewhere else. They read the audit log after the fact
//! and never sit in the alert path: a sink that cannot deliver falls behind, it does not slow or
//! stop alert handling.

pub mod audit_topic;
