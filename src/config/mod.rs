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

/// Every problem of a config file, in the order found.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
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
    #[serde(default, deserialize_with = "crate::yaml::duration")]
    action_timeout: Option<String>,
    #[serde(default, deserialize_with = "crate::yaml::duration")]
    shutdown_grace: Option<String>,
    #[serde(default, deserialize_with = "crate::yaml::duration")]
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
    #[serde(default, deserialize_with = "crate::yaml::duration")]
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
    #[serde(default, deserialize_with = "crate::yaml::duration")]
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
    #[serde(default, deserialize_with = "crate::yaml::duration")]
    header_read_timeout: Option<String>,
    #[serde(default, deserialize_with = "crate::yaml::duration")]
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
    #[serde(default, deserialize_with = "crate::yaml::duration")]
    window: Option<String>,
    #[serde(default, deserialize_with = "crate::yaml::duration")]
    default_cooldown: Option<String>,
    #[serde(default, deserialize_with = "crate::yaml::duration")]
    key_retention: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    segment_max_bytes: Option<u64>,
    #[serde(default, deserialize_with = "crate::yaml::duration")]
    segment_max_age: Option<String>,
    #[serde(default, deserialize_with = "crate::yaml::duration")]
    snapshot_interval: Option<String>,
    snapshot_records: Option<u64>,
    snapshot_bytes: Option<u64>,
    #[serde(default)]
    retention: RawRetention,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    #[serde(default, deserialize_with = "crate::yaml::duration")]
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

    pub fn load(file: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(file)
            .map_err(|source| ConfigErrors(vec![ConfigError::Read { file: file.display().to_string(), source }]))?;
        Config::parse(file, &text)
    }

    /// The config in `text` (read from `file`, against whose folder its paths resolve), or every
    /// problem in it, each with its field and line.
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
        let name = file.display().to_string();
        let (raw, mut problems) = read_raw(text, &name);
        let config = raw.map(|raw| build(raw, file, &name, &mut problems));
        match (config, problems.is_empty()) {
            (Some(config), true) => Ok(config),
            _ => {
                // Each problem at its field's line (a missing field: its parent's).
                let lines = crate::yaml::FieldLines::of(text);
                for p in &mut problems {
                    if let ConfigError::Invalid { line, field, .. } = p {
                        *line = lines.line("", field).or(*line);
                    }
                }
                problems.sort_by_key(|p| match p {
                    ConfigError::Invalid { line, .. } => *line,
                    ConfigError::Read { .. } => None,
                });
                Err(ConfigErrors(problems))
            }
        }
    }
}

/// The rule paths a config file names (resolved against its folder), read leniently so that they
/// are known even when the rest of the file has problems: `validate` checks those rules too.
/// `None` if the file cannot be read or its `rules:` cannot be told.
pub fn rule_paths(file: &Path) -> Option<Vec<PathBuf>> {
    #[derive(Deserialize)]
    struct RulesOnly {
        #[serde(default = "default_rules")]
        rules: Vec<PathBuf>,
    }
    let text = std::fs::read_to_string(file).ok()?;
    let only: RulesOnly = serde_yaml_ng::from_str(&text).ok()?;
    let base = file.parent().unwrap_or(Path::new("."));
    Some(only.rules.iter().map(|p| if p.is_absolute() { p.clone() } else { base.join(p) }).collect())
}

/// The config as written and its problems: none, or every one found, with the config read
/// without its unknown fields when those were all that stood in the way (what the rest means is
/// then checked too).
fn read_raw(text: &str, name: &str) -> (Option<RawConfig>, Vec<ConfigError>) {
    let invalid = |line, field: String, message| ConfigError::Invalid { file: name.to_string(), line, field, message };
    let first = match serde_path_to_error::deserialize(serde_yaml_ng::Deserializer::from_str(text)) {
        Ok(raw) => return (Some(raw), Vec::new()),
        Err(e) => e,
    };
    let line = first.inner().location().map(|l| l.line());
    let (field, message) = crate::yaml::problem(first);
    // Not YAML, or not a mapping: that one problem.
    let value = match serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) {
        Ok(value) if value.is_mapping() => value,
        _ => return (None, vec![invalid(line, field, message)]),
    };
    // Read again from text, so that a scalar reads as it does the first time (`linger.ms: 5`
    // is the string "5" to a string field, where a parsed value would be a number).
    let read = |v: &serde_yaml_ng::Value| {
        let text = serde_yaml_ng::to_string(v).map_err(|e| (String::new(), e.to_string()))?;
        serde_path_to_error::deserialize::<_, RawConfig>(serde_yaml_ng::Deserializer::from_str(&text))
            .map_err(crate::yaml::problem)
    };
    let all = crate::yaml::read_all(value, (field, message), read);
    let problems = all.problems.into_iter().map(|(field, message)| invalid(None, field, message)).collect();
    (all.without_unknown, problems)
}

/// `r`'s value, or `fallback` with `r`'s problem kept: a config is checked through to the end.
fn kept<T>(problems: &mut Vec<ConfigError>, r: Result<T, ConfigError>, fallback: T) -> T {
    r.unwrap_or_else(|e| {
        problems.push(e);
        fallback
    })
}

/// The config from what was written: paths resolved, defaults filled in, every value checked
/// (each problem kept, with a default in its place, so that the next is found too).
fn build(raw: RawConfig, file: &Path, name: &str, problems: &mut Vec<ConfigError>) -> Config {
    let invalid = |field: &str, message: String| ConfigError::Invalid {
        file: name.to_string(),
        line: None,
        field: field.into(),
        message,
    };
    let base = file.parent().unwrap_or(Path::new("."));
    let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
    let duration = |field: &str, v: &Option<String>, default: Duration| match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s).map_err(|e| invalid(field, format!("`{s}` is not a duration: {e}"))),
    };
    let duration_or = |field: &str, v: &Option<String>, default: Duration, problems: &mut Vec<ConfigError>| {
        kept(problems, duration(field, v, default), default)
    };
    let server_limits = {
        let d = crate::http::ServerLimits::default();
        let h = &raw.http;
        let mut count = |field: &str, v: Option<usize>, default: usize| match v {
            Some(0) => kept(problems, Err(invalid(field, "must be at least 1".into())), default),
            v => v.unwrap_or(default),
        };
        let (max_headers, max_head_bytes, max_connections, max_concurrent_requests) = (
            count("http.max_headers", h.max_headers, d.max_headers),
            count("http.max_head_bytes", h.max_head_bytes, d.max_head_bytes),
            count("http.max_connections", h.max_connections, d.max_connections),
            count("http.max_concurrent_requests", h.max_concurrent_requests, d.max_concurrent_requests),
        );
        let mut timeout = |field: &str, v: &Option<String>, default: Duration| match duration(field, v, default) {
            Ok(t) if t.is_zero() => kept(problems, Err(invalid(field, "must be longer than 0s".into())), default),
            t => kept(problems, t, default),
        };
        crate::http::ServerLimits {
            header_read_timeout: timeout("http.header_read_timeout", &h.header_read_timeout, d.header_read_timeout),
            max_headers,
            max_head_bytes,
            body_read_timeout: timeout("http.body_read_timeout", &h.body_read_timeout, d.body_read_timeout),
            max_connections,
            max_concurrent_requests,
        }
    };
    let listen = kept(
        problems,
        raw.listen.parse().map_err(|e| invalid("listen", format!("`{}` is not HOST:PORT: {e}", raw.listen))),
        ([127, 0, 0, 1], 8080).into(),
    );
    let defaults = GuardSettings::default();
    let guards = GuardSettings {
        max_actions: match raw.guards.max_actions {
            Some(0) => kept(
                problems,
                Err(invalid("guards.max_actions", "must be at least 1 (use dry_run to stop all writes)".into())),
                defaults.max_actions,
            ),
            n => n.unwrap_or(defaults.max_actions),
        },
        window: duration_or("guards.window", &raw.guards.window, defaults.window, problems),
        default_cooldown: duration_or(
            "guards.default_cooldown",
            &raw.guards.default_cooldown,
            defaults.default_cooldown,
            problems,
        ),
        key_retention: duration_or("guards.key_retention", &raw.guards.key_retention, defaults.key_retention, problems),
    };
    let audit_defaults = AuditOptions::default();
    let audit = AuditOptions {
        segment_max_bytes: match raw.audit.segment_max_bytes {
            Some(n) if n < 4096 => kept(
                problems,
                Err(invalid("audit.segment_max_bytes", "must be at least 4096".into())),
                audit_defaults.segment_max_bytes,
            ),
            n => n.unwrap_or(audit_defaults.segment_max_bytes),
        },
        segment_max_age: duration_or(
            "audit.segment_max_age",
            &raw.audit.segment_max_age,
            audit_defaults.segment_max_age,
            problems,
        ),
        retention: Retention {
            max_age: kept(
                problems,
                raw.audit
                    .retention
                    .max_age
                    .as_ref()
                    .map(|s| humantime::parse_duration(s))
                    .transpose()
                    .map_err(|e| invalid("audit.retention.max_age", format!("not a duration: {e}"))),
                None,
            ),
            max_bytes: raw.audit.retention.max_bytes,
        },
        ..audit_defaults
    };
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
            let bearer =
                kept(problems, secret("http.auth.bearer_token", a.bearer_token_file, a.bearer_token_env), None);
            let basic = kept(problems, basic("http.auth.basic", a.basic), None);
            if bearer.is_none() && basic.is_none() {
                problems.push(invalid("http.auth", "configure bearer_token_file/_env or basic".into()));
            }
            AuthConfig { bearer, basic }
        }
    };
    let prometheus = raw.prometheus.map(|p| {
        if !(p.url.starts_with("http://") || p.url.starts_with("https://")) {
            problems.push(invalid("prometheus.url", format!("`{}` is not an http(s) URL", p.url)));
        }
        let bearer = kept(problems, secret("prometheus.bearer_token", p.bearer_token_file, p.bearer_token_env), None);
        let basic = kept(problems, basic("prometheus.basic", p.basic), None);
        if bearer.is_some() && basic.is_some() {
            problems.push(invalid("prometheus", "bearer token or basic auth, not both".into()));
        }
        PrometheusConfig {
            url: p.url,
            bearer_token: bearer,
            basic,
            ca_file: p.ca_file.map(|f| resolve(&f)),
            insecure_skip_verify: p.insecure_skip_verify,
            timeout: duration_or("prometheus.timeout", &p.timeout, Duration::from_secs(5), problems),
        }
    });
    let kafka = raw.kafka.map(|k| {
        let d = KafkaConfig::with_brokers(k.brokers);
        let mut properties = k.properties;
        for (key, file) in k.property_files {
            let field = format!("kafka.property_files.{key}");
            if properties.contains_key(&key) {
                problems.push(invalid(&field, format!("`{key}` is also in kafka.properties; give it once")));
                continue;
            }
            let path = resolve(&file);
            match std::fs::read_to_string(&path) {
                Ok(value) => {
                    properties.insert(key, value.trim_end_matches(['\n', '\r']).to_string());
                }
                Err(e) => problems.push(invalid(&field, format!("cannot read {}: {e}", path.display()))),
            }
        }
        KafkaConfig {
            group_id: k.group_id.unwrap_or(d.group_id),
            alerts_topic: k.alerts_topic.unwrap_or(d.alerts_topic),
            feedback_topic: k.feedback_topic.unwrap_or(d.feedback_topic),
            dead_letter_topic: k.dead_letter_topic,
            audit_topic: k.audit_topic,
            properties,
            brokers: d.brokers,
        }
    });
    let cluster = raw.cluster.and_then(|c| {
        if kafka.is_none() {
            problems.push(invalid("cluster", "needs `kafka:` (the audit log is replicated through it)".into()));
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
        kept(problems, c.resolve(resolve, env).map(Some).map_err(|e| invalid(&e.field, e.message)), None)
    });
    let target = match (raw.target.manifests, raw.target.kubernetes) {
        (Some(m), None) => TargetConfig::Manifests(resolve(&m.dir)),
        (None, Some(k)) => {
            let defaults = KubernetesOptions::default();
            let version = k.virtualservice_version.unwrap_or(defaults.virtualservice_version);
            if !matches!(version.as_str(), "v1" | "v1beta1" | "v1alpha3") {
                problems.push(invalid(
                    "target.kubernetes.virtualservice_version",
                    format!("`{version}`: v1, v1beta1 or v1alpha3"),
                ));
            }
            TargetConfig::Kubernetes(KubernetesOptions {
                kubeconfig: k.kubeconfig.map(|p| resolve(&p)),
                context: k.context,
                virtualservice_version: version,
                request_timeout: duration_or(
                    "target.kubernetes.request_timeout",
                    &k.request_timeout,
                    defaults.request_timeout,
                    problems,
                ),
                events: k.events.unwrap_or(defaults.events),
            })
        }
        _ => {
            problems.push(invalid("target", "exactly one of `manifests` or `kubernetes`".into()));
            TargetConfig::Manifests(resolve(Path::new(".")))
        }
    };
    Config {
        cluster,
        file: file.to_path_buf(),
        listen,
        data_dir: resolve(&raw.data_dir),
        rules: raw.rules.iter().map(|p| resolve(p)).collect(),
        target,
        dry_run: raw.dry_run,
        action_timeout: duration_or("action_timeout", &raw.action_timeout, Duration::from_secs(10), problems),
        shutdown_grace: duration_or("shutdown_grace", &raw.shutdown_grace, Duration::from_secs(20), problems),
        reload_interval: duration_or("reload_interval", &raw.reload_interval, Duration::from_secs(2), problems),
        max_body_bytes: raw.http.max_body_bytes.unwrap_or(1 << 20),
        ui_read_only: raw.ui.read_only,
        ui_url: kept(problems, raw.ui.url.as_deref().map(ui_url).transpose().map_err(|e| invalid("ui.url", e)), None),
        server_limits,
        auth,
        guards,
        audit,
        prometheus,
        kafka,
        snapshot_interval: duration_or(
            "audit.snapshot_interval",
            &raw.audit.snapshot_interval,
            Duration::from_secs(30),
            problems,
        ),
        snapshot_records: match raw.audit.snapshot_records {
            Some(0) => kept(
                problems,
                Err(invalid("audit.snapshot_records", "must be at least 1".into())),
                DEFAULT_SNAPSHOT_RECORDS,
            ),
            n => n.unwrap_or(DEFAULT_SNAPSHOT_RECORDS),
        },
        snapshot_bytes: match raw.audit.snapshot_bytes {
            Some(n) if n < 1 << 20 => kept(
                problems,
                Err(invalid("audit.snapshot_bytes", "must be at least 1048576 (1 MiB)".into())),
                DEFAULT_SNAPSHOT_BYTES,
            ),
            n => n.unwrap_or(DEFAULT_SNAPSHOT_BYTES),
        },
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
mod tests;
