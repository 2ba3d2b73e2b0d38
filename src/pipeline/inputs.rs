//! The state stage's inputs: decoded batches per stream and partition, and the merge rule that
//! decides which records the engine sees next.
//!
//! A stream from files, stdin or the generator is one sequence: its batches are taken whole,
//! in order. A stream from Fluvio is several partitions read concurrently; their records are
//! merged by event time — the partition whose next record is earliest goes first (ties: the
//! lower partition number), in runs as long as it stays earliest — and every partition that is
//! not known to be caught up must have its next batch here before anything is merged. The
//! merged order is therefore a function of what the partitions hold, not of how fast each was
//! read: a run is repeatable, a replay from a checkpoint continues exactly, and the click
//! watermark (the highest event time the engine has seen) never runs ahead of a partition
//! that still has older clicks to deliver — in effect the minimum over the partitions' own
//! watermarks, which is what attribution needs.
//!
//! Positions follow the records: a partition's checkpoint position is the offset of the first
//! record the engine has not seen (a run may end in the middle of a batch).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crate::event::{ClickBatch, ConversionBatch, DeadLetter, Position, Stream};
use crate::rows::ClickRows;
use crate::source::{Credit, Signal};

/// A decoded batch with where its stream stands after it.
pub struct Decoded {
    pub kind: DecodedKind,
    pub dead: Vec<DeadLetter>,
    /// Position of the stream (or partition) after this batch.
    pub end: Position,
    /// Fluvio partition of the batch (then positions are that partition's offsets).
    pub partition: Option<u32>,
    /// The batch's earliest event time (`i64::MIN` for a batch without records, which is
    /// taken at once): how a whole batch of a single-sequence stream is ordered.
    pub first_ts: i64,
    /// When the source read the batch's first line.
    pub arrived: Option<Instant>,
    /// A partition signal instead of records.
    pub signal: Option<Signal>,
    /// Returned to the partition's reader when the batch is dropped (held for its `Drop`).
    #[allow(dead_code)]
    pub credit: Option<Credit>,
}

pub enum DecodedKind {
    Clicks(Arc<ClickBatch>),
    Conversions(ConversionBatch),
}

impl Decoded {
    /// Records in the batch, valid or not (queue depth accounting).
    pub fn records(&self) -> usize {
        self.dead.len() + self.len()
    }

    /// Valid records.
    fn len(&self) -> usize {
        match &self.kind {
            DecodedKind::Clicks(b) => b.clicks.len(),
            DecodedKind::Conversions(b) => b.conversions.len(),
        }
    }

    fn ts(&self, i: usize) -> i64 {
        match &self.kind {
            DecodedKind::Clicks(b) => b.clicks[i].ts_ms,
            DecodedKind::Conversions(b) => b.conversions[i].ts_ms,
        }
    }

    fn position(&self, i: usize) -> Position {
        match &self.kind {
            DecodedKind::Clicks(b) => b.clicks[i].position,
            DecodedKind::Conversions(b) => b.conversions[i].position,
        }
    }
}

/// One partition's queue and how far the engine is into its front batch.
struct Cursor {
    partition: Option<u32>,
    queue: VecDeque<Decoded>,
    /// Next record of the front batch.
    rec: usize,
    /// Next dead letter of the front batch.
    dead: usize,
    /// The last message taken off the queue said the partition is caught up.
    caught_up: bool,
    /// The offset a caught-up signal said the partition is read to (a position for the
    /// checkpoint of a partition that delivered nothing).
    caught_up_at: Option<u64>,
    /// Accepted clicks of the front batch not yet handed to the sinks.
    accepted: Vec<(u32, bool)>,
}

impl Cursor {
    fn new(partition: Option<u32>) -> Cursor {
        Cursor {
            partition,
            queue: VecDeque::new(),
            rec: 0,
            dead: 0,
            caught_up: false,
            caught_up_at: None,
            accepted: Vec::new(),
        }
    }

    /// Takes signals off the front (they apply once everything before them is processed).
    fn settle(&mut self) {
        while let Some(front) = self.queue.front() {
            match &front.signal {
                Some(Signal::CaughtUp(_, at)) => {
                    self.caught_up = true;
                    self.caught_up_at = *at;
                    self.queue.pop_front();
                }
                Some(Signal::Partitions(_)) => {
                    self.queue.pop_front();
                }
                None => break,
            }
        }
    }

    /// Merge key of the next record: (event time, partition).
    fn head(&self, whole_batches: bool) -> Option<(i64, u32)> {
        let front = self.queue.front()?;
        let ts = if whole_batches && self.rec == 0 {
            front.first_ts
        } else if self.rec < front.len() {
            front.ts(self.rec)
        } else {
            // Only dead letters (or nothing) left: take at once.
            i64::MIN
        };
        Some((ts, self.partition.unwrap_or(0)))
    }
}

/// Where a stream stands for the merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Its next run starts at this event time.
    Ready(i64),
    /// A partition that may have records has not delivered its next batch yet.
    Waiting,
    /// Every partition is caught up and nothing is queued (a quiet live stream).
    Quiet,
    /// Ended, and everything it delivered is processed.
    Closed,
}

/// A run of records chosen by the merge: the front batch of cursor `cursor`, records from its
/// current record up to (not including) `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    cursor: usize,
    end: usize,
}

/// What the state stage processes for a run.
pub struct RunView<'a> {
    pub batch: &'a Decoded,
    pub range: std::ops::Range<usize>,
    /// Where the clicks it accepts are collected until the batch is handed on.
    pub accepted: &'a mut Vec<(u32, bool)>,
}

/// What a finished run leaves to do: dead letters to emit, the partition's new position,
/// and — when the batch is done — the batch itself (accepted clicks, latency, credit).
pub struct RunDone {
    pub dead: Vec<DeadLetter>,
    pub partition: Option<u32>,
    /// Position after the run; `None` for a batch without position (an empty stdin batch).
    pub position: Option<Position>,
    pub finished: Option<(Decoded, Vec<(u32, bool)>)>,
}

/// One stream's partitions.
pub struct StreamInput {
    pub stream: Stream,
    cursors: Vec<Cursor>,
    /// A partitioned source announces its partitions before any batch; until then the
    /// stream is `Waiting`.
    partitioned: bool,
    /// Announcements still to come: one per partitioned source feeding the stream (Fluvio
    /// and, beside it, the HTTP door's log). The merge cannot start before it knows every
    /// partition.
    announcements_left: usize,
    /// The channel is still connected.
    pub open: bool,
}

impl StreamInput {
    pub fn new(stream: Stream, partitioned: bool) -> StreamInput {
        StreamInput {
            stream,
            cursors: Vec::new(),
            partitioned,
            announcements_left: 1,
            open: true,
        }
    }

    /// The stream is fed by `n` partitioned sources, each announcing its partitions.
    pub fn with_sources(mut self, n: usize) -> StreamInput {
        self.announcements_left = n;
        self
    }

    /// Queues a decoded batch (or signal) behind its partition's earlier ones.
    pub fn push(&mut self, msg: Decoded) {
        if let Some(Signal::Partitions(list)) = &msg.signal {
            for &p in list {
                self.cursor_mut(Some(p));
            }
            self.announcements_left = self.announcements_left.saturating_sub(1);
            return;
        }
        let partition = if self.partitioned {
            msg.partition
        } else {
            None
        };
        let c = self.cursor_mut(partition);
        if msg.signal.is_none() {
            c.caught_up = false;
        }
        c.queue.push_back(msg);
        c.settle();
    }

    fn cursor_mut(&mut self, partition: Option<u32>) -> &mut Cursor {
        let i = match self
            .cursors
            .binary_search_by_key(&partition, |c| c.partition)
        {
            Ok(i) => i,
            Err(i) => {
                self.cursors.insert(i, Cursor::new(partition));
                i
            }
        };
        &mut self.cursors[i]
    }

    /// Whether the merge can go on with this stream, and from which event time.
    pub fn readiness(&self) -> Readiness {
        if self.open && self.partitioned && self.announcements_left > 0 {
            return Readiness::Waiting;
        }
        let whole = !self.partitioned;
        let mut best: Option<(i64, u32)> = None;
        for c in &self.cursors {
            match c.head(whole) {
                Some(h) => best = Some(best.map_or(h, |b| b.min(h))),
                None if c.caught_up || !self.open => {}
                None => return Readiness::Waiting,
            }
        }
        match best {
            Some((ts, _)) => Readiness::Ready(ts),
            None if !self.open => Readiness::Closed,
            // A single-sequence stream that delivered nothing yet is simply waiting.
            None if self.cursors.is_empty() || !self.partitioned => Readiness::Waiting,
            None => Readiness::Quiet,
        }
    }

    /// The next run (call only when `Ready`): the earliest partition, for as long as its
    /// records stay before every other partition's next one.
    pub fn next_run(&self) -> Option<Run> {
        let whole = !self.partitioned;
        let (cursor, head) = self
            .cursors
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.head(whole).map(|h| (i, h)))
            .min_by_key(|&(_, h)| h)?;
        let c = &self.cursors[cursor];
        let front = c.queue.front()?;
        let len = front.len();
        if whole || head.0 == i64::MIN {
            return Some(Run { cursor, end: len });
        }
        let bound = self
            .cursors
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != cursor)
            .filter_map(|(_, c)| c.head(false))
            .min();
        let p = c.partition.unwrap_or(0);
        let mut end = c.rec;
        while end < len && bound.is_none_or(|b| (front.ts(end), p) < b) {
            end += 1;
        }
        Some(Run {
            cursor,
            end: end.max(c.rec + 1).min(len),
        })
    }

    /// The records of `run`, for the engine.
    pub fn view(&mut self, run: Run) -> Option<RunView<'_>> {
        let c = &mut self.cursors[run.cursor];
        let batch = c.queue.front()?;
        Some(RunView {
            batch,
            range: c.rec..run.end,
            accepted: &mut c.accepted,
        })
    }

    /// Marks `run` processed: returns the dead letters before the next record, the new
    /// position, and the batch if it is done.
    pub fn complete(&mut self, run: Run) -> RunDone {
        let c = &mut self.cursors[run.cursor];
        let partition = c.partition;
        let Some(front) = c.queue.front_mut() else {
            return RunDone {
                dead: Vec::new(),
                partition,
                position: None,
                finished: None,
            };
        };
        c.rec = run.end;
        let len = front.len();
        let (dead, position, done) = if run.end < len {
            // Dead letters are in input order: those before the next record go now.
            let next = front.position(run.end);
            let upto = front.dead[c.dead..]
                .iter()
                .take_while(|d| d.position.line < next.line)
                .count();
            let dead: Vec<DeadLetter> = front.dead[c.dead..c.dead + upto].to_vec();
            c.dead += upto;
            (dead, Some(next), false)
        } else {
            let dead = front.dead.split_off(c.dead.min(front.dead.len()));
            let position = (front.end.line > 0 || partition.is_some()).then_some(front.end);
            (dead, position, true)
        };
        let finished = if done {
            let batch = c.queue.pop_front();
            c.rec = 0;
            c.dead = 0;
            // Whatever the partition said before this batch is history now.
            c.caught_up = false;
            let accepted = std::mem::take(&mut c.accepted);
            c.settle();
            batch.map(|b| (b, accepted))
        } else {
            None
        };
        RunDone {
            dead,
            partition,
            position,
            finished,
        }
    }

    /// Partitions that said they are read up to an offset: (partition, next offset).
    pub fn caught_up_positions(&self) -> Vec<(u32, u64)> {
        self.cursors
            .iter()
            .filter_map(|c| Some((c.partition?, c.caught_up_at?)))
            .collect()
    }

    /// Accepted clicks of batches still in progress (for a checkpoint: everything processed
    /// goes to the sinks before the barrier).
    pub fn take_partial_clicks(&mut self) -> Vec<ClickRows> {
        let mut out = Vec::new();
        for c in &mut self.cursors {
            if c.accepted.is_empty() {
                continue;
            }
            if let Some(Decoded {
                kind: DecodedKind::Clicks(b),
                ..
            }) = c.queue.front()
            {
                out.push(ClickRows {
                    batch: b.clone(),
                    accepted: std::mem::take(&mut c.accepted),
                    scrubbed: Vec::new(),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
