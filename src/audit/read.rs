//! Readers work on the directory without the lock, while the writer appends: a trailing line
//! without its newline is a write in progress and is not read.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::{AuditError, Filter, Position, Record};

pub(super) fn segment_name(first_seq: u64) -> String {
    format!("seg-{first_seq:020}.jsonl")
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AuditError {
    let path = path.to_path_buf();
    move |source| AuditError::Io { action, path, source }
}

/// Segments in order, with the sequence number of their first record (from the file name).
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let mut segs = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(segs),
        Err(e) => return Err(io("read directory", dir)(e)),
    };
    for entry in entries {
        let path = entry.map_err(io("read directory", dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if let Some(seq) =
            name.strip_prefix("seg-").and_then(|n| n.strip_suffix(".jsonl")).and_then(|n| n.parse::<u64>().ok())
        {
            segs.push((seq, path));
        }
    }
    segs.sort();
    Ok(segs)
}

/// Complete lines of a segment, with their 1-based line numbers.
pub(super) struct Lines {
    path: PathBuf,
    reader: BufReader<File>,
    line: usize,
    buf: Vec<u8>,
}

impl Lines {
    pub(super) fn open(path: &Path) -> Result<Lines, AuditError> {
        let f = File::open(path).map_err(io("open", path))?;
        Ok(Lines { path: path.to_path_buf(), reader: BufReader::with_capacity(256 << 10, f), line: 0, buf: Vec::new() })
    }

    /// Start reading at byte `offset` (the start of a line).
    pub(super) fn open_at(path: &Path, offset: u64) -> Result<Lines, AuditError> {
        use std::io::{Seek, SeekFrom};
        let mut f = File::open(path).map_err(io("open", path))?;
        f.seek(SeekFrom::Start(offset)).map_err(io("seek", path))?;
        Ok(Lines { path: path.to_path_buf(), reader: BufReader::with_capacity(256 << 10, f), line: 0, buf: Vec::new() })
    }

    /// The next complete line (without its newline); None at the end or at a partial last line.
    pub(super) fn next_line(&mut self) -> Result<Option<(usize, &[u8])>, AuditError> {
        self.buf.clear();
        let n = self.reader.read_until(b'\n', &mut self.buf).map_err(io("read", &self.path))?;
        if n == 0 || !self.buf.ends_with(b"\n") {
            return Ok(None);
        }
        self.line += 1;
        Ok(Some((self.line, &self.buf[..n - 1])))
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

pub(super) fn parse(path: &Path, line: usize, bytes: &[u8]) -> Result<Record, AuditError> {
    serde_json::from_slice(bytes).map_err(|e| AuditError::Corrupt {
        path: path.to_path_buf(),
        line,
        message: e.to_string(),
    })
}

fn read_segment(path: &Path, mut keep: impl FnMut(Record) -> bool) -> Result<(), AuditError> {
    let mut lines = Lines::open(path)?;
    while let Some((n, bytes)) = lines.next_line()? {
        let record = parse(path, n, bytes)?;
        if !keep(record) {
            break;
        }
    }
    Ok(())
}

/// Every record of the log, streaming, in order.
pub fn records(dir: &Path) -> Result<impl Iterator<Item = Result<Record, AuditError>>, AuditError> {
    records_after(dir, 0)
}

/// The records with `seq > after`, streaming, in order; segments wholly before are not opened.
pub fn records_after(dir: &Path, after: u64) -> Result<impl Iterator<Item = Result<Record, AuditError>>, AuditError> {
    let mut segs = segments(dir)?;
    // Keep the segment holding `after + 1` and those following it.
    let keep_from = segs.iter().rposition(|(first, _)| *first <= after + 1).unwrap_or(0);
    segs.drain(..keep_from);
    Ok(stream(segs.into_iter().map(|(_, p)| (p, 0)).collect(), after))
}

/// The records after the one at `pos`, reading from its byte offset: a restart replays only the
/// tail of the log, however long the log is. `None` if `pos` does not match the log (the record
/// there is not `pos.seq`, or does not hash to `pos.hash`).
pub fn records_after_position(
    dir: &Path,
    pos: &Position,
) -> Result<Option<impl Iterator<Item = Result<Record, AuditError>> + use<>>, AuditError> {
    let segs = segments(dir)?;
    let Some(i) = segs.iter().position(|(_, p)| p.file_name().is_some_and(|n| n.to_string_lossy() == pos.segment))
    else {
        return Ok(None);
    };
    let mut lines = Lines::open_at(&segs[i].1, pos.offset)?;
    let line_len = match lines.next_line()? {
        Some((_, bytes))
            if hash_hex(bytes) == pos.hash && parse(&segs[i].1, 0, bytes).is_ok_and(|r| r.seq == pos.seq) =>
        {
            bytes.len() as u64
        }
        _ => return Ok(None),
    };
    let mut queue: Vec<(PathBuf, u64)> = Vec::new();
    let after_line = pos.offset + line_len + 1;
    queue.push((segs[i].1.clone(), after_line));
    queue.extend(segs[i + 1..].iter().map(|(_, p)| (p.clone(), 0)));
    Ok(Some(stream(queue, pos.seq)))
}

/// A record as its line in the log: the exact bytes (without the newline), the record parsed
/// from them, and where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRecord {
    pub position: Position,
    pub line: Vec<u8>,
    pub record: Record,
}

/// At most `max` whole records after the one at `after` (from the first record still in the log
/// when `after` is `None`), with their line bytes and positions, stopping after `upto` (the
/// writer's durable end). `Ok(None)` if `after` does not match the log (its segment is gone, or
/// the record there is not `after.seq` or does not hash to `after.hash`).
pub fn raw_records_after(
    dir: &Path,
    after: Option<&Position>,
    upto: u64,
    max: usize,
) -> Result<Option<Vec<RawRecord>>, AuditError> {
    let segs = segments(dir)?;
    let (first, mut offset) = match after {
        None => (0, 0),
        Some(pos) => {
            let Some(i) =
                segs.iter().position(|(_, p)| p.file_name().is_some_and(|n| n.to_string_lossy() == pos.segment))
            else {
                return Ok(None);
            };
            let mut lines = Lines::open_at(&segs[i].1, pos.offset)?;
            match lines.next_line()? {
                Some((_, bytes))
                    if hash_hex(bytes) == pos.hash && parse(&segs[i].1, 0, bytes).is_ok_and(|r| r.seq == pos.seq) =>
                {
                    (i, pos.offset + bytes.len() as u64 + 1)
                }
                _ => return Ok(None),
            }
        }
    };
    let mut out = Vec::new();
    for (_, path) in segs.iter().skip(first) {
        let segment = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let mut lines = Lines::open_at(path, offset)?;
        while out.len() < max {
            let Some((n, bytes)) = lines.next_line()? else { break };
            let record = parse(path, n, bytes)?;
            if record.seq > upto {
                return Ok(Some(out));
            }
            let position = Position { seq: record.seq, hash: hash_hex(bytes), segment: segment.clone(), offset };
            offset += bytes.len() as u64 + 1;
            out.push(RawRecord { position, line: bytes.to_vec(), record });
        }
        if out.len() >= max {
            break;
        }
        offset = 0;
    }
    Ok(Some(out))
}

fn hash_hex(bytes: &[u8]) -> String {
    crate::digest::sha256_hex(bytes)
}

/// Records of the given (segment, start offset) list, skipping those with `seq <= after`.
fn stream(segs: Vec<(PathBuf, u64)>, after: u64) -> impl Iterator<Item = Result<Record, AuditError>> {
    let mut current: Option<Lines> = None;
    let mut rest = segs.into_iter();
    std::iter::from_fn(move || {
        loop {
            if current.is_none() {
                let (path, offset) = rest.next()?;
                match Lines::open_at(&path, offset) {
                    Ok(l) => current = Some(l),
                    Err(e) => return Some(Err(e)),
                }
            }
            let lines = current.as_mut()?;
            let next = lines.next_line().map(|o| o.map(|(n, b)| (n, b.to_vec())));
            match next {
                Ok(Some((n, bytes))) => match parse(lines.path(), n, &bytes) {
                    Ok(r) if r.seq <= after => continue,
                    other => return Some(other),
                },
                Ok(None) => current = None,
                Err(e) => {
                    current = None;
                    return Some(Err(e));
                }
            }
        }
    })
}

/// What the end of a segment holds, read backwards (the cost does not grow with its size).
pub(super) struct TailScan {
    /// Bytes up to and including the newline of the last whole record.
    pub complete_len: u64,
    /// The last whole record: its line's offset, the record, its hash.
    pub last: Option<(u64, Record, String)>,
    /// What follows it and is not a whole record (a write cut short by a crash): offset, bytes.
    pub torn: Option<(u64, Vec<u8>)>,
}

pub(super) fn scan_tail(path: &Path) -> Result<TailScan, AuditError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path).map_err(io("open", path))?;
    let len = f.metadata().map_err(io("stat", path))?.len();
    let mut window: u64 = 64 << 10;
    loop {
        let start = len.saturating_sub(window);
        f.seek(SeekFrom::Start(start)).map_err(io("seek", path))?;
        let mut data = Vec::with_capacity((len - start) as usize);
        (&mut f).take(len - start).read_to_end(&mut data).map_err(io("read", path))?;
        let whole_window = start == 0;
        // The end of the whole lines, and the start of the last whole line.
        let Some(e) = data.iter().rposition(|b| *b == b'\n') else {
            if whole_window {
                let torn = (!data.is_empty()).then_some((0, data));
                return Ok(TailScan { complete_len: 0, last: None, torn });
            }
            window *= 4;
            continue;
        };
        let ls = match data[..e].iter().rposition(|b| *b == b'\n') {
            Some(p) => p + 1,
            None if whole_window => 0,
            None => {
                window *= 4;
                continue;
            }
        };
        let line = &data[ls..e];
        let rest = &data[e + 1..];
        let torn_rest = (!rest.is_empty()).then(|| (start + e as u64 + 1, rest.to_vec()));
        return match serde_json::from_slice::<Record>(line) {
            Ok(r) => Ok(TailScan {
                complete_len: start + e as u64 + 1,
                last: Some((start + ls as u64, r, hash_hex(line))),
                torn: torn_rest,
            }),
            // A whole line that is not a record, at the very end: the tail of a write cut short
            // (zero-filled blocks after a crash). It is cut too, but only this once: garbage
            // before a valid last line is corruption, reported by verify, never cut.
            Err(_) if ls > 0 || !whole_window => {
                let cut_from = start + ls as u64;
                let before = scan_prefix(path, cut_from)?;
                Ok(TailScan { complete_len: cut_from, last: before, torn: Some((cut_from, data[ls..].to_vec())) })
            }
            Err(_) => Ok(TailScan { complete_len: 0, last: None, torn: Some((0, data)) }),
        };
    }
}

/// The last whole record before byte `end`, which must be valid (no second cut).
fn scan_prefix(path: &Path, end: u64) -> Result<Option<(u64, Record, String)>, AuditError> {
    use std::io::{Read, Seek, SeekFrom};
    if end == 0 {
        return Ok(None);
    }
    let mut f = File::open(path).map_err(io("open", path))?;
    let mut window: u64 = 64 << 10;
    loop {
        let start = end.saturating_sub(window);
        f.seek(SeekFrom::Start(start)).map_err(io("seek", path))?;
        let mut data = Vec::with_capacity((end - start) as usize);
        (&mut f).take(end - start).read_to_end(&mut data).map_err(io("read", path))?;
        // `data` ends with the newline of the line we want.
        let body = &data[..data.len().saturating_sub(1)];
        let ls = match body.iter().rposition(|b| *b == b'\n') {
            Some(p) => p + 1,
            None if start == 0 => 0,
            None => {
                window *= 4;
                continue;
            }
        };
        let line = &body[ls..];
        let record = serde_json::from_slice::<Record>(line).map_err(|e| AuditError::Corrupt {
            path: path.to_path_buf(),
            line: 0,
            message: format!("the record before the torn tail (byte {}) is unreadable: {e}", start + ls as u64),
        })?;
        return Ok(Some((start + ls as u64, record, hash_hex(line))));
    }
}
/// A segment's first record, reading only that line.
pub(super) fn first_record(path: &Path) -> Result<Option<Record>, AuditError> {
    let mut lines = Lines::open(path)?;
    match lines.next_line()? {
        Some((n, bytes)) => Ok(Some(parse(path, n, bytes)?)),
        None => Ok(None),
    }
}

pub(super) fn first_time(path: &Path) -> Result<Option<DateTime<Utc>>, AuditError> {
    Ok(first_record(path)?.map(|r| r.time))
}

/// Records matching `filter`, in order. Segments that cannot match, by their sequence range or
/// their time range (a segment ends where the next one starts), are not read.
pub fn query(dir: &Path, filter: &Filter) -> Result<Vec<Record>, AuditError> {
    let segs = segments(dir)?;
    let mut out = std::collections::VecDeque::new();
    for i in segments_for(&segs, filter)? {
        read_segment(&segs[i].1, |r| {
            if filter.matches(&r) {
                out.push_back(r);
                if filter.limit.is_some_and(|l| out.len() > l) {
                    out.pop_front();
                }
            }
            true
        })?;
    }
    Ok(out.into())
}

/// The indexes in `segs` of the segments that can hold records `filter` wants, by their
/// sequence range or their time range (a segment ends where the next one starts).
pub(super) fn segments_for(segs: &[(u64, PathBuf)], filter: &Filter) -> Result<Vec<usize>, AuditError> {
    let mut out = Vec::new();
    for (i, (_, path)) in segs.iter().enumerate().skip(first_segment_since(segs, filter.since)?) {
        if let (Some(after), Some((next_first, _))) = (filter.after_seq, segs.get(i + 1))
            && *next_first <= after + 1
        {
            continue;
        }
        if let Some(until) = filter.until
            && first_time(path)?.is_some_and(|t| t > until)
        {
            break;
        }
        out.push(i);
    }
    Ok(out)
}

/// The first `n` records after seq `after` (or since `since`), in order: a reader that follows
/// the log reads a bounded batch at a time, skipping the segments before its place.
pub fn first_after(
    dir: &Path,
    after: Option<u64>,
    since: Option<DateTime<Utc>>,
    n: usize,
) -> Result<Vec<Record>, AuditError> {
    let segs = segments(dir)?;
    let mut out = Vec::new();
    let first = first_segment_since(&segs, since)?;
    for (i, (_, path)) in segs.iter().enumerate().skip(first) {
        if let (Some(after), Some((next_first, _))) = (after, segs.get(i + 1))
            && *next_first <= after + 1
        {
            continue;
        }
        read_segment(path, |r| {
            if after.is_none_or(|a| r.seq > a) && since.is_none_or(|s| r.time >= s) {
                out.push(r);
            }
            out.len() < n
        })?;
        if out.len() >= n {
            break;
        }
    }
    Ok(out)
}

/// The last `n` records, reading segments from the newest back.
pub fn tail(dir: &Path, n: usize) -> Result<Vec<Record>, AuditError> {
    let mut out: Vec<Record> = Vec::new();
    for (_, path) in segments(dir)?.iter().rev() {
        if out.len() >= n {
            break;
        }
        let mut seg = Vec::new();
        read_segment(path, |r| {
            seg.push(r);
            true
        })?;
        let take = n - out.len();
        let start = seg.len().saturating_sub(take);
        seg.drain(..start);
        seg.append(&mut out);
        out = seg;
    }
    Ok(out)
}

/// Write the raw lines of the records with `since <= time <= until` to `out`, unchanged, so the
/// export verifies on its own (`verify_reader`). Returns how many records were written.
pub fn export(
    dir: &Path,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    out: &mut dyn std::io::Write,
) -> Result<u64, AuditError> {
    #[derive(serde::Deserialize)]
    struct Stamp {
        time: DateTime<Utc>,
    }
    let segs = segments(dir)?;
    let start = first_segment_since(&segs, since)?;
    let mut written = 0;
    for (_, path) in &segs[start..] {
        if let Some(until) = until
            && first_time(path)?.is_some_and(|t| t > until)
        {
            break;
        }
        let mut lines = Lines::open(path)?;
        while let Some((n, bytes)) = lines.next_line()? {
            let stamp: Stamp = serde_json::from_slice(bytes).map_err(|e| AuditError::Corrupt {
                path: path.clone(),
                line: n,
                message: e.to_string(),
            })?;
            if since.is_some_and(|s| stamp.time < s) {
                continue;
            }
            if until.is_some_and(|u| stamp.time > u) {
                return Ok(written);
            }
            out.write_all(bytes).and_then(|_| out.write_all(b"\n")).map_err(io("write export of", path))?;
            written += 1;
        }
    }
    Ok(written)
}

/// Index of the first segment that can hold records at or after `since`: a binary search on the
/// segments' first record times, so the cost does not grow with the number of older segments.
pub(super) fn first_segment_since(segs: &[(u64, PathBuf)], since: Option<DateTime<Utc>>) -> Result<usize, AuditError> {
    let Some(since) = since else { return Ok(0) };
    // The first segment whose first record is after `since`; the one before it may straddle.
    let (mut lo, mut hi) = (0, segs.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        match first_time(&segs[mid].1)? {
            Some(t) if t <= since => lo = mid + 1,
            _ => hi = mid,
        }
    }
    Ok(lo.saturating_sub(1))
}

/// The hash of record `seq`'s line, if the log still holds it.
pub fn hash_at(dir: &Path, seq: u64) -> Result<Option<String>, AuditError> {
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
    }
    let segs = segments(dir)?;
    let Some((_, path)) = segs.iter().rev().find(|(first, _)| *first <= seq) else {
        return Ok(None);
    };
    let mut lines = Lines::open(path)?;
    while let Some((n, bytes)) = lines.next_line()? {
        let s: Seq = serde_json::from_slice(bytes).map_err(|e| AuditError::Corrupt {
            path: path.clone(),
            line: n,
            message: e.to_string(),
        })?;
        if s.seq == seq {
            return Ok(Some(crate::digest::sha256_hex(bytes)));
        }
    }
    Ok(None)
}
