//! What an operator relies on: the metrics tell the truth, the HTTP endpoint answers while a
//! run works, a slow sink slows the source instead of filling memory, logs are JSON on request
//! and carry no secrets, bad configuration exits with code 2.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use attribd::config::PipelineConfig;
use attribd::pipeline::{RunOptions, run};
use attribd::telemetry::Metrics;
use common::*;

/// The value of one series in a Prometheus text page.
fn series(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// `GET path` over plain HTTP/1.1; (status code, body).
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn dead_letter_lines(out: &Path) -> usize {
    files_under(&out.join("dead_letters"))
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .map(|t| t.lines().count())
                .unwrap_or(0)
        })
        .sum()
}

/// The fixture's known answers, read from `/metrics` exactly as Prometheus would see them, and
/// the sink counters equal to what an independent reader finds in the files.
#[test]
fn metrics_report_the_fixture_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let toml = format!(
        "[source]\nkind = \"files\"\nclicks = {:?}\nconversions = {:?}\n[sink.parquet]\nout = {:?}\n[metrics]\naddr = \"off\"\n",
        fixture("clicks.ndjson"),
        fixture("conversions.ndjson"),
        out
    );
    let cfg = PipelineConfig::parse(&toml, "test").unwrap();
    let metrics = Arc::new(Metrics::new());
    let report = run(
        &cfg,
        RunOptions {
            metrics: Some(metrics.clone()),
            ..RunOptions::default()
        },
    )
    .unwrap();
    let page = metrics.render();
    let v = |name: &str| series(&page, name).unwrap_or_else(|| panic!("{name} not in\n{page}"));

    assert_eq!(v(r#"attribd_events_in_total{stream="clicks"}"#), 12.0);
    assert_eq!(v(r#"attribd_events_in_total{stream="conversions"}"#), 16.0);
    assert_eq!(v("attribd_clicks_total"), 7.0);
    assert_eq!(v("attribd_duplicate_clicks_total"), 1.0);
    assert_eq!(v("attribd_unique_clicks_total"), 6.0);
    let dead = [
        ("invalid_json", 2.0),
        ("missing_field", 2.0),
        ("invalid_field", 3.0),
        ("invalid_utf8", 1.0),
        ("refused_status_change", 1.0),
        ("oversize", 0.0),
        ("timestamp_out_of_range", 0.0),
    ];
    for (reason, n) in dead {
        assert_eq!(
            v(&format!(
                "attribd_dead_letters_total{{reason=\"{reason}\"}}"
            )),
            n,
            "{reason}"
        );
    }
    let c = &report.counters;
    assert_eq!(v("attribd_conversions_total"), c.conversions as f64);
    assert_eq!(
        v("attribd_duplicate_conversions_total"),
        c.duplicate_conversions as f64
    );
    assert_eq!(v("attribd_refused_status_changes_total"), 1.0);
    assert_eq!(
        v("attribd_conversions_attributed_total"),
        c.attributed as f64
    );
    assert_eq!(
        v(r#"attribd_conversions_unattributed_total{reason="unknown_click"}"#)
            + v(r#"attribd_conversions_unattributed_total{reason="outside_window"}"#)
            + v("attribd_conversions_attributed_total"),
        v("attribd_conversions_total")
    );

    // Sink counters = what the files hold.
    let parquet = |t: &str| rows(&read_table(&out, t)).len() as f64;
    assert_eq!(
        v(r#"attribd_sink_rows_total{sink="parquet",table="clicks"}"#),
        parquet("clicks")
    );
    assert_eq!(parquet("clicks"), 7.0);
    assert_eq!(
        v(r#"attribd_sink_rows_total{sink="parquet",table="conversions"}"#),
        parquet("conversions")
    );
    assert_eq!(
        v(r#"attribd_sink_rows_total{sink="parquet",table="stats_minute"}"#),
        parquet("stats_minute")
    );
    assert_eq!(
        v(r#"attribd_sink_rows_total{sink="dead_letters",table="dead_letters"}"#),
        dead_letter_lines(&out) as f64
    );
    assert_eq!(dead_letter_lines(&out), 9);

    // Every queue drained; state sizes as the engine reports them; a checkpoint was taken.
    for q in [
        "raw_clicks",
        "raw_conversions",
        "decoded_clicks",
        "decoded_conversions",
        "sink_clicks",
        "sink_rest",
        "sink_clickhouse",
    ] {
        assert_eq!(
            v(&format!("attribd_queue_depth_events{{queue=\"{q}\"}}")),
            0.0
        );
    }
    assert_eq!(
        v(r#"attribd_state_keys{map="click_index"}"#),
        report.sizes.indexed_clicks as f64
    );
    assert_eq!(
        v(r#"attribd_state_keys{map="dedup"}"#),
        report.sizes.dedup_keys as f64
    );
    assert!(v("attribd_checkpoint_duration_seconds_count") >= 1.0);
    assert_eq!(
        v("attribd_checkpoint_duration_seconds_count"),
        report.checkpoints as f64
    );
    // Every checkpoint paused the state stage once (and no longer than it took in all).
    assert_eq!(
        v("attribd_checkpoint_pause_seconds_count"),
        report.checkpoints as f64
    );
    assert!(
        v("attribd_checkpoint_pause_seconds_sum") <= v("attribd_checkpoint_duration_seconds_sum")
    );
    assert!(v("attribd_checkpoint_size_bytes") > 0.0);
    assert_eq!(
        v("attribd_checkpoint_size_bytes"),
        report.last_checkpoint_bytes as f64
    );
    // Just checkpointed: the age is the time since then, not since start.
    assert!(v("attribd_checkpoint_age_seconds") < 60.0);
    assert!(v("attribd_checkpoint_last_success_timestamp_seconds") > 1.7e9);
    // One latency observation per non-empty batch: here one batch per stream.
    for stage in ["processed", "durable"] {
        for stream in ["clicks", "conversions"] {
            assert_eq!(
                v(&format!(
                    r#"attribd_event_latency_seconds_count{{stage="{stage}",stream="{stream}"}}"#
                )),
                1.0,
                "{stage} {stream}"
            );
        }
    }
}

/// Reads `VmHWM` (peak resident set) of a running process, bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// A generator far faster than a sink held to 10 000 rows/s per thread: the queues stay at their
/// bounds, the source is slowed to the sink's pace, memory stays flat, and after a SIGTERM
/// every accepted click is in the Parquet files. Meanwhile `/health`, `/ready` and `/metrics`
/// answer.
#[test]
fn a_slow_sink_slows_the_source_and_memory_stays_bounded() {
    const RATE: u64 = 10_000;
    const RUN: Duration = Duration::from_secs(6);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let pipeline = dir.path().join("slow.toml");
    // 50 M clicks: without backpressure the generator (≥ 200 K events/s here) would queue
    // gigabytes in these six seconds.
    std::fs::write(
        &pipeline,
        format!(
            "[source]\nkind = \"generator\"\n[source.generator]\nclicks = 50000000\n\
             [sink.parquet]\nout = {out:?}\nthrottle_rows_per_second = {RATE}\n\
             [metrics]\naddr = \"{addr}\"\n"
        ),
    )
    .unwrap();
    let child = common::attribd_cmd()
        .args(["run", "-q", "-p", pipeline.to_str().unwrap()])
        .env("ATTRIBD_METRICS_ADDR", &addr)
        .env("ATTRIBD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let started = Instant::now();

    let mut health = None;
    while health.is_none() && started.elapsed() < Duration::from_secs(10) {
        health = http_get(&addr, "/health");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(health.map(|h| h.0), Some(200), "/health never answered");
    std::thread::sleep(Duration::from_secs(2));
    let (ready, why) = http_get(&addr, "/ready").unwrap();
    assert_eq!(ready, 200, "{why}");
    let mut max_queued = 0.0f64;
    let mut page = String::new();
    while started.elapsed() < RUN {
        let (code, body) = http_get(&addr, "/metrics").unwrap();
        assert_eq!(code, 200);
        for l in body
            .lines()
            .filter(|l| l.starts_with("attribd_queue_depth_events{"))
        {
            let n: f64 = l.rsplit(' ').next().unwrap().parse().unwrap();
            max_queued = max_queued.max(n);
        }
        page = body;
        std::thread::sleep(Duration::from_millis(300));
    }
    let peak = peak_rss(pid).expect("reading /proc/PID/status");
    let elapsed = started.elapsed();
    // SIGTERM: stop reading, checkpoint, exit 0.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let o = child.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{summary}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let field = |name: &str| -> u64 {
        summary
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in\n{summary}"))
    };
    let events_in = field("events in");
    let accepted = field("clicks accepted");
    // The queues never hold more than their bounds: 8 batches (+1 being handed over) of at
    // most 4096 input records; a state batch to the `rest` sink carries an aggregate row per
    // click plus conversions and dead letters, hence the 1.25.
    assert!(
        max_queued <= 9.0 * 4096.0 * 1.25,
        "queue depth {max_queued}"
    );
    assert!(series(&page, r#"attribd_events_in_total{stream="clicks"}"#).unwrap() > 0.0);
    // Slowed: the generator would have made millions; the sinks let through RATE rows/s per
    // thread (the `rest` thread carries about one aggregate row per click), plus what fits in
    // the queues.
    let let_through = RATE as f64 * elapsed.as_secs_f64() * 1.5 + 20.0 * 4096.0;
    assert!(
        (events_in as f64) < let_through,
        "{events_in} events read in {elapsed:?}: the source was not slowed"
    );
    assert!(
        events_in > 10_000,
        "only {events_in} events: the run did not get going"
    );
    // Bounded: a few tens of MB of state and buffers, not the backlog.
    assert!(
        peak < 256 * 1024 * 1024,
        "peak RSS {} MB",
        peak / (1024 * 1024)
    );
    // Nothing dropped: every accepted click is in the files.
    assert_eq!(rows(&read_table(&out, "clicks")).len() as u64, accepted);
    eprintln!(
        "slow sink: {events_in} events in {elapsed:.1?}, peak RSS {} MB, deepest queue {max_queued}",
        peak / (1024 * 1024)
    );
}

#[test]
fn json_logs_carry_no_secrets() {
    const SECRET: &str = "s3cr3t-do-not-log";
    let dir = tempfile::tempdir().unwrap();
    let o = common::attribd_cmd()
        .args([
            "run",
            "-q",
            "--log-format",
            "json",
            "--clicks",
            fixture("clicks.ndjson").to_str().unwrap(),
            "--out",
            dir.path().to_str().unwrap(),
            // Nothing listens there: the run fails while connecting, after logging at debug.
            "--clickhouse-url",
            "http://127.0.0.1:9",
        ])
        .env("ATTRIBD_LOG", "debug")
        .env("ATTRIBD_CLICKHOUSE_USER", "alice")
        .env("ATTRIBD_CLICKHOUSE_PASSWORD", SECRET)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        !stderr.contains(SECRET) && !stdout.contains(SECRET),
        "{stderr}"
    );
    let json: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        json.iter()
            .any(|v| v["message"] == "starting" && v["level"] == "INFO"),
        "{stderr}"
    );
    assert!(stderr.contains("127.0.0.1:9"), "the error names the server");
}

/// A source that fails mid-stream (a truncated gzip file) ends the run with its error instead
/// of the pipeline carrying on with the other stream.
#[test]
fn a_failing_source_stops_the_run_with_its_error() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for i in 0..200_000 {
        writeln!(
            enc,
            r#"{{"click_id":"c{i}","ts":1793527200000,"offer_id":"o1","affiliate_id":"a1"}}"#
        )
        .unwrap();
    }
    let gz = enc.finish().unwrap();
    let truncated = dir.path().join("clicks.ndjson.gz");
    std::fs::write(&truncated, &gz[..gz.len() / 2]).unwrap();
    let o = common::attribd_cmd()
        .args([
            "run",
            "-q",
            "--clicks",
            truncated.to_str().unwrap(),
            "--conversions",
            fixture("conversions.ndjson").to_str().unwrap(),
            "--out",
            dir.path().join("out").to_str().unwrap(),
        ])
        .env("ATTRIBD_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("error: reading") && stderr.contains("clicks.ndjson.gz"),
        "{stderr}"
    );
}

#[test]
fn a_bad_metrics_address_is_a_configuration_error() {
    let o = common::attribd_cmd()
        .args(["run", "-q", "--metrics-addr", "localhost"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("(command line): key `metrics.addr`: must be ip:port"),
        "{stderr}"
    );
}
