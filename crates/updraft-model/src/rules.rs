//! Agent tags and job query rules (reference §7): an agent serves a job when every rule's key
//! is among its tags with an equal value, or the rule's value is `*` or empty.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The queue a job with no `queue` rule, or an agent with no `queue` tag, belongs to.
pub const DEFAULT_QUEUE: &str = "default";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("{field}: {value:?} is not a key=value pair (expected e.g. \"queue=linux\")")]
    NotKeyValue { field: String, value: String },
    #[error("{field}: {value:?} has an empty key (expected e.g. \"queue=linux\")")]
    EmptyKey { field: String, value: String },
}

fn split_pair<'a>(field: &str, raw: &'a str) -> Result<(&'a str, &'a str), RuleError> {
    let (key, value) = raw.split_once('=').ok_or_else(|| RuleError::NotKeyValue {
        field: field.to_string(),
        value: raw.to_string(),
    })?;
    let key = key.trim();
    if key.is_empty() {
        return Err(RuleError::EmptyKey {
            field: field.to_string(),
            value: raw.to_string(),
        });
    }
    Ok((key, value.trim()))
}

/// One `key=value` rule from a step's `agents:` map.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueryRule {
    pub key: String,
    pub value: String,
}

impl QueryRule {
    pub fn parse(field: &str, raw: &str) -> Result<Self, RuleError> {
        let (key, value) = split_pair(field, raw)?;
        Ok(QueryRule {
            key: key.to_string(),
            value: value.to_string(),
        })
    }

    /// `*` and an empty value match any agent that has the key; partial wildcards are not
    /// supported by Buildkite, so `1.9*` only matches the literal `1.9*`.
    pub fn matches_value(&self, value: &str) -> bool {
        self.value == "*" || self.value.is_empty() || self.value == value
    }
}

impl fmt::Display for QueryRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

/// A job's `agent_query_rules`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct QueryRules(pub Vec<QueryRule>);

impl QueryRules {
    pub fn parse<S: AsRef<str>>(field: &str, raw: &[S]) -> Result<Self, RuleError> {
        raw.iter()
            .enumerate()
            .map(|(i, r)| QueryRule::parse(&format!("{field}[{i}]"), r.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(QueryRules)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|r| r.key == key)
            .map(|r| r.value.as_str())
    }

    /// The queue this job targets; a job with no queue rule goes to the default queue.
    pub fn queue(&self) -> &str {
        self.get("queue")
            .filter(|q| !q.is_empty() && *q != "*")
            .unwrap_or(DEFAULT_QUEUE)
    }

    /// Whether an agent with `tags` may run a job with these rules. A job with no `queue`
    /// rule is matched as if it asked for the default queue.
    pub fn matched_by(&self, tags: &AgentTags) -> bool {
        let queue_ok = match self.get("queue") {
            Some(_) => true,
            None => tags.queue() == DEFAULT_QUEUE,
        };
        queue_ok
            && self.0.iter().all(|rule| {
                if rule.key == "queue" {
                    return rule.matches_value(tags.queue());
                }
                tags.values(&rule.key).any(|v| rule.matches_value(v))
            })
    }

    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

impl TryFrom<Vec<String>> for QueryRules {
    type Error = RuleError;
    fn try_from(raw: Vec<String>) -> Result<Self, Self::Error> {
        QueryRules::parse("agent_query_rules", &raw)
    }
}

impl From<QueryRules> for Vec<String> {
    fn from(rules: QueryRules) -> Self {
        rules.to_strings()
    }
}

impl fmt::Display for QueryRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_strings().join(","))
    }
}

/// An agent's (or a fleet's) tags: `key=value` strings, as sent in register's `meta_data`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentTags(pub Vec<(String, String)>);

impl AgentTags {
    pub fn parse<S: AsRef<str>>(field: &str, raw: &[S]) -> Result<Self, RuleError> {
        raw.iter()
            .enumerate()
            .map(|(i, r)| {
                split_pair(&format!("{field}[{i}]"), r.as_ref())
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(AgentTags)
    }

    pub fn values<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The agent's queue; an agent with no queue tag serves the default queue.
    pub fn queue(&self) -> &str {
        self.values("queue").next().unwrap_or(DEFAULT_QUEUE)
    }

    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(raw: &[&str]) -> QueryRules {
        QueryRules::parse("rules", raw).unwrap()
    }
    fn tags(raw: &[&str]) -> AgentTags {
        AgentTags::parse("tags", raw).unwrap()
    }

    #[test]
    fn every_rule_must_match() {
        let job = rules(&["queue=linux", "docker=true"]);
        assert!(job.matched_by(&tags(&["queue=linux", "docker=true", "size=large"])));
        assert!(!job.matched_by(&tags(&["queue=linux"])));
        assert!(!job.matched_by(&tags(&["queue=mac", "docker=true"])));
    }

    #[test]
    fn wildcard_and_empty_values_need_only_the_key() {
        assert!(rules(&["queue=linux", "os=*"]).matched_by(&tags(&["queue=linux", "os=any"])));
        assert!(rules(&["queue=linux", "os="]).matched_by(&tags(&["queue=linux", "os=any"])));
        assert!(!rules(&["queue=linux", "os=*"]).matched_by(&tags(&["queue=linux"])));
        assert!(!rules(&["queue=linux", "v=1.9*"]).matched_by(&tags(&["queue=linux", "v=1.9.2"])));
    }

    #[test]
    fn no_queue_rule_means_the_default_queue() {
        assert_eq!(rules(&["docker=true"]).queue(), "default");
        assert!(rules(&[]).matched_by(&tags(&[])));
        assert!(rules(&[]).matched_by(&tags(&["queue=default"])));
        assert!(!rules(&[]).matched_by(&tags(&["queue=linux"])));
    }

    #[test]
    fn malformed_rules_name_the_field() {
        let err = QueryRules::parse("steps[2].agents", &["queue"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "steps[2].agents[0]: \"queue\" is not a key=value pair (expected e.g. \"queue=linux\")"
        );
        assert!(AgentTags::parse("tags", &["=x"]).is_err());
    }

    #[test]
    fn serde_uses_plain_strings() {
        let parsed: QueryRules = serde_json::from_str(r#"["queue=a","x=*"]"#).unwrap();
        assert_eq!(
            serde_json::to_string(&parsed).unwrap(),
            r#"["queue=a","x=*"]"#
        );
        assert!(serde_json::from_str::<QueryRules>(r#"["nope"]"#).is_err());
    }
}
