//! The click index: `click_id → (click time, click profile)` for every click inside the
//! attribution window. Conversions look their click up here.
//!
//! An entry is a `u64` key hash plus 16 bytes of [`IndexedClick`]. The attribution columns a conversion inherits (offer, affiliate, country,
//! device, sub1–sub5) repeat across many clicks, so they live once in a [`ProfileTable`] and each
//! click holds a 4-byte profile id. Profiles unused for longer than the window are evicted with
//! the clicks that used them, so both tables stay bounded in a long run.

use std::collections::HashMap;
use std::sync::Arc;

use dashmap::DashMap;

use super::interner::Sym;
use super::keys::BuildIdentity;

/// What the index keeps per click.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexedClick {
    pub ts_ms: i64,
    pub profile: u32,
}

/// The attribution dimensions a conversion inherits from its click.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub tenant: Sym,
    pub offer: Sym,
    pub affiliate: Sym,
    pub country: Sym,
    pub device: Option<Arc<str>>,
    pub subs: [Option<Arc<str>>; 5],
}

/// Deduplicated click profiles with last-use tracking for eviction.
#[derive(Debug, Default)]
pub struct ProfileTable {
    by_hash: HashMap<u64, u32, BuildIdentity>,
    slots: Vec<Option<(u64, Profile, i64)>>,
    free: Vec<u32>,
}

impl ProfileTable {
    /// Returns the id of the profile with this hash, creating it with `make` if new, and marks it
    /// used at `ts_ms`.
    pub fn intern(&mut self, hash: u64, ts_ms: i64, make: impl FnOnce() -> Profile) -> u32 {
        if let Some(&id) = self.by_hash.get(&hash) {
            if let Some((_, _, last)) = &mut self.slots[id as usize] {
                *last = (*last).max(ts_ms);
            }
            return id;
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
        id
    }

    pub fn get(&self, id: u32) -> Option<&Profile> {
        self.slots
            .get(id as usize)
            .and_then(|s| s.as_ref())
            .map(|(_, p, _)| p)
    }

    /// Drops profiles last used before `horizon_ms`.
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
}

/// The index itself: a sharded lock-free-read map so metrics and snapshots can read it while
/// the state thread writes.
#[derive(Debug)]
pub struct ClickIndex {
    map: DashMap<u64, IndexedClick, BuildIdentity>,
    pub profiles: ProfileTable,
}

impl Default for ClickIndex {
    fn default() -> Self {
        ClickIndex {
            map: DashMap::with_hasher(BuildIdentity::default()),
            profiles: ProfileTable::default(),
        }
    }
}

impl ClickIndex {
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

    /// Evicts clicks older than `horizon_ms` and the profiles only they used.
    pub fn evict_before(&mut self, horizon_ms: i64) {
        self.map.retain(|_, c| c.ts_ms >= horizon_ms);
        self.profiles.evict_before(horizon_ms);
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

    fn profile(offer: Sym) -> Profile {
        Profile {
            tenant: 0,
            offer,
            affiliate: 0,
            country: 0,
            device: None,
            subs: Default::default(),
        }
    }

    #[test]
    fn duplicates_are_refused_and_eviction_frees_profiles() {
        let mut idx = ClickIndex::default();
        let p1 = idx.profiles.intern(11, 1_000, || profile(1));
        let p2 = idx.profiles.intern(22, 5_000, || profile(2));
        assert_eq!(idx.profiles.intern(11, 2_000, || profile(9)), p1);
        assert!(idx.insert_if_new(
            1,
            IndexedClick {
                ts_ms: 1_000,
                profile: p1
            }
        ));
        assert!(!idx.insert_if_new(
            1,
            IndexedClick {
                ts_ms: 9_000,
                profile: p2
            }
        ));
        assert!(idx.insert_if_new(
            2,
            IndexedClick {
                ts_ms: 5_000,
                profile: p2
            }
        ));
        assert_eq!(idx.get(1).map(|c| c.ts_ms), Some(1_000));
        idx.evict_before(3_000);
        assert_eq!(idx.get(1), None);
        assert_eq!(idx.len(), 1);
        assert_eq!(idx.profiles.len(), 1, "profile 11 was last used at 2 000");
        assert_eq!(idx.profiles.get(p2).map(|p| p.offer), Some(2));
        // The freed slot is reused.
        assert_eq!(idx.profiles.intern(33, 6_000, || profile(3)), p1);
    }
}
