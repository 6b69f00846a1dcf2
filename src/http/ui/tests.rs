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

/// Every page says whether the chain was verified, and a broken one loudly.
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
