//! What the user configures for the ClickHouse sink (`[sink.clickhouse]`) and what is built
//! from it: the options with their defaults and `validate()`, the credentials (kept out of the
//! options and out of logs), the URL as it may be logged, and the HTTP client.
//!
//! `config.rs` of the pipeline reads the table into a [`ClickHouseConfig`] and reports what
//! [`ClickHouseConfig::validate`] finds; the sink (`sink.rs`), `attribd migrate`
//! (`migrations.rs`) and the benchmarks connect with [`Credentials::load`] and [`client`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clickhouse::Client;
use serde::{Deserialize, Serialize};

use super::migrations::Retention;

/// User-facing options of the ClickHouse sink (`[sink.clickhouse]`). Credentials are not here:
/// the user comes from `ATTRIBD_CLICKHOUSE_USER` (or `user`), the password from
/// `ATTRIBD_CLICKHOUSE_PASSWORD` or the file named by `password_file`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP endpoint, e.g. `http://127.0.0.1:8123` (no credentials in it).
    pub url: String,
    /// Database holding attribd's tables.
    pub database: String,
    /// User name; `ATTRIBD_CLICKHOUSE_USER` overrides it.
    pub user: String,
    /// File whose content (trailing newline removed) is the password.
    pub password_file: Option<PathBuf>,
    /// Flush a table's buffer once it holds this many rows (buffers are also flushed at every
    /// checkpoint, `checkpoint.every`). 200 000 by default: the server's cost per row falls with
    /// the INSERT's size (18.16 took 4.3 s of CPU for 1.08 M rows in 50 000-row INSERTs, 1.9 s
    /// in 250 000-row ones), while 500 000 made the run slower (a longer last INSERT after
    /// the input ends, a larger sort). Below 229 376 an aggregate buffer's hash map stays at
    /// 2^18 slots of 248 bytes (65 MB); one more row doubles it.
    pub flush_rows: usize,
    /// First retry delay; doubles per failure (with ±50 % jitter) up to `retry_max`.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker waits before it lets one attempt through.
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
    /// Timeout of one request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Retention of `attribution_stats_minute` (click-derived rows), days.
    pub stats_retention_days: u32,
    /// Retention of `conversions`, days.
    pub conversions_retention_days: u32,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: String::new(),
            database: "attribd".to_string(),
            user: "default".to_string(),
            password_file: None,
            flush_rows: 200_000,
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            stats_retention_days: 90,
            conversions_retention_days: 730,
        }
    }
}

impl ClickHouseConfig {
    pub fn retention(&self) -> Retention {
        Retention {
            stats_days: self.stats_retention_days,
            conversions_days: self.conversions_retention_days,
        }
    }

    /// Problems with the options, as `(key, problem)` (keys relative to `sink.clickhouse`).
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            p.push((
                "url",
                format!(
                    "must be an http:// or https:// URL, got {:?}",
                    loggable_url(&self.url)
                ),
            ));
        }
        if let Some(what) = url_credentials(&self.url) {
            p.push((
                "url",
                format!(
                    "must not contain credentials (it has {what}); give the user in \
                     ATTRIBD_CLICKHOUSE_USER (or `sink.clickhouse.user`), the password in \
                     ATTRIBD_CLICKHOUSE_PASSWORD (or a file named by \
                     `sink.clickhouse.password_file`)"
                ),
            ));
        }
        if self.database.is_empty() {
            p.push(("database", "must not be empty".to_string()));
        }
        if self.flush_rows == 0 || self.flush_rows > 1_000_000 {
            p.push((
                "flush_rows",
                format!(
                    "must be 1..=1000000 (one INSERT block), got {}",
                    self.flush_rows
                ),
            ));
        }
        if self.breaker_failures == 0 {
            p.push(("breaker_failures", "must be at least 1".to_string()));
        }
        if self.retry_initial.is_zero() || self.retry_max < self.retry_initial {
            p.push((
                "retry_max",
                "retry_initial must be > 0 and retry_max ≥ retry_initial".to_string(),
            ));
        }
        p
    }
}

/// `url` as it may appear in logs and errors: without the query string and fragment (they may
/// carry `password=` or other tokens) and without a `user:password@` part (everything up to
/// the last `@`, since a password may itself hold `/`, `?` or `@`).
pub fn loggable_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    match scheme {
        Some(scheme) => format!("{scheme}://{rest}"),
        None => rest.to_string(),
    }
}

/// What in `url` is a credential, described without its value: a `user:password@` part (any
/// `@`), or a `user` / `password` query parameter (ClickHouse's HTTP interface takes both).
fn url_credentials(url: &str) -> Option<&'static str> {
    if url.contains('@') {
        return Some("a `user:password@` part");
    }
    let query = url.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .map(|pair| percent_decoded(pair.split('=').next().unwrap_or_default()))
        .find_map(|key| match key.to_ascii_lowercase().as_str() {
            "password" => Some("a `password` query parameter"),
            "user" => Some("a `user` query parameter"),
            _ => None,
        })
}

/// `%XX` escapes decoded (a query key may be spelled `pass%77ord`); anything else kept.
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (b[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(if byte == b'+' { b' ' } else { byte });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// User and password; `Debug` never shows the password.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials {{ user: {:?}, password: <redacted> }}",
            self.user
        )
    }
}

impl Credentials {
    /// From the environment and the password file.
    pub fn load(cfg: &ClickHouseConfig) -> Result<Credentials> {
        let user = std::env::var("ATTRIBD_CLICKHOUSE_USER").unwrap_or_else(|_| cfg.user.clone());
        let password = match &cfg.password_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| {
                    format!(
                        "sink.clickhouse.password_file: cannot read {}",
                        path.display()
                    )
                })?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
            None => std::env::var("ATTRIBD_CLICKHOUSE_PASSWORD").unwrap_or_default(),
        };
        Ok(Credentials { user, password })
    }
}

/// A client for `cfg` (RowBinary without schema validation, so 18.16 works; lz4).
pub fn client(cfg: &ClickHouseConfig, creds: &Credentials) -> Client {
    Client::default()
        .with_url(&cfg.url)
        .with_user(&creds.user)
        .with_password(&creds.password)
        .with_compression(clickhouse::Compression::Lz4)
        .with_validation(false)
}

/// Runs `f` on a small single-threaded tokio runtime (network I/O lives on tokio).
pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    Ok(rt.block_on(f))
}

#[cfg(test)]
mod url_tests {
    use super::*;

    fn url_problems(url: &str) -> Vec<String> {
        ClickHouseConfig {
            url: url.to_string(),
            ..ClickHouseConfig::default()
        }
        .validate()
        .into_iter()
        .filter(|(key, _)| *key == "url")
        .map(|(_, problem)| problem)
        .collect()
    }

    #[test]
    fn credentials_in_the_url_are_refused_without_naming_them() {
        for url in [
            "http://127.0.0.1:8123/?password=hunter2",
            "http://127.0.0.1:8123/?database=x&user=alice&password=hunter2",
            "http://127.0.0.1:8123?PASSWORD=hunter2",
            "http://127.0.0.1:8123/?pass%77ord=hunter2#top",
            "https://alice:hunter2@ch.example:8443",
            "http://alice:hun/ter?2@ch.example:8123",
            "clickhouse://alice:hunter2@127.0.0.1",
            "alice:hunter2@127.0.0.1:8123",
        ] {
            let problems = url_problems(url);
            assert!(
                problems
                    .iter()
                    .any(|p| p.contains("must not contain credentials")),
                "{url}: {problems:?}"
            );
            for p in &problems {
                for secret in ["hunter2", "hun/ter", "alice"] {
                    assert!(!p.contains(secret), "{url}: `{secret}` echoed in {p:?}");
                }
                assert!(!p.contains("hunter"), "{url}: {p:?}");
            }
        }
    }

    #[test]
    fn a_url_without_credentials_is_accepted_with_or_without_a_query() {
        for url in [
            "http://127.0.0.1:8123",
            "https://ch.example:8443/",
            "http://127.0.0.1:8123/?max_execution_time=5",
        ] {
            assert_eq!(url_problems(url), Vec::<String>::new(), "{url}");
        }
    }

    #[test]
    fn the_problem_names_the_way_to_pass_credentials() {
        let problems = url_problems("http://127.0.0.1:8123/?user=alice");
        assert_eq!(problems.len(), 1, "{problems:?}");
        for way in [
            "ATTRIBD_CLICKHOUSE_USER",
            "ATTRIBD_CLICKHOUSE_PASSWORD",
            "password_file",
            "`user` query parameter",
        ] {
            assert!(
                problems[0].contains(way),
                "{way} missing in {}",
                problems[0]
            );
        }
    }

    #[test]
    fn a_logged_url_has_no_query_string_fragment_or_user_info() {
        for (url, logged) in [
            ("http://127.0.0.1:8123", "http://127.0.0.1:8123"),
            (
                "http://127.0.0.1:8123/?session_id=t0k3n&password=x",
                "http://127.0.0.1:8123/",
            ),
            ("https://ch.example/db#frag", "https://ch.example/db"),
            (
                "http://alice:hunter2@ch.example:8123/",
                "http://ch.example:8123/",
            ),
            ("http://alice:p@ss/w?rd@ch.example", "http://ch.example"),
            ("alice:hunter2@ch.example:8123", "ch.example:8123"),
        ] {
            assert_eq!(loggable_url(url), logged, "{url}");
        }
    }

    #[test]
    fn a_wrong_scheme_is_reported_without_the_credentials() {
        let problems = url_problems("clickhouse://u:hunter2@127.0.0.1/?password=hunter3");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("got \"clickhouse://127.0.0.1/\"")),
            "{problems:?}"
        );
        assert!(
            problems.iter().all(|p| !p.contains("hunter")),
            "{problems:?}"
        );
    }
}
