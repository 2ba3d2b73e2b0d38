//! The Fluvio source: clicks and conversions from Fluvio topics, partition by partition.
//!
//! Each instance owns a set of partitions (`partitions = []` means all). Edges key both topics
//! by `click_id`, so a click and its conversions share a partition number and the join stays
//! local to the instance that owns it (see `docs/scaling.md`).
//!
//! [`start`] runs one thread with a tokio runtime for the whole source: it connects (retrying
//! with capped backoff for as long as it takes, `/ready` 503 meanwhile), announces each
//! stream's partitions to the state stage ([`Signal::Partitions`]), then runs
//! * one [`reader::PartitionReader`] task per (topic, partition), concurrently — positions are
//!   offsets, gaps are re-read, outages re-opened, a caught-up partition says so;
//! * a log-end poller (lag metrics, the "caught up" test, a lag log line every 10 s);
//! * the [`commit::CommitTask`], which commits exactly the offsets each checkpoint covers;
//! * with `exit_when_idle`, a watch that ends the readers once every partition is caught up
//!   and quiet for that long.
//!
//! The state stage merges the partitions of a stream by event time (`pipeline`), so the result
//! does not depend on how fast each partition happens to be read.
//!
//! Its settings are in `config.rs`; `produce.rs` is `attribd produce` (loading a file into a
//! topic), which shares only the connection code.

pub mod admin;
pub mod commit;
mod config;
pub mod fetch;
pub mod offsets;
mod produce;
pub mod reader;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use super::{RawBatch, Signal};
use crate::event::Stream;
use crate::telemetry::SharedMetrics;
pub use admin::ensure_topic;
use commit::Committer;
pub use config::{FluvioSourceConfig, FluvioTls, StartFrom};
pub use produce::{partition_key, produce};

/// Where the source delivers one stream's batches: never blocks (the per-partition credits
/// bound what is in flight); false once the pipeline stopped taking them.
pub type Deliver = Arc<dyn Fn(RawBatch) -> bool + Send + Sync>;

/// A running Fluvio source.
pub struct FluvioSource {
    thread: Option<thread::JoinHandle<Result<()>>>,
    pub committer: Committer,
    board: Arc<reader::Board>,
}

impl FluvioSource {
    /// Ends the readers (the pipeline is stopping); the commit task keeps running until the
    /// committer is dropped.
    pub fn finish_reading(&self) {
        self.board.finish.store(true, Ordering::Relaxed);
    }
}

impl FluvioSource {
    /// Ends reading and gives up the committer; the thread ends once the commit task has done
    /// what was asked of it.
    pub fn into_thread(mut self) -> thread::JoinHandle<Result<()>> {
        self.finish_reading();
        let thread = self.thread.take();
        let (committer, _) = commit::channel();
        // The real committer goes with `self`; the commit task ends when no handle is left.
        drop(std::mem::replace(&mut self.committer, committer));
        drop(self);
        thread.expect("the thread is taken only here")
    }
}

impl Drop for FluvioSource {
    /// Whatever way the pipeline ends (an error included), the readers end with it.
    fn drop(&mut self) {
        self.finish_reading();
    }
}

/// Starts the source thread. `resume` holds the next offset per (stream index, partition) from
/// the restored checkpoint; partitions without one start at the consumer's committed offset,
/// else at `start`. Returns at once: connecting happens on the source thread.
pub fn start(
    cfg: &FluvioSourceConfig,
    resume: &HashMap<(usize, u32), u64>,
    deliver: [Deliver; 2],
    metrics: SharedMetrics,
    stop: Arc<AtomicBool>,
) -> Result<FluvioSource> {
    let (committer, commit_task) = commit::channel();
    let board = Arc::new(reader::Board::default());
    let cfg = cfg.clone();
    let resume = resume.clone();
    let b = board.clone();
    let thread = thread::Builder::new()
        .name("source-fluvio".into())
        .spawn(move || {
            let rt = admin::runtime()?;
            let r = rt.block_on(run(
                cfg,
                resume,
                deliver,
                metrics.clone(),
                stop,
                b,
                commit_task,
            ));
            if r.is_err() {
                metrics.health.source_failed.store(true, Ordering::Relaxed);
            }
            r
        })
        .context("spawning the Fluvio source thread")?;
    Ok(FluvioSource {
        thread: Some(thread),
        committer,
        board,
    })
}

async fn run(
    cfg: FluvioSourceConfig,
    resume: HashMap<(usize, u32), u64>,
    deliver: [Deliver; 2],
    metrics: SharedMetrics,
    stop: Arc<AtomicBool>,
    board: Arc<reader::Board>,
    commit_task: commit::CommitTask,
) -> Result<()> {
    // Connecting, and every question asked while setting up, may take as long as the cluster
    // is away (or an SPU hangs); a stop request ends the wait.
    let stop_requested = || {
        let (stop, board) = (stop.clone(), board.clone());
        async move {
            while !(stop.load(Ordering::Relaxed) || board.finish.load(Ordering::Relaxed)) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let fluvio = tokio::select! {
        connected = admin::connect(&cfg, cfg.connect_timeout, |_| {
            metrics.health.sources_connected.store(false, Ordering::Relaxed);
        }) => connected?,
        _ = stop_requested() => return Ok(()),
    };
    let fluvio = Arc::new(fluvio);
    let cluster = Arc::new(admin::cluster_config(&cfg));
    let topics = [Stream::Clicks, Stream::Conversions].map(|s| cfg.topic(s).to_string());
    let setup = async {
        let ends = admin::log_ends(&fluvio, &topics).await?;
        let mut readers = Vec::new();
        for (i, stream) in [Stream::Clicks, Stream::Conversions]
            .into_iter()
            .enumerate()
        {
            let topic = &topics[i];
            let count = admin::partition_count(&fluvio, topic)
                .await?
                .ok_or_else(|| {
                    anyhow!(
                        "Fluvio topic {topic:?} does not exist (source.fluvio.{}_topic)",
                        stream.as_str()
                    )
                })?;
            let owned: Vec<u32> = if cfg.partitions.is_empty() {
                (0..count).collect()
            } else {
                cfg.partitions.clone()
            };
            if let Some(p) = owned.iter().find(|&&p| p >= count) {
                anyhow::bail!(
                    "partition {p} does not exist in Fluvio topic {topic:?} ({count} partitions: 0..={}) (source.fluvio.partitions)",
                    count.saturating_sub(1)
                );
            }
            let committed = admin::committed_offsets(&fluvio, &cfg.consumer, topic).await?;
            let offsets: Vec<String> = owned
                .iter()
                .map(|p| {
                    let next = resume
                        .get(&(i, *p))
                        .map(|&o| format!("{o} (checkpoint)"))
                        .or_else(|| committed.get(p).map(|o| format!("{o} (committed)")))
                        .unwrap_or_else(|| format!("{:?}", cfg.start).to_lowercase());
                    format!("{p}@{next}")
                })
                .collect();
            tracing::info!(%topic, partitions = %offsets.join(" "), "reading Fluvio partitions");
            if !(deliver[i])(RawBatch::signal(Signal::Partitions(owned.clone()), None)) {
                return Ok(None);
            }
            for p in owned {
                let next = resume
                    .get(&(i, p))
                    .map(|&o| o as i64)
                    .or_else(|| committed.get(&p).copied());
                readers.push(reader::PartitionReader {
                    fluvio: fluvio.clone(),
                    cluster: cluster.clone(),
                    topic: topic.clone(),
                    partition: p,
                    start: cfg.start,
                    tracker: offsets::OffsetTracker::new(next),
                    max_fetch_bytes: cfg.max_fetch_bytes.min(i32::MAX as u32) as i32,
                    credits: Arc::new(tokio::sync::Semaphore::new(reader::CREDITS)),
                    send: deliver[i].clone(),
                    board: board.clone(),
                    metrics: metrics.clone(),
                });
            }
        }
        Ok::<_, anyhow::Error>(Some((ends, readers)))
    };
    let (mut ends, readers) = tokio::select! {
        set_up = setup => match set_up? {
            Some(set_up) => set_up,
            None => return Ok(()),
        },
        _ = stop_requested() => return Ok(()),
    };
    drop(deliver);
    board
        .partitions
        .store(readers.len() as u64, Ordering::Relaxed);
    if let Ok(mut e) = board.ends.lock() {
        *e = std::mem::take(&mut ends);
    }

    // Connected (and /ready) only while every partition stream is open.
    let total = readers.len() as u64;
    let watch = {
        let (board, metrics, stop, fluvio) =
            (board.clone(), metrics.clone(), stop.clone(), fluvio.clone());
        let topics = topics.to_vec();
        let exit_when_idle = cfg.exit_when_idle;
        tokio::spawn(async move {
            let mut last_ends = Instant::now() - Duration::from_secs(60);
            let mut last_log = Instant::now();
            loop {
                if stop.load(Ordering::Relaxed) {
                    board.finish.store(true, Ordering::Relaxed);
                }
                if board.finish.load(Ordering::Relaxed) {
                    break;
                }
                let connected = board.connected.load(Ordering::Relaxed) == total;
                metrics
                    .health
                    .sources_connected
                    .store(connected, Ordering::Relaxed);
                if last_ends.elapsed() >= Duration::from_secs(1) {
                    last_ends = Instant::now();
                    match admin::log_ends(&fluvio, &topics).await {
                        Ok(ends) => {
                            if let Ok(mut e) = board.ends.lock() {
                                *e = ends;
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "polling Fluvio log ends"),
                    }
                    report_lag(
                        &board,
                        &metrics,
                        last_log.elapsed() >= Duration::from_secs(10),
                    );
                    if last_log.elapsed() >= Duration::from_secs(10) {
                        last_log = Instant::now();
                    }
                }
                if let Some(idle) = exit_when_idle
                    && board.all_idle_for(idle)
                {
                    tracing::info!(idle = ?idle, "every partition read to its end and quiet; source finished");
                    board.finish.store(true, Ordering::Relaxed);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let tasks: Vec<_> = readers.into_iter().map(|r| tokio::spawn(r.run())).collect();
    let commits = {
        let (fluvio, consumer, metrics) = (fluvio.clone(), cfg.consumer.clone(), metrics.clone());
        tokio::spawn(async move { commit_task.run(&fluvio, &consumer, metrics).await })
    };
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(anyhow!("a Fluvio reader task failed: {e}"));
            }
        }
    }
    board.finish.store(true, Ordering::Relaxed);
    let _ = watch.await;
    // The readers are done (their senders dropped: the streams end); commits go on until the
    // pipeline drops the committer after its final checkpoint.
    let _ = commits.await;
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Lag per partition (records between what was read and the log end) into the metrics, and
/// into the log when `log`.
fn report_lag(board: &reader::Board, metrics: &SharedMetrics, log: bool) {
    let (Ok(ends), Ok(read)) = (board.ends.lock(), board.read.lock()) else {
        return;
    };
    for (key, next) in read.iter() {
        let Some((_, end)) = ends.get(key) else {
            continue;
        };
        let lag = (end - next).max(0);
        metrics.source_lag_records(&key.0, key.1, lag);
        if log {
            tracing::info!(topic = %key.0, partition = key.1, lag, next_offset = next, "consumer lag");
        }
    }
}
