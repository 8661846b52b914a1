//! The binary `ClientMessage` frame (docs/protocol.md §2): a fixed 120-byte big-endian header
//! followed by the payload. One WebSocket binary message carries exactly one frame.

use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::message_type::{MESSAGE_TYPE_WIDTH, MessageType, MessageTypeError, is_padding};
use super::payload_type::PayloadType;

/// The HeaderLength every writer puts in the first field: the offset of PayloadLength.
pub const HEADER_LENGTH: u32 = 116;
/// Bytes before the payload in a frame this crate writes (header plus the PayloadLength field).
pub const FRAME_OVERHEAD: usize = HEADER_LENGTH as usize + 4;
/// The largest payload either official endpoint puts in one message (`StreamDataPayloadSize`).
pub const MAX_STREAM_PAYLOAD: usize = 1024;

/// Flags bit 0: first message of a stream (the agent sets it on its seq 0).
pub const FLAG_SYN: u64 = 1;
/// Flags bit 1: last message of a stream.
pub const FLAG_FIN: u64 = 2;
/// Flags on acknowledge and session-state messages (SYN | FIN).
pub const FLAGS_CONTROL: u64 = FLAG_SYN | FLAG_FIN;

/// The schema version every known sender writes.
pub const SCHEMA_VERSION: u32 = 1;

// Field offsets (§2.1). PayloadLength sits at HeaderLength, which readers take from the frame.
const TYPE_AT: usize = 4;
const SCHEMA_AT: usize = TYPE_AT + MESSAGE_TYPE_WIDTH;
const CREATED_AT: usize = SCHEMA_AT + 4;
const SEQUENCE_AT: usize = CREATED_AT + 8;
const FLAGS_AT: usize = SEQUENCE_AT + 8;
const ID_AT: usize = FLAGS_AT + 8;
const DIGEST_AT: usize = ID_AT + 16;
const PAYLOAD_TYPE_AT: usize = DIGEST_AT + 32;

/// One SSM data-channel message.
///
/// The payload is a [`Bytes`], so decoding slices the received frame instead of copying it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientMessage {
    /// What kind of message this is.
    pub message_type: MessageType,
    /// Always [`SCHEMA_VERSION`] from known senders.
    pub schema_version: u32,
    /// Milliseconds since the Unix epoch, UTC. Readers reject 0.
    pub created_date: u64,
    /// Position in the sender's per-direction sequence; 0 outside the sequence space.
    pub sequence_number: i64,
    /// Bit field ([`FLAG_SYN`], [`FLAG_FIN`]); nobody reads it on receive.
    pub flags: u64,
    /// Unique id of this message; resends reuse it.
    pub message_id: Uuid,
    /// What the payload holds.
    pub payload_type: PayloadType,
    /// The payload bytes (JSON for control payloads, opaque bytes for data).
    pub payload: Bytes,
}

/// A decoded frame together with the header fields that are derived, not chosen, by a writer.
///
/// Decoding never rejects a frame for its digest: [`digest_valid`](Self::digest_valid) says
/// whether it matched, and the caller decides (the official client skips the check for empty
/// payloads and for `start_publication`/`pause_publication`; the agent never checks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedMessage {
    /// The message.
    pub message: ClientMessage,
    /// The HeaderLength field as received (116 from every known writer).
    pub header_length: u32,
    /// The PayloadLength field as received. Like the official readers, the decoder takes the
    /// payload as everything after the header, so this may disagree with `payload.len()`.
    pub payload_length: u32,
    /// The PayloadDigest field as received.
    pub payload_digest: [u8; 32],
    /// Whether `payload_digest` is the SHA-256 of the payload.
    pub digest_valid: bool,
}

/// Why a frame could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame ends before the header it announces does.
    #[error("frame truncated: {actual} bytes, the header needs {needed}")]
    Truncated {
        /// Bytes the header needs (fixed fields plus PayloadLength).
        needed: usize,
        /// Bytes the frame has.
        actual: usize,
    },
    /// HeaderLength is smaller than the fixed header fields it must cover.
    #[error("bad header length {0}: must be at least 116")]
    BadHeaderLength(u32),
    /// The MessageType field is not UTF-8.
    #[error("message type is not valid UTF-8: {0:?}")]
    MessageTypeNotUtf8(String),
    /// The MessageType field holds nothing but padding.
    #[error("message type is empty")]
    EmptyMessageType,
    /// The payload digest does not match (only from [`DecodedMessage::verified`]).
    #[error("payload digest mismatch: header says {expected}, payload hashes to {actual}")]
    DigestMismatch {
        /// The digest in the header, hex.
        expected: String,
        /// The SHA-256 of the payload, hex.
        actual: String,
    },
}

impl ClientMessage {
    /// Encodes the frame exactly as the official client and agent lay it out (§2.1): HL 116,
    /// the type space-padded, big-endian integers, the MessageId halves swapped, SHA-256 of
    /// the payload, and no trailing bytes.
    ///
    /// # Panics
    /// If the payload is 4 GiB or longer, which no WebSocket peer can send.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(FRAME_OVERHEAD + self.payload.len());
        self.encode_into(&mut buf);
        buf.freeze()
    }

    /// Appends the encoded frame to `buf`; see [`encode`](Self::encode).
    ///
    /// # Panics
    /// If the payload is 4 GiB or longer.
    pub fn encode_into(&self, buf: &mut BytesMut) {
        let payload_length =
            u32::try_from(self.payload.len()).expect("ClientMessage payload must be under 4 GiB");
        buf.reserve(FRAME_OVERHEAD + self.payload.len());
        buf.put_u32(HEADER_LENGTH);
        let name = self.message_type.as_str().as_bytes();
        buf.put_slice(name);
        buf.put_bytes(b' ', MESSAGE_TYPE_WIDTH - name.len());
        buf.put_u32(self.schema_version);
        buf.put_u64(self.created_date);
        buf.put_i64(self.sequence_number);
        buf.put_u64(self.flags);
        put_message_id(buf, &self.message_id);
        buf.put_slice(&Sha256::digest(&self.payload));
        buf.put_u32(self.payload_type.0);
        buf.put_u32(payload_length);
        buf.put_slice(&self.payload);
    }

    /// Decodes one frame, taking the payload as a zero-copy slice of `frame`.
    ///
    /// Follows the official readers: the payload starts at HeaderLength + 4 and runs to the end
    /// of the frame; PayloadLength and the digest are reported, not enforced.
    ///
    /// # Errors
    /// The frame is shorter than its header, HeaderLength is below 116, or the MessageType is
    /// not UTF-8 or is empty.
    pub fn decode(frame: Bytes) -> Result<DecodedMessage, DecodeError> {
        if frame.len() < FRAME_OVERHEAD {
            return Err(DecodeError::Truncated {
                needed: FRAME_OVERHEAD,
                actual: frame.len(),
            });
        }
        let header_length = read_u32(&frame, 0);
        if header_length < HEADER_LENGTH {
            return Err(DecodeError::BadHeaderLength(header_length));
        }
        // `header_length` fits in usize on every platform this runs on; saturate rather than
        // wrap on 16-bit targets so the length check below still fails cleanly.
        let payload_at = usize::try_from(header_length)
            .unwrap_or(usize::MAX)
            .saturating_add(4);
        if frame.len() < payload_at {
            return Err(DecodeError::Truncated {
                needed: payload_at,
                actual: frame.len(),
            });
        }
        let message_type = decode_message_type(&frame[TYPE_AT..SCHEMA_AT])?;
        let mut payload_digest = [0u8; 32];
        payload_digest.copy_from_slice(&frame[DIGEST_AT..PAYLOAD_TYPE_AT]);
        let payload_length = read_u32(&frame, payload_at - 4);
        let payload = frame.slice(payload_at..);
        let digest_valid = Sha256::digest(&payload)[..] == payload_digest[..];
        let message = ClientMessage {
            message_type,
            schema_version: read_u32(&frame, SCHEMA_AT),
            created_date: read_u64(&frame, CREATED_AT),
            sequence_number: read_u64(&frame, SEQUENCE_AT) as i64,
            flags: read_u64(&frame, FLAGS_AT),
            message_id: read_message_id(&frame[ID_AT..DIGEST_AT]),
            payload_type: PayloadType(read_u32(&frame, PAYLOAD_TYPE_AT)),
            payload,
        };
        Ok(DecodedMessage {
            message,
            header_length,
            payload_length,
            payload_digest,
            digest_valid,
        })
    }
}

impl DecodedMessage {
    /// The message, if its digest matched.
    ///
    /// # Errors
    /// [`DecodeError::DigestMismatch`] naming both digests.
    pub fn verified(self) -> Result<ClientMessage, DecodeError> {
        if self.digest_valid {
            Ok(self.message)
        } else {
            Err(DecodeError::DigestMismatch {
                expected: hex::encode(self.payload_digest),
                actual: hex::encode(Sha256::digest(&self.message.payload)),
            })
        }
    }
}

fn decode_message_type(field: &[u8]) -> Result<MessageType, DecodeError> {
    let text = std::str::from_utf8(field).map_err(|_| {
        DecodeError::MessageTypeNotUtf8(String::from_utf8_lossy(field).into_owned())
    })?;
    match MessageType::parse(text.trim_matches(is_padding)) {
        Ok(message_type) => Ok(message_type),
        Err(MessageTypeError::Empty) => Err(DecodeError::EmptyMessageType),
        // The trimmed field is at most 32 bytes and has no edge padding, so nothing else fails.
        Err(MessageTypeError::TooLong(_) | MessageTypeError::Padded(_)) => {
            Err(DecodeError::EmptyMessageType)
        }
    }
}

/// Writes the UUID Java-style: least-significant 8 bytes first, then the most-significant (§2.2).
fn put_message_id(buf: &mut BytesMut, id: &Uuid) {
    let bytes = id.as_bytes();
    buf.put_slice(&bytes[8..16]);
    buf.put_slice(&bytes[0..8]);
}

fn read_message_id(field: &[u8]) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes[0..8].copy_from_slice(&field[8..16]);
    bytes[8..16].copy_from_slice(&field[0..8]);
    Uuid::from_bytes(bytes)
}

fn read_u32(frame: &[u8], at: usize) -> u32 {
    let mut field = [0u8; 4];
    field.copy_from_slice(&frame[at..at + 4]);
    u32::from_be_bytes(field)
}

fn read_u64(frame: &[u8], at: usize) -> u64 {
    let mut field = [0u8; 8];
    field.copy_from_slice(&frame[at..at + 8]);
    u64::from_be_bytes(field)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/protocol.md §2.3, byte for byte.
    const WORKED_EXAMPLE: &str = concat!(
        "00000074696e7075745f73747265616d",
        "5f646174612020202020202020202020",
        "20202020000000010000015e0baa7884",
        "00000000000000020000000000000000",
        "a508b5f073f31b16dd01e56bff48483e",
        "239f59ed55e737c77147cf55ad0c1b03",
        "0b6d7ee748a7426952f9b852d5a935e5",
        "00000001000000077061796c6f6164",
    );

    fn worked_example_message() -> ClientMessage {
        ClientMessage {
            message_type: MessageType::InputStreamData,
            schema_version: 1,
            created_date: 1_503_434_274_948,
            sequence_number: 2,
            flags: 0,
            message_id: Uuid::parse_str("dd01e56b-ff48-483e-a508-b5f073f31b16").expect("uuid"),
            payload_type: PayloadType::OUTPUT,
            payload: Bytes::from_static(b"payload"),
        }
    }

    #[test]
    fn encodes_the_worked_example_byte_for_byte() {
        let encoded = worked_example_message().encode();
        assert_eq!(encoded.len(), 127);
        assert_eq!(hex::encode(&encoded), WORKED_EXAMPLE);
    }

    #[test]
    fn decodes_the_worked_example() {
        let frame = Bytes::from(hex::decode(WORKED_EXAMPLE).expect("hex"));
        let decoded = ClientMessage::decode(frame).expect("decodes");
        assert_eq!(decoded.header_length, 116);
        assert_eq!(decoded.payload_length, 7);
        assert!(decoded.digest_valid);
        assert_eq!(
            hex::encode(decoded.payload_digest),
            "239f59ed55e737c77147cf55ad0c1b030b6d7ee748a7426952f9b852d5a935e5"
        );
        assert_eq!(
            decoded.verified().expect("digest ok"),
            worked_example_message()
        );
    }

    #[test]
    fn digest_mismatch_is_reported_not_fatal() {
        let mut frame = hex::decode(WORKED_EXAMPLE).expect("hex");
        let last = frame.len() - 1;
        frame[last] ^= 0x01;
        let decoded = ClientMessage::decode(Bytes::from(frame)).expect("still decodes");
        assert!(!decoded.digest_valid);
        assert_eq!(decoded.message.payload.as_ref(), b"payloae");
        let err = decoded.verified().expect_err("mismatch");
        assert!(matches!(err, DecodeError::DigestMismatch { .. }), "{err}");
    }

    #[test]
    fn truncated_and_bad_header_length_are_typed_errors() {
        let frame = hex::decode(WORKED_EXAMPLE).expect("hex");
        assert_eq!(
            ClientMessage::decode(Bytes::copy_from_slice(&frame[..119])),
            Err(DecodeError::Truncated {
                needed: 120,
                actual: 119
            })
        );
        let mut short_header = frame.clone();
        short_header[3] = 100;
        assert_eq!(
            ClientMessage::decode(Bytes::from(short_header)),
            Err(DecodeError::BadHeaderLength(100))
        );
        let mut long_header = frame.clone();
        long_header[3] = 200;
        assert_eq!(
            ClientMessage::decode(Bytes::from(long_header)),
            Err(DecodeError::Truncated {
                needed: 204,
                actual: 127
            })
        );
    }

    #[test]
    fn larger_header_length_moves_the_payload_like_the_official_readers() {
        // A writer with HL 120 would put 4 extra header bytes before PayloadLength.
        let mut frame = hex::decode(WORKED_EXAMPLE).expect("hex");
        frame[3] = 120;
        frame.splice(116..116, [0xaa, 0xbb, 0xcc, 0xdd]);
        let decoded = ClientMessage::decode(Bytes::from(frame)).expect("decodes");
        assert_eq!(decoded.header_length, 120);
        assert_eq!(decoded.payload_length, 7);
        assert_eq!(decoded.message.payload.as_ref(), b"payload");
        assert!(decoded.digest_valid);
    }

    #[test]
    fn message_type_padding_is_stripped_and_bad_types_rejected() {
        let mut frame = hex::decode(WORKED_EXAMPLE).expect("hex");
        // NUL padding, as a sloppy writer might use, reads the same.
        for b in &mut frame[4 + 17..36] {
            *b = 0;
        }
        let decoded = ClientMessage::decode(Bytes::from(frame.clone())).expect("decodes");
        assert_eq!(decoded.message.message_type, MessageType::InputStreamData);

        for b in &mut frame[4..36] {
            *b = b' ';
        }
        assert_eq!(
            ClientMessage::decode(Bytes::from(frame.clone())),
            Err(DecodeError::EmptyMessageType)
        );
        frame[4] = 0xff;
        assert!(matches!(
            ClientMessage::decode(Bytes::from(frame)),
            Err(DecodeError::MessageTypeNotUtf8(_))
        ));
    }

    #[test]
    fn negative_sequence_numbers_survive() {
        let mut message = worked_example_message();
        message.sequence_number = -5;
        let decoded = ClientMessage::decode(message.encode()).expect("decodes");
        assert_eq!(decoded.message.sequence_number, -5);
    }
}
