//! attribd: a stream processor for affiliate / performance-marketing tracking data.
//!
//! Data flows one way through the modules:
//!
//! ```text
//! source ──► event::decode ──► state (dedup, attribution, aggregate) ──► rows ──► sink
//! ```
//!
//! [`raw`] holds what travels from a source to a decoder. [`pipeline`] wires the stages with
//! bounded channels; [`config`] describes a pipeline. `docs/architecture.md` is the floor
//! plan; `README.md` says how to run it.

pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod event;
pub mod failpoint;
pub mod ingest;
pub mod lifecycle;
pub mod money;
pub mod pipeline;
pub mod raw;
pub mod report;
pub mod rows;
pub mod sink;
pub mod source;
pub mod state;
pub mod telemetry;
