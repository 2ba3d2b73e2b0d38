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

use dashmap::DashMap;

use super::changes::{ArchivedClickOp, ArchivedSweep, ChangeLog, ClickOp, Log, Step, replay};
use crate::event::keys::BuildIdentity;

/// What the index keeps per click.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
            if let Some((_, _, last)) = &mut self.slots[id as usize] {
                *last = (*last).max(ts_ms);
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
        for (id, slot) in self.slots.iter_mut().enumerate() {
            if let Some((hash, _, last)) = slot
                && *last < horizon_ms
            {
                self.by_hash.remove(hash);
                *slot = None;
                self.free.push(id as u32);
            }
        }
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

/// The index itself: a sharded lock-free-read map so metrics and snapshots can read it while
/// the state thread writes.
#[derive(Debug)]
pub struct ClickIndex {
    map: DashMap<u64, IndexedClick, BuildIdentity>,
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
            map: DashMap::with_capacity_and_hasher(n, BuildIdentity::default()),
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
    /// files disagree with each other).
    pub fn replay(
        &mut self,
        logs: &[(&[ArchivedClickOp], &[ArchivedSweep])],
        new_extras: &HashMap<u64, Extras, BuildIdentity>,
    ) -> u64 {
        let mut missing = 0;
        replay(
            logs,
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
                        self.map.insert(
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
        missing
    }

    /// Inserts a click known to be new (restore).
    pub fn insert(&self, key: u64, click: IndexedClick) {
        self.map.insert(key, click);
    }

    /// Inserts a click unless its id is already indexed; returns `false` for a duplicate.
    pub fn insert_if_new(&self, key: u64, click: IndexedClick) -> bool {
        match self.map.entry(key) {
            dashmap::Entry::Occupied(_) => false,
            dashmap::Entry::Vacant(v) => {
                v.insert(click);
                true
            }
        }
    }

    pub fn get(&self, key: u64) -> Option<IndexedClick> {
        self.map.get(&key).map(|e| *e)
    }

    /// Every indexed click (for snapshots).
    pub fn for_each(&self, mut f: impl FnMut(u64, IndexedClick)) {
        for e in self.map.iter() {
            f(*e.key(), *e.value());
        }
    }

    /// Evicts clicks older than `horizon_ms` and the extras only they used.
    pub fn evict_before(&mut self, horizon_ms: i64) {
        self.map.retain(|_, c| c.ts_ms >= horizon_ms);
        self.extras.evict_before(horizon_ms);
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
}
