//! Opening a data-channel WebSocket: the (signed) upgrade, then the OpenDataChannel text frame
//! before any binary frame (docs/protocol.md §4.1, fixing §13 #10).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

use crate::channel::MAX_FRAME_LEN;
use crate::protocol::payload::OpenDataChannel;
use crate::version::CLIENT_VERSION;

/// An open data-channel WebSocket.
pub type DataSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a data channel could not be opened. Never contains the token or a signed URL.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The upgrade did not complete in time.
    #[error("WebSocket upgrade timed out after {0:?}")]
    Timeout(Duration),
    /// The server answered the upgrade with an HTTP error (e.g. 403 for a stale cell).
    #[error("WebSocket upgrade refused: HTTP {0}")]
    Refused(u16),
    /// The connection or the upgrade failed.
    #[error("WebSocket connect failed: {0}")]
    Failed(String),
    /// The OpenDataChannel frame could not be written.
    #[error("could not send the OpenDataChannel frame: {0}")]
    OpenFrame(String),
    /// No trusted root certificate could be loaded for `wss://`.
    #[error("no trusted root certificates for TLS: {0}")]
    NoRootCertificates(String),
}

/// The TLS configuration for `wss://` data channels, built once: rustls with the *ring*
/// provider chosen explicitly (the AWS SDK's HTTP client uses ring too, so no second crypto
/// library is built and no process-wide default has to be installed), trusting the operating
/// system's root certificates (corporate TLS-inspecting proxies install theirs there).
fn tls_config() -> Result<Arc<rustls::ClientConfig>, ConnectError> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                let errors: Vec<String> = native.errors.iter().map(ToString::to_string).collect();
                return Err(format!(
                    "the system trust store is empty ({})",
                    errors.join("; ")
                ));
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|builder| {
                    Arc::new(builder.with_root_certificates(roots).with_no_client_auth())
                })
                .map_err(|err| err.to_string())
        })
        .clone()
        .map_err(ConnectError::NoRootCertificates)
}

/// The WebSocket limits of a data channel: no incoming message or frame over
/// [`MAX_FRAME_LEN`] (one ClientMessage is one message; the library's defaults would accept
/// 64 MiB). A larger one fails the read before its payload is buffered, which drops that
/// socket only: the tunnel resumes the session on a new one.
pub fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_LEN))
        .max_frame_size(Some(MAX_FRAME_LEN))
}

/// Identity of this client process, fixed for its life (the official client's `ClientId`).
#[derive(Clone, Debug)]
pub struct ClientIdentity {
    /// UUID v4, reported in every OpenDataChannel frame.
    pub client_id: String,
}

impl Default for ClientIdentity {
    fn default() -> Self {
        Self {
            client_id: Uuid::new_v4().to_string(),
        }
    }
}

/// Opens the WebSocket with `request` (the StreamUrl, signed if needed) and sends the
/// OpenDataChannel frame carrying `token`.
///
/// # Errors
/// Timeout, HTTP refusal (with its status), connection failure, or the frame not written.
pub async fn open(
    request: impl IntoClientRequest + Unpin,
    token: &str,
    identity: &ClientIdentity,
    timeout: Duration,
) -> Result<DataSocket, ConnectError> {
    let request = request
        .into_client_request()
        .map_err(|err| ConnectError::Failed(err.to_string()))?;
    let connector = match request.uri().scheme_str() {
        Some("wss") => Connector::Rustls(tls_config()?),
        _ => Connector::Plain,
    };
    let config = socket_config();
    let connect = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(config),
        true,
        Some(connector),
    );
    let (mut socket, _response) = match tokio::time::timeout(timeout, connect).await {
        Err(_) => return Err(ConnectError::Timeout(timeout)),
        Ok(Err(tungstenite::Error::Http(response))) => {
            return Err(ConnectError::Refused(response.status().as_u16()));
        }
        // Display of tungstenite errors names the failure, not the URL.
        Ok(Err(err)) => return Err(ConnectError::Failed(err.to_string())),
        Ok(Ok(pair)) => pair,
    };
    let frame = OpenDataChannel {
        message_schema_version: OpenDataChannel::SCHEMA_VERSION.to_owned(),
        request_id: Uuid::new_v4().to_string(),
        token_value: token.to_owned(),
        client_instance_id: None,
        client_id: identity.client_id.clone(),
        client_version: Some(CLIENT_VERSION.to_owned()),
    };
    let send = futures_util::SinkExt::send(&mut socket, Message::text(frame.to_json()));
    match tokio::time::timeout(timeout, send).await {
        Err(_) => Err(ConnectError::Timeout(timeout)),
        Ok(Err(err)) => Err(ConnectError::OpenFrame(err.to_string())),
        Ok(Ok(())) => Ok(socket),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_is_available_for_wss() {
        // The machine's trust store is what `wss://` data channels verify against.
        let config = tls_config().expect("TLS config from the system roots");
        assert!(
            config.alpn_protocols.is_empty(),
            "plain HTTP/1.1 upgrade, no ALPN"
        );
    }

    /// A server that takes the OpenDataChannel frame, then sends a message of each size.
    async fn serve_sizes(sizes: Vec<usize>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut ws = tokio_tungstenite::accept_async(tcp).await.expect("upgrade");
            let _open = futures_util::StreamExt::next(&mut ws).await;
            for size in sizes {
                let message = Message::Binary(bytes::Bytes::from(vec![7u8; size]));
                if futures_util::SinkExt::send(&mut ws, message).await.is_err() {
                    return;
                }
            }
            // Keep the socket open until the client is done with it.
            while futures_util::StreamExt::next(&mut ws).await.is_some() {}
        });
        format!("ws://127.0.0.1:{port}/v1/data-channel/s?role=publish_subscribe")
    }

    #[tokio::test]
    async fn messages_over_the_frame_cap_fail_the_socket_before_being_buffered() {
        let url = serve_sizes(vec![MAX_FRAME_LEN, MAX_FRAME_LEN + 1]).await;
        let mut socket = open(
            url,
            "token",
            &ClientIdentity::default(),
            Duration::from_secs(5),
        )
        .await
        .expect("open");
        let first = futures_util::StreamExt::next(&mut socket).await;
        assert!(
            matches!(&first, Some(Ok(Message::Binary(b))) if b.len() == MAX_FRAME_LEN),
            "{first:?}"
        );
        let second = futures_util::StreamExt::next(&mut socket).await;
        assert!(
            matches!(
                second,
                Some(Err(tungstenite::Error::Capacity(
                    tungstenite::error::CapacityError::MessageTooLong { .. }
                )))
            ),
            "{second:?}"
        );
    }

    #[test]
    fn the_socket_limits_are_the_frame_cap() {
        let config = socket_config();
        assert_eq!(config.max_message_size, Some(MAX_FRAME_LEN));
        assert_eq!(config.max_frame_size, Some(MAX_FRAME_LEN));
    }

    #[tokio::test]
    async fn wss_reaches_the_tls_layer() {
        // Nothing listens on this port: the error must be a connection failure, not
        // "TLS support not compiled in".
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let url = format!("wss://127.0.0.1:{port}/v1/data-channel/s?role=publish_subscribe");
        let err = open(
            url,
            "token",
            &ClientIdentity::default(),
            Duration::from_secs(5),
        )
        .await
        .expect_err("nothing listens");
        let text = err.to_string();
        assert!(!text.contains("not compiled"), "{text}");
        assert!(matches!(err, ConnectError::Failed(_)), "{text}");
    }
}
