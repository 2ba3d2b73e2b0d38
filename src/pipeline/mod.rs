//! Wires the stages together with bounded channels and runs a pipeline to the end.
//!
//! ```text
//!  source thread(s) ──raw──► decode (clicks) ─────┐                        ┌► sink: clicks
//!                    ──raw──► decode (conversions)┴─► state (this thread) ─┤
//!                                                                         └► sink: conversions,
//!                                                                            aggregates,
//!                                                                            dead letters
//! ```
//!
//! Clicks are most of the rows, so they get a sink thread of their own; conversions,
//! aggregates and dead letters share the other. Each table is written by exactly one thread.
//! With a ClickHouse sink configured, that second thread hands its conversion and aggregate
//! rows on (moved, not copied) to a ClickHouse thread after writing them to Parquet.
//!
//! Every channel is bounded: when the sink is slow the state stage blocks on it, the decoders
//! block on the state stage, and the sources block on the decoders — memory stays flat and
//! nothing is dropped. The state stage merges the two decoded streams deterministically (the
//! batch that starts earlier in event time first), so the streams advance together in event
//! time and a replay from a checkpoint repeats the crashed run exactly; every
//! `checkpoint.every` it sends a barrier through the sinks and, once they report the outputs
//! durable, writes a snapshot (see `checkpoint`).
//!
//! One file per concern, in the order `run` uses them: `restore` (lock, checkpoint, resume
//! point) → `sources` (each source kind started from its config) → `decode` (decoder
//! threads) → `sinks` (sink threads, fan-out, barrier protocol) → `state_stage` (the merge,
//! the engine, checkpoints; `inputs` orders its batches) → join. `channel` holds the metered
//! bounded queues. docs/architecture.md draws the whole flow.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use crossbeam_channel::bounded;

mod channel;
mod checkpoint_writer;
pub mod compaction;
mod decode;
mod inputs;
mod restore;
mod sinks;
mod sources;
mod state_stage;

use crate::config::{PipelineConfig, SourceKind};
use crate::rows::SinkBatch;
use crate::sink::SinkTotals;
use crate::sink::clickhouse::ClickHouseTotals;
use crate::source::RawBatch;
use crate::state::{Counters, StateSizes};
use crate::telemetry::{Queue, SharedMetrics};
use channel::{CHANNEL_BATCHES, Metered, ZeroQueuesOnExit};
use inputs::Decoded;
use state_stage::StateStage;

/// How to run a pipeline besides its config: progress line, `--fresh`, the stop flag, and
/// where the metrics go.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Print a progress line to stderr every second.
    pub progress: bool,
    /// Ignore (and delete) the previous run's state and outputs.
    pub fresh: bool,
    /// Set on SIGTERM / SIGINT: stop reading, checkpoint, exit.
    pub stop: Arc<AtomicBool>,
    /// Where the stages report; a fresh set when `None`. `[metrics] addr` serves it.
    pub metrics: Option<SharedMetrics>,
}

/// What a finished run did (`attribd run --summary-json` writes it).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunReport {
    pub counters: Counters,
    pub sizes: StateSizes,
    pub sinks: SinkTotals,
    /// Present when the pipeline has a ClickHouse sink.
    pub clickhouse: Option<ClickHouseTotals>,
    /// Checkpoint the run resumed from, if any.
    pub resumed_from: Option<u64>,
    /// Checkpoints written, and the last one's size.
    pub checkpoints: u64,
    pub last_checkpoint_bytes: u64,
    /// Stopped by a signal before the input ended.
    pub interrupted: bool,
    pub elapsed: Duration,
    /// A live source: the time from the last record processed until the source ended
    /// (`exit_when_idle` waiting for records that did not come). Not work, so not in events/s.
    pub idle_tail: Duration,
    /// Records read by this run (the counters go on from the checkpoint resumed from).
    pub events_this_run: u64,
}

impl RunReport {
    /// Records this run read per second of work (its time without the idle tail).
    pub fn events_per_second(&self) -> f64 {
        let busy = self.elapsed.saturating_sub(self.idle_tail);
        self.events_this_run as f64 / busy.as_secs_f64().max(1e-9)
    }
}

/// Runs `cfg` until its inputs end (or a stop signal); returns the totals once every output
/// is durable and the final checkpoint is written.
pub fn run(cfg: &PipelineConfig, opts: RunOptions) -> Result<RunReport> {
    let started = Instant::now();
    let metrics = opts.metrics.clone().unwrap_or_default();
    // 1. Restore, first the lock: one writer per output directory.
    let lock = restore::lock(cfg)?;
    // Up before the (possibly long) restore, so /health answers and /ready says why not yet.
    let _server = match cfg.metrics.enabled_addr() {
        Some(addr) => Some(crate::telemetry::server::serve(addr, metrics.clone())?),
        None => None,
    };
    // Whatever way the run ends, the queues it leaves behind are not a backlog.
    let _zero_queues = ZeroQueuesOnExit(metrics.clone());

    // …then --fresh, the checkpoint to resume from, checked against this run.
    let restored = restore::restore(cfg, opts.fresh, lock)?;
    // Retention and subject requests, beside the flow; the erasure filter is in force before
    // the first row reaches a sink.
    crate::lifecycle::privacy::Requests::check(cfg)?;
    let mut lifecycle = crate::lifecycle::Lifecycle::start(cfg, metrics.clone())?;

    // 2. Sources → raw queues. A partitioned source bounds what it has in flight per
    // partition (credits), so its raw queues only need room for every partition's allowance.
    // The HTTP source is one partition (0) of its write-ahead log.
    let partitioned = matches!(cfg.source.kind, SourceKind::Fluvio | SourceKind::Http);
    // The HTTP writer sends a batch per request and holds each request's bytes (its
    // `queue_bytes` budget) until the batch is in this queue: a short queue keeps what waits
    // beyond the budget small.
    let raw_capacity = match cfg.source.kind {
        SourceKind::Fluvio => 4096,
        SourceKind::Http => 64,
        _ => CHANNEL_BATCHES,
    };
    let (click_raw_tx, click_raw_rx) = bounded::<RawBatch>(raw_capacity);
    let (conv_raw_tx, conv_raw_rx) = bounded::<RawBatch>(raw_capacity);
    let raw = [
        Metered::new(click_raw_tx, &metrics, Queue::RawClicks),
        Metered::new(conv_raw_tx, &metrics, Queue::RawConversions),
    ];
    let mut sources = sources::start(
        cfg,
        restored.positions,
        &restored.partition_offsets,
        raw,
        &metrics,
        &opts.stop,
    )?;

    // 3. Decoders: raw → decoded queues.
    let (click_tx, click_rx) = bounded::<Decoded>(CHANNEL_BATCHES);
    let (conv_tx, conv_rx) = bounded::<Decoded>(CHANNEL_BATCHES);
    let decoders = decode::start(
        cfg,
        [click_raw_rx, conv_raw_rx],
        [click_tx, conv_tx],
        &metrics,
    )?;

    // 4. Sinks (ClickHouse connected and checked before anything is read).
    let (sink_tx, sink_threads) = sinks::start(
        cfg,
        restored.last_epoch,
        restored.epoch,
        &restored.instance,
        &metrics,
        lifecycle.erased(),
    )?;
    restored.drop_superseded_end(cfg)?;

    // 5. The state stage, on this thread, until the inputs end or a stop.
    let restore::Restored {
        lock: _lock,
        mut engine,
        last_epoch,
        epoch,
        positions,
        partition_offsets,
        resumed_finished,
        tracked,
        settings,
        ..
    } = restored;
    // From here on every checkpoint is a delta: the engine logs what it changes.
    engine.track_changes();
    engine.set_click_hour(cfg.sink.stats_click_hour);
    engine.set_money(cfg.money_applied.clone());
    engine.set_fraud(cfg.fraud.clone());
    let events_at_start = engine.counters().events_in();
    let writer = checkpoint_writer::CheckpointWriter::start(
        cfg.state_dir(),
        metrics.clone(),
        metrics.latency_handles("durable"),
        sources.fluvio.as_ref().map(|f| f.committer.clone()),
        sources.http_covered.clone(),
        cfg.engine(),
        lifecycle.notifier(),
    )?;
    let erased = lifecycle.erased();
    let mut stage = StateStage {
        erased_seen: 0,
        erased,
        engine: &mut engine,
        sinks: &sink_tx,
        parent: last_epoch,
        epoch,
        positions,
        partition_offsets,
        every: cfg.checkpoint.every,
        every_events: cfg.checkpoint.every_events,
        events_since: 0,
        last_checkpoint: Instant::now(),
        checkpoints: 0,
        writer,
        interrupted: false,
        drain_on_stop: cfg.source.kind == SourceKind::Http,
        sources: if cfg.source.with_http { 2 } else { 1 },
        http_partition: crate::source::http::log_partition(cfg),
        partitioned,
        fluvio: sources.fluvio.is_some(),
        topics: [
            cfg.source.fluvio.clicks_topic.clone(),
            cfg.source.fluvio.conversions_topic.clone(),
        ],
        alternate: cfg.source.kind == SourceKind::Generator,
        turn: 0,
        metrics: &metrics,
        processed_latency: metrics.latency_handles("processed"),
        awaiting_durable: Vec::new(),
        out: SinkBatch::default(),
        tracked,
        settings,
        resumed_finished,
        last_record: None,
        inputs_ended: None,
    };
    let state_result = stage.run(click_rx, conv_rx, &opts, started);
    let (checkpoints, last_bytes, interrupted) = (
        stage.checkpoints,
        stage.writer.last_bytes,
        stage.interrupted,
    );
    let idle_tail = match (stage.partitioned, stage.last_record, stage.inputs_ended) {
        (true, Some(last), Some(ended)) => ended.saturating_duration_since(last),
        _ => Duration::ZERO,
    };
    // Its committer handle too: the Fluvio commit task ends once every handle is gone.
    drop(stage);
    drop(sink_tx);

    // 6. Join: sinks first (a sink's error explains a state-stage send failure), then the
    // source's own error if it stopped the state stage, then the rest.
    let (totals, clickhouse) = sink_threads.join()?;
    // What the last checkpoints made due (retention, a settled erasure) is done before the end.
    lifecycle.finish();
    if state_result.is_err() && metrics.health.source_failed.load(Ordering::Relaxed) {
        // The source's own error says what went wrong; the state stage only stopped for it.
        if let Some(f) = sources.fluvio.take() {
            f.finish_reading();
            let thread = f.into_thread();
            thread
                .join()
                .map_err(|_| anyhow!("the Fluvio source thread panicked"))??;
        }
        for h in sources.threads.drain(..) {
            h.join()
                .map_err(|_| anyhow!("a source thread panicked"))??;
        }
    }
    state_result?;
    if let Some(f) = sources.fluvio {
        // Every sink closed without error and the final checkpoint is written: its offsets
        // (already asked for by the state stage) are committed before the run ends.
        f.finish_reading();
        let committed = f.committer.flush(Duration::from_secs(30));
        let thread = f.into_thread();
        if let Err(e) = committed {
            tracing::warn!(error = %format!("{e:#}"), "Fluvio offsets not committed");
        }
        thread
            .join()
            .map_err(|_| anyhow!("the Fluvio source thread panicked"))??;
    }
    if !interrupted {
        for h in sources.threads.into_iter().chain(decoders) {
            h.join()
                .map_err(|_| anyhow!("a source thread panicked"))??;
        }
    }

    // 7. Report.
    Ok(RunReport {
        events_this_run: engine.counters().events_in() - events_at_start,
        counters: engine.counters().clone(),
        sizes: engine.sizes(),
        sinks: totals,
        clickhouse,
        resumed_from: (last_epoch > 0).then_some(last_epoch),
        checkpoints,
        last_checkpoint_bytes: last_bytes,
        interrupted,
        elapsed: started.elapsed(),
        idle_tail,
    })
}
