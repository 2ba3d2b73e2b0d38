//! Errors of requests to ClickHouse, classified once, where they are made: can a retry fix
//! this, or must the run stop?
//!
//! Every failed request becomes a [`ClickHouseError`] at the one place the client's error is
//! turned into ours ([`explain`]; [`ClickHouseError::timed_out`] for attribd's own request
//! deadline). The error carries its [`ErrorClass`], and the commit loop (`commit.rs`) decides
//! on that alone: transient errors are retried with backoff behind the circuit breaker,
//! permanent ones end the run with the error. Nothing downstream reads the message text.
//!
//! The class comes from what the client and the server say in numbers, never from prose: the
//! variant of the `clickhouse` crate's error, the server's exception code, and — when a proxy
//! answered without a code — the HTTP status. The crate (0.15) keeps neither the code nor the
//! status as a field: its `BadResponse` holds the response body, which ClickHouse starts with
//! the code (`Code: 60, e.displayText() = …` from 18.16, `Code: 60. DB::Exception: …` from
//! current servers), or, when the body was empty, the crate's own `Code: 60` (from the
//! `X-ClickHouse-Exception-Code` header) or `503 Service Unavailable` (the status). That
//! number is read here, once, by [`exception_code`] and [`http_status`].

use std::time::Duration;

use clickhouse::error::Error;

/// Whether retrying the same request can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The same request gets the same answer until an operator acts; retrying would only stall
    /// the pipeline behind the breaker and hide the problem in warnings, so the run stops and
    /// says why. Nothing is lost: the checkpoint replays the batch on the next run.
    Permanent,
    /// The answer may differ later (server down or restarting, network, overload, timeouts,
    /// and everything not known to be permanent): retried, while the bounded channels slow the
    /// pipeline down.
    Transient,
}

/// Why an error is permanent (and which hint its message gives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The server does not accept the user or the password.
    Credentials,
    /// The user may not do this (missing grant, readonly profile).
    Denied,
    /// The database does not exist: `attribd migrate` has not run against it.
    NoDatabase,
    /// A table or column attribd writes is missing or typed otherwise: the table was dropped or
    /// not created by `attribd migrate`, and the same rows fail again.
    Schema,
    /// The statement is wrong (a bug in attribd, or a setting the server does not know).
    Request,
    /// The client cannot make the request as configured (e.g. an `https://` URL in a build
    /// without TLS, invalid parameters).
    Client,
}

/// Server exception codes a retry cannot fix, with their names in ClickHouse's
/// `ErrorCodes.cpp` and why (checked against 18.16 and current servers).
///
/// Every other code is transient, on purpose: retrying a permanent error costs warnings, giving
/// up on a transient one stops the pipeline. Some that look permanent are not:
/// 33 `CANNOT_READ_ALL_DATA` (a RowBinary body cut off by the network looks like rows that do not
/// fit), 159 `TIMEOUT_EXCEEDED`, 202 `TOO_MANY_SIMULTANEOUS_QUERIES`, 241
/// `MEMORY_LIMIT_EXCEEDED`, 252 `TOO_MANY_PARTS` (load, passes), 242 `TABLE_IS_READ_ONLY` (a
/// replicated table without ZooKeeper, comes back), 319 `UNKNOWN_STATUS_OF_INSERT` (the insert
/// may be in: the retry looks the batch id up first).
pub const PERMANENT_CODES: [(u32, &str, Cause); 13] = [
    // The same user and password get the same answer.
    (192, "UNKNOWN_USER", Cause::Credentials),
    (193, "WRONG_PASSWORD", Cause::Credentials),
    (194, "REQUIRED_PASSWORD", Cause::Credentials),
    (516, "AUTHENTICATION_FAILED", Cause::Credentials),
    // Grants and profiles change only by an operator.
    (497, "ACCESS_DENIED", Cause::Denied),
    (164, "READONLY", Cause::Denied),
    // Objects attribd writes to are missing or incompatible until `attribd migrate` runs.
    (81, "UNKNOWN_DATABASE", Cause::NoDatabase),
    (60, "UNKNOWN_TABLE", Cause::Schema),
    (16, "NO_SUCH_COLUMN_IN_TABLE", Cause::Schema),
    (47, "UNKNOWN_IDENTIFIER", Cause::Schema),
    (53, "TYPE_MISMATCH", Cause::Schema),
    // The same statement text fails again.
    (62, "SYNTAX_ERROR", Cause::Request),
    (115, "UNKNOWN_SETTING", Cause::Request),
];

/// HTTP statuses that are permanent when a response carries no exception code (a proxy in
/// front of ClickHouse answered): 401 and 403 refuse the credentials. Other statuses (502, 503,
/// 504, 429, a 404 during a deploy) are transient.
const PERMANENT_STATUSES: [(u16, Cause); 2] =
    [(401, Cause::Credentials), (403, Cause::Credentials)];

/// A failed request to ClickHouse: a message that names the likely cause, and whether a retry
/// can fix it. `Display` is the message alone.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ClickHouseError {
    /// Why a retry cannot fix it; `None`: transient.
    cause: Option<Cause>,
    /// The server's exception code, when it answered with one.
    code: Option<u32>,
    message: String,
}

impl ClickHouseError {
    /// attribd's own deadline for one request passed (transient).
    pub fn timed_out(after: Duration) -> ClickHouseError {
        ClickHouseError {
            cause: None,
            code: None,
            message: format!("timed out after {after:?}"),
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self.cause {
            Some(_) => ErrorClass::Permanent,
            None => ErrorClass::Transient,
        }
    }

    pub fn is_permanent(&self) -> bool {
        self.class() == ErrorClass::Permanent
    }

    /// Why the error is permanent; `None` for a transient one.
    pub fn cause(&self) -> Option<Cause> {
        self.cause
    }

    /// The server's exception code (`60` for `UNKNOWN_TABLE`), if the server sent one.
    pub fn code(&self) -> Option<u32> {
        self.code
    }
}

impl From<Error> for ClickHouseError {
    fn from(e: Error) -> ClickHouseError {
        let code = match &e {
            Error::BadResponse(body) => exception_code(body),
            _ => None,
        };
        let cause = classify(&e, code);
        let text = e.to_string();
        let line = first_line(&text);
        let message = match cause {
            Some(Cause::Credentials) => format!(
                "ClickHouse refused the credentials (user from ATTRIBD_CLICKHOUSE_USER / sink.clickhouse.user, password from ATTRIBD_CLICKHOUSE_PASSWORD or sink.clickhouse.password_file): {line}"
            ),
            Some(Cause::NoDatabase) => format!(
                "ClickHouse database does not exist: {line}; create it with `attribd migrate`"
            ),
            _ => format!("ClickHouse: {line}"),
        };
        ClickHouseError {
            cause,
            code,
            message,
        }
    }
}

/// Turns a client error into ours: classified, with a message that names the likely cause.
pub fn explain(e: Error) -> ClickHouseError {
    ClickHouseError::from(e)
}

/// Why `e` is permanent, or `None` if a retry may fix it. `code` is the server's exception code
/// in it, if any.
fn classify(e: &Error, code: Option<u32>) -> Option<Cause> {
    match e {
        Error::BadResponse(body) => match code {
            Some(code) => PERMANENT_CODES
                .iter()
                .find(|(c, _, _)| *c == code)
                .map(|&(_, _, cause)| cause),
            None => {
                let status = http_status(body)?;
                PERMANENT_STATUSES
                    .iter()
                    .find(|(s, _)| *s == status)
                    .map(|&(_, cause)| cause)
            }
        },
        Error::InvalidParams(_) | Error::Unsupported(_) => Some(Cause::Client),
        Error::SchemaMismatch(_) => Some(Cause::Schema),
        // Network (connection refused or reset, DNS), TimedOut, (de)compression, a response cut
        // short or garbled, and whatever variants later versions of the crate add.
        _ => None,
    }
}

/// The exception code a ClickHouse error body starts with: `Code: 193, e.displayText() = …`
/// (18.16), `Code: 60. DB::Exception: …` (current servers), `Code: 60` (the crate, from the
/// `X-ClickHouse-Exception-Code` header of an empty body).
pub fn exception_code(body: &str) -> Option<u32> {
    let rest = body.trim_start().strip_prefix("Code:")?.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The HTTP status of an empty error body without an exception code, which the crate reports
/// as `503 Service Unavailable`.
pub fn http_status(body: &str) -> Option<u16> {
    let (status, _reason) = body.trim().split_once(' ')?;
    let status: u16 = (status.len() == 3).then(|| status.parse().ok())??;
    (100..600).contains(&status).then_some(status)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;
    use crate::sink::clickhouse::config::{ClickHouseConfig, Credentials, block_on, client};

    fn bad_response(body: &str) -> ClickHouseError {
        ClickHouseError::from(Error::BadResponse(body.to_string()))
    }

    #[test]
    fn every_permanent_code_is_permanent_in_the_old_and_the_new_body_format() {
        for (code, name, cause) in PERMANENT_CODES {
            for body in [
                format!(
                    "Code: {code}, e.displayText() = DB::Exception: something, e.what() = DB::Exception"
                ),
                format!("Code: {code}. DB::Exception: something. ({name}) (version 24.8.4.13)"),
                format!("Code: {code}"),
            ] {
                let e = bad_response(&body);
                assert_eq!(e.class(), ErrorClass::Permanent, "{body}");
                assert_eq!((e.cause(), e.code()), (Some(cause), Some(code)), "{body}");
            }
        }
    }

    #[test]
    fn load_and_unknown_codes_are_transient() {
        for code in [
            33, 159, 202, 209, 210, 241, 242, 252, 319, 425, 999, 1, 6, 600, 1600,
        ] {
            let e = bad_response(&format!("Code: {code}. DB::Exception: busy"));
            assert_eq!(e.class(), ErrorClass::Transient, "{code}");
            assert_eq!(e.code(), Some(code));
        }
    }

    #[test]
    fn codes_are_compared_as_numbers_not_prefixes() {
        // `Code: 60` and `Code: 16` once matched 600 and 164 as text.
        for code in [600, 605, 160, 169, 4700, 810] {
            let e = bad_response(&format!("Code: {code}, e.displayText() = DB::Exception: x"));
            assert_eq!(e.class(), ErrorClass::Transient, "{code}");
        }
        assert_eq!(bad_response("Code: 164").cause(), Some(Cause::Denied));
    }

    #[test]
    fn the_wording_of_a_message_does_not_decide() {
        for body in [
            "Table x does not exist",
            "wrong password, refused the credentials",
            "DB::Exception: Code: 60 inside the text",
            "Expected at least one column in the header",
        ] {
            let e = bad_response(body);
            assert_eq!(
                (e.class(), e.code()),
                (ErrorClass::Transient, None),
                "{body}"
            );
        }
    }

    #[test]
    fn a_proxy_status_without_a_code_decides_only_for_credentials() {
        assert_eq!(
            bad_response("401 Unauthorized").cause(),
            Some(Cause::Credentials)
        );
        assert_eq!(
            bad_response("403 Forbidden").cause(),
            Some(Cause::Credentials)
        );
        for body in [
            "502 Bad Gateway",
            "503 Service Unavailable",
            "504 Gateway Timeout",
            "429 Too Many Requests",
            "404 Not Found",
        ] {
            assert_eq!(bad_response(body).class(), ErrorClass::Transient, "{body}");
        }
        assert_eq!(http_status("4010 x"), None);
        assert_eq!(http_status("abc Forbidden"), None);
    }

    #[test]
    fn messages_name_the_likely_cause() {
        let e = bad_response(
            "Code: 193, e.displayText() = DB::Exception: Wrong password for user default, e.what() = DB::Exception",
        );
        assert!(
            e.to_string()
                .starts_with("ClickHouse refused the credentials ("),
            "{e}"
        );
        assert!(
            e.to_string()
                .ends_with("Wrong password for user default, e.what() = DB::Exception")
        );
        let e =
            bad_response("Code: 81. DB::Exception: Database nosuch does not exist.\nStack trace");
        assert_eq!(
            e.to_string(),
            "ClickHouse database does not exist: bad response: Code: 81. DB::Exception: Database nosuch does not exist.; create it with `attribd migrate`"
        );
        let e = bad_response("Code: 60. DB::Exception: Table t does not exist.");
        assert_eq!(
            e.to_string(),
            "ClickHouse: bad response: Code: 60. DB::Exception: Table t does not exist."
        );
        assert_eq!(
            ClickHouseError::timed_out(Duration::from_secs(30)).to_string(),
            "timed out after 30s"
        );
    }

    #[test]
    fn client_side_variants_are_classified_by_variant() {
        let transient = [
            Error::TimedOut,
            Error::Network("connection reset".into()),
            Error::Decompression("bad frame".into()),
            Error::NotEnoughData,
            Error::Other("x".into()),
        ];
        for e in transient {
            let shown = e.to_string();
            assert_eq!(
                ClickHouseError::from(e).class(),
                ErrorClass::Transient,
                "{shown}"
            );
        }
        for e in [
            Error::Unsupported("invalid URL, scheme is not http".into()),
            Error::InvalidParams("bad".into()),
        ] {
            assert_eq!(ClickHouseError::from(e).cause(), Some(Cause::Client));
        }
        assert!(!ClickHouseError::timed_out(Duration::from_millis(1)).is_permanent());
    }

    /// A client for `url` as the sink builds it.
    fn client_for(url: &str) -> clickhouse::Client {
        let cfg = ClickHouseConfig {
            url: url.to_string(),
            ..ClickHouseConfig::default()
        };
        client(&cfg, &Credentials::load(&cfg).unwrap())
    }

    /// `SELECT 1` against `url`, as the crate reports its failure.
    fn select_one(url: &str) -> ClickHouseError {
        let c = client_for(url);
        match block_on(c.query("SELECT 1").fetch_one::<u8>()).unwrap() {
            Ok(v) => panic!("{url} answered {v}"),
            Err(e) => e.into(),
        }
    }

    /// A one-shot HTTP server that reads a request and answers `response`; its URL.
    fn canned(response: String) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the whole request (headers, then a body by length or chunks) before answering.
            loop {
                let n = s.read(&mut buf).unwrap_or(0);
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req).to_ascii_lowercase();
                let Some(head_end) = text.find("\r\n\r\n") else {
                    if n == 0 {
                        break;
                    }
                    continue;
                };
                let body = &req[head_end + 4..];
                let done = if let Some(len) = text[..head_end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                {
                    body.len() >= len.trim().parse::<usize>().unwrap()
                } else if text[..head_end].contains("transfer-encoding: chunked") {
                    body.ends_with(b"0\r\n\r\n")
                } else {
                    true
                };
                if done || n == 0 {
                    break;
                }
            }
            let _ = s.write_all(response.as_bytes());
        });
        url
    }

    fn http(status: &str, headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=UTF-8\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[test]
    fn server_answers_are_classified_as_the_crate_reports_them() {
        // (status line, extra headers, body) → (class, code)
        let cases = [
            (
                "401 Unauthorized",
                "",
                "Code: 193, e.displayText() = DB::Exception: Wrong password for user default, e.what() = DB::Exception\n",
                ErrorClass::Permanent,
                Some(193),
            ),
            (
                "404 Not Found",
                "X-ClickHouse-Exception-Code: 60\r\n",
                "Code: 60. DB::Exception: Table attribd.conversions does not exist. (UNKNOWN_TABLE) (version 24.8.4.13 (official build))\n",
                ErrorClass::Permanent,
                Some(60),
            ),
            (
                "403 Forbidden",
                "X-ClickHouse-Exception-Code: 516\r\n",
                "",
                ErrorClass::Permanent,
                Some(516),
            ),
            (
                "400 Bad Request",
                "",
                "Code: 62, e.displayText() = DB::Exception: Syntax error: failed at position 1: SELEKT\n. Expected one of: …, e.what() = DB::Exception\n",
                ErrorClass::Permanent,
                Some(62),
            ),
            (
                "500 Internal Server Error",
                "X-ClickHouse-Exception-Code: 241\r\n",
                "Code: 241. DB::Exception: Memory limit (total) exceeded. (MEMORY_LIMIT_EXCEEDED)\n",
                ErrorClass::Transient,
                Some(241),
            ),
            (
                "503 Service Unavailable",
                "",
                "",
                ErrorClass::Transient,
                None,
            ),
            ("401 Unauthorized", "", "", ErrorClass::Permanent, None),
        ];
        for (status, headers, body, class, code) in cases {
            let e = select_one(&canned(http(status, headers, body)));
            assert_eq!(
                (e.class(), e.code()),
                (class, code),
                "{status} {body:?}: {e}"
            );
        }
    }

    #[test]
    fn a_refused_connection_is_transient() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = select_one(&format!("http://127.0.0.1:{port}"));
        assert_eq!((e.class(), e.code()), (ErrorClass::Transient, None), "{e}");
    }

    #[test]
    fn an_insert_that_times_out_is_transient() {
        #[derive(clickhouse::Row, serde::Serialize)]
        struct One {
            a: u8,
        }
        // A server that accepts and never answers.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_secs(10));
            drop(s);
        });
        let c = client_for(&url);
        let err = block_on(async {
            let mut ins = c
                .insert::<One>("t")
                .await?
                .with_timeouts(None, Some(Duration::from_millis(200)));
            ins.write(&One { a: 1 }).await?;
            ins.end().await
        })
        .unwrap()
        .unwrap_err();
        assert!(matches!(err, Error::TimedOut), "{err}");
        assert_eq!(ClickHouseError::from(err).class(), ErrorClass::Transient);
    }

    /// The same against a real server, when `ATTRIBD_CLICKHOUSE_URL` names one.
    #[test]
    fn a_real_servers_errors_carry_their_codes() {
        let Ok(url) = std::env::var("ATTRIBD_CLICKHOUSE_URL") else {
            eprintln!(
                "SKIPPED a_real_servers_errors_carry_their_codes: set ATTRIBD_CLICKHOUSE_URL"
            );
            return;
        };
        let c = client_for(&url);
        let run = |c: clickhouse::Client, sql: &'static str| -> ClickHouseError {
            block_on(c.query(sql).execute())
                .unwrap()
                .unwrap_err()
                .into()
        };
        for (sql, code) in [
            ("SELECT 1 FROM attribd_no_such_db.t", 81),
            ("SELECT 1 FROM system.attribd_no_such_table", 60),
            ("SELECT attribd_no_such_column FROM system.one", 47),
            ("SELEKT 1", 62),
        ] {
            let e = run(c.clone(), sql);
            assert_eq!(
                (e.class(), e.code()),
                (ErrorClass::Permanent, Some(code)),
                "{sql}: {e}"
            );
        }
        let e = run(
            c.with_user("attribd_no_such_user").with_password("x"),
            "SELECT 1",
        );
        assert_eq!(e.cause(), Some(Cause::Credentials), "{e}");
        assert!(matches!(e.code(), Some(192 | 516)), "{e}");
    }
}
