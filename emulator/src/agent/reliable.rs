//! The agent's reliable stream layer (docs/protocol.md §4.4–§4.7), sans-IO.
//!
//! This is a model of amazon-ssm-agent's `datachannel.go`, not of a good transport: every
//! quirk that a client has to survive is kept on purpose.
//!
//! * Outgoing: every stream-data message gets the next sequence number and is appended to the
//!   resend buffer **whether or not it could be written** (paused, socket down, write failed).
//!   A full buffer refuses the *new* message (it is sent once and never resent).
//! * Resend: one scheduler tick every [`RESEND_INTERVAL`] looks only at the **head** of the
//!   buffer and resends it if it has waited longer than the RTO; `last_sent` is updated.
//! * RTT/RTO: RFC 6298-like with the agent's constants, computed in `f64` nanoseconds exactly
//!   like the Go code (which stores a `time.Duration` in a `float64`).
//! * Incoming: process-then-ack for the expected sequence number, ack-and-buffer for later
//!   ones, re-ack for duplicates; an in-order message the handler is not ready for is neither
//!   acked nor counted, so the peer resends it.
//! * Pause: set by `pause_publication`; while set nothing is written or resent (but everything
//!   is still buffered). Any received ack or stream data clears it.
//!
//! Nothing here reads a clock or touches a socket: callers pass `Instant`s in and get frames
//! and acknowledgements out, so the rules are unit-tested with simulated time.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ssm_tether_protocol::message::{FLAG_SYN, SCHEMA_VERSION};
use ssm_tether_protocol::payload::AcknowledgeContent;
use ssm_tether_protocol::{ClientMessage, MessageType, PayloadType};
use uuid::Uuid;

/// `OutgoingMessageBufferCapacity` of the agent.
pub(crate) const OUTGOING_CAPACITY: usize = 100_000;
/// `IncomingMessageBufferCapacity` of the agent.
pub(crate) const INCOMING_CAPACITY: usize = 100_000;
/// `ResendSleepInterval`: the resend scheduler's tick.
pub(crate) const RESEND_INTERVAL: Duration = Duration::from_millis(100);
/// `DefaultRoundTripTime`.
pub(crate) const DEFAULT_RTT: Duration = Duration::from_millis(100);
/// `DefaultTransmissionTimeout`: the RTO before the first sample.
pub(crate) const DEFAULT_RTO: Duration = Duration::from_millis(200);
/// `ClockGranularity`: the floor of the variance term of the RTO.
pub(crate) const CLOCK_GRANULARITY: Duration = Duration::from_millis(10);
/// `MaxTransmissionTimeout`: the RTO cap.
pub(crate) const MAX_RTO: Duration = Duration::from_secs(1);
/// `RTTConstant` (α).
const RTT_ALPHA: f64 = 1.0 / 8.0;
/// `RTTVConstant` (β).
const RTTVAR_BETA: f64 = 1.0 / 4.0;

/// One unacknowledged outgoing message: the exact bytes to resend (same MessageId and
/// CreatedDate, as the agent resends its serialized frame verbatim).
#[derive(Debug)]
struct OutEntry {
    seq: i64,
    frame: Bytes,
    last_sent: Instant,
}

/// The result of [`Reliable::send`].
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    /// The sequence number the message consumed.
    pub(crate) seq: i64,
    /// The encoded frame.
    pub(crate) frame: Bytes,
    /// Whether the caller should write it now (false while paused).
    pub(crate) transmit: bool,
    /// Whether it went into the resend buffer (false only when the buffer is full).
    pub(crate) buffered: bool,
}

/// What happened to a received stream-data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// It was the expected one and was processed, followed by this many buffered ones
    /// (the total count delivered, at least 1).
    Delivered(usize),
    /// It was the expected one but the handler was not ready: not acked, not counted.
    NotReady,
    /// It is ahead of the expected one: acked and kept for later.
    Buffered,
    /// It is ahead of the expected one but the buffer is full: dropped without an ack.
    Dropped,
    /// It was already processed: re-acked, not processed again.
    Duplicate,
}

/// The result of [`Reliable::receive`].
#[derive(Debug, Clone)]
pub(crate) struct Received {
    /// What happened.
    pub(crate) arrival: Arrival,
    /// The acknowledgement to send, if any.
    pub(crate) ack: Option<AcknowledgeContent>,
}

/// The agent's sequencing, buffering, acknowledgement and retransmission state for one data
/// channel. It survives reconnects: only the socket changes.
#[derive(Debug)]
pub(crate) struct Reliable {
    outgoing: VecDeque<OutEntry>,
    out_capacity: usize,
    next_seq: i64,
    rtt_ns: f64,
    rttvar_ns: f64,
    rto: Duration,
    expected: i64,
    incoming: BTreeMap<i64, ClientMessage>,
    in_capacity: usize,
    paused: bool,
}

impl Default for Reliable {
    fn default() -> Self {
        Self::with_capacities(OUTGOING_CAPACITY, INCOMING_CAPACITY)
    }
}

impl Reliable {
    /// A fresh channel with the agent's buffer capacities.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A fresh channel with other buffer capacities (tests of the full-buffer rules).
    pub(crate) fn with_capacities(out_capacity: usize, in_capacity: usize) -> Self {
        Self {
            outgoing: VecDeque::new(),
            out_capacity,
            next_seq: 0,
            rtt_ns: DEFAULT_RTT.as_nanos() as f64,
            rttvar_ns: 0.0,
            rto: DEFAULT_RTO,
            expected: 0,
            incoming: BTreeMap::new(),
            in_capacity,
            paused: false,
        }
    }

    /// Builds, numbers and buffers an `output_stream_data` message.
    ///
    /// Flags are SYN on sequence number 0 and 0 otherwise, like the agent. The message is
    /// buffered for resend even when it will not be written now (paused) or its write fails
    /// later (socket down): the caller just drops the frame in those cases.
    pub(crate) fn send(
        &mut self,
        now: Instant,
        created_date: u64,
        message_id: Uuid,
        payload_type: PayloadType,
        payload: Bytes,
    ) -> Sent {
        let seq = self.next_seq;
        let message = ClientMessage {
            message_type: MessageType::OutputStreamData,
            schema_version: SCHEMA_VERSION,
            created_date,
            sequence_number: seq,
            flags: if seq == 0 { FLAG_SYN } else { 0 },
            message_id,
            payload_type,
            payload,
        };
        let frame = message.encode();
        // The agent checks the capacity and silently refuses the new message when full.
        let buffered = self.outgoing.len() < self.out_capacity;
        if buffered {
            self.outgoing.push_back(OutEntry {
                seq,
                frame: frame.clone(),
                last_sent: now,
            });
        }
        self.next_seq += 1;
        Sent {
            seq,
            frame,
            transmit: !self.paused,
            buffered,
        }
    }

    /// Handles an acknowledgement of `seq`: clears Pause, removes the message (matched by
    /// sequence number only) and updates RTT/RTO from `now − last_sent`. Returns the RTT
    /// sample, or `None` if no buffered message had that number.
    pub(crate) fn on_ack(&mut self, now: Instant, seq: i64) -> Option<Duration> {
        self.paused = false;
        // Sequence numbers in the buffer are strictly increasing, so a binary search finds the
        // entry the agent's linear walk would find.
        let index = self
            .outgoing
            .binary_search_by_key(&seq, |entry| entry.seq)
            .ok()?;
        let entry = self.outgoing.remove(index)?;
        let sample = now.saturating_duration_since(entry.last_sent);
        self.update_rto(sample);
        Some(sample)
    }

    fn update_rto(&mut self, sample: Duration) {
        let sample_ns = sample.as_nanos() as f64;
        // The variation uses the *old* RTT, as in the agent.
        self.rttvar_ns =
            (1.0 - RTTVAR_BETA) * self.rttvar_ns + RTTVAR_BETA * (self.rtt_ns - sample_ns).abs();
        self.rtt_ns = (1.0 - RTT_ALPHA) * self.rtt_ns + RTT_ALPHA * sample_ns;
        let floor = CLOCK_GRANULARITY.as_nanos() as f64;
        let rto_ns = self.rtt_ns + floor.max(4.0 * self.rttvar_ns);
        // Go converts the float64 to a Duration by truncation.
        self.rto = Duration::from_nanos(rto_ns as u64).min(MAX_RTO);
    }

    /// One resend-scheduler tick: if not paused and the head of the buffer has waited longer
    /// than the RTO, returns its sequence number and frame to write again and restarts its
    /// clock. Only the head is ever considered.
    pub(crate) fn poll_resend(&mut self, now: Instant) -> Option<(i64, Bytes)> {
        if self.paused {
            return None;
        }
        let rto = self.rto;
        let head = self.outgoing.front_mut()?;
        if now.saturating_duration_since(head.last_sent) > rto {
            head.last_sent = now;
            Some((head.seq, head.frame.clone()))
        } else {
            None
        }
    }

    /// Handles a received `input_stream_data` message.
    ///
    /// `deliver` processes one in-order message and returns whether it was handled (`false` =
    /// handler not ready). It is called for `message` if it is the expected one, then for each
    /// buffered successor; a buffered message the handler refuses stays buffered (it was acked
    /// when it was buffered).
    pub(crate) fn receive(
        &mut self,
        message: ClientMessage,
        mut deliver: impl FnMut(&ClientMessage) -> bool,
    ) -> Received {
        self.paused = false;
        let seq = message.sequence_number;
        if seq == self.expected {
            if !deliver(&message) {
                return Received {
                    arrival: Arrival::NotReady,
                    ack: None,
                };
            }
            // Process, then ack, then advance, as docs/protocol.md §4.7 describes the agent.
            let ack = AcknowledgeContent::for_message(&message);
            self.expected += 1;
            let mut delivered = 1;
            while let Some(buffered) = self.incoming.get(&self.expected) {
                if !deliver(buffered) {
                    break;
                }
                self.incoming.remove(&self.expected);
                self.expected += 1;
                delivered += 1;
            }
            Received {
                arrival: Arrival::Delivered(delivered),
                ack: Some(ack),
            }
        } else if seq > self.expected {
            if self.incoming.len() < self.in_capacity || self.incoming.contains_key(&seq) {
                let ack = AcknowledgeContent::for_message(&message);
                self.incoming.insert(seq, message);
                Received {
                    arrival: Arrival::Buffered,
                    ack: Some(ack),
                }
            } else {
                Received {
                    arrival: Arrival::Dropped,
                    ack: None,
                }
            }
        } else {
            Received {
                arrival: Arrival::Duplicate,
                ack: Some(AcknowledgeContent::for_message(&message)),
            }
        }
    }

    /// Sets or clears Pause (`pause_publication` / `start_publication` / reconnect).
    pub(crate) fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Whether sending and resending are paused.
    pub(crate) fn paused(&self) -> bool {
        self.paused
    }

    /// The current retransmission timeout.
    pub(crate) fn rto(&self) -> Duration {
        self.rto
    }

    /// The smoothed round-trip time.
    pub(crate) fn rtt(&self) -> Duration {
        Duration::from_nanos(self.rtt_ns as u64)
    }

    /// The round-trip time variation.
    pub(crate) fn rttvar(&self) -> Duration {
        Duration::from_nanos(self.rttvar_ns as u64)
    }

    /// The sequence number the next outgoing message will get.
    pub(crate) fn next_sequence(&self) -> i64 {
        self.next_seq
    }

    /// The next incoming sequence number expected.
    pub(crate) fn expected(&self) -> i64 {
        self.expected
    }

    /// How many outgoing messages are unacknowledged (buffered).
    pub(crate) fn unacked(&self) -> usize {
        self.outgoing.len()
    }

    /// How many out-of-order incoming messages are buffered.
    pub(crate) fn buffered_incoming(&self) -> usize {
        self.incoming.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn send(rel: &mut Reliable, now: Instant, payload: &'static [u8]) -> Sent {
        rel.send(
            now,
            1_700_000_000_000,
            Uuid::new_v4(),
            PayloadType::OUTPUT,
            Bytes::from_static(payload),
        )
    }

    fn input(seq: i64) -> ClientMessage {
        ClientMessage {
            message_type: MessageType::InputStreamData,
            schema_version: 1,
            created_date: 1,
            sequence_number: seq,
            flags: 0,
            message_id: Uuid::from_u128(seq as u128 + 1),
            payload_type: PayloadType::OUTPUT,
            payload: Bytes::from(format!("m{seq}")),
        }
    }

    #[test]
    fn rto_follows_the_protocol_md_example() {
        let t0 = Instant::now();
        let mut rel = Reliable::new();
        assert_eq!(rel.rto(), ms(200));
        let sent = send(&mut rel, t0, b"x");
        assert_eq!(rel.on_ack(t0 + ms(50), sent.seq), Some(ms(50)));
        assert_eq!(rel.rttvar(), Duration::from_micros(12_500));
        assert_eq!(rel.rtt(), Duration::from_micros(93_750));
        assert_eq!(rel.rto(), Duration::from_micros(143_750));
        assert_eq!(rel.unacked(), 0);
    }

    #[test]
    fn rto_has_a_granularity_floor_and_a_cap() {
        let t0 = Instant::now();
        let mut rel = Reliable::new();
        // Samples equal to the RTT drive the variation to 0: RTO = RTT + 10 ms.
        for i in 0..200 {
            let sent = send(&mut rel, t0, b"x");
            rel.on_ack(t0 + ms(100), sent.seq);
            assert!(rel.rto() <= MAX_RTO, "step {i}");
        }
        assert_eq!(rel.rto(), ms(110));
        let sent = send(&mut rel, t0, b"x");
        rel.on_ack(t0 + Duration::from_secs(30), sent.seq);
        assert_eq!(rel.rto(), MAX_RTO);
    }

    #[test]
    fn sequence_numbers_flags_and_frames() {
        let t0 = Instant::now();
        let mut rel = Reliable::new();
        let first = send(&mut rel, t0, b"a");
        let second = send(&mut rel, t0, b"b");
        let a = ClientMessage::decode(first.frame).expect("decodes").message;
        let b = ClientMessage::decode(second.frame)
            .expect("decodes")
            .message;
        assert_eq!((a.sequence_number, a.flags), (0, 1));
        assert_eq!((b.sequence_number, b.flags), (1, 0));
        assert_eq!(a.message_type, MessageType::OutputStreamData);
        assert_eq!(rel.next_sequence(), 2);
    }

    #[test]
    fn only_the_head_is_resent_after_the_rto_and_its_clock_restarts() {
        let t0 = Instant::now();
        let mut rel = Reliable::new();
        let s0 = send(&mut rel, t0, b"a");
        let _s1 = send(&mut rel, t0, b"b");
        // Scheduler ticks every 100 ms; RTO 200 ms; strictly greater is required.
        assert_eq!(rel.poll_resend(t0 + ms(100)), None);
        assert_eq!(rel.poll_resend(t0 + ms(200)), None);
        let (seq, frame) = rel.poll_resend(t0 + ms(300)).expect("head resent");
        assert_eq!(seq, 0);
        assert_eq!(frame, s0.frame, "resends reuse the exact bytes");
        // lastSent was updated: the next resend is another RTO later, and still the head.
        assert_eq!(rel.poll_resend(t0 + ms(400)), None);
        assert_eq!(rel.poll_resend(t0 + ms(500)), None);
        assert_eq!(rel.poll_resend(t0 + ms(600)).map(|r| r.0), Some(0));
        // Acking the head moves the scheduler to seq 1, whose clock started at t0.
        rel.on_ack(t0 + ms(650), 0);
        assert_eq!(rel.poll_resend(t0 + ms(700)).map(|r| r.0), Some(1));
    }

    #[test]
    fn resends_are_unbounded() {
        let t0 = Instant::now();
        let mut rel = Reliable::new();
        send(&mut rel, t0, b"a");
        let mut count = 0;
        for tick in 1..=10_000u64 {
            if rel.poll_resend(t0 + ms(100 * tick)).is_some() {
                count += 1;
            }
        }
        // RTO 200 ms, strictly greater: every third tick.
        assert_eq!(count, 3333);
    }

    #[test]
    fn acks_match_by_sequence_number_anywhere_in_the_buffer() {
        let t0 = Instant::now();
        let mut rel = Reliable::new();
        for _ in 0..5 {
            send(&mut rel, t0, b"x");
        }
        assert!(rel.on_ack(t0 + ms(10), 3).is_some());
        assert!(rel.on_ack(t0 + ms(10), 3).is_none(), "already removed");
        assert!(rel.on_ack(t0 + ms(10), 99).is_none());
        assert_eq!(rel.unacked(), 4);
        assert_eq!(
            rel.poll_resend(t0 + Duration::from_secs(5)).map(|r| r.0),
            Some(0)
        );
    }

    #[test]
    fn pause_stops_writes_and_resends_but_keeps_buffering() {
        let t0 = Instant::now();
        let mut rel = Reliable::new();
        send(&mut rel, t0, b"a");
        rel.set_paused(true);
        let paused = send(&mut rel, t0, b"b");
        assert!(!paused.transmit);
        assert!(paused.buffered);
        assert_eq!(
            paused.seq, 1,
            "a paused message still consumes a sequence number"
        );
        assert_eq!(rel.poll_resend(t0 + Duration::from_secs(10)), None);
        // Any received ack clears Pause.
        rel.on_ack(t0 + ms(1), 99);
        assert!(!rel.paused());
        assert_eq!(
            rel.poll_resend(t0 + Duration::from_secs(10)).map(|r| r.0),
            Some(0)
        );
        // So does received stream data.
        rel.set_paused(true);
        rel.receive(input(0), |_| true);
        assert!(!rel.paused());
    }

    #[test]
    fn messages_written_while_the_socket_is_down_are_buffered_and_resent_after() {
        // The caller drops frames it cannot write; the state machine does not know about
        // sockets, so "down" is simply: nobody writes `Sent::frame`, and no acks arrive.
        let t0 = Instant::now();
        let mut rel = Reliable::new();
        let down: Vec<Sent> = (0..3).map(|_| send(&mut rel, t0, b"x")).collect();
        assert!(down.iter().all(|s| s.buffered && s.transmit));
        assert_eq!(rel.unacked(), 3);
        // After the reconnect, the scheduler resends the head first.
        let (seq, frame) = rel
            .poll_resend(t0 + Duration::from_secs(3))
            .expect("resend");
        assert_eq!((seq, frame), (0, down[0].frame.clone()));
    }

    #[test]
    fn full_outgoing_buffer_refuses_the_new_message() {
        let t0 = Instant::now();
        let mut rel = Reliable::with_capacities(2, 2);
        send(&mut rel, t0, b"a");
        send(&mut rel, t0, b"b");
        let third = send(&mut rel, t0, b"c");
        assert!(!third.buffered);
        assert!(third.transmit, "sent once, never resent");
        assert_eq!(third.seq, 2);
        assert_eq!(rel.unacked(), 2);
        assert_eq!(rel.next_sequence(), 3);
    }

    #[test]
    fn in_order_is_processed_then_acked() {
        let mut rel = Reliable::new();
        let mut seen = Vec::new();
        let got = rel.receive(input(0), |m| {
            seen.push(m.sequence_number);
            true
        });
        assert_eq!(got.arrival, Arrival::Delivered(1));
        let ack = got.ack.expect("acked");
        assert_eq!(ack.sequence_number, 0);
        assert_eq!(ack.message_type, "input_stream_data");
        assert_eq!(ack.message_id, Uuid::from_u128(1).hyphenated().to_string());
        assert_eq!(seen, vec![0]);
        assert_eq!(rel.expected(), 1);
    }

    #[test]
    fn duplicates_are_re_acked_not_reprocessed() {
        let mut rel = Reliable::new();
        rel.receive(input(0), |_| true);
        rel.receive(input(1), |_| true);
        let mut calls = 0;
        let got = rel.receive(input(0), |_| {
            calls += 1;
            true
        });
        assert_eq!(got.arrival, Arrival::Duplicate);
        assert_eq!(got.ack.map(|a| a.sequence_number), Some(0));
        assert_eq!(calls, 0);
        assert_eq!(rel.expected(), 2);
    }

    #[test]
    fn out_of_order_is_acked_buffered_and_drained_in_order() {
        let mut rel = Reliable::new();
        let mut seen = Vec::new();
        for seq in [2, 1, 4] {
            let got = rel.receive(input(seq), |m| {
                seen.push(m.sequence_number);
                true
            });
            assert_eq!(got.arrival, Arrival::Buffered);
            assert_eq!(got.ack.map(|a| a.sequence_number), Some(seq));
        }
        assert!(seen.is_empty());
        assert_eq!(rel.buffered_incoming(), 3);
        let got = rel.receive(input(0), |m| {
            seen.push(m.sequence_number);
            true
        });
        assert_eq!(got.arrival, Arrival::Delivered(3));
        assert_eq!(
            got.ack.map(|a| a.sequence_number),
            Some(0),
            "only 0 is acked now"
        );
        assert_eq!(seen, vec![0, 1, 2]);
        assert_eq!(rel.expected(), 3);
        assert_eq!(rel.buffered_incoming(), 1);
        let got = rel.receive(input(3), |m| {
            seen.push(m.sequence_number);
            true
        });
        assert_eq!(got.arrival, Arrival::Delivered(2));
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn full_incoming_buffer_drops_without_ack() {
        let mut rel = Reliable::with_capacities(10, 2);
        rel.receive(input(1), |_| true);
        rel.receive(input(2), |_| true);
        let got = rel.receive(input(3), |_| true);
        assert_eq!(got.arrival, Arrival::Dropped);
        assert!(got.ack.is_none());
        // A resend of an already-buffered one is still acked.
        let got = rel.receive(input(2), |_| true);
        assert_eq!(got.arrival, Arrival::Buffered);
        assert!(got.ack.is_some());
    }

    #[test]
    fn handler_not_ready_leaves_the_message_unacked_and_uncounted() {
        let mut rel = Reliable::new();
        let got = rel.receive(input(0), |_| false);
        assert_eq!(got.arrival, Arrival::NotReady);
        assert!(got.ack.is_none());
        assert_eq!(rel.expected(), 0);
        // A buffered successor the handler refuses stays buffered.
        rel.receive(input(1), |_| true);
        let mut ready = true;
        let got = rel.receive(input(0), |_| std::mem::replace(&mut ready, false));
        assert_eq!(got.arrival, Arrival::Delivered(1));
        assert_eq!(rel.expected(), 1);
        assert_eq!(rel.buffered_incoming(), 1);
        let got = rel.receive(input(5), |_| true);
        assert_eq!(got.arrival, Arrival::Buffered);
    }
}
