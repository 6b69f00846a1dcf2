//! The fold and the guards: keys, cooldowns, the cap, pauses, step-downs, pending actions.

use super::*;
use crate::audit::Entry;

fn rec(seq: u64, time: DateTime<Utc>, entry: Entry) -> Record {
    Record { seq, time, prev: String::new(), entry }
}

fn settings() -> GuardSettings {
    GuardSettings { max_actions: 2, window: Duration::from_secs(3600), ..Default::default() }
}

const TEN_MIN: Duration = Duration::from_secs(600);

#[test]
fn decided_key_makes_redelivery_a_duplicate_and_failure_frees_it() {
    let now = Utc::now();
    let mut s = GuardState::default();
    s.observe(&rec(1, now, Entry::new(Kind::Decided).key("k").action_id("a1")));
    assert_eq!(s.vet("r", "k", "ns/vs", TEN_MIN, &settings(), now), GuardVerdict::Duplicate { action_id: "a1".into() });
    s.observe(&rec(2, now, Entry::new(Kind::Failed).key("k").action_id("a1")));
    assert_eq!(s.vet("r", "k", "ns/vs", TEN_MIN, &settings(), now), GuardVerdict::Proceed);
}

#[test]
fn cooldown_holds_the_same_rule_and_target_until_it_ends() {
    let t0 = Utc::now();
    let mut s = GuardState::default();
    s.observe(&rec(1, t0, Entry::new(Kind::Applied).rule("r").target("ns/vs")));
    let held = s.vet("r", "k2", "ns/vs", TEN_MIN, &settings(), t0 + chrono::Duration::minutes(5));
    assert!(matches!(held, GuardVerdict::Held { ref reason } if reason.starts_with("cooldown")), "{held:?}");
    assert_eq!(s.vet("other", "k2", "ns/vs", TEN_MIN, &settings(), t0), GuardVerdict::Proceed, "other rule");
    assert_eq!(s.vet("r", "k2", "ns/other", TEN_MIN, &settings(), t0), GuardVerdict::Proceed, "other target");
    assert_eq!(
        s.vet("r", "k2", "ns/vs", TEN_MIN, &settings(), t0 + chrono::Duration::minutes(11)),
        GuardVerdict::Proceed
    );
}

/// A target found already as decided (rolled back by hand) was not changed by backstop: the
/// rule stays free to act when its canary is raised again and fails, and the cap is not used up.
#[test]
fn a_noop_starts_no_cooldown_and_uses_none_of_the_cap() {
    let t0 = Utc::now();
    let mut s = GuardState::default();
    for (seq, key) in [(1, "k1"), (2, "k2"), (3, "k3")] {
        s.observe(&rec(seq, t0, Entry::new(Kind::Decided).key(key).action_id(key).rule("r").target("ns/vs")));
        s.observe(&rec(seq, t0, Entry::new(Kind::Noop).key(key).action_id(key).rule("r").target("ns/vs")));
    }
    let minute_later = t0 + chrono::Duration::minutes(1);
    assert_eq!(s.vet("r", "k4", "ns/vs", TEN_MIN, &settings(), minute_later), GuardVerdict::Proceed);
    // The same alert again is still a duplicate of the action that found nothing to do.
    assert_eq!(
        s.vet("r", "k1", "ns/vs", TEN_MIN, &settings(), minute_later),
        GuardVerdict::Duplicate { action_id: "k1".into() }
    );
}

#[test]
fn cap_counts_applied_actions_in_the_window() {
    let t0 = Utc::now();
    let mut s = GuardState::default();
    s.observe(&rec(1, t0, Entry::new(Kind::Applied).rule("a").target("x/1")));
    s.observe(&rec(2, t0, Entry::new(Kind::Applied).rule("b").target("x/2")));
    let v = s.vet("c", "k", "x/3", TEN_MIN, &settings(), t0);
    assert!(matches!(v, GuardVerdict::Held { ref reason } if reason.contains("action cap: 2 actions")), "{v:?}");
    assert_eq!(s.vet("c", "k", "x/3", TEN_MIN, &settings(), t0 + chrono::Duration::minutes(61)), GuardVerdict::Proceed);
}

/// A promotion's steps leave the whole cap to rollbacks.
#[test]
fn promotion_steps_do_not_count_against_the_cap() {
    let t0 = Utc::now();
    let mut s = GuardState::default();
    for (i, to) in [20u8, 30, 40, 50, 55].into_iter().enumerate() {
        let step = promotion::StepUp { canary: "v2".into(), from: to - 10, to, max: 100, evidence: None };
        let entry = Entry::new(Kind::Applied)
            .rule("promote")
            .target("x/1")
            .action_id(format!("p{i}"))
            .detail(promotion::PromotionPart { promotion: step }.value());
        s.observe(&rec(i as u64 + 1, t0, entry));
    }
    assert_eq!(s.promotions().under_way("x/1").map(|p| p.weight()), Some(55));
    assert_eq!(s.vet("rollback", "k", "x/1", TEN_MIN, &settings(), t0), GuardVerdict::Proceed, "cap of 2 untouched");
}

/// docs/feedback.md "Rollback wins": a rollback the guards held still says the canary should not
/// go up, so the fold stops the promotion on that target; a promotion's own held step does not.
#[test]
fn a_rollback_held_by_the_guards_stops_the_promotion_on_its_target() {
    let t0 = Utc::now();
    let mut s = GuardState::default();
    let step = promotion::StepUp { canary: "v2".into(), from: 10, to: 20, max: 50, evidence: None };
    let applied = Entry::new(Kind::Applied)
        .rule("promote")
        .target("x/1")
        .action_id("p1")
        .detail(promotion::PromotionPart { promotion: step.clone() }.value());
    s.observe(&rec(1, t0, applied));
    let no_cooldown = |_: &str| Duration::ZERO;
    let vet = |s: &GuardState| s.vet_promotion("k2", "x/1", "v2", Duration::ZERO, &no_cooldown, t0);
    assert_eq!(vet(&s), GuardVerdict::Proceed, "the promotion goes on");
    let own_hold = Entry::new(Kind::Held)
        .rule("promote")
        .target("x/1")
        .reason("paused")
        .detail(promotion::PromotionPart { promotion: step }.value());
    s.observe(&rec(2, t0, own_hold));
    assert_eq!(vet(&s), GuardVerdict::Proceed, "a promotion's own held step does not stop it");
    s.observe(&rec(3, t0, Entry::new(Kind::Held).rule("errors").target("x/1").reason("cooldown")));
    let v = vet(&s);
    assert!(matches!(v, GuardVerdict::Held { ref reason } if reason.contains("rollback wins")), "{v:?}");
    assert!(s.promotions().under_way("x/1").is_none());
}

#[test]
fn pause_and_resume_per_target_and_global() {
    let now = Utc::now();
    let mut s = GuardState::default();
    let pause = |t: Option<&str>| {
        let e = Entry::new(Kind::Control).actor("alice").reason("investigating").detail(json!({"control": "pause"}));
        match t {
            Some(t) => e.target(t),
            None => e,
        }
    };
    s.observe(&rec(1, now, pause(Some("ns/vs"))));
    assert!(
        matches!(s.vet("r", "k", "ns/vs", TEN_MIN, &settings(), now), GuardVerdict::Held { ref reason } if reason.contains("by alice"))
    );
    assert_eq!(s.vet("r", "k", "ns/other", TEN_MIN, &settings(), now), GuardVerdict::Proceed);
    s.observe(&rec(2, now, pause(None)));
    assert!(matches!(s.vet("r", "k", "ns/other", TEN_MIN, &settings(), now), GuardVerdict::Held { .. }));
    s.observe(&rec(3, now, Entry::new(Kind::Control).detail(json!({"control": "resume"}))));
    s.observe(&rec(4, now, Entry::new(Kind::Control).target("ns/vs").detail(json!({"control": "resume"}))));
    assert_eq!(s.vet("r", "k", "ns/vs", TEN_MIN, &settings(), now), GuardVerdict::Proceed);
}

#[test]
fn prune_drops_expired_keys_and_window_entries() {
    let t0 = Utc::now();
    let mut s = GuardState::default();
    s.observe(&rec(1, t0, Entry::new(Kind::Decided).key("old").action_id("a")));
    s.observe(&rec(2, t0, Entry::new(Kind::Applied).rule("r").target("t")));
    let later = t0 + chrono::Duration::days(8);
    s.prune(later, &settings(), TEN_MIN);
    assert!(s.keys.is_empty() && s.last_applied.is_empty() && s.applied.is_empty());
}

/// The `applied` record of step `step` of a step-down begun by `origin`, leaving the canary
/// at `left` with `steps` still to go after it (as the pipeline writes it).
fn step_applied(origin: &str, step: u32, left: u32, steps: &[u64]) -> Entry {
    use crate::actions::virtualservice::{Change, Dest, Plan, Weight};
    let plan = crate::actions::ActionPlan::Traffic(Plan {
        change: Change::StepDown {
            stable: Dest::Subset("v1".into()),
            canary: Dest::Subset("v2".into()),
            steps: steps.iter().map(|w| Weight::try_from(*w).unwrap()).collect(),
        },
        routes: None,
    });
    let info = crate::state::stepdown::StepInfo {
        origin: origin.into(),
        step,
        interval_ms: 60_000,
        verify: None,
        remaining: None,
        next_at: None,
        next: None,
    };
    let routes = |v2: u32| {
        json!([{ "route": "primary", "destinations": [
            { "host": "ms", "subset": "v1", "weight": 100 - v2 }, { "host": "ms", "subset": "v2", "weight": v2 }]}])
    };
    let outcome = crate::actions::Outcome::Applied { before: routes(50), after: routes(left) };
    let next = crate::state::stepdown::after_outcome(&plan, &info, &outcome, Utc::now());
    Entry::new(Kind::Applied)
        .rule("r")
        .target("ns/vs")
        .action_id(format!("{origin}-{step}"))
        .detail(json!({ "step_down": next }))
}

#[test]
fn a_step_down_is_folded_from_its_steps_records_and_ends_with_the_last() {
    let t0 = Utc::now();
    let mut s = GuardState::default();
    s.observe(&rec(1, t0, step_applied("A", 1, 25, &[25, 10, 0])));
    let d = s.step_down("ns/vs").expect("under way").clone();
    assert_eq!((d.origin.as_str(), d.step, d.rule.as_str()), ("A", 2, "r"));
    assert!(d.due > t0 + chrono::Duration::seconds(59), "due after the interval: {d:?}");
    assert!(s.due_steps(t0).is_empty());
    assert_eq!(s.next_step_due(), Some(d.due));
    // The snapshot carries it across a restart.
    let restored = GuardState::from_snapshot(s.snapshot(crate::audit::Position {
        seq: 1,
        hash: String::new(),
        segment: String::new(),
        offset: 0,
    }));
    assert_eq!(restored.step_down("ns/vs"), Some(&d));
    s.observe(&rec(2, t0, step_applied("A", 2, 10, &[10, 0])));
    assert_eq!(s.step_down("ns/vs").unwrap().step, 3);
    s.observe(&rec(3, t0, step_applied("A", 3, 0, &[0])));
    assert_eq!(s.step_down("ns/vs"), None);
    assert_eq!(s.next_step_due(), None);
}

#[test]
fn traffic_that_did_not_move_during_a_step_down_makes_the_next_step_zero_now() {
    let t0 = Utc::now();
    let mut s = GuardState::default();
    s.observe(&rec(1, t0, step_applied("A", 1, 25, &[25, 10, 0])));
    let t1 = t0 + chrono::Duration::seconds(5);
    s.observe(&rec(2, t1, Entry::new(Kind::Unverified).target("ns/vs").action_id("A-1")));
    let d = s.step_down("ns/vs").unwrap();
    assert_eq!(d.due, t1);
    let crate::actions::ActionPlan::Traffic(plan) = &d.plan else { panic!("{d:?}") };
    assert!(
        matches!(&plan.change, crate::actions::virtualservice::Change::StepDown { steps, .. } if steps.len() == 1 && steps[0].get() == 0)
    );
    assert_eq!(s.due_steps(t1).len(), 1);
}

#[test]
fn an_action_under_way_holds_its_rule_on_its_target_until_its_outcome() {
    let now = Utc::now();
    let mut s = GuardState::default();
    let decided = Entry::new(Kind::Decided).key("k1").action_id("a1").rule("r").target("ns/vs");
    s.observe(&rec(1, now, decided.detail(json!({"plan": {"traffic": {}}}))));
    let v = s.vet("r", "k2", "ns/vs", TEN_MIN, &settings(), now);
    assert!(
        matches!(v, GuardVerdict::Held { ref reason } if reason.contains("action a1 of rule r on ns/vs is under way"))
    );
    assert_eq!(s.vet("other", "k2", "ns/vs", TEN_MIN, &settings(), now), GuardVerdict::Proceed, "other rule");
    // A redelivery of the same alert meanwhile is a no-op that names a1: a1 is still under way.
    let dup = Entry::new(Kind::Noop).key("k1").action_id("a1").rule("r").target("ns/vs");
    s.observe(&rec(2, now, dup.detail(json!({"duplicate": true}))));
    assert!(matches!(s.vet("r", "k2", "ns/vs", TEN_MIN, &settings(), now), GuardVerdict::Held { .. }));
    assert_eq!(s.pending().len(), 1, "still pending: resumed after a crash");
    s.observe(&rec(3, now, Entry::new(Kind::Failed).key("k1").action_id("a1").rule("r").target("ns/vs")));
    assert_eq!(s.vet("r", "k2", "ns/vs", TEN_MIN, &settings(), now), GuardVerdict::Proceed);
}

#[test]
fn a_step_down_counts_once_against_the_action_cap() {
    let t0 = Utc::now();
    let mut s = GuardState::default();
    s.observe(&rec(1, t0, step_applied("A", 1, 25, &[25, 10, 0])));
    s.observe(&rec(2, t0, step_applied("A", 2, 10, &[10, 0])));
    s.observe(&rec(3, t0, step_applied("A", 3, 0, &[0])));
    assert_eq!(s.vet("c", "k", "x/3", TEN_MIN, &settings(), t0), GuardVerdict::Proceed, "3 steps, 1 action, cap 2");
}

#[test]
fn a_decided_action_without_outcome_is_pending_until_one_is_recorded() {
    let now = Utc::now();
    let mut s = GuardState::default();
    let decided = Entry::new(Kind::Decided)
        .action_id("a1")
        .key("k")
        .rule("r")
        .target("ns/vs")
        .detail(json!({"plan": {"change": "x"}}));
    s.observe(&Record { seq: 1, time: now, prev: String::new(), entry: decided });
    assert_eq!(s.pending().len(), 1);
    assert_eq!(s.pending()[0].target, "ns/vs");
    let snap = s.snapshot(crate::audit::Position { seq: 1, hash: "h".into(), segment: "s".into(), offset: 0 });
    assert_eq!(GuardState::from_snapshot(snap).pending().len(), 1, "kept across a snapshot");
    let applied = Entry::new(Kind::Noop).action_id("a1");
    s.observe(&Record { seq: 2, time: now, prev: String::new(), entry: applied });
    assert!(s.pending().is_empty());
}

#[test]
fn the_highest_kafka_offset_recorded_per_partition_is_folded_from_each_intakes_records_and_snapshotted() {
    let now = Utc::now();
    let mut s = GuardState::default();
    let alert = |offset: i64| {
        Entry::new(Kind::Received)
            .source("kafka")
            .detail(json!({"alert": {}, "delivery": {"kafka": {"topic": "alerts", "partition": 0, "offset": offset}}}))
    };
    let feedback = |partition: i32, offset: i64| {
        Entry::new(Kind::Received).source("kafka").detail(json!({"feedback": {"service": "s", "namespace": "n",
            "version": "v1", "kind": "outcome", "success": true, "time": now},
            "kafka": {"topic": "feedback", "partition": partition, "offset": offset}}))
    };
    let rejected = |offset: i64| {
        Entry::new(Kind::Rejected)
            .source("kafka")
            .detail(json!({"size": 3, "topic": "feedback", "partition": 1, "offset": offset}))
    };
    s.observe(&rec(1, now, alert(4)));
    s.observe(&rec(2, now, alert(3)));
    s.observe(&rec(3, now, feedback(0, 10)));
    s.observe(&rec(4, now, feedback(1, 2)));
    s.observe(&rec(5, now, rejected(7)));
    // Over HTTP: no position.
    s.observe(&rec(6, now, Entry::new(Kind::Received).source("alertmanager").detail(json!({"delivery": {}}))));
    s.observe(&rec(7, now, Entry::new(Kind::Rejected).source("http").detail(json!({"offset": 99}))));
    let want = vec![
        KafkaPosition { topic: "alerts".into(), partition: 0, offset: 4 },
        KafkaPosition { topic: "feedback".into(), partition: 0, offset: 10 },
        KafkaPosition { topic: "feedback".into(), partition: 1, offset: 7 },
    ];
    assert_eq!(s.kafka_positions(), want);
    let snap = s.snapshot(crate::audit::Position { seq: 7, hash: "h".into(), segment: "s".into(), offset: 0 });
    assert_eq!(GuardState::from_snapshot(snap.clone()).kafka_positions(), want, "kept across a snapshot");
    // A snapshot written before positions were kept loads, with none.
    let mut old = serde_json::to_value(&snap).unwrap();
    old.as_object_mut().unwrap().remove("kafka");
    let old: Snapshot = serde_json::from_value(old).unwrap();
    assert!(GuardState::from_snapshot(old).kafka_positions().is_empty());
}
