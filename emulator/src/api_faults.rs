//! Injected API errors: the next N calls of an operation (or of any) fail with a chosen error
//! code, exactly as the real service words it, so that a client's handling of every error
//! can be tested (`POST /faults/api-fail`, [`crate::FaultControl::fail_api`]).

use std::str::FromStr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use axum::http::StatusCode;
use serde::Serialize;

/// An error the service can answer any call with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApiFailCode {
    /// 400 `AccessDeniedException`, naming the action and an assumed role.
    AccessDenied,
    /// 400 `ExpiredTokenException`.
    ExpiredToken,
    /// 400 `ThrottlingException`.
    Throttling,
    /// 400 `InvalidDocument`.
    InvalidDocument,
    /// 400 `TargetNotConnected`.
    TargetNotConnected,
    /// 400 `UnrecognizedClientException` (an unknown access key id).
    UnrecognizedClient,
    /// 500 `InternalServerError`.
    Internal,
}

impl FromStr for ApiFailCode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text {
            "access-denied" => Self::AccessDenied,
            "expired-token" => Self::ExpiredToken,
            "throttling" => Self::Throttling,
            "invalid-document" => Self::InvalidDocument,
            "target-not-connected" => Self::TargetNotConnected,
            "unrecognized-client" => Self::UnrecognizedClient,
            "internal" => Self::Internal,
            other => {
                return Err(format!(
                    "{other:?} is not access-denied, expired-token, throttling, \
                     invalid-document, target-not-connected, unrecognized-client or internal"
                ));
            }
        })
    }
}

impl ApiFailCode {
    /// Status, `__type` and message for a failed call of `operation`.
    pub(crate) fn answer(self, operation: &str) -> (StatusCode, &'static str, String) {
        let bad = StatusCode::BAD_REQUEST;
        match self {
            Self::AccessDenied => (
                bad,
                "AccessDeniedException",
                format!(
                    "User: arn:aws:sts::123456789012:assumed-role/Emulator/tester is not \
                     authorized to perform: ssm:{operation} on resource: \
                     arn:aws:ssm:us-east-1:123456789012:* because no identity-based policy \
                     allows the ssm:{operation} action"
                ),
            ),
            Self::ExpiredToken => (
                bad,
                "ExpiredTokenException",
                "The security token included in the request is expired".to_owned(),
            ),
            Self::Throttling => (bad, "ThrottlingException", "Rate exceeded".to_owned()),
            Self::InvalidDocument => (
                bad,
                "InvalidDocument",
                "The specified document does not exist.".to_owned(),
            ),
            Self::TargetNotConnected => (
                bad,
                "TargetNotConnected",
                "The target is not connected.".to_owned(),
            ),
            Self::UnrecognizedClient => (
                bad,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.".to_owned(),
            ),
            Self::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerError",
                "Internal server error".to_owned(),
            ),
        }
    }
}

/// One armed failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ArmedFailure {
    /// The operation it applies to (`StartSession` …); `None`: every operation.
    pub operation: Option<String>,
    /// The error.
    pub code: ApiFailCode,
    /// Calls still to fail.
    pub remaining: u32,
}

/// The armed failures, oldest first.
#[derive(Debug, Default)]
pub(crate) struct ApiFailures {
    armed: Mutex<Vec<ArmedFailure>>,
}

impl ApiFailures {
    fn lock(&self) -> MutexGuard<'_, Vec<ArmedFailure>> {
        self.armed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the next `count` calls of `operation` (or of any) fail with `code`.
    pub(crate) fn arm(&self, operation: Option<String>, code: ApiFailCode, count: u32) {
        if count > 0 {
            self.lock().push(ArmedFailure {
                operation,
                code,
                remaining: count,
            });
        }
    }

    /// The code this call of `operation` fails with, if one is armed (and counts it).
    pub(crate) fn take(&self, operation: &str) -> Option<ApiFailCode> {
        let mut armed = self.lock();
        let index = armed
            .iter()
            .position(|f| f.operation.as_deref().is_none_or(|op| op == operation))?;
        let code = armed[index].code;
        armed[index].remaining -= 1;
        if armed[index].remaining == 0 {
            armed.remove(index);
        }
        Some(code)
    }

    /// Disarms everything.
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    /// What is armed now.
    pub(crate) fn armed(&self) -> Vec<ArmedFailure> {
        self.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_per_operation() {
        let failures = ApiFailures::default();
        failures.arm(Some("StartSession".into()), ApiFailCode::Throttling, 2);
        failures.arm(None, ApiFailCode::Internal, 1);
        assert_eq!(failures.take("StartSession"), Some(ApiFailCode::Throttling));
        assert_eq!(failures.take("ResumeSession"), Some(ApiFailCode::Internal));
        assert_eq!(failures.take("ResumeSession"), None);
        assert_eq!(failures.take("StartSession"), Some(ApiFailCode::Throttling));
        assert_eq!(failures.take("StartSession"), None);
        assert!(failures.armed().is_empty());
        assert_eq!("access-denied".parse(), Ok(ApiFailCode::AccessDenied));
        assert!("nope".parse::<ApiFailCode>().is_err());
        let (_, code, message) = ApiFailCode::AccessDenied.answer("StartSession");
        assert_eq!(code, "AccessDeniedException");
        assert!(message.contains("perform: ssm:StartSession"), "{message}");
    }
}
