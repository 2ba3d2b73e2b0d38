//! Output rows: the contract between the state stage and the sinks.
//!
//! The state stage decides *what* is written (accepted clicks, conversion versions, aggregate
//! deltas, dead letters) and sends one [`SinkBatch`] per input batch; sinks decide *how* (Parquet
//! files, ClickHouse inserts, NDJSON dead letters). Aggregate rows name their dimensions by
//! interned id; a batch carries the strings its rows are the first to use ([`NewNames`]),
//! which the sinks keep ([`Names`]) — a batch may carry only those.

use std::sync::Arc;

use crate::event::{ClickBatch, DeadLetter, Status};
pub use crate::state::interner::{Dims, Sym};

/// Why a conversion is or is not attributed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Attribution {
    Attributed = 0,
    UnknownClick = 1,
    OutsideWindow = 2,
}

impl Attribution {
    /// The `reason` column: empty for attributed conversions.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Attribution::Attributed => None,
            Attribution::UnknownClick => Some("unknown_click"),
            Attribution::OutsideWindow => Some("outside_window"),
        }
    }

    pub fn from_bits(v: u64) -> Attribution {
        match v {
            0 => Attribution::Attributed,
            1 => Attribution::UnknownClick,
            _ => Attribution::OutsideWindow,
        }
    }
}

/// Accepted (non-duplicate) clicks of one decoded batch; the rows are read straight out of the
/// batch's arena by the sink.
#[derive(Debug)]
pub struct ClickRows {
    /// Shared: the state stage may hand one batch's clicks over in several parts.
    pub batch: Arc<ClickBatch>,
    /// Indexes into `batch.clicks` of the accepted clicks, with their unique-click flag.
    pub accepted: Vec<(u32, bool)>,
    /// Indexes (ascending, among `accepted`) of clicks of an erased customer: written without
    /// the fields that describe the visitor (`lifecycle::privacy`). Almost always empty.
    pub scrubbed: Vec<u32>,
}

/// One version of a conversion (the first postback, or an applied status change).
#[derive(Debug, Clone, PartialEq)]
pub struct ConversionRow {
    pub tenant_id: Arc<str>,
    pub external_id: Box<str>,
    pub version: u32,
    pub status: Status,
    /// Status before this version; `None` for version 1.
    pub previous_status: Option<Status>,
    pub click_id: Box<str>,
    /// Conversion time of the first postback.
    pub ts_ms: i64,
    /// Amount of the first postback, micro-units.
    pub amount_micros: i64,
    pub currency: Arc<str>,
    pub product_id: Option<Box<str>>,
    pub order_id: Option<Box<str>>,
    pub customer_id: Option<Box<str>>,
    /// The postback's `metadata` object as JSON text.
    pub metadata: Option<Box<str>>,
    pub attribution: Attribution,
    /// Click dimensions; empty strings when unattributed.
    pub offer_id: Arc<str>,
    pub affiliate_id: Arc<str>,
    pub country: Arc<str>,
    pub device: Option<Arc<str>>,
    pub subs: [Option<Arc<str>>; 5],
    pub click_ts_ms: Option<i64>,
    pub seconds_to_convert: Option<i64>,
    /// Worth in the reporting currency and payout (`[money]`); `None` without `[money]` and
    /// while the conversion waits for its click.
    pub value: Option<crate::money::Valuation>,
    /// Fraud signals (`state::fraud` bits); 0 while the conversion waits for its click.
    pub fraud_flags: u8,
}

impl ConversionRow {
    /// `sub1`, the most used sub-id.
    pub fn sub_1(&self) -> Option<&str> {
        self.subs[0].as_deref()
    }
}

/// What a number counts: a measure's or a counter's unit decides its column type and how it is
/// shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A count: `Int64` columns, a plain number in the summary.
    Count,
    /// An amount in micro-units: `Decimal(18, 6)` columns, shown with two decimals.
    Money,
}

/// The measures of an aggregate bucket, in column order: the one list of them. Each line is
/// `field => column: unit`. [`Measures`] (its fields, [`Measures::add`], the array form the
/// snapshot stores), the `stats_minute` Parquet columns and the ClickHouse row and column list
/// all follow from it; adding a measure is a line here (plus what users and old checkpoints
/// need: a ClickHouse migration adding the column, and a snapshot `FORMAT_VERSION` bump, which
/// `checkpoint::snapshot` refuses to compile without).
///
/// The list is handed to the macro named by the caller (`for_each_measure!(then)` expands to
/// `then! { clicks => clicks: Count, … }`), so code that needs one item per measure — a struct
/// with a field per column — is generated where it belongs.
macro_rules! for_each_measure {
    ($then:ident) => {
        $then! {
            clicks => clicks: Count,
            unique_clicks => unique_clicks: Count,
            duplicate_clicks => duplicate_clicks: Count,
            conversions => conversions: Count,
            approved => approved: Count,
            pending => pending: Count,
            rejected => rejected: Count,
            /// Sum of amounts of conversions whose current status is approved, micro-units.
            revenue_micros => revenue: Money,
            duplicate_conversions => duplicate_conversions: Count,
            unattributed => unattributed: Count,
            /// Sum of `amount_reporting` of approved conversions (no rate missing), micro-units
            /// of the reporting currency.
            revenue_reporting_micros => revenue_reporting: Money,
            /// Payouts of approved conversions plus CPC payouts of clicks, reporting currency.
            payout_micros => payout: Money,
            /// `revenue_reporting − payout`.
            profit_micros => profit: Money,
            /// Conversions with at least one fraud flag (counted once, at the first postback).
            flagged_conversions => flagged_conversions: Count,
        }
    };
}
pub(crate) use for_each_measure;

/// Defines [`Measures`] from the list in `for_each_measure`.
macro_rules! define_measures {
    ($($(#[$doc:meta])* $field:ident => $column:ident: $unit:ident,)*) => {
        /// Signed measures of one aggregate bucket (a delta: rows for the same bucket add up).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct Measures {
            $($(#[$doc])* pub $field: i64,)*
        }

        impl Measures {
            /// How many measures there are.
            pub const COUNT: usize = [$(stringify!($column)),*].len();
            /// Column names (Parquet and ClickHouse), in column order.
            pub const COLUMNS: [&'static str; Self::COUNT] = [$(stringify!($column)),*];
            /// Units, in column order.
            pub const UNITS: [Unit; Self::COUNT] = [$(Unit::$unit),*];

            pub fn add(&mut self, o: &Measures) {
                $(self.$field += o.$field;)*
            }

            /// The measures in column order ([`Self::COLUMNS`]).
            pub fn to_array(&self) -> [i64; Self::COUNT] {
                [$(self.$field),*]
            }

            /// Inverse of [`Self::to_array`].
            pub fn from_array(v: [i64; Self::COUNT]) -> Measures {
                let [$($field),*] = v;
                Measures { $($field),* }
            }
        }
    };
}
for_each_measure!(define_measures);

impl Measures {
    /// Adds `delta` to the counter of `status`.
    pub fn add_status(&mut self, status: Status, delta: i64) {
        match status {
            Status::Approved => self.approved += delta,
            Status::Pending => self.pending += delta,
            Status::Rejected => self.rejected += delta,
        }
    }
}

/// One row of `stats_minute` (or `stats_click_hour`): a bucket's delta.
///
/// The dimensions travel as the state stage's interned ids, not strings: a row is made for
/// nearly every click, and five shared strings per row meant ten atomic reference-count
/// updates on cache lines both threads keep taking from each other (every row names the same
/// tenant). A sink turns the ids into strings with its [`Names`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatsRow {
    pub minute_ms: i64,
    pub dims: Dims,
    pub measures: Measures,
}

/// Strings the state stage interned since its previous batch: ids `first..first + len`.
/// Sent with the batch whose aggregate rows are the first to name them.
#[derive(Debug, Default, Clone)]
pub struct NewNames {
    pub first: u32,
    pub names: Vec<Arc<str>>,
}

impl NewNames {
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// A sink's copy of the state stage's interned strings, learnt from the batches' [`NewNames`]
/// in the order they were sent; resolves the ids of a [`StatsRow`].
#[derive(Debug, Default, Clone)]
pub struct Names(Vec<Arc<str>>);

impl Names {
    /// Takes in a batch's new strings. They continue where the last batch's ended (or repeat
    /// ids already known, as after a restart, whose ids are the same); a gap would be a lost
    /// batch and is refused rather than written under wrong names.
    pub fn learn(&mut self, new: &NewNames) -> anyhow::Result<()> {
        if new.is_empty() {
            return Ok(());
        }
        let first = new.first as usize;
        anyhow::ensure!(
            first <= self.0.len(),
            "internal: the sink knows {} interned strings and was sent strings from id {first}",
            self.0.len()
        );
        // Ids sent again (a restarted state stage) must name what they named before.
        let known = &self.0[first..];
        if let Some(i) = known.iter().zip(&new.names).position(|(a, b)| a != b) {
            anyhow::bail!(
                "internal: interned string {} was {:?} and is now sent as {:?}",
                first + i,
                known[i],
                new.names[i]
            );
        }
        self.0.truncate(first);
        self.0.extend(new.names.iter().cloned());
        Ok(())
    }

    /// Refuses a row naming an id no batch has sent (a bug upstream), rather than writing it
    /// under an empty name.
    pub fn check(&self, r: &StatsRow) -> anyhow::Result<()> {
        let d = &r.dims;
        let most = [d.tenant, d.offer, d.affiliate, d.country, d.currency]
            .into_iter()
            .max()
            .unwrap_or(0);
        anyhow::ensure!(
            (most as usize) < self.0.len(),
            "internal: an aggregate row names interned string {most}, of which the sink knows {}",
            self.0.len()
        );
        Ok(())
    }

    /// Names of a fixed list: id `i` is `strings[i]` (tests and benches that make rows by hand).
    pub fn of(strings: &[&str]) -> Names {
        Names(strings.iter().map(|&s| Arc::from(s)).collect())
    }

    /// The string of `id` (`""` for an id never sent, which [`Names::check`] rules out).
    pub fn get(&self, id: Sym) -> &str {
        debug_assert!((id as usize) < self.0.len(), "unknown interned id {id}");
        self.0.get(id as usize).map_or("", |s| s)
    }

    /// A row's dimensions: tenant, offer, affiliate, country, currency.
    pub fn dims(&self, d: &Dims) -> [&str; 5] {
        [d.tenant, d.offer, d.affiliate, d.country, d.currency].map(|id| self.get(id))
    }
}

/// Everything the state stage produced for one input batch.
#[derive(Debug, Default)]
pub struct SinkBatch {
    pub clicks: Vec<ClickRows>,
    pub conversions: Vec<ConversionRow>,
    pub stats: Vec<StatsRow>,
    /// Deltas of the by-click-hour aggregate (`minute_ms` holds the click's hour).
    pub click_hour: Vec<StatsRow>,
    pub dead_letters: Vec<DeadLetter>,
    /// The interned strings the aggregate rows of this batch are the first to name.
    pub names: NewNames,
}

impl SinkBatch {
    pub fn is_empty(&self) -> bool {
        self.clicks.is_empty()
            && self.conversions.is_empty()
            && self.stats.is_empty()
            && self.click_hour.is_empty()
            && self.dead_letters.is_empty()
            && self.names.is_empty()
    }

    /// Rows of every table in the batch (queue depth accounting).
    pub fn rows(&self) -> usize {
        self.click_rows()
            + self.conversions.len()
            + self.stats.len()
            + self.click_hour.len()
            + self.dead_letters.len()
    }

    pub fn click_rows(&self) -> usize {
        self.clicks.iter().map(|c| c.accepted.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_names(first: u32, names: &[&str]) -> NewNames {
        NewNames {
            first,
            names: names.iter().map(|&s| Arc::from(s)).collect(),
        }
    }

    #[test]
    fn names_are_learnt_in_order_again_after_a_restart_and_never_across_a_gap() {
        let mut names = Names::default();
        names.learn(&new_names(0, &["", "t1"])).unwrap();
        names.learn(&NewNames::default()).unwrap();
        names.learn(&new_names(2, &["o1", "a1"])).unwrap();
        let d = Dims {
            tenant: 1,
            offer: 2,
            affiliate: 3,
            country: 0,
            currency: 0,
        };
        assert_eq!(names.dims(&d), ["t1", "o1", "a1", "", ""]);
        // A restarted state stage sends everything again from id 0: same ids, same strings.
        names
            .learn(&new_names(0, &["", "t1", "o1", "a1", "US"]))
            .unwrap();
        assert_eq!(names.get(4), "US");
        // Strings from id 7 when 5 are known: a batch went missing; refused, nothing learnt.
        let gap = names.learn(&new_names(7, &["x"])).unwrap_err();
        assert!(gap.to_string().contains("from id 7"), "{gap}");
        assert_eq!(names.dims(&d), ["t1", "o1", "a1", "", ""]);
        // An id sent again under another string: refused, nothing learnt.
        let changed = names.learn(&new_names(1, &["t1", "o2"])).unwrap_err();
        assert!(changed.to_string().contains("string 2"), "{changed}");
        assert_eq!(names.get(2), "o1");
        // A row naming an id never sent is refused before it is written.
        let row = |offer| StatsRow {
            minute_ms: 0,
            dims: Dims { offer, ..d },
            measures: Measures::default(),
        };
        names.check(&row(4)).unwrap();
        assert!(names.check(&row(5)).is_err());
    }
}
