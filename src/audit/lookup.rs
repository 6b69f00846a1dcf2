//! Reads through the segments' indexes (see `index`): the decisions and actions of a target or
//! an action, and the alert an action began with, without reading the intake around them.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;

use super::read::{Lines, parse, segments, segments_for};
use super::{AuditError, Filter, Kind, Record, index};

/// How far before an action's first record its alert's `received` record is looked for.
const RECEIVED_WINDOW: u64 = 4096;

/// The records matching `filter` among those a segment index holds (every kind but intake and
/// housekeeping: `received`, `rejected`, `seal`, `checkpoint`), in order: the same records as
/// [`super::query`] gives for those kinds, reading only their lines.
pub fn query_indexed(dir: &Path, filter: &Filter) -> Result<Vec<Record>, AuditError> {
    let segs = segments(dir)?;
    let mut found: VecDeque<(usize, u64)> = VecDeque::new();
    let needle = index::needle(filter);
    for i in segments_for(&segs, filter)? {
        let path = &segs[i].1;
        for p in index::load(path, needle.as_deref())?.postings.iter().filter(|p| p.matches(filter)) {
            found.push_back((i, p.at));
            if filter.limit.is_some_and(|l| found.len() > l) {
                found.pop_front();
            }
        }
    }
    let mut out = Vec::with_capacity(found.len());
    let mut open: Option<(usize, BufReader<File>)> = None;
    for (i, at) in found {
        let path = &segs[i].1;
        let reader = match &mut open {
            Some((j, r)) if *j == i => r,
            _ => {
                let f = File::open(path).map_err(io("open", path))?;
                &mut open.insert((i, BufReader::with_capacity(16 << 10, f))).1
            }
        };
        out.push(read_at(reader, path, at)?);
    }
    Ok(out)
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AuditError {
    let path = path.to_path_buf();
    move |source| AuditError::Io { action, path, source }
}

/// The record whose line starts at byte `at`.
fn read_at(reader: &mut BufReader<File>, path: &Path, at: u64) -> Result<Record, AuditError> {
    reader.seek(SeekFrom::Start(at)).map_err(io("seek", path))?;
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).map_err(io("read", path))?;
    let body = line.strip_suffix(b"\n").ok_or_else(|| AuditError::Corrupt {
        path: path.to_path_buf(),
        line: 0,
        message: format!("the index points at byte {at}, which is not the start of a whole record"),
    })?;
    parse(path, 0, body)
}

/// The `received` record of event `event_id`, looked for among the few thousand records before
/// seq `before` (where an alert's decision follows it): in the segment that holds them, and in
/// the one before it when the window reaches back across a seal.
pub fn received_before(dir: &Path, event_id: &str, before: u64) -> Result<Option<Record>, AuditError> {
    let segs = segments(dir)?;
    let from = before.saturating_sub(RECEIVED_WINDOW);
    // The id as a JSON string: a format 1 record's `event_id`, or an alert's `id` in a
    // delivery's record.
    let needle = serde_json::Value::from(event_id).to_string();
    // Newest first: the record is nearest the decision.
    for (first, path) in segs.iter().rev().filter(|(first, _)| *first < before) {
        if let Some(r) = received_in(path, event_id, needle.as_bytes(), from, before)? {
            return Ok(Some(r));
        }
        if *first <= from {
            break;
        }
    }
    Ok(None)
}

/// [`received_before`] in one segment: from the last anchor at or before seq `from`.
fn received_in(
    path: &Path,
    event_id: &str,
    needle: &[u8],
    from: u64,
    before: u64,
) -> Result<Option<Record>, AuditError> {
    // Only the anchors are wanted: the event's postings, and the marks.
    let start =
        index::load(path, Some(needle))?.anchors.into_iter().filter(|(seq, _)| *seq <= from).map(|(_, at)| at).max();
    let mut lines = Lines::open_at(path, start.unwrap_or(0))?;
    while let Some((n, bytes)) = lines.next_line()? {
        if !contains(bytes, needle) {
            if index::seq_of(bytes).is_some_and(|s| s >= before) {
                break;
            }
            continue;
        }
        let r = parse(path, n, bytes)?;
        if r.seq >= before {
            break;
        }
        if r.entry.kind == Kind::Received && r.names_alert(event_id) {
            return Ok(Some(r));
        }
    }
    Ok(None)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}
