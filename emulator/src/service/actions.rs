//! What the service does to a session: generate service frames, close or drop sockets,
//! recycle, terminate, shut down.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ssm_tether_protocol::message::{FLAGS_CONTROL, SCHEMA_VERSION};
use ssm_tether_protocol::payload::ChannelClosed;
use ssm_tether_protocol::{ClientMessage, MessageType, PayloadType};

use super::{Service, lock, now_ms, side_selection_name};
use crate::events::{Event, Side};
use crate::faults::SideSelection;
use crate::sessions::{Outbound, Peer, Session};

/// How long a control frame (pause, close, channel_closed) may wait for room in a socket's
/// queue before the socket is considered stuck and killed.
const CONTROL_SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// How long after a termination the agent model is stopped if it has not ended by itself.
pub(crate) const AGENT_CANCEL_DELAY: Duration = Duration::from_secs(2);

/// Why a session ended, with the `Output` text of the `channel_closed` frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Termination {
    /// The TerminateSession API.
    Api,
    /// Terminated "from the console" (admin endpoint / library).
    Console,
    /// The client stayed away longer than the grace period.
    ClientGrace,
    /// No stream data for the idle timeout.
    IdleTimeout,
    /// The maximum session duration elapsed.
    MaxSessionDuration,
    /// The agent said Terminating and closed.
    AgentTerminated,
    /// The agent model ended on its own (e.g. handshake timeout).
    AgentExited,
    /// The emulator shuts down.
    Shutdown,
}

impl Termination {
    /// Short name used in events.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Api => "terminate_session_api",
            Self::Console => "terminated_by_service",
            Self::ClientGrace => "client_grace",
            Self::IdleTimeout => "idle_timeout",
            Self::MaxSessionDuration => "max_session_duration",
            Self::AgentTerminated => "agent_terminated",
            Self::AgentExited => "agent_exited",
            Self::Shutdown => "shutdown",
        }
    }

    fn output(self, session_id: &str) -> String {
        match self {
            Self::IdleTimeout => {
                "Your session timed out due to inactivity and has been terminated.".to_owned()
            }
            Self::MaxSessionDuration => {
                "Your session has reached its maximum duration and has been terminated.".to_owned()
            }
            // After `Terminating` MGS sends no text: the plugin prints its own "Exiting
            // session with sessionId: <id>." for an empty Output (PROTOCOL-SESSIONS.md §3.8).
            Self::AgentTerminated => String::new(),
            Self::AgentExited => format!("Exiting session with sessionId: {session_id}."),
            _ => format!("Session {session_id} has been terminated."),
        }
    }
}

impl Service {
    /// A service-originated frame (`channel_closed`, `pause_publication`, `start_publication`)
    /// with a valid header: HL 116, non-zero CreatedDate, correct digest.
    pub(crate) fn service_frame(
        &self,
        message_type: MessageType,
        session: &Session,
        output: &str,
    ) -> Bytes {
        let message_id = self.random_uuid();
        let created = now_ms();
        let payload = ChannelClosed {
            message_id: message_id.hyphenated().to_string(),
            created_date: created.to_string(),
            destination_id: session.target.clone(),
            session_id: session.id.clone(),
            message_type: message_type.as_str().to_owned(),
            schema_version: 1,
            output: output.to_owned(),
        }
        .to_payload();
        ClientMessage {
            message_type,
            schema_version: SCHEMA_VERSION,
            created_date: created,
            sequence_number: 0,
            flags: FLAGS_CONTROL,
            message_id,
            payload_type: PayloadType::UNSPECIFIED,
            payload,
        }
        .encode()
    }

    /// Sends a service-generated frame to `side` of `session`, if connected.
    pub(crate) async fn send_generated(
        &self,
        session: &Session,
        side: Side,
        message_type: MessageType,
        output: &str,
    ) {
        let Some(peer) = session.peer(side) else {
            return;
        };
        let frame = self.service_frame(message_type, session, output);
        crate::relay::emit_frame(self, &session.id, "service", side, "generated", &frame);
        if peer.is_black_holed() {
            return;
        }
        send_control(&peer, Outbound::Frame(frame)).await;
    }

    /// Closes `side`'s socket with 1000 "Bye" (a recycle). Returns whether one was open.
    pub(crate) async fn close_side(&self, session: &Session, side: Side) -> bool {
        let Some(peer) = session.peer(side) else {
            return false;
        };
        send_control(&peer, Outbound::Close(1000, "Bye".to_owned())).await;
        true
    }

    /// Drops `sides`' sockets without a close frame (like a TCP reset or a dead NAT entry).
    pub(crate) async fn reset(&self, session: &Session, sides: SideSelection) {
        self.events.emit(Event::Fault {
            session_id: Some(session.id.clone()),
            kind: "reset".to_owned(),
            detail: format!("side={}", side_selection_name(sides)),
        });
        for side in [Side::Client, Side::Agent] {
            let wanted = match side {
                Side::Client => sides.client(),
                Side::Agent => sides.agent(),
            };
            if let Some(peer) = session.peer(side).filter(|_| wanted) {
                send_control(&peer, Outbound::Abort).await;
            }
        }
    }

    /// Recycles `sides` of `session` now: close 1000 "Bye", rotate the cell if stale-cell is
    /// on, re-arm configured ResumeSession failures.
    pub(crate) async fn recycle(&self, session: &Session, sides: SideSelection, why: &str) {
        if session.state().terminated.is_some() {
            return;
        }
        let settings = self.faults();
        self.events.emit(Event::Fault {
            session_id: Some(session.id.clone()),
            kind: "recycle".to_owned(),
            detail: format!("side={} ({why})", side_selection_name(sides)),
        });
        if sides.client() {
            if settings.stale_cell {
                let cell = self.random_text(48);
                session.state().cell = cell;
                self.events.emit(Event::Fault {
                    session_id: Some(session.id.clone()),
                    kind: "stale_cell".to_owned(),
                    detail: "cell-number rotated; the previous StreamUrl is refused".to_owned(),
                });
            }
            // Configured ResumeSession failures hit the client's reconnect after each recycle.
            if settings.resume_fail.is_armed() {
                lock(&self.resume_fail).arm(&settings.resume_fail);
            }
            self.close_side(session, Side::Client).await;
        }
        if sides.agent() {
            self.close_side(session, Side::Agent).await;
        }
    }

    /// Ends a session: `channel_closed` to the client (and, except after the client grace,
    /// to the agent), close both sockets, and stop the agent a little later.
    /// Returns false if it had already ended.
    ///
    /// After the client grace the agent only sees its socket close: like in real logs, its
    /// rejoin then gets "Session is already terminated" from CreateDataChannel. The agent model
    /// is stopped [`AGENT_CANCEL_DELAY`] later, standing in for MGS's control-channel cancel.
    pub(crate) async fn terminate(&self, session: &Arc<Session>, why: Termination) -> bool {
        {
            let mut state = session.state();
            if state.terminated.is_some() {
                return false;
            }
            state.terminated = Some(why.name().to_owned());
            state.client_token = None;
            state.agent_token = None;
        }
        self.events.emit(Event::Session {
            session_id: session.id.clone(),
            state: "terminated".to_owned(),
            reason: why.name().to_owned(),
        });
        let output = why.output(&session.id);
        for side in [Side::Client, Side::Agent] {
            if side == Side::Client || why != Termination::ClientGrace {
                self.send_generated(session, side, MessageType::ChannelClosed, &output)
                    .await;
            }
            self.close_side(session, side).await;
        }
        let session = session.clone();
        tokio::spawn(async move {
            tokio::time::sleep(AGENT_CANCEL_DELAY).await;
            let agent = session.state().agent_task.take();
            if let Some(agent) = agent {
                agent.shutdown().await;
            }
        });
        true
    }

    /// Stops every session's agent and socket; used at shutdown.
    pub(crate) async fn shutdown_all(&self) {
        let _ = self.shutdown.send(true);
        for session in self.all_sessions() {
            let (agent_task, peers) = {
                let mut state = session.state();
                if state.terminated.is_none() {
                    state.terminated = Some(Termination::Shutdown.name().to_owned());
                }
                (
                    state.agent_task.take(),
                    [state.client.take(), state.agent.take()],
                )
            };
            for peer in peers.into_iter().flatten() {
                peer.kill.notify_one();
            }
            if let Some(agent) = agent_task {
                agent.shutdown().await;
            }
        }
    }
}

/// Queues a control message for a socket; a socket that cannot take it within a second is
/// stuck (its peer stopped reading) and is killed instead.
pub(crate) async fn send_control(peer: &Peer, message: Outbound) {
    match tokio::time::timeout(CONTROL_SEND_TIMEOUT, peer.tx.send(message)).await {
        Ok(_) => {}
        Err(_) => peer.kill.notify_one(),
    }
}
