//! Step-downs: a rollback in steps, each step taken when it is due, verified, and recorded.

use super::*;

/// A step's outcome record: what comes next (`detail.step_down`), and, when it moved traffic and
/// the rule verifies, the verification of this step's weight.
pub(super) fn step_outcome(entry: Entry, plan: &ActionPlan, step: &StepInfo, outcome: &Outcome) -> Entry {
    let next = stepdown::after_outcome(plan, step, outcome, Utc::now());
    let entry = entry.detail(StepDownPart { step_down: next }.value());
    match (outcome, &step.verify) {
        (Outcome::Applied { .. }, Some(v)) => {
            entry.detail(VerifyPart { verify: stepdown::verify_for_step(v, outcome, plan) }.value())
        }
        _ => entry,
    }
}

impl Pipeline {
    /// Take the steps of gradual rollbacks when they are due, those a previous run left first
    /// (a step overdue at start is taken at once), until `token` is cancelled. A step under way
    /// when it is cancelled is finished first.
    pub fn spawn_step_downs(
        self: &Arc<Self>,
        token: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let pipeline = self.clone();
        tokio::spawn(async move {
            let mut noted = std::collections::HashSet::new();
            loop {
                let next = pipeline.take_due_steps(&mut noted).await;
                let wait = next.map_or(Duration::from_secs(3600), |t| (t - Utc::now()).to_std().unwrap_or_default());
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = pipeline.step_wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        })
    }

    /// Take every step that is due; returns when the next one is. A paused target's step waits
    /// (recorded as `held` once per step); a step that cannot be recorded is tried again after
    /// its interval.
    pub(super) async fn take_due_steps(
        &self,
        noted: &mut std::collections::HashSet<(String, u32)>,
    ) -> Option<DateTime<Utc>> {
        let mut state = self.state.lock().await;
        let now = Utc::now();
        let due = state.due_steps(now);
        for sd in due {
            // Another step of it may have been taken while the state was released for a write.
            if state.step_down(&sd.target) != Some(&sd) {
                continue;
            }
            let later = now + chrono::Duration::milliseconds(i64::try_from(sd.interval_ms).unwrap_or(i64::MAX / 4));
            if let Some(paused) = state.paused(&sd.target) {
                state.postpone_step(&sd.target, later);
                if noted.insert((sd.origin.clone(), sd.step)) {
                    let mut held = Entry::new(Kind::Held)
                        .rule(&sd.rule)
                        .target(&sd.target)
                        .reason(format!(
                            "step {} of the gradual rollback begun by action {} waits: {paused}",
                            sd.step, sd.origin
                        ))
                        .detail(json!({ "step_down_waits": sd.info() }));
                    held.event_id = sd.event_id.clone();
                    if let Err(e) = self.record(&mut state, vec![held]).await {
                        warn!(error = %e, "could not record a held step");
                    }
                }
                continue;
            }
            let why = format!("step {} of the gradual rollback begun by action {}", sd.step, sd.origin);
            state = match self.take_step(state, &sd, Vec::new(), None, &why).await {
                Ok((_, state)) => state,
                Err(e) => {
                    warn!(error = %e, target = %sd.target, "could not take a step of a gradual rollback; trying again later");
                    let mut state = self.state.lock().await;
                    state.postpone_step(&sd.target, later);
                    state
                }
            };
        }
        state.next_step_due()
    }

    /// One step of a gradual rollback: `lead` records (the alert's `matched`, for a new alert),
    /// `decided`, the conditional write, and the outcome with what comes next.
    #[instrument(skip_all, fields(target = %sd.target, origin = %sd.origin, step = sd.step))]
    pub(super) async fn take_step<'a>(
        &'a self,
        mut state: tokio::sync::MutexGuard<'a, GuardState>,
        sd: &StepDown,
        lead: Vec<Entry>,
        key: Option<&str>,
        why: &str,
    ) -> Result<(Report, tokio::sync::MutexGuard<'a, GuardState>), PipelineError> {
        let action_id = uuid::Uuid::now_v7().to_string();
        let info = sd.info();
        let base = |kind: Kind| {
            let mut e = Entry::new(kind).rule(&sd.rule).target(&sd.target).action_id(&action_id);
            e.event_id = sd.event_id.clone();
            e.key = key.map(str::to_string);
            e
        };
        let decided = base(Kind::Decided)
            .reason(why)
            .detail(json!({ "target": self.target.describe() }))
            .detail(PlanPart { plan: Recorded::Known(sd.plan.clone()) }.value())
            .detail(StepDownPart { step_down: info.clone() }.value());
        let mut entries = lead;
        entries.push(decided);
        self.record(&mut state, entries).await?;
        crate::failpoint::crash_point("step_down.decided");
        drop(state);
        let kind = sd.plan.kind();
        let outcome = match sd.target.parse::<ObjectRef>() {
            Ok(t) => {
                let decide = |obj: &Value| sd.plan.decide(obj);
                self.run(&ObjectRef { kind, ..t }, &decide, &action_id, &sd.rule, true).await
            }
            Err(e) => Outcome::Refused { reason: format!("cannot step down: {e}") },
        };
        crate::failpoint::crash_point("step_down.written");
        let mut state = self.state.lock().await;
        let entry = step_outcome(outcome_entry(base(outcome.kind()), &outcome, kind), &sd.plan, &info, &outcome);
        let reason = entry.reason.clone();
        let records = self.record(&mut state, vec![entry]).await?;
        log_outcome(&outcome, &sd.target, &action_id);
        if let Some(pending) = records.first().and_then(state::PendingVerification::from_record) {
            self.queue_verification(pending);
        }
        let report = Report {
            event_id: sd.event_id.clone().unwrap_or_default(),
            rule: Some(sd.rule.clone()),
            outcome: outcome.kind(),
            target: Some(sd.target.clone()),
            action_id: Some(action_id),
            reason,
        };
        Ok((report, state))
    }
}
