//! Memory per key of the two big maps, measured from the process RSS.
//!
//! `cargo bench --bench memory` (add `-- 1000000` for a quicker run). Inserts N clicks into the
//! click index and N conversions into the dedup map (N = 10 M by default) and prints
//! RSS growth / N for each — the figure capacity planners multiply by their live key count.
//! The measurement is `attribd bench`'s (`attribd::bench::measure::memory`).

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!("memory per key, {n} keys, {cores} cores");
    let m = attribd::bench::measure::memory(n);
    let mib = |v: &[(u64, u64)]| v.last().map_or(0, |&(_, b)| b >> 20);
    println!(
        "click index:  {:>6.1} bytes per indexed click (RSS +{} MiB)",
        m.bytes_per_click,
        mib(&m.click_index)
    );
    println!(
        "dedup map:    {:>6.1} bytes per dedup key     (RSS +{} MiB)",
        m.bytes_per_dedup_key,
        mib(&m.dedup)
    );
}
