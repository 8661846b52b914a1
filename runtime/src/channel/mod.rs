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
//!   by [`ChannelConfig::max_undelivered`] messages (or `max_undelivered_bytes`), in-order
//!   data is left unacknowledged and the peer resends it later — the protocol's only form of
//!   receive flow control.
//!
//! Everything kept for the peer is bounded in bytes as well as in messages, so that a broken
//! or hostile peer cannot make the channel grow (docs/design.md §6): a frame over
//! [`MAX_FRAME_LEN`] is refused ([`FrameError::TooLarge`]; the caller drops that socket), only
//! sequence numbers within [`ChannelConfig::max_reorder`] of the next expected one are kept
//! (anything further ahead is dropped unacknowledged: it could not be delivered before the
//! window moves, and the peer resends it), the reorder buffer and the undelivered events are
//! capped in bytes, every kept payload is copied out of the socket's read buffer (a slice
//! would pin the whole buffer), and acknowledgements waiting to be written are capped too.

pub mod rtt;

/// Acknowledgements remembered for sending again on the next connection.
const RECENT_ACKS: usize = 256;

/// The largest incoming frame (one WebSocket message) accepted, in bytes. Both official
/// endpoints send at most 1024 payload bytes behind a 120-byte header (docs/protocol.md §2.1,
/// §6.4), and the service's own frames (`channel_closed`, publication) are small JSON; 64 KiB
/// leaves a wide margin for anything unforeseen while a peer can no longer make us hold the
/// WebSocket library's default of 64 MiB per message.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Bytes charged to every kept incoming message beyond its payload: the decoded header and
/// the container's bookkeeping.
pub const ENTRY_OVERHEAD: usize = FRAME_OVERHEAD;

/// What a message of the official endpoints' largest size costs to keep.
const FULL_ENTRY: usize = MAX_STREAM_PAYLOAD + ENTRY_OVERHEAD;

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
    /// The receive window, in sequence numbers: a message numbered this far or further
    /// beyond the next expected one is dropped unacknowledged, so at most this many minus one
    /// out-of-order messages are kept while waiting for a gap to fill.
    pub max_reorder: usize,
    /// Most bytes (payloads plus [`ENTRY_OVERHEAD`] each) of out-of-order messages kept.
    pub max_reorder_bytes: usize,
    /// Most delivered messages not yet taken by [`Channel::poll_event`] before new in-order
    /// data is refused (left unacknowledged for the peer to resend).
    pub max_undelivered: usize,
    /// Most bytes (payloads plus [`ENTRY_OVERHEAD`] each) of delivered messages not yet taken;
    /// one message is always let through, whatever its size.
    pub max_undelivered_bytes: usize,
    /// Most bytes of acknowledgements waiting in the transmit queue; beyond it new ones are
    /// not queued (the peer resends those messages, and they are acknowledged then).
    pub max_queued_ack_bytes: usize,
    /// How long a gap may go without the next expected message arriving before the messages
    /// behind it stop counting in [`Channel::behind_gap`]: a peer that never fills a gap must
    /// not throttle the other direction for ever.
    pub gap_patience: Duration,
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
            // that data would turn each refused message into another 100 ms gap, so the window
            // is large, and its byte cap fits a full window of the agent's 1024-byte messages
            // (~18 MiB, only while a gap is open); larger messages fill it sooner.
            max_reorder: 16384,
            max_reorder_bytes: 16384 * FULL_ENTRY,
            max_undelivered: 4096,
            max_undelivered_bytes: 4096 * FULL_ENTRY,
            // ~15 000 acks: only reached while the socket's writer is backed up, when the
            // socket is about to be declared dead anyway.
            max_queued_ack_bytes: 4 << 20,
            // The agent fills a gap within about a second (one resend per RTO, at most 1 s);
            // five seconds without progress means it is not going to.
            gap_patience: Duration::from_secs(5),
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
    /// The frame is larger than [`MAX_FRAME_LEN`]: the peer breaks the protocol, and the caller
    /// should drop the socket it came from.
    #[error("a frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(usize),
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
    /// Incoming messages dropped because they lay beyond the receive window.
    pub beyond_window: u64,
    /// Incoming frames refused for being larger than [`MAX_FRAME_LEN`].
    pub too_large: u64,
    /// Acknowledgements not queued because too many waited to be written.
    pub acks_dropped: u64,
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
    /// Bytes charged for `reorder` (see [`entry_cost`]).
    reorder_bytes: usize,
    /// The gap `reorder` waits on: the expected number when it was last seen to move, and
    /// when that was.
    gap: Option<(i64, Instant)>,
    /// The gap has not moved for `gap_patience`.
    gap_stuck: bool,
    /// Frames to write, each marked whether it is an acknowledgement.
    transmit: VecDeque<(Bytes, bool)>,
    /// Bytes of acknowledgements in `transmit`.
    queued_ack_bytes: usize,
    events: VecDeque<ChannelEvent>,
    /// `ChannelEvent::Message`s in `events`, and the bytes charged for them.
    undelivered: usize,
    undelivered_bytes: usize,
    /// A `ChannelClosed` waits in `events`: a further one adds nothing.
    closed_pending: bool,
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
            reorder_bytes: 0,
            gap: None,
            gap_stuck: false,
            transmit: VecDeque::new(),
            queued_ack_bytes: 0,
            events: VecDeque::new(),
            undelivered: 0,
            undelivered_bytes: 0,
            closed_pending: false,
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
    /// The frame was unusable (did not decode, bad digest, unreadable ack): the channel is
    /// unaffected, and the caller should log it and carry on. Or it was over
    /// [`MAX_FRAME_LEN`] ([`FrameError::TooLarge`]): the channel is still unaffected, but the
    /// caller should drop the socket it came from.
    pub fn handle_frame(&mut self, frame: Bytes, now: Instant) -> Result<(), FrameError> {
        let result = self.on_frame(frame, now);
        self.track_gap(now);
        result
    }

    fn on_frame(&mut self, frame: Bytes, now: Instant) -> Result<(), FrameError> {
        if frame.len() > MAX_FRAME_LEN {
            self.stats.too_large += 1;
            return Err(FrameError::TooLarge(frame.len()));
        }
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
                // One waiting is enough: the session is over either way.
                if !self.closed_pending {
                    let closed = ChannelClosed::from_payload(&message.payload).unwrap_or_default();
                    self.closed_pending = true;
                    self.events.push_back(ChannelEvent::ChannelClosed(closed));
                }
                Ok(())
            }
            MessageType::PausePublication => {
                if !self.paused {
                    self.paused = true;
                    self.notify(ChannelEvent::Paused);
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
        let (frame, ack) = self.transmit.pop_front()?;
        if ack {
            self.queued_ack_bytes -= frame.len();
        }
        Some(frame)
    }

    /// The next event for the session layer.
    pub fn poll_event(&mut self) -> Option<ChannelEvent> {
        let event = self.events.pop_front()?;
        match &event {
            ChannelEvent::Message(message) => {
                self.undelivered -= 1;
                self.undelivered_bytes -= entry_cost(message);
                // Room again: what waited behind the gap, already acknowledged, moves on.
                self.drain_reorder();
            }
            ChannelEvent::ChannelClosed(_) => self.closed_pending = false,
            ChannelEvent::Paused | ChannelEvent::Resumed => {}
        }
        Some(event)
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called, if ever.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let gap = match self.gap {
            Some((_, since)) if !self.gap_stuck => Some(since + self.config.gap_patience),
            _ => None,
        };
        if !self.can_transmit() {
            return gap;
        }
        while let Some(Reverse((deadline, seq))) = self.deadlines.peek().copied() {
            if self.is_current_deadline(seq, deadline) {
                return Some(gap.map_or(deadline, |gap| gap.min(deadline)));
            }
            self.deadlines.pop();
        }
        gap
    }

    /// Retransmits every message whose timeout has expired by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.track_gap(now);
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
            self.push_ack(ack.into_message(created, Uuid::new_v4()).encode());
        }
        self.retransmit_all(now);
    }

    /// The WebSocket is gone. Frames not yet written are dropped from the transmit queue —
    /// data stays in the unacknowledged set for the next connection; lost acks are recovered
    /// by the peer's resend and our re-ack.
    pub fn on_disconnected(&mut self) {
        self.connected = false;
        self.transmit.clear();
        self.queued_ack_bytes = 0;
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

    /// Bytes charged for the messages buffered ahead of a gap (payloads plus
    /// [`ENTRY_OVERHEAD`] each); never more than [`ChannelConfig::max_reorder_bytes`].
    pub fn reorder_bytes(&self) -> usize {
        self.reorder_bytes
    }

    /// Incoming messages waiting behind a gap that is still being filled: what the other
    /// direction should be throttled by. Zero once the gap has not moved for
    /// [`ChannelConfig::gap_patience`], since a peer that never fills it must not hold the
    /// other direction shut.
    pub fn behind_gap(&self) -> usize {
        if self.gap_stuck {
            0
        } else {
            self.reorder.len()
        }
    }

    /// Delivered messages not yet taken by [`poll_event`](Self::poll_event), and the bytes
    /// charged for them.
    pub fn undelivered(&self) -> (usize, usize) {
        (self.undelivered, self.undelivered_bytes)
    }

    /// Bytes of acknowledgements waiting in the transmit queue.
    pub fn queued_ack_bytes(&self) -> usize {
        self.queued_ack_bytes
    }

    /// Its limits.
    pub fn config(&self) -> &ChannelConfig {
        &self.config
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
        self.transmit.push_back((out.frame.clone(), false));
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
            self.notify(ChannelEvent::Resumed);
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
            return;
        }
        // Both are non-negative and `seq` is the larger: no overflow.
        let ahead = u64::try_from(seq - self.expected).unwrap_or(u64::MAX);
        if ahead >= self.config.max_reorder.max(1) as u64 {
            // Unacknowledged: a real peer sends it again once the window has moved; a
            // far-future number from a broken peer costs nothing.
            self.stats.beyond_window += 1;
            return;
        }
        // Copied: the payload is a slice of the socket's read buffer, which a kept slice
        // would pin whole.
        let message = ClientMessage {
            payload: Bytes::copy_from_slice(&message.payload),
            ..message
        };
        let cost = entry_cost(&message);
        if ahead == 0 {
            if !self.has_room(cost) {
                self.stats.refused += 1;
                return;
            }
            self.queue_ack(&message, now);
            self.deliver(message);
            self.drain_reorder();
        } else if self.reorder_bytes + cost <= self.config.max_reorder_bytes {
            self.stats.reordered += 1;
            self.queue_ack(&message, now);
            self.reorder_bytes += cost;
            self.reorder.insert(seq, message);
        } else {
            self.stats.refused += 1;
        }
    }

    /// Whether a delivered message of `cost` bytes fits in the undelivered events. One always
    /// does, whatever its size, so that a large message cannot block the channel for ever.
    fn has_room(&self, cost: usize) -> bool {
        self.undelivered == 0
            || (self.undelivered < self.config.max_undelivered
                && self.undelivered_bytes + cost <= self.config.max_undelivered_bytes)
    }

    /// Delivers what waited behind a gap that is now filled, as far as there is room.
    fn drain_reorder(&mut self) {
        while let Some((&seq, next)) = self.reorder.first_key_value() {
            if seq != self.expected || !self.has_room(entry_cost(next)) {
                break;
            }
            let Some(message) = self.reorder.remove(&seq) else {
                break;
            };
            self.reorder_bytes -= entry_cost(&message);
            self.deliver(message);
        }
    }

    fn deliver(&mut self, message: ClientMessage) {
        self.expected += 1;
        self.stats.delivered += 1;
        self.undelivered += 1;
        self.undelivered_bytes += entry_cost(&message);
        self.events.push_back(ChannelEvent::Message(message));
    }

    /// Queues an informational event (a pause, a resume), unless the session layer is that
    /// far behind: it is only told about them, and must not be made to hold them without end.
    fn notify(&mut self, event: ChannelEvent) {
        if self.events.len() < self.config.max_undelivered.max(1) {
            self.events.push_back(event);
        }
    }

    /// Notes whether the gap the reorder buffer waits on has moved.
    fn track_gap(&mut self, now: Instant) {
        if self.reorder.is_empty() {
            self.gap = None;
            self.gap_stuck = false;
            return;
        }
        match self.gap {
            Some((expected, since)) if expected == self.expected => {
                self.gap_stuck = now.saturating_duration_since(since) >= self.config.gap_patience;
            }
            _ => {
                self.gap = Some((self.expected, now));
                self.gap_stuck = false;
            }
        }
    }

    fn queue_ack(&mut self, message: &ClientMessage, now: Instant) {
        // Without a socket the ack is pointless: the peer resends and we ack then.
        if self.connected {
            let content = AcknowledgeContent::for_message(message);
            if self.recent_acks.len() == RECENT_ACKS {
                self.recent_acks.pop_front();
            }
            self.recent_acks.push_back(content.clone());
            let ack = content
                .into_message(self.unix_ms(now), Uuid::new_v4())
                .encode();
            self.push_ack(ack);
        }
    }

    fn push_ack(&mut self, ack: Bytes) {
        if self.queued_ack_bytes + ack.len() > self.config.max_queued_ack_bytes {
            // The peer resends what stays unacknowledged; dropping an ack loses nothing.
            self.stats.acks_dropped += 1;
            return;
        }
        self.queued_ack_bytes += ack.len();
        self.transmit.push_back((ack, true));
    }
}

/// What keeping an incoming message is charged, in bytes.
fn entry_cost(message: &ClientMessage) -> usize {
    message.payload.len() + ENTRY_OVERHEAD
}

#[cfg(test)]
mod tests;
