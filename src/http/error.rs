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
/// mistyped URL says so in Alertmanager's log).
pub(super) async fn no_such_endpoint(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no endpoint {method} {}: the webhook is POST /v1/alertmanager; the API is in the README", uri.path()),
    )
}

/// A method a path does not take; the `Allow` header (axum's) names those it does.
pub(super) async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take {method} (see the Allow header)", uri.path()),
    )
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
