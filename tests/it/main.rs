//! Integration tests: the real binary on loopback, and the real Alertmanager delivering to it.

mod support;

mod audit_format;
mod audit_topic;
mod browser;
mod chain;
mod cli;
mod cluster;
mod crash;
mod deploy;
mod end_to_end;
mod faults;
mod helm;
mod hostile;
mod kafka;
mod kube_emulator;
mod kubernetes;
mod lease;
mod lifecycle;
mod module_graph;
mod otlp;
mod promote;
mod promtool;
mod replication;
mod retries;
mod serve;
mod stepdown;
mod verification;
