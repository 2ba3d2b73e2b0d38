//! The state stage: the one thread that owns the engine.
//!
//! It merges the two decoded streams — and, for Fluvio, their partitions (see `inputs`) —
//! deterministically into the engine: the run that starts earlier in event time first, after
//! waiting for the head of every open stream, so the processing order is a function of the
//! inputs alone and a replay from a checkpoint repeats the crashed run exactly. Its rows go to
//! the sinks (`sinks`). Every `checkpoint.every` it runs the checkpoint protocol: rows so far
//! to the sinks → barrier (every sink durable) → snapshot of the engine, the source positions
//! and the inputs' fingerprints (`checkpoint`) → Fluvio offsets committed. At the end of
//! finite inputs it checkpoints the state before the end, resolves everything pending and
//! flushes the aggregates, and checkpoints again (`finished`).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use crossbeam_channel::Receiver;
use prometheus_client::metrics::gauge::Gauge;

use super::RunOptions;
use super::inputs::{Decoded, DecodedKind, Readiness, StreamInput};
use super::sinks::SinkSenders;
use crate::checkpoint;
use crate::event::{Position, Stream};
use crate::rows::{ClickRows, SinkBatch};
use crate::state::Engine;
use crate::telemetry::{Metrics, Queue};

/// The state stage: merges the two decoded streams (and their partitions) deterministically
/// into the engine and takes checkpoints.
pub(super) struct StateStage<'a> {
    /// Subject erasures: waiting postbacks of an erased customer lose their personal fields
    /// before the next snapshot (`erased_seen`: the filter's version already applied).
    pub(super) erased: std::sync::Arc<crate::lifecycle::privacy::Shared>,
    pub(super) erased_seen: u64,
    pub(super) engine: &'a mut Engine,
    pub(super) sinks: &'a SinkSenders,
    /// Epoch of the outputs being written now.
    pub(super) epoch: u64,
    /// The last checkpoint written (or restored; 0: none): the next one is a delta on it.
    pub(super) parent: u64,
    /// Lines consumed per stream (the restore point of the next checkpoint).
    pub(super) positions: [Position; 2],
    /// Fluvio: next offset per (stream, partition) consumed.
    pub(super) partition_offsets: HashMap<(usize, u32), u64>,
    pub(super) every: Duration,
    pub(super) every_events: u64,
    pub(super) events_since: u64,
    pub(super) last_checkpoint: Instant,
    pub(super) checkpoints: u64,
    /// Writes the snapshots (and then commits Fluvio offsets) off this thread.
    pub(super) writer: super::checkpoint_writer::CheckpointWriter,
    pub(super) interrupted: bool,
    /// A stop closes the source instead of ending the run at once: the HTTP door stops taking
    /// requests, answers those in flight, and what it accepted is processed before the final
    /// checkpoint (its streams then close and the run ends as a finished one).
    pub(super) drain_on_stop: bool,
    /// Partitioned sources feeding each stream (2: Fluvio with the HTTP door beside it).
    pub(super) sources: usize,
    /// The partition id of the HTTP door's log, when there is one (its next offsets are
    /// handed to the log writers; Fluvio commits leave it out).
    pub(super) http_partition: Option<u32>,
    /// The streams come in partitions (Fluvio): merged record by record, see `inputs`.
    pub(super) partitioned: bool,
    /// Fluvio: offsets are committed (by the writer) after each checkpoint.
    pub(super) fluvio: bool,
    /// Fluvio topic of each stream (for commits).
    pub(super) topics: [String; 2],
    /// Paired input (the generator): take batches strictly alternately, starting with clicks.
    pub(super) alternate: bool,
    /// Whose batch comes next in alternate mode.
    pub(super) turn: usize,
    pub(super) metrics: &'a Metrics,
    /// Arrival → processed, per stream.
    pub(super) processed_latency: [prometheus_client::metrics::histogram::Histogram; 2],
    /// Stream and arrival time of the batches since the last checkpoint: durable once it is
    /// on disk.
    pub(super) awaiting_durable: Vec<(usize, Instant)>,
    /// Rows of runs whose batch is not finished yet.
    pub(super) out: SinkBatch,
    /// The file inputs, fingerprinted into every checkpoint, and the semantic settings.
    pub(super) tracked: Vec<checkpoint::identity::TrackedInput>,
    pub(super) settings: Vec<(String, String)>,
    /// Resumed from a finished run's end with nothing new: no checkpoint is written, so the
    /// pair "before the end" / "end" stays on disk for a later rerun over a longer input.
    pub(super) resumed_finished: bool,
    /// When the last record was processed, and when both streams had ended.
    pub(super) last_record: Option<Instant>,
    pub(super) inputs_ended: Option<Instant>,
}

impl StateStage<'_> {
    /// The merge loop, until both streams have ended (or a stop, or a failed source): processes
    /// the run [`pick`] chooses — the processing order is then a function of the inputs alone,
    /// so a replay from a checkpoint does exactly what the crashed run did — or waits for the
    /// input it needs, and checkpoints every `checkpoint.every` / `every_events`. At the end:
    /// the state before the end, then the end (`finished`), each checkpointed.
    pub(super) fn run(
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
            StreamInput::new(Stream::Clicks, self.partitioned).with_sources(self.sources),
            StreamInput::new(Stream::Conversions, self.partitioned).with_sources(self.sources),
        ];
        let mut closed_reported = [false, false];
        let mut draining = false;
        let events_at_start = self.engine.counters().events_in();
        let mut last_progress = Instant::now();
        let tty = std::io::stderr().is_terminal();
        loop {
            if self.metrics.health.source_failed.load(Ordering::Relaxed) {
                // No checkpoint: the restart replays from the last good one.
                anyhow::bail!("a source failed");
            }
            if opts.stop.load(Ordering::Relaxed) && self.drain_on_stop {
                if !draining {
                    draining = true;
                    tracing::info!(
                        "stop requested: the door closes; what it accepted is processed, then \
                         the final checkpoint"
                    );
                }
            } else if opts.stop.load(Ordering::Relaxed) {
                self.interrupted = true;
                tracing::info!("stop requested: checkpointing and exiting");
                if !self.resumed_finished {
                    self.checkpoint(&mut inputs, Moment::Last)?;
                }
                return self.writer.finish();
            }
            let readiness = [inputs[0].readiness(), inputs[1].readiness()];
            if draining && readiness.iter().all(|r| *r == Readiness::Closed) {
                // The door is closed and what it accepted is processed. A stop is not the end
                // of the input: nothing is finished (pending conversions stay pending, open
                // minutes open) — the checkpoint is an ordinary one and the next start goes on.
                self.interrupted = true;
                self.checkpoint(&mut inputs, Moment::Last)?;
                return self.writer.finish();
            }
            for i in 0..2 {
                // Closed by a stop, a stream has not ended: its watermark stays where it is.
                if readiness[i] == Readiness::Closed && !closed_reported[i] && !draining {
                    closed_reported[i] = true;
                    self.engine.close_stream(inputs[i].stream);
                }
            }
            if readiness.iter().all(|r| *r == Readiness::Closed) {
                self.inputs_ended = Some(Instant::now());
                break;
            }
            if let Some(pick) = pick(readiness, self.alternate, self.turn) {
                self.process_run(&mut inputs[pick])?;
                self.turn = 1 - pick;
                // With paired input, checkpoints fall between pairs only.
                let between_pairs =
                    !self.alternate || self.turn == 0 || readiness[1] == Readiness::Closed;
                if between_pairs
                    && (self.events_since >= self.every_events
                        || self.last_checkpoint.elapsed() >= self.every)
                {
                    self.checkpoint(&mut inputs, Moment::Ongoing)?;
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
                // So does a subject erasure waiting for checkpoints.
                if (self.events_since > 0 || self.erased.checkpoints_wanted())
                    && self.last_checkpoint.elapsed() >= self.every
                {
                    self.checkpoint(&mut inputs, Moment::Ongoing)?;
                }
            }
            if opts.progress && last_progress.elapsed() >= Duration::from_secs(1) {
                last_progress = Instant::now();
                print_progress(self.engine, events_at_start, started, tty);
            }
        }
        if !self.resumed_finished {
            // The state before the end, then the end: a rerun that finds the input longer
            // goes back to the first and decides the end again (see `choose_restore_point`).
            // Nothing since the last checkpoint (written or restored): that one is the state
            // before the end, and the end keeps the epoch a crashed end had (same batch ids).
            let at_last_checkpoint = self.events_since == 0 && self.out.is_empty();
            if !at_last_checkpoint {
                self.checkpoint(&mut inputs, Moment::Last)?;
            }
            let mut out = std::mem::take(&mut self.out);
            self.engine.finish(&mut out);
            self.sinks.send(out)?;
            self.checkpoint(&mut inputs, Moment::End)?;
        }
        self.writer.finish()?;
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
                scrubbed: Vec::new(),
            });
        }
        if let Some(t) = batch.arrived {
            self.processed_latency[s].observe(t.elapsed().as_secs_f64());
            self.awaiting_durable.push((s, t));
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

    /// Barrier to the sinks → what the state changed since the last checkpoint and the
    /// positions, handed to the writer → the next epoch begins; the writer waits for the
    /// outputs to be durable, writes the snapshot, then (Fluvio) commits the offsets it covers.
    fn checkpoint(&mut self, inputs: &mut [StreamInput; 2], moment: Moment) -> Result<()> {
        let finished = moment == Moment::End;
        let t = Instant::now();
        // One snapshot in flight at most (and its memory): the previous one is on disk first.
        self.writer.wait()?;
        let erased_version = self.erased.version();
        if erased_version != self.erased_seen {
            self.erased_seen = erased_version;
            let keys = self.engine.scrub_waiting(&self.erased.current());
            if !keys.is_empty() {
                tracing::info!(
                    waiting = keys.len(),
                    "erased customers' waiting postbacks forgotten"
                );
                self.erased.add_waiting(keys);
            }
        }
        // Rows of runs of batches still in progress were processed: they go out before the
        // barrier.
        let mut out = std::mem::take(&mut self.out);
        for input in inputs.iter_mut() {
            out.clicks.extend(input.take_partial_clicks());
        }
        // The by-click-hour aggregate is never in a snapshot: all of it goes before the barrier.
        self.engine.flush_click_hour(&mut out);
        if !out.is_empty() {
            self.sinks.send(out)?;
        }
        // The barrier goes down the sink queues and the state stage goes on: the snapshot
        // taken now is the state at the barrier, and the writer puts it on disk only once
        // every sink has made the outputs before the barrier durable.
        let acks = self.sinks.send_barrier(self.epoch + 1)?;
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
            // Unused since ClickHouse batches are taken back by instance and epoch.
            final_batches: Vec::new(),
            engine: self.engine.delta_snapshot(self.parent),
        };
        let offsets = self.fluvio.then(|| {
            self.partition_offsets
                .iter()
                // The door's log is never a topic's partition, whether it is open this run
                // or its offsets only came back from a checkpoint.
                .filter(|&(&(_, p), _)| {
                    Some(p) != self.http_partition
                        && p != crate::source::http::BESIDE_FLUVIO_PARTITION
                })
                .map(|(&(s, p), &o)| (self.topics[s].clone(), p, o))
                .collect()
        });
        self.writer.submit(super::checkpoint_writer::Job {
            erased_version,
            acks,
            snap,
            arrived: std::mem::take(&mut self.awaiting_durable),
            offsets,
            wal_next: [0, 1].map(|s| {
                self.http_partition
                    .and_then(|p| self.partition_offsets.get(&(s, p)).copied())
            }),
            began: t,
            ending: moment != Moment::Ongoing,
        })?;
        self.metrics.checkpoint_paused(t.elapsed());
        self.checkpoints += 1;
        self.parent = self.epoch;
        self.epoch += 1;
        self.events_since = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }
}

/// Where in the run a checkpoint falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moment {
    /// The run goes on after it.
    Ongoing,
    /// The last before the run ends: a stop's, or the state before the end of the input.
    Last,
    /// The end of the input (everything pending resolved, every aggregate flushed).
    End,
}

/// The merge rule: which stream's run goes next (0 clicks, 1 conversions), or `None` to wait
/// for input first.
///
/// By event time: the stream whose run starts earlier (clicks on a tie); a stream that is
/// `Quiet` or `Closed` does not hold the other back, one that is `Waiting` does (its next batch
/// may start earlier). `alternate` (paired input, the generator): strictly the stream whose
/// `turn` it is — clicks, conversions, clicks, … as produced — unless that one is closed.
fn pick(readiness: [Readiness; 2], alternate: bool, turn: usize) -> Option<usize> {
    use Readiness::{Closed, Quiet, Ready};
    if alternate {
        let other = 1 - turn;
        return match (readiness[turn], readiness[other]) {
            (Ready(_), _) => Some(turn),
            (Closed, Ready(_)) => Some(other),
            _ => None,
        };
    }
    match readiness {
        [Ready(c), Ready(v)] => Some(usize::from(v < c)),
        [Ready(_), Quiet | Closed] => Some(0),
        [Quiet | Closed, Ready(_)] => Some(1),
        _ => None,
    }
}

/// `events_at_start`: the counters' events when the run began (they go on from a checkpoint);
/// the rate is this run's.
fn print_progress(engine: &Engine, events_at_start: u64, started: Instant, tty: bool) {
    let c = engine.counters();
    let s = engine.sizes();
    let secs = started.elapsed().as_secs_f64();
    let line = format!(
        "{:>6.1}s  events {:>11}  {:>9.0}/s  clicks {:>10}  conversions {:>8}  dead {:>6}  indexed {:>10}  pending {:>6}",
        secs,
        c.events_in(),
        c.events_in().saturating_sub(events_at_start) as f64 / secs.max(1e-9),
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

#[cfg(test)]
mod tests;
