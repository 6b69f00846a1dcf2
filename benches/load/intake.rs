//! Webhook intake (phase 1): one load phase against a server process, and the disk's raw
//! group-commit rate (information).

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::machine::{RssSampler, cpu_seconds, machine_busy_seconds};
use crate::servers::Backstop;

/// Append `payload` to a file, `batch` copies per write and one fdatasync per write, for `for_`.
/// Returns payloads per second.
pub fn fsync_rate(dir: &Path, payload: &[u8], batch: usize, for_: Duration) -> f64 {
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

/// The disk's raw group-commit rates, sampled at several moments of the run (the disk may be
/// shared, and slows as a run's gigabytes accumulate): fdatasync'd appends in batches of 64 (as
/// 64 connections allow) of each payload. Information only: it says how the disk moved.
#[derive(Default)]
pub struct Disk {
    pub batch50: Vec<f64>,
    pub batch1: Vec<f64>,
}

impl Disk {
    pub fn sample(&mut self, one: &[u8], fifty: &[u8]) {
        let scratch = tempfile::Builder::new().prefix("backstop-load-fsync-").tempdir().unwrap();
        self.batch50.push(fsync_rate(scratch.path(), fifty, CONNECTIONS, Duration::from_millis(400)));
        self.batch1.push(fsync_rate(scratch.path(), one, CONNECTIONS, Duration::from_millis(400)));
        println!(
            "  disk: fdatasync'd appends in batches of {CONNECTIONS}: 50-alert payloads {}/s, 1-alert {}/s",
            per_s(*self.batch50.last().unwrap()),
            per_s(*self.batch1.last().unwrap())
        );
    }

    pub fn median(v: &[f64]) -> f64 {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    }

    pub fn range(v: &[f64]) -> String {
        let (lo, hi) = v.iter().fold((f64::MAX, 0.0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        format!("{}-{}", per_s(lo), per_s(hi))
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Intake, with the memory of each phase

pub struct Intake {
    pub rate: f64,
    pub alerts_rate: f64,
    pub peak_kb: u64,
    pub note: String,
    /// The audit log's fsyncs during the phase (warm-up included): count, mean seconds.
    pub fsyncs: f64,
    pub fsync_mean: f64,
    /// CPU cores used on average by the server, by this process (the client), by the rest.
    pub server_cores: f64,
    pub client_cores: f64,
    pub other_cores: f64,
    /// The server's CPU time per answered request.
    pub cpu_per_request: f64,
    /// Bytes of the request bodies the server answered, warm-up included.
    pub body_bytes: u64,
    /// Backstop only: the growth of its audit log's segments (`seg-*.jsonl`) over the phase.
    pub log_bytes: Option<u64>,
}

impl Intake {
    pub fn cpu(&self) -> String {
        format!(
            "server {:.0} us CPU/request; cores used: server {:.2}, client {:.2}, rest of the machine {:.2}",
            self.cpu_per_request * 1e6,
            self.server_cores,
            self.client_cores,
            self.other_cores
        )
    }

    pub fn audit(&self, seconds: f64) -> String {
        let growth = match self.log_per_body_byte() {
            Some(per) => format!(
                ", log +{} for {} of bodies ({per:.2} bytes per body byte)",
                mb(self.log_bytes.unwrap_or(0)),
                mb(self.body_bytes)
            ),
            None => String::new(),
        };
        format!(
            "audit: {:.0} fsyncs/s, mean fdatasync {}, {:.1} alerts per fsync{growth}; {}",
            self.fsyncs / seconds,
            ms(self.fsync_mean),
            self.alerts_rate * seconds / self.fsyncs.max(1.0),
            self.cpu()
        )
    }

    /// The audit log's growth per byte of request body (backstop only).
    pub fn log_per_body_byte(&self) -> Option<f64> {
        self.log_bytes.map(|log| log as f64 / self.body_bytes.max(1) as f64)
    }
}

/// Phases of one server with one payload, taken in rounds between other servers' (see
/// [`Paired`]).
pub struct Rounds(pub Vec<Intake>);

impl Rounds {
    /// The rounds as one phase: rates, CPU and cores averaged, fsyncs, bytes and log growth
    /// summed, the highest peak, every round's problems.
    pub fn merged(&self) -> Intake {
        let n = self.0.len().max(1) as f64;
        let mean = |f: fn(&Intake) -> f64| self.0.iter().map(f).sum::<f64>() / n;
        let notes: Vec<&str> = self.0.iter().map(|i| i.note.as_str()).filter(|n| !n.is_empty()).collect();
        Intake {
            rate: mean(|i| i.rate),
            alerts_rate: mean(|i| i.alerts_rate),
            peak_kb: self.0.iter().map(|i| i.peak_kb).max().unwrap_or(0),
            note: notes.join(""),
            fsyncs: self.0.iter().map(|i| i.fsyncs).sum(),
            fsync_mean: mean(|i| i.fsync_mean),
            server_cores: mean(|i| i.server_cores),
            client_cores: mean(|i| i.client_cores),
            other_cores: mean(|i| i.other_cores),
            cpu_per_request: mean(|i| i.cpu_per_request),
            body_bytes: self.0.iter().map(|i| i.body_bytes).sum(),
            log_bytes: self.0.iter().map(|i| i.log_bytes).sum(),
        }
    }
}

/// Rounds of the same payload against servers in turn, so that what the shared machine does
/// meanwhile (its speed moved by half within one run) falls on each alike: a ratio is taken
/// within each round, and the median of the rounds' is the figure.
pub struct Paired<'a> {
    pub ours: &'a Rounds,
    pub theirs: &'a Rounds,
}

impl Paired<'_> {
    fn ratios(&self, f: fn(&Intake) -> f64) -> Vec<f64> {
        let mut r: Vec<f64> = self.ours.0.iter().zip(&self.theirs.0).map(|(o, t)| f(o) / f(t)).collect();
        r.sort_by(|a, b| a.total_cmp(b));
        r
    }

    /// The median of the rounds' rate ratios, and their range.
    pub fn rate(&self) -> (f64, f64, f64) {
        median_range(&self.ratios(|i| i.rate))
    }

    /// The same for CPU time per request.
    pub fn cpu(&self) -> (f64, f64, f64) {
        median_range(&self.ratios(|i| i.cpu_per_request))
    }
}

/// Median (of an even number, the mean of the middle two: not the upper one, which would lean
/// towards a goal met), lowest and highest of sorted values.
fn median_range(sorted: &[f64]) -> (f64, f64, f64) {
    let n = sorted.len();
    match n {
        0 => (f64::NAN, f64::NAN, f64::NAN),
        _ => ((sorted[(n - 1) / 2] + sorted[n / 2]) / 2.0, sorted[0], sorted[n - 1]),
    }
}

/// Bytes as MB (10^6), one decimal.
pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// One load phase against a server process (backstop, whose /metrics is read, or the bare one).
pub async fn intake(
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
    let log_before = backstop.map(Backstop::audit_segment_bytes);
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
    // Every answered request's records are fsync'd by now (the answer waits for them).
    let log_after = backstop.map(Backstop::audit_segment_bytes);
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
        body_bytes: load.body_bytes,
        log_bytes: log_before.zip(log_after).map(|(b, a)| a.saturating_sub(b)),
    }
}
