//! End-to-end tests of the agent model against a tiny fake MGS (CreateDataChannel + the
//! data-channel WebSocket) and real TCP destinations on loopback. The test plays the client
//! directly on the agent's socket, so every frame the agent writes is checked byte-level.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{self, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use bytes::{Bytes, BytesMut};
use serde_json::Value;
use ssm_tether_protocol::payload::{
    AcknowledgeContent, ActionStatus, ActionType, AgentSessionState, Flag, HandshakeComplete,
    HandshakeRequest, HandshakeResponse, OpenDataChannel, ProcessedClientAction, SessionState,
};
use ssm_tether_protocol::smux::{Command, Frame, FrameDecoder};
use ssm_tether_protocol::{ClientMessage, MessageType, PayloadType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc};
use uuid::Uuid;

use super::*;
use crate::events::Event;

const WAIT: Duration = Duration::from_secs(10);
const SESSION: &str = "user-0123456789abcdef0";
const INSTANCE: &str = "i-0123456789abcdef0";

/// What the fake service should do with the next CreateDataChannel calls.
#[derive(Default)]
struct FakeState {
    terminated: AtomicBool,
    unavailable: AtomicBool,
    posts: AtomicUsize,
}

/// A fake MGS: answers CreateDataChannel with a token and hands every data-channel socket
/// (after its OpenDataChannel frame) to the test.
struct FakeMgs {
    http_base: String,
    ws_base: String,
    state: Arc<FakeState>,
    sockets: Mutex<mpsc::UnboundedReceiver<(OpenDataChannel, WebSocket)>>,
}

impl FakeMgs {
    async fn start() -> Self {
        let state = Arc::new(FakeState::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let post_state = state.clone();
        let app = axum::Router::new().route(
            "/v1/data-channel/{id}",
            axum::routing::get(move |upgrade: WebSocketUpgrade| {
                let tx = tx.clone();
                async move {
                    upgrade.on_upgrade(move |mut socket| async move {
                        while let Some(Ok(message)) = socket.recv().await {
                            if let ws::Message::Text(text) = message {
                                let open = OpenDataChannel::from_json(&text).expect("open frame");
                                let _ = tx.send((open, socket));
                                return;
                            }
                        }
                    })
                }
            })
            .post(move |body: String| {
                let state = post_state.clone();
                async move {
                    let n = state.posts.fetch_add(1, Ordering::SeqCst) + 1;
                    let request: Value = serde_json::from_str(&body).expect("json body");
                    assert_eq!(request["MessageSchemaVersion"], "1.0");
                    if state.unavailable.load(Ordering::SeqCst) {
                        return (StatusCode::SERVICE_UNAVAILABLE, "try later".to_owned())
                            .into_response();
                    }
                    if state.terminated.load(Ordering::SeqCst) {
                        return (
                            StatusCode::BAD_REQUEST,
                            "<Error><Message>Session is already terminated</Message></Error>"
                                .to_owned(),
                        )
                            .into_response();
                    }
                    (
                        StatusCode::CREATED,
                        format!(
                            "<CreateDataChannelResponse><MessageSchemaVersion>1.0</MessageSchemaVersion><TokenValue>token-{n}</TokenValue></CreateDataChannelResponse>"
                        ),
                    )
                        .into_response()
                }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            http_base: format!("http://{addr}"),
            ws_base: format!("ws://{addr}"),
            state,
            sockets: Mutex::new(rx),
        }
    }

    async fn accept(&self) -> (OpenDataChannel, Peer) {
        let (open, socket) = tokio::time::timeout(WAIT, self.sockets.lock().await.recv())
            .await
            .expect("agent connects in time")
            .expect("server alive");
        (open, Peer { socket, seq: 0 })
    }
}

/// The test's side of the agent's socket: a minimal client.
struct Peer {
    socket: WebSocket,
    /// The client's next stream-data sequence number.
    seq: i64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
}

impl Peer {
    /// The next binary frame from the agent, decoded (digest checked).
    async fn recv(&mut self) -> ClientMessage {
        loop {
            let message = tokio::time::timeout(WAIT, self.socket.recv())
                .await
                .expect("agent frame in time")
                .expect("socket open")
                .expect("socket ok");
            match message {
                ws::Message::Binary(frame) => {
                    return ClientMessage::decode(frame)
                        .expect("decodes")
                        .verified()
                        .expect("digest valid");
                }
                ws::Message::Close(frame) => panic!("agent closed the socket: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// The next message that is not an acknowledge.
    async fn recv_data(&mut self) -> ClientMessage {
        loop {
            let message = self.recv().await;
            if message.message_type != MessageType::Acknowledge {
                return message;
            }
        }
    }

    async fn send(&mut self, message: &ClientMessage) {
        self.socket
            .send(ws::Message::Binary(message.encode()))
            .await
            .expect("send");
    }

    async fn ack(&mut self, message: &ClientMessage) {
        let ack = AcknowledgeContent::for_message(message).into_message(now_ms(), Uuid::new_v4());
        self.send(&ack).await;
    }

    async fn send_stream(&mut self, payload_type: PayloadType, payload: Bytes) -> ClientMessage {
        let message = ClientMessage {
            message_type: MessageType::InputStreamData,
            schema_version: 1,
            created_date: now_ms(),
            sequence_number: self.seq,
            flags: 0,
            message_id: Uuid::new_v4(),
            payload_type,
            payload,
        };
        self.seq += 1;
        self.send(&message).await;
        message
    }

    async fn send_service(&mut self, message_type: MessageType, payload: Bytes) {
        let message = ClientMessage {
            message_type,
            schema_version: 1,
            created_date: now_ms(),
            sequence_number: 0,
            flags: 0,
            message_id: Uuid::new_v4(),
            payload_type: PayloadType::UNSPECIFIED,
            payload,
        };
        self.send(&message).await;
    }

    /// Answers the handshake as the official plugin does; returns the HandshakeRequest.
    async fn handshake(&mut self, client_version: &str) -> HandshakeRequest {
        let state = self.recv().await;
        assert_eq!(state.message_type, MessageType::AgentSessionState);
        assert_eq!(
            (state.sequence_number, state.flags, state.payload_type),
            (0, 3, PayloadType::UNSPECIFIED)
        );
        let state = AgentSessionState::from_payload(&state.payload).expect("state json");
        assert_eq!(state.session_state, SessionState::Connected);
        assert_eq!(state.session_id, SESSION);

        let request = self.recv().await;
        assert_eq!(request.message_type, MessageType::OutputStreamData);
        assert_eq!(
            (request.sequence_number, request.flags, request.payload_type),
            (0, 1, PayloadType::HANDSHAKE_REQUEST)
        );
        self.ack(&request).await;
        let response = HandshakeResponse {
            client_version: client_version.to_owned(),
            processed_client_actions: vec![ProcessedClientAction {
                action_type: ActionType::SessionType,
                action_status: ActionStatus::SUCCESS,
                action_result: Value::Null,
                error: String::new(),
            }],
            errors: None,
        };
        self.send_stream(PayloadType::HANDSHAKE_RESPONSE, response.to_payload())
            .await;
        // The ack of the response and HandshakeComplete may come in either order.
        let mut acked = false;
        let mut complete = None;
        while !acked || complete.is_none() {
            let message = self.recv().await;
            match message.message_type {
                MessageType::Acknowledge => {
                    let ack = AcknowledgeContent::from_payload(&message.payload).expect("ack");
                    assert_eq!(ack.sequence_number, 0);
                    assert_eq!(ack.message_type, "input_stream_data");
                    assert_eq!((message.flags, message.sequence_number), (3, 0));
                    acked = true;
                }
                MessageType::OutputStreamData => complete = Some(message),
                other => panic!("unexpected {other}"),
            }
        }
        let complete = complete.expect("complete");
        assert_eq!(
            (
                complete.sequence_number,
                complete.flags,
                complete.payload_type
            ),
            (1, 0, PayloadType::HANDSHAKE_COMPLETE)
        );
        let payload = HandshakeComplete::from_payload(&complete.payload).expect("complete json");
        assert_eq!(payload.customer_message, "");
        assert!(payload.handshake_time_to_complete > 0);
        self.ack(&complete).await;
        HandshakeRequest::from_payload(&request.payload).expect("request json")
    }

    /// Reads agent Output messages (acking each) into `decoder` until `done` says so.
    async fn read_smux_until(
        &mut self,
        decoder: &mut FrameDecoder,
        frames: &mut Vec<Frame>,
        mut done: impl FnMut(&[Frame]) -> bool,
    ) {
        while !done(frames) {
            let message = self.recv_data().await;
            self.ack(&message).await;
            match message.payload_type {
                PayloadType::OUTPUT => {
                    assert!(message.payload.len() <= 1024);
                    decoder.push(&message.payload);
                    while let Some(frame) = decoder.next_frame().expect("valid smux") {
                        frames.push(frame);
                    }
                }
                PayloadType::FLAG => frames.push(Frame {
                    command: Command::Nop,
                    stream_id: u32::MAX
                        - Flag::from_payload(&message.payload).expect("flag").value(),
                    data: Bytes::new(),
                }),
                other => panic!("unexpected payload type {other:?}"),
            }
        }
    }
}

async fn echo_server() -> u16 {
    crate::destination::echo_server()
        .await
        .expect("bind echo")
        .port()
}

fn config(fake: &FakeMgs, events: &EventLog, port: u16, kind: Option<&str>) -> AgentConfig {
    let mut properties = vec![
        ("portNumber".to_owned(), Value::from(port.to_string())),
        ("localPortNumber".to_owned(), Value::from("0")),
    ];
    if let Some(kind) = kind {
        properties.push(("type".to_owned(), Value::from(kind)));
    }
    let mut config = AgentConfig::new(
        SESSION,
        INSTANCE,
        fake.http_base.clone(),
        fake.ws_base.clone(),
        events.clone(),
    )
    .with_properties(properties);
    config.pacing = Duration::ZERO;
    config.seed = 7;
    config
}

fn smux_bytes(frames: &[Frame]) -> Bytes {
    let mut buf = BytesMut::new();
    for frame in frames {
        frame.encode_into(&mut buf);
    }
    buf.freeze()
}

fn has_event(events: &EventLog, what: &str) -> bool {
    events
        .snapshot()
        .iter()
        .any(|r| matches!(&r.event, Event::Agent { what: w, .. } if w == what))
}

fn psh_data(frames: &[Frame], sid: u32) -> Vec<u8> {
    frames
        .iter()
        .filter(|f| f.command == Command::Psh && f.stream_id == sid)
        .flat_map(|f| f.data.iter().copied())
        .collect()
}

#[tokio::test]
async fn mux_session_echoes_through_a_real_destination_and_terminates() {
    let fake = FakeMgs::start().await;
    let events = EventLog::default();
    let port = echo_server().await;
    let agent = spawn(config(&fake, &events, port, Some("LocalPortForwarding")));
    let (open, mut peer) = fake.accept().await;
    assert_eq!(open.client_instance_id.as_deref(), Some(INSTANCE));
    assert_eq!(open.token_value, "token-1");
    assert_eq!(open.client_version, None);

    let request = peer.handshake("1.2.650.0").await;
    assert_eq!(request.agent_version, DEFAULT_AGENT_VERSION);
    let session = request
        .session_type()
        .expect("valid")
        .expect("session type");
    assert_eq!(session.session_type, "Port");
    assert_eq!(session.property("type"), Some("LocalPortForwarding"));

    // Open two streams in one message, with data, as a smux client would.
    let payload = smux_bytes(&[
        Frame::syn(3),
        Frame::psh(3, Bytes::from_static(b"hello")).expect("small"),
        Frame::syn(5),
    ]);
    peer.send_stream(PayloadType::OUTPUT, payload).await;
    // A large write on stream 5 split over several messages with no alignment.
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut stream = BytesMut::new();
    ssm_tether_protocol::smux::encode_data(5, &big, 32 * 1024, &mut stream);
    for chunk in stream.chunks(1000) {
        peer.send_stream(PayloadType::OUTPUT, Bytes::copy_from_slice(chunk))
            .await;
    }
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    peer.read_smux_until(&mut decoder, &mut frames, |f| {
        psh_data(f, 3) == b"hello" && psh_data(f, 5).len() >= big.len()
    })
    .await;
    assert_eq!(psh_data(&frames, 5), big);
    assert!(frames.iter().all(|f| f.data.len() <= 32 * 1024));

    // Client FIN on 3: the destination closes and the agent answers FIN.
    peer.send_stream(PayloadType::OUTPUT, Frame::fin(3).encode())
        .await;
    peer.read_smux_until(&mut decoder, &mut frames, |f| {
        f.iter()
            .any(|f| f.command == Command::Fin && f.stream_id == 3)
    })
    .await;

    // TerminateSession ends the session: Terminating, then a normal close.
    let flag = peer
        .send_stream(PayloadType::FLAG, Flag::TerminateSession.to_payload())
        .await;
    loop {
        let message = peer.recv().await;
        if message.message_type == MessageType::AgentSessionState {
            let state = AgentSessionState::from_payload(&message.payload).expect("state");
            assert_eq!(state.session_state, SessionState::Terminating);
            assert_eq!((message.sequence_number, message.flags), (0, 3));
            break;
        }
        if message.message_type == MessageType::Acknowledge {
            let ack = AcknowledgeContent::from_payload(&message.payload).expect("ack");
            if ack.sequence_number == flag.sequence_number {
                continue;
            }
        }
    }
    assert_eq!(agent.finished().await, AgentOutcome::TerminatedByClient);
    assert!(agent.is_finished());
    assert!(has_event(&events, "terminated"));
    assert!(has_event(&events, "dial_ok"));
    agent.shutdown().await;
}

#[tokio::test]
async fn refused_destination_gets_connect_to_port_error_and_fin() {
    let fake = FakeMgs::start().await;
    let events = EventLog::default();
    let port = echo_server().await;
    let config = config(&fake, &events, port, Some("LocalPortForwarding"));
    config
        .controls
        .refuse_destination
        .store(true, Ordering::SeqCst);
    let agent = spawn(config);
    let (_, mut peer) = fake.accept().await;
    peer.handshake("1.2.650.0").await;
    peer.send_stream(PayloadType::OUTPUT, Frame::syn(3).encode())
        .await;
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    peer.read_smux_until(&mut decoder, &mut frames, |f| {
        f.iter()
            .any(|f| f.command == Command::Fin && f.stream_id == 3)
    })
    .await;
    // The flag (recorded by the reader as a pseudo-frame) comes before the FIN.
    let flag_at = frames
        .iter()
        .position(|f| f.stream_id == u32::MAX - 3)
        .expect("ConnectToPortError flag");
    let fin_at = frames
        .iter()
        .position(|f| f.command == Command::Fin)
        .expect("fin");
    assert!(flag_at < fin_at);
    assert!(has_event(&events, "dial_failed"));
    agent.shutdown().await;
}

#[tokio::test]
async fn basic_mode_forwards_raw_bytes_and_redials_after_disconnect() {
    let fake = FakeMgs::start().await;
    let events = EventLog::default();
    let port = echo_server().await;
    let agent = spawn(config(&fake, &events, port, Some("LocalPortForwarding")));
    let (_, mut peer) = fake.accept().await;
    // An old client: basic mode.
    peer.handshake("1.1.61.0").await;
    let mut echoed = Vec::new();
    // Until the first dial completes the agent leaves Output unacked; resend until acked.
    let first = peer
        .send_stream(PayloadType::OUTPUT, Bytes::from_static(b"ping"))
        .await;
    let mut last_send = tokio::time::Instant::now();
    loop {
        let message = peer.recv().await;
        match message.message_type {
            MessageType::OutputStreamData => {
                peer.ack(&message).await;
                echoed.extend_from_slice(&message.payload);
                if echoed == b"ping" {
                    break;
                }
            }
            _ if last_send.elapsed() > Duration::from_millis(200) => {
                peer.send(&first).await;
                last_send = tokio::time::Instant::now();
            }
            _ => {}
        }
    }
    peer.send_stream(PayloadType::FLAG, Flag::DisconnectToPort.to_payload())
        .await;
    peer.send_stream(PayloadType::OUTPUT, Bytes::from_static(b"again"))
        .await;
    let mut echoed = Vec::new();
    while echoed != b"again" {
        let message = peer.recv_data().await;
        peer.ack(&message).await;
        echoed.extend_from_slice(&message.payload);
    }
    assert!(has_event(&events, "redial"));
    agent.shutdown().await;
}

#[tokio::test]
async fn rejoins_after_close_bye_and_resends_what_was_lost() {
    let fake = FakeMgs::start().await;
    let events = EventLog::default();
    let port = echo_server().await;
    let agent = spawn(config(&fake, &events, port, Some("LocalPortForwarding")));
    let (_, mut peer) = fake.accept().await;
    peer.handshake("1.2.650.0").await;
    peer.send_stream(PayloadType::OUTPUT, Frame::syn(3).encode())
        .await;
    // Recycle: close 1000 Bye. The agent rejoins with a new token and keeps its state.
    let _ = peer
        .socket
        .send(ws::Message::Close(Some(ws::CloseFrame {
            code: 1000,
            reason: "Bye".into(),
        })))
        .await;
    let seq = peer.seq;
    let (open, mut peer) = fake.accept().await;
    peer.seq = seq;
    assert_eq!(open.token_value, "token-2");
    peer.send_stream(
        PayloadType::OUTPUT,
        Frame::psh(3, Bytes::from_static(b"after"))
            .expect("small")
            .encode(),
    )
    .await;
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    peer.read_smux_until(&mut decoder, &mut frames, |f| psh_data(f, 3) == b"after")
        .await;
    assert!(has_event(&events, "rejoin_ok"));
    assert!(!agent.is_finished());

    // A rejoin after the service terminated the session stops at once.
    fake.state.terminated.store(true, Ordering::SeqCst);
    let posts = fake.state.posts.load(Ordering::SeqCst);
    drop(peer);
    match agent.finished().await {
        AgentOutcome::SessionAlreadyTerminated(text) => {
            assert!(text.contains("Session is already terminated"), "{text}");
        }
        other => panic!("unexpected outcome {other:?}"),
    }
    assert_eq!(
        fake.state.posts.load(Ordering::SeqCst),
        posts + 1,
        "no retry"
    );
    assert!(has_event(&events, "rejoin_gave_up"));
}

#[tokio::test]
async fn duplicates_are_re_acked() {
    let fake = FakeMgs::start().await;
    let events = EventLog::default();
    let port = echo_server().await;
    let agent = spawn(config(&fake, &events, port, Some("LocalPortForwarding")));
    let (_, mut peer) = fake.accept().await;
    peer.handshake("1.2.650.0").await;
    let syn = peer
        .send_stream(PayloadType::OUTPUT, Frame::syn(3).encode())
        .await;
    peer.send(&syn).await;
    let mut acks = 0;
    while acks < 2 {
        let message = peer.recv().await;
        if message.message_type == MessageType::Acknowledge {
            let ack = AcknowledgeContent::from_payload(&message.payload).expect("ack");
            assert_eq!(ack.sequence_number, syn.sequence_number);
            acks += 1;
        }
    }
    assert!(has_event(&events, "duplicate_reacked"));
    agent.shutdown().await;
}

#[tokio::test]
async fn handshake_times_out() {
    let fake = FakeMgs::start().await;
    let events = EventLog::default();
    let mut config = config(&fake, &events, 1, Some("LocalPortForwarding"));
    config.handshake_timeout = Duration::from_millis(300);
    let agent = spawn(config);
    let (_, mut peer) = fake.accept().await;
    let mut saw_terminating = false;
    while !saw_terminating {
        let message = peer.recv().await;
        if message.message_type == MessageType::AgentSessionState {
            let state = AgentSessionState::from_payload(&message.payload).expect("state");
            saw_terminating = state.session_state == SessionState::Terminating;
        }
    }
    match agent.finished().await {
        AgentOutcome::HandshakeFailed(text) => assert!(text.starts_with("Handshake timed out")),
        other => panic!("unexpected outcome {other:?}"),
    }
    assert!(has_event(&events, "handshake_failed"));
}

#[tokio::test]
async fn black_holed_socket_is_detected_by_the_read_deadline() {
    let fake = FakeMgs::start().await;
    let events = EventLog::default();
    let port = echo_server().await;
    let mut config = config(&fake, &events, port, Some("LocalPortForwarding"));
    config.ping_interval = Duration::from_millis(100);
    config.pong_wait = Duration::from_millis(200);
    let agent = spawn(config);
    // Never read: no pongs reach the agent, so its read deadline expires and it rejoins.
    let (_, _silent) = fake.accept().await;
    let (open, _peer) = fake.accept().await;
    assert_eq!(open.token_value, "token-2");
    let lost = events
        .wait_for(WAIT, |e| {
            matches!(e, Event::Agent { what, detail, .. } if what == "socket_lost" && detail == "i/o timeout")
        })
        .await;
    assert!(lost.is_some());
    agent.shutdown().await;
}

#[tokio::test]
async fn channel_closed_stops_the_agent() {
    let fake = FakeMgs::start().await;
    let events = EventLog::default();
    let agent = spawn(config(&fake, &events, 1, Some("LocalPortForwarding")));
    let (_, mut peer) = fake.accept().await;
    peer.handshake("1.2.650.0").await;
    let closed = ssm_tether_protocol::payload::ChannelClosed {
        output: "Session terminated".into(),
        session_id: SESSION.into(),
        ..Default::default()
    };
    peer.send_service(MessageType::ChannelClosed, closed.to_payload())
        .await;
    assert_eq!(
        agent.finished().await,
        AgentOutcome::ChannelClosed("Session terminated".into())
    );
}

#[tokio::test]
async fn rejoin_gives_up_after_six_attempts() {
    let fake = FakeMgs::start().await;
    let events = EventLog::default();
    let agent = spawn(config(&fake, &events, 1, Some("LocalPortForwarding")));
    let (_, mut peer) = fake.accept().await;
    peer.handshake("1.2.650.0").await;
    fake.state.unavailable.store(true, Ordering::SeqCst);
    let posts = fake.state.posts.load(Ordering::SeqCst);
    let started = std::time::Instant::now();
    drop(peer);
    match agent.finished().await {
        AgentOutcome::RejoinGaveUp(text) => assert!(text.contains("503"), "{text}"),
        other => panic!("unexpected outcome {other:?}"),
    }
    let elapsed = started.elapsed();
    assert_eq!(fake.state.posts.load(Ordering::SeqCst), posts + 6);
    // Sleeps d+2d+4d+8d+16d with d in [100, 199] ms.
    assert!(elapsed >= Duration::from_millis(3100), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(8000), "{elapsed:?}");
    let failed = events
        .snapshot()
        .iter()
        .filter(|r| matches!(&r.event, Event::Agent { what, .. } if what == "rejoin_failed"))
        .count();
    assert_eq!(failed, 6);
}

#[tokio::test]
async fn pause_publication_holds_output_until_start_publication() {
    let fake = FakeMgs::start().await;
    let events = EventLog::default();
    // A destination that speaks first, after a delay.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = socket.write_all(b"unsolicited").await;
        let mut rest = Vec::new();
        let _ = socket.read_to_end(&mut rest).await;
    });
    let agent = spawn(config(&fake, &events, port, Some("LocalPortForwarding")));
    let (_, mut peer) = fake.accept().await;
    peer.handshake("1.2.650.0").await;
    peer.send_stream(PayloadType::OUTPUT, Frame::syn(3).encode())
        .await;
    peer.send_service(MessageType::PausePublication, Bytes::new())
        .await;
    // Only the ack of the SYN may arrive while paused.
    let quiet = tokio::time::timeout(Duration::from_millis(800), peer.recv_data()).await;
    assert!(quiet.is_err(), "agent sent data while paused: {quiet:?}");
    peer.send_service(MessageType::StartPublication, Bytes::new())
        .await;
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    peer.read_smux_until(&mut decoder, &mut frames, |f| {
        psh_data(f, 3) == b"unsolicited"
    })
    .await;
    assert!(has_event(&events, "paused"));
    assert!(has_event(&events, "resumed_publication"));
    agent.shutdown().await;
}

#[tokio::test]
async fn paced_output_is_spaced_by_the_pacing_delay() {
    let fake = FakeMgs::start().await;
    let events = EventLog::default();
    let port = echo_server().await;
    let mut config = config(&fake, &events, port, Some("LocalPortForwarding"));
    config.pacing = Duration::from_millis(5);
    let agent = spawn(config);
    let (_, mut peer) = fake.accept().await;
    peer.handshake("1.2.650.0").await;
    let data = vec![1u8; 10 * 1024];
    let payload = smux_bytes(&[
        Frame::syn(3),
        Frame::psh(3, Bytes::from(data.clone())).expect("small"),
    ]);
    for chunk in payload.chunks(1024) {
        peer.send_stream(PayloadType::OUTPUT, Bytes::copy_from_slice(chunk))
            .await;
    }
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    let first = std::time::Instant::now();
    peer.read_smux_until(&mut decoder, &mut frames, |f| {
        psh_data(f, 3).len() == data.len()
    })
    .await;
    // 10 KiB + headers = 11 messages, 5 ms apart: at least 50 ms from the first to the last.
    assert!(
        first.elapsed() >= Duration::from_millis(45),
        "{:?}",
        first.elapsed()
    );
    agent.shutdown().await;
}

/// Throughput of agent→client data with pacing 0. Run in release mode:
/// `cargo test -p ssm-emulator --release agent::tests::throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run in release mode"]
async fn throughput() {
    const TOTAL: usize = 64 * 1024 * 1024;
    let fake = FakeMgs::start().await;
    let events = EventLog::default();
    // A destination that sends TOTAL bytes as fast as it can.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let block = vec![0x5au8; 64 * 1024];
        let mut sent = 0;
        while sent < TOTAL {
            socket.write_all(&block).await.expect("write");
            sent += block.len();
        }
        let mut rest = Vec::new();
        let _ = socket.read_to_end(&mut rest).await;
    });
    let agent = spawn(config(&fake, &events, port, Some("LocalPortForwarding")));
    let (_, mut peer) = fake.accept().await;
    peer.handshake("1.2.650.0").await;
    peer.send_stream(PayloadType::OUTPUT, Frame::syn(3).encode())
        .await;
    let start = std::time::Instant::now();
    let mut decoder = FrameDecoder::new();
    let mut received = 0usize;
    while received < TOTAL {
        let message = peer.recv_data().await;
        // Ack in batches' worth of work like a client: every message.
        peer.ack(&message).await;
        decoder.push(&message.payload);
        while let Some(frame) = decoder.next_frame().expect("valid") {
            received += frame.data.len();
        }
    }
    let elapsed = start.elapsed();
    let rate = received as f64 / elapsed.as_secs_f64() / 1e6;
    println!("agent -> client: {received} bytes in {elapsed:?} = {rate:.1} MB/s");
    let _ = TcpStream::connect(("127.0.0.1", port)).await;
    agent.shutdown().await;
}
