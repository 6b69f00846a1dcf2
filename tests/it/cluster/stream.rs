//! Streams under failure: a lagging follower, a kill while Kafka streams in, the broker restarted.

use super::*;

/// A follower paused while the leader records (controls and 2,000 feedback events), and while
/// the leader then dies, catches up from the topic when it wakes: both epochs, the same bytes.
#[tokio::test(flavor = "multi_thread")]
async fn a_follower_that_fell_behind_across_a_takeover_catches_up_to_the_same_bytes() {
    let Some(mut cluster) = Cluster::new(3).await else { return };
    for r in &mut cluster.replicas {
        r.start();
    }
    let leader = cluster.settled(Duration::from_secs(60)).await;
    let lagging = (leader + 1) % 3;
    cluster.replicas[lagging].signal("-STOP");
    let control = |pause: bool, i: usize| {
        let path = if pause { "/v1/pause" } else { "/v1/resume" };
        (path, format!(r#"{{"target": "shop/checkout", "reason": "drill {i}", "actor": "oncall"}}"#))
    };
    for i in 0..20 {
        let (path, body) = control(i % 2 == 0, i);
        let (status, answer) = cluster.replicas[leader].server().post(path, "application/json", body).await;
        assert_eq!(status, 200, "{answer}");
    }
    // And intake load meanwhile: 2,000 feedback events in batches of 200.
    for batch in outcomes(5, 2000).chunks(200) {
        let (status, answer) =
            cluster.replicas[leader].server().post("/v1/feedback", "application/x-ndjson", batch.join("\n")).await;
        assert_eq!((status, &answer["received"]), (200, &Value::from(200)), "{answer}");
    }
    cluster.replicas[leader].kill();
    let next = cluster.settled(Duration::from_secs(60)).await;
    assert_ne!(next, lagging, "a stopped replica cannot take over");
    for i in 20..30 {
        let (path, body) = control(i % 2 == 0, i);
        let (status, answer) = cluster.replicas[next].server().post(path, "application/json", body).await;
        assert_eq!(status, 200, "{answer}");
    }
    cluster.replicas[lagging].signal("-CONT");
    let dir = cluster.replicas[next].audit_dir();
    let behind = cluster.replicas[lagging].audit_dir();
    let same = eventually(Duration::from_secs(30), || (segments(&behind) == segments(&dir)).then_some(())).await;
    assert!(same.is_some(), "the lagging follower did not catch up:\n{}", cluster.replicas[lagging].server().log());
    // Caught up, it says so: no record, no message behind.
    let metrics_url = format!("{}/metrics", cluster.replicas[lagging].server().url);
    let mut caught_up = false;
    for _ in 0..50 {
        let text = reqwest::get(&metrics_url).await.unwrap().text().await.unwrap();
        if text.contains("backstop_replication_lag_records 0") && text.contains("backstop_replication_lag_messages 0") {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(caught_up, "the lag gauges do not say caught up");
    let drills = records(&behind).iter().filter(|r| r["kind"] == "control" && r.to_string().contains("drill ")).count();
    assert_eq!(drills, 30, "every pause and resume, from both leaders");
    let received = records(&behind).iter().filter(|r| r["kind"] == "received").count();
    assert_eq!(received, 2000, "every feedback event once");
    let out = cluster.replicas[lagging].wd.cli(&["audit", "verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A kill -9 of the leader while alerts and feedback stream in over Kafka: the new leader
/// resumes after the last message the log recorded (no consumer-group wait), so every message is
/// in the survivors' logs exactly once (by topic and offset), the alert acts once however often
/// it is redelivered, and every copy is the same bytes and verifies.
#[tokio::test(flavor = "multi_thread")]
async fn a_kill_of_the_leader_while_kafka_streams_in_records_every_message_once() {
    const FEEDBACK: usize = 400;
    const ALERTS: usize = 20;
    let Some(mut cluster) = Cluster::new(3).await else { return };
    for r in &mut cluster.replicas {
        r.start();
    }
    let leader = cluster.settled(Duration::from_secs(60)).await;
    // Healthy feedback (both versions fail 2%): nothing to roll back on; the alert acts.
    let feedback: Vec<String> = outcomes(11, FEEDBACK)
        .into_iter()
        .map(|e| {
            let mut v: Value = serde_json::from_str(&e).unwrap();
            v["success"] = Value::from(v["success"].as_bool().unwrap() || v["version"] == "v2");
            v.to_string()
        })
        .collect();
    let producer = cluster.broker.producer();
    let (alerts, feedback_topic) = cluster.topics.clone();
    let stream = {
        let broker = cluster.broker.brokers();
        let producer = producer.clone();
        tokio::spawn(async move {
            for (i, event) in feedback.iter().enumerate() {
                let record = rdkafka::producer::FutureRecord::<(), _>::to(&feedback_topic).payload(event);
                producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
                if i % (FEEDBACK / ALERTS) == 0 {
                    let record = rdkafka::producer::FutureRecord::<(), _>::to(&alerts).payload(FIRING);
                    producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            broker
        })
    };
    // Mid-stream, the leader dies.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.replicas[leader].kill();
    let next = cluster.settled(Duration::from_secs(60)).await;
    stream.await.unwrap();

    let dir = cluster.replicas[next].audit_dir();
    let (alerts, feedback_topic) = cluster.topics.clone();
    let offsets = |topic: &str| -> Vec<i64> {
        let mut o: Vec<i64> = records(&dir)
            .iter()
            .filter(|r| r["kind"] == "received")
            .filter_map(|r| {
                let k = if r["detail"]["kafka"].is_object() {
                    &r["detail"]["kafka"]
                } else {
                    &r["detail"]["delivery"]["kafka"]
                };
                (k["topic"] == topic).then(|| k["offset"].as_i64().unwrap())
            })
            .collect();
        o.sort();
        o
    };
    let all = eventually(Duration::from_secs(30), || {
        (offsets(&feedback_topic).len() >= FEEDBACK && offsets(&alerts).len() >= ALERTS).then_some(())
    })
    .await;
    assert!(
        all.is_some(),
        "not everything recorded: {} feedback, {} alerts\n{}",
        offsets(&feedback_topic).len(),
        offsets(&alerts).len(),
        cluster.replicas[next].server().log()
    );
    assert_eq!(offsets(&feedback_topic), (0..FEEDBACK as i64).collect::<Vec<_>>(), "each feedback message once");
    assert_eq!(offsets(&alerts), (0..ALERTS as i64).collect::<Vec<_>>(), "each alert message once");
    // Both leaders recorded some of the stream: before and after the new leader's takeover.
    let all = records(&dir);
    let takeover = all.iter().rposition(|r| r["detail"]["control"] == "takeover").unwrap();
    let received = |rs: &[Value]| rs.iter().filter(|r| r["kind"] == "received").count();
    let (old, new) = (received(&all[..takeover]), received(&all[takeover..]));
    eprintln!("messages recorded by the killed leader: {old}, by the new one: {new}");
    assert!(old > 0 && new > 0, "the kill came mid-stream: {old} before, {new} after");
    assert_eq!(cluster.patches(), 1, "the alert acted once");
    assert_eq!(cluster.weights(), [100, 0]);
    // The leader, assigned rather than a group member, still commits to the group (for tools
    // that watch its lag, and as the fallback for a partition the log has no record of).
    let group = format!("backstop-{}", alerts.trim_start_matches("alerts-"));
    let committed = eventually(Duration::from_secs(20), || {
        use rdkafka::consumer::Consumer as _;
        let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", cluster.broker.brokers())
            .set("group.id", &group)
            .create()
            .unwrap();
        let mut list = rdkafka::TopicPartitionList::new();
        list.add_partition(&feedback_topic, 0);
        let got = consumer.committed_offsets(list, Duration::from_secs(5)).ok()?;
        let offset = got.elements()[0].offset();
        (offset == rdkafka::Offset::Offset(FEEDBACK as i64)).then_some(())
    })
    .await;
    assert!(committed.is_some(), "the leader's offsets were not committed to {group}");
    cluster.replicas[leader].start();
    cluster.settled(Duration::from_secs(60)).await;
    cluster.assert_copies(next, true).await;
}

/// The broker killed and started again (its data kept, in S3) while feedback streams in over
/// HTTP: nothing is acknowledged while it is down, a sender that retries until acknowledged gets
/// every event recorded exactly once, and every replica ends with the same bytes, verified.
#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_mid_stream_loses_nothing_and_doubles_nothing() {
    const EVENTS: usize = 120;
    let Some(broker) = Tansu::try_start_persistent().await else { return };
    let mut cluster = Cluster::on(broker, 3, |_| {}).await.unwrap();
    for r in &mut cluster.replicas {
        r.start();
    }
    cluster.settled(Duration::from_secs(60)).await;
    let events: Vec<String> = outcomes(31, EVENTS)
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let mut v: Value = serde_json::from_str(&e).unwrap();
            v["id"] = Value::from(format!("event-{i}"));
            v["success"] = Value::from(true);
            v.to_string()
        })
        .collect();
    let (mut refused, mut down_answers) = (0, Vec::new());
    let mut current = leader_now(&cluster).await;
    for (i, event) in events.iter().enumerate() {
        if i == EVENTS / 2 {
            cluster.broker.stop();
            // While the broker is down, nothing is acknowledged.
            let until = Instant::now() + Duration::from_secs(4);
            while Instant::now() < until {
                if let Some(l) = leader_now(&cluster).await {
                    let (status, _) =
                        cluster.replicas[l].server().post("/v1/feedback", "application/x-ndjson", event.clone()).await;
                    down_answers.push(status);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            cluster.broker.start_again().await;
        }
        // The sender retries until acknowledged (as Alertmanager and a Kafka producer do),
        // asking who leads after a refusal.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(l) = current {
                let (status, body) =
                    cluster.replicas[l].server().post("/v1/feedback", "application/x-ndjson", event.clone()).await;
                if status == 200 {
                    assert_eq!(body["received"], 1, "{body}");
                    break;
                }
                refused += 1;
            }
            assert!(Instant::now() < deadline, "event {i} never acknowledged");
            tokio::time::sleep(Duration::from_millis(200)).await;
            current = leader_now(&cluster).await;
        }
    }
    let takeovers = records(&cluster.replicas[current.unwrap()].audit_dir())
        .iter()
        .filter(|r| r["detail"]["control"] == "takeover")
        .count();
    eprintln!("while the broker was down: {down_answers:?}; refused then retried after: {refused}; terms: {takeovers}");
    assert!(
        !down_answers.is_empty() && !down_answers.contains(&200),
        "acknowledged without the broker: {down_answers:?}"
    );
    let leader = cluster.settled(Duration::from_secs(60)).await;
    cluster.assert_copies(leader, true).await;
    let mut ids: Vec<String> = per_alert(records(&cluster.replicas[leader].audit_dir()))
        .iter()
        .filter(|r| r["kind"] == "received")
        .filter_map(|r| r["event_id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    let mut want: Vec<String> = (0..EVENTS).map(|i| format!("event-{i}")).collect();
    want.sort();
    assert_eq!(ids, want, "every event recorded exactly once");
}
