//! Reading one settings value: schema check (all structural mistakes at once), then serde for
//! the typed value (a value serde still refuses is reported, dropped, and reading goes on), then
//! the type's own cross-key rules.

use crate::errors::{ConfigError, ConfigErrors, Errors, Path};
use crate::messages::translate;
use crate::schema::schema_for;
use jsonschema::error::ValidationErrorKind;
use jsonschema::paths::LocationSegment;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A settings type: its structure comes from its schema; `validate` adds the rules that span
/// several keys (e.g. `min` ≤ `max`), reported with paths under `at`.
pub trait Settings: DeserializeOwned + JsonSchema {
    fn validate(&self, at: &Path, errors: &mut Errors) {
        let _ = (at, errors);
    }
}

/// How many values serde may refuse in one piece before reading gives up on it.
const MAX_SERDE_REPAIRS: usize = 32;

/// Read `value` (found at `at`) as `T`, adding every problem to `errors`. Returns the value
/// when it could be built — with any refused key left at its default, so the caller can go on
/// checking the rest — and `None` when a required key is missing or the value's shape is
/// wrong at the top.
pub fn read<T: Settings>(value: &Value, at: &Path, errors: &mut Errors) -> Option<T> {
    let schema = schema_for::<T>();
    let validator = match jsonschema::validator_for(&schema) {
        Ok(validator) => validator,
        Err(error) => panic!("the schema of a settings type is not valid JSON Schema: {error}"),
    };
    let mut repaired = value.clone();
    let mut buildable = true;
    for error in validator.iter_errors(value) {
        let segments: Vec<LocationSegment> = error.instance_path().iter().collect();
        for (path, message) in translate(&error, &schema, value, at) {
            errors.push(&path, message);
        }
        match error.kind() {
            ValidationErrorKind::Required { .. } => buildable = false,
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                if let Some(Value::Object(map)) = locate_mut(&mut repaired, &segments) {
                    for key in unexpected {
                        map.remove(key);
                    }
                }
            }
            _ if segments.is_empty() => buildable = false,
            _ => remove(&mut repaired, &segments),
        }
    }
    if !buildable {
        return None;
    }
    let structural = repaired != *value;
    for _ in 0..MAX_SERDE_REPAIRS {
        match serde_path_to_error::deserialize::<_, T>(&repaired) {
            Ok(typed) => {
                typed.validate(at, errors);
                return Some(typed);
            }
            Err(error) => {
                let (path, pointer) = serde_path(at, error.path());
                let message = error.inner().to_string();
                let missing = message.starts_with("missing field");
                // The schema names every missing key, so "missing" here is a key refused
                // above and removed: reported already, and without it the value cannot be built.
                if !(missing && (structural || repaired != *value)) {
                    errors.push(&path, clean(&message));
                }
                if missing || pointer.is_empty() {
                    return None;
                }
                remove(&mut repaired, &pointer);
            }
        }
    }
    None
}

/// Parse TOML text into the JSON value reading works on; a syntax error is one problem at
/// `(file)`.
pub fn read_toml_text(text: &str) -> Result<Value, ConfigErrors> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        ConfigErrors(vec![ConfigError {
            path: "(file)".into(),
            message: format!("not valid TOML: {}", e.message().trim()),
        }])
    })?;
    Ok(to_json(toml::Value::Table(table)))
}

/// TOML to JSON, dates as strings (no setting takes a date).
pub fn to_json(value: toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => Value::from(f),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.into_iter().map(to_json).collect()),
        toml::Value::Table(table) => {
            Value::Object(table.into_iter().map(|(k, v)| (k, to_json(v))).collect())
        }
    }
}

fn locate_mut<'v>(value: &'v mut Value, segments: &[LocationSegment]) -> Option<&'v mut Value> {
    segments
        .iter()
        .try_fold(value, |node, segment| match segment {
            LocationSegment::Property(key) => node.get_mut(key.as_ref()),
            LocationSegment::Index(i) => node.get_mut(*i),
        })
}

/// Drop the value at `segments` (an array item is replaced by nothing only when it is an
/// object key; items are removed from the array).
fn remove(value: &mut Value, segments: &[LocationSegment]) {
    let Some((last, parent)) = segments.split_last() else {
        return;
    };
    match (locate_mut(value, parent), last) {
        (Some(Value::Object(map)), LocationSegment::Property(key)) => {
            map.remove(key.as_ref());
        }
        (Some(Value::Array(items)), LocationSegment::Index(i)) if *i < items.len() => {
            items.remove(*i);
        }
        _ => {}
    }
}

/// serde_path_to_error's path as a settings path and as segments to remove.
fn serde_path(
    at: &Path,
    path: &serde_path_to_error::Path,
) -> (Path, Vec<LocationSegment<'static>>) {
    use serde_path_to_error::Segment;
    let mut shown = at.clone();
    let mut pointer = Vec::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => {
                shown = shown.index(*index);
                pointer.push(LocationSegment::Index(*index));
            }
            Segment::Map { key } => {
                shown = shown.key(key);
                pointer.push(LocationSegment::Property(key.clone().into()));
            }
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    (shown, pointer)
}

/// serde's wording, made to read like ours.
fn clean(message: &str) -> String {
    message
        .replace("invalid type: ", "")
        .replace("invalid value: ", "")
        .replace("missing field `", "missing required key `")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Duration;
    use schemars::JsonSchema;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Fleet {
        /// The fleet's name.
        name: String,
        queue: String,
        #[serde(default = "ten")]
        #[schemars(range(min = 1))]
        max_in_flight: u32,
        #[serde(default)]
        mode: Mode,
        pending_deadline: Option<Duration>,
        #[serde(default)]
        template: Template,
    }

    #[derive(Debug, Default, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Template {
        #[serde(default)]
        command: Vec<String>,
    }

    #[derive(Debug, Default, Deserialize, JsonSchema, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        /// One agent per job.
        #[default]
        Acquire,
        /// Updraft runs the command.
        Relay,
    }

    fn ten() -> u32 {
        10
    }

    impl Settings for Fleet {
        fn validate(&self, at: &Path, errors: &mut Errors) {
            if self.name == self.queue {
                errors.push(&at.key("name"), "must differ from queue (a test rule)");
            }
        }
    }

    fn read_fleet(value: Value) -> (Option<Fleet>, Vec<String>) {
        let mut errors = Errors::new();
        let fleet = read::<Fleet>(&value, &Path::root().key("fleet").index(0), &mut errors);
        (
            fleet,
            errors.into_vec().iter().map(ToString::to_string).collect(),
        )
    }

    #[test]
    fn a_good_value_reads_with_defaults() {
        let (fleet, errors) = read_fleet(serde_json::json!({
            "name": "a", "queue": "q", "pending_deadline": 90, "template": {"command": ["sh"]}
        }));
        assert!(errors.is_empty(), "{errors:?}");
        let fleet = fleet.unwrap();
        assert_eq!((fleet.max_in_flight, fleet.mode), (10, Mode::Acquire));
        assert_eq!(fleet.pending_deadline, Some(Duration::from_secs(90)));
        assert_eq!(fleet.template.command, ["sh"]);
    }

    #[test]
    fn every_structural_mistake_is_reported_at_once() {
        let (fleet, errors) = read_fleet(serde_json::json!({
            "max_in_flight": 0,
            "mode": "pool",
            "colour": "red",
            "pending_deadline": "soon",
            "template": {"command": "sh", "extra": 1},
        }));
        assert!(fleet.is_none());
        for expected in [
            "fleet[0].name: missing; it is required",
            "fleet[0].queue: missing; it is required",
            "fleet[0].max_in_flight: expected at least 1, got the integer 0",
            "fleet[0].mode: expected \"acquire\" or \"relay\", got the string \"pool\"",
            "fleet[0].colour: unknown key",
            "fleet[0].template.extra: unknown key",
            "fleet[0].template.command: expected an array of strings, got the string \"sh\"",
        ] {
            assert!(
                errors.iter().any(|e| e == expected),
                "missing {expected:?} in {errors:#?}"
            );
        }
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("fleet[0].pending_deadline: expected a duration")),
            "{errors:#?}"
        );
    }

    #[test]
    fn a_value_only_serde_refuses_is_reported_and_the_rest_still_checked() {
        let (fleet, errors) = read_fleet(serde_json::json!({
            "name": "same", "queue": "same", "pending_deadline": "5 fortnights"
        }));
        assert!(fleet.is_some());
        assert_eq!(
            errors,
            vec![
                "fleet[0].pending_deadline: expected a duration like \"90s\", \"5m\", \"2h\" or \"7d\" (or whole seconds), at most 100 years, got \"5 fortnights\"".to_string(),
                "fleet[0].name: must differ from queue (a test rule)".to_string(),
            ]
        );
    }

    // The fields exist for serde and the schema; the test reads only the errors.
    #[allow(dead_code)]
    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Pool {
        policy: Policy,
    }

    #[allow(dead_code)]
    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
    enum Policy {
        /// Scale like an HPA.
        Hpa {
            #[serde(default)]
            #[schemars(range(min = 1))]
            scale_up_pods: u32,
        },
        /// Updraft's own.
        Updraft {
            #[serde(default)]
            quantile: f64,
        },
    }

    impl Settings for Pool {}

    #[test]
    fn a_tagged_table_s_mistakes_are_named_at_their_own_keys() {
        let read_pool = |policy: Value| {
            let mut errors = Errors::new();
            read::<Pool>(
                &serde_json::json!({ "policy": policy }),
                &Path::root().key("pool"),
                &mut errors,
            );
            errors
                .into_vec()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            read_pool(serde_json::json!({"kind": "hpa", "scale_up_podz": 4, "scale_up_pods": 0})),
            [
                "pool.policy.scale_up_pods: expected at least 1, got the integer 0",
                "pool.policy.scale_up_podz: unknown key (did you mean `scale_up_pods`?)",
            ]
        );
        assert_eq!(
            read_pool(serde_json::json!({"kind": "keda"})),
            ["pool.policy.kind: expected \"hpa\" or \"updraft\", got the string \"keda\""]
        );
        assert_eq!(
            read_pool(serde_json::json!({"quantile": 0.5})),
            ["pool.policy.kind: missing; it is required"]
        );
    }

    #[test]
    fn toml_syntax_errors_are_one_problem_for_the_file() {
        let errors = read_toml_text("a = ").unwrap_err();
        assert_eq!(errors.0[0].path, "(file)");
        assert!(errors.0[0].message.starts_with("not valid TOML"));
    }
}
