//! Cluster mode: several replicas, one acting. Leadership is a
//! `coordination.k8s.io/v1` Lease in backstop's namespace: [`lease`] decides (pure), [`elector`]
//! reads and writes the Lease and publishes this replica's role. The Lease's `leaseTransitions`
//! is the leader's epoch; [`replica`] is the rule by which every replica reads the replicated
//! audit log topic, keeping the same chain and dropping what a deposed leader wrote too late
//! (`docs/cluster.md` has the argument); [`log`] reads and writes that topic, [`join`] starts a
//! replica with an empty disk from its latest snapshot, and [`node`] runs a leader's terms. Only
//! with `cluster:` in the config: the single-process default is unchanged.

pub mod config;
pub mod elector;
pub mod join;
pub mod lease;
pub mod log;
pub mod node;
pub mod replica;

pub use config::{ClusterConfig, RawCluster};
pub use elector::{Elector, KubeLeases, LeaseError, LeaseStore, Role, Versioned};
pub use lease::{LeaseRecord, Step, Timing};
