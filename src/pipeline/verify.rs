//! Verification: after an applied action, did traffic really move? Polled in a task until the
//! canary's share is low enough or the deadline passes, recorded either way.

use super::*;

/// What an `applied` record says about its verification (see `state::PendingVerification`).
pub(super) fn verify_detail(
    v: &crate::prometheus::verification::Verification,
    labels: &std::collections::BTreeMap<String, String>,
) -> VerifySpec {
    let (query, error) = match v.query.render(labels) {
        Ok(q) => (Some(q.trim().to_string()), None),
        Err(missing) => (None, Some(format!("verification query: {missing}"))),
    };
    VerifySpec {
        query,
        error,
        max_share: v.limits.max_share,
        deadline_ms: v.limits.deadline.as_millis() as u64,
        interval_ms: v.limits.interval.as_millis() as u64,
        step_weight: None,
        min_share: None,
    }
}

impl Pipeline {
    pub(super) fn queue_verification(&self, pending: state::PendingVerification) {
        // Only fails when the verifier is gone (shutting down): the next start resumes it.
        let _ = self.verify_tx.send(pending);
    }

    /// Start verifying: the verifications a previous run left pending first, then each one
    /// queued by an applied action, concurrently, until `token` is cancelled (what is still
    /// pending then is resumed at the next start: its `applied` record says so).
    pub async fn spawn_verifier(
        self: &Arc<Self>,
        token: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let mut rx = self.verify_rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        // What was queued before (a cluster replica's earlier term) is in the state too.
        if let Some(rx) = rx.as_mut() {
            while rx.try_recv().is_ok() {}
        }
        for pending in self.state.lock().await.verifications() {
            self.queue_verification(pending);
        }
        let pipeline = self.clone();
        tokio::spawn(async move {
            let Some(mut rx) = rx else { return };
            let mut running = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    Some(pending) = rx.recv() => {
                        let (pipeline, token) = (pipeline.clone(), token.clone());
                        running.spawn(async move { pipeline.verify(pending, token).await });
                    }
                    Some(_) = running.join_next(), if !running.is_empty() => {}
                }
            }
            running.abort_all();
            // A cluster replica may lead again later: the next verifier takes the queue.
            *pipeline.verify_rx.lock().unwrap_or_else(|p| p.into_inner()) = Some(rx);
        })
    }

    /// Poll one verification to its end and record it (see `crate::prometheus::verification`).
    #[instrument(skip_all, fields(action_id = %p.action_id, rule = %p.rule, target = %p.target))]
    pub(super) async fn verify(&self, p: state::PendingVerification, token: tokio_util::sync::CancellationToken) {
        use crate::prometheus::verification::{Answer, Limits, Step, judge};
        let settings = Limits {
            max_share: p.max_share,
            deadline: Duration::from_millis(p.deadline_ms),
            interval: Duration::from_millis(p.interval_ms),
            min_share: p.min_share,
        };
        let mut last = None;
        let step = loop {
            let answer = match (&p.query, &self.prometheus) {
                (Err(why), _) => Answer::Error(why.clone()),
                (_, None) => Answer::Error("no `prometheus:` is configured".into()),
                (Ok(q), Some(prom)) => match prom.value(q, settings.interval.min(Duration::from_secs(10))).await {
                    Ok(Some(v)) => Answer::Share(v),
                    Ok(None) => Answer::NoData,
                    Err(e) => Answer::Error(e),
                },
            };
            let step = judge(&settings, &answer, last, p.started, Utc::now());
            match step {
                Step::Wait { last: l, .. } => {
                    last = l;
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(settings.interval) => {}
                    }
                }
                done => break done,
            }
        };
        let (kind, reason) = match &step {
            Step::Verified { share, after_seconds } => {
                (Kind::Verified, format!("canary share {share} after {after_seconds:.0}s"))
            }
            Step::Unverified { why, .. } => (Kind::Unverified, why.clone()),
            Step::Wait { .. } => return,
        };
        let mut entry = Entry::new(kind)
            .rule(&p.rule)
            .target(&p.target)
            .action_id(&p.action_id)
            .reason(&reason)
            .detail(json!({ "verification": step, "query": p.query.as_ref().ok() }));
        entry.event_id = p.event_id.clone();
        MetricEvent::Verification { rule: &p.rule, result: kind.as_str() }.emit();
        if kind == Kind::Unverified {
            match p.min_share {
                Some(_) => {
                    tracing::error!(target_object = %p.target, action_id = %p.action_id, %reason, "promotion step not verified: traffic did not move up")
                }
                None => {
                    tracing::error!(target_object = %p.target, action_id = %p.action_id, %reason, "rollback not verified: traffic did not move")
                }
            }
            if let Ok(obj) = p.target.parse::<ObjectRef>() {
                let notice = Notice {
                    warning: true,
                    reason: "BackstopUnverified",
                    message: notice_message(&p.action_id, &p.rule, &reason, self.settings().ui_url.as_deref()),
                };
                self.target.notify(&obj, &notice).await;
            }
        } else {
            info!(target_object = %p.target, action_id = %p.action_id, %reason, "traffic verified");
        }
        let mut state = self.state.lock().await;
        if let Err(e) = self.record(&mut state, vec![entry]).await {
            warn!(error = %e, "could not record the verification; it is resumed at the next start");
        }
    }
}
