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
mod tests;
