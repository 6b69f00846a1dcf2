//! The Alertmanager webhook payload, version 4 (Alertmanager 0.25 and later).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::event::{Alert, AlertStatus, SourceKind};

/// The webhook body as Alertmanager sends it. Unknown fields are tolerated.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    pub version: String,
    pub receiver: String,
    pub status: AlertStatus,
    pub alerts: Vec<WebhookAlert>,
    #[serde(default)]
    pub group_key: String,
    #[serde(default)]
    pub truncated_alerts: u64,
    #[serde(default)]
    pub group_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_annotations: BTreeMap<String, String>,
    #[serde(default, rename = "externalURL")]
    pub external_url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookAlert {
    pub status: AlertStatus,
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub starts_at: DateTime<Utc>,
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    pub fingerprint: String,
}

/// Why a body is not an acceptable webhook.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not JSON at all (HTTP 400).
    #[error("invalid JSON at line {line}, column {column}: {message}")]
    Syntax { line: usize, column: usize, message: String },
    /// JSON, but not a version 4 webhook (HTTP 422).
    #[error("invalid webhook payload at `{path}`: {message}")]
    Invalid { path: String, message: String },
}

impl ParseError {
    pub fn path(&self) -> Option<&str> {
        match self {
            ParseError::Invalid { path, .. } => Some(path),
            ParseError::Syntax { .. } => None,
        }
    }
}

/// Parse and check a webhook body.
pub fn parse(body: &[u8]) -> Result<Webhook, ParseError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let webhook: Webhook = serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => ParseError::Invalid { path, message: strip_position(&inner) },
            _ => ParseError::Syntax { line: inner.line(), column: inner.column(), message: strip_position(&inner) },
        }
    })?;
    if webhook.version != "4" {
        return Err(invalid("version", format!("unsupported version {:?}, expected \"4\"", webhook.version)));
    }
    for (i, alert) in webhook.alerts.iter().enumerate() {
        match alert.labels.get("alertname") {
            Some(name) if !name.is_empty() => {}
            _ => {
                return Err(invalid(
                    &format!("alerts[{i}].labels.alertname"),
                    "missing: every alert needs an alertname label".into(),
                ));
            }
        }
        if alert.fingerprint.is_empty() {
            return Err(invalid(&format!("alerts[{i}].fingerprint"), "empty fingerprint".into()));
        }
    }
    Ok(webhook)
}

fn invalid(path: &str, message: String) -> ParseError {
    ParseError::Invalid { path: path.to_string(), message }
}

/// serde_json appends " at line L column C" to its messages; we report those separately.
fn strip_position(err: &serde_json::Error) -> String {
    let text = err.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

impl Webhook {
    /// The alerts as events.
    pub fn events(&self) -> Vec<Alert> {
        self.alerts.iter().map(WebhookAlert::to_event).collect()
    }
}

impl WebhookAlert {
    pub fn to_event(&self) -> Alert {
        // Alertmanager sends 0001-01-01T00:00:00Z while an alert is firing.
        let ends_at = self.ends_at.filter(|t| t.timestamp() > 0);
        Alert {
            id: format!("{}-{}", self.fingerprint, self.starts_at.timestamp()),
            source: SourceKind::Alertmanager,
            name: self.labels.get("alertname").cloned().unwrap_or_default(),
            status: self.status,
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            starts_at: self.starts_at,
            ends_at,
            fingerprint: self.fingerprint.clone(),
            generator_url: self.generator_url.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRING: &str = r#"{"receiver":"backstop","status":"firing","alerts":[{"status":"firing","labels":{"alertname":"CanaryHighErrorRate","namespace":"sms-app","virtualservice":"model-service"},"annotations":{"summary":"x"},"startsAt":"2026-11-24T10:00:00.123Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"","fingerprint":"abc123"}],"groupLabels":{},"commonLabels":{},"commonAnnotations":{},"externalURL":"http://am","version":"4","groupKey":"{}:{}","truncatedAlerts":0,"somethingNew":true}"#;

    #[test]
    fn parses_v4_payload_and_tolerates_unknown_fields() {
        let w = parse(FIRING.as_bytes()).unwrap();
        assert_eq!(w.receiver, "backstop");
        let events = w.events();
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e.name, "CanaryHighErrorRate");
        assert_eq!(e.status, AlertStatus::Firing);
        assert_eq!(e.ends_at, None, "0001-01-01 means still firing");
        assert_eq!(e.id, format!("abc123-{}", e.starts_at.timestamp()));
        assert_eq!(e.label("namespace"), Some("sms-app"));
    }

    #[test]
    fn syntax_error_names_line_and_column() {
        let err = parse(b"{\n  \"receiver\": \"x\",\n  oops\n}").unwrap_err();
        match err {
            ParseError::Syntax { line, column, .. } => {
                assert_eq!(line, 3);
                assert_eq!(column, 3);
            }
            other => panic!("expected syntax error, got {other:?}"),
        }
    }

    #[test]
    fn missing_required_field_is_named_by_path() {
        let body = FIRING.replace(r#""fingerprint":"abc123""#, r#""fp":"abc123""#);
        let err = parse(body.as_bytes()).unwrap_err();
        assert_eq!(err.path(), Some("alerts[0]"));
        assert!(err.to_string().contains("missing field `fingerprint`"), "{err}");
    }

    #[test]
    fn wrong_type_is_named_by_path() {
        let body = FIRING.replace(r#""startsAt":"2026-11-24T10:00:00.123Z""#, r#""startsAt":12"#);
        let err = parse(body.as_bytes()).unwrap_err();
        assert_eq!(err.path(), Some("alerts[0].startsAt"));
    }

    #[test]
    fn unknown_status_and_version_are_refused() {
        let body = FIRING.replace(r#""status":"firing","labels""#, r#""status":"burning","labels""#);
        assert_eq!(parse(body.as_bytes()).unwrap_err().path(), Some("alerts[0].status"));
        let body = FIRING.replace(r#""version":"4""#, r#""version":"3""#);
        assert_eq!(parse(body.as_bytes()).unwrap_err().path(), Some("version"));
    }

    #[test]
    fn alert_without_alertname_is_refused() {
        let body = FIRING.replace(r#""alertname":"CanaryHighErrorRate","#, "");
        let err = parse(body.as_bytes()).unwrap_err();
        assert_eq!(err.path(), Some("alerts[0].labels.alertname"));
    }

    #[test]
    fn key_depends_on_rule_fingerprint_and_start() {
        let a = parse(FIRING.as_bytes()).unwrap().events().remove(0);
        let mut b = a.clone();
        b.status = AlertStatus::Resolved;
        assert_eq!(a.key("r"), b.key("r"), "status does not change the key");
        assert_ne!(a.key("r"), a.key("other"));
        b.starts_at += chrono::Duration::seconds(1);
        assert_ne!(a.key("r"), b.key("r"), "a new firing is a new alert instance");
    }
}
