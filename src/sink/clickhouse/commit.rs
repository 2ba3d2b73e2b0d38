//! Exactly-once commit of one batch: its id, the lookup that finds it already in, and the
//! retry loop with backoff, jitter and a circuit breaker.
//!
//! A batch is one INSERT into one table, named by a [`batch_id`]: the table, the instance
//! that wrote it (`checkpoint/instance.rs`), its checkpoint epoch, the process that wrote it,
//! its flush number and a hash of its rows. Within a process the id is stable, so when an
//! answer is lost `Committer::commit` looks the id up in the data (`is_committed`) before it
//! tries again and skips a batch that went in. Across a crash there is nothing to look up:
//! the restart takes back every batch its instance wrote after the checkpoint it resumes from
//! (`sink.rs`, `roll_back_after`) and the replay writes them again under new ids (the
//! process part differs, so a server's `insert_deduplication_token` window, 22.2+, never
//! mistakes a rewritten batch for one it has seen).
//!
//! A failure is retried until the batch is in: the delay starts at `retry_initial` and doubles
//! up to `retry_max`, each wait jittered ±50 %, and after `breaker_failures` failures in a row
//! the circuit breaker holds every attempt for `breaker_cooldown`. Meanwhile the sink thread
//! blocks and the bounded channels slow the pipeline down; nothing is dropped. Only an error
//! classified permanent (`error.rs`: credentials, missing or incompatible tables, …) ends the
//! wait, and the run.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clickhouse::Client;
use rand::Rng;

use super::config::ClickHouseConfig;
use super::error::{ClickHouseError, explain};
use super::migrations::ServerVersion;
use crate::telemetry::{SharedMetrics, SinkKind};

/// Who wrote a batch: the instance (its state directory) and, within it, the process.
#[derive(Debug, Clone)]
pub struct Writer {
    /// The state directory's [instance id](crate::checkpoint::instance).
    pub instance: String,
    /// Random per process: a replay after a crash never reuses an id of the crashed run.
    pub process: u32,
}

/// `conversions-<instance>-e00000007-<process>-000042-<content>`. All of an instance's
/// batches of a table from epoch `e` on sort between [`epochs_from`]'s two bounds.
pub fn batch_id(table: &str, writer: &Writer, epoch: u64, seq: u64, content: u64) -> String {
    format!(
        "{table}-{}-e{epoch:08}-{:08x}-{seq:06}-{content:016x}",
        writer.instance, writer.process
    )
}

/// The ids of `instance`'s batches of `table` in epochs `from` and later are exactly those
/// `>= .0` and `< .1`.
pub fn epochs_from(table: &str, instance: &str, from: u64) -> (String, String) {
    (
        format!("{table}-{instance}-e{from:08}"),
        // `f` sorts right after the `e` every epoch of the instance starts with.
        format!("{table}-{instance}-f"),
    )
}

/// One batch to commit.
pub(super) struct Batch<'a> {
    /// Its [`batch_id`].
    pub id: &'a str,
    pub table: &'static str,
    pub rows: usize,
    /// The rows' time range (in the unit of the table's time column), which prunes the lookup.
    pub range: (i64, i64),
}

/// How a batch went in.
pub(super) struct Committed {
    /// It was in already (a replay, or a retry after a lost answer) and was not inserted again.
    pub skipped: bool,
    /// Attempts that failed before it went in.
    pub failed_attempts: u64,
}

/// The circuit breaker. Closed, it counts failures in a row; the `failures_to_open`th opens it
/// for `cooldown`, during which no attempt is made. After the cooldown one attempt goes
/// through: a success closes it, a failure opens it again at once. Decides only — the commit
/// loop does the waiting.
#[derive(Debug)]
struct Breaker {
    failures_to_open: u32,
    cooldown: Duration,
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    fn new(failures_to_open: u32, cooldown: Duration) -> Breaker {
        Breaker {
            failures_to_open,
            cooldown,
            consecutive_failures: 0,
            open_until: None,
        }
    }

    /// How long the next attempt must wait at `now` (zero unless open).
    fn hold(&self, now: Instant) -> Duration {
        self.open_until
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(now))
    }

    /// An attempt failed at `now`: returns whether the breaker is open now.
    fn failed(&mut self, now: Instant) -> bool {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let open = self.consecutive_failures >= self.failures_to_open;
        if open {
            self.open_until = Some(now + self.cooldown);
        }
        open
    }

    /// An attempt succeeded: the breaker closes and the count starts again. Returns whether
    /// it had been open.
    fn succeeded(&mut self) -> bool {
        self.consecutive_failures = 0;
        self.open_until.take().is_some()
    }
}

/// Commits batches to the sink's database, each exactly once.
pub(super) struct Committer {
    /// Retry, breaker and timeout settings.
    cfg: ClickHouseConfig,
    /// A client of the sink's database.
    client: Client,
    /// Decides whether inserts carry `insert_deduplication_token`.
    version: ServerVersion,
    /// Network I/O runs here; the sink thread blocks on it.
    rt: tokio::runtime::Runtime,
    breaker: Breaker,
    metrics: Option<SharedMetrics>,
}

impl Committer {
    pub(super) fn new(
        cfg: &ClickHouseConfig,
        client: Client,
        version: ServerVersion,
        rt: tokio::runtime::Runtime,
    ) -> Committer {
        Committer {
            cfg: cfg.clone(),
            client,
            version,
            rt,
            breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown),
            metrics: None,
        }
    }

    /// Report inserts, failures and the breaker state here.
    pub(super) fn set_metrics(&mut self, metrics: SharedMetrics) {
        self.metrics = Some(metrics);
    }

    /// The client of the sink's database.
    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `f` on the sink's runtime.
    pub(super) fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Inserts one batch exactly once: skip if committed, else insert; on failure retry with
    /// backoff (looking the id up again first) until it succeeds or fails permanently.
    pub(super) fn commit<'a, F, Fut>(&mut self, batch: Batch<'a>, insert: F) -> Result<Committed>
    where
        F: Fn(Client, &'a str) -> Fut,
        Fut: Future<Output = clickhouse::error::Result<()>>,
    {
        let Batch {
            id,
            table,
            rows,
            range,
        } = batch;
        let mut delay = self.cfg.retry_initial;
        let mut attempt = 0u32;
        let mut failed_attempts = 0u64;
        loop {
            let hold = self.breaker.hold(Instant::now());
            if !hold.is_zero() {
                std::thread::sleep(hold);
            }
            attempt += 1;
            let client = self.client.clone().with_setting(
                "max_execution_time",
                self.cfg.request_timeout.as_secs().max(1).to_string(),
            );
            let client = if self.version.dedup_tokens() {
                client.with_setting("insert_deduplication_token", id)
            } else {
                client
            };
            let timeout = self.cfg.request_timeout;
            // Only a retry can meet its batch already in (the answer to an INSERT that went
            // in was lost); a first attempt cannot — a crashed run's batches were taken back.
            let check = attempt > 1;
            let outcome: Result<bool, ClickHouseError> = self.rt.block_on(async {
                let committed = check
                    && tokio::time::timeout(timeout, is_committed(&client, table, id, range))
                        .await
                        .map_err(|_| ClickHouseError::timed_out(timeout))??;
                if committed {
                    // Its `attribd_batches` row may be what is missing (the server died
                    // between the two): a restart's roll-back looks there first.
                    tokio::time::timeout(timeout, record_batch(&client, table, id))
                        .await
                        .map_err(|_| ClickHouseError::timed_out(timeout))??;
                    return Ok(true);
                }
                // The batch id is the query id: a restart after a crash waits for an INSERT
                // the server is still executing before it takes the crashed run's rows back.
                let inserting = client.clone().with_setting("query_id", id);
                tokio::time::timeout(timeout, insert(inserting, id))
                    .await
                    .map_err(|_| ClickHouseError::timed_out(timeout))?
                    .map_err(explain)?;
                Ok(false)
            });
            match outcome {
                Ok(skipped) => {
                    let was_open = self.breaker.succeeded();
                    if was_open || attempt > 1 {
                        tracing::info!(
                            table,
                            batch = id,
                            attempts = attempt,
                            "ClickHouse is back; batch committed"
                        );
                    }
                    if let Some(m) = &self.metrics {
                        m.sink_write(SinkKind::ClickHouse, true);
                        m.set_circuit_open(false);
                        if !skipped {
                            m.sink_rows(SinkKind::ClickHouse, table, rows as u64);
                        }
                    }
                    if skipped {
                        tracing::debug!(
                            table,
                            batch = id,
                            rows,
                            "batch already committed; skipped"
                        );
                    }
                    return Ok(Committed {
                        skipped,
                        failed_attempts,
                    });
                }
                Err(e) if e.is_permanent() => {
                    if let Some(m) = &self.metrics {
                        m.sink_write(SinkKind::ClickHouse, false);
                    }
                    return Err(e)
                        .with_context(|| format!("inserting into ClickHouse table {table}"));
                }
                Err(e) => {
                    failed_attempts += 1;
                    let open = self.breaker.failed(Instant::now());
                    if let Some(m) = &self.metrics {
                        m.sink_write(SinkKind::ClickHouse, false);
                        m.set_circuit_open(open);
                    }
                    let jitter = rand::rng().random_range(0.5..1.5);
                    let wait = delay.mul_f64(jitter);
                    if open {
                        // The next attempt waits for the cooldown (at the top of the loop).
                        tracing::warn!(table, batch = id, attempt, error = %e, cooldown = ?self.cfg.breaker_cooldown, "ClickHouse insert failed; circuit breaker open, pipeline waits");
                    } else {
                        tracing::warn!(table, batch = id, attempt, error = %e, retry_in = ?wait, "ClickHouse insert failed; retrying");
                        std::thread::sleep(wait);
                    }
                    delay = (delay * 2).min(self.cfg.retry_max);
                }
            }
        }
    }
}

/// Writes the `attribd_batches` row of batch `id` of `table` from its rows, as the
/// materialized view does (a second row of the same batch is merged away: ReplacingMergeTree).
async fn record_batch(client: &Client, table: &str, id: &str) -> Result<(), ClickHouseError> {
    client
        .query(&format!(
            "INSERT INTO attribd_batches (batch_id, table_name, rows, inserted_at) \
             SELECT batch_id, '{table}', count(), now() FROM {table} WHERE batch_id = ? \
             GROUP BY batch_id"
        ))
        .bind(id)
        .execute()
        .await
        .map_err(explain)
}

/// Whether rows of batch `id` are in `table`, looked up in the data itself (the rows and their
/// `batch_id` are written in one part, so this cannot disagree with what was inserted). `range`
/// is the batch's time range, which prunes the lookup to the partitions it touches.
async fn is_committed(
    client: &Client,
    table: &str,
    id: &str,
    range: (i64, i64),
) -> Result<bool, ClickHouseError> {
    let sql = match table {
        "conversions" => {
            "SELECT count() FROM conversions WHERE ts_ms >= ? AND ts_ms <= ? AND batch_id = ?"
        }
        "attribution_stats_click_hour" => {
            "SELECT count() FROM attribution_stats_click_hour \
             WHERE click_hour >= toDateTime(?) AND click_hour <= toDateTime(?) AND batch_id = ?"
        }
        _ => {
            "SELECT count() FROM attribution_stats_minute \
             WHERE minute >= toDateTime(?) AND minute <= toDateTime(?) AND batch_id = ?"
        }
    };
    let n: u64 = client
        .query(sql)
        .bind(range.0)
        .bind(range.1)
        .bind(id)
        .fetch_one()
        .await
        .map_err(explain)?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(10);

    #[test]
    fn the_breaker_opens_at_the_nth_failure_in_a_row_for_the_cooldown() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, COOLDOWN);
        assert_eq!(b.hold(t0), Duration::ZERO);
        assert!(!b.failed(t0));
        assert!(!b.failed(t0 + Duration::from_secs(1)));
        // Two failures: still closed, attempts go through at once.
        assert_eq!(b.hold(t0 + Duration::from_secs(2)), Duration::ZERO);
        let third = t0 + Duration::from_secs(3);
        assert!(b.failed(third));
        // Open: the next attempt waits out the cooldown from the third failure…
        assert_eq!(b.hold(third), COOLDOWN);
        let (four, six) = (Duration::from_secs(4), Duration::from_secs(6));
        assert_eq!(b.hold(third + four), six);
        // …and none after it.
        assert_eq!(b.hold(third + COOLDOWN), Duration::ZERO);
        assert_eq!(b.hold(third + COOLDOWN * 2), Duration::ZERO);
    }

    #[test]
    fn after_the_cooldown_one_failure_opens_the_breaker_again() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, COOLDOWN);
        b.failed(t0);
        assert!(b.failed(t0));
        let retry = t0 + COOLDOWN;
        assert_eq!(b.hold(retry), Duration::ZERO);
        // The attempt let through fails: open again for a whole cooldown, not after 2 more.
        assert!(b.failed(retry));
        assert_eq!(b.hold(retry), COOLDOWN);
    }

    #[test]
    fn a_success_closes_the_breaker_and_the_count_starts_again() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, COOLDOWN);
        for _ in 0..3 {
            b.failed(t0);
        }
        assert_eq!(b.hold(t0), COOLDOWN);
        // It had been open.
        assert!(b.succeeded());
        assert_eq!(b.hold(t0), Duration::ZERO);
        // Failures before the success do not count: three more are needed.
        assert!(!b.failed(t0));
        assert!(!b.failed(t0));
        assert!(b.failed(t0));
        // A success while closed: it had not been open; the count is reset all the same.
        let mut b = Breaker::new(3, COOLDOWN);
        b.failed(t0);
        b.failed(t0);
        assert!(!b.succeeded());
        assert!(!b.failed(t0));
        assert!(!b.failed(t0));
        assert!(b.failed(t0));
    }

    #[test]
    fn a_breaker_that_opens_at_one_failure_opens_at_every_failure() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, COOLDOWN);
        for i in 0..3 {
            let at = t0 + COOLDOWN * i;
            assert_eq!(b.hold(at), Duration::ZERO, "attempt {i}");
            assert!(b.failed(at), "attempt {i}");
            assert_eq!(b.hold(at), COOLDOWN, "attempt {i}");
        }
    }

    #[test]
    fn a_batch_id_names_table_instance_epoch_process_flush_and_content() {
        let w = Writer {
            instance: "00ff00ff00ff00ff".into(),
            process: 0xabc,
        };
        let id = batch_id("conversions", &w, 7, 42, 0x1f2e);
        assert_eq!(
            id,
            "conversions-00ff00ff00ff00ff-e00000007-00000abc-000042-0000000000001f2e"
        );
        assert!(batch_id("t", &w, 7, 9, u64::MAX) < batch_id("t", &w, 7, 10, 0));
        assert!(batch_id("t", &w, 7, 999_999, 0) < batch_id("t", &w, 8, 1, 0));
    }

    #[test]
    fn the_rollback_range_holds_exactly_the_instances_batches_from_an_epoch_on() {
        let me = |process| Writer {
            instance: "00ff00ff00ff00ff".into(),
            process,
        };
        let other = Writer {
            instance: "00ff00ff00ff00fe".into(),
            process: 1,
        };
        let (lo, hi) = epochs_from("conversions", "00ff00ff00ff00ff", 8);
        let inside = |id: &str| lo.as_str() <= id && id < hi.as_str();
        for (p, e, seq, content) in [
            (0, 8, 1, 0),
            (u32::MAX, 8, 999_999, u64::MAX),
            (7, 99_999_999, 1, 0),
        ] {
            assert!(inside(&batch_id("conversions", &me(p), e, seq, content)));
        }
        for id in [
            batch_id("conversions", &me(u32::MAX), 7, 999_999, u64::MAX),
            batch_id("conversions", &other, 8, 1, 0),
            batch_id("conversions", &other, 9, 1, 0),
            batch_id("attribution_stats_minute", &me(1), 8, 1, 0),
        ] {
            assert!(!inside(&id), "{id}");
        }
    }
}
