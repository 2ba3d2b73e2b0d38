//! Talking to the Fluvio cluster about topics rather than records: connecting (with retries),
//! partition counts, log ends, partition leaders, committed consumer offsets, topic creation.
//!
//! The SC's list calls filter by *substring* (`conversions` also returns `conversions1p`), so
//! every lookup here keeps exact name matches only.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use super::FluvioSourceConfig;

/// The single-threaded runtime the Fluvio client runs on (one per source or command).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// Capped exponential backoff for reconnects: 200 ms doubling to `max`.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Backoff {
        Backoff {
            next: Duration::from_millis(200),
            max,
        }
    }

    pub fn wait(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = Duration::from_millis(200);
    }
}

/// The client's view of the cluster: its endpoint and TLS settings.
pub fn cluster_config(cfg: &FluvioSourceConfig) -> fluvio::FluvioClusterConfig {
    let config = fluvio::FluvioClusterConfig::new(cfg.endpoint.clone());
    match &cfg.tls {
        Some(tls) => config.with_tls(fluvio::config::TlsPaths {
            domain: tls.domain.clone(),
            key: tls.client_key.clone(),
            cert: tls.client_cert.clone(),
            ca_cert: tls.ca_cert.clone(),
        }),
        None => config,
    }
}

/// Connects to the SC, retrying with capped backoff (the cluster may be starting or briefly
/// away) until `give_up_after` (forever when `None`). `on_retry` runs before each wait.
pub async fn connect(
    cfg: &FluvioSourceConfig,
    give_up_after: Option<Duration>,
    mut on_retry: impl FnMut(&str),
) -> Result<fluvio::Fluvio> {
    let config = cluster_config(cfg);
    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_secs(10));
    loop {
        match fluvio::Fluvio::connect_with_config(&config).await {
            Ok(f) => return Ok(f),
            Err(e) => {
                if give_up_after.is_some_and(|g| started.elapsed() >= g) {
                    return Err(anyhow!(
                        "cannot connect to Fluvio at {} (gave up after {:?}): {e}",
                        cfg.endpoint,
                        started.elapsed()
                    ));
                }
                let wait = backoff.wait();
                on_retry(&e.to_string());
                tracing::warn!(endpoint = %cfg.endpoint, error = %e, retry_in = ?wait, "cannot reach Fluvio; retrying");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Number of partitions of `topic` (exactly that name); an error if it does not exist.
pub async fn partition_count(fluvio: &fluvio::Fluvio, topic: &str) -> Result<Option<u32>> {
    use fluvio::metadata::topic::TopicSpec;
    let admin = fluvio.admin().await;
    let topics = admin
        .list::<TopicSpec, _>(vec![topic.to_string()])
        .await
        .with_context(|| format!("listing Fluvio topic {topic}"))?;
    Ok(topics
        .into_iter()
        .find(|t| t.name == topic)
        .map(|t| t.spec.partitions()))
}

/// Log start and end (`base_offset`, `leo`) of every partition of `topics`, by (topic,
/// partition), as the SC last heard from the SPUs.
pub async fn log_ends(
    fluvio: &fluvio::Fluvio,
    topics: &[String],
) -> Result<HashMap<(String, u32), (i64, i64)>> {
    use fluvio::metadata::partition::PartitionSpec;
    let admin = fluvio.admin().await;
    let list = admin
        .all::<PartitionSpec>()
        .await
        .context("listing Fluvio partitions")?;
    let mut out = HashMap::new();
    for p in list {
        // Partition objects are named `<topic>-<partition>`; topic names may contain `-`.
        let Some((topic, partition)) = p.name.rsplit_once('-') else {
            continue;
        };
        let Ok(partition) = partition.parse::<u32>() else {
            continue;
        };
        if topics.iter().any(|t| t == topic) {
            out.insert(
                (topic.to_string(), partition),
                (p.status.base_offset.max(0), p.status.leader.leo),
            );
        }
    }
    Ok(out)
}

/// The SPU that leads `topic`/`partition` (its id, name and public endpoint).
pub async fn leader_spu(
    fluvio: &fluvio::Fluvio,
    topic: &str,
    partition: u32,
) -> Result<fluvio::metadata::objects::Metadata<fluvio::metadata::spu::SpuSpec>> {
    use fluvio::metadata::partition::PartitionSpec;
    use fluvio::metadata::spu::SpuSpec;
    let admin = fluvio.admin().await;
    let name = format!("{topic}-{partition}");
    let leader = admin
        .all::<PartitionSpec>()
        .await
        .context("listing Fluvio partitions")?
        .into_iter()
        .find(|p| p.name == name)
        .map(|p| p.spec.leader)
        .ok_or_else(|| anyhow!("no Fluvio partition {name}"))?;
    admin
        .all::<SpuSpec>()
        .await
        .context("listing Fluvio SPUs")?
        .into_iter()
        .find(|s| s.spec.id == leader)
        .ok_or_else(|| anyhow!("the leader of {name}, SPU {leader}, is not registered"))
}

/// Next offset to read per partition of `topic`, from the offsets `consumer` committed.
pub async fn committed_offsets(
    fluvio: &fluvio::Fluvio,
    consumer: &str,
    topic: &str,
) -> Result<HashMap<u32, i64>> {
    let all = fluvio
        .consumer_offsets()
        .await
        .context("reading committed Fluvio consumer offsets")?;
    Ok(all
        .into_iter()
        .filter(|c| c.consumer_id == consumer && c.topic == topic)
        .map(|c| (c.partition, c.offset + 1))
        .collect())
}

/// Creates a topic with `partitions` partitions (replication 1) unless one with exactly
/// that name exists.
pub fn ensure_topic(endpoint: &str, topic: &str, partitions: u32) -> Result<()> {
    use fluvio::metadata::topic::TopicSpec;
    let cfg = FluvioSourceConfig::at(endpoint);
    let rt = runtime()?;
    rt.block_on(async {
        let fluvio = connect(&cfg, Some(Duration::from_secs(30)), |_| {}).await?;
        if partition_count(&fluvio, topic).await?.is_none() {
            let admin = fluvio.admin().await;
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
