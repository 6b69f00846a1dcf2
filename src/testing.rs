//! Test support for the HTTP API and the pipeline behind it: a pipeline on a temporary audit log
//! and a copy of the demo's manifests, driven through the router.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::audit::{self, AuditLog, AuditOptions, Filter, Kind};
use crate::http::auth::Auth;
use crate::http::{AppState, router};
use crate::pipeline::{Pipeline, Settings};
use crate::state::GuardSettings;
use crate::target::manifests::Manifests;

pub(crate) const FIRING: &str = include_str!("../fixtures/alertmanager/firing.json");

pub(crate) const RESOLVED: &str = include_str!("../fixtures/alertmanager/resolved.json");

pub(crate) const UNRELATED: &str = include_str!("../fixtures/alertmanager/unrelated.json");

pub(crate) const GROUPED: &str = include_str!("../fixtures/alertmanager/grouped.json");

pub(crate) const TRUNCATED: &str = include_str!("../fixtures/alertmanager/truncated.json");

pub(crate) struct Harness {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) state: AppState,
    pub(crate) manifests: PathBuf,
    pub(crate) audit: PathBuf,
    pub(crate) rules: Vec<PathBuf>,
}

pub(crate) fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

pub(crate) fn harness_with(auth: Auth, max_body_bytes: usize) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    for f in ["model-service.yaml", "checkout.yaml"] {
        std::fs::copy(repo("deploy/local").join(f), manifests.join(f)).unwrap();
    }
    let audit_dir = dir.path().join("audit");
    let audit = AuditLog::open(&audit_dir, AuditOptions::default()).unwrap();
    let rules = crate::rules::load(&[repo("rules")]).unwrap();
    let pipeline = Pipeline::new(rules, audit, Arc::new(Manifests::new(&manifests)), settings()).unwrap();
    Harness {
        _dir: dir,
        state: AppState {
            pipeline: Arc::new(pipeline),
            auth,
            max_body_bytes,
            kafka_assigned: None,
            ui_read_only: false,
        },
        manifests,
        audit: audit_dir,
        rules: vec![repo("rules")],
    }
}

pub(crate) fn settings() -> Settings {
    Settings {
        dry_run: false,
        action_timeout: std::time::Duration::from_secs(5),
        guards: GuardSettings::default(),
        ui_url: None,
    }
}

/// A harness whose rules are `rules` (YAML) and whose Prometheus always answers `value`.
pub(crate) fn harness_confirming(rules: &str, value: Option<f64>) -> Harness {
    let h = harness();
    let file = h._dir.path().join("confirm.yaml");
    std::fs::write(&file, rules).unwrap();
    let audit = AuditLog::open(&h._dir.path().join("audit2"), AuditOptions::default()).unwrap();
    let pipeline = Pipeline::new(
        crate::rules::load(std::slice::from_ref(&file)).unwrap(),
        audit,
        Arc::new(Manifests::new(&h.manifests)),
        settings(),
    )
    .unwrap()
    .with_prometheus(Arc::new(crate::prometheus::FixedValue(value)));
    let audit = h._dir.path().join("audit2");
    Harness { state: AppState { pipeline: Arc::new(pipeline), ..h.state }, audit, rules: vec![file], ..h }
}

pub(crate) fn harness() -> Harness {
    harness_with(Auth::none(), 1 << 20)
}

impl Harness {
    /// Stop this pipeline and start a new one on the same audit log, rules and manifests.
    pub(crate) async fn restart(self) -> Harness {
        self.restart_with(None).await
    }

    /// The same, with a Prometheus that answers `value` for confirmations.
    pub(crate) async fn restart_with(self, value: Option<Option<f64>>) -> Harness {
        let Harness { _dir, state, manifests, audit, rules } = self;
        let log = state.pipeline.audit().clone();
        drop(state);
        log.close().await.unwrap();
        let mut pipeline = Pipeline::new(
            crate::rules::load(&rules).unwrap(),
            AuditLog::open(&audit, AuditOptions::default()).unwrap(),
            Arc::new(Manifests::new(&manifests)),
            settings(),
        )
        .unwrap();
        if let Some(v) = value {
            pipeline = pipeline.with_prometheus(Arc::new(crate::prometheus::FixedValue(v)));
        }
        let state = AppState {
            pipeline: Arc::new(pipeline),
            auth: Auth::none(),
            max_body_bytes: 1 << 20,
            kafka_assigned: None,
            ui_read_only: false,
        };
        Harness { _dir, state, manifests, audit, rules }
    }

    pub(crate) async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let resp = router(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, body)
    }

    /// A webhook's firing fixture sent to `path`.
    pub(crate) async fn webhook_to(&self, path: &str) -> (StatusCode, Value) {
        let body = include_str!("../fixtures/alertmanager/firing.json");
        self.send(post(path, "application/json", body.as_bytes().to_vec())).await
    }

    pub(crate) async fn webhook(&self, body: &str) -> (StatusCode, Value) {
        self.send(post("/v1/alertmanager", "application/json", body.as_bytes().to_vec())).await
    }

    pub(crate) async fn post_json(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(post(path, "application/json", body.to_string().into_bytes())).await
    }

    pub(crate) fn vs(&self) -> String {
        std::fs::read_to_string(self.manifests.join("model-service.yaml")).unwrap()
    }

    pub(crate) fn kinds(&self) -> Vec<Kind> {
        audit::query(&self.audit, &Filter::default()).unwrap().iter().map(|r| r.entry.kind).collect()
    }

    pub(crate) fn records(&self, kind: Kind) -> Vec<audit::Record> {
        audit::query(&self.audit, &Filter { kinds: vec![kind], ..Default::default() }).unwrap()
    }
}

pub(crate) fn post(path: &str, content_type: &str, body: Vec<u8>) -> Request<Body> {
    Request::post(path).header("content-type", content_type).body(Body::from(body)).unwrap()
}

/// `n` seeded request outcomes for model-service in sms-app: 10% to the canary v2 failing with
/// probability `p_canary`, the rest to v1 failing with `p_base`; one NDJSON line each.
pub(crate) fn outcomes(seed: u64, n: usize, p_canary: f64, p_base: f64) -> Vec<String> {
    let mut rng = crate::feedback::testing::Rng(seed);
    (0..n)
        .map(|i| {
            let canary = rng.uniform() < 0.1;
            let (version, p) = if canary { ("v2", p_canary) } else { ("v1", p_base) };
            json!({
                "id": format!("req-{seed}-{i}"),
                "service": "model-service",
                "namespace": "sms-app",
                "version": version,
                "time": chrono::Utc::now(),
                "kind": "outcome",
                "success": rng.uniform() >= p,
                "latency_ms": 40.0,
            })
            .to_string()
        })
        .collect()
}

impl Harness {
    pub(crate) async fn feedback(&self, lines: &[String]) -> (StatusCode, Value) {
        let body = lines.join("\n").into_bytes();
        self.send(post("/v1/feedback", "application/x-ndjson", body)).await
    }

    /// Send in batches of 500; the results of all.
    pub(crate) async fn feedback_batches(&self, lines: &[String]) -> Vec<Value> {
        let mut results = Vec::new();
        for chunk in lines.chunks(500) {
            let (status, body) = self.feedback(chunk).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            results.extend(body["results"].as_array().cloned().unwrap_or_default());
        }
        results
    }
}

pub(crate) async fn wait_for(h: &Harness, kind: Kind) -> audit::Record {
    for _ in 0..100 {
        if let Some(r) = h.records(kind).into_iter().next() {
            return r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no {kind} record; records: {:?}", h.kinds());
}

/// The rejected records' details, oldest first.
pub(crate) fn rejected_details(h: &Harness) -> Vec<Value> {
    h.records(Kind::Rejected).into_iter().map(|r| r.entry.detail.unwrap_or_default()).collect()
}
