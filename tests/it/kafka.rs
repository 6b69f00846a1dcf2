//! The Kafka source against a real Kafka-protocol broker (tansu, its own process): alerts act,
//! feedback is recorded, what cannot be parsed is recorded and copied to the dead-letter topic
//! without stopping the partition, and after a restart committed messages do not come again.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::backstop::{Workdir, eventually};
use crate::support::tansu::Tansu;

fn records(wd: &Workdir, kind: &str) -> Vec<Value> {
    let out = wd.cli(&["audit", "query", "--outcome", kind, "--format", "json"]);
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test]
async fn alerts_and_feedback_from_kafka_are_recorded_and_bad_messages_go_to_the_dead_letter_topic() {
    let Some(broker) = Tansu::try_start().await else { return };
    broker.create_topics(&["backstop.alerts", "backstop.feedback", "backstop.dead-letter"]).await;
    let wd = Workdir::new();
    let config = std::fs::read_to_string(wd.config()).unwrap()
        + &format!("\nkafka:\n  brokers: {}\n  dead_letter_topic: backstop.dead-letter\n", broker.brokers());
    std::fs::write(wd.config(), config).unwrap();
    let server = wd.serve();

    let producer = broker.producer();
    let alert = json!({"labels": {"alertname": "CanaryHighErrorRate", "namespace": "sms-app", "virtualservice": "model-service"},
                       "startsAt": "2026-11-24T20:00:00Z"});
    broker.send(&producer, "backstop.alerts", &alert.to_string(), &[]).await;
    broker.send(&producer, "backstop.alerts", "{not json", &[]).await;
    let feedback =
        r#"{"service":"model-service","namespace":"sms-app","version":"v2","kind":"satisfaction","satisfied":false}"#;
    broker
        .send(
            &producer,
            "backstop.feedback",
            feedback,
            &[
                ("ce_specversion", "1.0"),
                ("ce_id", "fb-1"),
                ("ce_type", "io.backstop.feedback.v1"),
                ("ce_time", "2026-11-24T20:00:00Z"),
            ],
        )
        .await;

    let vs = wd.path("deploy/local/model-service.yaml");
    let rolled = eventually(Duration::from_secs(30), || {
        std::fs::read_to_string(&vs).ok().filter(|t| t.contains("weight: 100 # stable"))
    })
    .await;
    assert!(rolled.is_some(), "the alert from Kafka did not act; log:\n{}", server.log());
    let feedback_seen =
        eventually(Duration::from_secs(20), || records(&wd, "received").into_iter().find(|r| r["event_id"] == "fb-1"))
            .await
            .unwrap_or_else(|| panic!("feedback not recorded; log:\n{}", server.log()));
    assert_eq!(feedback_seen["detail"]["kafka"]["topic"], "backstop.feedback");
    let rejected = eventually(Duration::from_secs(20), || records(&wd, "rejected").into_iter().next()).await.unwrap();
    assert_eq!(rejected["source"], "kafka");
    assert_eq!(rejected["detail"]["topic"], "backstop.alerts");
    assert_eq!(rejected["detail"]["offset"], 1);
    assert_eq!(rejected["detail"]["prefix"], "{not json");

    assert_eq!(records(&wd, "applied").len(), 1);

    // Offsets are committed at shutdown: after a restart nothing already recorded comes again,
    // and new messages flow.
    assert!(server.terminate().success());
    let received_before = records(&wd, "received").len();
    let server = wd.serve();
    let fb2 = r#"{"id":"fb-2","service":"model-service","namespace":"sms-app","version":"v2","time":"2026-11-24T20:01:00Z","kind":"satisfaction","satisfied":true}"#;
    broker.send(&producer, "backstop.feedback", fb2, &[]).await;
    let seen =
        eventually(Duration::from_secs(30), || records(&wd, "received").into_iter().find(|r| r["event_id"] == "fb-2"))
            .await;
    assert!(seen.is_some(), "new messages flow after the restart; log:\n{}", server.log());
    assert_eq!(records(&wd, "received").len(), received_before + 1, "nothing committed was delivered twice");
    assert_eq!(records(&wd, "rejected").len(), 1);
    assert!(server.terminate().success());

    // The bad message was copied to the dead-letter topic, with why.
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};
    let dl: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set("group.id", "dead-letter-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    dl.subscribe(&["backstop.dead-letter"]).unwrap();
    let m = tokio::time::timeout(Duration::from_secs(20), dl.recv()).await.expect("a dead letter").unwrap();
    assert_eq!(m.payload().unwrap(), b"{not json");
    let reason = m.headers().unwrap().iter().find(|h| h.key == "backstop_reason").unwrap();
    assert!(String::from_utf8_lossy(reason.value.unwrap()).contains("invalid JSON"));
}
