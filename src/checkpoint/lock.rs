//! One writer per output directory: an exclusive advisory lock held for the life of a run.
//!
//! Two runs writing the same `--out` would both append rows (double counts) and each would
//! delete the other's in-progress temporary files when it starts. So the first thing `run`
//! does — before `--fresh` deletes anything, before a checkpoint is read — is take an
//! exclusive `flock` on the directory `OUT/_state` (and on `STATE` when the state directory
//! lives elsewhere). The kernel drops the lock when the process ends, however it ends (kill -9
//! included), so nothing stale ever blocks a restart. The holder writes its pid into
//! `attribd.lock` there so a second run can say who holds it; deleting that file changes
//! nothing about the lock.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The lock file's name inside a state directory.
pub const LOCK_FILE: &str = "attribd.lock";

/// The error of a directory another process holds (callers that can wait for the holder
/// find it with `downcast_ref`).
#[derive(Debug)]
pub struct Locked {
    pub path: PathBuf,
    pub who: String,
}

impl std::fmt::Display for Locked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is locked by {}: one run writes an output directory (and its \
             checkpoint.state_dir) at a time. Stop that run first, or give this one another \
             --out (and, if set, another checkpoint.state_dir)",
            self.path.display(),
            self.who
        )
    }
}

impl std::error::Error for Locked {}

/// Held locks; dropping it releases them (so does the process ending).
#[derive(Debug)]
pub struct DirLock {
    _files: Vec<File>,
}

/// Locks every directory of `dirs` (created if missing) or fails at once naming the holder.
pub fn lock_dirs(dirs: &[PathBuf]) -> Result<DirLock> {
    let mut files = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        if !dirs[..i].contains(dir) {
            files.push(lock_one(dir)?);
        }
    }
    Ok(DirLock { _files: files })
}

fn lock_one(dir: &Path) -> Result<File> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating state directory {}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    // The lock is on the directory itself: deleting the pid file below (by hand, or a
    // clean-up script) cannot let a second writer in.
    let locked = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    match locked.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another process".to_string()
            } else {
                format!("another attribd run (pid {holder})")
            };
            return Err(Locked {
                path: path.clone(),
                who,
            }
            .into());
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", dir.display()));
        }
    }
    // The pid is for the message above only; the lock itself is the flock on the directory.
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .with_context(|| format!("opening lock file {}", path.display()))?;
    writeln!(file, "{}", std::process::id())
        .with_context(|| format!("writing lock file {}", path.display()))?;
    Ok(locked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("_state");
        let first = lock_dirs(std::slice::from_ref(&state)).unwrap();
        let err = lock_dirs(std::slice::from_ref(&state))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())) && err.contains("--out"),
            "{err}"
        );
        drop(first);
        lock_dirs(&[state]).unwrap();
    }

    #[test]
    fn deleting_the_pid_file_does_not_release_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("_state");
        let _first = lock_dirs(std::slice::from_ref(&state)).unwrap();
        std::fs::remove_file(state.join(LOCK_FILE)).unwrap();
        let err = lock_dirs(std::slice::from_ref(&state))
            .unwrap_err()
            .to_string();
        assert!(err.contains("locked by another process"), "{err}");
    }

    #[test]
    fn one_directory_named_twice_is_locked_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        lock_dirs(&[d.clone(), d]).unwrap();
    }
}
