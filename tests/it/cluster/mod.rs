//! Cluster mode with real processes: three `backstop serve` replicas, tansu as the broker of the
//! replicated audit log, and the API emulator holding both the Lease and the VirtualService they
//! protect. One leads and acts; the others follow, say so in `/readyz`, refuse intake naming the
//! leader, and keep a byte-identical copy of the audit log; a kill -9 of the leader hands over to
//! a follower that starts from the same state (an alert it already handled is not acted on again).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::Rng;
use crate::support::backstop::{Server, Workdir, eventually, per_alert, repo};
use crate::support::kube::KubeEmulator;
use crate::support::tansu::Tansu;

const FIRING: &str = include_str!("../../../fixtures/alertmanager/firing.json");
const VS: (&str, &str, &str, &str) = ("networking.istio.io/v1", "VirtualService", "sms-app", "model-service");

struct Replica {
    name: String,
    wd: Workdir,
    server: Option<Server>,
    /// SIGSTOPped: alive, but answers nothing.
    stopped: bool,
}

impl Replica {
    fn audit_dir(&self) -> PathBuf {
        self.wd.path("data/audit")
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    fn start(&mut self) {
        self.server = Some(self.wd.serve());
    }

    fn signal(&mut self, signal: &str) {
        let pid = self.server().child.id().to_string();
        assert!(std::process::Command::new("kill").args([signal, &pid]).status().unwrap().success());
        self.stopped = signal == "-STOP";
    }

    /// SIGKILL: no release of the Lease, no last snapshot, nothing flushed but what was synced.
    fn kill(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }
}

struct Cluster {
    emu: KubeEmulator,
    broker: Tansu,
    /// The topics the leader consumes: alerts, feedback.
    topics: (String, String),
    replicas: Vec<Replica>,
}

async fn readyz(server: &Server) -> Option<(u16, String)> {
    let resp = reqwest::Client::new()
        .get(format!("{}/readyz", server.url))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()?;
    Some((resp.status().as_u16(), resp.text().await.ok()?))
}

impl Cluster {
    /// The emulator with the demo's VirtualService, tansu with the topics, and `n` replicas'
    /// work directories (not started).
    async fn new(n: usize) -> Option<Cluster> {
        Cluster::with(n, |_| {}).await
    }

    /// The same, with `setup` applied to each replica's work directory (its rules).
    async fn with(n: usize, setup: impl Fn(&Workdir)) -> Option<Cluster> {
        Cluster::on(Tansu::try_start().await?, n, setup).await
    }

    /// The same, on a given broker.
    async fn on(broker: Tansu, n: usize, setup: impl Fn(&Workdir)) -> Option<Cluster> {
        let run = uuid::Uuid::now_v7().simple().to_string();
        let (log, alerts, feedback) = (format!("audit-log-{run}"), format!("alerts-{run}"), format!("feedback-{run}"));
        broker.create_topics(&[&log, &alerts, &feedback]).await;
        let emu = KubeEmulator::with_demo().await;
        let replicas = (0..n)
            .map(|i| {
                let wd = Workdir::new();
                let kc = emu.write_kubeconfig(wd.dir.path());
                let name = format!("backstop-{i}");
                emu.seed(serde_json::json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": "backstop", "labels": {"app": "backstop"}},
                    "spec": {"containers": [{"name": "backstop", "image": "backstop"}]}
                }));
                let config = std::fs::read_to_string(repo("backstop.yaml"))
                    .unwrap()
                    .replace(
                        "target:\n  manifests:\n    dir: deploy/local\n",
                        &format!("target:\n  kubernetes:\n    kubeconfig: {}\n    request_timeout: 1s\n", kc.display()),
                    )
                    .replace("action_timeout: 10s", "action_timeout: 2s")
                    + &format!(
                        "\nkafka:\n  brokers: {brokers}\n  group_id: backstop-{run}\n  alerts_topic: {alerts}\n  feedback_topic: {feedback}\n\
                         cluster:\n  identity: {name}\n  namespace: backstop\n  lease: backstop-{run}\n  lease_duration: 3s\n  renew_every: 500ms\n  margin: 1s\n  log_topic: {log}\n  pod: {name}\n  kubeconfig: {kc}\n",
                        brokers = broker.brokers(),
                        kc = kc.display()
                    );
                assert!(config.contains("kubernetes:"), "the config's target section changed; update this test");
                std::fs::write(wd.config(), config).unwrap();
                setup(&wd);
                Replica { name, wd, server: None, stopped: false }
            })
            .collect();
        Some(Cluster { emu, broker, topics: (alerts, feedback), replicas })
    }

    /// Wait until one running replica is the leader and every other running one follows it;
    /// the leader's index.
    async fn settled(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leader = None;
            let mut followers = Vec::new();
            for (i, r) in self.replicas.iter().enumerate() {
                let Some(s) = r.server.as_ref().filter(|_| !r.stopped) else { continue };
                match readyz(s).await {
                    Some((200, body)) if body.trim() == "ready: leader" => leader = Some(i),
                    Some((200, body)) => followers.push(body.trim().to_string()),
                    _ => {}
                }
            }
            let running = self.replicas.iter().filter(|r| r.server.is_some() && !r.stopped).count();
            if let Some(l) = leader {
                let name = &self.replicas[l].name;
                if followers.len() + 1 == running
                    && followers.iter().all(|f| *f == format!("ready: follower of {name}"))
                {
                    return l;
                }
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .replicas
                    .iter()
                    .filter_map(|r| r.server.as_ref().map(|s| format!("--- {}\n{}", r.name, s.log())))
                    .collect();
                panic!("no settled leader: leader {leader:?}, followers {followers:?}\n{}", logs.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn weights(&self) -> Vec<u64> {
        let vs = self.emu.get(VS.0, VS.1, VS.2, VS.3).unwrap();
        vs["spec"]["http"][0]["route"].as_array().unwrap().iter().map(|d| d["weight"].as_u64().unwrap_or(0)).collect()
    }

    /// The replicas whose Pod says it leads.
    fn labelled_leaders(&self) -> Vec<String> {
        self.replicas
            .iter()
            .filter(|r| {
                let pod = self.emu.get("v1", "Pod", "backstop", &r.name).unwrap();
                pod["metadata"]["labels"]["backstop.io/leader"] == "true"
            })
            .map(|r| r.name.clone())
            .collect()
    }

    fn patches(&self) -> usize {
        self.emu.requests().into_iter().filter(|r| r.method == "PATCH" && r.path.contains("virtualservices")).count()
    }
}

/// Deliver the firing alert.
async fn fire(server: &Server) -> (u16, Value) {
    server.post("/v1/alertmanager", "application/json", FIRING.to_string()).await
}

impl Cluster {
    /// Every replica's log becomes `leader`'s, byte for byte (and verifies, with `verify`).
    async fn assert_copies(&self, leader: usize, verify: bool) {
        let want = self.replicas[leader].audit_dir();
        for r in &self.replicas {
            let dir = r.audit_dir();
            // A follower catches up from the broker; on a loaded machine after a broker restart
            // its consumer may take a while to reconnect (librdkafka backs off up to 10 s).
            let same = eventually(Duration::from_secs(60), || (segments(&dir) == segments(&want)).then_some(())).await;
            if same.is_none() {
                // What differs, and what the replica said: enough to tell a slow follower from a
                // diverging one.
                let sizes = |d: &Path| -> Vec<(String, usize, usize)> {
                    segments(d)
                        .into_iter()
                        .map(|(n, b)| (n, b.len(), b.iter().filter(|&&c| c == b'\n').count()))
                        .collect()
                };
                let tail = |r: &Replica| {
                    let log = r.server.as_ref().map(Server::log).unwrap_or_default();
                    let lines: Vec<&str> = log.lines().collect();
                    lines[lines.len().saturating_sub(30)..].join("\n")
                };
                panic!(
                    "{} differs from {}'s log\n{} (segment, bytes, lines): {:?}\n{}: {:?}\n--- {}'s log, last lines:\n{}",
                    r.name,
                    self.replicas[leader].name,
                    r.name,
                    sizes(&dir),
                    self.replicas[leader].name,
                    sizes(&want),
                    r.name,
                    tail(r)
                );
            }
            if verify {
                let out = r.wd.cli(&["audit", "verify"]);
                assert!(out.status.success(), "{}: {}", r.name, String::from_utf8_lossy(&out.stderr));
            }
        }
    }
}

/// Every segment's name and bytes, in order.
fn segments(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().to_string()).collect())
        .unwrap_or_default();
    names.retain(|n: &String| n.starts_with("seg-") && n.ends_with(".jsonl"));
    names.sort();
    names.into_iter().map(|n| (n.clone(), std::fs::read(dir.join(&n)).unwrap())).collect()
}

fn records(dir: &Path) -> Vec<Value> {
    segments(dir)
        .iter()
        .flat_map(|(_, b)| String::from_utf8(b.clone()).unwrap().lines().map(str::to_string).collect::<Vec<_>>())
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect()
}

/// `n` request outcomes alternating v1 and v2 (seeded): v1 fails one time in fifty, the canary
/// v2 one time in three.
fn outcomes(seed: u64, n: usize) -> Vec<String> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|i| {
            let canary = i % 2 == 1;
            let success = rng.uniform() >= if canary { 1.0 / 3.0 } else { 0.02 };
            serde_json::json!({"service": "model-service", "namespace": "sms-app",
                "version": if canary { "v2" } else { "v1" }, "time": chrono::Utc::now(),
                "kind": "outcome", "success": success})
            .to_string()
        })
        .collect()
}

/// Post `events` one per request to whichever replica leads, killing the leader once `kill_after`
/// have been acknowledged (None: never); the audit log of the replica that leads at the end.
async fn stream_feedback(events: &[String], kill_after: Option<usize>) -> (Vec<Value>, usize) {
    let mut cluster = Cluster::new(3).await.expect("tansu");
    for r in &mut cluster.replicas {
        r.start();
    }
    let mut leader = cluster.settled(Duration::from_secs(60)).await;
    for (i, event) in events.iter().enumerate() {
        if Some(i) == kill_after {
            assert_eq!(cluster.patches(), 0, "acted before the kill: move the kill earlier");
            cluster.replicas[leader].kill();
            leader = cluster.settled(Duration::from_secs(60)).await;
        }
        let (status, body) =
            cluster.replicas[leader].server().post("/v1/feedback", "application/x-ndjson", event.clone()).await;
        assert_eq!((status, &body["received"]), (200, &Value::from(1)), "event {i}: {body}");
    }
    assert_eq!(cluster.weights(), [100, 0], "the canary was rolled back");
    (records(&cluster.replicas[leader].audit_dir()), cluster.patches())
}

/// Whichever replica answers `ready: leader` now.
async fn leader_now(cluster: &Cluster) -> Option<usize> {
    for (i, r) in cluster.replicas.iter().enumerate() {
        if let Some(s) = r.server.as_ref().filter(|_| !r.stopped)
            && let Some((200, body)) = readyz(s).await
            && body.trim() == "ready: leader"
        {
            return Some(i);
        }
    }
    None
}

mod feedback;
mod join;
mod stream;
mod takeover;
