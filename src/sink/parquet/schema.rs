//! Arrow schemas and row builders of the three Parquet tables: `clicks`, `conversions`,
//! `stats_minute`. Column names match the ClickHouse tables so the same queries work on both.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, BooleanBuilder, Decimal128Builder, Int64Builder, ListBuilder, RecordBatch,
    StringBuilder, TimestampMillisecondBuilder, UInt32Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;

use crate::event::ClickBatch;
use crate::rows::{ConversionRow, Measures, Names, StatsRow, Unit, for_each_measure};

/// Money columns: `Decimal(18, 6)`, exact sums.
pub const MONEY: DataType = DataType::Decimal128(18, 6);
/// FX rates: `Decimal(18, 10)` (`money::decimal::RATE_DECIMALS`).
pub const RATE: DataType = DataType::Decimal128(18, crate::money::decimal::RATE_DECIMALS as i8);

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn text(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

pub static CLICKS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        text("click_id", false),
        Field::new("ts", ts(), false),
        text("tenant_id", false),
        text("offer_id", false),
        text("affiliate_id", false),
        text("country", true),
        text("device", true),
        text("os", true),
        text("ip", true),
        text("user_agent", true),
        text("referrer", true),
        text("sub1", true),
        text("sub2", true),
        text("sub3", true),
        text("sub4", true),
        text("sub5", true),
        Field::new("is_unique", DataType::Boolean, false),
    ]))
});

pub static CONVERSIONS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        text("tenant_id", false),
        text("external_id", false),
        Field::new("version", DataType::UInt32, false),
        text("status", false),
        text("previous_status", true),
        text("click_id", false),
        Field::new("ts", ts(), false),
        Field::new("amount", MONEY, false),
        text("currency", false),
        text("product_id", true),
        text("order_id", true),
        text("customer_id", true),
        text("metadata", true),
        Field::new("attributed", DataType::Boolean, false),
        text("reason", true),
        text("offer_id", false),
        text("affiliate_id", false),
        text("country", false),
        text("device", true),
        text("sub1", true),
        text("sub2", true),
        text("sub3", true),
        text("sub4", true),
        text("sub5", true),
        Field::new("click_ts", ts(), true),
        Field::new("seconds_to_convert", DataType::Int64, true),
        // Reporting currency (`[money]`); null when the pipeline has no [money].
        Field::new("amount_reporting", MONEY, true),
        Field::new("fx_rate", RATE, true),
        Field::new("fx_stale", DataType::Boolean, true),
        Field::new("fx_missing", DataType::Boolean, true),
        Field::new("payout", MONEY, true),
        Field::new("profit", MONEY, true),
        // Fraud signals (`state::fraud`): a list of flag names, empty when none.
        Field::new("fraud_flags", flag_list(), false),
    ]))
});

/// `fraud_flags`: a list of strings (the item field as Arrow's list builder makes it).
fn flag_list() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

/// The measures, in column order (also used by the ClickHouse sink and the tests).
pub const MEASURES: [&str; Measures::COUNT] = Measures::COLUMNS;

/// `columns`, then every measure: `N` is `columns.len() + Measures::COUNT` (the column lists
/// of the aggregates below).
const fn then_measures<const N: usize>(columns: &[&'static str]) -> [&'static str; N] {
    assert!(N == columns.len() + Measures::COUNT);
    let mut all = [""; N];
    let mut i = 0;
    while i < N {
        all[i] = if i < columns.len() {
            columns[i]
        } else {
            MEASURES[i - columns.len()]
        };
        i += 1;
    }
    all
}

/// The columns of an aggregate written as deltas ([`RowBuilder::DELTA_COLUMNS`]): its time
/// column (`minute` or `click_hour`, rising in steps within a file) and the measures.
const STATS_DELTA_COLUMNS: [&str; Measures::COUNT + 1] = then_measures(&["minute"]);
const CLICK_HOUR_DELTA_COLUMNS: [&str; Measures::COUNT + 1] = then_measures(&["click_hour"]);

/// The Parquet type of a measure column.
fn measure_type(unit: Unit) -> DataType {
    match unit {
        Unit::Count => DataType::Int64,
        Unit::Money => MONEY,
    }
}

pub static STATS: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = vec![
        Field::new("minute", ts(), false),
        text("tenant_id", false),
        text("offer_id", false),
        text("affiliate_id", false),
        text("country", false),
        text("currency", false),
    ];
    for (m, unit) in MEASURES.into_iter().zip(Measures::UNITS) {
        fields.push(Field::new(m, measure_type(unit), false));
    }
    Arc::new(Schema::new(fields))
});

/// `stats_click_hour`: the columns of `stats_minute`, keyed by the hour of the click the
/// conversions were attributed to (`click_hour`) instead of the minute they happened in.
pub static CLICK_HOUR: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields: Vec<Field> = STATS.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields[0] = Field::new("click_hour", ts(), false);
    Arc::new(Schema::new(fields))
});

/// Column builders of one table; rows are appended until the batch is finished.
pub trait RowBuilder: Send {
    /// Columns whose values are (nearly) unique per row: written without a dictionary.
    const UNIQUE_COLUMNS: &'static [&'static str];
    /// Columns nobody prunes row groups by: written without min/max statistics.
    const UNFILTERED_COLUMNS: &'static [&'static str];
    /// Integer columns written as deltas (`DELTA_BINARY_PACKED`) without a dictionary: event
    /// times, which mostly rise row by row, and the aggregates' measures, mostly 0 or small —
    /// a few bits a value either way, with no per-value dictionary lookup (the `parquet` crate
    /// hashes every value of a dictionary column: a seventh of the aggregate sink's work).
    const DELTA_COLUMNS: &'static [&'static str] = &[];
    fn new() -> Self;
    fn schema() -> SchemaRef;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn finish(&mut self) -> Result<RecordBatch, ArrowError>;
}

fn decimal() -> Decimal128Builder {
    // 18/6 are valid for Decimal128, so this cannot fail; fall back to the default otherwise.
    Decimal128Builder::new()
        .with_precision_and_scale(18, 6)
        .unwrap_or_default()
}

fn rate_decimal() -> Decimal128Builder {
    Decimal128Builder::new()
        .with_precision_and_scale(18, crate::money::decimal::RATE_DECIMALS as i8)
        .unwrap_or_default()
}

fn utc_ts() -> TimestampMillisecondBuilder {
    TimestampMillisecondBuilder::new().with_timezone("UTC")
}

pub struct ClickBuilders {
    rows: usize,
    click_id: StringBuilder,
    ts: TimestampMillisecondBuilder,
    tenant_id: StringBuilder,
    offer_id: StringBuilder,
    affiliate_id: StringBuilder,
    optional: [StringBuilder; 11],
    is_unique: BooleanBuilder,
}

impl ClickBuilders {
    /// Appends click `index` of `batch`; `scrubbed`: without the fields that describe the
    /// visitor (ip, user agent, referrer, subs), for a click of an erased customer.
    pub fn append(&mut self, batch: &ClickBatch, index: u32, unique: bool, scrubbed: bool) {
        let c = &batch.clicks[index as usize];
        let a = &batch.arena;
        self.rows += 1;
        self.click_id.append_value(a.get(c.click_id));
        self.ts.append_value(c.ts_ms);
        self.tenant_id.append_value(a.get(c.tenant_id));
        self.offer_id.append_value(a.get(c.offer_id));
        self.affiliate_id.append_value(a.get(c.affiliate_id));
        let optional = [
            c.country,
            c.device,
            c.os,
            c.ip,
            c.user_agent,
            c.referrer,
            c.subs[0],
            c.subs[1],
            c.subs[2],
            c.subs[3],
            c.subs[4],
        ];
        // country, device and os describe the traffic, the rest the visitor.
        for (i, (b, s)) in self.optional.iter_mut().zip(optional).enumerate() {
            if scrubbed && i >= 3 {
                b.append_null();
            } else {
                b.append_option(a.get_opt(s));
            }
        }
        self.is_unique.append_value(unique);
    }
}

impl RowBuilder for ClickBuilders {
    const UNIQUE_COLUMNS: &'static [&'static str] = &["click_id", "ip"];
    const DELTA_COLUMNS: &'static [&'static str] = &["ts"];
    // Of the dimensions only the tenant keeps min/max statistics: an hour's file holds most
    // offers, affiliates and countries, so their ranges skip nothing, and computing them was
    // 3 % of a run's CPU (every value compared twice).
    const UNFILTERED_COLUMNS: &'static [&'static str] = &[
        "click_id",
        "offer_id",
        "affiliate_id",
        "country",
        "device",
        "os",
        "ip",
        "user_agent",
        "referrer",
        "sub1",
        "sub2",
        "sub3",
        "sub4",
        "sub5",
    ];
    fn new() -> Self {
        ClickBuilders {
            rows: 0,
            click_id: StringBuilder::new(),
            ts: utc_ts(),
            tenant_id: StringBuilder::new(),
            offer_id: StringBuilder::new(),
            affiliate_id: StringBuilder::new(),
            optional: std::array::from_fn(|_| StringBuilder::new()),
            is_unique: BooleanBuilder::new(),
        }
    }
    fn schema() -> SchemaRef {
        CLICKS.clone()
    }
    fn len(&self) -> usize {
        self.rows
    }
    fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        self.rows = 0;
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.click_id.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.tenant_id.finish()),
            Arc::new(self.offer_id.finish()),
            Arc::new(self.affiliate_id.finish()),
        ];
        for b in &mut self.optional {
            cols.push(Arc::new(b.finish()));
        }
        cols.push(Arc::new(self.is_unique.finish()));
        RecordBatch::try_new(CLICKS.clone(), cols)
    }
}

pub struct ConversionBuilders {
    rows: usize,
    tenant_id: StringBuilder,
    external_id: StringBuilder,
    version: UInt32Builder,
    status: StringBuilder,
    previous_status: StringBuilder,
    click_id: StringBuilder,
    ts: TimestampMillisecondBuilder,
    amount: Decimal128Builder,
    currency: StringBuilder,
    product_id: StringBuilder,
    order_id: StringBuilder,
    customer_id: StringBuilder,
    metadata: StringBuilder,
    attributed: BooleanBuilder,
    reason: StringBuilder,
    offer_id: StringBuilder,
    affiliate_id: StringBuilder,
    country: StringBuilder,
    device: StringBuilder,
    subs: [StringBuilder; 5],
    click_ts: TimestampMillisecondBuilder,
    seconds_to_convert: Int64Builder,
    amount_reporting: Decimal128Builder,
    fx_rate: Decimal128Builder,
    fx_stale: BooleanBuilder,
    fx_missing: BooleanBuilder,
    payout: Decimal128Builder,
    profit: Decimal128Builder,
    fraud_flags: ListBuilder<StringBuilder>,
}

impl ConversionBuilders {
    pub fn append(&mut self, r: &ConversionRow) {
        self.rows += 1;
        self.tenant_id.append_value(&r.tenant_id);
        self.external_id.append_value(&r.external_id);
        self.version.append_value(r.version);
        self.status.append_value(r.status.as_str());
        self.previous_status
            .append_option(r.previous_status.map(|s| s.as_str()));
        self.click_id.append_value(&r.click_id);
        self.ts.append_value(r.ts_ms);
        self.amount.append_value(r.amount_micros as i128);
        self.currency.append_value(&r.currency);
        self.product_id.append_option(r.product_id.as_deref());
        self.order_id.append_option(r.order_id.as_deref());
        self.customer_id.append_option(r.customer_id.as_deref());
        self.metadata.append_option(r.metadata.as_deref());
        self.attributed
            .append_value(r.attribution.reason().is_none());
        self.reason.append_option(r.attribution.reason());
        self.offer_id.append_value(&r.offer_id);
        self.affiliate_id.append_value(&r.affiliate_id);
        self.country.append_value(&r.country);
        self.device.append_option(r.device.as_deref());
        for (b, s) in self.subs.iter_mut().zip(&r.subs) {
            b.append_option(s.as_deref());
        }
        self.click_ts.append_option(r.click_ts_ms);
        self.seconds_to_convert.append_option(r.seconds_to_convert);
        let v = r.value.as_ref();
        let money = |x: Option<i64>| x.map(i128::from);
        self.amount_reporting
            .append_option(money(v.and_then(|v| v.amount_reporting)));
        self.fx_rate.append_option(money(v.and_then(|v| v.fx_rate)));
        self.fx_stale.append_option(v.map(|v| v.fx_stale));
        self.fx_missing.append_option(v.map(|v| v.fx_missing));
        self.payout.append_option(money(v.and_then(|v| v.payout)));
        self.profit.append_option(money(v.and_then(|v| v.profit())));
        for name in crate::state::fraud::flag_names(r.fraud_flags) {
            self.fraud_flags.values().append_value(name);
        }
        self.fraud_flags.append(true);
    }
}

impl RowBuilder for ConversionBuilders {
    const UNIQUE_COLUMNS: &'static [&'static str] = &[
        "external_id",
        "click_id",
        "order_id",
        "customer_id",
        "metadata",
    ];
    const UNFILTERED_COLUMNS: &'static [&'static str] = &[
        "click_id",
        "product_id",
        "order_id",
        "customer_id",
        "metadata",
        "device",
        "sub1",
        "sub2",
        "sub3",
        "sub4",
        "sub5",
    ];
    fn new() -> Self {
        ConversionBuilders {
            rows: 0,
            tenant_id: StringBuilder::new(),
            external_id: StringBuilder::new(),
            version: UInt32Builder::new(),
            status: StringBuilder::new(),
            previous_status: StringBuilder::new(),
            click_id: StringBuilder::new(),
            ts: utc_ts(),
            amount: decimal(),
            currency: StringBuilder::new(),
            product_id: StringBuilder::new(),
            order_id: StringBuilder::new(),
            customer_id: StringBuilder::new(),
            metadata: StringBuilder::new(),
            attributed: BooleanBuilder::new(),
            reason: StringBuilder::new(),
            offer_id: StringBuilder::new(),
            affiliate_id: StringBuilder::new(),
            country: StringBuilder::new(),
            device: StringBuilder::new(),
            subs: std::array::from_fn(|_| StringBuilder::new()),
            click_ts: utc_ts(),
            seconds_to_convert: Int64Builder::new(),
            amount_reporting: decimal(),
            fx_rate: rate_decimal(),
            fx_stale: BooleanBuilder::new(),
            fx_missing: BooleanBuilder::new(),
            payout: decimal(),
            profit: decimal(),
            fraud_flags: ListBuilder::new(StringBuilder::new()),
        }
    }
    fn schema() -> SchemaRef {
        CONVERSIONS.clone()
    }
    fn len(&self) -> usize {
        self.rows
    }
    fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        self.rows = 0;
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.tenant_id.finish()),
            Arc::new(self.external_id.finish()),
            Arc::new(self.version.finish()),
            Arc::new(self.status.finish()),
            Arc::new(self.previous_status.finish()),
            Arc::new(self.click_id.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.amount.finish()),
            Arc::new(self.currency.finish()),
            Arc::new(self.product_id.finish()),
            Arc::new(self.order_id.finish()),
            Arc::new(self.customer_id.finish()),
            Arc::new(self.metadata.finish()),
            Arc::new(self.attributed.finish()),
            Arc::new(self.reason.finish()),
            Arc::new(self.offer_id.finish()),
            Arc::new(self.affiliate_id.finish()),
            Arc::new(self.country.finish()),
            Arc::new(self.device.finish()),
        ];
        for b in &mut self.subs {
            cols.push(Arc::new(b.finish()));
        }
        cols.push(Arc::new(self.click_ts.finish()));
        cols.push(Arc::new(self.seconds_to_convert.finish()));
        cols.push(Arc::new(self.amount_reporting.finish()));
        cols.push(Arc::new(self.fx_rate.finish()));
        cols.push(Arc::new(self.fx_stale.finish()));
        cols.push(Arc::new(self.fx_missing.finish()));
        cols.push(Arc::new(self.payout.finish()));
        cols.push(Arc::new(self.profit.finish()));
        cols.push(Arc::new(self.fraud_flags.finish()));
        RecordBatch::try_new(CONVERSIONS.clone(), cols)
    }
}

/// The Arrow builder of a measure column of unit `Count` or `Money`.
macro_rules! measure_builder {
    (Count) => {
        Int64Builder
    };
    (Money) => {
        Decimal128Builder
    };
}

/// A measure column's builder: a micro-unit `i64` in, the column's value appended.
trait MeasureBuilder {
    fn new() -> Self;
    fn push(&mut self, v: i64);
}

impl MeasureBuilder for Int64Builder {
    fn new() -> Self {
        Int64Builder::new()
    }
    #[inline]
    fn push(&mut self, v: i64) {
        self.append_value(v);
    }
}

impl MeasureBuilder for Decimal128Builder {
    fn new() -> Self {
        decimal()
    }
    #[inline]
    fn push(&mut self, v: i64) {
        self.append_value(v as i128);
    }
}

/// The columns of an aggregate written without min/max statistics: the dimensions but the
/// tenant (an hour's file holds most offers, affiliates, countries and currencies, so their
/// ranges skip nothing) and the measures (nobody filters by a count). The time column and
/// the tenant keep theirs.
const AGGREGATE_UNFILTERED_COLUMNS: [&str; Measures::COUNT + 4] =
    then_measures(&["offer_id", "affiliate_id", "country", "currency"]);

/// Defines [`StatsBuilders`]: the key columns, then a builder per measure
/// (`rows::for_each_measure`), each typed by its unit so appending is as direct as if written out.
macro_rules! stats_builders {
    ($($(#[$doc:meta])* $field:ident => $column:ident: $unit:ident,)*) => {
        pub struct StatsBuilders {
            rows: usize,
            minute: TimestampMillisecondBuilder,
            dims: [StringBuilder; 5],
            $($column: measure_builder!($unit),)*
        }

        impl StatsBuilders {
            /// Appends `r`, its dimensions named by `names`.
            pub fn append(&mut self, r: &StatsRow, names: &Names) {
                self.rows += 1;
                self.minute.append_value(r.minute_ms);
                for (b, d) in self.dims.iter_mut().zip(names.dims(&r.dims)) {
                    b.append_value(d);
                }
                $(self.$column.push(r.measures.$field);)*
            }
        }

        impl RowBuilder for StatsBuilders {
            const UNIQUE_COLUMNS: &'static [&'static str] = &[];
            const UNFILTERED_COLUMNS: &'static [&'static str] = &AGGREGATE_UNFILTERED_COLUMNS;
            const DELTA_COLUMNS: &'static [&'static str] = &STATS_DELTA_COLUMNS;
            fn new() -> Self {
                StatsBuilders {
                    rows: 0,
                    minute: utc_ts(),
                    dims: std::array::from_fn(|_| StringBuilder::new()),
                    $($column: MeasureBuilder::new(),)*
                }
            }
            fn schema() -> SchemaRef {
                STATS.clone()
            }
            fn len(&self) -> usize {
                self.rows
            }
            fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
                self.rows = 0;
                let mut cols: Vec<ArrayRef> = vec![Arc::new(self.minute.finish())];
                for b in &mut self.dims {
                    cols.push(Arc::new(b.finish()));
                }
                $(cols.push(Arc::new(self.$column.finish()));)*
                RecordBatch::try_new(STATS.clone(), cols)
            }
        }
    };
}
for_each_measure!(stats_builders);

/// The builders of `stats_click_hour`: those of `stats_minute` under the [`CLICK_HOUR`] schema.
pub struct ClickHourBuilders(StatsBuilders);

impl ClickHourBuilders {
    pub fn append(&mut self, r: &StatsRow, names: &Names) {
        self.0.append(r, names);
    }
}

impl RowBuilder for ClickHourBuilders {
    const UNIQUE_COLUMNS: &'static [&'static str] = &[];
    const UNFILTERED_COLUMNS: &'static [&'static str] = &AGGREGATE_UNFILTERED_COLUMNS;
    const DELTA_COLUMNS: &'static [&'static str] = &CLICK_HOUR_DELTA_COLUMNS;
    fn new() -> Self {
        ClickHourBuilders(StatsBuilders::new())
    }
    fn schema() -> SchemaRef {
        CLICK_HOUR.clone()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let b = self.0.finish()?;
        RecordBatch::try_new(CLICK_HOUR.clone(), b.columns().to_vec())
    }
}
