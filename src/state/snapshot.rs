//! Conversion of the [`Engine`] to and from its checkpoint form
//! ([`crate::checkpoint::snapshot::EngineSnap`]).

use std::sync::Arc;

use super::Engine;
use super::click_index::Extras;
use super::dedup::{Attribution, ConvEntry};
use super::interner::Dims;
use super::pending::PendingConversion;
use crate::checkpoint::snapshot::{
    ArchivedEngineSnap, ArchivedExtrasSnap, BucketSnap, ClickSnap, ConvRowSnap, CountersSnap,
    DedupSnap, DeltaSnap, EngineSnap, ExtrasSnap, PendingSnap,
};
use crate::event::Status;
use crate::rows::{ConversionRow, Measures};

fn row_to(r: &ConversionRow) -> ConvRowSnap {
    let s = |x: &Option<Arc<str>>| x.as_deref().map(str::to_string);
    let b = |x: &Option<Box<str>>| x.as_deref().map(str::to_string);
    ConvRowSnap {
        tenant_id: r.tenant_id.to_string(),
        external_id: r.external_id.to_string(),
        version: r.version,
        status: r.status as u8,
        previous_status: r.previous_status.map(|p| p as u8),
        click_id: r.click_id.to_string(),
        ts_ms: r.ts_ms,
        amount_micros: r.amount_micros,
        currency: r.currency.to_string(),
        product_id: b(&r.product_id),
        order_id: b(&r.order_id),
        customer_id: b(&r.customer_id),
        metadata: b(&r.metadata),
        attribution: r.attribution as u8,
        offer_id: r.offer_id.to_string(),
        affiliate_id: r.affiliate_id.to_string(),
        country: r.country.to_string(),
        device: s(&r.device),
        subs: r.subs.clone().map(|x| x.as_deref().map(str::to_string)),
        click_ts_ms: r.click_ts_ms,
        seconds_to_convert: r.seconds_to_convert,
    }
}

fn extras_snap(id: u32, hash: u64, e: &Extras, last_used_ms: i64) -> ExtrasSnap {
    ExtrasSnap {
        id,
        hash,
        last_used_ms,
        device: e.device.as_deref().map(str::to_string),
        subs: e.subs.clone().map(|x| x.as_deref().map(str::to_string)),
    }
}

fn dims_array(d: &Dims) -> [u32; 5] {
    [d.tenant, d.offer, d.affiliate, d.country, d.currency]
}

fn extras_from(x: &ArchivedExtrasSnap) -> Extras {
    let opt = |s: &rkyv::option::ArchivedOption<rkyv::string::ArchivedString>| {
        s.as_ref().map(|s| Arc::<str>::from(s.as_str()))
    };
    Extras {
        device: opt(&x.device),
        subs: std::array::from_fn(|i| opt(&x.subs[i])),
    }
}

impl Engine {
    fn row_from_snap(&mut self, r: ConvRowSnap) -> ConversionRow {
        let arc = |s: Option<String>| s.map(Arc::<str>::from);
        let boxed = |s: Option<String>| s.map(String::into_boxed_str);
        ConversionRow {
            tenant_id: self.strings.intern_arc(&r.tenant_id),
            external_id: r.external_id.into_boxed_str(),
            version: r.version,
            status: Status::from_u8(r.status),
            previous_status: r.previous_status.map(Status::from_u8),
            click_id: r.click_id.into_boxed_str(),
            ts_ms: r.ts_ms,
            amount_micros: r.amount_micros,
            currency: self.strings.intern_arc(&r.currency),
            product_id: boxed(r.product_id),
            order_id: boxed(r.order_id),
            customer_id: boxed(r.customer_id),
            metadata: boxed(r.metadata),
            attribution: Attribution::from_bits(r.attribution as u64),
            offer_id: self.strings.intern_arc(&r.offer_id),
            affiliate_id: self.strings.intern_arc(&r.affiliate_id),
            country: self.strings.intern_arc(&r.country),
            device: arc(r.device),
            subs: r.subs.map(arc),
            click_ts_ms: r.click_ts_ms,
            seconds_to_convert: r.seconds_to_convert,
            value: None,
            fraud_flags: 0,
        }
    }

    /// Everything the engine knows, as checkpoint data (a full snapshot: the big structures
    /// copied whole).
    pub fn snapshot(&self) -> EngineSnap {
        let mut snap = self.small_snapshot();
        (snap.strings, snap.dims) = self.catalog_from(0, 0);
        snap.dims_by_hash = self.dims_by_hash.iter().map(|(h, d)| (h, *d)).collect();
        let mut clicks = Vec::with_capacity(self.clicks.len());
        self.clicks.for_each(|key, c| {
            clicks.push(ClickSnap {
                key,
                ts_ms: c.ts_ms,
                dims: c.dims,
                extras: c.extras,
            })
        });
        let mut dedup = Vec::with_capacity(self.dedup.len());
        self.dedup.for_each(|key, e| {
            dedup.push(DedupSnap {
                key,
                packed: e.packed(),
                amount_micros: e.amount_micros,
                dims: e.dims,
                click_delay_s: e.click_delay_s,
            })
        });
        snap.clicks = clicks;
        snap.dedup = dedup;
        snap.extras = self
            .clicks
            .extras
            .entries()
            .map(|(id, hash, e, last)| extras_snap(id, hash, e, last))
            .collect();
        snap.unique = self
            .unique
            .days()
            .map(|(d, set)| (d, set.keys().collect()))
            .collect();
        snap
    }

    /// A delta snapshot: the small parts whole, and what the big structures logged since the
    /// last delta snapshot (taken, so the next one starts empty) as the changes on top of
    /// checkpoint `parent`. Its cost follows the events since then, not the state's size.
    pub fn delta_snapshot(&mut self, parent: u64) -> EngineSnap {
        let clicks = self.clicks.take_changes();
        let visitors = self.unique.log.take();
        let dedup = self.dedup.log.take();
        let mut snap = self.small_snapshot();
        (snap.strings, snap.dims) = self.catalog_from(self.sent_strings, self.sent_dims);
        snap.dims_by_hash = self.new_dims_by_hash.take().ops;
        let (strings_from, dims_from) = (self.sent_strings as u64, self.sent_dims as u64);
        self.sent_strings = self.strings.len();
        self.sent_dims = self.dims.len();
        snap.delta = Some(DeltaSnap {
            parent,
            strings_from,
            dims_from,
            clicks: clicks.log.ops,
            click_sweeps: clicks.log.sweeps,
            new_extras: clicks
                .new_extras
                .iter()
                .map(|(hash, e)| extras_snap(0, *hash, e, 0))
                .collect(),
            visitors: visitors.ops,
            visitor_sweeps: visitors.sweeps,
            dedup: dedup.ops,
            dedup_sweeps: dedup.sweeps,
        });
        snap
    }

    /// The strings and dimension sets interned from these positions on (the catalog only
    /// grows: a full snapshot takes all of it, a delta what the last one did not).
    fn catalog_from(&self, strings: usize, dims: usize) -> (Vec<String>, Vec<[u32; 5]>) {
        let (all_strings, all_dims) = (self.strings.all(), self.dims.all());
        (
            all_strings[strings.min(all_strings.len())..]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            all_dims[dims.min(all_dims.len())..]
                .iter()
                .map(dims_array)
                .collect(),
        )
    }

    /// Everything but the three big structures and the catalog (strings, dimension sets,
    /// `dims_by_hash`), which the callers add whole or as what is new.
    fn small_snapshot(&self) -> EngineSnap {
        let c = &self.counters;
        EngineSnap {
            strings: Vec::new(),
            dims: Vec::new(),
            dims_by_hash: Vec::new(),
            clicks: Vec::new(),
            extras: Vec::new(),
            unique: Vec::new(),
            dedup: Vec::new(),
            pending: self
                .pending
                .all()
                .into_iter()
                .map(|p| PendingSnap {
                    first: row_to(&p.first),
                    click_key: p.click_key,
                    dedup_key: p.dedup_key,
                    release_ms: p.release_ms,
                    follow_ups: p.follow_ups.iter().map(row_to).collect(),
                    duplicates: p.duplicates,
                })
                .collect(),
            buckets: self
                .agg
                .buckets()
                .map(|(minute_ms, dims, m)| BucketSnap {
                    minute_ms,
                    dims,
                    measures: m.to_array(),
                })
                .collect(),
            click_wm: self.click_wm,
            conv_wm: self.conv_wm,
            clicks_closed: self.clicks_closed,
            convs_closed: self.convs_closed,
            last_sweep_ms: self.last_sweep_ms,
            counters: CountersSnap {
                values: c.values().to_vec(),
                dead_letters: c
                    .dead_letters
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect(),
            },
            fraud: self.fraud_snapshot(),
            delta: None,
        }
    }

    /// Rebuilds an engine from a chain of archived snapshots, oldest first: a full snapshot
    /// followed by deltas, or deltas alone starting from an empty engine (parent 0). The big
    /// structures come from the full snapshot (read in place) and the deltas' changes; the
    /// small parts from the newest. The caller checks that each delta's parent is the one
    /// before it (`checkpoint::Chain`).
    pub fn restore(cfg: super::EngineConfig, chain: &[&ArchivedEngineSnap]) -> Engine {
        let never = std::sync::atomic::AtomicBool::new(false);
        match Engine::restore_unless(cfg, chain, &never) {
            Some(e) => e,
            None => unreachable!("a restore nobody can stop stopped"),
        }
    }

    /// [`Engine::restore`], given up (`None`) once `stop` is set: a compaction that the end of
    /// the run gives up. The replay of the deltas looks at the flag every few thousand
    /// operations; the rebuild of a full snapshot below them (seconds at 30 M clicks) is not
    /// interrupted, the flag is read after it.
    pub fn restore_unless(
        cfg: super::EngineConfig,
        chain: &[&ArchivedEngineSnap],
        stop: &std::sync::atomic::AtomicBool,
    ) -> Option<Engine> {
        let mut e = Engine::new(cfg);
        let Some(head) = chain.last() else {
            return Some(e);
        };
        let base = chain.first().filter(|b| b.delta.is_none());
        let deltas = if base.is_some() { &chain[1..] } else { chain };
        // The full snapshot's big structures on one thread (which spreads them over more)
        // while this one reads the catalog, file by file (a delta holds what its interval
        // added); the two share nothing. The catalog comes before the small parts, so the
        // strings pending conversions intern are found, not added.
        let (clicks, keys) = deltas
            .iter()
            .filter_map(|d| d.delta.as_ref())
            .fold((0, 0), |(c, k), d| (c + d.clicks.len(), k + d.dedup.len()));
        std::thread::scope(|s| {
            if let Some(base) = base {
                let big = Big {
                    clicks: &mut e.clicks,
                    unique: &mut e.unique,
                    dedup: &mut e.dedup,
                };
                s.spawn(move || big.restore(base, clicks, keys));
            }
            let mut catalog = Catalog {
                strings: &mut e.strings,
                dims: &mut e.dims,
                dims_by_hash: &mut e.dims_by_hash,
            };
            for snap in chain {
                catalog.restore(snap);
            }
        });
        // The full snapshot's part cannot stop half way; after it, the deltas' replay can.
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        e.restore_small(head);
        e.apply(deltas, stop).then_some(e)
    }

    /// Applies the changes of a chain of deltas (oldest first) to the big structures;
    /// `false` when `stop` stopped it part way.
    fn apply(
        &mut self,
        deltas: &[&ArchivedEngineSnap],
        stop: &std::sync::atomic::AtomicBool,
    ) -> bool {
        let deltas: Vec<&crate::checkpoint::snapshot::ArchivedDeltaSnap> =
            deltas.iter().filter_map(|d| d.delta.as_ref()).collect();
        if deltas.is_empty() {
            return true;
        }
        let mut new_extras: std::collections::HashMap<
            u64,
            Extras,
            crate::event::keys::BuildIdentity,
        > = Default::default();
        for d in &deltas {
            for x in d.new_extras.iter() {
                new_extras.insert(x.hash.to_native(), extras_from(x));
            }
        }
        let clicks: Vec<_> = deltas
            .iter()
            .map(|d| (d.clicks.as_slice(), d.click_sweeps.as_slice()))
            .collect();
        let visitors: Vec<_> = deltas
            .iter()
            .map(|d| (d.visitors.as_slice(), d.visitor_sweeps.as_slice()))
            .collect();
        let dedup: Vec<_> = deltas
            .iter()
            .map(|d| (d.dedup.as_slice(), d.dedup_sweeps.as_slice()))
            .collect();
        // The maps get room for everything the deltas may add (no rehashing while they fill),
        // and the three structures are rebuilt on three threads.
        if self.clicks.is_empty() {
            let extras = std::mem::take(&mut self.clicks.extras);
            let n = clicks.iter().map(|l| l.0.len()).sum();
            self.clicks = super::click_index::ClickIndex::with_capacity(n);
            self.clicks.extras = extras;
        }
        if self.dedup.is_empty() {
            let n = dedup.iter().map(|l| l.0.len()).sum();
            self.dedup = super::dedup::DedupMap::with_capacity(n);
        }
        let (index, unique, dedup_map) = (&mut self.clicks, &mut self.unique, &mut self.dedup);
        let (missing, visitors_done, dedup_done) = std::thread::scope(|s| {
            let v = s.spawn(|| unique.replay(&visitors, stop));
            let d = s.spawn(|| dedup_map.replay(&dedup, stop));
            let missing = index.replay(&clicks, &new_extras, stop);
            // A panic in either is a bug: propagate it rather than restore half a state.
            let join = |h: std::thread::ScopedJoinHandle<'_, bool>| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            };
            (missing, join(v), join(d))
        });
        let Some(missing) = missing.filter(|_| visitors_done && dedup_done) else {
            return false;
        };
        if missing > 0 {
            tracing::error!(
                missing,
                "checkpoint deltas refer to click extras they do not hold; those clicks restore without device and subs"
            );
        }
        true
    }

    /// The small parts of the newest file: pending conversions, open aggregates, watermarks,
    /// counters.
    fn restore_small(&mut self, snap: &ArchivedEngineSnap) {
        let e = self;
        for p in snap.pending.iter() {
            let p: PendingSnap = match rkyv::deserialize::<PendingSnap, rkyv::rancor::Error>(p) {
                Ok(p) => p,
                Err(_) => continue,
            };
            let first = e.row_from_snap(p.first);
            let follow_ups = p
                .follow_ups
                .into_iter()
                .map(|r| e.row_from_snap(r))
                .collect();
            e.pending.insert(PendingConversion {
                first,
                click_key: p.click_key,
                dedup_key: p.dedup_key,
                release_ms: p.release_ms,
                follow_ups,
                duplicates: p.duplicates,
            });
        }
        for b in snap.buckets.iter() {
            let m = Measures::from_array(b.measures.map(|x| x.to_native()));
            e.agg
                .update(b.minute_ms.to_native(), b.dims.to_native(), |x| x.add(&m));
        }
        e.click_wm = snap.click_wm.to_native();
        e.conv_wm = snap.conv_wm.to_native();
        e.clicks_closed = snap.clicks_closed;
        e.convs_closed = snap.convs_closed;
        e.last_sweep_ms = snap.last_sweep_ms.to_native();
        e.restore_fraud(&snap.fraud);
        let c = &mut e.counters;
        c.set_values(snap.counters.values.iter().map(|x| x.to_native()));
        for t in snap.counters.dead_letters.iter() {
            if let Some(r) = crate::event::DeadReason::ALL
                .iter()
                .find(|r| r.as_str() == t.0.as_str())
            {
                c.dead_letters.insert(r.as_str(), t.1.to_native());
            }
        }
    }
}

/// The catalog's parts of an engine, restored apart from the rest (`Engine::restore`).
struct Catalog<'a> {
    strings: &'a mut super::interner::Interner,
    dims: &'a mut super::interner::DimsTable,
    dims_by_hash: &'a mut super::key_table::KeyTable<u32>,
}

impl Catalog<'_> {
    /// The catalog of one file: strings, dimension sets and `dims_by_hash` (all of them in a
    /// full snapshot, the ones its interval added in a delta).
    fn restore(&mut self, snap: &ArchivedEngineSnap) {
        if let Some(d) = snap.delta.as_ref()
            && (d.strings_from.to_native() != self.strings.len() as u64
                || d.dims_from.to_native() != self.dims.len() as u64)
        {
            tracing::error!(
                strings = self.strings.len(),
                dims = self.dims.len(),
                delta_strings_from = d.strings_from.to_native(),
                delta_dims_from = d.dims_from.to_native(),
                "a checkpoint delta does not continue the catalog of the one before it"
            );
        }
        for s in snap.strings.iter() {
            self.strings.intern(s.as_str());
        }
        for d in snap.dims.iter() {
            self.dims.intern(Dims {
                tenant: d[0].to_native(),
                offer: d[1].to_native(),
                affiliate: d[2].to_native(),
                country: d[3].to_native(),
                currency: d[4].to_native(),
            });
        }
        for t in snap.dims_by_hash.iter() {
            self.dims_by_hash.insert(t.0.to_native(), t.1.to_native());
        }
    }
}

/// The big structures of an engine, restored from a full snapshot apart from the rest.
struct Big<'a> {
    clicks: &'a mut super::click_index::ClickIndex,
    unique: &'a mut super::unique::UniqueClicks,
    dedup: &'a mut super::dedup::DedupMap,
}

impl Big<'_> {
    /// Click index, extras, visitor sets and dedup map from a full snapshot (with room for
    /// `more_clicks` and `more_keys` to come from deltas), straight from the archived bytes
    /// into maps sized up front, on parallel threads: the index (itself on three,
    /// `ClickIndex::restore_from`), the visitor days, and the dedup map.
    fn restore(self, snap: &ArchivedEngineSnap, more_clicks: usize, more_keys: usize) {
        *self.clicks =
            super::click_index::ClickIndex::with_capacity(snap.clicks.len() + more_clicks);
        *self.dedup = super::dedup::DedupMap::with_capacity(snap.dedup.len() + more_keys);
        let (clicks, dedup) = (&mut *self.clicks, &*self.dedup);
        let unique_days: Vec<(i64, super::key_table::KeySet)> = std::thread::scope(|s| {
            let days = s.spawn(|| {
                snap.unique
                    .iter()
                    .map(|day| {
                        let set = day.1.iter().map(|v| v.to_native()).collect();
                        (day.0.to_native(), set)
                    })
                    .collect()
            });
            s.spawn(move || {
                for d in snap.dedup.iter() {
                    dedup.restore(d.key.to_native(), ConvEntry::from_archived(d));
                }
            });
            clicks.restore_from(snap.clicks.as_slice());
            days.join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        for (day, set) in unique_days {
            self.unique.restore_day(day, set);
        }
        for x in snap.extras.iter() {
            self.clicks.extras.restore(
                x.id.to_native(),
                x.hash.to_native(),
                extras_from(x),
                x.last_used_ms.to_native(),
            );
        }
        self.clicks.extras.finish_restore();
    }
}
