//! Promoting a healthy canary step by step (issue #18): the pure parts. Which weight comes next
//! ([`Schedule`]); the evidence a step needs is [`crate::feedback::noninferiority`]'s, and the
//! VirtualService change is [`crate::actions::virtualservice::Change::StepUp`].

/// How a canary's weight rises, step by step, up to `max`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// The canary controller's: +10 points while below 50%, then +5.
    Default,
    /// Explicit weights, strictly increasing (e.g. 5, 25, 50, 100: shadow → 5% → 50/50 → all).
    Steps(Vec<u8>),
}

/// Why a schedule is refused when a rule is loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("steps must be weights from 1 to 100, strictly increasing: {0:?}")]
    Steps(Vec<u64>),
    #[error("max must be a weight from 1 to 100, not {0}")]
    Max(u64),
}

impl Schedule {
    /// `steps` from a rule (None: the default schedule), checked.
    pub fn new(steps: Option<&[u64]>) -> Result<Schedule, ScheduleError> {
        let Some(steps) = steps else { return Ok(Schedule::Default) };
        let valid =
            !steps.is_empty() && steps.iter().all(|w| (1..=100).contains(w)) && steps.windows(2).all(|w| w[0] < w[1]);
        if !valid {
            return Err(ScheduleError::Steps(steps.to_vec()));
        }
        Ok(Schedule::Steps(steps.iter().map(|w| *w as u8).collect()))
    }

    /// The canary's next weight from `current`, at most `max`; None when it is at `max` (or
    /// above: a promotion never lowers a weight).
    pub fn next(&self, current: u8, max: u8) -> Option<u8> {
        if current >= max {
            return None;
        }
        let next = match self {
            Schedule::Default if current < 50 => current.saturating_add(10),
            Schedule::Default => current.saturating_add(5),
            Schedule::Steps(steps) => steps.iter().copied().find(|s| *s > current).unwrap_or(max),
        };
        Some(next.min(max))
    }

    /// Every weight from `current` to `max`, in order (for the record and the dashboard).
    pub fn path(&self, current: u8, max: u8) -> Vec<u8> {
        let mut path = Vec::new();
        let mut at = current;
        while let Some(next) = self.next(at, max) {
            path.push(next);
            at = next;
        }
        path
    }
}

/// Check a rule's `max`.
pub fn max_weight(max: u64) -> Result<u8, ScheduleError> {
    if (1..=100).contains(&max) { Ok(max as u8) } else { Err(ScheduleError::Max(max)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_is_ten_points_below_half_then_five() {
        assert_eq!(Schedule::Default.path(10, 100), [20, 30, 40, 50, 55, 60, 65, 70, 75, 80, 85, 90, 95, 100]);
        assert_eq!(Schedule::Default.path(0, 50), [10, 20, 30, 40, 50], "an A/B test that stops at 50/50");
        assert_eq!(Schedule::Default.path(45, 100)[0], 55, "45 is below half: +10");
        assert_eq!(Schedule::Default.path(97, 100), [100], "never past max");
    }

    #[test]
    fn explicit_steps_are_followed_up_to_max() {
        let s = Schedule::new(Some(&[5, 25, 50, 100])).unwrap();
        assert_eq!(s.path(0, 100), [5, 25, 50, 100]);
        assert_eq!(s.path(10, 100), [25, 50, 100], "from between two steps: the next one above");
        assert_eq!(s.path(0, 40), [5, 25, 40], "capped at max");
        assert_eq!(s.next(100, 100), None);
        assert_eq!(s.next(60, 50), None, "never lowers a canary above max");
    }

    #[test]
    fn bad_steps_and_max_are_refused() {
        for bad in [&[][..], &[0, 10], &[10, 10], &[50, 25], &[101]] {
            assert!(Schedule::new(Some(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(max_weight(50), Ok(50));
        assert!(max_weight(0).is_err() && max_weight(101).is_err());
    }
}

#[cfg(test)]
pub mod sim;
