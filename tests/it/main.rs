//! Integration tests: the real binary on loopback, and the real Alertmanager delivering to it.

mod support;

mod cli;
mod end_to_end;
mod serve;
