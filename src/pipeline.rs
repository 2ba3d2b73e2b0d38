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
//! nothing is dropped. The state stage merges the two decoded streams preferring the one whose
//! watermark is lower, so the streams advance together in event time.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use crossbeam_channel::{Receiver, Sender, bounded, select};

use crate::config::{PipelineConfig, SourceKind};
use crate::event::decode::Decoder;
use crate::event::{ClickBatch, ConversionBatch, DeadLetter, Stream};
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

enum Decoded {
    Clicks(ClickBatch, Vec<DeadLetter>),
    Conversions(ConversionBatch, Vec<DeadLetter>),
}

/// How `run` reports while it works.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Print a progress line to stderr every second.
    pub progress: bool,
}

/// What a finished run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub counters: Counters,
    pub sizes: StateSizes,
    pub sinks: SinkTotals,
    /// Present when the pipeline has a ClickHouse sink.
    pub clickhouse: Option<ClickHouseTotals>,
    pub elapsed: Duration,
}

impl RunReport {
    pub fn events_per_second(&self) -> f64 {
        self.counters.events_in() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs `cfg` until its inputs end; returns the totals once every output is durable.
pub fn run(cfg: &PipelineConfig, opts: RunOptions) -> Result<RunReport> {
    let started = Instant::now();
    let run_id = format!("{:x}", crate::event::time::now_ms());
    let limits = cfg.decode_limits();

    let (click_raw_tx, click_raw_rx) = bounded::<RawBatch>(CHANNEL_BATCHES);
    let (conv_raw_tx, conv_raw_rx) = bounded::<RawBatch>(CHANNEL_BATCHES);
    let (click_tx, click_rx) = bounded::<Decoded>(CHANNEL_BATCHES);
    let (conv_tx, conv_rx) = bounded::<Decoded>(CHANNEL_BATCHES);
    let (click_sink_tx, click_sink_rx) = bounded::<SinkBatch>(CHANNEL_BATCHES * 2);
    let (rest_sink_tx, rest_sink_rx) = bounded::<SinkBatch>(CHANNEL_BATCHES * 2);

    let mut sources = Vec::new();
    // Fluvio readers come back here when their threads end; offsets are committed only after
    // every sink closed successfully, i.e. once the outputs are durable.
    let fluvio_readers: Arc<Mutex<Vec<PartitionReader<FluvioLog>>>> = Arc::default();
    match cfg.source.kind {
        SourceKind::Fluvio => {
            let f = &cfg.source.fluvio;
            for (topic, tx) in [
                (f.clicks_topic.clone(), click_raw_tx),
                (f.conversions_topic.clone(), conv_raw_tx),
            ] {
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
                            FluvioLog::open(f, &topic, p)?,
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
                generator_source(&gen_cfg, click_raw_tx, conv_raw_tx)
            })?);
        }
        SourceKind::Files => {
            for (path, tx) in [
                (cfg.source.clicks.clone(), click_raw_tx),
                (cfg.source.conversions.clone(), conv_raw_tx),
            ] {
                // Without a path the sender is dropped here and that stream is simply empty.
                if let Some(path) = path {
                    let input = Input::parse(&path);
                    // Open before spawning so a missing file fails the run at once.
                    let reader = input.open()?;
                    sources.push(spawn("source-file", move || {
                        read_batches(reader, |b| tx.send(b).is_ok())
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
                if click_tx.send(Decoded::Clicks(b, dead)).is_err() {
                    break;
                }
            }
            Ok(())
        })?,
        spawn("decode-conversions", move || {
            for raw in conv_raw_rx {
                let (b, dead) = conv_decoder.decode_conversions(&raw);
                if conv_tx.send(Decoded::Conversions(b, dead)).is_err() {
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
            let (tx, rx) = bounded::<ClickHouseRows>(CHANNEL_BATCHES * 2);
            let tick = (ch_cfg.flush_interval / 2).max(Duration::from_millis(50));
            let handle = thread::Builder::new()
                .name("sink-clickhouse".into())
                .spawn(move || -> Result<ClickHouseTotals> {
                    loop {
                        match rx.recv_timeout(tick) {
                            Ok((conversions, stats)) => sink.write(conversions, stats)?,
                            Err(crossbeam_channel::RecvTimeoutError::Timeout) => sink.tick()?,
                            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                        }
                        sink.tick()?;
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
        let (parquet_cfg, run_id) = (cfg.sink.parquet.clone(), run_id.clone());
        thread::Builder::new()
            .name(name.into())
            .spawn(move || sink_loop(&parquet_cfg, &run_id, rx, forward))
            .with_context(|| format!("spawning thread {name}"))
    })
    .collect::<Result<Vec<_>>>()?;

    let mut engine = Engine::new(cfg.engine());
    let sink_tx = SinkSenders {
        clicks: click_sink_tx,
        rest: rest_sink_tx,
    };
    let state_result = merge_loop(&mut engine, click_rx, conv_rx, &sink_tx, opts, started);
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
    for h in sources.into_iter().chain(decoders) {
        h.join()
            .map_err(|_| anyhow!("a source thread panicked"))??;
    }
    Ok(RunReport {
        counters: engine.counters().clone(),
        sizes: engine.sizes(),
        sinks: totals,
        clickhouse,
        elapsed: started.elapsed(),
    })
}

/// Conversion and aggregate rows on their way to ClickHouse.
type ClickHouseRows = (Vec<ConversionRow>, Vec<StatsRow>);

/// One sink thread: writes what it receives, rolls files by age when idle, closes at the end;
/// with `forward`, hands conversion and aggregate rows on to the ClickHouse thread.
fn sink_loop(
    cfg: &crate::sink::parquet::ParquetConfig,
    run_id: &str,
    rx: Receiver<SinkBatch>,
    forward: Option<Sender<ClickHouseRows>>,
) -> Result<SinkTotals> {
    let mut sinks = Sinks::new(cfg, run_id)?;
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(batch) => {
                sinks.write(&batch)?;
                if let Some(tx) = &forward
                    && !(batch.conversions.is_empty() && batch.stats.is_empty())
                {
                    tx.send((batch.conversions, batch.stats))
                        .map_err(|_| anyhow!("the ClickHouse sink stopped; see its error"))?;
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => sinks.tick()?,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
    }
    sinks.close()
}

/// The state stage's side of the two sink threads.
struct SinkSenders {
    clicks: Sender<SinkBatch>,
    rest: Sender<SinkBatch>,
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
                .send(SinkBatch {
                    clicks,
                    ..SinkBatch::default()
                })
                .map_err(|_| stopped())?;
        }
        let rest = SinkBatch {
            conversions,
            stats,
            dead_letters,
            ..SinkBatch::default()
        };
        if !rest.is_empty() {
            self.rest.send(rest).map_err(|_| stopped())?;
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

/// Runs the generator, cutting its output into raw batches per stream.
fn generator_source(
    cfg: &crate::source::generator::GeneratorConfig,
    clicks: Sender<RawBatch>,
    conversions: Sender<RawBatch>,
) -> Result<()> {
    use crate::event::Position;
    use crate::source::BATCH_LINES;
    let mut bufs = [RawBatch::default(), RawBatch::default()];
    let mut lines = [0u64, 0u64];
    let mut offsets = [0u64, 0u64];
    let txs = [&clicks, &conversions];
    let mut open = true;
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
        if bufs[i].len() >= BATCH_LINES {
            let full = std::mem::take(&mut bufs[i]);
            open = txs[i].send(full).is_ok();
        }
        open
    })?;
    for (i, b) in bufs.into_iter().enumerate() {
        if !b.is_empty() {
            let _ = txs[i].send(b);
        }
    }
    Ok(())
}

/// The state stage: merges the two decoded streams (lower watermark first) into the engine.
fn merge_loop(
    engine: &mut Engine,
    clicks: Receiver<Decoded>,
    conversions: Receiver<Decoded>,
    sink: &SinkSenders,
    opts: RunOptions,
    started: Instant,
) -> Result<()> {
    let never = crossbeam_channel::never::<Decoded>();
    let mut clicks_open = true;
    let mut convs_open = true;
    let mut last_progress = Instant::now();
    let progress = opts.progress;
    let tty = std::io::stderr().is_terminal();
    while clicks_open || convs_open {
        let prefer_clicks = match (
            engine.watermark(Stream::Clicks),
            engine.watermark(Stream::Conversions),
        ) {
            (Some(c), Some(v)) => c <= v,
            (None, _) => true,
            (Some(_), None) => false,
        };
        let first = if prefer_clicks { &clicks } else { &conversions };
        let first_open = if prefer_clicks {
            clicks_open
        } else {
            convs_open
        };
        let msg = match first_open.then(|| first.try_recv()) {
            Some(Ok(m)) => Some(m),
            _ => {
                let c = if clicks_open { &clicks } else { &never };
                let v = if convs_open { &conversions } else { &never };
                select! {
                    recv(c) -> m => match m {
                        Ok(m) => Some(m),
                        Err(_) => {
                            clicks_open = false;
                            engine.close_stream(Stream::Clicks);
                            None
                        }
                    },
                    recv(v) -> m => match m {
                        Ok(m) => Some(m),
                        Err(_) => {
                            convs_open = false;
                            engine.close_stream(Stream::Conversions);
                            None
                        }
                    },
                    default(Duration::from_millis(200)) => None,
                }
            }
        };
        if let Some(msg) = msg {
            let mut out = SinkBatch::default();
            match msg {
                Decoded::Clicks(b, dead) => {
                    engine.on_dead_letters(dead, &mut out);
                    engine.on_clicks(b, &mut out);
                }
                Decoded::Conversions(b, dead) => {
                    engine.on_dead_letters(dead, &mut out);
                    engine.on_conversions(b, &mut out);
                }
            }
            sink.send(out)?;
        }
        if progress && last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            print_progress(engine, started, tty);
        }
    }
    let mut out = SinkBatch::default();
    engine.finish(&mut out);
    sink.send(out)?;
    if progress && tty {
        eprintln!();
    }
    Ok(())
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
