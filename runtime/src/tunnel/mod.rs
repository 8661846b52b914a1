//! A running tunnel: its local end, its sessions, its plugins (DESIGN "Recovery, in tiers").
//!
//! * [`core`]: the sans-IO tunnel core — sessions, recovery, rotation, striping, the data
//!   path, local connection bookkeeping, timers and shutdown, driven by events and time.
//! * `shell`: the tokio task that performs the core's actions with real sockets.
//! * [`api`]: the seam in front of the SSM API ([`SessionApi`]).
//! * `plugins`: health checks and event hooks running beside the tunnel.
//!
//! [`Tunnel::start`] binds the local end and starts everything; the local end stays bound
//! through every resume and restart, and connections are accepted throughout.

pub mod api;
pub mod core;
mod plugins;
mod shell;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use self::core::{Core, CoreConfig, Stopped};
use crate::channel::ChannelConfig;
use crate::events::{EventKind, TunnelEvent, TunnelStatus};
use crate::plugin::{TcpTarget, TunnelPlugins};
use crate::policy::{
    LocalAddress, RotationSettings, SlowReaderSettings, TransportSettings, TunnelSpec,
};
use crate::recovery::RecoverySettings;
pub use api::{SessionApi, StartRequest};
pub use shell::LiveSessions;

/// Everything a tunnel needs to run.
#[derive(Clone, Debug)]
pub struct TunnelConfig {
    /// Name, for events and logs.
    pub name: String,
    /// The StartSession target: an instance id, or `tag:KEY=VALUE`, which [`crate::aws::SsmApi`]
    /// resolves anew for every StartSession (never for a resume).
    pub target: String,
    /// The SSM document, e.g. `AWS-StartPortForwardingSession`.
    pub document_name: String,
    /// StartSession parameters (lists of strings).
    pub parameters: BTreeMap<String, Vec<String>>,
    /// StartSession `Reason`, shown in the SSM console's session history.
    pub reason: Option<String>,
    /// Where to accept connections; a TCP port 0 picks a free port.
    pub local: LocalAddress,
    /// What the document starts: port forwarding, or a shell (whose local end is
    /// [`LocalAddress::Stdio`], the terminal).
    pub kind: core::handshake::SessionKind,
    /// Sessions to stripe over (1–16).
    pub sessions: u8,
    /// Make-before-break rotation ahead of the maximum session duration.
    pub rotation: Option<RotationSettings>,
    /// Limits for local applications that stop reading.
    pub slow_reader: SlowReaderSettings,
    /// WebSocket ping period.
    pub ping_interval: Duration,
    /// A socket with nothing received (no pong, no frame), or whose writes make no progress,
    /// for this long is dead.
    pub pong_timeout: Duration,
    /// Limit for one WebSocket upgrade.
    pub connect_timeout: Duration,
    /// How long a new session may take from its socket opening to HandshakeComplete before
    /// it is replaced.
    pub handshake_timeout: Duration,
    /// smux NOP period for agents that keep smux keepalive on (smux's own 10 s; shorter
    /// only to test against an emulator whose keepalive timeout is compressed too).
    pub smux_keepalive: Duration,
    /// The built-in recovery policy's settings.
    pub recovery: RecoverySettings,
    /// Reliable channel limits.
    pub channel: ChannelConfig,
    /// Seeds the policy's jitter.
    pub seed: u64,
    /// The tunnel's plugins; a new value on this channel swaps them (hot reload).
    pub plugins: watch::Receiver<Arc<TunnelPlugins>>,
}

/// A plugin channel with no plugins and no sender: the built-in policy decides, forever.
pub fn no_plugins() -> watch::Receiver<Arc<TunnelPlugins>> {
    watch::channel(Arc::new(TunnelPlugins::none())).1
}

impl TunnelConfig {
    /// A tunnel that starts its sessions with `start` and accepts connections on `local`,
    /// with every other setting at its built-in default (one session, no rotation, the
    /// built-in recovery policy, no plugins).
    pub fn new(
        name: impl Into<String>,
        start: StartRequest,
        local: LocalAddress,
        seed: u64,
    ) -> Self {
        let transport = TransportSettings::default();
        Self {
            name: name.into(),
            target: start.target,
            document_name: start.document_name,
            parameters: start.parameters,
            reason: start.reason,
            local,
            kind: core::handshake::SessionKind::Port,
            sessions: 1,
            rotation: None,
            slow_reader: SlowReaderSettings::default(),
            ping_interval: transport.ping_interval,
            pong_timeout: transport.pong_timeout,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            handshake_timeout: core::DEFAULT_HANDSHAKE_TIMEOUT,
            smux_keepalive: core::SMUX_KEEPALIVE,
            recovery: RecoverySettings::default(),
            channel: ChannelConfig::default(),
            seed,
            plugins: no_plugins(),
        }
    }

    /// The runtime configuration of a tunnel from the policy file.
    pub fn from_spec(spec: &TunnelSpec, seed: u64) -> Self {
        let start = StartRequest {
            target: spec.target.clone(),
            document_name: spec.document_name().to_owned(),
            parameters: spec.parameters(),
            reason: spec.reason.clone(),
        };
        Self {
            sessions: spec.sessions,
            rotation: spec.rotation,
            slow_reader: spec.slow_reader,
            ping_interval: spec.transport.ping_interval,
            pong_timeout: spec.transport.pong_timeout,
            recovery: spec.recovery,
            ..Self::new(spec.name.clone(), start, spec.local.clone(), seed)
        }
    }

    /// The sans-IO part of the configuration.
    pub fn core(&self) -> CoreConfig {
        CoreConfig {
            stripes: self.sessions,
            rotation: self.rotation,
            ping_interval: self.ping_interval,
            pong_timeout: self.pong_timeout,
            handshake_timeout: self.handshake_timeout,
            recovery: self.recovery,
            channel: self.channel.clone(),
            slow_reader: self.slow_reader,
            smux_keepalive: self.smux_keepalive,
            seed: self.seed,
            single_stream: self.local.is_stream(),
            kind: self.kind,
            target: self.target.clone(),
            terminate_budget: TERMINATE_BUDGET,
            ..CoreConfig::default()
        }
    }
}

/// Limit for one WebSocket upgrade (the official client's dialer allows 45 s; a healthy
/// upgrade takes well under a second, and a stuck one is better retried).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Limit of one StartSession or ResumeSession call: the SDK's own limit for the request and
/// its retry (35 s) plus time to load credentials (SSO, `credential_process`).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(45);

/// How long shutdown waits, after the TerminateSession flags, for StartSession calls still in
/// flight (each at most [`CALL_TIMEOUT`]) and for every TerminateSession call, credential
/// loading included, before it gives up and names the sessions that may remain.
pub const TERMINATE_BUDGET: Duration = Duration::from_secs(60);

/// Reports the local terminal's size to a shell tunnel ([`Tunnel::resizer`]).
#[derive(Clone, Debug)]
pub struct Resizer(mpsc::Sender<(u16, u16)>);

impl Resizer {
    /// The terminal now has `cols` × `rows`.
    pub fn resize(&self, cols: u16, rows: u16) {
        // Full means sizes are already waiting; the next change sends the latest one.
        let _ = self.0.try_send((cols, rows));
    }
}

/// Why a tunnel stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The local end could not be bound.
    #[error("tunnel {name}: cannot listen on {local}: {source}")]
    Bind {
        /// The tunnel.
        name: String,
        /// The address.
        local: LocalAddress,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The recovery policy gave up.
    #[error("tunnel {name}: gave up: {reason}")]
    GaveUp {
        /// The tunnel.
        name: String,
        /// The policy's reason.
        reason: String,
    },
    /// The tunnel's task failed unexpectedly.
    #[error("tunnel {name}: internal error: {detail}")]
    Internal {
        /// The tunnel.
        name: String,
        /// What failed.
        detail: String,
    },
}

/// A running tunnel.
#[derive(Debug)]
pub struct Tunnel {
    name: String,
    local: LocalAddress,
    events: broadcast::Sender<TunnelEvent>,
    status: watch::Receiver<TunnelStatus>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<Stopped, String>>,
    acceptor: JoinHandle<()>,
    live: LiveSessions,
    /// A stream local end: resolves once its output is written.
    flushed: Option<tokio::sync::oneshot::Receiver<()>>,
    resize: mpsc::Sender<(u16, u16)>,
}

impl Tunnel {
    /// Binds the local end and starts the tunnel.
    ///
    /// # Errors
    /// The local end cannot be bound.
    pub async fn start<A: SessionApi>(config: TunnelConfig, api: A) -> Result<Self, TunnelError> {
        let bind_error = |source| TunnelError::Bind {
            name: config.name.clone(),
            local: config.local.clone(),
            source,
        };
        let (accept_tx, accepted) = mpsc::channel(1);
        let (acceptor, local, flushed) = if config.local.is_stream() {
            let (stream, flushed) = shell::stdio::open().map_err(bind_error)?;
            // The one stream is there from the start; the sender stays alive so that the
            // shell never sees the local end close.
            let acceptor = tokio::spawn(async move {
                if accept_tx.send((stream, "stdio".to_owned())).await.is_ok() {
                    std::future::pending::<()>().await;
                }
            });
            (acceptor, LocalAddress::Stdio, Some(flushed))
        } else {
            let (listener, local) = shell::listener::Listener::bind(&config.local)
                .await
                .map_err(bind_error)?;
            (tokio::spawn(accept_loop(listener, accept_tx)), local, None)
        };
        let (events, _) = broadcast::channel(1024);
        let (status_tx, status) = watch::channel(TunnelStatus::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (probe_tx, probe_failures) = mpsc::channel(8);
        let (resize_tx, resize) = mpsc::channel(8);
        config
            .plugins
            .borrow()
            .link
            .set(TcpTarget::listener(&local, Some(status.clone())));
        // Before the first event, so that hooks see it.
        plugins::supervise(
            config.plugins.clone(),
            plugins::TunnelSide {
                name: config.name.clone(),
                events: events.clone(),
                status: status.clone(),
                probe_failures: probe_tx,
            },
        );
        let _ = events.send(TunnelEvent {
            tunnel: config.name.clone(),
            session: None,
            at: std::time::SystemTime::now(),
            kind: EventKind::Listening {
                local: local.to_string(),
            },
        });
        let core = Core::new(config.core(), Instant::now(), shell::unix_ms());
        let shell_config = shell::ShellConfig {
            name: config.name.clone(),
            start: StartRequest {
                target: config.target.clone(),
                document_name: config.document_name.clone(),
                parameters: config.parameters.clone(),
                reason: config.reason.clone(),
            },
            connect_timeout: config.connect_timeout,
            call_timeout: CALL_TIMEOUT,
            terminate_timeout: TERMINATE_BUDGET,
        };
        // `tunnel`, not `name`: JSON log lines give the span's own name the key `name`.
        let span = tracing::info_span!("tunnel", tunnel = %config.name);
        let api = Arc::new(api);
        let live = LiveSessions::default();
        let shell_task = tokio::spawn(tracing::Instrument::instrument(
            shell::run(
                core,
                api.clone(),
                live.clone(),
                shell_config,
                shell::Outlets {
                    events: events.clone(),
                    status: status_tx,
                },
                shell::Inlets {
                    accepted,
                    resize,
                    probe_failures,
                    plugins: config.plugins.clone(),
                    shutdown: shutdown_rx,
                    wakes: crate::wake::subscribe(),
                },
            ),
            span,
        ));
        let task = tokio::spawn(supervise(
            shell_task,
            api,
            live.clone(),
            config.name.clone(),
        ));
        Ok(Self {
            name: config.name,
            local,
            events,
            status,
            shutdown,
            task,
            acceptor,
            live,
            flushed,
            resize: resize_tx,
        })
    }

    /// The local terminal now has `cols` × `rows`: a shell tunnel's session is told (now, or
    /// as soon as it forwards). Other tunnels ignore it.
    pub fn resize(&self, cols: u16, rows: u16) {
        self.resizer().resize(cols, rows);
    }

    /// A handle that reports terminal sizes to this tunnel from anywhere (a signal task).
    pub fn resizer(&self) -> Resizer {
        Resizer(self.resize.clone())
    }

    /// The sessions this tunnel started and has not seen terminated: what may remain at the
    /// service if the process ends now (for a second signal that cuts shutdown short).
    pub fn live_sessions(&self) -> LiveSessions {
        self.live.clone()
    }

    /// Where the tunnel accepts connections (a TCP port 0 resolved to the port it got).
    pub fn local(&self) -> &LocalAddress {
        &self.local
    }

    /// The TCP address, if the local end is a TCP listener.
    pub fn tcp_addr(&self) -> Option<std::net::SocketAddr> {
        self.local.tcp()
    }

    /// The tunnel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Lifecycle events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<TunnelEvent> {
        self.events.subscribe()
    }

    /// The live status.
    pub fn status(&self) -> watch::Receiver<TunnelStatus> {
        self.status.clone()
    }

    /// Whether the tunnel stopped on its own (the policy gave up or an internal error).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits until the tunnel stops on its own: a tunnel on stdin/stdout stops without error
    /// when its stream ends.
    ///
    /// # Errors
    /// Why it stopped.
    pub async fn wait(&mut self) -> Result<(), TunnelError> {
        let result = (&mut self.task).await;
        self.close_local_end().await;
        self.flush_stream().await;
        self.flatten(result)
    }

    /// Stops the tunnel: the TerminateSession flag and call for every session, every
    /// connection closed, the local end unbound.
    ///
    /// # Errors
    /// The tunnel had already stopped with an error.
    pub async fn shutdown(mut self) -> Result<(), TunnelError> {
        let _ = self.shutdown.send(true);
        // No new connections from now on; the core closes those it has.
        self.close_local_end().await;
        let result = (&mut self.task).await;
        self.flush_stream().await;
        self.flatten(result)
    }

    /// Stops accepting and unbinds the local end (a Unix socket file is removed).
    async fn close_local_end(&mut self) {
        self.acceptor.abort();
        let _ = (&mut self.acceptor).await;
    }

    /// Once the tunnel has stopped: waits until a stream local end has written what was
    /// queued for it, so that nothing is cut off when the process exits (bounded like the
    /// drain of any closed connection).
    async fn flush_stream(&mut self) {
        if let Some(flushed) = self.flushed.take() {
            let limit = shell::CLOSE_DRAIN + Duration::from_secs(1);
            let _ = tokio::time::timeout(limit, flushed).await;
        }
    }

    fn flatten(
        &self,
        result: Result<Result<Stopped, String>, tokio::task::JoinError>,
    ) -> Result<(), TunnelError> {
        let result = match result {
            Ok(Ok(stopped)) => Ok(stopped),
            Ok(Err(detail)) => {
                return Err(TunnelError::Internal {
                    name: self.name.clone(),
                    detail,
                });
            }
            Err(err) => Err(err),
        };
        match result {
            Ok(Stopped::Requested) => Ok(()),
            Ok(Stopped::Ended(reason)) => {
                tracing::info!(%reason, "the stream ended");
                Ok(())
            }
            Ok(Stopped::GaveUp(reason)) => Err(TunnelError::GaveUp {
                name: self.name.clone(),
                reason,
            }),
            Err(err) => Err(TunnelError::Internal {
                name: self.name.clone(),
                detail: err.to_string(),
            }),
        }
    }
}

/// Waits for the tunnel's task. If it panicked, its core (and the knowledge of which sessions
/// are forwarding) is gone, but [`LiveSessions`] is not: every session in it is terminated,
/// within [`TERMINATE_BUDGET`] each, so that a bug does not leave sessions behind.
async fn supervise<A: SessionApi>(
    task: JoinHandle<Stopped>,
    api: Arc<A>,
    live: LiveSessions,
    name: String,
) -> Result<Stopped, String> {
    let failure = match task.await {
        Ok(stopped) => return Ok(stopped),
        Err(err) if err.is_panic() => {
            let payload = err.into_panic();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            format!("the tunnel's task panicked: {message}")
        }
        Err(err) => format!("the tunnel's task ended: {err}"),
    };
    tracing::error!(tunnel = %name, failure, "terminating the tunnel's sessions");
    let ids = live.ids();
    let terminations = ids
        .iter()
        .map(|id| shell::terminate(&*api, &live, id, TERMINATE_BUDGET));
    for (id, result) in ids
        .iter()
        .zip(futures_util::future::join_all(terminations).await)
    {
        match result {
            Ok(()) => tracing::info!(session_id = %id, "session terminated"),
            Err(err) => tracing::warn!(session_id = %id, error = %err, "TerminateSession failed"),
        }
    }
    Err(failure)
}

async fn accept_loop(
    listener: shell::listener::Listener,
    accepted: mpsc::Sender<(shell::listener::LocalStream, String)>,
) {
    loop {
        match listener.accept().await {
            Ok(pair) => {
                if accepted.send(pair).await.is_err() {
                    return;
                }
            }
            // Out of file descriptors and similar: back off instead of spinning.
            Err(err) => {
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::aws::{ApiError, ApiErrorKind, SessionGrant, UpgradeRequest};

    /// Records TerminateSession calls; the first one for `slow` answers only after a while,
    /// as a credential source that takes its time would.
    #[derive(Default)]
    struct Recorder {
        terminated: Mutex<Vec<String>>,
    }

    impl SessionApi for Recorder {
        async fn start_session(&self, _: &StartRequest) -> Result<SessionGrant, ApiError> {
            Err(ApiError::new("StartSession", ApiErrorKind::Other, "unused"))
        }

        async fn resume_session(&self, _: &str) -> Result<Option<SessionGrant>, ApiError> {
            Err(ApiError::new(
                "ResumeSession",
                ApiErrorKind::Other,
                "unused",
            ))
        }

        async fn terminate_session(&self, session_id: &str) -> Result<(), ApiError> {
            if session_id == "slow" {
                tokio::time::sleep(Duration::from_secs(20)).await;
            }
            self.terminated
                .lock()
                .expect("lock")
                .push(session_id.to_owned());
            Ok(())
        }

        async fn upgrade_request(&self, _: &str) -> Result<UpgradeRequest, ApiError> {
            Err(ApiError::new("Upgrade", ApiErrorKind::Other, "unused"))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_task_that_panics_still_has_its_sessions_terminated() {
        let live = LiveSessions::default();
        for id in ["s-1", "slow"] {
            live.insert(id);
        }
        let task: JoinHandle<Stopped> = tokio::spawn(async { panic!("a bug in the core") });
        let api = Arc::new(Recorder::default());
        let result = supervise(task, api.clone(), live.clone(), "db".into()).await;
        let failure = result.expect_err("a panic is a failure");
        assert!(failure.contains("a bug in the core"), "{failure}");
        let mut terminated = api.terminated.lock().expect("lock").clone();
        terminated.sort();
        // The slow one too: the budget covers slow credential loading.
        assert_eq!(terminated, ["s-1", "slow"]);
        assert!(live.ids().is_empty(), "{:?}", live.ids());
    }

    #[tokio::test(start_paused = true)]
    async fn a_termination_that_never_answers_is_abandoned_at_the_budget_and_stays_listed() {
        struct Silent;
        impl SessionApi for Silent {
            async fn start_session(&self, _: &StartRequest) -> Result<SessionGrant, ApiError> {
                std::future::pending().await
            }
            async fn resume_session(&self, _: &str) -> Result<Option<SessionGrant>, ApiError> {
                std::future::pending().await
            }
            async fn terminate_session(&self, _: &str) -> Result<(), ApiError> {
                std::future::pending().await
            }
            async fn upgrade_request(&self, _: &str) -> Result<UpgradeRequest, ApiError> {
                std::future::pending().await
            }
        }
        let live = LiveSessions::default();
        live.insert("s-9");
        let started = tokio::time::Instant::now();
        let result = shell::terminate(&Silent, &live, "s-9", TERMINATE_BUDGET).await;
        assert!(result.is_err());
        assert_eq!(started.elapsed(), TERMINATE_BUDGET);
        assert_eq!(live.ids(), ["s-9"], "it may remain, so it is still named");
    }
}
