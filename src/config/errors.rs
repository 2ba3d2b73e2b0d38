//! Problems in a pipeline file, reported as *file, key, what is wrong*.

use std::fmt;

use super::SourceKind;

/// One problem in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub problem: String,
}

/// Everything wrong with a pipeline file; `Display` prints one `file: key: problem` per line.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: key `{}`: {}", self.file, p.key, p.problem)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Keys of `[source]` that `source.kind` does not use (a `[source.fluvio]` table under
/// `kind = "files"`, `clicks` under `kind = "fluvio"`): errors, like unknown keys, since they
/// would be silently ignored. Judged from the file's text, so a table that is present counts
/// even when it is empty or equal to the defaults. (Command-line overrides may switch the kind
/// of a pipeline on purpose; this concerns the file.)
pub(super) fn unused_source_keys(text: &str, kind: SourceKind) -> Vec<ConfigProblem> {
    let Ok(doc) = toml::from_str::<toml::Table>(text) else {
        return Vec::new();
    };
    let Some(source) = doc.get("source").and_then(|s| s.as_table()) else {
        return Vec::new();
    };
    source
        .keys()
        .filter_map(|key| {
            let owner = match key.as_str() {
                "generator" => SourceKind::Generator,
                "fluvio" => SourceKind::Fluvio,
                "http" => SourceKind::Http,
                "clicks" | "conversions" => SourceKind::Files,
                _ => return None,
            };
            // A Fluvio pipeline's file may also describe the edge that feeds its topics
            // (`attribd ingest` reads [source.http] and [source.fluvio]).
            let edge_of_fluvio = owner == SourceKind::Http && kind == SourceKind::Fluvio;
            (owner != kind && !edge_of_fluvio).then(|| ConfigProblem {
                key: format!("source.{key}"),
                problem: format!(
                    "is for kind = \"{}\", not used by kind = \"{}\"; remove it or change source.kind",
                    owner.as_str(),
                    kind.as_str()
                ),
            })
        })
        .collect()
}

/// The dotted key of a "missing field" error: the field inside the table the error's span
/// points at (`source.kind` for a `[source]` without `kind`, also for a file without
/// `[source]`, since `kind` is the one key a pipeline must give).
pub(super) fn missing_field_key(text: &str, e: &toml::de::Error) -> Option<String> {
    let field = e
        .message()
        .strip_prefix("missing field `")?
        .strip_suffix('`')?;
    let span = e.span()?;
    if span.is_empty() {
        // The top-level table.
        return Some(match field {
            "source" => "source.kind".to_string(),
            f => f.to_string(),
        });
    }
    let at = text.get(span.clone())?.trim();
    let table = if at.starts_with('[') {
        // A `[table]` header.
        at.trim_matches(['[', ']']).trim().to_string()
    } else {
        // An inline table: `table = { … }`.
        toml_key(text, e)
    };
    Some(format!("{table}.{field}"))
}

/// Best effort: the dotted key a TOML error points at, from the error's span.
pub(super) fn toml_key(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return "(file)".into();
    };
    let before = &text[..span.start.min(text.len())];
    let table = before
        .lines()
        .rev()
        .find_map(|l| {
            let l = l.trim();
            (l.starts_with('[') && l.ends_with(']')).then(|| l.trim_matches(['[', ']']).to_string())
        })
        .unwrap_or_default();
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line.split('=').next().unwrap_or("").trim().to_string();
    let key = if key.starts_with('[') || key.is_empty() {
        String::new()
    } else {
        key
    };
    match (table.is_empty(), key.is_empty()) {
        (true, true) => "(file)".into(),
        (true, false) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}
