//! Opening a data-channel WebSocket: TCP to the StreamUrl's host, directly or through an HTTP
//! proxy's `CONNECT` ([`super::proxy`]), TLS for `wss://`, the (signed) upgrade, then the
//! OpenDataChannel text frame before any binary frame (docs/protocol.md §4.1, fixing §13 #10).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

use super::proxy::{self, Proxies, Route};
use crate::channel::MAX_FRAME_LEN;
use crate::protocol::payload::OpenDataChannel;
use crate::remedy::Remedy;
use crate::version::CLIENT_VERSION;

/// An open data-channel WebSocket.
pub type DataSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a data channel could not be opened. Never contains the token, a signed URL or a
/// proxy's credentials. Network failures carry their remedy in their text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The upgrade did not complete in time.
    #[error("WebSocket upgrade timed out after {0:?} ({remedy})", remedy = Remedy::Unreachable)]
    Timeout(Duration),
    /// The server answered the upgrade with an HTTP error (e.g. 403 for a stale cell).
    #[error("WebSocket upgrade refused: HTTP {0}")]
    Refused(u16),
    /// The connection or the upgrade failed.
    #[error("WebSocket connect failed: {0}{suffix}", suffix = remedy_suffix(.0))]
    Failed(String),
    /// The OpenDataChannel frame could not be written.
    #[error("could not send the OpenDataChannel frame: {0}")]
    OpenFrame(String),
    /// No trusted root certificate could be loaded for `wss://`.
    #[error("no trusted root certificates for TLS: {0}")]
    NoRootCertificates(String),
    /// The StreamUrl's host name could not be resolved.
    #[error("cannot resolve {host}: {detail} ({remedy})", remedy = Remedy::Dns)]
    Resolve {
        /// The host name.
        host: String,
        /// The resolver's answer.
        detail: String,
    },
    /// No TCP connection to the host (or to the proxy) could be opened.
    #[error("cannot connect to {target}: {detail} ({remedy})", remedy = Remedy::Unreachable)]
    Unreachable {
        /// `host:port`.
        target: String,
        /// The last connection error.
        detail: String,
    },
    /// The proxy could not be used: unreachable, refused the tunnel or the credentials.
    #[error("{0} ({remedy})", remedy = .0.remedy())]
    Proxy(proxy::TunnelError),
    /// A proxy is configured that the data channel cannot use.
    #[error("{0} ({remedy})", remedy = Remedy::Proxy)]
    ProxyUnsupported(String),
}

/// ` (remedy)` when the failure's text is recognised.
fn remedy_suffix(text: &str) -> String {
    crate::remedy::for_network_text(text)
        .map(|remedy| format!(" ({remedy})"))
        .unwrap_or_default()
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

/// Opens the WebSocket with `request` (the StreamUrl, signed if needed) directly, and sends
/// the OpenDataChannel frame carrying `token`. See [`open_via`].
///
/// # Errors
/// As [`open_via`].
pub async fn open(
    request: impl IntoClientRequest + Unpin,
    token: &str,
    identity: &ClientIdentity,
    timeout: Duration,
) -> Result<DataSocket, ConnectError> {
    open_via(&Proxies::none(), request, token, identity, timeout).await
}

/// Opens the WebSocket with `request` (the StreamUrl, signed if needed) over a TCP connection
/// that `proxies` routes (directly, or through an HTTP proxy's `CONNECT`), with TLS for
/// `wss://` (the operating system's roots, the same whether proxied or not), and sends the
/// OpenDataChannel frame carrying `token`. Everything up to the written frame is bounded by
/// `timeout`.
///
/// # Errors
/// Timeout, HTTP refusal (with its status), name resolution, connection or proxy failure
/// (each with its remedy), TLS or upgrade failure, or the frame not written.
pub async fn open_via(
    proxies: &Proxies,
    request: impl IntoClientRequest + Unpin,
    token: &str,
    identity: &ClientIdentity,
    timeout: Duration,
) -> Result<DataSocket, ConnectError> {
    let request = request
        .into_client_request()
        .map_err(|err| ConnectError::Failed(err.to_string()))?;
    let secure = match request.uri().scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        _ => return Err(ConnectError::Failed("not a ws:// or wss:// URL".to_owned())),
    };
    let host = request
        .uri()
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| ConnectError::Failed("the URL has no host".to_owned()))?
        .to_owned();
    let port = request
        .uri()
        .port_u16()
        .unwrap_or(if secure { 443 } else { 80 });
    let connector = if secure {
        Connector::Rustls(tls_config()?)
    } else {
        Connector::Plain
    };
    let upgrade = async {
        let tcp = dial(proxies, secure, &host, port).await?;
        let upgraded = tokio_tungstenite::client_async_tls_with_config(
            request,
            tcp,
            Some(socket_config()),
            Some(connector),
        )
        .await;
        match upgraded {
            Err(tungstenite::Error::Http(response)) => {
                Err(ConnectError::Refused(response.status().as_u16()))
            }
            // Display of tungstenite errors names the failure, not the URL.
            Err(err) => Err(ConnectError::Failed(err.to_string())),
            Ok((socket, _response)) => Ok(socket),
        }
    };
    let mut socket = match tokio::time::timeout(timeout, upgrade).await {
        Err(_) => return Err(ConnectError::Timeout(timeout)),
        Ok(result) => result?,
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

/// A TCP connection to `host:port`, directly or through the proxy `proxies` picks, with
/// `TCP_NODELAY` (frames are small and latency matters).
async fn dial(
    proxies: &Proxies,
    secure: bool,
    host: &str,
    port: u16,
) -> Result<TcpStream, ConnectError> {
    let stream = match proxies.route(secure, host, port) {
        Route::Direct => connect_tcp(host, port).await?,
        Route::Unsupported(why) => return Err(ConnectError::ProxyUnsupported(why)),
        Route::Proxy(hop) => {
            tracing::debug!(target: "ssm_tether::transport", proxy = %hop.shown, host, port,
                "data channel through a proxy");
            let mut stream = connect_tcp(&hop.host, hop.port).await.map_err(|err| {
                ConnectError::Proxy(proxy::TunnelError::Io {
                    proxy: hop.shown.clone(),
                    detail: match err {
                        ConnectError::Resolve { detail, .. } => {
                            format!("cannot resolve the proxy's host: {detail}")
                        }
                        ConnectError::Unreachable { detail, .. } => {
                            format!("cannot connect: {detail}")
                        }
                        other => other.to_string(),
                    },
                })
            })?;
            proxy::connect_tunnel(&mut stream, &hop, host, port)
                .await
                .map_err(ConnectError::Proxy)?;
            stream
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Resolves `host` and connects to its addresses in turn; resolution and connection failures
/// are told apart, since their remedies differ.
async fn connect_tcp(host: &str, port: u16) -> Result<TcpStream, ConnectError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<_> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|err| ConnectError::Resolve {
            host: bare.to_owned(),
            detail: err.to_string(),
        })?
        .collect();
    let target = if bare.contains(':') {
        format!("[{bare}]:{port}")
    } else {
        format!("{bare}:{port}")
    };
    let mut last = format!("{bare} has no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(err) => last = err.to_string(),
        }
    }
    Err(ConnectError::Unreachable {
        target,
        detail: last,
    })
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
        assert!(matches!(err, ConnectError::Unreachable { .. }), "{text}");
        assert!(text.contains("firewall"), "the remedy: {text}");
    }
}
