//! The durable note that a finished run's end is being taken back.
//!
//! When an input grows after a run finished, the next run goes back to the checkpoint before
//! that end and takes the end's outputs back (its Parquet files deleted, its ClickHouse
//! batches retracted, its snapshot replaced by the one resumed from; see
//! `pipeline/restore.rs`). Those steps touch three places and a run can die between any two.
//! So before the first of them this file (`STATE/rollback-end`, holding the ended epoch) is
//! written and synced, and it is removed only after the last. A run that finds it while the
//! newest snapshot is still that finished end completes the rollback whatever the inputs look
//! like now — even if the appended records were taken away again — instead of trusting an end
//! whose outputs are already half gone.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The file's name inside the state directory.
pub const FILE: &str = "rollback-end";

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Records, durably, that the end checkpointed as `ended` is being taken back.
pub fn begin(dir: &Path, ended: u64) -> Result<()> {
    super::write_atomic(dir, &path(dir), &[format!("{ended}\n").as_bytes()])
}

/// The epoch of an end whose rollback was begun and not finished, if any. An unreadable
/// note counts as none: it is only ever written whole (temporary file, rename).
pub fn pending(dir: &Path) -> Option<u64> {
    fs::read_to_string(path(dir)).ok()?.trim().parse().ok()
}

/// The rollback is complete (or the note is stale): the note goes.
pub fn finish(dir: &Path) -> Result<()> {
    match fs::remove_file(path(dir)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path(dir).display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begun_pending_finished() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(pending(dir.path()), None);
        begin(dir.path(), 7).unwrap();
        assert_eq!(pending(dir.path()), Some(7));
        finish(dir.path()).unwrap();
        assert_eq!(pending(dir.path()), None);
        finish(dir.path()).unwrap();
        fs::write(path(dir.path()), "garbage").unwrap();
        assert_eq!(pending(dir.path()), None);
    }
}
