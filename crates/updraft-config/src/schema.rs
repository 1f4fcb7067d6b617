//! The JSON Schema of a settings type, as reading and the reference both see it: every
//! subschema inlined (no `$ref`), so an error's keyword location is a plain pointer into it
//! and the reference walks one tree.

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::Value;

/// The schema keyword a setting uses to say, in words, what it expects (`"a duration like
/// \"90s\""`); error messages quote it instead of the bare JSON type. Add it to a field with
/// `#[schemars(extend("x-expected" = "…"))]`.
pub const EXPECTED: &str = "x-expected";

/// `T`'s schema for reading (the `Deserialize` contract), subschemas inlined.
pub fn schema_for<T: JsonSchema>() -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.inline_subschemas = true;
    settings
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}
