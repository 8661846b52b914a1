//! An in-process model of amazon-ssm-agent's session plugins (docs/protocol.md §4–§6, §9.4,
//! §12; PROTOCOL-SESSIONS.md §1, §3, §4, §6): Port sessions and the three shell session types.
//!
//! [`spawn`] starts one agent session against the emulator's service, exactly as the real
//! agent talks to MGS: CreateDataChannel over HTTP for a token, a data-channel WebSocket with
//! the OpenDataChannel text frame, then `agent_session_state` Connected and, where the agent
//! does one, the handshake (with the KMS key exchange and challenge when the session is
//! encrypted). A Port session then forwards the port in mux (smux v1 server) or basic mode; a
//! shell session runs `sh` on a pty, `sh -c <command>` on a pty, or a command on pipes. Both
//! use the agent's reliability rules, and rejoin after socket loss with the agent's small
//! retry budget.
//!
//! Everything it does is recorded as [`Event::Agent`](crate::events::Event::Agent) in the
//! configured [`EventLog`]. Tokens never appear there.
//!
//! Layout: [`reliable`] is the sans-IO sequencing/ack/resend state machine; `port` holds the
//! pure mode decisions and chunking; `mgs` the HTTP/WebSocket contract with the service;
//! `dest` the destination TCP connections; `shell` the shell plugin's processes, pty and
//! output chunking; `crypto` the session encryption and the KMS Decrypt call; `session` the
//! single task that owns all session state and drives it from sockets and timers.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::events::EventLog;

mod crypto;
mod dest;
mod mgs;
pub(crate) mod port;
pub(crate) mod reliable;
mod session;
mod shell;

/// The agent version the model reports by default (mux, keepalive decided by the client).
pub const DEFAULT_AGENT_VERSION: &str = "3.3.987.0";
/// The agent's pause after each agent→client data message.
pub const DEFAULT_PACING: Duration = Duration::from_millis(1);
/// The agent's wait for the HandshakeResponse.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// The agent's WebSocket ping interval (`WebSocketPingInterval`).
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(54);
/// The agent's pong wait (`WebSocketPongWaitTimeout`).
pub const DEFAULT_PONG_WAIT: Duration = Duration::from_secs(60);
/// smux `KeepAliveInterval`.
pub const DEFAULT_SMUX_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// smux `KeepAliveTimeout`.
pub const DEFAULT_SMUX_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(30);
/// The host dialled when the properties name none. The real agent dials the local system;
/// loopback IPv4 keeps tests independent of how `localhost` resolves.
pub const DEFAULT_HOST: &str = "127.0.0.1";

/// The shell of `Standard_Stream` sessions (the agent runs `sh` from its PATH).
pub const DEFAULT_SHELL: &str = "/bin/sh";
/// The agent's wait before its first read of a pty (`writePump`'s initial wait).
pub const DEFAULT_SHELL_FIRST_READ_DELAY: Duration = Duration::from_secs(1);

/// How one agent session is set up.
#[derive(Clone)]
pub struct AgentConfig {
    /// The session id (path segment of the CreateDataChannel call and WebSocket URL).
    pub session_id: String,
    /// The instance id (the StartSession `Target`), sent as `ClientInstanceId`.
    pub instance_id: String,
    /// Base URL of the CreateDataChannel REST API, e.g. `http://127.0.0.1:PORT`.
    pub mgs_http_base: String,
    /// Base URL of the data-channel WebSocket, e.g. `ws://127.0.0.1:PORT`.
    pub mgs_ws_base: String,
    /// The `AgentVersion` of the HandshakeRequest.
    pub agent_version: String,
    /// The session document's `sessionType`: `Port`, `Standard_Stream`,
    /// `InteractiveCommands` or `NonInteractiveCommands` (the agent plugin to run).
    pub session_type: String,
    /// The session document's `properties` after parameter substitution (Port: `portNumber`,
    /// `type`, `host`, `localPortNumber`, …, sent verbatim in the HandshakeRequest; shells:
    /// the per-platform `commands` and output settings, sent as `null`).
    pub properties: BTreeMap<String, serde_json::Value>,
    /// Sleep after each agent→client data message; zero means none (full speed).
    pub pacing: Duration,
    /// How long to wait for the HandshakeResponse.
    pub handshake_timeout: Duration,
    /// WebSocket ping interval.
    pub ping_interval: Duration,
    /// Pong wait: the read deadline starts at `ping_interval + pong_wait` and each pong moves
    /// it to now + `pong_wait`.
    pub pong_wait: Duration,
    /// smux NOP period when keepalive is on.
    pub smux_keepalive_interval: Duration,
    /// smux receive timeout when keepalive is on.
    pub smux_keepalive_timeout: Duration,
    /// The host dialled when `properties` have no (or an empty) `host`.
    pub default_host: String,
    /// The shell of `Standard_Stream` sessions and of `sh -c` for `InteractiveCommands`.
    pub shell: String,
    /// The wait before a pty session's first read of the pty.
    pub shell_first_read_delay: Duration,
    /// The session preferences' `shellProfile.linux`, typed into a `Standard_Stream` shell.
    pub shell_profile: Option<String>,
    /// Handshake for `Standard_Stream`/`InteractiveCommands` even without KMS.
    pub force_handshake: bool,
    /// The session preferences' `kmsKeyId`: shell sessions are encrypted when set.
    pub kms_key_id: Option<String>,
    /// Fail clients that do not acknowledge the KMS random challenge.
    pub require_kms_challenge_response: bool,
    /// Base URL of the KMS API the agent calls Decrypt on (the emulator's endpoint).
    pub kms_endpoint: String,
    /// Seeds the rejoin jitter and message ids.
    pub seed: u64,
    /// Runtime fault toggles.
    pub controls: Arc<AgentControls>,
    /// Where everything the agent does is recorded.
    pub events: EventLog,
}

impl AgentConfig {
    /// A configuration with the real agent's defaults and no properties (set at least
    /// `portNumber` and usually `type` before spawning).
    pub fn new(
        session_id: impl Into<String>,
        instance_id: impl Into<String>,
        mgs_http_base: impl Into<String>,
        mgs_ws_base: impl Into<String>,
        events: EventLog,
    ) -> Self {
        let mgs_http_base = mgs_http_base.into();
        Self {
            session_id: session_id.into(),
            instance_id: instance_id.into(),
            kms_endpoint: mgs_http_base.clone(),
            mgs_http_base,
            mgs_ws_base: mgs_ws_base.into(),
            agent_version: DEFAULT_AGENT_VERSION.to_owned(),
            session_type: "Port".to_owned(),
            properties: BTreeMap::new(),
            pacing: DEFAULT_PACING,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            ping_interval: DEFAULT_PING_INTERVAL,
            pong_wait: DEFAULT_PONG_WAIT,
            smux_keepalive_interval: DEFAULT_SMUX_KEEPALIVE_INTERVAL,
            smux_keepalive_timeout: DEFAULT_SMUX_KEEPALIVE_TIMEOUT,
            default_host: DEFAULT_HOST.to_owned(),
            shell: DEFAULT_SHELL.to_owned(),
            shell_first_read_delay: DEFAULT_SHELL_FIRST_READ_DELAY,
            shell_profile: None,
            force_handshake: false,
            kms_key_id: None,
            require_kms_challenge_response: false,
            seed: 0,
            controls: Arc::new(AgentControls::default()),
            events,
        }
    }

    /// Sets the document properties (builder style).
    pub fn with_properties(
        mut self,
        properties: impl IntoIterator<Item = (String, serde_json::Value)>,
    ) -> Self {
        self.properties = properties.into_iter().collect();
        self
    }
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("session_id", &self.session_id)
            .field("instance_id", &self.instance_id)
            .field("mgs_http_base", &self.mgs_http_base)
            .field("mgs_ws_base", &self.mgs_ws_base)
            .field("agent_version", &self.agent_version)
            .field("session_type", &self.session_type)
            .field("properties", &self.properties)
            .field("pacing", &self.pacing)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("ping_interval", &self.ping_interval)
            .field("pong_wait", &self.pong_wait)
            .field("smux_keepalive_interval", &self.smux_keepalive_interval)
            .field("smux_keepalive_timeout", &self.smux_keepalive_timeout)
            .field("default_host", &self.default_host)
            .field("shell", &self.shell)
            .field("shell_first_read_delay", &self.shell_first_read_delay)
            .field(
                "shell_profile",
                &self.shell_profile.as_ref().map(|_| "<set>"),
            )
            .field("force_handshake", &self.force_handshake)
            .field("kms_key_id", &self.kms_key_id)
            .field(
                "require_kms_challenge_response",
                &self.require_kms_challenge_response,
            )
            .field("kms_endpoint", &self.kms_endpoint)
            .field("seed", &self.seed)
            .field("controls", &self.controls)
            .finish_non_exhaustive()
    }
}

/// Fault toggles that can be flipped while the agent runs.
#[derive(Debug, Default)]
pub struct AgentControls {
    /// Every destination dial fails as if the port refused the connection (mux: Flag
    /// ConnectToPortError and FIN for the stream; basic: the port session fails).
    pub refuse_destination: AtomicBool,
}

/// How an agent session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentOutcome {
    /// The client sent Flag TerminateSession; the agent reported `Terminating` and closed.
    TerminatedByClient,
    /// The service sent `channel_closed`; the `Output` text.
    ChannelClosed(String),
    /// The handshake timed out or the client reported a failed action; the error text.
    HandshakeFailed(String),
    /// The port session failed or ended on its own (initial or lazy dial failed, smux
    /// protocol error or keepalive timeout, SSH-style destination EOF); the reason.
    PortSessionFailed(String),
    /// The shell or command ended (pty EOF, command finished); the agent drained, reported
    /// `Terminating` and closed. The detail (for example the command's exit status).
    ShellEnded(String),
    /// The shell plugin could not run (invalid properties, command could not start); the
    /// error text.
    ShellFailed(String),
    /// The data channel could not be opened at session start; the error.
    OpenFailed(String),
    /// All rejoin attempts failed; the last error.
    RejoinGaveUp(String),
    /// A rejoin got "Session is already terminated"; the error.
    SessionAlreadyTerminated(String),
    /// [`AgentHandle::shutdown`] stopped it.
    Shutdown,
}

/// A running agent session.
///
/// Dropping the handle detaches the agent (it keeps running until it ends on its own); call
/// [`shutdown`](Self::shutdown) to stop it.
#[derive(Debug)]
pub struct AgentHandle {
    stop: Mutex<Option<oneshot::Sender<()>>>,
    outcome: watch::Receiver<Option<AgentOutcome>>,
    task: JoinHandle<()>,
}

/// Starts one agent session. Must be called inside a tokio runtime.
pub fn spawn(config: AgentConfig) -> AgentHandle {
    let (outcome_tx, outcome_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let events = config.events.clone();
        let session_id = config.session_id.clone();
        let stop = async {
            // A dropped handle detaches rather than stops.
            if stop_rx.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let outcome = tokio::select! {
            outcome = session::Core::new(config).run() => outcome,
            () = stop => {
                // Dropping the core closed the sockets and aborted every task it owned.
                session::emit(&events, &session_id, "shutdown", "stopped by the emulator");
                AgentOutcome::Shutdown
            }
        };
        outcome_tx.send_replace(Some(outcome));
    });
    AgentHandle {
        stop: Mutex::new(Some(stop_tx)),
        outcome: outcome_rx,
        task,
    }
}

impl AgentHandle {
    /// Stops everything (WebSocket, destination connections, tasks) and waits until it is
    /// stopped. Returns at once if the agent had already ended.
    pub async fn shutdown(self) {
        if let Some(stop) = self
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }

    /// Whether the agent has ended.
    pub fn is_finished(&self) -> bool {
        self.outcome.borrow().is_some()
    }

    /// How the agent ended, if it has.
    pub fn outcome(&self) -> Option<AgentOutcome> {
        self.outcome.borrow().clone()
    }

    /// Waits until the agent ends (on its own or through [`shutdown`](Self::shutdown) from
    /// another handle owner) and returns how.
    pub async fn finished(&self) -> AgentOutcome {
        let mut outcome = self.outcome.clone();
        match outcome.wait_for(Option::is_some).await {
            Ok(value) => value
                .clone()
                .unwrap_or_else(|| AgentOutcome::PortSessionFailed("no outcome".into())),
            // The task ended without an outcome: it panicked.
            Err(_) => AgentOutcome::PortSessionFailed("agent task ended unexpectedly".into()),
        }
    }
}

#[cfg(test)]
mod tests;
