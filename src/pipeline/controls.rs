//! What an on-call engineer does by hand: act (the kill switch's opposite), undo an action, pause
//! and resume; and Flagger's rollback webhook, answered from a recorded hold.

use super::*;

impl Pipeline {
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
        let plan = rule.plan(&Default::default()).map_err(|e| match e {
            crate::rules::PlanError::Missing(e) => PipelineError::NeedsAlert(format!(
                "rule {rule_name} takes its route names from an alert's labels ({e}); it cannot be fired by hand"
            )),
            e @ crate::rules::PlanError::Promotion(_) => PipelineError::NeedsAlert(e.to_string()),
        })?;
        let decide = |obj: &Value| plan.decide(obj);
        let target = ObjectRef { kind: rule.kind, ..target.clone() };
        self.manual(Control::Act, &rule.name, &target, actor, reason, &decide, None, None).await
    }

    /// Put back the state recorded before `action_id`, if the object is still as that action left it.
    pub async fn undo(&self, action_id: &str, actor: &str, reason: &str) -> Result<Report, PipelineError> {
        let filter =
            audit::Filter { action_id: Some(action_id.into()), kinds: vec![Kind::Applied], ..Default::default() };
        // Reading the log is file I/O: off the async workers.
        let dir = self.audit.dir().to_path_buf();
        let applied = tokio::task::spawn_blocking(move || audit::query(&dir, &filter))
            .await
            .map_err(|_| AuditError::Stopped)??
            .into_iter()
            .next()
            .ok_or_else(|| PipelineError::UnknownAction(action_id.into()))?;
        let e = &applied.entry;
        let kind = KindPart::read(e.detail.as_ref()).map_or(ObjectKind::VirtualService, |k| k.kind);
        let target: Option<ObjectRef> =
            e.target.as_deref().and_then(|t| t.parse::<ObjectRef>().ok()).map(|t| ObjectRef { kind, ..t });
        let (Some(target), Some(before), Some(after)) = (target, e.before.clone(), e.after.clone()) else {
            return Err(PipelineError::UnknownAction(action_id.into()));
        };
        let decide = |obj: &Value| actions::undo(kind, obj, &before, &after, &target, action_id);
        let rule = e.rule.clone().unwrap_or_default();
        self.manual(Control::Undo, &rule, &target, actor, reason, &decide, Some(action_id), None).await
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn manual(
        &self,
        control: Control,
        rule: &str,
        target: &ObjectRef,
        actor: &str,
        reason: &str,
        decide: &Decide<'_>,
        undoes: Option<&str>,
        extra: Option<Value>,
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
        let detail = ManualPart { control, undoes: undoes.map(str::to_string), target: self.target.describe() }.value();
        let with_extra = |entry: Entry| match &extra {
            Some(extra) => entry.detail(extra.clone()),
            None => entry,
        };
        self.record(&mut state, vec![with_extra(base(Kind::Control).reason(reason).detail(detail))]).await?;
        drop(state);
        let outcome = self.run(target, decide, &action_id, rule, true).await;
        let mut state = self.state.lock().await;
        let entry = outcome_entry(base(outcome.kind()), &outcome, target.kind);
        // What the control carries (a promotion's step, the arms it ends) goes with its outcome,
        // where the state reads it, only when it took effect.
        let entry = match outcome {
            Outcome::Applied { .. } | Outcome::NoOp { .. } => with_extra(entry),
            _ => entry,
        };
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

    /// Flagger calls its `rollback` webhook: is there a decision against this canary still in
    /// force? The first "yes" for a decision is recorded (a `control` record
    /// `flagger-rollback`, with Flagger's payload); every call is counted.
    pub async fn flagger_rollback(
        &self,
        namespace: &str,
        name: &str,
        payload: &Value,
    ) -> Result<Option<state::FlaggerVerdict>, PipelineError> {
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
                .detail(ControlPart { control: Control::FlaggerRollback }.value())
                .detail(json!({ "payload": payload }));
            self.record(&mut state, vec![entry]).await?;
            info!(canary = %target, action_id = %v.action_id, "told Flagger to roll back");
        }
        Ok(verdict)
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
        let control = if pause { Control::Pause } else { Control::Resume };
        let mut entry = Entry::new(Kind::Control)
            .source("manual")
            .actor(actor)
            .reason(reason)
            .detail(ControlPart { control }.value());
        if let Some(t) = target {
            entry = entry.target(t.to_string());
        }
        let mut records = self.record(&mut state, vec![entry]).await?;
        Ok(records.remove(0))
    }
}
