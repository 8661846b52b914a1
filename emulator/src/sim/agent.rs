//! The simulated agent of one session: the agent's reliability rules (the same sans-IO
//! [`Reliable`] the real-time agent model uses: head-only resend, process-then-ack, buffer
//! while paused), the handshake, and an smux server (or basic mode) in front of an
//! in-memory echo destination, paced like the agent (1024 bytes per message, one message per
//! pacing interval).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use ssm_tether_protocol::message::MAX_STREAM_PAYLOAD;
use ssm_tether_protocol::payload::{
    AcknowledgeContent, ActionParameters, ActionStatus, ActionType, Flag, HandshakeComplete,
    HandshakeRequest, HandshakeResponse, RequestedClientAction, SessionTypeRequest,
};
use ssm_tether_protocol::smux::{Command, Frame, FrameDecoder};
use ssm_tether_protocol::{ClientMessage, MessageType, PayloadType};
use uuid::Uuid;

use crate::agent::port::{self, PortMode};
use crate::agent::reliable::{RESEND_INTERVAL, Reliable};

/// Echo bytes not yet sent beyond which the agent stops taking client data (it leaves it
/// unacknowledged, so the client resends later): the destination's TCP backpressure.
const PENDING_HIGH_WATER: usize = 256 * 1024;
/// The agent's wait for the HandshakeResponse.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handshake {
    NotSent,
    Waiting { deadline: Instant },
    Complete,
    Failed,
}

#[derive(Debug)]
enum Port {
    Mux {
        decoder: FrameDecoder,
        streams: BTreeSet<u32>,
    },
    Basic,
}

/// Why the agent ended its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEnd {
    /// The client sent the TerminateSession flag.
    TerminatedByClient,
    /// The handshake failed or timed out.
    HandshakeFailed(String),
    /// The client's byte stream broke smux.
    ProtocolError(String),
}

/// One session's agent.
#[derive(Debug)]
pub(crate) struct Agent {
    reliable: Reliable,
    rng: SmallRng,
    version: String,
    properties: BTreeMap<String, Value>,
    pacing: Duration,
    refuse_destination: bool,
    handshake: Handshake,
    port: Option<Port>,
    /// The outgoing byte stream (smux frames or raw echo bytes), not yet in messages.
    pending: BytesMut,
    next_send: Instant,
    next_resend: Instant,
    /// Frames to put on the agent's socket.
    wire: Vec<Bytes>,
    ended: Option<AgentEnd>,
    clock: (Instant, u64),
    /// Bytes of Output payload processed, in order (what reached the destination).
    received: u64,
}

impl Agent {
    pub(crate) fn new(
        version: &str,
        properties: BTreeMap<String, Value>,
        pacing: Duration,
        refuse_destination: bool,
        seed: u64,
        now: Instant,
    ) -> Self {
        Self {
            reliable: Reliable::new(),
            rng: SmallRng::seed_from_u64(seed),
            version: version.to_owned(),
            properties,
            pacing,
            refuse_destination,
            handshake: Handshake::NotSent,
            port: None,
            pending: BytesMut::new(),
            next_send: now,
            next_resend: now + RESEND_INTERVAL,
            wire: Vec::new(),
            ended: None,
            clock: (now, 1_700_000_000_000),
            received: 0,
        }
    }

    /// Whether (and why) the agent ended its session.
    pub(crate) fn ended(&self) -> Option<&AgentEnd> {
        self.ended.as_ref()
    }

    /// Frames the agent wants to write, in order.
    pub(crate) fn take_wire(&mut self) -> Vec<Bytes> {
        std::mem::take(&mut self.wire)
    }

    /// The agent's data channel is (again) open: the first time it sends the
    /// HandshakeRequest; every time it clears Pause, as its reconnect does.
    pub(crate) fn on_connected(&mut self, now: Instant) {
        self.reliable.set_paused(false);
        if self.handshake == Handshake::NotSent {
            let request = HandshakeRequest {
                agent_version: self.version.clone(),
                requested_client_actions: vec![RequestedClientAction {
                    action_type: ActionType::SessionType,
                    action_parameters: ActionParameters::SessionType(SessionTypeRequest {
                        session_type: "Port".to_owned(),
                        properties: self.properties.clone(),
                    }),
                }],
            };
            self.send(now, PayloadType::HANDSHAKE_REQUEST, request.to_payload());
            self.handshake = Handshake::Waiting {
                deadline: now + HANDSHAKE_TIMEOUT,
            };
        }
    }

    /// `pause_publication` / `start_publication` from the service.
    pub(crate) fn set_paused(&mut self, paused: bool) {
        self.reliable.set_paused(paused);
    }

    /// A frame from the client, relayed by the service.
    pub(crate) fn on_frame(&mut self, frame: Bytes, now: Instant) {
        let Ok(decoded) = ClientMessage::decode(frame) else {
            return;
        };
        let message = decoded.message;
        match message.message_type {
            MessageType::Acknowledge => {
                if let Ok(ack) = AcknowledgeContent::from_payload(&message.payload) {
                    self.reliable.on_ack(now, ack.sequence_number);
                }
            }
            MessageType::InputStreamData => {
                let mut delivered = Vec::new();
                let over = self.pending.len() > PENDING_HIGH_WATER;
                let handshake_done = self.handshake == Handshake::Complete;
                let received = self.reliable.receive(message, |m| {
                    // Before the handshake completes everything but its response is acked
                    // and discarded; after it, client data waits while the destination is
                    // backed up (not acked: the client resends).
                    if m.payload_type == PayloadType::OUTPUT && handshake_done && over {
                        return false;
                    }
                    delivered.push(m.clone());
                    true
                });
                if let Some(ack) = received.ack {
                    let frame = ack.into_message(self.unix_ms(now), self.new_id()).encode();
                    self.wire.push(frame);
                }
                for message in delivered {
                    self.deliver(&message, now);
                }
            }
            _ => {}
        }
        self.pump(now);
    }

    fn deliver(&mut self, message: &ClientMessage, now: Instant) {
        if self.ended.is_some() {
            return;
        }
        match (message.payload_type, self.handshake) {
            (PayloadType::HANDSHAKE_RESPONSE, Handshake::Waiting { .. }) => {
                self.on_handshake_response(&message.payload, now);
            }
            (_, Handshake::Complete) => match message.payload_type {
                PayloadType::OUTPUT => self.on_output(&message.payload, now),
                PayloadType::FLAG => match Flag::from_payload(&message.payload) {
                    Ok(Flag::TerminateSession) => self.ended = Some(AgentEnd::TerminatedByClient),
                    Ok(Flag::DisconnectToPort) if matches!(self.port, Some(Port::Basic)) => {
                        self.disconnect_to_port();
                    }
                    _ => {}
                },
                _ => {}
            },
            _ => {}
        }
    }

    /// Basic mode's DisconnectToPort (port_basic.go): the destination connection is closed,
    /// and what had not yet been read from it is gone, but the chunk the agent's read loop
    /// already holds is still sent, after the flag was processed. Without `type =
    /// LocalPortForwarding` (sshd semantics) the session fails instead.
    fn disconnect_to_port(&mut self) {
        let forwarding =
            self.properties.get("type").and_then(Value::as_str) == Some("LocalPortForwarding");
        if forwarding {
            self.pending.truncate(MAX_STREAM_PAYLOAD);
        } else {
            self.ended = Some(AgentEnd::ProtocolError(
                "DisconnectToPort in a session without type LocalPortForwarding".into(),
            ));
        }
    }

    fn on_handshake_response(&mut self, payload: &[u8], now: Instant) {
        let response = match HandshakeResponse::from_payload(payload) {
            Ok(response) => response,
            Err(err) => {
                self.handshake = Handshake::Failed;
                self.ended = Some(AgentEnd::HandshakeFailed(err.to_string()));
                return;
            }
        };
        if let Some(bad) = response
            .processed_client_actions
            .iter()
            .find(|a| a.action_status != ActionStatus::SUCCESS)
        {
            self.handshake = Handshake::Failed;
            self.ended = Some(AgentEnd::HandshakeFailed(format!(
                "{} failed on client with status {}",
                bad.action_type.as_str(),
                bad.action_status.0
            )));
            return;
        }
        let complete = HandshakeComplete {
            handshake_time_to_complete: 1_000_000,
            customer_message: String::new(),
        };
        self.send(now, PayloadType::HANDSHAKE_COMPLETE, complete.to_payload());
        self.handshake = Handshake::Complete;
        let mode = port::select_mode(&self.properties, &response.client_version, &self.version);
        self.port = Some(match mode {
            PortMode::Mux { .. } => Port::Mux {
                decoder: FrameDecoder::new(),
                streams: BTreeSet::new(),
            },
            PortMode::Basic { .. } => Port::Basic,
        });
    }

    fn on_output(&mut self, payload: &Bytes, now: Instant) {
        self.received += payload.len() as u64;
        let refuse = self.refuse_destination;
        let mut flags = Vec::new();
        match self.port.as_mut() {
            Some(Port::Basic) => self.pending.extend_from_slice(payload),
            Some(Port::Mux { decoder, streams }) => {
                decoder.push(payload);
                loop {
                    match decoder.next_frame() {
                        Ok(None) => break,
                        Ok(Some(frame)) => match frame.command {
                            Command::Syn if refuse => {
                                flags.push(Flag::ConnectToPortError);
                                Frame::fin(frame.stream_id).encode_into(&mut self.pending);
                            }
                            Command::Syn => {
                                streams.insert(frame.stream_id);
                            }
                            Command::Psh if streams.contains(&frame.stream_id) => {
                                // The echo destination sends every byte straight back.
                                ssm_tether_protocol::smux::encode_data(
                                    frame.stream_id,
                                    &frame.data,
                                    ssm_tether_protocol::smux::MAX_FRAME_SIZE,
                                    &mut self.pending,
                                );
                            }
                            Command::Fin if streams.remove(&frame.stream_id) => {
                                Frame::fin(frame.stream_id).encode_into(&mut self.pending);
                            }
                            Command::Psh | Command::Fin | Command::Nop => {}
                        },
                        Err(err) => {
                            self.ended = Some(AgentEnd::ProtocolError(err.to_string()));
                            break;
                        }
                    }
                }
            }
            None => {}
        }
        for flag in flags {
            self.send(now, PayloadType::FLAG, flag.to_payload());
        }
    }

    /// Sends paced output and runs the resend scheduler.
    pub(crate) fn pump(&mut self, now: Instant) {
        if let Handshake::Waiting { deadline } = self.handshake
            && deadline <= now
        {
            self.handshake = Handshake::Failed;
            self.ended = Some(AgentEnd::HandshakeFailed("Handshake timed out".into()));
        }
        while !self.pending.is_empty() && !self.reliable.paused() && self.next_send <= now {
            let chunk = port::take_chunk(&mut self.pending);
            self.send(now, PayloadType::OUTPUT, chunk);
            if self.pacing.is_zero() {
                continue;
            }
            // An absolute schedule, as the real-time model keeps (the agent's 1 ms sleep);
            // after a pause it restarts from now instead of bursting to catch up.
            let base = if self.next_send + self.pacing < now {
                now
            } else {
                self.next_send
            };
            self.next_send = base + self.pacing;
        }
        while self.next_resend <= now {
            self.next_resend += RESEND_INTERVAL;
            if let Some((_, frame)) = self.reliable.poll_resend(now) {
                self.wire.push(frame);
            }
        }
    }

    /// When [`pump`](Self::pump) has something to do next.
    pub(crate) fn next_wakeup(&self) -> Instant {
        let send = (!self.pending.is_empty() && !self.reliable.paused()).then_some(self.next_send);
        let handshake = match self.handshake {
            Handshake::Waiting { deadline } => Some(deadline),
            _ => None,
        };
        [Some(self.next_resend), send, handshake]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.next_resend)
    }

    /// Messages sent and not acknowledged.
    pub(crate) fn unacked(&self) -> usize {
        self.reliable.unacked()
    }

    /// Bytes of Output payload processed, in order.
    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    fn send(&mut self, now: Instant, payload_type: PayloadType, payload: Bytes) {
        debug_assert!(payload.len() <= MAX_STREAM_PAYLOAD);
        let id = self.new_id();
        let sent = self
            .reliable
            .send(now, self.unix_ms(now), id, payload_type, payload);
        if sent.transmit {
            self.wire.push(sent.frame);
        }
    }

    fn new_id(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(self.rng.random()).into_uuid()
    }

    fn unix_ms(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.clock.0).as_millis();
        self.clock.1 + u64::try_from(elapsed).unwrap_or(u64::MAX / 2)
    }
}
