//! Helpers shared by the integration tests: run the binary, read Parquet output back.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Decimal128Type, Int64Type, TimestampMillisecondType, UInt32Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The `attribd` binary, its metrics endpoint on a free port (tests run many at once).
pub fn attribd_cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_attribd"));
    c.env("ATTRIBD_METRICS_ADDR", "127.0.0.1:0");
    c
}

/// Runs `attribd` with `args`; panics with its output when it fails.
pub fn attribd(args: &[&str]) -> Output {
    let out = attribd_cmd()
        .args(args)
        .env("ATTRIBD_LOG", "warn")
        .output()
        .expect("attribd runs");
    assert!(
        out.status.success(),
        "attribd {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A TCP port free at the moment of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 exchange: (status, body). `None` when the server is not there.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, String)> {
    request_with_head(addr, method, path, headers, body).map(|(status, _, body)| (status, body))
}

/// [`request`], with the response's head (status line and headers) too.
pub fn request_with_head(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, String, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((status, head.to_string(), body.to_string()))
}

/// The value of the series `name` (e.g. `attribd_events_in_total{stream="clicks"}`) on the
/// metrics endpoint at `addr`; 0 when the endpoint or the series is not there yet.
pub fn metric(addr: &str, name: &str) -> u64 {
    let page = request(addr, "GET", "/metrics", &[], b"")
        .map(|r| r.1)
        .unwrap_or_default();
    let prefix = format!("{name} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Records the state stage has taken from both streams so far (valid or not).
pub fn events_in(metrics_addr: &str) -> u64 {
    metric(metrics_addr, "attribd_events_in_total{stream=\"clicks\"}")
        + metric(
            metrics_addr,
            "attribd_events_in_total{stream=\"conversions\"}",
        )
}

/// A metrics address on a free port, for a child whose progress a test follows.
pub fn metrics_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// Waits until `child` (serving metrics at `metrics_addr`) has taken at least `events`
/// records, polling every 10 ms, at most `limit`. `false` when it exited first or the limit
/// passed — the caller decides whether that is a failure.
pub fn wait_for_events(
    child: &mut Child,
    metrics_addr: &str,
    events: u64,
    limit: Duration,
) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        if events_in(metrics_addr) >= events {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Every file below `dir` (recursively).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// All record batches of a table (`OUT/<table>/**/*.parquet`).
pub fn read_table(out: &Path, table: &str) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    for path in files_under(&out.join(table)) {
        if path.extension().and_then(|e| e.to_str()) != Some("parquet") {
            continue;
        }
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            batches.push(b.unwrap());
        }
    }
    batches
}

/// One row as column name → display string (numbers, decimals and timestamps as integers).
pub type Row = BTreeMap<String, Option<String>>;

pub fn rows(batches: &[RecordBatch]) -> Vec<Row> {
    let mut out = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            let mut row = Row::new();
            for (f, col) in b.schema().fields().iter().zip(b.columns()) {
                let v = if col.is_null(i) {
                    None
                } else if let Some(a) = col.as_string_opt::<i32>() {
                    Some(a.value(i).to_string())
                } else if let Some(a) = col.as_primitive_opt::<Int64Type>() {
                    Some(a.value(i).to_string())
                } else if let Some(a) = col.as_primitive_opt::<UInt32Type>() {
                    Some(a.value(i).to_string())
                } else if let Some(a) = col.as_primitive_opt::<Decimal128Type>() {
                    Some(a.value(i).to_string())
                } else if let Some(a) = col.as_primitive_opt::<TimestampMillisecondType>() {
                    Some(a.value(i).to_string())
                } else if let Some(a) = col.as_boolean_opt() {
                    Some(a.value(i).to_string())
                } else {
                    panic!("unexpected column type {:?}", f.data_type())
                };
                row.insert(f.name().clone(), v);
            }
            out.push(row);
        }
    }
    out
}

pub fn get<'a>(row: &'a Row, col: &str) -> &'a str {
    row.get(col)
        .unwrap_or_else(|| panic!("no column {col}"))
        .as_deref()
        .unwrap_or("")
}

pub fn int(row: &Row, col: &str) -> i64 {
    get(row, col)
        .parse()
        .unwrap_or_else(|_| panic!("{col} is not an integer"))
}

/// The dimensions of an aggregate bucket, without the minute.
pub const DIMS: [&str; 5] = [
    "tenant_id",
    "offer_id",
    "affiliate_id",
    "country",
    "currency",
];

/// `sum()` of every measure of `OUT/stats_minute` per key (the `key` columns joined by `/`),
/// measures in `MEASURES` order; buckets whose sums are all zero are left out.
pub fn stats_sums(out: &Path, key: &[&str]) -> BTreeMap<String, [i64; 10]> {
    let mut sums: BTreeMap<String, [i64; 10]> = BTreeMap::new();
    for r in rows(&read_table(out, "stats_minute")) {
        let k = key.iter().map(|c| get(&r, c)).collect::<Vec<_>>().join("/");
        let s = sums.entry(k).or_default();
        for (i, m) in attribd::sink::parquet::schema::MEASURES.iter().enumerate() {
            s[i] += int(&r, m);
        }
    }
    sums.retain(|_, v| v.iter().any(|x| *x != 0));
    sums
}

/// Writes generated NDJSON into `dir/input` with `attribd gen`, the generator configured by
/// `knobs` (lines of `[source.generator]`, e.g. `"clicks = 3000\nseed = 11"`); returns the
/// directory holding `clicks.ndjson` and `conversions.ndjson`.
pub fn generate_input(dir: &Path, knobs: &str) -> PathBuf {
    let pipeline = dir.join("gen.toml");
    std::fs::write(
        &pipeline,
        format!("[source]\nkind = \"generator\"\n[source.generator]\n{knobs}\n"),
    )
    .expect("writing the generator pipeline");
    let input = dir.join("input");
    attribd(&[
        "gen",
        "-p",
        pipeline.to_str().expect("utf-8 path"),
        "--out",
        input.to_str().expect("utf-8 path"),
    ]);
    input
}

/// Click rows, conversion rows, aggregate sums per bucket, dead letters per position.
pub type Outputs = (
    Vec<String>,
    Vec<String>,
    BTreeMap<String, [i64; 10]>,
    BTreeMap<String, u64>,
);

/// Everything a run wrote, in a comparable form.
pub fn outputs(out: &Path) -> Outputs {
    let mut clicks: Vec<String> = rows(&read_table(out, "clicks"))
        .iter()
        .map(|r| format!("{}/{}", get(r, "click_id"), get(r, "is_unique")))
        .collect();
    clicks.sort();
    let mut convs: Vec<String> = rows(&read_table(out, "conversions"))
        .iter()
        .map(|r| {
            [
                "tenant_id",
                "external_id",
                "version",
                "status",
                "amount",
                "attributed",
                "offer_id",
                "click_ts",
            ]
            .map(|c| get(r, c).to_string())
            .join("/")
        })
        .collect();
    convs.sort();
    let mut key = vec!["minute"];
    key.extend(DIMS);
    let stats = stats_sums(out, &key);
    let mut dead: BTreeMap<String, u64> = BTreeMap::new();
    for f in files_under(&out.join("dead_letters")) {
        if f.extension().is_some_and(|e| e == "ndjson") {
            for line in std::fs::read_to_string(&f).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                *dead
                    .entry(format!("{}/{}/{}", v["stream"], v["line"], v["reason"]))
                    .or_default() += 1;
            }
        }
    }
    (clicks, convs, stats, dead)
}

pub fn clickhouse_sums(url: &str, db: &str) -> Vec<String> {
    let sql = format!(
        "SELECT sum(clicks), sum(unique_clicks), sum(duplicate_clicks), sum(conversions), sum(approved), \
         sum(pending), sum(rejected), sum(revenue), sum(duplicate_conversions), sum(unattributed), \
         (SELECT count() FROM {db}.conversions FINAL), \
         (SELECT sum(cityHash64(tenant_id, external_id, version, status, toString(amount), attributed, offer_id)) FROM {db}.conversions FINAL) FROM {db}.attribution_stats_minute FORMAT TSV"
    );
    let o = Command::new("curl")
        .args(["-sS", url, "--data-binary", &sql])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}
