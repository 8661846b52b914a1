//! # `ssm-tether-plugin`: write ssm-tether plugins in Rust as their logic and nothing else
//!
//! An ssm-tether plugin is a WebAssembly component implementing one of the worlds of the
//! runtime's WIT (`ssm-tether:plugin@0.1.x`, in the repository's `wit/`). This crate holds
//! the generated bindings for all three worlds and the glue every plugin used to repeat:
//!
//! * **one trait per world** — [`HealthCheck`], [`ReconnectPolicy`], [`EventHook`] — whose
//!   implementor is the plugin's state, built once per instance from its configuration;
//! * **config parsing**: `init`'s JSON (the policy file's `config` table) is deserialized
//!   with `serde` into the trait's `Config` type; an error (named key, "did you mean") goes
//!   back to the host as `init`'s error and fails `ssm-tether check` ([`from_json`]);
//! * **`describe` from crate metadata**: name, version and description come from the
//!   plugin's `Cargo.toml` (`CARGO_PKG_NAME`, `CARGO_PKG_VERSION`, `CARGO_PKG_DESCRIPTION`),
//!   each overridable in the macro;
//! * **export macros** — [`health_check!`], [`reconnect_policy!`], [`event_hook!`] — that
//!   wire a type to the component's exports;
//! * **tunnel-tcp helpers** in [`net`]: the [`Tunnel`](net::Tunnel)/[`Conn`](net::Conn)
//!   traits over the host's `tunnel-tcp` import ([`net::HostTunnel`]), reads with deadlines
//!   ([`net::read_until`]), and a scripted [`net::FakeTunnel`] for native tests; plus time
//!   budgets ([`Deadline`], [`usable_budget_ms`]) and [`escape_bytes`] for readable reasons.
//!
//! ## A complete health check
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "redis-ping"
//! version = "0.1.0"
//! edition = "2024"
//! description = "PING through the tunnel, expects +PONG."
//!
//! [lib]
//! crate-type = ["cdylib"]          # built for wasm32-wasip2, a cdylib is a component
//!
//! [dependencies]
//! ssm-tether-plugin = { git = "https://github.com/ssm-tether/ssm-tether" }  # or { path = "…/plugins/sdk" }
//! serde = { version = "1", features = ["derive"] }
//!
//! [profile.release]
//! opt-level = "s"
//! lto = true
//! strip = true
//! panic = "abort"
//! ```
//!
//! `src/lib.rs`:
//!
//! ```
//! use serde::Deserialize;
//! use ssm_tether_plugin::net::{Conn, HostTunnel, Outcome, Tunnel};
//! use ssm_tether_plugin::{HealthCheck, ProbeContext};
//!
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields, default)]
//! pub struct Settings {
//!     timeout_ms: u32,
//! }
//!
//! impl Default for Settings {
//!     fn default() -> Self {
//!         Self { timeout_ms: 1_000 }
//!     }
//! }
//!
//! pub struct RedisPing(Settings);
//!
//! impl HealthCheck for RedisPing {
//!     type Config = Settings;
//!
//!     fn new(settings: Settings) -> Result<Self, String> {
//!         if settings.timeout_ms == 0 {
//!             return Err("`timeout_ms` must be greater than 0".into());
//!         }
//!         Ok(Self(settings))
//!     }
//!
//!     fn check(&mut self, _context: ProbeContext) -> Outcome {
//!         ping(&mut HostTunnel, self.0.timeout_ms)
//!     }
//! }
//!
//! /// The logic, against any [`Tunnel`]: the host's in the component, a fake in tests.
//! pub fn ping(tunnel: &mut impl Tunnel, timeout: u32) -> Outcome {
//!     let mut conn = match tunnel.connect(timeout) {
//!         Ok(conn) => conn,
//!         Err(err) => return ssm_tether_plugin::net::connect_failure(&err),
//!     };
//!     if let Err(err) = conn.write(b"PING\r\n", timeout) {
//!         return Outcome::Unhealthy(format!("write: {err}"));
//!     }
//!     match conn.read(64, timeout) {
//!         Ok(reply) if reply.starts_with(b"+PONG") => Outcome::Healthy,
//!         Ok(reply) => Outcome::Unhealthy(format!("unexpected reply {reply:?}")),
//!         Err(err) => Outcome::Unhealthy(format!("read: {err}")),
//!     }
//! }
//!
//! ssm_tether_plugin::health_check!(RedisPing);
//! # fn main() {
//! #     use std::rc::Rc;
//! #     use ssm_tether_plugin::net::{FakeTunnel, Step};
//! #     let clock = Rc::new(ssm_tether_plugin::FakeClock::default());
//! #     let mut tunnel = FakeTunnel::new(clock, vec![Step::Data(1, b"+PONG\r\n".to_vec())]);
//! #     assert_eq!(ping(&mut tunnel, 1_000), Outcome::Healthy);
//! #     assert_eq!(tunnel.written(), b"PING\r\n");
//! #     assert!(RedisPing::new(ssm_tether_plugin::from_json(r#"{"timeout_ms": 0}"#).unwrap()).is_err());
//! # }
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`: the component is
//! `target/wasm32-wasip2/release/redis_ping.wasm`. The logic takes a [`net::Tunnel`], so
//! `cargo test` drives it natively against a [`net::FakeTunnel`]; only the component calls
//! the host.
//!
//! ## What the macros do
//!
//! `health_check!(T)` defines the component's exports: `describe` from the crate metadata,
//! `init(config)` → [`from_json`]`::<T::Config>` → `T::new`, kept in a per-instance slot,
//! and `check(context)` → `T::check(&mut t, context)`. A `check` before a successful `init`
//! (the host never does that) builds `T` from `{}`. [`reconnect_policy!`] and
//! [`event_hook!`] do the same for `decide` and `on-event`.
//!
//! A config validated by hand instead of by serde is `type Config = RawConfig`: the JSON
//! text as the host sent it, e.g. for [`Config`], which reads it key by key (the default
//! plugins do this).
//!
//! Override the metadata when the plugin's name is not its package name:
//!
//! ```ignore
//! ssm_tether_plugin::health_check!(HttpCheck, name = "http", description = "HTTP request through the tunnel");
//! ```
//!
//! ## Versions
//!
//! The bindings are generated from `wit/` at the same commit as this crate; a plugin built
//! with it declares `ssm-tether:plugin@0.1.1`. Depend on the SDK by `path` (inside this
//! repository or a copy of it) or by `git` (optionally with a `rev`/`tag`), never by
//! copying the bindings.

mod util;

pub mod net;

pub use util::{
    Clock, Config, Deadline, FakeClock, SystemClock, decode_hex, escape_bytes, from_json,
    usable_budget_ms,
};

/// The generated bindings, one crate per world of `ssm-tether:plugin` (every world exports
/// the interface `plugin`, and wit-bindgen's public export macros are named after the
/// interface, so two worlds cannot share a crate). The imported interfaces (`types`, `host`,
/// `tunnel-tcp`) are generated once, in [`health_check`], and shared by the other two; they
/// are re-exported at the crate root as [`types`], [`host`] and [`tunnel_tcp`]. Plugins
/// normally use the traits and macros instead of these modules.
///
/// [`health_check`]: bindings::health_check
pub mod bindings {
    /// World `health-check`: imports `host` and `tunnel-tcp`, exports `plugin` and `health`.
    pub use ssm_tether_plugin_health as health_check;
    /// World `event-hook`: imports `host`, exports `plugin` and `hooks`.
    pub use ssm_tether_plugin_hooks as event_hook;
    /// World `reconnect-policy`: imports `host`, exports `plugin` and `reconnect`.
    pub use ssm_tether_plugin_reconnect as reconnect_policy;
}

pub use bindings::health_check::ssm_tether::plugin::{host, tunnel_tcp, types};
pub use types::{
    Cause, Decision, DecisionContext, LogLevel, PluginInfo, ProbeContext, ProbeOutcome, TunnelEvent,
};

/// A health check (world `health-check`): one probe per scheduled run.
///
/// The implementor is the plugin's state, built by [`new`](Self::new) from the
/// deserialized config when the host calls `init`. Export it with [`health_check!`].
/// See the [crate documentation](crate) for a complete example.
pub trait HealthCheck: Sized + 'static {
    /// The `config` table of the plugin's policy-file entry, deserialized with `serde`
    /// (see [`from_json`]). Use `#[serde(deny_unknown_fields)]` so typos are rejected.
    type Config: serde_core::de::DeserializeOwned + 'static;

    /// Validates the config and builds the check. An `Err` rejects the plugin (startup or
    /// `ssm-tether check` fails); name the offending key in it.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// Runs one probe. Reach the destination through [`net::HostTunnel`] (or the raw
    /// [`tunnel_tcp`] import); write the protocol logic against [`net::Tunnel`] so tests
    /// can drive it with a [`net::FakeTunnel`]. Keep every wait below `context.budget_ms`
    /// ([`usable_budget_ms`], [`Deadline`]).
    fn check(&mut self, context: ProbeContext) -> ProbeOutcome;
}

/// A reconnect policy (world `reconnect-policy`): one decision per disconnect and per
/// failed recovery attempt. Export it with [`reconnect_policy!`].
///
/// ```
/// use ssm_tether_plugin::{Decision, DecisionContext, NoConfig, ReconnectPolicy};
///
/// /// Resumes after 100 ms, gives up after 10 attempts.
/// pub struct Patient;
///
/// impl ReconnectPolicy for Patient {
///     type Config = NoConfig;
///     fn new(_: NoConfig) -> Result<Self, String> {
///         Ok(Self)
///     }
///     fn decide(&mut self, context: DecisionContext) -> Decision {
///         if context.attempt >= 10 {
///             Decision::GiveUp("10 attempts failed".into())
///         } else {
///             Decision::ResumeAfter(100)
///         }
///     }
/// }
///
/// ssm_tether_plugin::reconnect_policy!(Patient);
/// # fn main() {}
/// ```
pub trait ReconnectPolicy: Sized + 'static {
    /// The deserialized `config` table (see [`HealthCheck::Config`]).
    type Config: serde_core::de::DeserializeOwned + 'static;

    /// Validates the config and builds the policy.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// Decides the next recovery step. Must be quick and must not block.
    fn decide(&mut self, context: DecisionContext) -> Decision;
}

/// An event hook (world `event-hook`): every lifecycle event of the tunnels it is attached
/// to. Export it with [`event_hook!`].
///
/// ```
/// use ssm_tether_plugin::{EventHook, LogLevel, NoConfig, TunnelEvent, host};
///
/// pub struct Echo;
///
/// impl EventHook for Echo {
///     type Config = NoConfig;
///     fn new(_: NoConfig) -> Result<Self, String> {
///         Ok(Self)
///     }
///     fn on_event(&mut self, event: TunnelEvent) {
///         host::log(LogLevel::Info, &format!("{} at {}", event.tunnel, event.at_unix_ms));
///     }
/// }
///
/// ssm_tether_plugin::event_hook!(Echo);
/// # fn main() {}
/// ```
pub trait EventHook: Sized + 'static {
    /// The deserialized `config` table (see [`HealthCheck::Config`]).
    type Config: serde_core::de::DeserializeOwned + 'static;

    /// Validates the config and builds the hook.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// Receives one event; the runtime never waits for it to decide anything.
    fn on_event(&mut self, event: TunnelEvent);
}

/// The config of a plugin without settings: accepts `{}` (or no `config` table) and
/// rejects every key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoConfig {}

impl<'de> serde_core::Deserialize<'de> for NoConfig {
    fn deserialize<D: serde_core::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Empty;
        impl<'de> serde_core::de::Visitor<'de> for Empty {
            type Value = NoConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an empty table")
            }
            fn visit_map<A: serde_core::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<NoConfig, A::Error> {
                match map.next_key::<String>()? {
                    None => Ok(NoConfig {}),
                    // The same words as serde's derive, so `from_json` phrases it alike.
                    Some(key) => Err(serde_core::de::Error::custom(format_args!(
                        "unknown field `{key}`, there are no fields"
                    ))),
                }
            }
        }
        deserializer.deserialize_map(Empty)
    }
}

/// The config as JSON text, for plugins that validate it by hand (for instance key by key
/// with [`Config`], whose errors name the key and suggest the closest known one):
///
/// ```
/// use ssm_tether_plugin::{Config, RawConfig};
///
/// let raw: RawConfig = ssm_tether_plugin::from_json(r#"{"base_ms": 5}"#).unwrap();
/// let config = Config::parse(raw.as_str(), &["base_ms"]).unwrap();
/// assert_eq!(config.u64("base_ms"), Ok(Some(5)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawConfig(String);

impl RawConfig {
    /// The JSON object, as text (as the host sent it: possibly empty, meaning `{}`).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> serde_core::Deserialize<'de> for RawConfig {
    fn deserialize<D: serde_core::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = <serde_json::Value as serde_core::Deserialize>::deserialize(deserializer)?;
        Ok(Self(value.to_string()))
    }
}

/// The plugin's `describe` answer from its crate metadata (`CARGO_PKG_NAME`,
/// `CARGO_PKG_VERSION`, `CARGO_PKG_DESCRIPTION` of the crate that expands it), each
/// overridable:
///
/// ```
/// let info = ssm_tether_plugin::plugin_info!(name = "http");
/// assert_eq!(info.name, "http");
/// assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
/// ```
#[macro_export]
macro_rules! plugin_info {
    ($($key:ident = $value:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut info = $crate::PluginInfo {
            name: ::std::string::String::from(::core::env!("CARGO_PKG_NAME")),
            version: ::std::string::String::from(::core::env!("CARGO_PKG_VERSION")),
            description: ::std::string::String::from(::core::env!("CARGO_PKG_DESCRIPTION")),
        };
        $( info.$key = ::std::string::String::from($value); )*
        info
    }};
}

/// Exports a [`HealthCheck`] as the component's `health-check` world.
///
/// `health_check!(T)` or `health_check!(T, name = "…", version = "…", description = "…")`
/// (each override optional, any order; see [`plugin_info!`]). Expand it once, at the crate
/// root.
#[macro_export]
macro_rules! health_check {
    ($ty:ty $(, $key:ident = $value:expr)* $(,)?) => {
        const _: () = {
            use $crate::bindings::health_check::exports::ssm_tether::plugin::{health, plugin};

            ::std::thread_local! {
                static STATE: $crate::__private::Slot<$ty> = const { $crate::__private::Slot::new() };
            }

            struct __SsmTetherPlugin;

            impl plugin::Guest for __SsmTetherPlugin {
                fn describe() -> $crate::PluginInfo {
                    $crate::plugin_info!($($key = $value),*)
                }
                fn init(config: ::std::string::String) -> ::core::result::Result<(), ::std::string::String> {
                    STATE.with(|slot| slot.init(&config, <$ty as $crate::HealthCheck>::new))
                }
            }

            impl health::Guest for __SsmTetherPlugin {
                fn check(context: $crate::ProbeContext) -> $crate::ProbeOutcome {
                    STATE.with(|slot| {
                        slot.with(<$ty as $crate::HealthCheck>::new, |check| {
                            $crate::HealthCheck::check(check, context)
                        })
                    })
                }
            }

            $crate::bindings::health_check::__export_health_check!(__SsmTetherPlugin with_types_in $crate::bindings::health_check);
        };
    };
}

/// Exports a [`ReconnectPolicy`] as the component's `reconnect-policy` world; the same
/// options as [`health_check!`].
#[macro_export]
macro_rules! reconnect_policy {
    ($ty:ty $(, $key:ident = $value:expr)* $(,)?) => {
        const _: () = {
            use $crate::bindings::reconnect_policy::exports::ssm_tether::plugin::{plugin, reconnect};

            ::std::thread_local! {
                static STATE: $crate::__private::Slot<$ty> = const { $crate::__private::Slot::new() };
            }

            struct __SsmTetherPlugin;

            impl plugin::Guest for __SsmTetherPlugin {
                fn describe() -> $crate::PluginInfo {
                    $crate::plugin_info!($($key = $value),*)
                }
                fn init(config: ::std::string::String) -> ::core::result::Result<(), ::std::string::String> {
                    STATE.with(|slot| slot.init(&config, <$ty as $crate::ReconnectPolicy>::new))
                }
            }

            impl reconnect::Guest for __SsmTetherPlugin {
                fn decide(context: $crate::DecisionContext) -> $crate::Decision {
                    STATE.with(|slot| {
                        slot.with(<$ty as $crate::ReconnectPolicy>::new, |policy| {
                            $crate::ReconnectPolicy::decide(policy, context)
                        })
                    })
                }
            }

            $crate::bindings::reconnect_policy::__export_reconnect_policy!(__SsmTetherPlugin with_types_in $crate::bindings::reconnect_policy);
        };
    };
}

/// Exports an [`EventHook`] as the component's `event-hook` world; the same options as
/// [`health_check!`].
#[macro_export]
macro_rules! event_hook {
    ($ty:ty $(, $key:ident = $value:expr)* $(,)?) => {
        const _: () = {
            use $crate::bindings::event_hook::exports::ssm_tether::plugin::{hooks, plugin};

            ::std::thread_local! {
                static STATE: $crate::__private::Slot<$ty> = const { $crate::__private::Slot::new() };
            }

            struct __SsmTetherPlugin;

            impl plugin::Guest for __SsmTetherPlugin {
                fn describe() -> $crate::PluginInfo {
                    $crate::plugin_info!($($key = $value),*)
                }
                fn init(config: ::std::string::String) -> ::core::result::Result<(), ::std::string::String> {
                    STATE.with(|slot| slot.init(&config, <$ty as $crate::EventHook>::new))
                }
            }

            impl hooks::Guest for __SsmTetherPlugin {
                fn on_event(event: $crate::TunnelEvent) {
                    STATE.with(|slot| {
                        slot.with(<$ty as $crate::EventHook>::new, |hook| {
                            $crate::EventHook::on_event(hook, event)
                        })
                    })
                }
            }

            $crate::bindings::event_hook::__export_event_hook!(__SsmTetherPlugin with_types_in $crate::bindings::event_hook);
        };
    };
}

#[doc(hidden)]
pub mod __private {
    use std::any::{Any, TypeId};
    use std::cell::RefCell;

    use serde_core::de::DeserializeOwned;

    use crate::RawConfig;

    /// A plugin instance's state: empty until `init` succeeds.
    pub struct Slot<T>(RefCell<Option<T>>);

    impl<T> Slot<T> {
        pub const fn new() -> Self {
            Self(RefCell::new(None))
        }

        /// `init(config)`: deserialize, build, store (a failed `init` keeps nothing).
        pub fn init<C: DeserializeOwned + 'static>(
            &self,
            config: &str,
            new: impl FnOnce(C) -> Result<T, String>,
        ) -> Result<(), String> {
            let value = new(parse(config)?)?;
            *self.0.borrow_mut() = Some(value);
            Ok(())
        }

        /// Runs `f` on the state, building it from `{}` first if `init` never succeeded.
        pub fn with<C: DeserializeOwned + 'static, R>(
            &self,
            new: impl FnOnce(C) -> Result<T, String>,
            f: impl FnOnce(&mut T) -> R,
        ) -> R {
            let mut state = self.0.borrow_mut();
            if state.is_none() {
                match parse("{}").and_then(new) {
                    Ok(value) => *state = Some(value),
                    // The host calls `init` before anything else; without a usable default
                    // there is nothing sensible to answer.
                    Err(err) => panic!("plugin used before a successful init: {err}"),
                }
            }
            match state.as_mut() {
                Some(value) => f(value),
                None => unreachable!("initialised above"),
            }
        }
    }

    /// `init`'s JSON as `C`: [`from_json`](crate::from_json), except that a [`RawConfig`]
    /// gets the text as it is. (The type test folds to a constant, so a plugin that uses
    /// `RawConfig` carries no deserialization code for it: about 16 KB less.)
    fn parse<C: DeserializeOwned + 'static>(json: &str) -> Result<C, String> {
        if TypeId::of::<C>() == TypeId::of::<RawConfig>() {
            let raw: Box<dyn Any> = Box::new(RawConfig(json.to_owned()));
            if let Ok(raw) = raw.downcast::<C>() {
                return Ok(*raw);
            }
        }
        crate::from_json(json)
    }

    impl<T> Default for Slot<T> {
        fn default() -> Self {
            Self::new()
        }
    }
}
