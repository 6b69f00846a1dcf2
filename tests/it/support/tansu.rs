//! Run the tansu Kafka-protocol broker (its own process, in-memory storage) from tests.
//! Install: `cargo install tansu --version 0.6.0 --features dynostore` (.ci/run does).
//! Facts measured here (shared FIELD-NOTES): topics are not auto-created; a consumer resuming
//! inside a record batch gets nothing, so tests produce one record per batch.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};

pub struct Tansu {
    child: Child,
    port: u16,
}

/// `$BACKSTOP_TANSU_BIN`, tansu on PATH, or where `cargo install` puts it.
fn binary() -> Option<std::path::PathBuf> {
    super::find_binary("BACKSTOP_TANSU_BIN", &["tansu"]).or_else(|| {
        let installed = std::path::PathBuf::from(std::env::var_os("HOME")?).join(".cargo/bin/tansu");
        installed.exists().then_some(installed)
    })
}

/// The binary; None (with a message) only when it is missing and BACKSTOP_SKIP_EXTERNAL=1.
fn binary_or_skip() -> Option<std::path::PathBuf> {
    let bin = binary();
    if bin.is_none() {
        if std::env::var("BACKSTOP_SKIP_EXTERNAL").as_deref() == Ok("1") {
            eprintln!("skipping: tansu not installed");
            return None;
        }
        panic!("tansu not found: cargo install tansu --version 0.6.0 --features dynostore");
    }
    bin
}

impl Tansu {
    /// Whether a test can start tansu later (see `try_start`).
    pub fn available() -> bool {
        binary_or_skip().is_some()
    }

    /// None (with a message) only when the binary is missing and BACKSTOP_SKIP_EXTERNAL=1.
    pub async fn try_start() -> Option<Tansu> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Tansu::try_start_on(port).await
    }

    /// On a given port (e.g. one that backstop was already pointed at, for outage tests).
    pub async fn try_start_on(port: u16) -> Option<Tansu> {
        let bin = binary_or_skip()?;
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(bin)
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
            .unwrap();
        let t = Tansu { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(t)
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub async fn create_topics(&self, topics: &[&str]) {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", self.brokers()).create().unwrap();
        let new: Vec<NewTopic> = topics.iter().map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1))).collect();
        let results = admin.create_topics(&new, &AdminOptions::new()).await.unwrap();
        for r in results {
            r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
        }
    }

    /// One record per batch (see the module's note).
    pub fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("linger.ms", "0")
            .set("batch.num.messages", "1")
            .create()
            .unwrap()
    }

    pub async fn send(&self, producer: &FutureProducer, topic: &str, payload: &str, headers: &[(&str, &str)]) {
        let mut h = rdkafka::message::OwnedHeaders::new();
        for (k, v) in headers {
            h = h.insert(rdkafka::message::Header { key: k, value: Some(v.as_bytes()) });
        }
        let record = FutureRecord::<(), _>::to(topic).payload(payload).headers(h);
        producer.send(record, Duration::from_secs(10)).await.unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
