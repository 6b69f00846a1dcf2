//! What an on-call engineer does through the API: act, undo, pause and resume, list pauses, and
//! query the audit trail.

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ActRequest {
    pub(super) rule: String,
    pub(super) target: String,
    pub(super) reason: String,
    #[serde(default)]
    pub(super) actor: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ControlRequest {
    #[serde(default)]
    pub(super) target: Option<String>,
    pub(super) reason: String,
    #[serde(default)]
    pub(super) actor: Option<String>,
}

pub(super) fn actor(given: Option<String>) -> String {
    given.filter(|a| !a.trim().is_empty()).unwrap_or_else(|| "unknown".into())
}

pub(super) fn parse_target(t: &str) -> Result<ObjectRef, ApiError> {
    t.parse().map_err(|e: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e))
}

pub(super) fn require_reason(reason: &str) -> Result<(), ApiError> {
    if reason.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "a reason is required: say why, for the audit trail",
        ));
    }
    Ok(())
}

pub(super) async fn act(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ActRequest>,
) -> Result<Response, ApiError> {
    require_reason(&req.reason)?;
    let target = parse_target(&req.target)?;
    let report = state.pipeline.act(&req.rule, &target, &actor(req.actor), &req.reason).await?;
    Ok(Json(report).into_response())
}

pub(super) async fn undo(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ControlRequest>,
) -> Result<Response, ApiError> {
    require_reason(&req.reason)?;
    let report = state.pipeline.undo(&id, &actor(req.actor), &req.reason).await?;
    Ok(Json(report).into_response())
}

/// Pause or resume (credentials were checked by [`ApiJson`]).
pub(super) async fn control(state: AppState, req: ControlRequest, pause: bool) -> Result<Response, ApiError> {
    require_reason(&req.reason)?;
    let target = req.target.as_deref().map(parse_target).transpose()?;
    let record = state.pipeline.pause(target.as_ref(), pause, &actor(req.actor), &req.reason).await?;
    Ok(Json(json!({ "recorded": record, "pauses": state.pipeline.pauses().await })).into_response())
}

pub(super) async fn pause(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ControlRequest>,
) -> Result<Response, ApiError> {
    control(state, req, true).await
}

pub(super) async fn resume(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ControlRequest>,
) -> Result<Response, ApiError> {
    control(state, req, false).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PromoteRequest {
    pub(super) target: String,
    pub(super) reason: String,
    /// The promotion rule, when several act on the target.
    #[serde(default)]
    pub(super) rule: Option<String>,
    #[serde(default)]
    pub(super) actor: Option<String>,
}

/// The next step of a target's promotion, by hand (it also resumes a held or stopped one).
pub(super) async fn promote(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<PromoteRequest>,
) -> Result<Response, ApiError> {
    require_reason(&req.reason)?;
    let target = parse_target(&req.target)?;
    let report = state.pipeline.promote_by_hand(&target, req.rule.as_deref(), &actor(req.actor), &req.reason).await?;
    Ok(Json(report).into_response())
}

/// Hold (or release) a target's promotion.
async fn hold_or_release(state: AppState, req: ControlRequest, hold: bool) -> Result<Response, ApiError> {
    require_reason(&req.reason)?;
    let Some(target) = req.target.as_deref() else {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "a target is required: `namespace/name`"));
    };
    let target = parse_target(target)?;
    let record = state.pipeline.hold_promotion(&target, hold, &actor(req.actor), &req.reason).await?;
    Ok(Json(json!({ "recorded": record, "promotions": state.pipeline.promotions().await })).into_response())
}

pub(super) async fn hold_promotion(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ControlRequest>,
) -> Result<Response, ApiError> {
    hold_or_release(state, req, true).await
}

pub(super) async fn release_promotion(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ControlRequest>,
) -> Result<Response, ApiError> {
    hold_or_release(state, req, false).await
}

pub(super) async fn promotions(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_auth(&state, &headers)?;
    Ok(Json(state.pipeline.promotions().await).into_response())
}

pub(super) async fn pauses(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_auth(&state, &headers)?;
    Ok(Json(state.pipeline.pauses().await).into_response())
}

/// Query parameters of `GET /v1/audit`, the same as `backstop audit query`.
#[derive(Debug, Clone, Default, Deserialize)]
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
                .map(|k| {
                    k.trim().parse::<Kind>().map_err(|_| {
                        let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                        format!("`{k}` is not an outcome: one or more of {}", kinds.join(", "))
                    })
                })
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

pub(super) async fn audit_query(
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
