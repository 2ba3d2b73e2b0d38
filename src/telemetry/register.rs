//! [`Metrics::new`]: every metric of attribd registered once at start — its name (under the
//! `attribd_` prefix), help text, labels and histogram buckets. This is the catalogue
//! `docs/operations.md` documents; the methods that update the metrics are in `mod.rs` and
//! `mirror.rs`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::mirror::{EngineCounters, Mirror};
use super::{CounterF, GaugeF, Health, Labels, Labels2, Metrics, Queue, label, unix_now};
use crate::event::DeadReason;
use crate::state::Counters;

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
        // Bounds at what the alerts and the soak check (100 ms), fine below it.
        let latency = Family::<Labels2, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
                60.0, 120.0,
            ])
        });
        r.register(
            "event_latency_seconds",
            "Time from a batch's arrival at the source to: `processed` (deduplicated, attributed, handed to the sinks) and `durable` (in every sink and covered by a checkpoint), by stream; one observation per batch",
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
            "Time to take a checkpoint, from its barrier until its snapshot is on disk (the snapshot is written off the state stage's thread)",
            checkpoint_duration.clone(),
        );
        // Bounds at the thresholds operators watch: 20 ms (the target) and 100 ms (click latency).
        let checkpoint_pause = Histogram::new([
            0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
        ]);
        r.register(
            "checkpoint_pause_seconds",
            "Time a checkpoint stops the state stage: sending its rows and the barrier down the sink queues plus taking what the state changed since the last checkpoint (the writer waits for the sinks); events arriving meanwhile wait this long",
            checkpoint_pause.clone(),
        );
        let checkpoint_bytes = Gauge::default();
        r.register(
            "checkpoint_size_bytes",
            "Size of the last checkpoint file the state stage handed over (a delta: what changed since the checkpoint before)",
            checkpoint_bytes.clone(),
        );
        let compaction_duration = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        r.register(
            "checkpoint_compaction_seconds",
            "Time to fold a chain of delta checkpoints into a full snapshot (on a background thread; its count is the number of compactions)",
            compaction_duration.clone(),
        );
        let compaction_bytes = Gauge::default();
        r.register(
            "checkpoint_full_size_bytes",
            "Size of the last full snapshot a compaction wrote",
            compaction_bytes.clone(),
        );
        let compaction_failures = Counter::default();
        r.register(
            "checkpoint_compaction_failures",
            "Compactions that failed (the deltas stay and restore still works; retried after the next checkpoint)",
            compaction_failures.clone(),
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
        let http_requests = Family::<Labels2, Counter>::default();
        r.register(
            "http_requests",
            "HTTP ingest requests by route (clicks, conversions, postback) and status code",
            http_requests.clone(),
        );
        // Bounds around the webhook senders' timeout (500 ms) and the 50 ms target.
        let http_latency = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
            ])
        });
        r.register(
            "http_request_duration_seconds",
            "HTTP ingest: time from a request's arrival to its answer (202 only once its records are durable), by route",
            http_latency.clone(),
        );
        let retention_partitions = Family::<Labels, Counter>::default();
        r.register(
            "retention_deleted_partitions",
            "Output partitions (Parquet hours, dead-letter files, ClickHouse months on servers without TTL) deleted past [retention], by table",
            retention_partitions.clone(),
        );
        let retention_bytes = Family::<Labels, Counter>::default();
        r.register(
            "retention_deleted_bytes",
            "Bytes of Parquet and dead-letter files deleted past [retention], by table",
            retention_bytes.clone(),
        );
        let erasures = Counter::default();
        r.register(
            "privacy_erasures",
            "Subject erasure requests completed by this process",
            erasures.clone(),
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
            http_requests,
            http_latency,
            state_waiting,
            checkpoint_duration,
            checkpoint_pause,
            checkpoint_bytes,
            compaction_duration,
            compaction_bytes,
            compaction_failures,
            checkpoint_last,
            checkpoint_age,
            circuit_open,
            retention_partitions,
            retention_bytes,
            erasures,
            started_unix: unix_now(),
            health: Health::default(),
        }
    }
}
