//! The SSM API of a drop-in session: the first StartSession has already been made by the AWS
//! CLI, so its grant is handed out once; every later call (resume, restart, terminate, the
//! signed upgrade) goes to the real API with the CLI's region, profile and endpoint.

use std::sync::Mutex;

use ssm_tether::aws::{ApiError, SessionGrant, SsmApi, UpgradeRequest};
use ssm_tether::tunnel::core::encryption::DataKey;
use ssm_tether::tunnel::{SessionApi, StartRequest};

/// [`SsmApi`] whose first StartSession returns the session the AWS CLI started.
pub(super) struct CliStartedApi {
    first: Mutex<Option<SessionGrant>>,
    inner: SsmApi,
}

impl CliStartedApi {
    /// `first` is the CLI's StartSession response.
    pub(super) fn new(first: SessionGrant, inner: SsmApi) -> Self {
        Self {
            first: Mutex::new(Some(first)),
            inner,
        }
    }

    fn take_first(&self) -> Option<SessionGrant> {
        // A poisoned lock only means another call panicked; the grant is still valid data.
        self.first
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

impl SessionApi for CliStartedApi {
    async fn start_session(&self, request: &StartRequest) -> Result<SessionGrant, ApiError> {
        match self.take_first() {
            Some(grant) => Ok(grant),
            None => SessionApi::start_session(&self.inner, request).await,
        }
    }

    async fn resume_session(&self, session_id: &str) -> Result<Option<SessionGrant>, ApiError> {
        self.inner.resume_session(session_id).await
    }

    async fn terminate_session(&self, session_id: &str) -> Result<(), ApiError> {
        self.inner.terminate_session(session_id).await
    }

    async fn upgrade_request(&self, stream_url: &str) -> Result<UpgradeRequest, ApiError> {
        self.inner.upgrade_request(stream_url).await
    }

    async fn generate_data_key(
        &self,
        key_id: &str,
        context: &[(String, String)],
    ) -> Result<DataKey, ApiError> {
        self.inner.generate_data_key(key_id, context).await
    }
}
