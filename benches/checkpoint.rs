//! Checkpoint cost: snapshot write and restore time and size for a given state.
//!
//! `cargo bench --bench checkpoint` (default: 10 M indexed clicks, 1 M dedup keys; pass two
//! numbers to change them). Writes to a temporary directory on the same disk as the target dir.

use std::time::Instant;

use attribd::checkpoint::snapshot::{ClickSnap, DedupSnap};
use attribd::checkpoint::{self, Snapshot};
use attribd::state::{Engine, EngineConfig};

fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let clicks = args.first().copied().unwrap_or(10_000_000);
    let keys = args.get(1).copied().unwrap_or(1_000_000);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());

    // A realistic state: the click index, the dedup map and a day of unique visitors.
    let mut snap = Snapshot {
        epoch: 1,
        ..Snapshot::default()
    };
    snap.engine.strings = vec![String::new()];
    snap.engine.dims = vec![[0; 5]];
    let t0 = 1_793_527_200_000i64;
    snap.engine.clicks = (0..clicks)
        .map(|i| ClickSnap {
            key: i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ts_ms: t0 + i as i64,
            dims: 0,
            extras: 0,
        })
        .collect();
    snap.engine.dedup = (0..keys)
        .map(|i| DedupSnap {
            key: i.wrapping_mul(0xD6E8_FEB8_6659_FD93),
            packed: (t0 as u64) | (1 << 44),
            amount_micros: 12_340_000,
            dims: 0,
            click_delay_s: 600,
        })
        .collect();
    snap.engine.unique = vec![(
        20_758,
        (0..clicks)
            .map(|i| (i ^ 0x5555).wrapping_mul(0xA076_1D64_78BD_642F))
            .collect(),
    )];
    snap.engine.click_wm = t0;
    snap.engine.conv_wm = t0;

    // Snapshot from a live engine, as the pipeline does it (restore first to have one).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&snap)?;
    let engine = Engine::restore(EngineConfig::default(), &checkpoint::view(&bytes)?.engine);
    drop(bytes);
    drop(snap);

    let t = Instant::now();
    let live = Snapshot {
        epoch: 2,
        engine: engine.snapshot(),
        ..Snapshot::default()
    };
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
    println!("checkpoint of {clicks} indexed clicks + {keys} dedup keys ({cores} cores):");
    println!(
        "  snapshot + write (fsync):  {:>8.3} s   {} MiB ({:.1} bytes per click)",
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
