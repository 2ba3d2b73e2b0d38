//! Sources: where raw records come from, before decoding.
//!
//! A source produces [`RawBatch`]es of NDJSON lines for one [`Stream`], each line tagged with its
//! [`Position`] so dead letters point back at the input (and checkpoints can resume from it).
//! Sources are plain blocking producers run on their own threads by the pipeline; a full channel
//! blocks them, which is the backpressure that keeps memory bounded.

pub mod file;
pub mod fluvio;
pub mod generator;

use std::time::Instant;

use crate::event::Position;

/// Lines per raw batch: big enough to amortise channel and allocation costs, small enough that a
/// handful of batches in flight is a few MB.
pub const BATCH_LINES: usize = 4096;

/// A contiguous buffer of lines with their positions.
#[derive(Debug, Default, Clone)]
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
}

/// One line inside a [`RawBatch`] (without its newline).
#[derive(Debug, Clone, Copy)]
pub struct RawRecord {
    pub start: u32,
    pub end: u32,
    pub position: Position,
}

impl RawBatch {
    pub fn with_capacity(bytes: usize, lines: usize) -> RawBatch {
        RawBatch {
            data: Vec::with_capacity(bytes),
            records: Vec::with_capacity(lines),
            end: Position::default(),
            partition: None,
            arrived: None,
        }
    }

    /// Appends a line; the batch's `end` moves past it (`offset` assumes a newline follows).
    pub fn push_line(&mut self, line: &[u8], position: Position) {
        if self.arrived.is_none() {
            self.arrived = Some(Instant::now());
        }
        let start = self.data.len() as u32;
        self.data.extend_from_slice(line);
        self.records.push(RawRecord {
            start,
            end: self.data.len() as u32,
            position,
        });
        self.end = Position {
            line: position.line,
            offset: position.offset + line.len() as u64 + 1,
        };
    }

    pub fn line(&self, rec: &RawRecord) -> &[u8] {
        &self.data[rec.start as usize..rec.end as usize]
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}
