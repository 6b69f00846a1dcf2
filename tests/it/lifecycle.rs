//! The service's lifecycle as a process: reloads (on file change and on SIGHUP, invalid ones
//! refused), health and readiness, metrics, and SIGTERM with work in flight.

use std::process::Command;
use std::time::Duration;

use crate::support::backstop::{Server, Workdir, per_alert};

const FIRING: &str = include_str!("../../fixtures/alertmanager/firing.json");

async fn get(server: &Server, path: &str) -> (u16, String) {
    let resp = reqwest::get(format!("{}{path}", server.url)).await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// The value of a sample in the /metrics text, by its exact name and labels.
async fn metric(server: &Server, sample: &str) -> Option<f64> {
    let (_, text) = get(server, "/metrics").await;
    text.lines().find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
}

async fn wait_metric(server: &Server, sample: &str, want: f64) {
    for _ in 0..100 {
        if metric(server, sample).await == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, text) = get(server, "/metrics").await;
    panic!("{sample} never became {want}:\n{text}\nlog:\n{}", server.log());
}

const EXTRA_RULE: &str = r#"
rules:
  - name: extra
    match: ['alertname="Extra"']
    target: { namespace: sms-app, virtualservice: model-service }
    action: { rollback: { stable: v1, canary: v2 } }
"#;

#[tokio::test]
async fn a_rule_change_is_loaded_an_invalid_one_refused_and_keys_and_cooldowns_survive_both() {
    let wd = Workdir::new();
    let server = wd.serve();
    let loaded = metric(&server, "backstop_rules_loaded ").await.unwrap();
    let (status, body) = server.post("/v1/alertmanager", "application/json", FIRING).await;
    assert_eq!((status, body["results"][0]["outcome"].as_str()), (200, Some("applied")), "{body}");

    // A valid change: one more rule, in force within the poll interval.
    std::fs::write(wd.path("rules/extra.yaml"), EXTRA_RULE).unwrap();
    wait_metric(&server, "backstop_rules_loaded ", loaded + 1.0).await;
    wait_metric(&server, "backstop_rules_last_reload_success ", 1.0).await;
    // The alert already handled is still known: a redelivery is a no-op, not a second action.
    let (_, body) = server.post("/v1/alertmanager", "application/json", FIRING).await;
    assert_eq!(body["results"][0]["outcome"], "noop", "{body}");

    // An invalid change is refused, said in the log and the metrics; the rules in force stay.
    std::fs::write(wd.path("rules/extra.yaml"), EXTRA_RULE.replace("rollback", "rollforward")).unwrap();
    wait_metric(&server, "backstop_rules_last_reload_success ", 0.0).await;
    assert_eq!(metric(&server, "backstop_rules_loaded ").await, Some(loaded + 1.0));
    let log = server.log();
    assert!(log.contains("reload refused") && log.contains("extra.yaml"), "{log}");
    let (status, _) = get(&server, "/readyz").await;
    assert_eq!(status, 200, "a refused reload leaves the old rules serving");

    let out = wd.cli(&["audit", "query", "--outcome", "control", "--format", "json"]);
    let controls = String::from_utf8_lossy(&out.stdout);
    assert!(controls.contains("\"reload\"") && controls.contains("\"reload-refused\""), "{controls}");
    assert!(server.terminate().success());
}

#[tokio::test]
async fn sighup_reloads_when_polling_is_off() {
    let config =
        std::fs::read_to_string(crate::support::backstop::repo("backstop.yaml")).unwrap() + "\nreload_interval: 0s\n";
    let wd = Workdir::with_config(&config);
    let server = wd.serve();
    let loaded = metric(&server, "backstop_rules_loaded ").await.unwrap();
    std::fs::write(wd.path("rules/extra.yaml"), EXTRA_RULE).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(metric(&server, "backstop_rules_loaded ").await, Some(loaded), "no polling: nothing yet");
    Command::new("kill").args(["-HUP", &server.child.id().to_string()]).status().unwrap();
    wait_metric(&server, "backstop_rules_loaded ", loaded + 1.0).await;
    assert!(server.terminate().success());
}

#[tokio::test]
async fn health_readiness_and_metrics_say_what_they_see() {
    let wd = Workdir::new();
    let server = wd.serve();
    assert_eq!(get(&server, "/healthz").await.0, 200);
    let (status, body) = get(&server, "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    server.post("/v1/alertmanager", "application/json", FIRING).await;
    let (_, text) = get(&server, "/metrics").await;
    for sample in [
        r#"backstop_events_received_total{source="alertmanager",outcome="accepted"} 1"#,
        r#"backstop_rule_matches_total{rule="canary-high-error-rate"} 1"#,
        r#"backstop_decisions_total{rule="canary-high-error-rate",outcome="applied"} 1"#,
        r#"backstop_action_duration_seconds_count{target="manifests"} 1"#,
        "backstop_ready 1",
    ] {
        assert!(text.lines().any(|l| l == sample), "missing `{sample}`:\n{text}");
    }
    assert!(text.contains("backstop_audit_fsync_duration_seconds_count"), "{text}");
    assert!(text.contains("backstop_build_info{version="), "{text}");

    // The target goes away: not ready, and it says why.
    std::fs::rename(wd.path("deploy/local"), wd.path("deploy/moved")).unwrap();
    let (status, body) = get(&server, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("target:") && body.contains("deploy/local"), "{body}");
    assert_eq!(metric(&server, "backstop_ready ").await, Some(0.0));
    std::fs::rename(wd.path("deploy/moved"), wd.path("deploy/local")).unwrap();
    assert_eq!(get(&server, "/readyz").await.0, 200);
    assert!(server.terminate().success());
}

/// SIGTERM while 20 feedback batches of 200 events are being sent: every batch the server
/// answered was recorded in full before the answer, the audit log verifies, the exit is clean.
#[tokio::test]
async fn sigterm_finishes_what_is_in_flight_and_exits_clean() {
    let wd = Workdir::new();
    let server = wd.serve();
    let url = format!("{}/v1/feedback", server.url);
    let client = reqwest::Client::new();
    let line = |i: usize| {
        format!(
            r#"{{"id":"t-{i}","service":"model-service","namespace":"sms-app","version":"v1","time":"2026-11-24T20:00:00Z","kind":"outcome","success":true}}"#
        )
    };
    let batch = |b: usize| (0..200).map(|i| line(b * 200 + i)).collect::<Vec<_>>().join("\n");
    let sends: Vec<_> = (0..20)
        .map(|b| {
            let req = client.post(&url).header("content-type", "application/x-ndjson").body(batch(b));
            tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let pid = server.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let mut answered = 0;
    for s in sends {
        if let Ok(Ok(status)) = s.await {
            assert_eq!(status, 200, "an accepted request is answered in full");
            answered += 1;
        }
    }
    assert!(server.terminate().success());
    let out = wd.cli(&["audit", "query", "--outcome", "received", "--format", "json"]);
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let received = per_alert(lines).len();
    assert!(received >= answered * 200, "{received} recorded, {answered} batches of 200 answered");
    let out = wd.cli(&["audit", "verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
