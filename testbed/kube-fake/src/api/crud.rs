//! The plain verbs: get, create, update (PUT), delete and deletecollection, each a thin layer
//! over the registry that reads the request and shapes the response as the API server does.

use super::{json_response, list, pods, with_warnings, Representation};
use crate::api::request::{Query, ResourcePath};
use crate::cluster::Cluster;
use crate::error::ApiError;
use crate::meta;
use crate::registry::{self, DeleteOptions, Propagation, Target};
use crate::resource::Resource;
use crate::store::ObjectKey;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use std::sync::Arc;

/// One request to a resource path.
pub struct Request {
    pub cluster: Arc<Cluster>,
    pub path: ResourcePath,
    pub query: Query,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Request {
    pub fn resource(&self) -> Resource {
        self.path.resource
    }

    /// The namespace objects are addressed in (empty for cluster-scoped resources).
    pub fn namespace(&self) -> &str {
        self.path.namespace.as_deref().unwrap_or_default()
    }

    /// The addressed object, for requests that name one.
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(
            self.namespace(),
            self.path.name.as_deref().unwrap_or_default(),
        )
    }

    /// The body as JSON.
    pub fn json_body(&self) -> Result<Value, ApiError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            let kind = self.resource().kind();
            ApiError::bad_request(format!(
                "{kind} in version \"v1\" cannot be handled as a {kind}: {e}"
            ))
        })
    }

    /// Rejects a subresource this verb does not serve.
    pub fn only_subresources(&self, allowed: &[&str]) -> Result<(), ApiError> {
        match &self.path.subresource {
            Some(sub) if !allowed.contains(&sub.as_str()) => Err(ApiError::unknown_path()),
            _ => Ok(()),
        }
    }

    /// Rejects a namespaced write that did not name a namespace.
    fn require_namespace(&self) -> Result<(), ApiError> {
        if self.resource().namespaced() && self.path.namespace.is_none() {
            Err(ApiError::method_not_allowed())
        } else {
            Ok(())
        }
    }
}

pub async fn get(request: Request) -> Result<Response, ApiError> {
    request.only_subresources(&["status", "log"])?;
    if request.path.subresource.as_deref() == Some("log") {
        return pods::log(request).await;
    }
    if request.path.subresource.is_some() && !request.resource().has_status() {
        return Err(ApiError::unknown_path());
    }
    let object = request
        .cluster
        .store
        .txn()
        .get(request.resource(), &request.key())
        .ok_or_else(|| ApiError::not_found(request.resource(), &request.key().name))?;
    let representation = Representation::from_headers(&request.headers);
    Ok(json_response(
        StatusCode::OK,
        &representation.render(&object),
    ))
}

pub fn create(request: &Request) -> Result<Response, ApiError> {
    if request.path.subresource.as_deref() == Some("eviction")
        && request.resource() == Resource::Pods
    {
        return pods::evict(request);
    }
    request.only_subresources(&[])?;
    request.require_namespace()?;
    let body = request.json_body()?;
    let mut txn = request.cluster.store.txn();
    let created = registry::create(
        &mut txn,
        request.resource(),
        request.namespace(),
        body,
        request.query.dry_run(),
    )?;
    Ok(json_response(StatusCode::CREATED, &created))
}

pub fn update(request: &Request) -> Result<Response, ApiError> {
    request.only_subresources(&["status"])?;
    let target = target(request)?;
    let body = request.json_body()?;
    let mut txn = request.cluster.store.txn();
    let updated = registry::update(
        &mut txn,
        request.resource(),
        &request.key(),
        body,
        target,
        request.query.dry_run(),
    )?;
    Ok(json_response(StatusCode::OK, &updated))
}

/// Main resource or `/status`.
pub fn target(request: &Request) -> Result<Target, ApiError> {
    match request.path.subresource.as_deref() {
        None => Ok(Target::Main),
        Some("status") if request.resource().has_status() => Ok(Target::Status),
        Some(_) => Err(ApiError::unknown_path()),
    }
}

pub fn delete(request: &Request) -> Result<Response, ApiError> {
    request.only_subresources(&[])?;
    if request.resource() == Resource::Namespaces {
        return Err(ApiError::method_not_allowed());
    }
    let (options, dry_run) = delete_options(request)?;
    let mut txn = request.cluster.store.txn();
    let deletion = registry::delete(
        &mut txn,
        request.resource(),
        &request.key(),
        &options,
        dry_run,
    )?;
    drop(txn);
    let body = if deletion.removed && request.resource() != Resource::Pods {
        success_status(request.resource(), &deletion.object)
    } else {
        (*deletion.object).clone()
    };
    Ok(with_warnings(
        json_response(StatusCode::OK, &body),
        &deletion.warnings,
    ))
}

/// The `Status` a delete returns for resources that do not return the deleted object.
fn success_status(resource: Resource, object: &Value) -> Value {
    let mut details = json!({
        "name": meta::name(object),
        "kind": resource.plural(),
        "uid": meta::uid(object),
    });
    if !resource.group().is_empty() {
        details["group"] = json!(resource.group());
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
}

pub fn delete_collection(request: &Request) -> Result<Response, ApiError> {
    request.only_subresources(&[])?;
    if request.resource() == Resource::Namespaces {
        return Err(ApiError::method_not_allowed());
    }
    let (options, dry_run) = delete_options(request)?;
    let selection = list::Selection::parse(request)?;
    let mut txn = request.cluster.store.txn();
    let namespace = request.path.namespace.as_deref();
    let mut deleted = Vec::new();
    let mut warnings = Vec::new();
    for object in txn.list(request.resource(), namespace, None) {
        if !selection.matches(&object) {
            continue;
        }
        let deletion = registry::delete(
            &mut txn,
            request.resource(),
            &ObjectKey::of(&object),
            &options,
            dry_run,
        )?;
        warnings = deletion.warnings;
        deleted.push(list::list_item(&deletion.object));
    }
    let body = json!({
        "kind": format!("{}List", request.resource().kind()),
        "apiVersion": request.resource().api_version(),
        "metadata": { "resourceVersion": txn.revision().to_string() },
        "items": deleted,
    });
    Ok(with_warnings(
        json_response(StatusCode::OK, &body),
        &warnings,
    ))
}

/// `DeleteOptions` from the body (when there is one) and the query, and whether it is a dry
/// run.
fn delete_options(request: &Request) -> Result<(DeleteOptions, bool), ApiError> {
    let body: Value = if request.body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&request.body).map_err(|e| {
            ApiError::bad_request(format!(
                "DeleteOptions in version \"v1\" cannot be handled: {e}"
            ))
        })?
    };
    parse_delete_options(&body, &request.query)
}

/// `DeleteOptions` from a JSON body and the query parameters of the same names.
pub fn parse_delete_options(
    body: &Value,
    query: &Query,
) -> Result<(DeleteOptions, bool), ApiError> {
    let grace = match body.get("gracePeriodSeconds").and_then(Value::as_i64) {
        Some(seconds) => Some(seconds),
        None => query.number("gracePeriodSeconds")?,
    };
    let policy = body
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .or_else(|| query.get("propagationPolicy"));
    let orphan = body
        .get("orphanDependents")
        .and_then(Value::as_bool)
        .or_else(|| query.get("orphanDependents").map(|v| v == "true"));
    let propagation = match (policy, orphan) {
        (Some("Orphan"), _) => Some(Propagation::Orphan),
        (Some("Background"), _) => Some(Propagation::Background),
        (Some("Foreground"), _) => Some(Propagation::Foreground),
        (Some(other), _) => {
            return Err(ApiError::unprocessable(format!(
                "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \
                 \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
            )))
        }
        (None, Some(true)) => Some(Propagation::Orphan),
        (None, Some(false)) => Some(Propagation::Background),
        (None, None) => None,
    };
    let precondition = |field: &str| {
        body.pointer(&format!("/preconditions/{field}"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let dry_run = query.dry_run()
        || body["dryRun"]
            .as_array()
            .is_some_and(|modes| modes.iter().any(|m| m == "All"));
    Ok((
        DeleteOptions {
            grace_period_seconds: grace,
            propagation,
            precondition_uid: precondition("uid"),
            precondition_resource_version: precondition("resourceVersion"),
        },
        dry_run,
    ))
}
