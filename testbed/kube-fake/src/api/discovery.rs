//! Discovery documents (`/version`, `/api`, `/apis`, `/api/v1`, `/apis/{group}/{version}`)
//! listing exactly what the fake serves, for clients that probe before they call.

use super::json_response;
use super::request::Route;
use crate::error::ApiError;
use crate::resource::Resource;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// The Kubernetes version the fake reports and models.
pub const KUBERNETES_MINOR: &str = "33";

pub fn serve(route: &Route, authority: &str) -> Response {
    let body = match route {
        Route::Root => {
            json!({ "paths": ["/api", "/api/v1", "/apis", "/apis/batch", "/apis/batch/v1",
            "/apis/coordination.k8s.io", "/apis/coordination.k8s.io/v1", "/healthz", "/livez",
            "/readyz", "/version"] })
        }
        Route::Version => json!({
            "major": "1",
            "minor": KUBERNETES_MINOR,
            "gitVersion": format!("v1.{KUBERNETES_MINOR}.0+kube-fake"),
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2025-01-01T00:00:00Z",
            "goVersion": "go1.24.0",
            "compiler": "gc",
            "platform": "linux/amd64",
        }),
        Route::Health => return (StatusCode::OK, "ok").into_response(),
        Route::CoreVersions => json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": authority }],
        }),
        Route::Groups => json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": groups().iter().map(|g| group(g)).collect::<Vec<_>>(),
        }),
        Route::Group(name) if groups().contains(&name.as_str()) => {
            let mut body = group(name);
            body["kind"] = json!("APIGroup");
            body["apiVersion"] = json!("v1");
            body
        }
        Route::ResourceList { group, version } => resource_list(group, version),
        Route::Group(_) | Route::Resource(_) => return ApiError::unknown_path().into_response(),
    };
    json_response(StatusCode::OK, &body)
}

fn groups() -> Vec<&'static str> {
    let mut groups: Vec<&str> = Resource::ALL
        .iter()
        .map(|r| r.group())
        .filter(|g| !g.is_empty())
        .collect();
    groups.dedup();
    groups
}

fn group(name: &str) -> Value {
    let version = json!({ "groupVersion": format!("{name}/v1"), "version": "v1" });
    json!({ "name": name, "versions": [version], "preferredVersion": version })
}

fn resource_list(group: &str, version: &str) -> Value {
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let mut resources = Vec::new();
    for resource in Resource::ALL.into_iter().filter(|r| r.group() == group) {
        let mut verbs = vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ];
        if resource == Resource::Namespaces {
            verbs.retain(|v| !v.starts_with("delete"));
        }
        resources.push(json!({
            "name": resource.plural(),
            "singularName": resource.singular(),
            "namespaced": resource.namespaced(),
            "kind": resource.kind(),
            "verbs": verbs,
            "shortNames": resource.short_names(),
            "storageVersionHash": "",
        }));
        if resource.has_status() {
            resources.push(subresource(
                resource,
                "status",
                "",
                &["get", "patch", "update"],
            ));
        }
        if resource == Resource::Pods {
            resources.push(subresource(resource, "log", "Pod", &["get"]));
            resources.push(subresource(resource, "eviction", "Eviction", &["create"]));
        }
    }
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    })
}

fn subresource(resource: Resource, name: &str, kind: &str, verbs: &[&str]) -> Value {
    let mut entry = json!({
        "name": format!("{}/{name}", resource.plural()),
        "singularName": "",
        "namespaced": resource.namespaced(),
        "kind": if kind.is_empty() { resource.kind() } else { kind },
        "verbs": verbs,
    });
    if kind == "Eviction" {
        entry["group"] = json!("policy");
        entry["version"] = json!("v1");
    }
    entry
}
