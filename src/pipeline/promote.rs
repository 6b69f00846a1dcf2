//! Promotion (issue #18): a feedback rule's evidence that the canary is not worse becomes the
//! next step of its schedule, decided from the canary's weight as read from the target, vetted
//! by the promotion's guards (rollback wins, pause, hold, cooldown, interval) and acted on like
//! any action; a promotion that reached its `max` is recorded as `promoted`. And on-call's
//! `promote` (the next step by hand) and `hold-promotion`.

use super::*;
use crate::actions::virtualservice::{self, Weight};
use crate::feedback::rule::Finding;

/// A promotion step's figures for its records: what each test showed, without the arms'
/// full summaries (they are in the `matched` record's evidence).
fn compact(evidence: &Value) -> Value {
    let tests = evidence["tests"].as_array().map(|tests| {
        tests
            .iter()
            .map(|t| {
                let d = &t["detail"];
                json!({
                    "test": t["test"],
                    "p_value": d.pointer("/sequential/p_value").cloned().unwrap_or(Value::Null),
                    "canary_n": d.pointer("/canary/n").or(d.get("n")).cloned().unwrap_or(Value::Null),
                    "baseline_n": d.pointer("/baseline/n").cloned().unwrap_or(Value::Null),
                    "lower_bound": d.get("lower_bound").cloned().unwrap_or(Value::Null),
                })
            })
            .collect::<Vec<_>>()
    });
    json!({ "since": evidence["since"], "alpha": evidence["alpha"], "tests": tests })
}

/// Where a promotion stands when its canary's weight is read.
enum Reading {
    /// The weight it is at, and the next step.
    Step { from: u8, to: u8 },
    /// At or past the promotion's `max`: nothing to do.
    Done,
}

impl Pipeline {
    /// The canary's weight on `target` (the highest of the routes the rule acts on), and the
    /// next step of `rule`'s schedule from it.
    async fn read_step(&self, rule: &Rule, target: &ObjectRef, routes: Option<&[String]>) -> Result<Reading, String> {
        let Some(p) = rule.promotion() else { return Err(format!("rule {} does not promote", rule.name)) };
        let fetched = self.target.get(target).await.map_err(|e| e.to_string())?;
        let weight = match &p.selector {
            // Blue-green: the canary has all the traffic once the selector selects it.
            Some(sw) => match fetched.object.pointer("/spec/selector").and_then(|s| s.get(&sw.label)) {
                Some(v) if *v == sw.to.as_str() => 100,
                Some(v) if *v == sw.from.as_str() => 0,
                found => {
                    return Err(format!(
                        "Service {target} selects {}={}, neither {} nor {}",
                        sw.label,
                        found.map_or("nothing".to_string(), ToString::to_string),
                        sw.from,
                        sw.to
                    ));
                }
            },
            None => {
                let all = virtualservice::routes(&fetched.object).map_err(|e| e.to_string())?;
                let chosen: Vec<_> =
                    all.into_iter().filter(|r| routes.is_none_or(|names| names.contains(&r.route))).collect();
                virtualservice::canary_weight(&chosen, &p.canary)
            }
        };
        let from = u8::try_from(weight.min(100)).unwrap_or(100);
        Ok(match p.schedule.next(from, p.max) {
            Some(to) => Reading::Step { from, to },
            None => Reading::Done,
        })
    }

    /// Decide and act on a promotion rule's evidence: the next step from the canary's weight.
    /// None when there is nothing to do (the canary is at the promotion's `max` already).
    pub(super) async fn act_on_promotion(
        &self,
        event_id: &str,
        source: SourceKind,
        rule: &Rule,
        key: String,
        finding: Finding,
    ) -> Result<Option<Report>, PipelineError> {
        let Some(promote) = rule.promotion() else { return Ok(None) };
        let alert = super::feedback::finding_alert(event_id, source, rule, &finding);
        let planned = match rule.target_for_labels(&finding.labels) {
            Err(missing) => Err(missing.to_string()),
            Ok(target) => {
                let routes = rule.plan_routes(&finding.labels).map_err(|e| e.to_string());
                match routes {
                    Err(e) => Err(e),
                    Ok(routes) => match self.read_step(rule, &target, routes.as_deref()).await {
                        Ok(Reading::Done) => return Ok(None),
                        Ok(Reading::Step { from, to }) => Ok((target, from, to)),
                        Err(e) => Err(format!("cannot read the canary's weight: {e}")),
                    },
                }
            }
        };
        let (decision, step) = match planned {
            Err(reason) => (Decision::Refuse { rule: rule.name.clone(), reason }, None),
            Ok((target, from, to)) => {
                match rule.step_plan(&finding.labels, Weight::at_most_100(from), Weight::at_most_100(to)) {
                    Some(Ok(plan)) => {
                        let step = StepUp {
                            canary: promote.canary_name().to_string(),
                            from,
                            to,
                            max: promote.max,
                            evidence: Some(compact(&finding.evidence)),
                        };
                        let act = Decision::Act { rule: rule.name.clone(), key, target, plan, dry_run: rule.dry_run };
                        (act, Some(step))
                    }
                    Some(Err(e)) => (Decision::Refuse { rule: rule.name.clone(), reason: e.to_string() }, None),
                    None => return Ok(None),
                }
            }
        };
        let context = FeedbackContext { evidence: finding.evidence, arms: finding.arms, promotion: step };
        Ok(Some(self.decided(&alert, rule, decision, Some(&context), None).await?))
    }

    /// Whether a promotion rule's next step on the target its labels name is not due yet (its
    /// last step was less than its interval ago): the evidence is not even looked at.
    pub(super) fn promotion_not_due(
        state: &GuardState,
        rule: &Rule,
        labels: &std::collections::BTreeMap<String, String>,
        now: DateTime<Utc>,
    ) -> bool {
        let Some(p) = rule.promotion() else { return false };
        let Ok(target) = rule.target_for_labels(labels) else { return false };
        state.promotions().next_step_at(&target.to_string(), p.interval).is_some_and(|next| now < next)
    }

    /// Record `promoted` for every promotion whose last step reached its `max`, with each
    /// stage's evidence.
    pub(super) async fn record_promoted(&self, state: &mut GuardState) -> Result<(), AuditError> {
        let done = state.promotions().complete();
        if done.is_empty() {
            return Ok(());
        }
        let entries = done
            .iter()
            .map(|p| {
                let hands = p.stages.iter().filter(|s| s.actor.is_some()).count();
                Entry::new(Kind::Promoted)
                    .rule(&p.rule)
                    .target(&p.target)
                    .reason(format!(
                        "{} promoted to weight {} in {} steps ({} on evidence, {hands} by hand)",
                        p.canary,
                        p.max,
                        p.stages.len(),
                        p.stages.len() - hands
                    ))
                    .detail(json!({ "canary": p.canary, "weight": p.max, "stages": p.stages }))
            })
            .collect();
        let records = self.audit.append(entries).await?;
        for (r, p) in records.iter().zip(&done) {
            state.observe(r);
            MetricEvent::Promoted { rule: &p.rule }.emit();
            info!(target = %p.target, canary = %p.canary, weight = p.max, "promoted");
        }
        Ok(())
    }

    /// `backstop promote TARGET`: take the next step of the promotion rule for `target` now, on
    /// a person's word instead of evidence (recorded with who and why). It also resumes a
    /// promotion held or stopped by a rollback. `rule` picks among several promotion rules.
    pub async fn promote_by_hand(
        &self,
        target: &ObjectRef,
        rule: Option<&str>,
        actor: &str,
        reason: &str,
    ) -> Result<Report, PipelineError> {
        let rules = self.rules();
        let rule = self.promotion_rule_for(&rules, target, rule)?;
        let Some(promote) = rule.promotion() else { return Err(PipelineError::UnknownRule(rule.name.clone())) };
        let labels = promotion_labels(&rule, target);
        let routes = rule.plan_routes(&labels).map_err(|e| PipelineError::NeedsAlert(e.to_string()))?;
        let target = ObjectRef { kind: rule.kind, ..target.clone() };
        let (from, to) = match self.read_step(&rule, &target, routes.as_deref()).await {
            Ok(Reading::Step { from, to }) => (from, to),
            Ok(Reading::Done) => {
                return Err(PipelineError::NeedsAlert(format!(
                    "the canary {} on {target} is at or above the promotion's max {}: nothing to promote",
                    promote.canary_name(),
                    promote.max
                )));
            }
            Err(e) => {
                return Err(PipelineError::NeedsAlert(format!("cannot read the canary's weight on {target}: {e}")));
            }
        };
        let plan = match rule.step_plan(&labels, Weight::at_most_100(from), Weight::at_most_100(to)) {
            Some(Ok(plan)) => plan,
            Some(Err(e)) => return Err(PipelineError::NeedsAlert(e.to_string())),
            None => return Err(PipelineError::UnknownRule(rule.name.clone())),
        };
        let step = StepUp { canary: promote.canary_name().to_string(), from, to, max: promote.max, evidence: None };
        // The next stage is judged on its own traffic, like a step on evidence.
        let arms = promotion_arms(&rule, &target.namespace);
        let extra = PromotionPart { promotion: step }
            .value()
            .as_object()
            .cloned()
            .into_iter()
            .flatten()
            .chain(FeedbackArmsPart { feedback_arms: arms }.value().as_object().cloned().into_iter().flatten())
            .collect::<serde_json::Map<_, _>>();
        let decide = |obj: &Value| plan.decide(obj);
        let extra = Some(Value::Object(extra));
        let report = self.manual(Control::Promote, &rule.name, &target, actor, reason, &decide, None, extra).await?;
        let mut state = self.state.lock().await;
        self.record_promoted(&mut state).await?;
        Ok(report)
    }

    /// `backstop hold-promotion TARGET` (or `--release`): hold a target's promotion where it
    /// is, by hand; released, it goes on when its evidence holds (a release also lifts a stop
    /// by a rollback).
    pub async fn hold_promotion(
        &self,
        target: &ObjectRef,
        hold: bool,
        actor: &str,
        reason: &str,
    ) -> Result<Record, PipelineError> {
        let mut state = self.state.lock().await;
        let control = if hold { Control::HoldPromotion } else { Control::ReleasePromotion };
        let entry = Entry::new(Kind::Control)
            .source("manual")
            .actor(actor)
            .reason(reason)
            .target(target.to_string())
            .detail(ControlPart { control }.value());
        let mut records = self.record(&mut state, vec![entry]).await?;
        Ok(records.remove(0))
    }

    /// Promotions under way, stopped and held (for the API and the CLI).
    pub async fn promotions(&self) -> Value {
        self.state.lock().await.promotions().view()
    }

    /// The promotion rule acting on `target` (`name`, if given, must be one).
    fn promotion_rule_for(
        &self,
        rules: &RuleSet,
        target: &ObjectRef,
        name: Option<&str>,
    ) -> Result<Arc<Rule>, PipelineError> {
        if let Some(name) = name {
            let rule = rules.get(name).ok_or_else(|| PipelineError::UnknownRule(name.into()))?;
            if rule.promotion().is_none() {
                return Err(PipelineError::NeedsAlert(format!("rule {name} does not promote")));
            }
            return Ok(rule.clone());
        }
        let found: Vec<&Arc<Rule>> = rules
            .rules()
            .iter()
            .filter(|r| r.promotion().is_some())
            .filter(|r| {
                r.target_for_labels(&promotion_labels(r, target)).is_ok_and(|t| t.to_string() == target.to_string())
            })
            .collect();
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(PipelineError::NeedsAlert(format!("no promotion rule acts on {target}"))),
            many => Err(PipelineError::NeedsAlert(format!(
                "several promotion rules act on {target} ({}): name one with --rule",
                many.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }
}

/// The labels a promotion rule's templates see for `target` (as its feedback would give them).
fn promotion_labels(rule: &Rule, target: &ObjectRef) -> std::collections::BTreeMap<String, String> {
    let mut labels = std::collections::BTreeMap::new();
    labels.insert("namespace".to_string(), target.namespace.clone());
    if let Some(f) = &rule.feedback {
        labels.insert("service".to_string(), f.service.clone());
        labels.insert("canary".to_string(), f.canary.clone());
        if let Some(b) = &f.baseline {
            labels.insert("baseline".to_string(), b.clone());
        }
    }
    labels
}

/// The arms a promotion rule compares in `namespace`.
fn promotion_arms(rule: &Rule, namespace: &str) -> Vec<ArmKey> {
    let Some(f) = &rule.feedback else { return Vec::new() };
    let namespace = f.namespace.as_deref().unwrap_or(namespace);
    std::iter::once(&f.canary).chain(&f.baseline).map(|v| ArmKey::new(namespace, &f.service, v)).collect()
}
