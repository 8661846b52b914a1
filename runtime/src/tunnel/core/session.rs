//! One session of a tunnel: its link to the service (what is in progress: a wait, an API
//! call, a WebSocket), its data channel and forwarding state, and its recovery bookkeeping.
//! Plain state; the transitions live in the tunnel core, which sees every session at once.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::handshake::{Negotiated, PortMode};
use super::recovery::Recovery;
use super::{ConnId, OpId, SessionKey, SocketId};
use crate::channel::{Channel, ChannelConfig};
use crate::events::{Cause, SessionRef, SessionRole, TunnelState};
use crate::mux::MuxClient;
use crate::protocol::payload::Flag;

/// Which recovery step a wait is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tier {
    Resume,
    Restart,
}

/// What the session's link to the service is doing.
#[derive(Debug)]
pub(super) enum Link {
    /// Waiting for a backoff delay before the next step.
    Waiting { until: Instant, tier: Tier },
    /// A reconnect-policy plugin was asked.
    Deciding { op: OpId },
    /// StartSession or ResumeSession is in flight.
    Calling { op: OpId },
    /// A WebSocket is being opened.
    Connecting { socket: SocketId },
    /// A WebSocket is attached.
    Online(Online),
    /// Shutting down: the TerminateSession flag was sent; waiting until it is acknowledged or
    /// the deadline passes.
    Closing { online: Online, until: Instant },
    /// Nothing more will happen (terminated, or abandoned at shutdown).
    Ended,
}

/// An attached WebSocket.
#[derive(Debug)]
pub(super) struct Online {
    pub(super) socket: SocketId,
    pub(super) last_rx: Instant,
    pub(super) next_ping: Instant,
    pub(super) next_nop: Option<Instant>,
    /// A new session's handshake must complete by then.
    pub(super) handshake_deadline: Option<Instant>,
    /// Bytes handed to the socket's writer and not yet reported flushed.
    pub(super) queued: usize,
    /// Since when queued bytes have made no progress.
    pub(super) write_stalled_since: Option<Instant>,
}

impl Online {
    pub(super) fn new(socket: SocketId, now: Instant) -> Self {
        Self {
            socket,
            last_rx: now,
            // Ping at once, like the official client: it proves the path immediately.
            next_ping: now,
            next_nop: None,
            handshake_deadline: None,
            queued: 0,
            write_stalled_since: None,
        }
    }
}

/// One basic-mode message waiting for room in the channel.
#[derive(Debug)]
pub(super) enum BasicOut {
    Data(Bytes),
    Flag(Flag),
}

/// How the session carries connections, once the handshake has chosen.
#[derive(Debug)]
pub(super) enum Forward {
    /// Handshake not complete.
    Pending,
    /// smux streams, one per connection.
    Mux {
        mux: MuxClient,
        streams: HashMap<u32, ConnId>,
    },
    /// Raw bytes of one connection. Basic mode has no stream ids and no end marker
    /// (docs/protocol.md §6.3), so nothing can tell a later connection's bytes from an
    /// earlier one's: a session carries one connection in its life (`used`), and a fresh
    /// session takes the next (docs/design.md §7).
    Basic {
        active: Option<ConnId>,
        /// A connection was bound to it once.
        used: bool,
        out: VecDeque<BasicOut>,
        out_bytes: usize,
    },
    /// A shell or command: the terminal's bytes and its size (the one connection is the
    /// local terminal or stdin/stdout).
    Shell {
        active: Option<ConnId>,
        out: VecDeque<ShellOut>,
        out_bytes: usize,
    },
}

/// One shell message waiting for room in the channel.
#[derive(Debug)]
pub(super) enum ShellOut {
    /// Keystrokes (encrypted when it is sent, if the session is).
    Input(Bytes),
    /// A Size message's JSON (never encrypted).
    Size(Bytes),
}

impl Forward {
    /// Bytes waiting to enter the channel.
    pub(super) fn outbound_len(&self) -> usize {
        match self {
            Self::Pending => 0,
            Self::Mux { mux, .. } => mux.outbound_len(),
            Self::Basic { out_bytes, .. } | Self::Shell { out_bytes, .. } => *out_bytes,
        }
    }
}

/// A `KMSEncryption` action waiting for its data key.
#[derive(Debug)]
pub(super) struct PendingKms {
    /// The request to answer once the key is there.
    pub(super) request: crate::protocol::payload::HandshakeRequest,
    /// The call.
    pub(super) op: super::OpId,
    /// Whether the agent's challenge went into the encryption context.
    pub(super) acknowledged: bool,
}

/// What exists once StartSession has answered.
#[derive(Debug)]
pub(super) struct SessionData {
    pub(super) channel: Channel,
    /// Answered HandshakeRequest, waiting for HandshakeComplete.
    pub(super) pending: Option<Negotiated>,
    pub(super) negotiated: Option<Negotiated>,
    pub(super) forward: Forward,
    /// The session cannot forward (an smux protocol error, a handshake for something other
    /// than a port session): it must be replaced.
    pub(super) broken: Option<Cause>,
    /// The session can never forward, however often it is replaced (its document starts a
    /// shell, not a port session): the tunnel gives up with this reason.
    pub(super) unusable: Option<String>,
    /// ConnectToPortError flags not yet matched to the FIN that follows each (the flag does
    /// not name its stream; the agent sends it right before that stream's FIN).
    pub(super) refused: u32,
    /// A handshake message after the session was negotiated has been logged.
    pub(super) late_handshake_logged: bool,
    /// KMS encryption of a shell session, once the data key is known.
    pub(super) cipher: Option<super::encryption::SessionCipher>,
    /// A `KMSEncryption` action waiting for GenerateDataKey.
    pub(super) kms: Option<PendingKms>,
}

impl SessionData {
    pub(super) fn new(config: ChannelConfig, now: Instant, unix_ms: u64) -> Self {
        Self {
            channel: Channel::new(config, now, unix_ms),
            pending: None,
            negotiated: None,
            forward: Forward::Pending,
            broken: None,
            unusable: None,
            refused: 0,
            late_handshake_logged: false,
            cipher: None,
            kms: None,
        }
    }

    pub(super) fn mode(&self) -> Option<PortMode> {
        self.negotiated.as_ref().map(|n| n.mode)
    }
}

/// One session; see the module docs.
#[derive(Debug)]
pub(super) struct Session {
    pub(super) key: SessionKey,
    pub(super) stripe: u8,
    pub(super) serial: u32,
    pub(super) role: SessionRole,
    pub(super) state: TunnelState,
    /// The SSM session id, once StartSession answered.
    pub(super) id: Option<String>,
    /// The StreamUrl to dial, from StartSession or the latest ResumeSession.
    pub(super) stream_url: String,
    /// When its StartSession was sent: never later than the service's own clock for the
    /// maximum session duration.
    pub(super) started: Instant,
    pub(super) link: Link,
    pub(super) data: Option<SessionData>,
    pub(super) recovery: Recovery,
    /// The cause to report when the pending restart begins.
    pub(super) restart_cause: Option<Cause>,
    /// Whether a StartSession of this session ever succeeded: every later one is a restart.
    pub(super) ever_started: bool,
    /// Whether the session has ever forwarded.
    pub(super) ever_forwarded: bool,
    /// The upload gate last announced to the shell.
    pub(super) uploads_open: bool,
    /// Resumes it survived.
    pub(super) resumes: u64,
    /// It is being ended for good (its connections are being closed, or its basic-mode
    /// connection closed and it is retiring).
    pub(super) ending: bool,
    /// A successor started because its stripe's basic-mode primary took its one connection:
    /// once it forwards it becomes the primary without the events of a rotation.
    pub(super) spare: bool,
    /// Its basic-mode connection closed: what that connection sent is waiting to be
    /// acknowledged, until this deadline at most; then the session ends.
    pub(super) retiring: Option<Instant>,
}

impl Session {
    pub(super) fn new(key: SessionKey, stripe: u8, role: SessionRole, now: Instant) -> Self {
        Self {
            key,
            stripe,
            serial: 0,
            role,
            state: TunnelState::Starting,
            id: None,
            stream_url: String::new(),
            started: now,
            link: Link::Ended,
            data: None,
            recovery: Recovery::default(),
            restart_cause: None,
            ever_started: false,
            ever_forwarded: false,
            uploads_open: false,
            resumes: 0,
            ending: false,
            spare: false,
            retiring: None,
        }
    }

    /// How events and plugins name it.
    pub(super) fn reference(&self) -> SessionRef {
        SessionRef {
            stripe: self.stripe,
            serial: self.serial,
            session_id: self.id.clone(),
        }
    }

    /// Time since its StartSession.
    pub(super) fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// The attached WebSocket, if forwarding or handshaking.
    pub(super) fn online(&self) -> Option<&Online> {
        match &self.link {
            Link::Online(online) => Some(online),
            _ => None,
        }
    }

    /// The attached WebSocket, also while closing at shutdown.
    pub(super) fn attached_mut(&mut self) -> Option<&mut Online> {
        match &mut self.link {
            Link::Online(online) | Link::Closing { online, .. } => Some(online),
            _ => None,
        }
    }

    /// Whether the handshake has chosen a forwarding mode.
    pub(super) fn is_negotiated(&self) -> bool {
        self.data.as_ref().is_some_and(|d| d.negotiated.is_some())
    }

    /// Whether bytes flow now.
    pub(super) fn is_forwarding(&self) -> bool {
        self.is_negotiated() && self.online().is_some()
    }

    /// Whether it can take one more connection: negotiated (connections then wait in its
    /// channel through an outage) and, in basic mode, never used by one.
    pub(super) fn can_take_connection(&self) -> bool {
        self.role == SessionRole::Primary
            && self.retiring.is_none()
            && self.data.as_ref().is_some_and(|d| match &d.forward {
                Forward::Pending => false,
                Forward::Mux { .. } => true,
                Forward::Basic { active, used, .. } => active.is_none() && !used,
                Forward::Shell { active, .. } => active.is_none(),
            })
    }

    /// Bytes in flight towards the agent: unacknowledged and waiting to enter the channel.
    pub(super) fn bytes_in_flight(&self) -> usize {
        self.data
            .as_ref()
            .map_or(0, |d| d.channel.unacked_bytes() + d.forward.outbound_len())
    }
}
