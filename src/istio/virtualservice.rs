//! Pure decisions on an Istio VirtualService's HTTP traffic weights: roll a canary back, switch
//! blue-green, or set explicit weights. Only `spec.http[*].route[*]` ever changes; every other
//! field of the object is kept exactly as it was.

use std::{fmt, iter, mem};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A traffic weight 0..=100; cannot be constructed out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64")]
pub struct Weight(u8);

impl Weight {
    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u64> for Weight {
    type Error = VsError;

    fn try_from(value: u64) -> Result<Self, VsError> {
        match u8::try_from(value) {
            Ok(weight) if weight <= 100 => Ok(Self(weight)),
            _ => Err(VsError::WeightOutOfRange(value)),
        }
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How a rule names a destination: by DestinationRule subset, or by host (canaries deployed as
/// their own service, e.g. `reviews-canary`). Serialized as `{"subset": "v2"}` or `{"host": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dest {
    Subset(String),
    Host(String),
}

impl Dest {
    fn matches(&self, dest: &DestState) -> bool {
        match self {
            Self::Subset(subset) => dest.subset.as_ref() == Some(subset),
            Self::Host(host) => dest.host == *host,
        }
    }

    /// Makes `dest` name this destination, keeping its other field.
    fn assign(&self, dest: &mut DestState) {
        match self {
            Self::Subset(subset) => dest.subset = Some(subset.clone()),
            Self::Host(host) => dest.host.clone_from(host),
        }
    }
}

impl fmt::Display for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Subset(subset) => write!(f, "subset {subset}"),
            Self::Host(host) => write!(f, "host {host}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Canary destinations go to weight 0; the stable one absorbs their weight.
    Rollback { stable: Dest, canary: Vec<Dest> },
    /// Blue-green: all traffic of `from` moves to `to`. In a route that also carries `to`, the
    /// weight moves; otherwise the `from` destination is rewritten to `to` (subset or host).
    Switch { from: Dest, to: Dest },
    /// Explicit weights for named destinations; every route touched must sum to 100 afterwards.
    SetWeights { weights: Vec<(Dest, Weight)> },
    /// One step of a gradual rollback. `steps` are the canary weights still to go, strictly
    /// decreasing and ending at 0: in every route carrying the canary, its weight goes down to
    /// the first listed step at or below it, and the stable destination absorbs the difference.
    /// A weight is never raised, and applying the same step twice changes nothing.
    StepDown { stable: Dest, canary: Dest, steps: Vec<Weight> },
}

/// The first of `steps` (strictly decreasing) at or below `weight`; 0 when none is.
pub fn step_at_or_below(steps: &[Weight], weight: u32) -> u32 {
    steps.iter().map(|s| u32::from(s.get())).find(|s| *s <= weight).unwrap_or(0)
}

/// The highest weight the canary has in `routes` (0 when no route carries it).
pub fn canary_weight(routes: &[RouteState], canary: &Dest) -> u32 {
    routes
        .iter()
        .map(|r| r.destinations.iter().filter(|d| canary.matches(d)).map(|d| d.weight).sum::<u32>())
        .max()
        .unwrap_or(0)
}

impl Change {
    /// Every destination the change names.
    fn named(&self) -> Vec<&Dest> {
        match self {
            Self::Rollback { stable, canary } => iter::once(stable).chain(canary).collect(),
            Self::Switch { from, to } => vec![from, to],
            Self::SetWeights { weights } => weights.iter().map(|(dest, _)| dest).collect(),
            Self::StepDown { stable, canary, .. } => vec![stable, canary],
        }
    }

    fn apply_to(&self, object: &str, route: &mut RouteState) -> Result<(), VsError> {
        match self {
            Self::Rollback { stable, canary } => {
                let is_canary = |d: &DestState| canary.iter().any(|c| c.matches(d));
                let Some(found) = canary.iter().find(|c| route.carries(c)) else {
                    return Ok(());
                };
                let Some(target) = route.destinations.iter().position(|d| stable.matches(d) && !is_canary(d)) else {
                    return Err(VsError::StableMissing {
                        object: object.to_owned(),
                        route: route.route.clone(),
                        stable: stable.clone(),
                        canary: found.clone(),
                    });
                };
                let moved: u32 =
                    route.destinations.iter_mut().filter(|d| is_canary(d)).map(|d| mem::take(&mut d.weight)).sum();
                route.destinations[target].weight += moved;
            }
            Self::Switch { from, to } => {
                let target = route.destinations.iter().position(|d| to.matches(d));
                let mut moved = 0;
                for (i, dest) in route.destinations.iter_mut().enumerate() {
                    if Some(i) == target || !from.matches(dest) {
                        continue;
                    }
                    match target {
                        Some(_) => moved += mem::take(&mut dest.weight),
                        None => to.assign(dest),
                    }
                }
                if let Some(target) = target {
                    route.destinations[target].weight += moved;
                }
            }
            Self::SetWeights { weights } => {
                for dest in &mut route.destinations {
                    if let Some((_, weight)) = weights.iter().find(|(named, _)| named.matches(dest)) {
                        dest.weight = weight.get().into();
                    }
                }
            }
            Self::StepDown { stable, canary, steps } => {
                if !route.carries(canary) {
                    return Ok(());
                }
                let now: u32 = route.destinations.iter().filter(|d| canary.matches(d)).map(|d| d.weight).sum();
                let mut excess = now - step_at_or_below(steps, now);
                if excess == 0 {
                    return Ok(());
                }
                let Some(target) = route.destinations.iter().position(|d| stable.matches(d) && !canary.matches(d))
                else {
                    return Err(VsError::StableMissing {
                        object: object.to_owned(),
                        route: route.route.clone(),
                        stable: stable.clone(),
                        canary: canary.clone(),
                    });
                };
                route.destinations[target].weight += excess;
                for dest in route.destinations.iter_mut().filter(|d| canary.matches(d)) {
                    let take = dest.weight.min(excess);
                    dest.weight -= take;
                    excess -= take;
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub change: Change,
    /// `None`: every HTTP route that carries a destination the change names; `Some`: only the
    /// HTTP routes with these names (each must exist).
    pub routes: Option<Vec<String>>,
}

/// One destination of a route with its effective weight (Istio: a lone destination without a
/// weight gets 100; in a route of several destinations an omitted weight is 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestState {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteState {
    /// The route's name, or `http[i]` when it has none.
    pub route: String,
    pub destinations: Vec<DestState>,
}

impl RouteState {
    fn carries(&self, dest: &Dest) -> bool {
        self.destinations.iter().any(|d| dest.matches(d))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Already in the desired state (`state`: the routes concerned): record a noop, write nothing.
    Unchanged { state: Vec<RouteState> },
    /// The new object; `before` and `after` hold the routes that changed.
    Changed { object: Value, before: Vec<RouteState>, after: Vec<RouteState> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VsError {
    #[error("{object} is not a VirtualService with HTTP routes: {reason}")]
    NotHttpVirtualService { object: String, reason: String },
    #[error("{object}: {path} is {found}, expected {expected}")]
    Malformed { object: String, path: String, found: String, expected: &'static str },
    #[error("{object} has no HTTP route named {route:?}; its HTTP routes are: {known}")]
    NoSuchRoute { object: String, route: String, known: String },
    #[error("{dest} is not a destination of any HTTP route of {object}; routes carry: {carried}")]
    NoSuchDestination { object: String, dest: Dest, carried: String },
    #[error("route {route} of {object} carries canary {canary} but not stable {stable}; refusing to roll back")]
    StableMissing { object: String, route: String, stable: Dest, canary: Dest },
    #[error("route {route} of {object}: weights would sum to {sum} after the change; they must sum to 100")]
    BadSum { object: String, route: String, sum: u64 },
    #[error(
        "cannot undo action {action} on {object}: its routes are no longer as that action left them (now: {now}); refusing"
    )]
    MovedOn { object: String, action: String, now: String },
    #[error("weight {0} is out of range 0..=100")]
    WeightOutOfRange(u64),
    #[error("cannot undo on {object}: route {route} no longer exists; the object changed since, undo is not safe")]
    UndoRouteGone { object: String, route: String },
    #[error(
        "cannot undo on {object}: route {route} has {now} destinations, {recorded} were recorded; \
         the object changed since, undo is not safe"
    )]
    UndoShapeChanged { object: String, route: String, now: usize, recorded: usize },
}

/// Decides the new state of `vs` for `plan`.
pub fn apply(vs: &Value, plan: &Plan) -> Result<Outcome, VsError> {
    let object = object_id(vs);
    let before = routes(vs)?;
    let selected = select(&object, &before, plan.routes.as_deref())?;
    let carried = |dest: &Dest| selected.iter().any(|&i| before[i].carries(dest));
    let missing = match &plan.change {
        Change::Rollback { canary, .. } => canary.iter().find(|d| !carried(d)),
        Change::Switch { from, to } => (!carried(from) && !carried(to)).then_some(from),
        Change::SetWeights { weights } => weights.iter().map(|(d, _)| d).find(|d| !carried(d)),
        Change::StepDown { canary, .. } => (!carried(canary)).then_some(canary),
    };
    if let Some(dest) = missing {
        let carried = carried_list(selected.iter().map(|&i| &before[i]), dest);
        return Err(VsError::NoSuchDestination { object, dest: dest.clone(), carried });
    }
    let named = plan.change.named();
    let scope: Vec<usize> = selected.into_iter().filter(|&i| named.iter().any(|d| before[i].carries(d))).collect();
    let mut after = before.clone();
    for &i in &scope {
        plan.change.apply_to(&object, &mut after[i])?;
    }
    finish(vs, &object, &before, &after, &scope)
}

/// Puts back a previously recorded state (for undo): per listed route, the destinations get host,
/// subset and weight back by position.
pub fn restore(vs: &Value, previous: &[RouteState]) -> Result<Outcome, VsError> {
    let object = object_id(vs);
    let before = routes(vs)?;
    let mut after = before.clone();
    let mut scope = Vec::new();
    for prev in previous {
        let Some(i) = before.iter().position(|r| r.route == prev.route) else {
            return Err(VsError::UndoRouteGone { object, route: prev.route.clone() });
        };
        let (now, recorded) = (before[i].destinations.len(), prev.destinations.len());
        if now != recorded {
            return Err(VsError::UndoShapeChanged { object, route: prev.route.clone(), now, recorded });
        }
        after[i] = prev.clone();
        scope.push(i);
    }
    scope.sort_unstable();
    scope.dedup();
    finish(vs, &object, &before, &after, &scope)
}

/// Current state of all HTTP routes, in order (a route without destinations, e.g. a redirect,
/// has an empty list).
pub fn routes(vs: &Value) -> Result<Vec<RouteState>, VsError> {
    let object = object_id(vs);
    let not_http = |reason: String| VsError::NotHttpVirtualService { object: object.clone(), reason };
    let kind = vs.get("kind").unwrap_or(&Value::Null);
    if kind != "VirtualService" {
        return Err(not_http(format!("kind is {kind}")));
    }
    let http = vs.pointer("/spec/http").ok_or_else(|| not_http("it has no spec.http".to_owned()))?;
    let http = http.as_array().ok_or_else(|| malformed(&object, "spec.http".to_owned(), Some(http), "an array"))?;
    http.iter().enumerate().map(|(i, route)| parse_route(&object, i, route)).collect()
}

/// `namespace/name` for messages.
fn object_id(vs: &Value) -> String {
    let field = |key| vs.pointer(key).and_then(Value::as_str).unwrap_or("?");
    format!("{}/{}", field("/metadata/namespace"), field("/metadata/name"))
}

fn malformed(object: &str, path: String, found: Option<&Value>, expected: &'static str) -> VsError {
    let found = found.map_or_else(|| "missing".to_owned(), Value::to_string);
    VsError::Malformed { object: object.to_owned(), path, found, expected }
}

fn parse_route(object: &str, i: usize, http: &Value) -> Result<RouteState, VsError> {
    let path = format!("spec.http[{i}]");
    let route = match http.get("name") {
        None => format!("http[{i}]"),
        Some(name) => {
            name.as_str().ok_or_else(|| malformed(object, format!("{path}.name"), Some(name), "a string"))?.to_owned()
        }
    };
    let entries = match http.get("route") {
        None => &[][..],
        Some(entries) => {
            entries.as_array().ok_or_else(|| malformed(object, format!("{path}.route"), Some(entries), "an array"))?
        }
    };
    let destinations = entries
        .iter()
        .enumerate()
        .map(|(j, entry)| parse_dest(object, &format!("{path}.route[{j}]"), entry, entries.len() == 1))
        .collect::<Result<_, _>>()?;
    Ok(RouteState { route, destinations })
}

fn parse_dest(object: &str, path: &str, entry: &Value, alone: bool) -> Result<DestState, VsError> {
    let string = |key: &str| {
        let value = entry.pointer(&format!("/destination/{key}"));
        let path = || format!("{path}.destination.{key}");
        value.map(|v| v.as_str().map(str::to_owned).ok_or_else(|| malformed(object, path(), value, "a string")))
    };
    let host = string("host")
        .unwrap_or_else(|| Err(malformed(object, format!("{path}.destination.host"), None, "a string")))?;
    let subset = string("subset").transpose()?;
    let weight = match entry.get("weight") {
        None if alone => 100,
        None => 0,
        Some(weight) => weight
            .as_u64()
            .and_then(|w| Weight::try_from(w).ok())
            .ok_or_else(|| malformed(object, format!("{path}.weight"), Some(weight), "an integer 0..=100"))?
            .get()
            .into(),
    };
    Ok(DestState { host, subset, weight })
}

/// Indices of the routes named in `names` (all when `None`).
fn select(object: &str, routes: &[RouteState], names: Option<&[String]>) -> Result<Vec<usize>, VsError> {
    let Some(names) = names else {
        return Ok((0..routes.len()).collect());
    };
    let mut selected = names
        .iter()
        .map(|name| {
            routes.iter().position(|r| r.route == *name).ok_or_else(|| VsError::NoSuchRoute {
                object: object.to_owned(),
                route: name.clone(),
                known: routes.iter().map(|r| r.route.as_str()).collect::<Vec<_>>().join(", "),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    selected.sort_unstable();
    selected.dedup();
    Ok(selected)
}

/// The destinations `routes` carry, named the way `like` is (by subset or by host).
fn carried_list<'a>(routes: impl Iterator<Item = &'a RouteState>, like: &Dest) -> String {
    let mut names: Vec<String> = routes
        .flat_map(|r| &r.destinations)
        .filter_map(|d| match like {
            Dest::Subset(_) => d.subset.clone().map(Dest::Subset),
            Dest::Host(_) => Some(Dest::Host(d.host.clone())),
        })
        .map(|d| d.to_string())
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() { "none".to_owned() } else { names.join(", ") }
}

/// Checks and writes the routes in `scope` that differ between `before` and `after`.
fn finish(
    vs: &Value,
    object: &str,
    before: &[RouteState],
    after: &[RouteState],
    scope: &[usize],
) -> Result<Outcome, VsError> {
    let changed: Vec<usize> = scope.iter().copied().filter(|&i| before[i] != after[i]).collect();
    if changed.is_empty() {
        return Ok(Outcome::Unchanged { state: scope.iter().map(|&i| before[i].clone()).collect() });
    }
    let mut new = vs.clone();
    for &i in &changed {
        let sum = after[i].destinations.iter().map(|d| u64::from(d.weight)).sum();
        if sum != 100 {
            return Err(VsError::BadSum { object: object.to_owned(), route: after[i].route.clone(), sum });
        }
        for (j, (old, dest)) in before[i].destinations.iter().zip(&after[i].destinations).enumerate() {
            if let Some(entry) = new.pointer_mut(&format!("/spec/http/{i}/route/{j}")) {
                write_dest(entry, old, dest);
            }
        }
    }
    let pick = |states: &[RouteState]| changed.iter().map(|&i| states[i].clone()).collect();
    Ok(Outcome::Changed { object: new, before: pick(before), after: pick(after) })
}

/// Writes the fields of `new` that differ from `old` into a `route[]` entry.
fn write_dest(entry: &mut Value, old: &DestState, new: &DestState) {
    let Some(entry) = entry.as_object_mut() else {
        return;
    };
    if old.weight != new.weight {
        entry.insert("weight".to_owned(), new.weight.into());
    }
    let Some(dest) = entry.get_mut("destination").and_then(Value::as_object_mut) else {
        return;
    };
    if old.host != new.host {
        dest.insert("host".to_owned(), new.host.clone().into());
    }
    if old.subset != new.subset {
        match &new.subset {
            Some(subset) => dest.insert("subset".to_owned(), subset.clone().into()),
            None => dest.remove("subset"),
        };
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, sync::LazyLock};

    use serde_json::json;

    use super::super::testing;
    use super::*;

    /// The VirtualService `v1` schema of the Istio CRDs vendored in the repository's `crds/`.
    /// Unknown keywords such as `x-kubernetes-*` and `nullable` are ignored by the validator.
    static CRD: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/istio-networking.yaml");
        let text = std::fs::read_to_string(path).expect("readable CRD file");
        let schema = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|doc| Value::deserialize(doc).expect("CRD YAML"))
            .find(|crd| crd["metadata"]["name"] == "virtualservices.networking.istio.io")
            .and_then(|crd| {
                let versions = crd["spec"]["versions"].as_array()?;
                versions.iter().find(|v| v["name"] == "v1")?.pointer("/schema/openAPIV3Schema").cloned()
            })
            .expect("VirtualService v1 schema in the CRD file");
        jsonschema::validator_for(&schema).expect("CRD schema compiles")
    });

    /// Unpacks a `Changed` outcome, checking its object against the CRD schema: every changed
    /// object of these tests goes through here.
    fn changed(outcome: Result<Outcome, VsError>) -> (Value, Vec<RouteState>, Vec<RouteState>) {
        match outcome {
            Ok(Outcome::Changed { object, before, after }) => {
                let errors: Vec<String> = CRD.iter_errors(&object).map(|e| e.to_string()).collect();
                assert!(errors.is_empty(), "not a valid VirtualService: {errors:?}\n{object:#}");
                (object, before, after)
            }
            other => panic!("expected a change, got {other:?}"),
        }
    }

    fn assert_unchanged(vs: &Value, plan: &Plan) {
        assert!(matches!(apply(vs, plan), Ok(Outcome::Unchanged { .. })), "{:?}", apply(vs, plan));
    }

    fn error(outcome: Result<Outcome, VsError>) -> String {
        outcome.expect_err("expected an error").to_string()
    }

    fn subset(name: &str) -> Dest {
        Dest::Subset(name.to_owned())
    }

    fn host(name: &str) -> Dest {
        Dest::Host(name.to_owned())
    }

    fn weight(w: u64) -> Weight {
        Weight::try_from(w).expect("weight in range")
    }

    fn everywhere(change: Change) -> Plan {
        Plan { change, routes: None }
    }

    fn rollback_v2() -> Plan {
        everywhere(Change::Rollback { stable: subset("v1"), canary: vec![subset("v2")] })
    }

    /// Effective weights of each HTTP route.
    fn weights(vs: &Value) -> Vec<Vec<u32>> {
        let routes = routes(vs).expect("routes");
        routes.iter().map(|r| r.destinations.iter().map(|d| d.weight).collect()).collect()
    }

    const MS: &str = "model-service";

    #[test]
    fn rollback_turns_90_10_into_100_0() {
        let vs = testing::test().weights(90, 10).build();
        let (object, before, after) = changed(apply(&vs, &rollback_v2()));
        assert_eq!(object, testing::test().weights(100, 0).build());
        assert_eq!(weights(&vs), [[90, 10]]);
        assert_eq!(before, routes(&vs).unwrap());
        assert_eq!(after, routes(&object).unwrap());
    }

    #[test]
    fn rollback_of_a_rolled_back_object_is_unchanged() {
        let (object, _, _) = changed(apply(&testing::test().weights(90, 10).build(), &rollback_v2()));
        let outcome = apply(&object, &rollback_v2());
        assert_eq!(outcome, Ok(Outcome::Unchanged { state: routes(&object).unwrap() }));
    }

    #[test]
    fn rollback_changes_only_routes_carrying_the_canary() {
        let vs = testing::test()
            .route(Some("a"), &[(MS, Some("v1"), Some(90)), (MS, Some("v2"), Some(10))])
            .route(Some("b"), &[(MS, Some("v1"), None)])
            .route(Some("c"), &[(MS, Some("v1"), Some(50)), (MS, Some("v3"), Some(50))])
            .build();
        let (object, before, after) = changed(apply(&vs, &rollback_v2()));
        assert_eq!(weights(&object), [vec![100, 0], vec![100], vec![50, 50]]);
        assert_eq!(object["spec"]["http"][1], vs["spec"]["http"][1]);
        assert_eq!(object["spec"]["http"][2], vs["spec"]["http"][2]);
        assert_eq!(before.iter().map(|r| &r.route).collect::<Vec<_>>(), ["a"]);
        assert_eq!(after.iter().map(|r| &r.route).collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn named_routes_limit_the_change() {
        let vs = testing::test()
            .route(Some("a"), &[(MS, Some("v1"), Some(90)), (MS, Some("v2"), Some(10))])
            .route(Some("b"), &[(MS, Some("v1"), Some(90)), (MS, Some("v2"), Some(10))])
            .build();
        let plan = Plan { routes: Some(vec!["b".to_owned()]), ..rollback_v2() };
        let (object, _, _) = changed(apply(&vs, &plan));
        assert_eq!(weights(&object), [[90, 10], [100, 0]]);
    }

    #[test]
    fn unknown_named_route_is_an_error() {
        let vs = testing::test().route(Some("a"), &[(MS, Some("v1"), None)]).weights(90, 10).build();
        let plan = Plan { routes: Some(vec!["a".to_owned(), "c".to_owned()]), ..rollback_v2() };
        assert_eq!(
            error(apply(&vs, &plan)),
            r#"sms-app/model-service has no HTTP route named "c"; its HTTP routes are: a, http[1]"#
        );
    }

    #[test]
    fn rollback_with_three_destinations_stable_absorbs_and_third_is_untouched() {
        let vs = testing::test()
            .route(None, &[(MS, Some("v1"), Some(80)), (MS, Some("v2"), Some(15)), (MS, Some("v3"), Some(5))])
            .build();
        let (object, _, _) = changed(apply(&vs, &rollback_v2()));
        assert_eq!(weights(&object), [[95, 0, 5]]);
        assert_eq!(object["spec"]["http"][0]["route"][2], vs["spec"]["http"][0]["route"][2]);
    }

    #[test]
    fn rollback_of_canaries_by_host() {
        let vs = testing::test()
            .route(
                None,
                &[("reviews", None, Some(70)), ("reviews-canary", None, Some(20)), ("reviews-exp", None, Some(10))],
            )
            .build();
        let plan = everywhere(Change::Rollback {
            stable: host("reviews"),
            canary: vec![host("reviews-canary"), host("reviews-exp")],
        });
        let (object, _, _) = changed(apply(&vs, &plan));
        assert_eq!(weights(&object), [[100, 0, 0]]);
        assert_unchanged(&object, &plan);
    }

    #[test]
    fn rollback_without_the_stable_destination_in_the_route_is_an_error() {
        let vs = testing::test().weights(90, 10).route(Some("beta"), &[(MS, Some("v2"), None)]).build();
        assert_eq!(
            error(apply(&vs, &rollback_v2())),
            "route beta of sms-app/model-service carries canary subset v2 but not stable subset v1; \
             refusing to roll back"
        );
    }

    #[test]
    fn switch_rewrites_the_subset_of_a_single_destination() {
        let vs = testing::test().route(Some("main"), &[(MS, Some("blue"), None)]).build();
        let plan = everywhere(Change::Switch { from: subset("blue"), to: subset("green") });
        let (object, _, after) = changed(apply(&vs, &plan));
        assert_eq!(object, testing::test().route(Some("main"), &[(MS, Some("green"), None)]).build());
        assert_eq!(
            after,
            [RouteState {
                route: "main".to_owned(),
                destinations: vec![DestState { host: MS.to_owned(), subset: Some("green".to_owned()), weight: 100 }],
            }]
        );
        assert_unchanged(&object, &plan);
    }

    #[test]
    fn switch_rewrites_the_host_of_a_single_destination() {
        let vs = testing::test().route(None, &[("model-blue", None, Some(100))]).build();
        let plan = everywhere(Change::Switch { from: host("model-blue"), to: host("model-green") });
        let (object, _, _) = changed(apply(&vs, &plan));
        assert_eq!(object, testing::test().route(None, &[("model-green", None, Some(100))]).build());
        assert_unchanged(&object, &plan);
    }

    #[test]
    fn switch_moves_all_weight_between_two_weighted_destinations() {
        let vs = testing::test().route(None, &[(MS, Some("blue"), Some(100)), (MS, Some("green"), Some(0))]).build();
        let plan = everywhere(Change::Switch { from: subset("blue"), to: subset("green") });
        let (object, _, _) = changed(apply(&vs, &plan));
        assert_eq!(weights(&object), [[0, 100]]);
        assert_unchanged(&object, &plan);
    }

    #[test]
    fn set_weights_writes_the_named_weights() {
        let vs = testing::test().weights(90, 10).build();
        let plan =
            everywhere(Change::SetWeights { weights: vec![(subset("v1"), weight(50)), (subset("v2"), weight(50))] });
        let (object, _, _) = changed(apply(&vs, &plan));
        assert_eq!(object, testing::test().weights(50, 50).build());
        assert_unchanged(&object, &plan);
    }

    #[test]
    fn set_weights_not_summing_to_100_names_route_and_sum() {
        let vs = testing::test().weights(90, 10).build();
        let plan = everywhere(Change::SetWeights { weights: vec![(subset("v2"), weight(20))] });
        assert_eq!(
            error(apply(&vs, &plan)),
            "route http[0] of sms-app/model-service: weights would sum to 110 after the change; \
             they must sum to 100"
        );
    }

    #[test]
    fn missing_subset_error_lists_the_carried_subsets() {
        let vs = testing::test().weights(90, 10).build();
        let plan = everywhere(Change::Rollback { stable: subset("v1"), canary: vec![subset("v3")] });
        assert_eq!(
            error(apply(&vs, &plan)),
            "subset v3 is not a destination of any HTTP route of sms-app/model-service; \
             routes carry: subset v1, subset v2"
        );
        let plan = everywhere(Change::Switch { from: host("blue"), to: host("green") });
        assert_eq!(
            error(apply(&vs, &plan)),
            "host blue is not a destination of any HTTP route of sms-app/model-service; \
             routes carry: host model-service"
        );
    }

    #[test]
    fn omitted_weights_are_100_alone_and_0_among_several_and_written_when_changed() {
        let vs = testing::test()
            .route(None, &[(MS, Some("v1"), None)])
            .route(None, &[(MS, Some("v1"), None), (MS, Some("v2"), Some(100))])
            .build();
        assert_eq!(weights(&vs), [vec![100], vec![0, 100]]);
        let (object, _, _) = changed(apply(&vs, &rollback_v2()));
        let expected = testing::test()
            .route(None, &[(MS, Some("v1"), None)])
            .route(None, &[(MS, Some("v1"), Some(100)), (MS, Some("v2"), Some(0))])
            .build();
        assert_eq!(object, expected);
    }

    #[test]
    fn malformed_weights_are_errors_with_their_json_path() {
        for bad in [json!("10"), json!(10.5), json!(-1), json!(101), json!(null)] {
            let mut vs = testing::test().weights(90, 10).build();
            vs["spec"]["http"][0]["route"][1]["weight"] = bad.clone();
            assert_eq!(
                error(apply(&vs, &rollback_v2())),
                format!("sms-app/model-service: spec.http[0].route[1].weight is {bad}, expected an integer 0..=100")
            );
        }
    }

    #[test]
    fn malformed_destination_is_an_error_with_its_json_path() {
        let mut vs = testing::test().weights(90, 10).build();
        vs["spec"]["http"][0]["route"][0]["destination"] = json!({ "subset": "v1" });
        assert_eq!(
            error(apply(&vs, &rollback_v2())),
            "sms-app/model-service: spec.http[0].route[0].destination.host is missing, expected a string"
        );
    }

    #[test]
    fn objects_that_are_not_http_virtualservices_are_errors() {
        let mut vs = testing::test().weights(90, 10).build();
        vs["kind"] = json!("DestinationRule");
        assert_eq!(
            error(apply(&vs, &rollback_v2())),
            r#"sms-app/model-service is not a VirtualService with HTTP routes: kind is "DestinationRule""#
        );
        let tcp_only = json!({
            "kind": "VirtualService",
            "metadata": { "namespace": "sms-app", "name": "db" },
            "spec": { "tcp": [{ "route": [{ "destination": { "host": "db" } }] }] },
        });
        assert_eq!(
            routes(&tcp_only).unwrap_err().to_string(),
            "sms-app/db is not a VirtualService with HTTP routes: it has no spec.http"
        );
    }

    #[test]
    fn every_other_field_is_preserved() {
        let vs = json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {
                "namespace": "sms-app",
                "name": "model-service",
                "labels": { "app": "model-service" },
                "annotations": { "argocd.argoproj.io/sync-wave": "2" },
                "resourceVersion": "4711",
            },
            "spec": {
                "hosts": ["model-service", "model.example.com"],
                "gateways": ["mesh", "sms-app/public"],
                "http": [
                    {
                        "name": "api",
                        "match": [{ "uri": { "prefix": "/api" }, "headers": { "x-beta": { "exact": "1" } } }],
                        "route": [{ "destination": { "host": MS, "subset": "v1", "port": { "number": 8080 } } }],
                        "mirror": { "host": MS, "subset": "v2" },
                        "mirrorPercentage": { "value": 5.0 },
                    },
                    {
                        "name": "primary",
                        "retries": { "attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx" },
                        "timeout": "10s",
                        "headers": { "response": { "set": { "x-served-by": "backstop-test" } } },
                        "route": [
                            {
                                "destination": { "host": MS, "subset": "v1", "port": { "number": 8080 } },
                                "weight": 90,
                                "headers": { "request": { "set": { "x-version": "v1" } } },
                            },
                            { "destination": { "host": MS, "subset": "v2", "port": { "number": 8080 } }, "weight": 10 },
                        ],
                    },
                    { "match": [{ "uri": { "prefix": "/old" } }], "redirect": { "uri": "/api" } },
                ],
                "tcp": [{ "match": [{ "port": 9000 }], "route": [{ "destination": { "host": MS, "subset": "v2" }, "weight": 100 }] }],
                "tls": [{
                    "match": [{ "port": 443, "sniHosts": ["model.example.com"] }],
                    "route": [{ "destination": { "host": MS, "subset": "v2" } }],
                }],
            },
        });
        let (object, _, _) = changed(apply(&vs, &rollback_v2()));
        assert_eq!(weights(&object), [vec![100], vec![100, 0], vec![]]);
        let masked = |mut vs: Value| {
            for http in vs["spec"]["http"].as_array_mut().unwrap() {
                for entry in http["route"].as_array_mut().into_iter().flatten() {
                    entry.as_object_mut().unwrap().remove("weight");
                }
            }
            vs
        };
        assert_eq!(masked(object), masked(vs));
    }

    #[test]
    fn restore_puts_back_the_recorded_state() {
        let vs = testing::test()
            .route(Some("a"), &[(MS, Some("v1"), Some(90)), (MS, Some("v2"), Some(10))])
            .route(Some("b"), &[("model-blue", None, None)])
            .build();
        let (rolled, before, _) = changed(apply(&vs, &rollback_v2()));
        let switch = everywhere(Change::Switch { from: host("model-blue"), to: host("model-green") });
        let (switched, before_switch, _) = changed(apply(&rolled, &switch));
        // As the audit log stores and reads it back.
        let recorded: Vec<RouteState> =
            serde_json::from_str(&serde_json::to_string(&[before, before_switch].concat()).unwrap()).unwrap();
        let (restored, _, after) = changed(restore(&switched, &recorded));
        assert_eq!(restored, vs);
        assert_eq!(after, recorded);
        assert!(matches!(restore(&restored, &recorded), Ok(Outcome::Unchanged { .. })));
    }

    #[test]
    fn restore_refuses_when_the_object_changed_since() {
        let vs = testing::test().route(Some("a"), &[(MS, Some("v1"), Some(90)), (MS, Some("v2"), Some(10))]).build();
        let (_, before, _) = changed(apply(&vs, &rollback_v2()));
        let reshaped = testing::test().route(Some("a"), &[(MS, Some("v1"), None)]).build();
        assert_eq!(
            error(restore(&reshaped, &before)),
            "cannot undo on sms-app/model-service: route a has 1 destinations, 2 were recorded; \
             the object changed since, undo is not safe"
        );
        let renamed = testing::test().route(Some("z"), &[(MS, Some("v1"), None)]).build();
        assert_eq!(
            error(restore(&renamed, &before)),
            "cannot undo on sms-app/model-service: route a no longer exists; the object changed since, \
             undo is not safe"
        );
    }

    #[test]
    fn weights_and_destinations_round_trip_through_json() {
        assert_eq!(serde_json::to_value(subset("v2")).unwrap(), json!({ "subset": "v2" }));
        assert_eq!(
            serde_json::from_value::<Dest>(json!({ "host": "reviews-canary" })).unwrap(),
            host("reviews-canary")
        );
        assert_eq!(subset("v2").to_string(), "subset v2");
        assert_eq!(host("reviews-canary").to_string(), "host reviews-canary");
        assert_eq!(serde_json::to_value(weight(40)).unwrap(), json!(40));
        assert_eq!(serde_json::from_value::<Weight>(json!(100)).unwrap().get(), 100);
        assert!(serde_json::from_value::<Weight>(json!(101)).is_err());
        assert!(serde_json::from_value::<Weight>(json!(-1)).is_err());
        assert_eq!(Weight::try_from(300), Err(VsError::WeightOutOfRange(300)));
        let state = routes(&testing::test().route(None, &[("reviews", None, None)]).weights(90, 10).build()).unwrap();
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<Vec<RouteState>>(&json).unwrap(), state);
    }

    #[test]
    fn crd_schema_rejects_a_string_weight() {
        let mut vs = testing::test().weights(90, 10).build();
        assert!(CRD.is_valid(&vs));
        vs["spec"]["http"][0]["route"][1]["weight"] = json!("10");
        assert!(!CRD.is_valid(&vs));
    }

    fn step_down(steps: &[u64]) -> Plan {
        let steps = steps.iter().map(|w| weight(*w)).collect();
        everywhere(Change::StepDown { stable: subset("v1"), canary: subset("v2"), steps })
    }

    #[test]
    fn step_down_lowers_the_canary_to_the_first_step_at_or_below_it_and_stable_absorbs() {
        let vs = testing::test().weights(50, 50).build();
        let (object, before, after) = changed(apply(&vs, &step_down(&[25, 10, 0])));
        assert_eq!(weights(&object), [[75, 25]]);
        assert_eq!((canary_weight(&before, &subset("v2")), canary_weight(&after, &subset("v2"))), (50, 25));
        let (object, _, _) = changed(apply(&object, &step_down(&[10, 0])));
        assert_eq!(weights(&object), [[90, 10]]);
        let (object, _, _) = changed(apply(&object, &step_down(&[0])));
        assert_eq!(weights(&object), [[100, 0]]);
    }

    #[test]
    fn step_down_applied_twice_changes_nothing_the_second_time() {
        let (object, _, _) = changed(apply(&testing::test().weights(60, 40).build(), &step_down(&[25, 10, 0])));
        assert_eq!(weights(&object), [[75, 25]]);
        assert_unchanged(&object, &step_down(&[25, 10, 0]));
    }

    #[test]
    fn step_down_never_raises_the_canary_and_snaps_a_weight_between_steps_down() {
        assert_unchanged(&testing::test().weights(90, 10).build(), &step_down(&[25, 10, 0]));
        let (object, _, _) = changed(apply(&testing::test().weights(88, 12).build(), &step_down(&[25, 10, 0])));
        assert_eq!(weights(&object), [[90, 10]], "12 is between the steps 25 and 10: it goes to 10, never up to 25");
        assert_unchanged(&testing::test().weights(100, 0).build(), &step_down(&[0]));
    }

    #[test]
    fn step_down_steps_every_route_carrying_the_canary_on_its_own_weight() {
        let vs = testing::test()
            .route(Some("a"), &[(MS, Some("v1"), Some(50)), (MS, Some("v2"), Some(50))])
            .route(Some("b"), &[(MS, Some("v1"), Some(80)), (MS, Some("v2"), Some(20))])
            .route(Some("c"), &[(MS, Some("v1"), None)])
            .build();
        let (object, _, after) = changed(apply(&vs, &step_down(&[25, 10, 0])));
        assert_eq!(weights(&object), [vec![75, 25], vec![90, 10], vec![100]]);
        assert_eq!(canary_weight(&after, &subset("v2")), 25);
    }

    #[test]
    fn step_down_refuses_a_route_without_the_stable_destination() {
        let vs = testing::test().route(Some("a"), &[(MS, Some("v2"), Some(50)), (MS, Some("v3"), Some(50))]).build();
        let msg = error(apply(&vs, &step_down(&[25, 0])));
        assert!(msg.contains("carries canary subset v2 but not stable subset v1"), "{msg}");
        let msg = error(apply(&testing::test().route(None, &[(MS, Some("v1"), None)]).build(), &step_down(&[0])));
        assert!(msg.contains("subset v2 is not a destination"), "{msg}");
    }

    #[test]
    fn step_at_or_below_picks_the_first_listed_step_not_above_the_weight() {
        let steps: Vec<Weight> = [25, 10, 0].into_iter().map(weight).collect();
        assert_eq!([50, 25, 24, 10, 3, 0].map(|w| step_at_or_below(&steps, w)), [25, 25, 10, 10, 0, 0]);
    }
}
