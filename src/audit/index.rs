//! Each segment's index: a sidecar `seg-….idx` listing where its decisions and actions are, so
//! that a target's timeline or an action's page reads a few lines of the log, not the log.
//!
//! What is indexed: every record but intake (`received`, `rejected`) and housekeeping (`seal`,
//! `checkpoint`): matches, decisions, holds, actions, verifications, controls. An index line is
//! a [`Posting`] (the record's seq, byte offset, time, kind, rule, target, action and event) or
//! a mark `{"covered":{"from","to","next_seq"}}`: the postings since the previous mark are every
//! indexed record of the segment's bytes `from..to`.
//!
//! The index is a cache, never the record: it is written by the writer after the segment's bytes
//! are durable, without fsync, and a reader trusts it only as far as its marks cover the segment
//! without a gap, then reads the rest of the segment itself. A missing, short or torn index
//! (a crash, a log from before indexes, a replica's first segment) gives the same answers,
//! slower. The writer completes the open segment's index at start.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{AuditError, Filter, Kind, Record};

/// A mark is written at least every this many bytes of intake, so that a reader never has much
/// of a segment to read itself.
const MARK_EVERY: u64 = 4 << 20;

/// Where a reader can start reading the segment: a record's seq and its line's byte offset.
pub(super) type Anchor = (u64, u64);

/// One indexed record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Posting {
    pub seq: u64,
    /// Byte offset of the record's line in its segment.
    pub at: u64,
    pub time: DateTime<Utc>,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

impl Posting {
    pub(super) fn matches(&self, f: &Filter) -> bool {
        f.matches_parts(self.seq, self.time, self.kind, &self.rule, &self.target, &self.event_id, &self.action_id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Covered {
    from: u64,
    to: u64,
    /// The seq of the record at `to` (the next one).
    next_seq: u64,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum IndexLine {
    Mark { covered: Covered },
    Posting(Posting),
}

#[derive(Serialize)]
struct MarkLine {
    covered: Covered,
}

/// Whether records of this kind close a group of postings with a mark: anything but intake.
fn notable(kind: Kind) -> bool {
    !matches!(kind, Kind::Received | Kind::Rejected)
}

/// Whether records of this kind are indexed.
pub(super) fn indexed(kind: Kind) -> bool {
    !matches!(kind, Kind::Received | Kind::Rejected | Kind::Seal | Kind::Checkpoint)
}

pub(super) fn path_of(segment: &Path) -> PathBuf {
    segment.with_extension("idx")
}

/// Remove a segment's index with the segment (nothing to do if it has none).
pub(super) fn remove(segment: &Path) {
    let _ = std::fs::remove_file(path_of(segment));
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// What a posting line holds when `filter` can match it, to skip the others unparsed: the most
/// selective field the filter names, as the record's JSON spells it.
pub(super) fn needle(filter: &Filter) -> Option<Vec<u8>> {
    let (key, value) = [
        ("action_id", &filter.action_id),
        ("event_id", &filter.event_id),
        ("target", &filter.target),
        ("rule", &filter.rule),
    ]
    .into_iter()
    .find_map(|(k, v)| Some((k, v.as_ref()?)))?;
    Some(format!("\"{key}\":{}", serde_json::Value::from(value.as_str())).into_bytes())
}

/// A line's kind, read from its bytes without parsing the line (`kind` is the first field after
/// `prev`, and nothing before it can hold the text `"kind":"`).
fn kind_of(line: &[u8]) -> Option<Kind> {
    const KEY: &[u8] = b"\"kind\":\"";
    let start = find(&line[..line.len().min(200)], KEY)? + KEY.len();
    let len = line[start..].iter().position(|b| *b == b'"')?;
    std::str::from_utf8(&line[start..start + len]).ok()?.parse().ok()
}

/// A posting as its record's line spells it, borrowing the line's text: the writer indexes every
/// record it appends (a storm's held alerts are two records each) without building owned
/// strings, or parsing the time to format it again. Serialised, it is a [`Posting`]'s line.
#[derive(Debug, Serialize, Deserialize)]
struct PostingRef<'a> {
    seq: u64,
    /// Not in the record (nor read from it): set from where its line is.
    #[serde(skip_deserializing)]
    at: u64,
    #[serde(borrow)]
    time: Cow<'a, str>,
    kind: Kind,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    rule: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    target: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    action_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    event_id: Option<Cow<'a, str>>,
}

impl<'a> PostingRef<'a> {
    /// The posting of the line at `at`, if its kind (read by [`kind_of`]) is indexed.
    fn of(line: &'a [u8], at: u64, kind: Option<Kind>) -> Option<PostingRef<'a>> {
        if !kind.is_some_and(indexed) {
            return None;
        }
        let p: PostingRef = serde_json::from_slice(line).ok()?;
        Some(PostingRef { at, ..p })
    }

    /// The posting's index line (no newline): what serde writes for it, without serde's work for
    /// each field and key (an alert storm's held alerts are two postings each).
    fn write_line(&self, buf: &mut Vec<u8>) {
        /// A JSON string: as it is when nothing in it needs escaping (ids, names), else by serde.
        fn string(buf: &mut Vec<u8>, s: &str) {
            if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
                buf.push(b'"');
                buf.extend_from_slice(s.as_bytes());
                buf.push(b'"');
            } else {
                // A `str` always serialises.
                let _ = serde_json::to_writer(&mut *buf, s);
            }
        }
        // Writing to a Vec cannot fail.
        let _ = write!(buf, "{{\"seq\":{},\"at\":{},\"time\":", self.seq, self.at);
        string(buf, &self.time);
        let _ = write!(buf, ",\"kind\":\"{}\"", self.kind.as_str());
        for (key, value) in [
            ("rule", &self.rule),
            ("target", &self.target),
            ("action_id", &self.action_id),
            ("event_id", &self.event_id),
        ] {
            if let Some(v) = value {
                let _ = write!(buf, ",\"{key}\":");
                string(buf, v);
            }
        }
        buf.push(b'}');
    }

    fn owned(self) -> Option<Posting> {
        Some(Posting {
            seq: self.seq,
            at: self.at,
            time: self.time.parse().ok()?,
            kind: self.kind,
            rule: self.rule.map(Cow::into_owned),
            target: self.target.map(Cow::into_owned),
            action_id: self.action_id.map(Cow::into_owned),
            event_id: self.event_id.map(Cow::into_owned),
        })
    }
}

/// The postings of lines the writer has just made from its own records, known without reading
/// the lines back; and whether they hold anything but intake (see [`postings`]).
pub(super) struct Known<'a> {
    postings: Vec<PostingRef<'a>>,
    notable: bool,
}

impl<'a> Known<'a> {
    /// `records`, each with its line's offset in the segment and its `time` as the line spells it.
    pub(super) fn of(records: impl Iterator<Item = (&'a Record, u64, &'a str)>) -> Known<'a> {
        let mut known = Known { postings: Vec::new(), notable: false };
        for (r, at, time) in records {
            let e = &r.entry;
            known.notable |= notable(e.kind);
            if indexed(e.kind) {
                known.postings.push(PostingRef {
                    seq: r.seq,
                    at,
                    time: Cow::Borrowed(time),
                    kind: e.kind,
                    rule: e.rule.as_deref().map(Cow::Borrowed),
                    target: e.target.as_deref().map(Cow::Borrowed),
                    action_id: e.action_id.as_deref().map(Cow::Borrowed),
                    event_id: e.event_id.as_deref().map(Cow::Borrowed),
                });
            }
        }
        known
    }
}

/// The posting of the line at `at`, if its kind (read by [`kind_of`]) is indexed.
fn posting(line: &[u8], at: u64, kind: Option<Kind>) -> Option<Posting> {
    PostingRef::of(line, at, kind)?.owned()
}

/// The postings of whole lines in `buf`, which starts at byte `offset` of its segment; and
/// whether it holds anything but intake (which closes a group with a mark).
fn postings(buf: &[u8], offset: u64) -> (Vec<PostingRef<'_>>, bool) {
    let mut out = Vec::new();
    let mut start = 0;
    let mut any_notable = false;
    // memchr finds the ends of lines many bytes at a time: a delivery's line is tens of kB.
    for end in memchr::memchr_iter(b'\n', buf) {
        let line = &buf[start..end];
        let kind = kind_of(line);
        any_notable |= kind.is_some_and(notable);
        out.extend(PostingRef::of(line, offset + start as u64, kind));
        start = end + 1;
    }
    (out, any_notable)
}

/// What a reader knows of a segment: every posting, and places to start reading it.
#[derive(Debug, Default)]
pub(super) struct Loaded {
    pub postings: Vec<Posting>,
    pub anchors: Vec<Anchor>,
}

/// What the index file itself says, as far as it can be trusted for a segment of `seg_len` bytes:
/// the postings, anchors, the bytes of the segment covered, and the bytes of the index that hold
/// them (what follows is a torn or stray write).
fn read_index(segment: &Path, seg_len: u64, needle: Option<&[u8]>) -> (Loaded, u64, u64) {
    let mut loaded = Loaded::default();
    let (mut covered, mut valid) = (0u64, 0u64);
    let Ok(f) = File::open(path_of(segment)) else { return (loaded, 0, 0) };
    let mut reader = BufReader::new(f);
    let mut group = Vec::new();
    let mut line = Vec::new();
    let mut read = 0u64;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(n) if n > 0 && line.ends_with(b"\n") => read += n as u64,
            _ => break,
        }
        let body = &line[..line.len() - 1];
        // A posting that cannot be wanted is not parsed (a mark always is).
        if let Some(needle) = needle
            && !body.starts_with(b"{\"covered\"")
            && memchr::memmem::find(body, needle).is_none()
        {
            continue;
        }
        match serde_json::from_slice::<IndexLine>(body) {
            Ok(IndexLine::Posting(p)) => group.push(p),
            Ok(IndexLine::Mark { covered: c }) if c.from == covered && c.to <= seg_len && c.from <= c.to => {
                loaded.anchors.extend(group.iter().map(|p: &Posting| (p.seq, p.at)));
                loaded.anchors.push((c.next_seq, c.to));
                loaded.postings.append(&mut group);
                covered = c.to;
                valid = read;
            }
            _ => break,
        }
    }
    (loaded, covered, valid)
}

/// Read the segment's whole lines from `from`, adding their postings (and an anchor every so
/// many lines).
fn scan(segment: &Path, from: u64, loaded: &mut Loaded, needle: Option<&[u8]>) -> Result<u64, AuditError> {
    let io = |action| {
        let path = segment.to_path_buf();
        move |source| AuditError::Io { action, path, source }
    };
    let mut f = File::open(segment).map_err(io("open"))?;
    f.seek(SeekFrom::Start(from)).map_err(io("seek"))?;
    let mut reader = BufReader::with_capacity(256 << 10, f);
    let (mut at, mut line, mut n) = (from, Vec::new(), 0u64);
    loop {
        line.clear();
        let len = reader.read_until(b'\n', &mut line).map_err(io("read"))?;
        if len == 0 || !line.ends_with(b"\n") {
            return Ok(at);
        }
        let body = &line[..len - 1];
        if n % 1024 == 0
            && let Some(seq) = seq_of(body)
        {
            loaded.anchors.push((seq, at));
        }
        if needle.is_none_or(|n| memchr::memmem::find(body, n).is_some()) {
            loaded.postings.extend(posting(body, at, kind_of(body)));
        }
        at += len as u64;
        n += 1;
    }
}

/// A line's seq, read from its first bytes.
pub(super) fn seq_of(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// How many bytes of the segment its index covers (the rest a reader reads itself).
#[cfg(test)]
pub(super) fn covered(segment: &Path) -> u64 {
    let len = std::fs::metadata(segment).map_or(0, |m| m.len());
    read_index(segment, len, None).1
}

/// The seq after the last whole line of `buf`.
fn next_seq_after(buf: &[u8]) -> u64 {
    let last = buf.strip_suffix(b"\n").unwrap_or(buf);
    let last = last.rsplit(|b| *b == b'\n').next().unwrap_or_default();
    seq_of(last).map_or(0, |s| s + 1)
}

/// Everything indexed in a segment, from its index as far as that covers it and from the
/// segment's own lines after that.
///
/// With a `needle` (e.g. `"target":"ns/name"`, as the record's JSON spells it), only the
/// postings whose line holds it are read: the others cannot match a filter on that field.
pub(super) fn load(segment: &Path, needle: Option<&[u8]>) -> Result<Loaded, AuditError> {
    let seg_len = std::fs::metadata(segment)
        .map_err(|source| AuditError::Io { action: "stat", path: segment.to_path_buf(), source })?
        .len();
    let (mut loaded, covered, _) = read_index(segment, seg_len, needle);
    if covered < seg_len {
        scan(segment, covered, &mut loaded, needle)?;
    }
    Ok(loaded)
}

/// The writer's side: appends postings and marks as segment bytes become durable.
pub(super) struct IndexWriter {
    path: PathBuf,
    file: Option<File>,
    /// The segment's bytes the index covers; a write at another offset is left to readers.
    covered: u64,
    unmarked: u64,
    /// A write failed: the rest of this segment is read by readers themselves.
    broken: bool,
}

impl IndexWriter {
    /// The index of a segment about to be started.
    pub(super) fn fresh(segment: &Path) -> IndexWriter {
        remove(segment);
        IndexWriter { path: path_of(segment), file: None, covered: 0, unmarked: 0, broken: false }
    }

    /// The index of the open segment, `seg_len` bytes long, at start: what it lacks (a crash
    /// between a write and its index, a log from before indexes) is read from the segment and
    /// added now, so readers need not.
    pub(super) fn open(segment: &Path, seg_len: u64) -> IndexWriter {
        // Only the marks are wanted here: no posting holds a newline, so none is parsed.
        let (_, covered, valid) = read_index(segment, seg_len, Some(b"\n"));
        let mut w = IndexWriter { path: path_of(segment), file: None, covered, unmarked: 0, broken: false };
        let result = (|| -> Result<(), std::io::Error> {
            // Appending: what follows the trusted part (a torn write) is cut first.
            let f = OpenOptions::new().create(true).append(true).open(&w.path)?;
            f.set_len(valid)?;
            w.file = Some(f);
            if covered < seg_len {
                let mut rest = Vec::new();
                let mut f = File::open(segment)?;
                f.seek(SeekFrom::Start(covered))?;
                f.take(seg_len - covered).read_to_end(&mut rest)?;
                let (postings, _) = postings(&rest, covered);
                w.write(&postings, seg_len, next_seq_after(&rest))?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            w.fail(&e);
        }
        w
    }

    fn fail(&mut self, e: &std::io::Error) {
        tracing::warn!(index = %self.path.display(), error = %e, "the segment index could not be written: readers read the segment instead");
        self.broken = true;
        self.file = None;
    }

    fn write(&mut self, postings: &[PostingRef<'_>], to: u64, next_seq: u64) -> Result<(), std::io::Error> {
        let mut buf = Vec::with_capacity(64 + postings.len() * 160);
        for p in postings {
            p.write_line(&mut buf);
            buf.push(b'\n');
        }
        serde_json::to_writer(&mut buf, &MarkLine { covered: Covered { from: self.covered, to, next_seq } })?;
        buf.push(b'\n');
        if self.file.is_none() {
            self.file = Some(OpenOptions::new().create(true).append(true).open(&self.path)?);
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(&buf)?;
        }
        self.covered = to;
        self.unmarked = 0;
        Ok(())
    }

    /// `buf` (whole lines) was written at `offset` and is durable. Its postings are `known` when
    /// the writer made the lines, else read from them.
    pub(super) fn note(&mut self, offset: u64, buf: &[u8], known: Option<Known<'_>>) {
        if self.broken || offset != self.covered + self.unmarked {
            self.broken = true;
            return;
        }
        let (postings, notable) = match known {
            Some(k) => (k.postings, k.notable),
            None => postings(buf, offset),
        };
        self.unmarked += buf.len() as u64;
        if notable || self.unmarked >= MARK_EVERY {
            let next_seq = next_seq_after(buf);
            let to = self.covered + self.unmarked;
            if let Err(e) = self.write(&postings, to, next_seq) {
                self.fail(&e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_is_read_from_the_bytes_of_a_line() {
        let line = br#"{"seq":7,"time":"2026-12-02T00:00:00Z","prev":"00","kind":"dry_run","rule":"kind"}"#;
        assert_eq!(kind_of(line), Some(Kind::DryRun));
        assert_eq!(seq_of(line), Some(7));
        assert_eq!(kind_of(br#"{"seq":1}"#), None);
        let p = posting(line, 40, kind_of(line)).unwrap();
        assert_eq!((p.seq, p.at, p.kind, p.rule.as_deref()), (7, 40, Kind::DryRun, Some("kind")));
        let received = br#"{"seq":8,"time":"2026-12-02T00:00:00Z","prev":"00","kind":"received","target":"a/b"}"#;
        assert_eq!(posting(received, 0, kind_of(received)), None);
    }

    /// The writer writes the posting it borrows from the line; a reader reads it as the posting
    /// it would have built from the line itself (escapes and sub-second times included).
    #[test]
    fn a_borrowed_posting_is_written_as_the_posting_of_its_line() {
        let line = br#"{"seq":9,"time":"2026-12-02T00:00:00.123456789Z","prev":"00","kind":"held","event_id":"e\"1","rule":"r\u00e9","target":"ns/vs","reason":"cooldown","detail":{"rule":"not this"}}"#;
        let borrowed = PostingRef::of(line, 77, kind_of(line)).unwrap();
        let mut written = Vec::new();
        borrowed.write_line(&mut written);
        assert_eq!(String::from_utf8_lossy(&written), serde_json::to_string(&borrowed).unwrap(), "as serde writes it");
        let read: Posting = serde_json::from_slice(&written).unwrap();
        assert_eq!(Some(read.clone()), posting(line, 77, kind_of(line)));
        assert_eq!((read.at, read.rule.as_deref(), read.event_id.as_deref()), (77, Some("r\u{e9}"), Some("e\"1")));
        assert_eq!(read.time.timestamp_subsec_nanos(), 123_456_789);
        assert!(matches!(serde_json::from_slice::<IndexLine>(&written).unwrap(), IndexLine::Posting(_)));
    }

    /// The index line of a posting is byte for byte what serde writes, for every kind, with any
    /// of the optional fields absent, and with text that needs escaping.
    #[test]
    fn a_posting_line_is_what_serde_writes() {
        let texts = [None, Some("plain/ns é"), Some("back\\slash"), Some("q\"uote"), Some("ctl\u{1f}")];
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            let pick = |n: usize| texts[(i + n) % texts.len()].map(Cow::Borrowed);
            let p = PostingRef {
                seq: i as u64,
                at: 1_000 + i as u64,
                time: Cow::Borrowed("2026-12-03T15:00:00.5Z"),
                kind,
                rule: pick(0),
                target: pick(1),
                action_id: pick(2),
                event_id: pick(3),
            };
            let mut line = Vec::new();
            p.write_line(&mut line);
            assert_eq!(String::from_utf8(line).unwrap(), serde_json::to_string(&p).unwrap(), "{kind}");
        }
    }
}
