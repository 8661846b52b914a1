//! Service and agent status payloads: `channel_closed` and `agent_session_state`
//! (docs/protocol.md §3.1, §5).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{PayloadError, from_json, string_enum, to_json};

/// The payload of a `channel_closed` message: the service ended the session.
///
/// Only the parsed fields are known from the official client; every field defaults when
/// absent so that a differently shaped service message still ends the session cleanly.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChannelClosed {
    /// Id of this service message.
    #[serde(rename = "MessageId")]
    pub message_id: String,
    /// Epoch milliseconds, as a decimal string.
    #[serde(rename = "CreatedDate")]
    pub created_date: String,
    /// The receiving party.
    #[serde(rename = "DestinationId")]
    pub destination_id: String,
    /// The session that ended.
    #[serde(rename = "SessionId")]
    pub session_id: String,
    /// `channel_closed`.
    #[serde(rename = "MessageType")]
    pub message_type: String,
    /// Schema version, an integer.
    #[serde(rename = "SchemaVersion")]
    pub schema_version: i64,
    /// Text the official client prints before exiting.
    #[serde(rename = "Output")]
    pub output: String,
}

impl ChannelClosed {
    /// Reads a `channel_closed` payload.
    ///
    /// # Errors
    /// The payload is not a JSON object of the expected field types.
    pub fn from_payload(payload: &[u8]) -> Result<Self, PayloadError> {
        from_json("channel_closed", payload)
    }

    /// The JSON payload.
    pub fn to_payload(&self) -> Bytes {
        to_json(self)
    }
}

string_enum! {
    /// The session state an agent reports.
    SessionState {
        /// `Connected`: the agent's data channel is open.
        Connected = "Connected",
        /// `Terminating`: the agent is ending the session.
        Terminating = "Terminating",
    }
}

/// The payload of an `agent_session_state` message (agent → service; seq 0, flags 3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSessionState {
    /// Always 1.
    #[serde(rename = "SchemaVersion")]
    pub schema_version: i64,
    /// The reported state.
    #[serde(rename = "SessionState")]
    pub session_state: SessionState,
    /// The session.
    #[serde(rename = "SessionId")]
    pub session_id: String,
}

impl AgentSessionState {
    /// Reads an `agent_session_state` payload.
    ///
    /// # Errors
    /// The payload is not the session-state JSON object.
    pub fn from_payload(payload: &[u8]) -> Result<Self, PayloadError> {
        from_json("agent_session_state", payload)
    }

    /// The JSON payload.
    pub fn to_payload(&self) -> Bytes {
        to_json(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_state_matches_the_agent() {
        let state = AgentSessionState {
            schema_version: 1,
            session_state: SessionState::Connected,
            session_id: "user-0123".into(),
        };
        let json = r#"{"SchemaVersion":1,"SessionState":"Connected","SessionId":"user-0123"}"#;
        assert_eq!(state.to_payload().as_ref(), json.as_bytes());
        assert_eq!(
            AgentSessionState::from_payload(json.as_bytes()).expect("parses"),
            state
        );
    }

    #[test]
    fn channel_closed_round_trips_and_tolerates_missing_fields() {
        let closed = ChannelClosed {
            message_id: "m".into(),
            created_date: "1503434274948".into(),
            destination_id: "d".into(),
            session_id: "s".into(),
            message_type: "channel_closed".into(),
            schema_version: 1,
            output: "Session terminated".into(),
        };
        let json = r#"{"MessageId":"m","CreatedDate":"1503434274948","DestinationId":"d","SessionId":"s","MessageType":"channel_closed","SchemaVersion":1,"Output":"Session terminated"}"#;
        assert_eq!(closed.to_payload().as_ref(), json.as_bytes());
        assert_eq!(
            ChannelClosed::from_payload(json.as_bytes()).expect("parses"),
            closed
        );
        let sparse = ChannelClosed::from_payload(br#"{"Output":"bye"}"#).expect("parses");
        assert_eq!(sparse.output, "bye");
        assert!(ChannelClosed::from_payload(br#""closed""#).is_err());
    }
}
