//! What the state reads from a record's `detail`, and the pipeline writes into it: one typed part
//! per fact, each a few named fields of the detail object. The writer (`Entry::detail(part.value())`,
//! merged with the record's other parts), the fold ([`GuardState::observe`](super::GuardState)),
//! `undo` and the resume at start all use these types, so a field renamed on one side is a compile
//! error on the other. The field names are the on-disk format: they stay as they are.
//!
//! Each part is read on its own ([`Part::read`]): a record whose one part is unreadable still
//! yields its others, as the fold did when it read them key by key.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::actions::ActionPlan;
use crate::event::Feedback;
use crate::feedback::arms::ArmKey;
use crate::prometheus::verification::VerifySpec;
use crate::state::stepdown::StepInfo;
use crate::target::ObjectKind;

/// A typed part of a record's `detail`.
pub trait Part: Serialize + DeserializeOwned {
    /// The field the part is written under. A detail without it is not read as the part: the
    /// guards ask every record appended for several parts, and a failed read builds an error
    /// (in an alert storm, whose records have none of them, the guards' share of the CPU went
    /// from 3.0% to 1.7% without those errors).
    const FIELD: &'static str;

    /// Whether the detail has the part's field: a test of presence, nothing read.
    fn is_in(detail: Option<&Value>) -> bool {
        detail.is_some_and(|d| d.get(Self::FIELD).is_some())
    }

    /// The part, if the detail has it (and it reads as this type).
    fn read(detail: Option<&Value>) -> Option<Self> {
        match Self::is_in(detail) {
            true => Self::deserialize(detail?).ok(),
            false => None,
        }
    }

    /// The part as a JSON object, to merge into a record's detail.
    fn value(&self) -> Value {
        // Plain data (strings, numbers, maps with string keys): always serialisable. Were it
        // not, an empty object merges nothing, where null would replace the record's detail.
        serde_json::to_value(self).unwrap_or_else(|_| Value::Object(Default::default()))
    }
}

/// A value as recorded: the type it was written as, or, when it no longer reads as that type (a
/// record from a newer or damaged writer), the JSON as it stands. Serialised as either, untagged,
/// so it writes back exactly what was read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Recorded<T> {
    Known(T),
    Unreadable(Value),
}

/// Outcome records (`applied`, `noop`, `refused`, `failed`): the kind of object acted on, as
/// [`ObjectKind::as_str`] spells it (`undo` needs it to pick the inverse).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KindPart {
    #[serde(with = "recorded_kind")]
    pub kind: ObjectKind,
}
impl Part for KindPart {
    const FIELD: &'static str = "kind";
}

/// `decided` records: what the action will do, so a crash between decision and outcome can be
/// finished at the next start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanPart {
    pub plan: Recorded<ActionPlan>,
}
impl Part for PlanPart {
    const FIELD: &'static str = "plan";
}

/// A `noop` answering a duplicate delivery: it names the action it repeats, which may still be
/// under way (so it does not end it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DuplicatePart {
    pub duplicate: bool,
}
impl Part for DuplicatePart {
    const FIELD: &'static str = "duplicate";
}

/// `decided` and outcome records of an action taken on feedback: the arms whose comparison it
/// ends once applied (or found done).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackArmsPart {
    pub feedback_arms: Vec<ArmKey>,
}
impl Part for FeedbackArmsPart {
    const FIELD: &'static str = "feedback_arms";
}

/// `decided` and outcome records of a step of a gradual rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepDownPart {
    pub step_down: StepInfo,
}
impl Part for StepDownPart {
    const FIELD: &'static str = "step_down";
}

/// `applied` records of a rule with `verify:`: the check to run, as rendered for the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyPart {
    pub verify: VerifySpec,
}
impl Part for VerifyPart {
    const FIELD: &'static str = "verify";
}

/// `applied` records of a decision against a Flagger Canary: how long it holds (ms).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlaggerHoldPart {
    pub flagger_hold_ms: u64,
}
impl Part for FlaggerHoldPart {
    const FIELD: &'static str = "flagger_hold_ms";
}

/// `control` records: which control.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlPart {
    pub control: Control,
}
impl Part for ControlPart {
    const FIELD: &'static str = "control";
}

/// What a `control` record records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Control {
    /// Automatic actions paused (on the record's target, or all of them).
    Pause,
    Resume,
    /// An action taken by hand.
    Act,
    /// An applied action undone by hand.
    Undo,
    /// The first "roll back" answered to Flagger for a decision.
    FlaggerRollback,
    /// Rules reloaded, or a reload refused.
    Reload,
    ReloadRefused,
    /// A cluster replica took over as the leader (no state: who leads is the Lease's).
    Takeover,
    /// A promotion's next step taken by hand (it also resumes a held or stopped promotion).
    Promote,
    /// A target's promotion held by hand, and released.
    HoldPromotion,
    ReleasePromotion,
    /// Anything else (the audit log's own controls, such as its recovery): no state.
    #[serde(other)]
    Other,
}

/// A manual control (`act`, `undo`): what it undoes (recorded as `null` when nothing) and the
/// target backstop writes to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManualPart {
    pub control: Control,
    pub undoes: Option<String>,
    pub target: String,
}
impl Part for ManualPart {
    const FIELD: &'static str = "control";
}

/// `received` records of feedback events: the event (its origin is beside it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackPart {
    pub feedback: Feedback,
}
impl Part for FeedbackPart {
    const FIELD: &'static str = "feedback";
}

/// `held`, `failed` and `decided` records of a rule with `confirm:`: the query, its answer and
/// the verdict, as the confirmation recorded them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfirmationPart {
    /// `null` in a `decided` record of a rule without `confirm:`.
    pub confirmation: Option<Value>,
}
impl Part for ConfirmationPart {
    const FIELD: &'static str = "confirmation";
}

/// [`ObjectKind`] as the audit trail spells it (`Canary` for a Flagger Canary).
mod recorded_kind {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::target::ObjectKind;

    pub fn serialize<S: Serializer>(kind: &ObjectKind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(kind.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectKind, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::audit::{Entry, Kind};

    /// The bytes a record's detail is written as: the same as the string keys wrote before.
    fn written(entry: Entry) -> String {
        serde_json::to_string(&entry.detail).unwrap()
    }

    #[test]
    fn parts_write_the_recorded_field_names_merged_into_one_object() {
        let e = Entry::new(Kind::Applied)
            .detail(KindPart { kind: ObjectKind::FlaggerCanary }.value())
            .detail(FlaggerHoldPart { flagger_hold_ms: 1800000 }.value())
            .detail(DuplicatePart { duplicate: true }.value());
        assert_eq!(written(e), r#"{"duplicate":true,"flagger_hold_ms":1800000,"kind":"Canary"}"#);
        let manual = ManualPart { control: Control::Undo, undoes: None, target: "manifests in d".into() };
        assert_eq!(
            serde_json::to_string(&manual.value()).unwrap(),
            r#"{"control":"undo","target":"manifests in d","undoes":null}"#
        );
        let verify = VerifySpec {
            query: Some("q".into()),
            error: None,
            max_share: 0.05,
            deadline_ms: 1000,
            interval_ms: 100,
            step_weight: None,
            min_share: None,
        };
        assert_eq!(
            serde_json::to_string(&VerifyPart { verify }.value()).unwrap(),
            r#"{"verify":{"deadline_ms":1000,"interval_ms":100,"max_share":0.05,"query":"q"}}"#
        );
    }

    /// Each part is written under the field it is read by: a part whose `FIELD` named another
    /// would never be read back.
    #[test]
    fn each_part_is_written_under_its_field_and_read_only_where_it_is() {
        fn round_trip<P: Part + PartialEq + std::fmt::Debug>(part: P) {
            let value = part.value();
            assert!(value.get(P::FIELD).is_some(), "{value} has no `{}`", P::FIELD);
            assert_eq!(P::read(Some(&value)), Some(part));
            assert_eq!(P::read(Some(&json!({"action": "a", "status": "firing"}))), None, "{}", P::FIELD);
        }
        round_trip(KindPart { kind: ObjectKind::Rollout });
        round_trip(PlanPart { plan: Recorded::Unreadable(json!({"made": "elsewhere"})) });
        round_trip(DuplicatePart { duplicate: true });
        round_trip(FeedbackArmsPart { feedback_arms: Vec::new() });
        let step = serde_json::from_value(json!({"origin": "a", "step": 1, "interval_ms": 1})).unwrap();
        round_trip(StepDownPart { step_down: step });
        round_trip(FlaggerHoldPart { flagger_hold_ms: 5 });
        round_trip(ControlPart { control: Control::Undo });
        round_trip(ManualPart { control: Control::Pause, undoes: None, target: "t".into() });
        round_trip(ConfirmationPart { confirmation: None });
    }

    #[test]
    fn each_part_reads_on_its_own_and_an_unknown_control_is_other() {
        let detail = json!({"control": "audit-recovered", "kind": "Rollout", "feedback_arms": "not a list"});
        assert_eq!(ControlPart::read(Some(&detail)).map(|c| c.control), Some(Control::Other));
        assert_eq!(KindPart::read(Some(&detail)).map(|k| k.kind), Some(ObjectKind::Rollout));
        assert_eq!(FeedbackArmsPart::read(Some(&detail)), None, "unreadable: absent, the rest still read");
        assert_eq!(ControlPart::read(None), None);
        let flagger = json!({"control": "flagger-rollback"});
        let step = json!({"step_down": {"origin": "a", "step": 1, "interval_ms": 1}});
        assert!(StepDownPart::read(Some(&step)).is_some() && StepDownPart::is_in(Some(&step)));
        assert!(!StepDownPart::is_in(Some(&flagger)) && !StepDownPart::is_in(None));
        assert_eq!(ControlPart::read(Some(&flagger)).map(|c| c.control), Some(Control::FlaggerRollback));
    }

    #[test]
    fn a_plan_that_no_longer_reads_is_kept_as_recorded() {
        let detail = json!({"plan": {"change": "x"}});
        let part = PlanPart::read(Some(&detail)).unwrap();
        assert_eq!(part.plan, Recorded::Unreadable(json!({"change": "x"})));
        assert_eq!(part.value(), detail, "written back exactly as read");
    }

    #[test]
    fn a_verification_recorded_without_its_limits_gets_the_defaults() {
        let detail = json!({"verify": {"error": "verification query: missing label"}});
        let v = VerifyPart::read(Some(&detail)).unwrap().verify;
        assert_eq!(
            (v.max_share, v.deadline_ms, v.interval_ms),
            (crate::prometheus::verification::DEFAULT_MAX_SHARE, 120_000, 10_000)
        );
        assert_eq!(v.error.as_deref(), Some("verification query: missing label"));
    }
}

/// Where a record's message was read from Kafka, as each intake writes it: a received alert under
/// `delivery.kafka`, a received feedback event under `kafka`, a rejected message at the detail's
/// top level (its origin merged in).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KafkaPosition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl KafkaPosition {
    /// From a received or rejected record's detail; `rejected` says which.
    pub fn read(detail: Option<&Value>, rejected: bool) -> Option<KafkaPosition> {
        let d = detail?;
        let at = if rejected {
            d
        } else {
            match d.get("kafka") {
                Some(k) => k,
                None => d.get("delivery")?.get("kafka")?,
            }
        };
        Some(KafkaPosition {
            topic: at.get("topic")?.as_str()?.to_string(),
            partition: i32::try_from(at.get("partition")?.as_i64()?).ok()?,
            offset: at.get("offset")?.as_i64()?,
        })
    }
}
