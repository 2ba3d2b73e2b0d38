//! The generator's knobs (`[source.generator]`, and `attribd gen`'s defaults): how many clicks,
//! over which event-time span, the rates of conversions, duplicates, late and malformed
//! records, the popularity laws, and live mode (`rate`, `time_scale`, `unbounded`,
//! `backlog_clicks`) — with the checks `PipelineConfig::validate` reports.
//! [`super::generate_paced`] reads them.

use serde::{Deserialize, Serialize};

use crate::config::MAX_DURATION;
use crate::event::time::parse_rfc3339_ms;

/// Clicks in one IP burst of the generator (`ip_burst_rate`).
pub const BURST_CLICKS: u32 = 40;

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
    /// Share of postbacks in a currency other than USD: EUR, GBP, BRL or JPY (reports in one
    /// currency, docs/reports.md). 0 leaves every other record as it was.
    pub foreign_currency_rate: f64,
    /// Share of conversions 1–5 s after their click (the `too_fast` fraud signal).
    pub fast_conversion_rate: f64,
    /// Share of clicks that start a burst: the next clicks come from one new IP on one offer,
    /// [`BURST_CLICKS`] of them within about a minute (`ip_burst`, `flagged_ip`).
    pub ip_burst_rate: f64,
    /// Live mode: records leave at this steady rate, events per wall-clock second (clicks and
    /// postbacks together, on average), at their arrival time — instead of as fast as
    /// possible. Event time then advances `time_scale` times faster than wall time and
    /// `span_hours` is not used (the rate and the scale set it).
    pub rate: Option<f64>,
    /// Live mode: event time per wall time (1440 = a day of event time per wall minute).
    pub time_scale: f64,
    /// Live mode: never end (`clicks` is ignored); `attribd run` runs until SIGTERM.
    pub unbounded: bool,
    /// Live mode: the first this many click records (duplicates included) and the postbacks
    /// between them go out at full speed, unpaced; pacing starts after them. A soak starts
    /// with a filled state this way (e.g. a month of event time), then runs at `rate`.
    /// When records leave, not what they are: left out of a checkpoint's settings (see
    /// `checkpoint::identity`), so a resumed run may change it.
    #[serde(skip_serializing)]
    pub backlog_clicks: u64,
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
            ("foreign_currency_rate", self.foreign_currency_rate),
            ("fast_conversion_rate", self.fast_conversion_rate),
            ("ip_burst_rate", self.ip_burst_rate),
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
        if self.backlog_clicks > 0 && self.rate.is_none() {
            bad(
                "source.generator.backlog_clicks",
                "needs `rate`: it is live mode's unpaced start, and without `rate` every record \
                 goes out at full speed anyway"
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
            foreign_currency_rate: 0.0,
            fast_conversion_rate: 0.0,
            ip_burst_rate: 0.0,
            rate: None,
            time_scale: 1.0,
            unbounded: false,
            backlog_clicks: 0,
        }
    }
}
