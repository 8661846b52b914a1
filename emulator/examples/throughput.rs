//! Throughput benchmark: one mux session relaying tunnel payload each way through the
//! emulator (relay + agent model) to a real TCP destination on loopback.
//!
//! ```text
//! cargo run --release -p ssm-emulator --example throughput [MEGABYTES]
//! ```
//!
//! Runs with agent pacing 0 (target: at least 30 MB/s each way) and with the real agent's
//! default 1 ms pacing (download ceiling about 1 MB/s: 1024-byte chunks, 1 ms apart), then
//! measures the service's relay alone (scripted agent, no agent model) for comparison.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use ssm_emulator::{AgentSettings, Emulator, EmulatorConfig};
use ssm_tether_protocol::message::SCHEMA_VERSION;
use ssm_tether_protocol::payload::{
    AcknowledgeContent, ActionStatus, ActionType, HandshakeResponse, OpenDataChannel,
    ProcessedClientAction,
};
use ssm_tether_protocol::smux::{self, Frame, FrameDecoder};
use ssm_tether_protocol::{ClientMessage, MessageType, PayloadType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

const CHUNK: usize = 1024;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let megabytes: usize = match std::env::args().nth(1) {
        Some(arg) => arg.parse().context("MEGABYTES must be a number")?,
        None => 32,
    };
    for (pacing, size) in [
        (Duration::ZERO, megabytes << 20),
        // The paced agent is slow by design: keep that run short.
        (Duration::from_millis(1), (megabytes << 20).min(2 << 20)),
    ] {
        let (up, down) = run(pacing, size).await?;
        report(
            &format!("pacing {}", humantime::format_duration(pacing)),
            size,
            up,
            down,
        );
    }
    let size = megabytes << 20;
    let (up, down) = relay_only(size).await?;
    report("relay only", size, up, down);
    Ok(())
}

fn report(what: &str, size: usize, up: Duration, down: Duration) {
    println!(
        "{what:>12}: {:>6.1} MB up {:>8.1} MB/s | down {:>8.1} MB/s",
        size as f64 / 1e6,
        size as f64 / 1e6 / up.as_secs_f64(),
        size as f64 / 1e6 / down.as_secs_f64(),
    );
}

/// The relay alone: 1024-byte Output frames from a scripted client to a scripted agent and
/// back, timed until the last frame arrives.
async fn relay_only(size: usize) -> anyhow::Result<(Duration, Duration)> {
    let emulator = Emulator::start(EmulatorConfig {
        agent: AgentSettings {
            enabled: false,
            ..AgentSettings::default()
        },
        ..EmulatorConfig::default()
    })
    .await?;
    let body = serde_json::json!({
        "Target": "i-0123456789abcdef0",
        "DocumentName": "AWS-StartPortForwardingSession",
    });
    let endpoint = emulator.endpoint_url();
    let response = post_json(&endpoint, &body).await?;
    let id = response["SessionId"].as_str().context("SessionId")?;
    let token = response["TokenValue"].as_str().context("TokenValue")?;
    let url = response["StreamUrl"].as_str().context("StreamUrl")?;
    let agent_token = create_data_channel(&endpoint, id).await?;
    let ws_base = endpoint.replace("http://", "ws://");
    let agent_url = format!("{ws_base}/v1/data-channel/{id}?role=publish_subscribe");
    let mut agent = open(&agent_url, &agent_token, Some("i-0123456789abcdef0")).await?;
    let mut client = open(url, token, None).await?;
    let frames = size / CHUNK;
    let up = pump(&mut client, &mut agent, frames).await?;
    let down = pump(&mut agent, &mut client, frames).await?;
    emulator.shutdown().await;
    Ok((up, down))
}

/// Sends `frames` Output frames on `from` and times their arrival on `to`.
async fn pump(from: &mut Ws, to: &mut Ws, frames: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let sender = async {
        for seq in 0..frames {
            let frame = input(
                seq as i64,
                PayloadType::OUTPUT,
                Bytes::from(vec![7u8; CHUNK]),
            );
            from.feed(Message::Binary(frame)).await?;
        }
        from.flush().await?;
        anyhow::Ok(())
    };
    let receiver = async {
        let mut got = 0;
        while got < frames {
            match to.next().await {
                Some(Ok(Message::Binary(_))) => got += 1,
                Some(Ok(_)) => {}
                _ => bail!("socket ended after {got} frames"),
            }
        }
        anyhow::Ok(())
    };
    tokio::try_join!(sender, receiver)?;
    Ok(started.elapsed())
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(url: &str, token: &str, instance: Option<&str>) -> anyhow::Result<Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let open = OpenDataChannel {
        message_schema_version: "1.0".into(),
        request_id: Uuid::new_v4().to_string(),
        token_value: token.to_owned(),
        client_instance_id: instance.map(str::to_owned),
        client_id: Uuid::new_v4().to_string(),
        client_version: instance.is_none().then(|| "1.2.650.0".to_owned()),
    };
    ws.send(Message::Text(open.to_json().into())).await?;
    Ok(ws)
}

async fn create_data_channel(endpoint: &str, id: &str) -> anyhow::Result<String> {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let request = hyper::Request::post(format!("{endpoint}/v1/data-channel/{id}"))
        .body(Full::new(Bytes::from_static(b"{}")))?;
    let response = client.request(request).await?;
    let body = response.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&body);
    let start = text.find("<TokenValue>").context("no token")? + "<TokenValue>".len();
    let end = text.find("</TokenValue>").context("no token")?;
    Ok(text[start..end].to_owned())
}

/// One session: upload `size` bytes to a sink, then download `size` bytes from a source.
async fn run(pacing: Duration, size: usize) -> anyhow::Result<(Duration, Duration)> {
    let emulator = Emulator::start(EmulatorConfig {
        agent: AgentSettings {
            pacing,
            ..AgentSettings::default()
        },
        ..EmulatorConfig::default()
    })
    .await?;
    let sunk = Arc::new(AtomicUsize::new(0));
    let sunk_done = Arc::new(Notify::new());
    let port = destination(size, sunk.clone(), sunk_done.clone()).await?;
    let mut client = Client::start(&emulator, port).await?;

    // Upload on stream 3: "U" then `size` bytes, chunked like the plugin does.
    let started = Instant::now();
    let mut stream = BytesMut::new();
    Frame::syn(3).encode_into(&mut stream);
    Frame::psh(3, Bytes::from_static(b"U"))?.encode_into(&mut stream);
    smux::encode_data(3, &vec![0x5a; size], smux::MAX_FRAME_SIZE, &mut stream);
    for chunk in stream.chunks(CHUNK) {
        client.send_output(Bytes::copy_from_slice(chunk)).await?;
    }
    let wait = sunk_done.notified();
    if sunk.load(Ordering::SeqCst) < size {
        tokio::time::timeout(Duration::from_secs(600), wait)
            .await
            .context("upload did not finish")?;
    }
    let up = started.elapsed();

    // Download on stream 5: "D" makes the destination send `size` bytes.
    let started = Instant::now();
    let mut stream = BytesMut::new();
    Frame::syn(5).encode_into(&mut stream);
    Frame::psh(5, Bytes::from_static(b"D"))?.encode_into(&mut stream);
    client.send_output(stream.freeze()).await?;
    tokio::time::timeout(Duration::from_secs(600), client.downloaded(size))
        .await
        .context("download did not finish")?;
    let down = started.elapsed();
    emulator.shutdown().await;
    Ok((up, down))
}

/// A TCP destination: a connection starting with `U` is a sink, with `D` a source of `size`.
async fn destination(
    size: usize,
    sunk: Arc<AtomicUsize>,
    done: Arc<Notify>,
) -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (sunk, done) = (sunk.clone(), done.clone());
            tokio::spawn(async move {
                let mut mode = [0u8; 1];
                if socket.read_exact(&mut mode).await.is_err() {
                    return;
                }
                if mode[0] == b'D' {
                    let _ = socket.write_all(&vec![0xa5; size]).await;
                    return;
                }
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if sunk.fetch_add(n, Ordering::SeqCst) + n >= size {
                        done.notify_one();
                    }
                }
            });
        }
    });
    Ok(port)
}

/// A minimal client: handshake, then a writer task and a reader task that acks everything.
struct Client {
    out: mpsc::Sender<Bytes>,
    next_seq: i64,
    received: Arc<AtomicUsize>,
    progress: Arc<Notify>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64)
}

fn input(seq: i64, payload_type: PayloadType, payload: Bytes) -> Bytes {
    ClientMessage {
        message_type: MessageType::InputStreamData,
        schema_version: SCHEMA_VERSION,
        created_date: now_ms(),
        sequence_number: seq,
        flags: 0,
        message_id: Uuid::new_v4(),
        payload_type,
        payload,
    }
    .encode()
}

fn ack(message: &ClientMessage) -> Bytes {
    AcknowledgeContent::for_message(message)
        .into_message(now_ms(), Uuid::new_v4())
        .encode()
}

impl Client {
    async fn start(emulator: &Emulator, port: u16) -> anyhow::Result<Self> {
        let body = serde_json::json!({
            "Target": "i-0123456789abcdef0",
            "DocumentName": "AWS-StartPortForwardingSession",
            "Parameters": {"portNumber": [port.to_string()]},
        });
        let response = post_json(&emulator.endpoint_url(), &body).await?;
        let token = response["TokenValue"].as_str().context("TokenValue")?;
        let url = response["StreamUrl"].as_str().context("StreamUrl")?;
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
        let open = OpenDataChannel {
            message_schema_version: "1.0".into(),
            request_id: Uuid::new_v4().to_string(),
            token_value: token.to_owned(),
            client_instance_id: None,
            client_id: Uuid::new_v4().to_string(),
            client_version: Some("1.2.650.0".into()),
        };
        ws.send(Message::Text(open.to_json().into())).await?;
        // Handshake: ack the request, answer, wait for HandshakeComplete.
        loop {
            let Some(Ok(Message::Binary(frame))) = ws.next().await else {
                continue;
            };
            let message = ClientMessage::decode(frame)?.message;
            if message.message_type != MessageType::OutputStreamData {
                continue;
            }
            ws.send(Message::Binary(ack(&message))).await?;
            if message.payload_type == PayloadType::HANDSHAKE_REQUEST
                && message.sequence_number == 0
            {
                let response = HandshakeResponse {
                    client_version: "1.2.650.0".into(),
                    processed_client_actions: vec![ProcessedClientAction {
                        action_type: ActionType::SessionType,
                        action_status: ActionStatus::SUCCESS,
                        action_result: serde_json::Value::Null,
                        error: String::new(),
                    }],
                    errors: None,
                };
                ws.send(Message::Binary(input(
                    0,
                    PayloadType::HANDSHAKE_RESPONSE,
                    response.to_payload(),
                )))
                .await?;
            }
            if message.payload_type == PayloadType::HANDSHAKE_COMPLETE {
                break;
            }
        }
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::channel::<Bytes>(4096);
        tokio::spawn(async move {
            while let Some(frame) = out_rx.recv().await {
                if sink.feed(Message::Binary(frame)).await.is_err() {
                    return;
                }
                if out_rx.is_empty() && sink.flush().await.is_err() {
                    return;
                }
            }
        });
        let received = Arc::new(AtomicUsize::new(0));
        let progress = Arc::new(Notify::new());
        let (acks, received_in, progress_in) = (out.clone(), received.clone(), progress.clone());
        tokio::spawn(async move {
            let mut expected = 2i64;
            let mut pending = std::collections::BTreeMap::new();
            let mut decoder = FrameDecoder::new();
            while let Some(Ok(message)) = stream.next().await {
                let Message::Binary(frame) = message else {
                    continue;
                };
                let Ok(decoded) = ClientMessage::decode(frame) else {
                    continue;
                };
                let message = decoded.message;
                if message.message_type != MessageType::OutputStreamData {
                    continue;
                }
                let _ = acks.send(ack(&message)).await;
                if message.sequence_number >= expected {
                    pending.insert(message.sequence_number, message.payload);
                }
                while let Some(payload) = pending.remove(&expected) {
                    expected += 1;
                    decoder.push(&payload);
                    while let Ok(Some(frame)) = decoder.next_frame() {
                        if frame.stream_id == 5 {
                            received_in.fetch_add(frame.data.len(), Ordering::SeqCst);
                            progress_in.notify_one();
                        }
                    }
                }
            }
        });
        Ok(Self {
            out,
            next_seq: 1,
            received,
            progress,
        })
    }

    async fn send_output(&mut self, payload: Bytes) -> anyhow::Result<()> {
        let frame = input(self.next_seq, PayloadType::OUTPUT, payload);
        self.next_seq += 1;
        if self.out.send(frame).await.is_err() {
            bail!("the data channel closed");
        }
        Ok(())
    }

    async fn downloaded(&self, size: usize) {
        while self.received.load(Ordering::SeqCst) < size {
            self.progress.notified().await;
        }
    }
}

/// StartSession over plain HTTP/1.1.
async fn post_json(endpoint: &str, body: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let request = hyper::Request::post(format!("{endpoint}/"))
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", "AmazonSSM.StartSession")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let response = client.request(request).await?;
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&bytes)?)
}
