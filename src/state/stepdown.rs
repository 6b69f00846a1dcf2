//! Gradual rollback: a rule's `rollback: {steps: [25, 10, 0], interval: 1m}` lowers the canary
//! one step at a time, so the stable version is not handed the whole load at once.
//!
//! Every step is an action of its own (a `decided` record, a conditional write, an outcome
//! record, a verification when the rule has one). The outcome record of a step carries
//! `detail.step_down`: which step-down it belongs to (`origin`, the first step's action id), the
//! steps still to go and when the next is due. The guards fold those records into the pending
//! step-downs, so a restart resumes where the log says it was and never goes back up: each step
//! lowers the canary to the first remaining step at or below its weight (see
//! [`crate::actions::virtualservice::Change::StepDown`]).
//!
//! This module is the pure part: what a step's outcome means for the next one.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::actions::virtualservice::{self, Change, RouteState, Weight};
use crate::actions::{ActionPlan, Outcome};
use crate::prometheus::verification::VerifySpec;

/// `detail.step_down` of a step's records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepInfo {
    /// The first step's action id: the step-down's identity.
    pub origin: String,
    /// 1 for the first step.
    pub step: u32,
    pub interval_ms: u64,
    /// The rule's verification as rendered for the alert (`applied` records' `detail.verify`);
    /// each step is verified against its own weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySpec>,
    /// On outcome records: the canary weights still to go (empty: the step-down is over).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<Vec<Weight>>,
    /// On outcome records with steps remaining: when the next one is due, and its plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<ActionPlan>,
}

/// A step-down under way: its next step, folded from the last step's outcome record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepDown {
    pub origin: String,
    pub rule: String,
    /// `namespace/name` of the VirtualService.
    pub target: String,
    pub event_id: Option<String>,
    /// The next step's number and plan (its `steps` are the weights still to go).
    pub step: u32,
    pub plan: ActionPlan,
    pub interval_ms: u64,
    pub due: DateTime<Utc>,
    pub verify: Option<VerifySpec>,
}

impl StepDown {
    /// From a step's outcome record: `Some(Some(..))` when steps remain, `Some(None)` when the
    /// step-down of `origin` is over, `None` when the record is not a step's outcome.
    pub fn from_outcome(
        info: &StepInfo,
        rule: &str,
        target: &str,
        event_id: Option<&str>,
    ) -> Option<(String, Option<StepDown>)> {
        let info = info.clone();
        let remaining = info.remaining?;
        let next = match (remaining.is_empty(), info.next, info.next_at) {
            (false, Some(plan), Some(due)) => Some(StepDown {
                origin: info.origin.clone(),
                rule: rule.to_string(),
                target: target.to_string(),
                event_id: event_id.map(str::to_string),
                step: info.step + 1,
                plan,
                interval_ms: info.interval_ms,
                due,
                verify: info.verify,
            }),
            _ => None,
        };
        Some((info.origin, next))
    }

    /// The information the next step's records carry.
    pub fn info(&self) -> StepInfo {
        StepInfo {
            origin: self.origin.clone(),
            step: self.step,
            interval_ms: self.interval_ms,
            verify: self.verify.clone(),
            remaining: None,
            next_at: None,
            next: None,
        }
    }

    /// Skip the remaining steps: the next one takes the canary to 0, now.
    pub fn to_zero(&mut self, now: DateTime<Utc>) {
        self.plan = to_zero(&self.plan);
        self.due = now;
    }
}

/// The plan of a step straight to 0 (a failed verification, or a new alert).
pub fn to_zero(plan: &ActionPlan) -> ActionPlan {
    match plan {
        ActionPlan::Traffic(p) => match &p.change {
            Change::StepDown { stable, canary, .. } => ActionPlan::Traffic(virtualservice::Plan {
                change: Change::StepDown { stable: stable.clone(), canary: canary.clone(), steps: vec![zero()] },
                routes: p.routes.clone(),
            }),
            _ => plan.clone(),
        },
        _ => plan.clone(),
    }
}

fn zero() -> Weight {
    Weight::try_from(0).unwrap_or_else(|_| unreachable!("0 is a weight"))
}

/// Whether a plan is a step of a gradual rollback.
pub fn is_step(plan: &ActionPlan) -> bool {
    matches!(plan, ActionPlan::Traffic(virtualservice::Plan { change: Change::StepDown { .. }, .. }))
}

/// What a step's outcome means for the next step: the `step_down` detail of its outcome record.
/// Applied or already there: the steps below the weight the canary reached remain. Failed (the
/// target could not be read or written): the same step is tried again after the interval.
/// Refused (the object no longer makes sense for the plan): the step-down ends.
pub fn after_outcome(plan: &ActionPlan, info: &StepInfo, outcome: &Outcome, now: DateTime<Utc>) -> StepInfo {
    let mut info = StepInfo { remaining: Some(Vec::new()), next_at: None, next: None, ..info.clone() };
    let ActionPlan::Traffic(virtualservice::Plan { change: Change::StepDown { canary, steps, .. }, .. }) = plan else {
        return info;
    };
    let reached = |routes: &Value| {
        serde_json::from_value::<Vec<RouteState>>(routes.clone())
            .ok()
            .map(|r| virtualservice::canary_weight(&r, canary))
    };
    let remaining: Vec<Weight> = match outcome {
        Outcome::Applied { after: routes, .. } | Outcome::NoOp { state: routes } => match reached(routes) {
            Some(w) => steps.iter().copied().filter(|s| u32::from(s.get()) < w).collect(),
            None => Vec::new(),
        },
        Outcome::Failed { .. } => steps.clone(),
        Outcome::Refused { .. } => Vec::new(),
    };
    if !remaining.is_empty() {
        let ActionPlan::Traffic(p) = plan else { unreachable!("matched above") };
        let mut next = p.clone();
        if let Change::StepDown { steps, .. } = &mut next.change {
            steps.clone_from(&remaining);
        }
        info.next = Some(ActionPlan::Traffic(next));
        let interval = chrono::Duration::milliseconds(i64::try_from(info.interval_ms).unwrap_or(i64::MAX / 4));
        info.next_at = Some(now + interval);
    }
    info.remaining = Some(remaining);
    info
}

/// The verification of one step: the canary's share may be at most its new weight plus the
/// rule's own allowance (`max_share`, for the last step that is all).
pub fn verify_for_step(verify: &VerifySpec, outcome: &Outcome, plan: &ActionPlan) -> VerifySpec {
    let ActionPlan::Traffic(virtualservice::Plan { change: Change::StepDown { canary, .. }, .. }) = plan else {
        return verify.clone();
    };
    let weight = match outcome {
        Outcome::Applied { after, .. } => serde_json::from_value::<Vec<RouteState>>(after.clone())
            .map(|r| virtualservice::canary_weight(&r, canary))
            .unwrap_or(0),
        _ => 0,
    };
    let mut v = verify.clone();
    v.max_share = (v.max_share + f64::from(weight) / 100.0).min(1.0);
    v.step_weight = Some(weight);
    v
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::actions::virtualservice::{Dest, Plan};

    fn w(v: u64) -> Weight {
        Weight::try_from(v).unwrap()
    }

    fn plan(steps: &[u64]) -> ActionPlan {
        ActionPlan::Traffic(Plan {
            change: Change::StepDown {
                stable: Dest::Subset("v1".into()),
                canary: Dest::Subset("v2".into()),
                steps: steps.iter().map(|s| w(*s)).collect(),
            },
            routes: None,
        })
    }

    fn routes(v1: u32, v2: u32) -> Value {
        json!([{ "route": "http[0]", "destinations": [
            { "host": "ms", "subset": "v1", "weight": v1 },
            { "host": "ms", "subset": "v2", "weight": v2 },
        ]}])
    }

    fn info() -> StepInfo {
        StepInfo {
            origin: "A1".into(),
            step: 1,
            interval_ms: 60_000,
            verify: None,
            remaining: None,
            next_at: None,
            next: None,
        }
    }

    #[test]
    fn an_applied_step_leaves_the_steps_below_the_weight_reached_due_after_the_interval() {
        let now = Utc::now();
        let applied = Outcome::Applied { before: routes(50, 50), after: routes(75, 25) };
        let next = after_outcome(&plan(&[25, 10, 0]), &info(), &applied, now);
        assert_eq!(next.remaining, Some(vec![w(10), w(0)]));
        assert_eq!(next.next, Some(plan(&[10, 0])));
        assert_eq!(next.next_at, Some(now + chrono::Duration::seconds(60)));
    }

    #[test]
    fn a_canary_already_at_a_lower_step_skips_the_steps_above_it() {
        let noop = Outcome::NoOp { state: routes(90, 10) };
        let next = after_outcome(&plan(&[25, 10, 0]), &info(), &noop, Utc::now());
        assert_eq!(next.remaining, Some(vec![w(0)]));
        assert_eq!(next.next, Some(plan(&[0])));
    }

    #[test]
    fn the_last_step_ends_the_step_down_and_a_refusal_ends_it_too() {
        let last = Outcome::Applied { before: routes(90, 10), after: routes(100, 0) };
        let done = after_outcome(&plan(&[0]), &info(), &last, Utc::now());
        assert_eq!((done.remaining, done.next, done.next_at), (Some(vec![]), None, None));
        let refused = Outcome::Refused { reason: "gone".into() };
        assert_eq!(after_outcome(&plan(&[10, 0]), &info(), &refused, Utc::now()).remaining, Some(vec![]));
    }

    #[test]
    fn a_failed_step_is_tried_again_after_the_interval() {
        let failed = Outcome::Failed { reason: "503".into() };
        let next = after_outcome(&plan(&[10, 0]), &info(), &failed, Utc::now());
        assert_eq!(next.remaining, Some(vec![w(10), w(0)]));
        assert_eq!(next.next, Some(plan(&[10, 0])));
    }

    #[test]
    fn the_outcome_detail_folds_into_the_next_step_and_the_last_into_none() {
        let applied = Outcome::Applied { before: routes(50, 50), after: routes(75, 25) };
        let recorded = after_outcome(&plan(&[25, 10, 0]), &info(), &applied, Utc::now());
        let (origin, next) = StepDown::from_outcome(&recorded, "r", "ns/vs", Some("e1")).unwrap();
        let next = next.unwrap();
        assert_eq!((origin.as_str(), next.step, next.plan.clone()), ("A1", 2, plan(&[10, 0])));
        let mut zero = next.clone();
        zero.to_zero(Utc::now());
        assert_eq!(zero.plan, plan(&[0]));
        let last = Outcome::Applied { before: routes(90, 10), after: routes(100, 0) };
        let recorded = after_outcome(&plan(&[0]), &next.info(), &last, Utc::now());
        assert_eq!(StepDown::from_outcome(&recorded, "r", "ns/vs", None), Some(("A1".into(), None)));
        assert_eq!(StepDown::from_outcome(&info(), "r", "ns/vs", None), None, "a decided record's: not an outcome");
    }

    #[test]
    fn each_step_is_verified_against_its_own_weight() {
        let verify: VerifySpec = serde_json::from_value(json!({ "query": "q", "max_share": 0.01 })).unwrap();
        let applied = Outcome::Applied { before: routes(50, 50), after: routes(75, 25) };
        let v = verify_for_step(&verify, &applied, &plan(&[25, 10, 0]));
        assert_eq!(((v.max_share * 100.0).round(), v.step_weight), (26.0, Some(25)));
        let last = Outcome::Applied { before: routes(90, 10), after: routes(100, 0) };
        assert_eq!(verify_for_step(&verify, &last, &plan(&[0])).max_share, 0.01);
    }
}
