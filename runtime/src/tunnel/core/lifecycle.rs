//! A session's way through its lifecycle: StartSession → WebSocket → handshake →
//! forwarding ⇄ resuming → restarting, with every recovery step chosen by the reconnect
//! policy (a plugin, or the built-in policy).

use std::time::Instant;

use super::recovery::Ending;
use super::session::{Link, Online, SessionData, Tier};
use super::{Action, Core, Op, OpId, OpKind, PolicyAnswer, SessionKey, SocketClose, SocketId};
use crate::aws::{ApiError, SessionGrant};
use crate::events::{
    Cause, CloseReason, ConnectFailure, EventKind, Role, SessionRole, TunnelState,
};
use crate::recovery::Decision;

impl Core {
    /// Sends StartSession for `key`: its first session, a restart or a rotation's successor.
    pub(super) fn start(&mut self, key: SessionKey, now: Instant) {
        self.next_serial += 1;
        let serial = self.next_serial;
        let op = self.next_op();
        let Some(session) = self.session_mut(key) else {
            return;
        };
        session.serial = serial;
        session.id = None;
        session.started = now;
        session.link = Link::Calling { op };
        let epoch = session.recovery.epoch();
        let state = if session.ever_started {
            TunnelState::Restarting
        } else {
            TunnelState::Starting
        };
        self.ops.insert(
            op,
            Op {
                session: key,
                epoch,
                kind: OpKind::Start,
            },
        );
        self.set_state(key, state);
        self.actions.push_back(Action::StartSession { op });
    }

    /// Whether `op` still belongs to the current plan of its session.
    fn current(&self, op: &Op) -> bool {
        self.session(op.session)
            .is_some_and(|s| s.recovery.epoch() == op.epoch && !matches!(s.link, Link::Ended))
            && self.stopping.is_none()
    }

    pub(super) fn on_started(
        &mut self,
        op: OpId,
        result: Result<SessionGrant, ApiError>,
        now: Instant,
    ) {
        let Some(info) = self.ops.remove(&op) else {
            return;
        };
        let waiting = self
            .session(info.session)
            .is_some_and(|s| matches!(s.link, Link::Calling { op: o } if o == op));
        if !self.current(&info) || !waiting {
            // The plan this call belonged to was superseded while it ran (or the tunnel is
            // stopping): a session it created is of no use to anyone.
            if let Ok(grant) = result {
                tracing::debug!(session_id = %grant.session_id,
                    "a session started for a superseded plan is terminated");
                self.terminate_api(grant.session_id);
            }
            return;
        }
        let key = info.session;
        match result {
            Ok(grant) => {
                let unix_ms = self.unix_ms(now);
                let channel = self.config.channel.clone();
                let Some(session) = self.session_mut(key) else {
                    return;
                };
                session.id = Some(grant.session_id.clone());
                session.stream_url.clone_from(&grant.stream_url);
                session.data = Some(SessionData::new(channel, now, unix_ms));
                session.ever_started = true;
                self.emit_for(
                    key,
                    EventKind::SessionStarted {
                        session_id: grant.session_id.clone(),
                    },
                );
                self.status_dirty = true;
                self.connect(key, grant);
            }
            Err(err) => self.failed(key, Cause::StartFailed(err), now),
        }
    }

    pub(super) fn on_resumed(
        &mut self,
        op: OpId,
        result: Result<Option<SessionGrant>, ApiError>,
        now: Instant,
    ) {
        let Some(info) = self.ops.remove(&op) else {
            return;
        };
        if !self.current(&info) {
            tracing::debug!("stale ResumeSession answer ignored");
            return;
        }
        let key = info.session;
        match result {
            Ok(Some(mut grant)) => {
                // Always dial the StreamUrl ResumeSession returned: the old one's cell may be
                // stale (docs/protocol.md §9.5 cause 1). An empty one means "unchanged".
                if let Some(session) = self.session_mut(key) {
                    if grant.stream_url.is_empty() {
                        grant.stream_url.clone_from(&session.stream_url);
                    } else {
                        session.stream_url.clone_from(&grant.stream_url);
                    }
                }
                self.connect(key, grant);
            }
            Ok(None) => self.failed(
                key,
                Cause::SessionGone("ResumeSession returned no token".into()),
                now,
            ),
            Err(err) if err.is_session_gone() => {
                self.failed(key, Cause::SessionGone(err.to_string()), now);
            }
            Err(err) => {
                if let Some(session) = self.session_mut(key) {
                    session.recovery.failed_resume();
                }
                self.failed(key, Cause::ResumeFailed(err), now);
            }
        }
    }

    fn connect(&mut self, key: SessionKey, grant: SessionGrant) {
        let socket = self.next_socket();
        let Some(session) = self.session_mut(key) else {
            return;
        };
        session.link = Link::Connecting { socket };
        self.sockets.insert(socket, key);
        self.set_state(key, TunnelState::Connecting);
        self.actions.push_back(Action::Connect { socket, grant });
    }

    pub(super) fn on_connected(
        &mut self,
        socket: SocketId,
        result: Result<(), ConnectFailure>,
        now: Instant,
    ) {
        let key = self.socket_session(socket);
        let expected = key
            .and_then(|k| self.session(k))
            .is_some_and(|s| matches!(s.link, Link::Connecting { socket: s2 } if s2 == socket));
        let (Some(key), true, None) = (key, expected, &self.stopping) else {
            // A connect for a socket nobody waits for any more.
            self.sockets.remove(&socket);
            if result.is_ok() {
                self.actions.push_back(Action::CloseSocket {
                    socket,
                    graceful: false,
                });
            }
            return;
        };
        match result {
            Ok(()) => self.attach(key, socket, now),
            Err(failure) => {
                self.sockets.remove(&socket);
                if let Some(session) = self.session_mut(key) {
                    session.recovery.failed_resume();
                }
                self.failed(key, Cause::ConnectFailed(failure), now);
            }
        }
    }

    fn attach(&mut self, key: SessionKey, socket: SocketId, now: Instant) {
        let handshake_timeout = self.config.handshake_timeout;
        let keepalive_every = self.config.smux_keepalive;
        let Some(session) = self.session_mut(key) else {
            return;
        };
        let Some(data) = session.data.as_mut() else {
            return;
        };
        data.channel.on_connected(now);
        let mut online = Online::new(socket, now);
        let negotiated = data.negotiated.is_some();
        if !negotiated {
            online.handshake_deadline = Some(now + handshake_timeout);
        }
        if let super::session::Forward::Mux { mux, .. } = &mut data.forward
            && matches!(
                data.negotiated.as_ref().map(|n| n.mode),
                Some(super::handshake::PortMode::Mux { keepalive: true })
            )
        {
            // The agent's smux drops the whole session when a 30 s window passes without a
            // frame, and its window kept running through the outage: a NOP now gives an idle
            // tunnel the widest margin after a long resume.
            mux.keepalive();
            online.next_nop = Some(now + keepalive_every);
        }
        session.link = Link::Online(online);
        let session_id = session.id.clone().unwrap_or_default();
        self.emit_for(key, EventKind::Connected { session_id });
        if negotiated {
            // A resume: the same session, its sequence numbers and streams, carries on.
            self.end_outage(key, Ending::Resumed, now);
            self.set_state(key, TunnelState::Forwarding);
            self.bind_waiting(now);
        } else {
            self.set_state(key, TunnelState::Handshaking);
        }
        self.pump(key, now);
    }

    /// Ends the session's outage, if one is under way, with the matching event.
    pub(super) fn end_outage(&mut self, key: SessionKey, ending: Ending, now: Instant) {
        let Some(session) = self.session_mut(key) else {
            return;
        };
        let Some(outage) = session.recovery.end(now, ending) else {
            return;
        };
        if ending == Ending::Resumed {
            session.resumes += 1;
        }
        let session_id = session.id.clone().unwrap_or_default();
        self.status.longest_outage = self.status.longest_outage.max(outage);
        self.status_dirty = true;
        match ending {
            Ending::Resumed => {
                self.status.resumes += 1;
                tracing::info!(?outage, %session_id, "resumed");
                self.emit_for(key, EventKind::Resumed { outage });
            }
            Ending::Restarted => {
                self.status.restarts += 1;
                tracing::info!(?outage, %session_id, "restarted");
                self.emit_for(key, EventKind::Restarted { session_id, outage });
            }
            Ending::Started => {}
        }
    }

    pub(super) fn on_socket_closed(&mut self, socket: SocketId, close: SocketClose, now: Instant) {
        let Some(key) = self.sockets.remove(&socket) else {
            return;
        };
        let Some(session) = self.session(key) else {
            return;
        };
        match &session.link {
            Link::Online(online) if online.socket == socket => {
                let cause = match close {
                    SocketClose::Closed { code: 1000, .. } => Cause::PlannedClose,
                    SocketClose::Closed { code, reason } => {
                        Cause::TransportError(format!("closed by the service: {code} {reason}"))
                    }
                    SocketClose::ClosedWithoutCode => {
                        Cause::TransportError("closed by the service without a code".into())
                    }
                    SocketClose::Failed(detail) => Cause::TransportError(detail),
                    SocketClose::Ended => Cause::TransportError("connection closed".into()),
                };
                self.disconnected(key, cause, now);
            }
            Link::Closing { online, .. } if online.socket == socket => {
                self.finish_closing(key);
            }
            _ => {}
        }
    }

    /// The session stopped forwarding: the socket is dropped, and the session either ends
    /// (nothing to recover it for), hands over to its successor, or recovers.
    pub(super) fn disconnected(&mut self, key: SessionKey, cause: Cause, now: Instant) {
        let Some(session) = self.session_mut(key) else {
            return;
        };
        if let Link::Online(online) = &session.link {
            let socket = online.socket;
            self.sockets.remove(&socket);
            self.actions.push_back(Action::CloseSocket {
                socket,
                graceful: false,
            });
        }
        let Some(session) = self.session_mut(key) else {
            return;
        };
        session.link = Link::Ended;
        if let Some(data) = session.data.as_mut() {
            data.channel.on_disconnected();
        }
        let gone = matches!(cause, Cause::SessionGone(_));
        let cause = if gone && self.at_limit(key, now) {
            Cause::MaxDurationReached
        } else {
            cause
        };
        if let Some(session) = self.session(key) {
            tracing::info!(session = %session.reference(), cause = %cause, "disconnected");
        }
        self.emit_for(
            key,
            EventKind::Disconnected {
                cause: cause.clone(),
            },
        );
        self.status_dirty = true;
        if gone && self.session(key).is_some_and(|s| s.retiring.is_some()) {
            // Nothing it still had to deliver can arrive now.
            self.retire(key, now);
            return;
        }
        if gone && self.gone_without_recovery(key, now) {
            return;
        }
        let stable_after = self.config.recovery.stable_after;
        if let Some(session) = self.session_mut(key) {
            session.recovery.disconnected(&cause, now, stable_after);
        }
        self.decide(key, cause, now);
    }

    /// A recovery attempt failed.
    pub(super) fn failed(&mut self, key: SessionKey, cause: Cause, now: Instant) {
        let Some(session) = self.session_mut(key) else {
            return;
        };
        let attempt = session.recovery.failed(&cause, now);
        // Nothing is being recovered before a first session existed: a new user reads
        // "recovery" as "it was up and broke".
        if session.ever_started {
            tracing::warn!(session = %session.reference(), cause = %cause, attempt,
                "recovery attempt failed");
        } else {
            tracing::warn!(session = %session.reference(), cause = %cause, attempt,
                "starting the session failed");
        }
        self.emit_for(
            key,
            EventKind::AttemptFailed {
                cause: cause.clone(),
                attempt,
            },
        );
        if matches!(cause, Cause::SessionGone(_)) && self.gone_without_recovery(key, now) {
            return;
        }
        self.decide(key, cause, now);
    }

    /// Asks the reconnect policy: a plugin (answered later) or the built-in policy (now).
    fn decide(&mut self, key: SessionKey, cause: Cause, now: Instant) {
        let ask_plugin = self.reconnect_plugin;
        let op = ask_plugin.then(|| self.next_op());
        let Some(session) = self.session_mut(key) else {
            return;
        };
        let epoch = session.recovery.new_plan();
        let context = session
            .recovery
            .context(session.reference(), cause, now, session.age(now));
        let state = if session.is_negotiated() {
            TunnelState::Resuming
        } else if session.ever_started {
            TunnelState::Restarting
        } else {
            TunnelState::Starting
        };
        if let Some(op) = op {
            session.link = Link::Deciding { op };
            let context = Box::new(context);
            self.ops.insert(
                op,
                Op {
                    session: key,
                    epoch,
                    kind: OpKind::Decide(context.clone()),
                },
            );
            self.set_state(key, state);
            self.actions.push_back(Action::Decide { op, context });
            return;
        }
        let decision = self.builtin(key, &context);
        self.apply(key, context.cause, decision, now);
    }

    fn builtin(&mut self, key: SessionKey, context: &crate::recovery::DecisionContext) -> Decision {
        let context = self
            .session(key)
            .map_or_else(|| context.clone(), |s| s.recovery.builtin_context(context));
        self.policy.decide(&context)
    }

    pub(super) fn on_decision(&mut self, op: OpId, answer: PolicyAnswer, now: Instant) {
        let Some(info) = self.ops.remove(&op) else {
            return;
        };
        let waiting = self
            .session(info.session)
            .is_some_and(|s| matches!(s.link, Link::Deciding { op: o } if o == op));
        if !self.current(&info) || !waiting {
            return;
        }
        let OpKind::Decide(context) = info.kind else {
            return;
        };
        let key = info.session;
        let decision = match answer {
            PolicyAnswer::Decided(decision) => decision,
            PolicyAnswer::Failed(failure) => {
                tracing::warn!(error = %failure,
                    "reconnect policy failed; the built-in policy decides");
                self.emit_for(
                    key,
                    EventKind::PluginFailed {
                        plugin: failure.plugin,
                        role: Role::ReconnectPolicy,
                        reason: failure.reason,
                        quarantined: failure.quarantined,
                    },
                );
                self.builtin(key, &context)
            }
            PolicyAnswer::Unavailable => self.builtin(key, &context),
        };
        self.apply(key, context.cause, decision, now);
    }

    /// Executes a decision.
    fn apply(&mut self, key: SessionKey, cause: Cause, decision: Decision, now: Instant) {
        let decision = self.stream_decision(key, &cause, decision);
        let Some(session) = self.session_mut(key) else {
            return;
        };
        // A retiring session carries no connection: resuming it may still deliver what its
        // last one sent, but neither a new session nor the tunnel's end is owed to it.
        if session.retiring.is_some() && !matches!(decision, Decision::Resume { .. }) {
            self.retire(key, now);
            return;
        }
        let (after, tier) = match decision {
            Decision::GiveUp { reason } => {
                self.give_up(Some(key), reason, now);
                return;
            }
            // Nothing to resume before the session exists.
            Decision::Resume { after } if session.data.is_some() => (after, Tier::Resume),
            Decision::Resume { after } | Decision::Restart { after } => (after, Tier::Restart),
        };
        session.recovery.set_last_delay(after);
        if tier == Tier::Restart {
            session.restart_cause = Some(cause);
        }
        let state = match tier {
            Tier::Resume => TunnelState::Resuming,
            Tier::Restart if session.ever_started => TunnelState::Restarting,
            Tier::Restart => TunnelState::Starting,
        };
        let until = now + after;
        session.link = Link::Waiting { until, tier };
        self.set_state(key, state);
        if until <= now {
            self.begin(key, tier, now);
        }
    }

    /// Ends the tunnel because it cannot go on (the policy gave up, the session can never
    /// forward, a single stream broke): an event, then shutdown.
    pub(super) fn give_up(&mut self, key: Option<SessionKey>, reason: String, now: Instant) {
        let event = EventKind::GivingUp {
            reason: reason.clone(),
        };
        match key {
            Some(key) => self.emit_for(key, event),
            None => self.emit(None, event),
        }
        // Warn, not error: the tunnel's owner reports the end itself, once.
        tracing::warn!(%reason, "giving up");
        self.shutdown_because(super::Stopped::GaveUp(reason), now);
    }

    /// Runs the step a wait was for.
    pub(super) fn begin(&mut self, key: SessionKey, tier: Tier, now: Instant) {
        let Some(session) = self.session_mut(key) else {
            return;
        };
        let (attempt, outage) = session.recovery.next_attempt(now);
        match (tier, session.id.clone()) {
            (Tier::Resume, Some(session_id)) if session.data.is_some() => {
                let op = self.next_op();
                let Some(session) = self.session_mut(key) else {
                    return;
                };
                session.link = Link::Calling { op };
                let epoch = session.recovery.epoch();
                self.ops.insert(
                    op,
                    Op {
                        session: key,
                        epoch,
                        kind: OpKind::Resume,
                    },
                );
                self.emit_for(key, EventKind::Resuming { attempt, outage });
                self.actions
                    .push_back(Action::ResumeSession { op, session_id });
            }
            _ => {
                let cause = session.restart_cause.take();
                let ever_started = session.ever_started;
                self.abandon(key, CloseReason::SessionRestarted, now);
                if let (Some(cause), true) = (cause, ever_started) {
                    tracing::warn!(%cause, attempt, ?outage, "restarting the session");
                    self.emit_for(
                        key,
                        EventKind::Restarting {
                            cause,
                            attempt,
                            outage,
                        },
                    );
                }
                self.start(key, now);
            }
        }
    }

    /// Drops the session's current SSM session (if any): its connections close with
    /// `reason`, the service is told to terminate it.
    pub(super) fn abandon(&mut self, key: SessionKey, reason: CloseReason, now: Instant) {
        // The forwarding state goes first: the connections closed below belong to a session
        // that is dropped, not to one that goes on (nothing is sent for them, and a basic-mode
        // session does not start retiring).
        let data = self.session_mut(key).and_then(|s| s.data.take());
        for conn in self.conns.on_session(key) {
            self.close_conn(conn, reason, false, now);
        }
        drop(data);
        let Some(session) = self.session_mut(key) else {
            return;
        };
        if let Link::Online(online) | Link::Closing { online, .. } = &session.link {
            let socket = online.socket;
            self.sockets.remove(&socket);
            self.actions.push_back(Action::CloseSocket {
                socket,
                graceful: false,
            });
        }
        let Some(session) = self.session_mut(key) else {
            return;
        };
        session.data = None;
        let old = session.id.take();
        if let Some(session_id) = old {
            self.terminate_api(session_id);
        }
        self.refresh_gate(key);
    }

    /// Tells the service to end a session; shutdown waits for the answer.
    pub(super) fn terminate_api(&mut self, session_id: String) {
        let op = self.next_op();
        self.terminating.insert(op, session_id.clone());
        self.actions
            .push_back(Action::TerminateSession { op, session_id });
    }

    /// The per-session timers: waits, pings and deadlines, smux NOPs, retransmissions.
    pub(super) fn session_timers(&mut self, key: SessionKey, now: Instant) {
        let pong_timeout = self.config.pong_timeout;
        let ping_interval = self.config.ping_interval;
        let keepalive = self.config.smux_keepalive;
        let handshake_timeout = self.config.handshake_timeout;
        self.check_retired(key, now);
        let Some(session) = self.session_mut(key) else {
            return;
        };
        if let Some(data) = session.data.as_mut()
            && matches!(session.link, Link::Online(_) | Link::Closing { .. })
        {
            data.channel.handle_timeout(now);
        }
        match &mut session.link {
            Link::Waiting { until, tier } if *until <= now => {
                let tier = *tier;
                self.begin(key, tier, now);
                return;
            }
            Link::Closing { until, .. } if *until <= now => {
                self.finish_closing(key);
                return;
            }
            Link::Online(online) | Link::Closing { online, .. } => {
                if now.saturating_duration_since(online.last_rx) >= pong_timeout {
                    if matches!(session.link, Link::Closing { .. }) {
                        self.finish_closing(key);
                    } else {
                        self.disconnected(key, Cause::PingTimeout, now);
                    }
                    return;
                }
                if let Some(since) = online.write_stalled_since
                    && now.saturating_duration_since(since) >= pong_timeout
                {
                    let detail = format!(
                        "writes to the WebSocket made no progress for {}",
                        humantime::format_duration(pong_timeout)
                    );
                    if matches!(session.link, Link::Closing { .. }) {
                        self.finish_closing(key);
                    } else {
                        self.disconnected(key, Cause::TransportError(detail), now);
                    }
                    return;
                }
                if let Some(deadline) = online.handshake_deadline
                    && deadline <= now
                {
                    let detail = format!(
                        "no handshake from the agent within {}",
                        humantime::format_duration(handshake_timeout)
                    );
                    self.disconnected(key, Cause::HandshakeFailed(detail), now);
                    return;
                }
                if online.next_nop.is_some_and(|at| at <= now) {
                    online.next_nop = Some(now + keepalive);
                    if let Some(super::session::SessionData {
                        forward: super::session::Forward::Mux { mux, .. },
                        ..
                    }) = session.data.as_mut()
                    {
                        mux.keepalive();
                    }
                }
                if online.next_ping <= now {
                    online.next_ping = now + ping_interval;
                    let socket = online.socket;
                    online.queued += super::PING_PAYLOAD.len();
                    online.write_stalled_since.get_or_insert(now);
                    self.actions.push_back(Action::Send {
                        socket,
                        frames: vec![super::OutFrame::Ping],
                    });
                }
            }
            Link::Waiting { .. }
            | Link::Deciding { .. }
            | Link::Calling { .. }
            | Link::Connecting { .. }
            | Link::Ended => {}
        }
        self.pump(key, now);
    }

    /// Whether the session ended in a way that needs no recovery of its own: a draining
    /// session ends with its connections, a primary with a successor hands over to it.
    /// Returns `true` when the session is gone and nothing more is to be done for it.
    fn gone_without_recovery(&mut self, key: SessionKey, now: Instant) -> bool {
        let Some(session) = self.session(key) else {
            return true;
        };
        let stripe = session.stripe;
        let role = session.role;
        let reason = if self.at_limit(key, now) {
            CloseReason::MaxDuration
        } else {
            CloseReason::SessionEnded
        };
        match role {
            SessionRole::Draining => {
                self.end_session(key, reason, "the service ended it", now);
                true
            }
            SessionRole::Primary => {
                let successor = self
                    .sessions
                    .iter()
                    .find(|s| s.stripe == stripe && s.role == SessionRole::Successor)
                    .map(|s| s.key);
                let Some(successor) = successor else {
                    return false;
                };
                // The successor takes over; it is still starting, so new connections wait.
                if let Some(s) = self.session_mut(successor) {
                    s.role = SessionRole::Primary;
                }
                self.end_session(
                    key,
                    reason,
                    "the service ended it before its successor forwarded",
                    now,
                );
                true
            }
            SessionRole::Successor => false,
        }
    }
}
