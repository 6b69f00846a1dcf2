//! Pause, undo, and Flagger's rollback webhook.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn pause_holds_automatic_actions_until_resume() {
    let h = harness();
    let (status, body) = h
        .post_json("/v1/pause", json!({"target": "sms-app/model-service", "reason": "migration", "actor": "bob"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = h.webhook(FIRING).await;
    assert_eq!(body["results"][0]["outcome"], "held");
    assert!(body["results"][0]["reason"].as_str().unwrap().contains("by bob"), "{body}");
    assert!(h.vs().contains("weight: 90"));
    h.post_json("/v1/resume", json!({"target": "sms-app/model-service", "reason": "done", "actor": "bob"})).await;
    let (_, body) = h.webhook(FIRING).await;
    assert_eq!(body["results"][0]["outcome"], "applied", "held did not consume the key: {body}");
    let controls = h.records(Kind::Control);
    assert_eq!(controls.len(), 2);
    assert_eq!(controls[0].entry.actor.as_deref(), Some("bob"));
}

#[tokio::test(flavor = "multi_thread")]
async fn undo_puts_back_the_recorded_state_and_refuses_when_the_object_moved_on() {
    let h = harness();
    let original = h.vs();
    let (_, body) = h.webhook(FIRING).await;
    let action = body["results"][0]["action_id"].as_str().unwrap().to_string();
    let (status, body) =
        h.post_json(&format!("/v1/actions/{action}/undo"), json!({"reason": "false alarm", "actor": "carol"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["outcome"], "applied");
    let restored = h.vs();
    assert!(restored.contains("weight: 90 # stable") && restored.contains("weight: 10 # canary"), "{restored}");
    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.contains("backstop.io/") && !l.trim_start().starts_with("annotations:"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&restored), strip(&original));
    // Undoing again: the object is no longer as the action left it.
    let (_, body) =
        h.post_json(&format!("/v1/actions/{action}/undo"), json!({"reason": "again", "actor": "carol"})).await;
    assert_eq!(body["outcome"], "refused", "{body}");
    let (status, _) = h.post_json("/v1/actions/nope/undo", json!({"reason": "x"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

const FLAGGER: &str = r#"
rules:
  - name: flagger-canary-errors
    match: ['alertname="CanaryHighErrorRate"']
    target: { namespace: "{{ $labels.namespace }}", flagger: "{{ $labels.virtualservice }}" }
    action: { flagger-rollback: { hold: 2s } }
"#;

/// As Flagger sends it (its docs: CanaryWebhookPayload).
fn flagger_call(name: &str) -> Value {
    json!({"name": name, "namespace": "sms-app", "phase": "Progressing", "checksum": "85d557f47b",
           "type": "rollback", "metadata": {"eventMessage": "Starting canary analysis"}})
}

#[tokio::test(flavor = "multi_thread")]
async fn flagger_is_told_to_roll_back_while_a_decision_holds_and_the_first_yes_is_recorded() {
    let h = harness_confirming(FLAGGER, None);
    // Before any decision: go on.
    let (status, body) = h.post_json("/v1/flagger/rollback", flagger_call("model-service")).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{body}");
    assert_eq!(body["rollback"], false);
    let before = h.vs();
    let (_, body) = h.webhook(FIRING).await;
    assert_eq!(body["results"][0]["outcome"], "applied", "{body}");
    assert_eq!(h.vs(), before, "nothing is written for a Flagger canary");
    for _ in 0..3 {
        let (status, body) = h.post_json("/v1/flagger/rollback", flagger_call("model-service")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!((body["rollback"].as_bool(), body["rule"].as_str()), (Some(true), Some("flagger-canary-errors")));
    }
    let answered: Vec<_> = h
        .records(Kind::Control)
        .into_iter()
        .filter(|r| r.entry.detail.as_ref().is_some_and(|d| d["control"] == "flagger-rollback"))
        .collect();
    assert_eq!(answered.len(), 1, "the first yes is recorded, once");
    assert_eq!(answered[0].entry.detail.as_ref().unwrap()["payload"]["checksum"], "85d557f47b");
    // Another canary: go on. A malformed call: 422, recorded.
    let (status, _) = h.post_json("/v1/flagger/rollback", flagger_call("other")).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    let (status, _) = h.post_json("/v1/flagger/rollback", json!({"phase": "Progressing"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(h.records(Kind::Rejected).len(), 1);
    // The decision holds for its `hold`, and survives a restart meanwhile.
    let h = h.restart().await;
    let (status, _) = h.post_json("/v1/flagger/rollback", flagger_call("model-service")).await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (status, _) = h.post_json("/v1/flagger/rollback", flagger_call("model-service")).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "the hold is over");
}
