//! The pod subresources with behaviour of their own: `log` (the container process's output,
//! optionally followed) and `eviction` (API-initiated eviction: a `DisruptionTarget`
//! condition, then a graceful delete; no PodDisruptionBudgets exist to refuse it).

use super::crud::{parse_delete_options, Request};
use super::json_response;
use crate::error::ApiError;
use crate::kubelet::paths;
use crate::meta;
use crate::registry;
use crate::resource::Resource;
use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;

const FOLLOW_POLL: Duration = Duration::from_millis(100);

pub async fn log(request: Request) -> Result<Response, ApiError> {
    if request.resource() != Resource::Pods {
        return Err(ApiError::unknown_path());
    }
    let key = request.key();
    let pod = request
        .cluster
        .store
        .txn()
        .get(Resource::Pods, &key)
        .ok_or_else(|| ApiError::not_found(Resource::Pods, &key.name))?;
    let container = chosen_container(&pod, request.query.get("container"))?;
    let status = container_status(&pod, &container);
    let restarts = status
        .as_ref()
        .and_then(|s| s["restartCount"].as_i64())
        .unwrap_or(0);
    let attempt = if request.query.flag("previous") {
        if restarts == 0 {
            return Err(ApiError::bad_request(format!(
                "previous terminated container \"{container}\" in pod \"{}\" not found",
                key.name
            )));
        }
        restarts - 1
    } else {
        restarts
    };
    let file = paths::log_file(
        &request.cluster.work_dir,
        meta::uid(&pod),
        &container,
        attempt,
    );
    if !file.exists() {
        let reason = status
            .as_ref()
            .and_then(|s| meta::str_at(s, "/state/waiting/reason").map(str::to_string))
            .unwrap_or_else(|| "ContainerCreating".into());
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{}\" is waiting to start: {reason}",
            key.name
        )));
    }
    let tail = request.query.number("tailLines")?;
    let limit = request.query.number("limitBytes")?;
    let text = |bytes: Vec<u8>| {
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from(bytes))
            .expect("static headers are valid")
    };
    let mut content = std::fs::read(&file)
        .map_err(|e| ApiError::internal(format!("reading {}: {e}", file.display())))?;
    if let Some(lines) = tail {
        content = last_lines(&content, lines.max(0) as usize);
    }
    if let Some(limit) = limit {
        content.truncate(limit.max(0) as usize);
    }
    if !request.query.flag("follow") || request.query.flag("previous") {
        return Ok(text(content));
    }
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let cluster = request.cluster.clone();
    let offset = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    tokio::spawn(async move {
        if tx.send(Bytes::from(content)).await.is_err() {
            return;
        }
        follow(file, offset, tx, || {
            let pod = cluster.store.txn().get(Resource::Pods, &key);
            pod.and_then(|pod| container_status(&pod, &container))
                .is_some_and(|s| {
                    s["restartCount"].as_i64() == Some(attempt)
                        && s["state"].get("running").is_some()
                })
        })
        .await;
    });
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(chunk), rx))
    }));
    let mut response = text(Vec::new());
    *response.body_mut() = body;
    Ok(response)
}

/// Streams what is appended to `file` while `still_running` says so, then the rest.
async fn follow(
    file: PathBuf,
    mut offset: u64,
    tx: mpsc::Sender<Bytes>,
    still_running: impl Fn() -> bool,
) {
    loop {
        let running = still_running();
        let chunk = std::fs::File::open(&file).and_then(|mut f| {
            f.seek(SeekFrom::Start(offset))?;
            let mut buffer = Vec::new();
            f.read_to_end(&mut buffer)?;
            Ok(buffer)
        });
        match chunk {
            Ok(chunk) if !chunk.is_empty() => {
                offset += chunk.len() as u64;
                if tx.send(Bytes::from(chunk)).await.is_err() {
                    return;
                }
            }
            Ok(_) if !running => return,
            Ok(_) => {}
            Err(_) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            _ = tx.closed() => return,
        }
    }
}

fn last_lines(content: &[u8], lines: usize) -> Vec<u8> {
    if lines == 0 {
        return Vec::new();
    }
    let body = content.strip_suffix(b"\n").unwrap_or(content);
    let start = body
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(lines - 1)
        .map_or(0, |(i, _)| i + 1);
    content[start..].to_vec()
}

/// The container a log request is for, checked as the API server checks it.
fn chosen_container(pod: &Value, requested: Option<&str>) -> Result<String, ApiError> {
    let names = |list: &str| -> Vec<String> {
        pod["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    };
    let (regular, init) = (names("containers"), names("initContainers"));
    let pod_name = meta::name(pod);
    match requested.filter(|c| !c.is_empty()) {
        Some(name) if regular.iter().chain(&init).any(|c| c == name) => Ok(name.to_string()),
        Some(name) => Err(ApiError::bad_request(format!(
            "container {name} is not valid for pod {pod_name}"
        ))),
        None if regular.len() == 1 => Ok(regular[0].clone()),
        None => {
            let mut message = format!(
                "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                regular.join(" ")
            );
            if !init.is_empty() {
                message.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            Err(ApiError::bad_request(message))
        }
    }
}

fn container_status(pod: &Value, container: &str) -> Option<Value> {
    ["containerStatuses", "initContainerStatuses"]
        .iter()
        .filter_map(|list| pod["status"][list].as_array())
        .flatten()
        .find(|s| s["name"] == container)
        .cloned()
}

/// `POST pods/{name}/eviction`.
pub fn evict(request: &Request) -> Result<Response, ApiError> {
    let eviction = request.json_body()?;
    let key = request.key();
    let named = meta::name(&eviction);
    if !named.is_empty() && named != key.name {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    let (options, dry_run) = parse_delete_options(&eviction["deleteOptions"], &request.query)?;
    let mut txn = request.cluster.store.txn();
    let pod = txn
        .get(Resource::Pods, &key)
        .ok_or_else(|| ApiError::not_found(Resource::Pods, &key.name))?;
    let phase = meta::str_at(&pod, "/status/phase").unwrap_or_default();
    if !dry_run && phase != "Succeeded" && phase != "Failed" {
        registry::modify(&mut txn, Resource::Pods, &key, |pod| {
            crate::kubelet::status::set_condition(
                pod,
                "DisruptionTarget",
                "True",
                "EvictionByEvictionAPI",
                "Eviction API: evicting",
            );
        });
    }
    registry::delete(&mut txn, Resource::Pods, &key, &options, dry_run)?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201 }),
    ))
}

#[cfg(test)]
mod tests {
    use super::last_lines;

    #[test]
    fn tail_takes_whole_last_lines() {
        assert_eq!(last_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(last_lines(b"a\nb\nc\n", 5), b"a\nb\nc\n");
        assert_eq!(last_lines(b"a\nb\nc", 1), b"c");
        assert_eq!(last_lines(b"a\n", 0), b"");
    }
}
