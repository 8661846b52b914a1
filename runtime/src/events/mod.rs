//! What a tunnel reports, as plain data: typed lifecycle events, the causes the recovery
//! logic reasons about, and the live status. Near the bottom of the module graph (it uses
//! only the error types of `aws` and `transport`): the tunnel core produces these, and the
//! policy, the recovery policy, the plugin host and the CLI consume them.

mod cause;
mod status;

use std::time::{Duration, SystemTime};

pub use cause::{Cause, ConnectFailure, ProbeFailure};
pub use status::{SessionRole, SessionStatus, TunnelState, TunnelStatus};

/// The role a plugin serves, which fixes the WIT world it must implement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// `reconnect-policy`: decides every recovery step.
    ReconnectPolicy,
    /// `health-check`: probes the tunnel end to end.
    HealthCheck,
    /// `event-hook`: observes lifecycle events.
    EventHook,
}

impl Role {
    /// The WIT world's name.
    pub fn world(self) -> &'static str {
        match self {
            Self::ReconnectPolicy => "reconnect-policy",
            Self::HealthCheck => "health-check",
            Self::EventHook => "event-hook",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.world())
    }
}

/// Which session of a tunnel something is about.
///
/// A tunnel holds one session per stripe (`sessions = K`), plus a successor while a
/// rotation is under way. Every StartSession — the first, a restart, a rotation's
/// successor — gets the next `serial`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SessionRef {
    /// The stripe, `0..K`.
    pub stripe: u8,
    /// Tunnel-wide number of the StartSession that created it, from 1.
    pub serial: u32,
    /// The SSM session id, once StartSession has answered.
    pub session_id: Option<String>,
}

impl std::fmt::Display for SessionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{} (stripe {}", self.serial, self.stripe)?;
        if let Some(id) = &self.session_id {
            write!(f, ", {id}")?;
        }
        f.write_str(")")
    }
}

/// Why a local connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The local application closed its side (or its socket failed).
    ClientClosed,
    /// The destination closed the stream (smux FIN from the agent).
    DestinationClosed,
    /// The agent could not reach the destination for this connection.
    DestinationUnreachable,
    /// The local application stopped reading: its backlog exceeded the connection's budget or
    /// the tunnel-wide cap, or it accepted nothing for the stall deadline.
    SlowReader,
    /// Its session reached its maximum duration while the connection was still open.
    MaxDuration,
    /// Its session was gone and had to be replaced.
    SessionRestarted,
    /// Its session ended for another reason and was not replaced (a draining session).
    SessionEnded,
    /// The tunnel stopped.
    TunnelStopped,
}

impl CloseReason {
    /// The stable kebab-case name used in events, logs and plugins.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientClosed => "client-closed",
            Self::DestinationClosed => "destination-closed",
            Self::DestinationUnreachable => "destination-unreachable",
            Self::SlowReader => "slow-reader",
            Self::MaxDuration => "max-duration",
            Self::SessionRestarted => "session-restarted",
            Self::SessionEnded => "session-ended",
            Self::TunnelStopped => "tunnel-stopped",
        }
    }

    /// Whether a user should expect this close (their application, their destination, or the
    /// tunnel stopping), as opposed to one the tunnel inflicted.
    pub fn is_expected(self) -> bool {
        matches!(
            self,
            Self::ClientClosed | Self::DestinationClosed | Self::TunnelStopped
        )
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One lifecycle step of a tunnel.
#[derive(Clone, Debug, PartialEq)]
pub struct TunnelEvent {
    /// The tunnel's name from the policy file.
    pub tunnel: String,
    /// The session it is about; `None` for tunnel-wide events.
    pub session: Option<SessionRef>,
    /// When it happened.
    pub at: SystemTime,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of [`TunnelEvent`].
#[derive(Clone, Debug, PartialEq)]
pub enum EventKind {
    /// The local end is bound.
    Listening {
        /// Its address: `ip:port`, or `unix:PATH`.
        local: String,
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
    /// The session nears its maximum duration: a successor is being started. The event's
    /// session is the predecessor.
    Rotating {
        /// Serial of the successor.
        successor: u32,
        /// The predecessor's age.
        age: Duration,
    },
    /// The successor forwards and takes every new connection; the predecessor drains. The
    /// event's session is the successor.
    Rotated {
        /// The predecessor's session id.
        predecessor: Option<String>,
        /// Connections still open on the predecessor, which keep working until it ends.
        draining: usize,
    },
    /// A session ended without being replaced (a drained predecessor). The event's session
    /// is the one that ended.
    SessionEnded {
        /// Why, for humans.
        reason: String,
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
        /// The local peer: `ip:port`, or `unix` for a Unix socket.
        peer: String,
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
        reason: CloseReason,
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
