//! The engine's counters and state sizes, mirrored into Prometheus. The engine counts (its
//! counters are checkpointed with the state, see `state::counters`); after each batch the state
//! stage calls [`Metrics::publish_engine`], which stores the current values here — so a scrape
//! never touches the state stage. Each counter's metric (its own, or a series of a family) and
//! kind (counter, gauge, money gauge) come from the `counters!` table.

use std::sync::atomic::Ordering;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{GaugeF, Labels, Metrics, label};
use crate::rows::Unit;
use crate::state::counters::{CounterInfo, Metric, MetricFamily};
use crate::state::{Counters, StateSizes};

/// The metric one engine counter is mirrored into, by its kind (see `state::counters`). Values
/// are stored, not added: the engine counts, this only shows.
pub(super) enum Mirror {
    /// An unsigned count: a counter.
    Count(Counter),
    /// A signed count (conversions by current status): a gauge.
    Level(Gauge),
    /// Money in micro-units: a gauge in units.
    Money(GaugeF),
}

/// A family of mirrors, one series per label value; its kind is that of its members.
pub(super) enum MirrorFamily {
    Count(Family<Labels, Counter>),
    Level(Family<Labels, Gauge>),
    Money(Family<Labels, GaugeF>),
}

impl MirrorFamily {
    /// Registers `family` in `r` with the kind of its member `info`.
    fn register(r: &mut Registry, family: &MetricFamily, info: &CounterInfo) -> MirrorFamily {
        let (name, help) = (family.name, family.help);
        match (info.unit, info.only_grows) {
            (Unit::Money, _) => {
                let f = Family::<Labels, GaugeF>::default();
                r.register(name, help, f.clone());
                MirrorFamily::Money(f)
            }
            (Unit::Count, true) => {
                let f = Family::<Labels, Counter>::default();
                r.register(name, help, f.clone());
                MirrorFamily::Count(f)
            }
            (Unit::Count, false) => {
                let f = Family::<Labels, Gauge>::default();
                r.register(name, help, f.clone());
                MirrorFamily::Level(f)
            }
        }
    }
}

impl Mirror {
    /// Registers the metric of `info` in `r`, or its series in its family (registered with the
    /// family's first member and kept in `families`).
    pub(super) fn register(
        r: &mut Registry,
        families: &mut Vec<(&'static str, MirrorFamily)>,
        info: &CounterInfo,
    ) -> Mirror {
        match info.metric {
            Metric::Own { name, help } => {
                let m = match (info.unit, info.only_grows) {
                    (Unit::Money, _) => Mirror::Money(GaugeF::default()),
                    (Unit::Count, true) => Mirror::Count(Counter::default()),
                    (Unit::Count, false) => Mirror::Level(Gauge::default()),
                };
                match &m {
                    Mirror::Count(c) => r.register(name, help, c.clone()),
                    Mirror::Level(g) => r.register(name, help, g.clone()),
                    Mirror::Money(g) => r.register(name, help, g.clone()),
                }
                m
            }
            Metric::Series { family, value } => {
                let i = match families.iter().position(|(n, _)| *n == family.name) {
                    Some(i) => i,
                    None => {
                        families.push((family.name, MirrorFamily::register(r, family, info)));
                        families.len() - 1
                    }
                };
                let l = label(family.label, value);
                match &families[i].1 {
                    MirrorFamily::Count(f) => Mirror::Count(f.get_or_create_owned(&l)),
                    MirrorFamily::Level(f) => Mirror::Level(f.get_or_create_owned(&l)),
                    MirrorFamily::Money(f) => Mirror::Money(f.get_or_create_owned(&l)),
                }
            }
        }
    }

    fn set(&self, v: i64) {
        match self {
            Mirror::Count(c) => c.inner().store(v as u64, Ordering::Relaxed),
            Mirror::Level(g) => {
                g.set(v);
            }
            Mirror::Money(g) => {
                g.set(v as f64 / 1e6);
            }
        }
    }
}

/// Engine counters and state sizes, mirrored.
pub(super) struct EngineCounters {
    /// One per counter, in the order of `Counters::INFO`.
    pub(super) counters: [Mirror; Counters::COUNT],
    pub(super) dead_letters: Vec<(&'static str, Counter)>,
    pub(super) state: [(&'static str, Gauge); 7],
    pub(super) watermark_lag: [GaugeF; 2],
}

impl Metrics {
    /// Mirrors the engine's counters and state sizes (called by the state stage after each
    /// batch; a few dozen relaxed stores).
    pub fn publish_engine(
        &self,
        c: &Counters,
        s: &StateSizes,
        watermarks: [Option<i64>; 2],
        now_ms: i64,
    ) {
        let e = &self.engine;
        for (m, v) in e.counters.iter().zip(c.values()) {
            m.set(v);
        }
        for (reason, m) in &e.dead_letters {
            let n = c.dead_letters.get(reason).copied().unwrap_or(0);
            m.inner().store(n, Ordering::Relaxed);
        }
        let sizes = [
            s.indexed_clicks,
            s.click_extras,
            s.dedup_keys,
            s.pending,
            s.open_buckets,
            s.dims,
            s.interned_strings,
        ];
        for ((_, g), v) in e.state.iter().zip(sizes) {
            g.set(v as i64);
        }
        for (g, wm) in e.watermark_lag.iter().zip(watermarks) {
            if let Some(wm) = wm {
                g.set((now_ms - wm) as f64 / 1000.0);
            }
        }
    }
}
