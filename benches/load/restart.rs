//! Restart after `kill -9` under load (phase 6, issue #20): the release binary with the shipped
//! defaults (the working directory of the intake phase; `audit.snapshot_records` and
//! `snapshot_interval` not set), loaded for BENCH_RESTART_SECONDS (15) with 50-alert payloads of
//! alerts no rule matches by the 64-connection client, which remembers every payload answered
//! 200; then SIGKILL while the load runs, the client stopped right after, and the binary started
//! again on the same directory: the time from spawn until `GET /readyz` answers 200 (polled every
//! 5 ms), against the same for the first start of that directory, empty. Then every acknowledged
//! alert id must be in the log, and `backstop audit verify` must pass.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use crate::common::*;
use crate::intake::mb;
use crate::latency::{BENCH_RULES, manifest_in};
use crate::servers::{Backstop, segment_bytes, segments, workdir};
use crate::{BIN, Row};

pub async fn bench_restart(rows: &mut Vec<Row>) {
    let load_for = Duration::from_secs_f64(env_or("BENCH_RESTART_SECONDS", 15.0));
    let secs = load_for.as_secs_f64();
    let payload = Arc::new(Payload::new(&NO_RULE, 50));
    let dir = workdir(BENCH_RULES, &[("bench.yaml".into(), manifest_in("bench"))], "");
    let audit_dir = dir.path().join("data/audit");
    reader_reads_both_formats();

    // The baseline: the first start, on an empty data directory.
    let (mut server, empty) = match start_until_ready(dir.path()).await {
        Ok(started) => started,
        Err(why) => return failed(rows, secs, &format!("first start: {why}")),
    };
    println!("  start on an empty data directory: ready after {}", ms(empty.as_secs_f64()));

    let acked = load_then_kill(&mut server, payload.clone(), load_for).await;
    drop(server);
    let (records, bytes) = (count_records(&audit_dir), segment_bytes(&audit_dir));
    let alerts = acked.payloads.len() * payload.alerts;
    println!(
        "  killed after {secs} s: {} payloads answered 200 ({} alerts){}; the log: {} records, {}",
        per_s(acked.payloads.len() as f64),
        per_s(alerts as f64),
        acked.problems(),
        per_s(records as f64),
        mb(bytes)
    );

    let (restarted, ready) = match start_until_ready(dir.path()).await {
        Ok(started) => started,
        Err(why) => return failed(rows, secs, &format!("restart after kill -9: {why}")),
    };
    let restored = restored_line(dir.path());
    println!("  restarted: ready after {} ({restored})", ms(ready.as_secs_f64()));
    restarted.stop();

    let t = Instant::now();
    let verify = Command::new(BIN)
        .arg("--config")
        .arg(dir.path().join("backstop.yaml"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["audit", "verify"])
        .output()
        .unwrap();
    let verify_took = t.elapsed().as_secs_f64();
    let verified = if verify.status.success() {
        format!("`backstop audit verify` passed ({:.1} s)", verify_took)
    } else {
        let out = String::from_utf8_lossy(&verify.stdout).to_string() + &String::from_utf8_lossy(&verify.stderr);
        format!("`backstop audit verify` FAILED: {}", out.trim().lines().next().unwrap_or("(no output)"))
    };
    let lost = match received_ids(&audit_dir) {
        Ok((ids, torn)) => {
            if let Some(at) = torn {
                println!("  skipped the log's last line, torn by the kill: {at}");
            }
            let lost: Vec<String> =
                acked.payloads.iter().flat_map(|&n| payload.ids(n)).filter(|id| !ids.contains(id)).collect();
            if lost.is_empty() {
                Ok(format!("all {} acknowledged alerts in the log", per_s(alerts as f64)))
            } else {
                Err(format!("LOST {} of {} acknowledged alerts, e.g. {}", lost.len(), alerts, lost[0]))
            }
        }
        Err(why) => Err(format!("the log could not be read: {why}")),
    };
    println!("  {}; {verified}", lost.as_ref().unwrap_or_else(|e| e));

    rows.push(Row {
        name: format!("restart after kill -9 after {secs} s of 50-alert payloads: time to ready"),
        measured: format!("{} ({restored})", ms(ready.as_secs_f64())),
        baseline: format!("{} (start on an empty data directory)", ms(empty.as_secs_f64())),
        ratio: Some(ready.as_secs_f64() / empty.as_secs_f64()),
        goal: "< 1 s".into(),
        met: Some(ready < Duration::from_secs(1)),
    });
    rows.push(Row::info(
        "restart after kill -9: the log at the kill",
        format!("{} records, {} (seg-*.jsonl)", per_s(records as f64), mb(bytes)),
        format!(
            "{} payloads answered 200 = {} alerts in {secs} s{}",
            per_s(acked.payloads.len() as f64),
            per_s(alerts as f64),
            acked.problems()
        ),
        None,
    ));
    rows.push(Row {
        name: "restart after kill -9: every acknowledged alert in the log, and the log verifies".into(),
        measured: format!("{}; {verified}", lost.as_ref().unwrap_or_else(|e| e)),
        baseline: "-".into(),
        ratio: None,
        goal: "none lost, verify passes".into(),
        met: Some(lost.is_ok() && verify.status.success()),
    });
}

/// A row that says the phase could not be run to its end, and why.
fn failed(rows: &mut Vec<Row>, secs: f64, why: &str) {
    println!("  FAILED: {why}");
    rows.push(Row {
        name: format!("restart after kill -9 after {secs} s of 50-alert payloads: time to ready"),
        measured: format!("FAILED: {}", why.lines().next().unwrap_or("")),
        baseline: "-".into(),
        ratio: None,
        goal: "< 1 s".into(),
        met: Some(false),
    });
}

/// `backstop serve` on `dir`, and the time from its spawn until `GET /readyz` answers 200 (polled
/// every 5 ms; the port is known from its first line on stdout, which comes once it listens).
async fn start_until_ready(dir: &Path) -> Result<(Backstop, Duration), String> {
    let spawned = Instant::now();
    let d = dir.to_path_buf();
    let server = tokio::task::spawn_blocking(move || Backstop::start(&d)).await.map_err(|e| e.to_string())?;
    let client = reqwest::Client::new();
    let url = format!("http://{}/readyz", server.addr);
    loop {
        if let Ok(r) = client.get(&url).send().await
            && r.status() == 200
        {
            return Ok((server, spawned.elapsed()));
        }
        if spawned.elapsed() > Duration::from_secs(120) {
            return Err(format!("/readyz did not answer 200 within 120 s; its log:\n{}", server.log_tail()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The payloads (request numbers) answered 200, and what else the client saw before the kill.
#[derive(Default)]
struct Acked {
    payloads: Vec<u64>,
    other: BTreeMap<u16, u64>,
    errors: u64,
    example: Option<String>,
}

impl Acked {
    fn problems(&self) -> String {
        if self.other.is_empty() && self.errors == 0 {
            return String::new();
        }
        format!(
            " (before the kill, NOT 200: {:?}, connection errors {}, e.g. {:?})",
            self.other, self.errors, self.example
        )
    }
}

/// `CONNECTIONS` tasks posting `payload` back to back for `load_for`, then `kill -9` of the
/// server while they still post, and the client stopped right after. What failed after the
/// kill (the requests in flight) is not counted.
async fn load_then_kill(server: &mut Backstop, payload: Arc<Payload>, load_for: Duration) -> Acked {
    let addr = server.addr;
    let (killed, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (payload, killed, stop) = (payload.clone(), killed.clone(), stop.clone());
            tokio::spawn(async move {
                let mut acked = Acked::default();
                let mut sender = None;
                while !stop.load(Ordering::Relaxed) {
                    if sender.is_none() {
                        match connect(addr).await {
                            Ok(s) => sender = Some(s),
                            Err(e) => {
                                if !killed.load(Ordering::Relaxed) {
                                    acked.errors += 1;
                                    acked.example.get_or_insert(e);
                                }
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        }
                    }
                    let n = SEQ.fetch_add(1, Ordering::Relaxed);
                    match post(sender.as_mut().unwrap(), addr, payload.make(n)).await {
                        Ok((200, _)) => acked.payloads.push(n),
                        Ok(_) | Err(_) if killed.load(Ordering::Relaxed) => sender = None,
                        Ok((status, body)) => {
                            *acked.other.entry(status).or_default() += 1;
                            acked
                                .example
                                .get_or_insert_with(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into());
                        }
                        Err(e) => {
                            acked.errors += 1;
                            acked.example.get_or_insert(e);
                            sender = None;
                        }
                    }
                }
                acked
            })
        })
        .collect();
    tokio::time::sleep(load_for).await;
    killed.store(true, Ordering::Relaxed);
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    let mut total = Acked::default();
    for t in tasks {
        let a = t.await.unwrap();
        total.payloads.extend(a.payloads);
        total.errors += a.errors;
        for (s, n) in a.other {
            *total.other.entry(s).or_default() += n;
        }
        if total.example.is_none() {
            total.example = a.example;
        }
    }
    total
}

/// Complete records (lines ending in a newline) in the log's segments.
fn count_records(audit_dir: &Path) -> u64 {
    let mut n = 0;
    let mut buf = vec![0; 1 << 20];
    for path in segments(audit_dir) {
        let mut file = std::fs::File::open(path).unwrap();
        loop {
            let read = file.read(&mut buf).unwrap();
            if read == 0 {
                break;
            }
            n += memchr::memchr_iter(b'\n', &buf[..read]).count() as u64;
        }
    }
    n
}

/// From the restarted server's log: the guards' state it restored (the snapshot's seq and the
/// records it replayed after it).
fn restored_line(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("backstop.log")).unwrap_or_default();
    let Some(line) = log.lines().find(|l| l.contains("guard state restored")) else {
        return "no `guard state restored` line in its log".into();
    };
    let field = |name: &str| -> String {
        let at = line.find(&format!("{name}=")).map(|i| i + name.len() + 1);
        at.map(|i| line[i..].split_whitespace().next().unwrap_or("").to_string()).unwrap_or_else(|| "?".into())
    };
    let number = |v: String| v.parse::<f64>().map(per_s).unwrap_or(v);
    let snapshot = field("snapshot");
    let snapshot = match snapshot.strip_prefix("Some(").and_then(|s| s.strip_suffix(')')) {
        Some(seq) => format!("the snapshot at seq {}", number(seq.to_string())),
        None if snapshot == "None" => "no snapshot".to_string(),
        None => format!("snapshot {snapshot}"),
    };
    format!("replayed {} records after {snapshot}", number(field("replayed")))
}

/// The fields of a record this reads; the rest is skipped unparsed.
#[derive(Deserialize)]
struct Record {
    kind: Option<String>,
    event_id: Option<String>,
    detail: Option<Detail>,
}

#[derive(Deserialize)]
struct Detail {
    alerts: Option<Value>,
}

/// Every alert id the log's `received` records name, read from every line of every segment
/// (`seg-*.jsonl`, in order): the record's top-level `event_id` where there is one (the current
/// format: one `received` record per alert), and the `id` of each of `detail.alerts` where that
/// is an array (format 2: one `received` record per delivery, its alerts in it).
///
/// A line that does not parse is an error, except the very last line of the last segment: a
/// write torn by `kill -9` (its request was never answered, since answers wait for the fsync of
/// the whole line), which is skipped.
/// Returns the ids, and which line was skipped if one was.
fn received_ids(audit_dir: &Path) -> Result<(HashSet<String>, Option<String>), String> {
    let mut ids = HashSet::new();
    let mut torn: Option<String> = None;
    let mut line = Vec::new();
    for path in segments(audit_dir) {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(&path).map_err(|e| e.to_string())?);
        let mut number = 0;
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).map_err(|e| format!("{name}: {e}"))? == 0 {
                break;
            }
            number += 1;
            if let Some(at) = torn.take() {
                return Err(format!("{at} does not parse, and it is not the log's last line"));
            }
            // The common shape first (only the fields needed); any other valid JSON as a Value.
            let (kind, event_id, alerts) = match serde_json::from_slice::<Record>(&line) {
                Ok(r) => (r.kind, r.event_id, r.detail.and_then(|d| d.alerts)),
                Err(_) => match serde_json::from_slice::<Value>(&line) {
                    Ok(v) => (
                        v["kind"].as_str().map(str::to_string),
                        v["event_id"].as_str().map(str::to_string),
                        v.get("detail").and_then(|d| d.get("alerts")).cloned(),
                    ),
                    Err(e) => {
                        torn = Some(format!("{name} line {number} ({e})"));
                        continue;
                    }
                },
            };
            if kind.as_deref() != Some("received") {
                continue;
            }
            ids.extend(event_id);
            if let Some(Value::Array(alerts)) = alerts {
                ids.extend(alerts.iter().filter_map(|a| a["id"].as_str()).map(str::to_string));
            }
        }
    }
    Ok((ids, torn))
}

/// `received_ids` on a made-up log: a record of each format, records of other kinds, and a torn
/// last line (skipped); a line that does not parse before the last is an error. The coming format
/// is not in the binary yet, so the reader is proven here, before it is trusted.
fn reader_reads_both_formats() {
    let dir = tempfile::Builder::new().prefix("backstop-load-reader-").tempdir().unwrap();
    let one = r#"{"seq":1,"kind":"received","event_id":"a-1","source":"alertmanager","detail":{"alert":{"id":"a-1"}}}"#;
    let two = r#"{"seq":2,"kind":"received","source":"alertmanager","detail":{"format":2,"delivery":{"receiver":"x"},"alerts":[{"id":"b-1","status":"firing","labels":{}},{"id":"b-2"}]}}"#;
    let other = r#"{"seq":3,"kind":"decided","event_id":"c-1","detail":{"alerts":[{"id":"c-2"}]}}"#;
    let seal = r#"{"seq":4,"kind":"seal","detail":null}"#;
    let segment = |seq: u64, text: &str| std::fs::write(dir.path().join(format!("seg-{seq:020}.jsonl")), text).unwrap();
    segment(1, &format!("{one}\n{two}\n"));
    segment(3, &format!("{other}\n{seal}\n{{\"seq\":5,\"kind\":\"rec"));
    std::fs::write(dir.path().join("seg-00000000000000000001.idx"), "not json\n").unwrap();
    let (ids, torn) = received_ids(dir.path()).unwrap();
    let want: HashSet<String> = ["a-1", "b-1", "b-2"].into_iter().map(String::from).collect();
    assert_eq!(ids, want);
    assert!(torn.is_some_and(|at| at.contains("seg-00000000000000000003.jsonl line 3")));
    segment(1, &format!("{one}\n{{\"seq\":2,\"kind\n{two}\n"));
    assert!(received_ids(dir.path()).is_err(), "a line that does not parse before the last is an error");
}
