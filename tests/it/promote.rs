//! Promotion on evidence through the real binary on the manifests target: a healthy canary goes
//! to 100% step by step on feedback; a bad signal in the middle rolls it back to 0 and the
//! promotion stays stopped; kill -9 inside a step resumes without a double step; a pause holds
//! the next step.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::backstop::{Server, Workdir};

/// The promotion rule (steps 20, 50, 100; an interval of 1 s) and a rollback rule on errors,
/// alone on sms-app/model-service.
fn workdir() -> Workdir {
    let wd = Workdir::new();
    std::fs::remove_file(wd.path("rules/canary.yaml")).unwrap();
    std::fs::remove_file(wd.path("rules/feedback.yaml")).unwrap();
    std::fs::write(
        wd.path("rules/promote.yaml"),
        r#"rules:
  - name: promote
    feedback:
      service: model-service
      namespace: sms-app
      canary: v2
      baseline: v1
      not_worse:
        error-ratio: {margin: 0.03}
      min_samples: 200
    target: { namespace: "{{ $labels.namespace }}", virtualservice: "{{ $labels.service }}" }
    action:
      promote: { stable: v1, canary: v2, steps: [20, 50, 100], interval: 1s }
  - name: errors
    feedback:
      service: model-service
      namespace: sms-app
      canary: v2
      baseline: v1
      test: error-ratio
      max_ratio: 1.5
    target: { namespace: "{{ $labels.namespace }}", virtualservice: "{{ $labels.service }}" }
    action:
      rollback: { stable: v1, canary: v2 }
"#,
    )
    .unwrap();
    wd
}

/// Deterministic outcomes (a small LCG), 30% to the canary, failing with `p_canary` and `p_base`.
fn traffic(seed: u64, n: usize, p_canary: f64, p_base: f64) -> String {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut uniform = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|i| {
            let canary = uniform() < 0.3;
            let (version, p) = if canary { ("v2", p_canary) } else { ("v1", p_base) };
            json!({"id": format!("t-{seed}-{i}"), "service": "model-service", "namespace": "sms-app",
                "version": version, "time": chrono::Utc::now(), "kind": "outcome",
                "success": uniform() >= p, "latency_ms": 40.0})
            .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One batch of feedback; the results.
async fn send(server: &Server, seed: u64, n: usize, p_canary: f64, p_base: f64) -> Vec<Value> {
    let (status, body) = server.post("/v1/feedback", "application/x-ndjson", traffic(seed, n, p_canary, p_base)).await;
    assert_eq!(status, 200, "{body}");
    body["results"].as_array().cloned().unwrap_or_default()
}

/// Good traffic in batches of 1,000 (waiting out the interval between them) until `done`.
async fn good_until(wd: &Workdir, server: &Server, seed: u64, done: impl Fn(&Workdir) -> bool) -> Vec<Value> {
    let mut results = Vec::new();
    for b in 0..60 {
        results.extend(send(server, seed * 1000 + b, 1000, 0.01, 0.01).await);
        if done(wd) {
            return results;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let matched = records(wd, "matched");
    panic!("not done after 60,000 events; results: {results:?}\nmatched: {matched:?}\nlog:\n{}", server.log());
}

fn records(wd: &Workdir, outcome: &str) -> Vec<Value> {
    let out = wd.cli(&["audit", "query", "--outcome", outcome, "--format", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The promotion steps recorded as applied, `(from, to)`, in order.
fn steps(wd: &Workdir) -> Vec<(u64, u64)> {
    records(wd, "applied")
        .iter()
        .filter_map(|r| Some((r["detail"]["promotion"]["from"].as_u64()?, r["detail"]["promotion"]["to"].as_u64()?)))
        .collect()
}

fn assert_verifies(wd: &Workdir) {
    let out = wd.cli(&["audit", "verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_canary_is_promoted_to_full_traffic_step_by_step_on_feedback() {
    let wd = workdir();
    let server = wd.serve();
    assert_eq!(wd.canary_weight(), 10);
    good_until(&wd, &server, 1, |wd| !records(wd, "promoted").is_empty()).await;
    assert_eq!(steps(&wd), [(10, 20), (20, 50), (50, 100)]);
    assert_eq!(wd.canary_weight(), 100);
    let promoted = &records(&wd, "promoted")[0];
    let stages = promoted["detail"]["stages"].as_array().unwrap();
    assert_eq!(stages.iter().map(|s| s["to"].as_u64().unwrap()).collect::<Vec<_>>(), [20, 50, 100]);
    assert!(stages.iter().all(|s| s["evidence"]["tests"][0]["p_value"].as_f64().unwrap() <= 0.05), "{promoted}");
    // Each step is an action: decided, then written; annotated on the object like a rollback.
    assert_eq!(records(&wd, "decided").len(), 3);
    let vs = wd.read("deploy/local/model-service.yaml");
    assert!(vs.contains("backstop.io/rule: promote"), "{vs}");
    let metrics = reqwest::get(format!("{}/metrics", server.url)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"backstop_promotions_total{rule="promote"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"backstop_canary_weight{target="sms-app/model-service",canary="v2"} 100"#), "{metrics}");
    assert_verifies(&wd);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_signal_in_the_middle_of_a_promotion_rolls_back_to_zero_and_the_promotion_stops() {
    let wd = workdir();
    let server = wd.serve();
    good_until(&wd, &server, 2, |wd| !steps(wd).is_empty()).await;
    assert_eq!(wd.canary_weight(), 20);
    let mut rolled_back = false;
    for b in 0..10 {
        let results = send(&server, 300 + b, 1000, 0.08, 0.01).await;
        if results.iter().any(|r| r["rule"] == "errors" && r["outcome"] == "applied") {
            rolled_back = true;
            break;
        }
    }
    assert!(rolled_back, "log:\n{}", server.log());
    assert_eq!(wd.canary_weight(), 0);
    // Good again, and traffic still reaching v2: the promotion does not come back by itself.
    for b in 0..15 {
        send(&server, 400 + b, 1000, 0.01, 0.01).await;
    }
    assert_eq!(wd.canary_weight(), 0);
    assert_eq!(steps(&wd), [(10, 20)]);
    let held = records(&wd, "held");
    assert!(
        held.iter().any(|r| r["rule"] == "promote" && r["reason"].as_str().unwrap().contains("rollback wins")),
        "{held:?}"
    );
    let out = reqwest::get(format!("{}/v1/promotions", server.url)).await.unwrap().json::<Value>().await.unwrap();
    assert_eq!(out["stopped"]["sms-app/model-service"]["rule"], "errors", "{out}");
    assert_verifies(&wd);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_inside_a_step_resumes_it_once_and_the_promotion_goes_on_without_a_double_step() {
    let wd = workdir();
    // The second step (20 -> 50) dies after its write, before its outcome is recorded.
    let mut server = wd.serve_with_env(&[("BACKSTOP_CRASH_AT", "promotion.written:2")]);
    for b in 0..60 {
        let sent = reqwest::Client::new()
            .post(format!("{}/v1/feedback", server.url))
            .header("content-type", "application/x-ndjson")
            .body(traffic(500 + b, 1000, 0.01, 0.01))
            .send()
            .await;
        match sent {
            Ok(resp) => assert_eq!(resp.status().as_u16(), 200),
            Err(_) => break, // it died
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(server.wait_exit(Duration::from_secs(10)).is_some(), "it crashed at the point:\n{}", server.log());
    assert_eq!(wd.canary_weight(), 50, "written before the crash");
    assert_eq!(steps(&wd), [(10, 20)], "its outcome was not recorded");
    // Restarted: the step is resumed and found done (no second write), and the next is taken.
    let server = wd.serve();
    let noop = records(&wd, "noop");
    assert!(noop.iter().any(|r| r["detail"]["promotion"]["to"] == 50), "{noop:?}\n{}", server.log());
    assert_eq!(wd.canary_weight(), 50);
    good_until(&wd, &server, 6, |wd| !records(wd, "promoted").is_empty()).await;
    assert_eq!(wd.canary_weight(), 100);
    let promoted = &records(&wd, "promoted")[0];
    let to: Vec<u64> =
        promoted["detail"]["stages"].as_array().unwrap().iter().map(|s| s["to"].as_u64().unwrap()).collect();
    assert_eq!(to, [20, 50, 100], "each step once: {promoted}");
    assert_eq!(records(&wd, "decided").len(), 3);
    assert_verifies(&wd);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pause_holds_the_next_step_until_resumed() {
    let wd = workdir();
    let server = wd.serve();
    good_until(&wd, &server, 7, |wd| !steps(wd).is_empty()).await;
    assert_eq!(wd.canary_weight(), 20);
    let server_arg = ["--server", server.url.as_str()];
    let out =
        wd.cli(&[&["pause", "--target", "sms-app/model-service", "--reason", "looking"][..], &server_arg].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let results = good_until(&wd, &server, 8, |wd| records(wd, "held").iter().any(|r| r["rule"] == "promote")).await;
    let held = results.iter().find(|r| r["rule"] == "promote").unwrap();
    assert!(held["reason"].as_str().unwrap().starts_with("paused"), "{held}");
    assert_eq!(wd.canary_weight(), 20);
    let out = wd.cli(&[&["resume", "--target", "sms-app/model-service", "--reason", "fine"][..], &server_arg].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The held finding is quiet for a minute; the hand takes the next step meanwhile, on record.
    let out = wd.cli(
        &[&["promote", "sms-app/model-service", "--reason", "resumed", "--actor", "ana"][..], &server_arg].concat(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(wd.canary_weight(), 50);
    let control = records(&wd, "control");
    assert!(control.iter().any(|r| r["actor"] == "ana" && r["detail"]["control"] == "promote"), "{control:?}");
    assert_verifies(&wd);
}

/// The README's demo: the shipped rules, the feedback script's healthy traffic, and the shipped
/// promotion rule records the step it would take, as a dry run, without writing.
#[tokio::test(flavor = "multi_thread")]
async fn the_demo_feedback_script_shows_the_shipped_promotion_rule_as_a_dry_run() {
    let wd = Workdir::new();
    let server = wd.serve();
    let before = wd.read("deploy/local/model-service.yaml");
    let out = std::process::Command::new("sh")
        .arg(crate::support::backstop::repo("fixtures/feedback/healthy.sh"))
        .args([server.url.as_str(), "30000"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dry = records(&wd, "dry_run");
    let step = dry.iter().find(|r| r["rule"] == "feedback-canary-promote").unwrap_or_else(|| panic!("{dry:?}"));
    assert_eq!(
        (step["detail"]["promotion"]["from"].as_u64(), step["detail"]["promotion"]["to"].as_u64()),
        (Some(10), Some(20))
    );
    assert_eq!(wd.read("deploy/local/model-service.yaml"), before, "a dry run writes nothing");
    assert!(records(&wd, "applied").is_empty(), "and no rollback rule fired on healthy traffic");
}
