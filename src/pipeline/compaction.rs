//! Compaction: folds a chain of delta checkpoints into a full snapshot of the same epoch, on a
//! thread beside the checkpoint writer, so a restore reads one full snapshot and a few deltas.
//!
//! The state stage hands over only what changed (`state::changes`), so each checkpoint is a
//! delta on the one before it. Left alone, a restore would read every delta since the run
//! began; so after each delta the writer asks [`Compactor::after_write`] whether the chain has
//! grown past its bounds — [`MAX_DELTAS`] deltas, or deltas adding up to a sixteenth of the full
//! snapshot they stand on (or of the run's first checkpoint, a delta on the empty state, which
//! is a whole state too and never compacted alone) — and if so this thread loads the chain, rebuilds the engine from it
//! (the restore code itself), and writes it back as a full snapshot of that epoch. Deltas after
//! it continue the chain from there; `checkpoint::prune` removes what no longer serves.
//!
//! The compaction never touches the live engine and never blocks the state stage; it costs a
//! second copy of the state in memory while it runs (see docs/capacity.md). None starts for
//! the checkpoints that end a run, and one in progress when the run ends is given up at its
//! next step, unless the chain has reached its file bound ([`Compactor::after_write`],
//! [`Compactor::finish`]): a batch run does not wait seconds to rewrite a state the next start
//! can compact. A failure is
//! logged and counted and leaves the deltas (still a valid checkpoint); the next delta tries
//! again. The same routine turns a delta into a full snapshot of another epoch for a rollback
//! ([`materialize`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::checkpoint::{self, Snapshot};
use crate::state::{Engine, EngineConfig};
use crate::telemetry::Metrics;

/// Deltas a chain may have before it is compacted.
pub const MAX_DELTAS: usize = 32;
/// Deltas are compacted once they add up to this share of the full snapshot they stand on…
const DELTA_SHARE: u64 = 16;
/// …or, while the state is small, to this many bytes.
const MIN_DELTA_BYTES: u64 = 16 << 20;

/// Writes checkpoint `from` (a chain) as a full snapshot of epoch `as_epoch`; returns its
/// size.
pub fn materialize(dir: &Path, from: u64, as_epoch: u64, cfg: EngineConfig) -> Result<u64> {
    let never = AtomicBool::new(false);
    materialize_unless(dir, from, as_epoch, cfg, &never)?.context("materialize is never cancelled")
}

/// [`materialize`], given up between its steps once `cancelled` is set (`None` then: nothing
/// written).
fn materialize_unless(
    dir: &Path,
    from: u64,
    as_epoch: u64,
    cfg: EngineConfig,
    cancelled: &AtomicBool,
) -> Result<Option<u64>> {
    let go_on = || !cancelled.load(Ordering::Relaxed);
    let chain = checkpoint::load(dir, from)?;
    if !go_on() {
        return Ok(None);
    }
    let Some(engine) = Engine::restore_unless(cfg, &chain.engines()?, cancelled) else {
        return Ok(None);
    };
    let mut snap: Snapshot = rkyv::deserialize::<Snapshot, rkyv::rancor::Error>(chain.head()?)
        .map_err(|e| anyhow::anyhow!("reading checkpoint {from}: {e}"))?;
    // Memory: the chain's files go before the engine is copied into the snapshot.
    drop(chain);
    snap.epoch = as_epoch;
    snap.engine = engine.snapshot();
    snap.engine.fraud.sort();
    drop(engine);
    if !go_on() {
        return Ok(None);
    }
    checkpoint::write(dir, &snap).map(Some)
}

/// The chain of deltas that ends at an epoch, down to its base.
#[derive(Debug, Default, PartialEq)]
struct Chain {
    deltas: usize,
    delta_bytes: u64,
    /// The base: a full snapshot, or a delta on the empty state.
    base_bytes: u64,
}

impl Chain {
    fn of(dir: &Path, epoch: u64) -> Result<Chain> {
        let files = checkpoint::list(dir)?;
        let mut chain = Chain::default();
        let mut at = epoch;
        while let Some(f) = files.get(&at) {
            let size = |p: &PathBuf| std::fs::metadata(p).map_or(0, |m| m.len());
            if let Some(full) = &f.full {
                chain.base_bytes = size(full);
                break;
            }
            let Some((parent, path)) = &f.delta else {
                break;
            };
            if *parent == 0 {
                // A delta on the empty state is a whole state already: the base of this chain,
                // as a full snapshot would be. Compacting it alone would rewrite the same state
                // (and a run's first checkpoint would start a compaction its end waits for).
                chain.base_bytes = size(path);
                break;
            }
            chain.deltas += 1;
            chain.delta_bytes += size(path);
            at = *parent;
        }
        Ok(chain)
    }

    /// Past its bounds: too many files, or deltas too large against the base.
    fn due(&self) -> bool {
        self.deltas >= MAX_DELTAS
            || self.delta_bytes >= (self.base_bytes / DELTA_SHARE).max(MIN_DELTA_BYTES)
    }
}

/// The compaction thread's handle, owned by the checkpoint writer.
pub(super) struct Compactor {
    dir: PathBuf,
    cfg: EngineConfig,
    metrics: Arc<Metrics>,
    running: Option<Running>,
    /// The newest epoch written.
    last_epoch: Option<u64>,
}

/// A compaction in progress.
struct Running {
    thread: JoinHandle<()>,
    cancel: Arc<AtomicBool>,
}

impl Compactor {
    pub(super) fn new(dir: PathBuf, cfg: EngineConfig, metrics: Arc<Metrics>) -> Compactor {
        Compactor {
            dir,
            cfg,
            metrics,
            running: None,
            last_epoch: None,
        }
    }

    /// Called after checkpoint `epoch` is on disk: starts its compaction when its chain is
    /// due and no compaction runs. Not when the run is `ending` (a stop's checkpoint, the
    /// state before the end, the end), unless the chain has reached [`MAX_DELTAS`] deltas:
    /// [`Compactor::finish`] would give it up anyway, and until it reached its next step the
    /// run's end would wait for it (1.4 s of a 13 s run over 5 M clicks) and it would take a
    /// core from the end's own work.
    pub(super) fn after_write(&mut self, epoch: u64, ending: bool) {
        self.last_epoch = Some(epoch);
        if self
            .running
            .as_ref()
            .is_some_and(|r| !r.thread.is_finished())
        {
            return;
        }
        if let Some(r) = self.running.take() {
            let _ = r.thread.join();
        }
        match Chain::of(&self.dir, epoch) {
            Ok(chain) if chain.due() && (!ending || chain.deltas >= MAX_DELTAS) => {}
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot list the checkpoints; no compaction");
                return;
            }
        }
        let (dir, cfg, metrics) = (self.dir.clone(), self.cfg, self.metrics.clone());
        let cancel = Arc::new(AtomicBool::new(false));
        let cancelled = cancel.clone();
        let spawned = std::thread::Builder::new()
            .name("compaction".into())
            .spawn(move || {
                lower_priority();
                let t = Instant::now();
                match materialize_unless(&dir, epoch, epoch, cfg, &cancelled)
                    .with_context(|| format!("compacting checkpoint {epoch}"))
                {
                    Ok(None) => {
                        tracing::debug!(epoch, took = ?t.elapsed(), "compaction given up: the run ends");
                    }
                    Ok(Some(bytes)) => {
                        metrics.checkpoint_compacted(t.elapsed(), Some(bytes));
                        tracing::debug!(epoch, bytes, took = ?t.elapsed(), "checkpoint compacted");
                    }
                    Err(e) => {
                        metrics.checkpoint_compacted(t.elapsed(), None);
                        tracing::error!(error = %format!("{e:#}"), "compaction failed; the deltas stay and are compacted later");
                    }
                }
            });
        match spawned {
            Ok(thread) => self.running = Some(Running { thread, cancel }),
            Err(e) => tracing::warn!(error = %e, "cannot start the compaction thread"),
        }
    }

    /// End of the run. A compaction in progress is given up (at its next step; nothing is
    /// written) unless the newest chain has reached [`MAX_DELTAS`] deltas: a state that is
    /// only ever restarted must not grow an unbounded chain, but the common end — a batch
    /// run whose last deltas crossed the byte share — need not wait seconds to rewrite a
    /// state that the next start can still compact. Then waits for the thread, so no file is
    /// left half-written by this process.
    pub(super) fn finish(&mut self) {
        let Some(r) = self.running.take() else {
            return;
        };
        let files_bound = self
            .last_epoch
            .and_then(|e| Chain::of(&self.dir, e).ok())
            .is_some_and(|c| c.deltas >= MAX_DELTAS);
        if !files_bound {
            r.cancel.store(true, Ordering::Relaxed);
        }
        let _ = r.thread.join();
    }
}

/// Background work yields to the pipeline: the compaction thread (and the restore threads it
/// starts, which inherit it) run at nice 10, so on a busy host the state stage keeps its core
/// while a chain is rebuilt (restore fills a 30 M index on several threads at once).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: `setpriority` only reads its integer arguments. On Linux the nice value is per
    // thread and `who = 0` names the calling thread; raising it needs no privilege.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Puts an (empty, sparse) checkpoint file of `len` bytes in place.
    fn file(path: PathBuf, len: u64) {
        std::fs::File::create(path)
            .and_then(|f| f.set_len(len))
            .unwrap();
    }

    const MIB: u64 = 1 << 20;

    /// Does the chain of `epoch` need compacting?
    fn due(dir: &Path, epoch: u64) -> Result<bool> {
        Ok(Chain::of(dir, epoch)?.due())
    }

    /// A delta on the empty state (epoch 1) and one on it (epoch 2), written for real.
    fn real_chain(d: &Path) {
        for (epoch, parent) in [(1, 0), (2, 1)] {
            let mut snap = Snapshot {
                epoch,
                ..Snapshot::default()
            };
            snap.engine.delta = Some(crate::checkpoint::snapshot::DeltaSnap {
                parent,
                ..Default::default()
            });
            checkpoint::write(d, &snap).unwrap();
        }
    }

    #[test]
    fn a_cancelled_compaction_writes_nothing_and_an_uncancelled_one_a_full_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        real_chain(d);
        let full_of_2 = || checkpoint::list(d).unwrap()[&2].full.is_some();
        let cancelled = AtomicBool::new(true);
        let out = materialize_unless(d, 2, 2, EngineConfig::default(), &cancelled).unwrap();
        assert_eq!(out, None);
        assert!(!full_of_2());
        let go_on = AtomicBool::new(false);
        let out = materialize_unless(d, 2, 2, EngineConfig::default(), &go_on).unwrap();
        assert!(out.is_some_and(|bytes| bytes > 0));
        assert!(full_of_2());
    }

    #[test]
    fn no_compaction_starts_for_a_checkpoint_that_ends_the_run_unless_at_the_file_bound() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        file(checkpoint::delta_path(d, 1, 0), MIB);
        file(checkpoint::delta_path(d, 2, 1), 16 * MIB);
        let mut c = Compactor::new(d.to_path_buf(), EngineConfig::default(), Arc::default());
        c.after_write(2, true);
        assert!(c.running.is_none());
        assert_eq!(c.last_epoch, Some(2));
        // The same chain in the middle of a run is compacted (these files are not real
        // checkpoints: the compaction fails, is logged and counted).
        c.after_write(2, false);
        assert!(c.running.is_some());
        c.finish();
        // At the file bound, an ending checkpoint starts one too.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        file(checkpoint::delta_path(d, 1, 0), 64 * MIB);
        for e in 2..2 + MAX_DELTAS as u64 {
            file(checkpoint::delta_path(d, e, e - 1), 1024);
        }
        let last = 1 + MAX_DELTAS as u64;
        let mut c = Compactor::new(d.to_path_buf(), EngineConfig::default(), Arc::default());
        c.after_write(last, true);
        assert!(c.running.is_some());
        c.finish();
    }

    #[test]
    fn a_chain_is_due_by_delta_count_or_by_bytes_against_its_base() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // A run's first checkpoint, a delta on the empty state, is a whole state: nothing to
        // compact, however large.
        file(checkpoint::delta_path(d, 1, 0), 400 * MIB);
        assert!(!due(d, 1).unwrap());
        // Deltas on it count against it as against a full snapshot: 24 MiB of a 400 MiB base
        // is below a sixteenth…
        file(checkpoint::delta_path(d, 2, 1), 24 * MIB);
        assert!(!due(d, 2).unwrap());
        // …26 MiB more is not.
        file(checkpoint::delta_path(d, 3, 2), 2 * MIB);
        assert!(due(d, 3).unwrap());

        // Small state: 16 MiB of deltas or 32 deltas, on a full snapshot as on a first delta.
        for base in [
            checkpoint::snapshot_path(d, 10),
            checkpoint::delta_path(d, 10, 0),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            file(base.file_name().map(|n| d.join(n)).unwrap(), MIB);
            for e in 11..11 + MAX_DELTAS as u64 {
                file(checkpoint::delta_path(d, e, e - 1), 1024);
                assert_eq!(due(d, e).unwrap(), e == 10 + MAX_DELTAS as u64, "epoch {e}");
            }
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            file(base.file_name().map(|n| d.join(n)).unwrap(), MIB);
            file(checkpoint::delta_path(d, 11, 10), 15 * MIB);
            assert!(!due(d, 11).unwrap());
            file(checkpoint::delta_path(d, 12, 11), MIB);
            assert!(due(d, 12).unwrap());
        }
    }
}
