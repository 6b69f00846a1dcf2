//! Issue #20: the log's record format changed (format 2: one `received` record per delivery).
//! A log written by the previous release (format 1: one `received` record per alert, in
//! `fixtures/audit/format-1/`, recorded with that release's binary: the demo canary's alert
//! rolled back, a grouped payload, an unrelated alert, the resolution, a malformed body) still
//! verifies, reads and restores the guards' state, and the log goes on in format 2 after it.

use std::time::Duration;

use serde_json::Value;

use crate::support::backstop::{Workdir, per_alert, repo};

const FIRING: &str = include_str!("../../fixtures/alertmanager/firing.json");
const TRUNCATED: &str = include_str!("../../fixtures/alertmanager/truncated.json");
/// The action the previous release took on the demo canary's alert, in the fixture.
const OLD_ACTION: &str = "01a238a8-7725-713e-88f4-ef1ba4786cd8";
const CANARY_ALERT: &str = "a9c5c3b76558e44d-1795550591";

fn lines(out: &std::process::Output) -> Vec<Value> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_written_in_format_1_still_reads_verifies_and_goes_on_in_format_2() {
    // The fixture's key must outlive the default week of `key_retention`, whenever this runs.
    let config = std::fs::read_to_string(repo("backstop.yaml")).unwrap();
    assert!(config.contains("key_retention: 168h"));
    let wd = Workdir::with_config(&config.replace("key_retention: 168h", "key_retention: 876000h"));
    let audit = wd.path("data/audit");
    std::fs::create_dir_all(&audit).unwrap();
    let fixture = repo("fixtures/audit/format-1/seg-00000000000000000001.jsonl");
    std::fs::copy(&fixture, audit.join("seg-00000000000000000001.jsonl")).unwrap();
    let old_records = std::fs::read_to_string(&fixture).unwrap().lines().count();
    let verified = wd.cli(&["audit", "verify"]);
    assert!(verified.status.success(), "format 1 alone: {}", String::from_utf8_lossy(&verified.stderr));

    // No snapshot beside it: the guards' state is rebuilt from the format 1 records, so the
    // redelivered alert is known as handled by the old action.
    let server = wd.serve();
    let client = reqwest::Client::new();
    let (status, again) = server.post("/v1/alertmanager", "application/json", FIRING).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["results"][0]["outcome"], "noop", "the state read the old records: {again}");
    assert_eq!(again["results"][0]["action_id"], OLD_ACTION, "{again}");
    let (status, truncated) = server.post("/v1/alertmanager", "application/json", TRUNCATED).await;
    assert_eq!(status, 200, "{truncated}");
    // The on-call page of the old action shows the alert it acted on, read from a format 1 record.
    let page = client.get(format!("{}/ui/actions/{OLD_ACTION}", server.url)).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("alertname=CanaryHighErrorRate") && page.contains("virtualservice=model-service"), "{page}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(server.terminate().success());

    // One chain across both formats.
    let verified = wd.cli(&["audit", "verify"]);
    assert!(verified.status.success(), "both formats: {}", String::from_utf8_lossy(&verified.stderr));
    let all = lines(&wd.cli(&["audit", "query", "--format", "json", "--limit", "100000"]));
    assert!(all.len() > old_records, "the log went on");
    let received: Vec<&Value> = all.iter().filter(|r| r["kind"] == "received").collect();
    let (old, new): (Vec<&Value>, Vec<&Value>) =
        received.iter().partition(|r| r["seq"].as_u64().unwrap() as usize <= old_records);
    assert!(old.iter().all(|r| r["detail"]["alert"].is_object() && r["event_id"].is_string()), "format 1: {old:?}");
    assert_eq!(new.len(), 2, "one record per delivery: {new:?}");
    assert!(new.iter().all(|r| r["detail"]["format"] == 2 && r["event_id"].is_null()), "format 2: {new:?}");
    assert_eq!(new[1]["detail"]["alerts"].as_array().unwrap().len(), 2, "the truncated payload's two alerts");
    assert_eq!(new[1]["detail"]["delivery"]["truncatedAlerts"], 3);

    // Asked by event id, both the old per-alert record and the new delivery's record come back.
    let about =
        lines(&wd.cli(&["audit", "query", "--event", CANARY_ALERT, "--outcome", "received", "--format", "json"]));
    assert_eq!(about.len(), 3, "the first delivery, its resolution (format 1), the redelivery (format 2): {about:?}");
    let alerts = per_alert(about);
    assert!(alerts.iter().all(|r| r["event_id"] == CANARY_ALERT), "{alerts:?}");
    assert!(alerts.iter().all(|r| r["detail"]["alert"]["labels"]["virtualservice"] == "model-service"));
    // The table describes either.
    let table = wd.cli(&["audit", "query", "--outcome", "received"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("CanaryHighErrorRate firing"), "{table}");
    assert!(table.contains("2 alerts: CanaryHighErrorRate firing, CanaryHighErrorRate firing"), "{table}");
    // The event column: the alert's id, for a format 1 record and for a one-alert delivery alike.
    let ids: Vec<&str> = table.lines().filter(|l| l.contains(CANARY_ALERT)).collect();
    assert_eq!(ids.len(), 3, "{table}");
    assert!(table.lines().any(|l| l.contains("  2 alerts  ")), "{table}");

    // An export of both verifies on its own.
    let export = wd.cli(&["audit", "export", "--since", "2026-01-01T00:00:00Z"]);
    assert!(export.status.success());
    let file = wd.path("export.jsonl");
    std::fs::write(&file, &export.stdout).unwrap();
    assert_eq!(String::from_utf8_lossy(&export.stdout).lines().count(), all.len());
    let verified = wd.cli(&["audit", "verify", "--file", file.to_str().unwrap()]);
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
}
