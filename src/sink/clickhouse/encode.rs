//! RowBinary rows of the two data tables, borrowed from the daemon's rows.
//!
//! Types are the same on every server version (Decimal(18, 6) travels as `i64` micro-units,
//! DateTime as `u32` seconds, millisecond times as `i64`), so one encoding serves 18.16 and
//! current servers alike. The column lists here are what `migrations.rs` checks the server's
//! tables against before anything is written.

use clickhouse::Row;
use serde::Serialize;

use crate::rows::{ConversionRow, Measures, Names, StatsRow, Unit, for_each_measure};

/// Columns of `attribution_stats_minute` before the measures.
const STATS_KEY_COLUMNS: [(&str, &str); 7] = [
    ("batch_id", "String"),
    ("minute", "DateTime"),
    ("tenant_id", "String"),
    ("offer_id", "String"),
    ("affiliate_id", "String"),
    ("country", "String"),
    ("currency", "String"),
];

/// The ClickHouse type of a measure column.
const fn measure_type(unit: Unit) -> &'static str {
    match unit {
        Unit::Count => "Int64",
        Unit::Money => "Decimal(18, 6)",
    }
}

/// Columns of `attribution_stats_minute` attribd writes, with their ClickHouse types: the key
/// columns, then the measures (`rows::Measures::COLUMNS`).
pub const STATS_COLUMNS: [(&str, &str); STATS_KEY_COLUMNS.len() + Measures::COUNT] = {
    let mut cols = [("", ""); STATS_KEY_COLUMNS.len() + Measures::COUNT];
    let mut i = 0;
    while i < STATS_KEY_COLUMNS.len() {
        cols[i] = STATS_KEY_COLUMNS[i];
        i += 1;
    }
    let mut m = 0;
    while m < Measures::COUNT {
        cols[i + m] = (Measures::COLUMNS[m], measure_type(Measures::UNITS[m]));
        m += 1;
    }
    cols
};

/// Columns of `conversions` attribd writes, with their ClickHouse types.
pub const CONVERSION_COLUMNS: [(&str, &str); 34] = [
    ("batch_id", "String"),
    ("tenant_id", "String"),
    ("external_id", "String"),
    ("version", "UInt32"),
    ("status", "String"),
    ("previous_status", "Nullable(String)"),
    ("click_id", "String"),
    ("ts_ms", "Int64"),
    ("amount", "Decimal(18, 6)"),
    ("currency", "String"),
    ("product_id", "Nullable(String)"),
    ("order_id", "Nullable(String)"),
    ("customer_id", "Nullable(String)"),
    ("metadata", "Nullable(String)"),
    ("attributed", "UInt8"),
    ("reason", "Nullable(String)"),
    ("offer_id", "String"),
    ("affiliate_id", "String"),
    ("country", "String"),
    ("device", "Nullable(String)"),
    ("sub1", "Nullable(String)"),
    ("sub2", "Nullable(String)"),
    ("sub3", "Nullable(String)"),
    ("sub4", "Nullable(String)"),
    ("sub5", "Nullable(String)"),
    ("click_ts_ms", "Nullable(Int64)"),
    ("seconds_to_convert", "Nullable(Int64)"),
    ("amount_reporting", "Nullable(Decimal(18, 6))"),
    ("fx_rate", "Nullable(Decimal(18, 10))"),
    ("fx_stale", "Nullable(UInt8)"),
    ("fx_missing", "Nullable(UInt8)"),
    ("payout", "Nullable(Decimal(18, 6))"),
    ("profit", "Nullable(Decimal(18, 6))"),
    ("fraud_flags", "Array(String)"),
];

/// Defines a row of an aggregate table: the batch id, the time column `$time` (seconds), the
/// dimensions, then one field per measure named after its column (`rows::for_each_measure`),
/// so the derived `Row` lists the columns of [`STATS_COLUMNS`] (with `$time` first).
macro_rules! aggregate_ingest {
    ($name:ident, $time:ident, $doc:literal; $($field:ident => $column:ident,)*) => {
        #[doc = $doc]
        #[derive(Debug, Row, Serialize)]
        pub struct $name<'a> {
            pub batch_id: &'a str,
            pub $time: u32,
            pub tenant_id: &'a str,
            pub offer_id: &'a str,
            pub affiliate_id: &'a str,
            pub country: &'a str,
            pub currency: &'a str,
            $(pub $column: i64,)*
        }

        impl<'a> $name<'a> {
            /// The row `r`, its dimensions named by `names`.
            pub fn new(batch_id: &'a str, r: &StatsRow, names: &'a Names) -> $name<'a> {
                let m = &r.measures;
                let [tenant_id, offer_id, affiliate_id, country, currency] = names.dims(&r.dims);
                $name {
                    batch_id,
                    $time: (r.minute_ms.div_euclid(1000)).clamp(0, u32::MAX as i64) as u32,
                    tenant_id,
                    offer_id,
                    affiliate_id,
                    country,
                    currency,
                    $($column: m.$field,)*
                }
            }
        }
    };
}

/// [`StatsIngest`] (`attribution_stats_minute`) and [`ClickHourIngest`]
/// (`attribution_stats_click_hour`), one field per measure.
macro_rules! stats_ingest {
    ($($(#[$doc:meta])* $field:ident => $column:ident: $unit:ident,)*) => {
        aggregate_ingest!(StatsIngest, minute,
            "One row of `attribution_stats_minute`; money travels as `i64` micro-units.";
            $($field => $column,)*);
        aggregate_ingest!(ClickHourIngest, click_hour,
            "One row of `attribution_stats_click_hour` (keyed by the click's hour).";
            $($field => $column,)*);
    };
}
for_each_measure!(stats_ingest);

/// Columns of `attribution_stats_click_hour`: those of the minute table with `click_hour`
/// for `minute`.
pub const CLICK_HOUR_COLUMNS: [(&str, &str); STATS_COLUMNS.len()] = {
    let mut cols = STATS_COLUMNS;
    cols[1] = ("click_hour", "DateTime");
    cols
};

#[derive(Debug, Row, Serialize)]
pub struct ConversionIngest<'a> {
    pub batch_id: &'a str,
    pub tenant_id: &'a str,
    pub external_id: &'a str,
    pub version: u32,
    pub status: &'a str,
    pub previous_status: Option<&'a str>,
    pub click_id: &'a str,
    pub ts_ms: i64,
    pub amount: i64,
    pub currency: &'a str,
    pub product_id: Option<&'a str>,
    pub order_id: Option<&'a str>,
    pub customer_id: Option<&'a str>,
    pub metadata: Option<&'a str>,
    pub attributed: u8,
    pub reason: Option<&'a str>,
    pub offer_id: &'a str,
    pub affiliate_id: &'a str,
    pub country: &'a str,
    pub device: Option<&'a str>,
    pub sub1: Option<&'a str>,
    pub sub2: Option<&'a str>,
    pub sub3: Option<&'a str>,
    pub sub4: Option<&'a str>,
    pub sub5: Option<&'a str>,
    pub click_ts_ms: Option<i64>,
    pub seconds_to_convert: Option<i64>,
    pub amount_reporting: Option<i64>,
    pub fx_rate: Option<i64>,
    pub fx_stale: Option<u8>,
    pub fx_missing: Option<u8>,
    pub payout: Option<i64>,
    pub profit: Option<i64>,
    pub fraud_flags: Vec<&'static str>,
}

impl<'a> ConversionIngest<'a> {
    pub fn new(batch_id: &'a str, r: &'a ConversionRow) -> ConversionIngest<'a> {
        ConversionIngest {
            batch_id,
            tenant_id: &r.tenant_id,
            external_id: &r.external_id,
            version: r.version,
            status: r.status.as_str(),
            previous_status: r.previous_status.map(|s| s.as_str()),
            click_id: &r.click_id,
            ts_ms: r.ts_ms,
            amount: r.amount_micros,
            currency: &r.currency,
            product_id: r.product_id.as_deref(),
            order_id: r.order_id.as_deref(),
            customer_id: r.customer_id.as_deref(),
            metadata: r.metadata.as_deref(),
            attributed: u8::from(r.attribution.reason().is_none()),
            reason: r.attribution.reason(),
            offer_id: &r.offer_id,
            affiliate_id: &r.affiliate_id,
            country: &r.country,
            device: r.device.as_deref(),
            sub1: r.subs[0].as_deref(),
            sub2: r.subs[1].as_deref(),
            sub3: r.subs[2].as_deref(),
            sub4: r.subs[3].as_deref(),
            sub5: r.subs[4].as_deref(),
            click_ts_ms: r.click_ts_ms,
            seconds_to_convert: r.seconds_to_convert,
            amount_reporting: r.value.and_then(|v| v.amount_reporting),
            fx_rate: r.value.and_then(|v| v.fx_rate),
            fx_stale: r.value.map(|v| u8::from(v.fx_stale)),
            fx_missing: r.value.map(|v| u8::from(v.fx_missing)),
            payout: r.value.and_then(|v| v.payout),
            profit: r.value.and_then(|v| v.profit()),
            fraud_flags: crate::state::fraud::flag_names(r.fraud_flags).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_rows_carry_the_stats_columns_in_order() {
        let names = Names::of(&["t", "o", "a", "US", "EUR"]);
        let r = StatsRow {
            minute_ms: 60_000,
            dims: crate::rows::Dims {
                tenant: 0,
                offer: 1,
                affiliate: 2,
                country: 3,
                currency: 4,
            },
            measures: Measures::from_array(std::array::from_fn(|i| i as i64 + 1)),
        };
        let json = serde_json::to_value(StatsIngest::new("b", &r, &names)).expect("serializes");
        let text = serde_json::to_string(&StatsIngest::new("b", &r, &names)).expect("serializes");
        let mut at = 0;
        for (i, (name, _)) in STATS_COLUMNS.iter().enumerate() {
            let pos = text[at..]
                .find(&format!("\"{name}\":"))
                .unwrap_or_else(|| panic!("{name} missing or out of order in {text}"));
            at += pos;
            if let Some(m) = i.checked_sub(STATS_COLUMNS.len() - Measures::COUNT) {
                assert_eq!(json[name], m as i64 + 1, "{name}");
            }
        }
        assert_eq!(json.as_object().map(|o| o.len()), Some(STATS_COLUMNS.len()));
        assert!(STATS_COLUMNS.contains(&("revenue", "Decimal(18, 6)")));
    }
}
