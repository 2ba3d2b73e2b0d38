//! String interning for low-cardinality dimensions (tenants, offers, affiliates, countries,
//! currencies, devices) and for the dimension tuples of aggregate buckets.
//!
//! Each distinct string is stored once and referred to by a `u32`; hot maps then hold 4-byte ids
//! instead of strings. These sets are bounded by the business (how many offers exist), not by
//! traffic, so they are never evicted; their sizes are reported in the run summary.

use rustc_hash::FxHashMap;
use std::sync::Arc;

/// Id of an interned string. `0` is always the empty string.
pub type Sym = u32;

#[derive(Debug)]
pub struct Interner {
    ids: FxHashMap<Arc<str>, Sym>,
    strings: Vec<Arc<str>>,
}

impl Default for Interner {
    fn default() -> Self {
        let mut i = Interner {
            ids: FxHashMap::default(),
            strings: Vec::new(),
        };
        i.intern("");
        i
    }
}

impl Interner {
    pub fn intern(&mut self, s: &str) -> Sym {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.strings.len() as Sym;
        let arc: Arc<str> = Arc::from(s);
        self.strings.push(arc.clone());
        self.ids.insert(arc, id);
        id
    }

    /// Interns `s` and returns the shared string.
    pub fn intern_arc(&mut self, s: &str) -> Arc<str> {
        let id = self.intern(s);
        self.strings[id as usize].clone()
    }

    pub fn get(&self, id: Sym) -> &Arc<str> {
        &self.strings[id as usize]
    }

    pub fn len(&self) -> usize {
        self.strings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.strings.len() <= 1
    }

    /// All strings in id order (for snapshots; interning them again in order restores the ids).
    pub fn all(&self) -> &[Arc<str>] {
        &self.strings
    }
}

/// The dimensions of an aggregate bucket, as interned ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dims {
    pub tenant: Sym,
    pub offer: Sym,
    pub affiliate: Sym,
    pub country: Sym,
    pub currency: Sym,
}

/// Interns [`Dims`] tuples to a single `u32`, so a dedup entry can name its bucket in 4 bytes.
#[derive(Debug, Default)]
pub struct DimsTable {
    ids: FxHashMap<Dims, u32>,
    dims: Vec<Dims>,
}

impl DimsTable {
    pub fn intern(&mut self, d: Dims) -> u32 {
        if let Some(&id) = self.ids.get(&d) {
            return id;
        }
        let id = self.dims.len() as u32;
        self.dims.push(d);
        self.ids.insert(d, id);
        id
    }

    pub fn get(&self, id: u32) -> Dims {
        self.dims[id as usize]
    }

    /// All tuples in id order.
    pub fn all(&self) -> &[Dims] {
        &self.dims
    }

    pub fn len(&self) -> usize {
        self.dims.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dims.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_stable() {
        let mut i = Interner::default();
        assert_eq!(i.intern(""), 0);
        let a = i.intern("offer-1");
        let b = i.intern("offer-2");
        assert_ne!(a, b);
        assert_eq!(i.intern("offer-1"), a);
        assert_eq!(&**i.get(b), "offer-2");
        assert_eq!(i.len(), 3);
    }
}
