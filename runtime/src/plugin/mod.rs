//! The plugin host: wasmtime 48 components consulted for decisions, never on the byte path.
//!
//! * [`PluginEngine`]: one engine per process; compiles plugins (cached on disk by content
//!   hash and engine compatibility hash), detects their world from their exports and links
//!   them once.
//! * [`PluginInstance`]: a plugin started for one tunnel and role, in its own store with a
//!   memory cap, a CPU budget per call (epoch interruption), a wall-clock timeout per call
//!   and an empty WASI context; only the capabilities its policy entry grants work. Any
//!   trap, timeout or bad answer drops the instance (the next call starts a fresh one) and
//!   returns a [`CallFailure`], upon which the caller's built-in fallback decides; repeated
//!   failures quarantine the plugin with backoff.
//! * [`TunnelPlugins`]: a tunnel's complete plugin set, swapped atomically on reload.
//!
//! The WIT contract is `wit/` at the repository root; the default plugins are embedded
//! ([`crate::builtin`]).

mod bindings;
mod cache;
mod capability;
mod compile;
mod convert;
mod engine;
mod error;
mod instance;
mod rate;
mod sandbox;
mod set;
pub mod text;
mod trusted_dir;

pub use cache::{
    CACHE_MAX_ENV, CacheCleared, CacheEntry, CacheError, CacheListing, DEFAULT_CACHE_MAX_BYTES,
};
pub use capability::{TcpTarget, TunnelLink};
pub use compile::{
    CompileOptions, DEFAULT_COMPILE_MEMORY, DEFAULT_COMPILE_TIMEOUT, Isolation, compile_worker_main,
};
pub use engine::{LoadedPlugin, PACKAGE_VERSION, PluginEngine};
pub use error::{CallFailure, LoadError};
pub use instance::{PluginInfo, PluginInstance, QUARANTINE_AFTER, TunnelInfo};
pub use set::{HealthCheck, TunnelPlugins};

/// The WIT types, for `plugin test` and tests.
pub mod wit {
    pub use super::bindings::types::*;
}
