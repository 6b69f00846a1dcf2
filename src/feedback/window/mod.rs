//! Sliding time windows of feedback per arm (one service version), and the comparisons of a
//! canary arm with its baseline that decide whether the canary is worse.
//!
//! # Windows
//!
//! An [`ArmWindow`] splits time into buckets of a fixed width aligned on the Unix epoch (bucket
//! `k` holds `[k·w, (k+1)·w)`) and keeps a ring of `N + 1` of them, `N = ceil(window / w)`, so its
//! memory depends on the number of buckets and never on the number of events. Each bucket holds
//! counters, a running mean and, once it has seen a latency, one fixed log-spaced histogram
//! (123 counters, 984 bytes): 5 minutes in 5 s buckets is 61 slots, about 65 KB per arm at most.
//!
//! Relative to `now`:
//! - [`ArmWindow::summary`] merges the buckets `idx(now) - N + 1 ..= idx(now) + 1`: every event
//!   younger than `(N - 1)·w` is in it and none of age `N·w` or more, so the window's edge has the
//!   resolution of one bucket. (`idx(now) + 1` holds the slightly-future events described next.)
//! - An event older than that range is dropped ([`Intake::Dropped`]); so is one whose ring slot
//!   already holds a newer bucket, which only happens when `now` goes backwards.
//! - An event more than one bucket width in the future is clamped to `now`
//!   ([`Intake::Clamped`]): a producer's clock that runs ahead must not park events in buckets
//!   that nobody reads yet, nor evict the oldest ones early. Up to one bucket ahead is clock skew
//!   and kept as stamped.
//!
//! The convenience methods ([`ArmWindow::satisfaction`], [`ArmWindow::score`],
//! [`ArmWindow::outcome`]) take `now` from the system clock; [`ArmWindow::record`] takes it
//! explicitly (tests, replays).
//!
//! # Latency percentiles
//!
//! Latencies go into a histogram whose bins grow by a factor of [`LATENCY_GROWTH`] (1.1) from
//! [`LATENCY_MIN_SECONDS`] (1 ms) to ~102 s (121 bins), plus one bin below 1 ms and one above. A
//! percentile is the nearest-rank one (the `ceil(q·n)`-th smallest latency), reported as its bin's
//! geometric midpoint, so for latencies between 1 ms and ~102 s the reported value is within
//! [`LATENCY_RELATIVE_ERROR`] (`sqrt(1.1) - 1` ≈ 4.88%) of the exact nearest-rank percentile.
//! Below 1 ms it reads 1 ms (an upper bound), above ~102 s it reads ~102 s (a lower bound).
//! Negative or non-finite latencies are not recorded (the outcome still counts).
//!
//! # Comparisons
//!
//! [`negative_feedback`], [`mean_score_below`], [`error_ratio`] and [`latency_p95`] each return a
//! [`Judgement`] carrying [`Evidence`] for the audit record: the test's name, both arms' summaries
//! and the figures it computed. A `Hold` says which conditions failed, with numbers, all of them
//! separated by "; " (an invalid threshold is reported alone: the data are not judged against
//! it). A `min_samples` of 0 is taken as 1: nothing is concluded from no data.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::stats::{two_proportion_z_test, wilson_interval};

/// The most buckets an [`ArmWindow`] keeps; a finer `bucket` is widened to `window / MAX_BUCKETS`.
pub const MAX_BUCKETS: usize = 10_000;
/// The lower edge of the latency histogram, in seconds; anything faster is reported as this.
pub const LATENCY_MIN_SECONDS: f64 = 0.001;
/// The ratio between consecutive latency bin edges.
pub const LATENCY_GROWTH: f64 = 1.1;
/// The largest relative error of a reported latency percentile between [`LATENCY_MIN_SECONDS`]
/// and [`latency_max_seconds`]: `sqrt(LATENCY_GROWTH) - 1`.
pub const LATENCY_RELATIVE_ERROR: f64 = 0.04880884817015163;
/// The normal quantile of the Wilson intervals in the evidence (95%).
pub const Z95: f64 = 1.96;

/// Log-spaced bins between 1 ms and 1 ms · 1.1^121 ≈ 101.98 s.
const LATENCY_LOG_BINS: usize = 121;
/// Plus one bin below 1 ms (index 0) and one at or above the top edge (the last).
pub(crate) const LATENCY_BINS: usize = LATENCY_LOG_BINS + 2;
/// Durations are clamped to this many milliseconds (~73 million years), so that no arithmetic on
/// them overflows.
const MAX_MS: i64 = i64::MAX / 4;
/// Slack for comparing differences of rates with a threshold given in decimal.
pub(crate) const EPSILON: f64 = 1e-12;

/// The upper edge of the latency histogram (≈ 101.98 s); anything slower is reported as this.
pub fn latency_max_seconds() -> f64 {
    LATENCY_MIN_SECONDS * LATENCY_GROWTH.powi(LATENCY_LOG_BINS as i32)
}

pub(crate) fn latency_bin(seconds: f64) -> usize {
    if seconds < LATENCY_MIN_SECONDS {
        return 0;
    }
    let i = ((seconds / LATENCY_MIN_SECONDS).ln() / LATENCY_GROWTH.ln()).floor();
    if i >= LATENCY_LOG_BINS as f64 { LATENCY_BINS - 1 } else { i as usize + 1 }
}

/// The value reported for a bin: its geometric midpoint, or the histogram's edge for the two
/// open-ended bins.
fn latency_bin_value(bin: usize) -> f64 {
    if bin == 0 {
        LATENCY_MIN_SECONDS
    } else if bin >= LATENCY_BINS - 1 {
        latency_max_seconds()
    } else {
        LATENCY_MIN_SECONDS * LATENCY_GROWTH.powf((bin - 1) as f64 + 0.5)
    }
}

/// The nearest-rank `q`-quantile (0 < q <= 1) of a histogram of `n` latencies.
pub(crate) fn latency_quantile(hist: &[u64], n: u64, q: f64) -> Option<f64> {
    if n == 0 || !(q > 0.0 && q <= 1.0) {
        return None;
    }
    let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
    let mut seen = 0u64;
    for (bin, &count) in hist.iter().enumerate() {
        seen = seen.saturating_add(count);
        if seen >= rank {
            return Some(latency_bin_value(bin));
        }
    }
    None
}

/// One kind of feedback about an arm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Observation {
    /// A user's yes/no satisfaction; `false` counts as negative.
    Satisfaction { satisfied: bool },
    /// A score such as a model's confidence; non-finite values are ignored.
    Score { value: f64 },
    /// A request's outcome; `success: false` counts as an error.
    Outcome { success: bool, latency_seconds: Option<f64> },
}

/// What [`ArmWindow::record`] did with an observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intake {
    /// Counted in the bucket of its time.
    Counted,
    /// More than a bucket in the future: counted at `now`.
    Clamped,
    /// Too old for the window (or for a ring slot that already holds a newer bucket): not counted.
    Dropped,
    /// A non-finite score: not counted.
    Ignored,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Bucket {
    index: i64,
    satisfaction_n: u64,
    negative: u64,
    scores_n: u64,
    /// Kept as a running convex combination, which cannot overflow for finite scores.
    score_mean: f64,
    outcomes_n: u64,
    errors: u64,
    latency_n: u64,
    /// [`LATENCY_BINS`] counters, once a latency was seen.
    latency: Option<Vec<u64>>,
}

impl Bucket {
    fn new(index: i64) -> Bucket {
        Bucket {
            index,
            satisfaction_n: 0,
            negative: 0,
            scores_n: 0,
            score_mean: 0.0,
            outcomes_n: 0,
            errors: 0,
            latency_n: 0,
            latency: None,
        }
    }

    fn add(&mut self, observation: Observation) {
        match observation {
            Observation::Satisfaction { satisfied } => {
                self.satisfaction_n = self.satisfaction_n.saturating_add(1);
                if !satisfied {
                    self.negative = self.negative.saturating_add(1);
                }
            }
            Observation::Score { value } => {
                self.scores_n = self.scores_n.saturating_add(1);
                let n = self.scores_n as f64;
                self.score_mean =
                    if self.scores_n == 1 { value } else { self.score_mean * ((n - 1.0) / n) + value / n };
            }
            Observation::Outcome { success, latency_seconds } => {
                self.outcomes_n = self.outcomes_n.saturating_add(1);
                if !success {
                    self.errors = self.errors.saturating_add(1);
                }
                if let Some(seconds) = latency_seconds.filter(|s| s.is_finite() && *s >= 0.0) {
                    let hist = self.latency.get_or_insert_with(|| vec![0; LATENCY_BINS]);
                    let bin = &mut hist[latency_bin(seconds)];
                    *bin = bin.saturating_add(1);
                    self.latency_n = self.latency_n.saturating_add(1);
                }
            }
        }
    }
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(MAX_MS).min(MAX_MS)
}

/// `ceil(a / b)` for `a >= 0`, `b >= 1`, both at most [`MAX_MS`].
fn ceil_div(a: i64, b: i64) -> i64 {
    (a + b - 1) / b
}

/// The sliding window of one arm (one service version): see the module documentation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmWindow {
    bucket_ms: i64,
    /// N: buckets that make up the window.
    span: i64,
    /// N + 1 slots; bucket `k` lives in slot `k mod (N + 1)`.
    slots: Vec<Option<Bucket>>,
}

impl ArmWindow {
    /// A window of `window` in buckets of `bucket` (e.g. 5 min in 5 s buckets: 60 buckets, 61
    /// slots). The bucket is at least 1 ms and is widened if the window would need more than
    /// [`MAX_BUCKETS`]; a window shorter than a bucket is one bucket. Pick a bucket that divides
    /// the window: the effective window is `ceil(window / bucket)` buckets.
    pub fn new(window: Duration, bucket: Duration) -> ArmWindow {
        let window_ms = duration_ms(window);
        let mut bucket_ms = duration_ms(bucket).max(1);
        let mut span = ceil_div(window_ms, bucket_ms).max(1);
        if span > MAX_BUCKETS as i64 {
            bucket_ms = ceil_div(window_ms, MAX_BUCKETS as i64);
            span = ceil_div(window_ms, bucket_ms).max(1);
        }
        let slots = vec![None; span as usize + 1];
        ArmWindow { bucket_ms, span, slots }
    }

    /// The width of a bucket as used (after the adjustments of [`ArmWindow::new`]).
    pub fn bucket_width(&self) -> Duration {
        Duration::from_millis(self.bucket_ms as u64)
    }

    /// The window as used: its number of buckets times their width.
    pub fn effective_window(&self) -> Duration {
        Duration::from_millis((self.bucket_ms * self.span) as u64)
    }

    /// How many buckets this window can ever hold (N + 1): its memory bound.
    pub fn bucket_capacity(&self) -> usize {
        self.slots.len()
    }

    /// Records a user's yes/no satisfaction at `at`, with the system clock as now.
    pub fn satisfaction(&mut self, at: DateTime<Utc>, satisfied: bool) {
        self.record(Utc::now(), at, Observation::Satisfaction { satisfied });
    }

    /// Records a score (e.g. a model's confidence) at `at`, with the system clock as now;
    /// non-finite values are ignored.
    pub fn score(&mut self, at: DateTime<Utc>, value: f64) {
        self.record(Utc::now(), at, Observation::Score { value });
    }

    /// Records a request's outcome at `at`, with the system clock as now; a negative or
    /// non-finite latency is not recorded, the outcome still is.
    pub fn outcome(&mut self, at: DateTime<Utc>, success: bool, latency_seconds: Option<f64>) {
        self.record(Utc::now(), at, Observation::Outcome { success, latency_seconds });
    }

    /// Records an observation stamped `at`, as seen at `now`.
    pub fn record(&mut self, now: DateTime<Utc>, at: DateTime<Utc>, observation: Observation) -> Intake {
        if let Observation::Score { value } = observation
            && !value.is_finite()
        {
            return Intake::Ignored;
        }
        let now_ms = now.timestamp_millis();
        let mut at_ms = at.timestamp_millis();
        let mut intake = Intake::Counted;
        if at_ms.saturating_sub(now_ms) > self.bucket_ms {
            at_ms = now_ms;
            intake = Intake::Clamped;
        }
        let index = at_ms.div_euclid(self.bucket_ms);
        if index < now_ms.div_euclid(self.bucket_ms) - self.span + 1 {
            return Intake::Dropped;
        }
        let len = self.slots.len() as i64;
        let slot = &mut self.slots[index.rem_euclid(len) as usize];
        match slot {
            Some(bucket) if bucket.index == index => bucket.add(observation),
            Some(bucket) if bucket.index > index => return Intake::Dropped,
            _ => {
                let mut bucket = Bucket::new(index);
                bucket.add(observation);
                *slot = Some(bucket);
            }
        }
        intake
    }

    /// The events of the window ending at `now` (see the module documentation for its edges).
    pub fn summary(&self, now: DateTime<Utc>) -> ArmSummary {
        self.summary_of_span(now, self.span)
    }

    /// The events of the last `window` (rounded up to whole buckets) ending at `now`: a
    /// shorter view of the same ring; a longer `window` reads the whole ring.
    pub fn summary_within(&self, now: DateTime<Utc>, window: Duration) -> ArmSummary {
        let span = ceil_div(duration_ms(window), self.bucket_ms).clamp(1, self.span);
        self.summary_of_span(now, span)
    }

    fn summary_of_span(&self, now: DateTime<Utc>, span: i64) -> ArmSummary {
        let now_index = now.timestamp_millis().div_euclid(self.bucket_ms);
        let (first, last) = (now_index - span + 1, now_index + 1);
        let mut s = ArmSummary::default();
        let mut mean = 0.0;
        let mut hist = [0u64; LATENCY_BINS];
        for b in self.slots.iter().flatten().filter(|b| b.index >= first && b.index <= last) {
            s.satisfaction_n = s.satisfaction_n.saturating_add(b.satisfaction_n);
            s.negative = s.negative.saturating_add(b.negative);
            if b.scores_n > 0 {
                let before = s.scores_n as f64;
                s.scores_n = s.scores_n.saturating_add(b.scores_n);
                let total = s.scores_n as f64;
                mean = mean * (before / total) + b.score_mean * (b.scores_n as f64 / total);
            }
            s.outcomes_n = s.outcomes_n.saturating_add(b.outcomes_n);
            s.errors = s.errors.saturating_add(b.errors);
            if let Some(h) = &b.latency {
                for (total, count) in hist.iter_mut().zip(h.iter()) {
                    *total = total.saturating_add(*count);
                }
                s.latency_n = s.latency_n.saturating_add(b.latency_n);
            }
        }
        if s.scores_n > 0 {
            s.score_mean = Some(mean);
        }
        s.latency_p95 = latency_quantile(&hist, s.latency_n, 0.95);
        s
    }
}

/// What one arm's window holds at a moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ArmSummary {
    /// Satisfaction events, and how many of them were negative.
    pub satisfaction_n: u64,
    pub negative: u64,
    /// Finite scores, and their mean (None without any).
    pub scores_n: u64,
    pub score_mean: Option<f64>,
    /// Request outcomes, and how many were errors.
    pub outcomes_n: u64,
    pub errors: u64,
    /// The nearest-rank 95th percentile of the recorded latencies, in seconds, within
    /// [`LATENCY_RELATIVE_ERROR`]; None without any.
    pub latency_p95: Option<f64>,
    /// Outcomes that came with a (finite, non-negative) latency.
    pub latency_n: u64,
}

/// Why a comparison decided as it did, for the audit record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    /// The comparison: `negative_feedback`, `mean_score_below`, `error_ratio` or `latency_p95`.
    pub test: &'static str,
    pub canary: ArmSummary,
    /// None for comparisons with a fixed threshold rather than a baseline.
    pub baseline: Option<ArmSummary>,
    /// The figures computed and the thresholds applied (see each comparison).
    pub detail: Value,
}

/// The outcome of a comparison: the canary is worse (act), or not shown to be (hold, with the
/// failed conditions).
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    Act(Evidence),
    Hold { reason: String, evidence: Evidence },
}

impl Judgement {
    pub fn is_act(&self) -> bool {
        matches!(self, Judgement::Act(_))
    }

    pub fn evidence(&self) -> &Evidence {
        match self {
            Judgement::Act(evidence) | Judgement::Hold { evidence, .. } => evidence,
        }
    }

    /// Why it holds; None when it acts.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Judgement::Act(_) => None,
            Judgement::Hold { reason, .. } => Some(reason),
        }
    }

    pub(crate) fn from_failures(failed: Vec<String>, evidence: Evidence) -> Judgement {
        if failed.is_empty() {
            Judgement::Act(evidence)
        } else {
            Judgement::Hold { reason: failed.join("; "), evidence }
        }
    }
}

/// A number for a reason: about three significant digits, no trailing zeros.
pub(crate) fn num(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let a = x.abs();
    if !(1e-3..1e6).contains(&a) {
        return format!("{x:.2e}");
    }
    let decimals = (2 - a.log10().floor() as i32).max(0) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
}

/// `value > limit`; false when either is NaN.
fn exceeds(value: f64, limit: f64) -> bool {
    value > limit
}

pub(crate) fn rate(x: u64, n: u64) -> Option<f64> {
    if n == 0 || x > n { None } else { Some(x as f64 / n as f64) }
}

pub(crate) fn interval_json(x: u64, n: u64) -> Value {
    match wilson_interval(x, n, Z95) {
        Some((lo, hi)) => json!([lo, hi]),
        None => Value::Null,
    }
}

/// Acts when the canary's users are more often dissatisfied than the baseline's: both arms have
/// at least `min_samples` satisfaction events, the canary's negative ratio exceeds the baseline's
/// by at least `min_effect` (absolute, e.g. 0.05 for five points), and the one-sided pooled
/// two-proportion z-test of "canary negative ratio > baseline's" has a p-value below
/// `p_threshold` (which must be in (0, 1]; `min_effect` must be finite and >= 0).
///
/// Detail: `canary` and `baseline` (`n`, `negative`, `rate`, `wilson95`), `effect`, `z`,
/// `p_value` (null when the test is undefined: no samples, or no variance because both arms are
/// all negative or all positive, which holds), and the thresholds.
pub fn negative_feedback(
    canary: &ArmSummary,
    baseline: &ArmSummary,
    min_samples: u64,
    p_threshold: f64,
    min_effect: f64,
) -> Judgement {
    let (xc, nc, xb, nb) = (canary.negative, canary.satisfaction_n, baseline.negative, baseline.satisfaction_n);
    let (rc, rb) = (rate(xc, nc), rate(xb, nb));
    let effect = rc.zip(rb).map(|(c, b)| c - b);
    let test = two_proportion_z_test(xc, nc, xb, nb);
    let need = min_samples.max(1);
    let detail = json!({
        "canary": { "n": nc, "negative": xc, "rate": rc, "wilson95": interval_json(xc, nc) },
        "baseline": { "n": nb, "negative": xb, "rate": rb, "wilson95": interval_json(xb, nb) },
        "effect": effect,
        "z": test.map(|t| t.z),
        "p_value": test.map(|t| t.p_value),
        "min_samples": need,
        "p_threshold": p_threshold,
        "min_effect": min_effect,
    });
    let evidence =
        Evidence { test: "negative_feedback", canary: canary.clone(), baseline: Some(baseline.clone()), detail };

    let mut failed = Vec::new();
    if !(p_threshold > 0.0 && p_threshold <= 1.0) {
        failed.push(format!("invalid p_threshold {}: must be in (0, 1]", num(p_threshold)));
    }
    if !(min_effect.is_finite() && min_effect >= 0.0) {
        failed.push(format!("invalid min_effect {}: must be finite and >= 0", num(min_effect)));
    }
    if !failed.is_empty() {
        return Judgement::from_failures(failed, evidence);
    }
    for (arm, x, n) in [("canary", xc, nc), ("baseline", xb, nb)] {
        if x > n {
            failed.push(format!("inconsistent {arm} counts: {x} negative of {n} samples"));
        } else if n < need {
            failed.push(format!("only {n} {arm} samples, need {need}"));
        }
    }
    if let (Some(e), Some(c), Some(b)) = (effect, rc, rb) {
        if e + EPSILON < min_effect {
            failed.push(format!(
                "effect {} < min_effect {} (negative ratio: canary {}, baseline {})",
                num(e),
                num(min_effect),
                num(c),
                num(b)
            ));
        }
        match test {
            Some(t) if t.p_value >= p_threshold => {
                failed.push(format!("p = {} >= {} (z = {})", num(t.p_value), num(p_threshold), num(t.z)))
            }
            Some(_) => {}
            None => failed.push(format!(
                "no variance: {} of both arms' satisfaction events are negative",
                if xc == 0 && xb == 0 { "none" } else { "all" }
            )),
        }
    }
    Judgement::from_failures(failed, evidence)
}

/// Acts when the canary's mean score (e.g. a model's confidence) is below `threshold` over at
/// least `min_samples` scores (1 is allowed: one confident-less answer can be enough). No
/// baseline. Detail: `n`, `mean`, `threshold`, `min_samples`.
pub fn mean_score_below(canary: &ArmSummary, threshold: f64, min_samples: u64) -> Judgement {
    let need = min_samples.max(1);
    let detail = json!({
        "n": canary.scores_n,
        "mean": canary.score_mean,
        "threshold": threshold,
        "min_samples": need,
    });
    let evidence = Evidence { test: "mean_score_below", canary: canary.clone(), baseline: None, detail };
    let mut failed = Vec::new();
    if !threshold.is_finite() {
        failed.push(format!("invalid threshold {}: must be finite", num(threshold)));
        return Judgement::from_failures(failed, evidence);
    }
    if canary.scores_n < need {
        failed.push(format!("only {} canary scores, need {need}", canary.scores_n));
    } else {
        match canary.score_mean {
            None => failed.push("no canary mean score".to_string()),
            Some(mean) if mean < threshold => {}
            Some(mean) => failed.push(format!("mean score {} >= threshold {}", num(mean), num(threshold))),
        }
    }
    Judgement::from_failures(failed, evidence)
}

/// Acts when the canary's error ratio is more than `max_ratio` times the baseline's, both arms
/// having at least `min_samples` outcomes.
///
/// The baseline's ratio is floored for the comparison: with 0 errors in n outcomes it counts as
/// 1/(n + 1), the ratio it would have if the next outcome failed. Without a floor a baseline that
/// happens to have no errors makes a single canary error an infinite ratio. This floor, unlike
/// the Wilson upper bound (3.8/(n + 3.8) at 95% for 0 errors, higher than the 1/n of one
/// error), keeps the reference monotone in the baseline's errors: 0 errors compare as slightly
/// better than 1 error, never as worse. Detail: `canary_rate`, `baseline_rate`,
/// `baseline_reference` (the floored rate), `baseline_floored`, `ratio` (canary rate /
/// reference), `wilson95` of both arms, and the thresholds.
pub fn error_ratio(canary: &ArmSummary, baseline: &ArmSummary, max_ratio: f64, min_samples: u64) -> Judgement {
    let (xc, nc, xb, nb) = (canary.errors, canary.outcomes_n, baseline.errors, baseline.outcomes_n);
    let (rc, rb) = (rate(xc, nc), rate(xb, nb));
    let floored = xb == 0 && nb > 0;
    let reference = if floored { Some(1.0 / (nb as f64 + 1.0)) } else { rb };
    let ratio = rc.zip(reference).map(|(c, r)| c / r);
    let need = min_samples.max(1);
    let detail = json!({
        "canary_rate": rc,
        "baseline_rate": rb,
        "baseline_reference": reference,
        "baseline_floored": floored,
        "ratio": ratio,
        "canary_wilson95": interval_json(xc, nc),
        "baseline_wilson95": interval_json(xb, nb),
        "max_ratio": max_ratio,
        "min_samples": need,
    });
    let evidence = Evidence { test: "error_ratio", canary: canary.clone(), baseline: Some(baseline.clone()), detail };

    let mut failed = Vec::new();
    if !(max_ratio.is_finite() && max_ratio >= 0.0) {
        failed.push(format!("invalid max_ratio {}: must be finite and >= 0", num(max_ratio)));
        return Judgement::from_failures(failed, evidence);
    }
    for (arm, x, n) in [("canary", xc, nc), ("baseline", xb, nb)] {
        if x > n {
            failed.push(format!("inconsistent {arm} counts: {x} errors of {n} outcomes"));
        } else if n < need {
            failed.push(format!("only {n} {arm} outcomes, need {need}"));
        }
    }
    if let (Some(c), Some(r), Some(ratio)) = (rc, reference, ratio)
        && !exceeds(c, max_ratio * r)
    {
        let base = if floored {
            format!("the baseline's floor {} (0 errors in {nb}: 1/(n+1))", num(r))
        } else {
            format!("the baseline's {}", num(r))
        };
        failed.push(format!("canary error ratio {} is {}x {base}, need > {}x", num(c), num(ratio), num(max_ratio)));
    }
    Judgement::from_failures(failed, evidence)
}

/// Acts when the canary's 95th-percentile latency is more than `max_ratio` times the
/// baseline's, both arms having at least `min_samples` latencies. Each p95 is within
/// [`LATENCY_RELATIVE_ERROR`] of the exact one, so their ratio is within about ±10%: choose
/// `max_ratio` well above 1 (e.g. 1.5). The baseline's p95 is floored at
/// [`LATENCY_MIN_SECONDS`]. Detail: `canary_p95`, `baseline_p95`, `ratio`, `relative_error` and
/// the thresholds.
pub fn latency_p95(canary: &ArmSummary, baseline: &ArmSummary, max_ratio: f64, min_samples: u64) -> Judgement {
    let (c, b) = (canary.latency_p95, baseline.latency_p95);
    let reference = b.map(|b| b.max(LATENCY_MIN_SECONDS));
    let ratio = c.zip(reference).map(|(c, r)| c / r);
    let need = min_samples.max(1);
    let detail = json!({
        "canary_p95": c,
        "baseline_p95": b,
        "ratio": ratio,
        "relative_error": LATENCY_RELATIVE_ERROR,
        "max_ratio": max_ratio,
        "min_samples": need,
    });
    let evidence = Evidence { test: "latency_p95", canary: canary.clone(), baseline: Some(baseline.clone()), detail };

    let mut failed = Vec::new();
    if !(max_ratio.is_finite() && max_ratio >= 0.0) {
        failed.push(format!("invalid max_ratio {}: must be finite and >= 0", num(max_ratio)));
        return Judgement::from_failures(failed, evidence);
    }
    for (arm, n, p95) in [("canary", canary.latency_n, c), ("baseline", baseline.latency_n, b)] {
        if n < need {
            failed.push(format!("only {n} {arm} latencies, need {need}"));
        } else if !p95.is_some_and(f64::is_finite) {
            failed.push(format!("no {arm} p95"));
        }
    }
    if let (Some(c), Some(r), Some(ratio)) = (c, reference, ratio)
        && !exceeds(c, max_ratio * r)
    {
        failed.push(format!(
            "canary p95 {}s is {}x the baseline's {}s, need > {}x",
            num(c),
            num(ratio),
            num(r),
            num(max_ratio)
        ));
    }
    Judgement::from_failures(failed, evidence)
}

#[cfg(test)]
mod tests;
