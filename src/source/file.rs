//! NDJSON files (plain, `.gz`, `.zst`) and stdin.
//!
//! The reader splits the input into lines and ships them in [`RawBatch`]es; compression is chosen
//! from the file extension. Positions are 1-based line numbers and byte offsets in the
//! decompressed stream.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{BATCH_LINES, OVERSIZE_HEAD_BYTES, RawBatch, RawRecord};
use crate::raw::Position;

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

/// The longest line [`read_batches`] holds in memory, and the largest `limits.max_record_bytes`
/// a pipeline may set (see `config`).
pub const MAX_LINE_BYTES: usize = 1 << 30;

/// [`read_batches_with_limit`] with lines cut at [`MAX_LINE_BYTES`] (`attribd produce`,
/// benchmarks).
pub fn read_batches(reader: impl BufRead, emit: impl FnMut(RawBatch) -> bool) -> io::Result<u64> {
    read_batches_with_limit(reader, MAX_LINE_BYTES, emit)
}

/// Reads lines from `reader` and calls `emit` with each full batch; returns the number of lines.
/// `emit` returning `false` stops the reader early (pipeline shutting down).
///
/// Lines are found with SIMD `memchr` in the reader's own buffer and copied once, straight into
/// the batch (a line cut by the end of the buffer continues in place with the next fill), so
/// the bytes are touched once on their way to the decoder.
///
/// A line longer than `max_line_bytes` is never held whole: once it passes the limit only its
/// first [`OVERSIZE_HEAD_BYTES`] stay in the batch, the rest is skipped up to the newline, and
/// its record carries its true length ([`RawRecord::len`]) — the decoder dead-letters it as
/// `oversize`. A line costs at most `max_line_bytes` (+1 for a `\r`) or 1 KiB of memory,
/// whatever its length; positions after it are exact.
pub fn read_batches_with_limit(
    mut reader: impl BufRead,
    max_line_bytes: usize,
    mut emit: impl FnMut(RawBatch) -> bool,
) -> io::Result<u64> {
    const BATCH_BYTES: usize = 1 << 20;
    let new_batch = || RawBatch::with_capacity(BATCH_BYTES + (64 << 10), BATCH_LINES);
    let mut batch = new_batch();
    let mut line = PartLine::at(0);
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
            line.append(&mut batch.data, &buf[from..nl], max_line_bytes);
            from = nl + 1;
            line_no += 1;
            line.finish(&mut batch, line_no, offset);
            offset += line.len + 1;
            batch.end = Position {
                line: line_no,
                offset,
            };
            if batch.len() >= BATCH_LINES || batch.data.len() >= BATCH_BYTES {
                let full = std::mem::replace(&mut batch, new_batch());
                if !emit(full) {
                    return Ok(line_no);
                }
            }
            line = PartLine::at(batch.data.len());
        }
        // The start of a line that continues in the next fill.
        line.append(&mut batch.data, &buf[from..], max_line_bytes);
        reader.consume(len);
    }
    if line.len > 0 {
        // A last line without a newline.
        line_no += 1;
        line.finish(&mut batch, line_no, offset);
        batch.end = Position {
            line: line_no,
            offset: offset + line.len,
        };
    }
    if !batch.is_empty() {
        emit(batch);
    }
    Ok(line_no)
}

/// The line being assembled at the end of a batch's `data`.
struct PartLine {
    /// Where it starts in `data`.
    start: usize,
    /// Bytes read so far, kept or skipped (a trailing `\r` included).
    len: u64,
    /// Its last byte so far (a trailing `\r` is not part of the line).
    last: u8,
    /// Longer than the limit: only its head is in `data`, the rest is skipped.
    cut: bool,
}

impl PartLine {
    fn at(start: usize) -> PartLine {
        PartLine {
            start,
            len: 0,
            last: 0,
            cut: false,
        }
    }

    /// Adds the next bytes of the line to `data`, as long as it stays within `max` bytes.
    fn append(&mut self, data: &mut Vec<u8>, bytes: &[u8], max: usize) {
        let Some(&last) = bytes.last() else {
            return;
        };
        self.len += bytes.len() as u64;
        self.last = last;
        let kept = data.len() - self.start;
        // One byte of room for a `\r`, which is not part of the line: a line is cut only when
        // it is over the limit without it.
        if !self.cut && kept + bytes.len() <= max.saturating_add(1) {
            data.extend_from_slice(bytes);
            return;
        }
        // Over the limit: only the head is kept (filled up to its size, whatever the reads).
        self.cut = true;
        if kept > OVERSIZE_HEAD_BYTES {
            data.truncate(self.start + OVERSIZE_HEAD_BYTES);
        } else {
            let more = (OVERSIZE_HEAD_BYTES - kept).min(bytes.len());
            data.extend_from_slice(&bytes[..more]);
        }
    }

    /// Records the line in `batch` (without a trailing `\r`).
    fn finish(&self, batch: &mut RawBatch, line: u64, offset: u64) {
        let len = if self.len > 0 && self.last == b'\r' {
            self.len - 1
        } else {
            self.len
        };
        // The kept bytes end where the line does, before a `\r` (under a limit below 1 KiB a
        // cut line's head may be all of it).
        let end = batch.data.len().min(
            self.start
                .saturating_add(usize::try_from(len).unwrap_or(usize::MAX)),
        );
        if batch.arrived.is_none() {
            batch.arrived = Some(std::time::Instant::now());
        }
        batch.records.push(RawRecord {
            start: self.start,
            end,
            len,
            position: Position { line, offset },
        });
    }
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

    /// A 50 MB line through a 1000-byte limit: the batch keeps its first KiB and never grows
    /// (the line is not buffered), the record knows the line's true length, and the lines
    /// after it come out whole at exact positions — however the reader's buffer cuts it.
    #[test]
    fn an_oversize_line_is_skipped_keeping_its_head_and_length() {
        const LIMIT: usize = 1000;
        let before = "{\"a\":1}\n";
        let after = "{\"b\":2}\r\n{\"c\":3}";
        for (cap, long) in [
            (1 << 20, 50u64 << 20),
            (1, 5000),
            (7, 5000),
            (4096, 1 << 20),
        ] {
            let input = before
                .as_bytes()
                .chain(io::repeat(b'x').take(long))
                .chain(&b"\r\n"[..])
                .chain(after.as_bytes());
            let mut batches = Vec::new();
            read_batches_with_limit(BufReader::with_capacity(cap, input), LIMIT, |b| {
                batches.push(b);
                true
            })
            .unwrap();
            assert_eq!(batches.len(), 1);
            let b = &batches[0];
            let lines: Vec<_> = b.records.iter().map(|r| b.line(r)).collect();
            assert_eq!(lines.len(), 4);
            assert_eq!(lines[0], b"{\"a\":1}");
            assert_eq!(lines[1], vec![b'x'; OVERSIZE_HEAD_BYTES]);
            assert_eq!(lines[2], b"{\"b\":2}");
            assert_eq!(lines[3], b"{\"c\":3}");
            // The batch holds the head, not the line (and line 3's `\r`, outside its record):
            // its buffer never grew past its initial size.
            assert_eq!(b.data.len(), 7 + OVERSIZE_HEAD_BYTES + 8 + 7);
            assert!(b.data.capacity() <= (1 << 20) + (64 << 10), "{cap}");
            let cut = &b.records[1];
            assert!(cut.is_cut());
            assert_eq!(cut.len, long);
            let positions: Vec<_> = b.records.iter().map(|r| r.position).collect();
            let at = |line, offset| Position { line, offset };
            assert_eq!(
                positions,
                [
                    at(1, 0),
                    at(2, 8),
                    at(3, 8 + long + 2),
                    at(4, 8 + long + 11)
                ]
            );
            assert_eq!(b.records[3].len, 7);
            assert_eq!(b.end, at(4, 8 + long + 18));
        }
    }

    /// Around the limit: a line is kept whole up to the limit plus one byte (room for a
    /// `\r`) and cut past it; a cut line keeps its first KiB (all of it when shorter); the
    /// length never counts the `\r`; an oversize last line without newline is cut too.
    #[test]
    fn lines_around_the_limit_and_an_oversize_last_line() {
        let x = |n| "x".repeat(n);
        let text = format!(
            "{}\n{}\n{}\r\n{}\r\n{}\n{}\n{}",
            x(100),
            x(101),
            x(100),
            x(101),
            x(102),
            x(3000),
            x(2000)
        );
        for cap in [1, 64, 1 << 16] {
            let mut got = Vec::new();
            let mut end = Position::default();
            read_batches_with_limit(BufReader::with_capacity(cap, text.as_bytes()), 100, |b| {
                for r in &b.records {
                    got.push((b.line(r).len(), r.len, r.is_cut(), r.position.offset));
                }
                end = b.end;
                true
            })
            .unwrap();
            assert_eq!(
                got,
                [
                    (100, 100, false, 0),
                    (101, 101, false, 101),
                    (100, 100, false, 203),
                    (101, 101, false, 305),
                    (102, 102, false, 408),
                    (1024, 3000, true, 511),
                    (1024, 2000, true, 3512),
                ],
                "buffer of {cap} bytes"
            );
            assert_eq!(
                end,
                Position {
                    line: 7,
                    offset: text.len() as u64
                }
            );
        }
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
