//! Checkpoints: the state stage's memory and the source positions, on disk, so a crashed run
//! resumes instead of starting over.
//!
//! Order of a checkpoint (docs/architecture.md, "The checkpoint protocol"): every sink closes its open files
//! and flushes ClickHouse (outputs durable) → the engine's state and the source positions are
//! serialized with rkyv into `STATE/checkpoint-<epoch>.snap`, written atomically (temporary
//! file, fsync, rename, fsync of the directory) behind a header with a format version and an
//! xxh3 checksum → Fluvio offsets may be committed. The last two snapshots are kept; a corrupt
//! or truncated one is detected by its checksum and the previous one is used.

pub mod identity;
pub mod lock;
pub mod rollback;
pub mod snapshot;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use xxhash_rust::xxh3::xxh3_64;

pub use snapshot::{FORMAT_VERSION, InputSnap, Snapshot, StreamPos};

const MAGIC: &[u8; 8] = b"ATRBDSNP";
const HEADER: usize = 8 + 4 + 4 + 8 + 8;

/// Where the snapshot of `epoch` lives.
pub fn snapshot_path(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("checkpoint-{epoch:010}.snap"))
}

/// Serializes and writes a snapshot atomically; keeps the newest two. Returns its size.
pub fn write(dir: &Path, snap: &Snapshot) -> Result<u64> {
    fs::create_dir_all(dir)
        .with_context(|| format!("creating state directory {}", dir.display()))?;
    let payload = rkyv::to_bytes::<rkyv::rancor::Error>(snap)
        .map_err(|e| anyhow::anyhow!("serializing the snapshot: {e}"))?;
    let path = snapshot_path(dir, snap.epoch);
    let tmp = dir.join(format!(".checkpoint-{:010}.snap.tmp", snap.epoch));
    let result = (|| -> Result<()> {
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        header.extend_from_slice(&xxh3_64(&payload).to_le_bytes());
        f.write_all(&header)
            .and_then(|_| f.write_all(&payload))
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("fsync {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("renaming {}", tmp.display()))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("fsync directory {}", dir.display()))
    })();
    if let Err(e) = result {
        // A failed checkpoint leaves no partial file behind; the previous snapshot stands.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    for old in list(dir)?.into_iter().skip(2) {
        let _ = fs::remove_file(old.1);
    }
    Ok((HEADER + payload.len()) as u64)
}

/// Replaces snapshot file `target` by a copy of `source` (temporary file, fsync, rename,
/// fsync of the directory).
pub fn replace_with(target: &Path, source: &Path) -> Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(".replace.snap.tmp");
    let result = (|| -> Result<()> {
        fs::copy(source, &tmp).with_context(|| format!("copying {}", source.display()))?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("fsync {}", tmp.display()))?;
        fs::rename(&tmp, target).with_context(|| format!("renaming {}", tmp.display()))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("fsync directory {}", dir.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Snapshot files, newest first, as `(epoch, path)`.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(out);
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(n) = name
            .strip_prefix("checkpoint-")
            .and_then(|r| r.strip_suffix(".snap"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push((n, e.path()));
        }
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.0));
    Ok(out)
}

/// The payload of a snapshot file after checking magic, format version, length and checksum.
/// An unknown format version is a hard error; damage is reported as such.
pub fn read(path: &Path) -> Result<rkyv::util::AlignedVec> {
    use std::io::Read;
    let mut file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut header = [0u8; HEADER];
    if file.read_exact(&mut header).is_err() || &header[..8] != MAGIC {
        bail!("{} is not an attribd snapshot (bad header)", path.display());
    }
    let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap_or_default());
    let long = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap_or_default());
    let version = word(8);
    if version != FORMAT_VERSION {
        return Err(UnknownFormat {
            path: path.to_path_buf(),
            version,
        }
        .into());
    }
    let len = long(16) as usize;
    let sum = long(24);
    let on_disk = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
    if on_disk != HEADER + len {
        bail!(
            "{} is truncated: {} of {len} payload bytes",
            path.display(),
            on_disk.saturating_sub(HEADER)
        );
    }
    // Read straight into aligned memory: rkyv reads the archive in place from there.
    let mut payload = rkyv::util::AlignedVec::<16>::with_capacity(len);
    payload.resize(len, 0);
    file.read_exact(&mut payload)
        .with_context(|| format!("reading {}", path.display()))?;
    if xxh3_64(&payload) != sum {
        bail!("{} is corrupt: checksum mismatch", path.display());
    }
    Ok(payload)
}

/// A snapshot written by another (older or newer) format.
#[derive(Debug)]
pub struct UnknownFormat {
    pub path: PathBuf,
    pub version: u32,
}

impl std::fmt::Display for UnknownFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} has snapshot format version {}, this attribd reads version {FORMAT_VERSION}; \
             run the attribd version that wrote it, or start over with --fresh",
            self.path.display(),
            self.version
        )
    }
}

impl std::error::Error for UnknownFormat {}

/// The newest valid snapshot, falling back to older ones (loudly) when one is damaged.
pub fn load_latest(dir: &Path) -> Result<Option<(u64, rkyv::util::AlignedVec)>> {
    load_newest_before(dir, u64::MAX)
}

/// The newest valid snapshot of an epoch below `limit`.
pub fn load_newest_before(dir: &Path, limit: u64) -> Result<Option<(u64, rkyv::util::AlignedVec)>> {
    for (epoch, path) in list(dir)?.into_iter().filter(|(e, _)| *e < limit) {
        match read(&path) {
            Ok(bytes) => {
                if rkyv::access::<snapshot::ArchivedSnapshot, rkyv::rancor::Error>(&bytes).is_err()
                {
                    tracing::error!(path = %path.display(), "snapshot does not validate; trying the previous one");
                    continue;
                }
                return Ok(Some((epoch, bytes)));
            }
            Err(e) if e.downcast_ref::<UnknownFormat>().is_some() => return Err(e),
            Err(e) => {
                tracing::error!(error = %e, "SNAPSHOT DAMAGED; falling back to the previous one");
            }
        }
    }
    Ok(None)
}

/// Zero-copy view of a loaded snapshot.
pub fn view(bytes: &[u8]) -> Result<&snapshot::ArchivedSnapshot> {
    rkyv::access::<snapshot::ArchivedSnapshot, rkyv::rancor::Error>(bytes)
        .map_err(|e| anyhow::anyhow!("snapshot does not validate: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(epoch: u64) -> Snapshot {
        let mut s = Snapshot {
            epoch,
            ..Snapshot::default()
        };
        s.positions[0].lines = epoch * 10;
        s.engine.strings = vec!["".into(), "offer".into()];
        s
    }

    #[test]
    fn round_trip_and_keep_two() {
        let dir = tempfile::tempdir().unwrap();
        for e in 1..=4 {
            write(dir.path(), &snap(e)).unwrap();
        }
        let files = list(dir.path()).unwrap();
        assert_eq!(files.iter().map(|f| f.0).collect::<Vec<_>>(), [4, 3]);
        let (epoch, bytes) = load_latest(dir.path()).unwrap().unwrap();
        assert_eq!(epoch, 4);
        let v = view(&bytes).unwrap();
        assert_eq!(v.positions[0].lines.to_native(), 40);
        assert_eq!(v.engine.strings[1].as_str(), "offer");
    }

    #[test]
    fn truncated_or_corrupt_snapshots_fall_back_to_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &snap(1)).unwrap();
        write(dir.path(), &snap(2)).unwrap();
        let newest = snapshot_path(dir.path(), 2);
        let bytes = fs::read(&newest).unwrap();
        fs::write(&newest, &bytes[..bytes.len() - 5]).unwrap();
        assert!(read(&newest).unwrap_err().to_string().contains("truncated"));
        assert_eq!(load_latest(dir.path()).unwrap().unwrap().0, 1);
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        fs::write(&newest, &flipped).unwrap();
        assert!(read(&newest).unwrap_err().to_string().contains("checksum"));
        assert_eq!(load_latest(dir.path()).unwrap().unwrap().0, 1);
    }

    #[test]
    fn an_unknown_format_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &snap(1)).unwrap();
        let p = snapshot_path(dir.path(), 1);
        let mut bytes = fs::read(&p).unwrap();
        bytes[8..12].copy_from_slice(&99u32.to_le_bytes());
        fs::write(&p, &bytes).unwrap();
        let err = load_latest(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("format version 99") && err.contains("--fresh"),
            "{err}"
        );
    }

    #[test]
    fn a_checkpoint_that_fails_half_way_leaves_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &snap(1)).unwrap();
        // The disk "fills up": the temporary file's name is taken by a directory, so writing
        // it fails mid-checkpoint.
        fs::create_dir(dir.path().join(".checkpoint-0000000002.snap.tmp")).unwrap();
        assert!(write(dir.path(), &snap(2)).is_err());
        assert_eq!(load_latest(dir.path()).unwrap().unwrap().0, 1);
        assert_eq!(list(dir.path()).unwrap().len(), 1);
    }
}
