//! Counters from the tunnel's own events (sans-IO): recycles it saw, outages it recovered
//! from and how long they lasted, deaths, and the reason of every connection it closed
//! (handed to the [`Ledger`]). Nothing here is inferred from the fault schedule.

use std::collections::HashMap;

use ssm_tether::aws::ApiErrorKind;
use ssm_tether::events::{Cause, CloseReason, EventKind, TunnelEvent};

use super::ledger::{Ledger, TunnelClose};

/// Outage durations kept for the percentiles; beyond this (days of one-second hours) the
/// oldest half is dropped: percentiles then describe the recent part of the run.
const MAX_OUTAGES: usize = 1 << 20;

/// What the events said so far.
#[derive(Default)]
pub(super) struct Tally {
    /// Planned closes (1000) the tunnel saw: recycles.
    pub(super) recycles: u64,
    /// `Resumed` events.
    pub(super) resumes: u64,
    /// `Restarted` events.
    pub(super) restarts: u64,
    /// `Rotated` events.
    pub(super) rotations: u64,
    /// `GivingUp` events.
    pub(super) deaths: u64,
    /// Interruptions that ended with a resume or restart, milliseconds.
    pub(super) outages_ms: Vec<u64>,
    /// Events the subscription missed (it lagged); the counters are lower bounds then.
    pub(super) missed: u64,
    /// Local port of every open tunnel connection, by connection id.
    ports: HashMap<u64, u16>,
    /// The latest cause that took each session (by serial) down.
    last_cause: HashMap<u32, Cause>,
}

impl Tally {
    /// Takes one event into account.
    pub(super) fn observe(&mut self, event: &TunnelEvent, ledger: &mut Ledger) {
        let serial = event.session.as_ref().map(|s| s.serial);
        match &event.kind {
            EventKind::Disconnected { cause } | EventKind::AttemptFailed { cause, .. } => {
                if matches!(event.kind, EventKind::Disconnected { .. }) && cause.is_planned() {
                    self.recycles += 1;
                }
                if let Some(serial) = serial {
                    self.last_cause.insert(serial, cause.clone());
                }
            }
            EventKind::Resumed { outage } => {
                self.resumes += 1;
                self.outage(*outage);
            }
            EventKind::Restarted { outage, .. } => {
                self.restarts += 1;
                self.outage(*outage);
            }
            EventKind::Rotated { .. } => self.rotations += 1,
            EventKind::GivingUp { .. } => self.deaths += 1,
            EventKind::SessionEnded { .. } => {
                if let Some(serial) = serial {
                    self.last_cause.remove(&serial);
                }
            }
            EventKind::ConnectionOpened { id, peer } => {
                if let Some(port) = peer.rsplit(':').next().and_then(|p| p.parse().ok()) {
                    self.ports.insert(*id, port);
                }
            }
            EventKind::ConnectionClosed { id, reason, .. } => {
                if let Some(port) = self.ports.remove(id) {
                    let explained_restart = *reason == CloseReason::SessionRestarted
                        && serial
                            .and_then(|s| self.last_cause.get(&s))
                            .is_some_and(ended_by_service);
                    ledger.tunnel_closed(
                        port,
                        TunnelClose {
                            reason: *reason,
                            explained_restart,
                        },
                    );
                }
            }
            _ => {}
        }
    }

    fn outage(&mut self, outage: std::time::Duration) {
        if self.outages_ms.len() >= MAX_OUTAGES {
            self.outages_ms.drain(..MAX_OUTAGES / 2);
        }
        self.outages_ms
            .push(u64::try_from(outage.as_millis()).unwrap_or(u64::MAX));
    }
}

/// Whether the session was ended by the service (a termination, its maximum duration): a
/// restart then must close its connections, whatever the client does.
fn ended_by_service(cause: &Cause) -> bool {
    match cause {
        Cause::SessionGone(_) | Cause::MaxDurationReached => true,
        Cause::ResumeFailed(err) => err.kind == ApiErrorKind::DoesNotExist,
        _ => false,
    }
}

/// The `p`-th percentile (0–100, nearest rank) of `values`, `None` when empty.
pub(super) fn percentile(values: &[u64], p: u32) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = (u64::from(p) * sorted.len() as u64).div_ceil(100).max(1);
    sorted.get(usize::try_from(rank - 1).ok()?).copied()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use ssm_tether::events::SessionRef;

    use super::*;

    fn event(serial: u32, kind: EventKind) -> TunnelEvent {
        TunnelEvent {
            tunnel: "soak".into(),
            session: Some(SessionRef {
                stripe: 0,
                serial,
                session_id: None,
            }),
            at: SystemTime::now(),
            kind,
        }
    }

    #[test]
    fn counts_events_and_explains_restarts_after_the_service_ended_the_session() {
        let (mut tally, mut ledger) = (Tally::default(), Ledger::default());
        let opened = |id, port: u16| EventKind::ConnectionOpened {
            id,
            peer: format!("127.0.0.1:{port}"),
        };
        let closed = |id| EventKind::ConnectionClosed {
            id,
            bytes_up: 0,
            bytes_down: 0,
            reason: CloseReason::SessionRestarted,
        };
        for kind in [
            opened(1, 4001),
            opened(2, 4002),
            EventKind::Disconnected {
                cause: Cause::PlannedClose,
            },
            EventKind::Resumed {
                outage: Duration::from_millis(30),
            },
            EventKind::Disconnected {
                cause: Cause::SessionGone("channel_closed".into()),
            },
            closed(1),
        ] {
            tally.observe(&event(1, kind), &mut ledger);
        }
        for kind in [
            EventKind::Disconnected {
                cause: Cause::PingTimeout,
            },
            closed(2),
        ] {
            tally.observe(&event(2, kind), &mut ledger);
        }
        assert_eq!((tally.recycles, tally.resumes), (1, 1));
        assert_eq!(tally.outages_ms, vec![30]);
        let early = super::super::ledger::Fate::EndedEarly {
            slow_reader: false,
            in_flight: 0,
        };
        ledger.traffic_ended(4001, early);
        ledger.traffic_ended(4002, early);
        assert_eq!(ledger.expected["session-restarted"], 1);
        assert_eq!(ledger.lost_unexpected, 1);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50), Some(50));
        assert_eq!(percentile(&values, 99), Some(99));
        assert_eq!(percentile(&values, 100), Some(100));
        assert_eq!(percentile(&[7], 99), Some(7));
        assert_eq!(percentile(&[], 50), None);
    }
}
