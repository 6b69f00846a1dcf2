//! 3. Rules: `RuleSet::decide` per alert with 10, 1,000 and 10,000 rules loaded.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::Row;
use crate::common::*;
use crate::intake::Disk;

/// `n` rules in files of `per_file`, each on its own alert name (`alertname="BenchAlertI"`, or
/// `alertname=~"BenchAlertI"`, which the index cannot use).
pub fn rules_dir(n: usize, per_file: usize, regex: bool) -> tempfile::TempDir {
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
pub fn load_rules(dir: &Path) -> (backstop::rules::RuleSet, f64) {
    let t = Instant::now();
    match backstop::rules::load(&[dir.to_path_buf()]) {
        Ok(r) => (r, t.elapsed().as_secs_f64()),
        Err(e) => panic!("{e}"),
    }
}

/// Nanoseconds per `decide`, over ten alerts that each match one rule (BenchAlert0..9) and one
/// that matches none (median of 5 slices of 100 ms).
pub fn decide_ns(rules: &backstop::rules::RuleSet) -> f64 {
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

pub fn bench_rules(rows: &mut Vec<Row>) {
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
