//! The chain's check for the on-call page: `audit verify` run in the background, its verdict and
//! when it ran kept for every page (and `backstop_audit_chain_ok`), so nobody reads a trail at
//! 3 a.m. without knowing whether it is intact.

use super::*;

/// How often the whole log is verified while the service runs (and once at start).
pub const CHAIN_CHECK_EVERY: Duration = Duration::from_secs(15 * 60);

/// The last verification of the log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChainCheck {
    pub at: DateTime<Utc>,
    /// Intact: what was verified (`audit verify`'s summary); broken: where and why.
    pub intact: bool,
    pub summary: String,
    /// The last record verified (0: the log was empty).
    pub last_seq: u64,
}

impl ChainCheck {
    /// One line for the page's header, with what the log has written since (`log_seq`, its last
    /// record now): a check at start sees an empty or short log, and the next is 15 minutes away.
    pub fn line(&self, log_seq: u64) -> String {
        let at = self.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        if !self.intact {
            return format!("CHAIN BROKEN: {} (verified {at})", self.summary);
        }
        let verified = match self.last_seq {
            0 => format!("chain intact (the log was empty), verified {at}"),
            _ => format!("chain intact ({}), verified {at}", self.summary),
        };
        match log_seq > self.last_seq {
            true => format!(
                "{verified}; seq {}..{log_seq} written since, verified at the next check (every {} min)",
                self.last_seq + 1,
                CHAIN_CHECK_EVERY.as_secs() / 60
            ),
            false => verified,
        }
    }
}

impl Pipeline {
    /// Verify the whole log now (off the async workers) and keep the verdict.
    pub async fn check_chain(&self) -> ChainCheck {
        let dir = self.audit.dir().to_path_buf();
        let verdict = tokio::task::spawn_blocking(move || audit::verify(&dir)).await;
        let (intact, summary, last_seq) = match verdict {
            Ok(Ok(r)) => (true, format!("{} records, seq {}..{}", r.records, r.first_seq, r.last_seq), r.last_seq),
            Ok(Err(e)) => (false, e.to_string(), 0),
            Err(e) => (false, format!("the check did not finish: {e}"), 0),
        };
        if !intact {
            tracing::error!(problem = %summary, "audit log chain broken");
        }
        MetricEvent::ChainChecked { intact }.emit();
        let check = ChainCheck { at: Utc::now(), intact, summary, last_seq };
        *self.chain.write().unwrap_or_else(|p| p.into_inner()) = Some(check.clone());
        check
    }

    /// The last verdict, if the log was verified since start.
    pub fn chain_check(&self) -> Option<ChainCheck> {
        self.chain.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Verify at start and every [`CHAIN_CHECK_EVERY`] until `token` is cancelled.
    pub fn spawn_chain_checks(
        self: &Arc<Self>,
        token: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let pipeline = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHAIN_CHECK_EVERY);
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => { pipeline.check_chain().await; }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(intact: bool, summary: &str, last_seq: u64) -> ChainCheck {
        let at = DateTime::parse_from_rfc3339("2026-12-03T03:00:00Z").unwrap().with_timezone(&Utc);
        ChainCheck { at, intact, summary: summary.into(), last_seq }
    }

    #[test]
    fn a_check_of_an_empty_log_says_so_rather_than_counting_zero_records() {
        assert_eq!(
            check(true, "0 records, seq 0..0", 0).line(0),
            "chain intact (the log was empty), verified 2026-12-03T03:00:00Z"
        );
    }

    #[test]
    fn records_written_after_the_check_are_named_as_not_yet_verified() {
        let c = check(true, "4 records, seq 1..4", 4);
        assert_eq!(c.line(4), "chain intact (4 records, seq 1..4), verified 2026-12-03T03:00:00Z");
        assert_eq!(
            c.line(10),
            "chain intact (4 records, seq 1..4), verified 2026-12-03T03:00:00Z; \
             seq 5..10 written since, verified at the next check (every 15 min)"
        );
        assert_eq!(
            check(true, "0 records, seq 0..0", 0).line(3),
            "chain intact (the log was empty), verified 2026-12-03T03:00:00Z; \
             seq 1..3 written since, verified at the next check (every 15 min)"
        );
    }

    #[test]
    fn a_broken_chain_is_only_the_break() {
        let c = check(false, "seq 3: prev does not match", 0);
        assert_eq!(c.line(10), "CHAIN BROKEN: seq 3: prev does not match (verified 2026-12-03T03:00:00Z)");
    }
}
