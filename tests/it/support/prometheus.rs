//! Run the real Prometheus server from integration tests.
//!
//! [`Prometheus::start`] launches the installed binary on a free 127.0.0.1 port
//! (`--web.listen-address`, and `--web.external-url` to match, so alerts' `generatorURL` is a
//! loopback address), with `--storage.tsdb.path`, its config and the given rule files in a
//! temporary directory, and `--rules.alert.resend-delay=1s` (the default, 1 min, would hold
//! back alerts to Alertmanager; see shared FIELD-NOTES). The config is fast for tests:
//! `global: {scrape_interval: 1s, evaluation_interval: 1s}`, one scrape job `canary` on the
//! given target, and, when an Alertmanager URL is given, `alerting.alertmanagers` with a
//! static config on its host:port (and its path as `path_prefix`). Give alert rules' groups
//! `interval: 1s` too. It returns once `GET /-/ready` answers 200 and the server on the port
//! is this one (its `storage.tsdb.path` flag is checked). Dropping the value kills the process
//! and waits for it, then removes the temporary directory.
//!
//! Binary: `$BACKSTOP_PROMETHEUS_BIN` if set, else `prometheus` on `PATH` (Debian's package
//! `prometheus`, which also ships `promtool`).
//!
//! When the binary is missing: [`Prometheus::start`] panics with a message naming the Debian
//! package (`apt-get install prometheus`). A test that may be skipped on machines without it
//! uses [`Prometheus::try_start`] instead, which returns `None` (and prints why) only when
//! `BACKSTOP_SKIP_EXTERNAL=1` is set, and panics like `start` otherwise — so a missing install
//! never passes silently in CI:
//!
//! ```ignore
//! const RULES: &str = r#"
//! groups:
//!   - name: canary
//!     interval: 1s
//!     rules:
//!       - alert: CanaryHighErrorRate
//!         expr: |
//!           sum by (namespace, service) (rate(app_predictions_total{status="error",version="v2"}[30s]))
//!             / sum by (namespace, service) (rate(app_predictions_total{version="v2"}[30s])) > 0.1
//!         for: 0s
//!         labels: { severity: critical, virtualservice: model-service }
//! "#;
//! let app = CanaryApp::start(Behaviour::healthy(), Behaviour { error_ratio: 0.3, ..Behaviour::healthy() }).await;
//! let Some(prom) = Prometheus::try_start(&app.target(), &[("canary.yml", RULES)], Some(&am.url())).await else { return };
//! let ratio = prom.query(r#"sum(rate(app_predictions_total{status="error",version="v2"}[30s]))
//!     / sum(rate(app_predictions_total{version="v2"}[30s]))"#).await; // Some(0.3)
//! ```
//!
//! Divide sums, not the bare `rate(...{status="error"}) / rate(...)`: PromQL matches the two
//! sides one-to-one on all labels, `status` included, so that expression is error/error, 1
//! whenever there is any error at all (and an alert on it never resolves while errors go on).
//!
//! Facts measured with Debian's Prometheus 2.42 and the canary app (tests/it/support/canary.rs),
//! on a 2-core machine: ready about 0.3 s after spawn. The first scrape comes about 5 s after
//! start (discovery hands targets to the scrape manager, and to the notifier, on a fixed 5 s
//! tick that 2.42 has no flag for), so a `rate(...[30s])` has its first sample about 6.5 s after
//! spawn (it needs two scrapes), and an alert with `for: 0s` in a group with `interval: 1s`
//! is `firing` in `/api/v1/alerts` about 7 s after spawn; wait up to 20 s to be safe. A ratio
//! of rates is the configured ratio from the second scrape on, but a rate alone is low until
//! the series is as old as the window (the extrapolation of `rate` stops at the first sample).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The Debian package that ships the binary.
pub const DEBIAN_PACKAGE: &str = "prometheus";
/// Set to `1` to let [`Prometheus::try_start`] return `None` when the binary is missing.
pub const SKIP_ENV: &str = "BACKSTOP_SKIP_EXTERNAL";
/// Path of the binary to use instead of searching `PATH`.
pub const BIN_ENV: &str = "BACKSTOP_PROMETHEUS_BIN";
/// The scrape job's name: series scraped from the target carry `job="canary"`.
pub const JOB: &str = "canary";
const BINARY_NAMES: &[&str] = &["prometheus"];
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: usize = 5;

/// The Prometheus binary to run, if one is installed.
pub fn binary() -> Option<PathBuf> {
    super::find_binary(BIN_ENV, BINARY_NAMES)
}

fn missing_message() -> String {
    let looked = match std::env::var_os(BIN_ENV).filter(|p| !p.is_empty()) {
        Some(p) => format!("{BIN_ENV}={} is not an executable file", p.to_string_lossy()),
        None => format!("none of {} is on PATH", BINARY_NAMES.join(", ")),
    };
    format!(
        "Prometheus binary not found ({looked}). \
         Install Debian's package `{DEBIAN_PACKAGE}` (apt-get install {DEBIAN_PACKAGE}), \
         or set {SKIP_ENV}=1 to skip the tests that use Prometheus::try_start"
    )
}

/// A running Prometheus; killed (and waited for) on drop.
pub struct Prometheus {
    child: Child,
    port: u16,
    client: reqwest::Client,
    // Declared last: removed after the process is gone.
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `scrape_target` (`host:port`, e.g. `CanaryApp::target()`),
    /// with `rule_files` (file name, YAML) written beside its config, and sending alerts to
    /// the Alertmanager at `alertmanager_url` (e.g. `Alertmanager::url()`) if given. Panics if
    /// the binary is not installed (naming the Debian package) or if it does not become ready
    /// (an invalid rule file does that: the panic shows the config and Prometheus's log).
    pub async fn start(scrape_target: &str, rule_files: &[(&str, &str)], alertmanager_url: Option<&str>) -> Prometheus {
        let bin = binary().unwrap_or_else(|| panic!("{}", missing_message()));
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("build reqwest client");

        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            // A fresh directory per attempt; a failed attempt's is removed with it.
            let dir = tempfile::Builder::new()
                .prefix("backstop-prometheus-")
                .tempdir()
                .expect("create temporary directory for Prometheus");
            let mut rule_paths = Vec::new();
            for (name, yaml) in rule_files {
                assert!(
                    !name.is_empty() && !name.contains('/') && *name != "prometheus.yml" && *name != "prometheus.log",
                    "rule file name {name:?} must be a plain file name other than prometheus.yml and prometheus.log"
                );
                let path = dir.path().join(name);
                std::fs::write(&path, yaml).unwrap_or_else(|e| panic!("write rule file {}: {e}", path.display()));
                rule_paths.push(path);
            }
            let config = config_yaml(scrape_target, &rule_paths, alertmanager_url);
            let config_path = dir.path().join("prometheus.yml");
            std::fs::write(&config_path, &config).expect("write prometheus.yml");
            let data = dir.path().join("data");
            let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("create prometheus.log");
            let port = free_port();
            let child = Command::new(&bin)
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!("--storage.tsdb.path={}", data.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg(format!("--web.external-url=http://127.0.0.1:{port}"))
                .arg("--rules.alert.resend-delay=1s")
                .arg("--log.level=info")
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log file"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            // From here on Drop kills the child, also if we panic.
            let mut prom = Prometheus { child, port, client: client.clone(), dir };
            match prom.wait_ready(&data).await {
                Ok(()) => return prom,
                Err(why) => {
                    last_log = prom.log();
                    // Someone else took the port between probing and binding: try again.
                    if !last_log.contains("address already in use") && !why.contains("another server") {
                        let rules: String =
                            rule_files.iter().map(|(name, yaml)| format!("--- {name} ---\n{yaml}\n")).collect();
                        panic!(
                            "Prometheus ({}) did not become ready on 127.0.0.1:{port}: {why}\n\
                             --- config ---\n{config}{rules}--- log ---\n{last_log}",
                            bin.display(),
                        );
                    }
                }
            }
        }
        panic!("Prometheus: no free port after {START_ATTEMPTS} attempts\n--- log ---\n{last_log}");
    }

    /// Like [`Prometheus::start`], but `None` when the binary is missing and
    /// `BACKSTOP_SKIP_EXTERNAL=1`; without that variable a missing binary still panics.
    pub async fn try_start(
        scrape_target: &str,
        rule_files: &[(&str, &str)],
        alertmanager_url: Option<&str>,
    ) -> Option<Prometheus> {
        if binary().is_none() && std::env::var(SKIP_ENV).as_deref() == Ok("1") {
            eprintln!("skipping: {SKIP_ENV}=1 and {}", missing_message());
            return None;
        }
        Some(Self::start(scrape_target, rule_files, alertmanager_url).await)
    }

    /// Base URL, e.g. `http://127.0.0.1:40123` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Prometheus's own log so far (stdout and stderr), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The generated configuration file.
    pub fn config(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.yml")).unwrap_or_default()
    }

    /// Instant query (`GET /api/v1/query`) at the server's current time: the value of the
    /// first sample of a vector (in Prometheus's order, so make the expression return one
    /// series, e.g. with `sum(...)`), the value of a scalar, or `None` for an empty vector
    /// (no data yet, or a comparison that filtered everything out). A ratio 0/0 is `Some(NaN)`.
    /// Panics on a query Prometheus rejects (the message has its error) or a transport error.
    pub async fn query(&self, promql: &str) -> Option<f64> {
        let data = self.query_data(promql).await;
        let parse = |sample: &serde_json::Value| -> f64 {
            let text = sample[1].as_str().unwrap_or_else(|| panic!("query {promql:?}: bad sample {sample}"));
            // Prometheus writes "NaN", "+Inf", "-Inf", which Rust parses as well.
            text.parse().unwrap_or_else(|e| panic!("query {promql:?}: bad value {text:?}: {e}"))
        };
        match data["resultType"].as_str() {
            Some("vector") => data["result"].as_array().and_then(|r| r.first()).map(|s| parse(&s["value"])),
            Some("scalar") => Some(parse(&data["result"])),
            other => panic!("query {promql:?}: result type {other:?} is not a vector or scalar: {data}"),
        }
    }

    /// Instant query: the whole `data` object of the answer (`resultType` and `result`), for
    /// expressions that return several series. Panics like [`Prometheus::query`].
    pub async fn query_data(&self, promql: &str) -> serde_json::Value {
        let mut url = reqwest::Url::parse(&format!("{}/api/v1/query", self.url())).expect("query URL");
        url.query_pairs_mut().append_pair("query", promql);
        self.get_data(url, &format!("query {promql:?}")).await
    }

    /// `GET /api/v1/alerts`: the array of alerts the rules hold now (`pending` and `firing`),
    /// each with `labels`, `annotations`, `state`, `activeAt` and `value`.
    pub async fn alerts(&self) -> serde_json::Value {
        let url = reqwest::Url::parse(&format!("{}/api/v1/alerts", self.url())).expect("alerts URL");
        let mut data = self.get_data(url, "GET /api/v1/alerts").await;
        data["alerts"].take()
    }

    /// The alerts named `alertname` in state `firing` now.
    pub async fn firing(&self, alertname: &str) -> Vec<serde_json::Value> {
        let alerts = self.alerts().await;
        alerts
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["labels"]["alertname"] == alertname && a["state"] == "firing")
            .cloned()
            .collect()
    }

    /// `GET /api/v1/targets`: `activeTargets` and `droppedTargets`, to see whether (and why
    /// not) the target is scraped (`health`, `lastError`).
    pub async fn targets(&self) -> serde_json::Value {
        let url = reqwest::Url::parse(&format!("{}/api/v1/targets", self.url())).expect("targets URL");
        self.get_data(url, "GET /api/v1/targets").await
    }

    /// `GET` an API URL; its `data` when `status` is `success`, else panics with the error.
    async fn get_data(&self, url: reqwest::Url, what: &str) -> serde_json::Value {
        let resp = self
            .client
            .get(url.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: GET {url}: {e}\n--- log ---\n{}", self.log()));
        let status = resp.status();
        let text = resp.text().await.unwrap_or_else(|e| panic!("{what}: reading the answer: {e}"));
        let mut body: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{what}: answered {status} with a body that is not JSON ({e}): {text}"));
        if body["status"] != "success" {
            panic!("{what}: answered {status}: {} {}", body["errorType"], body["error"]);
        }
        body["data"].take()
    }

    async fn wait_ready(&mut self, data: &Path) -> Result<(), String> {
        let url = format!("{}/-/ready", self.url());
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("process exited with {status}"));
            }
            let probe = self.client.get(&url).timeout(Duration::from_secs(1)).send().await;
            if probe.is_ok_and(|resp| resp.status().is_success()) {
                // Ours, not another server that got the port (which would answer ready too)?
                return match self.flag("storage.tsdb.path").await {
                    Some(path) if Path::new(&path) == data => Ok(()),
                    other => Err(format!(
                        "another server answers on 127.0.0.1:{}: its storage.tsdb.path is {other:?}",
                        self.port
                    )),
                };
            }
            if Instant::now() >= deadline {
                return Err(format!("no 200 from {url} within {READY_TIMEOUT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A command-line flag's value from `GET /api/v1/status/flags`.
    async fn flag(&self, name: &str) -> Option<String> {
        let url = format!("{}/api/v1/status/flags", self.url());
        let resp = self.client.get(&url).send().await.ok()?;
        let body: serde_json::Value = resp.json().await.ok()?;
        body["data"][name].as_str().map(str::to_owned)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port the kernel just handed out for 127.0.0.1 and that no other Prometheus of this test
/// process was given (see alertmanager.rs; a server of another kind that gets the same port
/// is caught by the identity check after `/-/ready`).
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

fn config_yaml(scrape_target: &str, rule_files: &[PathBuf], alertmanager_url: Option<&str>) -> String {
    let quote = |s: &str| serde_json::to_string(s).expect("quote string"); // JSON strings are YAML
    let mut yaml = String::from("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n");
    if !rule_files.is_empty() {
        yaml.push_str("rule_files:\n");
        for path in rule_files {
            yaml.push_str(&format!("  - {}\n", quote(&path.to_string_lossy())));
        }
    }
    yaml.push_str(&format!(
        "scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: [{}]\n",
        quote(scrape_target)
    ));
    if let Some(am) = alertmanager_url {
        let url = reqwest::Url::parse(am).unwrap_or_else(|e| panic!("Alertmanager URL {am:?}: {e}"));
        let host = url.host_str().unwrap_or_else(|| panic!("Alertmanager URL {am:?} has no host"));
        let port = url.port_or_known_default().unwrap_or_else(|| panic!("Alertmanager URL {am:?} has no port"));
        yaml.push_str(&format!(
            "alerting:\n  alertmanagers:\n    - scheme: {}\n      api_version: v2\n      timeout: 5s\n",
            url.scheme()
        ));
        let prefix = url.path().trim_end_matches('/');
        if !prefix.is_empty() {
            yaml.push_str(&format!("      path_prefix: {}\n", quote(prefix)));
        }
        yaml.push_str(&format!("      static_configs:\n        - targets: [{}]\n", quote(&format!("{host}:{port}"))));
    }
    yaml
}
