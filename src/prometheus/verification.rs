//! Did traffic really move? After an applied action, a rule's `verify:` query (PromQL for the
//! canary's share of traffic) is polled until the share is at most `max_share`, or the deadline
//! passes. Writing a VirtualService is not traffic moving: a typo in a host, a second
//! VirtualService on the same host or a stuck sidecar leaves users on the bad version while the
//! object looks right.
//!
//! This module is the pure part: the settings, validated once, and [`judge`], which turns one
//! answer into the next step. The polling, the records (`verified`, `unverified`) and the
//! restart of pending verifications are in the pipeline.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::template::Template;

/// A rule's `verify:`.
#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    /// PromQL for the canary's share of traffic (0..1), templated like the rule's target.
    pub query: Template,
    pub limits: Limits,
}

/// When a verification ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Verified when the share is at most this (default 0.01: 1% of the route).
    pub max_share: f64,
    /// Unverified when still above it after this long (default 2 minutes).
    pub deadline: Duration,
    /// Time between queries (default 10 s).
    pub interval: Duration,
    /// A promotion's step: verified when the share is *at least* this (traffic moved up), and
    /// `max_share` is not used. None for a rollback.
    pub min_share: Option<f64>,
}

pub const DEFAULT_MAX_SHARE: f64 = 0.01;
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(120);
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// One answer from Prometheus: a share, no data (no series: nothing flows, or not yet
/// scraped), or an error.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Share(f64),
    NoData,
    Error(String),
}

/// What to do after an answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Step {
    /// The share is at most `max_share`: traffic moved.
    Verified { share: f64, after_seconds: f64 },
    /// Not yet: ask again after `interval`.
    Wait { last: Option<f64>, why: String },
    /// The deadline passed and the share was never low enough (or never known).
    Unverified { last: Option<f64>, after_seconds: f64, why: String },
}

/// Judge one answer, `started` being when the action was applied.
///
/// No data does not verify: a share that cannot be measured is not proof that traffic moved
/// (the query may be wrong, or the canary's metrics gone with its pods while users still reach
/// it some other way). A rule whose canary stops reporting at 0% should write its query so that
/// 0 is returned, e.g. `... or vector(0)`.
pub fn judge(v: &Limits, answer: &Answer, last: Option<f64>, started: DateTime<Utc>, now: DateTime<Utc>) -> Step {
    let waited = (now - started).to_std().unwrap_or_default();
    let after_seconds = waited.as_secs_f64();
    let (last, why) = match (answer, v.min_share) {
        (Answer::Share(share), Some(min)) if share.is_finite() && *share >= min => {
            return Step::Verified { share: *share, after_seconds };
        }
        (Answer::Share(share), None) if share.is_finite() && *share <= v.max_share => {
            return Step::Verified { share: *share, after_seconds };
        }
        (Answer::Share(share), Some(min)) => {
            (Some(*share), format!("canary share {share} is below {min} of the route (the step's midpoint)"))
        }
        (Answer::Share(share), None) => {
            (Some(*share), format!("canary share {share} is above {} of the route", v.max_share))
        }
        (Answer::NoData, _) => (last, "the verification query returned no data".to_string()),
        (Answer::Error(e), _) => (last, format!("Prometheus: {e}")),
    };
    if waited >= v.deadline {
        let why = format!(
            "traffic did not move within {}: {why}",
            humantime::format_duration(Duration::from_secs(v.deadline.as_secs()))
        );
        Step::Unverified { last, after_seconds, why }
    } else {
        Step::Wait { last, why }
    }
}

/// A verification as recorded: the query (or why it could not be rendered) and its limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default = "default_max_share")]
    pub max_share: f64,
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// For a step of a gradual rollback: the canary weight the step left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_weight: Option<u32>,
    /// For a promotion's step: the share the canary must reach (see [`Limits::min_share`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_share: Option<f64>,
}

impl VerifySpec {
    /// For a promotion's step from `from` to `to`: verified once the canary's share reaches the
    /// midpoint, so a share still at `from` (nothing moved) never verifies.
    pub fn for_promotion(mut self, from: u8, to: u8) -> VerifySpec {
        self.min_share = Some((f64::from(from) + f64::from(to)) / 200.0);
        self
    }
}

fn default_max_share() -> f64 {
    DEFAULT_MAX_SHARE
}
fn default_deadline_ms() -> u64 {
    120_000
}
fn default_interval_ms() -> u64 {
    10_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn v() -> Limits {
        Limits { max_share: DEFAULT_MAX_SHARE, deadline: DEFAULT_DEADLINE, interval: DEFAULT_INTERVAL, min_share: None }
    }

    /// A promotion's step from 20 to 50: verified at the midpoint or above, never at the old share.
    #[test]
    fn a_promotion_step_is_verified_when_the_share_moved_up_past_the_midpoint() {
        let spec = VerifySpec {
            query: None,
            error: None,
            max_share: DEFAULT_MAX_SHARE,
            deadline_ms: 1,
            interval_ms: 1,
            step_weight: None,
            min_share: None,
        }
        .for_promotion(20, 50);
        let up = Limits { min_share: spec.min_share, ..v() };
        assert_eq!(spec.min_share, Some(0.35));
        assert_eq!(
            judge(&up, &Answer::Share(0.49), None, t(0), t(20)),
            Step::Verified { share: 0.49, after_seconds: 20.0 }
        );
        match judge(&up, &Answer::Share(0.2), None, t(0), t(119)) {
            Step::Wait { why, .. } => assert!(why.contains("is below 0.35"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(judge(&up, &Answer::Share(0.2), None, t(0), t(120)), Step::Unverified { .. }));
    }

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 20, 0, 0).unwrap() + chrono::Duration::seconds(secs)
    }

    #[test]
    fn a_share_at_or_under_the_threshold_verifies_with_the_time_it_took() {
        assert_eq!(
            judge(&v(), &Answer::Share(0.01), Some(0.1), t(0), t(30)),
            Step::Verified { share: 0.01, after_seconds: 30.0 }
        );
        assert_eq!(
            judge(&v(), &Answer::Share(0.0), None, t(0), t(5)),
            Step::Verified { share: 0.0, after_seconds: 5.0 }
        );
    }

    #[test]
    fn a_share_still_high_waits_until_the_deadline_then_is_unverified() {
        let step = judge(&v(), &Answer::Share(0.1), None, t(0), t(119));
        assert_eq!(step, Step::Wait { last: Some(0.1), why: "canary share 0.1 is above 0.01 of the route".into() });
        match judge(&v(), &Answer::Share(0.1), None, t(0), t(120)) {
            Step::Unverified { last: Some(l), after_seconds, why } => {
                assert_eq!((l, after_seconds), (0.1, 120.0));
                assert!(why.starts_with("traffic did not move within 2m"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_data_and_errors_never_verify_and_keep_the_last_share_seen() {
        assert!(matches!(judge(&v(), &Answer::NoData, Some(0.2), t(0), t(10)), Step::Wait { last: Some(_), .. }));
        match judge(&v(), &Answer::Error("down".into()), Some(0.2), t(0), t(300)) {
            Step::Unverified { last, why, .. } => {
                assert_eq!(last, Some(0.2));
                assert!(why.ends_with("Prometheus: down"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(judge(&v(), &Answer::Share(f64::NAN), None, t(0), t(1)), Step::Wait { .. }));
    }
}
