//! Glue between the service and the agent model: the service starts one agent per session on
//! StartSession, as MGS's control channel would, and stops it when the session ends.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::agent::{self, AgentConfig};
pub(crate) use crate::agent::{AgentControls, AgentHandle, AgentOutcome};
use crate::config::AgentSettings;
use crate::events::EventLog;

/// What the service tells the agent it starts.
pub(crate) struct AgentStart {
    /// The session id.
    pub(crate) session_id: String,
    /// The target instance id.
    pub(crate) instance_id: String,
    /// `http://127.0.0.1:PORT`.
    pub(crate) http_base: String,
    /// `ws://127.0.0.1:PORT`.
    pub(crate) ws_base: String,
    /// The document's `sessionType`.
    pub(crate) session_type: String,
    /// Substituted document properties.
    pub(crate) properties: BTreeMap<String, serde_json::Value>,
    /// The preferences' shell profile (Standard_Stream).
    pub(crate) shell_profile: Option<String>,
    /// The preferences' KMS key: the shell session is encrypted.
    pub(crate) kms_key_id: Option<String>,
    /// The agent's knobs.
    pub(crate) settings: AgentSettings,
    /// The agent's own seed, drawn from the service's RNG.
    pub(crate) seed: u64,
    /// Runtime switches shared with the service.
    pub(crate) controls: Arc<AgentControls>,
    /// The event log.
    pub(crate) events: EventLog,
}

/// Starts the agent model for a session.
pub(crate) fn spawn(start: AgentStart) -> AgentHandle {
    agent::spawn(AgentConfig {
        session_id: start.session_id,
        instance_id: start.instance_id,
        kms_endpoint: start.http_base.clone(),
        mgs_http_base: start.http_base,
        mgs_ws_base: start.ws_base,
        agent_version: start.settings.version,
        session_type: start.session_type,
        properties: start.properties,
        pacing: start.settings.pacing,
        handshake_timeout: start.settings.handshake_timeout,
        ping_interval: start.settings.ping_interval,
        pong_wait: start.settings.pong_wait,
        smux_keepalive_interval: start.settings.smux_keepalive_interval,
        smux_keepalive_timeout: start.settings.smux_keepalive_timeout,
        default_host: start.settings.default_host,
        shell: start.settings.shell,
        shell_first_read_delay: start.settings.shell_first_read_delay,
        shell_profile: start.shell_profile,
        force_handshake: start.settings.force_handshake,
        kms_key_id: start.kms_key_id,
        require_kms_challenge_response: start.settings.require_kms_challenge_response,
        seed: start.seed,
        controls: start.controls,
        events: start.events,
    })
}
