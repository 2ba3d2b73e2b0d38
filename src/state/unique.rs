//! Unique clicks: the first click of a UTC day for `(tenant_id, offer_id, ip)`.
//!
//! One set of visitor hashes per day; days older than the watermark's day minus one are
//! dropped, so memory is bounded by two days of distinct visitors. With the change log on,
//! first visits and sweeps are logged for the next delta checkpoint ([`super::changes`]).

use std::collections::BTreeMap;

use super::changes::{ArchivedSweep, ArchivedVisitorOp, ChangeLog, Step, VisitorOp, replay};
use super::key_table::KeySet;

#[derive(Debug, Default)]
pub struct UniqueClicks {
    days: BTreeMap<i64, KeySet>,
    pub log: ChangeLog<VisitorOp>,
}

impl UniqueClicks {
    /// `true` if this visitor key has not been seen on this day before.
    pub fn first_visit(&mut self, day: i64, visitor: u64) -> bool {
        let first = self.days.entry(day).or_default().insert_key(visitor);
        if first {
            self.log.push(|| VisitorOp { day, key: visitor });
        }
        first
    }

    /// Applies the visitor logs of a chain of deltas (oldest first) on restore, sweeps folded
    /// into the last one (`changes::replay`).
    /// `false`: stopped part way by `stop`.
    pub fn replay(
        &mut self,
        logs: &[(&[ArchivedVisitorOp], &[ArchivedSweep])],
        stop: &std::sync::atomic::AtomicBool,
    ) -> bool {
        replay(
            logs,
            stop,
            |op, horizon| op.day.to_native() < horizon,
            |step| match step {
                Step::Sweep(day) => self.evict_before(day),
                Step::Op(op) => {
                    self.days
                        .entry(op.day.to_native())
                        .or_default()
                        .insert_key(op.key.to_native());
                }
            },
        )
    }

    /// Starts loading the memory [`Self::first_visit`] reads first for this visitor
    /// ([`KeySet`]'s prefetch); nothing when the day has no set yet.
    #[inline]
    pub fn prefetch(&self, day: i64, visitor: u64) {
        if let Some(set) = self.days.get(&day) {
            set.prefetch(visitor);
        }
    }

    /// Replaces a day's visitor set (restore).
    pub fn restore_day(&mut self, day: i64, visitors: KeySet) {
        self.days.insert(day, visitors);
    }

    /// Forgets days before `day`.
    pub fn evict_before(&mut self, day: i64) {
        self.days = self.days.split_off(&day);
        self.log.sweep(day);
    }

    /// Visitor sets per day (for snapshots).
    pub fn days(&self) -> impl Iterator<Item = (i64, &KeySet)> {
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
