//! Exact decimals for money: text ↔ fixed-point integers, and rounding of products.
//!
//! Amounts are `i64` micro-units (6 decimals) everywhere in attribd; FX rates are `i64` with
//! [`RATE_DECIMALS`] decimals. Nothing here goes through a float, so a rate of `1.0834` and an
//! amount of `19.99` give the same cents on every machine and in every reader.

use serde::Deserialize;

/// Decimals of an FX rate (`fx_rate` is `Decimal(18, 10)`: below 10⁸ reporting units per
/// unit ([`MAX_RATE`]), and ten decimals keep five significant digits even for the Vietnamese
/// dong).
pub const RATE_DECIMALS: u32 = 10;
/// `1.0` as a rate.
pub const RATE_ONE: i64 = 10_i64.pow(RATE_DECIMALS);
/// The largest rate `Decimal(18, 10)` holds: 99 999 999.9999999999.
pub const MAX_RATE: i64 = 10_i64.pow(18) - 1;
/// Decimals of money (`Decimal(18, 6)`, micro-units).
pub const MONEY_DECIMALS: u32 = 6;

/// Parses a non-negative decimal (`"12"`, `"0.25"`, `"1.0834"`) into an integer with `decimals`
/// decimals. More decimals than that, signs, exponents and overflow are refused with a message.
pub fn parse(text: &str, decimals: u32) -> Result<i64, String> {
    let s = text.trim();
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() && frac.is_empty() || !digits(whole) || !digits(frac) {
        return Err(format!(
            "{text:?} is not a plain decimal number such as 12.50"
        ));
    }
    if frac.len() > decimals as usize {
        return Err(format!(
            "{text:?} has {} decimals; at most {decimals} are kept exactly",
            frac.len()
        ));
    }
    let mut value: i64 = 0;
    let padded = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(decimals as usize);
    for b in whole.bytes().chain(padded) {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(b - b'0')))
            .ok_or_else(|| format!("{text:?} is too large"))?;
    }
    Ok(value)
}

/// `a × b ÷ 10^decimals`, rounded half away from zero (amounts are never negative, so: half up).
/// `None` when the result does not fit an `i64`.
pub fn mul_round(a: i64, b: i64, decimals: u32) -> Option<i64> {
    let scale = 10_i128.pow(decimals);
    let product = i128::from(a) * i128::from(b);
    let half = scale / 2;
    let rounded = if product >= 0 {
        (product + half) / scale
    } else {
        (product - half) / scale
    };
    i64::try_from(rounded).ok()
}

/// A decimal written in a configuration file: TOML lets people write `cpa = 5` or `cpa = 2.5`
/// as well as `cpa = "2.50"`; CSV cells come as text. Numbers are turned back into their
/// shortest decimal text (`2.5` → `"2.5"`) and parsed exactly from there.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(transparent)]
pub struct DecimalText(pub String);

impl<'de> Deserialize<'de> for DecimalText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = DecimalText;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a decimal number (as a number or a string)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DecimalText, E> {
                Ok(DecimalText(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<DecimalText, E> {
                Ok(DecimalText(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<DecimalText, E> {
                Ok(DecimalText(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<DecimalText, E> {
                Ok(DecimalText(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Formats micro-units as a decimal with `decimals` places (for messages and tests).
pub fn format(value: i64, decimals: u32) -> String {
    let scale = 10_i64.pow(decimals);
    let sign = if value < 0 { "-" } else { "" };
    let v = value.unsigned_abs();
    format!(
        "{sign}{}.{:0width$}",
        v / scale as u64,
        v % scale as u64,
        width = decimals as usize
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_parse_exactly() {
        assert_eq!(parse("12", 6), Ok(12_000_000));
        assert_eq!(parse("0.25", 6), Ok(250_000));
        assert_eq!(parse(" 1.0834 ", 10), Ok(10_834_000_000));
        assert_eq!(parse(".5", 6), Ok(500_000));
        assert_eq!(parse("7.", 6), Ok(7_000_000));
        for bad in ["", ".", "-1", "1e3", "1,5", "abc", "1.2.3", "+1"] {
            assert!(parse(bad, 6).is_err(), "{bad:?}");
        }
        assert!(parse("0.1234567", 6).unwrap_err().contains("7 decimals"));
        assert!(
            parse("99999999999999999999", 6)
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn products_round_half_up() {
        // 19.99 EUR at 1.0834 = 21.657166 USD exactly.
        assert_eq!(
            mul_round(19_990_000, 10_834_000_000, RATE_DECIMALS),
            Some(21_657_166)
        );
        // 0.000001 × 0.5 = 0.0000005 → rounds up to 0.000001.
        assert_eq!(mul_round(1, RATE_ONE / 2, RATE_DECIMALS), Some(1));
        assert_eq!(mul_round(1, RATE_ONE / 2 - 1, RATE_DECIMALS), Some(0));
        assert_eq!(mul_round(-1, RATE_ONE / 2, RATE_DECIMALS), Some(-1));
        assert_eq!(mul_round(i64::MAX, i64::MAX, 0), None);
        assert_eq!(format(21_657_166, 6), "21.657166");
        assert_eq!(format(-5, 6), "-0.000005");
    }
}
