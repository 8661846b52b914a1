//! The probe side of the `tunnel-tcp` capability, independent of the generated bindings so
//! probe logic is tested natively against [`FakeTunnel`].
//!
//! Each health-check crate implements [`Tunnel`] and [`Conn`] over its bindings (a few lines)
//! and converts [`Outcome`] to its `probe-outcome`.

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

/// Mirror of WIT `types.probe-outcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Works.
    Healthy,
    /// Works, but not as expected; not a failure.
    Degraded(String),
    /// Does not work.
    Unhealthy(String),
}

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

/// Expands, inside a health-check plugin, the glue between the bindings `wit_bindgen`
/// generated in that crate (`ssm_tether::plugin::tunnel_tcp`, `ssm_tether::plugin::types`)
/// and this module's bindings-free [`Tunnel`] / [`Conn`] traits: `net_error`, `probe_outcome`,
/// a `HostTunnel` and `Conn` for the connection resource. Each plugin generates its own
/// binding types, so the glue cannot be a shared function; a macro keeps it in one place.
#[macro_export]
macro_rules! tunnel_tcp_glue {
    () => {
        fn net_error(err: ssm_tether::plugin::tunnel_tcp::TcpError) -> $crate::net::NetError {
            use ssm_tether::plugin::tunnel_tcp::TcpError;
            use $crate::net::NetError;
            match err {
                TcpError::Denied(grant) => NetError::Denied(grant),
                TcpError::TunnelDown => NetError::TunnelDown,
                TcpError::Unreachable(detail) => NetError::Unreachable(detail),
                TcpError::Timeout => NetError::Timeout,
                TcpError::Closed => NetError::Closed,
                TcpError::InvalidArgument(what) => NetError::InvalidArgument(what),
                TcpError::Other(detail) => NetError::Other(detail),
            }
        }

        fn probe_outcome(outcome: $crate::net::Outcome) -> ssm_tether::plugin::types::ProbeOutcome {
            use ssm_tether::plugin::types::ProbeOutcome;
            use $crate::net::Outcome;
            match outcome {
                Outcome::Healthy => ProbeOutcome::Healthy,
                Outcome::Degraded(reason) => ProbeOutcome::Degraded(reason),
                Outcome::Unhealthy(reason) => ProbeOutcome::Unhealthy(reason),
            }
        }

        struct HostTunnel;

        impl $crate::net::Tunnel for HostTunnel {
            type Conn = ssm_tether::plugin::tunnel_tcp::Connection;

            fn connect(&mut self, timeout_ms: u32) -> Result<Self::Conn, $crate::net::NetError> {
                ssm_tether::plugin::tunnel_tcp::connect(timeout_ms).map_err(net_error)
            }
        }

        impl $crate::net::Conn for ssm_tether::plugin::tunnel_tcp::Connection {
            fn write(&mut self, data: &[u8], timeout_ms: u32) -> Result<(), $crate::net::NetError> {
                ssm_tether::plugin::tunnel_tcp::Connection::write(self, data, timeout_ms)
                    .map_err(net_error)
            }

            fn read(
                &mut self,
                max: u32,
                timeout_ms: u32,
            ) -> Result<Vec<u8>, $crate::net::NetError> {
                ssm_tether::plugin::tunnel_tcp::Connection::read(self, max, timeout_ms)
                    .map_err(net_error)
            }

            fn close(&mut self) {
                ssm_tether::plugin::tunnel_tcp::Connection::close(self);
            }
        }
    };
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
