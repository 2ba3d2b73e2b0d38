//! `attribd bench` on a small input: the report holds real measurements of a run whose event
//! count is known, the plots and Markdown are written, and `--from` recomputes the capacity
//! table for other assumptions without measuring again.

mod common;

use common::*;

#[test]
fn bench_measures_a_known_input_and_plans_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let report_dir = dir.path().join("report");
    // The bench generates its input with the generator defaults; the same input written by
    // `attribd gen` tells how many events the end-to-end runs must have read.
    let input = dir.path().join("input");
    attribd(&["gen", "--clicks", "20000", "--out", input.to_str().unwrap()]);
    let lines = |f: &str| {
        // Bytes, not text: the generator writes some invalid UTF-8 on purpose.
        std::fs::read(input.join(f))
            .unwrap()
            .split(|b| *b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .count() as u64
    };
    let events = lines("clicks.ndjson") + lines("conversions.ndjson");

    let mut args = vec![
        "bench",
        "--clicks",
        "20000",
        "--repeat",
        "1",
        "--keys",
        "200000",
        "--checkpoint-clicks",
        "100000",
        "--report-dir",
        report_dir.to_str().unwrap(),
    ];
    let url = std::env::var("ATTRIBD_CLICKHOUSE_URL").ok();
    if let Some(u) = &url {
        args.extend(["--clickhouse-url", u.as_str()]);
    }
    let out = attribd(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("# attribd bench report"), "{stdout}");

    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report_dir.join("report.json")).unwrap())
            .unwrap();
    let cores = std::thread::available_parallelism().unwrap().get() as u64;
    assert_eq!(r["cores"], cores);
    let e2e = r["end_to_end"].as_array().unwrap();
    assert_eq!(e2e.len() as u64, cores, "one run per core count");
    for (i, e) in e2e.iter().enumerate() {
        assert_eq!(e["cores"], i as u64 + 1);
        assert_eq!(e["events"], events, "every generated event read");
        assert!(e["events_per_second"].as_f64().unwrap() > 0.0);
    }
    if url.is_some() {
        assert_eq!(r["end_to_end_clickhouse"]["events"], events);
        assert!(r["clickhouse_bytes_per_stats_row"].as_f64().unwrap() > 0.0);
    }
    for k in [
        "parquet_bytes_per_click",
        "parquet_bytes_per_conversion",
        "parquet_bytes_per_stats_row",
    ] {
        assert!(r["outputs"][k].as_f64().unwrap() > 0.0, "{k}");
    }
    for k in ["decode_clicks", "decode_conversions", "state", "parquet"] {
        assert!(r["stages"][k].as_f64().unwrap() > 0.0, "{k}");
    }
    assert_eq!(r["memory"]["click_index"].as_array().unwrap().len(), 8);
    assert!(r["memory"]["bytes_per_click"].as_f64().unwrap() > 8.0);
    assert_eq!(r["checkpoint"]["clicks"], 100_000);
    assert!(r["checkpoint"]["bytes"].as_u64().unwrap() > 100_000 * 8);
    let capacity = r["capacity"].as_array().unwrap();
    let tiers: Vec<f64> = capacity
        .iter()
        .map(|c| c["clicks_per_day"].as_f64().unwrap())
        .collect();
    assert_eq!(tiers, [1e4, 1e5, 1e6, 1e7, 1e8, 1e9]);
    for f in ["throughput-vs-cores.svg", "memory-vs-keys.svg"] {
        let svg = std::fs::read_to_string(report_dir.join(f)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<polyline"), "{f}");
    }
    let md = std::fs::read_to_string(report_dir.join("report.md")).unwrap();
    assert!(md.contains("| 1.0 G |"), "{md}");

    // Twice the conversion rate, same measurements: more conversion rows per day, nothing
    // measured again.
    let again = dir.path().join("again");
    attribd(&[
        "bench",
        "--from",
        report_dir.join("report.json").to_str().unwrap(),
        "--conversion-rate",
        "0.04",
        "--report-dir",
        again.to_str().unwrap(),
    ]);
    let r2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(again.join("report.json")).unwrap()).unwrap();
    assert_eq!(r2["end_to_end"], r["end_to_end"]);
    assert_eq!(r2["assumptions"]["conversion_rate"], 0.04);
    let rows = |r: &serde_json::Value| {
        r["capacity"][5]["clickhouse_rows_per_day"]
            .as_f64()
            .unwrap()
    };
    let stats = r["outputs"]["stats_rows_per_click"].as_f64().unwrap() * 1e9;
    // Conversion rows/day = clicks × rate × (1 + 0.1 status changes); duplicates write nothing.
    assert!((rows(&r) - stats - 1e9 * 0.02 * 1.1).abs() < 1.0);
    assert!((rows(&r2) - stats - 1e9 * 0.04 * 1.1).abs() < 1.0);
}
