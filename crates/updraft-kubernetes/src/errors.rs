//! Kubernetes API errors as backend error classes, so the scheduler knows what to do: 422
//! Invalid → `Invalid` with each field and reason (the job fails once); 403 "exceeded quota"
//! → `AtCapacity` (the fleet is held back); any other 401/403 (RBAC) or a namespace that does
//! not exist → `Fatal`; 429, 5xx, timeouts and connection errors → `Unavailable` (retried).

use kube::core::Status;
use updraft_backends::BackendError;

pub const BACKEND: &str = "kubernetes";

/// The class of `error`, met while `doing` (`"creating Job updraft-… in ci"`), for `launch`
/// when one is concerned. Messages carry Kubernetes' words, never a credential (the API
/// server does not echo Secret data).
/// `launch`: the launch or pool member the call was about, named in an `Invalid` error.
pub fn classify(error: &kube::Error, doing: &str, launch: Option<&str>) -> BackendError {
    match error {
        kube::Error::Api(status) => classify_status(status, doing, launch),
        other => BackendError::Unavailable {
            backend: BACKEND,
            detail: format!("{doing}: {other}"),
        },
    }
}

fn classify_status(status: &Status, doing: &str, launch: Option<&str>) -> BackendError {
    let message = status.message.trim();
    match status.code {
        422 | 400 => BackendError::Invalid {
            backend: BACKEND,
            name: launch.unwrap_or_default().to_string(),
            detail: format!("Kubernetes refused it ({doing}): {}", field_causes(status)),
        },
        403 if message.contains("exceeded quota") => BackendError::AtCapacity {
            backend: BACKEND,
            detail: format!("{doing}: {message}"),
        },
        401 | 403 => BackendError::Fatal {
            backend: BACKEND,
            detail: format!(
                "{doing}: the API server refused (HTTP {}): {message}; grant the scheduler's service account the Role in deploy/kubernetes/base/role.yaml",
                status.code
            ),
        },
        404 if status.details.as_ref().is_some_and(|d| d.kind == "namespaces") => BackendError::Fatal {
            backend: BACKEND,
            detail: format!("{doing}: {message}; create the namespace or fix the fleet's namespace"),
        },
        _ => BackendError::Unavailable {
            backend: BACKEND,
            detail: format!("{doing}: HTTP {}: {message}", status.code),
        },
    }
}

/// `field: reason` for each cause the API server gave, else its message.
fn field_causes(status: &Status) -> String {
    let causes: Vec<String> = status
        .details
        .iter()
        .flat_map(|d| &d.causes)
        .map(|cause| match cause.field.as_str() {
            "" => cause.message.clone(),
            field => format!("{field}: {}", cause.message),
        })
        .collect();
    if causes.is_empty() {
        status.message.clone()
    } else {
        causes.join("; ")
    }
}

/// Whether `error` says the object already exists.
pub fn is_already_exists(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409 && status.reason == "AlreadyExists")
}

/// Whether `error` says the object does not exist.
pub fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::response::{StatusCause, StatusDetails};

    fn details(kind: &str, causes: Vec<StatusCause>) -> StatusDetails {
        StatusDetails {
            name: String::new(),
            group: String::new(),
            kind: kind.into(),
            uid: String::new(),
            causes,
            retry_after_seconds: 0,
        }
    }

    fn status(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(Status::failure(message, reason).with_code(code)))
    }

    #[test]
    fn each_status_maps_to_what_the_scheduler_should_do() {
        let name = updraft_backends::LaunchName::for_job(uuid::Uuid::new_v4());
        let invalid = kube::Error::Api(Box::new(
            Status::failure("Job.batch is invalid", "Invalid")
                .with_code(422)
                .with_details(details(
                    "jobs",
                    vec![StatusCause {
                        reason: "FieldValueRequired".into(),
                        message: "Required value".into(),
                        field: "spec.template.spec.containers[0].image".into(),
                    }],
                )),
        ));
        let error = classify(&invalid, "creating Job x in ci", Some(name.as_str()));
        assert_eq!(error.metric_label(), "invalid");
        assert!(error.to_string().ends_with("Kubernetes refused it (creating Job x in ci): spec.template.spec.containers[0].image: Required value"), "{error}");

        let quota = status(403, "Forbidden", "jobs.batch \"x\" is forbidden: exceeded quota: ci-quota, requested: count/jobs.batch=1");
        assert_eq!(
            classify(&quota, "creating", None).metric_label(),
            "at_capacity"
        );
        let rbac = status(403, "Forbidden", "jobs.batch is forbidden: User \"system:serviceaccount:ci:updraft\" cannot create resource \"jobs\"");
        let error = classify(&rbac, "creating", None);
        assert_eq!(error.metric_label(), "fatal");
        assert!(error.to_string().contains("role.yaml"), "{error}");
        assert_eq!(
            classify(&status(429, "TooManyRequests", "slow down"), "x", None).metric_label(),
            "unavailable"
        );
        assert_eq!(
            classify(&status(503, "ServiceUnavailable", "etcd"), "x", None).metric_label(),
            "unavailable"
        );
        let missing_namespace = kube::Error::Api(Box::new(
            Status::failure("namespaces \"ci\" not found", "NotFound")
                .with_code(404)
                .with_details(details("namespaces", Vec::new())),
        ));
        assert_eq!(
            classify(&missing_namespace, "x", None).metric_label(),
            "fatal"
        );
        assert!(is_already_exists(&status(409, "AlreadyExists", "exists")));
        assert!(is_not_found(&status(404, "NotFound", "gone")));
    }
}
