//! The agent's side of the MGS contract (docs/protocol.md §4.1, §9.4): the CreateDataChannel REST
//! call, the data-channel WebSocket with its OpenDataChannel text frame, and the rejoin
//! retry schedule.

use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ssm_tether_protocol::payload::OpenDataChannel;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The data-channel WebSocket.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The agent's HTTP timeout for CreateDataChannel.
pub(crate) const CREATE_DATA_CHANNEL_TIMEOUT: Duration = Duration::from_secs(15);
/// `DataChannelNumMaxAttempts`.
pub(crate) const REJOIN_ATTEMPTS: usize = 6;
/// `DataChannelRetryMaxIntervalMillis`: the cap on one sleep.
pub(crate) const REJOIN_MAX_DELAY: Duration = Duration::from_millis(5000);
/// The text that makes a CreateDataChannel failure non-retryable.
pub(crate) const ALREADY_TERMINATED: &str = "Session is already terminated";

/// A dummy SigV4 `Authorization` header: the real agent signs with its instance role; the
/// emulator's service accepts any signature and only logs the access key id.
const DUMMY_AUTHORIZATION: &str = "AWS4-HMAC-SHA256 Credential=AKIAEMULATORAGENT/20240101/us-east-1/ssmmessages/aws4_request, SignedHeaders=host;x-amz-date, Signature=0000000000000000000000000000000000000000000000000000000000000000";
const DUMMY_AMZ_DATE: &str = "20240101T000000Z";

/// Why opening the data channel failed. The texts never contain a token.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MgsError {
    /// The HTTP request could not be made or its body read.
    #[error("CreateDataChannel request failed: {0}")]
    Http(String),
    /// The CreateDataChannel call did not answer within 15 s.
    #[error("CreateDataChannel timed out after {0:?}")]
    Timeout(Duration),
    /// CreateDataChannel answered something other than 201.
    #[error("CreateDataChannel failed with status {status}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The response body, as text.
        body: String,
    },
    /// The 201 response had no `<TokenValue>`.
    #[error("CreateDataChannel response has no TokenValue")]
    NoToken,
    /// The WebSocket could not be opened or the OpenDataChannel frame not sent.
    #[error("failed to open data channel websocket: {0}")]
    WebSocket(String),
}

impl MgsError {
    /// Whether the rejoin must stop at once (the agent's non-retryable error).
    pub(crate) fn is_terminal(&self) -> bool {
        self.to_string().contains(ALREADY_TERMINATED)
    }
}

/// Everything needed to (re)open the agent's data channel.
#[derive(Clone)]
pub(crate) struct Mgs {
    http: Client<HttpConnector, Full<Bytes>>,
    http_base: String,
    ws_base: String,
    session_id: String,
    instance_id: String,
    client_id: String,
}

impl Mgs {
    /// A connector for one session. `client_id` is fixed for the session, like the agent's.
    pub(crate) fn new(
        http_base: &str,
        ws_base: &str,
        session_id: &str,
        instance_id: &str,
        client_id: String,
    ) -> Self {
        Self {
            http: Client::builder(TokioExecutor::new()).build_http(),
            http_base: http_base.trim_end_matches('/').to_owned(),
            ws_base: ws_base.trim_end_matches('/').to_owned(),
            session_id: session_id.to_owned(),
            instance_id: instance_id.to_owned(),
            client_id,
        }
    }

    /// `POST {http_base}/v1/data-channel/{session}`: a fresh token.
    ///
    /// # Errors
    /// Transport failure, timeout, a status other than 201 (the text includes the body), or a
    /// body without a token.
    pub(crate) async fn create_data_channel(&self, request_id: &str) -> Result<String, MgsError> {
        let uri = format!("{}/v1/data-channel/{}", self.http_base, self.session_id);
        let body = serde_json::json!({
            "MessageSchemaVersion": "1.0",
            "RequestId": request_id,
            "ClientId": self.client_id,
        })
        .to_string();
        let request = hyper::Request::post(uri)
            .header("content-type", "application/json")
            .header("authorization", DUMMY_AUTHORIZATION)
            .header("x-amz-date", DUMMY_AMZ_DATE)
            .body(Full::new(Bytes::from(body)))
            .map_err(|err| MgsError::Http(err.to_string()))?;
        let call = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|err| MgsError::Http(err.to_string()))?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|err| MgsError::Http(err.to_string()))?
                .to_bytes();
            Ok::<_, MgsError>((status, body))
        };
        let (status, body) = tokio::time::timeout(CREATE_DATA_CHANNEL_TIMEOUT, call)
            .await
            .map_err(|_| MgsError::Timeout(CREATE_DATA_CHANNEL_TIMEOUT))??;
        let text = String::from_utf8_lossy(&body);
        if status != 201 {
            return Err(MgsError::Status {
                status,
                body: text.into_owned(),
            });
        }
        xml_element(&text, "TokenValue").ok_or(MgsError::NoToken)
    }

    /// Opens the data-channel WebSocket and sends the OpenDataChannel text frame.
    ///
    /// # Errors
    /// The upgrade fails or the text frame cannot be written.
    pub(crate) async fn open(&self, token: &str) -> Result<Ws, MgsError> {
        let url = format!(
            "{}/v1/data-channel/{}?role=publish_subscribe",
            self.ws_base, self.session_id
        );
        let mut request = url
            .into_client_request()
            .map_err(|err| MgsError::WebSocket(err.to_string()))?;
        let headers = request.headers_mut();
        headers.insert(
            "authorization",
            HeaderValue::from_static(DUMMY_AUTHORIZATION),
        );
        headers.insert("x-amz-date", HeaderValue::from_static(DUMMY_AMZ_DATE));
        // Go dials with TCP_NODELAY; so does the model (see the server's listener).
        let (mut ws, _response) = tokio_tungstenite::connect_async_with_config(request, None, true)
            .await
            .map_err(|err| MgsError::WebSocket(ws_error_text(&err)))?;
        let open = OpenDataChannel {
            message_schema_version: OpenDataChannel::SCHEMA_VERSION.to_owned(),
            request_id: uuid::Uuid::new_v4().to_string(),
            token_value: token.to_owned(),
            client_instance_id: Some(self.instance_id.clone()),
            client_id: self.client_id.clone(),
            client_version: None,
        };
        ws.send(Message::text(open.to_json()))
            .await
            .map_err(|err| MgsError::WebSocket(ws_error_text(&err)))?;
        Ok(ws)
    }

    /// One rejoin attempt: new token, new socket, OpenDataChannel.
    ///
    /// # Errors
    /// As [`create_data_channel`](Self::create_data_channel) and [`open`](Self::open).
    pub(crate) async fn connect(&self, request_id: &str) -> Result<Ws, MgsError> {
        let token = self.create_data_channel(request_id).await?;
        self.open(&token).await
    }
}

/// An upgrade error's text, with the HTTP body if the server rejected the upgrade.
fn ws_error_text(err: &tungstenite::Error) -> String {
    match err {
        tungstenite::Error::Http(response) => {
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            format!("bad handshake: HTTP {} {body}", response.status())
        }
        other => other.to_string(),
    }
}

/// The text of the first `<name>…</name>` element, with the five predefined XML entities
/// decoded. The CreateDataChannel response is flat, so no XML parser is needed.
fn xml_element(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    let value = xml[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&");
    Some(value)
}

/// The sleeps between the agent's rejoin attempts for an initial delay `d` (drawn once per
/// outage from [100, 199] ms): d, 2d, 4d, 8d, 16d, each capped at 5 s (and staying at the cap
/// once reached, as the agent's `ExponentialRetryer` does).
pub(crate) fn rejoin_delays(initial: Duration) -> Vec<Duration> {
    let mut delays = Vec::with_capacity(REJOIN_ATTEMPTS - 1);
    let mut delay = initial;
    for _ in 1..REJOIN_ATTEMPTS {
        delays.push(delay.min(REJOIN_MAX_DELAY));
        delay = delay.saturating_mul(2);
    }
    delays
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_read_from_the_xml_body() {
        let xml = "<CreateDataChannelResponse><MessageSchemaVersion>1.0</MessageSchemaVersion><TokenValue>a&amp;b</TokenValue></CreateDataChannelResponse>";
        assert_eq!(xml_element(xml, "TokenValue").as_deref(), Some("a&b"));
        assert_eq!(
            xml_element(xml, "MessageSchemaVersion").as_deref(),
            Some("1.0")
        );
        assert_eq!(xml_element(xml, "Missing"), None);
    }

    #[test]
    fn already_terminated_is_terminal() {
        let err = MgsError::Status {
            status: 400,
            body: "{\"message\":\"Session is already terminated\"}".into(),
        };
        assert!(err.is_terminal());
        assert!(err.to_string().contains("400"));
        assert!(!MgsError::NoToken.is_terminal());
    }

    #[test]
    fn rejoin_delays_double_and_cap() {
        let d = Duration::from_millis(150);
        assert_eq!(
            rejoin_delays(d),
            [150, 300, 600, 1200, 2400].map(Duration::from_millis)
        );
        assert_eq!(
            rejoin_delays(Duration::from_millis(400)),
            [400, 800, 1600, 3200, 5000].map(Duration::from_millis)
        );
    }
}
