//! `backstop.yaml`: validated once at start into typed values. Relative paths are resolved
//! against the directory of the config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::audit::{AuditOptions, Retention};
use crate::http::auth::AuthConfig;
use crate::kafka::KafkaConfig;
use crate::prometheus::PrometheusConfig;
use crate::secret::Secret;
use crate::state::GuardSettings;
use crate::target::kubernetes::KubernetesOptions;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}{}: field `{field}`: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid { file: String, line: Option<usize>, field: String, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    #[serde(default = "default_rules")]
    rules: Vec<PathBuf>,
    target: RawTarget,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    action_timeout: Option<String>,
    #[serde(default)]
    shutdown_grace: Option<String>,
    #[serde(default)]
    reload_interval: Option<String>,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    guards: RawGuards,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    prometheus: Option<RawPrometheus>,
    #[serde(default)]
    kafka: Option<RawKafka>,
    #[serde(default)]
    cluster: Option<crate::cluster::RawCluster>,
    #[serde(default)]
    ui: RawUi,
}

/// Records appended between snapshots at most, by default: a start replays about 300,000
/// records a second here, so a restart after a crash stays well under a second.
pub const DEFAULT_SNAPSHOT_RECORDS: u64 = 100_000;
/// The log's growth (bytes) after which the guards' state is written again (`audit.snapshot_bytes`).
pub const DEFAULT_SNAPSHOT_BYTES: u64 = 64 << 20;

/// `ui:`: the on-call page.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUi {
    /// Show no controls (pause, resume, undo, act) and refuse them.
    #[serde(default)]
    read_only: bool,
    /// The page's address as people reach it (`https://backstop.example.com`): Kubernetes Events
    /// about an action end with a link to its page under it.
    #[serde(default)]
    url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafka {
    brokers: String,
    #[serde(default)]
    group_id: Option<String>,
    #[serde(default)]
    alerts_topic: Option<String>,
    #[serde(default)]
    feedback_topic: Option<String>,
    #[serde(default)]
    dead_letter_topic: Option<String>,
    #[serde(default)]
    audit_topic: Option<String>,
    #[serde(default)]
    properties: std::collections::BTreeMap<String, String>,
    /// librdkafka properties whose values are read from files (a mounted Secret:
    /// `sasl.password: /etc/backstop/kafka/password`), so secrets stay out of the config.
    #[serde(default)]
    property_files: std::collections::BTreeMap<String, PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrometheus {
    url: String,
    #[serde(default)]
    bearer_token_file: Option<PathBuf>,
    #[serde(default)]
    bearer_token_env: Option<String>,
    #[serde(default)]
    basic: Option<RawBasic>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    insecure_skip_verify: bool,
    #[serde(default)]
    timeout: Option<String>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_data_dir() -> PathBuf {
    "data".into()
}
fn default_rules() -> Vec<PathBuf> {
    vec!["rules".into()]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    #[serde(default)]
    manifests: Option<RawManifests>,
    #[serde(default)]
    kubernetes: Option<RawKubernetes>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifests {
    dir: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKubernetes {
    #[serde(default)]
    kubeconfig: Option<PathBuf>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    virtualservice_version: Option<String>,
    #[serde(default)]
    request_timeout: Option<String>,
    #[serde(default)]
    events: Option<bool>,
}

/// Which target actions change.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetConfig {
    /// A directory of YAML manifests (the embedded default, and GitOps).
    Manifests(PathBuf),
    /// A cluster, through the Kubernetes API.
    Kubernetes(KubernetesOptions),
}

impl TargetConfig {
    /// `kubernetes` or `manifests:DIR`, as `serve --target` takes it.
    pub fn parse_flag(flag: &str, current: &TargetConfig) -> Result<TargetConfig, String> {
        match flag.split_once(':') {
            None if flag == "kubernetes" => Ok(match current {
                TargetConfig::Kubernetes(k) => TargetConfig::Kubernetes(k.clone()),
                TargetConfig::Manifests(_) => TargetConfig::Kubernetes(KubernetesOptions::default()),
            }),
            Some(("manifests", dir)) if !dir.is_empty() => Ok(TargetConfig::Manifests(dir.into())),
            _ => Err(format!("`{flag}`: expected `kubernetes` or `manifests:DIR`")),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[serde(default)]
    max_body_bytes: Option<usize>,
    #[serde(default)]
    max_connections: Option<usize>,
    #[serde(default)]
    max_concurrent_requests: Option<usize>,
    #[serde(default)]
    header_read_timeout: Option<String>,
    #[serde(default)]
    body_read_timeout: Option<String>,
    #[serde(default)]
    max_headers: Option<usize>,
    #[serde(default)]
    max_head_bytes: Option<usize>,
    #[serde(default)]
    auth: Option<RawAuth>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default)]
    bearer_token_file: Option<PathBuf>,
    #[serde(default)]
    bearer_token_env: Option<String>,
    #[serde(default)]
    basic: Option<RawBasic>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasic {
    username: String,
    #[serde(default)]
    password_file: Option<PathBuf>,
    #[serde(default)]
    password_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuards {
    max_actions: Option<usize>,
    window: Option<String>,
    default_cooldown: Option<String>,
    key_retention: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    segment_max_bytes: Option<u64>,
    segment_max_age: Option<String>,
    snapshot_interval: Option<String>,
    snapshot_records: Option<u64>,
    snapshot_bytes: Option<u64>,
    #[serde(default)]
    retention: RawRetention,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    max_age: Option<String>,
    max_bytes: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub rules: Vec<PathBuf>,
    pub target: TargetConfig,
    pub dry_run: bool,
    pub action_timeout: Duration,
    /// After SIGTERM, how long in-flight work may take before it is aborted.
    pub shutdown_grace: Duration,
    pub max_body_bytes: usize,
    /// Connections, requests at once, and how much and how slowly a request may come.
    pub server_limits: crate::http::ServerLimits,
    pub auth: AuthConfig,
    pub guards: GuardSettings,
    pub audit: AuditOptions,
    /// How often the guards' state is written beside the audit log.
    pub snapshot_interval: Duration,
    /// A snapshot is also written once this many records were appended since the last one, so
    /// a restart after a crash replays at most about this many, however busy the log.
    pub snapshot_records: u64,
    /// Or once this many bytes were appended: a restart reads at most about this much.
    pub snapshot_bytes: u64,
    /// How often the rule files and this file are checked for changes (0: only on SIGHUP).
    pub reload_interval: Duration,
    pub prometheus: Option<PrometheusConfig>,
    /// The Kafka source, if any.
    pub kafka: Option<KafkaConfig>,
    /// Several replicas, one acting (`docs/cluster.md`); None: one process.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// The on-call page shows no controls and refuses them (`ui.read_only`).
    pub ui_read_only: bool,
    /// The on-call page's address as people reach it (`ui.url`), without a trailing slash.
    pub ui_url: Option<String>,
}

impl Config {
    pub fn audit_dir(&self) -> PathBuf {
        self.data_dir.join("audit")
    }

    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file)
            .map_err(|source| ConfigError::Read { file: file.display().to_string(), source })?;
        Config::parse(file, &text)
    }

    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let name = file.display().to_string();
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            file: name.clone(),
            line: None,
            field: field.into(),
            message,
        };
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let msg = inner.to_string();
            ConfigError::Invalid {
                file: name.clone(),
                line: inner.location().map(|l| l.line()),
                field,
                message: msg.split(" at line ").next().unwrap_or_default().to_string(),
            }
        })?;
        let base = file.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
        let duration = |field: &str, v: &Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(s) => {
                humantime::parse_duration(s).map_err(|e| invalid(field, format!("`{s}` is not a duration: {e}")))
            }
        };
        let server_limits = {
            let d = crate::http::ServerLimits::default();
            let h = &raw.http;
            let count = |field: &str, v: Option<usize>, default: usize| match v {
                Some(0) => Err(invalid(field, "must be at least 1".into())),
                v => Ok(v.unwrap_or(default)),
            };
            let timeout = |field: &str, v: &Option<String>, default: Duration| match duration(field, v, default)? {
                t if t.is_zero() => Err(invalid(field, "must be longer than 0s".into())),
                t => Ok(t),
            };
            crate::http::ServerLimits {
                header_read_timeout: timeout(
                    "http.header_read_timeout",
                    &h.header_read_timeout,
                    d.header_read_timeout,
                )?,
                max_headers: count("http.max_headers", h.max_headers, d.max_headers)?,
                max_head_bytes: count("http.max_head_bytes", h.max_head_bytes, d.max_head_bytes)?,
                body_read_timeout: timeout("http.body_read_timeout", &h.body_read_timeout, d.body_read_timeout)?,
                max_connections: count("http.max_connections", h.max_connections, d.max_connections)?,
                max_concurrent_requests: count(
                    "http.max_concurrent_requests",
                    h.max_concurrent_requests,
                    d.max_concurrent_requests,
                )?,
            }
        };
        let listen =
            raw.listen.parse().map_err(|e| invalid("listen", format!("`{}` is not HOST:PORT: {e}", raw.listen)))?;
        let defaults = GuardSettings::default();
        let guards = GuardSettings {
            max_actions: raw.guards.max_actions.unwrap_or(defaults.max_actions),
            window: duration("guards.window", &raw.guards.window, defaults.window)?,
            default_cooldown: duration(
                "guards.default_cooldown",
                &raw.guards.default_cooldown,
                defaults.default_cooldown,
            )?,
            key_retention: duration("guards.key_retention", &raw.guards.key_retention, defaults.key_retention)?,
        };
        if guards.max_actions == 0 {
            return Err(invalid("guards.max_actions", "must be at least 1 (use dry_run to stop all writes)".into()));
        }
        let audit_defaults = AuditOptions::default();
        let audit = AuditOptions {
            segment_max_bytes: raw.audit.segment_max_bytes.unwrap_or(audit_defaults.segment_max_bytes),
            segment_max_age: duration(
                "audit.segment_max_age",
                &raw.audit.segment_max_age,
                audit_defaults.segment_max_age,
            )?,
            retention: Retention {
                max_age: raw
                    .audit
                    .retention
                    .max_age
                    .as_ref()
                    .map(|s| humantime::parse_duration(s))
                    .transpose()
                    .map_err(|e| invalid("audit.retention.max_age", format!("not a duration: {e}")))?,
                max_bytes: raw.audit.retention.max_bytes,
            },
            ..audit_defaults
        };
        if audit.segment_max_bytes < 4096 {
            return Err(invalid("audit.segment_max_bytes", "must be at least 4096".into()));
        }
        // A secret from a file or an environment variable, never both.
        let secret = |field: &str, file: Option<PathBuf>, env: Option<String>| match (file, env) {
            (Some(f), None) => Ok(Some(Secret::File(resolve(&f)))),
            (None, Some(e)) => Ok(Some(Secret::Env(e))),
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err(invalid(field, "give a file or an environment variable, not both".into())),
        };
        let basic = |field: &str, b: Option<RawBasic>| match b {
            None => Ok(None),
            Some(b) => secret(field, b.password_file, b.password_env)?
                .map(|s| Some((b.username, s)))
                .ok_or_else(|| invalid(field, "needs password_file or password_env".into())),
        };
        let auth = match raw.http.auth {
            None => AuthConfig::default(),
            Some(a) => {
                let bearer = secret("http.auth.bearer_token", a.bearer_token_file, a.bearer_token_env)?;
                let basic = basic("http.auth.basic", a.basic)?;
                if bearer.is_none() && basic.is_none() {
                    return Err(invalid("http.auth", "configure bearer_token_file/_env or basic".into()));
                }
                AuthConfig { bearer, basic }
            }
        };
        let prometheus = match raw.prometheus {
            None => None,
            Some(p) => {
                if !(p.url.starts_with("http://") || p.url.starts_with("https://")) {
                    return Err(invalid("prometheus.url", format!("`{}` is not an http(s) URL", p.url)));
                }
                let bearer = secret("prometheus.bearer_token", p.bearer_token_file, p.bearer_token_env)?;
                let basic = basic("prometheus.basic", p.basic)?;
                if bearer.is_some() && basic.is_some() {
                    return Err(invalid("prometheus", "bearer token or basic auth, not both".into()));
                }
                Some(PrometheusConfig {
                    url: p.url,
                    bearer_token: bearer,
                    basic,
                    ca_file: p.ca_file.map(|f| resolve(&f)),
                    insecure_skip_verify: p.insecure_skip_verify,
                    timeout: duration("prometheus.timeout", &p.timeout, Duration::from_secs(5))?,
                })
            }
        };
        let kafka = match raw.kafka {
            None => None,
            Some(k) => {
                let d = KafkaConfig::with_brokers(k.brokers);
                let mut properties = k.properties;
                for (key, file) in k.property_files {
                    let field = format!("kafka.property_files.{key}");
                    if properties.contains_key(&key) {
                        return Err(invalid(&field, format!("`{key}` is also in kafka.properties; give it once")));
                    }
                    let path = resolve(&file);
                    let value = std::fs::read_to_string(&path)
                        .map_err(|e| invalid(&field, format!("cannot read {}: {e}", path.display())))?;
                    properties.insert(key, value.trim_end_matches(['\n', '\r']).to_string());
                }
                Some(KafkaConfig {
                    group_id: k.group_id.unwrap_or(d.group_id),
                    alerts_topic: k.alerts_topic.unwrap_or(d.alerts_topic),
                    feedback_topic: k.feedback_topic.unwrap_or(d.feedback_topic),
                    dead_letter_topic: k.dead_letter_topic,
                    audit_topic: k.audit_topic,
                    properties,
                    brokers: d.brokers,
                })
            }
        };
        let cluster = match raw.cluster {
            None => None,
            Some(c) => {
                if kafka.is_none() {
                    return Err(invalid("cluster", "needs `kafka:` (the audit log is replicated through it)".into()));
                }
                // The host's name when HOSTNAME is not exported (a shell's own variable).
                let env = |k: &str| {
                    std::env::var(k).ok().or_else(|| {
                        (k == "HOSTNAME")
                            .then(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
                            .flatten()
                            .map(|h| h.trim().to_string())
                            .filter(|h| !h.is_empty())
                    })
                };
                let c = c.resolve(resolve, env).map_err(|e| invalid(&e.field, e.message))?;
                Some(c)
            }
        };
        Ok(Config {
            cluster,
            file: file.to_path_buf(),
            listen,
            data_dir: resolve(&raw.data_dir),
            rules: raw.rules.iter().map(|p| resolve(p)).collect(),
            target: match (raw.target.manifests, raw.target.kubernetes) {
                (Some(m), None) => TargetConfig::Manifests(resolve(&m.dir)),
                (None, Some(k)) => {
                    let defaults = KubernetesOptions::default();
                    let version = k.virtualservice_version.unwrap_or(defaults.virtualservice_version);
                    if !matches!(version.as_str(), "v1" | "v1beta1" | "v1alpha3") {
                        return Err(invalid(
                            "target.kubernetes.virtualservice_version",
                            format!("`{version}`: v1, v1beta1 or v1alpha3"),
                        ));
                    }
                    TargetConfig::Kubernetes(KubernetesOptions {
                        kubeconfig: k.kubeconfig.map(|p| resolve(&p)),
                        context: k.context,
                        virtualservice_version: version,
                        request_timeout: duration(
                            "target.kubernetes.request_timeout",
                            &k.request_timeout,
                            defaults.request_timeout,
                        )?,
                        events: k.events.unwrap_or(defaults.events),
                    })
                }
                _ => return Err(invalid("target", "exactly one of `manifests` or `kubernetes`".into())),
            },
            dry_run: raw.dry_run,
            action_timeout: duration("action_timeout", &raw.action_timeout, Duration::from_secs(10))?,
            shutdown_grace: duration("shutdown_grace", &raw.shutdown_grace, Duration::from_secs(20))?,
            reload_interval: duration("reload_interval", &raw.reload_interval, Duration::from_secs(2))?,
            max_body_bytes: raw.http.max_body_bytes.unwrap_or(1 << 20),
            ui_read_only: raw.ui.read_only,
            ui_url: raw.ui.url.as_deref().map(ui_url).transpose().map_err(|e| invalid("ui.url", e))?,
            server_limits,
            auth,
            guards,
            audit,
            prometheus,
            kafka,
            snapshot_interval: duration(
                "audit.snapshot_interval",
                &raw.audit.snapshot_interval,
                Duration::from_secs(30),
            )?,
            snapshot_records: match raw.audit.snapshot_records {
                Some(0) => return Err(invalid("audit.snapshot_records", "must be at least 1".into())),
                Some(n) => n,
                None => DEFAULT_SNAPSHOT_RECORDS,
            },
            snapshot_bytes: match raw.audit.snapshot_bytes {
                Some(n) if n < 1 << 20 => {
                    return Err(invalid("audit.snapshot_bytes", "must be at least 1048576 (1 MiB)".into()));
                }
                Some(n) => n,
                None => DEFAULT_SNAPSHOT_BYTES,
            },
        })
    }
}

/// `ui.url`: an absolute http(s) URL with a host and no credentials, query or fragment (it is
/// the start of the links Kubernetes Events carry, which anyone who can read Events sees);
/// returned without its trailing slashes.
fn ui_url(url: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        format!("`{url}` is not an absolute URL ({e}): give the page's address as people reach it, e.g. https://backstop.example.com")
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("`{url}`: only http:// or https:// URLs"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{url}` has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "`{url}` carries credentials; Kubernetes Events would show them to anyone who reads Events"
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!("`{url}`: no query or fragment (the action's path is appended to it)"));
    }
    // As parsed (host in lower case, anything unsafe in the path percent-encoded).
    Ok(parsed.as_str().trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_config_is_valid_and_resolves_paths() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("backstop.yaml");
        let c = Config::load(&file).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert!(matches!(&c.target, TargetConfig::Manifests(d) if d.ends_with("deploy/local")));
        assert!(c.rules[0].ends_with("rules"));
        assert_eq!(c.max_body_bytes, 1 << 20);
    }

    #[test]
    fn kafka_properties_may_come_from_files_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("password"), "s3cr3t\n").unwrap();
        let file = dir.path().join("backstop.yaml");
        let text = "target: {manifests: {dir: x}}\nkafka:\n  brokers: k:9092\n  properties: {sasl.username: bs}\n  property_files: {sasl.password: password}\n";
        let c = Config::parse(&file, text).unwrap();
        let k = c.kafka.unwrap();
        assert_eq!(k.properties["sasl.password"], "s3cr3t", "read, without the trailing newline");
        assert_eq!(k.properties["sasl.username"], "bs");
        let missing = text.replace("password}", "nope}");
        let err = Config::parse(&file, &missing).unwrap_err().to_string();
        assert!(err.contains("kafka.property_files.sasl.password") && err.contains("cannot read"), "{err}");
        let twice = text.replace("{sasl.username: bs}", "{sasl.password: inline}");
        let err = Config::parse(&file, &twice).unwrap_err().to_string();
        assert!(err.contains("also in kafka.properties"), "{err}");
    }

    #[test]
    fn unknown_fields_and_bad_values_name_the_field() {
        let err =
            Config::parse(Path::new("/etc/b.yaml"), "target: {manifests: {dir: x}}\nlisten: nowhere\n").unwrap_err();
        assert!(err.to_string().contains("field `listen`"), "{err}");
        let err = Config::parse(Path::new("/etc/b.yaml"), "target: {manifests: {dir: x}}\nguards: {windoww: 1h}\n")
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `windoww`"), "{err}");
        assert!(err.to_string().starts_with("/etc/b.yaml:2"), "{err}");
    }

    #[test]
    fn http_server_limits_come_from_the_config_and_zero_is_refused() {
        let file = Path::new("/etc/b.yaml");
        let c = Config::parse(file, "target: {manifests: {dir: x}}\n").unwrap();
        assert_eq!(c.server_limits, crate::http::ServerLimits::default());
        let text = "target: {manifests: {dir: x}}\nhttp:\n  max_connections: 200\n  max_concurrent_requests: 8\n  \
                    header_read_timeout: 5s\n  body_read_timeout: 1m\n  max_headers: 50\n  max_head_bytes: 4096\n";
        let l = Config::parse(file, text).unwrap().server_limits;
        assert_eq!((l.max_connections, l.max_concurrent_requests, l.max_headers, l.max_head_bytes), (200, 8, 50, 4096));
        assert_eq!((l.header_read_timeout, l.body_read_timeout), (Duration::from_secs(5), Duration::from_secs(60)));
        let err =
            Config::parse(file, "target: {manifests: {dir: x}}\nhttp: {max_concurrent_requests: 0}\n").unwrap_err();
        assert!(
            err.to_string().contains("http.max_concurrent_requests") && err.to_string().contains("at least 1"),
            "{err}"
        );
        let err = Config::parse(file, "target: {manifests: {dir: x}}\nhttp: {body_read_timeout: 0s}\n").unwrap_err();
        assert!(err.to_string().contains("http.body_read_timeout"), "{err}");
    }

    #[test]
    fn kubernetes_target_from_config_and_flag() {
        let c = Config::parse(
            Path::new("/etc/backstop/b.yaml"),
            "target:\n  kubernetes: {kubeconfig: kc.yaml, context: prod, virtualservice_version: v1beta1}\n",
        )
        .unwrap();
        let TargetConfig::Kubernetes(k) = &c.target else { panic!("{:?}", c.target) };
        assert_eq!(k.kubeconfig.as_deref(), Some(Path::new("/etc/backstop/kc.yaml")));
        assert_eq!((k.context.as_deref(), k.virtualservice_version.as_str()), (Some("prod"), "v1beta1"));
        let err =
            Config::parse(Path::new("b.yaml"), "target: {kubernetes: {virtualservice_version: v2}}\n").unwrap_err();
        assert!(err.to_string().contains("virtualservice_version"), "{err}");
        let m = TargetConfig::Manifests("x".into());
        assert_eq!(
            TargetConfig::parse_flag("kubernetes", &m),
            Ok(TargetConfig::Kubernetes(KubernetesOptions::default()))
        );
        assert_eq!(TargetConfig::parse_flag("kubernetes", &c.target), Ok(c.target.clone()), "keeps configured options");
        assert_eq!(
            TargetConfig::parse_flag("manifests:/gitops", &c.target),
            Ok(TargetConfig::Manifests("/gitops".into()))
        );
        assert!(TargetConfig::parse_flag("cluster", &m).is_err());
    }

    #[test]
    fn auth_secrets_from_file_or_env() {
        let c = Config::parse(
            Path::new("/etc/backstop/b.yaml"),
            "target: {manifests: {dir: x}}\nhttp:\n  auth:\n    bearer_token_file: token\n    basic: {username: am, password_env: AM_PASS}\n",
        )
        .unwrap();
        assert_eq!(c.auth.bearer, Some(Secret::File("/etc/backstop/token".into())));
        assert_eq!(c.auth.basic, Some(("am".into(), Secret::Env("AM_PASS".into()))));
    }

    #[test]
    fn kafka_audit_topic_is_optional() {
        let base = "target: {manifests: {dir: x}}\nkafka:\n  brokers: k:9092\n";
        let c = Config::parse(Path::new("b.yaml"), base).unwrap();
        assert_eq!(c.kafka.unwrap().audit_topic, None);
        let c = Config::parse(Path::new("b.yaml"), &format!("{base}  audit_topic: backstop.audit\n")).unwrap();
        assert_eq!(c.kafka.unwrap().audit_topic.as_deref(), Some("backstop.audit"));
    }

    #[test]
    fn ui_url_is_an_absolute_http_url_kept_without_its_trailing_slash() {
        let file = Path::new("/etc/b.yaml");
        let parse =
            |url: &str| Config::parse(file, &format!("target: {{manifests: {{dir: x}}}}\nui: {{url: '{url}'}}\n"));
        assert_eq!(Config::parse(file, "target: {manifests: {dir: x}}\n").unwrap().ui_url, None, "optional");
        for (given, kept) in [
            ("https://backstop.example.com", "https://backstop.example.com"),
            ("https://backstop.example.com/", "https://backstop.example.com"),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("https://ops.example.com/backstop/", "https://ops.example.com/backstop"),
        ] {
            assert_eq!(parse(given).unwrap().ui_url.as_deref(), Some(kept), "{given}");
        }
        for (given, says) in [
            ("backstop.example.com", "is not an absolute URL"),
            ("/ui/", "is not an absolute URL"),
            ("ftp://backstop.example.com", "only http:// or https://"),
            ("javascript:alert(1)", "only http:// or https://"),
            ("https://admin:s3cret@backstop.example.com", "carries credentials"),
            ("https://backstop.example.com/?a=1", "no query or fragment"),
        ] {
            let err = parse(given).unwrap_err().to_string();
            assert!(err.starts_with("/etc/b.yaml: field `ui.url`: "), "{given}: {err}");
            assert!(err.contains(says), "{given}: {err}");
        }
    }
}
