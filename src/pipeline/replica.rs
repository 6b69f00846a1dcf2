//! The pipeline in a cluster replica: whether it may act now (its [`Gate`]), and the records the
//! replicated log brings, written to the audit log and folded into the guards' state exactly as
//! the leader folded them, so a takeover starts from the same state.

use super::*;

/// Whether this process may act and acknowledge.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Gate {
    /// A single process: always.
    #[default]
    Always,
    /// A cluster's leader, until this instant by its own clock (its lease's acting window).
    LeadingUntil(DateTime<Utc>),
    /// A cluster replica that does not lead; the leader, if known.
    Following(Option<String>),
}

impl Gate {
    pub fn acts_at(&self, now: DateTime<Utc>) -> bool {
        match self {
            Gate::Always => true,
            Gate::LeadingUntil(until) => now < *until,
            Gate::Following(_) => false,
        }
    }

    /// How long an action may take at `now`: the configured timeout, cut to what is left of
    /// the acting window (a deposed leader's write must end before a successor can act).
    pub fn action_deadline(&self, now: DateTime<Utc>, timeout: Duration) -> Option<Duration> {
        match self {
            Gate::Always => Some(timeout),
            Gate::LeadingUntil(until) => (*until - now).to_std().ok().filter(|d| !d.is_zero()).map(|d| d.min(timeout)),
            Gate::Following(_) => None,
        }
    }
}

/// The `control` record a new leader writes once it has caught up and resumed what its
/// predecessor left in flight.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Takeover {
    pub epoch: u32,
    pub leader: String,
    /// The replica this one followed before, if it followed one.
    pub previous: Option<String>,
    /// Where in the replicated log the new epoch begins.
    pub marker_offset: i64,
    /// From the lease taken to this record: marker, catch-up, resumed actions.
    pub handover_ms: u64,
    /// Actions the previous leader decided and did not finish, resumed now.
    pub resumed: usize,
}

impl Pipeline {
    /// Record a takeover (see [`Takeover`]).
    pub async fn record_takeover(&self, t: &Takeover) -> Result<Record, AuditError> {
        let from = t.previous.as_deref().map(|p| format!(" from {p}")).unwrap_or_default();
        let entry = Entry::new(Kind::Control)
            .source("cluster")
            .actor(&t.leader)
            .reason(format!(
                "{} took over as leader in epoch {}{from} after {} ms ({} interrupted action(s) resumed)",
                t.leader, t.epoch, t.handover_ms, t.resumed
            ))
            .detail(json!({ "control": Control::Takeover, "takeover": t }));
        let mut state = self.state.lock().await;
        let records = self.record(&mut state, vec![entry]).await?;
        records.into_iter().next().ok_or(AuditError::Stopped)
    }

    pub fn gate(&self) -> Gate {
        self.gate.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_gate(&self, gate: Gate) {
        *self.gate.write().unwrap_or_else(|p| p.into_inner()) = gate;
    }

    /// A cluster replica's distance behind the replicated log, as last measured: messages not
    /// yet applied, and how long ago the last one applied was committed (None before the first
    /// measurement, and outside cluster mode).
    pub fn replication_lag(&self) -> Option<ReplicationLag> {
        *self.replication_lag.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_replication_lag(&self, lag: ReplicationLag) {
        *self.replication_lag.write().unwrap_or_else(|p| p.into_inner()) = Some(lag);
    }

    /// Write lines of the replicated log to the audit log and fold the new ones into the
    /// guards' state (under its lock, so a snapshot never claims records it has not folded).
    pub async fn apply_replicated(&self, first_seq: u64, lines: Vec<String>) -> Result<audit::Applied, AuditError> {
        let mut state = self.state.lock().await;
        let applied = self.audit.apply(first_seq, lines.clone()).await?;
        // What the log already had (a leader's own batch) was folded when it was written.
        for line in lines.iter().skip(applied.skipped as usize).take(applied.written as usize) {
            match serde_json::from_str::<Record>(line) {
                Ok(record) => state.observe(&record),
                Err(e) => warn!(error = %e, "a replicated record could not be folded into the state"),
            }
        }
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_acts_only_within_its_window_and_its_actions_end_before_it_does() {
        let now = Utc::now();
        let timeout = Duration::from_secs(10);
        assert_eq!(Gate::Always.action_deadline(now, timeout), Some(timeout));
        let leading = Gate::LeadingUntil(now + chrono::Duration::seconds(4));
        assert!(leading.acts_at(now));
        assert_eq!(leading.action_deadline(now, timeout), Some(Duration::from_secs(4)));
        assert!(!leading.acts_at(now + chrono::Duration::seconds(4)));
        assert_eq!(leading.action_deadline(now + chrono::Duration::seconds(5), timeout), None);
        assert!(!Gate::Following(Some("b".into())).acts_at(now));
    }
}

/// See [`Pipeline::replication_lag`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplicationLag {
    pub messages: i64,
    /// None while messages wait and none was applied yet.
    pub seconds: Option<f64>,
}

impl ReplicationLag {
    /// How far behind a follower may be and still count as caught up (Ready): a takeover by it
    /// would first have to apply the rest.
    pub const READY_WITHIN_SECONDS: f64 = 10.0;

    /// Why a follower this far behind is not ready, if it is not.
    pub fn not_caught_up(&self) -> Option<String> {
        if self.messages <= 0 {
            return None;
        }
        match self.seconds {
            Some(s) if s <= Self::READY_WITHIN_SECONDS => None,
            Some(s) => Some(format!(
                "replicated log: {} messages behind, the last applied committed {s:.0}s ago (caught up within {}s)",
                self.messages,
                Self::READY_WITHIN_SECONDS
            )),
            None => Some(format!("replicated log: {} messages behind, none applied yet", self.messages)),
        }
    }
}
