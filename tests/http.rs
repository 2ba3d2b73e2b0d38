//! The HTTP source against real HTTP requests: `attribd run` with `kind = "http"` as a child
//! process, a plain HTTP/1.1 client over TCP, the Parquet output read back.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn sha256_hex(key: &str) -> String {
    attribd::source::http::keys::hash_hex(key)
}

/// `got == want`, or a failure naming what is missing and what is extra.
fn assert_same_rows(what: &str, got: &[String], want: &[String]) {
    let missing: Vec<_> = want.iter().filter(|r| !got.contains(r)).take(8).collect();
    let extra: Vec<_> = got.iter().filter(|r| !want.contains(r)).take(8).collect();
    assert!(
        got == want,
        "{what}: {} against {}; missing {missing:?}, extra {extra:?}",
        got.len(),
        want.len()
    );
}

/// Waits until the state stage has taken `clicks` and `conversions` records (valid or not:
/// `attribd_events_in_total`), then SIGTERM; the run's summary. (A stop checkpoints what is
/// processed and leaves the rest in the log for the next start: the output would be short.)
fn stop_after(mut run: Running, clicks: u64, conversions: u64) -> String {
    let t = Instant::now();
    loop {
        let count = |stream: &str| {
            metric(
                &run.metrics,
                &format!("attribd_events_in_total{{stream=\"{stream}\"}}"),
            )
        };
        let now = (count("clicks"), count("conversions"));
        if now == (clicks, conversions) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "processed {now:?}, expected ({clicks}, {conversions})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop(run.child.take().expect("running"))
}

const CLICK: &str =
    r#"{"click_id":"CID","ts":"2026-11-01T10:00:00Z","offer_id":"o1","affiliate_id":"a1"}"#;

fn click(id: &str) -> String {
    CLICK.replace("CID", id)
}

fn postback(click_id: &str, external_id: &str, status: &str) -> String {
    format!(
        r#"{{"click_id":"{click_id}","external_id":"{external_id}","amount":10.5,"status":"{status}","currency":"USD","ts":"2026-11-01T10:05:00Z"}}"#
    )
}

#[test]
fn the_door_answers_every_kind_of_request_as_documented_and_what_it_accepts_is_in_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        format!(
            "[[key]]\nid = \"acme-1\"\ntenant = \"acme\"\nsha256 = \"{}\"\n\
             [[key]]\nid = \"acme-0\"\ntenant = \"acme\"\nsha256 = \"{}\"\nrevoked = true\n\
             [[key]]\nid = \"acme-signed\"\ntenant = \"acme\"\nsha256 = \"{}\"\nsigning_secret = \"s3cret\"\n\
             [[key]]\nid = \"acme-busy\"\ntenant = \"acme\"\nsha256 = \"{}\"\n\
             [[key]]\nid = \"acme-crowd\"\ntenant = \"acme\"\nsha256 = \"{}\"\n",
            sha256_hex("key-1"),
            sha256_hex("key-0"),
            sha256_hex("key-signed"),
            sha256_hex("key-busy"),
            sha256_hex("key-crowd"),
        ),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let out = dir.path().join("out");
    // The postback URL below carries no `ts`, so it happens now, while the clicks are fixed in
    // November 2026: a window of ten years keeps it attributed whatever day the test runs.
    let p = http_pipeline(
        dir.path(),
        &out,
        &addr,
        &format!(
            "keys_file = \"{}\"\nmax_body_bytes = 4096\nmax_records_per_request = 5\nrate_per_key = 1\nburst_per_key = 25\n\
             [semantics]\nattribution_window = \"3650d\"\ndedup_window = \"3650d\"",
            keys.display()
        ),
    );
    let run = start(&p, &addr);
    let key = |k: &'static str| ("X-Api-Key", k);
    let post = |path: &str, h: &[(&str, &str)], body: &str| {
        request(&addr, "POST", path, h, body.as_bytes()).expect("an answer")
    };

    // Who: no key, an unknown key, a revoked key.
    let body = click("c-anon");
    assert_eq!(post("/v1/clicks", &[], &body).0, 401);
    assert_eq!(post("/v1/clicks", &[key("nope")], &body).0, 401);
    let (code, text) = post("/v1/clicks", &[key("key-0")], &body);
    assert_eq!(code, 401);
    assert!(text.contains("revoked"), "{text}");

    // Accepted: three clicks as NDJSON, bound to the key's tenant.
    let clicks = [click("c1"), click("c2"), click("c3")].join("\n");
    let (code, text) = post("/v1/clicks", &[("Authorization", "Bearer key-1")], &clicks);
    assert_eq!(code, 202, "{text}");
    assert!(text.contains(r#""accepted":3"#), "{text}");

    // A record of another tenant refuses the whole request.
    let other = click("c-globex").replace("{", r#"{"tenant_id":"globex","#);
    let (code, _) = post(
        "/v1/clicks",
        &[key("key-1")],
        &format!("{}\n{other}", click("c4")),
    );
    assert_eq!(code, 403);

    // A bad record: 400 with its reason; the good one is taken.
    let mixed = format!(
        "{}\n{{\"click_id\":\"c1\"}}",
        postback("c1", "e1", "approved")
    );
    let (code, text) = post("/v1/conversions", &[key("key-1")], &mixed);
    assert_eq!(code, 400, "{text}");
    assert!(
        text.contains(r#""accepted":1"#) && text.contains("missing_field"),
        "{text}"
    );
    let bad_request: serde_json::Value = serde_json::from_str(&text).unwrap();
    let bad_request_id = bad_request["request_id"].as_str().unwrap().to_string();

    // Too large: bytes, records.
    let (code, _) = post("/v1/clicks", &[key("key-1")], &"x".repeat(5000));
    assert_eq!(code, 413);
    let six = (0..6)
        .map(|i| click(&format!("m{i}")))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(post("/v1/clicks", &[key("key-1")], &six).0, 413);

    // Signed: required for this key; verified once; a replay and a forgery refused.
    let signed_body = click("c-signed");
    assert_eq!(
        post("/v1/clicks", &[key("key-signed")], &signed_body).0,
        401
    );
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let sig = attribd::source::http::sign::sign("s3cret", &ts, signed_body.as_bytes());
    let signed = [
        key("key-signed"),
        ("X-Attribd-Timestamp", &ts),
        ("X-Attribd-Signature", &sig),
    ];
    assert_eq!(post("/v1/clicks", &signed, &signed_body).0, 202);
    let (code, text) = post("/v1/clicks", &signed, &signed_body);
    assert_eq!(code, 401);
    assert!(text.contains("replay"), "{text}");
    let forged = [
        key("key-signed"),
        ("X-Attribd-Timestamp", &ts),
        ("X-Attribd-Signature", &sig),
    ];
    assert_eq!(post("/v1/clicks", &forged, &click("c-forged")).0, 401);

    // A postback URL, key in the query.
    let (code, text) = request(
        &addr,
        "GET",
        "/v1/postback?api_key=key-1&click_id=c2&external_id=e2&amount=12.50&status=approved&currency=USD",
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(code, 202, "{text}");

    // A key over its rate (burst 25, then 1/s): 429. (The same click each time: the first is
    // logged, the others are answered as retries.)
    let codes: Vec<u16> = (0..30)
        .map(|_| post("/v1/clicks", &[key("key-busy")], &click("b0")).0)
        .collect();
    let passed = codes.iter().filter(|&&c| c == 202).count();
    assert!((25..=27).contains(&passed), "{codes:?}");
    assert_eq!(codes.last(), Some(&429), "{codes:?}");

    // The same request from 20 senders at once: logged once, every sender answered, and the
    // postback after it is processed without waiting for more clicks.
    let same = click("c-same");
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|_| s.spawn(|| post("/v1/clicks", &[key("key-crowd")], &same)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|(c, _)| *c == 202), "{answers:?}");
    let retries = answers
        .iter()
        .filter(|(_, t)| t.contains(r#""retry":true"#))
        .count();
    assert_eq!(retries, 19, "{answers:?}");
    let (code, text) = post(
        "/v1/conversions",
        &[key("key-1")],
        &postback("c-same", "e3", "approved"),
    );
    assert_eq!(code, 202, "{text}");

    // Records in the log: 3 + 1 + 1 clicks + the signed one; 2 postbacks (one bad) + 1 by URL
    // + 1.
    let summary = stop_after(run, 6, 4);
    assert!(summary.contains("clicks"), "{summary}");

    // What was accepted is in the output, bound to acme; nothing refused is.
    let click_rows = rows(&read_table(&out, "clicks"));
    let mut ids: Vec<&str> = click_rows.iter().map(|r| get(r, "click_id")).collect();
    ids.sort();
    assert_eq!(ids, ["b0", "c-same", "c-signed", "c1", "c2", "c3"]);
    assert!(click_rows.iter().all(|r| get(r, "tenant_id") == "acme"));
    let convs = rows(&read_table(&out, "conversions"));
    let mut ext: Vec<(&str, &str, &str)> = convs
        .iter()
        .map(|r| {
            (
                get(r, "external_id"),
                get(r, "tenant_id"),
                get(r, "attributed"),
            )
        })
        .collect();
    ext.sort();
    assert_eq!(
        ext,
        [
            ("e1", "acme", "true"),
            ("e2", "acme", "true"),
            ("e3", "acme", "true")
        ]
    );
    // The bad record is a dead letter naming its request.
    let dead: Vec<serde_json::Value> = files_under(&out.join("dead_letters"))
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "ndjson"))
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["reason"], "missing_field");
    assert_eq!(dead[0]["source"], format!("http:{bad_request_id}"));
}

/// Sends `bodies` in order to `path`; returns how many were acknowledged before the first
/// that was not (the server died).
fn send_all(addr: &str, path: &str, bodies: &[String], from: usize) -> usize {
    let mut acked = from;
    for b in &bodies[from..] {
        match request(addr, "POST", path, &[], b.as_bytes()) {
            Some((202, _)) => acked += 1,
            Some((code, text)) => panic!("{path}: {code} {text}"),
            None => break,
        }
    }
    acked
}

/// Generated clicks and postbacks cut into requests of 50 records.
fn requests(input: &Path, file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(input.join(file)).unwrap();
    // Only valid lines: the door refuses the generator's malformed ones with 400 (tested above).
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v.is_object()))
        .collect();
    lines.chunks(50).map(|c| c.join("\n")).collect()
}

#[test]
fn acknowledged_records_survive_a_crash_exactly_once_and_a_retried_request_is_not_logged_twice() {
    let dir = tempfile::tempdir().unwrap();
    let input = generate_input(
        dir.path(),
        "clicks = 4000\nseed = 5\nmalformed_rate = 0.0\nspan_hours = 2.0",
    );
    let clicks = requests(&input, "clicks.ndjson");
    let convs = requests(&input, "conversions.ndjson");

    // Reference: every request once, no crash. Clicks first, then postbacks, so attribution
    // does not depend on how the two streams interleave.
    let addr = format!("127.0.0.1:{}", free_port());
    let reference = dir.path().join("ref");
    let run = start(&http_pipeline(dir.path(), &reference, &addr, ""), &addr);
    assert_eq!(send_all(&addr, "/v1/clicks", &clicks, 0), clicks.len());
    assert_eq!(send_all(&addr, "/v1/conversions", &convs, 0), convs.len());
    let records = |r: &[String]| r.iter().map(|b| b.lines().count() as u64).sum::<u64>();
    stop_after(run, records(&clicks), records(&convs));

    // The process dies in the middle of the postbacks — as kill -9, with acknowledged
    // records past the last checkpoint, and right after one request was made durable but
    // before it was answered.
    let addr = format!("127.0.0.1:{}", free_port());
    let out = dir.path().join("crash");
    let p = http_pipeline(dir.path(), &out, &addr, "");
    let half = convs.len() / 2;
    let crashing = attribd_cmd()
        .args(["run", "-q", "-p", p.to_str().unwrap()])
        .env("ATTRIBD_LOG", "error")
        .env("ATTRIBD_CRASH_AT", "http-wal-synced")
        // One request per group (the client waits for each answer): pass every click request
        // and `half` postback requests.
        .env("ATTRIBD_CRASH_SKIP", (clicks.len() + half).to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_door(&addr);
    let mut crashing = crashing;
    assert_eq!(send_all(&addr, "/v1/clicks", &clicks, 0), clicks.len());
    let acked = send_all(&addr, "/v1/conversions", &convs, 0);
    let status = crashing.wait().unwrap();
    assert!(!status.success(), "the crash point was not reached");
    assert_eq!(acked, half, "the request durable but unanswered is #{half}");
    assert!(
        files_under(&out.join("_state").join("wal").join("conversions"))
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "wal")),
        "no write-ahead log"
    );

    // The sender retries what it has no answer for, from request #half on (that one is in the
    // log already): nothing is lost and nothing counted twice.
    let run = start(&p, &addr);
    // The request that was durable but unanswered is recognised: answered, not logged twice
    // (a status change inside it would otherwise be applied again).
    let (code, text) = request(
        &addr,
        "POST",
        "/v1/conversions",
        &[],
        convs[acked].as_bytes(),
    )
    .unwrap();
    assert_eq!(code, 202, "{text}");
    assert!(text.contains(r#""retry":true"#), "{text}");
    assert_eq!(
        send_all(&addr, "/v1/conversions", &convs, acked + 1),
        convs.len()
    );
    stop_after(run, records(&clicks), records(&convs));

    let (want, got) = (outputs(&reference), outputs(&out));
    assert!(
        want.0.len() > 3000 && want.1.len() > 100,
        "{} {}",
        want.0.len(),
        want.1.len()
    );
    assert_same_rows("clicks", &got.0, &want.0);
    assert_same_rows("conversions", &got.1, &want.1);
    // The retried request counts once in every measure but the duplicates (where a retry
    // is, rightly, a duplicate postback).
    let total = |o: &common::Outputs, i: usize| o.2.values().map(|v| v[i]).sum::<i64>();
    for (i, m) in attribd::sink::parquet::schema::MEASURES.iter().enumerate() {
        if !m.starts_with("duplicate") {
            assert_eq!(total(&got, i), total(&want, i), "{m} in stats_minute");
        }
    }
}

/// `attribd ingest` (the edge producing to Fluvio) before its cluster answers: the door is
/// open, every request is a 503 to retry and /ready says why; SIGTERM ends it at once. A door
/// beyond loopback without keys is refused at start, naming the key. (Produced records are
/// tested against the real cluster in tests/fluvio.rs.)
#[test]
fn the_ingest_edge_answers_503_until_fluvio_is_connected_and_refuses_an_open_door_without_keys() {
    let out = attribd_cmd()
        .args(["ingest", "--listen", "0.0.0.0:18099"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a configuration error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("source.http.keys_file"), "{err}");

    // Nothing listens on this port: the edge keeps trying to connect.
    let nowhere = format!("127.0.0.1:{}", free_port());
    let door = format!("127.0.0.1:{}", free_port());
    let metrics = loop {
        let m = metrics_addr();
        if m != door {
            break m;
        }
    };
    let child = attribd_cmd()
        .args(["ingest", "--fluvio-endpoint", &nowhere, "--listen", &door])
        .env("ATTRIBD_METRICS_ADDR", &metrics)
        .env("ATTRIBD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut run = Running {
        child: Some(child),
        metrics: metrics.clone(),
    };
    wait_for_door(&door);
    let (code, text) = request(&door, "POST", "/v1/clicks", &[], click("c1").as_bytes()).unwrap();
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("not connected to Fluvio"), "{text}");
    let (code, text) = request(&metrics, "GET", "/ready", &[], b"").unwrap();
    assert_eq!(code, 503, "{text}");
    let t = Instant::now();
    stop(run.child.take().expect("running"));
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "SIGTERM while connecting took {:?}",
        t.elapsed()
    );
}

/// `curl` (installed by .ci/run) with its arguments; (exit status, stdout).
fn curl(args: &[&str]) -> (bool, String) {
    let o = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl runs");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string(),
    )
}

/// HTTPS: with `tls_cert` / `tls_key` the door speaks TLS only. A client trusting just that
/// certificate gets its 202 and the click reaches the output; plain HTTP gets no answer; a
/// certificate that cannot be read stops the start, naming the keys.
#[test]
fn with_a_certificate_the_door_speaks_https_only() {
    // The certificate is made by openssl and the door spoken to by curl: without them the test
    // says so and skips, except in CI (`.ci/run` installs both).
    for tool in ["openssl", "curl"] {
        if std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but {tool} is not installed"
            );
            eprintln!(
                "SKIPPED with_a_certificate_the_door_speaks_https_only: {tool} is not installed"
            );
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs (installed by .ci/run)");
    assert!(made.status.success(), "{made:?}");

    // Unreadable: refused at start.
    let addr = format!("127.0.0.1:{}", free_port());
    let out = dir.path().join("out-bad");
    let p = http_pipeline(
        dir.path(),
        &out,
        &addr,
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            key.display(),
            key.display()
        ),
    );
    let o = attribd_cmd()
        .args(["run", "-q", "-p", p.to_str().unwrap()])
        .env("ATTRIBD_LOG", "warn")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("tls_cert / tls_key"), "{err}");

    let out = dir.path().join("out");
    let p = http_pipeline(
        dir.path(),
        &out,
        &addr,
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            cert.display(),
            key.display()
        ),
    );
    let metrics = metrics_addr();
    let child = attribd_cmd()
        .args(["run", "-q", "-p", p.to_str().unwrap()])
        .env("ATTRIBD_LOG", "warn")
        .env("ATTRIBD_METRICS_ADDR", &metrics)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let run = Running {
        child: Some(child),
        metrics,
    };
    let url = |path: &str| {
        format!(
            "https://127.0.0.1:{}{path}",
            addr.rsplit(':').next().unwrap()
        )
    };
    let cacert = cert.to_str().unwrap();
    let t = Instant::now();
    while !curl(&["-f", "--cacert", cacert, &url("/health")]).0 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the door never opened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // HTTP/1.1 only, even to a client that asks for HTTP/2 (ALPN).
    let (ok, version) = curl(&[
        "--http2",
        "--cacert",
        cacert,
        "-o",
        "/dev/null",
        "-w",
        "%{http_version}",
        &url("/health"),
    ]);
    assert!(ok && version == "1.1", "{version}");
    // Without trusting the certificate: refused by the client.
    assert!(!curl(&[&url("/health")]).0);
    // Plain HTTP to the HTTPS port: no HTTP answer.
    assert!(request(&addr, "GET", "/health", &[], b"").is_none());
    let (ok, body) = curl(&[
        "--cacert",
        cacert,
        "-w",
        " %{http_code}",
        "--data-binary",
        &click("c-tls"),
        &url("/v1/clicks"),
    ]);
    assert!(ok && body.ends_with(" 202"), "{body}");
    stop_after(run, 1, 0);
    let clicks = rows(&read_table(&out, "clicks"));
    assert_eq!(clicks.len(), 1);
    assert_eq!(get(&clicks[0], "click_id"), "c-tls");
}

/// SIGTERM while requests keep coming: the door stops taking them, answers those in flight,
/// and everything it answered 202 is processed before the final checkpoint — in the output of
/// this run, with no restart to replay the log.
#[test]
fn sigterm_drains_the_door_every_acknowledged_click_is_in_this_runs_output() {
    let (_dir, addr, out, p) = door_on_a_free_port("");
    let mut run = start(&p, &addr);
    let senders: Vec<_> = (0..4)
        .map(|t| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for n in 0.. {
                    let id = format!("c-{t}-{n}");
                    match request(&addr, "POST", "/v1/clicks", &[], click(&id).as_bytes()) {
                        Some((202, _)) => acked.push(id),
                        // Closing: refused connections, or a 503 while it stops.
                        _ => break,
                    }
                }
                acked
            })
        })
        .collect();
    let t = Instant::now();
    while metric(&run.metrics, "attribd_events_in_total{stream=\"clicks\"}") < 200 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "fewer than 200 clicks in after a minute"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop(run.child.take().expect("running"));
    let mut acked: Vec<String> = senders
        .into_iter()
        .flat_map(|s| s.join().unwrap())
        .collect();
    acked.sort();
    let mut written: Vec<String> = rows(&read_table(&out, "clicks"))
        .iter()
        .map(|r| get(r, "click_id").to_string())
        .collect();
    written.sort();
    assert!(acked.len() >= 200, "{} acknowledged", acked.len());
    assert_same_rows("clicks acknowledged vs written", &written, &acked);
}

/// A stop is not the end of the input: a postback whose click has not come yet stays pending
/// across SIGTERM (it is not given up as `unknown_click`), and is attributed when the click
/// comes after the restart.
#[test]
fn a_postback_waiting_for_its_click_is_still_waiting_after_a_stop() {
    let (_dir, addr, out, p) = door_on_a_free_port("");
    let run = start(&p, &addr);
    let (code, text) = request(
        &addr,
        "POST",
        "/v1/conversions",
        &[],
        postback("c-later", "o-later", "approved").as_bytes(),
    )
    .unwrap();
    assert_eq!(code, 202, "{text}");
    stop_after(run, 0, 1);
    assert!(
        rows(&read_table(&out, "conversions")).is_empty(),
        "nothing decided about the postback yet"
    );

    let run = start(&p, &addr);
    let (code, text) = request(
        &addr,
        "POST",
        "/v1/clicks",
        &[],
        click("c-later").as_bytes(),
    )
    .unwrap();
    assert_eq!(code, 202, "{text}");
    // The counters go on from the checkpoint: the postback of the first run is counted once.
    stop_after(run, 1, 1);
    let convs = rows(&read_table(&out, "conversions"));
    assert_eq!(convs.len(), 1, "{convs:?}");
    assert_eq!(get(&convs[0], "attributed"), "true", "{convs:?}");
    assert_eq!(get(&convs[0], "offer_id"), "o1");
}

/// Backpressure: a log writer that cannot keep up (held here at its crash point, after the
/// `fsync` of the first request, until the process aborts) fills its queue of
/// `queue_requests`, and every request beyond is answered 503 with `Retry-After` at once —
/// never queued without bound. After the restart, the request that was durable is in the
/// output and none of the refused ones is.
#[test]
fn a_full_queue_is_a_503_with_retry_after_and_refused_requests_are_not_in_the_output() {
    let (_dir, addr, out, p) = door_on_a_free_port("queue_requests = 2");
    let crashing = attribd_cmd()
        .args(["run", "-q", "-p", p.to_str().unwrap()])
        .env("ATTRIBD_LOG", "warn")
        .env("ATTRIBD_CRASH_AT", "http-wal-synced")
        .env("ATTRIBD_CRASH_DELAY_MS", "8000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_door(&addr);
    let post = |id: String| {
        let addr = addr.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            let answer = request_with_head(&addr, "POST", "/v1/clicks", &[], click(&id).as_bytes());
            (id, answer, t.elapsed())
        })
    };
    let first = post("c-durable".into());
    // The writer has it, has made it durable and is held there: its entry is in the log.
    let log = out.join("_state").join("wal").join("clicks");
    let t = Instant::now();
    while !files_under(&log)
        .iter()
        .any(|f| std::fs::metadata(f).is_ok_and(|m| m.len() > 0))
    {
        assert!(t.elapsed() < Duration::from_secs(30), "never logged");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let others: Vec<_> = (0..8).map(|i| post(format!("c-{i}"))).collect();
    let mut refused = Vec::new();
    for o in others {
        let (id, answer, took) = o.join().unwrap();
        if let Some((503, head, body)) = &answer
            && body.contains("backpressure")
        {
            assert!(
                took < Duration::from_secs(5),
                "a full queue answers at once"
            );
            assert!(
                head.to_ascii_lowercase().contains("retry-after: 1"),
                "{head}"
            );
            refused.push(id);
        }
    }
    // Two fit in the queue; the other six are refused.
    assert_eq!(refused.len(), 6, "{refused:?}");
    let (_, answer, _) = first.join().unwrap();
    assert!(
        !matches!(answer, Some((202, _, _))),
        "held before its answer: {answer:?}"
    );
    let mut crashing = crashing;
    assert!(
        !crashing.wait().unwrap().success(),
        "aborted at the crash point"
    );

    let run = start(&p, &addr);
    stop_after(run, 1, 0);
    let written: Vec<String> = rows(&read_table(&out, "clicks"))
        .iter()
        .map(|r| get(r, "click_id").to_string())
        .collect();
    assert_eq!(written, vec!["c-durable".to_string()]);
}
