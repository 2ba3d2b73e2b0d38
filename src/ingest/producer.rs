//! The Fluvio side of `attribd ingest`: a [`Destination`] per stream whose records go to the
//! stream's topic, keyed by `click_id`, a request answered once Fluvio has acknowledged every
//! one of its records.
//!
//! ```text
//! door ─▶ FluvioDestination (bounded queue) ─▶ producer task: send… flush, wait acks ─▶ answer
//! ```
//!
//! The task takes every request waiting in its queue at once (at most [`GROUP_MAX`]): one
//! flush and one round of acknowledgements serve them all, as the write-ahead log's group
//! commit does for `attribd run`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fluvio::{RecordKey, TopicProducerPool};
use tokio::sync::mpsc;

use crate::source::fluvio::partition_key;
use crate::source::http::{ByteBudget, Destination, Submit};

/// Most requests served by one flush.
pub const GROUP_MAX: usize = 1024;

/// A stream's producer, seen from the door. Until the cluster is connected and the topic
/// found, every request is a 503 (the sender retries); a full queue is a 503 too.
pub struct FluvioDestination {
    pub tx: mpsc::Sender<Submit>,
    pub ready: Arc<AtomicBool>,
    /// Bytes of records waiting for their acknowledgement (`queue_bytes`).
    pub budget: Arc<ByteBudget>,
}

impl Destination for FluvioDestination {
    fn submit(&self, mut s: Submit) -> Result<(), String> {
        if !self.ready.load(Ordering::Relaxed) {
            return Err("not connected to Fluvio yet; retry".into());
        }
        self.budget.hold(&mut s, "Fluvio")?;
        match self.tx.try_send(s) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                Err("backpressure: Fluvio is behind; retry".into())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err("the edge is stopping".into()),
        }
    }
}

/// How long one group may take from its first send to its last acknowledgement. The door
/// answers 503 after [`crate::source::http::server::DURABLE_TIMEOUT`] anyway; this bounds
/// the task itself, so a cluster that stopped answering cannot hold it (or a stop) forever.
const GROUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Produces the requests of `rx` into `topic` until every sender is gone (the door closed),
/// then flushes what is left. Each request is answered `Ok(true)` once all its records are
/// acknowledged, or `Err` (a 503: the sender retries; a record sent twice is dropped
/// downstream by the pipeline's dedup of clicks by `click_id` and conversions by
/// `external_id`). A request's failure is its own: the others of its group go on.
pub async fn run(producer: TopicProducerPool, topic: String, mut rx: mpsc::Receiver<Submit>) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(s) => group.push(s),
                Err(_) => break,
            }
        }
        let answers =
            tokio::time::timeout(GROUP_TIMEOUT, produce_group(&producer, &topic, &mut group))
                .await
                .unwrap_or_else(|_| {
                    vec![
                        Err(format!(
                            "Fluvio topic {topic} did not acknowledge in {GROUP_TIMEOUT:?}"
                        ));
                        group.len()
                    ]
                });
        for (s, answer) in group.into_iter().zip(answers) {
            if let Err(why) = &answer {
                tracing::warn!(request_id = %s.request_id, topic = %topic, error = %why, "request not produced; answered 503");
            }
            let _ = s.done.send(answer);
        }
    }
    match tokio::time::timeout(GROUP_TIMEOUT, producer.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(topic = %topic, error = %e, "final flush failed"),
        Err(_) => tracing::warn!(topic = %topic, "final flush did not finish in time"),
    }
}

/// Sends every request's records, flushes once, waits for the acknowledgements; the answer
/// of each request.
async fn produce_group(
    producer: &TopicProducerPool,
    topic: &str,
    group: &mut [Submit],
) -> Vec<Result<bool, String>> {
    // An error left by an earlier group (or a background flush) would fail this one.
    producer.clear_errors().await;
    let mut answers: Vec<Result<bool, String>> = Vec::with_capacity(group.len());
    let mut pending = Vec::with_capacity(group.len());
    for s in group.iter_mut() {
        let mut outputs = Vec::with_capacity(s.records.len());
        let mut failed = None;
        for record in std::mem::take(&mut s.records) {
            let sent = match partition_key(&record) {
                Some(k) => producer.send(k, record).await,
                None => producer.send(RecordKey::NULL, record).await,
            };
            match sent {
                Ok(out) => outputs.push(out),
                Err(e) => {
                    failed = Some(format!("producing to Fluvio topic {topic}: {e}"));
                    break;
                }
            }
        }
        if failed.is_some() {
            // The producer refuses everything after an error until told to go on; the
            // records of this request already sent may still land (its retry is deduplicated
            // downstream).
            producer.clear_errors().await;
        }
        answers.push(failed.map_or(Ok(true), Err));
        pending.push(outputs);
    }
    if let Err(e) = producer.flush().await {
        let why = format!("flushing to Fluvio topic {topic}: {e}");
        return vec![Err(why); group.len()];
    }
    for (answer, outputs) in answers.iter_mut().zip(pending) {
        if answer.is_err() {
            continue;
        }
        for out in outputs {
            if let Err(e) = out.wait().await {
                *answer = Err(format!("Fluvio did not acknowledge a record: {e}"));
                break;
            }
        }
    }
    answers
}
