//! Prometheus, asked twice: before acting, does the alert's claim still hold ([`confirm`]); after
//! acting, did traffic really move ([`verification`]). The client (`client`: the HTTP API behind
//! the [`Prometheus`] trait) is apart from those pure checks, which tests drive with
//! [`FixedValue`].

mod client;
pub mod confirm;
pub mod verification;

pub use client::{FixedValue, Prometheus, PrometheusClient, PrometheusConfig, SharedPrometheus};
