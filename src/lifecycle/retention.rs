//! Retention: which output partitions have outlived `[retention]`, and deleting them.
//!
//! A Parquet table is partitioned by event time (`TABLE/dt=YYYY-MM-DD/hour=HH/`); a day is
//! expired once its *last* millisecond is older than the table's retention, so nothing younger
//! than the retention is ever deleted. Dead letters carry no event date: a dead-letter file
//! expires by the time it was written (its modification time).
//!
//! Never touched: temporary files (dot-prefixed, still being written) and files of epochs after
//! `settled_epoch` — the daemon passes the epoch of the checkpoint just written, so every file it
//! may delete is closed, and none is one a crash would make it delete and write again. A late
//! record for an expired hour may still open a new file there; the next pass deletes it (the
//! Parquet sink creates the directory again if a pass removed it in between).
//!
//! ClickHouse: current servers expire rows by TTL (set by `attribd migrate`); on servers
//! without TTL (18.16) [`clickhouse_expired`] lists the monthly partitions whose whole month is
//! past retention, and [`drop_clickhouse`] drops them.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::event::time::MS_PER_DAY;
use crate::sink::parquet::epoch_of;

/// How long a table's data is kept: a duration of whole days (`"90d"`) or `"forever"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Keep(pub Option<Duration>);

impl TryFrom<String> for Keep {
    type Error = String;
    fn try_from(s: String) -> Result<Keep, String> {
        if s.trim() == "forever" {
            return Ok(Keep(None));
        }
        let d = humantime::parse_duration(s.trim())
            .map_err(|e| format!("{s:?} is not a duration like \"90d\" or \"forever\": {e}"))?;
        if d.as_secs() > 100 * 366 * 86_400 {
            return Err(format!("{s:?}: more than 100 years; write \"forever\""));
        }
        if d.as_secs() == 0 || d.as_secs() % 86_400 != 0 {
            return Err(format!(
                "{s:?}: retention is in whole days (\"30d\", \"730d\") or \"forever\""
            ));
        }
        Ok(Keep(Some(d)))
    }
}

impl From<Keep> for String {
    fn from(k: Keep) -> String {
        match k.0 {
            None => "forever".into(),
            Some(d) => format!("{}d", d.as_secs() / 86_400),
        }
    }
}

impl Keep {
    pub fn days(days: u64) -> Keep {
        Keep(Some(Duration::from_secs(days * 86_400)))
    }

    fn ms(self) -> Option<i64> {
        self.0.map(|d| d.as_millis() as i64)
    }

    /// Whole days, for ClickHouse TTL; 0 = forever.
    pub fn whole_days(self) -> u32 {
        self.0.map_or(0, |d| (d.as_secs() / 86_400) as u32)
    }
}

/// `[retention]`: present → the daemon deletes what is older (absent → nothing is deleted).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// `clicks/` (event time of the click).
    pub clicks: Keep,
    /// `conversions/` (the conversion's time; every version of it lives in that partition).
    pub conversions: Keep,
    /// `stats_minute/` and `stats_click_hour/` (aggregates; not personal data, so kept unless
    /// told).
    pub stats: Keep,
    /// `dead_letters/` (by when each file was written).
    pub dead_letters: Keep,
    /// How often the running daemon looks (after a checkpoint, at most this often).
    #[serde(with = "humantime_serde")]
    pub every: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            clicks: Keep::days(90),
            conversions: Keep::days(730),
            stats: Keep(None),
            dead_letters: Keep::days(30),
            every: Duration::from_secs(3600),
        }
    }
}

impl RetentionConfig {
    /// `(table directory, retention)` of the Parquet tables.
    pub fn tables(&self) -> [(&'static str, Keep); 4] {
        [
            ("clicks", self.clicks),
            ("conversions", self.conversions),
            ("stats_minute", self.stats),
            ("stats_click_hour", self.stats),
        ]
    }

    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if self.every.is_zero() {
            p.push(("retention.every", "must be more than 0s".to_string()));
        }
        p
    }
}

/// One expired hour partition (or dead-letter file) and what deleting it frees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    /// `clicks`, `conversions`, `stats_minute` or `dead_letters`.
    pub table: &'static str,
    /// The hour partition's directory, or the dead-letter file.
    pub path: PathBuf,
    /// The files to delete (for a dead letter, the file itself).
    pub files: Vec<PathBuf>,
    pub bytes: u64,
}

/// What a pass deleted, per table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Deleted {
    pub per_table: Vec<(&'static str, u64, u64)>,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The day number of a `dt=YYYY-MM-DD` directory name.
fn day_of_dir(name: &str) -> Option<i64> {
    let date = name.strip_prefix("dt=")?;
    let d = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    Some((d - epoch).num_days())
}

fn sorted_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    match fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries {
                let e = e.with_context(|| format!("listing {}", dir.display()))?;
                out.push(e.path());
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    }
    out.sort();
    Ok(out)
}

fn file_name(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

/// Everything under `out` that `cfg` says has expired at `now_ms`; only files of epochs up to
/// `settled_epoch` (all, when `None`: nothing is writing).
pub fn plan(
    out: &Path,
    cfg: &RetentionConfig,
    now_ms: i64,
    settled_epoch: Option<u64>,
) -> Result<Vec<Expired>> {
    let mut expired = Vec::new();
    for (table, keep) in cfg.tables() {
        let Some(keep_ms) = keep.ms() else { continue };
        for day_dir in sorted_dirs(&out.join(table))? {
            let Some(day) = day_of_dir(file_name(&day_dir)) else {
                continue;
            };
            // The day's last millisecond must be older than the retention.
            if (day + 1) * MS_PER_DAY + keep_ms > now_ms {
                continue;
            }
            for hour_dir in sorted_dirs(&day_dir)? {
                if !file_name(&hour_dir).starts_with("hour=") {
                    continue;
                }
                let mut files = Vec::new();
                let mut bytes = 0;
                for f in sorted_dirs(&hour_dir)? {
                    let name = file_name(&f);
                    let settled = match (epoch_of(name), settled_epoch) {
                        (_, None) => true,
                        (Some(e), Some(s)) => e <= s,
                        (None, Some(_)) => false,
                    };
                    if name.starts_with('.') || !name.ends_with(".parquet") || !settled {
                        continue;
                    }
                    bytes += fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
                    files.push(f);
                }
                if !files.is_empty() {
                    expired.push(Expired {
                        table,
                        path: hour_dir,
                        files,
                        bytes,
                    });
                }
            }
        }
    }
    if let Some(keep) = cfg.dead_letters.0 {
        let cutoff = UNIX_EPOCH + Duration::from_millis(now_ms.max(0) as u64);
        for f in sorted_dirs(&out.join("dead_letters"))? {
            let name = file_name(&f);
            if name.starts_with('.') || !name.ends_with(".ndjson") {
                continue;
            }
            let meta = fs::metadata(&f).with_context(|| format!("reading {}", f.display()))?;
            let written = meta.modified().unwrap_or(cutoff);
            if written + keep <= cutoff {
                expired.push(Expired {
                    table: "dead_letters",
                    path: f.clone(),
                    files: vec![f],
                    bytes: meta.len(),
                });
            }
        }
    }
    Ok(expired)
}

/// Deletes what [`plan`] listed; directories left empty go too. Returns partitions (or
/// dead-letter files) and bytes deleted per table.
pub fn delete(expired: &[Expired]) -> Result<Deleted> {
    let mut deleted = Deleted::default();
    for e in expired {
        for f in &e.files {
            match fs::remove_file(f) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err).with_context(|| format!("deleting {}", f.display())),
            }
        }
        if e.table != "dead_letters" {
            // Only if empty: a late record may have opened a file here meanwhile.
            let _ = fs::remove_dir(&e.path);
            if let Some(day) = e.path.parent() {
                let _ = fs::remove_dir(day);
            }
        }
        match deleted.per_table.iter_mut().find(|(t, _, _)| *t == e.table) {
            Some((_, n, b)) => {
                *n += 1;
                *b += e.bytes;
            }
            None => deleted.per_table.push((e.table, 1, e.bytes)),
        }
    }
    Ok(deleted)
}

/// A ClickHouse partition past retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredPartition {
    pub table: &'static str,
    /// `YYYYMM`, as the tables are partitioned (`toYYYYMM`).
    pub partition: String,
}

/// Whether the month `YYYYMM` ended more than `keep` before `now_ms`.
pub fn month_expired(partition: &str, keep: Keep, now_ms: i64) -> bool {
    let Some(keep_ms) = keep.ms() else {
        return false;
    };
    let (Some(y), Some(m)) = (
        partition.get(..4).and_then(|y| y.parse::<i32>().ok()),
        partition.get(4..6).and_then(|m| m.parse::<u32>().ok()),
    ) else {
        return false;
    };
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let Some(next_month) = chrono::NaiveDate::from_ymd_opt(ny, nm, 1) else {
        return false;
    };
    let Some(epoch) = chrono::NaiveDate::from_ymd_opt(1970, 1, 1) else {
        return false;
    };
    let end_ms = (next_month - epoch).num_days() * MS_PER_DAY;
    end_ms + keep_ms <= now_ms
}

/// ClickHouse tables and the retention that applies to each.
pub fn clickhouse_tables(cfg: &RetentionConfig) -> [(&'static str, Keep); 3] {
    [
        ("attribution_stats_minute", cfg.stats),
        ("attribution_stats_click_hour", cfg.stats),
        ("conversions", cfg.conversions),
    ]
}

/// The monthly partitions of attribd's ClickHouse tables past retention (servers without TTL).
pub async fn clickhouse_expired(
    client: &clickhouse::Client,
    db: &str,
    cfg: &RetentionConfig,
    now_ms: i64,
) -> Result<Vec<ExpiredPartition>> {
    let mut out = Vec::new();
    for (table, keep) in clickhouse_tables(cfg) {
        if keep.0.is_none() {
            continue;
        }
        let partitions: Vec<String> = client
            .query(
                "SELECT DISTINCT partition FROM system.parts \
                 WHERE database = ? AND table = ? AND active ORDER BY partition",
            )
            .bind(db)
            .bind(table)
            .fetch_all()
            .await
            .with_context(|| format!("listing the partitions of {db}.{table}"))?;
        for p in partitions {
            let p = p.trim_matches('\'').to_string();
            if month_expired(&p, keep, now_ms) {
                out.push(ExpiredPartition {
                    table,
                    partition: p,
                });
            }
        }
    }
    Ok(out)
}

/// `ALTER TABLE … DROP PARTITION` for each.
pub async fn drop_clickhouse(
    client: &clickhouse::Client,
    db: &str,
    expired: &[ExpiredPartition],
) -> Result<()> {
    use crate::sink::clickhouse::migrations::quote_ident;
    for e in expired {
        // The partition id is digits only (checked by month_expired), so it is safe inline.
        client
            .query(&format!(
                "ALTER TABLE {}.{} DROP PARTITION {}",
                quote_ident(db),
                quote_ident(e.table),
                e.partition
            ))
            .execute()
            .await
            .with_context(|| format!("dropping partition {} of {db}.{}", e.partition, e.table))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = MS_PER_DAY;

    fn touch(p: &Path) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, b"x").unwrap();
    }

    #[test]
    fn keep_parses_days_and_forever_only() {
        assert_eq!(Keep::try_from("90d".to_string()), Ok(Keep::days(90)));
        assert_eq!(Keep::try_from("forever".to_string()), Ok(Keep(None)));
        assert!(Keep::try_from("36h".to_string()).is_err());
        assert!(Keep::try_from("0d".to_string()).is_err());
        assert!(Keep::try_from("soon".to_string()).is_err());
        assert!(Keep::try_from("99999999999d".to_string()).is_err());
        assert_eq!(String::from(Keep::days(730)), "730d");
    }

    #[test]
    fn a_day_expires_when_its_last_millisecond_is_older_than_retention() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        // 2025-01-01 is day 20089.
        touch(&out.join("clicks/dt=2025-01-01/hour=00/part-e00000001-000000.parquet"));
        touch(&out.join("clicks/dt=2025-01-01/hour=23/part-e00000002-000000.parquet"));
        touch(&out.join("clicks/dt=2025-01-01/hour=23/.part-e00000003-000001.parquet.tmp"));
        touch(&out.join("clicks/dt=2025-01-01/hour=22/part-e00000009-000000.parquet"));
        touch(&out.join("clicks/dt=2025-01-02/hour=00/part-e00000001-000001.parquet"));
        touch(&out.join("stats_minute/dt=2025-01-01/hour=00/part-e00000001-000000.parquet"));
        let cfg = RetentionConfig {
            clicks: Keep::days(10),
            ..RetentionConfig::default()
        };
        let day = 20_089;
        // One millisecond short of the day's end + 10 days: nothing.
        let now = (day + 1) * DAY + 10 * DAY - 1;
        assert!(plan(out, &cfg, now, Some(5)).unwrap().is_empty());
        let expired = plan(out, &cfg, now + 1, Some(5)).unwrap();
        let paths: Vec<String> = expired
            .iter()
            .map(|e| e.path.strip_prefix(out).unwrap().display().to_string())
            .collect();
        // hour=22 holds only an unsettled epoch; stats are kept forever; the tmp file stays.
        assert_eq!(
            paths,
            [
                "clicks/dt=2025-01-01/hour=00",
                "clicks/dt=2025-01-01/hour=23"
            ]
        );
        let deleted = delete(&expired).unwrap();
        assert_eq!(deleted.per_table, vec![("clicks", 2, 2)]);
        assert!(!out.join("clicks/dt=2025-01-01/hour=00").exists());
        assert!(
            out.join("clicks/dt=2025-01-01/hour=23/.part-e00000003-000001.parquet.tmp")
                .exists()
        );
        assert!(out.join("clicks/dt=2025-01-01/hour=22").exists());
        assert!(out.join("clicks/dt=2025-01-02/hour=00").exists());
        // Nothing writing (None): the later epoch goes too, the day directory with it once empty.
        let rest = plan(out, &cfg, now + 1, None).unwrap();
        assert_eq!(rest.len(), 1);
        delete(&rest).unwrap();
        assert!(!out.join("clicks/dt=2025-01-01/hour=22").exists());
    }

    #[test]
    fn months_expire_after_their_last_day() {
        let keep = Keep::days(30);
        // 2025-01 ends at 2025-02-01 = day 20120.
        let end = 20_120 * DAY;
        assert!(!month_expired("202501", keep, end + 30 * DAY - 1));
        assert!(month_expired("202501", keep, end + 30 * DAY));
        assert!(month_expired("202412", keep, end));
        assert!(!month_expired("202501", Keep(None), i64::MAX / 2));
        assert!(!month_expired("tuple()", keep, end * 2));
    }
}
