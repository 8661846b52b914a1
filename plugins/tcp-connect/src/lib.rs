//! `tcp-connect`: a health check (world `ssm-tether:plugin/health-check`) that opens a TCP
//! connection through the tunnel and, optionally, expects the server's first bytes (a banner
//! such as `SSH-2.0-`) within a deadline.
//!
//! The probe is [`probe`], tested natively against a scripted tunnel; the component glue at
//! the bottom (the `ssm-tether-plugin` SDK's [`HealthCheck`]) only stores the settings.

use ssm_tether_plugin::net::{self, Conn, HostTunnel, NetError, Outcome, ReadEnd, Tunnel};
use ssm_tether_plugin::{
    Clock, Config, Deadline, HealthCheck, LogLevel, ProbeContext, RawConfig, SystemClock,
    decode_hex, escape_bytes, host, usable_budget_ms,
};

/// The config keys, as in the policy file's `config` table.
pub const KEYS: &[&str] = &[
    "connect_timeout_ms",
    "banner",
    "banner_hex",
    "banner_timeout_ms",
    "slow_ms",
];

/// The check's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Longest wait for the connection through the tunnel.
    pub connect_timeout_ms: u32,
    /// The server's first bytes must start with these; `None`: connecting is enough.
    pub banner: Option<Vec<u8>>,
    /// Longest wait for the banner after connecting.
    pub banner_timeout_ms: u32,
    /// A successful probe slower than this is reported as degraded.
    pub slow_ms: Option<u64>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 3_000,
            banner: None,
            banner_timeout_ms: 3_000,
            slow_ms: None,
        }
    }
}

impl Settings {
    /// Parses and validates `init`'s JSON; every error names the key.
    pub fn from_json(json: &str) -> Result<Self, String> {
        let config = Config::parse(json, KEYS)?;
        let defaults = Self::default();
        let banner = match (config.string("banner")?, config.string("banner_hex")?) {
            (Some(_), Some(_)) => {
                return Err("set either `banner` or `banner_hex`, not both".to_owned());
            }
            (Some(text), None) => Some(text.into_bytes()),
            (None, Some(hex)) => {
                Some(decode_hex(&hex).map_err(|e| format!("`banner_hex` is not hex: {e}"))?)
            }
            (None, None) => None,
        };
        if banner.as_ref().is_some_and(Vec::is_empty) {
            return Err(
                "`banner`/`banner_hex` must not be empty (leave it out instead)".to_owned(),
            );
        }
        if banner.as_ref().is_some_and(|b| b.len() > 4096) {
            return Err("`banner`/`banner_hex` must be at most 4096 bytes".to_owned());
        }
        let settings = Self {
            connect_timeout_ms: config
                .u32("connect_timeout_ms")?
                .unwrap_or(defaults.connect_timeout_ms),
            banner,
            banner_timeout_ms: config
                .u32("banner_timeout_ms")?
                .unwrap_or(defaults.banner_timeout_ms),
            slow_ms: config.u64("slow_ms")?,
        };
        if settings.connect_timeout_ms == 0 {
            return Err("`connect_timeout_ms` must be greater than 0".to_owned());
        }
        if settings.banner_timeout_ms == 0 {
            return Err("`banner_timeout_ms` must be greater than 0".to_owned());
        }
        Ok(settings)
    }
}

/// Runs one probe within `budget_ms` (the host's budget for the call).
pub fn probe<T: Tunnel>(
    settings: &Settings,
    tunnel: &mut T,
    clock: &dyn Clock,
    budget_ms: u32,
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
    let outcome = match &settings.banner {
        None => Outcome::Healthy,
        Some(banner) => check_banner(
            &mut conn,
            clock,
            deadline,
            settings.banner_timeout_ms,
            banner,
        ),
    };
    conn.close();
    let elapsed = clock.now_ms().saturating_sub(started);
    match (outcome, settings.slow_ms) {
        (Outcome::Healthy, Some(slow)) if elapsed > slow => {
            Outcome::Degraded(format!("slow: {elapsed} ms (slow_ms = {slow})"))
        }
        (outcome, _) => outcome,
    }
}

fn check_banner(
    conn: &mut dyn Conn,
    clock: &dyn Clock,
    deadline: Deadline,
    timeout_ms: u32,
    banner: &[u8],
) -> Outcome {
    // The banner's own deadline starts after connecting.
    let banner_deadline = Deadline::after(clock, u64::from(deadline.remaining(clock, timeout_ms)));
    let want = banner.len();
    let end = net::read_until(conn, clock, banner_deadline, timeout_ms, want, &|b| {
        b.len() >= want
    });
    let expected = escape_bytes(banner, 64);
    match end {
        ReadEnd::Done(got) | ReadEnd::Limit(got) if got.starts_with(banner) => Outcome::Healthy,
        ReadEnd::Done(got) | ReadEnd::Limit(got) => Outcome::Unhealthy(format!(
            "unexpected banner: got \"{}\", expected \"{expected}\"",
            escape_bytes(&got, 64)
        )),
        ReadEnd::Eof(got) => Outcome::Unhealthy(format!(
            "connection closed after {} bytes (\"{}\"), before the banner \"{expected}\"",
            got.len(),
            escape_bytes(&got, 64)
        )),
        ReadEnd::Timeout(got) if got.is_empty() => Outcome::Unhealthy(format!(
            "no banner within {timeout_ms} ms (expected \"{expected}\")"
        )),
        ReadEnd::Timeout(got) if !banner.starts_with(&got) => Outcome::Unhealthy(format!(
            "unexpected banner: got \"{}\", expected \"{expected}\"",
            escape_bytes(&got, 64)
        )),
        ReadEnd::Timeout(got) => Outcome::Unhealthy(format!(
            "incomplete banner within {timeout_ms} ms: got \"{}\", expected \"{expected}\"",
            escape_bytes(&got, 64)
        )),
        ReadEnd::Failed(err, _) => Outcome::Unhealthy(format!("reading the banner failed: {err}")),
    }
}

// ----- component glue --------------------------------------------------------------------

/// The component: the settings `init` validated.
pub struct TcpConnect(Settings);

impl HealthCheck for TcpConnect {
    type Config = RawConfig;

    fn new(config: RawConfig) -> Result<Self, String> {
        Settings::from_json(config.as_str()).map(Self)
    }

    fn check(&mut self, context: ProbeContext) -> Outcome {
        let outcome = probe(
            &self.0,
            &mut HostTunnel,
            &SystemClock::start(),
            context.budget_ms,
        );
        if let Outcome::Degraded(reason) = &outcome
            && reason.starts_with("cannot probe")
        {
            host::log(
                LogLevel::Error,
                &format!("tcp-connect on {}: {reason}", context.tunnel.name),
            );
        }
        outcome
    }
}

// describe: name and version from Cargo.toml.
ssm_tether_plugin::health_check!(
    TcpConnect,
    description = "Connects through the tunnel; optionally expects the server's banner."
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

    #[test]
    fn config_keys_and_errors() {
        assert_eq!(settings("{}"), Settings::default());
        let s = settings(
            r#"{"banner": "SSH-2.0-", "connect_timeout_ms": 500, "banner_timeout_ms": 700, "slow_ms": 100}"#,
        );
        assert_eq!(s.banner.as_deref(), Some(&b"SSH-2.0-"[..]));
        assert_eq!(
            (s.connect_timeout_ms, s.banner_timeout_ms, s.slow_ms),
            (500, 700, Some(100))
        );
        assert_eq!(
            settings(r#"{"banner_hex": "2b 50"}"#).banner,
            Some(b"+P".to_vec())
        );
        for (json, key) in [
            (r#"{"banner": "a", "banner_hex": "61"}"#, "`banner_hex`"),
            (r#"{"banner_hex": "zz"}"#, "`banner_hex`"),
            (r#"{"banner": ""}"#, "`banner`"),
            (r#"{"banner": 5}"#, "`banner`"),
            (r#"{"connect_timeout_ms": 0}"#, "`connect_timeout_ms`"),
            (r#"{"banner_timeout_ms": -5}"#, "`banner_timeout_ms`"),
            (r#"{"timeout_ms": 5}"#, "`timeout_ms`"),
        ] {
            let err = Settings::from_json(json).expect_err(json);
            assert!(err.contains(key), "{json}: {err}");
        }
    }

    #[test]
    fn connecting_is_enough_without_a_banner() {
        let clock = Rc::new(FakeClock::default());
        let mut t = FakeTunnel::new(clock.clone(), vec![]).connect_delay(20);
        assert_eq!(
            probe(&Settings::default(), &mut t, &*clock, 5_000),
            Outcome::Healthy
        );
        assert!(t.closed());
    }

    #[test]
    fn connect_failures_are_unhealthy_and_denial_degraded() {
        let clock = Rc::new(FakeClock::default());
        let mut t = FakeTunnel::new(clock.clone(), vec![])
            .connect_error(NetError::Unreachable("connection refused".into()));
        assert!(matches!(
            probe(&Settings::default(), &mut t, &*clock, 5_000),
            Outcome::Unhealthy(r) if r.contains("connection refused")
        ));
        let mut t = FakeTunnel::new(clock.clone(), vec![]).connect_delay(10_000);
        assert!(matches!(
            probe(&Settings::default(), &mut t, &*clock, 5_000),
            Outcome::Unhealthy(r) if r.contains("timed out after 3000 ms")
        ));
        let mut t = FakeTunnel::new(clock.clone(), vec![])
            .connect_error(NetError::Denied("tunnel-tcp not granted".into()));
        assert!(matches!(
            probe(&Settings::default(), &mut t, &*clock, 5_000),
            Outcome::Degraded(r) if r.contains("cannot probe")
        ));
    }

    #[test]
    fn the_connect_timeout_is_capped_by_the_call_budget() {
        let clock = Rc::new(FakeClock::default());
        let mut t = FakeTunnel::new(clock.clone(), vec![]).connect_delay(950);
        // Budget 1000 ms leaves 900 ms usable: a 950 ms connect is a timeout.
        assert!(matches!(
            probe(&Settings::default(), &mut t, &*clock, 1_000),
            Outcome::Unhealthy(r) if r.contains("900 ms")
        ));
    }

    #[test]
    fn banners_are_checked() {
        let s = settings(r#"{"banner": "SSH-2.0-", "banner_timeout_ms": 1000}"#);
        let clock = Rc::new(FakeClock::default());
        let run = |steps: Vec<Step>| {
            let mut t = FakeTunnel::new(clock.clone(), steps);
            probe(&s, &mut t, &*clock, 10_000)
        };
        assert_eq!(
            run(vec![
                Step::Data(5, b"SSH-".to_vec()),
                Step::Data(5, b"2.0-OpenSSH_9\r\n".to_vec())
            ]),
            Outcome::Healthy
        );
        assert!(matches!(
            run(vec![Step::Data(5, b"HTTP/1.1 400 Bad\r\n".to_vec())]),
            Outcome::Unhealthy(r) if r.contains("unexpected banner: got \"HTTP/1.1\"")
        ));
        assert!(matches!(
            run(vec![]),
            Outcome::Unhealthy(r) if r.contains("no banner within 1000 ms")
        ));
        assert!(matches!(
            run(vec![Step::Data(5, b"SSH".to_vec())]),
            Outcome::Unhealthy(r) if r.contains("incomplete banner")
        ));
        assert!(matches!(
            run(vec![Step::Data(5, b"XY".to_vec())]),
            Outcome::Unhealthy(r) if r.contains("unexpected banner")
        ));
        assert!(matches!(
            run(vec![Step::Eof(5)]),
            Outcome::Unhealthy(r) if r.contains("closed after 0 bytes")
        ));
        assert!(matches!(
            run(vec![Step::Data(2_000, b"SSH-2.0-".to_vec())]),
            Outcome::Unhealthy(r) if r.contains("no banner")
        ));
    }

    #[test]
    fn slow_probes_are_degraded() {
        let s = settings(r#"{"slow_ms": 100}"#);
        let clock = Rc::new(FakeClock::default());
        let mut t = FakeTunnel::new(clock.clone(), vec![]).connect_delay(150);
        assert!(matches!(
            probe(&s, &mut t, &*clock, 5_000),
            Outcome::Degraded(r) if r.contains("150 ms")
        ));
        let mut t = FakeTunnel::new(clock.clone(), vec![]).connect_delay(50);
        assert_eq!(probe(&s, &mut t, &*clock, 5_000), Outcome::Healthy);
    }
}
