//! A replica that starts with an empty disk joins from the replicated log's latest snapshot
//! (published by the leader every `cluster.snapshot_every`) instead of replaying the topic from
//! its first message: a first pass reads the topic to its end with [`Bootstrap`] (nothing is
//! written), then the log starts at the snapshot's checkpoint, the guard state from the snapshot,
//! and the reader's place just after it. The usual reader applies what follows.

use std::path::Path;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use super::log::{LogError, Place, READER_FILE, kafka_error, reader, write_place};
use super::replica::{Bootstrap, Message};
use crate::kafka::KafkaConfig;

/// How long the first pass waits for the next message before it gives up.
const QUIET: Duration = Duration::from_secs(30);

/// How a replica began.
#[derive(Debug, Clone, PartialEq)]
pub enum Joined {
    /// It had a log (or a place in the topic) already: it goes on from there.
    Resumed,
    /// An empty topic, or one that still holds its first message and no snapshot: it reads the
    /// topic from the start.
    FromStart,
    /// From the snapshot at `offset`, its log starting at the checkpoint `seq`; `skipped`
    /// messages before it were read but not applied.
    FromSnapshot { offset: i64, seq: u64, skipped: i64 },
}

/// Prepare `dir` for a replica that has no log yet; see the module's documentation.
pub async fn join(kafka: &KafkaConfig, topic: &str, dir: &Path, me: &str) -> Result<Joined, LogError> {
    let has_log = crate::audit::segments(dir).map(|s| !s.is_empty()).unwrap_or(false);
    if has_log || dir.join(READER_FILE).exists() {
        return Ok(Joined::Resumed);
    }
    let consumer = reader(kafka, topic, me)?;
    let (low, high) = tokio::task::block_in_place(|| consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)))
        .map_err(kafka_error(topic))?;
    if high <= low {
        return Ok(Joined::FromStart);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(low)).map_err(kafka_error(topic))?;
    consumer.assign(&tpl).map_err(kafka_error(topic))?;
    let mut bootstrap = Bootstrap::new(low == 0);
    let last = high - 1;
    loop {
        let m = tokio::time::timeout(QUIET, consumer.recv()).await.map_err(|_| LogError::Kafka {
            topic: topic.to_string(),
            message: format!("no message for {}s while reading up to offset {last}", QUIET.as_secs()),
        })?;
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                warn!(topic, error = %e, "replicated log: read failed while joining; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let offset = m.offset();
        let pairs: Vec<(&str, &[u8])> =
            m.headers().map(|h| h.iter().map(|h| (h.key, h.value.unwrap_or_default())).collect()).unwrap_or_default();
        if let Ok(message) = Message::decode(&pairs, m.payload().unwrap_or_default()) {
            bootstrap.read(offset, &message);
        }
        if offset >= last {
            break;
        }
    }
    let Some((offset, Message::Snapshot { seq, line, state, .. }, reader)) = bootstrap.found().cloned() else {
        if low == 0 {
            return Ok(Joined::FromStart);
        }
        return Err(LogError::Kafka {
            topic: topic.to_string(),
            message: format!(
                "its oldest messages were deleted (it starts at offset {low}) and none of those left is a snapshot to \
                 start from: keep more than one `cluster.snapshot_every` in the topic's retention"
            ),
        });
    };
    crate::pipeline::start_from_snapshot(dir, seq, line.as_bytes(), &state)?;
    let place = Place { offset, epoch: reader.epoch, next_seq: reader.next_seq, last_hash: reader.last_hash };
    write_place(dir, &place)?;
    let skipped = offset - low;
    info!(offset, seq, skipped, "joined the replicated log from its latest snapshot");
    Ok(Joined::FromSnapshot { offset, seq, skipped })
}
