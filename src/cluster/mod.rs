//! Cluster mode (in progress): several replicas, one acting. Leadership is a
//! `coordination.k8s.io/v1` Lease in backstop's namespace: [`lease`] decides (pure), [`elector`]
//! reads and writes the Lease and publishes this replica's role. The Lease's `leaseTransitions`
//! is the leader's epoch, which the replicated audit log will carry to fence a deposed leader.
//! Not yet wired into `serve`: the single-process default is unchanged.

pub mod elector;
pub mod lease;

pub use elector::{Elector, KubeLeases, LeaseError, LeaseStore, Role, Versioned};
pub use lease::{LeaseRecord, Step, Timing};
