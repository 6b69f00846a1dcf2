//! The pure part of leadership: given the Lease as last read and when this replica saw it
//! change, what to do next. No I/O and no clock of its own: the caller passes `now`.
//!
//! The rules, those of Kubernetes leader election (client-go's `leaderelection`), with the
//! margins backstop needs for fencing:
//! - A Lease nobody holds is taken. A Lease held by another is taken only once it has expired
//!   **by this replica's own clock**: its record has not changed for `duration` since this
//!   replica first saw it as it is (the holder's `renewTime` is never compared with this clock,
//!   so clock offsets between nodes do not matter, only their drift over one lease).
//! - Taking a Lease held by another (or released) increments `leaseTransitions`: that number is
//!   the new leader's **epoch**, carried by what it writes so readers can drop a deposed leader's.
//! - The holder renews every `renew_every`; it counts as leader, and may act and acknowledge,
//!   only until `duration - margin` after the moment it *sent* its last successful renewal. A
//!   candidate waits the whole `duration` after it last saw a change, so the two never overlap
//!   while the clocks drift by less than `margin` over one lease.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// A `coordination.k8s.io/v1` Lease's spec, as backstop reads and writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// `holderIdentity`: who holds it (None or empty: released).
    pub holder: Option<String>,
    /// `leaseDurationSeconds`.
    pub duration: Duration,
    /// `acquireTime`: when the holder took it.
    pub acquired: Option<DateTime<Utc>>,
    /// `renewTime`: when the holder last renewed it (by the holder's clock; informational).
    pub renewed: Option<DateTime<Utc>>,
    /// `leaseTransitions`: how many times it changed hands; the holder's epoch.
    pub transitions: u32,
}

impl LeaseRecord {
    /// The holder, if anyone holds it.
    pub fn holder(&self) -> Option<&str> {
        self.holder.as_deref().filter(|h| !h.is_empty())
    }
}

/// How long a lease lasts, how often its holder renews it, and the margin its holder keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub duration: Duration,
    pub renew_every: Duration,
    /// The holder stops acting this long before its lease would expire.
    pub margin: Duration,
}

impl Default for Timing {
    /// A 10 s lease renewed every 2 s, acted on until 3 s before it ends.
    fn default() -> Timing {
        Timing {
            duration: Duration::from_secs(10),
            renew_every: Duration::from_secs(2),
            margin: Duration::from_secs(3),
        }
    }
}

impl Timing {
    /// Whether the timing can work: a holder must renew (with time to spare) before it stops
    /// acting, and the margin must be less than the lease.
    pub fn check(&self) -> Result<(), String> {
        if self.duration.is_zero() || self.renew_every.is_zero() {
            return Err("lease duration and renewal period must be longer than 0s".into());
        }
        if self.margin >= self.duration {
            return Err(format!("the margin ({:?}) must be shorter than the lease ({:?})", self.margin, self.duration));
        }
        if self.renew_every * 2 > self.duration - self.margin {
            return Err(format!(
                "renewing every {:?} leaves no second try within the {:?} a holder may act (lease {:?} less margin {:?})",
                self.renew_every,
                self.duration - self.margin,
                self.duration,
                self.margin
            ));
        }
        Ok(())
    }
}

/// What this replica does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write this record, conditionally on the version read: taking the Lease (nobody holds it,
    /// or its holder's lease expired by this replica's clock) or renewing it (this replica holds
    /// it). Its `transitions` is the epoch this replica leads in once the write succeeds.
    Write(LeaseRecord),
    /// Another replica holds it: follow it; look again at `recheck` (when it would have expired
    /// if it is not renewed by then).
    Follow { holder: String, recheck: DateTime<Utc> },
}

/// The next step for replica `me` at `now`, given the Lease as last read (None: there is none
/// yet) and when this replica first saw it as it is (`seen`).
pub fn next(me: &str, now: DateTime<Utc>, current: Option<&LeaseRecord>, seen: DateTime<Utc>, timing: &Timing) -> Step {
    let take = |transitions: u32| LeaseRecord {
        holder: Some(me.to_string()),
        duration: timing.duration,
        acquired: Some(now),
        renewed: Some(now),
        transitions,
    };
    let Some(current) = current else { return Step::Write(take(0)) };
    match current.holder() {
        Some(holder) if holder == me => {
            Step::Write(LeaseRecord { renewed: Some(now), duration: timing.duration, ..current.clone() })
        }
        Some(holder) => {
            // The holder's own duration, not ours: during a rolling change of the setting the
            // longer of the two is waited out.
            let expires = seen + to_chrono(current.duration.max(timing.duration));
            if now >= expires {
                Step::Write(take(current.transitions + 1))
            } else {
                Step::Follow { holder: holder.to_string(), recheck: expires }
            }
        }
        None => Step::Write(take(current.transitions + 1)),
    }
}

/// Until when a holder whose renewal was sent at `sent` may act: `duration - margin` later.
pub fn acts_until(sent: DateTime<Utc>, timing: &Timing) -> DateTime<Utc> {
    sent + to_chrono(timing.duration.saturating_sub(timing.margin))
}

fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 2, 3, 0, 0).unwrap() + chrono::Duration::seconds(secs)
    }

    fn held_by(holder: &str, transitions: u32) -> LeaseRecord {
        LeaseRecord {
            holder: Some(holder.into()),
            duration: Duration::from_secs(10),
            acquired: Some(t(-100)),
            renewed: Some(t(-1)),
            transitions,
        }
    }

    #[test]
    fn a_missing_lease_is_created_in_epoch_zero() {
        let step = next("a", t(0), None, t(0), &Timing::default());
        let Step::Write(r) = step else { panic!("{step:?}") };
        assert_eq!((r.holder(), r.transitions, r.acquired, r.renewed), (Some("a"), 0, Some(t(0)), Some(t(0))));
    }

    #[test]
    fn the_holder_renews_keeping_its_epoch_and_acquire_time() {
        let step = next("a", t(5), Some(&held_by("a", 3)), t(0), &Timing::default());
        let Step::Write(r) = step else { panic!("{step:?}") };
        assert_eq!((r.transitions, r.acquired, r.renewed), (3, Some(t(-100)), Some(t(5))));
    }

    #[test]
    fn another_holder_is_followed_until_its_lease_expires_by_our_own_clock() {
        let timing = Timing::default();
        let lease = held_by("b", 3);
        // First seen at t(20): its renewTime (t(-1), by b's clock) does not count, our sighting does.
        assert_eq!(next("a", t(29), Some(&lease), t(20), &timing), Step::Follow { holder: "b".into(), recheck: t(30) });
        let step = next("a", t(30), Some(&lease), t(20), &timing);
        let Step::Write(r) = step else { panic!("{step:?}") };
        assert_eq!((r.holder(), r.transitions, r.acquired), (Some("a"), 4, Some(t(30))), "a new epoch");
    }

    #[test]
    fn a_released_lease_is_taken_at_once_in_a_new_epoch() {
        let released = LeaseRecord { holder: Some(String::new()), ..held_by("b", 7) };
        let Step::Write(r) = next("a", t(0), Some(&released), t(0), &Timing::default()) else { panic!() };
        assert_eq!((r.holder(), r.transitions), (Some("a"), 8));
    }

    #[test]
    fn the_holder_stops_acting_a_margin_before_a_candidate_may_take_over() {
        let timing = Timing::default();
        // Renewal sent at t(0); a candidate that saw that renewal at the earliest at t(0) takes
        // over at t(10) at the earliest; the holder stops at t(7).
        assert_eq!(acts_until(t(0), &timing), t(7));
        assert!(acts_until(t(0), &timing) + to_chrono(timing.margin) <= t(0) + to_chrono(timing.duration));
    }

    #[test]
    fn timings_that_cannot_work_are_refused_with_why() {
        assert!(Timing::default().check().is_ok());
        let slow = Timing { renew_every: Duration::from_secs(4), ..Timing::default() };
        assert!(slow.check().unwrap_err().contains("no second try"), "{:?}", slow.check());
        let wide = Timing { margin: Duration::from_secs(10), ..Timing::default() };
        assert!(wide.check().unwrap_err().contains("shorter than the lease"));
    }
}
