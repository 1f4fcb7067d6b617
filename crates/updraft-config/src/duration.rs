//! `Duration`: how every setting that is a span of time is written — `"90s"`, `"5m"`,
//! `"1h30m"`, `"7d"`, `"1500ms"` (humantime's grammar) or a whole number of seconds — and how
//! it is described in the schema, so a wrong value is named with what was expected.

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;

/// The longest span any setting accepts: sums and millisecond conversions of durations up to
/// this cannot overflow.
pub const MAX: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 24 * 3600);

/// A positive span of time, at most 100 years.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Duration {
        Duration(std::time::Duration::from_secs(secs))
    }

    pub const fn from_millis(ms: u64) -> Duration {
        Duration(std::time::Duration::from_millis(ms))
    }

    pub fn get(self) -> std::time::Duration {
        self.0
    }

    /// Parse `"90s"`, `"5m"`, `"1h30m"`, `"7d"`, `"1500ms"`; positive and at most 100 years.
    pub fn parse(raw: &str) -> Result<Duration, String> {
        let parsed = humantime::parse_duration(raw.trim()).map_err(|e| e.to_string())?;
        Duration::checked(parsed)
    }

    fn checked(value: std::time::Duration) -> Result<Duration, String> {
        if value.is_zero() {
            Err("a duration must be longer than zero".into())
        } else if value > MAX {
            Err("a duration must be at most 100 years".into())
        } else {
            Ok(Duration(value))
        }
    }
}

impl From<Duration> for std::time::Duration {
    fn from(value: Duration) -> Self {
        value.0
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u64),
            Text(String),
        }
        let expected = || format!("expected {EXPECTED_DURATION}");
        match Raw::deserialize(deserializer).map_err(|_| serde::de::Error::custom(expected()))? {
            Raw::Seconds(secs) => Duration::checked(std::time::Duration::from_secs(secs)),
            Raw::Text(text) => {
                Duration::parse(&text).map_err(|_| format!("{}, got {text:?}", expected()))
            }
        }
        .map_err(serde::de::Error::custom)
    }
}

/// What a duration looks like, in error messages and the reference.
pub const EXPECTED_DURATION: &str =
    "a duration like \"90s\", \"5m\", \"2h\" or \"7d\" (or whole seconds), at most 100 years";

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": ["string", "integer"],
            "pattern": r"^\s*([0-9]+\s*[a-zA-Zµ]+\s*)+$",
            "minimum": 1,
            "x-expected": EXPECTED_DURATION,
            "x-kind": "duration",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(Duration::parse("90s").unwrap().get().as_secs(), 90);
        assert_eq!(Duration::parse("5m").unwrap().get().as_secs(), 300);
        assert_eq!(Duration::parse("1h30m").unwrap().get().as_secs(), 5400);
        assert_eq!(Duration::parse("1500ms").unwrap().get().as_millis(), 1500);
        assert_eq!(
            Duration::parse("7d").unwrap().get().as_secs(),
            7 * 24 * 3600
        );
        assert!(Duration::parse("0s").is_err());
        assert!(Duration::parse("36501d").is_err());
        assert!(Duration::parse("soon").is_err());
    }

    #[test]
    fn whole_seconds_are_accepted_and_zero_is_not() {
        let d: Duration = serde_json::from_str("30").unwrap();
        assert_eq!(d.get().as_secs(), 30);
        assert!(serde_json::from_str::<Duration>("0").is_err());
        let shown = serde_json::to_string(&Duration::from_secs(5400)).unwrap();
        assert_eq!(shown, "\"1h 30m\"");
    }
}
