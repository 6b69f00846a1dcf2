//! Faults through the real binary: a full audit disk and a read-only one (a real tmpfs, mounted by
//! the test), kill -9 at random moments while alerts and feedback stream in, and an alert storm
//! on one target.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::support::backstop::{Server, Workdir, per_alert, repo};

const FIRING: &str = include_str!("../../fixtures/alertmanager/firing.json");
const UNRELATED: &str = include_str!("../../fixtures/alertmanager/unrelated.json");

/// A small tmpfs of our own, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `path`; None (and why) where this machine does not let us.
    fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Tmpfs { path: path.to_path_buf() })
    }

    fn remount(&self, mode: &str) {
        let out = Command::new("mount").args(["-o", &format!("remount,{mode}")]).arg(&self.path).output().unwrap();
        assert!(out.status.success(), "remount {mode}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn config_with_data_dir(data_dir: &Path, extra: &str) -> String {
    let base = std::fs::read_to_string(repo("backstop.yaml")).unwrap();
    let base = base.replace("data_dir: data", &format!("data_dir: {}", data_dir.display()));
    format!("{base}\n{extra}")
}

async fn get(server: &Server, path: &str) -> u16 {
    reqwest::get(format!("{}{path}", server.url)).await.map(|r| r.status().as_u16()).unwrap_or(0)
}

/// Fill the file system at `dir` until it refuses (ENOSPC).
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let ballast = dir.join("ballast");
    let mut f = std::fs::File::create(&ballast).unwrap();
    let chunk = vec![0u8; 16 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    ballast
}

fn query(wd: &Workdir, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit", "query", "--format", "json", "--limit", "1000000"];
    all.extend_from_slice(args);
    let out = wd.cli(&all);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    per_alert(String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect())
}

fn assert_verifies(wd: &Workdir) {
    let out = wd.cli(&["audit", "verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_audit_disk_answers_503_and_recovers_by_itself_and_a_read_only_one_is_refused_at_start() {
    let scratch = tempfile::tempdir().unwrap();
    let fs = match Tmpfs::mount(&scratch.path().join("disk"), "2m") {
        Ok(fs) => fs,
        Err(why) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: cannot mount a tmpfs here ({why}); CI runs this as root");
            return;
        }
        Err(why) => panic!("cannot mount a tmpfs: {why}"),
    };
    let wd = Workdir::with_config(&config_with_data_dir(&fs.path.join("data"), ""));
    let server = wd.serve();
    let (status, _) = server.post("/v1/alertmanager", "application/json", UNRELATED.to_string()).await;
    assert_eq!(status, 200);

    // Disk full.
    let ballast = fill(&fs.path);
    // What is left of the segment's last page still takes a record or two.
    let mut filler = 0;
    loop {
        let body = UNRELATED.replace("3c235e13b95e4202", &format!("{filler:016x}"));
        let (status, _) = server.post("/v1/alertmanager", "application/json", body).await;
        if status == 503 {
            break;
        }
        filler += 1;
        assert!(filler < 50, "the disk never filled up");
    }
    let (status, body) = server.post("/v1/alertmanager", "application/json", FIRING.to_string()).await;
    assert_eq!(status, 503, "{body}");
    let msg = body["error"]["message"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains("audit log unavailable") && msg.contains("No space left on device"), "{body}");
    assert_eq!(wd.canary_weight(), 10, "nothing acted on an alert that was not recorded");
    assert_eq!(get(&server, "/readyz").await, 503);
    // Space returns; no input arrives: the log and readiness come back by themselves.
    std::fs::remove_file(&ballast).unwrap();
    let mut ok = false;
    for _ in 0..50 {
        if get(&server, "/readyz").await == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "not ready again after space returned; log:\n{}", server.log());
    // Alertmanager's retry now goes through.
    let (status, body) = server.post("/v1/alertmanager", "application/json", FIRING.to_string()).await;
    assert_eq!((status, body["results"][0]["outcome"].as_str()), (200, Some("applied")), "{body}");
    assert_eq!(wd.canary_weight(), 0);

    assert!(server.terminate().success());

    // Read-only at start (a volume mounted read-only): refused with the reason, not half-run.
    // (Read-only while running, as after errors=remount-ro, is the same write error path as a
    // full disk above; a remount cannot be forced here while the log's files are open.)
    fs.remount("ro");
    let out = Command::new("timeout")
        .args(["20", crate::support::backstop::BIN, "--config"])
        .arg(wd.config())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && out.status.code() != Some(124), "started on a read-only disk: {stderr}");
    assert!(stderr.contains("Read-only file system") && stderr.contains("audit"), "{stderr}");
    fs.remount("rw");
    let server = wd.serve();
    assert_eq!(get(&server, "/readyz").await, 200);
    assert!(server.terminate().success());

    assert_verifies(&wd);
    let recovered: Vec<Value> = query(&wd, &["--outcome", "control"])
        .into_iter()
        .filter(|r| r["detail"]["control"] == "audit-recovered")
        .collect();
    // On a nearly full disk a small record may still fit between failures: at least one.
    assert!(!recovered.is_empty(), "the outage is recorded once it is over");
    assert!(recovered[0]["detail"]["first_error"].as_str().unwrap().contains("No space left"), "{recovered:?}");
    let received = query(&wd, &["--outcome", "received"]);
    let firing = received.iter().filter(|r| r["detail"]["alert"]["fingerprint"] == "a9c5c3b76558e44d").count();
    assert_eq!(firing, 1, "the refused delivery left nothing behind; the retry was recorded once");
    assert_eq!(query(&wd, &["--outcome", "applied"]).len(), 1);
}

/// Alerts (each its own) and feedback batches stream in from two tasks; the process is killed
/// (SIGKILL) at a random moment, restarted, killed again, many times. After each restart the
/// log verifies, every acknowledged alert and feedback event is in it exactly once, and the
/// canary was rolled back at most once over all the runs.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_moments_while_alerts_and_feedback_stream_in_loses_nothing_acknowledged() {
    let wd = Workdir::new();
    let mut seed: u64 = 0x5eed_0bad_cafe;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut acked_alerts: HashSet<String> = HashSet::new();
    let mut acked_feedback: HashSet<String> = HashSet::new();
    let rounds = 8;
    for round in 0..rounds {
        let server = wd.serve();
        let url = server.url.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let alerts = tokio::spawn({
            let (url, stop) = (url.clone(), stop.clone());
            async move {
                let client = reqwest::Client::new();
                let mut acked = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let fp = format!("{round:04x}{i:012x}");
                    // The canary alert now and then, among unrelated ones.
                    let body = if i % 25 == 7 {
                        FIRING.replace("a9c5c3b76558e44d", &fp)
                    } else {
                        UNRELATED.replace("3c235e13b95e4202", &fp)
                    };
                    let sent = client
                        .post(format!("{url}/v1/alertmanager"))
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status() == 200 => acked.push(fp),
                        Ok(r) => panic!("alert {fp}: {}", r.status()),
                        Err(_) => break,
                    }
                    i += 1;
                }
                acked
            }
        });
        let feedback = tokio::spawn({
            let (url, stop) = (url.clone(), stop.clone());
            async move {
                let client = reqwest::Client::new();
                let mut acked = Vec::new();
                let mut b = 0;
                while !stop.load(Ordering::Relaxed) {
                    let ids: Vec<String> = (0..20).map(|j| format!("r{round}-b{b}-e{j}")).collect();
                    let time = chrono::Utc::now().to_rfc3339();
                    let lines: Vec<String> = ids
                        .iter()
                        .enumerate()
                        .map(|(j, id)| {
                            let version = if j % 2 == 0 { "v1" } else { "v2" };
                            format!(
                                r#"{{"service":"model-service","namespace":"sms-app","version":"{version}","time":"{time}","kind":"satisfaction","satisfied":true,"id":"{id}"}}"#
                            )
                        })
                        .collect();
                    let sent = client
                        .post(format!("{url}/v1/feedback"))
                        .header("content-type", "application/x-ndjson")
                        .body(lines.join("\n"))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status() == 200 => acked.extend(ids),
                        Ok(r) => panic!("feedback batch {b}: {}", r.status()),
                        Err(_) => break,
                    }
                    b += 1;
                }
                acked
            }
        });
        tokio::time::sleep(Duration::from_millis(150 + rand(600))).await;
        drop(server); // SIGKILL
        stop.store(true, Ordering::Relaxed);
        acked_alerts.extend(alerts.await.unwrap());
        acked_feedback.extend(feedback.await.unwrap());
    }
    // A last clean start finishes anything pending, then stops.
    let server = wd.serve();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(server.terminate().success());
    assert_verifies(&wd);

    let received = query(&wd, &["--outcome", "received"]);
    let mut alerts_seen = HashSet::new();
    let mut feedback_seen = HashSet::new();
    for r in &received {
        if let Some(fp) = r["detail"]["alert"]["fingerprint"].as_str() {
            assert!(alerts_seen.insert(fp.to_string()) || !acked_alerts.contains(fp), "alert {fp} recorded twice");
        }
        if let Some(id) = r["detail"]["feedback"]["id"].as_str() {
            assert!(feedback_seen.insert(id.to_string()), "feedback {id} recorded twice");
        }
    }
    let lost_alerts: Vec<_> = acked_alerts.iter().filter(|fp| !alerts_seen.contains(*fp)).collect();
    let lost_feedback: Vec<_> = acked_feedback.iter().filter(|id| !feedback_seen.contains(*id)).collect();
    assert!(lost_alerts.is_empty(), "acknowledged alerts missing: {lost_alerts:?}");
    assert!(
        lost_feedback.is_empty(),
        "acknowledged feedback missing: {} of {}",
        lost_feedback.len(),
        acked_feedback.len()
    );
    assert!(acked_alerts.len() > rounds, "the test sent too little: {} alerts", acked_alerts.len());
    assert!(acked_feedback.len() > rounds * 20, "the test sent too little: {} feedback", acked_feedback.len());
    let applied = query(&wd, &["--outcome", "applied"]);
    assert_eq!(applied.len(), 1, "the canary is rolled back once over all the runs: {applied:?}");
    assert_eq!(wd.canary_weight(), 0);
    eprintln!(
        "{rounds} kills: {} alerts and {} feedback events acknowledged, all recorded once; 1 action",
        acked_alerts.len(),
        acked_feedback.len()
    );
}

/// Two thousand distinct alerts for one target within seconds, from 16 senders: one action; the
/// rest held by the cooldown, every one recorded.
#[tokio::test(flavor = "multi_thread")]
async fn an_alert_storm_on_one_target_leads_to_one_action() {
    let wd = Workdir::new();
    let server = wd.serve();
    let url = server.url.clone();
    let n = 2000;
    let mut tasks = tokio::task::JoinSet::new();
    for sender in 0..16 {
        let url = url.clone();
        tasks.spawn(async move {
            let client = reqwest::Client::new();
            let mut outcomes = Vec::new();
            for i in (sender..n).step_by(16) {
                let fp = format!("{i:016x}");
                let body = FIRING.replace("a9c5c3b76558e44d", &fp);
                let r = client
                    .post(format!("{url}/v1/alertmanager"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let body: Value = r.json().await.unwrap();
                outcomes.push(body["results"][0]["outcome"].as_str().unwrap().to_string());
            }
            outcomes
        });
    }
    let mut outcomes = Vec::new();
    while let Some(r) = tasks.join_next().await {
        outcomes.extend(r.unwrap());
    }
    assert!(server.terminate().success());
    let count = |o: &str| outcomes.iter().filter(|x| *x == o).count();
    assert_eq!(outcomes.len(), n);
    assert_eq!(count("applied"), 1, "one action for the storm");
    assert_eq!(count("held"), n - 1, "every other alert held by the cooldown: {:?}", &outcomes[..10]);
    assert_eq!(wd.canary_weight(), 0);
    assert_eq!(query(&wd, &["--outcome", "received"]).len(), n, "every alert of the storm recorded");
    // Held while the first action was under way, then by the rule's cooldown.
    let held = query(&wd, &["--outcome", "held"]);
    let why = |r: &Value| r["reason"].as_str().unwrap_or_default().to_string();
    let other: Vec<String> =
        held.iter().map(why).filter(|r| !r.starts_with("cooldown") && !r.ends_with("is under way")).take(3).collect();
    assert!(other.is_empty(), "held for another reason: {other:?}");
    assert!(held.iter().any(|r| why(r).starts_with("cooldown")));
    assert_verifies(&wd);
}

/// Prometheus is down (nothing listens on its port): a rule that confirms holds by default and
/// says why, within the confirmation's timeout; with `on_error: act` it acts. Alerts for other
/// rules are not held up.
#[tokio::test(flavor = "multi_thread")]
async fn prometheus_down_holds_a_confirming_rule_within_its_timeout_or_acts_when_told_to() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    for (on_error, expect) in [("hold", "held"), ("act", "applied")] {
        let config = std::fs::read_to_string(repo("backstop.yaml")).unwrap()
            + &format!("\nprometheus:\n  url: http://127.0.0.1:{port}\n  timeout: 1s\n");
        let wd = Workdir::with_config(&config);
        std::fs::remove_file(wd.path("rules/feedback.yaml")).unwrap();
        let rules = wd.read("rules/canary.yaml").replacen(
            "    cooldown: 15m\n",
            &format!(
                "    cooldown: 15m\n    confirm:\n      query: sum(rate(errors[1m]))\n      above: 0.05\n      timeout: 2s\n      on_error: {on_error}\n"
            ),
            1,
        );
        std::fs::write(wd.path("rules/canary.yaml"), rules).unwrap();
        let server = wd.serve();
        let started = std::time::Instant::now();
        let (status, body) = server.post("/v1/alertmanager", "application/json", FIRING.to_string()).await;
        assert_eq!(status, 200, "{body}");
        let result = &body["results"][0];
        assert_eq!(result["outcome"], expect, "on_error {on_error}: {body}");
        assert!(started.elapsed() < Duration::from_secs(10), "bounded by the confirmation's timeout");
        if on_error == "hold" {
            let reason = result["reason"].as_str().unwrap();
            assert!(reason.contains("Prometheus") || reason.contains("prometheus"), "{reason}");
            assert_eq!(wd.canary_weight(), 10);
            let held = query(&wd, &["--outcome", "held"]);
            assert!(held[0]["detail"]["confirmation"]["error"].is_string(), "{held:?}");
        } else {
            assert_eq!(wd.canary_weight(), 0);
        }
        assert!(server.terminate().success());
    }
}
