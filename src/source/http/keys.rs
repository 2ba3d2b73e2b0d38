//! API keys: who may send, for which tenant, and with which signing secret.
//!
//! The keys file holds only SHA-256 hashes of the keys, never a key:
//!
//! ```toml
//! [[key]]
//! id = "acme-2026-11"            # names the key in logs and metrics (never the key itself)
//! tenant = "acme"                # every record sent with it belongs to this tenant
//! sha256 = "9f86d081884c7d65…"   # sha256sum of the key, hex
//! # revoked = true               # refused from the next reload on
//! # signing_secret = "…"         # then every request with this key must be signed
//! ```
//!
//! A tenant may have several keys at once (rotation: add the new one, move the senders, revoke
//! the old one). The file is read again when it changes and on SIGHUP; a file that does not
//! parse leaves the keys in force as they were, with an error in the log.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// One key's entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub id: String,
    pub tenant: String,
    pub sha256: String,
    #[serde(default)]
    pub revoked: bool,
    /// HMAC-SHA256 secret; when set, unsigned requests with this key are refused.
    #[serde(default)]
    pub signing_secret: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    key: Vec<KeyEntry>,
}

/// The keys in force, by the hash of the key.
#[derive(Debug, Default)]
pub struct KeyRing {
    by_hash: HashMap<[u8; 32], Arc<KeyEntry>>,
}

/// What a presented key is.
pub enum Lookup {
    Valid(Arc<KeyEntry>),
    Revoked(Arc<KeyEntry>),
    Unknown,
}

impl KeyRing {
    pub fn parse(text: &str, file: &Path) -> Result<KeyRing> {
        let parsed: KeysFile =
            toml::from_str(text).with_context(|| format!("{}: not a keys file", file.display()))?;
        let mut by_hash = HashMap::new();
        for (i, k) in parsed.key.into_iter().enumerate() {
            let at = format!("{}: key[{i}] (id {:?})", file.display(), k.id);
            let at = || at.clone();
            let hash = hex::decode(k.sha256.trim())
                .ok()
                .and_then(|h| <[u8; 32]>::try_from(h).ok());
            let Some(hash) = hash else {
                bail!(
                    "{}: `sha256` must be 64 hex digits (sha256sum of the key)",
                    at()
                );
            };
            if k.tenant.is_empty() || k.id.is_empty() {
                bail!("{}: `id` and `tenant` must not be empty", at());
            }
            if by_hash.insert(hash, Arc::new(k)).is_some() {
                bail!("{}: the same key hash appears twice", at());
            }
        }
        Ok(KeyRing { by_hash })
    }

    pub fn lookup(&self, presented: &str) -> Lookup {
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        match self.by_hash.get(&hash) {
            Some(k) if k.revoked => Lookup::Revoked(k.clone()),
            Some(k) => Lookup::Valid(k.clone()),
            None => Lookup::Unknown,
        }
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// The keys file and the ring read from it, reloaded when the file changes.
pub struct Keys {
    path: PathBuf,
    ring: RwLock<(Arc<KeyRing>, Option<SystemTime>)>,
}

impl Keys {
    /// Reads the file; an error here stops the start (a door without its keys is not opened).
    pub fn load(path: &Path) -> Result<Keys> {
        let (ring, modified) = read(path)?;
        Ok(Keys {
            path: path.to_path_buf(),
            ring: RwLock::new((Arc::new(ring), modified)),
        })
    }

    pub fn current(&self) -> Arc<KeyRing> {
        match self.ring.read() {
            Ok(g) => g.0.clone(),
            Err(poisoned) => poisoned.into_inner().0.clone(),
        }
    }

    /// Reads the file again if it changed (or `force`, on SIGHUP). Keeps the old keys when
    /// the new file is bad.
    pub fn reload(&self, force: bool) {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let known = match self.ring.read() {
            Ok(g) => g.1,
            Err(p) => p.into_inner().1,
        };
        if !force && modified == known {
            return;
        }
        match read(&self.path) {
            Ok((ring, modified)) => {
                tracing::info!(file = %self.path.display(), keys = ring.len(), "API keys reloaded");
                let mut g = match self.ring.write() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                *g = (Arc::new(ring), modified);
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "API keys file not reloaded; the keys in force stay");
                if let Ok(mut g) = self.ring.write() {
                    // Not again until it changes once more.
                    g.1 = modified;
                }
            }
        }
    }
}

fn read(path: &Path) -> Result<(KeyRing, Option<SystemTime>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    Ok((KeyRing::parse(&text, path)?, modified))
}

/// The hex SHA-256 of a key: what goes in the keys file (`attribd keys hash`).
pub fn hash_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The compose stack's example keys file holds the demo key it documents.
    #[test]
    fn the_shipped_example_keys_file_holds_its_demo_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/keys.example.toml");
        let keys = Keys::load(&path).unwrap();
        assert!(
            matches!(keys.current().lookup("demo-key-change-me"), Lookup::Valid(k) if k.tenant == "demo")
        );
    }

    #[test]
    fn keys_are_found_by_hash_revoked_keys_are_told_apart_and_bad_files_name_the_entry() {
        let text = format!(
            "[[key]]\nid = \"a1\"\ntenant = \"acme\"\nsha256 = \"{}\"\n\
             [[key]]\nid = \"a0\"\ntenant = \"acme\"\nsha256 = \"{}\"\nrevoked = true\n",
            hash_hex("new-key"),
            hash_hex("old-key")
        );
        let ring = KeyRing::parse(&text, Path::new("keys.toml")).unwrap();
        assert!(matches!(ring.lookup("new-key"), Lookup::Valid(k) if k.tenant == "acme"));
        assert!(matches!(ring.lookup("old-key"), Lookup::Revoked(k) if k.id == "a0"));
        assert!(matches!(ring.lookup("nope"), Lookup::Unknown));
        let bad = "[[key]]\nid = \"x\"\ntenant = \"t\"\nsha256 = \"abc\"\n";
        let err = KeyRing::parse(bad, Path::new("keys.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("keys.toml: key[0]") && err.contains("64 hex"),
            "{err}"
        );
    }
}
