//! Single-stream tunnels: the local end is one byte stream that exists before the first
//! session — stdin/stdout under an SSH `ProxyCommand` or `AWS-StartSSHSession` — rather than
//! a listener that accepts connections.
//!
//! Such a stream lives and dies with the session it is bound to. Resume keeps it exact
//! (sequence numbers, buffers and the agent's destination connection survive), but a new
//! session would dial the destination afresh: the bytes already exchanged could not be
//! continued, so a restart once the stream is bound is never made. Instead:
//!
//! * a decision to restart because the session is provably gone (or unusable) ends the
//!   tunnel with [`Stopped::GaveUp`] and a reason that says so;
//! * a decision to restart for any other cause (a socket that keeps failing, a resume that
//!   keeps failing) becomes one more resume after the same delay: while the service still
//!   knows the session, resuming is the only way to keep the stream, and a resume that finds
//!   the session gone ends it as above;
//! * the application closing its side (stdin EOF) ends the tunnel after what it sent is
//!   delivered (bounded by [`CoreConfig::stream_drain`]): [`Stopped::Ended`];
//! * the agent ending the session (`channel_closed`, e.g. the destination closed) delivers
//!   what arrived, then ends the tunnel the same way, without a TerminateSession of a
//!   session the service has already closed.
//!
//! Before the stream is bound (the first session's handshake has not completed) nothing has
//! been exchanged, so a failed first session may be replaced as in any tunnel.
//!
//! [`CoreConfig::stream_drain`]: super::CoreConfig::stream_drain

use std::time::Instant;

use super::session::Link;
use super::{Core, SessionKey, Stopped};
use crate::events::{Cause, CloseReason};
use crate::recovery::Decision;

impl Core {
    /// Whether `key` carries the tunnel's single stream.
    pub(super) fn carries_stream(&self, key: SessionKey) -> bool {
        self.config.single_stream && !self.conns.on_session(key).is_empty()
    }

    /// A decision for a session that carries the stream, made executable: a restart becomes
    /// giving up (the session is gone) or another resume (it may still be alive).
    pub(super) fn stream_decision(
        &self,
        key: SessionKey,
        cause: &Cause,
        decision: Decision,
    ) -> Decision {
        let Decision::Restart { after } = decision else {
            return decision;
        };
        if !self.carries_stream(key) {
            return decision;
        }
        let resumable = self
            .session(key)
            .is_some_and(|s| s.data.is_some() && s.id.is_some());
        let gone = matches!(
            cause,
            Cause::SessionGone(_)
                | Cause::MaxDurationReached
                | Cause::ProtocolError(_)
                | Cause::HandshakeFailed(_)
        );
        if resumable && !gone {
            return Decision::Resume { after };
        }
        let session = self
            .session(key)
            .and_then(|s| s.id.clone())
            .unwrap_or_else(|| "?".to_owned());
        Decision::GiveUp {
            reason: format!(
                "session {session} cannot go on ({cause}), and a stdin/stdout stream cannot \
                 move to a new session without breaking it"
            ),
        }
    }

    /// The service closed the data channel of a session that carries the stream: the agent
    /// ended it. What arrived is delivered, and the tunnel ends without a TerminateSession
    /// for a session the service has already closed.
    pub(super) fn stream_channel_closed(&mut self, key: SessionKey, detail: &str, now: Instant) {
        tracing::info!(%detail, "the agent ended the session");
        let Some(session) = self.session_mut(key) else {
            return;
        };
        session.id = None;
        if let Link::Online(online) | Link::Closing { online, .. } =
            std::mem::replace(&mut session.link, Link::Ended)
        {
            self.sockets.remove(&online.socket);
            self.actions.push_back(super::Action::CloseSocket {
                socket: online.socket,
                graceful: true,
            });
        }
        for conn in self.conns.on_session(key) {
            self.close_conn(conn, CloseReason::DestinationClosed, true, now);
        }
    }

    /// The stream's connection was closed with `reason` outside a shutdown: the tunnel ends
    /// with it, normally when its application or the agent ended it, with an error when the
    /// tunnel had to close it.
    pub(super) fn stream_closed(&mut self, reason: CloseReason, now: Instant) {
        match reason {
            CloseReason::ClientClosed => {
                // What the application sent before closing is still on its way: the flag
                // that ends the session follows it, and waiting for its acknowledgement
                // waits for all of it.
                let drain = self.config.stream_drain;
                self.shutdown_within(Stopped::Ended("the local stream closed".into()), drain, now);
            }
            CloseReason::DestinationClosed => {
                self.shutdown_because(Stopped::Ended("the agent ended the session".into()), now);
            }
            CloseReason::SlowReader => {
                let reason = format!(
                    "the local stream accepted nothing for {} (or more than {} bytes waited \
                     for it)",
                    humantime::format_duration(self.config.slow_reader.timeout),
                    self.config.slow_reader.buffer
                );
                self.give_up(None, reason, now);
            }
            other => {
                let reason = format!("the local stream was closed: {}", other.as_str());
                self.give_up(None, reason, now);
            }
        }
    }
}
