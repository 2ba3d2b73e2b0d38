//! The run's counters, listed once.
//!
//! Each line of the `counters!` table below defines a counter: its field in [`Counters`] (where
//! the engine increments it directly), its row in the end-of-run summary (`report`), the metric
//! `telemetry` mirrors it into, and its slot in the checkpoint ([`Counters::values`], in table
//! order). Everything that lists counters iterates [`Counters::INFO`] instead of naming them.

use std::collections::BTreeMap;

use crate::event::Status;
use crate::rows::Unit;

/// A metric family several counters share, one series each (`label="value"`).
#[derive(Debug)]
pub struct MetricFamily {
    /// `attribd_<name>` (plus `_total` for a counter).
    pub name: &'static str,
    pub help: &'static str,
    /// The label that tells the family's series apart.
    pub label: &'static str,
}

/// Where a counter shows in `/metrics`. Its kind follows from the counter: an unsigned count is a
/// Prometheus counter, a signed count a gauge, money a gauge in units (micro-units / 10⁶).
#[derive(Debug, Clone, Copy)]
pub enum Metric {
    /// A metric of its own, `attribd_<name>`.
    Own {
        name: &'static str,
        help: &'static str,
    },
    /// One series of a family.
    Series {
        family: &'static MetricFamily,
        value: &'static str,
    },
}

const fn own(name: &'static str, help: &'static str) -> Metric {
    Metric::Own { name, help }
}

const fn series(family: &'static MetricFamily, value: &'static str) -> Metric {
    Metric::Series { family, value }
}

const EVENTS_IN: MetricFamily = MetricFamily {
    name: "events_in",
    help: "Input records read, valid or not, by stream",
    label: "stream",
};

const BY_STATUS: MetricFamily = MetricFamily {
    name: "conversions_by_status",
    help: "Accepted conversions by their current status (a status change moves one between statuses)",
    label: "status",
};

const UNATTRIBUTED: MetricFamily = MetricFamily {
    name: "conversions_unattributed",
    help: "Accepted conversions not attributed to a click, by reason",
    label: "reason",
};

const FRAUD_FLAGS: MetricFamily = MetricFamily {
    name: "flagged_conversions_by_flag",
    help: "Accepted conversions carrying each fraud flag (a conversion may carry several)",
    label: "flag",
};

/// One counter, as the table describes it.
#[derive(Debug, Clone, Copy)]
pub struct CounterInfo {
    /// The field (and the key in the JSON summary).
    pub name: &'static str,
    pub unit: Unit,
    /// Unsigned: the value never goes down.
    pub only_grows: bool,
    /// The row label in the end-of-run summary (indented under the row it details).
    pub summary: &'static str,
    pub metric: Metric,
}

/// The value types a counter can have. Both travel as `i64` ([`Counters::values`]); an unsigned
/// counter round-trips through it unchanged.
pub trait CounterValue: Copy {
    const ONLY_GROWS: bool;
    fn to_i64(self) -> i64;
    fn from_i64(v: i64) -> Self;
}

impl CounterValue for u64 {
    const ONLY_GROWS: bool = true;
    fn to_i64(self) -> i64 {
        self as i64
    }
    fn from_i64(v: i64) -> u64 {
        v as u64
    }
}

impl CounterValue for i64 {
    const ONLY_GROWS: bool = false;
    fn to_i64(self) -> i64 {
        self
    }
    fn from_i64(v: i64) -> i64 {
        v
    }
}

/// Defines [`Counters`] and its table from lines of `field: type, unit, summary row, metric;`.
macro_rules! counters {
    ($($(#[$doc:meta])* $field:ident: $ty:ident, $unit:ident, $summary:literal, $metric:expr;)*) => {
        /// Run totals, printed as the summary table and mirrored as metrics.
        #[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
        pub struct Counters {
            $($(#[$doc])* pub $field: $ty,)*
            pub dead_letters: BTreeMap<&'static str, u64>,
        }

        impl Counters {
            /// How many counters the table has (dead letters, counted by reason, aside).
            pub const COUNT: usize = [$(stringify!($field)),*].len();

            /// The counters in table order.
            pub const INFO: [CounterInfo; Self::COUNT] = [$(CounterInfo {
                name: stringify!($field),
                unit: Unit::$unit,
                only_grows: <$ty as CounterValue>::ONLY_GROWS,
                summary: $summary,
                metric: $metric,
            }),*];

            /// The values in table order ([`Self::INFO`]): the checkpoint form.
            pub fn values(&self) -> [i64; Self::COUNT] {
                [$(self.$field.to_i64()),*]
            }

            /// Inverse of [`Self::values`]. A missing value (a snapshot older than the counter)
            /// is 0.
            pub fn set_values(&mut self, values: impl IntoIterator<Item = i64>) {
                let mut v = values.into_iter();
                $(self.$field = CounterValue::from_i64(v.next().unwrap_or(0));)*
            }
        }
    };
}

// New counters go at the end: checkpoints store the values in this order.
counters! {
    click_records: u64, Count, "  click records", series(&EVENTS_IN, "clicks");
    conversion_records: u64, Count, "  conversion records", series(&EVENTS_IN, "conversions");
    clicks: u64, Count, "clicks accepted",
        own("clicks", "Valid clicks accepted (duplicates excluded)");
    unique_clicks: u64, Count, "  unique clicks",
        own("unique_clicks", "Accepted clicks that were the first of their visitor (ip, offer) that UTC day");
    duplicate_clicks: u64, Count, "  duplicate clicks",
        own("duplicate_clicks", "Clicks dropped because their click_id was already indexed");
    /// Accepted first postbacks.
    conversions: u64, Count, "conversions accepted",
        own("conversions", "Accepted conversions (first postback of each external_id)");
    /// Current status of accepted conversions (after changes).
    approved: i64, Count, "  approved (current)", series(&BY_STATUS, "approved");
    pending: i64, Count, "  pending (current)", series(&BY_STATUS, "pending");
    rejected: i64, Count, "  rejected (current)", series(&BY_STATUS, "rejected");
    revenue_micros: i64, Money, "revenue (approved)",
        own("approved_revenue", "Sum of amounts of conversions currently approved (mixed currencies; a trend, not money)");
    status_changes: u64, Count, "  status changes applied",
        own("conversion_status_changes", "Postbacks that changed the status of a known conversion");
    duplicate_conversions: u64, Count, "  duplicate postbacks",
        own("duplicate_conversions", "Postbacks dropped as duplicates of a known conversion (same external_id, same status)");
    refused_changes: u64, Count, "  refused status changes",
        own("refused_status_changes", "Postbacks refused because the status change is not allowed");
    attributed: u64, Count, "  attributed",
        own("conversions_attributed", "Accepted conversions attributed to their click");
    unknown_click: u64, Count, "  unattributed: unknown_click", series(&UNATTRIBUTED, "unknown_click");
    outside_window: u64, Count, "  unattributed: outside_window", series(&UNATTRIBUTED, "outside_window");
    /// Reporting currency (`[money]`): approved conversions' `amount_reporting`.
    revenue_reporting_micros: i64, Money, "revenue (approved, reporting currency)",
        own("approved_revenue_reporting", "Sum of amount_reporting of conversions currently approved, in the reporting currency");
    payout_micros: i64, Money, "payout (approved conversions + CPC clicks)",
        own("payout", "Payouts of conversions currently approved plus CPC payouts of accepted clicks, in the reporting currency");
    profit_micros: i64, Money, "profit",
        own("profit", "Reporting-currency revenue of approved conversions less payouts");
    fx_stale: u64, Count, "  valued at a stale FX rate",
        own("fx_stale_rates", "Conversions valued at the newest earlier FX rate because their UTC day had none");
    fx_missing: u64, Count, "  left out: no FX rate",
        own("fx_missing_rates", "Conversions and CPC click payouts left out of reporting-currency measures because a currency had no FX rate");
    without_payout_rule: u64, Count, "  attributed without a payout rule",
        own("conversions_without_payout_rule", "Attributed conversions whose offer has no payout rule in effect (payout 0)");
    /// Fraud signals ([fraud]).
    flagged_conversions: u64, Count, "conversions flagged (fraud signals)",
        own("flagged_conversions", "Accepted conversions with at least one fraud flag");
    flag_too_fast: u64, Count, "  too_fast", series(&FRAUD_FLAGS, "too_fast");
    flag_ip_burst: u64, Count, "  ip_burst", series(&FRAUD_FLAGS, "ip_burst");
    flag_flagged_ip: u64, Count, "  flagged_ip", series(&FRAUD_FLAGS, "flagged_ip");
    flag_outside_window: u64, Count, "  outside_window", series(&FRAUD_FLAGS, "outside_window");
    ip_burst_clicks: u64, Count, "clicks past an IP's per-minute limit",
        own("ip_burst_clicks", "Accepted clicks beyond [fraud] max_clicks_per_ip_per_minute of their IP and offer in their minute");
}

impl Counters {
    pub fn events_in(&self) -> u64 {
        self.click_records + self.conversion_records
    }

    pub fn dead_letter_total(&self) -> u64 {
        self.dead_letters.values().sum()
    }

    pub(super) fn status(&mut self, s: Status, delta: i64) {
        match s {
            Status::Approved => self.approved += delta,
            Status::Pending => self.pending += delta,
            Status::Rejected => self.rejected += delta,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpointed_counters_keep_their_slots() {
        // Checkpoints written before a counter was added must restore into the same fields.
        let slots = [
            "click_records",
            "conversion_records",
            "clicks",
            "unique_clicks",
            "duplicate_clicks",
            "conversions",
            "approved",
            "pending",
            "rejected",
            "revenue_micros",
            "status_changes",
            "duplicate_conversions",
            "refused_changes",
            "attributed",
            "unknown_click",
            "outside_window",
        ];
        let names: Vec<&str> = Counters::INFO.iter().map(|i| i.name).collect();
        assert_eq!(names[..slots.len()], slots);
    }

    #[test]
    fn values_round_trip_and_missing_ones_are_zero() {
        let c = Counters {
            clicks: 7,
            approved: -2,
            revenue_micros: 1_500_000,
            outside_window: u64::MAX,
            ..Counters::default()
        };
        let mut back = Counters::default();
        back.set_values(c.values());
        assert_eq!(back, c);
        back.set_values(c.values().into_iter().take(3));
        assert_eq!((back.clicks, back.approved, back.outside_window), (7, 0, 0));
    }

    #[test]
    fn counters_of_a_family_are_of_one_kind() {
        for a in &Counters::INFO {
            for b in &Counters::INFO {
                if let (Metric::Series { family: fa, .. }, Metric::Series { family: fb, .. }) =
                    (a.metric, b.metric)
                    && fa.name == fb.name
                {
                    assert_eq!(
                        (a.unit, a.only_grows),
                        (b.unit, b.only_grows),
                        "{}",
                        fa.name
                    );
                }
            }
        }
    }
}
