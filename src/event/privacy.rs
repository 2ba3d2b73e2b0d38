//! Data minimisation at ingest (`[privacy]`): what the decoder does to personal fields before
//! a record goes anywhere — the IP truncated or replaced by a keyed hash, the user agent
//! dropped, named `metadata` keys dropped. It runs inside the decoder (both its fast and its
//! full path), so the state, every table and every sink only ever see the minimised values,
//! and unique clicks are counted on them.
//!
//! Dead letters are the exception: they keep the record as received (it could not be
//! decoded, so its fields cannot be told apart); their retention bounds them.

use std::borrow::Cow;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// What happens to a click's `ip`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum IpPolicy {
    /// As received.
    #[default]
    Keep,
    /// IPv4 to its /24 (`203.0.113.0`), IPv6 to its /48 (`2001:db8:1::`). A value that is not
    /// an IP address is dropped: it cannot be truncated, so it is not written.
    Truncate,
    /// `h:` + the first 16 bytes (hex) of HMAC-SHA256 with the key of `ip_hash_key_file`:
    /// the same visitor keeps one value (unique clicks still count), nobody without the key
    /// can go back to the address. Rotating the key changes every value from then on.
    Hash,
}

/// `[privacy]` as written in the pipeline.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    pub ip: IpPolicy,
    /// The HMAC key for `ip = "hash"` (at least 16 bytes; the file's bytes as they are).
    pub ip_hash_key_file: Option<PathBuf>,
    /// Do not keep clicks' `user_agent`.
    pub drop_user_agent: bool,
    /// Keys removed from conversions' `metadata` object.
    pub drop_metadata_keys: Vec<String>,
}

/// The minimisation the decoder applies (built from [`PrivacyConfig`] with the key read).
#[derive(Clone, Default, PartialEq)]
pub struct Privacy {
    ip: IpPolicy,
    key: Option<Arc<[u8]>>,
    pub drop_user_agent: bool,
    drop_metadata_keys: Vec<String>,
}

impl std::fmt::Debug for Privacy {
    // Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Privacy")
            .field("ip", &self.ip)
            .field("drop_user_agent", &self.drop_user_agent)
            .field("drop_metadata_keys", &self.drop_metadata_keys)
            .finish()
    }
}

/// Shortest accepted hash key.
pub const MIN_KEY_BYTES: usize = 16;

impl Privacy {
    /// Reads the key file when the policy needs it; `Err((key, problem))` names the setting.
    pub fn from_config(cfg: &PrivacyConfig) -> Result<Privacy, (&'static str, String)> {
        let key = match (cfg.ip, &cfg.ip_hash_key_file) {
            (IpPolicy::Hash, None) => {
                return Err((
                    "privacy.ip_hash_key_file",
                    "ip = \"hash\" needs a key file (at least 16 random bytes)".into(),
                ));
            }
            (IpPolicy::Hash, Some(path)) => {
                let bytes = std::fs::read(path).map_err(|e| {
                    (
                        "privacy.ip_hash_key_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                if bytes.len() < MIN_KEY_BYTES {
                    return Err((
                        "privacy.ip_hash_key_file",
                        format!(
                            "{} holds {} bytes; at least {MIN_KEY_BYTES}",
                            path.display(),
                            bytes.len()
                        ),
                    ));
                }
                Some(Arc::from(bytes))
            }
            _ => None,
        };
        Ok(Privacy {
            ip: cfg.ip,
            key,
            drop_user_agent: cfg.drop_user_agent,
            drop_metadata_keys: cfg.drop_metadata_keys.clone(),
        })
    }

    /// The `ip` to keep: `None` drops it.
    pub fn ip<'a>(&self, ip: &'a str) -> Option<Cow<'a, str>> {
        match self.ip {
            IpPolicy::Keep => Some(Cow::Borrowed(ip)),
            IpPolicy::Truncate => match ip.trim().parse::<IpAddr>().ok()?.to_canonical() {
                IpAddr::V4(v4) => {
                    let [a, b, c, _] = v4.octets();
                    Some(Cow::Owned(std::net::Ipv4Addr::new(a, b, c, 0).to_string()))
                }
                IpAddr::V6(v6) => {
                    let s = v6.segments();
                    Some(Cow::Owned(
                        std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0).to_string(),
                    ))
                }
            },
            IpPolicy::Hash => {
                let key = self.key.as_deref()?;
                let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
                mac.update(ip.as_bytes());
                let digest = mac.finalize().into_bytes();
                Some(Cow::Owned(format!("h:{}", hex::encode(&digest[..16]))))
            }
        }
    }

    /// `metadata` (a JSON object's text) without the dropped top-level keys; as it is when
    /// none of them is there; `None` (not kept at all) when keys are to be dropped but the
    /// object cannot be read as one (fails closed).
    pub fn metadata<'a>(&self, metadata: &'a str) -> Option<Cow<'a, str>> {
        if self.drop_metadata_keys.is_empty() {
            return Some(Cow::Borrowed(metadata));
        }
        let Ok(mut obj) =
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(metadata)
        else {
            return None;
        };
        let before = obj.len();
        obj.retain(|k, _| !self.drop_metadata_keys.iter().any(|d| d == k));
        if obj.len() == before {
            return Some(Cow::Borrowed(metadata));
        }
        Some(Cow::Owned(serde_json::Value::Object(obj).to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(ip: IpPolicy, key: Option<&[u8]>) -> Privacy {
        Privacy {
            ip,
            key: key.map(Arc::from),
            ..Privacy::default()
        }
    }

    #[test]
    fn ips_are_truncated_to_their_network_or_dropped_when_not_an_address() {
        let p = with(IpPolicy::Truncate, None);
        assert_eq!(p.ip("203.0.113.77").as_deref(), Some("203.0.113.0"));
        assert_eq!(
            p.ip("2001:db8:1:2:3:4:5:6").as_deref(),
            Some("2001:db8:1::")
        );
        assert_eq!(p.ip("not-an-ip"), None);
        assert_eq!(p.ip("::ffff:203.0.113.77").as_deref(), Some("203.0.113.0"));
        assert_eq!(
            with(IpPolicy::Keep, None).ip("203.0.113.77").as_deref(),
            Some("203.0.113.77")
        );
    }

    #[test]
    fn hashed_ips_are_stable_per_key_and_differ_across_keys() {
        let a = with(IpPolicy::Hash, Some(b"0123456789abcdef"));
        let b = with(IpPolicy::Hash, Some(b"fedcba9876543210"));
        let x = a.ip("203.0.113.77").unwrap().into_owned();
        assert!(x.starts_with("h:") && x.len() == 2 + 32, "{x}");
        assert!(!x.contains("203"));
        assert_eq!(a.ip("203.0.113.77").unwrap(), x);
        assert_ne!(a.ip("203.0.113.78").unwrap(), x);
        assert_ne!(b.ip("203.0.113.77").unwrap(), x);
    }

    #[test]
    fn named_metadata_keys_are_dropped_and_the_rest_kept() {
        let p = Privacy {
            drop_metadata_keys: vec!["email".into(), "phone".into()],
            ..Privacy::default()
        };
        let m = p.metadata(r#"{"email":"a@b.c","sku":"x1","phone":"+1"}"#);
        assert_eq!(m.as_deref(), Some(r#"{"sku":"x1"}"#));
        assert!(matches!(
            p.metadata(r#"{"sku":"x1"}"#),
            Some(Cow::Borrowed(_))
        ));
        // What serde_json's map refuses (a lone surrogate) is not kept with the key in it.
        assert_eq!(p.metadata(r#"{"email":"a@b.c","x":"\ud800"}"#), None);
    }

    #[test]
    fn a_hash_policy_needs_a_readable_key_of_16_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.key");
        std::fs::write(&short, b"tiny").unwrap();
        let cfg = |file: Option<PathBuf>| PrivacyConfig {
            ip: IpPolicy::Hash,
            ip_hash_key_file: file,
            ..PrivacyConfig::default()
        };
        assert_eq!(
            Privacy::from_config(&cfg(None)).unwrap_err().0,
            "privacy.ip_hash_key_file"
        );
        let e = Privacy::from_config(&cfg(Some(short))).unwrap_err();
        assert!(e.1.contains("at least 16"), "{}", e.1);
        let e = Privacy::from_config(&cfg(Some(dir.path().join("missing")))).unwrap_err();
        assert!(e.1.contains("cannot read"), "{}", e.1);
    }
}
