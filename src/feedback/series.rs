//! A comparison over time, for the evidence of a decision: each arm keeps a small [`History`] of
//! its counts, and a finding merges its two arms' into a [`Series`] (at most [`SERIES_POINTS`]
//! points from the comparison's start to the decision), which the on-call page draws.
//!
//! # The history of an arm
//! Time is cut into steps aligned on the Unix epoch (bucket `k` holds `[k·s, (k+1)·s)`, `s` a
//! power of two seconds, 1 at first). The first event of a bucket records a [`Sample`] at the
//! bucket's start with the arm's counts *before* it: exactly the counts of the events before that
//! moment. A bucket without an event records nothing (its counts are those of the next sample).
//! When [`HISTORY_POINTS`] samples are kept and another is due, the step doubles and each new
//! bucket keeps its earliest sample, moved to the bucket's start (nothing happened in between, or
//! that earlier half would have its own sample): the history thins by halves, always spans the
//! arm from its first event, and its memory is bounded whatever the event rate. Per event it
//! costs one comparison of timestamps; a sample (once per bucket) reads the latency histogram.
//!
//! Steps are powers of two on one epoch grid, so the samples of two arms line up on the
//! coarser arm's grid: the counts of each arm at any multiple of that step are exact, and so is
//! the p-value computed from them (with the dispersion the decision used: the history does not
//! keep the batches it was estimated from).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::arms::Arm;
use super::sequential::Tally;

/// Samples an arm keeps at most.
pub const HISTORY_POINTS: usize = 64;
/// Points of a finding's series at most, the decision's included.
pub const SERIES_POINTS: usize = 60;

/// An arm's counts at a moment: those of the events recorded before `at`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub at: DateTime<Utc>,
    pub satisfaction_n: u64,
    pub negative: u64,
    pub outcomes_n: u64,
    pub errors: u64,
    pub latency_n: u64,
    /// The p95 of the latencies counted, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95: Option<f64>,
}

impl Sample {
    fn of(at: DateTime<Utc>, tally: &Tally) -> Sample {
        Sample {
            at,
            satisfaction_n: tally.satisfaction_n,
            negative: tally.negative,
            outcomes_n: tally.outcomes_n,
            errors: tally.errors,
            latency_n: tally.latency_n,
            p95: tally.p95_seconds(),
        }
    }

    fn zero(at: DateTime<Utc>) -> Sample {
        Sample { at, satisfaction_n: 0, negative: 0, outcomes_n: 0, errors: 0, latency_n: 0, p95: None }
    }

    fn is_zero(&self) -> bool {
        self.satisfaction_n == 0 && self.outcomes_n == 0 && self.latency_n == 0
    }
}

/// An arm's counts over time (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// The step between samples, in seconds (a power of two).
    step: i64,
    /// Oldest first, each at a multiple of `step`, at most [`HISTORY_POINTS`].
    points: Vec<Sample>,
}

impl Default for History {
    fn default() -> History {
        History { step: 1, points: Vec::new() }
    }
}

fn at_second(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The start of the bucket of width `step` holding second `secs`.
fn floor(secs: i64, step: i64) -> i64 {
    let step = step.max(1);
    secs.div_euclid(step) * step
}

impl History {
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The samples, oldest first.
    pub fn points(&self) -> &[Sample] {
        &self.points
    }

    /// The step between samples, in seconds.
    pub fn step(&self) -> i64 {
        self.step
    }

    /// Before an event recorded at `now` is counted in `tally`: a sample at its bucket's start
    /// if it is the bucket's first event. The hot path: one comparison unless a sample is due.
    #[inline]
    pub fn before(&mut self, now: DateTime<Utc>, tally: &Tally) {
        let due = self.points.last().map_or(i64::MIN, |p| p.at.timestamp().saturating_add(self.step));
        if now.timestamp() >= due {
            self.sample(now.timestamp(), tally);
        }
    }

    #[cold]
    fn sample(&mut self, secs: i64, tally: &Tally) {
        while self.points.len() >= HISTORY_POINTS {
            self.thin();
        }
        let start = floor(secs, self.step);
        if self.points.last().is_some_and(|p| p.at.timestamp() >= start) {
            // The thinned history's last bucket holds this moment: its sample came first.
            return;
        }
        self.points.push(Sample::of(at_second(start), tally));
    }

    /// Double the step; each new bucket keeps its earliest sample, at the bucket's start.
    fn thin(&mut self) {
        self.step = self.step.saturating_mul(2);
        let step = self.step;
        let mut last: Option<i64> = None;
        self.points.retain_mut(|p| {
            let start = floor(p.at.timestamp(), step);
            if last.is_some_and(|l| l >= start) {
                return false;
            }
            last = Some(start);
            p.at = at_second(start);
            true
        });
    }

    /// The arm's counts before `at` (a multiple of this history's step), if known: zero before
    /// the arm's first event, a sample's, or `current` (the arm's counts now) after its last
    /// event `last`.
    fn at(&self, at: DateTime<Utc>, started: DateTime<Utc>, last: DateTime<Utc>, current: &Sample) -> Option<Sample> {
        if at <= started {
            return Some(Sample::zero(at));
        }
        let i = self.points.partition_point(|p| p.at < at);
        match self.points.get(i) {
            // Before the first sample, known only if it is zero (a history from an older
            // snapshot starts after its arm did).
            Some(p) if i == 0 && p.at > at => p.is_zero().then_some(Sample { at, ..*p }),
            Some(p) => Some(Sample { at, ..*p }),
            None if at > last => Some(Sample { at, ..*current }),
            None => None,
        }
    }
}

/// Which counts a series shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Negative answers among satisfaction events.
    Negative,
    /// Errors among outcomes.
    Errors,
    /// The p95 of the latencies.
    Latency,
}

impl Measure {
    pub fn name(self) -> &'static str {
        match self {
            Measure::Negative => "negative",
            Measure::Errors => "errors",
            Measure::Latency => "latency_p95",
        }
    }

    /// `(bad, n)` of a sample for a proportion (None for latency).
    pub fn counts(self, s: &Sample) -> Option<(u64, u64)> {
        match self {
            Measure::Negative => Some((s.negative, s.satisfaction_n)),
            Measure::Errors => Some((s.errors, s.outcomes_n)),
            Measure::Latency => None,
        }
    }

    fn arm(self, s: &Sample) -> SeriesArm {
        match self.counts(s) {
            Some((bad, n)) => SeriesArm { n, bad: Some(bad), p95: None },
            None => SeriesArm { n: s.latency_n, bad: None, p95: s.p95 },
        }
    }
}

/// One arm at one point of a [`Series`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SeriesArm {
    /// Samples counted (satisfaction events, outcomes, or latencies).
    pub n: u64,
    /// Of those, negative or errors (rates only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bad: Option<u64>,
    /// The p95 in seconds (latency only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95: Option<f64>,
}

/// Both arms at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    pub at: DateTime<Utc>,
    pub canary: SeriesArm,
    pub baseline: SeriesArm,
    /// The sequential p-value of the counts so far (rates, once both arms vary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
}

/// A comparison from its start to the decision, for the evidence (`evidence.series`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// `negative`, `errors` or `latency_p95`.
    pub measure: String,
    /// The level the p-values are tested at (the comparison since the start's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// The dispersion the p-values were computed with: the decision's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispersion: Option<f64>,
    /// Latency: the canary's p95 may be at most this many times the baseline's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ratio: Option<f64>,
    /// The seconds between the arms' samples (the coarser arm's step).
    pub step_seconds: i64,
    /// Oldest first; the last is the decision.
    pub points: Vec<SeriesPoint>,
}

/// What a series is tested with: the measure, and the p-value of two arms' `(bad, n)`.
pub struct Scale<'a> {
    pub measure: Measure,
    pub alpha: Option<f64>,
    pub dispersion: Option<f64>,
    pub max_ratio: Option<f64>,
    pub p_value: &'a dyn Fn((u64, u64), (u64, u64)) -> Option<f64>,
}

impl Series {
    /// The comparison of `canary` and `baseline` from its start (the later arm's first event)
    /// to `now` (the decision, the arms' current counts): each multiple of the coarser arm's step
    /// at which both arms' counts are known, thinned evenly to [`SERIES_POINTS`] with the first
    /// kept, then the decision.
    pub fn pair(canary: &Arm, baseline: &Arm, now: DateTime<Utc>, scale: &Scale<'_>) -> Series {
        let (hc, hb) = (&canary.history, &baseline.history);
        let step = hc.step.max(hb.step);
        let start = canary.started.max(baseline.started);
        let first = at_second(floor(start.timestamp(), step));
        let (now_c, now_b) = (Sample::of(now, &canary.tally), Sample::of(now, &baseline.tally));
        let mut moments: Vec<DateTime<Utc>> = hc
            .points
            .iter()
            .chain(&hb.points)
            .map(|p| at_second(floor(p.at.timestamp(), step)))
            .filter(|at| *at >= first && *at < now)
            .collect();
        moments.sort_unstable();
        moments.dedup();
        let known: Vec<(Sample, Sample)> = moments
            .into_iter()
            .filter_map(|at| {
                let c = hc.at(at, canary.started, canary.last, &now_c)?;
                let b = hb.at(at, baseline.started, baseline.last, &now_b)?;
                Some((c, b))
            })
            .collect();
        let mut pairs = spread(&known, SERIES_POINTS - 1);
        pairs.push((now_c, now_b));
        let points = pairs
            .into_iter()
            .map(|(c, b)| SeriesPoint {
                at: c.at,
                canary: scale.measure.arm(&c),
                baseline: scale.measure.arm(&b),
                p_value: scale
                    .measure
                    .counts(&c)
                    .zip(scale.measure.counts(&b))
                    .and_then(|(c, b)| (scale.p_value)(c, b)),
            })
            .collect();
        Series {
            measure: scale.measure.name().to_string(),
            alpha: scale.alpha,
            dispersion: scale.dispersion,
            max_ratio: scale.max_ratio,
            step_seconds: step,
            points,
        }
    }
}

/// At most `max` of `items`, evenly spread, the first and the last kept.
fn spread<T: Copy>(items: &[T], max: usize) -> Vec<T> {
    if items.len() <= max {
        return items.to_vec();
    }
    if max < 2 {
        return items.iter().take(max).copied().collect();
    }
    let last = items.len() - 1;
    (0..max).map(|i| items[i * last / (max - 1)]).collect()
}

#[cfg(test)]
mod tests;
