//! Unit tests of the metrics: engine counters, sinks and queues render under their documented
//! names; readiness lists what is wrong.

use super::*;
use crate::state::{Counters, StateSizes};

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn engine_counters_render_under_their_names() {
    let m = Metrics::new();
    let mut c = Counters {
        click_records: 10,
        conversion_records: 4,
        clicks: 8,
        duplicate_clicks: 1,
        conversions: 3,
        unknown_click: 1,
        approved: 2,
        pending: 1,
        ..Counters::default()
    };
    c.dead_letters.insert("invalid_json", 2);
    let sizes = StateSizes {
        indexed_clicks: 8,
        dedup_keys: 3,
        ..StateSizes::default()
    };
    m.publish_engine(&c, &sizes, [Some(1_000), None], 6_000);
    m.sink_rows(SinkKind::Parquet, "clicks", 8);
    m.sink_write(SinkKind::ClickHouse, false);
    m.queue(Queue::SinkClicks).set(4096);
    let text = m.render();
    let v = |s: &str| value(&text, s).unwrap_or_else(|| panic!("{s} missing in\n{text}"));
    assert_eq!(v(r#"attribd_events_in_total{stream="clicks"}"#), 10.0);
    assert_eq!(v(r#"attribd_events_in_total{stream="conversions"}"#), 4.0);
    assert_eq!(v("attribd_clicks_total"), 8.0);
    assert_eq!(v("attribd_duplicate_clicks_total"), 1.0);
    assert_eq!(
        v(r#"attribd_conversions_unattributed_total{reason="unknown_click"}"#),
        1.0
    );
    assert_eq!(
        v(r#"attribd_dead_letters_total{reason="invalid_json"}"#),
        2.0
    );
    assert_eq!(v(r#"attribd_dead_letters_total{reason="oversize"}"#), 0.0);
    assert_eq!(
        v(r#"attribd_conversions_by_status{status="approved"}"#),
        2.0
    );
    assert_eq!(v(r#"attribd_state_keys{map="click_index"}"#), 8.0);
    assert_eq!(v(r#"attribd_state_keys{map="dedup"}"#), 3.0);
    assert_eq!(v(r#"attribd_watermark_lag_seconds{stream="clicks"}"#), 5.0);
    assert_eq!(
        v(r#"attribd_sink_rows_total{sink="parquet",table="clicks"}"#),
        8.0
    );
    assert_eq!(v(r#"attribd_sink_failures_total{sink="clickhouse"}"#), 1.0);
    assert_eq!(
        v(r#"attribd_queue_depth_events{queue="sink_clicks"}"#),
        4096.0
    );
    assert!(text.ends_with("# EOF\n"));

    // Counters mirror the engine: a later publish shows the new totals, not sums.
    c.clicks = 9;
    m.publish_engine(&c, &sizes, [None, None], 0);
    assert_eq!(value(&m.render(), "attribd_clicks_total"), Some(9.0));
}

#[test]
fn readiness_lists_what_is_wrong() {
    let m = Metrics::new();
    assert_eq!(m.health.problems(), vec!["sources not connected"]);
    m.health.sources_connected.store(true, Ordering::Relaxed);
    assert!(m.health.problems().is_empty());
    m.set_circuit_open(true);
    assert_eq!(m.health.problems(), vec!["ClickHouse circuit breaker open"]);
}
