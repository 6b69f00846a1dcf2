//! Hostile input against the real binary: bodies and heads built to hurt (deep nesting, huge
//! label sets, invalid UTF-8, wrong types, oversized headers, slow and silent clients) are
//! answered in bounded time and memory with an error that says where, and recorded; secrets
//! never reach the logs, the audit log or an answer. And the rule loader, through the public
//! API, on arbitrary and mutated YAML.

use std::path::Path;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::backstop::{Server, Workdir, eventually};

const FIRING: &str = include_str!("../../fixtures/alertmanager/firing.json");

fn addr(server: &Server) -> String {
    server.url.trim_start_matches("http://").to_string()
}

/// Peak and current resident memory of a process, in MiB (Linux).
fn memory_mib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (kib("VmHWM:") / 1024, kib("VmRSS:") / 1024)
}

/// Send raw bytes, then read until the server closes (at most `wait`): what it answered.
async fn raw(addr: &str, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

/// The `rejected` records, through the CLI as an operator would read them.
fn rejected(wd: &Workdir) -> Vec<Value> {
    let out = wd.cli(&["audit", "query", "--outcome", "rejected", "--format", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

async fn post(server: &Server, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value, Duration) {
    let started = Instant::now();
    let (status, body) = server.post(path, content_type, body).await;
    (status, body, started.elapsed())
}

#[tokio::test]
async fn hostile_bodies_are_answered_in_bounded_time_and_memory_with_where_and_recorded() {
    let wd = Workdir::new();
    let server = wd.serve();
    let pid = server.child.id();
    let mut slowest = Duration::ZERO;
    let mut check = |what: &str, (status, body, took): (u16, Value, Duration), want: u16| {
        assert_eq!(status, want, "{what}: {body}");
        if want >= 400 {
            let e = &body["error"];
            assert_eq!(e["status"], want, "{what}: {body}");
            assert!(e["message"].as_str().is_some_and(|m| !m.is_empty() && m.len() <= 400), "{what}: {body}");
            assert!(body.to_string().len() < 1500, "{what}: an error body of {} bytes", body.to_string().len());
        }
        eprintln!("{what}: {status} in {took:?}");
        slowest = slowest.max(took);
        body
    };
    let json = "application/json";

    // 100,000 `[`: at the top, the first wrong type (422, at `[0]`); inside a field that takes
    // anything, skipped without recursion to the end (400, line and column); in feedback,
    // parsed as JSON, serde_json's recursion limit (400, line and column).
    let body = check("100k [ at the top", post(&server, "/v1/alertmanager", json, vec![b'['; 100_000]).await, 422);
    assert_eq!(body["error"]["path"], "[0]");
    let deep = format!(r#"{{"somethingNew":{}"#, "[".repeat(100_000)).into_bytes();
    let body = check("100k [ in a field", post(&server, "/v1/alertmanager", json, deep).await, 400);
    assert_eq!((body["error"]["line"].as_u64(), body["error"]["column"].as_u64()), (Some(1), Some(100_016)));
    let body = check("100k [ as feedback", post(&server, "/v1/feedback", json, vec![b'['; 100_000]).await, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("recursion limit exceeded"), "{body}");
    assert_eq!(body["error"]["line"], 1);

    // 10,000 labels on one alert, and one label value of 900 KB: taken (within the 1 MiB limit).
    let mut labels: serde_json::Map<String, Value> =
        (0..10_000).map(|i| (format!("label_{i:05}"), json!(format!("value-{i}")))).collect();
    labels.insert("alertname".into(), json!("HostileLabels"));
    let webhook = |labels: &serde_json::Map<String, Value>, fp: &str| {
        json!({"version": "4", "receiver": "r", "status": "firing", "groupKey": "g", "alerts": [
            {"status": "firing", "labels": labels, "startsAt": "2026-11-24T10:00:00Z", "fingerprint": fp}]})
        .to_string()
        .into_bytes()
    };
    check("10k labels", post(&server, "/v1/alertmanager", json, webhook(&labels, "f1")).await, 200);
    let one = serde_json::Map::from_iter([
        ("alertname".to_string(), json!("HostileLabels")),
        ("blob".to_string(), json!("v".repeat(900_000))),
    ]);
    check("900 KB label value", post(&server, "/v1/alertmanager", json, webhook(&one, "f2")).await, 200);
    // 10,000 labels of 100 bytes: over the limit, 413 with the size.
    let big: serde_json::Map<String, Value> =
        (0..10_000).map(|i| (format!("l{i:05}"), json!("x".repeat(100)))).collect();
    let body = check("10k labels of 100 B", post(&server, "/v1/alertmanager", json, webhook(&big, "f3")).await, 413);
    assert!(body["error"]["message"].as_str().unwrap().contains("exceeds the limit of 1048576 bytes"), "{body}");
    // A megabyte-long value echoed by serde: bounded, with the path.
    let long = FIRING.replacen(r#""status":"firing""#, &format!(r#""status":"{}""#, "s".repeat(1000 * 1000)), 1);
    let body = check("1 MB status", post(&server, "/v1/alertmanager", json, long.into_bytes()).await, 422);
    assert_eq!(body["error"]["path"], "status");

    // Invalid UTF-8, in the webhook and in a feedback batch.
    let mut bytes = FIRING.as_bytes().to_vec();
    let at = FIRING.find("CanaryHighErrorRate").unwrap();
    bytes[at..at + 4].copy_from_slice(&[0xff, 0xfe, 0xc3, 0x28]);
    let body = check("invalid UTF-8", post(&server, "/v1/alertmanager", json, bytes).await, 400);
    assert!(body["error"]["line"].is_u64() && body["error"]["column"].is_u64(), "{body}");
    let ndjson = b"{}\n{\"service\":\"\xff\"}\n".to_vec();
    let (status, body, _) = post(&server, "/v1/feedback", "application/x-ndjson", ndjson).await;
    assert_eq!(status, 422, "no line taken: {body}");
    assert_eq!((body["refused"][1]["line"].as_u64(), body["refused"][1]["status"].as_u64()), (Some(2), Some(400)));
    assert!(body["refused"][1]["error"].as_str().unwrap().starts_with("invalid JSON at line 1, column"), "{body}");

    // Wrong content types, and a 10 KB one (echoed elided).
    check("text/plain", post(&server, "/v1/alertmanager", "text/plain", FIRING.into()).await, 415);
    check("form", post(&server, "/v1/feedback", "application/x-www-form-urlencoded", b"a=b".to_vec()).await, 415);
    let body = check("10 KB type", post(&server, "/v1/alertmanager", &"t".repeat(10_000), FIRING.into()).await, 415);
    assert!(body["error"]["message"].as_str().unwrap().contains("bytes)…"), "elided: {body}");

    // 5,000 bad lines and one good: the first 100 listed, 16 recorded one by one, the body once.
    let mut lines: Vec<String> = (0..5000).map(|i| format!("{{\"bad\": {i}}}")).collect();
    lines.push(
        json!({"service": "model-service", "namespace": "sms-app", "version": "v2", "time": "2026-11-24T20:00:00Z",
               "kind": "satisfaction", "satisfied": true, "id": "h-1"})
        .to_string(),
    );
    let batch = lines.join("\n").into_bytes();
    let body = check("5000 bad lines", post(&server, "/v1/feedback", "application/x-ndjson", batch).await, 200);
    assert_eq!((body["received"].as_u64(), body["refused_omitted"].as_u64()), (Some(1), Some(4900)));

    // 70 MB: read up to 64 MiB to hash it, then 413 (or the connection is cut while sending).
    let started = Instant::now();
    let huge = reqwest::Client::new()
        .post(format!("{}/v1/alertmanager", server.url))
        .header("content-type", json)
        .body(vec![b' '; 70 << 20])
        .send()
        .await;
    eprintln!("70 MB body: {:?} in {:?}", huge.as_ref().map(|r| r.status()), started.elapsed());
    if let Ok(r) = huge {
        assert_eq!(r.status(), 413);
    }

    let (peak, now) = memory_mib(pid);
    eprintln!("slowest answer {slowest:?}; backstop peak RSS {peak} MiB, now {now} MiB");
    assert!(slowest < Duration::from_secs(10), "{slowest:?}");
    assert!(peak < 400, "peak resident memory {peak} MiB");

    // Every refusal recorded: reason, status, where, size and hash; the bodies' first bytes only.
    let records = rejected(&wd);
    let statuses: Vec<u64> = records.iter().filter_map(|r| r["detail"]["status"].as_u64()).collect();
    for want in [400, 413, 415, 422] {
        assert!(statuses.contains(&want), "{want} not recorded: {statuses:?}");
    }
    for r in &records {
        let d = &r["detail"];
        assert_eq!(d["sha256"].as_str().map(str::len), Some(64), "{r}");
        assert!(d["prefix"].as_str().unwrap().len() <= 2048, "{r}");
        assert!(r["reason"].as_str().unwrap().len() <= 400, "{r}");
    }
    assert!(records.len() <= 16 + 20, "{} records: bounded however many lines were bad", records.len());
    assert!(server.terminate().success());
    assert!(wd.cli(&["audit", "verify"]).status.success());
}

#[tokio::test]
async fn slow_silent_and_oversized_request_heads_are_cut_off_and_recorded() {
    let wd = Workdir::new();
    let server = wd.serve();
    let (pid, addr) = (server.child.id(), addr(&server));
    let (peak_before, _) = memory_mib(pid);
    let started = Instant::now();
    // 300 connections that send nothing, and one that sends its head a byte a second.
    let mut silent = Vec::new();
    for _ in 0..300 {
        let addr = addr.clone();
        silent.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            let mut got = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut got)).await;
            (got.len(), Instant::now())
        }));
    }
    let trickle = {
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            let mut sent = 0;
            for b in b"POST /v1/alertmanager HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" {
                if s.write_all(&[*b]).await.is_err() {
                    break;
                }
                sent += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let mut got = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut got)).await;
            (sent, Instant::now())
        })
    };
    // Meanwhile the service answers.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, body) = server.post("/v1/alertmanager", "application/json", FIRING).await;
    assert_eq!(status, 200, "{body}");
    let (peak_during, _) = memory_mib(pid);

    // Oversized heads: over our limit, our 431 naming the header; over hyper's, its empty 431.
    let head = |extra: &str| format!("POST /v1/alertmanager HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n");
    let answer =
        raw(&addr, head(&format!("X-Big: {}\r\n", "a".repeat(20_000))).as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["header"], "x-big", "{body}");
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = raw(&addr, head(&many).as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.contains("\"header_fields\":152"), "{answer}");
    let answer =
        raw(&addr, head(&format!("X-Big: {}\r\n", "a".repeat(100_000))).as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let lots: String = (0..1000).map(|i| format!("X-H{i}: v\r\n")).collect();
    assert!(raw(&addr, head(&lots).as_bytes(), Duration::from_secs(5)).await.starts_with("HTTP/1.1 431"));
    // A megabyte of header bytes, sent as fast as possible: cut off at the hard limit.
    let flood = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(1 << 20));
    assert!(raw(&addr, flood.as_bytes(), Duration::from_secs(5)).await.starts_with("HTTP/1.1 431"));

    let mut closed_after = Vec::new();
    for s in silent {
        let (got, at) = s.await.unwrap();
        assert_eq!(got, 0, "nothing is answered to a connection that sent nothing");
        closed_after.push(at - started);
    }
    let (sent, at) = trickle.await.unwrap();
    let (first, last) = (closed_after.iter().min().unwrap(), closed_after.iter().max().unwrap());
    eprintln!(
        "300 silent connections closed after {first:?}..{last:?}; the trickler after {:?} ({sent} bytes sent)",
        at - started
    );
    assert!(*first >= Duration::from_secs(9) && *last < Duration::from_secs(15), "{first:?}..{last:?}");
    assert!(at - started < Duration::from_secs(15) && sent < 15, "{:?}, {sent} bytes", at - started);
    let (peak_after, now) = memory_mib(pid);
    eprintln!(
        "peak RSS {peak_before} MiB before, {peak_during} MiB with 300 idle connections, {peak_after} MiB after; now {now} MiB"
    );
    assert!(peak_after < peak_before + 100, "{peak_before} -> {peak_after} MiB");

    // Recorded: one record per kind of refusal (timeouts, our 431s, hyper's 431), with the peer.
    let records = eventually(Duration::from_secs(5), || {
        let r = rejected(&wd);
        (r.len() >= 4).then_some(r)
    })
    .await
    .expect("the refusals are recorded");
    let heads: Vec<&Value> = records.iter().filter(|r| r["detail"]["stage"] == "request head").collect();
    let reasons: Vec<&str> = heads.iter().map(|r| r["reason"].as_str().unwrap()).collect();
    eprintln!("{reasons:#?}");
    assert!(reasons.iter().any(|r| r.contains("not received within 10s")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("largest: header `x-big`")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("152 header fields")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("refused unread")), "{reasons:?}");
    assert!(heads.len() <= 6, "300 timeouts are one record (and a count), not 300: {}", heads.len());
    assert!(heads.iter().all(|r| r["detail"]["peer"].as_str().unwrap().starts_with("127.0.0.1:")));
    let metrics = reqwest::get(format!("{}/metrics", server.url)).await.unwrap().text().await.unwrap();
    let line =
        metrics.lines().find(|l| l.starts_with(r#"backstop_events_received_total{source="http",outcome="rejected"}"#));
    let counted: u64 = line.and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0);
    assert!(counted >= 301, "every refusal counted in /metrics: {line:?}");
    assert!(server.terminate().success());
}

/// A stand-in for Prometheus, an OTLP collector and the Kubernetes API: answers every request
/// `status` and keeps what it was sent.
async fn recorder(status: u16) -> (String, std::sync::Arc<std::sync::Mutex<String>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let keep = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let keep = keep.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 16];
                let mut got = Vec::new();
                // Read the head (and whatever body came with it), then answer and close.
                while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                keep.lock().unwrap().push_str(&String::from_utf8_lossy(&got));
                let answer = format!("HTTP/1.1 {status} Nope\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn secrets_never_reach_the_logs_the_audit_log_or_an_answer() {
    // One distinct string per secret backstop holds or is sent.
    const HTTP_TOKEN: &str = "sec-http-token-6b1d93";
    const BASIC_PASSWORD: &str = "sec-basic-pass-2f7a40";
    const PROMETHEUS_TOKEN: &str = "sec-prom-token-91c5e8";
    const KAFKA_PASSWORD: &str = "sec-sasl-pass-47e2aa";
    const OTLP_TOKEN: &str = "sec-otlp-token-19f0c3";
    const KUBE_TOKEN: &str = "sec-kube-token-5d88a1";
    const WRONG_TOKEN: &str = "sec-wrong-token-0c3b72";
    const PAYLOAD_PASSWORD: &str = "sec-payload-pass-8e1f06";
    let basic = |user: &str, pass: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    };

    let (prometheus, prometheus_seen) = recorder(503).await;
    let (otlp, otlp_seen) = recorder(503).await;
    let (kube, kube_seen) = recorder(401).await;
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let wd = Workdir::with_config(&format!(
        r#"
listen: 127.0.0.1:0
data_dir: data
rules: [rules]
target:
  kubernetes: {{ kubeconfig: kubeconfig.yaml, request_timeout: 1s }}
http:
  auth:
    bearer_token_file: http-token
    basic: {{ username: alertmanager, password_env: HOSTILE_BASIC_PASSWORD }}
prometheus:
  url: {prometheus}
  bearer_token_file: prometheus-token
  timeout: 1s
kafka:
  brokers: {closed_port}
  properties:
    security.protocol: SASL_PLAINTEXT
    sasl.mechanism: PLAIN
    sasl.username: backstop
    sasl.password: {KAFKA_PASSWORD}
    debug: all
"#
    ));
    std::fs::write(wd.path("http-token"), format!("{HTTP_TOKEN}\n")).unwrap();
    std::fs::write(wd.path("prometheus-token"), format!("{PROMETHEUS_TOKEN}\n")).unwrap();
    std::fs::write(
        wd.path("kubeconfig.yaml"),
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters: [{{name: k, cluster: {{server: '{kube}'}}}}]\n\
             users: [{{name: u, user: {{token: {KUBE_TOKEN}}}}}]\ncontexts: [{{name: c, context: {{cluster: k, user: u}}}}]\n"
        ),
    )
    .unwrap();
    // A rule that asks Prometheus first (so its token is sent), on an alert of its own.
    std::fs::write(
        wd.path("rules/confirmed.yaml"),
        r#"rules:
  - name: confirmed-probe
    match: ['alertname="SecretProbe"']
    target: { namespace: "{{ $labels.namespace }}", virtualservice: "{{ $labels.virtualservice }}" }
    action: { rollback: { stable: v1, canary: [v2] } }
    confirm: { query: 'vector(1)', above: 0.5, on_error: act }
"#,
    )
    .unwrap();
    let server = wd.serve_with_env(&[
        ("RUST_LOG", "trace"),
        ("HOSTILE_BASIC_PASSWORD", BASIC_PASSWORD),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp),
        ("OTEL_EXPORTER_OTLP_HEADERS", &format!("authorization=Bearer%20{OTLP_TOKEN}")),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ]);

    let client = reqwest::Client::new();
    let mut answers = String::new();
    let probe = FIRING
        .replace("CanaryHighErrorRate", "SecretProbe")
        .replace(r#""receiver":"#, &format!(r#""password":"{PAYLOAD_PASSWORD}","receiver":"#));
    let credentials = [
        None,
        Some(format!("Bearer {WRONG_TOKEN}")),
        Some(format!("Basic {}", basic("alertmanager", WRONG_TOKEN))),
        Some(format!("Bearer {HTTP_TOKEN}")),
        Some(format!("Basic {}", basic("alertmanager", BASIC_PASSWORD))),
    ];
    for credential in &credentials {
        for (method, path, content_type, body) in [
            ("POST", "/v1/alertmanager", "application/json", probe.clone()),
            ("POST", "/v1/alertmanager", "application/json", format!("{{\"password\": \"{PAYLOAD_PASSWORD}\"")),
            ("POST", "/v1/alertmanager", "text/plain", FIRING.to_string()),
            ("POST", "/v1/feedback", "application/x-ndjson", format!("{{\"password\": \"{PAYLOAD_PASSWORD}\"}}\n")),
            ("POST", "/v1/pause", "application/json", "{\"reason\": 5}".to_string()),
            ("POST", "/v1/actions", "application/json", "{}".to_string()),
            ("GET", "/v1/audit", "", String::new()),
            ("GET", "/v1/pause", "", String::new()),
            ("GET", "/readyz", "", String::new()),
            ("GET", "/metrics", "", String::new()),
        ] {
            let mut req = client.request(method.parse().unwrap(), format!("{}{path}", server.url)).body(body);
            if !content_type.is_empty() {
                req = req.header("content-type", content_type);
            }
            if let Some(c) = credential {
                req = req.header("authorization", c);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status();
            answers.push_str(&format!("{method} {path} {status}: {}\n", resp.text().await.unwrap()));
        }
    }
    assert!(answers.contains("/v1/alertmanager 401"), "{answers}");
    // Taken (200), or taken with an action that failed against the stand-in API server (503,
    // so that Alertmanager retries): either way the answer carries the results.
    let taken = answers.lines().any(|l| {
        (l.contains("/v1/alertmanager 200") || l.contains("/v1/alertmanager 503")) && l.contains("\"results\"")
    });
    assert!(taken, "{answers}");
    // The secrets were really used: sent where they belong.
    let sent = |seen: &std::sync::Arc<std::sync::Mutex<String>>| seen.lock().unwrap().clone();
    let used = eventually(Duration::from_secs(15), || {
        let (p, o, k) = (sent(&prometheus_seen), sent(&otlp_seen), sent(&kube_seen));
        (p.contains(PROMETHEUS_TOKEN) && o.contains(OTLP_TOKEN) && k.contains(KUBE_TOKEN)).then_some(())
    })
    .await;
    assert!(
        used.is_some(),
        "prometheus saw:\n{}\notlp saw:\n{}\nkubernetes saw:\n{}",
        sent(&prometheus_seen),
        sent(&otlp_seen),
        sent(&kube_seen)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = server.log();
    assert!(server.terminate().success());
    let mut audit = String::new();
    for entry in walk(&wd.path("data")) {
        audit.push_str(&String::from_utf8_lossy(&std::fs::read(entry).unwrap()));
    }
    assert!(log.contains("librdkafka") && log.contains("sasl.password"), "librdkafka's debug log ran");
    assert!(audit.contains("\"kind\":\"rejected\"") && audit.contains("SecretProbe"), "{audit}");
    let basic_right = basic("alertmanager", BASIC_PASSWORD);
    let basic_wrong = basic("alertmanager", WRONG_TOKEN);
    for secret in [
        HTTP_TOKEN,
        BASIC_PASSWORD,
        basic_right.as_str(),
        PROMETHEUS_TOKEN,
        KAFKA_PASSWORD,
        OTLP_TOKEN,
        KUBE_TOKEN,
        WRONG_TOKEN,
        basic_wrong.as_str(),
    ] {
        assert!(!log.contains(secret), "{secret} in the log:\n{}", context(&log, secret));
        assert!(!audit.contains(secret), "{secret} in the audit log:\n{}", context(&audit, secret));
        assert!(!answers.contains(secret), "{secret} in an answer:\n{}", context(&answers, secret));
    }
    // A `password` in a payload: an accepted webhook's unused field is not kept, and a refused
    // body's first bytes are recorded with credential-like values redacted.
    assert!(audit.contains(r#"\"password\":\"[redacted]\""#), "{}", context(&audit, "password"));
    for (what, text) in [("log", &log), ("audit log", &audit), ("answers", &answers)] {
        assert!(!text.contains(PAYLOAD_PASSWORD), "in the {what}: {}", context(text, PAYLOAD_PASSWORD));
    }
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() { files.extend(walk(&p)) } else { files.push(p) }
    }
    files
}

/// The lines of `text` around `needle`.
fn context(text: &str, needle: &str) -> String {
    text.lines().filter(|l| l.contains(needle)).take(5).map(|l| &l[..l.len().min(600)]).collect::<Vec<_>>().join("\n")
}

// ---- the rule loader, through the public API ----

const SHIPPED: [&str; 3] = [
    include_str!("../../rules/canary.yaml"),
    include_str!("../../rules/bluegreen.yaml"),
    include_str!("../../rules/feedback.yaml"),
];

/// A rule file is rules, or errors that each name the file and say where: a line or a field.
fn check_rules(text: &str) -> Result<(), TestCaseError> {
    let file = Path::new("rules/hostile.yaml");
    let mut errors = Vec::new();
    let started = Instant::now();
    let rules = backstop::rules::parse_file(file, text, &mut errors);
    prop_assert!(started.elapsed() < Duration::from_secs(2), "{:?} for {} bytes", started.elapsed(), text.len());
    for e in &errors {
        prop_assert_eq!(e.file.as_path(), file);
        prop_assert!(e.line.is_some() || !e.field.is_empty() || e.rule.is_some(), "says nowhere: {}", e);
        prop_assert!(!e.message.is_empty(), "{:?}", e);
        if let Some(line) = e.line {
            prop_assert!(
                line >= 1 && line <= text.lines().count().max(1) + 1,
                "line {} of {}",
                line,
                text.lines().count()
            );
        }
    }
    for r in &rules {
        prop_assert!(!r.name.is_empty());
    }
    Ok(())
}

fn yaml_value() -> impl Strategy<Value = serde_yaml_ng::Value> {
    let leaf = prop_oneof![
        Just(serde_yaml_ng::Value::Null),
        any::<bool>().prop_map(serde_yaml_ng::Value::from),
        any::<i64>().prop_map(serde_yaml_ng::Value::from),
        ".{0,12}".prop_map(serde_yaml_ng::Value::from),
        prop_oneof![
            Just("alertname=\"CanaryHighErrorRate\""),
            Just("{{ $labels.namespace }}"),
            Just("5m"),
            Just("v1"),
            Just("firing"),
            Just("hold"),
            Just("x=~\"(a|b\""),
        ]
        .prop_map(serde_yaml_ng::Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        let key = prop_oneof![
            Just("rules"),
            Just("name"),
            Just("match"),
            Just("status"),
            Just("for"),
            Just("target"),
            Just("namespace"),
            Just("virtualservice"),
            Just("action"),
            Just("rollback"),
            Just("stable"),
            Just("canary"),
            Just("switch"),
            Just("set-weights"),
            Just("cooldown"),
            Just("confirm"),
            Just("verify"),
            Just("feedback"),
            Just("query"),
            Just("above"),
        ]
        .prop_map(|k| serde_yaml_ng::Value::from(k.to_string()));
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(serde_yaml_ng::Value::Sequence),
            prop::collection::vec((key, inner), 0..6)
                .prop_map(|kv| serde_yaml_ng::Value::Mapping(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn rule_files_of_arbitrary_text_load_or_say_where(text in "(?s).{0,400}") {
        check_rules(&text)?;
    }

    #[test]
    fn rule_files_of_arbitrary_yaml_load_or_say_where(rules in prop::collection::vec(yaml_value(), 0..4)) {
        let text = serde_yaml_ng::to_string(&serde_json::json!({})).unwrap();
        let doc = serde_yaml_ng::Value::Mapping(
            [(serde_yaml_ng::Value::from("rules"), serde_yaml_ng::Value::Sequence(rules))].into_iter().collect(),
        );
        let text = serde_yaml_ng::to_string(&doc).unwrap_or(text);
        check_rules(&text)?;
    }

    #[test]
    fn mutated_shipped_rule_files_load_or_say_where(
        which in 0usize..3,
        edits in prop::collection::vec((any::<usize>(), 0u8..4, "[ -~\n\t]{0,6}"), 1..6),
    ) {
        let mut text = SHIPPED[which].to_string();
        for (at, how, piece) in edits {
            let mut i = at % (text.len() + 1);
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            match how {
                0 => text.insert_str(i, &piece),
                1 => {
                    let mut end = (i + piece.len() + 1).min(text.len());
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text.replace_range(i..end, "");
                }
                2 => text.truncate(i),
                _ => {
                    // Re-indent a line: YAML's structure is in its indentation.
                    let start = text[..i].rfind('\n').map_or(0, |n| n + 1);
                    text.insert_str(start, if piece.len() % 2 == 0 { " " } else { "\t" });
                }
            }
        }
        check_rules(&text)?;
    }
}

#[test]
fn hostile_rule_files_are_refused_in_bounded_time() {
    let cases: Vec<(&str, String)> = vec![
        // 5,000, not 100,000: the YAML parser's time grows faster than the square of the depth:
        // 0.2 s at 5,000, 0.5 s at 10,000, 1.9 s at 20,000, 9.6 s at 40,000, 84 s at 100,000
        // (debug build; reported, src/rules is not this test's to change).
        ("5k nested [", format!("rules: {}", "[".repeat(5_000))),
        (
            "2,000 levels of indentation",
            format!("rules:\n{}", (0..2000).map(|i| format!("{}- a:\n", " ".repeat(i * 2))).collect::<String>()),
        ),
        ("billion laughs", {
            let mut text = String::from("rules:\n  - &a0 [x, x, x, x, x, x, x, x, x, x]\n");
            for i in 1..9 {
                let p = i - 1;
                text.push_str(&format!(
                    "  - &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
                ));
            }
            text
        }),
        ("a 1 MB rule name", format!("rules:\n  - name: {}\n", "n".repeat(1 << 20))),
        (
            "a regex bomb",
            "rules:\n  - name: r\n    match: ['a=~\"((a{1000}){1000}){1000}\"']\n    \
             target: {namespace: n, virtualservice: v}\n    action: {rollback: {stable: v1, canary: [v2]}}\n"
                .to_string(),
        ),
        ("invalid UTF-8 replaced", String::from_utf8_lossy(b"rules:\n  - name: \xff\xfe\n").into_owned()),
        ("tabs", "rules:\n\t- name: x\n".to_string()),
        // 1,000, not 10,000: finding each rule's line scans the file once per rule (72 s for
        // 10,000 rules, debug build; reported).
        (
            "a thousand rules",
            (0..1_000).fold(String::from("rules:\n"), |mut s, i| {
                s.push_str(&format!("  - name: r{i}\n    match: ['alertname=\"A\"']\n"));
                s
            }),
        ),
    ];
    for (what, text) in cases {
        let started = Instant::now();
        let mut errors = Vec::new();
        let rules = backstop::rules::parse_file(Path::new("hostile.yaml"), &text, &mut errors);
        let took = started.elapsed();
        eprintln!(
            "{what}: {} rules, {} errors in {took:?}; first: {}",
            rules.len(),
            errors.len(),
            errors.first().map(|e| e.to_string().chars().take(200).collect::<String>()).unwrap_or_default()
        );
        assert!(took < Duration::from_secs(5), "{what}: {took:?}");
        assert!(rules.is_empty() || !errors.is_empty(), "{what}");
        for e in &errors {
            assert!(e.line.is_some() || !e.field.is_empty() || e.rule.is_some(), "{what}: says nowhere: {e}");
        }
    }
}
