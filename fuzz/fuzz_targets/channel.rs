//! The reliable channel's frame input: arbitrary frames — raw bytes, well-formed data at any
//! sequence number and size, acks, service messages — interleaved with time steps, local
//! sends, socket changes and a consumer that may lag. The channel never panics, delivers every
//! sequence number at most once and in order, and stays within its byte caps.
//!
//! The channel is sans-IO and needs only the codec, so its source is compiled in directly:
//! depending on the runtime crate would drag its whole dependency tree (AWS SDK, wasmtime)
//! under the sanitizer.
#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ssm_tether_protocol::message::FLAGS_CONTROL;
use ssm_tether_protocol::payload::AcknowledgeContent;
use ssm_tether_protocol::{ClientMessage, MessageType, PayloadType};

// `crate::protocol` is how the channel's source names the codec.
use ssm_tether_protocol as protocol;

#[allow(dead_code, unreachable_pub)]
#[path = "../../runtime/src/channel/mod.rs"]
mod channel;

use channel::{Channel, ChannelConfig, ChannelEvent, ENTRY_OVERHEAD, MAX_FRAME_LEN};

/// Reads the fuzzer's bytes as a sequence of small numbers.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.byte()?, self.byte()?]))
    }

    fn bytes(&mut self, len: usize) -> &[u8] {
        let (taken, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        taken
    }
}

fn message(
    message_type: MessageType,
    seq: i64,
    payload_type: PayloadType,
    payload: Bytes,
) -> Bytes {
    ClientMessage {
        message_type,
        schema_version: 1,
        created_date: 1,
        sequence_number: seq,
        flags: 0,
        message_id: uuid::Uuid::from_u128(seq as u128),
        payload_type,
        payload,
    }
    .encode()
}

fn service(message_type: MessageType, payload: &'static [u8]) -> Bytes {
    ClientMessage {
        message_type,
        schema_version: 1,
        created_date: 1,
        sequence_number: 0,
        flags: FLAGS_CONTROL,
        message_id: uuid::Uuid::nil(),
        payload_type: PayloadType::UNSPECIFIED,
        payload: Bytes::from_static(payload),
    }
    .encode()
}

/// Limits small enough for short inputs to reach them, or the defaults.
fn config(choice: u8) -> ChannelConfig {
    let defaults = ChannelConfig::default();
    if choice & 1 == 0 {
        return defaults;
    }
    ChannelConfig {
        max_unacked: 8,
        max_reorder: 64,
        max_reorder_bytes: 8 * 1024,
        max_undelivered: 8,
        max_undelivered_bytes: 4 * 1024,
        max_queued_ack_bytes: 2 * 1024,
        gap_patience: Duration::from_millis(500),
        ..defaults
    }
}

fn check(channel: &Channel) {
    let config = channel.config();
    assert!(channel.reorder_bytes() <= config.max_reorder_bytes);
    assert!(channel.reorder_len() < config.max_reorder.max(1));
    let (undelivered, undelivered_bytes) = channel.undelivered();
    assert!(undelivered <= config.max_undelivered.max(1));
    // One message always fits, whatever its size (a frame is at most MAX_FRAME_LEN).
    assert!(
        undelivered_bytes <= config.max_undelivered_bytes
            || (undelivered == 1 && undelivered_bytes <= MAX_FRAME_LEN + ENTRY_OVERHEAD)
    );
    assert!(channel.queued_ack_bytes() <= config.max_queued_ack_bytes);
    assert!(channel.behind_gap() <= channel.reorder_len());
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Some(choice) = input.byte() else { return };
    let start = Instant::now();
    let mut now = start;
    let mut channel = Channel::new(config(choice), now, 1_700_000_000_000);
    channel.on_connected(now);
    let window = channel.config().max_reorder as i64;
    let mut next_delivered = 0i64;
    let mut take = |channel: &mut Channel, n: u8| {
        for _ in 0..n {
            let Some(event) = channel.poll_event() else {
                break;
            };
            if let ChannelEvent::Message(message) = event {
                assert_eq!(
                    message.sequence_number, next_delivered,
                    "out of order or twice"
                );
                next_delivered += 1;
            }
        }
    };
    while let Some(op) = input.byte() {
        match op % 12 {
            // Raw bytes, mostly undecodable.
            0 => {
                let len = usize::from(input.u16().unwrap_or(0));
                let raw = Bytes::copy_from_slice(input.bytes(len));
                let _ = channel.handle_frame(raw, now);
            }
            // Well-formed data near the next expected number (before, inside or just beyond
            // the window).
            1..=3 => {
                let offset = i64::from(input.u16().unwrap_or(0) as i16);
                let seq = channel.expected_sequence_number() + offset * window / 256;
                let len = usize::from(input.u16().unwrap_or(0)) % 2048;
                let payload = Bytes::from(vec![op; len]);
                let frame = message(
                    MessageType::OutputStreamData,
                    seq,
                    PayloadType::OUTPUT,
                    payload,
                );
                let _ = channel.handle_frame(frame, now);
            }
            // Data anywhere in the sequence space.
            4 => {
                let mut seq = [0u8; 8];
                let taken = input.bytes(8);
                seq[..taken.len()].copy_from_slice(taken);
                let frame = message(
                    MessageType::OutputStreamData,
                    i64::from_be_bytes(seq),
                    PayloadType::OUTPUT,
                    Bytes::from_static(b"far"),
                );
                let _ = channel.handle_frame(frame, now);
            }
            // An ack for one of ours, or for anything.
            5 => {
                let seq = i64::from(input.u16().unwrap_or(0)) - 8;
                let ack = AcknowledgeContent {
                    message_type: "input_stream_data".into(),
                    message_id: uuid::Uuid::nil().to_string(),
                    sequence_number: seq,
                    is_sequential: true,
                }
                .into_message(1, uuid::Uuid::nil())
                .encode();
                let _ = channel.handle_frame(ack, now);
            }
            // Service messages.
            6 => {
                let kind = match input.byte().unwrap_or(0) % 4 {
                    0 => MessageType::PausePublication,
                    1 => MessageType::StartPublication,
                    2 => MessageType::ChannelClosed,
                    _ => MessageType::AgentSessionState,
                };
                let _ = channel.handle_frame(service(kind, b"{}"), now);
            }
            // A frame over the cap.
            7 => {
                let extra = usize::from(input.byte().unwrap_or(0)) + 1;
                let frame = Bytes::from(vec![0; MAX_FRAME_LEN + extra]);
                assert!(channel.handle_frame(frame, now).is_err());
            }
            // Time passes.
            8 => {
                let step = Duration::from_millis(u64::from(input.u16().unwrap_or(0)));
                now += step;
                if input.byte().unwrap_or(0) & 1 == 0
                    && let Some(at) = channel.poll_timeout()
                {
                    now = now.max(at);
                }
                channel.handle_timeout(now);
            }
            // Local data.
            9 => {
                let len = usize::from(input.u16().unwrap_or(0)) % 1100;
                let _ = channel.send(PayloadType::OUTPUT, Bytes::from(vec![1; len]), now);
            }
            // The consumer takes some events; the socket writer takes some frames.
            10 => {
                let n = input.byte().unwrap_or(0);
                take(&mut channel, n);
                for _ in 0..input.byte().unwrap_or(0) {
                    if channel.poll_transmit().is_none() {
                        break;
                    }
                }
            }
            // The socket goes, or comes back.
            _ => {
                if channel.is_connected() {
                    channel.on_disconnected();
                } else {
                    channel.on_connected(now);
                }
            }
        }
        check(&channel);
    }
    take(&mut channel, u8::MAX);
});
