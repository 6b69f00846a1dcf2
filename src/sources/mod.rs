//! Sources turn bytes into events ([`crate::event::Alert`]) and hand them to the pipeline. Each
//! transport parses its own wire format in a pure module (`alertmanager`); the transports
//! themselves (the HTTP server today, Kafka later) implement [`Source`] and run as tasks that the
//! server starts and stops together.

pub mod alertmanager;
#[cfg(test)]
mod fuzzing;
pub mod kafka;
pub mod message;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
#[error("source {source_name}: {message}")]
pub struct SourceError {
    pub source_name: &'static str,
    pub message: String,
}

/// A long-running input.
pub trait Source: Send + 'static {
    fn name(&self) -> &'static str;
    /// Run until `shutdown` is cancelled; then stop taking new input, finish what is in flight
    /// (recorded in the audit log) and return.
    fn run(self: Box<Self>, shutdown: CancellationToken) -> BoxFuture<'static, Result<(), SourceError>>;
}
