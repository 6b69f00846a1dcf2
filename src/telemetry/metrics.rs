//! backstop's own metrics, served at `GET /metrics` in the Prometheus text format.
//!
//! One registry for the process ([`metrics`]). What is counted is said by typed events
//! ([`Event`]): `emit()` counts and, where a person should see it, logs, so a log line and its
//! counter never disagree.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `backstop_events_received_total` | counter | `source` (alertmanager, kafka, http), `outcome` (accepted, rejected, duplicate) |
//! | `backstop_rule_matches_total` | counter | `rule` |
//! | `backstop_decisions_total` | counter | `rule`, `outcome` (applied, noop, held, refused, failed, dry_run) |
//! | `backstop_action_duration_seconds` | histogram | `target` (manifests, kubernetes) |
//! | `backstop_audit_append_duration_seconds` | histogram | |
//! | `backstop_audit_fsync_duration_seconds` | histogram | |
//! | `backstop_kafka_consumer_lag` | gauge | `topic`, `partition` |
//! | `backstop_verifications_total` | counter | `rule`, `outcome` (verified, unverified) |
//! | `backstop_flagger_calls_total` | counter | `result` (rollback, continue) |
//! | `backstop_promotion_steps_total` | counter | `rule` (a promotion's steps applied or found done) |
//! | `backstop_promotions_total` | counter | `rule` (promotions that reached their `max`) |
//! | `backstop_audit_chain_ok` | gauge | 1 when the last verification of the whole audit log (at start, then every 15 minutes) found the chain intact, 0 when broken |
//! | `backstop_canary_weight` | gauge | `target`, `canary`: the weight a promotion step left, 0 after a rollback stopped it |
//! | `backstop_rules_loaded` | gauge | |
//! | `backstop_rules_last_reload_success` | gauge | 1 or 0 |
//! | `backstop_rules_last_reload_timestamp_seconds` | gauge | |
//! | `backstop_build_info` | gauge (1) | `version` |
//! | `backstop_ready` | gauge | 1 or 0 |
//! | `backstop_leader` | gauge | 1 or 0 (cluster mode: this replica leads and may act) |
//! | `backstop_takeovers_total` | counter | |
//! | `backstop_replication_lag_messages` | gauge | messages (batches of records) of the replicated log not yet applied |
//! | `backstop_replication_lag_records` | gauge | records not yet applied (counted to the topic's newest message) |
//! | `backstop_replication_lag_seconds` | gauge | how old the last applied record is while records wait; 0 when caught up |

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing::{info, warn};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceOutcome {
    pub source: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleOutcome {
    pub rule: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetCanary {
    pub target: String,
    pub canary: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Partition {
    pub topic: String,
    pub partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Version {
    pub version: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~13 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

pub struct Metrics {
    registry: Registry,
    pub events_received: Family<SourceOutcome, Counter>,
    pub rule_matches: Family<RuleLabel, Counter>,
    pub decisions: Family<RuleOutcome, Counter>,
    pub action_duration: Family<TargetLabel, Histogram>,
    pub audit_append: Histogram,
    pub audit_fsync: Histogram,
    pub kafka_lag: Family<Partition, Gauge>,
    pub verifications: Family<RuleOutcome, Counter>,
    pub flagger_calls: Family<ResultLabel, Counter>,
    pub promotion_steps: Family<RuleLabel, Counter>,
    pub promotions: Family<RuleLabel, Counter>,
    pub canary_weight: Family<TargetCanary, Gauge>,
    pub chain_ok: Gauge,
    pub rules_loaded: Gauge,
    pub reload_success: Gauge,
    pub reload_timestamp: Gauge<f64, AtomicU64>,
    pub ready: Gauge,
    pub leader: Gauge,
    pub takeovers: Counter,
    pub replication_lag: Gauge,
    pub replication_lag_records: Gauge,
    pub replication_lag_seconds: Gauge<f64, AtomicU64>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("backstop");
        let m = Metrics {
            registry: Registry::default(),
            events_received: Family::default(),
            rule_matches: Family::default(),
            decisions: Family::default(),
            action_duration: Family::new_with_constructor(latency_histogram),
            audit_append: latency_histogram(),
            audit_fsync: latency_histogram(),
            kafka_lag: Family::default(),
            verifications: Family::default(),
            flagger_calls: Family::default(),
            promotion_steps: Family::default(),
            promotions: Family::default(),
            canary_weight: Family::default(),
            chain_ok: Gauge::default(),
            rules_loaded: Gauge::default(),
            reload_success: Gauge::default(),
            reload_timestamp: Gauge::default(),
            ready: Gauge::default(),
            leader: Gauge::default(),
            takeovers: Counter::default(),
            replication_lag: Gauge::default(),
            replication_lag_records: Gauge::default(),
            replication_lag_seconds: Gauge::default(),
        };
        registry.register("events_received", "Events received, by source and outcome", m.events_received.clone());
        registry.register("rule_matches", "Rules that matched an event", m.rule_matches.clone());
        registry.register("decisions", "Decisions recorded, by rule and outcome", m.decisions.clone());
        registry.register(
            "action_duration_seconds",
            "Time to read, decide and write one action on its target",
            m.action_duration.clone(),
        );
        registry.register(
            "audit_append_duration_seconds",
            "Time to write one batch of audit records, fsync included",
            m.audit_append.clone(),
        );
        registry.register("audit_fsync_duration_seconds", "Time of one fsync of the audit log", m.audit_fsync.clone());
        registry.register(
            "kafka_consumer_lag",
            "Messages behind the partition's end, per topic and partition (librdkafka statistics)",
            m.kafka_lag.clone(),
        );
        registry.register(
            "verifications",
            "Rollbacks checked against the traffic, by rule and outcome (verified, unverified)",
            m.verifications.clone(),
        );
        registry.register(
            "flagger_calls",
            "Calls of Flagger's rollback webhook, by answer (rollback, continue)",
            m.flagger_calls.clone(),
        );
        registry.register(
            "promotion_steps",
            "Steps of promotions taken (applied, or found done), by rule",
            m.promotion_steps.clone(),
        );
        registry.register("promotions", "Promotions that reached their last step, by rule", m.promotions.clone());
        registry.register(
            "canary_weight",
            "A promoted canary's weight after its last step (0 once a rollback stopped its promotion)",
            m.canary_weight.clone(),
        );
        registry.register(
            "audit_chain_ok",
            "1 when the last verification of the whole audit log found its chain intact, 0 when broken",
            m.chain_ok.clone(),
        );
        registry.register("rules_loaded", "Rules in force", m.rules_loaded.clone());
        registry.register(
            "rules_last_reload_success",
            "1 if the last load of the rules succeeded, 0 if it was refused",
            m.reload_success.clone(),
        );
        registry.register(
            "rules_last_reload_timestamp_seconds",
            "When the rules were last loaded or refused (Unix time)",
            m.reload_timestamp.clone(),
        );
        registry.register("ready", "1 when /readyz answers ready", m.ready.clone());
        registry.register("leader", "1 while this cluster replica leads and may act", m.leader.clone());
        registry.register("takeovers", "Times this replica took over as the cluster's leader", m.takeovers.clone());
        registry.register(
            "replication_lag_messages",
            "Messages (group-commit batches of records) of the replicated audit log this replica has yet to apply",
            m.replication_lag.clone(),
        );
        registry.register(
            "replication_lag_records",
            "Records of the replicated audit log this replica has yet to apply (to the topic's newest message)",
            m.replication_lag_records.clone(),
        );
        registry.register(
            "replication_lag_seconds",
            "While records wait: how long ago the last record this replica applied was committed (0 when caught up)",
            m.replication_lag_seconds.clone(),
        );
        let build: Family<Version, Gauge> = Family::default();
        build.get_or_create(&Version { version: env!("CARGO_PKG_VERSION").into() }).set(1);
        registry.register("build_info", "backstop's version", build);
        Metrics { registry, ..m }
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// The text exposition of every metric.
pub fn render() -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &metrics().registry) {
        warn!(error = %e, "encoding metrics");
    }
    out
}

/// Something worth counting (and sometimes logging): see the module documentation.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// Events taken in by a source (`outcome`: accepted, rejected, duplicate).
    Received {
        source: &'a str,
        outcome: &'a str,
        count: u64,
    },
    RuleMatched {
        rule: &'a str,
    },
    /// A decision's outcome as recorded (applied, noop, held, refused, failed, dry_run).
    Decided {
        rule: &'a str,
        outcome: &'a str,
    },
    ActionFinished {
        target: &'a str,
        took: Duration,
    },
    AuditAppended {
        took: Duration,
    },
    AuditFsynced {
        took: Duration,
    },
    KafkaLag {
        topic: &'a str,
        partition: i32,
        lag: i64,
    },
    /// A rollback's traffic check ended (`result`: verified, unverified).
    Verification {
        rule: &'a str,
        result: &'a str,
    },
    /// Flagger called the rollback webhook (`result`: rollback, continue).
    FlaggerCall {
        result: &'a str,
    },
    /// A promotion's step taken: the canary's weight is now `weight`.
    PromotionStep {
        rule: &'a str,
        target: &'a str,
        canary: &'a str,
        weight: u8,
    },
    /// A promotion reached its last step.
    Promoted {
        rule: &'a str,
    },
    /// A rollback stopped a promotion: the canary's weight is 0.
    PromotionStopped {
        target: &'a str,
        canary: &'a str,
    },
    /// The whole audit log was verified.
    ChainChecked {
        intact: bool,
    },
    /// Rules loaded (at start or on reload).
    RulesLoaded {
        rules: usize,
    },
    /// A reload refused: the rules in force stay.
    RulesRefused {
        errors: usize,
    },
    Ready {
        ready: bool,
    },
    /// A cluster replica started or stopped leading.
    Leader {
        leading: bool,
    },
    /// A cluster replica took over.
    TookOver,
    /// Messages of the replicated audit log not yet applied here.
    ReplicationLag {
        messages: i64,
        /// None when the newest message could not be read (the gauge keeps its last value).
        records: Option<u64>,
        seconds: f64,
    },
}

impl Event<'_> {
    pub fn emit(self) {
        let m = metrics();
        match self {
            Event::Received { source, outcome, count } => {
                m.events_received
                    .get_or_create(&SourceOutcome { source: source.into(), outcome: outcome.into() })
                    .inc_by(count);
            }
            Event::RuleMatched { rule } => {
                m.rule_matches.get_or_create(&RuleLabel { rule: rule.into() }).inc();
            }
            Event::Decided { rule, outcome } => {
                m.decisions.get_or_create(&RuleOutcome { rule: rule.into(), outcome: outcome.into() }).inc();
            }
            Event::ActionFinished { target, took } => {
                m.action_duration.get_or_create(&TargetLabel { target: target.into() }).observe(took.as_secs_f64());
            }
            Event::Verification { rule, result } => {
                m.verifications.get_or_create(&RuleOutcome { rule: rule.into(), outcome: result.into() }).inc();
            }
            Event::FlaggerCall { result } => {
                m.flagger_calls.get_or_create(&ResultLabel { result: result.into() }).inc();
            }
            Event::PromotionStep { rule, target, canary, weight } => {
                m.promotion_steps.get_or_create(&RuleLabel { rule: rule.into() }).inc();
                let key = TargetCanary { target: target.into(), canary: canary.into() };
                m.canary_weight.get_or_create(&key).set(i64::from(weight));
                info!(rule, target, canary, weight, "promotion step");
            }
            Event::Promoted { rule } => {
                m.promotions.get_or_create(&RuleLabel { rule: rule.into() }).inc();
            }
            Event::PromotionStopped { target, canary } => {
                let key = TargetCanary { target: target.into(), canary: canary.into() };
                m.canary_weight.get_or_create(&key).set(0);
            }
            Event::ChainChecked { intact } => {
                m.chain_ok.set(i64::from(intact));
            }
            Event::AuditAppended { took } => m.audit_append.observe(took.as_secs_f64()),
            Event::AuditFsynced { took } => m.audit_fsync.observe(took.as_secs_f64()),
            Event::KafkaLag { topic, partition, lag } => {
                m.kafka_lag
                    .get_or_create(&Partition { topic: topic.into(), partition: partition.to_string() })
                    .set(lag);
            }
            Event::RulesLoaded { rules } => {
                m.rules_loaded.set(i64::try_from(rules).unwrap_or(i64::MAX));
                m.reload_success.set(1);
                m.reload_timestamp.set(unix_now());
                info!(rules, "rules loaded");
            }
            Event::RulesRefused { errors } => {
                m.reload_success.set(0);
                m.reload_timestamp.set(unix_now());
                warn!(errors, "rules reload refused; the rules in force stay");
            }
            Event::Ready { ready } => {
                m.ready.set(i64::from(ready));
            }
            Event::Leader { leading } => {
                m.leader.set(i64::from(leading));
            }
            Event::TookOver => {
                m.takeovers.inc();
            }
            Event::ReplicationLag { messages, records, seconds } => {
                m.replication_lag.set(messages);
                if let Some(r) = records {
                    m.replication_lag_records.set(i64::try_from(r).unwrap_or(i64::MAX));
                }
                m.replication_lag_seconds.set(seconds);
            }
        }
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_show_up_in_the_exposition_with_their_labels() {
        Event::Received { source: "test-source", outcome: "accepted", count: 3 }.emit();
        Event::Decided { rule: "test-rule", outcome: "applied" }.emit();
        Event::ActionFinished { target: "test-target", took: Duration::from_millis(3) }.emit();
        Event::KafkaLag { topic: "t", partition: 2, lag: 17 }.emit();
        let text = render();
        assert!(
            text.contains(r#"backstop_events_received_total{source="test-source",outcome="accepted"} 3"#),
            "{text}"
        );
        assert!(text.contains(r#"backstop_decisions_total{rule="test-rule",outcome="applied"} 1"#), "{text}");
        assert!(text.contains(r#"backstop_action_duration_seconds_count{target="test-target"} 1"#), "{text}");
        assert!(text.contains(r#"backstop_kafka_consumer_lag{topic="t",partition="2"} 17"#), "{text}");
        assert!(text.contains(&format!(r#"backstop_build_info{{version="{}"}} 1"#, env!("CARGO_PKG_VERSION"))));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
