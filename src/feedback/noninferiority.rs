//! Evidence that a canary is **not worse** than its baseline, for promoting it (issue #18): a
//! sequential non-inferiority test, always valid however often it is looked at, like the tests
//! that roll a canary back ([`sequential`](super::sequential)).
//!
//! # The test
//! The hypothesis to reject is "the canary is worse by at least the margin":
//!
//! ```text
//! H0: p_c − r·p_b − m ≥ 0        (error or negative ratios; r = 1 for a margin in points)
//! H0: q_c ≥ 0.05                  (latency: q_c is the canary's share of requests slower than
//!                                  max_ratio × the baseline's p95; 5% for a canary whose p95 is
//!                                  exactly max_ratio × the baseline's)
//! ```
//!
//! With `D̂` the observed left-hand side and `V` its variance (unpooled, each rate adjusted as
//! `(x + 1)/(n + 2)` so that arms without a single error still have one; times the dispersion
//! for events that come in runs), the mixture likelihood ratio is the same as the rollback test's,
//! `Λ = sqrt(V/(V + τ²)) · exp(τ² D̂² / (2V(V + τ²)))`. The evidence holds the first time
//! `Λ ≥ 1/α` with `D̂ < 0`: on the boundary of H0 `Λ` is approximately a martingale of mean 1, so
//! by Ville's inequality a canary worse by the margin is promoted with probability at most `α`
//! (less when it is worse still). A promotion asks for every test it names to hold, each at `α`:
//! an intersection-union test, whose level is `α` without a correction.
//!
//! A missing signal is never evidence: an arm with fewer than `min_samples` (canary events,
//! baseline events, or latencies) holds the promotion, whatever the other arm shows.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::arms::Arm;
use super::dispersion::{MIN_PAIRS, dispersion};
use super::sequential::{Msprt, Sequential, Tally};
use super::series::{Measure, Scale, Series};
use super::window::{ArmSummary, Evidence, Judgement, interval_json, latency_bin, num, rate};

/// How much worse the canary may be and still count as not worse.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Margin {
    /// At most this many points (0.01 = one percentage point) above the baseline's rate.
    Points(f64),
    /// At most this many times the baseline's rate (1.2: a fifth more).
    Ratio(f64),
}

impl Margin {
    /// `(r, m)` of `p_c − r·p_b − m`.
    fn terms(self) -> (f64, f64) {
        match self {
            Margin::Points(m) => (1.0, m),
            Margin::Ratio(r) => (r, 0.0),
        }
    }

    fn valid(self) -> bool {
        match self {
            Margin::Points(m) => m.is_finite() && (0.0..1.0).contains(&m),
            Margin::Ratio(r) => r.is_finite() && r >= 1.0,
        }
    }
}

/// What is shown not worse.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// Request errors among outcomes.
    ErrorRatio(Margin),
    /// Negative answers among satisfaction events.
    NegativeRatio(Margin),
    /// The canary's p95 at most `max_ratio` times the baseline's (the acceptance criterion's
    /// 1.10 by default).
    LatencyP95 { max_ratio: f64 },
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::ErrorRatio(_) => "error_ratio_not_worse",
            Signal::NegativeRatio(_) => "negative_ratio_not_worse",
            Signal::LatencyP95 { .. } => "latency_p95_not_worse",
        }
    }
}

/// The share of the canary's requests slower than `max_ratio` × the baseline's p95 that a
/// canary exactly `max_ratio` times slower would have.
const LATENCY_SHARE: f64 = 0.05;

/// The always-valid test of `D̂ < 0` for `D̂ = p̂_c − r·p̂_b − m` (`base` None: of
/// `p̂_c − m`, a one-sample test against a fixed share). None without samples, with
/// inconsistent counts, or with settings out of range.
pub fn msprt_not_worse(
    canary: (u64, u64),
    base: Option<(u64, u64)>,
    (r, m): (f64, f64),
    tau: f64,
    phi: f64,
) -> Option<Msprt> {
    let ((xc, nc), valid_base) = (canary, base.is_none_or(|(x, n)| n > 0 && x <= n));
    if nc == 0 || xc > nc || !valid_base || !(tau > 0.0 && tau.is_finite()) || !(phi >= 1.0 && phi.is_finite()) {
        return None;
    }
    // Adjusted rates for the variance: never 0, so arms without errors still vary.
    let adjusted = |x: u64, n: u64| (x as f64 + 1.0) / (n as f64 + 2.0);
    let pc = xc as f64 / nc as f64;
    let vc = adjusted(xc, nc) * (1.0 - adjusted(xc, nc)) / nc as f64;
    let (delta, variance) = match base {
        Some((xb, nb)) => {
            let pb = xb as f64 / nb as f64;
            let vb = adjusted(xb, nb) * (1.0 - adjusted(xb, nb)) / nb as f64;
            (pc - r * pb - m, phi * (vc + r * r * vb))
        }
        None => (pc - m, phi * vc),
    };
    if !(variance > 0.0 && variance.is_finite()) {
        return None;
    }
    let t2 = tau * tau;
    let log_lambda = 0.5 * (variance / (variance + t2)).ln() + t2 * delta * delta / (2.0 * variance * (variance + t2));
    let p_value = (-log_lambda).exp().min(1.0);
    Some(Msprt { delta, variance, log_lambda, p_value })
}

/// What a comparison is made of, computed without formatting anything.
struct Inputs {
    /// Bad events and samples: the canary's, the baseline's (None for latency's fixed share).
    canary: (u64, u64),
    baseline: Option<(u64, u64)>,
    /// The baseline's samples the test stands on (its latencies, for latency).
    baseline_n: u64,
    terms: (f64, f64),
    dispersion: Option<super::dispersion::Dispersion>,
    /// Latency: the baseline's p95 and the cut (max_ratio times it).
    latency: Option<(Option<f64>, Option<f64>)>,
    test: Option<Msprt>,
}

fn inputs(signal: Signal, canary: &Tally, baseline: &Tally, s: &Sequential) -> Inputs {
    let r = |(x, n): (u64, u64)| rate(x, n).unwrap_or(0.0);
    let (c, b, terms, d, latency) = match signal {
        Signal::ErrorRatio(margin) | Signal::NegativeRatio(margin) => {
            let errors = matches!(signal, Signal::ErrorRatio(_));
            let (c, b) = if errors {
                ((canary.errors, canary.outcomes_n), (baseline.errors, baseline.outcomes_n))
            } else {
                ((canary.negative, canary.satisfaction_n), (baseline.negative, baseline.satisfaction_n))
            };
            // Each arm's batches with its overall rate, as the rollback test estimates them.
            let d = if errors {
                dispersion((&canary.error_batches, r(c)), (&baseline.error_batches, r(b)))
            } else {
                dispersion((&canary.negative_batches, r(c)), (&baseline.negative_batches, r(b)))
            };
            (c, Some(b), margin.terms(), Some(d), None)
        }
        Signal::LatencyP95 { max_ratio } => {
            let base_p95 = baseline.p95_seconds();
            let cut = base_p95.map(|p| p * max_ratio);
            let slower = cut.map_or(0, |cut| canary.slower_than_bin(latency_bin(cut)));
            ((slower, canary.latency_n), None, (1.0, LATENCY_SHARE), None, Some((base_p95, cut)))
        }
    };
    let phi = d.map_or(1.0, |d| d.used);
    let test = msprt_not_worse(c, b, terms, s.tau, phi);
    let baseline_n = b.map_or(baseline.latency_n, |b| b.1);
    Inputs { canary: c, baseline: b, baseline_n, terms, dispersion: d, latency, test }
}

/// Every condition in order; `why` gets the reason of each that fails (None: stop at the first).
fn conditions(signal: Signal, i: &Inputs, s: &Sequential, mut why: Option<&mut Vec<String>>) -> bool {
    let ok = std::cell::Cell::new(true);
    let mut fail = |reason: &dyn Fn() -> String| {
        ok.set(false);
        match why.as_deref_mut() {
            Some(list) => {
                list.push(reason());
                true
            }
            None => false,
        }
    };
    let need = s.min_samples.max(1);
    let alpha_ok = s.alpha > 0.0 && s.alpha < 1.0;
    if !alpha_ok && !fail(&|| format!("invalid alpha {}: must be in (0, 1)", num(s.alpha))) {
        return false;
    }
    let valid = match signal {
        Signal::ErrorRatio(m) | Signal::NegativeRatio(m) => m.valid(),
        Signal::LatencyP95 { max_ratio } => max_ratio.is_finite() && max_ratio >= 1.0,
    };
    if !valid && !fail(&|| format!("invalid margin {signal:?}")) {
        return false;
    }
    if i.canary.1 < need && !fail(&|| format!("only {} canary samples, need {need}", i.canary.1)) {
        return false;
    }
    let baseline_n = i.baseline_n;
    let which = if i.baseline.is_some() { "samples" } else { "latencies" };
    if baseline_n < need && !fail(&|| format!("only {baseline_n} baseline {which}, need {need}")) {
        return false;
    }
    if let Some(d) = i.dispersion
        && i.canary.1 >= need
        && baseline_n >= need
        && d.pairs < MIN_PAIRS
        && !fail(&|| format!("only {} successive batches to estimate the dispersion, need {MIN_PAIRS}", d.pairs))
    {
        return false;
    }
    if !ok.get() {
        return false;
    }
    match i.test {
        None => {
            fail(&|| "the test is undefined for these counts".into());
        }
        Some(t) if t.delta >= 0.0 => {
            fail(&|| format!("the canary is not within the margin: {} above it", num(t.delta)));
        }
        Some(t) if t.p_value > s.alpha => {
            fail(&|| format!("sequential p = {} > alpha {}", num(t.p_value), num(s.alpha)));
        }
        Some(_) => {}
    }
    ok.get()
}

/// Whether the evidence holds: [`not_worse`] without the reasons and the record's figures (for
/// checking at every event).
pub fn holds(signal: Signal, canary: &Tally, baseline: &Tally, s: &Sequential) -> bool {
    conditions(signal, &inputs(signal, canary, baseline, s), s, None)
}

/// Whether `canary` is shown not worse than `baseline` on `signal`: [`Judgement::Act`] when the
/// evidence holds (promote), else `Hold` with every reason, and the figures for the record
/// either way.
pub fn not_worse(signal: Signal, canary: &Tally, baseline: &Tally, s: &Sequential) -> Judgement {
    let i = inputs(signal, canary, baseline, s);
    let mut failed = Vec::new();
    conditions(signal, &i, s, Some(&mut failed));
    let what = match signal {
        Signal::ErrorRatio(_) => "errors",
        Signal::NegativeRatio(_) => "negative",
        Signal::LatencyP95 { .. } => "slower than the cut",
    };
    let arm = |(x, n): (u64, u64)| json!({ "n": n, what: x, "rate": rate(x, n), "wilson95": interval_json(x, n) });
    let t = i.test;
    let mut detail = json!({
        "canary": arm(i.canary),
        "baseline": i.baseline.map(arm),
        "sequential": {
            "test": "msprt non-inferiority",
            "difference_from_margin": t.map(|t| t.delta),
            "variance": t.map(|t| t.variance),
            "log_lambda": t.map(|t| t.log_lambda),
            "p_value": t.map(|t| t.p_value),
            "alpha": s.alpha,
            "tau": s.tau,
            "min_samples": s.min_samples.max(1),
        },
    });
    let extra = match signal {
        Signal::ErrorRatio(margin) | Signal::NegativeRatio(margin) => {
            let d = i.dispersion;
            json!({
                "margin": match margin {
                    Margin::Points(m) => json!({ "points": m }),
                    Margin::Ratio(r) => json!({ "ratio": r }),
                },
                "dispersion": {
                    "estimate": d.map(|d| d.estimate),
                    "used": d.map(|d| d.used),
                    "pairs": d.map(|d| d.pairs),
                },
            })
        }
        Signal::LatencyP95 { max_ratio } => {
            let (base_p95, cut) = i.latency.unwrap_or((None, None));
            json!({
                "baseline_p95": base_p95,
                "canary_p95": canary.p95_seconds(),
                "cut_seconds": cut,
                "max_ratio": max_ratio,
                "share_allowed": i.terms.1,
            })
        }
    };
    if let (Some(d), serde_json::Value::Object(e)) = (detail.as_object_mut(), extra) {
        d.extend(e);
    }
    let evidence =
        Evidence { test: signal.name(), canary: canary.summary(), baseline: Some(baseline.summary()), detail };
    Judgement::from_failures(failed, evidence)
}

/// The comparison of a promotion's stage over time (see [`series`](super::series)): both
/// arms' rates with the p-value of the counts at each point (with the decision's dispersion),
/// or both p95s with `max_ratio`.
pub fn not_worse_series(signal: Signal, canary: &Arm, baseline: &Arm, s: &Sequential, now: DateTime<Utc>) -> Series {
    let i = inputs(signal, &canary.tally, &baseline.tally, s);
    let (measure, max_ratio) = match signal {
        Signal::ErrorRatio(_) => (Measure::Errors, None),
        Signal::NegativeRatio(_) => (Measure::Negative, None),
        Signal::LatencyP95 { max_ratio } => (Measure::Latency, Some(max_ratio)),
    };
    let phi = i.dispersion.map(|d| d.used);
    let (terms, tau) = (i.terms, s.tau);
    let p =
        |c: (u64, u64), b: (u64, u64)| msprt_not_worse(c, Some(b), terms, tau, phi.unwrap_or(1.0)).map(|m| m.p_value);
    let scale =
        Scale { measure, alpha: max_ratio.is_none().then_some(s.alpha), dispersion: phi, max_ratio, p_value: &p };
    Series::pair(canary, baseline, now, &scale)
}

/// Evidence that the canary's mean score (a model's confidence, in [0, 1]) is above
/// `threshold` over a window (`canary`, the window's summary): at least `min_samples` scores,
/// and the mean less Hoeffding's one-sided margin `sqrt(ln(1/alpha) / (2n))` above the threshold,
/// so one look at a window misleads with probability at most `alpha`. Unlike the not-worse
/// tests this is per look, not over every look: a promotion also waits `interval` between steps
/// and needs its not-worse tests, which are. Scores outside [0, 1] do not make a bound.
pub fn score_above(canary: &ArmSummary, threshold: f64, min_samples: u64, alpha: f64) -> Judgement {
    let need = min_samples.max(1);
    let n = canary.scores_n;
    let margin = (n > 0 && alpha > 0.0 && alpha < 1.0).then(|| ((1.0 / alpha).ln() / (2.0 * n as f64)).sqrt());
    let lower = canary.score_mean.zip(margin).map(|(m, e)| m - e);
    let detail = json!({
        "n": n,
        "mean": canary.score_mean,
        "lower_bound": lower,
        "bound": "hoeffding, one-sided",
        "threshold": threshold,
        "alpha": alpha,
        "min_samples": need,
    });
    let evidence = Evidence { test: "score_above", canary: canary.clone(), baseline: None, detail };
    let mut failed = Vec::new();
    if !(threshold.is_finite() && (0.0..=1.0).contains(&threshold)) {
        failed.push(format!("invalid threshold {}: scores are in [0, 1]", num(threshold)));
    } else if !(alpha > 0.0 && alpha < 1.0) {
        failed.push(format!("invalid alpha {}: must be in (0, 1)", num(alpha)));
    } else if n < need {
        failed.push(format!("only {n} canary scores, need {need}"));
    } else {
        match (canary.score_mean, lower) {
            (Some(mean), _) if !(0.0..=1.0).contains(&mean) => {
                failed.push(format!("mean score {} is outside [0, 1]: no bound", num(mean)))
            }
            (Some(_), Some(lower)) if lower > threshold => {}
            (Some(mean), Some(lower)) => failed.push(format!(
                "mean score {} less its margin is {}, not above threshold {}",
                num(mean),
                num(lower),
                num(threshold)
            )),
            _ => failed.push("no canary mean score".to_string()),
        }
    }
    Judgement::from_failures(failed, evidence)
}

#[cfg(test)]
mod tests;
