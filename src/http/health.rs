//! Health: `/healthz`, `/readyz` (the audit log writable, the target reachable, Kafka assigned)
//! and `/metrics`.

use super::*;

/// How long `/readyz` waits for the target to answer.
pub(super) const READY_TARGET_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `/readyz`: rules loaded, audit log writable, target reachable, Kafka partitions assigned
/// (where Kafka is configured); 503 says everything that is wrong.
pub(super) async fn ready(State(state): State<AppState>) -> Response {
    let gate = state.pipeline.gate();
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
    // Only the one that acts consumes: a cluster's follower is ready without partitions.
    if let Some(assigned) = &state.kafka_assigned
        && assigned.load(std::sync::atomic::Ordering::Relaxed) == 0
        && !matches!(gate, Gate::Following(_))
    {
        problems.push("kafka: no partition assigned yet".to_string());
    }
    // A follower is ready once caught up with the replicated log: a rolling update waits for it,
    // so the next replica is not taken down while this one could not yet take over hot.
    if let Gate::Following(_) = gate {
        match state.pipeline.replication_lag() {
            None => problems.push("replicated log: not measured yet".to_string()),
            Some(lag) => problems.extend(lag.not_caught_up()),
        }
    }
    crate::telemetry::metrics::Event::Ready { ready: problems.is_empty() }.emit();
    if problems.is_empty() {
        // A cluster replica says which it is: followers are ready too (rolling updates wait
        // for every pod), and their audit reads answer from their own copy.
        let body = match gate {
            Gate::Always => "ready\n".to_string(),
            Gate::LeadingUntil(_) => "ready: leader\n".to_string(),
            Gate::Following(Some(holder)) => format!("ready: follower of {holder}\n"),
            Gate::Following(None) => "ready: follower (no leader yet)\n".to_string(),
        };
        (StatusCode::OK, body).into_response()
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

/// In front of every route that records (intake and on-call controls): a cluster replica that
/// does not act answers 503 naming the leader, so the sender retries (Alertmanager does) and
/// reaches the leader through the Service that selects it.
pub(super) async fn only_when_acting(
    State(state): State<AppState>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return next.run(req).await;
    }
    match state.pipeline.gate() {
        gate if gate.acts_at(chrono::Utc::now()) => next.run(req).await,
        Gate::Following(Some(holder)) => ApiError::at(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("this replica is a follower of {holder}: send to the leader"),
            json!({ "leader": holder }),
        )
        .into_response(),
        _ => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "this replica does not lead now: try again shortly")
            .into_response(),
    }
}
