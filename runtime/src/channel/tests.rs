//! Deterministic tests of the channel with simulated time.

use super::*;
use crate::protocol::message::FLAGS_CONTROL;

const MS: Duration = Duration::from_millis(1);

fn channel(config: ChannelConfig) -> (Channel, Instant) {
    let now = Instant::now();
    let mut channel = Channel::new(config, now, 1_700_000_000_000);
    channel.on_connected(now);
    (channel, now)
}

fn client() -> (Channel, Instant) {
    channel(ChannelConfig::default())
}

fn data(seq: i64, payload: &'static [u8]) -> Bytes {
    ClientMessage {
        message_type: MessageType::OutputStreamData,
        schema_version: 1,
        created_date: 1,
        sequence_number: seq,
        flags: 0,
        message_id: Uuid::from_u128(seq as u128 + 1),
        payload_type: PayloadType::OUTPUT,
        payload: Bytes::from_static(payload),
    }
    .encode()
}

/// An agent message of `len` payload bytes.
fn data_of_len(seq: i64, len: usize) -> Bytes {
    ClientMessage {
        message_type: MessageType::OutputStreamData,
        schema_version: 1,
        created_date: 1,
        sequence_number: seq,
        flags: 0,
        message_id: Uuid::from_u128(seq as u128 + 1),
        payload_type: PayloadType::OUTPUT,
        payload: Bytes::from(vec![seq as u8; len]),
    }
    .encode()
}

fn ack(seq: i64) -> Bytes {
    AcknowledgeContent {
        message_type: "input_stream_data".into(),
        message_id: Uuid::nil().to_string(),
        sequence_number: seq,
        is_sequential: true,
    }
    .into_message(1, Uuid::nil())
    .encode()
}

fn service(message_type: MessageType, payload: &'static [u8]) -> Bytes {
    ClientMessage {
        message_type,
        schema_version: 1,
        created_date: 1,
        sequence_number: 0,
        flags: FLAGS_CONTROL,
        message_id: Uuid::nil(),
        payload_type: PayloadType::UNSPECIFIED,
        payload: Bytes::from_static(payload),
    }
    .encode()
}

/// Every frame the channel wants written, decoded.
fn drain(channel: &mut Channel) -> Vec<ClientMessage> {
    std::iter::from_fn(|| channel.poll_transmit())
        .map(|frame| {
            ClientMessage::decode(frame)
                .expect("own frames decode")
                .message
        })
        .collect()
}

fn seqs_of(frames: &[ClientMessage], message_type: MessageType) -> Vec<i64> {
    frames
        .iter()
        .filter(|m| m.message_type == message_type)
        .map(|m| m.sequence_number)
        .collect()
}

fn acked_seqs(frames: &[ClientMessage]) -> Vec<i64> {
    frames
        .iter()
        .filter(|m| m.message_type == MessageType::Acknowledge)
        .map(|m| {
            AcknowledgeContent::from_payload(&m.payload)
                .expect("ack")
                .sequence_number
        })
        .collect()
}

fn delivered(channel: &mut Channel) -> Vec<Bytes> {
    std::iter::from_fn(|| channel.poll_event())
        .filter_map(|event| match event {
            ChannelEvent::Message(message) => Some(message.payload),
            _ => None,
        })
        .collect()
}

fn send(channel: &mut Channel, payload: &'static [u8], now: Instant) -> i64 {
    channel
        .send(PayloadType::OUTPUT, Bytes::from_static(payload), now)
        .expect("window open")
}

#[test]
fn sends_sequenced_input_and_forgets_it_once_acked() {
    // The official 10 ms floor, to check the protocol's worked RTO example.
    let (mut ch, t0) = channel(ChannelConfig {
        min_rto: Duration::from_millis(10),
        ..ChannelConfig::default()
    });
    assert_eq!(send(&mut ch, b"a", t0), 0);
    assert_eq!(send(&mut ch, b"b", t0), 1);
    let frames = drain(&mut ch);
    assert_eq!(seqs_of(&frames, MessageType::InputStreamData), vec![0, 1]);
    assert!(
        frames
            .iter()
            .all(|m| m.flags == 0 && m.created_date == 1_700_000_000_000)
    );
    ch.handle_frame(ack(0), t0 + 50 * MS).expect("ack");
    assert_eq!(ch.unacked(), 1);
    // Karn: one clean sample of 50 ms gives the protocol's worked RTO.
    assert_eq!(ch.rto(), Duration::from_micros(143_750));
    // The default floor keeps a fast path from retransmitting every burst.
    let (mut floored, t0) = client();
    send(&mut floored, b"a", t0);
    floored.handle_frame(ack(0), t0 + 2 * MS).expect("ack");
    assert_eq!(floored.rto(), Duration::from_millis(200));
}

#[test]
fn every_expired_message_is_resent_not_only_the_head() {
    let (mut ch, t0) = client();
    for payload in [b"a", b"b", b"c"] {
        send(&mut ch, payload, t0);
    }
    drain(&mut ch);
    assert_eq!(ch.poll_timeout(), Some(t0 + 200 * MS));
    ch.handle_timeout(t0 + 199 * MS);
    assert!(drain(&mut ch).is_empty());
    ch.handle_timeout(t0 + 200 * MS);
    assert_eq!(
        seqs_of(&drain(&mut ch), MessageType::InputStreamData),
        vec![0, 1, 2]
    );
    // Backoff doubles: the next resend is two RTOs later.
    let next = t0 + 600 * MS;
    assert_eq!(ch.poll_timeout(), Some(next));
    ch.handle_timeout(next - MS);
    assert!(drain(&mut ch).is_empty());
    ch.handle_timeout(next);
    assert_eq!(
        seqs_of(&drain(&mut ch), MessageType::InputStreamData),
        vec![0, 1, 2]
    );
    assert_eq!(ch.stats().retransmitted, 6);
    // An ack for a retransmitted message is no RTT sample.
    let rto = ch.rto();
    ch.handle_frame(ack(0), next + MS).expect("ack");
    assert_eq!(ch.rto(), rto);
}

#[test]
fn an_ack_for_a_later_message_retransmits_the_holes_at_once() {
    let (mut ch, t0) = client();
    send(&mut ch, b"a", t0);
    send(&mut ch, b"b", t0 + 10 * MS);
    send(&mut ch, b"c", t0 + 60 * MS);
    send(&mut ch, b"d", t0 + 61 * MS);
    drain(&mut ch);
    // 2 was sent well after 0 and 1 (more than 10 ms + RTT/4): its ack proves them lost.
    ch.handle_frame(ack(2), t0 + 65 * MS).expect("ack");
    assert_eq!(
        seqs_of(&drain(&mut ch), MessageType::InputStreamData),
        vec![0, 1]
    );
    // Their retransmissions are newer than 3: its ack declares nothing lost.
    ch.handle_frame(ack(3), t0 + 66 * MS).expect("ack");
    assert!(drain(&mut ch).is_empty());
}

#[test]
fn a_slow_but_working_peer_causes_no_spurious_retransmissions() {
    let (mut ch, t0) = channel(ChannelConfig {
        max_unacked: 64,
        ..ChannelConfig::default()
    });
    for _ in 0..20 {
        send(&mut ch, b"x", t0);
    }
    drain(&mut ch);
    // The peer acks one message every 150 ms: the last ack comes 3 s after the burst, far past
    // any single message's RTO, but progress never stops.
    for seq in 0..20 {
        let now = t0 + (seq as u32 + 1) * 150 * MS;
        ch.handle_timeout(now - MS);
        ch.handle_frame(ack(seq), now).expect("ack");
    }
    assert_eq!(ch.stats().retransmitted, 0);
    assert_eq!(ch.unacked(), 0);
}

#[test]
fn backoff_is_capped() {
    let (mut ch, t0) = channel(ChannelConfig {
        max_backoff: Duration::from_millis(500),
        ..ChannelConfig::default()
    });
    send(&mut ch, b"a", t0);
    drain(&mut ch);
    let mut now = t0;
    let mut gaps = Vec::new();
    for _ in 0..5 {
        let next = ch.poll_timeout().expect("pending");
        gaps.push(next - now);
        now = next;
        ch.handle_timeout(now);
        assert_eq!(drain(&mut ch).len(), 1);
    }
    assert_eq!(gaps, [200, 400, 500, 500, 500].map(|ms| ms * MS));
}

#[test]
fn messages_written_while_disconnected_are_kept_and_sent_in_order_on_reconnect() {
    let (mut ch, t0) = client();
    send(&mut ch, b"a", t0);
    drain(&mut ch);
    ch.on_disconnected();
    assert_eq!(send(&mut ch, b"b", t0), 1);
    assert_eq!(send(&mut ch, b"c", t0), 2);
    assert!(
        drain(&mut ch).is_empty(),
        "nothing is written without a socket"
    );
    assert_eq!(ch.poll_timeout(), None, "no resends without a socket");
    ch.handle_timeout(t0 + Duration::from_secs(10));
    assert!(drain(&mut ch).is_empty());

    ch.on_connected(t0 + Duration::from_secs(10));
    let frames = drain(&mut ch);
    assert_eq!(
        seqs_of(&frames, MessageType::InputStreamData),
        vec![0, 1, 2]
    );
    assert_eq!(frames[1].payload.as_ref(), b"b");
    // Sequence numbers continue across the reconnect.
    assert_eq!(send(&mut ch, b"d", t0 + Duration::from_secs(10)), 3);
}

#[test]
fn a_new_connection_repeats_the_latest_acks_and_resends_without_the_old_backoff() {
    let (mut ch, t0) = client();
    // Three messages from the peer, acked on a socket that then dies: the acks may be lost.
    for seq in 0..3 {
        ch.handle_frame(data(seq, b"x"), t0).expect("valid");
    }
    assert_eq!(acked_seqs(&drain(&mut ch)), vec![0, 1, 2]);
    // Fast round trips measured earlier on the path bring its RTO down to the floor.
    for seq in 0..40 {
        send(&mut ch, b"z", t0);
        ch.handle_frame(ack(seq), t0 + MS).expect("ack");
    }
    drain(&mut ch);
    // One of ours has been retransmitted twice already on the old path.
    send(&mut ch, b"a", t0);
    ch.handle_timeout(t0 + Duration::from_secs(1));
    ch.handle_timeout(t0 + Duration::from_secs(2));
    drain(&mut ch);
    ch.on_disconnected();
    let t1 = t0 + Duration::from_secs(3);
    ch.on_connected(t1);
    let frames = drain(&mut ch);
    assert_eq!(acked_seqs(&frames), vec![0, 1, 2], "the acks go out again");
    assert_eq!(seqs_of(&frames, MessageType::InputStreamData), vec![40]);
    // Its next timer is the path's RTT-derived one (20 ms floor), not 800 ms of old backoff.
    let next = ch.poll_timeout().expect("a timer");
    assert_eq!(next, t1 + FRESH_RTO_FLOOR);
    // The acks are repeated once, not on every later connection.
    ch.on_disconnected();
    ch.on_connected(t1 + Duration::from_secs(1));
    assert!(acked_seqs(&drain(&mut ch)).is_empty());
}

#[test]
fn full_window_refuses_instead_of_evicting() {
    let (mut ch, t0) = channel(ChannelConfig {
        max_unacked: 2,
        ..ChannelConfig::default()
    });
    send(&mut ch, b"a", t0);
    send(&mut ch, b"b", t0);
    assert_eq!(ch.send_capacity(), 0);
    assert_eq!(
        ch.send(PayloadType::OUTPUT, Bytes::from_static(b"c"), t0),
        Err(SendError::WindowFull(2))
    );
    ch.handle_frame(ack(0), t0 + MS).expect("ack");
    assert_eq!(send(&mut ch, b"c", t0), 2);
    let oversized = Bytes::from(vec![0; MAX_STREAM_PAYLOAD + 1]);
    assert_eq!(
        ch.send(PayloadType::OUTPUT, oversized, t0),
        Err(SendError::PayloadTooLarge(MAX_STREAM_PAYLOAD + 1))
    );
}

#[test]
fn incoming_data_is_delivered_once_in_order_and_duplicates_are_reacked() {
    let (mut ch, t0) = client();
    ch.handle_frame(data(0, b"zero"), t0).expect("data");
    ch.handle_frame(data(2, b"two"), t0).expect("data");
    ch.handle_frame(data(2, b"two"), t0).expect("data");
    assert_eq!(delivered(&mut ch), vec![Bytes::from_static(b"zero")]);
    ch.handle_frame(data(1, b"one"), t0).expect("data");
    ch.handle_frame(data(0, b"zero"), t0).expect("data");
    assert_eq!(
        delivered(&mut ch),
        vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")]
    );
    // Every copy is acknowledged, so a lost ack can never stall the peer.
    assert_eq!(acked_seqs(&drain(&mut ch)), vec![0, 2, 2, 1, 0]);
    assert_eq!(ch.expected_sequence_number(), 3);
    assert_eq!(ch.stats().duplicates, 2);
}

#[test]
fn bad_digest_is_dropped_unacked_so_the_peer_resends() {
    let (mut ch, t0) = client();
    let mut frame = data(0, b"zero").to_vec();
    let last = frame.len() - 1;
    frame[last] ^= 1;
    let err = ch
        .handle_frame(Bytes::from(frame), t0)
        .expect_err("bad digest");
    assert!(matches!(
        err,
        FrameError::BadDigest(MessageType::OutputStreamData, 0)
    ));
    assert!(drain(&mut ch).is_empty());
    assert!(delivered(&mut ch).is_empty());
    assert!(matches!(
        ch.handle_frame(Bytes::from_static(b"junk"), t0),
        Err(FrameError::Decode(_))
    ));
}

#[test]
fn slow_application_leaves_data_unacked() {
    let (mut ch, t0) = channel(ChannelConfig {
        max_undelivered: 1,
        ..ChannelConfig::default()
    });
    ch.handle_frame(data(0, b"zero"), t0).expect("data");
    ch.handle_frame(data(1, b"one"), t0).expect("data");
    assert_eq!(acked_seqs(&drain(&mut ch)), vec![0]);
    assert_eq!(delivered(&mut ch), vec![Bytes::from_static(b"zero")]);
    ch.handle_frame(data(1, b"one"), t0).expect("resent");
    assert_eq!(acked_seqs(&drain(&mut ch)), vec![1]);
    assert_eq!(delivered(&mut ch), vec![Bytes::from_static(b"one")]);
}

#[test]
fn pause_stops_data_and_resends_until_publication_starts() {
    let (mut ch, t0) = client();
    send(&mut ch, b"a", t0);
    drain(&mut ch);
    ch.handle_frame(service(MessageType::PausePublication, b""), t0)
        .expect("pause");
    assert!(ch.is_paused());
    assert_eq!(ch.poll_event(), Some(ChannelEvent::Paused));
    send(&mut ch, b"b", t0);
    ch.handle_timeout(t0 + Duration::from_secs(5));
    assert!(drain(&mut ch).is_empty());
    // Acks still flow while paused: they are not publication.
    ch.handle_frame(
        service(MessageType::StartPublication, b""),
        t0 + Duration::from_secs(5),
    )
    .expect("start");
    assert_eq!(ch.poll_event(), Some(ChannelEvent::Resumed));
    let frames = drain(&mut ch);
    assert_eq!(seqs_of(&frames, MessageType::InputStreamData), vec![0, 1]);
}

#[test]
fn an_ack_or_data_from_the_peer_ends_a_pause() {
    let (mut ch, t0) = client();
    send(&mut ch, b"a", t0);
    send(&mut ch, b"b", t0);
    drain(&mut ch);
    ch.handle_frame(service(MessageType::PausePublication, b""), t0)
        .expect("pause");
    ch.handle_frame(ack(0), t0 + MS).expect("ack");
    assert!(!ch.is_paused());
    assert_eq!(
        seqs_of(&drain(&mut ch), MessageType::InputStreamData),
        vec![1]
    );
}

#[test]
fn channel_closed_is_reported_even_if_unreadable() {
    let (mut ch, t0) = client();
    ch.handle_frame(
        service(MessageType::ChannelClosed, br#"{"Output":"bye"}"#),
        t0,
    )
    .expect("closed");
    let Some(ChannelEvent::ChannelClosed(closed)) = ch.poll_event() else {
        panic!("expected channel_closed");
    };
    assert_eq!(closed.output, "bye");
    ch.handle_frame(service(MessageType::ChannelClosed, b"not json"), t0)
        .expect("closed");
    assert!(matches!(
        ch.poll_event(),
        Some(ChannelEvent::ChannelClosed(_))
    ));
}

#[test]
fn agent_role_sets_syn_on_its_first_message() {
    let (mut ch, t0) = channel(ChannelConfig {
        role: Role::Agent,
        ..ChannelConfig::default()
    });
    send(&mut ch, b"hello", t0);
    send(&mut ch, b"again", t0);
    let frames = drain(&mut ch);
    assert_eq!(frames[0].message_type, MessageType::OutputStreamData);
    assert_eq!((frames[0].flags, frames[1].flags), (FLAG_SYN, 0));
}

#[test]
fn a_frame_over_the_cap_is_refused_before_it_is_decoded() {
    let (mut ch, t0) = client();
    let at_cap = data_of_len(0, MAX_FRAME_LEN - FRAME_OVERHEAD);
    assert_eq!(at_cap.len(), MAX_FRAME_LEN);
    ch.handle_frame(at_cap, t0)
        .expect("a frame at the cap is fine");
    assert_eq!(delivered(&mut ch).len(), 1);
    let over = data_of_len(1, MAX_FRAME_LEN - FRAME_OVERHEAD + 1);
    assert_eq!(
        ch.handle_frame(over, t0),
        Err(FrameError::TooLarge(MAX_FRAME_LEN + 1))
    );
    // Junk is refused by its size alone, before any parsing.
    assert_eq!(
        ch.handle_frame(Bytes::from(vec![0xff; 10 << 20]), t0),
        Err(FrameError::TooLarge(10 << 20))
    );
    assert_eq!(ch.stats().too_large, 2);
    assert_eq!(ch.expected_sequence_number(), 1);
    assert!(delivered(&mut ch).is_empty());
}

#[test]
fn far_future_numbers_are_dropped_unacked_and_cost_nothing() {
    let (mut ch, t0) = client();
    let window = ChannelConfig::default().max_reorder as i64;
    // A peer floods numbers it will never fill the gap up to.
    for i in 0..50_000 {
        ch.handle_frame(data(window + i, b"junk"), t0 + i as u32 * MS)
            .expect("valid frame");
    }
    assert_eq!(ch.reorder_len(), 0);
    assert_eq!(ch.reorder_bytes(), 0);
    assert_eq!(
        ch.behind_gap(),
        0,
        "nothing to throttle the other direction"
    );
    assert!(acked_seqs(&drain(&mut ch)).is_empty(), "never acknowledged");
    assert_eq!(ch.stats().beyond_window, 50_000);
    // The last number inside the window is kept and acknowledged.
    ch.handle_frame(data(window - 1, b"edge"), t0)
        .expect("valid");
    assert_eq!(acked_seqs(&drain(&mut ch)), vec![window - 1]);
    assert_eq!(ch.reorder_len(), 1);
}

#[test]
fn the_reorder_buffer_is_capped_in_bytes_as_well_as_in_messages() {
    let (mut ch, t0) = channel(ChannelConfig {
        max_reorder_bytes: 10 * (4096 + ENTRY_OVERHEAD),
        ..ChannelConfig::default()
    });
    // Large messages inside the window, all behind the gap at 0.
    for seq in 1..=30 {
        ch.handle_frame(data_of_len(seq, 4096), t0).expect("valid");
    }
    assert_eq!(ch.reorder_len(), 10);
    assert_eq!(ch.reorder_bytes(), 10 * (4096 + ENTRY_OVERHEAD));
    // Only the kept ones are acknowledged: the peer resends the rest.
    assert_eq!(acked_seqs(&drain(&mut ch)), (1..=10).collect::<Vec<_>>());
    assert_eq!(ch.stats().refused, 20);
    // The gap fills: everything kept is delivered, in order, and the buffer is empty.
    ch.handle_frame(data_of_len(0, 4096), t0).expect("valid");
    assert_eq!(delivered(&mut ch).len(), 11);
    assert_eq!(ch.reorder_bytes(), 0);
    ch.handle_frame(data_of_len(11, 4096), t0).expect("resent");
    assert_eq!(delivered(&mut ch).len(), 1);
}

#[test]
fn a_gap_that_never_fills_stops_throttling_after_the_patience() {
    let (mut ch, t0) = client();
    let patience = ChannelConfig::default().gap_patience;
    for seq in 1..=3000 {
        ch.handle_frame(data(seq, b"x"), t0).expect("valid");
    }
    assert_eq!(ch.behind_gap(), 3000);
    // Nothing else is due: the channel still asks to be woken when its patience runs out.
    assert_eq!(ch.poll_timeout(), Some(t0 + patience));
    ch.handle_timeout(t0 + patience - MS);
    assert_eq!(ch.behind_gap(), 3000);
    ch.handle_timeout(t0 + patience);
    assert_eq!(
        ch.behind_gap(),
        0,
        "a gap that never moves holds nothing shut"
    );
    assert_eq!(
        ch.reorder_len(),
        3000,
        "what waits is still kept for delivery"
    );
    assert_eq!(ch.poll_timeout(), None);
    // The gap fills after all: everything is delivered once, in order.
    let t1 = t0 + 2 * patience;
    ch.handle_frame(data(0, b"x"), t1).expect("valid");
    assert_eq!(delivered(&mut ch).len(), 3001);
    // A new gap counts again, with patience counted from when it opened.
    ch.handle_frame(data(3002, b"x"), t1).expect("valid");
    assert_eq!(ch.behind_gap(), 1);
    assert_eq!(ch.poll_timeout(), Some(t1 + patience));
}

#[test]
fn a_gap_that_moves_keeps_throttling() {
    let (mut ch, t0) = client();
    let patience = ChannelConfig::default().gap_patience;
    for seq in 1..=100 {
        ch.handle_frame(data(seq * 2, b"x"), t0).expect("valid");
    }
    // The peer fills one hole (0, 1, 3, 5, …) every second: each time the patience starts
    // over, so the gap keeps throttling for longer than the patience.
    for hole in 0..20i64 {
        let now = t0 + (hole as u32 + 1) * 1000 * MS;
        ch.handle_timeout(now);
        assert!(ch.behind_gap() > 0, "hole {hole}");
        let seq = if hole == 0 { 0 } else { 2 * hole - 1 };
        ch.handle_frame(data(seq, b"x"), now).expect("valid");
        assert_eq!(delivered(&mut ch).len(), if hole == 0 { 1 } else { 2 });
    }
    assert!(patience < Duration::from_secs(20));
    assert!(ch.behind_gap() > 0);
}

#[test]
fn undelivered_messages_are_capped_in_bytes_and_the_buffer_behind_them_drains_as_taken() {
    let (mut ch, t0) = channel(ChannelConfig {
        max_undelivered_bytes: 4 * (1000 + ENTRY_OVERHEAD),
        ..ChannelConfig::default()
    });
    for seq in 1..10 {
        ch.handle_frame(data_of_len(seq, 1000), t0).expect("valid");
    }
    ch.handle_frame(data_of_len(0, 1000), t0).expect("valid");
    // Four fit; the other six stay in the reorder buffer, already acknowledged.
    assert_eq!(ch.undelivered(), (4, 4 * (1000 + ENTRY_OVERHEAD)));
    assert_eq!(ch.reorder_len(), 6);
    assert_eq!(acked_seqs(&drain(&mut ch)).len(), 10);
    // An in-order message meanwhile is refused, unacknowledged.
    let mut seqs = Vec::new();
    while let Some(event) = ch.poll_event() {
        if let ChannelEvent::Message(m) = event {
            seqs.push(m.sequence_number);
        }
        assert!(ch.undelivered().1 <= 4 * (1000 + ENTRY_OVERHEAD));
    }
    assert_eq!(seqs, (0..10).collect::<Vec<_>>(), "once each, in order");
    assert_eq!(ch.reorder_len(), 0);
    assert_eq!(ch.undelivered(), (0, 0));
    // One message is always let through, however large.
    let (mut tiny, t0) = channel(ChannelConfig {
        max_undelivered_bytes: 10,
        ..ChannelConfig::default()
    });
    tiny.handle_frame(data_of_len(0, 1000), t0).expect("valid");
    tiny.handle_frame(data_of_len(1, 1000), t0).expect("valid");
    assert_eq!(tiny.undelivered().0, 1);
    assert_eq!(acked_seqs(&drain(&mut tiny)), vec![0]);
}

#[test]
fn kept_payloads_do_not_pin_the_socket_buffer() {
    let (mut ch, t0) = client();
    // Several frames read into one buffer, as the WebSocket layer does.
    let mut buffer = Vec::new();
    for seq in 0..3 {
        buffer.extend_from_slice(&data_of_len(seq, 100));
    }
    let buffer = Bytes::from(buffer);
    let len = buffer.len() / 3;
    let range = buffer.as_ptr() as usize..buffer.as_ptr() as usize + buffer.len();
    ch.handle_frame(buffer.slice(2 * len..), t0).expect("valid");
    ch.handle_frame(buffer.slice(..len), t0).expect("valid");
    ch.handle_frame(buffer.slice(len..2 * len), t0)
        .expect("valid");
    for payload in delivered(&mut ch) {
        assert!(!range.contains(&(payload.as_ptr() as usize)));
    }
}

#[test]
fn acks_waiting_to_be_written_are_capped() {
    let (mut ch, t0) = channel(ChannelConfig {
        max_queued_ack_bytes: 4096,
        ..ChannelConfig::default()
    });
    // Nobody writes: duplicates keep arriving.
    ch.handle_frame(data(0, b"x"), t0).expect("valid");
    for _ in 0..1000 {
        ch.handle_frame(data(0, b"x"), t0).expect("valid");
        assert!(ch.queued_ack_bytes() <= 4096);
    }
    assert!(ch.stats().acks_dropped > 900);
    let acks = acked_seqs(&drain(&mut ch));
    assert!(!acks.is_empty() && acks.len() < 100);
    assert_eq!(ch.queued_ack_bytes(), 0);
    // Written again, acks are queued again.
    ch.handle_frame(data(0, b"x"), t0).expect("valid");
    assert_eq!(acked_seqs(&drain(&mut ch)), vec![0]);
}

#[test]
fn service_messages_nobody_takes_do_not_pile_up() {
    let (mut ch, t0) = channel(ChannelConfig {
        max_undelivered: 8,
        ..ChannelConfig::default()
    });
    for _ in 0..10_000 {
        ch.handle_frame(service(MessageType::ChannelClosed, b"{}"), t0)
            .expect("closed");
        ch.handle_frame(service(MessageType::PausePublication, b""), t0)
            .expect("pause");
        ch.handle_frame(service(MessageType::StartPublication, b""), t0)
            .expect("start");
    }
    let events: Vec<_> = std::iter::from_fn(|| ch.poll_event()).collect();
    assert!(events.len() <= 9, "{} events kept", events.len());
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, ChannelEvent::ChannelClosed(_)))
            .count(),
        1
    );
}

/// Two channels joined by a lossy, duplicating, reordering link in simulated time: every byte
/// arrives once, in order.
#[test]
fn lossy_link_delivers_everything_exactly_once() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    for seed in 0..20u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let start = Instant::now();
        let mut client = Channel::new(ChannelConfig::default(), start, 1);
        let mut agent = Channel::new(
            ChannelConfig {
                role: Role::Agent,
                ..ChannelConfig::default()
            },
            start,
            1,
        );
        client.on_connected(start);
        agent.on_connected(start);
        // (arrival time, to_agent, frame)
        let mut in_flight: Vec<(Instant, bool, Bytes)> = Vec::new();
        let mut now = start;
        let total = 300usize;
        let (mut sent_c, mut sent_a) = (0usize, 0usize);
        let (mut got_a, mut got_c) = (Vec::new(), Vec::new());
        for _step in 0..200_000 {
            while sent_c < total && client.send_capacity() > 0 {
                let payload = Bytes::from(format!("c{sent_c};"));
                client
                    .send(PayloadType::OUTPUT, payload, now)
                    .expect("capacity");
                sent_c += 1;
            }
            while sent_a < total && agent.send_capacity() > 0 {
                let payload = Bytes::from(format!("a{sent_a};"));
                agent
                    .send(PayloadType::OUTPUT, payload, now)
                    .expect("capacity");
                sent_a += 1;
            }
            for (to_agent, ch) in [(true, &mut client), (false, &mut agent)] {
                while let Some(frame) = ch.poll_transmit() {
                    if rng.random_bool(0.1) {
                        continue; // lost
                    }
                    let copies = if rng.random_bool(0.05) { 2 } else { 1 };
                    for _ in 0..copies {
                        let delay = Duration::from_millis(rng.random_range(1..40));
                        in_flight.push((now + delay, to_agent, frame.clone()));
                    }
                }
            }
            for event in std::iter::from_fn(|| agent.poll_event()) {
                if let ChannelEvent::Message(m) = event {
                    got_a.extend_from_slice(&m.payload);
                }
            }
            for event in std::iter::from_fn(|| client.poll_event()) {
                if let ChannelEvent::Message(m) = event {
                    got_c.extend_from_slice(&m.payload);
                }
            }
            let done =
                sent_c == total && sent_a == total && client.unacked() == 0 && agent.unacked() == 0;
            if done {
                break;
            }
            let next_arrival = in_flight.iter().map(|f| f.0).min();
            let next_timer = [client.poll_timeout(), agent.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            now = match (next_arrival, next_timer) {
                (Some(a), Some(t)) => a.min(t),
                (Some(a), None) => a,
                (None, Some(t)) => t,
                (None, None) => panic!("seed {seed}: stalled with nothing scheduled"),
            };
            client.handle_timeout(now);
            agent.handle_timeout(now);
            let (due, later): (Vec<_>, Vec<_>) = in_flight.into_iter().partition(|f| f.0 <= now);
            in_flight = later;
            for (_, to_agent, frame) in due {
                let target = if to_agent { &mut agent } else { &mut client };
                target.handle_frame(frame, now).expect("valid frames");
            }
        }
        let expect = |prefix: char| {
            (0..total)
                .map(|i| format!("{prefix}{i};"))
                .collect::<String>()
                .into_bytes()
        };
        assert_eq!(got_a, expect('c'), "seed {seed}: client → agent");
        assert_eq!(got_c, expect('a'), "seed {seed}: agent → client");
    }
}
