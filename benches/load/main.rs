//! Load on the running service (issue #7), as ratios against ceilings measured in the same run
//! on the same machine with the same client:
//!
//!   cargo bench --bench load     (BENCH_SECONDS=5 per load phase after 1 s of warm-up, the goals' phases in rounds; ~4 min)
//!
//! 1. Webhook intake: `POST /v1/alertmanager` of the release binary (manifests target, durable
//!    audit log, logs at info to a file), 64 keep-alive connections from a hyper HTTP/1.1 client
//!    in this process, realistic Alertmanager v4 payloads of 1 and of 50 alerts (distinct
//!    fingerprints and startsAt in every request). Two rule paths, each measured: alerts no rule
//!    matches (`CanaryHighLatency` at severity `warning`; the shipped rule wants `critical|page`),
//!    and alerts the shipped rule `canary-high-error-rate` matches (the first rolls
//!    `sms-app/model-service` back in its manifest, the rest are held by the rule's 15m cooldown:
//!    an alert storm on one canary).
//!    The reference: the durable group-commit server, a bare axum server (2 workers, in a process
//!    of its own: this executable with BENCH_BARE_SERVER=1 and BENCH_BARE_DURABLE_DIR) that
//!    appends every body to a file and answers once it is fdatasync'd, in group commit (one
//!    writer thread, one write and one fdatasync for all that is queued): the least any server
//!    with a durable record of every request does. Same payloads, same client, same run, and
//!    in turn with backstop: BENCH_ROUNDS (3) rounds of each payload, each round the durable
//!    server, the floor (below) and backstop for BENCH_ROUND_SECONDS (3) after 0.5 s of
//!    warm-up, every other round in the reverse order, each server started for its measurement
//!    on an empty directory that is deleted after it; a round's ratio is taken within the
//!    round and the figure is the median of the rounds' (measured one after the other, minutes
//!    apart, the durable server's own rate differed by up to a half: this machine's disk slows
//!    as the gigabytes a run writes accumulate on it, for every process writing, and recovers
//!    once they are deleted).
//!    Goals (alerts no rule matches): 1-alert payloads >= 0.8x the durable group-commit server;
//!    50-alert payloads >= 0.8x the durable group-commit server. The alert storm is reported
//!    beside them against the same reference. Information: the same bare axum server without
//!    the file (reads the body and answers 200), and the disk's raw rate of fdatasync'd appends
//!    in batches of 64 (sampled three times during the run: the disk may be shared).
//!    Information: the floor, the durable server also reading each body as JSON (syntax only,
//!    `serde::de::IgnoredAny`) and hashing it (SHA-256) before it is queued: the least a server
//!    that checks and fingerprints what it records does per byte, which the durable server does
//!    not (so the share of backstop's gap that is the bytes' own cost shows).
//!    Each phase also reports the server's CPU time per request, the cores used by server, client
//!    and the rest of the machine (which may be shared), and the audit log's fsyncs.
//!    The log's size per input byte: the growth of the audit log's segments (`seg-*.jsonl`, not
//!    their `.idx` indexes nor the snapshot) over each phase against backstop, divided by the
//!    bytes of the request bodies the client sent and had answered in that phase (warm-up
//!    included, since the log records those too). Goal (alerts no rule matches): <= 1.3 bytes of
//!    log per body byte, for 1-alert and for 50-alert payloads each; the alert storm's is
//!    information.
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
//! 6. Restart after kill -9 under load (issue #20): the release binary as in phase 1 (the shipped
//!    defaults for the guards' snapshot), BENCH_RESTART_SECONDS (15) of 50-alert payloads of
//!    alerts no rule matches from the same client, which remembers every alert of every payload
//!    answered 200; SIGKILL while the load runs, then the binary started again on the same
//!    directory: the time from spawn until `GET /readyz` answers 200 (polled every 5 ms), against
//!    the same for the first start of that directory, empty. Goal: < 1 s. Information: the
//!    records and bytes in the log at the kill. Checked, in a row of its own: every acknowledged
//!    alert id is in the log (it says LOST n if not) and `backstop audit verify` passes.
//!
//! Layout: this file runs the phases and prints the rows; `machine` (memory and CPU time from
//! /proc), `servers` (the release binary in a working directory, the bare axum server), `intake`,
//! `latency`, `rules`, `kafka` and `restart` hold the phases; the payloads and the client are
//! `../common/intake.rs` (shared with benches/cluster.rs).
//!
//! Environment: BENCH_SECONDS, BENCH_LATENCY_N (1000), BENCH_MANIFEST_FILES (500),
//! BENCH_RESTART_SECONDS (15),
//! BENCH_KAFKA_MESSAGES (200000: with 50,000 backstop took about 0.4 s, a few of /metrics' 20 ms
//! polls, and the two rates swung by a tenth between runs).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../common/intake.rs"]
mod common;

mod intake;
mod kafka;
mod latency;
mod machine;
mod restart;
mod rules;
mod servers;

use common::*;
use intake::{Disk, Paired, Rounds, intake, mb};
use kafka::bench_kafka;
use latency::*;
use machine::{RssSampler, machine_busy_seconds, status_kb};
use rules::bench_rules;
use servers::{Backstop, Bare, workdir};

pub const BIN: &str = env!("CARGO_BIN_EXE_backstop");

pub struct Row {
    pub name: String,
    pub measured: String,
    pub baseline: String,
    pub ratio: Option<f64>,
    pub goal: String,
    /// None: information, no goal.
    pub met: Option<bool>,
}

impl Row {
    pub fn info(
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

pub fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

async fn run(rows: &mut Vec<Row>) {
    let measure = Duration::from_secs_f64(env_or("BENCH_SECONDS", 5.0));
    let secs = measure.as_secs_f64();
    let warm = Duration::from_secs(1);
    // The goals' phases: rounds of 3 s (after 0.5 s of warm-up on connections already open).
    let rounds: usize = env_or("BENCH_ROUNDS", 3.0) as usize;
    let (round_warm, round_measure) =
        (Duration::from_millis(500), Duration::from_secs_f64(env_or("BENCH_ROUND_SECONDS", 3.0)));
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
    println!("disk: raw group-commit rate, information (sampled three times in the run)...");
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

    println!(
        "intake, alerts no rule matches: {rounds} rounds of each payload, each round the durable \
         group-commit server, the floor (the same, also parsing and hashing every body) and backstop in turn..."
    );
    let (mut durable1, mut floor1, mut none1r) = (Rounds(vec![]), Rounds(vec![]), Rounds(vec![]));
    let (mut durable50, mut floor50, mut none50r) = (Rounds(vec![]), Rounds(vec![]), Rounds(vec![]));
    for (payload, what, d, f, b) in [
        (&one_none, "1 alert", &mut durable1, &mut floor1, &mut none1r),
        (&fifty_none, "50 alerts", &mut durable50, &mut floor50, &mut none50r),
    ] {
        for round in 1..=rounds {
            // Each server fresh, on an empty directory deleted after (`measure_fresh`), and every
            // other round in the reverse order: the disk slows as the run's gigabytes accumulate
            // on it (for every process: measured, a 50-alert payload cost the durable server 52
            // us of CPU on a fresh disk and 210 us once 5 GB had been written, and backstop 320
            // and 371 us), and what is deleted may still be written back for a while.
            let mut measured: [Option<intake::Intake>; 3] = [None, None, None];
            let order: [usize; 3] = if round % 2 == 1 { [0, 1, 2] } else { [2, 1, 0] };
            for i in order {
                measured[i] = Some(measure_fresh(i, payload, round_warm, round_measure).await);
            }
            let [ceiling, least, ours] = measured.map(|m| m.expect("every server is measured each round"));
            println!(
                "  {what}, round {round}: durable {}/s{} ({:.0} us CPU), floor {}/s{} ({:.0} us), backstop {}/s{} \
                 ({:.0} us): {:.2}x the durable server",
                per_s(ceiling.rate),
                ceiling.note,
                ceiling.cpu_per_request * 1e6,
                per_s(least.rate),
                least.note,
                least.cpu_per_request * 1e6,
                per_s(ours.rate),
                ours.note,
                ours.cpu_per_request * 1e6,
                ours.rate / ceiling.rate
            );
            d.0.push(ceiling);
            f.0.push(least);
            b.0.push(ours);
        }
    }
    let (durable_one, durable_fifty) = (durable1.merged(), durable50.merged());
    let (floor_one, floor_fifty) = (floor1.merged(), floor50.merged());
    let (none1, none50) = (none1r.merged(), none50r.merged());
    let round_secs = round_measure.as_secs_f64() * rounds as f64;
    println!("  1 alert, backstop over its rounds: {}", none1.audit(round_secs));
    println!("  50 alerts, backstop over its rounds: {}", none50.audit(round_secs));
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

    // Rows: intake. The goals are the intake's against the durable group-commit server (the
    // least a server with a durable record of every request does, same payloads, same client),
    // the median of the rounds' ratios; an alert storm on one held canary (three records per
    // alert, the guards vetting each) is reported beside them, against the durable server's
    // mean over its rounds. A goal is met only if no round had an answer other than 200.
    let (bare1, bare50) = (bare_one.rate, bare_fifty.rate);
    let (batch50, batch1) = (Disk::median(&disk.batch50), Disk::median(&disk.batch1));
    for (rounds_of, merged, ceiling, reference, payloads) in [
        (&none1r, &none1, &durable1, &durable_one, "1-alert"),
        (&none50r, &none50, &durable50, &durable_fifty, "50-alert"),
    ] {
        let (ratio, lo, hi) = Paired { ours: rounds_of, theirs: ceiling }.rate();
        let alerts = if merged.alerts_rate > merged.rate {
            format!(" = {} alerts/s", per_s(merged.alerts_rate))
        } else {
            String::new()
        };
        rows.push(Row {
            name: format!("intake, {payloads} payloads, no rule matches: vs durable group-commit server"),
            measured: format!(
                "{} req/s{alerts}{}, {:.0} us CPU each",
                per_s(merged.rate),
                merged.note,
                merged.cpu_per_request * 1e6
            ),
            baseline: format!(
                "{} req/s{}, {:.0} us CPU each (means of {rounds} rounds in turn with backstop's)",
                per_s(reference.rate),
                reference.note,
                reference.cpu_per_request * 1e6
            ),
            ratio: Some(ratio),
            goal: ">= 0.8x".into(),
            met: Some(ratio >= 0.8 && merged.note.is_empty() && reference.note.is_empty()),
        });
        rows.push(Row::info(
            format!("  the same, each round's ratio ({payloads}; the figure above is their median)"),
            format!("{lo:.2}x-{hi:.2}x"),
            format!("{rounds} rounds of {:.0} s", round_measure.as_secs_f64()),
            None,
        ));
    }
    for (ours, ceiling, payloads) in [(&match1, &durable_one, "1-alert"), (&match50, &durable_fifty, "50-alert")] {
        rows.push(Row::info(
            format!("intake, {payloads} payloads, rule matches, held by cooldown: vs durable group-commit server"),
            format!("{} req/s = {} alerts/s{}", per_s(ours.rate), per_s(ours.alerts_rate), ours.note),
            format!("{} req/s (mean of its rounds)", per_s(ceiling.rate)),
            Some(ours.rate / ceiling.rate),
        ));
    }
    // The audit log's growth (segments only) per byte of request body the server answered, each
    // phase from its start to its end, warm-up included: the log records those bodies too.
    for (what, payloads, i, goals) in [
        ("no rule matches", "1-alert", &none1, true),
        ("no rule matches", "50-alert", &none50, true),
        ("rule matches, held by cooldown", "1-alert", &match1, false),
        ("rule matches, held by cooldown", "50-alert", &match50, false),
    ] {
        let per = i.log_per_body_byte().unwrap_or(f64::NAN);
        rows.push(Row {
            name: format!("audit log bytes per body byte, {payloads} payloads, {what}"),
            measured: format!("log +{} (seg-*.jsonl)", mb(i.log_bytes.unwrap_or(0))),
            baseline: format!("{} of request bodies answered, warm-up included", mb(i.body_bytes)),
            ratio: Some(per),
            goal: if goals { "<= 1.3x" } else { "info" }.into(),
            met: goals.then_some(per <= 1.3),
        });
    }
    for (payloads, ours, bare) in [("1-alert", &none1, &bare_one), ("50-alert", &none50, &bare_fifty)] {
        rows.push(Row::info(
            format!("intake, {payloads} payloads, no rule matches: vs bare axum (no durable record)"),
            format!("{} req/s", per_s(ours.rate)),
            format!("{} req/s{}", per_s(bare.rate), bare.note),
            Some(ours.rate / bare.rate),
        ));
    }
    rows.push(Row::info(
        "ceiling: durable group-commit server, 1-alert / 50-alert payloads, vs bare axum",
        format!("{} / {} req/s", per_s(durable_one.rate), per_s(durable_fifty.rate)),
        format!("{} / {} req/s", per_s(bare1), per_s(bare50)),
        Some(durable_one.rate / bare1),
    ));
    rows.push(Row::info(
        format!(
            "disk: fdatasync'd appends in batches of {CONNECTIONS} (raw group commit), 1-alert / 50-alert ({} KB) payloads, median of 3",
            fifty_none.len() / 1024
        ),
        format!("{} / {} payloads/s", per_s(batch1), per_s(batch50)),
        format!("ranges {} / {}", Disk::range(&disk.batch1), Disk::range(&disk.batch50)),
        None,
    ));
    for (what, ours, merged, durable, reference, bare) in [
        ("1-alert", &none1r, &none1, &durable1, &durable_one, &bare_one),
        ("50-alert", &none50r, &none50, &durable50, &durable_fifty, &bare_fifty),
    ] {
        let (ratio, lo, hi) = Paired { ours, theirs: durable }.cpu();
        rows.push(Row::info(
            format!("server CPU per request, {what}, no rule: backstop vs durable group-commit server"),
            format!("{:.0} us", merged.cpu_per_request * 1e6),
            format!(
                "{:.0} us (bare axum {:.0} us); rounds {lo:.2}x-{hi:.2}x",
                reference.cpu_per_request * 1e6,
                bare.cpu_per_request * 1e6
            ),
            Some(ratio),
        ));
    }
    for (what, ours, merged, floor, least, durable) in [
        ("1-alert", &none1r, &none1, &floor1, &floor_one, &durable_one),
        ("50-alert", &none50r, &none50, &floor50, &floor_fifty, &durable_fifty),
    ] {
        let (ratio, lo, hi) = Paired { ours, theirs: floor }.rate();
        rows.push(Row::info(
            format!("intake, {what} payloads, no rule matches: vs the floor (durable server + JSON parse + SHA-256)"),
            format!("{} req/s, {:.0} us CPU each", per_s(merged.rate), merged.cpu_per_request * 1e6),
            format!(
                "{} req/s{}, {:.0} us CPU each ({:.2}x the durable server's CPU); rounds {lo:.2}x-{hi:.2}x",
                per_s(least.rate),
                least.note,
                least.cpu_per_request * 1e6,
                least.cpu_per_request / durable.cpu_per_request
            ),
            Some(ratio),
        ));
    }
    rows.push(Row::info(
        "durable group-commit server phases: CPU",
        format!("1-alert: {}", durable_one.cpu()),
        format!("50-alert: {}", durable_fifty.cpu()),
        None,
    ));
    rows.push(Row::info(
        "bare axum phases: CPU",
        format!("1-alert: {}", bare_one.cpu()),
        format!("50-alert: {}", bare_fifty.cpu()),
        None,
    ));
    for (what, i, seconds) in [
        ("1-alert, no rule (its rounds)", &none1, round_secs),
        ("50-alert, no rule (its rounds)", &none50, round_secs),
        ("1-alert, matched", &match1, secs),
        ("50-alert, matched", &match50, secs),
    ] {
        rows.push(Row::info(format!("intake {what}: audit log during the phase"), i.audit(seconds), "-", None));
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

    println!("restart after kill -9 under load...");
    restart::bench_restart(rows).await;

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

/// One measurement of intake in a round, on a server started for it on a directory of its own
/// that is deleted after: 0 the durable server, 1 the floor, 2 backstop. The disk slows as the
/// gigabytes a run writes accumulate on it, and recovers once they are deleted; so no server is
/// measured on what the others (or its own earlier rounds) left behind.
async fn measure_fresh(which: usize, payload: &Arc<Payload>, warm: Duration, measure: Duration) -> intake::Intake {
    if which == 2 {
        let dir = workdir(BENCH_RULES, &[("bench.yaml".into(), manifest_in("bench"))], "");
        let server = Backstop::start(dir.path());
        return intake(server.pid(), server.addr, Some(&server), payload, warm, measure).await;
    }
    let dir = tempfile::Builder::new().prefix("backstop-load-reference-").tempdir().unwrap();
    let server = if which == 0 { Bare::start_durable(dir.path()) } else { Bare::start_floor(dir.path()) };
    intake(server.pid(), server.addr, None, payload, warm, measure).await
}
