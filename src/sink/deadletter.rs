//! The dead-letter output: every record attribd could not use, with why and the original bytes.
//!
//! NDJSON, one object per record: `reason`, `detail`, `stream`, `source`, `line`, `offset` and
//! either `raw` (the original line, when it is valid UTF-8) or `raw_base64`. Written to
//! `OUT/dead_letters/part-e<epoch>-<seq>.ndjson` under a dot-prefixed temporary name, renamed when
//! the file is closed.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::Engine as _;
use serde::Serialize;

use crate::event::DeadLetter;

#[derive(Serialize)]
struct Line<'a> {
    reason: &'static str,
    detail: &'a str,
    stream: &'static str,
    source: &'a str,
    line: u64,
    offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_base64: Option<String>,
}

/// Dead letters per file before rolling to the next one.
const ROLL_RECORDS: u64 = 1_000_000;

pub struct DeadLetterWriter {
    dir: PathBuf,
    run_id: String,
    seq: u64,
    open: Option<(BufWriter<File>, PathBuf, PathBuf, u64)>,
    pub written: u64,
}

impl DeadLetterWriter {
    pub fn new(out: &Path, run_id: &str) -> DeadLetterWriter {
        DeadLetterWriter {
            dir: out.join("dead_letters"),
            run_id: run_id.to_string(),
            seq: 0,
            open: None,
            written: 0,
        }
    }

    pub fn write(&mut self, d: &DeadLetter) -> Result<()> {
        if self.open.is_none() {
            fs::create_dir_all(&self.dir)
                .with_context(|| format!("creating {}", self.dir.display()))?;
            let name = format!("part-{}-{:06}.ndjson", self.run_id, self.seq);
            self.seq += 1;
            let tmp = self.dir.join(format!(".{name}.tmp"));
            let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            self.open = Some((BufWriter::new(file), tmp, self.dir.join(name), 0));
        }
        let Some((w, tmp, _, count)) = self.open.as_mut() else {
            return Ok(());
        };
        let text = std::str::from_utf8(&d.raw).ok();
        let line = Line {
            reason: d.reason.as_str(),
            detail: &d.detail,
            stream: d.stream.as_str(),
            source: &d.source,
            line: d.position.line,
            offset: d.position.offset,
            raw: text,
            raw_base64: match text {
                Some(_) => None,
                None => Some(base64::engine::general_purpose::STANDARD.encode(&d.raw)),
            },
        };
        serde_json::to_writer(&mut *w, &line)
            .with_context(|| format!("writing {}", tmp.display()))?;
        w.write_all(b"\n")
            .with_context(|| format!("writing {}", tmp.display()))?;
        *count += 1;
        self.written += 1;
        if *count >= ROLL_RECORDS {
            self.close()?;
        }
        Ok(())
    }

    /// Starts naming files for `epoch`.
    pub fn set_epoch(&mut self, epoch: u64) {
        self.run_id = super::parquet::epoch_tag(epoch);
        self.seq = 0;
    }

    /// Flushes, fsyncs and renames the open file.
    pub fn close(&mut self) -> Result<()> {
        if let Some((w, tmp, fin, _)) = self.open.take() {
            let file = w
                .into_inner()
                .map_err(|e| anyhow::anyhow!("flushing {}: {}", tmp.display(), e.error()))?;
            file.sync_all()
                .with_context(|| format!("fsync {}", tmp.display()))?;
            fs::rename(&tmp, &fin).with_context(|| format!("renaming {}", tmp.display()))?;
        }
        Ok(())
    }
}
