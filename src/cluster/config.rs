//! `cluster:` in `backstop.yaml`: opt-in; without it `serve` is the single process it always was.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::lease::Timing;
use crate::target::kubernetes::KubernetesOptions;

/// The replicated audit log topic's default name.
pub const DEFAULT_LOG_TOPIC: &str = "backstop.audit-log";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// This replica's name in the Lease (default: `$POD_NAME`, else the host name).
    #[serde(default)]
    pub identity: Option<String>,
    /// The Lease's namespace (default: `$POD_NAMESPACE`, else `default`).
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub lease: Option<String>,
    #[serde(default, deserialize_with = "crate::yaml::duration")]
    pub lease_duration: Option<String>,
    #[serde(default, deserialize_with = "crate::yaml::duration")]
    pub renew_every: Option<String>,
    #[serde(default, deserialize_with = "crate::yaml::duration")]
    pub margin: Option<String>,
    #[serde(default)]
    pub log_topic: Option<String>,
    /// The Pod this replica runs in, labelled `backstop.io/leader: "true"` while it leads and
    /// `"false"` otherwise, for a Service to select (default: `$POD_NAME`; none outside a Pod).
    #[serde(default)]
    pub pod: Option<String>,
    /// How to reach the API server for the Lease (default: in-cluster, else `KUBECONFIG`).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    #[serde(default)]
    pub context: Option<String>,
    /// How often the leader publishes a snapshot to the log topic, from which a replica with an
    /// empty disk starts (default 10m). The topic's retention must keep more than one period.
    #[serde(default, deserialize_with = "crate::yaml::duration")]
    pub snapshot_every: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    pub identity: String,
    pub namespace: String,
    pub lease: String,
    pub timing: Timing,
    pub log_topic: String,
    /// The Pod to label (see [`RawCluster::pod`]).
    pub pod: Option<String>,
    pub kubernetes: KubernetesOptions,
    /// See [`RawCluster::snapshot_every`].
    pub snapshot_every: Duration,
}

/// The default of `cluster.snapshot_every`.
pub const DEFAULT_SNAPSHOT_EVERY: Duration = Duration::from_secs(600);

/// A field of `cluster:` and what is wrong with it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ClusterConfigError {
    pub field: String,
    pub message: String,
}

fn error(field: &str, message: impl Into<String>) -> ClusterConfigError {
    ClusterConfigError { field: format!("cluster.{field}"), message: message.into() }
}

impl RawCluster {
    /// Check and fill in defaults; `resolve` makes a path relative to the config file's folder;
    /// `env` reads the environment (a parameter, so tests need not set the process's).
    pub fn resolve(
        self,
        resolve: impl Fn(&std::path::Path) -> PathBuf,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ClusterConfig, ClusterConfigError> {
        let duration = |field: &str, v: &Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(s) => humantime::parse_duration(s).map_err(|e| error(field, format!("`{s}` is not a duration: {e}"))),
        };
        let d = Timing::default();
        let timing = Timing {
            duration: duration("lease_duration", &self.lease_duration, d.duration)?,
            renew_every: duration("renew_every", &self.renew_every, d.renew_every)?,
            margin: duration("margin", &self.margin, d.margin)?,
        };
        if timing.duration.subsec_nanos() != 0 {
            return Err(error("lease_duration", "a Lease counts whole seconds"));
        }
        timing.check().map_err(|m| error("lease_duration", m))?;
        let pod = self.pod.or_else(|| env("POD_NAME"));
        let identity = self
            .identity
            .or_else(|| env("POD_NAME"))
            .or_else(|| env("HOSTNAME"))
            .ok_or_else(|| error("identity", "not set, and neither POD_NAME nor HOSTNAME is"))?;
        if identity.is_empty() {
            return Err(error("identity", "must not be empty"));
        }
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        };
        let namespace = self.namespace.or_else(|| env("POD_NAMESPACE")).unwrap_or_else(|| "default".into());
        if !name_ok(&namespace) {
            return Err(error("namespace", format!("`{namespace}` is not a Kubernetes name")));
        }
        let lease = self.lease.unwrap_or_else(|| "backstop".into());
        if !name_ok(&lease) {
            return Err(error("lease", format!("`{lease}` is not a Kubernetes name")));
        }
        let snapshot_every = duration("snapshot_every", &self.snapshot_every, DEFAULT_SNAPSHOT_EVERY)?;
        if snapshot_every < Duration::from_secs(1) {
            return Err(error("snapshot_every", "at least 1s"));
        }
        let log_topic = self.log_topic.unwrap_or_else(|| DEFAULT_LOG_TOPIC.into());
        if log_topic.is_empty() {
            return Err(error("log_topic", "must not be empty"));
        }
        Ok(ClusterConfig {
            identity,
            namespace,
            lease,
            timing,
            log_topic,
            pod,
            kubernetes: KubernetesOptions {
                kubeconfig: self.kubeconfig.map(|p| resolve(&p)),
                context: self.context,
                ..KubernetesOptions::default()
            },
            snapshot_every,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str, env: &[(&str, &str)]) -> Result<ClusterConfig, ClusterConfigError> {
        let raw: RawCluster = serde_yaml_ng::from_str(yaml).unwrap();
        raw.resolve(
            |p| PathBuf::from("/etc/backstop").join(p),
            |k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()),
        )
    }

    #[test]
    fn defaults_come_from_the_pod_and_the_lease_defaults() {
        let c = parse("{}", &[("POD_NAME", "backstop-1"), ("POD_NAMESPACE", "ops")]).unwrap();
        assert_eq!((c.identity.as_str(), c.namespace.as_str(), c.lease.as_str()), ("backstop-1", "ops", "backstop"));
        assert_eq!(c.timing, Timing::default());
        assert_eq!(c.log_topic, DEFAULT_LOG_TOPIC);
        assert_eq!(c.pod.as_deref(), Some("backstop-1"), "its own Pod is labelled");
        let c = parse("{identity: a, kubeconfig: kc}", &[]).unwrap();
        assert_eq!((c.identity.as_str(), c.namespace.as_str()), ("a", "default"));
        assert_eq!(c.kubernetes.kubeconfig, Some(PathBuf::from("/etc/backstop/kc")));
        assert_eq!(c.pod, None, "outside a Pod nothing is labelled");
    }

    #[test]
    fn bad_settings_name_their_field() {
        let err = parse("{identity: a, lease_duration: 1500ms}", &[]).unwrap_err();
        assert_eq!(err.field, "cluster.lease_duration");
        let err = parse("{identity: a, lease_duration: 4s, renew_every: 2s}", &[]).unwrap_err();
        assert!(err.message.contains("no second try"), "{err}");
        assert_eq!(parse("{}", &[]).unwrap_err().field, "cluster.identity");
        assert_eq!(parse("{identity: a, lease: Bad_Name}", &[]).unwrap_err().field, "cluster.lease");
        assert_eq!(parse("{identity: a, snapshot_every: 10ms}", &[]).unwrap_err().field, "cluster.snapshot_every");
        assert_eq!(parse("{identity: a, snapshot_every: 1h}", &[]).unwrap().snapshot_every, Duration::from_secs(3600));
    }
}
