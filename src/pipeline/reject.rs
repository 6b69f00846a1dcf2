//! What could not be accepted is still recorded: a rejection's record keeps the first bytes of
//! the body (redacted), and the same body is recorded once per period with its repeats counted.

use super::*;

/// A request that could not be accepted, recorded so nothing sent is lost without trace.
#[derive(Debug, Clone)]
pub struct Rejection<'a> {
    pub source: &'a str,
    /// Where it came from: the HTTP status answered, or the topic, partition and offset.
    pub origin: Value,
    pub reason: String,
    pub size: usize,
    pub body: &'a [u8],
    pub body_sha256: String,
}

/// Bytes of a rejected body kept in its audit record.
pub const REJECTED_PREFIX: usize = 512;

/// The same rejected body is recorded once per this period; repeats in between are counted.
pub(super) const REJECTION_DEDUP: chrono::Duration = chrono::Duration::seconds(600);

impl Pipeline {
    /// Record a rejected request. The same body (by hash) is written once per period; repeats
    /// in between are counted and reported with the next record of that body.
    pub async fn reject(&self, r: Rejection<'_>) -> Result<(), AuditError> {
        MetricEvent::Received { source: r.source, outcome: "rejected", count: 1 }.emit();
        // Claimed before the write, so the same body arriving meanwhile is counted, not recorded
        // again; given back if the write fails (recorded when it comes again).
        let Some(repeats) = self.rejections.say(&r.body_sha256, Utc::now()) else {
            return Ok(());
        };
        // Credential-like values are redacted whatever the source (HTTP bodies, Kafka messages).
        let prefix = crate::redact::redact(&r.body[..r.body.len().min(REJECTED_PREFIX)]);
        let mut detail = json!({
            "size": r.size,
            "sha256": &r.body_sha256,
            "prefix": String::from_utf8_lossy(&prefix),
            "repeats_before": repeats,
        });
        if let (Value::Object(d), Value::Object(origin)) = (&mut detail, r.origin) {
            d.extend(origin);
        }
        let kafka = (r.source == "kafka").then(|| KafkaPosition::read(Some(&detail), true)).flatten();
        let entry = Entry::new(Kind::Rejected).source(r.source).reason(r.reason).detail(detail);
        // Under the state's lock, as a received alert's position (see `alerts`).
        let held = match &kafka {
            Some(_) => Some(self.state.lock().await),
            None => None,
        };
        if let Err(e) = self.audit.append(vec![entry]).await {
            self.rejections.unsay(&r.body_sha256);
            return Err(e);
        }
        if let (Some(mut state), Some(k)) = (held, kafka) {
            state.note_kafka(&k.topic, k.partition, k.offset);
        }
        Ok(())
    }
}
