//! The state feedback rules read: one arm per service version, and what identifies feedback
//! already counted.
//!
//! An arm (namespace, service, version) holds a cumulative [`Tally`] since it started (for the
//! sequential comparisons) and a sliding [`ArmWindow`] of [`SCORE_WINDOW`] (for mean scores).
//! It starts at its first event and ends when:
//! - it has had no event for [`ARM_IDLE`] (it is dropped: memory follows the active versions,
//!   not the event rate), or
//! - an action taken on feedback about it was applied (or found already done): the comparison
//!   that acted is over, and what comes next is a new one.
//!
//! Like the guards, this state is a fold over audit records (`received` feedback records and
//! the outcomes of actions taken on feedback), so it is rebuilt after a restart and saved in the
//! snapshot.
//!
//! Feedback already counted is recognised by its Kafka position (the highest offset counted per
//! topic and partition: a redelivery after a crash or rebalance is at or below it) and, for events
//! that carry an `id`, by that id for [`ARM_IDLE`] (at most [`MAX_IDS`] of them).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::sequential::Tally;
use super::window::{ArmWindow, Observation};
use crate::event::{Feedback, FeedbackKind};

/// An arm with no event for this long is dropped, and its comparisons start again.
pub const ARM_IDLE: Duration = Duration::from_secs(3600);
/// The longest `window` a mean-score rule can read.
pub const SCORE_WINDOW: Duration = Duration::from_secs(3600);
/// Buckets of the score window.
pub const SCORE_BUCKET: Duration = Duration::from_secs(10);
/// Feedback ids remembered at most.
pub const MAX_IDS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ArmKey {
    pub namespace: String,
    pub service: String,
    pub version: String,
}

impl ArmKey {
    pub fn new(namespace: &str, service: &str, version: &str) -> ArmKey {
        ArmKey { namespace: namespace.into(), service: service.into(), version: version.into() }
    }
}

impl std::fmt::Display for ArmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}@{}", self.namespace, self.service, self.version)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Arm {
    /// When its first event was counted (record time).
    pub started: DateTime<Utc>,
    /// When its last event was counted.
    pub last: DateTime<Utc>,
    pub tally: Tally,
    pub scores: ArmWindow,
}

/// Where a feedback event came from, as far as recognising a redelivery goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin<'a> {
    pub id: Option<&'a str>,
    /// Topic, partition, offset.
    pub kafka: Option<(&'a str, i32, i64)>,
}

impl<'a> Origin<'a> {
    /// From a feedback record's detail (`kafka: {topic, partition, offset}`) and the event.
    pub fn of(feedback: &'a Feedback, detail: &'a serde_json::Value) -> Origin<'a> {
        let k = &detail["kafka"];
        let kafka = match (k["topic"].as_str(), k["partition"].as_i64(), k["offset"].as_i64()) {
            (Some(t), Some(p), Some(o)) => i32::try_from(p).ok().map(|p| (t, p, o)),
            _ => None,
        };
        Origin { id: feedback.id.as_deref(), kafka }
    }
}

#[derive(Debug, Default)]
pub struct Arms {
    arms: HashMap<ArmKey, Arm>,
    offsets: HashMap<(String, i32), i64>,
    ids: HashSet<String>,
    id_order: VecDeque<(DateTime<Utc>, String)>,
}

/// [`Arms`] as saved in the snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmsSnapshot {
    arms: Vec<(ArmKey, Arm)>,
    offsets: Vec<(String, i32, i64)>,
    ids: Vec<(DateTime<Utc>, String)>,
}

fn observation(kind: &FeedbackKind) -> Observation {
    match *kind {
        FeedbackKind::Satisfaction { satisfied } => Observation::Satisfaction { satisfied },
        FeedbackKind::Score { score } => Observation::Score { value: score },
        FeedbackKind::Outcome { success, latency_ms } => {
            Observation::Outcome { success, latency_seconds: latency_ms.map(|ms| ms / 1000.0) }
        }
    }
}

impl Arms {
    /// Whether this event was counted already.
    pub fn seen(&self, origin: &Origin<'_>) -> bool {
        let by_offset =
            origin.kafka.is_some_and(|(t, p, o)| self.offsets.get(&(t.to_string(), p)).is_some_and(|high| o <= *high));
        by_offset || origin.id.is_some_and(|id| self.ids.contains(id))
    }

    /// Count an event recorded at `now`.
    pub fn observe(&mut self, now: DateTime<Utc>, feedback: &Feedback, origin: &Origin<'_>) {
        if let Some((t, p, o)) = origin.kafka {
            let high = self.offsets.entry((t.to_string(), p)).or_insert(o);
            *high = (*high).max(o);
        }
        if let Some(id) = origin.id
            && self.ids.insert(id.to_string())
        {
            self.id_order.push_back((now, id.to_string()));
            if self.id_order.len() > MAX_IDS
                && let Some((_, old)) = self.id_order.pop_front()
            {
                self.ids.remove(&old);
            }
        }
        let key = ArmKey::new(&feedback.namespace, &feedback.service, &feedback.version);
        let arm = self.arms.entry(key).or_insert_with(|| Arm {
            started: now,
            last: now,
            tally: Tally::default(),
            scores: ArmWindow::new(SCORE_WINDOW, SCORE_BUCKET),
        });
        arm.last = arm.last.max(now);
        let observation = observation(&feedback.kind);
        arm.tally.add(observation);
        if matches!(observation, Observation::Score { .. }) {
            arm.scores.record(now, feedback.time, observation);
        }
    }

    pub fn get(&self, key: &ArmKey) -> Option<&Arm> {
        self.arms.get(key)
    }

    /// End these arms' comparisons: their next events start new ones.
    pub fn reset(&mut self, keys: &[ArmKey]) {
        for key in keys {
            self.arms.remove(key);
        }
    }

    /// Drop idle arms and old ids.
    pub fn prune(&mut self, now: DateTime<Utc>) {
        let idle = chrono::Duration::from_std(ARM_IDLE).unwrap_or_default();
        self.arms.retain(|_, arm| now - arm.last < idle);
        while let Some((t, _)) = self.id_order.front()
            && now - *t >= idle
        {
            if let Some((_, id)) = self.id_order.pop_front() {
                self.ids.remove(&id);
            }
        }
    }

    /// Arms, Kafka partitions and ids held (memory follows activity).
    pub fn len(&self) -> (usize, usize, usize) {
        (self.arms.len(), self.offsets.len(), self.ids.len())
    }

    pub fn is_empty(&self) -> bool {
        self.arms.is_empty() && self.offsets.is_empty() && self.ids.is_empty()
    }

    pub fn snapshot(&self) -> ArmsSnapshot {
        let mut arms: Vec<_> = self.arms.iter().map(|(k, a)| (k.clone(), a.clone())).collect();
        arms.sort_by(|a, b| a.0.cmp(&b.0));
        let mut offsets: Vec<_> = self.offsets.iter().map(|((t, p), o)| (t.clone(), *p, *o)).collect();
        offsets.sort();
        ArmsSnapshot { arms, offsets, ids: self.id_order.iter().cloned().collect() }
    }

    pub fn from_snapshot(s: ArmsSnapshot) -> Arms {
        Arms {
            arms: s.arms.into_iter().collect(),
            offsets: s.offsets.into_iter().map(|(t, p, o)| ((t, p), o)).collect(),
            ids: s.ids.iter().map(|(_, id)| id.clone()).collect(),
            id_order: s.ids.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 20, 0, 0).unwrap()
    }

    fn feedback(version: &str, kind: FeedbackKind, id: Option<&str>) -> Feedback {
        Feedback {
            id: id.map(str::to_string),
            namespace: "sms-app".into(),
            service: "model-service".into(),
            version: version.into(),
            time: t0(),
            kind,
        }
    }

    fn sat(satisfied: bool) -> FeedbackKind {
        FeedbackKind::Satisfaction { satisfied }
    }

    #[test]
    fn events_count_in_their_version_arm_and_redeliveries_are_recognised() {
        let mut arms = Arms::default();
        let f = feedback("v2", sat(false), None);
        let detail = json!({ "kafka": { "topic": "backstop.feedback", "partition": 0, "offset": 41 } });
        let origin = Origin::of(&f, &detail);
        assert!(!arms.seen(&origin));
        arms.observe(t0(), &f, &origin);
        assert!(arms.seen(&origin));
        // Lower offsets of the same partition were counted before; other partitions were not.
        assert!(arms.seen(&Origin { id: None, kafka: Some(("backstop.feedback", 0, 3)) }));
        assert!(!arms.seen(&Origin { id: None, kafka: Some(("backstop.feedback", 1, 3)) }));
        assert!(!arms.seen(&Origin { id: None, kafka: Some(("backstop.feedback", 0, 42)) }));
        let with_id = feedback("v1", sat(true), Some("pred-1"));
        let origin = Origin { id: Some("pred-1"), kafka: None };
        arms.observe(t0(), &with_id, &origin);
        assert!(arms.seen(&origin));
        let v2 = arms.get(&ArmKey::new("sms-app", "model-service", "v2")).unwrap();
        assert_eq!((v2.tally.satisfaction_n, v2.tally.negative), (1, 1));
        assert_eq!(arms.len(), (2, 1, 1));
    }

    #[test]
    fn idle_arms_and_old_ids_are_dropped_and_a_reset_starts_a_new_comparison() {
        let mut arms = Arms::default();
        let origin = Origin { id: Some("a"), kafka: None };
        arms.observe(t0(), &feedback("v2", sat(true), Some("a")), &origin);
        arms.prune(t0() + chrono::Duration::minutes(59));
        assert_eq!(arms.len(), (1, 0, 1));
        arms.prune(t0() + chrono::Duration::minutes(60));
        assert!(arms.is_empty());

        let key = ArmKey::new("sms-app", "model-service", "v2");
        arms.observe(t0(), &feedback("v2", sat(true), None), &Origin { id: None, kafka: None });
        arms.reset(std::slice::from_ref(&key));
        let later = t0() + chrono::Duration::seconds(5);
        arms.observe(later, &feedback("v2", sat(false), None), &Origin { id: None, kafka: None });
        let arm = arms.get(&key).unwrap();
        assert_eq!((arm.started, arm.tally.satisfaction_n), (later, 1));
    }

    #[test]
    fn scores_go_to_the_sliding_window_and_the_snapshot_round_trips() {
        let mut arms = Arms::default();
        for (i, score) in [0.2, 0.4].into_iter().enumerate() {
            let f = feedback("v2", FeedbackKind::Score { score }, Some(&format!("s{i}")));
            arms.observe(t0(), &f, &Origin::of(&f, &json!({})));
        }
        let key = ArmKey::new("sms-app", "model-service", "v2");
        let summary = arms.get(&key).unwrap().scores.summary(t0());
        assert_eq!(summary.scores_n, 2);
        assert!((summary.score_mean.unwrap() - 0.3).abs() < 1e-12);

        let restored = Arms::from_snapshot(serde_json::from_value(json!(arms.snapshot())).unwrap());
        assert_eq!(restored.len(), arms.len());
        assert!(restored.seen(&Origin { id: Some("s1"), kafka: None }));
        assert_eq!(restored.get(&key).unwrap().scores.summary(t0()), summary);
    }
}
