//! Load test of the HTTP door: `attribd run` with `kind = "http"` (write-ahead log, `fsync`
//! per group) under postback URLs at a steady rate, then at an overload.
//!
//! ```text
//! cargo bench --bench http_load                              # 5 000/s for 30 s, then 10× for 15 s
//! cargo bench --bench http_load -- --rate 2000 --seconds 10  # any rate; --help for the rest
//! ```
//!
//! 1. Starts the release `attribd run` on a pipeline of its own (door and metrics on free
//!    loopback ports, output in a temporary directory), and POSTs the clicks the postbacks
//!    will name (NDJSON, 5 000 per request), so the run attributes them.
//! 2. Open loop: request *i* of a phase is due at `start + i / rate`, whatever happened to the
//!    others; `--connections` keep-alive connections (opened before the phase: the senders'
//!    pools are warm) take the requests in order. A request's
//!    latency runs from when it was due to its answer, so time spent waiting for a free
//!    connection counts (no coordinated omission). Each `GET /v1/postback` carries a distinct
//!    `external_id`.
//! 3. Per phase: answers per status code, achieved requests/s, p50/p90/p99/max of the 202s,
//!    the largest RSS of attribd while it ran (sampled every 100 ms), and attribd's own
//!    arrival → answer latency from its `attribd_http_request_duration_seconds` histogram
//!    (bucket bounds: an upper bound of the quantile) — the door's share, without the time a
//!    request waited in the sender for a free connection.
//! 4. SIGTERM (the door drains: what it answered 202 is processed before the final
//!    checkpoint), then checks the run's summary: conversion records == postbacks answered
//!    202, nothing accepted lost and nothing counted twice.
//!
//! Results are printed and written to `target/http-load/report.json`.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::json;

#[derive(Parser, Debug, Clone)]
#[command(about = "Load test of attribd's HTTP door (postback URLs)")]
struct Args {
    /// Postbacks per second in the steady phase.
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    /// Length of the steady phase, seconds.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Overload phase: this many times the steady rate (0: no overload phase).
    #[arg(long, default_value_t = 10.0)]
    overload: f64,
    /// Length of the overload phase, seconds.
    #[arg(long, default_value_t = 15.0)]
    overload_seconds: f64,
    /// Keep-alive connections (the senders' concurrency).
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// `queue_requests` of the door (per stream; a full queue is a 503).
    #[arg(long, default_value_t = 4096)]
    queue_requests: usize,
    /// Where report.json goes.
    #[arg(long, default_value = "target/http-load")]
    out: std::path::PathBuf,
    // `cargo bench` passes --bench.
    #[arg(long, hide = true)]
    bench: bool,
    /// attribd's metrics address (set by the bench itself).
    #[arg(skip)]
    metrics: String,
}

/// What one phase measured.
struct Phase {
    name: &'static str,
    rate: f64,
    sent: u64,
    seconds: f64,
    codes: std::collections::BTreeMap<u16, u64>,
    failed: u64,
    latency_ok: Histogram<u64>,
    latency_all: Histogram<u64>,
    max_rss: u64,
    /// attribd's own view: arrival to answer, from its histogram.
    server: Buckets,
}

/// The postback route's `attribd_http_request_duration_seconds` buckets: (upper bound in
/// seconds, cumulative count).
#[derive(Default, Clone)]
struct Buckets(Vec<(f64, u64)>);

impl Buckets {
    fn since(&self, before: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|&(le, n)| {
                    let was = before.0.iter().find(|b| b.0 == le).map_or(0, |b| b.1);
                    (le, n.saturating_sub(was))
                })
                .collect(),
        )
    }

    /// The bucket bound below which `q` of the requests were answered (an upper bound).
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.0.last()?.1;
        if total == 0 {
            return None;
        }
        let want = (q * total as f64).ceil() as u64;
        self.0.iter().find(|b| b.1 >= want).map(|b| b.0 * 1000.0)
    }
}

/// Scrapes attribd's /metrics for the postback route's latency buckets.
async fn server_latency(metrics: &str) -> Buckets {
    let mut c = Conn::new(metrics);
    let Ok(req) = hyper::Request::get("/metrics")
        .header("host", metrics)
        .body(Full::new(Bytes::new()))
    else {
        return Buckets::default();
    };
    let page = match c.connect().await {
        Ok(()) => match c.send.as_mut() {
            Some(send) => match send.send_request(req).await {
                Ok(resp) => resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| String::from_utf8_lossy(&b.to_bytes()).to_string())
                    .unwrap_or_default(),
                Err(_) => String::new(),
            },
            None => String::new(),
        },
        Err(_) => String::new(),
    };
    let mut out = Vec::new();
    for line in page.lines() {
        let Some(rest) = line.strip_prefix("attribd_http_request_duration_seconds_bucket{") else {
            continue;
        };
        if !rest.contains("route=\"postback\"") {
            continue;
        }
        let le = rest
            .split("le=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .map(|s| {
                if s == "+Inf" {
                    f64::INFINITY
                } else {
                    s.parse().unwrap_or(f64::NAN)
                }
            });
        let n = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let (Some(le), Some(n)) = (le, n) {
            out.push((le, n as u64));
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    Buckets(out)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dir = tempfile::tempdir()?;
    let door = format!("127.0.0.1:{}", free_port()?);
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let out = dir.path().join("out");
    let pipeline = dir.path().join("http-load.toml");
    std::fs::write(
        &pipeline,
        format!(
            "name = \"http-load\"\n[source]\nkind = \"http\"\n[source.http]\nlisten = \"{door}\"\n\
             queue_requests = {}\nrate_per_key = 1000000\nburst_per_key = 1000000\n\
             [sink.parquet]\nout = \"{}\"\n[checkpoint]\nevery = \"30s\"\n[metrics]\naddr = \"{metrics}\"\n",
            args.queue_requests,
            out.display()
        ),
    )?;
    let summary = dir.path().join("summary.json");
    let args = Args {
        metrics: metrics.clone(),
        ..args
    };
    let child = Command::new(env!("CARGO_BIN_EXE_attribd"))
        .args(["run", "-q", "-p"])
        .arg(&pipeline)
        .arg("--summary-json")
        .arg(&summary)
        .env("ATTRIBD_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let mut child = KillOnDrop(Some(child));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.max(2))
        .enable_all()
        .build()?;
    let phases: Vec<(&'static str, f64, f64)> = [
        ("steady", args.rate, args.seconds),
        ("overload", args.rate * args.overload, args.overload_seconds),
    ]
    .into_iter()
    .filter(|p| p.1 > 0.0 && p.2 > 0.0)
    .collect();
    let total: u64 = phases.iter().map(|p| (p.1 * p.2).ceil() as u64).sum();
    let results = rt.block_on(async {
        wait_for(&door).await?;
        eprintln!("http_load: attribd ready on {door}; sending {total} clicks first");
        post_clicks(&door, total).await?;
        let mut results = Vec::new();
        let mut first = 0u64;
        for (name, rate, seconds) in &phases {
            eprintln!("http_load: {name}: {rate:.0} postbacks/s for {seconds} s");
            let phase = run_phase(&door, name, *rate, *seconds, first, &args, pid).await?;
            first += phase.sent;
            print_phase(&phase);
            results.push(phase);
        }
        anyhow::Ok(results)
    })?;

    // Stop (the door drains) and compare what was answered 202 with what was processed.
    let child = child.0.take().expect("running");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait_with_output()?.status;
    anyhow::ensure!(status.success(), "attribd exited with {status}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary)?)?;
    let counters = &report["report"]["counters"];
    let processed = counters["conversion_records"].as_u64().unwrap_or(0);
    let accepted: u64 = results
        .iter()
        .map(|p| p.codes.get(&202).copied().unwrap_or(0))
        .sum();
    let exact = processed == accepted;
    println!(
        "\npostbacks answered 202: {accepted}; conversion records processed: {processed} ({}); \
         attributed {}, {} cores",
        if exact {
            "equal: nothing accepted lost or counted twice"
        } else {
            "DIFFERENT"
        },
        counters["attributed"],
        cores
    );
    std::fs::create_dir_all(&args.out)?;
    let json = json!({
        "cores": cores,
        "connections": args.connections,
        "queue_requests": args.queue_requests,
        "phases": results.iter().map(phase_json).collect::<Vec<_>>(),
        "accepted": accepted,
        "processed": processed,
        "exact": exact,
    });
    let path = args.out.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("written: {}", path.display());
    anyhow::ensure!(exact, "accepted {accepted} but processed {processed}");
    Ok(())
}

/// Kills attribd if the bench fails half-way.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// RSS of `pid` in bytes (0 when it cannot be read).
fn rss(pid: u32) -> u64 {
    let mut s = String::new();
    let _ = std::fs::File::open(format!("/proc/{pid}/status"))
        .and_then(|mut f| f.read_to_string(&mut s));
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// One keep-alive connection to the door.
struct Conn {
    addr: String,
    send: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Conn {
    fn new(addr: &str) -> Conn {
        Conn {
            addr: addr.to_string(),
            send: None,
        }
    }

    /// Sends one request (reconnecting if the connection is gone); its status code.
    async fn connect(&mut self) -> anyhow::Result<()> {
        if self.send.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = tokio::net::TcpStream::connect(&self.addr).await?;
            stream.set_nodelay(true)?;
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            self.send = Some(send);
        }
        Ok(())
    }

    async fn request(&mut self, req: hyper::Request<Full<Bytes>>) -> anyhow::Result<u16> {
        self.connect().await?;
        let Some(send) = self.send.as_mut() else {
            anyhow::bail!("no connection");
        };
        send.ready().await?;
        let resp = send.send_request(req).await?;
        let status = resp.status().as_u16();
        resp.into_body().collect().await?;
        Ok(status)
    }
}

async fn wait_for(door: &str) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        let mut c = Conn::new(door);
        let req = hyper::Request::get("/health")
            .header("host", door)
            .body(Full::new(Bytes::new()))?;
        if c.request(req).await.is_ok() {
            return Ok(());
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(60),
            "the door never opened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Event time of the generated records: an hour ago (inside every limit of the decoder).
fn event_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        - 3_600_000
}

/// POSTs clicks `bench-0` … `bench-{n-1}`, 5 000 per request.
async fn post_clicks(door: &str, n: u64) -> anyhow::Result<()> {
    let ts = event_ms();
    let mut c = Conn::new(door);
    let mut i = 0;
    while i < n {
        let end = (i + 5000).min(n);
        let mut body = String::with_capacity(((end - i) * 120) as usize);
        for k in i..end {
            body.push_str(&format!(
                "{{\"click_id\":\"bench-{k}\",\"ts\":{ts},\"offer_id\":\"o{}\",\"affiliate_id\":\"a{}\",\"ip\":\"10.0.{}.{}\"}}\n",
                k % 50,
                k % 200,
                (k / 256) % 256,
                k % 256
            ));
        }
        let req = hyper::Request::post("/v1/clicks")
            .header("host", door)
            .body(Full::new(Bytes::from(body)))?;
        let code = c.request(req).await?;
        anyhow::ensure!(code == 202, "posting clicks: {code}");
        i = end;
    }
    Ok(())
}

/// One open-loop phase: postbacks `first..first + rate × seconds`, each due at its time.
async fn run_phase(
    door: &str,
    name: &'static str,
    rate: f64,
    seconds: f64,
    first: u64,
    args: &Args,
    pid: u32,
) -> anyhow::Result<Phase> {
    let n = (rate * seconds).ceil() as u64;
    let next = Arc::new(AtomicU64::new(0));
    // The senders' connections are open before the phase starts (their pools are warm).
    let mut conns = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let mut c = Conn::new(door);
        c.connect().await?;
        conns.push(c);
    }
    let before = server_latency(&args.metrics).await;
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let ts = event_ms();
    let done = Arc::new(AtomicBool::new(false));
    let max_rss = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, max_rss) = (done.clone(), max_rss.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                max_rss.fetch_max(rss(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut workers = Vec::new();
    for mut conn in conns {
        let (next, door) = (next.clone(), door.to_string());
        workers.push(tokio::spawn(async move {
            let mut codes = std::collections::BTreeMap::<u16, u64>::new();
            let mut failed = 0u64;
            let mut ok = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds");
            let mut all = ok.clone();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due).await;
                let k = first + i;
                let uri = format!(
                    "/v1/postback?click_id=bench-{k}&external_id=pb-{k}&amount=12.50&status=approved&ts={ts}"
                );
                let req = hyper::Request::get(uri)
                    .header("host", &door)
                    .body(Full::new(Bytes::new()))
                    .expect("a request");
                let answer = conn.request(req).await;
                let micros = due.elapsed().as_micros().max(1) as u64;
                match answer {
                    Ok(code) => {
                        *codes.entry(code).or_default() += 1;
                        if code == 202 {
                            let _ = ok.record(micros);
                        }
                        let _ = all.record(micros);
                    }
                    Err(_) => {
                        failed += 1;
                        conn.send = None;
                    }
                }
            }
            (codes, failed, ok, all)
        }));
    }
    let mut phase = Phase {
        name,
        rate,
        sent: n,
        seconds: 0.0,
        codes: Default::default(),
        failed: 0,
        latency_ok: Histogram::new_with_bounds(1, 600_000_000, 3)?,
        latency_all: Histogram::new_with_bounds(1, 600_000_000, 3)?,
        max_rss: 0,
        server: Buckets::default(),
    };
    for w in workers {
        let (codes, failed, ok, all) = w.await?;
        for (c, k) in codes {
            *phase.codes.entry(c).or_default() += k;
        }
        phase.failed += failed;
        phase.latency_ok.add(ok)?;
        phase.latency_all.add(all)?;
    }
    phase.seconds = start.elapsed().as_secs_f64();
    phase.server = server_latency(&args.metrics).await.since(&before);
    done.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    phase.max_rss = max_rss.load(Ordering::Relaxed);
    Ok(phase)
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn print_phase(p: &Phase) {
    let answered: u64 = p.codes.values().sum();
    println!(
        "{:<9} offered {:>7.0}/s  answered {:>7.0}/s  codes {:?}  no answer {}  \
         202 latency p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms  (all answers p99 {:.1} ms)  \
         max RSS {} MiB  | attribd's own arrival → answer: p50 ≤ {} ms  p99 ≤ {} ms",
        p.name,
        p.rate,
        answered as f64 / p.seconds,
        p.codes,
        p.failed,
        ms(&p.latency_ok, 0.5),
        ms(&p.latency_ok, 0.9),
        ms(&p.latency_ok, 0.99),
        p.latency_ok.max() as f64 / 1000.0,
        ms(&p.latency_all, 0.99),
        p.max_rss >> 20,
        fmt_ms(p.server.quantile_ms(0.5)),
        fmt_ms(p.server.quantile_ms(0.99)),
    );
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v}"))
}

fn phase_json(p: &Phase) -> serde_json::Value {
    let answered: u64 = p.codes.values().sum();
    json!({
        "phase": p.name,
        "offered_per_second": p.rate,
        "requests": p.sent,
        "seconds": p.seconds,
        "answered_per_second": answered as f64 / p.seconds,
        "codes": p.codes,
        "no_answer": p.failed,
        "latency_202_ms": {
            "p50": ms(&p.latency_ok, 0.5),
            "p90": ms(&p.latency_ok, 0.9),
            "p99": ms(&p.latency_ok, 0.99),
            "max": p.latency_ok.max() as f64 / 1000.0,
        },
        "latency_all_p99_ms": ms(&p.latency_all, 0.99),
        "server_latency_ms_at_most": {
            "p50": p.server.quantile_ms(0.5),
            "p99": p.server.quantile_ms(0.99),
        },
        "max_rss_bytes": p.max_rss,
    })
}
