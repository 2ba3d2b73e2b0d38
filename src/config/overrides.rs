//! Command-line overrides of `attribd run`: the flags, declared next to what they override.

use std::path::PathBuf;
use std::time::Duration;

use super::{ConfigError, LogFormat, PipelineConfig, SourceKind};
use crate::sink::clickhouse::ClickHouseConfig;

impl PipelineConfig {
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
        // Flags that only a Fluvio source reads: named if the source is something else, so
        // a flag the run would ignore is an error rather than a surprise.
        let fluvio_only: Vec<&str> = [
            ("--fluvio-partitions", fluvio_partitions.is_some()),
            ("--fluvio-consumer", fluvio_consumer.is_some()),
            ("--exit-when-idle", exit_when_idle.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect();
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
        let mut problems = self.validate();
        let reads = match self.source.kind {
            SourceKind::Files => Some("files"),
            SourceKind::Generator => Some("the generator"),
            SourceKind::Http => Some("HTTP requests"),
            SourceKind::Fluvio => None,
        };
        if let Some(reads) = reads {
            for flag in fluvio_only {
                problems.push(super::ConfigProblem {
                    key: "source.kind".into(),
                    problem: format!(
                        "{flag} applies to a Fluvio source only, and this run reads {reads} \
                         (give --fluvio-endpoint or a pipeline with kind = \"fluvio\")"
                    ),
                });
            }
        }
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
