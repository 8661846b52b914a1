//! The seam in front of the SSM API: the tunnel's I/O layer calls StartSession,
//! ResumeSession and TerminateSession, and builds WebSocket upgrade requests, through
//! [`SessionApi`], so that a test can put a fake service behind a real tunnel.

use std::collections::BTreeMap;

use crate::aws::{ApiError, SessionGrant, SsmApi, UpgradeRequest};

/// What StartSession is called with, for every session of a tunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartRequest {
    /// The target (instance id).
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
}
