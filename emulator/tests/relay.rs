//! The MGS relay and the service-side faults, with both ends scripted (no agent model): the
//! test plays the agent through CreateDataChannel and its own WebSocket.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use ssm_emulator::FaultSettings;
use ssm_emulator::events::{Event, Side};
use ssm_emulator::faults::{FrameFaults, SideSelection};
use ssm_tether_protocol::payload::{AgentSessionState, ChannelClosed, SessionState};
use ssm_tether_protocol::{MessageType, PayloadType};
use support::*;
use tokio_tungstenite::tungstenite::Message;

const SHORT: Duration = Duration::from_millis(300);

async fn pair(emulator: &ssm_emulator::Emulator) -> (Started, Endpoint, Endpoint) {
    let endpoint = emulator.endpoint_url();
    let started = start_session(&endpoint, 80).await;
    let agent = Endpoint::agent(&endpoint, &started.session_id).await;
    let client = Endpoint::client(&started.stream_url, &started.token).await;
    wait_open(emulator, Side::Client).await;
    (started, client, agent)
}

async fn wait_open(emulator: &ssm_emulator::Emulator, side: Side) {
    wait_socket(emulator, side, "opened").await;
}

async fn wait_socket(emulator: &ssm_emulator::Emulator, side: Side, what: &'static str) {
    let found = emulator
        .events()
        .wait_for(
            WAIT,
            |e| matches!(e, Event::Socket { side: s, what: w, .. } if *s == side && w == what),
        )
        .await;
    assert!(found.is_some(), "socket {side:?} {what}");
}

fn count_frames(emulator: &ssm_emulator::Emulator, disposition: &str) -> usize {
    emulator
        .events()
        .snapshot()
        .iter()
        .filter(|r| matches!(&r.event, Event::Frame { disposition: d, .. } if d == disposition))
        .count()
}

#[tokio::test]
async fn relays_frames_verbatim_and_consumes_agent_session_state() {
    let emulator = start(config_without_agent(FaultSettings::default())).await;
    let (started, mut client, mut agent) = pair(&emulator).await;
    let state = AgentSessionState {
        schema_version: 1,
        session_state: SessionState::Connected,
        session_id: started.session_id.clone(),
    };
    agent
        .send(&control_message(
            MessageType::AgentSessionState,
            state.to_payload(),
        ))
        .await;
    let down = agent.data(PayloadType::OUTPUT, Bytes::from_static(b"to the client"));
    agent.send(&down).await;
    let got = client.recv().await;
    assert_eq!(
        got, down,
        "the agent_session_state is consumed, data relayed as is"
    );
    let up = client.data(PayloadType::OUTPUT, Bytes::from_static(b"to the agent"));
    client.send(&up).await;
    assert_eq!(agent.recv().await, up);
    // Undecodable frames are dropped and logged.
    client.send_raw(Bytes::from_static(b"garbage")).await;
    let ack = client.data(PayloadType::OUTPUT, Bytes::from_static(b"after"));
    client.send(&ack).await;
    assert_eq!(agent.recv().await, ack);
    assert_eq!(emulator.events().counter("frame.client.invalid"), 1);
    assert_eq!(emulator.events().counter("frame.agent.consumed"), 1);
    let relayed = emulator
        .events()
        .snapshot()
        .into_iter()
        .find_map(|r| match &r.event {
            Event::Frame {
                from,
                disposition,
                sequence_number,
                payload_type,
                digest_valid,
                ..
            } if from == "agent" && disposition == "relayed" => {
                Some((*sequence_number, *payload_type, *digest_valid))
            }
            _ => None,
        });
    assert_eq!(relayed, Some((Some(0), Some(1), Some(true))));
    emulator.shutdown().await;
}

#[tokio::test]
async fn tokens_are_single_use_and_early_binary_frames_wait_for_the_token() {
    let emulator = start(config_without_agent(FaultSettings::default())).await;
    let endpoint = emulator.endpoint_url();
    let started = start_session(&endpoint, 80).await;
    let mut agent = Endpoint::agent(&endpoint, &started.session_id).await;

    // A wrong token: the socket is closed with 1008.
    let mut wrong = Endpoint::client(&started.stream_url, "not-the-token").await;
    assert_eq!(wrong.closed(WAIT).await, Some(Some(1008)));
    wait_socket(&emulator, Side::Client, "token_rejected").await;

    // Binary before the token frame (the plugin's race) is relayed once the token arrives.
    let mut ws = dial(&started.stream_url).await.expect("upgrade");
    let first = ssm_tether_protocol::ClientMessage {
        message_type: MessageType::InputStreamData,
        schema_version: 1,
        created_date: now_ms(),
        sequence_number: 0,
        flags: 0,
        message_id: uuid::Uuid::new_v4(),
        payload_type: PayloadType::OUTPUT,
        payload: Bytes::from_static(b"early"),
    };
    ws.send(Message::Binary(first.encode()))
        .await
        .expect("send");
    let mut client = Endpoint::new(ws, MessageType::InputStreamData);
    client
        .send_open(ssm_tether_protocol::payload::OpenDataChannel {
            message_schema_version: "1.0".into(),
            request_id: "r".into(),
            token_value: started.token.clone(),
            client_instance_id: None,
            client_id: "c".into(),
            client_version: Some(CLIENT_VERSION.into()),
        })
        .await;
    assert_eq!(agent.recv().await, first);

    // The same token again is refused.
    let mut reused = Endpoint::client(&started.stream_url, &started.token).await;
    assert_eq!(reused.closed(WAIT).await, Some(Some(1008)));
    emulator.shutdown().await;
}

#[tokio::test]
async fn pause_and_start_publication_follow_the_client() {
    let emulator = start(config_without_agent(FaultSettings::default())).await;
    let endpoint = emulator.endpoint_url();
    let (started, client, mut agent) = pair(&emulator).await;
    drop(client);
    let pause = agent
        .recv_matching(WAIT, |m| m.message_type == MessageType::PausePublication)
        .await
        .expect("pause_publication");
    assert_eq!(pause.sequence_number, 0);
    // While the client is away, agent frames are dropped, not queued.
    let lost = agent
        .send_data(PayloadType::OUTPUT, Bytes::from_static(b"lost"))
        .await;
    let undeliverable = emulator
        .events()
        .wait_for(WAIT, |e| {
            matches!(e, Event::Frame { disposition, sequence_number, .. }
            if disposition == "undeliverable" && *sequence_number == Some(lost.sequence_number))
        })
        .await;
    assert!(undeliverable.is_some());
    let resumed = resumed(&endpoint, &started.session_id).await;
    let mut client = Endpoint::client(&resumed.stream_url, &resumed.token).await;
    agent
        .recv_matching(WAIT, |m| m.message_type == MessageType::StartPublication)
        .await
        .expect("start_publication");
    let next = agent
        .send_data(PayloadType::OUTPUT, Bytes::from_static(b"next"))
        .await;
    assert_eq!(client.recv().await, next);
    // The agent going away pauses the client, its return starts it again.
    drop(agent);
    client
        .recv_matching(WAIT, |m| m.message_type == MessageType::PausePublication)
        .await
        .expect("client paused");
    let _agent = Endpoint::agent(&endpoint, &started.session_id).await;
    client
        .recv_matching(WAIT, |m| m.message_type == MessageType::StartPublication)
        .await
        .expect("client started");
    emulator.shutdown().await;
}

#[tokio::test]
async fn recycle_closes_with_bye_and_stale_cell_refuses_the_old_url() {
    let faults = FaultSettings {
        stale_cell: true,
        ..FaultSettings::default()
    };
    let emulator = start(config_without_agent(faults)).await;
    let endpoint = emulator.endpoint_url();
    let (started, mut client, mut agent) = pair(&emulator).await;
    let n = emulator
        .faults()
        .recycle(Some(&started.session_id), SideSelection::Both)
        .await
        .expect("recycle");
    assert_eq!(n, 1);
    assert_eq!(client.closed(WAIT).await, Some(Some(1000)));
    assert_eq!(agent.closed(WAIT).await, Some(Some(1000)));
    assert_eq!(dial(&started.stream_url).await.err(), Some(403));
    let resumed = resumed(&endpoint, &started.session_id).await;
    assert_ne!(resumed.stream_url, started.stream_url);
    let _agent = Endpoint::agent(&endpoint, &started.session_id).await;
    let _client = Endpoint::client(&resumed.stream_url, &resumed.token).await;
    wait_open(&emulator, Side::Client).await;
    assert_eq!(emulator.events().counter("fault.stale_cell"), 1);
    assert_eq!(
        emulator.events().counter("socket.client.upgrade_rejected"),
        1
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn periodic_recycle_closes_both_sides_every_period() {
    let faults = FaultSettings {
        recycle_every: Some(SHORT),
        recycle_skew: Duration::from_millis(100),
        ..FaultSettings::default()
    };
    let emulator = start(config_without_agent(faults)).await;
    let (_started, mut client, mut agent) = pair(&emulator).await;
    let began = std::time::Instant::now();
    assert_eq!(client.closed(WAIT).await, Some(Some(1000)));
    assert_eq!(agent.closed(WAIT).await, Some(Some(1000)));
    let elapsed = began.elapsed();
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    let recycle = emulator
        .events()
        .wait_for(WAIT, |e| matches!(e, Event::Fault { kind, detail, .. } if kind == "recycle" && detail.contains("periodic")))
        .await;
    assert!(recycle.is_some());
    emulator.shutdown().await;
}

#[tokio::test]
async fn frame_faults_drop_duplicate_and_reorder() {
    let emulator = start(config_without_agent(FaultSettings::default())).await;
    let (_started, mut client, mut agent) = pair(&emulator).await;
    let faults = emulator.faults();

    // Acks only: acks to the agent vanish, data passes.
    faults
        .patch(&serde_json::json!({"to_agent": {"drop_rate": 1.0, "acks_only": true}}))
        .expect("patch");
    let data = agent
        .send_data(PayloadType::OUTPUT, Bytes::from_static(b"d"))
        .await;
    assert_eq!(client.recv().await, data);
    client.ack(&data).await;
    let up = client
        .send_data(PayloadType::OUTPUT, Bytes::from_static(b"u"))
        .await;
    assert_eq!(
        agent.recv().await,
        up,
        "the ack was dropped, the data came through"
    );
    assert_eq!(emulator.events().counter("fault.drop"), 1);

    // Duplicates towards the client.
    let mut settings = faults.settings();
    settings.to_agent = FrameFaults::default();
    settings.to_client.dup_rate = 1.0;
    faults.set_settings(settings.clone()).expect("settings");
    let twice = agent
        .send_data(PayloadType::OUTPUT, Bytes::from_static(b"2x"))
        .await;
    assert_eq!(client.recv().await, twice);
    assert_eq!(client.recv().await, twice);

    // Reorder: the first frame is held until the next one passed.
    settings.to_client = FrameFaults {
        reorder_rate: 1.0,
        ..FrameFaults::default()
    };
    faults.set_settings(settings.clone()).expect("settings");
    let a = agent
        .send_data(PayloadType::OUTPUT, Bytes::from_static(b"a"))
        .await;
    let b = agent
        .send_data(PayloadType::OUTPUT, Bytes::from_static(b"b"))
        .await;
    assert_eq!(client.recv().await, b);
    assert_eq!(client.recv().await, a);
    // A held frame with nothing behind it is released after a short hold.
    faults.set_settings(settings).expect("settings");
    let alone = agent
        .send_data(PayloadType::OUTPUT, Bytes::from_static(b"alone"))
        .await;
    assert_eq!(client.recv().await, alone);
    assert!(count_frames(&emulator, "delayed") >= 2);
    assert!(count_frames(&emulator, "duplicated") >= 1);
    emulator.shutdown().await;
}

#[tokio::test]
async fn black_hole_stops_frames_and_pongs_until_lifted() {
    let emulator = start(config_without_agent(FaultSettings::default())).await;
    let (started, mut client, mut agent) = pair(&emulator).await;
    let changed = emulator
        .faults()
        .black_hole(Some(&started.session_id), SideSelection::Client, true)
        .expect("black hole");
    assert_eq!(changed, 1);
    client
        .ws
        .send(Message::Ping(Bytes::from_static(b"keepalive")))
        .await
        .expect("ping");
    let lost = agent
        .send_data(PayloadType::OUTPUT, Bytes::from_static(b"x"))
        .await;
    // Neither the pong nor the frame arrives.
    let quiet = tokio::time::timeout(SHORT, futures_util::StreamExt::next(&mut client.ws)).await;
    assert!(quiet.is_err(), "nothing may arrive: {quiet:?}");
    let dropped = emulator
        .events()
        .wait_for(WAIT, |e| {
            matches!(e, Event::Frame { disposition, sequence_number, .. }
            if disposition == "black_holed" && *sequence_number == Some(lost.sequence_number))
        })
        .await;
    assert!(dropped.is_some());
    emulator
        .faults()
        .black_hole(Some(&started.session_id), SideSelection::Client, false)
        .expect("lift");
    // The queued ping is answered once the socket is read again.
    let pong = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut client.ws))
        .await
        .expect("pong in time");
    assert!(matches!(pong, Some(Ok(Message::Pong(_)))), "{pong:?}");
    let next = agent
        .send_data(PayloadType::OUTPUT, Bytes::from_static(b"y"))
        .await;
    assert_eq!(client.recv().await, next);
    emulator.shutdown().await;
}

fn channel_closed_output(message: &ssm_tether_protocol::ClientMessage) -> String {
    assert_eq!(message.message_type, MessageType::ChannelClosed);
    ChannelClosed::from_payload(&message.payload)
        .expect("channel_closed JSON")
        .output
}

#[tokio::test]
async fn service_side_termination_sends_channel_closed_to_both() {
    let emulator = start(config_without_agent(FaultSettings::default())).await;
    let (started, mut client, mut agent) = pair(&emulator).await;
    let ended = emulator
        .faults()
        .terminate(Some(&started.session_id))
        .await
        .expect("terminate");
    assert_eq!(ended, 1);
    for side in [&mut client, &mut agent] {
        let closed = side
            .recv_matching(WAIT, |m| m.message_type == MessageType::ChannelClosed)
            .await
            .expect("channel_closed");
        assert!(channel_closed_output(&closed).contains("terminated"));
        assert_eq!(side.closed(WAIT).await, Some(Some(1000)));
    }
    let state = emulator.faults().sessions()[0].state.clone();
    assert_eq!(state, "terminated");
    emulator.shutdown().await;
}

#[tokio::test]
async fn agent_terminating_then_closing_ends_the_session_for_the_client() {
    let emulator = start(config_without_agent(FaultSettings::default())).await;
    let (started, mut client, mut agent) = pair(&emulator).await;
    let state = AgentSessionState {
        schema_version: 1,
        session_state: SessionState::Terminating,
        session_id: started.session_id.clone(),
    };
    agent
        .send(&control_message(
            MessageType::AgentSessionState,
            state.to_payload(),
        ))
        .await;
    let last = agent
        .send_data(PayloadType::OUTPUT, Bytes::from_static(b"last"))
        .await;
    agent.ws.close(None).await.expect("close");
    assert_eq!(client.recv().await, last);
    let closed = client
        .recv_matching(WAIT, |m| m.message_type == MessageType::ChannelClosed)
        .await
        .expect("channel_closed");
    // No text after `Terminating`: the client prints its own "Exiting session" line.
    assert_eq!(channel_closed_output(&closed), "");
    emulator.shutdown().await;
}

#[tokio::test]
async fn client_grace_idle_timeout_and_max_duration_terminate() {
    // Client grace: the client leaves and does not come back.
    let faults = FaultSettings {
        client_grace: Some(SHORT),
        ..FaultSettings::default()
    };
    let emulator = start(config_without_agent(faults)).await;
    let endpoint = emulator.endpoint_url();
    let (started, client, mut agent) = pair(&emulator).await;
    drop(client);
    // After the grace the agent only sees its socket close (no channel_closed) …
    assert_eq!(agent.closed(WAIT).await, Some(Some(1000)));
    assert!(
        agent
            .pending
            .iter()
            .all(|m| m.message_type != MessageType::ChannelClosed),
        "{:?}",
        agent.pending
    );
    // … and its rejoin is told the session is already terminated.
    let create = http(
        "POST",
        &format!("{endpoint}/v1/data-channel/{}", started.session_id),
        &[],
        "{}",
    )
    .await;
    assert!(create.body.contains("Session is already terminated"));
    let resume = resume_session(&endpoint, &started.session_id, "AKIDTEST").await;
    assert!(resume.json().get("TokenValue").is_none());
    assert_eq!(emulator.events().counter("fault.client_grace"), 1);
    emulator.shutdown().await;

    // Idle timeout: no stream data for the period.
    let faults = FaultSettings {
        idle_timeout: Some(SHORT),
        ..FaultSettings::default()
    };
    let emulator = start(config_without_agent(faults)).await;
    let (_started, mut client, _agent) = pair(&emulator).await;
    let closed = client
        .recv_matching(WAIT, |m| m.message_type == MessageType::ChannelClosed)
        .await
        .expect("idle channel_closed");
    assert!(channel_closed_output(&closed).contains("inactivity"));
    assert_eq!(emulator.events().counter("fault.idle_timeout"), 1);
    emulator.shutdown().await;

    // Maximum session duration, even with traffic.
    let faults = FaultSettings {
        max_session_duration: Some(Duration::from_millis(500)),
        ..FaultSettings::default()
    };
    let emulator = start(config_without_agent(faults)).await;
    let (_started, mut client, _agent) = pair(&emulator).await;
    let closed = client
        .recv_matching(WAIT, |m| m.message_type == MessageType::ChannelClosed)
        .await
        .expect("max-duration channel_closed");
    assert!(channel_closed_output(&closed).contains("maximum"));
    emulator.shutdown().await;
}

#[tokio::test]
async fn reset_drops_the_socket_without_a_close_frame() {
    let emulator = start(config_without_agent(FaultSettings::default())).await;
    let (started, mut client, mut agent) = pair(&emulator).await;
    let n = emulator
        .faults()
        .reset(Some(&started.session_id), SideSelection::Client)
        .await
        .expect("reset");
    assert_eq!(n, 1);
    assert_eq!(client.closed(WAIT).await, Some(None), "no close frame");
    // The agent stays connected and is paused.
    agent
        .recv_matching(WAIT, |m| m.message_type == MessageType::PausePublication)
        .await
        .expect("pause");
    assert_eq!(emulator.events().counter("fault.reset"), 1);
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_client_returning_before_the_agent_is_paused_until_it_is_back() {
    let emulator = start(config_without_agent(FaultSettings::default())).await;
    let endpoint = emulator.endpoint_url();
    let (started, client, agent) = pair(&emulator).await;
    drop(client);
    drop(agent);
    let resumed = resumed(&endpoint, &started.session_id).await;
    let mut client = Endpoint::client(&resumed.stream_url, &resumed.token).await;
    client
        .recv_matching(WAIT, |m| m.message_type == MessageType::PausePublication)
        .await
        .expect("paused while the agent is away");
    let _agent = Endpoint::agent(&endpoint, &started.session_id).await;
    client
        .recv_matching(WAIT, |m| m.message_type == MessageType::StartPublication)
        .await
        .expect("started when it is back");
    emulator.shutdown().await;
}
