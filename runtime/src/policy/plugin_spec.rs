//! What the policy file says about a plugin: where it comes from, its config, limits and
//! grants. Parsed here, consumed by the plugin host.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::events::Role;

/// Prefix that names a plugin embedded in the binary.
pub const BUILTIN_PREFIX: &str = "builtin:";

/// Where a plugin's component comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PluginSource {
    /// A component embedded in the binary (`builtin:NAME`).
    Builtin(String),
    /// A `.wasm` file (absolute, or made absolute against the policy file's directory).
    File(PathBuf),
}

impl PluginSource {
    /// Reads `plugin = "…"`: `builtin:NAME` or a path, relative paths against `base`.
    pub fn parse(text: &str, base: &Path) -> Self {
        match text.strip_prefix(BUILTIN_PREFIX) {
            Some(name) => Self::Builtin(name.to_owned()),
            None => Self::File(base.join(text)),
        }
    }
}

impl fmt::Display for PluginSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Builtin(name) => write!(f, "{BUILTIN_PREFIX}{name}"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The sha256 a plugin entry pins its component to (`sha256 = "…"`): the plugin is refused
/// unless the bytes read at load time hash to it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Pin(pub [u8; 32]);

impl Sha256Pin {
    /// Reads 64 lowercase hexadecimal digits; `None` for anything else. Only lowercase, so
    /// that a pin has one spelling and the policy file compares equal to `plugin pin`'s line.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut digest = [0u8; 32];
        hex::decode_to_slice(text, &mut digest).ok()?;
        Some(Self(digest))
    }
}

impl fmt::Display for Sha256Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Pin({self})")
    }
}

/// Per-call limits of a plugin instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest linear memory, bytes (`memory_mb` in the policy file).
    pub memory: u64,
    /// CPU budget per call (`cpu`), measured in 10 ms epoch ticks while wasm runs.
    pub cpu: Duration,
    /// Wall-clock limit per call (`timeout`), including time blocked in host calls.
    pub timeout: Duration,
}

impl Limits {
    /// Default limits for a role: decisions and hooks must be quick; a probe waits on the
    /// network.
    pub fn default_for(role: Role) -> Self {
        match role {
            Role::ReconnectPolicy | Role::EventHook => Self {
                memory: 32 << 20,
                cpu: Duration::from_millis(50),
                timeout: Duration::from_secs(1),
            },
            Role::HealthCheck => Self {
                memory: 32 << 20,
                cpu: Duration::from_millis(200),
                timeout: Duration::from_secs(5),
            },
        }
    }
}

/// Capabilities granted to a plugin (`grants = [...]`); everything else is denied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// `tunnel-tcp`: open TCP connections through the tunnel.
    pub tunnel_tcp: bool,
}

impl Grants {
    /// Every grant name the policy file accepts.
    pub const NAMES: &'static [&'static str] = &["tunnel-tcp"];

    /// Adds the grant called `name`; `false` when no grant has that name.
    pub fn add(&mut self, name: &str) -> bool {
        match name {
            "tunnel-tcp" => self.tunnel_tcp = true,
            _ => return false,
        }
        true
    }
}

/// One plugin entry of the policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginSpec {
    /// `plugin = "…"`.
    pub source: PluginSource,
    /// The `config` table as a JSON object, passed to `init`.
    pub config: String,
    /// Limits per call.
    pub limits: Limits,
    /// Capabilities.
    pub grants: Grants,
    /// `sha256 = "…"`: the component must hash to this, else it is refused.
    pub sha256: Option<Sha256Pin>,
}

impl PluginSpec {
    /// A plugin with the role's default limits, no grants and an empty config.
    pub fn new(source: PluginSource, role: Role) -> Self {
        Self {
            source,
            config: "{}".to_owned(),
            limits: Limits::default_for(role),
            grants: Grants::default(),
            sha256: None,
        }
    }
}

/// A `[[tunnel.health_check]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckSpec {
    /// The plugin.
    pub plugin: PluginSpec,
    /// Time between runs (`interval`).
    pub interval: Duration,
    /// Consecutive unhealthy runs after which the reconnect policy is asked
    /// (`unhealthy_after`).
    pub unhealthy_after: u32,
}

/// Default `interval` of a health check.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(30);
/// Default `unhealthy_after` of a health check.
pub const DEFAULT_UNHEALTHY_AFTER: u32 = 3;

/// The plugins of one tunnel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TunnelPluginSpecs {
    /// `[tunnel.reconnect]`; `None`: the built-in policy decides.
    pub reconnect: Option<PluginSpec>,
    /// `[[tunnel.health_check]]`.
    pub health_checks: Vec<HealthCheckSpec>,
    /// `[[tunnel.hook]]`.
    pub hooks: Vec<PluginSpec>,
}

impl TunnelPluginSpecs {
    /// Every plugin entry with its role.
    pub fn entries(&self) -> impl Iterator<Item = (Role, &PluginSpec)> {
        self.reconnect
            .iter()
            .map(|p| (Role::ReconnectPolicy, p))
            .chain(
                self.health_checks
                    .iter()
                    .map(|h| (Role::HealthCheck, &h.plugin)),
            )
            .chain(self.hooks.iter().map(|p| (Role::EventHook, p)))
    }
}
