//! The capacity table: measured per-event and per-key costs × a traffic profile → cores,
//! memory, disk and ClickHouse rows for 10 K … 1 B clicks/day.
//!
//! The model, per `clicks/day` C (every input is a flag of `attribd bench`):
//!
//! * events/day = C × (1 + conversion_rate × (1 + duplicate_rate + status_change_rate)); the
//!   peak rate is the daily average × `peak_to_average`;
//! * cores = peak events/s × `headroom` ÷ (measured end-to-end events/s ÷ measured cores);
//! * memory = indexed clicks (C × attribution window days) × bytes/click + dedup keys
//!   (C × conversion_rate × dedup window days) × bytes/key + a base per instance (the measured
//!   run's peak RSS minus its state, at least 256 MiB: queues, Parquet buffers, open files);
//! * conversion rows/day = C × conversion_rate × (1 + status_change_rate) (duplicates write
//!   nothing); aggregate rows/day = C × aggregate rows per click;
//! * disk/day = clicks × Parquet bytes/click + conversion rows × bytes/row + aggregate rows ×
//!   bytes/row; over the retention period × `retention_days`;
//! * ClickHouse rows/day = aggregate rows + conversion rows (before merges, an upper bound), at
//!   the measured ClickHouse bytes per row of each table.
//!
//! Instances are what it takes of `instance_cores` / `instance_memory_gib` machines (the
//! measured one by default): partitions split both CPU and state (docs/scaling.md).

use serde::{Deserialize, Serialize};

/// The traffic profile and the target machine; flags of `attribd bench`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(default)]
pub struct Assumptions {
    /// Conversions per click.
    #[arg(long, default_value_t = 0.02)]
    pub conversion_rate: f64,
    /// Duplicate postbacks per conversion (dropped; they write nothing).
    #[arg(long, default_value_t = 0.1)]
    pub duplicate_rate: f64,
    /// Status changes per conversion (each writes a new conversion version).
    #[arg(long, default_value_t = 0.1)]
    pub status_change_rate: f64,
    /// Peak rate ÷ daily average rate.
    #[arg(long, default_value_t = 3.0)]
    pub peak_to_average: f64,
    /// Days a click stays indexed for attribution.
    #[arg(long, default_value_t = 30.0)]
    pub attribution_window_days: f64,
    /// Days a conversion's dedup key is kept.
    #[arg(long, default_value_t = 90.0)]
    pub dedup_window_days: f64,
    /// Days the Parquet files are kept.
    #[arg(long, default_value_t = 90.0)]
    pub retention_days: f64,
    /// CPU headroom: size for peak × this (2 = run at ≤ 50 % at peak).
    #[arg(long, default_value_t = 2.0)]
    pub headroom: f64,
    /// Aggregate rows per click; default: as measured (the generator's dimensions are nearly
    /// unique per minute, so real traffic usually has far fewer).
    #[arg(long)]
    pub stats_rows_per_click: Option<f64>,
    /// Cores of one instance (default: this machine's).
    #[arg(long)]
    pub instance_cores: Option<usize>,
    /// Memory of one instance, GiB (default: this machine's).
    #[arg(long)]
    pub instance_memory_gib: Option<f64>,
}

impl Default for Assumptions {
    fn default() -> Self {
        Assumptions {
            conversion_rate: 0.02,
            duplicate_rate: 0.1,
            status_change_rate: 0.1,
            peak_to_average: 3.0,
            attribution_window_days: 30.0,
            dedup_window_days: 90.0,
            retention_days: 90.0,
            headroom: 2.0,
            stats_rows_per_click: None,
            instance_cores: None,
            instance_memory_gib: None,
        }
    }
}

/// The measured costs the model multiplies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Costs {
    pub events_per_second_per_core: f64,
    pub bytes_per_indexed_click: f64,
    pub bytes_per_dedup_key: f64,
    pub base_rss_bytes: f64,
    pub parquet_bytes_per_click: f64,
    pub parquet_bytes_per_conversion: f64,
    pub parquet_bytes_per_stats_row: f64,
    pub stats_rows_per_click: f64,
    pub clickhouse_bytes_per_stats_row: Option<f64>,
    pub clickhouse_bytes_per_conversion_row: Option<f64>,
    pub cores: usize,
    pub memory_gib: f64,
}

/// One row of the table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CapacityRow {
    pub clicks_per_day: f64,
    pub events_per_day: f64,
    pub peak_events_per_second: f64,
    pub cores: f64,
    pub memory_gib: f64,
    pub instances: u64,
    pub disk_gib_per_day: f64,
    pub disk_gib_retention: f64,
    pub clickhouse_rows_per_day: f64,
    pub clickhouse_gib_per_day: Option<f64>,
    /// The operators' old rules of thumb, for comparison.
    pub rule_of_thumb_instances: f64,
    pub rule_of_thumb_disk_gib_per_day: f64,
    pub rule_of_thumb_redis_gib: f64,
}

pub const TIERS: [f64; 6] = [1e4, 1e5, 1e6, 1e7, 1e8, 1e9];
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

pub fn table(a: &Assumptions, c: &Costs) -> Vec<CapacityRow> {
    TIERS.iter().map(|&clicks| row(a, c, clicks)).collect()
}

pub fn row(a: &Assumptions, c: &Costs, clicks: f64) -> CapacityRow {
    let conversions = clicks * a.conversion_rate;
    let postbacks = conversions * (1.0 + a.duplicate_rate + a.status_change_rate);
    let events = clicks + postbacks;
    let peak = events / 86_400.0 * a.peak_to_average;
    let cores = peak * a.headroom / c.events_per_second_per_core.max(1.0);
    let state = clicks * a.attribution_window_days * c.bytes_per_indexed_click
        + conversions * a.dedup_window_days * c.bytes_per_dedup_key;
    let stats_rows = clicks * a.stats_rows_per_click.unwrap_or(c.stats_rows_per_click);
    // Conversion versions: first postbacks plus status changes (duplicates write nothing).
    let conversion_rows = conversions * (1.0 + a.status_change_rate);
    let disk_day = clicks * c.parquet_bytes_per_click
        + conversion_rows * c.parquet_bytes_per_conversion
        + stats_rows * c.parquet_bytes_per_stats_row;
    let inst_cores = a.instance_cores.unwrap_or(c.cores).max(1) as f64;
    let inst_mem = a.instance_memory_gib.unwrap_or(c.memory_gib).max(0.5) * GIB;
    let instances_for_cpu = (cores / inst_cores).ceil();
    // Each instance carries the base RSS and keeps 20 % of its memory free.
    let instances_for_memory = (state / (inst_mem * 0.8 - c.base_rss_bytes).max(GIB)).ceil();
    let instances = instances_for_cpu.max(instances_for_memory).max(1.0);
    CapacityRow {
        clicks_per_day: clicks,
        events_per_day: events,
        peak_events_per_second: peak,
        cores,
        memory_gib: (state + instances * c.base_rss_bytes) / GIB,
        instances: instances as u64,
        disk_gib_per_day: disk_day / GIB,
        disk_gib_retention: disk_day * a.retention_days / GIB,
        clickhouse_rows_per_day: stats_rows + conversion_rows,
        clickhouse_gib_per_day: c.clickhouse_bytes_per_stats_row.map(|b| {
            (stats_rows * b + conversion_rows * c.clickhouse_bytes_per_conversion_row.unwrap_or(b))
                / GIB
        }),
        rule_of_thumb_instances: (clicks / 100_000.0).ceil().max(1.0),
        rule_of_thumb_disk_gib_per_day: (clicks * 1024.0 + conversions * 2048.0) / GIB,
        rule_of_thumb_redis_gib: (clicks * a.attribution_window_days + conversions) / 1e6 * 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn costs() -> Costs {
        Costs {
            events_per_second_per_core: 100_000.0,
            bytes_per_indexed_click: 40.0,
            bytes_per_dedup_key: 50.0,
            base_rss_bytes: 0.0,
            parquet_bytes_per_click: 100.0,
            parquet_bytes_per_conversion: 200.0,
            parquet_bytes_per_stats_row: 50.0,
            stats_rows_per_click: 0.5,
            clickhouse_bytes_per_stats_row: Some(30.0),
            clickhouse_bytes_per_conversion_row: Some(80.0),
            cores: 2,
            memory_gib: 24.0,
        }
    }

    #[test]
    fn the_model_multiplies_as_documented() {
        let a = Assumptions::default();
        let r = row(&a, &costs(), 86_400_000.0);
        // 86.4 M clicks + 2 % conversions × (1 + 0.1 duplicates + 0.1 changes) = 88.47 M/day.
        assert!((r.events_per_day - 88_473_600.0).abs() < 1.0);
        // 1024 events/s average × 3 peak = 3072/s; × 2 headroom ÷ 100 K/s per core.
        assert!((r.peak_events_per_second - 3072.0).abs() < 1e-6);
        assert!((r.cores - 0.06144).abs() < 1e-9);
        // State: 86.4 M × 30 d × 40 B + 1.728 M × 90 d × 50 B.
        let state = 86_400_000.0 * 30.0 * 40.0 + 1_728_000.0 * 90.0 * 50.0;
        assert!((r.memory_gib - state / GIB).abs() < 1e-9);
        // Disk: clicks × 100 + 1.9008 M versions (1.728 M × 1.1) × 200 + 43.2 M aggregates × 50.
        let disk = 86_400_000.0 * 100.0 + 1_900_800.0 * 200.0 + 43_200_000.0 * 50.0;
        assert!((r.disk_gib_per_day - disk / GIB).abs() < 1e-9);
        assert!((r.disk_gib_retention - 90.0 * disk / GIB).abs() < 1e-6);
        assert_eq!(r.clickhouse_rows_per_day, 43_200_000.0 + 1_900_800.0);
        let ch = (43_200_000.0 * 30.0 + 1_900_800.0 * 80.0) / GIB;
        assert!((r.clickhouse_gib_per_day.unwrap() - ch).abs() < 1e-9);
        // 104 GiB of state does not fit one 24 GiB machine: memory decides.
        assert_eq!(r.instances, (state / (24.0 * GIB * 0.8)).ceil() as u64);
        assert_eq!(r.rule_of_thumb_instances, 864.0);
    }

    #[test]
    fn the_table_covers_every_tier_and_grows_with_it() {
        let t = table(&Assumptions::default(), &costs());
        assert_eq!(t.len(), 6);
        assert!(t.windows(2).all(|w| w[1].memory_gib > w[0].memory_gib));
        assert!(t.iter().all(|r| r.instances >= 1));
    }
}
