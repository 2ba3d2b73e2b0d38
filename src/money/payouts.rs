//! Payout rules: what the network pays its affiliate for a conversion or a click.
//!
//! A rule names an offer (optionally narrowed to a tenant, an affiliate and/or a country) and
//! pays any of: a fixed `cpa` per approved conversion (in `currency`, default the reporting
//! currency), `revshare_percent` of the conversion's amount, a `cpc` per accepted click. Rules
//! are versioned by `from` (an effective-from time): a new version applies to events from its
//! time on, so changing a rate never rewrites history.
//!
//! Which rule applies to an event: of the rules whose offer (and tenant, affiliate, country,
//! when given) match, the most specific that has a version in effect at the event's time —
//! affiliate beats country beats tenant-only — and of that rule its newest version in effect.
//! [`PayoutBook::timeline`] works this out once per set of dimensions, as a list of
//! `(from, rule)` steps the state stage keeps per dimension id.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::decimal::{self, DecimalText, MONEY_DECIMALS};
use super::fx::{currency_code, parse_day};
use crate::event::time::{MS_PER_DAY, parse_rfc3339_ms};

/// One rule as written in `[[payouts.rule]]`, a TOML file's `[[rule]]` or a CSV line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RuleLine {
    pub offer: String,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub affiliate: Option<String>,
    #[serde(default)]
    pub country: Option<String>,
    /// Effective from (`2026-11-01` = its UTC midnight, or RFC 3339); absent = always.
    #[serde(default)]
    pub from: Option<String>,
    /// Fixed amount per approved conversion, in `currency`.
    #[serde(default)]
    pub cpa: Option<DecimalText>,
    /// Percent of the conversion's amount, in the conversion's currency.
    #[serde(default)]
    pub revshare_percent: Option<DecimalText>,
    /// Fixed amount per accepted click, in `currency`.
    #[serde(default)]
    pub cpc: Option<DecimalText>,
    /// Currency of `cpa` and `cpc`; default the reporting currency.
    #[serde(default)]
    pub currency: Option<String>,
}

/// One version of a rule, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Effective from (epoch ms); `i64::MIN` = always.
    pub from_ms: i64,
    /// Micro-units of `currency` per approved conversion.
    pub cpa_micros: i64,
    /// Percent with six decimals (`30%` = 30 000 000).
    pub revshare_micro_percent: i64,
    /// Micro-units of `currency` per accepted click.
    pub cpc_micros: i64,
    pub currency: Box<str>,
}

impl Rule {
    /// The revenue share of `amount_micros`, in the amount's currency (rounded to the micro-unit).
    pub fn revshare_of(&self, amount_micros: i64) -> i64 {
        if self.revshare_micro_percent == 0 {
            return 0;
        }
        // percent × 10⁶ → fraction: ÷ 10⁸.
        decimal::mul_round(amount_micros, self.revshare_micro_percent, 8).unwrap_or(0)
    }
}

/// What a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Scope {
    offer: Box<str>,
    tenant: Option<Box<str>>,
    affiliate: Option<Box<str>>,
    country: Option<Box<str>>,
}

impl Scope {
    fn matches(&self, tenant: &str, offer: &str, affiliate: &str, country: &str) -> bool {
        let opt = |want: &Option<Box<str>>, have: &str| want.as_deref().is_none_or(|w| w == have);
        *self.offer == *offer
            && opt(&self.tenant, tenant)
            && opt(&self.affiliate, affiliate)
            && opt(&self.country, country)
    }

    /// Affiliate beats country beats tenant.
    fn specificity(&self) -> u8 {
        4 * u8::from(self.affiliate.is_some())
            + 2 * u8::from(self.country.is_some())
            + u8::from(self.tenant.is_some())
    }
}

/// Which rule applies when, for one set of dimensions: `(from_ms, index into the book's rules)`
/// steps, ascending; before the first step no rule applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timeline {
    steps: Vec<(i64, u32)>,
}

impl Timeline {
    /// The index of the rule in effect at `ts_ms`.
    pub fn at(&self, ts_ms: i64) -> Option<u32> {
        let after = self.steps.partition_point(|(from, _)| *from <= ts_ms);
        self.steps.get(after.checked_sub(1)?).map(|(_, r)| *r)
    }
}

/// Every rule, grouped by scope with its versions sorted by `from`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PayoutBook {
    rules: Vec<Rule>,
    /// scope → indexes into `rules`, ascending by `from_ms`.
    scopes: Vec<(Scope, Vec<u32>)>,
    /// Some rule pays per click (the click path skips the lookup otherwise).
    pays_clicks: bool,
}

impl PayoutBook {
    /// Parses rules; `reporting` is the default currency of `cpa`/`cpc`. Each problem names
    /// its place (`payouts.csv line 4`, `[[payouts.rule]] 2`).
    pub fn new(reporting: &str, lines: &[(String, RuleLine)]) -> Result<PayoutBook, Vec<String>> {
        let mut problems = Vec::new();
        let mut book = PayoutBook::default();
        let mut seen: Vec<(Scope, i64)> = Vec::new();
        for (place, line) in lines {
            match parse_rule(line, reporting) {
                Ok((scope, rule)) => {
                    if seen.contains(&(scope.clone(), rule.from_ms)) {
                        problems.push(format!(
                            "{place}: a second rule for the same offer, tenant, affiliate, country and `from`"
                        ));
                        continue;
                    }
                    seen.push((scope.clone(), rule.from_ms));
                    book.pays_clicks |= rule.cpc_micros > 0;
                    let index = book.rules.len() as u32;
                    book.rules.push(rule);
                    match book.scopes.iter_mut().find(|(s, _)| *s == scope) {
                        Some((_, versions)) => versions.push(index),
                        None => book.scopes.push((scope, vec![index])),
                    }
                }
                Err(e) => problems.push(format!("{place}: {e}")),
            }
        }
        for (_, versions) in &mut book.scopes {
            versions.sort_by_key(|&i| book.rules[i as usize].from_ms);
        }
        if problems.is_empty() {
            Ok(book)
        } else {
            Err(problems)
        }
    }

    pub fn rule(&self, index: u32) -> &Rule {
        &self.rules[index as usize]
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn pays_clicks(&self) -> bool {
        self.pays_clicks
    }

    /// Which rule applies when to events with these dimensions.
    pub fn timeline(&self, tenant: &str, offer: &str, affiliate: &str, country: &str) -> Timeline {
        let candidates: Vec<&(Scope, Vec<u32>)> = self
            .scopes
            .iter()
            .filter(|(s, _)| s.matches(tenant, offer, affiliate, country))
            .collect();
        let mut changes: Vec<i64> = candidates
            .iter()
            .flat_map(|(_, v)| v.iter().map(|&i| self.rules[i as usize].from_ms))
            .collect();
        changes.sort_unstable();
        changes.dedup();
        let mut steps: Vec<(i64, u32)> = Vec::new();
        for t in changes {
            // The most specific scope with a version in effect at t, and its newest such version.
            let winner = candidates
                .iter()
                .filter_map(|(scope, versions)| {
                    let in_effect = versions
                        .iter()
                        .rev()
                        .find(|&&i| self.rules[i as usize].from_ms <= t)?;
                    Some((scope.specificity(), *in_effect))
                })
                .max_by_key(|(specificity, _)| *specificity)
                .map(|(_, i)| i);
            if let Some(rule) = winner
                && steps.last().is_none_or(|(_, r)| *r != rule)
            {
                steps.push((t, rule));
            }
        }
        Timeline { steps }
    }
}

fn parse_rule(line: &RuleLine, reporting: &str) -> Result<(Scope, Rule), String> {
    let text = |v: &Option<String>, key: &str| -> Result<Option<Box<str>>, String> {
        match v.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some("*") => Err(format!("`{key}` \"*\": leave the key out to match all")),
            Some(s) => Ok(Some(s.into())),
        }
    };
    let offer = text(&Some(line.offer.clone()), "offer")?
        .ok_or("`offer` is empty: every rule names its offer")?;
    let country = match text(&line.country, "country")? {
        Some(c) if c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()) => {
            Some(c.to_ascii_uppercase().into())
        }
        Some(c) => {
            return Err(format!(
                "`country` {c:?} is not an ISO 3166-1 alpha-2 code such as BR"
            ));
        }
        None => None,
    };
    let scope = Scope {
        offer,
        tenant: text(&line.tenant, "tenant")?,
        affiliate: text(&line.affiliate, "affiliate")?,
        country,
    };
    let amount = |v: &Option<DecimalText>, key: &str, decimals: u32| match v {
        None => Ok(0),
        Some(d) if d.0.trim().is_empty() => Ok(0),
        Some(d) => decimal::parse(&d.0, decimals).map_err(|e| format!("`{key}` {e}")),
    };
    let cpa_micros = amount(&line.cpa, "cpa", MONEY_DECIMALS)?;
    let cpc_micros = amount(&line.cpc, "cpc", MONEY_DECIMALS)?;
    let revshare_micro_percent = amount(&line.revshare_percent, "revshare_percent", 6)?;
    if revshare_micro_percent > 100_000_000 {
        return Err("`revshare_percent` is above 100".into());
    }
    if line.cpa.is_none() && line.cpc.is_none() && line.revshare_percent.is_none() {
        return Err("the rule pays nothing: give `cpa`, `revshare_percent` and/or `cpc` (0 to pay nothing on purpose)".into());
    }
    let currency = match line.currency.as_deref().map(str::trim) {
        None | Some("") => reporting.into(),
        Some(c) => currency_code(c).map_err(|e| format!("`currency` {e}"))?,
    };
    let from_ms = match line.from.as_deref().map(str::trim) {
        None | Some("") => i64::MIN,
        Some(s) => parse_rfc3339_ms(s)
            .or_else(|| parse_day(s).ok().map(|d| d * MS_PER_DAY))
            .ok_or_else(|| {
                format!("`from` {s:?} is not a date (2026-11-01) or an RFC 3339 time")
            })?,
    };
    Ok((
        scope,
        Rule {
            from_ms,
            cpa_micros,
            revshare_micro_percent,
            cpc_micros,
            currency,
        },
    ))
}

/// Reads a rules file: `.csv` (header naming the columns of [`RuleLine`]; any subset, `offer`
/// required) or TOML (`[[rule]]` tables).
pub fn read_file(path: &Path) -> Result<Vec<(String, RuleLine)>, String> {
    let name = path.display().to_string();
    let is_csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    if is_csv {
        return super::fx::csv_rows(path, &["offer"]);
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RulesFile {
        #[serde(default)]
        rule: Vec<RuleLine>,
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {name}: {e}"))?;
    let file: RulesFile = toml::from_str(&text).map_err(|e| format!("{name}: {e}"))?;
    Ok(file
        .rule
        .into_iter()
        .enumerate()
        .map(|(i, r)| (format!("{name} [[rule]] {}", i + 1), r))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(offer: &str) -> RuleLine {
        RuleLine {
            offer: offer.into(),
            ..RuleLine::default()
        }
    }

    fn d(s: &str) -> Option<DecimalText> {
        Some(DecimalText(s.into()))
    }

    fn book(lines: Vec<RuleLine>) -> PayoutBook {
        let lines: Vec<_> = lines
            .into_iter()
            .enumerate()
            .map(|(i, l)| (format!("rule {i}"), l))
            .collect();
        PayoutBook::new("USD", &lines).unwrap()
    }

    const NOV1: i64 = 1_761_955_200_000; // 2025-11-01T00:00:00Z

    #[test]
    fn the_most_specific_rule_in_effect_wins() {
        let b = book(vec![
            RuleLine {
                cpa: d("5"),
                ..rule("o1")
            },
            RuleLine {
                affiliate: Some("a1".into()),
                cpa: d("7"),
                ..rule("o1")
            },
            RuleLine {
                country: Some("br".into()),
                cpa: d("3"),
                ..rule("o1")
            },
            RuleLine {
                affiliate: Some("a1".into()),
                country: Some("BR".into()),
                cpa: d("9"),
                from: Some("2025-11-01".into()),
                ..rule("o1")
            },
        ]);
        let cpa = |t: &Timeline, ts| t.at(ts).map(|i| b.rule(i).cpa_micros);
        let plain = b.timeline("t", "o1", "a2", "US");
        assert_eq!(cpa(&plain, NOV1), Some(5_000_000));
        let country = b.timeline("t", "o1", "a2", "BR");
        assert_eq!(cpa(&country, NOV1), Some(3_000_000));
        let aff = b.timeline("t", "o1", "a1", "US");
        assert_eq!(cpa(&aff, NOV1), Some(7_000_000));
        // Affiliate + country only from 1 Nov; before that the affiliate rule.
        let both = b.timeline("t", "o1", "a1", "BR");
        assert_eq!(cpa(&both, NOV1 - 1), Some(7_000_000));
        assert_eq!(cpa(&both, NOV1), Some(9_000_000));
        assert_eq!(b.timeline("t", "o2", "a1", "BR").at(NOV1), None);
    }

    #[test]
    fn versions_apply_from_their_time_only() {
        let b = book(vec![
            RuleLine {
                cpa: d("5"),
                from: Some("2025-11-01T12:00:00Z".into()),
                ..rule("o1")
            },
            RuleLine {
                revshare_percent: d("30"),
                from: Some("2025-11-02".into()),
                ..rule("o1")
            },
            RuleLine {
                tenant: Some("t2".into()),
                cpc: d("0.05"),
                currency: Some("eur".into()),
                ..rule("o1")
            },
        ]);
        let t = b.timeline("t1", "o1", "a", "US");
        assert_eq!(t.at(NOV1), None, "no rule before the first version");
        let noon = NOV1 + 12 * 3_600_000;
        assert_eq!(b.rule(t.at(noon).unwrap()).cpa_micros, 5_000_000);
        let r = b.rule(t.at(NOV1 + MS_PER_DAY).unwrap());
        assert_eq!((r.cpa_micros, r.revshare_micro_percent), (0, 30_000_000));
        assert_eq!(r.revshare_of(19_990_000), 5_997_000);
        // The tenant rule is more specific than the plain offer rule, from always.
        let t2 = b.timeline("t2", "o1", "a", "US");
        let r = b.rule(t2.at(NOV1 + MS_PER_DAY).unwrap());
        assert_eq!((r.cpc_micros, &*r.currency), (50_000, "EUR"));
        assert!(b.pays_clicks());
    }

    #[test]
    fn bad_rules_are_named() {
        let lines: Vec<(String, RuleLine)> = vec![
            ("r1".into(), rule("o1")),
            (
                "r2".into(),
                RuleLine {
                    cpa: d("-1"),
                    ..rule("o1")
                },
            ),
            (
                "r3".into(),
                RuleLine {
                    revshare_percent: d("101"),
                    ..rule("o1")
                },
            ),
            (
                "r4".into(),
                RuleLine {
                    cpa: d("1"),
                    from: Some("yesterday".into()),
                    ..rule("o1")
                },
            ),
            (
                "r5".into(),
                RuleLine {
                    cpa: d("1"),
                    ..rule("")
                },
            ),
            (
                "r6".into(),
                RuleLine {
                    cpa: d("1"),
                    ..rule("o1")
                },
            ),
            (
                "r7".into(),
                RuleLine {
                    cpa: d("2"),
                    ..rule("o1")
                },
            ),
        ];
        let e = PayoutBook::new("USD", &lines).unwrap_err();
        assert_eq!(e.len(), 6, "{e:#?}");
        assert!(e[0].starts_with("r1: the rule pays nothing"));
        assert!(e[1].starts_with("r2: `cpa`"));
        assert!(e[2].contains("above 100"));
        assert!(e[3].contains("`from`"));
        assert!(e[4].contains("`offer` is empty"));
        assert!(e[5].starts_with("r7: a second rule"));
    }

    #[test]
    fn files_in_csv_and_toml() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("p.csv");
        std::fs::write(
            &csv,
            "offer,affiliate,cpa,currency,from\no1,,5.00,EUR,2025-11-01\no1,a1,6,,\n",
        )
        .unwrap();
        let lines = read_file(&csv).unwrap();
        assert_eq!(lines.len(), 2);
        let b = PayoutBook::new("USD", &lines).unwrap();
        let t = b.timeline("t", "o1", "a1", "US");
        assert_eq!(b.rule(t.at(NOV1).unwrap()).cpa_micros, 6_000_000);
        let toml = dir.path().join("p.toml");
        std::fs::write(&toml, "[[rule]]\noffer = \"o1\"\ncpa = 2.5\n").unwrap();
        let lines = read_file(&toml).unwrap();
        let b = PayoutBook::new("USD", &lines).unwrap();
        assert_eq!(b.rule(0).cpa_micros, 2_500_000);
        std::fs::write(&toml, "[[rule]]\noffre = \"o1\"\n").unwrap();
        assert!(read_file(&toml).unwrap_err().contains("offre"));
    }
}
