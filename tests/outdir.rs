//! A run owns its output directory: it recognises the inputs and settings its checkpoint was
//! taken with (and refuses others), one process writes a directory at a time, a longer input
//! after a finished run gives what a clean run of it gives, and a sink's own I/O error reaches
//! the user. Every test runs the real binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn pipeline(dir: &Path, name: &str, clicks: &Path, conversions: &Path, extra: &str) -> PathBuf {
    // One file per call: several pipelines write into the same out.
    static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let p = dir.join(format!("{name}-{n}.toml"));
    let text = format!(
        "[source]\nkind = \"files\"\nclicks = {:?}\nconversions = {:?}\n[sink.parquet]\nout = {:?}\n\
         [checkpoint]\nevery = \"1h\"\nevery_events = 5000\n{extra}",
        clicks.display().to_string(),
        conversions.display().to_string(),
        dir.join(name).display().to_string(),
    );
    std::fs::write(&p, text).unwrap();
    p
}

fn run(p: &Path, more: &[&str]) -> Output {
    let mut args = vec!["run", "-q", "-p", p.to_str().unwrap()];
    args.extend(more);
    attribd_cmd()
        .args(&args)
        .env("ATTRIBD_LOG", "warn")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The ClickHouse server of the tests, if any (under CI it must be there).
fn clickhouse() -> Option<String> {
    let url = std::env::var("ATTRIBD_CLICKHOUSE_URL")
        .ok()
        .filter(|u| !u.is_empty());
    if url.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but ATTRIBD_CLICKHOUSE_URL is not set"
        );
        eprintln!("SKIPPED the ClickHouse part: set ATTRIBD_CLICKHOUSE_URL");
    }
    url
}

/// A `[sink.clickhouse]` table writing to database `db` (migrated here), when there is a
/// server; nothing otherwise.
fn clickhouse_sink(ch: &Option<String>, db: &str) -> String {
    match ch {
        Some(url) => {
            attribd(&["migrate", "--clickhouse-url", url, "--database", db]);
            format!("[sink.clickhouse]\nurl = \"{url}\"\ndatabase = \"{db}\"\nflush_rows = 700\n")
        }
        None => String::new(),
    }
}

fn drop_databases(ch: &Option<String>, dbs: &[String]) {
    if let Some(url) = ch {
        for db in dbs {
            let _ = Command::new("curl")
                .args(["-sS", url, "--data-binary", &format!("DROP DATABASE {db}")])
                .output();
        }
    }
}

/// Every output table of `got` equals `want`'s, named when one differs.
fn assert_same_outputs(got: &Path, want: &Path, context: &str) {
    let (got, want) = (outputs(got), outputs(want));
    assert_eq!(got.0, want.0, "{context}: click rows");
    assert_eq!(got.1, want.1, "{context}: conversion rows");
    assert_eq!(got.2, want.2, "{context}: aggregates");
    assert_eq!(got.3, want.3, "{context}: dead letters");
}

#[test]
fn another_input_into_the_same_out_is_refused_and_fresh_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let a = generate_input(&dir.path().join("a").tap_mkdir(), "clicks = 4000\nseed = 1");
    let b = generate_input(&dir.path().join("b").tap_mkdir(), "clicks = 4000\nseed = 2");
    let (ac, av) = (a.join("clicks.ndjson"), a.join("conversions.ndjson"));
    let (bc, bv) = (b.join("clicks.ndjson"), b.join("conversions.ndjson"));
    let pa = pipeline(dir.path(), "out", &ac, &av, "");
    assert!(run(&pa, &[]).status.success());

    // (a) Input B at other paths into the same --out.
    let pb = pipeline(dir.path(), "out", &bc, &bv, "");
    let o = run(&pb, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("cannot resume")
            && e.contains(&format!("the clicks input was {}", ac.display()))
            && e.contains(&format!("now {}", bc.display()))
            && e.contains("--fresh")
            && e.contains("another --out"),
        "{e}"
    );

    // (a') Input B copied over A's files: same paths, other bytes.
    let moved = dir.path().join("a-orig");
    std::fs::create_dir_all(&moved).unwrap();
    std::fs::rename(&ac, moved.join("clicks.ndjson")).unwrap();
    std::fs::rename(&av, moved.join("conversions.ndjson")).unwrap();
    std::fs::copy(&bc, &ac).unwrap();
    std::fs::copy(&bv, &av).unwrap();
    let o = run(&pa, &[]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("another file is at that path") || e.contains("truncated or replaced"),
        "{e}"
    );

    // Changed semantics are named with both values.
    std::fs::copy(moved.join("clicks.ndjson"), &ac).unwrap();
    std::fs::copy(moved.join("conversions.ndjson"), &av).unwrap();
    let pw = pipeline(
        dir.path(),
        "out",
        &ac,
        &av,
        "[semantics]\nattribution_window = \"7d\"\n",
    );
    let o = run(&pw, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("semantics.attribution_window was 30d, now 7d"),
        "{}",
        stderr(&o)
    );

    // --fresh starts over: the result is a clean run of B.
    assert!(run(&pb, &["--fresh"]).status.success());
    let pref = pipeline(dir.path(), "ref-b", &bc, &bv, "");
    assert!(run(&pref, &[]).status.success());
    assert_eq!(
        outputs(&dir.path().join("out")),
        outputs(&dir.path().join("ref-b"))
    );
}

#[test]
fn an_input_truncated_below_the_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = generate_input(dir.path(), "clicks = 30000\nseed = 3");
    let (c, v) = (
        input.join("clicks.ndjson"),
        input.join("conversions.ndjson"),
    );
    let p = pipeline(dir.path(), "out", &c, &v, "");
    let mut child = attribd_cmd()
        .args(["run", "-q", "-p", p.to_str().unwrap()])
        .env("ATTRIBD_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // kill -9 once a checkpoint is on disk.
    let state = dir.path().join("out/_state");
    let started = Instant::now();
    while !std::fs::read_dir(&state).is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".snap"))
    }) {
        assert!(started.elapsed() < Duration::from_secs(60), "no checkpoint");
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill();
    let _ = child.wait();
    // The clicks file loses most of its lines.
    let text = std::fs::read(&c).unwrap();
    let cut = text
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(499)
        .unwrap()
        .0;
    std::fs::write(&c, &text[..=cut]).unwrap();
    let o = run(&p, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains(&format!("the clicks input {}", c.display()))
            && e.contains("truncated or replaced"),
        "{e}"
    );
}

/// Splits an NDJSON file: the first `keep` lines into `to`, the rest returned.
fn split(from: &Path, to: &Path, keep: usize) -> Vec<u8> {
    let text = std::fs::read(from).unwrap();
    let lines: Vec<&[u8]> = text.split_inclusive(|b| *b == b'\n').collect();
    std::fs::write(to, lines[..keep].concat()).unwrap();
    lines[keep..].concat()
}

/// Cuts `rest` in two at a line end near its middle.
fn halves(rest: &[u8]) -> (&[u8], &[u8]) {
    let at = rest[..rest.len() / 2]
        .iter()
        .rposition(|b| *b == b'\n')
        .unwrap();
    rest.split_at(at + 1)
}

/// A generated input and, in `dir/part`, the first `keep` click and conversion lines of it.
struct PartInput {
    /// The whole input: clicks, conversions.
    full: [PathBuf; 2],
    /// The first lines, in files that can grow.
    part: [PathBuf; 2],
    /// What the part leaves out, per stream.
    rest: [Vec<u8>; 2],
}

fn part_input(dir: &Path, knobs: &str, keep: [usize; 2]) -> PartInput {
    let input = generate_input(dir, knobs);
    let full = [
        input.join("clicks.ndjson"),
        input.join("conversions.ndjson"),
    ];
    let part_dir = dir.join("part");
    std::fs::create_dir_all(&part_dir).unwrap();
    let part = [
        part_dir.join("clicks.ndjson"),
        part_dir.join("conversions.ndjson"),
    ];
    let rest = [0, 1].map(|i| split(&full[i], &part[i], keep[i]));
    PartInput { full, part, rest }
}

fn append(path: &Path, rest: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(rest).unwrap();
}

#[test]
fn a_longer_input_after_a_finished_run_gives_the_clean_result_of_the_longer_input() {
    let dir = tempfile::tempdir().unwrap();
    let PartInput {
        full: [fc, fv],
        part: [gc, gv],
        rest: [rest_c, rest_v],
    } = part_input(
        dir.path(),
        "clicks = 40000\nseed = 4\nspan_hours = 10.0\nmalformed_rate = 0.01",
        [16_000, 400],
    );
    let ch = clickhouse();
    let tag = std::process::id();
    let dbs = [
        format!("attribd_grow_ref_{tag}"),
        format!("attribd_grow_{tag}"),
    ];
    let sink = |db: &str| clickhouse_sink(&ch, db);
    let reference = pipeline(dir.path(), "ref", &fc, &fv, &sink(&dbs[0]));
    assert!(run(&reference, &[]).status.success());

    // Three rounds over a growing pair of files: 40 %, 75 %, then all of it; a rerun with
    // nothing new in between must change nothing.
    let p = pipeline(dir.path(), "grown", &gc, &gv, &sink(&dbs[1]));
    let o = run(&p, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (c1, c2) = halves(&rest_c);
    let (v1, v2) = halves(&rest_v);
    append(&gc, c1);
    append(&gv, v1);
    let o = run(&p, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let before = outputs(&dir.path().join("grown"));
    let o = run(&p, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        outputs(&dir.path().join("grown")),
        before,
        "a rerun with nothing new"
    );
    append(&gc, c2);
    append(&gv, v2);
    let o = run(
        &p,
        &[
            "--summary-json",
            dir.path().join("s.json").to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));

    assert!(outputs(&dir.path().join("ref")).0.len() > 39_000);
    assert_same_outputs(&dir.path().join("grown"), &dir.path().join("ref"), "grown");
    if let Some(url) = &ch {
        assert_eq!(clickhouse_sums(url, &dbs[1]), clickhouse_sums(url, &dbs[0]));
    }
    drop_databases(&ch, &dbs);
}

#[test]
fn a_second_run_on_the_same_out_exits_at_once_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let input = generate_input(dir.path(), "clicks = 20000\nseed = 6");
    let (c, v) = (
        input.join("clicks.ndjson"),
        input.join("conversions.ndjson"),
    );
    // The first run is held to a slow write rate so it is still running meanwhile.
    let slow = pipeline(dir.path(), "out", &c, &v, "");
    let text = std::fs::read_to_string(&slow).unwrap().replacen(
        "[sink.parquet]\n",
        "[sink.parquet]\nthrottle_rows_per_second = 4000\n",
        1,
    );
    std::fs::write(&slow, text).unwrap();
    // Both on one metrics port: the second is still told about the lock, not the port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let mut first = attribd_cmd()
        .args(["run", "-q", "-p", slow.to_str().unwrap()])
        .env("ATTRIBD_LOG", "error")
        .env("ATTRIBD_METRICS_ADDR", &metrics)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let lock = dir.path().join("out/_state/attribd.lock");
    let started = Instant::now();
    while std::fs::read_to_string(&lock).unwrap_or_default().trim() != first.id().to_string() {
        assert!(started.elapsed() < Duration::from_secs(30), "no lock taken");
        std::thread::sleep(Duration::from_millis(5));
    }
    let second = pipeline(dir.path(), "out", &c, &v, "");
    for extra in [&[][..], &["--fresh"][..]] {
        let t = Instant::now();
        let o = attribd_cmd()
            .args(["run", "-q", "-p", second.to_str().unwrap()])
            .args(extra)
            .env("ATTRIBD_LOG", "warn")
            .env("ATTRIBD_METRICS_ADDR", &metrics)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("pid {}", first.id())),
            "{}",
            stderr(&o)
        );
        assert!(first.try_wait().unwrap().is_none(), "the first run goes on");
        // Not a speed assertion: the second run must not wait for the lock.
        assert!(t.elapsed() < Duration::from_secs(20));
    }
    // kill -9: the kernel releases the lock; the next run resumes and finishes the job.
    first.kill().unwrap();
    let _ = first.wait();
    let o = run(&second, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let reference = pipeline(dir.path(), "ref", &c, &v, "");
    assert!(run(&reference, &[]).status.success());
    assert_eq!(
        outputs(&dir.path().join("out")),
        outputs(&dir.path().join("ref")),
        "the one writer's result equals a clean run"
    );
}

#[test]
fn a_sink_failing_at_a_checkpoint_reports_its_own_error_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let (c, v) = (
        input.join("clicks.ndjson"),
        input.join("conversions.ndjson"),
    );
    std::fs::write(
        &c,
        "{\"click_id\":\"c1\",\"ts\":\"2026-01-01T00:00:00Z\",\"offer_id\":\"o\",\"affiliate_id\":\"a\",\"ip\":\"1.2.3.4\"}\n",
    )
    .unwrap();
    std::fs::write(&v, "").unwrap();
    let p = pipeline(dir.path(), "out", &c, &v, "");
    // The click's Parquet file cannot take its final name: a directory is in the way.
    let part = dir.path().join("out/clicks/dt=2026-01-01/hour=00");
    for seq in 0..3 {
        std::fs::create_dir_all(part.join(format!("part-e00000001-{seq:06}.parquet/x"))).unwrap();
    }
    let o = run(&p, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("renaming")
            && e.contains(&part.display().to_string())
            && e.contains("Is a directory"),
        "{e}"
    );
}

/// `path.tap_mkdir()`: creates the directory, returns the path.
trait TapMkdir {
    fn tap_mkdir(self) -> PathBuf;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> PathBuf {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

/// Taking back a finished run's end touches three places (its Parquet files, its ClickHouse
/// batches, its snapshot). A run killed between any two of them is followed by one that
/// finishes the rollback — here even after the appended records were taken away again, where
/// trusting the end would leave its deleted outputs missing for good.
#[test]
fn a_rollback_killed_half_way_is_finished_by_the_next_run_even_if_the_input_shrank_back() {
    let dir = tempfile::tempdir().unwrap();
    let PartInput {
        part: [gc, gv],
        rest: [rest_c, rest_v],
        ..
    } = part_input(
        dir.path(),
        "clicks = 20000\nseed = 8\nspan_hours = 6.0\nmalformed_rate = 0.01",
        [12_000, 500],
    );
    let (short_c, short_v) = (std::fs::read(&gc).unwrap(), std::fs::read(&gv).unwrap());
    let ch = clickhouse();
    let tag = std::process::id();
    let dbs = [
        format!("attribd_rollback_ref_{tag}"),
        format!("attribd_rollback_{tag}"),
    ];
    let sink = |db: &str| clickhouse_sink(&ch, db);
    // The reference: the short input, run once (from copies, so the files can change).
    let (rc, rv) = (
        dir.path().join("ref-c.ndjson"),
        dir.path().join("ref-v.ndjson"),
    );
    std::fs::write(&rc, &short_c).unwrap();
    std::fs::write(&rv, &short_v).unwrap();
    let reference = pipeline(dir.path(), "ref", &rc, &rv, &sink(&dbs[0]));
    assert!(run(&reference, &[]).status.success());
    assert!(outputs(&dir.path().join("ref")).0.len() > 11_000);

    let p = pipeline(dir.path(), "out", &gc, &gv, &sink(&dbs[1]));
    let o = run(&p, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    for point in [
        "rollback-discarded",
        "rollback-retracted",
        "rollback-replaced",
    ] {
        append(&gc, &rest_c);
        append(&gv, &rest_v);
        let o = attribd_cmd()
            .args(["run", "-q", "-p", p.to_str().unwrap()])
            .env("ATTRIBD_LOG", "warn")
            .env("ATTRIBD_CRASH_AT", point)
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            o.status.signal(),
            Some(6),
            "{point}: the crash point was not reached (SIGABRT expected): {}",
            stderr(&o)
        );
        assert!(stderr(&o).contains(point), "{}", stderr(&o));
        // The appended records are taken away again.
        std::fs::write(&gc, &short_c).unwrap();
        std::fs::write(&gv, &short_v).unwrap();
        let o = run(&p, &[]);
        assert!(o.status.success(), "{point}: {}", stderr(&o));
        assert_same_outputs(&dir.path().join("out"), &dir.path().join("ref"), point);
        if let Some(url) = &ch {
            assert_eq!(
                clickhouse_sums(url, &dbs[1]),
                clickhouse_sums(url, &dbs[0]),
                "{point}"
            );
        }
    }
    drop_databases(&ch, &dbs);
}

/// A last line without a newline, later ended by the writer (a newline, then more lines), is
/// an append like any other: the result is the clean run of the longer file. Continuing that
/// line instead is refused (the run already processed it as it was).
#[test]
fn a_last_line_without_newline_can_be_ended_and_appended_to() {
    let dir = tempfile::tempdir().unwrap();
    let PartInput {
        full: [fc, fv],
        part: [gc, gv],
        rest: [rest_c, rest_v],
    } = part_input(dir.path(), "clicks = 6000\nseed = 9", [3_000, 100]);
    // Both files lose their last newline.
    for f in [&gc, &gv] {
        let mut text = std::fs::read(f).unwrap();
        assert_eq!(text.pop(), Some(b'\n'));
        std::fs::write(f, text).unwrap();
    }
    let p = pipeline(dir.path(), "out", &gc, &gv, "");
    let o = run(&p, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    append(&gc, b"\n");
    append(&gc, &rest_c);
    append(&gv, b"\r\n");
    append(&gv, &rest_v);
    let o = run(&p, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let reference = pipeline(dir.path(), "ref", &fc, &fv, "");
    assert!(run(&reference, &[]).status.success());
    assert_eq!(
        outputs(&dir.path().join("out")),
        outputs(&dir.path().join("ref"))
    );

    // Continued instead of ended: refused, naming the line.
    let cont = dir.path().join("cont.ndjson");
    std::fs::write(&cont, b"{\"click_id\":\"c1\"").unwrap();
    let pc = pipeline(dir.path(), "cont", &cont, &gv, "");
    assert!(run(&pc, &[]).status.success());
    append(&cont, b",\"ts\":1}\n");
    let o = run(&pc, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("no newline"), "{}", stderr(&o));
}

/// Two outputs given one `checkpoint.state_dir` by mistake: the second is refused (while the
/// first runs: the lock; after it: the checkpoint names the output it belongs to) instead of
/// resuming the other output's finished run and writing nothing.
#[test]
fn two_outputs_sharing_one_state_dir_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = generate_input(dir.path(), "clicks = 3000\nseed = 10");
    let (c, v) = (
        input.join("clicks.ndjson"),
        input.join("conversions.ndjson"),
    );
    let state = dir.path().join("shared-state");
    let with_state = |name: &str| {
        let p = pipeline(dir.path(), name, &c, &v, "");
        let text = std::fs::read_to_string(&p).unwrap().replacen(
            "[checkpoint]\n",
            &format!(
                "[checkpoint]\nstate_dir = {:?}\n",
                state.display().to_string()
            ),
            1,
        );
        std::fs::write(&p, text).unwrap();
        p
    };
    let (one, two) = (with_state("one"), with_state("two"));
    assert!(run(&one, &[]).status.success());
    let o = run(&two, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("needs a state directory of its own")
            && stderr(&o).contains(&dir.path().join("one").display().to_string()),
        "{}",
        stderr(&o)
    );
    assert!(!dir.path().join("two/clicks").exists());
    // The first output's own rerun is unaffected.
    let o = run(&one, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
}
