//! Leadership through a `coordination.k8s.io/v1` Lease on the API emulator (resourceVersion
//! preconditions, 409 on a stale write, validation as the API server's): two replicas' electors
//! against one Lease, through kube's `Api<Lease>` as `serve` will use it.

use std::time::Duration;

use backstop::cluster::{Elector, KubeLeases, LeaseError, LeaseRecord, LeaseStore, Role, Timing};
use backstop::target::kubernetes::{KubernetesOptions, client};
use chrono::Utc;
use serde_json::json;

use crate::support::kube::KubeEmulator;

async fn leases(emu: &KubeEmulator, dir: &std::path::Path) -> (KubeLeases, KubeLeases) {
    let opts = KubernetesOptions {
        kubeconfig: Some(emu.write_kubeconfig(dir)),
        request_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let (a, _) = client(&opts).await.unwrap();
    let (b, _) = client(&opts).await.unwrap();
    (KubeLeases::new(a, "backstop", "backstop-leader"), KubeLeases::new(b, "backstop", "backstop-leader"))
}

/// A 2 s lease renewed every 500 ms, acted on until 500 ms before it ends.
fn quick() -> Timing {
    Timing {
        duration: Duration::from_secs(2),
        renew_every: Duration::from_millis(500),
        margin: Duration::from_millis(500),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_replica_leads_the_other_follows_and_takes_over_in_a_new_epoch_after_expiry() {
    let emu = KubeEmulator::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (a_store, b_store) = leases(&emu, dir.path()).await;
    let mut a = Elector::new(a_store, "backstop-0", quick());
    let mut b = Elector::new(b_store, "backstop-1", quick());

    assert!(matches!(a.round(Utc::now()).await.0, Role::Leader { epoch: 0, .. }));
    assert_eq!(b.round(Utc::now()).await.0, Role::Follower { holder: "backstop-0".into() });
    let stored = emu.get("coordination.k8s.io/v1", "Lease", "backstop", "backstop-leader").expect("the Lease");
    assert_eq!(stored["spec"]["holderIdentity"], "backstop-0");
    assert_eq!(stored["spec"]["leaseDurationSeconds"], 2);
    assert_eq!(stored["spec"]["leaseTransitions"], 0);

    // a renews twice; b keeps following (the record changes, so b's clock starts again).
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(matches!(a.round(Utc::now()).await.0, Role::Leader { epoch: 0, .. }));
        assert_eq!(b.round(Utc::now()).await.0, Role::Follower { holder: "backstop-0".into() });
    }

    // The version a's last renewal left, as a deposed leader would still hold it.
    let (a_late, _) = leases(&emu, dir.path()).await;
    let before = a_late.read().await.unwrap().expect("the Lease");

    // a stops renewing (killed). b takes over once 2 s have passed by its own clock, not before.
    let stopped = std::time::Instant::now();
    let role = loop {
        let (role, wait) = b.round(Utc::now()).await;
        if matches!(role, Role::Leader { .. }) {
            break role;
        }
        tokio::time::sleep(wait.min(Duration::from_millis(100))).await;
    };
    let waited = stopped.elapsed();
    assert!(waited >= Duration::from_millis(1_300), "b took over too soon: {waited:?}");
    assert!(matches!(role, Role::Leader { epoch: 1, .. }), "{role:?}");
    let stored = emu.get("coordination.k8s.io/v1", "Lease", "backstop", "backstop-leader").unwrap();
    assert_eq!(
        (stored["spec"]["holderIdentity"].clone(), stored["spec"]["leaseTransitions"].clone()),
        (json!("backstop-1"), json!(1))
    );

    // a's renewal written on the version it last saw (a write in flight across its pause) is
    // refused by the API server's precondition...
    let renewal = LeaseRecord { renewed: Some(Utc::now()), ..before.record.clone() };
    let refused = a_late.write(Some(&before.version), &renewal).await;
    assert!(matches!(refused, Err(LeaseError::Conflict { .. })), "{refused:?}");
    assert!(emu.requests().iter().any(|r| r.method == "PUT" && r.status == 409), "a 409 from the server");
    // ...and a, reading again, follows.
    assert_eq!(a.round(Utc::now()).await.0, Role::Follower { holder: "backstop-1".into() });
    let stored = emu.get("coordination.k8s.io/v1", "Lease", "backstop", "backstop-leader").unwrap();
    assert_eq!(stored["spec"]["holderIdentity"], "backstop-1", "the deposed leader overwrote nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_the_api_server_would_refuse_is_refused_naming_the_field() {
    let emu = KubeEmulator::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = leases(&emu, dir.path()).await;
    let bad = backstop::cluster::LeaseRecord {
        holder: Some("backstop-0".into()),
        duration: Duration::ZERO,
        acquired: None,
        renewed: None,
        transitions: 0,
    };
    let err = store.write(None, &bad).await.unwrap_err().to_string();
    assert!(err.contains("spec.leaseDurationSeconds") && err.contains("must be greater than 0"), "{err}");
    assert!(emu.get("coordination.k8s.io/v1", "Lease", "backstop", "backstop-leader").is_none(), "nothing stored");
}
