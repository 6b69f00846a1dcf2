//! Feedback comparisons across a takeover: they go on, and act at the same event as without one.

use super::*;

/// A feedback comparison goes on across a takeover: the events the old leader recorded count on
/// the new one, which acts on a canary that the events it received itself could not condemn
/// (fewer than the rule's min_samples).
#[tokio::test(flavor = "multi_thread")]
async fn a_feedback_comparison_goes_on_across_a_takeover() {
    let Some(mut cluster) = Cluster::new(3).await else { return };
    for r in &mut cluster.replicas {
        r.start();
    }
    let leader = cluster.settled(Duration::from_secs(60)).await;
    let events = outcomes(7, 300);
    // 100 per arm: min_samples, but not yet the batches the dispersion estimate needs.
    let (before, after) = events.split_at(200);
    let (status, body) =
        cluster.replicas[leader].server().post("/v1/feedback", "application/x-ndjson", before.join("\n")).await;
    assert_eq!((status, &body["received"]), (200, &Value::from(200)), "{body}");
    assert_eq!(cluster.patches(), 0, "not enough evidence yet: {body}");
    cluster.replicas[leader].kill();

    let next = cluster.settled(Duration::from_secs(60)).await;
    // 50 per arm: alone, below min_samples (100).
    let (status, body) =
        cluster.replicas[next].server().post("/v1/feedback", "application/x-ndjson", after.join("\n")).await;
    assert_eq!((status, &body["received"]), (200, &Value::from(100)), "{body}");
    assert_eq!(cluster.weights(), [100, 0], "the new leader rolled the canary back: {body}");
    assert_eq!(cluster.patches(), 1);
    let matched: Vec<Value> =
        records(&cluster.replicas[next].audit_dir()).into_iter().filter(|r| r["kind"] == "matched").collect();
    let n = matched[0]["detail"]["evidence"]["detail"]["canary"]["n"].as_u64().unwrap();
    assert!(n > 100, "the canary's count includes what the old leader recorded: {n}");
}

/// A feedback comparison across a takeover acts at exactly the event it acts at without one,
/// on exactly the same evidence: the new leader's arms are the old one's, record for record.
#[tokio::test(flavor = "multi_thread")]
async fn a_feedback_comparison_acts_at_the_same_event_with_or_without_a_takeover() {
    if !Tansu::available() {
        return;
    }
    let events: Vec<String> = outcomes(23, 300)
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let mut v: Value = serde_json::from_str(&e).unwrap();
            v["id"] = Value::from(format!("event-{i}"));
            v.to_string()
        })
        .collect();
    // Every finding: the event it came at, both arms' counts, the test's figures (statistic,
    // p-value, dispersion) and which comparison fired; not the clock times it started at.
    let decision = |records: &[Value]| -> Vec<(Value, Value)> {
        records
            .iter()
            .filter(|r| r["kind"] == "matched")
            .map(|m| {
                let e = &m["detail"]["evidence"];
                let c = &e["comparison"];
                (
                    m["event_id"].clone(),
                    serde_json::json!([e["canary"], e["baseline"], e["detail"], c["fired"], c["generation"]]),
                )
            })
            .collect()
    };
    let (without, patches) = stream_feedback(&events, None).await;
    assert_eq!(patches, 1);
    let (with, patches) = stream_feedback(&events, Some(120)).await;
    assert_eq!(patches, 1);
    let takeovers = |records: &[Value]| records.iter().filter(|r| r["detail"]["control"] == "takeover").count();
    assert_eq!((takeovers(&without), takeovers(&with)), (1, 2), "the first leader's, and one after the kill");
    let findings = decision(&without);
    assert!(!findings.is_empty());
    eprintln!("acted at {} without a takeover", findings[0].0);
    assert_eq!(decision(&with), findings, "the same event, the same evidence");
}
