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

/// `negative` of `n` answers, spread evenly (runs would be read as dispersion).
fn satisfaction(n: u64, negative: u64) -> Tally {
    tally((0..n).map(|i| sat((i + 1) * negative / n == i * negative / n)))
}

/// `errors` of `n` outcomes, spread evenly.
fn outcomes(n: u64, errors: u64) -> Tally {
    tally((0..n).map(|i| outcome((i + 1) * errors / n == i * errors / n, 0.05)))
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
        if let Some(n) =
            first_action(&mut rng, 0.1, (0.10, 0.05), 100_000, |c, b| Test::ErrorRatio.compare(c, b, &s, 1.5).acts())
        {
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
