//! The ClickHouse sink: minute aggregates and raw conversion versions, exactly once.
//!
//! Sits after the Parquet sink on the "rest" sink thread's output: it receives the same
//! conversion rows and aggregate deltas, buffers them (aggregate rows of the same bucket are
//! added up first, so ClickHouse gets rows per minute × dimensions, not per event) and flushes
//! one INSERT per table when a buffer reaches `flush_rows` and at every checkpoint (so the
//! checkpoint interval is the age bound). Flush points depend only on the input, never on the
//! clock, so a replay after a crash forms the same batches with the same ids.
//!
//! Exactly once: every flush gets a batch id (checkpoint epoch, flush number, hash of the
//! rows), written in each row's `batch_id` column — part of the aggregate table's sorting key,
//! so rows of different batches are never merged and the id stays visible. Before every retry,
//! and before every insert of a run's first epoch (which may replay what a crashed run already
//! wrote), the sink looks the id up in the data itself, so a batch whose INSERT succeeded but
//! whose answer was lost — or whose server crashed right after writing it — is never written
//! twice. A materialized view also records each batch in `attribd_batches` for operators. Failures are retried with exponential backoff and jitter behind a circuit
//! breaker; while it waits, the bounded channels slow the whole pipeline down — nothing is
//! dropped.

pub mod rows;
pub mod schema;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clickhouse::Client;
use rand::Rng;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::rows::{ConversionRow, Measures, StatsRow};
use rows::{ConversionIngest, StatsIngest};
use schema::{Retention, ServerVersion, explain};

/// User-facing options of the ClickHouse sink (`[sink.clickhouse]`). Credentials are not here:
/// the user comes from `ATTRIBD_CLICKHOUSE_USER` (or `user`), the password from
/// `ATTRIBD_CLICKHOUSE_PASSWORD` or the file named by `password_file`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP endpoint, e.g. `http://127.0.0.1:8123` (no credentials in it).
    pub url: String,
    /// Database holding attribd's tables.
    pub database: String,
    /// User name; `ATTRIBD_CLICKHOUSE_USER` overrides it.
    pub user: String,
    /// File whose content (trailing newline removed) is the password.
    pub password_file: Option<PathBuf>,
    /// Flush a table's buffer once it holds this many rows (buffers are also flushed at every
    /// checkpoint, `checkpoint.every`).
    pub flush_rows: usize,
    /// First retry delay; doubles per failure (with ±50 % jitter) up to `retry_max`.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker waits before it lets one attempt through.
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
    /// Timeout of one request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Retention of `attribution_stats_minute` (click-derived rows), days.
    pub stats_retention_days: u32,
    /// Retention of `conversions`, days.
    pub conversions_retention_days: u32,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: String::new(),
            database: "attribd".to_string(),
            user: "default".to_string(),
            password_file: None,
            flush_rows: 50_000,
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            stats_retention_days: 90,
            conversions_retention_days: 730,
        }
    }
}

impl ClickHouseConfig {
    pub fn retention(&self) -> Retention {
        Retention {
            stats_days: self.stats_retention_days,
            conversions_days: self.conversions_retention_days,
        }
    }

    /// Problems with the options, as `(key, problem)` (keys relative to `sink.clickhouse`).
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            p.push((
                "url",
                format!(
                    "must be an http:// or https:// URL, got {:?}",
                    loggable_url(&self.url)
                ),
            ));
        }
        if let Some(what) = url_credentials(&self.url) {
            p.push((
                "url",
                format!(
                    "must not contain credentials (it has {what}); give the user in \
                     ATTRIBD_CLICKHOUSE_USER (or `sink.clickhouse.user`), the password in \
                     ATTRIBD_CLICKHOUSE_PASSWORD (or a file named by \
                     `sink.clickhouse.password_file`)"
                ),
            ));
        }
        if self.database.is_empty() {
            p.push(("database", "must not be empty".to_string()));
        }
        if self.flush_rows == 0 || self.flush_rows > 1_000_000 {
            p.push((
                "flush_rows",
                format!(
                    "must be 1..=1000000 (one INSERT block), got {}",
                    self.flush_rows
                ),
            ));
        }
        if self.breaker_failures == 0 {
            p.push(("breaker_failures", "must be at least 1".to_string()));
        }
        if self.retry_initial.is_zero() || self.retry_max < self.retry_initial {
            p.push((
                "retry_max",
                "retry_initial must be > 0 and retry_max ≥ retry_initial".to_string(),
            ));
        }
        p
    }
}

/// `url` as it may appear in logs and errors: without the query string and fragment (they may
/// carry `password=` or other tokens) and without a `user:password@` part (everything up to
/// the last `@`, since a password may itself hold `/`, `?` or `@`).
pub fn loggable_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    match scheme {
        Some(scheme) => format!("{scheme}://{rest}"),
        None => rest.to_string(),
    }
}

/// What in `url` is a credential, described without its value: a `user:password@` part (any
/// `@`), or a `user` / `password` query parameter (ClickHouse's HTTP interface takes both).
fn url_credentials(url: &str) -> Option<&'static str> {
    if url.contains('@') {
        return Some("a `user:password@` part");
    }
    let query = url.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .map(|pair| percent_decoded(pair.split('=').next().unwrap_or_default()))
        .find_map(|key| match key.to_ascii_lowercase().as_str() {
            "password" => Some("a `password` query parameter"),
            "user" => Some("a `user` query parameter"),
            _ => None,
        })
}

/// `%XX` escapes decoded (a query key may be spelled `pass%77ord`); anything else kept.
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (b[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(if byte == b'+' { b' ' } else { byte });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// User and password; `Debug` never shows the password.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials {{ user: {:?}, password: <redacted> }}",
            self.user
        )
    }
}

impl Credentials {
    /// From the environment and the password file.
    pub fn load(cfg: &ClickHouseConfig) -> Result<Credentials> {
        let user = std::env::var("ATTRIBD_CLICKHOUSE_USER").unwrap_or_else(|_| cfg.user.clone());
        let password = match &cfg.password_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| {
                    format!(
                        "sink.clickhouse.password_file: cannot read {}",
                        path.display()
                    )
                })?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
            None => std::env::var("ATTRIBD_CLICKHOUSE_PASSWORD").unwrap_or_default(),
        };
        Ok(Credentials { user, password })
    }
}

/// A client for `cfg` (RowBinary without schema validation, so 18.16 works; lz4).
pub fn client(cfg: &ClickHouseConfig, creds: &Credentials) -> Client {
    Client::default()
        .with_url(&cfg.url)
        .with_user(&creds.user)
        .with_password(&creds.password)
        .with_compression(clickhouse::Compression::Lz4)
        .with_validation(false)
}

/// Runs `f` on a small single-threaded tokio runtime (network I/O lives on tokio).
pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    Ok(rt.block_on(f))
}

/// `attribd migrate`: creates the database and applies pending migrations.
/// Drops `cfg.database` with everything in it (`attribd bench` cleans up its scratch database).
pub fn drop_database(cfg: &ClickHouseConfig) -> Result<()> {
    let creds = Credentials::load(cfg)?;
    let c = client(cfg, &creds);
    block_on(
        c.query(&format!("DROP DATABASE IF EXISTS `{}`", cfg.database))
            .execute(),
    )??;
    Ok(())
}

pub fn migrate(cfg: &ClickHouseConfig) -> Result<Vec<u32>> {
    let creds = Credentials::load(cfg)?;
    let c = client(cfg, &creds);
    block_on(schema::migrate(&c, &cfg.database, cfg.retention()))?
}

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

/// Closed → counts failures; open → no attempts until the cooldown passes.
#[derive(Debug)]
struct Breaker {
    consecutive_failures: u32,
    open_until: Option<Instant>,
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

pub struct ClickHouseSink {
    cfg: ClickHouseConfig,
    client: Client,
    version: ServerVersion,
    rt: tokio::runtime::Runtime,
    stats: rustc_hash::FxHashMap<StatsKey, StatsRow>,
    conversions: Vec<ConversionRow>,
    /// Checkpoint epoch and flush numbers per table within it; parts of the batch id.
    epoch: u64,
    /// The run's first epoch: its batches are looked up before inserting.
    verify_epoch: u64,
    stats_seq: u64,
    conversions_seq: u64,
    breaker: Breaker,
    /// Ids of the batches committed in the current epoch.
    epoch_batches: Vec<String>,
    pub totals: ClickHouseTotals,
    metrics: Option<crate::telemetry::SharedMetrics>,
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
            .block_on(schema::server_version(&server))
            .with_context(|| format!("connecting to ClickHouse at {}", loggable_url(&cfg.url)))?;
        rt.block_on(schema::check(&server, &cfg.database))?;
        let client = server.with_database(&cfg.database);
        tracing::info!(url = %loggable_url(&cfg.url), database = %cfg.database, user = %creds.user, version = ?version, "ClickHouse sink ready");
        Ok(ClickHouseSink {
            cfg: cfg.clone(),
            client,
            version,
            rt,
            stats: rustc_hash::FxHashMap::default(),
            conversions: Vec::new(),
            epoch: 1,
            verify_epoch: 1,
            stats_seq: 0,
            conversions_seq: 0,
            breaker: Breaker {
                consecutive_failures: 0,
                open_until: None,
            },
            epoch_batches: Vec::new(),
            totals: ClickHouseTotals::default(),
            metrics: None,
        })
    }

    /// Report inserts, failures and the breaker state here.
    pub fn set_metrics(&mut self, metrics: crate::telemetry::SharedMetrics) {
        self.metrics = Some(metrics);
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
            let client = self.client.clone();
            self.rt
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
        let skipped = self.commit(
            &id,
            "attribution_stats_minute",
            rows.len(),
            range,
            |client, id| async move {
                let mut ins = client
                    .insert::<StatsIngest<'_>>("attribution_stats_minute")
                    .await?;
                for r in rows {
                    ins.write(&StatsIngest::new(id, r)).await?;
                }
                ins.end().await
            },
        )?;
        if !skipped {
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
        let skipped = self.commit(
            &id,
            "conversions",
            rows.len(),
            range,
            |client, id| async move {
                let mut ins = client.insert::<ConversionIngest<'_>>("conversions").await?;
                for r in rows {
                    ins.write(&ConversionIngest::new(id, r)).await?;
                }
                ins.end().await
            },
        )?;
        if !skipped {
            self.totals.conversion_rows += rows.len() as u64;
        }
        Ok(())
    }

    /// Inserts one batch exactly once: skip if committed, else insert; on failure retry with
    /// backoff (looking the id up again first) until it succeeds. Returns whether the batch was
    /// already committed (and so skipped).
    fn commit<'a, F, Fut>(
        &mut self,
        id: &'a str,
        table: &str,
        rows: usize,
        range: (i64, i64),
        insert: F,
    ) -> Result<bool>
    where
        F: Fn(Client, &'a str) -> Fut,
        Fut: std::future::Future<Output = clickhouse::error::Result<()>>,
    {
        let mut delay = self.cfg.retry_initial;
        let mut attempt = 0u32;
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
            let check = attempt > 1 || self.epoch == self.verify_epoch;
            let outcome: Result<bool> = self.rt.block_on(async {
                let committed = check
                    && tokio::time::timeout(timeout, is_committed(&client, table, id, range))
                        .await
                        .map_err(|_| anyhow::anyhow!("timed out after {timeout:?}"))??;
                if committed {
                    return Ok(true);
                }
                tokio::time::timeout(timeout, insert(client.clone(), id))
                    .await
                    .map_err(|_| anyhow::anyhow!("timed out after {timeout:?}"))?
                    .map_err(explain)?;
                Ok(false)
            });
            match outcome {
                Ok(skipped) => {
                    self.epoch_batches.push(id.to_string());
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
                    self.totals.batches += 1;
                    if let Some(m) = &self.metrics {
                        use crate::telemetry::SinkKind;
                        m.sink_write(SinkKind::ClickHouse, true);
                        m.set_circuit_open(false);
                        if !skipped {
                            m.sink_rows(SinkKind::ClickHouse, table, rows as u64);
                        }
                    }
                    if skipped {
                        self.totals.batches_skipped += 1;
                        tracing::debug!(
                            table,
                            batch = id,
                            rows,
                            "batch already committed; skipped"
                        );
                    }
                    return Ok(skipped);
                }
                Err(e) if is_permanent(&e) => {
                    if let Some(m) = &self.metrics {
                        m.sink_write(crate::telemetry::SinkKind::ClickHouse, false);
                    }
                    return Err(e)
                        .with_context(|| format!("inserting into ClickHouse table {table}"));
                }
                Err(e) => {
                    self.totals.failures += 1;
                    self.breaker.consecutive_failures += 1;
                    let opens = self.breaker.consecutive_failures >= self.cfg.breaker_failures;
                    if let Some(m) = &self.metrics {
                        m.sink_write(crate::telemetry::SinkKind::ClickHouse, false);
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

    /// Flushes everything; afterwards all rows are in ClickHouse.
    pub fn close(&mut self) -> Result<ClickHouseTotals> {
        self.flush()?;
        Ok(self.totals)
    }
}

/// `table-e00000007-000042-1f2e…`: deterministic for the same rows at the same flush of the
/// same checkpoint epoch.
pub fn batch_id(table: &str, epoch: u64, seq: u64, content: u64) -> String {
    format!("{table}-e{epoch:08}-{seq:06}-{content:016x}")
}

/// Whether rows of batch `id` are in `table`, looked up in the data itself (the rows and their
/// `batch_id` are written in one part, so this cannot disagree with what was inserted). `range`
/// is the batch's time range, which prunes the lookup to the partitions it touches.
async fn is_committed(client: &Client, table: &str, id: &str, range: (i64, i64)) -> Result<bool> {
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

/// Errors a retry cannot fix (bad credentials, missing or incompatible tables).
fn is_permanent(e: &anyhow::Error) -> bool {
    let t = e.to_string();
    t.contains("refused the credentials")
        || t.contains("does not exist")
        || t.contains("Code: 60")
        || t.contains("Code: 16")
        || t.contains("Code: 47")
}

#[cfg(test)]
mod url_tests {
    use super::*;

    fn url_problems(url: &str) -> Vec<String> {
        ClickHouseConfig {
            url: url.to_string(),
            ..ClickHouseConfig::default()
        }
        .validate()
        .into_iter()
        .filter(|(key, _)| *key == "url")
        .map(|(_, problem)| problem)
        .collect()
    }

    #[test]
    fn credentials_in_the_url_are_refused_without_naming_them() {
        for url in [
            "http://127.0.0.1:8123/?password=hunter2",
            "http://127.0.0.1:8123/?database=x&user=alice&password=hunter2",
            "http://127.0.0.1:8123?PASSWORD=hunter2",
            "http://127.0.0.1:8123/?pass%77ord=hunter2#top",
            "https://alice:hunter2@ch.example:8443",
            "http://alice:hun/ter?2@ch.example:8123",
            "clickhouse://alice:hunter2@127.0.0.1",
            "alice:hunter2@127.0.0.1:8123",
        ] {
            let problems = url_problems(url);
            assert!(
                problems
                    .iter()
                    .any(|p| p.contains("must not contain credentials")),
                "{url}: {problems:?}"
            );
            for p in &problems {
                for secret in ["hunter2", "hun/ter", "alice"] {
                    assert!(!p.contains(secret), "{url}: `{secret}` echoed in {p:?}");
                }
                assert!(!p.contains("hunter"), "{url}: {p:?}");
            }
        }
    }

    #[test]
    fn a_url_without_credentials_is_accepted_with_or_without_a_query() {
        for url in [
            "http://127.0.0.1:8123",
            "https://ch.example:8443/",
            "http://127.0.0.1:8123/?max_execution_time=5",
        ] {
            assert_eq!(url_problems(url), Vec::<String>::new(), "{url}");
        }
    }

    #[test]
    fn the_problem_names_the_way_to_pass_credentials() {
        let problems = url_problems("http://127.0.0.1:8123/?user=alice");
        assert_eq!(problems.len(), 1, "{problems:?}");
        for way in [
            "ATTRIBD_CLICKHOUSE_USER",
            "ATTRIBD_CLICKHOUSE_PASSWORD",
            "password_file",
            "`user` query parameter",
        ] {
            assert!(
                problems[0].contains(way),
                "{way} missing in {}",
                problems[0]
            );
        }
    }

    #[test]
    fn a_logged_url_has_no_query_string_fragment_or_user_info() {
        for (url, logged) in [
            ("http://127.0.0.1:8123", "http://127.0.0.1:8123"),
            (
                "http://127.0.0.1:8123/?session_id=t0k3n&password=x",
                "http://127.0.0.1:8123/",
            ),
            ("https://ch.example/db#frag", "https://ch.example/db"),
            (
                "http://alice:hunter2@ch.example:8123/",
                "http://ch.example:8123/",
            ),
            ("http://alice:p@ss/w?rd@ch.example", "http://ch.example"),
            ("alice:hunter2@ch.example:8123", "ch.example:8123"),
        ] {
            assert_eq!(loggable_url(url), logged, "{url}");
        }
    }

    #[test]
    fn a_wrong_scheme_is_reported_without_the_credentials() {
        let problems = url_problems("clickhouse://u:hunter2@127.0.0.1/?password=hunter3");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("got \"clickhouse://127.0.0.1/\"")),
            "{problems:?}"
        );
        assert!(
            problems.iter().all(|p| !p.contains("hunter")),
            "{problems:?}"
        );
    }
}
