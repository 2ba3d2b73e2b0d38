//! Unit tests of every rule of the state stage, driven through the real decoder.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::dedup::Attribution;
use super::*;
use crate::event::decode::{DecodeLimits, Decoder};
use crate::event::{DeadReason, Position, Status};
use crate::raw::RawBatch;
use crate::rows::{ConversionRow, Measures, Names, StatsRow};

const T0: i64 = 1_793_527_200_000; // 2026-11-01T10:00:00Z
const MIN: i64 = 60_000;
const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;

fn raw(lines: &[String]) -> RawBatch {
    let mut b = RawBatch::default();
    for (i, l) in lines.iter().enumerate() {
        b.push_line(
            l.as_bytes(),
            Position {
                line: i as u64 + 1,
                offset: 0,
            },
        );
    }
    b
}

fn decoder() -> Decoder {
    Decoder::new(Arc::from("test"), DecodeLimits::default())
}

fn click(id: &str, ts: i64, offer: &str, ip: Option<&str>) -> String {
    let ip = ip.map(|ip| format!(r#","ip":"{ip}""#)).unwrap_or_default();
    format!(
        r#"{{"click_id":"{id}","ts":{ts},"offer_id":"{offer}","affiliate_id":"a1","country":"de","device":"mobile","sub1":"s1-{id}"{ip}}}"#
    )
}

fn conv(click: &str, ext: &str, tenant: &str, status: &str, ts: i64, amount: &str) -> String {
    format!(
        r#"{{"click_id":"{click}","external_id":"{ext}","tenant_id":"{tenant}","status":"{status}","ts":{ts},"amount":"{amount}"}}"#
    )
}

/// Everything the engine wrote, accumulated.
#[derive(Default, Debug)]
struct Out {
    clicks: Vec<(String, bool)>,
    conversions: Vec<ConversionRow>,
    stats: Vec<StatsRow>,
    click_hour: Vec<StatsRow>,
    dead: Vec<DeadLetter>,
    /// The aggregate rows' dimension names, learnt from the batches as a sink does.
    names: Names,
}

impl Out {
    fn take(&mut self, b: SinkBatch) {
        for rows in b.clicks {
            for (i, unique) in rows.accepted {
                let c = rows.batch.clicks[i as usize];
                self.clicks
                    .push((rows.batch.arena.get(c.click_id).to_string(), unique));
            }
        }
        self.names.learn(&b.names).unwrap();
        self.conversions.extend(b.conversions);
        self.stats.extend(b.stats);
        self.click_hour.extend(b.click_hour);
        self.dead.extend(b.dead_letters);
    }

    /// Sum of all stats rows (the table's `sum()`).
    fn total(&self) -> Measures {
        let mut m = Measures::default();
        for r in &self.stats {
            m.add(&r.measures);
        }
        m
    }

    /// Sums per (tenant, offer, currency).
    fn by_offer(&self) -> BTreeMap<(String, String, String), Measures> {
        let mut out: BTreeMap<_, Measures> = BTreeMap::new();
        for r in &self.stats {
            let [tenant, offer, _, _, currency] = self.names.dims(&r.dims);
            out.entry((tenant.to_string(), offer.to_string(), currency.to_string()))
                .or_default()
                .add(&r.measures);
        }
        out
    }

    /// Every conversion version as `external_id/version/status/attribution/offer`, sorted.
    fn version_lines(&self) -> Vec<String> {
        let mut rows: Vec<String> = self
            .conversions
            .iter()
            .map(|r| {
                format!(
                    "{}/{}/{:?}/{:?}/{}",
                    r.external_id, r.version, r.status, r.attribution, r.offer_id
                )
            })
            .collect();
        rows.sort();
        rows
    }

    fn versions(&self, tenant: &str, ext: &str) -> Vec<(u32, Status)> {
        let mut v: Vec<_> = self
            .conversions
            .iter()
            .filter(|r| &*r.tenant_id == tenant && &*r.external_id == ext)
            .map(|r| (r.version, r.status))
            .collect();
        v.sort_by_key(|x| x.0);
        v
    }

    fn row(&self, tenant: &str, ext: &str, version: u32) -> &ConversionRow {
        self.conversions
            .iter()
            .find(|r| &*r.tenant_id == tenant && &*r.external_id == ext && r.version == version)
            .unwrap_or_else(|| panic!("no row {tenant}/{ext} v{version}"))
    }
}

enum Feed {
    Clicks(Vec<String>),
    Convs(Vec<String>),
}

fn run_feeds(cfg: EngineConfig, feeds: Vec<Feed>) -> (Out, Counters) {
    let mut e = Engine::new(cfg);
    let mut out = Out::default();
    let has_clicks = feeds.iter().any(|f| matches!(f, Feed::Clicks(_)));
    let has_convs = feeds.iter().any(|f| matches!(f, Feed::Convs(_)));
    if !has_clicks {
        e.close_stream(Stream::Clicks);
    }
    if !has_convs {
        e.close_stream(Stream::Conversions);
    }
    for f in feeds {
        let mut b = SinkBatch::default();
        match f {
            Feed::Clicks(lines) => {
                let (batch, dead) = decoder().decode_clicks(&raw(&lines));
                e.on_dead_letters(dead, &mut b);
                e.on_clicks(batch, &mut b);
            }
            Feed::Convs(lines) => {
                let (batch, dead) = decoder().decode_conversions(&raw(&lines));
                e.on_dead_letters(dead, &mut b);
                e.on_conversions(batch, &mut b);
            }
        }
        out.take(b);
    }
    let mut b = SinkBatch::default();
    e.finish(&mut b);
    out.take(b);
    (out, e.counters().clone())
}

fn run(feeds: Vec<Feed>) -> (Out, Counters) {
    run_feeds(EngineConfig::default(), feeds)
}

#[test]
fn duplicate_clicks_are_counted_not_written() {
    let (out, c) = run(vec![Feed::Clicks(vec![
        click("c1", T0, "o1", None),
        click("c2", T0, "o1", None),
        click("c1", T0 + 1000, "o1", None),
    ])]);
    assert_eq!(out.clicks.len(), 2);
    assert_eq!((c.clicks, c.duplicate_clicks), (2, 1));
    let t = out.total();
    assert_eq!((t.clicks, t.duplicate_clicks, t.unique_clicks), (2, 1, 2));
}

#[test]
fn unique_clicks_per_day_tenant_offer_ip() {
    let (out, c) = run(vec![Feed::Clicks(vec![
        click("c1", T0, "o1", Some("1.1.1.1")),
        click("c2", T0 + MIN, "o1", Some("1.1.1.1")), // same visitor, same day
        click("c3", T0 + MIN, "o2", Some("1.1.1.1")), // other offer
        click("c4", T0 + DAY, "o1", Some("1.1.1.1")), // next day
        click("c5", T0, "o1", None),                  // no ip: always unique
        click("c6", T0, "o1", None),
    ])]);
    let unique: Vec<_> = out.clicks.iter().map(|(id, u)| (id.as_str(), *u)).collect();
    assert_eq!(
        unique,
        [
            ("c1", true),
            ("c2", false),
            ("c3", true),
            ("c4", true),
            ("c5", true),
            ("c6", true)
        ]
    );
    assert_eq!(c.unique_clicks, 5);
    assert_eq!(out.total().unique_clicks, 5);
}

#[test]
fn conversion_dedup_is_per_tenant() {
    let (out, c) = run(vec![
        Feed::Clicks(vec![click("c1", T0, "o1", None)]),
        Feed::Convs(vec![
            conv("c1", "e1", "t1", "approved", T0 + MIN, "10"),
            conv("c1", "e1", "t1", "approved", T0 + MIN, "10"), // duplicate
            conv("c1", "e1", "t2", "approved", T0 + MIN, "7"),  // other tenant
            conv("c1", "e1", "t1", "APPROVED", T0 + 2 * MIN, "99"), // duplicate, any case
        ]),
    ]);
    assert_eq!(c.conversions, 2);
    assert_eq!(c.duplicate_conversions, 2);
    assert_eq!(out.versions("t1", "e1"), [(1, Status::Approved)]);
    assert_eq!(out.versions("t2", "e1"), [(1, Status::Approved)]);
    let by = out.by_offer();
    let t1 = by[&("t1".into(), "o1".into(), "USD".into())];
    assert_eq!(
        (t1.conversions, t1.approved, t1.duplicate_conversions),
        (1, 1, 2)
    );
    assert_eq!(t1.revenue_micros, 10_000_000);
    let t2 = by[&("t2".into(), "o1".into(), "USD".into())];
    assert_eq!((t2.conversions, t2.revenue_micros), (1, 7_000_000));
}

#[test]
fn status_changes_reversal_reapproval_and_refusal() {
    let (out, c) = run(vec![
        Feed::Clicks(vec![click("c1", T0, "o1", None)]),
        Feed::Convs(vec![
            conv("c1", "e1", "t", "pending", T0 + MIN, "20"),
            conv("c1", "e1", "t", "approved", T0 + 9 * MIN, "999"), // v2; amount of v1 stands
            conv("c1", "e1", "t", "rejected", T0 + 10 * MIN, "20"), // v3 reversal
            conv("c1", "e1", "t", "approved", T0 + 11 * MIN, "20"), // v4 re-approval
            conv("c1", "e1", "t", "pending", T0 + 12 * MIN, "20"),  // refused
            conv("c1", "e1", "t", "approved", T0 + 13 * MIN, "20"), // duplicate of current
        ]),
    ]);
    assert_eq!(
        out.versions("t", "e1"),
        [
            (1, Status::Pending),
            (2, Status::Approved),
            (3, Status::Rejected),
            (4, Status::Approved)
        ]
    );
    let v2 = out.row("t", "e1", 2);
    assert_eq!(v2.amount_micros, 20_000_000);
    assert_eq!(v2.ts_ms, T0 + MIN, "time of the first postback stands");
    assert_eq!(v2.previous_status, Some(Status::Pending));
    assert_eq!(&*v2.offer_id, "o1", "later versions keep the attribution");
    assert_eq!(v2.sub_1(), Some("s1-c1"));
    assert_eq!(c.refused_changes, 1);
    assert_eq!(c.duplicate_conversions, 1);
    assert_eq!(c.status_changes, 3);
    assert_eq!(out.dead.len(), 1);
    assert_eq!(out.dead[0].reason, DeadReason::RefusedStatusChange);
    assert!(String::from_utf8_lossy(&out.dead[0].raw).contains("\"pending\""));
    let t = out.total();
    assert_eq!(
        (
            t.conversions,
            t.approved,
            t.pending,
            t.rejected,
            t.revenue_micros
        ),
        (1, 1, 0, 0, 20_000_000)
    );
    assert_eq!((c.approved, c.pending, c.rejected), (1, 0, 0));
    // All deltas land in the original conversion's minute.
    let minutes: std::collections::BTreeSet<i64> = out
        .stats
        .iter()
        .filter(|r| r.measures.conversions != 0 || r.measures.approved != 0)
        .map(|r| r.minute_ms)
        .collect();
    assert_eq!(minutes.into_iter().collect::<Vec<_>>(), [T0 + MIN]);
}

#[test]
fn attribution_window_and_reasons() {
    let cfg = EngineConfig {
        attribution_window_ms: DAY,
        ..EngineConfig::default()
    };
    let (out, c) = run_feeds(
        cfg,
        vec![
            Feed::Clicks(vec![
                click("in", T0, "o1", None),
                click("late", T0, "o1", None),
                click("early", T0 + 10 * MIN, "o1", None),
            ]),
            Feed::Convs(vec![
                conv("in", "e1", "t", "approved", T0 + DAY, "1"), // exactly at the window edge
                conv("late", "e2", "t", "approved", T0 + DAY + 1, "1"),
                conv("early", "e3", "t", "approved", T0, "1"), // before its click
                conv("nobody", "e4", "t", "approved", T0, "1"),
            ]),
            // Moves the click watermark past e4 + lateness.
            Feed::Clicks(vec![click("tick", T0 + DAY + 10 * MIN, "o9", None)]),
        ],
    );
    let r = |e: &str| out.row("t", e, 1);
    assert_eq!(r("e1").attribution, Attribution::Attributed);
    assert_eq!(r("e1").seconds_to_convert, Some(86_400));
    assert_eq!(r("e1").click_ts_ms, Some(T0));
    assert_eq!(&*r("e1").country, "DE");
    assert_eq!(r("e1").device.as_deref(), Some("mobile"));
    assert_eq!(r("e2").attribution, Attribution::OutsideWindow);
    assert_eq!(
        &*r("e2").offer_id,
        "",
        "unattributed rows carry no click dimensions"
    );
    assert_eq!(r("e3").attribution, Attribution::OutsideWindow);
    assert_eq!(r("e4").attribution, Attribution::UnknownClick);
    assert_eq!(r("e4").click_ts_ms, None);
    assert_eq!((c.attributed, c.outside_window, c.unknown_click), (1, 2, 1));
    let by = out.by_offer();
    assert_eq!(by[&("t".into(), "o1".into(), "USD".into())].conversions, 1);
    let unattributed = by[&("t".into(), "".into(), "USD".into())];
    assert_eq!(
        (unattributed.conversions, unattributed.unattributed),
        (3, 3)
    );
}

/// `(click hour offset from T0 in hours, offer)` → the by-click-hour sums.
fn by_click_hour(out: &Out) -> BTreeMap<(i64, String), Measures> {
    let mut m: BTreeMap<_, Measures> = BTreeMap::new();
    for r in &out.click_hour {
        m.entry((
            (r.minute_ms - T0) / HOUR,
            out.names.get(r.dims.offer).to_string(),
        ))
        .or_default()
        .add(&r.measures);
    }
    m.retain(|_, v| *v != Measures::default());
    m
}

#[test]
fn the_click_hour_aggregate_counts_conversions_in_their_clicks_hour() {
    let cfg = EngineConfig {
        attribution_window_ms: DAY,
        ..EngineConfig::default()
    };
    let (out, _) = run_feeds(
        cfg,
        vec![
            Feed::Clicks(vec![
                click("a", T0 + 59 * MIN + 59_900, "o1", Some("1.1.1.1")), // last 100 ms of hour 0
                click("b", T0 + HOUR + MIN, "o1", Some("1.1.1.2")),
                click("b", T0 + HOUR + 2 * MIN, "o1", Some("1.1.1.2")), // duplicate click
                click("c", T0 + 2 * HOUR, "o2", None),
            ]),
            Feed::Convs(vec![
                // 1.5 s after its click, in the next hour: counts in hour 0.
                conv("a", "e1", "t", "pending", T0 + HOUR + 1_400, "10"),
                conv("b", "e2", "t", "approved", T0 + 5 * HOUR, "20"),
                conv("b", "e2", "t", "approved", T0 + 5 * HOUR, "20"), // duplicate postback
                conv("a", "e1", "t", "approved", T0 + 20 * HOUR, "10"), // status change
                conv("c", "e3", "t", "approved", T0 + 3 * DAY, "30"),  // outside the window
                conv("nobody", "e4", "t", "approved", T0, "40"),       // unknown click
            ]),
            Feed::Clicks(vec![click("tick", T0 + 4 * DAY, "o9", None)]),
        ],
    );
    let got = by_click_hour(&out);
    let m = |clicks, unique, dup_clicks, convs, approved, revenue, dup_convs| Measures {
        clicks,
        unique_clicks: unique,
        duplicate_clicks: dup_clicks,
        conversions: convs,
        approved,
        revenue_micros: revenue,
        duplicate_conversions: dup_convs,
        ..Measures::default()
    };
    // Clicks (currency "") and conversions (currency USD) are separate buckets; summed here.
    let want: BTreeMap<(i64, String), Measures> = [
        ((0, "o1".to_string()), m(1, 1, 0, 1, 1, 10_000_000, 0)),
        ((1, "o1".to_string()), m(1, 1, 1, 1, 1, 20_000_000, 1)),
        ((2, "o2".to_string()), m(1, 1, 0, 0, 0, 0, 0)),
        ((96, "o9".to_string()), m(1, 1, 0, 0, 0, 0, 0)),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want);
    // Every click and every attributed conversion is in it once, as in the minute table.
    let mut clicks_by_hour = Measures::default();
    for v in got.values() {
        clicks_by_hour.add(v);
    }
    assert_eq!(clicks_by_hour.clicks, out.total().clicks);
}

#[test]
fn conversion_before_click_waits_and_follow_ups_queue_behind_it() {
    let (out, c) = run(vec![
        Feed::Convs(vec![
            conv("c1", "e1", "t", "pending", T0 + MIN, "5"),
            conv("c1", "e1", "t", "pending", T0 + MIN, "5"), // duplicate while waiting
            conv("c1", "e1", "t", "approved", T0 + 2 * MIN, "5"), // change while waiting
        ]),
        Feed::Clicks(vec![click("c1", T0, "o1", None)]),
    ]);
    assert_eq!(
        out.versions("t", "e1"),
        [(1, Status::Pending), (2, Status::Approved)]
    );
    assert_eq!(out.row("t", "e1", 2).attribution, Attribution::Attributed);
    assert_eq!(&*out.row("t", "e1", 2).offer_id, "o1");
    assert_eq!(c.attributed, 1);
    let t = out.total();
    assert_eq!(
        (
            t.conversions,
            t.pending,
            t.approved,
            t.duplicate_conversions,
            t.revenue_micros
        ),
        (1, 0, 1, 1, 5_000_000)
    );
}

#[test]
fn result_does_not_depend_on_stream_interleaving() {
    let clicks: Vec<String> = (0..40)
        .map(|i| {
            click(
                &format!("c{i}"),
                T0 + i * MIN,
                &format!("o{}", i % 3),
                Some("9.9.9.9"),
            )
        })
        .collect();
    // Conversion i names click c{i} 30 s after it for i < 30, and a click that never comes
    // otherwise; every third one is approved later.
    let convs: Vec<String> = (0..40)
        .flat_map(|i| {
            let ts = T0 + i * MIN + 30_000;
            let click = if i < 30 {
                format!("c{i}")
            } else {
                format!("gone{i}")
            };
            let mut v = vec![conv(&click, &format!("e{i}"), "t", "pending", ts, "3")];
            if i % 3 == 0 {
                v.push(conv(&click, &format!("e{i}"), "t", "approved", ts + 1, "3"));
            }
            v
        })
        .collect();
    let summarise = |out: &Out| (out.version_lines(), out.by_offer());
    let clicks_first = run(vec![
        Feed::Clicks(clicks.clone()),
        Feed::Convs(convs.clone()),
    ]);
    let convs_first = run(vec![
        Feed::Convs(convs.clone()),
        Feed::Clicks(clicks.clone()),
    ]);
    let mut interleaved = Vec::new();
    let (mut a, mut b) = (clicks.chunks(3), convs.chunks(7));
    loop {
        let (x, y) = (a.next(), b.next());
        if x.is_none() && y.is_none() {
            break;
        }
        if let Some(y) = y {
            interleaved.push(Feed::Convs(y.to_vec()));
        }
        if let Some(x) = x {
            interleaved.push(Feed::Clicks(x.to_vec()));
        }
    }
    let interleaved = run(interleaved);
    let want = summarise(&clicks_first.0);
    assert_eq!(want.0.len(), 40 + 14);
    assert_eq!(summarise(&convs_first.0), want);
    assert_eq!(summarise(&interleaved.0), want);
    assert_eq!(clicks_first.1, convs_first.1);
    assert_eq!(clicks_first.1, interleaved.1);
    assert_eq!(clicks_first.1.attributed, 30);
    assert_eq!(clicks_first.1.unknown_click, 10);
}

#[test]
fn an_open_stream_that_sent_nothing_holds_eviction_back() {
    let cfg = EngineConfig {
        attribution_window_ms: DAY,
        allowed_lateness_ms: MIN,
        dedup_window_ms: 2 * DAY,
    };
    let mut e = Engine::new(cfg);
    let mut sink = SinkBatch::default();
    let lines: Vec<String> = (0..5)
        .map(|d| click(&format!("c{d}"), T0 + d * DAY, "o1", None))
        .collect();
    let (batch, _) = decoder().decode_clicks(&raw(&lines));
    e.on_clicks(batch, &mut sink);
    assert_eq!(
        e.sizes().indexed_clicks,
        5,
        "conversions may still come for old clicks"
    );
    e.close_stream(Stream::Conversions);
    let (batch, _) = decoder().decode_clicks(&raw(&[click("c9", T0 + 6 * DAY, "o1", None)]));
    e.on_clicks(batch, &mut sink);
    assert_eq!(
        e.sizes().indexed_clicks,
        1,
        "only c9 is within window + lateness"
    );
}

#[test]
fn state_older_than_the_windows_is_evicted() {
    let cfg = EngineConfig {
        attribution_window_ms: DAY,
        allowed_lateness_ms: MIN,
        dedup_window_ms: 2 * DAY,
    };
    let mut e = Engine::new(cfg);
    let mut sink = SinkBatch::default();
    for day in 0..5 {
        let lines: Vec<String> = (0..100)
            .map(|i| {
                click(
                    &format!("d{day}-{i}"),
                    T0 + day * DAY + i * MIN,
                    "o1",
                    Some("1.2.3.4"),
                )
            })
            .collect();
        let (batch, _) = decoder().decode_clicks(&raw(&lines));
        e.on_clicks(batch, &mut sink);
        let convs: Vec<String> = (0..10)
            .map(|i| {
                conv(
                    &format!("d{day}-{i}"),
                    &format!("e{day}-{i}"),
                    "t",
                    "approved",
                    T0 + day * DAY + 200 * MIN,
                    "1",
                )
            })
            .collect();
        let (batch, _) = decoder().decode_conversions(&raw(&convs));
        e.on_conversions(batch, &mut sink);
    }
    let s = e.sizes();
    // Only the last ~2 days of clicks (window + lateness) and ~3 days of dedup keys remain.
    assert!(s.indexed_clicks <= 200, "{s:?}");
    assert!(s.indexed_clicks >= 100, "{s:?}");
    assert!(s.dedup_keys <= 30, "{s:?}");
    assert_eq!(e.counters().attributed, 50);
    // A click id from day 0 is new again once evicted (clicks are deduplicated inside the window).
    let (batch, _) = decoder().decode_clicks(&raw(&[click("d0-1", T0 + 5 * DAY, "o1", None)]));
    e.on_clicks(batch, &mut sink);
    assert_eq!(e.counters().duplicate_clicks, 0);
}

#[test]
fn snapshot_and_restore_continue_exactly_like_an_uninterrupted_run() {
    let clicks: Vec<String> = (0..60)
        .map(|i| {
            click(
                &format!("c{i}"),
                T0 + i * MIN,
                &format!("o{}", i % 4),
                Some("7.7.7.7"),
            )
        })
        .collect();
    let convs: Vec<String> = (0..60)
        .flat_map(|i| {
            let ts = T0 + i * MIN - 30_000; // before its click: waits in the pending buffer
            let mut v = vec![conv(
                &format!("c{i}"),
                &format!("e{i}"),
                "t",
                "pending",
                ts,
                "2",
            )];
            if i % 2 == 0 {
                v.push(conv(
                    &format!("c{i}"),
                    &format!("e{i}"),
                    "t",
                    "approved",
                    ts,
                    "2",
                ));
            }
            v
        })
        .collect();
    let feed = |e: &mut Engine, out: &mut Out, c: &[String], v: &[String]| {
        let mut b = SinkBatch::default();
        e.on_conversions(decoder().decode_conversions(&raw(v)).0, &mut b);
        e.on_clicks(decoder().decode_clicks(&raw(c)).0, &mut b);
        out.take(b);
    };
    let cfg = EngineConfig::default();
    let summarise = |out: &Out| (out.version_lines(), out.by_offer(), out.clicks.len());
    // Uninterrupted.
    let mut whole = Engine::new(cfg);
    let mut want = Out::default();
    feed(&mut whole, &mut want, &clicks[..30], &convs[..60]);
    feed(&mut whole, &mut want, &clicks[30..], &convs[60..]);
    let mut b = SinkBatch::default();
    whole.finish(&mut b);
    want.take(b);
    // Interrupted after the first half: snapshot, serialize, restore, continue.
    let mut first = Engine::new(cfg);
    let mut got = Out::default();
    feed(&mut first, &mut got, &clicks[..30], &convs[..60]);
    assert!(
        first.sizes().pending > 0,
        "the snapshot includes waiting conversions"
    );
    let snap = crate::checkpoint::Snapshot {
        epoch: 1,
        engine: first.snapshot(),
        ..Default::default()
    };
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&snap).unwrap();
    let view = crate::checkpoint::view(&bytes).unwrap();
    let mut second = Engine::restore(cfg, &[&view.engine]);
    assert_eq!(second.counters(), first.counters());
    assert_eq!(second.sizes(), first.sizes());
    feed(&mut second, &mut got, &clicks[30..], &convs[60..]);
    let mut b = SinkBatch::default();
    second.finish(&mut b);
    got.take(b);
    assert_eq!(summarise(&got), summarise(&want));
    assert_eq!(second.counters(), whole.counters());
}

/// Many days of clicks and postbacks with narrow windows, so eviction sweeps run often, with
/// late clicks older than the eviction horizon, duplicate clicks, extras shared and unique,
/// status changes and postbacks for unknown clicks: as `(clicks, conversions)` batches.
fn month_of_traffic(seed: u64) -> Vec<(Vec<String>, Vec<String>)> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut batches = Vec::new();
    let mut n = 0u64;
    for step in 0..240i64 {
        // Two event-hours per batch: 20 days in all.
        let base = T0 + step * 2 * 60 * MIN;
        let mut clicks = Vec::new();
        let mut convs = Vec::new();
        for _ in 0..rng.random_range(5..30) {
            n += 1;
            let late = if rng.random_bool(0.08) {
                rng.random_range(0..4 * DAY)
            } else {
                0
            };
            let id = if rng.random_bool(0.05) && n > 10 {
                format!("c{}", rng.random_range(n - 10..n))
            } else {
                format!("c{n}")
            };
            let ts = base + rng.random_range(0..120 * MIN) - late;
            let ip = format!("10.0.0.{}", rng.random_range(0..20));
            // New offers keep appearing, so checkpoints carry new catalog entries.
            let mut line = click(&id, ts, &format!("o{}", n % 3 + n / 300), Some(&ip));
            if rng.random_bool(0.5) {
                // Shared extras: the sub1 of a few profiles, not of the click.
                line = line.replace(&format!("s1-{id}"), &format!("s1-p{}", n % 4));
            }
            clicks.push(line);
            if rng.random_bool(0.3) {
                let target = if rng.random_bool(0.1) {
                    "nope".to_string()
                } else {
                    format!("c{}", rng.random_range(n.saturating_sub(200).max(1)..=n))
                };
                let ext = if rng.random_bool(0.3) && n > 50 {
                    format!("e{}", rng.random_range(n - 50..n))
                } else {
                    format!("e{n}")
                };
                let status = ["approved", "pending", "rejected"][rng.random_range(0..3)];
                // Late postbacks too: older than the dedup horizon when they come.
                let late = if rng.random_bool(0.08) {
                    rng.random_range(0..4 * DAY)
                } else {
                    0
                };
                let cts = base + rng.random_range(0..120 * MIN) - late;
                convs.push(conv(&target, &ext, "t", status, cts, "3.5"));
            }
        }
        batches.push((clicks, convs));
    }
    batches
}

#[test]
fn a_restore_given_up_returns_no_engine_and_one_that_goes_on_the_live_state() {
    let cfg = EngineConfig::default();
    let mut live = Engine::new(cfg);
    live.track_changes();
    let mut chain = Vec::new();
    for (i, (clicks, convs)) in month_of_traffic(1).iter().take(3).enumerate() {
        let mut b = SinkBatch::default();
        live.on_clicks(decoder().decode_clicks(&raw(clicks)).0, &mut b);
        live.on_conversions(decoder().decode_conversions(&raw(convs)).0, &mut b);
        let engine = live.delta_snapshot(i as u64);
        chain.push(
            rkyv::to_bytes::<rkyv::rancor::Error>(&crate::checkpoint::Snapshot {
                engine,
                ..Default::default()
            })
            .unwrap(),
        );
    }
    let engines: Vec<_> = chain
        .iter()
        .map(|f| &crate::checkpoint::view(f).unwrap().engine)
        .collect();
    let stopped = std::sync::atomic::AtomicBool::new(true);
    assert!(Engine::restore_unless(cfg, &engines, &stopped).is_none());
    let go_on = std::sync::atomic::AtomicBool::new(false);
    let restored = Engine::restore_unless(cfg, &engines, &go_on).unwrap();
    assert!(live.sizes().indexed_clicks > 0);
    assert_eq!(
        format!("{:?}", restored.sizes()),
        format!("{:?}", live.sizes())
    );
}

#[test]
fn delta_checkpoints_replayed_with_their_sweeps_folded_restore_what_the_live_run_had() {
    let cfg = EngineConfig {
        attribution_window_ms: DAY,
        allowed_lateness_ms: 5 * MIN,
        dedup_window_ms: 2 * DAY,
    };
    // Each stream's batch in two halves, so sweeps fall between a checkpoint's operations.
    let feed = |e: &mut Engine, out: &mut Out, batch: &(Vec<String>, Vec<String>)| {
        let mut b = SinkBatch::default();
        let (c, v) = (batch.0.len() / 2, batch.1.len() / 2);
        e.on_clicks(decoder().decode_clicks(&raw(&batch.0[..c])).0, &mut b);
        e.on_conversions(decoder().decode_conversions(&raw(&batch.1[..v])).0, &mut b);
        e.on_clicks(decoder().decode_clicks(&raw(&batch.0[c..])).0, &mut b);
        e.on_conversions(decoder().decode_conversions(&raw(&batch.1[v..])).0, &mut b);
        out.take(b);
    };
    let finish = |mut e: Engine, mut out: Out| {
        let mut b = SinkBatch::default();
        e.finish(&mut b);
        out.take(b);
        // Whole rows, the click's device and subs (restored extras) included.
        let mut rows: Vec<String> = out.conversions.iter().map(|r| format!("{r:?}")).collect();
        rows.sort();
        let summary = (rows, out.by_offer(), out.clicks.clone(), out.dead.len());
        (summary, e.counters().clone())
    };
    let sizes = |e: &Engine| {
        let s = e.sizes();
        (
            (s.indexed_clicks, s.dedup_keys, s.pending, s.open_buckets),
            (
                s.dims,
                s.interned_strings,
                e.unique.len(),
                e.dims_by_hash.len(),
            ),
        )
    };
    for seed in [1, 2, 3] {
        let batches = month_of_traffic(seed);
        // Uninterrupted.
        let mut whole = Engine::new(cfg);
        let mut want = Out::default();
        for b in &batches {
            feed(&mut whole, &mut want, b);
        }
        // The same with a checkpoint after every batch, as deltas; the run is restored from
        // the chain three times (once after a compaction into a full snapshot) and goes on.
        let snap = |engine: crate::checkpoint::snapshot::EngineSnap| {
            rkyv::to_bytes::<rkyv::rancor::Error>(&crate::checkpoint::Snapshot {
                engine,
                ..Default::default()
            })
            .unwrap()
        };
        let restore = |files: &[rkyv::util::AlignedVec]| {
            let engines: Vec<_> = files
                .iter()
                .map(|f| &crate::checkpoint::view(f).unwrap().engine)
                .collect();
            let mut e = Engine::restore(cfg, &engines);
            e.track_changes();
            e
        };
        let mut live = Engine::new(cfg);
        live.track_changes();
        let mut got = Out::default();
        let mut chain: Vec<rkyv::util::AlignedVec> = Vec::new();
        let mut sweeps = 0;
        for (i, b) in batches.iter().enumerate() {
            feed(&mut live, &mut got, b);
            let delta = live.delta_snapshot(i as u64);
            sweeps += delta.delta.as_ref().unwrap().click_sweeps.len();
            chain.push(snap(delta));
            // Every checkpoint restores to the live state's sizes; three times the run goes
            // on from the restored engine.
            let restored = restore(&chain);
            assert_eq!(sizes(&restored), sizes(&live), "seed {seed}, batch {i}");
            assert_eq!(restored.counters(), live.counters());
            if [60, 130, 200].contains(&i) {
                live = restored;
            }
            if i == 100 {
                // Compaction: the chain becomes one full snapshot.
                let full = restore(&chain).snapshot();
                chain = vec![snap(full)];
            }
        }
        assert!(sweeps >= 100, "sweeps ran: {sweeps}");
        assert!(
            got.clicks.len() > 1000 && want.conversions.len() > 500,
            "a real workload: {} clicks, {} conversion rows",
            got.clicks.len(),
            want.conversions.len()
        );
        assert_eq!(sizes(&live), sizes(&whole));
        assert_eq!(finish(live, got), finish(whole, want), "seed {seed}");
    }
}

/// `[fraud]` of the fraud tests: CTIT under 60 s, more than 2 clicks per IP per offer-minute,
/// burst IPs remembered for an hour.
fn fraud_cfg() -> fraud::FraudConfig {
    fraud::FraudConfig {
        min_seconds_to_convert: 60,
        max_clicks_per_ip_per_minute: 2,
        remember_flagged_ip: std::time::Duration::from_secs(3600),
    }
}

/// Test times must stay within `limits.max_future` of the wall clock: a short window.
fn one_day_window() -> EngineConfig {
    EngineConfig {
        attribution_window_ms: DAY,
        ..EngineConfig::default()
    }
}

/// Clicks, then postbacks, then the end of the input, through an engine with `cfg` and a
/// one-day window.
fn fraud_run(cfg: fraud::FraudConfig, clicks: &[String], convs: &[String]) -> (Out, Engine) {
    let mut e = Engine::new(one_day_window());
    e.set_fraud(cfg);
    let mut out = Out::default();
    let mut b = SinkBatch::default();
    e.on_clicks(decoder().decode_clicks(&raw(clicks)).0, &mut b);
    e.on_conversions(decoder().decode_conversions(&raw(convs)).0, &mut b);
    e.finish(&mut b);
    out.take(b);
    (out, e)
}

fn flags_of(out: &Out, ext: &str, version: u32) -> Vec<&'static str> {
    fraud::flag_names(out.row("t", ext, version).fraud_flags).collect()
}

#[test]
fn fraud_flags_each_signal_and_carry_them_to_later_versions() {
    let ip = Some("9.9.9.9");
    let clicks = vec![
        click("b6", T0, "o1", Some("8.8.8.8")),
        click("b1", T0, "o1", ip),
        click("b2", T0 + 1_000, "o1", ip),
        // The third click of 9.9.9.9 on o1 in the 10:00 minute: a burst; the IP is flagged.
        click("b3", T0 + 2_000, "o1", ip),
        // Another offer, minutes later: from a flagged IP.
        click("b4", T0 + 5 * MIN, "o2", ip),
        // Two hours later the IP is no longer remembered.
        click("b5", T0 + 2 * HOUR, "o1", ip),
    ];
    let convs = vec![
        conv("b3", "e1", "t", "pending", T0 + 2_000 + 10 * MIN, "1"),
        conv("b4", "e2", "t", "approved", T0 + 5 * MIN + 30_000, "1"),
        conv("b5", "e3", "t", "approved", T0 + 2 * HOUR + 120_000, "1"),
        conv("b1", "e5", "t", "approved", T0 + 10 * MIN, "1"),
        conv("b3", "e1", "t", "approved", T0 + 2_000 + 10 * MIN, "1"),
        // Two days after its click: outside the (one-day) window.
        conv("b6", "e4", "t", "approved", T0 + 2 * DAY, "1"),
    ];
    let (out, e) = fraud_run(fraud_cfg(), &clicks, &convs);
    assert_eq!(flags_of(&out, "e1", 1), ["ip_burst"]);
    assert_eq!(flags_of(&out, "e1", 2), ["ip_burst"], "a later version");
    assert_eq!(flags_of(&out, "e2", 1), ["too_fast", "flagged_ip"]);
    assert!(flags_of(&out, "e3", 1).is_empty());
    assert!(
        flags_of(&out, "e5", 1).is_empty(),
        "b1 was within the limit"
    );
    assert_eq!(flags_of(&out, "e4", 1), ["outside_window"]);
    let c = e.counters();
    assert_eq!(
        (
            c.flagged_conversions,
            c.flag_too_fast,
            c.flag_ip_burst,
            c.flag_flagged_ip,
            c.flag_outside_window,
            c.ip_burst_clicks
        ),
        (3, 1, 1, 1, 1, 1)
    );
    assert_eq!(out.total().flagged_conversions, 3);
    // By click date: e1 and e2 in the 10:00 hour of their clicks (e4 is not attributed).
    let by_hour: i64 = by_click_hour(&out)
        .values()
        .map(|m| m.flagged_conversions)
        .sum();
    assert_eq!(by_hour, 2);
}

#[test]
fn fraud_state_survives_a_checkpoint_mid_minute() {
    let ip = Some("9.9.9.9");
    let first = vec![click("b1", T0, "o1", ip), click("b2", T0 + 1_000, "o1", ip)];
    let second = vec![
        click("b3", T0 + 2_000, "o1", ip),
        click("b4", T0 + 3 * MIN, "o2", ip),
    ];
    let convs = vec![
        conv("b3", "e1", "t", "approved", T0 + 10 * MIN, "1"),
        conv("b4", "e2", "t", "approved", T0 + 10 * MIN, "1"),
    ];
    let feed = |e: &mut Engine, out: &mut Out, c: &[String], v: &[String]| {
        let mut b = SinkBatch::default();
        e.on_clicks(decoder().decode_clicks(&raw(c)).0, &mut b);
        if !v.is_empty() {
            e.on_conversions(decoder().decode_conversions(&raw(v)).0, &mut b);
        }
        out.take(b);
    };
    let mut e = Engine::new(EngineConfig::default());
    e.set_fraud(fraud_cfg());
    let mut got = Out::default();
    feed(&mut e, &mut got, &first, &[]);
    let snap = crate::checkpoint::Snapshot {
        epoch: 1,
        engine: e.snapshot(),
        ..Default::default()
    };
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&snap).unwrap();
    let view = crate::checkpoint::view(&bytes).unwrap();
    let mut restored = Engine::restore(EngineConfig::default(), &[&view.engine]);
    restored.set_fraud(fraud_cfg());
    feed(&mut restored, &mut got, &second, &convs);
    assert_eq!(flags_of(&got, "e1", 1), ["ip_burst"], "the count went on");
    assert_eq!(flags_of(&got, "e2", 1), ["flagged_ip"]);
    assert_eq!(restored.counters().ip_burst_clicks, 1);
}

#[test]
fn without_thresholds_only_outside_window_is_flagged() {
    let (out, c) = run_feeds(
        one_day_window(),
        vec![
            Feed::Clicks(vec![
                click("c1", T0, "o1", Some("1.1.1.1")),
                click("c2", T0, "o1", Some("1.1.1.1")),
                click("c3", T0, "o1", Some("1.1.1.1")),
            ]),
            Feed::Convs(vec![
                conv("c3", "e1", "t", "approved", T0 + 1_000, "1"),
                conv("c1", "e2", "t", "approved", T0 + 2 * DAY, "1"),
            ]),
        ],
    );
    assert!(flags_of(&out, "e1", 1).is_empty());
    assert_eq!(flags_of(&out, "e2", 1), ["outside_window"]);
    assert_eq!((c.flagged_conversions, c.ip_burst_clicks), (1, 0));
}

#[test]
fn an_ip_that_burst_in_one_tenant_does_not_flag_another_tenants_clicks() {
    let ip = Some("9.9.9.9");
    let other_tenant =
        |c: String| c.replacen(r#"{"click_id""#, r#"{"tenant_id":"u","click_id""#, 1);
    let clicks = vec![
        click("b1", T0, "o1", ip),
        click("b2", T0 + 1_000, "o1", ip),
        click("b3", T0 + 2_000, "o1", ip),
        // Minutes later, the same IP: in the tenant where it burst, and in another one.
        click("b4", T0 + 5 * MIN, "o2", ip),
        other_tenant(click("u1", T0 + 5 * MIN, "o2", ip)),
    ];
    let convs = vec![
        conv("b4", "e1", "t", "approved", T0 + 10 * MIN, "1"),
        conv("u1", "e2", "u", "approved", T0 + 10 * MIN, "1"),
    ];
    let (out, _) = fraud_run(fraud_cfg(), &clicks, &convs);
    assert_eq!(flags_of(&out, "e1", 1), ["flagged_ip"]);
    assert!(
        fraud::flag_names(out.row("u", "e2", 1).fraud_flags)
            .next()
            .is_none()
    );

    // remember_flagged_ip = 0 turns flagged_ip off (the burst itself is still flagged), even
    // for a click in the burst's very millisecond.
    let mut clicks = clicks;
    let mut convs = convs;
    clicks.push(click("b5", T0 + 2_000, "o2", ip));
    convs.push(conv("b5", "e3", "t", "approved", T0 + 10 * MIN, "1"));
    let (out, _) = fraud_run(fraud_cfg(), &clicks, &convs);
    assert_eq!(flags_of(&out, "e3", 1), ["flagged_ip"], "remembered");
    let (out, e) = fraud_run(
        fraud::FraudConfig {
            remember_flagged_ip: std::time::Duration::ZERO,
            ..fraud_cfg()
        },
        &clicks,
        &convs,
    );
    assert!(flags_of(&out, "e1", 1).is_empty());
    assert!(flags_of(&out, "e3", 1).is_empty());
    assert_eq!(e.counters().ip_burst_clicks, 1);
}

#[test]
fn status_changes_past_the_last_version_are_refused_as_dead_letters() {
    let max = dedup::MAX_VERSION as i64;
    let mut convs = vec![conv("c1", "e1", "t", "approved", T0 + MIN, "1")];
    // Rejected and approved in turn: versions 2, 3, … up to the last (511: approved), then
    // four changes to rejected, each refused (the entry stays approved).
    for i in 1..max + 4 {
        let status = if i % 2 == 1 || i >= max {
            "rejected"
        } else {
            "approved"
        };
        convs.push(conv("c1", "e1", "t", status, T0 + MIN + i, "1"));
    }
    let (out, c) = run_feeds(
        one_day_window(),
        vec![
            Feed::Clicks(vec![click("c1", T0, "o1", None)]),
            Feed::Convs(convs),
        ],
    );
    let versions: Vec<u32> = out.conversions.iter().map(|r| r.version).collect();
    assert_eq!(versions, (1..=dedup::MAX_VERSION).collect::<Vec<_>>());
    assert_eq!(c.refused_changes, 4);
    assert_eq!(out.dead.len(), 4);
    assert!(
        out.dead[0].detail.contains("the most one can have"),
        "{}",
        out.dead[0].detail
    );
    // The aggregates follow the last accepted version.
    assert_eq!(
        out.conversions.last().map(|r| r.status),
        Some(Status::Approved)
    );
    let total = out.total();
    assert_eq!((total.approved, total.rejected), (1, 0));
}
