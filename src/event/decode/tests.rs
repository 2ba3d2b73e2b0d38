//! Unit tests of the decoder: every field rule, every dead-letter reason, the fast path.

use super::*;
use crate::raw::RawBatch;

fn decoder() -> Decoder {
    Decoder::new(Arc::from("test"), DecodeLimits::default())
}

fn batch(lines: &[&[u8]]) -> RawBatch {
    let mut b = RawBatch::default();
    for (i, l) in lines.iter().enumerate() {
        b.push_line(
            l,
            Position {
                line: i as u64 + 1,
                offset: 0,
            },
        );
    }
    b
}

fn one_click(line: &str) -> Result<(ClickBatch, Click), (DeadReason, String)> {
    let (b, dead) = decoder().decode_clicks(&batch(&[line.as_bytes()]));
    if let Some(d) = dead.first() {
        return Err((d.reason, d.detail.clone()));
    }
    let c = b.clicks[0];
    Ok((b, c))
}

fn one_conv(line: &[u8]) -> Result<(ConversionBatch, Conversion), (DeadReason, String)> {
    let (b, dead) = decoder().decode_conversions(&batch(&[line]));
    if let Some(d) = dead.first() {
        assert_eq!(d.raw, line, "dead letter keeps the original bytes");
        return Err((d.reason, d.detail.clone()));
    }
    let c = b.conversions[0];
    Ok((b, c))
}

#[test]
fn click_with_both_timestamp_forms_and_unknown_fields() {
    let (b, c) = one_click(
        r#"{"click_id":"c1","ts":"2026-11-01T12:00:00+02:00","offer_id":"o1","affiliate_id":"a1","country":"de","extra":{"x":[1,2]},"sub2":"s2"}"#,
    )
    .unwrap();
    assert_eq!(c.ts_ms, 1_793_527_200_000);
    assert_eq!(b.arena.get(c.click_id), "c1");
    assert_eq!(b.arena.get(c.country), "DE");
    assert_eq!(b.arena.get(c.tenant_id), "");
    assert_eq!(b.arena.get_opt(c.subs[1]), Some("s2"));
    assert_eq!(b.arena.get_opt(c.subs[0]), None);
    let (_, c2) =
        one_click(r#"{"click_id":"c1","ts":1793527200000,"offer_id":"o1","affiliate_id":"a1"}"#)
            .unwrap();
    assert_eq!(c2.ts_ms, 1_793_527_200_000);
}

#[test]
fn click_rejections_have_reasons() {
    let cases: &[(&str, DeadReason)] = &[
        (
            r#"{"click_id":"c1","ts":1793527200000"#,
            DeadReason::InvalidJson,
        ),
        (r#"not json"#, DeadReason::InvalidJson),
        (
            r#"{"ts":1793527200000,"offer_id":"o","affiliate_id":"a"}"#,
            DeadReason::MissingField,
        ),
        (
            r#"{"click_id":"c","offer_id":"o","affiliate_id":"a"}"#,
            DeadReason::MissingField,
        ),
        (
            r#"{"click_id":"c","ts":1793527200000,"affiliate_id":"a"}"#,
            DeadReason::MissingField,
        ),
        (
            r#"{"click_id":5,"ts":1793527200000,"offer_id":"o","affiliate_id":"a"}"#,
            DeadReason::InvalidField,
        ),
        (
            r#"{"click_id":"","ts":1793527200000,"offer_id":"o","affiliate_id":"a"}"#,
            DeadReason::InvalidField,
        ),
        (
            r#"{"click_id":"c","ts":"yesterday","offer_id":"o","affiliate_id":"a"}"#,
            DeadReason::InvalidField,
        ),
        (
            r#"{"click_id":"c","ts":1.5,"offer_id":"o","affiliate_id":"a"}"#,
            DeadReason::InvalidField,
        ),
        (
            r#"{"click_id":"c","ts":1,"offer_id":"o","affiliate_id":"a"}"#,
            DeadReason::TimestampOutOfRange,
        ),
        (
            r#"{"click_id":"c","ts":"2999-01-01T00:00:00Z","offer_id":"o","affiliate_id":"a"}"#,
            DeadReason::TimestampOutOfRange,
        ),
        (
            r#"{"click_id":"c","ts":1793527200000,"offer_id":"o","affiliate_id":"a","country":"DEU"}"#,
            DeadReason::InvalidField,
        ),
    ];
    for (line, want) in cases {
        let got = one_click(line).err().map(|e| e.0);
        assert_eq!(got, Some(*want), "{line}");
    }
    let long = format!(
        r#"{{"click_id":"{}","ts":1793527200000,"offer_id":"o","affiliate_id":"a"}}"#,
        "x".repeat(129)
    );
    assert_eq!(
        one_click(&long).err().map(|e| e.0),
        Some(DeadReason::InvalidField)
    );
}

#[test]
fn conversion_amounts_statuses_and_defaults() {
    let (b, c) = one_conv(
        br#"{"click_id":"c1","external_id":"e1","amount":"12.5","status":"APPROVED","metadata":{"a":[1]}}"#,
    )
    .unwrap();
    assert_eq!(c.amount_micros, 12_500_000);
    assert_eq!(c.status, Status::Approved);
    assert_eq!(b.arena.get(c.currency), "USD");
    assert_eq!(b.arena.get(c.metadata), r#"{"a":[1]}"#);
    assert!(
        (c.ts_ms - now_ms()).abs() < 60_000,
        "ts defaults to arrival time"
    );
    let (b, c) = one_conv(
        br#"{"click_id":"c1","external_id":"e1","amount":3,"status":"Pending","currency":"eur","ts":"2026-11-01T10:00:00Z"}"#,
    )
    .unwrap();
    assert_eq!(c.amount_micros, 3_000_000);
    assert_eq!(c.status, Status::Pending);
    assert_eq!(b.arena.get(c.currency), "EUR");
    assert_eq!(c.ts_ms, 1_793_527_200_000);
}

#[test]
fn conversion_rejections_have_reasons() {
    let base = |extra: &str| {
        format!(r#"{{"click_id":"c1","external_id":"e1","status":"approved"{extra}}}"#)
    };
    let cases: Vec<(Vec<u8>, DeadReason)> = vec![
        (base("").into_bytes(), DeadReason::MissingField),
        (
            base(r#","amount":"abc""#).into_bytes(),
            DeadReason::InvalidField,
        ),
        (
            base(r#","amount":-1"#).into_bytes(),
            DeadReason::InvalidField,
        ),
        (
            base(r#","amount":"NaN""#).into_bytes(),
            DeadReason::InvalidField,
        ),
        (
            base(r#","amount":"inf""#).into_bytes(),
            DeadReason::InvalidField,
        ),
        (
            base(r#","amount":true"#).into_bytes(),
            DeadReason::InvalidField,
        ),
        (
            base(r#","amount":1,"metadata":[1]"#).into_bytes(),
            DeadReason::InvalidField,
        ),
        (
            base(r#","amount":1,"currency":"EURO""#).into_bytes(),
            DeadReason::InvalidField,
        ),
        (
            br#"{"click_id":"c1","external_id":"e1","amount":1,"status":"paid"}"#.to_vec(),
            DeadReason::InvalidField,
        ),
        (
            b"{\"click_id\":\"c\xff\",\"external_id\":\"e\",\"amount\":1,\"status\":\"pending\"}"
                .to_vec(),
            DeadReason::InvalidUtf8,
        ),
        (
            format!("{}{}{}", "{\"metadata\":", "[".repeat(200), "]".repeat(200)).into_bytes(),
            DeadReason::InvalidJson,
        ),
    ];
    for (line, want) in cases {
        let got = one_conv(&line).err().map(|e| e.0);
        assert_eq!(got, Some(want), "{}", String::from_utf8_lossy(&line));
    }
}

/// The fast path must agree with serde on every line: same click or same reason.
#[test]
fn fast_path_agrees_with_serde() {
    use rand::{Rng, SeedableRng};
    let mut lines: Vec<Vec<u8>> = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/clicks.ndjson"
    ))
    .unwrap()
    .split(|b| *b == b'\n')
    .map(<[u8]>::to_vec)
    .collect();
    let cfg = crate::source::generator::GeneratorConfig {
        clicks: 300,
        malformed_rate: 0.2,
        ..Default::default()
    };
    crate::source::generator::generate(&cfg, |s, l| {
        if s == Stream::Clicks {
            lines.push(l.to_vec());
        }
        true
    })
    .unwrap();
    let extra: [&[u8]; 11] = [
        br#"{"click_id":"c","ts":1793527200000,"offer_id":"o","affiliate_id":"a","x":-}"#,
        br#"{"click_id":"c","ts":01793527200000,"offer_id":"o","affiliate_id":"a"}"#,
        br#"{"click_id":"c","ts":1793527200000,"offer_id":"o","affiliate_id":"a","x":1.}"#,
        br#"{"click_id":"c","click_id":"d","ts":1793527200000,"offer_id":"o","affiliate_id":"a"}"#,
        br#"{"click_id":"c\u0041","ts":1793527200000,"offer_id":"o","affiliate_id":"a"}"#,
        br#"{"click_id":"c","ts":null,"offer_id":"o","affiliate_id":"a"}"#,
        br#"{"click_id":"c","ts":1793527200000,"offer_id":"o","affiliate_id":"a","sub1":null,"x":{"y":[1]}}"#,
        br#"{"click_id":"c","ts":1793527200000.0,"offer_id":"o","affiliate_id":"a"}"#,
        br#"{"click_id":"c","ts":1793527200000,"offer_id":7,"affiliate_id":"a"}"#,
        br#"{"click_id":"c","ts":true,"offer_id":"o","affiliate_id":"a"}"#,
        b" {\"click_id\" : \"c\" , \"ts\":1793527200000,\"offer_id\":\"o\",\"affiliate_id\":\"a\"}\t",
    ];
    lines.extend(extra.iter().map(|l| l.to_vec()));
    // Random byte mutations of good lines.
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    for _ in 0..2000 {
        let mut l = lines[rng.random_range(0..lines.len())].clone();
        for _ in 0..rng.random_range(1..4) {
            if l.is_empty() {
                break;
            }
            let at = rng.random_range(0..l.len());
            let alphabet = b"\"{}[]:,0a\\ -nte";
            let byte = alphabet[rng.random_range(0..alphabet.len())];
            match rng.random_range(0..3) {
                0 => l[at] = byte,
                1 => l.insert(at, byte),
                _ => {
                    l.remove(at);
                }
            }
        }
        lines.push(l);
    }
    let fast = decoder();
    let slow = Decoder {
        fast_path: false,
        ..decoder()
    };
    let refs: Vec<&[u8]> = lines.iter().map(|l| l.as_slice()).collect();
    let b = batch(&refs);
    let (fc, fd) = fast.decode_clicks(&b);
    let (sc, sd) = slow.decode_clicks(&b);
    assert_eq!(fc.clicks.len(), sc.clicks.len());
    assert!(fc.clicks.len() > 300, "the mix has plenty of good lines");
    let show = |batch: &ClickBatch, c: &Click| {
        let a = &batch.arena;
        let mut v = vec![a.get(c.click_id).to_string(), c.ts_ms.to_string()];
        for s in [
            c.tenant_id,
            c.offer_id,
            c.affiliate_id,
            c.country,
            c.device,
            c.os,
            c.ip,
            c.user_agent,
            c.referrer,
        ] {
            v.push(format!("{:?}", a.get_opt(s)));
        }
        for s in c.subs {
            v.push(format!("{:?}", a.get_opt(s)));
        }
        v.push(format!(
            "{}/{}/{}/{:?}",
            c.click_key, c.dims_hash, c.extras_hash, c.visitor_hash
        ));
        v
    };
    for (f, s) in fc.clicks.iter().zip(&sc.clicks) {
        assert_eq!(show(&fc, f), show(&sc, s));
    }
    let reasons = |d: &[DeadLetter]| {
        d.iter()
            .map(|x| (x.position.line, x.reason))
            .collect::<Vec<_>>()
    };
    assert_eq!(reasons(&fd), reasons(&sd));
}

/// `{"click_id":…,"x":[[…]]}` / a conversion whose `metadata` holds `[[…]]`, nested
/// `depth` levels deep in all (the record's own object is level 1).
fn nested(depth: usize) -> (String, String) {
    let arrays = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    (
        format!(
            r#"{{"click_id":"c","ts":1793527200000,"offer_id":"o","affiliate_id":"a","x":{}}}"#,
            arrays(depth - 1)
        ),
        format!(
            r#"{{"click_id":"c","external_id":"e","amount":1,"status":"approved","metadata":{{"a":{}}}}}"#,
            arrays(depth - 2)
        ),
    )
}

/// Nesting up to `limits.max_json_depth` is accepted (and stored as sent), one level more
/// is `invalid_json`, and so are 3 000 000 levels — refused by an iterative count, without
/// a deep stack anywhere (this test runs on a 2 MiB test thread).
#[test]
fn nesting_deeper_than_the_limit_is_invalid_json() {
    let d = Decoder::new(
        Arc::from("t"),
        DecodeLimits {
            max_record_bytes: 8 << 20,
            ..DecodeLimits::default()
        },
    );
    assert_eq!(d.limits.max_json_depth, 128);
    for fast_path in [true, false] {
        let d = Decoder {
            fast_path,
            ..d.clone()
        };
        let (click, conv) = nested(128);
        let (b, dead) = d.decode_clicks(&batch(&[click.as_bytes()]));
        assert_eq!((b.clicks.len(), dead.len()), (1, 0));
        let (b, dead) = d.decode_conversions(&batch(&[conv.as_bytes()]));
        assert!(dead.is_empty(), "{:?}", dead.first().map(|x| &x.detail));
        let metadata = b.arena.get(b.conversions[0].metadata);
        assert_eq!(metadata.len(), 6 + 2 * 126);
        for depth in [129, 3_000_000] {
            let (click, conv) = nested(depth);
            for (line, stream) in [(click, Stream::Clicks), (conv, Stream::Conversions)] {
                let raw = batch(&[line.as_bytes()]);
                let dead = match stream {
                    Stream::Clicks => d.decode_clicks(&raw).1,
                    Stream::Conversions => d.decode_conversions(&raw).1,
                };
                assert_eq!(dead.len(), 1, "{stream} at depth {depth}");
                assert_eq!(dead[0].reason, DeadReason::InvalidJson);
                assert_eq!(
                    dead[0].detail,
                    "nested deeper than 128 levels (limits.max_json_depth)"
                );
                assert_eq!(dead[0].raw, line.as_bytes());
            }
        }
    }
    // A lower limit; brackets inside strings (escaped quotes too) are not nesting.
    let d = Decoder::new(
        Arc::from("t"),
        DecodeLimits {
            max_json_depth: 3,
            ..DecodeLimits::default()
        },
    );
    let ok = r#"{"click_id":"c","external_id":"e","amount":1,"status":"approved","metadata":{"a":["[[[\"{{{{"],"b":"\\"}}"#;
    let (b, dead) = d.decode_conversions(&batch(&[ok.as_bytes()]));
    assert_eq!((b.conversions.len(), dead.len()), (1, 0));
    let (_, conv) = nested(4);
    let (_, dead) = d.decode_conversions(&batch(&[conv.as_bytes()]));
    assert_eq!(dead[0].reason, DeadReason::InvalidJson);
    assert!(nests_deeper_than(b"[[[[", 3));
    assert!(!nests_deeper_than(b"[[[]]][[[]]]", 3));
    assert!(
        !nests_deeper_than(br#"[" [[ \"#, 1),
        "a string ending in a backslash"
    );
}

/// A record longer than the limit keeps its first KiB (cut at a character) in the dead
/// letter, and the detail names its length — also when the reader kept only that head of
/// a much longer line (`RawRecord::len`).
#[test]
fn oversize_dead_letters_keep_the_head_and_the_true_length() {
    let d = Decoder::new(
        Arc::from("t"),
        DecodeLimits {
            max_record_bytes: 2000,
            ..DecodeLimits::default()
        },
    );
    // 3 000 bytes of two-byte characters after a 13-byte start: the 1024-byte cut falls
    // inside a character.
    let line = format!(r#"{{"click_id":"{}"}}"#, "é".repeat(1500));
    let (_, dead) = d.decode_clicks(&batch(&[line.as_bytes()]));
    assert_eq!(dead[0].reason, DeadReason::Oversize);
    assert_eq!(dead[0].raw.len(), 1023);
    assert!(line.as_bytes().starts_with(&dead[0].raw));
    assert!(std::str::from_utf8(&dead[0].raw).is_ok());
    assert!(
        dead[0]
            .detail
            .starts_with("record is 3015 bytes, limit is 2000")
    );
    // What the file reader hands over for a 300 MB line: its head and its length.
    let mut raw = batch(&[&line.as_bytes()[..1024]]);
    raw.records[0].len = 300_000_000;
    let (_, dead) = d.decode_conversions(&raw);
    assert_eq!(dead[0].reason, DeadReason::Oversize);
    assert_eq!(dead[0].raw.len(), 1023);
    assert!(
        dead[0]
            .detail
            .starts_with("record is 300000000 bytes, limit is 2000"),
        "{}",
        dead[0].detail
    );
}

#[test]
fn oversize_records_are_not_parsed() {
    let d = Decoder::new(
        Arc::from("t"),
        DecodeLimits {
            max_record_bytes: 10,
            ..DecodeLimits::default()
        },
    );
    let (b, dead) = d.decode_clicks(&batch(&[b"{\"click_id\":\"abcdefgh\"}", b"  "]));
    assert!(b.clicks.is_empty());
    assert_eq!(
        dead.len(),
        1,
        "blank line is skipped, long line dead-lettered"
    );
    assert_eq!(dead[0].reason, DeadReason::Oversize);
}
