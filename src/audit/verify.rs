//! Verify the hash chain over the raw bytes, streaming, and say exactly where it breaks.

use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;

use super::read::{Lines, segments};
use super::{AuditError, GENESIS};

#[derive(Debug, Clone, PartialEq)]
pub struct VerifyReport {
    pub records: u64,
    pub segments: usize,
    pub first_seq: u64,
    pub last_seq: u64,
    pub last_hash: String,
    /// When older segments were removed by retention: the `checkpoint` record (its seq) that
    /// anchors the first record kept.
    pub anchored_by: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{file}:{line}: record seq {seq}: {problem}")]
    Broken { file: String, line: usize, seq: u64, problem: String },
    #[error("{file}:{line}: unreadable record: {message}")]
    Unreadable { file: String, line: usize, message: String },
    #[error("{0}")]
    Audit(#[from] AuditError),
}

/// Only what verification needs from a record.
#[derive(Deserialize)]
struct Link<'a> {
    seq: u64,
    #[serde(borrow)]
    prev: &'a str,
    #[serde(borrow, default)]
    kind: Option<&'a str>,
}

#[derive(Deserialize)]
struct CheckpointDetail {
    anchors: Vec<Anchor>,
}

#[derive(Deserialize)]
struct Anchor {
    seq: u64,
    prev: String,
}

struct Chain {
    report: VerifyReport,
    expected: Option<(u64, String)>,
    /// (seq, prev) of the first record, and the anchors checkpoints give: (seq, prev, checkpoint seq).
    start: Option<(u64, String)>,
    anchors: Vec<(u64, String, u64)>,
}

impl Chain {
    fn new(expected: Option<(u64, String)>) -> Chain {
        Chain {
            report: VerifyReport {
                records: 0,
                segments: 0,
                first_seq: 0,
                last_seq: 0,
                last_hash: GENESIS.into(),
                anchored_by: None,
            },
            expected,
            start: None,
            anchors: Vec::new(),
        }
    }

    fn check(&mut self, file: &str, line: usize, bytes: &[u8]) -> Result<(), VerifyError> {
        let link: Link = serde_json::from_slice(bytes).map_err(|e| VerifyError::Unreadable {
            file: file.into(),
            line,
            message: e.to_string(),
        })?;
        if let Some((seq, prev)) = &self.expected {
            let broken = |problem: String| VerifyError::Broken { file: file.into(), line, seq: link.seq, problem };
            if link.seq != *seq {
                return Err(broken(format!(
                    "expected seq {seq}: a record was removed, inserted or reordered before this one"
                )));
            }
            if link.prev != prev {
                return Err(broken(format!(
                    "prev is {} but the previous record hashes to {prev}: the previous record was edited, or records were removed or reordered",
                    link.prev
                )));
            }
        }
        if link.kind == Some("checkpoint") {
            #[derive(Deserialize)]
            struct Checkpoint {
                detail: CheckpointDetail,
            }
            let c: Checkpoint = serde_json::from_slice(bytes).map_err(|e| VerifyError::Unreadable {
                file: file.into(),
                line,
                message: format!("checkpoint without anchors: {e}"),
            })?;
            self.anchors.extend(c.detail.anchors.into_iter().map(|a| (a.seq, a.prev, link.seq)));
        }
        let hash = crate::digest::sha256_hex(bytes);
        if self.report.records == 0 {
            self.report.first_seq = link.seq;
            self.start = Some((link.seq, link.prev.to_string()));
        }
        self.report.records += 1;
        self.report.last_seq = link.seq;
        self.report.last_hash = hash.clone();
        self.expected = Some((link.seq + 1, hash));
        Ok(())
    }
}

/// Verify the whole log directory from its first record.
pub fn verify(dir: &Path) -> Result<VerifyReport, VerifyError> {
    let segs = segments(dir)?;
    let first_seq = segs.first().map(|s| s.0).unwrap_or(1);
    // A log that starts later than seq 1 lost its oldest segments to retention: its first record
    // must be anchored by a checkpoint, checked at the end.
    let needs_anchor = first_seq != 1;
    let mut chain = Chain::new((!needs_anchor).then(|| (1, GENESIS.to_string())));
    for (first_seq, path) in &segs {
        let file = path.display().to_string();
        if let Some((seq, _)) = &chain.expected
            && seq != first_seq
        {
            return Err(VerifyError::Broken {
                file,
                line: 1,
                seq: *first_seq,
                problem: format!("segment starts at seq {first_seq}, expected {seq}: a segment is missing"),
            });
        }
        let mut lines = Lines::open(path)?;
        while let Some((n, bytes)) = lines.next_line()? {
            chain.check(&file, n, bytes)?;
        }
        chain.report.segments += 1;
    }
    if needs_anchor {
        let (seq, prev) = chain.start.clone().unwrap_or_default();
        let anchor = chain.anchors.iter().find(|(s, p, _)| *s == seq && *p == prev);
        match anchor {
            Some((_, _, checkpoint)) => chain.report.anchored_by = Some(*checkpoint),
            None => {
                return Err(VerifyError::Broken {
                    file: segs.first().map(|s| s.1.display().to_string()).unwrap_or_default(),
                    line: 1,
                    seq,
                    problem: "the log starts here, but no checkpoint record anchors this record: older segments were removed without retention, or the first segment was edited".into(),
                });
            }
        }
    }
    Ok(chain.report)
}

/// Verify one exported JSON Lines file; the chain is checked from its first record's `prev`.
pub fn verify_reader(r: impl BufRead, name: &str) -> Result<VerifyReport, VerifyError> {
    let mut chain = Chain::new(None);
    for (i, line) in r.split(b'\n').enumerate() {
        let line =
            line.map_err(|e| VerifyError::Unreadable { file: name.into(), line: i + 1, message: e.to_string() })?;
        if line.is_empty() {
            continue;
        }
        chain.check(name, i + 1, &line)?;
    }
    chain.report.segments = 1;
    Ok(chain.report)
}
