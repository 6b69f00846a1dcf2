//! Debian's Alertmanager delivers to backstop: rolled back once, a redelivery is a no-op, and
//! the audit log verifies.

use std::time::Duration;

use serde_json::json;

use crate::support::alertmanager::{Alertmanager, Options};
use crate::support::backstop::{Workdir, eventually};

#[tokio::test]
async fn alertmanager_alert_rolls_back_once_and_redelivery_is_a_noop() {
    let wd = Workdir::new();
    let server = wd.serve();
    // repeat_interval 2s: Alertmanager re-sends the still-firing alert, as it would after hours.
    let options = Options { repeat_interval: "2s".into(), ..Options::default() };
    let Some(am) = Alertmanager::try_start_with(&format!("{}/v1/alertmanager", server.url), "", &options).await else {
        return;
    };
    am.post_alerts(json!([{
        "labels": {
            "alertname": "CanaryHighErrorRate", "namespace": "sms-app",
            "virtualservice": "model-service", "severity": "critical"
        },
        "annotations": { "summary": "canary v2 is failing" },
        "generatorURL": "http://prometheus.local/graph"
    }]))
    .await;

    let vs = wd.path("deploy/local/model-service.yaml");
    let rolled_back = eventually(Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&vs).ok()?;
        text.contains("weight: 100 # stable").then_some(text)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "Alertmanager's delivery did not roll back the canary; backstop log:\n{}\nalertmanager log:\n{}",
            server.log(),
            am.log()
        )
    });

    // Wait for a redelivery to be recorded as a duplicate no-op.
    let noop = eventually(Duration::from_secs(20), || {
        let out = wd.cli(&["audit", "query", "--outcome", "noop", "--format", "json"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.contains("duplicate delivery").then_some(text)
    })
    .await;
    assert!(noop.is_some(), "no redelivery was recorded as a no-op; backstop log:\n{}", server.log());
    assert_eq!(std::fs::read_to_string(&vs).unwrap(), rolled_back, "the redelivery wrote nothing");

    let out = wd.cli(&["audit", "query", "--outcome", "applied", "--format", "json"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1, "exactly one action");
    let received = wd.cli(&["audit", "query", "--outcome", "received", "--format", "json"]);
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&received.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["detail"]["delivery"]["receiver"], "backstop", "the delivery came from Alertmanager's receiver");
    drop(am);
    assert!(server.terminate().success());
    let out = wd.cli(&["audit", "verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
