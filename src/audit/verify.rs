//! Verify the hash chain over the raw bytes, streaming, and say exactly where it breaks.

use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::read::{Lines, segments};
use super::{AuditError, GENESIS};

#[derive(Debug, Clone, PartialEq)]
pub struct VerifyReport {
    pub records: u64,
    pub segments: usize,
    pub first_seq: u64,
    pub last_seq: u64,
    pub last_hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{file}:{line}: record seq {seq}: {problem}")]
    Broken {
        file: String,
        line: usize,
        seq: u64,
        problem: String,
    },
    #[error("{file}:{line}: unreadable record: {message}")]
    Unreadable { file: String, line: usize, message: String },
    #[error("{0}")]
    Audit(#[from] AuditError),
}

/// Only what verification needs from a record.
#[derive(Deserialize)]
struct Link {
    seq: u64,
    prev: String,
}

struct Chain {
    report: VerifyReport,
    expected: Option<(u64, String)>,
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
            },
            expected,
        }
    }

    fn check(&mut self, file: &str, line: usize, bytes: &[u8]) -> Result<(), VerifyError> {
        let link: Link = serde_json::from_slice(bytes).map_err(|e| VerifyError::Unreadable {
            file: file.into(),
            line,
            message: e.to_string(),
        })?;
        if let Some((seq, prev)) = &self.expected {
            let broken = |problem: String| VerifyError::Broken {
                file: file.into(),
                line,
                seq: link.seq,
                problem,
            };
            if link.seq != *seq {
                return Err(broken(format!(
                    "expected seq {seq}: a record was removed, inserted or reordered before this one"
                )));
            }
            if link.prev != *prev {
                return Err(broken(format!(
                    "prev is {} but the previous record hashes to {prev}: the previous record was edited, or records were removed or reordered",
                    link.prev
                )));
            }
        }
        let hash = hex::encode(Sha256::digest(bytes));
        if self.report.records == 0 {
            self.report.first_seq = link.seq;
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
    let mut chain = Chain::new(Some((segs.first().map(|s| s.0).unwrap_or(1), GENESIS.to_string())));
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
    Ok(chain.report)
}

/// Verify one exported JSON Lines file; the chain is checked from its first record's `prev`.
pub fn verify_reader(r: impl BufRead, name: &str) -> Result<VerifyReport, VerifyError> {
    let mut chain = Chain::new(None);
    for (i, line) in r.split(b'\n').enumerate() {
        let line = line.map_err(|e| VerifyError::Unreadable {
            file: name.into(),
            line: i + 1,
            message: e.to_string(),
        })?;
        if line.is_empty() {
            continue;
        }
        chain.check(name, i + 1, &line)?;
    }
    chain.report.segments = 1;
    Ok(chain.report)
}
