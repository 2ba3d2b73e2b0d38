//! Committing Fluvio consumer offsets: exactly what a checkpoint covers, after it is written.
//!
//! The state stage calls [`Committer::commit`] after every checkpoint with the next offset of
//! every partition the checkpoint covers (everything before it is durable in every sink). A
//! task on the source's runtime commits them in the background, so a slow cluster never stalls
//! the state stage; a failed commit is counted, logged and retried after the next checkpoint
//! (the checkpoint on disk stays the authority; the committed offset only serves an instance
//! that starts *without* the state directory). At the end of a run [`Committer::flush`] waits
//! for the last commit.
//!
//! Why a short-lived stream per commit: the `fluvio` 0.50.1 client commits "the last record
//! this stream returned", not an offset, and its retrying stream keeps a cancelled read holding
//! the lock that `offset_commit` needs — the hang of every earlier run. A commit stream that
//! starts at the record to commit, reads exactly that one record to completion and then
//! commits it, has neither problem and never commits anything the reader merely fetched.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Result, anyhow};
use tokio::sync::{mpsc, oneshot};

use crate::telemetry::SharedMetrics;

/// How long one partition's commit may take before it is abandoned (and retried later).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

enum Request {
    /// Next offset per (topic, partition) covered by a checkpoint.
    Offsets(Vec<(String, u32, u64)>),
    /// Reply once everything requested before is done.
    Flush(oneshot::Sender<()>),
}

/// The state stage's handle on the commit task.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::UnboundedSender<Request>,
}

/// The commit task's end of the channel; run by the source once it is connected.
pub struct CommitTask {
    rx: mpsc::UnboundedReceiver<Request>,
}

pub fn channel() -> (Committer, CommitTask) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Committer { tx }, CommitTask { rx })
}

impl Committer {
    /// Asks for `offsets` (next offset per topic and partition) to be committed; returns at once.
    pub fn commit(&self, offsets: Vec<(String, u32, u64)>) {
        let _ = self.tx.send(Request::Offsets(offsets));
    }

    /// Waits (at most `timeout`) until every commit asked for so far was attempted.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Flush(tx))
            .map_err(|_| anyhow!("the Fluvio source stopped before committing its offsets"))?;
        let deadline = std::time::Instant::now() + timeout;
        let mut rx = rx;
        loop {
            match rx.try_recv() {
                Ok(()) => return Ok(()),
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err(anyhow!(
                        "the Fluvio source stopped before committing its offsets"
                    ));
                }
                Err(oneshot::error::TryRecvError::Empty) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(anyhow!(
                            "committing Fluvio offsets took longer than {timeout:?}; the checkpoint holds them and the next run resumes from it"
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

impl CommitTask {
    /// Commits what is asked until every [`Committer`] is gone.
    pub async fn run(mut self, fluvio: &fluvio::Fluvio, consumer: &str, metrics: SharedMetrics) {
        let mut committed: HashMap<(String, u32), i64> = HashMap::new();
        while let Some(first) = self.rx.recv().await {
            // Take everything queued: only the newest offset per partition matters (during an
            // outage checkpoints keep asking, and stale offsets need not be committed in turn).
            let mut latest: HashMap<(String, u32), u64> = HashMap::new();
            let mut flushes = Vec::new();
            let mut next = Some(first);
            while let Some(req) = next {
                match req {
                    Request::Flush(done) => flushes.push(done),
                    Request::Offsets(offsets) => {
                        for (topic, partition, o) in offsets {
                            let e = latest.entry((topic, partition)).or_insert(o);
                            *e = (*e).max(o);
                        }
                    }
                }
                next = self.rx.try_recv().ok();
            }
            for ((topic, partition), next) in latest {
                // The consumer offset names the last record processed.
                let Some(last) = (next as i64).checked_sub(1).filter(|l| *l >= 0) else {
                    continue;
                };
                let key = (topic, partition);
                if committed.get(&key).is_some_and(|&c| c >= last) {
                    continue;
                }
                let attempt = tokio::time::timeout(
                    COMMIT_TIMEOUT,
                    commit_one(fluvio, consumer, &key.0, partition, last),
                )
                .await
                .unwrap_or_else(|_| Err(anyhow!("timed out after {COMMIT_TIMEOUT:?}")));
                match attempt {
                    Ok(()) => {
                        tracing::debug!(topic = %key.0, partition, offset = last, "committed Fluvio offset");
                        metrics.fluvio_commit(&key.0, partition, Some(last));
                        committed.insert(key, last);
                    }
                    Err(e) => {
                        tracing::warn!(topic = %key.0, partition, offset = last, error = %format!("{e:#}"), "Fluvio offset commit failed; retried after the next checkpoint");
                        metrics.fluvio_commit(&key.0, partition, None);
                    }
                }
            }
            for done in flushes {
                let _ = done.send(());
            }
        }
    }
}

/// Commits `offset` as the last processed record of `consumer` on `topic`/`partition`.
async fn commit_one(
    fluvio: &fluvio::Fluvio,
    consumer: &str,
    topic: &str,
    partition: u32,
    offset: i64,
) -> Result<()> {
    use fluvio::consumer::{
        ConsumerConfigExtBuilder, ConsumerStream, OffsetManagementStrategy, RetryMode,
    };
    use futures_util::StreamExt;
    let config = ConsumerConfigExtBuilder::default()
        .topic(topic.to_string())
        .partition(partition)
        .offset_consumer(consumer.to_string())
        .offset_start(
            fluvio::Offset::absolute(offset).map_err(|e| anyhow!("offset {offset}: {e}"))?,
        )
        .offset_strategy(OffsetManagementStrategy::Manual)
        .retry_mode(RetryMode::Disabled)
        .build()
        .map_err(|e| anyhow!("commit stream config: {e}"))?;
    let mut stream = fluvio
        .consumer_with_config(config)
        .await
        .map_err(|e| anyhow!("opening a commit stream: {e}"))?;
    // Read to completion (never cancelled half-way: see the module doc).
    match stream.next().await {
        Some(Ok(r)) if r.offset() == offset => {}
        Some(Ok(r)) => {
            return Err(anyhow!(
                "expected record {offset}, the cluster returned {}",
                r.offset()
            ));
        }
        Some(Err(e)) => return Err(anyhow!("reading record {offset}: {e:?}")),
        None => return Err(anyhow!("record {offset} is no longer in the log")),
    }
    stream
        .offset_commit()
        .await
        .map_err(|e| anyhow!("offset commit: {e:?}"))?;
    stream
        .offset_flush()
        .await
        .map_err(|e| anyhow!("offset flush: {e:?}"))?;
    Ok(())
}
