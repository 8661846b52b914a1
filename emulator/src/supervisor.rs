//! Per-session timers the service enforces: periodic recycles (with skew between the sides),
//! the client grace period, the idle timeout, the maximum session duration, and noticing that
//! the agent model ended on its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::agent_link::AgentOutcome;
use crate::events::Event;
use crate::faults::SideSelection;
use crate::service::{Service, Termination};
use crate::sessions::Session;

/// Timer resolution: fine enough for test periods of a few hundred milliseconds.
const TICK: Duration = Duration::from_millis(10);

/// Starts the supervisor of `session`; it ends with the session or the emulator.
pub(crate) fn spawn(service: Arc<Service>, session: Arc<Session>) {
    tokio::spawn(async move {
        let mut shutdown = service.shutdown.subscribe();
        let mut recycles = RecycleSchedule::default();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() || session.state().terminated.is_some() {
                return;
            }
            let now = Instant::now();
            let settings = service.faults();
            for sides in recycles.due(&service, &settings, now) {
                service.recycle(&session, sides, "periodic").await;
            }
            if let Some(why) = expired(&session, &settings, now) {
                service.events.emit(Event::Fault {
                    session_id: Some(session.id.clone()),
                    kind: why.name().to_owned(),
                    detail: "service-side termination".to_owned(),
                });
                service.terminate(&session, why).await;
                return;
            }
        }
    });
}

/// Which service-enforced limit, if any, has run out.
fn expired(
    session: &Session,
    settings: &crate::faults::FaultSettings,
    now: Instant,
) -> Option<Termination> {
    let state = session.state();
    if let (Some(grace), Some(since)) = (settings.client_grace, state.client_away_since)
        && now.duration_since(since) > grace
    {
        return Some(Termination::ClientGrace);
    }
    if let Some(idle) = settings.idle_timeout
        && now.duration_since(state.last_traffic) > idle
    {
        return Some(Termination::IdleTimeout);
    }
    if let Some(max) = settings.max_session_duration
        && now.duration_since(session.started) > max
    {
        return Some(Termination::MaxSessionDuration);
    }
    if let Some(outcome) = state.agent_task.as_ref().and_then(|a| a.outcome()) {
        return Some(match outcome {
            AgentOutcome::TerminatedByClient | AgentOutcome::ShellEnded(_) => {
                Termination::AgentTerminated
            }
            _ => Termination::AgentExited,
        });
    }
    None
}

/// The periodic recycle plan: each period `k` closes the client side at `k·period + skew_c`
/// and the agent side at `k·period + skew_a`, skews drawn from `0..=recycle_skew`.
#[derive(Default)]
struct RecycleSchedule {
    period: Option<Duration>,
    next_cycle: Option<Instant>,
    client_due: Option<Instant>,
    agent_due: Option<Instant>,
}

impl RecycleSchedule {
    /// The recycles due at `now`; restarts the plan when the period changed.
    fn due(
        &mut self,
        service: &Service,
        settings: &crate::faults::FaultSettings,
        now: Instant,
    ) -> Vec<SideSelection> {
        if self.period != settings.recycle_every {
            *self = Self {
                period: settings.recycle_every,
                next_cycle: settings.recycle_every.map(|p| now + p),
                ..Self::default()
            };
        }
        if let (Some(period), Some(cycle)) = (self.period, self.next_cycle)
            && now >= cycle
        {
            let skew = settings.recycle_skew;
            let draw = || {
                service.with_rng(|rng| {
                    let nanos = u64::try_from(skew.as_nanos()).unwrap_or(u64::MAX);
                    Duration::from_nanos(rng.random_range(0..=nanos))
                })
            };
            if settings.recycle_side.client() {
                self.client_due = Some(cycle + draw());
            }
            if settings.recycle_side.agent() {
                self.agent_due = Some(cycle + draw());
            }
            self.next_cycle = Some(cycle + period);
        }
        let mut due = Vec::new();
        let client = self.client_due.is_some_and(|t| now >= t);
        let agent = self.agent_due.is_some_and(|t| now >= t);
        match (client, agent) {
            (true, true) => due.push(SideSelection::Both),
            (true, false) => due.push(SideSelection::Client),
            (false, true) => due.push(SideSelection::Agent),
            (false, false) => {}
        }
        if client {
            self.client_due = None;
        }
        if agent {
            self.agent_due = None;
        }
        due
    }
}
