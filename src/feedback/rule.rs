//! What a feedback rule compares, validated once (see `rules` for the YAML), and the pure
//! evaluation of it against the arms.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::arms::{Arm, ArmKey, Arms};
use super::noninferiority::{Signal, holds, not_worse, not_worse_series, score_above};
use super::restarts::{alpha_share, generation};
use super::sequential::{Comparison, Sequential, Tally, Test, msprt_dispersed};
use super::series::{Measure, Scale, Series};
use super::window::mean_score_below;

/// Which feedback a rule watches and how it judges it.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackSpec {
    pub service: String,
    /// None: the service in any namespace.
    pub namespace: Option<String>,
    pub canary: String,
    /// The version compared against (not used by `mean-score-below`).
    pub baseline: Option<String>,
    pub check: Check,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// Canary against baseline, sequentially (`threshold`: `min_effect` or `max_ratio`).
    Sequential { test: Test, settings: Sequential, threshold: f64 },
    /// The canary's mean score over the last `window` is under `threshold`.
    MeanScoreBelow { threshold: f64, min_samples: u64, window: Duration },
    /// Promotion: the canary shown not worse on every signal (each at `settings.alpha`), and its
    /// mean score above a threshold if `score` is set. Each is required: a missing signal holds.
    NotWorse { signals: Vec<Signal>, settings: Sequential, score: Option<ScoreAbove> },
}

/// A model's mean confidence to stay above, over a window (see
/// [`noninferiority::score_above`](super::noninferiority::score_above)).
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreAbove {
    pub threshold: f64,
    pub window: Duration,
    pub min_samples: u64,
}

/// A rule's conclusion that the canary is worse.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// Identifies the comparison: the idempotency key's suffix (one action per comparison).
    pub comparison: String,
    /// The evidence for the audit record.
    pub evidence: Value,
    /// The arms whose comparison ends when the action is applied.
    pub arms: Vec<ArmKey>,
    /// Labels for the rule's templates: `namespace`, `service`, `canary`, `baseline`.
    pub labels: std::collections::BTreeMap<String, String>,
}

impl FeedbackSpec {
    /// Whether an event about this version of this service concerns the rule.
    pub fn concerns(&self, namespace: &str, service: &str, version: &str) -> bool {
        self.service == service
            && self.namespace.as_deref().is_none_or(|n| n == namespace)
            && (self.canary == version || self.baseline.as_deref() == Some(version))
    }

    /// The test's name, for summaries.
    pub fn test_name(&self) -> &'static str {
        match &self.check {
            Check::Sequential { test, .. } => test.name(),
            Check::MeanScoreBelow { .. } => "mean_score_below",
            Check::NotWorse { .. } => "not_worse",
        }
    }

    /// Whether the rule promotes (its finding is evidence that the canary is not worse).
    pub fn promotes(&self) -> bool {
        matches!(self.check, Check::NotWorse { .. })
    }

    /// Evaluate at `now` for the service in `namespace`: Some when the canary is shown worse
    /// (a rollback's test) or shown not worse on everything required (a promotion's). The quick
    /// check runs first; evidence is built only for a finding.
    pub fn evaluate(&self, arms: &Arms, namespace: &str, now: DateTime<Utc>) -> Option<Finding> {
        // A promotion judges each stage on its own traffic; a rollback's comparison goes on
        // across a promotion's steps.
        let get = |key: &ArmKey| if self.promotes() { arms.stage(key) } else { arms.get(key) };
        let canary_key = ArmKey::new(namespace, &self.service, &self.canary);
        let canary = get(&canary_key)?;
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("namespace".to_string(), namespace.to_string());
        labels.insert("service".to_string(), self.service.clone());
        labels.insert("canary".to_string(), self.canary.clone());
        match &self.check {
            Check::Sequential { test, settings, threshold } => {
                let baseline_version = self.baseline.as_deref()?;
                let baseline_key = ArmKey::new(namespace, &self.service, baseline_version);
                let baseline = arms.get(&baseline_key)?;
                let fired = judge(*test, settings, *threshold, canary, baseline)?;
                let series = sequential_series(*test, settings, *threshold, &fired.comparison, (canary, baseline), now);
                let (c, b) = fired.tallies;
                let verdict = fired.comparison.verdict(c, b);
                let started = canary.started.max(baseline.started);
                labels.insert("baseline".to_string(), baseline_version.to_string());
                Some(Finding {
                    comparison: format!("{canary_key}|{baseline_version}|{}", started.to_rfc3339()),
                    evidence: json!({
                        "test": verdict.evidence().test,
                        "since": fired.since,
                        "comparison": {
                            "fired": if fired.generation == 0 { "since the start".to_string() } else { format!("restart {}", fired.generation) },
                            "generation": fired.generation,
                            "since": fired.since,
                            "started": started,
                            "alpha": fired.alpha,
                            "rule_alpha": settings.alpha,
                        },
                        "canary": { "version": self.canary, "summary": verdict.evidence().canary },
                        "baseline": { "version": baseline_version, "summary": verdict.evidence().baseline },
                        "detail": verdict.evidence().detail,
                        "series": series,
                    }),
                    arms: vec![canary_key, baseline_key],
                    labels,
                })
            }
            Check::NotWorse { signals, settings, score } => {
                let baseline = match self.baseline.as_deref() {
                    Some(b) => {
                        let key = ArmKey::new(namespace, &self.service, b);
                        Some((b, get(&key)?, key))
                    }
                    // Only a score: no baseline needed.
                    None if signals.is_empty() => None,
                    None => return None,
                };
                if let Some((_, b, _)) = &baseline
                    && !signals.iter().all(|s| holds(*s, &canary.tally, &b.tally, settings))
                {
                    return None;
                }
                let scored = match score {
                    Some(sc) => {
                        let summary = canary.scores.summary_within(now, sc.window);
                        let judged = score_above(&summary, sc.threshold, sc.min_samples, settings.alpha);
                        if !judged.is_act() {
                            return None;
                        }
                        Some((sc, judged))
                    }
                    None => None,
                };
                let started = baseline.as_ref().map_or(canary.started, |(_, b, _)| canary.started.max(b.started));
                let mut tests = Vec::new();
                if let Some((_, b, _)) = &baseline {
                    for signal in signals {
                        let judged = not_worse(*signal, &canary.tally, &b.tally, settings);
                        let e = judged.evidence();
                        tests.push(json!({
                            "test": e.test,
                            "canary": e.canary,
                            "baseline": e.baseline,
                            "detail": e.detail,
                            "series": not_worse_series(*signal, canary, b, settings, now),
                        }));
                    }
                }
                if let Some((sc, judged)) = &scored {
                    let e = judged.evidence();
                    tests.push(json!({
                        "test": e.test,
                        "window": humantime::format_duration(sc.window).to_string(),
                        "canary": e.canary,
                        "detail": e.detail,
                    }));
                }
                let comparison = match &baseline {
                    Some((b, _, _)) => {
                        labels.insert("baseline".to_string(), b.to_string());
                        format!("{canary_key}|{b}|{}", started.to_rfc3339())
                    }
                    None => format!("{canary_key}|{}", started.to_rfc3339()),
                };
                let mut keys = vec![canary_key];
                keys.extend(baseline.map(|(_, _, k)| k));
                Some(Finding {
                    comparison,
                    evidence: json!({
                        "test": "not_worse",
                        "since": started,
                        "alpha": settings.alpha,
                        "min_samples": settings.min_samples,
                        "canary": { "version": self.canary },
                        "baseline": { "version": self.baseline },
                        "tests": tests,
                    }),
                    arms: keys,
                    labels,
                })
            }
            Check::MeanScoreBelow { threshold, min_samples, window } => {
                let summary = canary.scores.summary_within(now, *window);
                let verdict = mean_score_below(&summary, *threshold, *min_samples);
                if !verdict.is_act() {
                    return None;
                }
                Some(Finding {
                    comparison: format!("{canary_key}|{}", canary.started.to_rfc3339()),
                    evidence: json!({
                        "test": verdict.evidence().test,
                        "window": humantime::format_duration(*window).to_string(),
                        "canary": { "version": self.canary, "summary": verdict.evidence().canary },
                        "detail": verdict.evidence().detail,
                    }),
                    arms: vec![canary_key],
                    labels,
                })
            }
        }
    }
}

/// The comparison since the start over time (see [`series`](super::series)): both arms' rates
/// with the p-value of the counts at each point (at the level of the comparison since the start,
/// with the decision's dispersion), or both p95s.
fn sequential_series(
    test: Test,
    settings: &Sequential,
    threshold: f64,
    comparison: &Comparison,
    (canary, baseline): (&Arm, &Arm),
    now: DateTime<Utc>,
) -> Series {
    let (measure, latency) = match test {
        Test::NegativeRatio => (Measure::Negative, false),
        Test::ErrorRatio => (Measure::Errors, false),
        Test::LatencyP95 => (Measure::Latency, true),
    };
    let phi = comparison.dispersion_used();
    let tau = settings.tau;
    let p = |(xc, nc): (u64, u64), (xb, nb): (u64, u64)| {
        msprt_dispersed(xc, nc, xb, nb, tau, phi.unwrap_or(1.0)).map(|m| m.p_value)
    };
    let scale = Scale {
        measure,
        alpha: (!latency).then(|| alpha_share(settings.alpha, 0)),
        dispersion: phi,
        max_ratio: latency.then_some(threshold),
        p_value: &p,
    };
    Series::pair(canary, baseline, now, &scale)
}

/// A comparison that showed the canary worse, and which one it was.
#[derive(Debug, Clone)]
pub struct Fired<'a> {
    pub comparison: Comparison,
    /// 0: since the start; `g`: since the `g`-th restart point after it.
    pub generation: u64,
    pub since: DateTime<Utc>,
    /// The level it was tested at.
    pub alpha: f64,
    /// The canary's and the baseline's tallies it compared.
    pub tallies: (&'a Tally, &'a Tally),
}

/// The comparison of a canary and its baseline that shows the canary worse, if any: the one
/// since the comparison started, then those since each restart point kept (see
/// [`restarts`](super::restarts)), each at its share of `alpha`, all with the dispersion
/// estimated since the start.
pub fn judge<'a>(
    test: Test,
    settings: &Sequential,
    threshold: f64,
    canary: &'a Arm,
    baseline: &'a Arm,
) -> Option<Fired<'a>> {
    let started = canary.started.max(baseline.started);
    let full = (&canary.tally, &baseline.tally);
    let recent = canary.recent.iter().filter_map(|r| {
        let g = generation(started, r.since)?;
        Some((g, r.since, (&r.tally, baseline.since(r.since)?)))
    });
    std::iter::once((0, started, full)).chain(recent).find_map(|(generation, since, tallies)| {
        let s = Sequential { alpha: alpha_share(settings.alpha, generation), ..*settings };
        let comparison = test.compare_within(tallies.0, tallies.1, full, &s, threshold);
        comparison.acts().then_some(Fired { comparison, generation, since, alpha: s.alpha, tallies })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Feedback, FeedbackKind};
    use crate::feedback::arms::Origin;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 20, 0, 0).unwrap()
    }

    fn add(arms: &mut Arms, version: &str, kind: FeedbackKind, n: usize) {
        for _ in 0..n {
            let f = Feedback {
                id: None,
                namespace: "sms-app".into(),
                service: "model-service".into(),
                version: version.into(),
                time: t0(),
                request_id: None,
                attempt: None,
                kind: kind.clone(),
            };
            arms.observe(t0(), &f, &Origin { id: None, kafka: None });
        }
    }

    fn spec(check: Check) -> FeedbackSpec {
        FeedbackSpec {
            service: "model-service".into(),
            namespace: None,
            canary: "v2".into(),
            baseline: Some("v1".into()),
            check,
        }
    }

    #[test]
    fn a_worse_canary_is_found_with_evidence_and_labels() {
        let mut arms = Arms::default();
        // 60 of 400 canary outcomes against 100 of 4,000, the errors in short runs.
        for _ in 0..20 {
            add(&mut arms, "v2", FeedbackKind::Outcome { success: false, latency_ms: None }, 3);
            add(&mut arms, "v2", FeedbackKind::Outcome { success: true, latency_ms: None }, 17);
            add(&mut arms, "v1", FeedbackKind::Outcome { success: false, latency_ms: None }, 5);
            add(&mut arms, "v1", FeedbackKind::Outcome { success: true, latency_ms: None }, 195);
        }
        let rule = spec(Check::Sequential { test: Test::ErrorRatio, settings: Sequential::default(), threshold: 1.5 });
        assert!(rule.concerns("sms-app", "model-service", "v1"));
        assert!(!rule.concerns("sms-app", "model-service", "v3"));
        let found = rule.evaluate(&arms, "sms-app", t0()).expect("15% against 2.5% is worse");
        assert_eq!(found.evidence["test"], "error_ratio");
        assert_eq!(found.evidence["canary"]["summary"]["errors"], 60);
        assert!((found.evidence["detail"]["ratio"].as_f64().unwrap() - 6.0).abs() < 1e-9);
        assert_eq!(found.labels["baseline"], "v1");
        assert_eq!(found.evidence["comparison"]["fired"], "since the start");
        assert!((found.evidence["comparison"]["alpha"].as_f64().unwrap() - 0.0375).abs() < 1e-12);
        let dispersion = &found.evidence["detail"]["sequential"]["dispersion"];
        // Errors in runs of 3 and 5 read as dispersed; the record says how much, next to the counts.
        assert!(dispersion["used"].as_f64().unwrap() > 1.0, "{dispersion}");
        assert_eq!(dispersion["estimate"], dispersion["used"]);
        assert_eq!(dispersion["batch_size"]["baseline"], 100);
        assert_eq!(found.comparison, format!("sms-app/model-service@v2|v1|{}", t0().to_rfc3339()));
        assert_eq!(found.arms.len(), 2);
        // No baseline arm, nothing concluded.
        assert_eq!(rule.evaluate(&arms, "other", t0()), None);
    }

    /// A canary as good as its baseline for 20 minutes, then failing three times as often: the
    /// comparison since the start is still diluted, one restarted since fires, and the finding
    /// says which and since when.
    #[test]
    fn a_canary_that_goes_bad_late_is_found_by_a_restarted_comparison() {
        let mut arms = Arms::default();
        let rule = spec(Check::Sequential { test: Test::ErrorRatio, settings: Sequential::default(), threshold: 1.5 });
        let mut rng = crate::feedback::testing::Rng(4);
        let mut found = None;
        for i in 0..60_000u64 {
            let now = t0() + chrono::Duration::milliseconds(i as i64 * 50);
            let canary = rng.uniform() < 0.1;
            let p = if canary && i >= 24_000 { 0.15 } else { 0.05 };
            let f = Feedback {
                id: None,
                namespace: "sms-app".into(),
                service: "model-service".into(),
                version: if canary { "v2" } else { "v1" }.into(),
                time: now,
                request_id: None,
                attempt: None,
                kind: FeedbackKind::Outcome { success: rng.uniform() >= p, latency_ms: None },
            };
            arms.observe(now, &f, &Origin { id: None, kafka: None });
            if let Some(finding) = rule.evaluate(&arms, "sms-app", now) {
                found = Some((i, finding));
                break;
            }
        }
        let (at, found) = found.expect("a 3x canary is found");
        assert!(at > 24_000, "found at {at}, before the change");
        let c = &found.evidence["comparison"];
        let generation = c["generation"].as_u64().unwrap();
        assert!(generation >= 1, "{c}");
        assert_eq!(c["fired"], format!("restart {generation}"));
        assert_eq!(found.evidence["since"], c["since"]);
        let started: DateTime<Utc> = serde_json::from_value(c["started"].clone()).unwrap();
        assert!(started < t0() + chrono::Duration::seconds(10), "both arms' first events: {c}");
        assert!(c["alpha"].as_f64().unwrap() <= 0.05 * 0.25 / 2.0, "{c}");
        // The comparison key is still the one since the start: one action per comparison.
        assert_eq!(found.comparison, format!("sms-app/model-service@v2|v1|{}", started.to_rfc3339()));
    }

    /// Events at `ms` apart: one in ten to the canary, failing with `canary_p` (latency
    /// `canary_s`), the others to the baseline with `base_p` (`base_s`); the first finding of
    /// `rule`, and the arms then.
    fn over_time(
        rule: &FeedbackSpec,
        ms: i64,
        (canary_p, canary_s): (f64, f64),
        (base_p, base_s): (f64, f64),
    ) -> Finding {
        let mut arms = Arms::default();
        let mut rng = crate::feedback::testing::Rng(7);
        for i in 0..200_000u64 {
            let now = t0() + chrono::Duration::milliseconds(i as i64 * ms);
            let canary = i.is_multiple_of(10);
            let (p, s) = if canary { (canary_p, canary_s) } else { (base_p, base_s) };
            let f = Feedback {
                id: None,
                namespace: "sms-app".into(),
                service: "model-service".into(),
                version: if canary { "v2" } else { "v1" }.into(),
                time: now,
                request_id: None,
                attempt: None,
                kind: FeedbackKind::Outcome { success: rng.uniform() >= p, latency_ms: Some(s * 1000.0) },
            };
            arms.observe(now, &f, &Origin { id: None, kafka: None });
            if let Some(finding) = rule.evaluate(&arms, "sms-app", now) {
                return finding;
            }
        }
        panic!("nothing found");
    }

    #[test]
    fn a_finding_carries_its_comparison_over_time() {
        let rule = spec(Check::Sequential { test: Test::ErrorRatio, settings: Sequential::default(), threshold: 1.5 });
        let found = over_time(&rule, 200, (0.12, 0.05), (0.02, 0.05));
        let e = &found.evidence;
        assert_eq!(e["comparison"]["generation"], 0, "{e}");
        let series: Series = serde_json::from_value(e["series"].clone()).unwrap();
        // Tested at the level of the comparison since the start (this one).
        assert_eq!((series.measure.as_str(), series.alpha), ("errors", e["comparison"]["alpha"].as_f64()));
        assert_eq!(series.dispersion, e["detail"]["sequential"]["dispersion"]["used"].as_f64());
        let points = &series.points;
        assert!(points.len() >= 10 && points.len() <= crate::feedback::series::SERIES_POINTS, "{}", points.len());
        // From the start (nothing counted) to the decision (what the detail says), in order.
        let (first, last) = (points[0], points[points.len() - 1]);
        assert_eq!((first.canary.n, first.baseline.n), (0, 0));
        let started: DateTime<Utc> = serde_json::from_value(e["comparison"]["started"].clone()).unwrap();
        assert!(first.at <= started, "{first:?}");
        let d = &e["detail"];
        assert_eq!(Some(last.canary.n), d["canary"]["n"].as_u64());
        assert_eq!(last.canary.bad, d["canary"]["errors"].as_u64());
        assert_eq!(Some(last.baseline.n), d["baseline"]["n"].as_u64());
        assert_eq!(last.p_value, d["sequential"]["p_value"].as_f64());
        assert!(points.windows(2).all(|w| w[0].at < w[1].at && w[0].canary.n <= w[1].canary.n));

        let rule = spec(Check::Sequential { test: Test::LatencyP95, settings: Sequential::default(), threshold: 1.5 });
        let found = over_time(&rule, 200, (0.0, 0.4), (0.0, 0.1));
        let series: Series = serde_json::from_value(found.evidence["series"].clone()).unwrap();
        assert_eq!((series.measure.as_str(), series.max_ratio, series.alpha), ("latency_p95", Some(1.5), None));
        let last = series.points.last().unwrap();
        assert_eq!(last.canary.p95, found.evidence["detail"]["canary_p95"].as_f64());
        assert!(last.baseline.p95.is_some() && last.p_value.is_none() && last.canary.bad.is_none(), "{last:?}");
    }

    #[test]
    fn a_promotion_carries_each_tests_comparison_over_time() {
        use crate::feedback::noninferiority::Margin;
        let settings = Sequential { alpha: 0.05, min_samples: 100, tau: 0.05 };
        let rule = spec(Check::NotWorse {
            signals: vec![Signal::ErrorRatio(Margin::Points(0.05)), Signal::LatencyP95 { max_ratio: 1.5 }],
            settings,
            score: None,
        });
        let found = over_time(&rule, 200, (0.01, 0.05), (0.01, 0.05));
        let tests = found.evidence["tests"].as_array().unwrap();
        let errors: Series = serde_json::from_value(tests[0]["series"].clone()).unwrap();
        assert_eq!((errors.measure.as_str(), errors.alpha), ("errors", Some(0.05)));
        let last = errors.points.last().unwrap();
        assert_eq!(last.p_value, tests[0]["detail"]["sequential"]["p_value"].as_f64());
        assert_eq!(Some(last.canary.n), tests[0]["detail"]["canary"]["n"].as_u64());
        let latency: Series = serde_json::from_value(tests[1]["series"].clone()).unwrap();
        assert_eq!((latency.measure.as_str(), latency.max_ratio), ("latency_p95", Some(1.5)));
    }

    #[test]
    fn a_low_mean_score_acts_at_once_and_only_within_its_window() {
        let mut arms = Arms::default();
        add(&mut arms, "v2", FeedbackKind::Score { score: 0.2 }, 1);
        let rule = FeedbackSpec {
            baseline: None,
            ..spec(Check::MeanScoreBelow { threshold: 0.3, min_samples: 1, window: Duration::from_secs(60) })
        };
        let found = rule.evaluate(&arms, "sms-app", t0()).expect("0.2 < 0.3");
        assert_eq!(found.evidence["detail"]["mean"], 0.2);
        assert_eq!(rule.evaluate(&arms, "sms-app", t0() + chrono::Duration::seconds(120)), None);
    }
}
