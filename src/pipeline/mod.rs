//! Wires the stages together with bounded channels and runs a pipeline to the end.
//!
//! ```text
//!  source thread(s) ──raw──► decode (clicks) ─────┐                        ┌► sink: clicks
//!                    ──raw──► decode (conversions)┴─► state (this thread) ─┤
//!                                                                         └► sink: the rest
//! ```
//!
//! Clicks are most of the rows, so they get a sink thread of their own; conversions,
//! aggregates and dead letters share the other. Each table is written by exactly one thread.
//! With a ClickHouse sink configured, the "rest" thread hands its conversion and aggregate rows
//! on (moved, not copied) to a ClickHouse thread after writing them to Parquet.
//!
//! Every channel is bounded: when the sink is slow the state stage blocks on it, the decoders
//! block on the state stage, and the sources block on the decoders — memory stays flat and
//! nothing is dropped. The state stage merges the two decoded streams deterministically (the
//! batch that starts earlier in event time first), so the streams advance together in event
//! time and a replay from a checkpoint repeats the crashed run exactly; every
//! `checkpoint.every` it sends a barrier through the sinks and, once they report the outputs
//! durable, writes a snapshot (see `checkpoint`).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use crossbeam_channel::{Receiver, Sender, bounded};

mod inputs;

use crate::checkpoint;
use crate::config::{PipelineConfig, SourceKind};
use crate::event::decode::Decoder;
use crate::event::{Position, Stream};
use crate::rows::{ClickRows, ConversionRow, SinkBatch, StatsRow};
use crate::sink::clickhouse::{ClickHouseSink, ClickHouseTotals};
use crate::sink::{SinkTotals, Sinks};
use crate::source::RawBatch;
use crate::source::file::{Input, read_batches_with_limit};
use crate::source::fluvio::FluvioSource;
use crate::source::generator::generate;
use crate::state::{Counters, Engine, StateSizes};
use crate::telemetry::{Metrics, Queue, SharedMetrics, SinkKind};
use inputs::{Decoded, DecodedKind, Readiness, StreamInput};
use prometheus_client::metrics::gauge::Gauge;

/// Batches in flight per channel.
const CHANNEL_BATCHES: usize = 4;

/// The sending side of a bounded queue that keeps the queue's depth gauge, in records (the
/// unit operators alert on), not batches.
struct Metered<T> {
    tx: Sender<T>,
    depth: Gauge,
}

impl<T> Metered<T> {
    fn new(tx: Sender<T>, metrics: &Metrics, queue: Queue) -> Metered<T> {
        Metered {
            tx,
            depth: metrics.queue(queue).clone(),
        }
    }

    /// Blocks while the queue is full (backpressure); false once the receiver is gone.
    fn send(&self, msg: T, records: usize) -> bool {
        self.depth.inc_by(records as i64);
        let ok = self.tx.send(msg).is_ok();
        if !ok {
            self.depth.dec_by(records as i64);
        }
        ok
    }
}

/// How `run` reports while it works.
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
}

impl RunReport {
    /// Records read per second of work (the run's time without its idle tail).
    pub fn events_per_second(&self) -> f64 {
        let busy = self.elapsed.saturating_sub(self.idle_tail);
        self.counters.events_in() as f64 / busy.as_secs_f64().max(1e-9)
    }
}

/// Messages to a sink thread.
enum SinkMsg {
    Batch(SinkBatch),
    /// Make everything so far durable, then name outputs after the given epoch; ack when done.
    Barrier(u64, Sender<Result<()>>),
}

/// Messages to the ClickHouse thread.
enum ClickHouseMsg {
    Rows(Vec<ConversionRow>, Vec<StatsRow>),
    Barrier(u64, Sender<Result<()>>),
}

/// Runs `cfg` until its inputs end (or a stop signal); returns the totals once every output
/// is durable and the final checkpoint is written.
pub fn run(cfg: &PipelineConfig, opts: RunOptions) -> Result<RunReport> {
    let started = Instant::now();
    let metrics = opts.metrics.clone().unwrap_or_default();
    // Up before the (possibly long) restore, so /health answers and /ready says why not yet.
    let _server = match cfg.metrics.enabled_addr() {
        Some(addr) => Some(crate::telemetry::server::serve(addr, metrics.clone())?),
        None => None,
    };
    // Whatever way the run ends, the queues it leaves behind are not a backlog.
    let _zero_queues = ZeroQueuesOnExit(metrics.clone());
    let limits = cfg.decode_limits();
    let state_dir = cfg.state_dir();
    let out = &cfg.sink.parquet.out;

    // One writer per output directory: taken before anything is touched, `--fresh` included.
    let _lock = checkpoint::lock::lock_dirs(&[out.join("_state"), state_dir.clone()])?;
    if opts.fresh {
        remove_state(&state_dir)?;
        for t in crate::sink::TABLE_DIRS {
            let _ = std::fs::remove_dir_all(out.join(t));
        }
    }
    // Restore the latest checkpoint; what a crashed run wrote after it is written again.
    let inputs_now = checkpoint::identity::track(cfg)?;
    let settings_now = checkpoint::identity::semantic_settings(cfg);
    let restore = choose_restore_point(cfg, &state_dir, &inputs_now)?;
    let mut partition_offsets: HashMap<(usize, u32), u64> = HashMap::new();
    let (mut engine, last_epoch, resume_at) = match &restore.snapshot {
        Some((epoch, bytes)) => {
            let snap = checkpoint::view(bytes)?;
            let saved_settings: Vec<(String, String)> = snap
                .settings
                .iter()
                .map(|t| (t.0.to_string(), t.1.to_string()))
                .collect();
            let changes = checkpoint::identity::compare(
                &snap.inputs,
                &saved_settings,
                &inputs_now,
                &settings_now,
            );
            if !changes.is_empty() {
                return Err(checkpoint::identity::Mismatch {
                    epoch: *epoch,
                    out: out.clone(),
                    changes,
                }
                .into());
            }
            let engine = Engine::restore(cfg.engine(), &snap.engine);
            let resume_at = [0, 1].map(|i| Position {
                line: snap.positions[i].lines.to_native(),
                offset: snap.positions[i].bytes.to_native(),
            });
            for t in snap.partition_offsets.iter() {
                partition_offsets.insert((usize::from(t.0), t.1.to_native()), t.2.to_native());
            }
            if partition_offsets.is_empty() {
                tracing::info!(
                    epoch,
                    clicks_line = resume_at[0].line,
                    conversions_line = resume_at[1].line,
                    "resuming from checkpoint"
                );
            } else {
                let mut offsets: Vec<_> = partition_offsets.iter().collect();
                offsets.sort();
                let offsets = offsets
                    .iter()
                    .map(|((s, p), o)| format!("{}/{p}@{o}", ["clicks", "conversions"][*s]))
                    .collect::<Vec<_>>()
                    .join(" ");
                tracing::info!(epoch, %offsets, "resuming from checkpoint (next offset per partition)");
            }
            (engine, *epoch, resume_at)
        }
        None => (Engine::new(cfg.engine()), 0, [Position::default(); 2]),
    };
    let resume = resume_at.map(|p| p.line);
    let resumed_finished = restore.finished;
    let retract = restore.retract;
    let superseded = restore.superseded;
    drop(restore.snapshot);
    let discarded = crate::sink::discard_after(out, last_epoch)?;
    if discarded > 0 {
        tracing::info!(
            files = discarded,
            epoch = last_epoch,
            "removed outputs written after the checkpoint; they are written again"
        );
    }
    // After going back behind a finished run's end, the epoch that end wrote is skipped, so
    // no batch of this run is ever taken for one of the outputs just taken back.
    let epoch = last_epoch + if retract.is_some() { 2 } else { 1 };

    // A partitioned source bounds what it has in flight per partition (credits), so its raw
    // channels only need room for every partition's allowance; files are bounded here.
    let partitioned = cfg.source.kind == SourceKind::Fluvio;
    let raw_capacity = if partitioned { 4096 } else { CHANNEL_BATCHES };
    let (click_raw_tx, click_raw_rx) = bounded::<RawBatch>(raw_capacity);
    let (conv_raw_tx, conv_raw_rx) = bounded::<RawBatch>(raw_capacity);
    let (click_tx, click_rx) = bounded::<Decoded>(CHANNEL_BATCHES);
    let (conv_tx, conv_rx) = bounded::<Decoded>(CHANNEL_BATCHES);
    let (click_sink_tx, click_sink_rx) = bounded::<SinkMsg>(CHANNEL_BATCHES * 2);
    let (rest_sink_tx, rest_sink_rx) = bounded::<SinkMsg>(CHANNEL_BATCHES * 2);

    let mut sources = Vec::new();
    let mut fluvio: Option<FluvioSource> = None;
    // Batches a restored run already processed are read again but not sent on.
    let skip = |tx: &Metered<RawBatch>, mut b: RawBatch, upto: u64| {
        if b.end.line <= upto && upto > 0 {
            true
        } else {
            // A batch that straddles the restore point (batch cuts of another version) keeps
            // only its lines after it.
            if upto > 0 && b.records.first().is_some_and(|r| r.position.line <= upto) {
                b.records.retain(|r| r.position.line > upto);
            }
            let n = b.len();
            tx.send(b, n)
        }
    };
    let click_raw_tx = Metered::new(click_raw_tx, &metrics, Queue::RawClicks);
    let conv_raw_tx = Metered::new(conv_raw_tx, &metrics, Queue::RawConversions);
    match cfg.source.kind {
        SourceKind::Fluvio => {
            let deliver = [click_raw_tx, conv_raw_tx].map(|tx| {
                let deliver: crate::source::fluvio::Deliver = Arc::new(move |b: RawBatch| {
                    let n = b.len();
                    tx.send(b, n)
                });
                deliver
            });
            fluvio = Some(crate::source::fluvio::start(
                &cfg.source.fluvio,
                &partition_offsets,
                deliver,
                metrics.clone(),
                opts.stop.clone(),
            )?);
        }
        SourceKind::Generator => {
            let gen_cfg = cfg.source.generator.clone();
            sources.push(spawn_source("source-generator", &metrics, move || {
                generator_source(&gen_cfg, click_raw_tx, conv_raw_tx, resume)
            })?);
        }
        SourceKind::Files => {
            for (i, (path, tx)) in [
                (cfg.source.clicks.clone(), click_raw_tx),
                (cfg.source.conversions.clone(), conv_raw_tx),
            ]
            .into_iter()
            .enumerate()
            {
                // Without a path the sender is dropped here and that stream is simply empty.
                if let Some(path) = path {
                    let input = Input::parse(&path);
                    // Open before spawning so a missing file fails the run at once.
                    let reader = input.open()?;
                    // stdin cannot be re-read: a restored run takes it as it comes.
                    let upto = if input == Input::Stdin { 0 } else { resume[i] };
                    // Bytes left to read, for plain files (compressed sizes do not compare).
                    let size = match &input {
                        Input::Path(p)
                            if !matches!(
                                p.extension().and_then(|e| e.to_str()),
                                Some("gz" | "zst")
                            ) =>
                        {
                            std::fs::metadata(p).ok().map(|m| m.len())
                        }
                        _ => None,
                    };
                    let (m, stream) = (metrics.clone(), ["clicks", "conversions"][i]);
                    let max_line = limits.max_record_bytes;
                    sources.push(spawn_source("source-file", &metrics, move || {
                        read_batches_with_limit(reader, max_line, |b| {
                            if let Some(size) = size {
                                m.source_lag_bytes(
                                    stream,
                                    size.saturating_sub(b.end.offset) as i64,
                                );
                            }
                            skip(&tx, b, upto)
                        })
                        .map(|_| ())
                        .with_context(|| format!("reading {}", input.name()))
                    })?);
                }
            }
        }
    }
    let source_name = |s: &Option<String>| -> Arc<str> {
        match cfg.source.kind {
            SourceKind::Generator => Arc::from("generator"),
            SourceKind::Fluvio => Arc::from(format!("fluvio:{}", cfg.source.fluvio.endpoint)),
            SourceKind::Files => Arc::from(
                s.as_deref()
                    .map(|p| Input::parse(p).name())
                    .unwrap_or_default(),
            ),
        }
    };
    if fluvio.is_none() {
        // A Fluvio source says so itself, once every partition stream is open.
        metrics
            .health
            .sources_connected
            .store(true, Ordering::Relaxed);
    }
    let decoders = [
        (Stream::Clicks, &cfg.source.clicks, click_raw_rx, click_tx),
        (
            Stream::Conversions,
            &cfg.source.conversions,
            conv_raw_rx,
            conv_tx,
        ),
    ]
    .into_iter()
    .map(|(stream, path, rx, tx)| {
        let decoder = Decoder::new(source_name(path), limits.clone());
        let raw_depth = metrics.queue(Queue::raw(stream)).clone();
        let tx = Metered::new(tx, &metrics, Queue::decoded(stream));
        let name = match stream {
            Stream::Clicks => "decode-clicks",
            Stream::Conversions => "decode-conversions",
        };
        spawn(name, move || {
            decode_loop(stream, &decoder, rx, &raw_depth, &tx)
        })
    })
    .collect::<Result<Vec<_>>>()?;

    // Connect and check ClickHouse before reading anything, so a bad URL, credentials or
    // schema stops the run at once with a clear message.
    let clickhouse_batches = cfg
        .sink
        .clickhouse
        .as_ref()
        .map(|_| Arc::new(std::sync::Mutex::new(Vec::new())));
    let (ch_tx, clickhouse) = match &cfg.sink.clickhouse {
        Some(ch_cfg) => {
            let batches = clickhouse_batches.clone().unwrap_or_default();
            let mut sink = ClickHouseSink::connect(ch_cfg)?;
            if let Some(ids) = &retract {
                sink.retract(ids)?;
            }
            sink.start_at(epoch);
            sink.set_metrics(metrics.clone());
            let (tx, rx) = bounded::<ClickHouseMsg>(CHANNEL_BATCHES * 2);
            let depth = metrics.queue(Queue::SinkClickHouse).clone();
            let m = metrics.clone();
            let handle = thread::Builder::new()
                .name("sink-clickhouse".into())
                .spawn(move || -> Result<ClickHouseTotals> {
                    for msg in rx {
                        match msg {
                            ClickHouseMsg::Rows(conversions, stats) => {
                                depth.dec_by((conversions.len() + stats.len()) as i64);
                                if let Err(e) = sink.write(conversions, stats) {
                                    m.health.sink_failed.store(true, Ordering::Relaxed);
                                    return Err(e);
                                }
                            }
                            ClickHouseMsg::Barrier(next, ack) => {
                                let r = sink.barrier(next);
                                if let Ok(mut b) = batches.lock() {
                                    *b = sink.take_epoch_batches();
                                }
                                if let Err(e) = r {
                                    m.health.sink_failed.store(true, Ordering::Relaxed);
                                    let _ = ack.send(Err(anyhow!("{e:#}")));
                                    return Err(e.context("ClickHouse sink, at a checkpoint"));
                                }
                                let _ = ack.send(Ok(()));
                            }
                        }
                    }
                    sink.close()
                })
                .context("spawning the ClickHouse sink thread")?;
            (
                Some(Metered::new(tx, &metrics, Queue::SinkClickHouse)),
                Some(handle),
            )
        }
        None => (None, None),
    };
    if let Some(path) = &superseded {
        // The end's outputs are taken back (Parquet above, ClickHouse at connect). Its
        // snapshot is replaced by the state before it, under its epoch: the newest checkpoint
        // is then the one this run resumed from, and a crash before this run's first
        // checkpoint replays epoch `epoch` again (whose ClickHouse batches it verifies).
        checkpoint::replace_with(path, &checkpoint::snapshot_path(&state_dir, last_epoch))?;
    }
    let sinks = [
        ("sink-clicks", click_sink_rx, Queue::SinkClicks, None),
        ("sink-rest", rest_sink_rx, Queue::SinkRest, ch_tx),
    ]
    .into_iter()
    .map(|(name, rx, queue, forward)| {
        let parquet_cfg = cfg.sink.parquet.clone();
        let m = metrics.clone();
        thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let r = sink_loop(&parquet_cfg, epoch, rx, forward, &m, queue);
                if r.is_err() {
                    m.health.sink_failed.store(true, Ordering::Relaxed);
                }
                r
            })
            .with_context(|| format!("spawning thread {name}"))
    })
    .collect::<Result<Vec<_>>>()?;

    let sink_tx = SinkSenders {
        clicks: Metered::new(click_sink_tx, &metrics, Queue::SinkClicks),
        rest: Metered::new(rest_sink_tx, &metrics, Queue::SinkRest),
        with_clickhouse: clickhouse.is_some(),
    };
    let mut merge = Merge {
        engine: &mut engine,
        sinks: &sink_tx,
        state_dir: &state_dir,
        epoch,
        positions: resume_at,
        partition_offsets,
        every: cfg.checkpoint.every,
        every_events: cfg.checkpoint.every_events,
        events_since: 0,
        last_checkpoint: Instant::now(),
        checkpoints: 0,
        last_bytes: 0,
        interrupted: false,
        partitioned,
        committer: fluvio.as_ref().map(|f| f.committer.clone()),
        topics: [
            cfg.source.fluvio.clicks_topic.clone(),
            cfg.source.fluvio.conversions_topic.clone(),
        ],
        alternate: cfg.source.kind == SourceKind::Generator,
        turn: 0,
        metrics: &metrics,
        processed_latency: metrics.latency_handle("processed"),
        durable_latency: metrics.latency_handle("durable"),
        awaiting_durable: Vec::new(),
        out: SinkBatch::default(),
        tracked: inputs_now,
        settings: settings_now,
        resumed_finished,
        clickhouse_batches: clickhouse_batches.clone(),
        last_record: None,
        inputs_ended: None,
    };
    let state_result = merge.run(click_rx, conv_rx, &opts, started);
    let (checkpoints, last_bytes, interrupted) =
        (merge.checkpoints, merge.last_bytes, merge.interrupted);
    let idle_tail = match (merge.partitioned, merge.last_record, merge.inputs_ended) {
        (true, Some(last), Some(ended)) => ended.saturating_duration_since(last),
        _ => Duration::ZERO,
    };
    // Its committer handle too: the Fluvio commit task ends once every handle is gone.
    drop(merge);
    drop(sink_tx);
    let mut totals = SinkTotals::default();
    let mut first_error = None;
    for h in sinks {
        // A sink error explains a state-stage send failure, so report it first.
        match h.join().map_err(|_| anyhow!("a sink thread panicked"))? {
            Ok(t) => totals = totals + t,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let clickhouse = match clickhouse {
        Some(h) => Some(
            h.join()
                .map_err(|_| anyhow!("the ClickHouse sink thread panicked"))??,
        ),
        None => None,
    };
    if let Some(e) = first_error {
        return Err(e);
    }
    if state_result.is_err() && metrics.health.source_failed.load(Ordering::Relaxed) {
        // The source's own error says what went wrong; the state stage only stopped for it.
        if let Some(f) = fluvio.take() {
            f.finish_reading();
            let thread = f.into_thread();
            thread
                .join()
                .map_err(|_| anyhow!("the Fluvio source thread panicked"))??;
        }
        for h in sources.drain(..) {
            h.join()
                .map_err(|_| anyhow!("a source thread panicked"))??;
        }
    }
    state_result?;
    if let Some(f) = fluvio {
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
        for h in sources.into_iter().chain(decoders) {
            h.join()
                .map_err(|_| anyhow!("a source thread panicked"))??;
        }
    }
    Ok(RunReport {
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

/// Which checkpoint a run resumes from.
struct RestorePoint {
    snapshot: Option<(u64, rkyv::util::AlignedVec)>,
    /// The snapshot is a finished run's end and no input has more: nothing left to do.
    finished: bool,
    /// Going back behind a finished run's end (its input has more now): the ClickHouse
    /// batches that end wrote, to be taken back with its Parquet files…
    retract: Option<Vec<String>>,
    /// …and that end's snapshot, replaced by the one resumed from once they are.
    superseded: Option<std::path::PathBuf>,
}

/// The latest valid checkpoint — or, when that is a finished run's end and the input has
/// grown since (a plain file appended to, stdin, a Fluvio topic), the checkpoint before that
/// end: what the end resolved (pending conversions released, aggregates flushed) is then
/// decided again with the new records, as a clean run of the longer input decides it.
fn choose_restore_point(
    cfg: &PipelineConfig,
    state_dir: &std::path::Path,
    inputs_now: &[checkpoint::identity::TrackedInput],
) -> Result<RestorePoint> {
    let Some((epoch, bytes)) = checkpoint::load_latest(state_dir)? else {
        return Ok(RestorePoint {
            snapshot: None,
            finished: false,
            retract: None,
            superseded: None,
        });
    };
    let (finished, more, final_batches) = {
        let snap = checkpoint::view(&bytes)?;
        let more = match cfg.source.kind {
            SourceKind::Fluvio => true,
            SourceKind::Generator => false,
            SourceKind::Files => inputs_now.iter().any(|t| {
                snap.inputs
                    .iter()
                    .find(|s| s.stream == t.stream())
                    .is_some_and(|s| t.grew_past(s))
            }),
        };
        let batches: Vec<String> = snap.final_batches.iter().map(|b| b.to_string()).collect();
        (snap.finished, more, batches)
    };
    if !finished || !more {
        return Ok(RestorePoint {
            snapshot: Some((epoch, bytes)),
            finished,
            retract: None,
            superseded: None,
        });
    }
    match checkpoint::load_newest_before(state_dir, epoch)? {
        Some((before, b)) if !checkpoint::view(&b)?.finished => {
            tracing::info!(
                ended = epoch,
                resuming = before,
                "the input has more since the run ended: resuming from the checkpoint before \
                 its end; the outputs of that end are taken back and decided again"
            );
            Ok(RestorePoint {
                snapshot: Some((before, b)),
                finished: false,
                retract: Some(final_batches),
                superseded: Some(checkpoint::snapshot_path(state_dir, epoch)),
            })
        }
        _ => anyhow::bail!(
            "the run in {} ended at checkpoint {epoch} and its input has more since, but the \
             checkpoint before that end is missing or damaged, so the end cannot be decided \
             again; start over with --fresh, or write to another --out",
            state_dir.display()
        ),
    }
}

/// `--fresh`: everything in the state directory goes, except the lock this run holds.
fn remove_state(state_dir: &std::path::Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        if e.file_name() == checkpoint::lock::LOCK_FILE {
            continue;
        }
        let path = e.path();
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.with_context(|| format!("removing {} (--fresh)", path.display()))?;
    }
    Ok(())
}

/// One sink thread: writes what it receives, rolls files by age when idle, closes everything
/// at a checkpoint barrier and at the end; with `forward`, hands conversion and aggregate rows
/// (and barriers) on to the ClickHouse thread.
fn sink_loop(
    cfg: &crate::sink::parquet::ParquetConfig,
    epoch: u64,
    rx: Receiver<SinkMsg>,
    forward: Option<Metered<ClickHouseMsg>>,
    metrics: &Metrics,
    queue: Queue,
) -> Result<SinkTotals> {
    let mut sinks = Sinks::new(cfg, epoch)?;
    let stopped = || anyhow!("the ClickHouse sink stopped; see its error");
    let depth = metrics.queue(queue).clone();
    let mut throttle = Throttle::new(cfg.throttle_rows_per_second);
    // Counter handles taken once: no label lookup per batch.
    let writes = metrics.sink_write_handles(SinkKind::Parquet);
    let table_rows = [
        (SinkKind::Parquet, "clicks"),
        (SinkKind::Parquet, "conversions"),
        (SinkKind::Parquet, "stats_minute"),
        (SinkKind::DeadLetters, "dead_letters"),
    ]
    .map(|(sink, table)| metrics.sink_rows_handle(sink, table));
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(SinkMsg::Batch(batch)) => {
                let rows = batch.rows();
                depth.dec_by(rows as i64);
                let written = sinks.write(&batch);
                writes.record(written.is_ok());
                written?;
                let counts = [
                    batch.click_rows(),
                    batch.conversions.len(),
                    batch.stats.len(),
                    batch.dead_letters.len(),
                ];
                for (counter, n) in table_rows.iter().zip(counts) {
                    counter.inc_by(n as u64);
                }
                throttle.wait(rows as u64);
                if let Some(tx) = &forward
                    && !(batch.conversions.is_empty() && batch.stats.is_empty())
                {
                    let n = batch.conversions.len() + batch.stats.len();
                    if !tx.send(ClickHouseMsg::Rows(batch.conversions, batch.stats), n) {
                        return Err(stopped());
                    }
                }
            }
            Ok(SinkMsg::Barrier(next, ack)) => {
                let r = sinks.barrier(next);
                writes.record(r.is_ok());
                if let Err(e) = r {
                    // The run reports this thread's error: it keeps the cause (the path, the
                    // OS error); the state stage only learns that the checkpoint failed.
                    let _ = ack.send(Err(anyhow!("{e:#}")));
                    return Err(e.context("making the outputs durable at a checkpoint"));
                }
                let _ = ack.send(Ok(()));
                if let Some(tx) = &forward
                    && !tx.send(ClickHouseMsg::Barrier(next, ack), 0)
                {
                    return Err(stopped());
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                let r = sinks.tick();
                if r.is_err() {
                    writes.record(false);
                }
                r?
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
    }
    let closed = sinks.close();
    writes.record(closed.is_ok());
    closed
}

/// `sink.parquet.throttle_rows_per_second`: holds a sink thread to a row rate (to spare a
/// shared disk — and to test that a slow sink slows the sources instead of filling memory).
struct Throttle {
    rate: u64,
    /// When the rows written so far are paid for.
    paid_until: Instant,
}

impl Throttle {
    fn new(rate: u64) -> Throttle {
        Throttle {
            rate,
            paid_until: Instant::now(),
        }
    }

    fn wait(&mut self, rows: u64) {
        if self.rate == 0 {
            return;
        }
        let now = Instant::now();
        // Idle time banks at most one second of budget: no burst above the rate after a pause.
        if let Some(floor) = now.checked_sub(Duration::from_secs(1))
            && self.paid_until < floor
        {
            self.paid_until = floor;
        }
        self.paid_until += Duration::from_secs_f64(rows as f64 / self.rate as f64);
        if self.paid_until > now {
            thread::sleep(self.paid_until - now);
        }
    }
}

struct ZeroQueuesOnExit(SharedMetrics);

impl Drop for ZeroQueuesOnExit {
    fn drop(&mut self) {
        for q in Queue::ALL {
            self.0.queue(q).set(0);
        }
    }
}

/// One decoder thread: raw batches of `stream` in, decoded batches out, until either side
/// closes.
fn decode_loop(
    stream: Stream,
    decoder: &Decoder,
    rx: Receiver<RawBatch>,
    raw_depth: &Gauge,
    tx: &Metered<Decoded>,
) -> Result<()> {
    for mut raw in rx {
        raw_depth.dec_by(raw.len() as i64);
        let (kind, dead, first_ts) = match stream {
            Stream::Clicks => {
                let (b, dead) = decoder.decode_clicks(&raw);
                let first = b.clicks.iter().map(|c| c.ts_ms).min();
                (DecodedKind::Clicks(Arc::new(b)), dead, first)
            }
            Stream::Conversions => {
                let (b, dead) = decoder.decode_conversions(&raw);
                let first = b.conversions.iter().map(|c| c.ts_ms).min();
                (DecodedKind::Conversions(b), dead, first)
            }
        };
        let msg = Decoded {
            kind,
            dead,
            end: raw.end,
            partition: raw.partition,
            first_ts: first_ts.unwrap_or(i64::MIN),
            arrived: raw.arrived,
            signal: raw.signal.take(),
            credit: raw.credit.take(),
        };
        let n = msg.records();
        if !tx.send(msg, n) {
            break;
        }
    }
    Ok(())
}

/// The state stage's side of the sink threads.
struct SinkSenders {
    clicks: Metered<SinkMsg>,
    rest: Metered<SinkMsg>,
    with_clickhouse: bool,
}

impl SinkSenders {
    fn send(&self, batch: SinkBatch) -> Result<()> {
        let SinkBatch {
            clicks,
            conversions,
            stats,
            dead_letters,
        } = batch;
        let stopped = || anyhow!("a sink stopped; see its error");
        if !clicks.is_empty() {
            let batch = SinkBatch {
                clicks,
                ..SinkBatch::default()
            };
            let n = batch.rows();
            if !self.clicks.send(SinkMsg::Batch(batch), n) {
                return Err(stopped());
            }
        }
        let rest = SinkBatch {
            conversions,
            stats,
            dead_letters,
            ..SinkBatch::default()
        };
        let n = rest.rows();
        if n > 0 && !self.rest.send(SinkMsg::Batch(rest), n) {
            return Err(stopped());
        }
        Ok(())
    }

    /// Sends a barrier to every sink and waits until all outputs so far are durable.
    fn barrier(&self, next_epoch: u64) -> Result<()> {
        let (ack_tx, ack_rx) = bounded::<Result<()>>(4);
        let stopped = || anyhow!("a sink stopped; see its error");
        if !self
            .clicks
            .send(SinkMsg::Barrier(next_epoch, ack_tx.clone()), 0)
            || !self.rest.send(SinkMsg::Barrier(next_epoch, ack_tx), 0)
        {
            return Err(stopped());
        }
        let expected = 2 + usize::from(self.with_clickhouse);
        for _ in 0..expected {
            ack_rx.recv().map_err(|_| stopped())??;
        }
        Ok(())
    }
}

/// A source thread: an error marks the pipeline not ready and stops the state stage (which
/// must not go on attributing against a stream that has died); the error itself is reported
/// when the thread is joined.
fn spawn_source(
    name: &str,
    metrics: &SharedMetrics,
    f: impl FnOnce() -> Result<()> + Send + 'static,
) -> Result<thread::JoinHandle<Result<()>>> {
    let metrics = metrics.clone();
    spawn(name, move || {
        let r = f();
        if r.is_err() {
            metrics.health.source_failed.store(true, Ordering::Relaxed);
        }
        r
    })
}

fn spawn(
    name: &str,
    f: impl FnOnce() -> Result<()> + Send + 'static,
) -> Result<thread::JoinHandle<Result<()>>> {
    thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .with_context(|| format!("spawning thread {name}"))
}

/// Runs the generator, cutting its output into pairs of raw batches: a click batch, then the
/// conversions generated meanwhile (possibly none). The state stage takes them in exactly that
/// alternation, so neither side can starve the other and the order is the same on every run.
/// Pairs whose click batch ends at or before `resume` are generated but not sent.
fn generator_source(
    cfg: &crate::source::generator::GeneratorConfig,
    clicks: Metered<RawBatch>,
    conversions: Metered<RawBatch>,
    resume: [u64; 2],
) -> Result<()> {
    use crate::source::BATCH_LINES;
    let mut bufs = [RawBatch::default(), RawBatch::default()];
    let mut lines = [0u64, 0u64];
    let mut offsets = [0u64, 0u64];
    let mut open = true;
    let send_pair = |bufs: &mut [RawBatch; 2], lines: &[u64; 2], offsets: &[u64; 2]| {
        let [mut c, mut v] = std::mem::take(bufs);
        c.end = Position {
            line: lines[0],
            offset: offsets[0],
        };
        v.end = Position {
            line: lines[1],
            offset: offsets[1],
        };
        if resume[0] > 0 && c.end.line <= resume[0] {
            return true;
        }
        let (nc, nv) = (c.len(), v.len());
        clicks.send(c, nc) && conversions.send(v, nv)
    };
    generate(cfg, |stream, line| {
        let i = usize::from(stream == Stream::Conversions);
        lines[i] += 1;
        bufs[i].push_line(
            line,
            Position {
                line: lines[i],
                offset: offsets[i],
            },
        );
        offsets[i] += line.len() as u64 + 1;
        if i == 0 && bufs[0].len() >= BATCH_LINES {
            open = send_pair(&mut bufs, &lines, &offsets);
        }
        open
    })?;
    if open && !(bufs[0].is_empty() && bufs[1].is_empty()) {
        send_pair(&mut bufs, &lines, &offsets);
    }
    Ok(())
}

/// The state stage: merges the two decoded streams (and their partitions) deterministically
/// into the engine and takes checkpoints.
struct Merge<'a> {
    engine: &'a mut Engine,
    sinks: &'a SinkSenders,
    state_dir: &'a std::path::Path,
    /// Epoch of the outputs being written now.
    epoch: u64,
    /// Lines consumed per stream (the restore point of the next checkpoint).
    positions: [Position; 2],
    /// Fluvio: next offset per (stream, partition) consumed.
    partition_offsets: HashMap<(usize, u32), u64>,
    every: Duration,
    every_events: u64,
    events_since: u64,
    last_checkpoint: Instant,
    checkpoints: u64,
    last_bytes: u64,
    interrupted: bool,
    /// The streams come in partitions (Fluvio): merged record by record, see `inputs`.
    partitioned: bool,
    /// Fluvio: commits the offsets each checkpoint covers.
    committer: Option<crate::source::fluvio::commit::Committer>,
    /// Fluvio topic of each stream (for commits).
    topics: [String; 2],
    /// Paired input (the generator): take batches strictly alternately, starting with clicks.
    alternate: bool,
    /// Whose batch comes next in alternate mode.
    turn: usize,
    metrics: &'a Metrics,
    processed_latency: prometheus_client::metrics::histogram::Histogram,
    durable_latency: prometheus_client::metrics::histogram::Histogram,
    /// Arrival times of the batches since the last checkpoint: durable once it completes.
    awaiting_durable: Vec<Instant>,
    /// Rows of runs whose batch is not finished yet.
    out: SinkBatch,
    /// The file inputs, fingerprinted into every checkpoint, and the semantic settings.
    tracked: Vec<checkpoint::identity::TrackedInput>,
    settings: Vec<(String, String)>,
    /// Resumed from a finished run's end with nothing new: no checkpoint is written, so the
    /// pair "before the end" / "end" stays on disk for a later rerun over a longer input.
    resumed_finished: bool,
    /// The ClickHouse batches of the epoch last closed by a barrier (recorded in a finished
    /// checkpoint, so a rerun over a longer input can take them back).
    clickhouse_batches: Option<Arc<std::sync::Mutex<Vec<String>>>>,
    /// When the last record was processed, and when both streams had ended.
    last_record: Option<Instant>,
    inputs_ended: Option<Instant>,
}

impl Merge<'_> {
    /// Takes from the stream whose next run starts earlier in event time, waiting for the
    /// head of both open streams (and of every partition not caught up) first: the processing
    /// order is then a function of the inputs alone, so a replay from a checkpoint does exactly
    /// what the crashed run did.
    fn run(
        &mut self,
        clicks: Receiver<Decoded>,
        conversions: Receiver<Decoded>,
        opts: &RunOptions,
        started: Instant,
    ) -> Result<()> {
        let rxs = [clicks, conversions];
        let depths = [
            self.metrics.queue(Queue::DecodedClicks).clone(),
            self.metrics.queue(Queue::DecodedConversions).clone(),
        ];
        let mut inputs = [
            StreamInput::new(Stream::Clicks, self.partitioned),
            StreamInput::new(Stream::Conversions, self.partitioned),
        ];
        let mut closed_reported = [false, false];
        let mut last_progress = Instant::now();
        let tty = std::io::stderr().is_terminal();
        loop {
            if self.metrics.health.source_failed.load(Ordering::Relaxed) {
                // No checkpoint: the restart replays from the last good one.
                anyhow::bail!("a source failed");
            }
            if opts.stop.load(Ordering::Relaxed) {
                self.interrupted = true;
                tracing::info!("stop requested: checkpointing and exiting");
                if !self.resumed_finished {
                    self.checkpoint(&mut inputs, false)?;
                }
                return Ok(());
            }
            let readiness = [inputs[0].readiness(), inputs[1].readiness()];
            for i in 0..2 {
                if readiness[i] == Readiness::Closed && !closed_reported[i] {
                    closed_reported[i] = true;
                    self.engine.close_stream(inputs[i].stream);
                }
            }
            if readiness.iter().all(|r| *r == Readiness::Closed) {
                self.inputs_ended = Some(Instant::now());
                break;
            }
            let pick = if self.alternate {
                // Paired source: clicks, conversions, clicks, … as produced.
                let t = self.turn;
                match readiness {
                    r if matches!(r[t], Readiness::Ready(_)) => Some(t),
                    r if r[t] == Readiness::Closed && matches!(r[1 - t], Readiness::Ready(_)) => {
                        Some(1 - t)
                    }
                    _ => None,
                }
            } else {
                match readiness {
                    [Readiness::Ready(c), Readiness::Ready(v)] => Some(usize::from(v < c)),
                    [Readiness::Ready(_), Readiness::Quiet | Readiness::Closed] => Some(0),
                    [Readiness::Quiet | Readiness::Closed, Readiness::Ready(_)] => Some(1),
                    _ => None,
                }
            };
            if let Some(pick) = pick {
                self.process_run(&mut inputs[pick])?;
                self.turn = 1 - pick;
                // With paired input, checkpoints fall between pairs only.
                let between_pairs =
                    !self.alternate || self.turn == 0 || readiness[1] == Readiness::Closed;
                if between_pairs
                    && (self.events_since >= self.every_events
                        || self.last_checkpoint.elapsed() >= self.every)
                {
                    self.checkpoint(&mut inputs, false)?;
                }
            } else {
                // Nothing to merge: wait for whichever stream is missing a batch.
                let waiting_since = Instant::now();
                self.receive(&rxs, &depths, &mut inputs, &readiness);
                let waited_for = match readiness {
                    [Readiness::Waiting, Readiness::Waiting] => "both",
                    [Readiness::Waiting, _] => "clicks",
                    [_, Readiness::Waiting] => "conversions",
                    _ => "nothing (quiet)",
                };
                self.metrics
                    .state_waited(waited_for, waiting_since.elapsed().as_secs_f64());
                // A quiet live source still gets its processed records checkpointed (and its
                // offsets committed) on time.
                if self.events_since > 0 && self.last_checkpoint.elapsed() >= self.every {
                    self.checkpoint(&mut inputs, false)?;
                }
            }
            if opts.progress && last_progress.elapsed() >= Duration::from_secs(1) {
                last_progress = Instant::now();
                print_progress(self.engine, started, tty);
            }
        }
        if !self.resumed_finished {
            // The state before the end, then the end: a rerun that finds the input longer
            // goes back to the first and decides the end again (see `choose_restore_point`).
            // Nothing since the last checkpoint (written or restored): that one is the state
            // before the end, and the end keeps the epoch a crashed end had (same batch ids).
            let at_last_checkpoint = self.events_since == 0 && self.out.is_empty();
            if !at_last_checkpoint {
                self.checkpoint(&mut inputs, false)?;
            }
            let mut out = std::mem::take(&mut self.out);
            self.engine.finish(&mut out);
            self.sinks.send(out)?;
            self.checkpoint(&mut inputs, true)?;
        }
        self.publish();
        if opts.progress && tty {
            eprintln!();
        }
        Ok(())
    }

    /// Moves decoded batches from the channels of the streams that are waiting into their
    /// inputs, waiting up to 200 ms for the first.
    fn receive(
        &mut self,
        rxs: &[Receiver<Decoded>; 2],
        depths: &[Gauge; 2],
        inputs: &mut [StreamInput; 2],
        readiness: &[Readiness; 2],
    ) {
        let never = crossbeam_channel::never::<Decoded>();
        // A quiet stream is watched too: new records (or its end) may come at any time.
        let wanted = |i: usize| {
            inputs[i].open && matches!(readiness[i], Readiness::Waiting | Readiness::Quiet)
        };
        let (w0, w1) = (wanted(0), wanted(1));
        let r0 = if w0 { &rxs[0] } else { &never };
        let r1 = if w1 { &rxs[1] } else { &never };
        let timeout = Duration::from_millis(200);
        let got = crossbeam_channel::select! {
            recv(r0) -> m => Some((0, m)),
            recv(r1) -> m => Some((1, m)),
            default(timeout) => None,
        };
        if let Some((i, m)) = got {
            match m {
                Ok(m) => {
                    depths[i].dec_by(m.records() as i64);
                    inputs[i].push(m);
                    // Whatever else is already there (bounded: files by the channel, Fluvio by
                    // its per-partition credits).
                    if self.partitioned {
                        while let Ok(m) = rxs[i].try_recv() {
                            depths[i].dec_by(m.records() as i64);
                            inputs[i].push(m);
                        }
                    }
                }
                Err(_) => inputs[i].open = false,
            }
        }
    }

    /// Processes the next run of `input` (a whole batch of a single-sequence stream, or the
    /// records of one partition that come first in event time).
    fn process_run(&mut self, input: &mut StreamInput) -> Result<()> {
        let Some(run) = input.next_run() else {
            return Ok(());
        };
        let stream = input.stream;
        // Runs of interleaved partitions are short (a few records): their rows gather here
        // and go to the sinks once per finished batch, like a whole batch of a file.
        let mut out = std::mem::take(&mut self.out);
        let n = match input.view(run) {
            Some(view) => {
                let n = view.range.len();
                match &view.batch.kind {
                    DecodedKind::Clicks(b) => {
                        self.engine
                            .on_click_run(b, view.range, view.accepted, &mut out)
                    }
                    DecodedKind::Conversions(b) => {
                        self.engine.on_conversion_run(b, view.range, &mut out)
                    }
                }
                n
            }
            None => 0,
        };
        let done = input.complete(run);
        let n = n + done.dead.len();
        if n > 0 {
            self.last_record = Some(Instant::now());
        }
        if !done.dead.is_empty() {
            self.engine.on_dead_letters(done.dead, &mut out);
        }
        self.events_since += n as u64;
        let s = usize::from(stream == Stream::Conversions);
        match (done.partition, done.position) {
            (Some(p), Some(pos)) => {
                self.partition_offsets.insert((s, p), pos.line);
            }
            (None, Some(pos)) => self.positions[s] = pos,
            _ => {}
        }
        let Some((batch, accepted)) = done.finished else {
            self.out = out;
            return Ok(());
        };
        if let DecodedKind::Clicks(b) = &batch.kind
            && !accepted.is_empty()
        {
            out.clicks.push(ClickRows {
                batch: b.clone(),
                accepted,
            });
        }
        if let Some(t) = batch.arrived {
            self.processed_latency.observe(t.elapsed().as_secs_f64());
            self.awaiting_durable.push(t);
        }
        self.sinks.send(out)?;
        self.publish();
        Ok(())
    }

    fn publish(&self) {
        let now_ms = chrono::Utc::now().timestamp_millis();
        self.metrics.publish_engine(
            self.engine.counters(),
            &self.engine.sizes(),
            [
                self.engine.watermark(Stream::Clicks),
                self.engine.watermark(Stream::Conversions),
            ],
            now_ms,
        );
    }

    /// Outputs durable → snapshot of the state and positions → the next epoch begins →
    /// (Fluvio) the offsets the snapshot covers are committed.
    fn checkpoint(&mut self, inputs: &mut [StreamInput; 2], finished: bool) -> Result<()> {
        let t = Instant::now();
        // Rows of runs of batches still in progress were processed: they go out before the
        // barrier.
        let mut out = std::mem::take(&mut self.out);
        for input in inputs.iter_mut() {
            out.clicks.extend(input.take_partial_clicks());
        }
        if !out.is_empty() {
            self.sinks.send(out)?;
        }
        self.sinks.barrier(self.epoch + 1)?;
        // A partition read to its end without delivering anything still has a position
        // (where the reader started): a restart must not skip what arrives meanwhile.
        for (s, input) in inputs.iter().enumerate() {
            for (p, at) in input.caught_up_positions() {
                let e = self.partition_offsets.entry((s, p)).or_insert(at);
                *e = (*e).max(at);
            }
        }
        let snap = checkpoint::Snapshot {
            epoch: self.epoch,
            positions: self.positions.map(|p| checkpoint::StreamPos {
                lines: p.line,
                bytes: p.offset,
            }),
            partition_offsets: self
                .partition_offsets
                .iter()
                .map(|(&(s, p), &o)| (s as u8, p, o))
                .collect(),
            inputs: self
                .tracked
                .iter()
                .map(|t| t.snap(self.positions[usize::from(t.stream())].offset))
                .collect::<Result<_>>()?,
            settings: self.settings.clone(),
            finished,
            final_batches: match (&self.clickhouse_batches, finished) {
                (Some(b), true) => b.lock().map(|b| b.clone()).unwrap_or_default(),
                _ => Vec::new(),
            },
            engine: self.engine.snapshot(),
        };
        self.last_bytes = checkpoint::write(self.state_dir, &snap)?;
        self.metrics.checkpoint_done(t.elapsed(), self.last_bytes);
        for arrived in self.awaiting_durable.drain(..) {
            self.durable_latency
                .observe(arrived.elapsed().as_secs_f64());
        }
        if let Some(c) = &self.committer {
            c.commit(
                self.partition_offsets
                    .iter()
                    .map(|(&(s, p), &o)| (self.topics[s].clone(), p, o))
                    .collect(),
            );
        }
        tracing::debug!(epoch = self.epoch, bytes = self.last_bytes, took = ?t.elapsed(), "checkpoint written");
        self.checkpoints += 1;
        self.epoch += 1;
        self.events_since = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }
}

fn print_progress(engine: &Engine, started: Instant, tty: bool) {
    let c = engine.counters();
    let s = engine.sizes();
    let secs = started.elapsed().as_secs_f64();
    let line = format!(
        "{:>6.1}s  events {:>11}  {:>9.0}/s  clicks {:>10}  conversions {:>8}  dead {:>6}  indexed {:>10}  pending {:>6}",
        secs,
        c.events_in(),
        c.events_in() as f64 / secs.max(1e-9),
        c.clicks,
        c.conversions,
        c.dead_letter_total(),
        s.indexed_clicks,
        s.pending
    );
    if tty {
        eprint!("\r{line}");
    } else {
        eprintln!("{line}");
    }
}
