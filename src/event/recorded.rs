//! Alerts as the audit log records them on arrival.
//!
//! Format 2 (this version): one `received` record per delivery (a webhook payload, a Kafka
//! message), its `detail` holding what the delivery says once (`delivery`: receiver, groupKey,
//! truncatedAlerts, externalURL (and, in records written before 2026-12-03, the body's SHA-256),
//! or the Kafka position) and then its alerts,
//! each with only what is its own:
//!
//! ```json
//! {"format":2,"delivery":{…},"alerts":[{"id":"a9c5…-1795550591","status":"firing","labels":{…},"starts_at":"…"}]}
//! ```
//!
//! An alert's `source` is the record's, its name its `alertname` label, its fingerprint its id
//! less the `-{startsAt as Unix seconds}` that ends it: nothing is written twice.
//!
//! Format 1 (logs written before it): one `received` record per alert, `event_id` and `source`
//! on the record and `detail: {"alert": <the whole Alert>, "delivery": {…}}`. Both read through
//! [`alerts_received`].

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::view::{AlertView, Labels};
use super::{Alert, AlertStatus, SourceKind};

/// The version of the `received` record of alerts this build writes (`detail.format`).
pub const RECEIVED_FORMAT: u32 = 2;

/// An alert of a format 2 `received` record, as written (borrowed from the [`Alert`]) and read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedAlert {
    pub id: String,
    pub status: AlertStatus,
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub starts_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub generator_url: String,
}

/// What [`RecordedAlert`] writes, without copying the alert (owned or read in place).
#[derive(Serialize)]
pub struct RecordedAlertRef<'a> {
    pub(crate) id: Text<'a>,
    pub(crate) status: AlertStatus,
    pub(crate) labels: LabelsRef<'a>,
    #[serde(skip_serializing_if = "LabelsRef::is_empty")]
    pub(crate) annotations: LabelsRef<'a>,
    pub(crate) starts_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ends_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Text::is_empty")]
    pub(crate) generator_url: Text<'a>,
}

/// A string to write, and whether it is known to need no escaping in JSON: text read in place
/// from a JSON body without escapes holds no quote, backslash or control character (the parser
/// refuses raw ones), so its JSON is itself between quotes, as serde_json would write it.
#[derive(Clone, Copy)]
pub enum Text<'a> {
    Any(&'a str),
    Verbatim(&'a str),
}

impl<'a> Text<'a> {
    /// Verbatim when the text was borrowed from a JSON body (no escapes in it).
    pub fn of(text: &'a Cow<'a, str>) -> Text<'a> {
        match text {
            Cow::Borrowed(s) => Text::Verbatim(s),
            Cow::Owned(s) => Text::Any(s),
        }
    }

    fn as_str(&self) -> &'a str {
        match *self {
            Text::Any(s) | Text::Verbatim(s) => s,
        }
    }

    fn is_empty(&self) -> bool {
        self.as_str().is_empty()
    }

    fn write(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        match *self {
            Text::Verbatim(s) => {
                out.reserve(s.len() + 2);
                out.push(b'"');
                out.extend_from_slice(s.as_bytes());
                out.push(b'"');
                Ok(())
            }
            Text::Any(s) => serde_json::to_writer(out, s),
        }
    }
}

impl Serialize for Text<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Labels as written: an owned alert's map or labels read in place (the same JSON either way).
#[derive(Clone, Copy)]
pub enum LabelsRef<'a> {
    Map(&'a BTreeMap<String, String>),
    InPlace(&'a Labels<'a>),
}

impl LabelsRef<'_> {
    fn is_empty(&self) -> bool {
        match self {
            LabelsRef::Map(m) => m.is_empty(),
            LabelsRef::InPlace(l) => l.is_empty(),
        }
    }

    fn write(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        match self {
            LabelsRef::Map(m) => serde_json::to_writer(out, m),
            LabelsRef::InPlace(l) => {
                out.push(b'{');
                for (i, (k, v)) in l.pairs().iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    Text::of(k).write(out)?;
                    out.push(b':');
                    Text::of(v).write(out)?;
                }
                out.push(b'}');
                Ok(())
            }
        }
    }
}

impl Serialize for LabelsRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            LabelsRef::Map(m) => m.serialize(s),
            LabelsRef::InPlace(l) => l.serialize(s),
        }
    }
}

impl<'a> From<&'a Alert> for RecordedAlertRef<'a> {
    fn from(a: &'a Alert) -> Self {
        RecordedAlertRef {
            id: Text::Any(&a.id),
            status: a.status,
            labels: LabelsRef::Map(&a.labels),
            annotations: LabelsRef::Map(&a.annotations),
            starts_at: a.starts_at,
            ends_at: a.ends_at,
            generator_url: Text::Any(&a.generator_url),
        }
    }
}

impl RecordedAlert {
    /// The alert again, with the record's `source`.
    pub fn into_alert(self, source: SourceKind) -> Alert {
        // The id is `{fingerprint}-{startsAt as Unix seconds}` (see `sources::alertmanager::event_id`);
        // one that does not end so (a damaged record) is its own fingerprint.
        let suffix = format!("-{}", self.starts_at.timestamp());
        let fingerprint = self.id.strip_suffix(&suffix).unwrap_or(&self.id).to_string();
        Alert {
            name: self.labels.get("alertname").cloned().unwrap_or_default(),
            id: self.id,
            source,
            status: self.status,
            labels: self.labels,
            annotations: self.annotations,
            starts_at: self.starts_at,
            ends_at: self.ends_at,
            fingerprint,
            generator_url: self.generator_url,
        }
    }
}

/// The `detail` of a format 2 `received` record of alerts, as read back.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AlertsRecord {
    pub format: u32,
    /// Where the alerts came from: the webhook's receiver, groupKey, truncatedAlerts,
    /// externalURL and the body's `sha256`; a Kafka message's `kafka` position.
    #[serde(default)]
    pub delivery: Value,
    pub alerts: Vec<RecordedAlert>,
}

/// What [`AlertsRecord`] writes, borrowing the delivery's alerts.
#[derive(Serialize)]
pub struct AlertsRecordRef<'a> {
    format: u32,
    delivery: &'a Value,
    alerts: Vec<RecordedAlertRef<'a>>,
}

impl AlertsRecordRef<'_> {
    /// The record's JSON, byte for byte as serde_json writes it, but text read in place without
    /// escapes is copied, not scanned for characters to escape again (a tenth of a 50-alert
    /// payload's CPU). `capacity`: about the bytes it takes.
    pub fn to_json(&self, capacity: usize) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = Vec::with_capacity(capacity);
        out.extend_from_slice(format!("{{\"format\":{},\"delivery\":", self.format).as_bytes());
        serde_json::to_writer(&mut out, self.delivery)?;
        out.extend_from_slice(b",\"alerts\":[");
        for (i, a) in self.alerts.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // The fields in the order, and with the omissions, of the derived `Serialize`.
            out.extend_from_slice(b"{\"id\":");
            a.id.write(&mut out)?;
            out.extend_from_slice(b",\"status\":");
            serde_json::to_writer(&mut out, &a.status)?;
            out.extend_from_slice(b",\"labels\":");
            a.labels.write(&mut out)?;
            if !a.annotations.is_empty() {
                out.extend_from_slice(b",\"annotations\":");
                a.annotations.write(&mut out)?;
            }
            out.extend_from_slice(b",\"starts_at\":");
            write_time(&mut out, &a.starts_at)?;
            if let Some(ends_at) = &a.ends_at {
                out.extend_from_slice(b",\"ends_at\":");
                write_time(&mut out, ends_at)?;
            }
            if !a.generator_url.is_empty() {
                out.extend_from_slice(b",\"generator_url\":");
                a.generator_url.write(&mut out)?;
            }
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
        Ok(out)
    }
}

/// A time as serde_json writes a `DateTime<Utc>` (chrono's RFC 3339: `Z`, and a fraction of 3, 6
/// or 9 digits only when there is one), without the formatting machinery that took a twelfth
/// of a 50-alert delivery's CPU. Years outside 0-9999 and leap seconds go through serde_json.
fn write_time(out: &mut Vec<u8>, t: &DateTime<Utc>) -> Result<(), serde_json::Error> {
    let (year, nanos) = (t.year(), t.nanosecond());
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return serde_json::to_writer(out, t);
    }
    let two = |out: &mut Vec<u8>, n: u32| out.extend_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8]);
    out.push(b'"');
    two(out, year as u32 / 100);
    two(out, year as u32 % 100);
    out.push(b'-');
    two(out, t.month());
    out.push(b'-');
    two(out, t.day());
    out.push(b'T');
    two(out, t.hour());
    out.push(b':');
    two(out, t.minute());
    out.push(b':');
    two(out, t.second());
    let (value, digits) = match nanos {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (n / 1_000_000, 3),
        n if n % 1_000 == 0 => (n / 1_000, 6),
        n => (n, 9),
    };
    if digits > 0 {
        out.push(b'.');
        let mut buf = itoa::Buffer::new();
        let text = buf.format(value);
        out.extend(std::iter::repeat_n(b'0', digits - text.len()));
        out.extend_from_slice(text.as_bytes());
    }
    out.extend_from_slice(b"Z\"");
    Ok(())
}

impl AlertsRecord {
    /// The detail to write for `alerts`, delivered together (`delivery` says how).
    pub fn of<'a, A: AlertView>(delivery: &'a Value, alerts: &'a [A]) -> AlertsRecordRef<'a> {
        AlertsRecordRef { format: RECEIVED_FORMAT, delivery, alerts: alerts.iter().map(AlertView::recorded).collect() }
    }
}

/// The alerts a `received` record holds, in either format: format 2's list, or format 1's one
/// `alert`. `source` is the record's. `None` when the detail holds no alerts (a feedback event)
/// or does not read as either format.
pub fn alerts_received(detail: Option<&Value>, source: Option<&str>) -> Option<Vec<Alert>> {
    let detail = detail?;
    if let Some(alert) = detail.get("alert") {
        return Alert::deserialize(alert).ok().map(|a| vec![a]);
    }
    detail.get("alerts")?;
    let record = AlertsRecord::deserialize(detail).ok()?;
    let source = source.and_then(|s| serde_json::from_value(Value::from(s)).ok()).unwrap_or(SourceKind::Alertmanager);
    Some(record.alerts.into_iter().map(|a| a.into_alert(source)).collect())
}

/// What stands for a delivery's alerts where one id fits (the id column of `audit query`, the
/// on-call page's timeline): its one alert's id, or how many alerts it holds; `None` for none.
pub fn alerts_label<'a>(mut ids: impl ExactSizeIterator<Item = &'a str>) -> Option<String> {
    match ids.len() {
        0 => None,
        1 => ids.next().map(str::to_string),
        n => Some(format!("{n} alerts")),
    }
}

/// The ids of the alerts a format 2 `received` record holds (empty for any other detail),
/// without reading the rest of each alert.
pub fn alert_ids(detail: Option<&Value>) -> Vec<String> {
    #[derive(Deserialize)]
    struct Id {
        id: String,
    }
    #[derive(Deserialize)]
    struct Ids {
        alerts: Vec<Id>,
    }
    match detail.filter(|d| d.get("alerts").is_some()).map(Ids::deserialize) {
        Some(Ok(ids)) => ids.alerts.into_iter().map(|i| i.id).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_delivery_is_labelled_by_its_one_alert_or_how_many_it_holds() {
        assert_eq!(alerts_label([].into_iter()), None);
        assert_eq!(alerts_label(["a1"].into_iter()).as_deref(), Some("a1"));
        assert_eq!(alerts_label(["a1", "a2", "a3"].into_iter()).as_deref(), Some("3 alerts"));
    }

    #[test]
    fn times_are_written_as_serde_json_writes_them() {
        let cases = [
            (0, 0),
            (1_795_550_591, 0),
            (1_795_550_591, 250_000_000),
            (1_795_550_591, 1_000),
            (1_795_550_591, 123_456_000),
            (1_795_550_591, 7),
            (1_795_550_591, 999_999_999),
            (-62_135_596_800, 0),           // 0001-01-01T00:00:00Z, Alertmanager's "no end"
            (-62_198_755_200, 0),           // the year 0 begins
            (-62_198_755_201, 0),           // the year -1 ends: not four digits
            (253_402_300_799, 0),           // 9999-12-31T23:59:59Z
            (253_402_300_800, 0),           // 10000-01-01: five digits
            (1_483_228_799, 1_500_000_000), // a leap second
        ];
        for (secs, nanos) in cases {
            let t = DateTime::from_timestamp(secs, nanos).unwrap();
            let mut quick = Vec::new();
            write_time(&mut quick, &t).unwrap();
            assert_eq!(String::from_utf8(quick).unwrap(), serde_json::to_string(&t).unwrap(), "{secs} {nanos}");
        }
    }

    fn alert(fingerprint: &str, starts: i64, source: SourceKind) -> Alert {
        let starts_at = DateTime::from_timestamp(starts, 250_000_000).unwrap();
        let labels: BTreeMap<String, String> =
            [("alertname", "CanaryHighErrorRate"), ("namespace", "sms-app"), ("severity", "critical")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        Alert {
            id: format!("{fingerprint}-{}", starts_at.timestamp()),
            source,
            name: "CanaryHighErrorRate".into(),
            status: AlertStatus::Firing,
            labels,
            annotations: BTreeMap::new(),
            starts_at,
            ends_at: None,
            fingerprint: fingerprint.into(),
            generator_url: String::new(),
        }
    }

    #[test]
    fn a_delivery_of_alerts_reads_back_as_the_same_alerts() {
        let mut resolved = alert("b2", 1_795_550_591, SourceKind::Kafka);
        resolved.status = AlertStatus::Resolved;
        resolved.ends_at = Some(resolved.starts_at + chrono::Duration::minutes(5));
        resolved.annotations.insert("summary".into(), "error rate \"high\"".into());
        resolved.generator_url = "http://prometheus:9090/graph?g0.expr=x".into();
        // A fingerprint with dashes and an alert from before 1970: the id still splits right.
        let odd = alert("a-b-c", -100, SourceKind::Kafka);
        let alerts = vec![alert("a9c5c3b76558e44d", 1_795_550_591, SourceKind::Kafka), resolved, odd];
        let delivery = json!({"kafka": {"topic": "alerts", "partition": 0, "offset": 7}});
        let detail = serde_json::to_value(AlertsRecord::of(&delivery, &alerts)).unwrap();
        assert_eq!(detail["format"], RECEIVED_FORMAT);
        assert_eq!(alerts_received(Some(&detail), Some("kafka")).unwrap(), alerts);
        assert_eq!(alert_ids(Some(&detail)), alerts.iter().map(|a| a.id.clone()).collect::<Vec<_>>());
        let back = AlertsRecord::deserialize(&detail).unwrap();
        assert_eq!(back.delivery, delivery);
    }

    #[test]
    fn nothing_is_written_twice_for_an_alert() {
        let alerts = vec![alert("a9c5c3b76558e44d", 1_795_550_591, SourceKind::Alertmanager)];
        let text = serde_json::to_string(&AlertsRecord::of(&Value::Null, &alerts)).unwrap();
        // The fingerprint only inside the id, the name only as the alertname label, no source.
        assert_eq!(text.matches("a9c5c3b76558e44d").count(), 1, "{text}");
        assert_eq!(text.matches("CanaryHighErrorRate").count(), 1, "{text}");
        assert!(!text.contains("alertmanager") && !text.contains("\"name\""), "{text}");
    }

    #[test]
    fn a_format_1_record_reads_as_its_one_alert() {
        let a = alert("f1", 1_795_550_591, SourceKind::Alertmanager);
        let detail = json!({"alert": a, "delivery": {"receiver": "backstop"}});
        assert_eq!(alerts_received(Some(&detail), Some("alertmanager")).unwrap(), vec![a]);
        assert!(alert_ids(Some(&detail)).is_empty(), "format 1 carries its id on the record");
        assert_eq!(alerts_received(Some(&json!({"feedback": {}})), Some("kafka")), None);
    }
}
