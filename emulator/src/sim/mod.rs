//! A sans-IO, simulated-time model of the service and its agents, for testing an SSM client
//! deterministically: no sockets, no clock; every random choice from one seeded RNG.
//!
//! [`World`] plays what the real-time emulator plays — the SSM API, the MGS relay and one
//! agent per session — with the same documented choices (frames for an absent peer are
//! dropped, pause/start publication, single-use tokens, stale cells refused with 403,
//! `channel_closed` then `1000 Bye` on termination) and the same agent reliability model. A
//! client under test calls the API methods, opens sockets with [`World::connect`], writes with
//! [`World::client_send`], and takes what arrives with [`World::poll_client`]; it calls
//! [`World::handle_timeout`] at [`World::poll_timeout`] or whenever its own clock advances.
//! Faults are injected by method calls at any simulated moment.
//!
//! Latency: a client frame reaches the service `latency` after it is sent, and a frame from
//! the service reaches the client `latency` after the service relays it. The agent sits at
//! the service. Everything at one instant happens in the order it was scheduled.

mod agent;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use ssm_tether_protocol::message::FLAGS_CONTROL;
use ssm_tether_protocol::payload::ChannelClosed;
use ssm_tether_protocol::{ClientMessage, MessageType, PayloadType};

use agent::Agent;
pub use agent::AgentEnd;

/// How the simulated service and agents behave.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// One-way delay between the client and the service.
    pub latency: Duration,
    /// The agents' `AgentVersion`.
    pub agent_version: String,
    /// Pause after each agent message (1 ms like the real agent; zero for full speed).
    pub pacing: Duration,
    /// How long an agent takes to rejoin after losing its socket.
    pub agent_rejoin: Duration,
    /// Terminate sessions this long after StartSession.
    pub max_session_duration: Option<Duration>,
    /// Probability of dropping a relayed data frame (either direction).
    pub drop_rate: f64,
    /// Probability of relaying a frame twice.
    pub dup_rate: f64,
    /// A client-side recycle rotates the cell: the old StreamUrl is refused with 403.
    pub stale_cell: bool,
    /// Agents refuse their destination (ConnectToPortError + FIN for every stream).
    pub refuse_destination: bool,
    /// Sessions are `AWS-StartSSHSession`-like: a Port document without `type`, which both
    /// ends forward in basic mode over one stream (the client's stdin/stdout).
    pub stream: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(1),
            agent_version: crate::agent::DEFAULT_AGENT_VERSION.to_owned(),
            pacing: Duration::ZERO,
            agent_rejoin: Duration::from_millis(150),
            max_session_duration: None,
            drop_rate: 0.0,
            dup_rate: 0.0,
            stale_cell: false,
            refuse_destination: false,
            stream: false,
        }
    }
}

/// What StartSession / ResumeSession grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimGrant {
    /// The session id.
    pub session_id: String,
    /// The token for the OpenDataChannel frame.
    pub token: String,
    /// The StreamUrl.
    pub stream_url: String,
}

/// A failed simulated API call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimApiError {
    /// No such session (`DoesNotExistException`).
    DoesNotExist,
    /// Throttled (`ThrottlingException`).
    Throttling,
    /// Access denied (`AccessDeniedException`).
    AccessDenied,
    /// The target has no agent (`TargetNotConnected`).
    TargetNotConnected,
}

/// Why a simulated WebSocket could not be opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimConnectError {
    /// The upgrade was refused with this HTTP status (403: stale cell, terminated session).
    Refused(u16),
    /// The token was not the session's current one (socket closed with 1008).
    BadToken,
}

/// A client socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketHandle(pub u64);

/// What a client writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientFrame {
    /// A binary frame (one ClientMessage).
    Binary(Bytes),
    /// A ping.
    Ping,
}

/// What arrives at a client socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToClient {
    /// A binary frame.
    Frame(Bytes),
    /// The answer to a ping.
    Pong,
    /// A close frame; the socket is gone.
    Closed {
        /// Its code.
        code: u16,
        /// Its reason.
        reason: String,
    },
    /// The connection was reset without a close frame; the socket is gone.
    Reset,
}

/// One session as the service sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// The id.
    pub id: String,
    /// Whether it is still active.
    pub active: bool,
    /// Why it ended.
    pub ended: Option<String>,
    /// Whether a client socket is open.
    pub client_connected: bool,
    /// Messages the agent sent and has not had acknowledged.
    pub agent_unacked: usize,
    /// Bytes of Output payload the agent processed, in order.
    pub agent_received: u64,
}

/// Counters of what happened, for assertions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// StartSession calls that created a session.
    pub started: u64,
    /// ResumeSession calls answered with a token.
    pub resumed: u64,
    /// ResumeSession calls failed by a fault.
    pub resume_failures: u64,
    /// Sessions terminated (API, console, max duration, agent).
    pub terminated: u64,
    /// Recycles (client side).
    pub recycles: u64,
    /// Upgrades refused (stale cell, ended session).
    pub refused_upgrades: u64,
    /// Frames dropped by the loss fault.
    pub dropped: u64,
    /// Frames dropped because their recipient was away.
    pub undeliverable: u64,
}

#[derive(Debug)]
struct Session {
    id: String,
    started: Instant,
    ended: Option<String>,
    cell: u64,
    token: Option<String>,
    client: Option<ClientSocket>,
    agent: Agent,
    agent_up: bool,
    agent_rejoin_at: Option<Instant>,
    agent_black_holed: bool,
}

#[derive(Debug, Clone, Copy)]
struct ClientSocket {
    handle: SocketHandle,
    black_holed: bool,
}

#[derive(Debug)]
enum Due {
    /// A client frame reaches the service.
    FromClient(SocketHandle, ClientFrame),
    /// Something reaches a client socket.
    ToClient(SocketHandle, ToClient),
    /// A recycle of one side of a session.
    Recycle(String, Side),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Agent,
}

/// The simulated service; see the module docs.
#[derive(Debug)]
pub struct World {
    config: SimConfig,
    rng: SmallRng,
    now: Instant,
    sessions: BTreeMap<String, Session>,
    sockets: BTreeMap<SocketHandle, String>,
    next_socket: u64,
    next_session: u64,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    due: BTreeMap<u64, Due>,
    next_due: u64,
    outbox: Vec<(SocketHandle, ToClient)>,
    resume_failures: Vec<SimApiError>,
    stats: SimStats,
}

impl World {
    /// An empty service at `now`.
    pub fn new(config: SimConfig, seed: u64, now: Instant) -> Self {
        Self {
            config,
            rng: SmallRng::seed_from_u64(seed),
            now,
            sessions: BTreeMap::new(),
            sockets: BTreeMap::new(),
            next_socket: 0,
            next_session: 0,
            queue: BinaryHeap::new(),
            due: BTreeMap::new(),
            next_due: 0,
            outbox: Vec::new(),
            resume_failures: Vec::new(),
            stats: SimStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// Every session, in id order.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.sessions
            .values()
            .map(|s| SessionInfo {
                id: s.id.clone(),
                active: s.ended.is_none(),
                ended: s.ended.clone(),
                client_connected: s.client.is_some(),
                agent_unacked: s.agent.unacked(),
                agent_received: s.agent.received(),
            })
            .collect()
    }

    /// Changes the loss rates from now on.
    pub fn set_rates(&mut self, drop_rate: f64, dup_rate: f64) {
        self.config.drop_rate = drop_rate;
        self.config.dup_rate = dup_rate;
    }

    // ----- the API ------------------------------------------------------------------------

    /// StartSession for a port-forwarding document to `port` on the target.
    ///
    /// # Errors
    /// [`SimApiError::TargetNotConnected`] for a target that is not `i-…`/`mi-…`.
    pub fn start_session(
        &mut self,
        now: Instant,
        target: &str,
        port: u16,
    ) -> Result<SimGrant, SimApiError> {
        self.advance(now);
        if !(target.starts_with("i-") || target.starts_with("mi-")) {
            return Err(SimApiError::TargetNotConnected);
        }
        self.next_session += 1;
        let id = format!(
            "sim-{:04}-{:08x}",
            self.next_session,
            self.rng.random::<u32>()
        );
        let mut properties: BTreeMap<String, Value> =
            [("portNumber".to_owned(), Value::String(port.to_string()))]
                .into_iter()
                .collect();
        if !self.config.stream {
            properties.insert(
                "type".to_owned(),
                Value::String("LocalPortForwarding".to_owned()),
            );
            properties.insert("localPortNumber".to_owned(), Value::String("0".to_owned()));
        }
        let agent = Agent::new(
            &self.config.agent_version,
            properties,
            self.config.pacing,
            self.config.refuse_destination,
            self.rng.random(),
            now,
        );
        let token = self.token();
        let cell = self.rng.random();
        self.sessions.insert(
            id.clone(),
            Session {
                id: id.clone(),
                started: now,
                ended: None,
                cell,
                token: Some(token.clone()),
                client: None,
                agent,
                agent_up: false,
                agent_rejoin_at: Some(now + self.config.agent_rejoin),
                agent_black_holed: false,
            },
        );
        self.stats.started += 1;
        Ok(SimGrant {
            stream_url: stream_url(&id, cell),
            session_id: id,
            token,
        })
    }

    /// ResumeSession: a fresh token and the current StreamUrl; `Ok(None)` once the session
    /// has ended.
    ///
    /// # Errors
    /// An injected failure ([`World::fail_resumes`]), or [`SimApiError::DoesNotExist`].
    pub fn resume_session(
        &mut self,
        now: Instant,
        session_id: &str,
    ) -> Result<Option<SimGrant>, SimApiError> {
        self.advance(now);
        if !self.resume_failures.is_empty() {
            self.stats.resume_failures += 1;
            return Err(self.resume_failures.remove(0));
        }
        let token = self.token();
        let session = self
            .sessions
            .get_mut(session_id)
            .ok_or(SimApiError::DoesNotExist)?;
        if session.ended.is_some() {
            return Ok(None);
        }
        session.token = Some(token.clone());
        self.stats.resumed += 1;
        Ok(Some(SimGrant {
            session_id: session.id.clone(),
            token,
            stream_url: stream_url(&session.id, session.cell),
        }))
    }

    /// TerminateSession.
    pub fn terminate_session(&mut self, now: Instant, session_id: &str) {
        self.advance(now);
        self.end(session_id, "terminated by the TerminateSession API");
    }

    /// Opens a client socket for `url` with `token` (the OpenDataChannel frame).
    ///
    /// # Errors
    /// The session is over or the cell stale (403), or the token is not current.
    pub fn connect(
        &mut self,
        now: Instant,
        url: &str,
        token: &str,
    ) -> Result<SocketHandle, SimConnectError> {
        self.advance(now);
        let Some((id, cell)) = parse_url(url) else {
            return Err(SimConnectError::Refused(404));
        };
        let handle = SocketHandle(self.next_socket + 1);
        let Some(session) = self.sessions.get_mut(&id) else {
            return Err(SimConnectError::Refused(404));
        };
        if session.ended.is_some() || session.cell != cell {
            self.stats.refused_upgrades += 1;
            return Err(SimConnectError::Refused(403));
        }
        if session.token.as_deref() != Some(token) {
            return Err(SimConnectError::BadToken);
        }
        self.next_socket += 1;
        // Single use: the next socket needs the next ResumeSession.
        session.token = None;
        let old = session.client.replace(ClientSocket {
            handle,
            black_holed: false,
        });
        let agent_up = session.agent_up;
        if let Some(old) = old {
            self.sockets.remove(&old.handle);
        }
        self.sockets.insert(handle, id.clone());
        let session = self.sessions.get_mut(&id).expect("just looked up");
        if agent_up {
            // start_publication to the agent.
            session.agent.set_paused(false);
        } else {
            // The peer is away: the new socket is paused at once.
            let frame = self.service_frame(&id, MessageType::PausePublication, "");
            self.schedule_to_client(handle, ToClient::Frame(frame));
        }
        Ok(handle)
    }

    /// A client writes on its socket.
    pub fn client_send(&mut self, now: Instant, socket: SocketHandle, frame: ClientFrame) {
        self.advance(now);
        let at = now + self.config.latency;
        self.schedule(at, Due::FromClient(socket, frame));
    }

    /// A client closes its socket.
    pub fn client_close(&mut self, now: Instant, socket: SocketHandle) {
        self.advance(now);
        self.drop_client(socket);
    }

    /// What has arrived at client sockets by now.
    pub fn poll_client(&mut self) -> Vec<(SocketHandle, ToClient)> {
        std::mem::take(&mut self.outbox)
    }

    /// When [`World::handle_timeout`] has something to do next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let queued = self.queue.peek().map(|Reverse((at, _))| *at);
        let agents = self
            .sessions
            .values()
            .filter(|s| s.ended.is_none())
            .flat_map(|s| {
                [
                    s.agent_rejoin_at,
                    s.agent_up.then(|| s.agent.next_wakeup()),
                    self.config.max_session_duration.map(|max| s.started + max),
                ]
            });
        queued.into_iter().chain(agents.flatten()).min()
    }

    /// Runs everything due by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
    }

    // ----- faults -------------------------------------------------------------------------

    /// The service's planned recycle: `close 1000 Bye` on the client's socket and the agent's,
    /// the two `skew` apart in random order; the cell rotates with `stale_cell`.
    pub fn recycle(&mut self, now: Instant, session_id: &str, skew: Duration) {
        self.advance(now);
        let skew = Duration::from_nanos(self.rng.random_range(0..=skew.as_nanos() as u64));
        let (first, second) = if self.rng.random_bool(0.5) {
            (Side::Client, Side::Agent)
        } else {
            (Side::Agent, Side::Client)
        };
        self.schedule(now, Due::Recycle(session_id.to_owned(), first));
        self.schedule(now + skew, Due::Recycle(session_id.to_owned(), second));
    }

    /// Drops the client's socket without a close frame.
    pub fn reset_client(&mut self, now: Instant, session_id: &str) {
        self.advance(now);
        if let Some(handle) = self.client_of(session_id) {
            self.drop_client(handle);
            let at = now + self.config.latency;
            self.schedule(at, Due::ToClient(handle, ToClient::Reset));
        }
    }

    /// The client's current socket (and only it) stops carrying anything either way, pongs
    /// included, or carries again.
    pub fn black_hole(&mut self, now: Instant, session_id: &str, on: bool) {
        self.advance(now);
        if let Some(client) = self
            .sessions
            .get_mut(session_id)
            .and_then(|s| s.client.as_mut())
        {
            client.black_holed = on;
        }
    }

    /// The service relays `frame` to the session's current client socket as if it came from
    /// the agent: a broken or hostile peer (an oversized frame, far-future sequence numbers).
    pub fn inject_to_client(&mut self, now: Instant, session_id: &str, frame: Bytes) {
        self.advance(now);
        if let Some(handle) = self.client_of(session_id) {
            self.schedule_to_client(handle, ToClient::Frame(frame));
        }
    }

    /// The next ResumeSession calls fail with these errors, in order.
    pub fn fail_resumes(&mut self, errors: &[SimApiError]) {
        self.resume_failures.extend_from_slice(errors);
    }

    /// Service-side termination (the console): `channel_closed`, then `1000 Bye`.
    pub fn terminate(&mut self, now: Instant, session_id: &str) {
        self.advance(now);
        self.end(session_id, "terminated by the service");
    }

    /// The client socket of a session, if it has one.
    pub fn client_of(&self, session_id: &str) -> Option<SocketHandle> {
        self.sessions
            .get(session_id)
            .and_then(|s| s.client.map(|c| c.handle))
    }

    /// Active sessions' ids.
    pub fn active(&self) -> Vec<String> {
        self.sessions
            .values()
            .filter(|s| s.ended.is_none())
            .map(|s| s.id.clone())
            .collect()
    }

    // ----- internals ----------------------------------------------------------------------

    fn token(&mut self) -> String {
        format!("token-{:016x}", self.rng.random::<u64>())
    }

    fn schedule(&mut self, at: Instant, due: Due) {
        let n = self.next_due;
        self.next_due += 1;
        self.queue.push(Reverse((at, n)));
        self.due.insert(n, due);
    }

    fn schedule_to_client(&mut self, socket: SocketHandle, event: ToClient) {
        let at = self.now + self.config.latency;
        self.schedule(at, Due::ToClient(socket, event));
    }

    /// Moves time to `now`, running everything that falls due on the way, in order.
    fn advance(&mut self, now: Instant) {
        loop {
            let next_queued = self.queue.peek().map(|Reverse((at, _))| *at);
            let Some(next) = [next_queued, self.next_agent_event()]
                .into_iter()
                .flatten()
                .min()
            else {
                break;
            };
            if next > now {
                break;
            }
            self.now = self.now.max(next);
            if next_queued == Some(next) {
                if let Some(Reverse((_, n))) = self.queue.pop()
                    && let Some(due) = self.due.remove(&n)
                {
                    self.run(due);
                }
            } else {
                self.run_agents();
            }
        }
        self.now = self.now.max(now);
        self.run_agents();
    }

    fn next_agent_event(&self) -> Option<Instant> {
        self.sessions
            .values()
            .filter(|s| s.ended.is_none())
            .flat_map(|s| {
                [
                    s.agent_rejoin_at,
                    s.agent_up.then(|| s.agent.next_wakeup()),
                    self.config.max_session_duration.map(|max| s.started + max),
                ]
            })
            .flatten()
            .min()
    }

    /// Agents rejoin, pump their output and resends; limits are enforced.
    fn run_agents(&mut self) {
        let now = self.now;
        let ids: Vec<String> = self.active();
        for id in ids {
            let Some(session) = self.sessions.get_mut(&id) else {
                continue;
            };
            if let Some(max) = self.config.max_session_duration
                && session.started + max <= now
            {
                self.end(&id, "maximum session duration");
                continue;
            }
            if session.agent_rejoin_at.is_some_and(|t| t <= now) {
                session.agent_rejoin_at = None;
                session.agent_up = true;
                session.agent.on_connected(now);
                if let Some(client) = session.client {
                    self.send_control(client.handle, &id, MessageType::StartPublication);
                } else {
                    let session = self.sessions.get_mut(&id).expect("active");
                    session.agent.set_paused(true);
                }
            }
            let Some(session) = self.sessions.get_mut(&id) else {
                continue;
            };
            if session.agent_up {
                session.agent.pump(now);
            }
            self.relay_from_agent(&id);
            if let Some(end) = self
                .sessions
                .get(&id)
                .and_then(|s| s.agent.ended().cloned())
            {
                self.end(&id, &format!("the agent ended the session: {end:?}"));
            }
        }
    }

    fn run(&mut self, due: Due) {
        match due {
            Due::FromClient(handle, frame) => self.client_frame(handle, frame),
            Due::ToClient(handle, event) => {
                let closing = matches!(event, ToClient::Closed { .. } | ToClient::Reset);
                // A socket gone at the service still receives what was on the wire to it.
                self.outbox.push((handle, event));
                if closing {
                    self.sockets.remove(&handle);
                }
            }
            Due::Recycle(id, side) => self.recycle_side(&id, side),
        }
    }

    fn client_frame(&mut self, handle: SocketHandle, frame: ClientFrame) {
        let Some(id) = self.sockets.get(&handle).cloned() else {
            return;
        };
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        let current = session.client.filter(|c| c.handle == handle);
        let Some(client) = current else {
            return;
        };
        if client.black_holed || session.ended.is_some() {
            return;
        }
        match frame {
            ClientFrame::Ping => self.schedule_to_client(handle, ToClient::Pong),
            ClientFrame::Binary(bytes) => {
                if !self
                    .sessions
                    .get(&id)
                    .is_some_and(|s| s.agent_up && !s.agent_black_holed)
                {
                    self.stats.undeliverable += 1;
                    return;
                }
                for copy in self.faulted(bytes) {
                    let now = self.now;
                    if let Some(session) = self.sessions.get_mut(&id) {
                        session.agent.on_frame(copy, now);
                    }
                }
                self.relay_from_agent(&id);
            }
        }
    }

    /// What the agent wrote goes to the client, if one is there to receive it.
    fn relay_from_agent(&mut self, id: &str) {
        let Some(session) = self.sessions.get_mut(id) else {
            return;
        };
        let frames = session.agent.take_wire();
        if frames.is_empty() || !session.agent_up || session.agent_black_holed {
            return;
        }
        let client = session.client.filter(|c| !c.black_holed);
        for frame in frames {
            match client {
                Some(client) => {
                    for copy in self.faulted(frame) {
                        self.schedule_to_client(client.handle, ToClient::Frame(copy));
                    }
                }
                None => self.stats.undeliverable += 1,
            }
        }
    }

    /// A frame after the loss and duplication faults: none, one or two copies.
    fn faulted(&mut self, frame: Bytes) -> Vec<Bytes> {
        if self.config.drop_rate > 0.0 && self.rng.random_bool(self.config.drop_rate.min(1.0)) {
            self.stats.dropped += 1;
            return Vec::new();
        }
        if self.config.dup_rate > 0.0 && self.rng.random_bool(self.config.dup_rate.min(1.0)) {
            return vec![frame.clone(), frame];
        }
        vec![frame]
    }

    fn recycle_side(&mut self, id: &str, side: Side) {
        let stale = self.config.stale_cell;
        let rejoin = self.config.agent_rejoin;
        let now = self.now;
        let new_cell = self.rng.random();
        let Some(session) = self.sessions.get_mut(id) else {
            return;
        };
        if session.ended.is_some() {
            return;
        }
        match side {
            Side::Client => {
                self.stats.recycles += 1;
                if stale {
                    session.cell = new_cell;
                }
                if let Some(client) = session.client.take() {
                    // The close frame travels like any frame; the service forgets the socket.
                    if !client.black_holed {
                        let at = now + self.config.latency;
                        self.schedule(
                            at,
                            Due::ToClient(
                                client.handle,
                                ToClient::Closed {
                                    code: 1000,
                                    reason: "Bye".into(),
                                },
                            ),
                        );
                    }
                    self.client_gone(id);
                }
            }
            Side::Agent => {
                if session.agent_up {
                    session.agent_up = false;
                    session.agent_rejoin_at = Some(now + rejoin);
                    if let Some(client) = session.client {
                        self.send_control(client.handle, id, MessageType::PausePublication);
                    }
                }
            }
        }
    }

    fn drop_client(&mut self, handle: SocketHandle) {
        let Some(id) = self.sockets.remove(&handle) else {
            return;
        };
        let current = self
            .sessions
            .get(&id)
            .and_then(|s| s.client)
            .is_some_and(|c| c.handle == handle);
        if current {
            if let Some(session) = self.sessions.get_mut(&id) {
                session.client = None;
            }
            self.client_gone(&id);
        }
    }

    /// The client went away: the agent is told to pause.
    fn client_gone(&mut self, id: &str) {
        let Some(session) = self.sessions.get_mut(id) else {
            return;
        };
        if session.agent_up {
            // pause_publication to the agent.
            session.agent.set_paused(true);
        }
    }

    fn send_control(&mut self, handle: SocketHandle, id: &str, kind: MessageType) {
        let frame = self.service_frame(id, kind, "");
        if self
            .sessions
            .get(id)
            .and_then(|s| s.client)
            .is_some_and(|c| c.handle == handle && !c.black_holed)
        {
            self.schedule_to_client(handle, ToClient::Frame(frame));
        }
    }

    /// Ends a session: `channel_closed` and `1000 Bye` to the client.
    fn end(&mut self, id: &str, why: &str) {
        let Some(session) = self.sessions.get_mut(id) else {
            return;
        };
        if session.ended.is_some() {
            return;
        }
        session.ended = Some(why.to_owned());
        session.token = None;
        self.stats.terminated += 1;
        let client = session.client.take();
        if let Some(client) = client
            && !client.black_holed
        {
            let output = if why == "maximum session duration" {
                "Your session has reached its maximum duration and has been terminated.".to_owned()
            } else {
                format!("Session {id} has been terminated.")
            };
            let frame = self.service_frame(id, MessageType::ChannelClosed, &output);
            self.schedule_to_client(client.handle, ToClient::Frame(frame));
            self.schedule_to_client(
                client.handle,
                ToClient::Closed {
                    code: 1000,
                    reason: "Bye".into(),
                },
            );
        }
    }

    fn service_frame(&mut self, id: &str, message_type: MessageType, output: &str) -> Bytes {
        let message_id = uuid::Builder::from_random_bytes(self.rng.random()).into_uuid();
        let payload = ChannelClosed {
            message_id: message_id.hyphenated().to_string(),
            created_date: "1700000000000".to_owned(),
            destination_id: "i-sim".to_owned(),
            session_id: id.to_owned(),
            message_type: message_type.as_str().to_owned(),
            schema_version: 1,
            output: output.to_owned(),
        }
        .to_payload();
        ClientMessage {
            message_type,
            schema_version: 1,
            created_date: 1_700_000_000_000,
            sequence_number: 0,
            flags: FLAGS_CONTROL,
            message_id,
            payload_type: PayloadType::UNSPECIFIED,
            payload,
        }
        .encode()
    }
}

fn stream_url(id: &str, cell: u64) -> String {
    format!("ws://sim.invalid/v1/data-channel/{id}?role=publish_subscribe&cell-number={cell:016x}")
}

fn parse_url(url: &str) -> Option<(String, u64)> {
    let rest = url.strip_prefix("ws://sim.invalid/v1/data-channel/")?;
    let (id, query) = rest.split_once('?')?;
    let cell = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("cell-number="))?;
    Some((id.to_owned(), u64::from_str_radix(cell, 16).ok()?))
}
