//! The client side of the handshake (docs/protocol.md §5, §6.1), sans-IO: from the agent's
//! HandshakeRequest to our HandshakeResponse and the mode both ends will use — a port
//! forwarding mode, or a shell (docs/protocol.md §11; shells with KMS encryption add a
//! `KMSEncryption` action whose answer needs a data key first).

use serde_json::Value;

use crate::protocol::payload::{
    ActionParameters, ActionStatus, ActionType, HandshakeRequest, HandshakeResponse,
    ProcessedClientAction,
};
use crate::version::{self, CLIENT_VERSION};

/// How the tunnel's bytes travel, as both ends derive it from the exchanged versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortMode {
    /// smux streams, one per local connection.
    Mux {
        /// Whether to send smux NOPs: only for agents that keep smux keepalive on.
        keepalive: bool,
    },
    /// Raw bytes of one local connection at a time.
    Basic {
        /// Whether the agent understands the TerminateSession flag (else: the API call only).
        terminate_flag: bool,
    },
    /// Not a port: a shell or command, whose Output bytes are a terminal's (and Size
    /// messages resize it).
    Shell,
}

/// What a tunnel's document starts, as its owner knows from the request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SessionKind {
    /// A Port session: port forwarding (mux or basic mode).
    #[default]
    Port,
    /// A shell or command: `Standard_Stream`, `InteractiveCommands` or
    /// `NonInteractiveCommands`.
    Shell,
    /// Either, as the agent's first message says (a custom document the request does not
    /// reveal): a Port handshake is port forwarding, a shell handshake or output without one
    /// is a shell. For a single stream (stdin/stdout), which can be either.
    Auto,
}

/// What an [`SessionKind::Auto`] session turns out to be from its handshake.
pub fn kind_of(request: &HandshakeRequest) -> SessionKind {
    match request.session_type() {
        Ok(Some(session)) if SHELL_TYPES.contains(&session.session_type.as_str()) => {
            SessionKind::Shell
        }
        _ => SessionKind::Port,
    }
}

/// The session types of shells and commands, all carried the same way.
const SHELL_TYPES: &[&str] = &[
    "Standard_Stream",
    "InteractiveCommands",
    "NonInteractiveCommands",
];

/// The parameters of a `KMSEncryption` action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmsRequest {
    /// The key KMS is to generate the data key under, as configured in the preferences.
    pub key_id: String,
    /// The agent's random challenge, when it sends one (newer agents): acknowledging it binds
    /// the data key to it.
    pub challenge: Option<String>,
}

/// What the client did with a `KMSEncryption` action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KmsAnswer {
    /// The data key was generated: its encrypted form for the agent.
    Key {
        /// `CiphertextBlob` of GenerateDataKey.
        ciphertext_blob: Vec<u8>,
        /// Whether the challenge was put into the encryption context.
        acknowledged: bool,
    },
    /// It could not be: why (sent to the agent, which then cancels the session).
    Failed(String),
}

/// What the handshake established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The agent's version.
    pub agent_version: String,
    /// The forwarding mode.
    pub mode: PortMode,
    /// The destination as the agent will dial it, for log lines (`host:port`).
    pub destination: String,
}

/// Why a handshake cannot lead to port forwarding.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The request carries no SessionType action.
    #[error("handshake request has no SessionType action")]
    NoSessionType,
    /// The SessionType action is unreadable.
    #[error("unreadable SessionType action: {0}")]
    BadSessionType(String),
    /// The agent offers a session type other than Port.
    #[error("session type {0:?} is not a port session")]
    NotPort(String),
    /// A shell tunnel's agent offers another session type.
    #[error("session type {0:?} is not a shell session")]
    NotShell(String),
}

/// The `KMSEncryption` action of a request, if any.
pub fn kms_request(request: &HandshakeRequest) -> Option<KmsRequest> {
    let action = request
        .requested_client_actions
        .iter()
        .find(|a| a.action_type == ActionType::KmsEncryption)?;
    let ActionParameters::Other(value) = &action.action_parameters else {
        return None;
    };
    let key_id = value
        .get("KMSKeyId")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let challenge = value
        .get("Challenge")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .map(str::to_owned);
    Some(KmsRequest {
        key_id: key_id.to_owned(),
        challenge,
    })
}

/// Answers a HandshakeRequest: the response to send and, if the session is a port session we
/// can forward, the negotiated mode.
///
/// Every requested action gets an entry. Unknown actions are answered `Unsupported` (status 3)
/// with the status in the right field, unlike the official client (§13 #20).
pub fn answer(
    request: &HandshakeRequest,
    kind: SessionKind,
    kms: Option<&KmsAnswer>,
) -> (HandshakeResponse, Result<Negotiated, HandshakeError>) {
    let negotiated = negotiate(request, kind);
    let processed = request
        .requested_client_actions
        .iter()
        .map(|action| {
            let (status, result, error) = match (&action.action_type, &negotiated, kms) {
                (ActionType::SessionType, Ok(_), _) => {
                    (ActionStatus::SUCCESS, Value::Null, String::new())
                }
                (ActionType::SessionType, Err(err), _) => {
                    (ActionStatus::FAILED, Value::Null, err.to_string())
                }
                (
                    ActionType::KmsEncryption,
                    Ok(_),
                    Some(KmsAnswer::Key {
                        ciphertext_blob,
                        acknowledged,
                    }),
                ) => (
                    ActionStatus::SUCCESS,
                    kms_result(ciphertext_blob, *acknowledged),
                    String::new(),
                ),
                (ActionType::KmsEncryption, _, Some(KmsAnswer::Failed(why))) => (
                    ActionStatus::FAILED,
                    Value::Null,
                    format!("Failed to process action KMSEncryption: {why}"),
                ),
                (other, _, _) => (
                    ActionStatus::UNSUPPORTED,
                    Value::Null,
                    format!("action {} is not supported by ssm-tether", other.as_str()),
                ),
            };
            ProcessedClientAction {
                action_type: action.action_type.clone(),
                action_status: status,
                action_result: result,
                error,
            }
        })
        .collect();
    let response = HandshakeResponse {
        client_version: CLIENT_VERSION.to_owned(),
        processed_client_actions: processed,
        errors: None,
    };
    (response, negotiated)
}

/// The agent's `KMSEncryptionResponse`, field for field (Go marshals `[]byte` as standard
/// base64 and a nil one as `null`).
fn kms_result(ciphertext_blob: &[u8], acknowledged: bool) -> Value {
    use base64::Engine;
    let mut result = serde_json::Map::new();
    result.insert(
        "KMSCipherTextKey".into(),
        Value::String(base64::engine::general_purpose::STANDARD.encode(ciphertext_blob)),
    );
    result.insert("KMSCipherTextHash".into(), Value::Null);
    result.insert("ChallengeAcknowledgement".into(), Value::Bool(acknowledged));
    Value::Object(result)
}

fn negotiate(request: &HandshakeRequest, kind: SessionKind) -> Result<Negotiated, HandshakeError> {
    let session = request
        .session_type()
        .map_err(|err| HandshakeError::BadSessionType(err.to_string()))?
        .ok_or(HandshakeError::NoSessionType)?;
    let agent = request.agent_version.as_str();
    if kind == SessionKind::Shell {
        if !SHELL_TYPES.contains(&session.session_type.as_str()) {
            return Err(HandshakeError::NotShell(session.session_type));
        }
        return Ok(Negotiated {
            agent_version: agent.to_owned(),
            mode: PortMode::Shell,
            destination: session.session_type,
        });
    }
    if session.session_type != "Port" {
        return Err(HandshakeError::NotPort(session.session_type));
    }
    // An unparsable version is treated as a modern agent: every agent since 2021 is.
    let newer_than = |v: &str| version::greater(agent, v).unwrap_or(true);
    let mode = if session.property("type") == Some("LocalPortForwarding") && newer_than("3.0.196.0")
    {
        PortMode::Mux {
            keepalive: !newer_than("3.1.1511.0"),
        }
    } else {
        PortMode::Basic {
            terminate_flag: newer_than("2.3.722.0"),
        }
    };
    let host = session.property("host").unwrap_or("localhost");
    let port = session.property("portNumber").unwrap_or("?");
    Ok(Negotiated {
        agent_version: agent.to_owned(),
        mode,
        destination: format!("{host}:{port}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(agent_version: &str, properties: &str) -> HandshakeRequest {
        HandshakeRequest::from_payload(
            format!(
                r#"{{"AgentVersion":"{agent_version}","RequestedClientActions":[{{"ActionType":"SessionType","ActionParameters":{{"SessionType":"Port","Properties":{properties}}}}}]}}"#
            )
            .as_bytes(),
        )
        .expect("valid request")
    }

    fn answer_port(
        request: &HandshakeRequest,
    ) -> (HandshakeResponse, Result<Negotiated, HandshakeError>) {
        answer(request, SessionKind::Port, None)
    }

    const LPF: &str = r#"{"portNumber":"5432","type":"LocalPortForwarding","host":"db"}"#;

    #[test]
    fn response_is_byte_identical_to_the_official_clients() {
        let (response, negotiated) = answer_port(&request("3.3.987.0", LPF));
        assert_eq!(
            std::str::from_utf8(&response.to_payload()).expect("utf8"),
            r#"{"ClientVersion":"1.2.650.0","ProcessedClientActions":[{"ActionType":"SessionType","ActionStatus":1,"ActionResult":null,"Error":""}],"Errors":null}"#
        );
        let negotiated = negotiated.expect("port session");
        assert_eq!(negotiated.mode, PortMode::Mux { keepalive: false });
        assert_eq!(negotiated.destination, "db:5432");
    }

    #[test]
    fn mode_follows_the_agent_version_table() {
        let mode = |v: &str, props: &str| answer_port(&request(v, props)).1.expect("port").mode;
        assert_eq!(mode("3.1.1511.0", LPF), PortMode::Mux { keepalive: true });
        assert_eq!(mode("3.1.1512.0", LPF), PortMode::Mux { keepalive: false });
        assert_eq!(
            mode("3.0.196.0", LPF),
            PortMode::Basic {
                terminate_flag: true
            }
        );
        assert_eq!(
            mode("2.3.722.0", LPF),
            PortMode::Basic {
                terminate_flag: false
            }
        );
        // Without type (e.g. AWS-StartSSHSession) it is basic mode whatever the version.
        assert_eq!(
            mode("3.3.987.0", r#"{"portNumber":"22"}"#),
            PortMode::Basic {
                terminate_flag: true
            }
        );
    }

    #[test]
    fn unknown_actions_are_unsupported_and_non_port_sessions_fail() {
        let request = HandshakeRequest::from_payload(
            br#"{"AgentVersion":"3.3.987.0","RequestedClientActions":[{"ActionType":"SessionType","ActionParameters":{"SessionType":"Standard_Stream","Properties":{}}},{"ActionType":"Teleport","ActionParameters":{}}]}"#,
        )
        .expect("valid");
        let (response, negotiated) = answer(&request, SessionKind::Port, None);
        assert_eq!(
            negotiated,
            Err(HandshakeError::NotPort("Standard_Stream".into()))
        );
        let statuses: Vec<_> = response
            .processed_client_actions
            .iter()
            .map(|a| a.action_status)
            .collect();
        assert_eq!(
            statuses,
            vec![ActionStatus::FAILED, ActionStatus::UNSUPPORTED]
        );
    }
}
