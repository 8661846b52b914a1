//! Recovery decisions: after every disconnect and every failed attempt, what to do next.
//!
//! The runtime executes decisions; a policy makes them. [`BuiltinPolicy`] is the default and
//! the fallback whenever a plugin policy cannot answer. It is sans-IO: a pure function of the
//! [`DecisionContext`] and a seeded RNG, so its behaviour is tested without sockets or clocks.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::aws::ApiError;
pub use crate::policy::RecoverySettings;

/// Why the tunnel is not forwarding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The service closed the WebSocket with 1000 (its hourly recycle): resume at once.
    PlannedClose,
    /// The WebSocket failed (read/write error, abnormal close).
    TransportError(String),
    /// No pong or frame arrived within the pong timeout (black-holed socket).
    PingTimeout,
    /// Opening the WebSocket failed (upgrade refused, connect error, stale URL).
    ConnectFailed(String),
    /// ResumeSession failed; the session may still exist.
    ResumeFailed(ApiError),
    /// StartSession failed.
    StartFailed(ApiError),
    /// The handshake did not lead to forwarding.
    HandshakeFailed(String),
    /// The service says the session is over (no token, DoesNotExist, channel_closed).
    SessionGone(String),
    /// The agent's byte stream broke the smux protocol; the session's streams are lost.
    ProtocolError(String),
    /// Health checks say the tunnel carries nothing although the socket looks fine.
    ProbeFailed(ProbeFailure),
    /// The session is about to reach its maximum duration; a fresh session is needed.
    MaxDurationReached,
}

/// A health check's verdict that made the runtime stop trusting the tunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeFailure {
    /// Which check: the plugin's name, or `builtin:NAME`.
    pub check: String,
    /// Consecutive unhealthy runs, including this one.
    pub consecutive_failures: u32,
    /// The check's reason.
    pub reason: String,
}

impl Cause {
    /// A short stable name, for events and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::PlannedClose => "planned_close",
            Self::TransportError(_) => "transport_error",
            Self::PingTimeout => "ping_timeout",
            Self::ConnectFailed(_) => "connect_failed",
            Self::ResumeFailed(_) => "resume_failed",
            Self::StartFailed(_) => "start_failed",
            Self::HandshakeFailed(_) => "handshake_failed",
            Self::SessionGone(_) => "session_gone",
            Self::ProtocolError(_) => "protocol_error",
            Self::ProbeFailed(_) => "probe_failed",
            Self::MaxDurationReached => "max_duration_reached",
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PlannedClose => f.write_str("planned close (1000)"),
            Self::PingTimeout => f.write_str("no pong within the timeout"),
            Self::MaxDurationReached => f.write_str("maximum session duration reached"),
            Self::ResumeFailed(err) | Self::StartFailed(err) => {
                write!(f, "{}: {err}", self.kind())
            }
            Self::ProbeFailed(probe) => write!(
                f,
                "probe_failed: {} unhealthy {} time(s) in a row: {}",
                probe.check, probe.consecutive_failures, probe.reason
            ),
            Self::TransportError(detail)
            | Self::ConnectFailed(detail)
            | Self::HandshakeFailed(detail)
            | Self::SessionGone(detail)
            | Self::ProtocolError(detail) => write!(f, "{}: {detail}", self.kind()),
        }
    }
}

/// Everything a policy may consider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionContext {
    /// The latest cause.
    pub cause: Cause,
    /// Attempts already made in this outage (0 on the disconnect itself).
    pub attempt: u32,
    /// Consecutive failed resume attempts in this outage.
    pub failed_resumes: u32,
    /// Time since forwarding stopped.
    pub outage: Duration,
    /// Time since the current session started.
    pub session_age: Duration,
    /// The delay chosen for the previous attempt of this outage.
    pub last_delay: Option<Duration>,
    /// Earlier outages of this tunnel, newest first (at most [`HISTORY_LEN`]).
    pub history: Vec<OutageSummary>,
}

/// Outages kept in [`DecisionContext::history`].
pub const HISTORY_LEN: usize = 16;

/// One earlier outage, for policies that look at the recent past.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutageSummary {
    /// The cause that started it.
    pub cause: Cause,
    /// Failed recovery attempts in it.
    pub attempts: u32,
    /// Failed resumes in it.
    pub failed_resumes: u32,
    /// How long forwarding was interrupted.
    pub duration: Duration,
    /// Whether it ended in a resume (connections kept) or a restart.
    pub restarted: bool,
    /// How long forwarding then lasted: until the next outage in the list, or for the newest
    /// entry until the current outage began.
    pub stable: Duration,
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// ResumeSession after the delay, keeping the session, its sequence numbers and streams.
    Resume {
        /// Wait this long first.
        after: Duration,
    },
    /// StartSession anew after the delay; the local listener stays bound.
    Restart {
        /// Wait this long first.
        after: Duration,
    },
    /// Stop the tunnel.
    GiveUp {
        /// Why, for the exit message.
        reason: String,
    },
}

/// The built-in reconnect policy: planned close → resume at once; session gone → restart;
/// otherwise resume with full-jitter exponential backoff, escalating to restarts after
/// [`RecoverySettings::resume_attempts_before_restart`] failures; never gives up unless
/// [`RecoverySettings::give_up_after`] is set.
#[derive(Debug)]
pub struct BuiltinPolicy {
    config: RecoverySettings,
    rng: StdRng,
}

impl BuiltinPolicy {
    /// A policy with its jitter seeded (runs are reproducible for a given seed).
    pub fn new(config: RecoverySettings, seed: u64) -> Self {
        Self {
            config,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The settings.
    pub fn config(&self) -> &RecoverySettings {
        &self.config
    }

    /// Decides the next step.
    pub fn decide(&mut self, ctx: &DecisionContext) -> Decision {
        if let Some(limit) = self.config.give_up_after
            && ctx.outage >= limit
        {
            return Decision::GiveUp {
                reason: format!(
                    "tunnel down for {:?} (limit {:?}); last cause: {}",
                    ctx.outage, limit, ctx.cause
                ),
            };
        }
        match &ctx.cause {
            Cause::PlannedClose if ctx.attempt == 0 => Decision::Resume {
                after: Duration::ZERO,
            },
            Cause::SessionGone(_) | Cause::ProbeFailed(_) | Cause::MaxDurationReached => {
                Decision::Restart {
                    after: if ctx.attempt == 0 {
                        Duration::ZERO
                    } else {
                        self.backoff(ctx.attempt)
                    },
                }
            }
            Cause::StartFailed(_) | Cause::HandshakeFailed(_) | Cause::ProtocolError(_) => {
                Decision::Restart {
                    after: self.backoff(ctx.attempt),
                }
            }
            _ if ctx.failed_resumes >= self.config.resume_attempts_before_restart => {
                Decision::Restart {
                    after: self.backoff(ctx.attempt),
                }
            }
            _ => Decision::Resume {
                after: self.backoff(ctx.attempt),
            },
        }
    }

    /// Full jitter: uniform in `[0, min(max, base · 2^attempt)]`.
    fn backoff(&mut self, attempt: u32) -> Duration {
        let ceiling = self
            .config
            .base_delay
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
            .min(self.config.max_delay);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.random_range(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(cause: Cause, attempt: u32, failed_resumes: u32) -> DecisionContext {
        DecisionContext {
            cause,
            attempt,
            failed_resumes,
            outage: Duration::from_secs(1),
            session_age: Duration::from_secs(3600),
            last_delay: None,
            history: Vec::new(),
        }
    }

    fn denied() -> ApiError {
        ApiError {
            operation: "ResumeSession",
            kind: crate::aws::ApiErrorKind::AccessDenied,
            code: Some("AccessDeniedException".into()),
            message: "no".into(),
        }
    }

    #[test]
    fn planned_close_resumes_at_once_and_gone_sessions_restart() {
        let mut policy = BuiltinPolicy::new(RecoverySettings::default(), 1);
        assert_eq!(
            policy.decide(&ctx(Cause::PlannedClose, 0, 0)),
            Decision::Resume {
                after: Duration::ZERO
            }
        );
        assert_eq!(
            policy.decide(&ctx(Cause::SessionGone("no token".into()), 0, 0)),
            Decision::Restart {
                after: Duration::ZERO
            }
        );
    }

    #[test]
    fn failures_back_off_within_the_jitter_ceiling_and_escalate() {
        let config = RecoverySettings {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            resume_attempts_before_restart: 3,
            ..RecoverySettings::default()
        };
        let mut policy = BuiltinPolicy::new(config, 7);
        for attempt in 0..10 {
            let ceiling = Duration::from_millis(100 << attempt.min(10)).min(Duration::from_secs(1));
            match policy.decide(&ctx(Cause::PingTimeout, attempt, attempt.min(2))) {
                Decision::Resume { after } => assert!(after <= ceiling, "{attempt}: {after:?}"),
                other => panic!("attempt {attempt}: {other:?}"),
            }
        }
        assert!(matches!(
            policy.decide(&ctx(Cause::ResumeFailed(denied()), 3, 3)),
            Decision::Restart { .. }
        ));
    }

    #[test]
    fn gives_up_only_when_configured() {
        let mut never = BuiltinPolicy::new(RecoverySettings::default(), 1);
        let mut long = ctx(Cause::ResumeFailed(denied()), 500, 2);
        long.outage = Duration::from_secs(86_400);
        assert!(!matches!(never.decide(&long), Decision::GiveUp { .. }));
        let mut bounded = BuiltinPolicy::new(
            RecoverySettings {
                give_up_after: Some(Duration::from_secs(60)),
                ..RecoverySettings::default()
            },
            1,
        );
        assert!(matches!(bounded.decide(&long), Decision::GiveUp { .. }));
    }

    #[test]
    fn same_seed_same_delays() {
        let delays = |seed| {
            let mut policy = BuiltinPolicy::new(RecoverySettings::default(), seed);
            (1..6)
                .map(|a| policy.decide(&ctx(Cause::PingTimeout, a, 0)))
                .collect::<Vec<_>>()
        };
        assert_eq!(delays(3), delays(3));
    }
}
