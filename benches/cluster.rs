//! Cluster mode with real processes (docs/cluster.md), measured in one run on one machine:
//!
//!   cargo bench --bench cluster   (BENCH_KILLS=100, BENCH_SECONDS=5; about 10 minutes)
//!
//! Three replicas of the release binary (`backstop serve`), tansu as the broker of the replicated
//! audit log, the project's Kubernetes API emulator (tests/it/support/kube.rs) holding the Lease,
//! a Pod per replica and the demo's VirtualService; the config is the one of tests/it/cluster/
//! (lease 3 s, renewed every 500 ms, acted on until 1 s before it ends).
//!
//! 1. Intake: `POST /v1/alertmanager` of Alertmanager v4 payloads of 1 and of 50 alerts no rule
//!    matches, 64 keep-alive connections (the client of benches/load/) for BENCH_SECONDS after
//!    1 s of warm-up, against (a) one `backstop serve` with the same Kafka config and no `cluster:`
//!    block and (b) the leader of three replicas (every batch produced to the log topic with
//!    acks=all before the answer). Reported: req/s and the ratio cluster / single.
//! 2. Follower lag under that load: every 100 ms the last seq of the leader's newest audit
//!    segment against each follower's, and every second each follower's
//!    `backstop_replication_lag_messages` (which the replica measures every second); then, from the
//!    end of the load, the time until every follower's segments are the leader's byte for byte.
//! 3. Takeover over BENCH_KILLS kill -9s of the leader (a fresh cluster): an alert acted on first;
//!    then, each time, after a random delay within the 500 ms renewal cycle (BENCH_SEED), kill
//!    -9 of the leader, time until another replica's `GET /readyz` answers
//!    200 `ready: leader` (polled every 25 ms), restart of the killed one, wait until it follows.
//!    Reported: min, p50, p99, max of kill to ready, the p50 and p99 of the `handover_ms` of the
//!    takeover records, the writes to the VirtualService (1 expected: the alert acts once across
//!    all the takeovers), and whether the three logs end up the same bytes.
//! 4. Kafka feedback: BENCH_KAFKA_MESSAGES (100,000) outcome events (the ones of benches/load/)
//!    on the feedback topic: (a) produced, then one `backstop serve` without a `cluster:` block
//!    started on it (as in benches/load/); (b) three replicas started and settled, then
//!    produced (the leader consumes them; the producer is several times faster than the leader,
//!    and the seconds it took are reported). `backstop_events_received_total{source="kafka",
//!    outcome="accepted"}` of the server (the leader) polled every 20 ms, from the first poll that
//!    sees events to the one that sees them all. Reported: msg/s, the ratio cluster / single, and
//!    the time from the leader's last event recorded until every follower's segments are the
//!    leader's bytes.
//!
//! Phase 3 runs first, and each phase has a tansu of its own (tansu keeps its topics in memory,
//! and the intake leaves hundreds of MB there; phase 4 has one for each server). Needs tansu
//! (BACKSTOP_TANSU_BIN, on PATH or in ~/.cargo/bin); without it every phase is skipped with a
//! message. BENCH_KILLS=0 skips phase 3.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "common/intake.rs"]
mod common;
#[path = "../tests/it/support/kube.rs"]
mod kube;
#[path = "../tests/it/support/tansu.rs"]
mod tansu;

use common::*;
use kube::KubeEmulator;
use tansu::Tansu;

const BIN: &str = env!("CARGO_BIN_EXE_backstop");
const FIRING: &str = include_str!("../fixtures/alertmanager/firing.json");
const VS: (&str, &str, &str, &str) = ("networking.istio.io/v1", "VirtualService", "sms-app", "model-service");

/// What tests/it/support/mod.rs gives tansu.rs: `$env_var` if set, else the first of `names` on PATH.
fn find_binary(env_var: &str, names: &[&str]) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable =
        |p: &Path| std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false);
    if let Some(p) = std::env::var_os(env_var).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| executable(p)))
}

/// Whether tansu can be started (the same search as tansu.rs, which panics when it is missing).
fn tansu_missing() -> Option<String> {
    let installed = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/tansu")).filter(|p| p.exists());
    if find_binary("BACKSTOP_TANSU_BIN", &["tansu"]).or(installed).is_some() {
        None
    } else {
        Some("tansu is not installed (cargo install tansu --version 0.6.0 --features dynostore)".into())
    }
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn secs(d: f64) -> String {
    format!("{d:.2} s")
}

// ---------------------------------------------------------------------------------------------
// Processes

/// One `backstop serve` in a work directory of its own (backstop.yaml, rules/, deploy/local/,
/// data/), logging at info to backstop.log there; restarted on the same directory.
struct Replica {
    name: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
    addr: Option<SocketAddr>,
}

impl Replica {
    fn new(name: String, config: &str) -> Replica {
        let dir = tempfile::Builder::new().prefix("backstop-cluster-bench-").tempdir().unwrap();
        for sub in ["rules", "deploy/local"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
            for entry in std::fs::read_dir(repo(sub)).unwrap() {
                let p = entry.unwrap().path();
                std::fs::copy(&p, dir.path().join(sub).join(p.file_name().unwrap())).unwrap();
            }
        }
        std::fs::write(dir.path().join("backstop.yaml"), config).unwrap();
        Replica { name, dir, child: None, addr: None }
    }

    fn audit_dir(&self) -> PathBuf {
        self.dir.path().join("data/audit")
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }

    fn start(&mut self) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("backstop.log")).unwrap();
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(self.dir.path().join("backstop.yaml"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Read the address, then keep draining stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("backstop listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let Ok(url) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} did not start; its log:\n{}", self.name, self.log_tail());
        };
        self.addr = Some(url.trim_start_matches("http://").trim_end_matches('/').parse().unwrap());
        self.child = Some(child);
    }

    /// SIGKILL: no release of the Lease, nothing flushed but what was synced.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.addr = None;
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("backstop.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The config of tests/it/cluster/: the repository's backstop.yaml on the emulator, a Kafka
/// block, and (for a replica) a cluster block.
fn config(emu_kubeconfig: &Path, brokers: &str, run: &str, cluster: Option<&str>) -> String {
    let mut config = std::fs::read_to_string(repo("backstop.yaml"))
        .unwrap()
        .replace(
            "target:\n  manifests:\n    dir: deploy/local\n",
            &format!("target:\n  kubernetes:\n    kubeconfig: {}\n    request_timeout: 1s\n", emu_kubeconfig.display()),
        )
        .replace("action_timeout: 10s", "action_timeout: 2s")
        + &format!(
            "\nkafka:\n  brokers: {brokers}\n  group_id: backstop-{run}\n  alerts_topic: alerts-{run}\n  feedback_topic: feedback-{run}\n"
        );
    assert!(config.contains("kubernetes:"), "the repository's backstop.yaml changed; update this benchmark");
    if let Some(name) = cluster {
        config += &format!(
            "cluster:\n  identity: {name}\n  namespace: backstop\n  lease: backstop-{run}\n  lease_duration: 3s\n  \
             renew_every: 500ms\n  margin: 1s\n  log_topic: audit-log-{run}\n  pod: {name}\n  kubeconfig: {}\n",
            emu_kubeconfig.display()
        );
    }
    config
}

/// The emulator with the demo's VirtualService.
async fn emulator() -> KubeEmulator {
    KubeEmulator::with_demo().await
}

async fn topics(broker: &Tansu) -> String {
    let run = uuid::Uuid::now_v7().simple().to_string();
    let names = [format!("audit-log-{run}"), format!("alerts-{run}"), format!("feedback-{run}")];
    broker.create_topics(&names.iter().map(String::as_str).collect::<Vec<_>>()).await;
    run
}

/// One `backstop serve` without a `cluster:` block, on its own emulator and topics; ready.
async fn single(broker: &Tansu) -> (KubeEmulator, Replica) {
    let run = topics(broker).await;
    let (emu, r) = single_on(broker, &run).await;
    let url = format!("http://{}/readyz", r.addr.unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = reqwest::get(&url).await.map(|resp| resp.status().as_u16() == 200).unwrap_or(false);
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "single mode not ready within 60 s:\n{}", r.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (emu, r)
}

/// One `backstop serve` without a `cluster:` block, on its own emulator, on the topics of `run`;
/// started (listening), not waited for.
async fn single_on(broker: &Tansu, run: &str) -> (KubeEmulator, Replica) {
    let emu = emulator().await;
    let mut r = Replica::new("single".into(), "");
    let kc = emu.write_kubeconfig(r.dir.path());
    std::fs::write(r.dir.path().join("backstop.yaml"), config(&kc, &broker.brokers(), run, None)).unwrap();
    r.start();
    (emu, r)
}

struct Cluster {
    emu: KubeEmulator,
    replicas: Vec<Replica>,
    http: reqwest::Client,
}

impl Cluster {
    /// Three replicas (started), each with its Pod in the emulator, on topics of their own.
    async fn start(broker: &Tansu) -> Cluster {
        let run = topics(broker).await;
        Cluster::start_on(broker, &run).await
    }

    /// Three replicas (started), each with its Pod in the emulator, on the topics of `run`.
    async fn start_on(broker: &Tansu, run: &str) -> Cluster {
        let emu = emulator().await;
        let replicas: Vec<Replica> = (0..3)
            .map(|i| {
                let name = format!("backstop-{i}");
                emu.seed(serde_json::json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": "backstop", "labels": {"app": "backstop"}},
                    "spec": {"containers": [{"name": "backstop", "image": "backstop"}]}
                }));
                let mut r = Replica::new(name.clone(), "");
                let kc = emu.write_kubeconfig(r.dir.path());
                std::fs::write(r.dir.path().join("backstop.yaml"), config(&kc, &broker.brokers(), run, Some(&name)))
                    .unwrap();
                r.start();
                r
            })
            .collect();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
        Cluster { emu, replicas, http }
    }

    async fn readyz(&self, i: usize) -> Option<(u16, String)> {
        let addr = self.replicas[i].addr?;
        let resp = self.http.get(format!("http://{addr}/readyz")).send().await.ok()?;
        Some((resp.status().as_u16(), resp.text().await.ok()?.trim().to_string()))
    }

    /// Wait until one running replica leads and every other running one follows it; its index.
    async fn settled(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leader = None;
            let mut followers = Vec::new();
            for i in (0..self.replicas.len()).filter(|i| self.replicas[*i].running()) {
                match self.readyz(i).await {
                    Some((200, body)) if body == "ready: leader" => leader = Some(i),
                    Some((200, body)) => followers.push(body),
                    _ => {}
                }
            }
            let running = self.replicas.iter().filter(|r| r.running()).count();
            if let Some(l) = leader {
                let want = format!("ready: follower of {}", self.replicas[l].name);
                if followers.len() + 1 == running && followers.iter().all(|f| *f == want) {
                    return l;
                }
            }
            if Instant::now() > deadline {
                let logs: Vec<String> =
                    self.replicas.iter().map(|r| format!("--- {}\n{}", r.name, r.log_tail())).collect();
                panic!("no settled leader: leader {leader:?}, followers {followers:?}\n{}", logs.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn patches(&self) -> usize {
        self.emu.requests().into_iter().filter(|r| r.method == "PATCH" && r.path.contains("virtualservices")).count()
    }
}

// ---------------------------------------------------------------------------------------------
// The audit log on disk

/// The segments' names, in order.
fn segment_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().to_string()).collect())
        .unwrap_or_default();
    names.retain(|n| n.starts_with("seg-") && n.ends_with(".jsonl"));
    names.sort();
    names
}

/// Every segment's name and bytes, in order.
fn segments(dir: &Path) -> Vec<(String, Vec<u8>)> {
    segment_names(dir).into_iter().map(|n| (n.clone(), std::fs::read(dir.join(&n)).unwrap_or_default())).collect()
}

/// Every segment's name and length, in order (a cheap first comparison).
fn segment_lengths(dir: &Path) -> Vec<(String, u64)> {
    segment_names(dir)
        .into_iter()
        .map(|n| {
            let len = std::fs::metadata(dir.join(&n)).map(|m| m.len()).unwrap_or(0);
            (n, len)
        })
        .collect()
}

/// Seconds from `since` until every follower's segments are the leader's bytes (names and
/// lengths first, cheap, every 20 ms; then the bytes); None after `timeout`.
async fn caught_up(leader_dir: &Path, follower_dirs: &[PathBuf], since: Instant, timeout: Duration) -> Option<f64> {
    let deadline = since + timeout;
    loop {
        let want = segment_lengths(leader_dir);
        if follower_dirs.iter().all(|d| segment_lengths(d) == want) {
            // The segments only grow: equal bytes now, at equal lengths, were equal bytes then
            // (the comparison itself, hundreds of MB, is not counted).
            let matched = since.elapsed().as_secs_f64();
            let bytes = segments(leader_dir);
            if follower_dirs.iter().all(|d| segments(d) == bytes) && segment_lengths(leader_dir) == want {
                return Some(matched);
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn records(dir: &Path) -> Vec<Value> {
    segments(dir)
        .iter()
        .flat_map(|(_, b)| String::from_utf8_lossy(b).lines().map(str::to_string).collect::<Vec<_>>())
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}

/// The seq of the last complete line of the newest segment (lines begin `{"seq":N,`), read
/// from the file's tail; 0 when there is none.
fn last_seq(dir: &Path) -> u64 {
    let Some(newest) = segment_names(dir).pop() else { return 0 };
    let Ok(mut file) = std::fs::File::open(dir.join(newest)) else { return 0 };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut window = 64 * 1024;
    loop {
        let from = len.saturating_sub(window);
        let mut tail = Vec::new();
        if file.seek(SeekFrom::Start(from)).is_err() || file.read_to_end(&mut tail).is_err() {
            return 0;
        }
        // Only what ends in a newline is written; the line before the last newline is complete
        // if it starts after another newline (or at the start of the file).
        let Some(end) = tail.iter().rposition(|b| *b == b'\n') else {
            if from == 0 {
                return 0;
            }
            window *= 4;
            continue;
        };
        let start = match tail[..end].iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None if from == 0 => 0,
            None => {
                window *= 4;
                continue;
            }
        };
        let line = &tail[start..end];
        let digits: String = line
            .strip_prefix(b"{\"seq\":")
            .map(|rest| rest.iter().take_while(|b| b.is_ascii_digit()).map(|b| *b as char).collect())
            .unwrap_or_default();
        return digits.parse().unwrap_or(0);
    }
}

// ---------------------------------------------------------------------------------------------
// Intake, and the followers' lag under it

struct Lag {
    /// The largest (leader's last seq - a follower's last seq) seen, sampled every 100 ms.
    max_records: u64,
    samples: usize,
    /// The largest `backstop_replication_lag_messages` a follower reported (sampled every second).
    max_metric: f64,
    /// From the end of the load until every follower's segments are the leader's bytes.
    catch_up: Option<f64>,
}

/// Load on the leader of `cluster` while sampling its followers' lag; then the catch-up time.
async fn cluster_intake(
    cluster: &Cluster,
    leader: usize,
    payload: &Arc<Payload>,
    warm: Duration,
    measure: Duration,
) -> (Load, Lag) {
    let leader_dir = cluster.replicas[leader].audit_dir();
    let followers: Vec<usize> = (0..cluster.replicas.len()).filter(|i| *i != leader).collect();
    let follower_dirs: Vec<PathBuf> = followers.iter().map(|i| cluster.replicas[*i].audit_dir()).collect();
    let follower_addrs: Vec<SocketAddr> = followers.iter().filter_map(|i| cluster.replicas[*i].addr).collect();
    let stop = Arc::new(AtomicBool::new(false));
    // Seq sampling on a thread of its own (file reads), every 100 ms.
    let seq_sampler = {
        let (stop, leader_dir, follower_dirs) = (stop.clone(), leader_dir.clone(), follower_dirs.clone());
        std::thread::spawn(move || {
            let (mut max, mut n) = (0u64, 0usize);
            while !stop.load(Ordering::Relaxed) {
                let lead = last_seq(&leader_dir);
                for d in &follower_dirs {
                    max = max.max(lead.saturating_sub(last_seq(d)));
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            (max, n)
        })
    };
    let metric_sampler = {
        let (stop, http) = (stop.clone(), cluster.http.clone());
        tokio::spawn(async move {
            let mut max = 0.0f64;
            while !stop.load(Ordering::Relaxed) {
                for addr in &follower_addrs {
                    if let Ok(resp) = http.get(format!("http://{addr}/metrics")).send().await
                        && let Ok(text) = resp.text().await
                        && let Some(v) = metric_value(&text, "backstop_replication_lag_messages", &[])
                    {
                        max = max.max(v);
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            max
        })
    };
    let addr = cluster.replicas[leader].addr.unwrap();
    let load = drive(addr, payload.clone(), warm, measure).await;
    let catch_up = caught_up(&leader_dir, &follower_dirs, Instant::now(), Duration::from_secs(120)).await;
    stop.store(true, Ordering::Relaxed);
    let (max_records, samples) = seq_sampler.join().unwrap();
    let max_metric = metric_sampler.await.unwrap();
    (load, Lag { max_records, samples, max_metric, catch_up })
}

struct Intake {
    single: [Load; 2],
    cluster: [Load; 2],
    lag: [Lag; 2],
    audit_mb: f64,
}

async fn bench_intake(broker: &Tansu, warm: Duration, measure: Duration) -> Intake {
    let payloads = [Arc::new(Payload::new(&NO_RULE, 1)), Arc::new(Payload::new(&NO_RULE, 50))];
    println!("payloads: 1 alert {} bytes, 50 alerts {} bytes", payloads[0].len(), payloads[1].len());

    println!("single mode (same Kafka config, no cluster: block)...");
    let (emu, server) = single(broker).await;
    let addr = server.addr.unwrap();
    let mut single = Vec::new();
    for p in &payloads {
        let load = drive(addr, p.clone(), warm, measure).await;
        println!("  {} alert(s): {} req/s{}", p.alerts, per_s(load.rate()), load.problems());
        single.push(load);
    }
    drop(server);
    drop(emu);

    println!("cluster mode: the leader of three replicas...");
    let cluster = Cluster::start(broker).await;
    let leader = cluster.settled(Duration::from_secs(60)).await;
    println!("  leader: {}", cluster.replicas[leader].name);
    let mut loads = Vec::new();
    let mut lags = Vec::new();
    for p in &payloads {
        let (load, lag) = cluster_intake(&cluster, leader, p, warm, measure).await;
        println!(
            "  {} alert(s): {} req/s{}; follower lag max {} records ({} samples), replication_lag_messages max {}, \
             caught up {}",
            p.alerts,
            per_s(load.rate()),
            load.problems(),
            lag.max_records,
            lag.samples,
            lag.max_metric,
            lag.catch_up.map(secs).unwrap_or_else(|| "NOT within 120 s".into())
        );
        loads.push(load);
        lags.push(lag);
    }
    let audit_mb =
        segment_lengths(&cluster.replicas[leader].audit_dir()).iter().map(|(_, l)| *l).sum::<u64>() as f64 / 1e6;
    let into = |v: Vec<Load>| -> [Load; 2] { v.try_into().unwrap_or_else(|_| unreachable!()) };
    Intake {
        single: into(single),
        cluster: into(loads),
        lag: lags.try_into().unwrap_or_else(|_| unreachable!()),
        audit_mb,
    }
}

// ---------------------------------------------------------------------------------------------
// Kafka feedback

/// `backstop_events_received_total{source="kafka",outcome="accepted"}` of the server at `addr`;
/// 0 when it does not answer.
async fn kafka_accepted(http: &reqwest::Client, addr: Option<SocketAddr>) -> f64 {
    let Some(addr) = addr else { return 0.0 };
    let Ok(resp) = http.get(format!("http://{addr}/metrics")).send().await else { return 0.0 };
    let (name, labels) = KAFKA_ACCEPTED;
    resp.text().await.ok().and_then(|text| metric_value(&text, name, &labels)).unwrap_or(0.0)
}

struct Feedback {
    n: usize,
    /// Events recorded a second: one `backstop serve`, the leader of three.
    single: f64,
    cluster: f64,
    /// Seconds the producer took for the cluster's backlog (produced while the leader consumed).
    produced: f64,
    /// From the leader's last event recorded (the poll that saw it) to every follower's segments
    /// being the leader's bytes.
    catch_up: Option<f64>,
    audit_mb: f64,
}

async fn produce(brokers: String, topic: String, lines: Vec<String>) -> f64 {
    produce_backlog(&brokers, &topic, &lines).await.unwrap_or_else(|e| panic!("the backlog: {e}"))
}

async fn bench_feedback(n: usize) -> Feedback {
    let timeout = Duration::from_secs(120);
    println!("single mode (same Kafka config, no cluster: block): the backlog, then the server...");
    let single = {
        let Some(broker) = Tansu::try_start().await else { unreachable!("tansu was found") };
        let run = topics(&broker).await;
        let secs = produce(broker.brokers(), format!("feedback-{run}"), outcome_events(n)).await;
        println!("  produced {n} messages in {secs:.2} s");
        let (_emu, server) = single_on(&broker, &run).await;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
        match drain_rate(n, timeout, async || kafka_accepted(&http, server.addr).await).await {
            Ok((rate, _)) => rate,
            Err(seen) => panic!("single mode recorded {seen} of {n} in 120 s; its log:\n{}", server.log_tail()),
        }
    };
    println!("  {} msg/s", per_s(single));

    // The leader consumes as soon as the backlog is produced: the rate is the leader's as long as
    // the producer is well ahead of it (both times are printed).
    println!("cluster mode: three replicas settled, then the backlog...");
    let Some(broker) = Tansu::try_start().await else { unreachable!("tansu was found") };
    let run = topics(&broker).await;
    let cluster = Cluster::start_on(&broker, &run).await;
    let leader = cluster.settled(Duration::from_secs(60)).await;
    let addr = cluster.replicas[leader].addr;
    let lines = outcome_events(n);
    let started = Instant::now();
    let producing = tokio::spawn(produce(broker.brokers(), format!("feedback-{run}"), lines));
    let (rate, recorded) = match drain_rate(n, timeout, async || kafka_accepted(&cluster.http, addr).await).await {
        Ok(done) => done,
        Err(seen) => {
            let logs: Vec<String> =
                cluster.replicas.iter().map(|r| format!("--- {}\n{}", r.name, r.log_tail())).collect();
            panic!("the leader recorded {seen} of {n} in 120 s\n{}", logs.join("\n"))
        }
    };
    let produced = producing.await.unwrap();
    let leader_dir = cluster.replicas[leader].audit_dir();
    let follower_dirs: Vec<PathBuf> =
        (0..cluster.replicas.len()).filter(|i| *i != leader).map(|i| cluster.replicas[i].audit_dir()).collect();
    let catch_up = caught_up(&leader_dir, &follower_dirs, recorded, timeout).await;
    let audit_mb = segment_lengths(&leader_dir).iter().map(|(_, l)| *l).sum::<u64>() as f64 / 1e6;
    println!(
        "  leader {}: {} msg/s (produced in {produced:.2} s, all recorded {:.2} s after the first was sent); \
         followers caught up {} after its last event",
        cluster.replicas[leader].name,
        per_s(rate),
        recorded.duration_since(started).as_secs_f64(),
        catch_up.map(secs).unwrap_or_else(|| "NOT within 120 s".into())
    );
    Feedback { n, single, cluster: rate, produced, catch_up, audit_mb }
}

// ---------------------------------------------------------------------------------------------
// Takeovers

/// splitmix64 (as tests/it/support/mod.rs's Rng): uniform in [0, 1).
fn splitmix(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

struct Takeovers {
    kills: usize,
    /// Kill to `ready: leader`, seconds, sorted.
    ready: Vec<f64>,
    /// `handover_ms` of the takeover records that followed a kill, sorted.
    handover_ms: Vec<f64>,
    takeover_records: usize,
    patches: usize,
    same_bytes: bool,
}

async fn bench_takeovers(broker: &Tansu, kills: usize) -> Takeovers {
    let mut cluster = Cluster::start(broker).await;
    let mut leader = cluster.settled(Duration::from_secs(60)).await;
    let addr = cluster.replicas[leader].addr.unwrap();
    let resp = cluster
        .http
        .post(format!("http://{addr}/v1/alertmanager"))
        .header("content-type", "application/json")
        .body(FIRING)
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["results"][0]["outcome"], "applied", "the alert did not act: {body}");
    let weights = cluster.emu.get(VS.0, VS.1, VS.2, VS.3).unwrap()["spec"]["http"][0]["route"].clone();
    println!("  alert acted on by {}: routes {weights}", cluster.replicas[leader].name);
    let mut ready = Vec::new();
    let started = Instant::now();
    // Each kill comes at a random moment of the leader's 500 ms renewal cycle: without the
    // delay, the loop's own rhythm (takeover, restart, settle) puts every kill at about the same
    // moment after a renewal, and the takeover time depends on that moment.
    let mut seed: u64 = env_or("BENCH_SEED", 1);
    for k in 0..kills {
        tokio::time::sleep(Duration::from_secs_f64(0.5 * splitmix(&mut seed))).await;
        let killed_at = Instant::now();
        cluster.replicas[leader].kill();
        let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
        let deadline = killed_at + Duration::from_secs(60);
        let next = 'poll: loop {
            for &i in &others {
                if let Some((200, body)) = cluster.readyz(i).await
                    && body == "ready: leader"
                {
                    break 'poll i;
                }
            }
            assert!(Instant::now() < deadline, "no new leader 60 s after kill {k}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        ready.push(killed_at.elapsed().as_secs_f64());
        cluster.replicas[leader].start();
        let settled = cluster.settled(Duration::from_secs(60)).await;
        assert_eq!(settled, next, "leadership moved again after kill {k}");
        leader = next;
        if (k + 1) % 10 == 0 || k + 1 == kills {
            let mut sorted = ready.clone();
            sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
            println!(
                "  {} kills in {:.0} s: kill -9 to ready: leader p50 {}, max {}",
                k + 1,
                started.elapsed().as_secs_f64(),
                secs(quantile(&sorted, 0.5)),
                secs(*sorted.last().unwrap())
            );
        }
    }
    ready.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mut histogram = std::collections::BTreeMap::<u64, usize>::new();
    for r in &ready {
        *histogram.entry((r * 10.0).floor() as u64).or_default() += 1;
    }
    let histogram: Vec<String> = histogram
        .iter()
        .map(|(b, n)| format!("{:.1}-{:.1} s: {n}", *b as f64 / 10.0, (*b + 1) as f64 / 10.0))
        .collect();
    println!("  kill -9 to ready: leader, by 100 ms: {}", histogram.join(", "));
    let dir = cluster.replicas[leader].audit_dir();
    let takeovers: Vec<Value> = records(&dir).into_iter().filter(|r| r["detail"]["control"] == "takeover").collect();
    // The first is the first leader's (cold: its producer and consumer connect); then one per kill.
    let mut handover_ms: Vec<f64> = takeovers
        .iter()
        .skip(1)
        .filter_map(|t| t["detail"]["takeover"]["handover_ms"].as_u64())
        .map(|v| v as f64)
        .collect();
    handover_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let patches = cluster.patches();
    let want = segment_lengths(&dir);
    let mut same_bytes = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let bytes = segments(&dir);
        if cluster.replicas.iter().all(|r| segments(&r.audit_dir()) == bytes) && segment_lengths(&dir) == want {
            same_bytes = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Takeovers { kills, ready, handover_ms, takeover_records: takeovers.len(), patches, same_bytes }
}

// ---------------------------------------------------------------------------------------------

struct Row {
    name: String,
    measured: String,
    baseline: String,
    ratio: Option<f64>,
}

fn row(name: impl Into<String>, measured: impl Into<String>, baseline: impl Into<String>, ratio: Option<f64>) -> Row {
    Row { name: name.into(), measured: measured.into(), baseline: baseline.into(), ratio }
}

async fn run(rows: &mut Vec<Row>) {
    let measure = Duration::from_secs_f64(env_or("BENCH_SECONDS", 5.0));
    let warm = Duration::from_secs(1);
    let kills: usize = env_or("BENCH_KILLS", 100);
    if let Some(why) = tansu_missing() {
        println!("skipped (every phase needs the broker): {why}");
        rows.push(row("cluster benchmark", format!("skipped: {why}"), "-", None));
        return;
    }
    // The takeovers first, each phase with a broker of its own: tansu keeps its topics in
    // memory, and the intake leaves hundreds of MB there.
    if kills == 0 {
        println!("takeovers skipped (BENCH_KILLS=0)");
    } else {
        let Some(broker) = Tansu::try_start().await else { unreachable!("tansu was found") };
        takeovers(rows, &broker, kills).await;
    }
    intake(rows, warm, measure).await;
    feedback(rows, env_or("BENCH_KAFKA_MESSAGES", 100_000)).await;
}

async fn takeovers(rows: &mut Vec<Row>, broker: &Tansu, kills: usize) {
    println!("takeovers: {kills} kill -9s of the leader (lease 3 s, renewed every 500 ms)...");
    let t = bench_takeovers(broker, kills).await;
    let q = |v: &[f64], p: f64| quantile(v, p);
    println!(
        "  kill -9 to ready: leader over {} kills: min {} p50 {} p99 {} max {}; handover_ms p50 {} p99 {} ({} takeover records); \
         VirtualService PATCHes {}; logs the same bytes {}",
        t.kills,
        secs(t.ready[0]),
        secs(q(&t.ready, 0.5)),
        secs(q(&t.ready, 0.99)),
        secs(*t.ready.last().unwrap()),
        q(&t.handover_ms, 0.5),
        q(&t.handover_ms, 0.99),
        t.takeover_records,
        t.patches,
        t.same_bytes
    );
    rows.push(row(
        format!("takeover: kill -9 of the leader to another replica's `ready: leader`, {} kills", t.kills),
        format!(
            "p50 {} p99 {} (min {}, max {})",
            secs(q(&t.ready, 0.5)),
            secs(q(&t.ready, 0.99)),
            secs(t.ready[0]),
            secs(*t.ready.last().unwrap())
        ),
        "lease 3 s",
        Some(q(&t.ready, 0.5) / 3.0),
    ));
    rows.push(row(
        "takeover: handover_ms of the takeover records (marker, catch-up, resume, record)",
        format!(
            "p50 {:.0} ms p99 {:.0} ms (n={})",
            q(&t.handover_ms, 0.5),
            q(&t.handover_ms, 0.99),
            t.handover_ms.len()
        ),
        "-",
        None,
    ));
    rows.push(row(
        "takeover: writes to the VirtualService across all kills (the alert fired once, before them)",
        format!("{} PATCH{}", t.patches, if t.patches == 1 { "" } else { "es (EXPECTED 1)" }),
        "1",
        None,
    ));
    rows.push(row(
        "takeover: the three audit logs after the last kill",
        if t.same_bytes { "the same bytes" } else { "DIFFERENT" },
        format!("{} takeover records (first leader + {} kills)", t.takeover_records, t.kills),
        None,
    ));
}

async fn intake(rows: &mut Vec<Row>, warm: Duration, measure: Duration) {
    println!("intake, alerts no rule matches, {CONNECTIONS} connections, {} s each...", measure.as_secs_f64());
    let Some(broker) = Tansu::try_start().await else { unreachable!("tansu was found") };
    let intake = bench_intake(&broker, warm, measure).await;
    for (k, alerts) in [1, 50].into_iter().enumerate() {
        let (s, c) = (&intake.single[k], &intake.cluster[k]);
        rows.push(row(
            format!("intake, {alerts}-alert payloads, no rule matches: leader of 3 vs single mode"),
            format!("{} req/s = {} alerts/s{}", per_s(c.rate()), per_s(c.rate() * alerts as f64), c.problems()),
            format!("{} req/s{}", per_s(s.rate()), s.problems()),
            Some(c.rate() / s.rate()),
        ));
    }
    for (k, alerts) in [1, 50].into_iter().enumerate() {
        let lag = &intake.lag[k];
        rows.push(row(
            format!(
                "follower lag under {alerts}-alert intake: max records behind the leader (last seq, every 100 ms \
                 until caught up)"
            ),
            format!("{} records ({} samples)", lag.max_records, lag.samples),
            format!(
                "backstop_replication_lag_messages max {} (topic messages, i.e. batches; measured every second)",
                lag.max_metric
            ),
            None,
        ));
        rows.push(row(
            format!("follower catch-up after {alerts}-alert intake: end of load to the same bytes on every replica"),
            lag.catch_up.map(secs).unwrap_or_else(|| "NOT within 120 s".into()),
            "-",
            None,
        ));
    }
    rows.push(row(
        "audit log written by the cluster's intake (per replica)",
        format!("{:.0} MB", intake.audit_mb),
        "-",
        None,
    ));
}

async fn feedback(rows: &mut Vec<Row>, n: usize) {
    println!("Kafka feedback: a backlog of {} outcome events, each server on a tansu of its own...", per_s(n as f64));
    let f = bench_feedback(n).await;
    rows.push(row(
        format!(
            "Kafka feedback, a backlog of {} outcome events recorded and judged: leader of 3 vs single mode",
            per_s(f.n as f64)
        ),
        format!("{} msg/s (the backlog produced in {:.2} s)", per_s(f.cluster), f.produced),
        format!("{} msg/s", per_s(f.single)),
        Some(f.cluster / f.single),
    ));
    rows.push(row(
        "follower catch-up after the Kafka feedback backlog: the leader's last event recorded to the same bytes on \
         every replica",
        f.catch_up.map(secs).unwrap_or_else(|| "NOT within 120 s".into()),
        format!("{:.0} MB of audit log per replica", f.audit_mb),
        None,
    ));
}

fn main() {
    let started = Instant::now();
    println!("machine: {}", machine());
    println!("binary: {BIN}");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut rows = Vec::new();
    rt.block_on(run(&mut rows));
    println!("\nmachine: {}", machine());
    println!(
        "run took {:.0} s, BENCH_KILLS={}, BENCH_SECONDS={}, BENCH_KAFKA_MESSAGES={}\n",
        started.elapsed().as_secs_f64(),
        env_or("BENCH_KILLS", 100),
        env_or("BENCH_SECONDS", 5.0),
        env_or("BENCH_KAFKA_MESSAGES", 100_000)
    );
    println!("| benchmark | measured | baseline (same run) | ratio |");
    println!("|---|---|---|---|");
    for r in &rows {
        let ratio = r.ratio.map(|x| format!("{x:.2}x")).unwrap_or_else(|| "-".into());
        println!("| {} | {} | {} | {ratio} |", r.name, r.measured, r.baseline);
    }
}
