//! Alerts through the pipeline: matched, vetted, confirmed, acted on once, recorded.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn firing_alert_rolls_back_once_and_redelivery_is_a_noop() {
    let h = harness();
    let original = h.vs();
    let (status, body) = h.webhook(FIRING).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["outcome"], "applied", "{body}");
    assert_eq!(body["results"][0]["target"], "sms-app/model-service");
    let after = h.vs();
    assert!(after.contains("weight: 100 # stable") && after.contains("weight: 0 # canary"), "{after}");
    assert!(after.contains("backstop.io/action-id"), "annotations record the action: {after}");
    let changed: Vec<_> = original.lines().filter(|l| !after.contains(*l)).collect();
    assert_eq!(changed, vec!["      weight: 90 # stable", "      weight: 10 # canary"], "only the weights changed");
    assert_eq!(h.kinds(), vec![Kind::Received, Kind::Matched, Kind::Decided, Kind::Applied]);

    let (status, body) = h.webhook(FIRING).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["results"][0]["outcome"], "noop", "{body}");
    assert!(body["results"][0]["reason"].as_str().unwrap().contains("duplicate delivery"));
    assert_eq!(h.vs(), after, "the redelivery wrote nothing");
    let applied = h.records(Kind::Applied);
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0].entry.before.as_ref().unwrap()[0]["destinations"][0]["weight"], 90);
    audit::verify(&h.audit).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn grouped_payload_acts_refuses_and_noops_per_alert() {
    let h = harness();
    let (status, body) = h.webhook(GROUPED).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let outcomes: Vec<(&str, &str)> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["target"].as_str().unwrap_or("-"), r["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("sms-app/model-service", "applied"),
            // checkout is blue-green: the canary rule's subsets do not exist there.
            ("shop/checkout", "refused"),
            // Another rule for the same, already rolled back, VirtualService: nothing to write.
            ("sms-app/model-service", "noop"),
        ]
    );
    let refused = &body["results"][1]["reason"];
    assert!(refused.as_str().unwrap().contains("v2"), "{refused}");
    assert_eq!(
        std::fs::read_to_string(h.manifests.join("checkout.yaml")).unwrap(),
        std::fs::read_to_string(repo("deploy/local/checkout.yaml")).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_payload_is_accepted_and_its_truncation_recorded() {
    let h = harness();
    let (status, body) = h.webhook(TRUNCATED).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["truncatedAlerts"], 3);
    // One record for the delivery: what it says once, then its two alerts.
    let received = h.records(Kind::Received);
    assert_eq!(received.len(), 1);
    let e = &received[0].entry;
    assert_eq!(e.detail.as_ref().unwrap()["delivery"]["truncatedAlerts"], 3);
    assert_eq!(crate::event::alerts_received(e.detail.as_ref(), e.source.as_deref()).unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn resolved_and_unrelated_alerts_are_recorded_and_change_nothing() {
    let h = harness();
    let original = h.vs();
    for payload in [RESOLVED, UNRELATED] {
        let (status, body) = h.webhook(payload).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["results"][0]["reason"], "no rule matches");
    }
    assert_eq!(h.vs(), original);
    assert_eq!(h.kinds(), vec![Kind::Received, Kind::Received]);
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_rule_records_what_it_would_do_and_writes_nothing() {
    let h = harness();
    let checkout = std::fs::read_to_string(h.manifests.join("checkout.yaml")).unwrap();
    let alert = UNRELATED
        .replace(
            "\"alertname\":\"DiskFull\"",
            "\"alertname\":\"BlueGreenUnhealthy\",\"color\":\"green\",\"virtualservice\":\"checkout\"",
        )
        .replace("\"namespace\":\"infra\"", "\"namespace\":\"shop\"");
    let (status, body) = h.webhook(&alert).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["outcome"], "dry_run", "{body}");
    assert_eq!(body["results"][0]["reason"], "dry run: would be applied");
    assert_eq!(std::fs::read_to_string(h.manifests.join("checkout.yaml")).unwrap(), checkout);
    let dry = &h.records(Kind::DryRun)[0].entry;
    assert_eq!(dry.after.as_ref().unwrap()[0]["destinations"][0]["subset"], "blue", "{dry:?}");
    let (_, body) = h.webhook(&alert).await;
    assert_eq!(body["results"][0]["outcome"], "noop", "a redelivered dry run is a duplicate too: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_selector_switch_edits_only_the_selector_and_undoes() {
    let h = harness();
    let path = h.manifests.join("checkout.yaml");
    let original = std::fs::read_to_string(&path).unwrap();
    let alert = UNRELATED
        .replace(
            "\"alertname\":\"DiskFull\"",
            "\"alertname\":\"BlueGreenServiceUnhealthy\",\"service\":\"checkout-active\"",
        )
        .replace("\"namespace\":\"infra\"", "\"namespace\":\"shop\"");
    let (_, body) = h.webhook(&alert).await;
    assert_eq!(body["results"][0]["outcome"], "applied", "{body}");
    let after = std::fs::read_to_string(&path).unwrap();
    assert!(after.contains("    version: blue # the new colour went live"), "{after}");
    assert!(after.contains("subset: green"), "the VirtualService is untouched: {after}");
    let applied = &h.records(Kind::Applied)[0].entry;
    assert_eq!(applied.before.as_ref().unwrap()["version"], "green");
    assert_eq!(applied.detail.as_ref().unwrap()["kind"], "Service");
    let action = body["results"][0]["action_id"].as_str().unwrap();
    let (_, body) =
        h.post_json(&format!("/v1/actions/{action}/undo"), json!({"reason": "fixed", "actor": "eve"})).await;
    assert_eq!(body["outcome"], "applied", "{body}");
    let restored = std::fs::read_to_string(&path).unwrap();
    assert!(restored.contains("    version: green # the new colour went live"), "{restored}");
    let strip = |s: &str| {
        s.lines().filter(|l| !l.contains("backstop.io/") && l.trim() != "annotations:").collect::<Vec<_>>().join("\n")
    };
    assert_eq!(strip(&restored), strip(&original));
}

const CONFIRMED_RULE: &str = include_str!("../../../deploy/prometheus/backstop-rules.yaml");

#[tokio::test(flavor = "multi_thread")]
async fn a_confirmed_alert_acts_and_records_the_query_and_its_answer() {
    let h = harness_confirming(CONFIRMED_RULE, Some(0.31));
    let (_, body) = h.webhook(FIRING).await;
    assert_eq!(body["results"][0]["outcome"], "applied", "{body}");
    let decided = &h.records(Kind::Decided)[0].entry;
    let c = &decided.detail.as_ref().unwrap()["confirmation"];
    assert_eq!(c["result"], "confirmed");
    assert_eq!(c["value"], 0.31);
    assert_eq!(c["condition"], "> 0.05");
    let q = c["query"].as_str().unwrap();
    assert!(q.contains(r#"namespace="sms-app",service="model-service",version="v2",status="error""#), "templated: {q}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alert_prometheus_no_longer_confirms_is_held_with_why_and_acts_later() {
    let h = harness_confirming(CONFIRMED_RULE, Some(0.01));
    let before = h.vs();
    let (_, body) = h.webhook(FIRING).await;
    assert_eq!(body["results"][0]["outcome"], "held", "{body}");
    assert!(body["results"][0]["reason"].as_str().unwrap().contains("says 0.01 now"), "{body}");
    assert_eq!(h.vs(), before);
    let held = &h.records(Kind::Held)[0].entry;
    assert_eq!(held.detail.as_ref().unwrap()["confirmation"]["result"], "refuted");
    // The next delivery is asked again (no key was used): Prometheus now agrees.
    let h = h.restart_with(Some(Some(0.2))).await;
    let (_, body) = h.webhook(FIRING).await;
    assert_eq!(body["results"][0]["outcome"], "applied", "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_data_holds_by_default_and_acts_when_the_rule_says_so() {
    let h = harness_confirming(CONFIRMED_RULE, None);
    let (_, body) = h.webhook(FIRING).await;
    assert_eq!(body["results"][0]["outcome"], "held", "{body}");
    assert!(body["results"][0]["reason"].as_str().unwrap().contains("no data"), "{body}");
    let h = harness_confirming(&CONFIRMED_RULE.replace("on_no_data: hold", "on_no_data: act"), None);
    let (_, body) = h.webhook(FIRING).await;
    assert_eq!(body["results"][0]["outcome"], "applied", "{body}");
    assert_eq!(h.records(Kind::Decided)[0].entry.detail.as_ref().unwrap()["confirmation"]["result"], "no_data");
}

/// An alert storm on a held target: every alert's `matched` and `held` are recorded, in the
/// delivery's order, in a few writes after the delivery's `received` (each alert was its own
/// write and its own wait for the disk, one after another), and before the answer.
#[tokio::test(flavor = "multi_thread")]
async fn a_storm_on_a_held_target_is_recorded_in_the_deliverys_order_in_few_writes() {
    let h = harness();
    let target = crate::target::ObjectRef::virtual_service("sms-app", "model-service");
    h.state.pipeline.pause(Some(&target), true, "ana", "investigating").await.unwrap();
    let mut delivery: Value = serde_json::from_str(FIRING).unwrap();
    let alert = delivery["alerts"][0].clone();
    delivery["alerts"] = (0..50)
        .map(|i| {
            let mut a = alert.clone();
            a["fingerprint"] = json!(format!("storm{i:02}"));
            a["labels"]["pod"] = json!(format!("model-service-v2-{i}"));
            a
        })
        .collect();
    let fsyncs = h.state.pipeline.audit().fsyncs();
    let (status, body) = h.webhook(&delivery.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The received record, then the holds: 64 records (32 alerts) at most at once.
    assert_eq!(h.state.pipeline.audit().fsyncs() - fsyncs, 3, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 50);
    assert!(results.iter().all(|r| r["outcome"] == "held"), "{body}");
    let ids: Vec<&str> = results.iter().map(|r| r["event_id"].as_str().unwrap()).collect();
    let records = audit::query(&h.audit, &audit::Filter::default()).unwrap();
    let after_received: Vec<(Kind, Option<&str>)> = records
        .iter()
        .skip_while(|r| r.entry.kind != Kind::Received)
        .skip(1)
        .map(|r| (r.entry.kind, r.entry.event_id.as_deref()))
        .collect();
    let expected: Vec<(Kind, Option<&str>)> =
        ids.iter().flat_map(|id| [(Kind::Matched, Some(*id)), (Kind::Held, Some(*id))]).collect();
    assert_eq!(after_received, expected);
    audit::verify(&h.audit).unwrap();
}

/// Holds deferred within a delivery are written before an action's records, so the log keeps
/// the delivery's order: held, acted on (here refused by the target), held.
#[tokio::test(flavor = "multi_thread")]
async fn holds_of_a_delivery_are_written_before_an_action_taken_after_them() {
    let h = harness();
    let target = crate::target::ObjectRef::virtual_service("sms-app", "model-service");
    h.state.pipeline.pause(Some(&target), true, "ana", "investigating").await.unwrap();
    let (status, body) = h.webhook(GROUPED).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let outcomes: Vec<&str> =
        body["results"].as_array().unwrap().iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["held", "refused", "held"], "{body}");
    let kinds = h.kinds();
    let after_received: Vec<Kind> = kinds.into_iter().skip_while(|k| *k != Kind::Received).skip(1).collect();
    use Kind::*;
    assert_eq!(after_received, [Matched, Held, Matched, Decided, Refused, Matched, Held]);
    audit::verify(&h.audit).unwrap();
}
