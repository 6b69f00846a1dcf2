//! The Kubernetes target against the API emulator (tests/it/support/kube.rs), driven through a
//! kubeconfig exactly as a user would point backstop at a cluster.

use std::time::Duration;

use serde_json::Value;

use crate::support::backstop::{Server, Workdir, repo};
use crate::support::kube::KubeEmulator;

const FIRING: &str = include_str!("../../fixtures/alertmanager/firing.json");
const GROUPED: &str = include_str!("../../fixtures/alertmanager/grouped.json");
const VS: (&str, &str, &str, &str) = ("networking.istio.io/v1", "VirtualService", "sms-app", "model-service");

/// The emulator with the demo's DestinationRule and VirtualService applied.
async fn cluster() -> KubeEmulator {
    KubeEmulator::with_demo().await
}

/// The repository's config, with the kubernetes target on the emulator instead of manifests.
pub(crate) fn workdir(emu: &KubeEmulator, kubernetes: &str, action_timeout: &str) -> Workdir {
    let wd = Workdir::new();
    let kc = emu.write_kubeconfig(wd.dir.path());
    let config = std::fs::read_to_string(repo("backstop.yaml"))
        .unwrap()
        .replace(
            "target:\n  manifests:\n    dir: deploy/local\n",
            &format!("target:\n  kubernetes:\n    kubeconfig: {}\n    request_timeout: 1s\n{kubernetes}", kc.display()),
        )
        .replace("action_timeout: 10s", &format!("action_timeout: {action_timeout}"));
    assert!(config.contains("kubernetes:"), "the config's target section changed; update this test");
    std::fs::write(wd.config(), config).unwrap();
    wd
}

fn weights(emu: &KubeEmulator) -> Vec<u64> {
    let vs = emu.get(VS.0, VS.1, VS.2, VS.3).unwrap();
    vs["spec"]["http"][0]["route"].as_array().unwrap().iter().map(|d| d["weight"].as_u64().unwrap_or(0)).collect()
}

fn patches(emu: &KubeEmulator) -> Vec<crate::support::kube::RequestRecord> {
    emu.requests().into_iter().filter(|r| r.method == "PATCH" && r.path.contains("virtualservices")).collect()
}

/// Deliver an Alertmanager payload: 200, or 503 (Alertmanager tries again) exactly when an
/// action failed.
async fn alert(server: &Server, body: &str) -> Value {
    let (status, body) = server.post("/v1/alertmanager", "application/json", body.to_string()).await;
    let failed = body["results"].as_array().is_some_and(|r| r.iter().any(|r| r["outcome"] == "failed"));
    assert_eq!(status, if failed { 503 } else { 200 }, "{body}");
    assert_eq!(body["retry"], failed, "{body}");
    body
}

#[tokio::test]
async fn rollback_through_the_api_server_is_conditional_annotated_and_evented() {
    let emu = cluster().await;
    let wd = workdir(&emu, "", "10s");
    let server = wd.serve();
    let body = alert(&server, FIRING).await;
    assert_eq!(body["results"][0]["outcome"], "applied", "{body}\n{}", server.log());
    assert_eq!(weights(&emu), vec![100, 0]);

    let vs = emu.get(VS.0, VS.1, VS.2, VS.3).unwrap();
    let ann = &vs["metadata"]["annotations"];
    assert_eq!(ann["backstop.io/action-id"], body["results"][0]["action_id"]);
    assert_eq!(ann["backstop.io/rule"], "canary-high-error-rate");
    assert!(ann["backstop.io/previous"].as_str().unwrap().contains("\"weight\":90"));

    let p = patches(&emu);
    assert_eq!(p.len(), 1, "one write");
    assert_eq!(p[0].content_type.as_deref(), Some("application/merge-patch+json"));
    assert_eq!(p[0].field_manager.as_deref(), Some("backstop"));
    let patch: Value = serde_json::from_str(&p[0].body).unwrap();
    assert!(patch["metadata"]["resourceVersion"].is_string(), "conditional on the version read: {patch}");
    assert!(patch["spec"]["hosts"].is_null(), "only what changed is sent: {patch}");

    let events = emu.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["reason"], "BackstopApplied");
    assert_eq!(events[0]["involvedObject"]["name"], "model-service");
    assert_eq!(events[0]["type"], "Normal");

    // Redelivery: a duplicate; another rule on the same object: the cluster is already there.
    let body = alert(&server, FIRING).await;
    assert_eq!(body["results"][0]["outcome"], "noop");
    let body = alert(&server, GROUPED).await;
    let outcomes: Vec<&str> =
        body["results"].as_array().unwrap().iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, vec!["held", "refused", "noop"], "{body}");
    assert!(
        body["results"][1]["reason"].as_str().unwrap().contains("not found"),
        "shop/checkout is not in the cluster: {body}"
    );
    assert_eq!(patches(&emu).len(), 1, "no other write");
}

#[tokio::test]
async fn a_conflict_storm_is_re_read_and_re_decided_within_bounds() {
    let emu = cluster().await;
    let wd = workdir(&emu, "", "10s");
    let server = wd.serve();
    emu.conflict_next(2);
    let body = alert(&server, FIRING).await;
    assert_eq!(body["results"][0]["outcome"], "applied", "{body}");
    assert_eq!(weights(&emu), vec![100, 0]);
    assert_eq!(patches(&emu).iter().filter(|r| r.status == 409).count(), 2);

    // A writer that never stops: bounded attempts, then a recorded failure.
    let emu = cluster().await;
    let wd = workdir(&emu, "", "10s");
    let server = wd.serve();
    emu.conflict_next(100);
    let body = alert(&server, FIRING).await;
    assert_eq!(body["results"][0]["outcome"], "failed", "{body}");
    assert!(body["results"][0]["reason"].as_str().unwrap().contains("kept changing"), "{body}");
    assert_eq!(patches(&emu).len(), 4, "1 + 3 retries");
    assert_eq!(emu.events().last().unwrap()["reason"], "BackstopFailed");
}

#[tokio::test]
async fn when_another_writer_already_rolled_back_the_result_is_a_noop() {
    let emu = cluster().await;
    let wd = workdir(&emu, "", "10s");
    let server = wd.serve();
    // Someone else (a person, another replica) rolls back just before our write lands.
    emu.before_write(|vs| {
        if let Some(route) = vs["spec"]["http"][0]["route"].as_array_mut() {
            route[0]["weight"] = 100.into();
            route[1]["weight"] = 0.into();
        }
    });
    let body = alert(&server, FIRING).await;
    assert_eq!(body["results"][0]["outcome"], "noop", "{body}");
    assert_eq!(weights(&emu), vec![100, 0]);
    let vs = emu.get(VS.0, VS.1, VS.2, VS.3).unwrap();
    assert!(vs["metadata"]["annotations"]["backstop.io/action-id"].is_null(), "our write never landed");
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff() {
    let emu = cluster().await;
    let wd = workdir(&emu, "", "10s");
    let server = wd.serve();
    emu.fail_next("PATCH", Some("virtualservices"), 503, 2);
    emu.fail_next("GET", Some("virtualservices"), 429, 1);
    let body = alert(&server, FIRING).await;
    assert_eq!(body["results"][0]["outcome"], "applied", "{body}");
    let statuses: Vec<u16> = patches(&emu).iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![503, 503, 200]);
}

#[tokio::test]
async fn a_server_that_does_not_answer_fails_the_action_at_its_deadline() {
    let emu = cluster().await;
    let wd = workdir(&emu, "", "3s");
    let server = wd.serve();
    emu.delay_next("GET", Some("virtualservices"), Duration::from_secs(30), 20);
    let started = std::time::Instant::now();
    let body = alert(&server, FIRING).await;
    assert_eq!(body["results"][0]["outcome"], "failed", "{body}");
    assert!(body["results"][0]["reason"].as_str().unwrap().contains("timed out after 3s"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(10), "bounded by the action's deadline");
}

#[tokio::test]
async fn forbidden_fails_at_once_naming_the_rbac_rule() {
    let emu = cluster().await;
    emu.deny("patch", "virtualservices", Some("sms-app"));
    let wd = workdir(&emu, "", "10s");
    let server = wd.serve();
    let body = alert(&server, FIRING).await;
    assert_eq!(body["results"][0]["outcome"], "failed", "{body}");
    let reason = body["results"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("patch virtualservices.networking.istio.io sms-app/model-service"), "{reason}");
    assert!(reason.contains(r#"apiGroups: ["networking.istio.io"], resources: ["virtualservices"], verbs: ["patch"] in namespace sms-app"#), "{reason}");
    assert_eq!(patches(&emu).len(), 1, "not retried");
    assert_eq!(weights(&emu), vec![90, 10]);
}

#[tokio::test]
async fn two_replicas_given_the_same_alert_make_one_change_and_one_noop() {
    for _ in 0..3 {
        let emu = cluster().await;
        let (a, b) = (workdir(&emu, "", "10s"), workdir(&emu, "", "10s"));
        let (sa, sb) = (a.serve(), b.serve());
        let (ra, rb) = tokio::join!(alert(&sa, FIRING), alert(&sb, FIRING));
        let mut outcomes = vec![ra["results"][0]["outcome"].clone(), rb["results"][0]["outcome"].clone()];
        outcomes.sort_by_key(|o| o.to_string());
        assert_eq!(outcomes, vec![Value::from("applied"), Value::from("noop")], "{ra}\n{rb}");
        assert_eq!(weights(&emu), vec![100, 0]);
        assert_eq!(patches(&emu).iter().filter(|r| r.status == 200).count(), 1, "exactly one change");
    }
}

#[tokio::test]
async fn older_istio_uses_v1beta1_and_the_cli_selects_the_target() {
    let emu = cluster().await;
    let wd = workdir(&emu, "    virtualservice_version: v1beta1\n", "10s");
    let server = wd.serve();
    let body = alert(&server, FIRING).await;
    assert_eq!(body["results"][0]["outcome"], "applied", "{body}");
    assert!(patches(&emu).iter().all(|r| r.path.starts_with("/apis/networking.istio.io/v1beta1/")));

    // `--target kubernetes --kubeconfig` on the repository's own config: the shipped rules run unchanged.
    let emu = cluster().await;
    let wd = Workdir::new();
    let kc = emu.write_kubeconfig(wd.dir.path());
    let out = wd.cli(&[
        "--kubeconfig",
        kc.to_str().unwrap(),
        "simulate",
        "--target",
        "kubernetes",
        repo("fixtures/alertmanager/firing.json").to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("would change"), "{stdout}");
    assert!(emu.requests().iter().all(|r| r.method == "GET"), "simulate only reads");
}

#[tokio::test]
async fn a_service_selector_switch_goes_through_the_api_and_can_be_undone() {
    let emu = cluster().await;
    let text = std::fs::read_to_string(repo("deploy/local/checkout.yaml")).unwrap();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if v["kind"] == "Service" {
            emu.seed(v);
        }
    }
    let wd = workdir(&emu, "", "10s");
    let server = wd.serve();
    let payload = include_str!("../../fixtures/alertmanager/unrelated.json")
        .replace(
            "\"alertname\":\"DiskFull\"",
            "\"alertname\":\"BlueGreenServiceUnhealthy\",\"service\":\"checkout-active\"",
        )
        .replace("\"namespace\":\"infra\"", "\"namespace\":\"shop\"");
    let body = alert(&server, &payload).await;
    assert_eq!(body["results"][0]["outcome"], "applied", "{body}");
    let svc = emu.get("v1", "Service", "shop", "checkout-active").unwrap();
    assert_eq!(svc["spec"]["selector"], serde_json::json!({"app": "checkout", "version": "blue"}));
    assert!(svc["metadata"]["annotations"]["backstop.io/previous"].as_str().unwrap().contains("green"));
    let write = emu.requests().into_iter().find(|r| r.method == "PATCH").unwrap();
    assert_eq!(write.path, "/api/v1/namespaces/shop/services/checkout-active");
    assert_eq!(emu.events()[0]["involvedObject"]["kind"], "Service");
    let action = body["results"][0]["action_id"].as_str().unwrap();
    let out = wd.cli(&["undo", action, "--reason", "blue is broken too", "--server", &server.url]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let svc = emu.get("v1", "Service", "shop", "checkout-active").unwrap();
    assert_eq!(svc["spec"]["selector"]["version"], "green");
}

// ---------------------------------------------------------------------------------------------
// Argo Rollouts: a rule with `abort` through the binary, and the library's Kubernetes target
// and executor against the emulator.

mod argo {
    use std::time::Duration;

    use backstop::actions::rollout::{abort, restore_abort};
    use backstop::actions::{self, Decided, Meta, Outcome};
    use backstop::target::kubernetes::{Kubernetes, KubernetesOptions};
    use backstop::target::{Notice, ObjectRef, Target, TargetError};
    use serde_json::{Value, json};

    use crate::support::kube::{KubeEmulator, RequestRecord};

    const ARGO: &str = "argoproj.io/v1alpha1";
    const PATH: &str = "/apis/argoproj.io/v1alpha1/namespaces/sms-app/rollouts/model-service";
    const META: Meta<'static> = Meta { action_id: "A1", rule: "canary-abort", at: "2026-11-24T20:13:27Z" };

    /// The emulator with a canary Rollout paused at its second step.
    async fn cluster() -> KubeEmulator {
        let emu = KubeEmulator::start().await;
        emu.seed_paused_rollout(crate::support::kube::canary_rollout());
        emu
    }

    async fn target(emu: &KubeEmulator) -> (tempfile::TempDir, Kubernetes) {
        let dir = tempfile::tempdir().unwrap();
        let opts = KubernetesOptions {
            kubeconfig: Some(emu.write_kubeconfig(dir.path())),
            request_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        let k8s = Kubernetes::connect(&opts).await.unwrap();
        (dir, k8s)
    }

    fn obj() -> ObjectRef {
        ObjectRef::rollout("sms-app", "model-service")
    }

    fn stored(emu: &KubeEmulator) -> Value {
        emu.get(ARGO, "Rollout", "sms-app", "model-service").unwrap()
    }

    fn patches(emu: &KubeEmulator) -> Vec<RequestRecord> {
        emu.requests().into_iter().filter(|r| r.method == "PATCH").collect()
    }

    async fn abort_it(k8s: &Kubernetes) -> Outcome {
        let decide = |ro: &Value| abort(ro).map_err(|e| e.to_string());
        actions::execute(k8s, &obj(), &decide, &META, Duration::from_secs(10), true).await
    }

    /// The same alert, a rule whose target is a Rollout: the binary aborts it, and undo puts it
    /// back; the rule only changed its target type.
    #[tokio::test]
    async fn a_rule_aborts_a_rollout_through_the_binary_and_undo_resumes_it() {
        let emu = cluster().await;
        let wd = super::workdir(&emu, "", "10s");
        for f in std::fs::read_dir(wd.path("rules")).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        let rule = r#"
rules:
  - name: canary-abort
    match: ['alertname="CanaryHighErrorRate"']
    target: { namespace: "{{ $labels.namespace }}", rollout: "{{ $labels.virtualservice }}" }
    action: { abort: {} }
"#;
        std::fs::write(wd.path("rules/abort.yaml"), rule).unwrap();
        let server = wd.serve();
        let body = super::alert(&server, include_str!("../../fixtures/alertmanager/firing.json")).await;
        assert_eq!(body["results"][0]["outcome"], "applied", "{body}");
        assert_eq!(stored(&emu)["status"]["abort"], true);
        let write = patches(&emu).into_iter().next().unwrap();
        assert_eq!(write.path, format!("{PATH}/status"));
        // Delivered again: already aborted, a no-op.
        let again = super::alert(&server, include_str!("../../fixtures/alertmanager/firing.json")).await;
        assert_eq!(again["results"][0]["outcome"], "noop", "{again}");
        let action = body["results"][0]["action_id"].as_str().unwrap();
        let out = wd.cli(&["undo", action, "--reason", "false alarm", "--server", &server.url]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(stored(&emu)["status"]["abort"], false);
        assert!(server.terminate().success());
    }

    #[tokio::test]
    async fn a_rollout_is_aborted_on_its_status_subresource_annotated_and_evented() {
        let emu = cluster().await;
        let (_dir, k8s) = target(&emu).await;
        let read = stored(&emu);
        let outcome = abort_it(&k8s).await;
        assert_eq!(
            outcome,
            Outcome::Applied { before: json!({"abort": false, "phase": "Paused"}), after: json!({"abort": true}) }
        );
        let ro = stored(&emu);
        assert_eq!(ro["status"]["abort"], true);
        assert_eq!((&ro["spec"], &ro["metadata"]["generation"]), (&read["spec"], &read["metadata"]["generation"]));
        let rv = |o: &Value| o["metadata"]["resourceVersion"].as_str().unwrap().parse::<u64>().unwrap();
        assert!(rv(&ro) > rv(&read));
        let ann = &ro["metadata"]["annotations"];
        assert_eq!(
            (ann["backstop.io/action-id"].as_str(), ann["backstop.io/rule"].as_str()),
            (Some("A1"), Some("canary-abort"))
        );
        assert_eq!(ann["backstop.io/at"], "2026-11-24T20:13:27Z");
        assert_eq!(ann["backstop.io/previous"], r#"{"abort":false,"phase":"Paused"}"#);

        // First the abort, as `kubectl argo rollouts abort` sends it but conditional; then the
        // annotations on the Rollout itself.
        let p = patches(&emu);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!((p[0].path.as_str(), p[0].status), (format!("{PATH}/status").as_str(), 200));
        assert_eq!(p[0].content_type.as_deref(), Some("application/merge-patch+json"));
        assert_eq!(p[0].field_manager.as_deref(), Some("backstop"));
        let body: Value = serde_json::from_str(&p[0].body).unwrap();
        assert_eq!(
            body,
            json!({"metadata": {"resourceVersion": read["metadata"]["resourceVersion"]}, "status": {"abort": true}})
        );
        assert_eq!((p[1].path.as_str(), p[1].status), (PATH, 200));
        let body: Value = serde_json::from_str(&p[1].body).unwrap();
        assert_eq!(body.as_object().unwrap().keys().collect::<Vec<_>>(), ["metadata"]);
        assert!(body["metadata"]["resourceVersion"].is_null(), "{body}");
        assert_eq!(body["metadata"]["annotations"]["backstop.io/action-id"], "A1");

        let notice =
            Notice { warning: false, reason: "BackstopApplied", message: "backstop action A1: aborted".into() };
        k8s.notify(&obj(), &notice).await;
        let events = emu.events();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(
            events[0]["involvedObject"],
            json!({"apiVersion": ARGO, "kind": "Rollout", "name": "model-service", "namespace": "sms-app"})
        );
        assert_eq!(
            (events[0]["reason"].as_str(), events[0]["type"].as_str()),
            (Some("BackstopApplied"), Some("Normal"))
        );

        // Already aborted: a no-op, nothing written.
        let outcome = abort_it(&k8s).await;
        assert_eq!(
            outcome,
            Outcome::NoOp { state: json!({"abort": true, "phase": "Paused", "message": "CanaryPauseStep"}) }
        );
        assert_eq!(patches(&emu).len(), 2);

        // Undo: abort back to false, as `kubectl argo rollouts retry` would set it.
        let (before, after) = (json!({"abort": false, "phase": "Paused"}), json!({"abort": true}));
        let decide = |ro: &Value| restore_abort(ro, &before, &after).map_err(|e| e.to_string());
        let outcome = actions::execute(&k8s, &obj(), &decide, &META, Duration::from_secs(10), true).await;
        assert!(matches!(outcome, Outcome::Applied { .. }), "{outcome:?}");
        assert_eq!(stored(&emu)["status"]["abort"], false);
        let outcome = actions::execute(&k8s, &obj(), &decide, &META, Duration::from_secs(10), true).await;
        assert!(matches!(&outcome, Outcome::Refused { reason } if reason.contains("no longer aborted")), "{outcome:?}");
    }

    #[tokio::test]
    async fn a_rollout_changed_between_read_and_write_is_a_conflict_and_is_decided_again() {
        let emu = cluster().await;
        let (_dir, k8s) = target(&emu).await;

        // The target on its own: the controller moved the Rollout on after our read.
        let read = k8s.get(&obj()).await.unwrap();
        let Decided::Changed { object, .. } = abort(&read.object).unwrap() else { panic!() };
        emu.mutate(ARGO, "Rollout", "sms-app", "model-service", |ro| ro["status"]["currentStepIndex"] = 2.into());
        let err = k8s.replace(&obj(), &read, &object).await.unwrap_err();
        assert!(matches!(err, TargetError::Conflict { .. }), "{err}");
        assert!(err.to_string().contains("the object has been modified"), "{err}");
        assert!(stored(&emu)["status"].get("abort").is_none(), "nothing written");
        assert_eq!(patches(&emu).iter().map(|r| r.status).collect::<Vec<_>>(), [409]);

        // Through the executor: re-read, re-decided, applied.
        emu.conflict_next(1);
        let outcome = abort_it(&k8s).await;
        assert!(matches!(outcome, Outcome::Applied { .. }), "{outcome:?}");
        let status: Vec<(bool, u16)> = patches(&emu).iter().map(|r| (r.path.ends_with("/status"), r.status)).collect();
        assert_eq!(status, [(true, 409), (true, 409), (true, 200), (false, 200)]);
        assert_eq!(stored(&emu)["status"]["abort"], true);
    }

    #[tokio::test]
    async fn a_rollout_someone_else_aborted_first_is_a_noop() {
        let emu = cluster().await;
        let (_dir, k8s) = target(&emu).await;
        // A person runs `kubectl argo rollouts abort` just before our write lands.
        emu.before_write(|ro| ro["status"]["abort"] = true.into());
        let outcome = abort_it(&k8s).await;
        assert!(matches!(&outcome, Outcome::NoOp { state } if state["abort"] == true), "{outcome:?}");
        let ro = stored(&emu);
        assert!(ro["metadata"]["annotations"].get("backstop.io/action-id").is_none(), "our write never landed");
        assert_eq!(patches(&emu).iter().map(|r| r.status).collect::<Vec<_>>(), [409]);
    }

    #[tokio::test]
    async fn forbidden_status_patch_fails_at_once_naming_the_rbac_rule() {
        let emu = cluster().await;
        emu.deny("patch", "rollouts/status", Some("sms-app"));
        let (_dir, k8s) = target(&emu).await;
        let Outcome::Failed { reason } = abort_it(&k8s).await else { panic!("not failed") };
        assert!(reason.contains("patch rollouts.argoproj.io/status sms-app/model-service: forbidden"), "{reason}");
        assert!(
            reason.contains(
                r#"apiGroups: ["argoproj.io"], resources: ["rollouts/status"], verbs: ["patch"] in namespace sms-app"#
            ),
            "{reason}"
        );
        assert_eq!(patches(&emu).len(), 1, "not retried");
        assert!(stored(&emu)["status"].get("abort").is_none());
    }

    #[tokio::test]
    async fn without_patch_on_rollouts_the_abort_lands_without_annotations() {
        let emu = cluster().await;
        emu.deny("patch", "rollouts", Some("sms-app"));
        let (_dir, k8s) = target(&emu).await;
        let outcome = abort_it(&k8s).await;
        assert!(matches!(outcome, Outcome::Applied { .. }), "the abort is the action: {outcome:?}");
        let ro = stored(&emu);
        assert_eq!(ro["status"]["abort"], true);
        assert!(ro["metadata"]["annotations"].get("backstop.io/action-id").is_none());
        assert_eq!(patches(&emu).iter().map(|r| r.status).collect::<Vec<_>>(), [200, 403]);
    }

    #[tokio::test]
    async fn server_errors_are_retried_and_a_missing_rollout_is_refused() {
        let emu = cluster().await;
        let (_dir, k8s) = target(&emu).await;
        emu.fail_next("PATCH", Some("rollouts"), 503, 2);
        let outcome = abort_it(&k8s).await;
        assert!(matches!(outcome, Outcome::Applied { .. }), "{outcome:?}");
        assert_eq!(patches(&emu).iter().map(|r| r.status).collect::<Vec<_>>(), [503, 503, 200, 200]);

        let missing = ObjectRef::rollout("sms-app", "nope");
        let decide = |ro: &Value| abort(ro).map_err(|e| e.to_string());
        let outcome = actions::execute(&k8s, &missing, &decide, &META, Duration::from_secs(10), true).await;
        let Outcome::Refused { reason } = outcome else { panic!("{outcome:?}") };
        assert!(reason.starts_with("Rollout sms-app/nope not found in the cluster at"), "{reason}");
        assert!(reason.contains("get rollouts.argoproj.io sms-app/nope"), "{reason}");
    }
}

/// A slow API server holds up only the action waiting on it: the state is not held during the
/// write, so other alerts are answered meanwhile, and a second alert for the same rule and
/// object is held (the first action is under way), not acted on twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_api_server_holds_up_only_its_own_action() {
    let emu = cluster().await;
    let wd = workdir(&emu, "", "3s");
    let server = std::sync::Arc::new(wd.serve());
    emu.delay_next("GET", Some("virtualservices"), Duration::from_secs(30), 20);
    let first = tokio::spawn({
        let server = server.clone();
        async move { alert(&server, FIRING).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let unrelated = alert(&server, include_str!("../../fixtures/alertmanager/unrelated.json")).await;
    assert_eq!(unrelated["results"][0]["outcome"], "received", "{unrelated}");
    let second = alert(&server, &FIRING.replace("a9c5c3b76558e44d", "00000000000000aa")).await;
    assert!(!first.is_finished(), "both were answered while the first action still waited on the API server");
    assert_eq!(second["results"][0]["outcome"], "held", "{second}");
    let reason = second["results"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("is under way"), "{reason}");
    let first = first.await.unwrap();
    assert_eq!(first["results"][0]["outcome"], "failed", "{first}");
    assert_eq!(weights(&emu), [90, 10]);
}

/// A failed action is answered 503 so that Alertmanager sends the group again (with its
/// backoff); the failure freed the alert's key, so the retry acts, once.
#[tokio::test]
async fn a_failed_action_asks_alertmanager_to_retry_and_the_retry_acts() {
    let emu = cluster().await;
    let wd = workdir(&emu, "", "10s");
    let server = wd.serve();
    emu.conflict_next(4); // every attempt of the first delivery loses its race
    let first = alert(&server, FIRING).await;
    assert_eq!(first["results"][0]["outcome"], "failed", "{first}");
    assert_eq!(weights(&emu), vec![90, 10]);
    let retry = alert(&server, FIRING).await;
    assert_eq!(retry["results"][0]["outcome"], "applied", "{retry}");
    assert_eq!(weights(&emu), vec![100, 0]);
    let again = alert(&server, FIRING).await;
    assert_eq!(again["results"][0]["outcome"], "noop", "a later repeat is a duplicate: {again}");
}
