//! The click rules of the [`Engine`]: dedup by `click_id` (the click index), the unique-click
//! flag per visitor-day, the minute aggregates' click counts, and waking the conversions that
//! were waiting for this click (`pending.rs`, then [`Engine::resolve`] in `attribution.rs`).
//! The state stage calls [`Engine::on_click_run`] for each run it merged from one partition.

use std::sync::Arc;

use super::Engine;
use super::click_index::Extras;
use crate::event::ClickBatch;
use crate::event::keys;
use crate::event::time::hour_floor;
use crate::event::time::{day_of, minute_floor};
use crate::rows::{ClickRows, SinkBatch};

/// How many clicks ahead the click loop prefetches: far enough that the loads are back
/// before they are needed (a click's rules take roughly a memory latency), near enough that
/// the lines are still cached when they are.
const PREFETCH_AHEAD: usize = 8;

impl Engine {
    /// Interned dimensions of a click, looked up by the hash the decoder computed.
    fn click_dims(&mut self, arena: &crate::event::Arena, c: &crate::event::Click) -> u32 {
        if let Some(&id) = self.dims_by_hash.get(c.dims_hash) {
            return id;
        }
        let tenant = self.strings.intern(arena.get(c.tenant_id));
        let offer = self.strings.intern(arena.get(c.offer_id));
        let affiliate = self.strings.intern(arena.get(c.affiliate_id));
        let country = self.strings.intern(arena.get(c.country));
        let id = self.dims_id(tenant, offer, affiliate, country, self.empty);
        self.dims_by_hash.insert(c.dims_hash, id);
        self.new_dims_by_hash.push(|| (c.dims_hash, id));
        id
    }

    /// Starts loading the entries the click rules will look up for `c`: its dimension id, its
    /// slot in the click index and in its day's visitor set. Each is a cache miss once the
    /// state outgrows the caches; asked for [`PREFETCH_AHEAD`] clicks early, they arrive
    /// while the clicks in between are worked on (`key_table`).
    #[inline]
    fn prefetch_click(&self, c: &crate::event::Click) {
        self.dims_by_hash.prefetch(c.dims_hash);
        self.clicks.prefetch(c.click_key);
        if let Some(v) = c.visitor_hash {
            let day = day_of(c.ts_ms);
            self.unique.prefetch(day, keys::visitor_key(day, v));
        }
    }

    /// Processes a batch of decoded clicks.
    pub fn on_clicks(&mut self, batch: ClickBatch, out: &mut SinkBatch) {
        let batch = Arc::new(batch);
        let mut accepted = Vec::with_capacity(batch.clicks.len());
        self.on_click_run(&batch, 0..batch.clicks.len(), &mut accepted, out);
        out.clicks.push(ClickRows {
            batch,
            accepted,
            scrubbed: Vec::new(),
        });
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
            // Bounded by the batch, not the run: with several partitions a run can be a click
            // or two long, and the batch's next clicks come in the partition's next runs.
            if let Some(ahead) = batch.clicks.get(i + PREFETCH_AHEAD) {
                self.prefetch_click(ahead);
            }
            let c = &batch.clicks[i];
            self.counters.click_records += 1;
            let minute = minute_floor(c.ts_ms);
            let key = c.click_key;
            self.click_wm = self.click_wm.max(c.ts_ms);
            // Strings are interned only for dimensions not seen before; most clicks hit the
            // hash lookups.
            let dims = self.click_dims(arena, c);
            let (click, new) = self
                .clicks
                .add(key, c.ts_ms, dims, c.extras_hash, || Extras {
                    device: arena.get_opt(c.device).map(Arc::from),
                    subs: c.subs.map(|s| arena.get_opt(s).map(Arc::from)),
                });
            if !new {
                self.counters.duplicate_clicks += 1;
                self.agg.update(minute, dims, |m| m.duplicate_clicks += 1);
                self.by_click_hour
                    .update(hour_floor(c.ts_ms), dims, |m| m.duplicate_clicks += 1);
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
            let payout = self.click_payout(dims, c.ts_ms);
            let count = |m: &mut crate::rows::Measures| {
                m.clicks += 1;
                m.unique_clicks += i64::from(unique);
                m.payout_micros += payout;
                m.profit_micros -= payout;
            };
            self.agg.update(minute, dims, count);
            self.by_click_hour.update(hour_floor(c.ts_ms), dims, count);
            accepted.push((i as u32, unique));
            self.fraud_on_click(key, c.ts_ms, c.visitor_hash, || {
                (arena.get(c.tenant_id), arena.get_opt(c.ip))
            });

            for p in self.pending.take_for_click(key) {
                self.resolve(p, Some(click), out);
            }
        }
        self.after_batch(out);
    }
}
