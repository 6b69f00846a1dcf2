//! Run the real `backstop` binary on a free loopback port, on a copy of the repository's
//! config, rules and demo manifests in a temporary directory.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_backstop");

pub fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// A working directory laid out like the repository: backstop.yaml, rules/, deploy/local/.
pub struct Workdir {
    pub dir: tempfile::TempDir,
}

impl Workdir {
    pub fn new() -> Workdir {
        Workdir::with_config(&std::fs::read_to_string(repo("backstop.yaml")).unwrap())
    }

    pub fn with_config(config: &str) -> Workdir {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["rules", "deploy/local"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
            for entry in std::fs::read_dir(repo(sub)).unwrap() {
                let p = entry.unwrap().path();
                std::fs::copy(&p, dir.path().join(sub).join(p.file_name().unwrap())).unwrap();
            }
        }
        std::fs::write(dir.path().join("backstop.yaml"), config).unwrap();
        Workdir { dir }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn config(&self) -> PathBuf {
        self.path("backstop.yaml")
    }

    pub fn read(&self, p: &str) -> String {
        std::fs::read_to_string(self.path(p)).unwrap()
    }

    /// The canary's weight in the demo manifest (the line marked `# canary`).
    pub fn canary_weight(&self) -> u32 {
        let vs = self.read("deploy/local/model-service.yaml");
        let line = vs.lines().find(|l| l.ends_with("# canary")).unwrap();
        line.trim().trim_start_matches("weight:").trim_end_matches("# canary").trim().parse().unwrap()
    }

    /// Run a CLI command against this workdir's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN).arg("--config").arg(self.config()).args(args).env("RUST_LOG", "warn").output().unwrap()
    }

    /// Start `backstop serve` on 127.0.0.1:0 and wait for its address.
    pub fn serve(&self) -> Server {
        self.serve_with_env(&[])
    }

    /// `serve` with extra environment variables (e.g. `BACKSTOP_CRASH_AT`).
    pub fn serve_with_env(&self, env: &[(&str, &str)]) -> Server {
        self.serve_on("127.0.0.1:0", env)
    }

    /// `serve` on a given address.
    pub fn serve_on(&self, listen: &str, env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(self.config())
            .args(["serve", "--listen", listen])
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("backstop listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log2.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!("backstop did not start; its log:\n{}", log.lock().unwrap());
            }
        };
        Server { child, url, log }
    }
}

pub struct Server {
    pub child: Child,
    pub url: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, serde_json::Value) {
        let resp = reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    }

    /// Wait (bounded) for the process to end by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// POST, or None when the server is gone (connection refused or reset).
    pub async fn try_post(&self, path: &str, body: String) -> Option<u16> {
        let resp = reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .ok()?;
        Some(resp.status().as_u16())
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "backstop did not stop after SIGTERM:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `f` until it returns Some, up to `timeout`.
pub async fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Records as one per alert: a delivery's `received` record (one for all the alerts a payload
/// or message carried) becomes one record per alert, shaped as the log wrote them before (format
/// 1: `event_id` the alert's id, `detail.alert` the whole alert, `detail.delivery` as it was).
/// Every other record is kept as it is. The alerts are read by the library's own reader.
pub fn per_alert(records: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        if r["kind"] != "received" || !r["detail"]["alerts"].is_array() {
            out.push(r);
            continue;
        }
        let alerts = backstop::event::alerts_received(Some(&r["detail"]), r["source"].as_str())
            .unwrap_or_else(|| panic!("a received record whose alerts do not read: {r}"));
        for alert in alerts {
            let mut one = r.clone();
            one["event_id"] = serde_json::json!(alert.id);
            one["detail"] = serde_json::json!({"alert": alert, "delivery": r["detail"]["delivery"]});
            out.push(one);
        }
    }
    out
}
