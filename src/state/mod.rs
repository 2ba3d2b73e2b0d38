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

pub mod aggregate;
pub mod click_index;
pub mod counters;
pub mod dedup;
pub mod interner;
pub mod pending;
pub mod snapshot;
pub mod unique;

use std::collections::HashMap;
use std::sync::Arc;

use crate::event::keys;
use crate::event::time::{MS_PER_HOUR, MS_PER_MINUTE, day_of, minute_floor};
use crate::event::{
    ClickBatch, Conversion, ConversionBatch, DeadLetter, DeadReason, Status, Stream,
};
use crate::rows::{ClickRows, ConversionRow, SinkBatch};
use aggregate::Aggregator;
use click_index::{ClickIndex, Extras, IndexedClick};
use dedup::{Attribution, ConvEntry, DedupMap};
use interner::{Dims, DimsTable, Interner, Sym};
use pending::{PendingBuffer, PendingConversion};
use unique::UniqueClicks;

pub use counters::Counters;

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
    dims_by_hash: HashMap<u64, u32, keys::BuildIdentity>,
    clicks: ClickIndex,
    unique: UniqueClicks,
    dedup: DedupMap,
    pending: PendingBuffer,
    agg: Aggregator,
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
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Engine {
        let strings = Interner::default();
        Engine {
            cfg,
            empty: 0,
            strings,
            dims: DimsTable::default(),
            dims_by_hash: HashMap::default(),
            clicks: ClickIndex::default(),
            unique: UniqueClicks::default(),
            dedup: DedupMap::default(),
            pending: PendingBuffer::default(),
            agg: Aggregator::default(),
            click_wm: i64::MIN,
            conv_wm: i64::MIN,
            clicks_closed: false,
            convs_closed: false,
            last_sweep_ms: i64::MIN,
            counters: Counters::default(),
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
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

    /// Interned dimensions of a click, looked up by the hash the decoder computed.
    fn click_dims(&mut self, arena: &crate::event::Arena, c: &crate::event::Click) -> u32 {
        if let Some(&id) = self.dims_by_hash.get(&c.dims_hash) {
            return id;
        }
        let tenant = self.strings.intern(arena.get(c.tenant_id));
        let offer = self.strings.intern(arena.get(c.offer_id));
        let affiliate = self.strings.intern(arena.get(c.affiliate_id));
        let country = self.strings.intern(arena.get(c.country));
        let id = self.dims_id(tenant, offer, affiliate, country, self.empty);
        self.dims_by_hash.insert(c.dims_hash, id);
        id
    }

    /// Processes a batch of decoded clicks.
    pub fn on_clicks(&mut self, batch: ClickBatch, out: &mut SinkBatch) {
        let batch = Arc::new(batch);
        let mut accepted = Vec::with_capacity(batch.clicks.len());
        self.on_click_run(&batch, 0..batch.clicks.len(), &mut accepted, out);
        out.clicks.push(ClickRows { batch, accepted });
    }

    /// Processes the clicks `range` of a batch (a run the state stage merged from one
    /// partition), adding the accepted ones to `accepted`; the caller hands the batch with its
    /// accepted clicks to the sinks (once per batch, or at a checkpoint).
    pub fn on_click_run(
        &mut self,
        batch: &Arc<ClickBatch>,
        range: std::ops::Range<usize>,
        accepted: &mut Vec<(u32, bool)>,
        out: &mut SinkBatch,
    ) {
        let arena = &batch.arena;
        for i in range {
            let c = &batch.clicks[i];
            self.counters.click_records += 1;
            let minute = minute_floor(c.ts_ms);
            let key = c.click_key;
            self.click_wm = self.click_wm.max(c.ts_ms);
            // Strings are interned only for dimensions not seen before; most clicks hit the
            // hash lookups.
            let dims = self.click_dims(arena, c);
            let extras = self
                .clicks
                .extras
                .intern(c.extras_hash, c.ts_ms, || Extras {
                    device: arena.get_opt(c.device).map(Arc::from),
                    subs: c.subs.map(|s| arena.get_opt(s).map(Arc::from)),
                });
            let click = IndexedClick {
                ts_ms: c.ts_ms,
                dims,
                extras,
            };
            if !self.clicks.insert_if_new(key, click) {
                self.counters.duplicate_clicks += 1;
                self.agg.update(minute, dims, |m| m.duplicate_clicks += 1);
                continue;
            }
            let unique = match c.visitor_hash {
                None => true,
                Some(v) => {
                    let day = day_of(c.ts_ms);
                    self.unique.first_visit(day, keys::visitor_key(day, v))
                }
            };
            self.counters.clicks += 1;
            self.counters.unique_clicks += u64::from(unique);
            self.agg.update(minute, dims, |m| {
                m.clicks += 1;
                m.unique_clicks += i64::from(unique);
            });
            accepted.push((i as u32, unique));

            for p in self.pending.take_for_click(key) {
                self.resolve(p, Some(click), out);
            }
        }
        self.after_batch(out);
    }

    /// Processes a batch of decoded conversion postbacks.
    pub fn on_conversions(&mut self, batch: ConversionBatch, out: &mut SinkBatch) {
        self.on_conversion_run(&batch, 0..batch.conversions.len(), out);
    }

    /// Processes the postbacks `range` of a batch (a run from one partition).
    pub fn on_conversion_run(
        &mut self,
        batch: &ConversionBatch,
        range: std::ops::Range<usize>,
        out: &mut SinkBatch,
    ) {
        let arena = &batch.arena;
        for c in &batch.conversions[range] {
            self.counters.conversion_records += 1;
            self.conv_wm = self.conv_wm.max(c.ts_ms);
            let tenant_id = arena.get(c.tenant_id);
            let dedup_key = keys::conversion_key(tenant_id, arena.get(c.external_id));
            match self.dedup.get(dedup_key) {
                None => self.first_postback(batch, c, dedup_key, out),
                Some(entry) if entry.status() == c.status => {
                    self.counters.duplicate_conversions += 1;
                    if entry.is_pending() {
                        if let Some(p) = self.pending.get_mut(dedup_key) {
                            p.duplicates += 1;
                        }
                    } else {
                        self.agg
                            .update(minute_floor(entry.ts_ms()), entry.dims, |m| {
                                m.duplicate_conversions += 1
                            });
                    }
                }
                Some(entry) if c.status == Status::Pending => {
                    self.counters.refused_changes += 1;
                    *self
                        .counters
                        .dead_letters
                        .entry(DeadReason::RefusedStatusChange.as_str())
                        .or_default() += 1;
                    out.dead_letters.push(DeadLetter {
                        reason: DeadReason::RefusedStatusChange,
                        detail: format!(
                            "status change {} → pending refused (version {})",
                            entry.status().as_str(),
                            entry.version()
                        ),
                        stream: Stream::Conversions,
                        source: Arc::from("state"),
                        position: c.position,
                        raw: arena.get(c.raw).as_bytes().to_vec(),
                    });
                }
                Some(mut entry) => self.status_change(batch, c, dedup_key, &mut entry, out),
            }
        }
        self.after_batch(out);
    }

    fn row_from(&mut self, batch: &ConversionBatch, c: &Conversion) -> ConversionRow {
        let a = &batch.arena;
        let boxed = |s| a.get_opt(s).map(Box::from);
        ConversionRow {
            tenant_id: self.strings.intern_arc(a.get(c.tenant_id)),
            external_id: a.get(c.external_id).into(),
            version: 1,
            status: c.status,
            previous_status: None,
            click_id: a.get(c.click_id).into(),
            ts_ms: c.ts_ms,
            amount_micros: c.amount_micros,
            currency: self.strings.intern_arc(a.get(c.currency)),
            product_id: boxed(c.product_id),
            order_id: boxed(c.order_id),
            customer_id: boxed(c.customer_id),
            metadata: boxed(c.metadata),
            attribution: Attribution::UnknownClick,
            offer_id: self.strings.get(self.empty).clone(),
            affiliate_id: self.strings.get(self.empty).clone(),
            country: self.strings.get(self.empty).clone(),
            device: None,
            subs: Default::default(),
            click_ts_ms: None,
            seconds_to_convert: None,
        }
    }

    fn first_postback(
        &mut self,
        batch: &ConversionBatch,
        c: &Conversion,
        dedup_key: u64,
        out: &mut SinkBatch,
    ) {
        let row = self.row_from(batch, c);
        let click_key = keys::click_key(&row.click_id);
        self.dedup.put(
            dedup_key,
            ConvEntry::new(c.ts_ms, c.status, c.amount_micros),
        );
        let pending = PendingConversion {
            first: row,
            click_key,
            dedup_key,
            release_ms: c.ts_ms.saturating_add(self.cfg.allowed_lateness_ms),
            follow_ups: Vec::new(),
            duplicates: 0,
        };
        match self.clicks.get(click_key) {
            Some(click) => self.resolve(pending, Some(click), out),
            None if self.click_wm >= pending.release_ms => self.resolve(pending, None, out),
            None => self.pending.insert(pending),
        }
    }

    fn status_change(
        &mut self,
        batch: &ConversionBatch,
        c: &Conversion,
        dedup_key: u64,
        entry: &mut ConvEntry,
        out: &mut SinkBatch,
    ) {
        self.counters.status_changes += 1;
        let previous = entry.status();
        entry.set_version(entry.version() + 1);
        entry.set_status(c.status);
        self.dedup.put(dedup_key, *entry);
        let mut row = self.row_from(batch, c);
        row.version = entry.version();
        row.previous_status = Some(previous);
        // The first postback's time and amount stand.
        row.ts_ms = entry.ts_ms();
        row.amount_micros = entry.amount_micros;
        if entry.is_pending() {
            if let Some(p) = self.pending.get_mut(dedup_key) {
                row.currency = p.first.currency.clone();
                p.follow_ups.push(row);
            }
            return;
        }
        self.fill_attribution_from_entry(&mut row, entry);
        self.apply_change(&row, entry);
        out.conversions.push(row);
    }

    /// Attribution columns of a later version, from the dedup entry and (when the click is
    /// still indexed) the click's extras.
    fn fill_attribution_from_entry(&mut self, row: &mut ConversionRow, entry: &ConvEntry) {
        let d = self.dims.get(entry.dims);
        row.attribution = entry.attribution();
        row.currency = self.strings.get(d.currency).clone();
        row.offer_id = self.strings.get(d.offer).clone();
        row.affiliate_id = self.strings.get(d.affiliate).clone();
        row.country = self.strings.get(d.country).clone();
        if entry.click_delay_s != u32::MAX {
            let delay = entry.click_delay_s as i64;
            row.seconds_to_convert = Some(delay);
            row.click_ts_ms = Some(row.ts_ms - delay * 1000);
        }
        if row.attribution == Attribution::Attributed
            && let Some(click) = self.clicks.get(keys::click_key(&row.click_id))
            && let Some(p) = self.clicks.extras.get(click.extras)
        {
            row.device = p.device.clone();
            row.subs = p.subs.clone();
            row.click_ts_ms = Some(click.ts_ms);
        }
    }

    /// Aggregate deltas and counters of an applied status change.
    fn apply_change(&mut self, row: &ConversionRow, entry: &ConvEntry) {
        let Some(previous) = row.previous_status else {
            return;
        };
        let amount = entry.amount_micros;
        self.counters.status(previous, -1);
        self.counters.status(row.status, 1);
        let revenue = revenue_delta(previous, row.status, amount);
        self.counters.revenue_micros += revenue;
        self.agg
            .update(minute_floor(entry.ts_ms()), entry.dims, |m| {
                m.add_status(previous, -1);
                m.add_status(row.status, 1);
                m.revenue_micros += revenue;
            });
    }

    /// Decides the attribution of a first postback and writes it with everything queued behind it.
    fn resolve(&mut self, p: PendingConversion, click: Option<IndexedClick>, out: &mut SinkBatch) {
        let PendingConversion {
            mut first,
            dedup_key,
            follow_ups,
            duplicates,
            ..
        } = p;
        let tenant = self.strings.intern(&first.tenant_id);
        let currency = self.strings.intern(&first.currency);
        let mut delay_s = u32::MAX;
        let (attribution, offer, affiliate, country) = match click {
            None => (
                Attribution::UnknownClick,
                self.empty,
                self.empty,
                self.empty,
            ),
            Some(click) => {
                let delta = first.ts_ms - click.ts_ms;
                first.click_ts_ms = Some(click.ts_ms);
                first.seconds_to_convert = Some(delta.div_euclid(1000));
                delay_s = u32::try_from(delta.div_euclid(1000)).unwrap_or(u32::MAX);
                if (0..=self.cfg.attribution_window_ms).contains(&delta) {
                    let d = self.dims.get(click.dims);
                    first.offer_id = self.strings.get(d.offer).clone();
                    first.affiliate_id = self.strings.get(d.affiliate).clone();
                    first.country = self.strings.get(d.country).clone();
                    if let Some(e) = self.clicks.extras.get(click.extras) {
                        first.device = e.device.clone();
                        first.subs = e.subs.clone();
                    }
                    (Attribution::Attributed, d.offer, d.affiliate, d.country)
                } else {
                    (
                        Attribution::OutsideWindow,
                        self.empty,
                        self.empty,
                        self.empty,
                    )
                }
            }
        };
        first.attribution = attribution;
        let dims = self.dims_id(tenant, offer, affiliate, country, currency);
        match attribution {
            Attribution::Attributed => self.counters.attributed += 1,
            Attribution::UnknownClick => self.counters.unknown_click += 1,
            Attribution::OutsideWindow => self.counters.outside_window += 1,
        }
        let mut entry = match self.dedup.get(dedup_key) {
            Some(e) => e,
            None => ConvEntry::new(first.ts_ms, first.status, first.amount_micros),
        };
        entry.resolve(attribution, dims, delay_s);
        self.dedup.put(dedup_key, entry);

        let (status, amount) = (first.status, first.amount_micros);
        self.counters.conversions += 1;
        self.counters.status(status, 1);
        let revenue = if status == Status::Approved {
            amount
        } else {
            0
        };
        self.counters.revenue_micros += revenue;
        let unattributed = i64::from(attribution != Attribution::Attributed);
        self.agg.update(minute_floor(first.ts_ms), dims, |m| {
            m.conversions += 1;
            m.add_status(status, 1);
            m.revenue_micros += revenue;
            m.unattributed += unattributed;
            m.duplicate_conversions += i64::from(duplicates);
        });
        for mut row in follow_ups {
            row.attribution = first.attribution;
            row.offer_id = first.offer_id.clone();
            row.affiliate_id = first.affiliate_id.clone();
            row.country = first.country.clone();
            row.device = first.device.clone();
            row.subs = first.subs.clone();
            row.click_ts_ms = first.click_ts_ms;
            row.seconds_to_convert = first.seconds_to_convert;
            row.currency = first.currency.clone();
            self.apply_change(&row, &entry);
            out.conversions.push(row);
        }
        out.conversions.push(first);
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
            .flush_before(close_before, &self.dims, &self.strings, &mut out.stats);
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
    fn evict(&mut self, low_wm: i64) {
        let horizon = low_wm
            .saturating_sub(self.cfg.attribution_window_ms)
            .saturating_sub(self.cfg.allowed_lateness_ms);
        self.clicks.evict_before(horizon);
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
        self.agg
            .flush_all(&self.dims, &self.strings, &mut out.stats);
    }
}

/// Revenue change when a conversion goes from `from` to `to`.
fn revenue_delta(from: Status, to: Status, amount: i64) -> i64 {
    match (from == Status::Approved, to == Status::Approved) {
        (false, true) => amount,
        (true, false) => -amount,
        _ => 0,
    }
}

#[cfg(test)]
mod tests;
