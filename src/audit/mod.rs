//! The audit log: append-only JSON Lines in segments, every record chained to the previous one
//! by SHA-256, durable (fsync'd) before anyone is acknowledged.
//!
//! Format (see docs/audit.md): a directory of segments `seg-{first_seq:020}.jsonl`. A record is
//! one line: `seq` (from 1, +1 each record), `time`, `prev` (hex SHA-256 of the previous
//! record's exact line bytes; 64 zeros for the first record of the log), then the entry's
//! fields. A full segment is sealed with a `seal` record and the chain continues in the next.

mod index;
mod lookup;
mod read;
mod replica;
mod retention;
mod verify;
mod writer;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use lookup::{query_indexed, received_before};
pub use read::{
    RawRecord, export, first_after, hash_at, query, raw_records_after, records, records_after, records_after_position,
    segments, tail,
};
pub use replica::{Applied, Mode, Replicate, start_at};
pub use verify::{VerifyError, VerifyReport, verify, verify_reader};
pub use writer::{AuditLog, StateAt};

/// `prev` of the very first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Received,
    Rejected,
    Matched,
    Decided,
    Held,
    Applied,
    Noop,
    Refused,
    Failed,
    DryRun,
    Control,
    Recovered,
    Seal,
    Checkpoint,
    /// After an applied action: traffic was seen to move (the rule's `verify:`).
    Verified,
    /// After an applied action: traffic was not seen to move within the deadline.
    Unverified,
    /// A promotion reached its last step (`max`), with the evidence of each stage.
    Promoted,
}

impl Kind {
    pub const ALL: [Kind; 17] = [
        Kind::Received,
        Kind::Rejected,
        Kind::Matched,
        Kind::Decided,
        Kind::Held,
        Kind::Applied,
        Kind::Noop,
        Kind::Refused,
        Kind::Failed,
        Kind::DryRun,
        Kind::Control,
        Kind::Recovered,
        Kind::Seal,
        Kind::Checkpoint,
        Kind::Verified,
        Kind::Unverified,
        Kind::Promoted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Received => "received",
            Kind::Rejected => "rejected",
            Kind::Matched => "matched",
            Kind::Decided => "decided",
            Kind::Held => "held",
            Kind::Applied => "applied",
            Kind::Noop => "noop",
            Kind::Refused => "refused",
            Kind::Failed => "failed",
            Kind::DryRun => "dry_run",
            Kind::Control => "control",
            Kind::Recovered => "recovered",
            Kind::Seal => "seal",
            Kind::Checkpoint => "checkpoint",
            Kind::Verified => "verified",
            Kind::Unverified => "unverified",
            Kind::Promoted => "promoted",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        let s = if s == "dry-run" { "dry_run" } else { s };
        Kind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| format!("unknown record kind `{s}`"))
    }
}

/// What a caller records; the log adds `seq`, `time` and `prev`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// `namespace/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_id: Option<String>,
    /// Idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who, for manual controls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
    /// The detail as JSON text, serialised by the caller straight from its own types (a received
    /// alert: no `Value` tree built, copied and dropped per alert). Written as `detail` when
    /// `detail` is not set; a record read back has it in `detail`.
    #[serde(skip)]
    pub detail_json: Option<Vec<u8>>,
}

macro_rules! setters {
    ($($name:ident),*) => {$(
        pub fn $name(mut self, v: impl Into<String>) -> Self {
            self.$name = Some(v.into());
            self
        }
    )*};
}

impl Entry {
    pub fn new(kind: Kind) -> Entry {
        Entry {
            kind,
            event_id: None,
            source: None,
            rule: None,
            target: None,
            action_id: None,
            key: None,
            reason: None,
            actor: None,
            before: None,
            after: None,
            detail: None,
            detail_json: None,
        }
    }

    setters!(event_id, source, rule, target, action_id, key, reason, actor);

    pub fn before(mut self, v: Value) -> Self {
        self.before = Some(v);
        self
    }
    pub fn after(mut self, v: Value) -> Self {
        self.after = Some(v);
        self
    }
    /// The detail, serialised from `detail` now (see [`Entry::detail_json`]).
    pub fn detail_of(self, detail: &impl Serialize) -> Result<Self, AuditError> {
        // Sized for a typical alert, so the text is not grown (copied) several times over.
        self.detail_of_sized(detail, 1024)
    }

    /// [`Entry::detail_of`], for a detail of about `capacity` bytes (a delivery of many alerts).
    pub fn detail_of_sized(mut self, detail: &impl Serialize, capacity: usize) -> Result<Self, AuditError> {
        let mut text = Vec::with_capacity(capacity);
        // serde_json writes valid UTF-8 only (not checked again: a 50-alert delivery is ~45 kB).
        serde_json::to_writer(&mut text, detail).map_err(AuditError::serialise)?;
        self.detail_json = Some(text);
        Ok(self)
    }

    /// The detail as JSON text already written (by [`crate::event::AlertsRecordRef::to_json`]):
    /// one JSON value, valid UTF-8.
    pub(crate) fn detail_text(mut self, json: Vec<u8>) -> Self {
        self.detail_json = Some(json);
        self
    }

    /// Set the detail; a second object is merged into the first (its keys win).
    pub fn detail(mut self, v: Value) -> Self {
        match (&mut self.detail, v) {
            (Some(Value::Object(old)), Value::Object(new)) => old.extend(new),
            (_, v) => self.detail = Some(v),
        }
        self
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub time: DateTime<Utc>,
    pub prev: String,
    #[serde(flatten)]
    pub entry: Entry,
}

impl Record {
    /// Whether this record is about alert `event_id`: its `event_id`, or one of the alerts a
    /// delivery's `received` record holds.
    pub fn names_alert(&self, event_id: &str) -> bool {
        self.entry.event_id.as_deref() == Some(event_id)
            || (self.entry.kind == Kind::Received
                && crate::event::alert_ids(self.entry.detail.as_ref()).iter().any(|id| id == event_id))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditOptions {
    pub segment_max_bytes: u64,
    pub segment_max_age: Duration,
    /// fdatasync before acknowledging; only benchmarks of the ceiling turn it off.
    pub fsync: bool,
    pub retention: Retention,
}

/// Which sealed segments to keep. The default keeps everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Retention {
    /// Delete segments whose newest record is older than this.
    pub max_age: Option<Duration>,
    /// Delete the oldest segments while the log is larger than this.
    pub max_bytes: Option<u64>,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            segment_max_bytes: 64 << 20,
            segment_max_age: Duration::from_secs(24 * 3600),
            fsync: true,
            retention: Retention::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("audit log {0} is in use by another backstop process")]
    Locked(PathBuf),
    #[error("{path}:{line}: unreadable record: {message}")]
    Corrupt { path: PathBuf, line: usize, message: String },
    #[error("the audit writer has stopped")]
    Stopped,
    /// A cluster replica that is not the leader creates no records.
    #[error("this replica is not the leader: it records nothing of its own")]
    NotLeader,
    /// The leader's batch did not reach the replicated log (or its lease ran out meanwhile).
    #[error("audit replication: {0}")]
    Replication(String),
}

impl AuditError {
    /// An entry that cannot be serialised to JSON (before anything is written).
    pub fn serialise(e: serde_json::Error) -> AuditError {
        AuditError::Io { action: "serialise", path: PathBuf::new(), source: e.into() }
    }
}

/// Where a record is: its seq and hash, and the segment file and byte offset of its line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub seq: u64,
    pub hash: String,
    pub segment: String,
    pub offset: u64,
}

/// Which records a query wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub rule: Option<String>,
    pub target: Option<String>,
    pub event_id: Option<String>,
    pub action_id: Option<String>,
    /// Empty: any kind.
    pub kinds: Vec<Kind>,
    pub after_seq: Option<u64>,
    /// Keep only the most recent `limit` matches.
    pub limit: Option<usize>,
}

impl Filter {
    pub fn matches(&self, r: &Record) -> bool {
        let e = &r.entry;
        // A delivery's `received` record carries its alerts' ids in its detail (format 2).
        let delivered = e.event_id.is_none() && self.event_id.as_deref().is_some_and(|want| r.names_alert(want));
        let event_id = if delivered { &self.event_id } else { &e.event_id };
        self.matches_parts(r.seq, r.time, e.kind, &e.rule, &e.target, event_id, &e.action_id)
    }

    /// [`Filter::matches`] on the fields it reads (a segment index has them without the record).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn matches_parts(
        &self,
        seq: u64,
        time: DateTime<Utc>,
        kind: Kind,
        rule: &Option<String>,
        target: &Option<String>,
        event_id: &Option<String>,
        action_id: &Option<String>,
    ) -> bool {
        let eq = |want: &Option<String>, have: &Option<String>| want.is_none() || want == have;
        self.since.is_none_or(|t| time >= t)
            && self.until.is_none_or(|t| time <= t)
            && self.after_seq.is_none_or(|s| seq > s)
            && (self.kinds.is_empty() || self.kinds.contains(&kind))
            && eq(&self.rule, rule)
            && eq(&self.target, target)
            && eq(&self.event_id, event_id)
            && eq(&self.action_id, action_id)
    }
}

#[cfg(test)]
mod tests;
