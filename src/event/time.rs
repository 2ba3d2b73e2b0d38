//! Timestamps of the input contract: RFC 3339 strings with any offset, or integer epoch
//! milliseconds. Everything inside attribd is UTC epoch milliseconds (`i64`).

use chrono::{DateTime, NaiveDate, TimeZone, Utc};

pub const MS_PER_MINUTE: i64 = 60_000;
pub const MS_PER_HOUR: i64 = 3_600_000;
pub const MS_PER_DAY: i64 = 86_400_000;

/// Parses an RFC 3339 timestamp (`2026-11-01T10:00:00Z`, `2026-11-01T12:00:00.250+02:00`).
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc).timestamp_millis())
}

/// Current wall-clock time in epoch milliseconds.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// `2026-11-01T10:00:00.000Z` form, for logs, generated data and reports.
pub fn format_ms(ms: i64) -> String {
    match Utc.timestamp_millis_opt(ms).single() {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        None => format!("{ms}ms"),
    }
}

/// Hive partition values (`dt=YYYY-MM-DD`, `hour=HH`) of a timestamp.
pub fn partition_of(ms: i64) -> (String, u32) {
    let day = ms.div_euclid(MS_PER_DAY);
    let hour = (ms.rem_euclid(MS_PER_DAY) / MS_PER_HOUR) as u32;
    let date = NaiveDate::from_num_days_from_ce_opt(719_163 + day as i32)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "invalid".to_string());
    (date, hour)
}

/// Start of the UTC hour that contains `ms`.
pub fn hour_floor(ms: i64) -> i64 {
    ms.div_euclid(MS_PER_HOUR) * MS_PER_HOUR
}

/// Start of the UTC minute that contains `ms`.
pub fn minute_floor(ms: i64) -> i64 {
    ms.div_euclid(MS_PER_MINUTE) * MS_PER_MINUTE
}

/// UTC day number (days since 1970-01-01) of `ms`.
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(MS_PER_DAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_offsets_are_normalised_to_utc() {
        let z = parse_rfc3339_ms("2026-11-01T10:00:00Z").unwrap();
        let plus2 = parse_rfc3339_ms("2026-11-01T12:00:00+02:00").unwrap();
        let frac = parse_rfc3339_ms("2026-11-01T10:00:00.250Z").unwrap();
        assert_eq!(z, 1_793_527_200_000);
        assert_eq!(z, plus2);
        assert_eq!(frac - z, 250);
        assert_eq!(parse_rfc3339_ms("2026-11-01 10:00"), None);
        assert_eq!(parse_rfc3339_ms(""), None);
    }

    #[test]
    fn partitions_and_buckets() {
        let t = parse_rfc3339_ms("2026-11-01T23:59:30.5Z").unwrap();
        assert_eq!(partition_of(t), ("2026-11-01".to_string(), 23));
        assert_eq!(format_ms(minute_floor(t)), "2026-11-01T23:59:00.000Z");
        assert_eq!(partition_of(0), ("1970-01-01".to_string(), 0));
        assert_eq!(day_of(t), 20_758);
    }
}
