//! Handshake payloads (docs/protocol.md §5): HandshakeRequest (agent → client, PayloadType 5),
//! HandshakeResponse (client → agent, 6) and HandshakeComplete (agent → client, 7).

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{PayloadError, from_json, string_enum, to_json};

string_enum! {
    /// What a requested or processed client action is about.
    ActionType {
        /// `SessionType`: tells the client which session plugin to run.
        SessionType = "SessionType",
        /// `KMSEncryption`: asks the client to set up KMS encryption (never for port sessions).
        KmsEncryption = "KMSEncryption",
    }
}

/// The agent's opening message: its version and the actions the client must perform.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HandshakeRequest {
    /// The agent version, four numeric components (e.g. `3.3.987.0`).
    #[serde(rename = "AgentVersion")]
    pub agent_version: String,
    /// What the client must do; for port sessions one `SessionType` action.
    #[serde(rename = "RequestedClientActions")]
    pub requested_client_actions: Vec<RequestedClientAction>,
}

/// One action the agent asks the client to perform.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestedClientAction {
    /// The kind of action.
    #[serde(rename = "ActionType")]
    pub action_type: ActionType,
    /// Its parameters.
    #[serde(rename = "ActionParameters")]
    pub action_parameters: ActionParameters,
}

/// The parameters of a requested action.
///
/// The agent marshals a Go struct here, so a `SessionType` request keeps its field order
/// (`SessionType`, then `Properties`) instead of being re-sorted like a JSON map.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ActionParameters {
    /// The parameters of a `SessionType` action.
    SessionType(SessionTypeRequest),
    /// Any other parameters, kept as JSON.
    Other(Value),
}

/// The parameters of a `SessionType` action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionTypeRequest {
    /// `Port`, `Standard_Stream`, `InteractiveCommands` or `NonInteractiveCommands`.
    #[serde(rename = "SessionType")]
    pub session_type: String,
    /// The session document's `properties` after parameter substitution. Kept sorted because
    /// Go marshals map keys alphabetically. Shell sessions send `null`, read as empty.
    #[serde(rename = "Properties", deserialize_with = "null_as_empty")]
    pub properties: BTreeMap<String, Value>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, Value>, D::Error> {
    Ok(Option::<BTreeMap<String, Value>>::deserialize(deserializer)?.unwrap_or_default())
}

/// The client's answer to a [`HandshakeRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HandshakeResponse {
    /// The client's version; the agent picks mux mode and smux keepalive from it (§6.1).
    #[serde(rename = "ClientVersion")]
    pub client_version: String,
    /// One entry per requested action.
    #[serde(rename = "ProcessedClientActions")]
    pub processed_client_actions: Vec<ProcessedClientAction>,
    /// Errors, `null` when there are none (as Go marshals a nil slice).
    #[serde(rename = "Errors")]
    pub errors: Option<Vec<String>>,
}

/// The outcome of one requested action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessedClientAction {
    /// The action this answers.
    #[serde(rename = "ActionType")]
    pub action_type: ActionType,
    /// 1 success, 2 failed, 3 unsupported; the agent fails the handshake on anything but 1.
    #[serde(rename = "ActionStatus")]
    pub action_status: ActionStatus,
    /// Action-specific result; `null` for `SessionType`.
    #[serde(rename = "ActionResult")]
    pub action_result: Value,
    /// Error text, empty on success.
    #[serde(rename = "Error")]
    pub error: String,
}

/// The status of a processed client action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ActionStatus(pub i32);

impl ActionStatus {
    /// 1: the action was performed.
    pub const SUCCESS: Self = Self(1);
    /// 2: the action failed.
    pub const FAILED: Self = Self(2);
    /// 3: the client does not support the action.
    pub const UNSUPPORTED: Self = Self(3);
}

/// The agent's confirmation that the handshake is over; data may flow after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeComplete {
    /// How long the handshake took, in nanoseconds (a Go `time.Duration`).
    #[serde(rename = "HandshakeTimeToComplete")]
    pub handshake_time_to_complete: i64,
    /// Text for the user; empty for port sessions.
    #[serde(rename = "CustomerMessage")]
    pub customer_message: String,
}

impl HandshakeRequest {
    /// Reads a HandshakeRequest payload.
    ///
    /// # Errors
    /// The payload is not the HandshakeRequest JSON object.
    pub fn from_payload(payload: &[u8]) -> Result<Self, PayloadError> {
        from_json("HandshakeRequest", payload)
    }

    /// The JSON payload.
    pub fn to_payload(&self) -> Bytes {
        to_json(self)
    }

    /// The parameters of the first `SessionType` action, if there is one.
    ///
    /// # Errors
    /// A `SessionType` action whose parameters are not a [`SessionTypeRequest`].
    pub fn session_type(&self) -> Result<Option<SessionTypeRequest>, PayloadError> {
        let Some(action) = self
            .requested_client_actions
            .iter()
            .find(|action| action.action_type == ActionType::SessionType)
        else {
            return Ok(None);
        };
        match &action.action_parameters {
            ActionParameters::SessionType(request) => Ok(Some(request.clone())),
            // Re-parsing names the field that made the untagged match fall through to `Other`.
            ActionParameters::Other(value) => SessionTypeRequest::deserialize(value)
                .map(Some)
                .map_err(|source| PayloadError {
                    what: "SessionType action",
                    source,
                }),
        }
    }
}

impl SessionTypeRequest {
    /// A string-valued property, such as `portNumber`, `type` or `host`.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties.get(name).and_then(Value::as_str)
    }
}

impl HandshakeResponse {
    /// Reads a HandshakeResponse payload.
    ///
    /// # Errors
    /// The payload is not the HandshakeResponse JSON object.
    pub fn from_payload(payload: &[u8]) -> Result<Self, PayloadError> {
        from_json("HandshakeResponse", payload)
    }

    /// The JSON payload.
    pub fn to_payload(&self) -> Bytes {
        to_json(self)
    }
}

impl HandshakeComplete {
    /// Reads a HandshakeComplete payload.
    ///
    /// # Errors
    /// The payload is not the HandshakeComplete JSON object.
    pub fn from_payload(payload: &[u8]) -> Result<Self, PayloadError> {
        from_json("HandshakeComplete", payload)
    }

    /// The JSON payload.
    pub fn to_payload(&self) -> Bytes {
        to_json(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: &str = r#"{"AgentVersion":"3.3.987.0","RequestedClientActions":[{"ActionType":"SessionType","ActionParameters":{"SessionType":"Port","Properties":{"localPortNumber":"56789","portNumber":"80","type":"LocalPortForwarding"}}}]}"#;

    #[test]
    fn request_from_protocol_md_parses_and_reencodes_identically() {
        let request = HandshakeRequest::from_payload(REQUEST.as_bytes()).expect("parses");
        assert_eq!(request.agent_version, "3.3.987.0");
        let session = request.session_type().expect("valid").expect("present");
        assert_eq!(session.session_type, "Port");
        assert_eq!(session.property("portNumber"), Some("80"));
        assert_eq!(session.property("type"), Some("LocalPortForwarding"));
        assert_eq!(session.property("host"), None);
        assert_eq!(request.to_payload().as_ref(), REQUEST.as_bytes());
    }

    #[test]
    fn properties_are_written_in_go_map_order() {
        let session = SessionTypeRequest {
            session_type: "Port".into(),
            properties: [
                ("type", "LocalPortForwarding"),
                ("portNumber", "80"),
                ("host", "db"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::from(v)))
            .collect(),
        };
        assert_eq!(
            serde_json::to_string(&session).expect("json"),
            r#"{"SessionType":"Port","Properties":{"host":"db","portNumber":"80","type":"LocalPortForwarding"}}"#
        );
    }

    #[test]
    fn response_matches_the_official_client() {
        let response = HandshakeResponse {
            client_version: "1.2.650.0".into(),
            processed_client_actions: vec![ProcessedClientAction {
                action_type: ActionType::SessionType,
                action_status: ActionStatus::SUCCESS,
                action_result: Value::Null,
                error: String::new(),
            }],
            errors: None,
        };
        let json = r#"{"ClientVersion":"1.2.650.0","ProcessedClientActions":[{"ActionType":"SessionType","ActionStatus":1,"ActionResult":null,"Error":""}],"Errors":null}"#;
        assert_eq!(response.to_payload().as_ref(), json.as_bytes());
        assert_eq!(
            HandshakeResponse::from_payload(json.as_bytes()).expect("parses"),
            response
        );
    }

    #[test]
    fn complete_carries_nanoseconds() {
        let json = r#"{"HandshakeTimeToComplete":123456789,"CustomerMessage":""}"#;
        let complete = HandshakeComplete::from_payload(json.as_bytes()).expect("parses");
        assert_eq!(complete.handshake_time_to_complete, 123_456_789);
        assert_eq!(complete.to_payload().as_ref(), json.as_bytes());
    }

    #[test]
    fn unknown_action_types_are_kept() {
        let json = r#"{"AgentVersion":"9.9.9.9","RequestedClientActions":[{"ActionType":"Teleport","ActionParameters":{}}]}"#;
        let request = HandshakeRequest::from_payload(json.as_bytes()).expect("parses");
        assert_eq!(
            request.requested_client_actions[0].action_type,
            ActionType::Other("Teleport".into())
        );
        assert_eq!(request.session_type().expect("valid"), None);
        assert!(HandshakeRequest::from_payload(b"{\"AgentVersion\":1}").is_err());
    }
}
