//! The click index: `click_id → (click time, click profile)` for every click inside the
//! attribution window. Conversions look their click up here.
//!
//! An entry is a `u64` key hash plus 16 bytes of [`IndexedClick`]. The attribution columns a
//! conversion inherits repeat across many clicks, so they are stored once and each click holds
//! two 4-byte ids: the aggregate dimensions (tenant, offer, affiliate, country — interned in
//! [`super::interner::DimsTable`], bounded by the business) and the [`Extras`] (device,
//! sub1–sub5 — in an [`ExtrasTable`], evicted with the clicks that use them, because sub values
//! can be as varied as the traffic).
//!
//! With the change log on, every click record the index sees and every eviction sweep is
//! logged ([`super::changes`]) for the next delta checkpoint, and [`ClickIndex::replay`]
//! applies such logs on restore.

use std::collections::HashMap;
use std::sync::Arc;

use rustc_hash::FxBuildHasher;

use super::changes::{ArchivedClickOp, ArchivedSweep, ChangeLog, ClickOp, Log, Step, replay};
use super::key_table::KeyTable;
use crate::checkpoint::snapshot::ArchivedClickSnap;
use crate::event::keys::BuildIdentity;
use crate::event::time::MS_PER_HOUR;

fn hour_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(MS_PER_HOUR)
}

/// Keys filed by the event-time hour of their entry's time, so that an eviction sweep visits
/// the hours it evicts instead of the whole map (a scan of 30 M clicks stopped the state stage
/// for ~0.1 s every event-hour). A key stays filed under the hour it was filed at; when its
/// entry is replaced or its time moves on, the old filing goes stale and the sweep drops it.
#[derive(Debug)]
struct HourBuckets<K> {
    hours: HashMap<i64, Vec<K>, FxBuildHasher>,
    newest: i64,
}

impl<K> Default for HourBuckets<K> {
    fn default() -> Self {
        HourBuckets {
            hours: HashMap::default(),
            newest: i64::MIN,
        }
    }
}

impl<K: Copy> HourBuckets<K> {
    /// Every `(time, key)` of `entries` filed, each hour's vector allocated at its final size.
    fn of<T>(entries: &[T], entry: impl Fn(&T) -> (i64, K)) -> HourBuckets<K> {
        let mut counts: HashMap<i64, usize, FxBuildHasher> = HashMap::default();
        for e in entries {
            *counts.entry(hour_of(entry(e).0)).or_default() += 1;
        }
        let mut b = HourBuckets::<K> {
            hours: counts
                .into_iter()
                .map(|(hour, n)| (hour, Vec::with_capacity(n)))
                .collect(),
            newest: i64::MIN,
        };
        for e in entries {
            let (ts_ms, key) = entry(e);
            b.file(ts_ms, key);
        }
        b
    }

    fn file(&mut self, ts_ms: i64, key: K) {
        let hour = hour_of(ts_ms);
        self.newest = self.newest.max(hour);
        self.hours.entry(hour).or_default().push(key);
    }

    /// Visits every key filed in an hour up to that of `horizon_ms` (the last of them only
    /// partly before the horizon): `keep(key, boundary)` evicts what is due and says whether
    /// the key stays filed — only an entry of the horizon's own hour that is not older than
    /// the horizon does.
    fn sweep(&mut self, horizon_ms: i64, mut keep: impl FnMut(K, bool) -> bool) {
        let cut = hour_of(horizon_ms);
        let due: Vec<i64> = self.hours.keys().copied().filter(|h| *h <= cut).collect();
        for hour in due {
            if let Some(keys) = self.hours.remove(&hour) {
                let kept: Vec<K> = keys.into_iter().filter(|k| keep(*k, hour == cut)).collect();
                if !kept.is_empty() {
                    self.hours.insert(hour, kept);
                }
            }
        }
        // Hours that no longer fill (all but the newest two) give their spare capacity back.
        for (hour, keys) in self.hours.iter_mut() {
            if *hour < self.newest - 1 && keys.capacity() > keys.len() + keys.len() / 4 {
                keys.shrink_to_fit();
            }
        }
    }
}

/// What the index keeps per click.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexedClick {
    pub ts_ms: i64,
    /// Interned [`super::interner::Dims`] of the click (its currency is empty).
    pub dims: u32,
    /// Id in the [`ExtrasTable`].
    pub extras: u32,
}

/// The attribution columns besides the aggregate dimensions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Extras {
    pub device: Option<Arc<str>>,
    pub subs: [Option<Arc<str>>; 5],
}

/// Deduplicated [`Extras`] with last-use tracking for eviction.
#[derive(Debug, Default)]
pub struct ExtrasTable {
    by_hash: HashMap<u64, u32, BuildIdentity>,
    slots: Vec<Option<(u64, Extras, i64)>>,
    free: Vec<u32>,
    /// Ids by the hour of their last use (filed again when it moves to a later hour).
    by_hour: HourBuckets<u32>,
}

impl ExtrasTable {
    /// Returns the id of the extras with this hash, creating them with `make` if new, and marks
    /// them used at `ts_ms`.
    pub fn intern(&mut self, hash: u64, ts_ms: i64, make: impl FnOnce() -> Extras) -> u32 {
        self.intern_new(hash, ts_ms, make).0
    }

    /// [`Self::intern`], and whether the extras were created by this call.
    fn intern_new(&mut self, hash: u64, ts_ms: i64, make: impl FnOnce() -> Extras) -> (u32, bool) {
        if let Some(&id) = self.by_hash.get(&hash) {
            if let Some((_, _, last)) = &mut self.slots[id as usize]
                && ts_ms > *last
            {
                if hour_of(ts_ms) > hour_of(*last) {
                    self.by_hour.file(ts_ms, id);
                }
                *last = ts_ms;
            }
            return (id, false);
        }
        let entry = Some((hash, make(), ts_ms));
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = entry;
                id
            }
            None => {
                self.slots.push(entry);
                (self.slots.len() - 1) as u32
            }
        };
        self.by_hash.insert(hash, id);
        self.by_hour.file(ts_ms, id);
        (id, true)
    }

    pub fn get(&self, id: u32) -> Option<&Extras> {
        self.slots
            .get(id as usize)
            .and_then(|s| s.as_ref())
            .map(|(_, p, _)| p)
    }

    /// Drops extras last used before `horizon_ms`.
    pub fn evict_before(&mut self, horizon_ms: i64) {
        let (slots, by_hash, free) = (&mut self.slots, &mut self.by_hash, &mut self.free);
        self.by_hour.sweep(horizon_ms, |id, boundary| {
            let Some(slot) = slots.get_mut(id as usize) else {
                return false;
            };
            match slot {
                Some((hash, _, last)) if *last < horizon_ms => {
                    by_hash.remove(hash);
                    *slot = None;
                    free.push(id);
                    false
                }
                Some((_, _, last)) => boundary && hour_of(*last) == hour_of(horizon_ms),
                None => false,
            }
        });
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Live entries as `(id, hash, extras, last used)`.
    pub fn entries(&self) -> impl Iterator<Item = (u32, u64, &Extras, i64)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(id, s)| s.as_ref().map(|(h, e, t)| (id as u32, *h, e, *t)))
    }

    /// Puts an entry back under its old id (restore).
    pub fn restore(&mut self, id: u32, hash: u64, extras: Extras, last_used_ms: i64) {
        let id_usize = id as usize;
        if self.slots.len() <= id_usize {
            self.slots.resize_with(id_usize + 1, || None);
        }
        self.slots[id_usize] = Some((hash, extras, last_used_ms));
        self.by_hash.insert(hash, id);
        self.by_hour.file(last_used_ms, id);
    }

    /// Rebuilds the free list after [`Self::restore`] calls.
    pub fn finish_restore(&mut self) {
        self.free = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_none())
            .map(|(i, _)| i as u32)
            .rev()
            .collect();
    }
}

/// Shards of the click map; a power of two.
const SHARDS: usize = 16;

/// `click key → click`, in [`SHARDS`] [`KeyTable`]s chosen by bits 48–51 of the key. Only the
/// state thread touches it, so it takes no locks: a `DashMap` here spent a locked instruction
/// per click that also made the processor wait for the entry's cache miss (releasing the
/// shard lock was 3 % of a 5 M-click run's samples). The shards keep what `DashMap`'s gave: a
/// restore fills them on two threads without sharing one, and a table that outgrows its
/// slots rehashes a sixteenth of the clicks at a time.
#[derive(Debug)]
struct ClickMap {
    shards: [KeyTable<IndexedClick>; SHARDS],
}

impl ClickMap {
    fn with_capacity(n: usize) -> ClickMap {
        ClickMap {
            shards: std::array::from_fn(|_| KeyTable::with_capacity(n.div_ceil(SHARDS))),
        }
    }

    fn shard_of(key: u64) -> usize {
        (key >> 48) as usize % SHARDS
    }

    fn shard(&self, key: u64) -> &KeyTable<IndexedClick> {
        &self.shards[Self::shard_of(key)]
    }

    fn shard_mut(&mut self, key: u64) -> &mut KeyTable<IndexedClick> {
        &mut self.shards[Self::shard_of(key)]
    }

    fn len(&self) -> usize {
        self.shards.iter().map(KeyTable::len).sum()
    }
}

/// The index itself.
#[derive(Debug)]
pub struct ClickIndex {
    map: ClickMap,
    /// Keys by the hour of their click, for eviction sweeps.
    by_hour: HourBuckets<u64>,
    pub extras: ExtrasTable,
    /// Click records and sweeps since the last checkpoint (when on).
    pub log: ChangeLog<ClickOp>,
    /// Extras created since the last checkpoint, by hash (when the log is on).
    pub new_extras: Vec<(u64, Extras)>,
}

impl Default for ClickIndex {
    fn default() -> Self {
        ClickIndex::with_capacity(0)
    }
}

/// What the click index changed since the last checkpoint.
#[derive(Debug, Default)]
pub struct ClickChanges {
    pub log: Log<ClickOp>,
    pub new_extras: Vec<(u64, Extras)>,
}

impl ClickIndex {
    /// An index with room for `n` clicks (restore: no rehashing while it fills).
    pub fn with_capacity(n: usize) -> ClickIndex {
        ClickIndex {
            map: ClickMap::with_capacity(n),
            by_hour: HourBuckets::default(),
            extras: ExtrasTable::default(),
            log: ChangeLog::default(),
            new_extras: Vec::new(),
        }
    }

    /// A click record: marks its extras used (created with `make` when new) and indexes the
    /// click unless its id is already there. Returns the click and whether it was new.
    pub fn add(
        &mut self,
        key: u64,
        ts_ms: i64,
        dims: u32,
        extras_hash: u64,
        make: impl FnOnce() -> Extras,
    ) -> (IndexedClick, bool) {
        let (extras, created) = self.extras.intern_new(extras_hash, ts_ms, make);
        if created
            && self.log.on
            && let Some(e) = self.extras.get(extras)
        {
            self.new_extras.push((extras_hash, e.clone()));
        }
        let click = IndexedClick {
            ts_ms,
            dims,
            extras,
        };
        let inserted = self.insert_if_new(key, click);
        self.log.push(|| ClickOp {
            key,
            ts_ms,
            extras_hash,
            dims,
            inserted,
        });
        (click, inserted)
    }

    /// The changes since the last call (the log goes on).
    pub fn take_changes(&mut self) -> ClickChanges {
        ClickChanges {
            log: self.log.take(),
            new_extras: std::mem::take(&mut self.new_extras),
        }
    }

    /// Applies the click logs of a chain of deltas (oldest first) on restore; `new_extras`
    /// holds every extras the chain created, by hash. Sweeps are folded into the chain's last
    /// one (`changes::replay`). Returns how many extras were needed and not found (none, unless the
    /// files disagree with each other), or `None` when `stop` stopped it part way.
    pub fn replay(
        &mut self,
        logs: &[(&[ArchivedClickOp], &[ArchivedSweep])],
        new_extras: &HashMap<u64, Extras, BuildIdentity>,
        stop: &std::sync::atomic::AtomicBool,
    ) -> Option<u64> {
        let mut missing = 0;
        let done = replay(
            logs,
            stop,
            |op, horizon| op.ts_ms.to_native() < horizon,
            |step| match step {
                Step::Sweep(horizon) => self.evict_before(horizon),
                Step::Op(op) => {
                    let (hash, ts_ms) = (op.extras_hash.to_native(), op.ts_ms.to_native());
                    let extras = self.extras.intern(hash, ts_ms, || {
                        new_extras.get(&hash).cloned().unwrap_or_else(|| {
                            missing += 1;
                            Extras::default()
                        })
                    });
                    if op.inserted {
                        self.insert(
                            op.key.to_native(),
                            IndexedClick {
                                ts_ms,
                                dims: op.dims.to_native(),
                                extras,
                            },
                        );
                    }
                }
            },
        );
        done.then_some(missing)
    }

    /// Fills an empty index from a full snapshot's clicks: the map on two threads, each
    /// filling half of the shards, and the hour filing on a third. 30 M inserts into a map
    /// that size are cache misses, most of a restore.
    pub fn restore_from(&mut self, clicks: &[ArchivedClickSnap]) {
        let (low, high) = self.map.shards.split_at_mut(SHARDS / 2);
        let fill = |shards: &mut [KeyTable<IndexedClick>], first: usize| {
            for c in clicks {
                let key = c.key.to_native();
                if let Some(shard) = ClickMap::shard_of(key)
                    .checked_sub(first)
                    .and_then(|i| shards.get_mut(i))
                {
                    shard.insert(
                        key,
                        IndexedClick {
                            ts_ms: c.ts_ms.to_native(),
                            dims: c.dims.to_native(),
                            extras: c.extras.to_native(),
                        },
                    );
                }
            }
        };
        let hours = std::thread::scope(|s| {
            let hours =
                s.spawn(|| HourBuckets::of(clicks, |c| (c.ts_ms.to_native(), c.key.to_native())));
            let other = s.spawn(|| fill(high, SHARDS / 2));
            fill(low, 0);
            // A panic in either is a bug: propagate it rather than restore half an index.
            if let Err(panic) = other.join() {
                std::panic::resume_unwind(panic);
            }
            hours.join()
        });
        self.by_hour = hours.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    }

    /// Inserts a click known to be new (restore).
    pub fn insert(&mut self, key: u64, click: IndexedClick) {
        self.map.shard_mut(key).insert(key, click);
        self.by_hour.file(click.ts_ms, key);
    }

    /// Inserts a click unless its id is already indexed; returns `false` for a duplicate.
    pub fn insert_if_new(&mut self, key: u64, click: IndexedClick) -> bool {
        let new = self.map.shard_mut(key).insert_if_new(key, click);
        if new {
            self.by_hour.file(click.ts_ms, key);
        }
        new
    }

    /// Starts loading the memory a lookup of `key` reads first ([`KeyTable::prefetch`]).
    #[inline]
    pub fn prefetch(&self, key: u64) {
        self.map.shard(key).prefetch(key);
    }

    pub fn get(&self, key: u64) -> Option<IndexedClick> {
        self.map.shard(key).get(key).copied()
    }

    /// Every indexed click (for snapshots).
    pub fn for_each(&self, mut f: impl FnMut(u64, IndexedClick)) {
        for shard in &self.map.shards {
            for (key, &click) in shard.iter() {
                f(key, click);
            }
        }
    }

    /// Evicts clicks older than `horizon_ms` and the extras only they used.
    pub fn evict_before(&mut self, horizon_ms: i64) {
        let map = &mut self.map;
        self.by_hour.sweep(horizon_ms, |key, boundary| {
            let shard = map.shard_mut(key);
            match shard.get(key) {
                Some(c) if c.ts_ms < horizon_ms => {
                    shard.remove(key);
                    false
                }
                Some(c) => boundary && hour_of(c.ts_ms) == hour_of(horizon_ms),
                None => false,
            }
        });
        self.extras.evict_before(horizon_ms);
        self.log.sweep(horizon_ms);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extras(device: &str) -> Extras {
        Extras {
            device: Some(Arc::from(device)),
            subs: Default::default(),
        }
    }

    fn click(ts_ms: i64, extras: u32) -> IndexedClick {
        IndexedClick {
            ts_ms,
            dims: 0,
            extras,
        }
    }

    #[test]
    fn duplicates_are_refused_and_eviction_frees_extras() {
        let mut idx = ClickIndex::default();
        let e1 = idx.extras.intern(11, 1_000, || extras("a"));
        let e2 = idx.extras.intern(22, 5_000, || extras("b"));
        assert_eq!(idx.extras.intern(11, 2_000, || extras("zzz")), e1);
        assert!(idx.insert_if_new(1, click(1_000, e1)));
        assert!(!idx.insert_if_new(1, click(9_000, e2)));
        assert!(idx.insert_if_new(2, click(5_000, e2)));
        assert_eq!(idx.get(1).map(|c| c.ts_ms), Some(1_000));
        assert_eq!(std::mem::size_of::<IndexedClick>(), 16);
        idx.evict_before(3_000);
        assert_eq!(idx.get(1), None);
        assert_eq!(idx.len(), 1);
        assert_eq!(idx.extras.len(), 1, "extras 11 were last used at 2 000");
        assert_eq!(idx.extras.get(e2), Some(&extras("b")));
        // The freed slot is reused.
        assert_eq!(idx.extras.intern(33, 6_000, || extras("c")), e1);
    }

    #[test]
    fn a_sweep_by_hours_evicts_exactly_what_a_full_scan_would() {
        const H: i64 = MS_PER_HOUR;
        let mut idx = ClickIndex::default();
        let add =
            |idx: &mut ClickIndex, key: u64, ts: i64| idx.add(key, ts, 0, 7, || extras("a")).1;
        // Clicks at 0:30, 1:10, 1:50, 3:00.
        for (key, ts) in [(1, H / 2), (2, H + H / 6), (3, 2 * H - H / 6), (4, 3 * H)] {
            assert!(add(&mut idx, key, ts));
        }
        // The horizon falls inside hour 1: 1:10 goes, 1:50 stays.
        idx.evict_before(H + H / 2);
        let left = |idx: &ClickIndex| {
            let mut k = Vec::new();
            idx.for_each(|key, _| k.push(key));
            k.sort();
            k
        };
        assert_eq!(left(&idx), [3, 4]);
        // A late click older than the horizon stays until the next sweep (as with a scan).
        assert!(add(&mut idx, 5, H / 4));
        // Click id 1 again, now new at 3:30: the stale filing under hour 0 must not evict it.
        assert!(add(&mut idx, 1, 3 * H + H / 2));
        assert_eq!(left(&idx), [1, 3, 4, 5]);
        idx.evict_before(2 * H);
        assert_eq!(left(&idx), [1, 4]);
        idx.evict_before(3 * H + H / 4);
        assert_eq!(left(&idx), [1]);
        assert_eq!(idx.extras.len(), 1, "extras last used at 3:30");
        idx.evict_before(4 * H);
        assert!(idx.is_empty());
        assert!(idx.extras.is_empty());
        assert!(idx.by_hour.hours.is_empty() && idx.extras.by_hour.hours.is_empty());
    }
}
