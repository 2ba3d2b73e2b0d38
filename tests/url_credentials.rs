//! No secret in the logs: a ClickHouse URL carrying credentials is refused without echoing
//! them, wherever it comes from, and a URL that is logged has its query string removed.

mod common;

use std::process::Output;

use common::*;

const SECRET: &str = "hunter2";

/// URLs that carry a password (and sometimes a user name) in every way a URL can.
const URLS_WITH_CREDENTIALS: [&str; 5] = [
    "http://127.0.0.1:1/?password=hunter2",
    "http://127.0.0.1:1/?user=alice&password=hunter2",
    "clickhouse://u:hunter2@127.0.0.1",
    "http://alice:hunter2@127.0.0.1:8123",
    "alice:hunter2@127.0.0.1:8123",
];

fn assert_refused_quietly(what: &str, o: &Output) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(2), "{what}: {stderr}");
    assert!(
        stderr.contains("sink.clickhouse.url") && stderr.contains("credentials"),
        "{what}: the error names the key and the problem:\n{stderr}"
    );
    for secret in [SECRET, "alice"] {
        assert!(
            !stderr.contains(secret) && !stdout.contains(secret),
            "{what}: `{secret}` was echoed:\n{stderr}{stdout}"
        );
    }
}

#[test]
fn credentials_in_a_clickhouse_url_on_the_command_line_are_refused_without_echo() {
    let dir = tempfile::tempdir().unwrap();
    for url in URLS_WITH_CREDENTIALS {
        let o = attribd_cmd()
            .args([
                "run",
                "-q",
                "--clicks",
                fixture("clicks.ndjson").to_str().unwrap(),
                "--out",
                dir.path().to_str().unwrap(),
                "--clickhouse-url",
                url,
            ])
            .env("ATTRIBD_LOG", "debug")
            .output()
            .unwrap();
        assert_refused_quietly(&format!("run --clickhouse-url {url}"), &o);

        let o = attribd_cmd()
            .args(["migrate", "--clickhouse-url", url])
            .env("ATTRIBD_LOG", "debug")
            .output()
            .unwrap();
        assert_refused_quietly(&format!("migrate --clickhouse-url {url}"), &o);
    }
}

#[test]
fn credentials_in_a_pipeline_files_clickhouse_url_are_refused_without_echo() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("ch.toml");
    for url in URLS_WITH_CREDENTIALS {
        std::fs::write(
            &pipeline,
            format!(
                "[source]\nkind = \"generator\"\n[sink.clickhouse]\nurl = {url:?}\n\
                 [sink.parquet]\nout = {:?}\n",
                dir.path().join("out")
            ),
        )
        .unwrap();
        let p = pipeline.to_str().unwrap();
        for args in [vec!["check", "-p", p], vec!["run", "-q", "-p", p]] {
            let o = attribd_cmd()
                .args(&args)
                .env("ATTRIBD_LOG", "debug")
                .output()
                .unwrap();
            assert_refused_quietly(&format!("{args:?} with url = {url}"), &o);
        }
    }
}

/// A query string may hold other tokens; what attribd logs about the server is the URL without
/// it (here in the error of a connection that fails: nothing listens on port 9).
#[test]
fn a_logged_clickhouse_url_has_no_query_string() {
    let dir = tempfile::tempdir().unwrap();
    let o = attribd_cmd()
        .args([
            "run",
            "-q",
            "--clicks",
            fixture("clicks.ndjson").to_str().unwrap(),
            "--out",
            dir.path().to_str().unwrap(),
            "--clickhouse-url",
            "http://127.0.0.1:9/?session_id=t0k3n-in-query",
        ])
        .env("ATTRIBD_LOG", "debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("http://127.0.0.1:9/"),
        "the error names the server:\n{stderr}"
    );
    assert!(
        !stderr.contains("t0k3n") && !stderr.contains("session_id"),
        "the query string was logged:\n{stderr}"
    );
}
