//! The whole emulator — SSM API, relay and agent model — driven by the scripted raw client,
//! with real TCP destinations on loopback.

mod support;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ssm_emulator::events::{Event, Side};
use ssm_emulator::faults::SideSelection;
use ssm_emulator::{Emulator, EmulatorConfig, FaultSettings};
use ssm_tether_protocol::payload::{AcknowledgeContent, Flag};
use ssm_tether_protocol::smux::{Command, Frame, FrameDecoder};
use ssm_tether_protocol::{MessageType, PayloadType};
use support::*;

fn smux(frames: &[Frame]) -> Bytes {
    let mut buf = BytesMut::new();
    for frame in frames {
        frame.encode_into(&mut buf);
    }
    buf.freeze()
}

/// StartSession to `port`, dial, handshake.
async fn connect(emulator: &Emulator, port: u16) -> (Started, Endpoint) {
    let started = start_session(&emulator.endpoint_url(), port).await;
    let mut client = Endpoint::client(&started.stream_url, &started.token).await;
    client.handshake().await;
    (started, client)
}

#[tokio::test]
async fn mux_mode_echoes_through_a_real_tcp_server() {
    let emulator = start(config(FaultSettings::default())).await;
    let port = echo_server().await;
    let started = start_session(&emulator.endpoint_url(), port).await;
    let mut client = Endpoint::client(&started.stream_url, &started.token).await;
    let request = client.handshake().await;
    assert_eq!(request.agent_version, "3.3.987.0");
    let properties = &request
        .session_type()
        .expect("parses")
        .expect("session type")
        .properties;
    assert_eq!(properties["type"], "LocalPortForwarding");
    assert_eq!(properties["portNumber"], port.to_string().as_str());

    let payload: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    client
        .send_reliably(
            PayloadType::OUTPUT,
            smux(&[
                Frame::syn(3),
                Frame::psh(3, Bytes::copy_from_slice(&payload[..1000])).expect("psh"),
            ]),
        )
        .await;
    client
        .send_reliably(
            PayloadType::OUTPUT,
            smux(&[Frame::psh(3, Bytes::copy_from_slice(&payload[1000..])).expect("psh")]),
        )
        .await;
    let mut decoder = FrameDecoder::new();
    let frames = client
        .smux_until(&mut decoder, |f| psh_data(f, 3).len() >= payload.len())
        .await;
    assert_eq!(psh_data(&frames, 3), payload);
    // Closing the stream closes the destination connection.
    client
        .send_reliably(PayloadType::OUTPUT, smux(&[Frame::fin(3)]))
        .await;
    agent_event(&emulator, "stream_closed").await;
    assert!(emulator.events().counter("frame.client.relayed") > 0);
    assert!(emulator.events().counter("frame.agent.relayed") > 0);
    emulator.shutdown().await;
}

#[tokio::test]
async fn basic_mode_forwards_raw_bytes() {
    let mut config = config(FaultSettings::default());
    config.agent.version = "3.0.0.0".to_owned();
    let emulator = start(config).await;
    let port = echo_server().await;
    // An old agent makes the client pick basic mode; the agent picks it from an old client
    // version (below 1.1.70), as amazon-ssm-agent does.
    let started = start_session(&emulator.endpoint_url(), port).await;
    let mut client = Endpoint::client(&started.stream_url, &started.token).await;
    let request = client.handshake_as("1.1.61.0").await;
    assert_eq!(request.agent_version, "3.0.0.0");
    client
        .send_reliably(PayloadType::OUTPUT, Bytes::from_static(b"hello basic mode"))
        .await;
    let mut echoed = Vec::new();
    while echoed.len() < 16 {
        echoed.extend(client.read_output(1).await);
    }
    assert_eq!(echoed, b"hello basic mode");
    emulator.shutdown().await;
}

#[tokio::test]
async fn unacked_output_is_resent_and_duplicates_are_reacked() {
    let emulator = start(config(FaultSettings::default())).await;
    let port = echo_server().await;
    let (_started, mut client) = connect(&emulator, port).await;
    let sent = client
        .send_reliably(
            PayloadType::OUTPUT,
            smux(&[
                Frame::syn(3),
                Frame::psh(3, Bytes::from_static(b"ping")).expect("psh"),
            ]),
        )
        .await;
    // Do not ack the echo: the agent resends the same message (same id, same seq).
    let first = client
        .recv_matching(WAIT, |m| m.message_type == MessageType::OutputStreamData)
        .await
        .expect("echo");
    let again = client
        .recv_matching(WAIT, |m| {
            m.message_type == MessageType::OutputStreamData
                && m.sequence_number == first.sequence_number
        })
        .await
        .expect("resend");
    assert_eq!(again, first);
    assert!(!agent_event(&emulator, "resend").await.is_empty());
    // Acking twice is harmless.
    client.ack(&first).await;
    client.ack(&first).await;
    // Our own message again: the agent re-acks the duplicate.
    client.send(&sent).await;
    let reack = client
        .recv_matching(WAIT, |m| {
            m.message_type == MessageType::Acknowledge
                && AcknowledgeContent::from_payload(&m.payload)
                    .is_ok_and(|a| a.sequence_number == sent.sequence_number)
        })
        .await;
    assert!(reack.is_some());
    agent_event(&emulator, "duplicate_reacked").await;
    emulator.shutdown().await;
}

#[tokio::test]
async fn refused_destination_sends_connect_to_port_error() {
    let faults = FaultSettings {
        refuse_destination: true,
        ..FaultSettings::default()
    };
    let emulator = start(config(faults)).await;
    let port = echo_server().await;
    let (_started, mut client) = connect(&emulator, port).await;
    client
        .send_reliably(PayloadType::OUTPUT, smux(&[Frame::syn(3)]))
        .await;
    let mut decoder = FrameDecoder::new();
    let frames = client
        .smux_until(&mut decoder, |f| {
            f.iter()
                .any(|f| f.command == Command::Fin && f.stream_id == 3)
        })
        .await;
    assert!(frames.iter().any(|f| f.command == Command::Fin));
    let flag = client
        .others
        .iter()
        .find(|m| m.payload_type == PayloadType::FLAG)
        .expect("a flag");
    assert_eq!(
        Flag::from_payload(&flag.payload),
        Ok(Flag::ConnectToPortError)
    );
    // Lifted at runtime: the next stream connects.
    emulator.faults().refuse_destination(false);
    client
        .send_reliably(
            PayloadType::OUTPUT,
            smux(&[
                Frame::syn(5),
                Frame::psh(5, Bytes::from_static(b"ok")).expect("psh"),
            ]),
        )
        .await;
    let frames = client
        .smux_until(&mut decoder, |f| psh_data(f, 5).len() >= 2)
        .await;
    assert_eq!(psh_data(&frames, 5), b"ok");
    emulator.shutdown().await;
}

#[tokio::test]
async fn terminate_session_flag_ends_with_channel_closed() {
    let emulator = start(config(FaultSettings::default())).await;
    let (started, mut client) = connect(&emulator, echo_server().await).await;
    client
        .send_reliably(PayloadType::FLAG, Flag::TerminateSession.to_payload())
        .await;
    let closed = client
        .recv_matching(WAIT, |m| m.message_type == MessageType::ChannelClosed)
        .await
        .expect("channel_closed");
    let closed =
        ssm_tether_protocol::payload::ChannelClosed::from_payload(&closed.payload).expect("json");
    // After the agent's `Terminating` the Output is empty: the client prints its own
    // "Exiting session with sessionId: …" line.
    assert_eq!(closed.session_id, started.session_id);
    assert_eq!(closed.output, "");
    let ended = emulator
        .events()
        .wait_for(WAIT, |e| {
            matches!(e, Event::Session { state, reason, .. }
            if state == "terminated" && reason == "agent_terminated")
        })
        .await;
    assert!(ended.is_some());
    emulator.shutdown().await;
}

#[tokio::test]
async fn service_termination_reaches_the_client_and_stops_the_agent() {
    let emulator = start(config(FaultSettings::default())).await;
    let (started, mut client) = connect(&emulator, echo_server().await).await;
    let response = ssm_call(
        &emulator.endpoint_url(),
        "TerminateSession",
        "AKIDTEST",
        serde_json::json!({"SessionId": started.session_id}),
    )
    .await;
    assert_eq!(response.status, 200);
    client
        .recv_matching(WAIT, |m| m.message_type == MessageType::ChannelClosed)
        .await
        .expect("channel_closed");
    // The agent got channel_closed too and ends.
    agent_event(&emulator, "terminated").await;
    emulator.shutdown().await;
}

#[tokio::test]
async fn recycle_then_resume_keeps_the_tunnel_working() {
    let faults = FaultSettings {
        stale_cell: true,
        ..FaultSettings::default()
    };
    let emulator = start(config(faults)).await;
    let port = echo_server().await;
    let (started, mut client) = connect(&emulator, port).await;
    client
        .send_reliably(
            PayloadType::OUTPUT,
            smux(&[
                Frame::syn(3),
                Frame::psh(3, Bytes::from_static(b"before")).expect("psh"),
            ]),
        )
        .await;
    let mut decoder = FrameDecoder::new();
    client
        .smux_until(&mut decoder, |f| psh_data(f, 3).len() >= 6)
        .await;

    emulator
        .faults()
        .recycle(Some(&started.session_id), SideSelection::Both)
        .await
        .expect("recycle");
    client.closed(WAIT).await.expect("client closed");
    agent_event(&emulator, "rejoin_ok").await;
    let old_url = started.stream_url.clone();
    assert_eq!(dial(&old_url).await.err(), Some(403));
    let resumed = resumed(&emulator.endpoint_url(), &started.session_id).await;
    let mut fresh = Endpoint::client(&resumed.stream_url, &resumed.token).await;
    // Same process state: sequence numbers continue.
    fresh.next_seq = client.next_seq;
    fresh.expected = client.expected;
    let mut client = fresh;
    client
        .send_reliably(
            PayloadType::OUTPUT,
            smux(&[Frame::psh(3, Bytes::from_static(b"after")).expect("psh")]),
        )
        .await;
    let frames = client
        .smux_until(&mut decoder, |f| psh_data(f, 3).len() >= 5)
        .await;
    assert_eq!(psh_data(&frames, 3), b"after");
    emulator.shutdown().await;
}

#[tokio::test]
async fn client_grace_makes_the_agent_rejoin_fail_with_already_terminated() {
    let faults = FaultSettings {
        client_grace: Some(Duration::from_millis(200)),
        ..FaultSettings::default()
    };
    let emulator = start(config(faults)).await;
    let (started, client) = connect(&emulator, echo_server().await).await;
    drop(client);
    let detail = agent_event(&emulator, "rejoin_gave_up").await;
    assert!(detail.contains("Session is already terminated"), "{detail}");
    let refused = emulator
        .events()
        .wait_for(WAIT, |e| matches!(e, Event::Api { operation, status: 400, .. } if operation == "CreateDataChannel"))
        .await;
    assert!(refused.is_some());
    let resume = resume_session(&emulator.endpoint_url(), &started.session_id, "AKIDTEST").await;
    assert!(resume.json().get("TokenValue").is_none(), "{}", resume.body);
    emulator.shutdown().await;
}

#[tokio::test]
async fn black_holed_agent_socket_misses_pongs_and_rejoins() {
    let mut config: EmulatorConfig = config(FaultSettings::default());
    config.agent.ping_interval = Duration::from_millis(100);
    config.agent.pong_wait = Duration::from_millis(300);
    let emulator = start(config).await;
    let (started, _client) = connect(&emulator, echo_server().await).await;
    emulator
        .faults()
        .black_hole(Some(&started.session_id), SideSelection::Agent, true)
        .expect("black hole");
    let lost = agent_event(&emulator, "socket_lost").await;
    assert!(!lost.is_empty());
    agent_event(&emulator, "rejoin_ok").await;
    let mut opened = 0;
    let deadline = std::time::Instant::now() + WAIT;
    while opened < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        opened = emulator
            .events()
            .snapshot()
            .iter()
            .filter(|r| matches!(&r.event, Event::Socket { side: Side::Agent, what, .. } if what == "opened"))
            .count();
    }
    assert!(opened >= 2, "the agent reopened its socket");
    emulator.shutdown().await;
}

#[tokio::test]
async fn repeated_recycles_with_stale_cells_and_failing_resumes_keep_the_tunnel() {
    let faults = FaultSettings {
        stale_cell: true,
        resume_fail: ssm_emulator::faults::ResumeFailSettings {
            count: 1,
            window: None,
            code: ssm_emulator::faults::ResumeFailCode::Throttling,
        },
        ..FaultSettings::default()
    };
    let emulator = start(config(faults)).await;
    let endpoint = emulator.endpoint_url();
    let port = echo_server().await;
    let (started, mut client) = connect(&emulator, port).await;
    let mut decoder = FrameDecoder::new();
    let mut echoed = Vec::new();
    let mut sent = Vec::new();
    client
        .send_reliably(PayloadType::OUTPUT, smux(&[Frame::syn(3)]))
        .await;
    for round in 0..3u8 {
        let data = vec![b'a' + round; 700];
        sent.extend_from_slice(&data);
        client
            .send_reliably(
                PayloadType::OUTPUT,
                smux(&[Frame::psh(3, Bytes::from(data)).expect("psh")]),
            )
            .await;
        let frames = client
            .smux_until(&mut decoder, |f| psh_data(f, 3).len() >= 700)
            .await;
        echoed.extend(psh_data(&frames, 3));
        emulator
            .faults()
            .recycle(None, SideSelection::Both)
            .await
            .expect("recycle");
        client.closed(WAIT).await.expect("closed by the recycle");
        // The first ResumeSession after each recycle is throttled; the retry works and
        // carries the new cell.
        let failed = resume_session(&endpoint, &started.session_id, "AKIDTEST").await;
        assert_eq!(failed.json()["__type"], "ThrottlingException");
        let resumed = resumed(&endpoint, &started.session_id).await;
        let mut fresh = Endpoint::client(&resumed.stream_url, &resumed.token).await;
        fresh.next_seq = client.next_seq;
        fresh.expected = client.expected;
        fresh.reorder = std::mem::take(&mut client.reorder);
        client = fresh;
    }
    assert_eq!(echoed, sent);
    assert_eq!(emulator.events().counter("fault.recycle"), 3);
    assert_eq!(emulator.events().counter("fault.stale_cell"), 3);
    assert_eq!(
        emulator
            .events()
            .counter("api.ResumeSession.ThrottlingException"),
        3
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn data_survives_dropped_duplicated_and_reordered_frames() {
    let emulator = start(config(FaultSettings::default())).await;
    let port = echo_server().await;
    let (_started, mut client) = connect(&emulator, port).await;
    // Faults only after the handshake: the scripted client does not retransmit handshake frames.
    emulator
        .faults()
        .patch(&serde_json::json!({
            "to_agent": {"drop_rate": 0.1, "dup_rate": 0.1, "reorder_rate": 0.1},
            "to_client": {"drop_rate": 0.1, "dup_rate": 0.1, "reorder_rate": 0.1},
        }))
        .expect("patch");
    let payload: Vec<u8> = (0..6000u32).map(|i| (i * 7 % 256) as u8).collect();
    client
        .send_reliably(PayloadType::OUTPUT, smux(&[Frame::syn(3)]))
        .await;
    for chunk in payload.chunks(1000) {
        client
            .send_reliably(
                PayloadType::OUTPUT,
                smux(&[Frame::psh(3, Bytes::copy_from_slice(chunk)).expect("psh")]),
            )
            .await;
    }
    let mut decoder = FrameDecoder::new();
    let frames = client
        .smux_until(&mut decoder, |f| psh_data(f, 3).len() >= payload.len())
        .await;
    assert_eq!(psh_data(&frames, 3), payload);
    let counters = emulator.events().counters();
    let applied: u64 = ["fault.drop", "fault.duplicate", "fault.reorder"]
        .iter()
        .map(|k| counters.get(*k).copied().unwrap_or(0))
        .sum();
    assert!(applied > 0, "{counters:?}");
    emulator.shutdown().await;
}
