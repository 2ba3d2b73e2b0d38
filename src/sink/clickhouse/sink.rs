//! The ClickHouse sink itself: buffers the rows the "rest" sink thread hands it, decides when
//! they become batches, and keeps the per-epoch record a checkpoint needs.
//!
//! [`ClickHouseSink::write`] adds aggregate deltas of the same minute and dimensions up and
//! queues conversion versions; a table's buffer is flushed as one or more batches (one INSERT
//! each, at most `flush_rows` rows) when it is full and at every checkpoint barrier
//! ([`ClickHouseSink::barrier`]). Flush points and row order depend only on the input, so a
//! replay forms the same batches with the same ids; `commit.rs` gets each of them in exactly
//! once. [`ClickHouseSink::take_epoch_batches`] hands the checkpoint the ids an epoch
//! committed, and [`ClickHouseSink::retract`] takes a finished run's last batches back when a
//! longer input reopens its end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use xxhash_rust::xxh3::Xxh3;

use super::commit::{Batch, Committed, Committer, batch_id};
use super::config::{ClickHouseConfig, Credentials, client, loggable_url};
use super::encode::{ConversionIngest, StatsIngest};
use super::error::explain;
use super::migrations;
use crate::rows::{ConversionRow, Measures, StatsRow};

/// What the sink did, for the run summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ClickHouseTotals {
    pub stats_rows: u64,
    pub conversion_rows: u64,
    pub batches: u64,
    /// Batches found already committed (a replay, or a retry after a lost answer).
    pub batches_skipped: u64,
    pub failures: u64,
}

/// Rows of the stats buffer are keyed by minute and the *identity* of the interned dimension
/// strings: all of them come from the state stage's interner, so pointer equality is string
/// equality and the key never hashes string bytes.
type StatsKey = (i64, [usize; 5]);

fn stats_key(r: &StatsRow) -> StatsKey {
    let p = |s: &Arc<str>| Arc::as_ptr(s) as *const u8 as usize;
    (
        r.minute_ms,
        [
            p(&r.tenant_id),
            p(&r.offer_id),
            p(&r.affiliate_id),
            p(&r.country),
            p(&r.currency),
        ],
    )
}

/// Buffers the rows of one run and commits them to ClickHouse in batches, each exactly once.
pub struct ClickHouseSink {
    cfg: ClickHouseConfig,
    /// Sends batches, exactly once; owns the client, the runtime and the circuit breaker.
    committer: Committer,
    stats: rustc_hash::FxHashMap<StatsKey, StatsRow>,
    conversions: Vec<ConversionRow>,
    /// Checkpoint epoch and flush numbers per table within it; parts of the batch id.
    epoch: u64,
    /// The run's first epoch: its batches are looked up before inserting.
    verify_epoch: u64,
    stats_seq: u64,
    conversions_seq: u64,
    /// Ids of the batches committed in the current epoch.
    epoch_batches: Vec<String>,
    pub totals: ClickHouseTotals,
}

impl ClickHouseSink {
    /// Connects and checks the database (exists, migrated, compatible) before anything runs.
    pub fn connect(cfg: &ClickHouseConfig) -> Result<ClickHouseSink> {
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
            conversions: Vec::new(),
            epoch: 1,
            verify_epoch: 1,
            stats_seq: 0,
            conversions_seq: 0,
            epoch_batches: Vec::new(),
            totals: ClickHouseTotals::default(),
        })
    }

    /// Report inserts, failures and the breaker state here.
    pub fn set_metrics(&mut self, metrics: crate::telemetry::SharedMetrics) {
        self.committer.set_metrics(metrics);
    }

    /// Buffers rows; flushes a table whose buffer is full (blocking while ClickHouse is down).
    pub fn write(&mut self, conversions: Vec<ConversionRow>, stats: Vec<StatsRow>) -> Result<()> {
        for r in stats {
            match self.stats.entry(stats_key(&r)) {
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    e.get_mut().measures.add(&r.measures)
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(r);
                }
            }
        }
        self.conversions.extend(conversions);
        if self.stats.len() >= self.cfg.flush_rows {
            self.flush_stats()?;
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
        self.conversions_seq = 0;
    }

    /// The run starts at `epoch`: its batches may already be in (a replay) and are verified.
    pub fn start_at(&mut self, epoch: u64) {
        self.verify_epoch = epoch;
        self.set_epoch(epoch);
    }

    /// The ids of the batches committed since the last call (after a barrier: the epoch it
    /// closed).
    pub fn take_epoch_batches(&mut self) -> Vec<String> {
        std::mem::take(&mut self.epoch_batches)
    }

    /// Takes back the batches a finished run's end wrote, when a rerun over a longer input
    /// decides that end again: `ALTER TABLE … DELETE` of exactly those batch ids (never another
    /// instance's), waited for until the server has applied it.
    pub fn retract(&mut self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let timeout = Duration::from_secs(300);
        for table in ["conversions", "attribution_stats_minute", "attribd_batches"] {
            let prefix = format!("{table}-e");
            let mine: Vec<&str> = ids
                .iter()
                .map(String::as_str)
                .filter(|id| table == "attribd_batches" || id.starts_with(&prefix))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let client = self.committer.client().clone();
            self.committer
                .block_on(async {
                    client
                        .query(&format!(
                            "ALTER TABLE {table} DELETE WHERE has(?, batch_id)"
                        ))
                        .bind(&mine)
                        .execute()
                        .await
                        .map_err(explain)?;
                    let started = Instant::now();
                    loop {
                        // Done when the rows are gone (asked of the data itself, not of the
                        // mutation bookkeeping, which 18.16 reports done too early).
                        let running: u64 = client
                            .query(&format!(
                                "SELECT count() FROM {table} WHERE has(?, batch_id)"
                            ))
                            .bind(&mine)
                            .fetch_one()
                            .await
                            .map_err(explain)?;
                        if running == 0 {
                            return Ok(());
                        }
                        if started.elapsed() > timeout {
                            anyhow::bail!("the delete has not finished after {timeout:?}");
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
                .with_context(|| {
                    format!(
                        "taking back {} batches of the previous end from ClickHouse table {table}",
                        mine.len()
                    )
                })?;
            tracing::info!(
                table,
                batches = mine.len(),
                "took back the batches of the previous run's end"
            );
        }
        Ok(())
    }

    /// A checkpoint barrier: everything buffered is committed, then batches of `next_epoch`.
    pub fn barrier(&mut self, next_epoch: u64) -> Result<()> {
        self.flush()?;
        self.set_epoch(next_epoch);
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        self.flush_stats()?;
        self.flush_conversions()
    }

    fn flush_stats(&mut self) -> Result<()> {
        if self.stats.is_empty() {
            return Ok(());
        }
        let mut rows: Vec<StatsRow> = self
            .stats
            .drain()
            .map(|(_, r)| r)
            .filter(|r| r.measures != Measures::default())
            .collect();
        // A deterministic order makes the batch id a function of the rows.
        rows.sort_by(|a, b| {
            (
                a.minute_ms,
                &a.tenant_id,
                &a.offer_id,
                &a.affiliate_id,
                &a.country,
                &a.currency,
            )
                .cmp(&(
                    b.minute_ms,
                    &b.tenant_id,
                    &b.offer_id,
                    &b.affiliate_id,
                    &b.country,
                    &b.currency,
                ))
        });
        for chunk in rows.chunks(self.cfg.flush_rows) {
            self.insert_stats(chunk)?;
        }
        Ok(())
    }

    /// One INSERT (one batch id) of at most `flush_rows` aggregate rows.
    fn insert_stats(&mut self, rows: &[StatsRow]) -> Result<()> {
        let mut h = Xxh3::new();
        for r in rows {
            h.update(&r.minute_ms.to_le_bytes());
            for s in [
                &r.tenant_id,
                &r.offer_id,
                &r.affiliate_id,
                &r.country,
                &r.currency,
            ] {
                h.update(s.as_bytes());
                h.update(&[0x1f]);
            }
            for v in r.measures.to_array() {
                h.update(&v.to_le_bytes());
            }
        }
        self.stats_seq += 1;
        let id = batch_id(
            "attribution_stats_minute",
            self.epoch,
            self.stats_seq,
            h.digest(),
        );
        let range = (
            rows.iter().map(|r| r.minute_ms / 1000).min().unwrap_or(0),
            rows.iter().map(|r| r.minute_ms / 1000).max().unwrap_or(0),
        );
        let batch = Batch {
            id: &id,
            table: "attribution_stats_minute",
            rows: rows.len(),
            range,
            may_be_in: self.epoch == self.verify_epoch,
        };
        let committed = self.committer.commit(batch, |client, id| async move {
            let mut ins = client
                .insert::<StatsIngest<'_>>("attribution_stats_minute")
                .await?;
            for r in rows {
                ins.write(&StatsIngest::new(id, r)).await?;
            }
            ins.end().await
        })?;
        if !self.count(id, &committed) {
            self.totals.stats_rows += rows.len() as u64;
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
        let id = batch_id("conversions", self.epoch, self.conversions_seq, h.digest());
        let range = (
            rows.iter().map(|r| r.ts_ms).min().unwrap_or(0),
            rows.iter().map(|r| r.ts_ms).max().unwrap_or(0),
        );
        let batch = Batch {
            id: &id,
            table: "conversions",
            rows: rows.len(),
            range,
            may_be_in: self.epoch == self.verify_epoch,
        };
        let committed = self.committer.commit(batch, |client, id| async move {
            let mut ins = client.insert::<ConversionIngest<'_>>("conversions").await?;
            for r in rows {
                ins.write(&ConversionIngest::new(id, r)).await?;
            }
            ins.end().await
        })?;
        if !self.count(id, &committed) {
            self.totals.conversion_rows += rows.len() as u64;
        }
        Ok(())
    }

    /// Records a committed batch in the epoch's list and the totals; returns whether it was
    /// skipped (already in).
    fn count(&mut self, id: String, committed: &Committed) -> bool {
        self.epoch_batches.push(id);
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
