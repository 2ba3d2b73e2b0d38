//! Sinks: where the state stage's [`SinkBatch`]es end up.
//!
//! [`FileSinks`] routes each part of a batch to its file writer: clicks, conversion versions
//! and aggregates (by minute and by click hour) to the Parquet tables (`parquet`), dead letters to NDJSON
//! (`deadletter`). Each sink thread holds one (Parquet encoding is the most CPU-hungry stage
//! after decoding): `sink-clicks` gets only clicks, `sink-conv-stats` the rest.
//! ClickHouse (`clickhouse`) is a sink of its own, on a thread of its own.

pub mod clickhouse;
pub mod deadletter;
pub mod parquet;

/// The output directories of a pipeline under `OUT`.
pub const TABLE_DIRS: [&str; 5] = [
    "clicks",
    "conversions",
    "stats_minute",
    "stats_click_hour",
    "dead_letters",
];

/// Deletes output files of epochs after `epoch` and leftover temporary files: what a crashed
/// run wrote after its last checkpoint, which the replay writes again. Returns how many.
pub fn discard_after(out: &std::path::Path, epoch: u64) -> Result<usize> {
    let mut removed = 0;
    let mut stack: Vec<std::path::PathBuf> = TABLE_DIRS.iter().map(|t| out.join(t)).collect();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = e.file_name().to_string_lossy().to_string();
            let ours = parquet::epoch_of(&name);
            let leftover = name.ends_with(".tmp") && ours.is_some();
            if leftover || ours.is_some_and(|f| f > epoch) {
                std::fs::remove_file(&path)
                    .map_err(|err| anyhow::anyhow!("removing {}: {err}", path.display()))?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

use anyhow::Result;

use crate::rows::{Names, SinkBatch};
use deadletter::DeadLetterWriter;
use parquet::{
    ClickBuilders, ClickHourBuilders, ConversionBuilders, ParquetConfig, PartitionedTable,
    StatsBuilders,
};

/// Rows and files written, per output.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SinkTotals {
    pub click_rows: u64,
    pub conversion_rows: u64,
    pub stats_rows: u64,
    /// Rows of `stats_click_hour`.
    pub click_hour_rows: u64,
    pub dead_letters: u64,
    pub files: u64,
}

impl std::ops::Add for SinkTotals {
    type Output = SinkTotals;
    fn add(self, o: SinkTotals) -> SinkTotals {
        SinkTotals {
            click_rows: self.click_rows + o.click_rows,
            conversion_rows: self.conversion_rows + o.conversion_rows,
            stats_rows: self.stats_rows + o.stats_rows,
            click_hour_rows: self.click_hour_rows + o.click_hour_rows,
            dead_letters: self.dead_letters + o.dead_letters,
            files: self.files + o.files,
        }
    }
}

/// The file outputs of one sink thread: the three Parquet tables and the dead-letter NDJSON
/// (not ClickHouse, which has a sink of its own).
pub struct FileSinks {
    clicks: PartitionedTable<ClickBuilders>,
    conversions: PartitionedTable<ConversionBuilders>,
    stats: PartitionedTable<StatsBuilders>,
    click_hour: PartitionedTable<ClickHourBuilders>,
    dead: DeadLetterWriter,
    /// The strings behind the aggregate rows' dimension ids.
    names: Names,
}

impl FileSinks {
    /// File sinks writing files of `epoch`.
    pub fn new(cfg: &ParquetConfig, epoch: u64) -> Result<FileSinks> {
        let out = &cfg.out;
        let tag = parquet::epoch_tag(epoch);
        Ok(FileSinks {
            clicks: PartitionedTable::new(out, "clicks", &tag, cfg)?,
            conversions: PartitionedTable::new(out, "conversions", &tag, cfg)?,
            stats: PartitionedTable::new(out, "stats_minute", &tag, cfg)?,
            click_hour: PartitionedTable::new(out, "stats_click_hour", &tag, cfg)?,
            dead: DeadLetterWriter::new(out, &tag),
            names: Names::default(),
        })
    }

    pub fn write(&mut self, batch: &SinkBatch) -> Result<()> {
        for rows in &batch.clicks {
            for &(index, unique) in &rows.accepted {
                let ts = rows.batch.clicks[index as usize].ts_ms;
                let (b, hour) = self.clicks.builders(ts);
                let scrubbed =
                    !rows.scrubbed.is_empty() && rows.scrubbed.binary_search(&index).is_ok();
                b.append(&rows.batch, index, unique, scrubbed);
                self.clicks.after_append(hour)?;
            }
        }
        for row in &batch.conversions {
            let (b, hour) = self.conversions.builders(row.ts_ms);
            b.append(row);
            self.conversions.after_append(hour)?;
        }
        self.names.learn(&batch.names)?;
        for row in batch.stats.iter().chain(&batch.click_hour) {
            self.names.check(row)?;
        }
        for row in &batch.stats {
            let (b, hour) = self.stats.builders(row.minute_ms);
            b.append(row, &self.names);
            self.stats.after_append(hour)?;
        }
        for row in &batch.click_hour {
            let (b, hour) = self.click_hour.builders(row.minute_ms);
            b.append(row, &self.names);
            self.click_hour.after_append(hour)?;
        }
        for d in &batch.dead_letters {
            self.dead.write(d)?;
        }
        Ok(())
    }

    /// A checkpoint barrier: closes every file (the outputs so far are durable) and names the
    /// files that follow after `next_epoch`.
    pub fn barrier(&mut self, next_epoch: u64) -> Result<()> {
        self.clicks.close_all()?;
        self.conversions.close_all()?;
        self.stats.close_all()?;
        self.click_hour.close_all()?;
        self.dead.close()?;
        self.clicks.set_epoch(next_epoch);
        self.conversions.set_epoch(next_epoch);
        self.stats.set_epoch(next_epoch);
        self.click_hour.set_epoch(next_epoch);
        self.dead.set_epoch(next_epoch);
        Ok(())
    }

    /// Periodic housekeeping: roll files by age.
    pub fn tick(&mut self) -> Result<()> {
        self.clicks.roll_aged()?;
        self.conversions.roll_aged()?;
        self.stats.roll_aged()?;
        self.click_hour.roll_aged()
    }

    /// Writes and closes everything; afterwards all outputs are complete and durable.
    pub fn close(&mut self) -> Result<SinkTotals> {
        self.clicks.close_all()?;
        self.conversions.close_all()?;
        self.stats.close_all()?;
        self.click_hour.close_all()?;
        self.dead.close()?;
        Ok(SinkTotals {
            click_rows: self.clicks.rows_written,
            conversion_rows: self.conversions.rows_written,
            stats_rows: self.stats.rows_written,
            click_hour_rows: self.click_hour.rows_written,
            dead_letters: self.dead.written,
            files: self.clicks.files_written
                + self.conversions.files_written
                + self.stats.files_written
                + self.click_hour.files_written,
        })
    }
}
