//! A tunnel's live status: one snapshot for the whole tunnel, with a line per session.

use std::time::Duration;

use super::SessionRef;

/// The phase of a tunnel, or of one of its sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub enum TunnelState {
    /// Calling StartSession for the first time: no session has existed yet.
    #[default]
    Starting,
    /// Replacing a session that is gone.
    Restarting,
    /// Between a disconnect and a successful resume.
    Resuming,
    /// Opening the WebSocket.
    Connecting,
    /// Socket open, waiting for the agent's handshake.
    Handshaking,
    /// Bytes flow.
    Forwarding,
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

/// What a session is for, within its tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub enum SessionRole {
    /// Carries the tunnel's connections; new ones may be given to it.
    #[default]
    Primary,
    /// Started ahead of its predecessor's maximum duration; takes over once it forwards.
    Successor,
    /// Replaced by a successor: keeps its open connections until it ends, takes no new ones.
    Draining,
}

impl SessionRole {
    /// Lower-case name for status lines and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Successor => "successor",
            Self::Draining => "draining",
        }
    }
}

/// One session of a tunnel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionStatus {
    /// Which session.
    pub session: SessionRef,
    /// Its role.
    pub role: SessionRole,
    /// Its phase.
    pub state: TunnelState,
    /// Time since its StartSession was sent.
    pub age: Duration,
    /// Local connections it carries.
    pub connections: usize,
    /// Resumes it survived.
    pub resumes: u64,
}

/// A snapshot of a tunnel, updated on every change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TunnelStatus {
    /// The best phase among its primary sessions ([`TunnelState::Forwarding`] as long as one
    /// of them forwards).
    pub state: TunnelState,
    /// The first primary session's id, if it has one.
    pub session_id: Option<String>,
    /// Every session, primaries first, by stripe.
    pub sessions: Vec<SessionStatus>,
    /// Successful resumes, all sessions.
    pub resumes: u64,
    /// Successful restarts, all sessions.
    pub restarts: u64,
    /// Completed make-before-break rotations.
    pub rotations: u64,
    /// Bytes forwarded towards the destination.
    pub bytes_up: u64,
    /// Bytes forwarded from the destination.
    pub bytes_down: u64,
    /// Open local connections, including those waiting for a session.
    pub connections: usize,
    /// Connections closed because their application stopped reading.
    pub slow_reader_closes: u64,
    /// Longest interruption so far, of any session.
    pub longest_outage: Duration,
    /// Data-channel messages retransmitted by us (current sessions).
    pub retransmitted: u64,
    /// Duplicate messages received from the agent (current sessions).
    pub duplicates_received: u64,
    /// The exit code a non-interactive command's agent reported (`EXIT_CODE: n`), for a
    /// shell tunnel; interactive shells never report one.
    pub remote_exit_code: Option<i32>,
}
