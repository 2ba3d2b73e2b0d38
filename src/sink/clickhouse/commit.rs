//! Exactly-once commit of one batch: its id, the lookup that finds it already in, and the
//! retry loop with backoff, jitter and a circuit breaker.
//!
//! A batch is one INSERT into one table, named by a [`batch_id`] that depends only on the rows
//! and on where they fall in the input (checkpoint epoch, flush number), so a replay after a
//! crash names the same rows the same way. `Committer::commit` inserts it; when it may
//! already be in — a retry after a lost answer, or the run's first epoch, which replays what a
//! crashed run may have written — it first looks the id up in the data (`is_committed`) and
//! skips a batch that is there. Servers from 22.2 also get the id as
//! `insert_deduplication_token`.
//!
//! A failure is retried until the batch is in: the delay starts at `retry_initial` and doubles
//! up to `retry_max`, each wait jittered ±50 %, and after `breaker_failures` failures in a row
//! the circuit breaker holds every attempt for `breaker_cooldown`. Meanwhile the sink thread
//! blocks and the bounded channels slow the pipeline down; nothing is dropped. Only an error
//! classified permanent (`error.rs`: credentials, missing or incompatible tables, …) ends the
//! wait, and the run.

use std::future::Future;
use std::time::Instant;

use anyhow::{Context, Result};
use clickhouse::Client;
use rand::Rng;

use super::config::ClickHouseConfig;
use super::error::{ClickHouseError, explain};
use super::migrations::ServerVersion;
use crate::telemetry::{SharedMetrics, SinkKind};

/// `table-e00000007-000042-1f2e…`: deterministic for the same rows at the same flush of the
/// same checkpoint epoch.
pub fn batch_id(table: &str, epoch: u64, seq: u64, content: u64) -> String {
    format!("{table}-e{epoch:08}-{seq:06}-{content:016x}")
}

/// One batch to commit.
pub(super) struct Batch<'a> {
    /// Its [`batch_id`].
    pub id: &'a str,
    pub table: &'static str,
    pub rows: usize,
    /// The rows' time range (in the unit of the table's time column), which prunes the lookup.
    pub range: (i64, i64),
    /// The batch may be in before its first attempt (the run's first epoch): look it up first.
    pub may_be_in: bool,
}

/// How a batch went in.
pub(super) struct Committed {
    /// It was in already (a replay, or a retry after a lost answer) and was not inserted again.
    pub skipped: bool,
    /// Attempts that failed before it went in.
    pub failed_attempts: u64,
}

/// Closed → counts failures; open → no attempts until the cooldown passes.
#[derive(Debug)]
struct Breaker {
    consecutive_failures: u32,
    open_until: Option<Instant>,
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
            breaker: Breaker {
                consecutive_failures: 0,
                open_until: None,
            },
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
            may_be_in,
        } = batch;
        let mut delay = self.cfg.retry_initial;
        let mut attempt = 0u32;
        let mut failed_attempts = 0u64;
        loop {
            if let Some(until) = self.breaker.open_until {
                let now = Instant::now();
                if until > now {
                    std::thread::sleep(until - now);
                }
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
            // Only a retry, or the first epoch of a run (which may replay what a crashed run
            // already committed), can meet a batch that is already in; later first attempts
            // cannot, and skip the lookup.
            let check = attempt > 1 || may_be_in;
            let outcome: Result<bool, ClickHouseError> = self.rt.block_on(async {
                let committed = check
                    && tokio::time::timeout(timeout, is_committed(&client, table, id, range))
                        .await
                        .map_err(|_| ClickHouseError::timed_out(timeout))??;
                if committed {
                    return Ok(true);
                }
                tokio::time::timeout(timeout, insert(client.clone(), id))
                    .await
                    .map_err(|_| ClickHouseError::timed_out(timeout))?
                    .map_err(explain)?;
                Ok(false)
            });
            match outcome {
                Ok(skipped) => {
                    if self.breaker.open_until.is_some() || attempt > 1 {
                        tracing::info!(
                            table,
                            batch = id,
                            attempts = attempt,
                            "ClickHouse is back; batch committed"
                        );
                    }
                    self.breaker.consecutive_failures = 0;
                    self.breaker.open_until = None;
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
                    self.breaker.consecutive_failures += 1;
                    let opens = self.breaker.consecutive_failures >= self.cfg.breaker_failures;
                    if let Some(m) = &self.metrics {
                        m.sink_write(SinkKind::ClickHouse, false);
                        m.set_circuit_open(opens);
                    }
                    let jitter = rand::rng().random_range(0.5..1.5);
                    let wait = delay.mul_f64(jitter);
                    if self.breaker.consecutive_failures >= self.cfg.breaker_failures {
                        self.breaker.open_until = Some(Instant::now() + self.cfg.breaker_cooldown);
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

/// Whether rows of batch `id` are in `table`, looked up in the data itself (the rows and their
/// `batch_id` are written in one part, so this cannot disagree with what was inserted). `range`
/// is the batch's time range, which prunes the lookup to the partitions it touches.
async fn is_committed(
    client: &Client,
    table: &str,
    id: &str,
    range: (i64, i64),
) -> Result<bool, ClickHouseError> {
    let sql = if table == "conversions" {
        "SELECT count() FROM conversions WHERE ts_ms >= ? AND ts_ms <= ? AND batch_id = ?"
    } else {
        "SELECT count() FROM attribution_stats_minute \
         WHERE minute >= toDateTime(?) AND minute <= toDateTime(?) AND batch_id = ?"
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

    #[test]
    fn a_batch_id_starts_with_its_table_and_epoch_and_sorts_by_flush() {
        let id = batch_id("conversions", 7, 42, 0x1f2e);
        assert_eq!(id, "conversions-e00000007-000042-0000000000001f2e");
        // `retract` picks a table's batches by this prefix.
        assert!(id.starts_with("conversions-e"));
        assert!(batch_id("t", 7, 9, u64::MAX) < batch_id("t", 7, 10, 0));
        assert!(batch_id("t", 7, 999_999, 0) < batch_id("t", 8, 1, 0));
    }
}
