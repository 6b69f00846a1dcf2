//! What `benches/load/` and `benches/cluster.rs` share (each includes this file with
//! `#[path = "common/intake.rs"] mod common;`, or `"../common/intake.rs"` from `load/main.rs`; it
//! is under a directory of its own so that cargo does not take it for a benchmark): realistic Alertmanager v4 payloads, the 64-connection
//! hyper HTTP/1.1 client that posts them, a backlog of Kafka feedback events and how fast a server
//! records it, and small helpers (environment, quantiles, formatting, the machine's description, a
//! series of `/metrics`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde_json::json;

/// Keep-alive connections of the load client.
pub const CONNECTIONS: usize = 64;

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

pub fn ms(s: f64) -> String {
    format!("{:.2} ms", s * 1e3)
}

pub fn per_s(v: f64) -> String {
    let v = v.round() as u64;
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Machine

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok()))
        .map(|kb| format!("{:.1} GB RAM", kb / 1024.0 / 1024.0))
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    format!(
        "{cores} cores (nproc), {cpu}, Linux {kernel}, {mem}, temp dir {}, load average {load}",
        std::env::temp_dir().display()
    )
}

// ---------------------------------------------------------------------------------------------
// Payloads

pub const FP: &str = "@@FINGERPRINT@@@"; // 16 bytes, as a fingerprint
pub const TS: &str = "@@@@@STARTS@AT@@@@@@"; // 20 bytes, as 2026-11-24T20:03:11Z

/// Whom the alerts of a payload concern.
pub struct Spec {
    pub alertname: &'static str,
    pub severity: &'static str,
    pub namespace: &'static str,
    pub virtualservice: &'static str,
}

pub const NO_RULE: Spec =
    Spec { alertname: "CanaryHighLatency", severity: "warning", namespace: "sms-app", virtualservice: "model-service" };
pub const MATCHED: Spec = Spec {
    alertname: "CanaryHighErrorRate",
    severity: "critical",
    namespace: "sms-app",
    virtualservice: "model-service",
};
pub const ROLLBACK: Spec =
    Spec { alertname: "BenchRollback", severity: "critical", namespace: "bench", virtualservice: "model-service" };
pub const RESTORE: Spec =
    Spec { alertname: "BenchRestore", severity: "critical", namespace: "bench", virtualservice: "model-service" };

/// An Alertmanager v4 webhook body (the shape of fixtures/alertmanager/, grouped by namespace and
/// virtualservice), with each alert's fingerprint and the startsAt patched in per request.
pub struct Payload {
    bytes: Vec<u8>,
    fingerprints: Vec<usize>,
    starts: Vec<usize>,
    pub alerts: usize,
    base: DateTime<Utc>,
}

/// Request numbers, never reused within a run: every request's alerts are new alerts.
pub static SEQ: AtomicU64 = AtomicU64::new(1);

impl Payload {
    pub fn new(spec: &Spec, alerts: usize) -> Payload {
        let (ns, vs, name) = (spec.namespace, spec.virtualservice, spec.alertname);
        let common = json!({
            "alertname": name, "canary": "v2", "namespace": ns, "service": vs,
            "severity": spec.severity, "virtualservice": vs,
        });
        let alert = |k: usize| {
            let mut labels = common.clone();
            labels["pod"] = json!(format!("{vs}-v2-7d9f8c6b5-{k:05x}"));
            labels["instance"] = json!(format!("10.12.{}.{}:8080", k / 250, k % 250 + 2));
            json!({
                "status": "firing",
                "labels": labels,
                "annotations": {
                    "description": format!("5xx ratio of canary v2 for virtualservice {ns}/{vs} is 12.5% (threshold 5%) over the last 2m."),
                    "summary": format!("Canary v2 of {vs} is failing"),
                },
                "startsAt": TS,
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": format!("http://prometheus.local/graph?g0.expr=sum%28rate%28istio_requests_total%7Bdestination_service_name%3D%22{vs}%22%2Cdestination_version%3D%22v2%22%2Cresponse_code%3D~%225..%22%7D%5B2m%5D%29%29+%2F+sum%28rate%28istio_requests_total%7Bdestination_service_name%3D%22{vs}%22%2Cdestination_version%3D%22v2%22%7D%5B2m%5D%29%29+%3E+0.05&g0.tab=1"),
                "fingerprint": FP,
            })
        };
        let body = json!({
            "receiver": "backstop",
            "status": "firing",
            "alerts": (0..alerts).map(alert).collect::<Vec<_>>(),
            "groupLabels": { "namespace": ns, "virtualservice": vs },
            "commonLabels": if alerts == 1 { alert(0)["labels"].clone() } else { common.clone() },
            "commonAnnotations": {},
            "externalURL": "http://alertmanager.local:9093",
            "version": "4",
            "groupKey": format!("{{}}/{{alertname=~\"Canary.*|BlueGreen.*\"}}:{{namespace=\"{ns}\", virtualservice=\"{vs}\"}}"),
            "truncatedAlerts": 0,
        });
        let bytes = serde_json::to_vec(&body).unwrap();
        let find = |needle: &str| -> Vec<usize> {
            bytes.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle.as_bytes()).map(|(i, _)| i).collect()
        };
        let (fingerprints, starts) = (find(FP), find(TS));
        assert_eq!((fingerprints.len(), starts.len()), (alerts, alerts));
        // Firing for 2 hours, so no rule's `for` holds them.
        let base = DateTime::from_timestamp(Utc::now().timestamp() - 7200, 0).unwrap();
        let payload = Payload { bytes, fingerprints, starts, alerts, base };
        let body = payload.make(1);
        let parsed = backstop::sources::alertmanager::parse(&body).unwrap();
        assert_eq!(parsed.events().len(), alerts);
        let ids: Vec<String> = parsed.events().into_iter().map(|e| e.id).collect();
        assert_eq!(ids, payload.ids(1).collect::<Vec<_>>());
        payload
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The body of request `n`: fingerprints `{n:010x}{k:06x}`, startsAt moved by `n % 3600` s.
    pub fn make(&self, n: u64) -> Bytes {
        let mut b = self.bytes.clone();
        let start = (self.base + chrono::Duration::seconds((n % 3600) as i64)).format("%Y-%m-%dT%H:%M:%SZ").to_string();
        for (k, &at) in self.fingerprints.iter().enumerate() {
            b[at..at + 16].copy_from_slice(format!("{:010x}{:06x}", n & 0xff_ffff_ffff, k).as_bytes());
        }
        for &at in &self.starts {
            b[at..at + 20].copy_from_slice(start.as_bytes());
        }
        Bytes::from(b)
    }

    /// The ids backstop gives the alerts of request `n`, in order: `{fingerprint}-{startsAt as
    /// Unix seconds}` of what `make(n)` writes.
    pub fn ids(&self, n: u64) -> impl Iterator<Item = String> + use<> {
        let start = (self.base + chrono::Duration::seconds((n % 3600) as i64)).timestamp();
        (0..self.alerts).map(move |k| format!("{:010x}{k:06x}-{start}", n & 0xff_ffff_ffff))
    }

    pub fn next(&self) -> Bytes {
        self.make(SEQ.fetch_add(1, Ordering::Relaxed))
    }
}

// ---------------------------------------------------------------------------------------------
// The client: hyper HTTP/1.1, one keep-alive connection per task

pub async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

pub async fn post(
    sender: &mut SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    body: Bytes,
) -> Result<(u16, Bytes), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let req = hyper::Request::post("/v1/alertmanager")
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, body))
}

#[derive(Default)]
pub struct Load {
    pub ok: u64,
    /// Answered with 200, warm-up included.
    pub all: u64,
    /// Bytes of the request bodies the server answered (whatever the status), warm-up included:
    /// what it read. A body whose connection failed is not counted (it may not have been sent).
    pub body_bytes: u64,
    pub other: BTreeMap<u16, u64>,
    pub errors: u64,
    pub example: Option<String>,
    pub seconds: f64,
}

impl Load {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.seconds
    }

    pub fn problems(&self) -> String {
        if self.other.is_empty() && self.errors == 0 {
            return String::new();
        }
        format!(" (NOT 200: {:?}, connection errors {}, e.g. {:?})", self.other, self.errors, self.example)
    }
}

/// `CONNECTIONS` tasks posting `payload` back to back for `warm + measure`; counts the answers
/// that complete within the measured window.
pub async fn drive(addr: SocketAddr, payload: Arc<Payload>, warm: Duration, measure: Duration) -> Load {
    let start = Instant::now();
    let (from, until) = (start + warm, start + warm + measure);
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut load = Load::default();
                let mut sender = None;
                while Instant::now() < until {
                    if sender.is_none() {
                        match connect(addr).await {
                            Ok(s) => sender = Some(s),
                            Err(e) => {
                                load.errors += 1;
                                load.example.get_or_insert(e);
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        }
                    }
                    let body = payload.next();
                    let len = body.len() as u64;
                    let result = post(sender.as_mut().unwrap(), addr, body).await;
                    let done = Instant::now();
                    let counted = done >= from && done <= until;
                    if result.is_ok() {
                        load.body_bytes += len;
                    }
                    match result {
                        Ok((200, _)) if counted => {
                            load.ok += 1;
                            load.all += 1;
                        }
                        Ok((200, _)) => load.all += 1,
                        Ok((status, body)) => {
                            *load.other.entry(status).or_default() += 1;
                            load.example
                                .get_or_insert_with(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into());
                        }
                        Err(e) => {
                            load.errors += 1;
                            load.example.get_or_insert(e);
                            sender = None;
                        }
                    }
                }
                load
            })
        })
        .collect();
    let mut total = Load { seconds: measure.as_secs_f64(), ..Load::default() };
    for t in tasks {
        let l = t.await.unwrap();
        total.ok += l.ok;
        total.all += l.all;
        total.body_bytes += l.body_bytes;
        total.errors += l.errors;
        for (s, n) in l.other {
            *total.other.entry(s).or_default() += n;
        }
        if total.example.is_none() {
            total.example = l.example;
        }
    }
    total
}

/// The value of series `name` (with all of `labels`, if any) in an OpenMetrics text.
pub fn metric_value(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .find(|l| {
            l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                && labels.iter().all(|x| l.contains(x))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// Kafka feedback: a backlog of outcome events, and how fast a server records it

/// An A/A stream of `n` request outcomes of sms-app/model-service (every tenth to the canary v2,
/// one in twenty a failure, none of them on v2), about 200 bytes each.
pub fn outcome_events(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let version = if i % 10 == 0 { "v2" } else { "v1" };
            json!({"service": "model-service", "namespace": "sms-app", "version": version,
                   "time": Utc::now(), "kind": "outcome", "success": i % 20 != 7})
            .to_string()
        })
        .collect()
}

/// Produce `lines` to `topic` (linger 5 ms, 2,000 in flight at a time); the seconds it took.
pub async fn produce_backlog(brokers: &str, topic: &str, lines: &[String]) -> Result<f64, String> {
    use rdkafka::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .map_err(|e| e.to_string())?;
    let t = Instant::now();
    for chunk in lines.chunks(2_000) {
        let sends =
            chunk.iter().map(|l| producer.send(FutureRecord::<(), _>::to(topic).payload(l), Duration::from_secs(30)));
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| format!("produce: {e}"))?;
        }
    }
    Ok(t.elapsed().as_secs_f64())
}

/// The series a server counts the Kafka events it recorded in.
pub const KAFKA_ACCEPTED: (&str, [&str; 2]) =
    ("backstop_events_received_total", ["source=\"kafka\"", "outcome=\"accepted\""]);

/// How fast a server records a backlog of `n` events: `accepted()` (its count so far) every 20 ms,
/// from the first poll that sees events to the one that sees `n`. The rate, and when `n` was seen;
/// or, after `timeout`, the count then.
pub async fn drain_rate(
    n: usize,
    timeout: Duration,
    mut accepted: impl AsyncFnMut() -> f64,
) -> Result<(f64, Instant), f64> {
    let mut first: Option<(Instant, f64)> = None;
    let deadline = Instant::now() + timeout;
    loop {
        let seen = accepted().await;
        let now = Instant::now();
        if seen > 0.0 && first.is_none() {
            first = Some((now, seen));
        }
        if seen >= n as f64 {
            let (t0, c0) = first.unwrap();
            let secs = now.duration_since(t0).as_secs_f64();
            return Ok((if secs > 0.0 { (n as f64 - c0) / secs } else { f64::NAN }, now));
        }
        if now > deadline {
            return Err(seen);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
