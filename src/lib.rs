//! attribd: a stream processor for affiliate / performance-marketing tracking data.
//!
//! Data flows one way through the modules:
//!
//! ```text
//! source ──► event::decode ──► state (dedup, attribution, aggregate) ──► rows ──► sink
//! ```
//!
//! [`pipeline`] wires the stages with bounded channels; [`config`] describes a pipeline.
//! See `DESIGN.md` for the contracts and `README.md` for how to run it.

pub mod aggregate;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod event;
pub mod pipeline;
pub mod report;
pub mod rows;
pub mod sink;
pub mod source;
pub mod state;
pub mod telemetry;
