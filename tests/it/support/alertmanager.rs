//! Run the real Prometheus Alertmanager from integration tests.
//!
//! [`Alertmanager::start`] launches the installed binary as a single node
//! (`--cluster.listen-address=`, so no gossip port) on a free 127.0.0.1 port, with its
//! config and `--storage.path` in a temporary directory, and one receiver `backstop`: a
//! webhook to the given URL with `send_resolved: true`. Routing is fast for tests:
//! `group_wait: 1s`, `group_interval: 1s`, `repeat_interval: 1h`, `group_by: [namespace]`
//! (change these with [`Alertmanager::start_with`] and [`Options`]). It returns once
//! `GET /-/ready` answers 200. Dropping the value kills the process and waits for it,
//! then removes the temporary directory.
//!
//! Binary: `$BACKSTOP_ALERTMANAGER_BIN` if set, else the first of
//! `prometheus-alertmanager` (Debian's name) and `alertmanager` found on `PATH`.
//!
//! When the binary is missing: [`Alertmanager::start`] panics with a message naming the
//! Debian package (`apt-get install prometheus-alertmanager`). A test that may be skipped
//! on machines without it uses [`Alertmanager::try_start`] instead, which returns `None`
//! (and prints why) only when `BACKSTOP_SKIP_EXTERNAL=1` is set, and panics like `start`
//! otherwise — so a missing install never passes silently in CI:
//!
//! ```ignore
//! let Some(am) = Alertmanager::try_start(&webhook_url, "").await else { return };
//! am.post_alerts(serde_json::json!([{ "labels": { "alertname": "CanaryHighErrorRate" } }])).await;
//! ```
//!
//! `extra_webhook_config` is YAML added to the webhook entry, e.g. `"max_alerts: 2"` or a
//! multi-line `http_config:` block; it is dedented and re-indented, so write it as if at
//! column 0.
//!
//! Facts measured with Alertmanager 0.25 (see fixtures/README.md): the body is payload
//! version 4 with `groupKey`, `truncatedAlerts` and a per-alert `fingerprint`; firing
//! alerts have `endsAt` `0001-01-01T00:00:00Z`; `generatorURL` is passed through as posted.
//! A receiver answering non-2xx is sent the notification again (see shared FIELD-NOTES).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The Debian package that ships the binary.
pub const DEBIAN_PACKAGE: &str = "prometheus-alertmanager";
/// Set to `1` to let [`Alertmanager::try_start`] return `None` when the binary is missing.
pub const SKIP_ENV: &str = "BACKSTOP_SKIP_EXTERNAL";
/// Path of the binary to use instead of searching `PATH`.
pub const BIN_ENV: &str = "BACKSTOP_ALERTMANAGER_BIN";
const BINARY_NAMES: &[&str] = &["prometheus-alertmanager", "alertmanager"];
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const START_ATTEMPTS: usize = 5;

/// Route settings of the generated config.
#[derive(Clone, Debug)]
pub struct Options {
    /// `group_by` label names; empty means one group for all alerts.
    pub group_by: Vec<String>,
    pub group_wait: String,
    pub group_interval: String,
    pub repeat_interval: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            group_by: vec!["namespace".to_owned()],
            group_wait: "1s".to_owned(),
            group_interval: "1s".to_owned(),
            repeat_interval: "1h".to_owned(),
        }
    }
}

/// The Alertmanager binary to run, if one is installed.
pub fn binary() -> Option<PathBuf> {
    super::find_binary(BIN_ENV, BINARY_NAMES)
}

fn missing_message() -> String {
    let looked = match std::env::var_os(BIN_ENV).filter(|p| !p.is_empty()) {
        Some(p) => format!("{BIN_ENV}={} is not an executable file", p.to_string_lossy()),
        None => format!("none of {} is on PATH", BINARY_NAMES.join(", ")),
    };
    format!(
        "Alertmanager binary not found ({looked}). \
         Install Debian's package `{DEBIAN_PACKAGE}` (apt-get install {DEBIAN_PACKAGE}), \
         or set {SKIP_ENV}=1 to skip the tests that use Alertmanager::try_start"
    )
}

/// A running Alertmanager; killed (and waited for) on drop.
pub struct Alertmanager {
    child: Child,
    port: u16,
    client: reqwest::Client,
    // Declared last: removed after the process is gone.
    dir: tempfile::TempDir,
}

impl Alertmanager {
    /// Starts Alertmanager with default [`Options`]; panics if the binary is not installed
    /// (naming the Debian package) or if it does not become ready.
    pub async fn start(webhook_url: &str, extra_webhook_config: &str) -> Alertmanager {
        Self::start_with(webhook_url, extra_webhook_config, &Options::default()).await
    }

    /// Like [`Alertmanager::start`], but `None` when the binary is missing and
    /// `BACKSTOP_SKIP_EXTERNAL=1`; without that variable a missing binary still panics.
    pub async fn try_start(webhook_url: &str, extra_webhook_config: &str) -> Option<Alertmanager> {
        Self::try_start_with(webhook_url, extra_webhook_config, &Options::default()).await
    }

    pub async fn try_start_with(
        webhook_url: &str,
        extra_webhook_config: &str,
        options: &Options,
    ) -> Option<Alertmanager> {
        if binary().is_none() && std::env::var(SKIP_ENV).as_deref() == Ok("1") {
            eprintln!("skipping: {SKIP_ENV}=1 and {}", missing_message());
            return None;
        }
        Some(Self::start_with(webhook_url, extra_webhook_config, options).await)
    }

    pub async fn start_with(webhook_url: &str, extra_webhook_config: &str, options: &Options) -> Alertmanager {
        let bin = binary().unwrap_or_else(|| panic!("{}", missing_message()));
        let config = config_yaml(webhook_url, extra_webhook_config, options);
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("build reqwest client");

        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            // A fresh directory per attempt; a failed attempt's is removed with it.
            let dir = tempfile::Builder::new()
                .prefix("backstop-alertmanager-")
                .tempdir()
                .expect("create temporary directory for Alertmanager");
            let config_path = dir.path().join("alertmanager.yml");
            std::fs::write(&config_path, &config).expect("write alertmanager.yml");
            let log = std::fs::File::create(dir.path().join("alertmanager.log")).expect("create alertmanager.log");
            let port = free_port();
            let child = Command::new(&bin)
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!("--storage.path={}", dir.path().join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg(format!("--web.external-url=http://127.0.0.1:{port}"))
                .arg("--cluster.listen-address=")
                .arg("--log.level=info")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log file"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            // From here on Drop kills the child, also if we panic.
            let mut am = Alertmanager { child, port, client: client.clone(), dir };
            match am.wait_ready().await {
                Ok(()) => return am,
                Err(why) => {
                    last_log = am.log();
                    // Someone else took the port between probing and binding: try again.
                    if !last_log.contains("address already in use") {
                        panic!(
                            "Alertmanager ({}) did not become ready on 127.0.0.1:{port}: {why}\n\
                             --- config ---\n{config}\n--- log ---\n{last_log}",
                            bin.display(),
                        );
                    }
                }
            }
        }
        panic!("Alertmanager: no free port after {START_ATTEMPTS} attempts\n--- log ---\n{last_log}");
    }

    /// Base URL, e.g. `http://127.0.0.1:40123` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Alertmanager's own log so far (stdout and stderr), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("alertmanager.log")).unwrap_or_default()
    }

    /// The generated configuration file.
    pub fn config(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("alertmanager.yml")).unwrap_or_default()
    }

    /// `POST /api/v2/alerts`; `alerts` is a JSON array of postable alerts (a single object
    /// is wrapped in an array). Panics unless Alertmanager answers 200.
    pub async fn post_alerts(&self, alerts: serde_json::Value) {
        let alerts = match alerts {
            serde_json::Value::Array(_) => alerts,
            one => serde_json::Value::Array(vec![one]),
        };
        let url = format!("{}/api/v2/alerts", self.url());
        let resp = self
            .client
            .post(&url)
            .json(&alerts)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}\n--- log ---\n{}", self.log()));
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(
            status.as_u16(),
            200,
            "POST {url} answered {status}: {body}\nalerts: {alerts}\n--- log ---\n{}",
            self.log()
        );
    }

    /// `GET /api/v2/alerts`: the alerts Alertmanager currently holds.
    pub async fn alerts(&self) -> serde_json::Value {
        let url = format!("{}/api/v2/alerts", self.url());
        let resp = self.client.get(&url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert!(resp.status().is_success(), "GET {url} answered {}", resp.status());
        resp.json().await.unwrap_or_else(|e| panic!("GET {url}: bad JSON: {e}"))
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let url = format!("{}/-/ready", self.url());
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("process exited with {status}"));
            }
            let probe = self.client.get(&url).timeout(Duration::from_secs(1)).send().await;
            if probe.is_ok_and(|resp| resp.status().is_success()) {
                // Still ours? (A process that failed to bind would have exited.)
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                    return Err(format!("process exited with {status}"));
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("no 200 from {url} within {READY_TIMEOUT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port the kernel just handed out for 127.0.0.1 and that no other Alertmanager of this
/// test process was given, so parallel tests never point two instances at one port (a
/// second instance would fail to bind while the first one answered its readiness probe).
fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind 127.0.0.1:0 to find a free port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

fn config_yaml(webhook_url: &str, extra_webhook_config: &str, o: &Options) -> String {
    let quote = |s: &str| serde_json::to_string(s).expect("quote string"); // JSON strings are YAML
    let group_by = o.group_by.iter().map(|l| quote(l)).collect::<Vec<_>>().join(", ");
    let mut yaml = format!(
        "route:\n  receiver: backstop\n  group_by: [{group_by}]\n  group_wait: {}\n  \
         group_interval: {}\n  repeat_interval: {}\nreceivers:\n  - name: backstop\n    \
         webhook_configs:\n      - url: {}\n        send_resolved: true\n",
        o.group_wait,
        o.group_interval,
        o.repeat_interval,
        quote(webhook_url),
    );
    let lines: Vec<&str> = extra_webhook_config.lines().collect();
    let indent =
        lines.iter().filter(|l| !l.trim().is_empty()).map(|l| l.len() - l.trim_start().len()).min().unwrap_or(0);
    for line in lines {
        if line.trim().is_empty() {
            continue;
        }
        yaml.push_str("        ");
        yaml.push_str(&line[indent..]);
        yaml.push('\n');
    }
    yaml
}
