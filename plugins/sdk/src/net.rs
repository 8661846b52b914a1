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

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::rc::Rc;

use crate::{Clock, Deadline, FakeClock};

/// Mirror of WIT `tunnel-tcp.tcp-error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetError {
    /// The capability is not granted. Payload: which grant is missing.
    Denied(String),
    /// The tunnel is not forwarding.
    TunnelDown,
    /// The agent could not reach the destination.
    Unreachable(String),
    /// Nothing happened before the timeout.
    Timeout,
    /// The connection is closed.
    Closed,
    /// An argument was out of range.
    InvalidArgument(String),
    /// Any other failure.
    Other(String),
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Denied(grant) => write!(f, "tunnel-tcp capability denied ({grant})"),
            Self::TunnelDown => f.write_str("the tunnel is not forwarding"),
            Self::Unreachable(detail) => write!(f, "destination unreachable: {detail}"),
            Self::Timeout => f.write_str("timed out"),
            Self::Closed => f.write_str("connection closed"),
            Self::InvalidArgument(what) => write!(f, "invalid argument: {what}"),
            Self::Other(detail) => f.write_str(detail),
        }
    }
}

/// A health check's verdict: WIT `types.probe-outcome` (`Healthy`, `Degraded(reason)`,
/// `Unhealthy(reason)`), what [`HealthCheck::check`](crate::HealthCheck::check) returns.
pub use crate::types::ProbeOutcome as Outcome;

/// Opens connections through the tunnel.
pub trait Tunnel {
    /// The connection type.
    type Conn: Conn;
    /// WIT `tunnel-tcp.connect`.
    fn connect(&mut self, timeout_ms: u32) -> Result<Self::Conn, NetError>;
}

/// One connection through the tunnel.
pub trait Conn {
    /// WIT `connection.write`: all of `data`.
    fn write(&mut self, data: &[u8], timeout_ms: u32) -> Result<(), NetError>;
    /// WIT `connection.read`: up to `max` bytes; empty = end of stream.
    fn read(&mut self, max: u32, timeout_ms: u32) -> Result<Vec<u8>, NetError>;
    /// WIT `connection.close`.
    fn close(&mut self);
}

/// Largest single read the host accepts.
pub const MAX_READ: u32 = 65_536;

/// How [`read_until`] ended. Every case carries the bytes read so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadEnd {
    /// `done` returned true.
    Done(Vec<u8>),
    /// The peer closed its side first.
    Eof(Vec<u8>),
    /// The deadline passed first.
    Timeout(Vec<u8>),
    /// `limit` bytes arrived and `done` was still false.
    Limit(Vec<u8>),
    /// A read failed.
    Failed(NetError, Vec<u8>),
}

/// Reads until `done(bytes so far)`, end of stream, `limit` bytes or the deadline.
pub fn read_until(
    conn: &mut dyn Conn,
    clock: &dyn Clock,
    deadline: Deadline,
    read_timeout_ms: u32,
    limit: usize,
    done: &dyn Fn(&[u8]) -> bool,
) -> ReadEnd {
    let mut buf = Vec::new();
    loop {
        if done(&buf) {
            return ReadEnd::Done(buf);
        }
        if buf.len() >= limit {
            return ReadEnd::Limit(buf);
        }
        let timeout = deadline.remaining(clock, read_timeout_ms);
        if timeout == 0 {
            return ReadEnd::Timeout(buf);
        }
        let want = u32::try_from(limit - buf.len())
            .unwrap_or(MAX_READ)
            .min(MAX_READ);
        match conn.read(want, timeout) {
            Ok(chunk) if chunk.is_empty() => return ReadEnd::Eof(buf),
            Ok(chunk) => buf.extend_from_slice(&chunk),
            Err(NetError::Timeout) => return ReadEnd::Timeout(buf),
            Err(err) => return ReadEnd::Failed(err, buf),
        }
    }
}

/// What a connect failure means for a probe: a missing grant makes the check unable to run
/// (degraded, so a misconfiguration does not restart the tunnel forever); anything else is a
/// failure.
pub fn connect_failure(err: &NetError) -> Outcome {
    match err {
        NetError::Denied(_) => Outcome::Degraded(format!(
            "cannot probe: {err}; grant tunnel-tcp to this plugin in the policy file"
        )),
        _ => Outcome::Unhealthy(format!("connect through the tunnel failed: {err}")),
    }
}

/// One scripted step of a [`FakeTunnel`] connection's read side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// After this many ms, these bytes arrive.
    Data(u64, Vec<u8>),
    /// After this many ms, the peer closes.
    Eof(u64),
    /// The read fails at once.
    Fail(NetError),
}

#[derive(Debug, Default)]
struct Script {
    connect_delay_ms: u64,
    connect_error: Option<NetError>,
    steps: VecDeque<Step>,
    written: Vec<u8>,
    connects: u32,
    closed: bool,
}

/// A scripted tunnel for tests; time passes on a shared [`FakeClock`].
#[derive(Debug, Clone)]
pub struct FakeTunnel {
    clock: Rc<FakeClock>,
    script: Rc<RefCell<Script>>,
}

impl FakeTunnel {
    /// A tunnel whose connections get `steps` on their read side.
    pub fn new(clock: Rc<FakeClock>, steps: Vec<Step>) -> Self {
        Self {
            clock,
            script: Rc::new(RefCell::new(Script {
                steps: steps.into(),
                ..Script::default()
            })),
        }
    }

    /// Connecting takes this long.
    pub fn connect_delay(self, ms: u64) -> Self {
        self.script.borrow_mut().connect_delay_ms = ms;
        self
    }

    /// Connecting fails.
    pub fn connect_error(self, err: NetError) -> Self {
        self.script.borrow_mut().connect_error = Some(err);
        self
    }

    /// Everything written so far.
    pub fn written(&self) -> Vec<u8> {
        self.script.borrow().written.clone()
    }

    /// Whether the probe closed its connection.
    pub fn closed(&self) -> bool {
        self.script.borrow().closed
    }

    /// How often `connect` was called.
    pub fn connects(&self) -> u32 {
        self.script.borrow().connects
    }
}

impl Tunnel for FakeTunnel {
    type Conn = Self;

    fn connect(&mut self, timeout_ms: u32) -> Result<Self, NetError> {
        assert!(timeout_ms > 0, "timeouts must be positive");
        let mut script = self.script.borrow_mut();
        script.connects += 1;
        if script.connect_delay_ms > u64::from(timeout_ms) {
            self.clock.advance(u64::from(timeout_ms));
            return Err(NetError::Timeout);
        }
        self.clock.advance(script.connect_delay_ms);
        match &script.connect_error {
            Some(err) => Err(err.clone()),
            None => Ok(self.clone()),
        }
    }
}

impl Conn for FakeTunnel {
    fn write(&mut self, data: &[u8], timeout_ms: u32) -> Result<(), NetError> {
        assert!(timeout_ms > 0, "timeouts must be positive");
        let mut script = self.script.borrow_mut();
        if script.closed {
            return Err(NetError::Closed);
        }
        script.written.extend_from_slice(data);
        Ok(())
    }

    fn read(&mut self, max: u32, timeout_ms: u32) -> Result<Vec<u8>, NetError> {
        assert!(
            timeout_ms > 0 && max > 0 && max <= MAX_READ,
            "bad read arguments"
        );
        let mut script = self.script.borrow_mut();
        if script.closed {
            return Err(NetError::Closed);
        }
        let timeout = u64::from(timeout_ms);
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        match script.steps.pop_front() {
            None => {
                self.clock.advance(timeout);
                Err(NetError::Timeout)
            }
            Some(Step::Fail(err)) => Err(err),
            Some(Step::Data(delay, data)) if delay > timeout => {
                // Not yet: time passes, the step stays with less delay left.
                self.clock.advance(timeout);
                script.steps.push_front(Step::Data(delay - timeout, data));
                Err(NetError::Timeout)
            }
            Some(Step::Eof(delay)) if delay > timeout => {
                self.clock.advance(timeout);
                script.steps.push_front(Step::Eof(delay - timeout));
                Err(NetError::Timeout)
            }
            Some(Step::Data(delay, mut data)) => {
                self.clock.advance(delay);
                if data.len() > max {
                    let tail = data.split_off(max);
                    script.steps.push_front(Step::Data(0, tail));
                }
                Ok(data)
            }
            Some(Step::Eof(delay)) => {
                self.clock.advance(delay);
                Ok(Vec::new())
            }
        }
    }

    fn close(&mut self) {
        self.script.borrow_mut().closed = true;
    }
}

// ----- the host's side: the generated `tunnel-tcp` bindings ------------------------------

use crate::tunnel_tcp::{self, Connection, TcpError};

impl From<TcpError> for NetError {
    fn from(err: TcpError) -> Self {
        match err {
            TcpError::Denied(grant) => Self::Denied(grant),
            TcpError::TunnelDown => Self::TunnelDown,
            TcpError::Unreachable(detail) => Self::Unreachable(detail),
            TcpError::Timeout => Self::Timeout,
            TcpError::Closed => Self::Closed,
            TcpError::InvalidArgument(what) => Self::InvalidArgument(what),
            TcpError::Other(detail) => Self::Other(detail),
        }
    }
}

/// The real tunnel: [`Tunnel`] over the host's `tunnel-tcp` import. Pass it to probe logic
/// written against [`Tunnel`]; tests pass a [`FakeTunnel`] instead.
///
/// Only usable inside a component (natively, calling the host panics).
#[derive(Debug, Clone, Copy, Default)]
pub struct HostTunnel;

impl Tunnel for HostTunnel {
    type Conn = Connection;

    fn connect(&mut self, timeout_ms: u32) -> Result<Connection, NetError> {
        tunnel_tcp::connect(timeout_ms).map_err(NetError::from)
    }
}

impl Conn for Connection {
    fn write(&mut self, data: &[u8], timeout_ms: u32) -> Result<(), NetError> {
        Connection::write(self, data, timeout_ms).map_err(NetError::from)
    }

    fn read(&mut self, max: u32, timeout_ms: u32) -> Result<Vec<u8>, NetError> {
        Connection::read(self, max, timeout_ms).map_err(NetError::from)
    }

    fn close(&mut self) {
        Connection::close(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deadline(clock: &FakeClock, ms: u64) -> Deadline {
        Deadline::after(clock, ms)
    }

    #[test]
    fn reads_until_done_eof_timeout_or_limit() {
        let clock = Rc::new(FakeClock::default());
        let steps = vec![
            Step::Data(10, b"SSH-".to_vec()),
            Step::Data(10, b"2.0-x\r\n".to_vec()),
        ];
        let mut t = FakeTunnel::new(clock.clone(), steps);
        let end = read_until(&mut t, &*clock, deadline(&clock, 1000), 1000, 100, &|b| {
            b.ends_with(b"\n")
        });
        assert_eq!(end, ReadEnd::Done(b"SSH-2.0-x\r\n".to_vec()));
        assert_eq!(clock.now_ms(), 20);

        let mut t = FakeTunnel::new(
            clock.clone(),
            vec![Step::Data(0, b"ab".to_vec()), Step::Eof(5)],
        );
        let end = read_until(&mut t, &*clock, deadline(&clock, 1000), 1000, 100, &|_| {
            false
        });
        assert_eq!(end, ReadEnd::Eof(b"ab".to_vec()));

        let start = clock.now_ms();
        let mut t = FakeTunnel::new(clock.clone(), vec![Step::Data(0, b"a".to_vec())]);
        let end = read_until(&mut t, &*clock, deadline(&clock, 300), 1000, 100, &|_| {
            false
        });
        assert_eq!(end, ReadEnd::Timeout(b"a".to_vec()));
        assert_eq!(clock.now_ms() - start, 300);

        let mut t = FakeTunnel::new(clock.clone(), vec![Step::Data(0, vec![b'x'; 50])]);
        let end = read_until(&mut t, &*clock, deadline(&clock, 300), 1000, 8, &|_| false);
        assert_eq!(end, ReadEnd::Limit(vec![b'x'; 8]));

        let mut t = FakeTunnel::new(clock.clone(), vec![Step::Fail(NetError::Closed)]);
        let end = read_until(&mut t, &*clock, deadline(&clock, 300), 1000, 8, &|_| false);
        assert_eq!(end, ReadEnd::Failed(NetError::Closed, Vec::new()));
    }

    #[test]
    fn denied_is_degraded_and_other_connect_errors_unhealthy() {
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
