//! Our error body: every refusal answers `{"error": {status, message, ...where}}`, JSON
//! rejections included.

use super::*;

/// Our error body: `{"error": {"status", "message", ...where}}`.
#[derive(Debug)]
pub struct ApiError {
    pub(super) status: StatusCode,
    pub(super) message: String,
    pub(super) location: Value,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError::at(status, message, Value::Null)
    }

    /// With where (`line`, `column`, `path`, …). The message is bounded: it may echo what was
    /// sent, and goes to the answer and the audit record.
    pub(super) fn at(status: StatusCode, message: impl Into<String>, location: Value) -> ApiError {
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

/// A path the API does not serve: our error body, not an empty 404 (a webhook sent to a
/// mistyped URL says so in Alertmanager's log). A request that brought a body is recorded, as any
/// refused one is: events sent to the wrong address are not lost without a trace.
pub(super) async fn no_such_endpoint(
    State(state): State<AppState>,
    limits: Limits,
    method: Method,
    uri: axum::http::Uri,
    body: Body,
) -> Response {
    let message =
        format!("no endpoint {method} {}: the webhook is POST /v1/alertmanager; the API is in the README", uri.path());
    refuse(&state, limits, ApiError::new(StatusCode::NOT_FOUND, message), body).await
}

/// A method a path does not take; the `Allow` header (axum's) names those it does.
pub(super) async fn method_not_allowed(
    State(state): State<AppState>,
    limits: Limits,
    method: Method,
    uri: axum::http::Uri,
    body: Body,
) -> Response {
    let message = format!("{} does not take {method} (see the Allow header)", uri.path());
    refuse(&state, limits, ApiError::new(StatusCode::METHOD_NOT_ALLOWED, message), body).await
}

/// Answer `err`, recording the request first if it brought a body (a browser's stray GET, such
/// as `/favicon.ico`, brings none and is not recorded) and this replica writes the log (a
/// follower does not: it answers only).
async fn refuse(state: &AppState, limits: Limits, err: ApiError, body: Body) -> Response {
    let read = read_body(body, state.max_body_bytes, limits).await;
    if read.size > 0
        && state.pipeline.gate().acts_at(chrono::Utc::now())
        && let Err(unavailable) = record_rejection(state, "http", &err, read.size, &read.bytes, read.sha256()).await
    {
        return unavailable;
    }
    err.into_response()
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
