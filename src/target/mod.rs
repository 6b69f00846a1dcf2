//! Targets hold the objects actions change. The executor reads an object, decides its new state
//! with the pure functions of [`crate::actions::virtualservice`], and writes it back conditionally on the version
//! it read; a target only knows how to read and write.

pub mod kubernetes;
pub mod manifests;

use std::fmt;
use std::str::FromStr;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The kinds of object backstop changes. (Kubernetes Services for selector switches and Argo
/// Rollouts come with the Kubernetes target.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ObjectKind {
    VirtualService,
    /// A Kubernetes Service whose selector a blue-green switch moves.
    Service,
    /// An Argo Rollout (`argoproj.io/v1alpha1`, plural `rollouts`) that backstop aborts the way
    /// `kubectl argo rollouts abort` does (see [`crate::actions::rollout`]).
    Rollout,
    /// A Flagger Canary (`flagger.app/v1beta1`): never written; backstop answers its `rollback`
    /// webhook (see [`crate::actions::flagger`]).
    FlaggerCanary,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::VirtualService => "VirtualService",
            ObjectKind::Service => "Service",
            ObjectKind::Rollout => "Rollout",
            ObjectKind::FlaggerCanary => "Canary",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The inverse of [`ObjectKind::as_str`] (as recorded in the audit trail's `detail.kind`).
impl FromStr for ObjectKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [ObjectKind::VirtualService, ObjectKind::Service, ObjectKind::Rollout, ObjectKind::FlaggerCanary]
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a kind backstop changes (VirtualService, Service, Rollout)"))
    }
}

/// One object: kind, namespace and name. Displayed and parsed as `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn virtual_service(namespace: impl Into<String>, name: impl Into<String>) -> ObjectRef {
        ObjectRef { kind: ObjectKind::VirtualService, namespace: namespace.into(), name: name.into() }
    }

    pub fn rollout(namespace: impl Into<String>, name: impl Into<String>) -> ObjectRef {
        ObjectRef { kind: ObjectKind::Rollout, namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl FromStr for ObjectRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(ObjectRef::virtual_service(ns, name))
            }
            _ => Err(format!("`{s}` is not NAMESPACE/NAME")),
        }
    }
}

/// An object as read, with the opaque version a conditional write must present.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    pub object: Value,
    pub version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{kind} {object} not found in {place}")]
    NotFound { kind: &'static str, object: String, place: String },
    #[error("{kind} {object} is defined more than once: {places}")]
    Ambiguous { kind: &'static str, object: String, places: String },
    #[error("{object} changed since it was read ({detail})")]
    Conflict { object: String, detail: String },
    #[error("{object}: {message}")]
    Invalid { object: String, message: String },
    /// The API server refused for lack of permission: never retried.
    #[error("{message} (backstop needs RBAC: {rule})")]
    Forbidden { message: String, rule: String },
    /// The target could not be reached or kept failing (after retries).
    #[error("{0}")]
    Unavailable(String),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl TargetError {
    /// A Flagger Canary is never read or written: backstop answers its rollback webhook.
    pub fn flagger_never_written(obj: &ObjectRef) -> TargetError {
        TargetError::Invalid {
            object: obj.to_string(),
            message: "backstop never writes a Flagger Canary: it answers Flagger's rollback webhook".into(),
        }
    }
}

/// What happened to an object, for targets that can say so on the object itself (Kubernetes
/// Events).
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// `Normal` or `Warning`.
    pub warning: bool,
    /// A CamelCase reason: `RolledBack`, `ActionRefused`, `ActionFailed`.
    pub reason: &'static str,
    pub message: String,
}

/// Read and conditionally write objects.
pub trait Target: Send + Sync + 'static {
    /// For logs and the audit trail, e.g. `manifests:deploy/local`.
    fn describe(&self) -> String;
    fn get<'a>(&'a self, obj: &'a ObjectRef) -> BoxFuture<'a, Result<Fetched, TargetError>>;
    /// Replace the object with `new`, only if it is still as `read` (same version); otherwise
    /// `TargetError::Conflict`.
    fn replace<'a>(
        &'a self,
        obj: &'a ObjectRef,
        read: &'a Fetched,
        new: &'a Value,
    ) -> BoxFuture<'a, Result<(), TargetError>>;

    /// Tell the object's watchers what happened (best effort; the audit log is the record).
    fn notify<'a>(&'a self, _obj: &'a ObjectRef, _notice: &'a Notice) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    /// Whether the target can be reached now (for `/readyz`); Err says what is wrong.
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_display_and_parse_as_their_kubernetes_kind() {
        for kind in [ObjectKind::VirtualService, ObjectKind::Service, ObjectKind::Rollout] {
            assert_eq!(kind.to_string().parse::<ObjectKind>(), Ok(kind));
        }
        assert_eq!(ObjectKind::Rollout.as_str(), "Rollout");
        assert!("Deployment".parse::<ObjectKind>().unwrap_err().contains("Rollout"));
        let r = ObjectRef::rollout("sms-app", "model-service");
        assert_eq!((r.kind, r.to_string()), (ObjectKind::Rollout, "sms-app/model-service".to_string()));
    }
}
