//! The Fluvio source against a real cluster (`../shared/fluvio/start.sh`; `FLUVIO_ENDPOINT`,
//! e.g. `127.0.0.1:9003`). Without it every test says it was skipped; with `CI=true` a missing
//! cluster is a failure.
//!
//! Every test loads generated input into fresh topics with `attribd produce` (keyed by
//! `click_id`) and compares what `attribd run` made of the topics with what it makes of the same
//! input as files — the file source is the reference whose results are checked elsewhere.
//! The cluster's outage test lives in `fluvio_outage.rs` (it stops the shared SPU).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use rand::{Rng, SeedableRng};

/// The tests share two cores and one cluster: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn endpoint(test: &str) -> Option<String> {
    match std::env::var("FLUVIO_ENDPOINT") {
        Ok(e) if !e.is_empty() => Some(e),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but FLUVIO_ENDPOINT is not set (../shared/fluvio/start.sh starts a cluster)"
            );
            eprintln!(
                "SKIPPED {test}: set FLUVIO_ENDPOINT to a Fluvio SC (export FLUVIO_ENDPOINT=$(../shared/fluvio/start.sh))"
            );
            None
        }
    }
}

/// Fresh topic names for one test.
fn topics(tag: &str) -> (String, String) {
    let t = format!(
        "{}-{}-{}",
        tag,
        std::process::id(),
        attribd::event::time::now_ms() % 1_000_000_000
    );
    (format!("at-c-{t}"), format!("at-v-{t}"))
}

fn produce(endpoint: &str, topic: &str, partitions: u32, file: &Path) {
    attribd(&[
        "produce",
        "--fluvio-endpoint",
        endpoint,
        "--topic",
        topic,
        "--create-partitions",
        &partitions.to_string(),
        file.to_str().unwrap(),
    ]);
}

/// `attribd run` arguments reading `topics` from `endpoint`.
fn fluvio_args(
    endpoint: &str,
    topics: &(String, String),
    out: &Path,
    consumer: &str,
) -> Vec<String> {
    [
        "run",
        "-q",
        "--fluvio-endpoint",
        endpoint,
        "--fluvio-clicks-topic",
        &topics.0,
        "--fluvio-conversions-topic",
        &topics.1,
        "--fluvio-consumer",
        consumer,
        "--exit-when-idle",
        "3s",
        "--out",
        out.to_str().unwrap(),
        "--summary-json",
        out.with_extension("json").to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

fn run(args: &[String]) -> std::process::Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    attribd(&args)
}

/// The file-source reference run of `input` into `out`.
fn file_run(input: &Path, out: &Path) -> serde_json::Value {
    let json = out.with_extension("json");
    attribd(&[
        "run",
        "-q",
        "--clicks",
        input.join("clicks.ndjson").to_str().unwrap(),
        "--conversions",
        input.join("conversions.ndjson").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--summary-json",
        json.to_str().unwrap(),
    ]);
    summary(out)
}

fn summary(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.with_extension("json")).expect("summary json");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["report"]["counters"].clone()
}

/// Everything a run wrote, comparable across sources: click rows (with the unique flag),
/// every column of every conversion version, aggregate sums per minute and bucket, dead letters
/// by stream, reason and bytes (their positions are line numbers in files, offsets in Fluvio).
#[derive(Debug, PartialEq)]
struct Outputs {
    clicks: Vec<String>,
    conversions: Vec<String>,
    stats: BTreeMap<String, [i64; 10]>,
    dead: BTreeMap<String, u64>,
}

fn outputs(out: &Path) -> Outputs {
    let mut clicks: Vec<String> = rows(&read_table(out, "clicks"))
        .iter()
        .map(|r| format!("{r:?}"))
        .collect();
    clicks.sort();
    let mut conversions: Vec<String> = rows(&read_table(out, "conversions"))
        .iter()
        .map(|r| format!("{r:?}"))
        .collect();
    conversions.sort();
    let mut key = vec!["minute"];
    key.extend(DIMS);
    let stats = stats_sums(out, &key);
    let mut dead: BTreeMap<String, u64> = BTreeMap::new();
    for f in files_under(&out.join("dead_letters")) {
        if f.extension().is_some_and(|e| e == "ndjson") {
            for line in std::fs::read_to_string(&f).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                *dead
                    .entry(format!("{}/{}/{}", v["stream"], v["reason"], v["raw"]))
                    .or_default() += 1;
            }
        }
    }
    Outputs {
        clicks,
        conversions,
        stats,
        dead,
    }
}

fn assert_same(a: &Outputs, b: &Outputs, what: &str) {
    assert_eq!(a.clicks.len(), b.clicks.len(), "{what}: click rows");
    for (x, y) in a.clicks.iter().zip(&b.clicks) {
        assert_eq!(x, y, "{what}: first differing click row");
    }
    assert_eq!(
        a.conversions.len(),
        b.conversions.len(),
        "{what}: conversion rows"
    );
    for (x, y) in a.conversions.iter().zip(&b.conversions) {
        assert_eq!(x, y, "{what}: first differing conversion row");
    }
    assert_eq!(a.stats, b.stats, "{what}: aggregates");
    assert_eq!(a.dead, b.dead, "{what}: dead letters");
}

/// Fluvio (several partitions) against the file run of the same data: equal in everything but
/// *which* of a visitor's same-day clicks on an offer carries the unique flag. A file is one
/// sequence in arrival order; partitions are merged by event time, so when a visitor's clicks
/// sit on different partitions and arrived out of event-time order, the flag goes to the
/// earlier click by event time. How many unique clicks each (day, tenant, offer, ip) has — one
/// — is the same, and so is every other column, row and measure.
fn assert_same_but_unique_placement(fluvio: &Path, files: &Path, what: &str) {
    let strip = |out: &Path| -> (Vec<String>, BTreeMap<String, u64>) {
        let mut clicks = Vec::new();
        let mut unique: BTreeMap<String, u64> = BTreeMap::new();
        for mut r in rows(&read_table(out, "clicks")) {
            let flag = r.remove("is_unique").flatten();
            let key = format!(
                "{}/{}/{}/{}",
                int(&r, "ts").div_euclid(86_400_000),
                get(&r, "tenant_id"),
                get(&r, "offer_id"),
                get(&r, "ip")
            );
            *unique.entry(key).or_default() += u64::from(flag.as_deref() == Some("true"));
            clicks.push(format!("{r:?}"));
        }
        clicks.sort();
        (clicks, unique)
    };
    let (a, b) = (strip(fluvio), strip(files));
    assert_eq!(a.0.len(), b.0.len(), "{what}: click rows");
    for (x, y) in a.0.iter().zip(&b.0) {
        assert_eq!(
            x, y,
            "{what}: first differing click row (unique flag aside)"
        );
    }
    assert_eq!(
        a.1, b.1,
        "{what}: unique clicks per (day, tenant, offer, ip)"
    );
    let (fa, fb) = (outputs(fluvio), outputs(files));
    assert_eq!(fa.conversions, fb.conversions, "{what}: conversion rows");
    assert_eq!(fa.dead, fb.dead, "{what}: dead letters");
    let unique_col = attribd::sink::parquet::schema::MEASURES
        .iter()
        .position(|m| *m == "unique_clicks")
        .unwrap();
    let split = |stats: BTreeMap<String, [i64; 10]>| {
        let mut rest = BTreeMap::new();
        let mut unique: BTreeMap<String, i64> = BTreeMap::new();
        for (k, mut v) in stats {
            // key: minute/tenant/offer/affiliate/country/currency
            let parts: Vec<&str> = k.split('/').collect();
            let day = parts[0].parse::<i64>().unwrap().div_euclid(86_400_000);
            *unique
                .entry(format!("{day}/{}/{}", parts[1], parts[2]))
                .or_default() += v[unique_col];
            v[unique_col] = 0;
            if v.iter().any(|x| *x != 0) {
                rest.insert(k, v);
            }
        }
        unique.retain(|_, v| *v != 0);
        (rest, unique)
    };
    let (sa, sb) = (split(fa.stats), split(fb.stats));
    assert_eq!(
        sa.0, sb.0,
        "{what}: aggregates (all measures but unique_clicks)"
    );
    assert_eq!(sa.1, sb.1, "{what}: unique_clicks per (day, tenant, offer)");
}

/// Generated input in `dir/input` (the generator's realistic mix: duplicates, status changes,
/// unknown clicks, out-of-order and malformed records).
fn input(dir: &Path, clicks: u64, seed: u64) -> PathBuf {
    generate_input(
        dir,
        &format!("clicks = {clicks}\nseed = {seed}\nspan_hours = 30.0\nmalformed_rate = 0.003"),
    )
}

fn gaps_logged(stderr: &[u8]) -> usize {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| l.contains("Fluvio skipped records"))
        .count()
}

#[test]
fn fixture_through_fluvio_topics() {
    let Some(endpoint) = endpoint("fixture_through_fluvio_topics") else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let topics = topics("fixture");
    produce(&endpoint, &topics.0, 2, &fixture("clicks.ndjson"));
    produce(&endpoint, &topics.1, 2, &fixture("conversions.ndjson"));
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    run(&fluvio_args(&endpoint, &topics, &first, "fixture"));
    let c = summary(&first);
    assert_eq!(c["click_records"], 12);
    assert_eq!(c["clicks"], 7);
    assert_eq!(c["duplicate_clicks"], 1);
    assert_eq!(c["conversions"], 7);
    assert_eq!(c["refused_changes"], 1);
    // The offsets were committed: a second run of the same consumer reads nothing.
    let second = dir.path().join("second");
    run(&fluvio_args(&endpoint, &topics, &second, "fixture"));
    assert_eq!(summary(&second)["click_records"], 0);
    assert_eq!(summary(&second)["conversion_records"], 0);
}

/// A million-event backlog over two partitions, read by one instance that exits by itself:
/// identical to the file run of the same input — and so is a run with 1 MB fetches, where the
/// SPU cuts a batch at almost every response: attribd's fetch continues the cut batch, so not
/// one gap is left to re-read (the `fluvio` 0.50.1 consumer skipped the rest of each one).
#[test]
fn a_million_event_backlog_over_two_partitions_equals_the_file_run() {
    let Some(endpoint) =
        endpoint("a_million_event_backlog_over_two_partitions_equals_the_file_run")
    else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let input = input(dir.path(), 940_000, 7);
    let reference = dir.path().join("files");
    let want = file_run(&input, &reference);
    assert!(
        want["click_records"].as_u64().unwrap() + want["conversion_records"].as_u64().unwrap()
            >= 1_000_000
    );
    let topics = topics("million");
    produce(&endpoint, &topics.0, 2, &input.join("clicks.ndjson"));
    produce(&endpoint, &topics.1, 2, &input.join("conversions.ndjson"));

    let out = dir.path().join("fluvio");
    run(&fluvio_args(&endpoint, &topics, &out, "million"));
    assert_eq!(summary(&out), want, "counters");
    assert_same_but_unique_placement(&out, &reference, "2 partitions");

    // Small fetches: many responses end inside a batch.
    let small = dir.path().join("small-fetches");
    let pipeline = dir.path().join("small.toml");
    std::fs::write(
        &pipeline,
        "[source]\nkind = \"fluvio\"\n[source.fluvio]\nmax_fetch_bytes = 1048588\n".to_string()
            + &default_report_sections(),
    )
    .unwrap();
    let mut args = fluvio_args(&endpoint, &topics, &small, "million-small");
    args.extend(["-p".to_string(), pipeline.to_str().unwrap().to_string()]);
    let o = attribd_cmd()
        .args(&args)
        .env("ATTRIBD_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        gaps_logged(&o.stderr),
        0,
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(summary(&small), want, "counters with 1 MB fetches");
    // Same partitions, same merge: identical to the first Fluvio run, unique flags included.
    assert_same(&outputs(&small), &outputs(&out), "1 MB fetches");
}

/// Four partitions, all conversions produced before any click: three runs give the same
/// outputs, equal to the file run.
#[test]
fn four_partitions_with_conversions_before_clicks_are_deterministic() {
    let Some(endpoint) =
        endpoint("four_partitions_with_conversions_before_clicks_are_deterministic")
    else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let input = input(dir.path(), 120_000, 21);
    let reference = dir.path().join("files");
    let want = file_run(&input, &reference);
    let topics = topics("four");
    produce(&endpoint, &topics.1, 4, &input.join("conversions.ndjson"));
    produce(&endpoint, &topics.0, 4, &input.join("clicks.ndjson"));
    let mut first: Option<Outputs> = None;
    for i in 0..3 {
        let out = dir.path().join(format!("run{i}"));
        run(&fluvio_args(&endpoint, &topics, &out, &format!("four-{i}")));
        assert_eq!(summary(&out), want, "run {i}: counters");
        assert_same_but_unique_placement(&out, &reference, &format!("run {i}"));
        // Identical from run to run, unique flags included.
        let got = outputs(&out);
        match &first {
            None => first = Some(got),
            Some(f) => assert_same(&got, f, &format!("run {i} vs run 0")),
        }
    }
}

/// kill -9 at random moments while consuming, restarted each time: the end result equals the
/// uninterrupted run.
#[test]
fn kill_9_while_consuming_then_resume_equals_an_uninterrupted_run() {
    let Some(endpoint) = endpoint("kill_9_while_consuming_then_resume_equals_an_uninterrupted_run")
    else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let input = input(dir.path(), 300_000, 33);
    let topics = topics("kill");
    produce(&endpoint, &topics.0, 2, &input.join("clicks.ndjson"));
    produce(&endpoint, &topics.1, 2, &input.join("conversions.ndjson"));
    let whole = dir.path().join("whole");
    run(&fluvio_args(&endpoint, &topics, &whole, "kill-whole"));
    let want = summary(&whole);
    let reference = outputs(&whole);

    let out = dir.path().join("killed");
    let pipeline = dir.path().join("often.toml");
    std::fs::write(
        &pipeline,
        "[source]\nkind = \"fluvio\"\n[checkpoint]\nevery = \"1h\"\nevery_events = 15000\n"
            .to_string()
            + &default_report_sections(),
    )
    .unwrap();
    let mut args = fluvio_args(&endpoint, &topics, &out, "kill");
    args.extend(["-p".to_string(), pipeline.to_str().unwrap().to_string()]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    for kill in 0..5 {
        // Killed once it has taken a random number of records (not after a random time: a
        // fast machine finishes the whole topic in a couple of seconds).
        let metrics = metrics_addr();
        let mut child = attribd_cmd()
            .args(&args)
            .env("ATTRIBD_LOG", "warn")
            .env("ATTRIBD_METRICS_ADDR", &metrics)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let at = rng.random_range(10_000..50_000);
        if !wait_for_events(&mut child, &metrics, at, Duration::from_secs(120)) {
            panic!("the run finished (or stalled) before {at} records at kill {kill}");
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    run(&args);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap())
            .unwrap();
    assert!(
        report["report"]["resumed_from"].as_u64().is_some(),
        "the last run resumed from a checkpoint"
    );
    assert_eq!(summary(&out), want, "counters after 5 kills");
    assert_same(
        &outputs(&out),
        &reference,
        "after 5 kills (vs the uninterrupted Fluvio run)",
    );
}

/// SIGTERM commits exactly what the final checkpoint covers: a new instance without the old
/// state directory (same consumer) reads the rest — no record lost, none read twice.
#[test]
fn sigterm_then_a_new_instance_without_state_loses_nothing() {
    let Some(endpoint) = endpoint("sigterm_then_a_new_instance_without_state_loses_nothing") else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let input = input(dir.path(), 150_000, 44);
    let reference = dir.path().join("files");
    let want = file_run(&input, &reference);
    let topics = topics("term");
    produce(&endpoint, &topics.0, 2, &input.join("clicks.ndjson"));
    produce(&endpoint, &topics.1, 2, &input.join("conversions.ndjson"));

    let first = dir.path().join("first");
    let metrics = metrics_addr();
    let mut child = attribd_cmd()
        .args(fluvio_args(&endpoint, &topics, &first, "term"))
        .env("ATTRIBD_LOG", "warn")
        .env("ATTRIBD_METRICS_ADDR", &metrics)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // SIGTERM once a fifth of the records are in, so the stop lands mid-way on any machine.
    let fifth = (want["click_records"].as_u64().unwrap()
        + want["conversion_records"].as_u64().unwrap())
        / 5;
    assert!(
        wait_for_events(&mut child, &metrics, fifth, Duration::from_secs(120)),
        "never took {fifth} records"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let a = summary(&first);
    let total = |c: &serde_json::Value| {
        c["click_records"].as_u64().unwrap() + c["conversion_records"].as_u64().unwrap()
    };
    assert!(
        total(&a) > 0 && total(&a) < total(&want),
        "stopped mid-way: {a}"
    );

    let second = dir.path().join("second");
    run(&fluvio_args(&endpoint, &topics, &second, "term"));
    let b = summary(&second);
    assert_eq!(
        total(&a) + total(&b),
        total(&want),
        "every record read exactly once across the two instances"
    );
    assert_eq!(
        a["click_records"].as_u64().unwrap() + b["click_records"].as_u64().unwrap(),
        want["click_records"].as_u64().unwrap()
    );
}

/// Two instances, one partition each, into their own outputs: together they equal the
/// one-instance result on every total but unique clicks (a visitor's clicks span partitions).
#[test]
fn two_instances_one_partition_each_add_up_to_one_instance() {
    let Some(endpoint) = endpoint("two_instances_one_partition_each_add_up_to_one_instance") else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let input = input(dir.path(), 100_000, 55);
    let reference = dir.path().join("files");
    let want = file_run(&input, &reference);
    let topics = topics("scale");
    produce(&endpoint, &topics.0, 2, &input.join("clicks.ndjson"));
    produce(&endpoint, &topics.1, 2, &input.join("conversions.ndjson"));
    let mut parts = Vec::new();
    let mut children = Vec::new();
    for p in 0..2 {
        let out = dir.path().join(format!("p{p}"));
        let mut args = fluvio_args(&endpoint, &topics, &out, &format!("scale-{p}"));
        args.extend(["--fluvio-partitions".to_string(), p.to_string()]);
        children.push(
            attribd_cmd()
                .args(&args)
                .env("ATTRIBD_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        parts.push(out);
    }
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let got: Vec<serde_json::Value> = parts.iter().map(|p| summary(p)).collect();
    for key in [
        "click_records",
        "conversion_records",
        "clicks",
        "duplicate_clicks",
        "conversions",
        "approved",
        "pending",
        "rejected",
        "revenue_micros",
        "status_changes",
        "duplicate_conversions",
        "refused_changes",
        "attributed",
        "unknown_click",
        "outside_window",
    ] {
        let sum: i64 = got.iter().map(|c| c[key].as_i64().unwrap()).sum();
        assert_eq!(sum, want[key].as_i64().unwrap(), "{key}");
    }
    // Unique clicks are per instance: a visitor seen by both counts in both.
    let unique: i64 = got
        .iter()
        .map(|c| c["unique_clicks"].as_i64().unwrap())
        .sum();
    assert!(unique >= want["unique_clicks"].as_i64().unwrap());
    // Aggregates: every measure but unique_clicks adds up bucket by bucket.
    let key = [
        "minute",
        "tenant_id",
        "offer_id",
        "affiliate_id",
        "country",
        "currency",
    ];
    let mut sum: BTreeMap<String, [i64; 10]> = BTreeMap::new();
    for p in &parts {
        for (k, v) in stats_sums(p, &key) {
            let e = sum.entry(k).or_default();
            for i in 0..10 {
                e[i] += v[i];
            }
        }
    }
    let mut reference = stats_sums(&reference, &key);
    let unique_col = attribd::sink::parquet::schema::MEASURES
        .iter()
        .position(|m| *m == "unique_clicks")
        .unwrap();
    for m in [&mut sum, &mut reference] {
        for v in m.values_mut() {
            v[unique_col] = 0;
        }
        m.retain(|_, v| v.iter().any(|x| *x != 0));
    }
    assert_eq!(sum, reference);
}

/// A topic whose name is a prefix of another is still found exactly (the SC lists by
/// substring), and a partition that does not exist is a clear error.
#[test]
fn topics_are_matched_by_exact_name() {
    let Some(endpoint) = endpoint("topics_are_matched_by_exact_name") else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let topics = topics("exact");
    let longer = (format!("{}1p", topics.0), format!("{}1p", topics.1));
    // The longer names exist first and hold other records.
    produce(&endpoint, &longer.0, 1, &fixture("clicks.ndjson"));
    produce(&endpoint, &longer.1, 1, &fixture("conversions.ndjson"));
    produce(&endpoint, &longer.1, 1, &fixture("conversions.ndjson"));
    produce(&endpoint, &topics.0, 3, &fixture("clicks.ndjson"));
    produce(&endpoint, &topics.1, 3, &fixture("conversions.ndjson"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    run(&fluvio_args(&endpoint, &topics, &out, "exact"));
    assert_eq!(summary(&out)["click_records"], 12);
    assert_eq!(summary(&out)["conversion_records"], 16);

    let mut args = fluvio_args(&endpoint, &topics, &dir.path().join("bad"), "exact-bad");
    args.extend(["--fluvio-partitions".to_string(), "7".to_string()]);
    let o = attribd_cmd().args(&args).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("partition 7 does not exist") && err.contains("3 partitions"),
        "{err}"
    );
}

/// `attribd ingest`, the stateless edge: refuses topics that do not exist (naming them); then
/// records POSTed to it (NDJSON requests, a postback URL, a bad record answered 400) are
/// produced keyed by click_id, each request answered 202 only after Fluvio acknowledged it
/// (the edge is killed -9 after the last answer). The pipeline reading those topics equals
/// the file run of the same records.
#[test]
fn records_posted_to_the_ingest_edge_equal_the_file_run() {
    let Some(endpoint) = endpoint("records_posted_to_the_ingest_edge_equal_the_file_run") else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let topics = topics("edge");
    let door = format!("127.0.0.1:{}", free_port());
    let edge_args = [
        "ingest",
        "--fluvio-endpoint",
        &endpoint,
        "--fluvio-clicks-topic",
        &topics.0,
        "--fluvio-conversions-topic",
        &topics.1,
        "--listen",
        &door,
    ];

    // Topics that do not exist: an error naming the topic, not a door that takes requests.
    let o = attribd_cmd()
        .args(edge_args)
        .env("ATTRIBD_LOG", "warn")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&topics.0) && err.contains("does not exist"),
        "{err}"
    );

    // Valid records only, so the reference is exactly what was posted (the door's 400s are
    // tested in tests/http.rs; one bad record below checks it still reaches the dead letters).
    let input = generate_input(
        dir.path(),
        "clicks = 20000\nseed = 66\nspan_hours = 30.0\nmalformed_rate = 0.0",
    );
    let empty = dir.path().join("empty.ndjson");
    std::fs::write(&empty, "").unwrap();
    produce(&endpoint, &topics.0, 2, &empty);
    produce(&endpoint, &topics.1, 2, &empty);

    let metrics = metrics_addr();
    let child = attribd_cmd()
        .args(edge_args)
        .env("ATTRIBD_LOG", "warn")
        .env("ATTRIBD_METRICS_ADDR", &metrics)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while request(&metrics, "GET", "/ready", &[], b"").map(|r| r.0) != Some(200) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the edge never got ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let post = |path: &str, body: &str| {
        request(&door, "POST", path, &[], body.as_bytes()).expect("an answer")
    };
    let mut posted = 0;
    for file in ["clicks.ndjson", "conversions.ndjson"] {
        let text = std::fs::read_to_string(input.join(file)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // The last conversion goes as a postback URL instead.
        let lines = if file == "conversions.ndjson" {
            &lines[..lines.len() - 1]
        } else {
            &lines[..]
        };
        let path = format!("/v1/{}", file.trim_end_matches(".ndjson"));
        for chunk in lines.chunks(500) {
            let (code, text) = post(&path, &chunk.join("\n"));
            assert_eq!(code, 202, "{text}");
            assert!(
                text.contains(&format!("\"accepted\":{}", chunk.len())),
                "{text}"
            );
            posted += chunk.len();
        }
    }
    let conversions = std::fs::read_to_string(input.join("conversions.ndjson")).unwrap();
    let last: serde_json::Value =
        serde_json::from_str(conversions.lines().last().unwrap()).unwrap();
    let mut query = String::new();
    for (k, v) in last.as_object().unwrap() {
        if k == "metadata" {
            continue;
        }
        let v = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let v: String = v
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        query.push_str(&format!("{k}={v}&"));
    }
    let (code, text) = request(&door, "GET", &format!("/v1/postback?{query}"), &[], b"").unwrap();
    assert_eq!(code, 202, "{text}");
    posted += 1;
    let bad = r#"{"click_id":5,"ts":"2026-11-01T10:00:00Z","offer_id":"o","affiliate_id":"a"}"#;
    let (code, text) = post("/v1/clicks", bad);
    assert_eq!(code, 400, "{text}");

    // kill -9 right after the last answer: a 202 means Fluvio has the records already, so
    // nothing the edge still held can be missing below.
    let mut child = child;
    child.kill().unwrap();
    child.wait().unwrap();

    // The reference: the same records from files, the bad one at the end of the clicks, the
    // last conversion as the postback sent it (a URL carries no metadata).
    let mut fields = last.as_object().unwrap().clone();
    fields.remove("metadata");
    let mut lines: Vec<String> = conversions.lines().map(String::from).collect();
    *lines.last_mut().unwrap() = serde_json::Value::Object(fields).to_string();
    std::fs::write(input.join("conversions.ndjson"), lines.join("\n") + "\n").unwrap();
    let mut clicks = std::fs::read_to_string(input.join("clicks.ndjson")).unwrap();
    clicks.push_str(bad);
    clicks.push('\n');
    std::fs::write(input.join("clicks.ndjson"), clicks).unwrap();
    let reference = dir.path().join("files");
    let want = file_run(&input, &reference);
    assert_eq!(
        want["click_records"].as_u64().unwrap() + want["conversion_records"].as_u64().unwrap(),
        posted as u64 + 1
    );
    let out = dir.path().join("fluvio");
    run(&fluvio_args(&endpoint, &topics, &out, "edge"));
    assert_eq!(summary(&out), want, "counters");
    assert_same_but_unique_placement(&out, &reference, "through the edge");
}

/// `with_http`: the HTTP door beside the Fluvio topics in one run — clicks from two
/// partitions, postbacks POSTed to the door, merged by event time. Every conversion whose
/// click exists is attributed exactly as in the file run of the same records; after a stop
/// and a restart nothing of the door's log is read twice.
#[test]
fn the_http_door_beside_fluvio_partitions_attributes_as_the_file_run() {
    let Some(endpoint) =
        endpoint("the_http_door_beside_fluvio_partitions_attributes_as_the_file_run")
    else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let input = generate_input(
        dir.path(),
        "clicks = 20000\nseed = 77\nspan_hours = 30.0\nmalformed_rate = 0.0",
    );
    let reference = dir.path().join("files");
    let want = file_run(&input, &reference);
    let topics = topics("beside");
    produce(&endpoint, &topics.0, 2, &input.join("clicks.ndjson"));
    let empty = dir.path().join("empty.ndjson");
    std::fs::write(&empty, "").unwrap();
    produce(&endpoint, &topics.1, 2, &empty);

    let door = format!("127.0.0.1:{}", free_port());
    let out = dir.path().join("beside");
    let pipeline = dir.path().join("beside.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[source]\nkind = \"fluvio\"\nwith_http = true\n[source.fluvio]\nendpoint = \"{endpoint}\"\n\
             clicks_topic = \"{}\"\nconversions_topic = \"{}\"\nconsumer = \"beside\"\n\
             [source.http]\nlisten = \"{door}\"\n[sink.parquet]\nout = \"{}\"\n\
             [checkpoint]\nevery = \"1s\"\n",
            topics.0,
            topics.1,
            out.display()
        ) + &default_report_sections(),
    )
    .unwrap();
    let start = || {
        let metrics = metrics_addr();
        let child = attribd_cmd()
            .args(["run", "-q", "-p", pipeline.to_str().unwrap()])
            .env("ATTRIBD_LOG", "warn")
            .env("ATTRIBD_METRICS_ADDR", &metrics)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let t = std::time::Instant::now();
        while request(&door, "GET", "/health", &[], b"").is_none() {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "the door never opened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        (child, metrics)
    };
    let wait_and_stop = |child: std::process::Child, metrics: &str, events: u64| {
        let t = std::time::Instant::now();
        while events_in(metrics) < events {
            assert!(
                t.elapsed() < Duration::from_secs(300),
                "{} of {events} records in",
                events_in(metrics)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success());
    };

    let (child, metrics) = start();
    let text = std::fs::read_to_string(input.join("conversions.ndjson")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for chunk in lines.chunks(200) {
        let (code, answer) = request(
            &door,
            "POST",
            "/v1/conversions",
            &[],
            chunk.join("\n").as_bytes(),
        )
        .unwrap();
        assert_eq!(code, 202, "{answer}");
    }
    let total =
        want["click_records"].as_u64().unwrap() + want["conversion_records"].as_u64().unwrap();
    wait_and_stop(child, &metrics, total);

    let attributed = |out: &Path| -> Vec<String> {
        let mut v: Vec<String> = rows(&read_table(out, "conversions"))
            .into_iter()
            .filter(|r| get(r, "attributed") == "true")
            .map(|r| format!("{r:?}"))
            .collect();
        v.sort();
        v
    };
    let want_attributed = attributed(&reference);
    assert!(want_attributed.len() > 500, "{}", want_attributed.len());
    assert_eq!(
        attributed(&out),
        want_attributed,
        "attributed conversion rows"
    );
    assert_eq!(
        rows(&read_table(&out, "clicks")).len(),
        rows(&read_table(&reference, "clicks")).len(),
        "click rows"
    );

    // A restart goes on after the checkpoint: neither the topics nor the door's log again.
    // (Counters go on from the checkpoint and show once a batch is processed: one new click.)
    let (child, metrics) = start();
    let (code, answer) = request(
        &door,
        "POST",
        "/v1/clicks",
        &[],
        br#"{"click_id":"after-restart","ts":"2026-11-01T10:00:00Z","offer_id":"o","affiliate_id":"a"}"#,
    )
    .unwrap();
    assert_eq!(code, 202, "{answer}");
    let t = std::time::Instant::now();
    while events_in(&metrics) < total + 1 {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the new click never came in"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Time for a replay of the log or the topics to show, were there one.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        events_in(&metrics),
        total + 1,
        "records read twice after the restart"
    );
    wait_and_stop(child, &metrics, total + 1);
    assert_eq!(attributed(&out), want_attributed, "after a restart");
}
