//! Publication control and session consequences when a socket joins or leaves:
//! `pause_publication` / `start_publication`, and the end of the session after the agent's
//! `Terminating`.

use std::sync::Arc;

use ssm_tether_protocol::MessageType;

use super::OtherSide;
use crate::events::{Event, Side};
use crate::service::{Service, Termination, send_control};
use crate::sessions::{Outbound, Peer, Session};

/// A side's socket was accepted: publication control for both sides.
pub(super) async fn joined(service: &Service, session: &Session, side: Side) {
    let _ordered = session.publication.lock().await;
    let (start_other, pause_self) = {
        let mut state = session.state();
        match side {
            Side::Client => {
                state.client_seen = true;
                state.client_away_since = None;
                // A new client socket starts unpaused; it is paused if the agent is away
                // (after having joined once: before that the agent is merely starting).
                state.client_paused = state.agent.is_none() && state.agent_seen;
                let start = state.agent.is_some() && state.agent_paused;
                if start {
                    state.agent_paused = false;
                }
                (start, state.client_paused)
            }
            Side::Agent => {
                // The agent clears its own pause on every reconnect; before the client's first
                // connection the agent is not paused (the client is still starting).
                state.agent_seen = true;
                state.agent_paused = state.client.is_none() && state.client_seen;
                let start = state.client.is_some() && state.client_paused;
                if start {
                    state.client_paused = false;
                }
                (start, state.agent_paused)
            }
        }
    };
    if start_other {
        service
            .send_generated(session, side.other(), MessageType::StartPublication, "")
            .await;
    }
    if pause_self {
        service
            .send_generated(session, side, MessageType::PausePublication, "")
            .await;
    }
}

/// A side's socket ended: deregister it (unless replaced already) and react.
pub(super) async fn left(
    service: &Service,
    session: &Arc<Session>,
    side: Side,
    peer: &Peer,
    why: String,
) {
    enum Then {
        Nothing,
        PauseOther,
        Terminate,
    }
    let ordered = session.publication.lock().await;
    let then = {
        let mut state = session.state();
        let slot = state.peer_mut(side);
        if slot.as_ref().is_none_or(|p| p.conn_id != peer.conn_id) {
            // Replaced by a newer socket: that one carries on.
            Then::Nothing
        } else {
            *slot = None;
            if state.terminated.is_some() {
                Then::Nothing
            } else {
                match side {
                    Side::Client => {
                        state.client_away_since = Some(std::time::Instant::now());
                        if state.agent.is_some() && !state.agent_paused {
                            state.agent_paused = true;
                            Then::PauseOther
                        } else {
                            Then::Nothing
                        }
                    }
                    Side::Agent if state.agent_terminating => Then::Terminate,
                    Side::Agent => {
                        if state.client.is_some() && !state.client_paused {
                            state.client_paused = true;
                            Then::PauseOther
                        } else {
                            Then::Nothing
                        }
                    }
                }
            }
        }
    };
    service.events.emit(Event::Socket {
        session_id: session.id.clone(),
        side,
        what: "closed".to_owned(),
        detail: why,
    });
    match then {
        Then::Nothing => {}
        Then::PauseOther => {
            service
                .send_generated(session, side.other(), MessageType::PausePublication, "")
                .await;
        }
        Then::Terminate => {
            drop(ordered);
            service
                .terminate(session, Termination::AgentTerminated)
                .await;
        }
    }
    // Nobody reads this socket's queue any more; make sure its writer ends.
    send_control(peer, Outbound::Close(1000, "Bye".to_owned())).await;
}
