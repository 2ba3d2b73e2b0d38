//! The built-in event generator: realistic click and postback streams from a seed.
//!
//! Used two ways: `attribd gen` writes NDJSON files, and `source.kind = "generator"` feeds a
//! pipeline directly (through the same decode path as files, so its throughput is real). Clicks
//! are spread evenly over the configured event-time span; each record gets an *arrival* time
//! (its event time, plus a delay for the out-of-order share) and records are emitted in arrival
//! order, so both streams come out roughly aligned in time like the output of live edges.
//!
//! Same config + same seed → byte-identical output.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, Zipf};
use serde::{Deserialize, Serialize};

use crate::config::MAX_DURATION;
use crate::event::Stream;
use crate::event::time::{format_ms, parse_rfc3339_ms};

/// Knobs of the generator. Every field has a default; see `pipelines/default.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GeneratorConfig {
    /// Seed of the random stream; the same seed gives the same events.
    pub seed: u64,
    /// Number of distinct clicks to generate (duplicates and malformed records come on top).
    pub clicks: u64,
    /// Event time of the first click (RFC 3339).
    pub start: String,
    /// Event-time span the clicks are spread over, in hours (24 = "clicks per day" = `clicks`).
    pub span_hours: f64,
    /// Share of clicks that convert.
    pub conversion_rate: f64,
    /// Share of clicks that the edge sends twice.
    pub duplicate_click_rate: f64,
    /// Share of postbacks that are sent again unchanged.
    pub duplicate_postback_rate: f64,
    /// Share of conversions whose status changes later (pending → approved/rejected, reversals).
    pub status_change_rate: f64,
    /// Share of conversions that name a click_id never seen.
    pub unknown_click_rate: f64,
    /// Share of records that arrive late (out of order) by up to `max_delay_seconds`.
    pub out_of_order_rate: f64,
    /// Largest arrival delay of an out-of-order record, seconds.
    pub max_delay_seconds: u64,
    /// Share of records that are malformed (bad JSON, missing fields, bad types, bad UTF-8).
    pub malformed_rate: f64,
    /// Number of offers; popularity follows a Zipf law.
    pub offers: u64,
    /// Number of affiliates; popularity follows a Zipf law.
    pub affiliates: u64,
    /// Number of tenants (advertisers).
    pub tenants: u64,
    /// Zipf exponent of offer / affiliate popularity.
    pub zipf_exponent: f64,
    /// Share of clicks that reuse an IP from a pool of recent visitors.
    pub repeat_ip_rate: f64,
    /// Mean delay from click to conversion, minutes (exponential).
    pub mean_conversion_delay_minutes: f64,
    /// Live mode: records leave at this steady rate, events per wall-clock second (clicks and
    /// postbacks together, on average), at their arrival time — instead of as fast as
    /// possible. Event time then advances `time_scale` times faster than wall time and
    /// `span_hours` is not used (the rate and the scale set it).
    pub rate: Option<f64>,
    /// Live mode: event time per wall time (1440 = a day of event time per wall minute).
    pub time_scale: f64,
    /// Live mode: never end (`clicks` is ignored); `attribd run` runs until SIGTERM.
    pub unbounded: bool,
}

impl GeneratorConfig {
    /// Every problem of these knobs as `(key, what is wrong)`; `PipelineConfig::validate`
    /// reports them with the file.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let mut bad = |key: &str, problem: String| p.push((key.to_string(), problem));
        let rates = [
            ("conversion_rate", self.conversion_rate),
            ("duplicate_click_rate", self.duplicate_click_rate),
            ("duplicate_postback_rate", self.duplicate_postback_rate),
            ("status_change_rate", self.status_change_rate),
            ("unknown_click_rate", self.unknown_click_rate),
            ("out_of_order_rate", self.out_of_order_rate),
            ("malformed_rate", self.malformed_rate),
            ("repeat_ip_rate", self.repeat_ip_rate),
        ];
        for (k, v) in rates {
            if !(0.0..=1.0).contains(&v) {
                bad(
                    &format!("source.generator.{k}"),
                    format!("must be between 0 and 1, got {v}"),
                );
            }
        }
        if parse_rfc3339_ms(&self.start).is_none() {
            bad(
                "source.generator.start",
                format!("must be an RFC 3339 timestamp, got {:?}", self.start),
            );
        }
        // The generator's durations are numbers of a unit; the same century bounds them.
        let century = MAX_DURATION.as_secs_f64();
        if self.span_hours <= 0.0 || !self.span_hours.is_finite() {
            bad(
                "source.generator.span_hours",
                format!("must be positive, got {}", self.span_hours),
            );
        } else if self.span_hours * 3600.0 > century {
            bad(
                "source.generator.span_hours",
                format!("must be at most 100 years, got {} hours", self.span_hours),
            );
        }
        if self.max_delay_seconds as f64 > century {
            bad(
                "source.generator.max_delay_seconds",
                format!(
                    "must be at most 100 years, got {} seconds",
                    self.max_delay_seconds
                ),
            );
        }
        let mean = self.mean_conversion_delay_minutes;
        if !(0.0..=century / 60.0).contains(&mean) {
            bad(
                "source.generator.mean_conversion_delay_minutes",
                format!("must be 0 to 100 years, got {mean} minutes"),
            );
        }
        if let Some(rate) = self.rate
            && !(rate > 0.0 && rate <= 1e9)
        {
            bad(
                "source.generator.rate",
                format!("must be above 0 (events per second), got {rate}"),
            );
        }
        if !(self.time_scale > 0.0 && self.time_scale <= 1e7) {
            bad(
                "source.generator.time_scale",
                format!(
                    "must be above 0 and at most 10000000, got {}",
                    self.time_scale
                ),
            );
        }
        if self.unbounded && self.rate.is_none() {
            bad(
                "source.generator.unbounded",
                "needs `rate`: an unbounded generator at full speed would only fill the disk"
                    .into(),
            );
        }
        if self.zipf_exponent <= 0.0 || !self.zipf_exponent.is_finite() {
            bad(
                "source.generator.zipf_exponent",
                format!("must be positive, got {}", self.zipf_exponent),
            );
        }
        for (k, v) in [
            ("offers", self.offers),
            ("affiliates", self.affiliates),
            ("tenants", self.tenants),
        ] {
            if v == 0 {
                bad(
                    &format!("source.generator.{k}"),
                    "must be at least 1".into(),
                );
            }
        }
        p
    }
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            seed: 42,
            clicks: 1_000_000,
            start: "2026-11-01T00:00:00Z".to_string(),
            span_hours: 24.0,
            conversion_rate: 0.05,
            duplicate_click_rate: 0.02,
            duplicate_postback_rate: 0.05,
            status_change_rate: 0.3,
            unknown_click_rate: 0.01,
            out_of_order_rate: 0.05,
            max_delay_seconds: 60,
            malformed_rate: 0.001,
            offers: 200,
            affiliates: 1000,
            tenants: 3,
            zipf_exponent: 1.1,
            repeat_ip_rate: 0.2,
            mean_conversion_delay_minutes: 120.0,
            rate: None,
            time_scale: 1.0,
            unbounded: false,
        }
    }
}

const COUNTRIES: &[&str] = &["US", "DE", "GB", "FR", "BR", "IN", "ES", "IT", "CA", "PL"];
const DEVICES: &[&str] = &["mobile", "desktop", "tablet"];
const OSES: &[&str] = &["android", "ios", "windows", "macos", "linux"];
const AGENTS: &[&str] = &[
    "Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 Chrome/131.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 Version/18.1 Safari/605.1.15",
];
const REFERRERS: &[&str] = &[
    "https://news.example.com/",
    "https://blog.example.org/deals",
    "https://social.example.net/feed",
];

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
    generate_paced(cfg, 0, emit, || true)
}

/// Records per click on average, for turning `rate` (events/s) into clicks per second.
fn events_per_click(cfg: &GeneratorConfig) -> f64 {
    let postbacks =
        cfg.conversion_rate * (1.0 + cfg.duplicate_postback_rate + cfg.status_change_rate);
    1.0 + cfg.duplicate_click_rate + postbacks
}

/// Live mode's clock: a record leaves when wall time has caught up with its arrival time,
/// scaled. Starts at the first record after `after_clicks` click lines (the ones a restored
/// run already processed go out at full speed).
struct Pace {
    after_clicks: u64,
    time_scale: f64,
    /// Wall time and arrival time of the first paced record.
    origin: Option<(std::time::Instant, i64)>,
}

impl Pace {
    /// How long the record arriving at `arrival_ms` must still wait.
    fn wait(&mut self, arrival_ms: i64, click_lines: u64) -> std::time::Duration {
        if click_lines < self.after_clicks {
            return std::time::Duration::ZERO;
        }
        let (wall, event) = *self
            .origin
            .get_or_insert((std::time::Instant::now(), arrival_ms));
        let due = (arrival_ms - event).max(0) as f64 / 1000.0 / self.time_scale;
        std::time::Duration::from_secs_f64(due).saturating_sub(wall.elapsed())
    }
}

/// [`generate`] with live mode: with `cfg.rate`, each record waits for its time (see [`Pace`])
/// and `idle()` is called before every wait, so the caller can hand on what it has batched
/// (it returns `false` to stop). `after_clicks`: click lines a restored run already processed.
pub fn generate_paced(
    cfg: &GeneratorConfig,
    after_clicks: u64,
    mut emit: impl FnMut(Stream, &[u8]) -> bool,
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
    let mut pace = cfg.rate.map(|_| Pace {
        after_clicks,
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
            if !emit(s.stream, &s.line) {
                return false;
            }
        }
        true
    };

    for i in 0..clicks {
        let ts = start_ms + (i as f64 * step) as i64;
        let click_id = format!("{:016x}{:08x}", mix(cfg.seed ^ i), i as u32);
        let tenant = (mix(i.wrapping_mul(31)) % cfg.tenants.max(1)) as usize;
        let offer = offers.sample(&mut rng) as u64;
        let affiliate = affiliates.sample(&mut rng) as u64;
        let ip = if !ip_pool.is_empty() && rng.random_bool(cfg.repeat_ip_rate.clamp(0.0, 1.0)) {
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
            let conv_ts = ts + 1_000 + conv_delay.sample(&mut rng) as i64;
            let amount_cents = rng.random_range(100..50_000u64);
            let first = pick_first_status(&mut rng);
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

fn pick_first_status(rng: &mut SmallRng) -> &'static str {
    let r: f64 = rng.random();
    if r < 0.6 {
        "pending"
    } else if r < 0.95 {
        "approved"
    } else {
        "rejected"
    }
}

/// SplitMix64 finaliser: turns counters into well-spread ids.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Writes `ts_ms` in one of the two timestamp forms of the input contract: an RFC 3339 string
/// or integer epoch milliseconds (the callers mix the two).
fn write_ts(out: &mut Vec<u8>, ts_ms: i64, rfc3339: bool) {
    if rfc3339 {
        out.push(b'"');
        out.extend_from_slice(format_ms(ts_ms).as_bytes());
        out.push(b'"');
    } else {
        let _ = write!(out, "{ts_ms}");
    }
}

fn click_line(
    rng: &mut SmallRng,
    click_id: &str,
    ts: i64,
    tenant: usize,
    offer: u64,
    affiliate: u64,
    ip: u32,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(400);
    let _ = write!(out, r#"{{"click_id":"{click_id}","ts":"#);
    write_ts(&mut out, ts, rng.random_bool(0.25));
    let [a, b, c, d] = ip.to_be_bytes();
    let _ = write!(
        out,
        r#","tenant_id":"t{tenant}","offer_id":"o{offer}","affiliate_id":"a{affiliate}","country":"{}","device":"{}","os":"{}","ip":"{a}.{b}.{c}.{d}","user_agent":"{}","referrer":"{}","sub1":"cmp{}","sub2":"pl{}"}}"#,
        COUNTRIES[rng.random_range(0..COUNTRIES.len())],
        DEVICES[rng.random_range(0..DEVICES.len())],
        OSES[rng.random_range(0..OSES.len())],
        AGENTS[rng.random_range(0..AGENTS.len())],
        REFERRERS[rng.random_range(0..REFERRERS.len())],
        affiliate % 7,
        rng.random_range(0..20u32),
    );
    out
}

#[allow(clippy::too_many_arguments)]
fn conversion_line(
    click_id: &str,
    external_id: &str,
    tenant: usize,
    amount_cents: u64,
    status: &str,
    conv_ts: i64,
    sent_ms: i64,
    offer: u64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(300);
    let _ = write!(
        out,
        r#"{{"click_id":"{click_id}","external_id":"{external_id}","tenant_id":"t{tenant}","amount":"{}.{:02}","status":"{status}","currency":"USD","ts":"#,
        amount_cents / 100,
        amount_cents % 100
    );
    write_ts(&mut out, conv_ts, conv_ts % 2 == 0);
    let _ = write!(
        out,
        r#","product_id":"p{offer}","order_id":"{external_id}","customer_id":"u{}","metadata":{{"sent_at":{sent_ms}}}}}"#,
        mix(amount_cents) % 100_000
    );
    out
}

/// Turns a good line into one of the malformed kinds the decoder must dead-letter.
fn malform(rng: &mut SmallRng, stream: Stream, line: &[u8]) -> Vec<u8> {
    match rng.random_range(0..4u8) {
        // Truncated JSON.
        0 => line[..line.len() / 2].to_vec(),
        // Invalid UTF-8 inside a string.
        1 => {
            let mut l = line.to_vec();
            if let Some(p) = l.iter().position(|&b| b == b':') {
                l.insert(p + 2, 0xFF);
            }
            l
        }
        // A required field missing.
        2 => {
            let text = String::from_utf8_lossy(line);
            let field = match stream {
                Stream::Clicks => "\"click_id\"",
                Stream::Conversions => "\"external_id\"",
            };
            text.replacen(field, "\"renamed_id\"", 1).into_bytes()
        }
        // A mistyped field.
        _ => {
            let text = String::from_utf8_lossy(line);
            let field = match stream {
                Stream::Clicks => "\"offer_id\":\"",
                Stream::Conversions => "\"status\":\"",
            };
            text.replacen(field, "\"offer_id\":[\"", 1)
                .replacen("\"status\":[\"", "\"status\":7,\"x\":\"", 1)
                .into_bytes()
        }
    }
}

/// Writes the generator's output as `OUT/clicks.ndjson[.gz|.zst]` and
/// `OUT/conversions.ndjson[…]` (`compress`: none, gz, zst); `attribd gen` and `attribd bench`.
pub fn write_files(
    g: &GeneratorConfig,
    out: &std::path::Path,
    compress: &str,
) -> anyhow::Result<GeneratedCounts> {
    use anyhow::Context;
    use std::fs::File;
    use std::io::BufWriter;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let ext = match compress {
        "none" => "",
        "gz" => ".gz",
        "zst" => ".zst",
        other => anyhow::bail!("--compress must be none, gz or zst, got {other:?}"),
    };
    let open = |name: &str| -> anyhow::Result<Box<dyn Write>> {
        let path = out.join(format!("{name}.ndjson{ext}"));
        let f = BufWriter::with_capacity(
            1 << 20,
            File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        );
        Ok(match compress {
            "gz" => Box::new(flate2::write::GzEncoder::new(
                f,
                flate2::Compression::fast(),
            )),
            "zst" => Box::new(zstd::stream::write::Encoder::new(f, 3)?.auto_finish()),
            _ => Box::new(f),
        })
    };
    let mut clicks = open("clicks")?;
    let mut convs = open("conversions")?;
    let mut err = None;
    let counts = generate(g, |stream, line| {
        let w = match stream {
            Stream::Clicks => &mut clicks,
            Stream::Conversions => &mut convs,
        };
        match w.write_all(line).and_then(|_| w.write_all(b"\n")) {
            Ok(()) => true,
            Err(e) => {
                err = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = err {
        return Err(e).context("writing generated files");
    }
    clicks.flush()?;
    convs.flush()?;
    drop(clicks);
    drop(convs);
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
