//! The postback rules of the [`Engine`]: dedup by `(tenant_id, external_id)` (the dedup map),
//! duplicates counted, a change back to `pending` refused (a dead letter), a first postback
//! attributed at once or parked in the pending buffer until its click comes or the lateness
//! passes, and a status change written as a new version. How the attribution is decided and
//! what a change does to the aggregates is in `attribution.rs`. The state stage calls
//! [`Engine::on_conversion_run`] for each run it merged from one partition.

use std::sync::Arc;

use super::Engine;
use super::dedup::{Attribution, ConvEntry};
use super::pending::PendingConversion;
use crate::event::keys;
use crate::event::time::minute_floor;
use crate::event::{Conversion, ConversionBatch, DeadLetter, DeadReason, Status, Stream};
use crate::rows::{ConversionRow, SinkBatch};

impl Engine {
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
                        if let Some(hour) = self.click_hour_of(arena.get(c.click_id), &entry) {
                            self.by_click_hour
                                .update(hour, entry.dims, |m| m.duplicate_conversions += 1);
                        }
                    }
                }
                // A change back to pending is refused; so is a change past the last version
                // an entry can number (`MAX_VERSION`), where `argMax(…, version)` and
                // ReplacingMergeTree could no longer tell the current row.
                Some(entry)
                    if c.status == Status::Pending
                        || entry.version() >= super::dedup::MAX_VERSION =>
                {
                    self.counters.refused_changes += 1;
                    *self
                        .counters
                        .dead_letters
                        .entry(DeadReason::RefusedStatusChange.as_str())
                        .or_default() += 1;
                    out.dead_letters.push(DeadLetter {
                        reason: DeadReason::RefusedStatusChange,
                        detail: if c.status == Status::Pending {
                            format!(
                                "status change {} → pending refused (version {})",
                                entry.status().as_str(),
                                entry.version()
                            )
                        } else {
                            format!(
                                "status change {} → {} refused: the conversion has had {} versions, the most one can have",
                                entry.status().as_str(),
                                c.status.as_str(),
                                entry.version()
                            )
                        },
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
            value: None,
            fraud_flags: 0,
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
}
