//! Local connection bookkeeping: which session carries each connection, the connections
//! still waiting for one, and what each has queued towards its application.
//!
//! smux v1 has no per-stream window, so a local application that stops reading cannot be
//! slowed down at the agent without slowing every other stream of the session. Isolation is
//! therefore done here: every byte handed to a local writer is counted until the writer
//! reports it written, and a connection is closed — alone — when its backlog exceeds its
//! budget, when all backlogs together exceed the tunnel's cap (the largest goes first), or
//! when its application has accepted nothing for the stall deadline while data waits.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::{ConnId, SessionKey};
use crate::policy::SlowReaderSettings;

/// One local connection.
#[derive(Debug)]
pub(super) struct Conn {
    /// The session carrying it, once bound.
    pub(super) session: Option<SessionKey>,
    /// Its smux stream (mux mode).
    pub(super) stream: Option<u32>,
    /// Bytes read from the application.
    pub(super) bytes_up: u64,
    /// Bytes queued towards the application.
    pub(super) bytes_down: u64,
    /// Bytes queued towards the application and not yet written.
    backlog: u64,
    /// Since when the application has accepted nothing while `backlog > 0`.
    stalled_since: Option<Instant>,
}

/// Every local connection of a tunnel; see the module docs.
#[derive(Debug)]
pub(super) struct Conns {
    map: HashMap<ConnId, Conn>,
    waiting: VecDeque<ConnId>,
    total_backlog: u64,
    /// Stall deadlines, at most one entry per backlogged connection: an entry whose
    /// connection made progress since is pushed again with the new deadline when it comes up.
    stalls: BinaryHeap<Reverse<(Instant, ConnId)>>,
    next: u64,
    limits: SlowReaderSettings,
}

impl Conns {
    pub(super) fn new(limits: SlowReaderSettings) -> Self {
        Self {
            map: HashMap::new(),
            waiting: VecDeque::new(),
            total_backlog: 0,
            stalls: BinaryHeap::new(),
            next: 0,
            limits,
        }
    }

    /// A new connection, waiting for a session.
    pub(super) fn accept(&mut self) -> ConnId {
        let id = ConnId(self.next);
        self.next += 1;
        self.map.insert(
            id,
            Conn {
                session: None,
                stream: None,
                bytes_up: 0,
                bytes_down: 0,
                backlog: 0,
                stalled_since: None,
            },
        );
        self.waiting.push_back(id);
        id
    }

    pub(super) fn get(&self, id: ConnId) -> Option<&Conn> {
        self.map.get(&id)
    }

    pub(super) fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.map.get_mut(&id)
    }

    /// Every connection, bound or waiting.
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Connections waiting for a session.
    pub(super) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// The longest-waiting connection.
    pub(super) fn first_waiting(&self) -> Option<ConnId> {
        self.waiting.front().copied()
    }

    /// Binds the longest-waiting connection to `session`.
    pub(super) fn bind_first(
        &mut self,
        session: SessionKey,
        stream: Option<u32>,
    ) -> Option<ConnId> {
        let id = self.waiting.pop_front()?;
        if let Some(conn) = self.map.get_mut(&id) {
            conn.session = Some(session);
            conn.stream = stream;
        }
        Some(id)
    }

    /// Connections carried by `session`.
    pub(super) fn on_session(&self, session: SessionKey) -> Vec<ConnId> {
        let mut ids: Vec<ConnId> = self
            .map
            .iter()
            .filter(|(_, c)| c.session == Some(session))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// How many connections `session` carries, and their backlog.
    pub(super) fn load_of(&self, session: SessionKey) -> (usize, u64) {
        self.map
            .values()
            .filter(|c| c.session == Some(session))
            .fold((0, 0), |(n, bytes), c| (n + 1, bytes + c.backlog))
    }

    /// Every connection id, in order.
    pub(super) fn ids(&self) -> Vec<ConnId> {
        let mut ids: Vec<ConnId> = self.map.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Forgets a connection.
    pub(super) fn remove(&mut self, id: ConnId) -> Option<Conn> {
        let conn = self.map.remove(&id)?;
        self.total_backlog -= conn.backlog;
        if conn.session.is_none() {
            self.waiting.retain(|w| *w != id);
        }
        Some(conn)
    }

    /// Counts `len` bytes about to be queued towards the application; `false` (and nothing
    /// counted) when that would exceed the connection's budget.
    pub(super) fn queue(&mut self, id: ConnId, len: usize, now: Instant) -> bool {
        let Some(conn) = self.map.get_mut(&id) else {
            return false;
        };
        let len = len as u64;
        if conn.backlog + len > self.limits.buffer {
            return false;
        }
        if conn.backlog == 0 {
            conn.stalled_since = Some(now);
            self.stalls.push(Reverse((now + self.limits.timeout, id)));
        }
        conn.backlog += len;
        conn.bytes_down += len;
        self.total_backlog += len;
        true
    }

    /// The connection with the largest backlog, when all backlogs together exceed the
    /// tunnel's cap.
    pub(super) fn over_tunnel_cap(&self) -> Option<ConnId> {
        if self.total_backlog <= self.limits.tunnel_buffer {
            return None;
        }
        self.map
            .iter()
            .max_by_key(|(id, c)| (c.backlog, Reverse(**id)))
            .map(|(id, _)| *id)
    }

    /// The application accepted `written` bytes.
    pub(super) fn written(&mut self, id: ConnId, written: usize, now: Instant) {
        let Some(conn) = self.map.get_mut(&id) else {
            return;
        };
        let written = (written as u64).min(conn.backlog);
        conn.backlog -= written;
        self.total_backlog -= written;
        conn.stalled_since = (conn.backlog > 0).then_some(now);
    }

    /// When the next stall deadline may expire.
    pub(super) fn next_stall(&self) -> Option<Instant> {
        self.stalls.peek().map(|Reverse((at, _))| *at)
    }

    /// Connections whose application has accepted nothing for the stall deadline.
    pub(super) fn stalled(&mut self, now: Instant) -> Vec<ConnId> {
        let timeout = self.limits.timeout;
        let mut expired = Vec::new();
        while let Some(Reverse((at, id))) = self.stalls.peek().copied() {
            if at > now {
                break;
            }
            self.stalls.pop();
            let Some(since) = self.map.get(&id).and_then(|c| c.stalled_since) else {
                continue;
            };
            if since + timeout <= now {
                expired.push(id);
            } else {
                // Progress since this entry was pushed: wait for the new deadline.
                self.stalls.push(Reverse((since + timeout, id)));
            }
        }
        expired
    }

    /// The stall deadline, for messages.
    pub(super) fn stall_timeout(&self) -> Duration {
        self.limits.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SlowReaderSettings {
        SlowReaderSettings {
            buffer: 100,
            tunnel_buffer: 150,
            timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_connection_over_its_budget_is_refused_and_others_are_not() {
        let mut conns = Conns::new(limits());
        let now = Instant::now();
        let slow = conns.accept();
        let live = conns.accept();
        assert!(conns.queue(slow, 100, now));
        assert!(!conns.queue(slow, 1, now), "over its own budget");
        assert!(conns.queue(live, 40, now));
        assert_eq!(conns.over_tunnel_cap(), None);
        assert!(conns.queue(live, 20, now));
        assert_eq!(
            conns.over_tunnel_cap(),
            Some(slow),
            "the largest backlog goes first"
        );
        conns.remove(slow);
        assert_eq!(conns.over_tunnel_cap(), None);
    }

    #[test]
    fn stalls_count_from_the_last_progress() {
        let mut conns = Conns::new(limits());
        let t0 = Instant::now();
        let id = conns.accept();
        conns.queue(id, 10, t0);
        conns.written(id, 5, t0 + Duration::from_secs(8));
        assert!(conns.stalled(t0 + Duration::from_secs(10)).is_empty());
        assert_eq!(
            conns.stalled(t0 + Duration::from_secs(18)),
            vec![id],
            "ten seconds without progress"
        );
        let other = conns.accept();
        conns.queue(other, 10, t0);
        conns.written(other, 10, t0 + Duration::from_secs(1));
        assert!(
            conns.stalled(t0 + Duration::from_secs(60)).is_empty(),
            "nothing waits: no stall"
        );
    }
}
