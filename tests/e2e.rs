//! End to end: the `attribd` binary on a fixture whose right answers are known, with every
//! output read back — by the `parquet` crate and, independently, by DuckDB.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::*;

/// Sum of the stats table per (tenant, offer, affiliate, country, currency).
fn stats_by_dims(out: &std::path::Path) -> BTreeMap<String, [i64; 10]> {
    stats_sums(out, &DIMS)
}

fn run_fixture(out: &std::path::Path) -> String {
    let clicks = fixture("clicks.ndjson");
    let convs = fixture("conversions.ndjson");
    let o = attribd(&[
        "run",
        "-q",
        "--clicks",
        clicks.to_str().unwrap(),
        "--conversions",
        convs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn fixture_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let summary = run_fixture(out);
    assert!(summary.contains("events in"), "{summary}");

    // Layout: Hive partitions, complete files only.
    let files = files_under(out);
    assert!(files.iter().all(|f| !f.to_string_lossy().ends_with(".tmp")));
    assert!(files.iter().any(|f| {
        f.to_string_lossy()
            .contains("clicks/dt=2026-11-01/hour=10/part-")
    }));
    assert!(files.iter().any(|f| {
        f.to_string_lossy()
            .contains("clicks/dt=2026-10-02/hour=10/part-")
    }));

    // Clicks: 7 accepted (c1 duplicate dropped, 4 malformed), unique flags per rule.
    let clicks = rows(&read_table(out, "clicks"));
    let mut unique: Vec<(String, String)> = clicks
        .iter()
        .map(|r| {
            (
                get(r, "click_id").to_string(),
                get(r, "is_unique").to_string(),
            )
        })
        .collect();
    unique.sort();
    let want: Vec<(String, String)> = [
        ("c1", "true"),
        ("c2", "false"), // same tenant/offer/ip/day as c1
        ("c3", "true"),  // no ip
        ("c5", "true"),
        ("c6", "true"), // other tenant
        ("c7", "true"),
        ("c8", "true"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(unique, want);
    let c3 = clicks.iter().find(|r| get(r, "click_id") == "c3").unwrap();
    assert_eq!(get(c3, "country"), "DE");
    assert_eq!(
        int(c3, "ts"),
        1_793_527_320_000,
        "+02:00 offset normalised to UTC"
    );
    let c2 = clicks.iter().find(|r| get(r, "click_id") == "c2").unwrap();
    assert_eq!(int(c2, "ts"), 1_793_527_260_000, "epoch-ms form");

    // Conversions: one row per accepted version.
    let convs = rows(&read_table(out, "conversions"));
    assert_eq!(convs.len(), 10);
    let mut versions: Vec<String> = convs
        .iter()
        .map(|r| {
            format!(
                "{}/{} v{} {} {} {}",
                get(r, "tenant_id"),
                get(r, "external_id"),
                get(r, "version"),
                get(r, "status"),
                get(r, "amount"),
                if get(r, "attributed") == "true" {
                    format!(
                        "{}/{}/{}",
                        get(r, "offer_id"),
                        get(r, "affiliate_id"),
                        get(r, "country")
                    )
                } else {
                    get(r, "reason").to_string()
                }
            )
        })
        .collect();
    versions.sort();
    assert_eq!(
        versions,
        [
            "t1/e1 v1 pending 10500000 o1/a1/US",
            "t1/e1 v2 approved 10500000 o1/a1/US",
            "t1/e1 v3 rejected 10500000 o1/a1/US",
            "t1/e1 v4 approved 10500000 o1/a1/US",
            "t1/e3 v1 approved 20000000 o2/a2/DE",
            "t1/e5 v1 approved 7000000 outside_window",
            "t1/e7 v1 pending 3000000 o2/a2/FR",
            "t1/e8 v1 approved 4000000 unknown_click",
            "t2/e1 v1 approved 5000000 o1/a1/US",
            "t2/e9 v1 approved 10000000 o1/a1/US",
        ]
    );
    let e1 = convs
        .iter()
        .find(|r| {
            get(r, "external_id") == "e1" && get(r, "version") == "1" && get(r, "tenant_id") == "t1"
        })
        .unwrap();
    assert_eq!(
        get(e1, "metadata"),
        r#"{"campaign":"black-friday","tags":["a","b"]}"#
    );
    assert_eq!(get(e1, "sub1"), "s-a");
    assert_eq!(get(e1, "device"), "mobile");
    assert_eq!(int(e1, "seconds_to_convert"), 600);
    assert_eq!(int(e1, "click_ts"), 1_793_527_200_000);
    let e3 = convs
        .iter()
        .find(|r| get(r, "external_id") == "e3")
        .unwrap();
    assert_eq!(get(e3, "currency"), "EUR");
    let e5 = convs
        .iter()
        .find(|r| get(r, "external_id") == "e5")
        .unwrap();
    assert_eq!(int(e5, "seconds_to_convert"), 30 * 86_400 + 120);

    // Aggregates: every measure of every bucket, summed over the delta rows.
    let sums = stats_by_dims(out);
    //                 clicks uniq dupc conv appr pend rej revenue dupconv unattr
    let want: BTreeMap<String, [i64; 10]> = [
        ("t1/o1/a1/US/", [4, 3, 1, 0, 0, 0, 0, 0, 0, 0]),
        ("t1/o2/a2/DE/", [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
        ("t1/o2/a2/FR/", [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
        ("t2/o1/a1/US/", [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
        ("t1/o1/a1/US/USD", [0, 0, 0, 1, 1, 0, 0, 10_500_000, 1, 0]),
        ("t1/o2/a2/DE/EUR", [0, 0, 0, 1, 1, 0, 0, 20_000_000, 0, 0]),
        ("t1/o2/a2/FR/USD", [0, 0, 0, 1, 0, 1, 0, 0, 0, 0]),
        ("t1////USD", [0, 0, 0, 2, 2, 0, 0, 11_000_000, 0, 2]),
        ("t2/o1/a1/US/USD", [0, 0, 0, 2, 2, 0, 0, 15_000_000, 0, 0]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(sums, want);

    // Status-change deltas sit in the original conversion's minute (10:10).
    let stats = rows(&read_table(out, "stats_minute"));
    for r in &stats {
        if get(r, "offer_id") == "o1" && get(r, "currency") == "USD" && get(r, "tenant_id") == "t1"
        {
            assert_eq!(int(r, "minute"), 1_793_527_800_000);
        }
    }

    // Dead letters: reason, position and the original bytes.
    let mut reasons: BTreeMap<String, u32> = BTreeMap::new();
    let mut dead_lines = Vec::new();
    for f in files_under(&out.join("dead_letters")) {
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            *reasons
                .entry(format!(
                    "{}/{}",
                    v["stream"].as_str().unwrap(),
                    v["reason"].as_str().unwrap()
                ))
                .or_default() += 1;
            dead_lines.push(v);
        }
    }
    let want: BTreeMap<String, u32> = [
        ("clicks/invalid_json", 1),
        ("clicks/missing_field", 1),
        ("clicks/invalid_field", 1),
        ("clicks/invalid_utf8", 1),
        ("conversions/invalid_field", 2),
        ("conversions/missing_field", 1),
        ("conversions/invalid_json", 1),
        ("conversions/refused_status_change", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(reasons, want);
    let utf8 = dead_lines
        .iter()
        .find(|v| v["reason"] == "invalid_utf8")
        .unwrap();
    assert_eq!(utf8["line"], 10);
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(utf8["raw_base64"].as_str().unwrap())
        .unwrap();
    let original = std::fs::read(fixture("clicks.ndjson")).unwrap();
    assert_eq!(
        original.split(|b| *b == b'\n').nth(9).unwrap(),
        raw.as_slice()
    );
    let refused = dead_lines
        .iter()
        .find(|v| v["reason"] == "refused_status_change")
        .unwrap();
    assert_eq!(refused["line"], 6);
    assert!(refused["raw"].as_str().unwrap().contains("\"pending\""));

    // By click date: clicks in their own hour, the five attributed conversions in the hour of
    // their click (e5's click is outside the window, e8's unknown: not here).
    const H10: i64 = 1_793_527_200_000; // 2026-11-01T10:00Z
    let by_hour: BTreeMap<String, [i64; 10]> = table_sums(out, "stats_click_hour", &["click_hour"])
        .into_iter()
        .map(|(k, v)| ((k.parse::<i64>().unwrap() - H10) / 3_600_000, v))
        .fold(BTreeMap::new(), |mut m, (h, v)| {
            let e: &mut [i64; 10] = m.entry(h.to_string()).or_default();
            for (a, b) in e.iter_mut().zip(v) {
                *a += b;
            }
            m
        });
    // clicks, unique, duplicate clicks, conversions, approved, pending, rejected, revenue
    // (micros), duplicate conversions, unattributed
    let want: BTreeMap<String, [i64; 10]> = [
        ("-720", [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]), // c5, 30 days earlier
        ("0", [5, 4, 1, 5, 4, 1, 0, 45_500_000, 1, 0]),
        ("1", [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]), // c8
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(by_hour, want);

    duckdb_cross_check(out);
}

/// Reads the same files with DuckDB, the way README tells users to.
fn duckdb_cross_check(out: &std::path::Path) {
    if !duckdb_available("DuckDB cross-check") {
        return;
    }
    let script = format!(
        r#"
import duckdb
out = {out:?}
db = duckdb.connect()
s = db.execute(f"select sum(clicks), sum(unique_clicks), sum(duplicate_clicks), sum(conversions), sum(approved), sum(pending), sum(rejected), sum(revenue)::varchar, sum(duplicate_conversions), sum(unattributed) from read_parquet('{{out}}/stats_minute/**/*.parquet', hive_partitioning=true)").fetchone()
print("stats", *s)
c = db.execute(f"select count(*), count(distinct click_id), min(dt)::varchar, max(dt)::varchar from read_parquet('{{out}}/clicks/**/*.parquet', hive_partitioning=true)").fetchone()
print("clicks", *c)
v = db.execute(f"select status, count(*) from (select tenant_id, external_id, arg_max(status, version) status from read_parquet('{{out}}/conversions/**/*.parquet') group by all) group by all order by 1").fetchall()
print("current", *[f"{{s}}={{n}}" for s, n in v])
h = db.execute(f"select strftime(click_hour, '%Y-%m-%dT%H'), sum(clicks), sum(conversions), sum(approved), sum(revenue)::varchar from read_parquet('{{out}}/stats_click_hour/**/*.parquet') group by 1 order by 1").fetchall()
print("click_hour", *[f"{{a}}:{{b}}/{{c}}/{{d}}/{{e}}" for a, b, c, d, e in h])
"#,
        out = out.display().to_string()
    );
    let o = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            "stats 7 6 1 7 6 1 0 56.500000 1 2",
            "clicks 7 7 2026-10-02 2026-11-01",
            "current approved=6 pending=1",
            "click_hour 2026-10-02T10:1/0/0/0.000000 2026-11-01T10:5/5/4/45.500000 2026-11-01T11:1/0/0/0.000000",
        ]
    );
}

#[test]
fn the_click_hour_aggregate_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.toml");
    let out = dir.path().join("out");
    std::fs::write(
        &p,
        format!(
            "[source]\nkind = \"files\"\nclicks = {:?}\nconversions = {:?}\n[sink]\nstats_click_hour = false\n[sink.parquet]\nout = {:?}\n",
            fixture("clicks.ndjson").display().to_string(),
            fixture("conversions.ndjson").display().to_string(),
            out.display().to_string()
        ),
    )
    .unwrap();
    let summary =
        String::from_utf8(attribd(&["run", "-q", "-p", p.to_str().unwrap()]).stdout).unwrap();
    assert!(!out.join("stats_click_hour").exists());
    assert!(
        summary
            .lines()
            .any(|l| l.contains("stats_click_hour") && l.trim_end().ends_with(" 0")),
        "{summary}"
    );
    // Everything else as with it on.
    assert_eq!(
        stats_by_dims(&out).get("t1/o1/a1/US/USD").map(|v| v[7]),
        Some(10_500_000)
    );
}

#[test]
fn compressed_inputs_and_stdin_give_the_same_answer() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let clicks = std::fs::read(fixture("clicks.ndjson")).unwrap();
    let convs = std::fs::read(fixture("conversions.ndjson")).unwrap();
    let gz = dir.path().join("clicks.ndjson.gz");
    let mut enc =
        flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), Default::default());
    enc.write_all(&clicks).unwrap();
    enc.finish().unwrap();
    let zst = dir.path().join("conversions.ndjson.zst");
    std::fs::write(&zst, zstd::encode_all(convs.as_slice(), 3).unwrap()).unwrap();
    let out_plain = dir.path().join("plain");
    run_fixture(&out_plain);
    let out_packed = dir.path().join("packed");
    attribd(&[
        "run",
        "-q",
        "--clicks",
        gz.to_str().unwrap(),
        "--conversions",
        zst.to_str().unwrap(),
        "--out",
        out_packed.to_str().unwrap(),
    ]);
    assert_eq!(stats_by_dims(&out_packed), stats_by_dims(&out_plain));

    let out_stdin = dir.path().join("stdin");
    let mut child = common::attribd_cmd()
        .args([
            "run",
            "-q",
            "--clicks",
            "-",
            "--conversions",
            zst.to_str().unwrap(),
            "--out",
            out_stdin.to_str().unwrap(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&clicks).unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    assert_eq!(stats_by_dims(&out_stdin), stats_by_dims(&out_plain));
}

#[test]
fn generator_pipeline_and_gen_files_agree() {
    // `source = "generator"` and `attribd gen` + file input produce the same results.
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("gen.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[source]\nkind = \"generator\"\n[source.generator]\nclicks = 100000\nseed = 7\n[sink.parquet]\nout = {:?}\n",
            dir.path().join("direct").display().to_string()
        ),
    )
    .unwrap();
    let direct = attribd(&["run", "-q", "-p", pipeline.to_str().unwrap()]);
    let input = dir.path().join("input");
    attribd(&[
        "gen",
        "-p",
        pipeline.to_str().unwrap(),
        "--out",
        input.to_str().unwrap(),
        "--compress",
        "zst",
    ]);
    let via_files = dir.path().join("files");
    // The same pipeline (not the repository's default, which turns on [money] and [fraud]),
    // its generator replaced by the files.
    let files = attribd(&[
        "run",
        "-q",
        "-p",
        pipeline.to_str().unwrap(),
        "--clicks",
        input.join("clicks.ndjson.zst").to_str().unwrap(),
        "--conversions",
        input.join("conversions.ndjson.zst").to_str().unwrap(),
        "--out",
        via_files.to_str().unwrap(),
    ]);
    assert_eq!(
        stats_by_dims(&dir.path().join("direct")),
        stats_by_dims(&via_files)
    );
    // The summaries agree on every count (timings aside, and the number of aggregate delta
    // rows, which depends on how the input was cut into batches: their sums agree above).
    let counts = |o: &std::process::Output| -> Vec<String> {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| {
                ![
                    "elapsed",
                    "events/second",
                    "parquet files",
                    "finished",
                    "stats_minute",
                    "stats_click_hour",
                ]
                .iter()
                .any(|skip| l.contains(skip))
            })
            .map(str::to_string)
            .collect()
    };
    assert_eq!(counts(&direct), counts(&files));
    // Every accepted click is a Parquet row, exactly.
    let accepted: usize = String::from_utf8_lossy(&files.stdout)
        .lines()
        .find(|l| l.trim_start().starts_with("clicks accepted"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .expect("summary has clicks accepted");
    let clicks = rows(&read_table(&via_files, "clicks")).len();
    assert_eq!(clicks, accepted);
    assert!(clicks > 99_000 && clicks <= 100_000, "{clicks}");
}

#[test]
fn check_reports_file_key_and_problem_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[source]\nkind = \"generator\"\n[source.generator]\nconversion_rate = 2.0\n[sink.parquet]\nzstd_level = 99\n",
    )
    .unwrap();
    let o = common::attribd_cmd()
        .args(["check", "-p", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    let file = bad.display().to_string();
    assert!(
        err.contains(&format!(
            "{file}: key `source.generator.conversion_rate`: must be between 0 and 1, got 2"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{file}: key `sink.parquet.zstd_level`: must be 1..=22, got 99"
        )),
        "{err}"
    );
    let ok = attribd(&[
        "check",
        "-p",
        fixture("../../pipelines/default.toml").to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ok"));
    // `run` refuses a bad pipeline the same way.
    let o = common::attribd_cmd()
        .args(["run", "-p", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn json_schemas_match_the_decoder() {
    use attribd::event::DeadReason;
    use attribd::event::decode::{DecodeLimits, Decoder};
    use attribd::source::RawBatch;
    let d = Decoder::new("schema".into(), DecodeLimits::default());
    let good_click = r#"{"click_id":"c","ts":1793527200000,"offer_id":"o","affiliate_id":"a","tenant_id":"t","country":"US","device":"d","os":"o","ip":"i","user_agent":"u","referrer":"r","sub1":"1","sub2":"2","sub3":"3","sub4":"4","sub5":"5"}"#;
    let good_conv = r#"{"click_id":"c","external_id":"e","amount":1,"status":"approved","currency":"EUR","ts":1793527200000,"tenant_id":"t","product_id":"p","order_id":"o","customer_id":"c","metadata":{}}"#;
    for (file, line, is_click) in [
        ("click.schema.json", good_click, true),
        ("conversion.schema.json", good_conv, false),
    ] {
        let path = fixture("../../schemas").join(file);
        let schema: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let decode = |v: &serde_json::Value| -> Option<DeadReason> {
            let mut b = RawBatch::default();
            b.push_line(v.to_string().as_bytes(), Default::default());
            let dead = if is_click {
                d.decode_clicks(&b).1
            } else {
                d.decode_conversions(&b).1
            };
            dead.first().map(|x| x.reason)
        };
        let full: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(decode(&full), None, "{file}: the full record decodes");
        // The schema documents exactly the fields the decoder reads…
        let mut props: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
        let mut fields: Vec<&String> = full.as_object().unwrap().keys().collect();
        props.sort();
        fields.sort();
        assert_eq!(props, fields, "{file}");
        // …and a field is required in the schema exactly when the decoder refuses its absence.
        let required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        for field in fields {
            let mut v = full.clone();
            v.as_object_mut().unwrap().remove(field.as_str());
            let refused = decode(&v) == Some(DeadReason::MissingField);
            assert_eq!(
                refused,
                required.contains(&field.as_str()),
                "{file}: {field}"
            );
        }
    }
}

/// stdin cannot be re-read, so a rerun takes what stdin brings now as what follows the
/// checkpoint: its lines are numbered on from there, and dead letters of two runs never share
/// a position.
#[test]
fn stdin_lines_are_numbered_on_after_a_restart() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let run = |clicks: &[u8]| {
        let mut child = common::attribd_cmd()
            .args(["run", "-q", "--clicks", "-", "--out", out.to_str().unwrap()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(clicks).unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let click = |id: &str| {
        format!(
            "{{\"click_id\":\"{id}\",\"ts\":\"2026-11-01T00:00:00Z\",\"tenant_id\":\"t\",\"offer_id\":\"o\",\"affiliate_id\":\"a\",\"country\":\"US\",\"ip\":\"10.0.0.1\"}}\n"
        )
    };
    let first = format!("not json\n{}{}", click("c1"), click("c2"));
    run(first.as_bytes());
    let second = format!("{}also not json\n", click("c3"));
    run(second.as_bytes());
    let mut positions: Vec<(u64, u64)> = files_under(&out.join("dead_letters"))
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    (v["line"].as_u64().unwrap(), v["offset"].as_u64().unwrap())
                })
                .collect::<Vec<_>>()
        })
        .collect();
    positions.sort();
    let line5_offset = (first.len() + click("c3").len()) as u64;
    assert_eq!(positions, [(1, 0), (5, line5_offset)]);
}

/// A run resumed from a finished checkpoint with nothing new to read says so, instead of
/// dividing the counters it carries on (the first run's events) by its own short time.
#[test]
fn a_resumed_run_with_nothing_to_read_reports_no_rate() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let first = run_fixture(&out);
    assert!(
        !first.contains("nothing read"),
        "the first run reads the fixture: {first}"
    );
    let again = run_fixture(&out);
    let line = again
        .lines()
        .find(|l| l.contains("events/second"))
        .unwrap_or_default();
    assert!(line.contains("– (nothing read)"), "{again}");
}
