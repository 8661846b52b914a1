//! A tunnel's lifecycle: StartSession → WebSocket → handshake → forwarding ⇄ resuming →
//! restarting, with the local listener bound throughout (DESIGN.md "Recovery, in tiers").
//!
//! [`Tunnel::start`] binds the listener and spawns two tasks: an acceptor, and the driver that
//! owns the session state (reliable [`Channel`](crate::channel::Channel), smux client, the
//! WebSocket) and runs every recovery step the policy decides. Local connections survive
//! resumes untouched; only a restart (the service's session is gone) closes the connections
//! that lived on the old session — new ones are accepted throughout and wait for the new
//! session.

mod driver;
pub mod events;
pub mod handshake;
mod local;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::aws::SsmApi;
use crate::channel::ChannelConfig;
use crate::plugin::{TcpTarget, TunnelPlugins, TunnelSide};
use crate::policy::TunnelSpec;
use crate::recovery::RecoverySettings;
pub use events::{EventKind, ProbeOutcome, TunnelEvent, TunnelState, TunnelStatus};

/// Everything a tunnel needs to run.
#[derive(Clone, Debug)]
pub struct TunnelConfig {
    /// Name, for events and logs.
    pub name: String,
    /// The StartSession target (instance id).
    pub target: String,
    /// The SSM document, e.g. `AWS-StartPortForwardingSession`.
    pub document_name: String,
    /// StartSession parameters (lists of strings).
    pub parameters: BTreeMap<String, Vec<String>>,
    /// StartSession `Reason`, shown in the SSM console's session history.
    pub reason: Option<String>,
    /// Local listen address; port 0 picks a free port.
    pub local: SocketAddr,
    /// WebSocket ping period.
    pub ping_interval: Duration,
    /// A socket with nothing received (no pong, no frame) for this long is dead.
    pub pong_timeout: Duration,
    /// Limit for one WebSocket upgrade.
    pub connect_timeout: Duration,
    /// How long a new session may take from its socket opening to HandshakeComplete before it
    /// is replaced (the agent gives the client 15 s to answer; the official client waits
    /// forever).
    pub handshake_timeout: Duration,
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
    /// The runtime configuration of a tunnel from the policy file.
    pub fn from_spec(spec: &TunnelSpec, seed: u64) -> Self {
        Self {
            name: spec.name.clone(),
            target: spec.target.clone(),
            document_name: spec.document_name().to_owned(),
            parameters: spec.parameters(),
            reason: spec.reason.clone(),
            local: spec.local,
            ping_interval: spec.transport.ping_interval,
            pong_timeout: spec.transport.pong_timeout,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            recovery: spec.recovery,
            channel: ChannelConfig::default(),
            seed,
            plugins: no_plugins(),
        }
    }
}

/// Limit for one WebSocket upgrade (the official client's dialer allows 45 s; a healthy
/// upgrade takes well under a second, and a stuck one is better retried).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Default [`TunnelConfig::handshake_timeout`].
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a tunnel stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The local listener could not be bound.
    #[error("tunnel {name}: cannot listen on {local}: {source}")]
    Bind {
        /// The tunnel.
        name: String,
        /// The address.
        local: SocketAddr,
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
    /// The driver task failed unexpectedly.
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
    local: SocketAddr,
    events: broadcast::Sender<TunnelEvent>,
    status: watch::Receiver<TunnelStatus>,
    shutdown: watch::Sender<bool>,
    driver: JoinHandle<Result<(), TunnelError>>,
    acceptor: JoinHandle<()>,
}

impl Tunnel {
    /// Binds the local listener and starts the tunnel.
    ///
    /// # Errors
    /// The listener cannot be bound.
    pub async fn start(config: TunnelConfig, api: SsmApi) -> Result<Self, TunnelError> {
        let listener =
            TcpListener::bind(config.local)
                .await
                .map_err(|source| TunnelError::Bind {
                    name: config.name.clone(),
                    local: config.local,
                    source,
                })?;
        let local = listener.local_addr().map_err(|source| TunnelError::Bind {
            name: config.name.clone(),
            local: config.local,
            source,
        })?;
        let (events, _) = broadcast::channel(1024);
        let (status_tx, status) = watch::channel(TunnelStatus::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (accept_tx, accept_rx) = mpsc::channel(256);
        let (probe_tx, probe_rx) = mpsc::channel(8);
        config
            .plugins
            .borrow()
            .link
            .set(TcpTarget::listener(local, Some(status.clone())));
        // Before the first event, so that hooks see it.
        crate::plugin::supervise(
            config.plugins.clone(),
            TunnelSide {
                name: config.name.clone(),
                events: events.clone(),
                status: status.clone(),
                probe_failures: probe_tx,
            },
        );
        let acceptor = tokio::spawn(accept_loop(listener, accept_tx));
        let name = config.name.clone();
        let driver =
            driver::Driver::new(config, api, events.clone(), status_tx, accept_rx, probe_rx);
        driver.emit(EventKind::Listening { local });
        let driver = tokio::spawn(driver.run(shutdown_rx));
        Ok(Self {
            name,
            local,
            events,
            status,
            shutdown,
            driver,
            acceptor,
        })
    }

    /// The bound local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
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
        self.driver.is_finished()
    }

    /// Waits until the tunnel stops on its own.
    ///
    /// # Errors
    /// Why it stopped.
    pub async fn wait(&mut self) -> Result<(), TunnelError> {
        let result = (&mut self.driver).await;
        self.acceptor.abort();
        self.flatten(result)
    }

    /// Stops the tunnel: sends the TerminateSession flag, calls TerminateSession, closes the
    /// listener and every connection.
    ///
    /// # Errors
    /// The tunnel had already stopped with an error.
    pub async fn shutdown(mut self) -> Result<(), TunnelError> {
        let _ = self.shutdown.send(true);
        self.acceptor.abort();
        let result = (&mut self.driver).await;
        self.flatten(result)
    }

    fn flatten(
        &self,
        result: Result<Result<(), TunnelError>, tokio::task::JoinError>,
    ) -> Result<(), TunnelError> {
        result.unwrap_or_else(|err| {
            Err(TunnelError::Internal {
                name: self.name.clone(),
                detail: err.to_string(),
            })
        })
    }
}

async fn accept_loop(
    listener: TcpListener,
    accepted: mpsc::Sender<(tokio::net::TcpStream, SocketAddr)>,
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
