//! 2. Decision latency on the manifests target.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use serde_json::Value;

use crate::common::*;
use crate::repo;

pub const BENCH_RULES: &str = r#"# Two rules on one VirtualService (bench/model-service), cooldown 0: every alert acts.
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
pub fn manifest_in(namespace: &str) -> String {
    std::fs::read_to_string(repo("deploy/local/model-service.yaml"))
        .unwrap()
        .replace("namespace: sms-app", &format!("namespace: {namespace}"))
}

pub struct Latency {
    pub base: Vec<f64>,
    pub action: Vec<f64>,
    pub not_applied: usize,
    pub example: Option<String>,
}

/// `n` pairs, in sequence on one connection: an alert no rule matches, then an alert whose rule
/// writes the manifest (rollback and restore alternately, so each one changes the weights).
pub async fn decision_latency(addr: SocketAddr, n: usize, with_baseline: bool) -> Latency {
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
pub fn audit_latency(audit_dir: &Path) -> Vec<f64> {
    use backstop::audit::{Filter, Kind};
    let filter = Filter { kinds: vec![Kind::Received, Kind::Applied], ..Default::default() };
    let records = backstop::audit::query(audit_dir, &filter).unwrap();
    let mut received = std::collections::HashMap::new();
    let mut out = Vec::new();
    for r in &records {
        if r.entry.kind == Kind::Received {
            // A delivery's record names its alerts in its detail (format 2).
            for id in backstop::event::alert_ids(r.entry.detail.as_ref()) {
                received.insert(id, r.time);
            }
            continue;
        }
        let Some(id) = r.entry.event_id.as_deref() else { continue };
        if r.entry.rule.as_deref().is_some_and(|n| n.starts_with("bench-"))
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
pub fn write_times(n: usize) -> Vec<f64> {
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
pub fn action_histogram(metrics: &str) -> (Vec<(f64, f64)>, f64, f64) {
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
pub fn histogram_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let at = |h: &[(f64, f64)], le: f64| h.iter().find(|(l, _)| *l == le).map(|(_, c)| *c).unwrap_or(0.0);
    let total = after.last().map(|(le, c)| c - at(before, *le)).unwrap_or(0.0);
    for (le, c) in after {
        if c - at(before, *le) >= q * total {
            return *le;
        }
    }
    f64::INFINITY
}
