//! The queues between the stages and the threads that run them.
//!
//! Every queue is bounded (`CHANNEL_BATCHES` batches): a slow stage blocks the one before it,
//! so memory stays flat and nothing is dropped. The sending side of each queue keeps a depth
//! gauge in records (`attribd_queue_depth_events`), the unit operators alert on.

use std::thread;

use anyhow::{Context, Result};
use crossbeam_channel::Sender;
use prometheus_client::metrics::gauge::Gauge;

use crate::telemetry::{Metrics, Queue, SharedMetrics};

/// Batches in flight per channel.
pub(super) const CHANNEL_BATCHES: usize = 4;

/// The sending side of a bounded queue that keeps the queue's depth gauge, in records (the
/// unit operators alert on), not batches.
pub(super) struct Metered<T> {
    tx: Sender<T>,
    depth: Gauge,
}

impl<T> Metered<T> {
    pub(super) fn new(tx: Sender<T>, metrics: &Metrics, queue: Queue) -> Metered<T> {
        Metered {
            tx,
            depth: metrics.queue(queue).clone(),
        }
    }

    /// Blocks while the queue is full (backpressure); false once the receiver is gone.
    pub(super) fn send(&self, msg: T, records: usize) -> bool {
        self.depth.inc_by(records as i64);
        let ok = self.tx.send(msg).is_ok();
        if !ok {
            self.depth.dec_by(records as i64);
        }
        ok
    }
}

/// Zeroes every queue gauge when dropped: whatever way a run ends, what it leaves in its
/// queues is not a backlog.
pub(super) struct ZeroQueuesOnExit(pub(super) SharedMetrics);

impl Drop for ZeroQueuesOnExit {
    fn drop(&mut self) {
        for q in Queue::ALL {
            self.0.queue(q).set(0);
        }
    }
}

/// Spawns a named stage thread.
pub(super) fn spawn(
    name: &str,
    f: impl FnOnce() -> Result<()> + Send + 'static,
) -> Result<thread::JoinHandle<Result<()>>> {
    thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .with_context(|| format!("spawning thread {name}"))
}
