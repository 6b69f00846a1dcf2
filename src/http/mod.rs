//! The HTTP API: the Alertmanager receiver, on-call controls and audit queries.

pub mod auth;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
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
use crate::sources::alertmanager::{self, MAX_MESSAGE, MAX_PATH, ParseError, elide};
use crate::sources::message;
use crate::target::ObjectRef;
use auth::Auth;

/// Past the body limit, keep reading (to record the size and hash) up to this many bytes.
const MAX_DRAIN: usize = 64 << 20;

/// In a feedback batch, refused lines recorded one by one (each deduplicated by its hash); past
/// this many, the rest is recorded once, as the whole body, with their count.
const MAX_RECORDED_LINES: usize = 16;
/// Refused lines listed in a batch's answer; past this many, `refused_omitted` counts the rest.
const MAX_LISTED_LINES: usize = 100;

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
        ApiError::at(status, message, Value::Null)
    }

    /// With where (`line`, `column`, `path`, …). The message is bounded: it may echo what was
    /// sent, and goes to the answer and the audit record.
    fn at(status: StatusCode, message: impl Into<String>, location: Value) -> ApiError {
        ApiError { status, message: elide(&message.into(), MAX_MESSAGE), location }
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

/// A JSON body of an authenticated request, whose rejections are our own error body. The
/// credentials are checked first: a request without them is not parsed (nor answered with what
/// is wrong in it).
pub struct ApiJson<T>(pub T);

impl<T: serde::de::DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        check_auth(state, req.headers())?;
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

/// A request body as read: the bytes kept (up to the limit), the size and SHA-256 of everything
/// read, whether it was over the limit, and why it could not be read whole (too slow, broken).
struct BodyRead {
    bytes: Vec<u8>,
    size: usize,
    sha: String,
    over: bool,
    failed: Option<ApiError>,
}

/// The bounds `serve` puts on requests (the defaults for a router served otherwise).
type Limits = Option<axum::Extension<ServerLimits>>;

/// Read the body up to `limit`; past it, drain (bounded) to learn size and hash. All of it must
/// arrive within the limits' `body_read_timeout`.
async fn read_body(body: Body, limit: usize, limits: Limits) -> BodyRead {
    let timeout = limits.map(|l| l.0).unwrap_or_default().body_read_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut kept = Vec::new();
    let mut hasher = Sha256::new();
    let mut size = 0usize;
    let mut failed = None;
    let mut stream = body.into_data_stream();
    loop {
        let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(None) => break,
            Ok(Some(Ok(chunk))) => chunk,
            Ok(Some(Err(e))) => {
                failed = Some(ApiError::at(
                    StatusCode::BAD_REQUEST,
                    format!("request body could not be read (after {size} bytes): {e}"),
                    json!({ "received_bytes": size }),
                ));
                break;
            }
            Err(_) => {
                failed = Some(ApiError::at(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("request body not complete within {}s ({size} bytes received)", timeout.as_secs_f64()),
                    json!({ "received_bytes": size }),
                ));
                break;
            }
        };
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
    BodyRead { bytes: kept, size, sha: hex::encode(hasher.finalize()), over: size > limit, failed }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).and_then(|v| v.split(';').next()).is_some_and(|m| {
        let m = m.trim().to_ascii_lowercase();
        m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
    })
}

/// What every intake checks before parsing: credentials, a body read whole, size, content type.
fn precheck(state: &AppState, headers: &HeaderMap, body: &mut BodyRead, type_ok: bool, send: &str) -> Option<ApiError> {
    if !state.auth.allows(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes())) {
        Some(ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong credentials"))
    } else if let Some(failed) = body.failed.take() {
        Some(failed)
    } else if body.over {
        Some(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body of {} bytes exceeds the limit of {} bytes", body.size, state.max_body_bytes),
        ))
    } else if !type_ok {
        let ct = headers.get(header::CONTENT_TYPE).map(|v| String::from_utf8_lossy(v.as_bytes()));
        let ct = elide(ct.as_deref().unwrap_or("none"), MAX_PATH);
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
    let shown = crate::redact::redact(&bytes[..bytes.len().min(crate::pipeline::REJECTED_PREFIX)]);
    let rejection = Rejection { source, origin, reason: err.message.clone(), size, body: &shown, body_sha256: sha };
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
async fn feedback_intake(state: State<AppState>, limits: Limits, headers: HeaderMap, body: Body) -> Response {
    let span = tracing::info_span!("intake", source = "http", http.route = "/v1/feedback", otel.kind = "server");
    crate::telemetry::trace::set_parent_from(&span, headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
    tracing::Instrument::instrument(receive_feedback(state, limits, headers, body), span).await
}

/// The non-blank lines of an NDJSON body, with their 1-based line numbers.
pub fn ndjson_lines(bytes: &[u8]) -> Vec<(usize, &[u8])> {
    bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
        .collect()
}

/// One feedback payload (a line of a batch, or the whole body): the event, or why not and where.
fn feedback_event(ce: &[(&str, &[u8])], line: usize, payload: &[u8]) -> Result<crate::event::Feedback, ApiError> {
    match message::parse(message::Expect::Feedback, ce, payload) {
        Ok(message::Message::Feedback(f)) => Ok(f),
        Ok(message::Message::Alerts(_)) => Err(ApiError::at(
            StatusCode::UNPROCESSABLE_ENTITY,
            "this is an alert: send alerts to /v1/alertmanager",
            json!({ "line": line }),
        )),
        Err(e) => Err(ApiError::at(
            if e.path.is_empty() { StatusCode::BAD_REQUEST } else { StatusCode::UNPROCESSABLE_ENTITY },
            e.to_string(),
            json!({ "line": line, "path": e.path }),
        )),
    }
}

async fn receive_feedback(State(state): State<AppState>, limits: Limits, headers: HeaderMap, body: Body) -> Response {
    let mut body = read_body(body, state.max_body_bytes, limits).await;
    let ndjson = is_ndjson(&headers);
    let send = "application/json, application/cloudevents+json or application/x-ndjson";
    if let Some(err) = precheck(&state, &headers, &mut body, ndjson || is_json(&headers), send) {
        if let Err(unavailable) = record_rejection(&state, "http", &err, body.size, &body.bytes, body.sha).await {
            return unavailable;
        }
        return err.into_response();
    }
    let BodyRead { bytes, sha, size, .. } = body;
    // The HTTP binding's `ce-` headers are the Kafka binding's `ce_` ones.
    let ce: Vec<(String, Vec<u8>)> = headers
        .iter()
        .filter_map(|(k, v)| k.as_str().strip_prefix("ce-").map(|rest| (format!("ce_{rest}"), v.as_bytes().to_vec())))
        .collect();
    let ce: Vec<(&str, &[u8])> = ce.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
    if !ndjson {
        let event = match feedback_event(&ce, 1, &bytes) {
            Ok(f) => f,
            Err(error) => {
                if let Err(unavailable) = record_rejection(&state, "http", &error, size, &bytes, sha).await {
                    return unavailable;
                }
                return error.into_response();
            }
        };
        return feedback_answer(
            &state,
            vec![(event, json!({ "http": { "line": 1, "sha256": sha } }))],
            1,
            Vec::new(),
            0,
        )
        .await;
    }
    let lines = ndjson_lines(&bytes);
    let (mut events, mut refused, mut omitted) = (Vec::new(), Vec::new(), 0usize);
    // Refused lines past the first MAX_RECORDED_LINES: how many, the first few, the first reason.
    let (mut recorded, mut beyond, mut beyond_lines, mut beyond_reason) = (0usize, 0usize, Vec::new(), None);
    for (line, payload) in &lines {
        let error = match feedback_event(&[], *line, payload) {
            Ok(f) => {
                events.push((f, json!({ "http": { "line": line, "sha256": sha } })));
                continue;
            }
            Err(error) => error,
        };
        if recorded < MAX_RECORDED_LINES {
            recorded += 1;
            let line_sha = crate::digest::sha256_hex(payload);
            if let Err(unavailable) = record_rejection(&state, "http", &error, payload.len(), payload, line_sha).await {
                return unavailable;
            }
        } else {
            beyond += 1;
            if beyond_lines.len() < 8 {
                beyond_lines.push(json!({ "line": line, "status": error.status.as_u16() }));
            }
            beyond_reason.get_or_insert_with(|| format!("line {line}: {}", error.message));
        }
        if refused.len() < MAX_LISTED_LINES {
            refused.push(json!({ "line": line, "status": error.status.as_u16(), "error": error.message }));
        } else {
            omitted += 1;
        }
    }
    if let Some(first) = beyond_reason {
        let summary = ApiError::at(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{beyond} more lines refused (past the first {MAX_RECORDED_LINES}, recorded one by one); {first}"),
            json!({ "lines": beyond_lines, "refused_lines": beyond }),
        );
        if let Err(unavailable) = record_rejection(&state, "http", &summary, size, &bytes, sha).await {
            return unavailable;
        }
    }
    feedback_answer(&state, events, lines.len(), refused, omitted).await
}

/// Record and count the events taken, run the feedback rules, and answer.
async fn feedback_answer(
    state: &AppState,
    events: Vec<(crate::event::Feedback, Value)>,
    lines: usize,
    refused: Vec<Value>,
    omitted: usize,
) -> Response {
    let taken = events.len();
    let batch: Vec<(&crate::event::Feedback, &Value)> = events.iter().map(|(f, o)| (f, o)).collect();
    let reports = match state.pipeline.feedback_batch(&batch, SourceKind::Http).await {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let duplicates = reports.iter().filter(|r| r.duplicate).count();
    let results: Vec<_> = reports.into_iter().flat_map(|r| r.reports).collect();
    let status = if taken > 0 || lines == 0 { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
    let mut body = json!({
        "received": taken,
        "duplicates": duplicates,
        "refused": refused,
        "results": results,
    });
    if omitted > 0 {
        body["refused_omitted"] = json!(omitted);
    }
    (status, Json(body)).into_response()
}

/// `POST /v1/alertmanager`, in an `intake` span whose parent is the request's W3C trace context.
async fn alertmanager_webhook(state: State<AppState>, limits: Limits, headers: HeaderMap, body: Body) -> Response {
    let span =
        tracing::info_span!("intake", source = "alertmanager", http.route = "/v1/alertmanager", otel.kind = "server");
    crate::telemetry::trace::set_parent_from(&span, headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
    tracing::Instrument::instrument(receive_alerts(state, limits, headers, body), span).await
}

async fn receive_alerts(State(state): State<AppState>, limits: Limits, headers: HeaderMap, body: Body) -> Response {
    let mut body = read_body(body, state.max_body_bytes, limits).await;
    let rejection = precheck(&state, &headers, &mut body, is_json(&headers), "application/json");
    let BodyRead { bytes, size, sha, .. } = body;
    let parsed = match rejection {
        Some(e) => Err(e),
        None => alertmanager::parse(&bytes).map_err(|e| {
            let (status, location) = match &e {
                ParseError::Syntax { line, column, .. } => {
                    (StatusCode::BAD_REQUEST, json!({ "line": line, "column": column }))
                }
                ParseError::Invalid { path, .. } => (StatusCode::UNPROCESSABLE_ENTITY, json!({ "path": path })),
            };
            ApiError::at(status, e.to_string(), location)
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
    let (received, truncated) = (webhook.alerts.len(), webhook.truncated_alerts);
    match state.pipeline.alerts(&webhook.into_events(), context).await {
        Ok(results) => {
            // An action that failed (the target could not be read or written in time) is worth
            // another try: 503 makes Alertmanager send the group again, with its backoff. The
            // failure freed the alert's key, so the retry acts; the others are duplicates.
            let failed = results.iter().any(|r| r.outcome == Kind::Failed);
            let status = if failed { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
            let body = json!({
                "received": received,
                "truncatedAlerts": truncated,
                "results": results,
                "retry": failed,
            });
            (status, Json(body)).into_response()
        }
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

async fn act(State(state): State<AppState>, ApiJson(req): ApiJson<ActRequest>) -> Result<Response, ApiError> {
    require_reason(&req.reason)?;
    let target = parse_target(&req.target)?;
    let report = state.pipeline.act(&req.rule, &target, &actor(req.actor), &req.reason).await?;
    Ok(Json(report).into_response())
}

async fn undo(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ControlRequest>,
) -> Result<Response, ApiError> {
    require_reason(&req.reason)?;
    let report = state.pipeline.undo(&id, &actor(req.actor), &req.reason).await?;
    Ok(Json(report).into_response())
}

/// Pause or resume (credentials were checked by [`ApiJson`]).
async fn control(state: AppState, req: ControlRequest, pause: bool) -> Result<Response, ApiError> {
    require_reason(&req.reason)?;
    let target = req.target.as_deref().map(parse_target).transpose()?;
    let record = state.pipeline.pause(target.as_ref(), pause, &actor(req.actor), &req.reason).await?;
    Ok(Json(json!({ "recorded": record, "pauses": state.pipeline.pauses().await })).into_response())
}

async fn pause(State(state): State<AppState>, ApiJson(req): ApiJson<ControlRequest>) -> Result<Response, ApiError> {
    control(state, req, true).await
}

async fn resume(State(state): State<AppState>, ApiJson(req): ApiJson<ControlRequest>) -> Result<Response, ApiError> {
    control(state, req, false).await
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
async fn flagger_rollback(State(state): State<AppState>, limits: Limits, body: Body) -> Response {
    let BodyRead { bytes, size, sha, over, failed } = read_body(body, state.max_body_bytes, limits).await;
    let parsed: Result<Value, ApiError> = if let Some(failed) = failed {
        Err(failed)
    } else if over {
        Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("body of {size} bytes exceeds the limit")))
    } else {
        serde_json::from_slice::<Value>(&bytes).map_err(|e| {
            ApiError::at(
                StatusCode::BAD_REQUEST,
                format!("invalid JSON: {e}"),
                json!({ "line": e.line(), "column": e.column() }),
            )
        })
    };
    let fields = parsed.and_then(|v| match (v["namespace"].as_str(), v["name"].as_str()) {
        (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => Ok((ns.to_string(), name.to_string(), v)),
        _ => Err(ApiError::at(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Flagger's payload needs `name` and `namespace`",
            json!({ "path": if v["namespace"].as_str().is_none() { "namespace" } else { "name" } }),
        )),
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

// ---------------------------------------------------------------------------------------------
// The server: HTTP/1.1, with bounds on what a connection may send and how slowly

/// What a connection may send, and how slowly. (The body's size is the router's `max_body_bytes`.)
/// `serve` hands them to the handlers as a request extension; a router served otherwise (tests)
/// uses the defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerLimits {
    /// The request head (request line and headers) must arrive within this once the connection
    /// is open or the previous response is sent: a client sending nothing, or its headers a
    /// byte at a time, is disconnected here. So is an idle keep-alive connection.
    pub header_read_timeout: Duration,
    /// Most header fields in a request (431 with our error body past it). Four times as many
    /// are refused by hyper itself, with an empty 431.
    pub max_headers: usize,
    /// Most bytes of a request head (431 with our error body past it). Four times as many are
    /// refused by hyper itself, with an empty 431; that is also what a connection buffers.
    pub max_head_bytes: usize,
    /// A request's whole body must arrive within this once its head has: a client that trickles
    /// it is answered 408 at this deadline, and the refusal recorded.
    pub body_read_timeout: Duration,
    /// Connections served at once. Past it no more are accepted: they wait in the kernel's
    /// listen backlog until one closes.
    pub max_connections: usize,
    /// Requests with a body (anything but GET and HEAD) handled at once, from reading the body
    /// to the answer. Past it a request waits, its body unread (TCP holds the sender back),
    /// until one is answered: memory stays bounded by about this many bodies. GET (health,
    /// readiness, metrics, the audit query) is never held up by uploads.
    pub max_concurrent_requests: usize,
}

impl Default for ServerLimits {
    fn default() -> ServerLimits {
        ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            max_headers: 100,
            max_head_bytes: 16 << 10,
            body_read_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_concurrent_requests: 64,
        }
    }
}

/// Serve `app` on `listener` until `shutdown`; then stop accepting, let requests in flight
/// finish (idle connections close at once) and return when every connection has ended.
///
/// `axum::serve` sets no timer, so hyper's header read timeout never fires there: a client that
/// connects and sends nothing holds its connection forever. This is the same hyper HTTP/1.1
/// connection (axum's router as the service) with a timer and the [`ServerLimits`]. A request
/// refused before it reaches the router (head too slow, too large, malformed) is recorded
/// through `pipeline` as a `rejected` record with the peer address; with no body to hash, each
/// kind of refusal is deduplicated as one body would be (once per period, repeats counted).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    pipeline: Option<Arc<Pipeline>>,
    limits: ServerLimits,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let hard_head_bytes = (limits.max_head_bytes * 4).max(8192);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers * 4)
        .max_header_size(hard_head_bytes)
        .max_buf_size(hard_head_bytes);
    let builder = Arc::new(builder);
    let app = app.layer(axum::Extension(limits));
    let mut connections = tokio::task::JoinSet::new();
    let open = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let uploads = Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent_requests));
    loop {
        // A connection is accepted only with room for it (the permit goes with its task).
        let room = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            room = open.clone().acquire_owned() => room,
        };
        let Ok(room) = room else { break };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                ) => continue,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (builder, token, pipeline, uploads) =
            (builder.clone(), shutdown.clone(), pipeline.clone(), uploads.clone());
        let stats = Arc::new(ConnStats::default());
        let io = hyper_util::rt::TokioIo::new(Sniffed { inner: stream, stats: stats.clone() });
        let service = {
            let (router, stats, pipeline) =
                (hyper_util::service::TowerToHyperService::new(app.clone()), stats.clone(), pipeline.clone());
            hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                use hyper::service::Service as _;
                stats.served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let with_body = !matches!(*req.method(), Method::GET | Method::HEAD);
                let answer = match head_over_limits(&req, limits) {
                    None => Ok(router.call(req)),
                    Some(over) => Err(over),
                };
                let (pipeline, uploads) = (pipeline.clone(), uploads.clone());
                async move {
                    match answer {
                        Ok(answer) => {
                            // The body is read when the answer is first polled: after the permit.
                            let _turn = if with_body { uploads.acquire_owned().await.ok() } else { None };
                            answer.await
                        }
                        Err((error, kind)) => {
                            let (reason, location) = (error.message.clone(), error.location.clone());
                            record_head_refusal(pipeline.as_deref(), Some(431), kind, reason, location, peer).await;
                            Ok(error.into_response())
                        }
                    }
                }
            })
        };
        connections.spawn(async move {
            let _room = room;
            let conn = builder.serve_connection(io, service);
            let mut conn = std::pin::pin!(conn);
            let mut closing = false;
            let result = loop {
                tokio::select! {
                    result = conn.as_mut() => break result,
                    _ = token.cancelled(), if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            };
            refused_head(result.err(), &stats, peer, pipeline.as_deref(), limits).await;
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// A request head over our limits: our 431, saying which header or how many.
fn head_over_limits<B>(req: &Request<B>, limits: ServerLimits) -> Option<(ApiError, &'static str)> {
    let fields = req.headers().len();
    if fields > limits.max_headers {
        let message = format!("request head has {fields} header fields; the limit is {}", limits.max_headers);
        let location = json!({ "header_fields": fields });
        return Some((ApiError::at(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, message, location), "fields"));
    }
    let size = |(k, v): (&header::HeaderName, &header::HeaderValue)| k.as_str().len() + v.len() + 4;
    let bytes =
        req.method().as_str().len() + req.uri().to_string().len() + 12 + req.headers().iter().map(size).sum::<usize>();
    if bytes > limits.max_head_bytes {
        let (name, largest) = req.headers().iter().map(|h| (h.0.as_str(), size(h))).max_by_key(|h| h.1)?;
        let name = elide(name, MAX_PATH);
        let message = format!(
            "request head of {bytes} bytes exceeds the limit of {} bytes (largest: header `{name}`, {largest} bytes)",
            limits.max_head_bytes
        );
        let location = json!({ "header": name, "head_bytes": bytes });
        return Some((ApiError::at(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, message, location), "bytes"));
    }
    None
}

/// Per connection: requests handed to the service, response heads written (hyper writes one of
/// its own, without calling the service, when it refuses a request head), and bytes read since
/// the last one (none: an idle keep-alive connection, not a slow client).
#[derive(Default)]
struct ConnStats {
    served: std::sync::atomic::AtomicUsize,
    heads: std::sync::atomic::AtomicUsize,
    last_status: std::sync::atomic::AtomicU16,
    read_since_head: std::sync::atomic::AtomicUsize,
}

/// A connection that notes the status line of every response head written.
struct Sniffed {
    inner: tokio::net::TcpStream,
    stats: Arc<ConnStats>,
}

impl Sniffed {
    fn note(&self, written: &[u8]) {
        if let Some(rest) = written.strip_prefix(b"HTTP/1.1 ")
            && let Some(status) = rest.get(..3).and_then(|s| std::str::from_utf8(s).ok()?.parse::<u16>().ok())
        {
            self.stats.heads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.stats.last_status.store(status, std::sync::atomic::Ordering::Relaxed);
            self.stats.read_since_head.store(0, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl tokio::io::AsyncRead for Sniffed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.stats.read_since_head.fetch_add(read, std::sync::atomic::Ordering::Relaxed);
        polled
    }
}

impl tokio::io::AsyncWrite for Sniffed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &polled {
            self.note(&buf[..*n]);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let std::task::Poll::Ready(Ok(n)) = &polled
            && let Some(first) = bufs.iter().find(|b| !b.is_empty())
        {
            self.note(&first[..first.len().min(*n)]);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A connection has ended: if hyper refused a request head (it timed out, or hyper answered
/// without calling the service), record it.
async fn refused_head(
    error: Option<hyper::Error>,
    stats: &ConnStats,
    peer: std::net::SocketAddr,
    pipeline: Option<&Pipeline>,
    limits: ServerLimits,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let hard = ((limits.max_head_bytes * 4).max(8192), limits.max_headers * 4);
    let (status, kind, reason) = match &error {
        // Kept alive after a response and then idle: closed, nothing refused.
        Some(e) if e.is_timeout() && stats.served.load(Relaxed) > 0 && stats.read_since_head.load(Relaxed) == 0 => {
            return;
        }
        Some(e) if e.is_timeout() => {
            let secs = limits.header_read_timeout.as_secs_f64();
            (None, "timeout", format!("request head not received within {secs}s; connection closed"))
        }
        Some(e) if e.is_parse_version_h2() => (None, "http2", "HTTP/2 is not served (HTTP/1.1 only)".to_string()),
        // hyper answered a request head it could not take with a status of its own.
        _ if stats.heads.load(Relaxed) > stats.served.load(Relaxed) => match stats.last_status.load(Relaxed) {
            431 => (
                Some(431),
                "hard-limit",
                format!("request head over {} bytes or {} header fields; refused unread", hard.0, hard.1),
            ),
            414 => (Some(414), "uri", "request URI too long".to_string()),
            status => (Some(status), "malformed", "malformed request head".to_string()),
        },
        Some(e) => {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
            return;
        }
        None => return,
    };
    record_head_refusal(pipeline, status, kind, reason, Value::Null, peer).await;
}

/// Record a refused request head. They come in bursts (connections opened together time out
/// together), so they are recorded one at a time: the pipeline's de-duplication then sees
/// each kind once per period, not once per connection in flight.
async fn record_head_refusal(
    pipeline: Option<&Pipeline>,
    status: Option<u16>,
    kind: &str,
    reason: String,
    location: Value,
    peer: std::net::SocketAddr,
) {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    tracing::debug!(%peer, ?status, %reason, "request head refused");
    let Some(pipeline) = pipeline else { return };
    let rejection = Rejection {
        source: "http",
        origin: json!({ "status": status, "location": location, "peer": peer.to_string(), "stage": "request head" }),
        reason,
        size: 0,
        body: &[],
        // No body to hash: the kind of refusal is what repeats.
        body_sha256: crate::digest::sha256_hex(format!("request head refused: {kind}").as_bytes()),
    };
    let _one = ONE_AT_A_TIME.lock().await;
    if let Err(e) = pipeline.reject(rejection).await {
        warn!(error = %e, "could not record a refused request head");
    }
}

#[cfg(test)]
mod tests;
