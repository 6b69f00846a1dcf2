//! Traces over OTLP: the real binary exports its spans to an OTLP/HTTP receiver started by the
//! test, with the W3C trace context of the incoming request (or Kafka message) as their parent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use serde_json::{Value, json};

use crate::support::backstop::{Workdir, eventually};
use crate::support::tansu::Tansu;

const FIRING: &str = include_str!("../../fixtures/alertmanager/firing.json");
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_ID: &str = "b7ad6b7169203331";

/// What the receiver got: each request's `Content-Type` and body.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A minimal OTLP/HTTP receiver on 127.0.0.1: takes `POST /v1/traces`, answers 200.
async fn receiver() -> (String, Received) {
    let received = Received::default();
    async fn traces(State(r): State<Received>, headers: HeaderMap, body: Bytes) -> axum::Json<Value> {
        let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        r.lock().unwrap().push((ct, body.to_vec()));
        axum::Json(json!({}))
    }
    let app = Router::new().route("/v1/traces", post(traces)).with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

/// The spans of every OTLP/JSON export request received, with their resource's attributes.
fn spans(received: &Received) -> Vec<(Value, Value)> {
    let mut out = Vec::new();
    for (ct, body) in received.lock().unwrap().iter() {
        assert_eq!(ct, "application/json", "http/json was asked for");
        let export: Value = serde_json::from_slice(body).unwrap();
        for rs in export["resourceSpans"].as_array().unwrap() {
            for ss in rs["scopeSpans"].as_array().unwrap() {
                for span in ss["spans"].as_array().unwrap() {
                    out.push((span.clone(), rs["resource"].clone()));
                }
            }
        }
    }
    out
}

/// An attribute's value as a string (string, int and bool values).
fn attr(span: &Value, key: &str) -> Option<String> {
    let kv = span["attributes"].as_array()?.iter().find(|kv| kv["key"] == key)?;
    let v = &kv["value"];
    v["stringValue"]
        .as_str()
        .map(str::to_string)
        .or_else(|| v["intValue"].as_str().map(str::to_string))
        .or_else(|| v["intValue"].as_i64().map(|i| i.to_string()))
        .or_else(|| v["boolValue"].as_bool().map(|b| b.to_string()))
}

fn named<'a>(spans: &'a [(Value, Value)], name: &str) -> Vec<&'a Value> {
    spans.iter().map(|(s, _)| s).filter(|s| s["name"] == name).collect()
}

fn one<'a>(spans: &'a [(Value, Value)], name: &str) -> &'a Value {
    match named(spans, name)[..] {
        [s] => s,
        ref found => panic!("expected one `{name}` span, found {}: {spans:#?}", found.len()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_spans_are_exported_over_otlp_under_the_callers_trace() {
    let (endpoint, received) = receiver().await;
    let wd = Workdir::new();
    let server = wd.serve_with_env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_SERVICE_NAME", "backstop-under-test"),
    ]);
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/alertmanager", server.url))
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
        .header("tracestate", "vendor=opaque")
        .body(FIRING)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let result = &body["results"][0];
    assert_eq!(result["outcome"], "applied", "{body}");
    let log = server.log();
    assert!(log.contains("exporting traces over OTLP"), "{log}");
    // SIGTERM: the spans still queued in the batch processor are exported before exit.
    assert!(server.terminate().success());

    let spans = spans(&received);
    let intake = one(&spans, "intake");
    assert_eq!(intake["traceId"], TRACE_ID);
    assert_eq!(intake["parentSpanId"], PARENT_ID, "the intake span's parent is the caller's span");
    assert_eq!(intake["traceState"], "vendor=opaque");
    assert_eq!(attr(intake, "source").as_deref(), Some("alertmanager"));
    assert_eq!(intake["kind"], 2, "SPAN_KIND_SERVER");

    let alerts = one(&spans, "alerts");
    let decided = one(&spans, "decided");
    let action = one(&spans, "action");
    for (child, parent) in [(alerts, intake), (decided, alerts), (action, decided)] {
        assert_eq!(child["traceId"], TRACE_ID, "{child}");
        assert_eq!(child["parentSpanId"], parent["spanId"], "{} is a child of {}", child["name"], parent["name"]);
    }
    assert_eq!(attr(alerts, "alerts").as_deref(), Some("1"));
    assert_eq!(attr(decided, "rule"), result["rule"].as_str().map(str::to_string));
    assert_eq!(attr(decided, "event_id"), result["event_id"].as_str().map(str::to_string));
    assert_eq!(attr(action, "rule"), result["rule"].as_str().map(str::to_string));
    assert_eq!(attr(action, "action_id"), result["action_id"].as_str().map(str::to_string));
    assert_eq!(attr(action, "target"), result["target"].as_str().map(str::to_string));
    assert_eq!(attr(action, "write").as_deref(), Some("true"));

    let (_, resource) = spans.iter().find(|(s, _)| s["name"] == "intake").unwrap();
    let service = resource["attributes"].as_array().unwrap().iter().find(|kv| kv["key"] == "service.name").unwrap();
    assert_eq!(service["value"]["stringValue"], "backstop-under-test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_defaults_to_protobuf_and_a_request_without_traceparent_starts_a_trace() {
    let (endpoint, received) = receiver().await;
    let wd = Workdir::new();
    let server = wd.serve_with_env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]);
    let (status, body) = server.post("/v1/alertmanager", "application/json", FIRING).await;
    assert_eq!(status, 200, "{body}");
    assert!(server.terminate().success());
    let got = received.lock().unwrap().clone();
    assert!(!got.is_empty(), "nothing exported");
    for (ct, body) in &got {
        assert_eq!(ct, "application/x-protobuf");
        assert!(!body.is_empty());
        // The caller's trace id is nowhere: a new trace was started.
        assert!(!body.windows(16).any(|w| w == hex::decode(TRACE_ID).unwrap()));
    }
    let all: Vec<u8> = got.iter().flat_map(|(_, b)| b.clone()).collect();
    assert!(all.windows(6).any(|w| w == b"intake"), "the intake span is exported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_grpc_is_refused_with_a_warning_and_the_server_still_runs() {
    let (endpoint, received) = receiver().await;
    let wd = Workdir::new();
    let server =
        wd.serve_with_env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]);
    let (status, body) = server.post("/v1/alertmanager", "application/json", FIRING).await;
    assert_eq!(status, 200, "{body}");
    let log = server.log();
    assert!(log.contains("traces are not exported") && log.contains("grpc"), "{log}");
    assert!(server.terminate().success());
    assert!(received.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_kafka_message_headers_carry_the_trace_context() {
    let Some(broker) = Tansu::try_start().await else { return };
    broker.create_topics(&["backstop.alerts", "backstop.feedback"]).await;
    let (endpoint, received) = receiver().await;
    let wd = Workdir::new();
    let config = std::fs::read_to_string(wd.config()).unwrap()
        + &format!("\nkafka:\n  brokers: {}\n  group_id: otlp-test\n", broker.brokers());
    std::fs::write(wd.config(), config).unwrap();
    let server =
        wd.serve_with_env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]);
    let alert = json!({"labels": {"alertname": "CanaryHighErrorRate", "namespace": "sms-app", "virtualservice": "model-service"},
                       "startsAt": "2026-11-24T20:00:00Z"});
    let traceparent = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    broker.send(&broker.producer(), "backstop.alerts", &alert.to_string(), &[("traceparent", &traceparent)]).await;
    let vs = wd.path("deploy/local/model-service.yaml");
    let rolled = eventually(Duration::from_secs(30), || {
        std::fs::read_to_string(&vs).ok().filter(|t| t.contains("weight: 100 # stable"))
    })
    .await;
    assert!(rolled.is_some(), "the alert from Kafka did not act; log:\n{}", server.log());
    assert!(server.terminate().success());

    let spans = spans(&received);
    let intake = one(&spans, "intake");
    assert_eq!(intake["traceId"], TRACE_ID);
    assert_eq!(intake["parentSpanId"], PARENT_ID);
    assert_eq!(attr(intake, "source").as_deref(), Some("kafka"));
    assert_eq!(attr(intake, "topic").as_deref(), Some("backstop.alerts"));
    assert_eq!(intake["kind"], 5, "SPAN_KIND_CONSUMER");
    let action = one(&spans, "action");
    assert_eq!(action["traceId"], TRACE_ID);
    assert_eq!(attr(action, "rule").as_deref(), Some("canary-high-error-rate"));
}
