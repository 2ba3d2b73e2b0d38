//! `attribd bench`: measures this machine and turns the figures into a capacity plan.
//!
//! It sits outside the data flow: it generates NDJSON input, runs the real pipeline over it
//! ([`measure`]), and writes `report.json`, `report.md` (with the [`capacity`] table) and two
//! SVG plots into the report directory. `docs/capacity.md` holds the latest report.

pub mod capacity;
pub mod measure;
mod plot;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::sink::clickhouse::ClickHouseConfig;
use crate::source::generator::{GeneratorConfig, write_files};
use capacity::{Assumptions, CapacityRow, Costs};
use measure::{CheckpointCost, EndToEnd, MemoryCurve, OutputSizes, StageRates};

/// What to measure (`attribd bench` flags).
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Clicks generated for the end-to-end and stage runs.
    pub clicks: u64,
    /// End-to-end runs per core count; the median is reported (VMs are noisy).
    pub repeat: usize,
    /// Keys inserted for the memory curve.
    pub keys: u64,
    /// Indexed clicks in the checkpoint measurement.
    pub checkpoint_clicks: u64,
    /// Also measure with a ClickHouse sink (the database is created and dropped).
    pub clickhouse_url: Option<String>,
    pub report_dir: PathBuf,
    pub assumptions: Assumptions,
}

/// Everything measured, plus the capacity table derived from it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    pub version: String,
    pub cpu_model: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub input_clicks: u64,
    /// End to end, file → state → Parquet, on 1..=cores cores; the last uses every core.
    pub end_to_end: Vec<EndToEnd>,
    pub end_to_end_clickhouse: Option<EndToEnd>,
    pub stages: StageRates,
    pub outputs: OutputSizes,
    pub clickhouse_bytes_per_stats_row: Option<f64>,
    pub clickhouse_bytes_per_conversion_row: Option<f64>,
    pub memory: MemoryCurve,
    pub checkpoint: CheckpointCost,
    pub assumptions: Assumptions,
    pub capacity: Vec<CapacityRow>,
}

fn memory_gib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0)
}

/// The scratch ClickHouse sink of the bench, at `url`.
fn bench_clickhouse(url: &str) -> ClickHouseConfig {
    ClickHouseConfig {
        url: url.to_string(),
        database: format!("attribd_bench_{}", std::process::id()),
        ..ClickHouseConfig::default()
    }
}

/// Runs every measurement, writes the report files, returns the report.
pub fn run(opts: &BenchOptions) -> Result<BenchReport> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Refused before minutes of measuring, and without echoing credentials.
    if let Some(url) = &opts.clickhouse_url
        && let Some((key, problem)) = bench_clickhouse(url).validate().into_iter().next()
    {
        anyhow::bail!("--clickhouse-url (sink.clickhouse.{key}): {problem}");
    }
    std::fs::create_dir_all(&opts.report_dir)
        .with_context(|| format!("creating {}", opts.report_dir.display()))?;
    let input = measure::scratch(&opts.report_dir, "input");
    let out = measure::scratch(&opts.report_dir, "out");
    // Memory first, while the heap is fresh: RSS growth only counts pages the maps take, not
    // pages a previous measurement freed and the allocator hands out again.
    eprintln!("bench: memory per key ({} keys) …", opts.keys);
    let memory = measure::memory(opts.keys);
    eprintln!("bench: checkpoint ({} clicks) …", opts.checkpoint_clicks);
    let checkpoint = measure::checkpoint_cost(
        opts.checkpoint_clicks,
        &measure::scratch(&opts.report_dir, "state"),
    )?;
    // The default pipeline's generator (what `attribd run` and `attribd gen` use).
    let generator = GeneratorConfig {
        clicks: opts.clicks,
        ..crate::config::PipelineConfig::parse(
            crate::config::DEFAULT_PIPELINE,
            "(embedded default pipeline)",
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .source
        .generator
    };
    eprintln!("bench: generating {} clicks …", opts.clicks);
    write_files(&generator, &input, "none")?;

    let mut end_to_end = Vec::new();
    let mut outputs = OutputSizes::default();
    for k in 1..=cores {
        eprintln!("bench: end to end on {k} core(s), {} run(s) …", opts.repeat);
        let mut runs = Vec::new();
        for _ in 0..opts.repeat.max(1) {
            let (e, o) = measure::end_to_end(&input, &out, k, None)?;
            eprintln!("bench:   {:.0} events/s", e.events_per_second);
            runs.push(e);
            outputs = o;
        }
        runs.sort_by(|a, b| a.events_per_second.total_cmp(&b.events_per_second));
        let median = runs.swap_remove(runs.len() / 2);
        end_to_end.push(median);
    }
    let (mut end_to_end_clickhouse, mut ch_stats, mut ch_convs) = (None, None, None);
    if let Some(url) = &opts.clickhouse_url {
        let ch = bench_clickhouse(url);
        let shown = crate::sink::clickhouse::loggable_url(url);
        eprintln!("bench: end to end with ClickHouse at {shown} …");
        crate::sink::clickhouse::migrate(&ch)?;
        let measured = measure::end_to_end(&input, &out, cores, Some(&ch))
            .and_then(|(e, _)| Ok((e, measure::clickhouse_bytes(&ch)?)));
        let _ = crate::sink::clickhouse::drop_database(&ch);
        let (e, (stats, convs, _)) = measured?;
        end_to_end_clickhouse = Some(e);
        ch_stats = Some(stats);
        ch_convs = Some(convs);
    }
    eprintln!("bench: stages …");
    let stages = measure::stages(&input, &out)?;
    let _ = std::fs::remove_dir_all(opts.report_dir.join("scratch"));

    let mut report = BenchReport {
        version: env!("CARGO_PKG_VERSION").to_string(),
        cpu_model: measure::cpu_model(),
        cores,
        memory_gib: memory_gib(),
        input_clicks: opts.clicks,
        end_to_end,
        end_to_end_clickhouse,
        stages,
        outputs,
        clickhouse_bytes_per_stats_row: ch_stats,
        clickhouse_bytes_per_conversion_row: ch_convs,
        memory,
        checkpoint,
        assumptions: opts.assumptions.clone(),
        capacity: Vec::new(),
    };
    report.capacity = capacity::table(&report.assumptions, &report.costs());
    write_report(&report, &opts.report_dir)?;
    Ok(report)
}

impl BenchReport {
    /// The figures the capacity model multiplies.
    pub fn costs(&self) -> Costs {
        let best = self.end_to_end.last();
        Costs {
            events_per_second_per_core: best
                .map_or(0.0, |e| e.events_per_second / e.cores.max(1) as f64),
            bytes_per_indexed_click: self.memory.bytes_per_click,
            bytes_per_dedup_key: self.memory.bytes_per_dedup_key,
            // What the measured run held besides its state (queues, Parquet buffers, open
            // files), at least 256 MiB; the state is accounted per key.
            base_rss_bytes: best
                .map_or(0.0, |e| {
                    e.peak_rss_bytes as f64
                        - e.click_rows as f64 * self.memory.bytes_per_click
                        - e.conversion_rows as f64 * self.memory.bytes_per_dedup_key
                })
                .max(256.0 * 1024.0 * 1024.0),
            parquet_bytes_per_click: self.outputs.parquet_bytes_per_click,
            parquet_bytes_per_conversion: self.outputs.parquet_bytes_per_conversion,
            parquet_bytes_per_stats_row: self.outputs.parquet_bytes_per_stats_row,
            stats_rows_per_click: self.outputs.stats_rows_per_click,
            clickhouse_bytes_per_stats_row: self.clickhouse_bytes_per_stats_row,
            clickhouse_bytes_per_conversion_row: self.clickhouse_bytes_per_conversion_row,
            cores: self.cores,
            memory_gib: self.memory_gib,
        }
    }

    /// Recomputes the capacity table for other assumptions (`attribd bench --from`).
    pub fn with_assumptions(mut self, a: Assumptions) -> BenchReport {
        self.capacity = capacity::table(&a, &self.costs());
        self.assumptions = a;
        self
    }
}

/// `report.json`, `report.md`, `throughput-vs-cores.svg`, `memory-vs-keys.svg` in `dir`.
pub fn write_report(r: &BenchReport, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(r)?)
        .context("writing report.json")?;
    std::fs::write(dir.join("report.md"), markdown(r)).context("writing report.md")?;
    plot::throughput(r, &dir.join("throughput-vs-cores.svg"))?;
    plot::memory(r, &dir.join("memory-vs-keys.svg"))?;
    Ok(())
}

fn si(x: f64) -> String {
    match x {
        x if x >= 1e9 => format!("{:.1} G", x / 1e9),
        x if x >= 1e6 => format!("{:.1} M", x / 1e6),
        x if x >= 1e3 => format!("{:.0} K", x / 1e3),
        x => format!("{x:.0}"),
    }
}

fn gib(x: f64) -> String {
    if x >= 1024.0 {
        format!("{:.1} TiB", x / 1024.0)
    } else if x >= 1.0 {
        format!("{x:.1} GiB")
    } else {
        format!("{:.0} MiB", x * 1024.0)
    }
}

/// The report as Markdown (what `docs/capacity.md` quotes).
pub fn markdown(r: &BenchReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# attribd bench report\n");
    let _ = writeln!(
        s,
        "Machine: **{} cores**, {} ({:.1} GiB RAM). attribd {}. Input: {} generated clicks \
         and their postbacks (the default pipeline's generator), NDJSON files.\n",
        r.cores, r.cpu_model, r.memory_gib, r.version, r.input_clicks
    );
    let _ = writeln!(
        s,
        "## End to end (NDJSON file → state → Parquet, all semantics on)\n"
    );
    let _ = writeln!(
        s,
        "Each row is the median of the repeated runs (`--repeat`); every run is a fresh `attribd run` process.\n"
    );
    let _ = writeln!(s, "| cores | events | seconds | events/s | peak RSS |");
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|");
    let labelled = r.end_to_end.iter().map(|e| (e.cores.to_string(), e)).chain(
        r.end_to_end_clickhouse
            .iter()
            .map(|e| (format!("{} + ClickHouse", e.cores), e)),
    );
    for (cores, e) in labelled {
        let _ = writeln!(
            s,
            "| {cores} | {} | {:.2} | **{:.0}** | {} MiB |",
            e.events,
            e.seconds,
            e.events_per_second,
            e.peak_rss_bytes >> 20
        );
    }
    let st = &r.stages;
    let _ = writeln!(s, "\n## Per stage, one core each (input events/s)\n");
    let _ = writeln!(s, "| decode clicks | decode postbacks | state | Parquet |");
    let _ = writeln!(s, "|---:|---:|---:|---:|");
    let _ = writeln!(
        s,
        "| {:.0} | {:.0} | {:.0} | {:.0} ({:.0} rows/s) |",
        st.decode_clicks, st.decode_conversions, st.state, st.parquet, st.parquet_rows
    );
    let o = &r.outputs;
    let _ = writeln!(s, "\n## Sizes\n");
    let _ = writeln!(s, "| figure | value |");
    let _ = writeln!(s, "|---|---:|");
    let mut row = |k: &str, v: String| {
        let _ = writeln!(s, "| {k} | {v} |");
    };
    row(
        "memory per indexed click (RSS)",
        format!("{:.1} B", r.memory.bytes_per_click),
    );
    row(
        "memory per dedup key (RSS)",
        format!("{:.1} B", r.memory.bytes_per_dedup_key),
    );
    row(
        "Parquet per click",
        format!("{:.1} B", o.parquet_bytes_per_click),
    );
    row(
        "Parquet per conversion row",
        format!("{:.1} B", o.parquet_bytes_per_conversion),
    );
    row(
        "Parquet per aggregate row",
        format!("{:.1} B", o.parquet_bytes_per_stats_row),
    );
    row(
        "aggregate rows per click (this data)",
        format!("{:.3}", o.stats_rows_per_click),
    );
    if let Some(b) = r.clickhouse_bytes_per_stats_row {
        row("ClickHouse per aggregate row", format!("{b:.1} B"));
    }
    if let Some(b) = r.clickhouse_bytes_per_conversion_row {
        row("ClickHouse per conversion row", format!("{b:.1} B"));
    }
    let c = &r.checkpoint;
    row(
        "full-snapshot copy per million keys (compaction's; a checkpoint hands over a delta)",
        format!("{:.3} s", c.pause_seconds_per_million_keys),
    );
    row(
        "full-snapshot write per million keys (compaction, off the state stage)",
        format!("{:.3} s", c.write_seconds_per_million_keys),
    );
    row(
        "checkpoint restore per million keys",
        format!("{:.3} s", c.restore_seconds_per_million_keys),
    );
    row(
        "checkpoint size per indexed click",
        format!("{:.1} B", c.bytes as f64 / c.clicks.max(1) as f64),
    );
    let a = &r.assumptions;
    let _ = writeln!(s, "\n## Capacity\n");
    let _ = writeln!(
        s,
        "Assumptions: conversion rate {}, duplicate postbacks per conversion {}, status changes \
         per conversion {}, peak/average {}, attribution window {} d, dedup window {} d, \
         retention {} d, CPU headroom ×{}, aggregate rows per click {:.3}, instance = {} cores / \
         {:.0} GiB (base RSS {:.0} MiB each).\n",
        a.conversion_rate,
        a.duplicate_rate,
        a.status_change_rate,
        a.peak_to_average,
        a.attribution_window_days,
        a.dedup_window_days,
        a.retention_days,
        a.headroom,
        a.stats_rows_per_click.unwrap_or(o.stats_rows_per_click),
        a.instance_cores.unwrap_or(r.cores),
        a.instance_memory_gib.unwrap_or(r.memory_gib),
        r.costs().base_rss_bytes / (1024.0 * 1024.0),
    );
    let _ = writeln!(
        s,
        "| clicks/day | peak events/s | cores | memory | instances | disk/day | disk over retention | ClickHouse rows/day | old rule: instances / disk/day / Redis |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for c in &r.capacity {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} / {} / {} |",
            si(c.clicks_per_day),
            if c.peak_events_per_second < 10.0 {
                format!("{:.1}", c.peak_events_per_second)
            } else {
                si(c.peak_events_per_second)
            },
            if c.cores < 0.001 {
                "< 0.001".to_string()
            } else if c.cores < 0.1 {
                format!("{:.3}", c.cores)
            } else {
                format!("{:.2}", c.cores)
            },
            gib(c.memory_gib),
            c.instances,
            gib(c.disk_gib_per_day),
            gib(c.disk_gib_retention),
            si(c.clickhouse_rows_per_day),
            c.rule_of_thumb_instances,
            gib(c.rule_of_thumb_disk_gib_per_day),
            gib(c.rule_of_thumb_redis_gib),
        );
    }
    let _ = writeln!(
        s,
        "\n![throughput against cores](throughput-vs-cores.svg) ![memory against keys](memory-vs-keys.svg)"
    );
    s
}
