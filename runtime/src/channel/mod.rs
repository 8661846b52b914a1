//! The reliable data channel, sans-IO: sequencing, acknowledgements, retransmission,
//! reordering, duplicate suppression, flow control and publication pauses, driven by frames and
//! `Instant`s, with no socket inside (the quinn-proto split).
//!
//! The I/O layer feeds received frames to [`Channel::handle_frame`], writes whatever
//! [`Channel::poll_transmit`] yields, wakes at [`Channel::poll_timeout`] to call
//! [`Channel::handle_timeout`], and tells the channel when the WebSocket comes and goes
//! ([`Channel::on_connected`] / [`Channel::on_disconnected`]). Everything else — sequence
//! counters, unacknowledged messages, the reorder buffer, RTT — lives here and survives
//! reconnects, because the SSM protocol never renegotiates it (docs/protocol.md §4.4).
//!
//! How this differs from the official client (docs/protocol.md §13), and why:
//! * Every outgoing message is kept until acknowledged, including those written while the
//!   socket is down or the peer is paused (#4): nothing is dropped on a send failure.
//! * Nothing is ever evicted (#12): when [`ChannelConfig::max_unacked`] messages are in flight,
//!   [`Channel::send`] refuses, and the caller stops reading its local sockets — bounded memory
//!   and backpressure instead of silent loss.
//! * Every message whose timeout expired is retransmitted, each on its own timer with
//!   exponential backoff (#17), not one head message per 100 ms tick.
//! * Duplicates are re-acknowledged (#3), so a lost ack cannot stall the agent's head-only
//!   resend forever; a sequence number is delivered at most once (#13, #14).
//! * `pause_publication` / `start_publication` are honoured (#11); after a resume or a
//!   reconnect everything unacknowledged is due at once, since the service drops frames for an
//!   absent peer.
//! * Incoming data is acknowledged only once it is accepted: if the application falls behind
//!   by [`ChannelConfig::max_undelivered`] messages, in-order data is left unacknowledged and
//!   the peer resends it later — the protocol's only form of receive flow control.

pub mod rtt;

/// Acknowledgements remembered for sending again on the next connection.
const RECENT_ACKS: usize = 256;

/// Floor of the first retransmission timer of a message written again on a fresh connection.
const FRESH_RTO_FLOOR: Duration = Duration::from_millis(20);

/// How much later than a lost message another must have been sent, beyond a quarter RTT, for
/// its ack to prove the loss rather than reordering in the relay.
const REORDERING_WINDOW: Duration = Duration::from_millis(10);

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use uuid::Uuid;

use crate::protocol::message::{FLAG_SYN, FRAME_OVERHEAD, MAX_STREAM_PAYLOAD, SCHEMA_VERSION};
use crate::protocol::payload::{AcknowledgeContent, ChannelClosed};
use crate::protocol::{ClientMessage, DecodeError, MessageType, PayloadType};
use rtt::RttEstimator;

/// Which end of the data channel this is; it fixes the message types of each direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The SSM client: sends `input_stream_data`, receives `output_stream_data`.
    Client,
    /// The agent: sends `output_stream_data` (SYN on seq 0), receives `input_stream_data`.
    /// Used to test the channel against itself; the emulator has its own agent model.
    Agent,
}

/// Limits and timers of a [`Channel`].
#[derive(Clone, Debug)]
pub struct ChannelConfig {
    /// Which end this is.
    pub role: Role,
    /// Most unacknowledged outgoing messages; beyond it [`Channel::send`] refuses.
    pub max_unacked: usize,
    /// Most out-of-order incoming messages kept while waiting for a gap to fill.
    pub max_reorder: usize,
    /// Most delivered events not yet taken by [`Channel::poll_event`] before new in-order data
    /// is refused (left unacknowledged for the peer to resend).
    pub max_undelivered: usize,
    /// Cap of the RTT-derived retransmission timeout (1 s in the official endpoints).
    pub max_rto: Duration,
    /// Floor of the retransmission timeout. The official endpoints floor at 10 ms, which on a
    /// fast path makes every burst larger than a few milliseconds of work retransmit
    /// spuriously; 200 ms (as Linux TCP) costs little latency on a real loss.
    pub min_rto: Duration,
    /// Cap of one message's backed-off retransmission interval.
    pub max_backoff: Duration,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            role: Role::Client,
            // 2048 × 1 KiB keeps ~2 MiB in flight: enough for 20 MB/s at 100 ms RTT.
            max_unacked: 2048,
            // The agent resends only its oldest unacked message, one per 100 ms tick: after a
            // burst of loss it keeps sending new data for seconds before a gap fills. Refusing
            // that data would turn each refused message into another 100 ms gap, so the buffer
            // is large (~18 MiB at most, only while a gap is open).
            max_reorder: 16384,
            max_undelivered: 4096,
            max_rto: rtt::DEFAULT_MAX_RTO,
            min_rto: Duration::from_millis(200),
            max_backoff: Duration::from_secs(4),
        }
    }
}

/// What the channel hands to the session layer.
#[derive(Clone, Debug, PartialEq)]
pub enum ChannelEvent {
    /// The next in-order stream-data message from the peer (handshake, output, flag, …).
    Message(ClientMessage),
    /// The service closed the channel: the session is over.
    ChannelClosed(ChannelClosed),
    /// The service paused publication: the peer is away; sending is suspended.
    Paused,
    /// Publication resumed: the peer is back.
    Resumed,
}

/// Why [`Channel::send`] did not take a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The unacknowledged window is full; retry after acks arrive.
    #[error("send window full: {0} messages unacknowledged")]
    WindowFull(usize),
    /// The payload is larger than one message may carry.
    #[error("payload of {0} bytes exceeds the {MAX_STREAM_PAYLOAD}-byte message limit")]
    PayloadTooLarge(usize),
}

/// Why a received frame was not used. None of these is fatal to the channel.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame did not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The payload digest did not match; the peer will resend.
    #[error("{0} seq {1} dropped: payload digest mismatch")]
    BadDigest(MessageType, i64),
    /// An acknowledge payload did not parse.
    #[error("unreadable acknowledge payload: {0}")]
    BadAck(String),
}

/// Counters, for status lines, benchmarks and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Stream messages accepted by [`Channel::send`].
    pub sent: u64,
    /// Retransmissions written.
    pub retransmitted: u64,
    /// Outgoing messages acknowledged.
    pub acked: u64,
    /// Incoming stream messages delivered in order.
    pub delivered: u64,
    /// Incoming duplicates (re-acknowledged, not delivered).
    pub duplicates: u64,
    /// Incoming messages that arrived ahead of a gap and were buffered.
    pub reordered: u64,
    /// Incoming messages dropped for a bad digest.
    pub bad_digest: u64,
    /// Incoming messages refused because the application fell behind or buffers were full.
    pub refused: u64,
    /// Acknowledgements sent again on a new connection.
    pub reacked: u64,
}

#[derive(Debug)]
struct Outgoing {
    frame: Bytes,
    /// When it was last written; `None` while it has never been.
    last_sent: Option<Instant>,
    transmissions: u32,
    /// Retransmissions for a timeout or a detected loss since it was last written on a fresh
    /// connection: the exponent of its backoff.
    backoffs: u32,
    deadline: Option<Instant>,
}

/// Why a message is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Write {
    /// For the first time.
    First,
    /// Again, because its timer expired or a later message's ack proved it lost: back off.
    Retransmit,
    /// Again, on a new connection or after a publication pause: whatever the old path did
    /// says nothing about the new one, so the backoff starts over, and the first timer is the
    /// RTT-derived one without the floor (a message lost in the hand-over between sockets is
    /// then resent within milliseconds on a fast path, not after 200 ms or more).
    Fresh,
}

/// The reliable data channel state machine. See the [module docs](self).
#[derive(Debug)]
pub struct Channel {
    config: ChannelConfig,
    rtt: RttEstimator,
    /// Maps `Instant`s to the epoch milliseconds every frame's CreatedDate needs.
    epoch: (Instant, u64),
    next_seq: i64,
    unacked: BTreeMap<i64, Outgoing>,
    /// Payload bytes of the messages in `unacked`.
    unacked_bytes: usize,
    /// Retransmission deadlines; entries whose message was acked or rescheduled are stale and
    /// skipped lazily (cheaper than scanning the window on every wake-up).
    deadlines: BinaryHeap<Reverse<(Instant, i64)>>,
    expected: i64,
    reorder: BTreeMap<i64, ClientMessage>,
    transmit: VecDeque<Bytes>,
    events: VecDeque<ChannelEvent>,
    connected: bool,
    paused: bool,
    /// When an ack last removed a message: retransmission timers restart from it.
    last_progress: Option<Instant>,
    /// The latest acknowledgements sent: those written just before a socket died may never
    /// have arrived, and the agent resends only its oldest unacknowledged message, one per
    /// 100 ms — every lost ack is a message it resends, and everything behind it waits.
    recent_acks: VecDeque<AcknowledgeContent>,
    stats: ChannelStats,
}

impl Channel {
    /// A channel with nothing sent or received. `now` and `unix_ms` are the same moment, as an
    /// `Instant` and as milliseconds since the Unix epoch.
    pub fn new(config: ChannelConfig, now: Instant, unix_ms: u64) -> Self {
        Self {
            rtt: RttEstimator::new(config.max_rto),
            config,
            epoch: (now, unix_ms),
            next_seq: 0,
            unacked: BTreeMap::new(),
            unacked_bytes: 0,
            deadlines: BinaryHeap::new(),
            expected: 0,
            reorder: BTreeMap::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            connected: false,
            paused: false,
            last_progress: None,
            recent_acks: VecDeque::new(),
            stats: ChannelStats::default(),
        }
    }

    /// Queues one stream-data message and returns its sequence number. It is written at once
    /// if the socket is up and the peer not paused, and kept until acknowledged in any case.
    ///
    /// # Errors
    /// The window is full (nothing was queued: retry after acks), or the payload is over
    /// 1024 bytes.
    pub fn send(
        &mut self,
        payload_type: PayloadType,
        payload: Bytes,
        now: Instant,
    ) -> Result<i64, SendError> {
        if payload.len() > MAX_STREAM_PAYLOAD {
            return Err(SendError::PayloadTooLarge(payload.len()));
        }
        if self.unacked.len() >= self.config.max_unacked {
            return Err(SendError::WindowFull(self.unacked.len()));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let (message_type, flags) = match self.config.role {
            Role::Client => (MessageType::InputStreamData, 0),
            Role::Agent => (
                MessageType::OutputStreamData,
                if seq == 0 { FLAG_SYN } else { 0 },
            ),
        };
        let message = ClientMessage {
            message_type,
            schema_version: SCHEMA_VERSION,
            created_date: self.unix_ms(now),
            sequence_number: seq,
            flags,
            message_id: Uuid::new_v4(),
            payload_type,
            payload,
        };
        self.unacked_bytes += message.payload.len();
        let outgoing = Outgoing {
            frame: message.encode(),
            last_sent: None,
            transmissions: 0,
            backoffs: 0,
            deadline: None,
        };
        self.unacked.insert(seq, outgoing);
        self.stats.sent += 1;
        if self.can_transmit() {
            self.transmit_seq(seq, now, Write::First);
        }
        Ok(seq)
    }

    /// How many more messages [`send`](Self::send) takes before the window is full.
    pub fn send_capacity(&self) -> usize {
        self.config.max_unacked.saturating_sub(self.unacked.len())
    }

    /// Processes one received binary frame.
    ///
    /// # Errors
    /// The frame was unusable (did not decode, bad digest, unreadable ack). The channel is
    /// unaffected; the caller should log it and carry on.
    pub fn handle_frame(&mut self, frame: Bytes, now: Instant) -> Result<(), FrameError> {
        let decoded = ClientMessage::decode(frame)?;
        let message = decoded.message;
        // The official client's rule: publication messages skip validation, and an empty
        // payload has nothing to check.
        let exempt = matches!(
            message.message_type,
            MessageType::StartPublication | MessageType::PausePublication
        ) || message.payload.is_empty();
        if !decoded.digest_valid && !exempt {
            self.stats.bad_digest += 1;
            return Err(FrameError::BadDigest(
                message.message_type,
                message.sequence_number,
            ));
        }
        match &message.message_type {
            MessageType::Acknowledge => self.on_ack(&message.payload, now),
            t if *t == self.incoming_type() => {
                self.on_stream_data(message, now);
                Ok(())
            }
            MessageType::ChannelClosed => {
                // An unreadable payload still ends the session: the type is what matters.
                let closed = ChannelClosed::from_payload(&message.payload).unwrap_or_default();
                self.events.push_back(ChannelEvent::ChannelClosed(closed));
                Ok(())
            }
            MessageType::PausePublication => {
                if !self.paused {
                    self.paused = true;
                    self.events.push_back(ChannelEvent::Paused);
                }
                Ok(())
            }
            MessageType::StartPublication => {
                self.unpause(now);
                Ok(())
            }
            // Our own direction echoed, session state, unknown types: nothing to do.
            _ => Ok(()),
        }
    }

    /// The next frame to write to the socket.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmit.pop_front()
    }

    /// The next event for the session layer.
    pub fn poll_event(&mut self) -> Option<ChannelEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called, if ever.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        if !self.can_transmit() {
            return None;
        }
        while let Some(Reverse((deadline, seq))) = self.deadlines.peek().copied() {
            if self.is_current_deadline(seq, deadline) {
                return Some(deadline);
            }
            self.deadlines.pop();
        }
        None
    }

    /// Retransmits every message whose timeout has expired by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.can_transmit() {
            return;
        }
        while let Some(Reverse((deadline, seq))) = self.deadlines.peek().copied() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            if !self.is_current_deadline(seq, deadline) {
                continue;
            }
            // Acks still arriving mean the peer is slow, not that this message is lost
            // (RFC 6298 §5.3: restart the timer on progress). A message overtaken by acks for
            // later ones was already retransmitted by loss detection in `on_ack`.
            let restarted = self.last_progress.map(|at| at + self.backoff_of(seq));
            if let Some(restarted) = restarted
                && restarted > now
            {
                self.reschedule(seq, restarted);
                continue;
            }
            self.stats.retransmitted += 1;
            self.transmit_seq(seq, now, Write::Retransmit);
        }
    }

    /// A WebSocket is open and its OpenDataChannel frame written: the latest acknowledgements
    /// are sent again (those written just before the old socket died may be lost, and the
    /// agent would otherwise resend those messages one per 100 ms before anything newer), and
    /// everything unacknowledged is written again (the peer re-acknowledges what it already
    /// has).
    pub fn on_connected(&mut self, now: Instant) {
        self.connected = true;
        // The service pauses us only while the peer is away; a fresh connection starts clean,
        // and a new pause arrives if the peer is still gone.
        self.paused = false;
        let created = self.unix_ms(now);
        for ack in std::mem::take(&mut self.recent_acks) {
            self.stats.reacked += 1;
            self.transmit
                .push_back(ack.into_message(created, Uuid::new_v4()).encode());
        }
        self.retransmit_all(now);
    }

    /// The WebSocket is gone. Frames not yet written are dropped from the transmit queue —
    /// data stays in the unacknowledged set for the next connection; lost acks are recovered
    /// by the peer's resend and our re-ack.
    pub fn on_disconnected(&mut self) {
        self.connected = false;
        self.transmit.clear();
        self.deadlines.clear();
    }

    /// Whether a socket is attached.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Whether the service has paused publication.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Outgoing messages not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// Payload bytes of the outgoing messages not yet acknowledged.
    pub fn unacked_bytes(&self) -> usize {
        self.unacked_bytes
    }

    /// The next outgoing sequence number.
    pub fn next_sequence_number(&self) -> i64 {
        self.next_seq
    }

    /// The next incoming sequence number expected.
    pub fn expected_sequence_number(&self) -> i64 {
        self.expected
    }

    /// The current retransmission timeout.
    pub fn rto(&self) -> Duration {
        self.rtt.rto().max(self.config.min_rto)
    }

    /// Incoming messages buffered ahead of a gap.
    pub fn reorder_len(&self) -> usize {
        self.reorder.len()
    }

    /// Counters since creation.
    pub fn stats(&self) -> &ChannelStats {
        &self.stats
    }

    fn incoming_type(&self) -> MessageType {
        match self.config.role {
            Role::Client => MessageType::OutputStreamData,
            Role::Agent => MessageType::InputStreamData,
        }
    }

    fn can_transmit(&self) -> bool {
        self.connected && !self.paused
    }

    fn unix_ms(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.epoch.0).as_millis();
        self.epoch
            .1
            .saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX))
    }

    fn is_current_deadline(&self, seq: i64, deadline: Instant) -> bool {
        self.unacked
            .get(&seq)
            .is_some_and(|out| out.deadline == Some(deadline))
    }

    /// Writes message `seq` now and schedules its next retransmission.
    fn transmit_seq(&mut self, seq: i64, now: Instant, write: Write) {
        let fresh_rto = self.rtt.rto().clamp(FRESH_RTO_FLOOR, self.rto());
        let Some(out) = self.unacked.get_mut(&seq) else {
            return;
        };
        out.transmissions = out.transmissions.saturating_add(1);
        match write {
            Write::First => {}
            Write::Retransmit => out.backoffs = out.backoffs.saturating_add(1),
            Write::Fresh => out.backoffs = 0,
        }
        out.last_sent = Some(now);
        self.transmit.push_back(out.frame.clone());
        let interval = match write {
            Write::Fresh => fresh_rto,
            Write::First | Write::Retransmit => self.backoff_of(seq),
        };
        self.reschedule(seq, now + interval);
    }

    /// The retransmission interval of message `seq`: the RTO, doubled per retransmission,
    /// capped at `max_backoff` (but never below the RTO).
    fn backoff_of(&self, seq: i64) -> Duration {
        let rto = self.rto();
        let backoffs = self.unacked.get(&seq).map_or(0, |out| out.backoffs);
        rto.saturating_mul(1 << backoffs.min(16))
            .min(self.config.max_backoff.max(rto))
    }

    fn reschedule(&mut self, seq: i64, deadline: Instant) {
        if let Some(out) = self.unacked.get_mut(&seq) {
            out.deadline = Some(deadline);
            self.deadlines.push(Reverse((deadline, seq)));
        }
    }

    fn retransmit_all(&mut self, now: Instant) {
        self.deadlines.clear();
        let seqs: Vec<i64> = self.unacked.keys().copied().collect();
        for seq in seqs {
            if self
                .unacked
                .get(&seq)
                .is_some_and(|out| out.transmissions > 0)
            {
                self.stats.retransmitted += 1;
            }
            self.transmit_seq(seq, now, Write::Fresh);
        }
    }

    fn unpause(&mut self, now: Instant) {
        if self.paused {
            self.paused = false;
            self.events.push_back(ChannelEvent::Resumed);
            if self.connected {
                self.retransmit_all(now);
            }
        }
    }

    fn on_ack(&mut self, payload: &[u8], now: Instant) -> Result<(), FrameError> {
        let ack = AcknowledgeContent::from_payload(payload)
            .map_err(|err| FrameError::BadAck(err.to_string()))?;
        if let Some(out) = self.unacked.remove(&ack.sequence_number) {
            self.unacked_bytes -= out.frame.len().saturating_sub(FRAME_OVERHEAD);
            self.stats.acked += 1;
            self.last_progress = Some(now);
            if out.transmissions == 1
                && let Some(sent) = out.last_sent
            {
                self.rtt.on_sample(now.saturating_duration_since(sent));
                self.detect_losses(ack.sequence_number, sent, now);
            }
        }
        // An ack proves the peer is publishing again (the agent clears its pause the same way).
        self.unpause(now);
        Ok(())
    }

    /// Acks are selective: once a message sent clearly after an older unacked one is acked, the
    /// older one is lost (RACK, RFC 8985) and is retransmitted now rather than at its timeout.
    /// Only messages older than the acked one are candidates, so this walks the holes, not the
    /// window.
    fn detect_losses(&mut self, acked_seq: i64, acked_sent: Instant, now: Instant) {
        if !self.can_transmit() {
            return;
        }
        let reordering = REORDERING_WINDOW + self.rtt.rtt() / 4;
        let lost: Vec<i64> = self
            .unacked
            .range(..acked_seq)
            .filter(|(_, out)| {
                out.last_sent
                    .is_some_and(|sent| sent + reordering < acked_sent)
            })
            .map(|(seq, _)| *seq)
            .collect();
        for seq in lost {
            self.stats.retransmitted += 1;
            self.transmit_seq(seq, now, Write::Retransmit);
        }
    }

    fn on_stream_data(&mut self, message: ClientMessage, now: Instant) {
        self.unpause(now);
        let seq = message.sequence_number;
        if seq < self.expected || self.reorder.contains_key(&seq) {
            self.stats.duplicates += 1;
            self.queue_ack(&message, now);
        } else if seq == self.expected {
            if self.events.len() >= self.config.max_undelivered {
                self.stats.refused += 1;
                return;
            }
            self.queue_ack(&message, now);
            self.deliver(message);
            while let Some(next) = self.reorder.remove(&self.expected) {
                self.deliver(next);
            }
        } else if self.reorder.len() < self.config.max_reorder {
            self.stats.reordered += 1;
            self.queue_ack(&message, now);
            self.reorder.insert(seq, message);
        } else {
            self.stats.refused += 1;
        }
    }

    fn deliver(&mut self, message: ClientMessage) {
        self.expected += 1;
        self.stats.delivered += 1;
        self.events.push_back(ChannelEvent::Message(message));
    }

    fn queue_ack(&mut self, message: &ClientMessage, now: Instant) {
        // Without a socket the ack is pointless: the peer resends and we ack then.
        if self.connected {
            let content = AcknowledgeContent::for_message(message);
            if self.recent_acks.len() == RECENT_ACKS {
                self.recent_acks.pop_front();
            }
            self.recent_acks.push_back(content.clone());
            let ack = content.into_message(self.unix_ms(now), Uuid::new_v4());
            self.transmit.push_back(ack.encode());
        }
    }
}

#[cfg(test)]
mod tests;
