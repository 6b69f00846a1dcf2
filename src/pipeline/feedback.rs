//! Feedback events: recorded and deduplicated, folded into the arms' comparisons, and a feedback
//! rule's finding decided and acted on like an alert's.

use super::*;

/// Why a feedback rule acts: its evidence, and the arms whose comparison the action ends.
pub(super) struct FeedbackContext {
    pub(super) evidence: Value,
    pub(super) arms: Vec<ArmKey>,
    /// A promotion's step: where the canary goes.
    pub(super) promotion: Option<StepUp>,
}

/// After a feedback rule's finding was held, refused or failed, the same finding is not
/// decided again for this long (each event would otherwise record it again).
pub const FEEDBACK_QUIET: Duration = Duration::from_secs(60);

/// A feedback rule's finding as the alert its records name: `feedback:RULE`, firing, with the
/// finding's labels, its comparison as the fingerprint.
pub(super) fn finding_alert(
    event_id: &str,
    source: SourceKind,
    rule: &Rule,
    finding: &crate::feedback::rule::Finding,
) -> Alert {
    Alert {
        id: event_id.to_string(),
        source,
        name: format!("feedback:{}", rule.name),
        status: AlertStatus::Firing,
        labels: finding.labels.clone(),
        annotations: Default::default(),
        starts_at: Utc::now(),
        ends_at: None,
        fingerprint: finding.comparison.clone(),
        generator_url: String::new(),
    }
}

impl Pipeline {
    /// Record a feedback event durably, count it in its arm, and act for every feedback rule
    /// that now finds the canary worse. `origin` says where it came from (`{"kafka": {topic,
    /// partition, offset}}` or `{"http": ...}`). An event counted before (a redelivery: same
    /// Kafka position or same id) is neither recorded nor counted again.
    pub async fn feedback(
        &self,
        f: &Feedback,
        source: SourceKind,
        origin: Value,
    ) -> Result<FeedbackReport, PipelineError> {
        let mut reports = self.feedback_batch(&[(f, &origin)], source).await?;
        Ok(reports.remove(0))
    }

    /// [`Pipeline::feedback`] for many events: their records are appended together (one
    /// durable write), then each is counted and judged in order. One report per event.
    #[instrument(skip_all, fields(events = events.len()))]
    pub async fn feedback_batch(
        &self,
        events: &[(&Feedback, &Value)],
        source: SourceKind,
    ) -> Result<Vec<FeedbackReport>, PipelineError> {
        /// A received record's detail: the event and where it came from (`kafka: {...}`),
        /// serialised straight from them.
        #[derive(Serialize)]
        struct Received<'a> {
            feedback: &'a Feedback,
            #[serde(flatten)]
            origin: &'a Value,
        }
        let rules = self.rules();
        let mut out: Vec<FeedbackReport> = Vec::with_capacity(events.len());
        let mut findings = Vec::new();
        {
            let mut state = self.state.lock().await;
            let mut fresh: Vec<usize> = Vec::new();
            let no_origin = Value::Object(Default::default());
            let mut in_batch: std::collections::HashSet<String> = std::collections::HashSet::new();
            let mut entries = Vec::new();
            for (i, (f, origin)) in events.iter().enumerate() {
                let event_id = f.id.clone().unwrap_or_else(|| match &origin["kafka"] {
                    k if k.is_object() => {
                        format!("kafka:{}/{}/{}", k["topic"].as_str().unwrap_or("?"), k["partition"], k["offset"])
                    }
                    _ => format!("feedback-{}", uuid::Uuid::now_v7()),
                });
                let origin = Origin::of(f, origin);
                // Also a repeat within this batch (by id, or by Kafka position).
                let id = origin.id.map(|id| format!("id:{id}"));
                let position = origin.kafka.map(|(t, p, o)| format!("kafka:{t}/{p}/{o}"));
                let repeated = state.arms().seen(&origin)
                    || id.as_ref().is_some_and(|k| in_batch.contains(k))
                    || position.as_ref().is_some_and(|k| in_batch.contains(k));
                out.push(FeedbackReport { event_id: event_id.clone(), duplicate: repeated, reports: Vec::new() });
                if repeated {
                    continue;
                }
                in_batch.extend(id.into_iter().chain(position));
                // Its keys go next to `feedback`; anything but an object adds none.
                let origin = if events[i].1.is_object() { events[i].1 } else { &no_origin };
                let entry = Entry::new(Kind::Received)
                    .event_id(&event_id)
                    .source(source.as_str())
                    .target(format!("{}/{}", f.namespace, f.service))
                    .detail_of(&Received { feedback: f, origin })?;
                entries.push(entry);
                fresh.push(i);
            }
            let duplicates = (events.len() - entries.len()) as u64;
            MetricEvent::Received { source: source.as_str(), outcome: "duplicate", count: duplicates }.emit();
            if entries.is_empty() {
                return Ok(out);
            }
            let accepted = entries.len() as u64;
            let records = self.audit.append(entries).await?;
            MetricEvent::Received { source: source.as_str(), outcome: "accepted", count: accepted }.emit();
            let quiet = self.feedback_quiet.lock().unwrap_or_else(|p| p.into_inner());
            for (i, record) in fresh.iter().zip(&records) {
                let (f, origin) = events[*i];
                state.observe_feedback(record.time, f, &Origin::of(f, origin));
                for rule in rules.feedback_rules(&f.namespace, &f.service, &f.version) {
                    let Some(spec) = &rule.feedback else { continue };
                    if rule.promotion().is_some() {
                        let labels = [("namespace", &f.namespace), ("service", &spec.service)]
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v.clone()))
                            .collect();
                        if Self::promotion_not_due(&state, rule, &labels, record.time) {
                            continue;
                        }
                    }
                    let Some(finding) = spec.evaluate(state.arms(), &f.namespace, record.time) else { continue };
                    let key = format!("{}|{}", rule.name, finding.comparison);
                    let quieted = quiet.get(&key).is_some_and(|until| *until > record.time);
                    let pending = findings.iter().any(|(_, _, k, _): &(usize, _, String, _)| *k == key);
                    if !state.has_key(&key) && !quieted && !pending {
                        findings.push((*i, rule.clone(), key, finding));
                    }
                }
            }
        }
        // Rollback wins: rollbacks are decided first, so a promotion found at the same event
        // sees its target stopped.
        findings.sort_by_key(|(_, rule, _, _)| rule.promotion().is_some());
        for (i, rule, key, finding) in findings {
            let report = match rule.promotion() {
                Some(_) => self.act_on_promotion(&out[i].event_id, source, &rule, key.clone(), finding).await?,
                None => Some(self.act_on_finding(&out[i].event_id, source, &rule, key.clone(), finding).await?),
            };
            match report {
                Some(report) => {
                    self.quiet_unless_done(&report, key);
                    out[i].reports.push(report);
                }
                // Nothing to do (the canary is at its max): not looked at again for a while.
                None => self.quiet(key),
            }
        }
        Ok(out)
    }

    /// Decide (guards, confirmation, dry run) and act on a feedback rule's finding.
    pub(super) async fn act_on_finding(
        &self,
        event_id: &str,
        source: SourceKind,
        rule: &Rule,
        key: String,
        finding: crate::feedback::rule::Finding,
    ) -> Result<Report, PipelineError> {
        let alert = finding_alert(event_id, source, rule, &finding);
        let decision = match rule
            .target_for_labels(&finding.labels)
            .map_err(crate::rules::PlanError::from)
            .and_then(|t| Ok((t, rule.plan(&finding.labels)?)))
        {
            Ok((target, plan)) => {
                Decision::Act { rule: rule.name.clone(), key: key.clone(), target, plan, dry_run: rule.dry_run }
            }
            Err(missing) => Decision::Refuse { rule: rule.name.clone(), reason: missing.to_string() },
        };
        let context = FeedbackContext { evidence: finding.evidence, arms: finding.arms, promotion: None };
        self.decided(&alert, rule, decision, Some(&context), None).await
    }

    /// Held, refused or failed: the next events would find the same; say it again only after a
    /// while rather than at every event.
    fn quiet_unless_done(&self, report: &Report, key: String) {
        if !matches!(report.outcome, Kind::Applied | Kind::Noop | Kind::DryRun | Kind::Decided) {
            self.quiet(key);
        }
    }

    /// Do not decide the finding `key` again for [`FEEDBACK_QUIET`].
    fn quiet(&self, key: String) {
        let until = Utc::now() + chrono::Duration::from_std(FEEDBACK_QUIET).unwrap_or_default();
        let mut quiet = self.feedback_quiet.lock().unwrap_or_else(|p| p.into_inner());
        if quiet.len() >= super::quiet::MEMORY {
            let now = Utc::now();
            quiet.retain(|_, t| *t > now);
        }
        quiet.insert(key, until);
    }
}
