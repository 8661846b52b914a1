//! The MGS data channel: `GET /v1/data-channel/{id}?role=publish_subscribe[&cell-number=…]`.
//!
//! Both the client and the agent dial the same URL shape; the first text frame
//! (OpenDataChannel) tells them apart: only the agent sends `ClientInstanceId`. After a valid,
//! current, single-use token the socket is registered in its session and binary frames are
//! relayed verbatim to the other side.
//!
//! Inferred behaviour (MGS internals are not public, docs/protocol.md §15):
//! * Binary frames that arrive before the token frame (the plugin can race them, §13 item 10)
//!   are kept (up to 64) and relayed once the token is accepted.
//! * Frames for an absent peer are **dropped**, not buffered: both endpoints retransmit their
//!   unacknowledged data after a reconnect, while acks are never retransmitted, which is
//!   exactly the loss a real client has to survive.
//! * `agent_session_state` is consumed; when it says `Terminating` and the agent's socket then
//!   closes, the session ends (`channel_closed` to the client).
//! * While one side is away the other is sent `pause_publication`, and `start_publication`
//!   when it returns.

mod forward;
mod publication;
mod socket;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use ssm_tether_protocol::payload::OpenDataChannel;
use tokio::sync::{Notify, mpsc};

pub(crate) use self::forward::emit_frame;
use self::forward::{Reorder, deliver, forward};
use self::publication::{joined, left};
use self::socket::{reader, writer};
use crate::events::{Event, Side};
use crate::service::Service;
use crate::sessions::{Outbound, Peer, Session};

/// How long a new socket may take to send its OpenDataChannel frame.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Binary frames kept while waiting for the token frame.
const EARLY_FRAMES: usize = 64;
/// Queue depth per socket: a slow reader back-pressures the other side's reader.
const QUEUE: usize = 1024;

/// Handles the upgrade request: refuses unknown or terminated sessions, a wrong role and a
/// stale `cell-number` before any WebSocket exists.
pub(crate) async fn upgrade(
    State(service): State<Arc<Service>>,
    Path(session_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let cell = query.get("cell-number");
    // Only the client's URL carries a cell; the side is known for sure after the token frame.
    let side = if cell.is_some() {
        Side::Client
    } else {
        Side::Agent
    };
    let reject = |status: StatusCode, detail: &str| {
        service.events.emit(Event::Socket {
            session_id: session_id.clone(),
            side,
            what: "upgrade_rejected".to_owned(),
            detail: format!("{} {detail}", status.as_u16()),
        });
        (status, detail.to_owned()).into_response()
    };
    let Some(session) = service.session(&session_id) else {
        return reject(StatusCode::NOT_FOUND, "session not found");
    };
    if query.get("role").map(String::as_str) != Some("publish_subscribe") {
        return reject(StatusCode::BAD_REQUEST, "role must be publish_subscribe");
    }
    if session.state().terminated.is_some() {
        return reject(StatusCode::FORBIDDEN, "session is terminated");
    }
    if let Some(cell) = cell
        && *cell != session.state().cell
    {
        return reject(StatusCode::FORBIDDEN, "stale cell-number");
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return reject(rejection.status(), "not a WebSocket upgrade"),
    };
    ws.on_upgrade(move |socket| connection(service, session, side, socket))
}

/// One data-channel socket from upgrade to close; `guess` is the side its URL suggests.
async fn connection(service: Arc<Service>, session: Arc<Session>, guess: Side, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let Some((open, early)) = read_open(&mut stream).await else {
        service.events.emit(Event::Socket {
            session_id: session.id.clone(),
            side: guess,
            what: "closed_before_open".to_owned(),
            detail: "no OpenDataChannel frame".to_owned(),
        });
        return;
    };
    let side = if open.client_instance_id.is_some() {
        Side::Agent
    } else {
        Side::Client
    };
    let Some((peer, rx)) = register(&service, &session, side, &open) else {
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: 1008,
                reason: "invalid token".into(),
            })))
            .await;
        return;
    };
    service.events.emit(Event::Socket {
        session_id: session.id.clone(),
        side,
        what: "opened".to_owned(),
        detail: describe_open(&open),
    });
    joined(&service, &session, side).await;
    tokio::spawn(writer(sink, rx, peer.clone()));
    let mut reorder = Reorder::default();
    for frame in early {
        forward(&service, &session, side, frame, &mut reorder).await;
    }
    let why = reader(&service, &session, side, &peer, &mut stream, &mut reorder).await;
    if let Some((frame, _)) = reorder.held.take() {
        deliver(&service, &session, side.other(), frame).await;
    }
    left(&service, &session, side, &peer, why).await;
}

/// Reads until the OpenDataChannel text frame; keeps early binary frames.
async fn read_open(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
) -> Option<(OpenDataChannel, Vec<Bytes>)> {
    let mut early = Vec::new();
    let deadline = tokio::time::Instant::now() + OPEN_TIMEOUT;
    loop {
        let message = tokio::time::timeout_at(deadline, stream.next())
            .await
            .ok()??
            .ok()?;
        match message {
            Message::Text(text) => return Some((OpenDataChannel::from_json(&text).ok()?, early)),
            Message::Binary(frame) => {
                if early.len() < EARLY_FRAMES {
                    early.push(frame);
                }
            }
            Message::Ping(_) | Message::Pong(_) => {}
            Message::Close(_) => return None,
        }
    }
}

/// Checks and consumes the token and registers the socket as its side's peer, in one step so
/// that a concurrent termination cannot miss it. A still-registered older socket of the same
/// side (e.g. a black-holed one the client gave up on) is abandoned without a close handshake,
/// as a dead TCP connection would be.
fn register(
    service: &Service,
    session: &Session,
    side: Side,
    open: &OpenDataChannel,
) -> Option<(Peer, mpsc::Receiver<Outbound>)> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let peer = Peer {
        conn_id: service.next_conn_id(),
        tx,
        black_hole: Arc::new(AtomicBool::new(false)),
        wake: Arc::new(Notify::new()),
        kill: Arc::new(Notify::new()),
    };
    let registered = {
        let mut guard = session.state();
        let state = &mut *guard;
        let slot = match side {
            Side::Client => &mut state.client_token,
            Side::Agent => &mut state.agent_token,
        };
        if state.terminated.is_none() && slot.as_deref() == Some(open.token_value.as_str()) {
            *slot = None;
            Some(state.peer_mut(side).replace(peer.clone()))
        } else {
            None
        }
    };
    match registered {
        Some(previous) => {
            if let Some(previous) = previous {
                previous.kill.notify_one();
            }
            Some((peer, rx))
        }
        None => {
            service.events.emit(Event::Socket {
                session_id: session.id.clone(),
                side,
                what: "token_rejected".to_owned(),
                detail: "token unknown, already used or superseded".to_owned(),
            });
            None
        }
    }
}

fn describe_open(open: &OpenDataChannel) -> String {
    let mut detail = format!("client_id={}", open.client_id);
    if let Some(instance) = &open.client_instance_id {
        detail.push_str(&format!(" instance_id={instance}"));
    }
    if let Some(version) = &open.client_version {
        detail.push_str(&format!(" client_version={version}"));
    }
    detail
}

/// The other party of the data channel.
trait OtherSide {
    fn other(self) -> Side;
}

impl OtherSide for Side {
    fn other(self) -> Side {
        match self {
            Side::Client => Side::Agent,
            Side::Agent => Side::Client,
        }
    }
}
