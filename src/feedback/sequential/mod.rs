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
//! per arm. Two departures from the textbook test, for traffic that is not independent:
//! `V` is multiplied by the dispersion estimated from batches of events
//! ([`dispersion`](super::dispersion)), and the comparison is also made since each of the latest
//! restart points, each at a share of `alpha` ([`restarts`](super::restarts), evaluated by
//! [`judge`](super::rule::judge)). The engine restarts a comparison after an action on its target and after a quiet
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

use super::dispersion::{Batches, Dispersion, MIN_PAIRS, dispersion};
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
    /// Errors among outcomes in batches, for their dispersion (absent from older snapshots:
    /// such an arm estimates from what it counts next).
    #[serde(default)]
    pub(crate) error_batches: Batches,
    /// Negative answers among satisfaction events in batches.
    #[serde(default)]
    pub(crate) negative_batches: Batches,
}

impl Tally {
    /// Count an observation (scores are not compared sequentially: see `mean_score_below`).
    pub fn add(&mut self, observation: Observation) {
        match observation {
            Observation::Satisfaction { satisfied } => {
                self.satisfaction_n = self.satisfaction_n.saturating_add(1);
                self.negative = self.negative.saturating_add(u64::from(!satisfied));
                self.negative_batches.add(!satisfied);
            }
            Observation::Score { .. } => {}
            Observation::Outcome { success, latency_seconds } => {
                self.outcomes_n = self.outcomes_n.saturating_add(1);
                self.errors = self.errors.saturating_add(u64::from(!success));
                self.error_batches.add(!success);
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

    /// A retried request's later attempt replaces the outcome counted for an earlier one (see
    /// `Arms::observe`): the request stays one outcome, now with the later attempt's success and
    /// latency. Anything but two outcomes, or an arm without outcomes, is left alone.
    pub fn replace_outcome(&mut self, before: Observation, after: Observation) {
        let (
            Observation::Outcome { success: was, latency_seconds: before },
            Observation::Outcome { success: now, latency_seconds: after },
        ) = (before, after)
        else {
            return;
        };
        if self.outcomes_n == 0 {
            return;
        }
        self.errors = self.errors.saturating_sub(u64::from(!was)).saturating_add(u64::from(!now));
        self.error_batches.replace(!was, !now);
        let valid = |s: &f64| s.is_finite() && *s >= 0.0;
        if let (Some(seconds), Some(hist)) = (before.filter(valid), self.latency.as_mut())
            && let Some(bin) = hist.get_mut(latency_bin(seconds))
            && *bin > 0
        {
            *bin -= 1;
            self.latency_n = self.latency_n.saturating_sub(1);
        }
        if let Some(seconds) = after.filter(valid) {
            let hist = self.latency.get_or_insert_with(|| vec![0; LATENCY_BINS]);
            if let Some(bin) = hist.get_mut(latency_bin(seconds)) {
                *bin = bin.saturating_add(1);
                self.latency_n = self.latency_n.saturating_add(1);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.satisfaction_n == 0 && self.outcomes_n == 0
    }

    fn p95(&self) -> Option<f64> {
        self.latency.as_deref().and_then(|h| latency_quantile(h, self.latency_n, 0.95))
    }

    /// The p95 of the latencies counted, in seconds (None without any).
    pub(crate) fn p95_seconds(&self) -> Option<f64> {
        self.p95()
    }

    /// Latencies counted in bins above `bin`.
    pub(crate) fn slower_than_bin(&self, bin: usize) -> u64 {
        self.slower_than(bin)
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
    /// `V`, the variance of `delta` if both arms were alike (times the dispersion).
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
    msprt_dispersed(x_canary, n_canary, x_base, n_base, tau, 1.0)
}

/// [`msprt`] with the variance multiplied by `phi` (at least 1): events that come in runs vary
/// `phi` times as much as independent ones (see [`dispersion`](super::dispersion)).
pub fn msprt_dispersed(x_canary: u64, n_canary: u64, x_base: u64, n_base: u64, tau: f64, phi: f64) -> Option<Msprt> {
    if !(phi >= 1.0 && phi.is_finite()) {
        return None;
    }
    if n_canary == 0 || n_base == 0 || x_canary > n_canary || x_base > n_base || !(tau > 0.0 && tau.is_finite()) {
        return None;
    }
    let (nc, nb) = (n_canary as f64, n_base as f64);
    let delta = x_canary as f64 / nc - x_base as f64 / nb;
    let pooled = (x_canary as f64 + x_base as f64) / (nc + nb);
    let variance = phi * pooled * (1.0 - pooled) * (1.0 / nc + 1.0 / nb);
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
    /// The dispersion of the proportion compared (None for latency: its cut-off moves with the
    /// baseline's p95, so its events are not batched).
    dispersion: Option<Dispersion>,
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
        self.compare_within(canary, baseline, (canary, baseline), settings, threshold)
    }

    /// Its inputs from two arms' tallies since a restart point, with the dispersion estimated
    /// from `full`, the same arms' tallies since the comparison started (more batches, the same
    /// traffic).
    pub fn compare_within(
        self,
        canary: &Tally,
        baseline: &Tally,
        full: (&Tally, &Tally),
        settings: &Sequential,
        threshold: f64,
    ) -> Comparison {
        let rate_of = |x: u64, n: u64| rate(x, n).unwrap_or(0.0);
        let (fc, fb) = full;
        let (c, b, values, batches) = match self {
            Test::NegativeRatio => {
                let (c, b) = ((canary.negative, canary.satisfaction_n), (baseline.negative, baseline.satisfaction_n));
                (
                    c,
                    b,
                    (None, None),
                    Some((
                        (&fc.negative_batches, rate_of(fc.negative, fc.satisfaction_n)),
                        (&fb.negative_batches, rate_of(fb.negative, fb.satisfaction_n)),
                    )),
                )
            }
            Test::ErrorRatio => {
                let (c, b) = ((canary.errors, canary.outcomes_n), (baseline.errors, baseline.outcomes_n));
                // The baseline's ratio, floored at 1/(n+1) when it has no error.
                let reference = if b.0 == 0 && b.1 > 0 { Some(1.0 / (b.1 as f64 + 1.0)) } else { rate(b.0, b.1) };
                (
                    c,
                    b,
                    (rate(c.0, c.1), reference),
                    Some((
                        (&fc.error_batches, rate_of(fc.errors, fc.outcomes_n)),
                        (&fb.error_batches, rate_of(fb.errors, fb.outcomes_n)),
                    )),
                )
            }
            Test::LatencyP95 => {
                let cut = baseline.p95_bin();
                let slow = |t: &Tally| cut.map(|bin| t.slower_than(bin)).unwrap_or(0);
                let reference = baseline.p95().map(|p| p.max(super::window::LATENCY_MIN_SECONDS));
                let (c, b) = ((slow(canary), canary.latency_n), (slow(baseline), baseline.latency_n));
                (c, b, (canary.p95(), reference), None)
            }
        };
        let dispersion = batches.map(|(bc, bb)| dispersion(bc, bb));
        let phi = dispersion.map_or(1.0, |d| d.used);
        let defined = self != Test::LatencyP95 || values.1.is_some();
        let msprt = if defined { msprt_dispersed(c.0, c.1, b.0, b.1, settings.tau, phi) } else { None };
        Comparison { test: self, canary: c, baseline: b, msprt, dispersion, settings: *settings, threshold, values }
    }
}

impl Comparison {
    /// The dispersion the test used (None for latency, which is not batched).
    pub fn dispersion_used(&self) -> Option<f64> {
        self.dispersion.map(|d| d.used)
    }

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
        if let Some(d) = self.dispersion
            && d.pairs < MIN_PAIRS
            && !f.fail(|| format!("only {} successive batches to estimate the dispersion, need {MIN_PAIRS}", d.pairs))
        {
            return false;
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
                "dispersion": self.dispersion.map(|d| json!({
                    "estimator": "batch successive differences",
                    "estimate": d.estimate,
                    "used": d.used,
                    "pairs": d.pairs,
                    "batch_size": { "canary": d.batch.0, "baseline": d.batch.1 },
                })),
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
pub mod sim;
#[cfg(test)]
mod tests;
