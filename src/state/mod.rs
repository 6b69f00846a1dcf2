//! The state: the fold of the audit log. Every record appended (and, at start, every record
//! replayed after the snapshot) is observed, so after a restart the state is what it was:
//! idempotency keys, cooldowns, the action cap's window, pauses, actions decided but not
//! finished, verifications and step-downs under way, Flagger holds, and the feedback arms.
//!
//! The guards vet an automatic action against it: duplicate deliveries, pause switches, an action
//! under way, cooldowns per rule and target, and a global cap on actions per window.
//!
//! What the fold reads of a record's `detail` is typed in [`detail`]: the pipeline writes the
//! same types.

pub mod detail;
pub mod promotion;
pub mod stepdown;
pub mod targets;

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::actions::ActionPlan;
use crate::audit::{Kind, Record};
use crate::event::Feedback;
use crate::feedback::arms::{ArmKey, Arms, ArmsSnapshot, Origin};
use crate::target::ObjectKind;
use detail::{
    Control, ControlPart, DuplicatePart, FeedbackArmsPart, FeedbackPart, FlaggerHoldPart, KafkaPosition, KindPart,
    Part, PlanPart, Recorded, StepDownPart, VerifyPart,
};
use promotion::{PromotionPart, Promotions};
use stepdown::{StepDown, StepInfo};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardSettings {
    /// At most this many applied actions in `window`, across all rules and targets.
    pub max_actions: usize,
    pub window: Duration,
    /// Cooldown for rules that do not set their own.
    pub default_cooldown: Duration,
    /// How long an idempotency key is remembered.
    pub key_retention: Duration,
}

impl Default for GuardSettings {
    fn default() -> Self {
        GuardSettings {
            max_actions: 5,
            window: Duration::from_secs(3600),
            default_cooldown: Duration::from_secs(600),
            key_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pause {
    pub actor: String,
    pub reason: String,
    pub since: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GuardVerdict {
    Proceed,
    /// The same alert instance was already handled by this rule.
    Duplicate {
        action_id: String,
    },
    Held {
        reason: String,
    },
}

/// An applied action whose traffic has not yet been verified (its rule has `verify:`): the
/// `applied` record carries it in `detail.verify`; a `verified` or `unverified` record ends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingVerification {
    pub action_id: String,
    pub rule: String,
    pub target: String,
    pub event_id: Option<String>,
    /// The PromQL query as rendered for the event (None: it could not be rendered; why).
    pub query: Result<String, String>,
    pub max_share: f64,
    /// A promotion's step: the share to reach instead (see `VerifySpec::min_share`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_share: Option<f64>,
    pub deadline_ms: u64,
    pub interval_ms: u64,
    /// When the action was applied.
    pub started: DateTime<Utc>,
}

impl PendingVerification {
    /// From an `applied` record, if it carries a verification.
    pub fn from_record(r: &Record) -> Option<PendingVerification> {
        let e = &r.entry;
        let v = VerifyPart::read(e.detail.as_ref())?.verify;
        let query = match (v.query, v.error) {
            (Some(q), _) => Ok(q),
            (None, Some(err)) => Err(err),
            (None, None) => Err("no query recorded".to_string()),
        };
        Some(PendingVerification {
            action_id: e.action_id.clone()?,
            rule: e.rule.clone().unwrap_or_default(),
            target: e.target.clone().unwrap_or_default(),
            event_id: e.event_id.clone(),
            query,
            max_share: v.max_share,
            min_share: v.min_share,
            deadline_ms: v.deadline_ms,
            interval_ms: v.interval_ms,
            started: r.time,
        })
    }
}

/// How long a decision against a Flagger Canary holds when its record does not say.
const FLAGGER_DEFAULT_HOLD_MS: u64 = 30 * 60 * 1000;

/// A decision against a Flagger Canary, in force until `until`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlaggerVerdict {
    pub action_id: String,
    pub rule: String,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// Whether Flagger was already told (the first "yes" is recorded).
    pub answered: bool,
}

/// An action whose `decided` record is in the log but whose outcome is not: the process stopped
/// in between. It is resumed at start (the executor's state check makes that safe).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub action_id: String,
    pub key: Option<String>,
    pub rule: String,
    pub target: String,
    pub event_id: Option<String>,
    /// The plan decided, as recorded.
    pub plan: Recorded<ActionPlan>,
    /// For an action on feedback: the arms whose comparison it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback_arms: Option<Vec<ArmKey>>,
    /// For a step of a gradual rollback: its `step_down` information (see [`stepdown`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_down: Option<StepInfo>,
    /// For a promotion's step: where the canary goes (see [`promotion`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<promotion::StepUp>,
}

#[derive(Debug, Default)]
pub struct GuardState {
    pending: std::collections::BTreeMap<String, Pending>,
    keys: HashMap<String, (String, DateTime<Utc>)>,
    last_applied: HashMap<(String, String), DateTime<Utc>>,
    applied: VecDeque<DateTime<Utc>>,
    global_pause: Option<Pause>,
    paused: HashMap<String, Pause>,
    /// Feedback per service version, for feedback rules.
    arms: Arms,
    verifications: std::collections::BTreeMap<String, PendingVerification>,
    /// Decisions against Flagger canaries by `namespace/name`.
    flagger: HashMap<String, FlaggerVerdict>,
    /// Gradual rollbacks under way, by target.
    step_downs: std::collections::BTreeMap<String, StepDown>,
    /// The highest Kafka offset recorded per topic and partition: where a cluster's new leader
    /// resumes consuming (the next offset), with no wait for a consumer group.
    kafka: std::collections::BTreeMap<String, std::collections::BTreeMap<i32, i64>>,
    /// Promotions under way, stopped by a rollback, or held by hand.
    promotions: Promotions,
    /// Each target's last action (for the on-call page).
    targets: targets::Targets,
}

/// The guards' state as written beside the audit log, valid up to the record `seq` whose line
/// hashes to `hash`: a restart loads it and replays only the records after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub format: u32,
    /// The last record the state covers.
    pub position: crate::audit::Position,
    pub written: DateTime<Utc>,
    keys: Vec<(String, String, DateTime<Utc>)>,
    cooldowns: Vec<(String, String, DateTime<Utc>)>,
    applied: Vec<DateTime<Utc>>,
    global_pause: Option<Pause>,
    paused: Vec<(String, Pause)>,
    pending: Vec<Pending>,
    arms: ArmsSnapshot,
    #[serde(default)]
    verifications: Vec<PendingVerification>,
    #[serde(default)]
    flagger: Vec<(String, FlaggerVerdict)>,
    #[serde(default)]
    step_downs: Vec<StepDown>,
    /// Topic, partition and the highest offset recorded (absent in older snapshots).
    #[serde(default)]
    kafka: Vec<(String, i32, i64)>,
    /// Promotions (absent in older snapshots).
    #[serde(default)]
    promotions: Promotions,
    /// Each target's last action (absent in older snapshots).
    #[serde(default)]
    targets: targets::Targets,
}

/// 2: with the feedback arms.
pub const SNAPSHOT_FORMAT: u32 = 2;

impl GuardState {
    pub fn snapshot(&self, position: crate::audit::Position) -> Snapshot {
        let mut keys: Vec<_> = self.keys.iter().map(|(k, (a, t))| (k.clone(), a.clone(), *t)).collect();
        keys.sort();
        let mut cooldowns: Vec<_> = self.last_applied.iter().map(|((r, t), at)| (r.clone(), t.clone(), *at)).collect();
        cooldowns.sort();
        let mut paused: Vec<_> = self.paused.iter().map(|(t, p)| (t.clone(), p.clone())).collect();
        paused.sort_by(|a, b| a.0.cmp(&b.0));
        Snapshot {
            format: SNAPSHOT_FORMAT,
            position,
            written: Utc::now(),
            keys,
            cooldowns,
            applied: self.applied.iter().copied().collect(),
            global_pause: self.global_pause.clone(),
            paused,
            pending: self.pending.values().cloned().collect(),
            arms: self.arms.snapshot(),
            verifications: self.verifications.values().cloned().collect(),
            flagger: self.flagger.iter().map(|(t, v)| (t.clone(), v.clone())).collect(),
            step_downs: self.step_downs.values().cloned().collect(),
            kafka: self.kafka_positions().into_iter().map(|k| (k.topic, k.partition, k.offset)).collect(),
            promotions: self.promotions.clone(),
            targets: self.targets.clone(),
        }
    }

    /// Actions decided but not finished, oldest first.
    pub fn pending(&self) -> Vec<Pending> {
        self.pending.values().cloned().collect()
    }

    pub fn from_snapshot(s: Snapshot) -> GuardState {
        GuardState {
            keys: s.keys.into_iter().map(|(k, a, t)| (k, (a, t))).collect(),
            last_applied: s.cooldowns.into_iter().map(|(r, t, at)| ((r, t), at)).collect(),
            applied: s.applied.into(),
            global_pause: s.global_pause,
            paused: s.paused.into_iter().collect(),
            pending: s.pending.into_iter().map(|p| (p.action_id.clone(), p)).collect(),
            arms: Arms::from_snapshot(s.arms),
            verifications: s.verifications.into_iter().map(|v| (v.action_id.clone(), v)).collect(),
            flagger: s.flagger.into_iter().collect(),
            step_downs: s.step_downs.into_iter().map(|d| (d.target.clone(), d)).collect(),
            kafka: s.kafka.into_iter().fold(
                Default::default(),
                |mut m: std::collections::BTreeMap<String, std::collections::BTreeMap<i32, i64>>, (t, p, o)| {
                    m.entry(t).or_default().insert(p, o);
                    m
                },
            ),
            promotions: s.promotions,
            targets: s.targets,
        }
    }

    /// How many entries the state holds (it must follow activity, not history).
    pub fn len(&self) -> usize {
        let (arms, partitions, ids) = self.arms.len();
        self.keys.len()
            + self.last_applied.len()
            + self.applied.len()
            + self.paused.len()
            + self.pending.len()
            + arms
            + partitions
            + ids
            + self.verifications.len()
            + self.flagger.len()
            + self.step_downs.len()
            + self.kafka.values().map(|p| p.len()).sum::<usize>()
            + self.promotions.entries()
            + self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.global_pause.is_none()
    }

    /// The decision against a Flagger canary (`namespace/name`) in force at `now`, if any.
    pub fn flagger_verdict(&self, target: &str, now: DateTime<Utc>) -> Option<FlaggerVerdict> {
        self.flagger.get(target).filter(|v| now < v.until).cloned()
    }

    /// Applied actions whose traffic is still to be verified, oldest first.
    pub fn verifications(&self) -> Vec<PendingVerification> {
        let mut v: Vec<_> = self.verifications.values().cloned().collect();
        v.sort_by_key(|p| p.started);
        v
    }

    /// The gradual rollback under way on `target`, if any.
    pub fn step_down(&self, target: &str) -> Option<&StepDown> {
        self.step_downs.get(target)
    }

    /// Step-downs whose next step is due at `now`.
    pub fn due_steps(&self, now: DateTime<Utc>) -> Vec<StepDown> {
        self.step_downs.values().filter(|d| d.due <= now).cloned().collect()
    }

    /// When the next step of any step-down is due.
    pub fn next_step_due(&self) -> Option<DateTime<Utc>> {
        self.step_downs.values().map(|d| d.due).min()
    }

    /// Put a step off (paused target): not recorded, so a restart looks again at once.
    pub fn postpone_step(&mut self, target: &str, until: DateTime<Utc>) {
        if let Some(d) = self.step_downs.get_mut(target) {
            d.due = until;
        }
    }

    /// What the on-call page's overview shows, from the state alone (no read of the log): each
    /// target's last action, pauses, promotions, gradual rollbacks and verifications under way.
    pub fn overview(&self) -> serde_json::Value {
        json!({
            "last_actions": self.targets.last_actions(),
            "pauses": self.pauses(),
            "promotions": self.promotions.view(),
            "step_downs": self.step_downs.values().collect::<Vec<_>>(),
            "verifying": self.verifications(),
            "pending": self.pending.values().collect::<Vec<_>>(),
        })
    }

    /// Promotions under way, stopped and held.
    pub fn promotions(&self) -> &Promotions {
        &self.promotions
    }

    /// The feedback arms.
    pub fn arms(&self) -> &Arms {
        &self.arms
    }

    /// Count a feedback event recorded at `time` (also done by [`GuardState::observe`] for its
    /// `received` record when the log is replayed).
    pub fn observe_feedback(&mut self, time: DateTime<Utc>, feedback: &Feedback, origin: &Origin<'_>) {
        self.arms.observe(time, feedback, origin);
        if let Some((topic, partition, offset)) = origin.kafka {
            self.note_kafka(topic, partition, offset);
        }
    }

    /// A message read from Kafka is recorded: its partition resumes after it.
    pub fn note_kafka(&mut self, topic: &str, partition: i32, offset: i64) {
        let partitions = match self.kafka.get_mut(topic) {
            Some(p) => p,
            None => self.kafka.entry(topic.to_string()).or_default(),
        };
        let o = partitions.entry(partition).or_insert(offset);
        *o = (*o).max(offset);
    }

    /// The highest offset recorded per topic and partition.
    pub fn kafka_positions(&self) -> Vec<KafkaPosition> {
        self.kafka
            .iter()
            .flat_map(|(topic, p)| {
                p.iter().map(|(partition, offset)| KafkaPosition {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                })
            })
            .collect()
    }

    /// Whether an idempotency key was used (an action decided, or a dry run recorded).
    pub fn has_key(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    /// Fold one audit record into the state.
    pub fn observe(&mut self, r: &Record) {
        let e = &r.entry;
        let control =
            (e.kind == Kind::Control).then(|| ControlPart::read(e.detail.as_ref())).flatten().map(|c| c.control);
        if e.kind == Kind::Received
            && let Some(detail) = &e.detail
            && let Some(FeedbackPart { feedback }) = FeedbackPart::read(Some(detail))
        {
            self.arms.observe(r.time, &feedback, &Origin::of(&feedback, detail));
        }
        if (e.kind == Kind::Received || (e.kind == Kind::Rejected && e.source.as_deref() == Some("kafka")))
            && let Some(p) = KafkaPosition::read(e.detail.as_ref(), e.kind == Kind::Rejected)
        {
            self.note_kafka(&p.topic, p.partition, p.offset);
        }
        if e.kind == Kind::Applied
            && let Some(v) = PendingVerification::from_record(r)
        {
            self.verifications.insert(v.action_id.clone(), v);
        }
        if e.kind == Kind::Applied
            && let (Some(target), Some(id)) = (&e.target, &e.action_id)
            && KindPart::read(e.detail.as_ref()).is_some_and(|k| k.kind == ObjectKind::FlaggerCanary)
        {
            let hold = FlaggerHoldPart::read(e.detail.as_ref()).map_or(FLAGGER_DEFAULT_HOLD_MS, |h| h.flagger_hold_ms);
            let until = r.time + chrono::Duration::milliseconds(i64::try_from(hold).unwrap_or(i64::MAX / 4));
            let verdict = FlaggerVerdict {
                action_id: id.clone(),
                rule: e.rule.clone().unwrap_or_default(),
                since: r.time,
                until,
                answered: false,
            };
            self.flagger.insert(target.clone(), verdict);
        }
        if e.kind == Kind::Control
            && control == Some(Control::FlaggerRollback)
            && let (Some(target), Some(id)) = (&e.target, &e.action_id)
            && let Some(v) = self.flagger.get_mut(target)
            && v.action_id == *id
        {
            v.answered = true;
        }
        if matches!(e.kind, Kind::Verified | Kind::Unverified)
            && let Some(id) = &e.action_id
        {
            self.verifications.remove(id);
        }
        // Held too: a rollback the guards held stops a promotion as a decided one does.
        if matches!(
            e.kind,
            Kind::Decided | Kind::Applied | Kind::Noop | Kind::Control | Kind::Promoted | Kind::Unverified | Kind::Held
        ) {
            self.promotions.observe(r, control);
        }
        if matches!(
            e.kind,
            Kind::Applied | Kind::Noop | Kind::Refused | Kind::Failed | Kind::Verified | Kind::Unverified
        ) {
            self.targets.observe(r);
        }
        // A step's outcome: the next step of its step-down, or its end.
        // Only decisions and outcomes carry these parts: other records (most of a replay) are
        // not deserialised for them.
        let action_record = matches!(e.kind, Kind::Decided | Kind::Applied | Kind::Noop | Kind::Failed | Kind::Refused);
        let step = action_record.then(|| StepDownPart::read(e.detail.as_ref())).flatten().map(|p| p.step_down);
        if matches!(e.kind, Kind::Applied | Kind::Noop | Kind::Failed | Kind::Refused)
            && let (Some(info), Some(target)) = (&step, &e.target)
            && let Some((origin, next)) =
                StepDown::from_outcome(info, e.rule.as_deref().unwrap_or(""), target, e.event_id.as_deref())
        {
            match next {
                Some(next) => {
                    self.step_downs.insert(target.clone(), next);
                }
                None => {
                    self.step_downs.retain(|_, d| d.origin != origin);
                }
            }
        }
        // Traffic that did not move during a step-down: skip to 0 at once.
        if e.kind == Kind::Unverified
            && let Some(target) = &e.target
            && let Some(d) = self.step_downs.get_mut(target)
        {
            d.to_zero(r.time);
        }
        // An action on feedback, applied or found done, ends the comparison that led to it.
        let feedback_arms =
            action_record.then(|| FeedbackArmsPart::read(e.detail.as_ref())).flatten().map(|p| p.feedback_arms);
        if matches!(e.kind, Kind::Applied | Kind::Noop)
            && let Some(arms) = &feedback_arms
        {
            // A promotion's step ends its stage only: rollback rules' comparisons go on.
            match PromotionPart::is_in(e.detail.as_ref()) {
                true => self.arms.reset_stage(arms),
                false => self.arms.reset(arms),
            }
        }
        // An outcome ends its action; a duplicate delivery's no-op names the action it repeats,
        // which may still be under way.
        if matches!(e.kind, Kind::Applied | Kind::Noop | Kind::Failed | Kind::Refused)
            && let Some(id) = &e.action_id
            && !DuplicatePart::read(e.detail.as_ref()).is_some_and(|d| d.duplicate)
        {
            self.pending.remove(id);
        }
        if e.kind == Kind::Decided
            && let (Some(id), Some(rule), Some(target), Some(PlanPart { plan })) =
                (&e.action_id, &e.rule, &e.target, PlanPart::read(e.detail.as_ref()))
            && plan != Recorded::Unreadable(serde_json::Value::Null)
        {
            let pending = Pending {
                action_id: id.clone(),
                key: e.key.clone(),
                rule: rule.clone(),
                target: target.clone(),
                event_id: e.event_id.clone(),
                plan,
                feedback_arms: feedback_arms.clone(),
                step_down: step.clone(),
                promotion: promotion::PromotionPart::read(e.detail.as_ref()).map(|p| p.promotion),
            };
            self.pending.insert(id.clone(), pending);
        }
        match e.kind {
            Kind::Decided | Kind::DryRun => {
                if let (Some(key), Some(id)) = (&e.key, &e.action_id) {
                    self.keys.insert(key.clone(), (id.clone(), r.time));
                }
            }
            // A failed or refused action frees its key: a later delivery may try again.
            Kind::Failed | Kind::Refused => {
                if let Some(key) = &e.key {
                    self.keys.remove(key);
                }
            }
            Kind::Applied => {
                if let (Some(rule), Some(target)) = (&e.rule, &e.target) {
                    self.last_applied.insert((rule.clone(), target.clone()), r.time);
                }
                // A gradual rollback counts once against the cap: its first step. A promotion's
                // steps do not count: the cap is there to stop runaway rollbacks, and a promotion
                // must never use up what a rollback needs.
                let promotion_step = PromotionPart::is_in(e.detail.as_ref());
                if step.as_ref().is_none_or(|s| s.step <= 1) && !promotion_step {
                    self.applied.push_back(r.time);
                }
            }
            Kind::Control => {
                let pause = Pause {
                    actor: e.actor.clone().unwrap_or_default(),
                    reason: e.reason.clone().unwrap_or_default(),
                    since: r.time,
                };
                match (control, &e.target) {
                    (Some(Control::Pause), None) => self.global_pause = Some(pause),
                    (Some(Control::Pause), Some(t)) => {
                        self.paused.insert(t.clone(), pause);
                    }
                    (Some(Control::Resume), None) => self.global_pause = None,
                    (Some(Control::Resume), Some(t)) => {
                        self.paused.remove(t);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// Drop what no guard can use any more, so memory follows activity, not history.
    pub fn prune(&mut self, now: DateTime<Utc>, settings: &GuardSettings, longest_cooldown: Duration) {
        let keys_before = now - settings.key_retention;
        self.keys.retain(|_, (_, t)| *t >= keys_before);
        let cooldown_before = now - longest_cooldown.max(settings.default_cooldown);
        self.last_applied.retain(|_, t| *t >= cooldown_before);
        let window_start = now - settings.window;
        while self.applied.front().is_some_and(|t| *t < window_start) {
            self.applied.pop_front();
        }
        self.arms.prune(now);
        self.flagger.retain(|_, v| v.until > now);
        self.promotions.prune(cooldown_before);
    }

    /// Vet a promotion's step of `canary` on `target`: a repeated comparison, a pause, an action
    /// under way on the target (a promotion's or any other), a gradual rollback, a hold, a
    /// rollback that stopped it or its cooldown (`cooldown` of the rollback's rule), and the
    /// interval since the last step. The cap on actions does not apply: steps do not count.
    #[allow(clippy::too_many_arguments)]
    pub fn vet_promotion(
        &self,
        key: &str,
        target: &str,
        canary: &str,
        interval: Duration,
        cooldown: &dyn Fn(&str) -> Duration,
        now: DateTime<Utc>,
    ) -> GuardVerdict {
        if let Some(v) = self.repeated_or_paused(key, target) {
            return v;
        }
        if let Some(p) = self.pending.values().find(|p| p.target == target) {
            return GuardVerdict::Held {
                reason: format!("action {} of rule {} on {target} is under way", p.action_id, p.rule),
            };
        }
        if let Some(d) = self.step_downs.get(target) {
            return GuardVerdict::Held { reason: format!("a gradual rollback (action {}) is under way", d.origin) };
        }
        // The last step's traffic is still being checked: the next waits for the verdict.
        if let Some(v) = self.verifications.values().find(|v| v.target == target) {
            return GuardVerdict::Held {
                reason: format!("the traffic of action {} on {target} is still being verified", v.action_id),
            };
        }
        match self.promotions.vet(target, canary, interval, cooldown, now) {
            Some(reason) => GuardVerdict::Held { reason },
            None => GuardVerdict::Proceed,
        }
    }

    /// Vet an automatic action.
    pub fn vet(
        &self,
        rule: &str,
        key: &str,
        target: &str,
        cooldown: Duration,
        settings: &GuardSettings,
        now: DateTime<Utc>,
    ) -> GuardVerdict {
        if let Some(v) = self.repeated_or_paused(key, target) {
            return v;
        }
        // Decided, not yet finished (the target is being written): one action at a time.
        if let Some(p) = self.pending.values().find(|p| p.rule == rule && p.target == target) {
            return GuardVerdict::Held {
                reason: format!("action {} of rule {rule} on {target} is under way", p.action_id),
            };
        }
        if let Some(last) = self.last_applied.get(&(rule.to_string(), target.to_string())) {
            let ends = *last + cooldown;
            if now < ends {
                return GuardVerdict::Held {
                    reason: format!(
                        "cooldown: rule {rule} acted on {target} at {}, cooldown {} ends {}",
                        crate::when::shown(last),
                        humantime::format_duration(cooldown),
                        crate::when::shown(&ends)
                    ),
                };
            }
        }
        let window_start = now - settings.window;
        let recent = self.applied.iter().filter(|t| **t >= window_start).count();
        if recent >= settings.max_actions {
            return GuardVerdict::Held {
                reason: format!(
                    "action cap: {recent} actions in the last {} (limit {})",
                    humantime::format_duration(settings.window),
                    settings.max_actions
                ),
            };
        }
        GuardVerdict::Proceed
    }

    /// The first checks of every automatic action: a key used before, then a pause.
    fn repeated_or_paused(&self, key: &str, target: &str) -> Option<GuardVerdict> {
        if let Some((action_id, _)) = self.keys.get(key) {
            return Some(GuardVerdict::Duplicate { action_id: action_id.clone() });
        }
        self.paused(target).map(|reason| GuardVerdict::Held { reason })
    }

    /// Why automatic actions on `target` are paused, if they are.
    pub fn paused(&self, target: &str) -> Option<String> {
        let p = self.global_pause.as_ref().or_else(|| self.paused.get(target))?;
        let scope = if self.global_pause.is_some() { "all automatic actions" } else { target };
        Some(format!("paused ({scope}) by {} since {}: {}", p.actor, crate::when::shown(&p.since), p.reason))
    }

    /// Current pauses, for the API and CLI.
    pub fn pauses(&self) -> serde_json::Value {
        json!({ "global": self.global_pause, "targets": self.paused })
    }
}

#[cfg(test)]
mod tests;
