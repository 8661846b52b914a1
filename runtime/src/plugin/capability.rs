//! What a plugin may ask of the host: `host.log` and, when granted, `tunnel-tcp`.
//!
//! Every import checks its grant and arguments here, in one place, and answers a denial
//! with a typed error (`tcp-error.denied`), never a trap, so a plugin can degrade.
//! `tunnel-tcp` connects to the tunnel's own local listener: the probe's bytes take exactly
//! the path an application's do (listener → smux stream → agent → destination), which is
//! what a health check is for.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use wasmtime::component::Resource;

use super::bindings::{host, tunnel_tcp, types};
use super::rate::{self, Admit, PluginRates};
use super::sandbox::StoreState;
use super::text;
use crate::events::{TunnelState, TunnelStatus};
use crate::policy::{Grants, LocalAddress};

use tunnel_tcp::TcpError;

/// Connections a probe may hold open at once. How fast it may open them is limited too
/// (`rate::CONNECT_BURST`, `rate::CONNECT_EVERY`).
const MAX_CONNECTIONS: usize = 4;
/// Longest wait any `tunnel-tcp` operation may ask for.
const MAX_WAIT_MS: u32 = 60_000;
/// Largest `read`.
const MAX_READ: u32 = 65_536;
/// Bytes one call may write through all its connections together (and the largest single
/// `write`). With the read budget, a probe run moves at most 512 KiB: a health check needs
/// a few KiB, and its traffic stays small next to the application's at any `interval`.
const WRITE_BUDGET: usize = 256 << 10;
/// Bytes one call may read through all its connections together.
const READ_BUDGET: usize = 256 << 10;

/// The `tunnel-tcp` resource: an id into [`HostContext`]'s connections.
#[allow(unreachable_pub)] // named by the generated bindings
pub struct ProbeConnection {
    id: u32,
}

/// Where `tunnel-tcp` connects, and how to tell whether the tunnel is forwarding.
#[derive(Clone, Debug)]
pub struct TcpTarget {
    /// The tunnel's local end (an unspecified TCP address is reached on loopback).
    pub address: LocalAddress,
    /// The tunnel's status; `None` (e.g. `plugin test --connect`): always assumed up.
    pub status: Option<watch::Receiver<TunnelStatus>>,
}

impl TcpTarget {
    /// A target for a local end bound to `local`.
    pub fn listener(local: &LocalAddress, status: Option<watch::Receiver<TunnelStatus>>) -> Self {
        let address = match local {
            LocalAddress::Tcp(addr) => {
                let ip = match addr.ip() {
                    IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                    ip => ip,
                };
                LocalAddress::Tcp(SocketAddr::new(ip, addr.port()))
            }
            other @ (LocalAddress::Unix(_) | LocalAddress::Stdio) => other.clone(),
        };
        Self { address, status }
    }

    async fn connect(&self) -> std::io::Result<ProbeStream> {
        match &self.address {
            LocalAddress::Tcp(addr) => {
                let stream = TcpStream::connect(addr).await?;
                let _ = stream.set_nodelay(true);
                Ok(ProbeStream::Tcp(stream))
            }
            #[cfg(unix)]
            LocalAddress::Unix(path) => Ok(ProbeStream::Unix(
                tokio::net::UnixStream::connect(path).await?,
            )),
            #[cfg(not(unix))]
            LocalAddress::Unix(_) => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "Unix sockets need a Unix system",
            )),
            LocalAddress::Stdio => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "a tunnel on stdin/stdout has no local end to connect to",
            )),
        }
    }
}

/// A probe's connection to the tunnel's local end.
enum ProbeStream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl ProbeStream {
    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Tcp(s) => s.write_all(data).await,
            #[cfg(unix)]
            Self::Unix(s) => s.write_all(data).await,
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Tcp(s) => s.read(buf).await,
            #[cfg(unix)]
            Self::Unix(s) => s.read(buf).await,
        }
    }
}

/// Where a tunnel's plugins reach it: filled in once the tunnel's listener is bound, shared
/// by every plugin set (initial and reloaded) of that tunnel.
#[derive(Clone, Debug, Default)]
pub struct TunnelLink(Arc<OnceLock<TcpTarget>>);

impl TunnelLink {
    /// A link to nothing yet: `tunnel-tcp` answers `tunnel-down` until [`set`](Self::set).
    pub fn new() -> Self {
        Self::default()
    }

    /// A link to `target` at once (e.g. `plugin test --connect`).
    pub fn to(target: TcpTarget) -> Self {
        let link = Self::new();
        link.set(target);
        link
    }

    /// Points the link at the tunnel; later calls are ignored (a tunnel binds once).
    pub fn set(&self, target: TcpTarget) {
        let _ = self.0.set(target);
    }

    pub(crate) fn get(&self) -> Option<&TcpTarget> {
        self.0.get()
    }
}

/// Per-instance host state behind the imports.
#[derive(Default)]
pub(crate) struct HostContext {
    plugin: String,
    tunnel: String,
    grants: Grants,
    link: TunnelLink,
    /// Rate limits shared by every instance of the plugin.
    rates: PluginRates,
    conns: HashMap<u32, Option<ProbeStream>>,
    next_conn: u32,
    /// Bytes written and read by the current call.
    written: usize,
    read: usize,
    /// The session the current call is about (`host.call-session`).
    pub(crate) call_session: Option<types::SessionRef>,
}

impl HostContext {
    /// A template for the instances of a plugin serving `tunnel`.
    pub(crate) fn new(tunnel: &str, link: TunnelLink, rates: PluginRates) -> Self {
        Self {
            tunnel: tunnel.to_owned(),
            link,
            rates,
            ..Self::default()
        }
    }

    /// A fresh context for one instance; the rate limits carry over (a fresh instance does
    /// not get a fresh allowance).
    pub(crate) fn for_instance(&self, plugin: &str, grants: Grants) -> Self {
        Self {
            plugin: plugin.to_owned(),
            tunnel: self.tunnel.clone(),
            grants,
            link: self.link.clone(),
            rates: self.rates.clone(),
            ..Self::default()
        }
    }

    /// Called before every call: per-call budgets start again.
    pub(crate) fn begin_call(&mut self) {
        self.written = 0;
        self.read = 0;
    }

    /// Closes every connection the plugin opened (at the end of each probe).
    pub(crate) fn close_all(&mut self) {
        self.conns.clear();
    }

    fn stream(
        &mut self,
        conn: &Resource<ProbeConnection>,
        table: &wasmtime::component::ResourceTable,
    ) -> Result<&mut ProbeStream, TcpError> {
        let id = table.get(conn).map_err(|_| TcpError::Closed)?.id;
        self.conns
            .get_mut(&id)
            .and_then(Option::as_mut)
            .ok_or(TcpError::Closed)
    }
}

fn wait(timeout_ms: u32) -> Result<Duration, TcpError> {
    if timeout_ms == 0 || timeout_ms > MAX_WAIT_MS {
        return Err(TcpError::InvalidArgument(format!(
            "timeout-ms must be 1..={MAX_WAIT_MS}, got {timeout_ms}"
        )));
    }
    Ok(Duration::from_millis(u64::from(timeout_ms)))
}

impl types::Host for StoreState {}

impl host::Host for StoreState {
    async fn log(&mut self, level: types::LogLevel, message: String) -> wasmtime::Result<()> {
        let host = &self.host;
        let (plugin, tunnel) = (&host.plugin, &host.tunnel);
        match rate::lock(&host.rates.log).admit(std::time::Instant::now()) {
            Admit::Drop => return Ok(()),
            Admit::Write { suppressed: 0 } => {}
            Admit::Write { suppressed } => {
                tracing::warn!(plugin = %plugin, tunnel = %tunnel, suppressed,
                    "plugin log lines suppressed: more than {} at once or {} a minute",
                    rate::LOG_BURST, Duration::from_secs(60).as_millis() / rate::LOG_EVERY.as_millis());
            }
        }
        let message = text::bounded_owned(message, text::MAX_LOG_LINE);
        match level {
            types::LogLevel::Trace => {
                tracing::trace!(plugin = %plugin, tunnel = %tunnel, "{message}")
            }
            types::LogLevel::Debug => {
                tracing::debug!(plugin = %plugin, tunnel = %tunnel, "{message}")
            }
            types::LogLevel::Info => {
                tracing::info!(plugin = %plugin, tunnel = %tunnel, "{message}")
            }
            types::LogLevel::Warn => {
                tracing::warn!(plugin = %plugin, tunnel = %tunnel, "{message}")
            }
            types::LogLevel::Error => {
                tracing::error!(plugin = %plugin, tunnel = %tunnel, "{message}")
            }
        }
        Ok(())
    }

    async fn call_session(&mut self) -> wasmtime::Result<Option<types::SessionRef>> {
        Ok(self.host.call_session.clone())
    }
}

impl tunnel_tcp::Host for StoreState {
    async fn connect(
        &mut self,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<Resource<ProbeConnection>, TcpError>> {
        let host = &mut self.host;
        if !host.grants.tunnel_tcp {
            return Ok(Err(TcpError::Denied(
                "tunnel-tcp is not granted to this plugin (add grants = [\"tunnel-tcp\"])".into(),
            )));
        }
        let timeout = match wait(timeout_ms) {
            Ok(t) => t,
            Err(e) => return Ok(Err(e)),
        };
        if host.conns.values().filter(|c| c.is_some()).count() >= MAX_CONNECTIONS {
            return Ok(Err(TcpError::Denied(format!(
                "at most {MAX_CONNECTIONS} open connections per call"
            ))));
        }
        let Some(target) = host.link.get().cloned() else {
            return Ok(Err(TcpError::TunnelDown));
        };
        if let Some(status) = &target.status
            && status.borrow().state != TunnelState::Forwarding
        {
            return Ok(Err(TcpError::TunnelDown));
        }
        // Each connection is a stream through the tunnel (and two events): opening them as
        // fast as possible would load the tunnel the probe is meant to check.
        if !rate::lock(&host.rates.connects).take(std::time::Instant::now()) {
            return Ok(Err(TcpError::Denied(format!(
                "connection rate limit: at most {} at once, then {} a second",
                rate::CONNECT_BURST,
                Duration::from_secs(1).as_millis() / rate::CONNECT_EVERY.as_millis()
            ))));
        }
        let stream = match tokio::time::timeout(timeout, target.connect()).await {
            Err(_) => return Ok(Err(TcpError::Timeout)),
            Ok(Err(err)) => return Ok(Err(TcpError::Unreachable(err.to_string()))),
            Ok(Ok(stream)) => stream,
        };
        let id = host.next_conn;
        host.next_conn = host.next_conn.wrapping_add(1);
        host.conns.insert(id, Some(stream));
        Ok(Ok(self.table.push(ProbeConnection { id })?))
    }
}

impl tunnel_tcp::HostConnection for StoreState {
    async fn write(
        &mut self,
        conn: Resource<ProbeConnection>,
        data: Vec<u8>,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<(), TcpError>> {
        let timeout = match wait(timeout_ms) {
            Ok(t) => t,
            Err(e) => return Ok(Err(e)),
        };
        if data.len() > WRITE_BUDGET {
            return Ok(Err(TcpError::InvalidArgument(format!(
                "data: at most {WRITE_BUDGET} bytes per write"
            ))));
        }
        let written = self.host.written.saturating_add(data.len());
        if written > WRITE_BUDGET {
            return Ok(Err(TcpError::Denied(format!(
                "byte budget: at most {WRITE_BUDGET} bytes written per call"
            ))));
        }
        let stream = match self.host.stream(&conn, &self.table) {
            Ok(s) => s,
            Err(e) => return Ok(Err(e)),
        };
        let result = match tokio::time::timeout(timeout, stream.write_all(&data)).await {
            Err(_) => Err(TcpError::Timeout),
            Ok(Err(err)) => Err(io_error(&err)),
            Ok(Ok(())) => Ok(()),
        };
        // All of `data` counts, whatever the outcome: a write that timed out or failed may
        // have sent part of it.
        self.host.written = written;
        Ok(result)
    }

    async fn read(
        &mut self,
        conn: Resource<ProbeConnection>,
        max_bytes: u32,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, TcpError>> {
        let timeout = match wait(timeout_ms) {
            Ok(t) => t,
            Err(e) => return Ok(Err(e)),
        };
        if max_bytes == 0 || max_bytes > MAX_READ {
            return Ok(Err(TcpError::InvalidArgument(format!(
                "max-bytes must be 1..={MAX_READ}, got {max_bytes}"
            ))));
        }
        let left = READ_BUDGET.saturating_sub(self.host.read);
        if left == 0 {
            return Ok(Err(TcpError::Denied(format!(
                "byte budget: at most {READ_BUDGET} bytes read per call"
            ))));
        }
        let stream = match self.host.stream(&conn, &self.table) {
            Ok(s) => s,
            Err(e) => return Ok(Err(e)),
        };
        // "Up to max-bytes": the last read of a call's budget returns fewer.
        let mut buf = vec![0; (max_bytes as usize).min(left)];
        let result = match tokio::time::timeout(timeout, stream.read(&mut buf)).await {
            Err(_) => Err(TcpError::Timeout),
            Ok(Err(err)) => Err(io_error(&err)),
            Ok(Ok(n)) => {
                buf.truncate(n);
                Ok(buf)
            }
        };
        if let Ok(data) = &result {
            self.host.read += data.len();
        }
        Ok(result)
    }

    async fn close(&mut self, conn: Resource<ProbeConnection>) -> wasmtime::Result<()> {
        if let Ok(c) = self.table.get(&conn) {
            let id = c.id;
            if let Some(slot) = self.host.conns.get_mut(&id) {
                *slot = None;
            }
        }
        Ok(())
    }

    async fn drop(&mut self, conn: Resource<ProbeConnection>) -> wasmtime::Result<()> {
        let c = self.table.delete(conn)?;
        self.host.conns.remove(&c.id);
        Ok(())
    }
}

fn io_error(err: &std::io::Error) -> TcpError {
    use std::io::ErrorKind;
    match err.kind() {
        ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe
        | ErrorKind::UnexpectedEof => TcpError::Closed,
        _ => TcpError::Other(err.to_string()),
    }
}
