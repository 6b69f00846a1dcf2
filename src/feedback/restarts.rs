//! Comparisons restarted on a schedule, so that a canary that goes bad late is judged on its
//! recent events rather than on all of them (where hours of good events drown the new bad
//! ones), without giving up the bound on false rollbacks.
//!
//! Every [`RESTART_EVERY`] (aligned on the Unix epoch, so both arms of a comparison restart at
//! the same moments) each arm starts a new tally of what it counts from then on, and keeps the
//! [`RECENT_KEPT`] latest. A comparison that started at `s` is then made several times over:
//! - since `s` (generation 0), at level `α · (1 − RESTART_SHARE)`;
//! - since the `g`-th restart point after `s` (generation `g ≥ 1`, while its tallies are kept),
//!   at level `α · RESTART_SHARE / (g (g + 1))`.
//!
//! The levels add up to at most `α` (`Σ 1/(g(g+1)) = 1`), and each generation is an always-valid
//! test of its own, so by the union bound the chance that any of them ever rolls back a canary no
//! worse than its baseline is at most `α`. Dropping a generation that has not fired only stops
//! a test early, which never adds to its false alarms. A change is judged on at most two restart
//! periods of events from before it, at a level that shrinks slowly with the comparison's age.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// How often the recent comparisons restart.
pub const RESTART_EVERY: Duration = Duration::from_secs(300);
/// Recent tallies an arm keeps: a generation lives between one and two restart periods.
pub const RECENT_KEPT: usize = 2;
/// The part of `α` spent on the restarted comparisons; the rest goes to the one since the start.
pub const RESTART_SHARE: f64 = 0.25;

fn every_ms() -> i64 {
    RESTART_EVERY.as_millis() as i64
}

/// The latest restart point at or before `t`.
pub fn restart_point(t: DateTime<Utc>) -> DateTime<Utc> {
    let ms = t.timestamp_millis().div_euclid(every_ms()) * every_ms();
    DateTime::from_timestamp_millis(ms).unwrap_or(t)
}

/// The generation of a tally kept since restart point `since`, in a comparison that started at
/// `started`: the number of restart points in `(started, since]`; None when it is not after the
/// start (then it holds nothing the comparison since the start does not).
pub fn generation(started: DateTime<Utc>, since: DateTime<Utc>) -> Option<u64> {
    if since <= started {
        return None;
    }
    let first = restart_point(started).timestamp_millis();
    u64::try_from((since.timestamp_millis() - first) / every_ms()).ok().filter(|g| *g >= 1)
}

/// The level of generation `g` (0: since the start) for a rule's `alpha`.
pub fn alpha_share(alpha: f64, g: u64) -> f64 {
    if g == 0 {
        alpha * (1.0 - RESTART_SHARE)
    } else {
        let g = g as f64;
        alpha * RESTART_SHARE / (g * (g + 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn restart_points_are_aligned_and_generations_count_them_from_the_start() {
        let start = Utc.with_ymd_and_hms(2026, 11, 24, 20, 2, 30).unwrap();
        assert_eq!(restart_point(start), Utc.with_ymd_and_hms(2026, 11, 24, 20, 0, 0).unwrap());
        let at = |m: u32| Utc.with_ymd_and_hms(2026, 11, 24, 20, m, 0).unwrap();
        assert_eq!(generation(start, at(0)), None, "a point before the start");
        assert_eq!(generation(start, at(5)), Some(1));
        assert_eq!(generation(start, at(20)), Some(4));
        assert_eq!(generation(at(5), at(5)), None, "started on the point itself");
        assert_eq!(generation(at(5), at(10)), Some(1));
    }

    #[test]
    fn the_levels_of_all_generations_add_up_to_at_most_alpha() {
        let total: f64 = (0..100_000).map(|g| alpha_share(0.05, g)).sum();
        assert!(total <= 0.05 + 1e-12 && total > 0.0499, "{total}");
        assert!((alpha_share(0.05, 0) - 0.0375).abs() < 1e-15);
        assert!((alpha_share(0.05, 1) - 0.00625).abs() < 1e-15);
    }
}
