//! Verification of applied rollbacks: verified, unverified at the deadline, resumed after a restart.

use super::*;

const VERIFYING: &str = r#"
rules:
  - name: verified-rollback
    match: ['alertname="CanaryHighErrorRate"']
    target: { namespace: "{{ $labels.namespace }}", virtualservice: "{{ $labels.virtualservice }}" }
    action: { rollback: { stable: v1, canary: v2 } }
    verify:
      query: share_of_v2{vs="{{ $labels.virtualservice }}"}
      deadline: 1s
      interval: 100ms
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_whose_traffic_moved_is_verified_without_holding_up_the_answer() {
    let h = harness_confirming(VERIFYING, Some(0.0));
    let token = tokio_util::sync::CancellationToken::new();
    let _verifier = h.state.pipeline.spawn_verifier(token.clone()).await;
    let (status, body) = h.webhook(FIRING).await;
    assert_eq!((status, body["results"][0]["outcome"].as_str()), (StatusCode::OK, Some("applied")), "{body}");
    let applied = &h.records(Kind::Applied)[0];
    assert_eq!(applied.entry.detail.as_ref().unwrap()["verify"]["query"], r#"share_of_v2{vs="model-service"}"#);
    let verified = wait_for(&h, Kind::Verified).await;
    assert_eq!(verified.entry.action_id, applied.entry.action_id);
    assert_eq!(verified.entry.detail.as_ref().unwrap()["verification"]["share"], 0.0);
    token.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_whose_traffic_did_not_move_is_unverified_at_the_deadline() {
    let h = harness_confirming(VERIFYING, Some(0.1));
    let token = tokio_util::sync::CancellationToken::new();
    let _verifier = h.state.pipeline.spawn_verifier(token.clone()).await;
    h.webhook(FIRING).await;
    let unverified = wait_for(&h, Kind::Unverified).await;
    let reason = unverified.entry.reason.clone().unwrap();
    assert!(reason.starts_with("traffic did not move within 1s: canary share 0.1 is above 0.01"), "{reason}");
    let detail = unverified.entry.detail.unwrap();
    assert_eq!(detail["verification"]["result"], "unverified");
    assert!(detail["verification"]["after_seconds"].as_f64().unwrap() >= 1.0);
    assert!(h.records(Kind::Verified).is_empty());
    token.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_verification_pending_at_a_restart_resumes_after_it() {
    let h = harness_confirming(VERIFYING, Some(0.0));
    // No verifier running: the process "stops" right after the action.
    h.webhook(FIRING).await;
    assert!(h.records(Kind::Verified).is_empty());
    let h = h.restart_with(Some(Some(0.0))).await;
    let token = tokio_util::sync::CancellationToken::new();
    let _verifier = h.state.pipeline.spawn_verifier(token.clone()).await;
    let verified = wait_for(&h, Kind::Verified).await;
    assert_eq!(verified.entry.action_id, h.records(Kind::Applied)[0].entry.action_id);
    token.cancel();
}
