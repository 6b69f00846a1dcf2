//! Takeovers: kill -9 and SIGSTOP of the leader, repeated kills, a step-down finished by the next leader.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_one_acts_the_others_copy_the_log_and_a_kill_of_the_leader_hands_over_hot() {
    let Some(mut cluster) = Cluster::new(3).await else { return };
    for r in &mut cluster.replicas {
        r.start();
    }
    let leader = cluster.settled(Duration::from_secs(60)).await;
    let follower = (leader + 1) % 3;
    let leader_name = cluster.replicas[leader].name.clone();
    assert_eq!(
        cluster.labelled_leaders(),
        std::slice::from_ref(&leader_name),
        "the Service selects the leader's Pod only"
    );

    // A follower refuses intake, naming the leader (Alertmanager retries; the Service routes).
    let (status, body) = fire(cluster.replicas[follower].server()).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["leader"], leader_name.as_str(), "{body}");
    assert_eq!(cluster.patches(), 0);

    // The leader acts once.
    let (status, body) = fire(cluster.replicas[leader].server()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["outcome"], "applied", "{body}");
    assert_eq!(cluster.weights(), [100, 0]);

    // On-call pauses another target through the leader.
    let (status, body) = cluster.replicas[leader]
        .server()
        .post(
            "/v1/pause",
            "application/json",
            r#"{"target": "shop/checkout", "reason": "migration", "actor": "oncall"}"#.to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Every replica's log becomes the same bytes.
    cluster.assert_copies(leader, false).await;

    // kill -9 of the leader: a follower takes over (after the lease expires by its clock).
    let killed_at = Instant::now();
    cluster.replicas[leader].kill();
    let new_leader = cluster.settled(Duration::from_secs(30)).await;
    let handover = killed_at.elapsed();
    eprintln!("takeover after kill -9: {handover:?} (lease 3 s)");
    assert_ne!(new_leader, leader);
    let new_name = cluster.replicas[new_leader].name.clone();
    // The dead leader's Pod keeps its label until it runs again (Kubernetes would mark it not
    // Ready, so the Service drops it); the new leader has labelled its own.
    assert!(cluster.labelled_leaders().contains(&new_name));
    let new_dir = cluster.replicas[new_leader].audit_dir();
    let takeover =
        records(&new_dir).into_iter().rev().find(|r| r["detail"]["control"] == "takeover").expect("a takeover record");
    assert_eq!(takeover["detail"]["takeover"]["leader"], cluster.replicas[new_leader].name.as_str());
    assert_eq!(takeover["detail"]["takeover"]["previous"], leader_name.as_str(), "{takeover}");
    assert!(takeover["detail"]["takeover"]["epoch"].as_u64().unwrap() >= 1, "{takeover}");

    // The new leader folded the same state: the alert its predecessor handled is a duplicate.
    let (status, body) = fire(cluster.replicas[new_leader].server()).await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["results"][0]["outcome"], "applied", "acted twice: {body}");
    assert_eq!(cluster.patches(), 1, "one write to the VirtualService in all");
    // And the pause issued through the old leader holds on the new one.
    let pauses: Value = reqwest::get(format!("{}/v1/pause", cluster.replicas[new_leader].server().url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(pauses.to_string().contains("shop/checkout") && pauses.to_string().contains("oncall"), "{pauses}");

    // The killed replica comes back with its disk, follows, and catches up; every log verifies
    // and all three are the same bytes.
    cluster.replicas[leader].start();
    let again = cluster.settled(Duration::from_secs(30)).await;
    assert_eq!(again, new_leader, "a returning replica does not take the lease back");
    let labelled =
        eventually(Duration::from_secs(10), || (cluster.labelled_leaders() == [new_name.clone()]).then_some(())).await;
    assert!(labelled.is_some(), "the returning replica unlabels its Pod: {:?}", cluster.labelled_leaders());
    cluster.assert_copies(new_leader, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_paused_past_its_lease_acts_on_nothing_when_it_wakes_and_follows_the_new_one() {
    let Some(mut cluster) = Cluster::new(3).await else { return };
    for r in &mut cluster.replicas {
        r.start();
    }
    let old = cluster.settled(Duration::from_secs(60)).await;
    let old_name = cluster.replicas[old].name.clone();

    // SIGSTOP (a long GC pause, a frozen VM): the others take over once its lease expires.
    cluster.replicas[old].signal("-STOP");
    let new = cluster.settled(Duration::from_secs(30)).await;
    assert_ne!(new, old);
    let new_name = cluster.replicas[new].name.clone();

    // An alert reaches the paused leader meanwhile (the kernel queues the connection); it is
    // answered only when the process wakes, after the takeover, with its lease long gone.
    let url = format!("{}/v1/alertmanager", cluster.replicas[old].server().url);
    let late = tokio::spawn(async move {
        let resp = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(FIRING)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.replicas[old].signal("-CONT");
    let (status, body) = late.await.unwrap();
    assert_eq!(status, 503, "the deposed leader must not take it: {body}");
    assert_eq!(cluster.patches(), 0, "the deposed leader wrote the VirtualService");

    // It steps down and follows; the new leader acts, once.
    let leader = cluster.settled(Duration::from_secs(30)).await;
    assert_eq!(leader, new, "the woken replica does not take the lease back");
    let (status, body) = fire(cluster.replicas[new].server()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["outcome"], "applied", "{body}");
    assert_eq!(cluster.patches(), 1);

    // Nothing the old leader wrote after the takeover survives: every log is the new leader's.
    cluster.assert_copies(new, false).await;
    let new_dir = cluster.replicas[new].audit_dir();
    let takeover = records(&new_dir)
        .into_iter()
        .position(|r| r["detail"]["control"] == "takeover" && r["detail"]["takeover"]["leader"] == new_name.as_str())
        .expect("the takeover record");
    let after: Vec<Value> = records(&new_dir).into_iter().skip(takeover).collect();
    assert!(
        after.iter().all(|r| r["actor"] != old_name.as_str()),
        "a record by the deposed leader after the takeover: {after:?}"
    );
    assert!(cluster.replicas[old].server().log().contains("term ended"), "{}", cluster.replicas[old].server().log());
}

/// 20 kills of the leader in a row (100 in `cargo bench --bench cluster`): one leader
/// at a time, epochs that only grow, one chain on every replica, one write to the target.
#[tokio::test(flavor = "multi_thread")]
async fn repeated_kills_of_the_leader_keep_one_leader_at_a_time_and_one_chain() {
    const KILLS: usize = 20;
    let Some(mut cluster) = Cluster::new(3).await else { return };
    for r in &mut cluster.replicas {
        r.start();
    }
    let mut leader = cluster.settled(Duration::from_secs(60)).await;
    let (status, body) = fire(cluster.replicas[leader].server()).await;
    assert_eq!((status, &body["results"][0]["outcome"]), (200, &Value::from("applied")), "{body}");
    let mut handovers = Vec::new();
    for _ in 0..KILLS {
        let killed_at = Instant::now();
        cluster.replicas[leader].kill();
        let next = cluster.settled(Duration::from_secs(60)).await;
        handovers.push(killed_at.elapsed());
        assert_ne!(next, leader);
        // Every new leader knows the alert: a redelivery is not acted on again.
        let (status, body) = fire(cluster.replicas[next].server()).await;
        assert_eq!(status, 200, "{body}");
        assert_ne!(body["results"][0]["outcome"], "applied", "acted twice: {body}");
        cluster.replicas[leader].start();
        leader = next;
    }
    cluster.settled(Duration::from_secs(60)).await;
    handovers.sort();
    // Nearest rank: with 20 takeovers the p99 is the slowest.
    let rank = |q: f64| handovers[((q * KILLS as f64).ceil() as usize).clamp(1, KILLS) - 1];
    eprintln!(
        "kill -9 to a ready new leader over {KILLS} takeovers (lease 3 s): min {:?}, p50 {:?}, p99 {:?}, max {:?}",
        handovers[0],
        rank(0.5),
        rank(0.99),
        handovers[KILLS - 1]
    );
    assert_eq!(cluster.patches(), 1, "one write to the VirtualService across {KILLS} takeovers");
    let dir = cluster.replicas[leader].audit_dir();
    let takeovers: Vec<Value> = records(&dir).into_iter().filter(|r| r["detail"]["control"] == "takeover").collect();
    assert_eq!(takeovers.len(), KILLS + 1, "the first leader's and one per kill");
    let epochs: Vec<u64> = takeovers.iter().map(|t| t["detail"]["takeover"]["epoch"].as_u64().unwrap()).collect();
    assert!(epochs.windows(2).all(|w| w[0] < w[1]), "epochs only grow: {epochs:?}");
    let handover_ms: Vec<u64> =
        takeovers.iter().map(|t| t["detail"]["takeover"]["handover_ms"].as_u64().unwrap()).collect();
    eprintln!("handover (marker, catch-up, resume, record) per takeover, ms: {handover_ms:?}");
    cluster.assert_copies(leader, true).await;
}

/// A gradual rollback (steps of 25, 10, 0 every 2 s) started by one leader and finished by the
/// next after a kill -9: each step once, never back up.
#[tokio::test(flavor = "multi_thread")]
async fn a_step_down_started_by_a_killed_leader_is_finished_by_the_next_each_step_once() {
    let gradual = |wd: &Workdir| {
        std::fs::remove_file(wd.path("rules/canary.yaml")).unwrap();
        std::fs::remove_file(wd.path("rules/feedback.yaml")).unwrap();
        std::fs::write(
            wd.path("rules/gradual.yaml"),
            r#"rules:
  - name: gradual-rollback
    match: ['alertname="CanaryHighErrorRate"']
    target: { namespace: "{{ $labels.namespace }}", virtualservice: "{{ $labels.virtualservice }}" }
    action:
      rollback: { stable: v1, canary: v2, steps: [25, 10, 0], interval: 2s }
    cooldown: 1h
"#,
        )
        .unwrap();
    };
    let Some(mut cluster) = Cluster::with(3, gradual).await else { return };
    // A canary at 50%: the case the steps are for.
    cluster.emu.mutate(VS.0, VS.1, VS.2, VS.3, |vs| {
        for d in vs["spec"]["http"][0]["route"].as_array_mut().unwrap() {
            d["weight"] = 50.into();
        }
    });
    for r in &mut cluster.replicas {
        r.start();
    }
    let leader = cluster.settled(Duration::from_secs(60)).await;
    let (status, body) = fire(cluster.replicas[leader].server()).await;
    assert_eq!((status, &body["results"][0]["outcome"]), (200, &Value::from("applied")), "{body}");
    assert_eq!(cluster.weights(), [75, 25], "the first step is taken before the answer");
    cluster.replicas[leader].kill();

    let next = cluster.settled(Duration::from_secs(60)).await;
    let done = eventually(Duration::from_secs(30), || (cluster.weights() == [100, 0]).then_some(())).await;
    assert!(done.is_some(), "the new leader did not finish the step-down: {:?}", cluster.weights());
    tokio::time::sleep(Duration::from_secs(3)).await; // a step taken twice would show by now
    assert_eq!(cluster.patches(), 3, "one write per step across the takeover");
    let applied: Vec<u64> = records(&cluster.replicas[next].audit_dir())
        .iter()
        .filter(|r| r["kind"] == "applied")
        .map(|r| {
            let dests = r["after"][0]["destinations"].as_array().unwrap();
            dests.iter().find(|d| d["subset"] == "v2").unwrap()["weight"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(applied, [25, 10, 0], "each step once, in order");
}
