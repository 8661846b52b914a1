//! The OpenDataChannel text frame sent first on every data-channel WebSocket (docs/protocol.md §4.1).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{PayloadError, from_json};

/// The JSON of the first (text) WebSocket frame: it authenticates the connection with the
/// session token.
///
/// `Debug` redacts the token: it is a credential and must never reach a log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenDataChannel {
    /// Always `"1.0"`.
    #[serde(rename = "MessageSchemaVersion")]
    pub message_schema_version: String,
    /// A fresh UUID v4 per connection attempt.
    #[serde(rename = "RequestId")]
    pub request_id: String,
    /// The session token from StartSession / ResumeSession (client) or CreateDataChannel (agent).
    #[serde(rename = "TokenValue")]
    pub token_value: String,
    /// The agent's instance id (agent connections only).
    #[serde(
        rename = "ClientInstanceId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_instance_id: Option<String>,
    /// A UUID v4 fixed for the life of the client process.
    #[serde(rename = "ClientId")]
    pub client_id: String,
    /// The client's version (clients since 2024-09; the agent derives port modes from it).
    #[serde(
        rename = "ClientVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_version: Option<String>,
}

impl OpenDataChannel {
    /// The schema version every known sender writes.
    pub const SCHEMA_VERSION: &'static str = "1.0";

    /// Reads the text frame.
    ///
    /// # Errors
    /// The text is not the OpenDataChannel JSON object.
    pub fn from_json(text: &str) -> Result<Self, PayloadError> {
        from_json("OpenDataChannel", text.as_bytes())
    }

    /// The text frame, fields in the order the official client marshals them.
    pub fn to_json(&self) -> String {
        // Strings and options only: serialization cannot fail.
        String::from_utf8_lossy(&super::to_json(self)).into_owned()
    }
}

impl fmt::Debug for OpenDataChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenDataChannel")
            .field("message_schema_version", &self.message_schema_version)
            .field("request_id", &self.request_id)
            .field("token_value", &"<redacted>")
            .field("client_instance_id", &self.client_instance_id)
            .field("client_id", &self.client_id)
            .field("client_version", &self.client_version)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frame_matches_the_official_field_order() {
        let open = OpenDataChannel {
            message_schema_version: "1.0".into(),
            request_id: "r".into(),
            token_value: "secret-token".into(),
            client_instance_id: None,
            client_id: "c".into(),
            client_version: Some("1.2.650.0".into()),
        };
        assert_eq!(
            open.to_json(),
            r#"{"MessageSchemaVersion":"1.0","RequestId":"r","TokenValue":"secret-token","ClientId":"c","ClientVersion":"1.2.650.0"}"#
        );
        assert_eq!(
            OpenDataChannel::from_json(&open.to_json()).expect("parses"),
            open
        );
        assert!(!format!("{open:?}").contains("secret-token"));
    }

    #[test]
    fn agent_frame_has_the_instance_id_and_no_version() {
        let text = r#"{"MessageSchemaVersion":"1.0","RequestId":"r","TokenValue":"t","ClientInstanceId":"i-0abc","ClientId":"c"}"#;
        let open = OpenDataChannel::from_json(text).expect("parses");
        assert_eq!(open.client_instance_id.as_deref(), Some("i-0abc"));
        assert_eq!(open.client_version, None);
        assert_eq!(open.to_json(), text);
    }
}
