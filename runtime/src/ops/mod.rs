//! Operating a running `ssm-tether run`: what an operator, a scraper or a service manager can
//! ask of it while it keeps tunnels up.
//!
//! * [`board`]: one [`Board`] watches every tunnel's event stream (`Tunnel::subscribe`) and
//!   status (`Tunnel::status`) — never the data path — and keeps what the other parts report:
//!   state and since when, last outage and its cause, connection and plugin tallies.
//! * [`metrics`]: the Prometheus registry ([`Metrics`]), fed by the board, encoded with
//!   `prometheus-client`.
//! * [`http`]: `GET /metrics`, `GET /healthz` (the [`Heartbeat`] is fresh) and `GET /readyz`
//!   (every tunnel forwards), on the `[metrics]` address.
//! * [`control`]: the control endpoint `ssm-tether status` and `ssm-tether reload` talk to:
//!   a Unix socket (mode 0600) or, on Windows, a named pipe, carrying one line of JSON each
//!   way.
//! * [`heartbeat`]: a task that beats every second; a stale beat means a stuck event loop.
//! * [`notify`]: systemd's `sd_notify` protocol: `READY=1`, `STATUS=`, `WATCHDOG=1`,
//!   `RELOADING=1`, `STOPPING=1`.
//!
//! The layer sits above [`crate::tunnel`] and uses nothing of [`crate::reload`]: a reload
//! request reaches whoever owns the reloader through a channel.

pub mod board;
#[cfg(any(unix, windows))]
pub mod control;
pub mod heartbeat;
pub mod http;
pub mod metrics;
pub mod notify;

pub use board::{Board, OutageReport, PluginReport, SessionReport, StatusReport, TunnelReport};
pub use heartbeat::Heartbeat;
pub use metrics::Metrics;
