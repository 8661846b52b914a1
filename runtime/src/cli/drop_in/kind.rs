//! Which kind of session the AWS CLI started, from its StartSession request.
//!
//! The official plugin decides after the handshake, from the document's properties
//! (docs/protocol.md §6.1): `type = LocalPortForwarding` is a listener, any other Port
//! session is forwarded over stdin/stdout, and the other session types are shells. A
//! listener has to be bound before the first connection arrives, so this reads the same
//! decision from the request: the AWS port-forwarding documents and every document given a
//! `localPortNumber` (or a Unix socket) are listeners, the AWS shell documents are shells,
//! `AWS-StartSSHSession` and documents given a `portNumber` are Port streams over
//! stdin/stdout, and for any other document the agent's first message decides between a
//! stream and a shell, as it does for the official client.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use ssm_tether::policy::LocalAddress;
use ssm_tether::tunnel::StartRequest;

use super::args::printable;

/// The AWS documents that forward a local port.
const PORT_DOCUMENT_PREFIX: &str = "AWS-StartPortForwardingSession";
/// The AWS document that forwards SSH over stdin/stdout.
const SSH_DOCUMENT: &str = "AWS-StartSSHSession";
/// The AWS documents that start shells and commands (and StartSession without a document).
const SHELL_DOCUMENTS: &[&str] = &[
    "SSM-SessionManagerRunShell",
    "AWS-StartInteractiveCommand",
    "AWS-StartNonInteractiveCommand",
];

/// A session kind.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// Port forwarding to a local listener, as `run` does.
    Port(LocalAddress),
    /// A Port session without a local port: the bytes travel over stdin/stdout.
    StandardStream,
    /// A shell or command session.
    Shell,
    /// A custom document that does not say: a Port stream or a shell, as the agent's first
    /// message will tell (both use stdin/stdout).
    Undecided,
}

/// A request parameter that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum KindError {
    /// `localPortNumber` is not a TCP port.
    #[error("Parameters.localPortNumber: {0:?} is not a port number (0–65535)")]
    LocalPort(String),
    /// `localConnectionType` is `unix` without a `localUnixSocket` path.
    #[error("Parameters.localConnectionType is \"unix\" but Parameters.localUnixSocket is empty")]
    NoUnixSocket,
}

/// The kind of session `request` starts.
pub(super) fn classify(request: &StartRequest) -> Result<Kind, KindError> {
    let first = |key: &str| {
        request
            .parameters
            .get(key)
            .and_then(|values| values.first())
            .map(String::as_str)
    };
    if first("localConnectionType") == Some("unix") {
        return match first("localUnixSocket").filter(|p| !p.is_empty()) {
            Some(path) => Ok(Kind::Port(LocalAddress::Unix(PathBuf::from(path)))),
            None => Err(KindError::NoUnixSocket),
        };
    }
    let local_port = first("localPortNumber");
    if local_port.is_some() || request.document_name.starts_with(PORT_DOCUMENT_PREFIX) {
        // Empty or absent: any free port, as the official plugin does.
        let port = match local_port.map(str::trim).filter(|p| !p.is_empty()) {
            None => 0,
            Some(text) => text
                .parse::<u16>()
                .map_err(|_| KindError::LocalPort(printable(text)))?,
        };
        // The official plugin listens on `localhost`, which Go resolves to 127.0.0.1 first.
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        return Ok(Kind::Port(LocalAddress::Tcp(addr)));
    }
    // A document ARN names the same document as its last path segment.
    let name = request.document_name.rsplit('/').next().unwrap_or_default();
    if SHELL_DOCUMENTS.contains(&name) {
        return Ok(Kind::Shell);
    }
    if name == SSH_DOCUMENT || first("portNumber").is_some() {
        return Ok(Kind::StandardStream);
    }
    Ok(Kind::Undecided)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn request(document: &str, parameters: &[(&str, &str)]) -> StartRequest {
        StartRequest {
            target: "i-1".into(),
            document_name: document.into(),
            parameters: parameters
                .iter()
                .map(|(k, v)| ((*k).to_owned(), vec![(*v).to_owned()]))
                .collect::<BTreeMap<_, _>>(),
            reason: None,
        }
    }

    fn tcp(port: u16) -> Kind {
        Kind::Port(LocalAddress::Tcp(SocketAddr::from((
            Ipv4Addr::LOCALHOST,
            port,
        ))))
    }

    #[test]
    fn port_documents_get_a_listener() {
        let pf = "AWS-StartPortForwardingSession";
        assert_eq!(
            classify(&request(
                pf,
                &[("portNumber", "80"), ("localPortNumber", "8080")]
            )),
            Ok(tcp(8080))
        );
        assert_eq!(classify(&request(pf, &[("portNumber", "80")])), Ok(tcp(0)));
        assert_eq!(
            classify(&request(
                "AWS-StartPortForwardingSessionToRemoteHost",
                &[
                    ("host", "db"),
                    ("portNumber", "5432"),
                    ("localPortNumber", "")
                ]
            )),
            Ok(tcp(0))
        );
        assert_eq!(
            classify(&request("Custom-Port", &[("localPortNumber", "15432")])),
            Ok(tcp(15432))
        );
        assert_eq!(
            classify(&request(
                "Custom-Port",
                &[
                    ("localConnectionType", "unix"),
                    ("localUnixSocket", "/tmp/s")
                ]
            )),
            Ok(Kind::Port(LocalAddress::Unix("/tmp/s".into())))
        );
    }

    #[test]
    fn other_kinds_and_bad_parameters() {
        assert_eq!(
            classify(&request("AWS-StartSSHSession", &[("portNumber", "22")])),
            Ok(Kind::StandardStream)
        );
        assert_eq!(
            classify(&request("SSM-SessionManagerRunShell", &[])),
            Ok(Kind::Shell)
        );
        assert_eq!(
            classify(&request(
                "arn:aws:ssm:eu-west-1::document/AWS-StartInteractiveCommand",
                &[("command", "top")]
            )),
            Ok(Kind::Shell)
        );
        assert_eq!(
            classify(&request("Custom-SSH", &[("portNumber", "2222")])),
            Ok(Kind::StandardStream)
        );
        // A custom document that does not say: the agent's first message will.
        assert_eq!(
            classify(&request("Custom-Doc", &[("remotePort", "2222")])),
            Ok(Kind::Undecided)
        );
        assert_eq!(
            classify(&request(
                "AWS-StartPortForwardingSession",
                &[("localPortNumber", "http")]
            )),
            Err(KindError::LocalPort("http".into()))
        );
        assert_eq!(
            classify(&request("Custom", &[("localConnectionType", "unix")])),
            Err(KindError::NoUnixSocket)
        );
    }
}
