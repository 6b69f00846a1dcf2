//! The Alertmanager webhook payload, version 4 (Alertmanager 0.25 and later).

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::event::{Alert, AlertStatus, AlertView, Labels, LabelsRef, RecordedAlertRef, SourceKind, Text};

/// The webhook body as Alertmanager sends it, read in place: its text borrowed from the body
/// (see [`Labels`]). Unknown fields are tolerated; `groupLabels`, `commonLabels` and
/// `commonAnnotations` repeat what the alerts carry and are not read.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Webhook<'a> {
    #[serde(borrow)]
    pub version: Cow<'a, str>,
    #[serde(borrow)]
    pub receiver: Cow<'a, str>,
    pub status: AlertStatus,
    #[serde(borrow)]
    pub alerts: Vec<WebhookAlert<'a>>,
    #[serde(default, borrow)]
    pub group_key: Cow<'a, str>,
    #[serde(default)]
    pub truncated_alerts: u64,
    #[serde(default, rename = "externalURL", borrow)]
    pub external_url: Cow<'a, str>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookAlert<'a> {
    pub status: AlertStatus,
    #[serde(borrow)]
    pub labels: Labels<'a>,
    #[serde(default, borrow)]
    pub annotations: Labels<'a>,
    #[serde(deserialize_with = "super::timestamp::deserialize")]
    pub starts_at: DateTime<Utc>,
    #[serde(default, deserialize_with = "super::timestamp::deserialize_option")]
    pub ends_at: Option<DateTime<Utc>>,
    #[serde(default, rename = "generatorURL", borrow)]
    pub generator_url: Cow<'a, str>,
    #[serde(borrow)]
    pub fingerprint: Cow<'a, str>,
    /// The event id, set by [`parse`] (see [`event_id`]).
    #[serde(skip)]
    pub id: String,
}

/// An alert instance's event id, stable across redeliveries: `{fingerprint}-{startsAt as Unix
/// seconds}`.
pub fn event_id(fingerprint: &str, starts_at: DateTime<Utc>) -> String {
    // Not `format!`: its machinery was a fiftieth of a 50-alert delivery's CPU.
    let mut digits = itoa::Buffer::new();
    let seconds = digits.format(starts_at.timestamp());
    let mut id = String::with_capacity(fingerprint.len() + 1 + seconds.len());
    id.push_str(fingerprint);
    id.push('-');
    id.push_str(seconds);
    id
}

/// Alertmanager sends `endsAt: 0001-01-01T00:00:00Z` while an alert is firing: that is none.
pub fn ends_at(sent: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    sent.filter(|t| t.timestamp() > 0)
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

/// Longest message (in bytes) an error carries: serde echoes offending values (`unknown variant
/// `…``), and a hostile body can make those as long as the body. Error bodies and audit reasons
/// stay small; the middle of a longer text is elided.
pub const MAX_MESSAGE: usize = 400;
/// Longest path an error names (map keys are part of it and can be as long as the body).
pub const MAX_PATH: usize = 200;

/// `text`, at most about `max` bytes: the middle of a longer one is replaced by `…(N bytes)…`
/// (cut on character boundaries), so both the start and the end (serde's "expected …") stay.
pub fn elide(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    // The marker takes at most 34 bytes (`…(` + 20 digits + ` bytes)…`); the rest is kept.
    let room = max.saturating_sub(40);
    let mut head = room * 2 / 3;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - (room - room * 2 / 3);
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}…({} bytes)…{}", &text[..head], tail - head, &text[tail..])
}

/// Parse and check a webhook body.
pub fn parse(body: &[u8]) -> Result<Webhook<'_>, ParseError> {
    // Tracking the path costs an allocation per key: a third of the parse. A body that parses
    // needs no path, so only a failed one is parsed again to say where it went wrong.
    // A body that is valid UTF-8 as a whole (checked once, quickly: it is mostly ASCII) is
    // parsed as text, which spares serde_json checking each string again (a twentieth of the
    // parse). Any other body goes through the byte parser, which says where it is invalid.
    let parsed = match std::str::from_utf8(body) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(body),
    };
    let mut webhook: Webhook = match parsed {
        Ok(webhook) => webhook,
        Err(plain) => return Err(locate(body, plain)),
    };
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
    for alert in &mut webhook.alerts {
        alert.id = event_id(&alert.fingerprint, alert.starts_at);
    }
    Ok(webhook)
}

/// Where and why `body` is not a webhook, with the path into it (`alerts[3].startsAt`).
fn locate(body: &[u8], plain: serde_json::Error) -> ParseError {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let (path, inner) = match serde_path_to_error::deserialize::<_, Webhook>(de) {
        Err(err) => (elide(&err.path().to_string(), MAX_PATH), err.into_inner()),
        // The same parser over the same bytes fails the same way; should it not, the first
        // error still says what and where (line and column), without the path.
        Ok(_) => (".".to_string(), plain),
    };
    let message = elide(&strip_position(&inner), MAX_MESSAGE);
    match inner.classify() {
        serde_json::error::Category::Data => ParseError::Invalid { path, message },
        _ => ParseError::Syntax { line: inner.line(), column: inner.column(), message },
    }
}

fn invalid(path: &str, message: String) -> ParseError {
    ParseError::Invalid { path: elide(path, MAX_PATH), message: elide(&message, MAX_MESSAGE) }
}

/// serde_json appends " at line L column C" to its messages; we report those separately.
fn strip_position(err: &serde_json::Error) -> String {
    let text = err.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

impl Webhook<'_> {
    /// The alerts as events (owned).
    pub fn events(&self) -> Vec<Alert> {
        self.alerts.iter().map(WebhookAlert::to_event).collect()
    }
}

impl WebhookAlert<'_> {
    pub fn to_event(&self) -> Alert {
        Alert {
            id: self.id.clone(),
            source: SourceKind::Alertmanager,
            name: self.labels.get("alertname").unwrap_or_default().to_string(),
            status: self.status,
            labels: self.labels.to_map(),
            annotations: self.annotations.to_map(),
            starts_at: self.starts_at,
            ends_at: ends_at(self.ends_at),
            fingerprint: self.fingerprint.to_string(),
            generator_url: self.generator_url.to_string(),
        }
    }
}

impl AlertView for WebhookAlert<'_> {
    fn id(&self) -> &str {
        &self.id
    }
    fn source(&self) -> SourceKind {
        SourceKind::Alertmanager
    }
    fn status(&self) -> AlertStatus {
        self.status
    }
    fn name(&self) -> &str {
        self.labels.get("alertname").unwrap_or_default()
    }
    fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name)
    }
    fn starts_at(&self) -> DateTime<Utc> {
        self.starts_at
    }
    fn recorded(&self) -> RecordedAlertRef<'_> {
        RecordedAlertRef {
            // The id is the fingerprint and digits: verbatim when the fingerprint is.
            id: match self.fingerprint {
                Cow::Borrowed(_) => Text::Verbatim(&self.id),
                Cow::Owned(_) => Text::Any(&self.id),
            },
            status: self.status,
            labels: LabelsRef::InPlace(&self.labels),
            annotations: LabelsRef::InPlace(&self.annotations),
            starts_at: self.starts_at,
            ends_at: ends_at(self.ends_at),
            generator_url: Text::of(&self.generator_url),
        }
    }
    fn to_alert(&self) -> Alert {
        self.to_event()
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

    #[test]
    fn hostile_bodies_are_bounded_errors_that_say_where() {
        // 100,000 nested arrays where anything is accepted (an unknown field): serde_json skips
        // them without recursing, to the end, where it says so.
        let deep = format!(r#"{{"somethingNew":{}"#, "[".repeat(100_000));
        match parse(deep.as_bytes()).unwrap_err() {
            ParseError::Syntax { line, column, message } => {
                assert_eq!((line, column), (1, 100_016), "{message}");
                assert!(message.contains("EOF"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // Closed, they are skipped and the payload is taken.
        let closed =
            FIRING.replacen('{', &format!(r#"{{"somethingNew":{}{},"#, "[".repeat(100_000), "]".repeat(100_000)), 1);
        assert_eq!(parse(closed.as_bytes()).unwrap().alerts.len(), 1);
        // Where a webhook is expected, the first wrong type stops it.
        assert_eq!(parse("[".repeat(100_000).as_bytes()).unwrap_err().path(), Some("[0]"));
        let deep_objects = r#"{"alerts":"#.repeat(50_000);
        assert_eq!(parse(deep_objects.as_bytes()).unwrap_err().path(), Some("alerts"));
        // A megabyte-long value that serde echoes in its message is elided.
        let long = "x".repeat(1 << 20);
        let body = FIRING.replace(r#""status":"firing","labels""#, &format!(r#""status":"{long}","labels""#));
        let err = parse(body.as_bytes()).unwrap_err();
        assert_eq!(err.path(), Some("alerts[0].status"));
        let text = err.to_string();
        assert!(text.len() < MAX_MESSAGE + 100, "{} bytes", text.len());
        assert!(text.contains("bytes)…") && text.ends_with("expected `firing` or `resolved`"), "{text}");
        // So is a megabyte-long label name that is part of the path.
        let body = FIRING.replace(r#""alertname":"#, &format!(r#""{long}":1,"alertname":"#));
        let err = parse(body.as_bytes()).unwrap_err();
        assert!(err.path().unwrap().starts_with("alerts[0].labels.xxx"), "{err}");
        assert!(err.path().unwrap().len() <= MAX_PATH);
        // Invalid UTF-8 inside a string is a syntax error with its position.
        let mut bytes = FIRING.as_bytes().to_vec();
        let at = FIRING.find("CanaryHighErrorRate").unwrap();
        bytes[at] = 0xff;
        assert!(matches!(parse(&bytes), Err(ParseError::Syntax { line: 1, .. })));
    }

    #[test]
    fn text_with_escapes_and_non_ascii_reads_as_the_byte_parser_reads_it() {
        // Valid UTF-8 takes the text parser; it must read exactly what the byte parser reads.
        let body = FIRING.replace(r#""summary":"x""#, r#""summary":"caf\u00e9 é \"quoted\" \n ✓ 🦀""#);
        let quick = parse(body.as_bytes()).unwrap();
        let bytes: Webhook = serde_json::from_slice(body.as_bytes()).unwrap();
        assert_eq!(quick.alerts[0].annotations, bytes.alerts[0].annotations);
        assert_eq!(quick.alerts[0].annotations.get("summary").unwrap(), "café é \"quoted\" \n ✓ 🦀");
        assert_eq!(quick.alerts[0].starts_at, bytes.alerts[0].starts_at);
        // An offset instead of Z is the same instant (read by chrono, not the quick path).
        let offset = FIRING.replace("2026-11-24T10:00:00.123Z", "2026-11-24T12:00:00.123+02:00");
        assert_eq!(parse(offset.as_bytes()).unwrap().alerts[0].starts_at, quick.alerts[0].starts_at);
        // A timestamp that is not one is an error at its path.
        let bad = FIRING.replace("2026-11-24T10:00:00.123Z", "2026-11-31T10:00:00Z");
        assert_eq!(parse(bad.as_bytes()).unwrap_err().path(), Some("alerts[0].startsAt"));
    }

    #[test]
    fn alerts_read_in_place_are_recorded_and_matched_as_their_owned_events() {
        // Two alerts: one with escapes, annotations and a resolved endsAt; one still firing
        // (endsAt 0001-01-01) without annotations or generatorURL.
        let second = r#"{"status":"firing","labels":{"severity":"page","alertname":"B","pod":"a\"b"},"startsAt":"2026-11-24T10:00:00Z","endsAt":"0001-01-01T00:00:00Z","fingerprint":"f2"}"#;
        let body = FIRING
            .replace(r#""summary":"x""#, r#""summary":"é \u0026 \"q\"","b":"2""#)
            .replace(
                r#""endsAt":"0001-01-01T00:00:00Z","generatorURL":"""#,
                r#""endsAt":"2026-11-24T11:00:00Z","generatorURL":"http://p/g?a=1\u0026b=2""#,
            )
            .replace(r#""fingerprint":"abc123"}]"#, &format!(r#""fingerprint":"abc123"}},{second}]"#));
        let w = parse(body.as_bytes()).unwrap();
        let events = w.events();
        assert_eq!(events.len(), 2);
        let delivery = serde_json::json!({ "receiver": "backstop" });
        let in_place = serde_json::to_string(&crate::event::AlertsRecord::of(&delivery, &w.alerts)).unwrap();
        let owned = serde_json::to_string(&crate::event::AlertsRecord::of(&delivery, &events)).unwrap();
        assert_eq!(in_place, owned, "the same record, byte for byte");
        // And the quick writer writes it so too, from either.
        let quick = crate::event::AlertsRecord::of(&delivery, &w.alerts).to_json(0).unwrap();
        assert_eq!(String::from_utf8(quick).unwrap(), owned);
        let quick_owned = crate::event::AlertsRecord::of(&delivery, &events).to_json(0).unwrap();
        assert_eq!(String::from_utf8(quick_owned).unwrap(), owned);
        for (view, event) in w.alerts.iter().zip(&events) {
            assert_eq!(view.to_alert(), *event);
            assert_eq!((view.id(), view.name(), view.status()), (event.id.as_str(), event.name.as_str(), event.status));
            assert_eq!(view.label("pod"), event.label("pod"));
        }
        assert_eq!(events[0].generator_url, "http://p/g?a=1&b=2");
        assert_eq!(events[1].label("pod"), Some("a\"b"));
        assert_eq!(events[1].ends_at, None);
    }

    #[test]
    fn elide_keeps_both_ends_on_character_boundaries() {
        assert_eq!(elide("short", 10), "short");
        let text = "é".repeat(1000);
        let e = elide(&text, 100);
        assert!(e.len() <= 100 && e.starts_with('é') && e.ends_with('é'), "{e}");
        assert!(e.contains("bytes)…"));
    }

    mod properties {
        use super::super::*;
        use super::FIRING;
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        proptest! {
            /// Whatever the text of a delivery's alerts (quotes, backslashes, control characters,
            /// non-ASCII, escaped or not), the record written quickly from the alerts as read is
            /// the one serde_json writes from the owned alerts, byte for byte.
            #[test]
            fn the_quick_record_is_serde_jsons_byte_for_byte(
                alerts in prop::collection::vec((
                    prop::collection::vec(("[a-z\"\\\u{1}é]{1,4}", "[ -~\u{0}-\u{1f}é✓]{0,6}"), 0..5),
                    prop::collection::vec(("[a-z]{1,3}", "[ -~\n]{0,8}"), 0..3),
                    "[ -~]{0,10}",
                    "[0-9a-f\"]{1,8}",
                    any::<bool>(),
                ), 1..4),
                escape_slash in any::<bool>(),
            ) {
                let mut items = Vec::new();
                for (labels, annotations, url, fingerprint, resolved) in &alerts {
                    let mut labels: BTreeMap<String, String> = labels.iter().cloned().collect();
                    labels.insert("alertname".into(), "A".into());
                    let annotations: BTreeMap<String, String> = annotations.iter().cloned().collect();
                    items.push(serde_json::json!({
                        "status": if *resolved { "resolved" } else { "firing" },
                        "labels": labels, "annotations": annotations,
                        "startsAt": "2026-11-24T10:00:00.5Z",
                        "endsAt": if *resolved { "2026-11-24T11:00:00Z" } else { "0001-01-01T00:00:00Z" },
                        "generatorURL": url, "fingerprint": fingerprint,
                    }));
                }
                let mut body = serde_json::json!({ "version": "4", "receiver": "r", "status": "firing", "alerts": items }).to_string();
                if escape_slash {
                    // Go escapes more than serde_json does: `/` as `\/` reads back as `/`.
                    body = body.replace('/', "\\/");
                }
                let w = parse(body.as_bytes()).unwrap();
                let events = w.events();
                let delivery = serde_json::json!({ "receiver": "r\"q" });
                let owned = serde_json::to_vec(&crate::event::AlertsRecord::of(&delivery, &events)).unwrap();
                let quick = crate::event::AlertsRecord::of(&delivery, &w.alerts).to_json(0).unwrap();
                prop_assert_eq!(String::from_utf8(quick).unwrap(), String::from_utf8(owned).unwrap());
            }
        }

        /// What every answer must be: a webhook, or an error saying where, of bounded size.
        fn check(body: &[u8]) -> Result<(), TestCaseError> {
            match parse(body) {
                Ok(w) => {
                    prop_assert_eq!(w.version.as_ref(), "4");
                    let events = w.events();
                    prop_assert_eq!(events.len(), w.alerts.len());
                    for e in &events {
                        prop_assert!(!e.name.is_empty() && !e.fingerprint.is_empty());
                    }
                }
                Err(ParseError::Syntax { line, column, message }) => {
                    let lines = body.iter().filter(|b| **b == b'\n').count() + 1;
                    prop_assert!(line >= 1 && line <= lines, "line {} of {}", line, lines);
                    prop_assert!(column <= body.len() + 1);
                    prop_assert!(!message.is_empty() && message.len() <= MAX_MESSAGE);
                }
                Err(ParseError::Invalid { path, message }) => {
                    prop_assert!(!path.is_empty() && path.len() <= MAX_PATH, "path {:?}", path);
                    prop_assert!(!message.is_empty() && message.len() <= MAX_MESSAGE);
                }
            }
            Ok(())
        }

        const WORDS: &[&str] = &["firing", "resolved", "4", "2026-11-24T10:00:00Z"];
        const KEYS: &[&str] = &[
            "version",
            "receiver",
            "status",
            "alerts",
            "labels",
            "alertname",
            "startsAt",
            "fingerprint",
            "truncatedAlerts",
        ];

        fn json_value() -> impl Strategy<Value = serde_json::Value> {
            crate::sources::fuzzing::json_value(WORDS, KEYS)
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
                check(&body)?;
            }

            #[test]
            fn arbitrary_json_never_panics(v in json_value()) {
                check(v.to_string().as_bytes())?;
            }

            #[test]
            fn mutated_payloads_never_panic(edits in prop::collection::vec(crate::sources::fuzzing::edit(), 1..6)) {
                let mut body = FIRING.as_bytes().to_vec();
                for e in &edits {
                    crate::sources::fuzzing::apply(&mut body, e);
                }
                check(&body)?;
            }

            #[test]
            fn any_label_set_parses_and_keeps_its_labels(
                labels in prop::collection::btree_map(".{0,16}", ".{0,32}", 0..24),
                fingerprint in "[0-9a-f]{1,16}",
                starts in 0i64..4_000_000_000,
            ) {
                let mut labels = labels;
                labels.insert("alertname".into(), "A".into());
                let starts_at = chrono::DateTime::from_timestamp(starts, 0).unwrap();
                let body = serde_json::json!({
                    "version": "4", "receiver": "r", "status": "firing",
                    "alerts": [{"status": "firing", "labels": labels, "startsAt": starts_at, "fingerprint": fingerprint}],
                });
                let text = body.to_string();
                let w = parse(text.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let e = &w.events()[0];
                prop_assert_eq!(&e.labels, &labels);
                prop_assert_eq!(e.id.clone(), format!("{fingerprint}-{starts}"));
            }
        }
    }
}
