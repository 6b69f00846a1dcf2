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

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use backstop::audit::{self, AuditLog, AuditOptions, Entry, Filter, GENESIS, Kind, Record};
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

fn received(i: u64) -> Entry {
    Entry::new(Kind::Received).event_id(format!("{:016x}-1795550591", i)).source("alertmanager").detail(json!({
        "alert": {
            "name": "CanaryHighErrorRate", "status": "firing", "fingerprint": format!("{:016x}", i),
            "labels": { "alertname": "CanaryHighErrorRate", "namespace": "sms-app", "virtualservice": "model-service", "severity": "critical", "canary": "v2" },
            "annotations": { "summary": "Canary v2 of model-service is failing" },
            "starts_at": "2026-11-24T20:03:11Z",
        },
        "delivery": { "receiver": "backstop", "groupKey": "{}:{namespace=\"sms-app\"}", "truncatedAlerts": 0 },
    }))
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
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["--config", config.to_str().unwrap(), "--data-dir", data.to_str().unwrap()])
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let ready = t.elapsed();
    assert!(line.starts_with("backstop listening"), "{line}");
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(child.wait().unwrap().success());
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

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let n: u64 = std::env::var("BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let mut rows = Vec::new();
    let data = tempfile::tempdir().unwrap();
    let audit_dir = data.path().join("audit");
    println!("writing {n} records...");
    let t = Instant::now();
    fill(&audit_dir, n);
    println!("  {:.1} s, {:.0} MB", t.elapsed().as_secs_f64(), dir_bytes(&audit_dir) as f64 / 1e6);
    println!("restart...");
    bench_restart(&root, data.path(), &mut rows);
    println!("verify...");
    bench_verify(&audit_dir, &mut rows);
    drop(data);
    println!("append...");
    bench_append(&mut rows);
    println!("query...");
    bench_query(&mut rows);

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
