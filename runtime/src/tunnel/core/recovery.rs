//! One session's outage bookkeeping: what the current outage has cost, what earlier ones
//! cost, and the plan generation that tells a current operation from a stale one.
//!
//! Planned closes (the service's `close 1000` recycle) are outages too — they appear in the
//! history plugins see — but they never count against a backoff: a planned outage starts at
//! attempt 0 with nothing carried over, and ending one does not feed the flapping carry-over
//! of unplanned outages. Without that rule a tunnel recycled more often than `stable_after`
//! (always, at the service's hourly cadence compressed, or with a short `stable_after`)
//! would count every recycle as another attempt of one endless outage, and planned resumes
//! would back off further and further.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::events::{Cause, SessionRef};
use crate::recovery::{DecisionContext, HISTORY_LEN, OutageSummary};

/// How an outage ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ending {
    /// The same session came back.
    Resumed,
    /// A new session replaced a gone one.
    Restarted,
    /// The first session of this entity came up after failed attempts.
    Started,
}

#[derive(Debug)]
struct Outage {
    since: Instant,
    cause: Cause,
    planned: bool,
    attempt: u32,
    failed_resumes: u32,
    /// Failed attempts of the previous unplanned outage, when it ended less than
    /// `stable_after` before this unplanned one began (flapping): the built-in policy starts
    /// this outage's backoff where that one ended. Only the previous outage's own attempts
    /// count (a chain of short outages does not add up to ever longer delays), and failed
    /// resumes are not carried: the resume that ended the previous outage proved the session
    /// alive, so it is no reason to give the session up. Plugins see raw counts and the
    /// history.
    carried: u32,
    last_delay: Option<Duration>,
}

#[derive(Debug)]
struct PastOutage {
    cause: Cause,
    attempts: u32,
    failed_resumes: u32,
    duration: Duration,
    restarted: bool,
    ended: Instant,
}

/// The recovery state of one session; see the module docs.
#[derive(Debug, Default)]
pub(super) struct Recovery {
    /// Generation of the recovery plan: every decision starts a new one, and the result of an
    /// operation begun under an older one is stale.
    epoch: u64,
    outage: Option<Outage>,
    /// When the last unplanned outage ended, and its failed attempts.
    last_unplanned: Option<(Instant, u32)>,
    history: VecDeque<PastOutage>,
}

impl Recovery {
    /// The current plan generation.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Starts a new plan; whatever the old one still has in flight is stale from now on.
    pub(super) fn new_plan(&mut self) -> u64 {
        self.epoch = self.epoch.wrapping_add(1);
        self.epoch
    }

    /// Whether an outage is under way.
    pub(super) fn in_outage(&self) -> bool {
        self.outage.is_some()
    }

    /// Forwarding stopped for `cause`: starts an outage unless one is under way.
    pub(super) fn disconnected(&mut self, cause: &Cause, now: Instant, stable_after: Duration) {
        if self.outage.is_some() {
            return;
        }
        let planned = cause.is_planned();
        let carried = match self.last_unplanned {
            Some((at, attempts))
                if !planned && now.saturating_duration_since(at) < stable_after =>
            {
                attempts
            }
            _ => 0,
        };
        self.outage = Some(Outage {
            since: now,
            cause: cause.clone(),
            planned,
            attempt: 0,
            failed_resumes: 0,
            carried,
            last_delay: None,
        });
    }

    /// A recovery attempt failed; returns the attempts made so far in this outage.
    pub(super) fn failed(&mut self, cause: &Cause, now: Instant) -> u32 {
        let outage = self.outage.get_or_insert_with(|| Outage {
            since: now,
            cause: cause.clone(),
            planned: false,
            attempt: 0,
            failed_resumes: 0,
            carried: 0,
            last_delay: None,
        });
        outage.attempt += 1;
        outage.attempt
    }

    /// A resume (ResumeSession, or its WebSocket) failed.
    pub(super) fn failed_resume(&mut self) {
        if let Some(outage) = self.outage.as_mut() {
            outage.failed_resumes += 1;
        }
    }

    /// Records the delay chosen for the next step.
    pub(super) fn set_last_delay(&mut self, delay: Duration) {
        if let Some(outage) = self.outage.as_mut() {
            outage.last_delay = Some(delay);
        }
    }

    /// The 1-based attempt the next step is, and the time since forwarding stopped.
    pub(super) fn next_attempt(&self, now: Instant) -> (u32, Duration) {
        self.outage.as_ref().map_or((1, Duration::ZERO), |o| {
            (o.attempt + 1, now.saturating_duration_since(o.since))
        })
    }

    /// What a policy is told: raw counts of this outage and the history.
    pub(super) fn context(
        &self,
        session: SessionRef,
        cause: Cause,
        now: Instant,
        session_age: Duration,
    ) -> DecisionContext {
        let (attempt, failed_resumes, since, last_delay) =
            self.outage.as_ref().map_or((0, 0, now, None), |o| {
                (o.attempt, o.failed_resumes, o.since, o.last_delay)
            });
        DecisionContext {
            session,
            cause,
            attempt,
            failed_resumes,
            outage: now.saturating_duration_since(since),
            session_age,
            last_delay,
            history: self.history_until(since),
        }
    }

    /// The context the built-in policy decides on: a flapping unplanned outage continues the
    /// previous one's backoff.
    pub(super) fn builtin_context(&self, context: &DecisionContext) -> DecisionContext {
        let carried = self.outage.as_ref().map_or(0, |o| o.carried);
        let mut context = context.clone();
        context.attempt = context.attempt.saturating_add(carried);
        context
    }

    /// Ends the outage, if any; returns its duration.
    pub(super) fn end(&mut self, now: Instant, ending: Ending) -> Option<Duration> {
        let outage = self.outage.take()?;
        let duration = now.saturating_duration_since(outage.since);
        if !outage.planned {
            self.last_unplanned = Some((now, outage.attempt));
        }
        self.history.push_front(PastOutage {
            cause: outage.cause,
            attempts: outage.attempt,
            failed_resumes: outage.failed_resumes,
            duration,
            restarted: ending != Ending::Resumed,
            ended: now,
        });
        self.history.truncate(HISTORY_LEN);
        Some(duration)
    }

    /// Earlier outages for a decision in the outage that began at `current`.
    fn history_until(&self, current: Instant) -> Vec<OutageSummary> {
        let mut next_start = current;
        self.history
            .iter()
            .map(|past| {
                let summary = OutageSummary {
                    cause: past.cause.clone(),
                    attempts: past.attempts,
                    failed_resumes: past.failed_resumes,
                    duration: past.duration,
                    restarted: past.restarted,
                    stable: next_start.saturating_duration_since(past.ended),
                };
                next_start = past.ended.checked_sub(past.duration).unwrap_or(past.ended);
                summary
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STABLE: Duration = Duration::from_secs(60);

    #[test]
    fn planned_closes_never_carry_a_budget_and_never_feed_one() {
        let t0 = Instant::now();
        let mut recovery = Recovery::default();
        // An unplanned outage that took three attempts.
        recovery.disconnected(&Cause::PingTimeout, t0, STABLE);
        for _ in 0..3 {
            recovery.failed(&Cause::PingTimeout, t0);
        }
        recovery.end(t0 + Duration::from_secs(1), Ending::Resumed);
        // A planned close one second later: attempt 0, nothing carried.
        let t1 = t0 + Duration::from_secs(2);
        recovery.disconnected(&Cause::PlannedClose, t1, STABLE);
        let ctx = recovery.context(SessionRef::default(), Cause::PlannedClose, t1, STABLE);
        assert_eq!(recovery.builtin_context(&ctx).attempt, 0);
        recovery.end(t1, Ending::Resumed);
        // Many planned closes in a row do not build one up either.
        for i in 0..50 {
            let t = t1 + Duration::from_secs(i);
            recovery.disconnected(&Cause::PlannedClose, t, STABLE);
            let ctx = recovery.context(SessionRef::default(), Cause::PlannedClose, t, STABLE);
            assert_eq!(recovery.builtin_context(&ctx).attempt, 0);
            recovery.end(t, Ending::Resumed);
        }
        // An unplanned outage soon after the first one still flaps: its budget continues.
        let t2 = t1 + Duration::from_secs(55);
        recovery.disconnected(&Cause::PingTimeout, t2, STABLE);
        let ctx = recovery.context(SessionRef::default(), Cause::PingTimeout, t2, STABLE);
        assert_eq!(ctx.attempt, 0, "plugins see raw counts");
        assert_eq!(recovery.builtin_context(&ctx).attempt, 3);
        assert_eq!(ctx.history.len(), HISTORY_LEN, "the history is bounded");
    }

    #[test]
    fn an_unplanned_outage_after_a_stable_period_starts_afresh() {
        let t0 = Instant::now();
        let mut recovery = Recovery::default();
        recovery.disconnected(&Cause::PingTimeout, t0, STABLE);
        recovery.failed(&Cause::PingTimeout, t0);
        recovery.end(t0, Ending::Resumed);
        let later = t0 + STABLE + Duration::from_secs(1);
        recovery.disconnected(&Cause::PingTimeout, later, STABLE);
        let ctx = recovery.context(SessionRef::default(), Cause::PingTimeout, later, STABLE);
        assert_eq!(recovery.builtin_context(&ctx).attempt, 0);
        assert_eq!(ctx.history[0].stable, STABLE + Duration::from_secs(1));
    }
}
