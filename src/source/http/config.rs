//! `[source.http]`: where the HTTP door listens and what it lets through.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Knobs of the HTTP source (`kind = "http"`) and of `attribd ingest`. Every field has a
/// default; see `pipelines/http.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to listen on. Loopback unless said otherwise: a door to the internet is a
    /// decision, not a default.
    pub listen: String,
    /// The API keys file (TOML, hashes only; see docs/http.md). Without it the endpoints take
    /// anonymous requests — allowed only on a loopback address.
    pub keys_file: Option<String>,
    /// PEM certificate chain and private key: both set, the door speaks HTTPS (rustls) only.
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    /// Largest request body, bytes (413 beyond it).
    pub max_body_bytes: usize,
    /// Most records in one request (413 beyond it).
    pub max_records_per_request: usize,
    /// Requests per second one key may make, sustained (429 beyond it)…
    pub rate_per_key: u32,
    /// …and in a burst.
    pub burst_per_key: u32,
    /// How far a signed request's timestamp may be from the server's clock.
    #[serde(with = "humantime_serde")]
    pub signature_window: Duration,
    /// Requests waiting for the write-ahead log, per stream. When it is full the door answers
    /// 503 with `Retry-After` — backpressure reaches the sender, memory stays bounded.
    pub queue_requests: usize,
    /// …and at most this many bytes of records per stream, waiting or on their way into the
    /// pipeline (a request larger than the budget still goes through an empty queue).
    pub queue_bytes: usize,
    /// A write-ahead-log segment is closed (and can be deleted once a checkpoint covers it)
    /// at this size, bytes.
    pub wal_segment_bytes: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8088".into(),
            keys_file: None,
            tls_cert: None,
            tls_key: None,
            max_body_bytes: 1 << 20,
            max_records_per_request: 10_000,
            rate_per_key: 1_000,
            burst_per_key: 2_000,
            signature_window: Duration::from_secs(300),
            queue_requests: 4_096,
            queue_bytes: 64 << 20,
            wal_segment_bytes: 64 << 20,
        }
    }
}

impl HttpConfig {
    /// Problems as (key under `source.http`, what is wrong).
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        match self.listen.parse::<SocketAddr>() {
            Err(e) => p.push((
                "source.http.listen",
                format!("{:?} is not an address:port ({e})", self.listen),
            )),
            Ok(addr) if !addr.ip().is_loopback() && self.keys_file.is_none() => p.push((
                "source.http.keys_file",
                format!(
                    "listening on {addr}, beyond loopback, needs API keys: set `keys_file` (or listen on 127.0.0.1)"
                ),
            )),
            Ok(_) => {}
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            p.push((
                if self.tls_cert.is_some() {
                    "source.http.tls_key"
                } else {
                    "source.http.tls_cert"
                },
                "HTTPS needs both tls_cert (PEM certificate chain) and tls_key (PEM private key)"
                    .into(),
            ));
        }
        for (key, value) in [
            ("source.http.max_body_bytes", self.max_body_bytes as u64),
            (
                "source.http.max_records_per_request",
                self.max_records_per_request as u64,
            ),
            ("source.http.rate_per_key", u64::from(self.rate_per_key)),
            ("source.http.burst_per_key", u64::from(self.burst_per_key)),
            ("source.http.queue_requests", self.queue_requests as u64),
            ("source.http.queue_bytes", self.queue_bytes as u64),
        ] {
            if value == 0 {
                p.push((key, "must be at least 1".into()));
            }
        }
        if self.wal_segment_bytes < 4096 {
            p.push((
                "source.http.wal_segment_bytes",
                format!("{} is too small; at least 4096", self.wal_segment_bytes),
            ));
        }
        if self.signature_window.is_zero() {
            p.push(("source.http.signature_window", "must be more than 0".into()));
        }
        p
    }
}
