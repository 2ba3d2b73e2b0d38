//! The state stage: dedup, attribution and aggregation — the core of attribd.
//!
//! [`Engine`] receives decoded batches from both streams on one thread, in whatever order the
//! pipeline's merge hands them over, and turns them into [`SinkBatch`]es:
//!
//! * clicks: dedup by `click_id` (click index), unique-click flag, aggregate counts;
//! * conversions: dedup by `(tenant_id, external_id)` (dedup map), status changes as new
//!   versions, attribution to the click (immediately, or via the pending buffer), aggregate
//!   deltas in the conversion's original bucket;
//! * watermarks: the highest event time seen per stream. They release pending conversions,
//!   close aggregate minutes, and evict state older than the windows.
//!
//! The outcome of every rule depends only on the order *within* each stream, never on how the
//! two streams interleave (see `DESIGN.md`, Semantics).
//!
//! The rules are split by what they act on: `clicks.rs`, `conversions.rs` (postbacks: dedup,
//! status changes) and `attribution.rs` (the decision and its aggregate deltas); this file
//! holds the [`Engine`], its settings and the time-driven work (watermarks, release,
//! aggregate flush, eviction).

pub mod aggregate;
mod attribution;
pub mod changes;
pub mod click_index;
mod clicks;
mod conversions;
pub mod counters;
pub mod dedup;
pub mod fraud;
pub mod interner;
pub mod key_table;
pub mod pending;
pub mod snapshot;
pub mod unique;
mod valuation;

use crate::event::time::{MS_PER_HOUR, MS_PER_MINUTE, day_of, minute_floor};
use crate::event::{DeadLetter, Stream};
use crate::rows::SinkBatch;
use aggregate::Aggregator;
use changes::ChangeLog;
use click_index::ClickIndex;
use dedup::DedupMap;
use interner::{Dims, DimsTable, Interner, Sym};
use pending::PendingBuffer;
use unique::UniqueClicks;

pub use counters::Counters;

/// Open by-click-hour buckets at which they are flushed between checkpoints (each flush is a
/// set of delta rows; fewer flushes, fewer rows, but a longer checkpoint pause).
const CLICK_HOUR_FLUSH_BUCKETS: usize = 1024;

/// The windows of the semantics, from the pipeline's `[semantics]` table.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// A conversion is attributed when `0 ≤ conv.ts − click.ts ≤ window`.
    pub attribution_window_ms: i64,
    /// How long a conversion waits for a late click after the click watermark passed it.
    pub allowed_lateness_ms: i64,
    /// How long a conversion's dedup entry is kept (status changes later than this are new).
    pub dedup_window_ms: i64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            attribution_window_ms: 30 * 24 * MS_PER_HOUR,
            allowed_lateness_ms: 5 * MS_PER_MINUTE,
            dedup_window_ms: 90 * 24 * MS_PER_HOUR,
        }
    }
}

/// Sizes of the state, for progress lines and memory accounting.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StateSizes {
    pub indexed_clicks: usize,
    pub click_extras: usize,
    pub dims: usize,
    pub dedup_keys: usize,
    pub pending: usize,
    pub open_buckets: usize,
    pub interned_strings: usize,
}

/// The state of one pipeline (one partition set).
pub struct Engine {
    cfg: EngineConfig,
    strings: Interner,
    dims: DimsTable,
    /// Click dimension ids by the decoder's `dims_hash`, so a known click interns nothing.
    dims_by_hash: key_table::KeyTable<u32>,
    clicks: ClickIndex,
    unique: UniqueClicks,
    dedup: DedupMap,
    pending: PendingBuffer,
    agg: Aggregator,
    /// The same measures by the hour of the click (`stats_click_hour`): clicks in their own
    /// hour, attributed conversions in their click's. Flushed whole at every checkpoint and at
    /// the end, so snapshots never hold it.
    by_click_hour: Aggregator,
    /// Highest click event time seen (`i64::MIN` before the first click).
    click_wm: i64,
    /// Highest conversion event time seen.
    conv_wm: i64,
    /// Streams that have ended; an ended stream no longer holds eviction back.
    clicks_closed: bool,
    convs_closed: bool,
    /// Watermark at the last eviction sweep; sweeps run once per event-time hour.
    last_sweep_ms: i64,
    counters: Counters,
    empty: Sym,
    /// The catalog (strings, dimension sets, `dims_by_hash`) only grows, so a delta checkpoint
    /// carries what was added since the last one: how many strings and dimension sets the
    /// checkpoints so far hold, and the `dims_by_hash` entries added since (change log on).
    sent_strings: usize,
    sent_dims: usize,
    new_dims_by_hash: ChangeLog<(u64, u32)>,
    /// How many interned strings the sinks have been sent ([`Engine::attach_names`]).
    names_sent: usize,
    /// Rates and payout rules (`[money]`, `[payouts]`), and the rule of each dimension id.
    money: valuation::MoneyState,
    /// Fraud signals' thresholds and what they remember (`[fraud]`).
    fraud: fraud::FraudState,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Engine {
        let strings = Interner::default();
        Engine {
            cfg,
            empty: 0,
            strings,
            dims: DimsTable::default(),
            dims_by_hash: key_table::KeyTable::default(),
            clicks: ClickIndex::default(),
            unique: UniqueClicks::default(),
            dedup: DedupMap::default(),
            pending: PendingBuffer::default(),
            agg: Aggregator::default(),
            by_click_hour: Aggregator::default(),
            click_wm: i64::MIN,
            conv_wm: i64::MIN,
            clicks_closed: false,
            convs_closed: false,
            last_sweep_ms: i64::MIN,
            counters: Counters::default(),
            sent_strings: 0,
            sent_dims: 0,
            new_dims_by_hash: ChangeLog::default(),
            names_sent: 0,
            money: valuation::MoneyState::default(),
            fraud: fraud::FraudState::default(),
        }
    }

    /// Gives up the personal fields of waiting postbacks `erased` says belong to an erased
    /// customer (their rows are then dropped on the way to the sinks); returns the
    /// (conversion key, click key) of each, so later versions and the click are filtered too.
    pub fn scrub_waiting(&mut self, erased: &crate::lifecycle::privacy::Erased) -> Vec<(u64, u64)> {
        let mut keys = Vec::new();
        self.pending.for_each_mut(|p| {
            if erased.drops(&p.first) {
                crate::lifecycle::privacy::scrub_waiting(&mut p.first);
                for f in &mut p.follow_ups {
                    crate::lifecycle::privacy::scrub_waiting(f);
                }
                keys.push((p.dedup_key, p.click_key));
            }
        });
        keys
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Turns the change log on: from now on the click index, the visitor sets and the dedup
    /// map record what they do, for [`Engine::delta_snapshot`] (the pipeline's checkpoints).
    pub fn track_changes(&mut self) {
        // What the engine holds now is in the checkpoint it was restored from (or empty).
        self.new_dims_by_hash.on = true;
        self.sent_strings = self.strings.len();
        self.sent_dims = self.dims.len();
        self.clicks.log.on = true;
        self.unique.log.on = true;
        self.dedup.log.on = true;
    }

    /// Operations logged since the last delta snapshot (0 with the log off).
    pub fn logged_changes(&self) -> usize {
        self.clicks.log.len() + self.unique.log.len() + self.dedup.log.len()
    }

    pub fn sizes(&self) -> StateSizes {
        StateSizes {
            indexed_clicks: self.clicks.len(),
            click_extras: self.clicks.extras.len(),
            dims: self.dims.len(),
            dedup_keys: self.dedup.len(),
            pending: self.pending.len(),
            open_buckets: self.agg.open_buckets(),
            interned_strings: self.strings.len(),
        }
    }

    /// Watermark of a stream (highest event time seen), if it has seen anything.
    pub fn watermark(&self, stream: Stream) -> Option<i64> {
        let wm = match stream {
            Stream::Clicks => self.click_wm,
            Stream::Conversions => self.conv_wm,
        };
        (wm != i64::MIN).then_some(wm)
    }

    /// Marks a stream as ended (its input is exhausted).
    pub fn close_stream(&mut self, stream: Stream) {
        match stream {
            Stream::Clicks => self.clicks_closed = true,
            Stream::Conversions => self.convs_closed = true,
        }
    }

    /// The lower watermark of the streams that are still open, or of all if both have ended.
    /// An open stream that has delivered nothing yet holds it back entirely (`None`): nobody
    /// knows how far behind that stream is.
    fn eviction_watermark(&self) -> Option<i64> {
        let open = |closed: bool, wm: i64| -> Option<Option<i64>> {
            if closed {
                None
            } else if wm == i64::MIN {
                Some(None)
            } else {
                Some(Some(wm))
            }
        };
        let streams = [
            open(self.clicks_closed, self.click_wm),
            open(self.convs_closed, self.conv_wm),
        ];
        let mut low = None;
        for s in streams.into_iter().flatten() {
            let wm = s?;
            low = Some(low.map_or(wm, |l: i64| l.min(wm)));
        }
        low
    }

    /// Counts and forwards dead letters from decoding.
    pub fn on_dead_letters(&mut self, dead: Vec<DeadLetter>, out: &mut SinkBatch) {
        for d in &dead {
            match d.stream {
                Stream::Clicks => self.counters.click_records += 1,
                Stream::Conversions => self.counters.conversion_records += 1,
            }
            *self
                .counters
                .dead_letters
                .entry(d.reason.as_str())
                .or_default() += 1;
        }
        out.dead_letters.extend(dead);
    }

    fn dims_id(
        &mut self,
        tenant: Sym,
        offer: Sym,
        affiliate: Sym,
        country: Sym,
        currency: Sym,
    ) -> u32 {
        self.dims.intern(Dims {
            tenant,
            offer,
            affiliate,
            country,
            currency,
        })
    }

    /// Advances time-driven work after each batch: pending release, aggregate flush, eviction.
    fn after_batch(&mut self, out: &mut SinkBatch) {
        if self.click_wm != i64::MIN {
            for p in self.pending.take_released(self.click_wm) {
                self.resolve(p, None, out);
            }
        }
        // Close minutes both streams have passed (plus lateness).
        let low = match (
            self.watermark(Stream::Clicks),
            self.watermark(Stream::Conversions),
        ) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return,
        };
        let close_before = minute_floor(low.saturating_sub(self.cfg.allowed_lateness_ms));
        self.agg
            .flush_before(close_before, &self.dims, &mut out.stats);
        self.attach_names(out);
        // The by-click-hour buckets go whole at a checkpoint, inside its pause: flushing them
        // here once there are this many keeps that pause short (the soak's 20 ms).
        if self.by_click_hour.open_buckets() >= CLICK_HOUR_FLUSH_BUCKETS {
            self.flush_click_hour(out);
        }
        if let Some(low) = self.eviction_watermark()
            && low >= self.last_sweep_ms.saturating_add(MS_PER_HOUR)
        {
            self.last_sweep_ms = low;
            self.evict(low);
        }
    }

    /// Drops state older than the windows, measured from the lower watermark of the open
    /// streams so a lagging stream never finds its state evicted. A conversion that arrives
    /// after its click was evicted (more than window + lateness behind) is `unknown_click`.
    /// (Public for the checkpoint bench, which times one sweep.)
    pub fn evict(&mut self, low_wm: i64) {
        let horizon = low_wm
            .saturating_sub(self.cfg.attribution_window_ms)
            .saturating_sub(self.cfg.allowed_lateness_ms);
        self.clicks.evict_before(horizon);
        self.fraud_evict(horizon, low_wm);
        self.unique
            .evict_before(day_of(low_wm.saturating_sub(self.cfg.allowed_lateness_ms)) - 1);
        self.dedup
            .evict_before(low_wm.saturating_sub(self.cfg.dedup_window_ms));
    }

    /// End of a finite input: resolve everything pending and flush all aggregates.
    pub fn finish(&mut self, out: &mut SinkBatch) {
        for p in self.pending.take_released(i64::MAX) {
            self.resolve(p, None, out);
        }
        self.agg.flush_all(&self.dims, &mut out.stats);
        self.flush_click_hour(out);
    }

    /// Whether the aggregate by click hour is kept (`[sink] stats_click_hour`); it is never in
    /// a checkpoint, so this may change between runs.
    pub fn set_click_hour(&mut self, on: bool) {
        if !on {
            self.by_click_hour = Aggregator::off();
        }
    }

    /// Every open by-click-hour bucket as delta rows (at a checkpoint, before its barrier).
    pub fn flush_click_hour(&mut self, out: &mut SinkBatch) {
        self.by_click_hour
            .flush_all(&self.dims, &mut out.click_hour);
        self.attach_names(out);
    }

    /// Puts the strings interned since the last batch that carried any into `out`, which
    /// holds aggregate rows naming them by id: the sinks learn every name before its first use
    /// ([`crate::rows::Names`]). Batches reach the sinks in the order they were made.
    fn attach_names(&mut self, out: &mut SinkBatch) {
        let all = self.strings.all();
        if all.len() <= self.names_sent {
            return;
        }
        if out.names.is_empty() {
            out.names.first = self.names_sent as u32;
        }
        out.names.names.extend_from_slice(&all[self.names_sent..]);
        self.names_sent = all.len();
    }

    /// The hour of the click an attributed conversion `entry` (of `click_id`) belongs to: the
    /// click's own time while it is indexed, else the conversion time less the recorded delay
    /// (whole seconds).
    fn click_hour_of(&self, click_id: &str, entry: &dedup::ConvEntry) -> Option<i64> {
        if entry.attribution() != dedup::Attribution::Attributed || entry.is_pending() {
            return None;
        }
        let ts = match self.clicks.get(crate::event::keys::click_key(click_id)) {
            Some(c) => c.ts_ms,
            None if entry.click_delay_s != u32::MAX => {
                entry.ts_ms() - i64::from(entry.click_delay_s) * 1000
            }
            None => return None,
        };
        Some(crate::event::time::hour_floor(ts))
    }
}

#[cfg(test)]
mod tests;
