//! Readers work on the directory without the lock, while the writer appends: a trailing line
//! without its newline is a write in progress and is not read.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::{AuditError, Filter, Record};

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
        if let Some(seq) = name
            .strip_prefix("seg-")
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|n| n.parse::<u64>().ok())
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
        Ok(Lines {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(256 << 10, f),
            line: 0,
            buf: Vec::new(),
        })
    }

    /// The next complete line (without its newline); None at the end or at a partial last line.
    pub(super) fn next_line(&mut self) -> Result<Option<(usize, &[u8])>, AuditError> {
        self.buf.clear();
        let n = self
            .reader
            .read_until(b'\n', &mut self.buf)
            .map_err(io("read", &self.path))?;
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

fn parse(path: &Path, line: usize, bytes: &[u8]) -> Result<Record, AuditError> {
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
    let segs = segments(dir)?;
    let mut current: Option<Lines> = None;
    let mut rest = segs.into_iter();
    Ok(std::iter::from_fn(move || {
        loop {
            if current.is_none() {
                let (_, path) = rest.next()?;
                match Lines::open(&path) {
                    Ok(l) => current = Some(l),
                    Err(e) => return Some(Err(e)),
                }
            }
            let lines = current.as_mut()?;
            let next = lines.next_line().map(|o| o.map(|(n, b)| (n, b.to_vec())));
            match next {
                Ok(Some((n, bytes))) => return Some(parse(lines.path(), n, &bytes)),
                Ok(None) => current = None,
                Err(e) => {
                    current = None;
                    return Some(Err(e));
                }
            }
        }
    }))
}

/// Time of a segment's first record, reading only that line.
fn first_time(path: &Path) -> Result<Option<DateTime<Utc>>, AuditError> {
    let mut lines = Lines::open(path)?;
    match lines.next_line()? {
        Some((n, bytes)) => Ok(Some(parse(path, n, bytes)?.time)),
        None => Ok(None),
    }
}

/// Records matching `filter`, in order. Segments that cannot match, by their sequence range or
/// their time range (a segment ends where the next one starts), are not read.
pub fn query(dir: &Path, filter: &Filter) -> Result<Vec<Record>, AuditError> {
    let segs = segments(dir)?;
    let mut out = std::collections::VecDeque::new();
    for (i, (_, path)) in segs.iter().enumerate() {
        let next = segs.get(i + 1);
        if let (Some(after), Some((next_first, _))) = (filter.after_seq, next)
            && *next_first <= after + 1
        {
            continue;
        }
        if let (Some(since), Some((_, next_path))) = (filter.since, next)
            && first_time(next_path)?.is_some_and(|t| t < since)
        {
            continue;
        }
        if let Some(until) = filter.until
            && first_time(path)?.is_some_and(|t| t > until)
        {
            break;
        }
        read_segment(path, |r| {
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
