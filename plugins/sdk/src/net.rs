//! The probe side of the `tunnel-tcp` capability behind two small traits, [`Tunnel`] and
//! [`Conn`], so probe logic is tested natively against the scripted [`FakeTunnel`] and runs
//! in the component against [`HostTunnel`] (the host's `tunnel-tcp` import).
//!
//! ```
//! use std::rc::Rc;
//! use ssm_tether_plugin::net::{Conn, FakeTunnel, Outcome, Step, Tunnel};
//! use ssm_tether_plugin::FakeClock;
//!
//! /// Healthy when the server greets with `+OK`.
//! fn probe(tunnel: &mut impl Tunnel) -> Outcome {
//!     let mut conn = match tunnel.connect(1_000) {
//!         Ok(conn) => conn,
//!         Err(err) => return ssm_tether_plugin::net::connect_failure(&err),
//!     };
//!     match conn.read(16, 1_000) {
//!         Ok(bytes) if bytes.starts_with(b"+OK") => Outcome::Healthy,
//!         Ok(bytes) => Outcome::Unhealthy(format!("got {bytes:?}")),
//!         Err(err) => Outcome::Unhealthy(format!("read: {err}")),
//!     }
//! }
//!
//! // In the component: `probe(&mut ssm_tether_plugin::net::HostTunnel)`.
//! let clock = Rc::new(FakeClock::default());
//! let mut tunnel = FakeTunnel::new(clock, vec![Step::Data(5, b"+OK\r\n".to_vec())]);
//! assert_eq!(probe(&mut tunnel), Outcome::Healthy);
//! ```

// One implementation with the test fixtures' helper crate (`../common`): the traits, the
// fake and `read_until` are its own. What differs is the SDK's side of the bindings: its
// `Outcome` is the generated `probe-outcome`, and `HostTunnel` is a type rather than
// `tunnel_tcp_glue!`'s per-crate expansion (that expansion lives in the bindings crate,
// which owns `Connection` and `TcpError`; see its `tunnel_tcp_glue` module).
pub use plugin_common::net::{
    Conn, FakeTunnel, MAX_READ, NetError, ReadEnd, Step, Tunnel, read_until,
};

use crate::bindings::health_check::tunnel_tcp_glue;
use crate::tunnel_tcp::Connection;

/// A health check's verdict: WIT `types.probe-outcome` (`Healthy`, `Degraded(reason)`,
/// `Unhealthy(reason)`), what [`HealthCheck::check`](crate::HealthCheck::check) returns.
pub use crate::types::ProbeOutcome as Outcome;

/// What a connect failure means for a probe: a missing grant makes the check unable to run
/// (degraded, so a misconfiguration does not restart the tunnel forever); anything else is a
/// failure.
pub fn connect_failure(err: &NetError) -> Outcome {
    tunnel_tcp_glue::to_probe_outcome(plugin_common::net::connect_failure(err))
}

// ----- the host's side: the generated `tunnel-tcp` bindings ------------------------------

/// The real tunnel: [`Tunnel`] over the host's `tunnel-tcp` import. Pass it to probe logic
/// written against [`Tunnel`]; tests pass a [`FakeTunnel`] instead.
///
/// Only usable inside a component (natively, calling the host panics).
#[derive(Debug, Clone, Copy, Default)]
pub struct HostTunnel;

impl Tunnel for HostTunnel {
    type Conn = Connection;

    fn connect(&mut self, timeout_ms: u32) -> Result<Connection, NetError> {
        tunnel_tcp_glue::connect(timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_failure_is_the_shared_verdict_as_a_probe_outcome() {
        assert!(matches!(
            connect_failure(&NetError::Denied("tunnel-tcp".into())),
            Outcome::Degraded(r) if r.contains("grant")
        ));
        assert!(matches!(
            connect_failure(&NetError::Unreachable("refused".into())),
            Outcome::Unhealthy(r) if r.contains("refused")
        ));
    }
}
