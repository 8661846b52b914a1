//! Relaying one frame: decode its header for the event log, consume what is the service's,
//! apply the frame faults, deliver to the other side's queue.

use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use ssm_tether_protocol::payload::{AgentSessionState, SessionState};
use ssm_tether_protocol::{ClientMessage, DecodedMessage, MessageType};

use super::OtherSide;
use crate::events::{Event, Side};
use crate::faults::FrameFaults;
use crate::service::{Service, side_name};
use crate::sessions::{Outbound, Peer, Session};

/// A frame held back for reordering is released after this long if no other frame follows.
const REORDER_HOLD: Duration = Duration::from_millis(50);

/// A frame held back by the reorder fault, with its release time.
#[derive(Default)]
pub(super) struct Reorder {
    pub(super) held: Option<(Bytes, tokio::time::Instant)>,
}

/// What the frame faults decided for one frame.
enum Verdict {
    Pass,
    Drop,
    Duplicate,
    Reorder,
}

fn verdict(service: &Service, faults: &FrameFaults, message_type: &MessageType) -> Verdict {
    if !faults.is_active() || (faults.acks_only && *message_type != MessageType::Acknowledge) {
        return Verdict::Pass;
    }
    service.with_rng(|rng| {
        if rng.random_bool(faults.drop_rate) {
            Verdict::Drop
        } else if rng.random_bool(faults.dup_rate) {
            Verdict::Duplicate
        } else if rng.random_bool(faults.reorder_rate) {
            Verdict::Reorder
        } else {
            Verdict::Pass
        }
    })
}

/// Relays one binary frame from `from` to the other side, applying faults.
pub(super) async fn forward(
    service: &Service,
    session: &Session,
    from: Side,
    frame: Bytes,
    reorder: &mut Reorder,
) {
    let to = from.other();
    let from_name = side_name(from);
    let Ok(decoded) = ClientMessage::decode(frame.clone()) else {
        emit_decoded(service, &session.id, from_name, to, "invalid", None);
        return;
    };
    // Decoding hashes the payload; reuse it for every event of this frame.
    let emit = |disposition: &str| {
        emit_decoded(
            service,
            &session.id,
            from_name,
            to,
            disposition,
            Some(&decoded),
        )
    };
    let message_type = &decoded.message.message_type;
    if *message_type == MessageType::AgentSessionState {
        emit("consumed");
        if let Ok(state) = AgentSessionState::from_payload(&decoded.message.payload)
            && state.session_state == SessionState::Terminating
        {
            session.state().agent_terminating = true;
        }
        return;
    }
    if message_type.is_stream_data() {
        session.state().last_traffic = std::time::Instant::now();
    }
    let settings = service.faults();
    let faults = match to {
        Side::Agent => &settings.to_agent,
        Side::Client => &settings.to_client,
    };
    let Some(target) = session.peer(to) else {
        emit("undeliverable");
        return;
    };
    if target.is_black_holed() {
        emit("black_holed");
        return;
    }
    let fault = |kind: &str| {
        service.events.emit(Event::Fault {
            session_id: Some(session.id.clone()),
            kind: kind.to_owned(),
            detail: format!(
                "{from_name}->{} {} seq={}",
                side_name(to),
                message_type,
                decoded.message.sequence_number
            ),
        });
    };
    match verdict(service, faults, message_type) {
        Verdict::Drop => {
            fault("drop");
            emit("dropped");
            return;
        }
        Verdict::Duplicate => {
            fault("duplicate");
            emit("duplicated");
            send_frame(&target, frame.clone()).await;
            send_frame(&target, frame).await;
        }
        Verdict::Reorder if reorder.held.is_none() => {
            fault("reorder");
            emit("delayed");
            reorder.held = Some((frame, tokio::time::Instant::now() + REORDER_HOLD));
            return;
        }
        Verdict::Reorder | Verdict::Pass => {
            emit("relayed");
            send_frame(&target, frame).await;
        }
    }
    if let Some((held, _)) = reorder.held.take() {
        send_frame(&target, held).await;
    }
}

/// Sends a held frame to whoever is `to` now.
pub(super) async fn deliver(service: &Service, session: &Session, to: Side, frame: Bytes) {
    match session.peer(to) {
        Some(peer) if !peer.is_black_holed() => send_frame(&peer, frame).await,
        _ => emit_frame(
            service,
            &session.id,
            side_name(to.other()),
            to,
            "undeliverable",
            &frame,
        ),
    }
}

async fn send_frame(peer: &Peer, frame: Bytes) {
    // A closed queue means the socket just went away; the frame is lost like any frame for
    // an absent peer.
    let _ = peer.tx.send(Outbound::Frame(frame)).await;
}

/// Records a frame header with its disposition.
pub(crate) fn emit_frame(
    service: &Service,
    session_id: &str,
    from: &str,
    to: Side,
    disposition: &str,
    frame: &Bytes,
) {
    let decoded = ClientMessage::decode(frame.clone()).ok();
    emit_decoded(service, session_id, from, to, disposition, decoded.as_ref());
}

/// Records a decoded frame header (`None`: it did not decode) with its disposition.
fn emit_decoded(
    service: &Service,
    session_id: &str,
    from: &str,
    to: Side,
    disposition: &str,
    decoded: Option<&DecodedMessage>,
) {
    let message = decoded.map(|d| &d.message);
    service.events.emit(Event::Frame {
        session_id: session_id.to_owned(),
        from: from.to_owned(),
        to: side_name(to).to_owned(),
        disposition: disposition.to_owned(),
        message_type: message.map(|m| m.message_type.as_str().to_owned()),
        sequence_number: message.map(|m| m.sequence_number),
        flags: message.map(|m| m.flags),
        payload_type: message.map(|m| m.payload_type.0),
        payload_length: message.map(|m| m.payload.len()),
        digest_valid: decoded.map(|d| d.digest_valid),
    });
}
