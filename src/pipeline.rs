//! The pipeline: record every event durably, hand it to the rules engine, vet each decision with
//! the guards, act through the target, and record each step.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use tracing::{info, instrument, warn};

use crate::actions::{self, ActionPlan, Decide, Meta, Outcome};
use crate::audit::{self, AuditError, AuditLog, Entry, Kind, Record};
use crate::confirm::{self, SharedPrometheus};
use crate::event::Feedback;
use crate::event::{Alert, AlertStatus, SourceKind};
use crate::feedback::arms::{ArmKey, Origin};
use crate::guards::{self, GuardSettings, GuardState, Verdict};
use crate::rules::{Decision, Rule, RuleSet};
use crate::stepdown::{self, StepDown, StepInfo};
use crate::target::{Notice, ObjectKind, ObjectRef, Target};
use crate::telemetry::metrics::Event as MetricEvent;

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

/// Why a feedback rule acts: its evidence, and the arms whose comparison the action ends.
struct FeedbackContext {
    evidence: Value,
    arms: Vec<ArmKey>,
}

/// After a feedback rule's finding was held, refused or failed, the same finding is not
/// decided again for this long (each event would otherwise record it again).
pub const FEEDBACK_QUIET: Duration = Duration::from_secs(60);

/// A request that could not be accepted, recorded so nothing sent is lost without trace.
#[derive(Debug, Clone)]
pub struct Rejection<'a> {
    pub source: &'a str,
    /// Where it came from: the HTTP status answered, or the topic, partition and offset.
    pub origin: Value,
    pub reason: String,
    pub size: usize,
    pub body: &'a [u8],
    pub body_sha256: String,
}

/// Bytes of a rejected body kept in its audit record.
pub const REJECTED_PREFIX: usize = 512;
/// The same rejected body is recorded once per this period; repeats in between are counted.
const REJECTION_DEDUP: Duration = Duration::from_secs(600);
const REJECTION_MEMORY: usize = 4096;

pub struct Pipeline {
    rules: RwLock<Arc<RuleSet>>,
    audit: AuditLog,
    target: Arc<dyn Target>,
    state: tokio::sync::Mutex<GuardState>,
    settings: RwLock<Settings>,
    rejections: std::sync::Mutex<HashMap<String, (DateTime<Utc>, u64)>>,
    restored: Restored,
    prometheus: Option<SharedPrometheus>,
    /// Feedback findings not to decide again before a time (see [`FEEDBACK_QUIET`]).
    feedback_quiet: std::sync::Mutex<HashMap<String, DateTime<Utc>>>,
    /// Verifications to start (taken by the task [`Pipeline::spawn_verifier`] starts).
    verify_tx: tokio::sync::mpsc::UnboundedSender<guards::PendingVerification>,
    verify_rx: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<guards::PendingVerification>>>,
    /// Wakes the task [`Pipeline::spawn_step_downs`] starts when a step-down's schedule changes.
    step_wake: tokio::sync::Notify,
}

/// The guards' state snapshot, beside the audit log's segments.
pub const SNAPSHOT_FILE: &str = "snapshot.json";

/// How the guards' state was restored at start.
#[derive(Debug, Clone, PartialEq)]
pub struct Restored {
    /// The seq the snapshot covered, if a valid one was found.
    pub snapshot_seq: Option<u64>,
    /// Records read from the log after it (all of them without a snapshot).
    pub replayed: u64,
    /// Why the snapshot was not used, if it was not.
    pub note: Option<String>,
}

fn longest_cooldown(rules: &RuleSet) -> Duration {
    rules.rules().iter().filter_map(|r| r.cooldown).max().unwrap_or_default()
}

/// Load the snapshot if it matches the log (the record it covers still hashes the same), then
/// replay the records after it; otherwise rebuild from the whole log.
fn restore_state(dir: &std::path::Path) -> Result<(GuardState, Restored), AuditError> {
    let path = dir.join(SNAPSHOT_FILE);
    let loaded: Result<guards::Snapshot, String> = match std::fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("no snapshot".into()),
        Err(e) => Err(format!("snapshot unreadable: {e}")),
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("snapshot invalid: {e}")),
    };
    let mut replayed = 0;
    let mut replay = |state: &mut GuardState, records: &mut dyn Iterator<Item = Result<Record, AuditError>>| {
        for record in records {
            state.observe(&record?);
            replayed += 1;
        }
        Ok::<_, AuditError>(())
    };
    let (state, snapshot_seq, note) = match loaded {
        Ok(s) if s.format != guards::SNAPSHOT_FORMAT => {
            (GuardState::default(), None, Some(format!("snapshot format {} unknown", s.format)))
        }
        // A snapshot of an empty log: everything in the log comes after it.
        Ok(s) if s.position.seq == 0 && s.position.hash == audit::GENESIS => {
            let mut state = GuardState::from_snapshot(s);
            replay(&mut state, &mut audit::records(dir)?)?;
            (state, Some(0), None)
        }
        Ok(s) => {
            let seq = s.position.seq;
            match audit::records_after_position(dir, &s.position)? {
                Some(mut tail) => {
                    let mut state = GuardState::from_snapshot(s);
                    replay(&mut state, &mut tail)?;
                    (state, Some(seq), None)
                }
                None => (GuardState::default(), None, Some(format!("snapshot (seq {seq}) does not match the log"))),
            }
        }
        Err(note) => (GuardState::default(), None, Some(note)),
    };
    let (state, note) = match note {
        None => (state, None),
        Some(note) => {
            let mut state = GuardState::default();
            replay(&mut state, &mut audit::records(dir)?)?;
            (state, Some(format!("{note}: rebuilt from the whole log")))
        }
    };
    Ok((state, Restored { snapshot_seq, replayed, note }))
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
            note = restored.note.as_deref().unwrap_or(""),
            "guard state restored"
        );
        Ok(Pipeline {
            rules: RwLock::new(Arc::new(rules)),
            audit,
            target,
            state: tokio::sync::Mutex::new(state),
            settings: RwLock::new(settings),
            rejections: Default::default(),
            restored,
            prometheus: None,
            feedback_quiet: Default::default(),
            verify_tx,
            verify_rx: std::sync::Mutex::new(Some(verify_rx)),
            step_wake: tokio::sync::Notify::new(),
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

    /// Write the guards' state beside the log (atomically), so the next start replays only what
    /// comes after it. Expired keys and cooldowns are dropped first.
    pub async fn save_snapshot(&self) -> Result<u64, AuditError> {
        let snapshot = {
            let mut state = self.state.lock().await;
            state.prune(Utc::now(), &self.settings().guards, longest_cooldown(&self.rules()));
            state.snapshot(self.audit.position())
        };
        let seq = snapshot.position.seq;
        let path = self.audit.dir().join(SNAPSHOT_FILE);
        let bytes = serde_json::to_vec(&snapshot).map_err(|e| AuditError::Io {
            action: "serialise",
            path: path.clone(),
            source: e.into(),
        })?;
        tokio::task::spawn_blocking(move || {
            crate::fsutil::write_atomically(&path, &bytes).map_err(|source| AuditError::Io {
                action: "write snapshot",
                path,
                source,
            })
        })
        .await
        .map_err(|_| AuditError::Stopped)??;
        Ok(seq)
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

    async fn record(&self, state: &mut GuardState, entries: Vec<Entry>) -> Result<Vec<Record>, AuditError> {
        let records = self.audit.append(entries).await?;
        let mut reschedule = false;
        for r in &records {
            state.observe(r);
            count_decision(r);
            reschedule |= r.entry.kind == Kind::Unverified
                || r.entry.detail.as_ref().is_some_and(|d| d.get(stepdown::STEP_DOWN).is_some());
        }
        if reschedule {
            self.step_wake.notify_one();
        }
        Ok(records)
    }

    /// Record what changes no guard (a hold, a refusal before acting, a duplicate's no-op)
    /// without holding the state across the write, so concurrent deliveries share one fsync
    /// (group commit): an alert storm on one held target is not one fsync per alert.
    async fn record_unlocked(&self, entries: Vec<Entry>) -> Result<Vec<Record>, AuditError> {
        let records = self.audit.append(entries).await?;
        let mut state = self.state.lock().await;
        for r in &records {
            debug_assert!(!matches!(r.entry.kind, Kind::Decided | Kind::Applied | Kind::Control | Kind::DryRun));
            state.observe(r);
            count_decision(r);
        }
        Ok(records)
    }

    /// Record a rejected request. The same body (by hash) is written once per period; repeats
    /// in between are counted and reported with the next record of that body.
    pub async fn reject(&self, r: Rejection<'_>) -> Result<(), AuditError> {
        MetricEvent::Received { source: r.source, outcome: "rejected", count: 1 }.emit();
        let now = Utc::now();
        let period = chrono::Duration::from_std(REJECTION_DEDUP).unwrap_or_default();
        let repeats = {
            let mut seen = self.rejections.lock().unwrap_or_else(|p| p.into_inner());
            let repeats = match seen.get_mut(&r.body_sha256) {
                Some((first, count)) if now - *first < period => {
                    *count += 1;
                    return Ok(());
                }
                Some((_, count)) => *count,
                None => 0,
            };
            // Claimed before the write, so the same body arriving meanwhile is counted, not
            // recorded again; released if the write fails (recorded when it comes again).
            seen.insert(r.body_sha256.clone(), (now, 0));
            repeats
        };
        // Credential-like values are redacted whatever the source (HTTP bodies, Kafka messages).
        let prefix = crate::redact::redact(&r.body[..r.body.len().min(REJECTED_PREFIX)]);
        let mut detail = json!({
            "size": r.size,
            "sha256": &r.body_sha256,
            "prefix": String::from_utf8_lossy(&prefix),
            "repeats_before": repeats,
        });
        if let (Value::Object(d), Value::Object(origin)) = (&mut detail, r.origin) {
            d.extend(origin);
        }
        let entry = Entry::new(Kind::Rejected).source(r.source).reason(r.reason).detail(detail);
        if let Err(e) = self.audit.append(vec![entry]).await {
            // Only a recorded body is remembered: this one is recorded when it comes again.
            self.rejections.lock().unwrap_or_else(|p| p.into_inner()).remove(&r.body_sha256);
            return Err(e);
        }
        // The memory is bounded: past its size, expired entries go, and if that is not enough,
        // all but this one (de-duplication is a saving, not a guarantee).
        let mut seen = self.rejections.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > REJECTION_MEMORY {
            seen.retain(|_, (t, _)| now - *t < period);
            if seen.len() > REJECTION_MEMORY {
                seen.clear();
                seen.insert(r.body_sha256, (now, 0));
            }
        }
        Ok(())
    }

    /// Record a feedback event durably, count it in its arm, and act for every feedback rule
    /// that now finds the canary worse. `origin` says where it came from (`{"kafka": {topic,
    /// partition, offset}}` or `{"http": ...}`). An event counted before (a redelivery: same
    /// Kafka position or same id) is neither recorded nor counted again.
    pub async fn feedback(
        &self,
        f: &Feedback,
        source: SourceKind,
        origin: Value,
    ) -> Result<FeedbackReport, PipelineError> {
        let mut reports = self.feedback_batch(&[(f, &origin)], source).await?;
        Ok(reports.remove(0))
    }

    /// [`Pipeline::feedback`] for many events: their records are appended together (one
    /// durable write), then each is counted and judged in order. One report per event.
    #[instrument(skip_all, fields(events = events.len()))]
    pub async fn feedback_batch(
        &self,
        events: &[(&Feedback, &Value)],
        source: SourceKind,
    ) -> Result<Vec<FeedbackReport>, PipelineError> {
        /// A received record's detail: the event and where it came from (`kafka: {...}`),
        /// serialised straight from them.
        #[derive(Serialize)]
        struct Received<'a> {
            feedback: &'a Feedback,
            #[serde(flatten)]
            origin: &'a Value,
        }
        let rules = self.rules();
        let mut out: Vec<FeedbackReport> = Vec::with_capacity(events.len());
        let mut findings = Vec::new();
        {
            let mut state = self.state.lock().await;
            let mut fresh: Vec<usize> = Vec::new();
            let no_origin = Value::Object(Default::default());
            let mut in_batch: std::collections::HashSet<String> = std::collections::HashSet::new();
            let mut entries = Vec::new();
            for (i, (f, origin)) in events.iter().enumerate() {
                let event_id = f.id.clone().unwrap_or_else(|| match &origin["kafka"] {
                    k if k.is_object() => {
                        format!("kafka:{}/{}/{}", k["topic"].as_str().unwrap_or("?"), k["partition"], k["offset"])
                    }
                    _ => format!("feedback-{}", uuid::Uuid::now_v7()),
                });
                let origin = Origin::of(f, origin);
                // Also a repeat within this batch (by id, or by Kafka position).
                let id = origin.id.map(|id| format!("id:{id}"));
                let position = origin.kafka.map(|(t, p, o)| format!("kafka:{t}/{p}/{o}"));
                let repeated = state.arms().seen(&origin)
                    || id.as_ref().is_some_and(|k| in_batch.contains(k))
                    || position.as_ref().is_some_and(|k| in_batch.contains(k));
                out.push(FeedbackReport { event_id: event_id.clone(), duplicate: repeated, reports: Vec::new() });
                if repeated {
                    continue;
                }
                in_batch.extend(id.into_iter().chain(position));
                // Its keys go next to `feedback`; anything but an object adds none.
                let origin = if events[i].1.is_object() { events[i].1 } else { &no_origin };
                let entry = Entry::new(Kind::Received)
                    .event_id(&event_id)
                    .source(source.as_str())
                    .target(format!("{}/{}", f.namespace, f.service))
                    .detail_of(&Received { feedback: f, origin })?;
                entries.push(entry);
                fresh.push(i);
            }
            let duplicates = (events.len() - entries.len()) as u64;
            MetricEvent::Received { source: source.as_str(), outcome: "duplicate", count: duplicates }.emit();
            if entries.is_empty() {
                return Ok(out);
            }
            let accepted = entries.len() as u64;
            let records = self.audit.append(entries).await?;
            MetricEvent::Received { source: source.as_str(), outcome: "accepted", count: accepted }.emit();
            let quiet = self.feedback_quiet.lock().unwrap_or_else(|p| p.into_inner());
            for (i, record) in fresh.iter().zip(&records) {
                let (f, origin) = events[*i];
                state.observe_feedback(record.time, f, &Origin::of(f, origin));
                for rule in rules.feedback_rules(&f.namespace, &f.service, &f.version) {
                    let Some(spec) = &rule.feedback else { continue };
                    let Some(finding) = spec.evaluate(state.arms(), &f.namespace, record.time) else { continue };
                    let key = format!("{}|{}", rule.name, finding.comparison);
                    let quieted = quiet.get(&key).is_some_and(|until| *until > record.time);
                    let pending = findings.iter().any(|(_, _, k, _): &(usize, _, String, _)| *k == key);
                    if !state.has_key(&key) && !quieted && !pending {
                        findings.push((*i, rule.clone(), key, finding));
                    }
                }
            }
        }
        for (i, rule, key, finding) in findings {
            let report = self.act_on_finding(&out[i].event_id, source, &rule, key, finding).await?;
            out[i].reports.push(report);
        }
        Ok(out)
    }

    /// Decide (guards, confirmation, dry run) and act on a feedback rule's finding.
    async fn act_on_finding(
        &self,
        event_id: &str,
        source: SourceKind,
        rule: &Rule,
        key: String,
        finding: crate::feedback::rule::Finding,
    ) -> Result<Report, PipelineError> {
        let alert = Alert {
            id: event_id.to_string(),
            source,
            name: format!("feedback:{}", rule.name),
            status: AlertStatus::Firing,
            labels: finding.labels.clone(),
            annotations: Default::default(),
            starts_at: Utc::now(),
            ends_at: None,
            fingerprint: finding.comparison.clone(),
            generator_url: String::new(),
        };
        let decision = match rule.target_for_labels(&finding.labels).and_then(|t| Ok((t, rule.plan(&finding.labels)?)))
        {
            Ok((target, plan)) => {
                Decision::Act { rule: rule.name.clone(), key: key.clone(), target, plan, dry_run: rule.dry_run }
            }
            Err(missing) => Decision::Refuse { rule: rule.name.clone(), reason: missing.to_string() },
        };
        let context = FeedbackContext { evidence: finding.evidence, arms: finding.arms };
        let report = self.decided(&alert, rule, decision, Some(&context)).await?;
        if !matches!(report.outcome, Kind::Applied | Kind::Noop | Kind::DryRun | Kind::Decided) {
            // Held, refused or failed: the next events would find the same; say it again only
            // after a while rather than at every event.
            let until = Utc::now() + chrono::Duration::from_std(FEEDBACK_QUIET).unwrap_or_default();
            let mut quiet = self.feedback_quiet.lock().unwrap_or_else(|p| p.into_inner());
            if quiet.len() >= REJECTION_MEMORY {
                let now = Utc::now();
                quiet.retain(|_, t| *t > now);
            }
            quiet.insert(key, until);
        }
        Ok(report)
    }

    /// Record the alerts durably, then decide and act on each. Returns once everything is recorded.
    #[instrument(skip_all, fields(alerts = alerts.len()))]
    pub async fn alerts(&self, alerts: &[Alert], context: Value) -> Result<Vec<Report>, PipelineError> {
        #[derive(Serialize)]
        struct Delivered<'a> {
            alert: &'a Alert,
            delivery: &'a Value,
        }
        let mut received = Vec::with_capacity(alerts.len());
        for a in alerts {
            let entry = Entry::new(Kind::Received).event_id(&a.id).source(a.source.as_str());
            let detail = Delivered { alert: a, delivery: &context };
            received.push(entry.detail_of(&detail)?);
        }
        self.audit.append(received).await?;
        // One count per run of alerts from the same source (a payload's are all one source).
        for run in alerts.chunk_by(|a, b| a.source == b.source) {
            MetricEvent::Received { source: run[0].source.as_str(), outcome: "accepted", count: run.len() as u64 }
                .emit();
        }
        let rules = self.rules();
        let mut reports = Vec::new();
        for alert in alerts {
            let decisions = rules.decide(alert, Utc::now());
            if decisions.is_empty() {
                reports.push(Report {
                    event_id: alert.id.clone(),
                    rule: None,
                    outcome: Kind::Received,
                    target: None,
                    action_id: None,
                    reason: Some("no rule matches".into()),
                });
            }
            for decision in decisions {
                let rule = rules.get(decision.rule()).cloned();
                if let Some(rule) = rule {
                    reports.push(self.decided(alert, &rule, decision, None).await?);
                }
            }
        }
        Ok(reports)
    }

    #[instrument(skip_all, fields(event_id = %alert.id, rule = %rule.name))]
    async fn decided(
        &self,
        alert: &Alert,
        rule: &Rule,
        decision: Decision,
        feedback: Option<&FeedbackContext>,
    ) -> Result<Report, PipelineError> {
        let mut matched = Entry::new(Kind::Matched)
            .event_id(&alert.id)
            .source(alert.source.as_str())
            .rule(&rule.name)
            .detail(json!({ "action": rule.action_summary(), "status": alert.status }));
        if let Some(f) = feedback {
            matched = matched.detail(json!({ "evidence": f.evidence }));
        }
        // An action on feedback, once applied (or found done), ends the comparison.
        let ends_comparison = |entry: Entry| match feedback {
            Some(f) => entry.detail(json!({ guards::FEEDBACK_ARMS: f.arms })),
            None => entry,
        };
        let report =
            |outcome: Kind, target: Option<&ObjectRef>, action_id: Option<&str>, reason: Option<String>| Report {
                event_id: alert.id.clone(),
                rule: Some(rule.name.clone()),
                outcome,
                target: target.map(ToString::to_string),
                action_id: action_id.map(str::to_string),
                reason,
            };
        let (key, target, plan, dry_run) = match decision {
            Decision::Hold { reason, .. } => {
                let held = Entry::new(Kind::Held).event_id(&alert.id).rule(&rule.name).reason(&reason);
                self.record_unlocked(vec![matched, held]).await?;
                return Ok(report(Kind::Held, None, None, Some(reason)));
            }
            Decision::Refuse { reason, .. } => {
                let refused = Entry::new(Kind::Refused).event_id(&alert.id).rule(&rule.name).reason(&reason);
                self.record_unlocked(vec![matched, refused]).await?;
                return Ok(report(Kind::Refused, None, None, Some(reason)));
            }
            Decision::Act { key, target, plan, dry_run, .. } => (key, target, plan, dry_run),
        };
        let mut state = self.state.lock().await;
        let now = Utc::now();
        let settings = self.settings();
        let cooldown = rule.cooldown.unwrap_or(settings.guards.default_cooldown);
        state.prune(now, &settings.guards, cooldown);
        let target_name = target.to_string();
        let base = |kind: Kind| Entry::new(kind).event_id(&alert.id).rule(&rule.name).target(&target_name).key(&key);
        // A new alert for a target this rule is stepping down: straight to 0, at once (no
        // cooldown or cap: the action is under way), unless on-call paused the target.
        if let Some(sd) = state.step_down(&target_name).filter(|d| d.rule == rule.name).cloned()
            && !state.has_key(&key)
            && state.paused(&target_name).is_none()
        {
            let mut sd = StepDown { event_id: Some(alert.id.clone()), ..sd };
            sd.to_zero(now);
            let why =
                format!("a new alert during the gradual rollback begun by action {}: straight to 0 at once", sd.origin);
            info!(target = %target_name, origin = %sd.origin, "new alert during a gradual rollback: straight to 0");
            return Ok(self.take_step(state, &sd, vec![matched], Some(&key), &why).await?.0);
        }
        // Prometheus is asked without holding the state (other events go on meanwhile); what
        // changed while it answered is vetted again after.
        let mut verdict = state.vet(&rule.name, &key, &target_name, cooldown, &settings.guards, now);
        let mut confirmed = None;
        if verdict == Verdict::Proceed
            && let Some(confirm) = &rule.confirm
        {
            drop(state);
            confirmed = Some(self.confirm(confirm, alert).await);
            state = self.state.lock().await;
            verdict = state.vet(&rule.name, &key, &target_name, cooldown, &settings.guards, Utc::now());
        }
        match verdict {
            Verdict::Duplicate { action_id } => {
                let reason = format!("duplicate delivery: this alert was already handled by action {action_id}");
                // Marked, so it is not taken for the outcome of that action (still in flight, maybe).
                let noop = base(Kind::Noop).action_id(&action_id).reason(&reason).detail(json!({ "duplicate": true }));
                drop(state);
                self.record_unlocked(vec![matched, noop]).await?;
                Ok(report(Kind::Noop, Some(&target), Some(&action_id), Some(reason)))
            }
            Verdict::Held { reason } => {
                drop(state);
                self.record_unlocked(vec![matched, base(Kind::Held).reason(&reason)]).await?;
                info!(target = %target_name, %reason, "held");
                Ok(report(Kind::Held, Some(&target), None, Some(reason)))
            }
            Verdict::Proceed => {
                let confirmation = match confirmed {
                    None => None,
                    Some(answer) => match answer {
                        (confirm::Verdict::Go, evidence) => Some(evidence),
                        (confirm::Verdict::Hold(reason), evidence) => {
                            let held = base(Kind::Held).reason(&reason).detail(json!({ "confirmation": evidence }));
                            drop(state);
                            self.record_unlocked(vec![matched, held]).await?;
                            info!(target = %target_name, %reason, "held by its confirmation");
                            return Ok(report(Kind::Held, Some(&target), None, Some(reason)));
                        }
                        (confirm::Verdict::Fail(reason), evidence) => {
                            let failed = base(Kind::Failed).reason(&reason).detail(json!({ "confirmation": evidence }));
                            drop(state);
                            self.record_unlocked(vec![matched, failed]).await?;
                            return Ok(report(Kind::Failed, Some(&target), None, Some(reason)));
                        }
                    },
                };
                let action_id = uuid::Uuid::now_v7().to_string();
                let decide = |obj: &Value| plan.decide(obj);
                let dry = dry_run || settings.dry_run;
                let verify = rule.verify.as_ref().map(|v| verify_detail(v, &alert.labels));
                let step = stepdown::is_step(&plan).then(|| StepInfo {
                    origin: action_id.clone(),
                    step: 1,
                    interval_ms: rule.step_interval.map_or(60_000, |i| i.as_millis() as u64),
                    verify: verify.clone(),
                    remaining: None,
                    next_at: None,
                    next: None,
                });
                let mut decided = base(Kind::Decided).action_id(&action_id).detail(json!({
                    "action": rule.action_summary(),
                    "dry_run": dry,
                    "target": self.target.describe(),
                    "plan": plan,
                    "confirmation": confirmation,
                }));
                if let Some(step) = &step {
                    decided = decided.detail(json!({ stepdown::STEP_DOWN: step }));
                }
                // Carried by `decided` too, so an action resumed after a crash still ends it.
                let decided = ends_comparison(decided);
                if dry {
                    let outcome = self.run(&target, &decide, &action_id, &rule.name, false).await;
                    let reason = format!("dry run: would be {}", outcome_word(&outcome));
                    let entry =
                        outcome_entry(base(Kind::DryRun).action_id(&action_id), &outcome, target.kind).reason(&reason);
                    self.record(&mut state, vec![matched, entry]).await?;
                    return Ok(report(Kind::DryRun, Some(&target), Some(&action_id), Some(reason)));
                }
                self.record(&mut state, vec![matched, decided]).await?;
                // The target is read and written without holding the state: the `decided` record
                // marks the action in flight (the guards hold this rule on this target meanwhile).
                drop(state);
                let outcome = self.run(&target, &decide, &action_id, &rule.name, true).await;
                let mut state = self.state.lock().await;
                let entry = outcome_entry(base(outcome.kind()).action_id(&action_id), &outcome, target.kind);
                let entry = if matches!(outcome, Outcome::Applied { .. } | Outcome::NoOp { .. }) {
                    ends_comparison(entry)
                } else {
                    entry
                };
                let entry = match (&outcome, &plan) {
                    (Outcome::Applied { .. }, ActionPlan::FlaggerRollback { hold_ms }) => {
                        entry.detail(json!({ guards::FLAGGER_HOLD_MS: hold_ms }))
                    }
                    _ => entry,
                };
                let entry = match (&outcome, verify, &step) {
                    (_, _, Some(step)) => step_outcome(entry, &plan, step, &outcome),
                    (Outcome::Applied { .. }, Some(v), None) => entry.detail(json!({ "verify": v })),
                    _ => entry,
                };
                let reason = entry.reason.clone();
                let records = self.record(&mut state, vec![entry]).await?;
                log_outcome(&outcome, &target_name, &action_id);
                if let Some(pending) = records.first().and_then(guards::PendingVerification::from_record) {
                    self.queue_verification(pending);
                }
                // The canary was already at or below the first step: the alert still asks for a
                // change, so the next step is taken now rather than after the interval.
                if matches!(outcome, Outcome::NoOp { .. })
                    && let Some(next) = state.step_down(&target_name).filter(|d| d.origin == action_id).cloned()
                {
                    let why = format!(
                        "step {} of the gradual rollback begun by action {action_id}, at once: \
                         the canary was already at or below step {}",
                        next.step,
                        next.step - 1
                    );
                    return Ok(self.take_step(state, &next, Vec::new(), None, &why).await?.0);
                }
                Ok(report(outcome.kind(), Some(&target), Some(&action_id), reason))
            }
        }
    }

    /// Ask Prometheus whether the alert's claim still holds (the rule's `confirm:`).
    #[instrument(skip_all, fields(event_id = %alert.id))]
    async fn confirm(&self, confirm: &confirm::Confirm, alert: &Alert) -> (confirm::Verdict, Value) {
        let promql = match confirm.query.render(&alert.labels) {
            Ok(q) => q.trim().to_string(),
            Err(missing) => {
                let why = format!("confirmation query: {missing}");
                return (confirm::Verdict::Fail(why.clone()), json!({ "error": why }));
            }
        };
        let Some(prometheus) = &self.prometheus else {
            let why = "the rule asks Prometheus to confirm, but no `prometheus:` is configured".to_string();
            return (confirm::Verdict::Hold(why.clone()), json!({ "query": promql, "error": why }));
        };
        let (verdict, evidence) = confirm.check(prometheus.as_ref(), &promql).await;
        info!(query = %promql, value = ?evidence.value, result = evidence.result, "confirmation");
        (verdict, evidence.to_json())
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
        let outcome =
            actions::execute(self.target.as_ref(), target, decide, &meta, self.settings().action_timeout, write).await;
        let described = self.target.describe();
        let kind = described.split(':').next().unwrap_or_default();
        MetricEvent::ActionFinished { target: kind, took: started.elapsed() }.emit();
        if write {
            let notice = |warning, reason, what: String| Notice {
                warning,
                reason,
                message: format!("backstop action {action_id} (rule {rule}): {what}"),
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

    /// Finish the actions a previous run decided but did not finish (it stopped between the
    /// `decided` record and the outcome). Safe to run again: a target already changed is a no-op.
    pub async fn resume_pending(&self) -> Result<Vec<Report>, PipelineError> {
        let mut state = self.state.lock().await;
        let mut reports = Vec::new();
        for p in state.pending() {
            let base = |kind: Kind| {
                let mut e = Entry::new(kind).rule(&p.rule).target(&p.target).action_id(&p.action_id);
                e.key = p.key.clone();
                e.event_id = p.event_id.clone();
                e
            };
            let plan: Result<ActionPlan, _> = serde_json::from_value(p.plan.clone());
            let kind = plan.as_ref().map(ActionPlan::kind).unwrap_or(ObjectKind::VirtualService);
            let target: Result<ObjectRef, _> = p.target.parse::<ObjectRef>().map(|t| ObjectRef { kind, ..t });
            let step: Option<StepInfo> = p.step_down.as_ref().and_then(|s| serde_json::from_value(s.clone()).ok());
            let outcome = match (&plan, target) {
                (Ok(plan), Ok(target)) => {
                    let decide = |obj: &Value| plan.decide(obj);
                    self.run(&target, &decide, &p.action_id, &p.rule, true).await
                }
                (Err(e), _) => Outcome::Failed { reason: format!("cannot resume: recorded plan unreadable: {e}") },
                (_, Err(e)) => Outcome::Failed { reason: format!("cannot resume: {e}") },
            };
            let mut entry = outcome_entry(base(outcome.kind()), &outcome, kind);
            if let (Some(step), Ok(plan)) = (&step, &plan) {
                entry = step_outcome(entry, plan, step, &outcome);
            }
            if matches!(outcome, Outcome::Applied { .. } | Outcome::NoOp { .. })
                && let Some(arms) = &p.feedback_arms
            {
                entry = entry.detail(json!({ guards::FEEDBACK_ARMS: arms }));
            }
            let why = entry.reason.take().map(|r| format!(": {r}")).unwrap_or_default();
            entry.reason = Some(format!("resumed after a restart (the previous run stopped during this action){why}"));
            let reason = entry.reason.clone();
            let records = self.record(&mut state, vec![entry]).await?;
            log_outcome(&outcome, &p.target, &p.action_id);
            if let Some(pending) = records.first().and_then(guards::PendingVerification::from_record) {
                self.queue_verification(pending);
            }
            reports.push(Report {
                event_id: p.event_id.clone().unwrap_or_default(),
                rule: Some(p.rule.clone()),
                outcome: outcome.kind(),
                target: Some(p.target.clone()),
                action_id: Some(p.action_id.clone()),
                reason,
            });
        }
        Ok(reports)
    }

    /// The kill switch: fire a rule's action by hand on a target. Bypasses pause, cooldown and
    /// cap (a person decided), never the target's own state check.
    pub async fn act(
        &self,
        rule_name: &str,
        target: &ObjectRef,
        actor: &str,
        reason: &str,
    ) -> Result<Report, PipelineError> {
        let rules = self.rules();
        let rule = rules.get(rule_name).ok_or_else(|| PipelineError::UnknownRule(rule_name.into()))?;
        let plan = rule.plan(&Default::default()).map_err(|e| {
            PipelineError::NeedsAlert(format!(
                "rule {rule_name} takes its route names from an alert's labels ({e}); it cannot be fired by hand"
            ))
        })?;
        let decide = |obj: &Value| plan.decide(obj);
        let target = ObjectRef { kind: rule.kind, ..target.clone() };
        self.manual("act", &rule.name, &target, actor, reason, &decide, None).await
    }

    /// Put back the state recorded before `action_id`, if the object is still as that action left it.
    pub async fn undo(&self, action_id: &str, actor: &str, reason: &str) -> Result<Report, PipelineError> {
        let filter =
            audit::Filter { action_id: Some(action_id.into()), kinds: vec![Kind::Applied], ..Default::default() };
        let applied = audit::query(self.audit.dir(), &filter)?
            .into_iter()
            .next()
            .ok_or_else(|| PipelineError::UnknownAction(action_id.into()))?;
        let e = &applied.entry;
        let kind = e
            .detail
            .as_ref()
            .and_then(|d| d["kind"].as_str())
            .and_then(|k| k.parse::<ObjectKind>().ok())
            .unwrap_or(ObjectKind::VirtualService);
        let target: Option<ObjectRef> =
            e.target.as_deref().and_then(|t| t.parse::<ObjectRef>().ok()).map(|t| ObjectRef { kind, ..t });
        let (Some(target), Some(before), Some(after)) = (target, e.before.clone(), e.after.clone()) else {
            return Err(PipelineError::UnknownAction(action_id.into()));
        };
        let decide = |obj: &Value| actions::undo(kind, obj, &before, &after, &target, action_id);
        let rule = e.rule.clone().unwrap_or_default();
        self.manual("undo", &rule, &target, actor, reason, &decide, Some(action_id)).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn manual(
        &self,
        control: &str,
        rule: &str,
        target: &ObjectRef,
        actor: &str,
        reason: &str,
        decide: &Decide<'_>,
        undoes: Option<&str>,
    ) -> Result<Report, PipelineError> {
        let mut state = self.state.lock().await;
        let action_id = uuid::Uuid::now_v7().to_string();
        let event_id = format!("manual-{action_id}");
        let target_name = target.to_string();
        let base = |kind: Kind| {
            Entry::new(kind)
                .event_id(&event_id)
                .source("manual")
                .rule(rule)
                .target(&target_name)
                .action_id(&action_id)
                .actor(actor)
        };
        let detail = json!({ "control": control, "undoes": undoes, "target": self.target.describe() });
        self.record(&mut state, vec![base(Kind::Control).reason(reason).detail(detail)]).await?;
        drop(state);
        let outcome = self.run(target, decide, &action_id, rule, true).await;
        let mut state = self.state.lock().await;
        let entry = outcome_entry(base(outcome.kind()), &outcome, target.kind);
        let why = entry.reason.clone();
        self.record(&mut state, vec![entry]).await?;
        log_outcome(&outcome, &target_name, &action_id);
        Ok(Report {
            event_id,
            rule: Some(rule.into()),
            outcome: outcome.kind(),
            target: Some(target_name),
            action_id: Some(action_id),
            reason: why,
        })
    }

    fn queue_verification(&self, pending: guards::PendingVerification) {
        // Only fails when the verifier is gone (shutting down): the next start resumes it.
        let _ = self.verify_tx.send(pending);
    }

    /// Start verifying: the verifications a previous run left pending first, then each one
    /// queued by an applied action, concurrently, until `token` is cancelled (what is still
    /// pending then is resumed at the next start: its `applied` record says so).
    pub async fn spawn_verifier(
        self: &Arc<Self>,
        token: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let rx = self.verify_rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        for pending in self.state.lock().await.verifications() {
            self.queue_verification(pending);
        }
        let pipeline = self.clone();
        tokio::spawn(async move {
            let Some(mut rx) = rx else { return };
            let mut running = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    Some(pending) = rx.recv() => {
                        let (pipeline, token) = (pipeline.clone(), token.clone());
                        running.spawn(async move { pipeline.verify(pending, token).await });
                    }
                    Some(_) = running.join_next(), if !running.is_empty() => {}
                }
            }
            running.abort_all();
        })
    }

    /// Take the steps of gradual rollbacks when they are due, those a previous run left first
    /// (a step overdue at start is taken at once), until `token` is cancelled. A step under way
    /// when it is cancelled is finished first.
    pub fn spawn_step_downs(
        self: &Arc<Self>,
        token: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let pipeline = self.clone();
        tokio::spawn(async move {
            let mut noted = std::collections::HashSet::new();
            loop {
                let next = pipeline.take_due_steps(&mut noted).await;
                let wait = next.map_or(Duration::from_secs(3600), |t| (t - Utc::now()).to_std().unwrap_or_default());
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = pipeline.step_wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        })
    }

    /// Take every step that is due; returns when the next one is. A paused target's step waits
    /// (recorded as `held` once per step); a step that cannot be recorded is tried again after
    /// its interval.
    async fn take_due_steps(&self, noted: &mut std::collections::HashSet<(String, u32)>) -> Option<DateTime<Utc>> {
        let mut state = self.state.lock().await;
        let now = Utc::now();
        let due = state.due_steps(now);
        for sd in due {
            // Another step of it may have been taken while the state was released for a write.
            if state.step_down(&sd.target) != Some(&sd) {
                continue;
            }
            let later = now + chrono::Duration::milliseconds(i64::try_from(sd.interval_ms).unwrap_or(i64::MAX / 4));
            if let Some(paused) = state.paused(&sd.target) {
                state.postpone_step(&sd.target, later);
                if noted.insert((sd.origin.clone(), sd.step)) {
                    let mut held = Entry::new(Kind::Held)
                        .rule(&sd.rule)
                        .target(&sd.target)
                        .reason(format!(
                            "step {} of the gradual rollback begun by action {} waits: {paused}",
                            sd.step, sd.origin
                        ))
                        .detail(json!({ "step_down_waits": sd.info() }));
                    held.event_id = sd.event_id.clone();
                    if let Err(e) = self.record(&mut state, vec![held]).await {
                        warn!(error = %e, "could not record a held step");
                    }
                }
                continue;
            }
            let why = format!("step {} of the gradual rollback begun by action {}", sd.step, sd.origin);
            state = match self.take_step(state, &sd, Vec::new(), None, &why).await {
                Ok((_, state)) => state,
                Err(e) => {
                    warn!(error = %e, target = %sd.target, "could not take a step of a gradual rollback; trying again later");
                    let mut state = self.state.lock().await;
                    state.postpone_step(&sd.target, later);
                    state
                }
            };
        }
        state.next_step_due()
    }

    /// One step of a gradual rollback: `lead` records (the alert's `matched`, for a new alert),
    /// `decided`, the conditional write, and the outcome with what comes next.
    #[instrument(skip_all, fields(target = %sd.target, origin = %sd.origin, step = sd.step))]
    async fn take_step<'a>(
        &'a self,
        mut state: tokio::sync::MutexGuard<'a, GuardState>,
        sd: &StepDown,
        lead: Vec<Entry>,
        key: Option<&str>,
        why: &str,
    ) -> Result<(Report, tokio::sync::MutexGuard<'a, GuardState>), PipelineError> {
        let action_id = uuid::Uuid::now_v7().to_string();
        let info = sd.info();
        let base = |kind: Kind| {
            let mut e = Entry::new(kind).rule(&sd.rule).target(&sd.target).action_id(&action_id);
            e.event_id = sd.event_id.clone();
            e.key = key.map(str::to_string);
            e
        };
        let decided = base(Kind::Decided).reason(why).detail(json!({
            "target": self.target.describe(),
            "plan": sd.plan,
            stepdown::STEP_DOWN: info,
        }));
        let mut entries = lead;
        entries.push(decided);
        self.record(&mut state, entries).await?;
        crate::failpoint::crash_point("step_down.decided");
        drop(state);
        let kind = sd.plan.kind();
        let outcome = match sd.target.parse::<ObjectRef>() {
            Ok(t) => {
                let decide = |obj: &Value| sd.plan.decide(obj);
                self.run(&ObjectRef { kind, ..t }, &decide, &action_id, &sd.rule, true).await
            }
            Err(e) => Outcome::Refused { reason: format!("cannot step down: {e}") },
        };
        crate::failpoint::crash_point("step_down.written");
        let mut state = self.state.lock().await;
        let entry = step_outcome(outcome_entry(base(outcome.kind()), &outcome, kind), &sd.plan, &info, &outcome);
        let reason = entry.reason.clone();
        let records = self.record(&mut state, vec![entry]).await?;
        log_outcome(&outcome, &sd.target, &action_id);
        if let Some(pending) = records.first().and_then(guards::PendingVerification::from_record) {
            self.queue_verification(pending);
        }
        let report = Report {
            event_id: sd.event_id.clone().unwrap_or_default(),
            rule: Some(sd.rule.clone()),
            outcome: outcome.kind(),
            target: Some(sd.target.clone()),
            action_id: Some(action_id),
            reason,
        };
        Ok((report, state))
    }

    /// Poll one verification to its end and record it (see `crate::verification`).
    #[instrument(skip_all, fields(action_id = %p.action_id, rule = %p.rule, target = %p.target))]
    async fn verify(&self, p: guards::PendingVerification, token: tokio_util::sync::CancellationToken) {
        use crate::verification::{Answer, Limits, Step, judge};
        let settings = Limits {
            max_share: p.max_share,
            deadline: Duration::from_millis(p.deadline_ms),
            interval: Duration::from_millis(p.interval_ms),
        };
        let mut last = None;
        let step = loop {
            let answer = match (&p.query, &self.prometheus) {
                (Err(why), _) => Answer::Error(why.clone()),
                (_, None) => Answer::Error("no `prometheus:` is configured".into()),
                (Ok(q), Some(prom)) => match prom.value(q, settings.interval.min(Duration::from_secs(10))).await {
                    Ok(Some(v)) => Answer::Share(v),
                    Ok(None) => Answer::NoData,
                    Err(e) => Answer::Error(e),
                },
            };
            let step = judge(&settings, &answer, last, p.started, Utc::now());
            match step {
                Step::Wait { last: l, .. } => {
                    last = l;
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(settings.interval) => {}
                    }
                }
                done => break done,
            }
        };
        let (kind, reason) = match &step {
            Step::Verified { share, after_seconds } => {
                (Kind::Verified, format!("canary share {share} after {after_seconds:.0}s"))
            }
            Step::Unverified { why, .. } => (Kind::Unverified, why.clone()),
            Step::Wait { .. } => return,
        };
        let mut entry = Entry::new(kind)
            .rule(&p.rule)
            .target(&p.target)
            .action_id(&p.action_id)
            .reason(&reason)
            .detail(json!({ "verification": step, "query": p.query.as_ref().ok() }));
        entry.event_id = p.event_id.clone();
        MetricEvent::Verification { rule: &p.rule, result: kind.as_str() }.emit();
        if kind == Kind::Unverified {
            tracing::error!(target_object = %p.target, action_id = %p.action_id, %reason, "rollback not verified: traffic did not move");
            if let Ok(obj) = p.target.parse::<ObjectRef>() {
                let notice = Notice {
                    warning: true,
                    reason: "BackstopUnverified",
                    message: format!("backstop action {} (rule {}): {reason}", p.action_id, p.rule),
                };
                self.target.notify(&obj, &notice).await;
            }
        } else {
            info!(target_object = %p.target, action_id = %p.action_id, %reason, "rollback verified");
        }
        let mut state = self.state.lock().await;
        if let Err(e) = self.record(&mut state, vec![entry]).await {
            warn!(error = %e, "could not record the verification; it is resumed at the next start");
        }
    }

    /// Flagger calls its `rollback` webhook: is there a decision against this canary still in
    /// force? The first "yes" for a decision is recorded (a `control` record
    /// `flagger-rollback`, with Flagger's payload); every call is counted.
    pub async fn flagger_rollback(
        &self,
        namespace: &str,
        name: &str,
        payload: &Value,
    ) -> Result<Option<guards::FlaggerVerdict>, PipelineError> {
        let target = format!("{namespace}/{name}");
        let mut state = self.state.lock().await;
        let verdict = state.flagger_verdict(&target, Utc::now());
        MetricEvent::FlaggerCall { result: if verdict.is_some() { "rollback" } else { "continue" } }.emit();
        if let Some(v) = &verdict
            && !v.answered
        {
            let entry = Entry::new(Kind::Control)
                .source("flagger")
                .rule(&v.rule)
                .target(&target)
                .action_id(&v.action_id)
                .reason("answered Flagger's rollback webhook: roll back")
                .detail(json!({ "control": guards::FLAGGER_ROLLBACK, "payload": payload }));
            self.record(&mut state, vec![entry]).await?;
            info!(canary = %target, action_id = %v.action_id, "told Flagger to roll back");
        }
        Ok(verdict)
    }

    /// Record a note from the service itself (a reload, for instance).
    pub async fn note(&self, entry: Entry) -> Result<(), AuditError> {
        let mut state = self.state.lock().await;
        self.record(&mut state, vec![entry]).await.map(|_| ())
    }

    /// Pause or resume automatic actions, for one target or all.
    pub async fn pause(
        &self,
        target: Option<&ObjectRef>,
        pause: bool,
        actor: &str,
        reason: &str,
    ) -> Result<Record, PipelineError> {
        let mut state = self.state.lock().await;
        let control = if pause { guards::PAUSE } else { guards::RESUME };
        let mut entry = Entry::new(Kind::Control)
            .source("manual")
            .actor(actor)
            .reason(reason)
            .detail(json!({ "control": control }));
        if let Some(t) = target {
            entry = entry.target(t.to_string());
        }
        let mut records = self.record(&mut state, vec![entry]).await?;
        Ok(records.remove(0))
    }
}

/// A step's outcome record: what comes next (`detail.step_down`), and, when it moved traffic and
/// the rule verifies, the verification of this step's weight.
fn step_outcome(entry: Entry, plan: &ActionPlan, step: &StepInfo, outcome: &Outcome) -> Entry {
    let next = stepdown::after_outcome(plan, step, outcome, Utc::now());
    let entry = entry.detail(json!({ stepdown::STEP_DOWN: next }));
    match (outcome, &step.verify) {
        (Outcome::Applied { .. }, Some(v)) => {
            entry.detail(json!({ "verify": stepdown::verify_for_step(v, outcome, plan) }))
        }
        _ => entry,
    }
}

/// What an `applied` record says about its verification (see `guards::PendingVerification`).
fn verify_detail(v: &crate::verification::Verification, labels: &std::collections::BTreeMap<String, String>) -> Value {
    let mut d = json!({
        "max_share": v.limits.max_share,
        "deadline_ms": v.limits.deadline.as_millis() as u64,
        "interval_ms": v.limits.interval.as_millis() as u64,
    });
    match v.query.render(labels) {
        Ok(q) => d["query"] = json!(q.trim()),
        Err(missing) => d["error"] = json!(format!("verification query: {missing}")),
    }
    d
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
    let entry = entry.detail(json!({ "kind": kind.as_str() }));
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
