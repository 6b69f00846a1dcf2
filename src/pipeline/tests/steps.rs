//! The pipeline taking the steps of gradual rollbacks: a real audit log and manifests directory,
//! Prometheus answering a fixed share.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::audit::{self, AuditLog, AuditOptions, Filter, Kind};
use crate::pipeline::{Pipeline, Settings};
use crate::target::manifests::Manifests;

const FIRING: &str = include_str!("../../../fixtures/alertmanager/firing.json");

struct Setup {
    dir: tempfile::TempDir,
    pipeline: Arc<Pipeline>,
    token: tokio_util::sync::CancellationToken,
}

/// `extra` goes into the rule (e.g. a `verify:` block); the canary starts at 50%.
async fn setup(interval: &str, extra: &str, share: f64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let vs = std::fs::read_to_string(root.join("deploy/local/model-service.yaml")).unwrap();
    let vs =
        vs.replace("weight: 90 # stable", "weight: 50 # stable").replace("weight: 10 # canary", "weight: 50 # canary");
    std::fs::write(manifests.join("model-service.yaml"), vs).unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        format!(
            r#"rules:
  - name: gradual
    match: ['alertname="CanaryHighErrorRate"']
    target: {{ namespace: sms-app, virtualservice: model-service }}
    action:
      rollback: {{ stable: v1, canary: v2, steps: [25, 10, 0], interval: {interval} }}
{extra}"#
        ),
    )
    .unwrap();
    let settings = Settings {
        dry_run: false,
        action_timeout: Duration::from_secs(5),
        guards: crate::state::GuardSettings::default(),
        ui_url: None,
    };
    let pipeline = Pipeline::new(
        crate::rules::load(&[rules]).unwrap(),
        AuditLog::open(&dir.path().join("audit"), AuditOptions::default()).unwrap(),
        Arc::new(Manifests::new(&manifests)),
        settings,
    )
    .unwrap()
    .with_prometheus(Arc::new(crate::prometheus::FixedValue(Some(share))));
    let pipeline = Arc::new(pipeline);
    let token = tokio_util::sync::CancellationToken::new();
    drop(pipeline.spawn_verifier(token.clone()).await);
    drop(pipeline.spawn_step_downs(token.clone()));
    Setup { dir, pipeline, token }
}

impl Setup {
    fn canary(&self) -> u32 {
        let vs = std::fs::read_to_string(self.dir.path().join("manifests/model-service.yaml")).unwrap();
        let line = vs.lines().find(|l| l.ends_with("# canary")).unwrap();
        line.trim().trim_start_matches("weight:").trim_end_matches("# canary").trim().parse().unwrap()
    }

    fn records(&self, kind: Kind) -> Vec<audit::Record> {
        audit::query(&self.dir.path().join("audit"), &Filter { kinds: vec![kind], ..Default::default() }).unwrap()
    }

    async fn fire(&self) {
        let alerts = crate::sources::alertmanager::parse(FIRING.as_bytes()).unwrap().events();
        self.pipeline.alerts(&alerts, serde_json::json!({})).await.unwrap();
    }

    async fn until(&self, what: &str, f: impl Fn(&Self) -> bool) {
        for _ in 0..100 {
            if f(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what}: not after 5 s; canary at {}", self.canary());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_whose_traffic_did_not_move_skips_to_zero_at_once() {
    // The share stays at 50%: step 1 (25%, allowed up to 26%) is unverified after 300 ms.
    let verify = "    verify: { query: 'share', deadline: 300ms, interval: 100ms }\n";
    let s = setup("1h", verify, 0.5).await;
    s.fire().await;
    assert_eq!(s.canary(), 25);
    let applied = &s.records(Kind::Applied)[0];
    assert_eq!(applied.entry.detail.as_ref().unwrap()["verify"]["step_weight"], 25);
    s.until("straight to 0 after the unverified step", |s| s.records(Kind::Applied).len() == 2).await;
    assert_eq!(s.canary(), 0);
    let unverified = s.records(Kind::Unverified);
    assert_eq!(unverified.len(), 1);
    assert_eq!(unverified[0].entry.action_id, applied.entry.action_id);
    let last = s.records(Kind::Applied).pop().unwrap();
    assert_eq!(last.entry.detail.as_ref().unwrap()["step_down"]["step"], 2, "not 10 first: straight to 0");
    assert!(last.time >= unverified[0].time);
    s.token.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_target_holds_its_next_step_until_resumed() {
    let s = setup("200ms", "", 0.0).await;
    s.fire().await;
    assert_eq!(s.canary(), 25);
    let target: crate::target::ObjectRef = "sms-app/model-service".parse().unwrap();
    s.pipeline.pause(Some(&target), true, "alice", "looking into it").await.unwrap();
    s.until("the next step held", |s| !s.records(Kind::Held).is_empty()).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(s.canary(), 25, "no step while paused");
    let held = s.records(Kind::Held);
    assert_eq!(held.len(), 1, "recorded once, not at every interval: {held:?}");
    assert!(held[0].entry.reason.as_deref().unwrap().contains("step 2 of the gradual rollback"), "{held:?}");
    s.pipeline.pause(Some(&target), false, "alice", "go on").await.unwrap();
    s.until("finished after the resume", |s| s.canary() == 0).await;
    s.token.cancel();
}
