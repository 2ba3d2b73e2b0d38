//! One partition's reader: a task on the source's runtime that turns a Fluvio partition into
//! raw batches whose positions are offsets — with no record skipped, none repeated, and no
//! wait that can hang.
//!
//! The loop: open a batch stream at the next expected offset; take records while they are
//! consecutive ([`OffsetTracker`]); on a gap, an error, an ended stream (the SPU went away) or a
//! stall while the log holds more, re-open at the next expected offset with capped backoff
//! (the partition counts as disconnected meanwhile, so `/ready` says 503). When nothing new
//! arrives and the partition is read up to its log end, the reader tells the state stage
//! ([`Signal::CaughtUp`]) so the merge of partitions does not wait for it.
//!
//! Reads use attribd's own stream fetch (`fetch.rs`): whole batches with their base offset, and
//! no records skipped where a response cuts a batch, as the `fluvio` 0.50.1 consumer does.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::{FutureExt, StreamExt};

use super::admin::Backoff;
use super::fetch::{self, BatchStream};
use super::offsets::{Check, OffsetTracker};
use crate::raw::Position;
use crate::source::{BATCH_LINES, Credit, RawBatch, Signal};
use crate::telemetry::SharedMetrics;

/// How long a read waits for the next batch before the reader looks around (caught up? stop?).
const POLL: Duration = Duration::from_millis(100);
/// Nothing arrives although the log end says there is more: re-open after this long.
const STALL: Duration = Duration::from_secs(3);
/// Batches a partition may have in flight between its reader and the end of the state stage.
pub const CREDITS: usize = 8;

/// State shared by the readers, the log-end poller and the pipeline.
#[derive(Default)]
pub struct Board {
    /// Set by the pipeline (stop signal) or the idle watch (exit when idle): readers end.
    pub finish: AtomicBool,
    /// Partitions whose stream is open, out of `partitions`.
    pub connected: AtomicU64,
    pub partitions: AtomicU64,
    /// Per (topic, partition): log start and end as last polled.
    pub ends: std::sync::Mutex<std::collections::HashMap<(String, u32), (i64, i64)>>,
    /// Per (topic, partition): the next offset to read (for the lag).
    pub read: std::sync::Mutex<std::collections::HashMap<(String, u32), i64>>,
    /// Per (topic, partition): caught up and when the last record arrived.
    pub idle: std::sync::Mutex<std::collections::HashMap<(String, u32), (bool, Instant)>>,
}

impl Board {
    fn log_end(&self, topic: &str, partition: u32) -> Option<(i64, i64)> {
        let ends = self.ends.lock().ok()?;
        ends.get(&(topic.to_string(), partition)).copied()
    }

    fn set_idle(&self, topic: &str, partition: u32, caught_up: bool, record: bool) {
        if let Ok(mut idle) = self.idle.lock() {
            let e = idle
                .entry((topic.to_string(), partition))
                .or_insert((false, Instant::now()));
            e.0 = caught_up;
            if record {
                e.1 = Instant::now();
            }
        }
    }

    fn set_read(&self, topic: &str, partition: u32, next: Option<i64>) {
        if let (Some(next), Ok(mut read)) = (next, self.read.lock()) {
            read.insert((topic.to_string(), partition), next);
        }
    }

    /// Every partition caught up and without a record for `idle`.
    pub fn all_idle_for(&self, idle: Duration) -> bool {
        let Ok(map) = self.idle.lock() else {
            return false;
        };
        map.len() as u64 == self.partitions.load(Ordering::Relaxed)
            && map.values().all(|(c, last)| *c && last.elapsed() >= idle)
    }
}

/// Everything one partition reader needs.
pub struct PartitionReader {
    pub fluvio: Arc<fluvio::Fluvio>,
    /// Endpoint and TLS settings, for the connection to the partition's leader SPU.
    pub cluster: Arc<fluvio::FluvioClusterConfig>,
    pub topic: String,
    pub partition: u32,
    /// Where to start without a known position.
    pub start: super::StartFrom,
    pub tracker: OffsetTracker,
    pub max_fetch_bytes: i32,
    pub credits: Arc<tokio::sync::Semaphore>,
    /// Hands a batch to the pipeline (never blocks: the credits bound what is in flight).
    pub send: Arc<dyn Fn(RawBatch) -> bool + Send + Sync>,
    pub board: Arc<Board>,
    pub metrics: SharedMetrics,
}

impl PartitionReader {
    /// Reads until the board says finish or the pipeline stops taking batches.
    pub async fn run(mut self) -> Result<()> {
        let mut backoff = Backoff::new(Duration::from_secs(5));
        let mut connected = false;
        let mut sent_caught_up = false;
        let mut opened_once = false;
        self.board
            .set_idle(&self.topic, self.partition, false, true);
        // Without a position, `beginning`/`end` become concrete offsets now: a re-open (or a
        // restart from a checkpoint that saw nothing of this partition) starts exactly there.
        if self.tracker.next().is_none()
            && let Some((start, end)) = self.board.log_end(&self.topic, self.partition)
        {
            let at = if self.start == super::StartFrom::End {
                end
            } else {
                start
            };
            self.tracker = OffsetTracker::new(Some(at));
        }
        self.board
            .set_read(&self.topic, self.partition, self.tracker.next());
        let mut last_gap: Option<i64> = None;
        'open: loop {
            if self.finishing() {
                break;
            }
            let mut stream = match self.open().await {
                Ok(s) => s,
                Err(e) => {
                    if connected {
                        connected = false;
                        self.board.connected.fetch_sub(1, Ordering::Relaxed);
                    }
                    let wait = backoff.wait();
                    tracing::warn!(topic = %self.topic, partition = self.partition, error = %format!("{e:#}"), retry_in = ?wait, "cannot open the Fluvio partition; retrying");
                    self.pause(wait).await;
                    continue 'open;
                }
            };
            if opened_once {
                self.metrics.fluvio_reconnect(&self.topic, self.partition);
            }
            opened_once = true;
            if !connected {
                connected = true;
                self.board.connected.fetch_add(1, Ordering::Relaxed);
            }
            let mut batch = RawBatch::default();
            let mut last_progress = Instant::now();
            loop {
                if self.finishing() {
                    break 'open;
                }
                // Gather what is already there into one batch; wait only when it is empty.
                let item = if batch.is_empty() {
                    tokio::time::timeout(POLL, stream.next()).await.ok()
                } else {
                    stream.next().now_or_never()
                };
                let item = match item {
                    Some(item) => item,
                    None => {
                        if !batch.is_empty() {
                            if !self.emit(&mut batch).await {
                                break 'open;
                            }
                            sent_caught_up = false;
                            continue;
                        }
                        // Quiet: caught up, or stalled while the log holds more?
                        let ends = self.board.log_end(&self.topic, self.partition);
                        let behind = self.tracker.behind(ends.map(|e| e.1));
                        let caught_up = match (self.tracker.next(), ends) {
                            (Some(_), _) => behind == Some(0),
                            // No record yet: an empty log, or opened at its end.
                            (None, Some((start, end))) => {
                                start >= end || self.start == super::StartFrom::End
                            }
                            (None, None) => false,
                        };
                        if caught_up {
                            if !sent_caught_up {
                                let signal = RawBatch::signal(
                                    Signal::CaughtUp(
                                        self.partition,
                                        self.tracker.next().map(|n| n as u64),
                                    ),
                                    Some(self.partition),
                                );
                                if !(self.send)(signal) {
                                    break 'open;
                                }
                                sent_caught_up = true;
                            }
                            self.board
                                .set_idle(&self.topic, self.partition, true, false);
                            last_progress = Instant::now();
                        } else if behind.is_some_and(|b| b > 0) && last_progress.elapsed() >= STALL
                        {
                            tracing::warn!(topic = %self.topic, partition = self.partition, next = ?self.tracker.next(), behind = ?behind, "Fluvio partition stalled behind its log end; re-opening");
                            continue 'open;
                        }
                        continue;
                    }
                };
                match item {
                    Some(Ok(fetched)) => {
                        last_progress = Instant::now();
                        if !fetched.records().is_empty() {
                            // Before any wait for credits: the idle watch must not see this
                            // partition as idle while its records are on their way.
                            self.board
                                .set_idle(&self.topic, self.partition, false, true);
                        }
                        let base = fetched.get_base_offset();
                        for (i, record) in fetched.records().iter().enumerate() {
                            let offset = base + i as i64;
                            match self.tracker.check(offset) {
                                Check::Take => {
                                    let value = record.value().as_ref();
                                    batch.push_line(
                                        value,
                                        Position {
                                            line: offset as u64,
                                            offset: offset as u64,
                                        },
                                    );
                                    // Fluvio positions are offsets: `end` is the next one.
                                    batch.end = Position {
                                        line: offset as u64 + 1,
                                        offset: offset as u64 + 1,
                                    };
                                }
                                Check::Repeat => continue,
                                Check::Gap { expected, got } => {
                                    tracing::warn!(topic = %self.topic, partition = self.partition, expected, got, missing = got - expected, "Fluvio skipped records; re-reading from the first missing one");
                                    self.metrics.fluvio_gap(
                                        &self.topic,
                                        self.partition,
                                        (got - expected) as u64,
                                    );
                                    if !batch.is_empty() && !self.emit(&mut batch).await {
                                        break 'open;
                                    }
                                    // The same hole again: back off instead of spinning.
                                    if last_gap == Some(expected) {
                                        self.pause(backoff.wait()).await;
                                    } else {
                                        backoff.reset();
                                    }
                                    last_gap = Some(expected);
                                    continue 'open;
                                }
                            }
                            if batch.len() >= BATCH_LINES {
                                if !self.emit(&mut batch).await {
                                    break 'open;
                                }
                                sent_caught_up = false;
                            }
                        }
                        if !batch.is_empty() {
                            sent_caught_up = false;
                            self.board
                                .set_idle(&self.topic, self.partition, false, true);
                        }
                    }
                    Some(Err(fluvio::dataplane::link::ErrorCode::OffsetEvicted {
                        offset,
                        next_available,
                    })) => {
                        tracing::error!(topic = %self.topic, partition = self.partition, offset, next_available, "records were removed by the topic's retention before they were read; continuing at the first one left");
                        if !batch.is_empty() && !self.emit(&mut batch).await {
                            break 'open;
                        }
                        self.tracker.skip_to(next_available);
                        continue 'open;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(topic = %self.topic, partition = self.partition, error = ?e, "Fluvio stream error; re-opening");
                        if !batch.is_empty() && !self.emit(&mut batch).await {
                            break 'open;
                        }
                        self.pause(backoff.wait()).await;
                        continue 'open;
                    }
                    None => {
                        // The SPU closed the stream (restart, outage): re-open where we are.
                        tracing::warn!(topic = %self.topic, partition = self.partition, "Fluvio stream ended; re-opening");
                        if !batch.is_empty() && !self.emit(&mut batch).await {
                            break 'open;
                        }
                        if connected {
                            connected = false;
                            self.board.connected.fetch_sub(1, Ordering::Relaxed);
                        }
                        self.pause(backoff.wait()).await;
                        continue 'open;
                    }
                }
            }
        }
        if connected {
            self.board.connected.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn finishing(&self) -> bool {
        self.board.finish.load(Ordering::Relaxed)
    }

    /// Sleeps `wait`, or less when the reader is told to finish.
    async fn pause(&self, wait: Duration) {
        let until = Instant::now() + wait;
        while Instant::now() < until && !self.finishing() {
            tokio::time::sleep(POLL.min(until - Instant::now())).await;
        }
    }

    /// A stream at the next expected offset (or where `start` says, before the first record).
    async fn open(&self) -> Result<BatchStream> {
        fetch::open(
            &self.fluvio,
            &self.cluster,
            &self.topic,
            self.partition,
            (self.tracker.next(), self.start),
            self.max_fetch_bytes,
        )
        .await
    }

    /// Sends the batch once the partition has a credit for it; false when the pipeline stops.
    async fn emit(&self, batch: &mut RawBatch) -> bool {
        let credit = loop {
            if self.finishing() {
                return false;
            }
            match tokio::time::timeout(POLL, Credit::take(&self.credits)).await {
                Ok(Some(c)) => break c,
                Ok(None) => return false,
                Err(_) => continue,
            }
        };
        let mut b = std::mem::take(batch);
        self.board
            .set_read(&self.topic, self.partition, Some(b.end.line as i64));
        b.partition = Some(self.partition);
        b.credit = Some(credit);
        (self.send)(b)
    }
}
