//! Audit log at scale (issue #9), as ratios against baselines measured in the same run:
//!
//!   cargo bench --bench audit            (BENCH_RECORDS=1000000 by default)
//!
//! 1. Restart to ready (the real binary, until it listens) with the records on disk and a
//!    snapshot, against a restart with an empty log. Goal: under 1 s and under 5x.
//! 2. `audit verify` over the records, against `sha256sum` over the same bytes. Goal: >= 0.5x.
//! 3. Append throughput with rotation (1 MiB segments), against the same without. Goal: >= 0.95x.
//! 4. A query for the last hour with a year of daily segments, against the same with a tenth of
//!    the segments. Goal: about 1x (the time does not grow with older segments).
//! 5. The on-call page (`GET /ui/`, a target's last day, an action's page) from the real binary
//!    over a busy day of records (alerts no rule matches; every 50th held by the cooldown, every
//!    10,000th a rollback, copied from what the binary itself recorded), against the same pages
//!    over the same decisions and rollbacks without the intake. Goal: under 200 ms and under 2x
//!    (what the page reads does not grow with the intake around it).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use backstop::audit::{self, AuditLog, AuditOptions, Entry, Filter, GENESIS, Kind, Record};
use backstop::event::{Alert, AlertStatus, AlertsRecord, SourceKind};
use chrono::{TimeZone, Utc};
use serde_json::json;
use sha2::{Digest, Sha256};

struct Row {
    name: String,
    measured: String,
    baseline: String,
    ratio: f64,
    goal: String,
    met: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Alert `i`'s delivery as the binary records it: one `received` record with the one alert.
fn received(i: u64) -> Entry {
    let labels = [
        ("alertname", "CanaryHighErrorRate"),
        ("namespace", "sms-app"),
        ("virtualservice", "model-service"),
        ("severity", "critical"),
        ("canary", "v2"),
    ];
    let starts_at = chrono::DateTime::parse_from_rfc3339("2026-11-24T20:03:11Z").unwrap().to_utc();
    let alert = Alert {
        id: format!("{:016x}-{}", i, starts_at.timestamp()),
        source: SourceKind::Alertmanager,
        name: "CanaryHighErrorRate".into(),
        status: AlertStatus::Firing,
        labels: labels.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        annotations: [("summary".to_string(), "Canary v2 of model-service is failing".to_string())].into(),
        starts_at,
        ends_at: None,
        fingerprint: format!("{:016x}", i),
        generator_url: String::new(),
    };
    let delivery = json!({ "receiver": "backstop", "groupKey": "{}:{namespace=\"sms-app\"}", "truncatedAlerts": 0 });
    // As a value (not `detail_of`'s text): `year_of_segments` serialises whole records itself.
    Entry::new(Kind::Received).source("alertmanager").detail(json!(AlertsRecord::of(&delivery, &[alert])))
}

fn fill(dir: &Path, n: u64) {
    let log = AuditLog::open(dir, AuditOptions::default()).unwrap();
    let batch = 5_000;
    let mut i = 0;
    while i < n {
        let k = batch.min(n - i);
        log.append_blocking((i..i + k).map(received).collect()).unwrap();
        i += k;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(log.close()).unwrap();
}

fn dir_bytes(dir: &Path) -> u64 {
    audit::segments(dir).unwrap().iter().map(|(_, p)| std::fs::metadata(p).unwrap().len()).sum()
}

/// Start `backstop serve` on `data`, return the time until it listens, then stop it (SIGTERM).
fn start_to_ready(config: &Path, data: &Path) -> Duration {
    let (server, ready) = Served::start_with(config, Some(data));
    assert!(server.stop(), "SIGTERM is a clean exit");
    ready
}

fn bench_restart(root: &Path, data: &Path, rows: &mut Vec<Row>) {
    let config = root.join("backstop.yaml");
    // The first start rebuilds the guards' state from the whole log and writes a snapshot.
    let cold = start_to_ready(&config, data);
    println!("  first start, no snapshot (reads the whole log): {:.0} ms", cold.as_secs_f64() * 1e3);
    let empty = tempfile::tempdir().unwrap();
    let mut with = Vec::new();
    let mut without = Vec::new();
    for _ in 0..7 {
        with.push(start_to_ready(&config, data).as_secs_f64());
        without.push(start_to_ready(&config, empty.path()).as_secs_f64());
    }
    let (w, e) = (median(with), median(without));
    rows.push(Row {
        name: "restart to ready, full log vs empty".into(),
        measured: format!("{:.1} ms", w * 1e3),
        baseline: format!("{:.1} ms", e * 1e3),
        ratio: w / e,
        goal: "< 1 s and <= 5x".into(),
        met: w < 1.0 && w / e <= 5.0,
    });
}

fn bench_verify(data: &Path, rows: &mut Vec<Row>) {
    let bytes = dir_bytes(data) as f64;
    let segs: Vec<PathBuf> = audit::segments(data).unwrap().into_iter().map(|(_, p)| p).collect();
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let report = audit::verify(data).unwrap();
        ours.push(t.elapsed().as_secs_f64());
        assert!(report.records > 0);
        let t = Instant::now();
        let out = Command::new("sha256sum").args(&segs).output().unwrap();
        theirs.push(t.elapsed().as_secs_f64());
        assert!(out.status.success());
    }
    let (o, s) = (bytes / median(ours) / 1e6, bytes / median(theirs) / 1e6);
    rows.push(Row {
        name: format!("audit verify, {:.0} MB", bytes / 1e6),
        measured: format!("{o:.0} MB/s"),
        baseline: format!("{s:.0} MB/s (sha256sum)"),
        ratio: o / s,
        goal: ">= 0.5x".into(),
        met: o / s >= 0.5,
    });
}

fn appends_per_second(segment_max_bytes: u64, n: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let log = AuditLog::open(dir.path(), AuditOptions { segment_max_bytes, ..AuditOptions::default() }).unwrap();
        let t = Instant::now();
        let senders = 64;
        let tasks: Vec<_> = (0..senders)
            .map(|s| {
                let log = log.clone();
                tokio::spawn(async move {
                    for i in 0..n / senders {
                        log.append(vec![received(s * n + i)]).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let rate = (n / senders * senders) as f64 / t.elapsed().as_secs_f64();
        log.close().await.unwrap();
        rate
    })
}

fn bench_append(rows: &mut Vec<Row>) {
    let n = 40_000;
    let mut rot = Vec::new();
    let mut flat = Vec::new();
    for _ in 0..3 {
        flat.push(appends_per_second(64 << 20, n));
        rot.push(appends_per_second(1 << 20, n));
    }
    let (r, f) = (median(rot), median(flat));
    rows.push(Row {
        name: "append, 64 concurrent senders, 1 MiB segments vs none".into(),
        measured: format!("{r:.0} records/s"),
        baseline: format!("{f:.0} records/s"),
        ratio: r / f,
        goal: ">= 0.95x".into(),
        met: r / f >= 0.95,
    });
}

/// A log of `days` daily segments ending now, `per_day` records each, written directly.
fn year_of_segments(dir: &Path, days: i64, per_day: u64) {
    let now = Utc::now();
    let mut prev = GENESIS.to_string();
    let mut seq = 1;
    for d in (0..days).rev() {
        let start = now - chrono::Duration::days(d + 1);
        let path = dir.join(format!("seg-{seq:020}.jsonl"));
        let mut out = Vec::new();
        for i in 0..per_day {
            let time = start + chrono::Duration::seconds((86_000 * i / per_day) as i64);
            let time = Utc.timestamp_opt(time.timestamp(), 0).unwrap();
            let r = Record { seq, time, prev: prev.clone(), entry: received(seq) };
            let line = serde_json::to_vec(&r).unwrap();
            prev = hex::encode(Sha256::digest(&line));
            out.extend_from_slice(&line);
            out.push(b'\n');
            seq += 1;
        }
        std::fs::write(path, out).unwrap();
    }
}

fn bench_query(rows: &mut Vec<Row>) {
    let time_query = |days: i64| {
        let dir = tempfile::tempdir().unwrap();
        year_of_segments(dir.path(), days, 200);
        let filter = Filter { since: Some(Utc::now() - chrono::Duration::hours(1)), ..Default::default() };
        let mut times = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            let found = audit::query(dir.path(), &filter).unwrap();
            times.push(t.elapsed().as_secs_f64());
            assert!(!found.is_empty());
        }
        median(times)
    };
    let (year, tenth) = (time_query(365), time_query(36));
    rows.push(Row {
        name: "query last hour, 365 daily segments vs 36".into(),
        measured: format!("{:.2} ms", year * 1e3),
        baseline: format!("{:.2} ms", tenth * 1e3),
        ratio: year / tenth,
        goal: "~1x (<= 1.5x)".into(),
        met: year / tenth <= 1.5,
    });
}

/// A working directory as a user's: the shipped rules, the demo manifests, a config.
fn page_workdir() -> tempfile::TempDir {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::Builder::new().prefix("backstop-pages-").tempdir().unwrap();
    for (from, to) in [("rules", "rules"), ("deploy/local", "manifests")] {
        std::fs::create_dir_all(dir.path().join(to)).unwrap();
        for entry in std::fs::read_dir(root.join(from)).unwrap() {
            let p = entry.unwrap().path();
            if p.is_file() {
                std::fs::copy(&p, dir.path().join(to).join(p.file_name().unwrap())).unwrap();
            }
        }
    }
    let config = "listen: 127.0.0.1:0\ndata_dir: data\nrules: [rules]\ntarget:\n  manifests:\n    dir: manifests\n\
                  guards:\n  max_actions: 1000000\n  window: 1h\n";
    std::fs::write(dir.path().join("backstop.yaml"), config).unwrap();
    dir
}

/// `backstop serve` until stopped or dropped (SIGTERM), and its address.
struct Served {
    child: Option<std::process::Child>,
    url: String,
}

impl Served {
    /// `serve` with the config in `dir`.
    fn start(dir: &Path) -> Served {
        Served::start_with(&dir.join("backstop.yaml"), None).0
    }

    /// `serve` with `config` (and `data` as its data directory, if given), once it listens, and
    /// the time it took to.
    fn start_with(config: &Path, data: Option<&Path>) -> (Served, Duration) {
        let t = Instant::now();
        let mut command = Command::new(env!("CARGO_BIN_EXE_backstop"));
        command.arg("--config").arg(config);
        if let Some(data) = data {
            command.arg("--data-dir").arg(data);
        }
        let mut child = command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let ready = t.elapsed();
        let url = line.trim().strip_prefix("backstop listening on ").unwrap_or_else(|| panic!("{line}"));
        (Served { child: Some(child), url: url.trim_end_matches('/').to_string() }, ready)
    }

    /// Stop it (SIGTERM): whether it exited cleanly.
    fn stop(mut self) -> bool {
        self.child.take().is_some_and(terminate)
    }
}

fn terminate(mut child: std::process::Child) -> bool {
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    child.wait().is_ok_and(|s| s.success())
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }
}

/// The records a real rollback and a real held alert leave: taken from the binary itself, so
/// that the big log holds what the guards' state is built from in production.
fn real_decisions(rt: &tokio::runtime::Runtime) -> (Vec<Entry>, Vec<Entry>) {
    let firing =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/alertmanager/firing.json"))
            .unwrap();
    let dir = page_workdir();
    let server = Served::start(dir.path());
    let client = reqwest::Client::new();
    let post = |body: String| {
        let url = format!("{}/v1/alertmanager", server.url);
        let client = client.clone();
        rt.block_on(async move {
            let resp = client.post(url).header("content-type", "application/json").body(body).send().await.unwrap();
            resp.json::<serde_json::Value>().await.unwrap()
        })
    };
    let first = post(firing.clone());
    assert_eq!(first["results"][0]["outcome"], "applied", "{first}");
    let second = post(firing.replace("a9c5c3b76558e44d", "0123456789abcdef"));
    assert_eq!(second["results"][0]["outcome"], "held", "{second}");
    drop(server);
    let records = audit::query(&dir.path().join("data/audit"), &Filter::default()).unwrap();
    let action = first["results"][0]["action_id"].as_str().unwrap();
    let of = |event: &serde_json::Value| -> Vec<Entry> {
        let event = event.as_str().unwrap();
        records
            .iter()
            .filter(|r| {
                r.entry.event_id.as_deref() == Some(event)
                    || r.entry.action_id.as_deref() == Some(action) && event == first["results"][0]["event_id"]
            })
            .filter(|r| r.entry.kind != Kind::Received)
            .map(|r| r.entry.clone())
            .collect()
    };
    (of(&first["results"][0]["event_id"]), of(&second["results"][0]["event_id"]))
}

/// Action `i`'s id: a UUIDv7 of now (as the binary makes them), with `i` in its last bits.
fn action_id(i: u64) -> String {
    let now = uuid::Uuid::now_v7().to_string();
    format!("{}{i:012x}", &now[..24])
}

/// Copies of `template` for event `i` (and action `i`, if it has one).
fn copy_of(template: &[Entry], i: u64) -> Vec<Entry> {
    template
        .iter()
        .cloned()
        .map(|mut e| {
            e.event_id = e.event_id.map(|_| format!("{i:016x}-1795550591"));
            e.action_id = e.action_id.map(|_| action_id(i));
            e.key = e.key.map(|k| format!("{k}|{i}"));
            e
        })
        .collect()
}

/// A busy day of `n` alerts: with `intake`, every alert's `received` record (no rule matches
/// it); among them every 50th a matching alert held by the cooldown, every 10,000th a rollback.
/// Returns the last rollback's action id.
fn busy_day(dir: &Path, n: u64, intake: bool, action: &[Entry], held: &[Entry]) -> String {
    let log = AuditLog::open(dir, AuditOptions::default()).unwrap();
    let (mut i, mut last) = (0, String::new());
    while i < n {
        let mut batch: Vec<Entry> = Vec::with_capacity(5_100);
        while batch.len() < 5_000 && i < n {
            if intake {
                batch.push(received(i));
            }
            if i % 50 == 49 {
                batch.extend(copy_of(held, i));
            }
            if i % 10_000 == 9_999 {
                let copy = copy_of(action, i);
                last = copy.iter().find_map(|e| e.action_id.clone()).unwrap();
                batch.extend(copy);
            }
            i += 1;
        }
        log.append_blocking(batch).unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(log.close()).unwrap();
    last
}

/// Median time of `GET path` (the whole page read), and its size; the page must hold `expect`.
fn page_time(rt: &tokio::runtime::Runtime, base: &str, path: &str, expect: &str) -> (f64, usize) {
    let client = reqwest::Client::new();
    let url = format!("{base}{path}");
    rt.block_on(async {
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..15 {
            let t = Instant::now();
            let resp = client.get(&url).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{url}");
            let page = resp.text().await.unwrap();
            assert!(page.contains(expect), "{url} lacks {expect:?}: {page}");
            size = page.len();
            times.push(t.elapsed().as_secs_f64());
        }
        (median(times), size)
    })
}

/// The on-call page (issue #19) over a busy day of `n` alerts: the overview, the target's last
/// day and the last rollback's page, each timed.
fn pages_over(
    rt: &tokio::runtime::Runtime,
    n: u64,
    intake: bool,
    action: &[Entry],
    held: &[Entry],
) -> Vec<(f64, usize)> {
    let dir = page_workdir();
    let audit_dir = dir.path().join("data/audit");
    let last = busy_day(&audit_dir, n, intake, action, held);
    let records = audit::tail(&audit_dir, 1).unwrap()[0].seq;
    println!("  {records} records, {:.0} MB", dir_bytes(&audit_dir) as f64 / 1e6);
    let server = Served::start(dir.path());
    let pages = [
        ("/ui/".to_string(), "href=\"/ui/targets/sms-app/model-service\""),
        ("/ui/targets/sms-app/model-service".to_string(), "kind held\">held</span> ×"),
        (format!("/ui/actions/{last}"), "kind applied"),
    ];
    let out = pages.iter().map(|(p, expect)| page_time(rt, &server.url, p, expect)).collect();
    drop(server);
    out
}

fn bench_pages(n: u64, rows: &mut Vec<Row>) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (action, held) = real_decisions(&rt);
    println!("  a busy day, {n} alerts:");
    let big = pages_over(&rt, n, true, &action, &held);
    println!("  the same day's decisions and rollbacks without the intake:");
    let small = pages_over(&rt, n, false, &action, &held);
    for (i, page) in ["overview", "a target's last day", "a rollback's page"].iter().enumerate() {
        let ((b, size), (s, _)) = (big[i], small[i]);
        rows.push(Row {
            name: format!("on-call page: {page}, a day of {n} alerts vs its decisions alone"),
            measured: format!("{:.1} ms ({} kB)", b * 1e3, size / 1000),
            baseline: format!("{:.1} ms", s * 1e3),
            ratio: b / s,
            goal: "< 200 ms; <= 2x or within 1 ms".into(),
            met: b < 0.2 && (b / s <= 2.0 || b - s < 0.001),
        });
    }
}

/// Restart, verify, append and query.
fn rest(root: &Path, n: u64, rows: &mut Vec<Row>) {
    let data = tempfile::tempdir().unwrap();
    let audit_dir = data.path().join("audit");
    println!("writing {n} records...");
    let t = Instant::now();
    fill(&audit_dir, n);
    println!("  {:.1} s, {:.0} MB", t.elapsed().as_secs_f64(), dir_bytes(&audit_dir) as f64 / 1e6);
    println!("restart...");
    bench_restart(root, data.path(), rows);
    println!("verify...");
    bench_verify(&audit_dir, rows);
    drop(data);
    println!("append...");
    bench_append(rows);
    println!("query...");
    bench_query(rows);
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let n: u64 = std::env::var("BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let mut rows = Vec::new();
    // `BENCH_ONLY=pages` runs the on-call page's part alone.
    if std::env::var("BENCH_ONLY").as_deref() != Ok("pages") {
        rest(&root, n, &mut rows);
    }
    println!("on-call page...");
    bench_pages(n, &mut rows);

    println!("\n| benchmark | measured | baseline (same run) | ratio | goal | met |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.2}x | {} | {} |",
            r.name,
            r.measured,
            r.baseline,
            r.ratio,
            r.goal,
            if r.met { "yes" } else { "NO" }
        );
    }
}
