//! Stopping attribd: nothing outside the pipeline can keep a finished run alive, and an operator
//! who asks twice is obeyed at once.
//!
//! Each test waits for the process with a generous limit: the limit detects a hang, it is not a
//! speed requirement.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Whether `GET /health` answers 200 at `addr`.
fn healthy(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if write!(
        s,
        "GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.starts_with("HTTP/1.1 200")
}

/// Waits up to `limit` for `child` to exit; kills it (and returns `None`) if it does not.
fn wait_at_most(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some(status) = child.try_wait().expect("waiting for attribd") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut text);
    }
    text
}

fn send(signal: &str, child: &Child) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .expect("running kill")
        .success();
    assert!(ok, "kill -{signal} failed");
}

/// A client that sends half a request to `/metrics` and then holds its socket open used to keep
/// the process alive forever after the run was done: the endpoint's graceful shutdown waited
/// for that request to complete.
#[test]
fn a_stalled_metrics_client_does_not_keep_a_finished_run_alive() {
    let dir = tempfile::tempdir().unwrap();
    let input = generate_input(dir.path(), "clicks = 2000\nseed = 5");
    let addr = format!("127.0.0.1:{}", free_port());
    // Clicks from stdin, so the run lasts exactly until the test closes it.
    let mut child = attribd_cmd()
        .args([
            "run",
            "-q",
            "--clicks",
            "-",
            "--conversions",
            input.join("conversions.ndjson").to_str().unwrap(),
            "--out",
            dir.path().join("out").to_str().unwrap(),
        ])
        .env("ATTRIBD_METRICS_ADDR", &addr)
        .env("ATTRIBD_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let clicks = std::fs::read(input.join("clicks.ndjson")).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&clicks).unwrap();

    let started = Instant::now();
    while !healthy(&addr) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "/health never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut stalled = TcpStream::connect(&addr).unwrap();
    stalled
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // Let the endpoint read the partial request before the run ends.
    std::thread::sleep(Duration::from_millis(300));

    drop(stdin); // end of input: the run finishes, checkpoints and should exit
    let status = wait_at_most(&mut child, Duration::from_secs(20));
    let stderr = stderr_of(&mut child);
    assert!(
        status.is_some(),
        "attribd did not exit within 20 s of the end of its input while a /metrics client \
         stalled:\n{stderr}"
    );
    assert_eq!(status.unwrap().code(), Some(0), "{stderr}");
    drop(stalled);
}

/// Starts a generator run whose sinks are held to 200 rows/s (its graceful stop has to drain
/// their queues, which takes minutes), sends `signal` twice and returns its exit status and log.
fn signalled_twice(signal: &str, pipeline: &std::path::Path) -> (Option<ExitStatus>, String) {
    let mut child = attribd_cmd()
        .args(["run", "-q", "-p", pipeline.to_str().unwrap()])
        .env("ATTRIBD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The generator fills the queues in front of the throttled sinks within moments.
    std::thread::sleep(Duration::from_secs(3));
    send(signal, &child);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first SIG{signal} should still be draining the throttled queues:\n{}",
        stderr_of(&mut child)
    );
    send(signal, &child);
    let status = wait_at_most(&mut child, Duration::from_secs(10));
    (status, stderr_of(&mut child))
}

fn write_pipeline(pipeline: &std::path::Path, out: &std::path::Path, throttle: u64) {
    std::fs::write(
        pipeline,
        format!(
            "[source]\nkind = \"generator\"\n[source.generator]\nclicks = 30000\nseed = 3\n\
             [sink.parquet]\nout = {out:?}\nthrottle_rows_per_second = {throttle}\n"
        ),
    )
    .unwrap();
}

/// The first SIGTERM asks for a graceful stop, which here would take minutes; the second exits
/// at once with 128 + 15 and says so in one line. The next run starts from what is on disk and
/// writes each click exactly once.
#[test]
fn a_second_sigterm_exits_at_once_while_the_first_one_drains() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let pipeline = dir.path().join("drain.toml");
    write_pipeline(&pipeline, &out, 200);
    let (status, stderr) = signalled_twice("TERM", &pipeline);
    assert!(
        status.is_some(),
        "a second SIGTERM did not end the run within 10 s:\n{stderr}"
    );
    assert_eq!(status.unwrap().code(), Some(143), "{stderr}");
    assert_eq!(
        stderr.matches("second SIGTERM").count(),
        1,
        "one line says why it exited:\n{stderr}"
    );

    // What the interrupted run left behind is a valid starting point.
    write_pipeline(&pipeline, &out, 0);
    let o = attribd(&["run", "-q", "-p", pipeline.to_str().unwrap()]);
    let summary = String::from_utf8_lossy(&o.stdout);
    let accepted: usize = summary
        .lines()
        .find_map(|l| l.trim().strip_prefix("clicks accepted"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `clicks accepted` in\n{summary}"));
    assert!(accepted > 0, "{summary}");
    assert_eq!(rows(&read_table(&out, "clicks")).len(), accepted);
}

/// Ctrl-C twice: the same, with 128 + 2.
#[test]
fn a_second_sigint_exits_at_once_with_130() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("drain.toml");
    write_pipeline(&pipeline, &dir.path().join("out"), 200);
    let (status, stderr) = signalled_twice("INT", &pipeline);
    assert!(
        status.is_some(),
        "a second SIGINT did not end the run within 10 s:\n{stderr}"
    );
    assert_eq!(status.unwrap().code(), Some(130), "{stderr}");
    assert_eq!(stderr.matches("second SIGINT").count(), 1, "{stderr}");
}
