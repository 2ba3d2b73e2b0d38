//! FX rates: `(date, currency, rate)` rows from `[money] fx_rates` (CSV) and `[[money.rates]]`,
//! and the rule that picks the rate of a conversion.
//!
//! A rate is how many units of the reporting currency one unit of `currency` buys on that UTC
//! day. The rate of a conversion is the rate of its UTC day; when that day has none, the newest
//! earlier one, and the conversion is marked *stale*; when there is no earlier one either, the
//! rate is *missing* (never silently 1). The reporting currency itself is always 1.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::decimal::{self, DecimalText, RATE_DECIMALS, RATE_ONE};

/// One rate as written in the CSV file or inline.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLine {
    /// UTC day, `YYYY-MM-DD`.
    pub date: String,
    /// ISO 4217 code.
    pub currency: String,
    /// Units of the reporting currency per unit of `currency`.
    pub rate: DecimalText,
}

/// How a rate was found for a day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The day's own rate (or the reporting currency).
    Day,
    /// The newest rate before the day: the day had none.
    Stale,
}

/// The rates, by currency, sorted by day.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FxTable {
    reporting: Box<str>,
    /// currency → `(day number, rate)` ascending by day.
    rates: HashMap<Box<str>, Vec<(i64, i64)>>,
}

impl FxTable {
    /// Builds the table; each problem is `(where, what)` (the line or entry, and the message).
    pub fn new(reporting: &str, lines: &[(String, RateLine)]) -> Result<FxTable, Vec<String>> {
        let mut problems = Vec::new();
        let mut rates: HashMap<Box<str>, Vec<(i64, i64)>> = HashMap::new();
        for (place, line) in lines {
            let day = match parse_day(&line.date) {
                Ok(d) => d,
                Err(e) => {
                    problems.push(format!("{place}: `date` {e}"));
                    continue;
                }
            };
            let currency = match currency_code(&line.currency) {
                Ok(c) => c,
                Err(e) => {
                    problems.push(format!("{place}: `currency` {e}"));
                    continue;
                }
            };
            let rate = match decimal::parse(&line.rate.0, RATE_DECIMALS) {
                Ok(0) => {
                    problems.push(format!("{place}: `rate` must be greater than 0"));
                    continue;
                }
                Ok(r) if r > decimal::MAX_RATE => {
                    problems.push(format!("{place}: `rate` must be below 100000000"));
                    continue;
                }
                Ok(r) => r,
                Err(e) => {
                    problems.push(format!("{place}: `rate` {e}"));
                    continue;
                }
            };
            if *currency == *reporting {
                problems.push(format!(
                    "{place}: a rate for the reporting currency {reporting} (it is always 1)"
                ));
                continue;
            }
            let days = rates.entry(currency).or_default();
            match days.iter().find(|(d, _)| *d == day) {
                Some((_, r)) if *r != rate => problems.push(format!(
                    "{place}: a second, different rate for {} on {}",
                    line.currency, line.date
                )),
                Some(_) => {}
                None => days.push((day, rate)),
            }
        }
        for days in rates.values_mut() {
            days.sort_unstable();
        }
        if problems.is_empty() {
            Ok(FxTable {
                reporting: reporting.into(),
                rates,
            })
        } else {
            Err(problems)
        }
    }

    pub fn reporting(&self) -> &str {
        &self.reporting
    }

    /// The rate of `currency` for UTC day `day`: the day's own, else the newest earlier one
    /// (stale), else `None`.
    pub fn find(&self, currency: &str, day: i64) -> Option<(i64, Found)> {
        if currency == &*self.reporting {
            return Some((RATE_ONE, Found::Day));
        }
        let days = self.rates.get(currency)?;
        let after = days.partition_point(|(d, _)| *d <= day);
        let (d, rate) = *days.get(after.checked_sub(1)?)?;
        Some((rate, if d == day { Found::Day } else { Found::Stale }))
    }

    /// The rate found the way it was found the first time (`how`): a later status change of
    /// the conversion must be valued exactly as its first version was, even after the day's
    /// own rate was published (a stale conversion keeps the earlier rate).
    pub fn find_as(&self, currency: &str, day: i64, how: Found) -> Option<i64> {
        match how {
            Found::Day => self.find(currency, day).map(|(r, _)| r),
            Found::Stale => self
                .find(currency, day - 1)
                .or_else(|| self.find(currency, day))
                .map(|(r, _)| r),
        }
    }

    /// Number of `(day, currency)` rates.
    pub fn len(&self) -> usize {
        self.rates.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads an FX CSV file (`date,currency,rate` header, one rate per line) into lines labelled
/// with their place (`fx.csv line 3`).
pub fn read_csv(path: &Path) -> Result<Vec<(String, RateLine)>, String> {
    csv_rows(path, &["date", "currency", "rate"])
}

/// The rows of a CSV file whose header line names at least the `required` columns, cells
/// trimmed, each labelled with its line as an editor shows it (`fx.csv line 3`). Lines that
/// are blank or start with `#` are comments.
pub(super) fn csv_rows<T: serde::de::DeserializeOwned>(
    path: &Path,
    required: &[&str],
) -> Result<Vec<(String, T)>, String> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {name}: {e}"))?;
    // The csv reader numbers the lines it reads; comments are taken out first, so keep the
    // editor's number of each line that is left.
    let mut kept = String::new();
    let mut line_of = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start_matches('\u{feff}').trim();
        if !trimmed.is_empty() && !trimmed.starts_with('#') {
            kept.push_str(line.trim_start_matches('\u{feff}'));
            kept.push('\n');
            line_of.push(n + 1);
        }
    }
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(kept.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| format!("{name}: {e}"))?
        .clone();
    // A file without its header line would otherwise lose its first row as the header.
    if let Some(missing) = required.iter().find(|c| !headers.iter().any(|h| h == **c)) {
        return Err(format!(
            "{name}: the first line must be a header naming the columns ({}); `{missing}` is not there",
            required.join(",")
        ));
    }
    let mut out = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let line = line_of.get(i + 1).copied().unwrap_or(0);
        let place = format!("{name} line {line}");
        let record = record.map_err(|e| format!("{place}: {e}"))?;
        if record.len() != headers.len() {
            return Err(format!(
                "{place}: {} cells, the header names {} columns",
                record.len(),
                headers.len()
            ));
        }
        match record.deserialize::<T>(Some(&headers)) {
            Ok(row) => out.push((place, row)),
            Err(e) => return Err(format!("{place}: {e}")),
        }
    }
    Ok(out)
}

/// `YYYY-MM-DD` → UTC day number.
pub fn parse_day(s: &str) -> Result<i64, String> {
    chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .map(|d| {
            d.signed_duration_since(chrono::NaiveDate::default())
                .num_days()
        })
        .map_err(|_| format!("{s:?} is not a date such as 2026-11-01"))
}

/// An ISO 4217 code as the decoder normalises it (three letters, upper case).
pub fn currency_code(s: &str) -> Result<Box<str>, String> {
    let s = s.trim();
    if s.len() == 3 && s.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(s.to_ascii_uppercase().into())
    } else {
        Err(format!("{s:?} is not an ISO 4217 code such as EUR"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(date: &str, currency: &str, rate: &str) -> (String, RateLine) {
        (
            "test".to_string(),
            RateLine {
                date: date.into(),
                currency: currency.into(),
                rate: DecimalText(rate.into()),
            },
        )
    }

    fn day(s: &str) -> i64 {
        parse_day(s).unwrap()
    }

    #[test]
    fn same_day_stale_and_missing() {
        let t = FxTable::new(
            "USD",
            &[
                line("2026-11-03", "EUR", "1.10"),
                line("2026-11-01", "eur", "1.08"),
                line("2026-11-01", "BRL", "0.2"),
            ],
        )
        .unwrap();
        assert_eq!(t.find("USD", 0), Some((RATE_ONE, Found::Day)));
        assert_eq!(
            t.find("EUR", day("2026-11-01")),
            Some((10_800_000_000, Found::Day))
        );
        assert_eq!(
            t.find("EUR", day("2026-11-02")),
            Some((10_800_000_000, Found::Stale))
        );
        assert_eq!(
            t.find("EUR", day("2026-11-03")),
            Some((11_000_000_000, Found::Day))
        );
        assert_eq!(t.find("EUR", day("2026-10-31")), None);
        assert_eq!(t.find("JPY", day("2026-11-01")), None);
        // A stale conversion keeps the earlier rate after its own day's rate appears.
        assert_eq!(
            t.find_as("EUR", day("2026-11-03"), Found::Stale),
            Some(10_800_000_000)
        );
        assert_eq!(t.len(), 3);
        assert_eq!(day("1970-01-02"), 1);
    }

    #[test]
    fn bad_lines_are_named() {
        let e = FxTable::new(
            "USD",
            &[
                line("2026-13-01", "EUR", "1"),
                line("2026-11-01", "EURO", "1"),
                line("2026-11-01", "EUR", "0"),
                line("2026-11-01", "EUR", "1.1"),
                line("2026-11-01", "EUR", "1.2"),
                line("2026-11-01", "USD", "1"),
            ],
        )
        .unwrap_err();
        assert_eq!(e.len(), 5, "{e:?}");
        assert!(e[0].contains("`date`"));
        assert!(e[1].contains("ISO 4217"));
        assert!(e[2].contains("greater than 0"));
        assert!(e[3].contains("second, different rate"));
        assert!(e[4].contains("reporting currency"));
    }

    #[test]
    fn csv_files_are_read_with_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fx.csv");
        std::fs::write(&p, "date,currency,rate\n2026-11-01, EUR ,1.08\n# comment\n").unwrap();
        let lines = read_csv(&p).unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].1.currency, "EUR");
        std::fs::write(&p, "date,currency,rate\n# c\n\n2026-11-01,EUR\n").unwrap();
        let e = read_csv(&p).unwrap_err();
        assert!(e.contains("fx.csv line 4"), "{e}");
        // No header line: refused, not read as a file without rates.
        std::fs::write(&p, "2026-11-01,EUR,1.08\n").unwrap();
        let e = read_csv(&p).unwrap_err();
        assert!(e.contains("must be a header"), "{e}");
        assert!(read_csv(&dir.path().join("none.csv")).is_err());
    }
}
