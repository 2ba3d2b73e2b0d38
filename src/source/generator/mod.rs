//! The built-in event generator: realistic click and postback streams from a seed.
//!
//! Used two ways: `attribd gen` writes NDJSON files, and `source.kind = "generator"` feeds a
//! pipeline directly (through the same decode path as files, so its throughput is real). Clicks
//! are spread evenly over the configured event-time span; each record gets an *arrival* time
//! (its event time, plus a delay for the out-of-order share) and records are emitted in arrival
//! order, so both streams come out roughly aligned in time like the output of live edges.
//!
//! Same config + same seed → byte-identical output.
//!
//! The parts: `config.rs` (the knobs), this file (the main loop: which records, in arrival
//! order), `lines.rs` (what a record looks like), `pace.rs` (live mode's clock), `files.rs`
//! (`attribd gen`'s output files).

mod config;
mod files;
mod lines;
mod pace;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, Zipf};

use crate::event::Stream;
pub use config::GeneratorConfig;
pub use files::write_files;
use lines::{FOREIGN_CURRENCIES, click_line, conversion_line, malform, mix, pick_first_status};
use pace::{Pace, events_per_click};

/// A record waiting for its arrival time.
struct Scheduled {
    arrival_ms: i64,
    seq: u64,
    stream: Stream,
    line: Vec<u8>,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.arrival_ms, self.seq) == (o.arrival_ms, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.arrival_ms, self.seq).cmp(&(o.arrival_ms, o.seq))
    }
}

/// Counts of what was generated (what the pipeline should find, before malformed records).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GeneratedCounts {
    pub click_lines: u64,
    pub conversion_lines: u64,
    pub malformed: u64,
}

/// Generates the two streams, calling `emit(stream, line)` for every NDJSON line (no newline) in
/// arrival order. `emit` returning `false` stops early.
pub fn generate(
    cfg: &GeneratorConfig,
    emit: impl FnMut(Stream, &[u8]) -> bool,
) -> anyhow::Result<GeneratedCounts> {
    let mut emit = emit;
    generate_paced(cfg, 0, |stream, line, _| emit(stream, line), || true)
}

/// [`generate`] with live mode: with `cfg.rate`, each record waits for its time (see [`Pace`])
/// and `idle()` is called before every wait, so the caller can hand on what it has batched
/// (it returns `false` to stop); `emit` also gets the wall-clock time each paced record was
/// due (see [`Pace::due`]). `after_clicks`: click lines a restored run already processed;
/// they, or the first `cfg.backlog_clicks` if more, go out unpaced.
pub fn generate_paced(
    cfg: &GeneratorConfig,
    after_clicks: u64,
    mut emit: impl FnMut(Stream, &[u8], Option<std::time::Instant>) -> bool,
    mut idle: impl FnMut() -> bool,
) -> anyhow::Result<GeneratedCounts> {
    let start_ms = crate::event::time::parse_rfc3339_ms(&cfg.start)
        .ok_or_else(|| anyhow::anyhow!("generator.start is not RFC 3339: {:?}", cfg.start))?;
    let mut rng = SmallRng::seed_from_u64(cfg.seed);
    let offers = Zipf::new(cfg.offers.max(1) as f64, cfg.zipf_exponent)
        .map_err(|e| anyhow::anyhow!("generator.offers / zipf_exponent: {e}"))?;
    let affiliates = Zipf::new(cfg.affiliates.max(1) as f64, cfg.zipf_exponent)
        .map_err(|e| anyhow::anyhow!("generator.affiliates / zipf_exponent: {e}"))?;
    let conv_delay = Exp::new(1.0 / (cfg.mean_conversion_delay_minutes.max(0.01) * 60_000.0))
        .map_err(|e| anyhow::anyhow!("generator.mean_conversion_delay_minutes: {e}"))?;
    let span_ms = (cfg.span_hours * 3_600_000.0) as i64;
    // Unpaced: what a restored run already processed, or the backlog, whichever is longer.
    let mut pace = cfg.rate.map(|_| Pace {
        after_clicks: after_clicks.max(cfg.backlog_clicks),
        time_scale: cfg.time_scale,
        origin: None,
    });
    let step = match cfg.rate {
        // Event-time ms between clicks: wall seconds per click × the scale.
        Some(rate) => 1000.0 * cfg.time_scale * events_per_click(cfg) / rate,
        None if cfg.clicks > 0 => span_ms as f64 / cfg.clicks as f64,
        None => 0.0,
    };
    let clicks = if cfg.unbounded { u64::MAX } else { cfg.clicks };
    let mut heap: BinaryHeap<Reverse<Scheduled>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut counts = GeneratedCounts::default();
    let mut ip_pool: Vec<u32> = Vec::with_capacity(4096);
    let mut order_seq = vec![0u64; cfg.tenants.max(1) as usize];
    let max_delay_ms = (cfg.max_delay_seconds * 1000) as i64;

    let mut schedule = |heap: &mut BinaryHeap<Reverse<Scheduled>>,
                        rng: &mut SmallRng,
                        stream: Stream,
                        event_ms: i64,
                        line: Vec<u8>| {
        let delay = if rng.random_bool(cfg.out_of_order_rate.clamp(0.0, 1.0)) && max_delay_ms > 0 {
            rng.random_range(1..=max_delay_ms)
        } else {
            0
        };
        seq += 1;
        heap.push(Reverse(Scheduled {
            arrival_ms: event_ms + delay,
            seq,
            stream,
            line,
        }));
    };

    let mut flush_until = |heap: &mut BinaryHeap<Reverse<Scheduled>>,
                           rng: &mut SmallRng,
                           until_ms: i64,
                           counts: &mut GeneratedCounts|
     -> bool {
        while heap.peek().is_some_and(|s| s.0.arrival_ms <= until_ms) {
            let Some(Reverse(mut s)) = heap.pop() else {
                break;
            };
            if let Some(pace) = pace.as_mut() {
                // Wait in short steps: a stop (or the caller's flush) is never far away.
                loop {
                    let wait = pace.wait(s.arrival_ms, counts.click_lines);
                    if wait.is_zero() {
                        break;
                    }
                    if !idle() {
                        return false;
                    }
                    std::thread::sleep(wait.min(std::time::Duration::from_millis(50)));
                }
            }
            if rng.random_bool(cfg.malformed_rate.clamp(0.0, 1.0)) {
                s.line = malform(rng, s.stream, &s.line);
                counts.malformed += 1;
            }
            match s.stream {
                Stream::Clicks => counts.click_lines += 1,
                Stream::Conversions => counts.conversion_lines += 1,
            }
            let due = pace
                .as_ref()
                .and_then(|p| p.due(s.arrival_ms, counts.click_lines));
            if !emit(s.stream, &s.line, due) {
                return false;
            }
        }
        true
    };

    // An IP burst under way: (ip, tenant, offer, clicks left). The patterns of the fraud
    // signals draw from the random stream only when their rate is above 0, so other records
    // stay the same.
    let mut burst: Option<(u32, usize, u64, u32)> = None;
    for i in 0..clicks {
        let ts = start_ms + (i as f64 * step) as i64;
        let click_id = format!("{:016x}{:08x}", mix(cfg.seed ^ i), i as u32);
        let mut tenant = (mix(i.wrapping_mul(31)) % cfg.tenants.max(1)) as usize;
        let mut offer = offers.sample(&mut rng) as u64;
        let affiliate = affiliates.sample(&mut rng) as u64;
        if burst.is_none() && cfg.ip_burst_rate > 0.0 && rng.random_bool(cfg.ip_burst_rate.min(1.0))
        {
            burst = Some((rng.random::<u32>(), tenant, offer, config::BURST_CLICKS));
        }
        let ip = if let Some((ip, burst_tenant, burst_offer, left)) = burst.as_mut() {
            tenant = *burst_tenant;
            offer = *burst_offer;
            *left -= 1;
            let ip = *ip;
            if *left == 0 {
                burst = None;
            }
            ip
        } else if !ip_pool.is_empty() && rng.random_bool(cfg.repeat_ip_rate.clamp(0.0, 1.0)) {
            ip_pool[rng.random_range(0..ip_pool.len())]
        } else {
            let ip = rng.random::<u32>();
            if ip_pool.len() < 4096 {
                ip_pool.push(ip);
            } else {
                let slot = rng.random_range(0..ip_pool.len());
                ip_pool[slot] = ip;
            }
            ip
        };
        let line = click_line(&mut rng, &click_id, ts, tenant, offer, affiliate, ip);
        if rng.random_bool(cfg.duplicate_click_rate.clamp(0.0, 1.0)) {
            let again = ts + rng.random_range(100..5_000);
            schedule(&mut heap, &mut rng, Stream::Clicks, again, line.clone());
        }
        schedule(&mut heap, &mut rng, Stream::Clicks, ts, line);

        if rng.random_bool(cfg.conversion_rate.clamp(0.0, 1.0)) {
            let unknown = rng.random_bool(cfg.unknown_click_rate.clamp(0.0, 1.0));
            let conv_click = if unknown {
                format!("unknown{:017x}", mix(i ^ 0x5555))
            } else {
                click_id.clone()
            };
            order_seq[tenant] += 1;
            let external_id = format!("ord-{}", order_seq[tenant]);
            let mut conv_ts = ts + 1_000 + conv_delay.sample(&mut rng) as i64;
            let amount_cents = rng.random_range(100..50_000u64);
            let first = pick_first_status(&mut rng);
            if cfg.fast_conversion_rate > 0.0 && rng.random_bool(cfg.fast_conversion_rate.min(1.0))
            {
                conv_ts = ts + rng.random_range(1_000..5_000);
            }
            let currency = if cfg.foreign_currency_rate > 0.0
                && rng.random_bool(cfg.foreign_currency_rate.min(1.0))
            {
                FOREIGN_CURRENCIES[rng.random_range(0..FOREIGN_CURRENCIES.len())]
            } else {
                "USD"
            };
            let postback = |status: &str, ts_ms: i64| {
                conversion_line(
                    &conv_click,
                    &external_id,
                    tenant,
                    amount_cents,
                    status,
                    conv_ts,
                    ts_ms,
                    offer,
                    currency,
                )
            };
            let line = postback(first, conv_ts);
            if rng.random_bool(cfg.duplicate_postback_rate.clamp(0.0, 1.0)) {
                let again = conv_ts + rng.random_range(1_000..60_000);
                schedule(
                    &mut heap,
                    &mut rng,
                    Stream::Conversions,
                    again,
                    line.clone(),
                );
            }
            schedule(&mut heap, &mut rng, Stream::Conversions, conv_ts, line);
            if rng.random_bool(cfg.status_change_rate.clamp(0.0, 1.0)) {
                let next = match first {
                    "pending" if rng.random_bool(0.8) => "approved",
                    "pending" => "rejected",
                    "approved" => "rejected",
                    _ => "approved",
                };
                let change_at = conv_ts + rng.random_range(60_000..6 * 3_600_000);
                let line = postback(next, change_at);
                schedule(&mut heap, &mut rng, Stream::Conversions, change_at, line);
            }
        }
        // Live: every click's time is due in turn; at full speed, in steps of 1024 clicks.
        let due = cfg.rate.is_some() || i % 1024 == 0;
        if due && !flush_until(&mut heap, &mut rng, ts, &mut counts) {
            return Ok(counts);
        }
    }
    flush_until(&mut heap, &mut rng, i64::MAX, &mut counts);
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cfg: &GeneratorConfig) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, GeneratedCounts) {
        let (mut c, mut v) = (Vec::new(), Vec::new());
        let counts = generate(cfg, |s, l| {
            match s {
                Stream::Clicks => c.push(l.to_vec()),
                Stream::Conversions => v.push(l.to_vec()),
            }
            true
        })
        .unwrap();
        (c, v, counts)
    }

    #[test]
    fn same_seed_same_output_and_rates_are_respected() {
        let cfg = GeneratorConfig {
            clicks: 20_000,
            ..GeneratorConfig::default()
        };
        let a = run(&cfg);
        let b = run(&cfg);
        assert_eq!(a.0, b.0);
        assert_eq!(a.1, b.1);
        let (clicks, convs, counts) = a;
        assert_eq!(counts.click_lines as usize, clicks.len());
        assert_eq!(counts.conversion_lines as usize, convs.len());
        // 2 % duplicate clicks on top of 20 000.
        assert!((20_200..20_700).contains(&clicks.len()), "{}", clicks.len());
        // 5 % conversions + 30 % changes + 5 % duplicates ≈ 1 000 × 1.35.
        assert!((1_150..1_600).contains(&convs.len()), "{}", convs.len());
        let other = run(&GeneratorConfig {
            seed: 7,
            ..cfg.clone()
        });
        assert_ne!(other.0, clicks);
    }

    #[test]
    fn zero_rates_give_clean_streams() {
        let cfg = GeneratorConfig {
            clicks: 1000,
            conversion_rate: 0.0,
            duplicate_click_rate: 0.0,
            malformed_rate: 0.0,
            ..GeneratorConfig::default()
        };
        let (clicks, convs, counts) = run(&cfg);
        assert_eq!(clicks.len(), 1000);
        assert!(convs.is_empty());
        assert_eq!(counts.malformed, 0);
        for l in &clicks {
            let v: serde_json::Value = serde_json::from_slice(l).unwrap();
            assert!(v["click_id"].is_string());
        }
    }
}
