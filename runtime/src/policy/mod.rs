//! The policy file: which tunnels to keep up, and how.
//!
//! `ssm-tether run tunnels.toml` and `ssm-tether check tunnels.toml` read a TOML file such as
//! `examples/tunnels.toml`:
//!
//! ```toml
//! [defaults]                  # optional; any AWS, transport or recovery key
//! region = "us-east-1"
//! profile = "prod"
//! ping_interval = "20s"
//!
//! [defaults.recovery]
//! max_delay = "1m"
//!
//! [[tunnel]]
//! name = "db"
//! target = "i-0123456789abcdef0"
//! remote_port = 5432
//! remote_host = "db.internal"   # → AWS-StartPortForwardingSessionToRemoteHost
//! local = "127.0.0.1:15432"
//! ```
//!
//! # Keys
//!
//! Top level: `[defaults]` (optional table) and `[[tunnel]]` (one or more tables).
//!
//! `[metrics]` (optional table, top level): serve `GET /metrics` (Prometheus text format),
//! `GET /healthz` and `GET /readyz` over HTTP ([`MetricsSettings`]).
//! * `listen` (default `"127.0.0.1:9464"`): `"IP:PORT"`, `"[IPv6]:PORT"`, `"localhost:PORT"`
//!   or a bare port; port 0 picks a free port (logged). Non-loopback addresses need
//!   `allow_non_loopback = true` in the same table: the endpoints need no credentials.
//! * `allow_non_loopback` (default `false`): see `listen`.
//!
//! In `[[tunnel]]` only:
//! * `name` (required): unique, `[A-Za-z0-9_.-]+`; names the tunnel in logs and events.
//! * `target` (required): the managed node, `i-…`, `mi-…` or an ECS target `ecs:…`; or
//!   `tag:KEY=VALUE`: the online managed node with that tag (the lowest instance id of several),
//!   looked up again before every StartSession (never for a resume), so that a replaced
//!   bastion is found again (`aws::TagSelector`).
//! * `remote_port` (required): 1–65535, the port on the target (or on `remote_host`).
//! * `remote_host` (optional): a host name or IP resolved *by the agent*; selects the document
//!   `AWS-StartPortForwardingSessionToRemoteHost` instead of `AWS-StartPortForwardingSession`.
//! * `local` (optional): where to listen: `"IP:PORT"`, `"[IPv6]:PORT"`, `"localhost:PORT"`,
//!   or a bare port (`"15432"` or `15432`) meaning `127.0.0.1:PORT`. Default
//!   `127.0.0.1:<remote_port>`. Port 0 picks a free port at bind time. Non-loopback addresses
//!   (e.g. `0.0.0.0`) expose the tunnel to the network and need `allow_non_loopback = true`.
//!   `"unix:PATH"` listens on a Unix socket instead (created with mode 0600, a relative
//!   path is relative to the policy file; a stale socket file left by a previous run is
//!   replaced, a live one is an error).
//! * `allow_non_loopback` (optional, default `false`): see `local`.
//!
//! In `[[tunnel]]` or `[defaults]` (a tunnel's value wins over `[defaults]`, which wins over the
//! built-in default):
//! * `region`: AWS region (default: the SDK's resolution — `AWS_REGION`, the profile …).
//! * `profile`: shared-config profile (default: `AWS_PROFILE` or `default`).
//! * `endpoint_url`: the SSM API endpoint, `http(s)://host[:port]`; the emulator is reached
//!   this way. Default: the region's public endpoint. Plain `http://` only to this machine
//!   (loopback), unless `allow_insecure_endpoint = true`: the session token would cross the
//!   network unencrypted.
//! * `allow_insecure_endpoint` (default `false`): see `endpoint_url` and
//!   `ssmmessages_endpoint`.
//! * `proxy` (default: the proxy variables, `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, lowercase
//!   first): `"http://[user:password@]host[:port]"`, the HTTP proxy for the SDK's calls and the
//!   data channel (`CONNECT`). `NO_PROXY` applies either way. Errors never quote the value
//!   (`transport::proxy`).
//! * `ssmmessages_endpoint` (default: the StreamUrl's host): `"HOST"`, `"HOST:PORT"` or
//!   `"wss://HOST[:PORT]"`, where the data channel is dialled instead (a VPC interface
//!   endpoint); the upgrade is signed for that host, service `ssmmessages`. `ws://` only to
//!   loopback unless `allow_insecure_endpoint`.
//! * `use_fips`, `use_dual_stack` (default: the SDK's resolution): FIPS / dual-stack endpoints
//!   for the SDK's calls.
//!
//! Every duration is at most 30 days; the file itself at most 1 MiB, and a warning says so
//! when the policy file or a plugin file is writable by group or others.
//! * `aws_config_file`, `aws_credentials_file`: shared config / credentials files to read instead
//!   of `~/.aws/config` / `~/.aws/credentials` (like `AWS_CONFIG_FILE` /
//!   `AWS_SHARED_CREDENTIALS_FILE`); relative paths are relative to the policy file. Both are
//!   re-read on every API call, so rewriting them rotates credentials of running tunnels.
//! * `reason`: free text (1–256 characters) sent as StartSession `Reason`, visible in CloudTrail.
//! * `ping_interval` (default `20s`): WebSocket ping period.
//! * `pong_timeout` (default `30s`): a socket without a pong for this long is dead (black-hole
//!   detection). Must be longer than `ping_interval`.
//! * `[recovery]` sub-table (`[defaults.recovery]`, `[tunnel.recovery]`), the built-in reconnect
//!   policy, merged key by key:
//!   * `base_delay` (default `200ms`): first backoff delay after an unplanned disconnect.
//!   * `max_delay` (default `30s`): backoff cap; must be ≥ `base_delay`.
//!   * `resume_attempts_before_restart` (default `10`, ≥ 1): failed ResumeSession/reconnect
//!     attempts before a fresh StartSession.
//!   * `give_up_after` (default `"never"`): give up (exit non-zero) after the tunnel has been
//!     down this long.
//!   * `stable_after` (default `60s`): a connection up this long resets the attempt budget
//!     of unplanned outages (planned recycles never count against it).
//! * `sessions` (default `1`, 1–16): sessions to open to the target; new connections go to
//!   the least-loaded one and each recovers on its own. The real agent paces each session to
//!   about 1 MB/s per direction, so K sessions carry about K MB/s.
//! * `max_session_duration` (default: unset): the maximum session duration of the
//!   account's Session Manager preferences (1s–24h; the service allows 1–1440 minutes).
//!   When set, every session is rotated make-before-break: `rotate_before` ahead of its end
//!   a successor is started; new connections go to it once it forwards; connections on the
//!   old session keep working until it ends, and those still open then are closed.
//! * `rotate_before` (default `2m`): see `max_session_duration`; shorter than it.
//! * `slow_reader_buffer` (default `"16MiB"`, 64KiB–4GiB): bytes queued for one local
//!   connection whose application does not read, beyond which that connection alone is
//!   closed. Sizes are bytes (an integer) or strings such as `"512KiB"`, `"16MiB"`, `"1GiB"`.
//! * `slow_reader_tunnel_buffer` (default `"64MiB"`, at least `slow_reader_buffer`): bytes
//!   queued for all connections of the tunnel, beyond which the largest backlog is closed
//!   first.
//! * `slow_reader_timeout` (default `60s`): a connection whose application accepts no byte
//!   for this long while data waits for it is closed.
//!
//! * Plugins (a tunnel's table for a role replaces `[defaults]`' table for that role):
//!   * `[reconnect]` (one table): the reconnect-policy plugin; without it the built-in
//!     policy (`[recovery]`) decides. The built-in policy is also the fallback whenever the
//!     plugin fails.
//!   * `[[health_check]]` (array): health-check plugins. Extra keys: `interval` (default
//!     `30s`) and `unhealthy_after` (default `3`, ≥ 1): consecutive unhealthy runs after
//!     which the reconnect policy is asked (cause `probe-failed`).
//!   * `[[hook]]` (array): event-hook plugins, given every lifecycle event.
//!
//!   Every plugin entry takes `plugin` (required: `"PATH.wasm"`, relative to the policy file,
//!   or `"builtin:NAME"` for `exponential-backoff`, `tcp-connect`, `http`, `log`), `config`
//!   (a table, given to the plugin's `init` as JSON), `grants` (capabilities, e.g.
//!   `["tunnel-tcp"]`; default none), and the limits `memory_mb` (2–4096, default 32),
//!   `cpu` (CPU budget per call, default `50ms`, `200ms` for health checks) and `timeout`
//!   (wall clock per call, at most `5m`; default `1s`, `5s` for health checks), and
//!   `sha256` (optional: 64 lowercase hex digits, as `ssm-tether plugin pin FILE` prints
//!   them; the plugin is refused at `check`, start and reload unless its bytes hash to it —
//!   a pinned `builtin:` changes with every ssm-tether release that changes it).
//!
//! Durations are humantime strings: `250ms`, `2s`, `1m 30s`, `1h`. Unknown keys are errors, so a
//! typo cannot silently fall back to a default. Every error names `file:line:column`, the field
//! path and the bad value ([`PolicyError`]).

mod error;
mod parse;
mod plugin_spec;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{Location, PolicyError};
pub use plugin_spec::{
    BUILTIN_PREFIX, DEFAULT_PROBE_INTERVAL, DEFAULT_UNHEALTHY_AFTER, Grants, HealthCheckSpec,
    Limits, PluginSource, PluginSpec, Role, Sha256Pin, TunnelPluginSpecs,
};

pub use crate::aws::AwsSettings;

/// Document used when the tunnel ends on the target itself.
pub const DOCUMENT_PORT_FORWARDING: &str = "AWS-StartPortForwardingSession";
/// Document used when the agent dials `remote_host` on the tunnel's behalf.
pub const DOCUMENT_PORT_FORWARDING_TO_REMOTE_HOST: &str =
    "AWS-StartPortForwardingSessionToRemoteHost";

/// Built-in `ping_interval`.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(20);
/// Built-in `pong_timeout`.
pub const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(30);
/// Built-in `recovery.base_delay`.
pub const DEFAULT_BASE_DELAY: Duration = Duration::from_millis(200);
/// Built-in `recovery.max_delay`.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(30);
/// Built-in `recovery.resume_attempts_before_restart`.
///
/// A session that is really gone is detected explicitly (no token, `DoesNotExist`,
/// `channel_closed`) and restarted at once; failures that leave the session alive (expired
/// credentials, throttling, a service blip) are better ridden out, since a restart costs every
/// open connection. Ten backed-off attempts span about a minute with the default delays.
pub const DEFAULT_RESUME_ATTEMPTS_BEFORE_RESTART: u32 = 10;
/// Built-in `recovery.stable_after`.
pub const DEFAULT_STABLE_AFTER: Duration = Duration::from_secs(60);
/// Built-in `sessions`.
pub const DEFAULT_SESSIONS: u8 = 1;
/// Most sessions one tunnel may stripe over.
pub const MAX_SESSIONS: u8 = 16;
/// Built-in `rotate_before`.
pub const DEFAULT_ROTATE_BEFORE: Duration = Duration::from_secs(120);
/// Shortest `max_session_duration` accepted. The service's own range is 1–1440 minutes;
/// shorter values exist for compressed-time runs against the emulator.
pub const MIN_SESSION_DURATION: Duration = Duration::from_secs(1);
/// Longest `max_session_duration` accepted (the service's 1440 minutes).
pub const MAX_SESSION_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Built-in `slow_reader_buffer`.
pub const DEFAULT_SLOW_READER_BUFFER: u64 = 16 << 20;
/// Built-in `slow_reader_tunnel_buffer`.
pub const DEFAULT_SLOW_READER_TUNNEL_BUFFER: u64 = 64 << 20;
/// Built-in `slow_reader_timeout`.
pub const DEFAULT_SLOW_READER_TIMEOUT: Duration = Duration::from_secs(60);
/// Smallest `slow_reader_buffer` accepted: one smux frame must fit.
pub const MIN_SLOW_READER_BUFFER: u64 = 64 << 10;
/// Largest `slow_reader_buffer` / `slow_reader_tunnel_buffer` accepted.
pub const MAX_SLOW_READER_BUFFER: u64 = 4 << 30;

/// A validated policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The tunnels, in file order, with defaults already merged. Never empty.
    pub tunnels: Vec<TunnelSpec>,
    /// The `[metrics]` table: where to serve metrics and health endpoints; `None`: nowhere.
    pub metrics: Option<MetricsSettings>,
}

/// Where `/metrics`, `/healthz` and `/readyz` are served (`[metrics]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsSettings {
    /// The TCP address to listen on: loopback unless `allow_non_loopback` was set; port 0
    /// picks a free port.
    pub listen: SocketAddr,
}

/// Built-in `[metrics] listen`: loopback, the port conventionally free for exporters.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9464);

/// One tunnel with every setting resolved (tunnel value > `[defaults]` > built-in default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelSpec {
    /// Unique name, `[A-Za-z0-9_.-]+`.
    pub name: String,
    /// The SSM target: `i-…`, `mi-…`, `ecs:…`, or `tag:KEY=VALUE` (resolved before every
    /// StartSession).
    pub target: String,
    /// Port on the target, or on `remote_host` if set.
    pub remote_port: u16,
    /// Host the agent connects to instead of the target itself.
    pub remote_host: Option<String>,
    /// Where connections are accepted.
    pub local: LocalAddress,
    /// StartSession `Reason`, if configured.
    pub reason: Option<String>,
    /// How the SSM API is reached.
    pub aws: AwsSettings,
    /// WebSocket keepalive settings.
    pub transport: TransportSettings,
    /// The built-in reconnect policy.
    pub recovery: RecoverySettings,
    /// Sessions striped over (1–16).
    pub sessions: u8,
    /// Make-before-break rotation ahead of the service's maximum session duration; `None`
    /// when `max_session_duration` is not set.
    pub rotation: Option<RotationSettings>,
    /// Limits for local applications that stop reading.
    pub slow_reader: SlowReaderSettings,
    /// Plugins: reconnect policy, health checks, event hooks.
    pub plugins: TunnelPluginSpecs,
}

/// Where a tunnel accepts local connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LocalAddress {
    /// A TCP listener (port 0: any free port).
    Tcp(SocketAddr),
    /// A Unix socket listener at this path, mode 0600 (`local = "unix:/path"`).
    Unix(PathBuf),
    /// The process's standard input and output: one byte stream, no listener (an SSH
    /// `ProxyCommand`). Not available in policy files; the tunnel ends with the stream.
    Stdio,
}

impl LocalAddress {
    /// The TCP address, if this is a TCP listener.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            Self::Tcp(addr) => Some(*addr),
            Self::Unix(_) | Self::Stdio => None,
        }
    }

    /// Whether this is one existing stream rather than a listener.
    pub fn is_stream(&self) -> bool {
        matches!(self, Self::Stdio)
    }
}

impl From<SocketAddr> for LocalAddress {
    fn from(addr: SocketAddr) -> Self {
        Self::Tcp(addr)
    }
}

impl std::fmt::Display for LocalAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Stdio => f.write_str("stdin/stdout"),
        }
    }
}

/// Make-before-break rotation: `rotate_before` ahead of a session's end a successor is
/// started, new connections go to it, and the predecessor drains until its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationSettings {
    /// The maximum session duration of the account's Session Manager preferences.
    pub max_session_duration: Duration,
    /// How long before that end the successor is started (shorter than the duration).
    pub rotate_before: Duration,
}

/// What a local application that stops reading may cost before its connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowReaderSettings {
    /// Bytes queued for one connection beyond which it is closed (`slow_reader_buffer`).
    pub buffer: u64,
    /// Bytes queued for all connections of the tunnel beyond which the largest backlog is
    /// closed first (`slow_reader_tunnel_buffer`, at least `buffer`).
    pub tunnel_buffer: u64,
    /// How long a connection may accept no byte while data waits for it
    /// (`slow_reader_timeout`).
    pub timeout: Duration,
}

impl Default for SlowReaderSettings {
    fn default() -> Self {
        Self {
            buffer: DEFAULT_SLOW_READER_BUFFER,
            tunnel_buffer: DEFAULT_SLOW_READER_TUNNEL_BUFFER,
            timeout: DEFAULT_SLOW_READER_TIMEOUT,
        }
    }
}

/// WebSocket keepalive: how often to ping and when a silent socket counts as dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportSettings {
    /// Ping period.
    pub ping_interval: Duration,
    /// A socket with no pong (or other frame) for this long is treated as dead. Always longer
    /// than `ping_interval`.
    pub pong_timeout: Duration,
}

impl Default for TransportSettings {
    fn default() -> Self {
        Self {
            ping_interval: DEFAULT_PING_INTERVAL,
            pong_timeout: DEFAULT_PONG_TIMEOUT,
        }
    }
}

/// The built-in reconnect policy (also the fallback when a reconnect-policy plugin fails).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoverySettings {
    /// First backoff delay after an unplanned disconnect (> 0).
    pub base_delay: Duration,
    /// Backoff cap (≥ `base_delay`).
    pub max_delay: Duration,
    /// Failed resume attempts before a fresh StartSession (≥ 1).
    pub resume_attempts_before_restart: u32,
    /// Give up after being down this long; `None`: never.
    pub give_up_after: Option<Duration>,
    /// Being connected this long resets the attempt budget.
    pub stable_after: Duration,
}

impl Default for RecoverySettings {
    fn default() -> Self {
        Self {
            base_delay: DEFAULT_BASE_DELAY,
            max_delay: DEFAULT_MAX_DELAY,
            resume_attempts_before_restart: DEFAULT_RESUME_ATTEMPTS_BEFORE_RESTART,
            give_up_after: None,
            stable_after: DEFAULT_STABLE_AFTER,
        }
    }
}

impl TunnelSpec {
    /// A tunnel with built-in defaults: listening on `127.0.0.1:<remote_port>`, no remote host,
    /// default AWS resolution. Handy for tests and the demo; files go through [`parse`].
    pub fn new(name: impl Into<String>, target: impl Into<String>, remote_port: u16) -> Self {
        Self {
            name: name.into(),
            target: target.into(),
            remote_port,
            remote_host: None,
            local: LocalAddress::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, remote_port))),
            reason: None,
            aws: AwsSettings::default(),
            transport: TransportSettings::default(),
            recovery: RecoverySettings::default(),
            sessions: DEFAULT_SESSIONS,
            rotation: None,
            slow_reader: SlowReaderSettings::default(),
            plugins: TunnelPluginSpecs::default(),
        }
    }

    /// The StartSession document: [`DOCUMENT_PORT_FORWARDING_TO_REMOTE_HOST`] when
    /// `remote_host` is set, else [`DOCUMENT_PORT_FORWARDING`].
    pub fn document_name(&self) -> &'static str {
        if self.remote_host.is_some() {
            DOCUMENT_PORT_FORWARDING_TO_REMOTE_HOST
        } else {
            DOCUMENT_PORT_FORWARDING
        }
    }

    /// The StartSession `Parameters` (docs/protocol.md §7), e.g.
    /// `{"host":["db.internal"],"localPortNumber":["0"],"portNumber":["5432"]}`.
    ///
    /// `localPortNumber` is informational for the service (the agent never sees the client's
    /// listener); "0" is what the document documents as "chosen at run-time".
    pub fn parameters(&self) -> BTreeMap<String, Vec<String>> {
        let mut parameters = BTreeMap::new();
        parameters.insert("portNumber".to_owned(), vec![self.remote_port.to_string()]);
        parameters.insert("localPortNumber".to_owned(), vec!["0".to_owned()]);
        if let Some(host) = &self.remote_host {
            parameters.insert("host".to_owned(), vec![host.clone()]);
        }
        parameters
    }
}

/// Largest policy file read: a policy of a hundred tunnels is a few tens of KiB.
pub const MAX_POLICY_BYTES: u64 = 1 << 20;

/// Reads and validates the policy file at `path`.
///
/// # Errors
/// [`PolicyError::Read`] if the file cannot be read; otherwise as [`parse`], with the path (as
/// given) as the file name in messages.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let display = path.display().to_string();
    let read_error = |source| PolicyError::Read {
        path: display.clone(),
        source,
    };
    let bytes = crate::trusted_file::read(path, MAX_POLICY_BYTES).map_err(|err| match err {
        crate::trusted_file::ReadError::Io(err) => read_error(err),
        other => read_error(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            other.to_string(),
        )),
    })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        read_error(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not UTF-8 text",
        ))
    })?;
    crate::trusted_file::warn_if_writable_by_others(path, "policy file");
    let mut policy = parse(&display, &text)?;
    // Relative AWS file paths mean "next to the policy file", not "in whatever directory the
    // daemon happens to be started from".
    let base = path.parent().unwrap_or(Path::new(""));
    for tunnel in &mut policy.tunnels {
        if let LocalAddress::Unix(path) = &mut tunnel.local
            && path.is_relative()
        {
            *path = base.join(&*path);
        }
        for file in [
            &mut tunnel.aws.config_file,
            &mut tunnel.aws.credentials_file,
        ]
        .into_iter()
        .flatten()
        {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        let plugins = &mut tunnel.plugins;
        let sources = plugins
            .reconnect
            .iter_mut()
            .chain(plugins.health_checks.iter_mut().map(|h| &mut h.plugin))
            .chain(plugins.hooks.iter_mut())
            .map(|p| &mut p.source);
        for source in sources {
            if let PluginSource::File(file) = source {
                if file.is_relative() {
                    *file = base.join(&*file);
                }
                crate::trusted_file::warn_if_writable_by_others(file, "plugin");
            }
        }
    }
    Ok(policy)
}

/// Parses and validates policy text; `source_name` is the file name used in error messages.
///
/// # Errors
/// [`PolicyError::Syntax`] for invalid TOML, [`PolicyError::Invalid`] for unknown, missing,
/// mistyped or out-of-range keys, [`PolicyError::Conflict`] for duplicate tunnel names or local
/// addresses. The first error found is reported. Relative `aws_*_file` paths are kept as
/// written (relative to the working directory); [`load`] resolves them against the file's
/// directory.
pub fn parse(source_name: &str, text: &str) -> Result<Policy, PolicyError> {
    parse::parse(source_name, text)
}
