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
/// run already processed go out at full speed).
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
}
