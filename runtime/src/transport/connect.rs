//! Opening a data-channel WebSocket: the (signed) upgrade, then the OpenDataChannel text frame
//! before any binary frame (PROTOCOL.md §4.1, fixing §13 #10).

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

use crate::protocol::payload::OpenDataChannel;
use crate::version::CLIENT_VERSION;

/// An open data-channel WebSocket.
pub type DataSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a data channel could not be opened. Never contains the token or a signed URL.
#[derive(Debug, thiserror::Error)]
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
    let config = WebSocketConfig::default();
    let connect = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
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
