//! The fate of every soak connection, from both ends (sans-IO): the traffic side says whether
//! it closed a connection itself or saw it end, the tunnel's `ConnectionClosed` event says
//! why the tunnel closed it. Whichever arrives second settles the connection, so only open
//! or half-reported connections are held.

use std::collections::{BTreeMap, HashMap};

use ssm_tether::events::CloseReason;

/// At most this many connections are described individually in the report.
const MAX_DETAILS: usize = 20;

/// How the traffic side saw a connection end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fate {
    /// It closed the connection itself after every byte came back.
    ClosedByUs,
    /// The connection ended (EOF, reset) before it was closed; `slow_reader`: it was the
    /// deliberately slow reader.
    EndedEarly {
        /// Whether it was the slow reader.
        slow_reader: bool,
        /// Bytes sent and not yet echoed.
        in_flight: u64,
    },
    /// Bytes were outstanding and nothing arrived for the stall limit: the soak gave up on it.
    Stalled {
        /// Bytes sent and not yet echoed.
        in_flight: u64,
    },
}

/// How the tunnel closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TunnelClose {
    /// The reason of its `ConnectionClosed` event.
    pub(super) reason: CloseReason,
    /// For `session-restarted`: whether the restart replaced a session the service had ended
    /// (terminated, or at its maximum duration), which no client can prevent.
    pub(super) explained_restart: bool,
}

enum Half {
    Traffic(Fate),
    Tunnel(TunnelClose),
}

/// Settled and pending connections, keyed by the local port of the soak's end.
#[derive(Default)]
pub(super) struct Ledger {
    pending: HashMap<u16, Half>,
    /// Closes that are part of the scenario, by reason.
    pub(super) expected: BTreeMap<String, u64>,
    /// Connections the tunnel should have kept but did not.
    pub(super) lost_unexpected: u64,
    /// Bytes in flight on connections closed for an expected reason (gone with their session).
    pub(super) in_flight_at_expected_close: u64,
    /// The first few unexpected losses, for humans.
    pub(super) details: Vec<String>,
}

impl Ledger {
    /// The traffic side's account of the connection from local port `port`.
    pub(super) fn traffic_ended(&mut self, port: u16, fate: Fate) {
        match self.pending.remove(&port) {
            Some(Half::Tunnel(close)) => self.settle(port, fate, Some(close)),
            Some(Half::Traffic(_)) | None => {
                self.pending.insert(port, Half::Traffic(fate));
            }
        }
    }

    /// The tunnel's account of the connection from local port `port`.
    pub(super) fn tunnel_closed(&mut self, port: u16, close: TunnelClose) {
        match self.pending.remove(&port) {
            Some(Half::Traffic(fate)) => self.settle(port, fate, Some(close)),
            Some(Half::Tunnel(_)) | None => {
                self.pending.insert(port, Half::Tunnel(close));
            }
        }
    }

    /// A connection that could not even be opened: the tunnel's listener is bound for the
    /// whole run, so this is a loss.
    pub(super) fn connect_failed(&mut self, error: &std::io::Error) {
        self.lost_unexpected += 1;
        if self.details.len() < MAX_DETAILS {
            self.details
                .push(format!("cannot connect to the tunnel: {error}"));
        }
    }

    /// Connections whose traffic side has ended but whose tunnel event has not arrived.
    pub(super) fn awaiting_tunnel(&self) -> usize {
        self.pending
            .values()
            .filter(|h| matches!(h, Half::Traffic(_)))
            .count()
    }

    /// Settles what is still half-reported at the end of the run: a connection the traffic
    /// side saw end without any reason from the tunnel is a loss.
    pub(super) fn finish(&mut self) {
        let pending: Vec<(u16, Half)> = self.pending.drain().collect();
        for (port, half) in pending {
            if let Half::Traffic(fate) = half {
                self.settle(port, fate, None);
            }
        }
    }

    fn settle(&mut self, port: u16, fate: Fate, close: Option<TunnelClose>) {
        let expected = match (fate, close) {
            (Fate::ClosedByUs, Some(close)) => Some((close.reason, 0)),
            // Our close and the tunnel's end crossed; the bytes all came back.
            (Fate::ClosedByUs, None) => Some((CloseReason::ClientClosed, 0)),
            (
                Fate::EndedEarly {
                    slow_reader,
                    in_flight,
                },
                Some(close),
            ) => {
                let ok = match close.reason {
                    // The service ends a session at its maximum duration; connections still
                    // draining on a rotated predecessor end with it.
                    CloseReason::MaxDuration => true,
                    CloseReason::SessionRestarted => close.explained_restart,
                    // The one deliberately slow reader may be cut off by the runtime's
                    // slow-reader limits; any other connection may not.
                    CloseReason::SlowReader => slow_reader,
                    _ => false,
                };
                ok.then_some((close.reason, in_flight))
            }
            (Fate::EndedEarly { .. } | Fate::Stalled { .. }, _) => None,
        };
        match expected {
            Some((reason, in_flight)) => {
                *self.expected.entry(reason.as_str().to_owned()).or_default() += 1;
                self.in_flight_at_expected_close += in_flight;
            }
            None => {
                self.lost_unexpected += 1;
                if self.details.len() < MAX_DETAILS {
                    let why = close.map_or("no close event from the tunnel".to_owned(), |c| {
                        format!("tunnel reason {}", c.reason)
                    });
                    self.details
                        .push(format!("connection from port {port}: {fate:?}, {why}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(reason: CloseReason, explained_restart: bool) -> TunnelClose {
        TunnelClose {
            reason,
            explained_restart,
        }
    }

    #[test]
    fn settles_in_either_order_and_classifies() {
        let mut ledger = Ledger::default();
        ledger.traffic_ended(1, Fate::ClosedByUs);
        ledger.tunnel_closed(1, close(CloseReason::ClientClosed, false));
        ledger.tunnel_closed(2, close(CloseReason::SessionRestarted, true));
        let early = Fate::EndedEarly {
            slow_reader: false,
            in_flight: 10,
        };
        ledger.traffic_ended(2, early);
        ledger.traffic_ended(3, early);
        ledger.tunnel_closed(3, close(CloseReason::SessionRestarted, false));
        ledger.traffic_ended(4, early);
        ledger.tunnel_closed(4, close(CloseReason::SlowReader, false));
        assert_eq!(ledger.awaiting_tunnel(), 0);
        ledger.traffic_ended(5, early);
        assert_eq!(ledger.awaiting_tunnel(), 1);
        ledger.finish();
        assert_eq!(ledger.expected["client-closed"], 1);
        assert_eq!(ledger.expected["session-restarted"], 1);
        assert_eq!(ledger.in_flight_at_expected_close, 10);
        assert_eq!(ledger.lost_unexpected, 3, "{:?}", ledger.details);
    }
}
