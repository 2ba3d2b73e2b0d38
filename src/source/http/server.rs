//! The HTTP door: routes, authentication, limits, and the answer once records are durable.
//!
//! ```text
//! POST /v1/clicks        one JSON object or NDJSON
//! POST /v1/conversions   one JSON object or NDJSON
//! GET  /v1/postback?…    one conversion from query parameters (an advertiser's postback URL)
//! ```
//!
//! A request goes: key (401 missing / unknown / revoked) → rate (429) → signature (401) →
//! body (413) → records checked with the pipeline's decoder and bound to the key's tenant (403
//! for another tenant's record) → handed to the stream's [`Destination`] (503 + `Retry-After`
//! when its queue is full) → answered once the destination says the records are durable: 202
//! with the count, or 400 listing the refused records (which go to the dead letters all the
//! same, as the pipeline's decoder refuses them there too). Keys, bodies and signatures are
//! never logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::json;

use super::keys::{Keys, Lookup};
use super::records::{self, Rejected};
use super::sign::Verifier;
use super::{Destination, Submit};
use crate::event::Stream;
use crate::event::decode::Decoder;
use crate::telemetry::Metrics;

/// What every handler shares.
pub struct Door {
    pub keys: Option<Arc<Keys>>,
    pub verifier: Verifier,
    pub limiter: DefaultKeyedRateLimiter<String>,
    pub decoder: Decoder,
    pub max_records: usize,
    pub destinations: [Arc<dyn Destination>; 2],
    pub metrics: Arc<Metrics>,
    /// Request ids: this process's start time and a counter.
    pub id_prefix: String,
    pub next_id: std::sync::atomic::AtomicU64,
}

impl Door {
    pub fn new(
        cfg: &super::HttpConfig,
        keys: Option<Arc<Keys>>,
        decoder: Decoder,
        destinations: [Arc<dyn Destination>; 2],
        metrics: Arc<Metrics>,
    ) -> Door {
        let per_second =
            std::num::NonZeroU32::new(cfg.rate_per_key).unwrap_or(std::num::NonZeroU32::MIN);
        let burst = std::num::NonZeroU32::new(cfg.burst_per_key).unwrap_or(per_second);
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        Door {
            keys,
            verifier: Verifier::new(cfg.signature_window),
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            decoder,
            max_records: cfg.max_records_per_request,
            destinations,
            metrics,
            id_prefix: format!("{started:x}"),
            next_id: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn request_id(&self) -> String {
        let n = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}-{n:x}", self.id_prefix)
    }
}

/// The routes, with the body limit (413 beyond it).
pub fn router(door: Arc<Door>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/clicks", post(post_clicks))
        .route("/v1/conversions", post(post_conversions))
        .route("/v1/postback", get(postback))
        .route("/health", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(door)
}

async fn post_clicks(State(d): State<Arc<Door>>, headers: HeaderMap, body: Bytes) -> Response {
    let t = Instant::now();
    let r = ingest(&d, Stream::Clicks, &headers, None, &body).await;
    d.metrics
        .http_request("clicks", r.status().as_u16(), t.elapsed());
    r
}

async fn post_conversions(State(d): State<Arc<Door>>, headers: HeaderMap, body: Bytes) -> Response {
    let t = Instant::now();
    let r = ingest(&d, Stream::Conversions, &headers, None, &body).await;
    d.metrics
        .http_request("conversions", r.status().as_u16(), t.elapsed());
    r
}

async fn postback(
    State(d): State<Arc<Door>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let t = Instant::now();
    let key = query
        .iter()
        .find(|(k, _)| k == "api_key")
        .map(|(_, v)| v.clone());
    let record = records::postback_record(&query);
    // What a signature covers on a GET: the query string.
    let signed = raw.unwrap_or_default();
    let r = ingest_records(
        &d,
        Stream::Conversions,
        &headers,
        key.as_deref(),
        signed.as_bytes(),
        vec![record.as_slice()],
    )
    .await;
    d.metrics
        .http_request("postback", r.status().as_u16(), t.elapsed());
    r
}

async fn ingest(
    d: &Door,
    stream: Stream,
    headers: &HeaderMap,
    key: Option<&str>,
    body: &[u8],
) -> Response {
    let records = records::split_body(body);
    ingest_records(d, stream, headers, key, body, records).await
}

fn problem(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// The key a request presents: `Authorization: Bearer …`, `X-Api-Key`, or (postback URLs,
/// which cannot set headers) the `api_key` query parameter.
fn presented_key<'a>(headers: &'a HeaderMap, query_key: Option<&'a str>) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .or(query_key)
        .map(str::trim)
}

async fn ingest_records(
    d: &Door,
    stream: Stream,
    headers: &HeaderMap,
    query_key: Option<&str>,
    signed_payload: &[u8],
    records: Vec<&[u8]>,
) -> Response {
    // 1. Who: the key and its tenant.
    let tenant = match &d.keys {
        None => None,
        Some(keys) => {
            let Some(presented) = presented_key(headers, query_key) else {
                return problem(
                    StatusCode::UNAUTHORIZED,
                    "an API key is required (Authorization: Bearer, X-Api-Key, or api_key=)",
                );
            };
            let entry = match keys.current().lookup(presented) {
                Lookup::Valid(e) => e,
                Lookup::Revoked(e) => {
                    tracing::info!(key_id = %e.id, "request with a revoked API key refused");
                    return problem(StatusCode::UNAUTHORIZED, "this API key is revoked");
                }
                Lookup::Unknown => return problem(StatusCode::UNAUTHORIZED, "unknown API key"),
            };
            // 2. How often.
            if d.limiter.check_key(&entry.id).is_err() {
                let mut r = problem(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate limit of this key exceeded",
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return r;
            }
            // 3. Signed, when the key says so or the request is.
            let ts = headers
                .get("x-attribd-timestamp")
                .and_then(|v| v.to_str().ok());
            let sig = headers
                .get("x-attribd-signature")
                .and_then(|v| v.to_str().ok());
            if let Some(secret) = &entry.signing_secret {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                if let Err(why) = d.verifier.verify(secret, ts, sig, signed_payload, now) {
                    tracing::info!(key_id = %entry.id, why = why.reason(), "signature refused");
                    return problem(StatusCode::UNAUTHORIZED, why.reason());
                }
            } else if sig.is_some() {
                return problem(
                    StatusCode::UNAUTHORIZED,
                    "the request is signed but its key has no signing_secret",
                );
            }
            Some(entry.tenant.clone())
        }
    };
    // 4. How much.
    if records.is_empty() {
        return problem(StatusCode::BAD_REQUEST, "no records in the request");
    }
    if records.len() > d.max_records {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "{} records; at most {} per request",
                records.len(),
                d.max_records
            ),
        );
    }
    // 5. What: each record as the pipeline will judge it, bound to the tenant.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let checked = match records::check(&d.decoder, stream, &records, tenant.as_deref(), now_ms) {
        Ok(c) => c,
        Err(wrong) => {
            return problem(
                StatusCode::FORBIDDEN,
                &format!(
                    "record {} names tenant {:?}; this key sends for its own tenant only",
                    wrong.index, wrong.claimed
                ),
            );
        }
    };
    // 6. Durable, then answered.
    let request_id = d.request_id();
    let fingerprint = fingerprint(stream, tenant.as_deref(), &records);
    let rejected = checked.rejected;
    let total = checked.records.len();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let submit = Submit {
        request_id: request_id.clone(),
        fingerprint,
        records: checked.records,
        done: tx,
        queued: None,
    };
    if let Err(why) = d.destinations[usize::from(stream == Stream::Conversions)].submit(submit) {
        let mut r = problem(StatusCode::SERVICE_UNAVAILABLE, &why);
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    match tokio::time::timeout(DURABLE_TIMEOUT, rx).await {
        Err(_) => {
            // The records may still land; a retry is safe (dedup by click_id / external_id).
            let mut r = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "not durable in time; retry",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        Ok(Ok(Ok(logged))) => answer(&request_id, total, rejected, !logged),
        Ok(Ok(Err(why))) => {
            let mut r = problem(StatusCode::SERVICE_UNAVAILABLE, &why);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        Ok(Err(_)) => {
            let mut r = problem(StatusCode::SERVICE_UNAVAILABLE, "stopping; retry");
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
    }
}

/// What identifies a request as received: a retry (same stream, tenant and records) has the
/// same fingerprint.
fn fingerprint(stream: Stream, tenant: Option<&str>, records: &[&[u8]]) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(stream.as_str().as_bytes());
    h.update(&[0]);
    h.update(tenant.unwrap_or("").as_bytes());
    for r in records {
        h.update(&(r.len() as u64).to_le_bytes());
        h.update(r);
    }
    h.digest128()
}

fn answer(request_id: &str, total: usize, rejected: Vec<Rejected>, retry: bool) -> Response {
    let accepted = total - rejected.len();
    let status = if rejected.is_empty() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::BAD_REQUEST
    };
    let mut r = (
        status,
        axum::Json(json!({
            "request_id": request_id,
            "accepted": accepted,
            "rejected": rejected,
            // The same request was already in the log: nothing was added.
            "retry": retry,
        })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        r.headers_mut().insert("x-request-id", v);
    }
    r
}

/// Serves `router` on `listener` until `stop` turns true; in-flight requests are answered.
/// With `tls`, connections are HTTPS (rustls; a handshake has 10 s), without it plain HTTP.
/// Either way a connection must deliver each request in time (see
/// [`crate::telemetry::server::DeadlineListener`]): a slow client cannot hold it.
pub async fn serve(
    listener: std::net::TcpListener,
    app: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
) -> anyhow::Result<()> {
    let local: SocketAddr = listener.local_addr()?;
    if let Some(tls) = tls {
        tracing::info!(addr = %local, "HTTP ingest listening (HTTPS)");
        let handle = axum_server::Handle::<SocketAddr>::new();
        let shutdown = handle.clone();
        tokio::spawn(async move {
            let _ = stop.wait_for(|s| *s).await;
            shutdown.graceful_shutdown(Some(SHUTDOWN_GRACE));
        });
        let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls)
            .acceptor(crate::telemetry::server::DeadlineAcceptor);
        // HTTP/1.1 only, as without TLS: HTTP/2's many streams per connection and PINGs would
        // get around the per-request deadline and the per-connection memory it assumes.
        axum_server::from_tcp(listener)?
            .http1_only()
            .acceptor(acceptor)
            .handle(handle)
            .serve(app.into_make_service())
            .await?;
        return Ok(());
    }
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tracing::info!(addr = %local, "HTTP ingest listening");
    let listener = crate::telemetry::server::DeadlineListener::new(listener);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await?;
    Ok(())
}

/// How long requests in flight at a stop may take to be answered over HTTPS.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// How long a request may wait for the log before it is told to come back.
pub const DURABLE_TIMEOUT: Duration = Duration::from_secs(10);
