//! Messages that arrive on a bus (Kafka today) rather than as Alertmanager webhooks: alerts in
//! Alertmanager's shape, feedback events about a canary, either plain JSON or wrapped in a
//! CloudEvents envelope — structured mode (`specversion`, `type`, `data` in the body) or the Kafka
//! binding's binary mode (`ce_*` headers, the data as the body). Pure: bytes and headers in,
//! events out, with the path of whatever is wrong.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::event::{Alert, AlertStatus, Feedback, FeedbackKind, SourceKind};
use crate::sources::alertmanager;

/// CloudEvents `type` of a feedback event.
pub const FEEDBACK_TYPE: &str = "io.backstop.feedback.v1";
/// CloudEvents `type` of an alert (one Alertmanager alert, or a whole webhook payload).
pub const ALERT_TYPE: &str = "io.backstop.alert.v1";

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

/// Every error is made here: its path and message are bounded (serde and our own messages echo
/// what was sent, headers included, and a hostile message makes those as long as itself).
fn err(path: impl Into<String>, message: impl Into<String>) -> MessageError {
    MessageError {
        path: alertmanager::elide(&path.into(), alertmanager::MAX_PATH),
        message: alertmanager::elide(&message.into(), alertmanager::MAX_MESSAGE),
    }
}

/// What a topic is expected to carry when the message does not say (plain JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Alerts,
    Feedback,
}

/// Parse one message. `headers` are the Kafka record's headers (name, value).
pub fn parse(expect: Expect, headers: &[(&str, &[u8])], payload: &[u8]) -> Result<Message, MessageError> {
    // Plain feedback, the stream's common case: straight from the bytes, with no `Value` in
    // between and no path tracked. Whatever might be a CloudEvent (a `ce_type` header, the word
    // `specversion`, an escape that could spell it) or fails takes the general path below,
    // which says where it is wrong.
    if expect == Expect::Feedback
        && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("ce_type"))
        && !contains(payload, b"specversion")
        && !payload.contains(&b'\\')
        && let Ok(f) = serde_json::from_slice::<Feedback>(payload)
    {
        return checked(f, "").map(Message::Feedback);
    }
    parse_general(expect, headers, payload)
}

/// Any message, through a JSON `Value` (CloudEvents' envelope first), with paths in errors.
fn parse_general(expect: Expect, headers: &[(&str, &[u8])], payload: &[u8]) -> Result<Message, MessageError> {
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
    let f: Feedback = serde_path_to_error::deserialize(data)
        .map_err(|e| err(join(prefix, &e.path().to_string()), e.into_inner().to_string()))?;
    checked(f, prefix)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// What serde cannot say of a feedback event: empty names, numbers that are not numbers.
fn checked(f: Feedback, prefix: &str) -> Result<Feedback, MessageError> {
    let bad = |field: &str, why: &str| err(format!("{prefix}{field}"), why.to_string());
    if f.service.is_empty() {
        return Err(bad("service", "must not be empty"));
    }
    if f.version.is_empty() {
        return Err(bad("version", "must not be empty"));
    }
    if f.request_id.as_deref() == Some("") {
        return Err(bad("request_id", "must not be empty"));
    }
    match f.attempt {
        Some(0) => return Err(bad("attempt", "must be at least 1")),
        Some(_) if f.request_id.is_none() => return Err(bad("attempt", "needs a `request_id`")),
        _ => {}
    }
    match f.kind {
        FeedbackKind::Score { score } if !score.is_finite() => Err(bad("score", "must be a finite number")),
        FeedbackKind::Outcome { latency_ms: Some(l), .. } if !l.is_finite() || l < 0.0 => {
            Err(bad("latency_ms", "must be a finite number >= 0"))
        }
        _ => Ok(f),
    }
}

/// A serde path (`.` for the whole value) under `prefix` (`data.` in a CloudEvent): the whole
/// value is `.`, or the envelope's `data`. Only a JSON syntax error has no path.
fn join(prefix: &str, path: &str) -> String {
    match (prefix, path) {
        ("", p) => p.to_string(),
        (prefix, ".") => prefix.trim_end_matches('.').to_string(),
        (prefix, p) => format!("{prefix}{p}"),
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
        .map_err(|e| err(join(prefix, &e.path().to_string()), e.into_inner().to_string()))?;
    if a.labels.get("alertname").is_none_or(String::is_empty) {
        return Err(err(format!("{prefix}labels.alertname"), "missing: every alert needs an alertname label"));
    }
    // Like Alertmanager: resolved when endsAt has passed, else firing.
    let status = a.status.unwrap_or(match a.ends_at {
        Some(t) if t.timestamp() > 0 && t <= Utc::now() => AlertStatus::Resolved,
        _ => AlertStatus::Firing,
    });
    let fingerprint = a.fingerprint.filter(|f| !f.is_empty()).unwrap_or_else(|| fingerprint(&a.labels));
    Ok(vec![Alert {
        id: alertmanager::event_id(&fingerprint, a.starts_at),
        source: SourceKind::Kafka,
        name: a.labels.get("alertname").cloned().unwrap_or_default(),
        status,
        labels: a.labels,
        annotations: a.annotations,
        starts_at: a.starts_at,
        ends_at: alertmanager::ends_at(a.ends_at),
        fingerprint,
        generator_url: a.generator_url,
    }])
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
    crate::digest::hex(&h.finalize()[..8])
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
    fn a_retried_requests_id_and_attempt_are_read_and_checked() {
        let attempt = json!({"service": "m", "version": "v2", "time": "2026-11-24T20:00:00Z", "kind": "outcome",
                             "success": false, "request_id": "req-7", "attempt": 2});
        let Message::Feedback(f) = parse(Expect::Feedback, &[], attempt.to_string().as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!((f.request_id.as_deref(), f.attempt), (Some("req-7"), Some(2)));
        let bad = |body: &str| parse(Expect::Feedback, &[], body.as_bytes()).unwrap_err();
        let base = r#""service":"m","version":"v2","time":"2026-11-24T20:00:00Z","kind":"outcome","success":false"#;
        let e = bad(&format!(r#"{{{base},"request_id":"r","attempt":"two"}}"#));
        assert_eq!(e.path, "attempt", "{e}");
        assert!(e.message.contains("invalid type"), "{e}");
        let e = bad(&format!(r#"{{{base},"request_id":7}}"#));
        assert_eq!(e.path, "request_id", "{e}");
        let e = bad(&format!(r#"{{{base},"request_id":"r","attempt":0}}"#));
        assert_eq!((e.path.as_str(), e.message.as_str()), ("attempt", "must be at least 1"));
        let e = bad(&format!(r#"{{{base},"attempt":2}}"#));
        assert_eq!((e.path.as_str(), e.message.as_str()), ("attempt", "needs a `request_id`"));
        let e = bad(&format!(r#"{{{base},"request_id":""}}"#));
        assert_eq!((e.path.as_str(), e.message.as_str()), ("request_id", "must not be empty"));
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
        // JSON that is not feedback at all is about the whole value (`.`), not a syntax error.
        assert_eq!(parse(Expect::Feedback, &[], b"5").unwrap_err().path, ".");
        assert_eq!(parse(Expect::Feedback, &[], b"{}").unwrap_err().path, ".");
        assert_eq!(parse(Expect::Alerts, &[], b"[]").unwrap_err().path, ".");
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

    #[test]
    fn hostile_messages_are_bounded_errors_that_say_where() {
        // 100,000 nested arrays: the recursion limit, with its position.
        let e = parse(Expect::Feedback, &[], "[".repeat(100_000).as_bytes()).unwrap_err();
        assert!(e.message.starts_with("invalid JSON at line 1, column 128"), "{e}");
        assert!(e.message.contains("recursion limit"), "{e}");
        // A megabyte-long CloudEvents header value (binary mode) is not echoed whole.
        let long = "t".repeat(1 << 20);
        let headers: Vec<(&str, &[u8])> = vec![("ce_specversion", b"1.0"), ("ce_type", long.as_bytes())];
        let e = parse(Expect::Feedback, &headers, b"{}").unwrap_err();
        assert_eq!(e.path, "type");
        assert!(e.to_string().len() <= alertmanager::MAX_MESSAGE + 20, "{}", e.to_string().len());
        // Nor a megabyte-long value serde echoes.
        let body = format!(r#"{{"service":"m","version":"v2","time":"2026-11-24T20:00:00Z","kind":"{long}"}}"#);
        let e = parse(Expect::Feedback, &[], body.as_bytes()).unwrap_err();
        assert!(e.message.len() <= alertmanager::MAX_MESSAGE && e.message.contains("unknown variant"), "{e}");
        // Invalid UTF-8: a syntax error with its position.
        let e = parse(Expect::Feedback, &[], b"{\"service\":\"\xff\"}").unwrap_err();
        assert!(e.path.is_empty() && e.message.starts_with("invalid JSON at line 1, column"), "{e}");
    }

    mod properties {
        use super::super::*;
        use super::FEEDBACK;
        use proptest::prelude::*;

        /// Every answer is a message, or an error whose path and message are bounded; a
        /// message's error without a path is a JSON syntax error that names line and column.
        fn check(expect: Expect, headers: &[(&str, &[u8])], payload: &[u8]) -> Result<(), TestCaseError> {
            match parse(expect, headers, payload) {
                Ok(Message::Feedback(f)) => {
                    prop_assert!(!f.service.is_empty() && !f.version.is_empty());
                }
                Ok(Message::Alerts(a)) => {
                    prop_assert!(!a.is_empty() || payload.windows(8).any(|w| w == b"\"alerts\""));
                    for alert in &a {
                        prop_assert!(!alert.name.is_empty() && !alert.fingerprint.is_empty());
                    }
                }
                Err(e) => {
                    prop_assert!(e.path.len() <= alertmanager::MAX_PATH, "{:?}", e.path);
                    prop_assert!(!e.message.is_empty() && e.message.len() <= alertmanager::MAX_MESSAGE);
                    if e.path.is_empty() {
                        prop_assert!(e.message.starts_with("invalid JSON at line "), "no place named: {}", e);
                    }
                }
            }
            Ok(())
        }

        const WORDS: &[&str] =
            &["1.0", FEEDBACK_TYPE, ALERT_TYPE, "satisfaction", "score", "outcome", "2026-11-24T20:00:00Z", "v2"];
        const KEYS: &[&str] = &[
            "specversion",
            "type",
            "data",
            "id",
            "time",
            "service",
            "version",
            "kind",
            "satisfied",
            "score",
            "success",
            "latency_ms",
            "labels",
            "alertname",
            "startsAt",
            "alerts",
        ];

        fn json_value() -> impl Strategy<Value = serde_json::Value> {
            crate::sources::fuzzing::json_value(WORDS, KEYS)
        }

        fn expect() -> impl Strategy<Value = Expect> {
            prop_oneof![Just(Expect::Feedback), Just(Expect::Alerts)]
        }

        fn ce_headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
            let name = prop_oneof![
                Just("ce_type".to_string()),
                Just("ce_specversion".to_string()),
                Just("ce_id".to_string()),
                Just("ce_time".to_string()),
                Just("CE_TYPE".to_string()),
                "[a-z_]{1,10}",
            ];
            let value = prop_oneof![
                Just(b"1.0".to_vec()),
                Just(FEEDBACK_TYPE.as_bytes().to_vec()),
                Just(ALERT_TYPE.as_bytes().to_vec()),
                Just(b"2026-11-24T22:00:00Z".to_vec()),
                prop::collection::vec(any::<u8>(), 0..24),
            ];
            prop::collection::vec((name, value), 0..5)
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(
                expect in expect(),
                headers in ce_headers(),
                payload in prop::collection::vec(any::<u8>(), 0..256),
            ) {
                let headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
                check(expect, &headers, &payload)?;
            }

            #[test]
            fn arbitrary_json_and_cloudevents_never_panic(
                expect in expect(),
                headers in ce_headers(),
                v in json_value(),
            ) {
                let headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
                check(expect, &headers, v.to_string().as_bytes())?;
            }

            #[test]
            fn mutated_feedback_never_panics(
                edits in prop::collection::vec(crate::sources::fuzzing::edit(), 1..6),
                wrap in any::<bool>(),
            ) {
                let mut body = if wrap {
                    format!(r#"{{"specversion":"1.0","id":"x","type":"{FEEDBACK_TYPE}","data":{FEEDBACK}}}"#).into_bytes()
                } else {
                    FEEDBACK.as_bytes().to_vec()
                };
                for e in &edits {
                    crate::sources::fuzzing::apply(&mut body, e);
                }
                check(Expect::Feedback, &[], &body)?;
                // Plain feedback is parsed straight from the bytes: it must say what the
                // general path (through a Value, with paths) says, error or event.
                prop_assert_eq!(parse(Expect::Feedback, &[], &body), parse_general(Expect::Feedback, &[], &body));
            }

            #[test]
            fn the_fast_path_for_plain_feedback_agrees_with_the_general_one(v in json_value()) {
                let body = v.to_string().into_bytes();
                prop_assert_eq!(parse(Expect::Feedback, &[], &body), parse_general(Expect::Feedback, &[], &body));
            }

            #[test]
            fn every_valid_feedback_event_round_trips(
                service in "[a-z][a-z0-9-]{0,20}",
                version in "v[0-9]{1,3}",
                id in prop::option::of("[ -~]{1,20}"),
                request_id in prop::option::of("[ -~]{1,20}"),
                attempt in prop::option::of(1u32..10),
                kind in prop_oneof![
                    any::<bool>().prop_map(|satisfied| FeedbackKind::Satisfaction { satisfied }),
                    (-1e9f64..1e9).prop_map(|score| FeedbackKind::Score { score }),
                    (any::<bool>(), prop::option::of(0f64..1e6))
                        .prop_map(|(success, latency_ms)| FeedbackKind::Outcome { success, latency_ms }),
                ],
            ) {
                let attempt = request_id.as_ref().and(attempt);
                let f = Feedback {
                    id, namespace: "ns".into(), service, version,
                    time: "2026-11-24T20:00:00Z".parse().unwrap(), request_id, attempt, kind,
                };
                let parsed = parse(Expect::Feedback, &[], &serde_json::to_vec(&f).unwrap())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(parsed, Message::Feedback(f));
            }
        }
    }
}
