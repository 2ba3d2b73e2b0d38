//! The operator's HTTP endpoint: `/metrics` (Prometheus), `/health` (the process is alive) and
//! `/ready` (sources connected, sinks writable, no circuit breaker open).
//!
//! It runs on a thread of its own with a single-threaded tokio runtime, so a slow scraper
//! never competes with the pipeline's threads, and it only reads [`Metrics`].
//!
//! No client can hold the process: a connection must deliver each request within
//! [`REQUEST_READ_TIMEOUT`] ([`Deadline`]), and at shutdown open connections get
//! [`SHUTDOWN_GRACE`] to finish before they are dropped.

use std::future::{Future, IntoFuture};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::Metrics;

/// How long a connection may take to send a complete request, counted from its opening or from
/// the previous response: covers a request head that never ends (the partial request of a
/// stalled or malicious client) and idle keep-alive connections. Prometheus sends a whole
/// request at once and reconnects when an idle connection was closed. hyper's own
/// `header_read_timeout` cannot be set through `axum::serve` (0.8.9 configures no timer).
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the endpoint waits at shutdown for connections to finish their request before it
/// drops them (the run's work is done by then; only scrapes are cut short).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A running endpoint; it stops when dropped (within [`SHUTDOWN_GRACE`]).
pub struct MetricsServer {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds `addr` (port 0 picks a free port; see [`MetricsServer::addr`]) and serves until the
/// returned server is dropped. A bind failure is an error at once, not a silent absence.
pub fn serve(addr: &str, metrics: Arc<Metrics>) -> Result<MetricsServer> {
    let (listener, local) = bind(addr, "metrics endpoint")?;
    let (tx, mut stop) = tokio::sync::watch::channel(false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("metrics endpoint: starting its runtime")?;
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .with_state(metrics);
    let thread = thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            // Dropping the runtime when this closure returns drops every connection still
            // open, so a client that outlives the grace period is disconnected, not waited for.
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => DeadlineListener(l),
                    Err(e) => {
                        tracing::error!(error = %e, "metrics endpoint could not start");
                        return;
                    }
                };
                let mut graceful = stop.clone();
                let server = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        // A dropped sender is a stop too.
                        let _ = graceful.wait_for(|stop| *stop).await;
                    })
                    .into_future();
                let mut server = std::pin::pin!(server);
                let outcome = tokio::select! {
                    outcome = &mut server => Some(outcome),
                    _ = async { let _ = stop.wait_for(|stop| *stop).await; } => {
                        tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await.ok()
                    }
                };
                match outcome {
                    Some(Ok(())) => {}
                    Some(Err(e)) => tracing::error!(error = %e, "metrics endpoint stopped"),
                    None => tracing::warn!(
                        grace = ?SHUTDOWN_GRACE,
                        "metrics endpoint: a client did not finish its request in time; \
                         dropping its connection"
                    ),
                }
            })
        })
        .context("spawning the metrics endpoint thread")?;
    tracing::info!(addr = %local, "serving /metrics, /health and /ready");
    Ok(MetricsServer {
        addr: local,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

/// Binds `addr` for a tokio server (non-blocking) and returns the address bound (port 0 picks
/// one); errors name `what` and the address. Shared with the HTTP ingest door.
pub(crate) fn bind(addr: &str, what: &str) -> Result<(std::net::TcpListener, SocketAddr)> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("{what}: cannot listen on {addr}"))?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("{what}: setting the socket non-blocking"))?;
    let local = listener
        .local_addr()
        .with_context(|| format!("{what}: its address"))?;
    Ok((listener, local))
}

async fn metrics_page(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
}

async fn ready(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    let problems = m.health.problems();
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", problems.join("; ")),
        )
    }
}

/// The TCP listener of the endpoint, handing out connections wrapped in a [`Deadline`]
/// (the HTTP ingest door uses it too).
pub(crate) struct DeadlineListener(tokio::net::TcpListener);

impl DeadlineListener {
    pub(crate) fn new(listener: tokio::net::TcpListener) -> DeadlineListener {
        DeadlineListener(listener)
    }
}

impl axum::serve::Listener for DeadlineListener {
    type Io = Deadline<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = axum::serve::Listener::accept(&mut self.0).await;
        (Deadline::new(io, REQUEST_READ_TIMEOUT), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// The same deadline for connections accepted by `axum_server` (the HTTPS door: the TLS
/// acceptor wraps this one, so the deadline covers the handshake too).
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeadlineAcceptor;

impl<S> axum_server::accept::Accept<tokio::net::TcpStream, S> for DeadlineAcceptor {
    type Stream = Deadline<tokio::net::TcpStream>;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Self::Stream, S)>>;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        std::future::ready(Ok((Deadline::new(stream, REQUEST_READ_TIMEOUT), service)))
    }
}

/// A connection that must deliver each request within `timeout` of its opening or of the
/// previous response: a read still pending at the deadline fails with `TimedOut`, and hyper
/// closes the connection. Bytes that trickle in do not move the deadline, so a client cannot
/// hold the connection by sending one byte at a time; writing a response does.
pub(crate) struct Deadline<S> {
    inner: S,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<S> Deadline<S> {
    fn new(inner: S, timeout: Duration) -> Deadline<S> {
        Deadline {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Deadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending if this.deadline.as_mut().poll(cx).is_ready() => Poll::Ready(Err(
                io::Error::new(io::ErrorKind::TimedOut, "no complete request in time"),
            )),
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            let next = Instant::now() + this.timeout;
            this.deadline.as_mut().reset(next);
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            let next = Instant::now() + this.timeout;
            this.deadline.as_mut().reset(next);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Instant as StdInstant;

    use super::*;

    /// Reads from `d` until it fails (the error's kind) or the peer closes (`None`).
    async fn read_error<S: AsyncRead + Unpin>(d: &mut Deadline<S>) -> Option<io::ErrorKind> {
        let mut bytes = [0u8; 64];
        loop {
            let mut buf = ReadBuf::new(&mut bytes);
            let r = std::future::poll_fn(|cx| Pin::new(&mut *d).poll_read(cx, &mut buf)).await;
            match r {
                Err(e) => return Some(e.kind()),
                Ok(()) if buf.filled().is_empty() => return None,
                Ok(()) => {}
            }
        }
    }

    async fn connected_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = l.accept().await.unwrap();
        (server, client)
    }

    #[test]
    fn a_connection_without_a_complete_request_fails_at_its_deadline_and_a_response_moves_it() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (server, client) = connected_pair().await;
            client.writable().await.unwrap();
            client.try_write(b"GET / HTTP/1.1\r\n").unwrap();
            let started = StdInstant::now();
            let mut d = Deadline::new(server, Duration::from_millis(300));
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut wrote = 0;
            while wrote == 0 {
                wrote = std::future::poll_fn(|cx| Pin::new(&mut d).poll_write(cx, b"HTTP/1.1 "))
                    .await
                    .unwrap();
            }
            let written_at = StdInstant::now();
            assert_eq!(read_error(&mut d).await, Some(io::ErrorKind::TimedOut));
            assert!(
                written_at.elapsed() >= Duration::from_millis(250),
                "the response moved the deadline"
            );
            assert!(started.elapsed() < Duration::from_secs(5));
            drop(client);
        });
    }

    /// The endpoint used to wait for ever for a client that sent half a request.
    #[test]
    fn stopping_the_endpoint_does_not_wait_for_a_stalled_client() {
        let server = serve("127.0.0.1:0", Arc::new(Metrics::new())).unwrap();
        let mut stalled = std::net::TcpStream::connect(server.addr).unwrap();
        stalled
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let started = StdInstant::now();
        thread::spawn(move || {
            drop(server);
            let _ = done_tx.send(());
        });
        assert!(
            done_rx.recv_timeout(SHUTDOWN_GRACE * 5).is_ok(),
            "the endpoint did not stop while a client stalled"
        );
        assert!(started.elapsed() >= SHUTDOWN_GRACE.saturating_sub(Duration::from_millis(100)));
        drop(stalled);
    }
}
