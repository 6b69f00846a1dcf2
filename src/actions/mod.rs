//! Actions turn a decision into a change of a target: the executor reads the object, decides its
//! new state with a pure function ([`ActionPlan::decide`]), and writes it back conditionally,
//! under a deadline. It reports `Applied`, `NoOp`, `Refused` or `Failed`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub mod flagger;
pub mod rollout;
pub mod service;
pub mod virtualservice;

use crate::target::{ObjectKind, ObjectRef, Target, TargetError};
use service::SelectorSwitch;

/// How often a write that lost a race (the object changed since it was read) is re-read,
/// re-decided and tried again.
const CONFLICT_RETRIES: usize = 3;

/// What an action does to its object, decided by the rules engine and recorded in the
/// `decided` record (so an action a crash interrupted can be finished).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionPlan {
    /// VirtualService weights: rollback, switch, set-weights.
    Traffic(virtualservice::Plan),
    /// Service selector: blue-green switch.
    Selector(SelectorSwitch),
    /// Argo Rollout: abort (`status.abort: true`).
    Abort,
    /// Flagger Canary: answer its rollback webhook with "roll back" for `hold_ms`.
    FlaggerRollback { hold_ms: u64 },
}

impl ActionPlan {
    /// The kind of object the plan changes.
    pub fn kind(&self) -> ObjectKind {
        match self {
            ActionPlan::Traffic(_) => ObjectKind::VirtualService,
            ActionPlan::Selector(_) => ObjectKind::Service,
            ActionPlan::Abort => ObjectKind::Rollout,
            ActionPlan::FlaggerRollback { .. } => ObjectKind::FlaggerCanary,
        }
    }

    pub fn decide(&self, obj: &Value) -> Result<Decided, String> {
        match self {
            ActionPlan::Abort => rollout::abort(obj).map_err(|e| e.to_string()),
            ActionPlan::FlaggerRollback { .. } => flagger::decide(obj),
            ActionPlan::Traffic(plan) => virtualservice::apply(obj, plan).map(Decided::from).map_err(|e| e.to_string()),
            ActionPlan::Selector(sw) => service::switch_selector(obj, sw).map_err(|e| e.to_string()),
        }
    }
}

/// The undo of an applied action on an object of `kind`: the state `before` it put back, if the
/// object is still in the state `after` it left (each kind says what that means).
pub fn undo(
    kind: ObjectKind,
    obj: &Value,
    before: &Value,
    after: &Value,
    target: &ObjectRef,
    action_id: &str,
) -> Result<Decided, String> {
    match kind {
        ObjectKind::VirtualService => {
            virtualservice::undo(obj, before, after, &target.to_string(), action_id).map(Decided::from)
        }
        ObjectKind::Service => service::restore_selector(obj, before, after).map_err(|e| e.to_string()),
        ObjectKind::Rollout => rollout::restore_abort(obj, before, after).map_err(|e| e.to_string()),
        ObjectKind::FlaggerCanary => flagger::undo(target),
    }
}

/// A pure decision on one object.
#[derive(Debug, Clone, PartialEq)]
pub enum Decided {
    /// Already in the desired state: the caller records a no-op and writes nothing.
    Unchanged { state: Value },
    /// The new object, and the state before and after (what `undo` restores).
    Changed { object: Value, before: Value, after: Value },
}

impl From<virtualservice::Transformed> for Decided {
    fn from(o: virtualservice::Transformed) -> Decided {
        match o {
            virtualservice::Transformed::Unchanged { state } => Decided::Unchanged { state: json!(state) },
            virtualservice::Transformed::Changed { object, before, after } => {
                Decided::Changed { object, before: json!(before), after: json!(after) }
            }
        }
    }
}

/// Decides the new state of an object (a plan, or an undo).
pub type Decide<'a> = dyn Fn(&Value) -> Result<Decided, String> + Sync + 'a;

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Applied {
        before: Value,
        after: Value,
    },
    /// Already in the desired state: nothing written.
    NoOp {
        state: Value,
    },
    /// The change makes no sense for this object (missing subset, object not found...).
    Refused {
        reason: String,
    },
    /// The target could not be read or written.
    Failed {
        reason: String,
    },
}

impl Outcome {
    pub fn kind(&self) -> crate::audit::Kind {
        use crate::audit::Kind;
        match self {
            Outcome::Applied { .. } => Kind::Applied,
            Outcome::NoOp { .. } => Kind::Noop,
            Outcome::Refused { .. } => Kind::Refused,
            Outcome::Failed { .. } => Kind::Failed,
        }
    }
}

/// Who and why, written into the object's annotations.
pub struct Meta<'a> {
    pub action_id: &'a str,
    pub rule: &'a str,
    pub at: &'a str,
}

/// backstop's annotations on a changed object, so `kubectl get -o yaml` (or the GitOps diff) says
/// what happened and how to undo it: `backstop.io/action-id`, `backstop.io/rule`, `backstop.io/at`
/// and `backstop.io/previous` (compact JSON of the state before).
pub fn annotate(obj: &mut Value, meta: &Meta<'_>, previous: &Value) {
    let Value::Object(o) = obj else { return };
    let metadata = o.entry("metadata").or_insert_with(|| json!({}));
    if !metadata.is_object() {
        *metadata = json!({});
    }
    let annotations = &mut metadata["annotations"];
    if !annotations.is_object() {
        *annotations = json!({});
    }
    annotations["backstop.io/action-id"] = json!(meta.action_id);
    annotations["backstop.io/rule"] = json!(meta.rule);
    annotations["backstop.io/at"] = json!(meta.at);
    annotations["backstop.io/previous"] = json!(previous.to_string());
}

/// Apply `decide` to the object under `timeout`; `write: false` previews without writing.
pub async fn execute(
    target: &dyn Target,
    obj: &ObjectRef,
    decide: &Decide<'_>,
    meta: &Meta<'_>,
    timeout: Duration,
    write: bool,
) -> Outcome {
    match tokio::time::timeout(timeout, attempt(target, obj, decide, meta, write)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Failed {
            reason: format!(
                "timed out after {} acting on {obj} through {}",
                humantime::format_duration(timeout),
                target.describe()
            ),
        },
    }
}

async fn attempt(target: &dyn Target, obj: &ObjectRef, decide: &Decide<'_>, meta: &Meta<'_>, write: bool) -> Outcome {
    let mut last_conflict = String::new();
    for _ in 0..=CONFLICT_RETRIES {
        let fetched = match target.get(obj).await {
            Ok(f) => f,
            // Retrying cannot help: the object is missing, ambiguous, or not one this target
            // can change (e.g. a Rollout's status in a manifests directory).
            Err(e @ (TargetError::NotFound { .. } | TargetError::Ambiguous { .. } | TargetError::Invalid { .. })) => {
                return Outcome::Refused { reason: e.to_string() };
            }
            Err(e) => return Outcome::Failed { reason: e.to_string() },
        };
        let (mut object, before, after) = match decide(&fetched.object) {
            Ok(Decided::Unchanged { state }) => return Outcome::NoOp { state },
            Ok(Decided::Changed { object, before, after }) => (object, before, after),
            Err(reason) => return Outcome::Refused { reason },
        };
        if !write {
            return Outcome::Applied { before, after };
        }
        annotate(&mut object, meta, &before);
        match target.replace(obj, &fetched, &object).await {
            Ok(()) => return Outcome::Applied { before, after },
            Err(TargetError::Conflict { detail, .. }) => last_conflict = detail,
            // The API server (400/422) or the file format refused the new object.
            Err(e @ TargetError::Invalid { .. }) => return Outcome::Refused { reason: e.to_string() },
            Err(e) => return Outcome::Failed { reason: e.to_string() },
        }
    }
    Outcome::Failed {
        reason: format!("{obj} kept changing while being written ({} attempts): {last_conflict}", CONFLICT_RETRIES + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotate_creates_and_extends_annotations() {
        let meta = Meta { action_id: "A1", rule: "r", at: "2026-11-24T20:00:00Z" };
        let mut obj = json!({"metadata": {"name": "x"}});
        annotate(&mut obj, &meta, &json!([{"route": "primary"}]));
        assert_eq!(obj["metadata"]["annotations"]["backstop.io/action-id"], "A1");
        assert_eq!(obj["metadata"]["annotations"]["backstop.io/previous"], r#"[{"route":"primary"}]"#);
        let mut obj = json!({"metadata": {"annotations": {"team": "ml", "backstop.io/rule": "old"}}});
        annotate(&mut obj, &meta, &json!({}));
        assert_eq!(obj["metadata"]["annotations"]["team"], "ml", "other annotations are kept");
        assert_eq!(obj["metadata"]["annotations"]["backstop.io/rule"], "r", "ours are replaced");
    }

    #[tokio::test]
    async fn an_object_the_target_cannot_change_is_refused_not_failed() {
        let dir = tempfile::tempdir().unwrap();
        let ro =
            "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata:\n  name: model-service\n  namespace: sms-app\n";
        std::fs::write(dir.path().join("rollout.yaml"), ro).unwrap();
        let target = crate::target::manifests::Manifests::new(dir.path());
        let obj = ObjectRef::rollout("sms-app", "model-service");
        let decide = |o: &Value| ActionPlan::Abort.decide(o);
        let meta = Meta { action_id: "A1", rule: "r", at: "2026-11-24T20:00:00Z" };
        let outcome = execute(&target, &obj, &decide, &meta, Duration::from_secs(5), true).await;
        let Outcome::Refused { reason } = outcome else { panic!("{outcome:?}") };
        assert!(reason.contains("needs the kubernetes target"), "{reason}");
    }

    #[test]
    fn plans_round_trip_through_the_audit_record() {
        let plan =
            ActionPlan::Selector(SelectorSwitch { label: "version".into(), from: "green".into(), to: "blue".into() });
        let back: ActionPlan = serde_json::from_value(json!(plan)).unwrap();
        assert_eq!(back, plan);
    }
}
