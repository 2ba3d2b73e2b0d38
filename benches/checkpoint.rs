//! Checkpoint cost at a given state size: what a checkpoint stops the state stage for, what it
//! writes, what compaction costs, and how long a restore takes.
//!
//! `cargo bench --bench checkpoint -- [CLICKS [KEYS [VISITORS [EVENTS [DELTAS]]]]]` (default:
//! 10 M indexed clicks, 1 M dedup keys, unique visitors of two days of a 30-day window of those
//! clicks (CLICKS / 15), checkpoint intervals of 600 000 events — 30 s at 20 000 events/s —
//! and 4 intervals). Writes to a temporary directory on the same disk as the target dir.
//!
//! Steps: the state is built and written as a full snapshot (what a compaction writes); then,
//! per interval, EVENTS new click and postback records go through the engine with its change
//! log on, and the checkpoint the pipeline takes is timed — the state stage's part (taking the
//! change log and copying the small parts: the pause) and the writer's (serialize, write,
//! fsync: off the state stage). Then a restore of the chain (full snapshot + DELTAS deltas) and
//! a compaction of it. For comparison, the pause of the full copy each checkpoint used to be.

use std::sync::Arc;
use std::time::{Duration, Instant};

use attribd::bench::measure::{peak_rss_bytes, rss_bytes, synthetic_engine};
use attribd::checkpoint::{self, Snapshot};
use attribd::event::Position;
use attribd::event::decode::{DecodeLimits, Decoder};
use attribd::raw::RawBatch;
use attribd::rows::SinkBatch;
use attribd::state::{Engine, EngineConfig};

fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let clicks = args.first().copied().unwrap_or(10_000_000);
    let keys = args.get(1).copied().unwrap_or(1_000_000);
    // Unique-visitor sets cover two UTC days; with a 30-day attribution window that is at
    // most 2/30 of the indexed clicks.
    let visitors = args.get(2).copied().unwrap_or(clicks / 15);
    let events = args.get(3).copied().unwrap_or(600_000);
    let deltas = args.get(4).copied().unwrap_or(4).max(1);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let cfg = EngineConfig::default();

    let mut engine = synthetic_engine(clicks, keys, visitors)?;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    println!(
        "checkpoint of {clicks} indexed clicks + {keys} dedup keys + {visitors} unique visitors, \
         intervals of {events} events ({cores} cores):"
    );

    // One hourly eviction sweep (on the state stage): the synthetic clicks span the 30-day
    // window, so the sweep evicts the oldest hour of them, as a live sweep does.
    let t = Instant::now();
    engine.evict(1_793_527_200_000 + 30 * 86_400_000 + 5 * 60_000 + 3_600_000);
    let sweep = t.elapsed();
    let evicted = clicks as usize - engine.sizes().indexed_clicks;

    // The full copy every checkpoint was before deltas (and what a compaction still writes).
    let t = Instant::now();
    let full = Snapshot {
        epoch: 1,
        engine: engine.snapshot(),
        ..Snapshot::default()
    };
    let full_copy = t.elapsed();
    let t = Instant::now();
    let full_bytes = checkpoint::write(dir.path(), &full)?;
    let full_write = t.elapsed();
    drop(full);

    // Intervals of live traffic, each checkpointed as a delta.
    engine.track_changes();
    let decoder = Decoder::new(Arc::from("bench"), DecodeLimits::default());
    let (mut pauses, mut writes, mut delta_bytes) = (Vec::new(), Vec::new(), Vec::new());
    let mut next = 0u64;
    for d in 0..deltas {
        feed(&mut engine, &decoder, &mut next, events);
        let t = Instant::now();
        let snap = Snapshot {
            epoch: d + 2,
            engine: engine.delta_snapshot(d + 1),
            ..Snapshot::default()
        };
        pauses.push(t.elapsed());
        let t = Instant::now();
        delta_bytes.push(checkpoint::write(dir.path(), &snap)?);
        writes.push(t.elapsed());
    }
    let sizes = engine.sizes();
    let live_rss = rss_bytes();
    drop(engine);

    let t = Instant::now();
    let chain = checkpoint::load_latest(dir.path())?.ok_or_else(|| anyhow::anyhow!("none"))?;
    let read = t.elapsed();
    let t = Instant::now();
    let restored = Engine::restore(cfg, &chain.engines()?);
    let rebuild = t.elapsed();
    let (files, epoch) = (chain.len(), chain.epoch);
    drop(chain);
    anyhow::ensure!(
        restored.sizes() == sizes,
        "the restored state differs from the live one: {:?} vs {sizes:?}",
        restored.sizes()
    );
    drop(restored);
    // The compaction's own memory: the peak RSS is reset (Linux: clear_refs 5) with nothing
    // else held, so the peak afterwards is the compaction's.
    let idle_rss = rss_bytes();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let t = Instant::now();
    let compacted = attribd::pipeline::compaction::materialize(dir.path(), epoch, epoch, cfg)?;
    let compaction = t.elapsed();
    let compaction_rss = peak_rss_bytes().saturating_sub(idle_rss);

    let s = |d: Duration| d.as_secs_f64();
    let max = |v: &[Duration]| v.iter().copied().max().unwrap_or_default();
    let mean_bytes = delta_bytes.iter().sum::<u64>() / deltas;
    println!(
        "  state stage pause, delta (take the change log + small parts): mean {:.4} s, max {:.4} s",
        s(pauses.iter().sum::<Duration>()) / deltas as f64,
        s(max(&pauses))
    );
    println!(
        "  eviction sweep (state stage, once per event-hour): {:.4} s, {evicted} clicks evicted",
        s(sweep)
    );
    println!(
        "  delta write (off-thread, fsync): mean {:.3} s, {:.1} MiB = {:.1} bytes per event",
        s(writes.iter().sum::<Duration>()) / deltas as f64,
        mean_bytes as f64 / 1048576.0,
        mean_bytes as f64 / events as f64
    );
    println!(
        "  full snapshot (compaction's output): {:.1} MiB, write {:.3} s; before deltas every checkpoint paused {:.3} s to copy it",
        full_bytes as f64 / 1048576.0,
        s(full_write),
        s(full_copy)
    );
    println!(
        "  restore of the chain ({files} files): read + verify {:.3} s, rebuild {:.3} s, total {:.3} s ({} clicks, {} keys)",
        s(read),
        s(rebuild),
        s(read + rebuild),
        sizes.indexed_clicks,
        sizes.dedup_keys
    );
    println!(
        "  compaction (load chain, rebuild, copy, write full): {:.3} s, {:.1} MiB; memory at its peak {:.0} MiB (the live process held {:.0} MiB)",
        s(compaction),
        compacted as f64 / 1048576.0,
        compaction_rss as f64 / 1048576.0,
        live_rss as f64 / 1048576.0
    );
    Ok(())
}

/// `events` records through the engine: new clicks at the end of the synthetic state's
/// window, and a postback for every 50th.
fn feed(engine: &mut Engine, decoder: &Decoder, next: &mut u64, events: u64) {
    const T0: i64 = 1_793_527_200_000 + 30 * 86_400_000;
    let (mut clicks, mut convs) = (RawBatch::default(), RawBatch::default());
    let mut out = SinkBatch::default();
    let mut flush = |engine: &mut Engine, clicks: &mut RawBatch, convs: &mut RawBatch| {
        engine.on_clicks(decoder.decode_clicks(clicks).0, &mut out);
        engine.on_conversions(decoder.decode_conversions(convs).0, &mut out);
        *clicks = RawBatch::default();
        *convs = RawBatch::default();
        out = SinkBatch::default();
    };
    for _ in 0..events {
        let i = *next;
        *next += 1;
        let ts = T0 + i as i64 * 3;
        let at = Position { line: i, offset: 0 };
        if i % 50 == 49 {
            let line = format!(
                r#"{{"click_id":"b-{}","external_id":"x-{i}","status":"approved","ts":{ts},"amount":"12.5"}}"#,
                i - 1
            );
            convs.push_line(line.as_bytes(), at);
        } else {
            let line = format!(
                r#"{{"click_id":"b-{i}","ts":{ts},"offer_id":"o{}","affiliate_id":"a{}","country":"de","ip":"10.1.{}.{}","sub1":"s{}"}}"#,
                i % 50,
                i % 20,
                (i >> 8) % 256,
                i % 256,
                i % 1000
            );
            clicks.push_line(line.as_bytes(), at);
        }
        if clicks.len() >= 4096 {
            flush(engine, &mut clicks, &mut convs);
        }
    }
    flush(engine, &mut clicks, &mut convs);
}
