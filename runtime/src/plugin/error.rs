//! Why a plugin could not be loaded, and why a call failed.

use std::path::PathBuf;

use crate::policy::Role;

/// A plugin could not be loaded or started. Every variant names the plugin as written in the
/// policy file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The `.wasm` file could not be read.
    #[error("plugin {plugin}: cannot read {}: {source}", path.display())]
    Read {
        /// The plugin.
        plugin: String,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The component does not hash to the `sha256` its policy entry pins.
    #[error(
        "plugin {plugin}: refused: the policy file pins sha256 = \"{expected}\" but the \
         component's sha256 is {actual}; if this component is the one to trust, pin it again \
         (ssm-tether plugin pin)"
    )]
    PinMismatch {
        /// The plugin.
        plugin: String,
        /// The sha256 the policy file pins, hex.
        expected: String,
        /// The sha256 of the bytes read, hex.
        actual: String,
    },
    /// No built-in plugin has this name.
    #[error("plugin {plugin}: no such built-in plugin (built-ins: {known})")]
    UnknownBuiltin {
        /// The plugin.
        plugin: String,
        /// The built-in names.
        known: String,
    },
    /// The bytes are not a WebAssembly component.
    #[error("plugin {plugin}: not a WebAssembly component: {detail}")]
    NotAComponent {
        /// The plugin.
        plugin: String,
        /// What the bytes are instead.
        detail: String,
    },
    /// The component does not implement any world of `ssm-tether:plugin`.
    #[error(
        "plugin {plugin}: implements no ssm-tether plugin world (it exports: {exports}); \
         build it against wit/ with one of the worlds reconnect-policy, health-check, event-hook"
    )]
    NoWorld {
        /// The plugin.
        plugin: String,
        /// What it exports.
        exports: String,
    },
    /// The component implements another role's world.
    #[error("plugin {plugin}: is a {found} plugin, but is configured as a {expected}")]
    WrongWorld {
        /// The plugin.
        plugin: String,
        /// The role it was configured for.
        expected: Role,
        /// The world it implements.
        found: Role,
    },
    /// The component was built against an incompatible version of the WIT package.
    #[error(
        "plugin {plugin}: built for ssm-tether:plugin@{found}, but this runtime provides \
         ssm-tether:plugin@{supported} and accepts guests of any 0.1.x; rebuild it against \
         this runtime's wit/"
    )]
    IncompatibleVersion {
        /// The plugin.
        plugin: String,
        /// The version it was built for.
        found: String,
        /// The version the runtime provides.
        supported: &'static str,
    },
    /// Compiling the component failed.
    #[error("plugin {plugin}: cannot compile: {detail}")]
    Compile {
        /// The plugin.
        plugin: String,
        /// The compiler's message.
        detail: String,
    },
    /// Compiling the component took longer than its time budget.
    #[error(
        "plugin {plugin}: compiling it took longer than the {} s allowed; a component this \
         slow to compile is refused",
        budget.as_secs_f64()
    )]
    CompileTimeout {
        /// The plugin.
        plugin: String,
        /// The time budget.
        budget: std::time::Duration,
    },
    /// The component imports something the host does not provide.
    #[error("plugin {plugin}: cannot be linked: {detail}")]
    Link {
        /// The plugin.
        plugin: String,
        /// The linker's message.
        detail: String,
    },
    /// Instantiation, `describe` or `init` trapped, ran out of budget or timed out.
    #[error("plugin {plugin}: failed to start: {detail}")]
    Start {
        /// The plugin.
        plugin: String,
        /// What went wrong.
        detail: String,
    },
    /// `init` rejected the `config` table.
    #[error("plugin {plugin}: rejected its config: {message}")]
    ConfigRejected {
        /// The plugin.
        plugin: String,
        /// The plugin's own message.
        message: String,
    },
    /// The engine could not be created.
    #[error("plugin engine: {0}")]
    Engine(String),
}

/// A plugin call that did not produce a usable answer; the built-in fallback decides.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("plugin {plugin}: {reason}{}", if *quarantined { " (quarantined)" } else { "" })]
pub struct CallFailure {
    /// The plugin, as written in the policy file.
    pub plugin: String,
    /// What went wrong, e.g. "CPU budget of 50ms exhausted".
    pub reason: String,
    /// Whether the plugin is now quarantined (not called until its backoff ends).
    pub quarantined: bool,
}
