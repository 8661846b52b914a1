//! KMS session-encryption payloads of shell sessions (docs/protocol.md §11): the parameters of
//! the agent's `KMSEncryption` handshake action, the client's result for it, and the
//! EncChallengeRequest / EncChallengeResponse payloads (PayloadType 8 and 9).
//!
//! The agent declares these as Go structs, so fields are written in declaration order, and
//! `[]byte` fields travel as standard base64 with padding (Go's `encoding/json`); a nil byte
//! slice is `null`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{ActionParameters, PayloadError, from_json, to_json};

/// The parameters of the agent's `KMSEncryption` action: which KMS key the client generates
/// the session's data key under, and the random challenge the agent may add to the
/// encryption context.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KmsEncryptionRequest {
    /// The key id, key ARN, alias or alias ARN, as the session preferences name it.
    #[serde(rename = "KMSKeyId")]
    pub kms_key_id: String,
    /// Standard base64 of 16 random bytes; used verbatim as the `aws:ssm:RandomChallenge`
    /// encryption-context value. Agents before about 3.3.808.0 may leave it out.
    #[serde(rename = "Challenge", default)]
    pub challenge: String,
}

/// The client's `ActionResult` for a successful `KMSEncryption` action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KmsEncryptionResponse {
    /// The `CiphertextBlob` KMS GenerateDataKey returned; the agent has KMS decrypt it.
    #[serde(rename = "KMSCipherTextKey", with = "base64_bytes", default)]
    pub kms_cipher_text_key: Vec<u8>,
    /// Unused by both sides; the official client sends `null`.
    #[serde(rename = "KMSCipherTextHash", with = "base64_option", default)]
    pub kms_cipher_text_hash: Option<Vec<u8>>,
    /// Whether the client put the challenge into the GenerateDataKey encryption context as
    /// `aws:ssm:RandomChallenge` (the agent then does the same for Decrypt). The official
    /// client never sends it; absent means false and is not written.
    #[serde(
        rename = "ChallengeAcknowledgement",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub challenge_acknowledgement: Option<bool>,
}

/// The payload of EncChallengeRequest (agent → client, PayloadType 8) and
/// EncChallengeResponse (client → agent, 9): 64 random bytes encrypted by the agent, then the
/// same bytes re-encrypted by the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionChallenge {
    /// `nonce ‖ ciphertext ‖ tag`, base64 on the wire.
    #[serde(rename = "Challenge", with = "base64_bytes", default)]
    pub challenge: Vec<u8>,
}

impl KmsEncryptionRequest {
    /// Reads the parameters of a `KMSEncryption` action (which the generic handshake parser
    /// keeps as [`ActionParameters::Other`]).
    ///
    /// # Errors
    /// The parameters are not a `KMSEncryptionRequest` object.
    pub fn from_action_parameters(parameters: &ActionParameters) -> Result<Self, PayloadError> {
        let value = match parameters {
            ActionParameters::Other(value) => value.clone(),
            ActionParameters::SessionType(request) => {
                serde_json::to_value(request).map_err(|source| PayloadError {
                    what: "KMSEncryption action",
                    source,
                })?
            }
        };
        Self::deserialize(value).map_err(|source| PayloadError {
            what: "KMSEncryption action",
            source,
        })
    }
}

impl KmsEncryptionResponse {
    /// Reads the `ActionResult` of a `KMSEncryption` action.
    ///
    /// # Errors
    /// The result is not a `KMSEncryptionResponse` object (for example `null`, or a key that
    /// is not base64).
    pub fn from_action_result(result: &serde_json::Value) -> Result<Self, PayloadError> {
        Self::deserialize(result).map_err(|source| PayloadError {
            what: "KMSEncryption result",
            source,
        })
    }

    /// Whether the client acknowledged the random challenge.
    pub fn acknowledged(&self) -> bool {
        self.challenge_acknowledgement.unwrap_or(false)
    }
}

impl EncryptionChallenge {
    /// Reads an EncChallengeRequest or EncChallengeResponse payload.
    ///
    /// # Errors
    /// The payload is not the challenge JSON object, or the challenge is not base64.
    pub fn from_payload(payload: &[u8]) -> Result<Self, PayloadError> {
        from_json("EncryptionChallenge", payload)
    }

    /// The JSON payload.
    pub fn to_payload(&self) -> Bytes {
        to_json(self)
    }
}

/// `[]byte` as Go's `encoding/json` writes it: standard base64 with padding; `null` reads as
/// empty.
mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(Vec::new()),
            Some(text) => STANDARD.decode(text).map_err(serde::de::Error::custom),
        }
    }
}

/// An optional `[]byte`: `null` when absent.
mod base64_option {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        bytes: &Option<Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => s.serialize_str(&STANDARD.encode(bytes)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| STANDARD.decode(text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_written_in_go_field_order() {
        let request = KmsEncryptionRequest {
            kms_key_id: "alias/ssm".into(),
            challenge: "AAECAwQFBgcICQoLDA0ODw==".into(),
        };
        let json = r#"{"KMSKeyId":"alias/ssm","Challenge":"AAECAwQFBgcICQoLDA0ODw=="}"#;
        assert_eq!(serde_json::to_string(&request).expect("json"), json);
        let value: serde_json::Value = serde_json::from_str(json).expect("json");
        assert_eq!(
            KmsEncryptionRequest::from_action_parameters(&ActionParameters::Other(value))
                .expect("parses"),
            request
        );
        // An old agent without the challenge.
        let old = serde_json::json!({"KMSKeyId": "k"});
        let parsed = KmsEncryptionRequest::from_action_parameters(&ActionParameters::Other(old))
            .expect("parses");
        assert_eq!(parsed.challenge, "");
    }

    #[test]
    fn response_matches_the_official_client_and_reads_the_acknowledgement() {
        let plugin = serde_json::json!({"KMSCipherTextKey": "AQID", "KMSCipherTextHash": null});
        let response = KmsEncryptionResponse::from_action_result(&plugin).expect("parses");
        assert_eq!(response.kms_cipher_text_key, [1, 2, 3]);
        assert_eq!(response.kms_cipher_text_hash, None);
        assert!(!response.acknowledged());
        assert_eq!(
            serde_json::to_string(&response).expect("json"),
            r#"{"KMSCipherTextKey":"AQID","KMSCipherTextHash":null}"#
        );
        let acked = serde_json::json!({"KMSCipherTextKey": "AQID", "KMSCipherTextHash": null, "ChallengeAcknowledgement": true});
        assert!(
            KmsEncryptionResponse::from_action_result(&acked)
                .expect("parses")
                .acknowledged()
        );
        assert!(KmsEncryptionResponse::from_action_result(&serde_json::Value::Null).is_err());
        let bad = serde_json::json!({"KMSCipherTextKey": "not base64!"});
        assert!(KmsEncryptionResponse::from_action_result(&bad).is_err());
    }

    #[test]
    fn challenge_round_trips_as_padded_base64() {
        let challenge = EncryptionChallenge {
            challenge: vec![0xfb, 0xff],
        };
        assert_eq!(challenge.to_payload().as_ref(), br#"{"Challenge":"+/8="}"#);
        assert_eq!(
            EncryptionChallenge::from_payload(br#"{"Challenge":"+/8="}"#).expect("parses"),
            challenge
        );
        assert!(EncryptionChallenge::from_payload(br#"{"Challenge":"+/8"}"#).is_err());
        assert!(EncryptionChallenge::from_payload(b"{").is_err());
    }
}
