//! The command-line side of the lifecycle: `attribd retention` and `attribd privacy
//! export|delete`. Each works on one pipeline's output and state directories; what writes
//! there takes the directories' lock first, and when a daemon holds it a deletion is left to
//! the daemon (retention) or queued for it (erasure).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::privacy::{self, Removed, Requests, Subject};
use super::{export, retention};
use crate::checkpoint::lock::{DirLock, Locked, lock_dirs};
use crate::config::PipelineConfig;

/// The lock `attribd run` takes; `Ok(None)` when a daemon holds it.
fn try_lock(cfg: &PipelineConfig) -> Result<Option<DirLock>> {
    match lock_dirs(&[cfg.sink.parquet.out.join("_state"), cfg.state_dir()]) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.downcast_ref::<Locked>().is_some() => Ok(None),
        Err(e) => Err(e),
    }
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// `attribd retention [--dry-run] [--now T]`.
pub fn retention(cfg: &PipelineConfig, dry_run: bool, now_ms: i64) -> Result<()> {
    let Some(rcfg) = &cfg.retention else {
        bail!(
            "the pipeline has no [retention] section: nothing is ever deleted (see \
             docs/operations.md, \"Data lifecycle\")"
        );
    };
    let out = &cfg.sink.parquet.out;
    let lock = if dry_run {
        None
    } else {
        match try_lock(cfg)? {
            Some(l) => Some(l),
            None => bail!(
                "a running attribd holds {}: it deletes expired partitions itself (every \
                 retention.every, after a checkpoint); `--dry-run` lists them",
                out.display()
            ),
        }
    };
    let expired = retention::plan(out, rcfg, now_ms, None)?;
    let verb = if dry_run { "would delete" } else { "deleted" };
    for e in &expired {
        println!(
            "{verb} {:<13} {}  ({} file{}, {})",
            e.table,
            e.path.strip_prefix(out).unwrap_or(&e.path).display(),
            e.files.len(),
            if e.files.len() == 1 { "" } else { "s" },
            human_bytes(e.bytes)
        );
    }
    if !dry_run {
        retention::delete(&expired)?;
    }
    let mut partitions = expired.len();
    if let Some(ch) = &cfg.sink.clickhouse {
        let dropped = super::clickhouse_pass(ch, rcfg, now_ms, dry_run)?;
        for p in &dropped {
            println!(
                "{verb} clickhouse {}.{} partition {}",
                ch.database, p.table, p.partition
            );
        }
        partitions += dropped.len();
    }
    let bytes: u64 = expired.iter().map(|e| e.bytes).sum();
    println!(
        "{} partition{} / file{}, {} {}",
        partitions,
        if partitions == 1 { "" } else { "s" },
        if partitions == 1 { "" } else { "s" },
        human_bytes(bytes),
        if dry_run { "would go" } else { "gone" }
    );
    drop(lock);
    Ok(())
}

fn check_subject(subject: &Subject) -> Result<()> {
    if subject.customer_id.is_empty() {
        bail!("--customer-id must not be empty");
    }
    if subject.tenant.as_deref() == Some("") {
        bail!("--tenant must not be empty (leave it out for every tenant)");
    }
    Ok(())
}

/// `attribd privacy export`: the JSON document to `dest` (`-`: stdout).
pub fn export(cfg: &PipelineConfig, subject: &Subject, dest: &Path) -> Result<()> {
    check_subject(subject)?;
    let doc = export::export(&cfg.sink.parquet.out, cfg.sink.clickhouse.as_ref(), subject)?;
    let text = serde_json::to_string_pretty(&doc)?;
    if dest == Path::new("-") {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        // A reader that stops early (`| head`) is not an error of the export.
        match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(e).context("writing the export to stdout");
            }
            _ => {}
        }
    } else {
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        crate::checkpoint::write_atomic(dir, dest, &[text.as_bytes()])?;
        eprintln!(
            "wrote {} ({} conversion rows, {} clicks from Parquet, {} rows from ClickHouse)",
            dest.display(),
            doc["counts"]["parquet_conversions"],
            doc["counts"]["parquet_clicks"],
            doc["counts"]["clickhouse_conversions"]
        );
    }
    Ok(())
}

/// `attribd privacy delete`: queued; performed here when no daemon holds the directory (now,
/// or once it stops), else by the daemon; waits up to `wait` for the result.
pub fn delete(cfg: &PipelineConfig, subject: Subject, wait: Duration) -> Result<Removed> {
    check_subject(&subject)?;
    let state_dir = cfg.state_dir();
    let req = privacy::queue(&state_dir, subject)?;
    let started = Instant::now();
    let mut told = false;
    loop {
        if let Some(removed) = privacy::done(&state_dir, &req.id) {
            return Ok(removed);
        }
        if let Some(_lock) = try_lock(cfg)? {
            // Nothing runs: this process is the writer now.
            let mut requests = Requests::new(cfg);
            return requests
                .perform_now(&req)
                .with_context(|| format!("erasure {} (rerun the command to finish it)", req.id));
        }
        if !told {
            eprintln!(
                "request {} queued for the running attribd (it performs it after its next \
                 checkpoints); waiting up to {}",
                req.id,
                humantime::format_duration(wait)
            );
            told = true;
        }
        if started.elapsed() >= wait {
            bail!(
                "request {} is still queued after {}: the running attribd performs it after \
                 its next checkpoints (it needs traffic or its checkpoint interval to pass); \
                 the audit log {} records it when done",
                req.id,
                humantime::format_duration(wait),
                privacy::dir(&state_dir).join("audit.ndjson").display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
