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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use crossbeam_channel::{Receiver, Sender, bounded};

use crate::checkpoint;
use crate::config::{PipelineConfig, SourceKind};
use crate::event::decode::Decoder;
use crate::event::{ClickBatch, ConversionBatch, DeadLetter, Position, Stream};
use crate::rows::{ConversionRow, SinkBatch, StatsRow};
use crate::sink::clickhouse::{ClickHouseSink, ClickHouseTotals};
use crate::sink::{SinkTotals, Sinks};
use crate::source::RawBatch;
use crate::source::file::{Input, read_batches};
use crate::source::fluvio::{FluvioLog, PartitionReader, run_topic};
use crate::source::generator::generate;
use crate::state::{Counters, Engine, StateSizes};

/// Batches in flight per channel.
const CHANNEL_BATCHES: usize = 4;

/// A decoded batch with where its stream stands after it.
struct Decoded {
    kind: DecodedKind,
    dead: Vec<DeadLetter>,
    /// Position of the stream after this batch.
    end: Position,
    /// Fluvio partition of the batch (then `end.line` is that partition's next offset).
    partition: Option<u32>,
    /// Merge key: the batch's earliest event time (`i64::MIN` for an empty batch, which is
    /// taken at once).
    first_ts: i64,
}

enum DecodedKind {
    Clicks(ClickBatch),
    Conversions(ConversionBatch),
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
}

/// What a finished run did.
#[derive(Debug, Clone)]
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
}

impl RunReport {
    pub fn events_per_second(&self) -> f64 {
        self.counters.events_in() as f64 / self.elapsed.as_secs_f64().max(1e-9)
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
    let limits = cfg.decode_limits();
    let state_dir = cfg.state_dir();
    let out = &cfg.sink.parquet.out;

    if opts.fresh {
        let _ = std::fs::remove_dir_all(&state_dir);
        for t in crate::sink::TABLE_DIRS {
            let _ = std::fs::remove_dir_all(out.join(t));
        }
    }
    // Restore the latest checkpoint; what a crashed run wrote after it is written again.
    let restored = checkpoint::load_latest(&state_dir)?;
    let mut partition_offsets: HashMap<(usize, u32), u64> = HashMap::new();
    let (mut engine, last_epoch, resume) = match &restored {
        Some((epoch, bytes)) => {
            let snap = checkpoint::view(bytes)?;
            let engine = Engine::restore(cfg.engine(), &snap.engine);
            let resume = [0, 1].map(|i| snap.positions[i].lines.to_native());
            for t in snap.partition_offsets.iter() {
                partition_offsets.insert((usize::from(t.0), t.1.to_native()), t.2.to_native());
            }
            tracing::info!(
                epoch,
                clicks_line = resume[0],
                conversions_line = resume[1],
                "resuming from checkpoint"
            );
            (engine, *epoch, resume)
        }
        None => (Engine::new(cfg.engine()), 0, [0, 0]),
    };
    drop(restored);
    let discarded = crate::sink::discard_after(out, last_epoch)?;
    if discarded > 0 {
        tracing::info!(
            files = discarded,
            epoch = last_epoch,
            "removed outputs written after the checkpoint; they are written again"
        );
    }
    let epoch = last_epoch + 1;

    let (click_raw_tx, click_raw_rx) = bounded::<RawBatch>(CHANNEL_BATCHES);
    let (conv_raw_tx, conv_raw_rx) = bounded::<RawBatch>(CHANNEL_BATCHES);
    let (click_tx, click_rx) = bounded::<Decoded>(CHANNEL_BATCHES);
    let (conv_tx, conv_rx) = bounded::<Decoded>(CHANNEL_BATCHES);
    let (click_sink_tx, click_sink_rx) = bounded::<SinkMsg>(CHANNEL_BATCHES * 2);
    let (rest_sink_tx, rest_sink_rx) = bounded::<SinkMsg>(CHANNEL_BATCHES * 2);

    let mut sources = Vec::new();
    // Fluvio readers come back here when their threads end; offsets are committed only after
    // every sink closed successfully, i.e. once the outputs are durable.
    let fluvio_readers: Arc<Mutex<Vec<PartitionReader<FluvioLog>>>> = Arc::default();
    // Batches a restored run already processed are read again but not sent on.
    let skip = |tx: &Sender<RawBatch>, b: RawBatch, upto: u64| {
        if b.end.line <= upto && upto > 0 {
            true
        } else {
            tx.send(b).is_ok()
        }
    };
    match cfg.source.kind {
        SourceKind::Fluvio => {
            let f = &cfg.source.fluvio;
            for (stream, (topic, tx)) in [
                (f.clicks_topic.clone(), click_raw_tx),
                (f.conversions_topic.clone(), conv_raw_tx),
            ]
            .into_iter()
            .enumerate()
            {
                let partitions = if f.partitions.is_empty() {
                    FluvioLog::partitions(f, &topic)?
                } else {
                    f.partitions.clone()
                };
                let readers = partitions
                    .iter()
                    .map(|&p| {
                        Ok(PartitionReader::new(
                            &topic,
                            p,
                            FluvioLog::open(
                                f,
                                &topic,
                                p,
                                partition_offsets.get(&(stream, p)).map(|&o| o as i64),
                            )?,
                        ))
                    })
                    .collect::<Result<Vec<_>>>()?;
                tracing::info!(%topic, ?partitions, "reading Fluvio partitions");
                let (idle, done) = (f.exit_when_idle, fluvio_readers.clone());
                sources.push(spawn("source-fluvio", move || {
                    let readers = run_topic(readers, idle, |b| tx.send(b).is_ok())?;
                    done.lock()
                        .map_err(|_| anyhow!("reader list poisoned"))?
                        .extend(readers);
                    Ok(())
                })?);
            }
        }
        SourceKind::Generator => {
            let gen_cfg = cfg.source.generator.clone();
            sources.push(spawn("source-generator", move || {
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
                    sources.push(spawn("source-file", move || {
                        read_batches(reader, |b| skip(&tx, b, upto))
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
    let click_decoder = Decoder::new(source_name(&cfg.source.clicks), limits.clone());
    let conv_decoder = Decoder::new(source_name(&cfg.source.conversions), limits);
    let decoders = vec![
        spawn("decode-clicks", move || {
            for raw in click_raw_rx {
                let (b, dead) = click_decoder.decode_clicks(&raw);
                let first_ts = b.clicks.iter().map(|c| c.ts_ms).min().unwrap_or(i64::MIN);
                let msg = Decoded {
                    kind: DecodedKind::Clicks(b),
                    dead,
                    end: raw.end,
                    partition: raw.partition,
                    first_ts,
                };
                if click_tx.send(msg).is_err() {
                    break;
                }
            }
            Ok(())
        })?,
        spawn("decode-conversions", move || {
            for raw in conv_raw_rx {
                let (b, dead) = conv_decoder.decode_conversions(&raw);
                let first_ts = b
                    .conversions
                    .iter()
                    .map(|c| c.ts_ms)
                    .min()
                    .unwrap_or(i64::MIN);
                let msg = Decoded {
                    kind: DecodedKind::Conversions(b),
                    dead,
                    end: raw.end,
                    partition: raw.partition,
                    first_ts,
                };
                if conv_tx.send(msg).is_err() {
                    break;
                }
            }
            Ok(())
        })?,
    ];

    // Connect and check ClickHouse before reading anything, so a bad URL, credentials or
    // schema stops the run at once with a clear message.
    let (ch_tx, clickhouse) = match &cfg.sink.clickhouse {
        Some(ch_cfg) => {
            let mut sink = ClickHouseSink::connect(ch_cfg)?;
            sink.start_at(epoch);
            let (tx, rx) = bounded::<ClickHouseMsg>(CHANNEL_BATCHES * 2);
            let handle = thread::Builder::new()
                .name("sink-clickhouse".into())
                .spawn(move || -> Result<ClickHouseTotals> {
                    for msg in rx {
                        match msg {
                            ClickHouseMsg::Rows(conversions, stats) => {
                                sink.write(conversions, stats)?
                            }
                            ClickHouseMsg::Barrier(next, ack) => {
                                let r = sink.barrier(next);
                                let failed = r.is_err();
                                let _ = ack.send(r);
                                if failed {
                                    anyhow::bail!("ClickHouse sink failed at a checkpoint");
                                }
                            }
                        }
                    }
                    sink.close()
                })
                .context("spawning the ClickHouse sink thread")?;
            (Some(tx), Some(handle))
        }
        None => (None, None),
    };
    let sinks = [
        ("sink-clicks", click_sink_rx, None),
        ("sink-rest", rest_sink_rx, ch_tx),
    ]
    .into_iter()
    .map(|(name, rx, forward)| {
        let parquet_cfg = cfg.sink.parquet.clone();
        thread::Builder::new()
            .name(name.into())
            .spawn(move || sink_loop(&parquet_cfg, epoch, rx, forward))
            .with_context(|| format!("spawning thread {name}"))
    })
    .collect::<Result<Vec<_>>>()?;

    let sink_tx = SinkSenders {
        clicks: click_sink_tx,
        rest: rest_sink_tx,
        with_clickhouse: clickhouse.is_some(),
    };
    let mut merge = Merge {
        engine: &mut engine,
        sinks: &sink_tx,
        state_dir: &state_dir,
        epoch,
        positions: resume.map(|l| Position { line: l, offset: 0 }),
        partition_offsets,
        every: cfg.checkpoint.every,
        every_events: cfg.checkpoint.every_events,
        events_since: 0,
        last_checkpoint: Instant::now(),
        checkpoints: 0,
        last_bytes: 0,
        interrupted: false,
        idle_grace: (cfg.source.kind == SourceKind::Fluvio).then_some(Duration::from_secs(1)),
        alternate: cfg.source.kind == SourceKind::Generator,
        turn: 0,
    };
    let state_result = merge.run(click_rx, conv_rx, &opts, started);
    let (checkpoints, last_bytes, interrupted) =
        (merge.checkpoints, merge.last_bytes, merge.interrupted);
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
    state_result?;
    if !interrupted {
        for h in sources.into_iter().chain(decoders) {
            h.join()
                .map_err(|_| anyhow!("a source thread panicked"))??;
        }
    }
    // Every sink closed without error: the outputs are durable, so the positions can move on.
    let mut readers = fluvio_readers
        .lock()
        .map_err(|_| anyhow!("reader list poisoned"))?;
    for r in readers.iter_mut() {
        r.commit_emitted()?;
        tracing::info!(topic = %r.topic, partition = r.partition, offset = ?r.committed(), "committed Fluvio offset");
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
    })
}

/// One sink thread: writes what it receives, rolls files by age when idle, closes everything
/// at a checkpoint barrier and at the end; with `forward`, hands conversion and aggregate rows
/// (and barriers) on to the ClickHouse thread.
fn sink_loop(
    cfg: &crate::sink::parquet::ParquetConfig,
    epoch: u64,
    rx: Receiver<SinkMsg>,
    forward: Option<Sender<ClickHouseMsg>>,
) -> Result<SinkTotals> {
    let mut sinks = Sinks::new(cfg, epoch)?;
    let stopped = || anyhow!("the ClickHouse sink stopped; see its error");
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(SinkMsg::Batch(batch)) => {
                sinks.write(&batch)?;
                if let Some(tx) = &forward
                    && !(batch.conversions.is_empty() && batch.stats.is_empty())
                {
                    tx.send(ClickHouseMsg::Rows(batch.conversions, batch.stats))
                        .map_err(|_| stopped())?;
                }
            }
            Ok(SinkMsg::Barrier(next, ack)) => {
                let r = sinks.barrier(next);
                let failed = r.is_err();
                let _ = ack.send(r);
                if failed {
                    anyhow::bail!("a sink failed at a checkpoint");
                }
                if let Some(tx) = &forward {
                    tx.send(ClickHouseMsg::Barrier(next, ack))
                        .map_err(|_| stopped())?;
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => sinks.tick()?,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
    }
    sinks.close()
}

/// The state stage's side of the sink threads.
struct SinkSenders {
    clicks: Sender<SinkMsg>,
    rest: Sender<SinkMsg>,
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
            self.clicks
                .send(SinkMsg::Batch(SinkBatch {
                    clicks,
                    ..SinkBatch::default()
                }))
                .map_err(|_| stopped())?;
        }
        let rest = SinkBatch {
            conversions,
            stats,
            dead_letters,
            ..SinkBatch::default()
        };
        if !rest.is_empty() {
            self.rest
                .send(SinkMsg::Batch(rest))
                .map_err(|_| stopped())?;
        }
        Ok(())
    }

    /// Sends a barrier to every sink and waits until all outputs so far are durable.
    fn barrier(&self, next_epoch: u64) -> Result<()> {
        let (ack_tx, ack_rx) = bounded::<Result<()>>(4);
        let stopped = || anyhow!("a sink stopped; see its error");
        self.clicks
            .send(SinkMsg::Barrier(next_epoch, ack_tx.clone()))
            .map_err(|_| stopped())?;
        self.rest
            .send(SinkMsg::Barrier(next_epoch, ack_tx))
            .map_err(|_| stopped())?;
        let expected = 2 + usize::from(self.with_clickhouse);
        for _ in 0..expected {
            ack_rx.recv().map_err(|_| stopped())??;
        }
        Ok(())
    }
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
    clicks: Sender<RawBatch>,
    conversions: Sender<RawBatch>,
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
        clicks.send(c).is_ok() && conversions.send(v).is_ok()
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

/// The state stage: merges the two decoded streams deterministically into the engine and
/// takes checkpoints.
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
    /// Live sources only: how long to wait for a quiet stream before going on without it.
    idle_grace: Option<Duration>,
    /// Paired input (the generator): take batches strictly alternately, starting with clicks.
    alternate: bool,
    /// Whose batch comes next in alternate mode.
    turn: usize,
}

impl Merge<'_> {
    /// Takes from the stream whose next batch starts earlier in event time, waiting for the
    /// head of both open streams first: the processing order is then a function of the inputs
    /// alone, so a replay from a checkpoint does exactly what the crashed run did.
    fn run(
        &mut self,
        clicks: Receiver<Decoded>,
        conversions: Receiver<Decoded>,
        opts: &RunOptions,
        started: Instant,
    ) -> Result<()> {
        let rxs = [&clicks, &conversions];
        let mut open = [true, true];
        let mut heads: [Option<Decoded>; 2] = [None, None];
        let mut headless_since: Option<Instant> = None;
        let mut last_progress = Instant::now();
        let tty = std::io::stderr().is_terminal();
        loop {
            if opts.stop.load(Ordering::Relaxed) {
                self.interrupted = true;
                tracing::info!("stop requested: checkpointing and exiting");
                self.checkpoint()?;
                return Ok(());
            }
            for i in 0..2 {
                if open[i] && heads[i].is_none() {
                    match rxs[i].recv_timeout(Duration::from_millis(200)) {
                        Ok(m) => heads[i] = Some(m),
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                            open[i] = false;
                            self.engine.close_stream(if i == 0 {
                                Stream::Clicks
                            } else {
                                Stream::Conversions
                            });
                        }
                    }
                }
            }
            if !open[0] && !open[1] && heads.iter().all(Option::is_none) {
                break;
            }
            // Wait until every open stream has a head (a timeout only loops back here). A live
            // source (Fluvio) may go quiet on one topic: after `idle_grace` the other stream
            // proceeds alone, trading determinism (only) for liveness.
            let missing = (0..2).any(|i| open[i] && heads[i].is_none());
            if !missing {
                headless_since = None;
            }
            let since = *headless_since.get_or_insert_with(Instant::now);
            let give_up = self.idle_grace.is_some_and(|g| since.elapsed() >= g);
            let pick = if self.alternate {
                // Paired source: clicks, conversions, clicks, … as produced.
                let t = self.turn;
                if heads[t].is_some() {
                    Some(t)
                } else if !open[t] && heads[1 - t].is_some() {
                    Some(1 - t)
                } else {
                    None
                }
            } else if !missing || give_up {
                match (&heads[0], &heads[1]) {
                    (Some(c), Some(v)) => Some(usize::from(v.first_ts < c.first_ts)),
                    (Some(_), None) => Some(0),
                    (None, Some(_)) => Some(1),
                    (None, None) => None,
                }
            } else {
                None
            };
            if let Some(pick) = pick {
                if let Some(msg) = heads[pick].take() {
                    self.process(pick, msg)?;
                }
                self.turn = 1 - pick;
                // With paired input, checkpoints fall between pairs only.
                let between_pairs = !self.alternate || self.turn == 0 || !open[1];
                if between_pairs
                    && (self.events_since >= self.every_events
                        || self.last_checkpoint.elapsed() >= self.every)
                {
                    self.checkpoint()?;
                }
            }
            if opts.progress && last_progress.elapsed() >= Duration::from_secs(1) {
                last_progress = Instant::now();
                print_progress(self.engine, started, tty);
            }
        }
        let mut out = SinkBatch::default();
        self.engine.finish(&mut out);
        self.sinks.send(out)?;
        self.checkpoint()?;
        if opts.progress && tty {
            eprintln!();
        }
        Ok(())
    }

    fn process(&mut self, stream: usize, msg: Decoded) -> Result<()> {
        let mut out = SinkBatch::default();
        let n = msg.dead.len();
        self.engine.on_dead_letters(msg.dead, &mut out);
        let n = n + match msg.kind {
            DecodedKind::Clicks(b) => {
                let k = b.clicks.len();
                self.engine.on_clicks(b, &mut out);
                k
            }
            DecodedKind::Conversions(b) => {
                let k = b.conversions.len();
                self.engine.on_conversions(b, &mut out);
                k
            }
        };
        self.events_since += n as u64;
        match msg.partition {
            Some(p) => {
                self.partition_offsets.insert((stream, p), msg.end.line);
            }
            None if msg.end.line > 0 => self.positions[stream] = msg.end,
            None => {}
        }
        self.sinks.send(out)
    }

    /// Outputs durable → snapshot of the state and positions → the next epoch begins.
    fn checkpoint(&mut self) -> Result<()> {
        let t = Instant::now();
        self.sinks.barrier(self.epoch + 1)?;
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
            engine: self.engine.snapshot(),
        };
        self.last_bytes = checkpoint::write(self.state_dir, &snap)?;
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
