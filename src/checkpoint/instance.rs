//! The instance id: which attribd wrote a ClickHouse batch, so a restart can take back exactly
//! its own.
//!
//! A run's ClickHouse batches are named after the state directory that checkpoints them
//! (`sink/clickhouse/commit.rs`, [`batch_id`](crate::sink::clickhouse::batch_id)). After a
//! crash, everything this instance wrote in epochs after the checkpoint it resumes from is
//! deleted before the replay writes it again — and only that: several instances (one per set
//! of Fluvio partitions) share one database. The id is random, made the first time a state
//! directory is used and written durably (temporary file, fsync, rename, fsync of the
//! directory) before any output, so even a run killed before its first checkpoint is
//! followed by one that finds its batches. `--fresh` starts a new instance; rows the old one
//! wrote stay in ClickHouse.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// The file's name inside the state directory.
pub const FILE: &str = "instance-id";

/// Hex digits of an id (64 random bits).
const LEN: usize = 16;

/// This state directory's instance id, made (durably) if it has none yet.
pub fn get_or_create(dir: &Path) -> Result<String> {
    let target = dir.join(FILE);
    match fs::read_to_string(&target) {
        Ok(text) => parse(&text).with_context(|| {
            format!(
                "{}: not an attribd instance id; it names this directory's ClickHouse batches, \
                 so it is not replaced silently (restore it, or start over with --fresh)",
                target.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("{:016x}", rand::random::<u64>());
            super::write_atomic(dir, &target, &[format!("{id}\n").as_bytes()])?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", target.display())),
    }
}

fn parse(text: &str) -> Result<String> {
    let id = text.trim_end_matches('\n');
    if id.len() != LEN
        || !id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        bail!(
            "expected {LEN} lowercase hex digits, found {:?}",
            truncate(id)
        );
    }
    Ok(id.to_string())
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_made_once_and_read_back_after() {
        let dir = tempfile::tempdir().unwrap();
        let id = get_or_create(dir.path()).unwrap();
        assert_eq!(id.len(), LEN);
        assert_eq!(get_or_create(dir.path()).unwrap(), id);
        assert!(!dir.path().join(format!(".{FILE}.tmp")).exists());
        // Another directory is another instance.
        let other = tempfile::tempdir().unwrap();
        assert_ne!(get_or_create(other.path()).unwrap(), id);
    }

    #[test]
    fn a_damaged_id_is_an_error_naming_the_file_not_a_new_instance() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "xyz\n", "0123456789ABCDEF\n", "0123456789abcdef0\n"] {
            fs::write(dir.path().join(FILE), bad).unwrap();
            let e = format!("{:#}", get_or_create(dir.path()).unwrap_err());
            assert!(e.contains(FILE) && e.contains("--fresh"), "{e}");
            assert_eq!(fs::read_to_string(dir.path().join(FILE)).unwrap(), bad);
        }
    }
}
