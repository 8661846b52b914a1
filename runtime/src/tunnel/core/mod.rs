//! The tunnel core, sans-IO: everything one tunnel decides, with no socket, task or clock
//! inside (quinn-proto's split).
//!
//! A [`Core`] holds the tunnel's sessions (one per stripe, plus a successor while a
//! rotation is under way), their reliable channels and smux clients, the local connections
//! and which session carries each, every timer, and shutdown. It is driven by `handle_*`
//! calls — a frame arrived, an API call answered, a local application wrote or read,
//! time passed — each with the current `Instant`, and drained with [`Core::poll_action`]
//! (what the I/O layer must do: call an API, open a WebSocket, write frames, write to or
//! close connection N …), [`Core::poll_event`] (lifecycle events) and [`Core::poll_timeout`]
//! (when to call [`Core::handle_timeout`]). The tokio shell in `super::shell` performs the
//! actions for real; the simulated-time tests in `runtime/tests/simulated.rs` perform them
//! against an in-memory service and agent, thousands of recycles per second.
//!
//! Results of asynchronous actions name what they answer ([`OpId`], [`SocketId`]): a result
//! for a plan that was superseded meanwhile (a resume that answers after the session was
//! found gone and a restart began) is stale and ignored — or, for a StartSession that
//! created a session nobody wants any more, answered with a TerminateSession.

mod conns;
mod datapath;
pub mod encryption;
pub mod handshake;
mod lifecycle;
mod recovery;
mod rotation;
mod session;
mod shell;
mod shutdown;
mod stream;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::aws::{ApiError, SessionGrant};
use crate::channel::ChannelConfig;
use crate::events::{
    ConnectFailure, EventKind, ProbeFailure, SessionRef, SessionRole, SessionStatus, TunnelState,
    TunnelStatus,
};
use crate::plugin::CallFailure;
use crate::policy::{RecoverySettings, RotationSettings, SlowReaderSettings};
use crate::recovery::{BuiltinPolicy, Decision, DecisionContext};
use conns::Conns;
use session::{Link, Session};

/// A local connection of the tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// One WebSocket of one session (every connect attempt gets a new one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId(pub u64);

/// One asynchronous operation: an API call or a plugin decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub u64);

/// A session of the tunnel, for the I/O layer's per-session state (the upload gate).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey(pub u32);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Everything the core needs to know about its tunnel.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// Sessions to stripe over (`sessions = K`), 1–16.
    pub stripes: u8,
    /// Make-before-break rotation, when the maximum session duration is known.
    pub rotation: Option<RotationSettings>,
    /// WebSocket ping period.
    pub ping_interval: Duration,
    /// A socket with nothing received (no pong, no frame) for this long, or whose writes make
    /// no progress for this long, is dead.
    pub pong_timeout: Duration,
    /// How long a new session may take from its socket opening to HandshakeComplete.
    pub handshake_timeout: Duration,
    /// The built-in recovery policy's settings.
    pub recovery: RecoverySettings,
    /// Reliable channel limits.
    pub channel: ChannelConfig,
    /// Limits for local applications that stop reading.
    pub slow_reader: SlowReaderSettings,
    /// smux NOP period, for agents that keep smux keepalive on (smux's 10 s).
    pub smux_keepalive: Duration,
    /// Seeds the built-in policy's jitter.
    pub seed: u64,
    /// How long shutdown waits for the agent to acknowledge the TerminateSession flag.
    pub flag_grace: Duration,
    /// How long shutdown waits for TerminateSession calls (credential loading included).
    pub terminate_budget: Duration,
    /// Accepted connections waiting for a session beyond which no more are accepted.
    pub max_waiting: usize,
    /// The local end is one byte stream that exists before the first session (stdin/stdout)
    /// instead of a listener: it is never moved to a new session, and the tunnel ends with it
    /// (see `stream.rs`). Implies one stripe and no rotation.
    pub single_stream: bool,
    /// How long, once a single stream's application (or a basic-mode connection's) has
    /// closed its side, what it sent may take to be acknowledged by the agent before the
    /// session is ended anyway.
    pub stream_drain: Duration,
    /// What the document starts: port forwarding, or a shell or command (then the local end
    /// is one stream, a terminal or stdin/stdout, and `single_stream` is implied).
    pub kind: handshake::SessionKind,
    /// The StartSession target, which KMS encryption binds the data key to.
    pub target: String,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            stripes: 1,
            rotation: None,
            ping_interval: crate::policy::DEFAULT_PING_INTERVAL,
            pong_timeout: crate::policy::DEFAULT_PONG_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            recovery: RecoverySettings::default(),
            channel: ChannelConfig::default(),
            slow_reader: SlowReaderSettings::default(),
            smux_keepalive: SMUX_KEEPALIVE,
            seed: 0,
            flag_grace: Duration::from_secs(3),
            terminate_budget: Duration::from_secs(10),
            max_waiting: MAX_WAITING,
            single_stream: false,
            stream_drain: Duration::from_secs(30),
            kind: handshake::SessionKind::Port,
            target: String::new(),
        }
    }
}

/// Default [`CoreConfig::handshake_timeout`]: the agent gives the client 15 s to answer; the
/// official client waits forever.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// smux keepalive period of agents that keep it on (docs/protocol.md §6.2).
pub const SMUX_KEEPALIVE: Duration = Duration::from_secs(10);
/// Default [`CoreConfig::max_waiting`]: during a long outage a client that reconnects in a
/// loop must not exhaust memory or file descriptors.
pub const MAX_WAITING: usize = 512;

/// One WebSocket message to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutFrame {
    /// A binary frame (one ClientMessage).
    Binary(Bytes),
    /// A ping with the payload `keepalive`.
    Ping,
}

impl OutFrame {
    /// Bytes it occupies in the writer's queue.
    pub fn len(&self) -> usize {
        match self {
            Self::Binary(frame) => frame.len(),
            Self::Ping => PING_PAYLOAD.len(),
        }
    }

    /// Whether it is empty (never: a frame always has a header).
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// The payload of every ping.
pub const PING_PAYLOAD: &[u8] = b"keepalive";

/// What the I/O layer must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Call StartSession for the tunnel's target and document; answer with
    /// [`Core::handle_started`].
    StartSession {
        /// Names the answer.
        op: OpId,
    },
    /// Call ResumeSession; answer with [`Core::handle_resumed`].
    ResumeSession {
        /// Names the answer.
        op: OpId,
        /// The session.
        session_id: String,
    },
    /// Call TerminateSession; answer with [`Core::handle_terminated`].
    TerminateSession {
        /// Names the answer.
        op: OpId,
        /// The session.
        session_id: String,
    },
    /// Open the data-channel WebSocket (signed upgrade, then the OpenDataChannel frame with
    /// the grant's token); answer with [`Core::handle_connected`].
    Connect {
        /// The new socket.
        socket: SocketId,
        /// Session id, token and StreamUrl. Secret: never log it.
        grant: SessionGrant,
    },
    /// Write these frames, in order; report progress with [`Core::handle_socket_flushed`].
    Send {
        /// The socket.
        socket: SocketId,
        /// The frames.
        frames: Vec<OutFrame>,
    },
    /// Close a socket: with a close handshake after what is queued (`graceful`), or at once.
    CloseSocket {
        /// The socket.
        socket: SocketId,
        /// Whether to flush and send a close frame first.
        graceful: bool,
    },
    /// Ask the reconnect-policy plugin; answer with [`Core::handle_decision`].
    Decide {
        /// Names the answer.
        op: OpId,
        /// What the plugin is told.
        context: Box<DecisionContext>,
    },
    /// Start moving bytes of an accepted connection: read it while `session`'s upload gate is
    /// open, write what [`Action::WriteLocal`] hands over.
    Bind {
        /// The connection.
        conn: ConnId,
        /// The session that carries it.
        session: SessionKey,
        /// The gate's state now.
        uploads: bool,
    },
    /// Open or close a session's upload gate: while it is closed, its connections are not
    /// read (the channel's window, the smux outbound queue or a reorder gap is full).
    Uploads {
        /// The session.
        session: SessionKey,
        /// Whether reading is allowed.
        open: bool,
    },
    /// The session is gone for good; forget its gate.
    SessionEnded {
        /// The session.
        session: SessionKey,
    },
    /// Queue bytes for a connection's application; report with
    /// [`Core::handle_local_written`].
    WriteLocal {
        /// The connection.
        conn: ConnId,
        /// The bytes.
        data: Bytes,
    },
    /// Ask KMS for a data key (a shell session's encryption); answer with
    /// [`Core::handle_data_key`].
    GenerateDataKey {
        /// Names the answer.
        op: OpId,
        /// The KMS key, as the session preferences name it.
        key_id: String,
        /// The encryption context the agent will decrypt the key with.
        context: Vec<(String, String)>,
    },
    /// Write bytes of the remote command's standard error (a shell session's StdErr) to this
    /// process's standard error.
    WriteStderr {
        /// The bytes.
        data: Bytes,
    },
    /// Close a connection: after writing what is queued (`drain`, bounded in time by the I/O
    /// layer), or at once. Nothing more is read from it.
    CloseLocal {
        /// The connection.
        conn: ConnId,
        /// Whether queued bytes are written first.
        drain: bool,
    },
}

/// A lifecycle event and the session it is about.
#[derive(Clone, Debug, PartialEq)]
pub struct CoreEvent {
    /// The session; `None` for tunnel-wide events.
    pub session: Option<SessionRef>,
    /// What happened.
    pub kind: EventKind,
}

/// How a WebSocket ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketClose {
    /// A close frame arrived.
    Closed {
        /// Its code (1000: the service's planned recycle).
        code: u16,
        /// Its reason text.
        reason: String,
    },
    /// A close frame without a code arrived.
    ClosedWithoutCode,
    /// Reading or writing failed.
    Failed(String),
    /// The stream ended without a close frame.
    Ended,
}

/// What a reconnect-policy plugin answered.
#[derive(Clone, Debug, PartialEq)]
pub enum PolicyAnswer {
    /// Its decision.
    Decided(Decision),
    /// It failed; the built-in policy decides and an event says so.
    Failed(CallFailure),
    /// No plugin is configured (any more); the built-in policy decides.
    Unavailable,
}

/// Why a tunnel stopped on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Asked to stop ([`Core::shutdown`]).
    Requested,
    /// The reconnect policy gave up, or a single stream could not go on; the reason.
    GaveUp(String),
    /// A single-stream tunnel's stream ended normally: its application closed it, or the
    /// agent ended the session. The reason, for logs.
    Ended(String),
}

#[derive(Debug)]
enum OpKind {
    Start,
    Resume,
    Decide(Box<DecisionContext>),
    DataKey,
}

#[derive(Debug)]
struct Op {
    session: SessionKey,
    epoch: u64,
    kind: OpKind,
}

#[derive(Debug)]
struct Stopping {
    reason: Stopped,
    /// Everything is abandoned after this.
    deadline: Instant,
    /// Flags sent at shutdown are waited for until then.
    flag_deadline: Instant,
}

/// The tunnel core; see the module docs.
#[derive(Debug)]
pub struct Core {
    config: CoreConfig,
    /// Maps `Instant`s to Unix milliseconds for the channels' CreatedDate.
    clock: (Instant, u64),
    sessions: Vec<Session>,
    conns: Conns,
    ops: HashMap<OpId, Op>,
    /// TerminateSession calls in flight: shutdown waits for them.
    terminating: HashMap<OpId, String>,
    sockets: HashMap<SocketId, SessionKey>,
    next_id: u64,
    next_key: u32,
    next_serial: u32,
    policy: BuiltinPolicy,
    reconnect_plugin: bool,
    actions: VecDeque<Action>,
    events: VecDeque<CoreEvent>,
    status: TunnelStatus,
    status_dirty: bool,
    stopping: Option<Stopping>,
    finished: bool,
    /// The local terminal's size, for shell sessions.
    terminal_size: Option<(u16, u16)>,
    /// A shell's local input ended before the shell ran.
    input_ended_early: bool,
}

impl Core {
    /// A tunnel starting its sessions. `now` and `unix_ms` are the same moment, as an
    /// `Instant` and as milliseconds since the Unix epoch. The first StartSession calls are
    /// the first actions.
    pub fn new(mut config: CoreConfig, now: Instant, unix_ms: u64) -> Self {
        if config.kind != handshake::SessionKind::Port {
            config.single_stream = true;
        }
        if config.single_stream {
            // A stream cannot be striped over sessions or handed to a successor.
            config.stripes = 1;
            config.rotation = None;
        }
        let mut core = Self {
            policy: BuiltinPolicy::new(config.recovery, config.seed),
            conns: Conns::new(config.slow_reader),
            config,
            clock: (now, unix_ms),
            sessions: Vec::new(),
            ops: HashMap::new(),
            terminating: HashMap::new(),
            sockets: HashMap::new(),
            next_id: 0,
            next_key: 0,
            next_serial: 0,
            reconnect_plugin: false,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            status: TunnelStatus::default(),
            status_dirty: true,
            stopping: None,
            finished: false,
            terminal_size: None,
            input_ended_early: false,
        };
        for stripe in 0..core.config.stripes.max(1) {
            let key = core.add_session(stripe, SessionRole::Primary, now);
            core.start(key, now);
        }
        core
    }

    // ----- outputs ------------------------------------------------------------------------

    /// The next thing the I/O layer must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next lifecycle event.
    pub fn poll_event(&mut self) -> Option<CoreEvent> {
        self.events.pop_front()
    }

    /// The status, recomputed if something changed since the last call; `None` when only
    /// byte counters moved (read them with [`Core::status`]).
    pub fn poll_status(&mut self, now: Instant) -> Option<&TunnelStatus> {
        if !std::mem::take(&mut self.status_dirty) {
            return None;
        }
        self.refresh_status(now);
        Some(&self.status)
    }

    /// The status as of the last [`Core::poll_status`], with current byte counters.
    pub fn status(&self) -> &TunnelStatus {
        &self.status
    }

    /// Whether the I/O layer may accept another local connection now.
    pub fn is_accepting(&self) -> bool {
        self.stopping.is_none() && self.conns.waiting() < self.config.max_waiting
    }

    /// Once the tunnel has stopped: why. Nothing more will happen after that.
    pub fn stopped(&self) -> Option<&Stopped> {
        if self.finished {
            self.stopping.as_ref().map(|s| &s.reason)
        } else {
            None
        }
    }

    /// When [`Core::handle_timeout`] must be called next, if ever.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        let mut next = self.conns.next_stall();
        let mut consider = |at: Option<Instant>| {
            if let Some(at) = at {
                next = Some(next.map_or(at, |n: Instant| n.min(at)));
            }
        };
        let stopping = self.stopping.is_some();
        for session in &mut self.sessions {
            if !stopping {
                consider(session.retiring);
            }
            match &session.link {
                Link::Waiting { until, .. } => consider(Some(*until)),
                Link::Online(online) | Link::Closing { online, .. } => {
                    consider(Some(online.next_ping));
                    consider(Some(online.last_rx + self.config.pong_timeout));
                    consider(online.next_nop);
                    consider(online.handshake_deadline);
                    consider(
                        online
                            .write_stalled_since
                            .map(|since| since + self.config.pong_timeout),
                    );
                    if let Link::Closing { until, .. } = &session.link {
                        consider(Some(*until));
                    }
                    consider(session.data.as_mut().and_then(|d| d.channel.poll_timeout()));
                }
                Link::Deciding { .. }
                | Link::Calling { .. }
                | Link::Connecting { .. }
                | Link::Ended => {}
            }
        }
        consider(self.rotation_timer());
        consider(self.stopping.as_ref().map(|s| s.deadline));
        next
    }

    // ----- inputs -------------------------------------------------------------------------

    /// A reconnect-policy plugin is now configured (or no longer is).
    pub fn set_reconnect_plugin(&mut self, present: bool) {
        self.reconnect_plugin = present;
    }

    /// Time passed: retransmissions, pings, deadlines, backoff waits, rotations, stalls.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.finished {
            return;
        }
        for key in self.keys() {
            self.session_timers(key, now);
        }
        self.rotation_timers(now);
        for conn in self.conns.stalled(now) {
            tracing::debug!(conn = %conn, timeout = ?self.conns.stall_timeout(),
                "local application accepted nothing while data waited");
            self.close_conn(conn, crate::events::CloseReason::SlowReader, false, now);
        }
        self.check_finished(now);
    }

    /// The machine slept or moved networks ([`crate::wake`]): no open socket can be trusted.
    /// Forwarding sessions resume now instead of at their pong deadline, and sessions waiting
    /// out a backoff try now, since what they waited for may have been the network itself.
    pub fn handle_wake(&mut self, wake: &crate::wake::Wake, now: Instant) {
        if self.finished || self.stopping.is_some() {
            return;
        }
        for key in self.keys() {
            let Some(session) = self.session(key) else {
                continue;
            };
            match session.link {
                Link::Online(_) => {
                    let cause = crate::events::Cause::Wakeup(wake.to_string());
                    self.disconnected(key, cause, now);
                }
                Link::Waiting { tier, .. } => self.begin(key, tier, now),
                _ => {}
            }
        }
    }

    /// A local connection was accepted; returns its id. Call only while
    /// [`Core::is_accepting`].
    pub fn handle_accept(&mut self, peer: String, now: Instant) -> ConnId {
        let id = self.conns.accept();
        self.emit(None, EventKind::ConnectionOpened { id: id.0, peer });
        self.status_dirty = true;
        if self.stopping.is_some() {
            self.close_conn(id, crate::events::CloseReason::TunnelStopped, false, now);
        } else {
            self.bind_waiting(now);
        }
        id
    }

    /// A health check says the tunnel carries nothing: every forwarding session is treated
    /// as dead. (Probes enter through the local end like any application, so the core cannot
    /// tell which session carried the failed ones; with one session per stripe each
    /// recovers on its own.)
    pub fn handle_probe_failure(&mut self, failure: ProbeFailure, now: Instant) {
        if self.stopping.is_some() {
            return;
        }
        for key in self.keys() {
            let forwarding = self
                .session(key)
                .is_some_and(|s| s.is_forwarding() && s.role != SessionRole::Draining);
            if forwarding {
                self.disconnected(key, crate::events::Cause::ProbeFailed(failure.clone()), now);
            }
        }
    }

    /// A StartSession call answered.
    pub fn handle_started(
        &mut self,
        op: OpId,
        result: Result<SessionGrant, ApiError>,
        now: Instant,
    ) {
        self.on_started(op, result, now);
        self.check_finished(now);
    }

    /// A ResumeSession call answered (`Ok(None)`: no token, the session is gone).
    pub fn handle_resumed(
        &mut self,
        op: OpId,
        result: Result<Option<SessionGrant>, ApiError>,
        now: Instant,
    ) {
        self.on_resumed(op, result, now);
    }

    /// A TerminateSession call answered (or was abandoned by the I/O layer).
    pub fn handle_terminated(&mut self, op: OpId, result: Result<(), ApiError>, now: Instant) {
        if let Some(session_id) = self.terminating.remove(&op) {
            match result {
                Ok(()) => tracing::debug!(%session_id, "session terminated"),
                Err(err) => tracing::warn!(%session_id, error = %err, "TerminateSession failed"),
            }
        }
        self.check_finished(now);
    }

    /// The reconnect-policy plugin answered.
    pub fn handle_decision(&mut self, op: OpId, answer: PolicyAnswer, now: Instant) {
        self.on_decision(op, answer, now);
    }

    /// A WebSocket asked for by [`Action::Connect`] is open (its OpenDataChannel frame
    /// written), or could not be opened.
    pub fn handle_connected(
        &mut self,
        socket: SocketId,
        result: Result<(), ConnectFailure>,
        now: Instant,
    ) {
        self.on_connected(socket, result, now);
    }

    /// A binary frame arrived.
    pub fn handle_frame(&mut self, socket: SocketId, frame: Bytes, now: Instant) {
        self.on_frame(socket, frame, now);
        self.check_finished(now);
    }

    /// Something other than a binary frame arrived (ping, pong, text): the socket lives.
    pub fn handle_socket_activity(&mut self, socket: SocketId, now: Instant) {
        if let Some(online) = self
            .socket_session(socket)
            .and_then(|key| self.session_mut(key))
            .and_then(Session::attached_mut)
            .filter(|o| o.socket == socket)
        {
            online.last_rx = now;
        }
    }

    /// The socket's writer wrote `bytes` of what [`Action::Send`] handed over.
    pub fn handle_socket_flushed(&mut self, socket: SocketId, bytes: usize, now: Instant) {
        let Some(key) = self.socket_session(socket) else {
            return;
        };
        if let Some(online) = self
            .session_mut(key)
            .and_then(Session::attached_mut)
            .filter(|o| o.socket == socket)
        {
            online.queued = online.queued.saturating_sub(bytes);
            online.write_stalled_since = (online.queued > 0).then_some(now);
        }
        self.flush(key, now);
    }

    /// The socket ended.
    pub fn handle_socket_closed(&mut self, socket: SocketId, close: SocketClose, now: Instant) {
        self.on_socket_closed(socket, close, now);
        self.check_finished(now);
    }

    /// A local application sent bytes.
    pub fn handle_local_data(&mut self, conn: ConnId, data: Bytes, now: Instant) {
        self.on_local_data(conn, data, now);
    }

    /// A local application accepted `bytes` of what [`Action::WriteLocal`] queued.
    pub fn handle_local_written(&mut self, conn: ConnId, bytes: usize, now: Instant) {
        self.conns.written(conn, bytes, now);
    }

    /// KMS answered a [`Action::GenerateDataKey`].
    pub fn handle_data_key(
        &mut self,
        op: OpId,
        result: Result<encryption::DataKey, ApiError>,
        now: Instant,
    ) {
        self.on_data_key(op, result, now);
        self.check_finished(now);
    }

    /// The local terminal has (now) this size: a shell session is told (at once, or as soon
    /// as it forwards).
    pub fn handle_resize(&mut self, cols: u16, rows: u16, now: Instant) {
        self.on_resize(cols, rows, now);
    }

    /// A local application's input ended (end of file) while its output may go on. A shell
    /// session passes the end on to the remote terminal and keeps the output coming; any
    /// other connection is closed as by [`Core::handle_local_closed`].
    pub fn handle_local_eof(&mut self, conn: ConnId, now: Instant) {
        if !self.shell_input_ended(conn, now) {
            self.handle_local_closed(conn, now);
        }
    }

    /// A local application closed its side, or its socket failed.
    pub fn handle_local_closed(&mut self, conn: ConnId, now: Instant) {
        self.close_conn(conn, crate::events::CloseReason::ClientClosed, true, now);
    }

    // ----- shared helpers -----------------------------------------------------------------

    fn next_op(&mut self) -> OpId {
        self.next_id += 1;
        OpId(self.next_id)
    }

    fn next_socket(&mut self) -> SocketId {
        self.next_id += 1;
        SocketId(self.next_id)
    }

    fn unix_ms(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.clock.0).as_millis();
        self.clock
            .1
            .saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX))
    }

    fn add_session(&mut self, stripe: u8, role: SessionRole, now: Instant) -> SessionKey {
        let key = SessionKey(self.next_key);
        self.next_key += 1;
        self.sessions.push(Session::new(key, stripe, role, now));
        self.status_dirty = true;
        key
    }

    fn keys(&self) -> Vec<SessionKey> {
        self.sessions.iter().map(|s| s.key).collect()
    }

    fn session(&self, key: SessionKey) -> Option<&Session> {
        self.sessions.iter().find(|s| s.key == key)
    }

    fn session_mut(&mut self, key: SessionKey) -> Option<&mut Session> {
        self.sessions.iter_mut().find(|s| s.key == key)
    }

    fn socket_session(&self, socket: SocketId) -> Option<SessionKey> {
        self.sockets.get(&socket).copied()
    }

    fn emit(&mut self, session: Option<SessionRef>, kind: EventKind) {
        self.events.push_back(CoreEvent { session, kind });
    }

    fn emit_for(&mut self, key: SessionKey, kind: EventKind) {
        let session = self.session(key).map(Session::reference);
        self.emit(session, kind);
    }

    fn set_state(&mut self, key: SessionKey, state: TunnelState) {
        if let Some(session) = self.session_mut(key)
            && session.state != state
        {
            session.state = state;
            self.status_dirty = true;
        }
    }

    fn refresh_status(&mut self, now: Instant) {
        let status = &mut self.status;
        status.sessions.clear();
        let mut ordered: Vec<&Session> = self.sessions.iter().collect();
        ordered.sort_by_key(|s| (s.role != SessionRole::Primary, s.stripe, s.serial));
        let (mut retransmitted, mut duplicates) = (0, 0);
        for session in ordered {
            let (connections, _) = self.conns.load_of(session.key);
            if let Some(data) = &session.data {
                retransmitted += data.channel.stats().retransmitted;
                duplicates += data.channel.stats().duplicates;
            }
            status.sessions.push(SessionStatus {
                session: session.reference(),
                role: session.role,
                state: session.state,
                age: session.age(now),
                connections,
                resumes: session.resumes,
            });
        }
        status.retransmitted = retransmitted;
        status.duplicates_received = duplicates;
        status.connections = self.conns.len();
        let primaries = status
            .sessions
            .iter()
            .filter(|s| s.role == SessionRole::Primary);
        status.state = if self.finished {
            TunnelState::Stopped
        } else {
            primaries
                .clone()
                .map(|s| s.state)
                .max()
                .unwrap_or(TunnelState::Starting)
        };
        status.session_id = status
            .sessions
            .iter()
            .find(|s| s.role == SessionRole::Primary)
            .and_then(|s| s.session.session_id.clone());
    }
}

#[cfg(test)]
mod tests;
