//! NDJSON → typed events, and everything that is wrong with a record → a dead letter.
//!
//! Sits between the sources (which produce [`RawBatch`]es of lines) and the state stage. Decoding
//! runs on a thread per stream so the two streams decode in parallel. Every line ends up either
//! as an event in the batch or as a [`DeadLetter`] with a reason; nothing is dropped silently
//! (blank lines are the one exception: they carry no record).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_json::value::RawValue;

use super::keys;
use super::time::{now_ms, parse_rfc3339_ms};
use super::{
    Arena, Click, ClickBatch, Conversion, ConversionBatch, DeadLetter, DeadReason, Position,
    Status, Stream,
};
use crate::raw::{OVERSIZE_HEAD_BYTES, RawBatch};

/// Bounds a record must respect; set from the pipeline's `[limits]` table.
#[derive(Debug, Clone)]
pub struct DecodeLimits {
    /// Records longer than this are dead-lettered as `oversize` without being parsed; the
    /// dead letter keeps their first [`OVERSIZE_HEAD_BYTES`] and the detail their length.
    pub max_record_bytes: usize,
    /// Records whose arrays and objects nest deeper than this (the record's own object is
    /// level 1) are dead-lettered as `invalid_json`, wherever the nesting is (`metadata`, an
    /// unknown field).
    pub max_json_depth: usize,
    /// Earliest accepted event time (epoch ms).
    pub min_ts_ms: i64,
    /// How far ahead of the wall clock an event time may be (ms).
    pub max_future_ms: i64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_record_bytes: 64 * 1024,
            max_json_depth: 128,
            // 2000-01-01T00:00:00Z
            min_ts_ms: 946_684_800_000,
            max_future_ms: 7 * 86_400_000,
        }
    }
}

/// Decodes one stream's raw lines. Cheap to clone; one per decode thread.
#[derive(Debug, Clone)]
pub struct Decoder {
    pub limits: DecodeLimits,
    pub source: Arc<str>,
    /// Try [`super::fast::scan_flat`] before `serde_json` (on by default; off only to compare).
    pub fast_path: bool,
}

/// Reason + human-readable detail of a rejected record.
type Reject = (DeadReason, String);

fn reject(reason: DeadReason, detail: impl Into<String>) -> Reject {
    (reason, detail.into())
}

/// A JSON string, borrowed from the input line unless it contains escapes.
///
/// serde's `#[serde(borrow)]` does not reach through `Option<Cow<str>>` (it would allocate a
/// `String` for every field), hence this small wrapper.
struct Text<'a>(Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// A timestamp as it appears in the input: string or integer milliseconds.
enum RawTs<'a> {
    Text(Cow<'a, str>),
    Millis(i64),
    Other(String),
}

impl<'de: 'a, 'a> Deserialize<'de> for RawTs<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawTs<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an RFC 3339 string or integer epoch milliseconds")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(RawTs::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawTs::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(RawTs::Millis(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(i64::try_from(v)
                    .map(RawTs::Millis)
                    .unwrap_or_else(|_| RawTs::Other(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(RawTs::Other(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(RawTs::Other(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// An amount as it appears in the input: a JSON number or a numeric string.
enum RawAmount<'a> {
    Number(f64),
    Text(Cow<'a, str>),
    Other(&'static str),
}

impl<'de: 'a, 'a> Deserialize<'de> for RawAmount<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawAmount<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number or a numeric string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(RawAmount::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawAmount::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(RawAmount::Number(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(RawAmount::Number(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(RawAmount::Number(v))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(RawAmount::Other("boolean"))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct RawClick<'a> {
    #[serde(borrow)]
    click_id: Option<Text<'a>>,
    #[serde(borrow)]
    ts: Option<RawTs<'a>>,
    #[serde(borrow)]
    offer_id: Option<Text<'a>>,
    #[serde(borrow)]
    affiliate_id: Option<Text<'a>>,
    #[serde(borrow)]
    tenant_id: Option<Text<'a>>,
    #[serde(borrow)]
    country: Option<Text<'a>>,
    #[serde(borrow)]
    device: Option<Text<'a>>,
    #[serde(borrow)]
    os: Option<Text<'a>>,
    #[serde(borrow)]
    ip: Option<Text<'a>>,
    #[serde(borrow)]
    user_agent: Option<Text<'a>>,
    #[serde(borrow)]
    referrer: Option<Text<'a>>,
    #[serde(borrow)]
    sub1: Option<Text<'a>>,
    #[serde(borrow)]
    sub2: Option<Text<'a>>,
    #[serde(borrow)]
    sub3: Option<Text<'a>>,
    #[serde(borrow)]
    sub4: Option<Text<'a>>,
    #[serde(borrow)]
    sub5: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct RawConversion<'a> {
    #[serde(borrow)]
    click_id: Option<Text<'a>>,
    #[serde(borrow)]
    external_id: Option<Text<'a>>,
    #[serde(borrow)]
    amount: Option<RawAmount<'a>>,
    #[serde(borrow)]
    status: Option<Text<'a>>,
    #[serde(borrow)]
    currency: Option<Text<'a>>,
    #[serde(borrow)]
    ts: Option<RawTs<'a>>,
    #[serde(borrow)]
    tenant_id: Option<Text<'a>>,
    #[serde(borrow)]
    product_id: Option<Text<'a>>,
    #[serde(borrow)]
    order_id: Option<Text<'a>>,
    #[serde(borrow)]
    customer_id: Option<Text<'a>>,
    #[serde(borrow)]
    metadata: Option<&'a RawValue>,
}

const MAX_ID_BYTES: usize = 128;

fn required<'a>(v: &'a Option<Text<'a>>, field: &str) -> Result<&'a str, Reject> {
    match v.as_deref() {
        Some(s) => Ok(s),
        None => Err(reject(
            DeadReason::MissingField,
            format!("missing required field `{field}`"),
        )),
    }
}

fn id_field<'a>(v: &'a Option<Text<'a>>, field: &str) -> Result<&'a str, Reject> {
    let s = required(v, field)?;
    if s.is_empty() || s.len() > MAX_ID_BYTES {
        return Err(reject(
            DeadReason::InvalidField,
            format!(
                "`{field}` must be 1–{MAX_ID_BYTES} bytes, got {} bytes",
                s.len()
            ),
        ));
    }
    Ok(s)
}

/// ISO 3166-1 alpha-2 (two ASCII letters), normalised to upper case. Empty counts as absent.
fn country_field(v: &Option<Text<'_>>) -> Result<Option<[u8; 2]>, Reject> {
    match v.as_deref() {
        None | Some("") => Ok(None),
        Some(s) if s.len() == 2 && s.bytes().all(|b| b.is_ascii_alphabetic()) => {
            let b = s.as_bytes();
            Ok(Some([b[0].to_ascii_uppercase(), b[1].to_ascii_uppercase()]))
        }
        Some(s) => Err(reject(
            DeadReason::InvalidField,
            format!("`country` must be an ISO 3166-1 alpha-2 code, got {s:?}"),
        )),
    }
}

/// ISO 4217 (three ASCII letters), normalised to upper case; absent → `USD`.
fn currency_field(v: &Option<Text<'_>>) -> Result<[u8; 3], Reject> {
    match v.as_deref() {
        None | Some("") => Ok(*b"USD"),
        Some(s) if s.len() == 3 && s.bytes().all(|b| b.is_ascii_alphabetic()) => {
            let b = s.as_bytes();
            Ok([
                b[0].to_ascii_uppercase(),
                b[1].to_ascii_uppercase(),
                b[2].to_ascii_uppercase(),
            ])
        }
        Some(s) => Err(reject(
            DeadReason::InvalidField,
            format!("`currency` must be an ISO 4217 code, got {s:?}"),
        )),
    }
}

/// Converts an amount to micro-units; NaN, infinities, negatives and absurd sizes are refused.
fn amount_field(v: &Option<RawAmount<'_>>) -> Result<i64, Reject> {
    let value = match v {
        None => {
            return Err(reject(
                DeadReason::MissingField,
                "missing required field `amount`",
            ));
        }
        Some(RawAmount::Number(n)) => *n,
        Some(RawAmount::Text(s)) => s.trim().parse::<f64>().map_err(|_| {
            reject(
                DeadReason::InvalidField,
                format!("`amount` is not a number: {s:?}"),
            )
        })?,
        Some(RawAmount::Other(kind)) => {
            return Err(reject(
                DeadReason::InvalidField,
                format!("`amount` must be a number or numeric string, got a {kind}"),
            ));
        }
    };
    if !value.is_finite() {
        return Err(reject(
            DeadReason::InvalidField,
            format!("`amount` must be finite, got {value}"),
        ));
    }
    if value < 0.0 {
        return Err(reject(
            DeadReason::InvalidField,
            format!("`amount` must not be negative, got {value}"),
        ));
    }
    // 9.2e12 units of currency fits i64 micro-units; anything bigger is a data error.
    if value > 9.0e12 {
        return Err(reject(
            DeadReason::InvalidField,
            format!("`amount` is implausibly large: {value}"),
        ));
    }
    Ok((value * 1_000_000.0).round() as i64)
}

/// Optional free-text field: absent or JSON null → absent span.
fn opt(arena: &mut Arena, v: &Option<Text<'_>>) -> super::Span {
    arena.push_opt(v.as_deref())
}

impl Decoder {
    pub fn new(source: Arc<str>, limits: DecodeLimits) -> Decoder {
        Decoder {
            limits,
            source,
            fast_path: true,
        }
    }

    /// `now` is the wall clock, read once per batch: the default conversion time and the
    /// upper bound of accepted times.
    fn ts_field(&self, v: &Option<RawTs<'_>>, default_now: bool, now: i64) -> Result<i64, Reject> {
        let ms = match v {
            None if default_now => return Ok(now),
            None => {
                return Err(reject(
                    DeadReason::MissingField,
                    "missing required field `ts`",
                ));
            }
            Some(RawTs::Millis(ms)) => *ms,
            Some(RawTs::Text(s)) => parse_rfc3339_ms(s).ok_or_else(|| {
                reject(
                    DeadReason::InvalidField,
                    format!("`ts` is not RFC 3339 or epoch milliseconds: {s:?}"),
                )
            })?,
            Some(RawTs::Other(s)) => {
                return Err(reject(
                    DeadReason::InvalidField,
                    format!(
                        "`ts` must be an RFC 3339 string or integer epoch milliseconds, got {s}"
                    ),
                ));
            }
        };
        let latest = now.saturating_add(self.limits.max_future_ms);
        if ms < self.limits.min_ts_ms || ms > latest {
            return Err(reject(
                DeadReason::TimestampOutOfRange,
                format!(
                    "`ts` {} is outside the accepted range {} .. now+{}s",
                    super::time::format_ms(ms),
                    super::time::format_ms(self.limits.min_ts_ms),
                    self.limits.max_future_ms / 1000
                ),
            ));
        }
        Ok(ms)
    }

    /// Checks size and UTF-8, returning the line as text. `len` is the record's length in
    /// its stream, of which `line` may be only the head (see [`crate::source::RawRecord`]).
    fn precheck<'a>(&self, line: &'a [u8], len: u64) -> Result<&'a str, Reject> {
        let len = len.max(line.len() as u64);
        if len > self.limits.max_record_bytes as u64 {
            return Err(reject(
                DeadReason::Oversize,
                format!(
                    "record is {len} bytes, limit is {}; raw holds at most its first \
                     {OVERSIZE_HEAD_BYTES} bytes",
                    self.limits.max_record_bytes
                ),
            ));
        }
        std::str::from_utf8(line).map_err(|e| {
            reject(
                DeadReason::InvalidUtf8,
                format!("invalid UTF-8 at byte {}", e.valid_up_to()),
            )
        })
    }

    /// Refuses text whose arrays and objects nest deeper than `limits.max_json_depth`.
    fn depth_check(&self, text: &str) -> Result<(), Reject> {
        let limit = self.limits.max_json_depth;
        if nests_deeper_than(text.as_bytes(), limit) {
            return Err(reject(
                DeadReason::InvalidJson,
                format!("nested deeper than {limit} levels (limits.max_json_depth)"),
            ));
        }
        Ok(())
    }

    /// A dead letter with the record's bytes (of an oversize record, its head).
    fn dead(&self, stream: Stream, pos: Position, line: &[u8], r: Reject) -> DeadLetter {
        let raw = match r.0 {
            DeadReason::Oversize => head(line, OVERSIZE_HEAD_BYTES),
            _ => line,
        };
        DeadLetter {
            reason: r.0,
            detail: r.1,
            stream,
            source: self.source.clone(),
            position: pos,
            raw: raw.to_vec(),
        }
    }

    fn decode_click_into(
        &self,
        line: &[u8],
        len: u64,
        now: i64,
        arena: &mut Arena,
    ) -> Result<Click, Reject> {
        let text = self.precheck(line, len)?;
        let fast = if self.fast_path {
            fast_click(text)
        } else {
            None
        };
        let raw: RawClick = match fast {
            // Flat: one level deep.
            Some(raw) => raw,
            None => {
                self.depth_check(text)?;
                serde_json::from_str(text).map_err(json_reject)?
            }
        };
        let click_id = id_field(&raw.click_id, "click_id")?;
        let ts_ms = self.ts_field(&raw.ts, false, now)?;
        let offer_id = required(&raw.offer_id, "offer_id")?;
        let affiliate_id = required(&raw.affiliate_id, "affiliate_id")?;
        let country = country_field(&raw.country)?;
        let country = match &country {
            Some(c) => arena.push(std::str::from_utf8(c).unwrap_or_default()),
            None => super::Span::NONE,
        };
        let tenant_id = raw.tenant_id.as_deref().unwrap_or("");
        let mut click = Click {
            click_id: arena.push(click_id),
            ts_ms,
            tenant_id: arena.push(tenant_id),
            offer_id: arena.push(offer_id),
            affiliate_id: arena.push(affiliate_id),
            country,
            device: opt(arena, &raw.device),
            os: opt(arena, &raw.os),
            ip: opt(arena, &raw.ip),
            user_agent: opt(arena, &raw.user_agent),
            referrer: opt(arena, &raw.referrer),
            subs: [
                opt(arena, &raw.sub1),
                opt(arena, &raw.sub2),
                opt(arena, &raw.sub3),
                opt(arena, &raw.sub4),
                opt(arena, &raw.sub5),
            ],
            click_key: keys::click_key(click_id),
            dims_hash: 0,
            extras_hash: 0,
            visitor_hash: None,
            position: Position::default(),
        };
        click.dims_hash = keys::fields_hash(
            &[
                click.tenant_id,
                click.offer_id,
                click.affiliate_id,
                click.country,
            ]
            .map(|s| arena.get_opt(s)),
        );
        click.extras_hash = keys::fields_hash(
            &[
                click.device,
                click.subs[0],
                click.subs[1],
                click.subs[2],
                click.subs[3],
                click.subs[4],
            ]
            .map(|s| arena.get_opt(s)),
        );
        click.visitor_hash = match raw.ip.as_deref() {
            None | Some("") => None,
            Some(ip) => Some(keys::visitor_hash(tenant_id, offer_id, ip)),
        };
        Ok(click)
    }

    fn decode_conversion_into(
        &self,
        line: &[u8],
        len: u64,
        pos: Position,
        now: i64,
        arena: &mut Arena,
    ) -> Result<Conversion, Reject> {
        let text = self.precheck(line, len)?;
        self.depth_check(text)?;
        let raw: RawConversion = serde_json::from_str(text).map_err(json_reject)?;
        let click_id = id_field(&raw.click_id, "click_id")?;
        let external_id = id_field(&raw.external_id, "external_id")?;
        let amount_micros = amount_field(&raw.amount)?;
        let status_text = required(&raw.status, "status")?;
        let status = Status::parse(status_text).ok_or_else(|| {
            reject(
                DeadReason::InvalidField,
                format!("`status` must be approved, pending or rejected, got {status_text:?}"),
            )
        })?;
        let currency = currency_field(&raw.currency)?;
        let ts_ms = self.ts_field(&raw.ts, true, now)?;
        let metadata = match raw.metadata {
            None => super::Span::NONE,
            Some(m) if m.get() == "null" => super::Span::NONE,
            Some(m) if m.get().starts_with('{') => arena.push(m.get()),
            Some(_) => {
                return Err(reject(
                    DeadReason::InvalidField,
                    "`metadata` must be a JSON object",
                ));
            }
        };
        Ok(Conversion {
            click_id: arena.push(click_id),
            external_id: arena.push(external_id),
            amount_micros,
            status,
            currency: arena.push(std::str::from_utf8(&currency).unwrap_or("USD")),
            ts_ms,
            tenant_id: arena.push(raw.tenant_id.as_deref().unwrap_or("")),
            product_id: opt(arena, &raw.product_id),
            order_id: opt(arena, &raw.order_id),
            customer_id: opt(arena, &raw.customer_id),
            metadata,
            raw: arena.push(text),
            position: pos,
        })
    }

    /// Decodes a batch of click lines. Returns the clicks, the dead letters and the highest
    /// event time seen (the batch's contribution to the click watermark).
    pub fn decode_clicks(&self, batch: &RawBatch) -> (ClickBatch, Vec<DeadLetter>) {
        let mut out = ClickBatch {
            arena: Arena::with_capacity(batch.data.len()),
            clicks: Vec::with_capacity(batch.records.len()),
        };
        let mut dead = Vec::new();
        let now = now_ms();
        for rec in &batch.records {
            let line = batch.line(rec);
            if is_blank(line) {
                continue;
            }
            match self.decode_click_into(line, rec.len, now, &mut out.arena) {
                Ok(mut c) => {
                    c.position = rec.position;
                    out.clicks.push(c)
                }
                Err(r) => dead.push(self.dead(Stream::Clicks, rec.position, line, r)),
            }
        }
        (out, dead)
    }

    /// Decodes a batch of conversion lines.
    pub fn decode_conversions(&self, batch: &RawBatch) -> (ConversionBatch, Vec<DeadLetter>) {
        let mut out = ConversionBatch {
            arena: Arena::with_capacity(batch.data.len() * 2),
            conversions: Vec::with_capacity(batch.records.len()),
        };
        let mut dead = Vec::new();
        let now = now_ms();
        for rec in &batch.records {
            let line = batch.line(rec);
            if is_blank(line) {
                continue;
            }
            match self.decode_conversion_into(line, rec.len, rec.position, now, &mut out.arena) {
                Ok(c) => out.conversions.push(c),
                Err(r) => dead.push(self.dead(Stream::Conversions, rec.position, line, r)),
            }
        }
        (out, dead)
    }
}

/// Fills a [`RawClick`] from a flat line, exactly as serde would; `None` means "let serde do
/// it" (including every case serde would reject).
fn fast_click(text: &str) -> Option<RawClick<'_>> {
    use super::fast::{Scalar, int, scan_flat};
    let mut raw = RawClick {
        click_id: None,
        ts: None,
        offer_id: None,
        affiliate_id: None,
        tenant_id: None,
        country: None,
        device: None,
        os: None,
        ip: None,
        user_agent: None,
        referrer: None,
        sub1: None,
        sub2: None,
        sub3: None,
        sub4: None,
        sub5: None,
    };
    let mut seen = 0u32;
    scan_flat(text, |key, value| {
        let (slot, bit) = match key {
            "ts" => {
                if seen & 1 != 0 {
                    return false;
                }
                seen |= 1;
                raw.ts = match value {
                    Scalar::Str(s) => Some(RawTs::Text(Cow::Borrowed(s))),
                    Scalar::Num(n) => match int(n) {
                        Some(ms) => Some(RawTs::Millis(ms)),
                        None => return false,
                    },
                    Scalar::Null => None,
                    Scalar::Bool => return false,
                };
                return true;
            }
            "click_id" => (&mut raw.click_id, 1 << 1),
            "offer_id" => (&mut raw.offer_id, 1 << 2),
            "affiliate_id" => (&mut raw.affiliate_id, 1 << 3),
            "tenant_id" => (&mut raw.tenant_id, 1 << 4),
            "country" => (&mut raw.country, 1 << 5),
            "device" => (&mut raw.device, 1 << 6),
            "os" => (&mut raw.os, 1 << 7),
            "ip" => (&mut raw.ip, 1 << 8),
            "user_agent" => (&mut raw.user_agent, 1 << 9),
            "referrer" => (&mut raw.referrer, 1 << 10),
            "sub1" => (&mut raw.sub1, 1 << 11),
            "sub2" => (&mut raw.sub2, 1 << 12),
            "sub3" => (&mut raw.sub3, 1 << 13),
            "sub4" => (&mut raw.sub4, 1 << 14),
            "sub5" => (&mut raw.sub5, 1 << 15),
            // Unknown fields are ignored, as by serde.
            _ => return true,
        };
        if seen & bit != 0 {
            // serde rejects duplicate fields; let it say so.
            return false;
        }
        seen |= bit;
        *slot = match value {
            Scalar::Str(s) => Some(Text(Cow::Borrowed(s))),
            Scalar::Null => None,
            Scalar::Num(_) | Scalar::Bool => return false,
        };
        true
    })?;
    Some(raw)
}

/// Whether arrays and objects in `json` nest deeper than `limit` levels. One pass without
/// recursion (and none at all when the text has too few brackets to get there), so any depth
/// is cheap to refuse; strings are skipped, so brackets inside them do not count.
fn nests_deeper_than(json: &[u8], limit: usize) -> bool {
    if memchr::memchr2_iter(b'[', b'{', json).nth(limit).is_none() {
        return false;
    }
    let mut depth = 0usize;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            // To the closing quote, over escapes; an unterminated string is serde's to report.
            b'"' => loop {
                i += 1;
                match memchr::memchr2(b'"', b'\\', json.get(i..).unwrap_or_default()) {
                    None => return false,
                    Some(at) if json[i + at] == b'"' => {
                        i += at;
                        break;
                    }
                    // A backslash: the next byte is escaped.
                    Some(at) => i += at + 1,
                }
            },
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}

/// The first `max` bytes of `line`, shortened to a whole UTF-8 character when the cut would
/// split one (so a text head stays text).
fn head(line: &[u8], max: usize) -> &[u8] {
    let cut = &line[..line.len().min(max)];
    match std::str::from_utf8(cut) {
        Err(e) if e.error_len().is_none() => &cut[..e.valid_up_to()],
        _ => cut,
    }
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|b| b.is_ascii_whitespace())
}

fn json_reject(e: serde_json::Error) -> Reject {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => reject(DeadReason::InvalidField, e.to_string()),
        _ => reject(DeadReason::InvalidJson, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
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
        let (_, c2) = one_click(
            r#"{"click_id":"c1","ts":1793527200000,"offer_id":"o1","affiliate_id":"a1"}"#,
        )
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
            (base(r#","amount":"abc""#).into_bytes(), DeadReason::InvalidField),
            (base(r#","amount":-1"#).into_bytes(), DeadReason::InvalidField),
            (base(r#","amount":"NaN""#).into_bytes(), DeadReason::InvalidField),
            (base(r#","amount":"inf""#).into_bytes(), DeadReason::InvalidField),
            (base(r#","amount":true"#).into_bytes(), DeadReason::InvalidField),
            (base(r#","amount":1,"metadata":[1]"#).into_bytes(), DeadReason::InvalidField),
            (base(r#","amount":1,"currency":"EURO""#).into_bytes(), DeadReason::InvalidField),
            (
                br#"{"click_id":"c1","external_id":"e1","amount":1,"status":"paid"}"#.to_vec(),
                DeadReason::InvalidField,
            ),
            (
                b"{\"click_id\":\"c\xff\",\"external_id\":\"e\",\"amount\":1,\"status\":\"pending\"}".to_vec(),
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
}
