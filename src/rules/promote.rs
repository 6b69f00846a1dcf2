//! Promotion rules (issue #18), as written and as validated: the evidence a feedback rule needs to
//! show a canary **not worse** than its baseline (`feedback.not_worse`, `feedback.score_above`),
//! and the `promote:` action that raises the canary one step when it does.
//!
//! ```yaml
//! feedback:
//!   service: model-service
//!   canary: v2
//!   baseline: v1
//!   not_worse:
//!     error-ratio: {margin: 0.01}      # at most one point above the baseline's error ratio
//!     latency-p95: {max_ratio: 1.10}   # p95 within 10% of the baseline's
//!   score_above: {threshold: 0.7, window: 5m}
//! action:
//!   promote: {stable: v1, canary: v2, steps: [25, 50, 100], interval: 5m, max: 100}
//! ```

use std::collections::BTreeMap;

use crate::feedback::noninferiority::{Margin, Signal};
use crate::feedback::rule::ScoreAbove;
use crate::promotion::{Schedule, max_weight};

use super::*;

/// `not_worse:` as a list of signals with their default margins, or a map of signal to margin.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a list of signals ([error-ratio, latency-p95]) or a map of signal to its margin")]
pub(super) enum RawNotWorse {
    Names(Vec<RawSignal>),
    Margins(BTreeMap<RawSignal, Option<RawMargin>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum RawSignal {
    ErrorRatio,
    NegativeRatio,
    LatencyP95,
}

/// A margin: `margin` in points (0.01: one percentage point), or `max_ratio`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMargin {
    #[serde(default)]
    pub(super) margin: Option<f64>,
    #[serde(default)]
    pub(super) max_ratio: Option<f64>,
}

/// `score_above: {threshold, window?, min_samples?}`: a model's mean confidence.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScoreAbove {
    pub(super) threshold: f64,
    #[serde(default, deserialize_with = "crate::yaml::duration")]
    pub(super) window: Option<String>,
    #[serde(default)]
    pub(super) min_samples: Option<u64>,
}

/// `promote: {stable, canary, steps?, interval?, max?}` on a VirtualService, or
/// `promote: {switch-selector: {label, from, to}, interval?}` on a Service (blue-green).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPromote {
    #[serde(default)]
    pub(super) stable: Option<RawDest>,
    #[serde(default)]
    pub(super) canary: Option<RawDest>,
    #[serde(default, rename = "switch-selector")]
    pub(super) switch_selector: Option<SelectorSwitch>,
    #[serde(default)]
    pub(super) steps: Option<Vec<u64>>,
    #[serde(default, deserialize_with = "crate::yaml::duration")]
    pub(super) interval: Option<String>,
    #[serde(default)]
    pub(super) max: Option<u64>,
}

/// The default margins: one point of errors, five points of negative answers (the rollback
/// rule's `min_effect` in the shipped rules), p95 within 10% (the acceptance criterion).
pub const DEFAULT_ERROR_MARGIN: f64 = 0.01;
pub const DEFAULT_NEGATIVE_MARGIN: f64 = 0.05;
pub const DEFAULT_LATENCY_RATIO: f64 = 1.10;
/// The minimum time between two steps when the rule does not say.
pub const DEFAULT_PROMOTE_INTERVAL: Duration = Duration::from_secs(300);

/// A validated `promote:` action.
#[derive(Debug, Clone, PartialEq)]
pub struct Promote {
    pub stable: Dest,
    pub canary: Dest,
    pub schedule: Schedule,
    /// The minimum time between two steps.
    pub interval: Duration,
    /// The canary's last weight (100: a full rollout; 50: an A/B test that stops there).
    pub max: u8,
    /// Blue-green by a Service's selector: one step, the switch from `stable` (`from`) to
    /// `canary` (`to`), read as the canary at 0 before it and at 100 after.
    pub selector: Option<SelectorSwitch>,
}

impl Promote {
    /// The change of the step from `from` to `to`: the VirtualService's weights, or the
    /// Service's selector switched.
    pub fn step(&self, from: Weight, to: Weight, routes: Option<Vec<String>>) -> ActionPlan {
        match &self.selector {
            Some(sw) => ActionPlan::Selector(sw.clone()),
            None => ActionPlan::Traffic(Plan {
                change: Change::StepUp { stable: self.stable.clone(), canary: self.canary.clone(), from, to },
                routes,
            }),
        }
    }

    /// The canary's version as the promotion's records name it (`v2`, or a host).
    pub fn canary_name(&self) -> &str {
        match &self.canary {
            Dest::Subset(s) | Dest::Host(s) => s,
        }
    }
}

/// Validate `not_worse` and `score_above` into a check (None with the problems recorded).
pub(super) fn evidence(
    not_worse: Option<RawNotWorse>,
    score_above: Option<RawScoreAbove>,
    settings: Sequential,
    problems: &mut Vec<(String, String)>,
) -> Option<Check> {
    let before = problems.len();
    let mut problem = |field: &str, message: String| problems.push((format!("feedback.{field}"), message));
    let listed: Vec<(RawSignal, Option<RawMargin>)> = match not_worse {
        None => Vec::new(),
        Some(RawNotWorse::Names(names)) => {
            let mut names = names;
            names.sort();
            if names.windows(2).any(|w| w[0] == w[1]) {
                problem("not_worse", "a signal is listed twice".into());
            }
            names.dedup();
            names.into_iter().map(|n| (n, None)).collect()
        }
        Some(RawNotWorse::Margins(m)) => m.into_iter().collect(),
    };
    let mut signals = Vec::new();
    for (name, margin) in listed {
        let margin = margin.unwrap_or_default();
        let field = match name {
            RawSignal::ErrorRatio => "not_worse.error-ratio",
            RawSignal::NegativeRatio => "not_worse.negative-ratio",
            RawSignal::LatencyP95 => "not_worse.latency-p95",
        };
        let signal = match (name, margin.margin, margin.max_ratio) {
            (_, Some(_), Some(_)) => {
                problem(field, "give `margin` (points) or `max_ratio`, not both".into());
                continue;
            }
            (RawSignal::LatencyP95, Some(_), None) => {
                problem(field, "latency takes `max_ratio` (the canary's p95 over the baseline's)".into());
                continue;
            }
            (RawSignal::LatencyP95, None, ratio) => {
                Signal::LatencyP95 { max_ratio: ratio.unwrap_or(DEFAULT_LATENCY_RATIO) }
            }
            (RawSignal::ErrorRatio, m, r) => Signal::ErrorRatio(margin_of(m, r, DEFAULT_ERROR_MARGIN)),
            (RawSignal::NegativeRatio, m, r) => Signal::NegativeRatio(margin_of(m, r, DEFAULT_NEGATIVE_MARGIN)),
        };
        let valid = match signal {
            Signal::ErrorRatio(Margin::Points(m)) | Signal::NegativeRatio(Margin::Points(m)) => {
                m.is_finite() && m > 0.0 && m < 1.0
            }
            Signal::ErrorRatio(Margin::Ratio(r))
            | Signal::NegativeRatio(Margin::Ratio(r))
            | Signal::LatencyP95 { max_ratio: r } => r.is_finite() && r >= 1.0,
        };
        if !valid {
            problem(field, "a margin in points is in (0, 1) (0.01: one point); a max_ratio is at least 1".into());
            continue;
        }
        signals.push(signal);
    }
    let score = match score_above {
        None => None,
        Some(s) => {
            if !(s.threshold.is_finite() && (0.0..=1.0).contains(&s.threshold)) {
                problem("score_above.threshold", format!("{} is not a score between 0 and 1", s.threshold));
            }
            let window = match s.window.as_deref().map(humantime::parse_duration) {
                None => Duration::from_secs(300),
                Some(Ok(w)) if !w.is_zero() && w <= crate::feedback::arms::SCORE_WINDOW => w,
                Some(Ok(w)) => {
                    let max = humantime::format_duration(crate::feedback::arms::SCORE_WINDOW);
                    problem(
                        "score_above.window",
                        format!("{} is not between 1s and {max}", humantime::format_duration(w)),
                    );
                    w
                }
                Some(Err(e)) => {
                    problem("score_above.window", format!("not a duration ({e}); examples: 30s, 5m"));
                    Duration::ZERO
                }
            };
            let min_samples = s.min_samples.unwrap_or(settings.min_samples);
            if min_samples == 0 {
                problem("score_above.min_samples", "must be at least 1".into());
            }
            Some(ScoreAbove { threshold: s.threshold, window, min_samples })
        }
    };
    if signals.is_empty() && score.is_none() && problems.len() == before {
        let why = "list at least one signal (error-ratio, negative-ratio, latency-p95)";
        problems.push(("feedback.not_worse".into(), why.into()));
    }
    (problems.len() == before).then_some(Check::NotWorse { signals, settings, score })
}

fn margin_of(points: Option<f64>, ratio: Option<f64>, default_points: f64) -> Margin {
    match (points, ratio) {
        (_, Some(r)) => Margin::Ratio(r),
        (Some(m), None) => Margin::Points(m),
        (None, None) => Margin::Points(default_points),
    }
}

/// Validate a `promote:` action.
pub(super) fn promote(raw: RawPromote, problems: &mut Vec<(String, String)>) -> Option<Promote> {
    let before = problems.len();
    let mut dest = |field: &str, raw: RawDest| match raw.into_dest() {
        Ok(d) => Some(d),
        Err(m) => {
            problems.push((field.into(), m));
            None
        }
    };
    if let Some(sw) = raw.switch_selector {
        let mut problem = |field: &str, m: &str| problems.push((format!("action.promote.{field}"), m.to_string()));
        if [&sw.label, &sw.from, &sw.to].iter().any(|v| v.is_empty()) || sw.from == sw.to {
            problem("switch-selector", "label, from and to must be set, from and to different");
        }
        if raw.stable.is_some() || raw.canary.is_some() || raw.steps.is_some() || raw.max.is_some() {
            problem("switch-selector", "a switch is one step: no stable, canary, steps or max beside it");
        }
        let interval =
            parse_duration("action.promote.interval", raw.interval, problems).unwrap_or(DEFAULT_PROMOTE_INTERVAL);
        return (problems.len() == before).then(|| Promote {
            stable: Dest::Subset(sw.from.clone()),
            canary: Dest::Subset(sw.to.clone()),
            schedule: Schedule::Steps(vec![100]),
            interval,
            max: 100,
            selector: Some(sw),
        });
    }
    let (Some(stable), Some(canary)) = (raw.stable, raw.canary) else {
        problems.push((
            "action.promote".into(),
            "name `stable` and `canary` (a VirtualService's destinations), or `switch-selector` (a Service's)".into(),
        ));
        return None;
    };
    let stable = dest("action.promote.stable", stable);
    let canary = dest("action.promote.canary", canary);
    let schedule = match Schedule::new(raw.steps.as_deref()) {
        Ok(s) => Some(s),
        Err(e) => {
            problems.push(("action.promote.steps".into(), e.to_string()));
            None
        }
    };
    let max = match max_weight(raw.max.unwrap_or(100)) {
        Ok(m) => Some(m),
        Err(e) => {
            problems.push(("action.promote.max".into(), e.to_string()));
            None
        }
    };
    let interval =
        parse_duration("action.promote.interval", raw.interval, problems).unwrap_or(DEFAULT_PROMOTE_INTERVAL);
    if interval.is_zero() {
        problems.push(("action.promote.interval".into(), "must be more than 0".into()));
    }
    if let (Some(s), Some(c)) = (&stable, &canary)
        && s == c
    {
        problems.push(("action.promote".into(), format!("{s} is both stable and canary")));
    }
    let (stable, canary, schedule, max) = (stable?, canary?, schedule?, max?);
    (problems.len() == before).then_some(Promote { stable, canary, schedule, interval, max, selector: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(yaml: &str) -> Result<Vec<Rule>, String> {
        let mut errors = Vec::new();
        let rules = parse_file(Path::new("promote.yaml"), yaml, &mut errors);
        match errors.is_empty() {
            true => Ok(rules),
            false => Err(RuleErrors(errors).to_string()),
        }
    }

    const PROMOTE: &str = r#"
rules:
  - name: promote-model-service
    feedback:
      service: model-service
      canary: v2
      baseline: v1
      not_worse:
        error-ratio: {margin: 0.02}
        latency-p95:
      score_above: {threshold: 0.7, window: 2m}
      min_samples: 300
    target: {namespace: sms-app, virtualservice: model-service}
    action:
      promote: {stable: v1, canary: v2, steps: [25, 50, 100], interval: 10m, max: 50}
"#;

    #[test]
    fn a_promotion_rule_reads_its_evidence_margins_and_schedule() {
        let rule = rules(PROMOTE).unwrap().remove(0);
        let Some(FeedbackSpec { check: Check::NotWorse { signals, settings, score }, .. }) = &rule.feedback else {
            panic!("{:?}", rule.feedback)
        };
        assert_eq!(
            signals,
            &[Signal::ErrorRatio(Margin::Points(0.02)), Signal::LatencyP95 { max_ratio: DEFAULT_LATENCY_RATIO }]
        );
        assert_eq!(settings.min_samples, 300);
        assert_eq!(score, &Some(ScoreAbove { threshold: 0.7, window: Duration::from_secs(120), min_samples: 300 }));
        let RuleAction::Promote(p) = &rule.action else { panic!("{:?}", rule.action) };
        assert_eq!(p.schedule, Schedule::Steps(vec![25, 50, 100]));
        assert_eq!((p.interval, p.max, p.canary_name()), (Duration::from_secs(600), 50, "v2"));
        assert!(rule.action_summary().contains("promote subset v2"), "{}", rule.action_summary());
    }

    #[test]
    fn a_list_of_signals_takes_the_default_margins() {
        let yaml = PROMOTE.replace(
            "not_worse:\n        error-ratio: {margin: 0.02}\n        latency-p95:",
            "not_worse: [negative-ratio, error-ratio]",
        );
        let rule = rules(&yaml).unwrap().remove(0);
        let Some(FeedbackSpec { check: Check::NotWorse { signals, .. }, .. }) = &rule.feedback else { panic!() };
        assert_eq!(signals, &[Signal::ErrorRatio(Margin::Points(0.01)), Signal::NegativeRatio(Margin::Points(0.05))]);
    }

    #[test]
    fn a_blue_green_service_is_promoted_by_its_selector_switch_in_one_step() {
        let yaml = PROMOTE
            .replace("canary: v2\n      baseline: v1", "canary: green\n      baseline: blue")
            .replace("virtualservice: model-service", "service: checkout")
            .replace(
                "promote: {stable: v1, canary: v2, steps: [25, 50, 100], interval: 10m, max: 50}",
                "promote: {switch-selector: {label: version, from: blue, to: green}, interval: 10m}",
            );
        let rule = rules(&yaml).unwrap().remove(0);
        let p = rule.promotion().unwrap();
        assert_eq!((p.max, p.schedule.path(0, p.max)), (100, vec![100]));
        assert_eq!(p.selector.as_ref().map(|s| s.to.as_str()), Some("green"));
        let plan = p.step(Weight::at_most_100(0), Weight::at_most_100(100), None);
        assert!(matches!(plan, ActionPlan::Selector(_)), "{plan:?}");
        let on_vs = yaml.replace("service: checkout", "virtualservice: checkout");
        assert!(rules(&on_vs).unwrap_err().contains("target"), "{}", rules(&on_vs).unwrap_err());
        let both = yaml.replace("{switch-selector:", "{stable: blue, switch-selector:");
        assert!(rules(&both).unwrap_err().contains("a switch is one step"), "{}", rules(&both).unwrap_err());
    }

    /// Every problem at once, each with its field.
    #[test]
    fn bad_promotion_rules_say_every_problem_with_its_field() {
        let yaml = PROMOTE
            .replace("{margin: 0.02}", "{margin: 0.02, max_ratio: 1.2}")
            .replace("latency-p95:", "latency-p95: {margin: 0.1}")
            .replace("threshold: 0.7", "threshold: 7")
            .replace("steps: [25, 50, 100]", "steps: [50, 25]")
            .replace("max: 50", "max: 0")
            .replace("interval: 10m", "interval: soon");
        let err = rules(&yaml).unwrap_err();
        for field in [
            "feedback.not_worse.error-ratio",
            "feedback.not_worse.latency-p95",
            "feedback.score_above.threshold",
            "action.promote.steps",
            "action.promote.max",
            "action.promote.interval",
        ] {
            assert!(err.contains(field), "{field} missing from: {err}");
        }
    }

    #[test]
    fn evidence_and_action_must_agree() {
        // A promotion without evidence, and a rollback test on a promotion.
        let none = PROMOTE
            .replace("      not_worse:\n        error-ratio: {margin: 0.02}\n        latency-p95:\n", "")
            .replace("      score_above: {threshold: 0.7, window: 2m}\n", "");
        let err = rules(&none).unwrap_err();
        assert!(err.contains("the evidence a promotion needs: `not_worse` and/or `score_above`"), "{err}");
        let test = PROMOTE.replace("baseline: v1\n", "baseline: v1\n      test: error-ratio\n");
        let err = rules(&test).unwrap_err();
        assert!(err.contains("either `test` (to roll back) or `not_worse`/`score_above`"), "{err}");
        let mismatched =
            PROMOTE.replace("canary: v2, steps", "canary: v3, steps").replace("{stable: v1", "{stable: v0");
        let err = rules(&mismatched).unwrap_err();
        assert!(err.contains("action.promote.canary") && err.contains("action.promote.stable"), "{err}");
        let cooled = PROMOTE.replace("    action:\n", "    cooldown: 1h\n    action:\n");
        assert!(rules(&cooled).unwrap_err().contains("a cooldown does not apply"), "{}", rules(&cooled).unwrap_err());
        let rollback = PROMOTE.replace(
            "promote: {stable: v1, canary: v2, steps: [25, 50, 100], interval: 10m, max: 50}",
            "rollback: {stable: v1, canary: v2}",
        );
        let err = rules(&rollback).unwrap_err();
        assert!(err.contains("evidence that the canary is not worse promotes it"), "{err}");
        let on_alert = r#"
rules:
  - name: p
    match: ['alertname="X"']
    target: {namespace: sms-app, virtualservice: model-service}
    action:
      promote: {stable: v1, canary: v2}
"#;
        assert!(
            rules(on_alert).unwrap_err().contains("a promotion acts on feedback"),
            "{}",
            rules(on_alert).unwrap_err()
        );
    }
}
