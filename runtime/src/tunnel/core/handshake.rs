//! The client side of the handshake (docs/protocol.md §5, §6.1), sans-IO: from the agent's
//! HandshakeRequest to our HandshakeResponse and the port-forwarding mode both ends will use.

use serde_json::Value;

use crate::protocol::payload::{
    ActionStatus, ActionType, HandshakeRequest, HandshakeResponse, ProcessedClientAction,
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
}

/// Answers a HandshakeRequest: the response to send and, if the session is a port session we
/// can forward, the negotiated mode.
///
/// Every requested action gets an entry. Unknown actions are answered `Unsupported` (status 3)
/// with the status in the right field, unlike the official client (§13 #20).
pub fn answer(
    request: &HandshakeRequest,
) -> (HandshakeResponse, Result<Negotiated, HandshakeError>) {
    let negotiated = negotiate(request);
    let processed = request
        .requested_client_actions
        .iter()
        .map(|action| {
            let (status, error) = match (&action.action_type, &negotiated) {
                (ActionType::SessionType, Ok(_)) => (ActionStatus::SUCCESS, String::new()),
                (ActionType::SessionType, Err(err)) => (ActionStatus::FAILED, err.to_string()),
                (other, _) => (
                    ActionStatus::UNSUPPORTED,
                    format!("action {} is not supported by ssm-tether", other.as_str()),
                ),
            };
            ProcessedClientAction {
                action_type: action.action_type.clone(),
                action_status: status,
                action_result: Value::Null,
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

fn negotiate(request: &HandshakeRequest) -> Result<Negotiated, HandshakeError> {
    let session = request
        .session_type()
        .map_err(|err| HandshakeError::BadSessionType(err.to_string()))?
        .ok_or(HandshakeError::NoSessionType)?;
    if session.session_type != "Port" {
        return Err(HandshakeError::NotPort(session.session_type));
    }
    let agent = request.agent_version.as_str();
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

    const LPF: &str = r#"{"portNumber":"5432","type":"LocalPortForwarding","host":"db"}"#;

    #[test]
    fn response_is_byte_identical_to_the_official_clients() {
        let (response, negotiated) = answer(&request("3.3.987.0", LPF));
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
        let mode = |v: &str, props: &str| answer(&request(v, props)).1.expect("port").mode;
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
        let (response, negotiated) = answer(&request);
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
