//! Label and field selectors with Kubernetes' query-string syntax: `a=b,c!=d,e in (x,y),
//! f notin (z),g,!h,n>3` for labels; `metadata.name=x,status.phase!=Running` for fields.

use crate::error::ApiError;
use crate::resource::Resource;
use crate::validation;
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    GreaterThan(i64),
    LessThan(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    operator: Operator,
    values: Vec<String>,
}

impl Requirement {
    fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let value = labels
            .and_then(|l| l.get(&self.key))
            .and_then(Value::as_str);
        match (&self.operator, value) {
            (Operator::In, Some(v)) => self.values.iter().any(|want| want == v),
            (Operator::In, None) => false,
            (Operator::NotIn, Some(v)) => !self.values.iter().any(|want| want == v),
            (Operator::NotIn, None) => true,
            (Operator::Exists, found) => found.is_some(),
            (Operator::DoesNotExist, found) => found.is_none(),
            (Operator::GreaterThan(n), Some(v)) => v.parse::<i64>().is_ok_and(|v| v > *n),
            (Operator::LessThan(n), Some(v)) => v.parse::<i64>().is_ok_and(|v| v < *n),
            (Operator::GreaterThan(_) | Operator::LessThan(_), None) => false,
        }
    }
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parses the `labelSelector` query parameter.
    pub fn parse(text: &str) -> Result<LabelSelector, ApiError> {
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            requirements.push(parse_requirement(part).map_err(|why| {
                ApiError::bad_request(format!("unable to parse requirement: {why}"))
            })?);
        }
        Ok(LabelSelector { requirements })
    }

    /// Whether an object with these labels is selected.
    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

/// Splits on commas that are not inside `( )`.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_requirement(text: &str) -> Result<Requirement, String> {
    if let Some(key) = text.strip_prefix('!') {
        let key = key.trim();
        check_key(key)?;
        return Ok(Requirement {
            key: key.into(),
            operator: Operator::DoesNotExist,
            values: vec![],
        });
    }
    let key_end = text
        .find(|c: char| c.is_whitespace() || "=!<>(".contains(c))
        .unwrap_or(text.len());
    let key = &text[..key_end];
    check_key(key)?;
    let rest = text[key_end..].trim_start();
    let requirement = |operator, values| Requirement {
        key: key.into(),
        operator,
        values,
    };
    if rest.is_empty() {
        return Ok(requirement(Operator::Exists, vec![]));
    }
    for (token, negated) in [("!=", true), ("==", false), ("=", false)] {
        if let Some(value) = rest.strip_prefix(token) {
            let value = value.trim();
            check_value(value)?;
            let operator = if negated {
                Operator::NotIn
            } else {
                Operator::In
            };
            return Ok(requirement(operator, vec![value.into()]));
        }
    }
    for (token, greater) in [(">", true), ("<", false)] {
        if let Some(value) = rest.strip_prefix(token) {
            let value = value.trim();
            let n: i64 = value.parse().map_err(|_| {
                format!("for 'Gt', 'Lt' operators, the value must be an integer: {value:?}")
            })?;
            let operator = if greater {
                Operator::GreaterThan(n)
            } else {
                Operator::LessThan(n)
            };
            return Ok(requirement(operator, vec![value.into()]));
        }
    }
    for (word, operator) in [("notin", Operator::NotIn), ("in", Operator::In)] {
        if let Some(after) = rest.strip_prefix(word) {
            let after = after.trim_start();
            let Some(inner) = after.strip_prefix('(').and_then(|s| s.strip_suffix(')')) else {
                return Err(format!(
                    "found '{after}', expected: '(' with a set of values and ')'"
                ));
            };
            let values = inner
                .split(',')
                .map(|v| v.trim().to_string())
                .collect::<Vec<_>>();
            for value in &values {
                check_value(value)?;
            }
            return Ok(requirement(operator, values));
        }
    }
    Err(format!(
        "found '{rest}', expected: in, notin, =, ==, !=, gt, lt"
    ))
}

fn check_key(key: &str) -> Result<(), String> {
    validation::label_key_problems(key)
        .into_iter()
        .next()
        .map_or(Ok(()), |problem| {
            Err(format!("key: Invalid value: {key:?}: {problem}"))
        })
}

fn check_value(value: &str) -> Result<(), String> {
    validation::label_value_problems(value)
        .into_iter()
        .next()
        .map_or(Ok(()), |problem| {
            Err(format!("values[0]: Invalid value: {value:?}: {problem}"))
        })
}

/// A parsed field selector over the fields a resource supports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

impl FieldSelector {
    /// Parses the `fieldSelector` query parameter, refusing fields the real server refuses.
    pub fn parse(text: &str, resource: Resource) -> Result<FieldSelector, ApiError> {
        let mut terms = Vec::new();
        for part in split_unescaped(text, ',') {
            if part.is_empty() {
                continue;
            }
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{text}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            if !supported_fields(resource).contains(&field) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            terms.push((field.to_string(), equal, unescape(value.trim())));
        }
        Ok(FieldSelector { terms })
    }

    /// Whether this selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Whether the object is selected.
    pub fn matches(&self, object: &Value) -> bool {
        self.terms
            .iter()
            .all(|(field, equal, want)| (field_value(object, field) == *want) == *equal)
    }
}

fn split_unescaped(text: &str, separator: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut escaped = false;
    for c in text.chars() {
        match c {
            _ if escaped => {
                parts.last_mut().expect("never empty").extend(['\\', c]);
                escaped = false;
            }
            '\\' => escaped = true,
            c if c == separator => parts.push(String::new()),
            c => parts.last_mut().expect("never empty").push(c),
        }
    }
    parts
}

fn unescape(text: &str) -> String {
    let mut out = String::new();
    let mut escaped = false;
    for c in text.chars() {
        if escaped || c != '\\' {
            out.push(c);
            escaped = false;
        } else {
            escaped = true;
        }
    }
    out
}

/// The fields each resource can be selected on, as the real API server registers them.
fn supported_fields(resource: Resource) -> &'static [&'static str] {
    match resource {
        Resource::Pods => &[
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        Resource::Events => &[
            "metadata.name",
            "metadata.namespace",
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        Resource::Secrets => &["metadata.name", "metadata.namespace", "type"],
        Resource::Namespaces => &["metadata.name", "status.phase"],
        Resource::Jobs => &["metadata.name", "metadata.namespace", "status.successful"],
        Resource::PodTemplates | Resource::Leases => &["metadata.name", "metadata.namespace"],
    }
}

/// A field's value as the server compares it: absent fields are the empty string.
fn field_value(object: &Value, field: &str) -> String {
    let pointer = match field {
        "source" => "/source/component".to_string(),
        "status.successful" => "/status/succeeded".to_string(),
        other => format!("/{}", other.replace('.', "/")),
    };
    match object.pointer(&pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ if field == "spec.hostNetwork" => "false".into(),
        _ if field == "status.successful" => "0".into(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn label_selector_operators() {
        let l = labels(json!({"app": "web", "tier": "front", "n": "5"}));
        let yes = [
            "app=web",
            "app==web",
            "app!=db",
            "app in (web, db)",
            "tier notin (back)",
            "app",
            "!missing",
            "n>3",
            "n<6",
            "app=web,tier=front",
            "",
        ];
        for s in yes {
            assert!(LabelSelector::parse(s).unwrap().matches(Some(&l)), "{s}");
        }
        let no = [
            "app=db",
            "app!=web",
            "app in (db)",
            "missing",
            "!app",
            "n>5",
            "missing!=x",
        ];
        for s in no.iter().take(6) {
            assert!(!LabelSelector::parse(s).unwrap().matches(Some(&l)), "{s}");
        }
        assert!(LabelSelector::parse("missing!=x")
            .unwrap()
            .matches(Some(&l)));
    }

    #[test]
    fn bad_label_selectors_are_bad_requests() {
        for s in ["app=a b", "app in web", "a~b", "-bad=x"] {
            let err = LabelSelector::parse(s).unwrap_err();
            assert_eq!((err.code, err.reason), (400, "BadRequest"), "{s}");
        }
    }

    #[test]
    fn field_selectors_on_supported_fields() {
        let pod =
            json!({"metadata": {"name": "p", "namespace": "n"}, "status": {"phase": "Running"}});
        let s =
            FieldSelector::parse("metadata.name=p,status.phase!=Pending", Resource::Pods).unwrap();
        assert!(s.matches(&pod));
        assert!(FieldSelector::parse("spec.nodeName=", Resource::Pods)
            .unwrap()
            .matches(&pod));
        let err = FieldSelector::parse("spec.foo=x", Resource::Pods).unwrap_err();
        assert_eq!(err.message, "field label not supported: spec.foo");
    }
}
