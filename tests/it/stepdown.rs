//! Gradual rollback through the real binary on the manifests target: a step-down stopped dead
//! (kill -9, and aborts at named points inside a step) resumes from the audit log and finishes
//! once, never going back up; a new alert during it goes straight to 0.

use std::time::Duration;

use serde_json::Value;

use crate::support::backstop::{Server, Workdir, eventually};

const FIRING: &str = include_str!("../../fixtures/alertmanager/firing.json");

/// The only rule acting on sms-app/model-service: a rollback in steps of 25, 10, 0.
fn workdir(interval: &str) -> Workdir {
    let wd = Workdir::new();
    std::fs::remove_file(wd.path("rules/canary.yaml")).unwrap();
    std::fs::remove_file(wd.path("rules/feedback.yaml")).unwrap();
    std::fs::write(
        wd.path("rules/gradual.yaml"),
        format!(
            r#"rules:
  - name: gradual-rollback
    match: ['alertname="CanaryHighErrorRate"']
    target: {{ namespace: "{{{{ $labels.namespace }}}}", virtualservice: "{{{{ $labels.virtualservice }}}}" }}
    action:
      rollback: {{ stable: v1, canary: v2, steps: [25, 10, 0], interval: {interval} }}
    cooldown: 1h
"#
        ),
    )
    .unwrap();
    // A canary at 50%: the case the steps are for.
    let vs = wd.read("deploy/local/model-service.yaml");
    let vs =
        vs.replace("weight: 90 # stable", "weight: 50 # stable").replace("weight: 10 # canary", "weight: 50 # canary");
    std::fs::write(wd.path("deploy/local/model-service.yaml"), vs).unwrap();
    wd
}

fn records(wd: &Workdir, outcome: &str) -> Vec<Value> {
    let out = wd.cli(&["audit", "query", "--outcome", outcome, "--format", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The canary weight each applied step left, in order.
fn applied_weights(wd: &Workdir) -> Vec<u64> {
    records(wd, "applied")
        .iter()
        .map(|r| {
            let after = r["after"].as_array().unwrap();
            let dests = after[0]["destinations"].as_array().unwrap();
            dests.iter().find(|d| d["subset"] == "v2").unwrap()["weight"].as_u64().unwrap()
        })
        .collect()
}

async fn fire(server: &Server, body: &str) -> Value {
    let (status, body) = server.post("/v1/alertmanager", "application/json", body.to_string()).await;
    assert_eq!(status, 200, "{body}");
    body["results"][0].clone()
}

fn assert_verifies(wd: &Workdir) {
    let out = wd.cli(&["audit", "verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_down_killed_between_steps_resumes_and_finishes_once() {
    let wd = workdir("1s");
    let server = wd.serve();
    let first = fire(&server, FIRING).await;
    assert_eq!(first["outcome"], "applied", "{first}");
    assert_eq!(wd.canary_weight(), 25, "the first step is taken before the answer");
    drop(server); // kill -9 before the next step is due
    assert_eq!(wd.canary_weight(), 25);
    tokio::time::sleep(Duration::from_millis(1500)).await; // the next step is overdue now

    let server = wd.serve();
    let done = eventually(Duration::from_secs(10), || (wd.canary_weight() == 0).then_some(())).await;
    assert!(done.is_some(), "not finished after the restart; log:\n{}", server.log());
    // Give a wrong second run the chance to show itself.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(server.terminate().success());
    assert_eq!(applied_weights(&wd), [25, 10, 0], "each step once, never back up");
    let applied = records(&wd, "applied");
    let origin = applied[0]["action_id"].as_str().unwrap();
    for (i, r) in applied.iter().enumerate() {
        assert_eq!(r["detail"]["step_down"]["origin"], origin, "{r}");
        assert_eq!(r["detail"]["step_down"]["step"], i as u64 + 1, "{r}");
    }
    assert_eq!(applied[2]["detail"]["step_down"]["remaining"], serde_json::json!([]));
    assert_verifies(&wd);
}

/// Aborted inside a step (after its `decided` record, and after its write but before its
/// outcome is recorded): the restart finishes that step (a no-op when the write happened) and the
/// ones after it, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_step_down_aborted_inside_a_step_finishes_that_step_and_the_rest_once() {
    for point in ["step_down.decided", "step_down.written"] {
        let wd = workdir("300ms");
        let mut server = wd.serve_with_env(&[("BACKSTOP_CRASH_AT", point)]);
        assert_eq!(fire(&server, FIRING).await["outcome"], "applied");
        let status = server.wait_exit(Duration::from_secs(10));
        assert!(status.is_some_and(|s| !s.success()), "{point}: not reached; log:\n{}", server.log());
        let expected_now = if point == "step_down.written" { 10 } else { 25 };
        assert_eq!(wd.canary_weight(), expected_now, "{point}");
        drop(server);

        let server = wd.serve();
        let done = eventually(Duration::from_secs(10), || (wd.canary_weight() == 0).then_some(())).await;
        assert!(done.is_some(), "{point}: not finished; log:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(server.terminate().success());
        let mut changed: Vec<u64> = applied_weights(&wd);
        if point == "step_down.written" {
            // The write of 10 happened before the abort: resumed, it is found done (a no-op).
            let resumed = records(&wd, "noop");
            assert_eq!(resumed.len(), 1, "{point}: {resumed:?}");
            assert!(resumed[0]["reason"].as_str().unwrap().starts_with("resumed after a restart"));
            changed.insert(1, 10);
        }
        assert_eq!(changed, [25, 10, 0], "{point}");
        assert_verifies(&wd);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_alert_during_a_step_down_goes_straight_to_zero_and_starts_no_second_one() {
    let wd = workdir("1h");
    let server = wd.serve();
    assert_eq!(fire(&server, FIRING).await["outcome"], "applied");
    assert_eq!(wd.canary_weight(), 25);
    // The same alert delivered again is a duplicate: nothing moves.
    assert_eq!(fire(&server, FIRING).await["outcome"], "noop");
    assert_eq!(wd.canary_weight(), 25);
    // Another alert for the same rule and target (another instance: its own fingerprint).
    let other = FIRING
        .replace("a9c5c3b76558e44d", "b1b2b3b4b5b6b7b8")
        .replace("\"severity\":\"critical\"", "\"severity\":\"page\"");
    let second = fire(&server, &other).await;
    assert_eq!(second["outcome"], "applied", "{second}");
    assert!(second["reason"].is_null() || second["reason"].as_str().is_some());
    assert_eq!(wd.canary_weight(), 0, "straight to 0, without waiting an hour or the 1h cooldown");
    // A third alert now: the step-down is over, so the cooldown holds it.
    let third = FIRING
        .replace("a9c5c3b76558e44d", "c1c2c3c4c5c6c7c8")
        .replace("\"severity\":\"critical\"", "\"severity\":\"warning\"");
    assert_eq!(fire(&server, &third).await["outcome"], "held");
    assert!(server.terminate().success());
    assert_eq!(applied_weights(&wd), [25, 0]);
    let decided = records(&wd, "decided");
    assert_eq!(decided.len(), 2, "one step-down, not two: {decided:?}");
    assert!(
        decided[1]["reason"].as_str().unwrap().contains("a new alert during the gradual rollback"),
        "{:?}",
        decided[1]
    );
    assert_eq!(decided[1]["detail"]["step_down"]["origin"], decided[0]["action_id"]);
    assert_verifies(&wd);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_already_below_the_first_step_takes_its_next_step_at_once() {
    let wd = workdir("1h");
    // 12%: below the first step (25), between 10 and 25.
    let vs = wd.read("deploy/local/model-service.yaml");
    let vs =
        vs.replace("weight: 50 # stable", "weight: 88 # stable").replace("weight: 50 # canary", "weight: 12 # canary");
    std::fs::write(wd.path("deploy/local/model-service.yaml"), vs).unwrap();
    let server = wd.serve();
    let first = fire(&server, FIRING).await;
    assert_eq!(first["outcome"], "applied", "{first}");
    assert_eq!(wd.canary_weight(), 10, "12 is between steps: down to 10, never up to 25");
    assert!(wd.read("deploy/local/model-service.yaml").contains("weight: 90 # stable"));
    assert!(server.terminate().success());

    let wd = workdir("1h");
    let vs = wd.read("deploy/local/model-service.yaml");
    let vs =
        vs.replace("weight: 50 # stable", "weight: 90 # stable").replace("weight: 50 # canary", "weight: 10 # canary");
    std::fs::write(wd.path("deploy/local/model-service.yaml"), vs).unwrap();
    let server = wd.serve();
    let first = fire(&server, FIRING).await;
    assert_eq!(first["outcome"], "applied", "{first}");
    assert_eq!(
        wd.canary_weight(),
        0,
        "at 10 already: the first step (25, 10) is a no-op, the next (0) is taken at once"
    );
    assert!(server.terminate().success());
    assert_eq!(records(&wd, "noop").len(), 1);
    assert_eq!(applied_weights(&wd), [0]);
    assert_verifies(&wd);
}
