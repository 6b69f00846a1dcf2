//! The rule files' raw shapes, as written: deserialised with unknown fields refused, then
//! validated into [`Rule`]s by `validate`.

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default)]
    pub(super) rules: Vec<serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) name: String,
    #[serde(default)]
    pub(super) description: String,
    #[serde(default, rename = "match")]
    pub(super) matchers: Vec<String>,
    #[serde(default)]
    pub(super) feedback: Option<RawFeedback>,
    #[serde(default)]
    pub(super) status: StatusFilter,
    #[serde(default, rename = "for", deserialize_with = "crate::yaml::duration")]
    pub(super) min_firing: Option<String>,
    pub(super) target: RawTarget,
    pub(super) action: RawAction,
    #[serde(default, deserialize_with = "crate::yaml::duration")]
    pub(super) cooldown: Option<String>,
    #[serde(default)]
    pub(super) dry_run: bool,
    #[serde(default)]
    pub(super) confirm: Option<RawConfirm>,
    #[serde(default)]
    pub(super) verify: Option<RawVerify>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVerify {
    pub(super) query: String,
    #[serde(default)]
    pub(super) max_share: Option<f64>,
    #[serde(default, deserialize_with = "crate::yaml::duration")]
    pub(super) deadline: Option<String>,
    #[serde(default, deserialize_with = "crate::yaml::duration")]
    pub(super) interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFeedback {
    pub(super) service: String,
    #[serde(default)]
    pub(super) namespace: Option<String>,
    pub(super) canary: String,
    #[serde(default)]
    pub(super) baseline: Option<String>,
    /// A rollback's test; a promotion names `not_worse` and/or `score_above` instead.
    #[serde(default)]
    pub(super) test: Option<RawTest>,
    #[serde(default)]
    pub(super) not_worse: Option<super::promote::RawNotWorse>,
    #[serde(default)]
    pub(super) score_above: Option<super::promote::RawScoreAbove>,
    #[serde(default)]
    pub(super) alpha: Option<f64>,
    #[serde(default)]
    pub(super) min_samples: Option<u64>,
    #[serde(default)]
    pub(super) tau: Option<f64>,
    #[serde(default)]
    pub(super) min_effect: Option<f64>,
    #[serde(default)]
    pub(super) max_ratio: Option<f64>,
    #[serde(default)]
    pub(super) threshold: Option<f64>,
    #[serde(default, deserialize_with = "crate::yaml::duration")]
    pub(super) window: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum RawTest {
    NegativeRatio,
    ErrorRatio,
    LatencyP95,
    MeanScoreBelow,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfirm {
    pub(super) query: String,
    #[serde(default)]
    pub(super) above: Option<f64>,
    #[serde(default)]
    pub(super) below: Option<f64>,
    #[serde(default, deserialize_with = "crate::yaml::duration")]
    pub(super) timeout: Option<String>,
    #[serde(default)]
    pub(super) on_no_data: Fallback,
    #[serde(default)]
    pub(super) on_error: Fallback,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTarget {
    pub(super) namespace: String,
    #[serde(default)]
    pub(super) virtualservice: Option<String>,
    #[serde(default)]
    pub(super) service: Option<String>,
    #[serde(default)]
    pub(super) rollout: Option<String>,
    #[serde(default)]
    pub(super) flagger: Option<String>,
    #[serde(default)]
    pub(super) routes: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawAction {
    pub(super) rollback: Option<RawRollback>,
    pub(super) switch: Option<RawSwitch>,
    pub(super) set_weights: Option<Vec<RawWeight>>,
    pub(super) switch_selector: Option<SelectorSwitch>,
    pub(super) abort: Option<RawAbort>,
    pub(super) flagger_rollback: Option<RawFlaggerRollback>,
    pub(super) promote: Option<super::promote::RawPromote>,
}

/// `flagger-rollback: {hold: 30m}`: answer a Flagger Canary's rollback webhook.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFlaggerRollback {
    #[serde(default)]
    pub(super) hold: Option<String>,
}

/// `abort: {}`: stop an Argo Rollout (no settings yet).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAbort {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRollback {
    pub(super) stable: RawDest,
    pub(super) canary: OneOrMany<RawDest>,
    /// A gradual rollback: the canary's weight at each step, strictly decreasing, ending at 0.
    #[serde(default)]
    pub(super) steps: Option<Vec<Weight>>,
    /// The time between steps (default 1m).
    #[serde(default, deserialize_with = "crate::yaml::duration")]
    pub(super) interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSwitch {
    pub(super) from: RawDest,
    pub(super) to: RawDest,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWeight {
    #[serde(default)]
    pub(super) subset: Option<String>,
    #[serde(default)]
    pub(super) host: Option<String>,
    pub(super) weight: Weight,
}

/// `v2` (a subset), `{subset: v2}` or `{host: reviews-canary}`.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a subset name, {subset: NAME} or {host: HOST}")]
pub(super) enum RawDest {
    Subset(String),
    Keyed(RawDestKeyed),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDestKeyed {
    #[serde(default)]
    pub(super) subset: Option<String>,
    #[serde(default)]
    pub(super) host: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany<T> {
    // `Many` first: serde would otherwise read `[v2, v1]` as the fields of one keyed destination.
    Many(Vec<T>),
    One(T),
}

pub(super) fn dest(subset: Option<String>, host: Option<String>) -> Result<Dest, String> {
    match (subset, host) {
        (Some(s), None) if !s.is_empty() => Ok(Dest::Subset(s)),
        (None, Some(h)) if !h.is_empty() => Ok(Dest::Host(h)),
        (Some(_), Some(_)) => Err("name either a subset or a host, not both".into()),
        _ => Err("a destination needs a non-empty `subset` or `host`".into()),
    }
}

impl RawDest {
    pub(super) fn into_dest(self) -> Result<Dest, String> {
        match self {
            RawDest::Subset(s) => dest(Some(s), None),
            RawDest::Keyed(k) => dest(k.subset, k.host),
        }
    }
}
