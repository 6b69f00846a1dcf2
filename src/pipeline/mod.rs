//! The pipeline: record every event durably, hand it to the rules engine, vet each decision with
//! the guards, act through the target, and record each step.
//!
//! One [`Pipeline`] value, its methods grouped by what they handle: `alerts`, `feedback`,
//! `reject` (what could not be accepted), `controls` (act, undo, pause, Flagger's webhook),
//! `steps` (step-downs), `verify` (did traffic move), `restore` (start and snapshots). This file
//! holds the value, the recording of records and the execution of one action.

mod alerts;
mod chain;
mod controls;
mod feedback;
mod promote;
mod quiet;
mod reject;
mod replica;
mod restore;
mod steps;
#[cfg(test)]
mod tests;
mod verify;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use tracing::{info, instrument, warn};

use crate::actions::{self, ActionPlan, Decide, Meta, Outcome};
use crate::audit::{self, AuditError, AuditLog, Entry, Kind, Record};
use crate::event::Feedback;
use crate::event::{Alert, AlertStatus, AlertView, AlertsRecord, SourceKind};
use crate::feedback::arms::{ArmKey, Origin};
use crate::prometheus::verification::VerifySpec;
use crate::prometheus::{SharedPrometheus, confirm};
use crate::rules::{Decision, Rule, RuleSet};
use crate::state::detail::{
    ConfirmationPart, Control, ControlPart, DuplicatePart, FeedbackArmsPart, FlaggerHoldPart, KafkaPosition, KindPart,
    ManualPart, Part, PlanPart, Recorded, StepDownPart, VerifyPart,
};
use crate::state::promotion::{PromotionPart, StepUp};
use crate::state::stepdown::{self, StepDown, StepInfo};
use crate::state::{self, GuardSettings, GuardState, GuardVerdict};
use crate::target::{Notice, ObjectKind, ObjectRef, Target};
use crate::telemetry::metrics::Event as MetricEvent;

pub use alerts::PreparedAlerts;
pub use chain::{CHAIN_CHECK_EVERY, ChainCheck};
pub use feedback::FEEDBACK_QUIET;
use feedback::FeedbackContext;
pub use reject::{REJECTED_PREFIX, Rejection};
pub use replica::{Gate, ReplicationLag, Takeover};
pub use restore::{Restored, SNAPSHOT_FILE, SnapshotPolicy, start_from_snapshot};
use restore::{longest_cooldown, restore_state};
use steps::step_outcome;
use verify::verify_detail;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The audit log cannot take the record: nothing was acknowledged (HTTP 503).
    #[error("audit log unavailable: {0}")]
    Audit(#[from] AuditError),
    #[error("no rule named `{0}`")]
    UnknownRule(String),
    #[error("no applied action with id `{0}` in the audit log")]
    UnknownAction(String),
    #[error("{0}")]
    NeedsAlert(String),
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub dry_run: bool,
    pub action_timeout: Duration,
    pub guards: GuardSettings,
    /// The on-call page's address as people reach it (`ui.url`): the Events about an action
    /// link to its page under it.
    pub ui_url: Option<String>,
}

/// The message of the Kubernetes Event about an action: its id, its rule, what happened and,
/// with `ui.url`, the link to the action's page (`/ui/actions/ID`; ids are UUIDs, safe in a path).
pub(crate) fn notice_message(action_id: &str, rule: &str, what: &str, ui_url: Option<&str>) -> String {
    let message = format!("backstop action {action_id} (rule {rule}): {what}");
    match ui_url {
        Some(url) => format!("{message} — see {}/ui/actions/{action_id}", url.trim_end_matches('/')),
        None => message,
    }
}

/// What happened to one alert under one rule (or to an alert no rule matched).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub event_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub outcome: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What became of one feedback event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedbackReport {
    pub event_id: String,
    /// Counted before (a redelivery): not recorded or counted again.
    pub duplicate: bool,
    /// The actions feedback rules took because of it (usually none).
    pub reports: Vec<Report>,
}

pub struct Pipeline {
    rules: RwLock<Arc<RuleSet>>,
    audit: AuditLog,
    target: Arc<dyn Target>,
    state: tokio::sync::Mutex<GuardState>,
    settings: RwLock<Settings>,
    /// Refused bodies recorded once per [`reject::REJECTION_DEDUP`], the repeats counted.
    rejections: quiet::Quiet,
    /// Held shared by a write that changes the state after it is recorded without the state's
    /// lock ([`Pipeline::record_unlocked`]), and exclusively while a snapshot is published, so
    /// that none falls between a checkpoint and its snapshot.
    unlocked_writes: tokio::sync::RwLock<()>,
    restored: Restored,
    prometheus: Option<SharedPrometheus>,
    /// Feedback findings not to decide again before a time (see [`FEEDBACK_QUIET`]).
    feedback_quiet: std::sync::Mutex<HashMap<String, DateTime<Utc>>>,
    /// Verifications to start (taken by the task [`Pipeline::spawn_verifier`] starts).
    verify_tx: tokio::sync::mpsc::UnboundedSender<state::PendingVerification>,
    verify_rx: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<state::PendingVerification>>>,
    /// Wakes the task [`Pipeline::spawn_step_downs`] starts when a step-down's schedule changes.
    step_wake: tokio::sync::Notify,
    /// Whether this process may act (always, but in a cluster's follower).
    gate: RwLock<Gate>,
    replication_lag: RwLock<Option<ReplicationLag>>,
    /// The last verification of the whole log (see `chain`).
    chain: RwLock<Option<ChainCheck>>,
    /// "held" log lines, one a minute per target and rule (see `quiet`).
    held_log: quiet::Quiet,
}

impl Pipeline {
    /// Restore the guards' state (snapshot plus the log's tail, or the whole log) and start.
    pub fn new(
        rules: RuleSet,
        audit: AuditLog,
        target: Arc<dyn Target>,
        settings: Settings,
    ) -> Result<Pipeline, AuditError> {
        let (mut state, restored) = restore_state(audit.dir())?;
        let (verify_tx, verify_rx) = tokio::sync::mpsc::unbounded_channel();
        state.prune(Utc::now(), &settings.guards, longest_cooldown(&rules));
        info!(
            snapshot = ?restored.snapshot_seq,
            replayed = restored.replayed,
            replayed_bytes = restored.replayed_bytes,
            note = restored.note.as_deref().unwrap_or(""),
            "guard state restored"
        );
        Ok(Pipeline {
            rules: RwLock::new(Arc::new(rules)),
            audit,
            target,
            state: tokio::sync::Mutex::new(state),
            settings: RwLock::new(settings),
            held_log: quiet::Quiet::new(quiet::HELD_LOG_EVERY),
            rejections: quiet::Quiet::new(reject::REJECTION_DEDUP),
            unlocked_writes: Default::default(),
            restored,
            prometheus: None,
            feedback_quiet: Default::default(),
            verify_tx,
            verify_rx: std::sync::Mutex::new(Some(verify_rx)),
            step_wake: tokio::sync::Notify::new(),
            gate: RwLock::new(Gate::Always),
            replication_lag: RwLock::new(None),
            chain: RwLock::new(None),
        })
    }

    /// Where rules with `confirm:` ask. Without it, such rules hold (and say why).
    pub fn with_prometheus(mut self, prometheus: SharedPrometheus) -> Pipeline {
        self.prometheus = Some(prometheus);
        self
    }

    /// How the guards' state was restored at start.
    pub fn restored(&self) -> &Restored {
        &self.restored
    }

    pub fn settings(&self) -> Settings {
        match self.settings.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Put new rules and settings in force (a reload). The guards' state (idempotency keys,
    /// cooldowns, pauses, feedback arms) is not touched: it belongs to the log, not the rules.
    pub fn reload(&self, rules: RuleSet, settings: Settings) {
        match self.rules.write() {
            Ok(mut r) => *r = Arc::new(rules),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(rules),
        }
        match self.settings.write() {
            Ok(mut s) => *s = settings,
            Err(poisoned) => *poisoned.into_inner() = settings,
        }
    }

    pub fn rules(&self) -> Arc<RuleSet> {
        match self.rules.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    pub fn target(&self) -> &dyn Target {
        self.target.as_ref()
    }

    pub async fn pauses(&self) -> Value {
        self.state.lock().await.pauses()
    }

    /// The on-call page's overview (see `GuardState::overview`), with the feedback comparisons
    /// under way: per feedback rule and namespace, the canary's and the baseline's counts so far.
    pub async fn overview(&self) -> Value {
        let rules = self.rules();
        let state = self.state.lock().await;
        let mut overview = state.overview();
        let mut comparisons = Vec::new();
        for rule in rules.rules() {
            let Some(spec) = &rule.feedback else { continue };
            let Some(baseline) = &spec.baseline else { continue };
            for (key, canary) in state.arms().iter() {
                let concerned = key.service == spec.service
                    && key.version == spec.canary
                    && spec.namespace.as_deref().is_none_or(|n| n == key.namespace);
                if !concerned {
                    continue;
                }
                let base = state.arms().get(&ArmKey::new(&key.namespace, &key.service, baseline));
                comparisons.push(json!({
                    "rule": rule.name,
                    "test": spec.test_name(),
                    "namespace": key.namespace,
                    "service": key.service,
                    "canary": { "version": spec.canary, "since": canary.started, "summary": canary.tally.summary() },
                    "baseline": base.map(|b| json!({ "version": baseline, "since": b.started, "summary": b.tally.summary() })),
                }));
            }
        }
        overview["comparisons"] = Value::Array(comparisons);
        overview
    }

    /// The highest Kafka offset recorded per topic and partition (where a new leader resumes).
    pub async fn kafka_positions(&self) -> Vec<KafkaPosition> {
        self.state.lock().await.kafka_positions()
    }

    async fn record(&self, state: &mut GuardState, entries: Vec<Entry>) -> Result<Vec<Record>, AuditError> {
        let records = self.audit.append(entries).await?;
        let mut reschedule = false;
        let mut promotions = false;
        for r in &records {
            let promoting =
                r.entry.target.as_deref().and_then(|t| state.promotions().under_way(t)).map(|p| p.canary.clone());
            state.observe(r);
            count_decision(r);
            promotions |= count_promotion(r, promoting, state);
            // A step's decision or outcome changes the schedule (a key lookup, not a parse).
            reschedule |= r.entry.kind == Kind::Unverified || StepDownPart::is_in(r.entry.detail.as_ref());
        }
        if reschedule {
            self.step_wake.notify_one();
        }
        if promotions {
            self.record_promoted(state).await?;
        }
        Ok(records)
    }

    /// Record what changes no guard (a hold, a refusal before acting, a duplicate's no-op)
    /// without holding the state across the write, so concurrent deliveries share one fsync
    /// (group commit): an alert storm on one held target is not one fsync per alert.
    async fn record_unlocked(&self, entries: Vec<Entry>) -> Result<Vec<Record>, AuditError> {
        let _writing = self.unlocked_writes.read().await;
        let records = self.audit.append(entries).await?;
        let mut state = self.state.lock().await;
        for r in &records {
            debug_assert!(!matches!(r.entry.kind, Kind::Decided | Kind::Applied | Kind::Control | Kind::DryRun));
            state.observe(r);
            count_decision(r);
        }
        Ok(records)
    }

    #[instrument(name = "action", skip_all, fields(rule = %rule, action_id = %action_id, target = %target, write = write))]
    async fn run(&self, target: &ObjectRef, decide: &Decide<'_>, action_id: &str, rule: &str, write: bool) -> Outcome {
        if target.kind == ObjectKind::FlaggerCanary {
            // Nothing is written: the decision is the action, answered to Flagger's webhook.
            return Outcome::Applied { before: json!({ "rollback": false }), after: json!({ "rollback": true }) };
        }
        let at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let meta = Meta { action_id, rule, at: &at };
        let started = std::time::Instant::now();
        let outcome = match self.gate().action_deadline(Utc::now(), self.settings().action_timeout) {
            Some(deadline) => actions::execute(self.target.as_ref(), target, decide, &meta, deadline, write).await,
            // A cluster replica whose lease ran out: the next leader resumes the action.
            None => Outcome::Failed { reason: "this replica no longer leads: not written".into() },
        };
        let described = self.target.describe();
        let kind = described.split(':').next().unwrap_or_default();
        MetricEvent::ActionFinished { target: kind, took: started.elapsed() }.emit();
        if write {
            let ui_url = self.settings().ui_url;
            let notice = |warning, reason, what: String| Notice {
                warning,
                reason,
                message: notice_message(action_id, rule, &what, ui_url.as_deref()),
            };
            let notice = match &outcome {
                Outcome::Applied { before, after } => {
                    Some(notice(false, "BackstopApplied", format!("changed {} to {}", json!(before), json!(after))))
                }
                Outcome::Refused { reason } => Some(notice(true, "BackstopRefused", format!("refused: {reason}"))),
                Outcome::Failed { reason } => Some(notice(true, "BackstopFailed", format!("failed: {reason}"))),
                Outcome::NoOp { .. } => None,
            };
            if let Some(n) = notice {
                self.target.notify(target, &n).await;
            }
        }
        outcome
    }

    /// Record a note from the service itself (a reload, for instance).
    pub async fn note(&self, entry: Entry) -> Result<(), AuditError> {
        let mut state = self.state.lock().await;
        self.record(&mut state, vec![entry]).await.map(|_| ())
    }
}

/// Count a rule's match or decision as recorded.
fn count_decision(r: &Record) {
    let rule = r.entry.rule.as_deref().unwrap_or("");
    match r.entry.kind {
        Kind::Matched => MetricEvent::RuleMatched { rule }.emit(),
        kind @ (Kind::Applied | Kind::Noop | Kind::Held | Kind::Refused | Kind::Failed | Kind::DryRun) => {
            MetricEvent::Decided { rule, outcome: kind.as_str() }.emit()
        }
        _ => {}
    }
}

/// Count a promotion's step, or its stop by a rollback (`promoting`: the canary the target was
/// being promoted before the record). True when a promotion may have reached its end.
fn count_promotion(r: &Record, promoting: Option<String>, state: &GuardState) -> bool {
    let Some(target) = r.entry.target.as_deref() else { return false };
    let now = state.promotions().under_way(target);
    if matches!(r.entry.kind, Kind::Applied | Kind::Noop)
        && let Some(p) = now
        && p.stages.last().is_some_and(|s| Some(&s.action_id) == r.entry.action_id.as_ref())
    {
        MetricEvent::PromotionStep { rule: &p.rule, target, canary: &p.canary, weight: p.weight() }.emit();
        return p.complete();
    }
    if let (Some(canary), None, false) = (&promoting, now, r.entry.kind == Kind::Promoted) {
        MetricEvent::PromotionStopped { target, canary }.emit();
    }
    false
}

fn outcome_word(o: &Outcome) -> &'static str {
    match o {
        Outcome::Applied { .. } => "applied",
        Outcome::NoOp { .. } => "a no-op (already in the desired state)",
        Outcome::Refused { .. } => "refused",
        Outcome::Failed { .. } => "failed",
    }
}

/// The record of an outcome; `detail.kind` says which kind of object (for `undo`).
fn outcome_entry(entry: Entry, outcome: &Outcome, kind: ObjectKind) -> Entry {
    let entry = entry.detail(KindPart { kind }.value());
    match outcome {
        Outcome::Applied { before, after } => entry.before(json!(before)).after(json!(after)),
        Outcome::NoOp { state } => entry.before(json!(state)).reason("already in the desired state; nothing written"),
        Outcome::Refused { reason } | Outcome::Failed { reason } => entry.reason(reason),
    }
}

fn log_outcome(outcome: &Outcome, target: &str, action_id: &str) {
    match outcome {
        Outcome::Applied { .. } => info!(%target, %action_id, "applied"),
        Outcome::NoOp { .. } => info!(%target, %action_id, "noop"),
        Outcome::Refused { reason } => warn!(%target, %action_id, %reason, "refused"),
        Outcome::Failed { reason } => warn!(%target, %action_id, %reason, "failed"),
    }
}
