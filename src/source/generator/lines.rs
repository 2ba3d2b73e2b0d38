//! The records themselves: one click or postback as an NDJSON line in the input contract's
//! shape (mixed timestamp forms, realistic devices, agents and referrers), the statuses a
//! conversion starts in, the id mixer, and the ways a line is broken on purpose for the
//! decoder's dead-letter paths. [`super::generate_paced`] decides *what* to emit and *when*;
//! this file decides what it looks like.

use std::io::Write;

use rand::Rng;
use rand::rngs::SmallRng;

use crate::event::Stream;
use crate::event::time::format_ms;

const COUNTRIES: &[&str] = &["US", "DE", "GB", "FR", "BR", "IN", "ES", "IT", "CA", "PL"];
/// Currencies of `foreign_currency_rate` postbacks (the default pipeline has rates for the
/// first three; JPY has none, to show `fx_missing`).
pub(super) const FOREIGN_CURRENCIES: &[&str] = &["EUR", "GBP", "BRL", "JPY"];
const DEVICES: &[&str] = &["mobile", "desktop", "tablet"];
const OSES: &[&str] = &["android", "ios", "windows", "macos", "linux"];
const AGENTS: &[&str] = &[
    "Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 Chrome/131.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 Version/18.1 Safari/605.1.15",
];
const REFERRERS: &[&str] = &[
    "https://news.example.com/",
    "https://blog.example.org/deals",
    "https://social.example.net/feed",
];

pub(super) fn pick_first_status(rng: &mut SmallRng) -> &'static str {
    let r: f64 = rng.random();
    if r < 0.6 {
        "pending"
    } else if r < 0.95 {
        "approved"
    } else {
        "rejected"
    }
}

/// SplitMix64 finaliser: turns counters into well-spread ids.
pub(super) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Writes `ts_ms` in one of the two timestamp forms of the input contract: an RFC 3339 string
/// or integer epoch milliseconds (the callers mix the two).
fn write_ts(out: &mut Vec<u8>, ts_ms: i64, rfc3339: bool) {
    if rfc3339 {
        out.push(b'"');
        out.extend_from_slice(format_ms(ts_ms).as_bytes());
        out.push(b'"');
    } else {
        let _ = write!(out, "{ts_ms}");
    }
}

pub(super) fn click_line(
    rng: &mut SmallRng,
    click_id: &str,
    ts: i64,
    tenant: usize,
    offer: u64,
    affiliate: u64,
    ip: u32,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(400);
    let _ = write!(out, r#"{{"click_id":"{click_id}","ts":"#);
    write_ts(&mut out, ts, rng.random_bool(0.25));
    let [a, b, c, d] = ip.to_be_bytes();
    let _ = write!(
        out,
        r#","tenant_id":"t{tenant}","offer_id":"o{offer}","affiliate_id":"a{affiliate}","country":"{}","device":"{}","os":"{}","ip":"{a}.{b}.{c}.{d}","user_agent":"{}","referrer":"{}","sub1":"cmp{}","sub2":"pl{}"}}"#,
        COUNTRIES[rng.random_range(0..COUNTRIES.len())],
        DEVICES[rng.random_range(0..DEVICES.len())],
        OSES[rng.random_range(0..OSES.len())],
        AGENTS[rng.random_range(0..AGENTS.len())],
        REFERRERS[rng.random_range(0..REFERRERS.len())],
        affiliate % 7,
        rng.random_range(0..20u32),
    );
    out
}

#[allow(clippy::too_many_arguments)]
pub(super) fn conversion_line(
    click_id: &str,
    external_id: &str,
    tenant: usize,
    amount_cents: u64,
    status: &str,
    conv_ts: i64,
    sent_ms: i64,
    offer: u64,
    currency: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(300);
    let _ = write!(
        out,
        r#"{{"click_id":"{click_id}","external_id":"{external_id}","tenant_id":"t{tenant}","amount":"{}.{:02}","status":"{status}","currency":"{currency}","ts":"#,
        amount_cents / 100,
        amount_cents % 100
    );
    write_ts(&mut out, conv_ts, conv_ts % 2 == 0);
    let _ = write!(
        out,
        r#","product_id":"p{offer}","order_id":"{external_id}","customer_id":"u{}","metadata":{{"sent_at":{sent_ms}}}}}"#,
        mix(amount_cents) % 100_000
    );
    out
}

/// Turns a good line into one of the malformed kinds the decoder must dead-letter.
pub(super) fn malform(rng: &mut SmallRng, stream: Stream, line: &[u8]) -> Vec<u8> {
    match rng.random_range(0..4u8) {
        // Truncated JSON.
        0 => line[..line.len() / 2].to_vec(),
        // Invalid UTF-8 inside a string.
        1 => {
            let mut l = line.to_vec();
            if let Some(p) = l.iter().position(|&b| b == b':') {
                l.insert(p + 2, 0xFF);
            }
            l
        }
        // A required field missing.
        2 => {
            let text = String::from_utf8_lossy(line);
            let field = match stream {
                Stream::Clicks => "\"click_id\"",
                Stream::Conversions => "\"external_id\"",
            };
            text.replacen(field, "\"renamed_id\"", 1).into_bytes()
        }
        // A mistyped field.
        _ => {
            let text = String::from_utf8_lossy(line);
            let field = match stream {
                Stream::Clicks => "\"offer_id\":\"",
                Stream::Conversions => "\"status\":\"",
            };
            text.replacen(field, "\"offer_id\":[\"", 1)
                .replacen("\"status\":[\"", "\"status\":7,\"x\":\"", 1)
                .into_bytes()
        }
    }
}
