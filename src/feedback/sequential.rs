//! Canary-versus-baseline comparisons that stay valid when they are evaluated at every event.
//!
//! # Why not the z-test
//! A fixed-sample test has its nominal level only if it is looked at once, at a sample size
//! chosen in advance. A responder looks at every event: a one-sided z-test at p < 0.05 checked
//! after each of 2,000 canary events "finds" a worse canary in roughly a third of A/A streams
//! (both arms identical). The simulation in the tests below measures exactly that.
//!
//! # The mixture sequential probability ratio test (mSPRT)
//! Robbins (1970); Johari, Pekelis and Walsh, "Always valid inference" (2017), the test behind
//! Optimizely's stats engine. For the difference of two proportions `Δ = p_canary − p_baseline`
//! with `Δ̂` the difference of the observed rates and `V = p̄(1 − p̄)(1/n_c + 1/n_b)` its
//! variance when both arms are alike (`p̄` pooled), the likelihood ratio of a normal mixture
//! `Δ ~ N(0, τ²)` against `Δ = 0` is
//!
//! ```text
//! Λ = sqrt(V / (V + τ²)) · exp(τ² Δ̂² / (2 V (V + τ²)))
//! ```
//!
//! When the arms are alike, `Λ` is (up to the estimate of `V`) a non-negative martingale of mean
//! 1, so by Ville's inequality the chance that it *ever* reaches `1/α` is at most `α`, however
//! often it is looked at. A comparison acts the first time `Λ ≥ 1/α` with `Δ̂ > 0` (the canary
//! worse), so the one-sided level is at most `α` too; `min(1, 1/Λ)` is the always-valid p-value.
//! `τ` is the size of difference the test is most sensitive to (default 0.05, five points):
//! any real difference is found eventually; `τ` near it finds it sooner.
//!
//! The counts are cumulative from the start of the comparison (a [`Tally`] per arm), not a
//! sliding window: a window drops old events, which breaks the martingale. Memory is constant
//! per arm. The engine restarts a comparison after an action on its target and after a quiet
//! period (see [`Arms::reset`](crate::feedback::arms::Arms::reset) and [`Arms::prune`](crate::feedback::arms::Arms::prune)).
//!
//! # The three comparisons
//! - [`negative_ratio`]: users' negative feedback, `Δ̂ ≥ min_effect` besides the test.
//! - [`error_ratio`]: request errors; besides the test the canary's error ratio must exceed
//!   `max_ratio` times the baseline's (floored at `1/(n+1)` when the baseline has none).
//! - [`latency_p95`]: the share of requests slower than the baseline's p95 (5% for an arm like
//!   the baseline), tested as a proportion; besides the test the canary's p95 must exceed
//!   `max_ratio` times the baseline's. The cut-off is estimated from the baseline's own data,
//!   so this one is valid approximately; the A/A simulation checks it too.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::window::{
    ArmSummary, EPSILON, Evidence, Judgement, LATENCY_BINS, Observation, interval_json, latency_bin, latency_quantile,
    num, rate,
};

/// The default `τ`: the difference of proportions the test is tuned for.
pub const DEFAULT_TAU: f64 = 0.05;

/// The test's settings, validated when the rule is loaded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sequential {
    /// The chance of acting on a canary no worse than its baseline, over the whole comparison.
    pub alpha: f64,
    /// Events each arm needs before anything is concluded (at least 1).
    pub min_samples: u64,
    pub tau: f64,
}

impl Default for Sequential {
    fn default() -> Self {
        Sequential { alpha: 0.05, min_samples: 100, tau: DEFAULT_TAU }
    }
}

/// One arm's events since its comparison started: counters and a latency histogram.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    pub satisfaction_n: u64,
    pub negative: u64,
    pub outcomes_n: u64,
    pub errors: u64,
    pub latency_n: u64,
    /// [`LATENCY_BINS`] counters, once a latency was seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    latency: Option<Vec<u64>>,
}

impl Tally {
    /// Count an observation (scores are not compared sequentially: see `mean_score_below`).
    pub fn add(&mut self, observation: Observation) {
        match observation {
            Observation::Satisfaction { satisfied } => {
                self.satisfaction_n = self.satisfaction_n.saturating_add(1);
                self.negative = self.negative.saturating_add(u64::from(!satisfied));
            }
            Observation::Score { .. } => {}
            Observation::Outcome { success, latency_seconds } => {
                self.outcomes_n = self.outcomes_n.saturating_add(1);
                self.errors = self.errors.saturating_add(u64::from(!success));
                if let Some(seconds) = latency_seconds.filter(|s| s.is_finite() && *s >= 0.0) {
                    let hist = self.latency.get_or_insert_with(|| vec![0; LATENCY_BINS]);
                    if let Some(bin) = hist.get_mut(latency_bin(seconds)) {
                        *bin = bin.saturating_add(1);
                        self.latency_n = self.latency_n.saturating_add(1);
                    }
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.satisfaction_n == 0 && self.outcomes_n == 0
    }

    fn p95(&self) -> Option<f64> {
        self.latency.as_deref().and_then(|h| latency_quantile(h, self.latency_n, 0.95))
    }

    /// The bin holding the p95.
    fn p95_bin(&self) -> Option<usize> {
        let p95 = self.p95()?;
        Some(latency_bin(p95))
    }

    /// Latencies in bins above `bin`.
    fn slower_than(&self, bin: usize) -> u64 {
        self.latency.as_deref().map(|h| h.iter().skip(bin + 1).fold(0u64, |a, c| a.saturating_add(*c))).unwrap_or(0)
    }

    pub fn summary(&self) -> ArmSummary {
        ArmSummary {
            satisfaction_n: self.satisfaction_n,
            negative: self.negative,
            outcomes_n: self.outcomes_n,
            errors: self.errors,
            latency_p95: self.p95(),
            latency_n: self.latency_n,
            ..ArmSummary::default()
        }
    }
}

/// The mSPRT's figures at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Msprt {
    /// The canary's rate minus the baseline's.
    pub delta: f64,
    /// `V`, the variance of `delta` if both arms were alike.
    pub variance: f64,
    /// `ln Λ` (Λ itself overflows for large samples).
    pub log_lambda: f64,
    /// `min(1, 1/Λ)`.
    pub p_value: f64,
}

/// The mixture SPRT of "the canary's proportion differs from the baseline's" (see the module
/// documentation). None without samples in either arm, with inconsistent counts, with a `τ`
/// that is not positive, or without variance (both arms all 0 or all 1).
pub fn msprt(x_canary: u64, n_canary: u64, x_base: u64, n_base: u64, tau: f64) -> Option<Msprt> {
    if n_canary == 0 || n_base == 0 || x_canary > n_canary || x_base > n_base || !(tau > 0.0 && tau.is_finite()) {
        return None;
    }
    let (nc, nb) = (n_canary as f64, n_base as f64);
    let delta = x_canary as f64 / nc - x_base as f64 / nb;
    let pooled = (x_canary as f64 + x_base as f64) / (nc + nb);
    let variance = pooled * (1.0 - pooled) * (1.0 / nc + 1.0 / nb);
    if variance.is_nan() || variance <= 0.0 {
        return None;
    }
    let t2 = tau * tau;
    let log_lambda = 0.5 * (variance / (variance + t2)).ln() + t2 * delta * delta / (2.0 * variance * (variance + t2));
    let p_value = (-log_lambda).exp().min(1.0);
    Some(Msprt { delta, variance, log_lambda, p_value })
}

/// Collects why a comparison holds; without a list (the hot path, [`acts`]) it stops at the
/// first failed condition and formats nothing. One set of conditions serves both.
struct Failures<'a> {
    list: Option<&'a mut Vec<String>>,
    ok: bool,
}

impl Failures<'_> {
    /// Note a failed condition. False when the caller should stop (nobody wants the reasons).
    fn fail(&mut self, why: impl FnOnce() -> String) -> bool {
        self.ok = false;
        match self.list.as_deref_mut() {
            Some(list) => {
                list.push(why());
                true
            }
            None => false,
        }
    }
}

/// A comparison's inputs, computed once for both the quick check and the verdict.
#[derive(Debug, Clone, Copy)]
pub struct Comparison {
    test: Test,
    /// Bad events and samples per arm (negative, errors, or slower than the baseline's p95).
    canary: (u64, u64),
    baseline: (u64, u64),
    msprt: Option<Msprt>,
    settings: Sequential,
    /// `min_effect` or `max_ratio`.
    threshold: f64,
    /// The canary's value and the baseline's reference for the ratio conditions.
    values: (Option<f64>, Option<f64>),
}

/// Which comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Test {
    NegativeRatio,
    ErrorRatio,
    LatencyP95,
}

impl Test {
    pub fn name(self) -> &'static str {
        match self {
            Test::NegativeRatio => "negative_ratio",
            Test::ErrorRatio => "error_ratio",
            Test::LatencyP95 => "latency_p95",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Test::NegativeRatio => "negative",
            Test::ErrorRatio => "errors",
            Test::LatencyP95 => "slower than the baseline's p95",
        }
    }

    /// Its inputs from two arms.
    pub fn compare(self, canary: &Tally, baseline: &Tally, settings: &Sequential, threshold: f64) -> Comparison {
        let (c, b, values) = match self {
            Test::NegativeRatio => {
                ((canary.negative, canary.satisfaction_n), (baseline.negative, baseline.satisfaction_n), (None, None))
            }
            Test::ErrorRatio => {
                let (c, b) = ((canary.errors, canary.outcomes_n), (baseline.errors, baseline.outcomes_n));
                // The baseline's ratio, floored at 1/(n+1) when it has no error.
                let reference = if b.0 == 0 && b.1 > 0 { Some(1.0 / (b.1 as f64 + 1.0)) } else { rate(b.0, b.1) };
                (c, b, (rate(c.0, c.1), reference))
            }
            Test::LatencyP95 => {
                let cut = baseline.p95_bin();
                let slow = |t: &Tally| cut.map(|bin| t.slower_than(bin)).unwrap_or(0);
                let reference = baseline.p95().map(|p| p.max(super::window::LATENCY_MIN_SECONDS));
                ((slow(canary), canary.latency_n), (slow(baseline), baseline.latency_n), (canary.p95(), reference))
            }
        };
        let defined = self != Test::LatencyP95 || values.1.is_some();
        let msprt = if defined { msprt(c.0, c.1, b.0, b.1, settings.tau) } else { None };
        Comparison { test: self, canary: c, baseline: b, msprt, settings: *settings, threshold, values }
    }
}

impl Comparison {
    /// Whether the canary is shown worse: the hot path, formatting nothing.
    pub fn acts(&self) -> bool {
        self.conditions(&mut Failures { list: None, ok: true })
    }

    /// The verdict, with every failed condition and the evidence for the audit record.
    pub fn verdict(&self, canary: &Tally, baseline: &Tally) -> Judgement {
        let mut failed = Vec::new();
        self.conditions(&mut Failures { list: Some(&mut failed), ok: true });
        let evidence = Evidence {
            test: self.test.name(),
            canary: canary.summary(),
            baseline: Some(baseline.summary()),
            detail: self.detail(),
        };
        Judgement::from_failures(failed, evidence)
    }

    /// Checks every condition in order; true when all hold.
    fn conditions(&self, f: &mut Failures<'_>) -> bool {
        let s = &self.settings;
        let (t, threshold) = (self.test, self.threshold);
        let (alpha_ok, tau_ok) = (s.alpha > 0.0 && s.alpha < 1.0, s.tau > 0.0 && s.tau.is_finite());
        let threshold_ok = threshold.is_finite() && threshold >= 0.0;
        if !alpha_ok && !f.fail(|| format!("invalid alpha {}: must be in (0, 1)", num(s.alpha))) {
            return false;
        }
        if !tau_ok && !f.fail(|| format!("invalid tau {}: must be > 0", num(s.tau))) {
            return false;
        }
        let name = if t == Test::NegativeRatio { "min_effect" } else { "max_ratio" };
        if !threshold_ok && !f.fail(|| format!("invalid {name} {}: must be finite and >= 0", num(threshold))) {
            return false;
        }
        if !f.ok {
            return false;
        }
        let need = s.min_samples.max(1);
        let what = t.what();
        for (arm, (x, n)) in [("canary", self.canary), ("baseline", self.baseline)] {
            if x > n {
                if !f.fail(|| format!("inconsistent {arm} counts: {x} {what} of {n}")) {
                    return false;
                }
            } else if n < need && !f.fail(|| format!("only {n} {arm} samples, need {need}")) {
                return false;
            }
        }
        if !f.ok {
            return false;
        }
        let (xc, xb) = (self.canary.0, self.baseline.0);
        let significant = match self.msprt {
            None => f.fail(|| {
                let which = if xc == 0 && xb == 0 { "none" } else { "all" };
                format!("no variance: {which} of both arms' samples are {what}")
            }),
            Some(m) if m.delta <= 0.0 => {
                f.fail(|| format!("the canary's {what} rate is not above the baseline's (difference {})", num(m.delta)))
            }
            Some(m) if m.p_value > s.alpha => {
                f.fail(|| format!("sequential p = {} > alpha {}", num(m.p_value), num(s.alpha)))
            }
            Some(_) => true,
        };
        if !significant {
            return false;
        }
        match (t, self.msprt, self.values) {
            (Test::NegativeRatio, Some(m), _) if m.delta + EPSILON < threshold => {
                f.fail(|| format!("difference {} < min_effect {}", num(m.delta), num(threshold)));
            }
            (Test::ErrorRatio, _, (Some(c), Some(r))) if c <= threshold * r => {
                f.fail(|| {
                    format!(
                        "canary error ratio {} is {}x the baseline's {}, need > {}x",
                        num(c),
                        num(c / r),
                        num(r),
                        num(threshold)
                    )
                });
            }
            (Test::LatencyP95, _, (Some(c), Some(r))) if c <= threshold * r => {
                f.fail(|| {
                    format!(
                        "canary p95 {}s is {}x the baseline's {}s, need > {}x",
                        num(c),
                        num(c / r),
                        num(r),
                        num(threshold)
                    )
                });
            }
            (Test::LatencyP95, _, (None, _)) => {
                f.fail(|| "no canary p95".to_string());
            }
            _ => {}
        }
        f.ok
    }

    fn detail(&self) -> serde_json::Value {
        let s = &self.settings;
        let m = self.msprt;
        let what = match self.test {
            Test::NegativeRatio => "negative",
            Test::ErrorRatio => "errors",
            Test::LatencyP95 => "slower_than_baseline_p95",
        };
        let arm = |(x, n): (u64, u64)| json!({ "n": n, what: x, "rate": rate(x, n), "wilson95": interval_json(x, n) });
        let mut detail = json!({
            "canary": arm(self.canary),
            "baseline": arm(self.baseline),
            "sequential": {
                "test": "msprt",
                "delta": m.map(|t| t.delta),
                "variance": m.map(|t| t.variance),
                "log_lambda": m.map(|t| t.log_lambda),
                "p_value": m.map(|t| t.p_value),
                "alpha": s.alpha,
                "tau": s.tau,
                "min_samples": s.min_samples.max(1),
            },
        });
        let (c, r) = self.values;
        let extra = match self.test {
            Test::NegativeRatio => json!({ "min_effect": self.threshold }),
            Test::ErrorRatio => json!({
                "baseline_reference": r,
                "baseline_floored": self.baseline.0 == 0 && self.baseline.1 > 0,
                "ratio": c.zip(r).map(|(c, r)| c / r),
                "max_ratio": self.threshold,
            }),
            Test::LatencyP95 => json!({
                "canary_p95": c,
                "baseline_p95": r,
                "ratio": c.zip(r).map(|(c, r)| c / r),
                "max_ratio": self.threshold,
            }),
        };
        if let (Some(d), serde_json::Value::Object(e)) = (detail.as_object_mut(), extra) {
            d.extend(e);
        }
        detail
    }
}

/// Acts when the canary's users are more often dissatisfied than the baseline's: the mSPRT
/// rejects "alike" with the canary worse, and the difference of negative ratios is at least
/// `min_effect`. Detail: both arms' `n`, `negative`, `rate` and `wilson95`, the test's figures
/// and the thresholds.
pub fn negative_ratio(canary: &Tally, baseline: &Tally, s: &Sequential, min_effect: f64) -> Judgement {
    Test::NegativeRatio.compare(canary, baseline, s, min_effect).verdict(canary, baseline)
}

/// Acts when the canary's requests fail more often: the mSPRT rejects "alike" with the canary
/// worse, and the canary's error ratio exceeds `max_ratio` times the baseline's (floored at
/// `1/(n+1)` when the baseline has no error, as in `window::error_ratio`).
pub fn error_ratio(canary: &Tally, baseline: &Tally, s: &Sequential, max_ratio: f64) -> Judgement {
    Test::ErrorRatio.compare(canary, baseline, s, max_ratio).verdict(canary, baseline)
}

/// Acts when the canary is slower: more of its requests are slower than the baseline's p95
/// than the baseline's own 5% (the mSPRT on those shares), and its p95 exceeds `max_ratio`
/// times the baseline's. Each p95 is read from a histogram within `LATENCY_RELATIVE_ERROR`.
pub fn latency_p95(canary: &Tally, baseline: &Tally, s: &Sequential, max_ratio: f64) -> Judgement {
    Test::LatencyP95.compare(canary, baseline, s, max_ratio).verdict(canary, baseline)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feedback::stats::two_proportion_z_test;
    use crate::feedback::testing::Rng;

    fn sat(satisfied: bool) -> Observation {
        Observation::Satisfaction { satisfied }
    }

    fn outcome(success: bool, latency: f64) -> Observation {
        Observation::Outcome { success, latency_seconds: Some(latency) }
    }

    fn tally(observations: impl IntoIterator<Item = Observation>) -> Tally {
        let mut t = Tally::default();
        observations.into_iter().for_each(|o| t.add(o));
        t
    }

    fn satisfaction(n: u64, negative: u64) -> Tally {
        tally((0..n).map(|i| sat(i >= negative)))
    }

    #[test]
    fn msprt_matches_the_formula_and_is_undefined_without_variance() {
        // 30/100 against 20/100: pooled 0.25, V = 0.25 * 0.75 * 0.02 = 0.00375, tau 0.05.
        let t = msprt(30, 100, 20, 100, 0.05).unwrap();
        let (v, t2, d): (f64, f64, f64) = (0.00375, 0.0025, 0.1);
        let expected = 0.5 * (v / (v + t2)).ln() + t2 * d * d / (2.0 * v * (v + t2));
        assert!((t.variance - v).abs() < 1e-15);
        assert!((t.log_lambda - expected).abs() < 1e-12, "{} vs {expected}", t.log_lambda);
        assert!((t.p_value - (-expected).exp().min(1.0)).abs() < 1e-12);
        assert_eq!(msprt(0, 100, 0, 100, 0.05), None);
        assert_eq!(msprt(100, 100, 100, 100, 0.05), None);
        assert_eq!(msprt(1, 0, 1, 10, 0.05), None);
        assert_eq!(msprt(11, 10, 1, 10, 0.05), None);
        assert_eq!(msprt(1, 10, 1, 10, 0.0), None);
    }

    #[test]
    fn msprt_evidence_grows_with_the_sample_for_a_fixed_difference() {
        let small = msprt(15, 100, 10, 100, 0.05).unwrap();
        let large = msprt(1500, 10_000, 1000, 10_000, 0.05).unwrap();
        assert!(small.p_value > 0.05, "{small:?}");
        assert!(large.p_value < 1e-6, "{large:?}");
        assert!(large.log_lambda.is_finite());
    }

    #[test]
    fn negative_ratio_acts_on_a_clearly_worse_canary_with_evidence() {
        let s = Sequential::default();
        let v = negative_ratio(&satisfaction(400, 120), &satisfaction(4000, 400), &s, 0.05);
        assert!(v.is_act(), "{:?}", v.reason());
        let d = &v.evidence().detail;
        assert_eq!(d["canary"]["negative"], 120);
        assert_eq!(d["baseline"]["n"], 4000);
        assert!(d["sequential"]["p_value"].as_f64().unwrap() < 0.05);
        assert!(d["canary"]["wilson95"][0].as_f64().unwrap() > 0.25);
    }

    #[test]
    fn negative_ratio_holds_and_says_why() {
        let s = Sequential::default();
        let v = negative_ratio(&satisfaction(50, 40), &satisfaction(4000, 400), &s, 0.05);
        assert_eq!(v.reason(), Some("only 50 canary samples, need 100"));
        // A better canary never acts, however significant.
        let v = negative_ratio(&satisfaction(4000, 100), &satisfaction(4000, 400), &s, 0.0);
        assert!(v.reason().unwrap().starts_with("the canary's negative rate is not above"), "{:?}", v.reason());
        // Significant but smaller than the minimum effect.
        let v = negative_ratio(&satisfaction(40_000, 4400), &satisfaction(40_000, 4000), &s, 0.05);
        assert_eq!(v.reason(), Some("difference 0.01 < min_effect 0.05"));
        let v = negative_ratio(&satisfaction(200, 0), &satisfaction(200, 0), &s, 0.0);
        assert_eq!(v.reason(), Some("no variance: none of both arms' samples are negative"));
        let bad = Sequential { alpha: 1.5, ..s };
        assert_eq!(
            negative_ratio(&Tally::default(), &Tally::default(), &bad, 0.0).reason(),
            Some("invalid alpha 1.5: must be in (0, 1)")
        );
    }

    #[test]
    fn error_ratio_needs_both_significance_and_the_ratio() {
        let s = Sequential::default();
        let outcomes = |n: u64, errors: u64| tally((0..n).map(|i| outcome(i >= errors, 0.05)));
        let v = error_ratio(&outcomes(2000, 200), &outcomes(20_000, 1000), &s, 1.5);
        assert!(v.is_act(), "{:?}", v.reason());
        assert_eq!(v.evidence().detail["ratio"], 2.0);
        // 12% against 10% with plenty of data: significant, but only 1.2x.
        let v = error_ratio(&outcomes(20_000, 2400), &outcomes(200_000, 20_000), &s, 1.5);
        assert_eq!(v.reason(), Some("canary error ratio 0.12 is 1.2x the baseline's 0.1, need > 1.5x"));
    }

    #[test]
    fn latency_acts_on_a_slower_canary_only() {
        let s = Sequential::default();
        let mut rng = Rng(7);
        let lognormal = |rng: &mut Rng, median: f64| median * (0.5 * rng.normal()).exp();
        let base = tally((0..5000).map(|_| outcome(true, lognormal(&mut rng, 0.05))));
        let same = tally((0..1000).map(|_| outcome(true, lognormal(&mut rng, 0.05))));
        let slow = tally((0..1000).map(|_| outcome(true, lognormal(&mut rng, 0.1))));
        let v = latency_p95(&slow, &base, &s, 1.5);
        assert!(v.is_act(), "{:?}", v.reason());
        let v = latency_p95(&same, &base, &s, 1.5);
        assert!(!v.is_act());
        assert!(v.reason().unwrap().contains("need > 1.5x"), "{:?}", v.reason());
    }

    // ---- seeded simulations of continuous monitoring ----

    /// One stream: events arrive one at a time, each to the canary with probability `share`,
    /// each "bad" with the arm's probability; the comparison is evaluated after every event.
    /// Returns the event count at the first action, if any within `max_events`.
    fn first_action(
        rng: &mut Rng,
        share: f64,
        (p_canary, p_base): (f64, f64),
        max_events: u64,
        mut acts: impl FnMut(&Tally, &Tally) -> bool,
    ) -> Option<u64> {
        let (mut canary, mut base) = (Tally::default(), Tally::default());
        for i in 1..=max_events {
            let to_canary = rng.uniform() < share;
            let p = if to_canary { p_canary } else { p_base };
            let o = outcome(rng.uniform() >= p, 0.05);
            if to_canary {
                canary.add(o)
            } else {
                base.add(o)
            }
            if acts(&canary, &base) {
                return Some(i);
            }
        }
        None
    }

    /// A/A: both arms fail 10% of requests, the canary takes 10% of 20,000 events, and the error
    /// comparison is evaluated after every event. The sequential test acts in at most alpha of
    /// the streams; the z-test evaluated the same way acts far more often.
    #[test]
    fn on_identical_arms_the_sequential_test_keeps_false_rollbacks_under_alpha_where_peeking_does_not() {
        let s = Sequential { alpha: 0.05, min_samples: 100, tau: DEFAULT_TAU };
        let streams = 400;
        let (mut sequential, mut peeking) = (0, 0);
        for seed in 0..streams {
            let mut rng = Rng(1000 + seed);
            let acted =
                first_action(&mut rng, 0.1, (0.1, 0.1), 20_000, |c, b| Test::ErrorRatio.compare(c, b, &s, 0.0).acts());
            sequential += u32::from(acted.is_some());
            let mut rng = Rng(1000 + seed);
            let acted = first_action(&mut rng, 0.1, (0.1, 0.1), 20_000, |c, b| {
                c.outcomes_n >= 100
                    && b.outcomes_n >= 100
                    && two_proportion_z_test(c.errors, c.outcomes_n, b.errors, b.outcomes_n)
                        .is_some_and(|t| t.z > 0.0 && t.p_value < 0.05)
            });
            peeking += u32::from(acted.is_some());
        }
        let (rate, naive) = (sequential as f64 / streams as f64, peeking as f64 / streams as f64);
        eprintln!("A/A false rollbacks over {streams} streams: sequential {rate:.4}, z-test at every event {naive:.4}");
        assert!(rate <= s.alpha, "sequential false-rollback rate {rate} > alpha");
        assert!(naive > 2.0 * s.alpha, "the naive test was expected to inflate (got {naive})");
    }

    /// The same A/A check for satisfaction (20% negative in both arms) and for latency (the same
    /// log-normal in both arms; its cut-off is estimated, so this one is checked, not proven).
    #[test]
    fn on_identical_arms_negative_ratio_and_latency_stay_under_alpha() {
        let s = Sequential::default();
        let streams = 300;
        let negative = (0..streams)
            .filter(|seed| {
                let mut rng = Rng(5000 + seed);
                let (mut c, mut b) = (Tally::default(), Tally::default());
                (0..20_000).any(|_| {
                    let o = sat(rng.uniform() >= 0.2);
                    if rng.uniform() < 0.1 {
                        c.add(o)
                    } else {
                        b.add(o)
                    }
                    Test::NegativeRatio.compare(&c, &b, &s, 0.0).acts()
                })
            })
            .count();
        let latency_streams = 150;
        let latency = (0..latency_streams)
            .filter(|seed| {
                let mut rng = Rng(7000 + seed);
                let (mut c, mut b) = (Tally::default(), Tally::default());
                (0..10_000).any(|_| {
                    let o = outcome(true, 0.05 * (0.5 * rng.normal()).exp());
                    if rng.uniform() < 0.1 {
                        c.add(o)
                    } else {
                        b.add(o)
                    }
                    Test::LatencyP95.compare(&c, &b, &s, 1.0).acts()
                })
            })
            .count();
        let (n, l) = (negative as f64 / streams as f64, latency as f64 / latency_streams as f64);
        eprintln!("A/A false rollbacks: negative ratio {n:.4} ({streams} streams), latency {l:.4} ({latency_streams})");
        assert!(n <= s.alpha, "negative-ratio false-rollback rate {n} > alpha");
        assert!(l <= s.alpha, "latency false-rollback rate {l} > alpha");
    }

    /// The quick check used on every event and the verdict recorded agree.
    #[test]
    fn the_quick_check_and_the_verdict_agree() {
        let mut rng = Rng(3);
        let s = Sequential { min_samples: 20, ..Sequential::default() };
        for _ in 0..3000 {
            let (mut c, mut b) = (Tally::default(), Tally::default());
            let (pc, pb) = (rng.uniform() * 0.5, rng.uniform() * 0.5);
            for _ in 0..(rng.uniform() * 400.0) as u32 {
                let (arm, p) = if rng.uniform() < 0.3 { (&mut c, pc) } else { (&mut b, pb) };
                arm.add(sat(rng.uniform() >= p));
                arm.add(outcome(rng.uniform() >= p, 0.05 * (1.0 + 3.0 * p * rng.uniform())));
            }
            for test in [Test::NegativeRatio, Test::ErrorRatio, Test::LatencyP95] {
                let threshold = if test == Test::NegativeRatio { rng.uniform() * 0.1 } else { 1.0 + rng.uniform() };
                let cmp = test.compare(&c, &b, &s, threshold);
                assert_eq!(cmp.acts(), cmp.verdict(&c, &b).is_act(), "{test:?} {cmp:?}");
            }
        }
    }

    /// A canary failing 10% of requests against a baseline's 5%, on 10% of the traffic: caught
    /// in every stream, and the tests print how many events it took.
    #[test]
    fn a_canary_with_twice_the_baseline_error_ratio_is_caught() {
        let s = Sequential::default();
        let streams = 200;
        let mut took: Vec<u64> = Vec::new();
        for seed in 0..streams {
            let mut rng = Rng(9000 + seed);
            if let Some(n) = first_action(&mut rng, 0.1, (0.10, 0.05), 100_000, |c, b| {
                Test::ErrorRatio.compare(c, b, &s, 1.5).acts()
            }) {
                took.push(n);
            }
        }
        took.sort_unstable();
        let caught = took.len();
        let median = took.get(caught / 2).copied().unwrap_or_default();
        let p95 = took.get(caught * 95 / 100).copied().unwrap_or_default();
        eprintln!(
            "2x error ratio: caught in {caught}/{streams} streams; events to detection: median {median}, p95 {p95} (canary ~10%)"
        );
        assert_eq!(caught, streams as usize, "every stream should be caught within 100,000 events");
        assert!(median > 1000, "detection cannot precede min_samples per arm: median {median}");
    }
}
