//! From a request to records: splitting a body, building a postback from a query string,
//! checking each record with the pipeline's own decoder, and binding records to the key's
//! tenant.
//!
//! The door and the pipeline judge a record the same way because they run the same decoder:
//! what the door answers 400 for is exactly what the pipeline sends to the dead letters.

use std::sync::Arc;

use crate::event::Stream;
use crate::event::decode::Decoder;
use crate::raw::{Position, RawBatch};

/// One refused record of a request (the 400 answer lists them).
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct Rejected {
    /// 0-based index of the record in the request.
    pub index: usize,
    pub reason: &'static str,
    pub detail: String,
}

/// What checking a request's records gave.
#[derive(Debug, Default)]
pub struct Checked {
    /// Every record, in order, as it goes into the log: valid ones bound to the tenant, bad ones
    /// as sent (the pipeline dead-letters them with the same reason).
    pub records: Vec<Vec<u8>>,
    pub rejected: Vec<Rejected>,
}

/// A record claims a tenant that is not its key's.
#[derive(Debug, PartialEq)]
pub struct WrongTenant {
    pub index: usize,
    pub claimed: String,
}

/// The records of a body: one JSON value (pretty-printed or not), or NDJSON (blank lines
/// skipped).
pub fn split_body(body: &[u8]) -> Vec<&[u8]> {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() {
        return Vec::new();
    }
    if trimmed.contains(&b'\n')
        && serde_json::from_slice::<&serde_json::value::RawValue>(trimmed).is_ok()
    {
        return vec![trimmed];
    }
    trimmed
        .split(|&b| b == b'\n')
        .map(|l| l.trim_ascii())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The conversion fields a postback URL may carry (the input contract's names).
const POSTBACK_FIELDS: &[&str] = &[
    "click_id",
    "external_id",
    "amount",
    "status",
    "currency",
    "ts",
    "tenant_id",
    "product_id",
    "order_id",
    "customer_id",
];

/// A conversion record from a postback URL's query parameters. `amount` comes as text and is
/// written as a JSON number when it is one (the decoder judges it either way); parameters
/// that are not conversion fields (`api_key`, tracking extras) are left out.
pub fn postback_record(query: &[(String, String)]) -> Vec<u8> {
    let mut obj = serde_json::Map::new();
    for (k, v) in query {
        if !POSTBACK_FIELDS.contains(&k.as_str()) || obj.contains_key(k) {
            continue;
        }
        let value = match k.as_str() {
            "amount" => match v.trim().parse::<serde_json::Number>() {
                Ok(n) => serde_json::Value::Number(n),
                Err(_) => serde_json::Value::String(v.clone()),
            },
            "ts" if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => v
                .parse::<i64>()
                .map(|n| serde_json::Value::Number(n.into()))
                .unwrap_or_else(|_| serde_json::Value::String(v.clone())),
            _ => serde_json::Value::String(v.clone()),
        };
        obj.insert(k.clone(), value);
    }
    serde_json::to_vec(&obj).unwrap_or_default()
}

/// Decodes `records` as `stream` and returns, per record, `Ok(tenant)` or the refusal.
fn judge(decoder: &Decoder, stream: Stream, records: &[&[u8]]) -> Vec<Result<String, Rejected>> {
    let mut batch = RawBatch::with_capacity(records.iter().map(|r| r.len()).sum(), records.len());
    for (i, r) in records.iter().enumerate() {
        batch.push_line(
            r,
            Position {
                line: i as u64,
                offset: 0,
            },
        );
    }
    let mut out: Vec<Result<String, Rejected>> = (0..records.len())
        .map(|i| {
            Err(Rejected {
                index: i,
                reason: "invalid",
                detail: String::new(),
            })
        })
        .collect();
    let dead = match stream {
        Stream::Clicks => {
            let (b, dead) = decoder.decode_clicks(&batch);
            for c in &b.clicks {
                out[c.position.line as usize] = Ok(b.arena.get(c.tenant_id).to_string());
            }
            dead
        }
        Stream::Conversions => {
            let (b, dead) = decoder.decode_conversions(&batch);
            for c in &b.conversions {
                out[c.position.line as usize] = Ok(b.arena.get(c.tenant_id).to_string());
            }
            dead
        }
    };
    for d in dead {
        let i = d.position.line as usize;
        out[i] = Err(Rejected {
            index: i,
            reason: d.reason.as_str(),
            detail: d.detail,
        });
    }
    out
}

/// Which of the fields the door may fill in a record has.
#[derive(serde::Deserialize)]
struct Present<'a> {
    #[serde(borrow, default)]
    tenant_id: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    ts: Option<&'a serde_json::value::RawValue>,
}

/// Checks every record. Valid records are completed before they are logged: with `tenant`
/// (the key's), one without `tenant_id` gets it and one that names another tenant (even "")
/// refuses the whole request; a conversion without `ts` gets the time it was received
/// (`now_ms`), so a replay after a crash gives it the same time, not the replay's.
pub fn check(
    decoder: &Decoder,
    stream: Stream,
    records: &[&[u8]],
    tenant: Option<&str>,
    now_ms: i64,
) -> Result<Checked, WrongTenant> {
    let verdicts = judge(decoder, stream, records);
    let mut checked = Checked::default();
    for (i, (record, verdict)) in records.iter().zip(verdicts).enumerate() {
        // Fields of an object (`None`: not a JSON object, or a duplicate key — never valid,
        // whenever it is decoded).
        let present: Option<Present<'_>> = serde_json::from_slice(record).ok();
        // The tenant is checked on every object, valid today or not: a record refused now
        // (say, `ts` too far ahead) may be valid when the pipeline decodes it later.
        if let (
            Some(t),
            Some(Present {
                tenant_id: Some(named),
                ..
            }),
        ) = (tenant, &present)
        {
            let named: Option<String> = serde_json::from_str(named.get()).ok();
            if named.as_deref() != Some(t) {
                return Err(WrongTenant {
                    index: i,
                    claimed: named.unwrap_or_default(),
                });
            }
        }
        let mut add: Vec<(&str, String)> = Vec::new();
        if let Some(p) = &present {
            if let (Some(t), None) = (tenant, p.tenant_id) {
                add.push(("tenant_id", serde_json::to_string(t).unwrap_or_default()));
            }
            if stream == Stream::Conversions && p.ts.is_none() {
                add.push(("ts", now_ms.to_string()));
            }
        }
        let completed = if add.is_empty() {
            record.to_vec()
        } else {
            with_fields(record, &add)
        };
        match verdict {
            Err(r) => {
                checked.rejected.push(r);
                checked.records.push(completed);
            }
            Ok(claimed) => {
                if !add.is_empty() {
                    // The completed record must still decode, to the key's tenant.
                    match judge(decoder, stream, &[&completed]).pop() {
                        Some(Ok(now)) if tenant.is_none_or(|t| now == t) => {}
                        _ => return Err(WrongTenant { index: i, claimed }),
                    }
                }
                checked.records.push(completed);
            }
        }
    }
    Ok(checked)
}

/// `record` (a JSON object) with `fields` (name, JSON text) as its first keys.
fn with_fields(record: &[u8], fields: &[(&str, String)]) -> Vec<u8> {
    let body = record.trim_ascii();
    let rest = body.strip_prefix(b"{").unwrap_or(body);
    let mut out = Vec::with_capacity(record.len() + 64);
    out.push(b'{');
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        out.extend_from_slice(value.as_bytes());
    }
    if rest.trim_ascii_start().first() != Some(&b'}') {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    out
}

/// The source name dead letters of a request carry.
pub fn source_of(request_id: &str) -> Arc<str> {
    Arc::from(format!("http:{request_id}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode::DecodeLimits;

    fn decoder() -> Decoder {
        Decoder::new(Arc::from("http"), DecodeLimits::default())
    }

    const NOW: i64 = 1_790_000_000_000;

    const CLICK: &str =
        r#"{"click_id":"c1","ts":"2026-11-01T10:00:00Z","offer_id":"o","affiliate_id":"a"}"#;

    #[test]
    fn bodies_split_into_records() {
        assert_eq!(split_body(b"  \n"), Vec::<&[u8]>::new());
        assert_eq!(split_body(b"{\"a\":1}\n\n{\"b\":2}\n").len(), 2);
        // One pretty-printed object is one record.
        assert_eq!(split_body(b"{\n  \"a\": 1\n}\n").len(), 1);
    }

    #[test]
    fn records_are_bound_to_the_key_tenant_and_another_tenant_is_refused() {
        let d = decoder();
        let other = CLICK.replace("{", r#"{"tenant_id":"globex","#);
        let own = CLICK.replace("{", r#"{"tenant_id":"acme","#);
        let r = check(
            &d,
            Stream::Clicks,
            &[CLICK.as_bytes(), own.as_bytes(), b"nope"],
            Some("acme"),
            NOW,
        )
        .unwrap();
        assert_eq!(r.records.len(), 3);
        assert!(
            String::from_utf8_lossy(&r.records[0]).starts_with(r#"{"tenant_id":"acme","click_id""#)
        );
        assert_eq!(r.records[1], own.as_bytes());
        assert_eq!(r.rejected.len(), 1);
        assert_eq!(
            (r.rejected[0].index, r.rejected[0].reason),
            (2, "invalid_json")
        );
        let e = check(
            &d,
            Stream::Clicks,
            &[own.as_bytes(), other.as_bytes()],
            Some("acme"),
            NOW,
        )
        .unwrap_err();
        assert_eq!(
            e,
            WrongTenant {
                index: 1,
                claimed: "globex".into()
            }
        );
        // An explicit empty tenant is not the key's either.
        let empty = CLICK.replace("{", r#"{"tenant_id":"","#);
        assert!(check(&d, Stream::Clicks, &[empty.as_bytes()], Some("acme"), NOW).is_err());
        // So is a record the decoder refuses today but names another tenant (it could be
        // valid when the pipeline decodes it).
        let refused_other = r#"{"tenant_id":"globex","click_id":"c9"}"#;
        assert!(
            check(
                &d,
                Stream::Clicks,
                &[refused_other.as_bytes()],
                Some("acme"),
                NOW
            )
            .is_err()
        );
        // Without keys the record's own tenant stands.
        assert!(check(&d, Stream::Clicks, &[other.as_bytes()], None, NOW).is_ok());
    }

    #[test]
    fn a_postback_query_becomes_a_conversion_the_decoder_takes() {
        let q: Vec<(String, String)> = [
            ("click_id", "c1"),
            ("external_id", "o-9"),
            ("amount", "12.50"),
            ("status", "approved"),
            ("api_key", "secret"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let rec = postback_record(&q);
        let text = String::from_utf8(rec.clone()).unwrap();
        assert!(!text.contains("secret"), "{text}");
        let r = check(&decoder(), Stream::Conversions, &[&rec], Some("acme"), NOW).unwrap();
        assert!(r.rejected.is_empty(), "{:?}", r.rejected);
        // Bound to the tenant and to the time it was received.
        let logged = String::from_utf8(r.records[0].clone()).unwrap();
        assert!(
            logged.starts_with(&format!(r#"{{"tenant_id":"acme","ts":{NOW},"#)),
            "{logged}"
        );
        let bad = postback_record(&[("click_id".into(), "c1".into())]);
        let r = check(&decoder(), Stream::Conversions, &[&bad], None, NOW).unwrap();
        assert_eq!(r.rejected.len(), 1);
    }
}
