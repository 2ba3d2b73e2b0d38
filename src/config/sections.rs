//! The tables of a pipeline file that belong to no single component: `[source]`,
//! `[semantics]`, `[limits]`, `[sink]`, `[checkpoint]`, `[metrics]`, `[log]`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::decode::DecodeLimits;
use crate::sink::clickhouse::ClickHouseConfig;
use crate::sink::parquet::ParquetConfig;
use crate::source::fluvio::FluvioSourceConfig;
use crate::source::generator::GeneratorConfig;
use crate::state::EngineConfig;

/// `[metrics]`: the operator's HTTP endpoint (`/metrics`, `/health`, `/ready`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `host:port` to listen on (port 0 picks a free one); `"off"` disables the endpoint.
    /// Loopback by default: expose it deliberately.
    pub addr: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            addr: "127.0.0.1:9464".to_string(),
        }
    }
}

impl MetricsConfig {
    /// The address to serve on, or `None` when switched off.
    pub fn enabled_addr(&self) -> Option<&str> {
        (self.addr != "off").then_some(self.addr.as_str())
    }
}

/// `[log]`: how log lines are written (to stderr).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (for people) or `json` (one object per line, for log shippers).
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[checkpoint]`: how often the state and positions are saved (see `src/checkpoint/`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Where snapshots live; default `OUT/_state`.
    pub state_dir: Option<PathBuf>,
    /// Take a checkpoint at least this often…
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    /// …and after this many input records.
    pub every_events: u64,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            state_dir: None,
            every: Duration::from_secs(30),
            every_events: 5_000_000,
        }
    }
}

pub(super) fn default_name() -> String {
    "attribd".to_string()
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The built-in generator (`[source.generator]`).
    Generator,
    /// NDJSON files or stdin (`clicks`, `conversions`).
    Files,
    /// Fluvio topics (`[source.fluvio]`).
    Fluvio,
    /// The HTTP door (`[source.http]`): requests logged ahead, then processed.
    Http,
}

impl SourceKind {
    /// The name as written in a pipeline file.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Generator => "generator",
            SourceKind::Files => "files",
            SourceKind::Fluvio => "fluvio",
            SourceKind::Http => "http",
        }
    }
}

/// `[source]`: where events come from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// Clicks NDJSON file (`.gz`/`.zst` by extension) or `-` for stdin; `kind = "files"`.
    #[serde(default)]
    pub clicks: Option<String>,
    /// Conversions NDJSON file or `-`; `kind = "files"`.
    #[serde(default)]
    pub conversions: Option<String>,
    /// Knobs of the built-in generator; `kind = "generator"`.
    #[serde(default)]
    pub generator: GeneratorConfig,
    /// Cluster, topics and partitions; `kind = "fluvio"`.
    #[serde(default)]
    pub fluvio: FluvioSourceConfig,
    /// Listen address, keys and limits of the HTTP door; `kind = "http"` (and `attribd ingest`).
    #[serde(default)]
    pub http: crate::source::http::HttpConfig,
    /// `kind = "fluvio"` only: open the HTTP door of `[source.http]` too, in this process.
    /// Its write-ahead log is one more partition of each stream, merged with the topics'.
    #[serde(default)]
    pub with_http: bool,
}

/// `[semantics]`: the windows of dedup and attribution.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SemanticsConfig {
    /// Largest click-to-conversion delay that still attributes ("30d").
    #[serde(with = "humantime_serde")]
    pub attribution_window: Duration,
    /// How long a conversion waits for a late click beyond the click watermark ("5m").
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// How long a conversion's dedup key is remembered ("90d").
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
}

impl Default for SemanticsConfig {
    fn default() -> Self {
        let d = EngineConfig::default();
        SemanticsConfig {
            attribution_window: Duration::from_millis(d.attribution_window_ms as u64),
            allowed_lateness: Duration::from_millis(d.allowed_lateness_ms as u64),
            dedup_window: Duration::from_millis(d.dedup_window_ms as u64),
        }
    }
}

/// `[limits]`: what a record may look like before it is dead-lettered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Longest accepted record, bytes. Also what a file source holds of a line: a longer one
    /// is skipped (its first KiB kept for the dead letter) instead of read into memory.
    pub max_record_bytes: usize,
    /// Deepest accepted nesting of arrays and objects in a record (its own object is level 1);
    /// deeper records are dead-lettered as `invalid_json`.
    pub max_json_depth: usize,
    /// Earliest accepted event time (RFC 3339).
    pub earliest_ts: String,
    /// How far past the wall clock an event time may lie ("7d").
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_record_bytes: DecodeLimits::default().max_record_bytes,
            max_json_depth: DecodeLimits::default().max_json_depth,
            earliest_ts: "2000-01-01T00:00:00Z".to_string(),
            max_future: Duration::from_millis(DecodeLimits::default().max_future_ms as u64),
        }
    }
}

/// `[sink]`: outputs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    pub parquet: ParquetConfig,
    /// Present → aggregates and conversions also go to ClickHouse.
    pub clickhouse: Option<ClickHouseConfig>,
    /// Write the aggregate by click hour (`stats_click_hour`, reports by click date). On by
    /// default; it costs about a fifth more CPU on high-cardinality data (docs/capacity.md).
    pub stats_click_hour: bool,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            parquet: ParquetConfig::default(),
            clickhouse: None,
            stats_click_hour: true,
        }
    }
}
