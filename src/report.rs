//! The end-of-run summary table.

use std::fmt::Write;

use crate::pipeline::RunReport;

fn money(micros: i64) -> String {
    format!(
        "{}.{:02}",
        micros / 1_000_000,
        (micros % 1_000_000).abs() / 10_000
    )
}

/// Renders the summary printed by `attribd run`.
pub fn summary(r: &RunReport, cores: usize) -> String {
    let c = &r.counters;
    let mut s = String::new();
    let mut row = |k: &str, v: String| {
        let _ = writeln!(s, "  {k:<34} {v:>14}");
    };
    row("events in", c.events_in().to_string());
    row("  click records", c.click_records.to_string());
    row("  conversion records", c.conversion_records.to_string());
    row("clicks accepted", c.clicks.to_string());
    row("  unique clicks", c.unique_clicks.to_string());
    row("  duplicate clicks", c.duplicate_clicks.to_string());
    row("conversions accepted", c.conversions.to_string());
    row("  approved (current)", c.approved.to_string());
    row("  pending (current)", c.pending.to_string());
    row("  rejected (current)", c.rejected.to_string());
    row("  status changes applied", c.status_changes.to_string());
    row("  duplicate postbacks", c.duplicate_conversions.to_string());
    row(
        "  refused changes (→ pending)",
        c.refused_changes.to_string(),
    );
    row("  attributed", c.attributed.to_string());
    row("  unattributed: unknown_click", c.unknown_click.to_string());
    row(
        "  unattributed: outside_window",
        c.outside_window.to_string(),
    );
    row("revenue (approved)", money(c.revenue_micros));
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
    row("parquet files", r.sinks.files.to_string());
    if let Some(ch) = &r.clickhouse {
        row("clickhouse: stats rows", ch.stats_rows.to_string());
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
        if r.counters.events_in() == 0 {
            "– (nothing read)".to_string()
        } else {
            format!("{:.0}", r.events_per_second())
        },
    );
    s
}
