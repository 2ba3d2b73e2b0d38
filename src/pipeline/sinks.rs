//! The sink side: fan-out of the state stage's rows to the sink threads, the checkpoint
//! barrier protocol, and the threads themselves.
//!
//! Clicks are most of the rows, so they get a thread of their own (`sink-clicks`);
//! conversions, aggregates and dead letters share the other (`sink-conv-stats`;
//! its queue is `sink_rest` in the metrics). Each table is written by exactly one thread. With
//! a ClickHouse sink, that thread hands its conversion and aggregate rows on (moved, not
//! copied) to a `sink-clickhouse` thread after writing them to Parquet, and forwards barriers
//! to it.
//!
//! Barrier: the state stage sends `Barrier(next_epoch, ack)` down both sink queues; each sink
//! makes everything so far durable (Parquet files closed and renamed, ClickHouse batches
//! committed), names its next outputs after `next_epoch` and acks. Only when every sink has
//! acked does the state stage write the snapshot.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use crossbeam_channel::{Receiver, Sender, bounded};

use super::channel::{CHANNEL_BATCHES, Metered};
use crate::config::PipelineConfig;
use crate::rows::{ConversionRow, NewNames, SinkBatch, StatsRow};
use crate::sink::clickhouse::{ClickHouseSink, ClickHouseTotals};
use crate::sink::{FileSinks, SinkTotals};
use crate::telemetry::{Metrics, Queue, SharedMetrics, SinkKind};

/// The running sink threads (joined at the end of the run).
pub(super) struct SinkThreads {
    parquet: Vec<JoinHandle<Result<SinkTotals>>>,
    clickhouse: Option<JoinHandle<Result<ClickHouseTotals>>>,
}

/// Connects and checks ClickHouse (before anything is read, so a bad URL, credentials or
/// schema stops the run at once), takes back what this instance wrote there after the
/// checkpoint the run resumes from (`resumed_from`; 0: none), then starts the sink threads
/// writing outputs of `epoch` onwards. Returns the state stage's senders and the threads.
pub(super) fn start(
    cfg: &PipelineConfig,
    resumed_from: u64,
    epoch: u64,
    instance: &str,
    metrics: &SharedMetrics,
    erased: Arc<crate::lifecycle::privacy::Shared>,
) -> Result<(SinkSenders, SinkThreads)> {
    let (click_sink_tx, click_sink_rx) = bounded::<SinkMsg>(CHANNEL_BATCHES * 2);
    let (others_tx, others_rx) = bounded::<SinkMsg>(CHANNEL_BATCHES * 2);
    let (ch_tx, clickhouse) = match &cfg.sink.clickhouse {
        Some(ch_cfg) => {
            let mut sink = ClickHouseSink::connect(ch_cfg, instance)?;
            sink.roll_back_after(resumed_from)?;
            sink.set_epoch(epoch);
            sink.set_metrics(metrics.clone());
            let (tx, rx) = bounded::<ClickHouseMsg>(CLICKHOUSE_QUEUE_BATCHES);
            let depth = metrics.queue(Queue::SinkClickHouse).clone();
            let m = metrics.clone();
            let handle = thread::Builder::new()
                .name("sink-clickhouse".into())
                .spawn(move || -> Result<ClickHouseTotals> {
                    for msg in rx {
                        match msg {
                            ClickHouseMsg::Rows(conversions, stats, click_hour, names) => {
                                depth.dec_by(
                                    (conversions.len() + stats.len() + click_hour.len()) as i64,
                                );
                                let written = sink
                                    .learn_names(&names)
                                    .and_then(|()| sink.write(conversions, stats, click_hour));
                                if let Err(e) = written {
                                    m.health.sink_failed.store(true, Ordering::Relaxed);
                                    return Err(e);
                                }
                            }
                            ClickHouseMsg::Barrier(next, ack) => {
                                if let Err(e) = sink.barrier(next) {
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
                Some(Metered::new(tx, metrics, Queue::SinkClickHouse)),
                Some(handle),
            )
        }
        None => (None, None),
    };
    let parquet = [
        ("sink-clicks", click_sink_rx, Queue::SinkClicks, None),
        // Every table but clicks. Its queue keeps the metrics label `sink_rest`, which
        // dashboards and alerts use.
        ("sink-conv-stats", others_rx, Queue::SinkRest, ch_tx),
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
    let senders = SinkSenders {
        erased,
        clicks: Metered::new(click_sink_tx, metrics, Queue::SinkClicks),
        others: Metered::new(others_tx, metrics, Queue::SinkRest),
        with_clickhouse: clickhouse.is_some(),
    };
    Ok((
        senders,
        SinkThreads {
            parquet,
            clickhouse,
        },
    ))
}

impl SinkThreads {
    /// Waits for every sink thread (their senders dropped): the totals, or the first error. A
    /// sink's error explains a state-stage send failure, so the caller reports it first.
    pub(super) fn join(self) -> Result<(SinkTotals, Option<ClickHouseTotals>)> {
        let mut totals = SinkTotals::default();
        let mut first_error = None;
        for h in self.parquet {
            match h.join().map_err(|_| anyhow!("a sink thread panicked"))? {
                Ok(t) => totals = totals + t,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let clickhouse = match self.clickhouse {
            Some(h) => Some(
                h.join()
                    .map_err(|_| anyhow!("the ClickHouse sink thread panicked"))??,
            ),
            None => None,
        };
        match first_error {
            Some(e) => Err(e),
            None => Ok((totals, clickhouse)),
        }
    }
}

/// Messages to a sink thread.
pub(super) enum SinkMsg {
    Batch(SinkBatch),
    /// Make everything so far durable, then name outputs after the given epoch; ack when done.
    Barrier(u64, Sender<Result<()>>),
}

/// Batches of rows the ClickHouse thread's queue holds. Deeper than the other queues: while one
/// INSERT of `flush_rows` rows is with the server (most of a second for 200 000 rows), the
/// pipeline goes on filling the next one instead of standing still. A batch holds the rows of
/// up to 4 096 input records (and the aggregate rows of the minutes they closed): tens of MB
/// for the 64.
const CLICKHOUSE_QUEUE_BATCHES: usize = 64;

/// Messages to the ClickHouse thread.
enum ClickHouseMsg {
    Rows(Vec<ConversionRow>, Vec<StatsRow>, Vec<StatsRow>, NewNames),
    Barrier(u64, Sender<Result<()>>),
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
    let mut files = FileSinks::new(cfg, epoch)?;
    let stopped = || anyhow!("the ClickHouse sink stopped; see its error");
    let depth = metrics.queue(queue).clone();
    let mut throttle = Throttle::new(cfg.throttle_rows_per_second);
    // Counter handles taken once: no label lookup per batch.
    let writes = metrics.sink_write_handles(SinkKind::Parquet);
    let table_rows = [
        (SinkKind::Parquet, "clicks"),
        (SinkKind::Parquet, "conversions"),
        (SinkKind::Parquet, "stats_minute"),
        (SinkKind::Parquet, "stats_click_hour"),
        (SinkKind::DeadLetters, "dead_letters"),
    ]
    .map(|(sink, table)| metrics.sink_rows_handle(sink, table));
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(SinkMsg::Batch(batch)) => {
                let rows = batch.rows();
                depth.dec_by(rows as i64);
                let written = files.write(&batch);
                writes.record(written.is_ok());
                written?;
                let counts = [
                    batch.click_rows(),
                    batch.conversions.len(),
                    batch.stats.len(),
                    batch.click_hour.len(),
                    batch.dead_letters.len(),
                ];
                for (counter, n) in table_rows.iter().zip(counts) {
                    counter.inc_by(n as u64);
                }
                throttle.wait(rows as u64);
                if let Some(tx) = &forward
                    && !(batch.conversions.is_empty()
                        && batch.stats.is_empty()
                        && batch.click_hour.is_empty()
                        && batch.names.is_empty())
                {
                    let n = batch.conversions.len() + batch.stats.len() + batch.click_hour.len();
                    let rows = ClickHouseMsg::Rows(
                        batch.conversions,
                        batch.stats,
                        batch.click_hour,
                        batch.names,
                    );
                    if !tx.send(rows, n) {
                        return Err(stopped());
                    }
                }
            }
            Ok(SinkMsg::Barrier(next, ack)) => {
                let r = files.barrier(next);
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
                let r = files.tick();
                if r.is_err() {
                    writes.record(false);
                }
                r?
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
    }
    let closed = files.close();
    writes.record(closed.is_ok());
    closed
}

/// `sink.parquet.throttle_rows_per_second`: holds a sink thread to a row rate (to spare a
/// shared disk — and to test that a slow sink slows the sources instead of filling memory).
struct Throttle {
    /// Rows per second; 0 = no limit.
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

    /// Pays for `rows` just written: sleeps until the rate allows them.
    fn wait(&mut self, rows: u64) {
        let wait = self.pay(rows, Instant::now());
        if !wait.is_zero() {
            thread::sleep(wait);
        }
    }

    /// Pays for `rows` written at `now`; returns how long to wait before writing more.
    fn pay(&mut self, rows: u64, now: Instant) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        // Idle time banks at most one second of budget: no burst above the rate after a pause.
        if let Some(floor) = now.checked_sub(Duration::from_secs(1))
            && self.paid_until < floor
        {
            self.paid_until = floor;
        }
        self.paid_until += Duration::from_secs_f64(rows as f64 / self.rate as f64);
        self.paid_until.saturating_duration_since(now)
    }
}

/// The state stage's side of the sink threads.
pub(super) struct SinkSenders {
    /// Subject erasures: rows of an erased customer never reach a sink.
    erased: Arc<crate::lifecycle::privacy::Shared>,
    clicks: Metered<SinkMsg>,
    /// Conversions, aggregates and dead letters (`sink-conv-stats`).
    others: Metered<SinkMsg>,
    with_clickhouse: bool,
}

impl SinkSenders {
    /// Splits a batch between the two sink threads: clicks; conversions, aggregates and dead
    /// letters.
    pub(super) fn send(&self, mut batch: SinkBatch) -> Result<()> {
        self.erased.filter(&mut batch);
        let SinkBatch {
            clicks,
            conversions,
            stats,
            click_hour,
            dead_letters,
            names,
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
        let others = SinkBatch {
            conversions,
            stats,
            click_hour,
            dead_letters,
            names,
            ..SinkBatch::default()
        };
        let n = others.rows();
        if !others.is_empty() && !self.others.send(SinkMsg::Batch(others), n) {
            return Err(stopped());
        }
        Ok(())
    }

    /// Sends a barrier to every sink; the outputs sent before it are durable once the
    /// returned acks are in ([`BarrierAcks::wait`]). Rows sent after it belong to `next_epoch`.
    pub(super) fn send_barrier(&self, next_epoch: u64) -> Result<BarrierAcks> {
        let (ack_tx, ack_rx) = bounded::<Result<()>>(4);
        if !self
            .clicks
            .send(SinkMsg::Barrier(next_epoch, ack_tx.clone()), 0)
            || !self.others.send(SinkMsg::Barrier(next_epoch, ack_tx), 0)
        {
            return Err(sink_stopped());
        }
        Ok(BarrierAcks {
            acks: ack_rx,
            expected: 2 + usize::from(self.with_clickhouse),
        })
    }
}

fn sink_stopped() -> anyhow::Error {
    anyhow!("a sink stopped; see its error")
}

/// The acknowledgements of a barrier in flight.
pub(super) struct BarrierAcks {
    acks: Receiver<Result<()>>,
    expected: usize,
}

impl BarrierAcks {
    /// Waits until every sink has made the outputs before the barrier durable.
    pub(super) fn wait(self) -> Result<()> {
        for _ in 0..self.expected {
            self.acks.recv().map_err(|_| sink_stopped())??;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn throttle_rate_zero_is_off() {
        let start = Instant::now();
        let mut t = Throttle {
            rate: 0,
            paid_until: start,
        };
        for rows in [0, 1, 1_000_000, u64::MAX] {
            assert_eq!(t.pay(rows, start), Duration::ZERO);
        }
        // Nothing is owed either: the budget is untouched.
        assert_eq!(t.paid_until, start);
    }

    #[test]
    fn throttle_makes_each_batch_wait_until_the_rows_so_far_are_paid_for() {
        let start = Instant::now();
        let mut t = Throttle {
            rate: 1000,
            paid_until: start,
        };
        // 250 rows at 1000 rows/s cost 250 ms; the debt adds up while no time passes.
        assert_eq!(t.pay(250, start), ms(250));
        assert_eq!(t.pay(250, start), ms(500));
        assert_eq!(t.paid_until, start + ms(500));
        // Having waited, the next batch only waits for itself.
        assert_eq!(t.pay(500, start + ms(500)), ms(500));
        assert_eq!(t.paid_until, start + ms(1000));
        // Slower than the rate: nothing to wait.
        assert_eq!(t.pay(250, start + ms(1500)), Duration::ZERO);
        assert_eq!(t.paid_until, start + ms(1250));
        // An empty batch costs nothing.
        assert_eq!(t.pay(0, start + ms(1000)), ms(250));
    }

    #[test]
    fn throttle_banks_at_most_one_second_of_idle_time() {
        let start = Instant::now();
        let mut t = Throttle {
            rate: 1000,
            paid_until: start,
        };
        // Idle for 10 s: one second of rows goes through at once, not ten.
        let later = start + Duration::from_secs(10);
        assert_eq!(t.pay(1000, later), Duration::ZERO);
        assert_eq!(t.paid_until, later);
        assert_eq!(t.pay(500, later), ms(500));
        // Idle for half a second: half a second banked, the rest is waited for.
        let mut t = Throttle {
            rate: 1000,
            paid_until: start,
        };
        assert_eq!(t.pay(750, start + ms(500)), ms(250));
        assert_eq!(t.paid_until, start + ms(750));
    }
}
