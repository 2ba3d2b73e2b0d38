//! The conversion dedup map: `(tenant_id, external_id)` → what the first postback established
//! and the current status.
//!
//! One entry must stay small (target ≤ 64 bytes per key including the map's overhead), so the
//! key is a 64-bit hash ([`crate::event::keys::conversion_key`]) and the value is 24 bytes: time,
//! version, status, attribution reason and a pending flag packed in one word, the amount, the
//! aggregate bucket's dimensions as one interned id, and the click-to-conversion delay.
//!
//! With the change log on, every write and sweep is logged for the next delta checkpoint
//! ([`super::changes`]); [`DedupMap::replay`] applies such logs on restore.

use dashmap::DashMap;

use super::changes::{ArchivedSweep, ChangeLog, DedupOp, Step, replay};
use crate::checkpoint::snapshot::ArchivedDedupSnap;

use crate::event::Status;
use crate::event::keys::BuildIdentity;
pub use crate::rows::Attribution;

const TS_BITS: u32 = 44;
const TS_MASK: u64 = (1 << TS_BITS) - 1;
const VERSION_SHIFT: u32 = 44;
const VERSION_MASK: u64 = 0x1FF;
/// Three bits after the version: the conversion's fraud flags ([`super::fraud`]; the
/// `outside_window` flag follows from the attribution and is not kept).
const FLAGS_SHIFT: u32 = 53;
const STATUS_SHIFT: u32 = 56;
const REASON_SHIFT: u32 = 58;
const PENDING_BIT: u64 = 1 << 60;
/// Three bits: how the conversion was valued in the reporting currency ([`crate::money`]'s
/// valuation code), so a status change is valued exactly like the first version.
const VALUE_SHIFT: u32 = 61;
/// Highest version an entry records; further status changes are refused as dead letters
/// (`state/conversions.rs`), so the newest row of a conversion is always its current one.
pub const MAX_VERSION: u32 = VERSION_MASK as u32;

/// The state of one deduplicated conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvEntry {
    packed: u64,
    /// Amount of the first postback, micro-units.
    pub amount_micros: i64,
    /// Interned [`super::interner::Dims`] of the conversion's aggregate bucket.
    pub dims: u32,
    /// Seconds from click to conversion, `u32::MAX` when there is no click.
    pub click_delay_s: u32,
}

impl ConvEntry {
    /// A first postback, waiting for attribution (`pending = true`) or already attributed.
    pub fn new(ts_ms: i64, status: Status, amount_micros: i64) -> ConvEntry {
        let mut e = ConvEntry {
            packed: 0,
            amount_micros,
            dims: 0,
            click_delay_s: u32::MAX,
        };
        e.set_ts(ts_ms);
        e.set_version(1);
        e.set_status(status);
        e.packed |= PENDING_BIT;
        e
    }

    /// An entry as a checkpoint holds it (full snapshot or delta log).
    pub fn from_archived(d: &ArchivedDedupSnap) -> ConvEntry {
        ConvEntry::from_parts(
            d.packed.to_native(),
            d.amount_micros.to_native(),
            d.dims.to_native(),
            d.click_delay_s.to_native(),
        )
    }

    /// The packed word, for snapshots.
    pub fn packed(&self) -> u64 {
        self.packed
    }

    /// Rebuilds an entry from its snapshot parts.
    pub fn from_parts(packed: u64, amount_micros: i64, dims: u32, click_delay_s: u32) -> ConvEntry {
        ConvEntry {
            packed,
            amount_micros,
            dims,
            click_delay_s,
        }
    }

    pub fn ts_ms(&self) -> i64 {
        (self.packed & TS_MASK) as i64
    }
    fn set_ts(&mut self, ts_ms: i64) {
        let ts = (ts_ms.max(0) as u64) & TS_MASK;
        self.packed = (self.packed & !TS_MASK) | ts;
    }
    pub fn version(&self) -> u32 {
        ((self.packed >> VERSION_SHIFT) & VERSION_MASK) as u32
    }
    pub fn set_version(&mut self, v: u32) {
        let v = (v.min(MAX_VERSION) as u64) << VERSION_SHIFT;
        self.packed = (self.packed & !(VERSION_MASK << VERSION_SHIFT)) | v;
    }
    pub fn status(&self) -> Status {
        Status::from_u8(((self.packed >> STATUS_SHIFT) & 0b11) as u8)
    }
    pub fn set_status(&mut self, s: Status) {
        self.packed = (self.packed & !(0b11 << STATUS_SHIFT)) | ((s as u64) << STATUS_SHIFT);
    }
    pub fn attribution(&self) -> Attribution {
        Attribution::from_bits((self.packed >> REASON_SHIFT) & 0b11)
    }
    /// `true` while the first postback waits in the pending buffer for its click.
    pub fn is_pending(&self) -> bool {
        self.packed & PENDING_BIT != 0
    }
    /// The conversion's fraud flags (`outside_window` from the attribution).
    pub fn flags(&self) -> u8 {
        let kept = ((self.packed >> FLAGS_SHIFT) & 0b111) as u8;
        let outside = if self.attribution() == Attribution::OutsideWindow {
            super::fraud::OUTSIDE_WINDOW
        } else {
            0
        };
        kept | outside
    }
    pub fn set_flags(&mut self, flags: u8) {
        let kept = u64::from(flags & 0b111);
        self.packed = (self.packed & !(0b111 << FLAGS_SHIFT)) | (kept << FLAGS_SHIFT);
    }
    /// The valuation code (`money::Valuation::code`; 0 = not valued).
    pub fn value_code(&self) -> u8 {
        ((self.packed >> VALUE_SHIFT) & 0b111) as u8
    }
    pub fn set_value_code(&mut self, code: u8) {
        self.packed =
            (self.packed & !(0b111 << VALUE_SHIFT)) | ((u64::from(code) & 0b111) << VALUE_SHIFT);
    }
    /// Records the attribution outcome and clears the pending flag.
    pub fn resolve(&mut self, attribution: Attribution, dims: u32, click_delay_s: u32) {
        self.packed &= !(PENDING_BIT | (0b11 << REASON_SHIFT));
        self.packed |= (attribution as u64) << REASON_SHIFT;
        self.dims = dims;
        self.click_delay_s = click_delay_s;
    }
}

/// The map itself; sharded so snapshots and metrics can read it concurrently.
#[derive(Debug)]
pub struct DedupMap {
    map: DashMap<u64, ConvEntry, BuildIdentity>,
    pub log: ChangeLog<DedupOp>,
}

impl Default for DedupMap {
    fn default() -> Self {
        DedupMap::with_capacity(0)
    }
}

impl DedupMap {
    /// A map with room for `n` keys (restore).
    pub fn with_capacity(n: usize) -> DedupMap {
        DedupMap {
            map: DashMap::with_capacity_and_hasher(n, BuildIdentity::default()),
            log: ChangeLog::default(),
        }
    }

    /// Applies the dedup logs of a chain of deltas (oldest first) on restore, sweeps folded
    /// into the last one (`changes::replay`): the last write of a key before that sweep is what the
    /// sweep judged, and writes after it stand.
    /// `false`: stopped part way by `stop`.
    pub fn replay(
        &mut self,
        logs: &[(&[ArchivedDedupSnap], &[ArchivedSweep])],
        stop: &std::sync::atomic::AtomicBool,
    ) -> bool {
        replay(
            logs,
            stop,
            |_, _| false,
            |step| match step {
                Step::Sweep(horizon) => self.evict_before(horizon),
                Step::Op(op) => {
                    self.map
                        .insert(op.key.to_native(), ConvEntry::from_archived(op));
                }
            },
        )
    }

    pub fn get(&self, key: u64) -> Option<ConvEntry> {
        self.map.get(&key).map(|e| *e)
    }

    /// An entry of a full snapshot, on restore: not logged (the snapshot holds it), and through
    /// `&self` so the map fills beside the click index.
    pub fn restore(&self, key: u64, entry: ConvEntry) {
        self.map.insert(key, entry);
    }

    pub fn put(&mut self, key: u64, entry: ConvEntry) {
        self.map.insert(key, entry);
        self.log.push(|| DedupOp {
            key,
            packed: entry.packed,
            amount_micros: entry.amount_micros,
            dims: entry.dims,
            click_delay_s: entry.click_delay_s,
        });
    }

    /// Every entry (for snapshots).
    pub fn for_each(&self, mut f: impl FnMut(u64, ConvEntry)) {
        for e in self.map.iter() {
            f(*e.key(), *e.value());
        }
    }

    /// Forgets conversions older than `horizon_ms` (the dedup window has passed).
    pub fn evict_before(&mut self, horizon_ms: i64) {
        self.map
            .retain(|_, e| e.is_pending() || e.ts_ms() >= horizon_ms);
        self.log.sweep(horizon_ms);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_round_trips() {
        let ts = 1_793_527_200_123;
        let mut e = ConvEntry::new(ts, Status::Pending, 12_340_000);
        assert_eq!(std::mem::size_of::<ConvEntry>(), 24);
        assert_eq!(e.ts_ms(), ts);
        assert_eq!(e.version(), 1);
        assert_eq!(e.status(), Status::Pending);
        assert!(e.is_pending());
        e.resolve(Attribution::OutsideWindow, 77, 3600);
        e.set_status(Status::Rejected);
        e.set_version(3);
        assert!(!e.is_pending());
        assert_eq!(e.attribution(), Attribution::OutsideWindow);
        assert_eq!(
            (e.ts_ms(), e.version(), e.status()),
            (ts, 3, Status::Rejected)
        );
        assert_eq!(
            (e.dims, e.click_delay_s, e.amount_micros),
            (77, 3600, 12_340_000)
        );
        e.set_version(10_000);
        assert_eq!(e.version(), MAX_VERSION);
        assert_eq!(e.ts_ms(), ts);
    }

    #[test]
    fn eviction_keeps_recent_and_pending() {
        let mut m = DedupMap::default();
        let mut old = ConvEntry::new(1_000, Status::Approved, 1);
        old.resolve(Attribution::Attributed, 0, 1);
        m.put(1, old);
        m.put(2, ConvEntry::new(1_000, Status::Approved, 1));
        let mut new = ConvEntry::new(9_000, Status::Approved, 1);
        new.resolve(Attribution::Attributed, 0, 1);
        m.put(3, new);
        m.evict_before(5_000);
        assert_eq!(m.get(1), None);
        assert!(m.get(2).is_some());
        assert!(m.get(3).is_some());
    }
}
