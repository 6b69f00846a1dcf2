//! A cluster follower's pipeline: it folds the leader's replicated records into the same guard
//! state, refuses intake naming the leader, and still answers reads.

use std::sync::{Arc, Mutex};

use super::*;
use crate::audit::{AuditLog, AuditOptions, Replicate};
use crate::http::auth::Auth;
use crate::pipeline::{Gate, Pipeline};
use crate::target::manifests::Manifests;

/// The replicated log as a list of (first seq, lines), and the snapshots published to it (the
/// number of batches before each, the checkpoint's seq and line, the state).
#[derive(Default)]
struct Topic(Mutex<Vec<(u64, Vec<String>)>>, Mutex<Vec<Published>>);

/// Batches before it, the checkpoint's seq and line, the state.
type Published = (usize, u64, String, Vec<u8>);

impl Replicate for Topic {
    fn replicate(&self, first_seq: u64, _prev: &str, bytes: &[u8]) -> Result<(), String> {
        let lines = std::str::from_utf8(bytes).unwrap().lines().map(str::to_string).collect();
        self.0.lock().unwrap().push((first_seq, lines));
        Ok(())
    }

    fn publish_snapshot(&self, seq: u64, _hash: &str, line: &[u8], state: Vec<u8>) -> Result<(), String> {
        let published = self.0.lock().unwrap().len();
        self.1.lock().unwrap().push((published, seq, String::from_utf8(line.to_vec()).unwrap(), state));
        Ok(())
    }
}

/// A harness whose pipeline's audit log is a cluster replica's.
fn replica(h: &Harness, dir: &str) -> Harness {
    let audit = h._dir.path().join(dir);
    let pipeline = Pipeline::new(
        crate::rules::load(&h.rules).unwrap(),
        AuditLog::open_replica(&audit, AuditOptions::default()).unwrap(),
        Arc::new(Manifests::new(&h.manifests)),
        settings(),
    )
    .unwrap();
    let state = crate::http::AppState {
        pipeline: Arc::new(pipeline),
        auth: Auth::none(),
        max_body_bytes: 1 << 20,
        kafka_assigned: None,
        ui_read_only: false,
    };
    Harness { _dir: tempfile::tempdir().unwrap(), state, manifests: h.manifests.clone(), audit, rules: h.rules.clone() }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_folds_the_leaders_records_into_the_same_state_and_refuses_intake_naming_it() {
    let base = harness();
    let leader = replica(&base, "leader");
    let follower = replica(&base, "follower");
    let topic = Arc::new(Topic::default());
    leader.state.pipeline.audit().lead(topic.clone()).await.unwrap();
    leader.state.pipeline.set_gate(Gate::LeadingUntil(chrono::Utc::now() + chrono::Duration::hours(1)));
    follower.state.pipeline.set_gate(Gate::Following(Some("backstop-0".into())));

    let (_, body) = leader.webhook(FIRING).await;
    assert_eq!(body["results"][0]["outcome"], "applied", "{body}");
    let (status, _) = leader
        .post_json("/v1/pause", json!({"target": "shop/checkout", "reason": "migration", "actor": "oncall"}))
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = follower.webhook(FIRING).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["leader"], "backstop-0", "{body}");

    let batches = topic.0.lock().unwrap().clone();
    for (first_seq, lines) in batches.clone() {
        follower.state.pipeline.apply_replicated(first_seq, lines).await.unwrap();
    }
    let snapshot = |h: &Harness| {
        let p = h.state.pipeline.clone();
        async move {
            let mut v = serde_json::to_value(p.state.lock().await.snapshot(p.audit().position())).unwrap();
            v.as_object_mut().unwrap().remove("written"); // when the snapshot was taken
            v
        }
    };
    let (l, f) = (snapshot(&leader).await, snapshot(&follower).await);
    assert!(l["position"]["seq"].as_u64().unwrap() > 0);
    assert_eq!(f, l, "the follower's guard state is the leader's, record for record");
    // Reads answer from the follower's own copy.
    let pauses = follower.state.pipeline.pauses().await;
    assert!(pauses.to_string().contains("shop/checkout"), "{pauses}");
    // The leader's own batches, read back from the topic, change nothing there.
    for (first_seq, lines) in batches {
        let applied = leader.state.pipeline.apply_replicated(first_seq, lines).await.unwrap();
        assert_eq!(applied.written, 0);
    }
    assert_eq!(snapshot(&leader).await, l);
}

/// A replica that joins with an empty disk from the leader's published snapshot, applying only
/// the batches after it, holds the leader's guard state, and its log (which begins at the
/// snapshot's checkpoint) verifies.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_started_from_a_published_snapshot_folds_to_the_leaders_state() {
    let base = harness();
    let leader = replica(&base, "leader");
    let topic = Arc::new(Topic::default());
    leader.state.pipeline.audit().lead(topic.clone()).await.unwrap();
    leader.state.pipeline.set_gate(Gate::LeadingUntil(chrono::Utc::now() + chrono::Duration::hours(1)));

    let (_, body) = leader.webhook(FIRING).await;
    assert_eq!(body["results"][0]["outcome"], "applied", "{body}");
    let pause = json!({"target": "shop/checkout", "reason": "migration", "actor": "oncall"});
    assert_eq!(leader.post_json("/v1/pause", pause).await.0, StatusCode::OK);
    let seq = leader.state.pipeline.publish_snapshot().await.unwrap();
    // After the snapshot: a redelivery (a duplicate), a resume and a new pause.
    leader.webhook(FIRING).await;
    let resume = json!({"target": "shop/checkout", "reason": "done", "actor": "oncall"});
    assert_eq!(leader.post_json("/v1/resume", resume).await.0, StatusCode::OK);
    let pause = json!({"target": "shop/cart", "reason": "drill", "actor": "oncall"});
    assert_eq!(leader.post_json("/v1/pause", pause).await.0, StatusCode::OK);

    let (published, at, line, state) = topic.1.lock().unwrap().last().cloned().expect("a snapshot published");
    assert_eq!(at, seq);
    assert!(line.contains(r#""kind":"checkpoint""#), "{line}");
    let batches = topic.0.lock().unwrap().clone();
    assert_eq!(batches[published - 1], (seq, vec![line.clone()]), "the checkpoint is a batch of its own, just before");

    let newcomer = base._dir.path().join("newcomer");
    crate::pipeline::start_from_snapshot(&newcomer, seq, line.as_bytes(), &state).unwrap();
    let joined = replica(&base, "newcomer");
    for (first_seq, lines) in batches[published..].iter().cloned() {
        joined.state.pipeline.apply_replicated(first_seq, lines).await.unwrap();
    }
    let snapshot = |h: &Harness| {
        let p = h.state.pipeline.clone();
        async move {
            let mut v = serde_json::to_value(p.state.lock().await.snapshot(p.audit().position())).unwrap();
            v.as_object_mut().unwrap().remove("written");
            v
        }
    };
    assert_eq!(snapshot(&joined).await, snapshot(&leader).await, "the same guard state");
    let pauses = joined.state.pipeline.pauses().await.to_string();
    assert!(pauses.contains("shop/cart") && !pauses.contains("shop/checkout"), "{pauses}");
    let report = crate::audit::verify(&newcomer).unwrap();
    assert_eq!(report.anchored_by, Some(seq), "verified from the checkpoint it starts at");
    // Not from the beginning: the newcomer's log starts at the checkpoint.
    assert!(crate::audit::records(&newcomer).unwrap().next().unwrap().unwrap().seq == seq);
    // And a second start from a snapshot into that directory is refused.
    assert!(crate::pipeline::start_from_snapshot(&newcomer, seq, line.as_bytes(), &state).is_err());
}

/// A follower is Ready only once caught up with the replicated log (a rolling update waits for
/// it); the leader's readiness does not depend on it.
#[tokio::test(flavor = "multi_thread")]
async fn a_follower_is_ready_only_when_caught_up_with_the_replicated_log() {
    let base = harness();
    let follower = replica(&base, "follower");
    follower.state.pipeline.set_gate(Gate::Following(Some("backstop-0".into())));
    let readyz = || async {
        let (status, body) =
            follower.send(axum::http::Request::get("/readyz").body(axum::body::Body::empty()).unwrap()).await;
        (status, body.as_str().unwrap_or_default().to_string())
    };
    let (status, body) = readyz().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("replicated log: not measured yet"), "{body}");
    for (messages, seconds) in [(0, Some(0.0)), (400, Some(2.5)), (0, None)] {
        follower.state.pipeline.set_replication_lag(crate::pipeline::ReplicationLag { messages, seconds });
        let (status, body) = readyz().await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "ready: follower of backstop-0\n"),
            "{messages} {seconds:?}"
        );
    }
    follower
        .state
        .pipeline
        .set_replication_lag(crate::pipeline::ReplicationLag { messages: 5000, seconds: Some(42.0) });
    let (status, body) = readyz().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("5000 messages behind") && body.contains("42s ago"), "{body}");
    // A replica that has applied nothing yet from a topic with messages: not caught up.
    follower.state.pipeline.set_replication_lag(crate::pipeline::ReplicationLag { messages: 7, seconds: None });
    assert!(readyz().await.1.contains("7 messages behind, none applied yet"));
    follower.state.pipeline.set_gate(Gate::LeadingUntil(chrono::Utc::now() + chrono::Duration::hours(1)));
    assert_eq!(readyz().await, (StatusCode::OK, "ready: leader\n".to_string()));
}
