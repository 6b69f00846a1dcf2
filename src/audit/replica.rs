//! The audit log of a cluster replica (`docs/cluster.md`). Replicas must keep one chain, so only
//! the leader creates records: its writer hands every batch to a [`Replicate`] (the replicated
//! log topic) before writing it, its own `seal`, `checkpoint` and `audit-recovered` records
//! included. Every replica, the leader too, writes what the replicated log holds byte for byte
//! ([`apply_lines`]): a `seal` line starts the next segment, a `checkpoint` line deletes the
//! segments it names, so each replica's segments are the same files.

use std::sync::Arc;

use serde::Deserialize;

use super::writer::{Shared, Tail, append_bytes, file_name, hash, io, start_next_segment};
use super::{AuditError, AuditOptions, Kind};

/// Where a leader's batches go before they are written: `bytes` are the batch's lines, each
/// ending in a newline, the first with seq `first_seq` and `prev` (the hash of the line before
/// it, [`super::GENESIS`] for the log's first). `Ok` only once the batch is committed there
/// **and** this replica may still acknowledge it; `Err` says why not.
pub trait Replicate: Send + Sync {
    fn replicate(&self, first_seq: u64, prev: &str, bytes: &[u8]) -> Result<(), String>;

    /// Publish where a new replica may start: the `checkpoint` record `seq` (its `line`, hashing
    /// to `hash`) that begins a segment, just replicated as a batch of its own, and the guard
    /// state as of it (`state`). Called right after that batch, before any other.
    fn publish_snapshot(&self, seq: u64, hash: &str, line: &[u8], state: Vec<u8>) -> Result<(), String>;
}

/// Who creates the records of this log.
#[derive(Clone, Default)]
pub enum Mode {
    /// One process, as always: the writer creates everything itself.
    #[default]
    Single,
    /// The cluster's leader: every batch is replicated first.
    Leader(Arc<dyn Replicate>),
    /// A follower (or a leader whose replication failed): appends are refused.
    Follower,
}

impl Mode {
    pub fn creates_records(&self) -> bool {
        !matches!(self, Mode::Follower)
    }
}

/// What applying replicated lines did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// Lines written to the local segments.
    pub written: u64,
    /// Lines the log already had (a leader's own batches, or lines read again after a restart).
    pub skipped: u64,
    /// The seq the next record will have.
    pub next_seq: u64,
}

/// The parts of a line the replica needs to place it (its detail is not read).
#[derive(Deserialize)]
struct Head {
    seq: u64,
    prev: String,
    kind: Kind,
    time: chrono::DateTime<chrono::Utc>,
}

/// What a `checkpoint` line says was deleted, read from checkpoints only.
#[derive(Deserialize)]
struct Checkpoint {
    detail: CheckpointDetail,
}

#[derive(Deserialize)]
struct CheckpointDetail {
    #[serde(default)]
    deleted: Vec<Option<String>>,
}

fn corrupt(tail: &Tail, seq: u64, message: String) -> AuditError {
    AuditError::Corrupt { path: tail.path.clone(), line: 0, message: format!("replicated record {seq}: {message}") }
}

/// Write `lines` (the first with seq `first_seq`) where they continue the local chain; skip what
/// is already there. A line that does not continue the chain is refused and nothing after it is
/// written.
pub(super) fn apply_lines(
    tail: &mut Tail,
    opts: &AuditOptions,
    shared: &Shared,
    first_seq: u64,
    lines: &[String],
) -> Result<Applied, AuditError> {
    let mut applied = Applied { next_seq: tail.next_seq, ..Applied::default() };
    let have = tail.next_seq.saturating_sub(first_seq).min(lines.len() as u64);
    applied.skipped = have;
    if first_seq > tail.next_seq {
        return Err(corrupt(tail, first_seq, format!("the log ends before it (next seq {})", tail.next_seq)));
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut last_line = 0usize;
    let flush = |tail: &mut Tail, buf: &mut Vec<u8>, last_line: usize, last_hash: &str| {
        if buf.is_empty() {
            return Ok(());
        }
        let offset = tail.len;
        // Lines this writer did not make: the index reads them.
        append_bytes(tail, opts, shared, buf, None)?;
        tail.last_hash = last_hash.to_string();
        tail.last_at = (file_name(&tail.path), offset + last_line as u64);
        *shared.last.lock().unwrap_or_else(|p| p.into_inner()) = tail.position();
        buf.clear();
        Ok::<_, AuditError>(())
    };
    let mut chain_hash = tail.last_hash.clone();
    for line in &lines[have as usize..] {
        let head: Head =
            serde_json::from_str(line).map_err(|e| corrupt(tail, tail.next_seq, format!("unreadable: {e}")))?;
        if head.seq != tail.next_seq || head.prev != chain_hash {
            flush(tail, &mut buf, last_line, &chain_hash)?;
            return Err(corrupt(
                tail,
                head.seq,
                format!("does not continue the chain (expected seq {} after {})", tail.next_seq, chain_hash),
            ));
        }
        last_line = buf.len();
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        chain_hash = hash(line.as_bytes());
        tail.next_seq += 1;
        tail.first_time.get_or_insert(head.time);
        applied.written += 1;
        match head.kind {
            Kind::Seal => {
                flush(tail, &mut buf, last_line, &chain_hash)?;
                start_next_segment(tail, shared);
            }
            Kind::Checkpoint => {
                flush(tail, &mut buf, last_line, &chain_hash)?;
                let names = serde_json::from_str::<Checkpoint>(line)
                    .map_err(|e| corrupt(tail, head.seq, format!("unreadable checkpoint: {e}")))?
                    .detail
                    .deleted;
                delete_segments(tail, shared, names.into_iter().flatten())?;
            }
            _ => {}
        }
    }
    flush(tail, &mut buf, last_line, &chain_hash)?;
    applied.next_seq = tail.next_seq;
    Ok(applied)
}

/// The segments a leader's `checkpoint` removed, removed here too (never the open one; a name
/// that is not a segment of this log is ignored).
fn delete_segments(tail: &Tail, shared: &Shared, names: impl Iterator<Item = String>) -> Result<(), AuditError> {
    let open = file_name(&tail.path);
    let segs = super::read::segments(&shared.dir)?;
    for name in names {
        if name == open {
            continue;
        }
        if let Some((_, path)) = segs.iter().find(|(first, p)| file_name(p) == name && *first < tail.seg_first) {
            std::fs::remove_file(path).map_err(io("remove", path))?;
            super::index::remove(path);
        }
    }
    crate::fsutil::sync_dir(&shared.dir).map_err(io("sync", &shared.dir))
}

/// A replica that joins with an empty disk starts its log at a leader's anchoring `checkpoint`
/// (see `AuditLog::anchor`): its first segment holds that one line, byte for byte, named as the
/// leader's segment that begins with it. `audit verify` starts there, anchored by the checkpoint
/// itself. The position of that record.
pub fn start_at(dir: &std::path::Path, seq: u64, line: &[u8]) -> Result<super::Position, AuditError> {
    use std::io::Write;
    std::fs::create_dir_all(dir).map_err(super::writer::io("create", dir))?;
    if !super::read::segments(dir)?.is_empty() {
        return Err(AuditError::Corrupt {
            path: dir.to_path_buf(),
            line: 0,
            message: format!("a replica starts from a snapshot (at seq {seq}) only with an empty log"),
        });
    }
    let path = dir.join(super::read::segment_name(seq));
    let mut f = std::fs::File::create(&path).map_err(super::writer::io("create", &path))?;
    f.write_all(line).and_then(|()| f.write_all(b"\n")).map_err(super::writer::io("write", &path))?;
    f.sync_all().map_err(super::writer::io("sync", &path))?;
    crate::fsutil::sync_dir(dir).map_err(super::writer::io("sync", dir))?;
    Ok(super::Position { seq, hash: super::writer::hash(line), segment: super::writer::file_name(&path), offset: 0 })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Mutex;

    use super::super::{AuditLog, Entry, GENESIS, Retention, segments, verify};
    use super::*;

    /// A snapshot published: the checkpoint's seq, hash and line, the state.
    type Published = (u64, String, Vec<u8>, Vec<u8>);

    /// The replicated log as a list: what the leader handed over, in order.
    #[derive(Default)]
    struct Topic {
        batches: Mutex<Vec<(u64, String, Vec<u8>)>>,
        snapshots: Mutex<Vec<Published>>,
        fail: std::sync::atomic::AtomicBool,
    }

    impl Replicate for Topic {
        fn replicate(&self, first_seq: u64, prev: &str, bytes: &[u8]) -> Result<(), String> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err("broker unreachable".into());
            }
            self.batches.lock().unwrap().push((first_seq, prev.to_string(), bytes.to_vec()));
            Ok(())
        }

        fn publish_snapshot(&self, seq: u64, hash: &str, line: &[u8], state: Vec<u8>) -> Result<(), String> {
            self.snapshots.lock().unwrap().push((seq, hash.to_string(), line.to_vec(), state));
            Ok(())
        }
    }

    fn lines(bytes: &[u8]) -> Vec<String> {
        std::str::from_utf8(bytes).unwrap().lines().map(str::to_string).collect()
    }

    fn entries(from: usize, n: usize) -> Vec<Entry> {
        (from..from + n).map(|i| Entry::new(Kind::Received).event_id(format!("e{i}")).rule("r")).collect()
    }

    /// Every segment file's name and bytes.
    fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        segments(dir).unwrap().into_iter().map(|(_, p)| (file_name(&p), std::fs::read(&p).unwrap())).collect()
    }

    fn opts() -> AuditOptions {
        AuditOptions {
            segment_max_bytes: 700,
            retention: Retention { max_age: None, max_bytes: Some(2500) },
            ..AuditOptions::default()
        }
    }

    #[tokio::test]
    async fn a_follower_applying_the_leaders_batches_has_the_same_segments_byte_for_byte() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let topic = Arc::new(Topic::default());
        let leader = AuditLog::open_replica(a.path(), opts()).unwrap();
        leader.lead(topic.clone()).await.unwrap();
        for i in 0..30 {
            leader.append(entries(i * 2, 2)).await.unwrap();
        }
        let follower = AuditLog::open_replica(b.path(), opts()).unwrap();
        let batches = topic.batches.lock().unwrap().clone();
        let kinds: Vec<String> = batches.iter().flat_map(|(_, _, b)| lines(b)).collect();
        assert!(kinds.iter().any(|l| l.contains("\"kind\":\"seal\"")), "the leader's seals travel in its batches");
        assert!(kinds.iter().any(|l| l.contains("\"kind\":\"checkpoint\"")), "and its checkpoints");
        let mut prev = GENESIS.to_string();
        for (first_seq, batch_prev, bytes) in &batches {
            assert_eq!(batch_prev, &prev, "each batch names the hash it continues");
            let applied = follower.apply(*first_seq, lines(bytes)).await.unwrap();
            assert_eq!(applied.skipped, 0);
            prev = follower.last().1;
        }
        assert_eq!(files(a.path()), files(b.path()), "same segments, same bytes, the deleted ones gone on both");
        assert!(segments(b.path()).unwrap()[0].0 > 1, "retention removed the oldest segments on the follower too");
        assert_eq!(verify(b.path()).unwrap().last_seq, verify(a.path()).unwrap().last_seq);
        // The leader applying its own batches (it reads the topic like everyone) changes nothing.
        for (first_seq, _, bytes) in &batches {
            let applied = leader.apply(*first_seq, lines(bytes)).await.unwrap();
            assert_eq!(applied.written, 0);
        }
        assert_eq!(files(a.path()), files(b.path()));
    }

    #[tokio::test]
    async fn a_follower_creates_nothing_and_refuses_lines_that_do_not_continue_its_chain() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let topic = Arc::new(Topic::default());
        let leader = AuditLog::open_replica(a.path(), AuditOptions::default()).unwrap();
        assert!(matches!(leader.append(entries(0, 1)).await, Err(AuditError::NotLeader)), "not leading yet");
        leader.lead(topic.clone()).await.unwrap();
        leader.append(entries(0, 3)).await.unwrap();
        leader.append(entries(3, 2)).await.unwrap();
        let batches = topic.batches.lock().unwrap().clone();
        let follower = AuditLog::open_replica(b.path(), AuditOptions::default()).unwrap();
        assert!(matches!(follower.append(entries(9, 1)).await, Err(AuditError::NotLeader)));
        // The second batch before the first: a gap, nothing written.
        let err = follower.apply(batches[1].0, lines(&batches[1].2)).await.unwrap_err();
        assert!(err.to_string().contains("the log ends before it"), "{err}");
        assert_eq!(follower.last().0, 0);
        follower.apply(batches[0].0, lines(&batches[0].2)).await.unwrap();
        // Read again after a restart: skipped, then the rest written.
        let mut both = lines(&batches[0].2);
        both.extend(lines(&batches[1].2));
        let applied = follower.apply(1, both).await.unwrap();
        assert_eq!((applied.written, applied.skipped, applied.next_seq), (2, 3, 6));
        // A line whose `prev` is not the hash of the line before it is refused.
        let mut forged = lines(&batches[0].2)[0].replacen("\"seq\":1", "\"seq\":6", 1);
        forged = forged.replacen(GENESIS, &"1".repeat(64), 1);
        let err = follower.apply(6, vec![forged]).await.unwrap_err();
        assert!(err.to_string().contains("does not continue the chain"), "{err}");
        assert_eq!(files(a.path()), files(b.path()));
    }

    #[tokio::test]
    async fn a_leader_whose_batch_is_not_replicated_writes_nothing_and_stops_creating_records() {
        let dir = tempfile::tempdir().unwrap();
        let topic = Arc::new(Topic::default());
        let log = AuditLog::open_replica(dir.path(), AuditOptions::default()).unwrap();
        log.lead(topic.clone()).await.unwrap();
        log.append(entries(0, 2)).await.unwrap();
        topic.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let err = log.append(entries(2, 1)).await.unwrap_err();
        assert!(matches!(&err, AuditError::Replication(m) if m == "broker unreachable"), "{err}");
        assert_eq!(log.last().0, 2, "the failed batch is not in the local log");
        // Whether the broker kept it is unknown: the replica follows until it leads again.
        topic.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(log.append(entries(3, 1)).await, Err(AuditError::NotLeader)));
        log.lead(topic.clone()).await.unwrap();
        assert_eq!(log.append(entries(3, 1)).await.unwrap()[0].seq, 3);
        assert_eq!(topic.batches.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_replica_cuts_a_torn_tail_without_recording_anything_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), AuditOptions::default()).unwrap();
        log.append(entries(0, 2)).await.unwrap();
        log.close().await.unwrap();
        let (_, path) = segments(dir.path()).unwrap().pop().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let whole = bytes.clone();
        bytes.extend_from_slice(b"{\"seq\":3,\"ti");
        std::fs::write(&path, &bytes).unwrap();
        let replica = AuditLog::open_replica(dir.path(), AuditOptions::default()).unwrap();
        assert_eq!(replica.last().0, 2);
        assert_eq!(std::fs::read(&path).unwrap(), whole, "cut back; no `recovered` record");
    }

    #[tokio::test]
    async fn an_anchor_seals_the_segment_writes_its_checkpoint_alone_and_publishes_it_with_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let topic = Arc::new(Topic::default());
        let leader = AuditLog::open_replica(dir.path(), AuditOptions::default()).unwrap();
        let state = || -> super::super::StateAt {
            Box::new(|at: &super::super::Position| format!("state at {}", at.seq).into_bytes())
        };
        assert!(matches!(leader.anchor(state()).await, Err(AuditError::NotLeader)), "a follower publishes nothing");
        leader.lead(topic.clone()).await.unwrap();
        leader.append(entries(0, 3)).await.unwrap();
        let at = leader.anchor(state()).await.unwrap();
        leader.append(entries(3, 2)).await.unwrap();

        let batches = topic.batches.lock().unwrap().clone();
        let kinds: Vec<Vec<String>> = batches.iter().map(|(_, _, b)| lines(b)).collect();
        assert!(kinds[1][0].contains(r#""kind":"seal""#), "the open segment sealed: {kinds:?}");
        assert_eq!(kinds[2].len(), 1, "the checkpoint is a batch of its own");
        assert!(kinds[2][0].contains(r#""kind":"checkpoint""#));
        let published = topic.snapshots.lock().unwrap().clone();
        assert_eq!(
            published,
            vec![(at.seq, at.hash.clone(), kinds[2][0].clone().into_bytes(), b"state at 5".to_vec())]
        );
        assert_eq!(at.seq, 5);
        assert_eq!(at.offset, 0, "the first line of its segment");
        // A copy of the log from that segment on verifies, anchored by the checkpoint.
        let copy = tempfile::tempdir().unwrap();
        for (first, path) in segments(dir.path()).unwrap() {
            if first >= at.seq {
                std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
            }
        }
        let report = verify(copy.path()).unwrap();
        assert_eq!((report.anchored_by, report.last_seq), (Some(5), 7));
    }
}
