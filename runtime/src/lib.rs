//! ssm-tether: keeps AWS SSM port-forwarding tunnels alive for days.
//!
//! The crate is split the way quinn splits `quinn-proto` from `quinn`: [`protocol`] holds the
//! sans-IO wire formats (no sockets, no clocks), and the I/O layers are built on top of it.

pub use ssm_tether_protocol as protocol;

pub mod aws;
pub mod channel;
pub mod mux;
pub mod plugin;
pub mod policy;
pub mod recovery;
pub mod session;
pub mod transport;
pub mod version;
