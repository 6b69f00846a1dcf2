//! Alerts: each recorded, matched against the rules, each decision vetted by the guards,
//! confirmed by Prometheus if its rule asks, then acted on through the target.

use super::*;

/// A delivery's alerts made ready to record: everything that reads the alerts as delivered is
/// done here, at once, while they are still in the processor's cache. Waiting for the durable
/// write lets other requests run on this core meanwhile; what was read before it is cold after
/// (the rules' label lookups after that wait were a fourteenth of a 50-alert request, almost all
/// cache misses). So the delivery can be dropped before the wait, and only the alerts a rule
/// matches, owned, go on.
pub struct PreparedAlerts {
    received: Vec<Entry>,
    kafka: Option<KafkaPosition>,
    /// Alerts received per source, for the metrics.
    counts: Vec<(SourceKind, u64)>,
    rules: Arc<RuleSet>,
    /// In the delivery's order: the answer for an alert no rule matches, or the alert to decide.
    slots: Vec<Slot>,
}

enum Slot {
    Answered(Report),
    Decide(Alert),
}

/// The records of one delivery's alerts that change no guard (holds, refusals before acting,
/// duplicates' no-ops), written together: with the next record that does change one (prepended,
/// so the log keeps the delivery's order), or at the delivery's end. In an alert storm on a held
/// target each alert was its own append and its own wait for the disk, one after another (655
/// 50-alert deliveries a second on the build machine, more fsyncs than deliveries). Nothing is
/// answered before they are durable. They are observed by the guards when written: what they
/// change (a held rollback stops a promotion, a failed confirmation frees its key) matters to
/// no later alert of the same delivery, whose rules roll back (promotions are decided on
/// feedback, which does not defer), and concurrent deliveries already see such records late.
#[derive(Default)]
pub(super) struct Deferred(Vec<Entry>);

/// At most this many records are held (32 alerts' `matched` and `held`), then written: a
/// delivery of thousands of alerts holds no more than that. Measured on a storm of 64 concurrent
/// 50-alert deliveries, they are 12-15 MB of memory more than writing each at once; 8 would hold
/// about a fifth of that but halve the storm's rate (one write per 4 alerts instead of 32).
const DEFERRED_MAX: usize = 64;

impl Deferred {
    /// `entries`, after what was deferred so far.
    fn before(defer: Option<&mut Deferred>, entries: Vec<Entry>) -> Vec<Entry> {
        match defer {
            Some(d) if !d.0.is_empty() => {
                let mut all = std::mem::take(&mut d.0);
                all.extend(entries);
                all
            }
            _ => entries,
        }
    }
}

impl Pipeline {
    /// Record the alerts durably, then decide and act on each. Returns once everything is recorded.
    pub async fn alerts<A: AlertView + Sync>(
        &self,
        alerts: &[A],
        context: Value,
    ) -> Result<Vec<Report>, PipelineError> {
        let prepared = self.prepare_alerts(alerts, &context)?;
        self.record_alerts(prepared).await
    }

    /// The first half of [`Pipeline::alerts`], which reads the alerts as delivered: their
    /// record's text, and which ones a rule matches (with the rules of this moment).
    pub fn prepare_alerts<A: AlertView>(&self, alerts: &[A], context: &Value) -> Result<PreparedAlerts, PipelineError> {
        // One record per delivery (a payload's alerts are all of one source): what the delivery
        // says is written once, each alert only with what is its own (`event::AlertsRecord`).
        let mut received = Vec::with_capacity(1);
        let mut counts = Vec::with_capacity(1);
        for run in alerts.chunk_by(|a, b| a.source() == b.source()) {
            let entry = Entry::new(Kind::Received).source(run[0].source().as_str());
            // About 1 kB an alert, so a large delivery's text is not grown (copied) many times.
            let text = AlertsRecord::of(context, run).to_json(512 + 1024 * run.len()).map_err(AuditError::serialise)?;
            received.push(entry.detail_text(text));
            counts.push((run[0].source(), run.len() as u64));
        }
        let rules = self.rules();
        let slots = alerts
            .iter()
            .map(|alert| {
                // Most alerts match no rule: they are answered from the alert as read, and only
                // one that a rule matches is made an owned `Alert` for the decision.
                if rules.matches_any(alert) {
                    Slot::Decide(alert.to_alert())
                } else {
                    Slot::Answered(Report {
                        event_id: alert.id().to_string(),
                        rule: None,
                        outcome: Kind::Received,
                        target: None,
                        action_id: None,
                        reason: Some("no rule matches".into()),
                    })
                }
            })
            .collect();
        Ok(PreparedAlerts { received, kafka: KafkaPosition::read(Some(context), false), counts, rules, slots })
    }

    /// The second half of [`Pipeline::alerts`]: record, then decide and act on each alert a rule
    /// matched. Returns once everything is recorded.
    #[instrument(name = "alerts", skip_all, fields(alerts = prepared.slots.len()))]
    pub async fn record_alerts(&self, prepared: PreparedAlerts) -> Result<Vec<Report>, PipelineError> {
        let PreparedAlerts { received, kafka, counts, rules, slots } = prepared;
        // A Kafka position is guard state: recorded and noted under the state's lock, so that no
        // snapshot falls between the record and the note.
        let held = match &kafka {
            Some(_) => Some(self.state.lock().await),
            None => None,
        };
        self.audit.append(received).await?;
        if let (Some(mut state), Some(k)) = (held, kafka) {
            state.note_kafka(&k.topic, k.partition, k.offset);
        }
        for (source, count) in counts {
            MetricEvent::Received { source: source.as_str(), outcome: "accepted", count }.emit();
        }
        let mut reports = Vec::with_capacity(slots.len());
        let mut deferred = Deferred::default();
        for slot in slots {
            let alert = match slot {
                Slot::Answered(report) => {
                    reports.push(report);
                    continue;
                }
                Slot::Decide(alert) => alert,
            };
            for decision in rules.decide(&alert, Utc::now()) {
                if let Some(rule) = rules.get(decision.rule()).cloned() {
                    // Boxed: a decision's future is large, and most deliveries take none; inline,
                    // it would make every delivery's future as large (and copied as often).
                    reports.push(Box::pin(self.decided(&alert, &rule, decision, None, Some(&mut deferred))).await?);
                }
            }
        }
        if !deferred.0.is_empty() {
            self.record_unlocked(deferred.0).await?;
        }
        Ok(reports)
    }

    #[instrument(skip_all, fields(event_id = %alert.id, rule = %rule.name))]
    pub(super) async fn decided(
        &self,
        alert: &Alert,
        rule: &Rule,
        decision: Decision,
        feedback: Option<&FeedbackContext>,
        defer: Option<&mut Deferred>,
    ) -> Result<Report, PipelineError> {
        /// A `matched` record's detail, written as text at once: a storm holds many (as a map,
        /// each took about 700 bytes more).
        #[derive(Serialize)]
        struct Matched<'a> {
            action: String,
            status: AlertStatus,
            #[serde(skip_serializing_if = "Option::is_none")]
            evidence: Option<&'a Value>,
        }
        let matched = Entry::new(Kind::Matched).event_id(&alert.id).source(alert.source.as_str()).rule(&rule.name);
        let matched = matched.detail_of_sized(
            &Matched { action: rule.action_summary(), status: alert.status, evidence: feedback.map(|f| &f.evidence) },
            128,
        )?;
        // An action on feedback, once applied (or found done), ends the comparison; a
        // promotion's step says where the canary goes.
        let ends_comparison = |entry: Entry| match feedback {
            Some(f) => {
                let entry = entry.detail(FeedbackArmsPart { feedback_arms: f.arms.clone() }.value());
                match &f.promotion {
                    Some(step) => entry.detail(PromotionPart { promotion: step.clone() }.value()),
                    None => entry,
                }
            }
            None => entry,
        };
        let report =
            |outcome: Kind, target: Option<&ObjectRef>, action_id: Option<&str>, reason: Option<String>| Report {
                event_id: alert.id.clone(),
                rule: Some(rule.name.clone()),
                outcome,
                target: target.map(ToString::to_string),
                action_id: action_id.map(str::to_string),
                reason,
            };
        let (key, target, plan, dry_run) = match decision {
            Decision::Hold { reason, .. } => {
                let held = Entry::new(Kind::Held).event_id(&alert.id).rule(&rule.name).reason(&reason);
                self.record_quiet(defer, vec![matched, held]).await?;
                return Ok(report(Kind::Held, None, None, Some(reason)));
            }
            Decision::Refuse { reason, .. } => {
                let refused = Entry::new(Kind::Refused).event_id(&alert.id).rule(&rule.name).reason(&reason);
                self.record_quiet(defer, vec![matched, refused]).await?;
                return Ok(report(Kind::Refused, None, None, Some(reason)));
            }
            Decision::Act { key, target, plan, dry_run, .. } => (key, target, plan, dry_run),
        };
        let mut state = self.state.lock().await;
        let now = Utc::now();
        let settings = self.settings();
        let cooldown = rule.cooldown.unwrap_or(settings.guards.default_cooldown);
        // What any rule's cooldown still needs is kept, not only this rule's.
        state.prune(now, &settings.guards, longest_cooldown(&self.rules()));
        let target_name = target.to_string();
        let base = |kind: Kind| {
            let e = Entry::new(kind).event_id(&alert.id).rule(&rule.name).target(&target_name).key(&key);
            // A promotion's held step says which: a held record without one is a rollback held,
            // which stops promotions on the target (see `state::promotion`).
            match (kind, feedback.and_then(|f| f.promotion.as_ref())) {
                (Kind::Held, Some(step)) => e.detail(PromotionPart { promotion: step.clone() }.value()),
                _ => e,
            }
        };
        // A new alert for a target this rule is stepping down: straight to 0, at once (no
        // cooldown or cap: the action is under way), unless on-call paused the target.
        if let Some(sd) = state.step_down(&target_name).filter(|d| d.rule == rule.name).cloned()
            && !state.has_key(&key)
            && state.paused(&target_name).is_none()
        {
            let mut sd = StepDown { event_id: Some(alert.id.clone()), ..sd };
            sd.to_zero(now);
            let why =
                format!("a new alert during the gradual rollback begun by action {}: straight to 0 at once", sd.origin);
            info!(target = %target_name, origin = %sd.origin, "new alert during a gradual rollback: straight to 0");
            let lead = Deferred::before(defer, vec![matched]);
            return Ok(self.take_step(state, &sd, lead, Some(&key), &why).await?.0);
        }
        // Prometheus is asked without holding the state (other events go on meanwhile); what
        // changed while it answered is vetted again after.
        let rules = self.rules();
        let rule_cooldown =
            |name: &str| rules.get(name).and_then(|r| r.cooldown).unwrap_or(settings.guards.default_cooldown);
        let vet = |state: &GuardState, now| match rule.promotion() {
            Some(p) => state.vet_promotion(&key, &target_name, p.canary_name(), p.interval, &rule_cooldown, now),
            None => state.vet(&rule.name, &key, &target_name, cooldown, &settings.guards, now),
        };
        let mut verdict = vet(&state, now);
        let mut confirmed = None;
        if verdict == GuardVerdict::Proceed
            && let Some(confirm) = &rule.confirm
        {
            drop(state);
            confirmed = Some(self.confirm(confirm, alert).await);
            state = self.state.lock().await;
            verdict = vet(&state, Utc::now());
        }
        match verdict {
            GuardVerdict::Duplicate { action_id } => {
                let reason = format!("duplicate delivery: this alert was already handled by action {action_id}");
                // Marked, so it is not taken for the outcome of that action (still in flight, maybe).
                let noop = base(Kind::Noop)
                    .action_id(&action_id)
                    .reason(&reason)
                    .detail(DuplicatePart { duplicate: true }.value());
                drop(state);
                self.record_quiet(defer, vec![matched, noop]).await?;
                Ok(report(Kind::Noop, Some(&target), Some(&action_id), Some(reason)))
            }
            GuardVerdict::Held { reason } => {
                drop(state);
                self.record_quiet(defer, vec![matched, base(Kind::Held).reason(&reason)]).await?;
                // Every hold is recorded; in a storm the log says so once a minute, with a count.
                if let Some(not_logged) = self.held_log.say(&format!("{target_name} {}", rule.name), Utc::now()) {
                    info!(target = %target_name, rule = %rule.name, %reason, not_logged, "held");
                }
                Ok(report(Kind::Held, Some(&target), None, Some(reason)))
            }
            GuardVerdict::Proceed => {
                let confirmation = match confirmed {
                    None => None,
                    Some(answer) => match answer {
                        (confirm::ConfirmVerdict::Go, evidence) => Some(evidence),
                        (confirm::ConfirmVerdict::Hold(reason), evidence) => {
                            let held = base(Kind::Held)
                                .reason(&reason)
                                .detail(ConfirmationPart { confirmation: Some(evidence) }.value());
                            drop(state);
                            self.record_quiet(defer, vec![matched, held]).await?;
                            info!(target = %target_name, %reason, "held by its confirmation");
                            return Ok(report(Kind::Held, Some(&target), None, Some(reason)));
                        }
                        (confirm::ConfirmVerdict::Fail(reason), evidence) => {
                            let failed = base(Kind::Failed)
                                .reason(&reason)
                                .detail(ConfirmationPart { confirmation: Some(evidence) }.value());
                            drop(state);
                            self.record_quiet(defer, vec![matched, failed]).await?;
                            return Ok(report(Kind::Failed, Some(&target), None, Some(reason)));
                        }
                    },
                };
                let action_id = uuid::Uuid::now_v7().to_string();
                let decide = |obj: &Value| plan.decide(obj);
                let dry = dry_run || settings.dry_run;
                let verify = rule.verify.as_ref().map(|v| verify_detail(v, &alert.labels)).map(|v| {
                    match feedback.and_then(|f| f.promotion.as_ref()) {
                        Some(step) => v.for_promotion(step.from, step.to),
                        None => v,
                    }
                });
                let step = stepdown::is_step(&plan).then(|| StepInfo {
                    origin: action_id.clone(),
                    step: 1,
                    interval_ms: rule.step_interval.map_or(60_000, |i| i.as_millis() as u64),
                    verify: verify.clone(),
                    remaining: None,
                    next_at: None,
                    next: None,
                });
                let mut decided = base(Kind::Decided)
                    .action_id(&action_id)
                    .detail(json!({
                        "action": rule.action_summary(),
                        "dry_run": dry,
                        "target": self.target.describe(),
                    }))
                    .detail(PlanPart { plan: Recorded::Known(plan.clone()) }.value())
                    .detail(ConfirmationPart { confirmation }.value());
                if let Some(step) = &step {
                    decided = decided.detail(StepDownPart { step_down: step.clone() }.value());
                }
                // Carried by `decided` too, so an action resumed after a crash still ends it.
                let decided = ends_comparison(decided);
                if dry {
                    let outcome = self.run(&target, &decide, &action_id, &rule.name, false).await;
                    let reason = format!("dry run: would be {}", outcome_word(&outcome));
                    let mut entry =
                        outcome_entry(base(Kind::DryRun).action_id(&action_id), &outcome, target.kind).reason(&reason);
                    if let Some(step) = feedback.and_then(|f| f.promotion.as_ref()) {
                        entry = entry.detail(PromotionPart { promotion: step.clone() }.value());
                    }
                    self.record(&mut state, Deferred::before(defer, vec![matched, entry])).await?;
                    return Ok(report(Kind::DryRun, Some(&target), Some(&action_id), Some(reason)));
                }
                self.record(&mut state, Deferred::before(defer, vec![matched, decided])).await?;
                let promotion = feedback.is_some_and(|f| f.promotion.is_some());
                if promotion {
                    crate::failpoint::crash_point("promotion.decided");
                }
                // The target is read and written without holding the state: the `decided` record
                // marks the action in flight (the guards hold this rule on this target meanwhile).
                drop(state);
                let outcome = self.run(&target, &decide, &action_id, &rule.name, true).await;
                if promotion {
                    crate::failpoint::crash_point("promotion.written");
                }
                let mut state = self.state.lock().await;
                let entry = outcome_entry(base(outcome.kind()).action_id(&action_id), &outcome, target.kind);
                let entry = if matches!(outcome, Outcome::Applied { .. } | Outcome::NoOp { .. }) {
                    ends_comparison(entry)
                } else {
                    entry
                };
                let entry = match (&outcome, &plan) {
                    (Outcome::Applied { .. }, ActionPlan::FlaggerRollback { hold_ms }) => {
                        entry.detail(FlaggerHoldPart { flagger_hold_ms: *hold_ms }.value())
                    }
                    _ => entry,
                };
                let entry = match (&outcome, verify, &step) {
                    (_, _, Some(step)) => step_outcome(entry, &plan, step, &outcome),
                    (Outcome::Applied { .. }, Some(verify), None) => entry.detail(VerifyPart { verify }.value()),
                    _ => entry,
                };
                let reason = entry.reason.clone();
                let records = self.record(&mut state, vec![entry]).await?;
                log_outcome(&outcome, &target_name, &action_id);
                if let Some(pending) = records.first().and_then(state::PendingVerification::from_record) {
                    self.queue_verification(pending);
                }
                // The canary was already at or below the first step: the alert still asks for a
                // change, so the next step is taken now rather than after the interval.
                if matches!(outcome, Outcome::NoOp { .. })
                    && let Some(next) = state.step_down(&target_name).filter(|d| d.origin == action_id).cloned()
                {
                    let why = format!(
                        "step {} of the gradual rollback begun by action {action_id}, at once: \
                         the canary was already at or below step {}",
                        next.step,
                        next.step - 1
                    );
                    return Ok(self.take_step(state, &next, Vec::new(), None, &why).await?.0);
                }
                Ok(report(outcome.kind(), Some(&target), Some(&action_id), reason))
            }
        }
    }

    /// Record what changes no guard: deferred with the delivery's others (see [`Deferred`]),
    /// or at once, without the state's lock ([`Pipeline::record_unlocked`]).
    async fn record_quiet(&self, defer: Option<&mut Deferred>, entries: Vec<Entry>) -> Result<(), AuditError> {
        match defer {
            Some(d) if d.0.len() + entries.len() <= DEFERRED_MAX => {
                d.0.extend(entries);
                Ok(())
            }
            Some(d) => self.record_unlocked(Deferred::before(Some(d), entries)).await.map(|_| ()),
            None => self.record_unlocked(entries).await.map(|_| ()),
        }
    }

    /// Ask Prometheus whether the alert's claim still holds (the rule's `confirm:`).
    #[instrument(skip_all, fields(event_id = %alert.id))]
    pub(super) async fn confirm(&self, confirm: &confirm::Confirm, alert: &Alert) -> (confirm::ConfirmVerdict, Value) {
        let promql = match confirm.query.render(&alert.labels) {
            Ok(q) => q.trim().to_string(),
            Err(missing) => {
                let why = format!("confirmation query: {missing}");
                return (confirm::ConfirmVerdict::Fail(why.clone()), json!({ "error": why }));
            }
        };
        let Some(prometheus) = &self.prometheus else {
            let why = "the rule asks Prometheus to confirm, but no `prometheus:` is configured".to_string();
            return (confirm::ConfirmVerdict::Hold(why.clone()), json!({ "query": promql, "error": why }));
        };
        let (verdict, evidence) = confirm.check(prometheus.as_ref(), &promql).await;
        info!(query = %promql, value = ?evidence.value, result = evidence.result, "confirmation");
        (verdict, evidence.to_json())
    }
}
