//! Subject export (GDPR art. 15/20, LGPD art. 18): `attribd privacy export --customer-id ID`.
//!
//! One JSON document: every version of the customer's conversions in Parquet, the clicks those
//! conversions were attributed to, and the customer's rows in ClickHouse `conversions` — each
//! row with where it came from (`parquet:<file>` or `clickhouse:<db>.conversions`). Read-only:
//! it reads complete files only, so it runs beside a daemon.

use std::path::Path;

use anyhow::{Context, Result};
use arrow::array::{
    Array, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
    UInt32Array,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use rustc_hash::FxHashSet;
use serde_json::{Map, Value, json};

use super::privacy::Subject;
use super::scan;
use crate::sink::clickhouse::ClickHouseConfig;

/// A row of an Arrow batch as a JSON object (money and times as text, exact).
fn row_json(b: &RecordBatch, r: usize) -> Result<Map<String, Value>> {
    let mut obj = Map::new();
    let opts = FormatOptions::default();
    for (field, col) in b.schema().fields().iter().zip(b.columns()) {
        let v = if col.is_null(r) {
            Value::Null
        } else if let Some(s) = col.as_any().downcast_ref::<StringArray>() {
            Value::String(s.value(r).to_string())
        } else if let Some(x) = col.as_any().downcast_ref::<BooleanArray>() {
            Value::Bool(x.value(r))
        } else if let Some(x) = col.as_any().downcast_ref::<Int64Array>() {
            json!(x.value(r))
        } else if let Some(x) = col.as_any().downcast_ref::<UInt32Array>() {
            json!(x.value(r))
        } else if let Some(x) = col.as_any().downcast_ref::<TimestampMillisecondArray>() {
            // attribd writes every time in UTC.
            Value::String(crate::event::time::format_ms(x.value(r)))
        } else if let Some(list) = col.as_any().downcast_ref::<arrow::array::ListArray>()
            && let Some(items) = list.value(r).as_any().downcast_ref::<StringArray>()
        {
            // `fraud_flags`: a JSON array of strings.
            Value::Array(
                items
                    .iter()
                    .map(|s| s.map_or(Value::Null, |s| Value::String(s.to_string())))
                    .collect(),
            )
        } else {
            let f = ArrayFormatter::try_new(col.as_ref(), &opts)
                .with_context(|| format!("formatting column {}", field.name()))?;
            Value::String(f.value(r).to_string())
        };
        obj.insert(field.name().clone(), v);
    }
    Ok(obj)
}

fn with_source(mut row: Map<String, Value>, table: &str, source: String) -> Value {
    row.insert("_table".into(), Value::String(table.into()));
    row.insert("_source".into(), Value::String(source));
    Value::Object(row)
}

/// Everything attribd holds about `subject`, as one JSON document.
pub fn export(
    out: &Path,
    clickhouse: Option<&ClickHouseConfig>,
    subject: &Subject,
) -> Result<Value> {
    let mut conversions = Vec::new();
    let mut keys: FxHashSet<(String, String)> = FxHashSet::default();
    let mut click_ids: FxHashSet<(String, String)> = FxHashSet::default();
    let mut click_hours = Vec::new();
    let files = scan::table_files(out, "conversions", None)?;
    // First the customer's rows (and their keys), then versions that did not repeat the
    // customer id, by key: two passes over the files, one batch in memory at a time.
    for f in &files {
        for b in scan::read(f)? {
            let (tenants, customers, externals) = (
                scan::text(&b, "tenant_id")?,
                scan::text(&b, "customer_id")?,
                scan::text(&b, "external_id")?,
            );
            for r in 0..b.num_rows() {
                if subject.matches(tenants.value(r), scan::value(customers, r)) {
                    keys.insert((tenants.value(r).to_string(), externals.value(r).to_string()));
                }
            }
        }
    }
    let batches = files
        .iter()
        .filter(|_| !keys.is_empty())
        .flat_map(|f| match scan::read(f) {
            Ok(bs) => bs
                .into_iter()
                .map(|b| Ok((f.clone(), b)))
                .collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        });
    for item in batches {
        let (f, b) = item?;
        let b = &b;
        let (tenants, externals, clicks) = (
            scan::text(b, "tenant_id")?,
            scan::text(b, "external_id")?,
            scan::text(b, "click_id")?,
        );
        let attributed = b
            .column_by_name("attributed")
            .and_then(|c| c.as_any().downcast_ref::<BooleanArray>());
        let click_ts = b
            .column_by_name("click_ts")
            .and_then(|c| c.as_any().downcast_ref::<TimestampMillisecondArray>());
        for r in 0..b.num_rows() {
            let key = (tenants.value(r).to_string(), externals.value(r).to_string());
            if !keys.contains(&key) {
                continue;
            }
            if attributed.is_some_and(|a| a.value(r))
                && let Some(ts) = click_ts.filter(|c| !c.is_null(r)).map(|c| c.value(r))
            {
                click_ids.insert((key.0.clone(), clicks.value(r).to_string()));
                let (dt, hh) = crate::event::time::partition_of(ts);
                click_hours.push(format!("dt={dt}/hour={hh:02}"));
            }
            conversions.push(with_source(
                row_json(b, r)?,
                "conversions",
                format!("parquet:{}", rel(out, &f)),
            ));
        }
    }
    click_hours.sort();
    click_hours.dedup();
    let mut clicks = Vec::new();
    for f in scan::table_files(out, "clicks", Some(&click_hours))? {
        for b in scan::read(&f)? {
            let (tenants, ids) = (scan::text(&b, "tenant_id")?, scan::text(&b, "click_id")?);
            for r in 0..b.num_rows() {
                if click_ids.contains(&(tenants.value(r).to_string(), ids.value(r).to_string())) {
                    clicks.push(with_source(
                        row_json(&b, r)?,
                        "clicks",
                        format!("parquet:{}", rel(out, &f)),
                    ));
                }
            }
        }
    }
    let mut ch_rows = Vec::new();
    if let Some(ch) = clickhouse {
        ch_rows = clickhouse_rows(ch, subject)?;
    }
    Ok(json!({
        "subject": {
            "customer_id": subject.customer_id,
            "tenant": subject.tenant,
        },
        "generated_at": chrono::Utc::now().to_rfc3339(),
        "counts": {
            "parquet_conversions": conversions.len(),
            "parquet_clicks": clicks.len(),
            "clickhouse_conversions": ch_rows.len(),
        },
        "conversions": conversions,
        "clicks": clicks,
        "clickhouse_conversions": ch_rows,
    }))
}

fn rel(out: &Path, f: &Path) -> String {
    f.strip_prefix(out).unwrap_or(f).display().to_string()
}

fn clickhouse_rows(ch: &ClickHouseConfig, subject: &Subject) -> Result<Vec<Value>> {
    use crate::sink::clickhouse::config::{Credentials, block_on, client};
    use crate::sink::clickhouse::migrations::{quote_ident, quote_str};
    let creds = Credentials::load(ch)?;
    let c = client(ch, &creds);
    let table = format!("{}.conversions", quote_ident(&ch.database));
    let mut cond = format!("customer_id = {}", quote_str(&subject.customer_id));
    if let Some(t) = &subject.tenant {
        cond.push_str(&format!(" AND tenant_id = {}", quote_str(t)));
    }
    // Versions that did not repeat the customer id belong to the same conversions.
    let sql = format!(
        "SELECT * FROM {table} WHERE (tenant_id, external_id) IN \
         (SELECT tenant_id, external_id FROM {table} WHERE {cond}) \
         ORDER BY tenant_id, external_id, version"
    );
    let bytes = block_on(async {
        c.query(&sql)
            .fetch_bytes("JSONEachRow")
            .context("querying ClickHouse")?
            .collect()
            .await
            .context("reading the customer's ClickHouse rows")
    })??;
    let source = format!("clickhouse:{}.conversions", ch.database);
    let mut rows = Vec::new();
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Value::Object(obj) = serde_json::from_slice(line).context("a ClickHouse row")? else {
            continue;
        };
        rows.push(with_source(obj, "conversions", source.clone()));
    }
    Ok(rows)
}
