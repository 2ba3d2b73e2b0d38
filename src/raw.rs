//! Raw records: the unit that travels from a source to a decoder.
//!
//! A [`RawBatch`] holds NDJSON lines (or Fluvio record values) with their [`Position`]s, plus
//! what a partitioned source tells the state stage besides records ([`Signal`], [`Credit`]).
//! Sources produce them and `event::decode` consumes them, so they live here, below both:
//! neither imports the other.

use std::sync::Arc;
use std::time::Instant;

/// Where a record came from, for dead letters and checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// 1-based line number (file/stdin/generator) or record offset (Fluvio).
    pub line: u64,
    /// Byte offset of the start of the record in its source.
    pub offset: u64,
}

/// Lines per raw batch: big enough to amortise channel and allocation costs, small enough that a
/// handful of batches in flight is a few MB.
pub const BATCH_LINES: usize = 4096;

/// A contiguous buffer of lines with their positions.
#[derive(Debug, Default)]
pub struct RawBatch {
    pub data: Vec<u8>,
    pub records: Vec<RawRecord>,
    /// Where the stream stands after this batch (lines and bytes consumed so far): what a
    /// checkpoint records, and where a restored run resumes.
    pub end: Position,
    /// The Fluvio partition the batch came from (then `end.line` is its next offset).
    pub partition: Option<u32>,
    /// When the batch's first line was read: the start of its latency measurement.
    pub arrived: Option<Instant>,
    /// Not lines but news about the partition (a partitioned source only).
    pub signal: Option<Signal>,
    /// The partition's in-flight allowance this batch holds; given back when the state stage
    /// is done with the batch (see [`Credit`]).
    pub credit: Option<Credit>,
    /// The source its dead letters name, when not the stream's (an HTTP request's id).
    pub source: Option<Arc<str>>,
}

/// What a partitioned source tells the state stage besides records. Travels in order with
/// the partition's batches, so the state stage sees it exactly after what came before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// The partitions this stream is made of; sent once, before any batch. Until it arrives
    /// the state stage waits: it cannot merge partitions it does not know of.
    Partitions(Vec<u32>),
    /// The partition has been read up to its log end (the next offset, when known): the state
    /// stage need not wait for its next batch before merging the others (a later batch makes
    /// it a member again).
    CaughtUp(u32, Option<u64>),
}

/// One unit of a partition's in-flight allowance. A partition reader takes one per batch it
/// sends and the state stage returns it (by dropping the batch) once the batch is processed.
/// Bounding every partition separately is what lets the state stage wait for a slow partition
/// without a fast one filling memory, and without the fast one's batches blocking the slow
/// one's in the shared channel.
pub struct Credit(Arc<tokio::sync::Semaphore>, u32);

impl Credit {
    /// Takes a credit from `pool` (waits while the partition has none left); `None` once the
    /// pool is closed (the pipeline is stopping).
    pub async fn take(pool: &Arc<tokio::sync::Semaphore>) -> Option<Credit> {
        let permit = pool.acquire().await.ok()?;
        permit.forget();
        Some(Credit(pool.clone(), 1))
    }

    /// `n` permits (at most the pool's size, or it waits forever) from `pool` for a thread
    /// outside any runtime (the HTTP door's log writers): waits, polling every millisecond,
    /// while they are not there. `None` once `gone()` says the pipeline is stopping.
    pub fn take_blocking(
        pool: &Arc<tokio::sync::Semaphore>,
        n: u32,
        gone: impl Fn() -> bool,
    ) -> Option<Credit> {
        let n = n.max(1);
        loop {
            match pool.try_acquire_many(n) {
                Ok(permit) => {
                    permit.forget();
                    return Some(Credit(pool.clone(), n));
                }
                Err(tokio::sync::TryAcquireError::Closed) => return None,
                Err(tokio::sync::TryAcquireError::NoPermits) if gone() => return None,
                Err(tokio::sync::TryAcquireError::NoPermits) => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
            }
        }
    }
}

impl Drop for Credit {
    fn drop(&mut self) {
        self.0.add_permits(self.1 as usize);
    }
}

impl std::fmt::Debug for Credit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credit")
    }
}

/// How much of a line longer than `limits.max_record_bytes` is kept: its head, enough to
/// recognise the record in the dead-letter output.
pub const OVERSIZE_HEAD_BYTES: usize = 1024;

/// One line inside a [`RawBatch`] (without its newline).
#[derive(Debug, Clone, Copy)]
pub struct RawRecord {
    /// Where the line's bytes are in the batch's `data`.
    pub start: usize,
    pub end: usize,
    /// The line's length in the stream, bytes (without newline). Longer than `end - start`
    /// when the reader kept only the head of an oversize line (see [`crate::source::file::read_batches`]):
    /// the rest was skipped, never held in memory.
    pub len: u64,
    pub position: Position,
}

impl RawRecord {
    /// Only the head of the line is in the batch.
    pub fn is_cut(&self) -> bool {
        self.len > (self.end - self.start) as u64
    }
}

impl RawBatch {
    pub fn with_capacity(bytes: usize, lines: usize) -> RawBatch {
        RawBatch {
            data: Vec::with_capacity(bytes),
            records: Vec::with_capacity(lines),
            end: Position::default(),
            partition: None,
            arrived: None,
            signal: None,
            credit: None,
            source: None,
        }
    }

    /// A batch that carries only a [`Signal`] (for `partition`, if any).
    pub fn signal(signal: Signal, partition: Option<u32>) -> RawBatch {
        RawBatch {
            partition,
            signal: Some(signal),
            ..RawBatch::default()
        }
    }

    /// Appends a line; the batch's `end` moves past it (`offset` assumes a newline follows).
    pub fn push_line(&mut self, line: &[u8], position: Position) {
        if self.arrived.is_none() {
            self.arrived = Some(Instant::now());
        }
        let start = self.data.len();
        self.data.extend_from_slice(line);
        self.records.push(RawRecord {
            start,
            end: self.data.len(),
            len: line.len() as u64,
            position,
        });
        self.end = Position {
            line: position.line,
            offset: position.offset + line.len() as u64 + 1,
        };
    }

    pub fn line(&self, rec: &RawRecord) -> &[u8] {
        &self.data[rec.start..rec.end]
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod credit_tests {
    use super::*;

    /// Several permits at once, given back on drop; a thread waiting for more than is left
    /// gets them once they come back, or gives up when told the pipeline is gone.
    #[test]
    fn blocking_credits_take_several_permits_and_wait_for_them() {
        let pool = Arc::new(tokio::sync::Semaphore::new(4));
        let three = Credit::take_blocking(&pool, 3, || false).expect("3 of 4");
        assert_eq!(pool.available_permits(), 1);
        assert!(Credit::take_blocking(&pool, 2, || true).is_none(), "gone");
        let waiter = {
            let pool = pool.clone();
            std::thread::spawn(move || Credit::take_blocking(&pool, 2, || false).is_some())
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(three);
        assert!(waiter.join().unwrap());
        assert_eq!(
            pool.available_permits(),
            4,
            "the waiter's credit dropped too"
        );
    }
}
