//! The live generator: `rate` events per second at their (scaled) arrival times, unbounded
//! until SIGTERM, resumable. Runs the real binary.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The run report of `--summary-json`.
fn summary(path: &std::path::Path) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["report"].clone()
}

#[test]
fn an_unbounded_live_generator_runs_at_its_rate_until_sigterm_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("live.toml");
    std::fs::write(
        &p,
        format!(
            "[source]\nkind = \"generator\"\n[source.generator]\nseed = 3\nrate = 2000.0\n\
             time_scale = 1440.0\nunbounded = true\nstart = \"2026-10-01T00:00:00Z\"\n\
             [sink.parquet]\nout = {:?}\n[checkpoint]\nevery = \"1s\"\n",
            dir.path().join("out").display().to_string()
        ),
    )
    .unwrap();
    let run = |seconds: u64, json: &str| {
        let started = Instant::now();
        let child = attribd_cmd()
            .args(["run", "-q", "-p", p.to_str().unwrap(), "--summary-json"])
            .arg(dir.path().join(json))
            .env("ATTRIBD_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(seconds));
        assert!(
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (summary(&dir.path().join(json)), started.elapsed())
    };

    let (first, took) = run(4, "first.json");
    let events = first["counters"]["click_records"].as_u64().unwrap()
        + first["counters"]["conversion_records"].as_u64().unwrap();
    assert_eq!(first["interrupted"], true, "it does not end by itself");
    // Paced, not at full speed (which is hundreds of thousands per second): 2000 per second
    // over the run's life, give or take the start-up and the last batch.
    let at_rate = 2000.0 * took.as_secs_f64();
    assert!(
        events > 0 && (events as f64) < at_rate * 1.5,
        "{events} events in {took:?}"
    );

    // The next run resumes where the first stopped and goes on.
    let (second, _) = run(3, "second.json");
    assert!(second["resumed_from"].is_u64(), "{second}");
    let clicks = |s: &serde_json::Value| s["counters"]["clicks"].as_u64().unwrap();
    assert!(clicks(&second) > clicks(&first), "{first}\n{second}");

    // Event time ran 1440 times faster than the wall clock: a day per minute, so the 7 s of
    // both runs hold a couple of hours of clicks (first to last).
    let rows = rows(&read_table(&dir.path().join("out"), "clicks"));
    let ts: Vec<i64> = rows.iter().map(|r| int(r, "ts")).collect();
    let span_h = (ts.iter().max().unwrap() - ts.iter().min().unwrap()) as f64 / 3.6e6;
    assert!(span_h > 0.5 && span_h < 5.0, "{span_h} hours of event time");
}
