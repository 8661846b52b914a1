//! ssm-tether: keeps AWS SSM port-forwarding tunnels alive for days.
//!
//! The crate is split the way quinn splits `quinn-proto` from `quinn`: [`protocol`] holds the
//! sans-IO wire formats, [`channel`], [`mux`] and [`tunnel::core`] the sans-IO state
//! machines (no sockets, no clocks), and the I/O layers are built on top of them.
//!
//! Modules, from the leaves up: [`transport`] and [`aws`] (the WebSocket and the SSM API),
//! [`events`] (what a tunnel reports), [`policy`] (the policy file), [`recovery`] (the built-in
//! reconnect policy), [`builtin`] and [`plugin`] (the plugin host), [`tunnel`] (the tunnel
//! itself), [`reload`] (hot reload of a policy file's plugins) and [`ops`] (metrics, health
//! endpoints, the control socket, systemd notifications); each uses only modules before it.
//! See `docs/design.md` §2.

pub use ssm_tether_protocol as protocol;

pub mod aws;
pub mod builtin;
pub mod channel;
pub mod events;
pub mod mux;
pub mod ops;
pub mod plugin;
pub mod policy;
pub mod recovery;
pub mod reload;
pub mod remedy;
pub mod transport;
pub mod trusted_file;
pub mod tunnel;
pub mod version;
pub mod wake;
