//! Retention: the oldest sealed segments past `audit.retention`'s limits are deleted, behind a
//! `checkpoint` record that anchors what remains.

use chrono::Utc;
use serde_json::json;

use super::read::segments;
use super::replica::Mode;
use super::writer::{Shared, Tail, io, prepare, write_records};
use super::{AuditError, AuditOptions, Entry, Kind};

/// Delete the oldest sealed segments that retention no longer keeps. First a `checkpoint` record
/// anchors what remains: for each segment deleted, the seq and `prev` of the record that follows
/// it, so `audit verify` can start from any of them (also after a crash halfway through).
pub(super) fn apply_retention(
    tail: &mut Tail,
    opts: &AuditOptions,
    shared: &Shared,
    mode: &mut Mode,
) -> Result<(), AuditError> {
    let r = &opts.retention;
    if r.max_age.is_none() && r.max_bytes.is_none() {
        return Ok(());
    }
    let segs = segments(&shared.dir)?;
    let sizes: Vec<u64> = segs.iter().map(|(_, p)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).collect();
    let mut total: u64 = sizes.iter().sum();
    let now = Utc::now();
    let mut delete = Vec::new();
    for (i, (first, path)) in segs.iter().enumerate() {
        if *first >= tail.seg_first {
            break; // never the open segment
        }
        // A segment ends where the next one starts.
        let ends = match segs.get(i + 1) {
            Some((_, next)) => super::read::first_record(next)?.map(|r| r.time).unwrap_or(now),
            None => now,
        };
        let too_old = r.max_age.is_some_and(|a| (now - ends).to_std().unwrap_or_default() > a);
        let too_big = r.max_bytes.is_some_and(|b| total > b);
        if !(too_old || too_big) {
            break;
        }
        total -= sizes[i];
        delete.push((*first, path.clone()));
    }
    if delete.is_empty() {
        return Ok(());
    }
    let mut anchors = Vec::new();
    for (first, _) in &delete {
        let next = segs.iter().find(|(f, _)| f > first);
        let anchor = match next {
            Some((_, p)) => super::read::first_record(p)?.map(|r| (r.seq, r.prev)),
            None => None,
        };
        // The segment after the last deleted one may not exist yet: this checkpoint starts it.
        let (seq, prev) = anchor.unwrap_or((tail.next_seq, tail.last_hash.clone()));
        anchors.push(json!({ "seq": seq, "prev": prev }));
    }
    let names: Vec<_> = delete.iter().map(|(_, p)| p.file_name().map(|n| n.to_string_lossy().to_string())).collect();
    let checkpoint = Entry::new(Kind::Checkpoint)
        .reason(format!("retention removed {} segment(s)", delete.len()))
        .detail(json!({
            "deleted": names,
            "anchors": anchors,
            "kept_from_seq": segs.iter().map(|s| s.0).find(|f| delete.iter().all(|(d, _)| d != f)),
            "retention": { "max_age": r.max_age.map(|d| humantime::format_duration(d).to_string()), "max_bytes": r.max_bytes },
        }));
    write_records(tail, opts, shared, mode, vec![prepare(checkpoint)?])?;
    for (_, path) in &delete {
        // After the checkpoint, before each removal: every state a crash here can leave must verify.
        crate::failpoint::crash_point("audit.retention");
        std::fs::remove_file(path).map_err(io("remove", path))?;
        super::index::remove(path);
    }
    crate::fsutil::sync_dir(&shared.dir).map_err(io("sync", &shared.dir))?;
    tracing::info!(deleted = delete.len(), "audit retention removed old segments");
    Ok(())
}
