//! The snapshot: everything the state stage knows, as plain rkyv-serializable data.
//!
//! The live structures (sharded maps, interners with `Arc<str>`) are converted to flat vectors
//! here and rebuilt on restore; the big vectors (click index, dedup map) are read straight from
//! the archived bytes without an intermediate copy.
//!
//! A snapshot is *full* (the big vectors hold the whole click index, dedup map and visitor
//! sets) or a *delta* ([`EngineSnap::delta`]: the big vectors are empty and [`DeltaSnap`] holds
//! what those structures did since the checkpoint `parent`; the catalog — strings, dimension
//! sets, `dims_by_hash` — holds what was added since). The small parts — positions, settings,
//! pending conversions, open aggregates, watermarks, counters — are whole in both kinds.

use rkyv::{Archive, Deserialize, Serialize};

use crate::rows::Measures;
use crate::state::changes::{ClickOp, Sweep, VisitorOp};

/// Bump when the layout below changes; older or newer snapshots are refused with a clear error.
/// 3: delta checkpoints. 4: reporting-currency measures (revenue_reporting, payout, profit).
/// 5: fraud signals (`flagged_conversions`, [`FraudSnap`]).
pub const FORMAT_VERSION: u32 = 5;

/// Measures per bucket in this format version. A bucket stores its measures as a fixed array, so
/// a measure added to `rows::Measures` changes the layout: bump [`FORMAT_VERSION`] with this.
const FORMAT_MEASURES: usize = 14;
const _: () = assert!(
    Measures::COUNT == FORMAT_MEASURES,
    "the measures changed the snapshot layout: bump FORMAT_VERSION and FORMAT_MEASURES"
);

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub epoch: u64,
    /// Lines and bytes consumed per stream (clicks, conversions) when the snapshot was taken.
    pub positions: [StreamPos; 2],
    /// Fluvio: next offset per (stream index, partition); stored with the checkpoint so a
    /// restored run reads exactly what comes after it.
    pub partition_offsets: Vec<(u8, u32, u64)>,
    /// What identifies each file input's consumed prefix (see `identity`).
    pub inputs: Vec<InputSnap>,
    /// The pipeline's semantic settings as `(key, value)` text (see `identity`).
    pub settings: Vec<(String, String)>,
    /// Taken after the inputs ended and everything pending was resolved and flushed. The
    /// checkpoint before it holds the state before that end; a rerun that finds more input
    /// resumes from there, so the longer input gives what a clean run of it gives.
    pub finished: bool,
    /// Always empty now; kept so the format stays the same. (It held the ClickHouse batches
    /// a finished end wrote; a rerun now takes back everything its instance wrote after the
    /// checkpoint it resumes from, `sink/clickhouse/sink.rs`.)
    pub final_batches: Vec<String>,
    pub engine: EngineSnap,
}

/// One file input at a checkpoint: what the consumed prefix was.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct InputSnap {
    /// 0 clicks, 1 conversions.
    pub stream: u8,
    /// The path as configured (for messages).
    pub name: String,
    /// Canonical path.
    pub path: String,
    /// 0 stdin, 1 plain file, 2 compressed file.
    pub kind: u8,
    /// Plain: bytes consumed. Compressed: size of the compressed file.
    pub bytes: u64,
    /// xxh3 of the first and the last 4 KiB of those bytes.
    pub head: u64,
    pub tail: u64,
    /// The consumed prefix ends with a newline (false: a last line without one).
    pub ends_line: bool,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamPos {
    pub lines: u64,
    pub bytes: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct EngineSnap {
    pub strings: Vec<String>,
    pub dims: Vec<[u32; 5]>,
    pub dims_by_hash: Vec<(u64, u32)>,
    pub clicks: Vec<ClickSnap>,
    pub extras: Vec<ExtrasSnap>,
    pub unique: Vec<(i64, Vec<u64>)>,
    pub dedup: Vec<DedupSnap>,
    pub pending: Vec<PendingSnap>,
    pub buckets: Vec<BucketSnap>,
    pub click_wm: i64,
    pub conv_wm: i64,
    pub clicks_closed: bool,
    pub convs_closed: bool,
    pub last_sweep_ms: i64,
    pub counters: CountersSnap,
    /// What the fraud signals remember (whole in every checkpoint).
    pub fraud: FraudSnap,
    /// A delta checkpoint: the changes of the big structures since `parent` (whose big
    /// vectors above are then empty).
    pub delta: Option<DeltaSnap>,
}

/// The fraud signals' state (`state::fraud`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct FraudSnap {
    /// (minute, visitor hash, clicks) of the open minutes.
    pub per_minute: Vec<(i64, u64, u32)>,
    /// (hash of tenant and IP, time it last burst).
    pub flagged_ips: Vec<(u64, i64)>,
    /// (click key, flags, click time) of flagged clicks still indexed.
    pub flagged_clicks: Vec<(u64, u8, i64)>,
}

impl FraudSnap {
    /// Sorts the lists, so the checkpoint's bytes do not depend on hash-map order (done by the
    /// checkpoint writer and the compaction, not in the state stage's pause).
    pub fn sort(&mut self) {
        self.per_minute.sort_unstable();
        self.flagged_ips.sort_unstable();
        self.flagged_clicks.sort_unstable();
    }
}

/// What the click index, the visitor sets and the dedup map did since checkpoint `parent`, in
/// order (`state::changes`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct DeltaSnap {
    /// The epoch this delta applies to; 0: an empty engine (a run's first checkpoint).
    pub parent: u64,
    /// The catalog only grows: a delta's `strings`, `dims` and `dims_by_hash` are the ones
    /// added since `parent`, the first of them with these ids.
    pub strings_from: u64,
    pub dims_from: u64,
    pub clicks: Vec<ClickOp>,
    pub click_sweeps: Vec<Sweep>,
    /// Extras created since `parent` (`id` unused: they are found by hash).
    pub new_extras: Vec<ExtrasSnap>,
    pub visitors: Vec<VisitorOp>,
    pub visitor_sweeps: Vec<Sweep>,
    pub dedup: Vec<DedupSnap>,
    pub dedup_sweeps: Vec<Sweep>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClickSnap {
    pub key: u64,
    pub ts_ms: i64,
    pub dims: u32,
    pub extras: u32,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtrasSnap {
    pub id: u32,
    pub hash: u64,
    pub last_used_ms: i64,
    pub device: Option<String>,
    pub subs: [Option<String>; 5],
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DedupSnap {
    pub key: u64,
    pub packed: u64,
    pub amount_micros: i64,
    pub dims: u32,
    pub click_delay_s: u32,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ConvRowSnap {
    pub tenant_id: String,
    pub external_id: String,
    pub version: u32,
    pub status: u8,
    pub previous_status: Option<u8>,
    pub click_id: String,
    pub ts_ms: i64,
    pub amount_micros: i64,
    pub currency: String,
    pub product_id: Option<String>,
    pub order_id: Option<String>,
    pub customer_id: Option<String>,
    pub metadata: Option<String>,
    pub attribution: u8,
    pub offer_id: String,
    pub affiliate_id: String,
    pub country: String,
    pub device: Option<String>,
    pub subs: [Option<String>; 5],
    pub click_ts_ms: Option<i64>,
    pub seconds_to_convert: Option<i64>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct PendingSnap {
    pub first: ConvRowSnap,
    pub click_key: u64,
    pub dedup_key: u64,
    pub release_ms: i64,
    pub follow_ups: Vec<ConvRowSnap>,
    pub duplicates: u32,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BucketSnap {
    pub minute_ms: i64,
    pub dims: u32,
    /// In column order (`Measures::to_array`).
    pub measures: [i64; Measures::COUNT],
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct CountersSnap {
    /// In the order of `state::counters` (`Counters::values`); an older snapshot without the
    /// counters added since restores them as 0.
    pub values: Vec<i64>,
    pub dead_letters: Vec<(String, u64)>,
}
