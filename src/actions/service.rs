//! Blue-green by Service selector (the form Argo Rollouts uses): a Kubernetes Service whose
//! selector label moves between two values, e.g. `version: blue` to `version: green`. Pure
//! functions over the object, like [`super::virtualservice`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Decided;

/// Move the Service's selector `label` from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectorSwitch {
    pub label: String,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServiceError {
    #[error("{object} is not a Service with a selector")]
    NoSelector { object: String },
    #[error("Service {object} selects {label}={found}, neither {from} nor {to}; refusing to switch")]
    Neither { object: String, label: String, found: String, from: String, to: String },
    #[error("Service {object} has no selector label {label}; its selector is {selector}")]
    NoLabel { object: String, label: String, selector: String },
    #[error("cannot undo on Service {object}: its selector is {now}, not {expected} as the action left it; refusing")]
    MovedOn { object: String, now: String, expected: String },
}

fn name(svc: &Value) -> String {
    format!(
        "{}/{}",
        svc["metadata"]["namespace"].as_str().unwrap_or("default"),
        svc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn selector(svc: &Value) -> Result<&serde_json::Map<String, Value>, ServiceError> {
    match (&svc["kind"], &svc["spec"]["selector"]) {
        (Value::String(k), Value::Object(sel)) if k == "Service" => Ok(sel),
        _ => Err(ServiceError::NoSelector { object: name(svc) }),
    }
}

/// The selector after the switch; `Unchanged` when it already selects `to`.
pub fn switch_selector(svc: &Value, sw: &SelectorSwitch) -> Result<Decided, ServiceError> {
    let sel = selector(svc)?;
    let before = Value::Object(sel.clone());
    match sel.get(&sw.label).and_then(Value::as_str) {
        Some(v) if v == sw.to => Ok(Decided::Unchanged { state: before }),
        Some(v) if v == sw.from => {
            let mut object = svc.clone();
            object["spec"]["selector"][&sw.label] = Value::String(sw.to.clone());
            let after = object["spec"]["selector"].clone();
            Ok(Decided::Changed { object, before, after })
        }
        Some(v) => Err(ServiceError::Neither {
            object: name(svc),
            label: sw.label.clone(),
            found: v.to_string(),
            from: sw.from.clone(),
            to: sw.to.clone(),
        }),
        None => Err(ServiceError::NoLabel { object: name(svc), label: sw.label.clone(), selector: before.to_string() }),
    }
}

/// Put back the selector `previous`, if the Service still selects what the action left (`after`).
pub fn restore_selector(svc: &Value, previous: &Value, after: &Value) -> Result<Decided, ServiceError> {
    let sel = Value::Object(selector(svc)?.clone());
    if sel == *previous {
        return Ok(Decided::Unchanged { state: sel });
    }
    if sel != *after {
        return Err(ServiceError::MovedOn { object: name(svc), now: sel.to_string(), expected: after.to_string() });
    }
    let mut object = svc.clone();
    object["spec"]["selector"] = previous.clone();
    Ok(Decided::Changed { object, before: sel, after: previous.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(version: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "checkout", "namespace": "shop"},
               "spec": {"selector": {"app": "checkout", "version": version}, "ports": [{"port": 80}]}})
    }

    fn sw() -> SelectorSwitch {
        SelectorSwitch { label: "version".into(), from: "green".into(), to: "blue".into() }
    }

    #[test]
    fn switch_moves_the_label_and_keeps_everything_else() {
        let Decided::Changed { object, before, after } = switch_selector(&svc("green"), &sw()).unwrap() else {
            panic!()
        };
        assert_eq!(object, svc("blue"));
        assert_eq!(before, json!({"app": "checkout", "version": "green"}));
        assert_eq!(after, json!({"app": "checkout", "version": "blue"}));
    }

    #[test]
    fn already_switched_is_unchanged() {
        assert!(matches!(switch_selector(&svc("blue"), &sw()).unwrap(), Decided::Unchanged { .. }));
    }

    #[test]
    fn a_third_value_or_missing_label_is_refused() {
        let err = switch_selector(&svc("canary"), &sw()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Service shop/checkout selects version=canary, neither green nor blue; refusing to switch"
        );
        let sw = SelectorSwitch { label: "color".into(), ..sw() };
        assert!(matches!(switch_selector(&svc("green"), &sw), Err(ServiceError::NoLabel { .. })));
        assert!(matches!(switch_selector(&json!({"kind": "Service"}), &sw), Err(ServiceError::NoSelector { .. })));
    }

    #[test]
    fn restore_puts_the_selector_back_unless_it_moved_on() {
        let Decided::Changed { object, before, after } = switch_selector(&svc("green"), &sw()).unwrap() else {
            panic!()
        };
        let Decided::Changed { object: restored, .. } = restore_selector(&object, &before, &after).unwrap() else {
            panic!()
        };
        assert_eq!(restored, svc("green"));
        assert!(matches!(restore_selector(&restored, &before, &after).unwrap(), Decided::Unchanged { .. }));
        assert!(matches!(restore_selector(&svc("canary"), &before, &after), Err(ServiceError::MovedOn { .. })));
    }
}
