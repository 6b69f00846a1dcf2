//! The HTTP API through `router(state)` with `oneshot`: real pipeline, real audit log and a
//! manifests directory in a temporary directory.

use super::*;
use crate::audit::Kind;
use crate::http::auth::AuthConfig;
use crate::secret::Secret;
use crate::testing::post;
use crate::testing::*;
use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread")]
async fn invalid_json_is_400_with_line_and_column_and_recorded() {
    let h = harness();
    let (status, body) = h.webhook("{\n \"receiver\": \"x\",\n oops }").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["status"], 400);
    assert_eq!(body["error"]["line"], 3);
    assert_eq!(body["error"]["column"], 2);
    let rejected = h.records(Kind::Rejected);
    assert_eq!(rejected.len(), 1);
    let d = rejected[0].entry.detail.as_ref().unwrap();
    assert_eq!(d["status"], 400);
    assert_eq!(d["size"], 27);
    assert_eq!(d["sha256"], crate::digest::sha256_hex(b"{\n \"receiver\": \"x\",\n oops }"));
    assert_eq!(d["prefix"], "{\n \"receiver\": \"x\",\n oops }");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_that_is_not_a_webhook_is_422_naming_the_field() {
    let h = harness();
    let body = FIRING.replace("\"fingerprint\":\"a9c5c3b76558e44d\"", "\"fingerprint\":17");
    let (status, resp) = h.webhook(&body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{resp}");
    assert_eq!(resp["error"]["path"], "alerts[0].fingerprint");
    assert_eq!(h.kinds(), vec![Kind::Rejected]);
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_body_is_413_and_recorded_with_its_full_size() {
    let h = harness_with(Auth::none(), 100);
    let (status, resp) = h.webhook(FIRING).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{resp}");
    let d = h.records(Kind::Rejected)[0].entry.detail.clone().unwrap();
    assert_eq!(d["size"], FIRING.len());
    assert_eq!(d["sha256"], crate::digest::sha256_hex(FIRING.as_bytes()));
    assert_eq!(d["prefix"].as_str().unwrap().len(), 100, "only the bytes within the limit are kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_past_the_limit_in_many_chunks_is_recorded_with_the_hash_of_all_of_it() {
    // The limit falls inside the third chunk: the hash begins there, with what was kept.
    let h = harness_with(Auth::none(), 100);
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
        FIRING.as_bytes().chunks(40).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect();
    let req = Request::post("/v1/alertmanager")
        .header("content-type", "application/json")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    let (status, resp) = h.send(req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{resp}");
    let d = h.records(Kind::Rejected)[0].entry.detail.clone().unwrap();
    assert_eq!(d["size"], FIRING.len());
    assert_eq!(d["sha256"], crate::digest::sha256_hex(FIRING.as_bytes()));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_accepted_delivery_is_recorded_without_a_hash_of_its_body() {
    // The record holds the alerts; the chain's hash covers it. Hashing each accepted body as
    // well cost a twelfth of a large delivery's CPU.
    let h = harness();
    let (status, resp) = h.webhook(FIRING).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    let d = h.records(Kind::Received)[0].entry.detail.clone().unwrap();
    assert_eq!(d["delivery"]["receiver"], "backstop", "{d}");
    assert!(d["delivery"].get("sha256").is_none(), "{d}");
}

#[tokio::test(flavor = "multi_thread")]
async fn non_json_content_type_is_415() {
    let h = harness();
    let (status, resp) = h.send(post("/v1/alertmanager", "text/plain", FIRING.as_bytes().to_vec())).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(resp["error"]["message"].as_str().unwrap().contains("text/plain"));
    let (status, _) =
        h.send(post("/v1/alertmanager", "application/json; charset=utf-8", FIRING.as_bytes().to_vec())).await;
    assert_eq!(status, StatusCode::OK, "a charset parameter is fine");
    assert_eq!(h.kinds()[0], Kind::Rejected);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_are_401_and_recorded_right_ones_pass() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "s3cret\n").unwrap();
    let auth = Auth::load(&AuthConfig { bearer: Some(Secret::File(dir.path().join("token"))), basic: None }).unwrap();
    let h = harness_with(auth, 1 << 20);
    let (status, _) = h.webhook(FIRING).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let mut req = post("/v1/alertmanager", "application/json", FIRING.as_bytes().to_vec());
    req.headers_mut().insert("authorization", "Bearer s3cret".parse().unwrap());
    let (status, body) = h.send(req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = h.post_json("/v1/pause", json!({"reason": "x"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "controls need credentials too");
    assert_eq!(h.records(Kind::Rejected)[0].entry.detail.as_ref().unwrap()["status"], 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn manual_act_needs_a_known_rule_a_target_and_a_reason() {
    let h = harness();
    let (status, _) = h.post_json("/v1/actions", json!({"rule": "nope", "target": "a/b", "reason": "x"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) =
        h.post_json("/v1/actions", json!({"rule": "canary-high-error-rate", "target": "ab", "reason": "x"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, body) = h
        .post_json(
            "/v1/actions",
            json!({"rule": "canary-high-error-rate", "target": "sms-app/model-service", "reason": " "}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = h.post_json("/v1/actions", json!({"rule": "canary-high-error-rate"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("missing field"), "our error body: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_endpoint_filters_by_outcome_and_rule() {
    let h = harness();
    h.webhook(FIRING).await;
    h.webhook(UNRELATED).await;
    let (status, body) = h
        .send(Request::get("/v1/audit?outcome=applied,noop&rule=canary-high-error-rate").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let records = body["records"].as_array().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["kind"], "applied");
    let (status, _) = h.send(Request::get("/v1/audit?since=yesterday-ish").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, body) = h.send(Request::get("/v1/audit?since=1h&outcome=received").body(Body::empty()).unwrap()).await;
    assert_eq!(body["records"].as_array().unwrap().len(), 2);
    // A misspelt outcome is refused with the ones there are.
    let (status, body) = h.send(Request::get("/v1/audit?outcome=aplied").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("`aplied` is not an outcome: one or more of received, "), "{message}");
    assert!(message.contains(", applied, noop, "), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_failure_answers_503_and_the_redelivery_is_processed() {
    let h = harness();
    h.state.pipeline.audit().fail_next_writes(1);
    let (status, body) = h.webhook(FIRING).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("audit log unavailable"), "{body}");
    assert!(h.vs().contains("weight: 90"), "nothing acted on an unrecorded alert");
    let (status, _) = h.send(Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "not ready while the audit log cannot write");
    // Alertmanager retries on 5xx; the retry finds the log writable again.
    let (status, body) = h.webhook(FIRING).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["outcome"], "applied");
    // Besides, the log records its own recovery (a `control` record `audit-recovered`).
    let kinds: Vec<Kind> = h.kinds().into_iter().filter(|k| *k != Kind::Control).collect();
    assert_eq!(kinds, vec![Kind::Received, Kind::Matched, Kind::Decided, Kind::Applied]);
    assert_eq!(h.records(Kind::Control)[0].entry.detail.as_ref().unwrap()["control"], "audit-recovered");
    let (status, _) = h.send(Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
}

// ---- feedback (rules/feedback.yaml) ----

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_line_in_a_feedback_batch_is_refused_with_its_line_and_recorded_and_the_rest_taken() {
    let h = harness();
    let mut lines = outcomes(4, 3, 0.0, 0.0);
    lines.insert(1, r#"{"service": "model-service", "version": "v2", "time": "soon", "kind": "outcome"}"#.into());
    let (status, body) = h.feedback(&lines).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["received"], 3);
    assert_eq!(body["refused"][0]["line"], 2, "{body}");
    assert_eq!(body["refused"][0]["status"], 422);
    assert!(body["refused"][0]["error"].as_str().unwrap().contains("time"), "{body}");
    assert_eq!(h.records(Kind::Rejected).len(), 1);
    // A single bad event is answered with its status and where.
    let (status, body) = h.send(post("/v1/feedback", "application/json", b"{\"service\": ".to_vec())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(h.records(Kind::Rejected).len(), 2);
}

// ---- verification of the traffic after a rollback ----

// ---- Flagger's rollback webhook ----

// ---- hostile input: bounded time and memory, an error that says where, a record ----

#[tokio::test(flavor = "multi_thread")]
async fn hostile_webhook_bodies_are_answered_with_where_and_recorded() {
    let h = harness();
    let started = std::time::Instant::now();
    // 100,000 `[` where the payload allows anything: skipped without recursion, to the end, 400.
    let deep = format!(r#"{{"somethingNew":{}"#, "[".repeat(100_000));
    let (status, body) = h.webhook(&deep).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!((body["error"]["line"].as_u64(), body["error"]["column"].as_u64()), (Some(1), Some(100_016)), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("EOF while parsing"), "{body}");
    // Invalid UTF-8 in a string: 400 with line and column.
    let mut bytes = FIRING.as_bytes().to_vec();
    let at = FIRING.find("CanaryHighErrorRate").unwrap();
    bytes[at] = 0xc3;
    bytes[at + 1] = 0x28;
    let (status, body) = h.send(post("/v1/alertmanager", "application/json", bytes)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["line"].is_u64() && body["error"]["column"].is_u64(), "{body}");
    // A megabyte-long value echoed by serde: the message is bounded, the path says where.
    let long = "x".repeat(1000 * 1000);
    let (status, body) = h.webhook(&FIRING.replacen(r#""status":"firing""#, &format!(r#""status":"{long}""#), 1)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["path"], "status");
    assert!(body.to_string().len() < 1000, "{} bytes of error body", body.to_string().len());
    // No content type, a wrong one, a megabyte-long one: 415, bounded.
    let req = Request::post("/v1/alertmanager").body(Body::from(FIRING)).unwrap();
    let (status, body) = h.send(req).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(body["error"]["message"].as_str().unwrap().contains("`none`"), "{body}");
    let (status, _) = h.send(post("/v1/alertmanager", "application/x-www-form-urlencoded", FIRING.into())).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let long_type = format!("application/{}", "y".repeat(60_000));
    let (status, body) = h.send(post("/v1/alertmanager", &long_type, FIRING.into())).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(body.to_string().len() < 1000, "{body}");
    // Every refusal is recorded, each with its size, hash, bounded prefix and reason.
    let details = rejected_details(&h);
    assert_eq!(details.len(), 4, "the three 415s had the same body: one record, two repeats");
    for (d, r) in details.iter().zip(h.records(Kind::Rejected)) {
        assert!(d["sha256"].as_str().unwrap().len() == 64 && d["size"].as_u64().unwrap() > 0, "{d}");
        assert!(d["prefix"].as_str().unwrap().len() <= 2 * crate::pipeline::REJECTED_PREFIX, "{d}");
        assert!(r.entry.reason.as_ref().unwrap().len() <= alertmanager::MAX_MESSAGE, "{:?}", r.entry.reason);
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_labels_and_long_values_are_taken_within_the_body_limit() {
    let h = harness();
    let mut labels: serde_json::Map<String, Value> =
        (0..10_000).map(|i| (format!("label_{i:05}"), json!(format!("value-{i}")))).collect();
    labels.insert("alertname".into(), json!("SomethingElse"));
    let payload = |labels: &serde_json::Map<String, Value>| {
        json!({"version": "4", "receiver": "r", "status": "firing", "groupKey": "g", "alerts": [{
            "status": "firing", "labels": labels, "startsAt": "2026-11-24T10:00:00Z", "fingerprint": "f1"}]})
        .to_string()
    };
    let started = std::time::Instant::now();
    let (status, body) = h.webhook(&payload(&labels)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let received = &h.records(Kind::Received)[0].entry;
    let alerts = crate::event::alerts_received(received.detail.as_ref(), received.source.as_deref()).unwrap();
    assert_eq!(alerts[0].labels.len(), 10_001);
    // One label value of 900 KB (the limit is 1 MiB).
    let one = serde_json::Map::from_iter([
        ("alertname".to_string(), json!("SomethingElse")),
        ("blob".to_string(), json!("v".repeat(900_000))),
    ]);
    let (status, body) = h.webhook(&payload(&one).replace("\"f1\"", "\"f2\"")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
    assert_eq!(h.records(Kind::Received).len(), 2);
}

/// A body that sends `first` and then nothing more, ever.
fn stalled_body(first: &'static [u8]) -> Body {
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(bytes::Bytes::from_static(first)) })
        .chain(futures::stream::pending());
    Body::from_stream(stream)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_stops_arriving_is_408_at_the_deadline_and_recorded() {
    let h = harness();
    let timeout = std::time::Duration::from_millis(300);
    let limits = ServerLimits { body_read_timeout: timeout, ..Default::default() };
    let send = |req: Request<Body>| {
        let app = router(h.state.clone()).layer(axum::Extension(limits));
        async move {
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice::<Value>(&bytes).unwrap())
        }
    };
    let started = std::time::Instant::now();
    let req = Request::post("/v1/alertmanager")
        .header("content-type", "application/json")
        .body(stalled_body(b"{\"receiver\":"))
        .unwrap();
    let (status, body) = send(req).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{body}");
    assert_eq!(body["error"]["received_bytes"], 12, "{body}");
    assert!(started.elapsed() >= timeout && started.elapsed() < timeout * 10, "{:?}", started.elapsed());
    for path in ["/v1/feedback", "/v1/flagger/rollback"] {
        let req = Request::post(path)
            .header("content-type", "application/x-ndjson")
            .body(stalled_body(b"{\"service\":"))
            .unwrap();
        assert_eq!(send(req).await.0, StatusCode::REQUEST_TIMEOUT, "{path}");
    }
    let d = rejected_details(&h);
    assert_eq!((d[0]["status"].as_u64(), d[0]["size"].as_u64()), (Some(408), Some(12)), "{d:?}");
    assert_eq!(d[0]["prefix"], "{\"receiver\":");
    assert_eq!(d.len(), 2, "the second and third bodies are the same: one record, a repeat");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_breaks_off_is_400_and_recorded_not_taken_as_complete() {
    let h = harness();
    // A complete, valid batch line, then the connection breaks: nothing of it is taken.
    let stream = futures::stream::iter(vec![
        Ok(bytes::Bytes::from(outcomes(9, 1, 0.0, 0.0)[0].clone() + "\n")),
        Err(std::io::Error::other("connection reset")),
    ]);
    let req = Request::post("/v1/feedback")
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap();
    let (status, body) = h.send(req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("could not be read"), "{body}");
    assert_eq!(h.kinds(), vec![Kind::Rejected], "nothing of a broken body is taken");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_of_thousands_of_bad_lines_is_recorded_a_bounded_number_of_times() {
    let h = harness();
    let mut lines: Vec<String> = (0..5000).map(|i| format!("{{\"bad\": {i}}}")).collect();
    lines.push(outcomes(3, 1, 0.0, 0.0).remove(0));
    let started = std::time::Instant::now();
    let (status, body) = h.feedback(&lines).await;
    assert_eq!(status, StatusCode::OK, "one line was taken: {}", &body.to_string()[..300]);
    assert_eq!(body["received"], 1);
    assert_eq!(body["refused"].as_array().unwrap().len(), MAX_LISTED_LINES);
    assert_eq!(body["refused_omitted"], 5000 - MAX_LISTED_LINES);
    assert_eq!(body["refused"][99]["line"], 100);
    let d = rejected_details(&h);
    assert_eq!(d.len(), MAX_RECORDED_LINES + 1, "the first lines one by one, then the body once");
    let last = d.last().unwrap();
    assert_eq!(last["location"]["refused_lines"], 5000 - MAX_RECORDED_LINES);
    assert_eq!(last["location"]["lines"][0]["line"], MAX_RECORDED_LINES + 1);
    assert_eq!(last["size"].as_u64().unwrap() as usize, lines.join("\n").len());
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
    // Every line bad: 422, and the same bounds.
    let (status, body) = h.feedback(&lines[..5000]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["received"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn controls_check_credentials_before_reading_the_body() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "s3cret\n").unwrap();
    let auth = Auth::load(&AuthConfig { bearer: Some(Secret::File(dir.path().join("token"))), basic: None }).unwrap();
    let h = harness_with(auth, 1 << 20);
    for path in ["/v1/actions", "/v1/pause", "/v1/resume", "/v1/actions/x/undo"] {
        let (status, body) = h.send(post(path, "application/json", b"{not json".to_vec())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
        let (status, body) = h.send(post(path, "text/plain", b"x".to_vec())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
    }
    let mut req = post("/v1/pause", "application/json", b"{not json".to_vec());
    req.headers_mut().insert("authorization", "Bearer s3cret".parse().unwrap());
    assert_eq!(h.send(req).await.0, StatusCode::BAD_REQUEST, "with credentials, the body is read");
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_never_reach_the_answer_or_the_audit_log() {
    const TOKEN: &str = "tok-4f9c2e7d1b";
    const WRONG: &str = "wrong-9a8b7c6d";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let auth = Auth::load(&AuthConfig { bearer: Some(Secret::File(dir.path().join("token"))), basic: None }).unwrap();
    let h = harness_with(auth, 1 << 20);
    let mut answers = String::new();
    for token in [WRONG, TOKEN] {
        for (path, ct, body) in [
            ("/v1/alertmanager", "application/json", FIRING.to_string()),
            ("/v1/alertmanager", "application/json", "not json".to_string()),
            ("/v1/alertmanager", "text/plain", FIRING.to_string()),
            ("/v1/feedback", "application/x-ndjson", "{}\n{\"password\": 1}".to_string()),
            ("/v1/pause", "application/json", "{\"reason\": 5}".to_string()),
            ("/v1/flagger/rollback", "application/json", "{}".to_string()),
        ] {
            let mut req = post(path, ct, body.into_bytes());
            req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
            let (status, body) = h.send(req).await;
            answers.push_str(&format!("{status} {body}\n"));
        }
    }
    let mut req = Request::get("/v1/audit").body(Body::empty()).unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let (status, audit) = h.send(req).await;
    assert_eq!(status, StatusCode::OK);
    answers.push_str(&audit.to_string());
    let mut log = String::new();
    for entry in std::fs::read_dir(&h.audit).unwrap() {
        log.push_str(&String::from_utf8_lossy(&std::fs::read(entry.unwrap().path()).unwrap()));
    }
    assert!(log.contains("rejected") && log.contains("applied"), "{log}");
    for secret in [TOKEN, WRONG] {
        assert!(!answers.contains(secret), "{secret} in an answer:\n{answers}");
        assert!(!log.contains(secret), "{secret} in the audit log:\n{log}");
    }
}

mod server {
    //! `http::serve` on a loopback socket, with short limits.
    use super::*;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits() -> ServerLimits {
        ServerLimits {
            header_read_timeout: Duration::from_millis(500),
            max_headers: 20,
            max_head_bytes: 8192,
            body_read_timeout: Duration::from_secs(2),
            ..ServerLimits::default()
        }
    }

    async fn start_with(h: &Harness, limits: ServerLimits) -> Running {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = tokio_util::sync::CancellationToken::new();
        let app = router(h.state.clone());
        let server = tokio::spawn(serve(listener, app, Some(h.state.pipeline.clone()), limits, token.clone()));
        (addr, token, server)
    }

    /// Send `request` on a new connection; the status line of the answer, if one comes within
    /// `wait`, and the stream (open).
    async fn ask(
        addr: std::net::SocketAddr,
        request: &[u8],
        wait: Duration,
    ) -> (Option<String>, tokio::net::TcpStream) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let status = status_within(&mut s, wait).await;
        (status, s)
    }

    async fn status_within(s: &mut tokio::net::TcpStream, wait: Duration) -> Option<String> {
        let mut buf = vec![0u8; 4096];
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => String::from_utf8_lossy(&buf[..n]).lines().next().map(str::to_string),
            _ => None,
        }
    }

    fn post(body: &str) -> Vec<u8> {
        format!(
            "POST /v1/alertmanager HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// With one upload allowed at a time, a second waits (its body unread) until the first is
    /// answered, while a GET (a probe, metrics) is answered at once.
    #[tokio::test(flavor = "multi_thread")]
    async fn uploads_past_the_limit_wait_their_turn_and_probes_are_never_held_up() {
        let h = harness();
        let (addr, token, server) = start_with(&h, ServerLimits { max_concurrent_requests: 1, ..limits() }).await;
        // The first upload sends its head and part of its body, and holds the one turn.
        let mut first = post(FIRING);
        let rest = first.split_off(first.len() - 100);
        let (none, mut slow) = ask(addr, &first, Duration::from_millis(200)).await;
        assert_eq!(none, None, "the first upload is not complete");
        let (waiting, mut second) = ask(addr, &post(UNRELATED), Duration::from_millis(400)).await;
        assert_eq!(waiting, None, "the second upload waits for its turn");
        let (probe, _) = ask(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", Duration::from_secs(2)).await;
        assert_eq!(probe.as_deref(), Some("HTTP/1.1 200 OK"), "a probe is not held up by uploads");
        // The first completes; then the second is taken.
        slow.write_all(&rest).await.unwrap();
        assert_eq!(status_within(&mut slow, Duration::from_secs(5)).await.as_deref(), Some("HTTP/1.1 200 OK"));
        assert_eq!(status_within(&mut second, Duration::from_secs(5)).await.as_deref(), Some("HTTP/1.1 200 OK"));
        assert_eq!(h.records(Kind::Received).len(), 2, "both recorded, nothing refused");
        token.cancel();
        tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
    }

    /// With one connection allowed, a second is not served while the first is open, and is
    /// once the first has closed.
    #[tokio::test(flavor = "multi_thread")]
    async fn connections_past_the_limit_wait_until_one_closes() {
        let h = harness();
        let limits = ServerLimits { max_connections: 1, header_read_timeout: Duration::from_secs(10), ..limits() };
        let (addr, token, server) = start_with(&h, limits).await;
        let get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        let (answered, first) = ask(addr, get, Duration::from_secs(2)).await;
        assert_eq!(answered.as_deref(), Some("HTTP/1.1 200 OK"));
        // The first stays open (kept alive): the second waits in the backlog.
        let (waiting, mut second) = ask(addr, get, Duration::from_millis(400)).await;
        assert_eq!(waiting, None, "no second connection is served while the first is open");
        drop(first);
        assert_eq!(status_within(&mut second, Duration::from_secs(5)).await.as_deref(), Some("HTTP/1.1 200 OK"));
        token.cancel();
        tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
    }

    /// A server on a loopback port: its address, what stops it, and its task.
    type Running =
        (std::net::SocketAddr, tokio_util::sync::CancellationToken, tokio::task::JoinHandle<std::io::Result<()>>);

    async fn start(h: &Harness) -> Running {
        start_with(h, limits()).await
    }

    /// The rejected records once there are `n` and no more come for a moment.
    async fn settled(h: &Harness, n: usize) -> Vec<Value> {
        for _ in 0..50 {
            if rejected_details(h).len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        rejected_details(h)
    }

    /// Read until the server closes; what it sent, and when it closed.
    async fn until_closed(s: &mut tokio::net::TcpStream) -> (String, Instant) {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await.expect("closed");
        (String::from_utf8_lossy(&got).into_owned(), Instant::now())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_silent_or_trickling_client_is_disconnected_at_the_head_deadline_and_recorded() {
        let h = harness();
        let (addr, token, server) = start(&h).await;
        let started = Instant::now();
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let trickle = tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            for b in b"POST /v1/alertmanager HTTP/1.1\r\nHost: x\r\n".iter() {
                if s.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            until_closed(&mut s).await
        });
        let (sent, closed) = until_closed(&mut silent).await;
        assert_eq!(sent, "", "nothing is answered to a client that sent nothing");
        let waited = closed - started;
        assert!(waited >= Duration::from_millis(450) && waited < Duration::from_secs(3), "{waited:?}");
        let (_, closed) = trickle.await.unwrap();
        assert!(closed - started < Duration::from_secs(3), "{:?}", closed - started);
        // One record for the kind of refusal, its repeat counted in the next one.
        let d = settled(&h, 1).await;
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0]["stage"], "request head");
        assert!(d[0]["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(h.records(Kind::Rejected)[0].entry.reason.as_ref().unwrap().contains("not received within 0.5s"));
        token.cancel();
        tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_idle_keep_alive_connection_is_closed_at_the_head_deadline_and_nothing_recorded() {
        let h = harness();
        let (addr, token, server) = start(&h).await;
        let mut ok = tokio::net::TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let answered = Instant::now();
        let (sent, closed) = until_closed(&mut ok).await;
        assert!(sent.starts_with("HTTP/1.1 200"), "{sent}");
        let idle = closed - answered;
        assert!(idle >= Duration::from_millis(400) && idle < Duration::from_secs(3), "{idle:?}");
        // A webhook with its body, kept alive: the same.
        let mut hook = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "POST /v1/alertmanager HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{FIRING}",
            FIRING.len()
        );
        hook.write_all(request.as_bytes()).await.unwrap();
        let (sent, _) = until_closed(&mut hook).await;
        assert!(sent.starts_with("HTTP/1.1 200"), "{sent}");
        assert_eq!(settled(&h, 1).await, Vec::<Value>::new(), "closing an idle connection refuses nothing");
        token.cancel();
        tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn oversized_or_malformed_heads_are_refused_with_their_status_and_recorded() {
        let h = harness();
        let (addr, token, server) = start(&h).await;
        let send = |head: Vec<u8>| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let _ = s.write_all(&head).await;
            until_closed(&mut s).await.0
        };
        let head =
            |extra: &str| format!("POST /v1/alertmanager HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n");
        // Over our limits: 431 with our error body, naming the header or the count.
        let answer = send(head(&format!("X-Big: {}\r\n", "a".repeat(10_000))).into_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["error"]["header"], "x-big", "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("limit of 8192 bytes"), "{body}");
        let many: String = (0..50).map(|i| format!("X-H{i}: v\r\n")).collect();
        let answer = send(head(&many).into_bytes()).await;
        assert!(answer.contains("\"header_fields\":52"), "{answer}");
        // Over hyper's (four times ours): refused unread, an empty 431.
        let answer = send(head(&format!("X-Big: {}\r\n", "a".repeat(40_000))).into_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431") && answer.ends_with("\r\n\r\n"), "{answer}");
        let lots: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
        assert!(send(head(&lots).into_bytes()).await.starts_with("HTTP/1.1 431"));
        // Not HTTP: hyper's 400. HTTP/2: closed.
        assert!(send(b"NOT HTTP AT ALL\r\n\r\n".to_vec()).await.starts_with("HTTP/1.1 400"));
        assert_eq!(send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()).await, "");
        // Each kind recorded once (the two hard-limit ones are one kind), with where. (A refusal
        // hyper answered is recorded when its connection has closed: wait for it.)
        let d = settled(&h, 5).await;
        let statuses: Vec<_> = d.iter().map(|d| d["status"].as_u64()).collect();
        assert_eq!(statuses, vec![Some(431), Some(431), Some(431), Some(400), None], "one record per kind: {d:?}");
        assert!(h.records(Kind::Rejected)[4].entry.reason.as_ref().unwrap().contains("HTTP/2"));
        assert_eq!(d[0]["location"]["header"], "x-big");
        assert_eq!(d[1]["location"]["header_fields"], 52);
        assert_eq!(d[2]["repeats_before"], 0);
        // A request within the limits is answered on the same server.
        let ok = head(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", FIRING.len())) + FIRING;
        let answer = send(ok.into_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        token.cancel();
        tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn shutdown_lets_a_request_in_flight_finish_and_closes_idle_connections() {
        let h = harness();
        let (addr, token, server) = start(&h).await;
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 512];
        let n = idle.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        // A webhook whose body is still arriving when shutdown starts.
        let mut busy = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /v1/alertmanager HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            FIRING.len()
        );
        busy.write_all(head.as_bytes()).await.unwrap();
        busy.write_all(&FIRING.as_bytes()[..100]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        token.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
        busy.write_all(&FIRING.as_bytes()[100..]).await.unwrap();
        let (answer, _) = until_closed(&mut busy).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let (rest, _) = until_closed(&mut idle).await;
        assert_eq!(rest, "");
        tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn line() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(br#"{"service":"m","version":"v2","time":"2026-11-24T20:00:00Z","kind":"satisfaction","satisfied":true}"#.to_vec()),
            Just(br#"{"service":"m","version":"v2","time":"soon","kind":"score","score":1}"#.to_vec()),
            Just(b"   ".to_vec()),
            Just(b"\r".to_vec()),
            Just(br#"{"labels":{"alertname":"A"},"startsAt":"2026-11-24T20:00:00Z"}"#.to_vec()),
            "[ -~]{0,40}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>().prop_filter("not a newline", |b| *b != b'\n'), 0..40),
        ]
    }

    proptest! {
        /// Splitting a batch: every non-blank line once, with its own 1-based number; each one
        /// an event or an error naming that line, bounded, with a 400 (not JSON) or 422 status.
        #[test]
        fn ndjson_batches_never_panic_and_name_each_refused_line(lines in prop::collection::vec(line(), 0..30)) {
            let body = lines.join(&b'\n');
            let split = ndjson_lines(&body);
            let expected: Vec<usize> = lines
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
                .map(|(i, _)| i + 1)
                .collect();
            prop_assert_eq!(split.iter().map(|(n, _)| *n).collect::<Vec<_>>(), expected);
            for (n, payload) in split {
                prop_assert_eq!(payload, lines[n - 1].as_slice());
                if let Err(e) = feedback_event(&[], n, payload) {
                    prop_assert_eq!(e.location["line"].as_u64(), Some(n as u64));
                    prop_assert!(e.status == StatusCode::BAD_REQUEST || e.status == StatusCode::UNPROCESSABLE_ENTITY);
                    prop_assert!(!e.message.is_empty() && e.message.len() <= alertmanager::MAX_MESSAGE);
                    if e.status == StatusCode::UNPROCESSABLE_ENTITY && e.message.starts_with("this is an alert") {
                        continue;
                    }
                    prop_assert_eq!(e.status == StatusCode::BAD_REQUEST, e.location["path"] == "");
                }
            }
        }
    }
}

/// Every answer is our error body, a path or method the API does not serve included.
#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_path_and_a_wrong_method_get_our_error_body() {
    let h = harness();
    let (status, body) = h.webhook_to("/v1/alertmanger").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["status"], 404);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("POST /v1/alertmanger") && message.contains("POST /v1/alertmanager"), "{message}");
    // The webhook sent to the wrong address is recorded, as any refused request.
    let rejected = h.records(Kind::Rejected);
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].entry.reason.as_deref(), Some(message));
    let detail = rejected[0].entry.detail.as_ref().unwrap();
    assert_eq!((detail["status"].as_u64(), detail["size"].as_u64()), (Some(404), Some(FIRING.len() as u64)));
    // A stray GET (a browser's favicon) is answered, not recorded.
    let (status, _) = h.send(Request::get("/favicon.ico").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(h.records(Kind::Rejected).len(), 1);
    // A follower answers the same, and does not write (only the leader does). (Another body: the
    // same one again within 10 minutes would be counted, not recorded, anyway.)
    let another = || post("/v1/alertmanger", "application/json", FIRING.replace("a9c5", "b9c5").into_bytes());
    h.state.pipeline.set_gate(crate::pipeline::Gate::Following(Some("backstop-0".into())));
    let (status, _) = h.send(another()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(h.records(Kind::Rejected).len(), 1);
    h.state.pipeline.set_gate(crate::pipeline::Gate::Always);
    h.send(another()).await;
    assert_eq!(h.records(Kind::Rejected).len(), 2, "the leader records it");

    let req = Request::builder().method("GET").uri("/v1/alertmanager").body(Body::empty()).unwrap();
    let resp = router(h.state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "POST", "the methods it takes");
    let body: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["error"]["status"], 405);
    assert!(body["error"]["message"].as_str().unwrap().contains("/v1/alertmanager does not take GET"), "{body}");
}
