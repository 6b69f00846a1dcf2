//! A controllable canary app for tests: the model service's metrics, without the model.
//!
//! [`CanaryApp::start`] serves `GET /metrics` (Prometheus text exposition format 0.0.4) on a
//! free 127.0.0.1 port, for `namespace="sms-app"`, `service="model-service"` and the
//! versions `v1` and `v2`:
//!
//! - `app_predictions_total{namespace,service,version,status}` counter, `status` `ok` / `error`
//! - `app_prediction_latency_seconds{namespace,service,version}` histogram (`_bucket` with
//!   `le` in [`BUCKETS`] and `+Inf`, `_sum`, `_count`)
//! - `app_prediction_feedback_total{namespace,service,version,feedback}` counter, `feedback`
//!   `positive` / `negative`
//!
//! There is no traffic: a background task ticks every 100 ms ([`TICK`]) and, per version,
//! adds `rps / 10` predictions as its current [`Behaviour`] says — `error_ratio` of them
//! with `status="error"`, every one observed at `latency_seconds` (so each tick adds to the
//! buckets whose `le` is at least that), and `negative_feedback_ratio` of them with
//! `feedback="negative"`. Counters are `f64` accumulators printed exactly (the shortest
//! decimal that reads back as the same `f64`), so they may be fractional, and a ratio of
//! rates over a window in which the behaviour did not change is the configured ratio up to
//! float rounding: `rate(app_predictions_total{status="error",version="v2"}[30s]) /
//! rate(app_predictions_total{version="v2"}[30s])` is `error_ratio`.
//!
//! [`CanaryApp::set`] changes a version's behaviour from the next tick on. The app runs on
//! its own thread with its own Tokio runtime, so it keeps ticking and answering scrapes
//! whatever the test's runtime flavour and even while the test blocks (on a
//! `std::process::Command`, say). Dropping the value stops it: the runtime, its ticker and
//! its connections are gone when `drop` returns, and the port is closed.
//!
//! ```ignore
//! let app = CanaryApp::start(Behaviour::healthy(), Behaviour { error_ratio: 0.3, ..Behaviour::healthy() }).await;
//! let prom = Prometheus::start(&app.target(), &[("canary.yml", RULES)], Some(&am.url())).await;
//! // ... the alert fires ...
//! app.set("v2", Behaviour::healthy());
//! ```
#![allow(dead_code)]

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

pub const NAMESPACE: &str = "sms-app";
pub const SERVICE: &str = "model-service";
/// The versions served, in the order they are printed.
pub const VERSIONS: [&str; 2] = ["v1", "v2"];
/// Upper bounds of the latency histogram's buckets, `+Inf` aside.
pub const BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// How often predictions are added: `rps / TICKS_PER_SECOND` at a time.
pub const TICK: Duration = Duration::from_millis(100);
pub const TICKS_PER_SECOND: f64 = 10.0;
/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What one version does, from the next tick on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Behaviour {
    /// Predictions per second (`>= 0`).
    pub rps: f64,
    /// Share of predictions with `status="error"`, in `[0, 1]`.
    pub error_ratio: f64,
    /// Latency of every prediction (`>= 0`).
    pub latency_seconds: f64,
    /// Share of predictions with `feedback="negative"`, in `[0, 1]`.
    pub negative_feedback_ratio: f64,
}

impl Behaviour {
    /// 50 rps, 1% errors, 50 ms, 5% negative feedback.
    pub fn healthy() -> Behaviour {
        Behaviour { rps: 50.0, error_ratio: 0.01, latency_seconds: 0.05, negative_feedback_ratio: 0.05 }
    }

    fn check(&self) {
        let ratio = |r: f64| (0.0..=1.0).contains(&r);
        assert!(
            self.rps.is_finite()
                && self.rps >= 0.0
                && ratio(self.error_ratio)
                && self.latency_seconds.is_finite()
                && self.latency_seconds >= 0.0
                && ratio(self.negative_feedback_ratio),
            "invalid canary behaviour {self:?}: rps and latency_seconds must be finite and >= 0, \
             error_ratio and negative_feedback_ratio in [0, 1]"
        );
    }
}

/// The accumulated series of one version.
#[derive(Clone, Debug, Default)]
struct Series {
    ok: f64,
    error: f64,
    /// Cumulative, like the exposition: `buckets[i]` counts observations `<= BUCKETS[i]`.
    buckets: [f64; BUCKETS.len()],
    sum: f64,
    count: f64,
    positive: f64,
    negative: f64,
}

#[derive(Debug)]
struct Version {
    behaviour: Behaviour,
    series: Series,
}

type Shared = Arc<Mutex<[Version; 2]>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, [Version; 2]> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running canary app; stopped on drop.
pub struct CanaryApp {
    port: u16,
    shared: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl CanaryApp {
    /// Binds a free 127.0.0.1 port and starts serving and ticking; `/metrics` answers as soon
    /// as this returns (all counters 0 before the first tick).
    pub async fn start(v1: Behaviour, v2: Behaviour) -> CanaryApp {
        v1.check();
        v2.check();
        let shared: Shared = Arc::new(Mutex::new([
            Version { behaviour: v1, series: Series::default() },
            Version { behaviour: v2, series: Series::default() },
        ]));
        // Bound here, so the port is ours before anyone is told it; connections made before
        // the thread accepts wait in the backlog.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 for the canary app");
        let port = listener.local_addr().expect("canary app local address").port();
        listener.set_nonblocking(true).expect("set canary listener non-blocking");

        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("canary-app-{port}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build the canary app's runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("canary listener to tokio");
                    let ticking = state.clone();
                    tokio::spawn(async move {
                        let mut interval = tokio::time::interval(TICK);
                        loop {
                            interval.tick().await;
                            tick(&ticking);
                        }
                    });
                    let app = Router::new().route("/metrics", get(metrics)).with_state(state);
                    tokio::select! {
                        served = axum::serve(listener, app) => {
                            if let Err(e) = served {
                                eprintln!("canary app on 127.0.0.1:{port} stopped serving: {e}");
                            }
                        }
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime cancels the ticker and every open connection.
                drop(rt);
            })
            .expect("spawn the canary app's thread");
        CanaryApp { port, shared, stop: Some(stop), thread: Some(thread) }
    }

    /// Base URL, e.g. `http://127.0.0.1:40123` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`, for a scrape config's `targets`.
    pub fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Changes `version`'s behaviour (`"v1"` or `"v2"`, else panics) from the next tick on;
    /// what was counted so far stays.
    pub fn set(&self, version: &str, b: Behaviour) {
        b.check();
        lock(&self.shared)[index(version)].behaviour = b;
    }

    /// The current behaviour of `version`.
    pub fn behaviour(&self, version: &str) -> Behaviour {
        lock(&self.shared)[index(version)].behaviour
    }

    /// What `GET /metrics` would answer now.
    pub fn exposition(&self) -> String {
        render(&lock(&self.shared))
    }
}

impl Drop for CanaryApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn index(version: &str) -> usize {
    VERSIONS
        .iter()
        .position(|v| *v == version)
        .unwrap_or_else(|| panic!("unknown canary version {version:?}: expected one of {VERSIONS:?}"))
}

fn tick(shared: &Shared) {
    for v in lock(shared).iter_mut() {
        let b = v.behaviour;
        let s = &mut v.series;
        let n = b.rps / TICKS_PER_SECOND;
        let errors = n * b.error_ratio;
        s.error += errors;
        s.ok += n - errors;
        for (bucket, le) in s.buckets.iter_mut().zip(BUCKETS) {
            if b.latency_seconds <= le {
                *bucket += n;
            }
        }
        s.sum += n * b.latency_seconds;
        s.count += n;
        let negative = n * b.negative_feedback_ratio;
        s.negative += negative;
        s.positive += n - negative;
    }
}

async fn metrics(State(shared): State<Shared>) -> impl IntoResponse {
    let body = render(&lock(&shared));
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body)
}

/// The exposition text. `f64`'s `Display` prints the shortest decimal that parses back to the
/// same value (never an exponent), so nothing is lost.
fn render(versions: &[Version; 2]) -> String {
    let mut out = String::with_capacity(4096);
    let labels = |version: &str| format!("namespace=\"{NAMESPACE}\",service=\"{SERVICE}\",version=\"{version}\"");

    out.push_str("# HELP app_predictions_total Predictions served, by outcome.\n");
    out.push_str("# TYPE app_predictions_total counter\n");
    for (name, v) in VERSIONS.iter().zip(versions) {
        let l = labels(name);
        let _ = writeln!(out, "app_predictions_total{{{l},status=\"ok\"}} {}", v.series.ok);
        let _ = writeln!(out, "app_predictions_total{{{l},status=\"error\"}} {}", v.series.error);
    }

    out.push_str("# HELP app_prediction_latency_seconds Time taken to serve a prediction.\n");
    out.push_str("# TYPE app_prediction_latency_seconds histogram\n");
    for (name, v) in VERSIONS.iter().zip(versions) {
        let l = labels(name);
        for (count, le) in v.series.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(out, "app_prediction_latency_seconds_bucket{{{l},le=\"{le}\"}} {count}");
        }
        let _ = writeln!(out, "app_prediction_latency_seconds_bucket{{{l},le=\"+Inf\"}} {}", v.series.count);
        let _ = writeln!(out, "app_prediction_latency_seconds_sum{{{l}}} {}", v.series.sum);
        let _ = writeln!(out, "app_prediction_latency_seconds_count{{{l}}} {}", v.series.count);
    }

    out.push_str("# HELP app_prediction_feedback_total User feedback on predictions.\n");
    out.push_str("# TYPE app_prediction_feedback_total counter\n");
    for (name, v) in VERSIONS.iter().zip(versions) {
        let l = labels(name);
        let _ = writeln!(out, "app_prediction_feedback_total{{{l},feedback=\"positive\"}} {}", v.series.positive);
        let _ = writeln!(out, "app_prediction_feedback_total{{{l},feedback=\"negative\"}} {}", v.series.negative);
    }
    out
}
