//! The library entry point: [`Emulator::start`] binds the SSM/MGS server and the admin
//! server and runs them until [`Emulator::shutdown`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::post;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::EmulatorConfig;
use crate::events::EventLog;
use crate::faults::FaultControl;
use crate::service::Service;
use crate::{admin, api, relay};

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The initial fault settings are invalid.
    #[error("invalid fault settings: {0}")]
    InvalidFaults(String),
}

/// A running emulator: SSM API + MGS data channel on one port, admin on another, agents
/// started per session.
pub struct Emulator {
    service: Arc<Service>,
    faults: FaultControl,
    endpoint: SocketAddr,
    admin: SocketAddr,
    /// The secret path prefix of every admin route.
    admin_token: String,
    servers: Vec<JoinHandle<()>>,
}

impl Emulator {
    /// Binds both servers (port 0 picks free ports) and starts serving.
    ///
    /// # Errors
    /// [`EmulatorError::Bind`] if a port is taken; [`EmulatorError::InvalidFaults`] if the
    /// fault settings are out of range.
    pub async fn start(config: EmulatorConfig) -> Result<Self, EmulatorError> {
        config
            .faults
            .validate()
            .map_err(EmulatorError::InvalidFaults)?;
        let bind = |port| async move {
            let addr = SocketAddr::new(config.bind, port);
            TcpListener::bind(addr)
                .await
                .map_err(|source| EmulatorError::Bind { addr, source })
        };
        let listener = bind(config.port).await?;
        let admin_listener = bind(config.admin_port).await?;
        let endpoint = local_addr(&listener, config.bind, config.port)?;
        let admin = local_addr(&admin_listener, config.bind, config.admin_port)?;
        let service = Arc::new(Service::new(&config));
        service.set_bases(format!("http://{endpoint}"), format!("ws://{endpoint}"));
        let faults = FaultControl::new(service.clone());
        let app = Router::new()
            .route("/", post(api::ssm))
            .route(
                "/v1/data-channel/{session_id}",
                post(api::create_data_channel).get(relay::upgrade),
            )
            .with_state(service.clone());
        // A capability URL: the admin endpoint answers only under a random path, so another
        // program on the machine (a web page in a browser, say) cannot trigger faults by
        // guessing the port. From the OS's randomness, not the seeded RNG, so that a known
        // seed does not give the token away.
        let admin_token = hex::encode(rand::random::<[u8; 16]>());
        let admin_app = Router::new().nest(
            &format!("/{admin_token}"),
            admin::router(faults.clone(), service.events.clone()),
        );
        let servers = vec![
            serve(listener, app, &service),
            serve(admin_listener, admin_app, &service),
        ];
        tracing::info!(%endpoint, %admin, "emulator listening");
        Ok(Self {
            service,
            faults,
            endpoint,
            admin,
            admin_token,
            servers,
        })
    }

    /// The SSM endpoint URL to give clients (`--endpoint-url`), e.g. `http://127.0.0.1:40123`.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.endpoint)
    }

    /// The admin endpoint URL with its secret path, e.g.
    /// `http://127.0.0.1:40124/5f0c…`; every admin route is below it.
    pub fn admin_url(&self) -> String {
        format!("http://{}/{}", self.admin, self.admin_token)
    }

    /// The event log.
    pub fn events(&self) -> &EventLog {
        &self.service.events
    }

    /// Triggers faults and changes fault settings at runtime.
    pub fn faults(&self) -> &FaultControl {
        &self.faults
    }

    /// Stops the agents, closes every socket and stops both servers.
    pub async fn shutdown(self) {
        self.service.shutdown_all().await;
        for server in self.servers {
            let _ = server.await;
        }
    }
}

fn local_addr(
    listener: &TcpListener,
    ip: std::net::IpAddr,
    port: u16,
) -> Result<SocketAddr, EmulatorError> {
    listener.local_addr().map_err(|source| EmulatorError::Bind {
        addr: SocketAddr::new(ip, port),
        source,
    })
}

fn serve(listener: TcpListener, app: Router, service: &Service) -> JoinHandle<()> {
    let mut shutdown = service.shutdown.subscribe();
    tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        // Go (the real service's and agent's language) sets TCP_NODELAY on every connection;
        // with Nagle on, each small frame waits for the peer's delayed ACK (~40 ms).
        let listener = listener.tap_io(|stream| {
            let _ = stream.set_nodelay(true);
        });
        if let Err(err) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::warn!(%err, "server ended with an error");
        }
    })
}
