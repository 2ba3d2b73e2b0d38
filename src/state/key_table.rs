//! [`KeyTable`]: a hash table for the state stage's big maps, whose keys are already 64-bit
//! hashes (click keys, visitor keys, dimension hashes), built so the stage can ask for an
//! entry's memory before it needs it.
//!
//! With millions of clicks these tables are far larger than the processor's caches, so nearly
//! every lookup waits for memory: on a 5 M-click run most of the state stage's time went to
//! the first load of a probe in the click index, the visitor sets and the dimension catalog.
//! The standard map cannot say where a key's entry lives; here it is a multiply and a shift
//! ([`KeyTable::prefetch`]), so the click loop asks for the entries of the click a few places
//! ahead while it works on this one, and the loads overlap instead of queueing.
//!
//! Open addressing with linear probing over two arrays — keys (0 marks a free slot; key 0
//! itself is kept aside) and values — so a probe walks 8-byte keys, eight to a cache line.
//! At most 4/5 full; a removal shifts the entries after it back (no tombstones), so lookups
//! stay short however many clicks are evicted.

/// Fibonacci hashing: spreads keys whose low bits are not random over the table.
const SPREAD: u64 = 0x9E37_79B9_7F4A_7C15;
/// The smallest table (slots).
const MIN_SLOTS: usize = 16;

/// `u64 → V` for keys that are hashes. See the module documentation.
#[derive(Debug, Clone)]
pub struct KeyTable<V> {
    /// 0 = free slot.
    keys: Vec<u64>,
    values: Vec<V>,
    /// `64 − log2(slots)`: the top bits of `key × SPREAD` pick the home slot.
    shift: u32,
    /// Entries in the slots (key 0 not counted).
    used: usize,
    /// The entry of key 0, which cannot live in a slot.
    zero: Option<V>,
}

impl<V: Copy + Default> Default for KeyTable<V> {
    fn default() -> Self {
        KeyTable::with_capacity(0)
    }
}

impl<V: Copy + Default> KeyTable<V> {
    /// A table that takes `n` entries without growing.
    pub fn with_capacity(n: usize) -> KeyTable<V> {
        // Room for n at 4/5 full.
        let slots = (n.saturating_mul(5) / 4 + 1)
            .max(MIN_SLOTS)
            .next_power_of_two();
        KeyTable {
            keys: vec![0; slots],
            values: vec![V::default(); slots],
            shift: 64 - slots.trailing_zeros(),
            used: 0,
            zero: None,
        }
    }

    fn mask(&self) -> usize {
        self.keys.len() - 1
    }

    fn home(&self, key: u64) -> usize {
        (key.wrapping_mul(SPREAD) >> self.shift) as usize
    }

    /// `Ok(slot)` holding `key`, or `Err(slot)`: the free slot where it would go.
    fn find(&self, key: u64) -> Result<usize, usize> {
        let mask = self.mask();
        let mut i = self.home(key);
        loop {
            match self.keys[i] {
                k if k == key => return Ok(i),
                0 => return Err(i),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Starts loading the cache lines `key`'s lookup will read first (its home slot's key and
    /// value). Only a hint: it never faults and changes nothing.
    #[inline]
    pub fn prefetch(&self, key: u64) {
        let i = self.home(key);
        prefetch(&self.keys[i]);
        if std::mem::size_of::<V>() != 0 {
            prefetch(&self.values[i]);
        }
    }

    pub fn get(&self, key: u64) -> Option<&V> {
        if key == 0 {
            return self.zero.as_ref();
        }
        self.find(key).ok().map(|i| &self.values[i])
    }

    /// Inserts `value` unless `key` is there; `true` if it was inserted.
    pub fn insert_if_new(&mut self, key: u64, value: V) -> bool {
        if key == 0 {
            if self.zero.is_some() {
                return false;
            }
            self.zero = Some(value);
            return true;
        }
        match self.find(key) {
            Ok(_) => false,
            Err(i) => {
                self.fill(i, key, value);
                true
            }
        }
    }

    /// Inserts or replaces; returns the value replaced.
    pub fn insert(&mut self, key: u64, value: V) -> Option<V> {
        if key == 0 {
            return self.zero.replace(value);
        }
        match self.find(key) {
            Ok(i) => Some(std::mem::replace(&mut self.values[i], value)),
            Err(i) => {
                self.fill(i, key, value);
                None
            }
        }
    }

    /// Puts a new entry into free slot `i`, growing the table once it is 4/5 full.
    fn fill(&mut self, i: usize, key: u64, value: V) {
        self.keys[i] = key;
        self.values[i] = value;
        self.used += 1;
        if self.used * 5 > self.keys.len() * 4 {
            self.grow();
        }
    }

    fn grow(&mut self) {
        let slots = self.keys.len() * 2;
        let keys = std::mem::replace(&mut self.keys, vec![0; slots]);
        let values = std::mem::replace(&mut self.values, vec![V::default(); slots]);
        self.shift = 64 - slots.trailing_zeros();
        let mask = self.mask();
        for (key, value) in keys.into_iter().zip(values) {
            if key != 0 {
                let mut i = self.home(key);
                while self.keys[i] != 0 {
                    i = (i + 1) & mask;
                }
                self.keys[i] = key;
                self.values[i] = value;
            }
        }
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: u64) -> Option<V> {
        if key == 0 {
            return self.zero.take();
        }
        let mut hole = self.find(key).ok()?;
        let removed = self.values[hole];
        self.used -= 1;
        // Backward shift: an entry after the hole moves into it unless its home lies
        // (cyclically) after the hole, up to and including its own slot — then the hole
        // would be before its home, and lookups starting there would miss it.
        let mask = self.mask();
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let k = self.keys[j];
            if k == 0 {
                break;
            }
            let home = self.home(k);
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.keys[hole] = k;
                self.values[hole] = self.values[j];
                hole = j;
            }
        }
        self.keys[hole] = 0;
        Some(removed)
    }

    pub fn len(&self) -> usize {
        self.used + usize::from(self.zero.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry, in no particular order (with an exact length, so a snapshot collects it
    /// into a vector allocated once).
    pub fn iter(&self) -> Iter<'_, V> {
        Iter {
            zero: self.zero.as_ref(),
            slots: self.keys.iter().zip(&self.values),
            left: self.len(),
        }
    }
}

/// [`KeyTable::iter`].
pub struct Iter<'a, V> {
    zero: Option<&'a V>,
    slots: std::iter::Zip<std::slice::Iter<'a, u64>, std::slice::Iter<'a, V>>,
    left: usize,
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (u64, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        let next = match self.zero.take() {
            Some(v) => Some((0, v)),
            None => self.slots.find(|(k, _)| **k != 0).map(|(k, v)| (*k, v)),
        };
        if next.is_some() {
            self.left -= 1;
        }
        next
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<V> ExactSizeIterator for Iter<'_, V> {}

/// A set of hashes: a [`KeyTable`] without values (the values array is zero-sized).
pub type KeySet = KeyTable<()>;

impl KeySet {
    /// `true` if `key` was not in the set.
    pub fn insert_key(&mut self, key: u64) -> bool {
        self.insert_if_new(key, ())
    }

    pub fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.iter().map(|(k, _)| k)
    }
}

impl FromIterator<u64> for KeySet {
    fn from_iter<I: IntoIterator<Item = u64>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut set = KeySet::with_capacity(iter.size_hint().0);
        for key in iter {
            set.insert_key(key);
        }
        set
    }
}

#[inline]
fn prefetch<T>(at: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch is a hint; it reads nothing the program sees and cannot fault,
        // and `at` is a valid reference anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((at as *const T).cast::<i8>()) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn zero_is_a_key_like_any_other() {
        let mut t = KeyTable::<u32>::default();
        assert!(t.insert_if_new(0, 7));
        assert!(!t.insert_if_new(0, 8));
        assert_eq!(t.get(0), Some(&7));
        assert_eq!(t.len(), 1);
        assert_eq!(t.iter().collect::<Vec<_>>(), [(0, &7)]);
        assert_eq!(t.remove(0), Some(7));
        assert!(t.is_empty());
    }

    /// Every operation against `HashMap`, on few distinct keys so that inserts, hits and
    /// removals all happen often.
    #[test]
    fn agrees_with_a_hash_map() {
        let mut t = KeyTable::<u64>::with_capacity(4);
        let mut m: HashMap<u64, u64> = HashMap::new();
        let mut x = 0x1234_5678_u64;
        for step in 0..200_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Few distinct keys, so inserts, hits and removals all happen often.
            let key = x % 3_000;
            match x >> 60 {
                0..=6 => assert_eq!(t.insert(key, step), m.insert(key, step), "insert {key}"),
                7..=9 => assert_eq!(
                    t.insert_if_new(key, step),
                    !m.contains_key(&key) && m.insert(key, step).is_none()
                ),
                10..=13 => assert_eq!(t.remove(key), m.remove(&key), "remove {key}"),
                _ => assert_eq!(t.get(key), m.get(&key), "get {key}"),
            }
            assert_eq!(t.len(), m.len());
        }
        let mut all: Vec<(u64, u64)> = t.iter().map(|(k, v)| (k, *v)).collect();
        all.sort_unstable();
        let mut want: Vec<(u64, u64)> = m.into_iter().collect();
        want.sort_unstable();
        assert_eq!(all, want);
    }

    /// Keys whose home is one of the last two slots of a 16-slot table fill them and wrap
    /// around to the first slots; removing any one of them must leave every other findable
    /// (the backward shift across the end of the table).
    #[test]
    fn removal_shifts_back_across_the_end_of_the_table() {
        let probe = KeyTable::<u32>::with_capacity(0);
        assert_eq!(probe.keys.len(), 16);
        let wrapping: Vec<u64> = (1..).filter(|&k| probe.home(k) >= 14).take(5).collect();
        for removed in &wrapping {
            let mut t = KeyTable::<u32>::with_capacity(0);
            for (i, &k) in wrapping.iter().enumerate() {
                assert!(t.insert_if_new(k, i as u32));
            }
            // Five keys in slots 14, 15, 0, 1, 2: the cluster wraps.
            assert!(t.keys[0] != 0 && t.keys[1] != 0 && t.keys[2] != 0);
            assert!(t.remove(*removed).is_some());
            for (i, &k) in wrapping.iter().enumerate() {
                let want = (k != *removed).then_some(i as u32);
                assert_eq!(t.get(k).copied(), want, "key {k} after removing {removed}");
            }
            assert_eq!(t.len(), 4);
            assert_eq!(t.iter().len(), 4);
        }
    }

    #[test]
    fn grows_and_keeps_every_entry() {
        let mut t = KeyTable::<u32>::default();
        for k in 1..=100_000u64 {
            assert!(t.insert_if_new(k * 0x1_0000_0001, k as u32));
        }
        assert_eq!(t.len(), 100_000);
        assert!(t.keys.len() >= 100_000 * 5 / 4);
        for k in 1..=100_000u64 {
            assert_eq!(t.get(k * 0x1_0000_0001), Some(&(k as u32)));
            t.prefetch(k);
        }
        assert_eq!(t.get(3), None);
    }

    #[test]
    fn key_set() {
        let mut s: KeySet = [5u64, 9, 5].into_iter().collect();
        assert_eq!(s.len(), 2);
        assert!(!s.insert_key(9));
        assert!(s.insert_key(0));
        let mut keys: Vec<u64> = s.keys().collect();
        keys.sort_unstable();
        assert_eq!(keys, [0, 5, 9]);
    }
}
