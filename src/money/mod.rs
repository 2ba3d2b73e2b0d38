//! Money in one reporting currency: FX rates, payout rules, and the valuation of a conversion
//! (what it is worth in the reporting currency, what it pays the affiliate, what is left).
//!
//! Sits beside the state stage: the pipeline loads [`Money`] from `[money]` and `[payouts]` at
//! start, the [`crate::state::Engine`] values each conversion once when it is attributed
//! ([`Money::value`]) and values a later status change the same way ([`Money::revalue`], from
//! the few bits the dedup entry keeps), and the sinks write the [`Valuation`] as columns.
//!
//! Everything is exact: amounts are `i64` micro-units and rates fixed-point (`decimal.rs`).

pub mod decimal;
pub mod fx;
pub mod payouts;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::event::time::day_of;
use decimal::{RATE_DECIMALS, mul_round};
use fx::{Found, FxTable, RateLine};
use payouts::{PayoutBook, Rule, RuleLine};

/// `[money]`: the reporting currency and where its rates come from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MoneyConfig {
    /// ISO 4217 code every reporting measure is in ("USD").
    pub reporting_currency: String,
    /// CSV file `date,currency,rate` (units of the reporting currency per unit).
    #[serde(default)]
    pub fx_rates: Option<PathBuf>,
    /// Rates written in the pipeline itself (`[[money.rates]]`), added to the file's.
    #[serde(default)]
    pub rates: Vec<RateLine>,
}

/// `[payouts]`: the payout rules (needs `[money]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct PayoutsConfig {
    /// Rules file: `.csv` or TOML with `[[rule]]` tables.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Rules written in the pipeline itself (`[[payouts.rule]]`), added to the file's.
    #[serde(default)]
    pub rule: Vec<RuleLine>,
}

/// The loaded rates and rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Money {
    pub fx: FxTable,
    pub payouts: PayoutBook,
}

/// What a conversion is worth in the reporting currency (the columns of a conversion row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Valuation {
    /// `amount × fx_rate`, micro-units; `None` when the currency has no rate.
    pub amount_reporting: Option<i64>,
    /// The rate used (`decimal::RATE_DECIMALS` decimals).
    pub fx_rate: Option<i64>,
    /// The day had no rate of its own: the newest earlier one was used.
    pub fx_stale: bool,
    /// A rate this conversion needs (its currency's, or its CPA currency's) does not exist:
    /// it is left out of every reporting-currency measure, and the other money columns are
    /// null.
    pub fx_missing: bool,
    /// What the affiliate earns for it when approved, micro-units of the reporting currency;
    /// `None` when it cannot be converted.
    pub payout: Option<i64>,
    /// An attributed conversion whose offer has no payout rule (payout 0).
    pub no_rule: bool,
    /// How the rates were found, for [`Money::revalue`] (kept in the dedup entry, 3 bits).
    pub code: u8,
}

impl Valuation {
    /// A conversion a rate is missing for: no reporting values at all.
    fn missing(no_rule: bool) -> Valuation {
        Valuation {
            fx_missing: true,
            no_rule,
            code: CODE_MISSING,
            ..Valuation::default()
        }
    }

    /// `amount_reporting − payout`, when both are known and no rate is missing.
    pub fn profit(&self) -> Option<i64> {
        if self.fx_missing {
            return None;
        }
        Some(self.amount_reporting? - self.payout?)
    }

    /// `(revenue, payout)` in the reporting currency as the aggregates count it while the
    /// conversion is approved: nothing when a rate is missing.
    pub fn counted(&self) -> (i64, i64) {
        if self.fx_missing {
            return (0, 0);
        }
        (self.amount_reporting.unwrap_or(0), self.payout.unwrap_or(0))
    }
}

/// Valuation codes (3 bits of the dedup entry): 0 = not valued (no `[money]`, or a conversion
/// from before it was configured: it counts nothing in reporting measures), 1 = a rate was
/// missing, 2‥5 = `2 + conversion rate stale + 2 × payout rate stale`.
pub const CODE_NONE: u8 = 0;
const CODE_MISSING: u8 = 1;

impl Money {
    /// Loads `[money]` (and `[payouts]`, which needs it). Problems are `(key, what)`.
    pub fn load(
        money: &MoneyConfig,
        payouts: Option<&PayoutsConfig>,
    ) -> Result<Money, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        let reporting = match fx::currency_code(&money.reporting_currency) {
            Ok(c) => c,
            Err(e) => {
                return Err(vec![("money.reporting_currency", e)]);
            }
        };
        let mut rate_lines = Vec::new();
        if let Some(path) = &money.fx_rates {
            match fx::read_csv(path) {
                Ok(lines) => rate_lines.extend(lines),
                Err(e) => problems.push(("money.fx_rates", e)),
            }
        }
        rate_lines.extend(
            money
                .rates
                .iter()
                .enumerate()
                .map(|(i, l)| (format!("[[money.rates]] {}", i + 1), l.clone())),
        );
        let fx = FxTable::new(&reporting, &rate_lines).unwrap_or_else(|e| {
            problems.extend(e.into_iter().map(|p| ("money.fx_rates", p)));
            FxTable::default()
        });
        let mut rule_lines = Vec::new();
        if let Some(p) = payouts {
            if let Some(path) = &p.file {
                match payouts::read_file(path) {
                    Ok(lines) => rule_lines.extend(lines),
                    Err(e) => problems.push(("payouts.file", e)),
                }
            }
            rule_lines.extend(
                p.rule
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (format!("[[payouts.rule]] {}", i + 1), l.clone())),
            );
        }
        let payouts = PayoutBook::new(&reporting, &rule_lines).unwrap_or_else(|e| {
            problems.extend(e.into_iter().map(|p| ("payouts", p)));
            PayoutBook::default()
        });
        if problems.is_empty() {
            Ok(Money { fx, payouts })
        } else {
            Err(problems)
        }
    }

    /// Values a conversion the first time (its first postback, when it is attributed or found
    /// unattributed). `rule` is the payout rule in effect for its click's dimensions at its
    /// time; `attributed` says whether a missing rule is worth counting.
    pub fn value(
        &self,
        amount_micros: i64,
        currency: &str,
        ts_ms: i64,
        rule: Option<&Rule>,
        attributed: bool,
    ) -> Valuation {
        let day = day_of(ts_ms);
        let conv = self.fx.find(currency, day);
        let pays_cpa = rule.is_some_and(|r| r.cpa_micros > 0);
        let cpa = rule
            .filter(|_| pays_cpa)
            .map(|r| self.fx.find(&r.currency, day));
        let stale = |f: Option<(i64, Found)>| matches!(f, Some((_, Found::Stale)));
        let mut v = self.compute(
            amount_micros,
            conv.map(|(r, _)| r),
            cpa.flatten().map(|(r, _)| r),
            rule,
        );
        v.no_rule = attributed && rule.is_none() && !self.payouts.is_empty();
        // A rate that does not exist (or a product too large for the column) leaves the
        // conversion out of the reporting measures altogether.
        if v.amount_reporting.is_none() || v.payout.is_none() {
            return Valuation::missing(v.no_rule);
        }
        v.fx_stale = stale(conv) || cpa.is_some_and(stale);
        v.code = 2 + u8::from(stale(conv)) + 2 * u8::from(cpa.is_some_and(stale));
        v
    }

    /// Values a later version of a conversion exactly as [`Money::value`] valued its first
    /// (`code` from then, the same amount, currency, time and rule).
    pub fn revalue(
        &self,
        code: u8,
        amount_micros: i64,
        currency: &str,
        ts_ms: i64,
        rule: Option<&Rule>,
    ) -> Option<Valuation> {
        if code == CODE_NONE {
            return None;
        }
        if code == CODE_MISSING {
            return Some(Valuation::missing(false));
        }
        let day = day_of(ts_ms);
        let how = |stale: bool| if stale { Found::Stale } else { Found::Day };
        let bits = code - 2;
        let conv = self.fx.find_as(currency, day, how(bits & 1 != 0));
        let cpa = rule
            .filter(|r| r.cpa_micros > 0)
            .and_then(|r| self.fx.find_as(&r.currency, day, how(bits & 2 != 0)));
        let mut v = self.compute(amount_micros, conv, cpa, rule);
        if v.amount_reporting.is_none() || v.payout.is_none() {
            // Only if a rate it was valued with has since been deleted from the file.
            return Some(Valuation::missing(false));
        }
        v.fx_stale = bits != 0;
        v.code = code;
        Some(v)
    }

    fn compute(
        &self,
        amount_micros: i64,
        conv_rate: Option<i64>,
        cpa_rate: Option<i64>,
        rule: Option<&Rule>,
    ) -> Valuation {
        let to_reporting = |micros: i64, rate: i64| mul_round(micros, rate, RATE_DECIMALS);
        let amount_reporting = conv_rate.and_then(|r| to_reporting(amount_micros, r));
        let payout = match rule {
            None => Some(0),
            Some(r) => {
                let cpa = if r.cpa_micros > 0 {
                    cpa_rate.and_then(|rate| to_reporting(r.cpa_micros, rate))
                } else {
                    Some(0)
                };
                let share = if r.revshare_micro_percent > 0 {
                    conv_rate.and_then(|rate| to_reporting(r.revshare_of(amount_micros), rate))
                } else {
                    Some(0)
                };
                cpa.zip(share).and_then(|(a, b)| a.checked_add(b))
            }
        };
        Valuation {
            amount_reporting,
            fx_rate: conv_rate,
            payout,
            ..Valuation::default()
        }
    }

    /// The CPC payout of a click in the reporting currency; `None` when the rule's currency
    /// has no rate for the click's day (the click pays nothing in the reports, counted).
    pub fn click_payout(&self, rule: &Rule, ts_ms: i64) -> Option<i64> {
        if rule.cpc_micros == 0 {
            return Some(0);
        }
        let (rate, _) = self.fx.find(&rule.currency, day_of(ts_ms))?;
        mul_round(rule.cpc_micros, rate, RATE_DECIMALS)
    }
}

#[cfg(test)]
mod tests;
