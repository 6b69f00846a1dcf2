//! 5. Kafka feedback (optional: needs tansu on PATH or in ~/.cargo/bin).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Row;
use crate::common::*;
use crate::machine::RssSampler;
use crate::servers::{Backstop, workdir};

pub fn tansu_binary() -> Result<PathBuf, String> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("tansu")).find(|p| p.is_file()))
        .unwrap_or_default();
    let installed = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/tansu")).filter(|p| p.is_file());
    on_path.or(installed).ok_or_else(|| "tansu is neither on PATH nor at ~/.cargo/bin/tansu".into())
}

pub struct Tansu(Child);

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn bench_kafka(rows: &mut Vec<Row>) -> Result<(), String> {
    use rdkafka::ClientConfig;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{Consumer, StreamConsumer};

    let bin = tansu_binary()?;
    let n: usize = env_or("BENCH_KAFKA_MESSAGES", 200_000);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(&bin)
        .args([
            "broker",
            "--storage-engine",
            "memory://tansu/",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start {}: {e}", bin.display()))?;
    let _broker = Tansu(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("tansu did not listen within 20 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let brokers = format!("127.0.0.1:{port}");
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &brokers).create().map_err(|e| e.to_string())?;
    let topics = [
        NewTopic::new("bench.feedback", 1, TopicReplication::Fixed(1)),
        NewTopic::new("bench.alerts", 1, TopicReplication::Fixed(1)),
    ];
    for r in admin.create_topics(&topics, &AdminOptions::new()).await.map_err(|e| e.to_string())? {
        r.map_err(|(t, e)| format!("create {t}: {e}"))?;
    }
    let secs = produce_backlog(&brokers, "bench.feedback", &outcome_events(n)).await?;
    println!("  produced {n} messages in {secs:.1} s");

    // Raw consumer: from its first message to its n-th.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "bench-raw")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| e.to_string())?;
    consumer.subscribe(&["bench.feedback"]).map_err(|e| e.to_string())?;
    let mut first = None;
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(m)) => {
                std::hint::black_box(rdkafka::Message::payload(&m).map(<[u8]>::len));
                first.get_or_insert_with(Instant::now);
                got += 1;
            }
            Ok(Err(e)) => return Err(format!("raw consumer: {e}")),
            Err(_) => return Err(format!("raw consumer: {got} of {n} in 60 s")),
        }
    }
    let raw = (n - 1) as f64 / first.unwrap().elapsed().as_secs_f64();
    drop(consumer);

    // backstop: consume, record durably, run the feedback rules; counted from /metrics.
    let extra = format!(
        "kafka:\n  brokers: {brokers}\n  group_id: bench-backstop\n  alerts_topic: bench.alerts\n  feedback_topic: bench.feedback\n"
    );
    let dir = workdir("rules: []\n", &[], &extra);
    let server = Backstop::start(dir.path());
    let sampler = RssSampler::start(server.pid());
    let (name, labels) = KAFKA_ACCEPTED;
    let accepted = async || metric_value(&server.metrics().await, name, &labels).unwrap_or(0.0);
    let ours = match drain_rate(n, Duration::from_secs(120), accepted).await {
        Ok((rate, _)) => rate,
        Err(seen) => return Err(format!("backstop consumed {seen} of {n} in 120 s; its log:\n{}", server.log_tail())),
    };
    let peak = sampler.finish();
    server.stop();
    println!("  backstop {ours:.0}/s, raw rdkafka {raw:.0}/s, backstop peak RSS {:.1} MB", peak as f64 / 1024.0);
    rows.push(Row {
        name: format!("Kafka feedback: {n} outcome events, backstop (recorded, rules run) vs raw rdkafka consumer"),
        measured: format!("{} msg/s", per_s(ours)),
        baseline: format!("{} msg/s", per_s(raw)),
        ratio: Some(ours / raw),
        goal: ">= 0.7x".into(),
        met: Some(ours / raw >= 0.7),
    });
    rows.push(Row::info(
        "memory: peak RSS consuming the Kafka backlog",
        format!("{:.1} MB", peak as f64 / 1024.0),
        "-",
        None,
    ));
    Ok(())
}
