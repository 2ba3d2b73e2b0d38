//! Crash points for the crash tests.
//!
//! A step that must survive a crash at one exact place (between two of its writes) is hard to
//! hit with a kill from outside. `ATTRIBD_CRASH_AT=<name>` makes the process abort — no
//! destructors, no flushing, as `kill -9` — when it reaches the point of that name. Unset (as
//! in production), a crash point costs one environment lookup on a path that runs once per run.

/// Aborts the process here if `ATTRIBD_CRASH_AT` names this point.
pub fn crash_point(name: &str) {
    if std::env::var_os("ATTRIBD_CRASH_AT").is_some_and(|v| v == name) {
        eprintln!("ATTRIBD_CRASH_AT={name}: aborting here");
        std::process::abort();
    }
}
