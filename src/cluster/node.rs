//! One replica of a cluster: it follows the replicated audit log all the time, and while the
//! elector says it leads it runs a **term**: marker, catch-up, the audit writer leading, the
//! actions a predecessor left in flight resumed, a `control` record of the takeover, and only
//! then the gate opened and the acting tasks (Kafka intake, verifications, step-downs) started.
//! The term ends when the lease is lost or runs out, or the log could not take a batch (then the
//! replica resigns, so whoever leads next does so in a new epoch).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::elector::Role;
use super::log::LogProducer;
use crate::pipeline::{Gate, Pipeline, Takeover};
use crate::telemetry::metrics::Event as MetricEvent;

/// Starts what only the leader runs, under the term's token; the tasks end when it is cancelled.
pub type StartTerm = Box<dyn Fn(CancellationToken) -> JoinSet<()> + Send + Sync>;

/// How often a term checks, besides role changes, that its log still leads.
const CHECK_EVERY: Duration = Duration::from_millis(250);

pub struct Node {
    pub me: String,
    pub pipeline: Arc<Pipeline>,
    pub log: LogProducer,
    /// The last offset of the replicated log applied here.
    pub applied: watch::Receiver<i64>,
    pub roles: watch::Receiver<Role>,
    pub resign: Arc<Notify>,
    pub start_term: StartTerm,
    /// This replica's Pod, labelled for the Service that routes to the leader.
    pub pod: Option<PodLabel>,
}

/// The label a Service selects to reach the leader (as Patroni labels PostgreSQL's primary).
pub const LEADER_LABEL: &str = "backstop.io/leader";

/// This replica's own Pod, whose [`LEADER_LABEL`] says whether it leads.
pub struct PodLabel {
    api: kube::Api<k8s_openapi::api::core::v1::Pod>,
    name: String,
}

impl PodLabel {
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> PodLabel {
        PodLabel { api: kube::Api::namespaced(client, namespace), name: name.to_string() }
    }

    /// Set the label (a failure is logged: the gate, not the label, decides who acts; a wrong
    /// label only sends intake to a replica that answers 503 naming the leader).
    pub async fn set(&self, leading: bool) {
        let patch = serde_json::json!({ "metadata": { "labels": { LEADER_LABEL: leading.to_string() } } });
        let params = kube::api::PatchParams::default();
        if let Err(e) = self.api.patch(&self.name, &params, &kube::api::Patch::Merge(&patch)).await {
            warn!(pod = %self.name, error = %e, leading, "could not label this replica's Pod");
        }
    }
}

struct Term {
    epoch: u32,
    token: CancellationToken,
    tasks: JoinSet<()>,
}

impl Node {
    /// Run until `token` is cancelled.
    pub async fn run(mut self, token: CancellationToken) {
        // A Pod that led before a restart still carries the label: not any more.
        if let Some(pod) = &self.pod {
            pod.set(false).await;
        }
        let mut term: Option<Term> = None;
        let mut last_holder: Option<String> = None;
        let mut last_led: Option<u32> = None;
        loop {
            let role = self.roles.borrow_and_update().clone();
            let now = Utc::now();
            match (&role, term.as_ref()) {
                (Role::Leader { epoch, until }, Some(_))
                    if term.as_ref().is_some_and(|t| t.epoch == *epoch) && now < *until =>
                {
                    // A task of the term that stopped on its own (the Kafka intake lost, say):
                    // another replica, or this one in a new term, starts it afresh.
                    let stopped = term.as_mut().and_then(|t| t.tasks.try_join_next()).is_some();
                    if stopped {
                        warn!(epoch, "a task of the term stopped on its own: ending the term and resigning");
                        self.end(&mut term, Gate::Following(None)).await;
                        self.resign.notify_one();
                    } else if self.pipeline.audit().creates_records() {
                        self.pipeline.set_gate(Gate::LeadingUntil(*until));
                    } else {
                        warn!(epoch, "the replicated log did not take a batch: ending the term and resigning");
                        self.end(&mut term, Gate::Following(None)).await;
                        self.resign.notify_one();
                    }
                }
                (Role::Leader { epoch, .. }, None) if last_led == Some(*epoch) => {
                    // A term of this epoch ended (its window ran out, or the log failed): a
                    // batch of it may still land late, so the next term needs a new epoch,
                    // whose marker makes every reader drop such a batch.
                    self.pipeline.set_gate(Gate::Following(None));
                    self.resign.notify_one();
                }
                (Role::Leader { epoch, until }, None) if now < *until => {
                    let (epoch, until) = (*epoch, *until);
                    last_led = Some(epoch);
                    match self.take_over(epoch, until, last_holder.clone()).await {
                        Ok(t) => term = Some(t),
                        Err(reason) => {
                            warn!(epoch, %reason, "could not take over; resigning");
                            self.pipeline.set_gate(Gate::Following(None));
                            let _ = self.pipeline.audit().follow().await;
                            self.resign.notify_one();
                        }
                    }
                }
                (other, _) => {
                    let gate = match other {
                        Role::Follower { holder } => {
                            last_holder = Some(holder.clone());
                            Gate::Following(Some(holder.clone()))
                        }
                        _ => Gate::Following(None),
                    };
                    if term.is_some() {
                        info!(role = ?other, "no longer leading: the term ends");
                    }
                    self.end(&mut term, gate).await;
                }
            }
            // Wake on a role change, when the acting window ends, or to check the log.
            let until = match &role {
                Role::Leader { until, .. } if term.is_some() => (*until - Utc::now()).to_std().unwrap_or_default(),
                _ => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = token.cancelled() => break,
                _ = self.roles.changed() => {}
                _ = tokio::time::sleep(until.min(CHECK_EVERY)) => {}
            }
        }
        self.end(&mut term, Gate::Following(None)).await;
    }

    /// Marker, catch-up to it, the writer leading, the interrupted actions resumed, the takeover
    /// recorded, the acting tasks started and the gate opened.
    async fn take_over(
        &mut self,
        epoch: u32,
        until: chrono::DateTime<Utc>,
        previous: Option<String>,
    ) -> Result<Term, String> {
        let started = Instant::now();
        let window = (until - Utc::now()).to_std().unwrap_or_default();
        let marker = tokio::time::timeout(window, self.log.mark(epoch, &self.me))
            .await
            .map_err(|_| "the marker was not committed within the lease".to_string())?
            .map_err(|e| e.to_string())?;
        let mut applied = self.applied.clone();
        let window = (until - Utc::now()).to_std().unwrap_or_default();
        tokio::time::timeout(window, applied.wait_for(|o| *o >= marker))
            .await
            .map_err(|_| format!("the log was not read up to the marker (offset {marker}) within the lease"))?
            .map_err(|_| "the replicated log's reader stopped".to_string())?;
        let replicator = self.log.replicator(epoch, &self.me, self.roles.clone());
        self.pipeline.audit().lead(replicator).await.map_err(|e| e.to_string())?;
        // Acting from here on: the actions resumed and the takeover record need the gate open.
        self.pipeline.set_gate(Gate::LeadingUntil(until));
        let resumed = self.pipeline.resume_pending().await.map_err(|e| e.to_string())?;
        for report in &resumed {
            info!(action_id = ?report.action_id, outcome = %report.outcome, "resumed an action the previous leader did not finish");
        }
        let takeover = Takeover {
            epoch,
            leader: self.me.clone(),
            previous,
            marker_offset: marker,
            handover_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            resumed: resumed.len(),
        };
        self.pipeline.record_takeover(&takeover).await.map_err(|e| e.to_string())?;
        let token = CancellationToken::new();
        let tasks = (self.start_term)(token.clone());
        if let Some(pod) = &self.pod {
            pod.set(true).await;
        }
        MetricEvent::Leader { leading: true }.emit();
        MetricEvent::TookOver.emit();
        info!(epoch, marker, handover_ms = takeover.handover_ms, "leading");
        Ok(Term { epoch, token, tasks })
    }

    /// Close the gate first (nothing new is acknowledged or acted on), then stop the term's
    /// tasks and make the writer a follower.
    async fn end(&self, term: &mut Option<Term>, gate: Gate) {
        self.pipeline.set_gate(gate);
        let Some(mut t) = term.take() else { return };
        t.token.cancel();
        if tokio::time::timeout(Duration::from_secs(5), async { while t.tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            t.tasks.abort_all();
        }
        if let Err(e) = self.pipeline.audit().follow().await {
            warn!(error = %e, "could not make the audit log follow");
        }
        if let Some(pod) = &self.pod {
            pod.set(false).await;
        }
        MetricEvent::Leader { leading: false }.emit();
        info!(epoch = t.epoch, "term ended");
    }
}

/// Start a replica's cluster tasks: the elector, the replicated log's reader, and the node that
/// runs terms. Each returns `Err` with a message if it stops on its own with a failure.
pub async fn start(
    cluster: &super::ClusterConfig,
    kafka: &crate::kafka::KafkaConfig,
    pipeline: Arc<Pipeline>,
    start_term: StartTerm,
    token: CancellationToken,
) -> Result<Vec<(&'static str, tokio::task::JoinHandle<Result<(), String>>)>, String> {
    let (client, _) = crate::target::kubernetes::client(&cluster.kubernetes).await.map_err(|e| e.to_string())?;
    let pod = cluster.pod.as_deref().map(|name| PodLabel::new(client.clone(), &cluster.namespace, name));
    let leases = super::KubeLeases::new(client, &cluster.namespace, &cluster.lease);
    let elector = super::Elector::new(leases, cluster.identity.clone(), cluster.timing);
    let (roles_tx, roles) = watch::channel(Role::Candidate);
    let resign = Arc::new(Notify::new());
    let dir = pipeline.audit().dir().to_path_buf();
    let follower =
        super::log::LogFollower::new(kafka, &cluster.log_topic, &dir, &cluster.identity).map_err(|e| e.to_string())?;
    let applied = follower.applied();
    let log = LogProducer::new(kafka, &cluster.log_topic, cluster.timing.duration).map_err(|e| e.to_string())?;
    let node = Node {
        me: cluster.identity.clone(),
        pipeline: pipeline.clone(),
        log,
        applied,
        roles,
        resign: resign.clone(),
        start_term,
        pod,
    };
    let t = token.clone();
    let follow = tokio::spawn(async move {
        let to: Arc<dyn super::log::Apply> = pipeline;
        follower.run(to, t).await.map_err(|e| e.to_string())
    });
    // The Lease is released only after the term has ended (gate closed, tasks stopped), so no
    // successor acts while this replica still could.
    let elector_token = CancellationToken::new();
    let t = elector_token.clone();
    let elect = tokio::spawn(async move {
        elector.run(roles_tx, resign, t).await;
        Ok(())
    });
    let run = tokio::spawn(async move {
        node.run(token).await;
        elector_token.cancel();
        Ok(())
    });
    Ok(vec![("replicated-log", follow), ("elector", elect), ("cluster", run)])
}
