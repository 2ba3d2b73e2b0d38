//! The end-of-run summary table.

use std::fmt::Write;

use crate::pipeline::RunReport;
use crate::rows::Unit;
use crate::state::Counters;
use crate::state::counters::CounterInfo;

fn money(micros: i64) -> String {
    format!(
        "{}.{:02}",
        micros / 1_000_000,
        (micros % 1_000_000).abs() / 10_000
    )
}

/// A counter's value (`Counters::values` form) as the summary shows it.
fn show(info: &CounterInfo, v: i64) -> String {
    match info.unit {
        Unit::Money => money(v),
        Unit::Count if info.only_grows => (v as u64).to_string(),
        Unit::Count => v.to_string(),
    }
}

/// Renders the summary printed by `attribd run`.
pub fn summary(r: &RunReport, cores: usize) -> String {
    let c = &r.counters;
    let mut s = String::new();
    let mut row = |k: &str, v: String| {
        let _ = writeln!(s, "  {k:<34} {v:>14}");
    };
    row("events in", c.events_in().to_string());
    // The counters in table order, counts before money.
    let values = c.values();
    for unit in [Unit::Count, Unit::Money] {
        for (info, &v) in Counters::INFO.iter().zip(&values) {
            if info.unit == unit {
                row(info.summary, show(info, v));
            }
        }
    }
    row("dead letters", c.dead_letter_total().to_string());
    for (reason, n) in &c.dead_letters {
        row(&format!("  {reason}"), n.to_string());
    }
    row("rows written: clicks", r.sinks.click_rows.to_string());
    row(
        "rows written: conversions",
        r.sinks.conversion_rows.to_string(),
    );
    row("rows written: stats_minute", r.sinks.stats_rows.to_string());
    row(
        "rows written: stats_click_hour",
        r.sinks.click_hour_rows.to_string(),
    );
    row("parquet files", r.sinks.files.to_string());
    if let Some(ch) = &r.clickhouse {
        row("clickhouse: stats rows", ch.stats_rows.to_string());
        row(
            "clickhouse: click-hour rows",
            ch.click_hour_rows.to_string(),
        );
        row(
            "clickhouse: conversion rows",
            ch.conversion_rows.to_string(),
        );
        row(
            "clickhouse: batches (skipped)",
            format!("{} ({})", ch.batches, ch.batches_skipped),
        );
        row("clickhouse: failed attempts", ch.failures.to_string());
    }
    if let Some(epoch) = r.resumed_from {
        row("resumed from checkpoint", epoch.to_string());
    }
    row("checkpoints written", r.checkpoints.to_string());
    if r.interrupted {
        row("stopped by signal", "yes (resumes on next run)".to_string());
    }
    row("state: indexed clicks", r.sizes.indexed_clicks.to_string());
    row("state: dedup keys", r.sizes.dedup_keys.to_string());
    row("elapsed", format!("{:.2}s", r.elapsed.as_secs_f64()));
    if !r.idle_tail.is_zero() {
        row(
            "  of which waiting for more input",
            format!("{:.2}s", r.idle_tail.as_secs_f64()),
        );
    }
    row(
        &format!("events/second ({cores} cores)"),
        if r.events_this_run == 0 {
            "– (nothing read)".to_string()
        } else {
            format!("{:.0}", r.events_per_second())
        },
    );
    s
}
