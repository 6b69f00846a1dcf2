//! What could not be accepted is recorded once per body, redacted, and never lost.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_same_bad_body_is_recorded_once_and_repeats_counted() {
    let h = harness();
    for _ in 0..5 {
        assert_eq!(h.webhook("not json").await.0, StatusCode::BAD_REQUEST);
    }
    assert_eq!(h.webhook("other junk").await.0, StatusCode::BAD_REQUEST);
    assert_eq!(h.records(Kind::Rejected).len(), 2, "one record per distinct body");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejection_the_log_could_not_take_is_recorded_when_it_comes_again() {
    let h = harness();
    h.state.pipeline.audit().fail_next_writes(1);
    let (status, _) = h.webhook("not json").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "nothing recorded, nothing acknowledged");
    let (status, _) = h.webhook("not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(h.records(Kind::Rejected).len(), 1, "recorded on the retry, not lost to de-duplication");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kafka_message_refused_is_recorded_with_its_credentials_redacted() {
    let h = harness();
    let body = br#"{"service": "model-service", "password": "kafka-s3cr3t", "token": "tok-123""#;
    let rejection = crate::pipeline::Rejection {
        source: "kafka",
        origin: json!({ "kafka": { "topic": "backstop.feedback", "partition": 0, "offset": 7 } }),
        reason: "EOF while parsing an object".into(),
        size: body.len(),
        body,
        body_sha256: crate::digest::sha256_hex(body),
    };
    h.state.pipeline.reject(rejection).await.unwrap();
    let rejected = h.records(Kind::Rejected);
    let prefix = rejected[0].entry.detail.as_ref().unwrap()["prefix"].as_str().unwrap().to_string();
    assert!(!prefix.contains("kafka-s3cr3t") && !prefix.contains("tok-123"), "{prefix}");
    assert!(prefix.contains("model-service"), "the rest is kept: {prefix}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_bad_body_sent_concurrently_is_recorded_once() {
    let h = harness();
    let bad = r#"{"version": "4", "alerts": "#;
    let sends = (0..20).map(|_| h.webhook(bad));
    let answers = futures::future::join_all(sends).await;
    assert!(answers.iter().all(|(status, _)| *status == StatusCode::BAD_REQUEST));
    assert_eq!(h.records(Kind::Rejected).len(), 1, "claimed before the write: one record for 20 at once");
}
