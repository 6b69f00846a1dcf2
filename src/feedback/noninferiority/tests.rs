//! The non-inferiority test: its figures, what holds it, and seeded simulations of its level
//! (a canary worse by the margin, or worse still, is promoted in at most `alpha` of streams) and
//! of its power (a canary equal to its baseline is shown not worse).

use super::*;
use crate::feedback::testing::Rng;
use crate::feedback::window::{ArmSummary, Observation};

fn s() -> Sequential {
    Sequential { alpha: 0.05, min_samples: 100, tau: crate::feedback::sequential::DEFAULT_TAU }
}

fn outcomes(tally: &mut Tally, n: u64, errors: u64) {
    for i in 0..n {
        tally.add(Observation::Outcome { success: i >= errors, latency_seconds: None });
    }
}

#[test]
fn the_statistic_is_the_difference_from_the_margin_and_zero_counts_still_vary() {
    // 1% of 10,000 against 1% of 10,000, margin 1 point: 1 point inside it.
    let t = msprt_not_worse((100, 10_000), Some((100, 10_000)), (1.0, 0.01), 0.05, 1.0).unwrap();
    assert!((t.delta + 0.01).abs() < 1e-12, "{t:?}");
    assert!(t.p_value < 1e-3, "well inside the margin with 20,000 events: {t:?}");
    // No error in either arm: the adjusted rates still give a variance.
    let t = msprt_not_worse((0, 500), Some((0, 500)), (1.0, 0.01), 0.05, 1.0).unwrap();
    assert!(t.variance > 0.0 && t.delta < 0.0, "{t:?}");
    // A ratio margin: 1.2 × the baseline's 5% = 6%; the canary's 5.5% is 0.5 points inside.
    let t = msprt_not_worse((550, 10_000), Some((500, 10_000)), (1.2, 0.0), 0.05, 1.0).unwrap();
    assert!((t.delta + 0.005).abs() < 1e-12, "{t:?}");
    // Dispersion widens the variance and weakens the evidence.
    let runs = msprt_not_worse((550, 10_000), Some((500, 10_000)), (1.2, 0.0), 0.05, 3.0).unwrap();
    assert!(runs.variance > t.variance * 2.9 && runs.log_lambda < t.log_lambda, "{runs:?} {t:?}");
    assert_eq!(msprt_not_worse((0, 0), Some((0, 10)), (1.0, 0.0), 0.05, 1.0), None, "no canary samples");
    assert_eq!(msprt_not_worse((11, 10), None, (1.0, 0.05), 0.05, 1.0), None, "inconsistent");
}

#[test]
fn a_missing_or_short_signal_is_never_evidence() {
    let (mut canary, mut baseline) = (Tally::default(), Tally::default());
    outcomes(&mut baseline, 5_000, 50);
    let j = not_worse(Signal::ErrorRatio(Margin::Points(0.01)), &canary, &baseline, &s());
    assert!(!j.is_act());
    assert!(j.reason().unwrap().contains("only 0 canary samples, need 100"), "{j:?}");
    outcomes(&mut canary, 5_000, 50);
    let j = not_worse(Signal::ErrorRatio(Margin::Points(0.01)), &canary, &Tally::default(), &s());
    assert!(j.reason().unwrap().contains("only 0 baseline samples"), "{j:?}");
    // Outcomes without latencies are no evidence about latency.
    let j = not_worse(Signal::LatencyP95 { max_ratio: 1.1 }, &canary, &baseline, &s());
    assert!(j.reason().unwrap().contains("baseline latencies"), "{j:?}");
    assert!(j.reason().unwrap().contains("only 0 canary samples"), "{j:?}");
    // Satisfaction was never asked: no evidence about it either.
    let j = not_worse(Signal::NegativeRatio(Margin::Points(0.02)), &canary, &baseline, &s());
    assert!(!j.is_act());
}

#[test]
fn an_equal_canary_is_shown_not_worse_and_the_record_says_on_what() {
    let mut rng = Rng(7);
    let (mut canary, mut baseline) = (Tally::default(), Tally::default());
    for _ in 0..20_000 {
        for t in [&mut canary, &mut baseline] {
            let success = rng.uniform() >= 0.02;
            t.add(Observation::Outcome { success, latency_seconds: Some(0.1 * (0.3 * rng.normal()).exp()) });
        }
    }
    let j = not_worse(Signal::ErrorRatio(Margin::Points(0.01)), &canary, &baseline, &s());
    assert!(j.is_act(), "{j:?}");
    let d = &j.evidence().detail;
    assert_eq!(j.evidence().test, "error_ratio_not_worse");
    assert_eq!(d["margin"]["points"], 0.01);
    assert!(d["sequential"]["p_value"].as_f64().unwrap() <= 0.05, "{d}");
    assert_eq!(d["canary"]["n"], 20_000);
    let j = not_worse(Signal::LatencyP95 { max_ratio: 1.1 }, &canary, &baseline, &s());
    assert!(j.is_act(), "{j:?}");
    assert!(j.evidence().detail["cut_seconds"].as_f64().unwrap() > 0.1);
    // The same canary against a margin of nothing at all is never within it (equal is not below).
    let j = not_worse(Signal::ErrorRatio(Margin::Points(0.0)), &canary, &baseline, &s());
    assert!(!j.is_act(), "{j:?}");
}

#[test]
fn a_worse_canary_is_held_with_the_reason() {
    let (mut canary, mut baseline) = (Tally::default(), Tally::default());
    outcomes(&mut canary, 10_000, 600);
    outcomes(&mut baseline, 10_000, 200);
    let j = not_worse(Signal::ErrorRatio(Margin::Ratio(1.5)), &canary, &baseline, &s());
    assert!(j.reason().unwrap().contains("not within the margin"), "{j:?}");
    let bad = [Margin::Points(-0.1), Margin::Points(1.0), Margin::Ratio(0.9), Margin::Ratio(f64::NAN)];
    for margin in bad {
        let j = not_worse(Signal::ErrorRatio(margin), &canary, &baseline, &s());
        assert!(j.reason().unwrap().contains("invalid margin"), "{margin:?}: {j:?}");
    }
}

/// One stream of request outcomes, both arms alike in volume (a 50/50 split of `events`), judged
/// after every `every` events; the event count at which the evidence first holds, if it does.
fn first_promotion(seed: u64, events: u64, p: (f64, f64), signal: Signal, every: u64) -> Option<u64> {
    let mut rng = Rng(seed);
    let (mut canary, mut baseline) = (Tally::default(), Tally::default());
    for i in 1..=events {
        let to_canary = rng.uniform() < 0.5;
        let (t, fail) = if to_canary { (&mut canary, p.0) } else { (&mut baseline, p.1) };
        t.add(Observation::Outcome { success: rng.uniform() >= fail, latency_seconds: None });
        if i % every == 0 && not_worse(signal, &canary, &baseline, &s()).is_act() {
            return Some(i);
        }
    }
    None
}

#[test]
fn a_canary_worse_by_the_margin_is_promoted_in_at_most_alpha_of_streams_looked_at_every_ten_events() {
    // Baseline 2%, canary 3%: exactly the one-point margin (the boundary of H0), and 4%.
    const STREAMS: u64 = 60;
    for (canary, most) in [(0.03, 3), (0.04, 0)] {
        let promoted = (0..STREAMS)
            .filter(|seed| {
                first_promotion(1_000 + seed, 20_000, (canary, 0.02), Signal::ErrorRatio(Margin::Points(0.01)), 10)
                    .is_some()
            })
            .count();
        // alpha 0.05 of 60 is 3.
        assert!(promoted <= most, "canary at {canary}: promoted in {promoted} of {STREAMS}");
    }
}

#[test]
fn a_canary_equal_to_its_baseline_is_promoted_in_most_streams() {
    const STREAMS: u64 = 40;
    let mut at: Vec<u64> = (0..STREAMS)
        .filter_map(|seed| {
            first_promotion(5_000 + seed, 20_000, (0.02, 0.02), Signal::ErrorRatio(Margin::Points(0.01)), 10)
        })
        .collect();
    assert!(at.len() as u64 >= STREAMS * 9 / 10, "promoted in only {} of {STREAMS}", at.len());
    at.sort_unstable();
    let median = at[at.len() / 2];
    eprintln!("equal canaries (2% errors, margin 1 point): promoted after a median of {median} events");
    assert!(median < 10_000, "{median}");
}

#[test]
fn a_high_confidence_is_evidence_only_with_enough_scores_and_its_margin_above_the_threshold() {
    let summary = |n: u64, mean: f64| ArmSummary { scores_n: n, score_mean: Some(mean), ..ArmSummary::default() };
    // 0.9 over 400 scores: margin sqrt(ln 20 / 800) = 0.061, lower bound 0.839 > 0.8.
    let j = score_above(&summary(400, 0.9), 0.8, 100, 0.05);
    assert!(j.is_act(), "{j:?}");
    let lower = j.evidence().detail["lower_bound"].as_f64().unwrap();
    assert!((lower - (0.9 - ((20f64).ln() / 800.0).sqrt())).abs() < 1e-12, "{lower}");
    // The same mean over 100 scores: margin 0.122, lower bound 0.778: not yet.
    let j = score_above(&summary(100, 0.9), 0.8, 100, 0.05);
    assert!(j.reason().unwrap().contains("not above threshold"), "{j:?}");
    assert!(score_above(&summary(50, 0.99), 0.8, 100, 0.05).reason().unwrap().contains("only 50 canary scores"));
    assert!(!score_above(&ArmSummary::default(), 0.8, 1, 0.05).is_act(), "no scores: no evidence");
    assert!(score_above(&summary(400, 3.0), 0.8, 1, 0.05).reason().unwrap().contains("outside [0, 1]"));
    assert!(score_above(&summary(400, 0.9), 1.5, 1, 0.05).reason().unwrap().contains("invalid threshold"));
}
