//! `http`: a health check (world `ssm-tether:plugin/health-check`) that sends one HTTP/1.1
//! request through the tunnel and expects the response status in a configured range.
//!
//! Only the status line is read; the connection is closed right after it. The probe is
//! [`probe`], tested natively against a scripted tunnel; the component glue at the bottom
//! (the `ssm-tether-plugin` SDK's [`HealthCheck`]) only stores the settings.

use ssm_tether_plugin::net::{self, Conn, HostTunnel, NetError, Outcome, ReadEnd, Tunnel};
use ssm_tether_plugin::{
    Clock, Config, Deadline, HealthCheck, LogLevel, ProbeContext, RawConfig, SystemClock,
    escape_bytes, host, usable_budget_ms,
};

/// The config keys, as in the policy file's `config` table.
pub const KEYS: &[&str] = &[
    "method",
    "path",
    "host",
    "headers",
    "status_min",
    "status_max",
    "connect_timeout_ms",
    "response_timeout_ms",
    "slow_ms",
];

const METHODS: &[&str] = &["GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE", "PATCH"];

/// Longest status line accepted.
const MAX_STATUS_LINE: usize = 4096;

/// The check's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Request method.
    pub method: &'static str,
    /// Request target, starting with `/`.
    pub path: String,
    /// `Host` header; `None`: the tunnel's remote host (or `localhost`) and port.
    pub host: Option<String>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Lowest healthy status.
    pub status_min: u16,
    /// Highest healthy status.
    pub status_max: u16,
    /// Longest wait for the connection through the tunnel.
    pub connect_timeout_ms: u32,
    /// Longest wait for the status line after sending the request.
    pub response_timeout_ms: u32,
    /// A successful probe slower than this is reported as degraded.
    pub slow_ms: Option<u64>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            method: "GET",
            path: "/".to_owned(),
            host: None,
            headers: Vec::new(),
            status_min: 200,
            status_max: 399,
            connect_timeout_ms: 3_000,
            response_timeout_ms: 5_000,
            slow_ms: None,
        }
    }
}

fn status(config: &Config, key: &str, default: u16) -> Result<u16, String> {
    match config.u64(key)? {
        None => Ok(default),
        Some(n @ 100..=599) => Ok(u16::try_from(n).unwrap_or(default)),
        Some(n) => Err(format!(
            "`{key}` must be an HTTP status (100..=599), got {n}"
        )),
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_field_value(s: &str) -> bool {
    s.bytes()
        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80)
}

impl Settings {
    /// Parses and validates `init`'s JSON; every error names the key.
    pub fn from_json(json: &str) -> Result<Self, String> {
        let config = Config::parse(json, KEYS)?;
        let defaults = Self::default();
        let settings = Self {
            method: config.choice("method", METHODS)?.unwrap_or(defaults.method),
            path: config.string("path")?.unwrap_or(defaults.path),
            host: config.string("host")?,
            headers: config.string_table("headers")?.unwrap_or_default(),
            status_min: status(&config, "status_min", defaults.status_min)?,
            status_max: status(&config, "status_max", defaults.status_max)?,
            connect_timeout_ms: config
                .u32("connect_timeout_ms")?
                .unwrap_or(defaults.connect_timeout_ms),
            response_timeout_ms: config
                .u32("response_timeout_ms")?
                .unwrap_or(defaults.response_timeout_ms),
            slow_ms: config.u64("slow_ms")?,
        };
        if !settings.path.starts_with('/') || settings.path.bytes().any(|b| b <= b' ' || b == 0x7f)
        {
            return Err(format!(
                "`path` must start with `/` and contain no spaces or control characters, got {:?}",
                settings.path
            ));
        }
        if let Some(host) = &settings.host
            && (host.is_empty() || host.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'/'))
        {
            return Err(format!(
                "`host` must be a host name (optionally `:port`), got {host:?}"
            ));
        }
        for (name, value) in &settings.headers {
            if !is_token(name) {
                return Err(format!("`headers`: {name:?} is not a valid header name"));
            }
            if !is_field_value(value) {
                return Err(format!(
                    "`headers.{name}` contains a line break or control character"
                ));
            }
            if ["host", "connection", "content-length", "transfer-encoding"]
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name))
            {
                return Err(format!(
                    "`headers.{name}` is set by the plugin (use `host` for the Host header)"
                ));
            }
        }
        if settings.status_min > settings.status_max {
            return Err(format!(
                "`status_min` ({}) must not be above `status_max` ({})",
                settings.status_min, settings.status_max
            ));
        }
        if settings.connect_timeout_ms == 0 {
            return Err("`connect_timeout_ms` must be greater than 0".to_owned());
        }
        if settings.response_timeout_ms == 0 {
            return Err("`response_timeout_ms` must be greater than 0".to_owned());
        }
        Ok(settings)
    }

    /// The request bytes. `default_host` is used when `host` is not configured.
    pub fn request(&self, default_host: &str) -> Vec<u8> {
        let host = self.host.as_deref().unwrap_or(default_host);
        let mut request = format!(
            "{} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ssm-tether-health/{}\r\nAccept: */*\r\nConnection: close\r\n",
            self.method,
            self.path,
            env!("CARGO_PKG_VERSION")
        );
        if matches!(self.method, "POST" | "PUT" | "PATCH") {
            request.push_str("Content-Length: 0\r\n");
        }
        for (name, value) in &self.headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.into_bytes()
    }
}

/// The default `Host` header: the tunnel's remote host (the instance itself is `localhost`
/// from the agent's point of view), with the port unless it is 80.
pub fn default_host(remote_host: Option<&str>, remote_port: u16) -> String {
    let host = remote_host.unwrap_or("localhost");
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]") // IPv6 literal
    } else {
        host.to_owned()
    };
    if remote_port == 80 {
        host
    } else {
        format!("{host}:{remote_port}")
    }
}

/// Parses `HTTP/1.x NNN reason` into the status and the reason phrase.
pub fn parse_status_line(line: &[u8]) -> Result<(u16, String), String> {
    let text = std::str::from_utf8(line)
        .map_err(|_| format!("not an HTTP response: \"{}\"", escape_bytes(line, 64)))?;
    let text = text.trim_end_matches(['\r', '\n']);
    let mut parts = text.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    let reason = parts.next().unwrap_or_default().to_owned();
    if !version.starts_with("HTTP/1.")
        || code.len() != 3
        || !code.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!(
            "not an HTTP response: \"{}\"",
            escape_bytes(line, 64)
        ));
    }
    let status: u16 = code
        .parse()
        .map_err(|_| format!("not an HTTP response: \"{}\"", escape_bytes(line, 64)))?;
    Ok((status, reason))
}

/// Runs one probe within `budget_ms` (the host's budget for the call).
pub fn probe<T: Tunnel>(
    settings: &Settings,
    tunnel: &mut T,
    clock: &dyn Clock,
    budget_ms: u32,
    default_host: &str,
) -> Outcome {
    let started = clock.now_ms();
    let deadline = Deadline::after(clock, usable_budget_ms(budget_ms));
    let timeout = deadline.remaining(clock, settings.connect_timeout_ms);
    if timeout == 0 {
        return Outcome::Unhealthy("no time left to connect (call budget too small)".to_owned());
    }
    let mut conn = match tunnel.connect(timeout) {
        Ok(conn) => conn,
        Err(NetError::Timeout) => {
            return Outcome::Unhealthy(format!(
                "connect through the tunnel timed out after {timeout} ms"
            ));
        }
        Err(err) => return net::connect_failure(&err),
    };
    let outcome = exchange(settings, &mut conn, clock, deadline, default_host);
    conn.close();
    let elapsed = clock.now_ms().saturating_sub(started);
    match (outcome, settings.slow_ms) {
        (Outcome::Healthy, Some(slow)) if elapsed > slow => {
            Outcome::Degraded(format!("slow: {elapsed} ms (slow_ms = {slow})"))
        }
        (outcome, _) => outcome,
    }
}

fn exchange(
    settings: &Settings,
    conn: &mut dyn Conn,
    clock: &dyn Clock,
    deadline: Deadline,
    default_host: &str,
) -> Outcome {
    let write_timeout = deadline.remaining(clock, settings.response_timeout_ms);
    if write_timeout == 0 {
        return Outcome::Unhealthy("no time left to send the request".to_owned());
    }
    if let Err(err) = conn.write(&settings.request(default_host), write_timeout) {
        return Outcome::Unhealthy(format!("sending the request failed: {err}"));
    }
    let response_deadline = Deadline::after(
        clock,
        u64::from(deadline.remaining(clock, settings.response_timeout_ms)),
    );
    let end = net::read_until(
        conn,
        clock,
        response_deadline,
        settings.response_timeout_ms,
        MAX_STATUS_LINE,
        &|b| b.contains(&b'\n'),
    );
    let line = match end {
        ReadEnd::Done(bytes) => {
            let end = bytes
                .iter()
                .position(|b| *b == b'\n')
                .map_or(bytes.len(), |i| i + 1);
            bytes[..end].to_vec()
        }
        ReadEnd::Eof(bytes) if bytes.is_empty() => {
            return Outcome::Unhealthy("connection closed without a response".to_owned());
        }
        ReadEnd::Eof(bytes) => {
            return Outcome::Unhealthy(format!(
                "connection closed mid status line: \"{}\"",
                escape_bytes(&bytes, 64)
            ));
        }
        ReadEnd::Timeout(bytes) => {
            return Outcome::Unhealthy(format!(
                "no response within {} ms{}",
                settings.response_timeout_ms,
                if bytes.is_empty() {
                    String::new()
                } else {
                    format!(" (partial: \"{}\")", escape_bytes(&bytes, 64))
                }
            ));
        }
        ReadEnd::Limit(bytes) => {
            return Outcome::Unhealthy(format!(
                "not an HTTP response: no line break in the first {} bytes (\"{}\")",
                bytes.len(),
                escape_bytes(&bytes, 64)
            ));
        }
        ReadEnd::Failed(err, _) => {
            return Outcome::Unhealthy(format!("reading the response failed: {err}"));
        }
    };
    match parse_status_line(&line) {
        Err(reason) => Outcome::Unhealthy(reason),
        Ok((status, _)) if (settings.status_min..=settings.status_max).contains(&status) => {
            Outcome::Healthy
        }
        Ok((status, reason)) => Outcome::Unhealthy(format!(
            "HTTP {status} {reason} for {} {}, expected {}..={}",
            settings.method, settings.path, settings.status_min, settings.status_max
        )),
    }
}

// ----- component glue --------------------------------------------------------------------

/// The component: the settings `init` validated.
pub struct HttpCheck(Settings);

impl HealthCheck for HttpCheck {
    type Config = RawConfig;

    fn new(config: RawConfig) -> Result<Self, String> {
        Settings::from_json(config.as_str()).map(Self)
    }

    fn check(&mut self, context: ProbeContext) -> Outcome {
        let host = default_host(
            context.tunnel.remote_host.as_deref(),
            context.tunnel.remote_port,
        );
        let clock = SystemClock::start();
        let outcome = probe(&self.0, &mut HostTunnel, &clock, context.budget_ms, &host);
        if let Outcome::Degraded(reason) = &outcome
            && reason.starts_with("cannot probe")
        {
            host::log(
                LogLevel::Error,
                &format!("http on {}: {reason}", context.tunnel.name),
            );
        }
        outcome
    }
}

// describe: the version from Cargo.toml (the package is `http-check`, the plugin `http`).
ssm_tether_plugin::health_check!(
    HttpCheck,
    name = "http",
    description = "Sends an HTTP/1.1 request through the tunnel; expects a status range."
);

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use ssm_tether_plugin::FakeClock;
    use ssm_tether_plugin::net::{FakeTunnel, Step};

    use super::*;

    fn settings(json: &str) -> Settings {
        Settings::from_json(json).expect(json)
    }

    fn run(s: &Settings, steps: Vec<Step>) -> (Outcome, FakeTunnel) {
        let clock = Rc::new(FakeClock::default());
        let mut t = FakeTunnel::new(clock.clone(), steps).connect_delay(5);
        let outcome = probe(s, &mut t, &*clock, 10_000, "db.internal:8080");
        (outcome, t)
    }

    fn response(text: &str) -> Vec<Step> {
        vec![Step::Data(10, text.as_bytes().to_vec())]
    }

    #[test]
    fn config_keys_and_errors() {
        assert_eq!(settings("{}"), Settings::default());
        let s = settings(
            r#"{"method": "head", "path": "/healthz?x=1", "host": "api.internal",
                "headers": {"Authorization": "Bearer t"}, "status_min": 200, "status_max": 204,
                "connect_timeout_ms": 100, "response_timeout_ms": 200, "slow_ms": 50}"#,
        );
        assert_eq!(s.method, "HEAD");
        assert_eq!((s.status_min, s.status_max), (200, 204));
        assert_eq!(
            s.headers,
            vec![("Authorization".to_owned(), "Bearer t".to_owned())]
        );
        for (json, key) in [
            (r#"{"method": "BREW"}"#, "`method`"),
            (r#"{"path": "healthz"}"#, "`path`"),
            (r#"{"path": "/a b"}"#, "`path`"),
            (r#"{"host": "a b"}"#, "`host`"),
            (r#"{"headers": {"X-A": "1\r\nEvil: 1"}}"#, "`headers.X-A`"),
            (r#"{"headers": {"Bad Name": "1"}}"#, "`headers`"),
            (r#"{"headers": {"Host": "x"}}"#, "`headers.Host`"),
            (r#"{"headers": {"X-A": 1}}"#, "`headers.X-A`"),
            (r#"{"status_min": 700}"#, "`status_min`"),
            (r#"{"status_min": 300, "status_max": 200}"#, "`status_min`"),
            (r#"{"response_timeout_ms": 0}"#, "`response_timeout_ms`"),
            (r#"{"status": 200}"#, "`status`"),
        ] {
            let err = Settings::from_json(json).expect_err(json);
            assert!(err.contains(key), "{json}: {err}");
        }
    }

    #[test]
    fn the_request_is_http_1_1_with_host_and_close() {
        let s = settings(r#"{"path": "/healthz", "headers": {"X-Probe": "1"}}"#);
        let (outcome, t) = run(&s, response("HTTP/1.1 200 OK\r\n\r\n"));
        assert_eq!(outcome, Outcome::Healthy);
        assert_eq!(
            String::from_utf8(t.written()).expect("ascii"),
            format!(
                "GET /healthz HTTP/1.1\r\nHost: db.internal:8080\r\nUser-Agent: ssm-tether-health/{}\r\n\
                 Accept: */*\r\nConnection: close\r\nX-Probe: 1\r\n\r\n",
                env!("CARGO_PKG_VERSION")
            )
        );
        assert!(t.closed());
        assert!(
            settings(r#"{"method": "POST"}"#)
                .request("h")
                .windows(17)
                .any(|w| w == b"Content-Length: 0")
        );
        assert_eq!(default_host(None, 80), "localhost");
        assert_eq!(default_host(Some("db"), 5432), "db:5432");
        assert_eq!(default_host(Some("::1"), 8080), "[::1]:8080");
    }

    #[test]
    fn the_status_range_decides() {
        let s = Settings::default();
        assert_eq!(
            run(&s, response("HTTP/1.1 204 No Content\r\n")).0,
            Outcome::Healthy
        );
        assert_eq!(
            run(&s, response("HTTP/1.0 302 Found\r\n")).0,
            Outcome::Healthy
        );
        assert!(matches!(
            run(&s, response("HTTP/1.1 503 Service Unavailable\r\n\r\n")).0,
            Outcome::Unhealthy(r) if r.contains("HTTP 503 Service Unavailable") && r.contains("200..=399")
        ));
        let strict = settings(r#"{"status_min": 200, "status_max": 200}"#);
        assert!(matches!(
            run(&strict, response("HTTP/1.1 204 \r\n")).0,
            Outcome::Unhealthy(_)
        ));
        // The status line may arrive in pieces.
        let pieces = vec![
            Step::Data(5, b"HTTP/1.1 2".to_vec()),
            Step::Data(5, b"00 OK\r\n".to_vec()),
        ];
        assert_eq!(run(&s, pieces).0, Outcome::Healthy);
    }

    #[test]
    fn broken_upstreams_are_unhealthy() {
        let s = Settings::default();
        for (steps, expected) in [
            (vec![Step::Eof(5)], "closed without a response"),
            (response("SSH-2.0-OpenSSH\r\n"), "not an HTTP response"),
            (
                vec![Step::Data(5, b"HTTP/1.1 200".to_vec()), Step::Eof(5)],
                "mid status line",
            ),
            (vec![], "no response within 5000 ms"),
            (vec![Step::Data(5, vec![b'x'; 5000])], "no line break"),
            (
                vec![Step::Fail(NetError::Closed)],
                "reading the response failed",
            ),
        ] {
            match run(&s, steps).0 {
                Outcome::Unhealthy(reason) => assert!(reason.contains(expected), "{reason}"),
                other => panic!("{expected}: {other:?}"),
            }
        }
        let clock = Rc::new(FakeClock::default());
        let mut t = FakeTunnel::new(clock.clone(), vec![])
            .connect_error(NetError::Unreachable("connection refused".into()));
        assert!(matches!(
            probe(&s, &mut t, &*clock, 10_000, "h"),
            Outcome::Unhealthy(r) if r.contains("refused")
        ));
    }

    #[test]
    fn slow_answers_are_degraded() {
        let s = settings(r#"{"slow_ms": 10}"#);
        assert!(matches!(
            run(&s, response("HTTP/1.1 200 OK\r\n")).0,
            Outcome::Degraded(r) if r.contains("15 ms")
        ));
    }
}
