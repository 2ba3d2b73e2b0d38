//! Readiness: the flags sources and sinks set as they connect or fail, and the list of problems
//! `/ready` (in [`super::server`]) answers 503 with. Held in [`super::Metrics::health`].

use std::sync::atomic::{AtomicBool, Ordering};

/// What `/ready` checks.
#[derive(Debug, Default)]
pub struct Health {
    /// Every source opened / connected.
    pub sources_connected: AtomicBool,
    /// Set once a source failed (its error ends the run).
    pub source_failed: AtomicBool,
    /// Set once a sink failed; the pipeline is going down.
    pub sink_failed: AtomicBool,
    /// The ClickHouse circuit breaker is open (inserts are waiting).
    pub circuit_open: AtomicBool,
}

impl Health {
    /// Problems that make the pipeline not ready (empty = ready).
    pub fn problems(&self) -> Vec<&'static str> {
        let mut p = Vec::new();
        if !self.sources_connected.load(Ordering::Relaxed) {
            p.push("sources not connected");
        }
        if self.source_failed.load(Ordering::Relaxed) {
            p.push("a source failed");
        }
        if self.sink_failed.load(Ordering::Relaxed) {
            p.push("a sink failed");
        }
        if self.circuit_open.load(Ordering::Relaxed) {
            p.push("ClickHouse circuit breaker open");
        }
        p
    }
}
