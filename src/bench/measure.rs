//! The measurements behind `attribd bench`, each on this machine and in this process.
//!
//! * end to end: generated NDJSON files → `attribd run` in a fresh child process → Parquet (and
//!   ClickHouse), every semantic on, restricted to 1, 2, … cores (CPU affinity) for the scaling
//!   curve. A child, not a call: a warm heap in this process made runs look ~30 % faster;
//! * per stage, one core each: decode clicks, decode postbacks, state, Parquet;
//! * memory per key, from RSS growth while the click index and dedup map fill up;
//! * checkpoint write and restore time for a state of a known size.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::checkpoint::snapshot::{ClickSnap, DedupSnap};
use crate::checkpoint::{self, Snapshot};
use crate::event::Status;
use crate::event::decode::{DecodeLimits, Decoder};
use crate::event::keys::{click_key, conversion_key};
use crate::rows::SinkBatch;
use crate::sink::FileSinks;
use crate::sink::parquet::ParquetConfig;
use crate::source::file::{Input, read_batches};
use crate::state::click_index::{ClickIndex, IndexedClick};
use crate::state::dedup::{Attribution, ConvEntry, DedupMap};
use crate::state::{Engine, EngineConfig};

/// Resident set size of this process, bytes.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Peak resident set size of this process so far, bytes.
pub fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// CPU model from /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// The CPUs this process may run on (a container's cpuset need not start at CPU 0).
pub fn allowed_cpus() -> Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data that sched_getaffinity fills for the calling thread;
    // CPU_ISSET only reads inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            anyhow::bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect())
    }
}

/// Restricts the calling thread (and the threads it spawns from now on) to `cpus`.
pub fn pin_to(cpus: &[usize]) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write inside it, and
    // sched_setaffinity reads it for the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            anyhow::bail!(
                "sched_setaffinity to CPUs {cpus:?}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// One end-to-end run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndToEnd {
    pub cores: usize,
    pub events: u64,
    pub seconds: f64,
    pub events_per_second: f64,
    pub click_rows: u64,
    pub conversion_rows: u64,
    pub stats_rows: u64,
    pub peak_rss_bytes: u64,
}

/// Bytes on disk per output row, from an end-to-end run's files.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OutputSizes {
    pub parquet_bytes_per_click: f64,
    pub parquet_bytes_per_conversion: f64,
    pub parquet_bytes_per_stats_row: f64,
    /// Aggregate rows per accepted click (depends on the data's dimension cardinality).
    pub stats_rows_per_click: f64,
    /// Conversion rows (versions) per input click.
    pub conversion_rows_per_click: f64,
}

fn bytes_under(dir: &Path, ext: &str) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().and_then(|x| x.to_str()) == Some(ext) {
                total += e.metadata().map_or(0, |m| m.len());
            }
        }
    }
    total
}

/// `attribd run` over `input/{clicks,conversions}.ndjson` into `out`, as a fresh child process
/// (what an operator gets: cold heap, page faults and all) restricted to `cores` cores.
pub fn end_to_end(
    input: &Path,
    out: &Path,
    cores: usize,
    clickhouse: Option<&crate::sink::clickhouse::ClickHouseConfig>,
) -> Result<(EndToEnd, OutputSizes)> {
    let _ = std::fs::remove_dir_all(out);
    // Let the previous run's writes and deletions reach the disk first: the run fsyncs every
    // file it closes, and a backlog of dirty pages from the last run would slow those.
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::thread::sleep(std::time::Duration::from_secs(1));
    let summary = out.with_extension("summary.json");
    let exe = std::env::current_exe().context("locating the attribd binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["run", "-q", "--fresh", "--metrics-addr", "off"])
        .arg("--clicks")
        .arg(input.join("clicks.ndjson"))
        .arg("--conversions")
        .arg(input.join("conversions.ndjson"))
        .arg("--out")
        .arg(out)
        .arg("--summary-json")
        .arg(&summary)
        .stdout(std::process::Stdio::null());
    if let Some(ch) = clickhouse {
        cmd.args([
            "--clickhouse-url",
            &ch.url,
            "--clickhouse-database",
            &ch.database,
        ]);
    }
    // The child inherits the affinity of the thread that spawns it: the first `cores` of the
    // CPUs this process may use, then all of them again.
    let allowed = allowed_cpus()?;
    pin_to(&allowed[..cores.min(allowed.len())])?;
    let status = cmd.status();
    pin_to(&allowed)?;
    let status = status.context("starting attribd run")?;
    if !status.success() {
        anyhow::bail!("attribd run for the end-to-end measurement failed ({status})");
    }
    let text = std::fs::read_to_string(&summary)
        .with_context(|| format!("reading {}", summary.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).context("parsing the run summary")?;
    let _ = std::fs::remove_file(&summary);
    let num = |ptr: &str| {
        v.pointer(ptr)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0)
    };
    let int = |ptr: &str| {
        v.pointer(ptr)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    let s = crate::sink::SinkTotals {
        click_rows: int("/report/sinks/click_rows"),
        conversion_rows: int("/report/sinks/conversion_rows"),
        stats_rows: int("/report/sinks/stats_rows"),
        click_hour_rows: int("/report/sinks/click_hour_rows"),
        dead_letters: int("/report/sinks/dead_letters"),
        files: int("/report/sinks/files"),
    };
    let click_records = int("/report/counters/click_records");
    let e2e = EndToEnd {
        cores,
        events: click_records + int("/report/counters/conversion_records"),
        seconds: num("/seconds"),
        events_per_second: num("/events_per_second"),
        click_rows: s.click_rows,
        conversion_rows: s.conversion_rows,
        stats_rows: s.stats_rows,
        peak_rss_bytes: int("/peak_rss_bytes"),
    };
    let per = |bytes: u64, rows: u64| bytes as f64 / rows.max(1) as f64;
    let sizes = OutputSizes {
        parquet_bytes_per_click: per(bytes_under(&out.join("clicks"), "parquet"), s.click_rows),
        parquet_bytes_per_conversion: per(
            bytes_under(&out.join("conversions"), "parquet"),
            s.conversion_rows,
        ),
        parquet_bytes_per_stats_row: per(
            bytes_under(&out.join("stats_minute"), "parquet"),
            s.stats_rows,
        ),
        stats_rows_per_click: s.stats_rows as f64 / s.click_rows.max(1) as f64,
        conversion_rows_per_click: s.conversion_rows as f64 / click_records.max(1) as f64,
    };
    Ok((e2e, sizes))
}

/// Events/s of each stage alone on one core (input events through the stage per second).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRates {
    pub decode_clicks: f64,
    pub decode_conversions: f64,
    pub state: f64,
    pub parquet: f64,
    /// Rows the Parquet stage wrote per second (all tables).
    pub parquet_rows: f64,
}

pub fn stages(input: &Path, out: &Path) -> Result<StageRates> {
    let read = |name: &str| -> Result<Vec<crate::source::RawBatch>> {
        let mut v = Vec::new();
        let path = input.join(name);
        read_batches(Input::Path(path.clone()).open()?, |b| {
            v.push(b);
            true
        })
        .with_context(|| format!("reading {}", path.display()))?;
        Ok(v)
    };
    let (clicks_raw, convs_raw) = (read("clicks.ndjson")?, read("conversions.ndjson")?);
    let n = |v: &[crate::source::RawBatch]| v.iter().map(|b| b.len()).sum::<usize>() as f64;
    let (n_clicks, n_convs) = (n(&clicks_raw), n(&convs_raw));
    let decoder = Decoder::new(Arc::from("bench"), DecodeLimits::default());

    let t = Instant::now();
    let clicks: Vec<_> = clicks_raw
        .iter()
        .map(|b| decoder.decode_clicks(b))
        .collect();
    let decode_clicks = n_clicks / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let convs: Vec<_> = convs_raw
        .iter()
        .map(|b| decoder.decode_conversions(b))
        .collect();
    let decode_conversions = n_convs / t.elapsed().as_secs_f64();
    drop((clicks_raw, convs_raw));

    let mut engine = Engine::new(EngineConfig::default());
    let mut outs = Vec::with_capacity(clicks.len() + convs.len() + 1);
    let t = Instant::now();
    for (b, dead) in clicks {
        let mut o = SinkBatch::default();
        engine.on_dead_letters(dead, &mut o);
        engine.on_clicks(b, &mut o);
        outs.push(o);
    }
    for (b, dead) in convs {
        let mut o = SinkBatch::default();
        engine.on_dead_letters(dead, &mut o);
        engine.on_conversions(b, &mut o);
        outs.push(o);
    }
    let mut last = SinkBatch::default();
    engine.finish(&mut last);
    outs.push(last);
    let state = (n_clicks + n_convs) / t.elapsed().as_secs_f64();
    drop(engine);

    let _ = std::fs::remove_dir_all(out);
    let cfg = ParquetConfig {
        out: out.to_path_buf(),
        ..ParquetConfig::default()
    };
    let rows: usize = outs.iter().map(SinkBatch::rows).sum();
    let mut sinks = FileSinks::new(&cfg, 1)?;
    let t = Instant::now();
    for o in &outs {
        sinks.write(o)?;
    }
    sinks.close()?;
    let secs = t.elapsed().as_secs_f64();
    Ok(StageRates {
        decode_clicks,
        decode_conversions,
        state,
        parquet: (n_clicks + n_convs) / secs,
        parquet_rows: rows as f64 / secs,
    })
}

/// RSS after inserting `keys` entries, sampled along the way.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryCurve {
    /// (keys, bytes of RSS growth) for the click index.
    pub click_index: Vec<(u64, u64)>,
    /// (keys, bytes of RSS growth) for the dedup map.
    pub dedup: Vec<(u64, u64)>,
    pub bytes_per_click: f64,
    pub bytes_per_dedup_key: f64,
}

pub fn memory(keys: u64) -> MemoryCurve {
    const STEPS: u64 = 8;
    let mut click_index = Vec::new();
    let before = rss_bytes();
    let mut index = ClickIndex::default();
    for i in 0..keys {
        let key = click_key(&format!(
            "{:016x}{:08x}",
            i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            i
        ));
        index.insert_if_new(
            key,
            IndexedClick {
                ts_ms: 1_793_527_200_000 + i as i64,
                dims: (i % 5000) as u32,
                extras: (i % 400) as u32,
            },
        );
        if (i + 1) % (keys / STEPS).max(1) == 0 {
            click_index.push((i + 1, rss_bytes().saturating_sub(before)));
        }
    }
    // The index stays alive while the dedup map fills: freed memory that the allocator keeps
    // and hands out again would hide the map's growth.
    let mut dedup = Vec::new();
    let before = rss_bytes();
    let mut map = DedupMap::default();
    for i in 0..keys {
        let key = conversion_key("tenant-1", &format!("ord-{i}"));
        let mut e = ConvEntry::new(1_793_527_200_000 + i as i64, Status::Approved, 12_340_000);
        e.resolve(Attribution::Attributed, (i % 5000) as u32, 3600);
        map.put(key, e);
        if (i + 1) % (keys / STEPS).max(1) == 0 {
            dedup.push((i + 1, rss_bytes().saturating_sub(before)));
        }
    }
    drop((map, index));
    let last = |v: &[(u64, u64)]| v.last().map_or(0.0, |&(k, b)| b as f64 / k.max(1) as f64);
    MemoryCurve {
        bytes_per_click: last(&click_index),
        bytes_per_dedup_key: last(&dedup),
        click_index,
        dedup,
    }
}

/// Checkpoint of a state with `clicks` indexed clicks and `clicks / 10` dedup keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointCost {
    pub clicks: u64,
    pub dedup_keys: u64,
    pub bytes: u64,
    /// Copying the engine into a full snapshot: the state stage's pause before delta
    /// checkpoints, now the compaction's first step (absent from reports made before the
    /// writer thread).
    #[serde(default)]
    pub pause_seconds: f64,
    /// Serializing, writing and fsyncing it (the checkpoint writer's thread).
    pub write_seconds: f64,
    pub restore_seconds: f64,
    /// Pause, write and restore seconds per million keys (clicks + dedup keys).
    #[serde(default)]
    pub pause_seconds_per_million_keys: f64,
    pub write_seconds_per_million_keys: f64,
    pub restore_seconds_per_million_keys: f64,
}

/// A live engine holding `clicks` indexed clicks (spread over 30 days), `keys` dedup keys and, when
/// `unique_visitors` > 0, one UTC day with that many unique-visitor keys (built through a
/// snapshot, which is the fast way to fill the maps).
pub fn synthetic_engine(clicks: u64, keys: u64, unique_visitors: u64) -> Result<Engine> {
    let mut snap = Snapshot {
        epoch: 1,
        ..Snapshot::default()
    };
    snap.engine.strings = vec![String::new()];
    snap.engine.dims = vec![[0; 5]];
    let t0 = 1_793_527_200_000i64;
    // The clicks spread evenly over a 30-day attribution window, as a month of traffic.
    let spacing = (30 * 86_400_000 / clicks.max(1) as i64).max(1);
    snap.engine.clicks = (0..clicks)
        .map(|i| ClickSnap {
            key: i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ts_ms: t0 + i as i64 * spacing,
            dims: 0,
            extras: 0,
        })
        .collect();
    snap.engine.dedup = (0..keys)
        .map(|i| DedupSnap {
            key: i.wrapping_mul(0xD6E8_FEB8_6659_FD93),
            packed: (t0 as u64) | (1 << 44),
            amount_micros: 12_340_000,
            dims: 0,
            click_delay_s: 600,
        })
        .collect();
    if unique_visitors > 0 {
        snap.engine.unique = vec![(
            20_758,
            (0..unique_visitors)
                .map(|i| (i ^ 0x5555).wrapping_mul(0xA076_1D64_78BD_642F))
                .collect(),
        )];
    }
    snap.engine.click_wm = t0;
    snap.engine.conv_wm = t0;
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&snap)?;
    Ok(Engine::restore(
        EngineConfig::default(),
        &[&checkpoint::view(&bytes)?.engine],
    ))
}

pub fn checkpoint_cost(clicks: u64, dir: &Path) -> Result<CheckpointCost> {
    let keys = clicks / 10;
    let engine = synthetic_engine(clicks, keys, 0)?;

    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let t = Instant::now();
    let live = Snapshot {
        epoch: 2,
        engine: engine.snapshot(),
        ..Snapshot::default()
    };
    let pause = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let size = checkpoint::write(dir, &live)?;
    let write = t.elapsed().as_secs_f64();
    drop((live, engine));
    let t = Instant::now();
    let chain = checkpoint::load_latest(dir)?.context("the snapshot just written")?;
    let restored = Engine::restore(EngineConfig::default(), &chain.engines()?);
    let restore = t.elapsed().as_secs_f64();
    drop(restored);
    let _ = std::fs::remove_dir_all(dir);
    let million = (clicks + keys) as f64 / 1e6;
    Ok(CheckpointCost {
        clicks,
        dedup_keys: keys,
        bytes: size,
        pause_seconds: pause,
        write_seconds: write,
        restore_seconds: restore,
        pause_seconds_per_million_keys: pause / million,
        write_seconds_per_million_keys: write / million,
        restore_seconds_per_million_keys: restore / million,
    })
}

/// ClickHouse bytes on disk per aggregate row and per conversion row (active parts).
pub fn clickhouse_bytes(
    cfg: &crate::sink::clickhouse::ClickHouseConfig,
) -> Result<(f64, f64, u64)> {
    use crate::sink::clickhouse::{Credentials, block_on, client};
    let creds = Credentials::load(cfg)?;
    let c = client(cfg, &creds);
    let per = |table: &str| -> Result<(f64, u64)> {
        let (bytes, rows): (u64, u64) = block_on(
            c.query(
                "SELECT toUInt64(sum(bytes_on_disk)), toUInt64(sum(rows)) FROM system.parts \
                 WHERE database = ? AND table = ? AND active",
            )
            .bind(cfg.database.as_str())
            .bind(table)
            .fetch_one::<(u64, u64)>(),
        )??;
        Ok((bytes as f64 / rows.max(1) as f64, rows))
    };
    let (stats, rows) = per("attribution_stats_minute")?;
    let (convs, _) = per("conversions")?;
    Ok((stats, convs, rows))
}

/// Where `bench` keeps its scratch data.
pub fn scratch(dir: &Path, name: &str) -> PathBuf {
    dir.join("scratch").join(name)
}
