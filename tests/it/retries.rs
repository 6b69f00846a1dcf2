//! Failed requests retried by their clients, every attempt reported, through the binary: over
//! HTTP without `request_id` (the dispersion estimated from batches keeps the runs from looking
//! significant) and over Kafka with `request_id` and `attempt` (each request counts once). A
//! canary as good as its baseline is left alone; the same stream with the canary failing twice
//! as often is rolled back.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use serde_json::json;

use crate::kafka::{count, feedback_workdir, produce, records};
use crate::support::Rng;
use crate::support::backstop::{Workdir, eventually};
use crate::support::tansu::Tansu;

/// `n` outcomes of model-service (sms-app): requests go to the canary v2 one time in ten and
/// fail with `p_canary` (v1: `p_base`); a failed request is tried 5 times in all, every attempt
/// failing and reported, each a few events after the one before. With `named`, every attempt
/// carries its `request_id` and `attempt`.
fn retried(seed: u64, n: usize, (p_canary, p_base): (f64, f64), named: bool) -> Vec<String> {
    let mut rng = Rng(seed);
    let mut pending: BinaryHeap<Reverse<(usize, usize, u32, bool)>> = BinaryHeap::new();
    let mut requests = 0;
    (0..n)
        .map(|i| {
            let (request, attempt, canary, success) = match pending.peek().copied() {
                Some(Reverse((due, request, attempt, canary))) if due <= i => {
                    pending.pop();
                    (request, attempt, canary, false)
                }
                _ => {
                    requests += 1;
                    let canary = rng.uniform() < 0.1;
                    let failed = rng.uniform() < if canary { p_canary } else { p_base };
                    if failed {
                        let mut due = i;
                        for attempt in 2..=5 {
                            due += 1 + (rng.uniform() * 3.0) as usize;
                            pending.push(Reverse((due, requests, attempt, canary)));
                        }
                    }
                    (requests, 1, canary, !failed)
                }
            };
            let mut event = json!({"service": "model-service", "namespace": "sms-app",
                                   "version": if canary { "v2" } else { "v1" },
                                   "time": chrono::Utc::now(), "kind": "outcome", "success": success});
            if named {
                event["request_id"] = json!(format!("req-{seed}-{request}"));
                event["attempt"] = json!(attempt);
            }
            event.to_string()
        })
        .collect()
}

/// The event at which the mixture SPRT on independent events, checked after every event as
/// backstop did before issue #21, rolls the canary back with the shipped rule (alpha 0.05, tau
/// 0.05, 100 outcomes per arm, more than 1.5 times the baseline's errors), if it does.
fn independent_test_acts_at(lines: &[String]) -> Option<usize> {
    let (mut c, mut b) = ((0.0f64, 0.0f64), (0.0f64, 0.0f64));
    lines.iter().position(|line| {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        let arm = if e["version"] == "v2" { &mut c } else { &mut b };
        arm.0 += f64::from(u8::from(e["success"] == false));
        arm.1 += 1.0;
        if c.1 < 100.0 || b.1 < 100.0 || b.0 == 0.0 {
            return false;
        }
        let (rc, rb) = (c.0 / c.1, b.0 / b.1);
        let pooled = (c.0 + b.0) / (c.1 + b.1);
        let v = pooled * (1.0 - pooled) * (1.0 / c.1 + 1.0 / b.1);
        let (t2, d) = (0.0025, rc - rb);
        let log_lambda = 0.5 * (v / (v + t2)).ln() + t2 * d * d / (2.0 * v * (v + t2));
        d > 0.0 && rc > 1.5 * rb && log_lambda >= 20f64.ln()
    })
}

/// Post `lines` as NDJSON in batches of 1,000; every line is taken.
async fn post_all(server: &crate::support::backstop::Server, lines: &[String]) {
    for batch in lines.chunks(1000) {
        let (status, body) = server.post("/v1/feedback", "application/x-ndjson", batch.join("\n")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["received"], batch.len(), "{body}");
    }
}

const EVENTS: usize = 30_000;
const ALIKE: (f64, f64) = (0.03, 0.03);
const TWICE: (f64, f64) = (0.06, 0.03);

/// Three healthy streams that the test on independent events rolls back (of seeds 21 to 59 it
/// rolls back 6, these among them), and one with the canary twice as bad.
#[tokio::test]
async fn retried_failures_over_http_roll_back_a_worse_canary_and_not_a_healthy_one() {
    let healthy: Vec<Vec<String>> = [28, 31, 34].into_iter().map(|seed| retried(seed, EVENTS, ALIKE, false)).collect();
    for stream in &healthy {
        let naive = independent_test_acts_at(stream);
        assert!(naive.is_some(), "this A/A stream no longer tests anything: pick one the old test fails on");
    }
    let goods: Vec<Workdir> = healthy.iter().map(|_| Workdir::new()).collect();
    let good_servers: Vec<_> = goods.iter().map(Workdir::serve).collect();
    let bad = Workdir::new();
    let bad_server = bad.serve();
    let bad_stream = retried(22, EVENTS, TWICE, false);
    let posts = good_servers.iter().zip(&healthy).map(|(server, stream)| post_all(server, stream));
    tokio::join!(futures::future::join_all(posts), post_all(&bad_server, &bad_stream));

    for good in &goods {
        assert_eq!(count(good, "matched"), 0, "a healthy canary was judged worse: {:?}", records(good, "matched"));
        assert!(good.read("deploy/local/model-service.yaml").contains("weight: 90 # stable"));
    }

    let applied = records(&bad, "applied");
    assert_eq!(applied.len(), 1, "{applied:?}\n{}", bad_server.log());
    assert_eq!(applied[0]["rule"], "feedback-canary-errors");
    assert!(bad.read("deploy/local/model-service.yaml").contains("weight: 100 # stable"));
    // The record says how dispersed the errors were estimated to be, next to the counts.
    let evidence = &records(&bad, "matched")[0]["detail"]["evidence"];
    let dispersion = &evidence["detail"]["sequential"]["dispersion"];
    assert!(dispersion["used"].as_f64().unwrap() > 2.0, "runs of 5 should show: {evidence}");
    assert_eq!(evidence["comparison"]["fired"], "since the start", "{evidence}");
    assert!(evidence["detail"]["canary"]["n"].as_u64().unwrap() > 0, "{evidence}");
    assert!(bad_server.terminate().success());
    for server in good_servers {
        assert!(server.terminate().success());
    }
}

#[tokio::test]
async fn retried_failures_named_by_request_over_kafka_count_once_and_judge_right() {
    let Some(broker) = Tansu::try_start().await else { return };
    broker.create_topics(&["fb-retry-good", "fb-retry-bad", "fb-retry-good-alerts", "fb-retry-bad-alerts"]).await;
    let (good, bad) = (feedback_workdir(&broker, "fb-retry-good"), feedback_workdir(&broker, "fb-retry-bad"));
    let (good_server, bad_server) = (good.serve(), bad.serve());
    let n = 12_000;
    let healthy = retried(31, n, ALIKE, true);
    let naive = independent_test_acts_at(&healthy);
    assert!(naive.is_some(), "counting every attempt, the old test rolls this healthy canary back");
    produce(&broker, "fb-retry-good", &healthy).await;
    produce(&broker, "fb-retry-bad", &retried(32, n, TWICE, true)).await;
    for (wd, server) in [(&good, &good_server), (&bad, &bad_server)] {
        let all = eventually(Duration::from_secs(180), || (count(wd, "received") == n).then_some(())).await;
        assert!(all.is_some(), "{} of {n} received; log:\n{}", count(wd, "received"), server.log());
    }
    assert_eq!(count(&good, "matched"), 0, "a healthy canary was judged worse: {:?}", records(&good, "matched"));
    let applied = records(&bad, "applied");
    assert_eq!(applied.len(), 1, "{applied:?}");
    let evidence = &records(&bad, "matched")[0]["detail"]["evidence"];
    // Each request counted once: the canary's outcomes are requests, far fewer than its events.
    let (outcomes, errors) = (
        evidence["canary"]["summary"]["outcomes_n"].as_u64().unwrap(),
        evidence["canary"]["summary"]["errors"].as_u64().unwrap(),
    );
    assert!(errors * 10 < outcomes, "errors counted once per request: {errors} of {outcomes}");
    assert!(good_server.terminate().success() && bad_server.terminate().success());
}
