//! Custom session documents and the agent's default host, end to end: StartSession through the
//! API, the HandshakeRequest the client sees and the destination the agent model dials.

mod support;

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use serde_json::{Value, json};
use ssm_emulator::documents::SessionDocument;
use ssm_emulator::{Emulator, FaultSettings};
use ssm_tether_protocol::PayloadType;
use ssm_tether_protocol::smux::{Frame, FrameDecoder};
use support::*;

const DOCUMENT: &str = "Test-PortToLoopback";

/// A custom Port document: a required port checked by pattern, a host limited to loopback
/// forms, and a constant property.
fn custom_document() -> SessionDocument {
    SessionDocument::from_value(
        DOCUMENT,
        &json!({
            "schemaVersion": "1.0",
            "description": "Forward to a loopback port",
            "sessionType": "Port",
            "parameters": {
                "portNumber": {
                    "type": "String",
                    "allowedPattern": "^([1-9]|[1-9][0-9]{1,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$"
                },
                "host": {"type": "String", "default": "127.0.0.1", "allowedValues": ["127.0.0.1", "localhost"]},
                "localPortNumber": {"type": "String", "default": "0"}
            },
            "properties": {
                "host": "{{ host }}",
                "portNumber": "{{ portNumber }}",
                "type": "LocalPortForwarding",
                "localPortNumber": "{{ localPortNumber }}",
                "team": "emulator-tests"
            }
        }),
    )
    .expect("document loads")
}

async fn start_custom(emulator: &Emulator, parameters: Value) -> HttpResponse {
    ssm_call(
        &emulator.endpoint_url(),
        "StartSession",
        "AKIDTEST",
        json!({"Target": "i-0123456789abcdef0", "DocumentName": DOCUMENT, "Parameters": parameters}),
    )
    .await
}

/// Dials the data channel of a successful StartSession response and does the handshake.
async fn connect(response: &HttpResponse) -> (Endpoint, BTreeMap<String, Value>) {
    assert_eq!(response.status, 200, "{}", response.body);
    let body = response.json();
    let url = body["StreamUrl"].as_str().expect("StreamUrl");
    let token = body["TokenValue"].as_str().expect("TokenValue");
    let mut client = Endpoint::client(url, token).await;
    let request = client.handshake().await;
    let properties = request
        .session_type()
        .expect("parses")
        .expect("session type")
        .properties;
    (client, properties)
}

/// Opens smux stream 3, sends `payload` and returns what comes back on it.
async fn echo(client: &mut Endpoint, payload: &'static [u8]) -> Vec<u8> {
    let mut frames = BytesMut::new();
    Frame::syn(3).encode_into(&mut frames);
    Frame::psh(3, Bytes::from_static(payload))
        .expect("psh")
        .encode_into(&mut frames);
    client
        .send_reliably(PayloadType::OUTPUT, frames.freeze())
        .await;
    let mut decoder = FrameDecoder::new();
    let frames = client
        .smux_until(&mut decoder, |f| psh_data(f, 3).len() >= payload.len())
        .await;
    psh_data(&frames, 3)
}

#[tokio::test]
async fn custom_port_document_reaches_the_handshake_and_the_destination() {
    let mut config = config(FaultSettings::default());
    config.documents.add(custom_document()).expect("registers");
    let emulator = start(config).await;
    let port = echo_server().await;

    // Parameter errors are InvalidDocument, as for the AWS-owned documents.
    for (parameters, named) in [
        (json!({}), "portNumber"),
        (json!({"portNumber": ["70000"]}), "portNumber"),
        (
            json!({"portNumber": ["22"], "host": ["db.internal"]}),
            "host",
        ),
    ] {
        let response = start_custom(&emulator, parameters).await;
        assert_eq!(response.status, 400, "{}", response.body);
        assert_eq!(response.json()["__type"], "InvalidDocument");
        let message = response.json()["message"].as_str().unwrap_or("").to_owned();
        assert!(message.contains(named), "{message}");
    }

    let response = start_custom(&emulator, json!({"portNumber": [port.to_string()]})).await;
    let (mut client, properties) = connect(&response).await;
    assert_eq!(
        serde_json::to_value(&properties).expect("json"),
        json!({
            "host": "127.0.0.1",
            "localPortNumber": "0",
            "portNumber": port.to_string(),
            "team": "emulator-tests",
            "type": "LocalPortForwarding"
        })
    );
    let started = agent_event(&emulator, "port_session_started").await;
    assert!(
        started.contains(&format!("destination=127.0.0.1:{port}")),
        "{started}"
    );
    assert_eq!(
        echo(&mut client, b"custom document").await,
        b"custom document"
    );
    let dialled = agent_event(&emulator, "dial_ok").await;
    assert!(dialled.ends_with(&format!("127.0.0.1:{port}")), "{dialled}");
    emulator.shutdown().await;
}

#[tokio::test]
async fn agent_dials_the_default_host_when_properties_name_none() {
    let mut config = config(FaultSettings::default());
    config.agent.default_host = "localhost".to_owned();
    let emulator = start(config).await;
    let port = echo_server().await;
    let started = start_session(&emulator.endpoint_url(), port).await;
    let mut client = Endpoint::client(&started.stream_url, &started.token).await;
    let request = client.handshake().await;
    let properties = &request
        .session_type()
        .expect("parses")
        .expect("session type")
        .properties;
    assert!(properties.get("host").is_none(), "{properties:?}");
    let detail = agent_event(&emulator, "port_session_started").await;
    assert!(
        detail.contains(&format!("destination=localhost:{port}")),
        "{detail}"
    );
    // The echo server listens on 127.0.0.1: the dial resolved "localhost" and got there.
    assert_eq!(echo(&mut client, b"default host").await, b"default host");
    agent_event(&emulator, "dial_ok").await;
    emulator.shutdown().await;
}
