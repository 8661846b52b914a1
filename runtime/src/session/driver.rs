//! The tunnel driver: one task that owns the session state and runs the recovery tiers.
//!
//! Everything slow (API calls, WebSocket upgrades) runs in spawned operations whose results
//! come back on a channel, so that while a resume or restart is in progress the driver keeps
//! accepting local connections and buffering their bytes in the reliable channel (up to its
//! window), and keeps the listener's promise: nothing accepted is dropped.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::events::{EventKind, TunnelEvent, TunnelState, TunnelStatus};
use super::handshake::{self, Negotiated, PortMode};
use super::local::{LocalConn, LocalEvent};
use super::{TunnelConfig, TunnelError};
use crate::aws::{ApiError, SessionGrant, SsmApi};
use crate::channel::{Channel, ChannelEvent};
use crate::mux::{MuxClient, MuxEvent};
use crate::plugin::{CallFailure, Role};
use crate::protocol::PayloadType;
use crate::protocol::message::MAX_STREAM_PAYLOAD;
use crate::protocol::payload::{Flag, HandshakeRequest};
use crate::recovery::{
    BuiltinPolicy, Cause, Decision, DecisionContext, HISTORY_LEN, OutageSummary, ProbeFailure,
};
use crate::transport::connect::{self, ClientIdentity, DataSocket};

/// Outgoing smux bytes beyond which local sockets are no longer read.
const OUTBOUND_HIGH_WATER: usize = 64 * 1024;
/// Incoming messages held behind a gap beyond which local sockets are no longer read. The
/// agent fills a gap at one message per 100 ms; meanwhile request/response traffic (the
/// common case) is throttled at its source instead of piling up behind the gap.
const REORDER_HIGH_WATER: usize = 2048;
/// smux keepalive period of agents that keep it on (§6.2).
const SMUX_KEEPALIVE: Duration = Duration::from_secs(10);
/// Accepted connections waiting for a forwarding session beyond which no more are accepted
/// (the listener's backlog then holds, and refuses, the rest): during a long outage a client
/// that reconnects in a loop must not exhaust memory or file descriptors.
const MAX_WAITING: usize = 512;
/// How long shutdown waits for the TerminateSession flag and API call.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

pub(super) struct Driver {
    config: TunnelConfig,
    api: SsmApi,
    identity: ClientIdentity,
    policy: BuiltinPolicy,
    events: broadcast::Sender<TunnelEvent>,
    status: watch::Sender<TunnelStatus>,
    accept_rx: mpsc::Receiver<(TcpStream, SocketAddr)>,
    /// Health checks that gave up on the tunnel (from the plugin supervisor).
    probe_rx: mpsc::Receiver<ProbeFailure>,
    local_tx: mpsc::Sender<LocalEvent>,
    local_rx: mpsc::Receiver<LocalEvent>,
    drained: Arc<Notify>,
    ops_tx: mpsc::Sender<(u64, OpResult)>,
    ops_rx: mpsc::Receiver<(u64, OpResult)>,
    /// Generation of the recovery plan: every decision starts a new one, and a result of an
    /// operation spawned under an older one is stale (its plan was superseded while it ran).
    epoch: u64,
    /// StartSession calls spawned whose result has not come back: at shutdown, each may still
    /// create a session that must be terminated.
    starts_in_flight: usize,
    conns: HashMap<u64, Conn>,
    /// Accepted sockets not yet bound to a stream (no forwarding session, or basic mode busy).
    waiting: VecDeque<(u64, TcpStream)>,
    next_conn: u64,
    session: Option<Session>,
    phase: Phase,
    outage: Option<Outage>,
    /// When the last outage ended and what it had used, for the stable-period budget.
    recovered: Option<(Instant, u32, u32)>,
    /// Earlier outages, newest first, for reconnect-policy plugins.
    history: VecDeque<PastOutage>,
    /// The cause to report when the pending restart begins.
    restart_cause: Option<Cause>,
    /// The smux session broke (protocol error): the session must be replaced.
    mux_failed: Option<String>,
    /// Whether a StartSession ever succeeded: every later one is a restart.
    ever_started: bool,
}

struct Conn {
    local: LocalConn,
    stream: Option<u32>,
}

struct Session {
    id: String,
    /// The StreamUrl to dial, from StartSession or the latest ResumeSession.
    stream_url: String,
    started: Instant,
    channel: Channel,
    pending_negotiation: Option<Negotiated>,
    negotiated: Option<Negotiated>,
    mux: MuxClient,
    streams: HashMap<u32, u64>,
    basic_active: Option<u64>,
    basic_out: VecDeque<BasicOut>,
    /// Whether this session replaced one that was gone (for the Restarted event).
    is_restart: bool,
}

enum BasicOut {
    Data(Bytes),
    Flag(Flag),
}

enum Phase {
    /// Waiting for a backoff delay before the next step.
    Waiting { until: Instant, then: Tier },
    /// An operation (start, resume, connect) is in flight.
    Busy,
    /// A WebSocket is attached.
    Online(Box<Online>),
}

struct Online {
    socket: DataSocket,
    last_rx: Instant,
    next_ping: Instant,
    next_nop: Option<Instant>,
    /// A new session's handshake must complete by then (the agent sends its request as soon
    /// as both sides are connected; the official client waits forever, §5).
    handshake_deadline: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tier {
    Resume,
    Restart,
}

struct Outage {
    since: Instant,
    /// The cause that started it.
    cause: Cause,
    /// Failed attempts in this outage.
    attempt: u32,
    /// Failed resumes in this outage.
    failed_resumes: u32,
    /// Attempts and failed resumes carried over from a previous outage that ended less
    /// than `stable_after` before this one began (flapping): the built-in policy counts
    /// them, plugins see raw counts and the history.
    carried: (u32, u32),
    /// The delay chosen for the latest step.
    last_delay: Option<Duration>,
}

struct PastOutage {
    cause: Cause,
    attempts: u32,
    failed_resumes: u32,
    duration: Duration,
    restarted: bool,
    ended: Instant,
}

enum OpResult {
    Started(Result<SessionGrant, ApiError>),
    Resumed(Result<Option<SessionGrant>, ApiError>),
    Connected {
        session_id: String,
        result: Result<Box<DataSocket>, String>,
    },
    /// A reconnect-policy plugin answered (or failed to).
    Decided {
        context: Box<DecisionContext>,
        answer: Result<Decision, CallFailure>,
    },
}

// One value per loop turn, moved straight into its handler: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Wake {
    Shutdown,
    Accepted(TcpStream, SocketAddr),
    Local(LocalEvent),
    Op(u64, OpResult),
    Socket(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    Timer,
    Drained,
    Probe(ProbeFailure),
}

/// Why the main loop ends.
#[derive(Debug)]
enum Stop {
    GiveUp(String),
}

impl Driver {
    pub(super) fn new(
        config: TunnelConfig,
        api: SsmApi,
        events: broadcast::Sender<TunnelEvent>,
        status: watch::Sender<TunnelStatus>,
        accept_rx: mpsc::Receiver<(TcpStream, SocketAddr)>,
        probe_rx: mpsc::Receiver<ProbeFailure>,
    ) -> Self {
        let (local_tx, local_rx) = mpsc::channel(64);
        let (ops_tx, ops_rx) = mpsc::channel(8);
        Self {
            policy: BuiltinPolicy::new(config.recovery, config.seed),
            config,
            api,
            identity: ClientIdentity::default(),
            events,
            status,
            accept_rx,
            probe_rx,
            local_tx,
            local_rx,
            drained: Arc::new(Notify::new()),
            ops_tx,
            ops_rx,
            epoch: 0,
            starts_in_flight: 0,
            conns: HashMap::new(),
            waiting: VecDeque::new(),
            next_conn: 0,
            session: None,
            phase: Phase::Waiting {
                until: Instant::now(),
                then: Tier::Restart,
            },
            outage: None,
            recovered: None,
            history: VecDeque::new(),
            restart_cause: None,
            mux_failed: None,
            ever_started: false,
        }
    }

    pub(super) fn emit(&self, kind: EventKind) {
        // No subscriber is fine.
        let _ = self.events.send(TunnelEvent {
            tunnel: self.config.name.clone(),
            at: SystemTime::now(),
            kind,
        });
    }

    pub(super) async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), TunnelError> {
        let result = self.main_loop(&mut shutdown).await;
        match result {
            Ok(()) => {
                self.terminate().await;
                self.reap_starts().await;
                self.set_state(TunnelState::Stopped);
                self.emit(EventKind::Stopped);
                Ok(())
            }
            Err(Stop::GiveUp(reason)) => {
                self.emit(EventKind::GivingUp {
                    reason: reason.clone(),
                });
                self.terminate().await;
                self.reap_starts().await;
                self.set_state(TunnelState::Stopped);
                self.emit(EventKind::Stopped);
                Err(TunnelError::GaveUp {
                    name: self.config.name.clone(),
                    reason,
                })
            }
        }
    }

    async fn main_loop(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), Stop> {
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let timer = self.next_timer();
            let take_local = self.can_take_local();
            let take_accepted = self.waiting.len() < MAX_WAITING;
            let wake = tokio::select! {
                _ = shutdown.changed() => Wake::Shutdown,
                Some((epoch, op)) = self.ops_rx.recv() => Wake::Op(epoch, op),
                message = recv_socket(&mut self.phase) => Wake::Socket(message),
                Some((socket, peer)) = self.accept_rx.recv(), if take_accepted => Wake::Accepted(socket, peer),
                Some(event) = self.local_rx.recv(), if take_local => Wake::Local(event),
                () = sleep_until(timer) => Wake::Timer,
                () = self.drained.notified() => Wake::Drained,
                Some(failure) = self.probe_rx.recv() => Wake::Probe(failure),
            };
            let now = Instant::now();
            match wake {
                Wake::Shutdown => return Ok(()),
                Wake::Accepted(socket, peer) => self.on_accept(socket, peer),
                Wake::Local(event) => self.on_local(event, now),
                Wake::Op(epoch, op) => self.on_op(epoch, op, now)?,
                Wake::Socket(message) => self.on_socket(message, now)?,
                Wake::Timer => self.on_timer(now)?,
                Wake::Drained => {}
                Wake::Probe(failure) => self.on_probe_failure(failure, now)?,
            }
            self.process(now)?;
            self.flush(shutdown).await?;
        }
    }

    // ----- wake-ups -------------------------------------------------------------------------

    fn on_accept(&mut self, socket: TcpStream, peer: SocketAddr) {
        let id = self.next_conn;
        self.next_conn += 1;
        self.emit(EventKind::ConnectionOpened { id, peer });
        self.waiting.push_back((id, socket));
        self.bind_waiting();
        // bind_waiting counts only when a session is forwarding; waiting sockets count too.
        let connections = self.conns.len() + self.waiting.len();
        self.update_status(|s| s.connections = connections);
    }

    fn on_local(&mut self, event: LocalEvent, now: Instant) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        match event {
            LocalEvent::Data(id, data) => {
                let Some(conn) = self.conns.get_mut(&id) else {
                    return;
                };
                conn.local.bytes_up += data.len() as u64;
                let len = data.len() as u64;
                match (conn.stream, session.mode()) {
                    (Some(stream), Some(PortMode::Mux { .. })) => session.mux.write(stream, &data),
                    (_, Some(PortMode::Basic { .. })) if session.basic_active == Some(id) => {
                        for chunk in data.chunks(MAX_STREAM_PAYLOAD) {
                            session
                                .basic_out
                                .push_back(BasicOut::Data(data.slice_ref(chunk)));
                        }
                    }
                    _ => return,
                }
                self.status.send_if_modified(|s| {
                    s.bytes_up += len;
                    false
                });
            }
            LocalEvent::Closed(id) => {
                let Some(conn) = self.conns.remove(&id) else {
                    return;
                };
                if let Some(stream) = conn.stream {
                    session.mux.close(stream);
                    session.streams.remove(&stream);
                }
                if session.basic_active == Some(id) {
                    session
                        .basic_out
                        .push_back(BasicOut::Flag(Flag::DisconnectToPort));
                    session.basic_active = None;
                }
                self.close_conn(id, conn, "closed by client");
                self.bind_waiting();
            }
        }
        let _ = now;
    }

    fn on_op(&mut self, epoch: u64, op: OpResult, now: Instant) -> Result<(), Stop> {
        if matches!(op, OpResult::Started(_)) {
            self.starts_in_flight = self.starts_in_flight.saturating_sub(1);
        }
        if epoch != self.epoch {
            // The plan this operation belonged to was superseded while it ran (e.g. a
            // channel_closed surfaced during a resume and a restart began): acting on it would
            // run two recoveries at once: a phase overwritten under an in-flight operation,
            // a second StartSession replacing the first without closing its connections. A
            // session it started is of no use to anyone: terminate it.
            tracing::debug!(tunnel = %self.config.name, "stale operation result ignored");
            if let OpResult::Started(Ok(grant)) = op {
                self.terminate_in_background(grant.session_id);
            }
            return Ok(());
        }
        match op {
            OpResult::Decided { context, answer } => {
                let decision = answer.unwrap_or_else(|failure| {
                    tracing::warn!(tunnel = %self.config.name, error = %failure,
                        "reconnect policy failed; the built-in policy decides");
                    self.emit(EventKind::PluginFailed {
                        plugin: failure.plugin,
                        role: Role::ReconnectPolicy,
                        reason: failure.reason,
                        quarantined: failure.quarantined,
                    });
                    self.builtin_decide(&context)
                });
                self.apply(*context, decision, now)
            }
            OpResult::Started(Ok(grant)) => {
                let is_restart = std::mem::replace(&mut self.ever_started, true);
                self.session = Some(Session::new(&grant, &self.config, now, is_restart));
                self.emit(EventKind::SessionStarted {
                    session_id: grant.session_id.clone(),
                });
                self.update_status(|s| s.session_id = Some(grant.session_id.clone()));
                self.spawn_connect(grant);
                Ok(())
            }
            OpResult::Started(Err(err)) => self.failed(Cause::StartFailed(err), now),
            OpResult::Resumed(Ok(Some(mut grant))) => {
                // Always dial the StreamUrl ResumeSession returned: the old one's cell may be
                // stale (§9.5 cause 1). An empty one means "unchanged".
                if let Some(session) = self.session.as_mut() {
                    if grant.stream_url.is_empty() {
                        grant.stream_url.clone_from(&session.stream_url);
                    } else {
                        session.stream_url.clone_from(&grant.stream_url);
                    }
                }
                self.spawn_connect(grant);
                Ok(())
            }
            OpResult::Resumed(Ok(None)) => self.failed(
                Cause::SessionGone("ResumeSession returned no token".into()),
                now,
            ),
            OpResult::Resumed(Err(err)) if err.is_session_gone() => {
                self.failed(Cause::SessionGone(err.to_string()), now)
            }
            OpResult::Resumed(Err(err)) => {
                if let Some(outage) = self.outage.as_mut() {
                    outage.failed_resumes += 1;
                }
                self.failed(Cause::ResumeFailed(err), now)
            }
            OpResult::Connected { session_id, result } => {
                // A connect for a session replaced meanwhile is stale.
                if self.session.as_ref().map(|s| s.id.as_str()) != Some(session_id.as_str()) {
                    return Ok(());
                }
                match result {
                    Ok(socket) => {
                        self.on_connected(socket, now);
                        Ok(())
                    }
                    Err(detail) => {
                        if let Some(outage) = self.outage.as_mut() {
                            outage.failed_resumes += 1;
                        }
                        self.failed(Cause::ConnectFailed(detail), now)
                    }
                }
            }
        }
    }

    fn on_connected(&mut self, socket: Box<DataSocket>, now: Instant) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        session.channel.on_connected(now);
        let keepalive = matches!(session.mode(), Some(PortMode::Mux { keepalive: true }));
        if keepalive {
            // The agent's smux drops the whole session when a 30 s window passes without a
            // frame, and its window kept running through the outage: a NOP now, not 10 s
            // from now, gives an idle tunnel the widest margin after a long resume.
            session.mux.keepalive();
        }
        self.phase = Phase::Online(Box::new(Online {
            socket: *socket,
            last_rx: now,
            // Ping at once, like the official client: it proves the path immediately.
            next_ping: now,
            next_nop: keepalive.then(|| now + SMUX_KEEPALIVE),
            handshake_deadline: session
                .negotiated
                .is_none()
                .then(|| now + self.config.handshake_timeout),
        }));
        let session_id = session.id.clone();
        let forwarding = session.negotiated.is_some();
        self.emit(EventKind::Connected { session_id });
        if forwarding {
            // A resume: the same session, its sequence numbers and streams, carries on.
            self.end_outage(now, false);
            self.set_state(TunnelState::Forwarding);
        } else {
            self.set_state(TunnelState::Handshaking);
        }
    }

    fn on_socket(
        &mut self,
        message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
        now: Instant,
    ) -> Result<(), Stop> {
        let Phase::Online(online) = &mut self.phase else {
            return Ok(());
        };
        let cause = match message {
            Some(Ok(Message::Binary(frame))) => {
                online.last_rx = now;
                if let Some(session) = self.session.as_mut()
                    && let Err(err) = session.channel.handle_frame(frame, now)
                {
                    tracing::debug!(tunnel = %self.config.name, error = %err, "frame ignored");
                }
                return Ok(());
            }
            Some(Ok(
                Message::Ping(_) | Message::Pong(_) | Message::Text(_) | Message::Frame(_),
            )) => {
                online.last_rx = now;
                return Ok(());
            }
            Some(Ok(Message::Close(frame))) => match frame {
                Some(frame) if frame.code == CloseCode::Normal => Cause::PlannedClose,
                Some(frame) => Cause::TransportError(format!(
                    "closed by the service: {} {}",
                    u16::from(frame.code),
                    frame.reason
                )),
                None => Cause::TransportError("closed by the service without a code".into()),
            },
            Some(Err(err)) => Cause::TransportError(err.to_string()),
            None => Cause::TransportError("connection closed".into()),
        };
        self.disconnected(cause, now)
    }

    fn on_timer(&mut self, now: Instant) -> Result<(), Stop> {
        if let Some(session) = self.session.as_mut() {
            session.channel.handle_timeout(now);
        }
        match &mut self.phase {
            Phase::Waiting { until, then } if *until <= now => {
                let then = *then;
                self.phase = Phase::Busy;
                self.begin(then, now);
            }
            Phase::Online(online) => {
                if now.saturating_duration_since(online.last_rx) >= self.config.pong_timeout {
                    return self.disconnected(Cause::PingTimeout, now);
                }
                let negotiated = self
                    .session
                    .as_ref()
                    .is_some_and(|s| s.negotiated.is_some());
                if let Some(deadline) = online.handshake_deadline {
                    if negotiated {
                        online.handshake_deadline = None;
                    } else if deadline <= now {
                        let detail = format!(
                            "no handshake from the agent within {:?}",
                            self.config.handshake_timeout
                        );
                        return self.disconnected(Cause::HandshakeFailed(detail), now);
                    }
                }
                if let Some(nop) = online.next_nop
                    && nop <= now
                {
                    online.next_nop = Some(now + SMUX_KEEPALIVE);
                    if let Some(session) = self.session.as_mut() {
                        session.mux.keepalive();
                    }
                }
            }
            Phase::Waiting { .. } | Phase::Busy => {}
        }
        Ok(())
    }

    // ----- recovery -------------------------------------------------------------------------

    /// The socket is gone: start (or continue) an outage and ask the policy.
    fn disconnected(&mut self, cause: Cause, now: Instant) -> Result<(), Stop> {
        self.phase = Phase::Busy;
        if let Some(session) = self.session.as_mut() {
            session.channel.on_disconnected();
        }
        tracing::info!(tunnel = %self.config.name, cause = %cause, "disconnected");
        self.emit(EventKind::Disconnected {
            cause: cause.clone(),
        });
        if self.outage.is_none() {
            // Flapping: a connection that did not last `stable_after` keeps the old budget.
            let (attempt, failed_resumes) = match self.recovered {
                Some((at, attempt, failed))
                    if now.saturating_duration_since(at) < self.config.recovery.stable_after =>
                {
                    (attempt, failed)
                }
                _ => (0, 0),
            };
            self.outage = Some(Outage {
                since: now,
                cause: cause.clone(),
                attempt: 0,
                failed_resumes: 0,
                carried: (attempt, failed_resumes),
                last_delay: None,
            });
        }
        self.decide(cause, now)
    }

    /// A recovery attempt failed.
    fn failed(&mut self, cause: Cause, now: Instant) -> Result<(), Stop> {
        let outage = self.outage.get_or_insert_with(|| Outage {
            since: now,
            cause: cause.clone(),
            attempt: 0,
            failed_resumes: 0,
            carried: (0, 0),
            last_delay: None,
        });
        outage.attempt += 1;
        let attempt = outage.attempt;
        tracing::warn!(tunnel = %self.config.name, cause = %cause, attempt, "recovery attempt failed");
        self.emit(EventKind::AttemptFailed {
            cause: cause.clone(),
            attempt,
        });
        self.decide(cause, now)
    }

    /// Asks the reconnect policy: a plugin (asynchronously, with the built-in policy as its
    /// fallback) or the built-in policy.
    fn decide(&mut self, cause: Cause, now: Instant) -> Result<(), Stop> {
        let Some(outage) = &self.outage else {
            return Ok(());
        };
        let context = DecisionContext {
            cause,
            attempt: outage.attempt,
            failed_resumes: outage.failed_resumes,
            outage: now.saturating_duration_since(outage.since),
            session_age: self
                .session
                .as_ref()
                .map_or(Duration::ZERO, |s| now.saturating_duration_since(s.started)),
            last_delay: outage.last_delay,
            history: self.history_until(outage.since),
        };
        // A new plan: whatever the old one still has in flight is stale from now on.
        self.epoch = self.epoch.wrapping_add(1);
        let plugin = self.config.plugins.borrow().reconnect.clone();
        if let Some(plugin) = plugin {
            // The plugin may take up to its timeout; the loop keeps serving local sockets.
            self.phase = Phase::Busy;
            self.set_state(if self.ever_started {
                TunnelState::Resuming
            } else {
                TunnelState::Starting
            });
            self.spawn_op(async move {
                let answer = plugin.decide(&context).await;
                OpResult::Decided {
                    context: Box::new(context),
                    answer,
                }
            });
            return Ok(());
        }
        let decision = self.builtin_decide(&context);
        self.apply(context, decision, now)
    }

    /// The built-in policy, with a flapping tunnel's carried-over budget.
    fn builtin_decide(&mut self, context: &DecisionContext) -> Decision {
        let (attempts, failed) = self.outage.as_ref().map_or((0, 0), |o| o.carried);
        let mut context = context.clone();
        context.attempt = context.attempt.saturating_add(attempts);
        context.failed_resumes = context.failed_resumes.saturating_add(failed);
        self.policy.decide(&context)
    }

    /// Earlier outages for a decision in the outage that began at `current`.
    fn history_until(&self, current: Instant) -> Vec<OutageSummary> {
        let mut next_start = current;
        self.history
            .iter()
            .map(|past| {
                let summary = OutageSummary {
                    cause: past.cause.clone(),
                    attempts: past.attempts,
                    failed_resumes: past.failed_resumes,
                    duration: past.duration,
                    restarted: past.restarted,
                    stable: next_start.saturating_duration_since(past.ended),
                };
                next_start = past.ended.checked_sub(past.duration).unwrap_or(past.ended);
                summary
            })
            .collect()
    }

    /// Executes a decision.
    fn apply(
        &mut self,
        context: DecisionContext,
        decision: Decision,
        now: Instant,
    ) -> Result<(), Stop> {
        let (after, tier) = match decision {
            Decision::GiveUp { reason } => return Err(Stop::GiveUp(reason)),
            // Nothing to resume before the first session exists.
            Decision::Resume { after } if self.session.is_some() => (after, Tier::Resume),
            Decision::Resume { after } | Decision::Restart { after } => (after, Tier::Restart),
        };
        if let Some(outage) = self.outage.as_mut() {
            outage.last_delay = Some(after);
        }
        self.set_state(match tier {
            Tier::Resume => TunnelState::Resuming,
            Tier::Restart if !self.ever_started => TunnelState::Starting,
            Tier::Restart => TunnelState::Restarting,
        });
        self.phase = Phase::Waiting {
            until: now + after,
            then: tier,
        };
        if tier == Tier::Restart {
            self.restart_cause = Some(context.cause);
        }
        Ok(())
    }

    /// A health check says the tunnel carries nothing: treat it like a dead socket.
    fn on_probe_failure(&mut self, failure: ProbeFailure, now: Instant) -> Result<(), Stop> {
        let forwarding = matches!(self.phase, Phase::Online(_))
            && self
                .session
                .as_ref()
                .is_some_and(|s| s.negotiated.is_some());
        if !forwarding {
            // Already recovering: the recovery under way is the answer.
            return Ok(());
        }
        self.disconnected(Cause::ProbeFailed(failure), now)
    }

    /// Runs the step a wait was for.
    fn begin(&mut self, tier: Tier, now: Instant) {
        let (attempt, outage) = self.outage.as_ref().map_or((1, Duration::ZERO), |o| {
            (o.attempt + 1, now.saturating_duration_since(o.since))
        });
        match (tier, &self.session) {
            (Tier::Resume, Some(session)) => {
                self.emit(EventKind::Resuming { attempt, outage });
                let api = self.api.clone();
                let id = session.id.clone();
                self.spawn_op(async move { OpResult::Resumed(api.resume_session(&id).await) });
            }
            _ => {
                if let Some(old) = self.session.take() {
                    self.abandon(old);
                }
                if let Some(cause) = self.restart_cause.take() {
                    self.emit(EventKind::Restarting {
                        cause,
                        attempt,
                        outage,
                    });
                }
                let api = self.api.clone();
                let target = self.config.target.clone();
                let document = self.config.document_name.clone();
                let parameters = self.config.parameters.clone();
                let reason = self.config.reason.clone();
                self.starts_in_flight += 1;
                self.spawn_op(async move {
                    OpResult::Started(
                        api.start_session(&target, &document, &parameters, reason.as_deref())
                            .await,
                    )
                });
            }
        }
    }

    /// Drops a session that is being replaced: its streams die with it, so their local
    /// connections are closed; the service side is told to terminate it, best effort.
    fn abandon(&mut self, old: Session) {
        let bound: Vec<u64> = self
            .conns
            .iter()
            .filter(|(id, conn)| conn.stream.is_some() || old.basic_active == Some(**id))
            .map(|(id, _)| *id)
            .collect();
        for id in bound {
            if let Some(conn) = self.conns.remove(&id) {
                self.close_conn(id, conn, "session restarted");
            }
        }
        self.terminate_in_background(old.id);
    }

    /// Tells the service to end a session nobody uses any more, best effort.
    fn terminate_in_background(&self, session_id: String) {
        let api = self.api.clone();
        tokio::spawn(async move {
            if let Err(err) = api.terminate_session(&session_id).await {
                tracing::debug!(error = %err, "terminating a replaced session failed");
            }
        });
    }

    fn end_outage(&mut self, now: Instant, restarted: bool) {
        let Some(outage) = self.outage.take() else {
            return;
        };
        let duration = now.saturating_duration_since(outage.since);
        self.recovered = Some((
            now,
            outage.attempt.saturating_add(outage.carried.0),
            outage.failed_resumes.saturating_add(outage.carried.1),
        ));
        self.history.push_front(PastOutage {
            cause: outage.cause,
            attempts: outage.attempt,
            failed_resumes: outage.failed_resumes,
            duration,
            restarted,
            ended: now,
        });
        self.history.truncate(HISTORY_LEN);
        if restarted {
            let session_id = self
                .session
                .as_ref()
                .map(|s| s.id.clone())
                .unwrap_or_default();
            tracing::info!(tunnel = %self.config.name, ?duration, "restarted");
            self.emit(EventKind::Restarted {
                session_id,
                outage: duration,
            });
            self.update_status(|s| {
                s.restarts += 1;
                s.longest_outage = s.longest_outage.max(duration);
            });
        } else {
            tracing::info!(tunnel = %self.config.name, ?duration, "resumed");
            self.emit(EventKind::Resumed { outage: duration });
            self.update_status(|s| {
                s.resumes += 1;
                s.longest_outage = s.longest_outage.max(duration);
            });
        }
    }

    fn spawn_connect(&mut self, grant: SessionGrant) {
        self.phase = Phase::Busy;
        self.set_state(TunnelState::Connecting);
        let api = self.api.clone();
        let identity = self.identity.clone();
        let timeout = self.config.connect_timeout;
        self.spawn_op(async move {
            let session_id = grant.session_id.clone();
            let result = async {
                let request = api
                    .upgrade_request(&grant.stream_url)
                    .await
                    .map_err(|e| e.to_string())?;
                connect::open(request, &grant.token_value, &identity, timeout)
                    .await
                    .map(Box::new)
                    .map_err(|e| e.to_string())
            }
            .await;
            OpResult::Connected { session_id, result }
        });
    }

    fn spawn_op(&self, op: impl Future<Output = OpResult> + Send + 'static) {
        let ops = self.ops_tx.clone();
        let epoch = self.epoch;
        tokio::spawn(async move {
            let _ = ops.send((epoch, op.await)).await;
        });
    }

    // ----- the data path --------------------------------------------------------------------

    /// Moves everything that can move: channel events to local sockets, local bytes into the
    /// channel.
    fn process(&mut self, now: Instant) -> Result<(), Stop> {
        loop {
            if self.conns.values().any(|c| c.local.is_saturated()) {
                break;
            }
            let Some(session) = self.session.as_mut() else {
                break;
            };
            let Some(event) = session.channel.poll_event() else {
                break;
            };
            match event {
                ChannelEvent::Message(message) => {
                    self.on_message(message.payload_type, message.payload, now)
                }
                ChannelEvent::ChannelClosed(closed) => {
                    let detail = if closed.output.is_empty() {
                        "channel_closed".to_owned()
                    } else {
                        format!("channel_closed: {}", closed.output)
                    };
                    return self.disconnected(Cause::SessionGone(detail), now);
                }
                ChannelEvent::Paused => {
                    tracing::debug!(tunnel = %self.config.name, "publication paused by the service");
                }
                ChannelEvent::Resumed => {
                    tracing::debug!(tunnel = %self.config.name, "publication resumed");
                }
            }
        }
        if let Some(session) = &self.session {
            let stats = session.channel.stats();
            let (retransmitted, duplicates) = (stats.retransmitted, stats.duplicates);
            self.status.send_if_modified(|s| {
                s.retransmitted = retransmitted;
                s.duplicates_received = duplicates;
                false
            });
        }
        if let Some(detail) = self.mux_failed.take() {
            return self.disconnected(Cause::ProtocolError(detail), now);
        }
        self.pump_outbound(now);
        Ok(())
    }

    fn on_message(&mut self, payload_type: PayloadType, payload: Bytes, now: Instant) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        match payload_type {
            PayloadType::HANDSHAKE_REQUEST => {
                let Ok(request) = HandshakeRequest::from_payload(&payload) else {
                    tracing::warn!(tunnel = %self.config.name, "unreadable HandshakeRequest");
                    return;
                };
                let (response, negotiated) = handshake::answer(&request);
                if let Err(err) = session.channel.send(
                    PayloadType::HANDSHAKE_RESPONSE,
                    response.to_payload(),
                    now,
                ) {
                    tracing::warn!(tunnel = %self.config.name, error = %err, "cannot answer the handshake");
                }
                match negotiated {
                    Ok(negotiated) => session.pending_negotiation = Some(negotiated),
                    Err(err) => {
                        tracing::error!(tunnel = %self.config.name, error = %err, "handshake refused");
                    }
                }
            }
            PayloadType::HANDSHAKE_COMPLETE => {
                let Some(negotiated) = session.pending_negotiation.take() else {
                    return;
                };
                let mode = match negotiated.mode {
                    PortMode::Mux { .. } => "mux",
                    PortMode::Basic { .. } => "basic",
                };
                let session_id = session.id.clone();
                let agent_version = negotiated.agent_version.clone();
                let keepalive = matches!(negotiated.mode, PortMode::Mux { keepalive: true });
                let is_restart = session.is_restart;
                session.negotiated = Some(negotiated);
                if let Phase::Online(online) = &mut self.phase
                    && keepalive
                {
                    online.next_nop = Some(now + SMUX_KEEPALIVE);
                }
                tracing::info!(tunnel = %self.config.name, %session_id, mode, %agent_version, "forwarding");
                self.emit(EventKind::Forwarding {
                    session_id,
                    mode,
                    agent_version,
                });
                self.end_outage(now, is_restart);
                self.set_state(TunnelState::Forwarding);
                self.bind_waiting();
            }
            PayloadType::OUTPUT => self.on_output(payload),
            PayloadType::FLAG => match Flag::from_payload(&payload) {
                Ok(Flag::ConnectToPortError) => {
                    let destination = session
                        .negotiated
                        .as_ref()
                        .map_or_else(String::new, |n| n.destination.clone());
                    tracing::warn!(
                        tunnel = %self.config.name,
                        %destination,
                        "the agent could not connect to the destination; closing that connection"
                    );
                    self.emit(EventKind::DestinationUnreachable { destination });
                }
                Ok(flag) => tracing::debug!(tunnel = %self.config.name, ?flag, "flag from agent"),
                Err(err) => tracing::debug!(tunnel = %self.config.name, error = %err, "bad flag"),
            },
            other => {
                tracing::debug!(tunnel = %self.config.name, payload_type = ?other, "payload ignored");
            }
        }
    }

    fn on_output(&mut self, payload: Bytes) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        match session.mode() {
            Some(PortMode::Mux { .. }) => {
                if let Err(err) = session.mux.handle_bytes(&payload) {
                    // smux closes the whole session on a protocol error; so do we, by
                    // restarting (the streams are unrecoverable).
                    tracing::error!(tunnel = %self.config.name, error = %err, "smux protocol error");
                    self.mux_failed = Some(err.to_string());
                    return;
                }
                while let Some(event) = session.mux.poll_event() {
                    match event {
                        MuxEvent::Data(stream, data) => {
                            if let Some(conn) = session
                                .streams
                                .get(&stream)
                                .and_then(|id| self.conns.get_mut(id))
                            {
                                let len = data.len() as u64;
                                conn.local.write(data);
                                self.status.send_if_modified(|s| {
                                    s.bytes_down += len;
                                    false
                                });
                            }
                        }
                        MuxEvent::Closed(stream) => {
                            if let Some(id) = session.streams.remove(&stream)
                                && let Some(conn) = self.conns.remove(&id)
                            {
                                close_conn(
                                    &self.events,
                                    &self.config.name,
                                    id,
                                    conn,
                                    "closed by destination",
                                );
                            }
                        }
                    }
                }
            }
            Some(PortMode::Basic { .. }) => {
                if let Some(conn) = session.basic_active.and_then(|id| self.conns.get_mut(&id)) {
                    let len = payload.len() as u64;
                    conn.local.write(payload);
                    self.status.send_if_modified(|s| {
                        s.bytes_down += len;
                        false
                    });
                }
            }
            None => {}
        }
    }

    /// Moves queued outgoing bytes into the channel while its window has room.
    fn pump_outbound(&mut self, now: Instant) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        while session.channel.send_capacity() > 0 {
            let (payload_type, payload) = match session.mode() {
                Some(PortMode::Mux { .. }) => match session.mux.take_outbound(MAX_STREAM_PAYLOAD) {
                    Some(chunk) => (PayloadType::OUTPUT, chunk),
                    None => break,
                },
                Some(PortMode::Basic { .. }) => match session.basic_out.pop_front() {
                    Some(BasicOut::Data(chunk)) => (PayloadType::OUTPUT, chunk),
                    Some(BasicOut::Flag(flag)) => (PayloadType::FLAG, flag.to_payload()),
                    None => break,
                },
                None => break,
            };
            if let Err(err) = session.channel.send(payload_type, payload, now) {
                // Capacity was checked and chunks are ≤ 1024 bytes: unreachable in practice,
                // and losing the bytes silently is the one thing this code must never do.
                tracing::error!(tunnel = %self.config.name, error = %err, "channel refused a message");
                break;
            }
        }
    }

    /// Writes what the channel wants sent.
    async fn flush(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), Stop> {
        let Phase::Online(online) = &mut self.phase else {
            return Ok(());
        };
        let Some(session) = self.session.as_mut() else {
            return Ok(());
        };
        let now = Instant::now();
        let mut frames = Vec::new();
        if online.next_ping <= now {
            online.next_ping = now + self.config.ping_interval;
            frames.push(Message::Ping(Bytes::from_static(b"keepalive")));
        }
        while let Some(frame) = session.channel.poll_transmit() {
            frames.push(Message::Binary(frame));
        }
        if frames.is_empty() {
            return Ok(());
        }
        let socket = &mut online.socket;
        let write = async {
            for frame in frames {
                socket.feed(frame).await?;
            }
            socket.flush().await
        };
        // A peer that stops reading (black hole) must not wedge the driver: a write that
        // cannot complete within the pong timeout is a dead socket.
        let written = tokio::select! {
            written = tokio::time::timeout(self.config.pong_timeout, write) => written,
            // Shutdown must not wait out the pong timeout behind a stuck write: the frames
            // stay unacknowledged in the channel, and the main loop sees the change at once.
            _ = shutdown.changed() => return Ok(()),
        };
        let cause = match written {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(err)) => Cause::TransportError(err.to_string()),
            Err(_) => Cause::PingTimeout,
        };
        self.disconnected(cause, Instant::now())
    }

    // ----- local connections ----------------------------------------------------------------

    /// Binds waiting local connections to the forwarding session, as far as its mode allows.
    fn bind_waiting(&mut self) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let Some(mode) = session.mode() else { return };
        while let Some((id, socket)) = self.waiting.pop_front() {
            let stream = match mode {
                PortMode::Mux { .. } => {
                    let stream = session.mux.open_stream();
                    session.streams.insert(stream, id);
                    Some(stream)
                }
                PortMode::Basic { .. } if session.basic_active.is_none() => {
                    session.basic_active = Some(id);
                    None
                }
                PortMode::Basic { .. } => {
                    // One connection at a time in basic mode: the rest wait their turn.
                    self.waiting.push_front((id, socket));
                    break;
                }
            };
            let local = LocalConn::spawn(id, socket, self.local_tx.clone(), self.drained.clone());
            self.conns.insert(id, Conn { local, stream });
        }
        let connections = self.conns.len() + self.waiting.len();
        self.update_status(|s| s.connections = connections);
    }

    fn close_conn(&mut self, id: u64, conn: Conn, reason: &'static str) {
        close_conn(&self.events, &self.config.name, id, conn, reason);
        let connections = self.conns.len() + self.waiting.len();
        self.update_status(|s| s.connections = connections);
    }

    fn can_take_local(&self) -> bool {
        self.session.as_ref().is_some_and(|s| {
            s.negotiated.is_some()
                && s.channel.send_capacity() > 0
                && s.channel.reorder_len() < REORDER_HIGH_WATER
                && s.mux.outbound_len() < OUTBOUND_HIGH_WATER
                && s.basic_out.len() < OUTBOUND_HIGH_WATER / MAX_STREAM_PAYLOAD
        })
    }

    // ----- timers, status, shutdown ---------------------------------------------------------

    fn next_timer(&mut self) -> Option<Instant> {
        let channel = self.session.as_mut().and_then(|s| s.channel.poll_timeout());
        let phase = match &self.phase {
            Phase::Waiting { until, .. } => Some(*until),
            Phase::Busy => None,
            Phase::Online(online) => [
                Some(online.next_ping),
                Some(online.last_rx + self.config.pong_timeout),
                online.next_nop,
                online.handshake_deadline,
            ]
            .into_iter()
            .flatten()
            .min(),
        };
        [channel, phase].into_iter().flatten().min()
    }

    fn set_state(&self, state: TunnelState) {
        self.status.send_if_modified(|s| {
            let changed = s.state != state;
            s.state = state;
            changed
        });
    }

    fn update_status(&self, change: impl FnOnce(&mut TunnelStatus)) {
        self.status.send_modify(change);
    }

    /// Ends the session for good: the TerminateSession flag (so the agent stops at once) and
    /// the TerminateSession API call (so the service does too), each bounded in time.
    async fn terminate(&mut self) {
        let Some(mut session) = self.session.take() else {
            return;
        };
        let flag = match session.mode() {
            Some(PortMode::Mux { .. })
            | Some(PortMode::Basic {
                terminate_flag: true,
            }) => true,
            Some(PortMode::Basic {
                terminate_flag: false,
            })
            | None => false,
        };
        if flag
            && let Phase::Online(online) = &mut self.phase
            && session
                .channel
                .send(
                    PayloadType::FLAG,
                    Flag::TerminateSession.to_payload(),
                    Instant::now(),
                )
                .is_ok()
        {
            let socket = &mut online.socket;
            let channel = &mut session.channel;
            // Wait (bounded) for the agent to acknowledge the flag, so that it has ended the
            // session itself before the TerminateSession call makes the service close its
            // socket; acks for whatever still arrives are sent meanwhile.
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
                loop {
                    while let Some(frame) = channel.poll_transmit() {
                        socket.feed(Message::Binary(frame)).await?;
                    }
                    socket.flush().await?;
                    if channel.unacked() == 0 {
                        break;
                    }
                    match socket.next().await {
                        Some(Ok(Message::Binary(frame))) => {
                            let _ = channel.handle_frame(frame, Instant::now());
                        }
                        Some(Ok(_)) => {}
                        Some(Err(err)) => return Err(err),
                        None => break,
                    }
                }
                SinkExt::close(socket).await
            })
            .await;
        }
        self.phase = Phase::Busy;
        match tokio::time::timeout(SHUTDOWN_GRACE, self.api.terminate_session(&session.id)).await {
            Ok(Ok(())) => {
                tracing::info!(tunnel = %self.config.name, session_id = %session.id, "session terminated")
            }
            Ok(Err(err)) => {
                tracing::warn!(tunnel = %self.config.name, error = %err, "TerminateSession failed")
            }
            Err(_) => tracing::warn!(tunnel = %self.config.name, "TerminateSession timed out"),
        }
        for (id, conn) in std::mem::take(&mut self.conns) {
            self.close_conn(id, conn, "tunnel stopped");
        }
        self.waiting.clear();
    }
}

impl Driver {
    /// At shutdown: a StartSession still in flight may yet create a session, which would live
    /// on at the service (and keep an agent busy) until its idle timeout. Wait for each, within
    /// the grace period, and terminate what they started.
    async fn reap_starts(&mut self) {
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while self.starts_in_flight > 0 {
            let Ok(Some((_, op))) = tokio::time::timeout_at(deadline, self.ops_rx.recv()).await
            else {
                tracing::warn!(tunnel = %self.config.name, "a StartSession in flight at shutdown did not answer in time");
                return;
            };
            let OpResult::Started(result) = op else {
                continue;
            };
            self.starts_in_flight -= 1;
            if let Ok(grant) = result {
                match tokio::time::timeout_at(
                    deadline + SHUTDOWN_GRACE,
                    self.api.terminate_session(&grant.session_id),
                )
                .await
                {
                    Ok(Ok(())) => {
                        tracing::info!(tunnel = %self.config.name, session_id = %grant.session_id, "session started during shutdown terminated");
                    }
                    Ok(Err(err)) => {
                        tracing::warn!(tunnel = %self.config.name, error = %err, "TerminateSession failed");
                    }
                    Err(_) => {
                        tracing::warn!(tunnel = %self.config.name, "TerminateSession timed out")
                    }
                }
            }
        }
    }
}

impl Session {
    fn new(grant: &SessionGrant, config: &TunnelConfig, now: Instant, is_restart: bool) -> Self {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self {
            id: grant.session_id.clone(),
            stream_url: grant.stream_url.clone(),
            started: now,
            channel: Channel::new(config.channel.clone(), now, unix_ms),
            pending_negotiation: None,
            negotiated: None,
            mux: MuxClient::new(),
            streams: HashMap::new(),
            basic_active: None,
            basic_out: VecDeque::new(),
            is_restart,
        }
    }

    fn mode(&self) -> Option<PortMode> {
        self.negotiated.as_ref().map(|n| n.mode)
    }
}

fn close_conn(
    events: &broadcast::Sender<TunnelEvent>,
    tunnel: &str,
    id: u64,
    conn: Conn,
    reason: &'static str,
) {
    let (bytes_up, bytes_down) = (conn.local.bytes_up, conn.local.bytes_down);
    conn.local.close();
    let _ = events.send(TunnelEvent {
        tunnel: tunnel.to_owned(),
        at: SystemTime::now(),
        kind: EventKind::ConnectionClosed {
            id,
            bytes_up,
            bytes_down,
            reason,
        },
    });
}

async fn recv_socket(
    phase: &mut Phase,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    match phase {
        Phase::Online(online) => online.socket.next().await,
        Phase::Waiting { .. } | Phase::Busy => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::channel::ChannelConfig;
    use crate::policy::AwsSettings;
    use crate::recovery::RecoverySettings;

    /// A driver whose API calls fail at once (nothing listens on the endpoint, no credentials).
    fn driver() -> (Driver, mpsc::Sender<(TcpStream, SocketAddr)>) {
        let dir = std::env::temp_dir().join("ssm-tether-driver-tests-no-such-dir");
        let api = SsmApi::new(AwsSettings {
            region: Some("us-east-1".into()),
            profile: Some("none".into()),
            endpoint_url: Some("http://127.0.0.1:1".into()),
            config_file: Some(dir.join("config")),
            credentials_file: Some(dir.join("credentials")),
        });
        let config = TunnelConfig {
            name: "unit".into(),
            target: "i-0123456789abcdef0".into(),
            document_name: "AWS-StartPortForwardingSession".into(),
            parameters: BTreeMap::new(),
            reason: None,
            local: "127.0.0.1:0".parse().expect("addr"),
            ping_interval: Duration::from_secs(1),
            pong_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(30),
            recovery: RecoverySettings {
                base_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(100),
                ..RecoverySettings::default()
            },
            channel: ChannelConfig::default(),
            seed: 1,
            plugins: crate::session::no_plugins(),
        };
        let (events, _) = broadcast::channel(64);
        let (status, _) = watch::channel(TunnelStatus::default());
        let (accept_tx, accept_rx) = mpsc::channel(1);
        let (_probe_tx, probe_rx) = mpsc::channel(1);
        (
            Driver::new(config, api, events, status, accept_rx, probe_rx),
            accept_tx,
        )
    }

    fn grant(id: &str) -> SessionGrant {
        SessionGrant {
            session_id: id.into(),
            token_value: "token".into(),
            stream_url: format!("ws://127.0.0.1:1/v1/data-channel/{id}"),
        }
    }

    #[tokio::test]
    async fn a_resume_answer_arriving_after_a_restart_began_is_ignored() {
        let (mut driver, _accept) = driver();
        let t0 = Instant::now();
        driver.session = Some(Session::new(&grant("s-old"), &driver.config, t0, false));
        driver.ever_started = true;
        // The socket failed: the policy resumes after a short backoff.
        driver
            .disconnected(Cause::TransportError("reset".into()), t0)
            .expect("a decision");
        let later = t0 + Duration::from_secs(1);
        driver.on_timer(later).expect("resume begins");
        assert!(matches!(driver.phase, Phase::Busy));
        let (epoch, resumed) = tokio::time::timeout(Duration::from_secs(20), driver.ops_rx.recv())
            .await
            .expect("the resume answers")
            .expect("an answer");
        assert!(matches!(resumed, OpResult::Resumed(_)));
        // While it was in flight, a channel_closed held back behind a slow local reader
        // surfaced: the session is gone, a restart begins.
        driver
            .disconnected(Cause::SessionGone("channel_closed".into()), later)
            .expect("a decision");
        driver.on_timer(later).expect("restart begins");
        assert!(driver.session.is_none(), "the old session was dropped");
        assert!(
            matches!(driver.phase, Phase::Busy),
            "StartSession in flight"
        );
        assert_eq!(driver.starts_in_flight, 1);
        // The resume's late answer must not start a second recovery beside the restart: that
        // would overwrite the phase under the in-flight StartSession and start another one.
        driver
            .on_op(epoch, resumed, later)
            .expect("the late answer is handled");
        assert!(
            matches!(driver.phase, Phase::Busy),
            "the in-flight restart is still the only plan"
        );
        assert!(driver.outage.as_ref().is_some_and(|o| o.attempt == 0));
    }

    #[tokio::test]
    async fn a_session_started_for_a_superseded_plan_is_not_adopted() {
        let (mut driver, _accept) = driver();
        let t0 = Instant::now();
        driver.on_timer(t0).expect("the first StartSession begins");
        let stale_epoch = driver.epoch;
        // Say the plan changed meanwhile (any decision does that).
        driver
            .failed(
                Cause::StartFailed(crate::aws::ApiError {
                    operation: "StartSession",
                    kind: crate::aws::ApiErrorKind::Throttling,
                    code: None,
                    message: "elsewhere".into(),
                }),
                t0,
            )
            .expect("a decision");
        driver
            .on_op(stale_epoch, OpResult::Started(Ok(grant("s-late"))), t0)
            .expect("handled");
        assert!(
            driver.session.is_none(),
            "the stale session was not adopted"
        );
        assert_eq!(driver.starts_in_flight, 0);
    }
}
