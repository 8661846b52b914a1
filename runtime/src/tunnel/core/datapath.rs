//! The forwarding data path: frames in and out of each session's reliable channel, the
//! handshake, smux or basic mode, and the local connections at the other end.
//!
//! Downstream (agent → application) never waits: every in-order message is taken from the
//! channel at once and its bytes are queued for their connection, so one application that
//! stops reading cannot stall the others — it is closed once it exceeds its budget
//! (`conns`). Upstream (application → agent) is throttled per session: while its channel's
//! window, its smux outbound queue or a reorder gap is full, its upload gate closes and its
//! connections are not read.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;

use super::handshake::{self, HandshakeError, PortMode};
use super::recovery::Ending;
use super::session::{BasicOut, Forward, Link, Session};
use super::{Action, ConnId, Core, OutFrame, SessionKey, SocketId};
use crate::channel::{ChannelEvent, FrameError};
use crate::events::{Cause, CloseReason, EventKind, SessionRole, TunnelState};
use crate::mux::{MuxClient, MuxEvent};
use crate::protocol::PayloadType;
use crate::protocol::message::MAX_STREAM_PAYLOAD;
use crate::protocol::payload::{Flag, HandshakeComplete, HandshakeRequest};

/// Outgoing bytes waiting to enter a session's channel beyond which its connections are no
/// longer read.
const OUTBOUND_HIGH_WATER: usize = 64 * 1024;
/// Incoming messages held behind a gap beyond which a session's connections are no longer
/// read. The agent fills a gap at one message per 100 ms; meanwhile request/response
/// traffic (the common case) is throttled at its source instead of piling up behind it.
/// Only a gap that is being filled counts (`Channel::behind_gap`): messages beyond the
/// channel's window are never kept, and a gap that has not moved for the channel's patience
/// stops counting, so a peer that never fills one cannot hold uploads shut.
const REORDER_HIGH_WATER: usize = 2048;
/// Bytes handed to a socket's writer and not yet flushed beyond which no more are handed
/// over: what is not handed over stays in the channel, which retransmits it anyway.
const SOCKET_HIGH_WATER: usize = 1 << 20;

impl Core {
    pub(super) fn on_frame(&mut self, socket: SocketId, frame: Bytes, now: Instant) {
        let Some(key) = self.socket_session(socket) else {
            return;
        };
        let Some(session) = self.session_mut(key) else {
            return;
        };
        let Some(online) = session.attached_mut().filter(|o| o.socket == socket) else {
            return;
        };
        online.last_rx = now;
        let closing = matches!(session.link, Link::Closing { .. });
        if let Some(data) = session.data.as_mut() {
            match data.channel.handle_frame(frame, now) {
                Ok(()) => {}
                // A peer that breaks the size limit cannot be trusted with this socket; the
                // session itself may be fine, so it is resumed on a new one.
                Err(err @ FrameError::TooLarge(_)) if !closing => {
                    tracing::warn!(error = %err, "oversized frame; dropping the socket");
                    self.disconnected(key, Cause::TransportError(err.to_string()), now);
                    return;
                }
                Err(err) => tracing::debug!(error = %err, "frame ignored"),
            }
        }
        self.process(key, now);
    }

    /// Moves everything that can move for one session: channel events to local
    /// connections, local bytes into the channel, frames to the socket.
    pub(super) fn process(&mut self, key: SessionKey, now: Instant) {
        loop {
            let Some(event) = self
                .session_mut(key)
                .and_then(|s| s.data.as_mut())
                .and_then(|d| d.channel.poll_event())
            else {
                break;
            };
            match event {
                ChannelEvent::Message(message) => {
                    self.on_message(key, message.payload_type, message.payload, now);
                }
                ChannelEvent::ChannelClosed(closed) => {
                    let detail = if closed.output.is_empty() {
                        "channel_closed".to_owned()
                    } else {
                        format!("channel_closed: {}", closed.output)
                    };
                    if matches!(
                        self.session(key).map(|s| &s.link),
                        Some(Link::Closing { .. })
                    ) {
                        self.finish_closing(key);
                    } else if self.carries_stream(key) {
                        self.stream_channel_closed(key, &detail, now);
                    } else {
                        self.disconnected(key, Cause::SessionGone(detail), now);
                    }
                    return;
                }
                ChannelEvent::Paused => tracing::debug!("publication paused by the service"),
                ChannelEvent::Resumed => tracing::debug!("publication resumed"),
            }
        }
        let unusable = self
            .session_mut(key)
            .and_then(|s| s.data.as_mut())
            .and_then(|d| d.unusable.take());
        if let Some(reason) = unusable {
            // Whatever was answered (a failed handshake action) goes out first: it is how
            // the agent learns to cancel its side.
            self.flush(key, now);
            self.give_up(Some(key), reason, now);
            return;
        }
        let broken = self
            .session_mut(key)
            .and_then(|s| s.data.as_mut())
            .and_then(|d| d.broken.take());
        if let Some(cause) = broken {
            self.disconnected(key, cause, now);
            return;
        }
        self.pump(key, now);
        self.check_retired(key, now);
    }

    fn on_message(
        &mut self,
        key: SessionKey,
        payload_type: PayloadType,
        payload: Bytes,
        now: Instant,
    ) {
        match payload_type {
            PayloadType::HANDSHAKE_REQUEST => self.on_handshake_request(key, &payload, now),
            PayloadType::HANDSHAKE_COMPLETE => self.on_handshake_complete(key, &payload, now),
            PayloadType::ENC_CHALLENGE_REQUEST => self.on_challenge(key, &payload, now),
            PayloadType::OUTPUT | PayloadType::STD_ERR | PayloadType::EXIT_CODE
                if self.is_shell() || self.output_first_makes_a_shell(key) =>
            {
                self.on_shell_output(key, payload_type, payload, now);
            }
            PayloadType::OUTPUT => self.on_output(key, payload, now),
            PayloadType::FLAG => match Flag::from_payload(&payload) {
                Ok(Flag::ConnectToPortError) => {
                    let destination = self
                        .session(key)
                        .and_then(|s| s.data.as_ref())
                        .and_then(|d| d.negotiated.as_ref())
                        .map_or_else(String::new, |n| n.destination.clone());
                    tracing::warn!(%destination,
                        "the agent could not connect to the destination; closing that connection");
                    if let Some(data) = self.session_mut(key).and_then(|s| s.data.as_mut()) {
                        data.refused += 1;
                    }
                    self.emit_for(key, EventKind::DestinationUnreachable { destination });
                }
                Ok(flag) => tracing::debug!(?flag, "flag from the agent"),
                Err(err) => tracing::debug!(error = %err, "unreadable flag"),
            },
            other => tracing::debug!(payload_type = ?other, "payload ignored"),
        }
    }

    fn on_handshake_request(&mut self, key: SessionKey, payload: &[u8], now: Instant) {
        let Some(data) = self.session_mut(key).and_then(|s| s.data.as_mut()) else {
            return;
        };
        if data.pending.is_some() || data.negotiated.is_some() {
            self.late_handshake(key, "HandshakeRequest");
            return;
        }
        if data.kms.is_some() {
            self.late_handshake(key, "HandshakeRequest");
            return;
        }
        let Ok(request) = HandshakeRequest::from_payload(payload) else {
            tracing::warn!("unreadable HandshakeRequest");
            return;
        };
        self.settle_kind(handshake::kind_of(&request));
        let kind = self.config.kind;
        if self.shell_handshake(key, request.clone()) {
            return;
        }
        let Some(data) = self.session_mut(key).and_then(|s| s.data.as_mut()) else {
            return;
        };
        let (response, negotiated) = handshake::answer(&request, kind, None);
        if let Err(err) =
            data.channel
                .send(PayloadType::HANDSHAKE_RESPONSE, response.to_payload(), now)
        {
            tracing::warn!(error = %err, "cannot answer the handshake");
        }
        match negotiated {
            Ok(negotiated) => data.pending = Some(negotiated),
            // A shell or command document: a new session of the same document would be
            // one too.
            Err(HandshakeError::NotPort(session_type)) => {
                data.unusable = Some(format!(
                    "the document starts a {session_type} session (a shell or command), not a \
                     port session"
                ));
            }
            Err(HandshakeError::NotShell(session_type)) => {
                data.unusable = Some(format!(
                    "the document starts a {session_type} session, not a shell or command"
                ));
            }
            Err(err) => {
                // The agent cancels the session on our failed answer; waiting for the
                // handshake deadline would only delay the replacement.
                tracing::error!(error = %err, "handshake refused");
                data.broken = Some(Cause::HandshakeFailed(err.to_string()));
            }
        }
    }

    pub(super) fn on_handshake_complete(&mut self, key: SessionKey, payload: &[u8], now: Instant) {
        let keepalive_every = self.config.smux_keepalive;
        if let Ok(complete) = HandshakeComplete::from_payload(payload)
            && !complete.customer_message.is_empty()
        {
            // What the agent wants the user to read ("This session is encrypted using AWS
            // KMS."): agent text, so bounded and escaped.
            let message: String = complete.customer_message.chars().take(256).collect();
            tracing::info!(message = %message.escape_debug(), "the agent says");
        }
        let Some(session) = self.session_mut(key) else {
            return;
        };
        let Some(data) = session.data.as_mut() else {
            return;
        };
        if data.negotiated.is_some() {
            self.late_handshake(key, "HandshakeComplete");
            return;
        }
        let Some(negotiated) = data.pending.take() else {
            return;
        };
        let (mode, keepalive) = match negotiated.mode {
            PortMode::Mux { keepalive } => {
                data.forward = Forward::Mux {
                    mux: MuxClient::new(),
                    streams: HashMap::new(),
                };
                ("mux", keepalive)
            }
            PortMode::Basic { .. } => {
                data.forward = Forward::Basic {
                    active: None,
                    used: false,
                    out: VecDeque::new(),
                    out_bytes: 0,
                };
                ("basic", false)
            }
            PortMode::Shell => {
                data.forward = Forward::Shell {
                    active: None,
                    out: VecDeque::new(),
                    out_bytes: 0,
                };
                let mode = if data.cipher.is_some() {
                    "shell, KMS-encrypted"
                } else {
                    "shell"
                };
                (mode, false)
            }
        };
        let agent_version = negotiated.agent_version.clone();
        data.negotiated = Some(negotiated);
        if let Some(online) = session.attached_mut() {
            online.handshake_deadline = None;
            if keepalive {
                online.next_nop = Some(now + keepalive_every);
            }
        }
        let Some(session) = self.session_mut(key) else {
            return;
        };
        let session_id = session.id.clone().unwrap_or_default();
        let ending = if session.ever_forwarded {
            Ending::Restarted
        } else {
            Ending::Started
        };
        let restart = session.ever_forwarded || session.recovery.in_outage();
        session.ever_forwarded = true;
        let successor = session.role == SessionRole::Successor;
        let spare = session.spare;
        tracing::info!(session = %session.reference(), mode, %agent_version, "forwarding");
        self.emit_for(
            key,
            EventKind::Forwarding {
                session_id,
                mode,
                agent_version,
            },
        );
        if restart {
            self.end_outage(key, ending, now);
        }
        self.set_state(key, TunnelState::Forwarding);
        if successor && spare {
            self.take_over(key, now);
        } else if successor {
            self.promote(key, now);
        }
        self.refresh_gate(key);
        self.bind_waiting(now);
    }

    /// A second handshake within one session (docs/protocol.md §5 has exactly one) is
    /// ignored: acting on it could switch the forwarding mode under open connections.
    fn late_handshake(&mut self, key: SessionKey, what: &'static str) {
        let Some(session) = self.session_mut(key) else {
            return;
        };
        let reference = session.reference();
        let Some(data) = session.data.as_mut() else {
            return;
        };
        if !std::mem::replace(&mut data.late_handshake_logged, true) {
            tracing::warn!(session = %reference, what,
                "the agent repeated the handshake of a negotiated session; ignored (logged once \
                 per session)");
        }
    }

    fn on_output(&mut self, key: SessionKey, payload: Bytes, now: Instant) {
        let Some(data) = self.session_mut(key).and_then(|s| s.data.as_mut()) else {
            return;
        };
        if data.pending.is_none() && data.negotiated.is_none() {
            // Port sessions always begin with a HandshakeRequest; output first is how shell
            // and command sessions without encryption begin (docs/protocol.md §5).
            data.unusable = Some(
                "the agent sent output before any handshake: the document starts a shell or \
                 command session, not a port session"
                    .to_owned(),
            );
            return;
        }
        let mut deliveries: Vec<(ConnId, Bytes)> = Vec::new();
        let mut closed: Vec<(ConnId, CloseReason)> = Vec::new();
        match &mut data.forward {
            Forward::Mux { mux, streams } => {
                if let Err(err) = mux.handle_bytes(&payload) {
                    // smux closes the whole session on a protocol error; so do we, by
                    // restarting (the streams are unrecoverable).
                    tracing::error!(error = %err, "smux protocol error");
                    data.broken = Some(Cause::ProtocolError(err.to_string()));
                    return;
                }
                while let Some(event) = mux.poll_event() {
                    match event {
                        MuxEvent::Data(stream, bytes) => {
                            if let Some(conn) = streams.get(&stream) {
                                deliveries.push((*conn, bytes));
                            }
                        }
                        MuxEvent::Closed(stream) => {
                            let reason = if data.refused > 0 {
                                data.refused -= 1;
                                CloseReason::DestinationUnreachable
                            } else {
                                CloseReason::DestinationClosed
                            };
                            if let Some(conn) = streams.remove(&stream) {
                                closed.push((conn, reason));
                            }
                        }
                    }
                }
            }
            Forward::Basic { active, .. } => {
                if let Some(conn) = active {
                    deliveries.push((*conn, payload));
                }
            }
            // A shell tunnel's output goes through `on_shell_output`.
            Forward::Shell { .. } | Forward::Pending => {}
        }
        for (conn, bytes) in deliveries {
            self.deliver(conn, bytes, now);
        }
        for (conn, reason) in closed {
            self.close_conn(conn, reason, true, now);
        }
    }

    /// Queues bytes for a local connection, closing it (or, over the tunnel's cap, the
    /// largest backlog) when its application is too far behind.
    pub(super) fn deliver(&mut self, conn: ConnId, data: Bytes, now: Instant) {
        let len = data.len();
        if !self.conns.queue(conn, len, now) {
            if self.conns.get(conn).is_some() {
                tracing::warn!(conn = %conn, "local application too slow: its backlog exceeds \
                    slow_reader_buffer; closing that connection");
                self.close_conn(conn, CloseReason::SlowReader, false, now);
            }
            return;
        }
        self.status.bytes_down += len as u64;
        self.actions.push_back(Action::WriteLocal { conn, data });
        while let Some(victim) = self.conns.over_tunnel_cap() {
            tracing::warn!(conn = %victim, "local backlogs exceed slow_reader_tunnel_buffer; \
                closing the largest");
            self.close_conn(victim, CloseReason::SlowReader, false, now);
        }
    }

    pub(super) fn on_local_data(&mut self, conn: ConnId, data: Bytes, now: Instant) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        let (Some(key), stream) = (c.session, c.stream) else {
            return;
        };
        c.bytes_up += data.len() as u64;
        self.status.bytes_up += data.len() as u64;
        let Some(data_state) = self.session_mut(key).and_then(|s| s.data.as_mut()) else {
            return;
        };
        match &mut data_state.forward {
            Forward::Mux { mux, .. } => {
                if let Some(stream) = stream {
                    mux.write(stream, &data);
                }
            }
            Forward::Basic {
                active,
                out,
                out_bytes,
                ..
            } if *active == Some(conn) => {
                for chunk in data.chunks(MAX_STREAM_PAYLOAD) {
                    *out_bytes += chunk.len();
                    out.push_back(BasicOut::Data(data.slice_ref(chunk)));
                }
            }
            Forward::Shell { .. } => {
                self.shell_input(key, conn, &data);
            }
            Forward::Basic { .. } | Forward::Pending => {}
        }
        self.pump(key, now);
    }

    /// Ends a local connection: FIN to the agent (in basic mode its session retires), the
    /// local side closed (after its queue drains, if `drain`), an event.
    pub(super) fn close_conn(
        &mut self,
        conn: ConnId,
        reason: CloseReason,
        drain: bool,
        now: Instant,
    ) {
        let Some(c) = self.conns.remove(conn) else {
            return;
        };
        let mut session_ref = None;
        // A single stream ends its session itself (`stream.rs`), and shutdown ends every
        // session; otherwise a basic-mode session retires with its connection.
        let may_retire = !self.config.single_stream && self.stopping.is_none();
        let retire_within = self.config.stream_drain;
        if let Some(key) = c.session
            && let Some(session) = self.session_mut(key)
        {
            session_ref = Some(session.reference());
            let mut retire = false;
            if let Some(data) = session.data.as_mut() {
                let terminate_flag = matches!(
                    data.mode(),
                    Some(PortMode::Basic {
                        terminate_flag: true
                    })
                );
                match &mut data.forward {
                    Forward::Mux { mux, streams } => {
                        if let Some(stream) = c.stream {
                            mux.close(stream);
                            streams.remove(&stream);
                        }
                    }
                    Forward::Basic {
                        active,
                        out,
                        out_bytes,
                        ..
                    } if *active == Some(conn) => {
                        *active = None;
                        // Not DisconnectToPort: the session is never reused (bytes the agent
                        // sent for this connection could reach the next one), and a
                        // standard-stream agent fails the session on it (port_basic.go). The
                        // flag that ends the session goes behind what the connection sent,
                        // so its acknowledgement proves all of it arrived.
                        if may_retire {
                            retire = true;
                            if terminate_flag {
                                *out_bytes += 4;
                                out.push_back(BasicOut::Flag(Flag::TerminateSession));
                            }
                        }
                    }
                    Forward::Shell { active, .. } if *active == Some(conn) => *active = None,
                    Forward::Basic { .. } | Forward::Shell { .. } | Forward::Pending => {}
                }
            }
            if retire {
                session.retiring = Some(now + retire_within);
                // Keeps rotation's drained-session check from ending it before that.
                session.ending = true;
            }
        }
        if reason == CloseReason::SlowReader {
            self.status.slow_reader_closes += 1;
        }
        self.status_dirty = true;
        self.actions.push_back(Action::CloseLocal { conn, drain });
        self.emit(
            session_ref,
            EventKind::ConnectionClosed {
                id: conn.0,
                bytes_up: c.bytes_up,
                bytes_down: c.bytes_down,
                reason,
            },
        );
        if let Some(key) = c.session {
            self.pump(key, now);
            self.bind_waiting(now);
            self.maybe_end_drained(key, now);
            self.check_retired(key, now);
        }
        if self.config.single_stream && self.stopping.is_none() {
            self.stream_closed(reason, now);
        }
    }

    /// Binds waiting connections to sessions, as far as the sessions' modes allow.
    pub(super) fn bind_waiting(&mut self, now: Instant) {
        if self.stopping.is_some() {
            return;
        }
        let mut touched = Vec::new();
        let mut used_up = Vec::new();
        let mut shells = Vec::new();
        while self.conns.first_waiting().is_some() {
            let Some(key) = self.pick_session() else {
                break;
            };
            let Some(data) = self.session_mut(key).and_then(|s| s.data.as_mut()) else {
                break;
            };
            let stream = match &mut data.forward {
                Forward::Mux { mux, .. } => Some(mux.open_stream()),
                Forward::Basic { .. } | Forward::Shell { .. } | Forward::Pending => None,
            };
            let Some(conn) = self.conns.bind_first(key, stream) else {
                break;
            };
            if let Some(data) = self.session_mut(key).and_then(|s| s.data.as_mut()) {
                match &mut data.forward {
                    Forward::Mux { streams, .. } => {
                        if let Some(stream) = stream {
                            streams.insert(stream, conn);
                        }
                    }
                    Forward::Basic { active, used, .. } => {
                        *active = Some(conn);
                        *used = true;
                        used_up.push(key);
                    }
                    Forward::Shell { active, .. } => {
                        *active = Some(conn);
                        shells.push((key, conn));
                    }
                    Forward::Pending => {}
                }
            }
            let uploads = self.session(key).is_some_and(|s| s.uploads_open);
            self.actions.push_back(Action::Bind {
                conn,
                session: key,
                uploads,
            });
            self.status_dirty = true;
            if !touched.contains(&key) {
                touched.push(key);
            }
        }
        for key in touched {
            self.pump(key, now);
        }
        for key in used_up {
            self.start_spare(key, now);
        }
        // A shell learns the terminal's size as soon as its terminal is attached.
        for (key, conn) in shells {
            self.shell_attached(key, conn, now);
        }
    }

    /// A basic-mode session took its one connection: a fresh session is started in its
    /// stripe right away, so that the next connection does not wait for a StartSession.
    fn start_spare(&mut self, key: SessionKey, now: Instant) {
        if self.config.single_stream || self.stopping.is_some() {
            return;
        }
        let Some(stripe) = self.session(key).map(|s| s.stripe) else {
            return;
        };
        // A rotation's successor is just as fresh.
        if self.successor_of(stripe).is_some() {
            return;
        }
        let spare = self.add_session(stripe, SessionRole::Successor, now);
        if let Some(session) = self.session_mut(spare) {
            session.spare = true;
        }
        self.start(spare, now);
        tracing::debug!(
            stripe,
            "basic mode: starting a fresh session for the next connection"
        );
    }

    fn successor_of(&self, stripe: u8) -> Option<SessionKey> {
        self.sessions
            .iter()
            .find(|s| s.stripe == stripe && s.role == SessionRole::Successor)
            .map(|s| s.key)
    }

    /// A spare forwards: it becomes its stripe's primary, and the used session it replaces
    /// drains (it keeps its connection, or goes on retiring). Not a rotation: no events.
    fn take_over(&mut self, key: SessionKey, now: Instant) {
        let Some(session) = self.session_mut(key) else {
            return;
        };
        session.role = SessionRole::Primary;
        let stripe = session.stripe;
        let replaced: Vec<SessionKey> = self
            .sessions
            .iter()
            .filter(|s| s.stripe == stripe && s.role == SessionRole::Primary && s.key != key)
            .map(|s| s.key)
            .collect();
        tracing::debug!(
            stripe,
            "basic mode: a fresh session takes the next connection"
        );
        for old in replaced {
            if let Some(session) = self.session_mut(old) {
                session.role = SessionRole::Draining;
            }
            self.maybe_end_drained(old, now);
        }
    }

    /// Ends a retiring basic-mode session once what its connection sent is acknowledged (or
    /// its deadline has passed).
    pub(super) fn check_retired(&mut self, key: SessionKey, now: Instant) {
        if self.stopping.is_some() {
            return;
        }
        let Some(session) = self.session(key) else {
            return;
        };
        let Some(deadline) = session.retiring else {
            return;
        };
        let delivered = session
            .data
            .as_ref()
            .is_none_or(|d| d.forward.outbound_len() == 0 && d.channel.unacked() == 0);
        if !delivered && now < deadline {
            return;
        }
        if !delivered {
            tracing::warn!(session = %session.reference(),
                "what a closed basic-mode connection sent was not acknowledged in time; \
                 ending its session anyway");
        }
        self.retire(key, now);
    }

    /// Ends a basic-mode session whose connection closed, keeping its stripe served: its
    /// spare (still starting, new connections wait for it) or else a new session takes over.
    pub(super) fn retire(&mut self, key: SessionKey, now: Instant) {
        let Some(session) = self.session(key) else {
            return;
        };
        let stripe = session.stripe;
        if session.role == SessionRole::Primary {
            match self.successor_of(stripe) {
                Some(spare) => {
                    if let Some(spare) = self.session_mut(spare) {
                        spare.role = SessionRole::Primary;
                    }
                }
                None if self.stopping.is_none() => {
                    let fresh = self.add_session(stripe, SessionRole::Primary, now);
                    self.start(fresh, now);
                }
                None => {}
            }
        }
        self.end_session(
            key,
            CloseReason::SessionEnded,
            "its connection closed (basic mode carries one connection per session)",
            now,
        );
    }

    /// The session a new connection should go to: a primary that can take one, forwarding
    /// ones before those in an outage, then the least loaded (bytes in flight, then
    /// connection count).
    fn pick_session(&self) -> Option<SessionKey> {
        self.sessions
            .iter()
            .filter(|s| s.can_take_connection())
            .min_by_key(|s| {
                let (connections, backlog) = self.conns.load_of(s.key);
                (
                    !s.is_forwarding(),
                    s.bytes_in_flight() as u64 + backlog,
                    connections,
                    s.stripe,
                )
            })
            .map(|s| s.key)
    }

    /// Moves queued outgoing bytes into the channel while its window has room, then writes
    /// what the channel wants sent and updates the upload gate.
    pub(super) fn pump(&mut self, key: SessionKey, now: Instant) {
        if let Some(data) = self.session_mut(key).and_then(|s| s.data.as_mut()) {
            while data.channel.send_capacity() > 0 {
                let (payload_type, payload) = match &mut data.forward {
                    Forward::Mux { mux, .. } => match mux.take_outbound(MAX_STREAM_PAYLOAD) {
                        Some(chunk) => (PayloadType::OUTPUT, chunk),
                        None => break,
                    },
                    Forward::Basic { out, out_bytes, .. } => match out.pop_front() {
                        Some(BasicOut::Data(chunk)) => {
                            *out_bytes -= chunk.len();
                            (PayloadType::OUTPUT, chunk)
                        }
                        Some(BasicOut::Flag(flag)) => {
                            *out_bytes -= 4;
                            (PayloadType::FLAG, flag.to_payload())
                        }
                        None => break,
                    },
                    forward @ Forward::Shell { .. } => {
                        match Self::next_shell_message(forward, data.cipher.as_ref()) {
                            Some(message) => message,
                            None => break,
                        }
                    }
                    Forward::Pending => break,
                };
                if let Err(err) = data.channel.send(payload_type, payload, now) {
                    // Capacity was checked and chunks are ≤ 1024 bytes: unreachable, and
                    // losing the bytes silently is the one thing this code must never do.
                    tracing::error!(error = %err, "the channel refused a message");
                    break;
                }
            }
        }
        self.flush(key, now);
        self.refresh_gate(key);
    }

    /// Hands what the channel wants sent to the socket's writer, up to its high water.
    pub(super) fn flush(&mut self, key: SessionKey, now: Instant) {
        let Some(session) = self.session_mut(key) else {
            return;
        };
        let Some(data) = session.data.as_mut() else {
            return;
        };
        let online = match &mut session.link {
            Link::Online(online) | Link::Closing { online, .. } => online,
            _ => return,
        };
        let mut frames = Vec::new();
        while online.queued < SOCKET_HIGH_WATER {
            let Some(frame) = data.channel.poll_transmit() else {
                break;
            };
            online.queued += frame.len();
            frames.push(OutFrame::Binary(frame));
        }
        if frames.is_empty() {
            return;
        }
        online.write_stalled_since.get_or_insert(now);
        let socket = online.socket;
        self.actions.push_back(Action::Send { socket, frames });
    }

    /// Announces a change of the session's upload gate.
    pub(super) fn refresh_gate(&mut self, key: SessionKey) {
        let stopping = self.stopping.is_some();
        let Some(session) = self.session_mut(key) else {
            return;
        };
        let open = !stopping && uploads_allowed(session);
        if open != session.uploads_open {
            session.uploads_open = open;
            self.actions
                .push_back(Action::Uploads { session: key, open });
        }
    }
}

fn uploads_allowed(session: &Session) -> bool {
    session.data.as_ref().is_some_and(|d| {
        d.negotiated.is_some()
            && d.channel.send_capacity() > 0
            && d.channel.behind_gap() < REORDER_HIGH_WATER
            && d.forward.outbound_len() < OUTBOUND_HIGH_WATER
    })
}
