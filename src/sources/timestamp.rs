//! RFC 3339 timestamps as Alertmanager writes them (`2026-11-24T10:00:00.123Z`), read without
//! chrono's general format parser, which was a tenth of a webhook's parse (two timestamps an
//! alert). Anything else that RFC 3339 allows (an offset, a lower-case `t`, a leap second) goes
//! to chrono, so what is accepted and what it means do not change; only the common form is quicker.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use serde::Deserializer;

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` read directly; `None` for any other form (or a date or time
/// out of range), which the caller leaves to chrono.
pub fn parse_utc_fast(text: &str) -> Option<DateTime<Utc>> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if *b.last()? != b'Z' {
        return None;
    }
    let digits = |from: usize, to: usize| -> Option<u32> {
        b[from..to].iter().try_fold(0u32, |n, &c| c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0')))
    };
    let (year, month, day) = (digits(0, 4)?, digits(5, 7)?, digits(8, 10)?);
    let (hour, minute, second) = (digits(11, 13)?, digits(14, 16)?, digits(17, 19)?);
    let nanos = match &b[19..b.len() - 1] {
        [] => 0,
        [b'.', fraction @ ..] if !fraction.is_empty() && fraction.iter().all(u8::is_ascii_digit) => {
            // Nanoseconds: the first nine digits, the rest dropped (as chrono does).
            let kept = &fraction[..fraction.len().min(9)];
            let n = kept.iter().fold(0u32, |n, &c| n * 10 + u32::from(c - b'0'));
            n * 10u32.pow(9 - kept.len() as u32)
        }
        _ => return None,
    };
    // A leap second (`:60`) is chrono's to read.
    if second > 59 {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(year as i32, month, day)?;
    let time = NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?;
    Some(NaiveDateTime::new(date, time).and_utc())
}

/// Any RFC 3339 timestamp, the common form quickly.
pub fn parse_utc(text: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    match parse_utc_fast(text) {
        Some(t) => Ok(t),
        None => DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)),
    }
}

/// Reads a timestamp from the string as serde_json hands it over (borrowed from the body when it
/// has no escapes, as all of Alertmanager's do): no `String` per timestamp, which
/// `Cow<str>`'s own `Deserialize` (always owned) made two of per alert.
struct Timestamp;

impl serde::de::Visitor<'_> for Timestamp {
    type Value = DateTime<Utc>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an RFC 3339 timestamp (a string)")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<DateTime<Utc>, E> {
        parse_utc(text).map_err(E::custom)
    }
}

/// [`Timestamp`], or null.
struct MaybeTimestamp;

impl<'de> serde::de::Visitor<'de> for MaybeTimestamp {
    type Value = Option<DateTime<Utc>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an RFC 3339 timestamp (a string) or null")
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_str(Timestamp).map(Some)
    }
}

/// For `#[serde(deserialize_with = ...)]` on a `DateTime<Utc>`.
pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<DateTime<Utc>, D::Error> {
    de.deserialize_str(Timestamp)
}

/// For `#[serde(default, deserialize_with = ...)]` on an `Option<DateTime<Utc>>` (null is `None`).
pub fn deserialize_option<'de, D: Deserializer<'de>>(de: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    de.deserialize_option(MaybeTimestamp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chrono(text: &str) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc))
    }

    #[test]
    fn the_forms_alertmanager_writes_read_as_chrono_reads_them() {
        for text in [
            "2026-11-24T10:00:00.123Z",
            "2026-11-24T10:00:00Z",
            "0001-01-01T00:00:00Z",
            "2026-11-24T20:03:11.123456789Z",
            "2026-11-24T20:03:11.1234567891234Z",
            "2024-02-29T23:59:59.5Z",
        ] {
            assert_eq!(parse_utc_fast(text), chrono(text), "{text}");
            assert!(parse_utc_fast(text).is_some(), "{text} takes the quick path");
        }
    }

    #[test]
    fn fields_read_borrowed_escaped_null_or_missing_and_anything_else_is_refused() {
        #[derive(serde::Deserialize, Debug)]
        struct Alert {
            #[serde(deserialize_with = "deserialize")]
            at: DateTime<Utc>,
            #[serde(default, deserialize_with = "deserialize_option")]
            until: Option<DateTime<Utc>>,
        }
        let t = chrono("2026-11-24T10:00:00.5Z");
        let read = |json: &str| serde_json::from_str::<Alert>(json).map(|a| (Some(a.at), a.until));
        assert_eq!(read(r#"{"at":"2026-11-24T10:00:00.5Z"}"#).unwrap(), (t, None));
        assert_eq!(read(r#"{"at":"2026-11-24T10:00:00.5Z","until":null}"#).unwrap(), (t, None));
        // An escape makes serde_json hand over a copy rather than the body's bytes: same value.
        assert_eq!(read(r#"{"at":"2026-11-24T10:00:00.5\u005a","until":"2026-11-24T10:00:00.5Z"}"#).unwrap(), (t, t));
        let wrong = read(r#"{"at":5}"#).unwrap_err().to_string();
        assert!(wrong.contains("expected an RFC 3339 timestamp"), "{wrong}");
        let wrong = read(r#"{"at":"2026-11-24T10:00:00.5Z","until":true}"#).unwrap_err().to_string();
        assert!(wrong.contains("invalid type: boolean `true`, expected an RFC 3339 timestamp"), "{wrong}");
        let wrong = read(r#"{"at":"yesterday"}"#).unwrap_err().to_string();
        // chrono's reason, placed by serde_json.
        assert!(wrong.starts_with("premature end of input at line 1"), "{wrong}");
    }

    #[test]
    fn other_forms_go_to_chrono_with_the_same_meaning() {
        for text in
            ["2026-11-24T12:00:00+02:00", "2026-11-24t10:00:00z", "2026-11-24 10:00:00Z", "2016-12-31T23:59:60Z"]
        {
            assert_eq!(parse_utc_fast(text), None, "{text}");
            assert_eq!(parse_utc(text).ok(), chrono(text), "{text}");
        }
        assert_eq!(parse_utc("2026-11-24T12:00:00+02:00").unwrap(), parse_utc("2026-11-24T10:00:00Z").unwrap());
        for bad in ["", "2026-02-30T10:00:00Z", "2026-11-24T24:00:00Z", "2026-11-24T10:00:00.Z", "yesterday"] {
            assert!(parse_utc(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        /// Whatever the text, the quick path never disagrees with chrono: it reads the same
        /// instant, or leaves the text to chrono.
        #[test]
        fn never_disagrees_with_chrono(text in "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,12})?(Z|z|[+-][0-9]{2}:[0-9]{2})") {
            if let Some(t) = parse_utc_fast(&text) {
                prop_assert_eq!(Some(t), chrono(&text));
            }
            prop_assert_eq!(parse_utc(&text).ok(), chrono(&text));
        }

        #[test]
        fn any_instant_written_by_chrono_takes_the_quick_path(secs in -62_135_596_800i64..253_402_300_799, nanos in 0u32..1_000_000_000) {
            let t = DateTime::from_timestamp(secs, nanos).unwrap();
            for text in [t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true), t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)] {
                prop_assert_eq!(parse_utc_fast(&text), chrono(&text), "{}", text);
                prop_assert!(parse_utc_fast(&text).is_some());
            }
        }
    }
}
