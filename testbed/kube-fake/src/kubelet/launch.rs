//! Turning a container spec into a host command line, the way the kubelet and a container
//! runtime would build the process:
//!
//! - environment from `envFrom` then `env`, with `valueFrom` resolved (Secrets, `fieldRef`,
//!   `resourceFieldRef`); a missing Secret or key is the `CreateContainerConfigError` message;
//! - `$(VAR)` expanded in env values, `command` and `args` (`$$` escapes, unknown names stay);
//! - `command` replaces the image entrypoint; without one, `args` run alone (the image's
//!   entrypoint is not known, unless the image name is an alias);
//! - the program is looked up in the alias table (exactly, then by base name);
//! - **mount paths are rewritten**: every occurrence of a volume's `mountPath` in the
//!   command, arguments, env values and `workingDir` becomes the volume's host directory, so
//!   `/workspace/build` works on the host without a container filesystem.

use super::image::ImageRef;
use crate::meta;
use crate::quantity;
use crate::resource::Resource;
use crate::store::{ObjectKey, Txn};
use base64::Engine;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// What a container's command needs from its pod and the node.
pub struct PodInputs<'a> {
    pub pod: &'a Value,
    pub node_name: &'a str,
    pub pod_ip: &'a str,
    pub pod_dir: &'a Path,
    /// Volume name → host directory.
    pub volumes: &'a HashMap<String, PathBuf>,
    pub aliases: &'a BTreeMap<String, Vec<String>>,
}

/// The host command for a container, or the `CreateContainerConfigError` message.
pub fn launch(
    inputs: &PodInputs<'_>,
    container: &Value,
    txn: &Txn<'_>,
) -> Result<super::process::Launch, String> {
    let env = environment(inputs, container, txn)?;
    let lookup: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let strings = |field: &str| -> Vec<String> {
        meta::strings_at(container, &format!("/{field}"))
            .iter()
            .map(|s| expand(s, &lookup))
            .collect()
    };
    let (command, args) = (strings("command"), strings("args"));
    let image = meta::str_at(container, "/image").unwrap_or_default();
    let mut argv = if command.is_empty() {
        let entrypoint = ImageRef::parse(image)
            .ok()
            .and_then(|i| {
                let repository = i.path.rsplit('/').next().unwrap_or_default().to_string();
                [i.path.clone(), repository]
                    .into_iter()
                    .find_map(|name| inputs.aliases.get(&name).cloned())
            })
            .unwrap_or_default();
        entrypoint.into_iter().chain(args).collect::<Vec<_>>()
    } else {
        command.into_iter().chain(args).collect()
    };
    if argv.is_empty() {
        return Err(format!(
            "kube-fake cannot run image \"{image}\" without a command: the container has no \
             command or args, and no alias names the image"
        ));
    }
    let mounts = mounts(inputs, container);
    let aliased = alias(&argv[0], inputs.aliases);
    argv = match aliased {
        Some(prefix) => prefix
            .into_iter()
            .chain(argv[1..].iter().map(|a| rewrite(a, &mounts)))
            .collect(),
        None => argv.iter().map(|a| rewrite(a, &mounts)).collect(),
    };
    let working_dir = meta::str_at(container, "/workingDir")
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(rewrite(&expand(d, &lookup), &mounts)))
        .unwrap_or_else(|| inputs.pod_dir.join("root"));
    let env = env
        .into_iter()
        .map(|(name, value)| (name, rewrite(&value, &mounts)))
        .collect();
    Ok(super::process::Launch {
        argv,
        env,
        working_dir,
    })
}

/// The alias for a program, by its exact name or its base name.
fn alias(program: &str, aliases: &BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
    let base = program.rsplit('/').next().unwrap_or(program);
    aliases
        .get(program)
        .or_else(|| aliases.get(base))
        .filter(|prefix| !prefix.is_empty())
        .cloned()
}

/// The base environment, then `envFrom`, then `env`, in order (later wins).
fn environment(
    inputs: &PodInputs<'_>,
    container: &Value,
    txn: &Txn<'_>,
) -> Result<Vec<(String, String)>, String> {
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        ),
        ("HOSTNAME".into(), meta::name(inputs.pod).to_string()),
        (
            "HOME".into(),
            inputs.pod_dir.join("home").display().to_string(),
        ),
        (
            "TMPDIR".into(),
            inputs.pod_dir.join("tmp").display().to_string(),
        ),
        (
            "KUBE_FAKE_IMAGE".into(),
            meta::str_at(container, "/image").unwrap_or_default().into(),
        ),
    ];
    let set = |env: &mut Vec<(String, String)>, name: String, value: String| {
        env.retain(|(n, _)| *n != name);
        env.push((name, value));
    };
    let namespace = meta::namespace(inputs.pod);
    let from_sources = container.get("envFrom").and_then(Value::as_array);
    for source in from_sources.into_iter().flatten() {
        let prefix = meta::str_at(source, "/prefix").unwrap_or_default();
        if let Some(secret_ref) = source.get("secretRef") {
            let name = meta::str_at(secret_ref, "/name").unwrap_or_default();
            match secret_data(txn, namespace, name) {
                Some(data) => {
                    for (key, value) in data {
                        set(&mut env, format!("{prefix}{key}"), value);
                    }
                }
                None if optional(secret_ref) => {}
                None => return Err(format!("secret \"{name}\" not found")),
            }
        } else if let Some(config_ref) = source.get("configMapRef").filter(|r| !optional(r)) {
            let name = meta::str_at(config_ref, "/name").unwrap_or_default();
            return Err(format!("configmap \"{name}\" not found"));
        }
    }
    let vars = container.get("env").and_then(Value::as_array);
    for var in vars.into_iter().flatten() {
        let name = meta::str_at(var, "/name").unwrap_or_default().to_string();
        let value = match var.get("valueFrom") {
            None => {
                let defined: HashMap<&str, &str> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                Some(expand(
                    meta::str_at(var, "/value").unwrap_or_default(),
                    &defined,
                ))
            }
            Some(source) => value_from(inputs, container, source, txn)?,
        };
        if let Some(value) = value {
            set(&mut env, name, value);
        }
    }
    Ok(env)
}

fn optional(reference: &Value) -> bool {
    reference.get("optional").and_then(Value::as_bool) == Some(true)
}

fn secret_data(txn: &Txn<'_>, namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
    let secret = txn.get(Resource::Secrets, &ObjectKey::new(namespace, name))?;
    let data = secret.get("data").and_then(Value::as_object);
    Some(
        data.into_iter()
            .flatten()
            .filter_map(|(key, value)| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(value.as_str()?)
                    .ok()?;
                Some((key.clone(), String::from_utf8_lossy(&bytes).into_owned()))
            })
            .collect(),
    )
}

/// A `valueFrom` source; `Ok(None)` for an optional reference that is missing.
fn value_from(
    inputs: &PodInputs<'_>,
    container: &Value,
    source: &Value,
    txn: &Txn<'_>,
) -> Result<Option<String>, String> {
    let namespace = meta::namespace(inputs.pod);
    if let Some(key_ref) = source.get("secretKeyRef") {
        let name = meta::str_at(key_ref, "/name").unwrap_or_default();
        let key = meta::str_at(key_ref, "/key").unwrap_or_default();
        return match secret_data(txn, namespace, name) {
            Some(data) => match data.get(key) {
                Some(value) => Ok(Some(value.clone())),
                None if optional(key_ref) => Ok(None),
                None => Err(format!(
                    "couldn't find key {key} in Secret {namespace}/{name}"
                )),
            },
            None if optional(key_ref) => Ok(None),
            None => Err(format!("secret \"{name}\" not found")),
        };
    }
    if let Some(config_ref) = source.get("configMapKeyRef") {
        if optional(config_ref) {
            return Ok(None);
        }
        let name = meta::str_at(config_ref, "/name").unwrap_or_default();
        return Err(format!("configmap \"{name}\" not found"));
    }
    if let Some(field_ref) = source.get("fieldRef") {
        let path = meta::str_at(field_ref, "/fieldPath").unwrap_or_default();
        return Ok(Some(field_value(inputs, path)));
    }
    if let Some(resource_ref) = source.get("resourceFieldRef") {
        let resource = meta::str_at(resource_ref, "/resource").unwrap_or_default();
        let (which, name) = resource.split_once('.').unwrap_or(("limits", resource));
        let divisor = meta::str_at(resource_ref, "/divisor")
            .and_then(quantity::parse_milli)
            .filter(|d| *d > 0)
            .unwrap_or(1000);
        let amount = meta::str_at(container, &format!("/resources/{which}/{name}"))
            .and_then(quantity::parse_milli)
            .unwrap_or(0);
        return Ok(Some(((amount + divisor - 1) / divisor).to_string()));
    }
    Ok(Some(String::new()))
}

/// A `fieldRef` path's value for this pod.
fn field_value(inputs: &PodInputs<'_>, path: &str) -> String {
    let pod = inputs.pod;
    let keyed = |prefix: &str, map: &str| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix("']"))
            .map(|key| {
                meta::str_at(
                    pod,
                    &format!(
                        "/metadata/{map}/{}",
                        key.replace('~', "~0").replace('/', "~1")
                    ),
                )
                .unwrap_or_default()
                .to_string()
            })
    };
    if let Some(value) = keyed("metadata.labels['", "labels")
        .or_else(|| keyed("metadata.annotations['", "annotations"))
    {
        return value;
    }
    match path {
        "metadata.name" => meta::name(pod).into(),
        "metadata.namespace" => meta::namespace(pod).into(),
        "metadata.uid" => meta::uid(pod).into(),
        "spec.nodeName" => inputs.node_name.into(),
        "spec.serviceAccountName" => meta::str_at(pod, "/spec/serviceAccountName")
            .unwrap_or_default()
            .into(),
        "status.podIP" | "status.hostIP" => inputs.pod_ip.into(),
        _ => String::new(),
    }
}

/// Kubernetes' `$(VAR)` expansion.
pub fn expand(input: &str, vars: &HashMap<&str, &str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(close) = after.strip_prefix('(').and_then(|a| a.find(')')) {
            let name = &after[1..=close];
            match vars.get(name) {
                Some(value) => out.push_str(value),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &after[close + 2..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container's mounts as (mount path, host path), longest mount path first.
fn mounts(inputs: &PodInputs<'_>, container: &Value) -> Vec<(String, String)> {
    let mounts = container.get("volumeMounts").and_then(Value::as_array);
    let mut pairs: Vec<(String, String)> = mounts
        .into_iter()
        .flatten()
        .filter_map(|mount| {
            let mount_path = meta::str_at(mount, "/mountPath")?.trim_end_matches('/');
            let volume = inputs.volumes.get(meta::str_at(mount, "/name")?)?;
            let host = match meta::str_at(mount, "/subPath").filter(|s| !s.is_empty()) {
                Some(sub) => volume.join(sub),
                None => volume.clone(),
            };
            (!mount_path.is_empty()).then(|| (mount_path.to_string(), host.display().to_string()))
        })
        .collect();
    pairs.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    pairs
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._-".contains(c)
}

/// Replaces each occurrence of a mount path that stands as a whole path prefix (not part of
/// a longer name, not inside another path) with its host directory.
pub fn rewrite(text: &str, mounts: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let before_ok = text[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !is_path_char(c) && c != '/');
        let hit = before_ok
            .then(|| {
                mounts.iter().find(|(mount, _)| {
                    text[i..].starts_with(mount.as_str())
                        && text[i + mount.len()..]
                            .chars()
                            .next()
                            .is_none_or(|c| c == '/' || !is_path_char(c))
                })
            })
            .flatten();
        match hit {
            Some((mount, host)) => {
                out.push_str(host);
                i += mount.len();
            }
            None => {
                let c = text[i..].chars().next().expect("i is within text");
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let vars = HashMap::from([("A", "1"), ("B", "two")]);
        assert_eq!(expand("$(A)-$(B)", &vars), "1-two");
        assert_eq!(expand("$$(A) $(C) $ x$", &vars), "$(A) $(C) $ x$");
        assert_eq!(expand("$(A", &vars), "$(A");
    }

    #[test]
    fn mount_paths_are_rewritten_as_whole_prefixes() {
        let mounts = vec![("/workspace".to_string(), "/tmp/p/volumes/ws".to_string())];
        assert_eq!(
            rewrite("/workspace/build", &mounts),
            "/tmp/p/volumes/ws/build"
        );
        assert_eq!(
            rewrite("--dir=/workspace", &mounts),
            "--dir=/tmp/p/volumes/ws"
        );
        assert_eq!(
            rewrite("/workspace2 /a/workspace", &mounts),
            "/workspace2 /a/workspace"
        );
        assert_eq!(rewrite("a:/workspace:b", &mounts), "a:/tmp/p/volumes/ws:b");
    }
}
