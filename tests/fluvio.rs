//! The Fluvio source against a real cluster: runs when `FLUVIO_ENDPOINT` is set (e.g.
//! `127.0.0.1:9003`), and says it was skipped otherwise. A cluster can be started from the
//! docker-compose stack, or built from infinyon/fluvio (`fluvio-run sc` / `fluvio-run spu`).
//!
//! It loads the fixture into two fresh topics with `attribd produce`, runs the pipeline with
//! `--exit-when-idle`, checks the exact counts, then runs again: the committed offsets make the
//! second run read nothing.

mod common;

use common::*;

#[test]
fn fixture_through_fluvio_topics() {
    let Ok(endpoint) = std::env::var("FLUVIO_ENDPOINT") else {
        eprintln!(
            "SKIPPED fixture_through_fluvio_topics: set FLUVIO_ENDPOINT to a Fluvio SC (host:port)"
        );
        return;
    };
    let tag = format!("{}-{}", std::process::id(), attribd::event::time::now_ms());
    let clicks_topic = format!("attribd-test-clicks-{tag}");
    let convs_topic = format!("attribd-test-conversions-{tag}");
    for (topic, file) in [
        (&clicks_topic, "clicks.ndjson"),
        (&convs_topic, "conversions.ndjson"),
    ] {
        attribd(&[
            "produce",
            "--endpoint",
            &endpoint,
            "--topic",
            topic,
            "--create-partitions",
            "2",
            fixture(file).to_str().unwrap(),
        ]);
    }
    let dir = tempfile::tempdir().unwrap();
    let run = |out: &str| {
        let o = attribd(&[
            "run",
            "-q",
            "--fluvio-endpoint",
            &endpoint,
            "--fluvio-clicks-topic",
            &clicks_topic,
            "--fluvio-conversions-topic",
            &convs_topic,
            "--exit-when-idle",
            "3s",
            "--out",
            dir.path().join(out).to_str().unwrap(),
        ]);
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let count = |summary: &str, label: &str| -> Option<u64> {
        summary
            .lines()
            .find(|l| l.trim_start().starts_with(label))?
            .split_whitespace()
            .last()?
            .parse()
            .ok()
    };
    let first = run("first");
    for (label, n) in [
        ("click records", 12),
        ("clicks accepted", 7),
        ("duplicate clicks", 1),
        ("conversions accepted", 7),
        ("refused changes (→ pending)", 1),
        ("dead letters", 9),
    ] {
        assert_eq!(count(&first, label), Some(n), "{label}\n{first}");
    }
    let second = run("second");
    assert_eq!(
        count(&second, "events in"),
        Some(0),
        "offsets were committed:\n{second}"
    );
}
