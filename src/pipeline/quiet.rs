//! Once a period per key, the rest counted: the same refused body is recorded once per ten
//! minutes with its repeats (`reject`), and the log's "held" line is written once a minute per
//! target and rule with the holds not logged since (an alert storm of 50 held alerts a delivery
//! wrote 27,000 lines a second). Every hold and every refusal is counted; what is left out is
//! only a repeat.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};

/// How long after a "held" line about a target and rule the next one waits.
pub const HELD_LOG_EVERY: Duration = Duration::seconds(60);

/// Keys remembered at most (here and by the feedback findings' quiet): past this, those whose
/// period is over go, and if that is not enough, all (the saving is not a guarantee).
pub(super) const MEMORY: usize = 4096;

/// When each key was last said, and how many times it was left out since.
pub struct Quiet {
    period: Duration,
    seen: Mutex<HashMap<String, (DateTime<Utc>, u64)>>,
}

impl Quiet {
    pub fn new(period: Duration) -> Quiet {
        Quiet { period, seen: Mutex::default() }
    }

    /// Whether `key` is said at `now`: `Some(times left out since it was last said)`, the period
    /// starting again; or `None`, counted, to be said with the next.
    pub fn say(&self, key: &str, now: DateTime<Utc>) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get_mut(key) {
            Some((last, left_out)) if now - *last < self.period => {
                *left_out += 1;
                None
            }
            Some((last, left_out)) => {
                *last = now;
                Some(std::mem::take(left_out))
            }
            None => {
                if seen.len() >= MEMORY {
                    seen.retain(|_, (last, _)| now - *last < self.period);
                    if seen.len() >= MEMORY {
                        seen.clear();
                    }
                }
                seen.insert(key.to_string(), (now, 0));
                Some(0)
            }
        }
    }

    /// What [`Quiet::say`] let through was not said after all (its write failed): forgotten, so
    /// the next is said.
    pub fn unsay(&self, key: &str) {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_795_550_591, 0).unwrap()
    }

    #[test]
    fn once_a_period_per_key_with_the_count_of_those_left_out() {
        let quiet = Quiet::new(HELD_LOG_EVERY);
        let t0 = t0();
        assert_eq!(quiet.say("a", t0), Some(0), "the first is said");
        for i in 1..=49 {
            assert_eq!(quiet.say("a", t0 + Duration::milliseconds(i)), None);
        }
        assert_eq!(quiet.say("b", t0 + Duration::seconds(1)), Some(0), "another key has its own period");
        assert_eq!(quiet.say("a", t0 + Duration::seconds(59)), None);
        assert_eq!(quiet.say("a", t0 + Duration::seconds(60)), Some(50), "a period on: said, with the 50 left out");
        assert_eq!(quiet.say("a", t0 + Duration::seconds(61)), None);
        assert_eq!(quiet.say("a", t0 + Duration::seconds(200)), Some(1));
    }

    #[test]
    fn what_was_unsaid_is_said_next_time() {
        let quiet = Quiet::new(Duration::seconds(600));
        assert_eq!(quiet.say("body", t0()), Some(0));
        quiet.unsay("body");
        assert_eq!(quiet.say("body", t0() + Duration::seconds(1)), Some(0));
        assert_eq!(quiet.say("body", t0() + Duration::seconds(2)), None);
    }

    #[test]
    fn memory_is_bounded_dropping_expired_keys_first() {
        let quiet = Quiet::new(Duration::seconds(60));
        for i in 0..MEMORY {
            quiet.say(&format!("old{i}"), t0());
        }
        // A minute on, the old keys' periods are over: they go, the new key stays with the rest.
        quiet.say("recent", t0() + Duration::seconds(59));
        quiet.say("new", t0() + Duration::seconds(61));
        let seen = quiet.seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "the expired keys went");
        assert!(seen.contains_key("recent") && seen.contains_key("new"));
    }
}
