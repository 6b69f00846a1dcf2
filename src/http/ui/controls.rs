//! The page's buttons: pause and resume (a target, or everything), undo an action, act (the kill
//! switch). Each asks for a reason and a confirmation, is recorded with its actor (the basic-auth
//! user, or `ui`), goes through the same pipeline calls as the API and the CLI, and is refused
//! unless it comes from this server's own page: the form's token (random per process, only on
//! pages behind the credentials) and, when the browser says, the same origin. `ui.read_only`
//! hides the forms and refuses them.

use std::sync::OnceLock;

use axum::Form;
use base64::Engine;

use super::*;

/// The forms' token: random per process (two UUIDv7s' random bits, the pid and the time, hashed).
fn token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        let seed = format!(
            "{}{}{}{:?}",
            uuid::Uuid::now_v7(),
            uuid::Uuid::now_v7(),
            std::process::id(),
            std::time::SystemTime::now()
        );
        crate::digest::sha256_hex(seed.as_bytes())
    })
}

/// A form's hidden fields, and its two required ones.
fn fields() -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <input name=\"reason\" required placeholder=\"why (recorded)\">\
         <label><input type=\"checkbox\" name=\"confirm\" value=\"yes\" required> I mean it</label>",
        token()
    )
}

/// A control's form posting to `action`, with `extra` hidden fields; nothing when read-only.
pub(super) fn form(state: &AppState, action: &str, button: &str, extra: &[(&str, &str)]) -> String {
    if state.ui_read_only {
        return String::new();
    }
    let hidden: String = extra
        .iter()
        .map(|(k, v)| format!("<input type=\"hidden\" name=\"{}\" value=\"{}\">", esc(k), esc(v)))
        .collect();
    format!(
        "<form class=\"control\" method=\"post\" action=\"{}\">{hidden}{}<button type=\"submit\">{}</button></form>",
        esc(action),
        fields(),
        esc(button)
    )
}

#[derive(Debug, Deserialize)]
pub(super) struct ControlForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    confirm: Option<String>,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    rule: Option<String>,
}

/// Who: the basic-auth user, or `ui`.
fn actor(headers: &HeaderMap) -> String {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|up| up.split_once(':').map(|(u, _)| u.to_string()));
    basic.filter(|u| !u.is_empty()).unwrap_or_else(|| "ui".to_string())
}

/// Why a control is refused before anything is done, if it is.
fn refuse(state: &AppState, headers: &HeaderMap, form: &ControlForm) -> Option<Response> {
    if let Some(resp) = refused(state, headers) {
        return Some(resp);
    }
    let error =
        |status, why: &str| Some(respond(status, page("Refused", &chain(state), &format!("<p>{}</p>", esc(why)))));
    if state.ui_read_only {
        return error(StatusCode::FORBIDDEN, "this page is read-only (`ui.read_only`)");
    }
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let cross_origin = match (origin, host) {
        (Some(o), Some(h)) => o.split_once("://").map(|(_, rest)| rest) != Some(h),
        (Some(_), None) => true,
        _ => false,
    };
    if site.is_some_and(|s| s != "same-origin" && s != "none") || cross_origin {
        return error(StatusCode::FORBIDDEN, "a control must come from this page, not another site");
    }
    if !bool::from(subtle::ConstantTimeEq::ct_eq(form.csrf.as_bytes(), token().as_bytes())) {
        return error(StatusCode::FORBIDDEN, "the form is stale or not this server's: reload the page and try again");
    }
    if form.reason.trim().is_empty() || form.confirm.as_deref() != Some("yes") {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "say why, and confirm");
    }
    None
}

/// After a control: to the page of what it did.
fn done(to: &str) -> Response {
    axum::response::Redirect::to(to).into_response()
}

fn failed(state: &AppState, e: PipelineError) -> Response {
    let e = ApiError::from(e);
    respond(e.status, page("Not done", &chain(state), &format!("<p>{}</p>", esc(&e.message))))
}

fn failed_with(state: &AppState, status: StatusCode, why: &str) -> Response {
    respond(status, page("Not done", &chain(state), &format!("<p>{}</p>", esc(why))))
}

pub(super) async fn pause(state: State<AppState>, headers: HeaderMap, form: Form<ControlForm>) -> Response {
    pause_or_resume(state, headers, form, true).await
}

pub(super) async fn resume(state: State<AppState>, headers: HeaderMap, form: Form<ControlForm>) -> Response {
    pause_or_resume(state, headers, form, false).await
}

async fn pause_or_resume(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<ControlForm>,
    pause: bool,
) -> Response {
    if let Some(resp) = refuse(&state, &headers, &form) {
        return resp;
    }
    let target = match form.target.as_deref().filter(|t| !t.is_empty()).map(str::parse::<ObjectRef>).transpose() {
        Ok(t) => t,
        Err(e) => return failed_with(&state, StatusCode::UNPROCESSABLE_ENTITY, &e),
    };
    match state.pipeline.pause(target.as_ref(), pause, &actor(&headers), form.reason.trim()).await {
        Ok(_) => {
            done(&target.map_or("/ui/".to_string(), |t| format!("/ui/targets/{}/{}", seg(&t.namespace), seg(&t.name))))
        }
        Err(e) => failed(&state, e),
    }
}

pub(super) async fn undo(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ControlForm>,
) -> Response {
    if let Some(resp) = refuse(&state, &headers, &form) {
        return resp;
    }
    match state.pipeline.undo(&id, &actor(&headers), form.reason.trim()).await {
        Ok(report) => done(&format!("/ui/actions/{}", seg(report.action_id.as_deref().unwrap_or(&id)))),
        Err(e) => failed(&state, e),
    }
}

pub(super) async fn act(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<ControlForm>) -> Response {
    if let Some(resp) = refuse(&state, &headers, &form) {
        return resp;
    }
    let (Some(rule), Some(target)) = (form.rule.as_deref(), form.target.as_deref()) else {
        return failed_with(&state, StatusCode::UNPROCESSABLE_ENTITY, "act needs a rule and a target");
    };
    let target = match target.parse::<ObjectRef>() {
        Ok(t) => t,
        Err(e) => return failed_with(&state, StatusCode::UNPROCESSABLE_ENTITY, &e),
    };
    match state.pipeline.act(rule, &target, &actor(&headers), form.reason.trim()).await {
        Ok(report) => done(&format!("/ui/actions/{}", seg(report.action_id.as_deref().unwrap_or_default()))),
        Err(e) => failed(&state, e),
    }
}
