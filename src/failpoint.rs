//! Crash points for the crash tests.
//!
//! A step that must survive a crash at one exact place (between two of its writes) is hard to
//! hit with a kill from outside. `ATTRIBD_CRASH_AT=<name>` makes the process abort — no
//! destructors, no flushing, as `kill -9` — when it reaches the point of that name. Unset (as
//! in production), a crash point costs one environment lookup on a path that runs once per
//! run or once per checkpoint. `ATTRIBD_CRASH_SKIP=<n>` lets the point pass `n` times first;
//! `ATTRIBD_CRASH_DELAY_MS=<n>` makes the thread that reached it wait that long before the
//! abort while the others go on, to crash with work of theirs in flight.

use std::sync::atomic::{AtomicU64, Ordering};

/// Times the named point was reached.
static REACHED: AtomicU64 = AtomicU64::new(0);

fn env_number(key: &str) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Aborts the process here if `ATTRIBD_CRASH_AT` names this point.
pub fn crash_point(name: &str) {
    if std::env::var_os("ATTRIBD_CRASH_AT").is_some_and(|v| v == name) {
        if REACHED.fetch_add(1, Ordering::Relaxed) < env_number("ATTRIBD_CRASH_SKIP") {
            return;
        }
        let delay = env_number("ATTRIBD_CRASH_DELAY_MS");
        std::thread::sleep(std::time::Duration::from_millis(delay));
        eprintln!("ATTRIBD_CRASH_AT={name}: aborting here");
        std::process::abort();
    }
}
