//! `backstop serve` as a process: the README's demo, restarts and shutdown.

use crate::support::backstop::{Workdir, repo};

const FIRING: &str = include_str!("../../fixtures/alertmanager/firing.json");

fn json_lines(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test]
async fn readme_demo_rolls_back_the_manifest_and_the_audit_trail_verifies() {
    let wd = Workdir::new();
    let before = wd.read("deploy/local/model-service.yaml");
    let server = wd.serve();
    let (status, body) = server.post("/v1/alertmanager", "application/json", FIRING).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["outcome"], "applied");
    let after = wd.read("deploy/local/model-service.yaml");
    assert_ne!(before, after);
    assert!(after.contains("weight: 100 # stable"), "{after}");
    assert!(after.contains("weight: 0 # canary"), "{after}");

    let out = wd.cli(&["audit", "query", "--outcome", "applied", "--format", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let applied = json_lines(&out.stdout);
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0]["target"], "sms-app/model-service");
    assert_eq!(applied[0]["rule"], "canary-high-error-rate");

    // What the README shows: the answer (but for the action's id), the duplicate's answer, the
    // trail's rows (kind, rule, target, reason) and the verify line.
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let demo = &readme[readme.find("## The demo").unwrap()..readme.find("## Pointing it at Alertmanager").unwrap()];
    // The lines of the code block that opens with `opening` (its fence line included).
    let block = |opening: &str| -> Vec<&str> {
        let start = demo.find(opening).unwrap_or_else(|| panic!("README demo: `{opening}`")) + opening.len();
        demo[start..][..demo[start..].find("```").unwrap()].lines().collect()
    };
    let mut shown: serde_json::Value = serde_json::from_str(block("/v1/alertmanager\n```\n```json\n")[0]).unwrap();
    let action_id = body["results"][0]["action_id"].as_str().unwrap().to_string();
    shown["results"][0]["action_id"] = action_id.clone().into();
    assert_eq!(body, shown, "the README shows the answer as it is");
    let (_, again) = server.post("/v1/alertmanager", "application/json", FIRING).await;
    assert_eq!(again["results"][0]["outcome"], "noop");
    let duplicate = format!("duplicate delivery: this alert was already handled by action {action_id}");
    assert_eq!(again["results"][0]["reason"], duplicate.as_str());
    assert!(
        demo.contains("`\"outcome\":\"noop\"` with `\"reason\":\"duplicate delivery: this alert was already handled")
    );

    let out = wd.cli(&["audit", "tail", "-n", "10"]);
    let table = String::from_utf8_lossy(&out.stdout);
    // Kind, rule, target; then the reason, after the id.
    let columns = |row: &str| -> (Vec<String>, String) {
        let words: Vec<&str> = row.split_whitespace().collect();
        let fixed = words[2..5].iter().map(|w| w.to_string()).collect();
        let reason = words.get(6..).map(|w| w.join(" ")).unwrap_or_default();
        (fixed, reason)
    };
    let readme_rows: Vec<_> = block("-- audit tail\n```\n```\n").into_iter().map(columns).collect();
    let rows: Vec<_> = table.lines().map(columns).collect();
    assert_eq!(rows.len(), readme_rows.len(), "{table}");
    for (row, shown) in rows.iter().zip(&readme_rows) {
        assert_eq!(row.0, shown.0, "{table}");
        assert_eq!(row.1.replace(&action_id, "ID"), shown.1.replace("01a20f31-1f7c-7114-81fd-8a62217cdf48", "ID"));
    }

    let status = server.terminate();
    assert!(status.success(), "SIGTERM is a clean exit: {status:?}");
    let out = wd.cli(&["audit", "verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let verified = String::from_utf8_lossy(&out.stdout);
    let shown = demo.split("# ok: ").nth(1).unwrap().split("; …").next().unwrap();
    assert!(verified.starts_with(&format!("ok: {shown}; last hash ")), "README: {shown}\nverify: {verified}");
}

#[tokio::test]
async fn a_restart_remembers_handled_alerts() {
    let wd = Workdir::new();
    let server = wd.serve();
    let (_, body) = server.post("/v1/alertmanager", "application/json", FIRING).await;
    assert_eq!(body["results"][0]["outcome"], "applied");
    assert!(server.terminate().success());
    // Someone puts the weights back by hand (say, after fixing the canary)...
    let path = wd.path("deploy/local/model-service.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("weight: 100 # stable", "weight: 90 # stable")
        .replace("weight: 0 # canary", "weight: 10 # canary");
    std::fs::write(&path, text).unwrap();
    // ...and Alertmanager redelivers the same alert after backstop restarted: no second action.
    let server = wd.serve();
    let (status, body) = server.post("/v1/alertmanager", "application/json", FIRING).await;
    assert_eq!(status, 200);
    assert_eq!(body["results"][0]["outcome"], "noop", "{body}");
    assert!(wd.read("deploy/local/model-service.yaml").contains("weight: 90 # stable"));
}

#[tokio::test]
async fn cli_controls_reach_the_running_server() {
    let wd = Workdir::new();
    let server = wd.serve();
    let out = wd.cli(&[
        "pause",
        "--target",
        "sms-app/model-service",
        "--reason",
        "deploy freeze",
        "--actor",
        "dave",
        "--server",
        &server.url,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, body) = server.post("/v1/alertmanager", "application/json", FIRING).await;
    assert_eq!(body["results"][0]["outcome"], "held");
    let out = wd.cli(&["resume", "--target", "sms-app/model-service", "--reason", "over", "--server", &server.url]);
    assert!(out.status.success());
    let out = wd.cli(&[
        "act",
        "canary-high-error-rate",
        "--target",
        "sms-app/model-service",
        "--reason",
        "kill switch",
        "--server",
        &server.url,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"], "applied");
    let action = report["action_id"].as_str().unwrap();
    let out = wd.cli(&["undo", action, "--reason", "back to the canary", "--server", &server.url]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(wd.read("deploy/local/model-service.yaml").contains("weight: 10 # canary"));
    let out = wd.cli(&["audit", "query", "--outcome", "control", "--format", "json"]);
    let controls = json_lines(&out.stdout);
    assert_eq!(controls.len(), 4, "pause, resume, act, undo: {controls:?}");
    assert_eq!(controls[0]["actor"], "dave");
}

#[tokio::test]
async fn bad_requests_get_clear_errors_from_the_process() {
    let wd = Workdir::new();
    let server = wd.serve();
    let (status, body) = server.post("/v1/alertmanager", "application/json", "{\"alerts\": [}").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["line"], 1);
    let (status, _) = server.post("/v1/alertmanager", "text/plain", FIRING).await;
    assert_eq!(status, 415);
    let big = vec![b' '; (1 << 20) + 1];
    let (status, _) = server.post("/v1/alertmanager", "application/json", big).await;
    assert_eq!(status, 413);
    let out = wd.cli(&["audit", "query", "--outcome", "rejected", "--format", "json"]);
    assert_eq!(json_lines(&out.stdout).len(), 3);
    let _ = repo("");
}

/// `audit tail --follow`: the last records from the server, then each new one as it is recorded
/// (the server's `GET /v1/audit/stream`), and on after the server restarts.
#[tokio::test(flavor = "multi_thread")]
async fn audit_tail_follow_prints_records_as_they_are_recorded_and_across_a_server_restart() {
    use std::io::{BufRead, BufReader};
    let wd = Workdir::new();
    let server = wd.serve();
    let (status, _) = server.post("/v1/alertmanager", "application/json", FIRING).await;
    assert_eq!(status, 200);
    let port = server.url.rsplit(':').next().unwrap().to_string();
    let mut child = std::process::Command::new(crate::support::backstop::BIN)
        .arg("--config")
        .arg(wd.config())
        .args(["audit", "tail", "--follow", "-n", "2", "--format", "json", "--server", &server.url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(serde_json::from_str::<serde_json::Value>(&line).unwrap());
        }
    });
    let next = || rx.recv_timeout(std::time::Duration::from_secs(10)).expect("a record printed");
    let (first, second) = (next(), next());
    assert_eq!((first["kind"].as_str(), second["kind"].as_str()), (Some("decided"), Some("applied")));
    // Recorded after it started: printed as it happens.
    server.post("/v1/alertmanager", "application/json", FIRING).await;
    let live: Vec<serde_json::Value> = (0..3).map(|_| next()).collect();
    assert_eq!(live.iter().map(|r| r["kind"].as_str().unwrap()).collect::<Vec<_>>(), ["received", "matched", "noop"]);
    assert_eq!(live[0]["seq"], second["seq"].as_u64().unwrap() + 1, "nothing skipped");
    // The server restarts on the same port: the follower picks up after the last record it printed.
    drop(server);
    let server = wd.serve_on(&format!("127.0.0.1:{port}"), &[]);
    server.post("/v1/alertmanager", "application/json", FIRING).await;
    let after: Vec<serde_json::Value> = (0..3).map(|_| next()).collect();
    assert_eq!(after[0]["seq"], live[2]["seq"].as_u64().unwrap() + 1, "{after:?}");
    let _ = child.kill();
    let _ = child.wait();
}
