//! ClickHouse DDL: numbered migrations from `schemas/clickhouse/`, rendered for the server's
//! version, applied by `attribd migrate`, and the compatibility check `attribd run` does before
//! it writes anything.
//!
//! The server's version decides the DDL ([`ServerVersion::modern`]: LowCardinality,
//! DateTime64, TTL) and whether inserts carry a deduplication token
//! ([`ServerVersion::dedup_tokens`]); 18.16 is the oldest server attribd writes to.

use anyhow::{Context, Result, bail};
use clickhouse::Client;
use serde::Deserialize;

use super::config::{ClickHouseConfig, Credentials, block_on, client};
use super::error::explain;

/// `schemas/clickhouse/NNN_name.sql`, in order.
pub const MIGRATIONS: [(u32, &str, &str); 6] = [
    (
        1,
        "attribution_stats_minute",
        include_str!("../../../schemas/clickhouse/001_attribution_stats_minute.sql"),
    ),
    (
        2,
        "conversions",
        include_str!("../../../schemas/clickhouse/002_conversions.sql"),
    ),
    (
        3,
        "attribd_batches",
        include_str!("../../../schemas/clickhouse/003_attribd_batches.sql"),
    ),
    (
        4,
        "attribution_stats_click_hour",
        include_str!("../../../schemas/clickhouse/004_attribution_stats_click_hour.sql"),
    ),
    (
        5,
        "money",
        include_str!("../../../schemas/clickhouse/005_money.sql"),
    ),
    (
        6,
        "fraud",
        include_str!("../../../schemas/clickhouse/006_fraud.sql"),
    ),
];

/// A server version, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion(pub u32, pub u32);

impl ServerVersion {
    pub fn parse(s: &str) -> Option<ServerVersion> {
        let mut parts = s.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(ServerVersion(major, minor))
    }

    /// LowCardinality, DateTime64 and TTL are generally available from 20.1.
    pub fn modern(self) -> bool {
        self >= ServerVersion(20, 1)
    }

    /// `insert_deduplication_token` and `non_replicated_deduplication_window` (22.2+).
    pub fn dedup_tokens(self) -> bool {
        self >= ServerVersion(22, 2)
    }
}

/// Retention of the two families of tables, days.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub stats_days: u32,
    pub conversions_days: u32,
}

/// Fills the placeholders of a migration for `version`.
pub fn render(sql: &str, db: &str, version: ServerVersion, retention: Retention) -> String {
    let modern = version.modern();
    let mut settings = String::new();
    if version.dedup_tokens() {
        settings.push_str("SETTINGS non_replicated_deduplication_window = 1000");
    }
    let ttl = |expr: &str, days: u32| {
        // 0 days: kept forever ([retention] says "forever").
        if modern && days > 0 {
            format!("TTL {expr} + INTERVAL {days} DAY\n{settings}")
        } else {
            settings.clone()
        }
    };
    sql.replace("{db}", &quote_ident(db))
        .replace(
            "{string}",
            if modern {
                "LowCardinality(String)"
            } else {
                "String"
            },
        )
        .replace(
            "{datetime_ms}",
            if modern {
                "DateTime64(3, 'UTC')"
            } else {
                "DateTime"
            },
        )
        .replace(
            "{ts_from_ms}",
            if modern {
                "fromUnixTimestamp64Milli(ts_ms, 'UTC')"
            } else {
                "toDateTime(intDiv(ts_ms, 1000))"
            },
        )
        .replace("{ttl_stats}", &ttl("minute", retention.stats_days))
        .replace("{ttl_click_hour}", &ttl("click_hour", retention.stats_days))
        .replace(
            "{ttl_conversions}",
            &ttl(
                "toDateTime(intDiv(ts_ms, 1000))",
                retention.conversions_days,
            ),
        )
}

/// The statements of a rendered migration (comments dropped, split on `;`).
pub fn statements(sql: &str) -> Vec<String> {
    let body: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    body.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Backquoted identifier.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

/// Single-quoted string literal.
pub fn quote_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

pub async fn server_version(client: &Client) -> Result<ServerVersion> {
    let v: String = client
        .query("SELECT version()")
        .fetch_one()
        .await
        .map_err(explain)?;
    ServerVersion::parse(&v).with_context(|| format!("unrecognised ClickHouse version {v:?}"))
}

/// `attribd migrate`: creates the database and applies pending migrations; returns the numbers
/// of the migrations applied now.
pub fn migrate(cfg: &ClickHouseConfig) -> Result<Vec<u32>> {
    let creds = Credentials::load(cfg)?;
    let c = client(cfg, &creds);
    block_on(apply(&c, &cfg.database, cfg.retention()))?
}

/// Drops `cfg.database` with everything in it (`attribd bench` cleans up its scratch database).
pub fn drop_database(cfg: &ClickHouseConfig) -> Result<()> {
    let creds = Credentials::load(cfg)?;
    let c = client(cfg, &creds);
    block_on(
        c.query(&format!("DROP DATABASE IF EXISTS `{}`", cfg.database))
            .execute(),
    )??;
    Ok(())
}

/// Creates the database and applies every migration not applied yet. Harmless to repeat.
pub async fn apply(client: &Client, db: &str, retention: Retention) -> Result<Vec<u32>> {
    let version = server_version(client).await?;
    client
        .query(&format!(
            "CREATE DATABASE IF NOT EXISTS {}",
            quote_ident(db)
        ))
        .execute()
        .await
        .map_err(explain)?;
    client
        .query(&format!(
            "CREATE TABLE IF NOT EXISTS {}.attribd_migrations (version UInt32, name String, applied_at DateTime) ENGINE = ReplacingMergeTree() ORDER BY version",
            quote_ident(db)
        ))
        .execute()
        .await
        .map_err(explain)?;
    // Tables someone else created under our names must not be built upon.
    check_columns(client, db, true).await?;
    let done = applied(client, db).await?;
    let mut applied_now = Vec::new();
    for (n, name, sql) in MIGRATIONS {
        if done.contains(&n) {
            continue;
        }
        for stmt in statements(&render(sql, db, version, retention)) {
            client
                .query(&stmt)
                .execute()
                .await
                .map_err(explain)
                .with_context(|| format!("applying migration {n:03}_{name}"))?;
        }
        client
            .query(&format!(
                "INSERT INTO {}.attribd_migrations (version, name, applied_at) VALUES ({n}, {}, now())",
                quote_ident(db),
                quote_str(name)
            ))
            .execute()
            .await
            .map_err(explain)?;
        applied_now.push(n);
    }
    check(client, db).await?;
    Ok(applied_now)
}

async fn applied(client: &Client, db: &str) -> Result<Vec<u32>> {
    let versions = client
        .query(&format!(
            "SELECT DISTINCT version FROM {}.attribd_migrations ORDER BY version",
            quote_ident(db)
        ))
        .fetch_all::<u32>()
        .await
        .map_err(explain)?;
    Ok(versions)
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct ColumnInfo {
    table: String,
    name: String,
    #[serde(rename = "type")]
    ty: String,
}

/// The columns attribd writes, per table, with the type it writes them as. A server-side type
/// may wrap these in `LowCardinality(…)`.
pub fn expected_columns() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    use super::encode::{CLICK_HOUR_COLUMNS, CONVERSION_COLUMNS, STATS_COLUMNS};
    let mut out = Vec::new();
    for (table, cols) in [
        ("attribution_stats_minute", STATS_COLUMNS.as_slice()),
        (
            "attribution_stats_click_hour",
            CLICK_HOUR_COLUMNS.as_slice(),
        ),
        ("conversions", CONVERSION_COLUMNS.as_slice()),
    ] {
        out.push((table, cols.to_vec()));
    }
    out.push((
        "attribd_batches",
        vec![
            ("batch_id", "String"),
            ("table_name", "String"),
            ("rows", "UInt64"),
        ],
    ));
    out
}

/// Verifies that the database exists, every migration is applied, and every table has the
/// columns attribd writes with compatible types. Errors name the table, column and problem.
pub async fn check(client: &Client, db: &str) -> Result<()> {
    let exists: u64 = client
        .query("SELECT count() FROM system.databases WHERE name = ?")
        .bind(db)
        .fetch_one()
        .await
        .map_err(explain)?;
    if exists == 0 {
        bail!(
            "ClickHouse database `{db}` does not exist; create it with `attribd migrate --clickhouse-url URL --database {db}`"
        );
    }
    let has_log: u64 = client
        .query(
            "SELECT count() FROM system.tables WHERE database = ? AND name = 'attribd_migrations'",
        )
        .bind(db)
        .fetch_one()
        .await
        .map_err(explain)?;
    let done = if has_log == 0 {
        Vec::new()
    } else {
        applied(client, db).await?
    };
    let missing: Vec<String> = MIGRATIONS
        .iter()
        .filter(|(n, _, _)| !done.contains(n))
        .map(|(n, name, _)| format!("{n:03}_{name}"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "ClickHouse database `{db}` lacks migrations {}; run `attribd migrate --clickhouse-url URL --database {db}`",
            missing.join(", ")
        );
    }
    check_columns(client, db, false).await
}

/// Compares the columns of attribd's tables with what attribd writes; with `existing_only`,
/// tables and columns that do not exist yet are fine (before migrating), wrong types are not.
async fn check_columns(client: &Client, db: &str, existing_only: bool) -> Result<()> {
    let columns: Vec<ColumnInfo> = client
        .query("SELECT table, name, type FROM system.columns WHERE database = ?")
        .bind(db)
        .fetch_all()
        .await
        .map_err(explain)?;
    for (table, cols) in expected_columns() {
        if existing_only && !columns.iter().any(|c| c.table == table) {
            continue;
        }
        for (name, ty) in cols {
            let found = columns.iter().find(|c| c.table == table && c.name == name);
            match found {
                // Before migrating, a column a pending migration adds is not there yet.
                None if existing_only => {}
                None => bail!(
                    "ClickHouse table `{db}.{table}` is incompatible: it has no column `{name}` ({ty}); it was not created by attribd migrate"
                ),
                Some(c) if strip_low_cardinality(&c.ty) != ty => bail!(
                    "ClickHouse table `{db}.{table}` is incompatible: column `{name}` is {}, attribd writes {ty}",
                    c.ty
                ),
                Some(_) => {}
            }
        }
    }
    Ok(())
}

fn strip_low_cardinality(ty: &str) -> &str {
    ty.strip_prefix("LowCardinality(")
        .and_then(|t| t.strip_suffix(')'))
        .unwrap_or(ty)
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Retention = Retention {
        stats_days: 90,
        conversions_days: 730,
    };

    #[test]
    fn old_servers_get_plain_types_and_no_ttl() {
        let v = ServerVersion::parse("18.16.1").unwrap();
        assert_eq!(v, ServerVersion(18, 16));
        assert!(!v.modern());
        let sql = render(MIGRATIONS[1].2, "db", v, R);
        assert!(sql.contains("tenant_id String,"));
        assert!(sql.contains("ts DateTime MATERIALIZED toDateTime(intDiv(ts_ms, 1000))"));
        assert!(!sql.contains("TTL"));
        assert!(!sql.contains('{'), "every placeholder is filled: {sql}");
    }

    #[test]
    fn current_servers_get_low_cardinality_datetime64_ttl_and_dedup_window() {
        let v = ServerVersion::parse("24.8.1.2684").unwrap();
        let stats = render(MIGRATIONS[0].2, "db", v, R);
        assert!(stats.contains("offer_id LowCardinality(String)"));
        assert!(stats.contains("TTL minute + INTERVAL 90 DAY"));
        assert!(stats.contains("non_replicated_deduplication_window"));
        let conv = render(MIGRATIONS[1].2, "db", v, R);
        assert!(conv.contains("DateTime64(3, 'UTC') MATERIALIZED fromUnixTimestamp64Milli"));
        assert!(conv.contains("INTERVAL 730 DAY"));
        for (_, _, sql) in MIGRATIONS {
            assert!(!render(sql, "db", v, R).contains('{'));
        }
    }

    #[test]
    fn statements_split_and_drop_comments() {
        let s = statements(&render(MIGRATIONS[2].2, "x", ServerVersion(18, 16), R));
        assert_eq!(s.len(), 3);
        assert!(s.iter().all(|st| st.starts_with("CREATE")));
        assert_eq!(quote_ident("a`b"), "`a\\`b`");
        assert_eq!(quote_str("it's"), "'it\\'s'");
    }
}
