//! The bounds a hostile input or a careless pipeline file meets, through the real binary: a
//! line far over `limits.max_record_bytes` costs no memory and becomes one `oversize` dead
//! letter, nesting past `limits.max_json_depth` is `invalid_json`, and `attribd check` refuses
//! absurd durations and source tables the kind does not use.

mod common;

use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;

/// `VmHWM` (peak resident set) of a running process, bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Every dead letter of a run, as JSON.
fn dead_letters(out: &Path) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    for f in files_under(&out.join("dead_letters")) {
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            all.push(serde_json::from_str(line).unwrap());
        }
    }
    all
}

fn click(id: &str) -> String {
    format!(r#"{{"click_id":"{id}","ts":1793527200000,"offer_id":"o1","affiliate_id":"a1"}}"#)
}

/// One 300 MB line between ordinary clicks, default limits: the line is skipped as it is
/// read (peak RSS stays far below its size; before, the reader held it whole, twice over),
/// dead-lettered as `oversize` with its first KiB, its true length and its exact position, and
/// the clicks around it are processed.
#[test]
fn a_300_mb_line_costs_no_memory_and_is_dead_lettered_as_oversize() {
    const LONG: u64 = 300 << 20;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("clicks.ndjson");
    let out = dir.path().join("out");
    let head = r#"{"click_id":"big","ts":1793527200000,"offer_id":"o1","affiliate_id":"a1","x":""#;
    let before = format!("{}\n{}\n", click("c1"), click("c2"));
    {
        let mut w = BufWriter::new(std::fs::File::create(&input).unwrap());
        w.write_all(before.as_bytes()).unwrap();
        w.write_all(head.as_bytes()).unwrap();
        let chunk = vec![b'x'; 1 << 20];
        let mut left = LONG - head.len() as u64 - 2;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            w.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
        w.write_all(b"\"}\n").unwrap();
        writeln!(w, "{}\n{}", click("c3"), click("c4")).unwrap();
        w.flush().unwrap();
    }

    let mut child = attribd_cmd()
        .args(["run", "-q", "--clicks"])
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .env("ATTRIBD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // VmHWM only grows: the last reading before the exit is the run's peak (to within the
    // last few milliseconds, long after the line was read).
    let mut peak = 0;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        peak = peak_rss(child.id()).unwrap_or(0).max(peak);
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    std::fs::remove_file(&input).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(peak > 0, "no reading of the child's RSS");
    assert!(
        peak < 150 << 20,
        "peak RSS {} MB for a {} MB line",
        peak >> 20,
        LONG >> 20
    );

    let dead = dead_letters(&out);
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0];
    assert_eq!(d["reason"], "oversize");
    assert_eq!(d["stream"], "clicks");
    assert_eq!(d["line"], 3);
    assert_eq!(d["offset"], before.len() as u64);
    assert!(
        d["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!("record is {LONG} bytes, limit is 65536")),
        "{d}"
    );
    let raw = d["raw"].as_str().unwrap();
    assert_eq!(raw.len(), 1024);
    assert!(raw.starts_with(head) && raw[head.len()..].bytes().all(|b| b == b'x'));

    let mut ids: Vec<String> = rows(&read_table(&out, "clicks"))
        .iter()
        .map(|r| get(r, "click_id").to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["c1", "c2", "c3", "c4"]);
    eprintln!("300 MB line: peak RSS {} MB", peak >> 20);
}

/// `[limits] max_json_depth` reaches the decoder: depth up to the limit is stored, one level
/// more and 3 000 000 levels are `invalid_json`.
#[test]
fn nesting_past_max_json_depth_is_dead_lettered_as_invalid_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let input = dir.path().join("conversions.ndjson");
    let conv = |id: &str, depth: usize| {
        // The record's object, `metadata`'s object, then arrays.
        let n = depth - 2;
        format!(
            r#"{{"click_id":"c","external_id":"{id}","amount":1,"status":"approved","metadata":{{"a":{}{}}}}}"#,
            "[".repeat(n),
            "]".repeat(n)
        )
    };
    std::fs::write(
        &input,
        format!(
            "{}\n{}\n{}\n",
            conv("e10", 10),
            conv("e11", 11),
            conv("e3m", 3_000_000)
        ),
    )
    .unwrap();
    let pipeline = dir.path().join("deep.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[source]\nkind = \"files\"\nconversions = {input:?}\n[limits]\nmax_record_bytes = 8388608\nmax_json_depth = 10\n[sink.parquet]\nout = {out:?}\n"
        ),
    )
    .unwrap();
    attribd(&["run", "-q", "-p", pipeline.to_str().unwrap()]);
    let dead = dead_letters(&out);
    let got: Vec<_> = dead
        .iter()
        .map(|d| (d["line"].as_u64().unwrap(), d["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(got, [(2, "invalid_json"), (3, "invalid_json")]);
    assert_eq!(
        dead[0]["detail"],
        "nested deeper than 10 levels (limits.max_json_depth)"
    );
    let stored = rows(&read_table(&out, "conversions"));
    assert_eq!(stored.len(), 1);
    assert_eq!(get(&stored[0], "external_id"), "e10");
    assert_eq!(
        get(&stored[0], "metadata"),
        format!("{{\"a\":{}{}}}", "[".repeat(8), "]".repeat(8))
    );
}

/// `attribd check` on a file with an absurd duration, a source table its kind does not use
/// and a bad depth limit: exit code 2, every problem with the file and its key.
#[test]
fn check_refuses_absurd_durations_and_unused_source_tables() {
    let dir = tempfile::tempdir().unwrap();
    let check = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let o = attribd_cmd()
            .args(["check", "-p", path.to_str().unwrap()])
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).to_string(),
            path.display().to_string(),
        )
    };
    let (code, err, file) = check(
        "bad.toml",
        "[source]\nkind = \"files\"\nclicks = \"c.ndjson\"\n[source.fluvio]\n\
         [semantics]\nattribution_window = \"1000000000y\"\ndedup_window = \"1000000000y\"\n\
         [limits]\nmax_future = \"1000000000y\"\nmax_json_depth = 0\n",
    );
    assert_eq!(code, Some(2), "{err}");
    for want in [
        "key `source.fluvio`: is for kind = \"fluvio\", not used by kind = \"files\"",
        "key `semantics.attribution_window`: must be at most 100 years, got 1000000000years",
        "key `semantics.dedup_window`: must be at most 100 years",
        "key `limits.max_future`: must be at most 100 years",
        "key `limits.max_json_depth`: must be 1..=10000, got 0",
    ] {
        assert!(err.contains(&format!("{file}: {want}")), "{want}\n{err}");
    }
    let (code, err, file) = check(
        "fluvio.toml",
        "[source]\nkind = \"fluvio\"\nclicks = \"-\"\n",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "{file}: key `source.clicks`: is for kind = \"files\""
        )),
        "{err}"
    );
    let (code, err, file) = check("nokind.toml", "[source]\nclicks = \"c.ndjson\"\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!("{file}: key `source.kind`: missing field `kind`")),
        "{err}"
    );
    let (code, err, _) = check(
        "ok.toml",
        "[source]\nkind = \"files\"\nclicks = \"c.ndjson\"\n[limits]\nmax_future = \"100y\"\n",
    );
    assert_eq!(code, Some(0), "{err}");
}
