//! AWS errors in the classes the scheduler acts on (`BackendError`): throttling, 5xx,
//! timeouts and network trouble are `Unavailable` (retried); account limits and capacity are
//! `AtCapacity` (the fleet is held back); invalid input is `Invalid` with AWS's message;
//! missing permissions or credentials are `Fatal`. Messages carry the operation and AWS's
//! own words, never a request's values.

use aws_sdk_ssm::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use updraft_backends::BackendError;

/// The class of an AWS error, before it is given a backend and a launch name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    Unavailable,
    AtCapacity,
    Invalid,
    Fatal,
}

impl ErrorClass {
    /// The class as a metric label, the same words `BackendError::metric_label` uses.
    pub fn label(self) -> &'static str {
        match self {
            ErrorClass::Unavailable => "unavailable",
            ErrorClass::AtCapacity => "at_capacity",
            ErrorClass::Invalid => "invalid",
            ErrorClass::Fatal => "fatal",
        }
    }
}

/// One AWS call that failed: what was called, AWS's error code (if any) and its class.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{operation}: {detail}")]
pub struct AwsError {
    pub operation: &'static str,
    pub code: Option<String>,
    pub class: ErrorClass,
    pub detail: String,
}

const THROTTLED: [&str; 8] = [
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "ProvisionedThroughputExceededException",
    "SlowDown",
];
const SERVER: [&str; 5] = [
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalFailure",
    "InternalServerError",
    "ServerException",
];
const CAPACITY: [&str; 4] = [
    "AccountLimitExceededException",
    "LimitExceededException",
    "ServiceQuotaExceededException",
    "ParameterLimitExceeded",
];
const FORBIDDEN: [&str; 9] = [
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "ExpiredTokenException",
    "SignatureDoesNotMatch",
    "MissingAuthenticationToken",
];

/// The class of an error `code` with HTTP `status`.
pub fn class_of(code: Option<&str>, status: Option<u16>) -> ErrorClass {
    match (code, status) {
        (Some(code), _) if THROTTLED.contains(&code) || SERVER.contains(&code) => {
            ErrorClass::Unavailable
        }
        (Some(code), _) if CAPACITY.contains(&code) => ErrorClass::AtCapacity,
        (Some(code), _) if FORBIDDEN.contains(&code) => ErrorClass::Fatal,
        (_, Some(429)) => ErrorClass::Unavailable,
        (_, Some(status)) if status >= 500 => ErrorClass::Unavailable,
        (_, Some(401 | 403)) => ErrorClass::Fatal,
        (_, Some(_)) => ErrorClass::Invalid,
        (Some(_), None) => ErrorClass::Invalid,
        (None, None) => ErrorClass::Unavailable,
    }
}

/// Classify an SDK error from `operation` (e.g. `"StartBuild"`).
pub fn classify<E>(operation: &'static str, error: &SdkError<E>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = error.raw_response().map(|r| r.status().as_u16());
    let (code, detail) = match error {
        SdkError::ServiceError(_) => {
            let code = error.code().map(str::to_string);
            let message = error.message().unwrap_or("no message").to_string();
            let detail = match (&code, status) {
                (Some(code), _) => format!("{code}: {message}"),
                (None, Some(status)) => format!("HTTP {status}: {message}"),
                (None, None) => message,
            };
            (code, detail)
        }
        SdkError::TimeoutError(_) => (None, "timed out".to_string()),
        other => (None, DisplayErrorContext(other).to_string()),
    };
    let class = match error {
        SdkError::ServiceError(_) => class_of(code.as_deref(), status),
        SdkError::ResponseError(_)
            if status.is_some_and(|s| (400..500).contains(&s) && s != 429) =>
        {
            class_of(None, status)
        }
        _ => ErrorClass::Unavailable,
    };
    AwsError {
        operation,
        code,
        class,
        detail,
    }
}

impl AwsError {
    /// Whether AWS said the thing asked about does not exist.
    pub fn is_not_found(&self) -> bool {
        self.code.as_deref().is_some_and(|code| {
            matches!(
                code,
                "ResourceNotFoundException"
                    | "ParameterNotFound"
                    | "NoSuchKey"
                    | "NotFound"
                    | "NoSuchBucket"
                    | "ClusterNotFoundException"
                    | "AWS.SimpleQueueService.NonExistentQueue"
                    | "QueueDoesNotExist"
            )
        })
    }

    /// As the scheduler's error class, for `backend` and (for `Invalid`) launch `name`.
    pub fn into_backend(self, backend: &'static str, name: &str) -> BackendError {
        let detail = self.to_string();
        match self.class {
            ErrorClass::Unavailable => BackendError::Unavailable { backend, detail },
            ErrorClass::AtCapacity => BackendError::AtCapacity { backend, detail },
            ErrorClass::Invalid => BackendError::Invalid {
                backend,
                name: name.to_string(),
                detail,
            },
            ErrorClass::Fatal => BackendError::Fatal { backend, detail },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses_map_to_the_scheduler_classes() {
        assert_eq!(
            class_of(Some("ThrottlingException"), Some(400)),
            ErrorClass::Unavailable
        );
        assert_eq!(class_of(None, Some(503)), ErrorClass::Unavailable);
        assert_eq!(class_of(None, Some(429)), ErrorClass::Unavailable);
        assert_eq!(
            class_of(Some("AccountLimitExceededException"), Some(400)),
            ErrorClass::AtCapacity
        );
        assert_eq!(
            class_of(Some("InvalidInputException"), Some(400)),
            ErrorClass::Invalid
        );
        assert_eq!(
            class_of(Some("AccessDeniedException"), Some(400)),
            ErrorClass::Fatal
        );
        assert_eq!(class_of(None, Some(403)), ErrorClass::Fatal);
        assert_eq!(class_of(None, None), ErrorClass::Unavailable);
    }

    #[test]
    fn backend_errors_keep_the_operation_and_aws_words() {
        let error = AwsError {
            operation: "StartBuild",
            code: Some("InvalidInputException".into()),
            class: ErrorClass::Invalid,
            detail: "InvalidInputException: Invalid compute type".into(),
        };
        let backend = error.into_backend("codebuild", "updraft-x");
        assert_eq!(backend.metric_label(), "invalid");
        assert!(backend
            .to_string()
            .contains("StartBuild: InvalidInputException: Invalid compute type"));
    }
}
