//! NDJSON files (plain, `.gz`, `.zst`) and stdin.
//!
//! The reader splits the input into lines and ships them in [`RawBatch`]es; compression is chosen
//! from the file extension. Positions are 1-based line numbers and byte offsets in the
//! decompressed stream.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{BATCH_LINES, RawBatch, RawRecord};
use crate::event::Position;

/// Where a file source reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Stdin,
    Path(PathBuf),
}

impl Input {
    /// `-` means stdin, anything else a path.
    pub fn parse(s: &str) -> Input {
        if s == "-" {
            Input::Stdin
        } else {
            Input::Path(PathBuf::from(s))
        }
    }

    pub fn name(&self) -> String {
        match self {
            Input::Stdin => "stdin".to_string(),
            Input::Path(p) => p.display().to_string(),
        }
    }

    /// Opens the input, decompressing by extension (`.gz`, `.zst`).
    pub fn open(&self) -> Result<Box<dyn BufRead + Send>> {
        match self {
            Input::Stdin => Ok(Box::new(BufReader::with_capacity(1 << 20, io::stdin()))),
            Input::Path(p) => open_path(p),
        }
    }
}

fn open_path(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let reader: Box<dyn Read + Send> = match ext {
        "gz" => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file))),
        "zst" => Box::new(
            zstd::stream::read::Decoder::new(file)
                .with_context(|| format!("cannot read zstd stream {}", path.display()))?,
        ),
        _ => Box::new(file),
    };
    Ok(Box::new(BufReader::with_capacity(1 << 20, reader)))
}

/// Reads lines from `reader` and calls `emit` with each full batch; returns the number of lines.
/// `emit` returning `false` stops the reader early (pipeline shutting down).
///
/// Lines are found with SIMD `memchr` in the reader's own buffer and copied once, straight into
/// the batch (a line cut by the end of the buffer continues in place with the next fill), so
/// the bytes are touched once on their way to the decoder.
pub fn read_batches(
    mut reader: impl BufRead,
    mut emit: impl FnMut(RawBatch) -> bool,
) -> io::Result<u64> {
    const BATCH_BYTES: usize = 1 << 20;
    let new_batch = || RawBatch::with_capacity(BATCH_BYTES + (64 << 10), BATCH_LINES);
    let mut batch = new_batch();
    // Where the line being assembled starts in `batch.data`.
    let mut line_start = 0usize;
    let mut line_no = 0u64;
    // Stream offset of the line being assembled.
    let mut offset = 0u64;
    loop {
        let buf = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            break;
        }
        let len = buf.len();
        let mut from = 0;
        for nl in memchr::memchr_iter(b'\n', buf) {
            batch.data.extend_from_slice(&buf[from..nl]);
            from = nl + 1;
            line_no += 1;
            let line_bytes = (batch.data.len() - line_start) as u64 + 1;
            finish_line(&mut batch, line_start, line_no, offset);
            offset += line_bytes;
            batch.end = Position {
                line: line_no,
                offset,
            };
            line_start = batch.data.len();
            if batch.len() >= BATCH_LINES || batch.data.len() >= BATCH_BYTES {
                let full = std::mem::replace(&mut batch, new_batch());
                line_start = 0;
                if !emit(full) {
                    return Ok(line_no);
                }
            }
        }
        // The start of a line that continues in the next fill.
        batch.data.extend_from_slice(&buf[from..]);
        reader.consume(len);
    }
    if batch.data.len() > line_start {
        // A last line without a newline.
        line_no += 1;
        let line_bytes = (batch.data.len() - line_start) as u64;
        finish_line(&mut batch, line_start, line_no, offset);
        batch.end = Position {
            line: line_no,
            offset: offset + line_bytes,
        };
    }
    if !batch.is_empty() {
        emit(batch);
    }
    Ok(line_no)
}

/// Records the line `batch.data[start..]` (a trailing `\r` is not part of it).
fn finish_line(batch: &mut RawBatch, start: usize, line: u64, offset: u64) {
    let mut end = batch.data.len();
    if end > start && batch.data[end - 1] == b'\r' {
        end -= 1;
    }
    if batch.arrived.is_none() {
        batch.arrived = Some(std::time::Instant::now());
    }
    batch.records.push(RawRecord {
        start: start as u32,
        end: end as u32,
        position: Position { line, offset },
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn collect(input: &Input) -> Vec<(String, Position)> {
        let mut out = Vec::new();
        read_batches(input.open().unwrap(), |b| {
            for r in &b.records {
                out.push((String::from_utf8_lossy(b.line(r)).into_owned(), r.position));
            }
            true
        })
        .unwrap();
        out
    }

    #[test]
    fn plain_gzip_and_zstd_files_read_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let text = "{\"a\":1}\r\n\n{\"b\":2}\n{\"c\":3}";
        let plain = dir.path().join("x.ndjson");
        std::fs::write(&plain, text).unwrap();
        let gz = dir.path().join("x.ndjson.gz");
        let mut enc = flate2::write::GzEncoder::new(File::create(&gz).unwrap(), Default::default());
        enc.write_all(text.as_bytes()).unwrap();
        enc.finish().unwrap();
        let zst = dir.path().join("x.ndjson.zst");
        std::fs::write(&zst, zstd::encode_all(text.as_bytes(), 3).unwrap()).unwrap();

        let want = collect(&Input::Path(plain));
        assert_eq!(want.len(), 4);
        assert_eq!(want[0].0, "{\"a\":1}");
        assert_eq!(want[1].0, "");
        assert_eq!(
            want[3],
            (
                "{\"c\":3}".to_string(),
                Position {
                    line: 4,
                    offset: 18
                }
            )
        );
        assert_eq!(collect(&Input::Path(gz)), want);
        assert_eq!(collect(&Input::Path(zst)), want);
    }

    /// Lines cut at every possible place by a tiny reader buffer, CRLF, empty lines, a last line
    /// without newline, batches cut by line count: the same lines, positions and batch ends as
    /// a plain split.
    #[test]
    fn lines_cut_across_buffer_fills_come_out_whole() {
        let mut text = String::new();
        for i in 0..(BATCH_LINES * 2 + 100) {
            match i % 5 {
                0 => text.push_str(&format!("{{\"n\":{i}}}\r\n")),
                1 => text.push('\n'),
                _ => text.push_str(&format!("{{\"line\":\"{}\"}}\n", "x".repeat(i % 37))),
            }
        }
        text.push_str("{\"last\":true}");
        let mut want = Vec::new();
        let mut offset = 0u64;
        for (i, l) in text.split('\n').enumerate() {
            want.push((
                l.trim_end_matches('\r').to_string(),
                Position {
                    line: i as u64 + 1,
                    offset,
                },
            ));
            offset += l.len() as u64 + 1;
        }
        for cap in [1, 7, 64, 1 << 16] {
            let mut got = Vec::new();
            let mut ends = Vec::new();
            read_batches(BufReader::with_capacity(cap, text.as_bytes()), |b| {
                ends.push(b.end);
                for r in &b.records {
                    got.push((String::from_utf8_lossy(b.line(r)).into_owned(), r.position));
                }
                true
            })
            .unwrap();
            assert_eq!(got, want, "buffer of {cap} bytes");
            assert_eq!(ends.len(), 3, "batches of {BATCH_LINES} lines");
            assert_eq!(ends[0].line, BATCH_LINES as u64);
            assert_eq!(ends[0].offset, want[BATCH_LINES].1.offset);
            assert_eq!(
                *ends.last().unwrap(),
                Position {
                    line: want.len() as u64,
                    offset: text.len() as u64
                }
            );
        }
    }

    #[test]
    fn empty_input_long_lines_and_an_early_stop() {
        let none = read_batches(BufReader::new(&b""[..]), |_| panic!("no batch expected"));
        assert_eq!(none.unwrap(), 0);
        // 300 lines of 10 KB: batches are cut at 1 MiB, before the line count is reached.
        let line = format!("{{\"x\":\"{}\"}}\n", "y".repeat(10_000));
        let text = line.repeat(300);
        let mut sizes = Vec::new();
        read_batches(BufReader::new(text.as_bytes()), |b| {
            sizes.push((b.len(), b.end.line));
            true
        })
        .unwrap();
        let per_batch = (1 << 20) / line.len() + 1;
        assert_eq!(sizes[0], (per_batch, per_batch as u64));
        assert_eq!(sizes.iter().map(|s| s.0).sum::<usize>(), 300);
        // `emit` returning false stops the reader after that batch.
        let mut calls = 0;
        let read = read_batches(BufReader::new(text.as_bytes()), |_| {
            calls += 1;
            false
        })
        .unwrap();
        assert_eq!((calls, read), (1, per_batch as u64));
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = Input::parse("/nonexistent/clicks.ndjson")
            .open()
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/clicks.ndjson"));
    }
}
