//! What the on-call page shows first, per target, folded from the log like the rest of the state
//! (so the overview never scans the log): its last action's outcome, and a rollback whose traffic
//! was not seen to move, until a later action on the target is verified or replaces it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::detail::{DuplicatePart, Part};
use crate::audit::{Kind, Record};

/// A target's last action, as its outcome record says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastAction {
    pub action_id: String,
    pub rule: String,
    /// `applied`, `noop`, `refused` or `failed`.
    pub outcome: Kind,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// `verified` or `unverified` once its traffic check ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Kind>,
    /// The object's state as last seen by an action: what an applied action left, or what a
    /// no-op found (the routes of a VirtualService, a Service's selector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen: Option<serde_json::Value>,
}

/// Per target (`namespace/name`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Targets {
    last: BTreeMap<String, LastAction>,
}

impl Targets {
    pub fn observe(&mut self, r: &Record) {
        let e = &r.entry;
        let (Some(target), Some(action_id)) = (&e.target, &e.action_id) else { return };
        match e.kind {
            Kind::Applied | Kind::Noop | Kind::Refused | Kind::Failed
                if !DuplicatePart::read(e.detail.as_ref()).is_some_and(|d| d.duplicate) =>
            {
                let last = LastAction {
                    action_id: action_id.clone(),
                    rule: e.rule.clone().unwrap_or_default(),
                    outcome: e.kind,
                    at: r.time,
                    reason: e.reason.clone(),
                    actor: e.actor.clone(),
                    verification: None,
                    seen: match e.kind {
                        Kind::Applied => e.after.clone(),
                        Kind::Noop => e.before.clone(),
                        // Refused or failed: nothing new was seen; keep what was.
                        _ => self.last.get(target).and_then(|l| l.seen.clone()),
                    },
                };
                self.last.insert(target.clone(), last);
            }
            Kind::Verified | Kind::Unverified => {
                if let Some(last) = self.last.get_mut(target).filter(|l| l.action_id == *action_id) {
                    last.verification = Some(e.kind);
                }
            }
            _ => {}
        }
    }

    /// Every target's last action, by target.
    pub fn last_actions(&self) -> &BTreeMap<String, LastAction> {
        &self.last
    }

    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Entry;

    fn at(kind: Kind, id: &str) -> Record {
        let entry = Entry::new(kind).target("sms-app/model-service").rule("r").action_id(id);
        Record { seq: 0, time: Utc::now(), prev: String::new(), entry }
    }

    #[test]
    fn the_last_outcome_per_target_with_its_verification() {
        let mut t = Targets::default();
        t.observe(&at(Kind::Applied, "A1"));
        t.observe(&at(Kind::Unverified, "A1"));
        let last = &t.last_actions()["sms-app/model-service"];
        assert_eq!((last.action_id.as_str(), last.verification), ("A1", Some(Kind::Unverified)));
        t.observe(&at(Kind::Verified, "OTHER"));
        assert_eq!(t.last_actions()["sms-app/model-service"].verification, Some(Kind::Unverified));
        let duplicate = Record {
            entry: at(Kind::Noop, "A1").entry.detail(DuplicatePart { duplicate: true }.value()),
            ..at(Kind::Noop, "A1")
        };
        t.observe(&duplicate);
        assert_eq!(t.last_actions()["sms-app/model-service"].outcome, Kind::Applied, "a duplicate is not an action");
        t.observe(&at(Kind::Applied, "A2"));
        assert_eq!(t.last_actions()["sms-app/model-service"].verification, None);
        let mut applied = at(Kind::Applied, "A3");
        applied.entry = applied.entry.after(serde_json::json!({"version": "blue"}));
        t.observe(&applied);
        t.observe(&at(Kind::Failed, "A4"));
        let last = &t.last_actions()["sms-app/model-service"];
        assert_eq!((last.outcome, last.seen.clone()), (Kind::Failed, Some(serde_json::json!({"version": "blue"}))));
    }
}
