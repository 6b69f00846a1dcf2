//! The `kafka:` section of backstop.yaml: the client settings shared by the Kafka source
//! ([`crate::sources::kafka`]) and the audit-topic sink ([`crate::sinks::audit_topic`]).

use std::collections::BTreeMap;

/// Brokers, the consumer group, the topics, and librdkafka properties passed through.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaConfig {
    pub brokers: String,
    pub group_id: String,
    pub alerts_topic: String,
    pub feedback_topic: String,
    /// Where messages that cannot be parsed are copied (besides being recorded), if anywhere.
    pub dead_letter_topic: Option<String>,
    /// Where every audit record is published (keyed by target), if anywhere: see
    /// [`crate::sinks::audit_topic`].
    pub audit_topic: Option<String>,
    /// Passed to librdkafka as they are: `security.protocol`, `sasl.*`, `ssl.*`, ...
    pub properties: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// `--kafka-brokers HOST:PORT`: the default group and topics.
    pub fn with_brokers(brokers: impl Into<String>) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.into(),
            group_id: "backstop".into(),
            alerts_topic: "backstop.alerts".into(),
            feedback_topic: "backstop.feedback".into(),
            dead_letter_topic: None,
            audit_topic: None,
            properties: BTreeMap::new(),
        }
    }
}
