//! Every audit record, also on a Kafka topic (`kafka.audit_topic`), so a cluster-wide audit trail
//! survives the loss of a replica's disk.
//!
//! The publisher tails the local log (which stays the record of truth: alerts are acknowledged
//! when their records are fsync'd there, never when they are published) and produces each record,
//! up to the writer's durable end, as its exact line bytes: key the record's `target` (empty when
//! it has none), headers `backstop_seq` and `backstop_kind`. At most [`BATCH`] records are read
//! per batch, so a long outage costs no memory. After a batch is acknowledged by the broker
//! (`acks=all`, idempotent producer) its last position is written atomically to
//! [`PROGRESS_FILE`] in the audit directory, and a restart continues after it.
//!
//! At least once: a crash between the broker's acknowledgement and that write publishes the batch
//! again; consumers dedupe by `backstop_seq`. A broker outage is logged (rate-limited) and retried
//! with backoff forever; nothing else waits for this task.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::audit::{AuditError, AuditLog, Position, RawRecord, Record, raw_records_after};
use crate::kafka::KafkaConfig;
use crate::task::{Task, TaskError};

/// The published position, beside `snapshot.json` in the audit directory.
pub const PROGRESS_FILE: &str = "audit-topic.json";
/// Records read from disk and produced per batch.
pub const BATCH: usize = 500;
/// How often the log is looked at when everything is published.
const POLL: Duration = Duration::from_millis(200);
/// At shutdown: how long a last flush may take.
const FINAL_FLUSH: Duration = Duration::from_secs(2);
/// How long librdkafka tries to deliver a record before the batch counts as failed.
const MESSAGE_TIMEOUT_MS: &str = "10000";
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// At most one warning per this period while publishing fails.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// What [`PROGRESS_FILE`] holds: the topic, and the last record acknowledged by the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ProgressFile {
    topic: String,
    #[serde(flatten)]
    position: Position,
}

/// The published position stored in the audit directory.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    /// Nothing published yet: start from the oldest record.
    None,
    /// Continue after this record (if the log still holds it).
    At(Position),
    /// Unreadable, or for another topic: start from the oldest record; why.
    Unusable(String),
}

pub fn read_progress(dir: &Path, topic: &str) -> Stored {
    let path = dir.join(PROGRESS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Stored::None,
        Err(e) => return Stored::Unusable(format!("cannot read {}: {e}", path.display())),
    };
    match serde_json::from_slice::<ProgressFile>(&bytes) {
        Ok(p) if p.topic == topic => Stored::At(p.position),
        Ok(p) => Stored::Unusable(format!("{} is for topic `{}`, not `{topic}`", path.display(), p.topic)),
        Err(e) => Stored::Unusable(format!("{} is unreadable: {e}", path.display())),
    }
}

/// Atomically (a crash leaves the old or the new position).
pub fn write_progress(dir: &Path, topic: &str, position: &Position) -> std::io::Result<()> {
    let file = ProgressFile { topic: topic.to_string(), position: position.clone() };
    let bytes = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
    crate::fsutil::write_atomically(&dir.join(PROGRESS_FILE), &bytes)
}

/// The message key: the record's target, or empty.
pub fn message_key(record: &Record) -> &[u8] {
    record.entry.target.as_deref().unwrap_or_default().as_bytes()
}

/// The message headers: `backstop_seq` (decimal) and `backstop_kind`.
/// What stands in for a record too large for a Kafka message (the producer's `message.max.bytes`,
/// 1,000,000 by default; a delivery of many alerts is one record of about its body's size): the
/// record's place in the chain and the SHA-256 of its line, so a consumer still checks the chain
/// (the next record's `prev` is that hash) and knows to read the record from the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StandIn {
    pub seq: u64,
    pub time: chrono::DateTime<chrono::Utc>,
    pub prev: String,
    pub kind: crate::audit::Kind,
    pub too_large: TooLarge,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TooLarge {
    /// The line's length in bytes.
    pub bytes: usize,
    /// The SHA-256 of the line (hex).
    pub sha256: String,
}

impl StandIn {
    pub fn of(r: &RawRecord) -> StandIn {
        StandIn {
            seq: r.record.seq,
            time: r.record.time,
            prev: r.record.prev.clone(),
            kind: r.record.entry.kind,
            // The position's hash is the line's (what the next record's `prev` names).
            too_large: TooLarge { bytes: r.line.len(), sha256: r.position.hash.clone() },
        }
    }
}

pub fn message_headers(record: &Record) -> OwnedHeaders {
    let seq = record.seq.to_string();
    OwnedHeaders::new_with_capacity(2)
        .insert(Header { key: "backstop_seq", value: Some(seq.as_bytes()) })
        .insert(Header { key: "backstop_kind", value: Some(record.entry.kind.as_str().as_bytes()) })
}

/// The next records to publish.
#[derive(Debug)]
pub struct Batch {
    pub records: Vec<RawRecord>,
    /// `after` no longer matched the log, so the batch starts at the oldest record still present.
    pub restarted: bool,
}

/// Up to `max` records after `after` (all from the oldest when `after` is `None` or no longer
/// matches the log), none past `upto`.
pub fn next_batch(dir: &Path, after: Option<&Position>, upto: u64, max: usize) -> Result<Batch, AuditError> {
    if let Some(records) = raw_records_after(dir, after, upto, max)? {
        return Ok(Batch { records, restarted: false });
    }
    let records = raw_records_after(dir, None, upto, max)?.unwrap_or_default();
    Ok(Batch { records, restarted: true })
}

/// The producer's settings: the `kafka:` section's brokers and `properties` (SASL, TLS, ...), and
/// what publishing the audit trail needs, which properties do not change.
pub fn producer_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    // Records without a target (empty key) all go to one partition.
    client.set("partitioner", "consistent");
    for (k, v) in &config.properties {
        client.set(k, v);
    }
    client
        .set("bootstrap.servers", &config.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", MESSAGE_TIMEOUT_MS);
    client
}

/// One warning per [`WARN_EVERY`] while failures last, with how many were not logged.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
    failing: bool,
}

impl Throttle {
    fn failed(&mut self, topic: &str, error: &str) {
        self.failing = true;
        if self.last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            warn!(
                topic,
                error,
                suppressed = self.suppressed,
                "cannot publish audit records; retrying (alert handling is not affected)"
            );
            self.last = Some(Instant::now());
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
    }

    fn succeeded(&mut self, topic: &str) {
        if std::mem::take(&mut self.failing) {
            info!(topic, "publishing audit records again");
            self.last = None;
            self.suppressed = 0;
        }
    }
}

/// Publishes the audit log to a topic; a [`Task`] so the server starts and stops it with the
/// others, though it takes no input.
pub struct AuditPublisher {
    audit: AuditLog,
    dir: PathBuf,
    topic: String,
    client: ClientConfig,
    producer: FutureProducer,
    /// The last record the broker acknowledged (`None`: from the oldest record).
    published: Option<Position>,
    throttle: Throttle,
}

fn source_error(e: impl std::fmt::Display) -> TaskError {
    TaskError { source_name: "audit-topic", message: e.to_string() }
}

impl AuditPublisher {
    pub fn new(config: &KafkaConfig, topic: impl Into<String>, audit: AuditLog) -> Result<AuditPublisher, TaskError> {
        let client = producer_config(config);
        let producer = client.create::<FutureProducer>().map_err(source_error)?;
        Ok(AuditPublisher {
            dir: audit.dir().to_path_buf(),
            audit,
            topic: topic.into(),
            client,
            producer,
            published: None,
            throttle: Throttle::default(),
        })
    }

    fn resume(&mut self) {
        self.published = match read_progress(&self.dir, &self.topic) {
            Stored::None => None,
            Stored::At(p) => Some(p),
            Stored::Unusable(why) => {
                warn!(topic = %self.topic, reason = %why, "publishing the audit log from the oldest record still present");
                None
            }
        };
        info!(topic = %self.topic, after_seq = self.published.as_ref().map_or(0, |p| p.seq), "audit topic publisher started");
    }

    /// Publish one batch. Ok(true): everything durable is published.
    async fn step(&mut self) -> Result<bool, String> {
        let end = self.audit.position();
        if self.published.as_ref().is_some_and(|p| p.seq == end.seq && p.hash == end.hash) || end.seq == 0 {
            return Ok(true);
        }
        let (dir, after) = (self.dir.clone(), self.published.clone());
        let batch = tokio::task::spawn_blocking(move || next_batch(&dir, after.as_ref(), end.seq, BATCH))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("reading the audit log: {e}"))?;
        if batch.restarted {
            let oldest = batch.records.first().map(|r| r.record.seq);
            let stored = self.published.as_ref().map(|p| p.seq);
            let lost = match (stored, oldest) {
                (Some(s), Some(o)) if o > s + 1 => {
                    format!("records {}..{} were removed before they were published", s + 1, o - 1)
                }
                _ => String::new(),
            };
            warn!(
                topic = %self.topic,
                published_seq = ?stored,
                oldest_seq = ?oldest,
                lost,
                "the published position no longer matches the audit log (retention removed it, or the log was replaced): publishing from the oldest record still present"
            );
            self.published = None;
        }
        if batch.records.is_empty() {
            return Ok(true);
        }
        let caught_up = batch.records.len() < BATCH;
        let (delivered, error) = self.produce(&batch.records).await;
        if delivered > 0 {
            let position = batch.records[delivered - 1].position.clone();
            let (dir, topic, p) = (self.dir.clone(), self.topic.clone(), position.clone());
            match tokio::task::spawn_blocking(move || write_progress(&dir, &topic, &p)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, file = PROGRESS_FILE, "cannot write the published position"),
                Err(e) => warn!(error = %e, file = PROGRESS_FILE, "cannot write the published position"),
            }
            self.published = Some(position);
        }
        match error {
            Some(e) => {
                if let Some((code, why)) = self.producer.client().fatal_error() {
                    warn!(%code, error = %why, "the audit topic producer failed fatally; creating a new one");
                    let fresh = self.client.create::<FutureProducer>().map_err(|e| e.to_string())?;
                    let old = std::mem::replace(&mut self.producer, fresh);
                    // Dropping a producer purges and flushes (blocking briefly).
                    let _ = tokio::task::spawn_blocking(move || drop(old)).await;
                }
                Err(e.to_string())
            }
            None => Ok(caught_up),
        }
    }

    /// Produce the records; how many, from the first, the broker acknowledged, and the first
    /// error.
    async fn produce(&self, records: &[RawRecord]) -> (usize, Option<KafkaError>) {
        let mut error = None;
        let mut deliveries = Vec::with_capacity(records.len());
        for r in records {
            let message = FutureRecord::to(&self.topic)
                .key(message_key(&r.record))
                .payload(&r.line)
                .headers(message_headers(&r.record));
            let sent = match self.producer.send_result(message).map_err(|(e, _)| e) {
                // Larger than a message may be: its stand-in takes its place (never retried
                // forever, holding up everything after it).
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {
                    let stand_in = serde_json::to_vec(&StandIn::of(r)).unwrap_or_default();
                    warn!(
                        topic = %self.topic,
                        seq = r.record.seq,
                        bytes = r.line.len(),
                        "an audit record is larger than a Kafka message may be: a stand-in with its hash is published in its place"
                    );
                    let message = FutureRecord::to(&self.topic).key(message_key(&r.record)).payload(&stand_in).headers(
                        message_headers(&r.record).insert(Header { key: "backstop_too_large", value: Some(b"1") }),
                    );
                    self.producer.send_result(message).map_err(|(e, _)| e)
                }
                sent => sent,
            };
            match sent {
                Ok(d) => deliveries.push(d),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        let mut delivered = 0;
        let mut failed = false;
        for d in deliveries {
            match d.await {
                Ok(Ok(_)) if !failed => delivered += 1,
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    failed = true;
                    error.get_or_insert(e);
                }
                Err(_) => {
                    failed = true;
                    error.get_or_insert(KafkaError::Canceled);
                }
            }
        }
        (delivered, error)
    }

    async fn run_until(mut self, shutdown: CancellationToken) {
        self.resume();
        let mut deadline: Option<Instant> = None;
        let mut failures: u32 = 0;
        loop {
            let Some(result) = finish_by(self.step(), &shutdown, &mut deadline).await else {
                info!(topic = %self.topic, "stopping before every audit record was published; the next start continues");
                break;
            };
            let pause = match result {
                Ok(false) => {
                    failures = 0;
                    self.throttle.succeeded(&self.topic);
                    continue;
                }
                Ok(true) => {
                    failures = 0;
                    self.throttle.succeeded(&self.topic);
                    POLL
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    self.throttle.failed(&self.topic, &e);
                    backoff(failures)
                }
            };
            if deadline.is_some() {
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => deadline = Some(Instant::now() + FINAL_FLUSH),
                _ = tokio::time::sleep(pause) => {}
            }
        }
        let producer = self.producer;
        let _ = tokio::task::spawn_blocking(move || drop(producer)).await;
    }
}

/// `fut`'s output; once shutdown is requested, only if it is ready within [`FINAL_FLUSH`].
async fn finish_by<F: std::future::Future>(
    fut: F,
    shutdown: &CancellationToken,
    deadline: &mut Option<Instant>,
) -> Option<F::Output> {
    tokio::pin!(fut);
    if deadline.is_none() {
        tokio::select! {
            r = &mut fut => return Some(r),
            _ = shutdown.cancelled() => *deadline = Some(Instant::now() + FINAL_FLUSH),
        }
    }
    let at = (*deadline)?;
    tokio::time::timeout_at(at.into(), fut).await.ok()
}

/// Capped exponential: 250 ms, 500 ms, 1 s, ... 10 s.
fn backoff(failures: u32) -> Duration {
    BACKOFF_MIN.saturating_mul(1 << failures.saturating_sub(1).min(8)).min(BACKOFF_MAX)
}

impl Task for AuditPublisher {
    fn name(&self) -> &'static str {
        "audit-topic"
    }

    fn run(self: Box<Self>, shutdown: CancellationToken) -> BoxFuture<'static, Result<(), TaskError>> {
        Box::pin(async move {
            self.run_until(shutdown).await;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditOptions, Entry, Kind};

    fn log(dir: &Path, opts: AuditOptions) -> AuditLog {
        AuditLog::open(dir, opts).unwrap()
    }

    fn append(log: &AuditLog, n: usize) {
        for i in 0..n {
            let mut e = Entry::new(Kind::Received).event_id(format!("e{i}"));
            if i % 2 == 1 {
                e = e.target("sms-app/model-service");
            }
            log.append_blocking(vec![e]).unwrap();
        }
    }

    /// The segment files' lines, in order.
    fn file_lines(dir: &Path) -> Vec<Vec<u8>> {
        crate::audit::segments(dir)
            .unwrap()
            .into_iter()
            .flat_map(|(_, p)| {
                let bytes = std::fs::read(p).unwrap();
                bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn batches_are_the_exact_lines_across_segments_and_continue_after_their_positions() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path(), AuditOptions { segment_max_bytes: 600, ..Default::default() });
        append(&log, 12);
        let end = log.position().seq;
        assert!(crate::audit::segments(dir.path()).unwrap().len() > 2, "several segments");
        let mut after: Option<Position> = None;
        let mut got = Vec::new();
        loop {
            let b = next_batch(dir.path(), after.as_ref(), end, 5).unwrap();
            assert!(!b.restarted);
            if b.records.is_empty() {
                break;
            }
            assert!(b.records.len() <= 5);
            for r in &b.records {
                assert_eq!(serde_json::from_slice::<Record>(&r.line).unwrap(), r.record);
                assert_eq!(r.position.seq, r.record.seq);
                // A position the log's own readers accept.
                assert!(crate::audit::records_after_position(dir.path(), &r.position).unwrap().is_some());
            }
            after = Some(b.records.last().unwrap().position.clone());
            got.extend(b.records);
        }
        assert_eq!(got.iter().map(|r| r.line.clone()).collect::<Vec<_>>(), file_lines(dir.path()));
        assert_eq!(got.iter().map(|r| r.record.seq).collect::<Vec<_>>(), (1..=end).collect::<Vec<_>>());
        assert_eq!(after.unwrap(), log.position());
    }

    #[test]
    fn nothing_past_the_durable_end_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path(), AuditOptions::default());
        append(&log, 6);
        let b = next_batch(dir.path(), None, 4, 100).unwrap();
        assert_eq!(b.records.iter().map(|r| r.record.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        let b = next_batch(dir.path(), Some(&b.records[3].position), 6, 100).unwrap();
        assert_eq!(b.records.iter().map(|r| r.record.seq).collect::<Vec<_>>(), vec![5, 6]);
    }

    #[test]
    fn a_position_that_no_longer_matches_restarts_from_the_oldest_record() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path(), AuditOptions::default());
        append(&log, 3);
        let mut pos = next_batch(dir.path(), None, 3, 100).unwrap().records[1].position.clone();
        assert!(!next_batch(dir.path(), Some(&pos), 3, 100).unwrap().restarted);
        pos.hash = crate::audit::GENESIS.into();
        let b = next_batch(dir.path(), Some(&pos), 3, 100).unwrap();
        assert!(b.restarted);
        assert_eq!(b.records.first().unwrap().record.seq, 1);
        let gone = Position { segment: "seg-00000000000000000999.jsonl".into(), ..log.position() };
        let b = next_batch(dir.path(), Some(&gone), 3, 100).unwrap();
        assert!(b.restarted);
        assert_eq!(b.records.len(), 3);
    }

    #[test]
    fn progress_is_written_read_back_and_checked_against_the_topic() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_progress(dir.path(), "audit"), Stored::None);
        let pos =
            Position { seq: 7, hash: "ab".repeat(32), segment: "seg-00000000000000000001.jsonl".into(), offset: 99 };
        write_progress(dir.path(), "audit", &pos).unwrap();
        assert_eq!(read_progress(dir.path(), "audit"), Stored::At(pos.clone()));
        assert!(matches!(read_progress(dir.path(), "other"), Stored::Unusable(w) if w.contains("`audit`")));
        std::fs::write(dir.path().join(PROGRESS_FILE), b"{not json").unwrap();
        assert!(matches!(read_progress(dir.path(), "audit"), Stored::Unusable(w) if w.contains("unreadable")));
    }

    #[test]
    fn key_is_the_target_or_empty_and_headers_carry_seq_and_kind() {
        use rdkafka::message::Headers;
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path(), AuditOptions::default());
        append(&log, 2);
        let b = next_batch(dir.path(), None, 2, 10).unwrap();
        assert_eq!(message_key(&b.records[0].record), b"");
        assert_eq!(message_key(&b.records[1].record), b"sms-app/model-service");
        let h = message_headers(&b.records[1].record);
        let pairs: Vec<(String, Vec<u8>)> =
            h.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect();
        assert_eq!(
            pairs,
            vec![("backstop_seq".to_string(), b"2".to_vec()), ("backstop_kind".to_string(), b"received".to_vec())]
        );
    }

    #[test]
    fn producer_settings_keep_what_publishing_needs_and_pass_the_rest_through() {
        let mut k = KafkaConfig::with_brokers("b:9092");
        k.properties.insert("security.protocol".into(), "SASL_SSL".into());
        k.properties.insert("acks".into(), "1".into());
        let c = producer_config(&k);
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("bootstrap.servers"), Some("b:9092"));
        assert_eq!(c.get("message.timeout.ms"), Some(MESSAGE_TIMEOUT_MS));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_millis(500));
        assert_eq!(backoff(100), BACKOFF_MAX);
    }
}
