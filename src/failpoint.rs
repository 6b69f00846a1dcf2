//! Crash points for crash-safety tests: `BACKSTOP_CRASH_AT=NAME[:N]` makes the process abort
//! (as `kill -9` would stop it: no destructors, no flushing) the N-th time (default: first) it
//! reaches the point NAME. Unset, a crash point costs one relaxed atomic load. A few points only
//! slow the process down instead (`serve.slow_start`: half a second after "listening"), for
//! tests of what may happen meanwhile.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Armed {
    name: String,
    at: u64,
    seen: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("BACKSTOP_CRASH_AT").ok()?;
            let (name, at) = match spec.split_once(':') {
                Some((n, a)) => (n.to_string(), a.parse().unwrap_or(1)),
                None => (spec, 1),
            };
            Some(Armed { name, at, seen: AtomicU64::new(0) })
        })
        .as_ref()
}

/// Is `name` the armed point, reached for the N-th time now?
pub fn hit(name: &str) -> bool {
    match armed() {
        Some(a) if a.name == name => a.seen.fetch_add(1, Ordering::Relaxed) + 1 == a.at,
        _ => false,
    }
}

/// Abort here if this is the armed point's N-th arrival.
pub fn crash_point(name: &str) {
    if hit(name) {
        eprintln!("crash point {name} reached: aborting");
        std::process::abort();
    }
}
