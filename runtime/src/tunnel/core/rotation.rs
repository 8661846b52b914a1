//! Make-before-break rotation ahead of the service's maximum session duration.
//!
//! `rotate_before` ahead of a primary's end a successor is started in the same stripe. Once
//! it forwards it becomes the primary (new connections go to it) and the predecessor drains:
//! its open connections keep working until it ends — at once when it has none left, else at
//! its maximum duration, when those still open are closed with reason `max-duration` and the
//! session is terminated. A primary the service ends at its limit with no successor in place
//! is recovered like any gone session, with cause `max-duration-reached`.

use std::time::{Duration, Instant};

use super::session::Link;
use super::{Action, Core, SessionKey};
use crate::events::{CloseReason, EventKind, SessionRole};

impl Core {
    /// Whether the session is at (or past) its maximum duration, as far as we can tell: our
    /// clock starts when StartSession is sent, before the service's, plus a small slack.
    pub(super) fn at_limit(&self, key: SessionKey, now: Instant) -> bool {
        let (Some(rotation), Some(session)) = (self.config.rotation, self.session(key)) else {
            return false;
        };
        let max = rotation.max_session_duration;
        let slack = (max / 100).max(Duration::from_secs(1));
        session.age(now) + slack >= max
    }

    /// The next rotation deadline: a successor to start, or a drained session to end.
    pub(super) fn rotation_timer(&self) -> Option<Instant> {
        let rotation = self.config.rotation?;
        if self.stopping.is_some() {
            return None;
        }
        self.sessions
            .iter()
            .filter_map(|s| match s.role {
                SessionRole::Primary if s.ever_started && !self.has_successor(s.stripe) => {
                    Some(s.started + rotation.max_session_duration - rotation.rotate_before)
                }
                SessionRole::Draining => Some(s.started + rotation.max_session_duration),
                SessionRole::Primary | SessionRole::Successor => None,
            })
            .min()
    }

    fn has_successor(&self, stripe: u8) -> bool {
        self.sessions
            .iter()
            .any(|s| s.stripe == stripe && s.role == SessionRole::Successor)
    }

    /// Starts successors and ends drained sessions whose time has come.
    pub(super) fn rotation_timers(&mut self, now: Instant) {
        let Some(rotation) = self.config.rotation else {
            return;
        };
        if self.stopping.is_some() {
            return;
        }
        let due: Vec<(SessionKey, u8, Duration)> = self
            .sessions
            .iter()
            .filter(|s| {
                s.role == SessionRole::Primary
                    && s.ever_started
                    && !self.has_successor(s.stripe)
                    && s.started + rotation.max_session_duration - rotation.rotate_before <= now
            })
            .map(|s| (s.key, s.stripe, s.age(now)))
            .collect();
        for (key, stripe, age) in due {
            let successor = self.add_session(stripe, SessionRole::Successor, now);
            self.start(successor, now);
            let serial = self.session(successor).map_or(0, |s| s.serial);
            tracing::info!(
                stripe,
                successor = serial,
                ?age,
                "rotating: starting a successor"
            );
            self.emit_for(
                key,
                EventKind::Rotating {
                    successor: serial,
                    age,
                },
            );
        }
        let ended: Vec<SessionKey> = self
            .sessions
            .iter()
            .filter(|s| {
                s.role == SessionRole::Draining && s.started + rotation.max_session_duration <= now
            })
            .map(|s| s.key)
            .collect();
        for key in ended {
            self.end_session(
                key,
                CloseReason::MaxDuration,
                "it reached its maximum session duration",
                now,
            );
        }
    }

    /// The successor forwards: it becomes its stripe's primary, the predecessor drains.
    pub(super) fn promote(&mut self, key: SessionKey, now: Instant) {
        let Some(successor) = self.session_mut(key) else {
            return;
        };
        successor.role = SessionRole::Primary;
        let stripe = successor.stripe;
        let predecessor = self
            .sessions
            .iter()
            .find(|s| s.stripe == stripe && s.role == SessionRole::Primary && s.key != key)
            .map(|s| s.key);
        let (predecessor_id, draining) = match predecessor {
            Some(old) => {
                if let Some(session) = self.session_mut(old) {
                    session.role = SessionRole::Draining;
                }
                let id = self.session(old).and_then(|s| s.id.clone());
                (id, self.conns.on_session(old).len())
            }
            None => (None, 0),
        };
        self.status.rotations += 1;
        self.status_dirty = true;
        tracing::info!(
            stripe,
            draining,
            "rotated: the successor takes new connections"
        );
        self.emit_for(
            key,
            EventKind::Rotated {
                predecessor: predecessor_id,
                draining,
            },
        );
        if let Some(old) = predecessor {
            self.maybe_end_drained(old, now);
        }
    }

    /// A draining session without connections has nothing left to do.
    pub(super) fn maybe_end_drained(&mut self, key: SessionKey, now: Instant) {
        let drained = self
            .session(key)
            .is_some_and(|s| s.role == SessionRole::Draining && !s.ending)
            && self.conns.on_session(key).is_empty();
        if drained {
            self.end_session(
                key,
                CloseReason::SessionEnded,
                "its last connection closed",
                now,
            );
        }
    }

    /// Ends a session that is not replaced: its connections close with `reason`, the service
    /// is told to terminate it, and it is forgotten.
    pub(super) fn end_session(
        &mut self,
        key: SessionKey,
        reason: CloseReason,
        why: &str,
        now: Instant,
    ) {
        let Some(index) = self.sessions.iter().position(|s| s.key == key) else {
            return;
        };
        tracing::info!(session = %self.sessions[index].reference(), why, "session ended");
        self.emit_for(
            key,
            EventKind::SessionEnded {
                reason: why.to_owned(),
            },
        );
        // Closing its connections comes back through `maybe_end_drained`: mark it first.
        self.sessions[index].ending = true;
        self.abandon(key, reason, now);
        if let Some(index) = self.sessions.iter().position(|s| s.key == key) {
            let session = self.sessions.remove(index);
            if let Link::Connecting { socket } = session.link {
                self.sockets.remove(&socket);
            }
        }
        self.actions
            .push_back(Action::SessionEnded { session: key });
        self.status_dirty = true;
    }
}
