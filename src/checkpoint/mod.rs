//! Checkpoints: the state stage's memory and the source positions, on disk, so a crashed run
//! resumes instead of starting over.
//!
//! Order of a checkpoint (docs/architecture.md, "The checkpoint protocol"): every sink closes its open files
//! and flushes ClickHouse (outputs durable) → the engine's state and the source positions are
//! serialized with rkyv into a file in `STATE/`, written atomically (temporary file, fsync,
//! rename, fsync of the directory) behind a header with a format version and an xxh3 checksum
//! → Fluvio offsets may be committed.
//!
//! Two kinds of file (`snapshot`): a *full* snapshot `checkpoint-<epoch>.snap`, and a *delta*
//! `checkpoint-<epoch>-delta-on-<parent>.snap` holding what changed since checkpoint `parent`
//! (0: since an empty state). The pipeline writes deltas — their cost follows the events of an
//! interval, not the size of the state — and a background compaction turns a chain of them
//! into a full snapshot of the same epoch (`pipeline/compaction.rs`). Loading an epoch
//! ([`load`]) reads its full snapshot if there is a good one, else its delta on top of its
//! parent's chain: a [`Chain`]. A damaged or truncated file is detected by its checksum and the
//! previous epoch is used; [`prune`] keeps what the newest two epochs need, and the chain of the
//! newest epoch before the newest full snapshot, so that one damaged full file still leaves a
//! checkpoint to resume from.

pub mod identity;
pub mod instance;
pub mod lock;
pub mod rollback;
pub mod snapshot;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rkyv::ser::writer::IoWriter;
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

pub use snapshot::{FORMAT_VERSION, InputSnap, Snapshot, StreamPos};

const MAGIC: &[u8; 8] = b"ATRBDSNP";
const HEADER: usize = 8 + 4 + 4 + 8 + 8;
// The payload starts at `HEADER` in a page-aligned map; rkyv needs it 16-aligned.
const _: () = assert!(HEADER.is_multiple_of(16));

/// Where the full snapshot of `epoch` lives.
pub fn snapshot_path(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("checkpoint-{epoch:010}.snap"))
}

/// Where the delta of `epoch` on top of `parent` lives.
pub fn delta_path(dir: &Path, epoch: u64, parent: u64) -> PathBuf {
    dir.join(format!("checkpoint-{epoch:010}-delta-on-{parent:010}.snap"))
}

/// Serializes and writes a snapshot (full or delta, by its content) atomically, then prunes
/// what no checkpoint needs any more. Returns its size.
pub fn write(dir: &Path, snap: &Snapshot) -> Result<u64> {
    fs::create_dir_all(dir)
        .with_context(|| format!("creating state directory {}", dir.display()))?;
    let path = match &snap.engine.delta {
        Some(d) => {
            if d.parent >= snap.epoch {
                bail!(
                    "checkpoint {} would be a delta on a later checkpoint ({})",
                    snap.epoch,
                    d.parent
                );
            }
            // A full snapshot of this epoch left by an earlier run that went back behind it
            // would be preferred to the delta: it goes first.
            remove_if_there(&snapshot_path(dir, snap.epoch))?;
            delta_path(dir, snap.epoch, d.parent)
        }
        None => snapshot_path(dir, snap.epoch),
    };
    let len = write_streamed(dir, &path, snap)?;
    prune(dir)?;
    Ok(HEADER as u64 + len)
}

/// Serializes `snap` straight into the file behind its header, atomically; returns the
/// payload's length. The payload never exists whole in memory: a delta at a few million
/// events is hundreds of MB, and a buffer that size is fresh memory the kernel has to fault
/// in and zero at every checkpoint (a tenth of the checkpoint thread's time, and the
/// process's peak RSS). The bytes are those of `rkyv::to_bytes`; the header's length and
/// checksum are computed as they stream and written last, over a placeholder.
fn write_streamed(dir: &Path, path: &Path, snap: &Snapshot) -> Result<u64> {
    write_atomic_with(dir, path, |f| {
        f.write_all(&[0; HEADER])?;
        let payload = Hashing {
            inner: &mut *f,
            hash: Xxh3::new(),
            len: 0,
        };
        let out = std::io::BufWriter::with_capacity(1 << 20, payload);
        let out = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(snap, IoWriter::new(out))
            .map_err(std::io::Error::other)?
            .into_inner();
        let Hashing { hash, len, .. } = out.into_inner().map_err(|e| e.into_error())?;
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&header(len, hash.digest()))?;
        Ok(len)
    })
}

/// An `io::Write` that checksums and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Xxh3,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The file header: magic, format version, reserved, payload length and checksum.
fn header(len: u64, checksum: u64) -> Vec<u8> {
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&len.to_le_bytes());
    header.extend_from_slice(&checksum.to_le_bytes());
    header
}

fn remove_if_there(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Writes `parts` one after the other to `path` in `dir`, atomically and durably: a temporary
/// file, fsync, rename, fsync of the directory. A failed write leaves no partial file behind
/// (and whatever was at `path` stands).
pub fn write_atomic(dir: &Path, path: &Path, parts: &[&[u8]]) -> Result<()> {
    write_atomic_with(dir, path, |f| parts.iter().try_for_each(|p| f.write_all(p)))
}

/// [`write_atomic`] with the file's content written by `write`; returns what `write` does.
fn write_atomic_with<T>(
    dir: &Path,
    path: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<T>,
) -> Result<T> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| -> Result<T> {
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let written = write(&mut f).with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("fsync {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("fsync directory {}", dir.display()))?;
        Ok(written)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The checkpoint files of one epoch.
#[derive(Debug, Default, Clone)]
pub struct EpochFiles {
    pub full: Option<PathBuf>,
    /// Parent epoch and path of its delta.
    pub delta: Option<(u64, PathBuf)>,
}

/// Checkpoint files by epoch (oldest first). Temporary files of interrupted writes are not
/// listed ([`remove_temporary`] deletes them at start).
pub fn list(dir: &Path) -> Result<BTreeMap<u64, EpochFiles>> {
    let mut out: BTreeMap<u64, EpochFiles> = BTreeMap::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(out);
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(stem) = name
            .strip_prefix("checkpoint-")
            .and_then(|r| r.strip_suffix(".snap"))
        else {
            continue;
        };
        match stem.split_once("-delta-on-") {
            None => {
                if let Ok(epoch) = stem.parse::<u64>() {
                    out.entry(epoch).or_default().full = Some(e.path());
                }
            }
            Some((epoch, parent)) => {
                if let (Ok(epoch), Ok(parent)) = (epoch.parse::<u64>(), parent.parse::<u64>())
                    && parent < epoch
                {
                    let slot = &mut out.entry(epoch).or_default().delta;
                    // Two deltas of one epoch: an interrupted replacement; the newer parent
                    // is the one written last.
                    if slot.as_ref().is_none_or(|(p, _)| *p < parent) {
                        *slot = Some((parent, e.path()));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Removes what interrupted writes left behind (`.checkpoint-….tmp`). Only at start, before
/// anything writes to the directory.
pub fn remove_temporary(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with(".checkpoint-") && name.ends_with(".tmp") {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// The files an epoch is loaded from as far as the listing tells (full preferred), newest
/// first.
fn chain_files(files: &BTreeMap<u64, EpochFiles>, epoch: u64) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut at = epoch;
    while let Some(f) = files.get(&at) {
        if let Some(full) = &f.full {
            out.push(full.clone());
            break;
        }
        match &f.delta {
            Some((parent, path)) => {
                out.push(path.clone());
                if *parent == 0 {
                    break;
                }
                at = *parent;
            }
            None => break,
        }
    }
    out
}

/// Deletes the checkpoint files no longer needed: kept are the files of the newest two epochs'
/// chains, and the chain of the newest epoch below the newest chain's full snapshot (the
/// fall-back should that file be damaged). Safe to call from two threads.
pub fn prune(dir: &Path) -> Result<()> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let files = list(dir)?;
    let epochs: Vec<u64> = files.keys().rev().copied().collect();
    let mut keep: BTreeSet<PathBuf> = BTreeSet::new();
    for &e in epochs.iter().take(2) {
        keep.extend(chain_files(&files, e));
    }
    if let Some(&newest) = epochs.first() {
        let base = chain_files(&files, newest)
            .last()
            .and_then(|p| epoch_of_full(&files, p));
        if let Some(base) = base
            && let Some(&fallback) = epochs.iter().find(|&&e| e < base)
        {
            keep.extend(chain_files(&files, fallback));
        }
    }
    for f in files.values() {
        for path in f.full.iter().chain(f.delta.as_ref().map(|d| &d.1)) {
            if !keep.contains(path) {
                let _ = fs::remove_file(path);
            }
        }
    }
    Ok(())
}

fn epoch_of_full(files: &BTreeMap<u64, EpochFiles>, path: &Path) -> Option<u64> {
    files
        .iter()
        .find(|(_, f)| f.full.as_deref() == Some(path))
        .map(|(e, _)| *e)
}

/// An epoch's checkpoint as loaded: its files, oldest first — a full snapshot then deltas, or
/// deltas alone from an empty state — each read, checksummed and validated.
pub struct Chain {
    pub epoch: u64,
    files: Vec<Payload>,
}

impl Chain {
    /// The newest file: positions, inputs, settings, `finished`, and the engine's small parts.
    pub fn head(&self) -> Result<&snapshot::ArchivedSnapshot> {
        let last = self.files.last().context("an empty checkpoint chain")?;
        view(last)
    }

    /// Every file's engine part, oldest first (`state::Engine::restore`).
    pub fn engines(&self) -> Result<Vec<&snapshot::ArchivedEngineSnap>> {
        self.files.iter().map(|f| Ok(&view(f)?.engine)).collect()
    }

    /// Files in the chain (1: a full snapshot alone).
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Payload bytes of all files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.len() as u64).sum()
    }
}

/// Loads `epoch`: its full snapshot if it has a good one, else its delta and its parent's
/// chain. Errors name the file that is missing or damaged.
pub fn load(dir: &Path, epoch: u64) -> Result<Chain> {
    let files = list(dir)?;
    let mut chain = Vec::new();
    let mut at = epoch;
    loop {
        let f = files
            .get(&at)
            .with_context(|| format!("checkpoint {at} is missing in {}", dir.display()))?;
        if let Some(full) = &f.full {
            match read_valid(full) {
                Ok(bytes) if view(&bytes).is_ok_and(|s| s.engine.delta.is_none()) => {
                    chain.push(bytes);
                    break;
                }
                Ok(_) => {
                    tracing::error!(path = %full.display(), "a full snapshot's name on a delta; trying the delta of that epoch");
                }
                Err(e) if e.downcast_ref::<UnknownFormat>().is_some() => return Err(e),
                Err(e) if f.delta.is_some() => {
                    tracing::error!(error = %format!("{e:#}"), "SNAPSHOT DAMAGED; trying the delta of that epoch");
                }
                Err(e) => return Err(e),
            }
        }
        let (parent, path) = f
            .delta
            .as_ref()
            .with_context(|| format!("checkpoint {at} has no usable file in {}", dir.display()))?;
        let bytes = read_valid(path)?;
        let recorded = view(&bytes)?
            .engine
            .delta
            .as_ref()
            .map(|d| d.parent.to_native());
        if recorded != Some(*parent) {
            bail!(
                "{} is not the delta its name says (parent {recorded:?})",
                path.display()
            );
        }
        chain.push(bytes);
        if *parent == 0 {
            break;
        }
        at = *parent;
    }
    chain.reverse();
    Ok(Chain {
        epoch,
        files: chain,
    })
}

fn read_valid(path: &Path) -> Result<Payload> {
    let bytes = read(path)?;
    view(&bytes).with_context(|| format!("{}", path.display()))?;
    Ok(bytes)
}

/// The newest loadable checkpoint, falling back to older ones (loudly) when one is damaged.
pub fn load_latest(dir: &Path) -> Result<Option<Chain>> {
    load_newest_before(dir, u64::MAX)
}

/// The newest loadable checkpoint of an epoch below `limit`.
pub fn load_newest_before(dir: &Path, limit: u64) -> Result<Option<Chain>> {
    let epochs: Vec<u64> = list(dir)?
        .keys()
        .rev()
        .copied()
        .filter(|e| *e < limit)
        .collect();
    for epoch in epochs {
        match load(dir, epoch) {
            Ok(chain) => return Ok(Some(chain)),
            Err(e) if e.downcast_ref::<UnknownFormat>().is_some() => return Err(e),
            Err(e) => {
                tracing::error!(epoch, error = %format!("{e:#}"), "SNAPSHOT DAMAGED; falling back to the previous one");
            }
        }
    }
    Ok(None)
}

/// A snapshot file's payload, mapped read-only. A full snapshot is about 1 GB at 30 M indexed
/// clicks: mapping the page cache (populated in one call) is neither a copy nor a gigabyte of
/// freshly zeroed and faulted memory, which was a third of a restore.
#[derive(Debug)]
pub struct Payload {
    map: memmap2::Mmap,
}

impl std::ops::Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // `read` checked that the file is at least this long.
        self.map.get(HEADER..).unwrap_or_default()
    }
}

/// The payload of a snapshot file after checking magic, format version, length and checksum.
/// An unknown format version is a hard error; damage is reported as such.
pub fn read(path: &Path) -> Result<Payload> {
    let file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    // SAFETY: a snapshot file is never changed once renamed into place: checkpoints and
    // compaction write a temporary file and rename it, pruning unlinks (a mapping outlives an
    // unlink), and the directory lock keeps a second attribd from writing here (outside tools
    // must not edit `_state` in place either: docs/operations.md). The map is read-only and
    // its page-aligned start keeps the payload (at offset `HEADER`, a multiple of 16) aligned
    // for rkyv.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("reading {}", path.display()))?;
    // Page the whole file in now, so that a disk that cannot read it is an error here (and the
    // previous checkpoint is used) rather than a SIGBUS wherever the bytes are first touched.
    #[cfg(target_os = "linux")]
    match map.advise(memmap2::Advice::PopulateRead) {
        Ok(()) => {}
        // Before Linux 5.14 the advice is unknown: pages are read as they are touched.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let header = map.get(..HEADER).unwrap_or_default();
    if header.len() < HEADER || &header[..8] != MAGIC {
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
    if HEADER.checked_add(len) != Some(map.len()) {
        bail!(
            "{} is truncated: {} of {len} payload bytes",
            path.display(),
            map.len().saturating_sub(HEADER)
        );
    }
    let payload = Payload { map };
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

/// Zero-copy view of a loaded snapshot, validated (bytecheck). Cheap enough to repeat: the big
/// vectors hold plain numbers, so validating a 1 GB snapshot is bounds checks, well under a
/// millisecond.
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

    fn delta(epoch: u64, parent: u64) -> Snapshot {
        let mut s = snap(epoch);
        s.engine.delta = Some(snapshot::DeltaSnap {
            parent,
            ..Default::default()
        });
        s
    }

    fn epochs(dir: &Path) -> Vec<(u64, bool, Option<u64>)> {
        list(dir)
            .unwrap()
            .into_iter()
            .map(|(e, f)| (e, f.full.is_some(), f.delta.map(|d| d.0)))
            .collect()
    }

    #[test]
    fn a_streamed_file_is_the_header_and_rkyvs_bytes() {
        // Large enough that the payload crosses the 1 MiB write buffer several times.
        let dir = tempfile::tempdir().unwrap();
        let mut s = snap(1);
        s.engine.strings = (0..200_000).map(|i| format!("offer-{i}")).collect();
        let size = write(dir.path(), &s).unwrap();
        let file = fs::read(snapshot_path(dir.path(), 1)).unwrap();
        let payload = rkyv::to_bytes::<rkyv::rancor::Error>(&s).unwrap();
        assert!(payload.len() > 3 << 20, "{}", payload.len());
        assert_eq!(size as usize, file.len());
        assert_eq!(&file[HEADER..], &payload[..]);
        assert_eq!(
            file[..HEADER],
            header(payload.len() as u64, xxh3_64(&payload))[..]
        );
        let chain = load_latest(dir.path()).unwrap().unwrap();
        assert_eq!(
            chain.head().unwrap().engine.strings[199_999].as_str(),
            "offer-199999"
        );
    }

    #[test]
    fn round_trip_and_keep_two() {
        let dir = tempfile::tempdir().unwrap();
        for e in 1..=4 {
            write(dir.path(), &snap(e)).unwrap();
        }
        assert_eq!(epochs(dir.path()), [(3, true, None), (4, true, None)]);
        let chain = load_latest(dir.path()).unwrap().unwrap();
        assert_eq!((chain.epoch, chain.len()), (4, 1));
        let v = chain.head().unwrap();
        assert_eq!(v.positions[0].lines.to_native(), 40);
        assert_eq!(v.engine.strings[1].as_str(), "offer");
    }

    #[test]
    fn a_delta_loads_with_its_parents_and_pruning_keeps_what_two_epochs_and_a_fallback_need() {
        let dir = tempfile::tempdir().unwrap();
        // A run's first checkpoints: deltas from an empty state.
        write(dir.path(), &delta(1, 0)).unwrap();
        write(dir.path(), &delta(2, 1)).unwrap();
        write(dir.path(), &delta(3, 2)).unwrap();
        let chain = load_latest(dir.path()).unwrap().unwrap();
        assert_eq!((chain.epoch, chain.len()), (3, 3));
        assert_eq!(chain.head().unwrap().positions[0].lines.to_native(), 30);
        let engines = chain.engines().unwrap();
        let parents: Vec<u64> = engines
            .iter()
            .map(|e| e.delta.as_ref().unwrap().parent.to_native())
            .collect();
        assert_eq!(parents, [0, 1, 2], "oldest first");
        // Compaction writes a full snapshot of epoch 3; deltas go on from it.
        write(dir.path(), &snap(3)).unwrap();
        write(dir.path(), &delta(4, 3)).unwrap();
        write(dir.path(), &delta(5, 4)).unwrap();
        assert_eq!(load_latest(dir.path()).unwrap().unwrap().len(), 3);
        // Kept: 5 → 4 → full 3, and epoch 2's chain (2 → 1 → empty) in case full 3 is damaged.
        assert_eq!(
            epochs(dir.path()),
            [
                (1, false, Some(0)),
                (2, false, Some(1)),
                (3, true, None),
                (4, false, Some(3)),
                (5, false, Some(4))
            ]
        );
        // Full 3 damaged: epochs 5 and 4 cannot load, epoch 3's delta is gone, 2 can.
        let full3 = snapshot_path(dir.path(), 3);
        let mut bytes = fs::read(&full3).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&full3, &bytes).unwrap();
        let chain = load_latest(dir.path()).unwrap().unwrap();
        assert_eq!((chain.epoch, chain.len()), (2, 2));
        // A newer full snapshot lets the old chain go.
        write(dir.path(), &snap(6)).unwrap();
        write(dir.path(), &delta(7, 6)).unwrap();
        assert_eq!(
            epochs(dir.path()),
            [
                (3, true, None),
                (4, false, Some(3)),
                (5, false, Some(4)),
                (6, true, None),
                (7, false, Some(6))
            ],
            "5's chain is the fallback below full 6 (damaged full 3 and all); 1 and 2 went"
        );
    }

    #[test]
    fn a_damaged_delta_falls_back_to_the_epoch_before_it() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &snap(1)).unwrap();
        write(dir.path(), &delta(2, 1)).unwrap();
        write(dir.path(), &delta(3, 2)).unwrap();
        let d3 = delta_path(dir.path(), 3, 2);
        let bytes = fs::read(&d3).unwrap();
        fs::write(&d3, &bytes[..bytes.len() - 3]).unwrap();
        let chain = load_latest(dir.path()).unwrap().unwrap();
        assert_eq!((chain.epoch, chain.len()), (2, 2));
        // A delta whose parent is missing cannot load either.
        fs::remove_file(snapshot_path(dir.path(), 1)).unwrap();
        assert!(load_latest(dir.path()).unwrap().is_none());
        let err = load(dir.path(), 2).err().unwrap().to_string();
        assert!(err.contains("checkpoint 1 is missing"), "{err}");
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
        assert_eq!(load_latest(dir.path()).unwrap().unwrap().epoch, 1);
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        fs::write(&newest, &flipped).unwrap();
        assert!(read(&newest).unwrap_err().to_string().contains("checksum"));
        assert_eq!(load_latest(dir.path()).unwrap().unwrap().epoch, 1);
        // Empty (a full disk at the wrong moment) and shorter than a header.
        for len in [0, 7, HEADER - 1] {
            fs::write(&newest, &bytes[..len]).unwrap();
            assert!(
                read(&newest)
                    .unwrap_err()
                    .to_string()
                    .contains("bad header")
            );
            assert_eq!(load_latest(dir.path()).unwrap().unwrap().epoch, 1);
        }
    }

    #[test]
    fn an_unknown_format_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &snap(1)).unwrap();
        let p = snapshot_path(dir.path(), 1);
        let mut bytes = fs::read(&p).unwrap();
        bytes[8..12].copy_from_slice(&99u32.to_le_bytes());
        fs::write(&p, &bytes).unwrap();
        let err = load_latest(dir.path()).err().unwrap().to_string();
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
        assert_eq!(load_latest(dir.path()).unwrap().unwrap().epoch, 1);
        assert_eq!(list(dir.path()).unwrap().len(), 1);
        fs::remove_dir(dir.path().join(".checkpoint-0000000002.snap.tmp")).unwrap();
        fs::write(dir.path().join(".checkpoint-0000000002.snap.tmp"), b"half").unwrap();
        remove_temporary(dir.path());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
