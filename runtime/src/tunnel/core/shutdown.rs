//! Shutdown: every session the tunnel knows of is ended at the agent (the TerminateSession
//! flag, waited for briefly) and at the service (the TerminateSession call), including
//! sessions a StartSession still in flight creates, within one deadline.

use std::time::{Duration, Instant};

use super::handshake::PortMode;
use super::session::Link;
use super::{Action, Core, OpKind, SessionKey, Stopped, Stopping};
use crate::events::{CloseReason, EventKind, TunnelState};
use crate::protocol::PayloadType;
use crate::protocol::payload::Flag;

impl Core {
    /// Stops the tunnel: closes every connection, sends the TerminateSession flag on every
    /// forwarding session and waits (at most `flag_grace`) for the agent to acknowledge it,
    /// then calls TerminateSession for every session, waiting at most `terminate_budget`.
    /// [`Core::stopped`] says when everything is done.
    pub fn shutdown(&mut self, now: Instant) {
        self.shutdown_because(Stopped::Requested, now);
    }

    pub(super) fn shutdown_because(&mut self, reason: Stopped, now: Instant) {
        self.shutdown_within(reason, self.config.flag_grace, now);
    }

    /// Stops the tunnel, waiting at most `flag_grace` for the agent to acknowledge the flag
    /// (and with it everything sent before it).
    pub(super) fn shutdown_within(&mut self, reason: Stopped, flag_grace: Duration, now: Instant) {
        if self.stopping.is_some() {
            return;
        }
        let flag_deadline = now + flag_grace;
        self.stopping = Some(Stopping {
            reason,
            deadline: flag_deadline + self.config.terminate_budget,
            flag_deadline,
        });
        for conn in self.conns.ids() {
            self.close_conn(conn, CloseReason::TunnelStopped, true, now);
        }
        for key in self.keys() {
            self.stop_session(key, flag_deadline, now);
        }
        self.check_finished(now);
    }

    fn stop_session(&mut self, key: SessionKey, flag_deadline: Instant, now: Instant) {
        self.refresh_gate(key);
        let Some(session) = self.session_mut(key) else {
            return;
        };
        let flag = session
            .data
            .as_ref()
            .and_then(|d| d.mode())
            .is_some_and(|mode| match mode {
                PortMode::Mux { .. } => true,
                PortMode::Basic { terminate_flag } => terminate_flag,
                // Shell agents ignore flags; the TerminateSession call ends the session.
                PortMode::Shell => false,
            });
        let link = std::mem::replace(&mut session.link, Link::Ended);
        match link {
            Link::Online(online) if flag => {
                if let Some(data) = session.data.as_mut() {
                    let sent = data.channel.send(
                        PayloadType::FLAG,
                        Flag::TerminateSession.to_payload(),
                        now,
                    );
                    if sent.is_ok() {
                        // Acks for whatever still arrives keep flowing meanwhile; the agent
                        // ends the session itself before the service closes its socket.
                        session.link = Link::Closing {
                            online,
                            until: flag_deadline,
                        };
                        self.flush(key, now);
                        return;
                    }
                }
                session.link = Link::Online(online);
                self.finish_closing(key);
            }
            Link::Online(online) => {
                session.link = Link::Online(online);
                self.finish_closing(key);
            }
            Link::Connecting { socket } => {
                self.sockets.remove(&socket);
                self.finish_closing(key);
            }
            _ => self.finish_closing(key),
        }
    }

    /// Ends a session at shutdown: its socket closed, TerminateSession called.
    pub(super) fn finish_closing(&mut self, key: SessionKey) {
        let Some(session) = self.session_mut(key) else {
            return;
        };
        let link = std::mem::replace(&mut session.link, Link::Ended);
        let id = session.id.take();
        if let Link::Online(online) | Link::Closing { online, .. } = link {
            self.sockets.remove(&online.socket);
            self.actions.push_back(Action::CloseSocket {
                socket: online.socket,
                graceful: true,
            });
        }
        if let Some(session_id) = id {
            tracing::debug!(%session_id, "terminating the session");
            self.terminate_api(session_id);
        }
        self.set_state(key, TunnelState::Stopped);
    }

    /// Closing sessions whose flag was acknowledged are finished; once nothing is pending
    /// (or the deadline passed) the tunnel has stopped.
    pub(super) fn check_finished(&mut self, now: Instant) {
        let Some(stopping) = &self.stopping else {
            return;
        };
        if self.finished {
            return;
        }
        let (deadline, flag_deadline) = (stopping.deadline, stopping.flag_deadline);
        for key in self.keys() {
            let acked = self.session(key).is_some_and(|s| {
                matches!(s.link, Link::Closing { .. })
                    && (now >= flag_deadline
                        || s.data.as_ref().is_some_and(|d| d.channel.unacked() == 0))
            });
            if acked {
                self.finish_closing(key);
            }
        }
        let closing = self
            .sessions
            .iter()
            .any(|s| matches!(s.link, Link::Closing { .. }));
        let starting = self.ops.values().any(|op| matches!(op.kind, OpKind::Start));
        if closing || starting || !self.terminating.is_empty() {
            if now < deadline {
                return;
            }
            let left: Vec<&str> = self.terminating.values().map(String::as_str).collect();
            tracing::warn!(sessions = ?left, starts_in_flight = starting,
                "shutdown deadline passed; these sessions may remain until the service times \
                 them out");
        }
        self.finished = true;
        self.status_dirty = true;
        self.emit(None, EventKind::Stopped);
    }
}
