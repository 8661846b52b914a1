//! Why a session is not forwarding: the vocabulary shared by the tunnel core, the built-in
//! policy, reconnect-policy plugins and the event stream.

use crate::aws::ApiError;
use crate::transport::connect::ConnectError;

/// Why a session is not forwarding (the disconnect itself, or a failed recovery attempt).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The service closed the WebSocket with 1000 (its hourly recycle): resume at once.
    PlannedClose,
    /// The WebSocket failed (read/write error, abnormal close, writes that stopped draining).
    TransportError(String),
    /// No pong or frame arrived within the pong timeout (black-holed socket).
    PingTimeout,
    /// Opening the WebSocket failed (credentials for signing, upgrade refused, stale URL).
    ConnectFailed(ConnectFailure),
    /// ResumeSession failed; the session may still exist.
    ResumeFailed(ApiError),
    /// StartSession failed.
    StartFailed(ApiError),
    /// The handshake did not lead to forwarding.
    HandshakeFailed(String),
    /// The service says the session is over (no token, DoesNotExist, channel_closed).
    SessionGone(String),
    /// The agent's byte stream broke the smux protocol; the session's streams are lost.
    ProtocolError(String),
    /// Health checks say the tunnel carries nothing although the socket looks fine.
    ProbeFailed(ProbeFailure),
    /// The service ended the session at its maximum duration before a successor took over.
    MaxDurationReached,
    /// The machine slept or changed networks, so the socket is presumed dead (see
    /// [`crate::wake`]). Payload: what was seen. Plugins see it as a transport error.
    Wakeup(String),
}

/// Why a data-channel WebSocket could not be opened. Never contains a token or a signed URL.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectFailure {
    /// The region or credentials needed to sign the upgrade could not be loaded.
    #[error("cannot sign the WebSocket upgrade: {0}")]
    Signing(ApiError),
    /// The upgrade or the OpenDataChannel frame failed.
    #[error(transparent)]
    Upgrade(ConnectError),
}

/// A health check's verdict that made the runtime stop trusting the tunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeFailure {
    /// Which check: the plugin's name, or `builtin:NAME`.
    pub check: String,
    /// Consecutive unhealthy runs, including this one.
    pub consecutive_failures: u32,
    /// The check's reason.
    pub reason: String,
}

impl Cause {
    /// A short stable name, for events and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::PlannedClose => "planned_close",
            Self::TransportError(_) => "transport_error",
            Self::PingTimeout => "ping_timeout",
            Self::ConnectFailed(_) => "connect_failed",
            Self::ResumeFailed(_) => "resume_failed",
            Self::StartFailed(_) => "start_failed",
            Self::HandshakeFailed(_) => "handshake_failed",
            Self::SessionGone(_) => "session_gone",
            Self::ProtocolError(_) => "protocol_error",
            Self::ProbeFailed(_) => "probe_failed",
            Self::MaxDurationReached => "max_duration_reached",
            Self::Wakeup(_) => "wakeup",
        }
    }

    /// Whether this is the service's planned recycle, which never counts against a backoff.
    pub fn is_planned(&self) -> bool {
        matches!(self, Self::PlannedClose)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PlannedClose => f.write_str("planned close (1000)"),
            Self::PingTimeout => f.write_str("no pong within the timeout"),
            Self::MaxDurationReached => f.write_str("maximum session duration reached"),
            Self::ResumeFailed(err) | Self::StartFailed(err) => {
                write!(f, "{}: {err}", self.kind())
            }
            Self::ConnectFailed(err) => write!(f, "{}: {err}", self.kind()),
            Self::ProbeFailed(probe) => write!(
                f,
                "probe_failed: {} unhealthy {} time(s) in a row: {}",
                probe.check, probe.consecutive_failures, probe.reason
            ),
            Self::TransportError(detail)
            | Self::HandshakeFailed(detail)
            | Self::SessionGone(detail)
            | Self::ProtocolError(detail)
            | Self::Wakeup(detail) => write!(f, "{}: {detail}", self.kind()),
        }
    }
}
