//! Promotions (issue #18) as the audit log tells them, by target: the steps taken so far with
//! their evidence, the rollbacks that stopped them, and on-call's holds.
//!
//! **Rollback always wins.** Any other action decided on a target (a rollback on an alert or on
//! feedback, a step-down, `act`, `undo`) stops its promotion at once, and keeps it stopped, for
//! the canary versions it concerned, until a person takes a step (`backstop promote`) or
//! releases it (`backstop hold-promotion --release`); a new canary version is not stopped by the
//! old one's rollback. A promotion's step never counts as a rollback.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Pause;
use super::detail::{Control, DuplicatePart, Part, PlanPart, Recorded};
use crate::actions::ActionPlan;
use crate::actions::virtualservice::{Change, Dest};
use crate::audit::{Kind, Record};

/// `decided` and outcome records of a promotion's step (and `control` records of a step taken
/// by hand): where the canary goes, and on what evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromotionPart {
    pub promotion: StepUp,
}
impl Part for PromotionPart {
    const FIELD: &'static str = "promotion";
}

/// One step of a promotion, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepUp {
    /// The canary's version (a subset name, or a host).
    pub canary: String,
    pub from: u8,
    pub to: u8,
    /// The promotion's last weight.
    pub max: u8,
    /// The evidence the step was taken on (None: taken by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Value>,
}

/// A step taken (applied, or found already done).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub action_id: String,
    pub from: u8,
    pub to: u8,
    pub at: DateTime<Utc>,
    /// Who took it by hand (None: on evidence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Value>,
}

/// A promotion under way on a target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Promotion {
    pub target: String,
    pub rule: String,
    pub canary: String,
    pub max: u8,
    pub stages: Vec<Stage>,
}

impl Promotion {
    /// The canary's weight after the last step.
    pub fn weight(&self) -> u8 {
        self.stages.last().map_or(0, |s| s.to)
    }

    /// Whether the last step reached `max` (a `promoted` record is due).
    pub fn complete(&self) -> bool {
        self.weight() >= self.max
    }
}

/// A rollback that stopped promotions on a target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stop {
    pub action_id: String,
    pub rule: String,
    pub at: DateTime<Utc>,
    /// The canary versions it rolled back (empty: it did not say, so every version).
    pub canaries: Vec<String>,
}

impl Stop {
    fn concerns(&self, canary: &str) -> bool {
        self.canaries.is_empty() || self.canaries.iter().any(|c| c == canary)
    }
}

/// Everything about promotions, by target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Promotions {
    under_way: BTreeMap<String, Promotion>,
    stopped: BTreeMap<String, Stop>,
    held: BTreeMap<String, Pause>,
    /// The last action other than a promotion's step applied on a target, and its rule (for the
    /// rollback's cooldown).
    last_rollback: BTreeMap<String, (DateTime<Utc>, String)>,
}

/// The canary versions a plan rolls back (empty: every version).
fn canaries(plan: &ActionPlan) -> Vec<String> {
    let name = |d: &Dest| match d {
        Dest::Subset(s) | Dest::Host(s) => s.clone(),
    };
    match plan {
        ActionPlan::Traffic(p) => match &p.change {
            Change::Rollback { canary, .. } => canary.iter().map(name).collect(),
            Change::StepDown { canary, .. } => vec![name(canary)],
            Change::Switch { from, .. } => vec![name(from)],
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

impl Promotions {
    /// Fold one record (`control`: a `control` record's control).
    pub fn observe(&mut self, r: &Record, control: Option<Control>) {
        let e = &r.entry;
        let Some(target) = &e.target else { return };
        let step = matches!(e.kind, Kind::Decided | Kind::Applied | Kind::Noop | Kind::Control | Kind::Held)
            .then(|| PromotionPart::read(e.detail.as_ref()))
            .flatten()
            .map(|p| p.promotion);
        match (e.kind, &step, control) {
            // Any other action decided on the target is a rollback: it wins, at once.
            (Kind::Decided, None, _) => {
                let plan = PlanPart::read(e.detail.as_ref()).map(|p| p.plan);
                let canaries = match plan {
                    Some(Recorded::Known(plan)) => canaries(&plan),
                    _ => Vec::new(),
                };
                self.stop(target, e.action_id.as_deref(), e.rule.as_deref(), r.time, canaries);
            }
            (Kind::Control, None, Some(Control::Act | Control::Undo)) => {
                self.stop(target, e.action_id.as_deref(), e.rule.as_deref(), r.time, Vec::new());
            }
            // A rollback the guards held (pause, cooldown, cap, its confirmation) still says the
            // canary should not go up: it stops the promotion as a decided one would. A
            // promotion's own held steps carry their step.
            // It names no action and no version: it stops a promotion under way, or a target not
            // stopped yet, for every version; an earlier stop, which says by which action, stays.
            (Kind::Held, None, _) if self.under_way.contains_key(target) || !self.stopped.contains_key(target) => {
                self.stop(target, e.action_id.as_deref(), e.rule.as_deref(), r.time, Vec::new());
            }
            (Kind::Applied, None, _) => {
                self.last_rollback.insert(target.clone(), (r.time, e.rule.clone().unwrap_or_default()));
            }
            (Kind::Applied | Kind::Noop, Some(step), _)
                if !DuplicatePart::read(e.detail.as_ref()).is_some_and(|d| d.duplicate) =>
            {
                let promotion = self.under_way.entry(target.clone()).or_insert_with(|| Promotion {
                    target: target.clone(),
                    rule: e.rule.clone().unwrap_or_default(),
                    canary: step.canary.clone(),
                    max: step.max,
                    stages: Vec::new(),
                });
                // Only a step that moved the canary up is a stage: a repeat (a resumed write found
                // done, the same step by two deliveries) is not another.
                if promotion.weight() < step.to {
                    promotion.stages.push(Stage {
                        action_id: e.action_id.clone().unwrap_or_default(),
                        from: step.from,
                        to: step.to,
                        at: r.time,
                        actor: e.actor.clone(),
                        evidence: step.evidence.clone(),
                    });
                }
                promotion.max = step.max;
                // A step by hand that took effect: a person resumes a stopped or held promotion.
                if e.actor.is_some() {
                    self.stopped.remove(target);
                    self.held.remove(target);
                }
            }
            (Kind::Control, None, Some(Control::ReleasePromotion)) => {
                self.stopped.remove(target);
                self.held.remove(target);
            }
            (Kind::Control, None, Some(Control::HoldPromotion)) => {
                let pause = Pause {
                    actor: e.actor.clone().unwrap_or_default(),
                    reason: e.reason.clone().unwrap_or_default(),
                    since: r.time,
                };
                self.held.insert(target.clone(), pause);
            }
            // Traffic did not move up after a step: something is wrong; stop where it is.
            (Kind::Unverified, _, _)
                if self.under_way.get(target).and_then(|p| p.stages.last()).map(|s| &s.action_id)
                    == e.action_id.as_ref() =>
            {
                let canary = self.under_way.get(target).map(|p| p.canary.clone()).into_iter().collect();
                self.stop(target, e.action_id.as_deref(), e.rule.as_deref(), r.time, canary);
            }
            (Kind::Promoted, _, _) => {
                self.under_way.remove(target);
            }
            _ => {}
        }
    }

    /// Stop promotions of `canaries` (empty: every version) on `target`. A target stopped
    /// before for other versions stays stopped for them too.
    fn stop(&mut self, target: &str, action_id: Option<&str>, rule: Option<&str>, at: DateTime<Utc>, c: Vec<String>) {
        let mut stop = Stop {
            action_id: action_id.unwrap_or_default().to_string(),
            rule: rule.unwrap_or_default().to_string(),
            at,
            canaries: c,
        };
        if self.under_way.get(target).is_some_and(|p| stop.concerns(&p.canary)) {
            self.under_way.remove(target);
        }
        if let Some(before) = self.stopped.get(target) {
            if before.canaries.is_empty() {
                stop.canaries.clear();
            } else if !stop.canaries.is_empty() {
                for c in &before.canaries {
                    if !stop.canaries.contains(c) {
                        stop.canaries.push(c.clone());
                    }
                }
            }
        }
        self.stopped.insert(target.to_string(), stop);
    }

    /// The promotion under way on `target`, if any.
    pub fn under_way(&self, target: &str) -> Option<&Promotion> {
        self.under_way.get(target)
    }

    /// Every promotion under way.
    pub fn all(&self) -> impl Iterator<Item = &Promotion> {
        self.under_way.values()
    }

    /// Promotions whose last step reached their `max`, for which a `promoted` record is due.
    pub fn complete(&self) -> Vec<Promotion> {
        self.under_way.values().filter(|p| p.complete()).cloned().collect()
    }

    /// When the next step on `target` may be taken (its last step plus `interval`).
    pub fn next_step_at(&self, target: &str, interval: Duration) -> Option<DateTime<Utc>> {
        let last = self.under_way.get(target)?.stages.last()?.at;
        Some(last + chrono::Duration::from_std(interval).unwrap_or(chrono::Duration::MAX))
    }

    /// Why a promotion of `canary` on `target` may not step at `now`, if it may not. `cooldown`
    /// gives a rule's cooldown (for the last rollback's).
    pub fn vet(
        &self,
        target: &str,
        canary: &str,
        interval: Duration,
        cooldown: &dyn Fn(&str) -> Duration,
        now: DateTime<Utc>,
    ) -> Option<String> {
        if let Some(h) = self.held.get(target) {
            return Some(format!(
                "promotion held on {target} by {} since {}: {}",
                h.actor,
                crate::when::shown(&h.since),
                h.reason
            ));
        }
        if let Some(s) = self.stopped.get(target).filter(|s| s.concerns(canary)) {
            let by = match s.action_id.as_str() {
                "" => "a rollback the guards held".to_string(),
                id => format!("action {id}"),
            };
            return Some(format!(
                "promotion of {canary} on {target} stopped by {by} (rule {}) at {}: rollback wins; a person \
                 resumes it (`backstop promote` or `backstop hold-promotion --release`), or a new canary version starts \
                 its own",
                s.rule,
                crate::when::shown(&s.at)
            ));
        }
        if let Some((at, rule)) = self.last_rollback.get(target) {
            let ends = *at + chrono::Duration::from_std(cooldown(rule)).unwrap_or(chrono::Duration::MAX);
            if now < ends {
                return Some(format!(
                    "cooldown: rule {rule} acted on {target} at {}; no promotion before {}",
                    crate::when::shown(at),
                    crate::when::shown(&ends)
                ));
            }
        }
        if let Some(next) = self.next_step_at(target, interval)
            && now < next
        {
            return Some(format!(
                "the last step on {target} was less than the interval ago; next at {}",
                crate::when::shown(&next)
            ));
        }
        None
    }

    /// Forget rollbacks older than any cooldown.
    pub fn prune(&mut self, before: DateTime<Utc>) {
        self.last_rollback.retain(|_, (at, _)| *at >= before);
    }

    /// How many entries it holds (the state's size follows activity: see `GuardState::len`).
    pub fn entries(&self) -> usize {
        self.under_way.len() + self.stopped.len() + self.held.len() + self.last_rollback.len()
    }

    /// For the API and the page: promotions under way, stopped and held.
    pub fn view(&self) -> Value {
        serde_json::json!({
            "under_way": self.under_way.values().collect::<Vec<_>>(),
            "stopped": self.stopped,
            "held": self.held,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::virtualservice::{Plan, Weight};
    use crate::audit::Entry;
    use crate::state::detail::ControlPart;
    use chrono::TimeZone;

    const VS: &str = "VirtualService sms-app/model-service";

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 2, 3, 0, 0).unwrap() + chrono::Duration::seconds(secs)
    }

    fn record(secs: i64, entry: Entry) -> Record {
        Record { seq: 0, time: t(secs), prev: String::new(), entry }
    }

    fn step(id: &str, from: u8, to: u8) -> Entry {
        let part = PromotionPart { promotion: StepUp { canary: "v2".into(), from, to, max: 30, evidence: None } };
        Entry::new(Kind::Applied).target(VS).rule("promote").action_id(id).detail(part.value())
    }

    fn rollback_decided(canary: &str) -> Entry {
        let w = |w: u64| Weight::try_from(w).unwrap();
        let _ = w;
        let plan = ActionPlan::Traffic(Plan {
            change: Change::Rollback { stable: Dest::Subset("v1".into()), canary: vec![Dest::Subset(canary.into())] },
            routes: None,
        });
        Entry::new(Kind::Decided)
            .target(VS)
            .rule("errors")
            .action_id("R1")
            .detail(PlanPart { plan: Recorded::Known(plan) }.value())
    }

    fn no_cooldown(_: &str) -> Duration {
        Duration::ZERO
    }

    #[test]
    fn steps_are_folded_in_order_and_the_interval_holds_the_next() {
        let mut p = Promotions::default();
        p.observe(&record(0, step("A1", 10, 20)), None);
        p.observe(&record(10, step("A1", 10, 20)), None); // a resumed step's noop: once
        p.observe(&record(60, step("A2", 20, 30)), None);
        let under_way = p.under_way(VS).unwrap();
        assert_eq!(under_way.stages.iter().map(|s| s.to).collect::<Vec<_>>(), [20, 30]);
        assert!(under_way.complete(), "30 is the max");
        assert_eq!(p.complete().len(), 1);
        let why = p.vet(VS, "v2", Duration::from_secs(300), &no_cooldown, t(120)).unwrap();
        assert!(why.contains("less than the interval ago"), "{why}");
        assert_eq!(p.vet(VS, "v2", Duration::from_secs(300), &no_cooldown, t(361)), None);
        p.observe(&record(400, Entry::new(Kind::Promoted).target(VS)), None);
        assert!(p.under_way(VS).is_none());
    }

    #[test]
    fn a_rollback_decision_stops_the_promotion_of_its_canary_until_a_person_resumes() {
        let mut p = Promotions::default();
        p.observe(&record(0, step("A1", 10, 20)), None);
        p.observe(&record(5, rollback_decided("v2")), None);
        assert!(p.under_way(VS).is_none(), "stopped at once");
        let why = p.vet(VS, "v2", Duration::ZERO, &no_cooldown, t(3600)).unwrap();
        assert!(why.contains("stopped by action R1") && why.contains("rollback wins"), "{why}");
        assert_eq!(p.vet(VS, "v3", Duration::ZERO, &no_cooldown, t(3600)), None, "a new version is not stopped");
        // Its cooldown, once applied, holds a new version too.
        p.observe(&record(6, Entry::new(Kind::Applied).target(VS).rule("errors").action_id("R1")), None);
        let cooldown = |_: &str| Duration::from_secs(600);
        assert!(p.vet(VS, "v3", Duration::ZERO, &cooldown, t(60)).unwrap().contains("cooldown"));
        let release =
            Entry::new(Kind::Control).target(VS).detail(ControlPart { control: Control::ReleasePromotion }.value());
        p.observe(&record(700, release), Some(Control::ReleasePromotion));
        assert_eq!(p.vet(VS, "v2", Duration::ZERO, &cooldown, t(700)), None);
    }

    #[test]
    fn stops_of_several_versions_add_up_and_a_held_rollback_stops_too() {
        let mut p = Promotions::default();
        p.observe(&record(0, step("A1", 10, 20)), None);
        p.observe(&record(1, rollback_decided("v3")), None);
        assert!(p.under_way(VS).is_some(), "a rollback of v3 leaves v2's promotion alone");
        p.observe(&record(2, rollback_decided("v2")), None);
        assert!(p.under_way(VS).is_none());
        let view = p.view();
        assert_eq!(view["stopped"][VS]["canaries"], serde_json::json!(["v2", "v3"]), "{view}");
        let mut p = Promotions::default();
        p.observe(&record(0, Entry::new(Kind::Held).target(VS).rule("errors").reason("action cap")), None);
        let why = p.vet(VS, "v2", Duration::ZERO, &no_cooldown, t(1)).expect("a held rollback stops it");
        assert!(why.contains("stopped by a rollback the guards held (rule errors)"), "{why}");
        // After a decided rollback, its holds (its cooldown) leave the stop that names the action.
        let mut p = Promotions::default();
        p.observe(&record(0, step("A1", 10, 20)), None);
        p.observe(&record(1, rollback_decided("v2")), None);
        p.observe(&record(2, Entry::new(Kind::Held).target(VS).rule("errors").reason("cooldown")), None);
        let why = p.vet(VS, "v2", Duration::ZERO, &no_cooldown, t(3)).unwrap();
        assert!(why.contains("stopped by action R1"), "{why}");
        assert_eq!(p.vet(VS, "v3", Duration::ZERO, &no_cooldown, t(3)), None, "a new version is still not stopped");
        let held_step = Entry::new(Kind::Held).target(VS).rule("promote").detail(
            PromotionPart { promotion: StepUp { canary: "v2".into(), from: 10, to: 20, max: 30, evidence: None } }
                .value(),
        );
        let mut q = Promotions::default();
        q.observe(&record(0, held_step), None);
        assert_eq!(q.vet(VS, "v2", Duration::ZERO, &no_cooldown, t(1)), None, "a promotion's own hold does not");
    }

    #[test]
    fn a_step_whose_traffic_did_not_move_up_stops_the_promotion() {
        let mut p = Promotions::default();
        p.observe(&record(0, step("A1", 10, 20)), None);
        p.observe(&record(130, Entry::new(Kind::Unverified).target(VS).rule("promote").action_id("OTHER")), None);
        assert!(p.under_way(VS).is_some(), "another action's verification is not this step's");
        p.observe(&record(130, Entry::new(Kind::Unverified).target(VS).rule("promote").action_id("A1")), None);
        assert!(p.under_way(VS).is_none());
        assert!(p.vet(VS, "v2", Duration::ZERO, &no_cooldown, t(200)).unwrap().contains("stopped by action A1"));
    }

    #[test]
    fn a_hold_holds_until_released_and_a_manual_act_stops_every_version() {
        let mut p = Promotions::default();
        let hold = Entry::new(Kind::Control).target(VS).actor("ana").reason("launch day");
        p.observe(&record(0, hold), Some(Control::HoldPromotion));
        let why = p.vet(VS, "v2", Duration::ZERO, &no_cooldown, t(1)).unwrap();
        assert!(why.contains("held") && why.contains("ana") && why.contains("launch day"), "{why}");
        p.observe(&record(2, Entry::new(Kind::Control).target(VS)), Some(Control::ReleasePromotion));
        assert_eq!(p.vet(VS, "v2", Duration::ZERO, &no_cooldown, t(3)), None);
        p.observe(&record(4, Entry::new(Kind::Control).target(VS).action_id("M1")), Some(Control::Act));
        assert!(p.vet(VS, "v9", Duration::ZERO, &no_cooldown, t(5)).is_some(), "act names no version: all stop");
    }
}
