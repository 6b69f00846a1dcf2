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
}

impl ChainCheck {
    /// One line for the page's header.
    pub fn line(&self) -> String {
        let at = self.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        match self.intact {
            true => format!("chain intact ({}), verified {at}", self.summary),
            false => format!("CHAIN BROKEN: {} (verified {at})", self.summary),
        }
    }
}

impl Pipeline {
    /// Verify the whole log now (off the async workers) and keep the verdict.
    pub async fn check_chain(&self) -> ChainCheck {
        let dir = self.audit.dir().to_path_buf();
        let verdict = tokio::task::spawn_blocking(move || audit::verify(&dir)).await;
        let (intact, summary) = match verdict {
            Ok(Ok(r)) => (true, format!("{} records, seq {}..{}", r.records, r.first_seq, r.last_seq)),
            Ok(Err(e)) => (false, e.to_string()),
            Err(e) => (false, format!("the check did not finish: {e}")),
        };
        if !intact {
            tracing::error!(problem = %summary, "audit log chain broken");
        }
        MetricEvent::ChainChecked { intact }.emit();
        let check = ChainCheck { at: Utc::now(), intact, summary };
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
