//! AWS errors in the classes the pool manager acts on (`BackendError`): throttling, 5xx,
//! timeouts and network trouble are `Unavailable` (tried again at the next step); capacity
//! and account limits are `AtCapacity`; missing permissions or credentials are `Fatal`;
//! anything else AWS refuses is `Invalid`, with AWS's own words. A request's values never
//! appear.

use aws_sdk_autoscaling::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use updraft_backends::BackendError;

pub(crate) const BACKEND: &str = "ec2";

const UNAVAILABLE: [&str; 9] = [
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "ServiceUnavailable",
    "InternalFailure",
    "InternalError",
    "ResourceContention",
    "ScalingActivityInProgress",
    "IncorrectInstanceState",
];
const CAPACITY: [&str; 4] = [
    "LimitExceeded",
    "InsufficientInstanceCapacity",
    "MaxSpotInstanceCountExceeded",
    "InstanceLimitExceeded",
];
const FORBIDDEN: [&str; 7] = [
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "AuthFailure",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
];

/// An SDK error of `operation` (e.g. `"SetDesiredCapacity"`) as a `BackendError`.
pub(crate) fn classify<E>(operation: &'static str, error: &SdkError<E>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = error.raw_response().map(|r| r.status().as_u16());
    let code = error.code().map(str::to_string);
    let detail = match (error, &code) {
        (SdkError::ServiceError(_), Some(code)) => format!(
            "{operation}: {code}: {}",
            error.message().unwrap_or("no message")
        ),
        (SdkError::TimeoutError(_), _) => format!("{operation}: timed out"),
        (other, _) => format!("{operation}: {}", DisplayErrorContext(other)),
    };
    let code = code.as_deref();
    let backend = BACKEND;
    match (code, status) {
        (Some(code), _) if FORBIDDEN.contains(&code) => BackendError::Fatal { backend, detail },
        (Some(code), _) if CAPACITY.contains(&code) => BackendError::AtCapacity { backend, detail },
        (Some(code), _) if UNAVAILABLE.contains(&code) => {
            BackendError::Unavailable { backend, detail }
        }
        (_, Some(401 | 403)) => BackendError::Fatal { backend, detail },
        (_, Some(status)) if status == 429 || status >= 500 => {
            BackendError::Unavailable { backend, detail }
        }
        (Some(_), _) | (_, Some(_)) => BackendError::Invalid {
            backend,
            name: operation.to_string(),
            detail,
        },
        (None, None) => BackendError::Unavailable { backend, detail },
    }
}

/// Whether AWS said the thing asked about does not exist.
pub(crate) fn is_not_found<E>(error: &SdkError<E>) -> bool
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    error.code().is_some_and(|code| {
        code.contains("NotFound")
            || code == "ValidationError" && error.message().is_some_and(|m| m.contains("not found"))
    })
}
