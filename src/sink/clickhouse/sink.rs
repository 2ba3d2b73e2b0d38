//! The ClickHouse sink itself: buffers the rows the "rest" sink thread hands it, decides when
//! they become batches, and takes back what a crashed run wrote after its last checkpoint.
//!
//! [`ClickHouseSink::write`] adds aggregate deltas of the same minute and dimensions up and
//! queues conversion versions; a table's buffer is flushed as one or more batches (one INSERT
//! each, at most `flush_rows` rows) when it is full and at every checkpoint barrier
//! ([`ClickHouseSink::barrier`]); `commit.rs` gets each of them in exactly once.
//!
//! A crash: the checkpoint writer puts a snapshot on disk while the state stage and this sink
//! go on with the next epoch, so a run can die having written batches of the epoch after the
//! newest checkpoint and of the one after that. Where a replay places its barriers depends on
//! the clock (and, for Fluvio, on fetch sizes), so it cannot form the same batches again.
//! Instead, before anything is written, [`ClickHouseSink::roll_back_after`] deletes every
//! batch this instance wrote in epochs after the checkpoint the run resumes from — the
//! ClickHouse side of what `sink::discard_after` does for Parquet files — and the replay
//! writes them again.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use xxhash_rust::xxh3::Xxh3;

use super::commit::{Batch, Committed, Committer, Writer, batch_id, epochs_from};
use super::config::{ClickHouseConfig, Credentials, client, loggable_url};
use super::encode::{ClickHourIngest, ConversionIngest, StatsIngest};
use super::error::explain;
use super::migrations;
use crate::rows::{ConversionRow, Dims, Measures, Names, NewNames, StatsRow};

/// What the sink did, for the run summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ClickHouseTotals {
    pub stats_rows: u64,
    /// Rows of `attribution_stats_click_hour`.
    pub click_hour_rows: u64,
    pub conversion_rows: u64,
    pub batches: u64,
    /// Batches found already committed (a replay, or a retry after a lost answer).
    pub batches_skipped: u64,
    pub failures: u64,
}

/// Rows of the stats buffer are keyed by minute and the interned ids of their dimensions
/// (equal ids, equal strings): the key never hashes string bytes.
type StatsKey = (i64, Dims);

fn stats_key(r: &StatsRow) -> StatsKey {
    (r.minute_ms, r.dims)
}

/// `(column >= ? AND column < ?) OR …`, one pair per range.
fn range_predicate(column: &str, ranges: usize) -> String {
    vec![format!("({column} >= ? AND {column} < ?)"); ranges].join(" OR ")
}

fn bind_ranges(
    q: clickhouse::query::Query,
    ranges: &[(String, String)],
) -> clickhouse::query::Query {
    ranges
        .iter()
        .fold(q, |q, (lo, hi)| q.bind(lo.as_str()).bind(hi.as_str()))
}

/// Buffers the rows of one run and commits them to ClickHouse in batches, each exactly once.
pub struct ClickHouseSink {
    cfg: ClickHouseConfig,
    /// Sends batches, exactly once; owns the client, the runtime and the circuit breaker.
    committer: Committer,
    stats: rustc_hash::FxHashMap<StatsKey, StatsRow>,
    /// The by-click-hour aggregate's buffer, merged the same way.
    click_hour: rustc_hash::FxHashMap<StatsKey, StatsRow>,
    conversions: Vec<ConversionRow>,
    /// The strings behind the aggregate rows' dimension ids ([`ClickHouseSink::learn_names`]).
    names: Names,
    /// Instance and process: parts of the batch id.
    writer: Writer,
    /// Checkpoint epoch and flush numbers per table within it; parts of the batch id.
    epoch: u64,
    stats_seq: u64,
    click_hour_seq: u64,
    conversions_seq: u64,
    pub totals: ClickHouseTotals,
}

impl ClickHouseSink {
    /// Connects and checks the database (exists, migrated, compatible) before anything runs.
    /// Batches are named after `instance` ([`crate::checkpoint::instance`]).
    pub fn connect(cfg: &ClickHouseConfig, instance: &str) -> Result<ClickHouseSink> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the tokio runtime")?;
        let creds = Credentials::load(cfg)?;
        let server = client(cfg, &creds);
        let version = rt
            .block_on(migrations::server_version(&server))
            .with_context(|| format!("connecting to ClickHouse at {}", loggable_url(&cfg.url)))?;
        rt.block_on(migrations::check(&server, &cfg.database))?;
        let client = server.with_database(&cfg.database);
        tracing::info!(url = %loggable_url(&cfg.url), database = %cfg.database, user = %creds.user, version = ?version, "ClickHouse sink ready");
        Ok(ClickHouseSink {
            cfg: cfg.clone(),
            committer: Committer::new(cfg, client, version, rt),
            stats: rustc_hash::FxHashMap::default(),
            click_hour: rustc_hash::FxHashMap::default(),
            conversions: Vec::new(),
            names: Names::default(),
            writer: Writer {
                instance: instance.to_string(),
                process: rand::random(),
            },
            epoch: 1,
            stats_seq: 0,
            click_hour_seq: 0,
            conversions_seq: 0,
            totals: ClickHouseTotals::default(),
        })
    }

    /// Report inserts, failures and the breaker state here.
    pub fn set_metrics(&mut self, metrics: crate::telemetry::SharedMetrics) {
        self.committer.set_metrics(metrics);
    }

    /// Takes in the strings a batch's aggregate rows are the first to name (the state stage
    /// sends them once, in order; see [`Names`]). Call before [`ClickHouseSink::write`] with
    /// that batch's rows.
    pub fn learn_names(&mut self, names: &NewNames) -> Result<()> {
        self.names.learn(names)
    }

    /// Buffers rows; flushes a table whose buffer is full (blocking while ClickHouse is down).
    pub fn write(
        &mut self,
        conversions: Vec<ConversionRow>,
        stats: Vec<StatsRow>,
        click_hour: Vec<StatsRow>,
    ) -> Result<()> {
        for row in stats.iter().chain(&click_hour) {
            self.names.check(row)?;
        }
        merge(&mut self.stats, stats);
        merge(&mut self.click_hour, click_hour);
        self.conversions.extend(conversions);
        if self.stats.len() >= self.cfg.flush_rows {
            self.flush_stats()?;
        }
        if self.click_hour.len() >= self.cfg.flush_rows {
            self.flush_click_hour()?;
        }
        if self.conversions.len() >= self.cfg.flush_rows {
            self.flush_conversions()?;
        }
        Ok(())
    }

    /// Names batches of `epoch` from now on (a restored run continues after its checkpoint).
    pub fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.stats_seq = 0;
        self.click_hour_seq = 0;
        self.conversions_seq = 0;
    }

    /// Takes back every batch this instance wrote in epochs after `checkpoint` (the one the
    /// run resumes from; 0: none): a crashed run's outputs past its last durable checkpoint,
    /// or a finished run's end when a longer input reopens it. `ALTER TABLE … DELETE` of the
    /// instance's id range (never another instance's), issued only where such rows exist and
    /// waited for until the server has applied it, so the replay's inserts come after it.
    ///
    /// First, an INSERT of the crashed process the server is still executing (its query id is
    /// its batch id) is waited for: landing after the delete, it would escape it. Then
    /// `attribd_batches`, keyed by (table, batch id), says in a few granules whether there is
    /// anything to take back, so a start with nothing to do does not scan the data tables. (A
    /// batch is missing there only if the server died between writing its rows and its
    /// `attribd_batches` row; the retry that then finds it in the data writes that row, see
    /// `commit.rs`.)
    pub fn roll_back_after(&self, checkpoint: u64) -> Result<()> {
        let instance = self.writer.instance.clone();
        let data_tables = [
            "conversions",
            "attribution_stats_minute",
            "attribution_stats_click_hour",
        ];
        let ranges = data_tables.map(|t| epochs_from(t, &instance, checkpoint + 1));
        let explain_step = |what: &str| {
            format!(
                "taking back from ClickHouse what this instance ({instance}) wrote after \
                 checkpoint {checkpoint}: {what}"
            )
        };
        let running = self
            .wait_for_zero("system.processes", "query_id", &ranges)
            .with_context(|| explain_step("waiting for its inserts still running"))?;
        if running > 0 {
            tracing::info!(
                inserts = running,
                "waited for inserts of the previous run that were still running"
            );
        }
        let listed = self
            .count_in("attribd_batches", "batch_id", &ranges)
            .with_context(|| explain_step("looking in attribd_batches"))?;
        if listed == 0 {
            return Ok(());
        }
        let plan: [(&str, &[(String, String)]); 4] = [
            (data_tables[0], &ranges[..1]),
            (data_tables[1], &ranges[1..2]),
            (data_tables[2], &ranges[2..]),
            ("attribd_batches", &ranges[..]),
        ];
        for (table, ranges) in plan {
            let found = self
                .count_in(table, "batch_id", ranges)
                .with_context(|| explain_step(table))?;
            if found == 0 {
                continue;
            }
            let sql = format!(
                "ALTER TABLE {table} DELETE WHERE {}",
                range_predicate("batch_id", ranges.len())
            );
            let client = self.committer.client().clone();
            self.committer
                .block_on(bind_ranges(client.query(&sql), ranges).execute())
                .map_err(explain)
                .with_context(|| explain_step(table))?;
            self.wait_for_zero(table, "batch_id", ranges)
                .with_context(|| explain_step(table))?;
            tracing::info!(
                table,
                rows = found,
                checkpoint,
                "took back the rows written after the checkpoint resumed from; the replay writes them again"
            );
        }
        Ok(())
    }

    /// Rows of `table` whose `column` falls in one of `ranges`.
    fn count_in(&self, table: &str, column: &str, ranges: &[(String, String)]) -> Result<u64> {
        let sql = format!(
            "SELECT count() FROM {table} WHERE {}",
            range_predicate(column, ranges.len())
        );
        let client = self.committer.client().clone();
        let n = self
            .committer
            .block_on(bind_ranges(client.query(&sql), ranges).fetch_one::<u64>())
            .map_err(explain)?;
        Ok(n)
    }

    /// Waits (up to 5 minutes, polling every half second) until [`Self::count_in`] is 0;
    /// returns the first count.
    fn wait_for_zero(&self, table: &str, column: &str, ranges: &[(String, String)]) -> Result<u64> {
        let timeout = Duration::from_secs(300);
        let started = Instant::now();
        let first = self.count_in(table, column, ranges)?;
        let mut left = first;
        // Asked of the data itself, not of the mutation bookkeeping, which 18.16 reports done
        // too early.
        while left > 0 {
            if started.elapsed() > timeout {
                anyhow::bail!("{left} rows of {table} still there after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(500));
            left = self.count_in(table, column, ranges)?;
        }
        Ok(first)
    }

    /// A checkpoint barrier: everything buffered is committed, then batches of `next_epoch`.
    pub fn barrier(&mut self, next_epoch: u64) -> Result<()> {
        self.flush()?;
        self.set_epoch(next_epoch);
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        self.flush_stats()?;
        self.flush_click_hour()?;
        self.flush_conversions()
    }

    fn flush_stats(&mut self) -> Result<()> {
        let rows = sorted_rows(&mut self.stats, &self.names);
        for chunk in rows.chunks(self.cfg.flush_rows) {
            self.insert_stats(chunk, Aggregate::Minute)?;
        }
        Ok(())
    }

    fn flush_click_hour(&mut self) -> Result<()> {
        let rows = sorted_rows(&mut self.click_hour, &self.names);
        for chunk in rows.chunks(self.cfg.flush_rows) {
            self.insert_stats(chunk, Aggregate::ClickHour)?;
        }
        Ok(())
    }
}

/// The two aggregate tables: the same rows, keyed by another time.
#[derive(Clone, Copy)]
enum Aggregate {
    Minute,
    ClickHour,
}

impl Aggregate {
    fn table(self) -> &'static str {
        match self {
            Aggregate::Minute => "attribution_stats_minute",
            Aggregate::ClickHour => "attribution_stats_click_hour",
        }
    }
}

/// Adds `rows` to a buffer, one row per bucket.
fn merge(buffer: &mut rustc_hash::FxHashMap<StatsKey, StatsRow>, rows: Vec<StatsRow>) {
    for r in rows {
        match buffer.entry(stats_key(&r)) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                e.get_mut().measures.add(&r.measures)
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(r);
            }
        }
    }
}

/// A buffer's rows without the ones that net to nothing, in a deterministic order (the batch id
/// is a function of the rows): by minute, then the dimensions' strings.
fn sorted_rows(
    buffer: &mut rustc_hash::FxHashMap<StatsKey, StatsRow>,
    names: &Names,
) -> Vec<StatsRow> {
    let mut rows: Vec<StatsRow> = buffer
        .drain()
        .map(|(_, r)| r)
        .filter(|r| r.measures != Measures::default())
        .collect();
    rows.sort_by_cached_key(|r| (r.minute_ms, names.dims(&r.dims)));
    rows
}

impl ClickHouseSink {
    /// One INSERT (one batch id) of at most `flush_rows` aggregate rows into `table`.
    fn insert_stats(&mut self, rows: &[StatsRow], table: Aggregate) -> Result<()> {
        let names = &self.names;
        let mut h = Xxh3::new();
        for r in rows {
            h.update(&r.minute_ms.to_le_bytes());
            for s in names.dims(&r.dims) {
                h.update(s.as_bytes());
                h.update(&[0x1f]);
            }
            for v in r.measures.to_array() {
                h.update(&v.to_le_bytes());
            }
        }
        let seq = match table {
            Aggregate::Minute => &mut self.stats_seq,
            Aggregate::ClickHour => &mut self.click_hour_seq,
        };
        *seq += 1;
        let id = batch_id(table.table(), &self.writer, self.epoch, *seq, h.digest());
        let range = (
            rows.iter().map(|r| r.minute_ms / 1000).min().unwrap_or(0),
            rows.iter().map(|r| r.minute_ms / 1000).max().unwrap_or(0),
        );
        let batch = Batch {
            id: &id,
            table: table.table(),
            rows: rows.len(),
            range,
        };
        let committed = self.committer.commit(batch, |client, id| async move {
            match table {
                Aggregate::Minute => {
                    let mut ins = client.insert::<StatsIngest<'_>>(table.table()).await?;
                    for r in rows {
                        ins.write(&StatsIngest::new(id, r, names)).await?;
                    }
                    ins.end().await
                }
                Aggregate::ClickHour => {
                    let mut ins = client.insert::<ClickHourIngest<'_>>(table.table()).await?;
                    for r in rows {
                        ins.write(&ClickHourIngest::new(id, r, names)).await?;
                    }
                    ins.end().await
                }
            }
        })?;
        if !self.count(&committed) {
            match table {
                Aggregate::Minute => self.totals.stats_rows += rows.len() as u64,
                Aggregate::ClickHour => self.totals.click_hour_rows += rows.len() as u64,
            }
        }
        Ok(())
    }

    fn flush_conversions(&mut self) -> Result<()> {
        if self.conversions.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.conversions);
        for chunk in rows.chunks(self.cfg.flush_rows) {
            self.insert_conversions(chunk)?;
        }
        Ok(())
    }

    /// One INSERT (one batch id) of at most `flush_rows` conversion rows.
    fn insert_conversions(&mut self, rows: &[ConversionRow]) -> Result<()> {
        let mut h = Xxh3::new();
        for r in rows {
            for s in [&*r.tenant_id, &*r.external_id, r.status.as_str()] {
                h.update(s.as_bytes());
                h.update(&[0x1f]);
            }
            h.update(&r.version.to_le_bytes());
        }
        self.conversions_seq += 1;
        let id = batch_id(
            "conversions",
            &self.writer,
            self.epoch,
            self.conversions_seq,
            h.digest(),
        );
        let range = (
            rows.iter().map(|r| r.ts_ms).min().unwrap_or(0),
            rows.iter().map(|r| r.ts_ms).max().unwrap_or(0),
        );
        let batch = Batch {
            id: &id,
            table: "conversions",
            rows: rows.len(),
            range,
        };
        let committed = self.committer.commit(batch, |client, id| async move {
            let mut ins = client.insert::<ConversionIngest<'_>>("conversions").await?;
            for r in rows {
                ins.write(&ConversionIngest::new(id, r)).await?;
            }
            ins.end().await
        })?;
        if !self.count(&committed) {
            self.totals.conversion_rows += rows.len() as u64;
        }
        Ok(())
    }

    /// Records a committed batch in the totals; returns whether it was skipped (already in).
    fn count(&mut self, committed: &Committed) -> bool {
        self.totals.batches += 1;
        self.totals.failures += committed.failed_attempts;
        if committed.skipped {
            self.totals.batches_skipped += 1;
        }
        committed.skipped
    }

    /// Flushes everything; afterwards all rows are in ClickHouse.
    pub fn close(&mut self) -> Result<ClickHouseTotals> {
        self.flush()?;
        Ok(self.totals)
    }
}
