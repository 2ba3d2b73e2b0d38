//! The pending buffer: conversions that arrived before their click.
//!
//! A conversion whose click is not (yet) in the index waits here until either the click arrives
//! (then it is attributed or found outside the window) or the click stream's watermark passes
//! `conversion time + allowed lateness` (then it is `unknown_click`). Either way the outcome does
//! not depend on how the two streams interleave. Status changes and duplicates of a waiting
//! conversion queue behind it and are written when it resolves.

use std::collections::{BTreeSet, HashMap};

use crate::event::keys::BuildIdentity;
use crate::rows::ConversionRow;

/// A first postback waiting for its click, with what happened to it meanwhile.
#[derive(Debug, Clone)]
pub struct PendingConversion {
    pub first: ConversionRow,
    pub click_key: u64,
    pub dedup_key: u64,
    /// When the watermark reaches this time, give up waiting (conversion ts + lateness).
    pub release_ms: i64,
    /// Applied status changes that arrived while waiting, in arrival order.
    pub follow_ups: Vec<ConversionRow>,
    /// Duplicate postbacks that arrived while waiting.
    pub duplicates: u32,
}

#[derive(Debug, Default)]
pub struct PendingBuffer {
    slots: Vec<Option<PendingConversion>>,
    free: Vec<u32>,
    by_click: HashMap<u64, Vec<u32>, BuildIdentity>,
    by_dedup: HashMap<u64, u32, BuildIdentity>,
    by_release: BTreeSet<(i64, u32)>,
}

impl PendingBuffer {
    pub fn insert(&mut self, p: PendingConversion) {
        let (click, dedup, release) = (p.click_key, p.dedup_key, p.release_ms);
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = Some(p);
                id
            }
            None => {
                self.slots.push(Some(p));
                (self.slots.len() - 1) as u32
            }
        };
        self.by_click.entry(click).or_default().push(id);
        self.by_dedup.insert(dedup, id);
        self.by_release.insert((release, id));
    }

    /// The waiting first postback of a dedup key, to queue a change or count a duplicate.
    pub fn get_mut(&mut self, dedup_key: u64) -> Option<&mut PendingConversion> {
        let id = *self.by_dedup.get(&dedup_key)?;
        self.slots[id as usize].as_mut()
    }

    fn take(&mut self, id: u32) -> Option<PendingConversion> {
        let p = self.slots[id as usize].take()?;
        self.free.push(id);
        self.by_dedup.remove(&p.dedup_key);
        self.by_release.remove(&(p.release_ms, id));
        Some(p)
    }

    /// Everything waiting for this click, in arrival order.
    pub fn take_for_click(&mut self, click_key: u64) -> Vec<PendingConversion> {
        let Some(ids) = self.by_click.remove(&click_key) else {
            return Vec::new();
        };
        ids.into_iter().filter_map(|id| self.take(id)).collect()
    }

    /// Everything whose release time is at or before `watermark_ms`.
    pub fn take_released(&mut self, watermark_ms: i64) -> Vec<PendingConversion> {
        let mut out = Vec::new();
        while let Some(&(release, id)) = self.by_release.first() {
            if release > watermark_ms {
                break;
            }
            if let Some(p) = self.take(id) {
                if let Some(list) = self.by_click.get_mut(&p.click_key) {
                    list.retain(|&x| x != id);
                    if list.is_empty() {
                        self.by_click.remove(&p.click_key);
                    }
                }
                out.push(p);
            } else {
                self.by_release.remove(&(release, id));
            }
        }
        out
    }

    /// Everything waiting, in release order (for snapshots; inserting in this order restores).
    pub fn all(&self) -> Vec<&PendingConversion> {
        self.by_release
            .iter()
            .filter_map(|(_, id)| self.slots[*id as usize].as_ref())
            .collect()
    }

    /// Every waiting conversion, mutable (keys and release times stay as they are).
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&mut PendingConversion)) {
        for p in self.slots.iter_mut().flatten() {
            f(p);
        }
    }

    pub fn len(&self) -> usize {
        self.by_dedup.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_dedup.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Status;
    use crate::state::dedup::Attribution;

    fn pending(click: u64, dedup: u64, release: i64) -> PendingConversion {
        PendingConversion {
            first: ConversionRow {
                tenant_id: "".into(),
                external_id: format!("e{dedup}").into(),
                version: 1,
                status: Status::Pending,
                previous_status: None,
                click_id: "c".into(),
                ts_ms: 0,
                amount_micros: 0,
                currency: "USD".into(),
                product_id: None,
                order_id: None,
                customer_id: None,
                metadata: None,
                attribution: Attribution::UnknownClick,
                offer_id: "".into(),
                affiliate_id: "".into(),
                country: "".into(),
                device: None,
                subs: Default::default(),
                click_ts_ms: None,
                seconds_to_convert: None,
                value: None,
                fraud_flags: 0,
            },
            click_key: click,
            dedup_key: dedup,
            release_ms: release,
            follow_ups: Vec::new(),
            duplicates: 0,
        }
    }

    #[test]
    fn released_by_click_or_by_watermark() {
        let mut b = PendingBuffer::default();
        b.insert(pending(1, 10, 100));
        b.insert(pending(1, 11, 300));
        b.insert(pending(2, 12, 200));
        assert_eq!(b.len(), 3);
        b.get_mut(12).unwrap().duplicates += 1;
        let by_wm = b.take_released(250);
        assert_eq!(
            by_wm.iter().map(|p| p.dedup_key).collect::<Vec<_>>(),
            [10, 12]
        );
        assert_eq!(by_wm[1].duplicates, 1);
        let by_click = b.take_for_click(1);
        assert_eq!(
            by_click.iter().map(|p| p.dedup_key).collect::<Vec<_>>(),
            [11]
        );
        assert!(b.is_empty());
        assert!(b.take_released(i64::MAX).is_empty());
        assert!(b.get_mut(11).is_none());
    }
}
