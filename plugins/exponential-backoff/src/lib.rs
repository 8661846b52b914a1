//! `exponential-backoff`: the default reconnect policy as a component (world
//! `ssm-tether:plugin/reconnect-policy`).
//!
//! * planned close (1000 "Bye") → resume at once;
//! * session gone (or ResumeSession says `does-not-exist`), failed health checks, maximum
//!   session duration → restart (at once on the disconnect itself, else after a backoff);
//! * StartSession / handshake / protocol failures → restart after a backoff;
//! * anything else → resume after a full-jitter exponential backoff, escalating to restart
//!   after `resume_attempts_before_restart` failed resumes;
//! * never gives up unless `give_up_after_ms` is set;
//! * an outage that starts less than `stable_after_ms` after the previous one ended continues
//!   that outage's budget (flapping protection); a longer stable period resets it.
//!
//! The decision is [`decide`], a plain function of the config, the context and a random
//! number, tested natively; the component glue at the bottom (the `ssm-tether-plugin` SDK's
//! [`ReconnectPolicy`]) only keeps the config and the random generator.

use ssm_tether_plugin::types::{ApiErrorClass, Cause, Decision, DecisionContext};
use ssm_tether_plugin::{Config, RawConfig, ReconnectPolicy};

/// The config keys, as in the policy file's `config` table.
pub const KEYS: &[&str] = &[
    "base_ms",
    "cap_ms",
    "resume_attempts_before_restart",
    "give_up_after_ms",
    "stable_after_ms",
    "seed",
];

/// The policy's settings. Defaults match the runtime's built-in policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// First backoff ceiling (> 0).
    pub base_ms: u64,
    /// Largest backoff ceiling (≥ `base_ms`).
    pub cap_ms: u64,
    /// Failed resumes in an outage before escalating to restarts (≥ 1).
    pub resume_attempts_before_restart: u32,
    /// Give up once the tunnel has been down this long; `None`: never.
    pub give_up_after_ms: Option<u64>,
    /// Forwarding this long after an outage resets the attempt budget.
    pub stable_after_ms: u64,
    /// Seed for the jitter; `None`: random per instance.
    pub seed: Option<u64>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            base_ms: 200,
            cap_ms: 30_000,
            resume_attempts_before_restart: 10,
            give_up_after_ms: None,
            stable_after_ms: 60_000,
            seed: None,
        }
    }
}

impl Settings {
    /// Parses and validates `init`'s JSON; every error names the key.
    pub fn from_json(json: &str) -> Result<Self, String> {
        let config = Config::parse(json, KEYS)?;
        let defaults = Self::default();
        let settings = Self {
            base_ms: config.u64("base_ms")?.unwrap_or(defaults.base_ms),
            cap_ms: config.u64("cap_ms")?.unwrap_or(defaults.cap_ms),
            resume_attempts_before_restart: config
                .u32("resume_attempts_before_restart")?
                .unwrap_or(defaults.resume_attempts_before_restart),
            give_up_after_ms: config.u64("give_up_after_ms")?,
            stable_after_ms: config
                .u64("stable_after_ms")?
                .unwrap_or(defaults.stable_after_ms),
            seed: config.u64("seed")?,
        };
        if settings.base_ms == 0 {
            return Err("`base_ms` must be greater than 0".to_owned());
        }
        if settings.cap_ms < settings.base_ms {
            return Err(format!(
                "`cap_ms` ({}) must be at least `base_ms` ({})",
                settings.cap_ms, settings.base_ms
            ));
        }
        if settings.resume_attempts_before_restart == 0 {
            return Err("`resume_attempts_before_restart` must be at least 1".to_owned());
        }
        if settings.give_up_after_ms == Some(0) {
            return Err(
                "`give_up_after_ms` must be greater than 0 (leave it out to never give up)"
                    .to_owned(),
            );
        }
        Ok(settings)
    }
}

/// The attempt budget of this outage: its own counters plus those of earlier outages that
/// were not separated by at least `stable_after_ms` of forwarding (chained, newest first).
pub fn effective_budget(settings: &Settings, ctx: &DecisionContext) -> (u32, u32) {
    let (mut attempt, mut failed_resumes) = (ctx.attempt, ctx.failed_resumes);
    for past in &ctx.history {
        if past.stable_ms >= settings.stable_after_ms {
            break;
        }
        attempt = attempt.saturating_add(past.attempts);
        failed_resumes = failed_resumes.saturating_add(past.failed_resumes);
    }
    (attempt, failed_resumes)
}

/// The full-jitter ceiling for an attempt: `min(cap, base · 2^attempt)`.
pub fn ceiling_ms(settings: &Settings, attempt: u32) -> u64 {
    settings
        .base_ms
        .saturating_mul(1u64 << attempt.min(40))
        .min(settings.cap_ms)
}

/// Full jitter: uniform in `[0, ceiling]`, from a uniformly random `random`.
pub fn jitter(ceiling: u64, random: u64) -> u64 {
    let span = u128::from(ceiling) + 1;
    u64::try_from((u128::from(random) * span) >> 64).unwrap_or(ceiling)
}

/// Decides the next step. `random` is a uniformly random number (the jitter).
pub fn decide(settings: &Settings, ctx: &DecisionContext, random: u64) -> Decision {
    if let Some(limit) = settings.give_up_after_ms
        && ctx.outage_ms >= limit
    {
        return Decision::GiveUp(format!(
            "tunnel down for {} ms (give_up_after_ms = {limit}); last cause: {}",
            ctx.outage_ms,
            describe_cause(&ctx.cause)
        ));
    }
    let (attempt, failed_resumes) = effective_budget(settings, ctx);
    let backoff = || jitter(ceiling_ms(settings, attempt), random);
    let at_once_then_backoff = || if attempt == 0 { 0 } else { backoff() };
    match &ctx.cause {
        Cause::PlannedClose if attempt == 0 => Decision::ResumeAfter(0),
        Cause::SessionGone(_) | Cause::ProbeFailed(_) | Cause::MaxDurationReached => {
            Decision::RestartAfter(at_once_then_backoff())
        }
        Cause::ResumeFailed(failure) if failure.class == ApiErrorClass::DoesNotExist => {
            Decision::RestartAfter(at_once_then_backoff())
        }
        Cause::StartFailed(_) | Cause::HandshakeFailed(_) | Cause::ProtocolError(_) => {
            Decision::RestartAfter(backoff())
        }
        _ if failed_resumes >= settings.resume_attempts_before_restart => {
            Decision::RestartAfter(backoff())
        }
        _ => Decision::ResumeAfter(backoff()),
    }
}

/// One line for a cause, for the give-up reason.
pub fn describe_cause(cause: &Cause) -> String {
    match cause {
        Cause::PlannedClose => "planned close (1000)".to_owned(),
        Cause::TransportError(d) => format!("transport error: {d}"),
        Cause::PingTimeout => "no pong within the timeout".to_owned(),
        Cause::ConnectFailed(d) => format!("connect failed: {d}"),
        Cause::ResumeFailed(f) => format!("resume failed ({}): {}", class_name(f.class), f.message),
        Cause::StartFailed(f) => format!("start failed ({}): {}", class_name(f.class), f.message),
        Cause::HandshakeFailed(d) => format!("handshake failed: {d}"),
        Cause::SessionGone(d) => format!("session gone: {d}"),
        Cause::ProtocolError(d) => format!("protocol error: {d}"),
        Cause::ProbeFailed(p) => format!(
            "health check {} failed {} times: {}",
            p.check, p.consecutive_failures, p.reason
        ),
        Cause::MaxDurationReached => "maximum session duration reached".to_owned(),
    }
}

/// The WIT name of an API error class, with underscores.
fn class_name(class: ApiErrorClass) -> &'static str {
    match class {
        ApiErrorClass::DoesNotExist => "does_not_exist",
        ApiErrorClass::AccessDenied => "access_denied",
        ApiErrorClass::ExpiredToken => "expired_token",
        ApiErrorClass::Throttling => "throttling",
        ApiErrorClass::InvalidDocument => "invalid_document",
        ApiErrorClass::TargetNotConnected => "target_not_connected",
        ApiErrorClass::Credentials => "credentials",
        ApiErrorClass::Configuration => "configuration",
        ApiErrorClass::Transport => "transport",
        ApiErrorClass::ServerError => "server_error",
        ApiErrorClass::Other => "other",
    }
}

/// splitmix64: small, fast, good enough for jitter.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A seed from the platform (std's per-process random hash keys, `wasi:random` inside a
/// component).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0x5eed);
    hasher.finish()
}

/// The policy of one instance: its settings and jitter generator.
pub struct State {
    settings: Settings,
    rng: Rng,
}

impl State {
    fn new(settings: Settings) -> Self {
        let seed = settings.seed.unwrap_or_else(random_seed);
        Self {
            settings,
            rng: Rng(seed),
        }
    }
}

impl ReconnectPolicy for State {
    type Config = RawConfig;

    fn new(config: RawConfig) -> Result<Self, String> {
        Settings::from_json(config.as_str()).map(State::new)
    }

    fn decide(&mut self, context: DecisionContext) -> Decision {
        let random = self.rng.next();
        decide(&self.settings, &context, random)
    }
}

// describe: name and version from Cargo.toml.
ssm_tether_plugin::reconnect_policy!(
    State,
    description = "Planned close: resume at once; otherwise full-jitter exponential \
                   backoff, escalating from resume to restart."
);

#[cfg(test)]
mod tests {
    use super::*;
    use ssm_tether_plugin::types::{
        ApiFailure, OutageOutcome, OutageSummary, ProbeFailure, TunnelInfo,
    };

    fn tunnel() -> TunnelInfo {
        TunnelInfo {
            name: "db".to_owned(),
            target: "i-0123456789abcdef0".to_owned(),
            remote_host: None,
            remote_port: 5432,
            local_address: "127.0.0.1:5432".to_owned(),
        }
    }

    fn ctx(cause: Cause, attempt: u32, failed_resumes: u32) -> DecisionContext {
        DecisionContext {
            tunnel: tunnel(),
            cause,
            attempt,
            failed_resumes,
            outage_ms: 1_000,
            session_age_ms: 3_600_000,
            last_delay_ms: None,
            history: Vec::new(),
        }
    }

    fn resume_failed(class: ApiErrorClass) -> Cause {
        Cause::ResumeFailed(ApiFailure {
            class,
            code: None,
            message: "x".to_owned(),
        })
    }

    fn past(attempts: u32, failed_resumes: u32, stable_ms: u64) -> OutageSummary {
        OutageSummary {
            cause: Cause::PingTimeout,
            attempts,
            failed_resumes,
            duration_ms: 500,
            outcome: OutageOutcome::Resumed,
            stable_ms,
        }
    }

    fn delay(d: &Decision) -> u64 {
        match d {
            Decision::ResumeAfter(ms) | Decision::RestartAfter(ms) => *ms,
            Decision::GiveUp(reason) => panic!("gave up: {reason}"),
        }
    }

    #[test]
    fn defaults_match_the_builtin_policy() {
        assert_eq!(Settings::from_json("{}"), Ok(Settings::default()));
        assert_eq!(Settings::from_json(""), Ok(Settings::default()));
    }

    #[test]
    fn config_is_read_and_errors_name_the_key() {
        let s = Settings::from_json(
            r#"{"base_ms": 50, "cap_ms": 800, "resume_attempts_before_restart": 2,
                "give_up_after_ms": 600000, "stable_after_ms": 5000, "seed": 9}"#,
        )
        .expect("valid");
        assert_eq!(
            s,
            Settings {
                base_ms: 50,
                cap_ms: 800,
                resume_attempts_before_restart: 2,
                give_up_after_ms: Some(600_000),
                stable_after_ms: 5_000,
                seed: Some(9),
            }
        );
        for (json, key) in [
            (r#"{"base_ms": 0}"#, "`base_ms`"),
            (r#"{"base_ms": "1s"}"#, "`base_ms`"),
            (r#"{"base_ms": 500, "cap_ms": 100}"#, "`cap_ms`"),
            (r#"{"cap_ms": 1.5}"#, "`cap_ms`"),
            (
                r#"{"resume_attempts_before_restart": 0}"#,
                "`resume_attempts_before_restart`",
            ),
            (
                r#"{"resume_attempts_before_restart": 5000000000}"#,
                "`resume_attempts_before_restart`",
            ),
            (r#"{"give_up_after_ms": 0}"#, "`give_up_after_ms`"),
            (r#"{"stable_after_ms": true}"#, "`stable_after_ms`"),
            (r#"{"max_ms": 100}"#, "`max_ms`"),
        ] {
            let err = Settings::from_json(json).expect_err(json);
            assert!(err.contains(key), "{json}: {err}");
        }
    }

    #[test]
    fn planned_close_resumes_at_once() {
        let s = Settings::default();
        for random in [0, u64::MAX] {
            assert_eq!(
                decide(&s, &ctx(Cause::PlannedClose, 0, 0), random),
                Decision::ResumeAfter(0)
            );
        }
        // A planned close during an outage's later attempts backs off like any failure.
        assert!(matches!(
            decide(&s, &ctx(Cause::PlannedClose, 3, 1), u64::MAX),
            Decision::ResumeAfter(ms) if ms > 0
        ));
    }

    #[test]
    fn delays_follow_base_and_cap() {
        let s = Settings {
            base_ms: 100,
            cap_ms: 1_000,
            resume_attempts_before_restart: 100,
            ..Settings::default()
        };
        let expected = [100, 200, 400, 800, 1_000, 1_000, 1_000];
        for (attempt, ceiling) in (0u32..).zip(expected) {
            assert_eq!(ceiling_ms(&s, attempt), ceiling);
            let c = ctx(Cause::PingTimeout, attempt, attempt);
            // The largest random number reaches the ceiling, the smallest gives 0.
            assert_eq!(decide(&s, &c, u64::MAX), Decision::ResumeAfter(ceiling));
            assert_eq!(decide(&s, &c, 0), Decision::ResumeAfter(0));
            for random in [1, 1 << 32, u64::MAX / 3, u64::MAX / 2, u64::MAX - 1] {
                assert!(delay(&decide(&s, &c, random)) <= ceiling);
            }
        }
        assert_eq!(ceiling_ms(&s, u32::MAX), 1_000);
        let huge = Settings {
            base_ms: u64::MAX / 2,
            cap_ms: u64::MAX,
            ..Settings::default()
        };
        assert_eq!(ceiling_ms(&huge, 10), u64::MAX);
    }

    #[test]
    fn jitter_is_spread_over_the_whole_range() {
        let mut rng = Rng(42);
        let draws: Vec<u64> = (0..2_000).map(|_| jitter(1_000, rng.next())).collect();
        assert!(draws.iter().all(|d| *d <= 1_000));
        let low = draws.iter().filter(|d| **d < 250).count();
        let high = draws.iter().filter(|d| **d > 750).count();
        assert!(
            (350..650).contains(&low) && (350..650).contains(&high),
            "{low} {high}"
        );
        let mut a = Rng(7);
        let mut b = Rng(7);
        assert_eq!(a.next(), b.next());
    }

    #[test]
    fn escalates_to_restart_after_failed_resumes() {
        let s = Settings {
            resume_attempts_before_restart: 3,
            ..Settings::default()
        };
        for failed in 0..3 {
            assert!(matches!(
                decide(
                    &s,
                    &ctx(resume_failed(ApiErrorClass::Throttling), failed + 1, failed),
                    5
                ),
                Decision::ResumeAfter(_)
            ));
        }
        assert!(matches!(
            decide(&s, &ctx(resume_failed(ApiErrorClass::Throttling), 3, 3), 5),
            Decision::RestartAfter(_)
        ));
        assert!(matches!(
            decide(&s, &ctx(Cause::PingTimeout, 4, 3), 5),
            Decision::RestartAfter(_)
        ));
    }

    #[test]
    fn gone_sessions_restart_at_once_then_back_off() {
        let s = Settings::default();
        let gone = Cause::SessionGone("no token".to_owned());
        assert_eq!(
            decide(&s, &ctx(gone.clone(), 0, 0), u64::MAX),
            Decision::RestartAfter(0)
        );
        assert_eq!(
            decide(&s, &ctx(gone, 2, 0), u64::MAX),
            Decision::RestartAfter(ceiling_ms(&s, 2))
        );
        assert_eq!(
            decide(
                &s,
                &ctx(resume_failed(ApiErrorClass::DoesNotExist), 0, 0),
                u64::MAX
            ),
            Decision::RestartAfter(0)
        );
        let probe = Cause::ProbeFailed(ProbeFailure {
            check: "http".to_owned(),
            consecutive_failures: 3,
            reason: "HTTP 503".to_owned(),
        });
        assert_eq!(decide(&s, &ctx(probe, 0, 0), 1), Decision::RestartAfter(0));
        assert_eq!(
            decide(&s, &ctx(Cause::MaxDurationReached, 0, 0), 1),
            Decision::RestartAfter(0)
        );
        for cause in [
            Cause::HandshakeFailed("x".to_owned()),
            Cause::ProtocolError("x".to_owned()),
            Cause::StartFailed(ApiFailure {
                class: ApiErrorClass::Throttling,
                code: Some("ThrottlingException".to_owned()),
                message: "slow down".to_owned(),
            }),
        ] {
            assert!(matches!(
                decide(&s, &ctx(cause, 1, 0), 1),
                Decision::RestartAfter(_)
            ));
        }
    }

    #[test]
    fn never_gives_up_unless_configured() {
        let mut long = ctx(resume_failed(ApiErrorClass::ServerError), 500, 2);
        long.outage_ms = 86_400_000;
        assert!(!matches!(
            decide(&Settings::default(), &long, 3),
            Decision::GiveUp(_)
        ));
        let bounded = Settings {
            give_up_after_ms: Some(60_000),
            ..Settings::default()
        };
        match decide(&bounded, &long, 3) {
            Decision::GiveUp(reason) => {
                assert!(
                    reason.contains("60000") && reason.contains("resume failed (server_error)"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        long.outage_ms = 59_999;
        assert!(!matches!(decide(&bounded, &long, 3), Decision::GiveUp(_)));
    }

    #[test]
    fn budget_resets_only_after_a_stable_period() {
        let s = Settings {
            base_ms: 100,
            cap_ms: 100_000,
            resume_attempts_before_restart: 5,
            stable_after_ms: 60_000,
            ..Settings::default()
        };
        // Flapping: the previous outages ended less than a minute before the next began.
        let mut flapping = ctx(Cause::PlannedClose, 0, 0);
        flapping.history = vec![past(2, 2, 10_000), past(3, 2, 30_000), past(9, 9, 600_000)];
        assert_eq!(effective_budget(&s, &flapping), (5, 4));
        assert_eq!(
            decide(&s, &flapping, u64::MAX),
            Decision::ResumeAfter(ceiling_ms(&s, 5))
        );
        flapping.failed_resumes = 1;
        assert!(matches!(
            decide(&s, &flapping, 1),
            Decision::RestartAfter(_)
        ));
        // Stable for a minute or more: a fresh budget.
        let mut stable = ctx(Cause::PlannedClose, 0, 0);
        stable.history = vec![past(2, 2, 60_000), past(3, 2, 1_000)];
        assert_eq!(effective_budget(&s, &stable), (0, 0));
        assert_eq!(decide(&s, &stable, u64::MAX), Decision::ResumeAfter(0));
    }
}
