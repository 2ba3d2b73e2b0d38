//! Sources: where raw records come from, before decoding.
//!
//! A source produces [`RawBatch`]es of NDJSON lines for one [`Stream`], each line tagged with its
//! [`Position`] so dead letters point back at the input (and checkpoints can resume from it).
//! Sources are plain blocking producers run on their own threads by the pipeline; a full channel
//! blocks them, which is the backpressure that keeps memory bounded.

pub mod file;
pub mod fluvio;
pub mod generator;
pub mod http;

pub use crate::raw::{BATCH_LINES, Credit, OVERSIZE_HEAD_BYTES, RawBatch, RawRecord, Signal};
