//! Rules and config reload: on SIGHUP, and when the files change (checked every
//! `reload_interval`). A reload that does not validate is refused with every problem logged,
//! counted (`backstop_rules_last_reload_success` 0) and recorded; the rules in force stay.
//! The guards' state (idempotency keys, cooldowns, pauses, feedback arms) is the log's, not
//! the rules', so it survives any reload.
//!
//! What a reload can change: the rules (and the rule paths), `guards`, `action_timeout`,
//! `ui.url`, and `dry_run` — which a reload can turn on but never off (arming backstop takes a
//! restart, so a stray edit cannot). Everything else (listen, data_dir, target, kafka,
//! prometheus, http, audit and its snapshot bounds, ui.read_only) is logged as waiting for the
//! next restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::audit::{Entry, Kind};
use crate::config::Config;
use crate::pipeline::{Pipeline, Settings};
use crate::rules;
use crate::state::detail::{Control, ControlPart, Part};
use crate::telemetry::metrics::Event as MetricEvent;

/// What a reload did.
#[derive(Debug, Clone, PartialEq)]
pub enum Reloaded {
    Unchanged,
    Loaded { rules: usize, restart_needed: Vec<&'static str> },
    Refused { errors: Vec<String> },
}

/// A digest of the config file and every rule file (names and contents), to notice changes.
pub fn fingerprint(config_file: &Path, rule_paths: &[PathBuf]) -> String {
    let mut h = Sha256::new();
    let mut add = |p: &Path| {
        h.update(p.to_string_lossy().as_bytes());
        h.update(std::fs::read(p).unwrap_or_default());
    };
    add(config_file);
    for path in rule_paths {
        if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
                .unwrap_or_default();
            files.sort();
            files
                .iter()
                .filter(|f| matches!(f.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
                .for_each(|f| add(f));
        } else {
            add(path);
        }
    }
    crate::digest::hex(&h.finalize())
}

pub struct Reloader {
    /// The configuration the service started with (restart-only fields are compared with it).
    started: Config,
    current: Config,
    pipeline: Arc<Pipeline>,
    fingerprint: String,
}

impl Reloader {
    pub fn new(config: Config, pipeline: Arc<Pipeline>) -> Reloader {
        let fingerprint = fingerprint(&config.file, &config.rules);
        Reloader { started: config.clone(), current: config, pipeline, fingerprint }
    }

    /// Reload if the files changed (or `force`, for SIGHUP).
    pub async fn reload(&mut self, force: bool) -> Reloaded {
        // Reading and parsing files is blocking I/O: off the async workers.
        let (file, paths) = (self.current.file.clone(), self.current.rules.clone());
        let now = tokio::task::spawn_blocking(move || fingerprint(&file, &paths)).await.unwrap_or_default();
        if !force && now == self.fingerprint {
            return Reloaded::Unchanged;
        }
        self.fingerprint = now.clone();
        let (file, started) = (self.current.file.clone(), self.started.clone());
        let loaded = tokio::task::spawn_blocking(move || load(&file, &started))
            .await
            .unwrap_or_else(|e| Err(vec![format!("reload stopped: {e}")]));
        let outcome = match loaded {
            Ok((config, rules)) => {
                let count = rules.rules().len();
                let restart_needed = restart_only_changes(&self.started, &config);
                let settings = Settings {
                    dry_run: config.dry_run || self.started.dry_run,
                    action_timeout: config.action_timeout,
                    guards: config.guards.clone(),
                    ui_url: config.ui_url.clone(),
                };
                self.pipeline.reload(rules, settings);
                self.current = config;
                MetricEvent::RulesLoaded { rules: count }.emit();
                for field in &restart_needed {
                    warn!(field, "config changed; this takes effect at the next restart");
                }
                Reloaded::Loaded { rules: count, restart_needed }
            }
            Err(errors) => {
                for e in &errors {
                    error!(problem = %e, "reload refused");
                }
                MetricEvent::RulesRefused { errors: errors.len() }.emit();
                Reloaded::Refused { errors }
            }
        };
        let entry = match &outcome {
            Reloaded::Loaded { rules, restart_needed } => Entry::new(Kind::Control)
                .source("reload")
                .reason(format!("{rules} rules in force"))
                .detail(ControlPart { control: Control::Reload }.value())
                .detail(json!({ "rules": rules, "files_sha256": now, "restart_needed": restart_needed })),
            Reloaded::Refused { errors } => Entry::new(Kind::Control)
                .source("reload")
                .reason(format!("reload refused ({} problems); the rules in force stay", errors.len()))
                .detail(ControlPart { control: Control::ReloadRefused }.value())
                .detail(json!({ "errors": errors, "files_sha256": now })),
            Reloaded::Unchanged => return Reloaded::Unchanged,
        };
        if let Err(e) = self.pipeline.note(entry).await {
            warn!(error = %e, "could not record the reload");
        }
        outcome
    }

    /// Reload on SIGHUP and when the files change, until `token` is cancelled.
    pub async fn run(mut self, token: CancellationToken) {
        let every = self.current.reload_interval;
        #[cfg(unix)]
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let hup = async {
                match hangup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hup = std::future::pending::<Option<()>>();
            let poll =
                async { if every.is_zero() { std::future::pending().await } else { tokio::time::sleep(every).await } };
            let force = tokio::select! {
                _ = token.cancelled() => return,
                _ = hup => {
                    info!("SIGHUP: reloading");
                    true
                }
                _ = poll => false,
            };
            self.reload(force).await;
        }
    }
}

/// The config file and the rules it names, as a reload would put them in force, or every
/// problem found.
fn load(file: &Path, started: &Config) -> Result<(Config, rules::RuleSet), Vec<String>> {
    let mut config = Config::load(file).map_err(|e| e.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    // Where the service stores and listens cannot move under it.
    config.data_dir = started.data_dir.clone();
    let rules = rules::load(&config.rules).map_err(|e| e.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    if started.prometheus.is_none()
        && let Some(rule) = rules.rules().iter().find(|r| r.confirm.is_some() || r.verify.is_some())
    {
        return Err(vec![format!(
            "rule {} asks Prometheus, but the service started without `prometheus:` (restart to add it)",
            rule.name
        )]);
    }
    Ok((config, rules))
}

/// Fields that changed but only take effect at a restart.
fn restart_only_changes(started: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |field: &'static str, differs: bool| {
        if differs {
            changed.push(field);
        }
    };
    check("listen", started.listen != new.listen);
    check("target", format!("{:?}", started.target) != format!("{:?}", new.target));
    check("kafka", started.kafka != new.kafka);
    check("prometheus", format!("{:?}", started.prometheus) != format!("{:?}", new.prometheus));
    check("http.auth", started.auth != new.auth);
    check("http.max_body_bytes", started.max_body_bytes != new.max_body_bytes);
    check("audit", format!("{:?}", started.audit) != format!("{:?}", new.audit));
    check(
        "audit.snapshot_*",
        (started.snapshot_interval, started.snapshot_records, started.snapshot_bytes)
            != (new.snapshot_interval, new.snapshot_records, new.snapshot_bytes),
    );
    check("ui.read_only", started.ui_read_only != new.ui_read_only);
    check("shutdown_grace", started.shutdown_grace != new.shutdown_grace);
    check("dry_run (off)", started.dry_run && !new.dry_run);
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(Path::new("backstop.yaml"), text).unwrap()
    }

    #[test]
    fn what_takes_a_restart_is_named_and_what_a_reload_applies_is_not() {
        let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/backstop.yaml")).unwrap();
        let started = config(&shipped);
        assert_eq!(restart_only_changes(&started, &config(&shipped)), Vec::<&str>::new());
        let edited = shipped
            .replace("read_only: false", "read_only: true")
            .replace("snapshot_bytes: 67108864", "snapshot_bytes: 33554432")
            .replace("max_actions: 5", "max_actions: 7");
        assert_ne!(edited, shipped);
        // The page's controls and the snapshot's bounds are read at start only; the guards are not.
        assert_eq!(restart_only_changes(&started, &config(&edited)), ["audit.snapshot_*", "ui.read_only"]);
    }
}
