//! The Kafka source: alerts and feedback events from topics, at least once. An offset is stored
//! for commit only after the message is durably in the audit log (or recorded as rejected);
//! committed on rebalance and at shutdown. While the audit log cannot take records, consumption
//! waits instead of buffering.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::message::{Headers, Message as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::message::{self, Expect, Message};
use crate::digest::sha256_hex;
use crate::event::SourceKind;
use crate::kafka::KafkaConfig;
use crate::pipeline::{Pipeline, Rejection};
use crate::task::{Task, TaskError};
use crate::telemetry::metrics::Event as MetricEvent;

/// The consumer's context: commits what was stored before partitions are taken away (so the
/// next owner starts after it), counts the partitions assigned (for `/readyz`), and turns
/// librdkafka's statistics into the consumer-lag metric.
struct ConsumerState {
    assigned: Arc<AtomicUsize>,
}

impl rdkafka::ClientContext for ConsumerState {
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, partition, lag) in lags(&statistics) {
            MetricEvent::KafkaLag { topic, partition, lag }.emit();
        }
    }
}

/// Each partition's consumer lag that librdkafka knows: not its internal "unassigned" partition
/// (-1), nor a lag of -1 (unknown: no committed offset or high watermark yet).
fn lags(statistics: &rdkafka::Statistics) -> impl Iterator<Item = (&str, i32, i64)> {
    statistics.topics.iter().flat_map(|(topic, t)| {
        t.partitions
            .iter()
            .filter(|(id, p)| **id >= 0 && p.consumer_lag >= 0)
            .map(move |(id, p)| (topic.as_str(), *id, p.consumer_lag))
    })
}

impl ConsumerContext for ConsumerState {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(_) = rebalance {
            self.assigned.store(0, Ordering::Relaxed);
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                // Nothing stored yet is a normal case.
                warn!(error = %e, "commit on revoke");
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            self.assigned.store(partitions.count(), Ordering::Relaxed);
            info!(partitions = partitions.count(), "kafka partitions assigned");
        }
    }
}

/// How a source takes its partitions.
#[derive(Debug, Clone)]
pub enum Membership {
    /// It joins the consumer group (a single process): partitions come with the group's
    /// assignment, each from its committed offset.
    Group,
    /// It is assigned every partition of its topics directly (a cluster's leader; nobody else
    /// consumes): each from after the highest offset the audit log has recorded for it, else
    /// from its committed offset. A new leader consumes at once, with no wait for the group to
    /// notice that the old one died. Offsets are still committed to the group.
    Leader,
}

pub struct KafkaSource {
    assigned: Arc<AtomicUsize>,
    /// A leader's partitions, and the client that looks for new ones (None: group member).
    leading: Option<Leading>,
    consumer: StreamConsumer<ConsumerState>,
    dead_letters: Option<(FutureProducer, String)>,
    config: KafkaConfig,
    pipeline: Arc<Pipeline>,
}

fn source_error(e: impl std::fmt::Display) -> TaskError {
    TaskError { source_name: "kafka", message: e.to_string() }
}

impl KafkaSource {
    pub fn new(config: KafkaConfig, pipeline: Arc<Pipeline>) -> Result<KafkaSource, TaskError> {
        KafkaSource::counting(config, pipeline, Arc::new(AtomicUsize::new(0)), Membership::Group)
    }

    /// A source that counts its assigned partitions in `assigned` (a cluster's leader starts a
    /// new source each term; `/readyz` keeps reading the same counter).
    pub fn counting(
        config: KafkaConfig,
        pipeline: Arc<Pipeline>,
        assigned: Arc<AtomicUsize>,
        membership: Membership,
    ) -> Result<KafkaSource, TaskError> {
        assigned.store(0, Ordering::Relaxed);
        let mut client = ClientConfig::new();
        // Defaults a user may change through `properties`...
        client.set("session.timeout.ms", "10000").set("auto.offset.reset", "earliest");
        for (k, v) in &config.properties {
            client.set(k, v);
        }
        client.set("bootstrap.servers", &config.brokers);
        // ...and what at-least-once needs, which they may not.
        let mut consumer_config = client.clone();
        // Bound what librdkafka prefetches while backstop is busy (its default is 64 MB per
        // partition): backpressure, not buffering. Consumer-only, so not on the producer.
        let defaults = [
            ("queued.max.messages.kbytes", "8192"),
            ("queued.min.messages", "100000"),
            ("statistics.interval.ms", "15000"),
        ];
        for (k, v) in defaults {
            if !config.properties.contains_key(k) {
                consumer_config.set(k, v);
            }
        }
        let consumer: StreamConsumer<ConsumerState> = consumer_config
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .create_with_context(ConsumerState { assigned: assigned.clone() })
            .map_err(source_error)?;
        let leading = match membership {
            Membership::Group => {
                consumer.subscribe(&[&config.alerts_topic, &config.feedback_topic]).map_err(source_error)?;
                None
            }
            Membership::Leader => Some(Leading {
                metadata: Arc::new(client.create::<BaseConsumer>().map_err(source_error)?),
                partitions: Default::default(),
                next_look: std::sync::Mutex::new(tokio::time::Instant::now()),
            }),
        };
        let dead_letters = match &config.dead_letter_topic {
            Some(t) => Some((client.create::<FutureProducer>().map_err(source_error)?, t.clone())),
            None => None,
        };
        Ok(KafkaSource { consumer, dead_letters, config, pipeline, assigned, leading })
    }

    /// Partitions assigned now (0 before the group is joined and during a rebalance).
    pub fn assigned(&self) -> Arc<AtomicUsize> {
        self.assigned.clone()
    }

    /// Parse a batch of messages (pure; done while the batch before is being recorded).
    fn parse_batch(&self, batch: &[BorrowedMessage<'_>]) -> Vec<Parsed> {
        batch
            .iter()
            .map(|m| {
                let position =
                    json!({ "kafka": { "topic": m.topic(), "partition": m.partition(), "offset": m.offset() } });
                let expect = if m.topic() == self.config.feedback_topic { Expect::Feedback } else { Expect::Alerts };
                let headers: Vec<(&str, &[u8])> = m
                    .headers()
                    .map(|h| h.iter().filter_map(|h| h.value.map(|v| (h.key, v))).collect())
                    .unwrap_or_default();
                let payload = m.payload().unwrap_or_default();
                let span = || {
                    let span = tracing::info_span!(
                        "intake",
                        source = "kafka",
                        topic = m.topic(),
                        partition = m.partition(),
                        offset = m.offset(),
                        otel.kind = "consumer"
                    );
                    crate::telemetry::trace::set_parent_from(&span, headers.iter().copied());
                    span
                };
                // A span per message is for traces (the producer's context continued). Without
                // a collector, a feedback message (recorded with its batch, in the
                // `feedback_batch` span) does without: making one cost a sixth of the consumer's
                // CPU. An alert or a rejection always has one.
                let parsing = if expect == Expect::Alerts || crate::telemetry::trace::exporting() {
                    span()
                } else {
                    tracing::Span::none()
                };
                let message = parsing.in_scope(|| message::parse(expect, &headers, payload));
                let span = match &message {
                    Ok(Message::Feedback(_)) => parsing,
                    _ if parsing.is_none() => span(),
                    _ => parsing,
                };
                Parsed { position, message, span }
            })
            .collect()
    }

    /// Record a parsed batch in order: its events (consecutive feedback events in one durable
    /// write), or its rejections. Err: the audit log could not take them; a retry records what
    /// was missing (what was recorded is recognised, or recorded as a redelivery).
    async fn record_batch(&self, batch: &[BorrowedMessage<'_>], parsed: &[Parsed]) -> Result<(), String> {
        let mut feedback: Vec<(&crate::event::Feedback, &serde_json::Value)> = Vec::new();
        for (m, p) in batch.iter().zip(parsed) {
            if let Ok(Message::Feedback(f)) = &p.message {
                feedback.push((f, &p.position));
                continue;
            }
            self.flush_feedback(&mut feedback).await?;
            match &p.message {
                Ok(Message::Alerts(alerts)) => {
                    let recorded = self.pipeline.alerts(alerts, p.position.clone());
                    tracing::Instrument::instrument(recorded, p.span.clone()).await.map_err(|e| e.to_string())?;
                }
                Err(e) => {
                    let rejected =
                        self.reject(m, p.position["kafka"].clone(), m.payload().unwrap_or_default(), e.to_string());
                    tracing::Instrument::instrument(rejected, p.span.clone()).await?;
                }
                Ok(Message::Feedback(_)) => {}
            }
        }
        self.flush_feedback(&mut feedback).await
    }

    /// Record a parsed batch, retrying every second while the audit log cannot take it; false
    /// if shut down meanwhile (offsets committed: what was stored).
    async fn record_until_done(
        &self,
        batch: &[BorrowedMessage<'_>],
        parsed: &[Parsed],
        shutdown: &CancellationToken,
    ) -> bool {
        // Backpressure: no offset is stored (and nothing more taken) until recorded.
        while let Err(e) = self.record_batch(batch, parsed).await {
            let first = &batch[0];
            warn!(error = %e, topic = first.topic(), partition = first.partition(), offset = first.offset(), messages = batch.len(), "cannot record; waiting");
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = self.consumer.commit_consumer_state(CommitMode::Sync);
                    return false;
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        for m in batch {
            if let Err(e) = self.consumer.store_offset_from_message(m) {
                warn!(error = %e, "store offset");
            }
        }
        true
    }

    /// The next batch: a message, and what else is already waiting (one durable write for
    /// all); None at shutdown.
    async fn next_batch(&self, shutdown: &CancellationToken) -> Option<Vec<BorrowedMessage<'_>>> {
        let first = loop {
            let look = self.leading.as_ref().map(Leading::next_look);
            let m = tokio::select! {
                _ = shutdown.cancelled() => return None,
                m = self.consumer.recv() => m,
                _ = async { tokio::time::sleep_until(look.unwrap_or_else(tokio::time::Instant::now)).await }, if look.is_some() => {
                    self.assign_new_partitions(shutdown).await;
                    continue;
                }
            };
            match m {
                Ok(m) => break m,
                Err(e) => {
                    warn!(error = %e, "kafka");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        // What comes within a moment joins too: the batch before is being recorded meanwhile,
        // and a batch of what happened to be queued at once was often a few messages, each
        // few paying a whole fsync.
        let linger = tokio::time::Instant::now() + LINGER;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            let m = match self.consumer.recv().now_or_never() {
                Some(m) => m,
                None => match tokio::time::timeout_at(linger, self.consumer.recv()).await {
                    Ok(m) => m,
                    Err(_) => break,
                },
            };
            match m {
                Ok(m) => batch.push(m),
                Err(e) => {
                    warn!(error = %e, "kafka");
                    break;
                }
            }
        }
        Some(batch)
    }

    /// A leader: assign the partitions of its topics not assigned yet (all of them at the start
    /// of a term; then any added to a topic). Tried again later while the broker does not answer.
    async fn assign_new_partitions(&self, shutdown: &CancellationToken) {
        let Some(leading) = &self.leading else { return };
        let topics = [self.config.alerts_topic.clone(), self.config.feedback_topic.clone()];
        let client = leading.metadata.clone();
        let found = tokio::task::spawn_blocking(move || -> Result<Vec<(String, i32)>, String> {
            let mut found = Vec::new();
            for topic in &topics {
                let metadata = client.fetch_metadata(Some(topic), METADATA_TIMEOUT).map_err(|e| e.to_string())?;
                for t in metadata.topics() {
                    if let Some(e) = t.error() {
                        return Err(format!("topic {}: {e:?}", t.name()));
                    }
                    found.extend(t.partitions().iter().map(|p| (t.name().to_string(), p.id())));
                }
            }
            Ok(found)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        let retry = match &found {
            Ok(_) => LOOK_FOR_PARTITIONS,
            Err(_) => Duration::from_millis(500),
        };
        *leading.next_look.lock().unwrap_or_else(|p| p.into_inner()) = tokio::time::Instant::now() + retry;
        let found = match found {
            Ok(found) => found,
            Err(e) => {
                if !shutdown.is_cancelled() {
                    warn!(error = %e, "cannot read the topics' partitions; trying again");
                }
                return;
            }
        };
        // Read now, after the term's start has applied the whole log.
        let positions: std::collections::HashMap<(String, i32), i64> =
            self.pipeline.kafka_positions().await.into_iter().map(|p| ((p.topic, p.partition), p.offset)).collect();
        let mut partitions = leading.partitions.lock().unwrap_or_else(|p| p.into_inner());
        let mut list = rdkafka::TopicPartitionList::new();
        for (topic, partition) in found {
            if partitions.contains(&(topic.clone(), partition)) {
                continue;
            }
            let offset = match positions.get(&(topic.clone(), partition)) {
                Some(recorded) => rdkafka::Offset::Offset(recorded + 1),
                None => rdkafka::Offset::Stored,
            };
            if let Err(e) = list.add_partition_offset(&topic, partition, offset) {
                warn!(error = %e, topic, partition, "cannot assign");
                continue;
            }
            partitions.insert((topic, partition));
        }
        if list.count() == 0 {
            return;
        }
        match self.consumer.incremental_assign(&list) {
            Ok(()) => {
                self.assigned.store(partitions.len(), Ordering::Relaxed);
                info!(
                    partitions = list.count(),
                    assigned = partitions.len(),
                    "kafka partitions assigned (leader; from the recorded positions)"
                );
            }
            Err(e) => {
                for e2 in list.elements() {
                    partitions.remove(&(e2.topic().to_string(), e2.partition()));
                }
                warn!(error = %e, "cannot assign the partitions; trying again");
            }
        }
    }

    async fn flush_feedback(
        &self,
        feedback: &mut Vec<(&crate::event::Feedback, &serde_json::Value)>,
    ) -> Result<(), String> {
        if feedback.is_empty() {
            return Ok(());
        }
        self.pipeline.feedback_batch(feedback, SourceKind::Kafka).await.map_err(|e| e.to_string())?;
        feedback.clear();
        Ok(())
    }

    /// Record a message that cannot be parsed, and copy it to the dead-letter topic if set.
    async fn reject(
        &self,
        m: &rdkafka::message::BorrowedMessage<'_>,
        position: serde_json::Value,
        payload: &[u8],
        reason: String,
    ) -> Result<(), String> {
        let rejection = Rejection {
            source: "kafka",
            origin: position.clone(),
            reason: reason.clone(),
            size: payload.len(),
            body: payload,
            body_sha256: sha256_hex(payload),
        };
        self.pipeline.reject(rejection).await.map_err(|e| e.to_string())?;
        if let Some((producer, topic)) = &self.dead_letters {
            let record = FutureRecord::to(topic).payload(payload).key(m.key().unwrap_or_default()).headers(
                rdkafka::message::OwnedHeaders::new()
                    .insert(rdkafka::message::Header { key: "backstop_reason", value: Some(reason.as_bytes()) })
                    .insert(rdkafka::message::Header {
                        key: "backstop_origin",
                        value: Some(position.to_string().as_bytes()),
                    }),
            );
            if let Err((e, _)) = producer.send(record, Duration::from_secs(5)).await {
                warn!(error = %e, "could not copy a rejected message to the dead-letter topic");
            }
        }
        Ok(())
    }
}

/// A leader's own assignment.
struct Leading {
    /// A client of its own for metadata (blocking calls, made off the runtime's threads).
    metadata: Arc<BaseConsumer>,
    /// Assigned so far.
    partitions: std::sync::Mutex<std::collections::HashSet<(String, i32)>>,
    /// When to look for partitions again.
    next_look: std::sync::Mutex<tokio::time::Instant>,
}

impl Leading {
    fn next_look(&self) -> tokio::time::Instant {
        *self.next_look.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How long a metadata request may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a leader looks for partitions added to its topics.
const LOOK_FOR_PARTITIONS: Duration = Duration::from_secs(30);

/// A message as parsed: where it was (`{"kafka": {topic, partition, offset}}`), what it
/// carried, and its span (none for feedback unless traces are exported).
struct Parsed {
    position: serde_json::Value,
    message: Result<Message, message::MessageError>,
    span: tracing::Span,
}

/// Messages taken from librdkafka's queue and recorded together at most.
pub const MAX_BATCH: usize = 2000;
/// How long after a batch's first message others may still join it.
const LINGER: Duration = Duration::from_millis(2);

/// How long a stopping source waits for librdkafka to close the consumer (leave its group).
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Close the consumer on a thread of its own: librdkafka's close blocks until the group is left,
/// which an unresponsive broker can make last (seen with a broker that came back during the
/// run: shutdown hung past its grace). Waited for at most [`CLOSE_WAIT`]; after that the process
/// stops anyway, and the group's session timeout hands the partitions on.
async fn close(source: KafkaSource) {
    let (done, closed) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new().name("kafka-close".into()).spawn(move || {
        drop(source);
        let _ = done.send(());
    });
    if spawned.is_err() {
        warn!("cannot start a thread to close the kafka consumer; not waiting for it");
        return;
    }
    if tokio::time::timeout(CLOSE_WAIT, closed).await.is_err() {
        warn!(wait = ?CLOSE_WAIT, "kafka consumer still closing; not waiting longer");
    }
}

impl Task for KafkaSource {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn run(self: Box<Self>, shutdown: CancellationToken) -> BoxFuture<'static, Result<(), TaskError>> {
        Box::pin(async move {
            info!(brokers = %self.config.brokers, alerts = %self.config.alerts_topic, feedback = %self.config.feedback_topic, "kafka source started");
            // Two batches in flight: the next is received and parsed while this one is being
            // recorded (mostly waiting for its fsync); its offsets are stored only after.
            let next = || async {
                let batch = self.next_batch(&shutdown).await?;
                let parsed = self.parse_batch(&batch);
                Some((batch, parsed))
            };
            let mut current = next().await;
            while let Some((batch, parsed)) = &current {
                let (recorded, following) = tokio::join!(self.record_until_done(batch, parsed, &shutdown), next());
                if !recorded {
                    close(*self).await;
                    return Ok(());
                }
                current = following;
            }
            match self.consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => info!("kafka offsets committed"),
                Err(e) => warn!(error = %e, "kafka commit at shutdown"),
            }
            close(*self).await;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::statistics::{Partition, Statistics, Topic};

    #[test]
    fn the_lag_of_each_assigned_partition_is_reported_and_unknown_ones_are_not() {
        let partition = |lag| Partition { consumer_lag: lag, ..Default::default() };
        let mut statistics = Statistics::default();
        let topic = Topic {
            partitions: [(0, partition(42)), (1, partition(0)), (2, partition(-1)), (-1, partition(7))].into(),
            ..Default::default()
        };
        statistics.topics.insert("backstop.feedback".into(), topic);
        let mut found: Vec<_> = super::lags(&statistics).collect();
        found.sort();
        assert_eq!(found, [("backstop.feedback", 0, 42), ("backstop.feedback", 1, 0)]);
    }
}
