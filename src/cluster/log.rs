//! The replicated audit log on Kafka: one single-partition topic that the leader produces to
//! (idempotent, acks=all) and every replica reads from its start or from where it left off,
//! applying what [`Reader`] accepts to its own audit log, byte for byte.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::elector::Role;
use super::replica::{HEADER_EPOCH, HEADER_FIRST_SEQ, HEADER_KIND, HEADER_LEADER, HEADER_PREV, Message, Read, Reader};
use crate::audit::{Applied, AuditError, Replicate};
use crate::kafka::KafkaConfig;
use crate::telemetry::metrics::Event as MetricEvent;

/// How often a replica saves its place in the topic (when it has moved).
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// How often a replica measures how far behind the topic it is.
/// (every second: a follower's readiness waits for it to be caught up).
const LAG_EVERY: Duration = Duration::from_secs(1);

/// The file beside the audit log's segments where a replica keeps its place in the topic.
pub const READER_FILE: &str = "replica.json";

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("replicated log topic {topic}: {message}")]
    Kafka { topic: String, message: String },
    #[error("replicated log position {path}: {message}")]
    Position { path: PathBuf, message: String },
    #[error("replicated log: {0}")]
    Audit(#[from] AuditError),
}

/// Where a replica is in the topic: the last offset it has applied and its reader then.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Place {
    pub offset: i64,
    pub epoch: Option<u32>,
    pub next_seq: u64,
    pub last_hash: String,
}

impl Place {
    pub fn reader(&self) -> Reader {
        Reader::at(self.epoch, self.next_seq, self.last_hash.clone())
    }
}

pub fn read_place(dir: &Path) -> Result<Option<Place>, LogError> {
    let path = dir.join(READER_FILE);
    match std::fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LogError::Position { path, message: e.to_string() }),
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map(Some).map_err(|e| LogError::Position { path, message: e.to_string() })
        }
    }
}

pub(super) fn write_place(dir: &Path, place: &Place) -> Result<(), LogError> {
    let path = dir.join(READER_FILE);
    let bytes =
        serde_json::to_vec(place).map_err(|e| LogError::Position { path: path.clone(), message: e.to_string() })?;
    crate::fsutil::write_atomically(&path, &bytes).map_err(|e| LogError::Position { path, message: e.to_string() })
}

pub(super) fn kafka_error(topic: &str) -> impl Fn(rdkafka::error::KafkaError) -> LogError + '_ {
    move |e| LogError::Kafka { topic: topic.to_string(), message: e.to_string() }
}

/// The producer's settings: idempotent, acks=all, one record per request (the test broker does
/// not resume a consumer inside a batch of several records; FIELD facts in docs/cluster.md).
fn producer(kafka: &KafkaConfig, topic: &str, timeout: Duration) -> Result<FutureProducer, LogError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers)
        // A batch not committed within the lease could not be acknowledged anyway.
        .set("message.timeout.ms", timeout.as_millis().to_string())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .set("message.max.bytes", "16777216");
    for (k, v) in &kafka.properties {
        c.set(k, v);
    }
    c.create().map_err(kafka_error(topic))
}

fn headers(pairs: &[(&'static str, Vec<u8>)]) -> OwnedHeaders {
    pairs.iter().fold(OwnedHeaders::new(), |h, (key, v)| h.insert(Header { key, value: Some(v.as_slice()) }))
}

/// The leader's side: markers and batches.
#[derive(Clone)]
pub struct LogProducer {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

impl LogProducer {
    pub fn new(kafka: &KafkaConfig, topic: &str, timeout: Duration) -> Result<LogProducer, LogError> {
        Ok(LogProducer { producer: producer(kafka, topic, timeout)?, topic: topic.to_string(), timeout })
    }

    /// Produce the marker of a new epoch; its offset, which the new leader reads up to before
    /// it appends anything.
    pub async fn mark(&self, epoch: u32, leader: &str) -> Result<i64, LogError> {
        let (pairs, value) = Message::Marker { epoch, leader: leader.to_string() }.encode();
        let record = FutureRecord::<(), _>::to(&self.topic).payload(&value).headers(headers(&pairs)).partition(0);
        let delivery = self.producer.send(record, self.timeout).await.map_err(|(e, _)| kafka_error(&self.topic)(e))?;
        Ok(delivery.offset)
    }

    /// What the audit writer of the leader of `epoch` hands its batches to. `roles` is the
    /// elector's: a batch is produced only while this replica leads in `epoch`, and reported
    /// committed only if it still does once the broker has answered.
    pub fn replicator(&self, epoch: u32, leader: &str, roles: watch::Receiver<Role>) -> Arc<dyn Replicate> {
        Arc::new(Replicator { log: self.clone(), epoch, leader: leader.to_string(), roles })
    }
}

struct Replicator {
    log: LogProducer,
    epoch: u32,
    leader: String,
    roles: watch::Receiver<Role>,
}

impl Replicator {
    /// How long this replica may still acknowledge in its epoch.
    fn window(&self) -> Option<Duration> {
        match &*self.roles.borrow() {
            Role::Leader { epoch, until } if *epoch == self.epoch => (*until - Utc::now()).to_std().ok(),
            _ => None,
        }
    }
}

impl Replicate for Replicator {
    fn replicate(&self, first_seq: u64, prev: &str, bytes: &[u8]) -> Result<(), String> {
        let Some(window) = self.window().filter(|w| !w.is_zero()) else {
            return Err(format!("not the leader of epoch {} any more", self.epoch));
        };
        let pairs = [
            (HEADER_KIND, b"batch".to_vec()),
            (HEADER_EPOCH, self.epoch.to_string().into_bytes()),
            (HEADER_LEADER, self.leader.clone().into_bytes()),
            (HEADER_FIRST_SEQ, first_seq.to_string().into_bytes()),
            (HEADER_PREV, prev.as_bytes().to_vec()),
        ];
        let topic = &self.log.topic;
        let record = FutureRecord::<(), _>::to(topic).payload(bytes).headers(headers(&pairs)).partition(0);
        // Waits for the broker's answer (at most `message.timeout.ms`, the lease's duration); an
        // answer after the acting window is not acknowledged (checked below).
        let sent = futures::executor::block_on(self.log.producer.send(record, window));
        if let Err((e, _)) = sent {
            return Err(format!("{topic}: {e}"));
        }
        if self.window().is_none_or(|w| w.is_zero()) {
            return Err(format!(
                "the lease of epoch {} ran out before {topic} committed the batch: not acknowledged",
                self.epoch
            ));
        }
        Ok(())
    }

    fn publish_snapshot(&self, seq: u64, hash: &str, line: &[u8], state: Vec<u8>) -> Result<(), String> {
        let Some(window) = self.window().filter(|w| !w.is_zero()) else {
            return Err(format!("not the leader of epoch {} any more", self.epoch));
        };
        let line = String::from_utf8(line.to_vec()).map_err(|_| "the checkpoint's line is not UTF-8".to_string())?;
        let message = Message::Snapshot {
            epoch: self.epoch,
            leader: self.leader.clone(),
            seq,
            hash: hash.to_string(),
            line,
            state,
        };
        let (pairs, value) = message.encode();
        let topic = &self.log.topic;
        let record = FutureRecord::<(), _>::to(topic).payload(&value).headers(headers(&pairs)).partition(0);
        futures::executor::block_on(self.log.producer.send(record, window))
            .map_err(|(e, _)| format!("{topic}: {e}"))?;
        Ok(())
    }
}

/// The replication lag in seconds: 0 when nothing waits; else how long ago the broker took the
/// last message applied (an upper bound on how stale this replica's state is); None (unknown)
/// while messages wait and none was applied yet.
fn lag_seconds(waiting: i64, applied_at_ms: Option<i64>, now: chrono::DateTime<Utc>) -> Option<f64> {
    match applied_at_ms {
        _ if waiting <= 0 => Some(0.0),
        Some(at) => Some(((now.timestamp_millis() - at).max(0) as f64) / 1000.0),
        None => None,
    }
}

/// A replica's reader of the log topic: no group membership (it assigns the partition itself),
/// nothing committed (its place is saved beside its audit log).
pub(super) fn reader(kafka: &KafkaConfig, topic: &str, me: &str) -> Result<StreamConsumer, LogError> {
    reader_config(kafka, me).create().map_err(kafka_error(topic))
}

fn reader_config(kafka: &KafkaConfig, me: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers)
        .set("group.id", format!("backstop-replica-{me}"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // A new leader waits for its marker to come back: a broker that answers an idle fetch
        // only when its wait ends (tansu does) would add up to that wait to every takeover
        // (librdkafka's default is 500 ms).
        .set("fetch.wait.max.ms", "50");
    for (k, v) in &kafka.properties {
        c.set(k, v);
    }
    c
}

/// Where applied lines go: the audit log, or the pipeline (which also folds them into its state).
pub trait Apply: Send + Sync {
    fn apply(&self, first_seq: u64, lines: Vec<String>) -> futures::future::BoxFuture<'_, Result<Applied, AuditError>>;
    fn dir(&self) -> PathBuf;
    /// How far behind the topic this replica is, as just measured.
    fn lag(&self, _lag: crate::pipeline::ReplicationLag) {}
}

impl Apply for crate::audit::AuditLog {
    fn apply(&self, first_seq: u64, lines: Vec<String>) -> futures::future::BoxFuture<'_, Result<Applied, AuditError>> {
        Box::pin(crate::audit::AuditLog::apply(self, first_seq, lines))
    }
    fn dir(&self) -> PathBuf {
        crate::audit::AuditLog::dir(self).to_path_buf()
    }
}

impl Apply for crate::pipeline::Pipeline {
    fn apply(&self, first_seq: u64, lines: Vec<String>) -> futures::future::BoxFuture<'_, Result<Applied, AuditError>> {
        Box::pin(self.apply_replicated(first_seq, lines))
    }
    fn dir(&self) -> PathBuf {
        self.audit().dir().to_path_buf()
    }
    fn lag(&self, lag: crate::pipeline::ReplicationLag) {
        self.set_replication_lag(lag);
    }
}

/// Every replica's side: reads the topic in order and applies what its [`Reader`] accepts.
pub struct LogFollower {
    consumer: StreamConsumer,
    /// Reads the topic's newest message while this replica is behind: how many records it is.
    tail: BaseConsumer,
    topic: String,
    place: Option<Place>,
    reader: Reader,
    /// The last offset applied (-1 before any): a new leader waits for its marker's.
    applied: watch::Sender<i64>,
    /// When the broker took the last message applied (ms since the epoch), for the lag.
    applied_at: Option<i64>,
}

impl LogFollower {
    /// Resume from the place saved beside the audit log in `dir`, or read the topic from its
    /// start.
    pub fn new(kafka: &KafkaConfig, topic: &str, dir: &Path, me: &str) -> Result<LogFollower, LogError> {
        let consumer = reader(kafka, topic, me)?;
        let tail: BaseConsumer = reader_config(kafka, me).create().map_err(kafka_error(topic))?;
        let place = read_place(dir)?;
        let from = place.as_ref().map_or(Offset::Beginning, |p| Offset::Offset(p.offset + 1));
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, from).map_err(kafka_error(topic))?;
        consumer.assign(&tpl).map_err(kafka_error(topic))?;
        let reader = place.as_ref().map(Place::reader).unwrap_or_default();
        let (applied, _) = watch::channel(place.as_ref().map_or(-1, |p| p.offset));
        Ok(LogFollower { consumer, tail, topic: topic.to_string(), place, reader, applied, applied_at: None })
    }

    /// `backstop_replication_lag_messages`: messages in the topic not yet applied here.
    fn report_lag(&self, to: &dyn Apply) {
        let consumer = &self.consumer;
        let topic = &self.topic;
        // A short blocking call to the broker (the multi-threaded runtime lends this thread).
        let watermarks = tokio::task::block_in_place(|| consumer.fetch_watermarks(topic, 0, Duration::from_secs(1)));
        if let Ok((_, high)) = watermarks {
            let applied = self.place.as_ref().map_or(-1, |p| p.offset);
            let messages = (high - 1 - applied).max(0);
            let seconds = lag_seconds(messages, self.applied_at, Utc::now());
            let records =
                if messages == 0 { Some(0) } else { tokio::task::block_in_place(|| self.records_behind(high)) };
            // Unknown (nothing applied yet) shows as 0 on the gauge; readiness knows better.
            MetricEvent::ReplicationLag { messages, records, seconds: seconds.unwrap_or(0.0) }.emit();
            to.lag(crate::pipeline::ReplicationLag { messages, seconds });
        }
    }

    /// Records behind the topic's newest message (at `high - 1`), read with the tail consumer;
    /// None when it cannot be read within a second or is a marker.
    fn records_behind(&self, high: i64) -> Option<u64> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, 0, Offset::Offset(high - 1)).ok()?;
        self.tail.assign(&tpl).ok()?;
        let m = self.tail.poll(Duration::from_secs(1))?.ok()?;
        let pairs: Vec<(&str, &[u8])> =
            m.headers().map(|h| h.iter().map(|h| (h.key, h.value.unwrap_or_default())).collect()).unwrap_or_default();
        let last = Message::decode(&pairs, m.payload().unwrap_or_default()).ok()?;
        super::replica::records_behind(&last, self.reader.next_seq)
    }

    /// The last offset applied, as it moves.
    pub fn applied(&self) -> watch::Receiver<i64> {
        self.applied.subscribe()
    }

    /// Read and apply until `token` is cancelled. A message that cannot be applied (the local
    /// log refuses it) stops the follower: carrying on would fork the chain.
    pub async fn run(mut self, to: Arc<dyn Apply>, token: CancellationToken) -> Result<(), LogError> {
        let dir = to.dir();
        let mut lag_tick = tokio::time::interval(LAG_EVERY);
        let mut save_tick = tokio::time::interval(SAVE_EVERY);
        // The place read up to, not yet saved. It is saved at most every SAVE_EVERY (not an
        // atomic write per message): resuming from an older place reads again what the log
        // already has, which the log skips.
        let mut unsaved: Option<Place> = None;
        loop {
            let message = tokio::select! {
                _ = token.cancelled() => {
                    if let Some(place) = unsaved.take() {
                        write_place(&dir, &place)?;
                    }
                    return Ok(());
                }
                _ = lag_tick.tick() => {
                    self.report_lag(to.as_ref());
                    continue;
                }
                _ = save_tick.tick() => {
                    if let Some(place) = unsaved.take() {
                        write_place(&dir, &place)?;
                    }
                    continue;
                }
                m = self.consumer.recv() => m,
            };
            let m = match message {
                Ok(m) => m,
                Err(e) => {
                    warn!(topic = %self.topic, error = %e, "replicated log: read failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let offset = m.offset();
            self.applied_at = m.timestamp().to_millis().or(self.applied_at);
            let pairs: Vec<(&str, &[u8])> = m
                .headers()
                .map(|h| h.iter().map(|h| (h.key, h.value.unwrap_or_default())).collect())
                .unwrap_or_default();
            let decoded = Message::decode(&pairs, m.payload().unwrap_or_default());
            let first_seq = self.reader.next_seq;
            match decoded.map(|message| self.reader.read(&message)) {
                Err(e) => {
                    warn!(topic = %self.topic, offset, error = %e, "replicated log: not a message of ours; skipped")
                }
                Ok(Read::Append(lines)) => {
                    to.apply(first_seq, lines).await?;
                }
                Ok(Read::Epoch { epoch, leader }) => info!(epoch, %leader, offset, "replicated log: a new leader"),
                Ok(Read::Stale { epoch, current }) => {
                    info!(epoch, current, offset, "replicated log: a deposed leader's late batch dropped")
                }
                Ok(Read::Gap { expected_seq, first_seq, .. }) => {
                    warn!(expected_seq, first_seq, offset, "replicated log: a batch off the chain; not applied")
                }
                // For replicas that start with an empty disk; this one has its log.
                Ok(Read::Snapshot) => {}
            }
            let place = Place {
                offset,
                epoch: self.reader.epoch,
                next_seq: self.reader.next_seq,
                last_hash: self.reader.last_hash.clone(),
            };
            unsaved = Some(place.clone());
            self.place = Some(place);
            self.applied.send_replace(offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_in_seconds_is_the_age_of_the_last_applied_message_while_others_wait() {
        let now = chrono::DateTime::<Utc>::from_timestamp_millis(10_000).unwrap();
        assert_eq!(lag_seconds(0, Some(2_500), now), Some(0.0), "caught up");
        assert_eq!(lag_seconds(0, None, now), Some(0.0), "an empty topic");
        assert_eq!(lag_seconds(12, Some(2_500), now), Some(7.5));
        assert_eq!(lag_seconds(12, None, now), None, "nothing applied yet: unknown");
        assert_eq!(lag_seconds(1, Some(11_000), now), Some(0.0), "a clock behind the broker's");
    }
}
