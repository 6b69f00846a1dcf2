//! Cluster mode with real processes: three `backstop serve` replicas, tansu as the broker of the
//! replicated audit log, and the API emulator holding both the Lease and the VirtualService they
//! protect. One leads and acts; the others follow, say so in `/readyz`, refuse intake naming the
//! leader, and keep a byte-identical copy of the audit log; a kill -9 of the leader hands over to
//! a follower that starts from the same state (an alert it already handled is not acted on again).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::Rng;
use crate::support::backstop::{Server, Workdir, eventually, repo};
use crate::support::kube::KubeEmulator;
use crate::support::tansu::Tansu;

const FIRING: &str = include_str!("../../fixtures/alertmanager/firing.json");
const VS: (&str, &str, &str, &str) = ("networking.istio.io/v1", "VirtualService", "sms-app", "model-service");

struct Replica {
    name: String,
    wd: Workdir,
    server: Option<Server>,
    /// SIGSTOPped: alive, but answers nothing.
    stopped: bool,
}

impl Replica {
    fn audit_dir(&self) -> PathBuf {
        self.wd.path("data/audit")
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    fn start(&mut self) {
        self.server = Some(self.wd.serve());
    }

    fn signal(&mut self, signal: &str) {
        let pid = self.server().child.id().to_string();
        assert!(std::process::Command::new("kill").args([signal, &pid]).status().unwrap().success());
        self.stopped = signal == "-STOP";
    }

    /// SIGKILL: no release of the Lease, no last snapshot, nothing flushed but what was synced.
    fn kill(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }
}

struct Cluster {
    emu: KubeEmulator,
    broker: Tansu,
    /// The topics the leader consumes: alerts, feedback.
    topics: (String, String),
    replicas: Vec<Replica>,
}

async fn readyz(server: &Server) -> Option<(u16, String)> {
    let resp = reqwest::Client::new()
        .get(format!("{}/readyz", server.url))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()?;
    Some((resp.status().as_u16(), resp.text().await.ok()?))
}

impl Cluster {
    /// The emulator with the demo's VirtualService, tansu with the topics, and `n` replicas'
    /// work directories (not started).
    async fn new(n: usize) -> Option<Cluster> {
        Cluster::with(n, |_| {}).await
    }

    /// The same, with `setup` applied to each replica's work directory (its rules).
    async fn with(n: usize, setup: impl Fn(&Workdir)) -> Option<Cluster> {
        Cluster::on(Tansu::try_start().await?, n, setup).await
    }

    /// The same, on a given broker.
    async fn on(broker: Tansu, n: usize, setup: impl Fn(&Workdir)) -> Option<Cluster> {
        let run = uuid::Uuid::now_v7().simple().to_string();
        let (log, alerts, feedback) = (format!("audit-log-{run}"), format!("alerts-{run}"), format!("feedback-{run}"));
        broker.create_topics(&[&log, &alerts, &feedback]).await;
        let emu = KubeEmulator::start().await;
        let text = std::fs::read_to_string(repo("deploy/local/model-service.yaml")).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            emu.seed(v);
        }
        let replicas = (0..n)
            .map(|i| {
                let wd = Workdir::new();
                let kc = emu.write_kubeconfig(wd.dir.path());
                let name = format!("backstop-{i}");
                emu.seed(serde_json::json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": "backstop", "labels": {"app": "backstop"}},
                    "spec": {"containers": [{"name": "backstop", "image": "backstop"}]}
                }));
                let config = std::fs::read_to_string(repo("backstop.yaml"))
                    .unwrap()
                    .replace(
                        "target:\n  manifests:\n    dir: deploy/local\n",
                        &format!("target:\n  kubernetes:\n    kubeconfig: {}\n    request_timeout: 1s\n", kc.display()),
                    )
                    .replace("action_timeout: 10s", "action_timeout: 2s")
                    + &format!(
                        "\nkafka:\n  brokers: {brokers}\n  group_id: backstop-{run}\n  alerts_topic: {alerts}\n  feedback_topic: {feedback}\n\
                         cluster:\n  identity: {name}\n  namespace: backstop\n  lease: backstop-{run}\n  lease_duration: 3s\n  renew_every: 500ms\n  margin: 1s\n  log_topic: {log}\n  pod: {name}\n  kubeconfig: {kc}\n",
                        brokers = broker.brokers(),
                        kc = kc.display()
                    );
                assert!(config.contains("kubernetes:"), "the config's target section changed; update this test");
                std::fs::write(wd.config(), config).unwrap();
                setup(&wd);
                Replica { name, wd, server: None, stopped: false }
            })
            .collect();
        Some(Cluster { emu, broker, topics: (alerts, feedback), replicas })
    }

    /// Wait until one running replica is the leader and every other running one follows it;
    /// the leader's index.
    async fn settled(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leader = None;
            let mut followers = Vec::new();
            for (i, r) in self.replicas.iter().enumerate() {
                let Some(s) = r.server.as_ref().filter(|_| !r.stopped) else { continue };
                match readyz(s).await {
                    Some((200, body)) if body.trim() == "ready: leader" => leader = Some(i),
                    Some((200, body)) => followers.push(body.trim().to_string()),
                    _ => {}
                }
            }
            let running = self.replicas.iter().filter(|r| r.server.is_some() && !r.stopped).count();
            if let Some(l) = leader {
                let name = &self.replicas[l].name;
                if followers.len() + 1 == running
                    && followers.iter().all(|f| *f == format!("ready: follower of {name}"))
                {
                    return l;
                }
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .replicas
                    .iter()
                    .filter_map(|r| r.server.as_ref().map(|s| format!("--- {}\n{}", r.name, s.log())))
                    .collect();
                panic!("no settled leader: leader {leader:?}, followers {followers:?}\n{}", logs.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn weights(&self) -> Vec<u64> {
        let vs = self.emu.get(VS.0, VS.1, VS.2, VS.3).unwrap();
        vs["spec"]["http"][0]["route"].as_array().unwrap().iter().map(|d| d["weight"].as_u64().unwrap_or(0)).collect()
    }

    /// The replicas whose Pod says it leads.
    fn labelled_leaders(&self) -> Vec<String> {
        self.replicas
            .iter()
            .filter(|r| {
                let pod = self.emu.get("v1", "Pod", "backstop", &r.name).unwrap();
                pod["metadata"]["labels"]["backstop.io/leader"] == "true"
            })
            .map(|r| r.name.clone())
            .collect()
    }

    fn patches(&self) -> usize {
        self.emu.requests().into_iter().filter(|r| r.method == "PATCH" && r.path.contains("virtualservices")).count()
    }
}

/// Deliver the firing alert.
async fn fire(server: &Server) -> (u16, Value) {
    server.post("/v1/alertmanager", "application/json", FIRING.to_string()).await
}

impl Cluster {
    /// Every replica's log becomes `leader`'s, byte for byte (and verifies, with `verify`).
    async fn assert_copies(&self, leader: usize, verify: bool) {
        let want = self.replicas[leader].audit_dir();
        for r in &self.replicas {
            let dir = r.audit_dir();
            let same = eventually(Duration::from_secs(30), || (segments(&dir) == segments(&want)).then_some(())).await;
            assert!(same.is_some(), "{} differs from {}'s log", r.name, self.replicas[leader].name);
            if verify {
                let out = r.wd.cli(&["audit", "verify"]);
                assert!(out.status.success(), "{}: {}", r.name, String::from_utf8_lossy(&out.stderr));
            }
        }
    }
}

/// Every segment's name and bytes, in order.
fn segments(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().to_string()).collect())
        .unwrap_or_default();
    names.retain(|n: &String| n.starts_with("seg-"));
    names.sort();
    names.into_iter().map(|n| (n.clone(), std::fs::read(dir.join(&n)).unwrap())).collect()
}

fn records(dir: &Path) -> Vec<Value> {
    segments(dir)
        .iter()
        .flat_map(|(_, b)| String::from_utf8(b.clone()).unwrap().lines().map(str::to_string).collect::<Vec<_>>())
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect()
}

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

/// `n` request outcomes alternating v1 and v2 (seeded): v1 fails one time in fifty, the canary
/// v2 one time in three.
fn outcomes(seed: u64, n: usize) -> Vec<String> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|i| {
            let canary = i % 2 == 1;
            let success = rng.uniform() >= if canary { 1.0 / 3.0 } else { 0.02 };
            serde_json::json!({"service": "model-service", "namespace": "sms-app",
                "version": if canary { "v2" } else { "v1" }, "time": chrono::Utc::now(),
                "kind": "outcome", "success": success})
            .to_string()
        })
        .collect()
}

/// A feedback comparison goes on across a takeover: the events the old leader recorded count on
/// the new one, which acts on a canary that the events it received itself could not condemn
/// (fewer than the rule's min_samples).
#[tokio::test(flavor = "multi_thread")]
async fn a_feedback_comparison_goes_on_across_a_takeover() {
    let Some(mut cluster) = Cluster::new(3).await else { return };
    for r in &mut cluster.replicas {
        r.start();
    }
    let leader = cluster.settled(Duration::from_secs(60)).await;
    let events = outcomes(7, 300);
    // 100 per arm: min_samples, but not yet the batches the dispersion estimate needs.
    let (before, after) = events.split_at(200);
    let (status, body) =
        cluster.replicas[leader].server().post("/v1/feedback", "application/x-ndjson", before.join("\n")).await;
    assert_eq!((status, &body["received"]), (200, &Value::from(200)), "{body}");
    assert_eq!(cluster.patches(), 0, "not enough evidence yet: {body}");
    cluster.replicas[leader].kill();

    let next = cluster.settled(Duration::from_secs(60)).await;
    // 50 per arm: alone, below min_samples (100).
    let (status, body) =
        cluster.replicas[next].server().post("/v1/feedback", "application/x-ndjson", after.join("\n")).await;
    assert_eq!((status, &body["received"]), (200, &Value::from(100)), "{body}");
    assert_eq!(cluster.weights(), [100, 0], "the new leader rolled the canary back: {body}");
    assert_eq!(cluster.patches(), 1);
    let matched: Vec<Value> =
        records(&cluster.replicas[next].audit_dir()).into_iter().filter(|r| r["kind"] == "matched").collect();
    let n = matched[0]["detail"]["evidence"]["detail"]["canary"]["n"].as_u64().unwrap();
    assert!(n > 100, "the canary's count includes what the old leader recorded: {n}");
}

/// A follower paused while the leader records (controls and 2,000 feedback events), and while
/// the leader then dies, catches up from the topic when it wakes: both epochs, the same bytes.
#[tokio::test(flavor = "multi_thread")]
async fn a_follower_that_fell_behind_across_a_takeover_catches_up_to_the_same_bytes() {
    let Some(mut cluster) = Cluster::new(3).await else { return };
    for r in &mut cluster.replicas {
        r.start();
    }
    let leader = cluster.settled(Duration::from_secs(60)).await;
    let lagging = (leader + 1) % 3;
    cluster.replicas[lagging].signal("-STOP");
    let control = |pause: bool, i: usize| {
        let path = if pause { "/v1/pause" } else { "/v1/resume" };
        (path, format!(r#"{{"target": "shop/checkout", "reason": "drill {i}", "actor": "oncall"}}"#))
    };
    for i in 0..20 {
        let (path, body) = control(i % 2 == 0, i);
        let (status, answer) = cluster.replicas[leader].server().post(path, "application/json", body).await;
        assert_eq!(status, 200, "{answer}");
    }
    // And intake load meanwhile: 2,000 feedback events in batches of 200.
    for batch in outcomes(5, 2000).chunks(200) {
        let (status, answer) =
            cluster.replicas[leader].server().post("/v1/feedback", "application/x-ndjson", batch.join("\n")).await;
        assert_eq!((status, &answer["received"]), (200, &Value::from(200)), "{answer}");
    }
    cluster.replicas[leader].kill();
    let next = cluster.settled(Duration::from_secs(60)).await;
    assert_ne!(next, lagging, "a stopped replica cannot take over");
    for i in 20..30 {
        let (path, body) = control(i % 2 == 0, i);
        let (status, answer) = cluster.replicas[next].server().post(path, "application/json", body).await;
        assert_eq!(status, 200, "{answer}");
    }
    cluster.replicas[lagging].signal("-CONT");
    let dir = cluster.replicas[next].audit_dir();
    let behind = cluster.replicas[lagging].audit_dir();
    let same = eventually(Duration::from_secs(30), || (segments(&behind) == segments(&dir)).then_some(())).await;
    assert!(same.is_some(), "the lagging follower did not catch up:\n{}", cluster.replicas[lagging].server().log());
    // Caught up, it says so: no record, no message behind.
    let metrics_url = format!("{}/metrics", cluster.replicas[lagging].server().url);
    let mut caught_up = false;
    for _ in 0..50 {
        let text = reqwest::get(&metrics_url).await.unwrap().text().await.unwrap();
        if text.contains("backstop_replication_lag_records 0") && text.contains("backstop_replication_lag_messages 0") {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(caught_up, "the lag gauges do not say caught up");
    let drills = records(&behind).iter().filter(|r| r["kind"] == "control" && r.to_string().contains("drill ")).count();
    assert_eq!(drills, 30, "every pause and resume, from both leaders");
    let received = records(&behind).iter().filter(|r| r["kind"] == "received").count();
    assert_eq!(received, 2000, "every feedback event once");
    let out = cluster.replicas[lagging].wd.cli(&["audit", "verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A kill -9 of the leader while alerts and feedback stream in over Kafka: the new leader
/// resumes after the last message the log recorded (no consumer-group wait), so every message is
/// in the survivors' logs exactly once (by topic and offset), the alert acts once however often
/// it is redelivered, and every copy is the same bytes and verifies.
#[tokio::test(flavor = "multi_thread")]
async fn a_kill_of_the_leader_while_kafka_streams_in_records_every_message_once() {
    const FEEDBACK: usize = 400;
    const ALERTS: usize = 20;
    let Some(mut cluster) = Cluster::new(3).await else { return };
    for r in &mut cluster.replicas {
        r.start();
    }
    let leader = cluster.settled(Duration::from_secs(60)).await;
    // Healthy feedback (both versions fail 2%): nothing to roll back on; the alert acts.
    let feedback: Vec<String> = outcomes(11, FEEDBACK)
        .into_iter()
        .map(|e| {
            let mut v: Value = serde_json::from_str(&e).unwrap();
            v["success"] = Value::from(v["success"].as_bool().unwrap() || v["version"] == "v2");
            v.to_string()
        })
        .collect();
    let producer = cluster.broker.producer();
    let (alerts, feedback_topic) = cluster.topics.clone();
    let stream = {
        let broker = cluster.broker.brokers();
        let producer = producer.clone();
        tokio::spawn(async move {
            for (i, event) in feedback.iter().enumerate() {
                let record = rdkafka::producer::FutureRecord::<(), _>::to(&feedback_topic).payload(event);
                producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
                if i % (FEEDBACK / ALERTS) == 0 {
                    let record = rdkafka::producer::FutureRecord::<(), _>::to(&alerts).payload(FIRING);
                    producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            broker
        })
    };
    // Mid-stream, the leader dies.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.replicas[leader].kill();
    let next = cluster.settled(Duration::from_secs(60)).await;
    stream.await.unwrap();

    let dir = cluster.replicas[next].audit_dir();
    let (alerts, feedback_topic) = cluster.topics.clone();
    let offsets = |topic: &str| -> Vec<i64> {
        let mut o: Vec<i64> = records(&dir)
            .iter()
            .filter(|r| r["kind"] == "received")
            .filter_map(|r| {
                let k = if r["detail"]["kafka"].is_object() {
                    &r["detail"]["kafka"]
                } else {
                    &r["detail"]["delivery"]["kafka"]
                };
                (k["topic"] == topic).then(|| k["offset"].as_i64().unwrap())
            })
            .collect();
        o.sort();
        o
    };
    let all = eventually(Duration::from_secs(30), || {
        (offsets(&feedback_topic).len() >= FEEDBACK && offsets(&alerts).len() >= ALERTS).then_some(())
    })
    .await;
    assert!(
        all.is_some(),
        "not everything recorded: {} feedback, {} alerts\n{}",
        offsets(&feedback_topic).len(),
        offsets(&alerts).len(),
        cluster.replicas[next].server().log()
    );
    assert_eq!(offsets(&feedback_topic), (0..FEEDBACK as i64).collect::<Vec<_>>(), "each feedback message once");
    assert_eq!(offsets(&alerts), (0..ALERTS as i64).collect::<Vec<_>>(), "each alert message once");
    // Both leaders recorded some of the stream: before and after the new leader's takeover.
    let all = records(&dir);
    let takeover = all.iter().rposition(|r| r["detail"]["control"] == "takeover").unwrap();
    let received = |rs: &[Value]| rs.iter().filter(|r| r["kind"] == "received").count();
    let (old, new) = (received(&all[..takeover]), received(&all[takeover..]));
    eprintln!("messages recorded by the killed leader: {old}, by the new one: {new}");
    assert!(old > 0 && new > 0, "the kill came mid-stream: {old} before, {new} after");
    assert_eq!(cluster.patches(), 1, "the alert acted once");
    assert_eq!(cluster.weights(), [100, 0]);
    // The leader, assigned rather than a group member, still commits to the group (for tools
    // that watch its lag, and as the fallback for a partition the log has no record of).
    let group = format!("backstop-{}", alerts.trim_start_matches("alerts-"));
    let committed = eventually(Duration::from_secs(20), || {
        use rdkafka::consumer::Consumer as _;
        let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", cluster.broker.brokers())
            .set("group.id", &group)
            .create()
            .unwrap();
        let mut list = rdkafka::TopicPartitionList::new();
        list.add_partition(&feedback_topic, 0);
        let got = consumer.committed_offsets(list, Duration::from_secs(5)).ok()?;
        let offset = got.elements()[0].offset();
        (offset == rdkafka::Offset::Offset(FEEDBACK as i64)).then_some(())
    })
    .await;
    assert!(committed.is_some(), "the leader's offsets were not committed to {group}");
    cluster.replicas[leader].start();
    cluster.settled(Duration::from_secs(60)).await;
    cluster.assert_copies(next, true).await;
}

/// Post `events` one per request to whichever replica leads, killing the leader once `kill_after`
/// have been acknowledged (None: never); the audit log of the replica that leads at the end.
async fn stream_feedback(events: &[String], kill_after: Option<usize>) -> (Vec<Value>, usize) {
    let mut cluster = Cluster::new(3).await.expect("tansu");
    for r in &mut cluster.replicas {
        r.start();
    }
    let mut leader = cluster.settled(Duration::from_secs(60)).await;
    for (i, event) in events.iter().enumerate() {
        if Some(i) == kill_after {
            assert_eq!(cluster.patches(), 0, "acted before the kill: move the kill earlier");
            cluster.replicas[leader].kill();
            leader = cluster.settled(Duration::from_secs(60)).await;
        }
        let (status, body) =
            cluster.replicas[leader].server().post("/v1/feedback", "application/x-ndjson", event.clone()).await;
        assert_eq!((status, &body["received"]), (200, &Value::from(1)), "event {i}: {body}");
    }
    assert_eq!(cluster.weights(), [100, 0], "the canary was rolled back");
    (records(&cluster.replicas[leader].audit_dir()), cluster.patches())
}

/// A feedback comparison across a takeover acts at exactly the event it acts at without one,
/// on exactly the same evidence: the new leader's arms are the old one's, record for record.
#[tokio::test(flavor = "multi_thread")]
async fn a_feedback_comparison_acts_at_the_same_event_with_or_without_a_takeover() {
    if !Tansu::available() {
        return;
    }
    let events: Vec<String> = outcomes(23, 300)
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let mut v: Value = serde_json::from_str(&e).unwrap();
            v["id"] = Value::from(format!("event-{i}"));
            v.to_string()
        })
        .collect();
    // Every finding: the event it came at, both arms' counts, the test's figures (statistic,
    // p-value, dispersion) and which comparison fired; not the clock times it started at.
    let decision = |records: &[Value]| -> Vec<(Value, Value)> {
        records
            .iter()
            .filter(|r| r["kind"] == "matched")
            .map(|m| {
                let e = &m["detail"]["evidence"];
                let c = &e["comparison"];
                (
                    m["event_id"].clone(),
                    serde_json::json!([e["canary"], e["baseline"], e["detail"], c["fired"], c["generation"]]),
                )
            })
            .collect()
    };
    let (without, patches) = stream_feedback(&events, None).await;
    assert_eq!(patches, 1);
    let (with, patches) = stream_feedback(&events, Some(120)).await;
    assert_eq!(patches, 1);
    let takeovers = |records: &[Value]| records.iter().filter(|r| r["detail"]["control"] == "takeover").count();
    assert_eq!((takeovers(&without), takeovers(&with)), (1, 2), "the first leader's, and one after the kill");
    let findings = decision(&without);
    assert!(!findings.is_empty());
    eprintln!("acted at {} without a takeover", findings[0].0);
    assert_eq!(decision(&with), findings, "the same event, the same evidence");
}

/// Whichever replica answers `ready: leader` now.
async fn leader_now(cluster: &Cluster) -> Option<usize> {
    for (i, r) in cluster.replicas.iter().enumerate() {
        if let Some(s) = r.server.as_ref().filter(|_| !r.stopped)
            && let Some((200, body)) = readyz(s).await
            && body.trim() == "ready: leader"
        {
            return Some(i);
        }
    }
    None
}

/// The broker killed and started again (its data kept, in S3) while feedback streams in over
/// HTTP: nothing is acknowledged while it is down, a sender that retries until acknowledged gets
/// every event recorded exactly once, and every replica ends with the same bytes, verified.
#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_mid_stream_loses_nothing_and_doubles_nothing() {
    const EVENTS: usize = 120;
    let Some(broker) = Tansu::try_start_persistent().await else { return };
    let mut cluster = Cluster::on(broker, 3, |_| {}).await.unwrap();
    for r in &mut cluster.replicas {
        r.start();
    }
    cluster.settled(Duration::from_secs(60)).await;
    let events: Vec<String> = outcomes(31, EVENTS)
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let mut v: Value = serde_json::from_str(&e).unwrap();
            v["id"] = Value::from(format!("event-{i}"));
            v["success"] = Value::from(true);
            v.to_string()
        })
        .collect();
    let (mut refused, mut down_answers) = (0, Vec::new());
    let mut current = leader_now(&cluster).await;
    for (i, event) in events.iter().enumerate() {
        if i == EVENTS / 2 {
            cluster.broker.stop();
            // While the broker is down, nothing is acknowledged.
            let until = Instant::now() + Duration::from_secs(4);
            while Instant::now() < until {
                if let Some(l) = leader_now(&cluster).await {
                    let (status, _) =
                        cluster.replicas[l].server().post("/v1/feedback", "application/x-ndjson", event.clone()).await;
                    down_answers.push(status);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            cluster.broker.start_again().await;
        }
        // The sender retries until acknowledged (as Alertmanager and a Kafka producer do),
        // asking who leads after a refusal.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(l) = current {
                let (status, body) =
                    cluster.replicas[l].server().post("/v1/feedback", "application/x-ndjson", event.clone()).await;
                if status == 200 {
                    assert_eq!(body["received"], 1, "{body}");
                    break;
                }
                refused += 1;
            }
            assert!(Instant::now() < deadline, "event {i} never acknowledged");
            tokio::time::sleep(Duration::from_millis(200)).await;
            current = leader_now(&cluster).await;
        }
    }
    let takeovers = records(&cluster.replicas[current.unwrap()].audit_dir())
        .iter()
        .filter(|r| r["detail"]["control"] == "takeover")
        .count();
    eprintln!("while the broker was down: {down_answers:?}; refused then retried after: {refused}; terms: {takeovers}");
    assert!(
        !down_answers.is_empty() && !down_answers.contains(&200),
        "acknowledged without the broker: {down_answers:?}"
    );
    let leader = cluster.settled(Duration::from_secs(60)).await;
    cluster.assert_copies(leader, true).await;
    let mut ids: Vec<String> = records(&cluster.replicas[leader].audit_dir())
        .iter()
        .filter(|r| r["kind"] == "received")
        .filter_map(|r| r["event_id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    let mut want: Vec<String> = (0..EVENTS).map(|i| format!("event-{i}")).collect();
    want.sort();
    assert_eq!(ids, want, "every event recorded exactly once");
}

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
