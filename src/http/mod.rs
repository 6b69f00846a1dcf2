//! The HTTP API: the Alertmanager receiver, on-call controls and audit queries.
//!
//! [`router`] is the whole API (tested with `oneshot`); [`serve`] runs it on a socket with the
//! connection limits. Along its seams: `error` (our error body), `body` (reading a body within
//! its limits, and what is checked first), `intake` (alerts and feedback), `controls` (act, undo,
//! pause, the audit query), `health` (probes and metrics), `connections` (the server).

pub mod auth;
mod body;
mod connections;
mod controls;
mod error;
mod health;
mod intake;
mod stream;
mod ui;

use body::*;
pub use connections::{ServerLimits, serve};
pub use controls::AuditParams;
use controls::*;
pub use error::{ApiError, ApiJson};
use error::{method_not_allowed, no_such_endpoint};
use health::*;
pub use intake::ndjson_lines;
use intake::*;

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
use tracing::warn;

use crate::audit::{self, Kind};
use crate::event::SourceKind;
use crate::pipeline::{Gate, Pipeline, PipelineError, Rejection};
use crate::sources::alertmanager::{self, MAX_MESSAGE, MAX_PATH, ParseError, elide};
use crate::sources::message;
use crate::target::ObjectRef;
use auth::Auth;

#[derive(Clone)]
pub struct AppState {
    pub pipeline: Arc<Pipeline>,
    pub auth: Auth,
    pub max_body_bytes: usize,
    /// Partitions assigned to the Kafka consumer, when there is one (for `/readyz`).
    pub kafka_assigned: Option<Arc<std::sync::atomic::AtomicUsize>>,
    /// The on-call page shows and takes no controls (`ui.read_only`).
    pub ui_read_only: bool,
}

pub fn router(state: AppState) -> Router {
    let gated = axum::middleware::from_fn_with_state(state.clone(), only_when_acting);
    Router::new()
        .route("/v1/alertmanager", post(alertmanager_webhook))
        .route("/v1/feedback", post(feedback_intake))
        .route("/v1/flagger/rollback", post(flagger_rollback))
        .route("/v1/actions", post(act))
        .route("/v1/actions/{id}/undo", post(undo))
        .route("/v1/pause", post(pause).get(pauses))
        .route("/v1/resume", post(resume))
        .route("/v1/promote", post(promote))
        .route("/v1/promotions", get(promotions))
        .route("/v1/promotions/hold", post(hold_promotion))
        .route("/v1/promotions/release", post(release_promotion))
        .merge(ui::controls())
        .route_layer(gated)
        .route("/v1/audit", get(audit_query))
        .route("/v1/audit/stream", get(stream::audit_stream))
        .merge(ui::pages())
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics_endpoint))
        .fallback(no_such_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

#[cfg(test)]
mod tests;
