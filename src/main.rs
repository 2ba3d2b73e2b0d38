//! The `attribd` command line: signals, logging, and one arm per command —
//!
//! * `run` (the default): a pipeline to the end of its input, resuming from its checkpoint;
//! * `gen`: generated clicks and conversions as NDJSON files;
//! * `check`: validates a pipeline file (exit code 2 when it is wrong);
//! * `ingest`: the stateless HTTP edge, producing what its door accepts into Fluvio;
//! * `produce`: loads an NDJSON file into a Fluvio topic, keyed by `click_id`;
//! * `migrate`: creates the ClickHouse database and tables;
//! * `bench`: measures this machine and writes a capacity plan.

use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use attribd::config::{ConfigError, LogFormat, Overrides, PipelineConfig};
use attribd::pipeline::{RunOptions, run};
use attribd::sink::clickhouse::ClickHouseConfig;
use attribd::source::generator::GeneratorConfig;

#[derive(Parser)]
#[command(
    name = "attribd",
    version,
    about = "Stream processor for affiliate tracking data: dedup, attribution, Parquet"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Args, Default)]
struct RunArgs {
    /// Pipeline file.
    #[arg(long, short)]
    pipeline: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
    /// Start over: delete the pipeline's checkpoints and outputs instead of resuming.
    #[arg(long)]
    fresh: bool,
    /// No progress line.
    #[arg(long, short)]
    quiet: bool,
    /// Also write the summary as JSON here (counters, sizes, rows, seconds, events/s, peak RSS).
    #[arg(long)]
    summary_json: Option<PathBuf>,
}

#[derive(Args)]
struct IngestArgs {
    /// Pipeline file whose [source.http] and [source.fluvio] the edge uses (default: the
    /// sections' defaults).
    #[arg(long, short)]
    pipeline: Option<PathBuf>,
    /// Fluvio SC endpoint, `host:port`.
    #[arg(long)]
    fluvio_endpoint: Option<String>,
    /// Topic the clicks go to.
    #[arg(long)]
    fluvio_clicks_topic: Option<String>,
    /// Topic the conversions go to.
    #[arg(long)]
    fluvio_conversions_topic: Option<String>,
    /// The door's `ip:port` (source.http.listen).
    #[arg(long)]
    listen: Option<String>,
    /// Serve /metrics, /health and /ready on this `ip:port` (`off`: no endpoint).
    #[arg(long, env = "ATTRIBD_METRICS_ADDR")]
    metrics_addr: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "ATTRIBD_LOG_FORMAT")]
    log_format: Option<LogFormat>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline to the end of its input (default: pipelines/default.toml).
    Run(RunArgs),
    /// The stateless HTTP edge: the door of `[source.http]`, each accepted record produced
    /// into the `[source.fluvio]` topics keyed by click_id, answered 202 once Fluvio has
    /// acknowledged it. Runs until SIGTERM.
    Ingest(IngestArgs),
    /// Load an NDJSON file into a Fluvio topic, each record keyed by its click_id.
    Produce {
        /// Topic to write to (clicks or conversions).
        #[arg(long)]
        topic: String,
        /// NDJSON file (.gz/.zst by extension) or `-` for stdin.
        file: String,
        /// Fluvio SC endpoint, `host:port` (the same flag as `run --fluvio-endpoint`).
        #[arg(
            long = "fluvio-endpoint",
            alias = "endpoint",
            default_value = "127.0.0.1:9003"
        )]
        endpoint: String,
        /// Create the topic with this many partitions if it does not exist.
        #[arg(long)]
        create_partitions: Option<u32>,
    },
    /// Create the ClickHouse database and tables (numbered migrations; harmless to repeat).
    Migrate {
        /// HTTP endpoint, e.g. http://127.0.0.1:8123 (no credentials in it: they come from
        /// ATTRIBD_CLICKHOUSE_USER / ATTRIBD_CLICKHOUSE_PASSWORD or the pipeline's password_file).
        #[arg(long)]
        clickhouse_url: String,
        #[arg(long, default_value = "attribd")]
        database: String,
        /// Take retention and credentials settings from this pipeline's [sink.clickhouse].
        #[arg(long, short)]
        pipeline: Option<PathBuf>,
    },
    /// Write generated clicks and conversions as NDJSON files.
    Gen {
        /// Directory to write clicks.ndjson[.gz|.zst] and conversions.ndjson[.gz|.zst] into.
        #[arg(long, default_value = "./input")]
        out: PathBuf,
        /// Take the generator knobs from this pipeline's [source.generator].
        #[arg(long, short)]
        pipeline: Option<PathBuf>,
        /// Number of clicks (overrides the pipeline).
        #[arg(long)]
        clicks: Option<u64>,
        /// Random seed (overrides the pipeline).
        #[arg(long)]
        seed: Option<u64>,
        /// Compression of the files: none, gz, zst.
        #[arg(long, default_value = "none")]
        compress: String,
    },
    /// Measure this machine (end to end, per stage, memory per key, output sizes, checkpoint)
    /// and write a capacity plan: report.json, report.md and SVG plots in --report-dir.
    Bench {
        /// Clicks to generate for the end-to-end and per-stage runs.
        #[arg(long, default_value_t = 1_000_000)]
        clicks: u64,
        /// End-to-end runs per core count (the median is reported).
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Keys to insert for the memory curve (hash tables grow by doubling, so the figure
        /// per key depends on where N falls; 10 M matches `cargo bench --bench memory`).
        #[arg(long, default_value_t = 10_000_000)]
        keys: u64,
        /// Indexed clicks in the checkpoint measurement (plus a tenth as dedup keys).
        #[arg(long, default_value_t = 2_000_000)]
        checkpoint_clicks: u64,
        /// Also run end to end with a ClickHouse sink here (a scratch database is created and
        /// dropped; credentials from ATTRIBD_CLICKHOUSE_USER / _PASSWORD).
        #[arg(long)]
        clickhouse_url: Option<String>,
        /// Where report.json, report.md and the plots go.
        #[arg(long, default_value = "./bench-report")]
        report_dir: PathBuf,
        /// Measure nothing: recompute the capacity table of this report.json with the
        /// assumptions given.
        #[arg(long)]
        from: Option<PathBuf>,
        #[command(flatten)]
        assumptions: attribd::bench::capacity::Assumptions,
    },
    /// Delete the outputs past the pipeline's [retention] (a running daemon does this
    /// itself; `--dry-run` lists what would go, also beside a running daemon).
    Retention {
        #[arg(long, short)]
        pipeline: Option<PathBuf>,
        /// List, delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Judge expiry as of this time (RFC 3339, e.g. 2027-01-01T00:00:00Z) instead of now:
        /// what a later pass will delete. Only with --dry-run.
        #[arg(long, requires = "dry_run")]
        now: Option<String>,
    },
    /// Subject requests (GDPR / LGPD): export or erase one customer's data.
    Privacy {
        #[command(subcommand)]
        command: PrivacyCommand,
    },
    /// Validate a pipeline file; exit code 2 and one line per problem when it is wrong.
    Check {
        #[arg(long, short)]
        pipeline: Option<PathBuf>,
    },
}

#[derive(Args)]
struct SubjectArgs {
    #[arg(long, short)]
    pipeline: Option<PathBuf>,
    /// The customer_id of the postbacks.
    #[arg(long)]
    customer_id: String,
    /// Only this tenant's data (default: every tenant).
    #[arg(long)]
    tenant: Option<String>,
}

#[derive(Subcommand)]
enum PrivacyCommand {
    /// Every conversion version of the customer and the clicks they were attributed to, from
    /// Parquet and ClickHouse, as one JSON document (read-only; runs beside a daemon).
    Export {
        #[command(flatten)]
        subject: SubjectArgs,
        /// Where the JSON goes (`-`: stdout).
        #[arg(long, short, default_value = "-")]
        out: PathBuf,
    },
    /// Erase the customer: their conversions from Parquet and ClickHouse, the visitor fields
    /// of their clicks, their waiting postbacks from the running state; recorded in the audit
    /// log. Performed by the running daemon if there is one, else here.
    Delete {
        #[command(flatten)]
        subject: SubjectArgs,
        /// How long to wait for a running daemon to perform it.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
    },
}

/// Log lines go to stderr, filtered by `ATTRIBD_LOG` (default `info`); `json` writes one
/// object per line with the event's fields, for log shippers.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ATTRIBD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

impl From<SubjectArgs> for attribd::lifecycle::privacy::Subject {
    fn from(a: SubjectArgs) -> Self {
        attribd::lifecycle::privacy::Subject {
            customer_id: a.customer_id,
            tenant: a.tenant,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli
        .command
        .unwrap_or_else(|| Command::Run(RunArgs::default()));
    // `run` and `ingest` take the format from their pipeline (after loading it); the rest
    // from the env.
    if !matches!(command, Command::Run(_) | Command::Ingest(_)) {
        let format = match std::env::var("ATTRIBD_LOG_FORMAT").as_deref() {
            Ok("json") => LogFormat::Json,
            _ => LogFormat::Text,
        };
        init_logging(format);
    }
    match dispatch(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(cfg) = e.downcast_ref::<ConfigError>() {
                eprintln!("invalid configuration:\n{cfg}");
                return ExitCode::from(2);
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM / SIGINT: the first sets the returned flag (stop reading, checkpoint, exit 0); a
/// second exits at once with 128 + the signal's number (143, 130), like a process killed by
/// it. That is as safe as a crash: the last checkpoint on disk stays valid and the next run
/// resumes from it. The signals are handled on a thread of their own, so the line saying so is
/// logged normally.
fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .context("installing the signal handler")?;
    let flag = stop.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                if flag.swap(true, Ordering::SeqCst) {
                    tracing::warn!(
                        "second {name}: exiting now without a final checkpoint; the next run \
                         resumes from the last one"
                    );
                    std::process::exit(128 + sig);
                }
                tracing::info!(
                    "{name}: finishing with a final checkpoint; send it again to exit at once"
                );
            }
        })
        .context("starting the signal thread")?;
    Ok(stop)
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run(RunArgs {
            pipeline,
            overrides,
            fresh,
            quiet,
            summary_json,
        }) => {
            let mut cfg = PipelineConfig::load_or_default(pipeline.as_deref())?;
            cfg.apply_overrides(overrides)?;
            init_logging(cfg.log.format);
            tracing::info!(pipeline = %cfg.name, out = %cfg.sink.parquet.out.display(), "starting");
            let stop = stop_on_signals()?;
            let report = run(
                &cfg,
                RunOptions {
                    progress: !quiet,
                    fresh,
                    stop,
                    metrics: None,
                },
            )?;
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            if let Some(path) = summary_json {
                let json = serde_json::json!({
                    "report": &report,
                    "seconds": report.elapsed.as_secs_f64(),
                    "events_per_second": report.events_per_second(),
                    "cores": cores,
                    "peak_rss_bytes": attribd::bench::measure::peak_rss_bytes(),
                });
                std::fs::write(&path, serde_json::to_string_pretty(&json)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            println!("attribd run `{}` finished:", cfg.name);
            print!("{}", attribd::report::summary(&report, cores));
            Ok(())
        }
        Command::Gen {
            out,
            pipeline,
            clicks,
            seed,
            compress,
        } => {
            let mut g: GeneratorConfig = match pipeline {
                Some(p) => PipelineConfig::load(&p)?.source.generator,
                None => PipelineConfig::load_or_default(None)?.source.generator,
            };
            if let Some(n) = clicks {
                g.clicks = n;
            }
            if let Some(s) = seed {
                g.seed = s;
            }
            let counts = attribd::source::generator::write_files(&g, &out, &compress)?;
            println!(
                "wrote {} click lines and {} conversion lines ({} malformed) to {}",
                counts.click_lines,
                counts.conversion_lines,
                counts.malformed,
                out.display()
            );
            Ok(())
        }
        Command::Bench {
            clicks,
            repeat,
            keys,
            checkpoint_clicks,
            clickhouse_url,
            report_dir,
            from,
            assumptions,
        } => {
            let report = match from {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let report: attribd::bench::BenchReport = serde_json::from_str(&text)
                        .with_context(|| format!("{} is not a bench report", path.display()))?;
                    let report = report.with_assumptions(assumptions);
                    attribd::bench::write_report(&report, &report_dir)?;
                    report
                }
                None => attribd::bench::run(&attribd::bench::BenchOptions {
                    clicks,
                    repeat,
                    keys,
                    checkpoint_clicks,
                    clickhouse_url,
                    report_dir: report_dir.clone(),
                    assumptions,
                })?,
            };
            print!("{}", attribd::bench::markdown(&report));
            println!(
                "\nwritten: {}/report.json, report.md, throughput-vs-cores.svg, memory-vs-keys.svg",
                report_dir.display()
            );
            Ok(())
        }
        Command::Retention {
            pipeline,
            dry_run,
            now,
        } => {
            let cfg = PipelineConfig::load_or_default(pipeline.as_deref())?;
            let now_ms = match now {
                Some(t) => chrono::DateTime::parse_from_rfc3339(&t)
                    .with_context(|| format!("--now {t:?} is not an RFC 3339 time"))?
                    .timestamp_millis(),
                None => attribd::lifecycle::retention::now_ms(),
            };
            attribd::lifecycle::cli::retention(&cfg, dry_run, now_ms)
        }
        Command::Privacy { command } => match command {
            PrivacyCommand::Export { subject, out } => {
                let cfg = PipelineConfig::load_or_default(subject.pipeline.as_deref())?;
                attribd::lifecycle::cli::export(&cfg, &subject.into(), &out)
            }
            PrivacyCommand::Delete { subject, wait } => {
                let cfg = PipelineConfig::load_or_default(subject.pipeline.as_deref())?;
                let removed = attribd::lifecycle::cli::delete(&cfg, subject.into(), wait)?;
                println!("{}", serde_json::to_string(&removed)?);
                Ok(())
            }
        },
        Command::Migrate {
            clickhouse_url,
            database,
            pipeline,
        } => {
            let mut ch = match pipeline {
                Some(p) => {
                    let cfg = PipelineConfig::load(&p)?;
                    let mut ch = cfg.sink.clickhouse.unwrap_or_default();
                    // [retention] is the one place retention is set when it is there: the
                    // TTL follows it ("forever": no TTL).
                    if let Some(r) = &cfg.retention {
                        ch.stats_retention_days = r.stats.whole_days();
                        ch.conversions_retention_days = r.conversions.whole_days();
                    }
                    ch
                }
                None => ClickHouseConfig::default(),
            };
            ch.url = clickhouse_url;
            ch.database = database;
            let problems: Vec<_> = ch
                .validate()
                .into_iter()
                .map(|(key, problem)| attribd::config::ConfigProblem {
                    key: format!("sink.clickhouse.{key}"),
                    problem,
                })
                .collect();
            if !problems.is_empty() {
                return Err(ConfigError {
                    file: "(command line)".into(),
                    problems,
                }
                .into());
            }
            let applied = attribd::sink::clickhouse::migrate(&ch)?;
            if applied.is_empty() {
                println!("database `{}` is up to date", ch.database);
            } else {
                println!("database `{}`: applied migrations {applied:?}", ch.database);
            }
            Ok(())
        }
        Command::Ingest(args) => {
            let file = args
                .pipeline
                .as_ref()
                .map_or_else(|| "(defaults)".to_string(), |p| p.display().to_string());
            let mut cfg = match &args.pipeline {
                Some(p) => PipelineConfig::load(p)?,
                None => PipelineConfig::parse("[source]\nkind = \"fluvio\"\n", &file)?,
            };
            let f = &mut cfg.source.fluvio;
            f.endpoint = args.fluvio_endpoint.unwrap_or(f.endpoint.clone());
            f.clicks_topic = args.fluvio_clicks_topic.unwrap_or(f.clicks_topic.clone());
            f.conversions_topic = args
                .fluvio_conversions_topic
                .unwrap_or(f.conversions_topic.clone());
            if let Some(l) = args.listen {
                cfg.source.http.listen = l;
            }
            if let Some(a) = args.metrics_addr {
                cfg.metrics.addr = a;
            }
            if let Some(f) = args.log_format {
                cfg.log.format = f;
            }
            attribd::ingest::validate(&cfg, &file)?;
            init_logging(cfg.log.format);
            let stop = stop_on_signals()?;
            attribd::ingest::run(&cfg, stop)
        }
        Command::Produce {
            topic,
            file,
            endpoint,
            create_partitions,
        } => {
            if let Some(p) = create_partitions {
                attribd::source::fluvio::ensure_topic(&endpoint, &topic, p)?;
            }
            let n = attribd::source::fluvio::produce(&endpoint, &topic, &file)?;
            println!("produced {n} records to {topic}");
            Ok(())
        }
        Command::Check { pipeline } => {
            let cfg = PipelineConfig::load_or_default(pipeline.as_deref())?;
            println!(
                "{}: ok (source {:?}, out {})",
                pipeline
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "default pipeline".into()),
                cfg.source.kind,
                cfg.sink.parquet.out.display()
            );
            Ok(())
        }
    }
}
