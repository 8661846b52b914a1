//! Whole-tunnel tests in simulated time, like quinn's `Pair`: the sans-IO tunnel core
//! against the emulator's sans-IO service and agent (`ssm_emulator::sim`), with simulated
//! local applications that stream checksummed bytes through the tunnel to the agent's echo
//! destination. No socket, no clock, no task: every run is a pure function of its seed.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ssm_emulator::sim::{
    ClientFrame, SimApiError, SimConfig, SimConnectError, SocketHandle, ToClient, World,
};
use ssm_tether::aws::{ApiError, ApiErrorKind, SessionGrant};
use ssm_tether::events::{CloseReason, ConnectFailure, EventKind};
use ssm_tether::recovery::DecisionContext;
use ssm_tether::transport::connect::ConnectError;
use ssm_tether::tunnel::core::{
    Action, ConnId, Core, CoreConfig, CoreEvent, OpId, OutFrame, PolicyAnswer, SessionKey,
    SocketClose, SocketId,
};

/// The destination port every session forwards to (the sim's echo ignores it).
const PORT: u16 = 7;

/// A reconnect-policy plugin stand-in: answers every decision.
pub type Policy = Box<dyn FnMut(&DecisionContext) -> PolicyAnswer>;

/// What one simulated local application does.
#[derive(Clone, Copy, Debug)]
pub struct AppSpec {
    /// Bytes written per tick while its session's gate is open.
    pub chunk: usize,
    /// Time between writes.
    pub every: Duration,
    /// Whether it reads what the tunnel hands it (a slow reader never does).
    pub reads: bool,
    /// Stop writing after this many bytes (`u64::MAX`: until told to stop).
    pub total: u64,
    /// Close the connection once all `total` bytes came back.
    pub close_when_done: bool,
}

impl AppSpec {
    /// A steady echo stream of `bytes_per_second`.
    pub fn stream(bytes_per_second: u64) -> Self {
        Self {
            chunk: (bytes_per_second / 10).max(1) as usize,
            every: Duration::from_millis(100),
            reads: true,
            total: u64::MAX,
            close_when_done: false,
        }
    }

    /// A connection that sends `total` bytes at `bytes_per_second`, then closes once they
    /// are all back.
    pub fn short(bytes_per_second: u64, total: u64) -> Self {
        Self {
            total,
            close_when_done: true,
            ..Self::stream(bytes_per_second)
        }
    }
}

/// One simulated local application.
#[derive(Debug)]
pub struct App {
    pub spec: AppSpec,
    pub seed: u64,
    pub session: Option<SessionKey>,
    pub sent: u64,
    pub received: u64,
    pub corrupted: bool,
    pub closed: Option<CloseReason>,
    pub stopped: bool,
    next_write: Instant,
    /// When bytes last came back while some were outstanding, and the longest such gap.
    last_progress: Instant,
    pub worst_stall: Duration,
    pub worst_stall_at: Option<Instant>,
    pub opened: Instant,
    /// When the tunnel gave it a session.
    pub bound_at: Option<Instant>,
}

/// Length of the pattern table: prime, so that no power-of-two shift of a stream (a lost or
/// repeated smux frame, chunk or message) lines up with it again.
const TABLE_LEN: usize = 65_521;

fn table() -> &'static [u8] {
    static TABLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut table: Vec<u8> = (0..TABLE_LEN)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        // Two periods, so that a slice starting anywhere in the first reads on seamlessly:
        // position p of a stream is table[p mod TABLE_LEN], however the stream is split.
        table.extend_from_within(..);
        table
    })
}

/// The bytes connection `seed` sends at offsets `at..at + len`: a pseudo-random stream in
/// which any loss, duplication or reordering shows. Copied and compared as slices, so that
/// checking hours of simulated traffic stays cheap.
pub fn pattern(seed: u64, at: u64, len: usize) -> impl Iterator<Item = &'static [u8]> {
    let table = table();
    let mut start = ((seed.wrapping_mul(7919) + at) % TABLE_LEN as u64) as usize;
    let mut left = len;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let n = left.min(TABLE_LEN);
        let piece = &table[start..start + n];
        start = (start + n) % TABLE_LEN;
        left -= n;
        Some(piece)
    })
}

enum Pending {
    Started(OpId, Result<SessionGrant, ApiError>),
    Resumed(OpId, Result<Option<SessionGrant>, ApiError>),
    Terminated(OpId),
    Connected(SocketId, Result<SocketHandle, ConnectFailure>),
    Decided(OpId, PolicyAnswer),
}

/// The core, the simulated world, the applications and the clock.
pub struct Pair {
    pub now: Instant,
    pub start: Instant,
    pub core: Core,
    pub world: World,
    pub apps: BTreeMap<ConnId, App>,
    pub events: Vec<(Instant, CoreEvent)>,
    pub policy: Option<Policy>,
    /// Latency of every API call.
    pub api_latency: Duration,
    sockets: HashMap<SocketId, SocketHandle>,
    handles: HashMap<SocketHandle, SocketId>,
    gates: HashMap<SessionKey, bool>,
    pending: BinaryHeap<Reverse<(Instant, u64)>>,
    pending_items: HashMap<u64, Pending>,
    next_pending: u64,
    pub steps: u64,
    /// Applications that got everything back and close now.
    closing: Vec<ConnId>,
}

impl Pair {
    /// A tunnel with `config` against a world with `sim`, from `seed`.
    pub fn new(config: CoreConfig, sim: SimConfig, seed: u64) -> Self {
        let start = Instant::now();
        let core = Core::new(config, start, 1_700_000_000_000);
        let world = World::new(sim, seed, start);
        let mut pair = Self {
            now: start,
            start,
            core,
            world,
            apps: BTreeMap::new(),
            events: Vec::new(),
            policy: None,
            api_latency: Duration::from_millis(20),
            sockets: HashMap::new(),
            handles: HashMap::new(),
            gates: HashMap::new(),
            pending: BinaryHeap::new(),
            pending_items: HashMap::new(),
            next_pending: 0,
            steps: 0,
            closing: Vec::new(),
        };
        pair.perform();
        pair
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Opens a local connection running `spec`; returns its id.
    pub fn open(&mut self, spec: AppSpec) -> ConnId {
        let id = self.core.handle_accept("sim".into(), self.now);
        self.apps.insert(
            id,
            App {
                spec,
                seed: id.0 ^ 0x5eed,
                session: None,
                sent: 0,
                received: 0,
                corrupted: false,
                closed: None,
                stopped: false,
                next_write: self.now,
                last_progress: self.now,
                worst_stall: Duration::ZERO,
                worst_stall_at: None,
                opened: self.now,
                bound_at: None,
            },
        );
        self.perform();
        id
    }

    /// The application of `conn` closes its side now (EOF), whatever it has sent.
    pub fn close_app(&mut self, conn: ConnId) {
        let now = self.now;
        self.core.handle_local_closed(conn, now);
        self.perform();
    }

    /// Stops every application's writes (they keep reading).
    pub fn stop_writing(&mut self) {
        for app in self.apps.values_mut() {
            app.stopped = true;
        }
    }

    /// Runs until `at` (simulated).
    ///
    /// # Panics
    /// When a timer keeps firing without time moving on (a deadline that is reported but
    /// never handled would spin a real tunnel at full CPU).
    pub fn run_until(&mut self, at: Instant) {
        let mut spins = 0u32;
        loop {
            let next = [
                self.core.poll_timeout(),
                self.world.poll_timeout(),
                self.pending.peek().map(|Reverse((t, _))| *t),
                self.next_app_write(),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next.filter(|n| *n <= at) else {
                self.now = self.now.max(at);
                self.world.handle_timeout(self.now);
                self.deliver_world();
                self.core.handle_timeout(self.now);
                self.perform();
                return;
            };
            if next <= self.now {
                spins += 1;
                assert!(
                    spins < 100_000,
                    "a timer at {:?} never advances",
                    next - self.start
                );
            } else {
                spins = 0;
            }
            self.now = self.now.max(next);
            self.steps += 1;
            self.world.handle_timeout(self.now);
            self.deliver_world();
            self.answer_pending();
            self.write_apps();
            self.core.handle_timeout(self.now);
            self.perform();
        }
    }

    /// Runs for `duration` (simulated).
    pub fn run_for(&mut self, duration: Duration) {
        let at = self.now + duration;
        self.run_until(at);
    }

    /// Runs until `done` holds (checked after each step) or `limit` passes; whether it held.
    pub fn run_until_cond(&mut self, limit: Duration, mut done: impl FnMut(&Pair) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return true;
            }
            let step = (self.now + Duration::from_millis(10)).min(end);
            self.run_until(step);
        }
        done(self)
    }

    /// The active session ids of the world.
    pub fn active_sessions(&self) -> Vec<String> {
        self.world.active()
    }

    /// Events of a kind.
    pub fn count_events(&self, matches: impl Fn(&EventKind) -> bool) -> usize {
        self.events.iter().filter(|(_, e)| matches(&e.kind)).count()
    }

    fn next_app_write(&self) -> Option<Instant> {
        self.apps
            .values()
            .filter(|a| self.can_write(a))
            .map(|a| a.next_write.max(self.now))
            .min()
    }

    fn can_write(&self, app: &App) -> bool {
        app.closed.is_none()
            && !app.stopped
            && app.sent < app.spec.total
            && app
                .session
                .is_some_and(|s| self.gates.get(&s).copied().unwrap_or(false))
    }

    fn write_apps(&mut self) {
        let now = self.now;
        let ids: Vec<ConnId> = self.apps.keys().copied().collect();
        for id in ids {
            let writable = self
                .apps
                .get(&id)
                .is_some_and(|a| self.can_write(a) && a.next_write <= now);
            if !writable {
                continue;
            }
            let Some(app) = self.apps.get_mut(&id) else {
                continue;
            };
            let n = (app.spec.chunk as u64).min(app.spec.total - app.sent) as usize;
            let mut data = Vec::with_capacity(n);
            for piece in pattern(app.seed, app.sent, n) {
                data.extend_from_slice(piece);
            }
            if app.sent == app.received {
                // Nothing was outstanding: the stall clock starts now.
                app.last_progress = now;
            }
            app.sent += n as u64;
            app.next_write = now + app.spec.every;
            self.core.handle_local_data(id, Bytes::from(data), now);
            self.perform();
        }
    }

    fn deliver_world(&mut self) {
        for (handle, event) in self.world.poll_client() {
            let Some(socket) = self.handles.get(&handle).copied() else {
                continue;
            };
            let now = self.now;
            match event {
                ToClient::Frame(frame) => self.core.handle_frame(socket, frame, now),
                ToClient::Pong => self.core.handle_socket_activity(socket, now),
                ToClient::Closed { code, reason } => {
                    self.forget_socket(socket);
                    self.core.handle_socket_closed(
                        socket,
                        SocketClose::Closed { code, reason },
                        now,
                    );
                }
                ToClient::Reset => {
                    self.forget_socket(socket);
                    self.core.handle_socket_closed(
                        socket,
                        SocketClose::Failed("connection reset by peer".into()),
                        now,
                    );
                }
            }
            self.perform();
        }
    }

    fn forget_socket(&mut self, socket: SocketId) {
        if let Some(handle) = self.sockets.remove(&socket) {
            self.handles.remove(&handle);
        }
    }

    fn later(&mut self, after: Duration, item: Pending) {
        let n = self.next_pending;
        self.next_pending += 1;
        self.pending.push(Reverse((self.now + after, n)));
        self.pending_items.insert(n, item);
    }

    fn answer_pending(&mut self) {
        while let Some(Reverse((at, n))) = self.pending.peek().copied() {
            if at > self.now {
                break;
            }
            self.pending.pop();
            let Some(item) = self.pending_items.remove(&n) else {
                continue;
            };
            let now = self.now;
            match item {
                Pending::Started(op, result) => self.core.handle_started(op, result, now),
                Pending::Resumed(op, result) => self.core.handle_resumed(op, result, now),
                Pending::Terminated(op) => self.core.handle_terminated(op, Ok(()), now),
                Pending::Connected(socket, result) => {
                    let result = result.map(|handle| {
                        self.sockets.insert(socket, handle);
                        self.handles.insert(handle, socket);
                    });
                    self.core.handle_connected(socket, result, now);
                }
                Pending::Decided(op, answer) => self.core.handle_decision(op, answer, now),
            }
            self.perform();
        }
    }

    /// Performs every action of the core, and records its events.
    pub fn perform(&mut self) {
        loop {
            while let Some(action) = self.core.poll_action() {
                self.act(action);
            }
            let Some(conn) = self.closing.pop() else {
                break;
            };
            let now = self.now;
            self.core.handle_local_closed(conn, now);
        }
        let now = self.now;
        let _ = self.core.poll_status(now);
        while let Some(event) = self.core.poll_event() {
            if let EventKind::ConnectionClosed { id, reason, .. } = &event.kind
                && let Some(app) = self.apps.get_mut(&ConnId(*id))
            {
                app.closed = Some(*reason);
            }
            self.events.push((self.now, event));
        }
    }

    fn act(&mut self, action: Action) {
        let now = self.now;
        let latency = self.api_latency;
        match action {
            Action::StartSession { op } => {
                let result = self
                    .world
                    .start_session(now, "i-0123456789abcdef0", PORT)
                    .map(grant)
                    .map_err(|e| api_error("StartSession", e));
                self.later(latency, Pending::Started(op, result));
            }
            Action::ResumeSession { op, session_id } => {
                let result = self
                    .world
                    .resume_session(now, &session_id)
                    .map(|g| g.map(grant))
                    .map_err(|e| api_error("ResumeSession", e));
                self.later(latency, Pending::Resumed(op, result));
            }
            Action::TerminateSession { op, session_id } => {
                self.world.terminate_session(now, &session_id);
                self.later(latency, Pending::Terminated(op));
            }
            Action::Connect { socket, grant } => {
                let result = self
                    .world
                    .connect(now, &grant.stream_url, &grant.token_value)
                    .map_err(|e| {
                        ConnectFailure::Upgrade(match e {
                            SimConnectError::Refused(status) => ConnectError::Refused(status),
                            SimConnectError::BadToken => {
                                ConnectError::Failed("closed with 1008: bad token".into())
                            }
                        })
                    });
                // The upgrade and the OpenDataChannel frame take a round trip.
                self.later(latency, Pending::Connected(socket, result));
            }
            Action::Send { socket, frames } => {
                let bytes: usize = frames.iter().map(OutFrame::len).sum();
                if let Some(handle) = self.sockets.get(&socket).copied() {
                    for frame in frames {
                        let frame = match frame {
                            OutFrame::Binary(b) => ClientFrame::Binary(b),
                            OutFrame::Ping => ClientFrame::Ping,
                        };
                        self.world.client_send(now, handle, frame);
                    }
                }
                self.core.handle_socket_flushed(socket, bytes, now);
            }
            Action::CloseSocket { socket, .. } => {
                if let Some(handle) = self.sockets.remove(&socket) {
                    self.handles.remove(&handle);
                    self.world.client_close(now, handle);
                }
            }
            Action::Decide { op, context } => {
                let answer = match self.policy.as_mut() {
                    Some(policy) => policy(&context),
                    None => PolicyAnswer::Unavailable,
                };
                self.later(Duration::from_micros(50), Pending::Decided(op, answer));
            }
            Action::Bind {
                conn,
                session,
                uploads,
            } => {
                self.gates.entry(session).or_insert(uploads);
                if let Some(app) = self.apps.get_mut(&conn) {
                    app.session = Some(session);
                    app.bound_at = Some(now);
                }
            }
            Action::Uploads { session, open } => {
                self.gates.insert(session, open);
            }
            Action::SessionEnded { session } => {
                self.gates.remove(&session);
            }
            Action::WriteLocal { conn, data } => {
                let Some(app) = self.apps.get_mut(&conn) else {
                    return;
                };
                if !app.spec.reads {
                    return;
                }
                let mut rest = &data[..];
                for expected in pattern(app.seed, app.received, data.len()) {
                    let (got, more) = rest.split_at(expected.len());
                    if got != expected {
                        app.corrupted = true;
                    }
                    rest = more;
                }
                let gap = now.saturating_duration_since(app.last_progress);
                if gap > app.worst_stall {
                    app.worst_stall = gap;
                    app.worst_stall_at = Some(now);
                }
                app.received += data.len() as u64;
                app.last_progress = now;
                if app.spec.close_when_done && app.received == app.spec.total {
                    self.closing.push(conn);
                }
                let len = data.len();
                self.core.handle_local_written(conn, len, now);
            }
            Action::CloseLocal { .. } => {}
            // The simulated sessions are port sessions: no shells, no KMS.
            Action::GenerateDataKey { .. } | Action::WriteStderr { .. } => {}
        }
    }
}

fn grant(g: ssm_emulator::sim::SimGrant) -> SessionGrant {
    SessionGrant {
        session_id: g.session_id,
        token_value: g.token,
        stream_url: g.stream_url,
    }
}

fn api_error(operation: &'static str, error: SimApiError) -> ApiError {
    let (kind, code) = match error {
        SimApiError::DoesNotExist => (ApiErrorKind::DoesNotExist, "DoesNotExistException"),
        SimApiError::Throttling => (ApiErrorKind::Throttling, "ThrottlingException"),
        SimApiError::AccessDenied => (ApiErrorKind::AccessDenied, "AccessDeniedException"),
        SimApiError::TargetNotConnected => (ApiErrorKind::TargetNotConnected, "TargetNotConnected"),
    };
    ApiError {
        operation,
        kind,
        code: Some(code.to_owned()),
        message: format!("simulated {code}"),
    }
}

// ----- scenarios ----------------------------------------------------------------------

/// What a [`compound`] run injected.
pub struct Injected {
    /// The longest fault.
    pub worst_fault: Duration,
    /// The worst stall of the applications a termination cost (they were replaced).
    pub retired_stall: Duration,
    /// Service-side terminations.
    pub terminations: u64,
}

/// Runs until the service has made `recycles` planned recycles, one `period` apart, with a
/// compound fault at every seventh step: a 2 s black hole of the client's socket, or three
/// throttled ResumeSession calls and an abrupt reset. Every `terminate_every` steps the
/// service terminates the session (a restart); the applications it cost are replaced.
/// Faults only hit a tunnel that is up: one still recovering is left to finish.
pub fn compound(
    pair: &mut Pair,
    recycles: u64,
    period: Duration,
    terminate_every: u32,
) -> Injected {
    let mut injected = Injected {
        worst_fault: Duration::ZERO,
        retired_stall: Duration::ZERO,
        terminations: 0,
    };
    let mut step = 0u32;
    while pair.world.stats().recycles < recycles {
        pair.run_for(period);
        let sessions = pair.active_sessions();
        let Some(session) = sessions.first().cloned() else {
            continue;
        };
        if pair.world.client_of(&session).is_none() {
            continue;
        }
        step += 1;
        let now = pair.now;
        match step % 7 {
            0 if step.is_multiple_of(14) => {
                pair.world.black_hole(now, &session, true);
                pair.run_for(Duration::from_secs(2));
                let now = pair.now;
                pair.world.black_hole(now, &session, false);
                injected.worst_fault = injected.worst_fault.max(Duration::from_secs(2));
            }
            0 => {
                pair.world.fail_resumes(&[SimApiError::Throttling; 3]);
                pair.world.reset_client(now, &session);
            }
            _ => {
                for id in &sessions {
                    pair.world.recycle(now, id, period / 3);
                }
            }
        }
        if terminate_every > 0 && step.is_multiple_of(terminate_every) {
            let now = pair.now;
            pair.world.terminate(now, &session);
            injected.terminations += 1;
            pair.run_for(Duration::from_secs(3));
            let lost: Vec<ConnId> = pair
                .apps
                .iter()
                .filter(|(_, a)| a.closed == Some(CloseReason::SessionRestarted))
                .map(|(id, _)| *id)
                .collect();
            for id in lost {
                if let Some(app) = pair.apps.remove(&id) {
                    injected.retired_stall = injected.retired_stall.max(app.worst_stall);
                    pair.open(app.spec);
                }
            }
        }
    }
    injected
}
