//! Operational telemetry: the Prometheus metrics every stage reports into, and the readiness
//! flags behind `/ready`.
//!
//! It sits beside the data flow, not in it: stages update pre-created metric handles once per
//! *batch* (never per record), and the HTTP server in [`server`] renders them on a scrape. The
//! engine's own counters stay the source of truth for what was processed — they are
//! checkpointed with the state — and are mirrored into Prometheus counters after each batch
//! ([`Metrics::publish_engine`]), so a scrape never touches the state stage.
//!
//! All names carry the `attribd_` prefix; counters end in `_total`, durations are seconds, sizes
//! are bytes, following the Prometheus naming conventions. `docs/operations.md` lists them with
//! the queries and alert rules built on them.
//!
//! The parts: this file (the [`Metrics`] handle and the methods stages call), `register.rs`
//! (every metric's name and help), `mirror.rs` (the engine's counters mirrored), `labels.rs`
//! ([`Queue`], [`SinkKind`]), `health.rs` (what `/ready` checks), [`server`] (HTTP).

mod health;
mod labels;
mod mirror;
mod register;
pub mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use health::Health;
pub use labels::{Queue, SinkKind};
use mirror::EngineCounters;

type Labels = [(&'static str, String); 1];
type Labels2 = [(&'static str, String); 2];
type GaugeF = Gauge<f64, AtomicU64>;
type CounterF = Counter<f64, AtomicU64>;

/// Every metric of a running pipeline, plus its readiness flags. Cheap to share (`Arc`).
pub struct Metrics {
    registry: Registry,
    engine: EngineCounters,
    queues: Vec<Gauge>,
    sink_rows: Family<Labels2, Counter>,
    sink_writes: Family<Labels, Counter>,
    sink_failures: Family<Labels, Counter>,
    latency: Family<Labels2, Histogram>,
    source_lag_records: Family<Labels2, Gauge>,
    source_lag_bytes: Family<Labels, Gauge>,
    fluvio_gaps: Family<Labels2, Counter>,
    fluvio_gap_records: Family<Labels2, Counter>,
    fluvio_reconnects: Family<Labels2, Counter>,
    fluvio_committed: Family<Labels2, Gauge>,
    fluvio_commit_failures: Counter,
    http_requests: Family<Labels2, Counter>,
    http_latency: Family<Labels, Histogram>,
    state_waiting: Family<Labels, CounterF>,
    checkpoint_duration: Histogram,
    checkpoint_pause: Histogram,
    checkpoint_bytes: Gauge,
    compaction_duration: Histogram,
    compaction_bytes: Gauge,
    compaction_failures: Counter,
    checkpoint_last: GaugeF,
    checkpoint_age: GaugeF,
    circuit_open: Gauge,
    retention_partitions: Family<Labels, Counter>,
    retention_bytes: Family<Labels, Counter>,
    erasures: Counter,
    /// Unix seconds at start: the checkpoint age before the first checkpoint.
    started_unix: f64,
    pub health: Health,
}

fn label(k: &'static str, v: &str) -> Labels {
    [(k, v.to_string())]
}

fn labels2(topic: &str, partition: u32) -> Labels2 {
    [
        ("topic", topic.to_string()),
        ("partition", partition.to_string()),
    ]
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Records now waiting in front of `q` (events, not batches).
    pub fn queue(&self, q: Queue) -> &Gauge {
        &self.queues[q as usize]
    }

    /// The row counter of one sink table, to keep and bump without a label lookup each time.
    pub fn sink_rows_handle(&self, sink: SinkKind, table: &str) -> Counter {
        self.sink_rows
            .get_or_create_owned(&[("sink", sink.as_str().into()), ("table", table.into())])
    }

    pub fn sink_rows(&self, sink: SinkKind, table: &str, rows: u64) {
        if rows > 0 {
            self.sink_rows_handle(sink, table).inc_by(rows);
        }
    }

    /// The write-attempt and failure counters of a sink.
    pub fn sink_write_handles(&self, sink: SinkKind) -> SinkWrites {
        let l = label("sink", sink.as_str());
        SinkWrites {
            writes: self.sink_writes.get_or_create_owned(&l),
            failures: self.sink_failures.get_or_create_owned(&l),
        }
    }

    pub fn sink_write(&self, sink: SinkKind, ok: bool) {
        self.sink_write_handles(sink).record(ok);
    }

    /// A histogram handle for repeated observations without a label lookup each.
    pub fn latency_handle(&self, stage: &'static str, stream: &'static str) -> Histogram {
        self.latency
            .get_or_create_owned(&[("stage", stage.to_string()), ("stream", stream.to_string())])
    }

    /// Latency handles of both streams (clicks, conversions) at `stage`.
    pub fn latency_handles(&self, stage: &'static str) -> [Histogram; 2] {
        [
            self.latency_handle(stage, "clicks"),
            self.latency_handle(stage, "conversions"),
        ]
    }

    pub fn source_lag_records(&self, topic: &str, partition: u32, lag: i64) {
        self.source_lag_records
            .get_or_create(&[
                ("topic", topic.into()),
                ("partition", partition.to_string()),
            ])
            .set(lag);
    }

    /// A Fluvio partition skipped `records` offsets and is read again from the first one.
    pub fn fluvio_gap(&self, topic: &str, partition: u32, records: u64) {
        let l = labels2(topic, partition);
        self.fluvio_gaps.get_or_create(&l).inc();
        self.fluvio_gap_records.get_or_create(&l).inc_by(records);
    }

    /// An HTTP ingest request was answered.
    pub fn http_request(&self, route: &'static str, code: u16, took: Duration) {
        self.http_requests
            .get_or_create(&[("route", route.to_string()), ("code", code.to_string())])
            .inc();
        self.http_latency
            .get_or_create(&label("route", route))
            .observe(seconds(took));
    }

    /// The state stage waited `seconds` for input of `stream` (`clicks`, `conversions`, `both`).
    pub fn state_waited(&self, stream: &str, seconds: f64) {
        self.state_waiting
            .get_or_create(&label("stream", stream))
            .inc_by(seconds);
    }

    pub fn fluvio_reconnect(&self, topic: &str, partition: u32) {
        self.fluvio_reconnects
            .get_or_create(&labels2(topic, partition))
            .inc();
    }

    /// A Fluvio commit: `Some(offset)` committed, `None` failed.
    pub fn fluvio_commit(&self, topic: &str, partition: u32, committed: Option<i64>) {
        match committed {
            Some(o) => {
                self.fluvio_committed
                    .get_or_create(&labels2(topic, partition))
                    .set(o);
            }
            None => {
                self.fluvio_commit_failures.inc();
            }
        }
    }

    pub fn source_lag_bytes(&self, stream: &str, lag: i64) {
        self.source_lag_bytes
            .get_or_create(&label("stream", stream))
            .set(lag);
    }

    /// The state stage goes on after sending a checkpoint's barrier and handing over the delta.
    pub fn checkpoint_paused(&self, paused: Duration) {
        self.checkpoint_pause.observe(seconds(paused));
    }

    /// A retention pass deleted `partitions` partitions (`bytes` bytes) of `table`.
    pub fn retention_deleted(&self, table: &str, partitions: u64, bytes: u64) {
        self.retention_partitions
            .get_or_create(&label("table", table))
            .inc_by(partitions);
        self.retention_bytes
            .get_or_create(&label("table", table))
            .inc_by(bytes);
    }

    /// A subject erasure finished.
    pub fn erasure_done(&self) {
        self.erasures.inc();
    }

    pub fn checkpoint_done(&self, took: Duration, bytes: u64) {
        self.checkpoint_duration.observe(seconds(took));
        self.checkpoint_bytes.set(bytes as i64);
        self.checkpoint_last.set(unix_now());
    }

    /// A compaction finished (`Some(bytes)` of the full snapshot written) or failed.
    pub fn checkpoint_compacted(&self, took: Duration, bytes: Option<u64>) {
        match bytes {
            Some(bytes) => {
                self.compaction_duration.observe(seconds(took));
                self.compaction_bytes.set(bytes as i64);
            }
            None => {
                self.compaction_failures.inc();
            }
        }
    }

    pub fn set_circuit_open(&self, open: bool) {
        self.circuit_open.set(i64::from(open));
        self.health.circuit_open.store(open, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (OpenMetrics format) of every metric.
    pub fn render(&self) -> String {
        let last = self.checkpoint_last.get();
        let since = if last > 0.0 { last } else { self.started_unix };
        self.checkpoint_age.set((unix_now() - since).max(0.0));
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Shared handle the stages hold.
pub type SharedMetrics = Arc<Metrics>;

/// A sink's write-attempt and failure counters.
#[derive(Clone)]
pub struct SinkWrites {
    writes: Counter,
    failures: Counter,
}

impl SinkWrites {
    pub fn record(&self, ok: bool) {
        self.writes.inc();
        if !ok {
            self.failures.inc();
        }
    }
}

fn unix_now() -> f64 {
    seconds(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests;
