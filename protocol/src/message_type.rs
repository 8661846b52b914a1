//! The `MessageType` header field: a short ASCII name, space-padded to 32 bytes on the wire.

use std::fmt;
use std::str::FromStr;

/// Width of the MessageType field on the wire (docs/protocol.md §2.1).
pub const MESSAGE_TYPE_WIDTH: usize = 32;

/// The kind of a [`ClientMessage`](super::ClientMessage), from its 32-byte header field.
///
/// Known names get their own variant; any other name is kept verbatim in [`MessageType::Other`]
/// so that a frame from a newer service is still decoded, logged and re-encoded unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// `input_stream_data`: sequenced data from the client to the agent.
    InputStreamData,
    /// `output_stream_data`: sequenced data from the agent to the client.
    OutputStreamData,
    /// `acknowledge`: acknowledges one stream-data message by sequence number.
    Acknowledge,
    /// `channel_closed`: the service ends the session.
    ChannelClosed,
    /// `start_publication`: the service says the peer is back; sending may resume.
    StartPublication,
    /// `pause_publication`: the service says the peer is away; stop sending, keep buffering.
    PausePublication,
    /// `agent_session_state`: the agent reports its session state to the service.
    AgentSessionState,
    /// Any other name, kept as received.
    Other(OtherMessageType),
}

/// A message type name that is not one of the known ones.
///
/// It can only be built through [`MessageType::parse`], which guarantees that it fits the
/// 32-byte field and survives an encode/decode round trip unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OtherMessageType(String);

impl OtherMessageType {
    /// The name as it appears on the wire, without padding.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a string cannot be a message type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageTypeError {
    /// The name is empty (after stripping padding).
    #[error("message type is empty")]
    Empty,
    /// The name is longer than the 32-byte header field.
    #[error("message type is {0} bytes long; the header field holds at most 32")]
    TooLong(usize),
    /// The name starts or ends with whitespace or NUL, which readers strip as padding.
    #[error("message type {0:?} starts or ends with whitespace or NUL")]
    Padded(String),
}

impl MessageType {
    /// The name as written on the wire, without padding.
    pub fn as_str(&self) -> &str {
        match self {
            Self::InputStreamData => "input_stream_data",
            Self::OutputStreamData => "output_stream_data",
            Self::Acknowledge => "acknowledge",
            Self::ChannelClosed => "channel_closed",
            Self::StartPublication => "start_publication",
            Self::PausePublication => "pause_publication",
            Self::AgentSessionState => "agent_session_state",
            Self::Other(other) => other.as_str(),
        }
    }

    /// Parses a message type name.
    ///
    /// # Errors
    /// The name is empty, longer than 32 bytes, or has leading/trailing whitespace or NUL
    /// (which a reader would strip, so it could not round-trip).
    pub fn parse(name: &str) -> Result<Self, MessageTypeError> {
        Ok(match name {
            "input_stream_data" => Self::InputStreamData,
            "output_stream_data" => Self::OutputStreamData,
            "acknowledge" => Self::Acknowledge,
            "channel_closed" => Self::ChannelClosed,
            "start_publication" => Self::StartPublication,
            "pause_publication" => Self::PausePublication,
            "agent_session_state" => Self::AgentSessionState,
            "" => return Err(MessageTypeError::Empty),
            other if other.len() > MESSAGE_TYPE_WIDTH => {
                return Err(MessageTypeError::TooLong(other.len()));
            }
            other if other.trim_matches(is_padding) != other => {
                return Err(MessageTypeError::Padded(other.to_owned()));
            }
            other => Self::Other(OtherMessageType(other.to_owned())),
        })
    }

    /// Whether messages of this type are sequenced, buffered and acknowledged (docs/protocol.md §4.4).
    pub fn is_stream_data(&self) -> bool {
        matches!(self, Self::InputStreamData | Self::OutputStreamData)
    }
}

/// What readers strip from both ends of the field: NUL first, then whitespace (§2.1). Stripping
/// both in one pass is equivalent because neither set is produced by stripping the other.
pub(crate) fn is_padding(c: char) -> bool {
    c == '\0' || c.is_whitespace()
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MessageType {
    type Err = MessageTypeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for MessageType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for MessageType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_round_trip() {
        for name in [
            "input_stream_data",
            "output_stream_data",
            "acknowledge",
            "channel_closed",
            "start_publication",
            "pause_publication",
            "agent_session_state",
        ] {
            let parsed = MessageType::parse(name).expect("known name");
            assert!(!matches!(parsed, MessageType::Other(_)), "{name}");
            assert_eq!(parsed.as_str(), name);
        }
    }

    #[test]
    fn unknown_names_are_kept() {
        let parsed = MessageType::parse("interactive_shell").expect("valid");
        assert_eq!(parsed.as_str(), "interactive_shell");
        assert!(matches!(parsed, MessageType::Other(_)));
    }

    #[test]
    fn names_that_cannot_round_trip_are_rejected() {
        assert_eq!(MessageType::parse(""), Err(MessageTypeError::Empty));
        assert_eq!(
            MessageType::parse(&"x".repeat(33)),
            Err(MessageTypeError::TooLong(33))
        );
        assert!(matches!(
            MessageType::parse(" x"),
            Err(MessageTypeError::Padded(_))
        ));
        assert!(matches!(
            MessageType::parse("x\0"),
            Err(MessageTypeError::Padded(_))
        ));
        assert!(MessageType::parse(&"x".repeat(32)).is_ok());
    }
}
