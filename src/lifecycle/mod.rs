//! Data lifecycle: what happens to outputs after they are written — retention (deleting what
//! has outlived `[retention]`) and subject requests (export and erasure of one customer's
//! data, `privacy.rs`).
//!
//! It sits beside the flow, not in it: the daemon's checkpoint writer tells the lifecycle
//! thread ([`Lifecycle`]) each epoch it has made durable, and the thread works only on files of
//! epochs up to that one — closed, and never rewritten by a restart — so it needs no lock with
//! the sinks. `attribd retention` and `attribd privacy` do the same work from the command line
//! when no daemon holds the output directory.

pub mod cli;
pub mod export;
pub mod privacy;
pub mod retention;
pub mod scan;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, Sender, bounded};

use crate::config::PipelineConfig;
use crate::sink::clickhouse::ClickHouseConfig;
use crate::telemetry::Metrics;
use retention::RetentionConfig;

/// The running daemon's lifecycle thread. Dropping the handle's sender ends it.
pub struct Lifecycle {
    settled: Option<Sender<(u64, u64)>>,
    erased: Arc<privacy::Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Worker {
    out: std::path::PathBuf,
    retention: Option<RetentionConfig>,
    clickhouse: Option<ClickHouseConfig>,
    privacy: privacy::Requests,
    metrics: Arc<Metrics>,
    last_pass: Option<Instant>,
}

impl Lifecycle {
    /// Starts the thread, with the erasure ledger loaded.
    pub fn start(cfg: &PipelineConfig, metrics: Arc<Metrics>) -> Result<Lifecycle> {
        let (tx, rx) = bounded::<(u64, u64)>(4);
        let requests = privacy::Requests::new(cfg);
        let erased = requests.shared();
        let mut worker = Worker {
            out: cfg.sink.parquet.out.clone(),
            retention: cfg.retention.clone(),
            clickhouse: cfg.sink.clickhouse.clone(),
            privacy: requests,
            metrics,
            last_pass: None,
        };
        let thread = std::thread::Builder::new()
            .name("lifecycle".into())
            .spawn(move || worker.run(rx))
            .context("starting the lifecycle thread")?;
        Ok(Lifecycle {
            settled: Some(tx),
            erased,
            thread: Some(thread),
        })
    }

    /// A sender the checkpoint writer uses to announce each epoch made durable, with the
    /// erasure filter's version at its barrier.
    pub fn notifier(&self) -> Option<Sender<(u64, u64)>> {
        self.settled.clone()
    }

    /// The erasure filter the sinks' senders apply.
    pub fn erased(&self) -> Arc<privacy::Shared> {
        self.erased.clone()
    }

    /// Lets the thread finish what it is doing, then ends it.
    pub fn finish(&mut self) {
        self.settled = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Lifecycle {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Worker {
    fn run(&mut self, settled: Receiver<(u64, u64)>) {
        loop {
            // Every announced epoch; the last one is what counts. Between checkpoints, new
            // subject requests are picked up.
            let mut latest = match settled.recv_timeout(Duration::from_secs(1)) {
                Ok(latest) => latest,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if let Err(e) = self.privacy.poll() {
                        tracing::error!(error = %format!("{e:#}"), "reading subject requests");
                    }
                    continue;
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            };
            while let Ok(later) = settled.try_recv() {
                latest = later;
            }
            let (epoch, filter_version) = latest;
            if let Err(e) = self.privacy.after_checkpoint(filter_version, &self.metrics) {
                tracing::error!(error = %format!("{e:#}"), "subject request failed; retried after the next checkpoint");
            }
            if let Err(e) = self.retention_pass(epoch) {
                tracing::error!(error = %format!("{e:#}"), "retention pass failed; retried after the next checkpoint");
            }
        }
    }

    fn retention_pass(&mut self, epoch: u64) -> Result<()> {
        let Some(cfg) = &self.retention else {
            return Ok(());
        };
        if self.last_pass.is_some_and(|t| t.elapsed() < cfg.every) {
            return Ok(());
        }
        let now = retention::now_ms();
        let expired = retention::plan(&self.out, cfg, now, Some(epoch))?;
        let deleted = retention::delete(&expired)?;
        for (table, partitions, bytes) in &deleted.per_table {
            self.metrics.retention_deleted(table, *partitions, *bytes);
            tracing::info!(
                table,
                partitions,
                bytes,
                "retention: expired partitions deleted"
            );
        }
        if let Some(ch) = &self.clickhouse {
            let dropped = clickhouse_pass(ch, cfg, now, false)?;
            for p in &dropped {
                self.metrics.retention_deleted(p.table, 1, 0);
                tracing::info!(table = p.table, partition = %p.partition, "retention: ClickHouse partition dropped");
            }
        }
        // Only a pass that went through waits `every`; a failed one is retried next time.
        self.last_pass = Some(Instant::now());
        Ok(())
    }
}

/// On a server without TTL, the expired monthly partitions (dropped unless `dry_run`); on a
/// current server nothing (TTL does it).
pub fn clickhouse_pass(
    ch: &ClickHouseConfig,
    cfg: &RetentionConfig,
    now_ms: i64,
    dry_run: bool,
) -> Result<Vec<retention::ExpiredPartition>> {
    use crate::sink::clickhouse::config::{Credentials, block_on, client};
    use crate::sink::clickhouse::migrations::server_version;
    let creds = Credentials::load(ch)?;
    let c = client(ch, &creds);
    block_on(async {
        if server_version(&c).await?.modern() {
            return Ok(Vec::new());
        }
        let expired = retention::clickhouse_expired(&c, &ch.database, cfg, now_ms).await?;
        if !dry_run {
            retention::drop_clickhouse(&c, &ch.database, &expired).await?;
        }
        Ok(expired)
    })?
}

/// How long the command line waits for a running daemon before it gives up on it.
pub const DAEMON_WAIT: Duration = Duration::from_secs(600);
