//! Memory per key of the two big maps, measured from the process RSS.
//!
//! `cargo bench --bench memory` (add `-- 1000000` for a quicker run). Inserts N clicks into the
//! click index and N conversions into the dedup map (N = 10 M by default) and prints
//! RSS growth / N for each — the figure capacity planners multiply by their live key count.

use attribd::event::Status;
use attribd::state::click_index::{ClickIndex, IndexedClick};
use attribd::state::dedup::{Attribution, ConvEntry, DedupMap};
use attribd::state::keys::{click_key, conversion_key};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!("memory per key, {n} keys, {cores} cores");

    let before = rss_bytes();
    let index = ClickIndex::default();
    for i in 0..n {
        let key = click_key(&format!(
            "{:016x}{:08x}",
            i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            i
        ));
        index.insert_if_new(
            key,
            IndexedClick {
                ts_ms: 1_793_527_200_000 + i as i64,
                dims: (i % 5000) as u32,
                extras: (i % 400) as u32,
            },
        );
    }
    let after = rss_bytes();
    println!(
        "click index:  {:>6.1} bytes per indexed click ({} keys, RSS +{} MiB)",
        (after - before) as f64 / n as f64,
        index.len(),
        (after - before) >> 20
    );
    drop(index);

    let before = rss_bytes();
    let dedup = DedupMap::default();
    for i in 0..n {
        let key = conversion_key("tenant-1", &format!("ord-{i}"));
        let mut e = ConvEntry::new(1_793_527_200_000 + i as i64, Status::Approved, 12_340_000);
        e.resolve(Attribution::Attributed, (i % 5000) as u32, 3600);
        dedup.put(key, e);
    }
    let after = rss_bytes();
    println!(
        "dedup map:    {:>6.1} bytes per dedup key     ({} keys, RSS +{} MiB)",
        after.saturating_sub(before) as f64 / n as f64,
        dedup.len(),
        after.saturating_sub(before) >> 20
    );
}
