//! The scheduled minimum: cron-like periods ("mon-fri 08:00–18:00: at least 5") that raise
//! a pool's floor whatever its policy says — the Elastic CI Stack's scheduled `MinSize`,
//! GitLab's `periods`, made usable with any policy. Times are read at a fixed UTC offset
//! (UTC by default); there is no daylight-saving rule, so a period in a DST zone is given
//! twice a year with its new offset.

use schemars::JsonSchema;
use serde::Deserialize;
use std::fmt;

const MS_PER_MINUTE: i64 = 60_000;
const MS_PER_DAY: i64 = 86_400_000;
const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// One period of a scheduled minimum.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct SchedulePeriod {
    /// Days the period applies on: names and ranges, comma-separated (`"mon-fri"`,
    /// `"sat,sun"`, `"fri-mon"`), or `"*"` for every day. Default `"*"`.
    #[serde(default)]
    pub days: Days,
    /// Start time of day, `"HH:MM"`, inclusive. Default `"00:00"`.
    #[serde(default)]
    pub from: TimeOfDay,
    /// End time of day, `"HH:MM"` (up to `"24:00"`), exclusive; must be after `from` (split
    /// a period across midnight in two). Default `"24:00"`.
    #[serde(default = "TimeOfDay::end_of_day")]
    pub to: TimeOfDay,
    /// The fewest instances the pool keeps during the period. Required.
    pub min: u32,
    /// The offset from UTC the days and times are read at, `"+HH:MM"` or `"-HH:MM"`.
    /// Default `"+00:00"` (UTC).
    #[serde(default)]
    pub utc_offset: UtcOffset,
}

impl SchedulePeriod {
    /// Does the period cover this instant?
    pub fn covers(&self, now_ms: i64) -> bool {
        let local = now_ms + self.utc_offset.0 as i64 * MS_PER_MINUTE;
        let day = local.div_euclid(MS_PER_DAY);
        // 1970-01-01 was a Thursday: index 3 with Monday as 0.
        let weekday = (day + 3).rem_euclid(7) as u8;
        let minute = (local.rem_euclid(MS_PER_DAY) / MS_PER_MINUTE) as u16;
        self.days.0 & (1 << weekday) != 0 && minute >= self.from.0 && minute < self.to.0
    }

    pub fn validate(&self, path: &str) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        if self.to.0 <= self.from.0 {
            errors.push((
                format!("{path}.to"),
                format!(
                    "expected a time after from = \"{}\", got \"{}\" (split a period across midnight in two)",
                    self.from, self.to
                ),
            ));
        }
        errors
    }
}

impl fmt::Display for SchedulePeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}–{}", self.days, self.from, self.to)?;
        if self.utc_offset.0 != 0 {
            write!(f, " UTC{}", self.utc_offset)?;
        }
        Ok(())
    }
}

/// The largest `min` among the periods covering `now_ms`, with the period that gave it.
pub fn scheduled_minimum(periods: &[SchedulePeriod], now_ms: i64) -> Option<&SchedulePeriod> {
    periods
        .iter()
        .filter(|p| p.covers(now_ms))
        .max_by_key(|p| p.min)
}

/// A set of weekdays, one bit each, Monday first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(try_from = "String")]
#[schemars(with = "String")]
pub struct Days(u8);

impl Default for Days {
    fn default() -> Self {
        Days(0x7f)
    }
}

fn day_index(name: &str) -> Result<u8, String> {
    const FULL: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    let lower = name.trim().to_ascii_lowercase();
    (0..7)
        .find(|&d| lower == DAY_NAMES[d] || lower == FULL[d])
        .map(|d| d as u8)
        .ok_or_else(|| format!("expected a day (mon, tue, wed, thu, fri, sat, sun), got {name:?}"))
}

impl TryFrom<String> for Days {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if text.trim() == "*" {
            return Ok(Days::default());
        }
        let mut bits = 0u8;
        for item in text.split(',') {
            match item.split_once('-') {
                Some((first, last)) => {
                    let (first, last) = (day_index(first)?, day_index(last)?);
                    let mut day = first;
                    loop {
                        bits |= 1 << day;
                        if day == last {
                            break;
                        }
                        day = (day + 1) % 7;
                    }
                }
                None => bits |= 1 << day_index(item)?,
            }
        }
        Ok(Days(bits))
    }
}

impl fmt::Display for Days {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0x7f => f.write_str("every day"),
            0x1f => f.write_str("mon-fri"),
            0x60 => f.write_str("sat,sun"),
            bits => {
                let names: Vec<&str> = (0..7)
                    .filter(|d| bits & (1 << d) != 0)
                    .map(|d| DAY_NAMES[d])
                    .collect();
                f.write_str(&names.join(","))
            }
        }
    }
}

/// A time of day in minutes after midnight, written `"HH:MM"`; `"24:00"` is the end of
/// the day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize, JsonSchema)]
#[serde(try_from = "String")]
#[schemars(with = "String")]
pub struct TimeOfDay(u16);

impl TimeOfDay {
    fn end_of_day() -> Self {
        TimeOfDay(24 * 60)
    }
}

impl TryFrom<String> for TimeOfDay {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let bad = || format!("expected a time of day \"HH:MM\" (00:00 to 24:00), got {text:?}");
        let (h, m) = text.trim().split_once(':').ok_or_else(bad)?;
        let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if m >= 60 || h > 24 || (h == 24 && m != 0) {
            return Err(bad());
        }
        Ok(TimeOfDay(h * 60 + m))
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

/// A fixed offset from UTC in minutes, written `"+HH:MM"` or `"-HH:MM"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(try_from = "String")]
#[schemars(with = "String")]
pub struct UtcOffset(i16);

impl TryFrom<String> for UtcOffset {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let bad = || format!("expected a UTC offset \"+HH:MM\" or \"-HH:MM\", got {text:?}");
        let trimmed = text.trim();
        let (sign, rest) = match trimmed.as_bytes().first() {
            Some(b'+') => (1, &trimmed[1..]),
            Some(b'-') => (-1, &trimmed[1..]),
            _ => return Err(bad()),
        };
        let (h, m) = rest.split_once(':').ok_or_else(bad)?;
        let (h, m): (i16, i16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if h > 14 || m >= 60 {
            return Err(bad());
        }
        Ok(UtcOffset(sign * (h * 60 + m)))
    }
}

impl fmt::Display for UtcOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { '-' } else { '+' };
        write!(f, "{sign}{:02}:{:02}", self.0.abs() / 60, self.0.abs() % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-05T00:00:00Z, a Monday.
    const MONDAY: i64 = 1_767_571_200_000;
    const HOUR: i64 = 3_600_000;

    fn period(text: &str) -> SchedulePeriod {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn weekday_business_hours() {
        let p = period("days = \"mon-fri\"\nfrom = \"08:00\"\nto = \"18:00\"\nmin = 5");
        assert!(!p.covers(MONDAY + 7 * HOUR + 59 * 60_000));
        assert!(p.covers(MONDAY + 8 * HOUR));
        assert!(p.covers(MONDAY + 4 * 24 * HOUR + 17 * HOUR));
        assert!(!p.covers(MONDAY + 18 * HOUR));
        assert!(!p.covers(MONDAY + 5 * 24 * HOUR + 12 * HOUR), "saturday");
        assert_eq!(p.to_string(), "mon-fri 08:00–18:00");
    }

    #[test]
    fn offsets_wrapped_ranges_and_the_largest_minimum() {
        let p = period("days = \"fri-mon\"\nmin = 2\nutc_offset = \"-05:00\"");
        // Monday 03:00 UTC is Sunday 22:00 at UTC-5.
        assert!(p.covers(MONDAY + 3 * HOUR));
        // Tuesday 03:00 UTC is Monday 22:00 at UTC-5; Wednesday 03:00 UTC is Tuesday there.
        assert!(p.covers(MONDAY + 27 * HOUR));
        assert!(!p.covers(MONDAY + 51 * HOUR));
        let periods = [period("min = 1"), period("days = \"mon\"\nmin = 4")];
        assert_eq!(scheduled_minimum(&periods, MONDAY).unwrap().min, 4);
        assert_eq!(
            scheduled_minimum(&periods, MONDAY + 24 * HOUR).unwrap().min,
            1
        );
    }

    #[test]
    fn bad_values_are_refused() {
        for text in [
            "days = \"funday\"\nmin = 1",
            "from = \"25:00\"\nmin = 1",
            "utc_offset = \"0100\"\nmin = 1",
            "min = 1\nevery = \"day\"",
        ] {
            assert!(toml::from_str::<SchedulePeriod>(text).is_err(), "{text}");
        }
        let p = period("from = \"18:00\"\nto = \"08:00\"\nmin = 1");
        let errors = p.validate("fleet[0].pool.schedule[1]");
        assert_eq!(errors[0].0, "fleet[0].pool.schedule[1].to");
    }
}
