//! The Fluvio source's settings (`[source.fluvio]`): endpoint, topics, owned partitions,
//! where a new consumer starts, TLS, fetch size and the idle/connect timeouts, with the checks
//! serde cannot make. Read by `config` when the pipeline TOML is loaded; [`super::start`] and
//! [`super::produce()`] connect with them.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::Stream;

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
    /// Stop (everything flushed and committed) after every partition was read to its log end
    /// and nothing new came for this long — for backfills and tests. Absent: run until stopped.
    #[serde(with = "humantime_serde")]
    pub exit_when_idle: Option<Duration>,
    /// Give up (and fail the run) when the cluster cannot be reached for this long at start.
    /// Absent: keep retrying (capped backoff, `/ready` 503 meanwhile), as a daemon should.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// Largest fetch per partition stream, bytes. Larger fetches mean fewer round trips (and
    /// fewer of the 0.50 client's fetch-boundary gaps to re-read); each partition may buffer
    /// this much.
    pub max_fetch_bytes: u32,
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
            connect_timeout: None,
            max_fetch_bytes: 2 << 20,
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

impl FluvioSourceConfig {
    /// Defaults, with the cluster at `endpoint` (for `produce` and topic set-up).
    pub(super) fn at(endpoint: &str) -> FluvioSourceConfig {
        FluvioSourceConfig {
            endpoint: endpoint.to_string(),
            ..FluvioSourceConfig::default()
        }
    }

    /// Checks what serde cannot; problems as (key, message).
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut bad = Vec::new();
        if self.endpoint.is_empty() || !self.endpoint.contains(':') {
            bad.push(("source.fluvio.endpoint", "must be host:port".to_string()));
        }
        if self.clicks_topic.is_empty() || self.conversions_topic.is_empty() {
            bad.push((
                "source.fluvio.clicks_topic",
                "topic names must not be empty".to_string(),
            ));
        }
        if self.clicks_topic == self.conversions_topic {
            bad.push((
                "source.fluvio.conversions_topic",
                format!(
                    "must differ from clicks_topic (both are {:?})",
                    self.clicks_topic
                ),
            ));
        }
        if self.consumer.is_empty() {
            bad.push(("source.fluvio.consumer", "must not be empty".to_string()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.partitions {
            if !seen.insert(p) {
                bad.push((
                    "source.fluvio.partitions",
                    format!("partition {p} is listed twice"),
                ));
            }
        }
        if !(64 << 10..=1 << 30).contains(&self.max_fetch_bytes) {
            bad.push((
                "source.fluvio.max_fetch_bytes",
                format!("{} is outside 65536..=1073741824", self.max_fetch_bytes),
            ));
        }
        bad
    }

    pub(super) fn topic(&self, stream: Stream) -> &str {
        match stream {
            Stream::Clicks => &self.clicks_topic,
            Stream::Conversions => &self.conversions_topic,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation_names_the_key() {
        let mut c = FluvioSourceConfig::default();
        assert!(c.validate().is_empty());
        c.conversions_topic = c.clicks_topic.clone();
        c.partitions = vec![1, 1];
        c.max_fetch_bytes = 10;
        let keys: Vec<_> = c.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "source.fluvio.conversions_topic",
                "source.fluvio.partitions",
                "source.fluvio.max_fetch_bytes"
            ]
        );
    }
}
