//! Unique clicks: the first click of a UTC day for `(tenant_id, offer_id, ip)`.
//!
//! One set of visitor hashes per day; days older than the watermark's day minus one are
//! dropped, so memory is bounded by two days of distinct visitors.

use std::collections::{BTreeMap, HashSet};

use crate::event::keys::BuildIdentity;

#[derive(Debug, Default)]
pub struct UniqueClicks {
    days: BTreeMap<i64, HashSet<u64, BuildIdentity>>,
}

impl UniqueClicks {
    /// `true` if this visitor key has not been seen on this day before.
    pub fn first_visit(&mut self, day: i64, visitor: u64) -> bool {
        self.days.entry(day).or_default().insert(visitor)
    }

    /// Replaces a day's visitor set (restore).
    pub fn restore_day(&mut self, day: i64, visitors: HashSet<u64, BuildIdentity>) {
        self.days.insert(day, visitors);
    }

    /// Forgets days before `day`.
    pub fn evict_before(&mut self, day: i64) {
        self.days = self.days.split_off(&day);
    }

    /// Visitor sets per day (for snapshots).
    pub fn days(&self) -> impl Iterator<Item = (i64, &HashSet<u64, BuildIdentity>)> {
        self.days.iter().map(|(d, s)| (*d, s))
    }

    pub fn len(&self) -> usize {
        self.days.values().map(|s| s.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_visit_per_day() {
        let mut u = UniqueClicks::default();
        assert!(u.first_visit(1, 42));
        assert!(!u.first_visit(1, 42));
        assert!(u.first_visit(2, 42));
        u.evict_before(2);
        assert_eq!(u.len(), 1);
    }
}
