//! Argo Rollouts: abort a Rollout the way `kubectl argo rollouts abort` does, by setting
//! `status.abort: true` (the plugin's merge patch `{"status":{"abort":true}}` on the status
//! subresource). The Argo controller then stops progressing, scales the canary (or preview) down
//! and sends all traffic back to the stable ReplicaSet. Pure functions over the object, like
//! [`super::service`]; the Kubernetes target writes the change to `/status`.

use serde_json::{Map, Value, json};

use super::Decided;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ArgoError {
    #[error("{object} is not an Argo Rollout (it is a {kind} of {api_version})")]
    NotARollout { object: String, kind: String, api_version: String },
    #[error(
        "cannot undo on Rollout {object}: it is no longer aborted ({now}); it was retried or promoted since the action, refusing"
    )]
    MovedOn { object: String, now: String },
}

fn name(ro: &Value) -> String {
    format!(
        "{}/{}",
        ro["metadata"]["namespace"].as_str().unwrap_or("default"),
        ro["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn check(ro: &Value) -> Result<(), ArgoError> {
    let api_version = ro["apiVersion"].as_str().unwrap_or("");
    if ro["kind"] == "Rollout" && api_version.starts_with("argoproj.io/") {
        return Ok(());
    }
    Err(ArgoError::NotARollout {
        object: name(ro),
        kind: ro["kind"].as_str().unwrap_or("object without a kind").to_string(),
        api_version: if api_version.is_empty() { "no apiVersion".into() } else { api_version.to_string() },
    })
}

fn aborted(ro: &Value) -> bool {
    ro["status"]["abort"] == Value::Bool(true)
}

/// `status.abort` and the given status fields, as far as the Rollout has them.
fn state(ro: &Value, fields: &[&str]) -> Value {
    let mut out = Map::new();
    out.insert("abort".into(), Value::Bool(aborted(ro)));
    for f in fields {
        if let Some(v) = ro["status"].get(*f).filter(|v| !v.is_null()) {
            out.insert((*f).into(), v.clone());
        }
    }
    Value::Object(out)
}

/// The Rollout with `status.abort: true`; `Unchanged` when it is aborted already.
pub fn abort(rollout: &Value) -> Result<Decided, ArgoError> {
    check(rollout)?;
    if aborted(rollout) {
        return Ok(Decided::Unchanged { state: state(rollout, &["phase", "message"]) });
    }
    let before = state(rollout, &["phase"]);
    let mut object = rollout.clone();
    set_abort(&mut object, true);
    Ok(Decided::Changed { object, before, after: json!({"abort": true}) })
}

/// Undo [`abort`]: `status.abort` back to what it was (`false`), only while the Rollout is still
/// aborted as the action (`after`) left it; a Rollout retried or promoted since has moved on.
pub fn restore_abort(rollout: &Value, before: &Value, after: &Value) -> Result<Decided, ArgoError> {
    check(rollout)?;
    let now = aborted(rollout);
    let previous = before["abort"].as_bool().unwrap_or(false);
    let left = after["abort"].as_bool().unwrap_or(true);
    if now != left {
        let now = state(rollout, &["phase", "message"]);
        return Err(ArgoError::MovedOn { object: name(rollout), now: now.to_string() });
    }
    if now == previous {
        return Ok(Decided::Unchanged { state: state(rollout, &["phase"]) });
    }
    let mut object = rollout.clone();
    set_abort(&mut object, previous);
    Ok(Decided::Changed { object, before: state(rollout, &["phase"]), after: json!({ "abort": previous }) })
}

fn set_abort(ro: &mut Value, abort: bool) {
    if !ro["status"].is_object() {
        ro["status"] = json!({});
    }
    ro["status"]["abort"] = Value::Bool(abort);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(status: Value) -> Value {
        json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
               "metadata": {"name": "model-service", "namespace": "sms-app", "resourceVersion": "7"},
               "spec": {"replicas": 3, "strategy": {"canary": {"steps": [{"setWeight": 10}, {"pause": {}}]}}},
               "status": status})
    }

    #[test]
    fn abort_sets_status_abort_and_keeps_everything_else() {
        let ro = rollout(json!({"phase": "Paused", "message": "CanaryPauseStep", "currentStepIndex": 1}));
        let Decided::Changed { object, before, after } = abort(&ro).unwrap() else { panic!() };
        let mut expected = ro.clone();
        expected["status"]["abort"] = true.into();
        assert_eq!(object, expected);
        assert_eq!(before, json!({"abort": false, "phase": "Paused"}));
        assert_eq!(after, json!({"abort": true}));

        let ro = rollout(json!({"abort": false}));
        let Decided::Changed { before, .. } = abort(&ro).unwrap() else { panic!() };
        assert_eq!(before, json!({"abort": false}));

        // A Rollout the controller has not reconciled yet has no status at all.
        let mut fresh = rollout(Value::Null);
        fresh.as_object_mut().unwrap().remove("status");
        let Decided::Changed { object, .. } = abort(&fresh).unwrap() else { panic!() };
        assert_eq!(object["status"], json!({"abort": true}));
    }

    #[test]
    fn an_aborted_rollout_is_unchanged() {
        let ro = rollout(
            json!({"abort": true, "phase": "Degraded", "message": "RolloutAborted: Rollout aborted update to revision 2", "abortedAt": "2026-11-24T20:00:00Z"}),
        );
        assert_eq!(
            abort(&ro).unwrap(),
            Decided::Unchanged {
                state: json!({"abort": true, "phase": "Degraded", "message": "RolloutAborted: Rollout aborted update to revision 2"})
            }
        );
    }

    #[test]
    fn anything_but_a_rollout_is_an_error_naming_it() {
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "checkout", "namespace": "shop"}});
        assert_eq!(
            abort(&svc).unwrap_err().to_string(),
            "shop/checkout is not an Argo Rollout (it is a Service of v1)"
        );
        let mut other = rollout(json!({}));
        other["apiVersion"] = "example.com/v1".into();
        assert!(matches!(abort(&other), Err(ArgoError::NotARollout { .. })));
        assert!(matches!(restore_abort(&svc, &json!({}), &json!({})), Err(ArgoError::NotARollout { .. })));
    }

    #[test]
    fn restore_clears_the_abort_unless_the_rollout_moved_on() {
        let ro = rollout(json!({"phase": "Paused"}));
        let Decided::Changed { object: aborted, before, after } = abort(&ro).unwrap() else { panic!() };
        let Decided::Changed { object: restored, before: b, after: a } =
            restore_abort(&aborted, &before, &after).unwrap()
        else {
            panic!()
        };
        assert_eq!(restored["status"], json!({"phase": "Paused", "abort": false}));
        assert_eq!((b, a), (json!({"abort": true, "phase": "Paused"}), json!({"abort": false})));

        // Retried (`kubectl argo rollouts retry` sets abort to false) or promoted since: refused.
        let err = restore_abort(&restored, &before, &after).unwrap_err();
        assert!(matches!(err, ArgoError::MovedOn { .. }), "{err}");
        assert!(err.to_string().starts_with("cannot undo on Rollout sms-app/model-service: it is no longer aborted"));
    }
}
