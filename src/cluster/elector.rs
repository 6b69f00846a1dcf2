//! The I/O of leadership: read the Lease, decide with [`super::lease::next`], write it back
//! conditionally on the version read, and publish this replica's [`Role`]. The store is a small
//! trait ([`LeaseStore`]); [`KubeLeases`] is a `coordination.k8s.io/v1` Lease through the
//! Kubernetes API (kube's own `Api<Lease>`).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::lease::{LeaseRecord, Step, Timing, acts_until, next};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LeaseError {
    /// Another replica wrote the Lease since it was read (HTTP 409): read it again.
    #[error("lease {lease} changed since it was read")]
    Conflict { lease: String },
    /// The API could not be asked, or refused (RBAC, validation).
    #[error("lease {lease}: {message}")]
    Unavailable { lease: String, message: String },
}

/// The Lease as read, and the version a conditional write must name.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    pub record: LeaseRecord,
    pub version: String,
}

/// Where the Lease is kept.
pub trait LeaseStore: Send + Sync {
    /// `namespace/name`, for messages.
    fn describe(&self) -> String;
    /// The Lease, if it exists.
    fn read(&self) -> BoxFuture<'_, Result<Option<Versioned>, LeaseError>>;
    /// Create it (`version` None) or replace the version read; a lost race is `Conflict`.
    fn write<'a>(&'a self, version: Option<&'a str>, record: &'a LeaseRecord) -> BoxFuture<'a, Result<(), LeaseError>>;
}

/// What this replica is, as far as it knows.
#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    /// Starting, or the Lease could not be read.
    Candidate,
    /// It holds the Lease in `epoch` and may act until `until` (by its own clock).
    Leader { epoch: u32, until: DateTime<Utc> },
    /// Another replica holds it.
    Follower { holder: String },
}

impl Role {
    /// Whether this replica may act and acknowledge at `now`.
    pub fn leads_at(&self, now: DateTime<Utc>) -> bool {
        matches!(self, Role::Leader { until, .. } if now < *until)
    }
}

/// One replica's side of the election.
pub struct Elector<S> {
    store: S,
    me: String,
    timing: Timing,
    /// The version last read and when this replica first saw it.
    seen: Option<(String, DateTime<Utc>)>,
    role: Role,
}

impl<S: LeaseStore> Elector<S> {
    pub fn new(store: S, me: impl Into<String>, timing: Timing) -> Elector<S> {
        Elector { store, me: me.into(), timing, seen: None, role: Role::Candidate }
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    /// One round at `now`: read, decide, write if this replica takes or renews. Returns the
    /// role after it, and when to go again.
    pub async fn round(&mut self, now: DateTime<Utc>) -> (Role, Duration) {
        let read = match self.store.read().await {
            Ok(read) => read,
            Err(e) => return self.failed(now, &e),
        };
        let seen = match (&read, &self.seen) {
            (Some(v), Some((version, at))) if *version == v.version => *at,
            _ => now,
        };
        self.seen = read.as_ref().map(|v| (v.version.clone(), seen));
        let current = read.as_ref().map(|v| &v.record);
        match next(&self.me, now, current, seen, &self.timing) {
            Step::Follow { holder, recheck } => {
                if !matches!(&self.role, Role::Follower { holder: h } if *h == holder) {
                    info!(lease = %self.store.describe(), %holder, "following");
                }
                self.role = Role::Follower { holder };
                let wait = (recheck - now).to_std().unwrap_or_default().min(self.timing.renew_every);
                (self.role.clone(), wait.max(Duration::from_millis(50)))
            }
            Step::Write(record) => {
                let version = read.as_ref().map(|v| v.version.as_str());
                match self.store.write(version, &record).await {
                    Ok(()) => {
                        let epoch = record.transitions;
                        if !matches!(self.role, Role::Leader { epoch: e, .. } if e == epoch) {
                            info!(lease = %self.store.describe(), epoch, "leading");
                        }
                        // Our own write changes the version: the next read sees it anew.
                        self.seen = None;
                        self.role = Role::Leader { epoch, until: acts_until(now, &self.timing) };
                        (self.role.clone(), self.timing.renew_every)
                    }
                    Err(e) => self.failed(now, &e),
                }
            }
        }
    }

    /// A read or write that did not go through: a leader stays one until its margin runs out
    /// (it cannot know whether its last renewal was seen); anyone else is a candidate again.
    fn failed(&mut self, now: DateTime<Utc>, e: &LeaseError) -> (Role, Duration) {
        if !matches!(e, LeaseError::Conflict { .. }) {
            warn!(error = %e, "lease");
        }
        if !self.role.leads_at(now) {
            self.role = Role::Candidate;
        }
        let again = if matches!(e, LeaseError::Conflict { .. }) { Duration::ZERO } else { self.timing.renew_every };
        (self.role.clone(), again)
    }

    /// Run rounds until `token` is cancelled, publishing the role after each; then, if this
    /// replica leads, release the Lease so another takes over at once. `resign` makes a leader
    /// release it at once and start over as a candidate: whoever takes it next (this replica
    /// too) does so in a new epoch.
    pub async fn run(mut self, roles: watch::Sender<Role>, resign: Arc<Notify>, token: CancellationToken) {
        let publish = |role: &Role| {
            roles.send_if_modified(|r| {
                let changed = r != role;
                *r = role.clone();
                changed
            })
        };
        loop {
            let (role, wait) = self.round(Utc::now()).await;
            publish(&role);
            tokio::select! {
                _ = token.cancelled() => break,
                _ = resign.notified() => {
                    if let Role::Leader { epoch, .. } = self.role {
                        self.role = Role::Candidate;
                        publish(&Role::Candidate);
                        warn!(epoch, "resigning the lease");
                        self.release(epoch).await;
                    }
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
        if let Role::Leader { epoch, .. } = self.role {
            roles.send_replace(Role::Candidate);
            self.release(epoch).await;
        }
    }

    async fn release(&self, epoch: u32) {
        let Ok(Some(read)) = self.store.read().await else { return };
        if read.record.holder() != Some(self.me.as_str()) || read.record.transitions != epoch {
            return;
        }
        let released = LeaseRecord { holder: Some(String::new()), ..read.record };
        match self.store.write(Some(&read.version), &released).await {
            Ok(()) => info!(lease = %self.store.describe(), epoch, "released"),
            Err(e) => warn!(error = %e, "could not release the lease; it expires on its own"),
        }
    }
}

/// A Lease through the Kubernetes API.
pub struct KubeLeases {
    api: Api<Lease>,
    namespace: String,
    name: String,
}

impl KubeLeases {
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> KubeLeases {
        KubeLeases { api: Api::namespaced(client, namespace), namespace: namespace.into(), name: name.into() }
    }

    fn error(&self, e: kube::Error) -> LeaseError {
        let lease = self.describe();
        match e {
            kube::Error::Api(s) if s.code == 409 => LeaseError::Conflict { lease },
            e => LeaseError::Unavailable { lease, message: e.to_string() },
        }
    }

    fn object(&self, version: Option<&str>, r: &LeaseRecord) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version: version.map(str::to_string),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: r.holder.clone(),
                lease_duration_seconds: i32::try_from(r.duration.as_secs()).ok(),
                acquire_time: r.acquired.and_then(micro_time),
                renew_time: r.renewed.and_then(micro_time),
                lease_transitions: i32::try_from(r.transitions).ok(),
                ..Default::default()
            }),
        }
    }
}

fn micro_time(t: DateTime<Utc>) -> Option<MicroTime> {
    k8s_openapi::jiff::Timestamp::from_microsecond(t.timestamp_micros()).ok().map(MicroTime)
}

fn from_micro_time(t: &MicroTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(t.0.as_microsecond())
}

/// The record of a Lease as stored (absent fields read as a released lease in epoch 0).
fn record(lease: &Lease) -> LeaseRecord {
    let spec = lease.spec.clone().unwrap_or_default();
    LeaseRecord {
        holder: spec.holder_identity,
        duration: Duration::from_secs(spec.lease_duration_seconds.and_then(|s| u64::try_from(s).ok()).unwrap_or(0)),
        acquired: spec.acquire_time.as_ref().and_then(from_micro_time),
        renewed: spec.renew_time.as_ref().and_then(from_micro_time),
        transitions: spec.lease_transitions.and_then(|t| u32::try_from(t).ok()).unwrap_or(0),
    }
}

impl LeaseStore for KubeLeases {
    fn describe(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn read(&self) -> BoxFuture<'_, Result<Option<Versioned>, LeaseError>> {
        Box::pin(async move {
            let lease = self.api.get_opt(&self.name).await.map_err(|e| self.error(e))?;
            Ok(lease
                .map(|l| Versioned { record: record(&l), version: l.metadata.resource_version.unwrap_or_default() }))
        })
    }

    fn write<'a>(&'a self, version: Option<&'a str>, record: &'a LeaseRecord) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(async move {
            let lease = self.object(version, record);
            let pp = PostParams { field_manager: Some("backstop".into()), ..Default::default() };
            let written = match version {
                None => self.api.create(&pp, &lease).await,
                Some(_) => self.api.replace(&self.name, &pp, &lease).await,
            };
            written.map(|_| ()).map_err(|e| self.error(e))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use chrono::TimeZone;

    use super::*;

    /// A Lease in memory with the API's conditional write: a version that is not the stored
    /// one is a conflict, a create of an existing Lease too.
    #[derive(Default)]
    struct Memory {
        stored: Mutex<Option<Versioned>>,
        down: Mutex<bool>,
        /// Written by "another replica" between the next read and write.
        race: Mutex<Option<LeaseRecord>>,
    }

    impl LeaseStore for &Memory {
        fn describe(&self) -> String {
            "ns/lease".into()
        }
        fn read(&self) -> BoxFuture<'_, Result<Option<Versioned>, LeaseError>> {
            let down = *self.down.lock().unwrap();
            let stored = self.stored.lock().unwrap().clone();
            Box::pin(async move {
                if down {
                    return Err(LeaseError::Unavailable { lease: "ns/lease".into(), message: "down".into() });
                }
                Ok(stored)
            })
        }
        fn write<'a>(
            &'a self,
            version: Option<&'a str>,
            record: &'a LeaseRecord,
        ) -> BoxFuture<'a, Result<(), LeaseError>> {
            let mut stored = self.stored.lock().unwrap();
            if let Some(other) = self.race.lock().unwrap().take() {
                let n = stored.as_ref().map_or(1, |s| s.version.parse::<u64>().unwrap() + 1);
                *stored = Some(Versioned { record: other, version: n.to_string() });
            }
            let result = match (&*stored, version) {
                (None, None) => Ok(1),
                (Some(s), Some(v)) if s.version == v => Ok(s.version.parse::<u64>().unwrap() + 1),
                _ => Err(LeaseError::Conflict { lease: "ns/lease".into() }),
            };
            if let Ok(n) = result {
                *stored = Some(Versioned { record: record.clone(), version: n.to_string() });
            }
            Box::pin(async move { result.map(|_| ()) })
        }
    }

    fn t(ms: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 2, 3, 0, 0).unwrap() + chrono::Duration::milliseconds(ms)
    }

    #[tokio::test]
    async fn one_of_two_leads_the_other_follows_and_takes_over_only_after_the_lease_expires() {
        let lease = Memory::default();
        let timing = Timing::default();
        let mut a = Elector::new(&lease, "a", timing);
        let mut b = Elector::new(&lease, "b", timing);
        assert_eq!(a.round(t(0)).await.0, Role::Leader { epoch: 0, until: t(7_000) });
        assert_eq!(b.round(t(100)).await.0, Role::Follower { holder: "a".into() });
        // a stops renewing (a pause, a partition). b saw the lease unchanged since t(100).
        assert_eq!(b.round(t(10_099)).await.0, Role::Follower { holder: "a".into() });
        assert!(!a.role().leads_at(t(7_000)), "a stopped acting 3 s before b may take over");
        assert_eq!(b.round(t(10_100)).await.0, Role::Leader { epoch: 1, until: t(17_100) });
        // a comes back: its renewal names its old version, so it cannot overwrite b's.
        let (role, _) = a.round(t(11_000)).await;
        assert_eq!(role, Role::Follower { holder: "b".into() }, "read again, it follows");
    }

    #[tokio::test]
    async fn a_leader_that_cannot_reach_the_api_leads_only_until_its_margin() {
        let lease = Memory::default();
        let mut a = Elector::new(&lease, "a", Timing::default());
        a.round(t(0)).await;
        *lease.down.lock().unwrap() = true;
        assert!(a.round(t(2_000)).await.0.leads_at(t(2_000)), "still within its lease");
        assert_eq!(a.round(t(7_000)).await.0, Role::Candidate, "past its margin: stops acting");
    }

    #[tokio::test]
    async fn a_lost_race_is_read_again_at_once() {
        let lease = Memory::default();
        let mut b = Elector::new(&lease, "b", Timing::default());
        // b reads no Lease; before its create lands, a creates it.
        let a_holds = LeaseRecord {
            holder: Some("a".into()),
            duration: Duration::from_secs(10),
            acquired: Some(t(0)),
            renewed: Some(t(0)),
            transitions: 0,
        };
        *lease.race.lock().unwrap() = Some(a_holds);
        let (role, again) = b.round(t(0)).await;
        assert_eq!((role, again), (Role::Candidate, Duration::ZERO), "conflict: no sleep before reading again");
        assert_eq!(b.round(t(1)).await.0, Role::Follower { holder: "a".into() });
        assert_eq!(lease.stored.lock().unwrap().as_ref().unwrap().record.holder(), Some("a"), "b overwrote nothing");
    }

    #[tokio::test]
    async fn a_leader_releases_the_lease_when_it_stops_so_another_takes_it_at_once() {
        let lease = Memory::default();
        let a = Elector::new(&lease, "a", Timing::default());
        let (tx, mut rx) = watch::channel(Role::Candidate);
        let token = CancellationToken::new();
        let stop = token.clone();
        let run = a.run(tx, Arc::new(Notify::new()), token);
        let watch = async {
            rx.wait_for(|r| matches!(r, Role::Leader { .. })).await.unwrap();
            stop.cancel();
        };
        tokio::join!(run, watch);
        assert_eq!(*rx.borrow(), Role::Candidate);
        let released = lease.stored.lock().unwrap().clone().unwrap().record;
        assert_eq!((released.holder(), released.transitions), (None, 0));
        let mut b = Elector::new(&lease, "b", Timing::default());
        assert!(matches!(b.round(Utc::now()).await.0, Role::Leader { epoch: 1, .. }), "taken at once, epoch 1");
    }

    #[tokio::test]
    async fn a_leader_that_resigns_is_followed_by_a_new_epoch_even_if_it_takes_the_lease_again() {
        let lease = Memory::default();
        let a = Elector::new(&lease, "a", Timing::default());
        let (tx, mut rx) = watch::channel(Role::Candidate);
        let (token, resign) = (CancellationToken::new(), Arc::new(Notify::new()));
        let (stop, resign_now) = (token.clone(), resign.clone());
        let run = a.run(tx, resign, token);
        let watch = async {
            rx.wait_for(|r| matches!(r, Role::Leader { epoch: 0, .. })).await.unwrap();
            resign_now.notify_one();
            rx.wait_for(|r| matches!(r, Role::Leader { epoch: 1, .. })).await.unwrap();
            stop.cancel();
        };
        tokio::join!(run, watch);
    }
}
