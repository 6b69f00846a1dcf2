//! The one event model every source produces and the pipeline consumes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where an event came from (the `source` field of its audit records).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Alertmanager,
    Kafka,
    /// Feedback posted to backstop's own HTTP endpoint.
    Http,
    Manual,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Alertmanager => "alertmanager",
            SourceKind::Kafka => "kafka",
            SourceKind::Http => "http",
            SourceKind::Manual => "manual",
        }
    }
}

/// Firing or resolved, as Alertmanager says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

impl std::fmt::Display for AlertStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        })
    }
}

/// One alert, whatever transport carried it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable across redeliveries of the same alert instance: `{fingerprint}-{startsAt unix seconds}`.
    pub id: String,
    pub source: SourceKind,
    pub name: String,
    pub status: AlertStatus,
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub starts_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<DateTime<Utc>>,
    pub fingerprint: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub generator_url: String,
}

impl Alert {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }

    /// The idempotency key of acting on this alert with `rule`: one alert instance, delivered
    /// any number of times, leads to at most one action per rule.
    pub fn key(&self, rule: &str) -> String {
        format!("{rule}|{}|{}", self.fingerprint, self.starts_at.to_rfc3339())
    }
}

/// Feedback about one version of a service. Unknown fields are tolerated (producers add their
/// own), as in the webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    /// Unique per event if the producer has one; else the transport's position is the identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The VirtualService's namespace (default `default`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The service (VirtualService) the feedback is about.
    pub service: String,
    /// The subset (version) that served it, e.g. `v2`.
    pub version: String,
    pub time: DateTime<Utc>,
    /// The request the event is about, when a request can be reported more than once (each
    /// retry): outcomes of one request served by one version count once, with the latest
    /// attempt's outcome (see docs/feedback.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Which attempt of `request_id` this is (1 for the first); a lower one than already
    /// counted is not counted. Only with `request_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(flatten)]
    pub kind: FeedbackKind,
}

fn default_namespace() -> String {
    "default".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FeedbackKind {
    /// A user's yes/no on a prediction.
    Satisfaction { satisfied: bool },
    /// A score such as a model's confidence.
    Score { score: f64 },
    /// A request's outcome.
    Outcome {
        success: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        latency_ms: Option<f64>,
    },
}

mod recorded;
mod view;

pub use recorded::{
    AlertsRecord, AlertsRecordRef, LabelsRef, RECEIVED_FORMAT, RecordedAlert, RecordedAlertRef, Text, alert_ids,
    alerts_label, alerts_received,
};
pub use view::{AlertView, Labels};
