//! What the server runs side by side and stops together: the inputs (the HTTP API, the Kafka
//! consumer) and the outputs (the audit topic publisher). Each runs until its shutdown token is
//! cancelled, then finishes what is in flight and returns.

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

/// A task failed to start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[error("source {source_name}: {message}")]
pub struct TaskError {
    /// The task's name (`http`, `kafka`, `audit-topic`), as the messages have always said it.
    pub source_name: &'static str,
    pub message: String,
}

/// A long-running input or output.
pub trait Task: Send + 'static {
    fn name(&self) -> &'static str;
    /// Run until `shutdown` is cancelled; then stop taking new input, finish what is in flight
    /// (recorded in the audit log) and return.
    fn run(self: Box<Self>, shutdown: CancellationToken) -> BoxFuture<'static, Result<(), TaskError>>;
}
