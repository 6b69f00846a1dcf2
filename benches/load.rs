//! Load on the running service (issue #7), as ratios against ceilings measured in the same run
//! on the same machine with the same client:
//!
//!   cargo bench --bench load     (BENCH_SECONDS=5 per load phase after 1 s of warm-up; ~90 s)
//!
//! 1. Webhook intake: `POST /v1/alertmanager` of the release binary (manifests target, durable
//!    audit log, logs at info to a file), 64 keep-alive connections from a hyper HTTP/1.1 client
//!    in this process, realistic Alertmanager v4 payloads of 1 and of 50 alerts (distinct
//!    fingerprints and startsAt in every request). Two rule paths, each measured: alerts no rule
//!    matches (`CanaryHighLatency` at severity `warning`; the shipped rule wants `critical|page`),
//!    and alerts the shipped rule `canary-high-error-rate` matches (the first rolls
//!    `sms-app/model-service` back in its manifest, the rest are held by the rule's 15m cooldown:
//!    an alert storm on one canary).
//!    Ceilings: (a) a bare axum server (2 workers, in a process of its own: this executable with
//!    BENCH_BARE_SERVER=1) that reads the body and answers 200, same client; (b) fdatasync'd appends of the same bytes to a file, one fsync per
//!    payload (the goal's ceiling) and in batches of 64 (group commit, information), sampled
//!    three times during the run because the disk may be shared.
//!    Goals (alerts no rule matches): 1-alert payloads >= 0.5x the bare server; 50-alert
//!    payloads >= 0.7x the lower ceiling. The alert storm is reported beside them.
//!    Each phase also reports the server's CPU time per request, the cores used by server, client
//!    and the rest of the machine (which may be shared), and the audit log's fsyncs.
//! 2. Decision latency on the manifests target: requests in sequence on one connection; an alert
//!    whose rule rolls a VirtualService back (alternating with one whose rule sets the weights
//!    back; cooldown 0 and the action cap raised, so every request writes), against an alert no
//!    rule matches and against the target's own write (`fsutil::write_atomically` of that
//!    manifest). Also from the audit log (`received` to `applied` record), the histogram
//!    `backstop_action_duration_seconds` of `/metrics`, and, as information, the same with 500
//!    other manifests in the directory. Goal: p99 < 5 ms + the write's p99.
//! 3. Rules: `RuleSet::decide` per alert with 10, 1,000 and 10,000 rules loaded with
//!    `backstop::rules::load` from generated files. Goal: roughly flat (index by alert name).
//! 4. Memory of the binary: VmRSS idle after start, VmRSS sampled every 10 ms in each phase,
//!    VmHWM at the end. Goals: < 30 MB idle, < 100 MB peak.
//! 5. Kafka feedback (optional, needs tansu on PATH or in ~/.cargo/bin): a backlog of outcome
//!    events consumed, recorded and judged by the shipped feedback rules, against a raw
//!    rdkafka consumer draining the same topic. Goal: >= 0.7x.
//!
//! Environment: BENCH_SECONDS, BENCH_LATENCY_N (1000), BENCH_MANIFEST_FILES (500),
//! BENCH_KAFKA_MESSAGES (200000: with 50,000 backstop took about 0.4 s, a few of /metrics' 20 ms
//! polls, and the two rates swung by a tenth between runs).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use serde_json::Value;

#[path = "shared/intake.rs"]
mod shared;

use shared::*;

const BIN: &str = env!("CARGO_BIN_EXE_backstop");

struct Row {
    name: String,
    measured: String,
    baseline: String,
    ratio: Option<f64>,
    goal: String,
    /// None: information, no goal.
    met: Option<bool>,
}

impl Row {
    fn info(
        name: impl Into<String>,
        measured: impl Into<String>,
        baseline: impl Into<String>,
        ratio: Option<f64>,
    ) -> Row {
        Row {
            name: name.into(),
            measured: measured.into(),
            baseline: baseline.into(),
            ratio,
            goal: "info".into(),
            met: None,
        }
    }
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

// ---------------------------------------------------------------------------------------------
// Machine and process

/// A field of /proc/PID/status in kB (VmRSS, VmHWM).
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds (user + system, all threads) a process has used so far.
fn cpu_seconds(pid: &str) -> f64 {
    let ticks = clk_tck();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (field(11) + field(12)) / ticks
}

/// CPU seconds all processors have been busy so far (/proc/stat: all but idle and iowait).
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    let busy: f64 = cpu.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    busy / clk_tck()
}

fn clk_tck() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output().ok();
        out.and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok()).unwrap_or(100.0)
    })
}

/// Samples VmRSS of a process every 10 ms until finished; returns the largest seen (kB).
struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut max = 0;
            while !flag.load(Ordering::Relaxed) {
                max = max.max(status_kb(pid, "VmRSS").unwrap_or(0));
                std::thread::sleep(Duration::from_millis(10));
            }
            max.max(status_kb(pid, "VmRSS").unwrap_or(0))
        });
        RssSampler { stop, handle }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

/// `backstop serve` on 127.0.0.1:0 in a working directory (backstop.yaml, rules/, manifests/,
/// data/), logging at info (the default) to a file there.
struct Backstop {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Backstop {
    fn start(dir: &Path) -> Backstop {
        let log = std::fs::File::create(dir.join("backstop.log")).unwrap();
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(dir.join("backstop.yaml"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let Some(url) = first.strip_prefix("backstop listening on ") else {
            let _ = child.kill();
            let log = std::fs::read_to_string(dir.join("backstop.log")).unwrap_or_default();
            panic!("backstop did not start ({first:?}); its log:\n{log}");
        };
        let addr = url.trim_start_matches("http://").trim_end_matches('/').parse().unwrap();
        // Keep draining stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        Backstop { child, addr, dir: dir.to_path_buf() }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("backstop.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.addr);
        reqwest::get(&url).await.unwrap().text().await.unwrap()
    }

    /// SIGTERM and wait (bounded), else SIGKILL.
    fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Backstop {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The rules (shipped rules/ plus `extra_rules`), the demo manifests (deploy/local plus
/// `extra_manifests`), and a config with the action cap raised for the benchmark.
fn workdir(extra_rules: &str, extra_manifests: &[(String, String)], extra_config: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("backstop-load-").tempdir().unwrap();
    for (from, to) in [("rules", "rules"), ("deploy/local", "manifests")] {
        std::fs::create_dir_all(dir.path().join(to)).unwrap();
        for entry in std::fs::read_dir(repo(from)).unwrap() {
            let p = entry.unwrap().path();
            if p.is_file() {
                std::fs::copy(&p, dir.path().join(to).join(p.file_name().unwrap())).unwrap();
            }
        }
    }
    std::fs::write(dir.path().join("rules/bench.yaml"), extra_rules).unwrap();
    for (name, text) in extra_manifests {
        std::fs::write(dir.path().join("manifests").join(name), text).unwrap();
    }
    let config = format!(
        "listen: 127.0.0.1:0\ndata_dir: data\nrules: [rules]\ntarget:\n  manifests:\n    dir: manifests\n\
         guards:\n  max_actions: 1000000\n  window: 1h\n{extra_config}"
    );
    std::fs::write(dir.path().join("backstop.yaml"), config).unwrap();
    dir
}

/// The bare server: this benchmark's own executable started again with `BENCH_BARE_SERVER=1`,
/// so that it is a process of its own like backstop (its CPU time is its own), with a 2-worker
/// axum server that reads the body and answers 200.
struct Bare {
    child: Child,
    addr: SocketAddr,
}

impl Bare {
    fn start() -> Bare {
        Bare::start_with(None)
    }

    /// The same server, but every body is appended to a file in `dir` and fdatasync'd before
    /// the answer, in group commit (one writer thread, one write and one fsync for all that is
    /// queued): the least any server with a durable record per request does.
    fn start_durable(dir: &Path) -> Bare {
        Bare::start_with(Some(dir))
    }

    fn start_with(durable: Option<&Path>) -> Bare {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command.env("BENCH_BARE_SERVER", "1");
        if let Some(dir) = durable {
            command.env("BENCH_BARE_DURABLE_DIR", dir);
        }
        let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening ").unwrap_or_else(|| panic!("bare server: {line:?}"));
        Bare { addr: addr.parse().unwrap(), child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// In the child: serve until stdin closes (the parent is gone or done).
    fn serve() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            println!("listening {}", listener.local_addr().unwrap());
            let app = match std::env::var_os("BENCH_BARE_DURABLE_DIR") {
                None => axum::Router::new().route(
                    "/v1/alertmanager",
                    axum::routing::post(|body: Bytes| async move {
                        std::hint::black_box(body.len());
                        axum::http::StatusCode::OK
                    }),
                ),
                Some(dir) => {
                    let log = Arc::new(std::sync::Mutex::new(Bare::group_commit(Path::new(&dir))));
                    axum::Router::new().route(
                        "/v1/alertmanager",
                        axum::routing::post(move |body: Bytes| {
                            let log = log.clone();
                            async move {
                                let (done, written) = tokio::sync::oneshot::channel();
                                log.lock().unwrap().send((body, done)).unwrap();
                                written.await.unwrap();
                                axum::http::StatusCode::OK
                            }
                        }),
                    )
                }
            };
            let stdin_closed = tokio::task::spawn_blocking(|| {
                let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            });
            tokio::select! {
                _ = axum::serve(listener, app) => {}
                _ = stdin_closed => {}
            }
        });
    }
}

impl Bare {
    /// A writer thread: takes what is queued, appends it with one write, one fdatasync, then
    /// answers each.
    fn group_commit(dir: &Path) -> std::sync::mpsc::Sender<(Bytes, tokio::sync::oneshot::Sender<()>)> {
        let (tx, rx) = std::sync::mpsc::channel::<(Bytes, tokio::sync::oneshot::Sender<()>)>();
        let mut file =
            std::fs::OpenOptions::new().create(true).append(true).open(dir.join("durable-bare.log")).unwrap();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                batch.extend(rx.try_iter());
                buf.clear();
                for (body, _) in &batch {
                    buf.extend_from_slice(body);
                    buf.push(b'\n');
                }
                file.write_all(&buf).unwrap();
                file.sync_data().unwrap();
                for (_, done) in batch {
                    let _ = done.send(());
                }
            }
        });
        tx
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Disk ceiling

/// Append `payload` to a file, `batch` copies per write and one fdatasync per write, for `for_`.
/// Returns payloads per second.
fn fsync_rate(dir: &Path, payload: &[u8], batch: usize, for_: Duration) -> f64 {
    let path = dir.join(format!("fsync-ceiling-{batch}.bin"));
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
    let mut chunk = Vec::with_capacity(payload.len() * batch + batch);
    for _ in 0..batch {
        chunk.extend_from_slice(payload);
        chunk.push(b'\n');
    }
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < for_ {
        file.write_all(&chunk).unwrap();
        file.sync_data().unwrap();
        n += batch;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path).unwrap();
    rate
}

/// The disk's rates, sampled at several moments of the run (the disk may be shared): fdatasync'd
/// appends of the 50-alert payload one per fsync (the goal's ceiling), and in batches of 64 (group
/// commit, as 64 connections allow) for both payloads.
#[derive(Default)]
struct Disk {
    each50: Vec<f64>,
    batch50: Vec<f64>,
    batch1: Vec<f64>,
}

impl Disk {
    fn sample(&mut self, one: &[u8], fifty: &[u8]) {
        let scratch = tempfile::Builder::new().prefix("backstop-load-fsync-").tempdir().unwrap();
        self.each50.push(fsync_rate(scratch.path(), fifty, 1, Duration::from_millis(700)));
        self.batch50.push(fsync_rate(scratch.path(), fifty, CONNECTIONS, Duration::from_millis(400)));
        self.batch1.push(fsync_rate(scratch.path(), one, CONNECTIONS, Duration::from_millis(400)));
        println!(
            "  disk: 50-alert payloads {}/s one fdatasync each, {}/s in batches of {CONNECTIONS}; 1-alert {}/s in batches",
            per_s(*self.each50.last().unwrap()),
            per_s(*self.batch50.last().unwrap()),
            per_s(*self.batch1.last().unwrap())
        );
    }

    fn median(v: &[f64]) -> f64 {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    }

    fn range(v: &[f64]) -> String {
        let (lo, hi) = v.iter().fold((f64::MAX, 0.0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        format!("{}-{}", per_s(lo), per_s(hi))
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Intake, with the memory of each phase

struct Intake {
    rate: f64,
    alerts_rate: f64,
    peak_kb: u64,
    note: String,
    /// The audit log's fsyncs during the phase (warm-up included): count, mean seconds.
    fsyncs: f64,
    fsync_mean: f64,
    /// CPU cores used on average by the server, by this process (the client), by the rest.
    server_cores: f64,
    client_cores: f64,
    other_cores: f64,
    /// The server's CPU time per answered request.
    cpu_per_request: f64,
}

impl Intake {
    fn cpu(&self) -> String {
        format!(
            "server {:.0} us CPU/request; cores used: server {:.2}, client {:.2}, rest of the machine {:.2}",
            self.cpu_per_request * 1e6,
            self.server_cores,
            self.client_cores,
            self.other_cores
        )
    }

    fn audit(&self, seconds: f64) -> String {
        format!(
            "audit: {:.0} fsyncs/s, mean fdatasync {}, {:.1} alerts per fsync; {}",
            self.fsyncs / seconds,
            ms(self.fsync_mean),
            self.alerts_rate * seconds / self.fsyncs.max(1.0),
            self.cpu()
        )
    }
}

/// One load phase against a server process (backstop, whose /metrics is read, or the bare one).
async fn intake(
    pid: u32,
    addr: SocketAddr,
    backstop: Option<&Backstop>,
    payload: &Arc<Payload>,
    warm: Duration,
    measure: Duration,
) -> Intake {
    let fsync = |m: &str| {
        let count = metric_value(m, "backstop_audit_fsync_duration_seconds_count", &[]).unwrap_or(0.0);
        (count, metric_value(m, "backstop_audit_fsync_duration_seconds_sum", &[]).unwrap_or(0.0))
    };
    let before = match backstop {
        Some(b) => fsync(&b.metrics().await),
        None => (0.0, 0.0),
    };
    let sampler = RssSampler::start(pid);
    let pid_s = pid.to_string();
    let cpu = (cpu_seconds(&pid_s), cpu_seconds("self"), machine_busy_seconds(), Instant::now());
    let load = drive(addr, payload.clone(), warm, measure).await;
    let wall = cpu.3.elapsed().as_secs_f64();
    let server = cpu_seconds(&pid_s) - cpu.0;
    let client = cpu_seconds("self") - cpu.1;
    let busy = machine_busy_seconds() - cpu.2;
    let peak_kb = sampler.finish();
    let after = match backstop {
        Some(b) => fsync(&b.metrics().await),
        None => (0.0, 0.0),
    };
    let rate = load.rate();
    Intake {
        rate,
        alerts_rate: rate * payload.alerts as f64,
        peak_kb,
        note: load.problems(),
        fsyncs: (after.0 - before.0) * measure.as_secs_f64() / (warm + measure).as_secs_f64(),
        fsync_mean: (after.1 - before.1) / (after.0 - before.0).max(1.0),
        server_cores: server / wall,
        client_cores: client / wall,
        other_cores: ((busy - server - client) / wall).max(0.0),
        cpu_per_request: server / load.all.max(1) as f64,
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Decision latency

const BENCH_RULES: &str = r#"# Two rules on one VirtualService (bench/model-service), cooldown 0: every alert acts.
rules:
  - name: bench-rollback
    match: ['alertname="BenchRollback"']
    target:
      namespace: "{{ $labels.namespace }}"
      virtualservice: "{{ $labels.virtualservice }}"
    action:
      rollback: { stable: v1, canary: [v2] }
    cooldown: 0s
  - name: bench-restore
    match: ['alertname="BenchRestore"']
    target:
      namespace: "{{ $labels.namespace }}"
      virtualservice: "{{ $labels.virtualservice }}"
    action:
      set-weights: [{ subset: v1, weight: 90 }, { subset: v2, weight: 10 }]
    cooldown: 0s
"#;

/// The demo manifest (DestinationRule and VirtualService) moved to another namespace.
fn manifest_in(namespace: &str) -> String {
    std::fs::read_to_string(repo("deploy/local/model-service.yaml"))
        .unwrap()
        .replace("namespace: sms-app", &format!("namespace: {namespace}"))
}

struct Latency {
    base: Vec<f64>,
    action: Vec<f64>,
    not_applied: usize,
    example: Option<String>,
}

/// `n` pairs, in sequence on one connection: an alert no rule matches, then an alert whose rule
/// writes the manifest (rollback and restore alternately, so each one changes the weights).
async fn decision_latency(addr: SocketAddr, n: usize, with_baseline: bool) -> Latency {
    let (none, rollback, restore) = (Payload::new(&NO_RULE, 1), Payload::new(&ROLLBACK, 1), Payload::new(&RESTORE, 1));
    let mut sender = connect(addr).await.unwrap();
    let mut out = Latency { base: Vec::new(), action: Vec::new(), not_applied: 0, example: None };
    for i in 0..n + 10 {
        let warm = i < 10;
        if with_baseline {
            let t = Instant::now();
            let (status, body) = post(&mut sender, addr, none.next()).await.unwrap();
            let took = t.elapsed().as_secs_f64();
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            if !warm {
                out.base.push(took);
            }
        }
        let payload = if i % 2 == 0 { &rollback } else { &restore };
        let t = Instant::now();
        let (status, body) = post(&mut sender, addr, payload.next()).await.unwrap();
        let took = t.elapsed().as_secs_f64();
        let answer: Value = serde_json::from_slice(&body).unwrap_or_default();
        if status != 200 || answer["results"][0]["outcome"] != "applied" {
            out.not_applied += 1;
            out.example.get_or_insert_with(|| format!("{status} {}", String::from_utf8_lossy(&body)));
        }
        if !warm {
            out.action.push(took);
        }
    }
    out.base.sort_by(|a, b| a.partial_cmp(b).unwrap());
    out.action.sort_by(|a, b| a.partial_cmp(b).unwrap());
    out
}

/// From each bench alert's `received` record to its `applied` record (written after the manifest,
/// before its own fsync), as the audit log timed them: request received to target written.
fn audit_latency(audit_dir: &Path) -> Vec<f64> {
    use backstop::audit::{Filter, Kind};
    let filter = Filter { kinds: vec![Kind::Received, Kind::Applied], ..Default::default() };
    let records = backstop::audit::query(audit_dir, &filter).unwrap();
    let mut received = std::collections::HashMap::new();
    let mut out = Vec::new();
    for r in &records {
        let Some(id) = r.entry.event_id.as_deref() else { continue };
        if r.entry.kind == Kind::Received {
            received.insert(id.to_string(), r.time);
        } else if r.entry.rule.as_deref().is_some_and(|n| n.starts_with("bench-"))
            && let Some(t) = received.get(id)
        {
            out.push((r.time - *t).to_std().unwrap_or_default().as_secs_f64());
        }
    }
    out.sort_by(|a, b| a.partial_cmp(b).unwrap());
    out
}

/// The manifests target's own write: `fsutil::write_atomically` of the bench manifest, with
/// its content alternating as the actions alternate it. Seconds, sorted.
fn write_times(n: usize) -> Vec<f64> {
    let dir = tempfile::Builder::new().prefix("backstop-load-write-").tempdir().unwrap();
    let path = dir.path().join("bench.yaml");
    let a = manifest_in("bench");
    let b = a.replace("weight: 90", "weight: 100").replace("weight: 10 ", "weight: 0 ");
    std::fs::write(&path, &a).unwrap();
    let mut times: Vec<f64> = (0..n)
        .map(|i| {
            let t = Instant::now();
            backstop::fsutil::write_atomically(&path, if i % 2 == 0 { b.as_bytes() } else { a.as_bytes() }).unwrap();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times
}

/// `backstop_action_duration_seconds{target="manifests"}`: (cumulative buckets, sum, count).
fn action_histogram(metrics: &str) -> (Vec<(f64, f64)>, f64, f64) {
    let mut buckets = Vec::new();
    let (mut sum, mut count) = (0.0, 0.0);
    for line in metrics.lines().filter(|l| l.contains("target=\"manifests\"")) {
        let value = || line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        if line.starts_with("backstop_action_duration_seconds_bucket{") {
            let le = line.split("le=\"").nth(1).and_then(|s| s.split('"').next()).unwrap_or("+Inf");
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) };
            buckets.push((le, value()));
        } else if line.starts_with("backstop_action_duration_seconds_sum{") {
            sum = value();
        } else if line.starts_with("backstop_action_duration_seconds_count{") {
            count = value();
        }
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    (buckets, sum, count)
}

/// The bucket bound under which a fraction `q` of the observations between two scrapes fall.
fn histogram_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let at = |h: &[(f64, f64)], le: f64| h.iter().find(|(l, _)| *l == le).map(|(_, c)| *c).unwrap_or(0.0);
    let total = after.last().map(|(le, c)| c - at(before, *le)).unwrap_or(0.0);
    for (le, c) in after {
        if c - at(before, *le) >= q * total {
            return *le;
        }
    }
    f64::INFINITY
}

// ---------------------------------------------------------------------------------------------
// 3. Rules scale

/// `n` rules in files of `per_file`, each on its own alert name (`alertname="BenchAlertI"`, or
/// `alertname=~"BenchAlertI"`, which the index cannot use).
fn rules_dir(n: usize, per_file: usize, regex: bool) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("backstop-load-rules-").tempdir().unwrap();
    let op = if regex { "=~" } else { "=" };
    for (f, first) in (0..n).step_by(per_file).enumerate() {
        let mut s = String::from("rules:\n");
        for i in first..(first + per_file).min(n) {
            s.push_str(&format!(
                "  - name: bench-rule-{i}\n    match: ['alertname{op}\"BenchAlert{i}\"', 'severity=~\"critical|page\"']\n    \
                 target:\n      namespace: \"{{{{ $labels.namespace }}}}\"\n      \
                 virtualservice: \"{{{{ $labels.virtualservice }}}}\"\n    action:\n      \
                 rollback: {{ stable: v1, canary: [v2] }}\n    cooldown: 15m\n"
            ));
        }
        std::fs::write(dir.path().join(format!("rules-{f:03}.yaml")), s).unwrap();
    }
    dir
}

/// `backstop::rules::load` of a directory; the rules and the seconds it took.
fn load_rules(dir: &Path) -> (backstop::rules::RuleSet, f64) {
    let t = Instant::now();
    match backstop::rules::load(&[dir.to_path_buf()]) {
        Ok(r) => (r, t.elapsed().as_secs_f64()),
        Err(e) => panic!("{e}"),
    }
}

/// Nanoseconds per `decide`, over ten alerts that each match one rule (BenchAlert0..9) and one
/// that matches none (median of 5 slices of 100 ms).
fn decide_ns(rules: &backstop::rules::RuleSet) -> f64 {
    let alert = |name: &str| {
        let body = Payload::new(&MATCHED, 1).make(7);
        let body = String::from_utf8(body.to_vec()).unwrap().replace("CanaryHighErrorRate", name);
        backstop::sources::alertmanager::parse(body.as_bytes()).unwrap().events().remove(0)
    };
    let alerts: Vec<_> = (0..10).map(|i| alert(&format!("BenchAlert{i}"))).chain([alert("SomethingElse")]).collect();
    let now = Utc::now();
    for a in &alerts[..10] {
        assert_eq!(rules.decide(a, now).len(), 1);
    }
    let mut samples = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let mut calls = 0u64;
        while t.elapsed() < Duration::from_millis(100) {
            for a in &alerts {
                std::hint::black_box(rules.decide(std::hint::black_box(a), now));
                calls += 1;
            }
        }
        samples.push(t.elapsed().as_secs_f64() * 1e9 / calls as f64);
    }
    Disk::median(&samples)
}

fn bench_rules(rows: &mut Vec<Row>) {
    let ten = decide_ns(&load_rules(rules_dir(10, 1_000, false).path()).0);
    let mut split = 0.0;
    for n in [1_000, 10_000] {
        let (rules, load) = load_rules(rules_dir(n, 1_000, false).path());
        assert_eq!(rules.rules().len(), n);
        split = load;
        let cost = decide_ns(&rules);
        println!(
            "  {n} rules: {cost:.0} ns/alert (10 rules: {ten:.0} ns), loaded in {:.0} ms (files of 1,000)",
            load * 1e3
        );
        rows.push(Row {
            name: format!("rules: decide per alert, {} rules vs 10 (exact alertname)", per_s(n as f64)),
            measured: format!("{cost:.0} ns"),
            baseline: format!("{ten:.0} ns"),
            ratio: Some(cost / ten),
            goal: "~flat (<= 2x)".into(),
            met: Some(cost / ten <= 2.0),
        });
    }
    let (regex, _) = load_rules(rules_dir(10_000, 1_000, true).path());
    let regex = decide_ns(&regex);
    rows.push(Row::info(
        "rules: decide per alert, 10,000 rules matching `alertname=~` (not indexable) vs 10",
        format!("{regex:.0} ns"),
        format!("{ten:.0} ns"),
        Some(regex / ten),
    ));
    // Loading the 10,000 rules from one file against from ten files of 1,000 (linear: 1x).
    let (_, one) = load_rules(rules_dir(10_000, 10_000, false).path());
    println!("  load 10000 rules: {} from one file, {} from files of 1,000", ms(one), ms(split));
    rows.push(Row::info(
        "rules: load 10,000 rules, one file vs ten files of 1,000",
        ms(one),
        ms(split),
        Some(one / split),
    ));
}

// ---------------------------------------------------------------------------------------------
// 5. Kafka feedback (optional)

fn tansu_binary() -> Result<PathBuf, String> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("tansu")).find(|p| p.is_file()))
        .unwrap_or_default();
    let installed = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/tansu")).filter(|p| p.is_file());
    on_path.or(installed).ok_or_else(|| "tansu is neither on PATH nor at ~/.cargo/bin/tansu".into())
}

struct Tansu(Child);

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn bench_kafka(rows: &mut Vec<Row>) -> Result<(), String> {
    use rdkafka::ClientConfig;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{Consumer, StreamConsumer};

    let bin = tansu_binary()?;
    let n: usize = env_or("BENCH_KAFKA_MESSAGES", 200_000);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(&bin)
        .args([
            "broker",
            "--storage-engine",
            "memory://tansu/",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start {}: {e}", bin.display()))?;
    let _broker = Tansu(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("tansu did not listen within 20 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let brokers = format!("127.0.0.1:{port}");
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &brokers).create().map_err(|e| e.to_string())?;
    let topics = [
        NewTopic::new("bench.feedback", 1, TopicReplication::Fixed(1)),
        NewTopic::new("bench.alerts", 1, TopicReplication::Fixed(1)),
    ];
    for r in admin.create_topics(&topics, &AdminOptions::new()).await.map_err(|e| e.to_string())? {
        r.map_err(|(t, e)| format!("create {t}: {e}"))?;
    }
    let secs = produce_backlog(&brokers, "bench.feedback", &outcome_events(n)).await?;
    println!("  produced {n} messages in {secs:.1} s");

    // Raw consumer: from its first message to its n-th.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "bench-raw")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| e.to_string())?;
    consumer.subscribe(&["bench.feedback"]).map_err(|e| e.to_string())?;
    let mut first = None;
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(m)) => {
                std::hint::black_box(rdkafka::Message::payload(&m).map(<[u8]>::len));
                first.get_or_insert_with(Instant::now);
                got += 1;
            }
            Ok(Err(e)) => return Err(format!("raw consumer: {e}")),
            Err(_) => return Err(format!("raw consumer: {got} of {n} in 60 s")),
        }
    }
    let raw = (n - 1) as f64 / first.unwrap().elapsed().as_secs_f64();
    drop(consumer);

    // backstop: consume, record durably, run the feedback rules; counted from /metrics.
    let extra = format!(
        "kafka:\n  brokers: {brokers}\n  group_id: bench-backstop\n  alerts_topic: bench.alerts\n  feedback_topic: bench.feedback\n"
    );
    let dir = workdir("rules: []\n", &[], &extra);
    let server = Backstop::start(dir.path());
    let sampler = RssSampler::start(server.pid());
    let (name, labels) = KAFKA_ACCEPTED;
    let accepted = async || metric_value(&server.metrics().await, name, &labels).unwrap_or(0.0);
    let ours = match drain_rate(n, Duration::from_secs(120), accepted).await {
        Ok((rate, _)) => rate,
        Err(seen) => return Err(format!("backstop consumed {seen} of {n} in 120 s; its log:\n{}", server.log_tail())),
    };
    let peak = sampler.finish();
    server.stop();
    println!("  backstop {ours:.0}/s, raw rdkafka {raw:.0}/s, backstop peak RSS {:.1} MB", peak as f64 / 1024.0);
    rows.push(Row {
        name: format!("Kafka feedback: {n} outcome events, backstop (recorded, rules run) vs raw rdkafka consumer"),
        measured: format!("{} msg/s", per_s(ours)),
        baseline: format!("{} msg/s", per_s(raw)),
        ratio: Some(ours / raw),
        goal: ">= 0.7x".into(),
        met: Some(ours / raw >= 0.7),
    });
    rows.push(Row::info(
        "memory: peak RSS consuming the Kafka backlog",
        format!("{:.1} MB", peak as f64 / 1024.0),
        "-",
        None,
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------------

async fn run(rows: &mut Vec<Row>) {
    let measure = Duration::from_secs_f64(env_or("BENCH_SECONDS", 5.0));
    let secs = measure.as_secs_f64();
    let warm = Duration::from_secs(1);
    let latency_n: usize = env_or("BENCH_LATENCY_N", 1_000);
    let (one_none, fifty_none) = (Arc::new(Payload::new(&NO_RULE, 1)), Arc::new(Payload::new(&NO_RULE, 50)));
    let (one_match, fifty_match) = (Arc::new(Payload::new(&MATCHED, 1)), Arc::new(Payload::new(&MATCHED, 50)));
    let (one_bytes, fifty_bytes) = (one_none.make(0), fifty_none.make(0));
    println!("payloads: 1 alert {} bytes, 50 alerts {} bytes", one_none.len(), fifty_none.len());

    // Ceilings.
    println!("bare axum server...");
    let bare = Bare::start();
    let bare_one = intake(bare.pid(), bare.addr, None, &one_none, warm, measure).await;
    println!("  1 alert: {}/s{}; {}", per_s(bare_one.rate), bare_one.note, bare_one.cpu());
    let bare_fifty = intake(bare.pid(), bare.addr, None, &fifty_none, warm, measure).await;
    println!("  50 alerts: {}/s{}; {}", per_s(bare_fifty.rate), bare_fifty.note, bare_fifty.cpu());
    drop(bare);
    println!("bare axum server with a durable group-commit append of every body...");
    let durable_dir = tempfile::Builder::new().prefix("backstop-load-durable-").tempdir().unwrap();
    let durable = Bare::start_durable(durable_dir.path());
    let durable_one = intake(durable.pid(), durable.addr, None, &one_none, warm, measure).await;
    println!("  1 alert: {}/s{}; {}", per_s(durable_one.rate), durable_one.note, durable_one.cpu());
    let durable_fifty = intake(durable.pid(), durable.addr, None, &fifty_none, warm, measure).await;
    println!("  50 alerts: {}/s{}; {}", per_s(durable_fifty.rate), durable_fifty.note, durable_fifty.cpu());
    drop(durable);
    drop(durable_dir);
    println!("disk ceiling (sampled three times in the run)...");
    let mut disk = Disk::default();
    disk.sample(&one_bytes, &fifty_bytes);

    // The binary.
    let dir = workdir(BENCH_RULES, &[("bench.yaml".into(), manifest_in("bench"))], "");
    let server = Backstop::start(dir.path());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_kb = status_kb(server.pid(), "VmRSS").unwrap_or(0);
    println!("backstop idle: VmRSS {:.1} MB", idle_kb as f64 / 1024.0);

    println!("decision latency ({latency_n} actions and {latency_n} no-rule requests, in sequence)...");
    let before = action_histogram(&server.metrics().await);
    let sampler = RssSampler::start(server.pid());
    let lat = decision_latency(server.addr, latency_n, true).await;
    let lat_peak = sampler.finish();
    let after = action_histogram(&server.metrics().await);
    let audited = audit_latency(&dir.path().join("data/audit"));
    let writes = write_times(latency_n / 2);
    let (act50, act99) = (quantile(&lat.action, 0.5), quantile(&lat.action, 0.99));
    let (base50, base99) = (quantile(&lat.base, 0.5), quantile(&lat.base, 0.99));
    let (aud50, aud99) = (quantile(&audited, 0.5), quantile(&audited, 0.99));
    let (w50, w99) = (quantile(&writes, 0.5), quantile(&writes, 0.99));
    let hist_n = after.2 - before.2;
    let hist_mean = if hist_n > 0.0 { (after.1 - before.1) / hist_n } else { f64::NAN };
    let (h50, h99) = (histogram_quantile(&before.0, &after.0, 0.5), histogram_quantile(&before.0, &after.0, 0.99));
    println!(
        "  client: action p50 {} p99 {}, no rule p50 {} p99 {}; audit received->applied p50 {} p99 {} (n={}); \
         write p50 {} p99 {}; action histogram n={hist_n} mean {} p50 <= {} p99 <= {}",
        ms(act50),
        ms(act99),
        ms(base50),
        ms(base99),
        ms(aud50),
        ms(aud99),
        audited.len(),
        ms(w50),
        ms(w99),
        ms(hist_mean),
        ms(h50),
        ms(h99)
    );
    if lat.not_applied > 0 {
        println!("  NOT APPLIED: {} of {}, e.g. {:?}", lat.not_applied, lat.action.len() + 10, lat.example);
    }
    disk.sample(&one_bytes, &fifty_bytes);

    println!("intake, alerts no rule matches...");
    let none1 = intake(server.pid(), server.addr, Some(&server), &one_none, warm, measure).await;
    println!("  1 alert: {}/s{}; {}", per_s(none1.rate), none1.note, none1.audit(secs));
    let none50 = intake(server.pid(), server.addr, Some(&server), &fifty_none, warm, measure).await;
    println!("  50 alerts: {}/s{}; {}", per_s(none50.rate), none50.note, none50.audit(secs));
    println!("intake, alerts the rule canary-high-error-rate matches (rolls back once, then held by cooldown)...");
    let match1 = intake(server.pid(), server.addr, Some(&server), &one_match, warm, measure).await;
    println!("  1 alert: {}/s{}; {}", per_s(match1.rate), match1.note, match1.audit(secs));
    let match50 = intake(server.pid(), server.addr, Some(&server), &fifty_match, warm, measure).await;
    println!("  50 alerts: {}/s{}; {}", per_s(match50.rate), match50.note, match50.audit(secs));
    let hwm_kb = status_kb(server.pid(), "VmHWM").unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_kb = status_kb(server.pid(), "VmRSS").unwrap_or(0);
    let audit_bytes: u64 = std::fs::read_dir(dir.path().join("data/audit"))
        .map(|d| d.filter_map(Result::ok).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0);
    let rolled =
        std::fs::read_to_string(dir.path().join("manifests/model-service.yaml")).unwrap().contains("weight: 100");
    println!(
        "  audit log {:.0} MB; sms-app/model-service rolled back: {rolled}; VmHWM {:.1} MB, VmRSS 2 s later {:.1} MB",
        audit_bytes as f64 / 1e6,
        hwm_kb as f64 / 1024.0,
        after_kb as f64 / 1024.0
    );
    server.stop();
    drop(dir);
    disk.sample(&one_bytes, &fifty_bytes);

    // Decision latency with a larger manifests directory (information).
    let files: usize = env_or("BENCH_MANIFEST_FILES", 500);
    let mut manifests: Vec<(String, String)> = vec![("bench.yaml".into(), manifest_in("bench"))];
    manifests.extend((0..files).map(|i| (format!("svc-{i:04}.yaml"), manifest_in(&format!("team-{i:04}")))));
    let dir = workdir(BENCH_RULES, &manifests, "");
    let big = Backstop::start(dir.path());
    println!("decision latency with {files} more manifests in the directory...");
    let big_lat = decision_latency(big.addr, (latency_n / 5).max(50), false).await;
    big.stop();
    drop(dir);
    let (big50, big99) = (quantile(&big_lat.action, 0.5), quantile(&big_lat.action, 0.99));
    println!("  action p50 {} p99 {}", ms(big50), ms(big99));
    if big_lat.not_applied > 0 {
        println!("  NOT APPLIED: {} of {}, e.g. {:?}", big_lat.not_applied, big_lat.action.len() + 10, big_lat.example);
    }

    // Rows: intake.
    let (bare1, bare50) = (bare_one.rate, bare_fifty.rate);
    let (each50, batch50, batch1) =
        (Disk::median(&disk.each50), Disk::median(&disk.batch50), Disk::median(&disk.batch1));
    let ceiling50 = bare50.min(each50);
    let which = if each50 < bare50 { "fsync per payload" } else { "bare server" };
    // The goals are the intake's; an alert storm on one held canary (three records per alert,
    // the guards vetting each) is reported beside them.
    for (what, one, fifty, goals) in
        [("no rule matches", &none1, &none50, true), ("rule matches, held by cooldown", &match1, &match50, false)]
    {
        rows.push(Row {
            name: format!("intake, 1-alert payloads, {what}: vs bare axum"),
            measured: format!("{} req/s{}", per_s(one.rate), one.note),
            baseline: format!("{} req/s", per_s(bare1)),
            ratio: Some(one.rate / bare1),
            goal: if goals { ">= 0.5x" } else { "info" }.into(),
            met: goals.then_some(one.rate / bare1 >= 0.5 && one.note.is_empty()),
        });
        rows.push(Row {
            name: format!("intake, 50-alert payloads, {what}: vs lower ceiling"),
            measured: format!("{} req/s = {} alerts/s{}", per_s(fifty.rate), per_s(fifty.alerts_rate), fifty.note),
            baseline: format!("{} req/s ({which})", per_s(ceiling50)),
            ratio: Some(fifty.rate / ceiling50),
            goal: if goals { ">= 0.7x" } else { "info" }.into(),
            met: goals.then_some(fifty.rate / ceiling50 >= 0.7 && fifty.note.is_empty()),
        });
    }
    rows.push(Row::info(
        "ceiling: bare axum, 1-alert / 50-alert payloads",
        format!("{} / {} req/s", per_s(bare1), per_s(bare50)),
        "-",
        None,
    ));
    rows.push(Row::info(
        "ceiling: bare axum appending every body durably (group commit), 1-alert / 50-alert, vs bare axum at 1 alert",
        format!("{} / {} req/s", per_s(durable_one.rate), per_s(durable_fifty.rate)),
        format!("{} req/s", per_s(bare1)),
        Some(durable_one.rate / bare1),
    ));
    for (what, ours, theirs) in [("1-alert", &none1, &durable_one), ("50-alert", &none50, &durable_fifty)] {
        rows.push(Row::info(
            format!("intake, {what}, no rule vs bare axum appending every body durably"),
            format!("{} req/s, {:.0} us CPU/request", per_s(ours.rate), ours.cpu_per_request * 1e6),
            format!("{} req/s, {:.0} us CPU/request", per_s(theirs.rate), theirs.cpu_per_request * 1e6),
            Some(ours.rate / theirs.rate),
        ));
    }
    rows.push(Row::info(
        format!("ceiling: fdatasync'd appends of the 50-alert payload ({} KB), median of 3", fifty_none.len() / 1024),
        format!("{}/s one fsync each (range {})", per_s(each50), Disk::range(&disk.each50)),
        format!("{}/s in batches of {CONNECTIONS} (range {})", per_s(batch50), Disk::range(&disk.batch50)),
        Some(each50 / batch50),
    ));
    rows.push(Row::info(
        format!("intake vs group-commit ceiling (batches of {CONNECTIONS}), 1-alert, no rule"),
        format!("{} req/s", per_s(none1.rate)),
        format!("{} payloads/s (range {})", per_s(batch1), Disk::range(&disk.batch1)),
        Some(none1.rate / batch1),
    ));
    rows.push(Row::info(
        format!("intake vs group-commit ceiling (batches of {CONNECTIONS}), 50-alert, no rule"),
        format!("{} req/s", per_s(none50.rate)),
        format!("{} payloads/s", per_s(batch50)),
        Some(none50.rate / batch50),
    ));
    for (what, bare, ours) in [("1-alert", &bare_one, &none1), ("50-alert", &bare_fifty, &none50)] {
        rows.push(Row::info(
            format!("server CPU per request, {what}, no rule: backstop vs bare axum"),
            format!("{:.0} us", ours.cpu_per_request * 1e6),
            format!("{:.0} us", bare.cpu_per_request * 1e6),
            Some(ours.cpu_per_request / bare.cpu_per_request),
        ));
    }
    rows.push(Row::info(
        "bare axum phases: CPU",
        format!("1-alert: {}", bare_one.cpu()),
        format!("50-alert: {}", bare_fifty.cpu()),
        None,
    ));
    for (what, i) in [
        ("1-alert, no rule", &none1),
        ("50-alert, no rule", &none50),
        ("1-alert, matched", &match1),
        ("50-alert, matched", &match50),
    ] {
        rows.push(Row::info(format!("intake {what}: audit log during the phase"), i.audit(secs), "-", None));
    }
    // Rows: latency.
    let budget = 0.005 + w99;
    rows.push(Row {
        name: "decision latency, client: request to answer (after the manifest write)".into(),
        measured: format!(
            "p50 {} p99 {}{}",
            ms(act50),
            ms(act99),
            if lat.not_applied > 0 { " (NOT ALL APPLIED)" } else { "" }
        ),
        baseline: format!(
            "5 ms + write p99 {} (write p50 {}; no-rule request p50 {} p99 {})",
            ms(w99),
            ms(w50),
            ms(base50),
            ms(base99)
        ),
        ratio: Some(act99 / budget),
        goal: "p99 < 5 ms + write".into(),
        met: Some(act99 < budget && lat.not_applied == 0),
    });
    rows.push(Row {
        name: "decision latency, audit log: `received` to `applied` record".into(),
        measured: format!("p50 {} p99 {} (n={})", ms(aud50), ms(aud99), audited.len()),
        baseline: format!("5 ms + write p99 {}", ms(w99)),
        ratio: Some(aud99 / budget),
        goal: "p99 < 5 ms + write".into(),
        met: Some(aud99 < budget),
    });
    rows.push(Row::info(
        "decision latency: backstop_action_duration_seconds (read, decide, write)",
        format!("mean {}, p50 <= {}, p99 <= {} (buckets), n={hist_n}", ms(hist_mean), ms(h50), ms(h99)),
        format!("write p50 {} p99 {}", ms(w50), ms(w99)),
        Some(hist_mean / w50),
    ));
    rows.push(Row::info(
        format!("decision latency (client) with {files} other manifests in the directory"),
        format!(
            "p50 {} p99 {}{}",
            ms(big50),
            ms(big99),
            if big_lat.not_applied > 0 { " (NOT ALL APPLIED)" } else { "" }
        ),
        format!("p50 {} p99 {} (3 files)", ms(act50), ms(act99)),
        Some(big50 / act50),
    ));
    // Rows: memory.
    rows.push(Row {
        name: "memory: VmRSS idle after start".into(),
        measured: format!("{:.1} MB", idle_kb as f64 / 1024.0),
        baseline: "limit 30 MB".into(),
        ratio: Some(idle_kb as f64 / 1024.0 / 30.0),
        goal: "< 30 MB".into(),
        met: Some((idle_kb as f64) < 30.0 * 1024.0),
    });
    rows.push(Row {
        name: "memory: peak (VmHWM) over all the loads above".into(),
        measured: format!("{:.1} MB (VmRSS 2 s after: {:.1} MB)", hwm_kb as f64 / 1024.0, after_kb as f64 / 1024.0),
        baseline: "limit 100 MB".into(),
        ratio: Some(hwm_kb as f64 / 1024.0 / 100.0),
        goal: "< 100 MB".into(),
        met: Some((hwm_kb as f64) < 100.0 * 1024.0),
    });
    let phases = [
        ("decision latency", lat_peak),
        ("1-alert, no rule", none1.peak_kb),
        ("50-alert, no rule", none50.peak_kb),
        ("1-alert, matched", match1.peak_kb),
        ("50-alert, matched", match50.peak_kb),
    ];
    rows.push(Row::info(
        "memory: peak VmRSS per phase (sampled every 10 ms)",
        phases.iter().map(|(p, kb)| format!("{p} {:.1} MB", *kb as f64 / 1024.0)).collect::<Vec<_>>().join("; "),
        "-",
        None,
    ));

    println!("rules scale...");
    bench_rules(rows);

    println!("kafka feedback...");
    if let Err(why) = bench_kafka(rows).await {
        println!("  skipped: {why}");
        rows.push(Row::info("Kafka feedback throughput vs raw rdkafka consumer", format!("skipped: {why}"), "-", None));
    }
}

fn main() {
    if std::env::var_os("BENCH_BARE_SERVER").is_some() {
        return Bare::serve();
    }
    let started = Instant::now();
    println!("machine: {}", machine());
    println!("binary: {BIN}");
    let busy = machine_busy_seconds();
    std::thread::sleep(Duration::from_secs(1));
    let background = machine_busy_seconds() - busy;
    println!("CPU busy before the run (other processes): {background:.2} cores of the machine's");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut rows = Vec::new();
    rt.block_on(run(&mut rows));
    println!("\nmachine: {}", machine());
    println!("CPU busy before the run (other processes): {background:.2} cores");
    println!("run took {:.0} s, BENCH_SECONDS={}\n", started.elapsed().as_secs_f64(), env_or("BENCH_SECONDS", 5.0));
    println!("| benchmark | measured | baseline (same run) | ratio | goal | met |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        let ratio = r.ratio.map(|x| format!("{x:.2}x")).unwrap_or_else(|| "-".into());
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        println!("| {} | {} | {} | {ratio} | {} | {met} |", r.name, r.measured, r.baseline, r.goal);
    }
}
