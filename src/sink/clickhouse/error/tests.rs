//! Unit tests of the error classification in `error.rs`: every permanent code in both body
//! formats, load and unknown codes, proxy statuses, client-side variants, what the crate
//! reports for canned HTTP answers, refused connections and timeouts, and (when
//! `ATTRIBD_CLICKHOUSE_URL` names one) a real server.

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
    let e = bad_response("Code: 81. DB::Exception: Database nosuch does not exist.\nStack trace");
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
        eprintln!("SKIPPED a_real_servers_errors_carry_their_codes: set ATTRIBD_CLICKHOUSE_URL");
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
