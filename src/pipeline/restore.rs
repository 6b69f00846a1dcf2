//! Start: the guards' state restored from the snapshot beside the audit log and the records after
//! it, snapshots written, and the actions a crash interrupted finished.

use super::*;

/// The guards' state snapshot, beside the audit log's segments.
pub const SNAPSHOT_FILE: &str = "snapshot.json";

/// How the guards' state was restored at start.
#[derive(Debug, Clone, PartialEq)]
pub struct Restored {
    /// The seq the snapshot covered, if a valid one was found.
    pub snapshot_seq: Option<u64>,
    /// Records read from the log after it (all of them without a snapshot).
    pub replayed: u64,
    /// The bytes of the log those records took.
    pub replayed_bytes: u64,
    /// Why the snapshot was not used, if it was not.
    pub note: Option<String>,
}

pub(super) fn longest_cooldown(rules: &RuleSet) -> Duration {
    rules.rules().iter().filter_map(|r| r.cooldown).max().unwrap_or_default()
}

/// Load the snapshot if it matches the log (the record it covers still hashes the same), then
/// replay the records after it; otherwise rebuild from the whole log.
pub(super) fn restore_state(dir: &std::path::Path) -> Result<(GuardState, Restored), AuditError> {
    let path = dir.join(SNAPSHOT_FILE);
    let loaded: Result<state::Snapshot, String> = match std::fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("no snapshot".into()),
        Err(e) => Err(format!("snapshot unreadable: {e}")),
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("snapshot invalid: {e}")),
    };
    let mut replayed = 0;
    let mut replay = |state: &mut GuardState, records: &mut dyn Iterator<Item = Result<Record, AuditError>>| {
        for record in records {
            state.observe(&record?);
            replayed += 1;
        }
        Ok::<_, AuditError>(())
    };
    // Where the replay began: the snapshot's record (segment, offset), or the log's start.
    let mut from = None;
    let (state, snapshot_seq, note) = match loaded {
        Ok(s) if s.format != state::SNAPSHOT_FORMAT => {
            (GuardState::default(), None, Some(format!("snapshot format {} unknown", s.format)))
        }
        // A snapshot of an empty log: everything in the log comes after it.
        Ok(s) if s.position.seq == 0 && s.position.hash == audit::GENESIS => {
            let mut state = GuardState::from_snapshot(s);
            replay(&mut state, &mut audit::records(dir)?)?;
            (state, Some(0), None)
        }
        Ok(s) => {
            let seq = s.position.seq;
            match audit::records_after_position(dir, &s.position)? {
                Some(mut tail) => {
                    from = Some((s.position.segment.clone(), s.position.offset));
                    let mut state = GuardState::from_snapshot(s);
                    replay(&mut state, &mut tail)?;
                    (state, Some(seq), None)
                }
                None => (GuardState::default(), None, Some(format!("snapshot (seq {seq}) does not match the log"))),
            }
        }
        Err(note) => (GuardState::default(), None, Some(note)),
    };
    let (state, note) = match note {
        None => (state, None),
        Some(note) => {
            let mut state = GuardState::default();
            replay(&mut state, &mut audit::records(dir)?)?;
            (state, Some(format!("{note}: rebuilt from the whole log")))
        }
    };
    let replayed_bytes = bytes_after(dir, from.as_ref())?;
    Ok((state, Restored { snapshot_seq, replayed, replayed_bytes, note }))
}

/// The log's bytes from `from` (a segment's file name and an offset in it) to its end, or all of
/// them.
fn bytes_after(dir: &std::path::Path, from: Option<&(String, u64)>) -> Result<u64, AuditError> {
    let mut total = 0;
    let mut counting = from.is_none();
    for (_, path) in audit::segments(dir)? {
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        match from {
            Some((name, offset)) if !counting && path.file_name().is_some_and(|n| n.to_string_lossy() == *name) => {
                counting = true;
                total += len.saturating_sub(*offset);
            }
            _ if counting => total += len,
            _ => {}
        }
    }
    Ok(total)
}

/// A cluster replica with an empty disk starts from a leader's published snapshot: its log
/// begins with the anchoring checkpoint (`seq`, `line`) and the guard state (`state`, a
/// snapshot's JSON as of that record) is written beside it, so the start restores it and the
/// replicated log goes on from there. Refused unless the state is a snapshot of exactly that
/// record.
pub fn start_from_snapshot(dir: &std::path::Path, seq: u64, line: &[u8], state: &[u8]) -> Result<(), AuditError> {
    let path = dir.join(SNAPSHOT_FILE);
    let invalid = |message: String| AuditError::Corrupt { path: path.clone(), line: 0, message };
    let snapshot: state::Snapshot =
        serde_json::from_slice(state).map_err(|e| invalid(format!("the published snapshot does not read: {e}")))?;
    let hash = crate::digest::sha256_hex(line);
    if snapshot.position.seq != seq || snapshot.position.hash != hash {
        return Err(invalid(format!(
            "the published snapshot is of seq {} ({}), not of its checkpoint {seq} ({hash})",
            snapshot.position.seq, snapshot.position.hash
        )));
    }
    let at = audit::start_at(dir, seq, line)?;
    debug_assert_eq!(at, snapshot.position);
    crate::fsutil::write_atomically(&path, state).map_err(|source| AuditError::Io {
        action: "write snapshot",
        path: path.clone(),
        source,
    })
}

impl Pipeline {
    /// Write the guards' state beside the log (atomically), so the next start replays only what
    /// comes after it. Expired keys and cooldowns are dropped first.
    pub async fn save_snapshot(&self) -> Result<u64, AuditError> {
        let snapshot = {
            let mut state = self.state.lock().await;
            state.prune(Utc::now(), &self.settings().guards, longest_cooldown(&self.rules()));
            state.snapshot(self.audit.position())
        };
        let seq = snapshot.position.seq;
        let path = self.audit.dir().join(SNAPSHOT_FILE);
        let bytes = serde_json::to_vec(&snapshot).map_err(|e| AuditError::Io {
            action: "serialise",
            path: path.clone(),
            source: e.into(),
        })?;
        tokio::task::spawn_blocking(move || {
            crate::fsutil::write_atomically(&path, &bytes).map_err(|source| AuditError::Io {
                action: "write snapshot",
                path,
                source,
            })
        })
        .await
        .map_err(|_| AuditError::Stopped)??;
        Ok(seq)
    }

    /// A cluster leader: publish a starting point for replicas that join with an empty disk (a
    /// `checkpoint` record beginning a segment, and the guard state as of it, on the replicated
    /// log). The state is held still meanwhile: whatever changes it is recorded before the
    /// checkpoint or after the snapshot. The checkpoint's seq.
    pub async fn publish_snapshot(&self) -> Result<u64, AuditError> {
        // Writes recorded without the state's lock finish first (and wait for this).
        let _no_unlocked_writes = self.unlocked_writes.write().await;
        let state = self.state.lock().await;
        let snapshot = state.snapshot(self.audit.position());
        let position = self
            .audit
            .anchor(Box::new(move |at: &audit::Position| {
                let mut snapshot = snapshot;
                snapshot.position = at.clone();
                // Plain data: serialisable.
                serde_json::to_vec(&snapshot).unwrap_or_default()
            }))
            .await?;
        drop(state);
        Ok(position.seq)
    }

    /// Finish the actions a previous run decided but did not finish (it stopped between the
    /// `decided` record and the outcome). Safe to run again: a target already changed is a no-op.
    pub async fn resume_pending(&self) -> Result<Vec<Report>, PipelineError> {
        let mut state = self.state.lock().await;
        let mut reports = Vec::new();
        for p in state.pending() {
            let base = |kind: Kind| {
                let mut e = Entry::new(kind).rule(&p.rule).target(&p.target).action_id(&p.action_id);
                e.key = p.key.clone();
                e.event_id = p.event_id.clone();
                e
            };
            // A plan that no longer reads: the reason is the parser's, as recorded.
            let plan: Result<ActionPlan, serde_json::Error> = match &p.plan {
                Recorded::Known(plan) => Ok(plan.clone()),
                Recorded::Unreadable(v) => serde_json::from_value(v.clone()),
            };
            let kind = plan.as_ref().map(ActionPlan::kind).unwrap_or(ObjectKind::VirtualService);
            let target: Result<ObjectRef, _> = p.target.parse::<ObjectRef>().map(|t| ObjectRef { kind, ..t });
            let step: Option<&StepInfo> = p.step_down.as_ref();
            let outcome = match (&plan, target) {
                (Ok(plan), Ok(target)) => {
                    let decide = |obj: &Value| plan.decide(obj);
                    self.run(&target, &decide, &p.action_id, &p.rule, true).await
                }
                (Err(e), _) => Outcome::Failed { reason: format!("cannot resume: recorded plan unreadable: {e}") },
                (_, Err(e)) => Outcome::Failed { reason: format!("cannot resume: {e}") },
            };
            let mut entry = outcome_entry(base(outcome.kind()), &outcome, kind);
            if let (Some(step), Ok(plan)) = (step, &plan) {
                entry = step_outcome(entry, plan, step, &outcome);
            }
            if matches!(outcome, Outcome::Applied { .. } | Outcome::NoOp { .. })
                && let Some(arms) = &p.feedback_arms
            {
                entry = entry.detail(FeedbackArmsPart { feedback_arms: arms.clone() }.value());
            }
            if let Some(step) = &p.promotion {
                entry = entry.detail(PromotionPart { promotion: step.clone() }.value());
            }
            let why = entry.reason.take().map(|r| format!(": {r}")).unwrap_or_default();
            entry.reason = Some(format!("resumed after a restart (the previous run stopped during this action){why}"));
            let reason = entry.reason.clone();
            let records = self.record(&mut state, vec![entry]).await?;
            log_outcome(&outcome, &p.target, &p.action_id);
            if let Some(pending) = records.first().and_then(state::PendingVerification::from_record) {
                self.queue_verification(pending);
            }
            reports.push(Report {
                event_id: p.event_id.clone().unwrap_or_default(),
                rule: Some(p.rule.clone()),
                outcome: outcome.kind(),
                target: Some(p.target.clone()),
                action_id: Some(p.action_id.clone()),
                reason,
            });
        }
        Ok(reports)
    }
}

/// When the guards' state is written again: `every` at the latest, sooner once `records` records
/// or `bytes` bytes were appended since the last snapshot (a busy log), so that a restart after
/// a crash replays a bounded tail however busy the log was.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SnapshotPolicy {
    pub every: Duration,
    pub records: u64,
    pub bytes: u64,
}

impl SnapshotPolicy {
    /// Whether a snapshot is due, `records` records and `bytes` bytes and `elapsed` after the last.
    pub fn due(&self, records: u64, bytes: u64, elapsed: Duration) -> bool {
        records >= self.records || bytes >= self.bytes || elapsed >= self.every
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_due_after_the_interval_or_enough_records_or_bytes_whichever_comes_first() {
        let p = SnapshotPolicy { every: Duration::from_secs(30), records: 100_000, bytes: 64 << 20 };
        let (s1, s30) = (Duration::from_secs(1), Duration::from_secs(30));
        assert!(!p.due(99_999, (64 << 20) - 1, Duration::from_millis(29_999)), "nothing reached yet");
        assert!(p.due(0, 0, s30), "the interval");
        assert!(p.due(100_000, 0, s1), "many small records (1-alert payloads, feedback)");
        assert!(p.due(3_000, 64 << 20, s1), "few large records (50-alert deliveries)");
    }
}
