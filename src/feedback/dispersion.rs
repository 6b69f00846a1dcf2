//! How much more the count of bad events varies than independent events would: the dispersion
//! `φ` that scales the mixture SPRT's variance when events are dependent (a failed request
//! retried and every attempt reported, a client that fails several times in a row).
//!
//! # Dynamic batch means, successive differences
//! Each arm cuts its stream of events (errors among outcomes, negatives among satisfaction
//! answers) into consecutive batches of `size` events and keeps the bad count of every completed
//! batch. When [`MAX_BATCHES`] are complete, adjacent batches are merged and `size` doubles, so
//! an arm holds between 32 and 64 batches whatever its count (memory is constant) and a batch
//! grows with the data: a run of dependent events shorter than a batch falls mostly inside one.
//!
//! For batches of `B` events with a bad rate `p`, `E[(x_j − x_{j−1})²] = 2 φ B p (1 − p)` when
//! the batches are independent of each other; `φ = 1` for independent events, about `k` when
//! every bad event comes in a run of `k`. Successive differences rather than deviations from the
//! overall mean make the estimate blind to a rate that drifts slowly (both arms failing more at
//! peak hours): only what changes from one batch to the next counts. Both arms' batches are
//! pooled (each against its own rate, so a worse canary does not look dispersed):
//!
//! ```text
//! φ̂ = Σ_arms Σ_j (x_j − x_{j−1})² / B  ÷  2 Σ_arms (m − 1) p (1 − p)
//! ```
//!
//! The comparison uses `max(1, φ̂)`: dependence can only make a difference less significant.
//! The state is integers only, so a replay of the audit log rebuilds it exactly.

use serde::{Deserialize, Serialize};

/// Events per batch at the start.
pub const FIRST_BATCH: u64 = 25;
/// Completed batches kept before adjacent ones are merged.
pub const MAX_BATCHES: usize = 64;
/// Successive differences (over both arms) needed before a comparison may conclude.
pub const MIN_PAIRS: u64 = 8;

/// One arm's batches of one kind of event (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batches {
    /// Events per completed batch (0 before the first event).
    #[serde(default)]
    size: u64,
    /// Bad events in each completed batch, oldest first.
    #[serde(default)]
    bad: Vec<u64>,
    /// The batch being filled.
    #[serde(default)]
    open_n: u64,
    #[serde(default)]
    open_bad: u64,
    /// `Σ (x_j − x_{j−1})²` over the completed batches, kept as they complete (the comparison
    /// reads it at every event).
    #[serde(default)]
    ssd: u64,
}

impl Batches {
    /// Count one event.
    pub fn add(&mut self, bad: bool) {
        if self.size == 0 {
            self.size = FIRST_BATCH;
        }
        self.open_n += 1;
        self.open_bad += u64::from(bad);
        if self.open_n < self.size {
            return;
        }
        if let Some(last) = self.bad.last() {
            self.ssd = self.ssd.saturating_add(last.abs_diff(self.open_bad).pow(2));
        }
        self.bad.push(self.open_bad);
        (self.open_n, self.open_bad) = (0, 0);
        if self.bad.len() >= MAX_BATCHES {
            self.bad = self.bad.chunks(2).map(|c| c.iter().sum()).collect();
            self.size *= 2;
            self.ssd = self.squared_differences();
        }
    }

    fn squared_differences(&self) -> u64 {
        self.bad.windows(2).fold(0u64, |a, w| a.saturating_add(w[0].abs_diff(w[1]).pow(2)))
    }

    /// An event counted before changes from good to bad (`now_bad`) or back: a retried request
    /// whose final attempt replaces an earlier one. The change is made in the open batch (or,
    /// when it has no bad event to take back, the latest batch that has one).
    pub fn replace(&mut self, was_bad: bool, now_bad: bool) {
        match (was_bad, now_bad) {
            (false, true) => self.open_bad += 1,
            (true, false) if self.open_bad > 0 => self.open_bad -= 1,
            (true, false) => {
                if let Some(b) = self.bad.iter_mut().rev().find(|b| **b > 0) {
                    *b -= 1;
                    self.ssd = self.squared_differences();
                }
            }
            _ => {}
        }
    }

    /// Events per completed batch.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Successive differences: `(m − 1, Σ (x_j − x_{j−1})²)`.
    fn differences(&self) -> (u64, u64) {
        (self.bad.len().saturating_sub(1) as u64, self.ssd)
    }
}

/// The estimated dispersion of a comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dispersion {
    /// `φ̂`; None when no arm has a pair of batches with a rate strictly between 0 and 1.
    pub estimate: Option<f64>,
    /// `max(1, φ̂)`: what scales the variance.
    pub used: f64,
    /// Successive differences behind the estimate, over both arms.
    pub pairs: u64,
    /// The batch sizes (canary, baseline).
    pub batch: (u64, u64),
}

/// The pooled estimate from two arms, each with its overall bad rate.
pub fn dispersion(canary: (&Batches, f64), baseline: (&Batches, f64)) -> Dispersion {
    let (mut numerator, mut expected, mut pairs) = (0.0, 0.0, 0u64);
    for (batches, p) in [canary, baseline] {
        let (m1, ssd) = batches.differences();
        pairs += m1;
        if m1 == 0 || !(p > 0.0 && p < 1.0) {
            continue;
        }
        numerator += ssd as f64 / batches.size as f64;
        expected += 2.0 * m1 as f64 * p * (1.0 - p);
    }
    let estimate = (expected > 0.0).then(|| numerator / expected);
    Dispersion { estimate, used: estimate.unwrap_or(1.0).max(1.0), pairs, batch: (canary.0.size, baseline.0.size) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feedback::testing::Rng;

    fn batches(events: impl IntoIterator<Item = bool>) -> Batches {
        let mut b = Batches::default();
        events.into_iter().for_each(|e| b.add(e));
        b
    }

    #[test]
    fn batches_double_when_full_and_keep_every_count() {
        let b = batches((0..FIRST_BATCH * MAX_BATCHES as u64 + 3).map(|i| i % 5 == 0));
        assert_eq!(b.size(), 2 * FIRST_BATCH);
        assert_eq!(b.bad.len(), MAX_BATCHES / 2);
        assert_eq!(b.open_n, 3);
        assert_eq!(b.ssd, b.squared_differences(), "the running sum is the sum");
        let counted: u64 = b.bad.iter().sum::<u64>() + b.open_bad;
        assert_eq!(counted, (0..FIRST_BATCH * MAX_BATCHES as u64 + 3).filter(|i| i % 5 == 0).count() as u64);
        // Memory stays bounded however many events come.
        let big = batches((0..1_000_000u64).map(|i| i % 7 == 0));
        assert!(big.bad.len() < MAX_BATCHES && big.bad.len() >= MAX_BATCHES / 2 - 1, "{}", big.bad.len());
    }

    #[test]
    fn independent_events_estimate_about_one_and_runs_of_k_about_k() {
        let mut rng = Rng(11);
        let independent = batches((0..40_000).map(|_| rng.uniform() < 0.1));
        let d = dispersion((&independent, rate(&independent)), (&independent, rate(&independent)));
        assert!((d.estimate.unwrap() - 1.0).abs() < 0.3, "{d:?}");
        // Each failure comes with 4 more: the count varies about 5 times as much.
        let mut runs = Vec::new();
        while runs.len() < 40_000 {
            if rng.uniform() < 0.025 {
                runs.extend([true; 5]);
            } else {
                runs.push(false);
            }
        }
        let clustered = batches(runs);
        let d = dispersion((&clustered, rate(&clustered)), (&clustered, rate(&clustered)));
        let phi = d.estimate.unwrap();
        assert!((3.5..7.0).contains(&phi), "{d:?}");
        assert_eq!(d.used, phi);
    }

    #[test]
    fn a_drifting_rate_is_not_taken_for_dispersion_and_nothing_is_estimated_from_nothing() {
        let mut rng = Rng(5);
        // The rate climbs from 1% to 6% and back over the stream.
        let n = 40_000;
        let drifting = batches((0..n).map(|i| {
            let x = i as f64 / n as f64;
            rng.uniform() < 0.01 + 0.05 * (std::f64::consts::PI * x).sin()
        }));
        let d = dispersion((&drifting, rate(&drifting)), (&Batches::default(), 0.0));
        assert!(d.estimate.unwrap() < 1.4, "{d:?}");
        let none = dispersion((&Batches::default(), 0.0), (&batches([false; 100]), 0.0));
        assert_eq!((none.estimate, none.used, none.pairs), (None, 1.0, 3));
    }

    #[test]
    fn a_replaced_outcome_moves_one_bad_event() {
        let mut b = batches([true; 30]);
        b.replace(true, false);
        assert_eq!((b.bad.clone(), b.open_bad), (vec![25], 4));
        b.replace(true, false);
        b.replace(true, false);
        b.replace(true, false);
        b.replace(true, false);
        b.replace(true, false);
        assert_eq!((b.bad.clone(), b.open_bad), (vec![24], 0));
        assert_eq!(b.ssd, b.squared_differences());
        b.replace(false, true);
        b.replace(true, true);
        assert_eq!(b.open_bad, 1);
    }

    fn rate(b: &Batches) -> f64 {
        let n = b.bad.len() as u64 * b.size + b.open_n;
        (b.bad.iter().sum::<u64>() + b.open_bad) as f64 / n as f64
    }
}
