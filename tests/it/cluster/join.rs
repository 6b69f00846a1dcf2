//! A replica that joins with an empty disk, from the log topic's latest snapshot.

use super::*;

/// A replica that joins with an empty disk starts from the leader's latest snapshot on the log
/// topic (published every second here), not from the topic's first message: its log begins at
/// that snapshot's checkpoint, each segment it has is the leader's byte for byte, it verifies,
/// and when it must take over it knows what its predecessors did (the alert is a duplicate, the
/// pause holds).
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_with_an_empty_disk_joins_from_the_latest_snapshot_and_takes_over_hot() {
    let Some(mut cluster) = Cluster::with(3, |wd| {
        let config = std::fs::read_to_string(wd.config()).unwrap();
        assert!(config.ends_with('\n') && config.contains("cluster:\n"));
        std::fs::write(wd.config(), config + "  snapshot_every: 1s\n").unwrap();
    })
    .await
    else {
        return;
    };
    cluster.replicas[0].start();
    cluster.replicas[1].start();
    let leader = cluster.settled(Duration::from_secs(60)).await;
    let (status, body) = fire(cluster.replicas[leader].server()).await;
    assert_eq!((status, &body["results"][0]["outcome"]), (200, &Value::from("applied")), "{body}");
    let pause = r#"{"target": "shop/checkout", "reason": "migration", "actor": "oncall"}"#;
    let (status, body) =
        cluster.replicas[leader].server().post("/v1/pause", "application/json", pause.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = cluster.replicas[leader]
        .server()
        .post("/v1/feedback", "application/x-ndjson", outcomes(3, 100).join("\n"))
        .await;
    assert_eq!(status, 200, "{body}");
    // A few snapshots later, a third replica starts with nothing on its disk.
    let published = |dir: &Path| records(dir).iter().filter(|r| r["detail"]["snapshot"] == true).count();
    let leader_dir = cluster.replicas[leader].audit_dir();
    assert!(eventually(Duration::from_secs(20), || (published(&leader_dir) >= 2).then_some(())).await.is_some());
    cluster.replicas[2].start();
    let newcomer = cluster.replicas[2].audit_dir();
    cluster.settled(Duration::from_secs(60)).await;
    let first = records(&newcomer).into_iter().next().expect("a log");
    eprintln!("the newcomer's log starts at seq {}", first["seq"]);
    assert_eq!((first["kind"].as_str(), first["detail"]["snapshot"].as_bool()), (Some("checkpoint"), Some(true)));
    assert!(first["seq"].as_u64().unwrap() > 1, "not from the topic's first message");
    assert!(cluster.replicas[2].server().log().contains("joined the replicated log from its latest snapshot"));
    // Every segment it has is the leader's segment of the same name, byte for byte.
    let same = eventually(Duration::from_secs(30), || {
        let mine = segments(&newcomer);
        let theirs = segments(&leader_dir);
        (!mine.is_empty() && mine.iter().all(|s| theirs.contains(s))).then_some(())
    })
    .await;
    assert!(same.is_some(), "the newcomer's segments differ from the leader's");
    let out = cluster.replicas[2].wd.cli(&["audit", "verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // It must take over: the leader dies, the other follower is stopped.
    let other = 1 - leader;
    cluster.replicas[other].signal("-STOP");
    cluster.replicas[leader].kill();
    let next = cluster.settled(Duration::from_secs(60)).await;
    assert_eq!(next, 2);
    let (status, body) = fire(cluster.replicas[2].server()).await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["results"][0]["outcome"], "applied", "acted twice: {body}");
    assert_eq!(cluster.patches(), 1);
    let pauses: Value =
        reqwest::get(format!("{}/v1/pause", cluster.replicas[2].server().url)).await.unwrap().json().await.unwrap();
    assert!(pauses.to_string().contains("shop/checkout"), "{pauses}");
    cluster.replicas[other].signal("-CONT");
}
