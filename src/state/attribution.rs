//! Attribution: deciding a first postback against its click (attributed within the window,
//! outside it, or unknown click), copying the click's dimensions onto the row and the versions
//! queued behind it, and the counters and minute-aggregate deltas of a conversion and of each
//! later status change (revenue moves with `approved`). Called from `conversions.rs` (a
//! postback whose click is known or that was released), `clicks.rs` (a click that wakes
//! pending conversions) and `mod.rs` (release by watermark, the end of the input).

use super::Engine;
use super::click_index::IndexedClick;
use super::dedup::{Attribution, ConvEntry};
use super::pending::PendingConversion;
use super::valuation::add_value;
use crate::event::Status;
use crate::event::keys;
use crate::event::time::minute_floor;
use crate::rows::{ConversionRow, SinkBatch};

impl Engine {
    /// Attribution columns of a later version, from the dedup entry and (when the click is
    /// still indexed) the click's extras.
    pub(super) fn fill_attribution_from_entry(
        &mut self,
        row: &mut ConversionRow,
        entry: &ConvEntry,
    ) {
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
        row.value = self.value_again(entry);
        row.fraud_flags = entry.flags();
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
    pub(super) fn apply_change(&mut self, row: &ConversionRow, entry: &ConvEntry) {
        let Some(previous) = row.previous_status else {
            return;
        };
        let amount = entry.amount_micros;
        self.counters.status(previous, -1);
        self.counters.status(row.status, 1);
        let revenue = revenue_delta(previous, row.status, amount);
        self.counters.revenue_micros += revenue;
        // Reporting revenue and payout move with `approved`, as revenue does.
        let sign = revenue_delta(previous, row.status, 1);
        let value = row.value.as_ref();
        self.count_value(value, sign);
        let change = |m: &mut crate::rows::Measures| {
            m.add_status(previous, -1);
            m.add_status(row.status, 1);
            m.revenue_micros += revenue;
            add_value(m, value, sign);
        };
        self.agg
            .update(minute_floor(entry.ts_ms()), entry.dims, change);
        if let Some(hour) = self.click_hour_of(&row.click_id, entry) {
            self.by_click_hour.update(hour, entry.dims, change);
        }
    }

    /// Decides the attribution of a first postback and writes it with everything queued behind it.
    pub(super) fn resolve(
        &mut self,
        p: PendingConversion,
        click: Option<IndexedClick>,
        out: &mut SinkBatch,
    ) {
        let PendingConversion {
            mut first,
            dedup_key,
            click_key,
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
        first.value = self.value_first(
            first.amount_micros,
            &first.currency,
            first.ts_ms,
            dims,
            attribution == Attribution::Attributed,
        );
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
        entry.set_value_code(first.value.map_or(crate::money::CODE_NONE, |v| v.code));
        first.fraud_flags = self.conversion_flags(click_key, attribution, first.seconds_to_convert);
        entry.set_flags(first.fraud_flags);
        let flagged = i64::from(first.fraud_flags != 0);
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
        let approved = i64::from(status == Status::Approved);
        let value = first.value;
        self.count_value(value.as_ref(), approved);
        self.agg.update(minute_floor(first.ts_ms), dims, |m| {
            m.conversions += 1;
            m.add_status(status, 1);
            m.revenue_micros += revenue;
            add_value(m, value.as_ref(), approved);
            m.flagged_conversions += flagged;
            m.unattributed += unattributed;
            m.duplicate_conversions += i64::from(duplicates);
        });
        if attribution == Attribution::Attributed
            && let Some(click_ts) = first.click_ts_ms
        {
            self.by_click_hour
                .update(crate::event::time::hour_floor(click_ts), dims, |m| {
                    m.conversions += 1;
                    m.add_status(status, 1);
                    m.revenue_micros += revenue;
                    add_value(m, value.as_ref(), approved);
                    m.flagged_conversions += flagged;
                    m.duplicate_conversions += i64::from(duplicates);
                });
        }
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
            row.value = first.value;
            row.fraud_flags = first.fraud_flags;
            self.apply_change(&row, &entry);
            out.conversions.push(row);
        }
        out.conversions.push(first);
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
