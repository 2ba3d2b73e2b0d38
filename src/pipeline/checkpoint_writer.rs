//! The checkpoint writer: the thread that puts snapshots on disk, so the state stage does not.
//!
//! At a checkpoint the state stage stops only to send a barrier down the sink queues and to take
//! the engine's changes since the last checkpoint and its small parts into a delta
//! [`Snapshot`]; waiting for the sinks to make the outputs before the barrier durable, then
//! serializing the snapshot (rkyv), writing, fsyncing and renaming the file happen here
//! while the state stage goes on with the next epoch, and now and then a compaction folds the
//! deltas into a full snapshot beside it (`compaction.rs`). What must follow the snapshot on disk follows it here:
//! the batches it covers are observed as durable, and (Fluvio) the offsets it covers are
//! committed. One snapshot is in flight at most: the state stage waits for the previous one
//! before it hands over the next (and at the end of the run for the last), and a failed write
//! stops the run with its error at that point.
//!
//! A crash while a snapshot is in flight is a crash before that checkpoint: the restart
//! resumes from the previous one and deletes the outputs of later epochs, as after any crash.

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, Sender, bounded};
use prometheus_client::metrics::histogram::Histogram;

use super::compaction::Compactor;
use crate::checkpoint::{self, Snapshot};
use crate::source::fluvio::commit::Committer;
use crate::state::EngineConfig;
use crate::telemetry::Metrics;

/// One snapshot to write and what follows it.
pub(super) struct Job {
    /// The erasure filter's version when the barrier went out: every row sent before it was
    /// filtered at this version or earlier (`lifecycle::privacy`).
    pub(super) erased_version: u64,
    /// The sinks' acks of the checkpoint's barrier: the snapshot is written once they are in.
    pub(super) acks: super::sinks::BarrierAcks,
    pub(super) snap: Snapshot,
    /// Stream and arrival time of the batches the snapshot covers: durable once it is written.
    pub(super) arrived: Vec<(usize, Instant)>,
    /// (Fluvio) topic, partition and next offset per partition the snapshot covers.
    pub(super) offsets: Option<Vec<(String, u32, u64)>>,
    /// (HTTP) next offset of each stream's write-ahead log the snapshot covers.
    pub(super) wal_next: [Option<u64>; 2],
    /// When the checkpoint began (barrier included), for its duration.
    pub(super) began: Instant,
    /// The run ends after this checkpoint (or after the end's, which follows at once): no
    /// compaction starts for it (see [`Compactor::after_write`]).
    pub(super) ending: bool,
}

/// A written snapshot.
struct Written {
    bytes: u64,
}

/// Handle on the writer thread, owned by the state stage.
pub(super) struct CheckpointWriter {
    jobs: Option<Sender<Job>>,
    written: Receiver<Result<Written>>,
    in_flight: bool,
    thread: Option<JoinHandle<()>>,
    /// Size of the last snapshot written.
    pub(super) last_bytes: u64,
}

impl CheckpointWriter {
    pub(super) fn start(
        state_dir: PathBuf,
        metrics: std::sync::Arc<Metrics>,
        durable_latency: [Histogram; 2],
        committer: Option<Committer>,
        wal_covered: Option<std::sync::Arc<crate::source::http::Covered>>,
        engine: EngineConfig,
        settled: Option<Sender<(u64, u64)>>,
    ) -> Result<CheckpointWriter> {
        let (jobs, rx) = bounded::<Job>(1);
        let (done_tx, written) = bounded::<Result<Written>>(1);
        let mut compactor = Compactor::new(state_dir.clone(), engine, metrics.clone());
        let thread = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                // The HTTP logs are cut one checkpoint behind: a restore that falls back from
                // a damaged newest checkpoint to the one before still finds its records.
                let mut wal_before: [Option<u64>; 2] = [None; 2];
                for job in rx {
                    let epoch = job.snap.epoch;
                    let erased_version = job.erased_version;
                    let wal_next = job.wal_next;
                    let ending = job.ending;
                    let result = write(&state_dir, job, &metrics, &durable_latency, &committer);
                    if result.is_ok()
                        && let Some(covered) = &wal_covered
                    {
                        for (s, next) in wal_before.iter().enumerate() {
                            if let Some(next) = next {
                                covered.set(s, *next);
                            }
                        }
                        wal_before = wal_next;
                    }
                    let failed = result.is_err();
                    if !failed {
                        // The lifecycle thread may now touch this epoch's files (it takes
                        // the latest epoch it was told; a missed one only delays it).
                        if let Some(s) = &settled {
                            let _ = s.try_send((epoch, erased_version));
                        }
                        compactor.after_write(epoch, ending);
                    }
                    if done_tx.send(result).is_err() || failed {
                        break;
                    }
                }
                compactor.finish();
            })
            .context("starting the checkpoint writer thread")?;
        Ok(CheckpointWriter {
            jobs: Some(jobs),
            written,
            in_flight: false,
            thread: Some(thread),
            last_bytes: 0,
        })
    }

    /// Waits until the snapshot in flight (if any) is on disk; its error, if it failed.
    pub(super) fn wait(&mut self) -> Result<()> {
        if !self.in_flight {
            return Ok(());
        }
        self.in_flight = false;
        let written = self
            .written
            .recv()
            .map_err(|_| anyhow::anyhow!("the checkpoint writer thread stopped"))??;
        self.last_bytes = written.bytes;
        Ok(())
    }

    /// Hands a snapshot over (after the previous one is on disk).
    pub(super) fn submit(&mut self, job: Job) -> Result<()> {
        self.wait()?;
        self.jobs
            .as_ref()
            .context("the checkpoint writer is closed")?
            .send(job)
            .map_err(|_| anyhow::anyhow!("the checkpoint writer thread stopped"))?;
        self.in_flight = true;
        Ok(())
    }

    /// The last snapshot on disk, then the thread ends.
    pub(super) fn finish(&mut self) -> Result<()> {
        let result = self.wait();
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        result
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        // A run that fails elsewhere still lets a snapshot in flight land (or fail) whole.
        let _ = self.finish();
    }
}

fn write(
    state_dir: &std::path::Path,
    mut job: Job,
    metrics: &Metrics,
    durable_latency: &[Histogram; 2],
    committer: &Option<Committer>,
) -> Result<Written> {
    let epoch = job.snap.epoch;
    // Outputs before the barrier durable first: a snapshot on disk promises them.
    job.acks.wait()?;
    // Crash tests: a run killed while a snapshot is in flight, its sinks already writing the
    // next epoch.
    crate::failpoint::crash_point("checkpoint-before-snapshot");
    let t = Instant::now();
    job.snap.engine.fraud.sort();
    let bytes = checkpoint::write(state_dir, &job.snap)?;
    let wrote: Duration = t.elapsed();
    drop(job.snap);
    metrics.checkpoint_done(job.began.elapsed(), bytes);
    for (stream, arrived) in job.arrived {
        durable_latency[stream].observe(arrived.elapsed().as_secs_f64());
    }
    if let (Some(c), Some(offsets)) = (committer, job.offsets) {
        c.commit(offsets);
    }
    tracing::debug!(epoch, bytes, wrote = ?wrote, took = ?job.began.elapsed(), "checkpoint written");
    Ok(Written { bytes })
}
