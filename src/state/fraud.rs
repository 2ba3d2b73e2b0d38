//! Fraud signals: conversions are flagged, never dropped.
//!
//! Four flags, decided once per conversion when its first postback is attributed (or found
//! outside the window) and carried by every later version:
//!
//! * `too_fast` — click-to-conversion time below `[fraud] min_seconds_to_convert` (CTIT);
//! * `ip_burst` — its click was one of more than `max_clicks_per_ip_per_minute` clicks of one
//!   IP on one offer (of a tenant) in one UTC minute (the clicks past the limit are flagged);
//! * `flagged_ip` — its click came from an IP that had burst (in the same tenant) before that
//!   click, within `remember_flagged_ip`;
//! * `outside_window` — the postback came for a click older than the attribution window (or
//!   dated before its click).
//!
//! The click-side signals are worked out as clicks are accepted (`clicks.rs` calls
//! [`Engine::fraud_on_click`]) and kept, for flagged clicks only, until the click itself
//! leaves the click index. The state here is part of every checkpoint, so a restarted run
//! flags exactly what an uninterrupted one does.

use std::collections::BTreeMap;
use std::time::Duration;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::Engine;
use super::dedup::Attribution;
use crate::checkpoint::snapshot::{ArchivedFraudSnap, FraudSnap};
use crate::event::time::{MS_PER_MINUTE, minute_floor};

/// `[fraud]`: thresholds of the signals (0 turns one off; `outside_window` is always on).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FraudConfig {
    /// A conversion fewer seconds than this after its click is `too_fast` (`10` flags 0–9 s).
    /// 0 = off.
    pub min_seconds_to_convert: u32,
    /// More clicks than this from one IP on one offer in one UTC minute are `ip_burst`. 0 = off.
    pub max_clicks_per_ip_per_minute: u32,
    /// How long an IP that burst marks its later clicks (of the same tenant) as `flagged_ip`.
    /// 0 = off.
    #[serde(with = "humantime_serde")]
    pub remember_flagged_ip: Duration,
}

impl Default for FraudConfig {
    fn default() -> Self {
        FraudConfig {
            min_seconds_to_convert: 0,
            max_clicks_per_ip_per_minute: 0,
            remember_flagged_ip: Duration::from_secs(24 * 3600),
        }
    }
}

/// The flags, one bit each.
pub const TOO_FAST: u8 = 1;
pub const IP_BURST: u8 = 2;
pub const FLAGGED_IP: u8 = 4;
pub const OUTSIDE_WINDOW: u8 = 8;
/// The flags a click passes on to its conversions.
pub const CLICK_FLAGS: u8 = IP_BURST | FLAGGED_IP;

/// Names of the flags, in bit order (the `fraud_flags` list column and the metric label).
pub const FLAG_NAMES: [(u8, &str); 4] = [
    (TOO_FAST, "too_fast"),
    (IP_BURST, "ip_burst"),
    (FLAGGED_IP, "flagged_ip"),
    (OUTSIDE_WINDOW, "outside_window"),
];

/// The names of the flags set in `flags`, in bit order.
pub fn flag_names(flags: u8) -> impl Iterator<Item = &'static str> {
    FLAG_NAMES
        .into_iter()
        .filter(move |(bit, _)| flags & bit != 0)
        .map(|(_, name)| name)
}

/// What the signals remember.
#[derive(Debug, Default)]
pub(super) struct FraudState {
    cfg: FraudConfig,
    /// Clicks per (visitor hash = tenant, offer, ip) per open UTC minute.
    per_minute: BTreeMap<i64, FxHashMap<u64, u32>>,
    /// Hash of (tenant, IP) → time of the click that last made it burst.
    flagged_ips: FxHashMap<u64, i64>,
    /// Flagged clicks still in the click index: click key → (flags, click time).
    flagged_clicks: FxHashMap<u64, (u8, i64)>,
}

impl Engine {
    /// Sets the thresholds (`[fraud]`); the remembered state stays.
    pub fn set_fraud(&mut self, cfg: FraudConfig) {
        self.fraud.cfg = cfg;
    }

    /// The click-side signals of an accepted click: counts it against its IP's minute, and
    /// remembers it when it is flagged.
    pub(super) fn fraud_on_click<'a>(
        &mut self,
        click_key: u64,
        ts_ms: i64,
        visitor_hash: Option<u64>,
        tenant_and_ip: impl FnOnce() -> (&'a str, Option<&'a str>),
    ) {
        let limit = self.fraud.cfg.max_clicks_per_ip_per_minute;
        // The strings are only read when the rule is on: reading them is a first touch of the
        // batch's text (written by the decoder on another core), a cache miss per click.
        let (Some(visitor), true) = (visitor_hash, limit > 0) else {
            return;
        };
        let (tenant, Some(ip)) = tenant_and_ip() else {
            return;
        };
        // An IP is flagged within its tenant: one tenant's bots say nothing about (and must
        // not reveal anything to) another's traffic.
        let ip_hash = xxhash_rust::xxh3::xxh3_64_with_seed(
            ip.as_bytes(),
            xxhash_rust::xxh3::xxh3_64(tenant.as_bytes()),
        );
        let mut flags = 0;
        let remember = self.fraud.cfg.remember_flagged_ip.as_millis() as i64;
        if remember > 0
            && let Some(&at) = self.fraud.flagged_ips.get(&ip_hash)
            && at <= ts_ms
            && ts_ms - at <= remember
        {
            flags |= FLAGGED_IP;
        }
        let minute = minute_floor(ts_ms);
        let count = self
            .fraud
            .per_minute
            .entry(minute)
            .or_default()
            .entry(visitor)
            .or_default();
        *count += 1;
        if *count > limit {
            flags |= IP_BURST;
            self.counters.ip_burst_clicks += 1;
            let at = self.fraud.flagged_ips.entry(ip_hash).or_insert(ts_ms);
            *at = (*at).max(ts_ms);
        }
        if flags != 0 {
            self.fraud.flagged_clicks.insert(click_key, (flags, ts_ms));
        }
        // Minutes the click watermark has left behind by more than the lateness get no more
        // clicks worth counting.
        let horizon = minute_floor(
            self.click_wm
                .saturating_sub(self.cfg.allowed_lateness_ms)
                .saturating_sub(MS_PER_MINUTE),
        );
        if self
            .fraud
            .per_minute
            .first_key_value()
            .is_some_and(|(&m, _)| m < horizon)
        {
            self.fraud.per_minute = self.fraud.per_minute.split_off(&horizon);
        }
    }

    /// The flags of a conversion being decided (first postback), and their counters.
    pub(super) fn conversion_flags(
        &mut self,
        click_key: u64,
        attribution: Attribution,
        seconds_to_convert: Option<i64>,
    ) -> u8 {
        let mut flags = 0;
        if attribution != Attribution::UnknownClick
            && let Some((f, _)) = self.fraud.flagged_clicks.get(&click_key)
        {
            flags |= f & CLICK_FLAGS;
        }
        let min = i64::from(self.fraud.cfg.min_seconds_to_convert);
        if attribution == Attribution::Attributed && seconds_to_convert.is_some_and(|s| s < min) {
            flags |= TOO_FAST;
        }
        if attribution == Attribution::OutsideWindow {
            flags |= OUTSIDE_WINDOW;
        }
        let c = &mut self.counters;
        c.flagged_conversions += u64::from(flags != 0);
        c.flag_too_fast += u64::from(flags & TOO_FAST != 0);
        c.flag_ip_burst += u64::from(flags & IP_BURST != 0);
        c.flag_flagged_ip += u64::from(flags & FLAGGED_IP != 0);
        c.flag_outside_window += u64::from(flags & OUTSIDE_WINDOW != 0);
        flags
    }

    /// Forgets flagged clicks the click index has evicted (`horizon`) and IPs flagged longer
    /// ago than `remember_flagged_ip` before `low_wm`.
    pub(super) fn fraud_evict(&mut self, horizon: i64, low_wm: i64) {
        let remember = self.fraud.cfg.remember_flagged_ip.as_millis() as i64;
        let ip_horizon = low_wm.saturating_sub(remember);
        self.fraud
            .flagged_clicks
            .retain(|_, (_, ts)| *ts >= horizon);
        self.fraud.flagged_ips.retain(|_, at| *at >= ip_horizon);
    }

    /// The signals' state for a checkpoint (whole, in full and delta checkpoints alike), in
    /// hash-map order: the checkpoint writer sorts it ([`FraudSnap::sort`]) off the state
    /// stage, whose pause this copy is part of.
    pub(super) fn fraud_snapshot(&self) -> FraudSnap {
        FraudSnap {
            per_minute: self
                .fraud
                .per_minute
                .iter()
                .flat_map(|(m, v)| v.iter().map(|(k, n)| (*m, *k, *n)))
                .collect(),
            flagged_ips: self
                .fraud
                .flagged_ips
                .iter()
                .map(|(k, v)| (*k, *v))
                .collect(),
            flagged_clicks: self
                .fraud
                .flagged_clicks
                .iter()
                .map(|(k, (f, ts))| (*k, *f, *ts))
                .collect(),
        }
    }

    pub(super) fn restore_fraud(&mut self, snap: &ArchivedFraudSnap) {
        for t in snap.per_minute.iter() {
            self.fraud
                .per_minute
                .entry(t.0.to_native())
                .or_default()
                .insert(t.1.to_native(), t.2.to_native());
        }
        for t in snap.flagged_ips.iter() {
            self.fraud
                .flagged_ips
                .insert(t.0.to_native(), t.1.to_native());
        }
        for t in snap.flagged_clicks.iter() {
            self.fraud
                .flagged_clicks
                .insert(t.0.to_native(), (t.1, t.2.to_native()));
        }
    }
}
