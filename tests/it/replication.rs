//! The replicated audit log's messages through the real broker (tansu as its own process): a
//! takeover's topic, written by two leaders with the idempotent producer (acks=all), read back
//! from the start and folded by `cluster::replica::Reader` as every replica will.

use std::time::{Duration, Instant};

use backstop::cluster::replica::{Message as LogMessage, Read, Reader};
use backstop::digest::sha256_hex;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::support::tansu::Tansu;

const TOPIC: &str = "backstop.audit-log";

fn producer(broker: &Tansu) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // One record per batch: tansu's flaw with resuming inside a batch (FIELD-NOTES).
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .create()
        .unwrap()
}

async fn produce(producer: &FutureProducer, m: &LogMessage) {
    let (headers, value) = m.encode();
    let mut h = OwnedHeaders::new();
    for (key, v) in &headers {
        h = h.insert(Header { key, value: Some(v.as_slice()) });
    }
    let record = FutureRecord::<(), _>::to(TOPIC).payload(&value).headers(h);
    producer.send(record, Duration::from_secs(10)).await.unwrap_or_else(|(e, _)| panic!("produce: {e}"));
}

/// Every message of the topic from its start, decoded.
async fn read_all(broker: &Tansu, want: usize) -> Vec<LogMessage> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set("group.id", format!("replica-{}", uuid::Uuid::now_v7()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[TOPIC]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            Ok(Ok(m)) => {
                let headers: Vec<(&str, &[u8])> = m
                    .headers()
                    .map(|h| h.iter().map(|h| (h.key, h.value.unwrap_or_default())).collect())
                    .unwrap_or_default();
                got.push(LogMessage::decode(&headers, m.payload().unwrap_or_default()).unwrap());
            }
            Ok(Err(e)) => {
                eprintln!("consume: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => {}
        }
    }
    got
}

fn batch(epoch: u32, leader: &str, first_seq: u64, prev: &str, lines: &[&str]) -> LogMessage {
    LogMessage::Batch {
        epoch,
        leader: leader.into(),
        first_seq,
        prev: prev.into(),
        lines: lines.iter().map(|l| l.to_string()).collect(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_takeover_read_back_from_the_broker_keeps_one_chain_and_drops_the_deposed_leaders_late_batch() {
    let Some(broker) = Tansu::try_start().await else { return };
    broker.create_topics(&[TOPIC]).await;
    let (a, b) = (producer(&broker), producer(&broker));
    let r = |seq: u64| format!(r#"{{"seq":{seq},"kind":"received"}}"#);
    let (r1, r2, r3, r4) = (r(1), r(2), r(3), r(4));
    let topic = vec![
        LogMessage::Marker { epoch: 0, leader: "backstop-0".into() },
        batch(0, "backstop-0", 1, backstop::audit::GENESIS, &[&r1, &r2]),
        batch(0, "backstop-0", 3, &sha256_hex(r2.as_bytes()), &[&r3]),
        LogMessage::Marker { epoch: 1, leader: "backstop-1".into() },
        batch(0, "backstop-0", 4, &sha256_hex(r3.as_bytes()), &["late"]),
        batch(1, "backstop-1", 4, &sha256_hex(r3.as_bytes()), &[&r4]),
    ];
    for m in &topic {
        let leader = match m {
            LogMessage::Marker { leader, .. }
            | LogMessage::Batch { leader, .. }
            | LogMessage::Snapshot { leader, .. } => leader,
        };
        produce(if leader == "backstop-0" { &a } else { &b }, m).await;
    }

    let read = read_all(&broker, topic.len()).await;
    assert_eq!(read, topic, "every message back, in order, byte for byte");
    let mut reader = Reader::default();
    let mut log = Vec::new();
    let mut stale = 0;
    for m in &read {
        match reader.read(m) {
            Read::Append(lines) => log.extend(lines),
            Read::Stale { .. } => stale += 1,
            Read::Epoch { .. } | Read::Snapshot => {}
            gap @ Read::Gap { .. } => panic!("{gap:?}"),
        }
    }
    assert_eq!(log, [r1, r2, r3, r4.clone()]);
    assert_eq!(stale, 1, "the deposed leader's late batch");
    assert_eq!((reader.epoch, reader.next_seq, reader.last_hash), (Some(1), 5, sha256_hex(r4.as_bytes())));
}
