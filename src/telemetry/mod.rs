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

pub mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::event::{DeadReason, Stream};
use crate::rows::Unit;
use crate::state::counters::{CounterInfo, Metric, MetricFamily};
use crate::state::{Counters, StateSizes};

type Labels = [(&'static str, String); 1];
type Labels2 = [(&'static str, String); 2];
type GaugeF = Gauge<f64, AtomicU64>;
type CounterF = Counter<f64, AtomicU64>;

/// The queues between stages, in flow order; `attribd_queue_depth_events{queue=…}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    RawClicks,
    RawConversions,
    DecodedClicks,
    DecodedConversions,
    SinkClicks,
    SinkRest,
    SinkClickHouse,
}

impl Queue {
    pub const ALL: [Queue; 7] = [
        Queue::RawClicks,
        Queue::RawConversions,
        Queue::DecodedClicks,
        Queue::DecodedConversions,
        Queue::SinkClicks,
        Queue::SinkRest,
        Queue::SinkClickHouse,
    ];

    /// The queue of raw batches of `stream`, in front of its decoder.
    pub fn raw(stream: Stream) -> Queue {
        match stream {
            Stream::Clicks => Queue::RawClicks,
            Stream::Conversions => Queue::RawConversions,
        }
    }

    /// The queue of decoded batches of `stream`, in front of the state stage.
    pub fn decoded(stream: Stream) -> Queue {
        match stream {
            Stream::Clicks => Queue::DecodedClicks,
            Stream::Conversions => Queue::DecodedConversions,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Queue::RawClicks => "raw_clicks",
            Queue::RawConversions => "raw_conversions",
            Queue::DecodedClicks => "decoded_clicks",
            Queue::DecodedConversions => "decoded_conversions",
            Queue::SinkClicks => "sink_clicks",
            Queue::SinkRest => "sink_rest",
            Queue::SinkClickHouse => "sink_clickhouse",
        }
    }
}

/// Where a sink failure or row count is reported: `attribd_sink_*{sink=…}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    Parquet,
    DeadLetters,
    ClickHouse,
}

impl SinkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Parquet => "parquet",
            SinkKind::DeadLetters => "dead_letters",
            SinkKind::ClickHouse => "clickhouse",
        }
    }
}

/// The metric one engine counter is mirrored into, by its kind (see `state::counters`). Values
/// are stored, not added: the engine counts, this only shows.
enum Mirror {
    /// An unsigned count: a counter.
    Count(Counter),
    /// A signed count (conversions by current status): a gauge.
    Level(Gauge),
    /// Money in micro-units: a gauge in units.
    Money(GaugeF),
}

/// A family of mirrors, one series per label value; its kind is that of its members.
enum MirrorFamily {
    Count(Family<Labels, Counter>),
    Level(Family<Labels, Gauge>),
    Money(Family<Labels, GaugeF>),
}

impl MirrorFamily {
    /// Registers `family` in `r` with the kind of its member `info`.
    fn register(r: &mut Registry, family: &MetricFamily, info: &CounterInfo) -> MirrorFamily {
        let (name, help) = (family.name, family.help);
        match (info.unit, info.only_grows) {
            (Unit::Money, _) => {
                let f = Family::<Labels, GaugeF>::default();
                r.register(name, help, f.clone());
                MirrorFamily::Money(f)
            }
            (Unit::Count, true) => {
                let f = Family::<Labels, Counter>::default();
                r.register(name, help, f.clone());
                MirrorFamily::Count(f)
            }
            (Unit::Count, false) => {
                let f = Family::<Labels, Gauge>::default();
                r.register(name, help, f.clone());
                MirrorFamily::Level(f)
            }
        }
    }
}

impl Mirror {
    /// Registers the metric of `info` in `r`, or its series in its family (registered with the
    /// family's first member and kept in `families`).
    fn register(
        r: &mut Registry,
        families: &mut Vec<(&'static str, MirrorFamily)>,
        info: &CounterInfo,
    ) -> Mirror {
        match info.metric {
            Metric::Own { name, help } => {
                let m = match (info.unit, info.only_grows) {
                    (Unit::Money, _) => Mirror::Money(GaugeF::default()),
                    (Unit::Count, true) => Mirror::Count(Counter::default()),
                    (Unit::Count, false) => Mirror::Level(Gauge::default()),
                };
                match &m {
                    Mirror::Count(c) => r.register(name, help, c.clone()),
                    Mirror::Level(g) => r.register(name, help, g.clone()),
                    Mirror::Money(g) => r.register(name, help, g.clone()),
                }
                m
            }
            Metric::Series { family, value } => {
                let i = match families.iter().position(|(n, _)| *n == family.name) {
                    Some(i) => i,
                    None => {
                        families.push((family.name, MirrorFamily::register(r, family, info)));
                        families.len() - 1
                    }
                };
                let l = label(family.label, value);
                match &families[i].1 {
                    MirrorFamily::Count(f) => Mirror::Count(f.get_or_create_owned(&l)),
                    MirrorFamily::Level(f) => Mirror::Level(f.get_or_create_owned(&l)),
                    MirrorFamily::Money(f) => Mirror::Money(f.get_or_create_owned(&l)),
                }
            }
        }
    }

    fn set(&self, v: i64) {
        match self {
            Mirror::Count(c) => c.inner().store(v as u64, Ordering::Relaxed),
            Mirror::Level(g) => {
                g.set(v);
            }
            Mirror::Money(g) => {
                g.set(v as f64 / 1e6);
            }
        }
    }
}

/// Engine counters and state sizes, mirrored.
struct EngineCounters {
    /// One per counter, in the order of `Counters::INFO`.
    counters: [Mirror; Counters::COUNT],
    dead_letters: Vec<(&'static str, Counter)>,
    state: [(&'static str, Gauge); 7],
    watermark_lag: [GaugeF; 2],
}

/// Every metric of a running pipeline, plus its readiness flags. Cheap to share (`Arc`).
pub struct Metrics {
    registry: Registry,
    engine: EngineCounters,
    queues: Vec<Gauge>,
    sink_rows: Family<Labels2, Counter>,
    sink_writes: Family<Labels, Counter>,
    sink_failures: Family<Labels, Counter>,
    latency: Family<Labels, Histogram>,
    source_lag_records: Family<Labels2, Gauge>,
    source_lag_bytes: Family<Labels, Gauge>,
    fluvio_gaps: Family<Labels2, Counter>,
    fluvio_gap_records: Family<Labels2, Counter>,
    fluvio_reconnects: Family<Labels2, Counter>,
    fluvio_committed: Family<Labels2, Gauge>,
    fluvio_commit_failures: Counter,
    state_waiting: Family<Labels, CounterF>,
    checkpoint_duration: Histogram,
    checkpoint_bytes: Gauge,
    checkpoint_last: GaugeF,
    checkpoint_age: GaugeF,
    circuit_open: Gauge,
    /// Unix seconds at start: the checkpoint age before the first checkpoint.
    started_unix: f64,
    pub health: Health,
}

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
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("attribd");
        let c = |r: &mut Registry, name: &str, help: &str| {
            let m = Counter::default();
            r.register(name, help, m.clone());
            m
        };
        let mut families = Vec::new();
        let counters = Counters::INFO.map(|info| Mirror::register(&mut r, &mut families, &info));
        let dead: Family<Labels, Counter> = Family::default();
        r.register(
            "dead_letters",
            "Records written to the dead-letter output, by reason",
            dead.clone(),
        );
        let state: Family<Labels, Gauge> = Family::default();
        r.register(
            "state_keys",
            "Entries held in the in-memory state, by map",
            state.clone(),
        );
        let watermark_lag: Family<Labels, GaugeF> = Family::default();
        r.register(
            "watermark_lag_seconds",
            "Wall clock minus the highest event time seen, by stream (how far behind real time the input is)",
            watermark_lag.clone(),
        );
        let engine = EngineCounters {
            counters,
            dead_letters: DeadReason::ALL
                .iter()
                .map(|d| {
                    (
                        d.as_str(),
                        dead.get_or_create_owned(&label("reason", d.as_str())),
                    )
                })
                .collect(),
            state: [
                "click_index",
                "click_extras",
                "dedup",
                "pending",
                "open_buckets",
                "dims",
                "interned_strings",
            ]
            .map(|m| (m, state.get_or_create_owned(&label("map", m)))),
            watermark_lag: ["clicks", "conversions"]
                .map(|s| watermark_lag.get_or_create_owned(&label("stream", s))),
        };

        let queue_family: Family<Labels, Gauge> = Family::default();
        r.register(
            "queue_depth_events",
            "Records waiting in the bounded queue in front of a stage",
            queue_family.clone(),
        );
        let queues = Queue::ALL
            .iter()
            .map(|q| queue_family.get_or_create_owned(&label("queue", q.as_str())))
            .collect();
        let sink_rows = Family::default();
        r.register(
            "sink_rows",
            "Rows written by a sink, by sink and table",
            Family::<Labels2, Counter>::clone(&sink_rows),
        );
        let sink_writes = Family::default();
        r.register(
            "sink_writes",
            "Write attempts by sink (Parquet: batches written, checkpoint barriers, closes; ClickHouse: INSERTs incl. retries)",
            Family::<Labels, Counter>::clone(&sink_writes),
        );
        let sink_failures = Family::default();
        r.register(
            "sink_failures",
            "Failed write attempts by sink",
            Family::<Labels, Counter>::clone(&sink_failures),
        );
        let latency = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 18))
        });
        r.register(
            "event_latency_seconds",
            "Time from a batch's arrival at the source to: `processed` (deduplicated, attributed, handed to the sinks) and `durable` (in every sink and covered by a checkpoint); one observation per batch",
            latency.clone(),
        );
        let source_lag_records = Family::default();
        r.register(
            "source_lag_records",
            "Records behind the end of the log, by topic and partition (Fluvio)",
            Family::<Labels2, Gauge>::clone(&source_lag_records),
        );
        let source_lag_bytes = Family::default();
        r.register(
            "source_lag_bytes",
            "Bytes of the input file not yet read, by stream (plain files)",
            Family::<Labels, Gauge>::clone(&source_lag_bytes),
        );
        let fluvio_gaps = Family::<Labels2, Counter>::default();
        r.register(
            "fluvio_gaps",
            "Times a Fluvio partition skipped offsets (a client defect at fetch boundaries) and was re-read from the first missing one",
            fluvio_gaps.clone(),
        );
        let fluvio_gap_records = Family::<Labels2, Counter>::default();
        r.register(
            "fluvio_gap_records",
            "Records the Fluvio client skipped that were re-read (none lost)",
            fluvio_gap_records.clone(),
        );
        let fluvio_reconnects = Family::<Labels2, Counter>::default();
        r.register(
            "fluvio_reconnects",
            "Times a Fluvio partition stream was (re)opened after an error, an outage or a stall",
            fluvio_reconnects.clone(),
        );
        let fluvio_committed = Family::<Labels2, Gauge>::default();
        r.register(
            "fluvio_committed_offset",
            "Last offset committed to the Fluvio consumer (covered by a checkpoint), by topic and partition",
            fluvio_committed.clone(),
        );
        let fluvio_commit_failures = c(
            &mut r,
            "fluvio_commit_failures",
            "Fluvio offset commits that failed (retried after the next checkpoint)",
        );
        let state_waiting = Family::<Labels, CounterF>::default();
        r.register(
            "state_waiting_seconds",
            "Time the state stage had nothing it was allowed to merge, by the stream it waited for (a partition not read to its end must deliver first): high while a source is slow, an outage, or the input is simply quiet",
            state_waiting.clone(),
        );
        let checkpoint_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        r.register(
            "checkpoint_duration_seconds",
            "Time to take a checkpoint (sink barrier + snapshot write)",
            checkpoint_duration.clone(),
        );
        let checkpoint_bytes = Gauge::default();
        r.register(
            "checkpoint_size_bytes",
            "Size of the last snapshot file",
            checkpoint_bytes.clone(),
        );
        let checkpoint_last = GaugeF::default();
        r.register(
            "checkpoint_last_success_timestamp_seconds",
            "Unix time of the last successful checkpoint",
            checkpoint_last.clone(),
        );
        let checkpoint_age = GaugeF::default();
        r.register(
            "checkpoint_age_seconds",
            "Seconds since the last successful checkpoint (since start before the first)",
            checkpoint_age.clone(),
        );
        let circuit_open = Gauge::default();
        r.register(
            "clickhouse_circuit_open",
            "1 while the ClickHouse circuit breaker is open",
            circuit_open.clone(),
        );
        let build: Family<Labels, Gauge> = Family::default();
        r.register("build_info", "Version of the running binary", build.clone());
        build
            .get_or_create(&label("version", env!("CARGO_PKG_VERSION")))
            .set(1);
        Metrics {
            registry: r,
            engine,
            queues,
            sink_rows,
            sink_writes,
            sink_failures,
            latency,
            source_lag_records,
            source_lag_bytes,
            fluvio_gaps,
            fluvio_gap_records,
            fluvio_reconnects,
            fluvio_committed,
            fluvio_commit_failures,
            state_waiting,
            checkpoint_duration,
            checkpoint_bytes,
            checkpoint_last,
            checkpoint_age,
            circuit_open,
            started_unix: unix_now(),
            health: Health::default(),
        }
    }

    /// Mirrors the engine's counters and state sizes (called by the state stage after each
    /// batch; a few dozen relaxed stores).
    pub fn publish_engine(
        &self,
        c: &Counters,
        s: &StateSizes,
        watermarks: [Option<i64>; 2],
        now_ms: i64,
    ) {
        let e = &self.engine;
        for (m, v) in e.counters.iter().zip(c.values()) {
            m.set(v);
        }
        for (reason, m) in &e.dead_letters {
            let n = c.dead_letters.get(reason).copied().unwrap_or(0);
            m.inner().store(n, Ordering::Relaxed);
        }
        let sizes = [
            s.indexed_clicks,
            s.click_extras,
            s.dedup_keys,
            s.pending,
            s.open_buckets,
            s.dims,
            s.interned_strings,
        ];
        for ((_, g), v) in e.state.iter().zip(sizes) {
            g.set(v as i64);
        }
        for (g, wm) in e.watermark_lag.iter().zip(watermarks) {
            if let Some(wm) = wm {
                g.set((now_ms - wm) as f64 / 1000.0);
            }
        }
    }

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
    pub fn latency_handle(&self, stage: &'static str) -> Histogram {
        self.latency.get_or_create_owned(&label("stage", stage))
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

    pub fn checkpoint_done(&self, took: Duration, bytes: u64) {
        self.checkpoint_duration.observe(seconds(took));
        self.checkpoint_bytes.set(bytes as i64);
        self.checkpoint_last.set(unix_now());
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
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn engine_counters_render_under_their_names() {
        let m = Metrics::new();
        let mut c = Counters {
            click_records: 10,
            conversion_records: 4,
            clicks: 8,
            duplicate_clicks: 1,
            conversions: 3,
            unknown_click: 1,
            approved: 2,
            pending: 1,
            ..Counters::default()
        };
        c.dead_letters.insert("invalid_json", 2);
        let sizes = StateSizes {
            indexed_clicks: 8,
            dedup_keys: 3,
            ..StateSizes::default()
        };
        m.publish_engine(&c, &sizes, [Some(1_000), None], 6_000);
        m.sink_rows(SinkKind::Parquet, "clicks", 8);
        m.sink_write(SinkKind::ClickHouse, false);
        m.queue(Queue::SinkClicks).set(4096);
        let text = m.render();
        let v = |s: &str| value(&text, s).unwrap_or_else(|| panic!("{s} missing in\n{text}"));
        assert_eq!(v(r#"attribd_events_in_total{stream="clicks"}"#), 10.0);
        assert_eq!(v(r#"attribd_events_in_total{stream="conversions"}"#), 4.0);
        assert_eq!(v("attribd_clicks_total"), 8.0);
        assert_eq!(v("attribd_duplicate_clicks_total"), 1.0);
        assert_eq!(
            v(r#"attribd_conversions_unattributed_total{reason="unknown_click"}"#),
            1.0
        );
        assert_eq!(
            v(r#"attribd_dead_letters_total{reason="invalid_json"}"#),
            2.0
        );
        assert_eq!(v(r#"attribd_dead_letters_total{reason="oversize"}"#), 0.0);
        assert_eq!(
            v(r#"attribd_conversions_by_status{status="approved"}"#),
            2.0
        );
        assert_eq!(v(r#"attribd_state_keys{map="click_index"}"#), 8.0);
        assert_eq!(v(r#"attribd_state_keys{map="dedup"}"#), 3.0);
        assert_eq!(v(r#"attribd_watermark_lag_seconds{stream="clicks"}"#), 5.0);
        assert_eq!(
            v(r#"attribd_sink_rows_total{sink="parquet",table="clicks"}"#),
            8.0
        );
        assert_eq!(v(r#"attribd_sink_failures_total{sink="clickhouse"}"#), 1.0);
        assert_eq!(
            v(r#"attribd_queue_depth_events{queue="sink_clicks"}"#),
            4096.0
        );
        assert!(text.ends_with("# EOF\n"));

        // Counters mirror the engine: a later publish shows the new totals, not sums.
        c.clicks = 9;
        m.publish_engine(&c, &sizes, [None, None], 0);
        assert_eq!(value(&m.render(), "attribd_clicks_total"), Some(9.0));
    }

    #[test]
    fn readiness_lists_what_is_wrong() {
        let m = Metrics::new();
        assert_eq!(m.health.problems(), vec!["sources not connected"]);
        m.health.sources_connected.store(true, Ordering::Relaxed);
        assert!(m.health.problems().is_empty());
        m.set_circuit_open(true);
        assert_eq!(m.health.problems(), vec!["ClickHouse circuit breaker open"]);
    }
}
