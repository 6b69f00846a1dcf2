//! `backstop serve`: wire the configuration into a running service, and stop it cleanly.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use futures::future::BoxFuture;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::audit::{AuditError, AuditLog};
use crate::config::Config;
use crate::config::TargetConfig;
use crate::http::{AppState, auth::Auth, router};
use crate::pipeline::{Gate, Pipeline, Settings};
use crate::prometheus::{PrometheusClient, SharedPrometheus};
use crate::rules::{self, RuleErrors};
use crate::sinks::audit_topic::AuditPublisher;
use crate::sources::kafka::{KafkaSource, Membership};
use crate::target::Target;
use crate::target::kubernetes::Kubernetes;
use crate::target::manifests::Manifests;
use crate::task::{Task, TaskError};
use crate::telemetry::metrics::Event as MetricEvent;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid rules:\n{0}")]
    Rules(#[from] RuleErrors),
    #[error("audit log: {0}")]
    Audit(#[from] AuditError),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("manifests directory {0} does not exist")]
    NoManifests(String),
    #[error("prometheus: {0}")]
    Prometheus(String),
    #[error("target: {0}")]
    Target(crate::target::TargetError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Source(String),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// The target a configuration names.
pub async fn target(config: &TargetConfig) -> Result<Arc<dyn Target>, ServeError> {
    Ok(match config {
        TargetConfig::Manifests(dir) => {
            if !dir.is_dir() {
                return Err(ServeError::NoManifests(dir.display().to_string()));
            }
            Arc::new(Manifests::new(dir))
        }
        TargetConfig::Kubernetes(opts) => Arc::new(Kubernetes::connect(opts).await.map_err(ServeError::Target)?),
    })
}

/// Build the pipeline of a configuration (a cluster replica's audit log starts as a follower).
pub async fn pipeline(config: &Config) -> Result<Pipeline, ServeError> {
    let rules = rules::load(&config.rules)?;
    let target = target(&config.target).await?;
    let prometheus = match &config.prometheus {
        Some(p) => Some(Arc::new(PrometheusClient::new(p).map_err(ServeError::Prometheus)?) as SharedPrometheus),
        None => None,
    };
    if prometheus.is_none()
        && let Some(rule) = rules.rules().iter().find(|r| r.confirm.is_some() || r.verify.is_some())
    {
        let what = if rule.confirm.is_some() { "confirms" } else { "verifies traffic" };
        return Err(ServeError::Prometheus(format!(
            "rule {} {what} with Prometheus, but no `prometheus:` is configured",
            rule.name
        )));
    }
    let audit = match config.cluster {
        None => AuditLog::open(&config.audit_dir(), config.audit.clone())?,
        Some(_) => AuditLog::open_replica(&config.audit_dir(), config.audit.clone())?,
    };
    let settings = Settings {
        dry_run: config.dry_run,
        action_timeout: config.action_timeout,
        guards: config.guards.clone(),
        ui_url: config.ui_url.clone(),
    };
    let pipeline = Pipeline::new(rules, audit, target, settings)?;
    if config.cluster.is_some() {
        pipeline.set_gate(Gate::Following(None));
    }
    Ok(match prometheus {
        Some(p) => pipeline.with_prometheus(p),
        None => pipeline,
    })
}

/// What only the one that acts runs: the Kafka intake, the audit topic's publisher, the
/// verifications and the step-downs. A single process runs them from the start; a cluster's
/// leader for each term.
fn acting_tasks(
    config: &Config,
    pipeline: &Arc<Pipeline>,
    assigned: Option<Arc<AtomicUsize>>,
) -> Result<Vec<Box<dyn Task>>, ServeError> {
    let mut tasks: Vec<Box<dyn Task>> = Vec::new();
    if let Some(k) = &config.kafka {
        let assigned = assigned.unwrap_or_default();
        // A cluster's leader is the only consumer: it assigns itself every partition, resuming
        // after what the audit log recorded, instead of joining the group and waiting for the
        // dead leader's session to expire first (about 6 s more per takeover, measured).
        let membership = if config.cluster.is_some() { Membership::Leader } else { Membership::Group };
        let kafka = KafkaSource::counting(k.clone(), pipeline.clone(), assigned, membership)
            .map_err(|e| ServeError::Source(e.to_string()))?;
        tasks.push(Box::new(kafka));
        if let Some(topic) = &k.audit_topic {
            tasks.push(Box::new(
                AuditPublisher::new(k, topic.clone(), pipeline.audit().clone())
                    .map_err(|e| ServeError::Source(e.to_string()))?,
            ));
        }
    }
    Ok(tasks)
}

/// A cluster leader's term: the acting tasks under the term's token. One that stops on its own
/// ends the term: the node resigns, so that another replica takes over with everything running.
fn term_starter(
    config: &Config,
    pipeline: &Arc<Pipeline>,
    assigned: Option<Arc<AtomicUsize>>,
) -> crate::cluster::node::StartTerm {
    let (config, pipeline) = (config.clone(), pipeline.clone());
    Box::new(move |token: CancellationToken| {
        let mut set = JoinSet::new();
        match acting_tasks(&config, &pipeline, assigned.clone()) {
            Ok(tasks) => {
                for task in tasks {
                    let (name, token) = (task.name(), token.clone());
                    set.spawn(async move {
                        if let Err(e) = task.run(token).await {
                            tracing::error!(source = name, error = %e, "stopped during the term");
                        }
                    });
                }
            }
            // A task that ends at once: the node ends the term and resigns (another replica,
            // or this one in a new term, tries again).
            Err(e) => {
                set.spawn(async move { tracing::error!(error = %e, "could not start the term's intake") });
            }
        }
        let (p, t) = (pipeline.clone(), token.clone());
        set.spawn(async move {
            let _ = p.spawn_verifier(t).await.await;
        });
        let steps = pipeline.spawn_step_downs(token.clone());
        set.spawn(async move {
            let _ = steps.await;
        });
        // A starting point for replicas that join with an empty disk, every `snapshot_every`.
        if let Some(every) = config.cluster.as_ref().map(|c| c.snapshot_every) {
            let pipeline = pipeline.clone();
            set.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = token.cancelled() => break,
                        _ = tick.tick() => match pipeline.publish_snapshot().await {
                            Ok(seq) => info!(seq, "snapshot published to the replicated log"),
                            Err(e) => warn!(error = %e, "could not publish a snapshot to the replicated log"),
                        },
                    }
                }
            });
        }
        set
    })
}

/// Run until `shutdown` completes: then every source stops taking input and finishes what is in
/// flight, within `config.shutdown_grace` (after which the rest is aborted), and the audit log is
/// flushed and closed.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
    let auth = Auth::load(&config.auth).map_err(ServeError::Auth)?;
    // A cluster replica with an empty disk starts from the replicated log's latest snapshot.
    if let (Some(cluster), Some(kafka)) = (&config.cluster, &config.kafka) {
        let joined = crate::cluster::join::join(kafka, &cluster.log_topic, &config.audit_dir(), &cluster.identity)
            .await
            .map_err(|e| ServeError::Source(e.to_string()))?;
        info!(?joined, "replicated log");
    }
    let pipeline = Arc::new(pipeline(&config).await?);
    if config.cluster.is_none() {
        for report in pipeline.resume_pending().await.map_err(|e| ServeError::Source(e.to_string()))? {
            info!(action_id = ?report.action_id, outcome = %report.outcome, "resumed an action the previous run did not finish");
        }
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Listen { addr: config.listen, source })?;
    let addr = listener.local_addr()?;
    let kafka_assigned = config.kafka.as_ref().map(|_| Arc::new(AtomicUsize::new(0)));
    let mut sources: Vec<Box<dyn Task>> = Vec::new();
    if config.cluster.is_none() {
        sources = acting_tasks(&config, &pipeline, kafka_assigned.clone())?;
    }
    let app = router(AppState {
        pipeline: pipeline.clone(),
        auth: auth.clone(),
        max_body_bytes: config.max_body_bytes,
        kafka_assigned: kafka_assigned.clone(),
        ui_read_only: config.ui_read_only,
    });
    sources.insert(0, Box::new(HttpSource { listener, app, pipeline: pipeline.clone(), limits: config.server_limits }));
    MetricEvent::RulesLoaded { rules: pipeline.rules().rules().len() }.emit();
    info!(
        %addr,
        rules = pipeline.rules().rules().len(),
        target = %pipeline.target().describe(),
        audit = %config.audit_dir().display(),
        auth = auth.enabled(),
        dry_run = config.dry_run,
        cluster = config.cluster.as_ref().map(|c| c.identity.as_str()).unwrap_or("no"),
        "backstop started"
    );
    // One line on stdout that scripts and tests can wait for.
    println!("backstop listening on http://{addr}");
    // For the test that a signal right after this line is a graceful stop: a slow start.
    if crate::failpoint::hit("serve.slow_start") {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }

    let token = CancellationToken::new();
    let mut tasks = JoinSet::new();
    for source in sources {
        let name = source.name();
        let token = token.clone();
        tasks.spawn(async move { (name, source.run(token).await) });
    }
    // The guards' state is written beside the log every `snapshot_interval`, or sooner once
    // `snapshot_records` records or `snapshot_bytes` bytes were appended since the last one (a
    // busy log: a restart after a crash replays a bounded tail), and once more at the end. Written from this task, off
    // the path of intake, which only waits for the state's lock while it is copied.
    let snapshots = {
        let pipeline = pipeline.clone();
        let token = token.clone();
        let policy = crate::pipeline::SnapshotPolicy {
            every: config.snapshot_interval,
            records: config.snapshot_records,
            bytes: config.snapshot_bytes,
        };
        tokio::spawn(async move {
            let poll = policy.every.min(std::time::Duration::from_millis(250));
            let mut tick = tokio::time::interval(poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut last_seq, mut last_at) = (pipeline.audit().last().0, tokio::time::Instant::now());
            let mut last_bytes = pipeline.audit().bytes_appended();
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => {
                        let (seq, appended) = (pipeline.audit().last().0, pipeline.audit().bytes_appended());
                        if !policy.due(seq.saturating_sub(last_seq), appended.saturating_sub(last_bytes), last_at.elapsed()) {
                            continue;
                        }
                        (last_at, last_bytes) = (tokio::time::Instant::now(), appended);
                        match pipeline.save_snapshot().await {
                            Ok(saved) => last_seq = saved,
                            Err(e) => warn!(error = %e, "could not write the state snapshot"),
                        }
                    }
                }
            }
        })
    };
    let mut background = vec![pipeline.spawn_chain_checks(token.clone())];
    match &config.cluster {
        None => {
            background.push(pipeline.spawn_verifier(token.clone()).await);
            background.push(pipeline.spawn_step_downs(token.clone()));
        }
        Some(cluster) => {
            let start_term = term_starter(&config, &pipeline, kafka_assigned);
            let kafka =
                config.kafka.as_ref().ok_or_else(|| ServeError::Source("cluster mode needs `kafka:`".into()))?;
            let started = crate::cluster::node::start(cluster, kafka, pipeline.clone(), start_term, token.clone())
                .await
                .map_err(|e| ServeError::Source(e.to_string()))?;
            for (name, task) in started {
                tasks.spawn(async move {
                    let ended = task.await.unwrap_or_else(|e| Err(e.to_string()));
                    (name, ended.map_err(|message| TaskError { source_name: name, message }))
                });
            }
        }
    }
    let reloads = tokio::spawn(crate::reload::Reloader::new(config.clone(), pipeline.clone()).run(token.clone()));
    let mut failure = None;
    tokio::select! {
        _ = shutdown => info!("shutting down: no new input; finishing what is in flight"),
        Some(ended) = tasks.join_next() => {
            // A source stopped on its own: the service cannot do its job, stop everything.
            failure = Some(match ended {
                Ok((name, Ok(()))) => format!("source {name} stopped unexpectedly"),
                Ok((_, Err(e))) => e.to_string(),
                Err(e) => format!("source task failed: {e}"),
            });
        }
    }
    token.cancel();
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        while let Some(ended) = tasks.join_next().await {
            match ended {
                Ok((name, Ok(()))) => info!(source = name, "stopped"),
                Ok((name, Err(e))) => warn!(source = name, error = %e, "stopped with an error"),
                Err(e) => warn!(error = %e, "source task failed"),
            }
        }
    })
    .await;
    if drained.is_err() {
        warn!(grace = ?config.shutdown_grace, "grace period over: aborting what is still running");
        tasks.abort_all();
    }
    let _ = snapshots.await;
    let _ = reloads.await;
    for task in background {
        let _ = task.await;
    }
    match pipeline.save_snapshot().await {
        Ok(seq) => info!(seq, "state snapshot written"),
        Err(e) => warn!(error = %e, "could not write the state snapshot"),
    }
    let audit = pipeline.audit().clone();
    drop(pipeline);
    audit.close().await?;
    info!("audit log flushed; stopped");
    match failure {
        Some(f) => Err(ServeError::Source(f)),
        None => Ok(()),
    }
}

/// The HTTP API as a source: graceful shutdown lets in-flight requests finish. Bounded request
/// heads (`http::ServerLimits`); request heads it refuses are recorded through the pipeline.
struct HttpSource {
    listener: tokio::net::TcpListener,
    app: axum::Router,
    pipeline: Arc<Pipeline>,
    limits: crate::http::ServerLimits,
}

impl Task for HttpSource {
    fn name(&self) -> &'static str {
        "http"
    }

    fn run(self: Box<Self>, shutdown: CancellationToken) -> BoxFuture<'static, Result<(), TaskError>> {
        Box::pin(async move {
            crate::http::serve(self.listener, self.app, Some(self.pipeline), self.limits, shutdown)
                .await
                .map_err(|e| TaskError { source_name: "http", message: e.to_string() })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[tokio::test(flavor = "multi_thread")]
    async fn shutdown_future_stops_the_service_and_releases_the_audit_log() {
        let dir = tempfile::tempdir().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(root.join("backstop.yaml")).unwrap();
        let mut config = Config::parse(&root.join("backstop.yaml"), &text).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        config.listen = format!("127.0.0.1:{port}").parse().unwrap();
        config.data_dir = dir.path().to_path_buf();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(config.clone(), async move {
            let _ = rx.await;
        }));
        let health = format!("http://127.0.0.1:{port}/healthz");
        let mut up = false;
        for _ in 0..200 {
            if reqwest::get(&health).await.is_ok_and(|r| r.status().is_success()) {
                up = true;
                break;
            }
            assert!(!server.is_finished(), "serve stopped early");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(up, "serve did not answer /healthz");
        // The audit log is held while serving...
        assert!(matches!(AuditLog::open(&config.audit_dir(), Default::default()), Err(AuditError::Locked(_))));
        tx.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), server).await.unwrap().unwrap().unwrap();
        assert!(config.audit_dir().join(crate::pipeline::SNAPSHOT_FILE).exists(), "a final snapshot is written");
        // ...and released once `serve` returns.
        AuditLog::open(&config.audit_dir(), Default::default()).unwrap();
    }
}
