//! Run the tansu Kafka-protocol broker (its own process; in-memory storage, or S3 through moto's
//! server for a broker that restarts) from tests.
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
    /// Where it keeps its data, when not in memory: an S3 server of its own (restartable).
    s3: Option<S3>,
}

/// moto's S3 server (PyPI `moto[server]`, its own process): storage that outlives the broker, so
/// a test can restart the broker and find its topics, records and committed offsets again
/// (tansu 0.6 keeps data in memory, in S3 or in PostgreSQL; not in files).
pub struct S3 {
    child: Child,
    port: u16,
}

impl S3 {
    async fn start() -> Option<S3> {
        let python = super::find_binary("BACKSTOP_PYTHON", &["python3"])?;
        let probe = Command::new(&python).args(["-c", "import moto.server"]).output().ok()?;
        if !probe.status.success() {
            if std::env::var("BACKSTOP_SKIP_EXTERNAL").as_deref() == Ok("1") {
                eprintln!("skipping: moto not installed");
                return None;
            }
            panic!("moto's S3 server not found: pip install --user 'moto[server]' (./test does)");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let s3 = S3 { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        // The bucket the broker writes to.
        loop {
            let created = reqwest::Client::new().put(format!("{}/tansu", s3.url())).send().await;
            if created.is_ok_and(|r| r.status().is_success()) {
                return Some(s3);
            }
            assert!(Instant::now() < deadline, "moto did not answer on {port}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
        let child = spawn(&bin, port, None);
        let t = Tansu { child, port, s3: None };
        t.listening().await;
        Some(t)
    }

    /// With its data in an S3 server of its own, so that [`Tansu::restart`] keeps it.
    pub async fn try_start_persistent() -> Option<Tansu> {
        let bin = binary_or_skip()?;
        let s3 = S3::start().await?;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = spawn(&bin, port, Some(&s3));
        let t = Tansu { child, port, s3: Some(s3) };
        t.listening().await;
        Some(t)
    }

    /// Stop the broker (kill -9); [`Tansu::start_again`] starts it on the same port and storage.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn start_again(&mut self) {
        self.child = spawn(&binary().unwrap(), self.port, self.s3.as_ref());
        self.listening().await;
    }

    async fn listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {}", self.port);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

fn spawn(bin: &std::path::Path, port: u16, s3: Option<&S3>) -> Child {
    let url = format!("tcp://127.0.0.1:{port}");
    let mut command = Command::new(bin);
    command.args(["broker", "--listener-url", &url, "--advertised-listener-url", &url]);
    match s3 {
        None => command.args(["--storage-engine", "memory://tansu/"]),
        Some(s3) => command.args(["--storage-engine", "s3://tansu/"]).envs([
            ("AWS_ENDPOINT", s3.url().as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
        ]),
    };
    command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
