//! NDJSON → typed events, and everything that is wrong with a record → a dead letter.
//!
//! Sits between the sources (which produce [`RawBatch`]es of lines) and the state stage. Decoding
//! runs on a thread per stream so the two streams decode in parallel. Every line ends up either
//! as an event in the batch or as a [`DeadLetter`] with a reason; nothing is dropped silently
//! (blank lines are the one exception: they carry no record).

use std::sync::Arc;

use super::keys;
use super::time::{now_ms, parse_rfc3339_ms};
use super::{
    Arena, Click, ClickBatch, Conversion, ConversionBatch, DeadLetter, DeadReason, Position,
    Status, Stream,
};
use crate::raw::{OVERSIZE_HEAD_BYTES, RawBatch};

mod fields;

use fields::{
    RawClick, RawConversion, RawTs, Reject, amount_field, country_field, currency_field,
    fast_click, id_field, json_reject, opt, reject, required,
};

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
    /// Minimisation of personal fields (`[privacy]`), applied before anything is written.
    pub privacy: crate::event::privacy::Privacy,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_record_bytes: 64 * 1024,
            max_json_depth: 128,
            // 2000-01-01T00:00:00Z
            min_ts_ms: 946_684_800_000,
            max_future_ms: 7 * 86_400_000,
            privacy: Default::default(),
        }
    }
}

/// `text` (a conversion record) with its `metadata` replaced by `metadata` (dropped when
/// `None`): what a dead letter of it may show once metadata keys are dropped.
fn minimised_text(text: &str, metadata: Option<&str>) -> String {
    let Ok(mut obj) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
    else {
        return "{}".into();
    };
    match metadata.and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok()) {
        Some(m) => {
            obj.insert("metadata".into(), m);
        }
        None => {
            obj.remove("metadata");
        }
    }
    serde_json::Value::Object(obj).to_string()
}

/// Decodes one stream's raw lines. Cheap to clone; one per decode thread.
#[derive(Debug, Clone)]
pub struct Decoder {
    pub limits: DecodeLimits,
    pub source: Arc<str>,
    /// Try [`super::fast::scan_flat`] before `serde_json` (on by default; off only to compare).
    pub fast_path: bool,
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
        let privacy = &self.limits.privacy;
        // Minimised before anything sees it: the arena, the visitor hash, the outputs.
        let ip = raw.ip.as_deref().and_then(|ip| privacy.ip(ip));
        let mut click = Click {
            click_id: arena.push(click_id),
            ts_ms,
            tenant_id: arena.push(tenant_id),
            offer_id: arena.push(offer_id),
            affiliate_id: arena.push(affiliate_id),
            country,
            device: opt(arena, &raw.device),
            os: opt(arena, &raw.os),
            ip: arena.push_opt(ip.as_deref()),
            user_agent: if privacy.drop_user_agent {
                super::Span::NONE
            } else {
                opt(arena, &raw.user_agent)
            },
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
        click.visitor_hash = match ip.as_deref() {
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
        // The record's text is kept for a dead letter a refused status change may become: when
        // metadata keys are dropped, not the text as received.
        let mut minimised = false;
        let metadata = match raw.metadata {
            None => super::Span::NONE,
            Some(m) if m.get() == "null" => super::Span::NONE,
            Some(m) if m.get().starts_with('{') => match self.limits.privacy.metadata(m.get()) {
                Some(kept) => {
                    minimised = matches!(kept, std::borrow::Cow::Owned(_));
                    arena.push(&kept)
                }
                None => {
                    minimised = true;
                    super::Span::NONE
                }
            },
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
            raw: if minimised {
                arena.push(&minimised_text(text, arena.get_opt(metadata)))
            } else {
                arena.push(text)
            },
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

#[cfg(test)]
mod tests;
