//! Helpers shared by the integration tests: run the binary, read Parquet output back.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
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

/// The repository default's report sections (`[money]`, `[payouts]`, `[fraud]`, the end of
/// `pipelines/default.toml`): a test pipeline whose run is compared with a run on the default
/// (no `-p`) carries them too, so both do the same job.
pub fn default_report_sections() -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/default.toml"),
    )
    .expect("pipelines/default.toml");
    let start = text.find("\n[money]").expect("default.toml has [money]");
    text[start..].to_string()
}

/// `attribd run -q -p pipeline --out out`, then `extra` arguments.
pub fn run_pipeline(pipeline: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        "-q",
        "-p",
        pipeline.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    attribd(&args)
}

/// [`run_pipeline`], and the run's counters from its `--summary-json` (written beside `out`).
pub fn run_pipeline_counters(pipeline: &Path, out: &Path) -> serde_json::Value {
    let summary_json = out.with_extension("summary.json");
    run_pipeline(
        pipeline,
        out,
        &["--summary-json", summary_json.to_str().unwrap()],
    );
    let text = std::fs::read_to_string(&summary_json).expect("the run's summary");
    let s: serde_json::Value = serde_json::from_str(&text).expect("summary JSON");
    s["report"]["counters"].clone()
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
                } else if let Some(a) = col.as_list_opt::<i32>() {
                    // A list of strings as `a,b` (`fraud_flags`).
                    let items = a.value(i);
                    let s = items.as_string::<i32>();
                    Some(
                        (0..s.len())
                            .map(|j| s.value(j))
                            .collect::<Vec<_>>()
                            .join(","),
                    )
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
    table_sums(out, "stats_minute", key)
}

/// [`stats_sums`] of an aggregate table (`stats_minute` or `stats_click_hour`): the first ten
/// measures (counts and revenue in the original currency; the reporting-currency measures are
/// in [`table_sums_all`]).
pub fn table_sums(out: &Path, table: &str, key: &[&str]) -> BTreeMap<String, [i64; 10]> {
    table_sums_all(out, table, key)
        .into_iter()
        .filter_map(|(k, v)| {
            let base: [i64; 10] = std::array::from_fn(|i| v[i]);
            base.iter().any(|x| *x != 0).then_some((k, base))
        })
        .collect()
}

/// `sum()` of every measure (`MEASURES` order) of an aggregate table per key; buckets whose
/// sums are all zero are left out.
pub fn table_sums_all(out: &Path, table: &str, key: &[&str]) -> BTreeMap<String, Vec<i64>> {
    let measures = attribd::sink::parquet::schema::MEASURES;
    let mut sums: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in rows(&read_table(out, table)) {
        let k = key.iter().map(|c| get(&r, c)).collect::<Vec<_>>().join("/");
        let s = sums.entry(k).or_insert_with(|| vec![0; measures.len()]);
        for (i, m) in measures.iter().enumerate() {
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
    BTreeMap<String, Vec<i64>>,
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
                "amount_reporting",
                "payout",
            ]
            .map(|c| get(r, c).to_string())
            .join("/")
        })
        .collect();
    convs.sort();
    let mut key = vec!["minute"];
    key.extend(DIMS);
    let stats = table_sums_all(out, "stats_minute", &key);
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

/// A pipeline reading HTTP on `addr` into `out`; `extra` goes under `[source.http]`.
pub fn http_pipeline(dir: &Path, out: &Path, addr: &str, extra: &str) -> PathBuf {
    let p = dir.join(format!(
        "http-{}.toml",
        out.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(
        &p,
        format!(
            "[source]\nkind = \"http\"\n[source.http]\nlisten = \"{addr}\"\n{extra}\n\
             [sink.parquet]\nout = \"{}\"\n[checkpoint]\nevery = \"1s\"\n",
            out.display()
        ),
    )
    .unwrap();
    p
}

/// A scratch directory, a free loopback address for the door, the output directory under the
/// scratch directory, and an HTTP pipeline of them with `extra` under `[source.http]`.
pub fn door_on_a_free_port(extra: &str) -> (tempfile::TempDir, String, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let out = dir.path().join("out");
    let p = http_pipeline(dir.path(), &out, &addr, extra);
    (dir, addr, out, p)
}

/// A run of `pipeline`: the child, and its metrics endpoint.
pub struct Running {
    pub child: Option<Child>,
    pub metrics: String,
}

impl Drop for Running {
    /// A failed test leaves no server behind.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn start(pipeline: &Path, addr: &str) -> Running {
    // Not the door's port (a free port asked for twice can come back twice).
    let metrics = loop {
        let m = format!("127.0.0.1:{}", free_port());
        if m != addr {
            break m;
        }
    };
    let child = attribd_cmd()
        .args(["run", "-q", "-p", pipeline.to_str().unwrap()])
        .env("ATTRIBD_LOG", "warn")
        .env("ATTRIBD_METRICS_ADDR", &metrics)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    wait_for_door(addr);
    Running {
        child: Some(child),
        metrics,
    }
}

/// Waits (at most a minute) until the door at `addr` answers.
pub fn wait_for_door(addr: &str) {
    let t = Instant::now();
    while request(addr, "GET", "/health", &[], b"").is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the door never opened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM, then the run's summary.
pub fn stop(child: Child) -> String {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "attribd failed after SIGTERM");
    String::from_utf8_lossy(&out.stdout).to_string()
}

// ---- subject requests (tests/lifecycle.rs, tests/clickhouse.rs) ----

/// Clicks and postbacks whose answers are known: customer `cust-1` of tenant `t1` has
/// conversions A (two versions, the second without customer_id), B (another hour) and E
/// (unattributed); `cust-2` has C; `cust-1` of tenant `t2` has D.
pub const SUBJECT_CLICKS: &str = r#"{"click_id":"k1","ts":"2026-11-01T10:00:00Z","tenant_id":"t1","offer_id":"o1","affiliate_id":"a1","country":"US","ip":"10.0.0.1","user_agent":"UA-1","referrer":"https://r.example/1","sub1":"alice"}
{"click_id":"k2","ts":"2026-11-01T11:00:00Z","tenant_id":"t1","offer_id":"o1","affiliate_id":"a1","country":"US","ip":"10.0.0.2","sub1":"s2"}
{"click_id":"k3","ts":"2026-11-01T10:30:00Z","tenant_id":"t1","offer_id":"o1","affiliate_id":"a2","country":"DE","ip":"10.0.0.3","sub1":"bob"}
{"click_id":"k4","ts":"2026-11-01T10:40:00Z","tenant_id":"t2","offer_id":"o1","affiliate_id":"a1","country":"US","ip":"10.0.0.4","sub1":"carol"}
{"click_id":"k5","ts":"2026-11-01T10:50:00Z","tenant_id":"t1","offer_id":"o2","affiliate_id":"a1","country":"US","ip":"10.0.0.5"}
"#;

pub const SUBJECT_POSTBACKS: &str = r#"{"click_id":"k1","external_id":"A","tenant_id":"t1","amount":"10","status":"pending","ts":"2026-11-01T10:05:00Z","order_id":"o-A","customer_id":"cust-1","metadata":{"email":"a@example.com"}}
{"click_id":"k1","external_id":"A","tenant_id":"t1","amount":"10","status":"approved","ts":"2026-11-01T10:06:00Z"}
{"click_id":"k2","external_id":"B","tenant_id":"t1","amount":"20","status":"approved","ts":"2026-11-01T11:10:00Z","customer_id":"cust-1"}
{"click_id":"k3","external_id":"C","tenant_id":"t1","amount":"30","status":"approved","ts":"2026-11-01T10:35:00Z","customer_id":"cust-2"}
{"click_id":"k4","external_id":"D","tenant_id":"t2","amount":"40","status":"approved","ts":"2026-11-01T10:45:00Z","customer_id":"cust-1"}
{"click_id":"zz","external_id":"E","tenant_id":"t1","amount":"50","status":"approved","ts":"2026-11-01T11:20:00Z","customer_id":"cust-1"}
"#;

pub fn write_subject_input(dir: &Path) {
    std::fs::write(dir.join("clicks.ndjson"), SUBJECT_CLICKS).unwrap();
    std::fs::write(dir.join("conversions.ndjson"), SUBJECT_POSTBACKS).unwrap();
}

/// `(external_id, version)` of every conversion row, sorted.
pub fn conversion_versions(out: &Path) -> Vec<String> {
    let mut v: Vec<String> = rows(&read_table(out, "conversions"))
        .iter()
        .map(|r| {
            format!(
                "{}/{}v{}",
                get(r, "tenant_id"),
                get(r, "external_id"),
                get(r, "version")
            )
        })
        .collect();
    v.sort();
    v
}

/// Whether Python's `duckdb` module (the independent Parquet reader) is there; without it the
/// caller skips with a notice — a failure under `CI=true`.
pub fn duckdb_available(what: &str) -> bool {
    let probe = Command::new("python3")
        .args(["-c", "import duckdb"])
        .output();
    if probe.is_ok_and(|o| o.status.success()) {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but the Python duckdb module is missing (pip install duckdb)"
    );
    eprintln!("SKIPPED {what}: python3 module `duckdb` not installed");
    false
}

/// A pipeline over the fixture with `[money]` and `[payouts]`.
pub fn money_pipeline(dir: &Path, extra: &str) -> PathBuf {
    let p = dir.join("money.toml");
    std::fs::write(
        &p,
        format!(
            r#"[source]
kind = "files"
clicks = {clicks:?}
conversions = {convs:?}

[money]
reporting_currency = "USD"
fx_rates = {fx:?}

[payouts]
file = {payouts:?}
{extra}
"#,
            clicks = fixture("clicks.ndjson"),
            convs = fixture("conversions.ndjson"),
            fx = fixture("fx.csv"),
            payouts = fixture("payouts.toml"),
        ),
    )
    .unwrap();
    p
}

/// Runs a Python script (DuckDB cross-checks) and returns its output lines; fails the test with
/// its stderr when it fails.
pub fn python_lines(script: &str) -> Vec<String> {
    let o = Command::new("python3")
        .args(["-c", script])
        .output()
        .expect("python3 runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}
