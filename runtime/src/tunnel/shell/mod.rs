//! The tokio shell around the tunnel core: one task that owns the [`Core`], performs its
//! actions (API calls, WebSocket connects and writes, local reads and writes, plugin
//! decisions) with tasks of their own, and feeds every result back. Nothing the shell awaits
//! in its loop can block: every action only hands work to a task.

pub(crate) mod listener;
mod local;
mod socket;
pub(crate) mod stdio;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, watch};

use super::api::{SessionApi, StartRequest};
use super::core::{
    Action, ConnId, Core, OpId, PolicyAnswer, SessionKey, SocketClose, SocketId, Stopped,
};
use crate::aws::{ApiError, SessionGrant};
use crate::events::{ConnectFailure, ProbeFailure, TunnelEvent, TunnelStatus};
use crate::plugin::TunnelPlugins;
use crate::transport::connect::{self, ClientIdentity, DataSocket};
use crate::tunnel::core::encryption::DataKey;
use listener::LocalStream;
pub(crate) use local::CLOSE_DRAIN;
use local::LocalConn;
use socket::Socket;

/// Frames and local reads waiting for the loop beyond which their tasks wait: a flooding
/// peer or a fast application is slowed at its source.
const DATA_QUEUE: usize = 256;

/// What comes back to the loop from the tasks.
pub(crate) enum Input {
    Started(OpId, Result<SessionGrant, ApiError>),
    Resumed(OpId, Result<Option<SessionGrant>, ApiError>),
    Terminated(OpId, Result<(), ApiError>),
    Decided(OpId, PolicyAnswer),
    Connected(SocketId, Result<Box<DataSocket>, ConnectFailure>),
    Frame(SocketId, Bytes),
    SocketActivity(SocketId),
    SocketClosed(SocketId, SocketClose),
    SocketFlushed(SocketId, usize),
    LocalData(ConnId, Bytes),
    LocalWritten(ConnId, usize),
    /// The connection's input ended (end of file); its output may go on.
    LocalEof(ConnId),
    LocalClosed(ConnId),
    DataKey(OpId, Result<DataKey, ApiError>),
}

/// What the shell needs besides the core.
pub(crate) struct ShellConfig {
    pub(crate) name: String,
    pub(crate) start: StartRequest,
    pub(crate) connect_timeout: Duration,
    /// Limit of one StartSession or ResumeSession call, credential loading included.
    pub(crate) call_timeout: Duration,
    /// Limit of one TerminateSession call, credential loading included.
    pub(crate) terminate_timeout: Duration,
}

/// The SSM sessions a tunnel has started and not yet seen terminated: what may remain at the
/// service if the process ends now. Kept outside the core so that it survives a panic of the
/// tunnel's task and can be reported when a second signal cuts shutdown short.
#[derive(Clone, Debug, Default)]
pub struct LiveSessions(Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>);

impl LiveSessions {
    /// The session ids, in order.
    pub fn ids(&self) -> Vec<String> {
        self.lock().iter().cloned().collect()
    }

    pub(crate) fn insert(&self, id: &str) {
        self.lock().insert(id.to_owned());
    }

    fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<String>> {
        // A poisoned lock only means a panic elsewhere; the set itself is still valid.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Runs `call` for at most `limit`; a call that does not answer in time fails like a
/// transport error, so that the core can go on (and shutdown can finish).
async fn bounded<T>(
    operation: &'static str,
    limit: Duration,
    call: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
        Err(ApiError::new(
            operation,
            crate::aws::ApiErrorKind::Transport,
            format!("no answer within {}", humantime::format_duration(limit)),
        ))
    })
}

/// Terminates `session_id` at the service within `limit`; a session that is already gone
/// counts as terminated. Returns the call's result.
pub(crate) async fn terminate<A: SessionApi>(
    api: &A,
    live: &LiveSessions,
    session_id: &str,
    limit: Duration,
) -> Result<(), ApiError> {
    let result = bounded("TerminateSession", limit, api.terminate_session(session_id)).await;
    if result.as_ref().is_ok() || result.as_ref().is_err_and(ApiError::is_session_gone) {
        live.remove(session_id);
    }
    result
}

/// The channels the shell reports on.
pub(crate) struct Outlets {
    pub(crate) events: broadcast::Sender<TunnelEvent>,
    pub(crate) status: watch::Sender<TunnelStatus>,
}

/// Where the shell's inputs come from.
pub(crate) struct Inlets {
    pub(crate) accepted: mpsc::Receiver<(LocalStream, String)>,
    /// The local terminal's size, whenever it changes (shell tunnels).
    pub(crate) resize: mpsc::Receiver<(u16, u16)>,
    pub(crate) probe_failures: mpsc::Receiver<ProbeFailure>,
    pub(crate) plugins: watch::Receiver<Arc<TunnelPlugins>>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Signs that the machine slept or moved networks.
    pub(crate) wakes: watch::Receiver<crate::wake::WakeSignal>,
}

struct Shell<A> {
    core: Core,
    api: Arc<A>,
    live: LiveSessions,
    /// Where a remote command's standard error goes.
    stderr: stdio::StderrSink,
    config: ShellConfig,
    identity: ClientIdentity,
    outlets: Outlets,
    plugins: watch::Receiver<Arc<TunnelPlugins>>,
    data_tx: mpsc::Sender<Input>,
    control_tx: mpsc::UnboundedSender<Input>,
    sockets: HashMap<SocketId, Socket>,
    conns: HashMap<ConnId, LocalConn>,
    /// Accepted connections not yet bound to a session.
    unbound: HashMap<ConnId, LocalStream>,
    gates: HashMap<SessionKey, watch::Sender<bool>>,
}

/// Runs a tunnel until its core stops; returns why.
pub(crate) async fn run<A: SessionApi>(
    core: Core,
    api: Arc<A>,
    live: LiveSessions,
    config: ShellConfig,
    outlets: Outlets,
    mut inlets: Inlets,
) -> Stopped {
    let (data_tx, mut data_rx) = mpsc::channel(DATA_QUEUE);
    let (control_tx, mut control_rx) = mpsc::unbounded_channel();
    let mut shell = Shell {
        core,
        api,
        live,
        stderr: stdio::StderrSink::default(),
        config,
        identity: ClientIdentity::default(),
        outlets,
        plugins: inlets.plugins.clone(),
        data_tx,
        control_tx,
        sockets: HashMap::new(),
        conns: HashMap::new(),
        unbound: HashMap::new(),
        gates: HashMap::new(),
    };
    let mut plugins = inlets.plugins;
    shell
        .core
        .set_reconnect_plugin(plugins.borrow_and_update().reconnect.is_some());
    let mut shutting_down = false;
    loop {
        shell.perform();
        if let Some(stopped) = shell.core.stopped() {
            return stopped.clone();
        }
        let timer = shell.core.poll_timeout();
        let accepting = shell.core.is_accepting();
        tokio::select! {
            biased;
            // A dropped sender means the same as a request: nobody can stop the tunnel later.
            _ = inlets.shutdown.changed(), if !shutting_down => {
                shutting_down = true;
                shell.core.shutdown(Instant::now());
            }
            // Before the socket's inputs and the timers: after a sleep they are all ready at
            // once, and the sockets they concern are the ones presumed dead.
            Ok(()) = inlets.wakes.changed() => {
                let wake = inlets.wakes.borrow_and_update().wake.clone();
                if let Some(wake) = wake {
                    shell.core.handle_wake(&wake, Instant::now());
                }
            }
            Some(input) = control_rx.recv() => shell.dispatch(input),
            Some(input) = data_rx.recv() => {
                shell.dispatch(input);
                // Take what else is ready before acting on it: fewer, larger socket writes.
                for _ in 0..64 {
                    match data_rx.try_recv() {
                        Ok(input) => shell.dispatch(input),
                        Err(_) => break,
                    }
                }
            }
            Some((stream, peer)) = inlets.accepted.recv(), if accepting => {
                let id = shell.core.handle_accept(peer, Instant::now());
                shell.unbound.insert(id, stream);
            }
            () = sleep_until(timer) => shell.core.handle_timeout(Instant::now()),
            Some((cols, rows)) = inlets.resize.recv() => {
                shell.core.handle_resize(cols, rows, Instant::now());
            }
            Some(failure) = inlets.probe_failures.recv() => {
                shell.core.handle_probe_failure(failure, Instant::now());
            }
            Ok(()) = plugins.changed() => {
                let present = plugins.borrow_and_update().reconnect.is_some();
                shell.core.set_reconnect_plugin(present);
            }
        }
    }
}

impl<A: SessionApi> Shell<A> {
    fn dispatch(&mut self, input: Input) {
        let now = Instant::now();
        let core = &mut self.core;
        match input {
            Input::Started(op, result) => core.handle_started(op, result, now),
            Input::Resumed(op, result) => core.handle_resumed(op, result, now),
            Input::Terminated(op, result) => core.handle_terminated(op, result, now),
            Input::Decided(op, answer) => core.handle_decision(op, answer, now),
            Input::Connected(id, result) => match result {
                Ok(socket) => {
                    let socket =
                        Socket::spawn(id, *socket, self.data_tx.clone(), self.control_tx.clone());
                    self.sockets.insert(id, socket);
                    core.handle_connected(id, Ok(()), now);
                }
                Err(failure) => core.handle_connected(id, Err(failure), now),
            },
            Input::Frame(id, frame) => core.handle_frame(id, frame, now),
            Input::SocketActivity(id) => core.handle_socket_activity(id, now),
            Input::SocketClosed(id, close) => {
                self.sockets.remove(&id);
                core.handle_socket_closed(id, close, now);
            }
            Input::SocketFlushed(id, bytes) => core.handle_socket_flushed(id, bytes, now),
            Input::LocalData(id, data) => core.handle_local_data(id, data, now),
            Input::LocalWritten(id, bytes) => core.handle_local_written(id, bytes, now),
            Input::LocalEof(id) => core.handle_local_eof(id, now),
            Input::LocalClosed(id) => core.handle_local_closed(id, now),
            Input::DataKey(op, result) => core.handle_data_key(op, result, now),
        }
    }

    /// Performs every pending action and publishes events and status.
    fn perform(&mut self) {
        while let Some(action) = self.core.poll_action() {
            self.act(action);
        }
        while let Some(event) = self.core.poll_event() {
            // No subscriber is fine.
            let _ = self.outlets.events.send(TunnelEvent {
                tunnel: self.config.name.clone(),
                session: event.session,
                at: SystemTime::now(),
                kind: event.kind,
            });
        }
        let now = Instant::now();
        match self.core.poll_status(now) {
            Some(status) => {
                let status = status.clone();
                self.outlets.status.send_replace(status);
            }
            None => {
                let (up, down) = (self.core.status().bytes_up, self.core.status().bytes_down);
                self.outlets.status.send_if_modified(|s| {
                    s.bytes_up = up;
                    s.bytes_down = down;
                    false
                });
            }
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::StartSession { op } => {
                let (api, request, tx) = (
                    self.api.clone(),
                    self.config.start.clone(),
                    self.control_tx.clone(),
                );
                let (live, limit) = (self.live.clone(), self.config.call_timeout);
                tokio::spawn(async move {
                    let result = bounded("StartSession", limit, api.start_session(&request)).await;
                    // Recorded before the core hears of it: from now on it may need ending.
                    if let Ok(grant) = &result {
                        live.insert(&grant.session_id);
                    }
                    let _ = tx.send(Input::Started(op, result));
                });
            }
            Action::ResumeSession { op, session_id } => {
                let (api, tx) = (self.api.clone(), self.control_tx.clone());
                let limit = self.config.call_timeout;
                tokio::spawn(async move {
                    let result =
                        bounded("ResumeSession", limit, api.resume_session(&session_id)).await;
                    let _ = tx.send(Input::Resumed(op, result));
                });
            }
            Action::TerminateSession { op, session_id } => {
                let (api, tx) = (self.api.clone(), self.control_tx.clone());
                let (live, limit) = (self.live.clone(), self.config.terminate_timeout);
                tokio::spawn(async move {
                    let result = terminate(&*api, &live, &session_id, limit).await;
                    let _ = tx.send(Input::Terminated(op, result));
                });
            }
            Action::Connect { socket, grant } => {
                let (api, tx) = (self.api.clone(), self.control_tx.clone());
                let identity = self.identity.clone();
                let timeout = self.config.connect_timeout;
                tokio::spawn(async move {
                    let result = async {
                        let request = api
                            .upgrade_request(&grant.stream_url)
                            .await
                            .map_err(ConnectFailure::Signing)?;
                        let proxies = api.proxies();
                        connect::open_via(&proxies, request, &grant.token_value, &identity, timeout)
                            .await
                            .map(Box::new)
                            .map_err(ConnectFailure::Upgrade)
                    }
                    .await;
                    let _ = tx.send(Input::Connected(socket, result));
                });
            }
            Action::Send { socket, frames } => {
                if let Some(s) = self.sockets.get(&socket) {
                    s.send(frames);
                }
            }
            Action::CloseSocket { socket, graceful } => {
                if let Some(s) = self.sockets.remove(&socket) {
                    s.close(graceful);
                }
            }
            Action::Decide { op, context } => {
                // A quarantined plugin would refuse at once: the built-in policy decides
                // without a failure event for each decision (its quarantine was reported).
                let plugin = self
                    .plugins
                    .borrow()
                    .reconnect
                    .clone()
                    .filter(|plugin| !plugin.quarantined());
                match plugin {
                    Some(plugin) => {
                        let tx = self.control_tx.clone();
                        tokio::spawn(async move {
                            let answer = match plugin.decide(&context).await {
                                Ok(decision) => PolicyAnswer::Decided(decision),
                                Err(failure) => PolicyAnswer::Failed(failure),
                            };
                            let _ = tx.send(Input::Decided(op, answer));
                        });
                    }
                    None => {
                        let _ = self
                            .control_tx
                            .send(Input::Decided(op, PolicyAnswer::Unavailable));
                    }
                }
            }
            Action::Bind {
                conn,
                session,
                uploads,
            } => {
                let Some(stream) = self.unbound.remove(&conn) else {
                    return;
                };
                let gate = self
                    .gates
                    .entry(session)
                    .or_insert_with(|| watch::channel(uploads).0)
                    .subscribe();
                let local = LocalConn::spawn(
                    conn,
                    stream,
                    gate,
                    self.data_tx.clone(),
                    self.control_tx.clone(),
                );
                self.conns.insert(conn, local);
            }
            Action::Uploads { session, open } => {
                self.gates
                    .entry(session)
                    .or_insert_with(|| watch::channel(open).0)
                    .send_replace(open);
            }
            Action::SessionEnded { session } => {
                self.gates.remove(&session);
            }
            Action::WriteLocal { conn, data } => {
                if let Some(local) = self.conns.get(&conn) {
                    local.write(data);
                }
            }
            Action::GenerateDataKey {
                op,
                key_id,
                context,
            } => {
                let (api, tx) = (self.api.clone(), self.control_tx.clone());
                let limit = self.config.call_timeout;
                tokio::spawn(async move {
                    let result = bounded(
                        "GenerateDataKey",
                        limit,
                        api.generate_data_key(&key_id, &context),
                    )
                    .await;
                    let _ = tx.send(Input::DataKey(op, result));
                });
            }
            Action::WriteStderr { data } => self.stderr.write(data),
            Action::CloseLocal { conn, drain } => {
                self.unbound.remove(&conn);
                if let Some(local) = self.conns.remove(&conn) {
                    local.close(drain);
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// The current time as Unix milliseconds (for the channels' CreatedDate).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
