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

use super::restarts::{RECENT_KEPT, restart_point};
use super::sequential::Tally;
use super::series::History;
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
/// How long a failed request is remembered for its retries.
pub const REQUEST_MEMORY: Duration = Duration::from_secs(600);
/// Failed requests remembered at most.
pub const MAX_REQUESTS: usize = 100_000;

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
    /// What it counted since the latest restart points, oldest first (see
    /// [`restarts`](super::restarts)); absent from older snapshots, filled from the next event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<Recent>,
    /// Its counts over time, for the evidence (see [`series`](super::series)); absent from
    /// older snapshots, started by the next event.
    #[serde(default, skip_serializing_if = "History::is_empty")]
    pub history: History,
}

/// An arm's tally since a restart point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recent {
    pub since: DateTime<Utc>,
    pub tally: Tally,
}

impl Arm {
    /// A new arm whose first event is counted at `now`.
    pub fn new(now: DateTime<Utc>) -> Arm {
        Arm {
            started: now,
            last: now,
            tally: Tally::default(),
            scores: ArmWindow::new(SCORE_WINDOW, SCORE_BUCKET),
            recent: Vec::new(),
            history: History::default(),
        }
    }

    /// Count an observation recorded at `now` (event time `at`, for the score window): in the
    /// tally since the start, and in the recent tallies since the restart points.
    pub fn observe(&mut self, now: DateTime<Utc>, at: DateTime<Utc>, observation: Observation) {
        self.last = self.last.max(now);
        if matches!(observation, Observation::Score { .. }) {
            self.tally.add(observation);
            self.scores.record(now, at, observation);
            return;
        }
        self.history.before(now, &self.tally);
        self.tally.add(observation);
        for recent in self.recent_at(now) {
            recent.tally.add(observation);
        }
    }

    /// The recent tallies counting what is recorded at `now`, starting one at a new restart point.
    fn recent_at(&mut self, now: DateTime<Utc>) -> impl Iterator<Item = &mut Recent> {
        let point = restart_point(now);
        if self.recent.last().is_none_or(|r| r.since < point) {
            self.recent.push(Recent { since: point, tally: Tally::default() });
            if self.recent.len() > RECENT_KEPT {
                self.recent.remove(0);
            }
        }
        self.recent.iter_mut().filter(move |r| r.since <= now)
    }

    /// A later attempt of a request this arm counted at `counted` (`before` its outcome then)
    /// replaces it: in each tally that counted it the request stays one outcome, now `after`;
    /// a tally started since (a new comparison, a restart) counts `after` as its own.
    pub fn replace(&mut self, now: DateTime<Utc>, counted: DateTime<Utc>, before: Observation, after: Observation) {
        self.last = self.last.max(now);
        self.history.before(now, &self.tally);
        if self.started <= counted {
            self.tally.replace_outcome(before, after);
        } else {
            self.tally.add(after);
        }
        for recent in self.recent_at(now) {
            if recent.since <= counted {
                recent.tally.replace_outcome(before, after);
            } else {
                recent.tally.add(after);
            }
        }
    }

    /// The tally since restart point `since`, if kept.
    pub fn since(&self, since: DateTime<Utc>) -> Option<&Tally> {
        self.recent.iter().find(|r| r.since == since).map(|r| &r.tally)
    }
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

/// A failed request's latest counted attempt, for its retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The version that served it, and when it was counted.
    pub version: String,
    pub counted: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
}

/// A request's identity: namespace, service, `request_id`.
type RequestKey = (String, String, String);

#[derive(Debug, Default)]
pub struct Arms {
    arms: HashMap<ArmKey, Arm>,
    /// The same counts per stage of a promotion: reset by each promotion step (each stage is
    /// judged on its own traffic), while `arms` (the rollback rules' comparisons) go on across
    /// steps, so that a promotion does not restart, and multiply the false alarms of, the tests
    /// that roll a canary back.
    stages: HashMap<ArmKey, Arm>,
    offsets: HashMap<(String, i32), i64>,
    ids: HashSet<String>,
    id_order: VecDeque<(DateTime<Utc>, String)>,
    requests: HashMap<RequestKey, Request>,
    /// When each request was first remembered, oldest first.
    request_order: VecDeque<(DateTime<Utc>, RequestKey)>,
}

/// [`Arms`] as saved in the snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmsSnapshot {
    arms: Vec<(ArmKey, Arm)>,
    /// Absent before promotion stages (issue #18).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    stages: Vec<(ArmKey, Arm)>,
    offsets: Vec<(String, i32, i64)>,
    ids: Vec<(DateTime<Utc>, String)>,
    /// Failed requests remembered for their retries, oldest first (absent before issue #21).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    requests: Vec<(DateTime<Utc>, RequestKey, Request)>,
}

fn outcome_of(request: &Request) -> Observation {
    Observation::Outcome { success: request.success, latency_seconds: request.latency_ms.map(|ms| ms / 1000.0) }
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
        let observed = observation(&feedback.kind);
        if let (Some(request_id), FeedbackKind::Outcome { success, latency_ms }) =
            (&feedback.request_id, &feedback.kind)
        {
            let rkey = (feedback.namespace.clone(), feedback.service.clone(), request_id.clone());
            let this = Request {
                version: feedback.version.clone(),
                counted: now,
                attempt: feedback.attempt,
                success: *success,
                latency_ms: *latency_ms,
            };
            match self.requests.get(&rkey) {
                Some(before) if before.version == feedback.version => {
                    // Without `attempt` the report that comes later is the later attempt.
                    let later = match (feedback.attempt, before.attempt) {
                        (Some(a), Some(b)) => a > b,
                        _ => true,
                    };
                    if !later {
                        return;
                    }
                    let (counted, was) = (before.counted, outcome_of(before));
                    self.stages
                        .entry(key.clone())
                        .or_insert_with(|| Arm::new(now))
                        .replace(now, counted, was, observed);
                    let arm = self.arms.entry(key).or_insert_with(|| Arm::new(now));
                    arm.replace(now, counted, was, observed);
                    self.requests.insert(rkey, this);
                    return;
                }
                // Served by another version: that version's own outcome, remembered from now on.
                Some(_) => {
                    self.requests.insert(rkey, this);
                }
                // A failure, or a retry that succeeded (its earlier attempts may still come).
                None if !success || feedback.attempt.is_some_and(|a| a > 1) => {
                    self.requests.insert(rkey.clone(), this);
                    self.request_order.push_back((now, rkey));
                    if self.request_order.len() > MAX_REQUESTS
                        && let Some((_, old)) = self.request_order.pop_front()
                    {
                        self.requests.remove(&old);
                    }
                }
                None => {}
            }
        }
        self.stages.entry(key.clone()).or_insert_with(|| Arm::new(now)).observe(now, feedback.time, observed);
        let arm = self.arms.entry(key).or_insert_with(|| Arm::new(now));
        arm.observe(now, feedback.time, observed);
    }

    pub fn get(&self, key: &ArmKey) -> Option<&Arm> {
        self.arms.get(key)
    }

    /// Every arm, by key (for the on-call page's live comparisons).
    pub fn iter(&self) -> impl Iterator<Item = (&ArmKey, &Arm)> {
        self.arms.iter()
    }

    /// The arm's counts since the last promotion step that ended its stage.
    pub fn stage(&self, key: &ArmKey) -> Option<&Arm> {
        self.stages.get(key)
    }

    /// End these arms' comparisons, and their stages: their next events start new ones.
    pub fn reset(&mut self, keys: &[ArmKey]) {
        for key in keys {
            self.arms.remove(key);
            self.stages.remove(key);
        }
    }

    /// End these arms' promotion stages only (a promotion's step).
    pub fn reset_stage(&mut self, keys: &[ArmKey]) {
        for key in keys {
            self.stages.remove(key);
        }
    }

    /// Drop idle arms and old ids.
    pub fn prune(&mut self, now: DateTime<Utc>) {
        let idle = chrono::Duration::from_std(ARM_IDLE).unwrap_or_default();
        self.arms.retain(|_, arm| now - arm.last < idle);
        self.stages.retain(|_, arm| now - arm.last < idle);
        while let Some((t, _)) = self.id_order.front()
            && now - *t >= idle
        {
            if let Some((_, id)) = self.id_order.pop_front() {
                self.ids.remove(&id);
            }
        }
        let memory = chrono::Duration::from_std(REQUEST_MEMORY).unwrap_or_default();
        while let Some((t, _)) = self.request_order.front()
            && now - *t >= memory
        {
            if let Some((_, key)) = self.request_order.pop_front() {
                self.requests.remove(&key);
            }
        }
    }

    /// Arms, Kafka partitions and ids held (memory follows activity).
    pub fn len(&self) -> (usize, usize, usize) {
        // Stages have the arms' keys: as many at most.
        (self.arms.len(), self.offsets.len(), self.ids.len())
    }

    pub fn is_empty(&self) -> bool {
        self.arms.is_empty()
            && self.stages.is_empty()
            && self.offsets.is_empty()
            && self.ids.is_empty()
            && self.requests.is_empty()
    }

    pub fn snapshot(&self) -> ArmsSnapshot {
        let mut arms: Vec<_> = self.arms.iter().map(|(k, a)| (k.clone(), a.clone())).collect();
        arms.sort_by(|a, b| a.0.cmp(&b.0));
        let mut stages: Vec<_> = self.stages.iter().map(|(k, a)| (k.clone(), a.clone())).collect();
        stages.sort_by(|a, b| a.0.cmp(&b.0));
        let mut offsets: Vec<_> = self.offsets.iter().map(|((t, p), o)| (t.clone(), *p, *o)).collect();
        offsets.sort();
        let requests = self
            .request_order
            .iter()
            .filter_map(|(t, k)| self.requests.get(k).map(|r| (*t, k.clone(), r.clone())))
            .collect();
        ArmsSnapshot { arms, stages, offsets, ids: self.id_order.iter().cloned().collect(), requests }
    }

    pub fn from_snapshot(s: ArmsSnapshot) -> Arms {
        Arms {
            arms: s.arms.into_iter().collect(),
            stages: s.stages.into_iter().collect(),
            offsets: s.offsets.into_iter().map(|(t, p, o)| ((t, p), o)).collect(),
            ids: s.ids.iter().map(|(_, id)| id.clone()).collect(),
            id_order: s.ids.into(),
            requests: s.requests.iter().map(|(_, k, r)| (k.clone(), r.clone())).collect(),
            request_order: s.requests.into_iter().map(|(t, k, _)| (t, k)).collect(),
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
            request_id: None,
            attempt: None,
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

    /// A promotion's step starts a new stage; the rollback rules' comparison goes on.
    #[test]
    fn a_stage_reset_keeps_the_comparison_and_a_reset_ends_both() {
        let mut arms = Arms::default();
        let key = ArmKey::new("sms-app", "model-service", "v2");
        let none = Origin { id: None, kafka: None };
        arms.observe(t0(), &feedback("v2", sat(false), None), &none);
        arms.reset_stage(std::slice::from_ref(&key));
        assert!(arms.stage(&key).is_none());
        arms.observe(t0(), &feedback("v2", sat(true), None), &none);
        assert_eq!(arms.get(&key).unwrap().tally.satisfaction_n, 2, "the comparison goes on");
        assert_eq!(arms.stage(&key).unwrap().tally.satisfaction_n, 1, "the stage counts since the step");
        let restored = Arms::from_snapshot(arms.snapshot());
        assert_eq!(restored.stage(&key).unwrap().tally.satisfaction_n, 1);
        arms.reset(std::slice::from_ref(&key));
        assert!(arms.get(&key).is_none() && arms.stage(&key).is_none());
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

    fn attempt(version: &str, request: &str, attempt: Option<u32>, success: bool) -> Feedback {
        Feedback {
            request_id: Some(request.into()),
            attempt,
            ..feedback(version, FeedbackKind::Outcome { success, latency_ms: Some(40.0) }, None)
        }
    }

    #[test]
    fn a_retried_request_counts_once_with_its_latest_attempt() {
        let mut arms = Arms::default();
        let none = Origin { id: None, kafka: None };
        let key = ArmKey::new("sms-app", "model-service", "v2");
        let counts = |arms: &Arms| {
            let t = &arms.get(&key).unwrap().tally;
            (t.outcomes_n, t.errors, t.latency_n)
        };
        // Failed twice, then served: one outcome, a success.
        arms.observe(t0(), &attempt("v2", "r1", Some(1), false), &none);
        arms.observe(t0(), &attempt("v2", "r1", Some(2), false), &none);
        assert_eq!(counts(&arms), (1, 1, 1));
        arms.observe(t0(), &attempt("v2", "r1", Some(3), true), &none);
        assert_eq!(counts(&arms), (1, 0, 1));
        // A retry that succeeded is remembered: its earlier attempt, delivered late, is not counted.
        arms.observe(t0(), &attempt("v2", "r4", Some(2), true), &none);
        arms.observe(t0(), &attempt("v2", "r4", Some(1), false), &none);
        assert_eq!(counts(&arms), (2, 0, 2));
        // An earlier attempt delivered late changes nothing; without attempts, arrival order.
        arms.observe(t0(), &attempt("v2", "r1", Some(2), false), &none);
        arms.observe(t0(), &attempt("v2", "r2", None, false), &none);
        arms.observe(t0(), &attempt("v2", "r2", None, false), &none);
        assert_eq!(counts(&arms), (3, 1, 3));
        // A success is not remembered (nothing retries it), a retry on another version is its
        // own outcome there.
        arms.observe(t0(), &attempt("v2", "r3", Some(1), true), &none);
        arms.observe(t0(), &attempt("v1", "r2", Some(2), true), &none);
        assert_eq!(counts(&arms), (4, 1, 4));
        assert_eq!(arms.get(&ArmKey::new("sms-app", "model-service", "v1")).unwrap().tally.outcomes_n, 1);
        assert_eq!(arms.requests.len(), 3);
        // The restarted tallies count the request once too.
        let recent = &arms.get(&key).unwrap().recent;
        assert_eq!((recent.len(), recent[0].tally.outcomes_n, recent[0].tally.errors), (1, 4, 1));
        // Remembered in the snapshot; forgotten after REQUEST_MEMORY.
        let restored = Arms::from_snapshot(serde_json::from_value(json!(arms.snapshot())).unwrap());
        assert_eq!(restored.requests, arms.requests);
        arms.prune(t0() + chrono::Duration::from_std(REQUEST_MEMORY).unwrap());
        assert!(arms.requests.is_empty() && arms.request_order.is_empty());
    }

    #[test]
    fn a_retry_after_its_arm_was_reset_counts_in_the_new_comparison() {
        let mut arms = Arms::default();
        let none = Origin { id: None, kafka: None };
        let key = ArmKey::new("sms-app", "model-service", "v2");
        arms.observe(t0(), &attempt("v2", "r1", Some(1), false), &none);
        arms.reset(std::slice::from_ref(&key));
        let later = t0() + chrono::Duration::seconds(1);
        arms.observe(later, &attempt("v2", "r1", Some(2), false), &none);
        let t = &arms.get(&key).unwrap().tally;
        assert_eq!((t.outcomes_n, t.errors), (1, 1));
    }

    #[test]
    fn a_snapshot_from_before_restarts_and_requests_still_loads() {
        let old = json!({
            "arms": [[{"namespace": "sms-app", "service": "model-service", "version": "v2"}, {
                "started": "2026-11-24T20:00:00Z", "last": "2026-11-24T20:00:00Z",
                "tally": {"satisfaction_n": 0, "negative": 0, "outcomes_n": 3, "errors": 1, "latency_n": 0},
                "scores": serde_json::to_value(ArmWindow::new(SCORE_WINDOW, SCORE_BUCKET)).unwrap(),
            }]],
            "offsets": [],
            "ids": [],
        });
        let mut arms = Arms::from_snapshot(serde_json::from_value(old).unwrap());
        let key = ArmKey::new("sms-app", "model-service", "v2");
        assert_eq!(arms.get(&key).unwrap().tally.errors, 1);
        arms.observe(t0(), &attempt("v2", "r1", None, false), &Origin { id: None, kafka: None });
        let arm = arms.get(&key).unwrap();
        assert_eq!((arm.tally.outcomes_n, arm.recent.len()), (4, 1));
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
