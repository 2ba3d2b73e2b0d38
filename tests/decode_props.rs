//! Property tests over the decoders and the state stage behind them: whatever bytes arrive,
//! nothing panics and nothing vanishes — every line is either a decoded record or a dead
//! letter carrying the line's exact bytes (an oversize line's first KiB), and what is accepted
//! respects the limits.

use std::sync::Arc;

use attribd::event::decode::{DecodeLimits, Decoder};
use attribd::event::{DeadLetter, DeadReason, Position};
use attribd::rows::SinkBatch;
use attribd::source::{OVERSIZE_HEAD_BYTES, RawBatch};
use attribd::state::{Engine, EngineConfig};
use proptest::prelude::*;

fn batch(lines: &[Vec<u8>]) -> RawBatch {
    let mut b = RawBatch::default();
    let mut offset = 0;
    for (i, l) in lines.iter().enumerate() {
        b.push_line(
            l,
            Position {
                line: i as u64 + 1,
                offset,
            },
        );
        offset += l.len() as u64 + 1;
    }
    b
}

/// JSON values meant to hurt: extreme and malformed numbers, odd strings, deep nesting.
fn nasty_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        Just("1e309".to_string()),
        Just("-0".to_string()),
        Just("\"NaN\"".to_string()),
        Just("\"-Infinity\"".to_string()),
        Just("99999999999999999999999999999".to_string()),
        Just("\"12.3456789\"".to_string()),
        Just("\"2026-11-01T10:00:00Z\"".to_string()),
        Just("\"1969-12-31T23:59:59.999-01:00\"".to_string()),
        Just("\"9999-12-31T23:59:59Z\"".to_string()),
        Just("\"approved\"".to_string()),
        Just("\"\\u0000\\ud800\"".to_string()),
        "[a-zA-Z0-9 _\\-.:/]{0,40}".prop_map(|s| format!("{s:?}")),
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(("[a-z]{1,6}", inner), 0..4).prop_map(|v| {
                let fields: Vec<String> = v.iter().map(|(k, x)| format!("{k:?}:{x}")).collect();
                format!("{{{}}}", fields.join(","))
            }),
            (1usize..400).prop_map(|d| format!("{}1{}", "[".repeat(d), "]".repeat(d))),
        ]
    })
}

const FIELDS: [&str; 20] = [
    "click_id",
    "ts",
    "tenant_id",
    "offer_id",
    "affiliate_id",
    "country",
    "ip",
    "user_agent",
    "sub1",
    "external_id",
    "amount",
    "status",
    "currency",
    "product_id",
    "order_id",
    "customer_id",
    "metadata",
    "device",
    "referrer",
    "unknown_field",
];

/// A JSON object line built from the known fields (and stray ones) with nasty values,
/// sometimes truncated or corrupted.
fn record_line() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(
            (prop::sample::select(FIELDS.to_vec()), nasty_value()),
            0..12,
        ),
        0u8..8,
        any::<usize>(),
    )
        .prop_map(|(fields, damage, at)| {
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
            let mut line = format!("{{{}}}", body.join(",")).into_bytes();
            match damage {
                0 if !line.is_empty() => line.truncate(at % line.len()),
                1 if !line.is_empty() => {
                    let i = at % line.len();
                    line[i] = 0xff;
                }
                _ => {}
            }
            line.retain(|b| *b != b'\n');
            line
        })
}

/// Lines that pass the decoders often enough to exercise the state stage.
fn plausible_click(i: u32, ts: i64, ip: u8) -> Vec<u8> {
    format!(
        r#"{{"click_id":"c{i}","ts":{ts},"offer_id":"o{}","affiliate_id":"a1","ip":"10.0.0.{ip}"}}"#,
        i % 3
    )
    .into_bytes()
}

/// A dead letter keeps its line's exact bytes; of an oversize line, the first KiB.
fn assert_keeps_line(d: &DeadLetter, line: &[u8], limit: usize) {
    if d.reason == DeadReason::Oversize {
        assert!(line.len() > limit);
        assert!(d.raw.len() <= OVERSIZE_HEAD_BYTES && line.starts_with(&d.raw));
    } else {
        assert_eq!(&d.raw, line, "dead letter keeps the exact bytes");
    }
}

fn check_accounting(lines: &[Vec<u8>]) -> (usize, usize) {
    let limits = DecodeLimits {
        max_record_bytes: 2048,
        ..DecodeLimits::default()
    };
    let decoder = Decoder::new(Arc::from("prop"), limits.clone());
    let raw = batch(lines);
    let now_ms = chrono::Utc::now().timestamp_millis();
    // Blank lines carry no record and are skipped (see `event::decode`); every other line is
    // a record or a dead letter.
    let records = lines
        .iter()
        .filter(|l| !l.iter().all(|b| b.is_ascii_whitespace()))
        .count();
    let (clicks, dead) = decoder.decode_clicks(&raw);
    assert_eq!(clicks.clicks.len() + dead.len(), records);
    for d in &dead {
        let line = &lines[d.position.line as usize - 1];
        assert_keeps_line(d, line, limits.max_record_bytes);
        assert!(!d.detail.is_empty());
    }
    for c in &clicks.clicks {
        assert!(c.ts_ms >= limits.min_ts_ms && c.ts_ms <= now_ms + limits.max_future_ms + 60_000);
        assert!(!clicks.arena.get(c.click_id).is_empty());
    }
    let (convs, dead_c) = decoder.decode_conversions(&raw);
    assert_eq!(convs.conversions.len() + dead_c.len(), records);
    for d in &dead_c {
        assert_keeps_line(
            d,
            &lines[d.position.line as usize - 1],
            limits.max_record_bytes,
        );
    }
    for c in &convs.conversions {
        assert!(c.amount_micros >= 0);
        assert!(!convs.arena.get(c.external_id).is_empty());
    }
    // The state stage takes whatever the decoders accepted without panicking, and accounts
    // for every record.
    let mut engine = Engine::new(EngineConfig::default());
    let mut out = SinkBatch::default();
    let (n_clicks, n_convs) = (clicks.clicks.len(), convs.conversions.len());
    engine.on_dead_letters(dead, &mut out);
    engine.on_clicks(clicks, &mut out);
    engine.on_conversions(convs, &mut out);
    engine.finish(&mut out);
    let c = engine.counters();
    assert_eq!(c.clicks + c.duplicate_clicks, n_clicks as u64);
    assert_eq!(
        c.conversions + c.status_changes + c.duplicate_conversions + c.refused_changes,
        n_convs as u64
    );
    (n_clicks, n_convs)
}

proptest! {
    // No failure files: a failing case is printed, minimised, in the test output.
    #![proptest_config(ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic_or_vanish(
        lines in prop::collection::vec(
            prop::collection::vec(any::<u8>(), 0..300)
                .prop_map(|mut l| { l.retain(|b| *b != b'\n'); l }),
            1..20,
        )
    ) {
        check_accounting(&lines);
    }

    #[test]
    fn hostile_json_records_never_panic_or_vanish(lines in prop::collection::vec(record_line(), 1..20)) {
        check_accounting(&lines);
    }

    #[test]
    fn valid_records_mixed_with_garbage_are_all_accounted(
        garbage in prop::collection::vec(record_line(), 0..10),
        ts in 1_700_000_000_000i64..1_790_000_000_000,
        n in 1u32..50,
    ) {
        let mut lines: Vec<Vec<u8>> = (0..n).map(|i| plausible_click(i, ts + i as i64, (i % 7) as u8)).collect();
        let (from_garbage, _) = check_accounting(&garbage);
        lines.extend(garbage);
        let (clicks, _) = check_accounting(&lines);
        prop_assert!(clicks >= n as usize);
        // Exactly: every plausible click, plus what the garbage yields on its own.
        prop_assert_eq!(clicks, n as usize + from_garbage);
    }
}
