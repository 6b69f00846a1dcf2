//! Verifying that traffic moved, against Debian's Prometheus scraping a canary app. In the
//! first world the app follows the VirtualService (a stand-in for Istio): once backstop
//! writes 100/0, v2 gets no more traffic, and the rollback is `verified`. In the second, a
//! misrouted host keeps sending users to v2 whatever the VirtualService says: the rollback is
//! `unverified` at the deadline, with an error log line and the metric.

use std::time::Duration;

use serde_json::Value;

use crate::support::backstop::{Server, Workdir, eventually};
use crate::support::canary::{Behaviour, CanaryApp};
use crate::support::prometheus::Prometheus;

const FIRING: &str = include_str!("../../fixtures/alertmanager/firing.json");

/// The canary's share of predictions over the last 5 s (0 when v2 has none, but only while v1
/// has some: no traffic at all is no data).
const SHARE: &str = r#"(sum(rate(app_predictions_total{service="{{ $labels.virtualservice }}",version="v2"}[5s])) or vector(0)) / sum(rate(app_predictions_total{service="{{ $labels.virtualservice }}"}[5s]))"#;

fn workdir(prometheus: &Prometheus) -> Workdir {
    let wd = Workdir::new();
    for f in std::fs::read_dir(wd.path("rules")).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let rule = format!(
        r#"
rules:
  - name: verified-rollback
    match: ['alertname="CanaryHighErrorRate"']
    target: {{ namespace: "{{{{ $labels.namespace }}}}", virtualservice: "{{{{ $labels.virtualservice }}}}" }}
    action: {{ rollback: {{ stable: v1, canary: [v2] }} }}
    verify:
      query: '{SHARE}'
      max_share: 0.01
      deadline: 25s
      interval: 1s
"#
    );
    std::fs::write(wd.path("rules/verified.yaml"), rule).unwrap();
    let config = std::fs::read_to_string(wd.config()).unwrap()
        + &format!("\nprometheus:\n  url: {}\n  timeout: 2s\n", prometheus.url());
    std::fs::write(wd.config(), config).unwrap();
    wd
}

fn records(wd: &Workdir, kind: &str) -> Vec<Value> {
    let out = wd.cli(&["audit", "query", "--outcome", kind, "--format", "json"]);
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

async fn metrics(server: &Server) -> String {
    reqwest::get(format!("{}/metrics", server.url)).await.unwrap().text().await.unwrap()
}

/// Start the app (v1 at 90 rps, v2 at 10), Prometheus, backstop; wait until Prometheus sees
/// v2's share; send the alert; return once the rollback is applied.
async fn rolled_back() -> Option<(CanaryApp, Prometheus, Workdir, Server)> {
    let app = CanaryApp::start(
        Behaviour { rps: 90.0, ..Behaviour::healthy() },
        Behaviour { rps: 10.0, ..Behaviour::healthy() },
    )
    .await;
    let prom = Prometheus::try_start(&app.target(), &[], None).await?;
    let wd = workdir(&prom);
    let server = wd.serve();
    let share = SHARE.replace("{{ $labels.virtualservice }}", "model-service");
    let mut seen = None;
    for _ in 0..200 {
        seen = prom.query(&share).await.filter(|s| *s > 0.05);
        if seen.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen.is_some(), "Prometheus never saw v2's share:\n{}", prom.log());
    let (status, body) = server.post("/v1/alertmanager", "application/json", FIRING).await;
    assert_eq!((status, body["results"][0]["outcome"].as_str()), (200, Some("applied")), "{body}");
    Some((app, prom, wd, server))
}

#[tokio::test]
async fn a_rollback_is_verified_when_traffic_leaves_the_canary_and_unverified_when_a_misrouted_host_keeps_it() {
    let (Some(routed), Some(misrouted)) = tokio::join!(rolled_back(), rolled_back()) else { return };

    // Istio's part, played by the test: the routed app follows the VirtualService.
    let (app, _prom, wd, server) = &routed;
    let vs = wd.read("deploy/local/model-service.yaml");
    assert!(vs.contains("weight: 100 # stable") && vs.contains("weight: 0 # canary"), "{vs}");
    app.set("v1", Behaviour { rps: 100.0, ..Behaviour::healthy() });
    app.set("v2", Behaviour { rps: 0.0, ..Behaviour::healthy() });
    let verified = eventually(Duration::from_secs(30), || records(wd, "verified").into_iter().next())
        .await
        .unwrap_or_else(|| panic!("not verified; records: {:?}\nlog:\n{}", records(wd, "unverified"), server.log()));
    let v = &verified["detail"]["verification"];
    assert!(v["share"].as_f64().unwrap() <= 0.01, "{verified}");
    assert!(v["after_seconds"].as_f64().unwrap() < 25.0, "{verified}");
    assert_eq!(verified["action_id"], records(wd, "applied")[0]["action_id"]);

    // The misrouted host: the object says 100/0, users still reach v2.
    let (_app, _prom, wd, server) = &misrouted;
    let unverified = eventually(Duration::from_secs(40), || records(wd, "unverified").into_iter().next())
        .await
        .unwrap_or_else(|| panic!("not unverified; log:\n{}", server.log()));
    let reason = unverified["reason"].as_str().unwrap();
    assert!(reason.starts_with("traffic did not move within 25s: canary share 0.1"), "{reason}");
    assert!(records(wd, "verified").is_empty());
    assert!(server.log().contains("rollback not verified"), "{}", server.log());
    let text = metrics(server).await;
    assert!(
        text.lines().any(|l| l == r#"backstop_verifications_total{rule="verified-rollback",outcome="unverified"} 1"#),
        "{text}"
    );
    let (routed_server, misrouted_server) = (routed.3, misrouted.3);
    assert!(routed_server.terminate().success() && misrouted_server.terminate().success());
}
