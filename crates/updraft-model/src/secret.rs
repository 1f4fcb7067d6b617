//! `Secret`: a token or password whose `Debug` and `Display` never show the value, so a log
//! line, error or panic message cannot leak it. Read it with `expose()` at the one place it
//! goes on the wire.

use serde::{Deserialize, Deserializer};
use std::fmt;

#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// What logs may show: Buildkite's public token prefix (`bkaj_`, `bkct_`, …) if present.
    pub fn redacted(&self) -> String {
        match self.0.split_once('_') {
            Some((prefix, _))
                if prefix.len() <= 5 && prefix.chars().all(|c| c.is_ascii_alphabetic()) =>
            {
                format!("{prefix}_[redacted]")
            }
            _ if self.0.is_empty() => "[empty]".to_string(),
            _ => "[redacted]".to_string(),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.redacted())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_string())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("bkaj_supersecretvalue");
        assert_eq!(format!("{s}"), "bkaj_[redacted]");
        assert_eq!(format!("{s:?}"), "Secret(bkaj_[redacted])");
        assert!(!format!("{:?}", Some(&s)).contains("supersecret"));
        assert_eq!(Secret::new("hunter2").to_string(), "[redacted]");
        assert_eq!(s.expose(), "bkaj_supersecretvalue");
    }
}
