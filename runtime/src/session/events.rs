//! What a tunnel reports: typed lifecycle events (consumed by logs, the demo's status line and,
//! later, event-hook plugins) and a status snapshot.

use std::time::{Duration, SystemTime};

use crate::plugin::Role;
use crate::recovery::Cause;

/// The tunnel's current phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TunnelState {
    /// Calling StartSession (first time or restart).
    #[default]
    Starting,
    /// Opening the WebSocket.
    Connecting,
    /// Socket open, waiting for the agent's handshake.
    Handshaking,
    /// Bytes flow.
    Forwarding,
    /// Between a disconnect and a successful resume.
    Resuming,
    /// Replacing a session that is gone.
    Restarting,
    /// Stopped for good.
    Stopped,
}

impl TunnelState {
    /// Lower-case name for status lines.
    pub fn name(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Connecting => "connecting",
            Self::Handshaking => "handshaking",
            Self::Forwarding => "forwarding",
            Self::Resuming => "resuming",
            Self::Restarting => "restarting",
            Self::Stopped => "stopped",
        }
    }
}

/// One lifecycle step of a tunnel.
#[derive(Clone, Debug, PartialEq)]
pub struct TunnelEvent {
    /// The tunnel's name from the policy file.
    pub tunnel: String,
    /// When it happened.
    pub at: SystemTime,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of [`TunnelEvent`].
#[derive(Clone, Debug, PartialEq)]
pub enum EventKind {
    /// The local listener is bound.
    Listening {
        /// Its address.
        local: std::net::SocketAddr,
    },
    /// StartSession succeeded.
    SessionStarted {
        /// The new session.
        session_id: String,
    },
    /// A data-channel WebSocket is open (first connect or resume).
    Connected {
        /// The session.
        session_id: String,
    },
    /// The handshake completed; bytes flow.
    Forwarding {
        /// The session.
        session_id: String,
        /// `mux` or `basic`.
        mode: &'static str,
        /// The agent's version.
        agent_version: String,
    },
    /// Forwarding stopped.
    Disconnected {
        /// Why.
        cause: Cause,
    },
    /// A recovery attempt failed.
    AttemptFailed {
        /// Why.
        cause: Cause,
        /// Attempts made so far in this outage.
        attempt: u32,
    },
    /// Calling ResumeSession.
    Resuming {
        /// 1-based attempt in this outage.
        attempt: u32,
        /// Time since forwarding stopped.
        outage: Duration,
    },
    /// Resumed: the same session carries bytes again, connections intact.
    Resumed {
        /// How long forwarding was interrupted.
        outage: Duration,
    },
    /// Starting a new session because the old one is gone.
    Restarting {
        /// Why.
        cause: Cause,
        /// 1-based attempt in this outage.
        attempt: u32,
        /// Time since forwarding stopped.
        outage: Duration,
    },
    /// A new session carries bytes; connections of the old one were closed.
    Restarted {
        /// The new session.
        session_id: String,
        /// How long forwarding was interrupted.
        outage: Duration,
    },
    /// The policy gave up; the tunnel stops.
    GivingUp {
        /// Why.
        reason: String,
    },
    /// A local connection was accepted.
    ConnectionOpened {
        /// Connection id, unique within the tunnel.
        id: u64,
        /// The local peer.
        peer: std::net::SocketAddr,
    },
    /// A local connection ended.
    ConnectionClosed {
        /// Connection id.
        id: u64,
        /// Bytes sent towards the destination.
        bytes_up: u64,
        /// Bytes received from the destination.
        bytes_down: u64,
        /// Why it ended.
        reason: &'static str,
    },
    /// The agent could not reach the destination for a new connection.
    DestinationUnreachable {
        /// `host:port` as the agent dials it.
        destination: String,
    },
    /// A health check ran.
    ProbeResult {
        /// Which check: the plugin's name from `describe`.
        check: String,
        /// Its verdict.
        outcome: ProbeOutcome,
        /// Consecutive unhealthy results including this one (0 when not unhealthy).
        consecutive_failures: u32,
        /// How long the check took.
        duration: Duration,
    },
    /// A plugin call failed (trap, budget, timeout, bad answer); the built-in fallback
    /// answered instead.
    PluginFailed {
        /// The plugin, as written in the policy file.
        plugin: String,
        /// The role it served.
        role: Role,
        /// What went wrong.
        reason: String,
        /// Whether it is now quarantined.
        quarantined: bool,
    },
    /// The tunnel stopped.
    Stopped,
}

/// A health check's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The tunnel carries the application's protocol end to end.
    Healthy,
    /// Working, but worse than expected; not a failure.
    Degraded(String),
    /// The tunnel does not carry the application's protocol.
    Unhealthy(String),
}

/// A snapshot of a tunnel, updated on every change.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TunnelStatus {
    /// Current phase.
    pub state: TunnelState,
    /// Current session, if any.
    pub session_id: Option<String>,
    /// Successful resumes.
    pub resumes: u64,
    /// Successful restarts.
    pub restarts: u64,
    /// Bytes forwarded towards the destination.
    pub bytes_up: u64,
    /// Bytes forwarded from the destination.
    pub bytes_down: u64,
    /// Open local connections.
    pub connections: usize,
    /// Longest interruption so far.
    pub longest_outage: Duration,
    /// Data-channel messages retransmitted by us (current session).
    pub retransmitted: u64,
    /// Duplicate messages received from the agent (current session).
    pub duplicates_received: u64,
}
