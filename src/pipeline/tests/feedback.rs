//! Feedback events: counted once, compared, and acted on with their evidence.

use super::restore::decided_then_crashed;
use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_failing_four_times_as_often_is_rolled_back_once_on_feedback_with_its_evidence() {
    let h = harness();
    let results = h.feedback_batches(&outcomes(1, 6000, 0.2, 0.05)).await;
    // The stream goes on sending to v2 after the rollback (as a misrouted canary would): the
    // next comparison finds it worse again, and the cooldown holds that, once.
    let outcomes_seen: Vec<&str> = results.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes_seen[0], "applied", "{results:?}");
    assert!(outcomes_seen[1..].iter().all(|o| *o == "held"), "{results:?}");
    assert!(results[1]["reason"].as_str().unwrap().starts_with("cooldown"), "{results:?}");
    assert_eq!(h.records(Kind::Applied).len(), 1);
    assert_eq!(results[0]["rule"], "feedback-canary-errors");
    assert_eq!(results[0]["outcome"], "applied");
    assert_eq!(results[0]["target"], "sms-app/model-service");
    assert!(h.vs().contains("subset: v1\n      weight: 100"), "{}", h.vs());
    let matched = h.records(Kind::Matched);
    let evidence = &matched[0].entry.detail.as_ref().unwrap()["evidence"];
    assert_eq!(evidence["test"], "error_ratio");
    assert!(evidence["detail"]["sequential"]["p_value"].as_f64().unwrap() <= 0.05, "{evidence}");
    assert!(evidence["detail"]["ratio"].as_f64().unwrap() > 1.5, "{evidence}");
    assert!(evidence["canary"]["summary"]["outcomes_n"].as_u64().unwrap() >= 100, "{evidence}");
    assert!(evidence["detail"]["canary"]["wilson95"].is_array(), "{evidence}");
    // Every event was recorded before the answer.
    assert_eq!(h.records(Kind::Received).len(), 6000);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_as_good_as_its_baseline_is_left_alone() {
    let h = harness();
    let before = h.vs();
    let results = h.feedback_batches(&outcomes(2, 6000, 0.05, 0.05)).await;
    assert!(results.is_empty(), "{results:?}");
    assert_eq!(h.vs(), before);
    assert!(h.records(Kind::Matched).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_low_model_confidence_rolls_back_at_once() {
    let h = harness();
    let score = json!({"service": "model-service", "namespace": "sms-app", "version": "v2",
        "time": chrono::Utc::now(), "kind": "score", "score": 0.12, "id": "pred-1"});
    let (status, body) = h.post_json("/v1/feedback", score).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["rule"], "feedback-canary-unconfident", "{body}");
    assert_eq!(body["results"][0]["outcome"], "applied", "{body}");
    let matched = h.records(Kind::Matched);
    assert_eq!(matched[0].entry.detail.as_ref().unwrap()["evidence"]["detail"]["mean"], 0.12);
}

#[tokio::test(flavor = "multi_thread")]
async fn feedback_sent_twice_with_the_same_id_is_counted_once() {
    let h = harness();
    let line = outcomes(3, 1, 0.0, 0.0);
    let (_, first) = h.feedback(&line).await;
    let (status, again) = h.feedback(&line).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((first["duplicates"].as_u64(), again["duplicates"].as_u64()), (Some(0), Some(1)));
    assert_eq!(h.records(Kind::Received).len(), 1);
    // Twice within one batch: the second is the duplicate.
    let other = outcomes(6, 1, 0.0, 0.0);
    let (_, body) = h.feedback(&[other[0].clone(), other[0].clone()]).await;
    assert_eq!((body["received"].as_u64(), body["duplicates"].as_u64()), (Some(2), Some(1)), "{body}");
    assert_eq!(h.records(Kind::Received).len(), 2);
    // Still recognised after a restart (the arms and ids are rebuilt from the log).
    let h = h.restart().await;
    let (_, after) = h.feedback(&line).await;
    assert_eq!(after["duplicates"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_feedback_counted_before_a_restart_still_counts_after_it() {
    let h = harness();
    let lines = outcomes(1, 6000, 0.2, 0.05);
    // The same stream that acted above, cut in two by a restart (snapshot, then the tail).
    let (first, rest) = lines.split_at(800);
    assert!(h.feedback_batches(first).await.is_empty(), "too few canary samples yet");
    h.state.pipeline.save_snapshot().await.unwrap();
    let (_, more) = h.feedback(&rest[..10]).await;
    assert!(more["results"].as_array().unwrap().is_empty());
    let h = h.restart().await;
    assert_eq!(h.state.pipeline.restored().replayed, 10, "{:?}", h.state.pipeline.restored());
    let results = h.feedback_batches(&rest[10..]).await;
    assert_eq!(results[0]["outcome"], "applied", "{results:?}");
    let one_run = harness();
    let acted_at = |h: &Harness| h.records(Kind::Received).len();
    one_run.feedback_batches(&lines).await;
    // Both runs act at the same event: nothing was lost or counted twice across the restart.
    let first_matched = |h: &Harness| h.records(Kind::Matched)[0].entry.event_id.clone();
    assert_eq!(first_matched(&h), first_matched(&one_run));
    assert_eq!(acted_at(&h), acted_at(&one_run));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_action_on_feedback_resumed_after_a_crash_still_ends_its_comparison() {
    let h = harness();
    // Some feedback about both arms, then a `decided` on it and a crash before the target.
    let (status, _) = h.feedback(&outcomes(5, 300, 0.0, 0.0)).await;
    assert_eq!(status, StatusCode::OK);
    let arms = json!([
        {"namespace": "sms-app", "service": "model-service", "version": "v2"},
        {"namespace": "sms-app", "service": "model-service", "version": "v1"},
    ]);
    decided_then_crashed(&h, "feedback-canary-errors", "A-feedback", json!({ "feedback_arms": arms })).await;
    let h = h.restart().await;
    let reports = h.state.pipeline.resume_pending().await.unwrap();
    assert_eq!(reports[0].outcome, Kind::Applied);
    let applied = &h.records(Kind::Applied)[0].entry;
    assert_eq!(applied.detail.as_ref().unwrap()["feedback_arms"], arms);
    // The comparison is over: its arms start again (after a restart too, from the log).
    let h = h.restart().await;
    let snapshot = h.state.pipeline.save_snapshot().await;
    assert!(snapshot.is_ok());
    let saved: Value =
        serde_json::from_slice(&std::fs::read(h.audit.join(crate::pipeline::SNAPSHOT_FILE)).unwrap()).unwrap();
    assert_eq!(saved["arms"]["arms"], json!([]), "{saved}");
}

/// 200 requests alternating between v2 and v1; one in 7 fails and is tried twice more, each
/// attempt reported with its `request_id` and `attempt` after the next request's first; one in
/// 21 succeeds on its third attempt.
fn retried_requests() -> Vec<String> {
    let line = |r: usize, attempt: u32, success: bool| {
        json!({"service": "model-service", "namespace": "sms-app", "version": if r.is_multiple_of(2) { "v2" } else { "v1" },
               "time": chrono::Utc::now(), "kind": "outcome", "success": success,
               "request_id": format!("req-{r}"), "attempt": attempt})
        .to_string()
    };
    let mut lines = Vec::new();
    let mut pending = Vec::new();
    for r in 0..200 {
        lines.push(line(r, 1, !r.is_multiple_of(7)));
        lines.append(&mut pending);
        if r.is_multiple_of(7) {
            pending = vec![line(r, 2, false), line(r, 3, r.is_multiple_of(21))];
        }
    }
    lines.append(&mut pending);
    lines
}

/// Each arm's tally, from a fresh snapshot.
async fn tallies(h: &Harness) -> Vec<(Value, Value)> {
    h.state.pipeline.save_snapshot().await.unwrap();
    let saved: Value =
        serde_json::from_slice(&std::fs::read(h.audit.join(crate::pipeline::SNAPSHOT_FILE)).unwrap()).unwrap();
    let arms = saved["arms"]["arms"].as_array().unwrap().clone();
    arms.iter().map(|a| (a[0]["version"].clone(), a[1]["tally"].clone())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn retried_requests_count_once_and_a_replay_after_a_restart_rebuilds_the_same_tallies() {
    let lines = retried_requests();
    let one_run = harness();
    one_run.feedback_batches(&lines).await;
    let expected = tallies(&one_run).await;
    // Per version 100 requests (300 events with the retries counted once): v2 has 15 failures,
    // v1 14, and 5 of each succeeded on their third attempt.
    for (version, tally) in &expected {
        let failed_finally = if version == "v2" { 10 } else { 9 };
        assert_eq!(
            (tally["outcomes_n"].as_u64(), tally["errors"].as_u64()),
            (Some(100), Some(failed_finally)),
            "{version}: {tally}"
        );
    }
    // Cut by a snapshot and a restart (the tail replayed from the log), the same tallies.
    let h = harness();
    let (first, rest) = lines.split_at(120);
    h.feedback_batches(first).await;
    h.state.pipeline.save_snapshot().await.unwrap();
    h.feedback_batches(rest).await;
    let h = h.restart().await;
    assert_eq!(h.state.pipeline.restored().replayed, rest.len() as u64, "{:?}", h.state.pipeline.restored());
    assert_eq!(tallies(&h).await, expected);
}
