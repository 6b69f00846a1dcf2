//! The servers under load: the release binary in a working directory of its own, and the bare
//! axum server (with or without a durable group-commit append of every body) as ceilings.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::{BIN, repo};

/// `backstop serve` on 127.0.0.1:0 in a working directory (backstop.yaml, rules/, manifests/,
/// data/), logging at info (the default) to a file there.
pub struct Backstop {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

impl Backstop {
    pub fn start(dir: &Path) -> Backstop {
        let log = std::fs::File::create(dir.join("backstop.log")).unwrap();
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(dir.join("backstop.yaml"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let Some(url) = first.strip_prefix("backstop listening on ") else {
            let _ = child.kill();
            let log = std::fs::read_to_string(dir.join("backstop.log")).unwrap_or_default();
            panic!("backstop did not start ({first:?}); its log:\n{log}");
        };
        let addr = url.trim_start_matches("http://").trim_end_matches('/').parse().unwrap();
        // Keep draining stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        Backstop { child, addr, dir: dir.to_path_buf() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("backstop.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The audit log's size: the segments (`data/audit/seg-*.jsonl`) only, not their indexes
    /// (`seg-*.idx`) nor the guards' snapshot.
    pub fn audit_segment_bytes(&self) -> u64 {
        segment_bytes(&self.dir.join("data/audit"))
    }

    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.addr);
        reqwest::get(&url).await.unwrap().text().await.unwrap()
    }

    /// `kill -9` (SIGKILL: no chance to flush or close anything), and reap it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait (bounded), else SIGKILL.
    pub fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Backstop {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The audit log's segments in a directory (`seg-*.jsonl`), in order.
pub fn segments(audit_dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> =
        std::fs::read_dir(audit_dir).map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect()).unwrap_or_default();
    out.retain(|p| {
        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("seg-") && n.ends_with(".jsonl"))
    });
    // `seg-{first_seq:020}.jsonl`: the names sort as the segments follow each other.
    out.sort();
    out
}

/// The sum of the sizes of the audit log's segments (`seg-*.jsonl`) in a directory.
pub fn segment_bytes(audit_dir: &Path) -> u64 {
    segments(audit_dir).iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
}

/// The rules (shipped rules/ plus `extra_rules`), the demo manifests (deploy/local plus
/// `extra_manifests`), and a config with the action cap raised for the benchmark.
pub fn workdir(extra_rules: &str, extra_manifests: &[(String, String)], extra_config: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("backstop-load-").tempdir().unwrap();
    for (from, to) in [("rules", "rules"), ("deploy/local", "manifests")] {
        std::fs::create_dir_all(dir.path().join(to)).unwrap();
        for entry in std::fs::read_dir(repo(from)).unwrap() {
            let p = entry.unwrap().path();
            if p.is_file() {
                std::fs::copy(&p, dir.path().join(to).join(p.file_name().unwrap())).unwrap();
            }
        }
    }
    std::fs::write(dir.path().join("rules/bench.yaml"), extra_rules).unwrap();
    for (name, text) in extra_manifests {
        std::fs::write(dir.path().join("manifests").join(name), text).unwrap();
    }
    let config = format!(
        "listen: 127.0.0.1:0\ndata_dir: data\nrules: [rules]\ntarget:\n  manifests:\n    dir: manifests\n\
         guards:\n  max_actions: 1000000\n  window: 1h\n{extra_config}"
    );
    std::fs::write(dir.path().join("backstop.yaml"), config).unwrap();
    dir
}

/// The bare server: this benchmark's own executable started again with `BENCH_BARE_SERVER=1`,
/// so that it is a process of its own like backstop (its CPU time is its own), with a 2-worker
/// axum server that reads the body and answers 200.
pub struct Bare {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Bare {
    pub fn start() -> Bare {
        Bare::start_env(None, false)
    }

    /// The same server, but every body is appended to a file in `dir` and fdatasync'd before
    /// the answer, in group commit (one writer thread, one write and one fsync for all that is
    /// queued): the least any server with a durable record per request does.
    pub fn start_durable(dir: &Path) -> Bare {
        Bare::start_env(Some(dir), false)
    }

    /// The durable server that also reads each body as JSON (syntax only, nothing kept) and
    /// hashes it (SHA-256) before queuing it: the least a server that checks and fingerprints
    /// what it records does per byte. Information beside the ceiling: how much of backstop's
    /// gap to it is the bytes' own cost.
    pub fn start_floor(dir: &Path) -> Bare {
        Bare::start_env(Some(dir), true)
    }

    fn start_env(durable: Option<&Path>, floor: bool) -> Bare {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command.env("BENCH_BARE_SERVER", "1");
        if floor {
            command.env("BENCH_BARE_FLOOR", "1");
        }
        if let Some(dir) = durable {
            command.env("BENCH_BARE_DURABLE_DIR", dir);
        }
        let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening ").unwrap_or_else(|| panic!("bare server: {line:?}"));
        Bare { addr: addr.parse().unwrap(), child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// In the child: serve until stdin closes (the parent is gone or done).
    pub fn serve() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            println!("listening {}", listener.local_addr().unwrap());
            let app = match std::env::var_os("BENCH_BARE_DURABLE_DIR") {
                None => axum::Router::new().route(
                    "/v1/alertmanager",
                    axum::routing::post(|body: Bytes| async move {
                        std::hint::black_box(body.len());
                        axum::http::StatusCode::OK
                    }),
                ),
                Some(dir) => {
                    let log = Arc::new(std::sync::Mutex::new(Bare::group_commit(Path::new(&dir))));
                    let floor = std::env::var_os("BENCH_BARE_FLOOR").is_some();
                    axum::Router::new().route(
                        "/v1/alertmanager",
                        axum::routing::post(move |body: Bytes| {
                            let log = log.clone();
                            async move {
                                if floor {
                                    // What no recorder of alerts can skip: read the body as JSON
                                    // (syntax only, nothing kept) and hash it once.
                                    if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
                                        return axum::http::StatusCode::BAD_REQUEST;
                                    }
                                    std::hint::black_box(backstop::digest::sha256_hex(&body));
                                }
                                let (done, written) = tokio::sync::oneshot::channel();
                                log.lock().unwrap().send((body, done)).unwrap();
                                written.await.unwrap();
                                axum::http::StatusCode::OK
                            }
                        }),
                    )
                }
            };
            let stdin_closed = tokio::task::spawn_blocking(|| {
                let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            });
            tokio::select! {
                _ = axum::serve(listener, app) => {}
                _ = stdin_closed => {}
            }
        });
    }
}

impl Bare {
    /// A writer thread: takes what is queued, appends it with one write, one fdatasync, then
    /// answers each. A new file every 64 MiB, as backstop's audit segments
    /// (`audit.segment_max_bytes`) are.
    pub fn group_commit(dir: &Path) -> std::sync::mpsc::Sender<(Bytes, tokio::sync::oneshot::Sender<()>)> {
        const SEGMENT: usize = 64 << 20;
        let (tx, rx) = std::sync::mpsc::channel::<(Bytes, tokio::sync::oneshot::Sender<()>)>();
        let dir = dir.to_path_buf();
        let open = move |n: u64| {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("durable-bare-{n:06}.log")))
                .unwrap();
            std::fs::File::open(&dir).unwrap().sync_all().unwrap();
            file
        };
        std::thread::spawn(move || {
            let (mut segment, mut file, mut len) = (0, open(0), 0);
            let mut buf = Vec::new();
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                batch.extend(rx.try_iter());
                buf.clear();
                for (body, _) in &batch {
                    buf.extend_from_slice(body);
                    buf.push(b'\n');
                }
                if len >= SEGMENT {
                    segment += 1;
                    (file, len) = (open(segment), 0);
                }
                file.write_all(&buf).unwrap();
                file.sync_data().unwrap();
                len += buf.len();
                for (_, done) in batch {
                    let _ = done.send(());
                }
            }
        });
        tx
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
