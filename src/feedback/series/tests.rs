use chrono::TimeZone;

use super::*;
use crate::feedback::window::Observation;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 20, 0, 0).unwrap()
}

fn outcome(success: bool) -> Observation {
    Observation::Outcome { success, latency_seconds: Some(if success { 0.05 } else { 0.4 }) }
}

const N: u64 = 1_000_000;
/// The baseline's first event.
const HALF: u64 = N / 2;

/// Event `i` is recorded at `t0 + 10 ms · i`: one in ten goes to the canary (one in ten of
/// those fails), the others from the middle on to the baseline (one in a hundred fails).
fn event(i: u64) -> (DateTime<Utc>, Option<bool>, bool) {
    let at = t0() + chrono::Duration::milliseconds(10 * i as i64);
    let canary = i.is_multiple_of(10);
    let arm = if canary {
        Some(true)
    } else if i >= HALF {
        Some(false)
    } else {
        None
    };
    let failed = if canary { i.is_multiple_of(100) } else { i % 100 == 1 };
    (at, arm, failed)
}

/// The events recorded before `at` (of `0..N`).
fn before(at: DateTime<Utc>) -> u64 {
    let ms = (at - t0()).num_milliseconds().max(0) as u64;
    ms.div_ceil(10).min(N)
}

/// The canary's events and errors, and the baseline's events, among events `0..k`.
fn counts(k: u64) -> (u64, u64, u64) {
    let others = |k: u64| k - k.div_ceil(10);
    (k.div_ceil(10), k.div_ceil(100), others(k).saturating_sub(others(HALF)))
}

#[test]
fn a_history_thins_by_halves_stays_bounded_over_a_million_events_and_keeps_first_and_last() {
    let (mut canary, mut baseline) = (Arm::new(t0()), Arm::new(event(HALF + 1).0));
    let mut now = t0();
    for i in 0..N {
        let (at, arm, failed) = event(i);
        let arm = match arm {
            Some(true) => &mut canary,
            Some(false) => &mut baseline,
            None => continue,
        };
        now = at;
        arm.observe(at, at, outcome(!failed));
        if i.is_multiple_of(1000) {
            assert!(
                canary.history.points().len() <= HISTORY_POINTS && baseline.history.points().len() <= HISTORY_POINTS
            );
        }
    }
    for (arm, is_canary) in [(&canary, true), (&baseline, false)] {
        let h = &arm.history;
        let points = h.points();
        assert!(points.len() <= HISTORY_POINTS && points.len() > HISTORY_POINTS / 4, "{}", points.len());
        // 10,000 s (the baseline's 5,000 s) in at most 64 points.
        let span = (now - arm.started).num_seconds();
        assert!((h.step() as u64).is_power_of_two() && h.step() >= span / HISTORY_POINTS as i64, "{}", h.step());
        // The first point: the arm's start, nothing counted before it; the last: the bucket of
        // its last event.
        assert!(points[0].at <= arm.started && points[0].outcomes_n == 0, "{:?}", points[0]);
        assert!(points.last().unwrap().at > now - chrono::Duration::seconds(h.step()), "{:?}", points.last());
        for w in points.windows(2) {
            assert!(w[0].at < w[1].at && w[0].outcomes_n <= w[1].outcomes_n, "{w:?}");
        }
        // Each point holds exactly the events recorded before it.
        for p in points {
            let (c, c_bad, b) = counts(before(p.at));
            assert_eq!(p.at.timestamp() % h.step(), 0);
            assert_eq!(p.outcomes_n, if is_canary { c } else { b }, "{p:?}");
            if is_canary {
                assert_eq!(p.errors, c_bad);
            }
            assert_eq!(p.latency_n, p.outcomes_n);
        }
    }
    assert!(canary.history.step() > baseline.history.step(), "the longer arm's step is coarser");
    let p = |_: (u64, u64), _: (u64, u64)| Some(0.5);
    let scale = Scale { measure: Measure::Errors, alpha: Some(0.0375), dispersion: None, max_ratio: None, p_value: &p };
    let series = Series::pair(&canary, &baseline, now, &scale);
    let points = &series.points;
    assert!(points.len() <= SERIES_POINTS && points.len() > 10, "{}", points.len());
    assert_eq!(series.step_seconds, canary.history.step());
    let (first, last) = (points[0], points[points.len() - 1]);
    // From the comparison's start (the baseline's first event) to the decision.
    assert!(first.at <= baseline.started && first.baseline.n == 0, "{first:?}");
    assert!(first.at > baseline.started - chrono::Duration::seconds(series.step_seconds), "{first:?}");
    assert_eq!((last.at, last.canary.n, last.baseline.n), (now, N / 10, counts(N).2));
    assert_eq!((last.canary.bad, last.p_value), (Some(N / 100), Some(0.5)));
    for w in points.windows(2) {
        assert!(w[0].at < w[1].at, "{w:?}");
    }
    // Both counts are exact at each point, though the arms' steps differ.
    for p in &points[..points.len() - 1] {
        let (c, c_bad, b) = counts(before(p.at));
        assert_eq!(p.at.timestamp() % series.step_seconds, 0);
        assert_eq!((p.canary.n, p.canary.bad, p.baseline.n), (c, Some(c_bad), b), "{p:?}");
    }
    // Serialised as the evidence carries it, and read back.
    let json = serde_json::to_value(&series).unwrap();
    assert_eq!(json["measure"], "errors");
    assert!(json["points"][0]["at"].is_string() && json["points"][1]["canary"]["bad"].is_u64(), "{json}");
    assert!(json["points"][1]["canary"].get("p95").is_none());
    assert_eq!(serde_json::from_value::<Series>(json).unwrap(), series);
}

#[test]
fn sparse_events_thin_until_the_history_fits_and_a_restored_history_goes_on() {
    let mut arm = Arm::new(t0());
    // One event every 2 s: halving a step of 1 s drops nothing, the next halving does.
    for i in 0..1000i64 {
        let at = t0() + chrono::Duration::seconds(2 * i);
        arm.observe(at, at, outcome(true));
        assert!(arm.history.points().len() <= HISTORY_POINTS);
    }
    let restored: Arm = serde_json::from_value(serde_json::to_value(&arm).unwrap()).unwrap();
    assert_eq!(restored, arm);
    // An arm from an older snapshot: no history, counts already; its series starts where the
    // history does, not at zero.
    let mut old = arm.clone();
    old.history = History::default();
    let later = t0() + chrono::Duration::seconds(3000);
    old.observe(later, later, outcome(false));
    let p = |_: (u64, u64), _: (u64, u64)| None;
    let scale = Scale { measure: Measure::Errors, alpha: None, dispersion: None, max_ratio: None, p_value: &p };
    let series = Series::pair(&old, &arm, later + chrono::Duration::seconds(1), &scale);
    // Nothing before its start, then nothing until its history starts: no count it cannot know.
    assert!(series.points.len() >= 2, "{series:?}");
    assert!(series.points.iter().all(|p| (p.at <= t0() && p.canary.n == 0) || p.canary.n >= 1000), "{series:?}");
}

#[test]
fn a_series_of_one_point_or_of_arms_without_samples_is_well_formed() {
    let (mut canary, mut baseline) = (Arm::new(t0()), Arm::new(t0()));
    canary.observe(t0(), t0(), outcome(false));
    baseline.observe(t0(), t0(), Observation::Satisfaction { satisfied: true });
    let p = |_: (u64, u64), _: (u64, u64)| None;
    let scale = Scale { measure: Measure::Latency, alpha: None, dispersion: None, max_ratio: Some(1.5), p_value: &p };
    let series = Series::pair(&canary, &baseline, t0(), &scale);
    assert_eq!(series.points.len(), 1, "{series:?}");
    let only = series.points[0];
    assert_eq!((only.canary.n, only.canary.p95.is_some(), only.baseline.n, only.baseline.p95), (1, true, 0, None));
    assert_eq!(spread(&[1, 2, 3, 4, 5], 3), vec![1, 3, 5]);
    assert_eq!(spread(&[1, 2], 3), vec![1, 2]);
    assert!(spread::<u8>(&[], 3).is_empty());
}
