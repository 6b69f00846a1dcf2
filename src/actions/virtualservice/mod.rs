//! Pure decisions on an Istio VirtualService's HTTP traffic weights: roll a canary back (at once
//! or step by step), promote it a step, switch blue-green, or set explicit weights. Only `spec.http[*].route[*]` ever changes; every other
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

    /// `w`, or 100 above it.
    pub fn at_most_100(w: u8) -> Weight {
        Weight(w.min(100))
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
    /// One step of a promotion, decided when the canary's weight was `from`: in every route
    /// carrying the canary, its weight rises to `to`, taken from the stable destination. A weight
    /// is never lowered, and applying the same step twice changes nothing. Conditional: refused
    /// when the canary's weight is below `from` (something, a rollback, lowered it since).
    StepUp { stable: Dest, canary: Dest, from: Weight, to: Weight },
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
            Self::StepDown { stable, canary, .. } | Self::StepUp { stable, canary, .. } => vec![stable, canary],
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
            Self::StepUp { stable, canary, to, .. } => {
                if !route.carries(canary) {
                    return Ok(());
                }
                let now: u32 = route.destinations.iter().filter(|d| canary.matches(d)).map(|d| d.weight).sum();
                let to = u32::from(to.get());
                if now >= to {
                    return Ok(());
                }
                let is_stable = |d: &DestState| stable.matches(d) && !canary.matches(d);
                let available: u32 = route.destinations.iter().filter(|d| is_stable(d)).map(|d| d.weight).sum();
                if available < to - now {
                    return Err(VsError::StableShort {
                        object: object.to_owned(),
                        route: route.route.clone(),
                        stable: stable.clone(),
                        canary: canary.clone(),
                        available,
                        to,
                    });
                }
                let mut need = to - now;
                for dest in route.destinations.iter_mut().filter(|d| is_stable(d)) {
                    let take = dest.weight.min(need);
                    dest.weight -= take;
                    need -= take;
                }
                if let Some(first) = route.destinations.iter_mut().find(|d| canary.matches(d)) {
                    first.weight += to - now;
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
pub enum Transformed {
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
    #[error(
        "route {route} of {object}: {stable} has {available} to give, not enough to raise {canary} to {to}; refusing to promote"
    )]
    StableShort { object: String, route: String, stable: Dest, canary: Dest, available: u32, to: u32 },
    #[error(
        "{canary} of {object} has weight {now}, below the {from} the promotion step was decided at \
         (lowered since, by a rollback?); refusing to promote"
    )]
    CanaryLowered { object: String, canary: Dest, from: u32, now: u32 },
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
pub fn apply(vs: &Value, plan: &Plan) -> Result<Transformed, VsError> {
    let object = object_id(vs);
    let before = routes(vs)?;
    let selected = select(&object, &before, plan.routes.as_deref())?;
    let carried = |dest: &Dest| selected.iter().any(|&i| before[i].carries(dest));
    let missing = match &plan.change {
        Change::Rollback { canary, .. } => canary.iter().find(|d| !carried(d)),
        Change::Switch { from, to } => (!carried(from) && !carried(to)).then_some(from),
        Change::SetWeights { weights } => weights.iter().map(|(d, _)| d).find(|d| !carried(d)),
        Change::StepDown { canary, .. } | Change::StepUp { canary, .. } => (!carried(canary)).then_some(canary),
    };
    if let Some(dest) = missing {
        let carried = carried_list(selected.iter().map(|&i| &before[i]), dest);
        return Err(VsError::NoSuchDestination { object, dest: dest.clone(), carried });
    }
    if let Change::StepUp { canary, from, .. } = &plan.change {
        let now = canary_weight(&selected.iter().map(|&i| before[i].clone()).collect::<Vec<_>>(), canary);
        if now < u32::from(from.get()) {
            return Err(VsError::CanaryLowered { object, canary: canary.clone(), from: from.get().into(), now });
        }
    }
    let named = plan.change.named();
    let scope: Vec<usize> = selected.into_iter().filter(|&i| named.iter().any(|d| before[i].carries(d))).collect();
    let mut after = before.clone();
    for &i in &scope {
        plan.change.apply_to(&object, &mut after[i])?;
    }
    finish(vs, &object, &before, &after, &scope)
}

/// Undo of an applied action: `before` and `after` are the routes its `applied` record holds.
/// Refused when the object has moved on since (a route no longer as the action left it);
/// `object` is how the error names it.
pub fn undo(vs: &Value, before: &Value, after: &Value, object: &str, action: &str) -> Result<Transformed, String> {
    let parse = |v: &Value| serde_json::from_value::<Vec<RouteState>>(v.clone()).map_err(|e| e.to_string());
    let (before, after) = (parse(before)?, parse(after)?);
    let now = routes(vs).map_err(|e| e.to_string())?;
    if after.iter().any(|a| !now.contains(a)) {
        let moved = VsError::MovedOn {
            object: object.to_string(),
            action: action.to_string(),
            now: serde_json::to_string(&now).unwrap_or_default(),
        };
        return Err(moved.to_string());
    }
    restore(vs, &before).map_err(|e| e.to_string())
}

/// Puts back a previously recorded state (for undo): per listed route, the destinations get host,
/// subset and weight back by position.
pub fn restore(vs: &Value, previous: &[RouteState]) -> Result<Transformed, VsError> {
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
) -> Result<Transformed, VsError> {
    let changed: Vec<usize> = scope.iter().copied().filter(|&i| before[i] != after[i]).collect();
    if changed.is_empty() {
        return Ok(Transformed::Unchanged { state: scope.iter().map(|&i| before[i].clone()).collect() });
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
    Ok(Transformed::Changed { object: new, before: pick(before), after: pick(after) })
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

pub mod testing;
#[cfg(test)]
mod tests;
