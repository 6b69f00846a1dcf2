//! The notices (Kubernetes Events) about an action: with `ui.url`, each ends with the link to the
//! action's page on the on-call page.

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use crate::audit::{AuditLog, AuditOptions};
use crate::pipeline::{Pipeline, Settings, notice_message};
use crate::target::manifests::Manifests;
use crate::target::{Fetched, Notice, ObjectRef, Target, TargetError};

use super::*;

#[test]
fn the_message_ends_with_the_action_s_permalink_only_with_ui_url() {
    let id = "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
    assert_eq!(
        notice_message(id, "canary-high-error-rate", "changed a to b", None),
        format!("backstop action {id} (rule canary-high-error-rate): changed a to b")
    );
    for url in ["https://backstop.example.com", "https://backstop.example.com/"] {
        assert_eq!(
            notice_message(id, "r", "refused: not found", Some(url)),
            format!(
                "backstop action {id} (rule r): refused: not found — see https://backstop.example.com/ui/actions/{id}"
            ),
            "{url}"
        );
    }
    assert!(
        notice_message(id, "r", "x", Some("https://ops.example.com/backstop"))
            .ends_with(&format!(" — see https://ops.example.com/backstop/ui/actions/{id}")),
        "a page served under a path"
    );
}

/// The demo's manifests, and every notice the pipeline gives.
struct Noting {
    manifests: Manifests,
    notices: Mutex<Vec<Notice>>,
}

impl Target for Noting {
    fn describe(&self) -> String {
        self.manifests.describe()
    }
    fn get<'a>(&'a self, obj: &'a ObjectRef) -> BoxFuture<'a, Result<Fetched, TargetError>> {
        self.manifests.get(obj)
    }
    fn replace<'a>(
        &'a self,
        obj: &'a ObjectRef,
        read: &'a Fetched,
        new: &'a Value,
    ) -> BoxFuture<'a, Result<(), TargetError>> {
        self.manifests.replace(obj, read, new)
    }
    fn notify<'a>(&'a self, _obj: &'a ObjectRef, notice: &'a Notice) -> BoxFuture<'a, ()> {
        self.notices.lock().unwrap().push(notice.clone());
        Box::pin(async {})
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_ui_url_the_applied_and_the_unverified_notices_link_to_the_action_s_page() {
    let h = harness();
    let rules = h._dir.path().join("verify.yaml");
    std::fs::write(
        &rules,
        r#"
rules:
  - name: verified-rollback
    match: ['alertname="CanaryHighErrorRate"']
    target: { namespace: sms-app, virtualservice: model-service }
    action: { rollback: { stable: v1, canary: v2 } }
    verify: { query: share_of_v2, deadline: 1s, interval: 100ms }
"#,
    )
    .unwrap();
    let target = Arc::new(Noting { manifests: Manifests::new(&h.manifests), notices: Mutex::default() });
    let settings = Settings { ui_url: Some("https://backstop.example.com/".into()), ..settings() };
    let pipeline = Pipeline::new(
        crate::rules::load(&[rules]).unwrap(),
        AuditLog::open(&h._dir.path().join("audit-notices"), AuditOptions::default()).unwrap(),
        target.clone(),
        settings,
    )
    .unwrap()
    // The canary keeps 10% of the traffic: the rollback is not verified.
    .with_prometheus(Arc::new(crate::prometheus::FixedValue(Some(0.1))));
    let pipeline = Arc::new(pipeline);
    let token = tokio_util::sync::CancellationToken::new();
    let _verifier = pipeline.spawn_verifier(token.clone()).await;
    let alerts = crate::sources::alertmanager::parse(FIRING.as_bytes()).unwrap().events();
    let reports = pipeline.alerts(&alerts, json!({})).await.unwrap();
    assert_eq!(reports[0].outcome, Kind::Applied, "{reports:?}");
    let id = reports[0].action_id.clone().unwrap();
    let link = format!(" — see https://backstop.example.com/ui/actions/{id}");
    for _ in 0..100 {
        if target.notices.lock().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    token.cancel();
    let notices = target.notices.lock().unwrap().clone();
    let reasons: Vec<&str> = notices.iter().map(|n| n.reason).collect();
    assert_eq!(reasons, ["BackstopApplied", "BackstopUnverified"], "{notices:?}");
    for n in &notices {
        assert!(n.message.starts_with(&format!("backstop action {id} (rule verified-rollback): ")), "{n:?}");
        assert!(n.message.ends_with(&link), "{n:?}");
    }
}
