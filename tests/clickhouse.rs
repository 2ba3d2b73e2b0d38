//! The ClickHouse sink against a real server.
//!
//! The server comes from `ATTRIBD_CLICKHOUSE_URL` (`.ci/run` starts Debian's clickhouse-server
//! and exports it). Without it the tests print that they were skipped — except under
//! `CI=true`, where a missing server is a failure. The outage test starts a private server of
//! its own (it stops and restarts it), which needs the `clickhouse-server` binary.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// The shared server's URL, or `None` (skip) when there is none outside CI.
fn server(test: &str) -> Option<String> {
    match std::env::var("ATTRIBD_CLICKHOUSE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(!ci(), "CI=true but ATTRIBD_CLICKHOUSE_URL is not set");
            eprintln!("SKIPPED {test}: set ATTRIBD_CLICKHOUSE_URL to a ClickHouse HTTP endpoint");
            None
        }
    }
}

/// A database name nobody else uses.
fn fresh_db(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "attribd_test_{tag}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000
    )
}

/// Runs a query over HTTP (the same way a data engineer's tool would) and returns TSV lines.
fn query(url: &str, sql: &str) -> Vec<String> {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", url, "--data-binary", sql])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "query failed: {sql}\n{text}");
    text.lines().map(str::to_string).collect()
}

fn attribd_status(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    common::attribd_cmd()
        .args(args)
        .envs(envs.iter().copied())
        .env("ATTRIBD_LOG", "warn")
        .output()
        .expect("attribd runs")
}

fn migrate(url: &str, db: &str) -> String {
    let o = attribd(&["migrate", "--clickhouse-url", url, "--database", db]);
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// `sum()` of every measure per bucket dimensions, from ClickHouse.
fn clickhouse_sums(url: &str, db: &str) -> BTreeMap<String, Vec<String>> {
    aggregate_sums(url, db, "attribution_stats_minute", "")
}

/// `sum()` of every measure per (click hour in seconds, dimensions), from ClickHouse
/// `attribution_stats_click_hour`.
fn click_hour_sums(url: &str, db: &str) -> BTreeMap<String, Vec<String>> {
    aggregate_sums(
        url,
        db,
        "attribution_stats_click_hour",
        "toString(toUnixTimestamp(click_hour)), '/', ",
    )
}

/// `sum()` of every measure of an aggregate `table` per `key_prefix` (concat arguments) and
/// the dimensions; buckets whose sums are all zero are left out.
fn aggregate_sums(
    url: &str,
    db: &str,
    table: &str,
    key_prefix: &str,
) -> BTreeMap<String, Vec<String>> {
    query(
        url,
        &format!(
            "SELECT concat({key_prefix}tenant_id, '/', offer_id, '/', affiliate_id, '/', country, '/', currency) AS k, \
             sum(clicks), sum(unique_clicks), sum(duplicate_clicks), sum(conversions), sum(approved), \
             sum(pending), sum(rejected), toString(sum(revenue) * 1000000), sum(duplicate_conversions), sum(unattributed) \
             FROM {db}.{table} GROUP BY k ORDER BY k FORMAT TSV"
        ),
    )
    .into_iter()
    .filter_map(|l| {
        let mut f = l.split('\t').map(str::to_string);
        let key = f.next()?;
        let vals: Vec<String> = f
            .map(|v| v.trim_end_matches(".000000").trim_end_matches(".0").to_string())
            .collect();
        vals.iter().any(|v| v != "0").then_some((key, vals))
    })
    .collect()
}

/// The same from Parquet `stats_click_hour`.
fn parquet_click_hour_sums(out: &Path) -> BTreeMap<String, Vec<String>> {
    let mut key = vec!["click_hour"];
    key.extend(DIMS);
    table_sums(out, "stats_click_hour", &key)
        .into_iter()
        .map(|(k, v)| {
            // Parquet's click_hour is in milliseconds, ClickHouse's DateTime in seconds.
            let (ms, rest) = k.split_once('/').unwrap();
            let secs = ms.parse::<i64>().unwrap() / 1000;
            (
                format!("{secs}/{rest}"),
                v.iter().map(|x| x.to_string()).collect(),
            )
        })
        .collect()
}

/// The same sums from the Parquet `stats_minute` table.
fn parquet_sums(out: &Path) -> BTreeMap<String, Vec<String>> {
    stats_sums(out, &DIMS)
        .into_iter()
        .map(|(k, v)| (k, v.iter().map(|x| x.to_string()).collect()))
        .collect()
}

fn run_fixture(url: &str, db: &str, out: &Path) -> String {
    let o = attribd(&[
        "run",
        "-q",
        "--clicks",
        fixture("clicks.ndjson").to_str().unwrap(),
        "--conversions",
        fixture("conversions.ndjson").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--clickhouse-url",
        url,
        "--clickhouse-database",
        db,
    ]);
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn fixture_into_clickhouse_equals_known_answers_and_parquet_and_replay_adds_nothing() {
    let Some(url) = server("fixture_into_clickhouse") else {
        return;
    };
    let db = fresh_db("fixture");
    assert!(migrate(&url, &db).contains("applied migrations [1, 2, 3, 4, 5, 6]"));
    let dir = tempfile::tempdir().unwrap();
    let summary = run_fixture(&url, &db, dir.path());
    // One stats batch at the checkpoint before the end, then the end's own epoch (its
    // pending conversions resolved, open minutes flushed): one batch per table; the click-hour
    // aggregate goes whole at the checkpoint before the end (nothing is left for the end).
    assert!(
        summary.contains("clickhouse: batches (skipped)               4 (0)"),
        "{summary}"
    );

    let want: BTreeMap<String, Vec<String>> = [
        ("t1/o1/a1/US/", "4 3 1 0 0 0 0 0 0 0"),
        ("t1/o2/a2/DE/", "1 1 0 0 0 0 0 0 0 0"),
        ("t1/o2/a2/FR/", "1 1 0 0 0 0 0 0 0 0"),
        ("t2/o1/a1/US/", "1 1 0 0 0 0 0 0 0 0"),
        ("t1/o1/a1/US/USD", "0 0 0 1 1 0 0 10500000 1 0"),
        ("t1/o2/a2/DE/EUR", "0 0 0 1 1 0 0 20000000 0 0"),
        ("t1/o2/a2/FR/USD", "0 0 0 1 0 1 0 0 0 0"),
        ("t1////USD", "0 0 0 2 2 0 0 11000000 0 2"),
        ("t2/o1/a1/US/USD", "0 0 0 2 2 0 0 15000000 0 0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.split(' ').map(str::to_string).collect()))
    .collect();
    assert_eq!(clickhouse_sums(&url, &db), want);
    assert_eq!(parquet_sums(dir.path()), want);
    // By click date, the same in both (e2e.rs holds its known answers).
    let by_click_hour = click_hour_sums(&url, &db);
    assert_eq!(by_click_hour.len(), 10, "{by_click_hour:?}");
    assert_eq!(by_click_hour, parquet_click_hour_sums(dir.path()));

    // Conversions: 10 versions, current state per (tenant, external_id) via FINAL.
    assert_eq!(
        query(&url, &format!("SELECT count() FROM {db}.conversions")),
        ["10"]
    );
    let current = query(
        &url,
        &format!(
            "SELECT tenant_id, external_id, version, status, attributed, ifNull(reason, '-'), toString(ts) \
             FROM {db}.conversions FINAL ORDER BY tenant_id, external_id FORMAT TSV"
        ),
    );
    assert_eq!(
        current,
        [
            "t1\te1\t4\tapproved\t1\t-\t2026-11-01 10:10:00",
            "t1\te3\t1\tapproved\t1\t-\t2026-11-01 10:13:00",
            "t1\te5\t1\tapproved\t0\toutside_window\t2026-11-01 10:04:00",
            "t1\te7\t1\tpending\t1\t-\t2026-11-01 10:21:00",
            "t1\te8\t1\tapproved\t0\tunknown_click\t2026-11-01 10:22:00",
            "t2\te1\t1\tapproved\t1\t-\t2026-11-01 10:11:00",
            "t2\te9\t1\tapproved\t1\t-\t2026-11-01 10:25:00",
        ]
    );

    // A crash right before the final checkpoint: the rerun resumes from the checkpoint before
    // the end, takes back the batch the end wrote and replays the end: nothing is added.
    let snaps: Vec<_> = files_under(&dir.path().join("_state"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "snap"))
        .collect();
    assert_eq!(snaps.len(), 2, "the state before the end, and the end");
    std::fs::remove_file(snaps.last().unwrap()).unwrap();
    let again = run_fixture(&url, &db, dir.path());
    assert!(
        again.contains("resumed from checkpoint")
            && again.contains("clickhouse: batches (skipped)               1 (0)"),
        "{again}"
    );
    assert_eq!(clickhouse_sums(&url, &db), want);
    assert_eq!(click_hour_sums(&url, &db), by_click_hour);
    assert_eq!(
        query(&url, &format!("SELECT count() FROM {db}.conversions")),
        ["10"]
    );
    query(&url, &format!("DROP DATABASE {db}"));
}

#[test]
fn migrations_are_idempotent_and_bad_setups_are_refused_clearly() {
    let Some(url) = server("migrations") else {
        return;
    };
    let db = fresh_db("migrate");
    assert!(migrate(&url, &db).contains("applied migrations"));
    assert!(migrate(&url, &db).contains("is up to date"));
    let tables = query(
        &url,
        &format!("SELECT name FROM system.tables WHERE database = '{db}' ORDER BY name"),
    );
    for t in [
        "attribd_batches",
        "attribd_migrations",
        "attribution_stats_click_hour",
        "attribution_stats_minute",
        "conversions",
    ] {
        assert!(tables.contains(&t.to_string()), "{tables:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let clicks = fixture("clicks.ndjson");
    let run = |db: &str, envs: &[(&str, &str)]| {
        attribd_status(
            &[
                "run",
                "-q",
                "--clicks",
                clicks.to_str().unwrap(),
                "--out",
                out,
                "--clickhouse-url",
                &url,
                "--clickhouse-database",
                db,
            ],
            envs,
        )
    };
    // A database that does not exist.
    let o = run("attribd_no_such_db", &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("database `attribd_no_such_db` does not exist")
            && err.contains("attribd migrate"),
        "{err}"
    );
    // Wrong credentials; the password never appears in the output.
    let o = run(
        &db,
        &[
            ("ATTRIBD_CLICKHOUSE_USER", "nobody"),
            ("ATTRIBD_CLICKHOUSE_PASSWORD", "s3cret-pw"),
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("refused the credentials"), "{err}");
    assert!(!err.contains("s3cret-pw"));
    // An incompatible existing table.
    let bad = fresh_db("bad");
    query(&url, &format!("CREATE DATABASE {bad}"));
    query(
        &url,
        &format!(
            "CREATE TABLE {bad}.conversions (tenant_id String, external_id String, amount Float64) ENGINE = MergeTree() ORDER BY tenant_id"
        ),
    );
    let o = attribd_status(
        &["migrate", "--clickhouse-url", &url, "--database", &bad],
        &[],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("`{bad}.conversions` is incompatible")),
        "{err}"
    );
    // A URL with credentials in it is a configuration error (exit code 2).
    let o = attribd_status(
        &[
            "migrate",
            "--clickhouse-url",
            "http://u:p@127.0.0.1:8123",
            "--database",
            "x",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    query(&url, &format!("DROP DATABASE {db}"));
    query(&url, &format!("DROP DATABASE {bad}"));
}

/// A pipeline reading one deterministic input with small, count-only ClickHouse flushes.
fn write_pipeline(dir: &Path, url: &str, db: &str, input: &Path, out: &Path) -> std::path::PathBuf {
    let p = dir.join(format!("{db}.toml"));
    std::fs::write(
        &p,
        format!(
            r#"[source]
kind = "files"
conversions = {input:?}
[sink.parquet]
out = {out:?}
[sink.clickhouse]
url = "{url}"
database = "{db}"
flush_rows = 40
retry_initial = "100ms"
retry_max = "1s"
breaker_failures = 3
breaker_cooldown = "1s"
request_timeout = "5s"
"#,
            input = input.display().to_string(),
            out = out.display().to_string()
        ),
    )
    .unwrap();
    p
}

/// Postbacks only (one stream, so the run is deterministic): 3 000 conversions with changes
/// and duplicates spread over two days.
fn postbacks(dir: &Path) -> std::path::PathBuf {
    generate_input(
        dir,
        "clicks = 3000\nconversion_rate = 1.0\nspan_hours = 48.0\nseed = 11",
    )
    .join("conversions.ndjson")
}

#[test]
fn a_run_killed_mid_stream_and_replayed_counts_nothing_twice() {
    let Some(url) = server("kill_and_replay") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let input = postbacks(dir.path());
    // Reference: one uninterrupted run.
    let reference = fresh_db("ref");
    migrate(&url, &reference);
    let p = write_pipeline(
        dir.path(),
        &url,
        &reference,
        &input,
        &dir.path().join("out-ref"),
    );
    attribd(&["run", "-q", "-p", p.to_str().unwrap()]);
    let want = clickhouse_sums(&url, &reference);
    assert!(!want.is_empty());

    // Interrupted: kill -9 once some batches are committed, then run the same command again.
    let db = fresh_db("kill");
    migrate(&url, &db);
    let p = write_pipeline(dir.path(), &url, &db, &input, &dir.path().join("out-kill"));
    let mut child = common::attribd_cmd()
        .args(["run", "-q", "-p", p.to_str().unwrap()])
        .env("ATTRIBD_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut killed_after = 0u64;
    while started.elapsed() < Duration::from_secs(60) {
        let n: u64 = query(&url, &format!("SELECT count() FROM {db}.attribd_batches"))[0]
            .parse()
            .unwrap();
        if n >= 3 {
            let _ = child.kill();
            killed_after = n;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.wait();
    assert!(
        killed_after >= 3,
        "the run finished before it could be interrupted"
    );
    let partial = clickhouse_sums(&url, &db);
    assert_ne!(partial, want, "the interrupted run stopped part-way");
    let o = attribd(&["run", "-q", "-p", p.to_str().unwrap()]);
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(summary.contains("clickhouse: batches"), "{summary}");
    assert_eq!(
        clickhouse_sums(&url, &db),
        want,
        "after replay: equal to the uninterrupted run"
    );
    let batches = |d: &str| {
        query(
            &url,
            &format!("SELECT count(), sum(rows) FROM {d}.attribd_batches FINAL FORMAT TSV"),
        )
    };
    assert_eq!(batches(&db), batches(&reference));
    query(&url, &format!("DROP DATABASE {db}"));
    query(&url, &format!("DROP DATABASE {reference}"));
}

/// The window the random kill above hits only now and then, hit every time: the checkpoint
/// writer dies while a snapshot is in flight, its barrier already passed, so the ClickHouse
/// sink has gone on writing batches of the next epoch — which no checkpoint covers and which
/// a replay cannot form again (its barriers fall elsewhere). Once before the first checkpoint
/// (the restart has no checkpoint, only the instance id) and once at the third (it resumes
/// from the second): the restart takes those batches back and the result is exact.
#[test]
fn a_crash_with_a_checkpoint_in_flight_takes_back_the_next_epochs_batches() {
    let Some(url) = server("in_flight") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Clicks and postbacks, read in batches of 4 096 lines: a checkpoint after each.
    let inputs = generate_input(
        dir.path(),
        "clicks = 20000\nconversion_rate = 1.0\nspan_hours = 48.0\nseed = 12",
    );
    let input = inputs.join("conversions.ndjson");
    let clicks = format!(
        "clicks = {:?}\n",
        inputs.join("clicks.ndjson").display().to_string()
    );
    let pipeline = |db: &str, out: &str| {
        let p = write_pipeline(dir.path(), &url, db, &input, &dir.path().join(out));
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("flush_rows = 40\n", "flush_rows = 400\n")
            .replace("kind = \"files\"\n", &format!("kind = \"files\"\n{clicks}"))
            + "[checkpoint]\nevery = \"1h\"\nevery_events = 4096\n";
        std::fs::write(&p, text).unwrap();
        p
    };
    let reference = fresh_db("ref");
    migrate(&url, &reference);
    let p = pipeline(&reference, "out-ref");
    attribd(&["run", "-q", "-p", p.to_str().unwrap()]);
    let want = clickhouse_sums(&url, &reference);
    let batches = |d: &str| {
        query(
            &url,
            &format!("SELECT count(), sum(rows) FROM {d}.attribd_batches FINAL FORMAT TSV"),
        )
    };

    for skip in [0, 2] {
        let db = fresh_db(&format!("in_flight_{skip}"));
        migrate(&url, &db);
        let out = dir.path().join(format!("out-{skip}"));
        let p = pipeline(&db, &format!("out-{skip}"));
        let o = common::attribd_cmd()
            .args(["run", "-q", "-p", p.to_str().unwrap()])
            .env("ATTRIBD_LOG", "error")
            .env("ATTRIBD_CRASH_AT", "checkpoint-before-snapshot")
            .env("ATTRIBD_CRASH_SKIP", skip.to_string())
            .env("ATTRIBD_CRASH_DELAY_MS", "3000")
            .output()
            .unwrap();
        assert!(!o.status.success(), "the run was to crash");
        // The situation under test: the snapshot of checkpoint skip+1 never reached the disk,
        // and ClickHouse holds batches of the epoch after it.
        let newest = std::fs::read_dir(out.join("_state"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".snap"))
            .filter_map(|n| {
                n.strip_prefix("checkpoint-")?
                    .get(..10)?
                    .parse::<usize>()
                    .ok()
            })
            .max();
        assert_eq!(newest.unwrap_or(0), skip);
        let past = query(
            &url,
            &format!(
                "SELECT count() FROM {db}.attribd_batches WHERE batch_id LIKE '%-e{:08}-%'",
                skip + 2
            ),
        );
        assert_ne!(
            past,
            ["0"],
            "crash at checkpoint {}: no batch of the epoch after it",
            skip + 1
        );

        let run_logged = || {
            let o = common::attribd_cmd()
                .args(["run", "-q", "-p", p.to_str().unwrap()])
                .env("ATTRIBD_LOG", "info")
                .output()
                .unwrap();
            let log = String::from_utf8_lossy(&o.stderr).to_string();
            assert!(o.status.success(), "{log}");
            log
        };
        let log = run_logged();
        assert!(log.contains("took back the rows written after"), "{log}");
        assert_eq!(
            clickhouse_sums(&url, &db),
            want,
            "crash at checkpoint {}: after the restart equal to the uninterrupted run",
            skip + 1
        );
        // Checkpoints every 4 096 events fall where the reference's fell: the same batches,
        // as many and as large, none of the crashed run's left over.
        assert_eq!(batches(&db), batches(&reference));
        // A further run has nothing to take back or to add.
        assert!(!run_logged().contains("took back"));
        assert_eq!(clickhouse_sums(&url, &db), want);
        query(&url, &format!("DROP DATABASE {db}"));
    }
    query(&url, &format!("DROP DATABASE {reference}"));
}

/// Starts a private server with `.ci/clickhouse-server.sh`; returns (url, pid file).
fn private_server(dir: &Path, port: u16) -> Option<(String, std::path::PathBuf)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/clickhouse-server.sh");
    let o = Command::new(&script)
        .arg(dir)
        .arg(port.to_string())
        .output()
        .ok()?;
    if !o.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&o.stderr));
        return None;
    }
    Some((
        String::from_utf8_lossy(&o.stdout).trim().to_string(),
        dir.join("server.pid"),
    ))
}

fn stop_server(pid_file: &Path) {
    let pid = std::fs::read_to_string(pid_file).unwrap_or_default();
    let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn clickhouse_down_for_a_while_loses_nothing() {
    let has_binary = Path::new("/usr/sbin/clickhouse-server").exists()
        || Command::new("sh")
            .args(["-c", "command -v clickhouse-server"])
            .status()
            .is_ok_and(|s| s.success());
    if !has_binary {
        assert!(!ci(), "CI=true but clickhouse-server is not installed");
        eprintln!("SKIPPED clickhouse_down_for_a_while: clickhouse-server binary not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = 18_000 + (std::process::id() % 1000) as u16;
    let server_dir = dir.path().join("server");
    let Some((url, pid)) = private_server(&server_dir, port) else {
        panic!("could not start a private clickhouse-server");
    };
    let input = postbacks(dir.path());
    let db = fresh_db("outage");
    migrate(&url, &db);
    let out = dir.path().join("out");
    let p = write_pipeline(dir.path(), &url, &db, &input, &out);
    let mut child = common::attribd_cmd()
        .args(["run", "-q", "-p", p.to_str().unwrap()])
        .env("ATTRIBD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let it commit a few batches, then take the server away for three seconds.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        let n: u64 = query(&url, &format!("SELECT count() FROM {db}.attribd_batches"))[0]
            .parse()
            .unwrap();
        if n >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    stop_server(&pid);
    std::thread::sleep(Duration::from_secs(3));
    if child.try_wait().unwrap().is_some() {
        let o = child.wait_with_output().unwrap();
        panic!(
            "attribd should wait for ClickHouse, but it exited ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let (url2, pid2) = private_server(&server_dir, port).expect("server restarts");
    assert_eq!(url2, url);
    let o = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    assert!(
        log.contains("ClickHouse insert failed"),
        "the outage was noticed: {log}"
    );
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(
        !summary.contains("clickhouse: failed attempts                     0"),
        "{summary}"
    );
    // Nothing lost, nothing doubled: ClickHouse equals the Parquet aggregates of the same run.
    assert_eq!(clickhouse_sums(&url, &db), parquet_sums(&out));
    stop_server(&pid2);
}

/// `[sink.clickhouse]` into database `db` for a files pipeline of `dir`'s two NDJSON files.
fn files_pipeline_into(
    dir: &Path,
    url: &str,
    db: &str,
    out: &Path,
    extra: &str,
) -> std::path::PathBuf {
    let p = dir.join(format!("{db}.toml"));
    std::fs::write(
        &p,
        format!(
            "[source]\nkind = \"files\"\nclicks = {:?}\nconversions = {:?}\n\
             [sink.parquet]\nout = {:?}\n[sink.clickhouse]\nurl = \"{url}\"\ndatabase = \"{db}\"\n{extra}\n",
            dir.join("clicks.ndjson").display().to_string(),
            dir.join("conversions.ndjson").display().to_string(),
            out.display().to_string()
        ),
    )
    .unwrap();
    p
}

/// `tenant/external_id v version` of every ClickHouse conversion row.
fn clickhouse_versions(url: &str, db: &str) -> Vec<String> {
    query(
        url,
        &format!(
            "SELECT concat(tenant_id, '/', external_id, 'v', toString(version)) AS k \
             FROM {db}.conversions ORDER BY k FORMAT TSV"
        ),
    )
}

/// A subject export reads ClickHouse too, and an erasure deletes exactly the customer's rows
/// there (a mutation, waited for), leaving the aggregates as they were.
#[test]
fn export_and_erasure_reach_clickhouse() {
    let Some(url) = server("export_and_erasure_reach_clickhouse") else {
        return;
    };
    let db = fresh_db("erasure");
    migrate(&url, &db);
    let dir = tempfile::tempdir().unwrap();
    write_subject_input(dir.path());
    let out = dir.path().join("out");
    let p = files_pipeline_into(dir.path(), &url, &db, &out, "");
    attribd(&["run", "-q", "-p", p.to_str().unwrap()]);
    let all = ["t1/Av1", "t1/Av2", "t1/Bv1", "t1/Cv1", "t1/Ev1", "t2/Dv1"];
    assert_eq!(clickhouse_versions(&url, &db), all);
    let sums = clickhouse_sums(&url, &db);

    let o = attribd(&[
        "privacy",
        "export",
        "-p",
        p.to_str().unwrap(),
        "--customer-id",
        "cust-1",
        "--tenant",
        "t1",
    ]);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut from_ch: Vec<String> = doc["clickhouse_conversions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["_source"], format!("clickhouse:{db}.conversions"));
            format!("{}v{}", r["external_id"].as_str().unwrap(), r["version"])
        })
        .collect();
    from_ch.sort();
    // Version 2 of A did not repeat the customer id: found by its conversion.
    assert_eq!(from_ch, ["Av1", "Av2", "Bv1", "Ev1"]);

    let o = attribd(&[
        "privacy",
        "delete",
        "-p",
        p.to_str().unwrap(),
        "--customer-id",
        "cust-1",
        "--tenant",
        "t1",
    ]);
    let removed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(removed["clickhouse_conversions"], 4);
    assert_eq!(removed["parquet_conversions"], 4);
    assert_eq!(clickhouse_versions(&url, &db), ["t1/Cv1", "t2/Dv1"]);
    assert_eq!(conversion_versions(&out), ["t1/Cv1", "t2/Dv1"]);
    assert_eq!(clickhouse_sums(&url, &db), sums, "aggregates stay");
    // A replay: the input grows, the run takes its end's batches back and writes the end
    // again; the customer's rows stay away.
    let mut postbacks = std::fs::read_to_string(dir.path().join("conversions.ndjson")).unwrap();
    postbacks.push_str(
        r#"{"click_id":"k5","external_id":"F","tenant_id":"t1","amount":"1","status":"approved","ts":"2026-11-01T11:30:00Z","customer_id":"cust-3"}"#,
    );
    postbacks.push('\n');
    std::fs::write(dir.path().join("conversions.ndjson"), postbacks).unwrap();
    attribd(&["run", "-q", "-p", p.to_str().unwrap()]);
    assert_eq!(
        clickhouse_versions(&url, &db),
        ["t1/Cv1", "t1/Fv1", "t2/Dv1"]
    );
    assert_eq!(conversion_versions(&out), ["t1/Cv1", "t1/Fv1", "t2/Dv1"]);
}

/// Retention on a server without TTL (Debian's 18.16): the monthly partitions whose whole month
/// is past retention are dropped, nothing younger.
#[test]
fn retention_drops_expired_months_on_a_server_without_ttl() {
    let Some(url) = server("retention_drops_expired_months") else {
        return;
    };
    let version = query(&url, "SELECT version()").join("");
    let major: u32 = version.split('.').next().unwrap().parse().unwrap();
    if major >= 20 {
        eprintln!("SKIPPED retention_drops_expired_months: server {version} expires rows by TTL");
        return;
    }
    let db = fresh_db("retention");
    migrate(&url, &db);
    let dir = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let day = 86_400_000i64;
    // Mid-month days, so "a whole month past retention" does not depend on today's date.
    let mid_month = |days_ago: i64| {
        let t = now - days_ago * day;
        let d = chrono::DateTime::from_timestamp_millis(t).unwrap();
        let mid = d.date_naive().with_day(15).unwrap();
        mid.and_hms_opt(12, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp_millis()
    };
    use chrono::Datelike;
    // The recent one is simply three days ago: moved to the 15th it is in the future early in
    // a month, past `max_future` before the 8th (a dead letter, not a row).
    let (ancient, old, recent) = (mid_month(800), mid_month(500), now - 3 * day);
    let month = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .format("%Y%m")
            .to_string()
    };
    let click = |id: &str, ms: i64| {
        format!(
            r#"{{"click_id":"{id}","ts":{ms},"tenant_id":"t1","offer_id":"o1","affiliate_id":"a1"}}"#
        )
    };
    let postback = |id: &str, ext: &str, ms: i64| {
        format!(
            r#"{{"click_id":"{id}","external_id":"{ext}","tenant_id":"t1","amount":"1","status":"approved","ts":{ms}}}"#
        )
    };
    std::fs::write(
        dir.path().join("clicks.ndjson"),
        [click("k1", ancient), click("k2", old), click("k3", recent)].join("\n") + "\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("conversions.ndjson"),
        [
            postback("k1", "e1", ancient + 60_000),
            postback("k2", "e2", old + 60_000),
            postback("k3", "e3", recent + 60_000),
        ]
        .join("\n")
            + "\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    // Written without [retention] first: every month is there.
    let p = files_pipeline_into(dir.path(), &url, &db, &out, "");
    attribd(&["run", "-q", "-p", p.to_str().unwrap()]);
    let with_retention = dir.path().join("with-retention.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(
        &with_retention,
        format!("{text}[retention]\nconversions = \"730d\"\nstats = \"400d\"\n"),
    )
    .unwrap();
    let months = |table: &str| {
        query(
            &url,
            &format!(
                "SELECT DISTINCT toString(toYYYYMM({})) FROM {db}.{table} FORMAT TSV",
                match table {
                    "conversions" => "toDateTime(intDiv(ts_ms, 1000))",
                    "attribution_stats_click_hour" => "click_hour",
                    _ => "minute",
                }
            ),
        )
        .into_iter()
        .collect::<std::collections::BTreeSet<String>>()
        .into_iter()
        .collect::<Vec<_>>()
    };
    assert_eq!(
        months("conversions"),
        [month(ancient), month(old), month(recent)]
    );
    let o = attribd(&[
        "retention",
        "--dry-run",
        "-p",
        with_retention.to_str().unwrap(),
    ]);
    let listed: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.contains(" clickhouse "))
        .map(str::to_string)
        .collect();
    let stats = format!("would delete clickhouse {db}.attribution_stats_minute partition");
    let by_click = format!("would delete clickhouse {db}.attribution_stats_click_hour partition");
    assert_eq!(
        listed,
        [
            format!("{stats} {}", month(ancient)),
            format!("{stats} {}", month(old)),
            format!("{by_click} {}", month(ancient)),
            format!("{by_click} {}", month(old)),
            format!(
                "would delete clickhouse {db}.conversions partition {}",
                month(ancient)
            ),
        ]
    );
    attribd(&["retention", "-p", with_retention.to_str().unwrap()]);
    assert_eq!(months("conversions"), [month(old), month(recent)]);
    assert_eq!(months("attribution_stats_minute"), [month(recent)]);
    assert_eq!(months("attribution_stats_click_hour"), [month(recent)]);
    // Nothing left to drop; the running daemon does the same after its checkpoints.
    let o = attribd(&[
        "retention",
        "--dry-run",
        "-p",
        with_retention.to_str().unwrap(),
    ]);
    assert!(!String::from_utf8_lossy(&o.stdout).contains("clickhouse"));
}

#[test]
fn reporting_currency_payouts_profit_and_fraud_flags_reach_clickhouse_as_in_parquet() {
    let Some(url) = server("money_into_clickhouse") else {
        return;
    };
    let db = fresh_db("money");
    migrate(&url, &db);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let pipeline = money_pipeline(dir.path(), "[fraud]\nmin_seconds_to_convert = 61\n");
    run_pipeline(
        &pipeline,
        &out,
        &["--clickhouse-url", &url, "--clickhouse-database", &db],
    );
    // Reporting measures per bucket: ClickHouse = Parquet = the answers of tests/money.rs.
    let ch = query(
        &url,
        &format!(
            "SELECT concat(tenant_id, '/', offer_id, '/', affiliate_id, '/', country, '/', currency) AS k, \
             toString(sum(revenue_reporting) * 1000000), toString(sum(payout) * 1000000), toString(sum(profit) * 1000000) \
             FROM {db}.attribution_stats_minute GROUP BY k HAVING sum(revenue_reporting) != 0 OR sum(payout) != 0 ORDER BY k FORMAT TSV"
        ),
    );
    let trim = |v: &str| {
        v.trim_end_matches(".000000")
            .trim_end_matches(".0")
            .to_string()
    };
    let ch: Vec<String> = ch
        .iter()
        .map(|l| l.split('\t').map(trim).collect::<Vec<_>>().join(" "))
        .collect();
    let parquet: Vec<String> = table_sums_all(&out, "stats_minute", &DIMS)
        .into_iter()
        .filter(|(_, v)| v[10] != 0 || v[11] != 0)
        .map(|(k, v)| format!("{k} {} {} {}", v[10], v[11], v[12]))
        .collect();
    assert_eq!(
        ch,
        [
            "t1////USD 11000000 0 11000000",
            "t1/o1/a1/US/USD 10500000 2000000 8500000",
            "t1/o2/a2/FR/ 0 125000 -125000",
            "t2/o1/a1/US/USD 15000000 1000000 14000000",
        ]
    );
    assert_eq!(ch, parquet);
    let by_hour = query(
        &url,
        &format!(
            "SELECT toString(sum(revenue_reporting)), toString(sum(payout)), toString(sum(profit)) \
             FROM {db}.attribution_stats_click_hour FORMAT TSV"
        ),
    );
    // Decimals print with or without trailing zeros depending on the server version.
    let decimals = |lines: Vec<String>| -> Vec<String> {
        lines
            .iter()
            .map(|l| {
                l.split('\t')
                    .map(|f| match f.split_once('.') {
                        Some((i, d)) if d.bytes().all(|b| b.is_ascii_digit()) => {
                            let d = d.trim_end_matches('0');
                            if d.is_empty() {
                                i.to_string()
                            } else {
                                format!("{i}.{d}")
                            }
                        }
                        _ => f.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join("\t")
            })
            .collect()
    };
    assert_eq!(decimals(by_hour), ["25.5\t3.125\t22.375"]);
    // Conversion columns, current versions.
    let convs = query(
        &url,
        &format!(
            "SELECT tenant_id, external_id, toString(amount_reporting), toString(fx_rate), fx_stale, fx_missing, toString(payout), toString(profit) \
             FROM {db}.conversions FINAL ORDER BY tenant_id, external_id FORMAT TSV"
        ),
    );
    assert_eq!(
        decimals(convs),
        [
            "t1\te1\t10.5\t1\t0\t0\t2\t8.5",
            "t1\te3\t\\N\t\\N\t0\t1\t\\N\t\\N",
            "t1\te5\t7\t1\t0\t0\t0\t7",
            "t1\te7\t3\t1\t1\t0\t1.25\t1.75",
            "t1\te8\t4\t1\t0\t0\t0\t4",
            "t2\te1\t5\t1\t0\t0\t0\t5",
            "t2\te9\t10\t1\t0\t0\t1\t9",
        ]
    );
    // Fraud flags: the list column and flagged_conversions in both aggregate tables.
    assert_eq!(
        query(
            &url,
            &format!(
                "SELECT external_id, arrayStringConcat(fraud_flags, ',') FROM {db}.conversions FINAL \
                 WHERE notEmpty(fraud_flags) ORDER BY external_id FORMAT TSV"
            ),
        ),
        ["e5\toutside_window", "e7\ttoo_fast"]
    );
    assert_eq!(
        query(
            &url,
            &format!(
                "SELECT (SELECT sum(flagged_conversions) FROM {db}.attribution_stats_minute), \
                 (SELECT sum(flagged_conversions) FROM {db}.attribution_stats_click_hour) FORMAT TSV"
            ),
        ),
        ["2\t1"]
    );
    query(&url, &format!("DROP DATABASE {db}"));
}

/// Every ready query of docs/clickhouse.md runs on the real server, against tables the default
/// pipeline (money, payouts, fraud) filled. The CI server is 18.16, where an alias that names
/// a column used inside another aggregate, or a window function, is an error: four of the
/// queries failed there before this test. The block that reads Parquet through `file()` /
/// `s3()` is documented for newer servers and left out.
#[test]
fn the_ready_queries_of_the_docs_run_on_the_server() {
    let Some(url) = server("ready_queries") else {
        return;
    };
    let db = fresh_db("docs");
    migrate(&url, &db);
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("pipelines/default.toml"))
        .unwrap()
        .replace("clicks = 1_500_000", "clicks = 20_000")
        + &format!("\n[sink.clickhouse]\nurl = \"{url}\"\ndatabase = \"{db}\"\n");
    let p = dir.path().join("default.toml");
    std::fs::write(&p, text).unwrap();
    let out = dir.path().join("out");
    run_pipeline(&p, &out, &[]);
    let doc = std::fs::read_to_string(root.join("docs/clickhouse.md")).unwrap();
    let mut ran = 0;
    for block in doc.split("```sql\n").skip(1) {
        let block = block.split("```").next().unwrap_or_default();
        let code: String = block
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        for statement in code.split(';').map(str::trim) {
            let reads = statement.starts_with("SELECT") || statement.starts_with("WITH");
            if !reads || statement.contains("file(") || statement.contains("s3(") {
                continue;
            }
            let sql = statement.replace("attribd.", &format!("{db}."));
            query(&url, &format!("{sql} FORMAT TSV"));
            ran += 1;
        }
    }
    // Fifteen queries, three of them in the Parquet block.
    assert_eq!(ran, 12, "queries run from docs/clickhouse.md");
    // One with an answer the run knows: the 7-day curve ends at the attributed conversions of
    // the clicks of 1 November (the generated day), over that day's clicks.
    let curve = query(
        &url,
        &format!(
            "SELECT count() FROM {db}.conversions FINAL WHERE attributed = 1 \
             AND toDate(toDateTime(intDiv(click_ts_ms, 1000))) = '2026-11-01' \
             AND seconds_to_convert < 7 * 86400 FORMAT TSV"
        ),
    );
    let doc_curve = doc
        .split("-- 7-day conversion curve")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .and_then(|rest| rest.split_once('\n'))
        .map(|(_, sql)| sql.replace("attribd.", &format!("{db}.")))
        .expect("the 7-day curve query in docs/clickhouse.md");
    let rows = query(&url, &format!("{doc_curve} FORMAT TSV"));
    let last = rows.last().expect("a curve row");
    assert_eq!(
        last.split('\t').nth(1),
        curve.first().map(String::as_str),
        "{rows:?}"
    );
    query(&url, &format!("DROP DATABASE {db}"));
}
