//! Money in the state stage: the [`Engine`] values each conversion in the reporting currency
//! with its payout once it is decided (`attribution.rs`), values its later versions the same
//! way from the code its dedup entry keeps, and pays CPC clicks (`clicks.rs`). The rules
//! themselves are in [`crate::money`]; this file finds the rule of a bucket's dimensions
//! (cached per dimension id) and keeps the counters.

use std::sync::Arc;

use super::Engine;
use super::dedup::ConvEntry;
use crate::money::payouts::Timeline;
use crate::money::{Money, Valuation};
use crate::rows::Measures;

/// What the engine knows of money: the loaded rates and rules, and the payout rule timeline of
/// each dimension id seen (computed on first use).
#[derive(Debug, Default)]
pub(super) struct MoneyState {
    money: Option<Arc<Money>>,
    /// Index into `timelines` per dimension id; `u32::MAX` = not looked up yet.
    timeline_of: Vec<u32>,
    timelines: Vec<Timeline>,
}

impl Engine {
    /// Values conversions in `money`'s reporting currency from now on (`[money]`, `[payouts]`).
    pub fn set_money(&mut self, money: Option<Arc<Money>>) {
        self.money = MoneyState {
            money,
            ..MoneyState::default()
        };
    }

    /// The payout rule timeline of dimension id `dims`.
    fn timeline(&mut self, dims: u32) -> Option<&Timeline> {
        let money = self.money.money.as_ref()?;
        let at = dims as usize;
        if self.money.timeline_of.len() <= at {
            self.money.timeline_of.resize(at + 1, u32::MAX);
        }
        if self.money.timeline_of[at] == u32::MAX {
            let d = self.dims.get(dims);
            let s = |sym| self.strings.get(sym).as_ref();
            let t = money
                .payouts
                .timeline(s(d.tenant), s(d.offer), s(d.affiliate), s(d.country));
            self.money.timeline_of[at] = self.money.timelines.len() as u32;
            self.money.timelines.push(t);
        }
        self.money
            .timelines
            .get(self.money.timeline_of[at] as usize)
    }

    /// The first valuation of a decided conversion with dimensions `dims`; counts stale and
    /// missing rates and missing rules. `None` without `[money]`.
    pub(super) fn value_first(
        &mut self,
        amount_micros: i64,
        currency: &str,
        ts_ms: i64,
        dims: u32,
        attributed: bool,
    ) -> Option<Valuation> {
        let money = self.money.money.clone()?;
        let rule = self.timeline(dims).and_then(|t| t.at(ts_ms));
        let v = money.value(
            amount_micros,
            currency,
            ts_ms,
            rule.map(|i| money.payouts.rule(i)),
            attributed,
        );
        self.counters.fx_stale += u64::from(v.fx_stale);
        self.counters.fx_missing += u64::from(v.fx_missing);
        self.counters.without_payout_rule += u64::from(v.no_rule);
        Some(v)
    }

    /// The valuation of a later version of the conversion `entry`, as its first was valued.
    pub(super) fn value_again(&mut self, entry: &ConvEntry) -> Option<Valuation> {
        let money = self.money.money.clone()?;
        let d = self.dims.get(entry.dims);
        let currency = self.strings.get(d.currency).clone();
        let ts = entry.ts_ms();
        let rule = self.timeline(entry.dims).and_then(|t| t.at(ts));
        money.revalue(
            entry.value_code(),
            entry.amount_micros,
            &currency,
            ts,
            rule.map(|i| money.payouts.rule(i)),
        )
    }

    /// The CPC payout of an accepted click, reporting currency (0 without CPC rules).
    pub(super) fn click_payout(&mut self, dims: u32, ts_ms: i64) -> i64 {
        let Some(money) = self.money.money.clone() else {
            return 0;
        };
        if !money.payouts.pays_clicks() {
            return 0;
        }
        let Some(rule) = self.timeline(dims).and_then(|t| t.at(ts_ms)) else {
            return 0;
        };
        match money.click_payout(money.payouts.rule(rule), ts_ms) {
            Some(p) => {
                self.counters.payout_micros += p;
                self.counters.profit_micros -= p;
                p
            }
            None => {
                self.counters.fx_missing += 1;
                0
            }
        }
    }

    /// Adds `sign` × the conversion's reporting-currency revenue and payout to the run's
    /// counters (`sign` +1 when it becomes approved, −1 when it stops being).
    pub(super) fn count_value(&mut self, v: Option<&Valuation>, sign: i64) {
        let (revenue, payout) = v.map_or((0, 0), Valuation::counted);
        self.counters.revenue_reporting_micros += sign * revenue;
        self.counters.payout_micros += sign * payout;
        self.counters.profit_micros += sign * (revenue - payout);
    }
}

/// Adds `sign` × a conversion's reporting-currency revenue and payout to a bucket.
pub(super) fn add_value(m: &mut Measures, v: Option<&Valuation>, sign: i64) {
    let (revenue, payout) = v.map_or((0, 0), Valuation::counted);
    m.revenue_reporting_micros += sign * revenue;
    m.payout_micros += sign * payout;
    m.profit_micros += sign * (revenue - payout);
}
