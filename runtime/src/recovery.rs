//! Recovery decisions: after every disconnect and every failed attempt, what to do next.
//!
//! The runtime executes decisions; a policy makes them. [`BuiltinPolicy`] is the default and
//! the fallback whenever a plugin policy cannot answer. It is sans-IO: a pure function of the
//! [`DecisionContext`] and a seeded RNG, so its behaviour is tested without sockets or clocks.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::events::SessionRef;
pub use crate::events::{Cause, ProbeFailure};
pub use crate::policy::RecoverySettings;

/// Everything a policy may consider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionContext {
    /// The session the decision is about.
    pub session: SessionRef,
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
            Cause::PlannedClose | Cause::Wakeup(_) if ctx.attempt == 0 => Decision::Resume {
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
            session: SessionRef::default(),
            cause,
            attempt,
            failed_resumes,
            outage: Duration::from_secs(1),
            session_age: Duration::from_secs(3600),
            last_delay: None,
            history: Vec::new(),
        }
    }

    fn denied() -> crate::aws::ApiError {
        crate::aws::ApiError {
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
