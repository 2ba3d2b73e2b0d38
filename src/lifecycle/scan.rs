//! Reading and rewriting attribd's own Parquet files for subject requests: listing a table's
//! complete files, reading one back as Arrow batches, and replacing one atomically.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

/// Suffix of a rewrite in progress (dot-prefixed, so readers and retention skip it).
pub const REWRITE_SUFFIX: &str = ".erase.tmp";

/// Every complete file of `table` under `out` (`part-*.parquet`, not the dot-prefixed ones
/// still being written), sorted; with `hours`, only those hour partitions (`dt=…/hour=…`).
pub fn table_files(out: &Path, table: &str, hours: Option<&[String]>) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let root = out.join(table);
    let dirs: Vec<PathBuf> = match hours {
        Some(h) => h.iter().map(|p| root.join(p)).collect(),
        None => vec![root],
    };
    let mut stack = dirs;
    while let Some(d) = stack.pop() {
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", d.display())),
        };
        for e in entries {
            let p = e
                .with_context(|| format!("listing {}", d.display()))?
                .path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if p.is_dir() {
                stack.push(p);
            } else if name.starts_with("part-") && name.ends_with(".parquet") {
                files.push(p);
            }
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// Leftovers of rewrites a crash interrupted (the original is still in place, or already
/// replaced): deleted.
pub fn remove_stale_rewrites(out: &Path, table: &str) -> Result<usize> {
    let mut removed = 0;
    let mut stack = vec![out.join(table)];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if p.is_dir() {
                stack.push(p);
            } else if name.starts_with('.') && name.ends_with(REWRITE_SUFFIX) {
                fs::remove_file(&p).with_context(|| format!("deleting {}", p.display()))?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// The file's rows as Arrow batches.
pub fn read(path: &Path) -> Result<Vec<RecordBatch>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("reading {}", path.display()))?
        .with_batch_size(64 * 1024)
        .build()
        .with_context(|| format!("reading {}", path.display()))?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading {}", path.display()))
}

/// A text column of `batch` by name.
pub fn text<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .with_context(|| format!("no text column {name}"))
}

/// The value of a text column at `row`, `None` when null.
pub fn value(col: &StringArray, row: usize) -> Option<&str> {
    (!col.is_null(row)).then(|| col.value(row))
}

/// Replaces `path` by a file holding `batches`: written beside it under a dot-prefixed
/// temporary name, fsynced, renamed over it, the directory fsynced. A crash leaves either the
/// old file or the new one.
pub fn replace(path: &Path, batches: &[RecordBatch]) -> Result<()> {
    let dir = path.parent().context("a file without a directory")?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("a file without a name")?;
    let tmp = dir.join(format!(".{name}{REWRITE_SUFFIX}"));
    let schema = match batches.first() {
        Some(b) => b.schema(),
        None => {
            // No rows left: the file goes (an empty Parquet file helps nobody).
            fs::remove_file(path).with_context(|| format!("deleting {}", path.display()))?;
            return sync_dir(dir);
        }
    };
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .build();
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut writer = ArrowWriter::try_new(file, schema, Some(props))
        .with_context(|| format!("writing {}", tmp.display()))?;
    for b in batches {
        writer
            .write(b)
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    let file = writer
        .into_inner()
        .with_context(|| format!("finishing {}", tmp.display()))?;
    file.sync_all()
        .with_context(|| format!("fsync {}", tmp.display()))?;
    crate::failpoint::crash_point("erasure-before-rename");
    fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync directory {}", dir.display()))
}

/// `batch` with the text columns `names` set to null on the rows where `scrub` is true.
pub fn null_out(batch: &RecordBatch, names: &[&str], scrub: &[bool]) -> Result<RecordBatch> {
    let schema = batch.schema();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    for (i, field) in schema.fields().iter().enumerate() {
        if !names.contains(&field.name().as_str()) {
            continue;
        }
        let col = text(batch, field.name())?;
        let replaced: StringArray = (0..col.len())
            .map(|r| if scrub[r] { None } else { value(col, r) })
            .collect();
        columns[i] = Arc::new(replaced);
    }
    RecordBatch::try_new(schema, columns).context("rebuilding a batch")
}
