//! What a checkpoint must find unchanged before a run may resume from it.
//!
//! A checkpoint says "the first N lines of the clicks input are done". That is only true of
//! the same input: a rerun into the same `--out` with another file at the path, or with the
//! file truncated below the checkpoint, would skip lines it never saw and apply the rest onto
//! a state they do not belong to — totals that are neither run's. So every checkpoint records,
//! per file input, what identifies the prefix it consumed (path, byte count, xxh3 of the first
//! and of the last 4 KiB before the position, whether the position ends a line) and the
//! pipeline's semantic settings (source kind, windows, lateness, limits, generator knobs,
//! topics). `run` compares them with what it finds before it touches anything and refuses a
//! mismatch, saying what changed and the ways out (`--fresh`, or another `--out`).
//!
//! Appending to a plain file after a checkpoint is allowed — that is how a growing file is
//! followed — because the consumed prefix is unchanged. A compressed input cannot grow that
//! way (recompressing rewrites every byte), so it is identified by its whole compressed file
//! and any change is refused. stdin cannot be re-read: a resumed run takes it as it comes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use xxhash_rust::xxh3::xxh3_64;

use super::snapshot::{ArchivedInputSnap, InputSnap};
use crate::config::{PipelineConfig, SourceKind};
use crate::source::file::Input;

/// How much of the start and of the end of a consumed prefix is hashed.
const WINDOW: u64 = 4096;

/// `InputSnap::kind` values.
const STDIN: u8 = 0;
const PLAIN: u8 = 1;
const COMPRESSED: u8 = 2;

const STREAMS: [&str; 2] = ["clicks", "conversions"];

/// One file input of this run, open for fingerprinting at checkpoints.
#[derive(Debug)]
pub struct TrackedInput {
    stream: u8,
    /// The path as configured, for messages.
    name: String,
    /// Canonical path: `./a` and `a` are the same input.
    path: String,
    kind: u8,
    /// A plain file is read here at checkpoints: the same inode the source reads even if the
    /// path is replaced meanwhile.
    file: Option<File>,
    /// Compressed inputs: size and hashes of the whole compressed file, taken at start.
    whole: Option<(u64, u64, u64)>,
}

/// The file inputs of a pipeline (none for the generator and Fluvio).
pub fn track(cfg: &PipelineConfig) -> Result<Vec<TrackedInput>> {
    if cfg.source.kind != SourceKind::Files {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (i, path) in [&cfg.source.clicks, &cfg.source.conversions]
        .into_iter()
        .enumerate()
    {
        let Some(path) = path else { continue };
        let stream = i as u8;
        match Input::parse(path) {
            Input::Stdin => out.push(TrackedInput {
                stream,
                name: "stdin".into(),
                path: "-".into(),
                kind: STDIN,
                file: None,
                whole: None,
            }),
            Input::Path(p) => {
                let file =
                    File::open(&p).with_context(|| format!("cannot open {}", p.display()))?;
                let canonical = std::fs::canonicalize(&p)
                    .unwrap_or_else(|_| p.clone())
                    .display()
                    .to_string();
                let compressed =
                    matches!(p.extension().and_then(|e| e.to_str()), Some("gz" | "zst"));
                let (kind, whole) = if compressed {
                    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                    let (head, tail) = window_hashes(&file, size, &p)?;
                    (COMPRESSED, Some((size, head, tail)))
                } else {
                    (PLAIN, None)
                };
                out.push(TrackedInput {
                    stream,
                    name: p.display().to_string(),
                    path: canonical,
                    kind,
                    file: Some(file),
                    whole,
                });
            }
        }
    }
    Ok(out)
}

/// xxh3 of the first and of the last `WINDOW` bytes of `file[..len]`.
fn window_hashes(file: &File, len: u64, path: &Path) -> Result<(u64, u64)> {
    let read = |from: u64, n: u64| -> Result<Vec<u8>> {
        let mut buf = vec![0u8; n as usize];
        file.read_exact_at(&mut buf, from)
            .with_context(|| format!("reading {} for its fingerprint", path.display()))?;
        Ok(buf)
    };
    let head = read(0, len.min(WINDOW))?;
    let tail_len = len.min(WINDOW);
    let tail = read(len - tail_len, tail_len)?;
    Ok((xxh3_64(&head), xxh3_64(&tail)))
}

impl TrackedInput {
    /// 0 clicks, 1 conversions.
    pub fn stream(&self) -> u8 {
        self.stream
    }

    /// The fingerprint of this input's first `bytes` bytes (the consumed prefix).
    pub fn snap(&self, bytes: u64) -> Result<InputSnap> {
        let mut snap = InputSnap {
            stream: self.stream,
            name: self.name.clone(),
            path: self.path.clone(),
            kind: self.kind,
            bytes,
            head: 0,
            tail: 0,
            ends_line: true,
        };
        match (self.kind, &self.file, self.whole) {
            (COMPRESSED, _, Some((size, head, tail))) => {
                (snap.bytes, snap.head, snap.tail) = (size, head, tail);
            }
            (PLAIN, Some(file), _) => {
                let path = PathBuf::from(&self.name);
                (snap.head, snap.tail) = window_hashes(file, bytes, &path)?;
                if bytes > 0 {
                    let mut last = [0u8; 1];
                    file.read_exact_at(&mut last, bytes - 1)
                        .with_context(|| format!("reading {}", self.name))?;
                    snap.ends_line = last[0] == b'\n';
                }
            }
            _ => {}
        }
        Ok(snap)
    }

    /// Whether this input has more than `saved` covered: a plain file that grew, or stdin
    /// (whatever it brings now comes after what the checkpoint consumed).
    pub fn grew_past(&self, saved: &ArchivedInputSnap) -> bool {
        match (self.kind, &self.file) {
            (STDIN, _) => true,
            (PLAIN, Some(f)) => {
                f.metadata().map(|m| m.len()).unwrap_or(0) > saved.bytes.to_native()
            }
            _ => false,
        }
    }
}

/// The reporting currency's setting: a change from one currency to another is refused, turning
/// `[money]` on (`none` → a currency) or off is not: conversions valued before count in no
/// reporting measure, and without it nothing new is counted.
const REPORTING_CURRENCY: &str = "money.reporting_currency";

/// The settings that change what a given input produces, as `(key, value)` text so a
/// mismatch can be shown as "was … now …".
pub fn semantic_settings(cfg: &PipelineConfig) -> Vec<(String, String)> {
    let mut out = vec![
        (
            "source.kind".to_string(),
            format!("{:?}", cfg.source.kind).to_lowercase(),
        ),
        // Sums already counted in one reporting currency cannot take reversals in another
        // (`money`); turning [money] on or off is fine ([`REPORTING_CURRENCY`]).
        (
            REPORTING_CURRENCY.to_string(),
            cfg.money.as_ref().map_or("none".to_string(), |m| {
                m.reporting_currency.to_ascii_uppercase()
            }),
        ),
    ];
    let mut flatten = |prefix: &str, value: serde_json::Value| {
        if let serde_json::Value::Object(map) = value {
            for (k, v) in map {
                out.push((format!("{prefix}.{k}"), v.to_string()));
            }
        }
    };
    flatten(
        "semantics",
        serde_json::to_value(&cfg.semantics).unwrap_or_default(),
    );
    flatten(
        "limits",
        serde_json::to_value(&cfg.limits).unwrap_or_default(),
    );
    match cfg.source.kind {
        SourceKind::Generator => flatten(
            "source.generator",
            serde_json::to_value(&cfg.source.generator).unwrap_or_default(),
        ),
        SourceKind::Fluvio => {
            let f = &cfg.source.fluvio;
            out.push(("source.fluvio.clicks_topic".into(), f.clicks_topic.clone()));
            out.push((
                "source.fluvio.conversions_topic".into(),
                f.conversions_topic.clone(),
            ));
        }
        SourceKind::Files | SourceKind::Http => {}
    }
    if cfg.checkpoint.state_dir.is_some() {
        // A state directory of its own could be shared by two outputs by mistake; the
        // checkpoint then says which output it belongs to.
        let dir = &cfg.sink.parquet.out;
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
        out.push((OUT_KEY.into(), dir.display().to_string()));
    }
    out.sort();
    out
}

/// The setting naming the output directory a separate `checkpoint.state_dir` belongs to.
const OUT_KEY: &str = "sink.parquet.out";

/// Why a run cannot resume from a checkpoint; `Display` says what changed and the ways out.
#[derive(Debug)]
pub struct Mismatch {
    pub epoch: u64,
    pub out: PathBuf,
    pub changes: Vec<String>,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "cannot resume {} from its checkpoint {}: this run's inputs or settings are not the ones it was taken with:",
            self.out.display(),
            self.epoch
        )?;
        for c in &self.changes {
            writeln!(f, "  - {c}")?;
        }
        write!(
            f,
            "Resuming would skip records this run never read or apply them onto another run's state. \
             Start over with --fresh (deletes that directory's outputs and state), or write to another --out."
        )
    }
}

impl std::error::Error for Mismatch {}

/// Compares a checkpoint's inputs and settings with this run's; every difference, in words.
pub fn compare(
    saved_inputs: &[ArchivedInputSnap],
    saved_settings: &[(String, String)],
    inputs: &[TrackedInput],
    settings: &[(String, String)],
) -> Vec<String> {
    let mut changes = Vec::new();
    for (key, was) in saved_settings {
        let found = settings.iter().find(|(k, _)| k == key);
        if let Some((was, now)) = found.and_then(|(_, now)| durations(was, now)) {
            // Durations are compared as durations and shown as written in a pipeline file
            // ("90d", not humantime's "2months 29days 13h …").
            if was != now {
                changes.push(format!("{key} was {}, now {}", compact(was), compact(now)));
            }
            continue;
        }
        match found {
            Some((_, now)) if key == REPORTING_CURRENCY && (now == "none" || was == "none") => {}
            Some((_, now)) if now != was && key == OUT_KEY => changes.push(format!(
                "checkpoint.state_dir holds the state of the output {was}, not of {now}: \
                 each output directory needs a state directory of its own"
            )),
            Some((_, now)) if now != was => changes.push(format!("{key} was {was}, now {now}")),
            None => changes.push(format!("{key} was {was}, now not set")),
            _ => {}
        }
    }
    for (key, now) in settings {
        if !saved_settings.iter().any(|(k, _)| k == key) {
            changes.push(format!("{key} is new ({now})"));
        }
    }
    for stream in 0..2u8 {
        let label = STREAMS[stream as usize];
        let saved = saved_inputs.iter().find(|s| s.stream == stream);
        let now = inputs.iter().find(|s| s.stream == stream);
        match (saved, now) {
            (None, None) => {}
            (Some(s), None) => changes.push(format!("the {label} input was {}, now none", s.name)),
            (None, Some(n)) => changes.push(format!(
                "the {label} input is new ({}); the checkpoint had none",
                n.name
            )),
            (Some(s), Some(n)) => {
                if let Some(c) = compare_one(label, s, n) {
                    changes.push(c);
                }
            }
        }
    }
    changes
}

fn compare_one(label: &str, saved: &ArchivedInputSnap, now: &TrackedInput) -> Option<String> {
    if saved.kind != now.kind || saved.path.as_str() != now.path {
        return Some(format!(
            "the {label} input was {}, now {}",
            saved.name, now.name
        ));
    }
    let bytes = saved.bytes.to_native();
    match now.kind {
        STDIN => None,
        COMPRESSED => {
            let (size, head, tail) = now.whole.unwrap_or_default();
            (size != bytes || head != saved.head.to_native() || tail != saved.tail.to_native())
                .then(|| {
                    format!(
                        "the {label} input {} changed since the checkpoint ({bytes} compressed bytes then, {size} now): a compressed input cannot grow or change between runs",
                        now.name
                    )
                })
        }
        _ => {
            let size = now
                .file
                .as_ref()
                .and_then(|f| f.metadata().ok())
                .map(|m| m.len())
                .unwrap_or(0);
            if size < bytes {
                return Some(format!(
                    "the {label} input {} has {size} bytes, but the checkpoint had already read {bytes}: it was truncated or replaced",
                    now.name
                ));
            }
            let current = match now.snap(bytes) {
                Ok(c) => c,
                Err(e) => return Some(format!("the {label} input {}: {e:#}", now.name)),
            };
            if current.head != saved.head.to_native() {
                Some(format!(
                    "the {label} input {} starts with other bytes than the file the checkpoint read: another file is at that path",
                    now.name
                ))
            } else if current.tail != saved.tail.to_native() {
                Some(format!(
                    "the {label} input {}: the {} bytes before byte {bytes} (where the checkpoint stopped) differ: the file was rewritten",
                    now.name,
                    bytes.min(WINDOW)
                ))
            } else if !saved.ends_line && size > bytes && !starts_new_line(now, bytes) {
                Some(format!(
                    "the {label} input {}: its last line had no newline at the checkpoint (byte {bytes}) and has since been continued; that line was already processed as it was",
                    now.name
                ))
            } else {
                None
            }
        }
    }
}

/// Both values as durations, if both are (JSON strings humantime reads).
fn durations(was: &str, now: &str) -> Option<(Duration, Duration)> {
    let parse = |v: &str| {
        let text = serde_json::from_str::<String>(v).ok()?;
        humantime::parse_duration(&text).ok()
    };
    Some((parse(was)?, parse(now)?))
}

/// A duration in the largest whole unit a pipeline file would use: `90d`, `6h`, `5m`, `1500ms`.
fn compact(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms > 0 && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Whether what follows byte `at` of a plain file starts with a line end (`\n` or `\r\n`):
/// then a last line that had no newline was ended as it was, not continued.
fn starts_new_line(input: &TrackedInput, at: u64) -> bool {
    let Some(file) = &input.file else {
        return false;
    };
    let mut next = [0u8; 2];
    let n = file.read_at(&mut next, at).unwrap_or(0);
    matches!(&next[..n], [b'\n', ..] | [b'\r', b'\n'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg_for(clicks: &Path) -> PipelineConfig {
        PipelineConfig::parse(
            &format!(
                "[source]\nkind = \"files\"\nclicks = \"{}\"\n",
                clicks.display()
            ),
            "t.toml",
        )
        .unwrap()
    }

    fn saved(cfg: &PipelineConfig, bytes: u64) -> (rkyv::util::AlignedVec, Vec<(String, String)>) {
        let snaps: Vec<InputSnap> = track(cfg)
            .unwrap()
            .iter()
            .map(|t| t.snap(bytes).unwrap())
            .collect();
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&snaps).unwrap();
        (bytes, semantic_settings(cfg))
    }

    fn check(
        cfg: &PipelineConfig,
        saved: &(rkyv::util::AlignedVec, Vec<(String, String)>),
    ) -> Vec<String> {
        let archived =
            rkyv::access::<rkyv::Archived<Vec<InputSnap>>, rkyv::rancor::Error>(&saved.0).unwrap();
        compare(
            archived,
            &saved.1,
            &track(cfg).unwrap(),
            &semantic_settings(cfg),
        )
    }

    #[test]
    fn appending_is_allowed_truncating_rewriting_and_replacing_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.ndjson");
        let text: String = (0..2000).map(|i| format!("{{\"n\":{i}}}\n")).collect();
        std::fs::write(&p, &text).unwrap();
        let cfg = cfg_for(&p);
        let at = text.len() as u64 - 100;
        let at = text[..at as usize].rfind('\n').unwrap() as u64 + 1;
        let s = saved(&cfg, at);
        assert!(check(&cfg, &s).is_empty());

        std::fs::write(&p, format!("{text}{{\"more\":1}}\n")).unwrap();
        assert!(check(&cfg, &s).is_empty(), "appending keeps the prefix");

        std::fs::write(&p, &text[..at as usize - 10]).unwrap();
        let c = check(&cfg, &s);
        assert!(c[0].contains("truncated"), "{c:?}");

        std::fs::write(
            &p,
            text.replacen("\"n\":1999", "\"n\":1998", 1).replacen(
                "{\"n\":1900}",
                "{\"n\":1901}",
                1,
            ),
        )
        .unwrap();
        let c = check(&cfg, &s);
        assert!(c[0].contains("rewritten"), "{c:?}");

        std::fs::write(&p, text.replacen("{\"n\":0}", "{\"n\":9}", 1)).unwrap();
        let c = check(&cfg, &s);
        assert!(c[0].contains("another file"), "{c:?}");
    }

    #[test]
    fn a_continued_last_line_a_moved_input_and_changed_settings_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.ndjson");
        std::fs::write(&p, "{\"a\":1}\n{\"b\":").unwrap();
        let cfg = cfg_for(&p);
        let s = saved(&cfg, 13);
        assert!(check(&cfg, &s).is_empty());
        std::fs::write(&p, "{\"a\":1}\n{\"b\":2}\n").unwrap();
        assert!(check(&cfg, &s)[0].contains("no newline"));
        // Ended as it was, then more lines: an append like any other.
        for end in ["\n", "\r\n"] {
            std::fs::write(&p, format!("{{\"a\":1}}\n{{\"b\":{end}{{\"c\":3}}\n")).unwrap();
            assert!(check(&cfg, &s).is_empty(), "{end:?}");
        }
        std::fs::write(&p, "{\"a\":1}\n{\"b\":\r").unwrap();
        assert!(check(&cfg, &s)[0].contains("no newline"));

        let q = dir.path().join("d.ndjson");
        std::fs::write(&q, "{\"a\":1}\n{\"b\":").unwrap();
        let mut other = cfg_for(&q);
        other.semantics.attribution_window = std::time::Duration::from_secs(3600);
        let c = check(&other, &s);
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(
            c[0].starts_with("semantics.attribution_window was 30d, now 1h"),
            "{c:?}"
        );
        assert!(c[1].contains("d.ndjson"), "{c:?}");
    }

    #[test]
    fn durations_compare_by_value_and_show_as_a_pipeline_writes_them() {
        let setting = |v: &str| vec![("semantics.dedup_window".to_string(), format!("\"{v}\""))];
        // What the settings hold (humantime's rendering, as older checkpoints do too) against
        // the same duration written another way: no change.
        let rendered = humantime::format_duration(Duration::from_secs(90 * 86_400)).to_string();
        assert!(rendered.contains("months"), "{rendered}");
        assert!(compare(&[], &setting(&rendered), &[], &setting("90d")).is_empty());
        assert!(compare(&[], &setting("2160h"), &[], &setting("90days")).is_empty());
        assert_eq!(
            compare(&[], &setting("90days"), &[], &setting("30days")),
            ["semantics.dedup_window was 90d, now 30d"]
        );
        assert_eq!(compact(Duration::from_millis(1500)), "1500ms");
        assert_eq!(compact(Duration::from_secs(300)), "5m");
    }
}
