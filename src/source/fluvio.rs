//! The Fluvio source: clicks and conversions from Fluvio topics, partition by partition.
//!
//! Each instance owns a set of partitions (`partitions = []` means all). Edges key both topics
//! by `click_id`, so a click and its conversions share a partition number and the join stays
//! local to the instance that owns it (see `docs/scaling.md`).
//!
//! The logic — turning records into [`RawBatch`]es whose positions are Fluvio offsets,
//! remembering what was handed downstream, committing only what the sinks made durable,
//! noticing idleness — lives in [`PartitionReader`] over the small [`PartitionLog`] trait, so
//! it is tested with an in-memory log. [`FluvioLog`] is the real client behind the trait.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::RawBatch;
use crate::event::Position;

/// User-facing options of the Fluvio source (`[source.fluvio]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FluvioSourceConfig {
    /// SC endpoint, `host:port`.
    pub endpoint: String,
    pub clicks_topic: String,
    pub conversions_topic: String,
    /// Partitions this instance owns; empty = all of them.
    pub partitions: Vec<u32>,
    /// Where a consumer without a committed offset starts: `beginning` or `end`.
    pub start: StartFrom,
    /// Consumer name under which offsets are committed (one per instance).
    pub consumer: String,
    /// TLS to the cluster; absent = plain TCP.
    pub tls: Option<FluvioTls>,
    /// Stop (everything flushed and committed) after no new record for this long — for
    /// backfills and tests. Absent: run until stopped.
    #[serde(with = "humantime_serde")]
    pub exit_when_idle: Option<Duration>,
}

impl Default for FluvioSourceConfig {
    fn default() -> Self {
        FluvioSourceConfig {
            endpoint: "127.0.0.1:9003".to_string(),
            clicks_topic: "clicks".to_string(),
            conversions_topic: "conversions".to_string(),
            partitions: Vec::new(),
            start: StartFrom::Beginning,
            consumer: "attribd".to_string(),
            tls: None,
            exit_when_idle: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    Beginning,
    End,
}

/// Verified TLS with certificate files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FluvioTls {
    pub domain: String,
    pub ca_cert: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// One record as the source logic needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub offset: i64,
    pub value: Vec<u8>,
}

/// One partition of one topic: what [`PartitionReader`] needs from Fluvio.
pub trait PartitionLog: Send {
    /// Up to `max` records, waiting at most `wait` for the first; empty when idle.
    fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<LogRecord>>;
    /// Persists the position after `offset` (everything up to it is durable downstream).
    fn commit(&mut self, offset: i64) -> Result<()>;
    /// Offset the next produced record will get (log end), when known — for lag.
    fn end_offset(&mut self) -> Option<i64>;
}

/// Reads one partition into raw batches and keeps the bookkeeping for commits and lag.
pub struct PartitionReader<L> {
    pub topic: String,
    pub partition: u32,
    log: L,
    /// Highest offset handed downstream.
    emitted: Option<i64>,
    /// Highest offset committed.
    committed: Option<i64>,
    last_record: Instant,
}

impl<L: PartitionLog> PartitionReader<L> {
    pub fn new(topic: &str, partition: u32, log: L) -> Self {
        PartitionReader {
            topic: topic.to_string(),
            partition,
            log,
            emitted: None,
            committed: None,
            last_record: Instant::now(),
        }
    }

    /// The next batch (positions are Fluvio offsets), or `None` when nothing arrived in `wait`.
    pub fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Option<RawBatch>> {
        let records = self.log.fetch(max, wait)?;
        if records.is_empty() {
            return Ok(None);
        }
        let bytes = records.iter().map(|r| r.value.len()).sum();
        let mut batch = RawBatch::with_capacity(bytes, records.len());
        for r in &records {
            batch.push_line(
                &r.value,
                Position {
                    line: r.offset as u64,
                    offset: r.offset as u64,
                },
            );
            self.emitted = Some(self.emitted.map_or(r.offset, |e| e.max(r.offset)));
        }
        batch.end = Position {
            line: self.emitted.map_or(0, |e| e as u64 + 1),
            offset: self.emitted.map_or(0, |e| e as u64 + 1),
        };
        batch.partition = Some(self.partition);
        self.last_record = Instant::now();
        Ok(Some(batch))
    }

    /// Call once everything emitted so far is durable in every sink: commits it.
    pub fn commit_emitted(&mut self) -> Result<()> {
        if let Some(e) = self.emitted
            && self.committed.is_none_or(|c| c < e)
        {
            self.log.commit(e).with_context(|| {
                format!("committing {}/{} offset {e}", self.topic, self.partition)
            })?;
            self.committed = Some(e);
        }
        Ok(())
    }

    /// Records behind the log end (the consumer lag), when the end is known.
    pub fn lag(&mut self) -> Option<i64> {
        let end = self.log.end_offset()?;
        Some(end - self.emitted.map_or(0, |e| e + 1)).map(|l| l.max(0))
    }

    pub fn idle_for(&self) -> Duration {
        self.last_record.elapsed()
    }

    pub fn committed(&self) -> Option<i64> {
        self.committed
    }
}

/// Reads every owned partition of `topic` round-robin, sending batches with `send`, until
/// `send` refuses (pipeline stopping) or all partitions were idle for `exit_when_idle`.
/// Returns the readers so the pipeline can commit once the outputs are durable. Every few
/// seconds each partition's consumer lag goes to `on_lag(topic, partition, records)`.
pub fn run_topic<L: PartitionLog>(
    mut readers: Vec<PartitionReader<L>>,
    exit_when_idle: Option<Duration>,
    mut send: impl FnMut(RawBatch) -> bool,
    mut on_lag: impl FnMut(&str, u32, i64),
) -> Result<Vec<PartitionReader<L>>> {
    let mut last_lag_log = Instant::now();
    let mut last_lag_report = Instant::now();
    loop {
        let mut any = false;
        for r in readers.iter_mut() {
            if let Some(batch) = r.next_batch(super::BATCH_LINES, Duration::from_millis(50))? {
                any = true;
                if !send(batch) {
                    return Ok(readers);
                }
            }
        }
        if !any
            && let Some(idle) = exit_when_idle
            && readers.iter().all(|r| r.idle_for() >= idle)
        {
            tracing::info!(idle = ?idle, "no new records; source finished");
            return Ok(readers);
        }
        if readers.is_empty() {
            return Ok(readers);
        }
        if last_lag_report.elapsed() >= Duration::from_secs(2) {
            last_lag_report = Instant::now();
            let log = last_lag_log.elapsed() >= Duration::from_secs(30);
            if log {
                last_lag_log = Instant::now();
            }
            for r in readers.iter_mut() {
                if let Some(lag) = r.lag() {
                    on_lag(&r.topic, r.partition, lag);
                    if log {
                        tracing::info!(topic = %r.topic, partition = r.partition, lag, "consumer lag");
                    }
                }
            }
        }
    }
}

/// The real Fluvio partition behind [`PartitionLog`].
pub struct FluvioLog {
    rt: tokio::runtime::Runtime,
    fluvio: fluvio::Fluvio,
    topic: String,
    partition: u32,
    stream: std::pin::Pin<
        Box<
            dyn fluvio::consumer::ConsumerStream<
                    Item = std::result::Result<
                        fluvio::consumer::Record,
                        fluvio::dataplane::link::ErrorCode,
                    >,
                > + Send,
        >,
    >,
}

impl FluvioLog {
    /// Connects (retrying with backoff until the cluster answers) and opens the partition at
    /// the committed offset of `cfg.consumer`, or at `cfg.start` without one.
    /// `resume_at` (the next offset recorded by a checkpoint) overrides both.
    pub fn open(
        cfg: &FluvioSourceConfig,
        topic: &str,
        partition: u32,
        resume_at: Option<i64>,
    ) -> Result<FluvioLog> {
        use fluvio::consumer::{ConsumerConfigExtBuilder, OffsetManagementStrategy};
        let rt = runtime()?;
        let fluvio = rt.block_on(connect(cfg))?;
        let start = match (resume_at, cfg.start) {
            (Some(next), _) => fluvio::Offset::absolute(next)
                .map_err(|e| anyhow::anyhow!("resume offset {next}: {e}"))?,
            (None, StartFrom::Beginning) => fluvio::Offset::beginning(),
            (None, StartFrom::End) => fluvio::Offset::end(),
        };
        let consumer_config = ConsumerConfigExtBuilder::default()
            .topic(topic.to_string())
            .partition(partition)
            .offset_consumer(format!("{}-{topic}-{partition}", cfg.consumer))
            .offset_start(start)
            .offset_strategy(OffsetManagementStrategy::Manual)
            .build()
            .context("building the Fluvio consumer config")?;
        let stream = rt
            .block_on(fluvio.consumer_with_config(consumer_config))
            .with_context(|| format!("opening Fluvio topic {topic} partition {partition}"))?;
        Ok(FluvioLog {
            rt,
            fluvio,
            topic: topic.to_string(),
            partition,
            stream: Box::pin(stream),
        })
    }

    /// Partition ids of a topic.
    pub fn partitions(cfg: &FluvioSourceConfig, topic: &str) -> Result<Vec<u32>> {
        use fluvio::metadata::topic::TopicSpec;
        let rt = runtime()?;
        rt.block_on(async {
            let fluvio = connect(cfg).await?;
            let admin = fluvio.admin().await;
            let topics = admin
                .list::<TopicSpec, _>(vec![topic.to_string()])
                .await
                .with_context(|| format!("listing Fluvio topic {topic}"))?;
            let spec = topics
                .into_iter()
                .next()
                .with_context(|| format!("Fluvio topic {topic} does not exist"))?;
            Ok((0..spec.spec.partitions()).collect())
        })
    }
}

/// Connects to the cluster, retrying with exponential backoff (the cluster may still be
/// starting, or briefly away).
/// The single-threaded runtime each blocking Fluvio call runs on.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

impl FluvioSourceConfig {
    /// Defaults, with the cluster at `endpoint` (for `produce` and topic set-up).
    fn at(endpoint: &str) -> FluvioSourceConfig {
        FluvioSourceConfig {
            endpoint: endpoint.to_string(),
            ..FluvioSourceConfig::default()
        }
    }
}

async fn connect(cfg: &FluvioSourceConfig) -> Result<fluvio::Fluvio> {
    let mut config = fluvio::FluvioClusterConfig::new(cfg.endpoint.clone());
    if let Some(tls) = &cfg.tls {
        config = config.with_tls(fluvio::config::TlsPaths {
            domain: tls.domain.clone(),
            key: tls.client_key.clone(),
            cert: tls.client_cert.clone(),
            ca_cert: tls.ca_cert.clone(),
        });
    }
    let mut delay = Duration::from_millis(200);
    let mut attempts = 0;
    loop {
        match fluvio::Fluvio::connect_with_config(&config).await {
            Ok(f) => return Ok(f),
            Err(e) if attempts < 8 => {
                attempts += 1;
                tracing::warn!(endpoint = %cfg.endpoint, error = %e, retry_in = ?delay, "cannot reach Fluvio; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "cannot connect to Fluvio at {}: {e}",
                    cfg.endpoint
                ));
            }
        }
    }
}

impl PartitionLog for FluvioLog {
    fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<LogRecord>> {
        use futures_util::StreamExt;
        let stream = &mut self.stream;
        self.rt.block_on(async {
            let mut out = Vec::new();
            let deadline = tokio::time::Instant::now() + wait;
            while out.len() < max {
                // After the first record, only take what is already there.
                let until = if out.is_empty() {
                    deadline
                } else {
                    tokio::time::Instant::now() + Duration::from_millis(1)
                };
                match tokio::time::timeout_at(until, stream.next()).await {
                    Ok(Some(Ok(r))) => out.push(LogRecord {
                        offset: r.offset(),
                        value: r.value().to_vec(),
                    }),
                    Ok(Some(Err(code))) => {
                        anyhow::bail!("Fluvio stream error: {code:?}")
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            Ok(out)
        })
    }

    fn commit(&mut self, _offset: i64) -> Result<()> {
        let stream = &mut self.stream;
        self.rt.block_on(async {
            stream
                .offset_commit()
                .await
                .map_err(|e| anyhow::anyhow!("offset commit: {e:?}"))?;
            stream
                .offset_flush()
                .await
                .map_err(|e| anyhow::anyhow!("offset flush: {e:?}"))
        })
    }

    fn end_offset(&mut self) -> Option<i64> {
        use fluvio::metadata::partition::PartitionSpec;
        let key = format!("{}-{}", self.topic, self.partition);
        let fluvio = &self.fluvio;
        self.rt.block_on(async {
            let admin = fluvio.admin().await;
            let list = admin.list::<PartitionSpec, _>(vec![key]).await.ok()?;
            list.into_iter().next().map(|p| p.status.leader.leo)
        })
    }
}

/// `attribd produce`: loads an NDJSON file into `topic`, each record keyed by its `click_id`
/// (so clicks and conversions of one click share a partition). Lines without a readable
/// `click_id` are sent unkeyed and end up as dead letters of the pipeline, not lost here.
/// Returns the number of records sent.
pub fn produce(endpoint: &str, topic: &str, file: &str) -> Result<u64> {
    use fluvio::RecordKey;
    #[derive(Deserialize)]
    struct KeyOnly<'a> {
        #[serde(borrow)]
        click_id: Option<std::borrow::Cow<'a, str>>,
    }
    let input = super::file::Input::parse(file);
    let total = match &input {
        super::file::Input::Path(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
        super::file::Input::Stdin => 0,
    };
    let reader = input.open()?;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("→ {topic}"));
    let cfg = FluvioSourceConfig::at(endpoint);
    let rt = runtime()?;
    let fluvio = rt.block_on(connect(&cfg))?;
    let producer = rt
        .block_on(fluvio.topic_producer(topic.to_string()))
        .with_context(|| format!("opening a producer for Fluvio topic {topic}"))?;
    let mut sent = 0u64;
    let mut failure = None;
    super::file::read_batches(reader, |batch| {
        let result = rt.block_on(async {
            for rec in &batch.records {
                let line = batch.line(rec);
                let key = serde_json::from_slice::<KeyOnly>(line)
                    .ok()
                    .and_then(|k| k.click_id.map(|c| c.into_owned()));
                match key {
                    Some(k) => producer.send(k, line.to_vec()).await?,
                    None => producer.send(RecordKey::NULL, line.to_vec()).await?,
                };
            }
            producer.flush().await
        });
        match result {
            Ok(()) => {
                sent += batch.len() as u64;
                bar.inc(batch.data.len() as u64 + batch.len() as u64);
                true
            }
            Err(e) => {
                failure = Some(e);
                false
            }
        }
    })
    .with_context(|| format!("reading {file}"))?;
    bar.finish();
    if let Some(e) = failure {
        return Err(anyhow::anyhow!("producing to Fluvio topic {topic}: {e}"));
    }
    Ok(sent)
}

/// Creates a topic with `partitions` partitions (replication 1) unless it exists.
pub fn ensure_topic(endpoint: &str, topic: &str, partitions: u32) -> Result<()> {
    use fluvio::metadata::topic::TopicSpec;
    let cfg = FluvioSourceConfig::at(endpoint);
    let rt = runtime()?;
    rt.block_on(async {
        let fluvio = connect(&cfg).await?;
        let admin = fluvio.admin().await;
        let existing = admin
            .list::<TopicSpec, _>(vec![topic.to_string()])
            .await
            .with_context(|| format!("listing Fluvio topic {topic}"))?;
        if existing.is_empty() {
            admin
                .create(
                    topic.to_string(),
                    false,
                    TopicSpec::new_computed(partitions, 1, None),
                )
                .await
                .with_context(|| format!("creating Fluvio topic {topic}"))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory partition: records appended by the test, commits recorded.
    #[derive(Default)]
    struct MemoryLog {
        records: Vec<LogRecord>,
        next: usize,
        commits: Vec<i64>,
    }

    impl PartitionLog for MemoryLog {
        fn fetch(&mut self, max: usize, _wait: Duration) -> Result<Vec<LogRecord>> {
            let end = (self.next + max).min(self.records.len());
            let out = self.records[self.next..end].to_vec();
            self.next = end;
            Ok(out)
        }
        fn commit(&mut self, offset: i64) -> Result<()> {
            self.commits.push(offset);
            Ok(())
        }
        fn end_offset(&mut self) -> Option<i64> {
            Some(self.records.len() as i64)
        }
    }

    fn log(n: i64) -> MemoryLog {
        MemoryLog {
            records: (0..n)
                .map(|o| LogRecord {
                    offset: o,
                    value: format!("{{\"n\":{o}}}").into_bytes(),
                })
                .collect(),
            ..MemoryLog::default()
        }
    }

    #[test]
    fn batches_carry_offsets_and_commits_follow_durability_only() {
        let mut r = PartitionReader::new("clicks", 3, log(10));
        assert_eq!(r.lag(), Some(10));
        let b = r.next_batch(4, Duration::ZERO).unwrap().unwrap();
        assert_eq!(b.len(), 4);
        assert_eq!(b.records[3].position.line, 3);
        assert_eq!(b.line(&b.records[2]), b"{\"n\":2}");
        // Nothing is committed until the pipeline says the outputs are durable.
        assert_eq!(r.log.commits, Vec::<i64>::new());
        assert_eq!(r.lag(), Some(6));
        r.commit_emitted().unwrap();
        assert_eq!(r.log.commits, [3]);
        // Committing again without new records does nothing.
        r.commit_emitted().unwrap();
        assert_eq!(r.log.commits, [3]);
        let b = r.next_batch(100, Duration::ZERO).unwrap().unwrap();
        assert_eq!(b.len(), 6);
        assert!(r.next_batch(100, Duration::ZERO).unwrap().is_none(), "idle");
        r.commit_emitted().unwrap();
        assert_eq!(r.log.commits, [3, 9]);
        assert_eq!(r.committed(), Some(9));
        assert_eq!(r.lag(), Some(0));
    }

    #[test]
    fn run_topic_reads_all_partitions_and_stops_when_idle() {
        let readers = vec![
            PartitionReader::new("clicks", 0, log(5000)),
            PartitionReader::new("clicks", 1, log(3)),
        ];
        let mut lines = 0;
        let readers = run_topic(
            readers,
            Some(Duration::ZERO),
            |b| {
                lines += b.len();
                true
            },
            |_, _, _| {},
        )
        .unwrap();
        assert_eq!(lines, 5003);
        let emitted: Vec<_> = readers.iter().map(|r| r.emitted).collect();
        assert_eq!(emitted, [Some(4999), Some(2)]);
        // A refused send (pipeline stopping) ends the loop at once.
        let readers = vec![PartitionReader::new("clicks", 0, log(9000))];
        let readers = run_topic(readers, None, |_| false, |_, _, _| {}).unwrap();
        assert_eq!(
            readers[0].emitted,
            Some(super::super::BATCH_LINES as i64 - 1)
        );
    }

    #[test]
    fn an_empty_partition_commits_nothing() {
        let mut r = PartitionReader::new("clicks", 0, log(0));
        assert!(r.next_batch(10, Duration::ZERO).unwrap().is_none());
        r.commit_emitted().unwrap();
        assert!(r.log.commits.is_empty());
        assert_eq!(r.lag(), Some(0));
    }
}
