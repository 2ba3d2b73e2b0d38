//! Starting the sources: each kind from its config, resuming where the checkpoint stopped.
//!
//! A source is one or more threads (or, for Fluvio, tasks on its own runtime) that read
//! records and ship them as `RawBatch`es into the two raw queues (clicks, conversions).
//! Resuming: files and the generator are read again from the start and the batches a
//! restored run already processed are not sent on (`forward_after`); Fluvio readers start at
//! the checkpointed offsets; stdin cannot be re-read and is taken as it comes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use anyhow::{Context, Result};

use super::channel::{Metered, spawn};
use crate::config::{PipelineConfig, SourceKind};
use crate::event::{Position, Stream};
use crate::source::RawBatch;
use crate::source::file::{Input, read_batches_with_limit};
use crate::source::fluvio::FluvioSource;
use crate::source::generator::generate_paced;
use crate::telemetry::SharedMetrics;

/// The running sources.
pub(super) struct Sources {
    /// File and generator threads.
    pub(super) threads: Vec<JoinHandle<Result<()>>>,
    pub(super) fluvio: Option<FluvioSource>,
    /// The HTTP door's log positions a checkpoint covers (its writers delete what is below).
    pub(super) http_covered: Option<Arc<crate::source::http::Covered>>,
}

/// Starts the source `cfg.source.kind` names, delivering into `raw` (0 clicks,
/// 1 conversions). `restored` is where each stream stood at the checkpoint a run resumes
/// from (lines and bytes a restored run already processed), `partition_offsets` the Fluvio
/// offsets it continues from.
pub(super) fn start(
    cfg: &PipelineConfig,
    restored: [Position; 2],
    partition_offsets: &HashMap<(usize, u32), u64>,
    raw: [Metered<RawBatch>; 2],
    metrics: &SharedMetrics,
    stop: &Arc<AtomicBool>,
) -> Result<Sources> {
    let resume = restored.map(|p| p.line);
    let mut sources = Sources {
        threads: Vec::new(),
        fluvio: None,
        http_covered: None,
    };
    match cfg.source.kind {
        SourceKind::Fluvio => {
            let deliver = raw.map(delivery);
            match crate::source::http::log_partition(cfg) {
                Some(partition) => start_http(
                    cfg,
                    partition,
                    partition_offsets,
                    &deliver,
                    metrics,
                    stop,
                    &mut sources,
                )?,
                None => refuse_unprocessed_log(cfg, partition_offsets)?,
            }
            sources.fluvio = Some(crate::source::fluvio::start(
                &cfg.source.fluvio,
                partition_offsets,
                deliver,
                metrics.clone(),
                stop.clone(),
            )?);
        }
        SourceKind::Http => {
            let deliver = raw.map(delivery);
            start_http(
                cfg,
                0,
                partition_offsets,
                &deliver,
                metrics,
                stop,
                &mut sources,
            )?;
        }
        SourceKind::Generator => {
            let gen_cfg = cfg.source.generator.clone();
            let [clicks, conversions] = raw;
            sources
                .threads
                .push(spawn_source("source-generator", metrics, move || {
                    generator_source(&gen_cfg, clicks, conversions, resume)
                })?);
        }
        SourceKind::Files => {
            let paths = [cfg.source.clicks.clone(), cfg.source.conversions.clone()];
            for (i, (path, tx)) in paths.into_iter().zip(raw).enumerate() {
                // Without a path the sender is dropped here and that stream is simply empty.
                if let Some(path) = path {
                    sources.threads.push(start_file(
                        cfg,
                        &path,
                        Stream::ALL[i],
                        restored[i],
                        tx,
                        metrics,
                    )?);
                }
            }
        }
    }
    if sources.fluvio.is_none() {
        // A Fluvio source says so itself, once every partition stream is open.
        metrics
            .health
            .sources_connected
            .store(true, Ordering::Relaxed);
    }
    Ok(sources)
}

/// The HTTP door, its log partition `partition` of each stream resumed at the offsets the
/// checkpoint covers.
fn start_http(
    cfg: &PipelineConfig,
    partition: u32,
    partition_offsets: &HashMap<(usize, u32), u64>,
    deliver: &[crate::source::fluvio::Deliver; 2],
    metrics: &SharedMetrics,
    stop: &Arc<AtomicBool>,
    sources: &mut Sources,
) -> Result<()> {
    let resume = [0, 1].map(|s| partition_offsets.get(&(s, partition)).copied().unwrap_or(0));
    let decoder = crate::event::decode::Decoder::new(Arc::from("http"), cfg.decode_limits());
    let http = crate::source::http::start(
        &cfg.source.http,
        &cfg.state_dir(),
        decoder,
        crate::source::http::LogStart { partition, resume },
        deliver.clone(),
        metrics,
        stop.clone(),
    )?;
    sources.threads.extend(http.threads);
    sources.http_covered = Some(http.covered);
    Ok(())
}

/// A Fluvio run without the door whose state holds the door's log with acknowledged
/// records not yet processed (the door was on before): refused, rather than dropping them.
fn refuse_unprocessed_log(
    cfg: &PipelineConfig,
    partition_offsets: &HashMap<(usize, u32), u64>,
) -> Result<()> {
    use crate::source::http::{BESIDE_FLUVIO_PARTITION, wal::Wal, wal_dir};
    for (s, stream) in Stream::ALL.into_iter().enumerate() {
        let dir = wal_dir(&cfg.state_dir(), stream);
        if !dir.exists() {
            continue;
        }
        let wal = Wal::open(&dir, cfg.source.http.wal_segment_bytes)?;
        let done = partition_offsets
            .get(&(s, BESIDE_FLUVIO_PARTITION))
            .copied()
            .unwrap_or(0);
        if wal.next_offset() > done {
            anyhow::bail!(
                "the HTTP door's log in {} holds {} acknowledged {} records not processed yet: \
                 run with source.with_http = true until they are (then stop it and turn it off)",
                dir.display(),
                wal.next_offset() - done,
                stream.as_str()
            );
        }
    }
    Ok(())
}

/// A raw queue as the callback a task-based source (Fluvio, HTTP) delivers into.
fn delivery(tx: Metered<RawBatch>) -> crate::source::fluvio::Deliver {
    Arc::new(move |b: RawBatch| {
        let n = b.len();
        tx.send(b, n)
    })
}

/// One NDJSON file (or stdin) read on its own thread.
fn start_file(
    cfg: &PipelineConfig,
    path: &str,
    stream: Stream,
    restored: Position,
    tx: Metered<RawBatch>,
    metrics: &SharedMetrics,
) -> Result<JoinHandle<Result<()>>> {
    let input = Input::parse(path);
    // Open before spawning so a missing file fails the run at once.
    let reader = input.open()?;
    // stdin cannot be re-read: a restored run takes it as it comes, numbering its lines on
    // from where the checkpoint stood (dead letters keep positions unique across restarts,
    // and the next checkpoint does not go back).
    let (upto, shift) = if input == Input::Stdin {
        (0, restored)
    } else {
        (restored.line, Position::default())
    };
    // Bytes left to read, for plain files (compressed sizes do not compare).
    let size = match &input {
        Input::Path(p) if !matches!(p.extension().and_then(|e| e.to_str()), Some("gz" | "zst")) => {
            std::fs::metadata(p).ok().map(|m| m.len())
        }
        _ => None,
    };
    let m = metrics.clone();
    let stream_name = stream.as_str();
    let max_line = cfg.decode_limits().max_record_bytes;
    spawn_source("source-file", metrics, move || {
        read_batches_with_limit(reader, max_line, |b| {
            if let Some(size) = size {
                m.source_lag_bytes(stream_name, size.saturating_sub(b.end.offset) as i64);
            }
            forward_after(&tx, shifted(b, shift), upto)
        })
        .map(|_| ())
        .with_context(|| format!("reading {}", input.name()))
    })
}

/// `b` with its positions moved on by `by` (stdin after a restart).
fn shifted(mut b: RawBatch, by: Position) -> RawBatch {
    if by == Position::default() {
        return b;
    }
    for r in &mut b.records {
        r.position.line += by.line;
        r.position.offset += by.offset;
    }
    b.end.line += by.line;
    b.end.offset += by.offset;
    b
}

/// Sends `b` on unless a restored run already processed it (see [`after_restore_point`]).
/// False once the receiver is gone.
fn forward_after(tx: &Metered<RawBatch>, b: RawBatch, upto: u64) -> bool {
    match after_restore_point(b, upto) {
        Some(b) => {
            let n = b.len();
            tx.send(b, n)
        }
        None => true,
    }
}

/// What of `b` a restored run has not processed yet, given it processed lines up to `upto`
/// (0: nothing): `None` for a batch that ends at or before it, the lines after it of a batch
/// that straddles it (batch cuts of another version), and the whole batch otherwise.
fn after_restore_point(mut b: RawBatch, upto: u64) -> Option<RawBatch> {
    if upto == 0 {
        return Some(b);
    }
    if b.end.line <= upto {
        return None;
    }
    if b.records.first().is_some_and(|r| r.position.line <= upto) {
        b.records.retain(|r| r.position.line > upto);
    }
    Some(b)
}

/// The name dead letters and logs give a stream's source.
pub(super) fn source_name(cfg: &PipelineConfig, stream: Stream) -> Arc<str> {
    match cfg.source.kind {
        SourceKind::Generator => Arc::from("generator"),
        SourceKind::Fluvio => Arc::from(format!("fluvio:{}", cfg.source.fluvio.endpoint)),
        SourceKind::Http => Arc::from("http"),
        SourceKind::Files => {
            let path = match stream {
                Stream::Clicks => &cfg.source.clicks,
                Stream::Conversions => &cfg.source.conversions,
            };
            Arc::from(
                path.as_deref()
                    .map(|p| Input::parse(p).name())
                    .unwrap_or_default(),
            )
        }
    }
}

/// A source thread: an error marks the pipeline not ready and stops the state stage (which
/// must not go on attributing against a stream that has died); the error itself is reported
/// when the thread is joined.
pub(super) fn spawn_source(
    name: &str,
    metrics: &SharedMetrics,
    f: impl FnOnce() -> Result<()> + Send + 'static,
) -> Result<JoinHandle<Result<()>>> {
    let metrics = metrics.clone();
    spawn(name, move || {
        let r = f();
        if r.is_err() {
            metrics.health.source_failed.store(true, Ordering::Relaxed);
        }
        r
    })
}

/// Runs the generator, cutting its output into pairs of raw batches: a click batch, then the
/// conversions generated meanwhile (possibly none). The state stage takes them in exactly that
/// alternation, so neither side can starve the other and the order is the same on every run.
/// Records a restored run already processed (`resume`: lines per stream) are generated but
/// not sent; a pair that straddles that point keeps only what comes after it. Live
/// (`rate`): a pair also goes out whenever the generator waits for the clock, so records
/// reach the state stage when they are due, not a batch later.
fn generator_source(
    cfg: &crate::source::generator::GeneratorConfig,
    clicks: Metered<RawBatch>,
    conversions: Metered<RawBatch>,
    resume: [u64; 2],
) -> Result<()> {
    use crate::source::BATCH_LINES;
    use std::cell::RefCell;
    // Shared by the two callbacks (a line, a wait for the clock); one thread, no contention.
    struct Pairing {
        bufs: [RawBatch; 2],
        lines: [u64; 2],
        offsets: [u64; 2],
        open: bool,
    }
    let state = RefCell::new(Pairing {
        bufs: [RawBatch::default(), RawBatch::default()],
        lines: [0, 0],
        offsets: [0, 0],
        open: true,
    });
    let send_pair = |p: &mut Pairing| {
        let [mut c, mut v] = std::mem::take(&mut p.bufs);
        c.end = Position {
            line: p.lines[0],
            offset: p.offsets[0],
        };
        v.end = Position {
            line: p.lines[1],
            offset: p.offsets[1],
        };
        // What a restored run already processed is trimmed; a side left with nothing still
        // goes out (empty, with its end) so the pair stays a pair.
        let trim = |b: RawBatch, upto: u64| {
            let end = b.end;
            after_restore_point(b, upto).unwrap_or_else(|| RawBatch {
                end,
                ..RawBatch::default()
            })
        };
        let (c, v) = (trim(c, resume[0]), trim(v, resume[1]));
        if c.is_empty() && v.is_empty() && c.end.line <= resume[0] {
            return true;
        }
        let (nc, nv) = (c.len(), v.len());
        p.open = clicks.send(c, nc) && conversions.send(v, nv);
        p.open
    };
    generate_paced(
        cfg,
        resume[0],
        |stream, line, due| {
            let mut p = state.borrow_mut();
            let i = usize::from(stream == Stream::Conversions);
            p.lines[i] += 1;
            let position = Position {
                line: p.lines[i],
                offset: p.offsets[i],
            };
            p.bufs[i].push_line(line, position);
            // Live: a batch arrived when its first record was due, not when a full queue let
            // the generator go on (latency then shows what a checkpoint pause costs).
            if let Some(due) = due
                && p.bufs[i].len() == 1
            {
                p.bufs[i].arrived = Some(due.min(std::time::Instant::now()));
            }
            p.offsets[i] += line.len() as u64 + 1;
            if i == 0 && p.bufs[0].len() >= BATCH_LINES {
                send_pair(&mut p);
            }
            p.open
        },
        || {
            let mut p = state.borrow_mut();
            if !(p.bufs[0].is_empty() && p.bufs[1].is_empty()) {
                send_pair(&mut p);
            }
            p.open
        },
    )?;
    let mut p = state.into_inner();
    if p.open && !(p.bufs[0].is_empty() && p.bufs[1].is_empty()) {
        send_pair(&mut p);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
