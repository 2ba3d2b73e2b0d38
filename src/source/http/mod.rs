//! The HTTP source: a door for ingest edges that cannot speak Fluvio — an advertiser's server
//! firing a postback URL, a small click redirector.
//!
//! ```text
//! request ─▶ server (auth, limits, decoder check) ─▶ Destination ─▶ 202
//!                                                      │
//!            kind = "http":   write-ahead log (group commit) ─▶ raw queue ─▶ decode ─▶ state
//!            with_http:       the same, its log one more partition beside the Fluvio topics'
//!            attribd ingest:  Fluvio topic (keyed by click_id)
//! ```
//!
//! Inside `attribd run` ([`start`]) each stream has a writer thread that appends the accepted
//! requests to the stream's write-ahead log (`wal.rs`), makes them durable with one `fsync`
//! for everything that arrived meanwhile, answers, and then sends the records on into the
//! pipeline. To the rest of the pipeline the log is a partitioned source with one partition
//! (0) whose offsets are the log's record numbers: checkpoints record the next offset, a
//! restart replays the log from it, and segments a checkpoint covers are deleted. The
//! writer's queue is bounded (`queue_requests`): a full queue is a 503 with `Retry-After`,
//! never an unbounded backlog.

pub mod config;
pub mod keys;
pub mod records;
pub mod server;
pub mod sign;
pub mod wal;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

pub use config::HttpConfig;
pub use server::Door;

use crate::event::Stream;
use crate::event::decode::Decoder;
use crate::raw::{Position, RawBatch, Signal};
use crate::telemetry::SharedMetrics;

/// One request's records, handed to a destination; `done` answers once they are durable.
pub struct Submit {
    pub request_id: String,
    /// The request as received (stream, tenant, records before the door completed them):
    /// a retry of a request already in the log has the same one.
    pub fingerprint: u128,
    pub records: Vec<Vec<u8>>,
    /// `Ok(true)`: durable; `Ok(false)`: a retry of a request already durable, not logged again.
    pub done: tokio::sync::oneshot::Sender<Result<bool, String>>,
    /// The request's share of its stream's byte budget, given back when dropped.
    pub queued: Option<QueuedBytes>,
}

impl Submit {
    /// Bytes of the request's records (what the byte budget counts).
    pub fn bytes(&self) -> usize {
        self.records.iter().map(Vec::len).sum()
    }
}

/// Bytes of records a stream holds between the door and the pipeline (`queue_bytes`): a
/// request that would go over it is a 503, like a full queue — so a flood of large bodies
/// cannot take memory that a count of requests alone would allow.
#[derive(Debug)]
pub struct ByteBudget {
    limit: usize,
    used: AtomicUsize,
}

impl ByteBudget {
    pub fn new(limit: usize) -> Arc<ByteBudget> {
        Arc::new(ByteBudget {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Takes `n` bytes, or `None` when that would exceed the limit — unless nothing is held
    /// (a request larger than the whole budget still goes, alone).
    pub fn take(self: &Arc<Self>, n: usize) -> Option<QueuedBytes> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used > 0 && used + n > self.limit {
                return None;
            }
            match self.used.compare_exchange_weak(
                used,
                used + n,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(QueuedBytes {
                        budget: self.clone(),
                        n,
                    });
                }
                Err(now) => used = now,
            }
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `s`'s bytes into `s.queued`, or the 503 answer naming `behind` (what is slow).
    pub fn hold(self: &Arc<Self>, s: &mut Submit, behind: &str) -> Result<(), String> {
        let held = self
            .take(s.bytes())
            .ok_or_else(|| format!("backpressure: {behind} is behind (queue_bytes); retry"))?;
        s.queued = Some(held);
        Ok(())
    }
}

/// Bytes held in a [`ByteBudget`]; given back on drop.
#[derive(Debug)]
pub struct QueuedBytes {
    budget: Arc<ByteBudget>,
    n: usize,
}

impl Drop for QueuedBytes {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.n, Ordering::AcqRel);
    }
}

/// Where accepted records go: the write-ahead log of `attribd run`, or Fluvio for
/// `attribd ingest`. `submit` never waits: `Err` is the 503 answer's text.
pub trait Destination: Send + Sync {
    fn submit(&self, s: Submit) -> Result<(), String>;
}

/// A stream's write-ahead-log writer, seen from the handlers.
struct WalQueue {
    tx: Sender<Submit>,
    budget: Arc<ByteBudget>,
}

impl Destination for WalQueue {
    fn submit(&self, mut s: Submit) -> Result<(), String> {
        self.budget.hold(&mut s, "the pipeline")?;
        match self.tx.try_send(s) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err("backpressure: the pipeline is behind; retry".into()),
            Err(TrySendError::Disconnected(_)) => Err("the pipeline is stopping".into()),
        }
    }
}

/// Next offsets per stream that the newest checkpoint covers; the writers delete log
/// segments below them.
#[derive(Debug, Default)]
pub struct Covered(pub [AtomicU64; 2]);

impl Covered {
    pub fn set(&self, stream: usize, next: u64) {
        self.0[stream].fetch_max(next, Ordering::Relaxed);
    }
}

/// The running HTTP source.
pub struct HttpSource {
    pub threads: Vec<JoinHandle<Result<()>>>,
    pub covered: Arc<Covered>,
}

/// The partition id of the door's log in each stream: 0 when the door is the source
/// (`kind = "http"`), [`BESIDE_FLUVIO_PARTITION`] beside the Fluvio topics' partitions
/// (`with_http`); `None` without a door.
pub fn log_partition(cfg: &crate::config::PipelineConfig) -> Option<u32> {
    use crate::config::SourceKind;
    match cfg.source.kind {
        SourceKind::Http => Some(0),
        SourceKind::Fluvio if cfg.source.with_http => Some(BESIDE_FLUVIO_PARTITION),
        _ => None,
    }
}

/// Where the door's logs stand in the pipeline: their partition id in each stream, and the
/// next offset of each stream's log the checkpoint covers (0 for a fresh run).
#[derive(Debug, Clone, Copy)]
pub struct LogStart {
    pub partition: u32,
    pub resume: [u64; 2],
}

/// The log's partition id beside Fluvio's (whose ids count from 0): never a topic's.
pub const BESIDE_FLUVIO_PARTITION: u32 = u32::MAX;

/// The write-ahead logs' directory under the state directory.
pub fn wal_dir(state_dir: &Path, stream: Stream) -> std::path::PathBuf {
    state_dir.join("wal").join(stream.as_str())
}

/// Opens both logs, binds the listener (an error at once, naming the address), and starts
/// the writers and the server. Each stream's log is replayed from `at.resume` before new
/// requests are taken.
pub fn start(
    cfg: &HttpConfig,
    state_dir: &Path,
    decoder: Decoder,
    at: LogStart,
    deliver: [crate::source::fluvio::Deliver; 2],
    metrics: &SharedMetrics,
    stop: Arc<AtomicBool>,
) -> Result<HttpSource> {
    let LogStart { partition, resume } = at;
    let keys = load_keys(cfg)?;
    let (listener, _) =
        crate::telemetry::server::bind(&cfg.listen, "HTTP ingest (source.http.listen)")?;
    let covered = Arc::new(Covered::default());
    let mut threads = Vec::new();
    let mut queues: Vec<Arc<dyn Destination>> = Vec::new();
    for (i, tx) in deliver.into_iter().enumerate() {
        let stream = Stream::ALL[i];
        let wal = wal::Wal::open(&wal_dir(state_dir, stream), cfg.wal_segment_bytes)?;
        if wal.first_offset() > resume[i] {
            anyhow::bail!(
                "the {} write-ahead log starts at record {} but the checkpoint resumed from \
                 needs it from {}: acknowledged records would be lost (was the log in {} \
                 pruned by hand, or the checkpoint restored from elsewhere?)",
                stream.as_str(),
                wal.first_offset(),
                resume[i],
                wal_dir(state_dir, stream).display()
            );
        }
        if wal.next_offset() < resume[i] {
            anyhow::bail!(
                "the {} write-ahead log ends at record {} but the checkpoint covers up to {}: \
                 the log in {} was removed or replaced; start with --fresh",
                stream.as_str(),
                wal.next_offset(),
                resume[i],
                wal_dir(state_dir, stream).display()
            );
        }
        let (qtx, qrx) = bounded::<Submit>(cfg.queue_requests);
        queues.push(Arc::new(WalQueue {
            tx: qtx,
            budget: ByteBudget::new(cfg.queue_bytes),
        }));
        let writer = Writer {
            stream,
            partition,
            credits: Arc::new(tokio::sync::Semaphore::new(LOG_CREDITS as usize)),
            wal,
            rx: qrx,
            tx,
            covered: covered.clone(),
            recent: Recent::default(),
        };
        threads.push(spawn(
            &format!("http-wal-{}", stream.as_str()),
            metrics,
            move || writer.run(resume[i]),
        )?);
    }
    let destinations: [Arc<dyn Destination>; 2] = [queues[0].clone(), queues[1].clone()];
    drop(queues);
    let door = Door::new(cfg, keys, decoder, destinations, metrics.clone());
    let server = DoorServer::new(listener, door, cfg)?;
    // Dropping the door when the server ends drops the handlers' queues: the writers then
    // finish.
    threads.push(spawn("http-server", metrics, move || server.run(stop))?);
    Ok(HttpSource { threads, covered })
}

/// The door's keys: the keys file, or none (loopback only, every request taken).
pub fn load_keys(cfg: &HttpConfig) -> Result<Option<Arc<keys::Keys>>> {
    match &cfg.keys_file {
        Some(path) => Ok(Some(Arc::new(keys::Keys::load(Path::new(path))?))),
        None => {
            tracing::warn!("HTTP ingest without API keys (loopback only): every request is taken");
            Ok(None)
        }
    }
}

/// The door, ready to serve: its runtime, listener, routes and TLS settings. Built at start
/// so that a bad certificate is an error before anything runs; [`DoorServer::run`] serves.
/// Shared by the HTTP source of `attribd run` and by `attribd ingest`.
pub struct DoorServer {
    rt: tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    app: axum::Router,
    keys: Option<Arc<keys::Keys>>,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
}

impl DoorServer {
    pub fn new(listener: std::net::TcpListener, door: Door, cfg: &HttpConfig) -> Result<Self> {
        let keys = door.keys.clone();
        let app = server::router(Arc::new(door), cfg.max_body_bytes);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("http-ingest")
            .enable_all()
            .build()
            .context("HTTP ingest: starting its runtime")?;
        let tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(cert), Some(key)) => {
                let loaded = rt
                    .block_on(axum_server::tls_rustls::RustlsConfig::from_pem_file(
                        cert, key,
                    ))
                    .with_context(|| {
                        format!(
                            "source.http.tls_cert / tls_key: cannot use {cert} and {key} \
                             (PEM certificate chain and private key)"
                        )
                    })?;
                // Offer HTTP/1.1 only in ALPN (the server speaks nothing else).
                let mut server = (*loaded.get_inner()).clone();
                server.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(axum_server::tls_rustls::RustlsConfig::from_config(
                    Arc::new(server),
                ))
            }
            _ => None,
        };
        Ok(DoorServer {
            rt,
            listener,
            app,
            keys,
            tls,
        })
    }

    /// Serves until `stop` turns true, reloading the keys on SIGHUP and when the file
    /// changes; requests in flight are answered before it returns.
    pub fn run(self, stop: Arc<AtomicBool>) -> Result<()> {
        let DoorServer {
            rt,
            listener,
            app,
            keys,
            tls,
        } = self;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        rt.block_on(async move {
            let hup = Arc::new(AtomicBool::new(false));
            let _ = signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                let mut n = 0u32;
                loop {
                    tick.tick().await;
                    if stop.load(Ordering::Relaxed) {
                        let _ = stop_tx.send(true);
                        return;
                    }
                    n += 1;
                    if let Some(k) = &keys {
                        let forced = hup.swap(false, Ordering::Relaxed);
                        if forced || n.is_multiple_of(10) {
                            k.reload(forced);
                        }
                    }
                }
            });
            server::serve(listener, app, stop_rx, tls).await
        })
    }
}

/// A source thread; its failure marks the pipeline not ready (and the state stage stops).
fn spawn(
    name: &str,
    metrics: &SharedMetrics,
    f: impl FnOnce() -> Result<()> + Send + 'static,
) -> Result<JoinHandle<Result<()>>> {
    let metrics = metrics.clone();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let r = f();
            if let Err(e) = &r {
                tracing::error!(error = %format!("{e:#}"), "HTTP source failed");
                metrics.health.source_failed.store(true, Ordering::Relaxed);
            }
            r
        })
        .with_context(|| format!("spawning {name}"))
}

/// What a stream's log may have in flight between its writer and the end of the state stage,
/// in units of [`LOG_CREDIT_BYTES`] (a request takes one per started unit, at least one): at
/// most this many requests and about 16 MiB. Like a Fluvio partition's credits, it keeps a
/// stream whose merge is waiting (for the other stream, or beside Fluvio for a partition)
/// from filling memory; the writer then stops taking requests and the door answers 503.
pub const LOG_CREDITS: u32 = 1024;
/// One log credit's worth of request bytes.
pub const LOG_CREDIT_BYTES: usize = 16 * 1024;

/// Most requests made durable by one `fsync`.
const GROUP_MAX: usize = 1024;

/// How long a request is remembered to recognise a retry of it: senders retry within
/// seconds to minutes; an identical request later is a new one (say approved, rejected, and
/// approved again the next day).
const RETRY_WINDOW: Duration = Duration::from_secs(600);
/// At most this many requests remembered per stream (memory stays bounded at any rate).
const RECENT_REQUESTS: usize = 100_000;

/// Fingerprints of the requests logged within the retry window.
#[derive(Default)]
struct Recent {
    set: std::collections::HashSet<u128>,
    order: std::collections::VecDeque<(u128, Instant)>,
}

impl Recent {
    /// False if `f` was logged within the window.
    fn insert(&mut self, f: u128, now: Instant) -> bool {
        while let Some(&(old, at)) = self.order.front() {
            if now.duration_since(at) < RETRY_WINDOW && self.order.len() < RECENT_REQUESTS {
                break;
            }
            self.order.pop_front();
            self.set.remove(&old);
        }
        if !self.set.insert(f) {
            return false;
        }
        self.order.push_back((f, now));
        true
    }
}

/// One stream's log writer.
struct Writer {
    stream: Stream,
    /// The log's partition id in the stream (see [`log_partition`]).
    partition: u32,
    /// [`LOG_CREDITS`]: what the stream's batches may hold in the pipeline.
    credits: Arc<tokio::sync::Semaphore>,
    wal: wal::Wal,
    rx: Receiver<Submit>,
    tx: crate::source::fluvio::Deliver,
    covered: Arc<Covered>,
    recent: Recent,
}

impl Writer {
    fn run(mut self, resume: u64) -> Result<()> {
        let p = Some(self.partition);
        if !(self.tx)(RawBatch::signal(
            Signal::Partitions(vec![self.partition]),
            p,
        )) {
            return Ok(());
        }
        // What was acknowledged before a crash and not yet covered by a checkpoint.
        let mut replayed = 0u64;
        let mut open = true;
        // Every request still in the log is remembered (a retry of one answered, or made
        // durable, just before a stop is recognised); those past the checkpoint are sent on.
        let mut recent = std::mem::take(&mut self.recent);
        let now = Instant::now();
        self.wal.replay(0, |e| {
            recent.insert(e.fingerprint, now);
            if e.first + e.records.len() as u64 > resume {
                replayed += e.records.len() as u64;
                open = self.forward(&e.request_id, e.first, &e.records, resume);
            }
            Ok(open)
        })?;
        self.recent = recent;
        if replayed > 0 {
            tracing::info!(
                stream = self.stream.as_str(),
                records = replayed,
                from = resume,
                "replayed the write-ahead log"
            );
        }
        if !open || !self.caught_up() {
            return Ok(());
        }
        let mut since_truncate = Instant::now();
        loop {
            let first = match self.rx.recv_timeout(Duration::from_millis(500)) {
                Ok(s) => s,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if !self.caught_up() {
                        return Ok(());
                    }
                    self.truncate(&mut since_truncate);
                    continue;
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            };
            let (mut group, mut retries) = (Vec::new(), Vec::new());
            let mut next = Some(first);
            let now = Instant::now();
            while let Some(s) = next {
                // A retry of a request already in the log (within RETRY_WINDOW) is answered,
                // not logged twice: its postbacks would be harmless duplicates, but a status
                // change inside it would be applied again (approved → rejected → approved →
                // rejected). Answered only after this group's fsync: its original may be in it.
                if self.recent.insert(s.fingerprint, now) {
                    group.push(s);
                } else {
                    retries.push(s);
                }
                next = if group.len() + retries.len() < GROUP_MAX {
                    self.rx.try_recv().ok()
                } else {
                    None
                };
            }
            let firsts = match self.commit(&group) {
                Ok(f) => f,
                Err(e) => {
                    for s in group.into_iter().chain(retries) {
                        let _ = s.done.send(Err("the write-ahead log failed; retry".into()));
                    }
                    return Err(e);
                }
            };
            for s in retries {
                let _ = s.done.send(Ok(false));
            }
            // Durable: answer first (the sender's latency), then feed the pipeline.
            let mut batches = Vec::with_capacity(group.len());
            for (s, first) in group.into_iter().zip(firsts) {
                let _ = s.done.send(Ok(true));
                batches.push((s.request_id, first, s.records, s.queued));
            }
            // Each request's bytes stay counted until its batch is in the pipeline's queue.
            for (id, first, records, _queued) in batches {
                if !self.forward(&id, first, &records, 0) {
                    return Ok(());
                }
            }
            // Nothing waiting: the state stage must not hold the other stream for this one.
            if self.rx.is_empty() && !self.caught_up() {
                return Ok(());
            }
            self.truncate(&mut since_truncate);
        }
        Ok(())
    }

    /// Appends the group and makes it durable; the first offset of each request.
    fn commit(&mut self, group: &[Submit]) -> Result<Vec<u64>> {
        let firsts = group
            .iter()
            .map(|s| self.wal.append(&s.request_id, s.fingerprint, &s.records))
            .collect::<Result<Vec<u64>>>()?;
        self.wal.sync()?;
        // Crash tests: durable, not yet answered — the sender retries a request that is in.
        crate::failpoint::crash_point("http-wal-synced");
        Ok(firsts)
    }

    /// Sends a request's records (from offset `skip_before` on) into the pipeline as one
    /// batch whose dead letters name the request. False once the pipeline is gone.
    fn forward(&self, request_id: &str, first: u64, records: &[Vec<u8>], skip_before: u64) -> bool {
        let mut b = RawBatch::with_capacity(records.iter().map(|r| r.len()).sum(), records.len());
        for (i, r) in records.iter().enumerate() {
            let offset = first + i as u64;
            if offset < skip_before {
                continue;
            }
            b.push_line(
                r,
                Position {
                    line: offset,
                    offset: 0,
                },
            );
        }
        if b.is_empty() {
            return true;
        }
        b.end = Position {
            line: first + records.len() as u64,
            offset: 0,
        };
        b.partition = Some(self.partition);
        b.source = Some(records::source_of(request_id));
        // Waits while the stream's batches in the pipeline hold every credit (they come back
        // as the state stage finishes batches, or when it stops and drops them).
        let units = b
            .data
            .len()
            .div_ceil(LOG_CREDIT_BYTES)
            .min(LOG_CREDITS as usize) as u32;
        b.credit = crate::raw::Credit::take_blocking(&self.credits, units, || false);
        (self.tx)(b)
    }

    /// Tells the state stage the partition has nothing more for now (so the other stream is
    /// not held waiting for it).
    fn caught_up(&self) -> bool {
        let next = self.wal.next_offset();
        (self.tx)(RawBatch::signal(
            Signal::CaughtUp(self.partition, Some(next)),
            Some(self.partition),
        ))
    }

    fn truncate(&mut self, since: &mut Instant) {
        if since.elapsed() < Duration::from_secs(1) {
            return;
        }
        *since = Instant::now();
        let covered =
            self.covered.0[usize::from(self.stream == Stream::Conversions)].load(Ordering::Relaxed);
        match self.wal.truncate_before(covered) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(
                stream = self.stream.as_str(),
                segments = n,
                covered,
                "write-ahead log segments covered by a checkpoint deleted"
            ),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot delete covered write-ahead log segments")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes are taken up to the limit and given back on drop; a request larger than the whole
    /// budget goes only through an empty queue.
    #[test]
    fn the_byte_budget_refuses_what_would_exceed_it_and_frees_on_drop() {
        let b = ByteBudget::new(100);
        let first = b.take(60).expect("fits");
        assert!(b.take(50).is_none(), "60 + 50 > 100");
        let second = b.take(40).expect("exactly 100");
        assert_eq!(b.used(), 100);
        drop(first);
        assert_eq!(b.used(), 40);
        assert!(b.take(500).is_none(), "too large while something is held");
        drop(second);
        let big = b.take(500).expect("alone, a large request goes");
        assert!(b.take(1).is_none());
        drop(big);
        assert_eq!(b.used(), 0);
    }
}
