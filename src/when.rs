//! How a time is shown to a person: in a reason (a cooldown's end, a pause's start), the audit
//! table and the on-call page. UTC to the millisecond with a `Z`, the form `audit tail` prints,
//! so that a time in a reason is found in the table beside it. Keys and records keep their own
//! forms (a key's time is part of its identity): this is only for reading.

use chrono::{DateTime, SecondsFormat, Utc};

/// `t` as `2026-11-24T20:13:27.303Z`.
pub fn shown(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_is_shown_in_utc_to_the_millisecond_with_a_z() {
        let t = DateTime::parse_from_rfc3339("2026-12-03T17:24:55.719244347+01:00").unwrap().to_utc();
        assert_eq!(shown(&t), "2026-12-03T16:24:55.719Z");
        assert_eq!(shown(&DateTime::from_timestamp(1_795_550_591, 0).unwrap()), "2026-11-24T20:03:11.000Z");
    }
}
