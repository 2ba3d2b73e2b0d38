//! NDJSON files (plain, `.gz`, `.zst`) and stdin.
//!
//! The reader splits the input into lines and ships them in [`RawBatch`]es; compression is chosen
//! from the file extension. Positions are 1-based line numbers and byte offsets in the
//! decompressed stream.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{BATCH_LINES, RawBatch};
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
pub fn read_batches(
    mut reader: impl BufRead,
    mut emit: impl FnMut(RawBatch) -> bool,
) -> io::Result<u64> {
    let mut batch = RawBatch::with_capacity(1 << 20, BATCH_LINES);
    let mut line = Vec::with_capacity(4096);
    let mut line_no = 0u64;
    let mut offset = 0u64;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let mut body: &[u8] = &line;
        if body.last() == Some(&b'\n') {
            body = &body[..body.len() - 1];
        }
        if body.last() == Some(&b'\r') {
            body = &body[..body.len() - 1];
        }
        batch.push_line(
            body,
            Position {
                line: line_no,
                offset,
            },
        );
        offset += n as u64;
        batch.end = Position {
            line: line_no,
            offset,
        };
        if batch.len() >= BATCH_LINES || batch.data.len() >= (1 << 20) {
            let full = std::mem::replace(&mut batch, RawBatch::with_capacity(1 << 20, BATCH_LINES));
            if !emit(full) {
                return Ok(line_no);
            }
        }
    }
    if !batch.is_empty() {
        emit(batch);
    }
    Ok(line_no)
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

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = Input::parse("/nonexistent/clicks.ndjson")
            .open()
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/clicks.ndjson"));
    }
}
