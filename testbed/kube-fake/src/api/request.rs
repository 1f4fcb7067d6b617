//! Reading a request the way the API server's request-info resolver does: which resource,
//! namespace, name and subresource a path names, the verb, and the query parameters.

use crate::error::ApiError;
use crate::resource::Resource;
use axum::http::Method;
use std::collections::BTreeMap;

/// What a path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/`
    Root,
    /// `/version`
    Version,
    /// `/healthz`, `/readyz`, `/livez`
    Health,
    /// `/api`
    CoreVersions,
    /// `/apis`
    Groups,
    /// `/apis/{group}`
    Group(String),
    /// `/api/v1` or `/apis/{group}/{version}`
    ResourceList { group: String, version: String },
    /// Anything under a resource.
    Resource(ResourcePath),
}

/// A path under a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePath {
    pub resource: Resource,
    /// The namespace in the path; `None` for all namespaces or a cluster-scoped resource.
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// The deprecated `/watch/` path prefix was used.
    pub watch_prefix: bool,
}

impl ResourcePath {
    /// The resource as request counts name it: `pods`, `pods/log`, `jobs/status`.
    pub fn counted_as(&self) -> String {
        match &self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource.plural()),
            None => self.resource.plural().to_string(),
        }
    }
}

/// Resolves a path, or `None` when the server has nothing there.
pub fn route(path: &str) -> Option<Route> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        [] => Some(Route::Root),
        ["version"] => Some(Route::Version),
        ["healthz" | "readyz" | "livez"] => Some(Route::Health),
        ["api"] => Some(Route::CoreVersions),
        ["apis"] => Some(Route::Groups),
        ["apis", group] => Some(Route::Group(group.to_string())),
        ["api", version, rest @ ..] => under_version("", version, rest),
        ["apis", group, version, rest @ ..] => under_version(group, version, rest),
        _ => None,
    }
}

fn under_version(group: &str, version: &str, rest: &[&str]) -> Option<Route> {
    if rest.is_empty() {
        let served = Resource::ALL
            .iter()
            .any(|r| r.group() == group && version == "v1");
        return served.then(|| Route::ResourceList {
            group: group.into(),
            version: version.into(),
        });
    }
    let (watch_prefix, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        rest => (false, rest),
    };
    let find = |plural: &str| Resource::find(group, version, plural);
    let path = |resource, namespace: Option<&str>, name: Option<&str>, sub: Option<&str>| {
        Some(Route::Resource(ResourcePath {
            resource,
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
            subresource: sub.map(str::to_string),
            watch_prefix,
        }))
    };
    let namespaces = (group.is_empty() && version == "v1").then_some(Resource::Namespaces);
    match rest {
        ["namespaces"] => path(namespaces?, None, None, None),
        ["namespaces", ns] => path(namespaces?, None, Some(ns), None),
        ["namespaces", ns, sub @ ("status" | "finalize")] => {
            path(namespaces?, None, Some(ns), Some(sub))
        }
        ["namespaces", ns, plural] => path(
            find(plural).filter(|r| r.namespaced())?,
            Some(ns),
            None,
            None,
        ),
        ["namespaces", ns, plural, name] => path(
            find(plural).filter(|r| r.namespaced())?,
            Some(ns),
            Some(name),
            None,
        ),
        ["namespaces", ns, plural, name, sub] => path(
            find(plural).filter(|r| r.namespaced())?,
            Some(ns),
            Some(name),
            Some(sub),
        ),
        [plural] => path(find(plural)?, None, None, None),
        [plural, name] => path(
            find(plural).filter(|r| !r.namespaced())?,
            None,
            Some(name),
            None,
        ),
        [plural, name, sub] => path(
            find(plural).filter(|r| !r.namespaced())?,
            None,
            Some(name),
            Some(sub),
        ),
        _ => None,
    }
}

/// The Kubernetes verb of a request (`list`, `watch`, `deletecollection`, ...).
pub fn verb(method: &Method, path: &ResourcePath, query: &Query) -> Result<&'static str, ApiError> {
    let watching = path.watch_prefix || query.flag("watch");
    let verb = match (
        method.as_str(),
        path.name.is_some(),
        path.subresource.is_some(),
    ) {
        ("GET", false, _) if watching => "watch",
        ("GET", false, _) => "list",
        ("GET", true, false) if watching => "watch",
        ("GET", true, _) => "get",
        ("POST", false, _) => "create",
        ("POST", true, true) => "create",
        ("PUT", true, _) => "update",
        ("PATCH", true, _) => "patch",
        ("DELETE", true, false) => "delete",
        ("DELETE", false, _) => "deletecollection",
        _ => return Err(ApiError::method_not_allowed()),
    };
    Ok(verb)
}

/// Query parameters (the last value wins, as Go's `url.Values.Get` reads the first; clients
/// send each once).
#[derive(Debug, Clone, Default)]
pub struct Query(BTreeMap<String, String>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Query {
        Query(
            url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// A boolean parameter, read as Go's `strconv.ParseBool` reads it (`1`, `t`, `true`,
    /// `True`, `TRUE`; the Python client sends `True`).
    pub fn flag(&self, key: &str) -> bool {
        matches!(
            self.get(key),
            Some("1" | "t" | "T" | "true" | "True" | "TRUE")
        )
    }

    /// A non-negative integer parameter; malformed values are a 400 as on the real server.
    pub fn number(&self, key: &str) -> Result<Option<i64>, ApiError> {
        self.get(key)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid value for {key}: {v:?} is not a number"))
                })
            })
            .transpose()
    }

    /// `dryRun=All`.
    pub fn dry_run(&self) -> bool {
        self.get("dryRun") == Some("All")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(path: &str) -> ResourcePath {
        match route(path) {
            Some(Route::Resource(r)) => r,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn resolves_namespaced_cluster_and_all_namespace_paths() {
        let r = resource("/apis/batch/v1/namespaces/ci/jobs/build-1");
        assert_eq!(
            (r.resource, r.namespace.as_deref(), r.name.as_deref()),
            (Resource::Jobs, Some("ci"), Some("build-1"))
        );
        let r = resource("/apis/batch/v1/jobs");
        assert_eq!((r.namespace, r.name), (None, None));
        let r = resource("/api/v1/namespaces/ci");
        assert_eq!(
            (r.resource, r.name.as_deref()),
            (Resource::Namespaces, Some("ci"))
        );
        let r = resource("/api/v1/namespaces/ci/pods/p/log");
        assert_eq!(r.counted_as(), "pods/log");
        assert!(resource("/api/v1/watch/namespaces/ci/pods").watch_prefix);
        assert_eq!(route("/apis/batch/v2/jobs"), None);
        assert_eq!(route("/api/v1/namespaces/ci/widgets"), None);
        assert_eq!(route("/api/v1/secrets/x"), None);
    }

    #[test]
    fn verbs_follow_method_and_shape() {
        let q = Query::parse(Some("&watch=true&timeoutSeconds=290"));
        let collection = resource("/api/v1/namespaces/ci/pods");
        assert_eq!(verb(&Method::GET, &collection, &q).unwrap(), "watch");
        assert_eq!(
            verb(&Method::GET, &collection, &Query::default()).unwrap(),
            "list"
        );
        assert_eq!(
            verb(&Method::DELETE, &collection, &q).unwrap(),
            "deletecollection"
        );
        assert_eq!(verb(&Method::PUT, &collection, &q).unwrap_err().code, 405);
        assert_eq!(q.number("timeoutSeconds").unwrap(), Some(290));
    }
}
