//! Turning a schema violation into a line a person can act on: the key's path, what was
//! expected (in words, from the schema's `x-expected`, its type, its allowed values or its
//! bounds) and what was found.

use crate::errors::Path;
use crate::schema::EXPECTED;
use jsonschema::error::ValidationErrorKind;
use jsonschema::paths::LocationSegment;
use jsonschema::ValidationError;
use serde_json::Value;

/// The lines for one violation (an object with two unknown keys gives two lines).
pub(crate) fn translate(
    error: &ValidationError,
    schema: &Value,
    instance_root: &Value,
    at: &Path,
) -> Vec<(Path, String)> {
    let mut path = at.clone();
    for segment in error.instance_path().iter() {
        path = match segment {
            LocationSegment::Property(key) => path.key(&key),
            LocationSegment::Index(i) => path.index(i),
        };
    }
    let found = instance_root
        .pointer(error.instance_path().as_str())
        .map(describe)
        .unwrap_or_else(|| "nothing".into());
    // The subschema holding the failed keyword: its keyword location minus the keyword.
    let keyword_location = error.schema_path().as_str();
    let subschema = keyword_location
        .rfind('/')
        .and_then(|cut| schema.pointer(&keyword_location[..cut]))
        .unwrap_or(schema);
    let expected_words = subschema.get(EXPECTED).and_then(Value::as_str);
    let expected = |fallback: String| expected_words.map(str::to_string).unwrap_or(fallback);
    match error.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => unexpected
            .iter()
            .map(|key| (path.key(key), unknown_key(key, subschema)))
            .collect(),
        ValidationErrorKind::Required { property } => {
            let key = property.as_str().unwrap_or_default();
            vec![(path.key(key), "missing; it is required".to_string())]
        }
        ValidationErrorKind::Type { .. } => {
            vec![(
                path,
                format!("expected {}, got {found}", expected(type_words(subschema))),
            )]
        }
        ValidationErrorKind::Enum { options } => {
            vec![(
                path,
                format!("expected {}, got {found}", expected(choices(options))),
            )]
        }
        ValidationErrorKind::OneOfNotValid { .. } | ValidationErrorKind::AnyOf { .. }
            if tagged_branches(subschema).is_some() =>
        {
            let instance = instance_root
                .pointer(error.instance_path().as_str())
                .unwrap_or(&Value::Null);
            tagged(subschema, instance, &path)
                .unwrap_or_else(|| vec![(path, format!("expected a table, got {found}"))])
        }
        ValidationErrorKind::OneOfNotValid { .. } | ValidationErrorKind::AnyOf { .. } => {
            let consts = alternatives(subschema);
            let words = if consts.is_empty() {
                "one of the allowed forms".to_string()
            } else {
                choices(&Value::Array(consts))
            };
            vec![(path, format!("expected {}, got {found}", expected(words)))]
        }
        ValidationErrorKind::Minimum { limit }
        | ValidationErrorKind::ExclusiveMinimum { limit } => {
            vec![(
                path,
                format!(
                    "expected {}, got {found}",
                    expected(format!("at least {limit}"))
                ),
            )]
        }
        ValidationErrorKind::Maximum { limit }
        | ValidationErrorKind::ExclusiveMaximum { limit } => {
            vec![(
                path,
                format!(
                    "expected {}, got {found}",
                    expected(format!("at most {limit}"))
                ),
            )]
        }
        ValidationErrorKind::Pattern { pattern } => {
            vec![(
                path,
                format!(
                    "expected {}, got {found}",
                    expected(format!("text matching {pattern}"))
                ),
            )]
        }
        ValidationErrorKind::MinLength { limit: 1 } => {
            vec![(
                path,
                format!(
                    "expected {}, got {found}",
                    expected("a non-empty string".into())
                ),
            )]
        }
        ValidationErrorKind::MinLength { limit } => vec![(
            path,
            format!(
                "expected {}, got {found}",
                expected(format!("at least {limit} characters"))
            ),
        )],
        ValidationErrorKind::MaxLength { limit } => vec![(
            path,
            format!(
                "expected {}, got {found}",
                expected(format!("at most {limit} characters"))
            ),
        )],
        ValidationErrorKind::MinItems { limit } => vec![(
            path,
            format!(
                "expected {}, got {found}",
                expected(format!("at least {limit} item(s)"))
            ),
        )],
        _ => vec![(path, error.to_string())],
    }
}

fn unknown_key(key: &str, subschema: &Value) -> String {
    let known: Vec<&str> = subschema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    match known.iter().find(|k| close(k, key)) {
        Some(near) => format!("unknown key (did you mean `{near}`?)"),
        None => "unknown key".into(),
    }
}

/// Two keys a typo apart: one edit, or the same letters swapped.
fn close(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a == b || a.len().abs_diff(b.len()) > 1 {
        return false;
    }
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let (ra, rb) = (&a[prefix..], &b[prefix..]);
    match (ra.len(), rb.len()) {
        (1, 0) | (0, 1) => true,
        (x, y) if x == y => {
            ra[1..] == rb[1..] || (x >= 2 && ra[0] == rb[1] && ra[1] == rb[0] && ra[2..] == rb[2..])
        }
        (x, y) if x > y => ra[1..] == *rb,
        _ => rb[1..] == *ra,
    }
}

/// `"the string \"x\""`, `"the integer 5"`, `"a table"`.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("the string {s:?}"),
        Value::Number(n) if n.is_f64() => format!("the number {n}"),
        Value::Number(n) => format!("the integer {n}"),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "a table".into(),
        Value::Null => "nothing".into(),
    }
}

/// What a subschema's `type` asks for, in words.
pub(crate) fn type_words(subschema: &Value) -> String {
    let types: Vec<&str> = match subschema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ => Vec::new(),
    };
    let words: Vec<String> = types
        .iter()
        .map(|t| match *t {
            "string" => "a string".to_string(),
            "integer" => "an integer".into(),
            "number" => "a number".into(),
            "boolean" => "true or false".into(),
            "array" => match subschema.get("items").map(type_words) {
                Some(items) if !items.is_empty() => {
                    format!("an array of {}", plural(&items))
                }
                _ => "an array".into(),
            },
            "object" => match subschema.get("additionalProperties").map(type_words) {
                Some(values) if !values.is_empty() && subschema.get("properties").is_none() => {
                    format!("a table of {}", plural(&values))
                }
                _ => "a table".into(),
            },
            other => other.to_string(),
        })
        .collect();
    join_or(&words)
}

fn plural(words: &str) -> String {
    words
        .trim_start_matches("a ")
        .trim_start_matches("an ")
        .replace("string", "strings")
        .replace("integer", "integers")
        .replace("table", "tables")
}

/// A `oneOf` of tables told apart by one key's constant (serde's internally tagged enums,
/// `{ kind = "hpa", … }`): that key, and each branch with its tag.
fn tagged_branches(subschema: &Value) -> Option<(String, Vec<(&Value, &Value)>)> {
    let branches = subschema
        .get("oneOf")
        .or_else(|| subschema.get("anyOf"))?
        .as_array()?;
    let first = branches.first()?.get("properties")?.as_object()?;
    let key = first.iter().find(|(_, p)| p.get("const").is_some())?.0;
    let tags = branches
        .iter()
        .map(|branch| Some((branch.get("properties")?.get(key)?.get("const")?, branch)))
        .collect::<Option<Vec<_>>>()?;
    Some((key.clone(), tags))
}

/// A tagged table's mistakes, each at its own key: checked against the branch its tag names,
/// or the tag itself when it names none.
fn tagged(subschema: &Value, instance: &Value, path: &Path) -> Option<Vec<(Path, String)>> {
    let (key, branches) = tagged_branches(subschema)?;
    let table = instance.as_object()?;
    let Some(tag) = table.get(&key) else {
        return Some(vec![(path.key(&key), "missing; it is required".into())]);
    };
    let Some((_, branch)) = branches.iter().find(|(t, _)| *t == tag) else {
        let tags = Value::Array(branches.iter().map(|(t, _)| (*t).clone()).collect());
        return Some(vec![(
            path.key(&key),
            format!("expected {}, got {}", choices(&tags), describe(tag)),
        )]);
    };
    let validator = jsonschema::validator_for(branch).ok()?;
    let lines: Vec<(Path, String)> = validator
        .iter_errors(instance)
        .flat_map(|error| translate(&error, branch, instance, path))
        .collect();
    (!lines.is_empty()).then_some(lines)
}

/// The constant values of a `oneOf`/`anyOf` (documented enum variants).
pub(crate) fn alternatives(subschema: &Value) -> Vec<Value> {
    ["oneOf", "anyOf"]
        .iter()
        .filter_map(|k| subschema.get(*k).and_then(Value::as_array))
        .flatten()
        .filter_map(|alt| {
            alt.get("const").cloned().or_else(|| {
                alt.get("enum")
                    .and_then(Value::as_array)
                    .and_then(|e| e.first().cloned())
            })
        })
        .collect()
}

/// `"a" or "b"`, `one of "a", "b" or "c"`.
pub(crate) fn choices(options: &Value) -> String {
    let items: Vec<String> = options
        .as_array()
        .map(|a| a.iter().map(|v| v.to_string()).collect())
        .unwrap_or_default();
    match items.len() {
        0 => "an allowed value".into(),
        1 | 2 => join_or(&items),
        _ => format!("one of {}", join_or(&items)),
    }
}

fn join_or(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_are_one_edit_or_one_swap() {
        assert!(close("queue", "queu"));
        assert!(!close("queue", "qeueu"));
        assert!(close("backend", "bakcend"));
        assert!(close("max_in_flight", "max_in_fligt"));
        assert!(!close("name", "queue"));
    }

    #[test]
    fn values_and_types_read_as_words() {
        assert_eq!(describe(&serde_json::json!("x")), "the string \"x\"");
        assert_eq!(
            type_words(&serde_json::json!({"type": "array", "items": {"type": "string"}})),
            "an array of strings"
        );
        assert_eq!(
            choices(&serde_json::json!(["a", "b", "c"])),
            "one of \"a\", \"b\" or \"c\""
        );
    }
}
