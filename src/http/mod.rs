//! The HTTP API: the Alertmanager receiver, on-call controls and audit queries.

pub mod auth;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::audit::{self, Kind};
use crate::event::SourceKind;
use crate::pipeline::{Pipeline, PipelineError, Rejection};
use crate::sources::alertmanager::{self, ParseError};
use crate::sources::message;
use crate::target::ObjectRef;
use auth::Auth;

/// Past the body limit, keep reading (to record the size and hash) up to this many bytes.
const MAX_DRAIN: usize = 64 << 20;

#[derive(Clone)]
pub struct AppState {
    pub pipeline: Arc<Pipeline>,
    pub auth: Auth,
    pub max_body_bytes: usize,
    /// Partitions assigned to the Kafka consumer, when there is one (for `/readyz`).
    pub kafka_assigned: Option<Arc<std::sync::atomic::AtomicUsize>>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/alertmanager", post(alertmanager_webhook))
        .route("/v1/feedback", post(feedback_intake))
        .route("/v1/flagger/rollback", post(flagger_rollback))
        .route("/v1/actions", post(act))
        .route("/v1/actions/{id}/undo", post(undo))
        .route("/v1/pause", post(pause).get(pauses))
        .route("/v1/resume", post(resume))
        .route("/v1/audit", get(audit_query))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics_endpoint))
        .with_state(state)
}

/// Our error body: `{"error": {"status", "message", ...where}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    location: Value,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), location: Value::Null }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "status": self.status.as_u16(), "message": self.message });
        if let Value::Object(loc) = self.location
            && let Some(e) = error.as_object_mut()
        {
            e.extend(loc)
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}

impl From<PipelineError> for ApiError {
    fn from(e: PipelineError) -> ApiError {
        let status = match e {
            PipelineError::Audit(_) => StatusCode::SERVICE_UNAVAILABLE,
            PipelineError::UnknownRule(_) | PipelineError::UnknownAction(_) => StatusCode::NOT_FOUND,
            PipelineError::NeedsAlert(_) => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, e.to_string())
    }
}

/// A JSON body whose rejections are our own error body.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(ApiError::new(rejection.status(), rejection.body_text())),
        }
    }
}

fn check_auth(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if state.auth.allows(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong credentials"))
    }
}

/// Read the body up to `limit`; past it, drain (bounded) to learn size and hash. Returns the
/// bytes kept, the total size, the SHA-256 of everything read, and whether it was over the limit.
async fn read_body(body: Body, limit: usize) -> (Vec<u8>, usize, String, bool) {
    let mut kept = Vec::new();
    let mut hasher = Sha256::new();
    let mut size = 0usize;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { break };
        size += chunk.len();
        hasher.update(&chunk);
        if kept.len() < limit {
            let room = limit - kept.len();
            kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        if size > MAX_DRAIN {
            break;
        }
    }
    (kept, size, hex::encode(hasher.finalize()), size > limit)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).and_then(|v| v.split(';').next()).is_some_and(|m| {
        let m = m.trim().to_ascii_lowercase();
        m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
    })
}

/// What every intake checks before parsing: credentials, size, content type.
fn precheck(
    state: &AppState,
    headers: &HeaderMap,
    size: usize,
    over: bool,
    type_ok: bool,
    send: &str,
) -> Option<ApiError> {
    if !state.auth.allows(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes())) {
        Some(ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong credentials"))
    } else if over {
        Some(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body of {size} bytes exceeds the limit of {} bytes", state.max_body_bytes),
        ))
    } else if !type_ok {
        let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("none");
        Some(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type `{ct}` is not supported; send {send}"),
        ))
    } else {
        None
    }
}

/// Record a request that is refused; Err (503) when the log cannot take even that.
async fn record_rejection(
    state: &AppState,
    source: &str,
    err: &ApiError,
    size: usize,
    bytes: &[u8],
    sha: String,
) -> Result<(), Response> {
    let origin = json!({ "status": err.status.as_u16(), "location": err.location });
    let rejection = Rejection { source, origin, reason: err.message.clone(), size, body: bytes, body_sha256: sha };
    match state.pipeline.reject(rejection).await {
        Ok(()) => Ok(()),
        Err(e) => {
            warn!(error = %e, "could not record a rejected request");
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("audit log unavailable: {e}")).into_response())
        }
    }
}

fn is_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/x-ndjson"))
}

/// `POST /v1/feedback`: one feedback event (JSON, or a CloudEvent in structured mode, or in
/// binary mode with `ce-` headers), or many as newline-delimited JSON
/// (`application/x-ndjson`, one event per line). Each event is recorded before the answer;
/// in a batch, a bad line is refused (and recorded) with its line number and the others are
/// taken. The answer lists the actions feedback rules took.
async fn feedback_intake(state: State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let span = tracing::info_span!("intake", source = "http", http.route = "/v1/feedback", otel.kind = "server");
    crate::telemetry::trace::set_parent_from(&span, headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
    tracing::Instrument::instrument(receive_feedback(state, headers, body), span).await
}

async fn receive_feedback(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let (bytes, size, sha, over) = read_body(body, state.max_body_bytes).await;
    let ndjson = is_ndjson(&headers);
    let send = "application/json, application/cloudevents+json or application/x-ndjson";
    if let Some(err) = precheck(&state, &headers, size, over, ndjson || is_json(&headers), send) {
        if let Err(unavailable) = record_rejection(&state, "http", &err, size, &bytes, sha).await {
            return unavailable;
        }
        return err.into_response();
    }
    // The HTTP binding's `ce-` headers are the Kafka binding's `ce_` ones.
    let ce: Vec<(String, Vec<u8>)> = headers
        .iter()
        .filter_map(|(k, v)| k.as_str().strip_prefix("ce-").map(|rest| (format!("ce_{rest}"), v.as_bytes().to_vec())))
        .collect();
    let ce: Vec<(&str, &[u8])> = ce.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
    let lines: Vec<(usize, &[u8])> = if ndjson {
        bytes
            .split(|b| *b == b'\n')
            .enumerate()
            .map(|(i, l)| (i + 1, l))
            .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
            .collect()
    } else {
        vec![(1, &bytes[..])]
    };
    let (mut events, mut refused) = (Vec::new(), Vec::new());
    for (line, payload) in &lines {
        let parsed = message::parse(message::Expect::Feedback, if ndjson { &[] } else { &ce }, payload);
        let error = match parsed {
            Ok(message::Message::Feedback(f)) => {
                events.push((f, json!({ "http": { "line": line, "sha256": sha } })));
                continue;
            }
            Ok(message::Message::Alerts(_)) => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                message: "this is an alert: send alerts to /v1/alertmanager".into(),
                location: json!({ "line": line }),
            },
            Err(e) => ApiError {
                status: if e.path.is_empty() { StatusCode::BAD_REQUEST } else { StatusCode::UNPROCESSABLE_ENTITY },
                message: e.to_string(),
                location: json!({ "line": line, "path": e.path }),
            },
        };
        let body_sha = crate::pipeline::sha256_hex(payload);
        if let Err(unavailable) = record_rejection(&state, "http", &error, payload.len(), payload, body_sha).await {
            return unavailable;
        }
        if !ndjson {
            return error.into_response();
        }
        refused.push(json!({ "line": line, "status": error.status.as_u16(), "error": error.message }));
    }
    let batch: Vec<(&message::Feedback, Value)> = events.iter().map(|(f, o)| (f, o.clone())).collect();
    let reports = match state.pipeline.feedback_batch(&batch, SourceKind::Http).await {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let duplicates = reports.iter().filter(|r| r.duplicate).count();
    let results: Vec<_> = reports.into_iter().flat_map(|r| r.reports).collect();
    let status = if refused.is_empty() || refused.len() < lines.len() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let body = json!({
        "received": lines.len() - refused.len(),
        "duplicates": duplicates,
        "refused": refused,
        "results": results,
    });
    (status, Json(body)).into_response()
}

/// `POST /v1/alertmanager`, in an `intake` span whose parent is the request's W3C trace context.
async fn alertmanager_webhook(state: State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let span =
        tracing::info_span!("intake", source = "alertmanager", http.route = "/v1/alertmanager", otel.kind = "server");
    crate::telemetry::trace::set_parent_from(&span, headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
    tracing::Instrument::instrument(receive_alerts(state, headers, body), span).await
}

async fn receive_alerts(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let (bytes, size, sha, over) = read_body(body, state.max_body_bytes).await;
    let rejection = precheck(&state, &headers, size, over, is_json(&headers), "application/json");
    let parsed = match rejection {
        Some(e) => Err(e),
        None => alertmanager::parse(&bytes).map_err(|e| {
            let (status, location) = match &e {
                ParseError::Syntax { line, column, .. } => {
                    (StatusCode::BAD_REQUEST, json!({ "line": line, "column": column }))
                }
                ParseError::Invalid { path, .. } => (StatusCode::UNPROCESSABLE_ENTITY, json!({ "path": path })),
            };
            ApiError { status, message: e.to_string(), location }
        }),
    };
    let webhook = match parsed {
        Ok(w) => w,
        Err(err) => {
            if let Err(unavailable) = record_rejection(&state, "alertmanager", &err, size, &bytes, sha).await {
                return unavailable;
            }
            return err.into_response();
        }
    };
    let context = json!({
        "receiver": webhook.receiver,
        "groupKey": webhook.group_key,
        "truncatedAlerts": webhook.truncated_alerts,
        "externalURL": webhook.external_url,
        "sha256": sha,
    });
    if webhook.truncated_alerts > 0 {
        warn!(truncated = webhook.truncated_alerts, group = %webhook.group_key, "Alertmanager truncated this group (max_alerts)");
    }
    match state.pipeline.alerts(&webhook.events(), context).await {
        Ok(results) => Json(json!({
            "received": webhook.alerts.len(),
            "truncatedAlerts": webhook.truncated_alerts,
            "results": results,
        }))
        .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActRequest {
    rule: String,
    target: String,
    reason: String,
    #[serde(default)]
    actor: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlRequest {
    #[serde(default)]
    target: Option<String>,
    reason: String,
    #[serde(default)]
    actor: Option<String>,
}

fn actor(given: Option<String>) -> String {
    given.filter(|a| !a.trim().is_empty()).unwrap_or_else(|| "unknown".into())
}

fn parse_target(t: &str) -> Result<ObjectRef, ApiError> {
    t.parse().map_err(|e: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e))
}

fn require_reason(reason: &str) -> Result<(), ApiError> {
    if reason.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "a reason is required: say why, for the audit trail",
        ));
    }
    Ok(())
}

async fn act(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ActRequest>,
) -> Result<Response, ApiError> {
    check_auth(&state, &headers)?;
    require_reason(&req.reason)?;
    let target = parse_target(&req.target)?;
    let report = state.pipeline.act(&req.rule, &target, &actor(req.actor), &req.reason).await?;
    Ok(Json(report).into_response())
}

async fn undo(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ControlRequest>,
) -> Result<Response, ApiError> {
    check_auth(&state, &headers)?;
    require_reason(&req.reason)?;
    let report = state.pipeline.undo(&id, &actor(req.actor), &req.reason).await?;
    Ok(Json(report).into_response())
}

async fn control(state: AppState, headers: HeaderMap, req: ControlRequest, pause: bool) -> Result<Response, ApiError> {
    check_auth(&state, &headers)?;
    require_reason(&req.reason)?;
    let target = req.target.as_deref().map(parse_target).transpose()?;
    let record = state.pipeline.pause(target.as_ref(), pause, &actor(req.actor), &req.reason).await?;
    Ok(Json(json!({ "recorded": record, "pauses": state.pipeline.pauses().await })).into_response())
}

async fn pause(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ControlRequest>,
) -> Result<Response, ApiError> {
    control(state, headers, req, true).await
}

async fn resume(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ControlRequest>,
) -> Result<Response, ApiError> {
    control(state, headers, req, false).await
}

async fn pauses(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_auth(&state, &headers)?;
    Ok(Json(state.pipeline.pauses().await).into_response())
}

/// Query parameters of `GET /v1/audit`, the same as `backstop audit query`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    pub since: Option<String>,
    pub until: Option<String>,
    pub rule: Option<String>,
    pub target: Option<String>,
    pub event: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<String>,
    pub limit: Option<usize>,
}

impl AuditParams {
    /// Times are RFC 3339 or a duration back from now (`1h`).
    pub fn to_filter(&self) -> Result<audit::Filter, String> {
        let time = |v: &Option<String>| -> Result<Option<chrono::DateTime<chrono::Utc>>, String> {
            let Some(s) = v else { return Ok(None) };
            if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
                return Ok(Some(t.with_timezone(&chrono::Utc)));
            }
            let d = humantime::parse_duration(s)
                .map_err(|_| format!("`{s}` is neither RFC 3339 nor a duration like 1h"))?;
            Ok(Some(chrono::Utc::now() - chrono::Duration::from_std(d).map_err(|e| e.to_string())?))
        };
        let kinds = match &self.outcome {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|k| k.trim().parse::<Kind>().map_err(|_| format!("`{k}` is not an outcome")))
                .collect::<Result<_, _>>()?,
        };
        Ok(audit::Filter {
            since: time(&self.since)?,
            until: time(&self.until)?,
            rule: self.rule.clone(),
            target: self.target.clone(),
            event_id: self.event.clone(),
            action_id: self.action.clone(),
            kinds,
            after_seq: None,
            limit: self.limit,
        })
    }
}

async fn audit_query(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    check_auth(&state, &headers)?;
    let Query(params) = params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let filter = params.to_filter().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let dir = state.pipeline.audit().dir().to_path_buf();
    let records = tokio::task::spawn_blocking(move || audit::query(&dir, &filter))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(json!({ "records": records })).into_response())
}

/// `POST /v1/flagger/rollback`: Flagger's `rollback` webhook. Flagger posts `{name, namespace,
/// phase, checksum, type, metadata}` during analysis; 200 tells it to roll back (a rule decided
/// against that canary and the decision is still in force), 412 to go on. No credentials:
/// Flagger's webhooks cannot send them, and the answer reveals only yes or no (restrict who can
/// reach it with a NetworkPolicy).
async fn flagger_rollback(State(state): State<AppState>, body: Body) -> Response {
    let (bytes, size, sha, over) = read_body(body, state.max_body_bytes).await;
    let parsed: Result<Value, ApiError> = if over {
        Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("body of {size} bytes exceeds the limit")))
    } else {
        serde_json::from_slice::<Value>(&bytes).map_err(|e| ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("invalid JSON: {e}"),
            location: json!({ "line": e.line(), "column": e.column() }),
        })
    };
    let fields = parsed.and_then(|v| match (v["namespace"].as_str(), v["name"].as_str()) {
        (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => Ok((ns.to_string(), name.to_string(), v)),
        _ => Err(ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: "Flagger's payload needs `name` and `namespace`".into(),
            location: json!({ "path": if v["namespace"].as_str().is_none() { "namespace" } else { "name" } }),
        }),
    });
    let (namespace, name, payload) = match fields {
        Ok(f) => f,
        Err(err) => {
            if let Err(unavailable) = record_rejection(&state, "flagger", &err, size, &bytes, sha).await {
                return unavailable;
            }
            return err.into_response();
        }
    };
    match state.pipeline.flagger_rollback(&namespace, &name, &payload).await {
        Ok(Some(v)) => Json(json!({
            "rollback": true,
            "canary": format!("{namespace}/{name}"),
            "rule": v.rule,
            "action_id": v.action_id,
            "since": v.since,
            "until": v.until,
        }))
        .into_response(),
        Ok(None) => (
            StatusCode::PRECONDITION_FAILED,
            Json(json!({
                "rollback": false,
                "canary": format!("{namespace}/{name}"),
                "reason": "no decision against this canary is in force",
            })),
        )
            .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// How long `/readyz` waits for the target to answer.
const READY_TARGET_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `/readyz`: rules loaded, audit log writable, target reachable, Kafka partitions assigned
/// (where Kafka is configured); 503 says everything that is wrong.
async fn ready(State(state): State<AppState>) -> Response {
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
async fn metrics_endpoint() -> Response {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        crate::telemetry::metrics::render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests;
