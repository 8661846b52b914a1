//! Errors of the SSM API calls, classified for the recovery logic.

use std::error::Error as StdError;
use std::fmt;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_ssm::error::{ProvideErrorMetadata, SdkError};

use crate::remedy::{self, Remedy};

/// Longest message kept from the SDK; error chains can be long and logs should stay readable.
const MAX_MESSAGE_CHARS: usize = 600;

/// What separates an error's message from its remedy ([`ApiError::remedy`]).
pub const REMEDY_SEPARATOR: &str = " — remedy: ";

/// What went wrong, coarsely, so the runtime can pick a recovery tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ApiErrorKind {
    /// The session does not exist any more (`DoesNotExistException`): restart, don't resume.
    DoesNotExist,
    /// The caller may not do this, or the credentials are not recognised (`AccessDenied…`,
    /// `UnrecognizedClient…`, `InvalidSignature…`).
    AccessDenied,
    /// The credentials have expired (`ExpiredToken…`); a later call may load fresh ones.
    ExpiredToken,
    /// The service throttled the call (`Throttling…`, `TooManyRequests…`).
    Throttling,
    /// The document does not exist or rejects the parameters (`InvalidDocument…`,
    /// `InvalidParameters`, `ValidationException`).
    InvalidDocument,
    /// The target has no connected SSM agent (`TargetNotConnected`).
    TargetNotConnected,
    /// No credentials could be loaded from any source, or a source failed.
    Credentials,
    /// No region is configured (policy, `AWS_REGION`, profile) or the configuration is unusable.
    Configuration,
    /// The endpoint could not be reached or did not answer in time.
    Transport,
    /// The service failed (`InternalServerError`, HTTP 5xx).
    ServerError,
    /// Anything else, including a response missing required fields.
    Other,
}

impl ApiErrorKind {
    fn describe(self) -> &'static str {
        match self {
            Self::DoesNotExist => "session does not exist",
            Self::AccessDenied => "access denied",
            Self::ExpiredToken => "credentials expired",
            Self::Throttling => "throttled",
            Self::InvalidDocument => "invalid document or parameters",
            Self::TargetNotConnected => "target not connected",
            Self::Credentials => "no usable AWS credentials",
            Self::Configuration => "AWS configuration",
            Self::Transport => "endpoint unreachable",
            Self::ServerError => "service error",
            Self::Other => "error",
        }
    }

    /// Classifies a service error code (after any `prefix#`).
    pub(crate) fn from_code(code: &str) -> Self {
        let code = code.rsplit('#').next().unwrap_or(code);
        match code {
            "DoesNotExistException" | "DoesNotExist" => Self::DoesNotExist,
            "AccessDeniedException"
            | "AccessDenied"
            | "UnrecognizedClientException"
            | "InvalidClientTokenId"
            | "InvalidSignatureException"
            | "SignatureDoesNotMatch"
            | "MissingAuthenticationToken" => Self::AccessDenied,
            "ExpiredTokenException" | "ExpiredToken" | "RequestExpired" => Self::ExpiredToken,
            "ThrottlingException"
            | "Throttling"
            | "TooManyRequestsException"
            | "RequestLimitExceeded" => Self::Throttling,
            "InvalidDocument"
            | "InvalidDocumentException"
            | "InvalidParameters"
            | "ValidationException" => Self::InvalidDocument,
            "TargetNotConnected" | "TargetNotConnectedException" => Self::TargetNotConnected,
            "InternalServerError" | "InternalFailure" | "ServiceUnavailable" => Self::ServerError,
            _ => Self::Other,
        }
    }
}

impl fmt::Display for ApiErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// A failed SSM API call. `Display` gives one line: operation, kind, service code and message;
/// it never contains tokens, credentials or signed URLs (the SDK does not put them in errors,
/// and responses carrying tokens are never quoted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation}: {kind}{}: {message}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
pub struct ApiError {
    /// The operation that failed (`StartSession`, `ResumeSession`, `TerminateSession`,
    /// `LoadCredentials`, `LoadConfig`).
    pub operation: &'static str,
    /// Classification for the recovery logic.
    pub kind: ApiErrorKind,
    /// The service's error code, if the service answered with one.
    pub code: Option<String>,
    /// Human-readable detail.
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(
        operation: &'static str,
        kind: ApiErrorKind,
        message: impl Into<String>,
    ) -> Self {
        Self {
            operation,
            kind,
            code: None,
            message: truncate(message.into()),
        }
    }

    /// True when the service says the session is over (no such session, or "already
    /// terminated"): resuming is pointless, a new StartSession is needed.
    pub fn is_session_gone(&self) -> bool {
        self.kind == ApiErrorKind::DoesNotExist
            || self
                .message
                .to_ascii_lowercase()
                .contains("already terminated")
    }

    /// True for errors that typically go away by waiting: throttling, unreachable endpoint,
    /// service failures. Credential errors ([`ApiErrorKind::ExpiredToken`],
    /// [`ApiErrorKind::Credentials`]) can also heal — when the credentials file is rewritten — but
    /// that is the recovery policy's call, so they are not counted here.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            ApiErrorKind::Throttling | ApiErrorKind::Transport | ApiErrorKind::ServerError
        )
    }

    /// What to do about this failure, if anything recognisable: one line naming the action,
    /// the principal kind, `aws sso login --profile PROFILE` and the like
    /// ([`crate::remedy`] holds every text). `profile` is the profile in use, for remedies
    /// that name it.
    pub fn remedy(&self, profile: &str) -> Option<Remedy> {
        let code = self
            .code
            .as_deref()
            .map(|c| c.rsplit('#').next().unwrap_or(c));
        let lower = self.message.to_ascii_lowercase();
        let profile = || profile.to_owned();
        let sso = lower.contains("sso");
        match self.kind {
            ApiErrorKind::TargetNotConnected => Some(Remedy::TargetNotConnected),
            ApiErrorKind::AccessDenied => Some(match code {
                Some("UnrecognizedClientException" | "InvalidClientTokenId") => {
                    Remedy::UnknownAccessKey
                }
                Some("InvalidSignatureException" | "SignatureDoesNotMatch") => Remedy::BadSignature,
                Some("MissingAuthenticationToken") => Remedy::NoCredentials { profile: profile() },
                _ => remedy::access_denied(&self.message, self.operation),
            }),
            ApiErrorKind::ExpiredToken if sso => Some(Remedy::SsoLogin { profile: profile() }),
            ApiErrorKind::ExpiredToken => Some(Remedy::ExpiredToken { profile: profile() }),
            ApiErrorKind::Throttling => Some(Remedy::Throttling),
            ApiErrorKind::InvalidDocument => Some(Remedy::InvalidDocument),
            ApiErrorKind::ServerError => Some(Remedy::ServerError),
            ApiErrorKind::Credentials if sso => Some(Remedy::SsoLogin { profile: profile() }),
            ApiErrorKind::Credentials if lower.contains("expired") => {
                Some(Remedy::ExpiredToken { profile: profile() })
            }
            ApiErrorKind::Credentials
                if [
                    "no providers",
                    "no credentials",
                    "could not find",
                    "not found",
                ]
                .iter()
                .any(|n| lower.contains(n)) =>
            {
                Some(Remedy::NoCredentials { profile: profile() })
            }
            ApiErrorKind::Transport => {
                Some(remedy::for_network_text(&self.message).unwrap_or(Remedy::Unreachable))
            }
            ApiErrorKind::Other => remedy::for_network_text(&self.message),
            _ => None,
        }
    }

    /// This error with `remedy` appended to the message (nothing when `None`), after
    /// [`REMEDY_SEPARATOR`], so that every line that shows the error shows what to do.
    pub(crate) fn with_remedy(mut self, remedy: Option<Remedy>) -> Self {
        if let Some(remedy) = remedy {
            self.message = format!("{}{REMEDY_SEPARATOR}{remedy}", self.message);
        }
        self
    }

    /// Classifies an SDK error.
    pub(crate) fn from_sdk<E>(operation: &'static str, err: SdkError<E>) -> Self
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        if let SdkError::ServiceError(ctx) = &err {
            let status = ctx.raw().status().as_u16();
            let code = ctx.err().code().map(str::to_owned);
            let kind = match code.as_deref() {
                Some(c) => ApiErrorKind::from_code(c),
                None if status >= 500 => ApiErrorKind::ServerError,
                None => ApiErrorKind::Other,
            };
            let message = ctx
                .err()
                .message()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("HTTP {status}"));
            return Self {
                operation,
                kind,
                code,
                message: truncate(message),
            };
        }
        let kind = if chain_has_credentials_error(&err) {
            ApiErrorKind::Credentials
        } else {
            match &err {
                SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => ApiErrorKind::Transport,
                _ => ApiErrorKind::Other,
            }
        };
        Self::new(operation, kind, chain_message(&err))
    }

    /// Classifies a failure of the credentials provider chain.
    pub(crate) fn from_credentials(err: &CredentialsError) -> Self {
        Self::new(
            "LoadCredentials",
            ApiErrorKind::Credentials,
            chain_message(err),
        )
    }
}

fn chain_has_credentials_error(err: &(dyn StdError + 'static)) -> bool {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if e.downcast_ref::<CredentialsError>().is_some() {
            return true;
        }
        current = e.source();
    }
    false
}

/// The `Display` texts of an error and its sources, joined by ": ", repeats dropped. (The
/// SDK's `DisplayErrorContext` appends a `Debug` dump, too noisy for a one-line log.)
fn chain_message(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if !text.is_empty() && parts.last() != Some(&text) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

fn truncate(message: String) -> String {
    if message.chars().count() <= MAX_MESSAGE_CHARS {
        return message;
    }
    let mut cut: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_classify() {
        assert_eq!(
            ApiErrorKind::from_code("DoesNotExistException"),
            ApiErrorKind::DoesNotExist
        );
        assert_eq!(
            ApiErrorKind::from_code("com.amazonaws.ssm#ThrottlingException"),
            ApiErrorKind::Throttling
        );
        assert_eq!(
            ApiErrorKind::from_code("ExpiredTokenException"),
            ApiErrorKind::ExpiredToken
        );
        assert_eq!(ApiErrorKind::from_code("Whatever"), ApiErrorKind::Other);
    }

    fn coded(operation: &'static str, code: &str, message: &str) -> ApiError {
        ApiError {
            operation,
            kind: ApiErrorKind::from_code(code),
            code: Some(code.to_owned()),
            message: message.to_owned(),
        }
    }

    #[test]
    fn every_common_failure_has_a_one_line_remedy() {
        let cases = [
            (
                coded(
                    "StartSession",
                    "TargetNotConnected",
                    "i-1 is not connected.",
                ),
                "describe-instance-information",
            ),
            (
                coded(
                    "StartSession",
                    "AccessDeniedException",
                    "User: arn:aws:iam::1:user/alice is not authorized to perform: \
                     ssm:StartSession on resource: arn:aws:ssm:us-east-1::document/X",
                ),
                "allow ssm:StartSession for this IAM user",
            ),
            (
                coded(
                    "StartSession",
                    "ExpiredTokenException",
                    "The security token included in the request is expired",
                ),
                "aws sso login --profile prod",
            ),
            (
                coded("StartSession", "ThrottlingException", "Rate exceeded"),
                "backs off",
            ),
            (
                coded(
                    "StartSession",
                    "InvalidDocument",
                    "Document X does not exist",
                ),
                "document name",
            ),
            (
                coded(
                    "StartSession",
                    "UnrecognizedClientException",
                    "The security token included in the request is invalid.",
                ),
                "access key id",
            ),
            (
                ApiError::new(
                    "LoadCredentials",
                    ApiErrorKind::Credentials,
                    "the SSO token has expired and cannot be refreshed",
                ),
                "run `aws sso login --profile prod`",
            ),
            (
                ApiError::new(
                    "StartSession",
                    ApiErrorKind::Transport,
                    "dispatch failure: dns error: failed to lookup address information",
                ),
                "DNS",
            ),
            (
                ApiError::new(
                    "StartSession",
                    ApiErrorKind::Transport,
                    "io error: invalid peer certificate: UnknownIssuer",
                ),
                "trust store",
            ),
        ];
        for (error, expected) in cases {
            let remedy = error.remedy("prod");
            let explained = error.clone().with_remedy(remedy).to_string();
            assert!(explained.contains(REMEDY_SEPARATOR), "{explained}");
            assert!(explained.contains(expected), "{explained}");
            assert!(!explained.contains('\n'), "{explained}");
        }
        let gone = ApiError::new("ResumeSession", ApiErrorKind::DoesNotExist, "gone");
        assert_eq!(gone.clone().with_remedy(gone.remedy("prod")), gone);
    }

    #[test]
    fn display_is_one_line_with_code() {
        let mut e = ApiError::new("ResumeSession", ApiErrorKind::DoesNotExist, "gone");
        e.code = Some("DoesNotExistException".to_owned());
        assert_eq!(
            e.to_string(),
            "ResumeSession: session does not exist (DoesNotExistException): gone"
        );
        assert!(e.is_session_gone());
        let t = ApiError::new(
            "StartSession",
            ApiErrorKind::Other,
            "Session is already terminated",
        );
        assert!(t.is_session_gone());
        assert!(!t.is_transient());
    }
}
