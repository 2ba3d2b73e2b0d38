//! Valuation rules: FX same day / stale / missing, CPA / RevShare, and a later version valued
//! exactly like the first even after the rates file gained the missing day.

use super::decimal::DecimalText;
use super::*;

const DAY_MS: i64 = 86_400_000;
/// 2026-11-02T10:00:00Z.
const NOV2: i64 = 1_793_613_600_000;

fn rate(date: &str, currency: &str, r: &str) -> RateLine {
    RateLine {
        date: date.into(),
        currency: currency.into(),
        rate: DecimalText(r.into()),
    }
}

fn money(rates: Vec<RateLine>, rules: Vec<RuleLine>) -> Money {
    Money::load(
        &MoneyConfig {
            reporting_currency: "usd".into(),
            fx_rates: None,
            rates,
        },
        Some(&PayoutsConfig {
            file: None,
            rule: rules,
        }),
    )
    .unwrap()
}

fn cpa(offer: &str, amount: &str, currency: Option<&str>) -> RuleLine {
    RuleLine {
        offer: offer.into(),
        cpa: Some(DecimalText(amount.into())),
        currency: currency.map(Into::into),
        ..RuleLine::default()
    }
}

#[test]
fn the_day_is_utc() {
    assert_eq!(
        crate::event::time::format_ms(NOV2),
        "2026-11-02T10:00:00.000Z"
    );
}

#[test]
fn same_day_rate_and_cpa_in_the_reporting_currency() {
    let m = money(
        vec![rate("2026-11-02", "EUR", "1.08")],
        vec![cpa("o1", "5", None)],
    );
    let t = m.payouts.timeline("t", "o1", "a", "US");
    let rule = t.at(NOV2).map(|i| m.payouts.rule(i));
    let v = m.value(19_990_000, "EUR", NOV2, rule, true);
    assert_eq!(v.amount_reporting, Some(21_589_200));
    assert_eq!(v.fx_rate, Some(10_800_000_000));
    assert_eq!(v.payout, Some(5_000_000));
    assert_eq!(v.profit(), Some(16_589_200));
    assert!(!v.fx_stale && !v.fx_missing && !v.no_rule);
    assert_eq!(v.counted(), (21_589_200, 5_000_000));
    // Reporting currency: rate 1 without any rate line.
    let v = m.value(10_000_000, "USD", NOV2, rule, true);
    assert_eq!(
        (v.amount_reporting, v.profit()),
        (Some(10_000_000), Some(5_000_000))
    );
}

#[test]
fn stale_rates_are_marked_and_kept_on_revalue() {
    let m = money(vec![rate("2026-11-01", "EUR", "1.08")], vec![]);
    let v = m.value(10_000_000, "EUR", NOV2, None, true);
    assert!(v.fx_stale);
    assert_eq!(v.amount_reporting, Some(10_800_000));
    assert!(!v.no_rule, "no rules at all: nothing to count");
    // The day's own rate is published later; the conversion's status change is valued as
    // its first version was.
    let later = money(
        vec![
            rate("2026-11-01", "EUR", "1.08"),
            rate("2026-11-02", "EUR", "1.20"),
        ],
        vec![],
    );
    assert_eq!(
        later.revalue(v.code, 10_000_000, "EUR", NOV2, None),
        Some(v)
    );
    // A conversion first valued on the day's own rate keeps it.
    let fresh = later.value(10_000_000, "EUR", NOV2, None, true);
    assert_eq!(fresh.amount_reporting, Some(12_000_000));
    assert_eq!(
        later.revalue(fresh.code, 10_000_000, "EUR", NOV2, None),
        Some(fresh)
    );
}

#[test]
fn missing_rates_are_never_one() {
    let m = money(
        vec![rate("2026-11-03", "EUR", "1.1")],
        vec![cpa("o1", "2", Some("GBP"))],
    );
    // EUR only from the 3rd: missing on the 2nd.
    let v = m.value(10_000_000, "EUR", NOV2, None, false);
    assert!(v.fx_missing);
    assert_eq!(
        (v.amount_reporting, v.fx_rate, v.profit()),
        (None, None, None)
    );
    assert_eq!(v.counted(), (0, 0));
    // The conversion's currency is fine but the CPA's (GBP) has no rate: left out too.
    let t = m.payouts.timeline("t", "o1", "a", "US");
    let rule = t.at(NOV2).map(|i| m.payouts.rule(i));
    let v = m.value(10_000_000, "USD", NOV2, rule, true);
    assert!(v.fx_missing);
    assert_eq!(
        (v.amount_reporting, v.fx_rate, v.fx_stale),
        (None, None, false)
    );
    assert_eq!((v.payout, v.profit(), v.counted()), (None, None, (0, 0)));
    assert_eq!(m.revalue(v.code, 10_000_000, "USD", NOV2, rule), Some(v));
    // Every version keeps the first's values even once the rate exists.
    let later = money(
        vec![
            rate("2026-11-03", "EUR", "1.1"),
            rate("2026-11-01", "GBP", "1.3"),
        ],
        vec![cpa("o1", "2", Some("GBP"))],
    );
    let rule = later.payouts.rule(0);
    assert_eq!(
        later.revalue(v.code, 10_000_000, "USD", NOV2, Some(rule)),
        Some(v)
    );
    // A day later EUR has its rate.
    let v = m.value(10_000_000, "EUR", NOV2 + DAY_MS, None, false);
    assert_eq!(v.amount_reporting, Some(11_000_000));
}

#[test]
fn revshare_and_cpa_add_up_and_convert() {
    let m = money(
        vec![
            rate("2026-11-02", "EUR", "1.08"),
            rate("2026-11-01", "GBP", "1.25"),
        ],
        vec![RuleLine {
            offer: "o1".into(),
            cpa: Some(DecimalText("2".into())),
            currency: Some("GBP".into()),
            revshare_percent: Some(DecimalText("12.5".into())),
            ..RuleLine::default()
        }],
    );
    let t = m.payouts.timeline("t", "o1", "a", "US");
    let rule = t.at(NOV2).map(|i| m.payouts.rule(i));
    let v = m.value(40_000_000, "EUR", NOV2, rule, true);
    // 2 GBP × 1.25 (stale: GBP's newest is the 1st) + 12.5 % of 40 EUR × 1.08.
    assert_eq!(v.payout, Some(2_500_000 + 5_400_000));
    assert_eq!(v.amount_reporting, Some(43_200_000));
    assert!(v.fx_stale);
    assert_eq!(v.code, 2 + 2, "conversion rate fresh, CPA rate stale");
    assert_eq!(m.revalue(v.code, 40_000_000, "EUR", NOV2, rule), Some(v));
    assert_eq!(
        m.click_payout(rule.unwrap(), NOV2),
        Some(0),
        "the rule pays no CPC"
    );
}

#[test]
fn unattributed_or_unruled_conversions_pay_nothing() {
    let m = money(vec![], vec![cpa("o1", "5", None)]);
    let v = m.value(10_000_000, "USD", NOV2, None, true);
    assert_eq!((v.payout, v.no_rule), (Some(0), true));
    let v = m.value(10_000_000, "USD", NOV2, None, false);
    assert!(
        !v.no_rule,
        "unattributed: no affiliate to pay, not a missing rule"
    );
    assert_eq!(m.revalue(CODE_NONE, 10_000_000, "USD", NOV2, None), None);
}

#[test]
fn click_payouts_convert_or_fail() {
    let m = money(
        vec![rate("2026-11-02", "EUR", "1.1")],
        vec![
            RuleLine {
                offer: "o1".into(),
                cpc: Some(DecimalText("0.05".into())),
                currency: Some("EUR".into()),
                ..RuleLine::default()
            },
            RuleLine {
                offer: "o2".into(),
                cpc: Some(DecimalText("0.05".into())),
                currency: Some("JPY".into()),
                ..RuleLine::default()
            },
        ],
    );
    assert_eq!(m.click_payout(m.payouts.rule(0), NOV2), Some(55_000));
    assert_eq!(m.click_payout(m.payouts.rule(1), NOV2), None);
}

#[test]
fn config_problems_name_their_key() {
    let e = Money::load(
        &MoneyConfig {
            reporting_currency: "dollars".into(),
            fx_rates: None,
            rates: vec![],
        },
        None,
    )
    .unwrap_err();
    assert_eq!(e[0].0, "money.reporting_currency");
    let e = Money::load(
        &MoneyConfig {
            reporting_currency: "USD".into(),
            fx_rates: Some("/nonexistent/fx.csv".into()),
            rates: vec![rate("2026-11-02", "EUR", "x")],
        },
        Some(&PayoutsConfig {
            file: Some("/nonexistent/p.csv".into()),
            rule: vec![],
        }),
    )
    .unwrap_err();
    let keys: Vec<_> = e.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, ["money.fx_rates", "money.fx_rates", "payouts.file"]);
    assert!(e[1].1.contains("[[money.rates]] 1"), "{e:?}");
}
