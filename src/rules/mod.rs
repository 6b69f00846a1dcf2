//! Declarative rules: YAML files validated once into typed values, and the pure engine that
//! turns an alert into [`Decision`]s.

pub mod matcher;

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
use crate::confirm::{Comparison, Confirm, Fallback};
use crate::event::{Alert, AlertStatus};
use crate::feedback::rule::{Check, FeedbackSpec};
use crate::feedback::sequential::{DEFAULT_TAU, Sequential, Test};
use crate::target::{ObjectKind, ObjectRef};
use crate::template::{self, Template};
use crate::verification::{self, Verification};
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
    pub fn matches(&self, alert: &Alert) -> bool {
        self.feedback.is_none()
            && self.status.accepts(alert.status)
            && self.matchers.iter().all(|m| m.matches(&alert.labels))
    }

    /// The object this rule acts on for `alert`.
    pub fn target_for(&self, alert: &Alert) -> Result<ObjectRef, template::MissingLabel> {
        self.target_for_labels(&alert.labels)
    }

    pub fn target_for_labels(&self, labels: &BTreeMap<String, String>) -> Result<ObjectRef, template::MissingLabel> {
        Ok(ObjectRef { kind: self.kind, namespace: self.namespace.render(labels)?, name: self.object.render(labels)? })
    }

    /// The change to make; route names may be templated from the alert's labels.
    pub fn plan(&self, labels: &BTreeMap<String, String>) -> Result<ActionPlan, template::MissingLabel> {
        let routes = match &self.routes {
            None => None,
            Some(ts) => Some(ts.iter().map(|t| t.render(labels)).collect::<Result<_, _>>()?),
        };
        Ok(match &self.action {
            RuleAction::Traffic(change) => ActionPlan::Traffic(Plan { change: change.clone(), routes }),
            RuleAction::Selector(sw) => ActionPlan::Selector(sw.clone()),
            RuleAction::Abort => ActionPlan::Abort,
            RuleAction::FlaggerRollback { hold } => {
                ActionPlan::FlaggerRollback { hold_ms: u64::try_from(hold.as_millis()).unwrap_or(u64::MAX) }
            }
        })
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
    pub fn matching<'a>(&'a self, alert: &'a Alert) -> Vec<&'a Arc<Rule>> {
        let named = self.by_alertname.get(&alert.name).map(Vec::as_slice).unwrap_or(&[]);
        let mut idx: Vec<usize> = named.iter().chain(&self.any_alertname).copied().collect();
        idx.sort_unstable();
        idx.into_iter().map(|i| &self.rules[i]).filter(|r| r.matches(alert)).collect()
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
    let target_and_plan = rule.target_for(alert).and_then(|t| Ok((t, rule.plan(&alert.labels)?)));
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

// ---------------------------------------------------------------------------------------------
// Loading and validation

/// One problem in a rule file, with where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub rule: Option<String>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(rule) = &self.rule {
            write!(f, ": rule `{rule}`")?;
        }
        if !self.field.is_empty() {
            write!(f, ": field `{}`", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found, reported at once.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct RuleErrors(pub Vec<RuleError>);

impl fmt::Display for RuleErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rules: Vec<serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default, rename = "match")]
    matchers: Vec<String>,
    #[serde(default)]
    feedback: Option<RawFeedback>,
    #[serde(default)]
    status: StatusFilter,
    #[serde(default, rename = "for")]
    min_firing: Option<String>,
    target: RawTarget,
    action: RawAction,
    #[serde(default)]
    cooldown: Option<String>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    confirm: Option<RawConfirm>,
    #[serde(default)]
    verify: Option<RawVerify>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVerify {
    query: String,
    #[serde(default)]
    max_share: Option<f64>,
    #[serde(default)]
    deadline: Option<String>,
    #[serde(default)]
    interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeedback {
    service: String,
    #[serde(default)]
    namespace: Option<String>,
    canary: String,
    #[serde(default)]
    baseline: Option<String>,
    test: RawTest,
    #[serde(default)]
    alpha: Option<f64>,
    #[serde(default)]
    min_samples: Option<u64>,
    #[serde(default)]
    tau: Option<f64>,
    #[serde(default)]
    min_effect: Option<f64>,
    #[serde(default)]
    max_ratio: Option<f64>,
    #[serde(default)]
    threshold: Option<f64>,
    #[serde(default)]
    window: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RawTest {
    NegativeRatio,
    ErrorRatio,
    LatencyP95,
    MeanScoreBelow,
}

/// Validate a `feedback:` block.
fn feedback_spec(f: RawFeedback, problems: &mut Vec<(String, String)>) -> Option<FeedbackSpec> {
    let before = problems.len();
    let mut problem = |field: &str, message: String| problems.push((format!("feedback.{field}"), message));
    for (field, value) in [("service", &f.service), ("canary", &f.canary)] {
        if value.trim().is_empty() {
            problem(field, "must not be empty".into());
        }
    }
    let sequential = f.test != RawTest::MeanScoreBelow;
    let only = |field: &str, set: bool, tests: &str, problem: &mut dyn FnMut(&str, String)| {
        if set {
            problem(field, format!("applies only to test {tests}"));
        }
    };
    only("min_effect", f.min_effect.is_some() && f.test != RawTest::NegativeRatio, "negative-ratio", &mut problem);
    only(
        "max_ratio",
        f.max_ratio.is_some() && !matches!(f.test, RawTest::ErrorRatio | RawTest::LatencyP95),
        "error-ratio or latency-p95",
        &mut problem,
    );
    let mean_only = "mean-score-below";
    only("threshold", f.threshold.is_some() && sequential, mean_only, &mut problem);
    only("window", f.window.is_some() && sequential, mean_only, &mut problem);
    let seq_only = "negative-ratio, error-ratio or latency-p95";
    only("alpha", f.alpha.is_some() && !sequential, seq_only, &mut problem);
    only("tau", f.tau.is_some() && !sequential, seq_only, &mut problem);
    only("baseline", f.baseline.is_some() && !sequential, seq_only, &mut problem);
    if sequential {
        match &f.baseline {
            None => problem("baseline", "name the version the canary is compared with".into()),
            Some(b) if *b == f.canary => problem("baseline", format!("the canary {b} cannot be its own baseline")),
            Some(_) => {}
        }
    }
    let alpha = f.alpha.unwrap_or(0.05);
    if !(alpha > 0.0 && alpha < 0.5) {
        problem("alpha", format!("{alpha} is not in (0, 0.5): the chance of a false rollback per comparison"));
    }
    let tau = f.tau.unwrap_or(DEFAULT_TAU);
    if !(tau > 0.0 && tau <= 1.0) {
        problem("tau", format!("{tau} is not in (0, 1]: the difference of proportions the test is tuned for"));
    }
    let min_samples = f.min_samples.unwrap_or(if sequential { 100 } else { 1 });
    if min_samples == 0 {
        problem("min_samples", "must be at least 1".into());
    }
    let threshold = match f.test {
        RawTest::NegativeRatio => f.min_effect.unwrap_or(0.0),
        RawTest::ErrorRatio | RawTest::LatencyP95 => f.max_ratio.unwrap_or(1.5),
        RawTest::MeanScoreBelow => match f.threshold {
            Some(t) => t,
            None => {
                problem("threshold", "mean-score-below needs a threshold (e.g. 0.3)".into());
                0.0
            }
        },
    };
    if !threshold.is_finite() || (sequential && threshold < 0.0) {
        let name = match f.test {
            RawTest::NegativeRatio => "min_effect",
            RawTest::MeanScoreBelow => "threshold",
            _ => "max_ratio",
        };
        problem(name, format!("{threshold} must be a finite number{}", if sequential { " >= 0" } else { "" }));
    }
    let window = match f.window.as_deref().map(humantime::parse_duration) {
        None => Duration::from_secs(300),
        Some(Ok(w)) if !w.is_zero() && w <= crate::feedback::arms::SCORE_WINDOW => w,
        Some(Ok(w)) => {
            let max = humantime::format_duration(crate::feedback::arms::SCORE_WINDOW);
            problem("window", format!("{} is not between 1s and {max}", humantime::format_duration(w)));
            w
        }
        Some(Err(e)) => {
            problem("window", format!("not a duration ({e}); examples: 30s, 5m"));
            Duration::ZERO
        }
    };
    let test = match f.test {
        RawTest::NegativeRatio => Some(Test::NegativeRatio),
        RawTest::ErrorRatio => Some(Test::ErrorRatio),
        RawTest::LatencyP95 => Some(Test::LatencyP95),
        RawTest::MeanScoreBelow => None,
    };
    let check = match test {
        Some(test) => Check::Sequential { test, settings: Sequential { alpha, min_samples, tau }, threshold },
        None => Check::MeanScoreBelow { threshold, min_samples, window },
    };
    (problems.len() == before).then_some(FeedbackSpec {
        service: f.service,
        namespace: f.namespace,
        canary: f.canary,
        baseline: f.baseline,
        check,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfirm {
    query: String,
    #[serde(default)]
    above: Option<f64>,
    #[serde(default)]
    below: Option<f64>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    on_no_data: Fallback,
    #[serde(default)]
    on_error: Fallback,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    namespace: String,
    #[serde(default)]
    virtualservice: Option<String>,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    rollout: Option<String>,
    #[serde(default)]
    flagger: Option<String>,
    #[serde(default)]
    routes: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawAction {
    rollback: Option<RawRollback>,
    switch: Option<RawSwitch>,
    set_weights: Option<Vec<RawWeight>>,
    switch_selector: Option<SelectorSwitch>,
    abort: Option<RawAbort>,
    flagger_rollback: Option<RawFlaggerRollback>,
}

/// `flagger-rollback: {hold: 30m}`: answer a Flagger Canary's rollback webhook.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlaggerRollback {
    #[serde(default)]
    hold: Option<String>,
}

/// `abort: {}`: stop an Argo Rollout (no settings yet).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAbort {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollback {
    stable: RawDest,
    canary: OneOrMany<RawDest>,
    /// A gradual rollback: the canary's weight at each step, strictly decreasing, ending at 0.
    #[serde(default)]
    steps: Option<Vec<Weight>>,
    /// The time between steps (default 1m).
    #[serde(default)]
    interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSwitch {
    from: RawDest,
    to: RawDest,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeight {
    #[serde(default)]
    subset: Option<String>,
    #[serde(default)]
    host: Option<String>,
    weight: Weight,
}

/// `v2` (a subset), `{subset: v2}` or `{host: reviews-canary}`.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a subset name, {subset: NAME} or {host: HOST}")]
enum RawDest {
    Subset(String),
    Keyed(RawDestKeyed),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDestKeyed {
    #[serde(default)]
    subset: Option<String>,
    #[serde(default)]
    host: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    // `Many` first: serde would otherwise read `[v2, v1]` as the fields of one keyed destination.
    Many(Vec<T>),
    One(T),
}

fn dest(subset: Option<String>, host: Option<String>) -> Result<Dest, String> {
    match (subset, host) {
        (Some(s), None) if !s.is_empty() => Ok(Dest::Subset(s)),
        (None, Some(h)) if !h.is_empty() => Ok(Dest::Host(h)),
        (Some(_), Some(_)) => Err("name either a subset or a host, not both".into()),
        _ => Err("a destination needs a non-empty `subset` or `host`".into()),
    }
}

impl RawDest {
    fn into_dest(self) -> Result<Dest, String> {
        match self {
            RawDest::Subset(s) => dest(Some(s), None),
            RawDest::Keyed(k) => dest(k.subset, k.host),
        }
    }
}

/// Load every rule file under `paths` (files, or directories of `*.yaml`/`*.yml`).
pub fn load(paths: &[PathBuf]) -> Result<RuleSet, RuleErrors> {
    let mut errors = Vec::new();
    let mut rules = Vec::new();
    for file in rule_files(paths, &mut errors) {
        match std::fs::read_to_string(&file) {
            Ok(text) => rules.extend(parse_file(&file, &text, &mut errors)),
            Err(e) => errors.push(file_error(&file, format!("cannot read: {e}"))),
        }
    }
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for rule in &rules {
        if let Some(first) = seen.insert(rule.name.clone(), rule.file.clone()) {
            errors.push(RuleError {
                file: rule.file.clone(),
                line: None,
                rule: Some(rule.name.clone()),
                field: "name".into(),
                message: format!("duplicate rule name (also in {})", first.display()),
            });
        }
    }
    if errors.is_empty() { Ok(RuleSet::new(rules)) } else { Err(RuleErrors(errors)) }
}

fn file_error(file: &Path, message: String) -> RuleError {
    RuleError { file: file.to_path_buf(), line: None, rule: None, field: String::new(), message }
}

fn rule_files(paths: &[PathBuf], errors: &mut Vec<RuleError>) -> Vec<PathBuf> {
    let mut files = BTreeSet::new();
    for path in paths {
        if path.is_dir() {
            match std::fs::read_dir(path) {
                Ok(entries) => {
                    for entry in entries.flatten() {
                        let p = entry.path();
                        let yaml = matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
                        if yaml && p.is_file() {
                            files.insert(p);
                        }
                    }
                }
                Err(e) => errors.push(file_error(path, format!("cannot read directory: {e}"))),
            }
        } else if path.is_file() {
            files.insert(path.clone());
        } else {
            errors.push(file_error(path, "no such file or directory".into()));
        }
    }
    files.into_iter().collect()
}

/// Parse one file's text; problems go to `errors`, valid rules are returned.
pub fn parse_file(file: &Path, text: &str, errors: &mut Vec<RuleError>) -> Vec<Rule> {
    // The YAML library's time grows much faster than the input with flow nesting (`[[[[…`:
    // 84 s for 100,000 levels); no rule needs more than a few levels.
    if let Some(line) = too_deep(text) {
        errors.push(RuleError {
            file: file.to_path_buf(),
            line: Some(line),
            rule: None,
            field: String::new(),
            message: format!("nested more than {MAX_FLOW_NESTING} levels deep (`[` or `{{`); a rule needs a few"),
        });
        return Vec::new();
    }
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let raw: RawFile = match serde_path_to_error::deserialize(de) {
        Ok(raw) => raw,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            errors.push(RuleError {
                file: file.to_path_buf(),
                line: inner.location().map(|l| l.line()).or_else(|| second_document(text)),
                rule: None,
                field: if path == "." { String::new() } else { path },
                message: strip_location(&inner.to_string()),
            });
            return Vec::new();
        }
    };
    let mut rules = Vec::new();
    let lines = rule_lines(text);
    for (i, value) in raw.rules.into_iter().enumerate() {
        let name = value.get("name").and_then(|n| n.as_str()).map(str::to_string);
        let line = name.as_deref().and_then(|n| lines.get(n).copied());
        let mut push = |field: String, message: String| {
            errors.push(RuleError {
                file: file.to_path_buf(),
                line,
                rule: Some(name.clone().unwrap_or_else(|| format!("#{}", i + 1))),
                field,
                message,
            })
        };
        match serde_path_to_error::deserialize::<_, RawRule>(value) {
            Ok(raw) => match validate(raw, file) {
                Ok(rule) => rules.push(rule),
                Err(problems) => problems.into_iter().for_each(|(f, m)| push(f, m)),
            },
            Err(e) => {
                let path = e.path().to_string();
                push(if path == "." { String::new() } else { path }, strip_location(&e.into_inner().to_string()))
            }
        }
    }
    rules
}

/// Where a file of several YAML documents goes wrong, for serde_yaml, which says so without a
/// place: the second document's start as a YAML parser sees it (a `---`, or content after a
/// `...` or after what ended the first), or else where that parser stops.
fn second_document(text: &str) -> Option<usize> {
    let mut documents = 0;
    for event in saphyr_parser::Parser::new_from_str(text) {
        match event {
            Ok((saphyr_parser::Event::DocumentStart(_), span)) => {
                documents += 1;
                if documents == 2 {
                    return Some(span.start.line().max(1));
                }
            }
            Ok((saphyr_parser::Event::StreamEnd, _)) => return None,
            Ok(_) => {}
            Err(e) => return Some(e.marker().line().max(1)),
        }
    }
    None
}

fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Flow collections (`[`, `{`) nested deeper than this are refused before parsing.
const MAX_FLOW_NESTING: usize = 64;

/// The line where flow nesting first goes deeper than [`MAX_FLOW_NESTING`], if it does (quoted
/// strings and comments do not count).
fn too_deep(text: &str) -> Option<usize> {
    let (mut depth, mut line, mut quote, mut comment, mut prev) = (0usize, 1, None::<char>, false, ' ');
    for c in text.chars() {
        match (c, quote) {
            ('\n', _) => {
                line += 1;
                comment = false;
            }
            _ if comment => {}
            ('\'' | '"', None) => quote = Some(c),
            (c, Some(q)) if c == q && !(q == '"' && prev == '\\') => quote = None,
            (_, Some(_)) => {}
            ('#', None) if prev.is_whitespace() => comment = true,
            ('[' | '{', None) => {
                depth += 1;
                if depth > MAX_FLOW_NESTING {
                    return Some(line);
                }
            }
            (']' | '}', None) => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev = c;
    }
    None
}

/// The line of each rule's `name:` (the first, for a name given twice), in one pass over the
/// text: looking each rule up in the whole text made a file of 10,000 rules take 20 s to load.
fn rule_lines(text: &str) -> HashMap<&str, usize> {
    let mut lines = HashMap::new();
    for (i, l) in text.lines().enumerate() {
        let t = l.trim_start().trim_start_matches("- ").trim_start();
        if let Some(v) = t.strip_prefix("name:") {
            lines.entry(v.trim().trim_matches(|c| c == '"' || c == '\'')).or_insert(i + 1);
        }
    }
    lines
}

fn parse_duration(field: &str, text: Option<String>, problems: &mut Vec<(String, String)>) -> Option<Duration> {
    let text = text?;
    match humantime::parse_duration(&text) {
        Ok(d) => Some(d),
        Err(e) => {
            problems.push((field.into(), format!("`{text}` is not a duration ({e}); examples: 30s, 5m, 1h30m")));
            None
        }
    }
}

/// Turn a raw rule into a typed one, collecting every problem.
fn validate(raw: RawRule, file: &Path) -> Result<Rule, Vec<(String, String)>> {
    let mut problems = Vec::new();
    if raw.name.trim().is_empty() || raw.name.contains(char::is_whitespace) {
        problems.push(("name".into(), "must be non-empty, without spaces".into()));
    }
    let feedback = match raw.feedback {
        Some(f) => {
            if !raw.matchers.is_empty() {
                problems.push((
                    "match".into(),
                    "a rule reacts to alerts (`match`) or to feedback (`feedback`), not both".into(),
                ));
            }
            if raw.min_firing.is_some() || raw.status != StatusFilter::Firing {
                problems.push(("feedback".into(), "`for` and `status` apply to alerts, not to feedback".into()));
            }
            feedback_spec(f, &mut problems)
        }
        None => None,
    };
    let matchers = match matcher::parse_all(&raw.matchers) {
        Ok(m) if m.is_empty() && feedback.is_none() => {
            if !problems.iter().any(|(f, _)| f.starts_with("feedback")) {
                problems.push(("match".into(), "needs at least one matcher (or a `feedback:` block)".into()));
            }
            m
        }
        Ok(m) => m,
        Err(e) => {
            problems.push(("match".into(), e.to_string()));
            Vec::new()
        }
    };
    let mut template = |field: &str, src: &str| match Template::parse(src) {
        Ok(t) if t.literal() == Some("") => {
            problems.push((field.into(), "must not be empty".into()));
            None
        }
        Ok(t) => Some(t),
        Err(e) => {
            problems.push((field.into(), e.to_string()));
            None
        }
    };
    let namespace = template("target.namespace", &raw.target.namespace);
    let t = &raw.target;
    let object_src = match (t.virtualservice.clone(), t.service.clone(), t.rollout.clone(), t.flagger.clone()) {
        (Some(vs), None, None, None) => Some((ObjectKind::VirtualService, "target.virtualservice", vs)),
        (None, Some(svc), None, None) => Some((ObjectKind::Service, "target.service", svc)),
        (None, None, Some(ro), None) => Some((ObjectKind::Rollout, "target.rollout", ro)),
        (None, None, None, Some(c)) => Some((ObjectKind::FlaggerCanary, "target.flagger", c)),
        _ => None,
    };
    let object = object_src.as_ref().and_then(|(kind, field, src)| template(field, src).map(|t| (*kind, t)));
    let routes = match raw.target.routes {
        Some(routes) if routes.is_empty() => {
            problems.push(("target.routes".into(), "list route names, or leave the field out for all routes".into()));
            None
        }
        Some(routes) => {
            let ts: Vec<Template> =
                routes.iter().enumerate().filter_map(|(i, r)| template(&format!("target.routes[{i}]"), r)).collect();
            Some(ts)
        }
        None => None,
    };
    if object_src.is_none() {
        problems
            .push(("target".into(), "name exactly one of `virtualservice`, `service`, `rollout` or `flagger`".into()));
    }
    let raw_interval = raw.action.rollback.as_ref().and_then(|r| r.interval.clone());
    let others_than_abort = [
        raw.action.rollback.is_some(),
        raw.action.switch.is_some(),
        raw.action.set_weights.is_some(),
        raw.action.switch_selector.is_some(),
        raw.action.abort.is_some() && raw.action.flagger_rollback.is_some(),
    ];
    let action = if let Some(f) = &raw.action.flagger_rollback {
        if others_than_abort.iter().any(|b| *b) {
            problems.push((
                "action".into(),
                "exactly one of `rollback`, `switch`, `set-weights`, `switch-selector`, `abort`, `flagger-rollback`"
                    .into(),
            ));
        }
        let hold = parse_duration("action.flagger-rollback.hold", f.hold.clone(), &mut problems)
            .unwrap_or(Duration::from_secs(1800));
        Some(RuleAction::FlaggerRollback { hold })
    } else if raw.action.abort.is_some() {
        if others_than_abort.iter().any(|b| *b) {
            problems.push((
                "action".into(),
                "exactly one of `rollback`, `switch`, `set-weights`, `switch-selector`, `abort`".into(),
            ));
        }
        Some(RuleAction::Abort)
    } else {
        match raw.action.switch_selector.clone() {
            Some(sw) => {
                let empty = [&sw.label, &sw.from, &sw.to].iter().any(|v| v.is_empty());
                if empty || sw.from == sw.to {
                    problems.push((
                        "action.switch-selector".into(),
                        "label, from and to must be set, from and to different".into(),
                    ));
                }
                let others =
                    [raw.action.rollback.is_some(), raw.action.switch.is_some(), raw.action.set_weights.is_some()];
                if others.iter().any(|b| *b) {
                    problems.push((
                        "action".into(),
                        "exactly one of `rollback`, `switch`, `set-weights`, `switch-selector`".into(),
                    ));
                }
                Some(RuleAction::Selector(sw))
            }
            None => change(raw.action, &mut problems).map(RuleAction::Traffic),
        }
    };
    match (&object, &action) {
        (Some((ObjectKind::Rollout, _)), Some(a)) if *a != RuleAction::Abort => {
            problems.push(("action".into(), "a rollout target takes `abort: {}`".into()))
        }
        (Some((ObjectKind::FlaggerCanary, _)), Some(a)) if !matches!(a, RuleAction::FlaggerRollback { .. }) => {
            problems.push(("action".into(), "a flagger target takes `flagger-rollback: {hold?}`".into()))
        }
        (Some((kind, _)), Some(RuleAction::FlaggerRollback { .. })) if *kind != ObjectKind::FlaggerCanary => {
            problems.push(("action.flagger-rollback".into(), "flagger-rollback acts on a `flagger` target".into()))
        }
        (Some((kind, _)), Some(RuleAction::Abort)) if *kind != ObjectKind::Rollout => {
            problems.push(("action.abort".into(), "abort acts on a `rollout` target (Argo Rollouts)".into()))
        }
        (Some((ObjectKind::Service, _)), Some(RuleAction::Traffic(_))) => problems.push((
            "action".into(),
            "a Service target takes `switch-selector`; rollback, switch and set-weights act on a virtualservice".into(),
        )),
        (Some((ObjectKind::VirtualService, _)), Some(RuleAction::Selector(_))) => {
            problems.push(("action.switch-selector".into(), "switch-selector acts on a `service` target".into()))
        }
        _ => {}
    }
    if matches!(object, Some((ObjectKind::Service, _))) && routes.is_some() {
        problems.push(("target.routes".into(), "routes belong to a virtualservice target".into()));
    }
    let step_interval = match &action {
        Some(RuleAction::Traffic(Change::StepDown { .. })) => Some(
            parse_duration("action.rollback.interval", raw_interval, &mut problems).unwrap_or(DEFAULT_STEP_INTERVAL),
        ),
        _ => {
            if raw_interval.is_some() {
                problems.push(("action.rollback.interval".into(), "an interval is the time between `steps`".into()));
            }
            None
        }
    };
    if step_interval.is_some_and(|i| i.is_zero()) {
        problems.push(("action.rollback.interval".into(), "must be more than 0".into()));
    }
    let min_firing = parse_duration("for", raw.min_firing, &mut problems).unwrap_or_default();
    let cooldown = parse_duration("cooldown", raw.cooldown, &mut problems);
    let confirm = match raw.confirm {
        None => None,
        Some(c) => {
            let comparison = match (c.above, c.below) {
                (Some(t), None) if t.is_finite() => Some(Comparison::Above(t)),
                (None, Some(t)) if t.is_finite() => Some(Comparison::Below(t)),
                _ => {
                    problems.push(("confirm".into(), "give exactly one of `above` or `below` (a number)".into()));
                    None
                }
            };
            let query = match Template::parse(&c.query) {
                Ok(q) if !c.query.trim().is_empty() => Some(q),
                Ok(_) => {
                    problems.push(("confirm.query".into(), "must not be empty".into()));
                    None
                }
                Err(e) => {
                    problems.push(("confirm.query".into(), e.to_string()));
                    None
                }
            };
            let timeout = parse_duration("confirm.timeout", c.timeout, &mut problems).unwrap_or(Duration::from_secs(5));
            match (query, comparison) {
                (Some(query), Some(comparison)) => {
                    Some(Confirm { query, comparison, timeout, on_no_data: c.on_no_data, on_error: c.on_error })
                }
                _ => None,
            }
        }
    };
    let verify = match raw.verify {
        None => None,
        Some(v) => {
            let query = match Template::parse(&v.query) {
                Ok(q) if !v.query.trim().is_empty() => Some(q),
                Ok(_) => {
                    problems.push(("verify.query".into(), "must not be empty".into()));
                    None
                }
                Err(e) => {
                    problems.push(("verify.query".into(), e.to_string()));
                    None
                }
            };
            let max_share = v.max_share.unwrap_or(verification::DEFAULT_MAX_SHARE);
            if !(0.0..=1.0).contains(&max_share) {
                problems.push(("verify.max_share".into(), format!("{max_share} is not a share between 0 and 1")));
            }
            let deadline =
                parse_duration("verify.deadline", v.deadline, &mut problems).unwrap_or(verification::DEFAULT_DEADLINE);
            let interval =
                parse_duration("verify.interval", v.interval, &mut problems).unwrap_or(verification::DEFAULT_INTERVAL);
            if interval.is_zero() || interval > deadline {
                problems.push(("verify.interval".into(), "must be more than 0 and at most the deadline".into()));
            }
            query.map(|query| Verification { query, limits: verification::Limits { max_share, deadline, interval } })
        }
    };
    match (namespace, object, action) {
        (Some(namespace), Some((kind, object)), Some(action)) if problems.is_empty() => Ok(Rule {
            name: raw.name,
            description: raw.description,
            file: file.to_path_buf(),
            matchers,
            status: raw.status,
            min_firing,
            namespace,
            kind,
            object,
            routes,
            action,
            cooldown,
            dry_run: raw.dry_run,
            confirm,
            verify,
            feedback,
            step_interval,
        }),
        _ => Err(problems),
    }
}

fn change(action: RawAction, problems: &mut Vec<(String, String)>) -> Option<Change> {
    let count = [action.rollback.is_some(), action.switch.is_some(), action.set_weights.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if count != 1 {
        problems.push(("action".into(), "exactly one of `rollback`, `switch`, `set-weights`".into()));
        return None;
    }
    let mut d = |field: &str, raw: RawDest| match raw.into_dest() {
        Ok(d) => Some(d),
        Err(m) => {
            problems.push((field.into(), m));
            None
        }
    };
    if let Some(rb) = action.rollback {
        let stable = d("action.rollback.stable", rb.stable);
        let canaries = match rb.canary {
            OneOrMany::One(c) => vec![c],
            OneOrMany::Many(cs) => cs,
        };
        let canary: Vec<Dest> = canaries.into_iter().filter_map(|c| d("action.rollback.canary", c)).collect();
        let stable = stable?;
        if canary.is_empty() {
            problems.push(("action.rollback.canary".into(), "name at least one canary destination".into()));
            return None;
        }
        if canary.contains(&stable) {
            problems.push(("action.rollback".into(), format!("{stable} is both stable and canary")));
            return None;
        }
        let Some(steps) = rb.steps else {
            return Some(Change::Rollback { stable, canary });
        };
        let decreasing = steps.windows(2).all(|w| w[0] > w[1]);
        if steps.last().map(|w| w.get()) != Some(0) || !decreasing || steps.first().is_some_and(|w| w.get() == 100) {
            let listed = steps.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            problems.push((
                "action.rollback.steps".into(),
                format!(
                    "[{listed}]: list the canary's weight at each step, strictly decreasing, below 100 \
                     and ending at 0 (for example [25, 10, 0])"
                ),
            ));
            return None;
        }
        let Ok([canary]) = <[Dest; 1]>::try_from(canary) else {
            problems.push(("action.rollback.canary".into(), "a gradual rollback (`steps`) takes one canary".into()));
            return None;
        };
        return Some(Change::StepDown { stable, canary, steps });
    }
    if let Some(sw) = action.switch {
        let (from, to) = (d("action.switch.from", sw.from)?, d("action.switch.to", sw.to)?);
        if from == to {
            problems.push(("action.switch".into(), format!("from and to are both {from}")));
            return None;
        }
        return Some(Change::Switch { from, to });
    }
    let mut weights = Vec::new();
    for (i, w) in action.set_weights.unwrap_or_default().into_iter().enumerate() {
        match dest(w.subset, w.host) {
            Ok(dest) => weights.push((dest, w.weight)),
            Err(m) => problems.push((format!("action.set-weights[{i}]"), m)),
        }
    }
    let total: u32 = weights.iter().map(|(_, w)| u32::from(w.get())).sum();
    if weights.is_empty() {
        problems.push(("action.set-weights".into(), "name at least one destination".into()));
        return None;
    }
    if total != 100 {
        problems.push(("action.set-weights".into(), format!("weights sum to {total}, not 100")));
        return None;
    }
    Some(Change::SetWeights { weights })
}

#[cfg(test)]
mod tests;
