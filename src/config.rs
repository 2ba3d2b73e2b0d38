//! Pipeline configuration: a TOML file (see `pipelines/`) → a typed, validated [`PipelineConfig`].
//!
//! Every key is documented where it is declared. Unknown keys are errors (a typo must not
//! silently fall back to a default), and every problem is reported as *file, key, what is
//! wrong* — `attribd check` prints them all and exits with code 2.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::decode::DecodeLimits;
use crate::event::time::parse_rfc3339_ms;
use crate::sink::clickhouse::ClickHouseConfig;
use crate::sink::parquet::ParquetConfig;
use crate::source::file::MAX_LINE_BYTES;
use crate::source::fluvio::FluvioSourceConfig;
use crate::source::generator::GeneratorConfig;
use crate::state::EngineConfig;

/// The longest duration any key accepts: a century (of 365.25-day years). Beyond it nothing
/// means anything, and the times computed from a duration (epoch milliseconds in an `i64`,
/// deadlines) would overflow — `"1000000000y"` passed for years and then dead-lettered every
/// record.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 36_525 * 864);

/// The deepest `limits.max_json_depth`: readers of the stored JSON (`metadata` in DuckDB,
/// ClickHouse, pandas) parse it recursively, and nothing real nests this deep.
pub const MAX_JSON_DEPTH: usize = 10_000;

/// The pipeline `attribd run` uses when given no `--pipeline` (also embedded in the binary, so it
/// works from any directory).
pub const DEFAULT_PIPELINE_PATH: &str = "pipelines/default.toml";
pub const DEFAULT_PIPELINE: &str = include_str!("../pipelines/default.toml");

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Name shown in logs and the summary.
    #[serde(default = "default_name")]
    pub name: String,
    pub source: SourceConfig,
    #[serde(default)]
    pub semantics: SemanticsConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub sink: SinkConfig,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub log: LogConfig,
}

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

fn default_name() -> String {
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
}

impl SourceKind {
    /// The name as written in a pipeline file.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Generator => "generator",
            SourceKind::Files => "files",
            SourceKind::Fluvio => "fluvio",
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    pub parquet: ParquetConfig,
    /// Present → aggregates and conversions also go to ClickHouse.
    pub clickhouse: Option<ClickHouseConfig>,
}

/// One problem in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub problem: String,
}

/// Everything wrong with a pipeline file; `Display` prints one `file: key: problem` per line.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: key `{}`: {}", self.file, p.key, p.problem)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl PipelineConfig {
    /// Reads and validates a pipeline file.
    pub fn load(path: &Path) -> Result<PipelineConfig, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            problems: vec![ConfigProblem {
                key: "(file)".into(),
                problem: format!("cannot read: {e}"),
            }],
        })?;
        Self::parse(&text, &file)
    }

    /// `--pipeline` if given, else `pipelines/default.toml` if present, else the embedded default.
    pub fn load_or_default(path: Option<&Path>) -> Result<PipelineConfig, ConfigError> {
        match path {
            Some(p) => Self::load(p),
            None if Path::new(DEFAULT_PIPELINE_PATH).exists() => {
                Self::load(Path::new(DEFAULT_PIPELINE_PATH))
            }
            None => Self::parse(DEFAULT_PIPELINE, "(embedded default pipeline)"),
        }
    }

    pub fn parse(text: &str, file: &str) -> Result<PipelineConfig, ConfigError> {
        let cfg: PipelineConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_string(),
            problems: vec![ConfigProblem {
                key: missing_field_key(text, &e).unwrap_or_else(|| toml_key(text, &e)),
                problem: e.message().to_string(),
            }],
        })?;
        let mut problems = unused_source_keys(text, cfg.source.kind);
        problems.extend(cfg.validate());
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError {
                file: file.to_string(),
                problems,
            })
        }
    }

    /// Checks the values serde cannot: ranges, required combinations, formats.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut p = Vec::new();
        let mut bad = |key: &str, problem: String| {
            p.push(ConfigProblem {
                key: key.to_string(),
                problem,
            })
        };
        match self.source.kind {
            SourceKind::Files => {
                if self.source.clicks.is_none() && self.source.conversions.is_none() {
                    bad(
                        "source.clicks",
                        "kind = \"files\" needs `clicks` and/or `conversions` (a path or \"-\")"
                            .into(),
                    );
                }
                if self.source.clicks.as_deref() == Some("-")
                    && self.source.conversions.as_deref() == Some("-")
                {
                    bad(
                        "source.conversions",
                        "only one stream can read stdin (\"-\")".into(),
                    );
                }
            }
            SourceKind::Fluvio => {
                for (key, problem) in self.source.fluvio.validate() {
                    bad(key, problem);
                }
            }
            SourceKind::Generator => {
                for (key, problem) in self.source.generator.validate() {
                    bad(&key, problem);
                }
            }
        }
        if self.semantics.attribution_window.is_zero() {
            bad(
                "semantics.attribution_window",
                "must be longer than zero".into(),
            );
        }
        if self.semantics.dedup_window < self.semantics.attribution_window {
            bad(
                "semantics.dedup_window",
                format!(
                    "must be at least the attribution window ({}), got {}",
                    humantime::format_duration(self.semantics.attribution_window),
                    humantime::format_duration(self.semantics.dedup_window)
                ),
            );
        }
        if !(64..=MAX_LINE_BYTES).contains(&self.limits.max_record_bytes) {
            bad(
                "limits.max_record_bytes",
                format!(
                    "must be 64..={MAX_LINE_BYTES} (1 GiB), got {}",
                    self.limits.max_record_bytes
                ),
            );
        }
        if !(1..=MAX_JSON_DEPTH).contains(&self.limits.max_json_depth) {
            bad(
                "limits.max_json_depth",
                format!(
                    "must be 1..={MAX_JSON_DEPTH}, got {}",
                    self.limits.max_json_depth
                ),
            );
        }
        if parse_rfc3339_ms(&self.limits.earliest_ts).is_none() {
            bad(
                "limits.earliest_ts",
                format!(
                    "must be an RFC 3339 timestamp, got {:?}",
                    self.limits.earliest_ts
                ),
            );
        }
        for (key, problem) in self.sink.parquet.validate() {
            bad(key, problem);
        }
        if self.checkpoint.every.is_zero() || self.checkpoint.every_events == 0 {
            bad(
                "checkpoint.every",
                "checkpoint.every and checkpoint.every_events must be above zero".into(),
            );
        }
        if let Some(addr) = self.metrics.enabled_addr()
            && addr.parse::<std::net::SocketAddr>().is_err()
        {
            bad(
                "metrics.addr",
                format!("must be ip:port (e.g. 127.0.0.1:9464) or \"off\", got {addr:?}"),
            );
        }
        if let Some(ch) = &self.sink.clickhouse {
            for (key, problem) in ch.validate() {
                bad(&format!("sink.clickhouse.{key}"), problem);
            }
        }
        for (key, d) in self.durations() {
            if d > MAX_DURATION {
                bad(
                    &key,
                    format!(
                        "must be at most 100 years, got {}",
                        humantime::format_duration(d)
                    ),
                );
            }
        }
        p
    }

    /// Every duration of the pipeline with its key (those of absent options left out).
    fn durations(&self) -> Vec<(String, Duration)> {
        let s = &self.semantics;
        let f = &self.source.fluvio;
        let mut all: Vec<(String, Option<Duration>)> = vec![
            (
                "semantics.attribution_window".into(),
                Some(s.attribution_window),
            ),
            (
                "semantics.allowed_lateness".into(),
                Some(s.allowed_lateness),
            ),
            ("semantics.dedup_window".into(), Some(s.dedup_window)),
            ("limits.max_future".into(), Some(self.limits.max_future)),
            ("checkpoint.every".into(), Some(self.checkpoint.every)),
            (
                "sink.parquet.roll_age".into(),
                Some(self.sink.parquet.roll_age),
            ),
            ("source.fluvio.exit_when_idle".into(), f.exit_when_idle),
            ("source.fluvio.connect_timeout".into(), f.connect_timeout),
        ];
        if let Some(ch) = &self.sink.clickhouse {
            for (key, d) in [
                ("retry_initial", ch.retry_initial),
                ("retry_max", ch.retry_max),
                ("breaker_cooldown", ch.breaker_cooldown),
                ("request_timeout", ch.request_timeout),
            ] {
                all.push((format!("sink.clickhouse.{key}"), Some(d)));
            }
        }
        all.into_iter()
            .filter_map(|(key, d)| Some((key, d?)))
            .collect()
    }

    /// The state directory: `checkpoint.state_dir`, or `_state` inside the output directory.
    pub fn state_dir(&self) -> PathBuf {
        self.checkpoint
            .state_dir
            .clone()
            .unwrap_or_else(|| self.sink.parquet.out.join("_state"))
    }

    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            attribution_window_ms: self.semantics.attribution_window.as_millis() as i64,
            allowed_lateness_ms: self.semantics.allowed_lateness.as_millis() as i64,
            dedup_window_ms: self.semantics.dedup_window.as_millis() as i64,
        }
    }

    pub fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_record_bytes: self.limits.max_record_bytes,
            max_json_depth: self.limits.max_json_depth,
            min_ts_ms: parse_rfc3339_ms(&self.limits.earliest_ts)
                .unwrap_or(DecodeLimits::default().min_ts_ms),
            max_future_ms: self.limits.max_future.as_millis() as i64,
        }
    }

    /// Applies `--clicks`, `--conversions`, `--out` overrides: giving an input switches the
    /// source to files.
    pub fn apply_overrides(&mut self, o: Overrides) -> Result<(), ConfigError> {
        let Overrides {
            clicks,
            conversions,
            out,
            clickhouse_url,
            clickhouse_database,
            fluvio_endpoint,
            fluvio_clicks_topic,
            fluvio_conversions_topic,
            fluvio_partitions,
            fluvio_consumer,
            exit_when_idle,
            metrics_addr,
            log_format,
        } = o;
        if let Some(addr) = metrics_addr {
            self.metrics.addr = addr;
        }
        if let Some(f) = log_format {
            self.log.format = f;
        }
        if let Some(p) = fluvio_partitions {
            self.source.fluvio.partitions = p;
        }
        if let Some(c) = fluvio_consumer {
            self.source.fluvio.consumer = c;
        }
        if fluvio_endpoint.is_some()
            || fluvio_clicks_topic.is_some()
            || fluvio_conversions_topic.is_some()
        {
            self.source.kind = SourceKind::Fluvio;
            let f = &mut self.source.fluvio;
            if let Some(e) = fluvio_endpoint {
                f.endpoint = e;
            }
            if let Some(t) = fluvio_clicks_topic {
                f.clicks_topic = t;
            }
            if let Some(t) = fluvio_conversions_topic {
                f.conversions_topic = t;
            }
        }
        if exit_when_idle.is_some() {
            self.source.fluvio.exit_when_idle = exit_when_idle;
        }
        if clickhouse_url.is_some() || clickhouse_database.is_some() {
            let ch = self
                .sink
                .clickhouse
                .get_or_insert_with(ClickHouseConfig::default);
            if let Some(url) = clickhouse_url {
                ch.url = url;
            }
            if let Some(db) = clickhouse_database {
                ch.database = db;
            }
        }
        if clicks.is_some() || conversions.is_some() {
            self.source.kind = SourceKind::Files;
            self.source.clicks = clicks;
            self.source.conversions = conversions;
        }
        if let Some(out) = out {
            self.sink.parquet.out = out;
        }
        let problems = self.validate();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                file: "(command line)".into(),
                problems,
            })
        }
    }
}

/// Command-line overrides of `attribd run` (the flags are declared here, next to what they
/// override).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Clicks NDJSON file (.gz/.zst by extension) or `-` for stdin; switches to file input.
    #[arg(long)]
    pub clicks: Option<String>,
    /// Conversions NDJSON file or `-`; switches to file input.
    #[arg(long)]
    pub conversions: Option<String>,
    /// Output directory for Parquet and dead letters.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Add a ClickHouse sink writing to this HTTP endpoint (credentials come from
    /// ATTRIBD_CLICKHOUSE_USER / ATTRIBD_CLICKHOUSE_PASSWORD, never the command line).
    #[arg(long)]
    pub clickhouse_url: Option<String>,
    /// Database of the ClickHouse sink (default: attribd).
    #[arg(long)]
    pub clickhouse_database: Option<String>,
    /// Read from this Fluvio cluster (SC `host:port`); switches to the Fluvio source.
    #[arg(long)]
    pub fluvio_endpoint: Option<String>,
    /// Fluvio topic of clicks (default: clicks).
    #[arg(long)]
    pub fluvio_clicks_topic: Option<String>,
    /// Fluvio topic of conversions (default: conversions).
    #[arg(long)]
    pub fluvio_conversions_topic: Option<String>,
    /// Fluvio partitions this instance owns, e.g. `0,1` (default: all).
    #[arg(long, value_delimiter = ',')]
    pub fluvio_partitions: Option<Vec<u32>>,
    /// Fluvio consumer name under which offsets are committed (default: attribd); one per
    /// instance (or per set of partitions).
    #[arg(long)]
    pub fluvio_consumer: Option<String>,
    /// Stop, with everything flushed and committed, after no new record for this long
    /// (e.g. `10s`; Fluvio backfills and tests).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub exit_when_idle: Option<Duration>,
    /// Serve /metrics, /health and /ready on this `ip:port` (port 0: any free port; `off`:
    /// no endpoint).
    #[arg(long, env = "ATTRIBD_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// Log format: text or json (default: the pipeline's `[log] format`).
    #[arg(long, env = "ATTRIBD_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// Keys of `[source]` that `source.kind` does not use (a `[source.fluvio]` table under
/// `kind = "files"`, `clicks` under `kind = "fluvio"`): errors, like unknown keys, since they
/// would be silently ignored. Judged from the file's text, so a table that is present counts
/// even when it is empty or equal to the defaults. (Command-line overrides may switch the kind
/// of a pipeline on purpose; this concerns the file.)
fn unused_source_keys(text: &str, kind: SourceKind) -> Vec<ConfigProblem> {
    let Ok(doc) = toml::from_str::<toml::Table>(text) else {
        return Vec::new();
    };
    let Some(source) = doc.get("source").and_then(|s| s.as_table()) else {
        return Vec::new();
    };
    source
        .keys()
        .filter_map(|key| {
            let owner = match key.as_str() {
                "generator" => SourceKind::Generator,
                "fluvio" => SourceKind::Fluvio,
                "clicks" | "conversions" => SourceKind::Files,
                _ => return None,
            };
            (owner != kind).then(|| ConfigProblem {
                key: format!("source.{key}"),
                problem: format!(
                    "is for kind = \"{}\", not used by kind = \"{}\"; remove it or change source.kind",
                    owner.as_str(),
                    kind.as_str()
                ),
            })
        })
        .collect()
}

/// The dotted key of a "missing field" error: the field inside the table the error's span
/// points at (`source.kind` for a `[source]` without `kind`, also for a file without
/// `[source]`, since `kind` is the one key a pipeline must give).
fn missing_field_key(text: &str, e: &toml::de::Error) -> Option<String> {
    let field = e
        .message()
        .strip_prefix("missing field `")?
        .strip_suffix('`')?;
    let span = e.span()?;
    if span.is_empty() {
        // The top-level table.
        return Some(match field {
            "source" => "source.kind".to_string(),
            f => f.to_string(),
        });
    }
    let at = text.get(span.clone())?.trim();
    let table = if at.starts_with('[') {
        // A `[table]` header.
        at.trim_matches(['[', ']']).trim().to_string()
    } else {
        // An inline table: `table = { … }`.
        toml_key(text, e)
    };
    Some(format!("{table}.{field}"))
}

/// Best effort: the dotted key a TOML error points at, from the error's span.
fn toml_key(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return "(file)".into();
    };
    let before = &text[..span.start.min(text.len())];
    let table = before
        .lines()
        .rev()
        .find_map(|l| {
            let l = l.trim();
            (l.starts_with('[') && l.ends_with(']')).then(|| l.trim_matches(['[', ']']).to_string())
        })
        .unwrap_or_default();
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line.split('=').next().unwrap_or("").trim().to_string();
    let key = if key.starts_with('[') || key.is_empty() {
        String::new()
    } else {
        key
    };
    match (table.is_empty(), key.is_empty()) {
        (true, true) => "(file)".into(),
        (true, false) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let cfg = PipelineConfig::parse(DEFAULT_PIPELINE, "default").unwrap();
        assert_eq!(cfg.source.kind, SourceKind::Generator);
        assert_eq!(
            cfg.semantics.attribution_window,
            Duration::from_secs(30 * 86_400)
        );
    }

    #[test]
    fn problems_name_the_key() {
        let text = "[source]\nkind = \"generator\"\n[source.generator]\nconversion_rate = 1.5\n[semantics]\ndedup_window = \"1d\"\n";
        let err = PipelineConfig::parse(text, "p.toml").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(
                "p.toml: key `source.generator.conversion_rate`: must be between 0 and 1, got 1.5"
            ),
            "{msg}"
        );
        assert!(msg.contains("key `semantics.dedup_window`"), "{msg}");
        assert_eq!(err.problems.len(), 2);
    }

    #[test]
    fn unknown_keys_and_bad_types_are_errors() {
        let err = PipelineConfig::parse("[source]\nkind = \"files\"\nclickz = \"x\"\n", "p.toml")
            .unwrap_err();
        assert_eq!(err.problems[0].key, "source.clickz");
        assert!(err.problems[0].problem.contains("unknown field"), "{err}");
        let err = PipelineConfig::parse(
            "[source]\nkind = \"files\"\nclicks = \"x\"\n[semantics]\nallowed_lateness = \"soon\"\n",
            "p.toml",
        )
        .unwrap_err();
        assert_eq!(err.problems[0].key, "semantics.allowed_lateness");
        let err = PipelineConfig::parse("[source]\nkind = \"files\"\n", "p.toml").unwrap_err();
        assert_eq!(err.problems[0].key, "source.clicks");
    }

    fn keys(text: &str) -> Vec<String> {
        match PipelineConfig::parse(text, "p.toml") {
            Ok(_) => Vec::new(),
            Err(e) => e.problems.into_iter().map(|p| p.key).collect(),
        }
    }

    #[test]
    fn every_shipped_pipeline_is_valid() {
        for name in ["default", "files", "fluvio-clickhouse"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("pipelines/{name}.toml"));
            if let Err(e) = PipelineConfig::load(&path) {
                panic!("{e}");
            }
        }
    }

    /// `1000000000y` parses as a duration but overflows every time computed from it: each
    /// duration key refuses more than a century, naming itself.
    #[test]
    fn durations_beyond_a_century_are_refused() {
        let base = "[source]\nkind = \"generator\"\n";
        for (table, key) in [
            ("semantics", "attribution_window"),
            ("semantics", "allowed_lateness"),
            ("semantics", "dedup_window"),
            ("limits", "max_future"),
            ("checkpoint", "every"),
            ("sink.parquet", "roll_age"),
            ("source.fluvio", "exit_when_idle"),
            ("source.fluvio", "connect_timeout"),
            ("sink.clickhouse", "retry_initial"),
            ("sink.clickhouse", "retry_max"),
            ("sink.clickhouse", "breaker_cooldown"),
            ("sink.clickhouse", "request_timeout"),
        ] {
            let kind = if table == "source.fluvio" {
                "[source]\nkind = \"fluvio\"\n"
            } else {
                base
            };
            let ch = if table == "sink.clickhouse" {
                "url = \"http://127.0.0.1:8123\"\n"
            } else {
                ""
            };
            // Keys bounded by another: dedup_window ≥ attribution_window, retry_max ≥
            // retry_initial.
            let other = match key {
                "attribution_window" => "dedup_window = \"100y\"\n",
                "retry_initial" => "retry_max = \"100y\"\n",
                _ => "",
            };
            let text = |v: &str| format!("{kind}[{table}]\n{ch}{other}{key} = \"{v}\"\n");
            let err = PipelineConfig::parse(&text("1000000000y"), "p.toml").unwrap_err();
            let msg = err.to_string();
            let want = format!("p.toml: key `{table}.{key}`: must be at most 100 years, got ");
            assert!(msg.contains(&want), "{msg}");
            // (Past its bounding key, it is also said to be so.)
            if !["attribution_window", "retry_initial"].contains(&key) {
                assert_eq!(err.problems.len(), 1, "{msg}");
            }
            assert!(keys(&text("101y")).contains(&format!("{table}.{key}")));
            assert_eq!(keys(&text("100y")), Vec::<String>::new(), "{table}.{key}");
        }
        // The generator's durations, numbers of hours, seconds and minutes.
        let generator = |knob: &str| {
            keys(&format!(
                "[source]\nkind = \"generator\"\n[source.generator]\n{knob}\n"
            ))
        };
        assert_eq!(
            generator("span_hours = 1e12"),
            ["source.generator.span_hours"]
        );
        assert_eq!(
            generator("max_delay_seconds = 9223372036854775807"),
            ["source.generator.max_delay_seconds"]
        );
        for bad in ["1e15", "-1.0", "nan"] {
            assert_eq!(
                generator(&format!("mean_conversion_delay_minutes = {bad}")),
                ["source.generator.mean_conversion_delay_minutes"]
            );
        }
        assert!(generator("span_hours = 876600.0\nmax_delay_seconds = 3155760000").is_empty());
    }

    #[test]
    fn max_json_depth_defaults_to_128_and_is_bounded() {
        let cfg = PipelineConfig::parse(DEFAULT_PIPELINE, "default").unwrap();
        assert_eq!(cfg.decode_limits().max_json_depth, 128);
        let limits = |line: &str| {
            let text = format!("[source]\nkind = \"generator\"\n[limits]\n{line}\n");
            (
                keys(&text),
                PipelineConfig::parse(&text, "p.toml").map(|c| c.decode_limits()),
            )
        };
        assert_eq!(limits("max_json_depth = 7").1.unwrap().max_json_depth, 7);
        assert_eq!(limits("max_json_depth = 0").0, ["limits.max_json_depth"]);
        assert_eq!(
            limits("max_json_depth = 10001").0,
            ["limits.max_json_depth"]
        );
        assert!(limits("max_json_depth = 10000").0.is_empty());
        // A line is held in memory up to max_record_bytes: at most 1 GiB.
        assert_eq!(
            limits("max_record_bytes = 1073741825").0,
            ["limits.max_record_bytes"]
        );
        assert!(limits("max_record_bytes = 1073741824").0.is_empty());
    }

    /// A source table or key that `source.kind` does not use is an error, even when empty or
    /// equal to the defaults; the command line may still switch the kind.
    #[test]
    fn source_tables_the_kind_does_not_use_are_errors() {
        let err = PipelineConfig::parse(
            "[source]\nkind = \"files\"\nclicks = \"c.ndjson\"\n[source.fluvio]\n",
            "p.toml",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "p.toml: key `source.fluvio`: is for kind = \"fluvio\", not used by kind = \"files\"; remove it or change source.kind"
        );
        let gen_defaults = "[source.generator]\nseed = 42\n";
        assert_eq!(
            keys(&format!(
                "[source]\nkind = \"files\"\nclicks = \"c\"\n{gen_defaults}"
            )),
            ["source.generator"]
        );
        assert_eq!(
            keys("[source]\nkind = \"fluvio\"\nclicks = \"c\"\nconversions = \"v\"\n"),
            ["source.clicks", "source.conversions"]
        );
        assert_eq!(
            keys("[source]\nkind = \"generator\"\nconversions = \"v\"\nfluvio = {}\n"),
            ["source.conversions", "source.fluvio"]
        );
        assert_eq!(
            keys("source = { kind = \"fluvio\", generator = { seed = 1 } }\n"),
            ["source.generator"]
        );
        // Each kind with its own table is fine; `--clicks` switches a generator pipeline to
        // files without complaint.
        assert!(keys("[source]\nkind = \"generator\"\n[source.generator]\n").is_empty());
        assert!(keys("[source]\nkind = \"fluvio\"\n[source.fluvio]\n").is_empty());
        let mut cfg = PipelineConfig::parse(DEFAULT_PIPELINE, "default").unwrap();
        cfg.apply_overrides(Overrides {
            clicks: Some("c.ndjson".into()),
            ..Overrides::default()
        })
        .unwrap();
    }

    #[test]
    fn a_missing_source_kind_is_named_source_kind() {
        for text in [
            "[source]\nclicks = \"x\"\n",
            "name = \"x\"\n",
            "",
            "source = {}\n",
            "[semantics]\n[ source ]\n[sink.parquet]\nout = \"y\"\n",
        ] {
            let err = PipelineConfig::parse(text, "p.toml").unwrap_err();
            assert_eq!(err.problems[0].key, "source.kind", "{text:?}: {err}");
        }
        let err = PipelineConfig::parse("[source]\n", "p.toml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "p.toml: key `source.kind`: missing field `kind`"
        );
    }
}
