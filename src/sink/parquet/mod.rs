//! The Parquet sink: Hive-partitioned, zstd-compressed files of clicks, conversion versions and
//! minute aggregates.
//!
//! Layout: `OUT/<table>/dt=YYYY-MM-DD/hour=HH/part-e<epoch>-<seq>.parquet`, where the epoch is
//! the checkpoint the file belongs to (files of epochs after the restored checkpoint are
//! deleted on restart and written again, so a replay replaces instead of duplicating). Rows are appended to
//! Arrow builders per partition, written as record batches, and a file is rolled (closed,
//! fsynced, renamed from its dot-prefixed temporary name) by rows, bytes or age. Readers that glob
//! `*.parquet` therefore only ever see complete files.

pub mod schema;

use rustc_hash::FxHashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};

use crate::event::time::partition_of;
use schema::RowBuilder;
pub use schema::{ClickBuilders, ClickHourBuilders, ConversionBuilders, StatsBuilders};

/// User-facing options of the Parquet sink (`[sink.parquet]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ParquetConfig {
    /// Output directory; tables are written below it.
    pub out: PathBuf,
    /// Close a file after this many rows.
    pub roll_rows: u64,
    /// Close a file once it reaches about this many megabytes.
    pub roll_megabytes: u64,
    /// Close a file this long after it was opened (so data shows up while a stream runs).
    #[serde(with = "humantime_serde")]
    pub roll_age: Duration,
    /// zstd level, 1 (fast) – 22 (small). 1 by default: on generated data it costs 8 % less
    /// CPU than 3 and the files came out no larger (`attribd bench` to check yours).
    pub zstd_level: i32,
    /// At most this many files open at once (late data spreads over many hours); the least
    /// recently written one is closed first.
    pub max_open_files: usize,
    /// Hold each sink thread to at most this many rows per second (0 = no limit): spares a
    /// disk shared with others; the sources slow down to match, nothing is dropped.
    pub throttle_rows_per_second: u64,
}

impl ParquetConfig {
    /// Every problem of `[sink.parquet]` as `(key, what is wrong)`.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        let mut bad = |key: &'static str, problem: String| p.push((key, problem));
        if !(1..=22).contains(&self.zstd_level) {
            bad(
                "sink.parquet.zstd_level",
                format!("must be 1..=22, got {}", self.zstd_level),
            );
        }
        if self.roll_rows == 0 {
            bad("sink.parquet.roll_rows", "must be at least 1".into());
        }
        if self.roll_megabytes == 0 {
            bad("sink.parquet.roll_megabytes", "must be at least 1".into());
        }
        if self.max_open_files == 0 {
            bad("sink.parquet.max_open_files", "must be at least 1".into());
        }
        if self.out.as_os_str().is_empty() {
            bad("sink.parquet.out", "must not be empty".into());
        }
        p
    }
}

impl Default for ParquetConfig {
    fn default() -> Self {
        ParquetConfig {
            out: PathBuf::from("./data"),
            roll_rows: 2_000_000,
            roll_megabytes: 256,
            roll_age: Duration::from_secs(300),
            zstd_level: 1,
            max_open_files: 64,
            throttle_rows_per_second: 0,
        }
    }
}

/// Rows are buffered in builders and written as record batches of this many rows.
const WRITE_BATCH_ROWS: usize = 16 * 1024;

/// A partition with an open file that took no row while its table took this many is done
/// with for now: its buffered rows are written and its file is closed (event time has moved
/// on; a late row opens a new file). An open writer holds, per column, a zstd compression and
/// decompression context, its dictionary and its page buffers — about 0.3 MB a column — and a
/// day of hour partitions left open until the checkpoint held 0.9 GB at 1 M clicks.
/// Partitions that only buffer rows (fewer than a write batch: late rows of old hours, status
/// changes in their first postback's hour) are left to `roll_age` and the checkpoint, so late
/// data does not become a file every few seconds.
const IDLE_ROWS: u64 = 4 * WRITE_BATCH_ROWS as u64;

/// Partitions are checked for idleness once per this many rows appended to the table.
const IDLE_CHECK_ROWS: u64 = WRITE_BATCH_ROWS as u64 / 4;

struct OpenFile {
    writer: ArrowWriter<File>,
    tmp_path: PathBuf,
    final_path: PathBuf,
    rows: u64,
    last_write: Instant,
}

struct Partition<B> {
    rows: B,
    file: Option<OpenFile>,
    /// When the partition's current file (or, with none open, its buffer) was started.
    since: Instant,
    /// The table's row count ([`PartitionedTable::appended`]) at this partition's last row.
    last_append: u64,
}

/// One table (`clicks`, `conversions` or `stats_minute`) split into `dt=/hour=` partitions.
pub struct PartitionedTable<B: RowBuilder> {
    dir: PathBuf,
    /// The epoch the files opened now belong to, as it goes into their names
    /// ([`epoch_tag`]).
    epoch_tag: String,
    cfg: ParquetConfig,
    props: WriterProperties,
    partitions: FxHashMap<i64, Partition<B>>,
    next_seq: u64,
    /// Rows appended to the table so far: the clock of [`IDLE_ROWS`].
    appended: u64,
    /// Complete files written so far.
    pub files_written: u64,
    pub rows_written: u64,
}

impl<B: RowBuilder> PartitionedTable<B> {
    pub fn new(out: &Path, table: &str, epoch_tag: &str, cfg: &ParquetConfig) -> Result<Self> {
        let level = ZstdLevel::try_new(cfg.zstd_level).with_context(|| {
            format!("sink.parquet.zstd_level: {} is not 1..=22", cfg.zstd_level)
        })?;
        let mut props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(1024 * 1024));
        // Dictionary encoding pays for repeated values (offers, countries, user agents) and
        // only costs time on ids that are unique per row.
        for column in B::UNIQUE_COLUMNS {
            props = props.set_column_dictionary_enabled(ColumnPath::from(*column), false);
        }
        for column in B::DELTA_COLUMNS {
            props = props
                .set_column_dictionary_enabled(ColumnPath::from(*column), false)
                .set_column_encoding(ColumnPath::from(*column), Encoding::DELTA_BINARY_PACKED);
        }
        // Min/max statistics let readers skip row groups, which pays for time and the
        // dimensions people filter on; for free-text columns it is per-value work for nothing.
        props = props.set_statistics_enabled(EnabledStatistics::Chunk);
        for column in B::UNFILTERED_COLUMNS {
            props = props
                .set_column_statistics_enabled(ColumnPath::from(*column), EnabledStatistics::None);
        }
        let props = props.build();
        Ok(PartitionedTable {
            dir: out.join(table),
            epoch_tag: epoch_tag.to_string(),
            cfg: cfg.clone(),
            props,
            partitions: FxHashMap::default(),
            next_seq: 0,
            appended: 0,
            files_written: 0,
            rows_written: 0,
        })
    }

    /// The builders of the partition holding `ts_ms`; append a row to them, then call
    /// [`Self::after_append`].
    pub fn builders(&mut self, ts_ms: i64) -> (&mut B, i64) {
        let hour = ts_ms.div_euclid(3_600_000);
        self.appended += 1;
        let p = self.partitions.entry(hour).or_insert_with(|| Partition {
            rows: B::new(),
            file: None,
            since: Instant::now(),
            last_append: 0,
        });
        p.last_append = self.appended;
        (&mut p.rows, hour)
    }

    /// Writes the partition's buffered rows once a batch is full, rolls by size, and now and
    /// then closes the partitions the table has moved away from ([`IDLE_ROWS`]).
    pub fn after_append(&mut self, hour: i64) -> Result<()> {
        let full = self
            .partitions
            .get(&hour)
            .is_some_and(|p| p.rows.len() >= WRITE_BATCH_ROWS);
        if full {
            self.write_buffered(hour)?;
        }
        if self.appended.is_multiple_of(IDLE_CHECK_ROWS) {
            self.close_idle()?;
        }
        Ok(())
    }

    /// Writes and closes every partition with an open file that took no row in the last
    /// [`IDLE_ROWS`] rows of the table (its file is open, so writing its buffer opens none and
    /// closes no other). Counted in rows since the last checkpoint, not time; a replay may
    /// still cut files elsewhere (its checkpoints fall where its clock says), never its rows.
    fn close_idle(&mut self) -> Result<()> {
        let now = self.appended;
        let mut idle: Vec<i64> = self
            .partitions
            .iter()
            .filter(|(_, p)| p.file.is_some() && now - p.last_append >= IDLE_ROWS)
            .map(|(h, _)| *h)
            .collect();
        idle.sort_unstable();
        for hour in idle {
            self.write_buffered(hour)?;
            self.close_partition_file(hour)?;
            self.drop_if_idle(hour);
        }
        Ok(())
    }

    fn write_buffered(&mut self, hour: i64) -> Result<()> {
        let open_files = self
            .partitions
            .values()
            .filter(|p| p.file.is_some())
            .count();
        let needs_file = self.partitions.get(&hour).is_some_and(|p| p.file.is_none());
        if needs_file && open_files >= self.cfg.max_open_files {
            self.close_least_recent()?;
        }
        let roll_bytes = self.cfg.roll_megabytes.saturating_mul(1 << 20) as usize;
        let Some(p) = self.partitions.get_mut(&hour) else {
            return Ok(());
        };
        if p.rows.is_empty() {
            return Ok(());
        }
        let batch = p.rows.finish().context("building a record batch")?;
        if p.file.is_none() {
            p.file = Some(open_file(
                &self.dir,
                &self.epoch_tag,
                hour,
                self.next_seq,
                B::schema(),
                &self.props,
            )?);
            p.since = Instant::now();
            self.next_seq += 1;
        }
        let Some(f) = p.file.as_mut() else {
            return Ok(());
        };
        f.writer
            .write(&batch)
            .with_context(|| format!("writing {}", f.tmp_path.display()))?;
        f.rows += batch.num_rows() as u64;
        f.last_write = Instant::now();
        self.rows_written += batch.num_rows() as u64;
        let size = f.writer.bytes_written() + f.writer.in_progress_size();
        if f.rows >= self.cfg.roll_rows || size >= roll_bytes {
            self.close_partition_file(hour)?;
        }
        Ok(())
    }

    fn close_partition_file(&mut self, hour: i64) -> Result<()> {
        if let Some(p) = self.partitions.get_mut(&hour)
            && let Some(f) = p.file.take()
        {
            p.since = Instant::now();
            close_file(f)?;
            self.files_written += 1;
        }
        Ok(())
    }

    fn close_least_recent(&mut self) -> Result<()> {
        let oldest = self
            .partitions
            .iter()
            .filter_map(|(h, p)| p.file.as_ref().map(|f| (f.last_write, *h)))
            .min();
        if let Some((_, hour)) = oldest {
            self.close_partition_file(hour)?;
        }
        Ok(())
    }

    /// Rolls files (and buffered rows) older than `roll_age`, so data becomes visible while a
    /// stream runs; called periodically by the sink thread.
    pub fn roll_aged(&mut self) -> Result<()> {
        let age = self.cfg.roll_age;
        let aged: Vec<i64> = self
            .partitions
            .iter()
            .filter(|(_, p)| p.since.elapsed() >= age)
            .map(|(h, _)| *h)
            .collect();
        for hour in aged {
            self.write_buffered(hour)?;
            self.close_partition_file(hour)?;
            self.drop_if_idle(hour);
        }
        Ok(())
    }

    fn drop_if_idle(&mut self, hour: i64) {
        if self
            .partitions
            .get(&hour)
            .is_some_and(|p| p.file.is_none() && p.rows.is_empty())
        {
            self.partitions.remove(&hour);
        }
    }

    /// Starts naming files for `epoch` (after a checkpoint); sequence numbers restart.
    pub fn set_epoch(&mut self, epoch: u64) {
        self.epoch_tag = epoch_tag(epoch);
        self.next_seq = 0;
    }

    /// Writes everything buffered and closes every file: after this all rows are durable.
    pub fn close_all(&mut self) -> Result<()> {
        let mut hours: Vec<i64> = self.partitions.keys().copied().collect();
        hours.sort_unstable();
        for hour in hours {
            self.write_buffered(hour)?;
            self.close_partition_file(hour)?;
        }
        self.partitions.clear();
        self.appended = 0;
        Ok(())
    }
}

/// The file-name tag of an epoch: `e00000042`.
pub fn epoch_tag(epoch: u64) -> String {
    format!("e{epoch:08}")
}

/// The epoch of an output file named by this sink (`part-e00000042-000001.parquet`).
pub fn epoch_of(file_name: &str) -> Option<u64> {
    let rest = file_name.trim_start_matches('.').strip_prefix("part-e")?;
    rest.get(..8)?.parse().ok()
}

fn open_file(
    dir: &Path,
    epoch_tag: &str,
    hour: i64,
    seq: u64,
    schema: arrow::datatypes::SchemaRef,
    props: &WriterProperties,
) -> Result<OpenFile> {
    let (dt, hh) = partition_of(hour * 3_600_000);
    let part_dir = dir.join(format!("dt={dt}")).join(format!("hour={hh:02}"));
    fs::create_dir_all(&part_dir).with_context(|| format!("creating {}", part_dir.display()))?;
    let name = format!("part-{epoch_tag}-{seq:06}.parquet");
    let tmp_path = part_dir.join(format!(".{name}.tmp"));
    let final_path = part_dir.join(name);
    let file = match File::create(&tmp_path) {
        // A retention pass removed the (empty, expired) directory between the two calls.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(&part_dir)
                .with_context(|| format!("creating {}", part_dir.display()))?;
            File::create(&tmp_path)
        }
        other => other,
    }
    .with_context(|| format!("creating {}", tmp_path.display()))?;
    let writer = ArrowWriter::try_new(file, schema, Some(props.clone()))
        .with_context(|| format!("opening parquet writer {}", tmp_path.display()))?;
    let now = Instant::now();
    Ok(OpenFile {
        writer,
        tmp_path,
        final_path,
        rows: 0,
        last_write: now,
    })
}

fn close_file(f: OpenFile) -> Result<()> {
    let OpenFile {
        writer,
        tmp_path,
        final_path,
        ..
    } = f;
    let file = writer
        .into_inner()
        .with_context(|| format!("finishing {}", tmp_path.display()))?;
    file.sync_all()
        .with_context(|| format!("fsync {}", tmp_path.display()))?;
    fs::rename(&tmp_path, &final_path).with_context(|| {
        format!(
            "renaming {} to {}",
            tmp_path.display(),
            final_path.display()
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::{Dims, Measures, Names, StatsRow};

    /// The names of [`stats_row`]'s dimension ids.
    fn names() -> Names {
        Names::of(&["", "t", "o", "a", "US"])
    }

    fn stats_row(minute_ms: i64) -> StatsRow {
        StatsRow {
            minute_ms,
            dims: Dims {
                tenant: 1,
                offer: 2,
                affiliate: 3,
                country: 4,
                currency: 0,
            },
            measures: Measures {
                clicks: 1,
                ..Measures::default()
            },
        }
    }

    fn parquet_files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p);
                }
            }
        }
        out.sort();
        out
    }

    fn write(t: &mut PartitionedTable<StatsBuilders>, rows: i64, hour: i64) {
        let names = names();
        for i in 0..rows {
            let (b, h) = t.builders(hour * 3_600_000 + i);
            b.append(&stats_row(hour * 3_600_000 + i), &names);
            t.after_append(h).unwrap();
        }
    }

    /// A `stats_minute` table writing files of `epoch` under `cfg.out`.
    fn stats_table(cfg: &ParquetConfig, epoch: u64) -> PartitionedTable<StatsBuilders> {
        PartitionedTable::new(&cfg.out, "stats_minute", &epoch_tag(epoch), cfg).unwrap()
    }

    #[test]
    fn aggregates_keep_statistics_for_time_and_tenant_and_encode_measures_as_deltas() {
        use ::parquet::basic::Encoding;
        use ::parquet::file::reader::{FileReader, SerializedFileReader};
        let dir = tempfile::tempdir().unwrap();
        let cfg = ParquetConfig {
            out: dir.path().to_path_buf(),
            ..ParquetConfig::default()
        };
        let mut t = stats_table(&cfg, 1);
        write(&mut t, 100, 490_000);
        t.close_all().unwrap();
        let files = parquet_files(dir.path());
        assert_eq!(files.len(), 1, "{files:?}");
        let reader = SerializedFileReader::new(fs::File::open(&files[0]).unwrap()).unwrap();
        let group = reader.metadata().row_group(0);
        let column = |name: &str| {
            group
                .columns()
                .iter()
                .find(|c| c.column_path().string() == name)
                .unwrap_or_else(|| panic!("no column {name}"))
        };
        for name in ["minute", "tenant_id"] {
            assert!(column(name).statistics().is_some(), "{name}");
        }
        for name in [
            "offer_id",
            "affiliate_id",
            "country",
            "currency",
            "clicks",
            "revenue",
        ] {
            assert!(column(name).statistics().is_none(), "{name}");
        }
        for name in ["minute", "clicks", "revenue"] {
            assert!(
                column(name)
                    .encodings()
                    .any(|e| e == Encoding::DELTA_BINARY_PACKED),
                "{name}"
            );
        }
        assert!(
            column("offer_id")
                .encodings()
                .any(|e| e == Encoding::RLE_DICTIONARY)
        );
    }

    #[test]
    fn files_roll_by_rows_and_age_and_land_complete() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ParquetConfig {
            out: dir.path().to_path_buf(),
            roll_rows: WRITE_BATCH_ROWS as u64,
            roll_age: Duration::from_secs(3600),
            ..ParquetConfig::default()
        };
        let mut t = stats_table(&cfg, 3);
        // Three full write batches in one hour → three files rolled by rows.
        write(&mut t, 3 * WRITE_BATCH_ROWS as i64, 490_000);
        let done: Vec<_> = parquet_files(dir.path())
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .collect();
        assert_eq!(done.len(), 3, "{done:?}");
        assert!(
            done[0]
                .to_string_lossy()
                .contains("stats_minute/dt=2025-11-24/hour=16/part-e00000003-000000.parquet")
        );
        // A few rows in another hour stay buffered until the age roll or the close.
        write(&mut t, 10, 490_001);
        assert_eq!(parquet_files(dir.path()).len(), 3);
        t.cfg.roll_age = Duration::ZERO;
        t.roll_aged().unwrap();
        let all = parquet_files(dir.path());
        assert_eq!(all.len(), 4);
        assert!(all.iter().all(|p| !p.to_string_lossy().ends_with(".tmp")));
        assert_eq!(t.rows_written, 3 * WRITE_BATCH_ROWS as u64 + 10);
        t.close_all().unwrap();
        assert_eq!(t.files_written, 4);
    }

    #[test]
    fn a_partition_the_table_moved_away_from_is_written_and_closed() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ParquetConfig {
            out: dir.path().to_path_buf(),
            ..ParquetConfig::default()
        };
        let mut t = stats_table(&cfg, 1);
        let complete = |dir: &Path| {
            parquet_files(dir)
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
                .count()
        };
        // Hour 490 000 gets a file (a full write batch) and a few rows more; hour 489 999 only
        // a few buffered rows (late data). Then the next hour takes rows…
        write(&mut t, 10, 489_999);
        write(&mut t, WRITE_BATCH_ROWS as i64 + 10, 490_000);
        write(&mut t, IDLE_ROWS as i64 - 100, 490_001);
        assert_eq!(complete(dir.path()), 0);
        assert_eq!(t.partitions.len(), 3);
        // …until the table has taken IDLE_ROWS rows since 490 000's last one: its buffer is
        // written and its file closed. The late hour's few rows wait for the checkpoint.
        write(&mut t, 100 + IDLE_CHECK_ROWS as i64, 490_001);
        assert_eq!(complete(dir.path()), 1);
        assert_eq!(t.partitions.len(), 2);
        assert_eq!(t.files_written, 1);
        // A late row opens hour 490 000 again, in a new file.
        write(&mut t, 1, 490_000);
        t.close_all().unwrap();
        assert_eq!(complete(dir.path()), 4);
        assert_eq!(
            t.rows_written,
            10 + WRITE_BATCH_ROWS as u64 + 10 + IDLE_ROWS + IDLE_CHECK_ROWS + 1
        );
    }

    #[test]
    fn files_roll_by_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ParquetConfig {
            out: dir.path().to_path_buf(),
            roll_megabytes: 1,
            ..ParquetConfig::default()
        };
        let mut t = stats_table(&cfg, 3);
        // Distinct strings defeat the dictionary, so the file grows past 1 MiB quickly.
        let offers: Vec<String> = (0..200_000i64)
            .map(|i| format!("offer-{i:012}-{}", i * 7919))
            .collect();
        let mut strings = vec!["", "t", "o", "a", "US"];
        strings.extend(offers.iter().map(String::as_str));
        let names = Names::of(&strings);
        for i in 0..200_000u32 {
            let mut r = stats_row(490_000 * 3_600_000);
            r.dims.offer = 5 + i;
            let (b, h) = t.builders(r.minute_ms);
            b.append(&r, &names);
            t.after_append(h).unwrap();
        }
        t.close_all().unwrap();
        assert!(t.files_written >= 2, "{} files", t.files_written);
        assert_eq!(t.rows_written, 200_000);
    }
}
