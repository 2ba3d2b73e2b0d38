//! A fast path for the common shape of a record: one flat JSON object whose values are
//! strings without escapes, integers or `null`.
//!
//! Edges send millions of such lines a second, and a general JSON parser spends most of its time
//! on generality they do not use. [`scan_flat`] walks such a line once and hands out borrowed
//! field slices; anything it does not handle (escapes, nested values, duplicate keys, odd
//! whitespace, invalid JSON) makes it give up with `None`, and the caller falls back to the full
//! `serde_json` decoder, which also produces the precise dead-letter reason. So the fast path
//! never decides that a record is bad — it only accepts records it fully understands.

/// A scalar value as it appears in the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar<'a> {
    /// A string without escapes (the content between the quotes).
    Str(&'a str),
    /// A number literal, unparsed.
    Num(&'a str),
    Null,
    Bool,
}

/// Calls `field(key, value)` for every member of a flat object. Returns `None` (fall back) when
/// the line is anything but a flat object of scalars, or when `field` returns `false`.
pub fn scan_flat<'a>(
    line: &'a str,
    mut field: impl FnMut(&'a str, Scalar<'a>) -> bool,
) -> Option<()> {
    let b = line.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return trailing_ws_only(b, i + 1);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let (key, next) = string_at(line, i)?;
        i = skip_ws(b, next);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let (value, next) = match b.get(i)? {
            b'"' => {
                let (s, next) = string_at(line, i)?;
                (Scalar::Str(s), next)
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                let mut j = i + 1;
                while j < b.len() && matches!(b[j], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    j += 1;
                }
                let num = &line[start..j];
                if !is_json_number(num.as_bytes()) {
                    return None;
                }
                (Scalar::Num(num), j)
            }
            b'n' if b[i..].starts_with(b"null") => (Scalar::Null, i + 4),
            b't' if b[i..].starts_with(b"true") => (Scalar::Bool, i + 4),
            b'f' if b[i..].starts_with(b"false") => (Scalar::Bool, i + 5),
            _ => return None,
        };
        if !field(key, value) {
            return None;
        }
        i = skip_ws(b, next);
        match b.get(i)? {
            b',' => i = skip_ws(b, i + 1),
            b'}' => return trailing_ws_only(b, i + 1),
            _ => return None,
        }
    }
}

/// The string starting at the quote `b[i]`; `None` on escapes, control characters or no end.
fn string_at(line: &str, i: usize) -> Option<(&str, usize)> {
    let b = line.as_bytes();
    let start = i + 1;
    let rest = b.get(start..)?;
    let end = start + string_stop(rest)?;
    if b[end] != b'"' {
        return None;
    }
    Some((&line[start..end], end + 1))
}

/// Where a string's content stops: the first `"`, `\\` or control character (below 0x20) —
/// the end quote, or what makes the fast path give up. One pass instead of a search for the
/// quote and a second one for control characters (a fifth of a click's decoding).
fn string_stop(b: &[u8]) -> Option<usize> {
    let stops = |c: u8| c == b'"' || c == b'\\' || c < 0x20;
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8,
            _mm_or_si128, _mm_set1_epi8,
        };
        // SAFETY: SSE2 is part of the x86_64 baseline, so these intrinsics are always
        // available; every load reads the 16 bytes at `b[i..i + 16]`, inside the slice by the
        // loop condition, and `loadu` has no alignment requirement.
        unsafe {
            let quote = _mm_set1_epi8(b'"' as i8);
            let backslash = _mm_set1_epi8(b'\\' as i8);
            let control_max = _mm_set1_epi8(0x1f);
            while i + 16 <= b.len() {
                let v = _mm_loadu_si128(b.as_ptr().add(i).cast::<__m128i>());
                // c <= 0x1f (unsigned) exactly when max(c, 0x1f) == 0x1f.
                let control = _mm_cmpeq_epi8(_mm_max_epu8(v, control_max), control_max);
                let hit = _mm_or_si128(
                    _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
                    control,
                );
                let mask = _mm_movemask_epi8(hit);
                if mask != 0 {
                    return Some(i + mask.trailing_zeros() as usize);
                }
                i += 16;
            }
        }
    }
    b[i..].iter().position(|&c| stops(c)).map(|p| p + i)
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, the JSON number grammar.
fn is_json_number(b: &[u8]) -> bool {
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == b.len()
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\r' | b'\n') {
        i += 1;
    }
    i
}

fn trailing_ws_only(b: &[u8], i: usize) -> Option<()> {
    (skip_ws(b, i) == b.len()).then_some(())
}

/// Parses an integer literal of the fast path (no fraction, no exponent, fits `i64`).
pub fn int(num: &str) -> Option<i64> {
    if num.bytes().any(|c| matches!(c, b'.' | b'e' | b'E' | b'+')) {
        return None;
    }
    num.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(line: &str) -> Option<Vec<(String, Scalar<'_>)>> {
        let mut out = Vec::new();
        scan_flat(line, |k, v| {
            out.push((k.to_string(), v));
            true
        })?;
        Some(out)
    }

    #[test]
    fn accepts_flat_objects() {
        let f = fields(r#" {"a":"x", "b" : -12,"c":null,"d":true,"e":"",  "f":1.5e3} "#).unwrap();
        assert_eq!(
            f,
            [
                ("a".to_string(), Scalar::Str("x")),
                ("b".to_string(), Scalar::Num("-12")),
                ("c".to_string(), Scalar::Null),
                ("d".to_string(), Scalar::Bool),
                ("e".to_string(), Scalar::Str("")),
                ("f".to_string(), Scalar::Num("1.5e3")),
            ]
        );
        assert_eq!(fields("{}").unwrap(), []);
    }

    #[test]
    fn a_string_stops_at_its_quote_a_backslash_or_a_control_character_wherever_it_is() {
        // Every position, inside and past the 16-byte blocks, against the scalar rule.
        for len in 0..40 {
            for (at, c) in (0..len).flat_map(|at| [b'"', b'\\', 0x00, 0x1f].map(|c| (at, c))) {
                let mut b = vec![b'x'; len];
                b[at] = c;
                assert_eq!(string_stop(&b), Some(at), "len {len}, {c:#x} at {at}");
            }
            let plain: Vec<u8> = (0..len).map(|i| 0x20 + (i as u8 % 0x5f)).collect();
            let want = plain.iter().position(|&c| c == b'"' || c == b'\\');
            assert_eq!(string_stop(&plain), want, "len {len}");
            // 0x20, 0x7f and bytes above it (UTF-8) are content, not control characters,
            // also beside a stop in the same 16-byte block.
            for c in [0x20, 0x7f, 0x80, 0xc3, 0xff] {
                let mut b = vec![c; len];
                assert_eq!(string_stop(&b), None, "{c:#x} x {len}");
                if len > 0 {
                    b[len - 1] = b'"';
                    assert_eq!(string_stop(&b), Some(len - 1), "{c:#x} x {len}, quote last");
                }
            }
        }
    }

    #[test]
    fn gives_up_on_everything_else() {
        for line in [
            r#"{"a":"x\"y"}"#,
            r#"{"a":{"b":1}}"#,
            r#"{"a":[1]}"#,
            r#"{"a":"x""#,
            r#"{"a":"x",}"#,
            r#"{"a" "x"}"#,
            r#"{"a":"x"} trailing"#,
            r#"["a"]"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":nul}"#,
            r#"{"a":-}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":1e}"#,
            r#"{"a":--1}"#,
            r#"{"a":1-2}"#,
            "",
        ] {
            assert_eq!(fields(line), None, "{line}");
        }
        assert!(fields(r#"{"a":-0.5E+3,"b":0,"c":10e-2}"#).is_some());
        assert_eq!(int("12"), Some(12));
        assert_eq!(int("1.0"), None);
        assert_eq!(int("1e3"), None);
        assert_eq!(int("99999999999999999999"), None);
    }
}
