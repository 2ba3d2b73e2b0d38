//! The HTTP source's write-ahead log: what the door has answered 202 for, durable before the
//! answer, replayable after a crash.
//!
//! One log per stream, in `OUT/_state/wal/<stream>/`, made of segment files named by the offset
//! of their first record (`00000000000000000042.wal`). Records are numbered from 0 in the
//! order they were appended; the number is the record's *offset*, exactly as a Fluvio
//! partition's (the HTTP stream is one partition, 0, for the rest of the pipeline), so a
//! checkpoint records the next offset to read and a restart replays from it.
//!
//! An entry is one request's records:
//!
//! ```text
//! u32 payload length | u32 CRC-32 of the payload | payload:
//!     u64 offset of the first record | u16 request-id length | request id |
//!     u128 fingerprint of the request as received | u32 record count |
//!     (u32 length | bytes) per record
//! ```
//!
//! Appends are buffered and made durable together by [`Wal::sync`] (group commit: one
//! `fdatasync` for every request that arrived meanwhile). A crash can leave the last entry
//! torn; since nothing in it was acknowledged, opening the log cuts the last segment back to
//! its last whole entry. A bad entry anywhere else is damage, reported with the file. Segments
//! whose records a checkpoint covers are deleted ([`Wal::truncate_before`]).

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

const HEADER: usize = 8;

/// One request's records as read back.
#[derive(Debug, PartialEq)]
pub struct Entry {
    pub first: u64,
    pub request_id: String,
    /// What the request was as received (how a retry of it is recognised).
    pub fingerprint: u128,
    pub records: Vec<Vec<u8>>,
}

/// An open log, appending to its newest segment.
pub struct Wal {
    dir: PathBuf,
    out: BufWriter<File>,
    segment_bytes: u64,
    max_segment_bytes: u64,
    /// Offset the next record gets.
    next: u64,
    /// First offsets of the segments, oldest first (the last is the one appended to).
    segments: Vec<u64>,
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.wal"))
}

/// First offsets of the segments in `dir`, oldest first.
fn list(dir: &Path) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if let Some(first) = name
            .strip_suffix(".wal")
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push(first);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Reads the entries of one segment; the byte length of its whole entries, and whether
/// something after them is not a whole entry.
fn read_segment(path: &Path, mut f: impl FnMut(Entry) -> Result<bool>) -> Result<(u64, bool)> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .with_context(|| format!("reading {}", path.display()))?;
    let mut at = 0usize;
    while at < bytes.len() {
        let Some(entry) = parse_entry(&bytes[at..]) else {
            // A torn write can only be the last entry. A bad entry with more after it is
            // damage: cutting there would drop entries that were acknowledged.
            let declared = bytes
                .get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .map(|b| u32::from_le_bytes(b) as usize);
            if declared.is_some_and(|len| at + HEADER + len < bytes.len()) {
                bail!(
                    "{} is damaged at byte {at} (a bad entry with more after it)",
                    path.display()
                );
            }
            return Ok((at as u64, true));
        };
        let (entry, len) = entry;
        at += len;
        if !f(entry)? {
            break;
        }
    }
    Ok((at as u64, false))
}

/// One entry at the start of `b` and its length; `None` if `b` does not start with a whole,
/// intact entry.
fn parse_entry(b: &[u8]) -> Option<(Entry, usize)> {
    let len = u32::from_le_bytes(b.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(b.get(4..8)?.try_into().ok()?);
    let payload = b.get(HEADER..HEADER + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let mut p = payload;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, rest) = p.split_at_checked(n)?;
        p = rest;
        Some(head)
    };
    let first = u64::from_le_bytes(take(8)?.try_into().ok()?);
    let id_len = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
    let request_id = String::from_utf8(take(id_len)?.to_vec()).ok()?;
    let fingerprint = u128::from_le_bytes(take(16)?.try_into().ok()?);
    let n = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
    let mut records = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        records.push(take(len)?.to_vec());
    }
    Some((
        Entry {
            first,
            request_id,
            fingerprint,
            records,
        },
        HEADER + len,
    ))
}

impl Wal {
    /// Opens (creating) the log in `dir`: finds the next offset and cuts a torn last entry.
    pub fn open(dir: &Path, max_segment_bytes: u64) -> Result<Wal> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut segments = list(dir)?;
        let mut next = 0;
        if let Some(&last) = segments.last() {
            let path = segment_path(dir, last);
            next = last;
            let (whole, torn) = read_segment(&path, |e| {
                next = e.first + e.records.len() as u64;
                Ok(true)
            })?;
            if torn {
                tracing::warn!(file = %path.display(), keep_bytes = whole, "write-ahead log: cutting a torn last entry (never acknowledged)");
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| {
                        f.set_len(whole)?;
                        f.sync_all()
                    })
                    .with_context(|| format!("cutting {}", path.display()))?;
            }
        } else {
            segments.push(0);
        }
        let first = *segments.last().unwrap_or(&0);
        let path = segment_path(dir, first);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let segment_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        sync_dir(dir)?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            out: BufWriter::with_capacity(1 << 20, file),
            segment_bytes,
            max_segment_bytes,
            next,
            segments,
        })
    }

    /// Offset the next record gets (= records ever appended).
    pub fn next_offset(&self) -> u64 {
        self.next
    }

    /// Appends one request's records (buffered; durable after [`Wal::sync`]); returns the
    /// offset of the first.
    pub fn append(
        &mut self,
        request_id: &str,
        fingerprint: u128,
        records: &[Vec<u8>],
    ) -> Result<u64> {
        let first = self.next;
        let id = &request_id.as_bytes()[..request_id.len().min(u16::MAX as usize)];
        let mut payload =
            Vec::with_capacity(14 + id.len() + records.iter().map(|r| r.len() + 4).sum::<usize>());
        payload.extend_from_slice(&first.to_le_bytes());
        payload.extend_from_slice(&(id.len() as u16).to_le_bytes());
        payload.extend_from_slice(id);
        payload.extend_from_slice(&fingerprint.to_le_bytes());
        payload.extend_from_slice(&(records.len() as u32).to_le_bytes());
        for r in records {
            payload.extend_from_slice(&(r.len() as u32).to_le_bytes());
            payload.extend_from_slice(r);
        }
        let len = u32::try_from(payload.len()).context("a request too large for one log entry")?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out
            .write_all(&crc32fast::hash(&payload).to_le_bytes())?;
        self.out.write_all(&payload)?;
        self.segment_bytes += (HEADER + payload.len()) as u64;
        self.next += records.len() as u64;
        Ok(first)
    }

    /// Makes every append so far durable; then, if the segment is full, starts the next one.
    pub fn sync(&mut self) -> Result<()> {
        self.out.flush().context("writing the write-ahead log")?;
        self.out
            .get_ref()
            .sync_data()
            .context("fsync of the write-ahead log")?;
        if self.segment_bytes >= self.max_segment_bytes {
            let path = segment_path(&self.dir, self.next);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            sync_dir(&self.dir)?;
            self.out = BufWriter::with_capacity(1 << 20, file);
            self.segment_bytes = 0;
            self.segments.push(self.next);
        }
        Ok(())
    }

    /// Reads back every entry that holds a record at or after `from`, oldest first, until `f`
    /// says stop. (Records before `from` in the first entry are the caller's to skip.)
    pub fn replay(&self, from: u64, mut f: impl FnMut(Entry) -> Result<bool>) -> Result<()> {
        let start = self.segments.partition_point(|&first| first <= from);
        let start = start.saturating_sub(1);
        for (i, &first) in self.segments.iter().enumerate().skip(start) {
            let path = segment_path(&self.dir, first);
            let mut go_on = true;
            let (_, torn) = read_segment(&path, |e| {
                if e.first + e.records.len() as u64 <= from {
                    return Ok(true);
                }
                go_on = f(e)?;
                Ok(go_on)
            })?;
            if torn && i + 1 < self.segments.len() {
                bail!(
                    "{} is damaged (an entry that is not whole, before the newest segment)",
                    path.display()
                );
            }
            if !go_on {
                break;
            }
        }
        Ok(())
    }

    /// Deletes the segments whose every record is before `covered` (a checkpoint's next
    /// offset); never the one appended to. Returns how many were deleted.
    pub fn truncate_before(&mut self, covered: u64) -> Result<usize> {
        let mut removed = 0;
        // Segment i holds offsets [segments[i], segments[i + 1]).
        while self.segments.len() > 1 && self.segments[1] <= covered {
            let path = segment_path(&self.dir, self.segments[0]);
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            self.segments.remove(0);
            removed += 1;
        }
        Ok(removed)
    }

    /// Offset of the oldest record still in the log.
    pub fn first_offset(&self) -> u64 {
        self.segments.first().copied().unwrap_or(0)
    }

    /// Segment files on disk.
    pub fn segments(&self) -> usize {
        self.segments.len()
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(n: usize, tag: &str) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("{tag}-{i}").into_bytes()).collect()
    }

    fn read_all(w: &Wal, from: u64) -> Vec<Entry> {
        let mut out = Vec::new();
        w.replay(from, |e| {
            out.push(e);
            Ok(true)
        })
        .unwrap();
        out
    }

    #[test]
    fn appends_replay_from_an_offset_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(w.append("a", 7, &recs(3, "a")).unwrap(), 0);
        assert_eq!(w.append("b", 7, &recs(2, "b")).unwrap(), 3);
        w.sync().unwrap();
        drop(w);
        let w = Wal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(w.next_offset(), 5);
        let all = read_all(&w, 0);
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].request_id, "b");
        assert_eq!(all[1].records, recs(2, "b"));
        // From offset 3 only the second entry holds records at or after it.
        assert_eq!(read_all(&w, 3).len(), 1);
        assert!(read_all(&w, 5).is_empty());
    }

    #[test]
    fn a_torn_last_entry_is_cut_and_the_log_goes_on_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), 1 << 20).unwrap();
        w.append("a", 7, &recs(2, "a")).unwrap();
        w.append("b", 7, &recs(2, "b")).unwrap();
        w.sync().unwrap();
        drop(w);
        let path = segment_path(dir.path(), 0);
        let len = fs::metadata(&path).unwrap().len();
        // The crash cut the second entry short.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let mut w = Wal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(w.next_offset(), 2);
        assert_eq!(w.append("c", 7, &recs(1, "c")).unwrap(), 2);
        w.sync().unwrap();
        let ids: Vec<String> = read_all(&w, 0).into_iter().map(|e| e.request_id).collect();
        assert_eq!(ids, ["a", "c"]);
    }

    #[test]
    fn segments_roll_and_covered_ones_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), 4096).unwrap();
        // 400 records of ~10 bytes a request: a segment rolls every second request.
        for i in 0..10 {
            w.append(&format!("r{i}"), 7, &recs(400, "x")).unwrap();
            w.sync().unwrap();
        }
        assert!(w.segments() > 3, "{}", w.segments());
        let before = w.segments();
        // Nothing covered: nothing goes.
        assert_eq!(w.truncate_before(0).unwrap(), 0);
        let removed = w.truncate_before(2000).unwrap();
        assert!(removed > 0 && w.segments() == before - removed);
        // What is left still holds every record from 2000 on.
        let first = read_all(&w, 2000);
        assert!(first[0].first <= 2000);
        assert_eq!(first.last().unwrap().first, 3600);
        // Everything covered: the segment appended to stays.
        w.truncate_before(4000).unwrap();
        assert_eq!(w.segments(), 1);
    }

    #[test]
    fn damage_before_the_newest_segment_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), 4096).unwrap();
        for i in 0..10 {
            w.append(&format!("r{i}"), 7, &recs(400, "x")).unwrap();
            w.sync().unwrap();
        }
        let oldest = segment_path(dir.path(), 0);
        let mut bytes = fs::read(&oldest).unwrap();
        bytes[20] ^= 0xff;
        fs::write(&oldest, bytes).unwrap();
        let err = w.replay(0, |_| Ok(true)).unwrap_err().to_string();
        assert!(err.contains("00000000000000000000.wal"), "{err}");
    }
}
