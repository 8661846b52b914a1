//! The `acknowledge` payload (docs/protocol.md §4.3).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{PayloadError, from_json, to_json};
use crate::message::{ClientMessage, FLAGS_CONTROL, SCHEMA_VERSION};
use crate::{MessageType, PayloadType};

/// Acknowledges one stream-data message. Receivers match acks by sequence number only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcknowledgeContent {
    /// The type of the acknowledged message, copied from it.
    #[serde(rename = "AcknowledgedMessageType")]
    pub message_type: String,
    /// The id of the acknowledged message, lowercase hyphenated.
    #[serde(rename = "AcknowledgedMessageId")]
    pub message_id: String,
    /// The sequence number being acknowledged.
    #[serde(rename = "AcknowledgedMessageSequenceNumber")]
    pub sequence_number: i64,
    /// Always true from known senders.
    #[serde(rename = "IsSequentialMessage")]
    pub is_sequential: bool,
}

impl AcknowledgeContent {
    /// The acknowledgement of `message`.
    pub fn for_message(message: &ClientMessage) -> Self {
        Self {
            message_type: message.message_type.as_str().to_owned(),
            message_id: message.message_id.hyphenated().to_string(),
            sequence_number: message.sequence_number,
            is_sequential: true,
        }
    }

    /// Reads an acknowledge payload.
    ///
    /// # Errors
    /// The payload is not the acknowledge JSON object.
    pub fn from_payload(payload: &[u8]) -> Result<Self, PayloadError> {
        from_json("acknowledge", payload)
    }

    /// The JSON payload, fields in the order Go marshals them.
    pub fn to_payload(&self) -> Bytes {
        to_json(self)
    }

    /// The `acknowledge` message carrying this content: seq 0, flags 3, payload type 0 (§2.4).
    pub fn into_message(self, created_date: u64, message_id: Uuid) -> ClientMessage {
        ClientMessage {
            message_type: MessageType::Acknowledge,
            schema_version: SCHEMA_VERSION,
            created_date,
            sequence_number: 0,
            flags: FLAGS_CONTROL,
            message_id,
            payload_type: PayloadType::UNSPECIFIED,
            payload: self.to_payload(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_matches_the_wire_field_order() {
        let ack = AcknowledgeContent {
            message_type: "output_stream_data".into(),
            message_id: "dd01e56b-ff48-483e-a508-b5f073f31b16".into(),
            sequence_number: 5,
            is_sequential: true,
        };
        assert_eq!(
            std::str::from_utf8(&ack.to_payload()).expect("utf8"),
            r#"{"AcknowledgedMessageType":"output_stream_data","AcknowledgedMessageId":"dd01e56b-ff48-483e-a508-b5f073f31b16","AcknowledgedMessageSequenceNumber":5,"IsSequentialMessage":true}"#
        );
        assert_eq!(
            AcknowledgeContent::from_payload(&ack.to_payload()).expect("parses"),
            ack
        );
    }

    #[test]
    fn ack_message_has_control_header_values() {
        let data = ClientMessage {
            message_type: MessageType::OutputStreamData,
            schema_version: 1,
            created_date: 7,
            sequence_number: 9,
            flags: 0,
            message_id: Uuid::from_u128(0x0102),
            payload_type: PayloadType::OUTPUT,
            payload: Bytes::from_static(b"x"),
        };
        let ack = AcknowledgeContent::for_message(&data).into_message(8, Uuid::from_u128(3));
        assert_eq!(ack.message_type, MessageType::Acknowledge);
        assert_eq!(
            (ack.sequence_number, ack.flags, ack.payload_type),
            (0, 3, PayloadType(0))
        );
        let content = AcknowledgeContent::from_payload(&ack.payload).expect("parses");
        assert_eq!(content.sequence_number, 9);
        assert_eq!(content.message_id, "00000000-0000-0000-0000-000000000102");
    }
}
