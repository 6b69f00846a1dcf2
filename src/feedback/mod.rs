//! Feedback about a canary (satisfaction, model scores, request outcomes): statistics over
//! sliding windows per arm, and the comparisons that say whether the canary is worse than its
//! baseline.

pub mod stats;
pub mod window;
