//! A scripted raw SSM client (and, for relay tests, a raw agent) built on the frame codec and
//! tokio-tungstenite. It does exactly what a test tells it to, so tests can assert on bytes.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use ssm_emulator::events::Event;
use ssm_emulator::{AgentSettings, Emulator, EmulatorConfig, FaultSettings};
use ssm_tether_protocol::message::{FLAGS_CONTROL, SCHEMA_VERSION};
use ssm_tether_protocol::payload::{
    AcknowledgeContent, ActionStatus, ActionType, HandshakeRequest, HandshakeResponse,
    OpenDataChannel, ProcessedClientAction,
};
use ssm_tether_protocol::{ClientMessage, MessageType, PayloadType};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

pub const CLIENT_VERSION: &str = "1.2.650.0";
pub const WAIT: Duration = Duration::from_secs(10);

/// An emulator config for tests: no pacing, seeded, given faults.
pub fn config(faults: FaultSettings) -> EmulatorConfig {
    EmulatorConfig {
        seed: 7,
        agent: AgentSettings {
            pacing: Duration::ZERO,
            ..AgentSettings::default()
        },
        faults,
        ..EmulatorConfig::default()
    }
}

/// The same, with no agent model (the test scripts the agent side).
pub fn config_without_agent(faults: FaultSettings) -> EmulatorConfig {
    let mut config = config(faults);
    config.agent.enabled = false;
    config
}

pub async fn start(config: EmulatorConfig) -> Emulator {
    Emulator::start(config).await.expect("emulator starts")
}

// ---------------------------------------------------------------------------------------------
// HTTP

pub struct HttpResponse {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

impl HttpResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

pub async fn http(
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: impl Into<Bytes>,
) -> HttpResponse {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = hyper::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let request = request.body(Full::new(body.into())).expect("request");
    let response = client.request(request).await.expect("http request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A JSON-1.1 SSM call with a dummy SigV4 Authorization header for `access_key`.
pub async fn ssm_call(
    endpoint: &str,
    operation: &str,
    access_key: &str,
    body: Value,
) -> HttpResponse {
    http(
        "POST",
        &format!("{endpoint}/"),
        &[
            ("content-type", "application/x-amz-json-1.1".to_owned()),
            ("x-amz-target", format!("AmazonSSM.{operation}")),
            ("x-amz-date", "20240101T000000Z".to_owned()),
            (
                "authorization",
                format!(
                    "AWS4-HMAC-SHA256 Credential={access_key}/20240101/us-east-1/ssm/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=0000"
                ),
            ),
        ],
        body.to_string(),
    )
    .await
}

#[derive(Debug, Clone)]
pub struct Started {
    pub session_id: String,
    pub token: String,
    pub stream_url: String,
}

impl Started {
    fn from(response: &HttpResponse) -> Self {
        assert_eq!(response.status, 200, "{}", response.body);
        let json = response.json();
        Self {
            session_id: json["SessionId"].as_str().expect("SessionId").to_owned(),
            token: json["TokenValue"].as_str().expect("TokenValue").to_owned(),
            stream_url: json["StreamUrl"].as_str().expect("StreamUrl").to_owned(),
        }
    }
}

/// StartSession for AWS-StartPortForwardingSession to `port`.
pub async fn start_session(endpoint: &str, port: u16) -> Started {
    let response = ssm_call(
        endpoint,
        "StartSession",
        "AKIDTEST",
        json!({
            "Target": "i-0123456789abcdef0",
            "DocumentName": "AWS-StartPortForwardingSession",
            "Parameters": {"portNumber": [port.to_string()], "localPortNumber": ["0"]},
        }),
    )
    .await;
    Started::from(&response)
}

pub async fn resume_session(endpoint: &str, session_id: &str, access_key: &str) -> HttpResponse {
    ssm_call(
        endpoint,
        "ResumeSession",
        access_key,
        json!({"SessionId": session_id}),
    )
    .await
}

pub async fn resumed(endpoint: &str, session_id: &str) -> Started {
    Started::from(&resume_session(endpoint, session_id, "AKIDTEST").await)
}

// ---------------------------------------------------------------------------------------------
// Data channel

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms")
}

/// Dials a data-channel URL; `Err` carries the HTTP status of a refused upgrade.
pub async fn dial(url: &str) -> Result<Ws, u16> {
    match tokio_tungstenite::connect_async(url).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(err) => panic!("dial {url}: {err}"),
    }
}

/// One data-channel endpoint (client or agent role) with its own sequence counter.
pub struct Endpoint {
    pub ws: Ws,
    pub next_seq: i64,
    pub stream_type: MessageType,
    /// Frames received and not consumed yet.
    pub pending: std::collections::VecDeque<ClientMessage>,
    /// Next expected incoming stream-data sequence number.
    pub expected: i64,
    /// Out-of-order incoming stream data.
    pub reorder: BTreeMap<i64, ClientMessage>,
    /// In-order incoming stream data that was not Output (flags, handshake).
    pub others: Vec<ClientMessage>,
}

impl Endpoint {
    /// Dials `url` and sends the client's OpenDataChannel (with ClientVersion).
    pub async fn client(url: &str, token: &str) -> Self {
        let ws = dial(url).await.expect("upgrade accepted");
        let mut endpoint = Self::new(ws, MessageType::InputStreamData);
        endpoint
            .send_open(OpenDataChannel {
                message_schema_version: "1.0".into(),
                request_id: Uuid::new_v4().to_string(),
                token_value: token.to_owned(),
                client_instance_id: None,
                client_id: Uuid::new_v4().to_string(),
                client_version: Some(CLIENT_VERSION.into()),
            })
            .await;
        endpoint
    }

    /// Acts as the agent: CreateDataChannel for a token, dial without cell, OpenDataChannel
    /// with ClientInstanceId.
    pub async fn agent(endpoint: &str, session_id: &str) -> Self {
        let response = http(
            "POST",
            &format!("{endpoint}/v1/data-channel/{session_id}"),
            &[("content-type", "application/json".to_owned())],
            json!({"MessageSchemaVersion":"1.0","RequestId":Uuid::new_v4().to_string(),"ClientId":Uuid::new_v4().to_string()}).to_string(),
        )
        .await;
        assert_eq!(response.status, 201, "{}", response.body);
        let token = between(&response.body, "<TokenValue>", "</TokenValue>").expect("token");
        let ws_base = endpoint.replace("http://", "ws://");
        let ws = dial(&format!(
            "{ws_base}/v1/data-channel/{session_id}?role=publish_subscribe"
        ))
        .await
        .expect("agent upgrade");
        let mut me = Self::new(ws, MessageType::OutputStreamData);
        me.send_open(OpenDataChannel {
            message_schema_version: "1.0".into(),
            request_id: Uuid::new_v4().to_string(),
            token_value: token,
            client_instance_id: Some("i-0123456789abcdef0".into()),
            client_id: Uuid::new_v4().to_string(),
            client_version: None,
        })
        .await;
        me
    }

    pub fn new(ws: Ws, stream_type: MessageType) -> Self {
        Self {
            ws,
            next_seq: 0,
            stream_type,
            pending: Default::default(),
            expected: 0,
            reorder: BTreeMap::new(),
            others: Vec::new(),
        }
    }

    pub async fn send_open(&mut self, open: OpenDataChannel) {
        self.ws
            .send(Message::Text(open.to_json().into()))
            .await
            .expect("send open");
    }

    pub async fn send_raw(&mut self, frame: Bytes) {
        self.ws.send(Message::Binary(frame)).await.expect("send");
    }

    pub async fn send(&mut self, message: &ClientMessage) {
        self.send_raw(message.encode()).await;
    }

    /// A stream-data message with the next sequence number (not sent).
    pub fn data(&mut self, payload_type: PayloadType, payload: impl Into<Bytes>) -> ClientMessage {
        let seq = self.next_seq;
        self.next_seq += 1;
        ClientMessage {
            message_type: self.stream_type.clone(),
            schema_version: SCHEMA_VERSION,
            created_date: now_ms(),
            sequence_number: seq,
            flags: u64::from(seq == 0 && self.stream_type == MessageType::OutputStreamData),
            message_id: Uuid::new_v4(),
            payload_type,
            payload: payload.into(),
        }
    }

    pub async fn send_data(
        &mut self,
        payload_type: PayloadType,
        payload: impl Into<Bytes>,
    ) -> ClientMessage {
        let message = self.data(payload_type, payload);
        self.send(&message).await;
        message
    }

    pub async fn ack(&mut self, message: &ClientMessage) {
        let ack = AcknowledgeContent::for_message(message).into_message(now_ms(), Uuid::new_v4());
        self.send(&ack).await;
    }

    /// The next binary frame, decoded (digest must be valid), or `None` after `timeout`.
    pub async fn recv_within(&mut self, timeout: Duration) -> Option<ClientMessage> {
        if let Some(message) = self.pending.pop_front() {
            return Some(message);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match next {
                Ok(Message::Binary(frame)) => {
                    let decoded = ClientMessage::decode(frame).expect("frame decodes");
                    assert!(decoded.digest_valid, "digest must be valid");
                    assert_eq!(decoded.header_length, 116);
                    assert_ne!(decoded.message.created_date, 0);
                    return Some(decoded.message);
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    pub async fn recv(&mut self) -> ClientMessage {
        self.recv_within(WAIT)
            .await
            .expect("a frame within the wait")
    }

    /// Waits for a frame matching `pred`, keeping the others for later.
    pub async fn recv_matching(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&ClientMessage) -> bool,
    ) -> Option<ClientMessage> {
        if let Some(i) = self.pending.iter().position(&mut pred) {
            return self.pending.remove(i);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut skipped = Vec::new();
        let found = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await {
                Some(m) if pred(&m) => break Some(m),
                Some(m) => skipped.push(m),
                None => break None,
            }
        };
        self.pending.extend(skipped);
        found
    }

    /// Waits for the socket to be closed by the service; returns the close code if any.
    pub async fn closed(&mut self, timeout: Duration) -> Option<Option<u16>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?
            {
                None | Some(Err(_)) => return Some(None),
                Some(Ok(Message::Close(frame))) => return Some(frame.map(|f| u16::from(f.code))),
                Some(Ok(Message::Binary(frame))) => {
                    if let Ok(decoded) = ClientMessage::decode(frame) {
                        self.pending.push_back(decoded.message);
                    }
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// As the client: ack the HandshakeRequest, answer it, ack HandshakeComplete.
    pub async fn handshake(&mut self) -> HandshakeRequest {
        self.handshake_as(CLIENT_VERSION).await
    }

    /// The handshake, reporting `client_version` (the agent picks mux or basic from it).
    pub async fn handshake_as(&mut self, client_version: &str) -> HandshakeRequest {
        let request = self
            .recv_matching(WAIT, |m| m.payload_type == PayloadType::HANDSHAKE_REQUEST)
            .await
            .expect("HandshakeRequest");
        assert_eq!(request.message_type, MessageType::OutputStreamData);
        assert_eq!(request.sequence_number, 0);
        self.ack(&request).await;
        let parsed = HandshakeRequest::from_payload(&request.payload).expect("request parses");
        let response = HandshakeResponse {
            client_version: client_version.into(),
            processed_client_actions: vec![ProcessedClientAction {
                action_type: ActionType::SessionType,
                action_status: ActionStatus::SUCCESS,
                action_result: Value::Null,
                error: String::new(),
            }],
            errors: None,
        };
        let message = self.data(PayloadType::HANDSHAKE_RESPONSE, response.to_payload());
        self.send(&message).await;
        let complete = self
            .recv_matching(WAIT, |m| m.payload_type == PayloadType::HANDSHAKE_COMPLETE)
            .await
            .expect("HandshakeComplete");
        assert_eq!(complete.sequence_number, 1);
        self.ack(&complete).await;
        self.expected = 2;
        parsed
    }

    /// Receives agent stream data in sequence order, acking everything (duplicates too),
    /// until at least `len` Output bytes arrived. Non-Output payloads delivered in order are
    /// kept in `others`.
    pub async fn read_output(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < len {
            let message = self.recv().await;
            if message.message_type != MessageType::OutputStreamData {
                continue;
            }
            self.ack(&message).await;
            if message.sequence_number >= self.expected {
                self.reorder.insert(message.sequence_number, message);
            }
            while let Some(next) = self.reorder.remove(&self.expected) {
                self.expected += 1;
                if next.payload_type == PayloadType::OUTPUT {
                    out.extend_from_slice(&next.payload);
                } else {
                    self.others.push(next);
                }
            }
        }
        out
    }

    /// Sends a stream-data message and resends the same bytes until the agent acks it
    /// (the agent leaves data unacked until its port session is ready).
    pub async fn send_reliably(
        &mut self,
        payload_type: PayloadType,
        payload: impl Into<Bytes>,
    ) -> ClientMessage {
        let message = self.data(payload_type, payload);
        let frame = message.encode();
        let deadline = tokio::time::Instant::now() + WAIT;
        let seq = message.sequence_number;
        loop {
            self.send_raw(frame.clone()).await;
            let acked = self
                .recv_matching(Duration::from_millis(300), |m| {
                    m.message_type == MessageType::Acknowledge
                        && AcknowledgeContent::from_payload(&m.payload)
                            .is_ok_and(|a| a.sequence_number == seq)
                })
                .await;
            if acked.is_some() {
                return message;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "seq {seq} never acked"
            );
        }
    }

    /// Reads agent Output through an smux decoder until `done` says the frames suffice.
    pub async fn smux_until(
        &mut self,
        decoder: &mut ssm_tether_protocol::smux::FrameDecoder,
        mut done: impl FnMut(&[ssm_tether_protocol::smux::Frame]) -> bool,
    ) -> Vec<ssm_tether_protocol::smux::Frame> {
        let mut frames = Vec::new();
        while !done(&frames) {
            let bytes = self.read_output(1).await;
            decoder.push(&bytes);
            while let Some(frame) = decoder.next_frame().expect("valid smux") {
                frames.push(frame);
            }
        }
        frames
    }
}

/// The data bytes of the PSH frames for `sid`, concatenated.
pub fn psh_data(frames: &[ssm_tether_protocol::smux::Frame], sid: u32) -> Vec<u8> {
    frames
        .iter()
        .filter(|f| f.stream_id == sid && f.command == ssm_tether_protocol::smux::Command::Psh)
        .flat_map(|f| f.data.iter().copied())
        .collect()
}

pub fn between(text: &str, start: &str, end: &str) -> Option<String> {
    let from = text.find(start)? + start.len();
    let to = text[from..].find(end)? + from;
    Some(text[from..to].to_owned())
}

pub fn control_message(kind: MessageType, payload: Bytes) -> ClientMessage {
    ClientMessage {
        message_type: kind,
        schema_version: SCHEMA_VERSION,
        created_date: now_ms(),
        sequence_number: 0,
        flags: FLAGS_CONTROL,
        message_id: Uuid::new_v4(),
        payload_type: PayloadType::UNSPECIFIED,
        payload,
    }
}

/// A TCP echo server on loopback; returns its port.
pub async fn echo_server() -> u16 {
    ssm_emulator::destination::echo_server()
        .await
        .expect("bind echo")
        .port()
}

/// A port with nothing listening.
pub async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    listener.local_addr().expect("addr").port()
}

/// The detail of the agent's first event `what`, waited for up to [`WAIT`].
pub async fn agent_event(emulator: &Emulator, what: &'static str) -> String {
    let record = emulator
        .events()
        .wait_for(
            WAIT,
            |e| matches!(e, Event::Agent { what: w, .. } if w == what),
        )
        .await
        .unwrap_or_else(|| panic!("agent event {what}"));
    match &record.event {
        Event::Agent { detail, .. } => detail.clone(),
        _ => unreachable!(),
    }
}
