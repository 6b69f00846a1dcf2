use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use backstop::actions::Decided;
use backstop::audit::{self, Record};
use backstop::config::{Config, TargetConfig};
use backstop::http::AuditParams;
use backstop::prometheus::PrometheusConfig;
use backstop::prometheus::{FixedValue, Prometheus, PrometheusClient};
use backstop::rules::{self, Decision};
use backstop::sources::alertmanager;
use backstop::telemetry::trace::{TraceGuard, Traces};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

/// backstop: puts canary and blue-green traffic back when alerts fire, and writes down why.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, default_value = "backstop.yaml", env = "BACKSTOP_CONFIG")]
    config: PathBuf,
    /// Data directory (audit log), overriding the config's `data_dir`.
    #[arg(long, global = true, env = "BACKSTOP_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Kubeconfig for the kubernetes target (default: in-cluster, else $KUBECONFIG or ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context for the kubernetes target.
    #[arg(long, global = true)]
    context: Option<String>,
    /// Log format: text or json (levels via RUST_LOG).
    #[arg(long, global = true, default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve {
        /// Listen address, overriding the config's `listen`.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Decide and record, but write nothing to the target.
        #[arg(long)]
        dry_run: bool,
        /// Consume alerts and feedback from Kafka (topics backstop.alerts and backstop.feedback
        /// unless the config's `kafka:` names others).
        #[arg(long)]
        kafka_brokers: Option<String>,
        /// Also publish every audit record to this Kafka topic (needs --kafka-brokers or the
        /// config's `kafka:`).
        #[arg(long, value_name = "NAME")]
        kafka_audit_topic: Option<String>,
        /// Where objects live, overriding the config's target: `kubernetes` or `manifests:DIR`.
        #[arg(long, value_name = "KIND")]
        target: Option<String>,
    },
    /// Check the config and rule files; exits non-zero listing every problem.
    Validate {
        /// Rule files or directories (default: the config's rules).
        paths: Vec<PathBuf>,
    },
    /// Show which rules match each alert of a webhook payload and what would be done; touches nothing.
    Simulate {
        payload: PathBuf,
        /// Run confirmations against this Prometheus (default: the config's `prometheus.url`).
        #[arg(long, conflicts_with = "value")]
        prometheus: Option<String>,
        /// Run confirmations with this value instead of asking Prometheus.
        #[arg(long)]
        value: Option<f64>,
        /// Where objects live, overriding the config's target: `kubernetes` or `manifests:DIR`.
        #[arg(long, value_name = "KIND")]
        target: Option<String>,
    },
    /// Fire a rule's action by hand (the kill switch), through the running server.
    Act {
        /// The rule whose action to fire.
        rule: String,
        /// The object to act on, `namespace/name`.
        #[arg(long, value_name = "NAMESPACE/NAME")]
        target: String,
        #[command(flatten)]
        who: Who,
    },
    /// Put back the state recorded before an action, through the running server.
    Undo {
        action_id: String,
        #[command(flatten)]
        who: Who,
    },
    /// Stop automatic actions (one target, or all) while people work.
    Pause {
        /// The object to pause, `namespace/name` (without it: everything).
        #[arg(long, value_name = "NAMESPACE/NAME")]
        target: Option<String>,
        #[command(flatten)]
        who: Who,
    },
    /// Resume automatic actions.
    Resume {
        /// The object to resume, `namespace/name` (without it: the global pause).
        #[arg(long, value_name = "NAMESPACE/NAME")]
        target: Option<String>,
        #[command(flatten)]
        who: Who,
    },
    /// Take the next step of a target's promotion now, on your word (it also resumes a
    /// promotion held, or stopped by a rollback).
    Promote {
        /// The VirtualService, `namespace/name`.
        target: String,
        /// The promotion rule, when several act on the target.
        #[arg(long)]
        rule: Option<String>,
        #[command(flatten)]
        who: Who,
    },
    /// Hold a target's promotion where it is (`--release` lets it go on when its evidence holds).
    HoldPromotion {
        /// The VirtualService, `namespace/name`.
        target: String,
        #[arg(long)]
        release: bool,
        #[command(flatten)]
        who: Who,
    },
    /// Read and verify the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Args)]
struct Who {
    /// Why: goes into the audit log.
    #[arg(long)]
    reason: String,
    /// Who: defaults to $USER.
    #[arg(long, env = "USER", default_value = "unknown")]
    actor: String,
    /// The running server (default: the config's listen address).
    #[arg(long, env = "BACKSTOP_SERVER")]
    server: Option<String>,
    /// Bearer token for the server, if it requires one.
    #[arg(long, env = "BACKSTOP_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// The last records.
    Tail {
        #[arg(short, default_value_t = 20)]
        n: usize,
        #[arg(long, default_value = "table")]
        format: String,
        /// Keep printing records as they are recorded, from the running server
        /// (`GET /v1/audit/stream`), until interrupted.
        #[arg(short, long)]
        follow: bool,
        /// The running server, with --follow (default: the config's listen address).
        #[arg(long, env = "BACKSTOP_SERVER")]
        server: Option<String>,
        /// Bearer token for the server, if it requires one.
        #[arg(long, env = "BACKSTOP_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Records by time, rule, target, event, action and outcome.
    Query {
        /// RFC 3339 time or a duration back from now (1h).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        rule: Option<String>,
        /// The object, `namespace/name`.
        #[arg(long, value_name = "NAMESPACE/NAME")]
        target: Option<String>,
        #[arg(long)]
        event: Option<String>,
        #[arg(long)]
        action: Option<String>,
        /// Record kinds, comma-separated: received,rejected,matched,decided,held,applied,noop,refused,failed,dry_run,control,verified,unverified,promoted
        #[arg(long)]
        outcome: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Write the records of a period, unchanged, as JSON Lines to stdout (for archiving); the
    /// output verifies on its own with `audit verify --file`.
    Export {
        /// RFC 3339 time or a duration back from now (24h).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
    },
    /// Check the hash chain; says which record breaks it.
    Verify {
        /// Verify an exported JSON Lines file instead of the log directory.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

/// mimalloc rather than glibc's malloc: under intake load glibc's malloc and free took a fifth
/// of the service's CPU (many small, short-lived allocations across worker threads); with
/// mimalloc a 50-alert payload costs about 0.7 ms of CPU instead of 1.1 (`cargo bench --bench
/// load`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc gives freed memory back to the OS a second after it is freed (v3's default). Under
/// load that kept the peak at 90-115 MB (50-alert payloads from 64 senders); after 100 ms it
/// is about 77 MB, at about a fifth more CPU per payload than with the default (10 ms: 63 MB
/// and a third more). `MIMALLOC_PURGE_DELAY` in the environment still decides if set.
fn tune_allocator() {
    // `mi_option_purge_delay` in mimalloc v3's mimalloc.h; option numbers are stable there
    // (retired ones keep theirs, as `deprecated_*`).
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: reads and sets a process-wide tuning option of the allocator; no pointers.
        unsafe {
            // Debug builds (every test run) check that number 15 is the purge delay: its
            // default is 1,000 ms, which no neighbouring option has.
            debug_assert_eq!(libmimalloc_sys::mi_option_get(PURGE_DELAY), 1000, "mimalloc's option numbers moved");
            libmimalloc_sys::mi_option_set(PURGE_DELAY, 100);
        }
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let traces = init_logging(&cli.log_format);
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Export the spans still queued (after SIGTERM too) before the process ends.
    traces.shutdown();
    code
}

/// Logs to stderr (text, or JSON with `--log-format json`; levels via RUST_LOG), and spans
/// over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (backstop's own spans at info and above,
/// whatever RUST_LOG says). The guard flushes the spans.
fn init_logging(format: &str) -> TraceGuard {
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colours only for a person at a terminal, not in files and collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let traces = Traces::from_env();
    let exported = traces.as_ref().ok().and_then(Option::as_ref);
    backstop::telemetry::trace::subscriber(filter, format == "json", ansi, std::io::stderr, exported).init();
    match traces {
        Ok(Some(t)) => {
            tracing::info!(endpoint = %t.endpoint, protocol = t.protocol, "exporting traces over OTLP");
            t.guard()
        }
        Ok(None) => TraceGuard::default(),
        Err(e) => {
            tracing::warn!("traces are not exported: {e}");
            TraceGuard::default()
        }
    }
}

/// Where the configuration comes from: `--config`, with `--data-dir` applied.
struct ConfigSource {
    file: PathBuf,
    data_dir: Option<PathBuf>,
    target: Option<String>,
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
}

impl ConfigSource {
    fn load(&self) -> Result<Config> {
        let mut config = Config::load(&self.file).map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(d) = &self.data_dir {
            config.data_dir = d.clone();
        }
        if let Some(t) = &self.target {
            config.target = TargetConfig::parse_flag(t, &config.target).map_err(|e| anyhow::anyhow!("--target {e}"))?;
        }
        if let TargetConfig::Kubernetes(k) = &mut config.target {
            if self.kubeconfig.is_some() {
                k.kubeconfig = self.kubeconfig.clone();
            }
            if self.context.is_some() {
                k.context = self.context.clone();
            }
        } else if self.kubeconfig.is_some() || self.context.is_some() {
            bail!("--kubeconfig and --context apply to the kubernetes target (add --target kubernetes)");
        }
        Ok(config)
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut cfg = ConfigSource {
        file: cli.config.clone(),
        data_dir: cli.data_dir.clone(),
        target: None,
        kubeconfig: cli.kubeconfig.clone(),
        context: cli.context.clone(),
    };
    match cli.command {
        Command::Serve { listen, dry_run, kafka_brokers, kafka_audit_topic, target } => {
            cfg.target = target;
            let mut config = cfg.load()?;
            if let Some(l) = listen {
                config.listen = l;
            }
            config.dry_run |= dry_run;
            if let Some(b) = kafka_brokers {
                config.kafka = Some(match config.kafka.take() {
                    Some(k) => backstop::kafka::KafkaConfig { brokers: b, ..k },
                    None => backstop::kafka::KafkaConfig::with_brokers(b),
                });
            }
            if let Some(topic) = kafka_audit_topic {
                match config.kafka.as_mut() {
                    Some(k) => k.audit_topic = Some(topic),
                    None => bail!("--kafka-audit-topic needs --kafka-brokers or `kafka:` in the config"),
                }
            }
            runtime.block_on(async {
                // The handlers are installed before anything starts: a SIGTERM that came after
                // "listening" but before the shutdown future was first polled (while the
                // background tasks started) killed the process outright, without the graceful
                // stop.
                let shutdown = shutdown_signal()?;
                backstop::server::serve(config, shutdown).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { paths } => validate(&cli.config, paths),
        Command::Simulate { payload, prometheus, value, target } => {
            cfg.target = target;
            runtime.block_on(simulate(&cfg, &payload, prometheus, value))
        }
        Command::Act { rule, target, who } => {
            let body = json!({ "rule": rule, "target": target, "reason": who.reason, "actor": who.actor });
            runtime.block_on(call(&cfg, &who, "/v1/actions", body))
        }
        Command::Undo { action_id, who } => {
            let body = json!({ "reason": who.reason, "actor": who.actor });
            runtime.block_on(call(&cfg, &who, &format!("/v1/actions/{action_id}/undo"), body))
        }
        Command::Pause { target, who } => {
            let body = json!({ "target": target, "reason": who.reason, "actor": who.actor });
            runtime.block_on(call(&cfg, &who, "/v1/pause", body))
        }
        Command::Resume { target, who } => {
            let body = json!({ "target": target, "reason": who.reason, "actor": who.actor });
            runtime.block_on(call(&cfg, &who, "/v1/resume", body))
        }
        Command::Promote { target, rule, who } => {
            let body = json!({ "target": target, "rule": rule, "reason": who.reason, "actor": who.actor });
            runtime.block_on(call(&cfg, &who, "/v1/promote", body))
        }
        Command::HoldPromotion { target, release, who } => {
            let body = json!({ "target": target, "reason": who.reason, "actor": who.actor });
            let path = if release { "/v1/promotions/release" } else { "/v1/promotions/hold" };
            runtime.block_on(call(&cfg, &who, path, body))
        }
        Command::Audit(cmd) => audit_command(&cfg, cmd),
    }
}

/// SIGINT or SIGTERM: the handlers are installed now, the future completes on the first signal.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {},
                _ = terminate.recv() => {},
            }
            tracing::info!("shutdown requested");
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested");
    })
}

/// "1 problem", "3 problems".
fn problems(n: usize) -> String {
    format!("{n} problem{}", if n == 1 { "" } else { "s" })
}

fn validate(config_path: &Path, paths: Vec<PathBuf>) -> Result<ExitCode> {
    // Every problem of the config and of its rules, counted together.
    let mut found = 0;
    let rule_paths = if paths.is_empty() {
        match Config::load(config_path) {
            Ok(c) => {
                println!("ok: {}", config_path.display());
                Some(c.rules)
            }
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("{e}");
                }
                found += errors.0.len();
                // The rules the config names are still checked, when they can be told.
                backstop::config::rule_paths(config_path)
            }
        }
    } else {
        Some(paths)
    };
    if let Some(rule_paths) = rule_paths {
        match rules::load(&rule_paths) {
            Ok(set) => {
                for r in set.rules() {
                    let on = match &r.feedback {
                        Some(f) => format!(
                            "on feedback {} of {} {}{}: ",
                            f.test_name(),
                            f.service,
                            f.canary,
                            f.baseline.as_deref().map(|b| format!(" against {b}")).unwrap_or_default()
                        ),
                        None => String::new(),
                    };
                    println!("ok: rule {} ({}): {on}{}", r.name, r.file.display(), r.action_summary());
                }
                let n = set.rules().len();
                println!("{n} rule{} valid", if n == 1 { "" } else { "s" });
            }
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("{e}");
                }
                found += errors.0.len();
            }
        }
    }
    if found == 0 {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("{}", problems(found));
    Ok(ExitCode::FAILURE)
}

async fn simulate(cfg: &ConfigSource, payload: &Path, url: Option<String>, value: Option<f64>) -> Result<ExitCode> {
    let config = cfg.load()?;
    let prometheus: Option<Box<dyn Prometheus>> = match (value, url, &config.prometheus) {
        (Some(v), _, _) => Some(Box::new(FixedValue(Some(v)))),
        (None, Some(url), configured) => {
            let base = configured.clone().unwrap_or_else(|| PrometheusConfig {
                url: url.clone(),
                bearer_token: None,
                basic: None,
                ca_file: None,
                insecure_skip_verify: false,
                timeout: std::time::Duration::from_secs(5),
            });
            Some(Box::new(PrometheusClient::new(&PrometheusConfig { url, ..base }).map_err(|e| anyhow::anyhow!(e))?))
        }
        (None, None, Some(c)) => Some(Box::new(PrometheusClient::new(c).map_err(|e| anyhow::anyhow!(e))?)),
        (None, None, None) => None,
    };
    let rules = rules::load(&config.rules).map_err(|e| anyhow::anyhow!("invalid rules:\n{e}"))?;
    let bytes = std::fs::read(payload).with_context(|| format!("reading {}", payload.display()))?;
    let webhook = alertmanager::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", payload.display()))?;
    let target = backstop::server::target(&config.target).await?;
    let now = chrono::Utc::now();
    for alert in webhook.events() {
        println!("alert {} {} ({})", alert.name, alert.status, alert.id);
        let decisions = rules.decide(&alert, now);
        if decisions.is_empty() {
            println!("  no rule matches");
        }
        for d in decisions {
            match d {
                Decision::Hold { rule, reason } => println!("  rule {rule}: would hold: {reason}"),
                Decision::Refuse { rule, reason } => println!("  rule {rule}: would refuse: {reason}"),
                Decision::Act { rule, target: obj, plan, dry_run, .. } => {
                    let summary = rules.get(&rule).map(|r| r.action_summary()).unwrap_or_default();
                    let dry = if dry_run || config.dry_run { " (dry run)" } else { "" };
                    println!("  rule {rule}: {summary} on {obj}{dry}");
                    if let Some(confirm) = rules.get(&rule).and_then(|r| r.confirm.as_ref()) {
                        let line = match (confirm.query.render(&alert.labels), &prometheus) {
                            (Err(e), _) => format!("would fail: confirmation query: {e}"),
                            (Ok(q), None) => format!("confirmation not run (no --prometheus or --value): {q}"),
                            (Ok(q), Some(p)) => match confirm.check(p.as_ref(), &q).await {
                                (backstop::prometheus::confirm::ConfirmVerdict::Go, e) => {
                                    format!("confirmed by {}: {q} = {:?} {}", p.describe(), e.value, e.condition)
                                }
                                (backstop::prometheus::confirm::ConfirmVerdict::Hold(r), _) => {
                                    format!("would hold: {r}")
                                }
                                (backstop::prometheus::confirm::ConfirmVerdict::Fail(r), _) => {
                                    format!("would fail: {r}")
                                }
                            },
                        };
                        println!("    {line}");
                    }
                    let what = match target.get(&obj).await {
                        Err(e) => format!("cannot read the target: {e}"),
                        Ok(f) => match plan.decide(&f.object) {
                            Err(e) => format!("would refuse: {e}"),
                            Ok(Decided::Unchanged { .. }) => "no-op: already in the desired state".into(),
                            Ok(Decided::Changed { before, after, .. }) => format!("would change {before} -> {after}"),
                        },
                    };
                    println!("    {what}");
                }
            }
        }
    }
    println!("(guards such as cooldowns, caps and pauses are not evaluated by simulate)");
    Ok(ExitCode::SUCCESS)
}

async fn call(cfg: &ConfigSource, who: &Who, path: &str, body: Value) -> Result<ExitCode> {
    let base = match &who.server {
        Some(s) => s.trim_end_matches('/').to_string(),
        None => format!("http://{}", cfg.load()?.listen),
    };
    let mut req = reqwest::Client::new().post(format!("{base}{path}")).json(&body);
    if let Some(t) = &who.token {
        req = req.bearer_auth(t);
    }
    let resp =
        req.send().await.with_context(|| format!("cannot reach backstop at {base} (is `backstop serve` running?)"))?;
    let status = resp.status();
    let text = resp.text().await?;
    let pretty = serde_json::from_str::<Value>(&text)
        .map(|v| serde_json::to_string_pretty(&v).unwrap_or(text.clone()))
        .unwrap_or(text);
    println!("{pretty}");
    if !status.is_success() {
        bail!("server answered {status}");
    }
    Ok(ExitCode::SUCCESS)
}

fn audit_command(cfg: &ConfigSource, cmd: AuditCommand) -> Result<ExitCode> {
    let dir = || -> Result<PathBuf> { Ok(cfg.load()?.audit_dir()) };
    match cmd {
        AuditCommand::Tail { n, format, follow: false, .. } => print_records(&audit::tail(&dir()?, n)?, &format),
        AuditCommand::Tail { n, format, follow: true, server, token } => {
            let base = match server {
                Some(s) => s.trim_end_matches('/').to_string(),
                None => format!("http://{}", cfg.load()?.listen),
            };
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(follow(&base, token.as_deref(), n, &format))
        }
        AuditCommand::Query { since, until, rule, target, event, action, outcome, limit, format } => {
            let params = AuditParams { since, until, rule, target, event, action, outcome, limit };
            let filter = params.to_filter().map_err(|e| anyhow::anyhow!(e))?;
            print_records(&audit::query(&dir()?, &filter)?, &format)
        }
        AuditCommand::Export { since, until } => {
            let filter =
                AuditParams { since, until, ..Default::default() }.to_filter().map_err(|e| anyhow::anyhow!(e))?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let n = audit::export(&dir()?, filter.since, filter.until, &mut out)?;
            std::io::Write::flush(&mut out)?;
            eprintln!("exported {n} records");
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify { file } => {
            let report = match file {
                Some(f) => {
                    let reader = std::io::BufReader::new(
                        std::fs::File::open(&f).with_context(|| format!("opening {}", f.display()))?,
                    );
                    audit::verify_reader(reader, &f.display().to_string())
                }
                None => audit::verify(&dir()?),
            };
            match report {
                Ok(r) => {
                    let from = match r.anchored_by {
                        Some(c) => format!(
                            " (older records removed by retention; verified from seq {}, anchored by checkpoint seq {c})",
                            r.first_seq
                        ),
                        None => String::new(),
                    };
                    println!(
                        "ok: {} records in {} segment{}, seq {}..{}, chain intact{from}; last hash {}",
                        r.records,
                        r.segments,
                        if r.segments == 1 { "" } else { "s" },
                        r.first_seq,
                        r.last_seq,
                        r.last_hash
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("audit log BROKEN: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

/// The last column of the table: the reason, or for received alerts their names and statuses.
fn describe(r: &Record, alerts: &[backstop::event::Alert]) -> String {
    if let Some(reason) = &r.entry.reason {
        return reason.clone();
    }
    match alerts {
        [] => String::new(),
        [a] => format!("{} {}", a.name, a.status),
        all => {
            let first: Vec<String> = all.iter().take(3).map(|a| format!("{} {}", a.name, a.status)).collect();
            let more = all.len().saturating_sub(3);
            let more = if more > 0 { format!(", and {more} more") } else { String::new() };
            format!("{} alerts: {}{more}", all.len(), first.join(", "))
        }
    }
}

fn print_records(records: &[Record], format: &str) -> Result<ExitCode> {
    print_header(format)?;
    for r in records {
        print_record(r, format)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_header(format: &str) -> Result<()> {
    match format {
        "json" => {}
        "table" => println!(
            "{:>6}  {:<24}  {:<9}  {:<24}  {:<24}  {:<36}  REASON",
            "SEQ", "TIME", "KIND", "RULE", "TARGET", "EVENT / ACTION"
        ),
        other => bail!("unknown format `{other}`: table or json"),
    }
    Ok(())
}

fn print_record(r: &Record, format: &str) -> Result<()> {
    if format == "json" {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    let e = &r.entry;
    // A delivery's received record: its alerts, read once for the id column and the last one.
    let alerts = match e.kind {
        audit::Kind::Received => {
            backstop::event::alerts_received(e.detail.as_ref(), e.source.as_deref()).unwrap_or_default()
        }
        _ => Vec::new(),
    };
    let id = match e.action_id.as_deref().or(e.event_id.as_deref()) {
        Some(id) => id.to_string(),
        None => backstop::event::alerts_label(alerts.iter().map(|a| a.id.as_str())).unwrap_or_else(|| "-".into()),
    };
    println!(
        "{:>6}  {:<24}  {:<9}  {:<24}  {:<24}  {:<36}  {}",
        r.seq,
        backstop::when::shown(&r.time),
        e.kind.to_string(),
        e.rule.as_deref().unwrap_or("-"),
        e.target.as_deref().unwrap_or("-"),
        id,
        describe(r, &alerts)
    );
    Ok(())
}

/// `audit tail --follow`: the last `n` records from the server, then each one as it is recorded
/// (server-sent events). Reconnects after the last record printed when the stream breaks.
async fn follow(base: &str, token: Option<&str>, n: usize, format: &str) -> Result<ExitCode> {
    use std::io::Write;
    let client = reqwest::Client::new();
    let get = |url: String| match token {
        Some(t) => client.get(url).bearer_auth(t),
        None => client.get(url),
    };
    let reach = || format!("cannot reach backstop at {base} (is `backstop serve` running?)");
    let resp = get(format!("{base}/v1/audit?limit={n}")).send().await.with_context(reach)?;
    if !resp.status().is_success() {
        bail!("server answered {}: {}", resp.status(), resp.text().await.unwrap_or_default());
    }
    let last: Value = resp.json().await?;
    let records: Vec<Record> = serde_json::from_value(last["records"].clone())?;
    print_header(format)?;
    for r in &records {
        print_record(r, format)?;
    }
    let mut after = records.last().map(|r| r.seq);
    loop {
        let url = match after {
            Some(seq) => format!("{base}/v1/audit/stream?after={seq}"),
            None => format!("{base}/v1/audit/stream"),
        };
        let mut resp = match get(url).send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => bail!("server answered {}: {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => {
                eprintln!("{}: {e}; retrying", reach());
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut text = String::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) else { continue };
                let r: Record = serde_json::from_str(data.trim_start())?;
                after = Some(r.seq);
                print_record(&r, format)?;
                std::io::stdout().flush()?;
            }
        }
        // The server went away (a restart): pick up where the last record printed left off.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// `--target` is the object (`namespace/name`) for the commands that act through the server,
    /// and where objects live (`kubernetes`) only for serve and simulate: it was once also a
    /// global option, and `backstop --target kubernetes pause` paused an object named
    /// "kubernetes".
    #[test]
    fn target_names_the_object_or_for_serve_and_simulate_where_objects_live() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["backstop"][..], args].concat());
        match parse(&["pause", "--target", "ns/vs", "--reason", "r"]).unwrap().command {
            Command::Pause { target, .. } => assert_eq!(target.as_deref(), Some("ns/vs")),
            _ => panic!("pause"),
        }
        match parse(&["serve", "--target", "kubernetes"]).unwrap().command {
            Command::Serve { target, .. } => assert_eq!(target.as_deref(), Some("kubernetes")),
            _ => panic!("serve"),
        }
        match parse(&["simulate", "p.json", "--target", "manifests:deploy"]).unwrap().command {
            Command::Simulate { target, .. } => assert_eq!(target.as_deref(), Some("manifests:deploy")),
            _ => panic!("simulate"),
        }
        assert!(parse(&["--target", "kubernetes", "pause", "--reason", "r"]).is_err(), "not a global option");
    }
}
