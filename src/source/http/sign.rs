//! Request signatures: HMAC-SHA256 over `timestamp "." body`, with a replay window.
//!
//! A signed request carries `X-Attribd-Timestamp` (Unix seconds) and `X-Attribd-Signature`
//! (hex HMAC-SHA256, keyed with the key's `signing_secret`, of the timestamp, a dot, and the
//! body — for `GET /v1/postback` the query string stands for the body). It is refused when the
//! timestamp is further than the window from the server's clock, when the signature does not
//! match (compared in constant time), or when the same signature was already seen inside the
//! window (a captured request sent again).

use std::collections::HashMap;
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Why a signature is refused (the text goes into the 401 answer).
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Missing,
    BadTimestamp,
    OutsideWindow,
    Mismatch,
    Replayed,
}

impl Refused {
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::Missing => {
                "this key requires signed requests: X-Attribd-Timestamp and X-Attribd-Signature"
            }
            Refused::BadTimestamp => "X-Attribd-Timestamp is not Unix seconds",
            Refused::OutsideWindow => "X-Attribd-Timestamp is outside the accepted window",
            Refused::Mismatch => "X-Attribd-Signature does not match",
            Refused::Replayed => "this signature was already used (replay)",
        }
    }
}

/// The hex signature of `payload` at `timestamp` (what a sender computes; tests and docs).
pub fn sign(secret: &str, timestamp: &str, payload: &[u8]) -> String {
    let mut mac = new_mac(secret);
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(payload);
    hex::encode(mac.finalize().into_bytes())
}

fn new_mac(secret: &str) -> Hmac<Sha256> {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    }
}

/// Signatures seen inside the window, to refuse replays.
pub struct Verifier {
    window_s: i64,
    seen: Mutex<HashMap<[u8; 32], i64>>,
}

impl Verifier {
    pub fn new(window: std::time::Duration) -> Verifier {
        Verifier {
            window_s: window.as_secs() as i64,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Checks a request's signature headers against `secret` at `now` (Unix seconds).
    pub fn verify(
        &self,
        secret: &str,
        timestamp: Option<&str>,
        signature: Option<&str>,
        payload: &[u8],
        now: i64,
    ) -> Result<(), Refused> {
        let (Some(ts), Some(sig)) = (timestamp, signature) else {
            return Err(Refused::Missing);
        };
        let at: i64 = ts.trim().parse().map_err(|_| Refused::BadTimestamp)?;
        if now.abs_diff(at) > self.window_s.unsigned_abs() {
            return Err(Refused::OutsideWindow);
        }
        let given = hex::decode(sig.trim()).map_err(|_| Refused::Mismatch)?;
        let mut mac = new_mac(secret);
        mac.update(ts.trim().as_bytes());
        mac.update(b".");
        mac.update(payload);
        mac.verify_slice(&given).map_err(|_| Refused::Mismatch)?;
        let Ok(key) = <[u8; 32]>::try_from(given.as_slice()) else {
            return Err(Refused::Mismatch);
        };
        let mut seen = match self.seen.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        // Forget what has left the window (bounded by the rate limits × the window).
        if seen.len() > 1024 {
            let horizon = now - self.window_s;
            seen.retain(|_, &mut t| t >= horizon);
        }
        if seen.insert(key, at).is_some() {
            return Err(Refused::Replayed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_once_inside_the_window_and_never_outside_or_altered() {
        let v = Verifier::new(std::time::Duration::from_secs(300));
        let body = br#"{"click_id":"c1"}"#;
        let sig = sign("s3cret", "1000", body);
        assert_eq!(
            v.verify("s3cret", Some("1000"), Some(&sig), body, 1100),
            Ok(())
        );
        assert_eq!(
            v.verify("s3cret", Some("1000"), Some(&sig), body, 1100),
            Err(Refused::Replayed)
        );
        let sig2 = sign("s3cret", "1001", body);
        assert_eq!(
            v.verify("s3cret", Some("1001"), Some(&sig2), b"{}", 1100),
            Err(Refused::Mismatch)
        );
        assert_eq!(
            v.verify("other", Some("1001"), Some(&sig2), body, 1100),
            Err(Refused::Mismatch)
        );
        assert_eq!(
            v.verify("s3cret", Some("1001"), Some(&sig2), body, 1402),
            Err(Refused::OutsideWindow)
        );
        assert_eq!(
            v.verify("s3cret", None, Some(&sig2), body, 1100),
            Err(Refused::Missing)
        );
        assert_eq!(
            v.verify("s3cret", Some("soon"), Some(&sig2), body, 1100),
            Err(Refused::BadTimestamp)
        );
    }
}
