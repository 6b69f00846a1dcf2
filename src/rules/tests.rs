use super::*;
use crate::event::SourceKind;
use std::collections::BTreeMap;

const GOOD: &str = r#"
rules:
  - name: canary-high-error-rate
    description: roll the canary back
    match:
      - alertname="CanaryHighErrorRate"
      - severity=~"critical|page"
    for: 1m
    target:
      namespace: "{{ $labels.namespace }}"
      virtualservice: "{{ $labels.virtualservice }}"
    action:
      rollback: { stable: v1, canary: v2 }
    cooldown: 10m
  - name: bluegreen
    match: ['{alertname="BlueGreenBroken"}']
    target: { namespace: shop, virtualservice: checkout, routes: [primary] }
    action:
      switch: { from: { subset: green }, to: { subset: blue } }
    dry_run: true
  - name: any-name
    match: ['team="payments"']
    status: any
    target: { namespace: pay, virtualservice: "{{ $labels.vs }}" }
    action:
      set-weights: [{ subset: v1, weight: 100 }, { subset: v2, weight: 0 }]
"#;

fn parse(text: &str) -> (Vec<Rule>, Vec<RuleError>) {
    let mut errors = Vec::new();
    let rules = parse_file(Path::new("rules/test.yaml"), text, &mut errors);
    (rules, errors)
}

fn alert(name: &str, labels: &[(&str, &str)], status: AlertStatus, started_secs_ago: i64) -> Alert {
    let mut l: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    l.insert("alertname".into(), name.into());
    Alert {
        id: "fp-1".into(),
        source: SourceKind::Alertmanager,
        name: name.into(),
        status,
        labels: l,
        annotations: BTreeMap::new(),
        starts_at: Utc::now() - chrono::Duration::seconds(started_secs_ago),
        ends_at: None,
        fingerprint: "fp".into(),
        generator_url: String::new(),
    }
}

#[test]
fn valid_file_loads_into_typed_rules() {
    let (rules, errors) = parse(GOOD);
    assert_eq!(errors, vec![]);
    assert_eq!(rules.len(), 3);
    let r = &rules[0];
    assert_eq!(r.min_firing, Duration::from_secs(60));
    assert_eq!(r.cooldown, Some(Duration::from_secs(600)));
    assert_eq!(
        r.action,
        RuleAction::Traffic(Change::Rollback {
            stable: Dest::Subset("v1".into()),
            canary: vec![Dest::Subset("v2".into())]
        })
    );
    let plan = rules[1].plan(&BTreeMap::new()).unwrap();
    let ActionPlan::Traffic(plan) = plan else { panic!("{plan:?}") };
    assert_eq!(plan.routes, Some(vec!["primary".to_string()]));
    assert!(rules[1].dry_run);
    assert_eq!(rules[2].status, StatusFilter::Any);
}

#[test]
fn every_error_is_reported_with_file_rule_field_and_line() {
    let text = r#"
rules:
  - name: bad-regex
    match: ['alertname=~"("']
    target: { namespace: a, virtualservice: b }
    action: { rollback: { stable: v1, canary: v2 } }
  - name: bad-duration
    match: ['alertname=X']
    for: soon
    target: { namespace: a, virtualservice: "{{ $labels.vs " }
    action: { rollback: { stable: v1, canary: v2 } }
  - name: unknown-field
    match: ['alertname=X']
    target: { namespace: a, virtualservice: b }
    action: { rollback: { stable: v1, canary: v2 } }
    colldown: 5m
  - name: bad-weight
    match: ['alertname=X']
    target: { namespace: a, virtualservice: b }
    action: { set-weights: [{ subset: v1, weight: 130 }] }
"#;
    let (rules, errors) = parse(text);
    assert!(rules.is_empty());
    let by_rule = |name: &str| errors.iter().filter(|e| e.rule.as_deref() == Some(name)).collect::<Vec<_>>();
    let e = by_rule("bad-regex");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].field, "match");
    assert_eq!(e[0].line, Some(4), "the line of the field, not of the rule");
    assert!(e[0].message.contains("invalid regex"), "{}", e[0].message);
    let e = by_rule("bad-duration");
    assert_eq!(e.len(), 2, "both problems of one rule are reported: {e:?}");
    assert!(e.iter().any(|e| e.field == "for"));
    assert!(e.iter().any(|e| e.field == "target.virtualservice"));
    let e = by_rule("unknown-field");
    assert!(e[0].message.contains("unknown field `colldown`"), "{}", e[0].message);
    let e = by_rule("bad-weight");
    assert_eq!(e[0].field, "action.set-weights[0].weight");
    let shown = RuleErrors(errors.clone()).to_string();
    assert!(shown.contains("rules/test.yaml:4: rule `bad-regex`: field `match`"), "{shown}");
    let e = by_rule("bad-weight");
    assert_eq!(e[0].line, Some(20), "a list item's own line");
}

/// A rule stops reading at its first problem; the others are still found: every unknown field,
/// a second field that does not read, and (when only typos stood in the way) what the rest means.
#[test]
fn every_problem_of_one_rule_is_reported_each_at_its_line() {
    let text = r#"rules:
  - name: typos
    match: ['alertname=~"("']
    target: { namespace: a, virtualservice: b }
    action: { rollback: { stable: v1, canary: v2 } }
    colldown: 5m
    dryrun: true
  - name: shapes
    match: ['alertname=X']
    target: { namespace: a, virtualservice: b }
    action:
      rollback:
        stable: v1
    verify: { query: 'q', max_share: lots }
    colldown: 5m
"#;
    let (rules, errors) = parse(text);
    assert!(rules.is_empty());
    let mut found: Vec<(Option<usize>, &str, &str, &str)> =
        errors.iter().map(|e| (e.line, e.rule.as_deref().unwrap(), e.field.as_str(), e.message.as_str())).collect();
    found.sort();
    let found: Vec<_> = found.iter().map(|(line, rule, field, _)| (*line, *rule, *field)).collect();
    assert_eq!(
        found,
        [
            (Some(3), "typos", "match"),
            (Some(6), "typos", "colldown"),
            (Some(7), "typos", "dryrun"),
            (Some(12), "shapes", "action.rollback"),
            (Some(14), "shapes", "verify.max_share"),
            (Some(15), "shapes", "colldown"),
        ],
        "{errors:#?}"
    );
    let missing = errors.iter().find(|e| e.field == "action.rollback").unwrap();
    assert!(missing.message.contains("missing field `canary`"), "{}", missing.message);
    // The fields set aside are not reported missing as well.
    assert!(!errors.iter().any(|e| e.message.contains("missing field `action`")), "{errors:#?}");
}

/// A name given twice is an error at the second, naming the first's line, whether or not
/// either rule is otherwise valid; all of a load's problems come by file and line.
#[test]
fn a_duplicate_name_is_reported_where_it_is_with_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let one = "rules:\n  - name: a\n    match: ['alertname=X']\n    target: { namespace: n, virtualservice: v }\n    action: { rollback: { stable: v1, canary: v2 } }\n    cooldown: never\n";
    let two = "rules:\n  - name: b\n    match: ['alertname=X']\n    target: { namespace: n, virtualservice: v }\n    action: { rollback: { stable: v1, canary: v2 } }\n  - name: a\n    match: ['alertname=X']\n    target: { namespace: n, virtualservice: v }\n    action: { rollback: { stable: v1, canary: v2 } }\n";
    std::fs::write(dir.path().join("1.yaml"), one).unwrap();
    std::fs::write(dir.path().join("2.yaml"), two).unwrap();
    let errors = load(&[dir.path().to_path_buf()]).unwrap_err().0;
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_eq!((errors[0].line, errors[0].field.as_str()), (Some(6), "cooldown"));
    assert_eq!(errors[1].file, dir.path().join("2.yaml"));
    assert_eq!((errors[1].line, errors[1].field.as_str()), (Some(6), "name"));
    let first = format!("first at {}:2", dir.path().join("1.yaml").display());
    assert!(errors[1].message.contains(&first), "{}", errors[1].message);
}

#[test]
fn yaml_syntax_error_names_the_line() {
    let (_, errors) = parse("rules:\n  - name: x\n   match: [\n");
    assert_eq!(errors.len(), 1);
    assert!(errors[0].line.is_some(), "{:?}", errors[0]);
}

#[test]
fn actions_are_checked_for_sense() {
    let text = r#"
rules:
  - name: two-actions
    match: ['alertname=X']
    target: { namespace: a, virtualservice: b }
    action: { rollback: { stable: v1, canary: v2 }, switch: { from: a, to: b } }
  - name: same-stable-canary
    match: ['alertname=X']
    target: { namespace: a, virtualservice: b }
    action: { rollback: { stable: v1, canary: [v2, v1] } }
  - name: weights-not-100
    match: ['alertname=X']
    target: { namespace: a, virtualservice: b }
    action: { set-weights: [{ subset: v1, weight: 60 }, { subset: v2, weight: 30 }] }
"#;
    let (rules, errors) = parse(text);
    assert!(rules.is_empty());
    let msgs: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(msgs[0].contains("exactly one of"), "{msgs:?}");
    assert!(msgs[1].contains("subset v1 is both stable and canary"), "{msgs:?}");
    assert!(msgs[2].contains("sum to 90"), "{msgs:?}");
}

#[test]
fn matches_any_says_whether_matching_finds_a_rule_by_name_or_by_other_labels() {
    let (rules, _) = parse(GOOD);
    let set = RuleSet::new(rules);
    let cases = [
        ("CanaryHighErrorRate", vec![("severity", "critical")], true),
        ("CanaryHighErrorRate", vec![("severity", "warning")], false),
        ("BlueGreenBroken", vec![], true),
        ("Unrelated", vec![("team", "payments")], true),
        ("Unrelated", vec![("team", "search")], false),
        ("CanaryHighErrorRate", vec![("severity", "warning"), ("team", "payments")], true),
    ];
    for (name, labels, expected) in cases {
        let a = alert(name, &labels, AlertStatus::Firing, 300);
        assert_eq!(set.matches_any(&a), expected, "{name} {labels:?}");
        assert_eq!(set.matches_any(&a), !set.matching(&a).is_empty(), "{name} {labels:?}");
    }
}

#[test]
fn engine_decides_per_matching_rule() {
    let (rules, _) = parse(GOOD);
    let set = RuleSet::new(rules);
    let a = alert(
        "CanaryHighErrorRate",
        &[("namespace", "sms-app"), ("virtualservice", "model-service"), ("severity", "critical")],
        AlertStatus::Firing,
        300,
    );
    let decisions = set.decide(&a, Utc::now());
    assert_eq!(decisions.len(), 1);
    match &decisions[0] {
        Decision::Act { rule, key, target, dry_run, .. } => {
            assert_eq!(rule, "canary-high-error-rate");
            assert_eq!(key, &a.key(rule));
            assert_eq!(target.to_string(), "sms-app/model-service");
            assert!(!dry_run);
        }
        other => panic!("expected act, got {other:?}"),
    }
}

#[test]
fn engine_holds_until_the_alert_has_fired_long_enough() {
    let (rules, _) = parse(GOOD);
    let set = RuleSet::new(rules);
    let a = alert(
        "CanaryHighErrorRate",
        &[("namespace", "sms-app"), ("virtualservice", "model-service"), ("severity", "page")],
        AlertStatus::Firing,
        10,
    );
    match &set.decide(&a, Utc::now())[0] {
        Decision::Hold { reason, .. } => assert!(reason.contains("rule requires 1m"), "{reason}"),
        other => panic!("expected hold, got {other:?}"),
    }
}

#[test]
fn engine_refuses_when_a_target_label_is_missing() {
    let (rules, _) = parse(GOOD);
    let set = RuleSet::new(rules);
    let a =
        alert("CanaryHighErrorRate", &[("namespace", "sms-app"), ("severity", "critical")], AlertStatus::Firing, 300);
    match &set.decide(&a, Utc::now())[0] {
        Decision::Refuse { reason, .. } => assert!(reason.contains("no label `virtualservice`"), "{reason}"),
        other => panic!("expected refuse, got {other:?}"),
    }
}

#[test]
fn status_filter_and_matchers_select_rules() {
    let (rules, _) = parse(GOOD);
    let set = RuleSet::new(rules);
    let labels = [("namespace", "sms-app"), ("virtualservice", "model-service"), ("severity", "critical")];
    let resolved = alert("CanaryHighErrorRate", &labels, AlertStatus::Resolved, 300);
    assert!(set.decide(&resolved, Utc::now()).is_empty(), "firing-only rule ignores resolved");
    let warning = alert("CanaryHighErrorRate", &[("severity", "warning")], AlertStatus::Firing, 300);
    assert!(set.decide(&warning, Utc::now()).is_empty(), "severity matcher excludes warning");
    let pay = alert("Anything", &[("team", "payments"), ("vs", "ledger")], AlertStatus::Resolved, 0);
    let d = set.decide(&pay, Utc::now());
    assert_eq!(d.len(), 1, "rule without alertname matcher is found through the generic list");
    assert_eq!(d[0].rule(), "any-name");
}

#[test]
fn shipped_rules_directory_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let set = load(&[dir]).unwrap_or_else(|e| panic!("rules/ must validate:\n{e}"));
    assert!(set.get("canary-high-error-rate").is_some());
}

#[test]
fn duplicate_rule_names_across_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rule = "rules:\n  - name: same\n    match: ['alertname=X']\n    target: { namespace: a, virtualservice: b }\n    action: { rollback: { stable: v1, canary: v2 } }\n";
    std::fs::write(dir.path().join("a.yaml"), rule).unwrap();
    std::fs::write(dir.path().join("b.yml"), rule).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let err = load(&[dir.path().to_path_buf()]).unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert!(err.0[0].message.contains("duplicate rule name"));
}

#[test]
fn route_names_may_be_templated_and_a_missing_label_refuses() {
    let text = r#"
rules:
  - name: per-route
    match: ['alertname=RouteBroken']
    target: { namespace: ns, virtualservice: vs, routes: ["{{ $labels.route }}"] }
    action: { rollback: { stable: v1, canary: v2 } }
"#;
    let (rules, errors) = parse(text);
    assert_eq!(errors, vec![]);
    let set = RuleSet::new(rules);
    let a = alert("RouteBroken", &[("route", "checkout-api")], AlertStatus::Firing, 0);
    match &set.decide(&a, Utc::now())[0] {
        Decision::Act { plan: ActionPlan::Traffic(plan), .. } => {
            assert_eq!(plan.routes, Some(vec!["checkout-api".to_string()]))
        }
        other => panic!("{other:?}"),
    }
    let a = alert("RouteBroken", &[], AlertStatus::Firing, 0);
    assert!(matches!(&set.decide(&a, Utc::now())[0], Decision::Refuse { reason, .. } if reason.contains("`route`")));
}

#[test]
fn service_targets_take_a_selector_switch_and_nothing_else() {
    let text = r#"
rules:
  - name: bg
    match: ['alertname=GreenBroken']
    target: { namespace: shop, service: "{{ $labels.service }}" }
    action: { switch-selector: { label: version, from: green, to: blue } }
  - name: mixed
    match: ['alertname=X']
    target: { namespace: shop, service: checkout }
    action: { rollback: { stable: v1, canary: v2 } }
  - name: both
    match: ['alertname=X']
    target: { namespace: shop, service: checkout, virtualservice: checkout }
    action: { switch-selector: { label: version, from: green, to: blue } }
  - name: vs-selector
    match: ['alertname=X']
    target: { namespace: shop, virtualservice: checkout }
    action: { switch-selector: { label: version, from: green, to: green } }
"#;
    let (rules, errors) = parse(text);
    assert_eq!(rules.len(), 1, "{errors:?}");
    assert_eq!(rules[0].kind, ObjectKind::Service);
    assert_eq!(rules[0].action_summary(), "switch-selector version: green -> blue");
    let msgs: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert!(
        msgs.iter().any(|m| m.contains("rule `mixed`") && m.contains("a Service target takes `switch-selector`")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().any(|m| m.contains("rule `both`")
            && m.contains("exactly one of `virtualservice`, `service`, `rollout` or `flagger`")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().any(|m| m.contains("rule `vs-selector`") && m.contains("acts on a `service` target")),
        "{msgs:?}"
    );
    assert!(msgs.iter().any(|m| m.contains("rule `vs-selector`") && m.contains("from and to different")), "{msgs:?}");
    let set = RuleSet::new(rules);
    let a = alert("GreenBroken", &[("service", "checkout")], AlertStatus::Firing, 0);
    match &set.decide(&a, Utc::now())[0] {
        Decision::Act { target, plan: ActionPlan::Selector(sw), .. } => {
            assert_eq!((target.kind, target.to_string()), (ObjectKind::Service, "shop/checkout".to_string()));
            assert_eq!(sw.to, "blue");
        }
        other => panic!("{other:?}"),
    }
}

const FEEDBACK: &str = r#"
rules:
  - name: errors
    feedback: { service: model-service, canary: v2, baseline: v1, test: error-ratio, max_ratio: 2 }
    target: { namespace: "{{ $labels.namespace }}", virtualservice: "{{ $labels.service }}" }
    action: { rollback: { stable: v1, canary: v2 } }
  - name: confidence
    feedback: { service: model-service, namespace: sms-app, canary: v2, test: mean-score-below, threshold: 0.3 }
    target: { namespace: sms-app, virtualservice: model-service }
    action: { rollback: { stable: v1, canary: v2 } }
"#;

#[test]
fn feedback_rules_are_typed_once_and_never_match_alerts() {
    let (rules, errors) = parse(FEEDBACK);
    assert!(errors.is_empty(), "{errors:?}");
    let spec = rules[0].feedback.as_ref().unwrap();
    assert_eq!(
        spec.check,
        Check::Sequential {
            test: Test::ErrorRatio,
            settings: Sequential { alpha: 0.05, min_samples: 100, tau: DEFAULT_TAU },
            threshold: 2.0
        }
    );
    assert_eq!(
        rules[1].feedback.as_ref().unwrap().check,
        Check::MeanScoreBelow { threshold: 0.3, min_samples: 1, window: Duration::from_secs(300) }
    );
    let set = RuleSet::new(rules);
    let names =
        |ns, version| set.feedback_rules(ns, "model-service", version).map(|r| r.name.clone()).collect::<Vec<_>>();
    assert_eq!(names("sms-app", "v2"), ["errors", "confidence"]);
    assert_eq!(names("other", "v1"), ["errors"]);
    assert!(names("other", "v3").is_empty());
    let any = alert("Anything", &[], AlertStatus::Firing, 600);
    assert!(set.decide(&any, Utc::now()).is_empty(), "a feedback rule has no matchers and must not match alerts");
}

#[test]
fn feedback_rule_mistakes_are_all_reported_with_their_field() {
    let (_, errors) = parse(
        r#"
rules:
  - name: muddled
    match: ['alertname="X"']
    for: 1m
    feedback:
      service: model-service
      canary: v2
      test: error-ratio
      alpha: 0.7
      threshold: 0.3
      min_samples: 0
    target: { namespace: a, virtualservice: b }
    action: { rollback: { stable: v1, canary: v2 } }
  - name: wrong-test
    feedback: { service: s, canary: v2, baseline: v1, test: t-test }
    target: { namespace: a, virtualservice: b }
    action: { rollback: { stable: v1, canary: v2 } }
"#,
    );
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "match",
            "feedback",
            "feedback.threshold",
            "feedback.baseline",
            "feedback.alpha",
            "feedback.min_samples",
            "feedback.test"
        ],
        "{errors:#?}"
    );
    assert!(errors[6].message.contains("negative-ratio"), "{}", errors[6]);
}

#[test]
fn a_rollout_target_takes_abort_and_abort_takes_a_rollout_target() {
    let (rules, errors) = parse(
        r#"
rules:
  - name: abort
    match: ['alertname="X"']
    target: { namespace: sms-app, rollout: "{{ $labels.rollout }}" }
    action: { abort: {} }
"#,
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(rules[0].kind, ObjectKind::Rollout);
    assert_eq!(rules[0].plan(&BTreeMap::new()).unwrap(), ActionPlan::Abort);
    assert_eq!(rules[0].action_summary(), "abort the Rollout");
    let (_, errors) = parse(
        r#"
rules:
  - name: abort-a-vs
    match: ['alertname="X"']
    target: { namespace: a, virtualservice: b }
    action: { abort: {} }
  - name: rollback-a-rollout
    match: ['alertname="X"']
    target: { namespace: a, rollout: b }
    action: { rollback: { stable: v1, canary: v2 } }
"#,
    );
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["action.abort", "action"], "{errors:#?}");
}

#[test]
fn a_gradual_rollback_is_typed_with_its_steps_and_interval() {
    let (rules, errors) = parse(
        r#"
rules:
  - name: gentle
    match: ['alertname="CanaryHighErrorRate"']
    target: { namespace: ns, virtualservice: vs }
    action:
      rollback: { stable: v1, canary: v2, steps: [25, 10, 0], interval: 2m }
  - name: gentle-default-interval
    match: ['alertname="CanaryHighErrorRate"']
    target: { namespace: ns, virtualservice: vs }
    action:
      rollback: { stable: v1, canary: v2, steps: [0] }
"#,
    );
    assert_eq!(errors, vec![]);
    let w = |v: u64| Weight::try_from(v).unwrap();
    assert_eq!(
        rules[0].action,
        RuleAction::Traffic(Change::StepDown {
            stable: Dest::Subset("v1".into()),
            canary: Dest::Subset("v2".into()),
            steps: vec![w(25), w(10), w(0)],
        })
    );
    assert_eq!(rules[0].step_interval, Some(Duration::from_secs(120)));
    assert_eq!(rules[1].step_interval, Some(DEFAULT_STEP_INTERVAL));
    assert_eq!(
        rules[0].action_summary(),
        "rollback subset v2 -> subset v1 in steps of canary weight 25, 10, 0 every 2m"
    );
}

#[test]
fn gradual_rollback_mistakes_are_reported_with_their_field() {
    let rule = |action: &str| {
        format!(
            "rules:\n  - name: r\n    match: ['alertname=\"A\"']\n    target: {{ namespace: ns, virtualservice: vs }}\n    action:\n      {action}\n"
        )
    };
    let field_of = |action: &str| {
        let (rules, errors) = parse(&rule(action));
        assert!(rules.is_empty(), "{action} should be refused");
        errors.into_iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("\n")
    };
    for steps in ["[25, 10]", "[10, 25, 0]", "[25, 25, 0]", "[100, 0]", "[]"] {
        let msg = field_of(&format!("rollback: {{ stable: v1, canary: v2, steps: {steps} }}"));
        assert!(msg.contains("action.rollback.steps") && msg.contains("strictly decreasing"), "{steps}: {msg}");
    }
    let msg = field_of("rollback: { stable: v1, canary: v2, steps: [150, 0] }");
    assert!(msg.contains("150"), "{msg}");
    let msg = field_of("rollback: { stable: v1, canary: [v2, v3], steps: [10, 0] }");
    assert!(msg.contains("action.rollback.canary: a gradual rollback (`steps`) takes one canary"), "{msg}");
    let msg = field_of("rollback: { stable: v1, canary: v2, interval: 1m }");
    assert!(msg.contains("action.rollback.interval: an interval is the time between `steps`"), "{msg}");
    let msg = field_of("rollback: { stable: v1, canary: v2, steps: [10, 0], interval: 0s }");
    assert!(msg.contains("action.rollback.interval: must be more than 0"), "{msg}");
    let msg = field_of("rollback: { stable: v1, canary: v2, steps: [10, 0], interval: soon }");
    assert!(msg.contains("action.rollback.interval") && msg.contains("not a duration"), "{msg}");
}

#[test]
fn deep_nesting_is_refused_before_parsing_with_its_line() {
    let deep = format!("rules:\n  - name: x\n    match: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let (rules, errors) = parse(&deep);
    assert!(rules.is_empty());
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, Some(3));
    assert!(errors[0].message.contains("nested more than 64 levels"), "{:?}", errors[0]);
    // Brackets in strings and comments do not count; the shipped rules pass.
    let quoted = format!("rules: [] # {}\nx: '{}'\n", "[".repeat(100), "{".repeat(100));
    assert_eq!(too_deep(&quoted), None);
}

#[test]
fn a_file_of_several_documents_is_refused_at_the_second() {
    let (rules, errors) = parse("rules: []\n---\nrules: []\n");
    assert!(rules.is_empty());
    assert_eq!(errors[0].line, Some(2), "{:?}", errors);
    let (_, errors) = parse("# comment\n---\nrules: []\n---\nrules: []\n");
    assert_eq!(errors[0].line, Some(4), "{:?}", errors);
    // No `---` at all: serde_yaml still sees a second document (found by the hostile-input
    // property test in CI); the error names the line where the YAML goes wrong.
    let (_, errors) = parse("# Canary rollbacks\n rules:\naAAa\t\n  - name: x\n");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].message.contains("more than one document"), "{:?}", errors);
    assert_eq!(errors[0].line, Some(3), "{:?}", errors);
}

/// A file or a rule of the wrong shape is told in YAML's terms, not by the name of a Rust type.
#[test]
fn a_file_or_a_rule_of_the_wrong_shape_says_a_mapping_was_expected() {
    let (_, errors) = parse("- name: x\n");
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].message,
        "invalid type: sequence, expected a mapping: a rule file is `rules:` and the list of its rules"
    );
    let (_, errors) = parse("rules:\n  - just a string\n");
    assert_eq!(errors[0].message, "invalid type: string \"just a string\", expected a mapping");
    assert_eq!(errors[0].line, Some(2));
}
