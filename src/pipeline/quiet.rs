//! The log's "held" lines in an alert storm: one a minute per target and rule, with how many
//! were not written since. Every hold is in the audit log; the log only says that it goes on.
//! (50 held alerts a delivery, hundreds of deliveries a second, wrote 27,000 lines a second.)

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};

/// How long after a "held" line about a target and rule the next one waits.
pub const HELD_LOG_EVERY: Duration = Duration::seconds(60);

/// When a key last had a line, and how many were left out since.
#[derive(Default)]
pub struct LogQuiet(Mutex<HashMap<String, (DateTime<Utc>, u64)>>);

impl LogQuiet {
    /// Whether a line about `key` is written at `now`: `Some(left out since the last line)`, or
    /// `None` (counted, to be said with the next).
    pub fn line(&self, key: &str, now: DateTime<Utc>) -> Option<u64> {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get_mut(key) {
            Some((last, left_out)) if now - *last < HELD_LOG_EVERY => {
                *left_out += 1;
                None
            }
            Some((last, left_out)) => {
                let said = std::mem::take(left_out);
                *last = now;
                Some(said)
            }
            None => {
                // Keys of targets long quiet are forgotten, so the map stays small.
                seen.retain(|_, (last, _)| now - *last < HELD_LOG_EVERY * 10);
                seen.insert(key.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_minute_per_key_with_the_count_of_those_left_out() {
        let quiet = LogQuiet::default();
        let t0 = DateTime::from_timestamp(1_795_550_591, 0).unwrap();
        assert_eq!(quiet.line("a", t0), Some(0), "the first is written");
        for i in 1..=49 {
            assert_eq!(quiet.line("a", t0 + Duration::milliseconds(i)), None);
        }
        assert_eq!(quiet.line("b", t0 + Duration::seconds(1)), Some(0), "another key has its own minute");
        assert_eq!(quiet.line("a", t0 + Duration::seconds(59)), None);
        assert_eq!(quiet.line("a", t0 + Duration::seconds(60)), Some(50), "a minute on: written, with the 50 left out");
        assert_eq!(quiet.line("a", t0 + Duration::seconds(61)), None);
        assert_eq!(quiet.line("a", t0 + Duration::seconds(200)), Some(1));
    }
}
