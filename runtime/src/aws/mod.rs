//! The SSM API: StartSession, ResumeSession, TerminateSession, and the credentials used to sign
//! the data-channel upgrade.
//!
//! Configuration and credentials are loaded **fresh for every call** (a new
//! `aws_config::defaults(…).load()` each time), the way the official plugin builds a new SDK
//! session per ResumeSession: that is how a rewritten credentials file, a refreshed SSO cache or
//! rotated `credential_process` output is picked up by a tunnel that has been up for days
//! (docs/protocol.md §9.5, cause 2). Every credential source of `aws-config`'s default chain works:
//! environment variables, shared config/credentials profiles (incl. `credential_process`, SSO,
//! assume-role), web identity, ECS and EC2 instance metadata. As in every AWS SDK, credentials in
//! environment variables take precedence over the profile.
//!
//! The SDK's own retries are kept small (2 attempts, short timeouts): the recovery policy — how
//! long and how often to retry — lives in the runtime, which needs to see failures promptly.
//!
//! The network path is configurable per tunnel: an HTTP proxy (`proxy`, else the proxy
//! variables; `transport::proxy`) carries both the SDK's calls and the data channel,
//! `ssmmessages_endpoint` moves the data channel to a VPC interface endpoint ([`endpoint`]),
//! `use_fips`/`use_dual_stack` select the SDK's endpoint variants, and a `tag:KEY=VALUE`
//! target is resolved before every StartSession ([`targets`]). Every error these calls return
//! carries its remedy (`crate::remedy`) after [`REMEDY_SEPARATOR`].

mod endpoint;
mod error;
mod kms;
mod targets;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::ProvideCredentials;
use aws_runtime::env_config::file::{
    EnvConfigFileKind as ProfileFileKind, EnvConfigFiles as ProfileFiles,
};
use aws_sdk_ssm::config::SharedHttpClient;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_http_client::{Builder as HttpClientBuilder, Connector};

pub use endpoint::{EndpointError, MessagesEndpoint};
pub use error::{ApiError, ApiErrorKind, REMEDY_SEPARATOR};
pub use targets::{DocumentInfo, ManagedNode, Resolved, TAG_PREFIX, TagError, TagSelector};

use crate::transport::proxy::{Proxies, ProxySource, ProxyUrl};

use crate::transport::sign;

/// Where and as whom the SSM API is called. `None` fields use the AWS SDK's own resolution
/// (environment variables, shared config, IMDS …).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsSettings {
    /// AWS region, e.g. `us-east-1`.
    pub region: Option<String>,
    /// Shared-config profile name.
    pub profile: Option<String>,
    /// SSM API endpoint override, e.g. `http://127.0.0.1:4566` for the emulator.
    pub endpoint_url: Option<String>,
    /// Shared config file to read instead of `~/.aws/config` (like `AWS_CONFIG_FILE`).
    pub config_file: Option<PathBuf>,
    /// Shared credentials file to read instead of `~/.aws/credentials` (like
    /// `AWS_SHARED_CREDENTIALS_FILE`). Re-read on every API call, so rewriting it rotates the
    /// credentials of running tunnels.
    pub credentials_file: Option<PathBuf>,
    /// HTTP proxy for the SDK's calls and the data channel (policy `proxy`); `None`: the
    /// proxy variables (`HTTPS_PROXY` …). `NO_PROXY` applies either way.
    pub proxy: Option<ProxyUrl>,
    /// Where the data channel is dialled instead of the StreamUrl's host (a VPC interface
    /// endpoint); the upgrade is still signed for `ssmmessages` in the region.
    pub ssmmessages_endpoint: Option<MessagesEndpoint>,
    /// FIPS endpoints for the SDK's calls; `None`: the SDK's own resolution
    /// (`AWS_USE_FIPS_ENDPOINT`, the profile's `use_fips_endpoint`).
    pub use_fips: Option<bool>,
    /// Dual-stack (IPv6) endpoints for the SDK's calls; `None`: the SDK's own resolution.
    pub use_dual_stack: Option<bool>,
}

/// A WebSocket upgrade request (the `http` type tungstenite uses).
pub type UpgradeRequest = tokio_tungstenite::tungstenite::http::Request<()>;

/// SDK attempts per API call (1 try + 1 retry for retryable errors).
const SDK_MAX_ATTEMPTS: u32 = 2;
/// TCP/TLS connect timeout for API calls.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of one HTTP attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// Timeout of a whole call, retries included.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(35);

/// What StartSession / ResumeSession grant: the session id, the token for the OpenDataChannel
/// frame, and the WebSocket URL.
///
/// `Debug` redacts the token and the URL's query (which may be a presigned credential).
#[derive(Clone, PartialEq, Eq)]
pub struct SessionGrant {
    /// The session id (opaque, ≤ 96 characters).
    pub session_id: String,
    /// The token sent in the OpenDataChannel frame. Secret: never log it.
    pub token_value: String,
    /// The data-channel WebSocket URL. After ResumeSession this may be **empty** if the service
    /// returned no `StreamUrl`; the caller then keeps the previous URL. Never log the query.
    pub stream_url: String,
}

impl fmt::Debug for SessionGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionGrant")
            .field("session_id", &self.session_id)
            .field("token_value", &"<redacted>")
            .field("stream_url", &redact_url(&self.stream_url))
            .finish()
    }
}

/// Whether `url` is plain `http://` (or `ws://`) to a host other than this machine: a session
/// token sent to it, or received from it, would cross the network unencrypted. Anything that
/// is not such a URL (https, loopback, unparsable) is `false`; checking the form is the
/// caller's business.
pub fn is_cleartext_to_another_host(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    if !matches!(uri.scheme_str(), Some("http" | "ws")) {
        return false;
    }
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    !loopback
}

/// `scheme://host/path` with any query replaced by `?<redacted>`: safe to log.
pub fn redact_url(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?<redacted>"),
        None => url.to_owned(),
    }
}

/// Region and credentials for signing the WebSocket upgrade, loaded together.
#[derive(Debug, Clone)]
pub struct SigningMaterial {
    /// The resolved region.
    pub region: String,
    /// Fresh credentials (their `Debug` redacts the secret).
    pub credentials: Credentials,
}

/// Client for the three SSM session operations, for one tunnel's [`AwsSettings`].
///
/// Cheap to clone: the HTTP connection pool is shared; configuration is reloaded per call.
#[derive(Clone)]
pub struct SsmApi {
    settings: AwsSettings,
    http_client: SharedHttpClient,
    proxies: Proxies,
}

impl fmt::Debug for SsmApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SsmApi")
            .field("settings", &self.settings)
            .field("proxies", &self.proxies)
            .finish_non_exhaustive()
    }
}

impl SsmApi {
    /// A client for `settings`, its proxies resolved from `settings.proxy` or the
    /// environment. Does no I/O; configuration is loaded by each call.
    pub fn new(settings: AwsSettings) -> Self {
        let proxies = Proxies::from_env(settings.proxy.as_ref());
        Self::with_proxies(settings, proxies)
    }

    /// A client for `settings` that reaches AWS through `proxies` (both the SDK's calls and,
    /// through [`SsmApi::proxies`], the data channel).
    pub fn with_proxies(settings: AwsSettings, proxies: Proxies) -> Self {
        for ignored in proxies.ignored() {
            tracing::warn!(target: "ssm_tether::aws", variable = %ignored,
                "proxy variable ignored: connections it would carry go direct");
        }
        if proxies.source() != ProxySource::None {
            tracing::debug!(target: "ssm_tether::aws", proxies = %proxies.describe(), "proxies");
        }
        let endpoint_is_http = settings
            .endpoint_url
            .as_deref()
            .is_some_and(|url| url.starts_with("http://"));
        // rustls with ring: the SDK's default (aws-lc) costs minutes of C compilation.
        let http_client = match proxies.sdk_config(endpoint_is_http) {
            None => HttpClientBuilder::new()
                .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
                .build_https(),
            Some(proxy) => {
                HttpClientBuilder::new().build_with_connector_fn(move |settings, components| {
                    let mut builder = Connector::builder().proxy_config(proxy.clone());
                    builder.set_connector_settings(settings.cloned());
                    if let Some(components) = components {
                        builder.set_sleep_impl(components.sleep_impl());
                    }
                    builder
                        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
                        .build()
                })
            }
        };
        Self {
            settings,
            http_client,
            proxies,
        }
    }

    /// The proxies this client's calls and the data channel go through.
    pub fn proxies(&self) -> &Proxies {
        &self.proxies
    }

    /// The profile remedies name: the configured one, `AWS_PROFILE`, or `default`.
    pub fn profile_name(&self) -> String {
        crate::remedy::profile_name(self.settings.profile.as_deref())
    }

    /// `err` with its remedy appended.
    pub(crate) fn explain(&self, err: ApiError) -> ApiError {
        let remedy = err.remedy(&self.profile_name()).map(|remedy| match remedy {
            // The proxy answered 407 although it was given credentials: they are wrong.
            crate::remedy::Remedy::ProxyAuthRequired if self.proxies.has_credentials() => {
                crate::remedy::Remedy::ProxyAuthRejected
            }
            other => other,
        });
        err.with_remedy(remedy)
    }

    /// The settings this client was built with.
    pub fn settings(&self) -> &AwsSettings {
        &self.settings
    }

    /// Loads shared config, region and the credential chain afresh.
    async fn load(&self) -> Result<SdkConfig, ApiError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(self.http_client.clone())
            .retry_config(RetryConfig::standard().with_max_attempts(SDK_MAX_ATTEMPTS))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .operation_timeout(OPERATION_TIMEOUT)
                    .build(),
            );
        if let Some(region) = &self.settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(profile) = &self.settings.profile {
            loader = loader.profile_name(profile.clone());
        }
        if let Some(files) = self.profile_files() {
            loader = loader.profile_files(files);
        }
        if let Some(fips) = self.settings.use_fips {
            loader = loader.use_fips(fips);
        }
        if let Some(dual_stack) = self.settings.use_dual_stack {
            loader = loader.use_dual_stack(dual_stack);
        }
        let config = loader.load().await;
        if config.region().is_none() {
            return Err(ApiError::new(
                "LoadConfig",
                ApiErrorKind::Configuration,
                "no AWS region configured (set region in the policy file, AWS_REGION, or the \
                 profile's region)",
            ));
        }
        Ok(config)
    }

    /// Explicit shared config/credentials files from the settings, if any; a kind not given
    /// keeps its default location (`~/.aws/config`, `~/.aws/credentials`, or the
    /// `AWS_CONFIG_FILE` / `AWS_SHARED_CREDENTIALS_FILE` variables).
    fn profile_files(&self) -> Option<ProfileFiles> {
        let (config, credentials) = (&self.settings.config_file, &self.settings.credentials_file);
        if config.is_none() && credentials.is_none() {
            return None;
        }
        let mut builder = ProfileFiles::builder();
        match config {
            Some(path) => builder = builder.with_file(ProfileFileKind::Config, path),
            None => builder = builder.include_default_config_file(true),
        }
        match credentials {
            Some(path) => builder = builder.with_file(ProfileFileKind::Credentials, path),
            None => builder = builder.include_default_credentials_file(true),
        }
        Some(builder.build())
    }

    async fn client(&self) -> Result<aws_sdk_ssm::Client, ApiError> {
        let config = self.load().await?;
        let mut builder = aws_sdk_ssm::config::Builder::from(&config);
        // Only the SSM client gets the endpoint override; STS/SSO used by credential providers
        // keep their real endpoints.
        if let Some(url) = &self.settings.endpoint_url {
            builder = builder.endpoint_url(url.clone());
        }
        Ok(aws_sdk_ssm::Client::from_conf(builder.build()))
    }

    /// StartSession for `target` with a session document and its parameters. A
    /// `tag:KEY=VALUE` target is resolved first, on every call ([`SsmApi::resolve_tag`]).
    ///
    /// # Errors
    /// [`ApiError`] with kind e.g. [`ApiErrorKind::TargetNotConnected`],
    /// [`ApiErrorKind::InvalidDocument`], [`ApiErrorKind::AccessDenied`],
    /// [`ApiErrorKind::Credentials`], [`ApiErrorKind::Transport`]; [`ApiErrorKind::Other`] if the
    /// response lacks `SessionId`, `TokenValue` or `StreamUrl`. The message ends with the
    /// remedy.
    pub async fn start_session(
        &self,
        target: &str,
        document_name: &str,
        parameters: &BTreeMap<String, Vec<String>>,
        reason: Option<&str>,
    ) -> Result<SessionGrant, ApiError> {
        const OP: &str = "StartSession";
        let resolved;
        let target = match TagSelector::parse(target) {
            Ok(None) => target,
            Ok(Some(selector)) => {
                resolved = self.resolve_tag(&selector).await?;
                resolved.instance_id.as_str()
            }
            Err(err) => {
                return Err(ApiError::new(
                    OP,
                    ApiErrorKind::Configuration,
                    format!("target {target:?} {err}"),
                ));
            }
        };
        let client = self.client().await.map_err(|e| self.explain(e))?;
        let parameters: HashMap<String, Vec<String>> = parameters
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let output = client
            .start_session()
            .target(target)
            .document_name(document_name)
            .set_parameters(Some(parameters))
            .set_reason(reason.map(str::to_owned))
            .send()
            .await
            .map_err(|e| self.explain(ApiError::from_sdk(OP, e)))?;
        let missing = |field: &str| {
            ApiError::new(OP, ApiErrorKind::Other, format!("response has no {field}"))
        };
        let grant = SessionGrant {
            session_id: non_empty(output.session_id()).ok_or_else(|| missing("SessionId"))?,
            token_value: non_empty(output.token_value()).ok_or_else(|| missing("TokenValue"))?,
            stream_url: non_empty(output.stream_url()).ok_or_else(|| missing("StreamUrl"))?,
        };
        tracing::debug!(target: "ssm_tether::aws", session_id = %grant.session_id, target, "StartSession ok");
        Ok(grant)
    }

    /// ResumeSession: a fresh token (and usually a fresh StreamUrl, which the caller must use).
    ///
    /// Returns `Ok(None)` when the response has no `TokenValue`: the service considers the
    /// session timed out or terminated (the official plugin exits there), so restart.
    ///
    /// # Errors
    /// [`ApiError`]; [`ApiError::is_session_gone`] tells when a restart is needed.
    pub async fn resume_session(&self, session_id: &str) -> Result<Option<SessionGrant>, ApiError> {
        const OP: &str = "ResumeSession";
        let client = self.client().await.map_err(|e| self.explain(e))?;
        let output = client
            .resume_session()
            .session_id(session_id)
            .send()
            .await
            .map_err(|e| self.explain(ApiError::from_sdk(OP, e)))?;
        let Some(token_value) = non_empty(output.token_value()) else {
            tracing::debug!(target: "ssm_tether::aws", session_id, "ResumeSession returned no token");
            return Ok(None);
        };
        let grant = SessionGrant {
            session_id: non_empty(output.session_id()).unwrap_or_else(|| session_id.to_owned()),
            token_value,
            stream_url: output.stream_url().unwrap_or_default().to_owned(),
        };
        tracing::debug!(target: "ssm_tether::aws", session_id, new_url = !grant.stream_url.is_empty(), "ResumeSession ok");
        Ok(Some(grant))
    }

    /// TerminateSession.
    ///
    /// # Errors
    /// [`ApiError`] (a session that no longer exists is reported as
    /// [`ApiErrorKind::DoesNotExist`]; callers shutting down may ignore that).
    pub async fn terminate_session(&self, session_id: &str) -> Result<(), ApiError> {
        const OP: &str = "TerminateSession";
        let client = self.client().await.map_err(|e| self.explain(e))?;
        client
            .terminate_session()
            .session_id(session_id)
            .send()
            .await
            .map_err(|e| self.explain(ApiError::from_sdk(OP, e)))?;
        tracing::debug!(target: "ssm_tether::aws", session_id, "TerminateSession ok");
        Ok(())
    }

    /// Freshly loaded credentials, for signing the WebSocket upgrade.
    ///
    /// # Errors
    /// [`ApiErrorKind::Credentials`] if no source yields credentials;
    /// [`ApiErrorKind::Configuration`] if no region is configured.
    pub async fn credentials(&self) -> Result<Credentials, ApiError> {
        let config = self.load().await?;
        provide(&config).await.map_err(|e| self.explain(e))
    }

    /// The resolved region (policy setting, else `AWS_REGION`, the profile …), needed to sign
    /// the upgrade.
    ///
    /// # Errors
    /// [`ApiErrorKind::Configuration`] if no region is configured.
    pub async fn region(&self) -> Result<String, ApiError> {
        if let Some(region) = &self.settings.region {
            return Ok(region.clone());
        }
        let config = self.load().await?;
        Ok(config
            .region()
            .map(|r| r.as_ref().to_owned())
            .unwrap_or_default())
    }

    /// Region and fresh credentials from one configuration load: what
    /// [`crate::transport::sign::signed_upgrade_request`] needs.
    ///
    /// # Errors
    /// As [`SsmApi::credentials`].
    pub async fn signing_material(&self) -> Result<SigningMaterial, ApiError> {
        let config = self.load().await?;
        let region = config
            .region()
            .map(|r| r.as_ref().to_owned())
            .unwrap_or_default();
        let credentials = provide(&config).await.map_err(|e| self.explain(e))?;
        Ok(SigningMaterial {
            region,
            credentials,
        })
    }

    /// The WebSocket upgrade request for `stream_url`: SigV4-signed (service `ssmmessages`) with
    /// freshly loaded credentials and the resolved region at the current time, or unsigned if
    /// the URL is presigned (then no credentials are loaded). Ready for
    /// `tokio_tungstenite::connect_async`. With `ssmmessages_endpoint` set, the URL's host
    /// (and scheme, if the endpoint names one) is that endpoint's, and the signature covers it.
    ///
    /// # Errors
    /// As [`SsmApi::signing_material`]; a malformed URL or a signing failure is reported with
    /// operation `SignUpgrade` and kind [`ApiErrorKind::Other`] (the URL is never quoted).
    pub async fn upgrade_request(&self, stream_url: &str) -> Result<UpgradeRequest, ApiError> {
        let rewritten;
        let stream_url = match &self.settings.ssmmessages_endpoint {
            None => stream_url,
            Some(endpoint) => {
                rewritten = endpoint.rewrite(stream_url).map_err(|e| {
                    ApiError::new(
                        "SignUpgrade",
                        ApiErrorKind::Other,
                        format!("the StreamUrl {e}"),
                    )
                })?;
                tracing::debug!(target: "ssm_tether::aws", %endpoint,
                    url = %redact_url(&rewritten), "data channel via ssmmessages_endpoint");
                rewritten.as_str()
            }
        };
        let to_api =
            |e: sign::SignError| ApiError::new("SignUpgrade", ApiErrorKind::Other, e.to_string());
        if sign::is_presigned_url(stream_url) {
            // Region and credentials are unused for a presigned URL; skip loading them so a
            // missing credential source cannot block the connection.
            let none = Credentials::new("", "", None, None, "unused");
            return sign::signed_upgrade_request(stream_url, "", &none, SystemTime::now())
                .map_err(to_api);
        }
        let material = self.signing_material().await?;
        sign::signed_upgrade_request(
            stream_url,
            &material.region,
            &material.credentials,
            SystemTime::now(),
        )
        .map_err(to_api)
    }
}

async fn provide(config: &SdkConfig) -> Result<Credentials, ApiError> {
    let provider = config.credentials_provider().ok_or_else(|| {
        ApiError::new(
            "LoadCredentials",
            ApiErrorKind::Credentials,
            "no credentials provider configured",
        )
    })?;
    provider
        .provide_credentials()
        .await
        .map_err(|e| ApiError::from_credentials(&e))
}

fn non_empty(value: Option<&str>) -> Option<String> {
    value.filter(|v| !v.is_empty()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_debug_redacts_secrets() {
        let grant = SessionGrant {
            session_id: "sess-1".to_owned(),
            token_value: "SECRET-TOKEN".to_owned(),
            stream_url: "wss://h/v1/data-channel/sess-1?role=x&X-Amz-Signature=SIG".to_owned(),
        };
        let shown = format!("{grant:?}");
        assert!(shown.contains("sess-1"));
        assert!(!shown.contains("SECRET-TOKEN"), "{shown}");
        assert!(!shown.contains("SIG"), "{shown}");
        assert!(shown.contains("wss://h/v1/data-channel/sess-1?<redacted>"));
    }
}
