//! Pipeline definitions: YAML (`configuration`), a JSON `steps` array, or an uploaded
//! pipeline, parsed into `StepSpec`s. Every error names the path of the offending field.

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use updraft_model::QueryRules;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    Command,
    Wait,
    Block,
}

/// One step as written in the pipeline; a build turns it into one job (or `parallelism` jobs).
#[derive(Debug, Clone, PartialEq)]
pub struct StepSpec {
    pub kind: StepKind,
    pub key: Option<String>,
    pub label: Option<String>,
    /// Commands joined with newlines (`commands:` arrays become one script).
    pub command: Option<String>,
    /// `BUILDKITE_PLUGINS` form: an array of one-key objects.
    pub plugins: Option<Value>,
    pub env: BTreeMap<String, String>,
    pub agents: QueryRules,
    pub priority: i64,
    pub parallelism: u32,
    pub depends_on: Vec<String>,
    pub allow_dependency_failure: bool,
    pub timeout_in_minutes: Option<u64>,
    /// For `wait`: let the build carry on past failed steps.
    pub continue_on_failure: bool,
    pub skip: bool,
    /// `branches:` patterns (`*` wildcards, `!` negates); empty means every branch.
    pub branches: Vec<String>,
    /// `concurrency_group` and its `concurrency` limit: at most that many of the group's jobs
    /// are scheduled or running at once, the rest wait as `limited`.
    pub concurrency: Option<(String, u32)>,
}

impl StepSpec {
    /// Does the step run on this branch? Negated patterns (`!main`) exclude.
    pub fn runs_on_branch(&self, branch: &str) -> bool {
        if self.branches.is_empty() {
            return true;
        }
        let (excludes, includes): (Vec<&String>, Vec<&String>) =
            self.branches.iter().partition(|p| p.starts_with('!'));
        let excluded = excludes.iter().any(|p| wildcard(&p[1..], branch));
        !excluded && (includes.is_empty() || includes.iter().any(|p| wildcard(p, branch)))
    }

    fn new(kind: StepKind) -> Self {
        StepSpec {
            kind,
            key: None,
            label: None,
            command: None,
            plugins: None,
            env: BTreeMap::new(),
            agents: QueryRules::default(),
            priority: 0,
            parallelism: 1,
            depends_on: Vec::new(),
            allow_dependency_failure: false,
            timeout_in_minutes: None,
            continue_on_failure: false,
            skip: false,
            branches: Vec::new(),
            concurrency: None,
        }
    }
}

/// A parsed pipeline: its steps plus pipeline-level `env` and `agents` defaults (already
/// folded into each step).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PipelineDef {
    pub steps: Vec<StepSpec>,
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct StepError {
    pub path: String,
    pub problem: String,
}

fn err(path: &str, problem: impl Into<String>) -> StepError {
    StepError {
        path: path.to_string(),
        problem: problem.into(),
    }
}

/// Attributes Buildkite knows on steps; anything else is rejected as Buildkite does.
const COMMAND_KEYS: &[&str] = &[
    "command",
    "commands",
    "label",
    "name",
    "key",
    "id",
    "identifier",
    "agents",
    "env",
    "plugins",
    "priority",
    "parallelism",
    "depends_on",
    "allow_dependency_failure",
    "timeout_in_minutes",
    "skip",
    "soft_fail",
    "retry",
    "artifact_paths",
    "branches",
    "if",
    "concurrency",
    "concurrency_group",
    "concurrency_method",
    "cancel_on_build_failing",
    "notify",
    "type",
    "agent_query_rules",
    "cache",
    "secrets",
    "timeout",
];
const WAIT_KEYS: &[&str] = &[
    "wait",
    "continue_on_failure",
    "key",
    "id",
    "identifier",
    "depends_on",
    "allow_dependency_failure",
    "if",
    "branches",
    "type",
];
const BLOCK_KEYS: &[&str] = &[
    "block",
    "input",
    "prompt",
    "fields",
    "key",
    "id",
    "identifier",
    "depends_on",
    "allow_dependency_failure",
    "if",
    "branches",
    "blocked_state",
    "label",
    "type",
];
const TOP_KEYS: &[&str] = &[
    "steps", "env", "agents", "notify", "priority", "secrets", "cache", "image",
];

/// Parse a YAML document (the REST `configuration` string or an uploaded pipeline file).
pub fn parse_yaml(text: &str) -> Result<PipelineDef, StepError> {
    let value: Value = serde_yaml_ng::from_str(text)
        .map_err(|e| err("configuration", format!("not valid YAML: {e}")))?;
    parse_value("configuration", &value)
}

/// Parse a pipeline given as JSON: a `{"steps": […]}` object or a bare steps array.
pub fn parse_value(path: &str, value: &Value) -> Result<PipelineDef, StepError> {
    match value {
        Value::Array(steps) => parse_steps(
            &format!("{path}.steps"),
            steps,
            &BTreeMap::new(),
            &QueryRules::default(),
        ),
        Value::Object(top) => {
            if let Some(unknown) = top.keys().find(|k| !TOP_KEYS.contains(&k.as_str())) {
                return Err(err(
                    &format!("{path}.{unknown}"),
                    "unknown top-level attribute (expected steps, env, agents)",
                ));
            }
            let env = match top.get("env") {
                Some(v) => string_map(&format!("{path}.env"), v)?,
                None => BTreeMap::new(),
            };
            let agents = match top.get("agents") {
                Some(v) => agents(&format!("{path}.agents"), v)?,
                None => QueryRules::default(),
            };
            let steps = match top.get("steps") {
                Some(Value::Array(steps)) => steps,
                Some(_) => return Err(err(&format!("{path}.steps"), "must be a list of steps")),
                None => return Err(err(path, "has no `steps:` list")),
            };
            let mut def = parse_steps(&format!("{path}.steps"), steps, &env, &agents)?;
            def.env = env;
            Ok(def)
        }
        Value::Null => Err(err(path, "is empty; expected a pipeline with `steps:`")),
        _ => Err(err(
            path,
            "must be a mapping with `steps:` or a list of steps",
        )),
    }
}

fn parse_steps(
    path: &str,
    steps: &[Value],
    env: &BTreeMap<String, String>,
    default_agents: &QueryRules,
) -> Result<PipelineDef, StepError> {
    let mut out = Vec::new();
    for (i, raw) in steps.iter().enumerate() {
        let step_path = format!("{path}[{i}]");
        match raw {
            Value::String(s) if s == "wait" || s == "waiter" => {
                out.push(StepSpec::new(StepKind::Wait))
            }
            Value::String(s) if s == "block" => out.push(StepSpec::new(StepKind::Block)),
            Value::String(s) => {
                return Err(err(
                    &step_path,
                    format!("{s:?} is not a step (expected \"wait\", \"block\" or a mapping)"),
                ))
            }
            Value::Object(map) if map.contains_key("group") => {
                let nested = match map.get("steps") {
                    Some(Value::Array(nested)) => nested,
                    _ => {
                        return Err(err(
                            &format!("{step_path}.steps"),
                            "a group needs a list of steps",
                        ))
                    }
                };
                out.extend(
                    parse_steps(&format!("{step_path}.steps"), nested, env, default_agents)?.steps,
                );
            }
            Value::Object(map) => out.push(parse_step(&step_path, map, default_agents)?),
            _ => return Err(err(&step_path, "must be a mapping, \"wait\" or \"block\"")),
        }
    }
    Ok(PipelineDef {
        steps: out,
        env: env.clone(),
    })
}

fn step_kind(path: &str, map: &Map<String, Value>) -> Result<StepKind, StepError> {
    if map.contains_key("trigger") {
        return Err(err(
            &format!("{path}.trigger"),
            "trigger steps are not supported by the emulator",
        ));
    }
    if map.contains_key("matrix") {
        return Err(err(
            &format!("{path}.matrix"),
            "matrix steps are not supported by the emulator",
        ));
    }
    let kind = match map.get("type").and_then(Value::as_str) {
        Some("script") | Some("command") => StepKind::Command,
        Some("waiter") | Some("wait") => StepKind::Wait,
        Some("manual") | Some("block") | Some("input") => StepKind::Block,
        Some(other) => {
            return Err(err(
                &format!("{path}.type"),
                format!("{other:?} is not a step type (expected script, waiter or manual)"),
            ))
        }
        None if map.contains_key("wait") => StepKind::Wait,
        None if map.contains_key("block") || map.contains_key("input") => StepKind::Block,
        None if map.contains_key("command")
            || map.contains_key("commands")
            || map.contains_key("plugins") =>
        {
            StepKind::Command
        }
        None => {
            return Err(err(
                path,
                "is not a step: expected `command`, `commands`, `plugins`, `wait` or `block`",
            ))
        }
    };
    Ok(kind)
}

fn parse_step(
    path: &str,
    map: &Map<String, Value>,
    default_agents: &QueryRules,
) -> Result<StepSpec, StepError> {
    let kind = step_kind(path, map)?;
    let allowed = match kind {
        StepKind::Command => COMMAND_KEYS,
        StepKind::Wait => WAIT_KEYS,
        StepKind::Block => BLOCK_KEYS,
    };
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(err(
            &format!("{path}.{unknown}"),
            "unknown attribute for this kind of step",
        ));
    }
    let mut step = StepSpec::new(kind);
    for key_field in ["key", "id", "identifier"] {
        if let Some(v) = map.get(key_field) {
            step.key = Some(string(&format!("{path}.{key_field}"), v)?);
        }
    }
    for label_field in ["label", "name", "block", "input"] {
        if let Some(v) = map.get(label_field).filter(|v| v.is_string()) {
            step.label = Some(string(&format!("{path}.{label_field}"), v)?);
        }
    }
    if let Some(v) = map.get("depends_on") {
        step.depends_on = depends_on(&format!("{path}.depends_on"), v)?;
    }
    step.allow_dependency_failure = boolean(path, map, "allow_dependency_failure")?;
    step.continue_on_failure = boolean(path, map, "continue_on_failure")?;
    step.skip = match map.get("skip") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) | Some(Value::String(_)) => true,
        Some(_) => {
            return Err(err(
                &format!("{path}.skip"),
                "must be a boolean or a reason string",
            ))
        }
    };
    if let Some(v) = map.get("branches") {
        step.branches = match v {
            Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| string(&format!("{path}.branches[{i}]"), item))
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(err(
                    &format!("{path}.branches"),
                    "must be a string of patterns or a list of patterns",
                ))
            }
        };
    }
    if kind != StepKind::Command {
        return Ok(step);
    }
    step.command = command(path, map)?;
    step.agents = match (map.get("agents"), map.get("agent_query_rules")) {
        (Some(v), _) => agents(&format!("{path}.agents"), v)?,
        (None, Some(v)) => agents(&format!("{path}.agent_query_rules"), v)?,
        (None, None) => default_agents.clone(),
    };
    if let Some(v) = map.get("env") {
        step.env = string_map(&format!("{path}.env"), v)?;
    }
    if let Some(v) = map.get("plugins") {
        step.plugins = Some(plugins(&format!("{path}.plugins"), v)?);
    }
    if let Some(v) = map.get("priority") {
        step.priority = v
            .as_i64()
            .ok_or_else(|| err(&format!("{path}.priority"), "must be an integer"))?;
    }
    if let Some(v) = map.get("parallelism") {
        let n = v.as_u64().filter(|n| *n >= 1 && *n <= 1000);
        step.parallelism = n.ok_or_else(|| {
            err(
                &format!("{path}.parallelism"),
                "must be an integer from 1 to 1000",
            )
        })? as u32;
    }
    step.concurrency = match (map.get("concurrency_group"), map.get("concurrency")) {
        (None, None) => None,
        (Some(group), Some(limit)) => {
            let group = string(&format!("{path}.concurrency_group"), group)?;
            let limit = limit
                .as_u64()
                .filter(|n| *n >= 1 && *n <= u64::from(u32::MAX));
            let limit = limit
                .ok_or_else(|| err(&format!("{path}.concurrency"), "must be a positive integer"))?;
            Some((group, limit as u32))
        }
        _ => {
            return Err(err(
                path,
                "`concurrency` and `concurrency_group` go together; give both",
            ))
        }
    };
    if let Some(v) = map.get("timeout_in_minutes").filter(|v| !v.is_null()) {
        let n = v.as_u64().filter(|n| *n >= 1);
        step.timeout_in_minutes = Some(n.ok_or_else(|| {
            err(
                &format!("{path}.timeout_in_minutes"),
                "must be a positive integer",
            )
        })?);
    }
    Ok(step)
}

fn command(path: &str, map: &Map<String, Value>) -> Result<Option<String>, StepError> {
    let (field, value) = match (map.get("command"), map.get("commands")) {
        (Some(_), Some(_)) => return Err(err(path, "has both `command` and `commands`; use one")),
        (Some(v), None) => ("command", v),
        (None, Some(v)) => ("commands", v),
        (None, None) => return Ok(None),
    };
    let field_path = format!("{path}.{field}");
    match value {
        Value::String(s) => Ok(Some(s.clone())),
        Value::Array(lines) => {
            let lines = lines
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    l.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| err(&format!("{field_path}[{i}]"), "must be a string"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some(lines.join("\n")))
        }
        Value::Null => Ok(None),
        _ => Err(err(&field_path, "must be a string or a list of strings")),
    }
}

fn boolean(path: &str, map: &Map<String, Value>, field: &str) -> Result<bool, StepError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(err(&format!("{path}.{field}"), "must be true or false")),
    }
}

fn string(path: &str, v: &Value) -> Result<String, StepError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(err(path, "must be a string")),
    }
}

fn string_map(path: &str, v: &Value) -> Result<BTreeMap<String, String>, StepError> {
    match v {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| Ok((k.clone(), string(&format!("{path}.{k}"), v)?)))
            .collect(),
        Value::Null => Ok(BTreeMap::new()),
        _ => Err(err(path, "must be a mapping of names to values")),
    }
}

fn agents(path: &str, v: &Value) -> Result<QueryRules, StepError> {
    let raw: Vec<String> = match v {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| Ok(format!("{k}={}", string(&format!("{path}.{k}"), v)?)))
            .collect::<Result<_, StepError>>()?,
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| string(&format!("{path}[{i}]"), v))
            .collect::<Result<_, _>>()?,
        Value::Null => Vec::new(),
        _ => {
            return Err(err(
                path,
                "must be a mapping like {queue: linux} or a list of \"key=value\"",
            ))
        }
    };
    QueryRules::parse(path, &raw).map_err(|e| err(path, e.to_string()))
}

fn depends_on(path: &str, v: &Value) -> Result<Vec<String>, StepError> {
    let one = |p: &str, item: &Value| -> Result<String, StepError> {
        match item {
            Value::String(s) => Ok(s.clone()),
            Value::Object(m) => m
                .get("step")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| err(p, "needs a `step:` key")),
            _ => Err(err(p, "must be a step key or {step: key}")),
        }
    };
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| one(&format!("{path}[{i}]"), item))
            .collect(),
        other => Ok(vec![one(path, other)?]),
    }
}

/// Plugins as `BUILDKITE_PLUGINS` wants them: `[{"source#ver": config}]`. YAML allows a list of
/// strings or one-key maps, or one map of source → config.
fn plugins(path: &str, v: &Value) -> Result<Value, StepError> {
    let one_key = |source: &str, config: &Value| {
        let mut m = Map::new();
        m.insert(source.to_string(), config.clone());
        Value::Object(m)
    };
    match v {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(source) => Ok(one_key(source, &Value::Null)),
                Value::Object(m) if m.len() == 1 => Ok(item.clone()),
                _ => Err(err(
                    &format!("{path}[{i}]"),
                    "must be a plugin name or a one-key mapping of name to config",
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(m) => Ok(Value::Array(m.iter().map(|(k, v)| one_key(k, v)).collect())),
        _ => Err(err(path, "must be a list of plugins")),
    }
}

/// Branch patterns allow `*` wildcards.
pub fn wildcard(pattern: &str, value: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == value;
    }
    let mut rest = value;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_wildcards() {
        assert!(wildcard("main", "main"));
        assert!(!wildcard("main", "mainline"));
        assert!(wildcard("release/*", "release/1.2"));
        assert!(wildcard("*-fix", "bug-fix"));
        assert!(wildcard("f*o*r", "foobar"));
        assert!(!wildcard("f*x", "foobar"));
        let step =
            parse_yaml("steps:\n  - command: x\n    branches: 'main release/* !release/old'\n")
                .unwrap()
                .steps
                .remove(0);
        assert!(step.runs_on_branch("main") && step.runs_on_branch("release/2"));
        assert!(!step.runs_on_branch("release/old") && !step.runs_on_branch("feature"));
    }

    #[test]
    fn parses_commands_waits_blocks_and_defaults() {
        let def = parse_yaml(
            "env: {A: '1'}\nagents: {queue: linux}\nsteps:\n  - command: make\n    key: build\n    parallelism: 2\n  - wait\n  - block: ok?\n  - label: test\n    commands: [a, b]\n    agents: {queue: mac}\n    depends_on: build\n    timeout_in_minutes: 5\n",
        )
        .unwrap();
        assert_eq!(def.steps.len(), 4);
        assert_eq!(def.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(def.steps[0].agents.to_strings(), vec!["queue=linux"]);
        assert_eq!(def.steps[0].parallelism, 2);
        assert_eq!(def.steps[1].kind, StepKind::Wait);
        assert_eq!(def.steps[2].kind, StepKind::Block);
        assert_eq!(def.steps[3].command.as_deref(), Some("a\nb"));
        assert_eq!(def.steps[3].depends_on, vec!["build"]);
        assert_eq!(def.steps[3].timeout_in_minutes, Some(5));
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse_yaml("steps:\n  - command: x\n    bogus: 1\n").unwrap_err();
        assert_eq!(e.path, "configuration.steps[0].bogus");
        let e = parse_yaml("steps:\n  - command: x\n    agents: [queue]\n").unwrap_err();
        assert!(e.to_string().contains("steps[0].agents"), "{e}");
        assert!(parse_yaml("steps: [").is_err());
        assert!(parse_yaml("steps:\n  - trigger: other\n")
            .unwrap_err()
            .to_string()
            .contains("trigger"));
    }

    #[test]
    fn plugins_become_one_key_objects() {
        let def = parse_yaml(
            "steps:\n  - plugins:\n      - docker#v5.0.0: {image: alpine}\n      - foo\n",
        )
        .unwrap();
        let plugins = def.steps[0].plugins.clone().unwrap();
        assert_eq!(plugins[0]["docker#v5.0.0"]["image"], "alpine");
        assert!(plugins[1]["foo"].is_null());
    }
}
