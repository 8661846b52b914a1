//! The seam in front of the SSM API: the tunnel's I/O layer calls StartSession,
//! ResumeSession and TerminateSession, and builds WebSocket upgrade requests, through
//! [`SessionApi`], so that a test can put a fake service behind a real tunnel.

use std::collections::BTreeMap;

use crate::aws::{ApiError, ApiErrorKind, SessionGrant, SsmApi, UpgradeRequest};
use crate::transport::proxy::Proxies;
use crate::tunnel::core::encryption::DataKey;

/// What StartSession is called with, for every session of a tunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartRequest {
    /// The target: an instance id, or `tag:KEY=VALUE` (resolved by [`SsmApi`] on every call).
    pub target: String,
    /// The SSM document, e.g. `AWS-StartPortForwardingSession`.
    pub document_name: String,
    /// The document's parameters (lists of strings).
    pub parameters: BTreeMap<String, Vec<String>>,
    /// `Reason`, shown in the SSM console's session history.
    pub reason: Option<String>,
}

/// The SSM calls a tunnel makes. [`SsmApi`] is the real one.
pub trait SessionApi: Send + Sync + 'static {
    /// StartSession.
    fn start_session(
        &self,
        request: &StartRequest,
    ) -> impl Future<Output = Result<SessionGrant, ApiError>> + Send;

    /// ResumeSession; `Ok(None)` when the service returns no token (the session is gone).
    fn resume_session(
        &self,
        session_id: &str,
    ) -> impl Future<Output = Result<Option<SessionGrant>, ApiError>> + Send;

    /// TerminateSession.
    fn terminate_session(
        &self,
        session_id: &str,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// The WebSocket upgrade request for a StreamUrl (signed unless presigned).
    fn upgrade_request(
        &self,
        stream_url: &str,
    ) -> impl Future<Output = Result<UpgradeRequest, ApiError>> + Send;

    /// The proxies the data channel is opened through. By default the process's proxy
    /// variables (`HTTPS_PROXY`, `NO_PROXY` …, read once); [`SsmApi`] uses its settings'
    /// `proxy` when set.
    fn proxies(&self) -> Proxies {
        static FROM_ENV: std::sync::OnceLock<Proxies> = std::sync::OnceLock::new();
        FROM_ENV.get_or_init(|| Proxies::from_env(None)).clone()
    }

    /// KMS GenerateDataKey for a shell session the account encrypts: 64 bytes under
    /// `key_id`, bound to `context`. Without KMS (the default), such sessions cannot start.
    fn generate_data_key(
        &self,
        key_id: &str,
        context: &[(String, String)],
    ) -> impl Future<Output = Result<DataKey, ApiError>> + Send {
        let _ = (key_id, context);
        async {
            Err(ApiError::new(
                "GenerateDataKey",
                ApiErrorKind::Other,
                "this tunnel has no KMS access",
            ))
        }
    }
}

impl SessionApi for SsmApi {
    async fn start_session(&self, request: &StartRequest) -> Result<SessionGrant, ApiError> {
        SsmApi::start_session(
            self,
            &request.target,
            &request.document_name,
            &request.parameters,
            request.reason.as_deref(),
        )
        .await
    }

    async fn resume_session(&self, session_id: &str) -> Result<Option<SessionGrant>, ApiError> {
        SsmApi::resume_session(self, session_id).await
    }

    async fn terminate_session(&self, session_id: &str) -> Result<(), ApiError> {
        SsmApi::terminate_session(self, session_id).await
    }

    async fn upgrade_request(&self, stream_url: &str) -> Result<UpgradeRequest, ApiError> {
        SsmApi::upgrade_request(self, stream_url).await
    }

    fn proxies(&self) -> Proxies {
        SsmApi::proxies(self).clone()
    }

    async fn generate_data_key(
        &self,
        key_id: &str,
        context: &[(String, String)],
    ) -> Result<DataKey, ApiError> {
        SsmApi::generate_data_key(self, key_id, context).await
    }
}
