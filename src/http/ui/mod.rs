//! The on-call page (issue #19), served by the binary itself: server-rendered HTML, its style
//! embedded at build time, nothing fetched from elsewhere. Read-only so far: the overview (from
//! the state, never a scan of the log), a target's timeline and an action's page (a permalink by
//! the id the object's `backstop.io/action-id` annotation and its Kubernetes Event carry).
//!
//! Behind the API's credentials (a browser sends basic auth: a 401 here asks for it). Every page
//! carries a Content-Security-Policy that allows nothing but this server's own style, and every
//! text from outside is escaped ([`html::esc`]).

mod controls;
mod html;
mod svg;
mod timeline;

use axum::http::HeaderValue;

use super::*;
use html::{esc, live_page, page, seg, table};

const CSS: &str = include_str!("ui.css");
const JS: &str = include_str!("ui.js");

/// Only this server's own script and style run; nothing loads from elsewhere (the live stream is
/// this server's too), nothing frames the page.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The pages (read-only: served by every replica).
pub(super) fn pages() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { axum::response::Redirect::permanent("/ui/") }))
        .route("/ui/", get(overview))
        .route("/ui/targets/{namespace}/{name}", get(target))
        .route("/ui/actions/{id}", get(action))
        .route("/ui/assets/ui.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS) }))
        .route("/ui/assets/ui.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], JS) }))
}

/// The controls (gated like the API's: only a replica that may act takes them).
pub(super) fn controls() -> Router<AppState> {
    Router::new()
        .route("/ui/actions/{id}/undo", post(controls::undo))
        .route("/ui/pause", post(controls::pause))
        .route("/ui/resume", post(controls::resume))
        .route("/ui/act", post(controls::act))
}

/// An HTML answer with the page's security headers.
fn respond(status: StatusCode, body: String) -> Response {
    // A broken chain is said loudly on every page (the header's line starts with it).
    let body = body.replacen("<span class=\"chain\">CHAIN BROKEN", "<span class=\"chain loud\">CHAIN BROKEN", 1);
    let mut resp = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Without the API's credentials, the answer that asks a browser for basic auth.
fn refused(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    if check_auth(state, headers).is_ok() {
        return None;
    }
    let mut resp = respond(StatusCode::UNAUTHORIZED, page("Sign in", "", "<p>backstop needs its credentials.</p>"));
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"backstop\""));
    Some(resp)
}

/// The chain's last verdict and the log's place, on every page.
fn chain(state: &AppState) -> String {
    let (seq, hash) = state.pipeline.audit().last();
    let verdict = state.pipeline.chain_check().map_or_else(|| "chain not verified yet".to_string(), |c| c.line(seq));
    format!("{verdict} · log at seq {seq}, last hash {}", hash.get(..12).unwrap_or(&hash))
}

fn action_link(id: &str) -> String {
    format!("<a href=\"/ui/actions/{}\">{}</a>", seg(id), esc(id.get(..13).unwrap_or(id)))
}

fn target_link(target: &str) -> String {
    match target.split_once('/') {
        Some((ns, name)) => format!("<a href=\"/ui/targets/{}/{}\">{}</a>", seg(ns), seg(name), esc(target)),
        None => esc(target),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => esc(s),
        Value::Null => String::new(),
        v => esc(&v.to_string()),
    }
}

/// A time from the API's JSON as the rest of the page shows times (to the millisecond, `Z`).
fn time(v: &Value) -> String {
    match v.as_str().and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok()) {
        Some(t) => esc(&crate::when::shown(&t.to_utc())),
        None => text(v),
    }
}

async fn overview(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(resp) = refused(&state, &headers) {
        return resp;
    }
    let o = state.pipeline.overview().await;
    let mut body = String::from("<h1>Overview</h1>");
    let pauses = &o["pauses"];
    if !pauses["global"].is_null() {
        body.push_str(&format!(
            "<p class=\"loud\">All automatic actions are paused by {}: {}</p>",
            text(&pauses["global"]["actor"]),
            text(&pauses["global"]["reason"])
        ));
    }
    body.push_str(&controls::form(&state, "/ui/pause", "Pause all automatic actions", &[]));
    body.push_str(&controls::form(&state, "/ui/resume", "Resume all", &[]));
    let mut rows = Vec::new();
    if let Some(last) = o["last_actions"].as_object() {
        for (t, a) in last {
            let verification = match a["verification"].as_str() {
                Some("unverified") => "<span class=\"loud\">UNVERIFIED: traffic did not move</span>".to_string(),
                Some(v) => esc(v),
                None => String::new(),
            };
            let paused = match pauses["targets"].get(t) {
                Some(p) => format!("paused by {}: {}", text(&p["actor"]), text(&p["reason"])),
                None => String::new(),
            };
            let seen = match &a["seen"] {
                Value::Null => String::new(),
                v => format!("<code>{}</code>", esc(&weights(v))),
            };
            rows.push(vec![
                target_link(t),
                seen,
                format!("<span class=\"kind {0}\">{0}</span>", text(&a["outcome"])),
                text(&a["rule"]),
                time(&a["at"]),
                action_link(a["action_id"].as_str().unwrap_or_default()),
                verification,
                paused,
                text(&a["reason"]),
            ]);
        }
    }
    body.push_str("<h2>Targets</h2>");
    body.push_str(&if rows.is_empty() {
        "<p>No action on any target yet.</p>".to_string()
    } else {
        table(
            "targets",
            &["target", "as last seen", "last", "rule", "at", "action", "traffic", "pause", "reason"],
            &rows,
        )
    });
    let promotions = &o["promotions"];
    let mut rows = Vec::new();
    for p in promotions["under_way"].as_array().into_iter().flatten() {
        rows.push(vec![
            target_link(p["target"].as_str().unwrap_or_default()),
            "under way".into(),
            text(&p["canary"]),
            format!(
                "{} of {}",
                p["stages"].as_array().and_then(|s| s.last()).map_or(0, |s| s["to"].as_u64().unwrap_or(0)),
                text(&p["max"])
            ),
            text(&p["rule"]),
        ]);
    }
    for (t, s) in promotions["stopped"].as_object().into_iter().flatten() {
        let why = format!(
            "stopped by {} (rule {})",
            action_link(s["action_id"].as_str().unwrap_or_default()),
            text(&s["rule"])
        );
        let canaries: Vec<&str> = s["canaries"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let canaries = if canaries.is_empty() { "every version".to_string() } else { canaries.join(", ") };
        rows.push(vec![target_link(t), why, esc(&canaries), String::new(), String::new()]);
    }
    for (t, h) in promotions["held"].as_object().into_iter().flatten() {
        rows.push(vec![
            target_link(t),
            format!("held by {}: {}", text(&h["actor"]), text(&h["reason"])),
            String::new(),
            String::new(),
            String::new(),
        ]);
    }
    if !rows.is_empty() {
        body.push_str("<h2>Promotions</h2>");
        body.push_str(&table("promotions", &["target", "state", "canary", "weight", "rule"], &rows));
    }
    let rows: Vec<Vec<String>> = o["pending"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            vec![
                target_link(p["target"].as_str().unwrap_or_default()),
                action_link(p["action_id"].as_str().unwrap_or_default()),
                text(&p["rule"]),
            ]
        })
        .chain(o["verifying"].as_array().into_iter().flatten().map(|v| {
            vec![
                target_link(v["target"].as_str().unwrap_or_default()),
                action_link(v["action_id"].as_str().unwrap_or_default()),
                format!("verifying traffic ({})", text(&v["rule"])),
            ]
        }))
        .collect();
    if !rows.is_empty() {
        body.push_str("<h2>Under way</h2>");
        body.push_str(&table("pending", &["target", "action", "what"], &rows));
    }
    let rate = |s: &Value, bad: &str, n: &str| match (s[bad].as_u64(), s[n].as_u64()) {
        (Some(b), Some(n)) if n > 0 => format!("{b}/{n} ({:.2}%)", 100.0 * b as f64 / n as f64),
        _ => "-".to_string(),
    };
    let p95 = |s: &Value| s["latency_p95"].as_f64().map_or("-".to_string(), |v| format!("{:.0} ms", v * 1000.0));
    let rows: Vec<Vec<String>> = o["comparisons"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let (cs, bs) = (&c["canary"]["summary"], &c["baseline"]["summary"]);
            vec![
                esc(&format!("{}/{}", c["namespace"].as_str().unwrap_or(""), c["service"].as_str().unwrap_or(""))),
                text(&c["rule"]),
                text(&c["test"]),
                format!("{} vs {}", text(&c["canary"]["version"]), text(&c["baseline"]["version"])),
                format!("{} vs {}", esc(&rate(cs, "errors", "outcomes_n")), esc(&rate(bs, "errors", "outcomes_n"))),
                format!(
                    "{} vs {}",
                    esc(&rate(cs, "negative", "satisfaction_n")),
                    esc(&rate(bs, "negative", "satisfaction_n"))
                ),
                format!("{} vs {}", esc(&p95(cs)), esc(&p95(bs))),
                time(&c["canary"]["since"]),
            ]
        })
        .collect();
    if !rows.is_empty() {
        body.push_str("<h2>Feedback comparisons under way</h2>");
        body.push_str(&table(
            "comparisons",
            &["service", "rule", "test", "canary vs baseline", "errors", "negative", "p95", "since"],
            &rows,
        ));
    }
    // Records as they are recorded, newest first, while the page is open.
    let after = state.pipeline.audit().last().0;
    body.push_str("<h2>Latest records</h2>");
    body.push_str(&table("recent live", &HEAD, &[]));
    respond(StatusCode::OK, live_page("Overview", &chain(&state), &body, Some(("", after))))
}

/// A record as one row of a timeline.
fn record_row(r: &audit::Record) -> Vec<String> {
    record_row_about(r, None)
}

/// At most this many of a delivery's alerts are shown in its row (with how many more there are).
const ALERTS_SHOWN: usize = 5;

/// A record as one row; a delivery's `received` record shows only alert `about` if given.
fn record_row_about(r: &audit::Record, about: Option<&str>) -> Vec<String> {
    let e = &r.entry;
    let alerts = match e.kind {
        Kind::Received => crate::event::alerts_received(e.detail.as_ref(), e.source.as_deref()).unwrap_or_default(),
        _ => Vec::new(),
    };
    let alerts: Vec<&crate::event::Alert> = alerts.iter().filter(|a| about.is_none_or(|id| a.id == id)).collect();
    let change = match (&e.before, &e.after) {
        (Some(b), Some(a)) => format!("<code>{}</code> → <code>{}</code>", esc(&weights(b)), esc(&weights(a))),
        // Received alerts: their labels and where they came from, as text.
        _ => {
            let mut shown: Vec<String> = alerts
                .iter()
                .take(ALERTS_SHOWN)
                .map(|alert| {
                    let labels: Vec<String> = alert.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!(
                        "<code>{}</code> {} <span class=\"url\">{}</span>",
                        esc(&labels.join(" ")),
                        alert.status,
                        esc(&alert.generator_url)
                    )
                })
                .collect();
            if alerts.len() > ALERTS_SHOWN {
                shown.push(format!("and {} more alerts", alerts.len() - ALERTS_SHOWN));
            }
            shown.join("<br>")
        }
    };
    let id = match (e.action_id.as_deref(), e.event_id.as_deref()) {
        (Some(action), _) => action_link(action),
        (None, Some(event)) => esc(event),
        (None, None) => esc(&crate::event::alerts_label(alerts.iter().map(|a| a.id.as_str())).unwrap_or_default()),
    };
    vec![
        r.seq.to_string(),
        esc(&crate::when::shown(&r.time)),
        format!("<span class=\"kind {0}\">{0}</span>", esc(e.kind.as_str())),
        esc(e.rule.as_deref().unwrap_or("")),
        id,
        change,
        esc(e.reason.as_deref().unwrap_or("")),
    ]
}

/// A VirtualService's routes as `v1=90 v2=10` (anything else as compact JSON).
fn weights(v: &Value) -> String {
    let Some(routes) = v.as_array() else { return v.to_string() };
    let dests = routes.iter().flat_map(|r| r["destinations"].as_array().into_iter().flatten());
    let parts: Vec<String> = dests
        .map(|d| format!("{}={}", d["subset"].as_str().or(d["host"].as_str()).unwrap_or("?"), d["weight"]))
        .collect();
    if parts.is_empty() { v.to_string() } else { parts.join(" ") }
}

const HEAD: [&str; 7] = ["seq", "time", "kind", "rule", "action / event", "change", "reason"];

async fn target(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
    params: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Some(resp) = refused(&state, &headers) {
        return resp;
    }
    let target = format!("{namespace}/{name}");
    let mut params = params.map(|Query(p)| p).unwrap_or_default();
    // The page's filter form sends its empty fields too: an empty field filters nothing.
    for v in [&mut params.since, &mut params.rule, &mut params.outcome] {
        if v.as_deref().is_some_and(|v| v.trim().is_empty()) {
            *v = None;
        }
    }
    let since = params.since.clone().unwrap_or_else(|| "24h".into());
    // The outcome filter picks whole actions (by what they came to), not single records.
    let outcomes = AuditParams { outcome: params.outcome.clone(), ..Default::default() }.to_filter();
    let filter = AuditParams {
        since: Some(since.clone()),
        target: Some(target.clone()),
        limit: Some(params.limit.unwrap_or(2000)),
        outcome: None,
        ..params.clone()
    }
    .to_filter();
    let (filter, outcomes) = match (filter, outcomes) {
        (Ok(f), Ok(o)) => (f, o.kinds),
        (Err(e), _) | (_, Err(e)) => {
            return respond(
                StatusCode::BAD_REQUEST,
                page("Bad filter", &chain(&state), &format!("<p>{}</p>", esc(&e))),
            );
        }
    };
    let dir = state.pipeline.audit().dir().to_path_buf();
    // Read before the query: a record appended meanwhile is sent live (maybe shown twice, never missed).
    let after = state.pipeline.audit().last().0;
    // Through the segments' indexes: the target's decisions and actions, not the intake around them.
    let records = match tokio::task::spawn_blocking(move || audit::query_indexed(&dir, &filter)).await {
        Ok(Ok(r)) => r,
        _ => {
            return respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                page("Error", &chain(&state), "<p>the audit log could not be read</p>"),
            );
        }
    };
    let groups: Vec<timeline::Group> =
        timeline::group(&records).into_iter().filter(|g| timeline::wanted(g, &outcomes)).collect();
    let rules = state.pipeline.rules();
    let acts: String = rules
        .rules()
        .iter()
        .filter(|r| r.promotion().is_none())
        .map(|r| {
            controls::form(&state, "/ui/act", &format!("Act: {}", r.name), &[("rule", &r.name), ("target", &target)])
        })
        .collect();
    let field = |name: &str, value: &str, hint: &str| {
        format!("<label>{name} <input name=\"{name}\" value=\"{}\" placeholder=\"{}\"></label> ", esc(value), esc(hint))
    };
    let filters = format!(
        "<form class=\"filters\" method=\"get\">{}{}{}<button>Filter</button></form>",
        field("since", &since, "24h or RFC 3339"),
        field("rule", params.rule.as_deref().unwrap_or(""), "any rule"),
        field("outcome", params.outcome.as_deref().unwrap_or(""), "applied,held,unverified,..."),
    );
    let body = format!(
        "<h1>{}</h1>{}{}<details><summary>Act by hand (the kill switch)</summary>{acts}</details>\
         <h2>Live</h2>{}<h2>Since {}</h2>{filters}<p>Newest first: {} actions and runs of decisions \
         ({} records).</p>{}",
        esc(&target),
        controls::form(&state, "/ui/pause", "Pause this target", &[("target", &target)]),
        controls::form(&state, "/ui/resume", "Resume this target", &[("target", &target)]),
        table("live", &HEAD, &[]),
        esc(&since),
        groups.len(),
        records.len(),
        timeline::render(&groups)
    );
    let stream = format!("target={}", seg(&target));
    respond(StatusCode::OK, live_page(&target, &chain(&state), &body, Some((&stream, after))))
}

/// When an action id was made, if it says (backstop's are UUIDv7: milliseconds since the epoch
/// first), so that its page reads only the segments from then on. Every record of an action
/// comes after its id is made, in the same process.
fn minted_at(id: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let uuid = uuid::Uuid::parse_str(id).ok()?;
    let (secs, nanos) = uuid.get_timestamp()?.to_unix();
    chrono::DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
}

async fn action(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(resp) = refused(&state, &headers) {
        return resp;
    }
    let dir = state.pipeline.audit().dir().to_path_buf();
    let wanted = id.clone();
    let since = minted_at(&id).map(|t| t - chrono::Duration::minutes(1));
    let records = tokio::task::spawn_blocking(move || {
        let filter = audit::Filter { action_id: Some(wanted), since, ..Default::default() };
        let mine = audit::query_indexed(&dir, &filter)?;
        // The event that led to it: its records (the match and its evidence, the alert as
        // received) just before the action's.
        let event = mine.iter().find_map(|r| r.entry.event_id.clone());
        let Some((event_id, first)) = event.zip(mine.first()) else { return Ok((Vec::new(), mine)) };
        let near = audit::Filter {
            event_id: Some(event_id.clone()),
            since: Some(first.time - chrono::Duration::hours(1)),
            until: Some(first.time),
            ..Default::default()
        };
        let mut lead: Vec<audit::Record> = audit::query_indexed(&dir, &near)?
            .into_iter()
            .filter(|r| r.seq < first.seq && r.entry.action_id.is_none())
            .collect();
        let before = lead.first().map_or(first.seq, |r| r.seq);
        if let Some(received) = audit::received_before(&dir, &event_id, before)? {
            lead.insert(0, received);
        }
        Ok::<_, audit::AuditError>((lead, mine))
    })
    .await;
    let Ok(Ok((lead, mine))) = records else {
        return respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            page("Error", &chain(&state), "<p>the audit log could not be read</p>"),
        );
    };
    if mine.is_empty() {
        return respond(
            StatusCode::NOT_FOUND,
            page(
                "No such action",
                &chain(&state),
                &format!("<p>No action with id <code>{}</code> in the audit log.</p>", esc(&id)),
            ),
        );
    }
    let target = mine.iter().find_map(|r| r.entry.target.clone()).unwrap_or_default();
    // The delivery that brought the alert shows that alert only.
    let event_id = mine.iter().find_map(|r| r.entry.event_id.as_deref());
    let rows: Vec<Vec<String>> = lead.iter().chain(&mine).map(|r| record_row_about(r, event_id)).collect();
    let undo = match mine.iter().any(|r| r.entry.kind == Kind::Applied) {
        true => controls::form(&state, &format!("/ui/actions/{}/undo", seg(&id)), "Undo this action", &[]),
        false => String::new(),
    };
    let mut body = format!(
        "<h1>Action <code>{}</code></h1><p>On {}.</p>{undo}{}",
        esc(&id),
        target_link(&target),
        table("action", &HEAD, &rows)
    );
    for r in lead.iter().chain(&mine) {
        if let Some(evidence) = r.entry.detail.as_ref().and_then(|d| d.get("evidence")) {
            let pretty = serde_json::to_string_pretty(evidence).unwrap_or_default();
            let chart = svg::evidence(evidence).unwrap_or_default();
            body.push_str(&format!("<h2>Evidence (record {})</h2>{chart}<pre>{}</pre>", r.seq, esc(&pretty)));
        }
        if let Some(c) = r.entry.detail.as_ref().and_then(|d| d.get("confirmation")).filter(|c| !c.is_null()) {
            body.push_str(&format!("<h2>Confirmation (record {})</h2><pre>{}</pre>", r.seq, esc(&c.to_string())));
        }
    }
    respond(StatusCode::OK, page(&format!("Action {id}"), &chain(&state), &body))
}

#[cfg(test)]
mod tests;
