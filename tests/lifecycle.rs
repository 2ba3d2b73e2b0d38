//! Data lifecycle against known answers: retention deletes exactly the expired partitions
//! (from the command line and in the running daemon), a subject export finds exactly one
//! customer's rows, and an erasure removes exactly them — surviving a kill half-way, a replay
//! and a run beside it. ClickHouse's side is in `tests/clickhouse.rs`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::*;

const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `YYYY-MM-DD` of a time.
fn date(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string()
}

fn click_line(id: &str, ms: i64) -> String {
    format!(
        r#"{{"click_id":"{id}","ts":{ms},"tenant_id":"t1","offer_id":"o1","affiliate_id":"a1","country":"US","ip":"10.0.0.9"}}"#
    )
}

fn postback_line(click: &str, ext: &str, ms: i64) -> String {
    format!(
        r#"{{"click_id":"{click}","external_id":"{ext}","tenant_id":"t1","amount":"5","status":"approved","ts":{ms}}}"#
    )
}

/// Hour partitions (`table/dt=…/hour=…`) holding a complete Parquet file.
fn partitions(out: &Path) -> BTreeSet<String> {
    files_under(out)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .filter_map(|p| {
            let rel = p.strip_prefix(out).ok()?.parent()?.display().to_string();
            Some(rel)
        })
        .collect()
}

/// The input of the retention tests, at times relative to now (day boundaries are avoided so
/// the expected set does not depend on the hour the test runs): clicks 100 days old (two
/// hours), 60 and 1 day old; a conversion 800 days old (its click unknown), one 100 days old.
struct Aged {
    old_click_day: i64,
    ancient_conversion_day: i64,
}

fn write_aged_input(dir: &Path) -> Aged {
    let now = now_ms();
    let day = |ago: i64| (now / DAY_MS - ago) * DAY_MS;
    let old = day(100);
    let clicks = [
        click_line("k-old-a", old + 3 * 3_600_000),
        click_line("k-old-b", old + 5 * 3_600_000),
        click_line("k-60", day(60) + 3_600_000),
        click_line("k-1", day(1) + 3_600_000),
        "{not json".to_string(),
    ];
    let conversions = [
        postback_line("k-unknown", "e-ancient", day(800) + 2 * 3_600_000),
        postback_line("k-old-a", "e-old", old + 4 * 3_600_000),
        postback_line("k-1", "e-1", day(1) + 2 * 3_600_000),
    ];
    std::fs::write(dir.join("clicks.ndjson"), clicks.join("\n") + "\n").unwrap();
    std::fs::write(
        dir.join("conversions.ndjson"),
        conversions.join("\n") + "\n",
    )
    .unwrap();
    Aged {
        old_click_day: day(100),
        ancient_conversion_day: day(800),
    }
}

fn files_pipeline(dir: &Path, name: &str, out: &Path, extra: &str) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(
        &p,
        format!(
            "[source]\nkind = \"files\"\nclicks = \"{}\"\nconversions = \"{}\"\n\
             [sink.parquet]\nout = \"{}\"\n{extra}\n",
            dir.join("clicks.ndjson").display(),
            dir.join("conversions.ndjson").display(),
            out.display()
        ),
    )
    .unwrap();
    p
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn retention_deletes_exactly_the_expired_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let aged = write_aged_input(dir.path());
    let out = dir.path().join("out");
    // Written without [retention]: nothing is deleted.
    let plain = files_pipeline(dir.path(), "plain", &out, "");
    attribd(&["run", "-q", "-p", plain.to_str().unwrap()]);
    let before = partitions(&out);
    let old = date(aged.old_click_day);
    let ancient = date(aged.ancient_conversion_day);
    let expected_gone: BTreeSet<String> = [
        format!("clicks/dt={old}/hour=03"),
        format!("clicks/dt={old}/hour=05"),
        format!("conversions/dt={ancient}/hour=02"),
    ]
    .into_iter()
    .collect();
    assert!(expected_gone.is_subset(&before), "{before:?}");
    // Without [retention] the command refuses: nothing to go by.
    let o = attribd_cmd()
        .args(["retention", "--dry-run", "-p", plain.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no [retention]"));

    // The defaults: clicks 90 days, conversions 730, stats forever, dead letters 30.
    let kept = files_pipeline(dir.path(), "kept", &out, "[retention]\n");
    let dead: Vec<PathBuf> = files_under(&out.join("dead_letters"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    let listed = |o: &std::process::Output, verb: &str| -> BTreeSet<String> {
        stdout(o)
            .lines()
            .filter_map(|l| l.strip_prefix(verb))
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
            .collect()
    };
    let dry = attribd(&["retention", "--dry-run", "-p", kept.to_str().unwrap()]);
    assert_eq!(
        listed(&dry, "would delete "),
        expected_gone,
        "{}",
        stdout(&dry)
    );
    assert_eq!(partitions(&out), before, "a dry run deletes nothing");
    // The dead-letter file, written a month ago, is listed too; --now looks ahead.
    let month_ago = SystemTime::now() - Duration::from_secs(31 * 86_400);
    std::fs::File::options()
        .write(true)
        .open(&dead[0])
        .unwrap()
        .set_modified(month_ago)
        .unwrap();
    let dry = attribd(&["retention", "--dry-run", "-p", kept.to_str().unwrap()]);
    let dead_name = dead[0].file_name().unwrap().to_string_lossy().to_string();
    let mut with_dead = expected_gone.clone();
    with_dead.insert(format!("dead_letters/{dead_name}"));
    assert_eq!(listed(&dry, "would delete "), with_dead, "{}", stdout(&dry));
    let in_40_days = chrono::DateTime::from_timestamp_millis(now_ms() + 40 * DAY_MS)
        .unwrap()
        .to_rfc3339();
    let ahead = attribd(&[
        "retention",
        "--dry-run",
        "--now",
        &in_40_days,
        "-p",
        kept.to_str().unwrap(),
    ]);
    assert!(
        listed(&ahead, "would delete ").contains(&format!(
            "clicks/dt={}/hour=01",
            date(now_ms() - 60 * DAY_MS)
        )),
        "{}",
        stdout(&ahead)
    );

    // While a run holds the directory, the command leaves deleting to it.
    let _lock = hold_lock(&out);
    let o = attribd_cmd()
        .args(["retention", "-p", kept.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("running attribd holds"));
    drop(_lock);

    let done = attribd(&["retention", "-p", kept.to_str().unwrap()]);
    assert_eq!(listed(&done, "deleted "), with_dead, "{}", stdout(&done));
    let after = partitions(&out);
    let want: BTreeSet<String> = before.difference(&expected_gone).cloned().collect();
    assert_eq!(after, want);
    assert!(files_under(&out.join("dead_letters")).is_empty());
    // The day directories of the expired clicks are gone with their hours.
    assert!(!out.join(format!("clicks/dt={old}")).exists());
    // What is left reads back whole: 2 clicks, 2 conversions.
    assert_eq!(rows(&read_table(&out, "clicks")).len(), 2);
    assert_eq!(rows(&read_table(&out, "conversions")).len(), 2);
}

/// A process holding the output directory's lock as `attribd run` does.
fn hold_lock(out: &Path) -> attribd::checkpoint::lock::DirLock {
    attribd::checkpoint::lock::lock_dirs(&[out.join("_state")]).unwrap()
}

#[test]
fn the_running_daemon_deletes_expired_partitions_after_a_checkpoint() {
    let (_dir, addr, out, p) = door_on_a_free_port("");
    let mut text = std::fs::read_to_string(&p).unwrap();
    text.push_str("[retention]\nclicks = \"30d\"\nevery = \"1s\"\n");
    std::fs::write(&p, text).unwrap();
    let mut run = start(&p, &addr);
    let now = now_ms();
    let old = (now / DAY_MS - 45) * DAY_MS + 7 * 3_600_000;
    let recent = (now / DAY_MS - 2) * DAY_MS + 7 * 3_600_000;
    let body = [click_line("k-old", old), click_line("k-new", recent)].join("\n");
    let (code, _) = request(&addr, "POST", "/v1/clicks", &[], body.as_bytes()).unwrap();
    assert_eq!(code, 202);
    let t = Instant::now();
    let gone = format!("clicks/dt={}/hour=07", date(old));
    let kept = format!("clicks/dt={}/hour=07", date(recent));
    loop {
        let parts = partitions(&out);
        if parts.contains(&kept) && !parts.contains(&gone) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "after a minute: {parts:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let deleted = metric(
        &run.metrics,
        "attribd_retention_deleted_partitions_total{table=\"clicks\"}",
    );
    assert_eq!(deleted, 1);
    stop(run.child.take().unwrap());
    let clicks: Vec<String> = rows(&read_table(&out, "clicks"))
        .iter()
        .map(|r| get(r, "click_id").to_string())
        .collect();
    assert_eq!(clicks, ["k-new"]);
}

// ---- subject requests ----

/// click_id → (ip, user_agent, referrer, sub1) of every click.
fn click_fields(out: &Path) -> Vec<String> {
    let mut v: Vec<String> = rows(&read_table(out, "clicks"))
        .iter()
        .map(|r| {
            format!(
                "{} ip={} ua={} ref={} sub1={}",
                get(r, "click_id"),
                get(r, "ip"),
                get(r, "user_agent"),
                get(r, "referrer"),
                get(r, "sub1")
            )
        })
        .collect();
    v.sort();
    v
}

fn export(p: &Path, customer: &str, tenant: Option<&str>) -> serde_json::Value {
    let mut args = vec![
        "privacy",
        "export",
        "-p",
        p.to_str().unwrap(),
        "--customer-id",
        customer,
    ];
    if let Some(t) = tenant {
        args.extend(["--tenant", t]);
    }
    serde_json::from_slice(&attribd(&args).stdout).unwrap()
}

fn ids(doc: &serde_json::Value, list: &str, field: &str) -> Vec<String> {
    let mut v: Vec<String> = doc[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}/{}{}",
                r["tenant_id"].as_str().unwrap(),
                r[field].as_str().unwrap(),
                r.get("version")
                    .map(|v| format!("v{v}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    v.sort();
    v
}

const ALL_VERSIONS: [&str; 6] = ["t1/Av1", "t1/Av2", "t1/Bv1", "t1/Cv1", "t1/Ev1", "t2/Dv1"];
const CLICKS_BEFORE: [&str; 5] = [
    "k1 ip=10.0.0.1 ua=UA-1 ref=https://r.example/1 sub1=alice",
    "k2 ip=10.0.0.2 ua= ref= sub1=s2",
    "k3 ip=10.0.0.3 ua= ref= sub1=bob",
    "k4 ip=10.0.0.4 ua= ref= sub1=carol",
    "k5 ip=10.0.0.5 ua= ref= sub1=",
];
const CLICKS_AFTER: [&str; 5] = [
    "k1 ip= ua= ref= sub1=",
    "k2 ip= ua= ref= sub1=",
    "k3 ip=10.0.0.3 ua= ref= sub1=bob",
    "k4 ip=10.0.0.4 ua= ref= sub1=carol",
    "k5 ip=10.0.0.5 ua= ref= sub1=",
];

fn assert_erased(out: &Path) {
    assert_eq!(conversion_versions(out), ["t1/Cv1", "t2/Dv1"]);
    assert_eq!(click_fields(out), CLICKS_AFTER);
}

fn delete(p: &Path, extra_env: &[(&str, &str)]) -> std::process::Output {
    attribd_cmd()
        .args([
            "privacy",
            "delete",
            "-p",
            p.to_str().unwrap(),
            "--customer-id",
            "cust-1",
            "--tenant",
            "t1",
        ])
        .envs(extra_env.iter().copied())
        .env("ATTRIBD_LOG", "warn")
        .output()
        .unwrap()
}

fn audit(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("_state/privacy/audit.ndjson"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn export_finds_exactly_the_customers_rows_and_erasure_removes_exactly_them() {
    let dir = tempfile::tempdir().unwrap();
    write_subject_input(dir.path());
    let out = dir.path().join("out");
    let p = files_pipeline(dir.path(), "subject", &out, "");
    attribd(&["run", "-q", "-p", p.to_str().unwrap()]);
    assert_eq!(conversion_versions(&out), ALL_VERSIONS);
    assert_eq!(click_fields(&out), CLICKS_BEFORE);
    let stats_before = stats_sums(&out, &DIMS);

    // Export: one tenant, then every tenant.
    let doc = export(&p, "cust-1", Some("t1"));
    assert_eq!(
        ids(&doc, "conversions", "external_id"),
        ["t1/Av1", "t1/Av2", "t1/Bv1", "t1/Ev1"]
    );
    assert_eq!(ids(&doc, "clicks", "click_id"), ["t1/k1", "t1/k2"]);
    assert!(doc["conversions"].as_array().unwrap().iter().all(|r| {
        r["_source"]
            .as_str()
            .unwrap()
            .starts_with("parquet:conversions/dt=2026-11-01/hour=1")
    }));
    assert_eq!(doc["conversions"][0]["order_id"], "o-A");
    let doc = export(&p, "cust-1", None);
    assert_eq!(
        ids(&doc, "conversions", "external_id"),
        ["t1/Av1", "t1/Av2", "t1/Bv1", "t1/Ev1", "t2/Dv1"]
    );
    assert_eq!(ids(&doc, "clicks", "click_id"), ["t1/k1", "t1/k2", "t2/k4"]);
    let doc = export(&p, "nobody", None);
    assert_eq!(doc["counts"]["parquet_conversions"], 0);

    // Erasure: exactly the four versions go, the two clicks lose their visitor fields, the
    // aggregates stay.
    let o = delete(&p, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let removed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(removed["parquet_conversions"], 4);
    assert_eq!(removed["parquet_clicks_scrubbed"], 2);
    assert_erased(&out);
    assert_eq!(stats_sums(&out, &DIMS), stats_before);
    duckdb_counts(&out, 2, 5);
    // The audit log names the request, not the person.
    let a = audit(&out);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0]["removed"]["parquet_conversions"], 4);
    assert_eq!(a[0]["tenant"], "t1");
    let state = files_under(&out.join("_state/privacy"));
    for f in &state {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(
            !text.contains("cust-1"),
            "{} holds the customer id",
            f.display()
        );
    }
    // A second request finds nothing more.
    let o = delete(&p, &[]);
    let again: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(again["parquet_conversions"], 0);
    assert_eq!(
        export(&p, "cust-1", Some("t1"))["counts"]["parquet_conversions"],
        0
    );

    // A replay does not bring them back: the input grows (the run goes back before its end
    // and writes the end again), then a fresh start from the inputs.
    let mut clicks = std::fs::read_to_string(dir.path().join("clicks.ndjson")).unwrap();
    clicks.push_str(&click_line("k9", 1_793_530_000_000));
    clicks.push('\n');
    std::fs::write(dir.path().join("clicks.ndjson"), clicks).unwrap();
    attribd(&["run", "-q", "-p", p.to_str().unwrap()]);
    assert_eq!(conversion_versions(&out), ["t1/Cv1", "t2/Dv1"]);
    attribd(&["run", "-q", "--fresh", "-p", p.to_str().unwrap()]);
    assert_eq!(conversion_versions(&out), ["t1/Cv1", "t2/Dv1"]);
    let mut after = CLICKS_AFTER.to_vec();
    after.push("k9 ip=10.0.0.9 ua= ref= sub1=");
    assert_eq!(click_fields(&out), after);
}

/// The erased output read by DuckDB (an independent reader), when it is installed.
fn duckdb_counts(out: &Path, conversions: u64, clicks: u64) {
    if !duckdb_available("DuckDB read-back") {
        return;
    }
    let script = format!(
        r#"
import duckdb
out = {out:?}
db = duckdb.connect()
c = db.execute(f"select count(*), count(*) filter (where customer_id = 'cust-1' and tenant_id = 't1') from read_parquet('{{out}}/conversions/**/*.parquet')").fetchone()
k = db.execute(f"select count(*), count(*) filter (where ip is not null and click_id in ('k1', 'k2')) from read_parquet('{{out}}/clicks/**/*.parquet')").fetchone()
print(*c, *k)
"#,
        out = out.display().to_string()
    );
    let o = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("{conversions} 0 {clicks} 0")
    );
}

#[test]
fn an_erasure_killed_half_way_finishes_when_rerun() {
    let dir = tempfile::tempdir().unwrap();
    write_subject_input(dir.path());
    let out = dir.path().join("out");
    let p = files_pipeline(dir.path(), "subject", &out, "");
    attribd(&["run", "-q", "-p", p.to_str().unwrap()]);
    // Killed after the first file was replaced (the customer's rows of 10:00), before the
    // next replacement (a click file: the files holding only the customer's rows of 11:00
    // were deleted in between).
    let o = delete(
        &p,
        &[
            ("ATTRIBD_CRASH_AT", "erasure-before-rename"),
            ("ATTRIBD_CRASH_SKIP", "1"),
        ],
    );
    assert!(!o.status.success(), "the crash point was not reached");
    assert_eq!(conversion_versions(&out), ["t1/Cv1", "t2/Dv1"]);
    assert_eq!(
        click_fields(&out),
        CLICKS_BEFORE,
        "no click file was replaced yet"
    );
    // The leftover temporary file is not a Parquet file anyone reads.
    assert!(
        files_under(&out)
            .iter()
            .any(|f| f.to_string_lossy().ends_with(".erase.tmp"))
    );
    // A run in between keeps the filter: nothing of the customer is written again.
    attribd(&["run", "-q", "-p", p.to_str().unwrap()]);
    // The rerun finishes the interrupted request (and its own finds nothing more).
    let o = delete(&p, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_erased(&out);
    assert!(
        !files_under(&out)
            .iter()
            .any(|f| f.to_string_lossy().ends_with(".erase.tmp"))
    );
    let a = audit(&out);
    let total: u64 = a
        .iter()
        .map(|l| l["removed"]["parquet_conversions"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 4, "{a:?}");
    assert!(files_under(&out.join("_state/privacy/requests")).is_empty());
}

#[test]
fn an_erasure_while_the_daemon_runs_is_performed_by_it() {
    let (dir, addr, out, p) = door_on_a_free_port("");
    let mut run = start(&p, &addr);
    for (path, body) in [
        ("/v1/clicks", SUBJECT_CLICKS),
        ("/v1/conversions", SUBJECT_POSTBACKS),
    ] {
        let (code, text) = request(&addr, "POST", path, &[], body.as_bytes()).unwrap();
        assert_eq!(code, 202, "{text}");
    }
    let metrics = run.metrics.clone();
    let child = run.child.as_mut().unwrap();
    assert!(wait_for_events(
        child,
        &metrics,
        11,
        Duration::from_secs(60)
    ));
    // Rows reach Parquet at checkpoints (every second here); E waits for its click (a live
    // stream does not give up on it), so five versions.
    let t = Instant::now();
    while conversion_versions(&out).len() < 5 {
        assert!(t.elapsed() < Duration::from_secs(60), "rows never written");
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = delete(&p, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("queued for the running attribd"),
        "performed by the command, not the daemon"
    );
    let removed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(removed["parquet_conversions"], 3);
    assert_erased(&out);
    assert_eq!(metric(&run.metrics, "attribd_privacy_erasures_total"), 1);
    // A status change of an erased conversion arriving now is not written either.
    let change = r#"{"click_id":"k2","external_id":"B","tenant_id":"t1","amount":"20","status":"rejected","ts":"2026-11-01T11:10:00Z"}"#;
    assert_eq!(
        request(&addr, "POST", "/v1/conversions", &[], change.as_bytes())
            .unwrap()
            .0,
        202
    );
    let child = run.child.as_mut().unwrap();
    assert!(wait_for_events(
        child,
        &metrics,
        12,
        Duration::from_secs(60)
    ));
    stop(run.child.take().unwrap());
    assert_erased(&out);
    // The waiting postback E was forgotten: the newest checkpoint (what a restart reads)
    // does not hold the customer id. Older ones keep it until they are pruned, and the door's
    // write-ahead log until it is cut (docs/operations.md).
    let newest = files_under(&out.join("_state"))
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "snap"))
        .max()
        .expect("a checkpoint");
    let bytes = std::fs::read(&newest).unwrap();
    assert!(
        !bytes.windows(6).any(|w| w == b"cust-1"),
        "{} holds the customer id",
        newest.display()
    );

    // After a restart, E's status change (without customer_id) and then its click come: E is
    // not written in any version, and its click comes without the visitor fields.
    let mut run = start(&p, &addr);
    let metrics = run.metrics.clone();
    let change = r#"{"click_id":"zz","external_id":"E","tenant_id":"t1","amount":"50","status":"rejected","ts":"2026-11-01T11:20:00Z"}"#;
    let late_click = r#"{"click_id":"zz","ts":"2026-11-01T11:15:00Z","tenant_id":"t1","offer_id":"o1","affiliate_id":"a1","country":"US","ip":"10.0.0.26","sub1":"dave"}"#;
    for (path, body) in [("/v1/conversions", change), ("/v1/clicks", late_click)] {
        assert_eq!(
            request(&addr, "POST", path, &[], body.as_bytes())
                .unwrap()
                .0,
            202
        );
    }
    let child = run.child.as_mut().unwrap();
    // The counter goes on from the checkpoint: 12 before the restart, 2 now.
    assert!(wait_for_events(
        child,
        &metrics,
        14,
        Duration::from_secs(60)
    ));
    let t = Instant::now();
    while !click_fields(&out).iter().any(|c| c.starts_with("zz ")) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the late click never written"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    stop(run.child.take().unwrap());
    assert_eq!(conversion_versions(&out), ["t1/Cv1", "t2/Dv1"]);
    let mut clicks = CLICKS_AFTER.to_vec();
    clicks.push("zz ip= ua= ref= sub1=");
    assert_eq!(click_fields(&out), clicks);
    drop(dir);
}
