//! Health: `/healthz`, `/readyz` (the audit log writable, the target reachable, Kafka assigned)
//! and `/metrics`.

use super::*;

/// How long `/readyz` waits for the target to answer.
pub(super) const READY_TARGET_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `/readyz`: rules loaded, audit log writable, target reachable, Kafka partitions assigned
/// (where Kafka is configured); 503 says everything that is wrong.
pub(super) async fn ready(State(state): State<AppState>) -> Response {
    let mut problems = Vec::new();
    if !state.pipeline.audit().healthy() {
        problems.push("audit log is not writable (last write failed)".to_string());
    }
    if state.pipeline.rules().rules().is_empty() {
        problems.push("no rules loaded".to_string());
    }
    match tokio::time::timeout(READY_TARGET_TIMEOUT, state.pipeline.target().check()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => problems.push(format!("target: {e}")),
        Err(_) => problems.push(format!("target: no answer within {}s", READY_TARGET_TIMEOUT.as_secs())),
    }
    if let Some(assigned) = &state.kafka_assigned
        && assigned.load(std::sync::atomic::Ordering::Relaxed) == 0
    {
        problems.push("kafka: no partition assigned yet".to_string());
    }
    crate::telemetry::metrics::Event::Ready { ready: problems.is_empty() }.emit();
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", problems.join("; "))).into_response()
    }
}

/// `/metrics`: backstop's own metrics, Prometheus text format (OpenMetrics).
pub(super) async fn metrics_endpoint() -> Response {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        crate::telemetry::metrics::render(),
    )
        .into_response()
}
