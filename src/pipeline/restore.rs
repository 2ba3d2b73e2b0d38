//! Restore at start: the first thing a run does, before any thread starts.
//!
//! Takes the output directory's lock (one writer per directory), applies `--fresh`, picks the
//! checkpoint to resume from (the newest valid one, or the one before a finished run's end
//! when the input has grown since — see `choose_restore_point`), checks that this run's
//! inputs and settings are the ones it was taken with (`checkpoint::identity`), rebuilds the
//! engine from it, and deletes the outputs written after it (the replay writes them again).
//! The checkpoint protocol itself (barrier → snapshot → commit) is the state stage's, in
//! `state_stage.rs`.

use std::collections::HashMap;

use anyhow::{Context, Result};

use crate::checkpoint;
use crate::checkpoint::identity::TrackedInput;
use crate::checkpoint::lock::DirLock;
use crate::config::{PipelineConfig, SourceKind};
use crate::event::Position;
use crate::state::Engine;

/// Where a run starts from.
pub(super) struct Restored {
    /// Held for the life of the run.
    pub(super) lock: DirLock,
    pub(super) engine: Engine,
    /// The checkpoint resumed from (0: none).
    pub(super) last_epoch: u64,
    /// The epoch of the outputs this run writes first.
    pub(super) epoch: u64,
    /// Lines and bytes consumed per stream at that checkpoint.
    pub(super) positions: [Position; 2],
    /// Fluvio: next offset per (stream, partition).
    pub(super) partition_offsets: HashMap<(usize, u32), u64>,
    /// Resumed from a finished run's end with nothing new (see `StateStage::resumed_finished`).
    pub(super) resumed_finished: bool,
    /// Going back behind a finished run's end: its epoch, whose checkpoint is replaced once
    /// its outputs are taken back (`drop_superseded_end`).
    superseded: Option<u64>,
    /// This state directory's id, in the name of every ClickHouse batch it writes.
    pub(super) instance: String,
    /// The file inputs (fingerprinted into every checkpoint) and the semantic settings.
    pub(super) tracked: Vec<TrackedInput>,
    pub(super) settings: Vec<(String, String)>,
}

impl Restored {
    /// After the end's ClickHouse batches are taken back (at connect, with everything after
    /// the checkpoint resumed from): its checkpoint is
    /// replaced by the state before it, under its epoch — a full snapshot of the checkpoint
    /// resumed from, written over the end's (a full snapshot is preferred to a delta of the
    /// same epoch, so the switch is one rename), then the end's delta removed. The newest
    /// checkpoint is then the one this run resumed from, and a crash before this run's first
    /// checkpoint replays the same epoch again (whose ClickHouse batches it verifies). Last
    /// step of the rollback: its note (`checkpoint::rollback`) goes.
    pub(super) fn drop_superseded_end(&self, cfg: &PipelineConfig) -> Result<()> {
        if let Some(ended) = self.superseded {
            let state_dir = cfg.state_dir();
            crate::failpoint::crash_point("rollback-retracted");
            super::compaction::materialize(&state_dir, self.last_epoch, ended, cfg.engine())?;
            if let Some(f) = checkpoint::list(&state_dir)?.get(&ended)
                && let Some((_, delta)) = &f.delta
            {
                std::fs::remove_file(delta)
                    .with_context(|| format!("removing {}", delta.display()))?;
            }
            crate::failpoint::crash_point("rollback-replaced");
            checkpoint::rollback::finish(&state_dir)?;
        }
        Ok(())
    }
}

/// One writer per output directory: the lock is the first thing a run takes, before anything
/// is touched (`--fresh` included) and before it binds its metrics port, so a second run on
/// the same directory is told who holds it rather than that the port is busy.
pub(super) fn lock(cfg: &PipelineConfig) -> Result<DirLock> {
    checkpoint::lock::lock_dirs(&[cfg.sink.parquet.out.join("_state"), cfg.state_dir()])
}

/// `--fresh`, choose, verify, rebuild, discard (under the `lock` already taken): see the
/// module doc.
pub(super) fn restore(cfg: &PipelineConfig, fresh: bool, lock: DirLock) -> Result<Restored> {
    let state_dir = cfg.state_dir();
    let out = &cfg.sink.parquet.out;
    if fresh {
        remove_state(&state_dir)?;
        for t in crate::sink::TABLE_DIRS {
            let _ = std::fs::remove_dir_all(out.join(t));
        }
    }
    // Restore the latest checkpoint; what a crashed run wrote after it is written again.
    let tracked = checkpoint::identity::track(cfg)?;
    let settings = checkpoint::identity::semantic_settings(cfg);
    checkpoint::remove_temporary(&state_dir);
    let started = std::time::Instant::now();
    let point = choose_restore_point(cfg, &state_dir, &tracked)?;
    let loaded_s = started.elapsed().as_secs_f64();
    let mut partition_offsets: HashMap<(usize, u32), u64> = HashMap::new();
    let (engine, last_epoch, positions) = match &point.snapshot {
        Some(chain) => {
            let epoch = &chain.epoch;
            let snap = chain.head()?;
            let saved_settings: Vec<(String, String)> = snap
                .settings
                .iter()
                .map(|t| (t.0.to_string(), t.1.to_string()))
                .collect();
            let changes =
                checkpoint::identity::compare(&snap.inputs, &saved_settings, &tracked, &settings);
            if !changes.is_empty() {
                return Err(checkpoint::identity::Mismatch {
                    epoch: *epoch,
                    out: out.clone(),
                    changes,
                }
                .into());
            }
            let rebuilding = std::time::Instant::now();
            let engine = Engine::restore(cfg.engine(), &chain.engines()?);
            // What a restore costs, for the operator sizing a restart (docs/operations.md).
            let timing = format!(
                "checkpoint chosen and its {} file(s), {:.1} MiB, read and validated in {loaded_s:.2} s; state rebuilt in {:.2} s",
                chain.len(),
                chain.bytes() as f64 / (1024.0 * 1024.0),
                rebuilding.elapsed().as_secs_f64()
            );
            let positions = [0, 1].map(|i| Position {
                line: snap.positions[i].lines.to_native(),
                offset: snap.positions[i].bytes.to_native(),
            });
            for t in snap.partition_offsets.iter() {
                partition_offsets.insert((usize::from(t.0), t.1.to_native()), t.2.to_native());
            }
            if partition_offsets.is_empty() {
                tracing::info!(
                    epoch,
                    clicks_line = positions[0].line,
                    conversions_line = positions[1].line,
                    %timing,
                    "resuming from checkpoint"
                );
            } else {
                let mut offsets: Vec<_> = partition_offsets.iter().collect();
                offsets.sort();
                let offsets = offsets
                    .iter()
                    .map(|((s, p), o)| format!("{}/{p}@{o}", ["clicks", "conversions"][*s]))
                    .collect::<Vec<_>>()
                    .join(" ");
                tracing::info!(epoch, %offsets, %timing, "resuming from checkpoint (next offset per partition)");
            }
            (engine, *epoch, positions)
        }
        None => (Engine::new(cfg.engine()), 0, [Position::default(); 2]),
    };
    if let Some(ended) = &point.superseded {
        // Durable before the first output is taken back: a run killed anywhere in the
        // rollback is followed by one that finishes it (`choose_restore_point`).
        checkpoint::rollback::begin(&state_dir, *ended)?;
    }
    let discarded = crate::sink::discard_after(out, last_epoch)?;
    if point.superseded.is_some() {
        crate::failpoint::crash_point("rollback-discarded");
    }
    if discarded > 0 {
        tracing::info!(
            files = discarded,
            epoch = last_epoch,
            "removed outputs written after the checkpoint; they are written again"
        );
    }
    // After going back behind a finished run's end, the epoch that end wrote is skipped, so
    // no output of this run is ever taken for one of the outputs just taken back.
    let epoch = last_epoch + if point.superseded.is_some() { 2 } else { 1 };
    // Durable before any output: a run killed before its first checkpoint is followed by one
    // that takes back what it wrote.
    let instance = checkpoint::instance::get_or_create(&state_dir)?;
    Ok(Restored {
        lock,
        engine,
        last_epoch,
        epoch,
        positions,
        partition_offsets,
        resumed_finished: point.finished,
        superseded: point.superseded,
        instance,
        tracked,
        settings,
    })
}

/// Which checkpoint a run resumes from.
pub(super) struct RestorePoint {
    snapshot: Option<checkpoint::Chain>,
    /// The snapshot is a finished run's end and no input has more: nothing left to do.
    finished: bool,
    /// Going back behind a finished run's end (its input has more now): that end's epoch,
    /// whose outputs are taken back and whose checkpoint is replaced by the one resumed from.
    superseded: Option<u64>,
}

/// The latest valid checkpoint — or, when that is a finished run's end and the input has
/// grown since (a plain file appended to, stdin, a Fluvio topic), the checkpoint before that
/// end: what the end resolved (pending conversions released, aggregates flushed) is then
/// decided again with the new records, as a clean run of the longer input decides it. A
/// rollback that a killed run began (`checkpoint::rollback`) is finished the same way, whether
/// or not the input still has more.
pub(super) fn choose_restore_point(
    cfg: &PipelineConfig,
    state_dir: &std::path::Path,
    inputs_now: &[checkpoint::identity::TrackedInput],
) -> Result<RestorePoint> {
    let Some(latest) = checkpoint::load_latest(state_dir)? else {
        return Ok(RestorePoint {
            snapshot: None,
            finished: false,
            superseded: None,
        });
    };
    let epoch = latest.epoch;
    let (finished, more) = {
        let snap = latest.head()?;
        let more = match cfg.source.kind {
            // A log that grows.
            SourceKind::Fluvio | SourceKind::Http => true,
            SourceKind::Generator => false,
            SourceKind::Files => inputs_now.iter().any(|t| {
                snap.inputs
                    .iter()
                    .find(|s| s.stream == t.stream())
                    .is_some_and(|s| t.grew_past(s))
            }),
        };
        (snap.finished, more)
    };
    // A begun rollback of this very end: its outputs may be partly gone, so it is finished.
    let rollback_begun = checkpoint::rollback::pending(state_dir);
    let more = more || (finished && rollback_begun == Some(epoch));
    if rollback_begun.is_some() && !(finished && more) {
        // Stale: the end it names was already replaced (or a newer checkpoint followed).
        checkpoint::rollback::finish(state_dir)?;
    }
    if !finished || !more {
        return Ok(RestorePoint {
            snapshot: Some(latest),
            finished,
            superseded: None,
        });
    }
    match checkpoint::load_newest_before(state_dir, epoch)? {
        Some(b) if !b.head()?.finished => {
            let before = b.epoch;
            tracing::info!(
                ended = epoch,
                resuming = before,
                "the input has more since the run ended: resuming from the checkpoint before \
                 its end; the outputs of that end are taken back and decided again"
            );
            Ok(RestorePoint {
                snapshot: Some(b),
                finished: false,
                superseded: Some(epoch),
            })
        }
        _ => anyhow::bail!(
            "the run in {} ended at checkpoint {epoch} and its input has more since, but the \
             checkpoint before that end is missing or damaged, so the end cannot be decided \
             again; start over with --fresh, or write to another --out",
            state_dir.display()
        ),
    }
}

/// `--fresh`: everything in the state directory goes, except the lock this run holds.
pub(super) fn remove_state(state_dir: &std::path::Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        // The erasure ledger and audit log outlive a fresh start: reprocessing the inputs
        // must not bring an erased customer back.
        if e.file_name() == checkpoint::lock::LOCK_FILE || e.file_name() == "privacy" {
            continue;
        }
        let path = e.path();
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.with_context(|| format!("removing {} (--fresh)", path.display()))?;
    }
    Ok(())
}
