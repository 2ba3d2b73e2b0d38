//! Pipeline configuration: a TOML file (see `pipelines/`) → a typed, validated [`PipelineConfig`].
//!
//! Every key is documented where it is declared. Unknown keys are errors (a typo must not
//! silently fall back to a default), and every problem is reported as *file, key, what is
//! wrong* — `attribd check` prints them all and exits with code 2.
//!
//! `sections.rs` declares the tables (each component's own config and its `validate` live with
//! the component: `ParquetConfig`, `GeneratorConfig`, `FluvioSourceConfig`,
//! `ClickHouseConfig`); `errors.rs` the problem reports; `overrides.rs` the command-line flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::decode::DecodeLimits;
use crate::event::time::parse_rfc3339_ms;
use crate::source::file::MAX_LINE_BYTES;
use crate::state::EngineConfig;

mod errors;
mod overrides;
mod sections;
#[cfg(test)]
mod tests;

pub use errors::{ConfigError, ConfigProblem};
use errors::{missing_field_key, toml_key, unused_source_keys};
pub use overrides::Overrides;
pub use sections::*;

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
pub const DEFAULT_PIPELINE: &str = include_str!("../../pipelines/default.toml");

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
    /// Minimisation of personal fields at ingest (docs/operations.md, "Data lifecycle").
    #[serde(default)]
    pub privacy: crate::event::privacy::PrivacyConfig,
    /// Deleting outputs past their retention (docs/operations.md, "Data lifecycle"); absent →
    /// nothing is deleted.
    #[serde(default)]
    pub retention: Option<crate::lifecycle::retention::RetentionConfig>,
    /// The reporting currency and its FX rates (docs/reports.md); absent → conversions are
    /// not valued in a reporting currency.
    #[serde(default)]
    pub money: Option<crate::money::MoneyConfig>,
    /// Fraud signals' thresholds (docs/reports.md).
    #[serde(default)]
    pub fraud: crate::state::fraud::FraudConfig,
    /// Payout rules (docs/reports.md); needs `[money]`.
    #[serde(default)]
    pub payouts: Option<crate::money::PayoutsConfig>,
    /// `privacy` with its key file read, when the pipeline was loaded (not serialized).
    #[serde(skip)]
    pub privacy_applied: crate::event::privacy::Privacy,
    /// `money` and `payouts` with their files read, when the pipeline was loaded.
    #[serde(skip)]
    pub money_applied: Option<std::sync::Arc<crate::money::Money>>,
}

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
        let mut cfg: PipelineConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_string(),
            problems: vec![ConfigProblem {
                key: missing_field_key(text, &e).unwrap_or_else(|| toml_key(text, &e)),
                problem: e.message().to_string(),
            }],
        })?;
        let mut problems = unused_source_keys(text, cfg.source.kind);
        problems.extend(cfg.validate());
        // The key file is read here, once: a run never falls back to keeping addresses.
        match crate::event::privacy::Privacy::from_config(&cfg.privacy) {
            Ok(p) => cfg.privacy_applied = p,
            Err((key, problem)) => problems.push(ConfigProblem {
                key: key.to_string(),
                problem,
            }),
        }
        // Rates and rules are read here too, so `attribd check` reports their problems.
        match (&cfg.money, &cfg.payouts) {
            (None, Some(_)) => problems.push(ConfigProblem {
                key: "payouts".into(),
                problem:
                    "payouts need a reporting currency: add [money] reporting_currency = \"USD\""
                        .into(),
            }),
            (None, None) => {}
            (Some(money), payouts) => match crate::money::Money::load(money, payouts.as_ref()) {
                Ok(m) => cfg.money_applied = Some(std::sync::Arc::new(m)),
                Err(list) => {
                    problems.extend(list.into_iter().map(|(key, problem)| ConfigProblem {
                        key: key.to_string(),
                        problem,
                    }))
                }
            },
        }
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
                // [source.http] too: it may be there for `attribd ingest`.
                for (key, problem) in self
                    .source
                    .fluvio
                    .validate()
                    .into_iter()
                    .chain(self.source.http.validate())
                {
                    bad(key, problem);
                }
            }
            SourceKind::Generator => {
                for (key, problem) in self.source.generator.validate() {
                    bad(&key, problem);
                }
            }
            SourceKind::Http => {
                for (key, problem) in self.source.http.validate() {
                    bad(key, problem);
                }
            }
        }
        if self.source.with_http {
            if self.source.kind != SourceKind::Fluvio {
                bad(
                    "source.with_http",
                    format!(
                        "is for kind = \"fluvio\" (the door beside the topics); kind = \"{}\" {}",
                        self.source.kind.as_str(),
                        if self.source.kind == SourceKind::Http {
                            "is the door already"
                        } else {
                            "ends with its input, the door never does"
                        }
                    ),
                );
            } else if self.source.fluvio.exit_when_idle.is_some() {
                bad(
                    "source.fluvio.exit_when_idle",
                    "cannot end a run with the HTTP door open (source.with_http): stop it with SIGTERM".into(),
                );
            }
        }
        if let Some(r) = &self.retention {
            for (key, problem) in r.validate() {
                bad(key, problem);
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
            (
                "fraud.remember_flagged_ip".into(),
                Some(self.fraud.remember_flagged_ip),
            ),
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
            privacy: self.privacy_applied.clone(),
        }
    }
}
