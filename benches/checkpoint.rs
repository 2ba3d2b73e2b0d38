//! Checkpoint cost: snapshot write and restore time and size for a given state.
//!
//! `cargo bench --bench checkpoint -- [CLICKS [KEYS [VISITORS]]]` (default: 10 M indexed
//! clicks, 1 M dedup keys, and unique visitors of two days of a 30-day window of those clicks,
//! i.e. CLICKS / 15). Writes to a temporary directory on the same disk as the target dir.

use std::time::Instant;

use attribd::bench::measure::synthetic_engine;
use attribd::checkpoint::{self, Snapshot};
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
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());

    // A realistic state: the click index, the dedup map and the unique visitors.
    let engine = synthetic_engine(clicks, keys, visitors)?;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;

    // The state stage's pause: copying the engine into a snapshot. Serializing, writing and
    // fsyncing it happen on the checkpoint writer's thread meanwhile.
    let t = Instant::now();
    let live = Snapshot {
        epoch: 2,
        engine: engine.snapshot(),
        ..Snapshot::default()
    };
    let pause = t.elapsed();
    let t = Instant::now();
    let size = checkpoint::write(dir.path(), &live)?;
    let write = t.elapsed();
    drop(live);
    drop(engine);

    let t = Instant::now();
    let (epoch, bytes) =
        checkpoint::load_latest(dir.path())?.ok_or_else(|| anyhow::anyhow!("no snapshot"))?;
    let read = t.elapsed();
    let t = Instant::now();
    let restored = Engine::restore(EngineConfig::default(), &checkpoint::view(&bytes)?.engine);
    let rebuild = t.elapsed();
    let sizes = restored.sizes();
    println!(
        "checkpoint of {clicks} indexed clicks + {keys} dedup keys + {visitors} unique visitors ({cores} cores):"
    );
    println!(
        "  state stage pause (copy):  {:>8.3} s",
        pause.as_secs_f64()
    );
    println!(
        "  write (off-thread, fsync): {:>8.3} s   {} MiB ({:.1} bytes per click)",
        write.as_secs_f64(),
        size >> 20,
        size as f64 / clicks as f64
    );
    println!(
        "  read + verify checksum:    {:>8.3} s   (epoch {epoch})",
        read.as_secs_f64()
    );
    println!(
        "  rebuild the maps:          {:>8.3} s   ({} clicks, {} keys)",
        rebuild.as_secs_f64(),
        sizes.indexed_clicks,
        sizes.dedup_keys
    );
    println!(
        "  restore total:             {:>8.3} s",
        (read + rebuild).as_secs_f64()
    );
    Ok(())
}
