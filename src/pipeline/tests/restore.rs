//! Restarts: the guards' state from the snapshot and the log, and interrupted actions finished.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn guard_state_survives_a_restart_without_a_snapshot() {
    let h = harness();
    h.webhook(FIRING).await;
    let h = h.restart().await;
    let restored = h.state.pipeline.restored().clone();
    assert_eq!(restored.snapshot_seq, None);
    assert_eq!(restored.replayed, 4, "rebuilt from the whole log");
    assert!(restored.note.unwrap().contains("no snapshot"));
    let (_, body) = h.webhook(FIRING).await;
    assert_eq!(body["results"][0]["outcome"], "noop", "{body}");
    assert!(body["results"][0]["reason"].as_str().unwrap().contains("duplicate"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_loads_the_snapshot_and_replays_only_the_tail() {
    let h = harness();
    h.webhook(FIRING).await;
    let covered = h.state.pipeline.save_snapshot().await.unwrap();
    assert_eq!(covered, 4);
    // After the snapshot: a pause (state) and an unrelated alert (no state).
    h.post_json("/v1/pause", json!({"target": "shop/checkout", "reason": "r", "actor": "a"})).await;
    h.webhook(UNRELATED).await;
    let h = h.restart().await;
    let restored = h.state.pipeline.restored().clone();
    assert_eq!(restored.snapshot_seq, Some(4));
    assert_eq!(restored.replayed, 2, "only the records after the snapshot are read");
    assert_eq!(restored.note, None);
    let (_, body) = h.webhook(FIRING).await;
    assert_eq!(body["results"][0]["outcome"], "noop", "the key came from the snapshot: {body}");
    assert!(h.state.pipeline.pauses().await["targets"]["shop/checkout"].is_object(), "the pause came from the tail");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_that_does_not_match_the_log_is_ignored_and_state_rebuilt() {
    let h = harness();
    h.webhook(FIRING).await;
    h.state.pipeline.save_snapshot().await.unwrap();
    let path = h.audit.join(crate::pipeline::SNAPSHOT_FILE);
    let mut snap: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    snap["position"]["hash"] = json!("00ff");
    snap["keys"] = json!([]);
    std::fs::write(&path, serde_json::to_vec(&snap).unwrap()).unwrap();
    let h = h.restart().await;
    let restored = h.state.pipeline.restored().clone();
    assert_eq!(restored.snapshot_seq, None);
    assert!(restored.note.unwrap().contains("does not match the log"));
    let (_, body) = h.webhook(FIRING).await;
    assert_eq!(body["results"][0]["outcome"], "noop", "the key was rebuilt from the log: {body}");
    std::fs::write(&path, b"{ torn").unwrap();
    let h = h.restart().await;
    assert!(h.state.pipeline.restored().note.as_deref().unwrap().contains("snapshot invalid"));
}

/// Append the `decided` record of `rule` (from rules/) on sms-app/model-service, with `detail`
/// besides its plan, as a run that died right after it would have left it.
pub(super) async fn decided_then_crashed(h: &Harness, rule: &str, action_id: &str, detail: Value) {
    let plan = crate::rules::load(&[repo("rules")]).unwrap().get(rule).unwrap().plan(&Default::default()).unwrap();
    let entry = Entry::new(Kind::Decided)
        .event_id("fp-1")
        .rule(rule)
        .target("sms-app/model-service")
        .key(format!("{rule}|k1"))
        .action_id(action_id)
        .detail(json!({ "plan": plan }))
        .detail(detail);
    h.state.pipeline.audit().append(vec![entry]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_action_interrupted_by_a_crash_is_finished_at_the_next_start() {
    let h = harness();
    // As if the previous run wrote `decided` and died before touching the target.
    decided_then_crashed(&h, "canary-high-error-rate", "A-interrupted", json!({})).await;
    let h = h.restart().await;
    let reports = h.state.pipeline.resume_pending().await.unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].outcome, Kind::Applied);
    assert!(h.vs().contains("weight: 100 # stable"));
    let applied = &h.records(Kind::Applied)[0].entry;
    assert_eq!(applied.action_id.as_deref(), Some("A-interrupted"));
    assert!(applied.reason.as_deref().unwrap().starts_with("resumed after a restart"));
    // Nothing left to resume, even after another restart.
    assert!(h.state.pipeline.resume_pending().await.unwrap().is_empty());
    let h = h.restart().await;
    assert!(h.state.pipeline.resume_pending().await.unwrap().is_empty());
}
