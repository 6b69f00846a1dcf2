//! Windowed arms: buckets, rolling counts, latency quantiles, and the comparisons' verdicts.

use super::*;
use crate::feedback::testing::Rng;
use chrono::{TimeDelta, TimeZone};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 20, 0, 0).unwrap()
}

fn ms(n: i64) -> TimeDelta {
    TimeDelta::milliseconds(n)
}

fn five_minutes() -> ArmWindow {
    ArmWindow::new(Duration::from_secs(300), Duration::from_secs(5))
}

fn sat(satisfied: bool) -> Observation {
    Observation::Satisfaction { satisfied }
}

fn arm(satisfaction_n: u64, negative: u64) -> ArmSummary {
    ArmSummary { satisfaction_n, negative, ..ArmSummary::default() }
}

fn outcomes(outcomes_n: u64, errors: u64) -> ArmSummary {
    ArmSummary { outcomes_n, errors, ..ArmSummary::default() }
}

fn exact_nearest_rank(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

// ---- windows ----

#[test]
fn a_five_minute_window_in_five_second_buckets_has_61_slots() {
    let w = five_minutes();
    assert_eq!(w.bucket_capacity(), 61);
    assert_eq!(w.bucket_width(), Duration::from_secs(5));
    assert_eq!(w.effective_window(), Duration::from_secs(300));
    assert_eq!(w.summary(t0()), ArmSummary::default());
}

#[test]
fn a_shorter_view_of_the_same_ring_forgets_sooner() {
    let mut w = five_minutes();
    w.record(t0(), t0(), sat(false));
    w.record(t0() + ms(60_000), t0() + ms(60_000), sat(true));
    let now = t0() + ms(90_000);
    assert_eq!(w.summary_within(now, Duration::from_secs(60)), arm(1, 0));
    assert_eq!(w.summary_within(now, Duration::from_secs(120)), arm(2, 1));
    assert_eq!(w.summary_within(now, Duration::from_secs(3600)), w.summary(now));
}

#[test]
fn windows_forget_old_events() {
    let mut w = five_minutes();
    for i in 0..10 {
        assert_eq!(w.record(t0(), t0(), sat(i % 2 == 0)), Intake::Counted);
    }
    assert_eq!(w.summary(t0()), arm(10, 5));
    // Still there at 299.999 s (its bucket is the window's oldest), gone at 300 s.
    assert_eq!(w.summary(t0() + ms(294_000)), arm(10, 5));
    assert_eq!(w.summary(t0() + ms(299_999)), arm(10, 5));
    assert_eq!(w.summary(t0() + ms(300_000)), ArmSummary::default());
    assert_eq!(w.summary(t0() + TimeDelta::hours(5)), ArmSummary::default());
    // An event that old is not even taken in; a younger one reuses the ring.
    let later = t0() + ms(300_000);
    assert_eq!(w.record(later, t0(), sat(false)), Intake::Dropped);
    assert_eq!(w.record(later, t0() + ms(5_000), sat(false)), Intake::Counted);
    assert_eq!(w.record(later, later, sat(true)), Intake::Counted);
    assert_eq!(w.summary(later), arm(2, 1));
    // A summary asked for the past still sees only its own window (and the next bucket).
    assert_eq!(w.summary(t0() - ms(5_000)), arm(10, 5));
    assert_eq!(w.summary(t0()), arm(11, 6));
}

#[test]
fn events_more_than_a_bucket_ahead_are_clamped_to_now() {
    let mut w = five_minutes();
    let now = t0() + ms(2_000);
    // 4 s ahead, in the next bucket: clock skew, kept as stamped and already counted.
    assert_eq!(w.record(now, t0() + ms(6_000), sat(false)), Intake::Counted);
    // 10 minutes ahead: counted now, not in ten minutes.
    assert_eq!(w.record(now, now + TimeDelta::minutes(10), sat(false)), Intake::Clamped);
    assert_eq!(w.summary(now), arm(2, 2));
    assert_eq!(w.summary(now + TimeDelta::minutes(10)), ArmSummary::default());
}

#[test]
fn a_clock_that_goes_backwards_does_not_overwrite_newer_buckets() {
    let mut w = five_minutes();
    // 305 s = 61 buckets later: the same ring slot.
    let later = t0() + ms(305_000);
    assert_eq!(w.record(later, later, sat(false)), Intake::Counted);
    assert_eq!(w.record(t0(), t0(), sat(true)), Intake::Dropped);
    assert_eq!(w.summary(later), arm(1, 1));
}

#[test]
fn memory_stays_bounded_after_a_million_events() {
    let mut w = five_minutes();
    let total: i64 = 1_000_000;
    // One event every 7.2 ms: two hours, 24 windows' worth.
    let at = |i: i64| t0() + ms(i * 72 / 10);
    for i in 0..total {
        let observation = match i % 3 {
            0 => sat(i % 10 != 0),
            1 => Observation::Score { value: (i % 100) as f64 / 100.0 },
            _ => Observation::Outcome { success: i % 50 != 2, latency_seconds: Some(0.010 + (i % 7) as f64 * 0.01) },
        };
        assert_eq!(w.record(at(i), at(i), observation), Intake::Counted);
    }
    assert_eq!(w.slots.len(), 61);
    assert_eq!(w.bucket_capacity(), 61);
    assert!(w.slots.iter().flatten().count() <= 61);
    assert!(w.slots.iter().flatten().all(|b| b.latency.is_some()));

    let end = at(total - 1);
    let s = w.summary(end);
    let seen = s.satisfaction_n + s.scores_n + s.outcomes_n;
    let younger_than = |age_ms: i64| (0..total).filter(|&i| (end - at(i)) < ms(age_ms)).count() as u64;
    assert!(younger_than(295_000) <= seen && seen <= younger_than(300_000), "{seen} events in the window");
    assert!(seen < 45_000);
    assert_eq!(s.latency_n, s.outcomes_n);
    assert!(s.score_mean.is_some_and(|m| (m - 0.495).abs() < 0.01));
}

#[test]
fn odd_durations_and_extreme_times_do_not_panic() {
    let mut w = ArmWindow::new(Duration::ZERO, Duration::ZERO);
    assert_eq!(w.bucket_capacity(), 2);
    assert_eq!(w.bucket_width(), Duration::from_millis(1));
    assert_eq!(w.record(t0(), t0(), sat(false)), Intake::Counted);
    assert_eq!(w.summary(t0()), arm(1, 1));

    let w = ArmWindow::new(Duration::from_secs(3600), Duration::from_millis(1));
    assert_eq!(w.bucket_capacity(), MAX_BUCKETS + 1);
    assert_eq!(w.bucket_width(), Duration::from_millis(360));

    let w = ArmWindow::new(Duration::from_secs(7), Duration::from_secs(5));
    assert_eq!(w.effective_window(), Duration::from_secs(10));
    let w = ArmWindow::new(Duration::from_secs(1), Duration::from_secs(5));
    assert_eq!(w.bucket_capacity(), 2);

    let mut w = ArmWindow::new(Duration::MAX, Duration::MAX);
    assert_eq!(w.bucket_capacity(), 2);
    let mut w2 = ArmWindow::new(Duration::MAX, Duration::ZERO);
    assert_eq!(w2.bucket_capacity(), MAX_BUCKETS + 1);
    let (min, max) = (DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC);
    for w in [&mut w, &mut w2] {
        w.record(max, min, sat(false));
        w.record(min, max, sat(false));
        w.record(min, min, sat(false));
        w.record(max, max, sat(false));
        let _ = (w.summary(min), w.summary(max));
    }
    let mut w = five_minutes();
    assert_eq!(w.record(max, min, sat(false)), Intake::Dropped);
    assert_eq!(w.record(min, max, sat(false)), Intake::Clamped);
    assert_eq!(w.summary(min), arm(1, 1));
}

#[test]
fn scores_ignore_non_finite_values_and_never_overflow() {
    let mut w = five_minutes();
    for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert_eq!(w.record(t0(), t0(), Observation::Score { value: v }), Intake::Ignored);
    }
    assert_eq!(w.summary(t0()).score_mean, None);
    w.record(t0(), t0(), Observation::Score { value: 0.2 });
    w.record(t0(), t0() + ms(10_000), Observation::Score { value: 0.4 });
    w.record(t0(), t0() + ms(20_000), Observation::Score { value: 0.6 });
    let s = w.summary(t0() + ms(20_000));
    assert_eq!(s.scores_n, 3);
    assert!((s.score_mean.unwrap() - 0.4).abs() < 1e-15);

    let mut w = five_minutes();
    for v in [f64::MAX, f64::MAX, -f64::MAX, f64::MAX] {
        w.record(t0(), t0(), Observation::Score { value: v });
    }
    w.record(t0(), t0() + ms(5_000), Observation::Score { value: f64::MAX });
    let mean = w.summary(t0() + ms(5_000)).score_mean.unwrap();
    assert!(mean.is_finite() && (mean / f64::MAX - 0.6).abs() < 1e-12, "{mean}");
}

#[test]
fn outcomes_count_errors_and_skip_unusable_latencies() {
    let mut w = five_minutes();
    let outcome = |success, latency_seconds| Observation::Outcome { success, latency_seconds };
    w.record(t0(), t0(), outcome(true, Some(0.1)));
    w.record(t0(), t0(), outcome(false, None));
    w.record(t0(), t0(), outcome(false, Some(-1.0)));
    w.record(t0(), t0(), outcome(true, Some(f64::NAN)));
    w.record(t0(), t0(), outcome(true, Some(f64::INFINITY)));
    let s = w.summary(t0());
    assert_eq!((s.outcomes_n, s.errors, s.latency_n), (5, 2, 1));
    assert!((s.latency_p95.unwrap() / 0.1 - 1.0).abs() <= LATENCY_RELATIVE_ERROR);
}

// ---- latency percentiles ----

#[test]
fn the_documented_error_bound_is_that_of_the_bins() {
    assert!((LATENCY_RELATIVE_ERROR - (LATENCY_GROWTH.sqrt() - 1.0)).abs() < 1e-15);
    assert!((latency_max_seconds() - 101.979_975_699_614).abs() < 1e-9);
    assert_eq!(latency_bin(0.0), 0);
    assert_eq!(latency_bin(0.000_999), 0);
    assert_eq!(latency_bin(0.001), 1);
    assert_eq!(latency_bin(101.0), LATENCY_BINS - 2);
    assert_eq!(latency_bin(102.0), LATENCY_BINS - 1);
    assert_eq!(latency_bin(f64::MAX), LATENCY_BINS - 1);
}

#[test]
fn a_single_latency_anywhere_in_range_reads_back_within_the_bound() {
    // Every bin edge, just below it, and points in between, from 1 ms to 101.9 s.
    let mut worst: f64 = 0.0;
    let mut v = LATENCY_MIN_SECONDS;
    while v < latency_max_seconds() * 0.9999 {
        for x in [v, v * (1.0 - 1e-12), v * 1.03, v * 1.07] {
            if !(LATENCY_MIN_SECONDS..latency_max_seconds()).contains(&x) {
                continue;
            }
            let mut w = five_minutes();
            w.record(t0(), t0(), Observation::Outcome { success: true, latency_seconds: Some(x) });
            let p95 = w.summary(t0()).latency_p95.unwrap();
            worst = worst.max((p95 / x - 1.0).abs());
        }
        v *= LATENCY_GROWTH;
    }
    assert!(worst <= LATENCY_RELATIVE_ERROR + 1e-12, "worst relative error {worst}");
    assert!(worst > 0.045, "the bound is tight: {worst}");
}

#[test]
fn latencies_outside_the_histogram_read_as_its_edges() {
    let mut w = five_minutes();
    w.record(t0(), t0(), Observation::Outcome { success: true, latency_seconds: Some(0.0001) });
    assert_eq!(w.summary(t0()).latency_p95, Some(LATENCY_MIN_SECONDS));
    let mut w = five_minutes();
    w.record(t0(), t0(), Observation::Outcome { success: true, latency_seconds: Some(500.0) });
    assert_eq!(w.summary(t0()).latency_p95, Some(latency_max_seconds()));
}

#[test]
fn percentile_accuracy_is_within_the_documented_bound() {
    let mut rng = Rng(42);
    type Draw = Box<dyn Fn(&mut Rng) -> f64>;
    let distributions: [(&str, Draw); 3] = [
        ("log-uniform 1 ms .. 100 s", Box::new(|r: &mut Rng| 1e-3 * 10f64.powf(5.0 * r.uniform()))),
        (
            "log-normal around 50 ms",
            Box::new(|r: &mut Rng| 0.05 * (2.0 * (r.uniform() + r.uniform() + r.uniform() - 1.5)).exp()),
        ),
        (
            "bimodal: 90% ~20 ms, 10% ~2 s",
            Box::new(|r: &mut Rng| if r.uniform() < 0.9 { 0.015 + 0.01 * r.uniform() } else { 1.5 + r.uniform() }),
        ),
    ];
    let mut worst: f64 = 0.0;
    for (name, draw) in &distributions {
        let mut w = five_minutes();
        let mut samples = Vec::new();
        // 20,000 latencies spread over the 60 buckets of the window.
        for i in 0..20_000i64 {
            let x = draw(&mut rng);
            samples.push(x);
            let at = t0() + ms((i % 60) * 5_000);
            w.record(t0() + ms(299_000), at, Observation::Outcome { success: true, latency_seconds: Some(x) });
        }
        samples.sort_by(f64::total_cmp);
        let s = w.summary(t0() + ms(299_000));
        assert_eq!(s.latency_n, 20_000);
        let exact = exact_nearest_rank(&samples, 0.95);
        let err = (s.latency_p95.unwrap() / exact - 1.0).abs();
        assert!(err <= LATENCY_RELATIVE_ERROR, "{name}: p95 {} vs exact {exact}", s.latency_p95.unwrap());
        worst = worst.max(err);
        // The same bound for other quantiles of the merged histogram.
        let mut hist = [0u64; LATENCY_BINS];
        for x in &samples {
            hist[latency_bin(*x)] += 1;
        }
        for q in [0.01, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0] {
            let est = latency_quantile(&hist, samples.len() as u64, q).unwrap();
            let exact = exact_nearest_rank(&samples, q);
            assert!((est / exact - 1.0).abs() <= LATENCY_RELATIVE_ERROR, "{name} q={q}: {est} vs {exact}");
        }
    }
    assert!(worst > 0.0);
    assert_eq!(latency_quantile(&[0; LATENCY_BINS], 0, 0.95), None);
    assert_eq!(latency_quantile(&[1; LATENCY_BINS], LATENCY_BINS as u64, f64::NAN), None);
}

// ---- negative feedback ----

#[test]
fn negative_feedback_acts_on_a_clearly_worse_canary() {
    // 30% of the canary's users unhappy against 10% of the baseline's.
    let v = negative_feedback(&arm(200, 60), &arm(200, 20), 50, 0.05, 0.05);
    assert!(v.is_act(), "{v:?}");
    let d = &v.evidence().detail;
    assert_eq!(v.evidence().test, "negative_feedback");
    assert!((d["z"].as_f64().unwrap() - 5.0).abs() < 1e-9);
    assert!((d["p_value"].as_f64().unwrap() - 2.8665157e-7).abs() < 1e-13);
    assert!((d["effect"].as_f64().unwrap() - 0.2).abs() < 1e-12);
    assert_eq!(d["canary"]["rate"], json!(0.3));
    assert_eq!(d["baseline"]["negative"], json!(20));
    let (lo, hi) = wilson_interval(60, 200, 1.96).unwrap();
    assert_eq!(d["canary"]["wilson95"], json!([lo, hi]));
    assert!(d["baseline"]["wilson95"][1].as_f64().unwrap() < lo, "the intervals do not overlap");
}

#[test]
fn negative_feedback_holds_with_too_few_samples() {
    // Significant and large, but only 12 canary samples.
    let v = negative_feedback(&arm(12, 8), &arm(200, 20), 50, 0.05, 0.05);
    assert_eq!(v.reason(), Some("only 12 canary samples, need 50"));
    // Every failed condition is listed.
    let v = negative_feedback(&arm(200, 60), &arm(3, 0), 50, 0.05, 0.05);
    assert_eq!(v.reason(), Some("only 3 baseline samples, need 50; p = 0.129 >= 0.05 (z = 1.13)"));
    let v = negative_feedback(&arm(0, 0), &arm(0, 0), 0, 0.05, 0.05);
    assert_eq!(v.reason(), Some("only 0 canary samples, need 1; only 0 baseline samples, need 1"));
    assert_eq!(v.evidence().detail["p_value"], Value::Null);
}

#[test]
fn negative_feedback_holds_when_not_significant() {
    // 12% against 8%: z = 0.667, one-sided p = 0.2525.
    let v = negative_feedback(&arm(50, 6), &arm(50, 4), 50, 0.05, 0.0);
    assert_eq!(v.reason(), Some("p = 0.252 >= 0.05 (z = 0.667)"));
    assert!((v.evidence().detail["p_value"].as_f64().unwrap() - 0.25249254).abs() < 1e-8);
    // A canary better than its baseline is never significant (one-sided).
    let v = negative_feedback(&arm(200, 20), &arm(200, 60), 50, 0.05, 0.0);
    assert!(
        v.reason().unwrap().starts_with("effect -0.2 < min_effect 0 (negative ratio: canary 0.1, baseline 0.3); p = 1")
    );
}

#[test]
fn a_small_effect_that_is_significant_still_holds_under_min_effect() {
    // 11% against 10% over 100,000 each: p = 1.5e-13, but one point is not five.
    let (canary, baseline) = (arm(100_000, 11_000), arm(100_000, 10_000));
    let v = negative_feedback(&canary, &baseline, 50, 0.05, 0.05);
    assert_eq!(v.reason(), Some("effect 0.01 < min_effect 0.05 (negative ratio: canary 0.11, baseline 0.1)"));
    assert!(v.evidence().detail["p_value"].as_f64().unwrap() < 1e-12);
    assert!(negative_feedback(&canary, &baseline, 50, 0.05, 0.01).is_act(), "an effect equal to min_effect acts");
    assert!(negative_feedback(&canary, &baseline, 50, 0.05, 0.005).is_act());
}

#[test]
fn negative_feedback_holds_without_variance_or_with_bad_parameters() {
    let v = negative_feedback(&arm(100, 0), &arm(100, 0), 50, 0.05, 0.0);
    assert_eq!(v.reason(), Some("no variance: none of both arms' satisfaction events are negative"));
    let v = negative_feedback(&arm(100, 100), &arm(100, 100), 50, 0.05, 0.0);
    assert_eq!(v.reason(), Some("no variance: all of both arms' satisfaction events are negative"));
    let v = negative_feedback(&arm(200, 60), &arm(200, 20), 50, f64::NAN, 0.05);
    assert!(v.reason().unwrap().starts_with("invalid p_threshold NaN"), "{v:?}");
    let v = negative_feedback(&arm(200, 60), &arm(200, 20), 50, 0.05, -0.1);
    assert_eq!(v.reason(), Some("invalid min_effect -0.1: must be finite and >= 0"));
    let v = negative_feedback(&arm(10, 11), &arm(200, 20), 5, 0.05, 0.0);
    assert_eq!(v.reason(), Some("inconsistent canary counts: 11 negative of 10 samples"));
    let huge = arm(u64::MAX, u64::MAX / 2);
    let _ = negative_feedback(&huge, &huge, u64::MAX, 0.05, 0.0);
}

#[test]
fn negative_feedback_from_windows_end_to_end() {
    let (mut canary, mut baseline) = (five_minutes(), five_minutes());
    let mut rng = Rng(7);
    let now = t0() + ms(299_000);
    for i in 0..2_000i64 {
        let at = t0() + ms(i * 149);
        canary.record(now, at, sat(rng.uniform() >= 0.25));
        baseline.record(now, at, sat(rng.uniform() >= 0.10));
    }
    let v = negative_feedback(&canary.summary(now), &baseline.summary(now), 50, 0.01, 0.05);
    assert!(v.is_act(), "{v:?}");
    // Five minutes later the evidence is gone.
    let later = now + TimeDelta::minutes(5);
    let v = negative_feedback(&canary.summary(later), &baseline.summary(later), 50, 0.01, 0.05);
    assert_eq!(v.reason(), Some("only 0 canary samples, need 50; only 0 baseline samples, need 50"));
}

// ---- mean score ----

#[test]
fn a_low_mean_score_acts_at_once() {
    let mut w = five_minutes();
    w.record(t0(), t0(), Observation::Score { value: 0.2 });
    let v = mean_score_below(&w.summary(t0()), 0.3, 1);
    assert!(v.is_act(), "{v:?}");
    assert_eq!(v.evidence().baseline, None);
    assert_eq!(v.evidence().detail["mean"], json!(0.2));
}

#[test]
fn mean_score_holds_above_the_threshold_or_without_scores() {
    let s = ArmSummary { scores_n: 40, score_mean: Some(0.45), ..ArmSummary::default() };
    assert_eq!(mean_score_below(&s, 0.3, 1).reason(), Some("mean score 0.45 >= threshold 0.3"));
    assert_eq!(mean_score_below(&s, 0.45, 1).reason(), Some("mean score 0.45 >= threshold 0.45"));
    assert_eq!(mean_score_below(&s, 0.3, 100).reason(), Some("only 40 canary scores, need 100"));
    assert_eq!(mean_score_below(&ArmSummary::default(), 0.3, 0).reason(), Some("only 0 canary scores, need 1"));
    assert_eq!(mean_score_below(&s, f64::NAN, 1).reason(), Some("invalid threshold NaN: must be finite"));
    let s = ArmSummary { scores_n: 3, score_mean: None, ..ArmSummary::default() };
    assert_eq!(mean_score_below(&s, 0.3, 1).reason(), Some("no canary mean score"));
}

// ---- error ratio ----

#[test]
fn error_ratio_acts_on_a_clearly_worse_canary() {
    let v = error_ratio(&outcomes(500, 50), &outcomes(1000, 10), 2.0, 100);
    assert!(v.is_act(), "{v:?}");
    let d = &v.evidence().detail;
    assert!((d["ratio"].as_f64().unwrap() - 10.0).abs() < 1e-12);
    assert_eq!(d["baseline_floored"], json!(false));
    assert!(d["canary_wilson95"].is_array());
}

#[test]
fn error_ratio_holds_within_the_ratio_or_with_too_few_outcomes() {
    let v = error_ratio(&outcomes(1000, 15), &outcomes(1000, 10), 2.0, 100);
    assert_eq!(v.reason(), Some("canary error ratio 0.015 is 1.5x the baseline's 0.01, need > 2x"));
    let v = error_ratio(&outcomes(20, 10), &outcomes(1000, 10), 2.0, 100);
    assert_eq!(v.reason(), Some("only 20 canary outcomes, need 100"));
    let v = error_ratio(&outcomes(0, 0), &outcomes(0, 0), 2.0, 0);
    assert_eq!(v.reason(), Some("only 0 canary outcomes, need 1; only 0 baseline outcomes, need 1"));
    let v = error_ratio(&outcomes(1000, 0), &outcomes(1000, 0), 2.0, 100);
    assert!(v.reason().unwrap().starts_with("canary error ratio 0 is 0x the baseline's floor"));
    let v = error_ratio(&outcomes(1000, 50), &outcomes(1000, 10), f64::INFINITY, 100);
    assert_eq!(v.reason(), Some("invalid max_ratio inf: must be finite and >= 0"));
    let v = error_ratio(&outcomes(10, 50), &outcomes(1000, 10), 2.0, 1);
    assert_eq!(v.reason(), Some("inconsistent canary counts: 50 errors of 10 outcomes"));
}

#[test]
fn a_baseline_without_errors_is_floored_at_one_over_n_plus_one() {
    // 0 errors in 999: the reference is 1/1000, as if the next request failed.
    let baseline = outcomes(999, 0);
    let v = error_ratio(&outcomes(1000, 3), &baseline, 2.0, 100);
    assert!(v.is_act(), "{v:?}");
    let d = &v.evidence().detail;
    assert_eq!(d["baseline_floored"], json!(true));
    assert_eq!(d["baseline_rate"], json!(0.0));
    assert!((d["baseline_reference"].as_f64().unwrap() - 0.001).abs() < 1e-15);
    assert!((d["ratio"].as_f64().unwrap() - 3.0).abs() < 1e-12);
    let v = error_ratio(&outcomes(1000, 2), &baseline, 2.0, 100);
    assert_eq!(
        v.reason(),
        Some("canary error ratio 0.002 is 2x the baseline's floor 0.001 (0 errors in 999: 1/(n+1)), need > 2x")
    );
    // A single canary error no longer is an infinite ratio.
    assert!(!error_ratio(&outcomes(1000, 1), &baseline, 2.0, 100).is_act());
    // Monotone: 0 errors never compare as worse than 1.
    for n in [1u64, 10, 100, 10_000] {
        let zero = error_ratio(&outcomes(n, 1), &outcomes(n, 0), 1.0, 1);
        let one = error_ratio(&outcomes(n, 1), &outcomes(n, 1), 1.0, 1);
        let r0 = zero.evidence().detail["baseline_reference"].as_f64().unwrap();
        let r1 = one.evidence().detail["baseline_reference"].as_f64().unwrap();
        assert!(r0 < r1, "n = {n}: {r0} >= {r1}");
    }
}

// ---- latency ----

fn latencies(seconds: &[f64]) -> ArmSummary {
    let mut w = five_minutes();
    for (i, s) in seconds.iter().enumerate() {
        let at = t0() + ms(i as i64 % 60 * 5_000);
        w.record(t0() + ms(299_000), at, Observation::Outcome { success: true, latency_seconds: Some(*s) });
    }
    w.summary(t0() + ms(299_000))
}

#[test]
fn latency_p95_acts_on_a_clearly_slower_canary() {
    let fast: Vec<f64> = (0..200).map(|i| 0.050 + 0.0005 * i as f64).collect(); // p95 = 0.1445
    let slow: Vec<f64> = fast.iter().map(|x| x * 4.0).collect();
    let v = latency_p95(&latencies(&slow), &latencies(&fast), 1.5, 100);
    assert!(v.is_act(), "{v:?}");
    let ratio = v.evidence().detail["ratio"].as_f64().unwrap();
    assert!((ratio / 4.0 - 1.0).abs() < 0.11, "{ratio}");
    let c = v.evidence().canary.latency_p95.unwrap();
    assert!((c / (0.1445 * 4.0) - 1.0).abs() <= LATENCY_RELATIVE_ERROR, "{c}");
}

#[test]
fn latency_p95_holds_within_the_ratio_or_with_too_few_latencies() {
    let base: Vec<f64> = (0..200).map(|i| 0.050 + 0.0005 * i as f64).collect();
    let a_bit_slower: Vec<f64> = base.iter().map(|x| x * 1.15).collect();
    let v = latency_p95(&latencies(&a_bit_slower), &latencies(&base), 1.5, 100);
    assert!(v.reason().unwrap().starts_with("canary p95 0.16"), "{v:?}");
    assert!(v.reason().unwrap().ends_with("need > 1.5x"), "{v:?}");
    let v = latency_p95(&latencies(&[1.0, 2.0, 3.0]), &latencies(&base), 1.5, 20);
    assert_eq!(v.reason(), Some("only 3 canary latencies, need 20"));
    let v = latency_p95(&ArmSummary::default(), &ArmSummary::default(), 1.5, 0);
    assert_eq!(v.reason(), Some("only 0 canary latencies, need 1; only 0 baseline latencies, need 1"));
    // A hand-made summary with a zero baseline p95 is floored at 1 ms, not divided by.
    let zero = ArmSummary { latency_n: 100, latency_p95: Some(0.0), ..ArmSummary::default() };
    let canary = ArmSummary { latency_n: 100, latency_p95: Some(0.0012), ..ArmSummary::default() };
    let v = latency_p95(&canary, &zero, 1.5, 10);
    assert!(v.reason().unwrap().contains("is 1.2x the baseline's 0.001s"), "{v:?}");
}

// ---- evidence ----

#[test]
fn evidence_serializes_for_the_audit_record() {
    let v = negative_feedback(&arm(200, 60), &arm(200, 20), 50, 0.05, 0.05);
    let json = serde_json::to_value(v.evidence()).unwrap();
    assert_eq!(json["test"], "negative_feedback");
    assert_eq!(json["canary"]["satisfaction_n"], 200);
    assert_eq!(json["canary"]["latency_p95"], Value::Null);
    assert_eq!(json["baseline"]["negative"], 20);
    assert!(json["detail"]["p_value"].is_f64());
    let v = mean_score_below(&ArmSummary::default(), 0.3, 1);
    let json = serde_json::to_value(v.evidence()).unwrap();
    assert_eq!(json["baseline"], Value::Null);
}

#[test]
fn numbers_in_reasons_have_three_significant_digits() {
    assert_eq!(num(0.252_492_54), "0.252");
    assert_eq!(num(0.05), "0.05");
    assert_eq!(num(12.0), "12");
    assert_eq!(num(2.540_002_54), "2.54");
    assert_eq!(num(1234.6), "1235");
    assert_eq!(num(1.5e-13), "1.50e-13");
    assert_eq!(num(0.999_95), "1");
    assert_eq!(num(-0.2), "-0.2");
    assert_eq!(num(0.0), "0");
    assert_eq!(num(f64::NAN), "NaN");
}
