//! `attribd ingest`: the stateless HTTP edge. The same door as the HTTP source of `attribd
//! run` (keys, signatures, limits, the decoder's checks), with Fluvio as the destination: each
//! record goes to its stream's topic keyed by `click_id`, and a request is answered 202 once
//! Fluvio has acknowledged all of its records. Any number of edges can run side by side; the
//! pipelines reading the topics do the rest.
//!
//! ```text
//! edge request ─▶ door (source::http::server) ─▶ FluvioDestination ─▶ topic ─▶ attribd run (fluvio)
//! ```
//!
//! Settings come from a pipeline file: `[source.http]` for the door, `[source.fluvio]` for the
//! cluster and the topics (so one file can describe both the edge and the pipeline behind it),
//! `[limits]` for the decoder, `[metrics]` and `[log]`.

pub mod producer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use fluvio::{Isolation, TopicProducerConfigBuilder};
use tokio::sync::mpsc;

use crate::config::{ConfigError, ConfigProblem, PipelineConfig};
use crate::event::decode::Decoder;
use crate::source::fluvio::{FluvioSourceConfig, admin};
use crate::source::http::{ByteBudget, Destination, Door, DoorServer, Submit, load_keys};
use crate::telemetry::Metrics;
use producer::FluvioDestination;

/// How long a stopping edge waits for its producers (each group takes at most 15 s).
const STOP_GRACE: Duration = Duration::from_secs(40);

/// Checks the sections the edge uses, whatever the file's `source.kind`.
pub fn validate(cfg: &PipelineConfig, file: &str) -> Result<(), ConfigError> {
    let problems: Vec<ConfigProblem> = cfg
        .source
        .http
        .validate()
        .into_iter()
        .chain(cfg.source.fluvio.validate())
        .map(|(key, problem)| ConfigProblem {
            key: key.to_string(),
            problem,
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError {
            file: file.to_string(),
            problems,
        })
    }
}

/// Runs the edge until `stop` (SIGTERM): the door stops taking requests, answers those in
/// flight, and the producers flush before it returns.
pub fn run(cfg: &PipelineConfig, stop: Arc<AtomicBool>) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    let _server = match cfg.metrics.enabled_addr() {
        Some(addr) => Some(crate::telemetry::server::serve(addr, metrics.clone())?),
        None => None,
    };
    let http = &cfg.source.http;
    let keys = load_keys(http)?;
    let (listener, local) =
        crate::telemetry::server::bind(&http.listen, "HTTP ingest (source.http.listen)")?;
    let decoder = Decoder::new(Arc::from("http"), cfg.decode_limits());
    let ready = Arc::new(AtomicBool::new(false));
    let (click_tx, click_rx) = mpsc::channel(http.queue_requests);
    let (conv_tx, conv_rx) = mpsc::channel(http.queue_requests);
    let destinations: [Arc<dyn Destination>; 2] = [
        Arc::new(FluvioDestination {
            tx: click_tx,
            ready: ready.clone(),
            budget: ByteBudget::new(http.queue_bytes),
        }),
        Arc::new(FluvioDestination {
            tx: conv_tx,
            ready: ready.clone(),
            budget: ByteBudget::new(http.queue_bytes),
        }),
    ];
    let door = Door::new(http, keys, decoder, destinations, metrics.clone());
    let server = DoorServer::new(listener, door, http)?;
    tracing::info!(
        listen = %local,
        fluvio = %cfg.source.fluvio.endpoint,
        clicks_topic = %cfg.source.fluvio.clicks_topic,
        conversions_topic = %cfg.source.fluvio.conversions_topic,
        "attribd ingest: the door answers 503 until Fluvio is connected"
    );

    // The producers: their own runtime, connected in the background (a daemon waits for its
    // cluster; the door answers 503 meanwhile, /ready too).
    let fluvio_cfg = cfg.source.fluvio.clone();
    // A record plus its key and batch header fits in a produce request.
    let max_request_bytes = http.max_body_bytes + 64 * 1024;
    let producers_stop = stop.clone();
    let producers_metrics = metrics.clone();
    let producers = std::thread::Builder::new()
        .name("ingest-fluvio".into())
        .spawn(move || -> Result<()> {
            let rt = admin::runtime()?;
            let r = rt.block_on(produce(
                fluvio_cfg,
                max_request_bytes,
                [click_rx, conv_rx],
                ready,
                producers_metrics.clone(),
                producers_stop.clone(),
            ));
            if let Err(e) = &r {
                tracing::error!(error = %format!("{e:#}"), "Fluvio producers failed; stopping");
                producers_metrics
                    .health
                    .source_failed
                    .store(true, Ordering::Relaxed);
                producers_stop.store(true, Ordering::SeqCst);
            }
            r
        })
        .context("spawning the Fluvio producers")?;

    // Returns once `stop` is set and the requests in flight are answered; the door (and with
    // it the queues' senders) is dropped then, so the producers drain, flush and end.
    let served = server.run(stop.clone());
    stop.store(true, Ordering::SeqCst);
    // The producers end once their queues are drained; each group is bounded in time, but a
    // cluster gone silent must not keep a stopping edge forever.
    let deadline = Instant::now() + STOP_GRACE;
    while !producers.is_finished() {
        if Instant::now() >= deadline {
            served?;
            return Err(anyhow!(
                "the Fluvio producers did not finish within {STOP_GRACE:?} of the stop; \
                 requests in flight were answered 503 (or not at all) and may be retried"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let produced = producers
        .join()
        .map_err(|_| anyhow!("the Fluvio producer thread panicked"))?;
    served?;
    produced
}

/// Connects (retrying until `stop`), checks both topics exist, then produces both streams
/// until their queues close.
async fn produce(
    cfg: FluvioSourceConfig,
    max_request_bytes: usize,
    queues: [mpsc::Receiver<Submit>; 2],
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let connecting = admin::connect(&cfg, cfg.connect_timeout, |why| {
        tracing::warn!(endpoint = %cfg.endpoint, error = %why, "Fluvio not reachable yet; retrying");
    });
    let stopped = async {
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let fluvio = tokio::select! {
        f = connecting => f?,
        () = stopped => return Ok(()),
    };
    let mut tasks = Vec::new();
    for (topic, rx) in [cfg.clicks_topic.clone(), cfg.conversions_topic.clone()]
        .into_iter()
        .zip(queues)
    {
        if admin::partition_count(&fluvio, &topic).await?.is_none() {
            return Err(anyhow!(
                "Fluvio topic {topic:?} does not exist at {} (source.fluvio.clicks_topic / \
                 conversions_topic); create it first, e.g. `fluvio topic create {topic} -p 2`",
                cfg.endpoint
            ));
        }
        // Acknowledged only once the record is committed on the partition's replicas. A
        // request body is at most `max_body_bytes`, so no record it carries is too large for
        // one produce request.
        let config = TopicProducerConfigBuilder::default()
            .isolation(Isolation::ReadCommitted)
            .linger(Duration::from_millis(2))
            .max_request_size(max_request_bytes.max(1 << 20))
            .build()
            .map_err(|e| anyhow!("Fluvio producer settings: {e}"))?;
        let producer = fluvio
            .topic_producer_with_config(topic.clone(), config)
            .await
            .with_context(|| format!("opening a producer for Fluvio topic {topic}"))?;
        tasks.push(tokio::spawn(producer::run(producer, topic, rx)));
    }
    ready.store(true, Ordering::Relaxed);
    metrics
        .health
        .sources_connected
        .store(true, Ordering::Relaxed);
    tracing::info!("connected to Fluvio; the door takes requests");
    for t in tasks {
        t.await.context("a Fluvio producer task failed")?;
    }
    Ok(())
}
