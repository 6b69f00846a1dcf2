//! Messages that arrive on a bus (Kafka today) rather than as Alertmanager webhooks: alerts in
//! Alertmanager's shape, feedback events about a canary, either plain JSON or wrapped in a
//! CloudEvents envelope — structured mode (`specversion`, `type`, `data` in the body) or the Kafka
//! binding's binary mode (`ce_*` headers, the data as the body). Pure: bytes and headers in,
//! events out, with the path of whatever is wrong.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::event::{Alert, AlertStatus, SourceKind};
use crate::sources::alertmanager::{self, WebhookAlert};

/// CloudEvents `type` of a feedback event.
pub const FEEDBACK_TYPE: &str = "io.backstop.feedback.v1";
/// CloudEvents `type` of an alert (one Alertmanager alert, or a whole webhook payload).
pub const ALERT_TYPE: &str = "io.backstop.alert.v1";

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

/// What a message carried.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Alerts(Vec<Alert>),
    Feedback(Feedback),
}

/// Why a message could not be used; `path` says where in it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}{message}", if path.is_empty() { String::new() } else { format!("at `{path}`: ") })]
pub struct MessageError {
    pub path: String,
    pub message: String,
}

fn err(path: impl Into<String>, message: impl Into<String>) -> MessageError {
    MessageError { path: path.into(), message: message.into() }
}

/// What a topic is expected to carry when the message does not say (plain JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Alerts,
    Feedback,
}

/// Parse one message. `headers` are the Kafka record's headers (name, value).
pub fn parse(expect: Expect, headers: &[(&str, &[u8])], payload: &[u8]) -> Result<Message, MessageError> {
    let header = |name: &str| {
        headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    // Binary mode: the envelope is in the headers, the body is the data.
    if let Some(ce_type) = header("ce_type") {
        let spec = header("ce_specversion").ok_or_else(|| err("ce_specversion", "missing header"))?;
        check_spec(&spec, "ce_specversion")?;
        let data: Value = json(payload, "")?;
        return from_cloudevent(&ce_type, header("ce_id"), header("ce_time").as_deref(), data, "");
    }
    let value: Value = json(payload, "")?;
    // Structured mode: the envelope is the body.
    if value.get("specversion").is_some() {
        check_spec(value["specversion"].as_str().unwrap_or_default(), "specversion")?;
        let ce_type = value["type"].as_str().ok_or_else(|| err("type", "missing or not a string"))?.to_string();
        let id = value["id"].as_str().map(str::to_string);
        let time = value["time"].as_str().map(str::to_string);
        let data = value.get("data").cloned().ok_or_else(|| err("data", "missing (data_base64 is not accepted)"))?;
        return from_cloudevent(&ce_type, id, time.as_deref(), data, "data.");
    }
    match expect {
        Expect::Feedback => feedback(value, None, None, "").map(Message::Feedback),
        Expect::Alerts => alerts(value, "").map(Message::Alerts),
    }
}

fn check_spec(spec: &str, field: &str) -> Result<(), MessageError> {
    if spec == "1.0" {
        Ok(())
    } else {
        Err(err(field, format!("CloudEvents specversion `{spec}` is not supported (1.0 is)")))
    }
}

fn json(bytes: &[u8], _path: &str) -> Result<Value, MessageError> {
    serde_json::from_slice(bytes)
        .map_err(|e| err("", format!("invalid JSON at line {}, column {}: {e}", e.line(), e.column())))
}

fn from_cloudevent(
    ce_type: &str,
    id: Option<String>,
    time: Option<&str>,
    data: Value,
    prefix: &str,
) -> Result<Message, MessageError> {
    match ce_type {
        FEEDBACK_TYPE => feedback(data, id, time, prefix).map(Message::Feedback),
        ALERT_TYPE => alerts(data, prefix).map(Message::Alerts),
        other => Err(err("type", format!("CloudEvents type `{other}` is not one of {FEEDBACK_TYPE}, {ALERT_TYPE}"))),
    }
}

/// A feedback event; the envelope's id and time fill in what the data leaves out.
fn feedback(mut data: Value, id: Option<String>, time: Option<&str>, prefix: &str) -> Result<Feedback, MessageError> {
    if let Value::Object(o) = &mut data {
        if let Some(id) = id {
            o.entry("id").or_insert(Value::String(id));
        }
        if let Some(t) = time {
            o.entry("time").or_insert(Value::String(t.to_string()));
        }
    }
    let f: Feedback = serde_path_to_error::deserialize(data).map_err(|e| {
        let path = e.path().to_string();
        err(
            if path == "." { prefix.trim_end_matches('.').to_string() } else { format!("{prefix}{path}") },
            e.into_inner().to_string(),
        )
    })?;
    let bad = |field: &str, why: &str| err(format!("{prefix}{field}"), why.to_string());
    if f.service.is_empty() {
        return Err(bad("service", "must not be empty"));
    }
    if f.version.is_empty() {
        return Err(bad("version", "must not be empty"));
    }
    match f.kind {
        FeedbackKind::Score { score } if !score.is_finite() => Err(bad("score", "must be a finite number")),
        FeedbackKind::Outcome { latency_ms: Some(l), .. } if !l.is_finite() || l < 0.0 => {
            Err(bad("latency_ms", "must be a finite number >= 0"))
        }
        _ => Ok(f),
    }
}

/// One Alertmanager alert, or a whole webhook payload.
fn alerts(data: Value, prefix: &str) -> Result<Vec<Alert>, MessageError> {
    if data.get("alerts").is_some() {
        let bytes = serde_json::to_vec(&data).map_err(|e| err(prefix, e.to_string()))?;
        return alertmanager::parse(&bytes).map(|w| w.events()).map_err(|e| match e {
            alertmanager::ParseError::Invalid { path, message } => err(format!("{prefix}{path}"), message),
            other => err(prefix.trim_end_matches('.'), other.to_string()),
        });
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct LooseAlert {
        #[serde(default)]
        status: Option<AlertStatus>,
        labels: BTreeMap<String, String>,
        #[serde(default)]
        annotations: BTreeMap<String, String>,
        starts_at: DateTime<Utc>,
        #[serde(default)]
        ends_at: Option<DateTime<Utc>>,
        #[serde(default, rename = "generatorURL")]
        generator_url: String,
        #[serde(default)]
        fingerprint: Option<String>,
    }
    let a: LooseAlert = serde_path_to_error::deserialize(data)
        .map_err(|e| err(format!("{prefix}{}", e.path()), e.into_inner().to_string()))?;
    if a.labels.get("alertname").is_none_or(String::is_empty) {
        return Err(err(format!("{prefix}labels.alertname"), "missing: every alert needs an alertname label"));
    }
    // Like Alertmanager: resolved when endsAt has passed, else firing.
    let status = a.status.unwrap_or(match a.ends_at {
        Some(t) if t.timestamp() > 0 && t <= Utc::now() => AlertStatus::Resolved,
        _ => AlertStatus::Firing,
    });
    let fingerprint = a.fingerprint.filter(|f| !f.is_empty()).unwrap_or_else(|| fingerprint(&a.labels));
    let w = WebhookAlert {
        status,
        labels: a.labels,
        annotations: a.annotations,
        starts_at: a.starts_at,
        ends_at: a.ends_at,
        generator_url: a.generator_url,
        fingerprint,
    };
    let mut alert = w.to_event();
    alert.source = SourceKind::Kafka;
    Ok(vec![alert])
}

/// A stable fingerprint of a label set, for alerts that do not carry Alertmanager's.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in labels {
        h.update(k.as_bytes());
        h.update([0xff]);
        h.update(v.as_bytes());
        h.update([0xfe]);
    }
    hex::encode(&h.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FEEDBACK: &str = r#"{"service":"model-service","namespace":"sms-app","version":"v2","time":"2026-11-24T20:00:00Z","kind":"satisfaction","satisfied":false}"#;

    #[test]
    fn plain_feedback_of_each_kind() {
        let Message::Feedback(f) = parse(Expect::Feedback, &[], FEEDBACK.as_bytes()).unwrap() else { panic!() };
        assert_eq!((f.service.as_str(), f.version.as_str(), f.id), ("model-service", "v2", None));
        assert_eq!(f.kind, FeedbackKind::Satisfaction { satisfied: false });
        let score = json!({"service": "m", "version": "v2", "time": "2026-11-24T20:00:00Z", "kind": "score", "score": 0.27, "id": "e1"});
        let Message::Feedback(f) = parse(Expect::Feedback, &[], score.to_string().as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(
            (f.kind, f.id.as_deref(), f.namespace.as_str()),
            (FeedbackKind::Score { score: 0.27 }, Some("e1"), "default")
        );
        let outcome = json!({"service": "m", "version": "v1", "time": "2026-11-24T20:00:00Z", "kind": "outcome", "success": true, "latency_ms": 41.5});
        let Message::Feedback(f) = parse(Expect::Feedback, &[], outcome.to_string().as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(f.kind, FeedbackKind::Outcome { success: true, latency_ms: Some(41.5) });
    }

    #[test]
    fn bad_feedback_names_the_field() {
        let e = parse(
            Expect::Feedback,
            &[],
            br#"{"service":"m","version":"v2","time":"2026-11-24T20:00:00Z","kind":"mood"}"#,
        )
        .unwrap_err();
        assert!(e.message.contains("unknown variant `mood`"), "{e}");
        let e = parse(
            Expect::Feedback,
            &[],
            br#"{"service":"m","version":"v2","time":"yesterday","kind":"score","score":1}"#,
        )
        .unwrap_err();
        assert_eq!(e.path, "time");
        let e = parse(
            Expect::Feedback,
            &[],
            br#"{"service":"","version":"v2","time":"2026-11-24T20:00:00Z","kind":"score","score":1}"#,
        )
        .unwrap_err();
        assert_eq!(e.path, "service");
        let e = parse(Expect::Feedback, &[], b"{nope").unwrap_err();
        assert!(e.message.starts_with("invalid JSON at line 1, column 2"), "{e}");
    }

    #[test]
    fn structured_cloudevents_carry_feedback_and_lend_id_and_time() {
        let ce = json!({"specversion": "1.0", "id": "ce-7", "source": "app", "type": FEEDBACK_TYPE, "time": "2026-11-24T21:00:00Z",
                        "datacontenttype": "application/json", "data": {"service": "m", "version": "v2", "kind": "satisfaction", "satisfied": true}});
        let Message::Feedback(f) = parse(Expect::Alerts, &[], ce.to_string().as_bytes()).unwrap() else { panic!() };
        assert_eq!(f.id.as_deref(), Some("ce-7"));
        assert_eq!(f.time.to_rfc3339(), "2026-11-24T21:00:00+00:00");
        let bad = json!({"specversion": "1.0", "id": "x", "type": FEEDBACK_TYPE, "data": {"service": "m", "version": "v2", "kind": "score"}});
        let e = parse(Expect::Feedback, &[], bad.to_string().as_bytes()).unwrap_err();
        assert!(e.path.starts_with("data"), "{e}");
        let other = json!({"specversion": "1.0", "id": "x", "type": "com.example.other", "data": {}});
        assert_eq!(parse(Expect::Feedback, &[], other.to_string().as_bytes()).unwrap_err().path, "type");
        let old = json!({"specversion": "0.3", "type": FEEDBACK_TYPE});
        assert_eq!(parse(Expect::Feedback, &[], old.to_string().as_bytes()).unwrap_err().path, "specversion");
    }

    #[test]
    fn binary_cloudevents_use_the_ce_headers() {
        let headers: Vec<(&str, &[u8])> = vec![
            ("ce_specversion", b"1.0"),
            ("ce_id", b"bin-1"),
            ("ce_type", FEEDBACK_TYPE.as_bytes()),
            ("ce_time", b"2026-11-24T22:00:00Z"),
            ("content-type", b"application/json"),
        ];
        let body = br#"{"service":"m","version":"v2","kind":"outcome","success":false}"#;
        let Message::Feedback(f) = parse(Expect::Alerts, &headers, body).unwrap() else { panic!() };
        assert_eq!(f.id.as_deref(), Some("bin-1"));
        assert_eq!(f.kind, FeedbackKind::Outcome { success: false, latency_ms: None });
        let missing: Vec<(&str, &[u8])> = vec![("ce_type", FEEDBACK_TYPE.as_bytes())];
        assert_eq!(parse(Expect::Feedback, &missing, body).unwrap_err().path, "ce_specversion");
    }

    #[test]
    fn alerts_come_as_one_alert_a_webhook_or_a_cloudevent() {
        let one = json!({"labels": {"alertname": "CanaryHighErrorRate", "namespace": "sms-app", "virtualservice": "model-service"},
                         "startsAt": "2026-11-24T20:00:00Z"});
        let Message::Alerts(a) = parse(Expect::Alerts, &[], one.to_string().as_bytes()).unwrap() else { panic!() };
        assert_eq!(a.len(), 1);
        assert_eq!((a[0].status, a[0].source), (AlertStatus::Firing, SourceKind::Kafka));
        assert_eq!(a[0].fingerprint, fingerprint(&a[0].labels), "computed from the labels when absent");
        assert_eq!(a[0].fingerprint.len(), 16);
        let webhook = include_str!("../../fixtures/alertmanager/grouped.json");
        let Message::Alerts(a) = parse(Expect::Alerts, &[], webhook.as_bytes()).unwrap() else { panic!() };
        assert_eq!(a.len(), 3);
        let ce = json!({"specversion": "1.0", "id": "a1", "type": ALERT_TYPE, "data": one});
        let Message::Alerts(a) = parse(Expect::Feedback, &[], ce.to_string().as_bytes()).unwrap() else { panic!() };
        assert_eq!(a[0].name, "CanaryHighErrorRate");
        let e =
            parse(Expect::Alerts, &[], br#"{"labels":{"team":"x"},"startsAt":"2026-11-24T20:00:00Z"}"#).unwrap_err();
        assert_eq!(e.path, "labels.alertname");
        let resolved =
            json!({"labels": {"alertname": "X"}, "startsAt": "2026-11-24T20:00:00Z", "endsAt": "2026-11-24T20:05:00Z"});
        let Message::Alerts(a) = parse(Expect::Alerts, &[], resolved.to_string().as_bytes()).unwrap() else { panic!() };
        assert_eq!(a[0].status, AlertStatus::Resolved, "endsAt in the past");
    }

    #[test]
    fn fingerprints_are_stable_and_label_sensitive() {
        let l =
            |v: &str| BTreeMap::from([("alertname".to_string(), "A".to_string()), ("x".to_string(), v.to_string())]);
        assert_eq!(fingerprint(&l("1")), fingerprint(&l("1")));
        assert_ne!(fingerprint(&l("1")), fingerprint(&l("2")));
    }
}
