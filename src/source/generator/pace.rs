//! Live mode's timing (`source.generator.rate`): how many records a click brings on average,
//! which turns the configured events per second into the event-time step between clicks, and
//! [`Pace`], the clock that holds each record back until wall time reaches its arrival time.
//! [`super::generate_paced`] asks it before emitting every record.

use super::GeneratorConfig;

/// Records per click on average, for turning `rate` (events/s) into clicks per second.
pub(super) fn events_per_click(cfg: &GeneratorConfig) -> f64 {
    let postbacks =
        cfg.conversion_rate * (1.0 + cfg.duplicate_postback_rate + cfg.status_change_rate);
    1.0 + cfg.duplicate_click_rate + postbacks
}

/// Live mode's clock: a record leaves when wall time has caught up with its arrival time,
/// scaled. Starts at the first record after `after_clicks` click lines (the ones a restored
/// run already processed, or `backlog_clicks` if more, go out at full speed).
pub(super) struct Pace {
    pub(super) after_clicks: u64,
    pub(super) time_scale: f64,
    /// Wall time and arrival time of the first paced record.
    pub(super) origin: Option<(std::time::Instant, i64)>,
}

impl Pace {
    /// How long the record arriving at `arrival_ms` must still wait.
    pub(super) fn wait(&mut self, arrival_ms: i64, click_lines: u64) -> std::time::Duration {
        if click_lines < self.after_clicks {
            return std::time::Duration::ZERO;
        }
        let (wall, event) = *self
            .origin
            .get_or_insert((std::time::Instant::now(), arrival_ms));
        let due = (arrival_ms - event).max(0) as f64 / 1000.0 / self.time_scale;
        std::time::Duration::from_secs_f64(due).saturating_sub(wall.elapsed())
    }

    /// When the record arriving at `arrival_ms` was due by the wall clock (once the clock
    /// runs): its arrival for latency. A record held back by a full queue (the state stage
    /// pausing for a checkpoint) then counts the time it waited, as a real edge's would.
    pub(super) fn due(&self, arrival_ms: i64, click_lines: u64) -> Option<std::time::Instant> {
        if click_lines < self.after_clicks {
            return None;
        }
        let (wall, event) = self.origin?;
        let due = (arrival_ms - event).max(0) as f64 / 1000.0 / self.time_scale;
        Some(wall + std::time::Duration::from_secs_f64(due))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{GeneratorConfig, generate_paced};
    use super::*;
    use crate::event::Stream;

    #[test]
    fn the_clock_starts_at_the_first_click_after_after_clicks() {
        let mut pace = Pace {
            after_clicks: 3,
            time_scale: 1.0,
            origin: None,
        };
        // Before: no wait however far ahead, and the clock has not started.
        assert_eq!(pace.wait(1_000_000, 2), Duration::ZERO);
        assert!(pace.origin.is_none());
        // The first paced record sets the origin and leaves now; the next waits its distance.
        assert_eq!(pace.wait(5_000, 3), Duration::ZERO);
        assert!(pace.wait(65_000, 4) > Duration::from_secs(59));
        // Due times count from the clock's start, whenever the record actually leaves.
        let (wall, _) = pace.origin.unwrap();
        assert_eq!(pace.due(65_000, 4), Some(wall + Duration::from_secs(60)));
        assert_eq!(pace.due(65_000, 2), None, "not paced yet: no due time");
    }

    /// A live generator of `clicks` clicks (`backlog_clicks` of them unpaced, after
    /// `after_clicks` of a restored run): the click lines emitted before the first wait for the
    /// clock, and whether it waited at all.
    fn first_wait(clicks: u64, backlog_clicks: u64, after_clicks: u64) -> (u64, bool) {
        let cfg = GeneratorConfig {
            clicks,
            backlog_clicks,
            // 5 000 clicks/s of real time: the paced 100 clicks after the backlog span 20 ms
            // (no postbacks, duplicates or late records: they would arrive minutes later).
            rate: Some(5_000.0),
            time_scale: 1.0,
            conversion_rate: 0.0,
            duplicate_click_rate: 0.0,
            out_of_order_rate: 0.0,
            ..GeneratorConfig::default()
        };
        let lines = std::cell::Cell::new(0u64);
        let mut at_first_wait = None;
        generate_paced(
            &cfg,
            after_clicks,
            |stream, _, _| {
                lines.set(lines.get() + u64::from(stream == Stream::Clicks));
                true
            },
            || {
                at_first_wait.get_or_insert(lines.get());
                true
            },
        )
        .unwrap();
        (
            at_first_wait.unwrap_or(lines.get()),
            at_first_wait.is_some(),
        )
    }

    #[test]
    fn the_backlog_goes_out_unpaced_then_the_rate_holds() {
        // Without a backlog the clock holds records back from the start…
        let (before, waited) = first_wait(100, 0, 0);
        assert!(waited && before < 50, "{before}");
        // …with one, not before its clicks are out (then it does).
        let (before, waited) = first_wait(1_100, 1_000, 0);
        assert!(waited && before >= 1_000, "{before}");
        // A restored run past the backlog skips what it had unpaced; one short of it, the
        // backlog's end still holds.
        assert!(first_wait(1_600, 1_000, 1_500).0 >= 1_500);
        assert!(first_wait(1_100, 1_000, 500).0 >= 1_000);
    }
}
