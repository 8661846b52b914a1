//! Property tests: codecs round-trip, never panic on arbitrary input, and the smux decoder is
//! indifferent to how the byte stream is chunked.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use ssm_tether_protocol::payload::{
    AcknowledgeContent, AgentSessionState, ChannelClosed, Flag, HandshakeComplete,
    HandshakeRequest, HandshakeResponse, OpenDataChannel,
};
use ssm_tether_protocol::smux::{Command, Frame, FrameDecoder};
use ssm_tether_protocol::{ClientMessage, MessageType, PayloadType};
use uuid::Uuid;

fn message_type() -> impl Strategy<Value = MessageType> {
    prop_oneof![
        Just(MessageType::InputStreamData),
        Just(MessageType::OutputStreamData),
        Just(MessageType::Acknowledge),
        Just(MessageType::ChannelClosed),
        Just(MessageType::StartPublication),
        Just(MessageType::PausePublication),
        Just(MessageType::AgentSessionState),
        "[a-z_][a-z_ ]{0,30}[a-z_]".prop_map(|name| MessageType::parse(&name).expect("valid")),
    ]
}

prop_compose! {
    fn client_message()(
        message_type in message_type(),
        schema_version in any::<u32>(),
        created_date in any::<u64>(),
        sequence_number in any::<i64>(),
        flags in any::<u64>(),
        id in any::<u128>(),
        payload_type in any::<u32>(),
        payload in proptest::collection::vec(any::<u8>(), 0..2048),
    ) -> ClientMessage {
        ClientMessage {
            message_type,
            schema_version,
            created_date,
            sequence_number,
            flags,
            message_id: Uuid::from_u128(id),
            payload_type: PayloadType(payload_type),
            payload: Bytes::from(payload),
        }
    }
}

fn smux_frame() -> impl Strategy<Value = Frame> {
    (
        0u8..4,
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(command, stream_id, data)| match command {
            0 => Frame::syn(stream_id),
            1 => Frame::fin(stream_id),
            2 => Frame::psh(stream_id, Bytes::from(data)).expect("under 64 KiB"),
            _ => Frame {
                command: Command::Nop,
                stream_id,
                data: Bytes::new(),
            },
        })
}

proptest! {
    #[test]
    fn client_message_round_trips(message in client_message()) {
        let frame = message.encode();
        prop_assert_eq!(frame.len(), 120 + message.payload.len());
        let decoded = ClientMessage::decode(frame).expect("own frames decode");
        prop_assert_eq!(decoded.header_length, 116);
        prop_assert_eq!(decoded.payload_length as usize, message.payload.len());
        prop_assert!(decoded.digest_valid);
        prop_assert_eq!(decoded.message, message);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = ClientMessage::decode(Bytes::from(bytes));
    }

    #[test]
    fn decoding_corrupted_frames_never_panics(
        message in client_message(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut frame = message.encode().to_vec();
        for (at, value) in flips {
            let i = at.index(frame.len());
            frame[i] = value;
        }
        frame.truncate(cut.index(frame.len() + 1));
        if let Ok(decoded) = ClientMessage::decode(Bytes::from(frame)) {
            // Whatever decodes must re-encode without panicking.
            let _ = decoded.message.encode();
        }
    }

    #[test]
    fn smux_decoding_ignores_chunk_boundaries(
        frames in proptest::collection::vec(smux_frame(), 0..40),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..60),
    ) {
        let mut stream = BytesMut::new();
        for frame in &frames {
            frame.encode_into(&mut stream);
        }
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        let mut decoder = FrameDecoder::new();
        let mut decoded = Vec::new();
        for pair in points.windows(2) {
            decoder.push(&stream[pair[0]..pair[1]]);
            while let Some(frame) = decoder.next_frame().expect("valid stream") {
                decoded.push(frame);
            }
        }
        prop_assert_eq!(decoded, frames);
        prop_assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn smux_decoding_arbitrary_bytes_never_panics(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16),
    ) {
        let mut decoder = FrameDecoder::new();
        for chunk in chunks {
            decoder.push(&chunk);
            while let Ok(Some(_)) = decoder.next_frame() {}
        }
    }

    #[test]
    fn payload_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = AcknowledgeContent::from_payload(&bytes);
        let _ = HandshakeRequest::from_payload(&bytes).map(|r| r.session_type());
        let _ = HandshakeResponse::from_payload(&bytes);
        let _ = HandshakeComplete::from_payload(&bytes);
        let _ = ChannelClosed::from_payload(&bytes);
        let _ = AgentSessionState::from_payload(&bytes);
        let _ = Flag::from_payload(&bytes);
        let _ = OpenDataChannel::from_json(&String::from_utf8_lossy(&bytes));
    }
}
