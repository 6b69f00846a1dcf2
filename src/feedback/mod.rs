//! Feedback about a canary (satisfaction, model scores, request outcomes): per-version arms,
//! sliding windows, the sequential comparisons that say whether the canary is worse than its
//! baseline, and the rules' evaluation of them.

pub mod arms;
pub mod dispersion;
pub mod noninferiority;
pub mod restarts;
pub mod rule;
pub mod sequential;
pub mod series;
pub mod stats;
#[cfg(test)]
pub mod testing;
pub mod window;
