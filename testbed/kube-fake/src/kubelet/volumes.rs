//! Pod volumes as host directories: `emptyDir` (and any type the fake does not model, such
//! as `projected` or `persistentVolumeClaim`) is an empty directory under the pod's
//! directory, `secret` is a directory with one file per key, `hostPath` is the host path
//! itself. A missing Secret (or any ConfigMap, which the fake does not serve) is the
//! `FailedMount` message the kubelet would report.

use super::paths;
use crate::meta;
use crate::resource::Resource;
use crate::store::{ObjectKey, Txn};
use base64::Engine;
use serde_json::Value;
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Makes every volume of the pod; returns volume name → host directory, or the
/// `FailedMount` message for the first volume that cannot be set up.
pub fn prepare(
    work_dir: &Path,
    pod: &Value,
    txn: &Txn<'_>,
) -> Result<HashMap<String, PathBuf>, String> {
    let uid = meta::uid(pod);
    let mut dirs = HashMap::new();
    let volumes = pod.pointer("/spec/volumes").and_then(Value::as_array);
    for volume in volumes.into_iter().flatten() {
        let name = meta::str_at(volume, "/name").unwrap_or_default();
        let failed =
            |why: String| format!("MountVolume.SetUp failed for volume \"{name}\" : {why}");
        if let Some(host) = meta::str_at(volume, "/hostPath/path") {
            if meta::str_at(volume, "/hostPath/type") == Some("DirectoryOrCreate") {
                fs::create_dir_all(host).map_err(|e| failed(e.to_string()))?;
            }
            dirs.insert(name.to_string(), PathBuf::from(host));
            continue;
        }
        let dir = paths::volume_dir(work_dir, uid, name);
        fs::create_dir_all(&dir).map_err(|e| failed(e.to_string()))?;
        if let Some(source) = volume.get("secret") {
            let secret_name = meta::str_at(source, "/secretName").unwrap_or_default();
            let optional = source.get("optional").and_then(Value::as_bool) == Some(true);
            let secret = txn.get(
                Resource::Secrets,
                &ObjectKey::new(meta::namespace(pod), secret_name),
            );
            match secret {
                Some(secret) => write_secret(&dir, source, &secret).map_err(failed)?,
                None if optional => {}
                None => return Err(failed(format!("secret \"{secret_name}\" not found"))),
            }
        } else if let Some(source) = volume.get("configMap") {
            if source.get("optional").and_then(Value::as_bool) != Some(true) {
                let config_name = meta::str_at(source, "/name").unwrap_or_default();
                return Err(failed(format!("configmap \"{config_name}\" not found")));
            }
        }
        dirs.insert(name.to_string(), dir);
    }
    Ok(dirs)
}

fn write_secret(dir: &Path, source: &Value, secret: &Value) -> Result<(), String> {
    let default_mode = source["defaultMode"].as_u64().unwrap_or(0o644) as u32;
    let data = secret.get("data").and_then(Value::as_object);
    let decoded: HashMap<&str, Vec<u8>> = data
        .into_iter()
        .flatten()
        .filter_map(|(key, value)| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value.as_str()?)
                .ok()?;
            Some((key.as_str(), bytes))
        })
        .collect();
    let items = source.get("items").and_then(Value::as_array);
    let files: Vec<(String, &Vec<u8>, u32)> = match items {
        Some(items) => items
            .iter()
            .map(|item| {
                let key = meta::str_at(item, "/key").unwrap_or_default();
                let bytes = decoded
                    .get(key)
                    .ok_or_else(|| format!("references non-existent secret key: {key}"))?;
                let path = meta::str_at(item, "/path").unwrap_or(key).to_string();
                let mode = item["mode"].as_u64().map_or(default_mode, |m| m as u32);
                Ok((path, bytes, mode))
            })
            .collect::<Result<_, String>>()?,
        None => decoded
            .iter()
            .map(|(key, bytes)| (key.to_string(), bytes, default_mode))
            .collect(),
    };
    for (path, bytes, mode) in files {
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        fs::write(&file, bytes).map_err(|e| e.to_string())?;
        fs::set_permissions(&file, fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())?;
    }
    Ok(())
}
