//! Reporting currency, FX and payouts end to end: the fixture of `e2e.rs` with
//! `tests/fixtures/fx.csv` and `tests/fixtures/payouts.toml`, every valued conversion and every
//! reporting measure checked against answers worked out by hand (in the comments), read back by
//! the `parquet` crate and by DuckDB. The ClickHouse side is in `clickhouse.rs`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;

#[test]
fn payouts_profit_reporting_revenue_and_fraud_flags_have_known_answers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // Conversions within 60 s of their click are too fast (e7: 60 s).
    let pipeline = money_pipeline(dir.path(), "[fraud]\nmin_seconds_to_convert = 61\n");
    let c = run_pipeline_counters(&pipeline, &out);

    // Every version of every conversion: amount_reporting / fx_rate / stale / missing /
    // payout / profit (micro-units; rates with 10 decimals; "" = null) / fraud flags.
    let mut got: Vec<String> = rows(&read_table(&out, "conversions"))
        .iter()
        .map(|r| {
            format!(
                "{}/{} v{}: {} {} {} {} {} {} [{}]",
                get(r, "tenant_id"),
                get(r, "external_id"),
                get(r, "version"),
                get(r, "amount_reporting"),
                get(r, "fx_rate"),
                get(r, "fx_stale"),
                get(r, "fx_missing"),
                get(r, "payout"),
                get(r, "profit"),
                get(r, "fraud_flags"),
            )
        })
        .collect();
    got.sort();
    let e1 = "10500000 10000000000 false false 2000000 8500000 []";
    assert_eq!(
        got,
        [
            // USD 10.50, o1/a1 of t1 at 10:10: CPA 2.00 (the 20 % share starts at 10:11);
            // every status change carries the same values.
            format!("t1/e1 v1: {e1}"),
            format!("t1/e1 v2: {e1}"),
            format!("t1/e1 v3: {e1}"),
            format!("t1/e1 v4: {e1}"),
            // EUR 20 on 1 Nov: no EUR rate yet → missing: left out, no reporting values.
            "t1/e3 v1:   false true   []".into(),
            // Outside the window: not attributed, nothing to pay.
            "t1/e5 v1: 7000000 10000000000 false false 0 7000000 [outside_window]".into(),
            // Pending USD 3 in France: CPA 1 GBP at the stale 1.25.
            "t1/e7 v1: 3000000 10000000000 true false 1250000 1750000 [too_fast]".into(),
            "t1/e8 v1: 4000000 10000000000 false false 0 4000000 []".into(),
            // t2 at 10:11: its rule starts at 10:20 → no rule, payout 0 (counted).
            "t2/e1 v1: 5000000 10000000000 false false 0 5000000 []".into(),
            // t2 at 10:25: 10 % of 10.
            "t2/e9 v1: 10000000 10000000000 false false 1000000 9000000 []".into(),
        ]
    );

    // Reporting measures per bucket (revenue_reporting, payout, profit): approved conversions
    // only, and the CPC of the French click (0.10 GBP × 1.25) in its click bucket.
    let money = |sums: BTreeMap<String, Vec<i64>>| -> BTreeMap<String, [i64; 3]> {
        sums.into_iter()
            .map(|(k, v)| (k, [v[10], v[11], v[12]]))
            .filter(|(_, v)| v.iter().any(|x| *x != 0))
            .collect()
    };
    let want: BTreeMap<String, [i64; 3]> = [
        ("t1/o1/a1/US/USD", [10_500_000, 2_000_000, 8_500_000]),
        ("t1/o2/a2/FR/", [0, 125_000, -125_000]),
        ("t1////USD", [11_000_000, 0, 11_000_000]),
        ("t2/o1/a1/US/USD", [15_000_000, 1_000_000, 14_000_000]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(money(table_sums_all(&out, "stats_minute", &DIMS)), want);

    // By click date: the attributed approved conversions (all clicked in the 10:00 hour) and
    // the French click.
    let by_hour = money(table_sums_all(&out, "stats_click_hour", &["click_hour"]));
    let want: BTreeMap<String, [i64; 3]> = [(
        "1793527200000".to_string(),
        [25_500_000, 3_125_000, 22_375_000],
    )]
    .into_iter()
    .collect();
    assert_eq!(by_hour, want);

    // The counters (summary and /metrics).
    assert_eq!(c["revenue_reporting_micros"], 36_500_000, "{c}");
    assert_eq!(c["payout_micros"], 3_125_000);
    assert_eq!(c["profit_micros"], 33_375_000);
    assert_eq!(c["fx_stale"], 1, "e7 (its CPA in GBP)");
    assert_eq!(c["fx_missing"], 1, "e3");
    assert_eq!(c["without_payout_rule"], 1, "t2/e1");
    assert_eq!(c["flagged_conversions"], 2);
    assert_eq!(
        (
            c["flag_too_fast"].as_u64(),
            c["flag_outside_window"].as_u64()
        ),
        (Some(1), Some(1))
    );
    // flagged_conversions per bucket: e5 (unattributed) and e7 in their conversions' buckets.
    let flagged: BTreeMap<String, i64> = table_sums_all(&out, "stats_minute", &DIMS)
        .into_iter()
        .filter(|(_, v)| v[13] != 0)
        .map(|(k, v)| (k, v[13]))
        .collect();
    assert_eq!(
        flagged,
        BTreeMap::from([
            ("t1////USD".to_string(), 1),
            ("t1/o2/a2/FR/USD".to_string(), 1)
        ])
    );

    duckdb_money(&out);
}

/// The reporting measures read with DuckDB, the way README tells users to.
fn duckdb_money(out: &Path) {
    if !duckdb_available("DuckDB money cross-check") {
        return;
    }
    let script = format!(
        r#"
import duckdb
out = {out:?}
db = duckdb.connect()
s = db.execute(f"select sum(revenue_reporting)::varchar, sum(payout)::varchar, sum(profit)::varchar from read_parquet('{{out}}/stats_minute/**/*.parquet')").fetchone()
print("stats", *s)
c = db.execute(f"select count(*) filter (where fx_missing), count(*) filter (where fx_stale), sum(payout)::varchar from (select arg_max(fx_missing, version) fx_missing, arg_max(fx_stale, version) fx_stale, arg_max(payout, version) payout from read_parquet('{{out}}/conversions/**/*.parquet') group by tenant_id, external_id)").fetchone()
print("conversions", *c)
"#,
        out = out.display().to_string()
    );
    assert_eq!(
        python_lines(&script),
        [
            "stats 36.500000 3.125000 33.375000",
            "conversions 1 1 4.250000",
        ]
    );
}

#[test]
fn bad_rates_and_rules_are_refused_at_start_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let fx = dir.path().join("fx.csv");
    std::fs::write(
        &fx,
        "date,currency,rate\n2026-11-01,EUR,1.08\n2026-11-01,EUR,abc\n",
    )
    .unwrap();
    let rules = dir.path().join("p.csv");
    std::fs::write(&rules, "offer,cpa\no1,5\no1,6\n").unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        format!(
            "[source]\nkind = \"generator\"\n[money]\nreporting_currency = \"USD\"\nfx_rates = {fx:?}\n[payouts]\nfile = {rules:?}\n"
        ),
    )
    .unwrap();
    let o = attribd_cmd()
        .args(["check", "-p", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("money.fx_rates"), "{err}");
    assert!(err.contains("fx.csv line 3: `rate`"), "{err}");
    assert!(err.contains("p.csv line 3: a second rule"), "{err}");
    // Payouts without a reporting currency.
    std::fs::write(
        &p,
        "[source]\nkind = \"generator\"\n[payouts]\n[[payouts.rule]]\noffer = \"o1\"\ncpa = 1\n",
    )
    .unwrap();
    let o = attribd_cmd()
        .args(["check", "-p", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("payouts need a reporting currency"));
}

/// The default pipeline's generator makes every pattern the reports need; with its [money],
/// [payouts] and [fraud] each shows up, and the aggregates add up to the run's counters.
#[test]
fn the_default_pipeline_shows_currencies_payouts_and_fraud_signals() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixture("../../pipelines/default.toml"))
        .unwrap()
        .replace("clicks = 1_500_000", "clicks = 40_000")
        // The default's click rate (17 a second), so bursts fall within a minute as there.
        .replace("span_hours = 24.0", "span_hours = 0.65");
    let pipeline = dir.path().join("default.toml");
    std::fs::write(&pipeline, text).unwrap();
    let out = dir.path().join("out");
    let c = run_pipeline_counters(&pipeline, &out);
    let n = |k: &str| c[k].as_i64().unwrap_or_else(|| panic!("{k} in {c}"));
    for k in [
        "fx_stale",
        "fx_missing",
        "without_payout_rule",
        "payout_micros",
        "flag_too_fast",
        "flag_ip_burst",
        "flag_flagged_ip",
        "ip_burst_clicks",
    ] {
        assert!(
            n(k) > 0,
            "{k} = 0: the default pipeline should show it ({c})"
        );
    }
    // The aggregates say what the counters say.
    let totals = table_sums_all(&out, "stats_minute", &[])
        .into_values()
        .next()
        .unwrap();
    assert_eq!(totals[10], n("revenue_reporting_micros"));
    assert_eq!(totals[11], n("payout_micros"));
    assert_eq!(totals[12], n("profit_micros"));
    assert_eq!(totals[13], n("flagged_conversions"));
    // Every generated currency is there, each valued the way its rates say.
    let mut by_currency: BTreeMap<String, (u32, u32, u32)> = BTreeMap::new();
    for r in rows(&read_table(&out, "conversions")) {
        let e = by_currency
            .entry(get(&r, "currency").to_string())
            .or_default();
        e.0 += 1;
        e.1 += u32::from(get(&r, "fx_stale") == "true");
        e.2 += u32::from(get(&r, "fx_missing") == "true");
    }
    let currencies: Vec<&String> = by_currency.keys().collect();
    assert_eq!(currencies, ["BRL", "EUR", "GBP", "JPY", "USD"]);
    let (brl, _, _) = by_currency["BRL"];
    assert_eq!(
        by_currency["BRL"],
        (brl, brl, 0),
        "BRL only has an older rate"
    );
    let (jpy, _, _) = by_currency["JPY"];
    assert_eq!(by_currency["JPY"], (jpy, 0, jpy), "JPY has no rate");
    assert_eq!(by_currency["USD"].2, 0);
}
