//! The wire shapes of a record and the checks of its fields.
//!
//! `RawClick` / `RawConversion` are what serde (or the flat fast path, `fast_click`) reads a
//! line into, borrowing from the line wherever it can; the field functions turn them into
//! typed values or a reason to dead-letter the record.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_json::value::RawValue;

use crate::event::{Arena, DeadReason};

/// Reason + human-readable detail of a rejected record.
pub(super) type Reject = (DeadReason, String);

pub(super) fn reject(reason: DeadReason, detail: impl Into<String>) -> Reject {
    (reason, detail.into())
}

/// A JSON string, borrowed from the input line unless it contains escapes.
///
/// serde's `#[serde(borrow)]` does not reach through `Option<Cow<str>>` (it would allocate a
/// `String` for every field), hence this small wrapper.
pub(super) struct Text<'a>(Cow<'a, str>);

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
pub(super) enum RawTs<'a> {
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
pub(super) enum RawAmount<'a> {
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
pub(super) struct RawClick<'a> {
    #[serde(borrow)]
    pub(super) click_id: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) ts: Option<RawTs<'a>>,
    #[serde(borrow)]
    pub(super) offer_id: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) affiliate_id: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) tenant_id: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) country: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) device: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) os: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) ip: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) user_agent: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) referrer: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) sub1: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) sub2: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) sub3: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) sub4: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) sub5: Option<Text<'a>>,
}

#[derive(Deserialize)]
pub(super) struct RawConversion<'a> {
    #[serde(borrow)]
    pub(super) click_id: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) external_id: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) amount: Option<RawAmount<'a>>,
    #[serde(borrow)]
    pub(super) status: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) currency: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) ts: Option<RawTs<'a>>,
    #[serde(borrow)]
    pub(super) tenant_id: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) product_id: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) order_id: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) customer_id: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) metadata: Option<&'a RawValue>,
}

pub(super) const MAX_ID_BYTES: usize = 128;

pub(super) fn required<'a>(v: &'a Option<Text<'a>>, field: &str) -> Result<&'a str, Reject> {
    match v.as_deref() {
        Some(s) => Ok(s),
        None => Err(reject(
            DeadReason::MissingField,
            format!("missing required field `{field}`"),
        )),
    }
}

pub(super) fn id_field<'a>(v: &'a Option<Text<'a>>, field: &str) -> Result<&'a str, Reject> {
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
pub(super) fn country_field(v: &Option<Text<'_>>) -> Result<Option<[u8; 2]>, Reject> {
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
pub(super) fn currency_field(v: &Option<Text<'_>>) -> Result<[u8; 3], Reject> {
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
pub(super) fn amount_field(v: &Option<RawAmount<'_>>) -> Result<i64, Reject> {
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
pub(super) fn opt(arena: &mut Arena, v: &Option<Text<'_>>) -> crate::event::Span {
    arena.push_opt(v.as_deref())
}

/// Fills a [`RawClick`] from a flat line, exactly as serde would; `None` means "let serde do
/// it" (including every case serde would reject).
pub(super) fn fast_click(text: &str) -> Option<RawClick<'_>> {
    use crate::event::fast::{Scalar, int, scan_flat};
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

pub(super) fn json_reject(e: serde_json::Error) -> Reject {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => reject(DeadReason::InvalidField, e.to_string()),
        _ => reject(DeadReason::InvalidJson, e.to_string()),
    }
}
