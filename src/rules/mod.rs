//! Declarative rules: YAML files validated once into typed values, and the pure engine that
//! turns an alert into [`Decision`]s.

mod loading;
pub mod matcher;
mod promote;
mod raw;
mod validate;

#[cfg(test)]
use loading::*;
pub use loading::{RuleError, RuleErrors, load, parse_file};
pub use promote::{
    DEFAULT_ERROR_MARGIN, DEFAULT_LATENCY_RATIO, DEFAULT_NEGATIVE_MARGIN, DEFAULT_PROMOTE_INTERVAL, Promote,
};
use raw::*;
use validate::*;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::actions::ActionPlan;
use crate::actions::service::SelectorSwitch;
use crate::actions::virtualservice::{Change, Dest, Plan, Weight};
use crate::event::{Alert, AlertStatus, AlertView};
use crate::feedback::rule::{Check, FeedbackSpec};
use crate::feedback::sequential::{DEFAULT_TAU, Sequential, Test};
use crate::prometheus::confirm::{Comparison, Confirm, Fallback};
use crate::prometheus::verification::{self, Verification};
use crate::target::{ObjectKind, ObjectRef};
use crate::template::{self, Template};
use matcher::Matcher;

/// Which alert statuses a rule reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StatusFilter {
    #[default]
    Firing,
    Resolved,
    Any,
}

impl StatusFilter {
    fn accepts(self, status: AlertStatus) -> bool {
        matches!(
            (self, status),
            (StatusFilter::Any, _)
                | (StatusFilter::Firing, AlertStatus::Firing)
                | (StatusFilter::Resolved, AlertStatus::Resolved)
        )
    }
}

/// A validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub description: String,
    pub file: PathBuf,
    pub matchers: Vec<Matcher>,
    pub status: StatusFilter,
    /// The alert must have been firing at least this long (from `startsAt`).
    pub min_firing: Duration,
    pub namespace: Template,
    /// The kind of object acted on, and its name.
    pub kind: ObjectKind,
    pub object: Template,
    pub routes: Option<Vec<Template>>,
    pub action: RuleAction,
    pub cooldown: Option<Duration>,
    pub dry_run: bool,
    /// Ask Prometheus before acting.
    pub confirm: Option<Confirm>,
    /// After an applied action, prove traffic moved (a PromQL share polled to a deadline).
    pub verify: Option<Verification>,
    /// A feedback rule (no `match`): what it compares. Its templates see the labels
    /// `namespace`, `service`, `canary` and `baseline`.
    pub feedback: Option<FeedbackSpec>,
    /// A gradual rollback (`rollback: {steps, interval}`): the time between steps.
    pub step_interval: Option<Duration>,
}

/// The time between the steps of a gradual rollback when the rule does not say.
pub const DEFAULT_STEP_INTERVAL: Duration = Duration::from_secs(60);

impl Rule {
    pub fn matches<A: AlertView + ?Sized>(&self, alert: &A) -> bool {
        self.feedback.is_none()
            && self.status.accepts(alert.status())
            && self.matchers.iter().all(|m| m.matches_value(alert.label(&m.name)))
    }

    /// The object this rule acts on for `alert`.
    pub fn target_for(&self, alert: &Alert) -> Result<ObjectRef, template::MissingLabel> {
        self.target_for_labels(&alert.labels)
    }

    pub fn target_for_labels(&self, labels: &BTreeMap<String, String>) -> Result<ObjectRef, template::MissingLabel> {
        Ok(ObjectRef { kind: self.kind, namespace: self.namespace.render(labels)?, name: self.object.render(labels)? })
    }

    /// The route names the rule acts on, rendered (None: every route).
    pub fn plan_routes(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Option<Vec<String>>, template::MissingLabel> {
        match &self.routes {
            None => Ok(None),
            Some(ts) => Ok(Some(ts.iter().map(|t| t.render(labels)).collect::<Result<_, _>>()?)),
        }
    }

    /// The change to make; route names may be templated from the alert's labels. A promotion's
    /// step depends on the canary's weight at the time: see [`Rule::step_plan`].
    pub fn plan(&self, labels: &BTreeMap<String, String>) -> Result<ActionPlan, PlanError> {
        let routes = self.plan_routes(labels)?;
        Ok(match &self.action {
            RuleAction::Traffic(change) => ActionPlan::Traffic(Plan { change: change.clone(), routes }),
            RuleAction::Selector(sw) => ActionPlan::Selector(sw.clone()),
            RuleAction::Abort => ActionPlan::Abort,
            RuleAction::FlaggerRollback { hold } => {
                ActionPlan::FlaggerRollback { hold_ms: u64::try_from(hold.as_millis()).unwrap_or(u64::MAX) }
            }
            RuleAction::Promote(_) => return Err(PlanError::Promotion(self.name.clone())),
        })
    }

    /// A promotion's step from the canary's weight `from` to `to` (None: not a promotion rule).
    pub fn step_plan(
        &self,
        labels: &BTreeMap<String, String>,
        from: Weight,
        to: Weight,
    ) -> Option<Result<ActionPlan, PlanError>> {
        let RuleAction::Promote(p) = &self.action else { return None };
        Some(self.plan_routes(labels).map(|routes| p.step(from, to, routes)).map_err(PlanError::from))
    }

    /// The promotion this rule makes, if it is a promotion rule.
    pub fn promotion(&self) -> Option<&Promote> {
        match &self.action {
            RuleAction::Promote(p) => Some(p),
            _ => None,
        }
    }

    /// A short human description of the action, for tables and logs.
    pub fn action_summary(&self) -> String {
        let change = match &self.action {
            RuleAction::Selector(sw) => return format!("switch-selector {}: {} -> {}", sw.label, sw.from, sw.to),
            RuleAction::Abort => return "abort the Rollout".to_string(),
            RuleAction::FlaggerRollback { hold } => {
                return format!(
                    "answer the Flagger Canary's rollback webhook with yes for {}",
                    humantime::format_duration(*hold)
                );
            }
            RuleAction::Promote(Promote { selector: Some(sw), interval, .. }) => {
                return format!(
                    "promote by switch-selector {}: {} -> {} on evidence, at most one switch every {}",
                    sw.label,
                    sw.from,
                    sw.to,
                    humantime::format_duration(*interval)
                );
            }
            RuleAction::Promote(p) => {
                let steps = match &p.schedule {
                    crate::promotion::Schedule::Default => "+10 below 50, then +5".to_string(),
                    crate::promotion::Schedule::Steps(s) => {
                        s.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                    }
                };
                return format!(
                    "promote {} from {} on evidence, steps {steps} up to {}, at most one every {}",
                    p.canary,
                    p.stable,
                    p.max,
                    humantime::format_duration(p.interval)
                );
            }
            RuleAction::Traffic(change) => change,
        };
        match change {
            Change::Rollback { stable, canary } => {
                format!("rollback {} -> {}", canary.iter().map(Dest::to_string).collect::<Vec<_>>().join(", "), stable)
            }
            Change::Switch { from, to } => format!("switch {from} -> {to}"),
            Change::SetWeights { weights } => format!(
                "set-weights {}",
                weights.iter().map(|(d, w)| format!("{d}={w}")).collect::<Vec<_>>().join(", ")
            ),
            Change::StepDown { stable, canary, steps } => format!(
                "rollback {canary} -> {stable} in steps of canary weight {} every {}",
                steps.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                humantime::format_duration(self.step_interval.unwrap_or(DEFAULT_STEP_INTERVAL))
            ),
            Change::StepUp { stable, canary, from, to } => {
                format!("promote {canary} from {stable}: weight {from} -> {to}")
            }
        }
    }
}

/// What a rule does.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleAction {
    /// VirtualService weights.
    Traffic(Change),
    /// A Service's selector (blue-green).
    Selector(SelectorSwitch),
    /// Abort an Argo Rollout.
    Abort,
    /// Answer a Flagger Canary's rollback webhook with "roll back", for `hold`.
    FlaggerRollback { hold: Duration },
    /// Raise a healthy canary step by step, on evidence (a feedback rule's `not_worse`).
    Promote(Promote),
}

/// Why a rule's plan cannot be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Missing(#[from] template::MissingLabel),
    #[error(
        "rule {0} promotes step by step from the canary's current weight: use `backstop promote TARGET` to take \
         its next step by hand"
    )]
    Promotion(String),
}

/// What the engine concludes for one rule that matched one alert. Guards vet `Act` afterwards.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Act {
        rule: String,
        key: String,
        target: ObjectRef,
        plan: ActionPlan,
        dry_run: bool,
    },
    /// Not yet: the alert has not been firing long enough. No key is consumed.
    Hold {
        rule: String,
        reason: String,
    },
    /// This rule cannot act on this alert (for example a label its target needs is missing).
    Refuse {
        rule: String,
        reason: String,
    },
}

impl Decision {
    pub fn rule(&self) -> &str {
        match self {
            Decision::Act { rule, .. } | Decision::Hold { rule, .. } | Decision::Refuse { rule, .. } => rule,
        }
    }
}

/// The loaded rules, indexed by exact alert name so evaluation does not scan every rule.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Arc<Rule>>,
    by_alertname: HashMap<String, Vec<usize>>,
    any_alertname: Vec<usize>,
    /// Feedback rules by the service they watch.
    by_service: HashMap<String, Vec<usize>>,
}

impl RuleSet {
    pub fn new(rules: Vec<Rule>) -> RuleSet {
        let mut set = RuleSet::default();
        for (i, rule) in rules.into_iter().enumerate() {
            if let Some(f) = &rule.feedback {
                set.by_service.entry(f.service.clone()).or_default().push(i);
                set.rules.push(Arc::new(rule));
                continue;
            }
            match rule.matchers.iter().find_map(Matcher::exact_alertname) {
                Some(name) => set.by_alertname.entry(name.to_string()).or_default().push(i),
                None => set.any_alertname.push(i),
            }
            set.rules.push(Arc::new(rule));
        }
        set
    }

    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Rule>> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// Rules matching `alert`, in file order.
    pub fn matching<'a, A: AlertView + ?Sized>(&'a self, alert: &A) -> Vec<&'a Arc<Rule>> {
        let mut idx: Vec<usize> = self.candidates(alert).collect();
        idx.sort_unstable();
        idx.into_iter().map(|i| &self.rules[i]).filter(|r| r.matches(alert)).collect()
    }

    /// Whether any rule matches `alert`: [`RuleSet::matching`] without building its list, for
    /// the common case of a delivery's alerts that no rule wants (no allocation per alert).
    pub fn matches_any<A: AlertView + ?Sized>(&self, alert: &A) -> bool {
        self.candidates(alert).any(|i| self.rules[i].matches(alert))
    }

    /// The rules that may match `alert` (those for its name, then those for any name), by index.
    fn candidates<A: AlertView + ?Sized>(&self, alert: &A) -> impl Iterator<Item = usize> + '_ {
        let named = self.by_alertname.get(alert.name()).map(Vec::as_slice).unwrap_or(&[]);
        named.iter().chain(&self.any_alertname).copied()
    }

    /// Feedback rules concerned by an event about `version` of `service` in `namespace`.
    pub fn feedback_rules<'a>(
        &'a self,
        namespace: &'a str,
        service: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Rule>> + 'a {
        let idx = self.by_service.get(service).map(Vec::as_slice).unwrap_or(&[]);
        idx.iter()
            .map(|i| &self.rules[*i])
            .filter(move |r| r.feedback.as_ref().is_some_and(|f| f.concerns(namespace, service, version)))
    }

    /// The engine: a decision for every rule that matches `alert` at time `now`.
    pub fn decide(&self, alert: &Alert, now: DateTime<Utc>) -> Vec<Decision> {
        self.matching(alert).into_iter().map(|rule| decide_one(rule, alert, now)).collect()
    }
}

fn decide_one(rule: &Rule, alert: &Alert, now: DateTime<Utc>) -> Decision {
    let target_and_plan =
        rule.target_for(alert).map_err(PlanError::from).and_then(|t| Ok((t, rule.plan(&alert.labels)?)));
    let (target, plan) = match target_and_plan {
        Ok(tp) => tp,
        Err(missing) => {
            return Decision::Refuse { rule: rule.name.clone(), reason: missing.to_string() };
        }
    };
    if alert.status == AlertStatus::Firing && !rule.min_firing.is_zero() {
        let firing_for = (now - alert.starts_at).to_std().unwrap_or_default();
        if firing_for < rule.min_firing {
            return Decision::Hold {
                rule: rule.name.clone(),
                reason: format!(
                    "firing for {}, rule requires {}",
                    humantime::format_duration(Duration::from_secs(firing_for.as_secs())),
                    humantime::format_duration(rule.min_firing)
                ),
            };
        }
    }
    Decision::Act { rule: rule.name.clone(), key: alert.key(&rule.name), target, plan, dry_run: rule.dry_run }
}

#[cfg(test)]
mod tests;
