//! `redis-check`: an example ssm-tether health check (world `ssm-tether:plugin/health-check`).
//!
//! On every run it opens a connection *through the tunnel* (capability `tunnel-tcp`), sends
//! `AUTH` when a password is configured, then `PING`, and judges the first reply line:
//!
//! * `+PONG` → healthy;
//! * an error reply (`-NOAUTH …`, `-ERR …`, `-WRONGPASS …`) → degraded: Redis answered, so the
//!   tunnel carries Redis end to end, but the check is not configured to pass;
//! * anything else, silence, a closed connection or a failed connect → unhealthy;
//! * `tunnel-tcp` not granted → degraded (and an error in the runtime's log): a
//!   misconfiguration must not make the runtime restart a working tunnel forever.
//!
//! The protocol logic is in plain functions ([`converse`], [`judge_ping`], …) tested natively
//! with `cargo test`. Everything else comes from the `ssm-tether-plugin` SDK: the bindings,
//! `describe` (from `Cargo.toml`), parsing the `config` table into [`Settings`] with serde,
//! and the exports ([`ssm_tether_plugin::health_check!`]).

use std::time::{Duration, Instant};

use serde::Deserialize;
use ssm_tether_plugin::tunnel_tcp::{self, TcpError};
use ssm_tether_plugin::{HealthCheck, LogLevel, ProbeContext, ProbeOutcome, host};

// ----- configuration ---------------------------------------------------------------------

/// The check's settings: the policy file's `[tunnel.health_check.config]` table. Unknown keys
/// are errors (`deny_unknown_fields`), so a typo fails `ssm-tether check`; missing keys take
/// their [`Default`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Longest wait for the connection through the tunnel.
    pub connect_timeout_ms: u32,
    /// Longest wait for each read of a reply.
    pub read_timeout_ms: u32,
    /// Sent with `AUTH` before `PING` when set.
    pub password: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 2_000,
            read_timeout_ms: 2_000,
            password: None,
        }
    }
}

impl Settings {
    /// What serde cannot check: timeouts above zero, a password that is not empty.
    /// Never echo the password: it is a secret.
    pub fn validate(self) -> Result<Self, String> {
        for (key, ms) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("read_timeout_ms", self.read_timeout_ms),
        ] {
            if ms == 0 {
                return Err(format!("`{key}` must be a positive integer (milliseconds)"));
            }
        }
        if self.password.as_deref() == Some("") {
            return Err("`password` must not be empty".to_owned());
        }
        Ok(self)
    }

    /// Parses and validates `init`'s JSON the way the component does (`{}` or empty: the
    /// defaults); every error names the key.
    pub fn from_json(json: &str) -> Result<Self, String> {
        ssm_tether_plugin::from_json::<Self>(json)?.validate()
    }
}

// ----- the Redis conversation ------------------------------------------------------------

/// `PING` as a RESP array of bulk strings, the form every Redis version accepts.
pub const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

/// The longest reply line read; `+PONG` and error replies are far shorter.
pub const MAX_LINE: usize = 512;

/// `AUTH <password>` as a RESP array of bulk strings.
pub fn auth_command(password: &str) -> Vec<u8> {
    format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\n", password.len()).into_bytes()
}

/// The first line of `reply` without its CRLF, once it is complete.
pub fn first_line(reply: &[u8]) -> Option<&[u8]> {
    let end = reply.windows(2).position(|pair| pair == b"\r\n")?;
    Some(&reply[..end])
}

/// The verdict on the reply line to `PING`.
pub fn judge_ping(line: &[u8]) -> ProbeOutcome {
    match line {
        b"+PONG" => ProbeOutcome::Healthy,
        [b'-', ..] => ProbeOutcome::Degraded(format!(
            "Redis answered PING with an error: {}",
            escape(line)
        )),
        _ => ProbeOutcome::Unhealthy(format!("not a Redis reply to PING: \"{}\"", escape(line))),
    }
}

/// The verdict on the reply line to `AUTH`: `None` when it succeeded and `PING` comes next.
pub fn judge_auth(line: &[u8]) -> Option<ProbeOutcome> {
    match line {
        b"+OK" => None,
        [b'-', ..] => Some(ProbeOutcome::Degraded(format!(
            "Redis rejected AUTH: {}",
            escape(line)
        ))),
        _ => Some(ProbeOutcome::Unhealthy(format!(
            "not a Redis reply to AUTH: \"{}\"",
            escape(line)
        ))),
    }
}

/// The verdict when `connect` failed after waiting up to `timeout_ms`.
pub fn connect_failed(error: &TcpError, timeout_ms: u32) -> ProbeOutcome {
    match error {
        TcpError::Denied(what) => ProbeOutcome::Degraded(format!(
            "tunnel-tcp not granted: {what}; add grants = [\"tunnel-tcp\"] to this health check"
        )),
        TcpError::Timeout => ProbeOutcome::Unhealthy(format!(
            "connect through the tunnel timed out after {timeout_ms} ms"
        )),
        _ => ProbeOutcome::Unhealthy(format!(
            "connect through the tunnel failed: {}",
            describe(error)
        )),
    }
}

/// A `tunnel-tcp` error in words.
pub fn describe(error: &TcpError) -> String {
    match error {
        TcpError::Denied(what) => format!("denied ({what})"),
        TcpError::TunnelDown => "the tunnel is not forwarding".to_owned(),
        TcpError::Unreachable(detail) => format!("destination unreachable: {detail}"),
        TcpError::Timeout => "timed out".to_owned(),
        TcpError::Closed => "connection closed".to_owned(),
        TcpError::InvalidArgument(what) => format!("invalid argument: {what}"),
        TcpError::Other(detail) => detail.clone(),
    }
}

/// Bytes from the network as printable text: at most 64 of them, ASCII as is, the rest
/// escaped (`\r`, `\n`, `\xNN`), `...` when cut.
pub fn escape(bytes: &[u8]) -> String {
    let mut text: String = bytes
        .iter()
        .take(64)
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect();
    if bytes.len() > 64 {
        text.push_str("...");
    }
    text
}

/// The two calls the conversation needs from a connection: the component implements it for
/// the `tunnel-tcp` connection, the tests for a scripted server.
pub trait Wire {
    /// Writes all of `data`.
    fn write(&mut self, data: &[u8], timeout_ms: u32) -> Result<(), TcpError>;
    /// Reads up to `max_bytes`; empty means the server closed its side.
    fn read(&mut self, max_bytes: u32, timeout_ms: u32) -> Result<Vec<u8>, TcpError>;
}

/// Talks to Redis over `wire`: `AUTH` when a password is set, then `PING`. `time_left`
/// returns the milliseconds left of the call's budget; no wait goes beyond it.
pub fn converse(
    wire: &mut impl Wire,
    settings: &Settings,
    time_left: &dyn Fn() -> u32,
) -> ProbeOutcome {
    if let Some(password) = &settings.password {
        let auth = auth_command(password);
        match request(wire, "AUTH", &auth, settings.read_timeout_ms, time_left) {
            Ok(line) => {
                if let Some(failed) = judge_auth(&line) {
                    return failed;
                }
            }
            Err(failed) => return failed,
        }
    }
    match request(wire, "PING", PING, settings.read_timeout_ms, time_left) {
        Ok(line) => judge_ping(&line),
        Err(failed) => failed,
    }
}

/// Sends `command` and returns the first line of the reply (without its CRLF), or the
/// unhealthy outcome explaining why there is none.
fn request(
    wire: &mut impl Wire,
    name: &str,
    command: &[u8],
    read_timeout_ms: u32,
    time_left: &dyn Fn() -> u32,
) -> Result<Vec<u8>, ProbeOutcome> {
    let unhealthy = |reason: String| ProbeOutcome::Unhealthy(reason);
    let timeout = read_timeout_ms.min(time_left());
    if timeout == 0 {
        return Err(unhealthy(format!("no time left to send {name}")));
    }
    if let Err(error) = wire.write(command, timeout) {
        return Err(unhealthy(format!(
            "sending {name} failed: {}",
            describe(&error)
        )));
    }
    let mut reply = Vec::new();
    loop {
        if let Some(line) = first_line(&reply) {
            return Ok(line.to_vec());
        }
        if reply.len() >= MAX_LINE {
            return Err(unhealthy(format!(
                "no line end in the first {MAX_LINE} bytes of the reply to {name}: \"{}\"",
                escape(&reply)
            )));
        }
        let timeout = read_timeout_ms.min(time_left());
        if timeout == 0 {
            return Err(unhealthy(format!(
                "the call budget ran out waiting for the reply to {name} (got \"{}\")",
                escape(&reply)
            )));
        }
        let room = u32::try_from(MAX_LINE - reply.len()).unwrap_or(1);
        match wire.read(room, timeout) {
            Ok(chunk) if chunk.is_empty() => {
                return Err(unhealthy(format!(
                    "the server closed the connection before replying to {name} (got \"{}\")",
                    escape(&reply)
                )));
            }
            Ok(chunk) => reply.extend_from_slice(&chunk),
            Err(TcpError::Timeout) => {
                return Err(unhealthy(format!(
                    "no reply to {name} within {timeout} ms (got \"{}\")",
                    escape(&reply)
                )));
            }
            Err(error) => {
                return Err(unhealthy(format!(
                    "reading the reply to {name} failed: {}",
                    describe(&error)
                )));
            }
        }
    }
}

/// The part of the host's call budget the check uses: a tenth (at least 20 ms) is kept back
/// so the verdict arrives before the host gives up on the call. 0 means "no budget given".
pub fn usable_budget_ms(budget_ms: u32) -> u32 {
    if budget_ms == 0 {
        return u32::MAX;
    }
    budget_ms.saturating_sub((budget_ms / 10).max(20))
}

// ----- component glue --------------------------------------------------------------------

/// The component: the settings `init` validated.
pub struct RedisCheck(Settings);

impl HealthCheck for RedisCheck {
    type Config = Settings;

    fn new(settings: Settings) -> Result<Self, String> {
        settings.validate().map(Self)
    }

    fn check(&mut self, context: ProbeContext) -> ProbeOutcome {
        let settings = &self.0;
        let budget = Duration::from_millis(usable_budget_ms(context.budget_ms).into());
        let started = Instant::now();
        let time_left = || {
            let left = budget.saturating_sub(started.elapsed()).as_millis();
            u32::try_from(left).unwrap_or(u32::MAX)
        };

        let timeout = settings.connect_timeout_ms.min(time_left());
        if timeout == 0 {
            return ProbeOutcome::Unhealthy("no time left to connect".to_owned());
        }
        let mut conn = match tunnel_tcp::connect(timeout) {
            Ok(conn) => conn,
            Err(error) => {
                let outcome = connect_failed(&error, timeout);
                if let ProbeOutcome::Degraded(reason) = &outcome {
                    // Only a missing grant: a configuration error the user must see.
                    let tunnel = &context.tunnel.name;
                    host::log(
                        LogLevel::Error,
                        &format!("redis-check on {tunnel}: {reason}"),
                    );
                }
                return outcome;
            }
        };
        converse(&mut conn, settings, &time_left)
        // `conn` is dropped here, which closes the connection.
    }
}

impl Wire for tunnel_tcp::Connection {
    fn write(&mut self, data: &[u8], timeout_ms: u32) -> Result<(), TcpError> {
        tunnel_tcp::Connection::write(self, data, timeout_ms)
    }

    fn read(&mut self, max_bytes: u32, timeout_ms: u32) -> Result<Vec<u8>, TcpError> {
        tunnel_tcp::Connection::read(self, max_bytes, timeout_ms)
    }
}

// The exports: `describe` (name, version, description from Cargo.toml), `init` (the config
// into `Settings`, then `RedisCheck::new`) and `check`.
ssm_tether_plugin::health_check!(RedisCheck);

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::VecDeque;

    use super::*;

    /// A scripted server: each read takes the next answer; none left means a timeout.
    #[derive(Default)]
    struct Script {
        reads: VecDeque<Result<Vec<u8>, TcpError>>,
        write_error: Option<TcpError>,
        written: Vec<u8>,
    }

    impl Script {
        fn replying(chunks: &[&[u8]]) -> Self {
            Self {
                reads: chunks.iter().map(|c| Ok(c.to_vec())).collect(),
                ..Self::default()
            }
        }
    }

    impl Wire for Script {
        fn write(&mut self, data: &[u8], timeout_ms: u32) -> Result<(), TcpError> {
            assert!(timeout_ms > 0);
            match self.write_error.take() {
                Some(error) => Err(error),
                None => {
                    self.written.extend_from_slice(data);
                    Ok(())
                }
            }
        }

        fn read(&mut self, max_bytes: u32, timeout_ms: u32) -> Result<Vec<u8>, TcpError> {
            assert!(max_bytes > 0 && timeout_ms > 0);
            self.reads.pop_front().unwrap_or(Err(TcpError::Timeout))
        }
    }

    fn plenty() -> u32 {
        10_000
    }

    fn settings(json: &str) -> Settings {
        Settings::from_json(json).expect(json)
    }

    fn is_unhealthy(outcome: &ProbeOutcome, needle: &str) -> bool {
        matches!(outcome, ProbeOutcome::Unhealthy(reason) if reason.contains(needle))
    }

    fn is_degraded(outcome: &ProbeOutcome, needle: &str) -> bool {
        matches!(outcome, ProbeOutcome::Degraded(reason) if reason.contains(needle))
    }

    #[test]
    fn config_defaults_keys_and_errors() {
        assert_eq!(settings(""), Settings::default());
        assert_eq!(settings("{}"), Settings::default());
        assert_eq!(
            settings(r#"{"connect_timeout_ms": 500, "read_timeout_ms": 700, "password": "pw"}"#),
            Settings {
                connect_timeout_ms: 500,
                read_timeout_ms: 700,
                password: Some("pw".to_owned()),
            }
        );
        for (json, needle) in [
            (r#"{"conect_timeout_ms": 5}"#, "`conect_timeout_ms`"),
            (r#"{"connect_timeout_ms": 0}"#, "`connect_timeout_ms`"),
            (r#"{"read_timeout_ms": "2s"}"#, "`read_timeout_ms`"),
            (r#"{"read_timeout_ms": 5000000000}"#, "`read_timeout_ms`"),
            (r#"{"password": 1234}"#, "`password`"),
            (r#"{"password": ""}"#, "`password`"),
            ("[]", "table"),
            ("{", "not valid JSON"),
        ] {
            let err = Settings::from_json(json).expect_err(json);
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn commands_are_resp_arrays() {
        assert_eq!(PING, b"*1\r\n$4\r\nPING\r\n");
        assert_eq!(
            auth_command("secret"),
            b"*2\r\n$4\r\nAUTH\r\n$6\r\nsecret\r\n"
        );
        // The bulk length counts bytes, not characters.
        assert_eq!(
            auth_command("pä"),
            "*2\r\n$4\r\nAUTH\r\n$3\r\npä\r\n".as_bytes()
        );
    }

    #[test]
    fn replies_are_judged() {
        assert_eq!(first_line(b"+PONG\r\n"), Some(&b"+PONG"[..]));
        assert_eq!(first_line(b"+PONG\r"), None);
        assert_eq!(judge_ping(b"+PONG"), ProbeOutcome::Healthy);
        assert_eq!(
            judge_ping(b"-NOAUTH Authentication required."),
            ProbeOutcome::Degraded(
                "Redis answered PING with an error: -NOAUTH Authentication required.".to_owned()
            )
        );
        assert!(is_degraded(
            &judge_ping(b"-ERR unknown command"),
            "-ERR unknown command"
        ));
        assert!(is_unhealthy(
            &judge_ping(b"HTTP/1.1 400 Bad Request"),
            "not a Redis reply to PING: \"HTTP/1.1 400 Bad Request\""
        ));
        assert!(is_unhealthy(
            &judge_ping(b"\x16\x03\x01"),
            "\\x16\\x03\\x01"
        ));
        assert!(is_unhealthy(&judge_ping(&[b'x'; 100]), "xxx..."));
        assert_eq!(judge_auth(b"+OK"), None);
        assert!(matches!(
            judge_auth(b"-WRONGPASS invalid username-password pair"),
            Some(ProbeOutcome::Degraded(r)) if r.contains("-WRONGPASS")
        ));
        assert!(matches!(
            judge_auth(b"+PONG"),
            Some(ProbeOutcome::Unhealthy(r)) if r.contains("AUTH")
        ));
    }

    #[test]
    fn ping_pong_is_healthy_even_in_pieces() {
        let mut server = Script::replying(&[b"+PO", b"NG\r", b"\n"]);
        let outcome = converse(&mut server, &Settings::default(), &plenty);
        assert_eq!(outcome, ProbeOutcome::Healthy);
        assert_eq!(server.written, PING);
    }

    #[test]
    fn auth_comes_first_and_a_rejection_stops_the_check() {
        let with_password = settings(r#"{"password": "hunter2"}"#);
        let mut server = Script::replying(&[b"+OK\r\n", b"+PONG\r\n"]);
        assert_eq!(
            converse(&mut server, &with_password, &plenty),
            ProbeOutcome::Healthy
        );
        let mut expected = auth_command("hunter2");
        expected.extend_from_slice(PING);
        assert_eq!(server.written, expected);

        let mut server = Script::replying(&[b"-WRONGPASS invalid password\r\n"]);
        let outcome = converse(&mut server, &with_password, &plenty);
        assert!(is_degraded(&outcome, "-WRONGPASS"), "{outcome:?}");
        assert_eq!(server.written, auth_command("hunter2"), "no PING after");
    }

    #[test]
    fn silence_closing_and_errors_are_unhealthy() {
        let s = Settings::default();
        let outcome = converse(&mut Script::default(), &s, &plenty);
        assert!(is_unhealthy(&outcome, "no reply to PING within 2000 ms"));

        let mut server = Script::replying(&[b"+PO", b""]);
        let outcome = converse(&mut server, &s, &plenty);
        assert!(
            is_unhealthy(&outcome, "closed the connection"),
            "{outcome:?}"
        );
        assert!(is_unhealthy(&outcome, "+PO"), "{outcome:?}");

        let mut server = Script::default();
        server.reads.push_back(Err(TcpError::TunnelDown));
        let outcome = converse(&mut server, &s, &plenty);
        assert!(is_unhealthy(&outcome, "not forwarding"), "{outcome:?}");

        let mut server = Script {
            write_error: Some(TcpError::Closed),
            ..Script::default()
        };
        let outcome = converse(&mut server, &s, &plenty);
        assert!(is_unhealthy(&outcome, "sending PING failed"), "{outcome:?}");

        let mut server = Script::replying(&[&[b'a'; MAX_LINE]]);
        let outcome = converse(&mut server, &s, &plenty);
        assert!(is_unhealthy(&outcome, "no line end"), "{outcome:?}");
    }

    #[test]
    fn waits_are_capped_by_the_budget() {
        let s = Settings::default();
        // 300 ms left: the read times out after 300 ms, not 2000.
        let outcome = converse(&mut Script::default(), &s, &|| 300);
        assert!(is_unhealthy(&outcome, "within 300 ms"), "{outcome:?}");
        // The budget runs out between two reads.
        let calls = Cell::new(0);
        let time_left = || {
            calls.set(calls.get() + 1);
            if calls.get() > 2 { 0 } else { 1_000 }
        };
        let mut server = Script::replying(&[b"+PO"]);
        let outcome = converse(&mut server, &s, &time_left);
        assert!(is_unhealthy(&outcome, "budget ran out"), "{outcome:?}");
        assert_eq!(usable_budget_ms(5_000), 4_500);
        assert_eq!(usable_budget_ms(100), 80);
        assert_eq!(usable_budget_ms(10), 0);
        assert_eq!(usable_budget_ms(0), u32::MAX);
    }

    #[test]
    fn connect_failures() {
        assert!(is_degraded(
            &connect_failed(&TcpError::Denied("tunnel-tcp".to_owned()), 2_000),
            "tunnel-tcp not granted: tunnel-tcp"
        ));
        assert!(is_unhealthy(
            &connect_failed(&TcpError::Timeout, 2_000),
            "timed out after 2000 ms"
        ));
        assert!(is_unhealthy(
            &connect_failed(
                &TcpError::Unreachable("connection refused".to_owned()),
                2_000
            ),
            "destination unreachable: connection refused"
        ));
    }
}
