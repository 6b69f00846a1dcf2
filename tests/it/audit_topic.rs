//! Every audit record on a Kafka topic (`kafka.audit_topic`), against a real Kafka-protocol broker
//! (tansu): in seq order, keyed by target, the exact bytes of the local log's lines; a restart
//! continues after what was published; a broker that is down does not hold up alerts, and what
//! was recorded meanwhile is published when it comes up.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use serde_json::Value;

use crate::support::backstop::{Workdir, eventually};
use crate::support::tansu::Tansu;

const FIRING: &str = include_str!("../../fixtures/alertmanager/firing.json");
const GROUPED: &str = include_str!("../../fixtures/alertmanager/grouped.json");
const TOPIC: &str = "backstop.audit";

/// One message of the audit topic.
#[derive(Debug, Clone)]
struct Published {
    key: Vec<u8>,
    payload: Vec<u8>,
    seq: u64,
    kind: String,
}

fn workdir(brokers: &str) -> Workdir {
    let wd = Workdir::new();
    let config = std::fs::read_to_string(wd.config()).unwrap()
        + &format!("\nkafka:\n  brokers: {brokers}\n  audit_topic: {TOPIC}\n");
    std::fs::write(wd.config(), config).unwrap();
    wd
}

/// The local log's lines, byte for byte (`audit export`).
fn local_lines(wd: &Workdir) -> Vec<Vec<u8>> {
    let out = wd.cli(&["audit", "export"]);
    assert!(out.status.success(), "audit export: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect()
}

fn header(m: &impl Message, key: &str) -> String {
    let h = m.headers().and_then(|h| h.iter().find(|h| h.key == key)).unwrap_or_else(|| panic!("no header {key}"));
    String::from_utf8(h.value.unwrap().to_vec()).unwrap()
}

/// Read the topic from the start (a new consumer group) until `want` distinct seqs arrived, then
/// a little longer to see any duplicates; everything read, in topic order.
async fn consume(broker: &Tansu, want: usize, timeout: Duration) -> Vec<Published> {
    let group = format!("audit-reader-{}", uuid::Uuid::now_v7());
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[TOPIC]).unwrap();
    let mut got: Vec<Published> = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut settle: Option<Instant> = None;
    loop {
        let distinct = got.iter().map(|p| p.seq).collect::<std::collections::BTreeSet<_>>().len();
        if distinct >= want && settle.is_none() {
            settle = Some(Instant::now() + Duration::from_secs(2));
        }
        let until = settle.unwrap_or(deadline).min(deadline);
        let now = Instant::now();
        if now >= until {
            return got;
        }
        match tokio::time::timeout(until - now, consumer.recv()).await {
            Ok(Ok(m)) => got.push(Published {
                key: m.key().unwrap_or_default().to_vec(),
                payload: m.payload().unwrap_or_default().to_vec(),
                seq: header(&m, "backstop_seq").parse().unwrap(),
                kind: header(&m, "backstop_kind"),
            }),
            Ok(Err(e)) => {
                // The topic's metadata may lag its creation briefly.
                eprintln!("consume: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => {}
        }
    }
}

/// The published messages are the local lines: every seq once, in seq order, the same bytes,
/// keyed by target, with the kind header.
fn assert_same(published: &[Published], lines: &[Vec<u8>]) {
    let seqs: Vec<u64> = published.iter().map(|p| p.seq).collect();
    assert_eq!(seqs, (1..=lines.len() as u64).collect::<Vec<_>>(), "every record once, in seq order");
    for (p, line) in published.iter().zip(lines) {
        assert_eq!(p.payload, *line, "seq {}: the message is the log's line", p.seq);
        let record: Value = serde_json::from_slice(line).unwrap();
        assert_eq!(record["seq"], p.seq);
        assert_eq!(record["kind"], p.kind.as_str());
        assert_eq!(p.key, record["target"].as_str().unwrap_or_default().as_bytes(), "seq {}: keyed by target", p.seq);
    }
}

fn published_seq(wd: &Workdir) -> Option<u64> {
    let text = std::fs::read_to_string(wd.path("data/audit/audit-topic.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    assert_eq!(v["topic"], TOPIC);
    v["seq"].as_u64()
}

#[tokio::test]
async fn every_audit_record_is_published_in_order_keyed_by_target_as_its_exact_line() {
    let Some(broker) = Tansu::try_start().await else { return };
    broker.create_topics(&["backstop.alerts", "backstop.feedback", TOPIC]).await;
    let wd = workdir(&broker.brokers());
    let server = wd.serve();
    let (status, body) = server.post("/v1/alertmanager", "application/json", FIRING).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["outcome"], "applied");
    let (status, _) = server.post("/v1/alertmanager", "application/json", FIRING).await;
    assert_eq!(status, 200);

    let lines = local_lines(&wd);
    assert!(lines.len() >= 7, "received, matched, decided, applied, then a duplicate: {}", lines.len());
    let published = consume(&broker, lines.len(), Duration::from_secs(30)).await;
    assert_same(&published, &lines);
    assert!(published.iter().any(|p| p.key == b"sms-app/model-service"));
    assert!(published.iter().any(|p| p.key.is_empty() && p.kind == "received"));
    let end = lines.len() as u64;
    let stored = eventually(Duration::from_secs(10), || published_seq(&wd).filter(|s| *s == end)).await;
    assert!(stored.is_some(), "the published position is written beside the log; log:\n{}", server.log());

    // A restart continues after the published position: nothing is published twice.
    assert!(server.terminate().success());
    let server = wd.serve();
    let (status, _) = server.post("/v1/alertmanager", "application/json", GROUPED).await;
    assert_eq!(status, 200);
    let lines = local_lines(&wd);
    assert!(lines.len() as u64 > end);
    let published = consume(&broker, lines.len(), Duration::from_secs(30)).await;
    assert_same(&published, &lines);
    assert!(server.terminate().success());
}

#[tokio::test]
async fn a_broker_outage_does_not_hold_up_alerts_and_the_backlog_is_published_when_it_returns() {
    if !Tansu::available() {
        return;
    }
    // A port where nothing listens yet; the broker starts there later.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let wd = workdir(&format!("127.0.0.1:{port}"));
    let server = wd.serve();
    let (status, body) = server.post("/v1/alertmanager", "application/json", FIRING).await;
    assert_eq!(status, 200, "acknowledged while the broker is down: {body}");
    assert_eq!(body["results"][0]["outcome"], "applied");
    let (status, body) = server.post("/v1/alertmanager", "application/json", GROUPED).await;
    assert_eq!(status, 200, "{body}");
    assert!(std::fs::read_to_string(wd.path("data/audit/audit-topic.json")).is_err(), "nothing published yet");
    // Let a produce attempt time out, so the retry path runs (not only librdkafka's queue).
    let failed =
        eventually(Duration::from_secs(40), || server.log().contains("cannot publish audit records").then_some(()))
            .await;
    assert!(failed.is_some(), "the outage is logged; log:\n{}", server.log());

    let Some(broker) = Tansu::try_start_on(port).await else { return };
    broker.create_topics(&["backstop.alerts", "backstop.feedback", TOPIC]).await;
    let lines = local_lines(&wd);
    let published = consume(&broker, lines.len(), Duration::from_secs(60)).await;
    // At least once: a batch that timed out during the outage may have reached the broker, so
    // a consumer dedupes by seq (backstop_seq), keeping the first.
    let mut first: BTreeMap<u64, Published> = BTreeMap::new();
    let mut order = Vec::new();
    for p in published {
        if let std::collections::btree_map::Entry::Vacant(e) = first.entry(p.seq) {
            order.push(p.seq);
            e.insert(p);
        }
    }
    assert_eq!(
        order.len(),
        lines.len(),
        "every record arrives once the broker is back (got seqs {order:?}); log:\n{}",
        server.log()
    );
    let deduped: Vec<Published> = order.iter().map(|s| first[s].clone()).collect();
    assert_same(&deduped, &lines);
    assert!(server.terminate().success());
}

/// A delivery is one record of about its body's size; one larger than a Kafka message may be
/// (`message.max.bytes`, here lowered to 100,000) is published as a stand-in carrying its seq and
/// the SHA-256 of its line, so the chain still checks and what follows is not held up.
#[tokio::test]
async fn a_record_larger_than_a_kafka_message_is_published_as_a_stand_in_and_the_rest_follows() {
    let Some(broker) = Tansu::try_start().await else { return };
    broker.create_topics(&["backstop.alerts", "backstop.feedback", TOPIC]).await;
    let wd = Workdir::new();
    let config = std::fs::read_to_string(wd.config()).unwrap()
        + &format!(
            "\nkafka:\n  brokers: {}\n  audit_topic: {TOPIC}\n  properties:\n    message.max.bytes: \"100000\"\n",
            broker.brokers()
        );
    std::fs::write(wd.config(), config).unwrap();
    let server = wd.serve();
    // The demo alert with a 150 kB annotation (well within the body limit of 1 MiB).
    let big =
        FIRING.replacen("\"annotations\":{", &format!("\"annotations\":{{\"dump\":\"{}\",", "x".repeat(150_000)), 1);
    assert!(big.len() > 150_000);
    let (status, body) = server.post("/v1/alertmanager", "application/json", big.clone()).await;
    assert_eq!((status, body["results"][0]["outcome"].as_str()), (200, Some("applied")), "{body}");
    let (status, _) = server.post("/v1/alertmanager", "application/json", GROUPED).await;
    assert_eq!(status, 200);

    let lines = local_lines(&wd);
    let published = consume(&broker, lines.len(), Duration::from_secs(30)).await;
    let seqs: Vec<u64> = published.iter().map(|p| p.seq).collect();
    assert_eq!(seqs, (1..=lines.len() as u64).collect::<Vec<_>>(), "every record once, in seq order");
    let mut stand_ins = 0;
    for (i, (p, line)) in published.iter().zip(&lines).enumerate() {
        if line.len() < 100_000 {
            assert_eq!(p.payload, *line, "seq {}: the message is the log's line", p.seq);
            continue;
        }
        stand_ins += 1;
        let stand_in: Value = serde_json::from_slice(&p.payload).unwrap();
        let record: Value = serde_json::from_slice(line).unwrap();
        assert_eq!(
            (stand_in["seq"].clone(), stand_in["kind"].clone()),
            (record["seq"].clone(), record["kind"].clone())
        );
        assert_eq!(stand_in["prev"], record["prev"]);
        assert_eq!(stand_in["too_large"]["bytes"], line.len());
        let hash = backstop::digest::sha256_hex(line);
        assert_eq!(stand_in["too_large"]["sha256"], hash.as_str());
        // The chain goes on through it.
        let next: Value = serde_json::from_slice(&published[i + 1].payload).unwrap();
        assert_eq!(next["prev"], hash.as_str(), "the next record's prev is the stand-in's hash");
    }
    assert_eq!(stand_ins, 1, "the big delivery, and only it");
    assert!(server.log().contains("a stand-in with its hash is published in its place"), "{}", server.log());
    assert!(server.terminate().success());
}
