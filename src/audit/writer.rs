//! The single writer: a dedicated thread that takes everything queued, writes it with one
//! `write` and one `fdatasync` (group commit), then answers every caller.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::oneshot;

use super::read::{scan_tail, segment_name, segments};
use super::replica::{Applied, Mode, apply_lines};
use super::retention::apply_retention;
use super::{AuditError, AuditOptions, Entry, GENESIS, Kind, Position, Record};

/// At most this many bytes of records go into one group commit.
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Bytes of a torn record kept in the `recovered` record.
const TORN_PREFIX: usize = 256;

type Reply = oneshot::Sender<Result<Vec<Record>, AuditError>>;

/// What the writer thread is asked to do, in the order asked.
enum Request {
    /// Records this process creates (a single process, or the cluster's leader).
    Append { entries: Vec<Prepared>, reply: Reply },
    /// Lines of the replicated log, written byte for byte (see [`super::replica`]).
    Apply { first_seq: u64, lines: Vec<String>, reply: oneshot::Sender<Result<Applied, AuditError>> },
    /// Lead (replicating every batch before writing it) or follow (creating nothing).
    SetMode { mode: Mode, reply: oneshot::Sender<()> },
    /// A leader's starting point for new replicas (see [`AuditLog::anchor`]).
    Anchor { state: StateAt, reply: oneshot::Sender<Result<Position, AuditError>> },
}

/// The guard state's JSON as of a position, made by the caller (which holds the state still).
pub type StateAt = Box<dyn FnOnce(&Position) -> Vec<u8> + Send>;

/// An entry and its JSON, serialised by the caller (in parallel, on the caller's thread): the
/// writer thread, which every record goes through in order, only adds `seq`, `time` and `prev`
/// in front, hashes the line and writes.
pub(super) struct Prepared {
    entry: Entry,
    /// The entry's JSON object, less its detail when that is already text (`detail_json`).
    json: Vec<u8>,
}

impl Prepared {
    /// The detail's text, which the writer copies (once) to the end of `json`.
    fn text_detail(&self) -> Option<&[u8]> {
        self.entry.detail.is_none().then_some(self.entry.detail_json.as_deref()).flatten()
    }

    fn len(&self) -> usize {
        self.json.len() + self.text_detail().map_or(0, |d| d.len() + 10)
    }
}

pub(super) fn prepare(entry: Entry) -> Result<Prepared, AuditError> {
    let mut json = Vec::with_capacity(256);
    serde_json::to_writer(&mut json, &entry).map_err(AuditError::serialise)?;
    Ok(Prepared { entry, json })
}

fn prepare_all(entries: Vec<Entry>) -> Result<Vec<Prepared>, AuditError> {
    entries.into_iter().map(prepare).collect()
}

pub(super) struct Shared {
    pub(super) dir: PathBuf,
    healthy: AtomicBool,
    fsyncs: AtomicU64,
    /// Bytes appended since the log was opened.
    appended: AtomicU64,
    pub(super) last: Mutex<Position>,
    /// Whether the writer creates records (not a follower's); see [`Mode`].
    creates: AtomicBool,
    #[cfg(test)]
    fail_next: std::sync::atomic::AtomicUsize,
}

/// A handle to the audit log; clones share one writer.
#[derive(Clone)]
pub struct AuditLog {
    tx: Arc<Mutex<Option<mpsc::Sender<Request>>>>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    shared: Arc<Shared>,
}

/// The open tail segment and the chain's position.
pub(super) struct Tail {
    pub(super) file: Option<File>,
    /// The open segment and the seq its name carries.
    pub(super) path: PathBuf,
    pub(super) seg_first: u64,
    pub(super) len: u64,
    pub(super) first_time: Option<DateTime<Utc>>,
    pub(super) next_seq: u64,
    pub(super) last_hash: String,
    /// Segment file name and offset of the last record's line (for snapshots).
    pub(super) last_at: (String, u64),
    /// The open segment's index (see `index`).
    pub(super) index: super::index::IndexWriter,
    _lock: File,
}

impl Tail {
    pub(super) fn position(&self) -> Position {
        Position {
            seq: self.next_seq - 1,
            hash: self.last_hash.clone(),
            segment: self.last_at.0.clone(),
            offset: self.last_at.1,
        }
    }
}

pub(super) fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
}

pub(super) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AuditError {
    let path = path.to_path_buf();
    move |source| AuditError::Io { action, path, source }
}

pub(super) fn hash(line: &[u8]) -> String {
    crate::digest::sha256_hex(line)
}

impl AuditLog {
    /// Open (or create) the log in `dir`, take its lock, recover a torn tail, start the writer.
    pub fn open(dir: &Path, opts: AuditOptions) -> Result<AuditLog, AuditError> {
        AuditLog::open_in(dir, opts, Mode::Single)
    }

    /// Open the log of a cluster replica: it starts as a follower, which creates no record of
    /// its own. A torn last write is cut off without a `recovered` record (the replicated log
    /// holds those lines, and they are applied again), and retention waits for the leader's
    /// `checkpoint`.
    pub fn open_replica(dir: &Path, opts: AuditOptions) -> Result<AuditLog, AuditError> {
        AuditLog::open_in(dir, opts, Mode::Follower)
    }

    fn open_in(dir: &Path, opts: AuditOptions, mode: Mode) -> Result<AuditLog, AuditError> {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(AuditError::Locked(dir.to_path_buf())),
            Err(std::fs::TryLockError::Error(e)) => return Err(io("lock", &lock_path)(e)),
        }
        let (mut tail, torn) = open_tail(dir, lock)?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            healthy: AtomicBool::new(true),
            fsyncs: AtomicU64::new(0),
            appended: AtomicU64::new(0),
            last: Mutex::new(tail.position()),
            creates: AtomicBool::new(mode.creates_records()),
            #[cfg(test)]
            fail_next: Default::default(),
        });
        match (&mode, torn) {
            (Mode::Single, Some(detail)) => {
                let entry = Entry::new(Kind::Recovered)
                    .reason("torn last record cut off at open (crash during a write)")
                    .detail(detail);
                write_batch(&mut tail, &opts, &shared, &mut Mode::Single, vec![prepare(entry)?])?;
            }
            (_, Some(detail)) => {
                tracing::warn!(%detail, "torn last record cut off at open; the replicated log has it");
            }
            (_, None) => {}
        }
        if mode.creates_records() {
            apply_retention(&mut tail, &opts, &shared, &mut Mode::Single)?;
        }
        let (tx, rx) = mpsc::channel::<Request>();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || run(rx, tail, opts, thread_shared, mode))
            .map_err(io("spawn writer for", dir))?;
        Ok(AuditLog { tx: Arc::new(Mutex::new(Some(tx))), thread: Arc::new(Mutex::new(Some(thread))), shared })
    }

    fn submit(&self, entries: Vec<Entry>) -> Result<oneshot::Receiver<Result<Vec<Record>, AuditError>>, AuditError> {
        let entries = prepare_all(entries)?;
        let (reply, rx) = oneshot::channel();
        self.send(Request::Append { entries, reply })?;
        Ok(rx)
    }

    fn send(&self, request: Request) -> Result<(), AuditError> {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        tx.as_ref().ok_or(AuditError::Stopped)?.send(request).map_err(|_| AuditError::Stopped)
    }

    /// Write lines of the replicated log byte for byte, the first with seq `first_seq`: lines
    /// the log already has are skipped, the rest must continue its chain exactly. A `seal` line
    /// starts the next segment after it, a `checkpoint` line deletes the segments it names.
    pub async fn apply(&self, first_seq: u64, lines: Vec<String>) -> Result<Applied, AuditError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Apply { first_seq, lines, reply })?;
        rx.await.map_err(|_| AuditError::Stopped)?
    }

    /// Become the leader: from now on every batch (the writer's own seals, checkpoints and
    /// recovery records too) is first handed to `replicate`, and written and acknowledged only
    /// once it has succeeded. A failure leaves the log a follower (see [`Mode`]).
    pub async fn lead(&self, replicate: std::sync::Arc<dyn super::Replicate>) -> Result<(), AuditError> {
        self.set_mode(Mode::Leader(replicate)).await
    }

    /// Stop creating records: appends are refused, applied lines are still written.
    pub async fn follow(&self) -> Result<(), AuditError> {
        self.set_mode(Mode::Follower).await
    }

    async fn set_mode(&self, mode: Mode) -> Result<(), AuditError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::SetMode { mode, reply })?;
        rx.await.map_err(|_| AuditError::Stopped)
    }

    /// Append contiguously; returns once the records are on disk.
    /// A leader's starting point for replicas that join with an empty disk: seal the open
    /// segment, begin the next with a `checkpoint` record that anchors the chain there (a batch
    /// of its own), and publish it with the guard state as of it (`state`, given the checkpoint's
    /// position) to the replicated log. The caller keeps the state from changing meanwhile.
    /// Refused unless leading.
    pub async fn anchor(&self, state: StateAt) -> Result<Position, AuditError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Anchor { state, reply })?;
        rx.await.map_err(|_| AuditError::Stopped)?
    }

    pub async fn append(&self, entries: Vec<Entry>) -> Result<Vec<Record>, AuditError> {
        self.submit(entries)?.await.map_err(|_| AuditError::Stopped)?
    }

    pub fn append_blocking(&self, entries: Vec<Entry>) -> Result<Vec<Record>, AuditError> {
        self.submit(entries)?.blocking_recv().map_err(|_| AuditError::Stopped)?
    }

    /// Last seq and hash.
    pub fn last(&self) -> (u64, String) {
        let p = self.position();
        (p.seq, p.hash)
    }

    /// Where the last record is: seq, hash, segment and byte offset of its line.
    pub fn position(&self) -> Position {
        self.shared.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Bytes appended (durably) since the log was opened.
    pub fn bytes_appended(&self) -> u64 {
        self.shared.appended.load(Ordering::Relaxed)
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// False for a cluster replica's log while it follows (also after its replication failed).
    pub fn creates_records(&self) -> bool {
        self.shared.creates.load(Ordering::SeqCst)
    }

    /// False after a failed write, until a write succeeds again.
    pub fn healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }

    /// How many fsyncs the writer has done (group commit makes this far less than appends).
    pub fn fsyncs(&self) -> u64 {
        self.shared.fsyncs.load(Ordering::Relaxed)
    }

    /// Make the next `n` writes fail, as a full disk would.
    #[cfg(test)]
    pub fn fail_next_writes(&self, n: usize) {
        self.shared.fail_next.store(n, Ordering::SeqCst);
    }

    /// Flush what is queued, stop the writer and release the lock.
    pub async fn close(self) -> Result<(), AuditError> {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            tokio::task::spawn_blocking(move || t.join()).await.ok();
        }
        Ok(())
    }
}

/// Find the tail of the log by reading the newest segment backwards (a restart does not read the
/// log); cut a torn last write (returned as the detail of a `recovered` record).
fn open_tail(dir: &Path, lock: File) -> Result<(Tail, Option<serde_json::Value>), AuditError> {
    let segs = segments(dir)?;
    let Some((first_seq, path)) = segs.last().cloned() else {
        let tail = Tail {
            file: None,
            path: dir.join(segment_name(1)),
            seg_first: 1,
            len: 0,
            first_time: None,
            next_seq: 1,
            last_hash: GENESIS.into(),
            last_at: (String::new(), 0),
            index: super::index::IndexWriter::fresh(&dir.join(segment_name(1))),
            _lock: lock,
        };
        return Ok((tail, None));
    };
    let scan = scan_tail(&path)?;
    let mut file = OpenOptions::new().read(true).append(true).open(&path).map_err(io("open", &path))?;
    let torn = match &scan.torn {
        Some((offset, bytes)) => {
            file.set_len(scan.complete_len).map_err(io("truncate", &path))?;
            file.sync_all().map_err(io("fsync", &path))?;
            Some(json!({
                "segment": file_name(&path),
                "offset": offset,
                "length": bytes.len(),
                "sha256": hash(bytes),
                "prefix": String::from_utf8_lossy(&bytes[..bytes.len().min(TORN_PREFIX)]),
            }))
        }
        None => None,
    };
    file.seek(SeekFrom::End(0)).map_err(io("seek", &path))?;
    let (next_seq, last_hash, last_at, last_kind) = match &scan.last {
        Some((offset, r, h)) => (r.seq + 1, h.clone(), (file_name(&path), *offset), Some(r.entry.kind)),
        // An empty newest segment: the chain position comes from the one before it.
        None => match segs.len().checked_sub(2).map(|i| &segs[i].1) {
            Some(prev) => match scan_tail(prev)?.last {
                Some((offset, r, h)) => (r.seq + 1, h, (file_name(prev), offset), Some(r.entry.kind)),
                None => {
                    return Err(AuditError::Corrupt {
                        path: prev.clone(),
                        line: 0,
                        message: "empty sealed segment".into(),
                    });
                }
            },
            None => (first_seq, GENESIS.to_string(), (String::new(), 0), None),
        },
    };
    if last_kind == Some(Kind::Seal) || scan.last.is_none() && next_seq != first_seq {
        // Stopped between sealing a segment and writing the next: start that next one.
        drop(file);
        if scan.last.is_none() {
            std::fs::remove_file(&path).map_err(io("remove", &path))?;
            super::index::remove(&path);
        }
        let tail = Tail {
            file: None,
            path: dir.join(segment_name(next_seq)),
            seg_first: next_seq,
            len: 0,
            first_time: None,
            next_seq,
            last_hash,
            last_at,
            index: super::index::IndexWriter::fresh(&dir.join(segment_name(next_seq))),
            _lock: lock,
        };
        return Ok((tail, torn));
    }
    let first_time = super::read::first_record(&path)?.map(|r| r.time);
    let index = super::index::IndexWriter::open(&path, scan.complete_len);
    let tail = Tail {
        file: Some(file),
        path,
        seg_first: first_seq,
        len: scan.complete_len,
        first_time,
        next_seq,
        last_hash,
        last_at,
        index,
        _lock: lock,
    };
    Ok((tail, torn))
}

/// While the log cannot write, a recovery record is tried this often, so the log (and with it
/// `/readyz`) comes back by itself when space returns, even if no input arrives meanwhile.
const RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The control record written when the log can write again after failures.
pub const AUDIT_RECOVERED: &str = "audit-recovered";

/// Writes failing since `since`.
struct Outage {
    since: DateTime<Utc>,
    failed: u64,
    first_error: String,
}

fn run(rx: mpsc::Receiver<Request>, mut tail: Tail, opts: AuditOptions, shared: Arc<Shared>, mut mode: Mode) {
    let mut outage: Option<Outage> = None;
    // A request taken while gathering a batch that is not an append: handled next.
    let mut held: Option<Request> = None;
    loop {
        let first = if let Some(r) = held.take() {
            r
        } else if outage.is_some() {
            match rx.recv_timeout(RETRY_INTERVAL) {
                Ok(r) => r,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    recover(&mut tail, &opts, &shared, &mut mode, &mut outage);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(r) => r,
                Err(_) => break,
            }
        };
        let (entries, reply) = match first {
            Request::Append { entries, reply } => (entries, reply),
            Request::Apply { first_seq, lines, reply } => {
                let result = apply_lines(&mut tail, &opts, &shared, first_seq, &lines);
                if let Err(e) = &result {
                    tracing::error!(error = %e, first_seq, "could not apply replicated audit records");
                }
                let _ = reply.send(result);
                continue;
            }
            Request::Anchor { state, reply } => {
                let _ = reply.send(anchor(&mut tail, &opts, &shared, &mut mode, state));
                continue;
            }
            Request::SetMode { mode: new, reply } => {
                mode = new;
                shared.creates.store(mode.creates_records(), Ordering::SeqCst);
                // An outage's recovery record is the leader's to write, and only a leader's.
                if !mode.creates_records() {
                    outage = None;
                }
                let _ = reply.send(());
                continue;
            }
        };
        if !mode.creates_records() {
            let _ = reply.send(Err(AuditError::NotLeader));
            continue;
        }
        // Writes failed before: the recovery record goes first (if it fails, so will the batch).
        recover(&mut tail, &opts, &shared, &mut mode, &mut outage);
        let bytes = |e: &[Prepared]| e.iter().map(|p| p.len() + 120).sum::<usize>();
        let mut size = bytes(&entries);
        let mut batch = vec![(entries, reply)];
        while size < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(Request::Append { entries, reply }) => {
                    size += bytes(&entries);
                    batch.push((entries, reply));
                }
                Ok(other) => {
                    held = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        let counts: Vec<usize> = batch.iter().map(|(e, _)| e.len()).collect();
        let (entries, replies): (Vec<Vec<Prepared>>, Vec<Reply>) = batch.into_iter().unzip();
        match write_batch(&mut tail, &opts, &shared, &mut mode, entries.into_iter().flatten().collect()) {
            Ok(records) => {
                let mut records = records.into_iter();
                for (reply, n) in replies.into_iter().zip(counts) {
                    let _ = reply.send(Ok(records.by_ref().take(n).collect()));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::error!(error = %msg, "audit write failed; callers get an error and nothing is acknowledged");
                if mode.creates_records() {
                    let o =
                        outage.get_or_insert_with(|| Outage { since: Utc::now(), failed: 0, first_error: msg.clone() });
                    o.failed += replies.len() as u64;
                }
                for reply in replies {
                    let error = match &e {
                        AuditError::Replication(m) => AuditError::Replication(m.clone()),
                        _ => AuditError::Io {
                            action: "append to",
                            path: tail.path.clone(),
                            source: std::io::Error::other(msg.clone()),
                        },
                    };
                    let _ = reply.send(Err(error));
                }
            }
        }
    }
}

/// Try to record that the log can write again (a `control` record `audit-recovered` saying
/// since when and how many writes failed); the outage ends when that record is durable.
fn recover(tail: &mut Tail, opts: &AuditOptions, shared: &Shared, mode: &mut Mode, outage: &mut Option<Outage>) {
    let Some(o) = outage.as_ref() else { return };
    if !mode.creates_records() {
        return;
    }
    let entry = Entry::new(Kind::Control)
        .source("audit")
        .reason(format!(
            "the audit log can write again after {} failed writes since {} (first error: {})",
            o.failed,
            crate::when::shown(&o.since),
            o.first_error
        ))
        .detail(json!({
            "control": AUDIT_RECOVERED,
            "since": o.since,
            "failed_writes": o.failed,
            "first_error": o.first_error,
        }));
    if prepare(entry).and_then(|p| write_batch(tail, opts, shared, mode, vec![p])).is_ok() {
        tracing::info!(failed_writes = o.failed, since = %o.since, "audit log writable again");
        *outage = None;
    }
}

/// Rotate if the segment is full, then write. On failure the file is cut back and the chain
/// does not move.
fn write_batch(
    tail: &mut Tail,
    opts: &AuditOptions,
    shared: &Shared,
    mode: &mut Mode,
    entries: Vec<Prepared>,
) -> Result<Vec<Record>, AuditError> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let now = Utc::now();
    let full = tail.len >= opts.segment_max_bytes
        || tail.first_time.is_some_and(|t| (now - t).to_std().unwrap_or_default() >= opts.segment_max_age);
    if full && tail.len > 0 {
        rotate(tail, opts, shared, mode)?;
        apply_retention(tail, opts, shared, mode)?;
    }
    write_records(tail, opts, shared, mode, entries)
}

/// Serialise, replicate (a leader), write, fsync, and move the chain forward.
pub(super) fn write_records(
    tail: &mut Tail,
    opts: &AuditOptions,
    shared: &Shared,
    mode: &mut Mode,
    entries: Vec<Prepared>,
) -> Result<Vec<Record>, AuditError> {
    write_lines(tail, opts, shared, mode, entries).map(|(records, _)| records)
}

/// [`write_records`], also giving back the lines written (each ending in a newline).
fn write_lines(
    tail: &mut Tail,
    opts: &AuditOptions,
    shared: &Shared,
    mode: &mut Mode,
    entries: Vec<Prepared>,
) -> Result<(Vec<Record>, Vec<u8>), AuditError> {
    let Serialized { records, buf, last_hash, last_line, times } = serialize(tail.next_seq, &tail.last_hash, entries)?;
    if let Mode::Leader(replicate) = mode
        && let Err(reason) = replicate.replicate(tail.next_seq, &tail.last_hash, &buf)
    {
        // Whether the broker kept the batch is not known: only the replicated log can say,
        // and this replica learns it as a follower. Nothing more is created here.
        tracing::warn!(%reason, first_seq = tail.next_seq, "replication failed: the audit log follows from now on");
        *mode = Mode::Follower;
        shared.creates.store(false, Ordering::SeqCst);
        return Err(AuditError::Replication(reason));
    }
    let offset = tail.len;
    let lines = records.iter().zip(&times).map(|(r, (start, time))| {
        (r, offset + *start as u64, std::str::from_utf8(&buf[time.clone()]).unwrap_or_default())
    });
    append_bytes(tail, opts, shared, &buf, Some(super::index::Known::of(lines)))?;
    tail.first_time.get_or_insert(records[0].time);
    tail.next_seq += records.len() as u64;
    tail.last_hash = last_hash;
    tail.last_at = (file_name(&tail.path), offset + last_line as u64);
    *shared.last.lock().unwrap_or_else(|p| p.into_inner()) = tail.position();
    Ok((records, buf))
}

/// A batch made into lines.
struct Serialized {
    records: Vec<Record>,
    /// The lines, each ending in a newline.
    buf: Vec<u8>,
    /// The last record's hash, and where its line starts in `buf`.
    last_hash: String,
    last_line: usize,
    /// Where each record's line starts in `buf` and where its time's text is (for the index).
    times: Vec<(usize, std::ops::Range<usize>)>,
}

/// Each line is `{"seq":…,"time":…,"prev":…,` and then the entry's own fields: what
/// serialising the [`Record`] would give (its entry is flattened), from the entry's JSON.
fn serialize(mut seq: u64, prev: &str, entries: Vec<Prepared>) -> Result<Serialized, AuditError> {
    let mut prev = prev.to_string();
    let mut buf = Vec::with_capacity(entries.iter().map(|p| p.len() + 140).sum());
    let mut last_line = 0;
    let mut records = Vec::with_capacity(entries.len());
    let mut times = Vec::with_capacity(entries.len());
    for prepared in entries {
        let time = Utc::now();
        let start = buf.len();
        let mut time_at = 0..0;
        write!(buf, "{{\"seq\":{seq},\"time\":")
            .and_then(|()| {
                let from = buf.len();
                serde_json::to_writer(&mut buf, &time)?;
                // Inside its quotes.
                time_at = from + 1..buf.len() - 1;
                write!(buf, ",\"prev\":\"{prev}\",")?;
                Ok(())
            })
            .map_err(|e| AuditError::Io { action: "serialise", path: PathBuf::new(), source: e })?;
        times.push((start, time_at));
        // The entry's object without its opening brace (it always has a `kind`); a detail given
        // as text (`detail` is the entry's last field) goes in the place of its closing brace.
        let json = &prepared.json;
        match prepared.text_detail() {
            Some(detail) => {
                buf.extend_from_slice(json.get(1..json.len() - 1).unwrap_or_default());
                buf.extend_from_slice(b",\"detail\":");
                buf.extend_from_slice(detail);
                buf.push(b'}');
            }
            None => buf.extend_from_slice(json.get(1..).unwrap_or_default()),
        }
        let entry = prepared.entry;
        let line_hash = hash(&buf[start..]);
        let record = Record { seq, time, prev: std::mem::replace(&mut prev, line_hash), entry };
        last_line = start;
        buf.push(b'\n');
        records.push(record);
        seq += 1;
    }
    Ok(Serialized { records, buf, last_hash: prev, last_line, times })
}

use crate::telemetry::metrics::Event as MetricEvent;

pub(super) fn append_bytes(
    tail: &mut Tail,
    opts: &AuditOptions,
    shared: &Shared,
    buf: &[u8],
    known: Option<super::index::Known<'_>>,
) -> Result<(), AuditError> {
    let result = (|| -> std::io::Result<()> {
        #[cfg(test)]
        if shared.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(std::io::Error::new(std::io::ErrorKind::StorageFull, "injected: no space left on device"));
        }
        if tail.file.is_none() {
            let f = OpenOptions::new().create(true).append(true).read(true).open(&tail.path)?;
            if let Some(dir) = tail.path.parent() {
                crate::fsutil::sync_dir(dir)?;
            }
            crate::failpoint::crash_point("audit.segment_created");
            tail.file = Some(f);
        }
        let file = tail.file.as_mut().ok_or_else(|| std::io::Error::other("no segment open"))?;
        if crate::failpoint::hit("audit.torn_write") {
            // Half a batch reaches the disk, then the process dies.
            file.write_all(&buf[..buf.len() / 2])?;
            file.sync_data()?;
            std::process::abort();
        }
        let started = std::time::Instant::now();
        file.write_all(buf)?;
        if opts.fsync {
            let fsync = std::time::Instant::now();
            file.sync_data()?;
            MetricEvent::AuditFsynced { took: fsync.elapsed() }.emit();
            shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        MetricEvent::AuditAppended { took: started.elapsed() }.emit();
        shared.appended.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    })();
    match result {
        Ok(()) => {
            tail.index.note(tail.len, buf, known);
            tail.len += buf.len() as u64;
            shared.healthy.store(true, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => {
            shared.healthy.store(false, Ordering::Relaxed);
            // Cut back whatever part of the batch reached the file; reopen on the next write.
            if let Some(f) = tail.file.take() {
                let _ = f.set_len(tail.len);
                let _ = f.sync_all();
            }
            Err(io("append to", &tail.path)(e))
        }
    }
}

/// Seal the current segment and start the next one. The seal is the segment's trailer: its
/// first and last seq, the hash of the last record before it, and its time span.
fn rotate(tail: &mut Tail, opts: &AuditOptions, shared: &Shared, mode: &mut Mode) -> Result<(), AuditError> {
    let seal = Entry::new(Kind::Seal).detail(json!({
        "segment": tail.path.file_name().map(|n| n.to_string_lossy().to_string()),
        "first_seq": tail.seg_first,
        "last_seq": tail.next_seq,
        "last_hash": tail.last_hash,
        "first_time": tail.first_time,
    }));
    write_records(tail, opts, shared, mode, vec![prepare(seal)?])?;
    crate::failpoint::crash_point("audit.sealed");
    start_next_segment(tail, shared);
    Ok(())
}

/// After a `seal`: the next record starts a segment named by its seq.
pub(super) fn start_next_segment(tail: &mut Tail, shared: &Shared) {
    tail.file = None;
    tail.path = shared.dir.join(segment_name(tail.next_seq));
    tail.seg_first = tail.next_seq;
    tail.len = 0;
    tail.first_time = None;
    tail.index = super::index::IndexWriter::fresh(&tail.path);
}

/// [`AuditLog::anchor`] in the writer's thread: nothing else is written between the checkpoint
/// and its snapshot.
fn anchor(
    tail: &mut Tail,
    opts: &AuditOptions,
    shared: &Shared,
    mode: &mut Mode,
    state: StateAt,
) -> Result<Position, AuditError> {
    let Mode::Leader(replicate) = mode.clone() else { return Err(AuditError::NotLeader) };
    if tail.len > 0 {
        rotate(tail, opts, shared, mode)?;
    }
    let checkpoint = Entry::new(Kind::Checkpoint)
        .reason("a starting point for replicas that join with an empty disk (published with the guard state)")
        .detail(json!({
            "deleted": [],
            "anchors": [{ "seq": tail.next_seq, "prev": tail.last_hash }],
            "kept_from_seq": tail.next_seq,
            "snapshot": true,
        }));
    let (_, mut line) = write_lines(tail, opts, shared, mode, vec![prepare(checkpoint)?])?;
    line.pop(); // its newline
    let position = tail.position();
    replicate
        .publish_snapshot(position.seq, &position.hash, &line, state(&position))
        .map_err(AuditError::Replication)?;
    Ok(position)
}
