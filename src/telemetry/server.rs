//! The operator's HTTP endpoint: `/metrics` (Prometheus), `/health` (the process is alive) and
//! `/ready` (sources connected, sinks writable, no circuit breaker open).
//!
//! It runs on a thread of its own with a single-threaded tokio runtime, so a slow scraper
//! never competes with the pipeline's threads, and it only reads [`Metrics`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use super::Metrics;

/// A running endpoint; it stops when dropped.
pub struct MetricsServer {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds `addr` (port 0 picks a free port; see [`MetricsServer::addr`]) and serves until the
/// returned server is dropped. A bind failure is an error at once, not a silent absence.
pub fn serve(addr: &str, metrics: Arc<Metrics>) -> Result<MetricsServer> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("metrics endpoint: cannot listen on {addr}"))?;
    listener
        .set_nonblocking(true)
        .context("metrics endpoint: setting the socket non-blocking")?;
    let local = listener.local_addr().context("metrics endpoint address")?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
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
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "metrics endpoint could not start");
                        return;
                    }
                };
                let shutdown = async {
                    let _ = rx.await;
                };
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    tracing::error!(error = %e, "metrics endpoint stopped");
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
