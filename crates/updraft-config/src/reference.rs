//! The reference of every key, rendered as Markdown from the same schemas reading checks
//! against: one table per section (`[buildkite]`, `[[fleet]]`, `[fleet.template]`), each key
//! with what it takes, its default and its doc comment.

use crate::messages::{alternatives, choices, type_words};
use serde_json::Value;
use std::fmt::Write;

/// A reference document, built section by section.
pub struct Reference {
    out: String,
}

impl Reference {
    /// Start a document with a title and an opening paragraph.
    pub fn new(title: &str, intro: &str) -> Reference {
        Reference {
            out: format!("# {title}\n\n{}\n", intro.trim()),
        }
    }

    /// A free paragraph between sections.
    pub fn paragraph(&mut self, text: &str) {
        let _ = write!(self.out, "\n{}\n", text.trim());
    }

    /// The section `heading` (`[buildkite]`, `[[fleet]]`) holding the keys of `schema`, then
    /// a subsection for each nested table (`[fleet.template]`).
    pub fn section(&mut self, heading: &str, schema: &Value) {
        let name = heading.trim_matches(|c| c == '[' || c == ']');
        self.section_at(heading, name, schema);
    }

    fn section_at(&mut self, heading: &str, name: &str, schema: &Value) {
        let _ = write!(self.out, "\n## `{heading}`\n\n");
        if let Some(text) = schema.get("description").and_then(Value::as_str) {
            let _ = write!(self.out, "{}\n\n", one_paragraph(text));
        }
        let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
            self.out.push_str("No keys.\n");
            return;
        };
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        self.out
            .push_str("| key | takes | default | what it does |\n|---|---|---|---|\n");
        let mut nested = Vec::new();
        for (key, property) in properties {
            let default = if required.contains(&key.as_str()) {
                "**required**".to_string()
            } else {
                property
                    .get("default")
                    .filter(|d| !d.is_null())
                    .map(|d| format!("`{}`", shown(d)))
                    .unwrap_or_else(|| "—".into())
            };
            let takes = match table_kind(property) {
                Some(TableKind::Table(inner)) => {
                    nested.push((format!("[{name}.{key}]"), format!("{name}.{key}"), inner));
                    format!(
                        "table, see [`[{name}.{key}]`](#{})",
                        anchor(&format!("[{name}.{key}]"))
                    )
                }
                Some(TableKind::Array(inner)) => {
                    nested.push((format!("[[{name}.{key}]]"), format!("{name}.{key}"), inner));
                    format!(
                        "array of tables, see [`[[{name}.{key}]]`](#{})",
                        anchor(&format!("[[{name}.{key}]]"))
                    )
                }
                None => takes(property),
            };
            let description = property
                .get("description")
                .and_then(Value::as_str)
                .map(one_paragraph)
                .unwrap_or_default();
            let _ = writeln!(
                self.out,
                "| `{key}` | {} | {} | {} |",
                cell(&takes),
                cell(&default),
                cell(&(description + &variant_notes(property)))
            );
        }
        for (heading, name, schema) in nested {
            self.section_at(&heading, &name, &schema);
        }
    }

    pub fn render(self) -> String {
        self.out
    }
}

enum TableKind {
    Table(Value),
    Array(Value),
}

/// A property that is itself a table of known keys (its own section), or an array of them.
fn table_kind(property: &Value) -> Option<TableKind> {
    let direct = |v: &Value| v.get("properties").is_some().then(|| v.clone());
    if let Some(inner) = direct(property) {
        return Some(TableKind::Table(inner));
    }
    if let Some(inner) = property.get("items").and_then(direct) {
        return Some(TableKind::Array(inner));
    }
    // `Option<Table>` comes as anyOf [table, null].
    property
        .get("anyOf")
        .and_then(Value::as_array)
        .and_then(|alts| alts.iter().find_map(direct))
        .map(TableKind::Table)
}

fn takes(property: &Value) -> String {
    if property.get("x-kind").and_then(Value::as_str) == Some("duration") {
        return "duration (`\"90s\"`, `\"5m\"`, `\"2h\"`, `\"7d\"`)".into();
    }
    if let Some(options) = property.get("enum") {
        return choices(options);
    }
    let consts = alternatives(property);
    if !consts.is_empty() {
        return choices(&Value::Array(consts));
    }
    let mut words = type_words(property);
    if words.is_empty() {
        words = "a table".into();
    }
    match (property.get("minimum"), property.get("maximum")) {
        (Some(min), Some(max)) => format!("{words}, {min} … {max}"),
        (Some(min), None) if min.as_u64() != Some(0) => format!("{words} ≥ {min}"),
        (None, Some(max)) => format!("{words} ≤ {max}"),
        _ => words,
    }
}

/// What each documented enum value means.
fn variant_notes(property: &Value) -> String {
    let notes: Vec<String> = ["oneOf", "anyOf"]
        .iter()
        .filter_map(|k| property.get(*k).and_then(Value::as_array))
        .flatten()
        .filter_map(|alt| {
            let value = alt.get("const")?;
            let text = alt.get("description").and_then(Value::as_str)?;
            Some(format!("`{}`: {}", shown(value), one_paragraph(text)))
        })
        .collect();
    if notes.is_empty() {
        String::new()
    } else {
        format!(" {}", notes.join(" "))
    }
}

fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// Doc comments wrap at 100 columns; a table cell wants one line.
fn one_paragraph(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// GitHub's heading anchor for `## \`[fleet.template]\``.
fn anchor(heading: &str) -> String {
    heading
        .chars()
        .filter_map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '_' => Some(c),
            'A'..='Z' => Some(c.to_ascii_lowercase()),
            ' ' => Some('-'),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{schema_for, Duration};
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    /// A fleet.
    #[derive(Deserialize, Serialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Fleet {
        /// Its name.
        name: String,
        /// How long to wait.
        #[serde(default = "minute")]
        wait: Duration,
        /// What to run.
        #[serde(default)]
        template: Template,
    }

    #[derive(Default, Deserialize, Serialize, JsonSchema)]
    struct Template {
        /// The program.
        #[serde(default)]
        command: Vec<String>,
    }

    fn minute() -> Duration {
        Duration::from_secs(60)
    }

    #[test]
    fn sections_list_each_key_with_its_type_default_and_doc() {
        let mut reference = Reference::new("Settings", "All of them.");
        reference.section("[[fleet]]", &schema_for::<Fleet>());
        let text = reference.render();
        assert!(text.contains("## `[[fleet]]`"), "{text}");
        assert!(
            text.contains("| `name` | a string | **required** | Its name. |"),
            "{text}"
        );
        assert!(text.contains("| `wait` | duration"), "{text}");
        assert!(text.contains("`\"1m\"`"), "{text}");
        assert!(text.contains("## `[fleet.template]`"), "{text}");
        assert!(
            text.contains("| `command` | an array of strings | `[]` | The program. |"),
            "{text}"
        );
    }
}
