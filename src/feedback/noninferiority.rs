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

use serde_json::json;

use super::dispersion::{MIN_PAIRS, dispersion};
use super::sequential::{Msprt, Sequential, Tally};
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

/// Whether `canary` is shown not worse than `baseline` on `signal`: [`Judgement::Act`] when the
/// evidence holds (promote), else `Hold` with every reason, and the figures for the record
/// either way.
pub fn not_worse(signal: Signal, canary: &Tally, baseline: &Tally, s: &Sequential) -> Judgement {
    let mut failed: Vec<String> = Vec::new();
    let need = s.min_samples.max(1);
    if !(s.alpha > 0.0 && s.alpha < 1.0) {
        failed.push(format!("invalid alpha {}: must be in (0, 1)", num(s.alpha)));
    }
    let (c, b, terms, phi, what, extra) = match signal {
        Signal::ErrorRatio(margin) | Signal::NegativeRatio(margin) => {
            if !margin.valid() {
                failed.push(format!("invalid margin {margin:?}"));
            }
            let errors = matches!(signal, Signal::ErrorRatio(_));
            let (c, b) = if errors {
                ((canary.errors, canary.outcomes_n), (baseline.errors, baseline.outcomes_n))
            } else {
                ((canary.negative, canary.satisfaction_n), (baseline.negative, baseline.satisfaction_n))
            };
            // Each arm's batches with its overall rate, as the rollback test estimates them.
            let r = |(x, n): (u64, u64)| rate(x, n).unwrap_or(0.0);
            let d = if errors {
                dispersion((&canary.error_batches, r(c)), (&baseline.error_batches, r(b)))
            } else {
                dispersion((&canary.negative_batches, r(c)), (&baseline.negative_batches, r(b)))
            };
            if c.1 >= need && b.1 >= need && d.pairs < MIN_PAIRS {
                failed
                    .push(format!("only {} successive batches to estimate the dispersion, need {MIN_PAIRS}", d.pairs));
            }
            let margin_json = match margin {
                Margin::Points(m) => json!({ "points": m }),
                Margin::Ratio(r) => json!({ "ratio": r }),
            };
            let extra = json!({
                "margin": margin_json,
                "dispersion": { "estimate": d.estimate, "used": d.used, "pairs": d.pairs },
            });
            (c, Some(b), margin.terms(), d.used, if errors { "errors" } else { "negative" }, extra)
        }
        Signal::LatencyP95 { max_ratio } => {
            if !(max_ratio.is_finite() && max_ratio >= 1.0) {
                failed.push(format!("invalid max_ratio {}: must be >= 1", num(max_ratio)));
            }
            let base_p95 = baseline.p95_seconds();
            let cut = base_p95.map(|p| p * max_ratio);
            let slower = cut.map_or(0, |cut| canary.slower_than_bin(latency_bin(cut)));
            if baseline.latency_n < need {
                failed.push(format!("only {} baseline latencies, need {need}", baseline.latency_n));
            }
            let extra = json!({
                "baseline_p95": base_p95,
                "canary_p95": canary.p95_seconds(),
                "cut_seconds": cut,
                "max_ratio": max_ratio,
                "share_allowed": LATENCY_SHARE,
            });
            ((slower, canary.latency_n), None, (1.0, LATENCY_SHARE), 1.0, "slower than the cut", extra)
        }
    };
    if c.1 < need {
        failed.push(format!("only {} canary samples, need {need}", c.1));
    }
    if let Some(b) = b
        && b.1 < need
    {
        failed.push(format!("only {} baseline samples, need {need}", b.1));
    }
    let test = msprt_not_worse(c, b, terms, s.tau, phi);
    if failed.is_empty() {
        match test {
            None => failed.push("the test is undefined for these counts".into()),
            Some(t) if t.delta >= 0.0 => {
                failed.push(format!("the canary is not within the margin: {} above it", num(t.delta)))
            }
            Some(t) if t.p_value > s.alpha => {
                failed.push(format!("sequential p = {} > alpha {}", num(t.p_value), num(s.alpha)))
            }
            Some(_) => {}
        }
    }
    let arm = |(x, n): (u64, u64)| json!({ "n": n, what: x, "rate": rate(x, n), "wilson95": interval_json(x, n) });
    let mut detail = json!({
        "canary": arm(c),
        "baseline": b.map(arm),
        "sequential": {
            "test": "msprt non-inferiority",
            "difference_from_margin": test.map(|t| t.delta),
            "variance": test.map(|t| t.variance),
            "log_lambda": test.map(|t| t.log_lambda),
            "p_value": test.map(|t| t.p_value),
            "alpha": s.alpha,
            "tau": s.tau,
            "min_samples": need,
        },
    });
    if let (Some(d), serde_json::Value::Object(e)) = (detail.as_object_mut(), extra) {
        d.extend(e);
    }
    let summary = |t: &Tally| -> ArmSummary { t.summary() };
    let evidence = Evidence { test: signal.name(), canary: summary(canary), baseline: Some(summary(baseline)), detail };
    Judgement::from_failures(failed, evidence)
}

#[cfg(test)]
mod tests;
