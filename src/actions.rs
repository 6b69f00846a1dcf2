//! The executor: read the object, decide its new state with a pure function, write it back
//! conditionally, under a deadline. Reports `Applied`, `NoOp`, `Refused` or `Failed`.

use std::time::Duration;

use serde_json::Value;

use crate::istio::{self, Annotations, RouteState, VsError};
use crate::target::{ObjectRef, Target, TargetError};

/// How often a write that lost a race (the object changed since it was read) is re-read,
/// re-decided and tried again.
const CONFLICT_RETRIES: usize = 3;

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Applied {
        before: Vec<RouteState>,
        after: Vec<RouteState>,
    },
    /// Already in the desired state: nothing written.
    NoOp {
        state: Vec<RouteState>,
    },
    /// The change makes no sense for this object (missing subset, bad weights...).
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

/// Apply `decide` to the object under `timeout`; `write: false` previews without writing.
pub async fn execute(
    target: &dyn Target,
    obj: &ObjectRef,
    decide: &(dyn Fn(&Value) -> Result<istio::Outcome, VsError> + Sync),
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

async fn attempt(
    target: &dyn Target,
    obj: &ObjectRef,
    decide: &(dyn Fn(&Value) -> Result<istio::Outcome, VsError> + Sync),
    meta: &Meta<'_>,
    write: bool,
) -> Outcome {
    let mut last_conflict = String::new();
    for _ in 0..=CONFLICT_RETRIES {
        let fetched = match target.get(obj).await {
            Ok(f) => f,
            Err(e @ (TargetError::NotFound { .. } | TargetError::Ambiguous { .. })) => {
                return Outcome::Refused { reason: e.to_string() };
            }
            Err(e) => return Outcome::Failed { reason: e.to_string() },
        };
        let (mut object, before, after) = match decide(&fetched.object) {
            Ok(istio::Outcome::Unchanged { state }) => return Outcome::NoOp { state },
            Ok(istio::Outcome::Changed { object, before, after }) => (object, before, after),
            Err(e) => return Outcome::Refused { reason: e.to_string() },
        };
        if !write {
            return Outcome::Applied { before, after };
        }
        istio::annotate(
            &mut object,
            &Annotations { action_id: meta.action_id, rule: meta.rule, at: meta.at, previous: &before },
        );
        match target.replace(obj, &fetched, &object).await {
            Ok(()) => return Outcome::Applied { before, after },
            Err(TargetError::Conflict { detail, .. }) => last_conflict = detail,
            Err(e) => return Outcome::Failed { reason: e.to_string() },
        }
    }
    Outcome::Failed {
        reason: format!("{obj} kept changing while being written ({} attempts): {last_conflict}", CONFLICT_RETRIES + 1),
    }
}
