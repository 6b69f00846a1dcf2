//! The on-call page through the router: what it shows after the demo's rollback, its permalink,
//! and hostile text rendered inert.

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;
use crate::testing::{FIRING, harness};

async fn get_page(h: &crate::testing::Harness, uri: &str) -> (StatusCode, HeaderMap, String) {
    let resp =
        crate::http::router(h.state.clone()).oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&bytes).into())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_overview_shows_the_demo_rollback_and_its_action_page_the_evidence_trail() {
    let h = harness();
    let (_, body) = h.webhook(FIRING).await;
    let id = body["results"][0]["action_id"].as_str().unwrap().to_string();
    let (status, headers, html) = get_page(&h, "/ui/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap().starts_with("default-src 'none'"));
    assert!(html.contains("href=\"/ui/targets/sms-app/model-service\""), "{html}");
    assert!(html.contains(&format!("href=\"/ui/actions/{id}\"")), "{html}");
    assert!(html.contains("canary-high-error-rate") && html.contains("kind applied"), "{html}");
    assert!(html.contains("<td><code>v1=100 v2=0</code></td>"), "the weights as last seen: {html}");
    let (status, _, page) = get_page(&h, &format!("/ui/actions/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    for kind in ["received", "matched", "decided", "applied"] {
        assert!(page.contains(&format!("kind {kind}\"")), "{kind} missing: {page}");
    }
    assert!(page.contains("v1=90 v2=10</code> → <code>v1=100 v2=0"), "{page}");
    let (status, _, timeline) = get_page(&h, "/ui/targets/sms-app/model-service").await;
    assert_eq!(status, StatusCode::OK);
    assert!(timeline.find("kind applied").unwrap() < timeline.find("kind decided").unwrap(), "newest first");
    let (status, _, _) = get_page(&h, "/ui/actions/no-such-action").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, headers, css) = get_page(&h, "/ui/assets/ui.css").await;
    assert_eq!((status, headers[header::CONTENT_TYPE].to_str().unwrap()), (StatusCode::OK, "text/css; charset=utf-8"));
    assert!(css.contains(".loud"));
}

/// Labels and a generatorURL carrying script and markup: shown as text, never as markup.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_labels_render_as_text() {
    let h = harness();
    let hostile =
        FIRING.replace("\"canary\":\"v2\"", "\"canary\":\"v2\",\"note\":\"<script>alert(1)</script>\"").replace(
            "\"alertname\":\"CanaryHighErrorRate\"",
            "\"alertname\":\"CanaryHighErrorRate\",\"x\":\"<img src=x onerror=alert(2)>\"",
        );
    let (_, body) = h.webhook(&hostile).await;
    let id = body["results"][0]["action_id"].as_str().unwrap_or_else(|| panic!("{body}")).to_string();
    let (_, _, page) = get_page(&h, &format!("/ui/actions/{id}")).await;
    // Shown, as text.
    assert!(page.contains("note=&lt;script&gt;alert(1)&lt;/script&gt;"), "{page}");
    assert!(page.contains("x=&lt;img src=x onerror=alert(2)&gt;"), "{page}");
    assert!(!page.contains("<script>alert(1)") && !page.contains("<img src=x"), "{page}");
    // The generatorURL is text, never a link.
    assert!(page.contains("http://prometheus.local/graph?g0.expr=") && !page.contains("href=\"http"), "{page}");
    let (_, _, timeline) = get_page(&h, "/ui/targets/sms-app/model-service").await;
    assert!(!timeline.contains("<script>") && !timeline.contains("<img"), "{timeline}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_credentials_the_page_asks_for_basic_auth() {
    // SAFETY: a variable no other test reads.
    unsafe { std::env::set_var("BACKSTOP_UI_TEST_PASS", "pw") };
    let config = crate::http::auth::AuthConfig {
        bearer: None,
        basic: Some(("oncall".into(), crate::secret::Secret::Env("BACKSTOP_UI_TEST_PASS".into()))),
    };
    let h = crate::testing::harness_with(crate::http::auth::Auth::load(&config).unwrap(), 1 << 20);
    let (status, headers, _) = get_page(&h, "/ui/").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[header::WWW_AUTHENTICATE], "Basic realm=\"backstop\"");
    let req = Request::get("/ui/").header("authorization", "Basic b25jYWxsOnB3").body(Body::empty()).unwrap();
    let resp = crate::http::router(h.state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "oncall:pw");
}

/// Every page says whether the chain was verified (and what was written since), and a broken
/// one loudly.
#[tokio::test(flavor = "multi_thread")]
async fn every_page_carries_the_chain_verdict_and_a_broken_chain_is_loud() {
    let h = harness();
    h.webhook(FIRING).await;
    let (_, _, html) = get_page(&h, "/ui/").await;
    assert!(html.contains("chain not verified yet"), "{html}");
    let check = h.state.pipeline.check_chain().await;
    assert!(check.intact, "{check:?}");
    let (_, _, html) = get_page(&h, "/ui/targets/sms-app/model-service").await;
    assert!(html.contains("chain intact (4 records, seq 1..4), verified"), "{html}");
    // What is written after the check is named as not verified yet, not hidden behind it.
    h.webhook(FIRING).await;
    let (seq, _) = h.state.pipeline.audit().last();
    assert!(seq > 4, "the repeated delivery was recorded");
    let (_, _, html) = get_page(&h, "/ui/").await;
    assert!(html.contains(&format!("seq 5..{seq} written since, verified at the next check")), "{html}");
    // Someone edits a record in place: the next check finds it.
    let (_, segment) = crate::audit::segments(&h.audit).unwrap().remove(0);
    let text = std::fs::read_to_string(&segment).unwrap();
    std::fs::write(&segment, text.replacen("canary-high-error-rate", "canary-high-error-ratE", 1)).unwrap();
    let check = h.state.pipeline.check_chain().await;
    assert!(!check.intact, "{check:?}");
    let (_, _, html) = get_page(&h, "/ui/").await;
    assert!(html.contains("<span class=\"chain loud\">CHAIN BROKEN: "), "{html}");
    assert!(crate::telemetry::metrics::render().contains("backstop_audit_chain_ok"));
}

/// A form as the page rendered it: its action and hidden fields.
fn form_of(html: &str, button: &str) -> (String, Vec<(String, String)>) {
    let end = html.find(&format!(">{button}</button>")).unwrap_or_else(|| panic!("no {button} in {html}"));
    let start = html[..end].rfind("<form").unwrap();
    let form = &html[start..end];
    let attr = |tag: &str, name: &str| {
        let i = tag.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        tag[i..i + tag[i..].find('"').unwrap()].to_string()
    };
    let hidden = form
        .split("<input type=\"hidden\"")
        .skip(1)
        .map(|t| (attr(t, "name"), attr(t, "value").replace("&quot;", "\"")))
        .collect();
    (attr(form, "action"), hidden)
}

async fn submit(
    h: &crate::testing::Harness,
    action: &str,
    fields: &[(String, String)],
    origin: &str,
) -> (StatusCode, HeaderMap, String) {
    let body: String = fields.iter().map(|(k, v)| format!("{k}={}", url_encode(v))).collect::<Vec<_>>().join("&");
    let req = Request::post(action)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("host", "backstop.local")
        .header("origin", origin)
        .body(Body::from(body))
        .unwrap();
    let resp = crate::http::router(h.state.clone()).oneshot(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&bytes).into())
}

fn url_encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

fn with(mut fields: Vec<(String, String)>, more: &[(&str, &str)]) -> Vec<(String, String)> {
    fields.extend(more.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    fields
}

/// Pause from the page holds the next alert; undo from the action's page puts the weights back;
/// each recorded with who and why; forms from elsewhere, stale or unconfirmed are refused.
#[tokio::test(flavor = "multi_thread")]
async fn the_page_pauses_and_undoes_with_reason_and_actor_and_refuses_forged_forms() {
    let h = harness();
    let (_, body) = h.webhook(FIRING).await;
    let id = body["results"][0]["action_id"].as_str().unwrap().to_string();
    let (_, _, html) = get_page(&h, &format!("/ui/actions/{id}")).await;
    let (action, hidden) = form_of(&html, "Undo this action");
    let me = "http://backstop.local";
    // Refused: from another site, without the token, unconfirmed.
    let (status, _, _) =
        submit(&h, &action, &with(hidden.clone(), &[("reason", "x"), ("confirm", "yes")]), "http://evil.example").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let forged: Vec<(String, String)> =
        vec![("csrf".into(), "0".repeat(64)), ("reason".into(), "x".into()), ("confirm".into(), "yes".into())];
    let (status, _, page) = submit(&h, &action, &forged, me).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
    let (status, _, _) = submit(&h, &action, &with(hidden.clone(), &[("reason", "x")]), me).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(h.vs().contains("weight: 100 # stable"), "nothing was undone");
    // Done: undone, recorded, and on to the undo's own page.
    let (status, headers, _) =
        submit(&h, &action, &with(hidden, &[("reason", "false alarm"), ("confirm", "yes")]), me).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(headers[header::LOCATION].to_str().unwrap().starts_with("/ui/actions/"));
    assert!(h.vs().contains("weight: 90 # stable"), "{}", h.vs());
    let control = h.records(Kind::Control).into_iter().last().unwrap().entry;
    assert_eq!((control.actor.as_deref(), control.reason.as_deref()), (Some("ui"), Some("false alarm")));
    // Pause the target from its page: the next alert is held.
    let (_, _, html) = get_page(&h, "/ui/targets/sms-app/model-service").await;
    let (action, hidden) = form_of(&html, "Pause this target");
    let (status, _, _) = submit(&h, &action, &with(hidden, &[("reason", "looking"), ("confirm", "yes")]), me).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let again = FIRING.replace("1795550591", "1795550592").replace("2026-11-24T20:03:11", "2026-11-24T20:09:11");
    let (_, body) = h.webhook(&again).await;
    assert_eq!(body["results"][0]["outcome"], "held", "{body}");
    assert!(body["results"][0]["reason"].as_str().unwrap().contains("paused"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_page_shows_no_controls_and_refuses_them() {
    let mut h = harness();
    h.webhook(FIRING).await;
    let (_, _, html) = get_page(&h, "/ui/targets/sms-app/model-service").await;
    let (action, hidden) = form_of(&html, "Pause this target");
    h.state.ui_read_only = true;
    let (_, _, html) = get_page(&h, "/ui/targets/sms-app/model-service").await;
    // The filter form (a GET) stays; no control's form does.
    assert!(!html.contains("method=\"post\"") && !html.contains("Pause this target"), "{html}");
    let (status, _, _) =
        submit(&h, &action, &with(hidden, &[("reason", "x"), ("confirm", "yes")]), "http://backstop.local").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(h.records(Kind::Control).is_empty());
}

/// A feedback rollback's action page draws its evidence: both rates with their intervals, p
/// against alpha.
#[tokio::test(flavor = "multi_thread")]
async fn a_feedback_decision_page_draws_the_rates_and_p_against_alpha() {
    let h = harness();
    let results = h.feedback_batches(&crate::testing::outcomes(1, 6000, 0.2, 0.05)).await;
    let id = results[0]["action_id"].as_str().unwrap_or_else(|| panic!("{results:?}")).to_string();
    let (_, _, page) = get_page(&h, &format!("/ui/actions/{id}")).await;
    assert!(page.contains("<svg class=\"evidence\""), "{page}");
    assert_eq!(page.matches("class=\"interval\"").count(), 2, "{page}");
    assert!(page.contains("at or below alpha"), "{page}");
}

/// The overview shows the feedback comparisons under way, canary against baseline.
#[tokio::test(flavor = "multi_thread")]
async fn the_overview_shows_the_feedback_comparisons_under_way() {
    let h = harness();
    h.feedback_batches(&crate::testing::outcomes(2, 2000, 0.05, 0.05)).await;
    let (_, _, html) = get_page(&h, "/ui/").await;
    assert!(html.contains("Feedback comparisons under way"), "{html}");
    assert!(html.contains("<td>feedback-canary-errors</td><td>error_ratio</td><td>v2 vs v1</td>"), "{html}");
}

#[test]
fn an_action_id_says_when_it_was_made() {
    let before = chrono::Utc::now() - chrono::Duration::milliseconds(1);
    let at = minted_at(&uuid::Uuid::now_v7().to_string()).unwrap();
    assert!(at >= before && at <= chrono::Utc::now(), "{at}");
    // Not a UUIDv7 (a v4, or no UUID at all): no bound, every segment is looked at.
    assert_eq!(minted_at("6f1c1ad4-4a5e-4b8f-9c0d-1e2f3a4b5c6d"), None);
    assert_eq!(minted_at("no-such-action"), None);
}

/// A delivery's `received` record (format 2) of `n` alerts, `n{i}` their fingerprints.
fn delivery_of(n: usize) -> audit::Record {
    let alerts: Vec<crate::event::Alert> = (0..n)
        .map(|i| {
            let starts_at = chrono::DateTime::from_timestamp(1_795_550_591, 0).unwrap();
            crate::event::Alert {
                id: format!("n{i}-1795550591"),
                source: crate::event::SourceKind::Alertmanager,
                name: "CanaryHighErrorRate".into(),
                status: crate::event::AlertStatus::Firing,
                labels: [("alertname".to_string(), "CanaryHighErrorRate".to_string()), ("n".into(), format!("{i}"))]
                    .into(),
                annotations: Default::default(),
                starts_at,
                ends_at: None,
                fingerprint: format!("n{i}"),
                generator_url: String::new(),
            }
        })
        .collect();
    let detail =
        serde_json::to_value(crate::event::AlertsRecord::of(&json!({"receiver": "backstop"}), &alerts)).unwrap();
    audit::Record {
        seq: 9,
        time: chrono::Utc::now(),
        prev: audit::GENESIS.into(),
        entry: audit::Entry::new(Kind::Received).source("alertmanager").detail(detail),
    }
}

#[test]
fn a_delivery_s_row_shows_its_first_alerts_and_how_many_more_or_only_the_one_an_action_is_about() {
    let r = delivery_of(7);
    let row = record_row(&r);
    assert_eq!(row[4], "7 alerts");
    for i in 0..5 {
        assert!(row[5].contains(&format!("alertname=CanaryHighErrorRate n={i}</code> firing")), "{}", row[5]);
    }
    assert!(!row[5].contains("n=5") && row[5].ends_with("and 2 more alerts"), "{}", row[5]);
    let about = record_row_about(&r, Some("n6-1795550591"));
    assert_eq!(about[4], "n6-1795550591");
    assert!(about[5].contains("n=6") && !about[5].contains("n=0") && !about[5].contains("more"), "{}", about[5]);
    assert_eq!(record_row(&delivery_of(1))[4], "n0-1795550591", "one alert: its id");
}

#[test]
fn the_page_shows_a_time_from_the_api_as_it_shows_records_times() {
    assert_eq!(time(&json!("2026-12-03T16:24:55.738120543Z")), "2026-12-03T16:24:55.738Z");
    assert_eq!(time(&json!("2026-12-03T17:24:55+01:00")), "2026-12-03T16:24:55.000Z");
    assert_eq!(time(&json!("not a time <b>")), "not a time &lt;b&gt;", "anything else as text, escaped");
    assert_eq!(time(&Value::Null), "");
}
