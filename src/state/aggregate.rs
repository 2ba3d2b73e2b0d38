//! Minute aggregates: per UTC minute × tenant × offer × affiliate × country × currency.
//!
//! The state stage adds to open buckets as it accepts clicks and conversions; buckets are
//! flushed as delta rows ([`StatsRow`]) once the watermark has passed them, and all of them at
//! the end of the input. A late change (a status change days later) re-opens its bucket and is
//! flushed as another delta row, so `sum()` over the output is always the current truth.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use super::interner::DimsTable;
use crate::rows::{Measures, StatsRow};

/// The buckets of one open minute: measures in arrival order, and where each dimension id's
/// bucket is. The map holds 8-byte entries instead of 120-byte buckets, so it probes and grows
/// cheaply; the buckets are written once, in place.
#[derive(Debug, Default)]
struct Minute {
    index: FxHashMap<u32, u32>,
    buckets: Vec<(u32, Measures)>,
    /// Opened as the newest minute (sized like the recent ones, and what their size is learnt
    /// from); an older minute re-opened by a late change starts empty and teaches nothing.
    newest: bool,
}

impl Minute {
    fn with_capacity(n: usize, newest: bool) -> Minute {
        Minute {
            index: FxHashMap::with_capacity_and_hasher(n, Default::default()),
            buckets: Vec::with_capacity(n),
            newest,
        }
    }
}

#[derive(Debug, Default)]
pub struct Aggregator {
    /// minute (epoch ms) → its buckets by dims id.
    open: BTreeMap<i64, Minute>,
    open_buckets: usize,
    /// About how many buckets the recent minutes held: a new minute starts at that size, so it
    /// does not grow its way up from empty (hundreds of buckets a minute on busy traffic).
    typical_minute: usize,
    /// Turned off: updates are ignored (an aggregate the pipeline does not write).
    off: bool,
}

impl Aggregator {
    /// An aggregate that ignores every update.
    pub fn off() -> Aggregator {
        Aggregator {
            off: true,
            ..Aggregator::default()
        }
    }

    /// Applies `f` to the bucket `(minute_ms, dims)`.
    pub fn update(&mut self, minute_ms: i64, dims: u32, f: impl FnOnce(&mut Measures)) {
        if self.off {
            return;
        }
        let typical = self.typical_minute;
        let newest = self
            .open
            .last_key_value()
            .is_none_or(|(&last, _)| minute_ms > last);
        let minute = self.open.entry(minute_ms).or_insert_with(|| {
            if newest {
                Minute::with_capacity(typical, true)
            } else {
                Minute::default()
            }
        });
        let i = match minute.index.entry(dims) {
            std::collections::hash_map::Entry::Occupied(e) => *e.get() as usize,
            std::collections::hash_map::Entry::Vacant(e) => {
                let i = minute.buckets.len();
                e.insert(i as u32);
                minute.buckets.push((dims, Measures::default()));
                self.open_buckets += 1;
                i
            }
        };
        f(&mut minute.buckets[i].1);
    }

    pub fn open_buckets(&self) -> usize {
        self.open_buckets
    }

    /// Every open bucket as `(minute, dims, measures)` (for snapshots).
    pub fn buckets(&self) -> impl Iterator<Item = (i64, u32, &Measures)> {
        self.open
            .iter()
            .flat_map(|(m, b)| b.buckets.iter().map(move |(d, x)| (*m, *d, x)))
    }

    /// Emits and forgets every bucket whose minute is before `minute_ms`.
    pub fn flush_before(&mut self, minute_ms: i64, dims: &DimsTable, out: &mut Vec<StatsRow>) {
        // Called after every run of records: most calls close nothing.
        if self
            .open
            .first_key_value()
            .is_none_or(|(&first, _)| first >= minute_ms)
        {
            return;
        }
        let keep = self.open.split_off(&minute_ms);
        let closed = std::mem::replace(&mut self.open, keep);
        for (
            minute,
            Minute {
                buckets, newest, ..
            },
        ) in closed
        {
            self.open_buckets -= buckets.len();
            if newest {
                // A decaying maximum: a burst does not hold it up for long.
                self.typical_minute = buckets
                    .len()
                    .max(self.typical_minute - self.typical_minute / 8);
            }
            // Deterministic row order within a minute. The order is sorted as (dims, index)
            // pairs: moving 8 bytes per swap instead of a whole bucket of measures.
            let mut order: Vec<(u32, u32)> = buckets
                .iter()
                .enumerate()
                .map(|(i, (d, _))| (*d, i as u32))
                .collect();
            order.sort_unstable();
            out.reserve(order.len());
            for (d, i) in order {
                let measures = buckets[i as usize].1;
                if measures == Measures::default() {
                    continue;
                }
                out.push(StatsRow {
                    minute_ms: minute,
                    dims: dims.get(d),
                    measures,
                });
            }
        }
    }

    pub fn flush_all(&mut self, dims: &DimsTable, out: &mut Vec<StatsRow>) {
        self.flush_before(i64::MAX, dims, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::interner::{Dims, Interner};

    #[test]
    fn a_reopened_old_minute_neither_takes_nor_teaches_the_size_hint() {
        let mut strings = Interner::default();
        let x = strings.intern("x");
        let mut table = DimsTable::default();
        let ids: Vec<u32> = (0..100)
            .map(|i| {
                let affiliate = strings.intern(&format!("a{i}"));
                table.intern(Dims {
                    tenant: x,
                    offer: x,
                    affiliate,
                    country: x,
                    currency: x,
                })
            })
            .collect();
        let mut agg = Aggregator::default();
        for &d in &ids {
            agg.update(60_000, d, |m| m.clicks += 1);
        }
        let mut out = Vec::new();
        agg.flush_before(120_000, &table, &mut out);
        assert_eq!((out.len(), agg.typical_minute), (100, 100));
        // The next minute starts at the learnt size; a late change to the flushed minute
        // re-opens it empty.
        agg.update(180_000, ids[0], |m| m.clicks += 1);
        agg.update(60_000, ids[1], |m| m.approved += 1);
        assert!(agg.open[&180_000].buckets.capacity() >= 100);
        assert!(agg.open[&60_000].buckets.capacity() < 100);
        // Flushing the re-opened minute (one bucket) does not shrink the hint.
        agg.flush_before(120_000, &table, &mut out);
        assert_eq!(agg.typical_minute, 100);
        assert_eq!(out.len(), 101);
    }

    #[test]
    fn buckets_flush_in_minute_order_and_deltas_add_up() {
        let mut strings = Interner::default();
        let mut table = DimsTable::default();
        let o = strings.intern("o1");
        let d = table.intern(Dims {
            tenant: 0,
            offer: o,
            affiliate: 0,
            country: 0,
            currency: 0,
        });
        let mut agg = Aggregator::default();
        agg.update(60_000, d, |m| m.clicks += 1);
        agg.update(60_000, d, |m| m.clicks += 1);
        agg.update(120_000, d, |m| m.approved += 1);
        assert_eq!(agg.open_buckets(), 2);
        let mut out = Vec::new();
        agg.flush_before(120_000, &table, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].measures.clicks, 2);
        assert_eq!(&**strings.get(out[0].dims.offer), "o1");
        // A late delta re-opens the flushed minute.
        agg.update(60_000, d, |m| m.clicks -= 2);
        // A bucket whose delta nets to zero before a flush is not written.
        agg.update(180_000, d, |m| m.pending += 1);
        agg.update(180_000, d, |m| m.pending -= 1);
        agg.flush_all(&table, &mut out);
        assert_eq!(agg.open_buckets(), 0);
        let total: i64 = out.iter().map(|r| r.measures.clicks).sum();
        assert_eq!(total, 0);
        let minutes: Vec<i64> = out.iter().map(|r| r.minute_ms).collect();
        assert_eq!(minutes, [60_000, 60_000, 120_000]);
    }
}
