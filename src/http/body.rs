//! Reading a request's body within its limits, and the checks before it is taken: credentials,
//! content type, size. What is refused is recorded.

use sha2::{Digest, Sha256};

use super::*;

/// Past the body limit, keep reading (to record the size and hash) up to this many bytes.
pub(super) const MAX_DRAIN: usize = 64 << 20;

pub(super) fn check_auth(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if state.auth.allows(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong credentials"))
    }
}

/// A request body as read: the bytes kept (up to the limit), the size of everything read,
/// whether it was over the limit, and why it could not be read whole (too slow, broken).
pub(super) struct BodyRead {
    pub(super) bytes: Vec<u8>,
    pub(super) size: usize,
    pub(super) over: bool,
    pub(super) failed: Option<ApiError>,
    /// The SHA-256 of everything read, when more was read than kept.
    drained_sha: Option<String>,
}

impl BodyRead {
    /// The SHA-256 of everything read, as hex. Asked for only where it is written (a refused
    /// body, a feedback event's origin): hashing every accepted delivery was a twelfth of a
    /// 50-alert request's CPU, for a hash its record does not need (the chain covers the record).
    pub(super) fn sha256(&self) -> String {
        match &self.drained_sha {
            Some(sha) => sha.clone(),
            None => crate::digest::sha256_hex(&self.bytes),
        }
    }
}

/// The bounds `serve` puts on requests (the defaults for a router served otherwise).
pub(super) type Limits = Option<axum::Extension<ServerLimits>>;

/// Read the body up to `limit`; past it, drain (bounded) to learn size and hash. All of it must
/// arrive within the limits' `body_read_timeout`.
pub(super) async fn read_body(body: Body, limit: usize, limits: Limits) -> BodyRead {
    let timeout = limits.map(|l| l.0).unwrap_or_default().body_read_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    // Room for the whole body at once when its length is announced (no regrowing copies of a
    // large payload), within the limit.
    let announced = axum::body::HttpBody::size_hint(&body).lower();
    let mut kept = Vec::with_capacity(usize::try_from(announced).unwrap_or(usize::MAX).min(limit));
    // Only a body read past what is kept is hashed as it comes: from the chunk that overflows.
    let mut hasher: Option<Sha256> = None;
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
        match &mut hasher {
            Some(h) => h.update(&chunk),
            None if size > limit => {
                let mut h = Sha256::new();
                h.update(&kept);
                h.update(&chunk);
                hasher = Some(h);
            }
            None => {}
        }
        if kept.len() < limit {
            let room = limit - kept.len();
            kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        if size > MAX_DRAIN {
            break;
        }
    }
    let drained_sha = hasher.map(|h| crate::digest::hex(&h.finalize()));
    BodyRead { bytes: kept, size, over: size > limit, failed, drained_sha }
}

pub(super) fn is_json(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).and_then(|v| v.split(';').next()).is_some_and(|m| {
        let m = m.trim().to_ascii_lowercase();
        m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
    })
}

/// What every intake checks before parsing: credentials, a body read whole, size, content type.
pub(super) fn precheck(
    state: &AppState,
    headers: &HeaderMap,
    body: &mut BodyRead,
    type_ok: bool,
    send: &str,
) -> Option<ApiError> {
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
pub(super) async fn record_rejection(
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

pub(super) fn is_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/x-ndjson"))
}
