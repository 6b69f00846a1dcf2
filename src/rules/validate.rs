//! Validation: a raw rule becomes a typed [`Rule`], or the list of what is wrong in it, each
//! problem with its field.

use super::*;

/// Validate a `feedback:` block.
pub(super) fn feedback_spec(f: RawFeedback, problems: &mut Vec<(String, String)>) -> Option<FeedbackSpec> {
    let before = problems.len();
    let mut problem = |field: &str, message: String| problems.push((format!("feedback.{field}"), message));
    for (field, value) in [("service", &f.service), ("canary", &f.canary)] {
        if value.trim().is_empty() {
            problem(field, "must not be empty".into());
        }
    }
    let promotion = f.not_worse.is_some() || f.score_above.is_some();
    let test = match (f.test, promotion) {
        (Some(_), true) => {
            problem("test", "either `test` (to roll back) or `not_worse`/`score_above` (to promote), not both".into());
            return None;
        }
        (None, false) => {
            problem(
                "test",
                "name a `test` to roll back (error-ratio, negative-ratio, latency-p95, mean-score-below), or the \
                 evidence a promotion needs: `not_worse` and/or `score_above`"
                    .into(),
            );
            return None;
        }
        (Some(test), false) => test,
        (None, true) => return promotion_spec(f, problems),
    };
    let sequential = test != RawTest::MeanScoreBelow;
    let only = |field: &str, set: bool, tests: &str, problem: &mut dyn FnMut(&str, String)| {
        if set {
            problem(field, format!("applies only to test {tests}"));
        }
    };
    only("min_effect", f.min_effect.is_some() && test != RawTest::NegativeRatio, "negative-ratio", &mut problem);
    only(
        "max_ratio",
        f.max_ratio.is_some() && !matches!(test, RawTest::ErrorRatio | RawTest::LatencyP95),
        "error-ratio or latency-p95",
        &mut problem,
    );
    let mean_only = "mean-score-below";
    only("threshold", f.threshold.is_some() && sequential, mean_only, &mut problem);
    only("window", f.window.is_some() && sequential, mean_only, &mut problem);
    let seq_only = "negative-ratio, error-ratio or latency-p95";
    only("alpha", f.alpha.is_some() && !sequential, seq_only, &mut problem);
    only("tau", f.tau.is_some() && !sequential, seq_only, &mut problem);
    only("baseline", f.baseline.is_some() && !sequential, seq_only, &mut problem);
    if sequential {
        match &f.baseline {
            None => problem("baseline", "name the version the canary is compared with".into()),
            Some(b) if *b == f.canary => problem("baseline", format!("the canary {b} cannot be its own baseline")),
            Some(_) => {}
        }
    }
    let alpha = f.alpha.unwrap_or(0.05);
    if !(alpha > 0.0 && alpha < 0.5) {
        problem("alpha", format!("{alpha} is not in (0, 0.5): the chance of a false rollback per comparison"));
    }
    let tau = f.tau.unwrap_or(DEFAULT_TAU);
    if !(tau > 0.0 && tau <= 1.0) {
        problem("tau", format!("{tau} is not in (0, 1]: the difference of proportions the test is tuned for"));
    }
    let min_samples = f.min_samples.unwrap_or(if sequential { 100 } else { 1 });
    if min_samples == 0 {
        problem("min_samples", "must be at least 1".into());
    }
    let threshold = match test {
        RawTest::NegativeRatio => f.min_effect.unwrap_or(0.0),
        RawTest::ErrorRatio | RawTest::LatencyP95 => f.max_ratio.unwrap_or(1.5),
        RawTest::MeanScoreBelow => match f.threshold {
            Some(t) => t,
            None => {
                problem("threshold", "mean-score-below needs a threshold (e.g. 0.3)".into());
                0.0
            }
        },
    };
    if !threshold.is_finite() || (sequential && threshold < 0.0) {
        let name = match test {
            RawTest::NegativeRatio => "min_effect",
            RawTest::MeanScoreBelow => "threshold",
            _ => "max_ratio",
        };
        problem(name, format!("{threshold} must be a finite number{}", if sequential { " >= 0" } else { "" }));
    }
    let window = match f.window.as_deref().map(humantime::parse_duration) {
        None => Duration::from_secs(300),
        Some(Ok(w)) if !w.is_zero() && w <= crate::feedback::arms::SCORE_WINDOW => w,
        Some(Ok(w)) => {
            let max = humantime::format_duration(crate::feedback::arms::SCORE_WINDOW);
            problem("window", format!("{} is not between 1s and {max}", humantime::format_duration(w)));
            w
        }
        Some(Err(e)) => {
            problem("window", format!("not a duration ({e}); examples: 30s, 5m"));
            Duration::ZERO
        }
    };
    let test = match test {
        RawTest::NegativeRatio => Some(Test::NegativeRatio),
        RawTest::ErrorRatio => Some(Test::ErrorRatio),
        RawTest::LatencyP95 => Some(Test::LatencyP95),
        RawTest::MeanScoreBelow => None,
    };
    let check = match test {
        Some(test) => Check::Sequential { test, settings: Sequential { alpha, min_samples, tau }, threshold },
        None => Check::MeanScoreBelow { threshold, min_samples, window },
    };
    (problems.len() == before).then_some(FeedbackSpec {
        service: f.service,
        namespace: f.namespace,
        canary: f.canary,
        baseline: f.baseline,
        check,
    })
}

/// Validate a promotion's `feedback:` block (`not_worse`, `score_above`).
fn promotion_spec(f: RawFeedback, problems: &mut Vec<(String, String)>) -> Option<FeedbackSpec> {
    let before = problems.len();
    let mut problem = |field: &str, message: String| problems.push((format!("feedback.{field}"), message));
    for (field, set) in [
        ("min_effect", f.min_effect.is_some()),
        ("max_ratio", f.max_ratio.is_some()),
        ("threshold", f.threshold.is_some()),
        ("window", f.window.is_some()),
    ] {
        if set {
            problem(field, "belongs to a rollback's test; a promotion's margins are under `not_worse`".into());
        }
    }
    let needs_baseline = f.not_worse.is_some();
    match &f.baseline {
        None if needs_baseline => problem("baseline", "name the version the canary is shown not worse than".into()),
        Some(b) if *b == f.canary => problem("baseline", format!("the canary {b} cannot be its own baseline")),
        _ => {}
    }
    let alpha = f.alpha.unwrap_or(0.05);
    if !(alpha > 0.0 && alpha < 0.5) {
        problem("alpha", format!("{alpha} is not in (0, 0.5): the chance of promoting a canary worse by the margin"));
    }
    let tau = f.tau.unwrap_or(DEFAULT_TAU);
    if !(tau > 0.0 && tau <= 1.0) {
        problem("tau", format!("{tau} is not in (0, 1]: the difference of proportions the test is tuned for"));
    }
    let min_samples = f.min_samples.unwrap_or(200);
    if min_samples == 0 {
        problem("min_samples", "must be at least 1".into());
    }
    let settings = Sequential { alpha, min_samples, tau };
    let check = promote::evidence(f.not_worse, f.score_above, settings, problems);
    (problems.len() == before).then_some(FeedbackSpec {
        service: f.service,
        namespace: f.namespace,
        canary: f.canary,
        baseline: f.baseline,
        check: check?,
    })
}

pub(super) fn parse_duration(
    field: &str,
    text: Option<String>,
    problems: &mut Vec<(String, String)>,
) -> Option<Duration> {
    let text = text?;
    match humantime::parse_duration(&text) {
        Ok(d) => Some(d),
        Err(e) => {
            problems.push((field.into(), format!("`{text}` is not a duration ({e}); examples: 30s, 5m, 1h30m")));
            None
        }
    }
}

/// Turn a raw rule into a typed one, collecting every problem.
pub(super) fn validate(mut raw: RawRule, file: &Path) -> Result<Rule, Vec<(String, String)>> {
    let mut problems = Vec::new();
    if raw.name.trim().is_empty() || raw.name.contains(char::is_whitespace) {
        problems.push(("name".into(), "must be non-empty, without spaces".into()));
    }
    let feedback_present = raw.feedback.is_some();
    let feedback = match raw.feedback {
        Some(f) => {
            if !raw.matchers.is_empty() {
                problems.push((
                    "match".into(),
                    "a rule reacts to alerts (`match`) or to feedback (`feedback`), not both".into(),
                ));
            }
            if raw.min_firing.is_some() || raw.status != StatusFilter::Firing {
                problems.push(("feedback".into(), "`for` and `status` apply to alerts, not to feedback".into()));
            }
            feedback_spec(f, &mut problems)
        }
        None => None,
    };
    let matchers = match matcher::parse_all(&raw.matchers) {
        Ok(m) if m.is_empty() && feedback.is_none() => {
            if !problems.iter().any(|(f, _)| f.starts_with("feedback")) {
                problems.push(("match".into(), "needs at least one matcher (or a `feedback:` block)".into()));
            }
            m
        }
        Ok(m) => m,
        Err(e) => {
            problems.push(("match".into(), e.to_string()));
            Vec::new()
        }
    };
    let mut template = |field: &str, src: &str| match Template::parse(src) {
        Ok(t) if t.literal() == Some("") => {
            problems.push((field.into(), "must not be empty".into()));
            None
        }
        Ok(t) => Some(t),
        Err(e) => {
            problems.push((field.into(), e.to_string()));
            None
        }
    };
    let namespace = template("target.namespace", &raw.target.namespace);
    let t = &raw.target;
    let object_src = match (t.virtualservice.clone(), t.service.clone(), t.rollout.clone(), t.flagger.clone()) {
        (Some(vs), None, None, None) => Some((ObjectKind::VirtualService, "target.virtualservice", vs)),
        (None, Some(svc), None, None) => Some((ObjectKind::Service, "target.service", svc)),
        (None, None, Some(ro), None) => Some((ObjectKind::Rollout, "target.rollout", ro)),
        (None, None, None, Some(c)) => Some((ObjectKind::FlaggerCanary, "target.flagger", c)),
        _ => None,
    };
    let object = object_src.as_ref().and_then(|(kind, field, src)| template(field, src).map(|t| (*kind, t)));
    let routes = match raw.target.routes {
        Some(routes) if routes.is_empty() => {
            problems.push(("target.routes".into(), "list route names, or leave the field out for all routes".into()));
            None
        }
        Some(routes) => {
            let ts: Vec<Template> =
                routes.iter().enumerate().filter_map(|(i, r)| template(&format!("target.routes[{i}]"), r)).collect();
            Some(ts)
        }
        None => None,
    };
    if object_src.is_none() {
        problems
            .push(("target".into(), "name exactly one of `virtualservice`, `service`, `rollout` or `flagger`".into()));
    }
    let raw_interval = raw.action.rollback.as_ref().and_then(|r| r.interval.clone());
    let others_than_abort = [
        raw.action.rollback.is_some(),
        raw.action.switch.is_some(),
        raw.action.set_weights.is_some(),
        raw.action.switch_selector.is_some(),
        raw.action.abort.is_some() && raw.action.flagger_rollback.is_some(),
    ];
    let promote = raw.action.promote.take();
    let action = if let Some(p) = promote {
        let others = [
            raw.action.rollback.is_some(),
            raw.action.switch.is_some(),
            raw.action.set_weights.is_some(),
            raw.action.switch_selector.is_some(),
            raw.action.abort.is_some(),
            raw.action.flagger_rollback.is_some(),
        ];
        if others.iter().any(|b| *b) {
            problems.push(("action".into(), "`promote` is an action of its own: remove the others".into()));
        }
        promote::promote(p, &mut problems).map(RuleAction::Promote)
    } else if let Some(f) = &raw.action.flagger_rollback {
        if others_than_abort.iter().any(|b| *b) {
            problems.push((
                "action".into(),
                "exactly one of `rollback`, `switch`, `set-weights`, `switch-selector`, `abort`, `flagger-rollback`"
                    .into(),
            ));
        }
        let hold = parse_duration("action.flagger-rollback.hold", f.hold.clone(), &mut problems)
            .unwrap_or(Duration::from_secs(1800));
        Some(RuleAction::FlaggerRollback { hold })
    } else if raw.action.abort.is_some() {
        if others_than_abort.iter().any(|b| *b) {
            problems.push((
                "action".into(),
                "exactly one of `rollback`, `switch`, `set-weights`, `switch-selector`, `abort`".into(),
            ));
        }
        Some(RuleAction::Abort)
    } else {
        match raw.action.switch_selector.clone() {
            Some(sw) => {
                let empty = [&sw.label, &sw.from, &sw.to].iter().any(|v| v.is_empty());
                if empty || sw.from == sw.to {
                    problems.push((
                        "action.switch-selector".into(),
                        "label, from and to must be set, from and to different".into(),
                    ));
                }
                let others =
                    [raw.action.rollback.is_some(), raw.action.switch.is_some(), raw.action.set_weights.is_some()];
                if others.iter().any(|b| *b) {
                    problems.push((
                        "action".into(),
                        "exactly one of `rollback`, `switch`, `set-weights`, `switch-selector`".into(),
                    ));
                }
                Some(RuleAction::Selector(sw))
            }
            None => change(raw.action, &mut problems).map(RuleAction::Traffic),
        }
    };
    match (&object, &action) {
        (Some((ObjectKind::Rollout, _)), Some(a)) if *a != RuleAction::Abort => {
            problems.push(("action".into(), "a rollout target takes `abort: {}`".into()))
        }
        (Some((ObjectKind::FlaggerCanary, _)), Some(a)) if !matches!(a, RuleAction::FlaggerRollback { .. }) => {
            problems.push(("action".into(), "a flagger target takes `flagger-rollback: {hold?}`".into()))
        }
        (Some((kind, _)), Some(RuleAction::FlaggerRollback { .. })) if *kind != ObjectKind::FlaggerCanary => {
            problems.push(("action.flagger-rollback".into(), "flagger-rollback acts on a `flagger` target".into()))
        }
        (Some((kind, _)), Some(RuleAction::Abort)) if *kind != ObjectKind::Rollout => {
            problems.push(("action.abort".into(), "abort acts on a `rollout` target (Argo Rollouts)".into()))
        }
        (Some((ObjectKind::Service, _)), Some(RuleAction::Traffic(_))) => problems.push((
            "action".into(),
            "a Service target takes `switch-selector`; rollback, switch and set-weights act on a virtualservice".into(),
        )),
        (Some((ObjectKind::VirtualService, _)), Some(RuleAction::Selector(_))) => {
            problems.push(("action.switch-selector".into(), "switch-selector acts on a `service` target".into()))
        }
        _ => {}
    }
    let promotes = feedback.as_ref().map(|f| matches!(f.check, Check::NotWorse { .. }));
    match (&action, promotes) {
        // Its `feedback:` block had problems of its own, already said.
        (Some(RuleAction::Promote(_)), None) if feedback_present => {}
        (Some(RuleAction::Promote(_)), None) => problems.push((
            "action.promote".into(),
            "a promotion acts on feedback: give the rule a `feedback:` block with `not_worse`/`score_above`".into(),
        )),
        (Some(RuleAction::Promote(_)), Some(false)) => problems.push((
            "action.promote".into(),
            "a rollback's `test` rolls back; evidence that the canary is not worse (`not_worse`) promotes".into(),
        )),
        (Some(a), Some(true)) if !matches!(a, RuleAction::Promote(_)) => problems.push((
            "feedback.not_worse".into(),
            "evidence that the canary is not worse promotes it: the action is `promote:`".into(),
        )),
        _ => {}
    }
    if let (Some(RuleAction::Promote(p)), Some(f)) = (&action, &feedback) {
        if let Dest::Subset(c) = &p.canary
            && *c != f.canary
        {
            problems.push((
                "action.promote.canary".into(),
                format!("promotes subset {c}, but the evidence is about `feedback.canary` {}", f.canary),
            ));
        }
        if let (Dest::Subset(s), Some(b)) = (&p.stable, &f.baseline)
            && s != b
        {
            problems.push((
                "action.promote.stable".into(),
                format!("takes weight from subset {s}, but the canary is compared with `feedback.baseline` {b}"),
            ));
        }
    }
    if matches!(action, Some(RuleAction::Promote(_))) && raw.cooldown.is_some() {
        problems.push((
            "cooldown".into(),
            "a promotion waits `action.promote.interval` between steps; a cooldown does not apply".into(),
        ));
    }
    match (&action, &object) {
        (Some(RuleAction::Promote(p)), Some((ObjectKind::VirtualService, _))) if p.selector.is_some() => problems
            .push(("target".into(), "a promotion by `switch-selector` acts on a `service` target (blue-green)".into())),
        (Some(RuleAction::Promote(p)), Some((ObjectKind::Service, _))) if p.selector.is_none() => problems.push((
            "target".into(),
            "a Service is promoted by `switch-selector: {label, from, to}`; weights are a virtualservice's".into(),
        )),
        (Some(RuleAction::Promote(_)), Some((kind, _)))
            if !matches!(kind, ObjectKind::VirtualService | ObjectKind::Service) =>
        {
            problems.push(("target".into(), "a promotion acts on a `virtualservice` or a `service` target".into()))
        }
        _ => {}
    }
    if matches!(object, Some((ObjectKind::Service, _))) && routes.is_some() {
        problems.push(("target.routes".into(), "routes belong to a virtualservice target".into()));
    }
    let step_interval = match &action {
        Some(RuleAction::Traffic(Change::StepDown { .. })) => Some(
            parse_duration("action.rollback.interval", raw_interval, &mut problems).unwrap_or(DEFAULT_STEP_INTERVAL),
        ),
        _ => {
            if raw_interval.is_some() {
                problems.push(("action.rollback.interval".into(), "an interval is the time between `steps`".into()));
            }
            None
        }
    };
    if step_interval.is_some_and(|i| i.is_zero()) {
        problems.push(("action.rollback.interval".into(), "must be more than 0".into()));
    }
    let min_firing = parse_duration("for", raw.min_firing, &mut problems).unwrap_or_default();
    let cooldown = parse_duration("cooldown", raw.cooldown, &mut problems);
    let confirm = match raw.confirm {
        None => None,
        Some(c) => {
            let comparison = match (c.above, c.below) {
                (Some(t), None) if t.is_finite() => Some(Comparison::Above(t)),
                (None, Some(t)) if t.is_finite() => Some(Comparison::Below(t)),
                _ => {
                    problems.push(("confirm".into(), "give exactly one of `above` or `below` (a number)".into()));
                    None
                }
            };
            let query = match Template::parse(&c.query) {
                Ok(q) if !c.query.trim().is_empty() => Some(q),
                Ok(_) => {
                    problems.push(("confirm.query".into(), "must not be empty".into()));
                    None
                }
                Err(e) => {
                    problems.push(("confirm.query".into(), e.to_string()));
                    None
                }
            };
            let timeout = parse_duration("confirm.timeout", c.timeout, &mut problems).unwrap_or(Duration::from_secs(5));
            match (query, comparison) {
                (Some(query), Some(comparison)) => {
                    Some(Confirm { query, comparison, timeout, on_no_data: c.on_no_data, on_error: c.on_error })
                }
                _ => None,
            }
        }
    };
    let verify = match raw.verify {
        None => None,
        Some(v) => {
            let query = match Template::parse(&v.query) {
                Ok(q) if !v.query.trim().is_empty() => Some(q),
                Ok(_) => {
                    problems.push(("verify.query".into(), "must not be empty".into()));
                    None
                }
                Err(e) => {
                    problems.push(("verify.query".into(), e.to_string()));
                    None
                }
            };
            let max_share = v.max_share.unwrap_or(verification::DEFAULT_MAX_SHARE);
            if !(0.0..=1.0).contains(&max_share) {
                problems.push(("verify.max_share".into(), format!("{max_share} is not a share between 0 and 1")));
            }
            let deadline =
                parse_duration("verify.deadline", v.deadline, &mut problems).unwrap_or(verification::DEFAULT_DEADLINE);
            let interval =
                parse_duration("verify.interval", v.interval, &mut problems).unwrap_or(verification::DEFAULT_INTERVAL);
            if interval.is_zero() || interval > deadline {
                problems.push(("verify.interval".into(), "must be more than 0 and at most the deadline".into()));
            }
            query.map(|query| Verification {
                query,
                limits: verification::Limits { max_share, deadline, interval, min_share: None },
            })
        }
    };
    match (namespace, object, action) {
        (Some(namespace), Some((kind, object)), Some(action)) if problems.is_empty() => Ok(Rule {
            name: raw.name,
            description: raw.description,
            file: file.to_path_buf(),
            matchers,
            status: raw.status,
            min_firing,
            namespace,
            kind,
            object,
            routes,
            action,
            cooldown,
            dry_run: raw.dry_run,
            confirm,
            verify,
            feedback,
            step_interval,
        }),
        _ => Err(problems),
    }
}

pub(super) fn change(action: RawAction, problems: &mut Vec<(String, String)>) -> Option<Change> {
    let count = [action.rollback.is_some(), action.switch.is_some(), action.set_weights.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if count != 1 {
        problems.push(("action".into(), "exactly one of `rollback`, `switch`, `set-weights`".into()));
        return None;
    }
    let mut d = |field: &str, raw: RawDest| match raw.into_dest() {
        Ok(d) => Some(d),
        Err(m) => {
            problems.push((field.into(), m));
            None
        }
    };
    if let Some(rb) = action.rollback {
        let stable = d("action.rollback.stable", rb.stable);
        let canaries = match rb.canary {
            OneOrMany::One(c) => vec![c],
            OneOrMany::Many(cs) => cs,
        };
        let canary: Vec<Dest> = canaries.into_iter().filter_map(|c| d("action.rollback.canary", c)).collect();
        let stable = stable?;
        if canary.is_empty() {
            problems.push(("action.rollback.canary".into(), "name at least one canary destination".into()));
            return None;
        }
        if canary.contains(&stable) {
            problems.push(("action.rollback".into(), format!("{stable} is both stable and canary")));
            return None;
        }
        let Some(steps) = rb.steps else {
            return Some(Change::Rollback { stable, canary });
        };
        let decreasing = steps.windows(2).all(|w| w[0] > w[1]);
        if steps.last().map(|w| w.get()) != Some(0) || !decreasing || steps.first().is_some_and(|w| w.get() == 100) {
            let listed = steps.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            problems.push((
                "action.rollback.steps".into(),
                format!(
                    "[{listed}]: list the canary's weight at each step, strictly decreasing, below 100 \
                     and ending at 0 (for example [25, 10, 0])"
                ),
            ));
            return None;
        }
        let Ok([canary]) = <[Dest; 1]>::try_from(canary) else {
            problems.push(("action.rollback.canary".into(), "a gradual rollback (`steps`) takes one canary".into()));
            return None;
        };
        return Some(Change::StepDown { stable, canary, steps });
    }
    if let Some(sw) = action.switch {
        let (from, to) = (d("action.switch.from", sw.from)?, d("action.switch.to", sw.to)?);
        if from == to {
            problems.push(("action.switch".into(), format!("from and to are both {from}")));
            return None;
        }
        return Some(Change::Switch { from, to });
    }
    let mut weights = Vec::new();
    for (i, w) in action.set_weights.unwrap_or_default().into_iter().enumerate() {
        match dest(w.subset, w.host) {
            Ok(dest) => weights.push((dest, w.weight)),
            Err(m) => problems.push((format!("action.set-weights[{i}]"), m)),
        }
    }
    let total: u32 = weights.iter().map(|(_, w)| u32::from(w.get())).sum();
    if weights.is_empty() {
        problems.push(("action.set-weights".into(), "name at least one destination".into()));
        return None;
    }
    if total != 100 {
        problems.push(("action.set-weights".into(), format!("weights sum to {total}, not 100")));
        return None;
    }
    Some(Change::SetWeights { weights })
}
