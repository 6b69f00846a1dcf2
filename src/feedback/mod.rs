//! Feedback about a canary (satisfaction, model scores, request outcomes): statistics over
//! sliding windows per arm, the sequential comparisons that say whether the canary is worse
//! than its baseline, and the per-arm state they read.

pub mod sequential;
pub mod stats;
#[cfg(test)]
pub mod testing;
pub mod window;
