//! Tunnel lifecycle edges found in review: shutdown while an API call is in flight, and bounded
//! waiting connections while no session forwards. End to end against the emulator.

mod support;

use std::time::Duration;

use ssm_emulator::events::Event;
use support::Rig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_start_session_is_in_flight_terminates_the_session_it_started() {
    let emulator = support::emulator(|_| {}).await;
    let port = support::echo_server().await;
    let files = support::AwsFiles::new("AKIDTEST0001");
    let endpoint =
        support::slow_api_proxy(emulator.endpoint_url(), Duration::from_millis(1500)).await;
    let events = emulator.events().clone();
    let tunnel =
        ssm_tether::tunnel::Tunnel::start(support::tunnel_config(port), files.api(endpoint))
            .await
            .expect("tunnel");
    // The service has created the session; its answer is still on the way to the client.
    let started = events
        .wait_for(Duration::from_secs(10), |e| {
            matches!(e, Event::Api { operation, error: None, .. } if operation == "StartSession")
        })
        .await
        .expect("StartSession reached the service");
    let Event::Api {
        session_id: Some(session_id),
        ..
    } = &started.event
    else {
        panic!("StartSession names its session: {:?}", started.event)
    };
    tokio::time::timeout(Duration::from_secs(15), tunnel.shutdown())
        .await
        .expect("shutdown is bounded")
        .expect("clean shutdown");
    let terminated = events
        .wait_for(Duration::from_secs(5), |e| {
            matches!(e, Event::Api { operation, error: None, session_id: Some(id), .. }
                if operation == "TerminateSession" && id == session_id)
        })
        .await;
    assert!(
        terminated.is_some(),
        "the session started while shutting down was terminated, not left to time out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_waiting_for_a_session_are_bounded() {
    // No agent: the session never completes its handshake, so every connection waits.
    let rig = Rig::start(|config| config.agent.enabled = false).await;
    let mut status = rig.tunnel.status();
    let mut clients = Vec::new();
    for _ in 0..600 {
        clients.push(
            tokio::net::TcpStream::connect(rig.local())
                .await
                .expect("the kernel completes the connection"),
        );
    }
    tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.connections >= 512),
    )
    .await
    .expect("connections are taken while they fit")
    .expect("status");
    // Give the acceptor every chance to take more than it should.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting = rig.tunnel.status().borrow().connections;
    assert_eq!(
        waiting, 512,
        "accepted connections waiting for a session are capped"
    );
    tokio::time::timeout(Duration::from_secs(15), rig.tunnel.shutdown())
        .await
        .expect("shutdown is bounded")
        .expect("clean shutdown");
    drop(clients);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_agent_never_handshakes_is_replaced() {
    // No agent model: the service accepts the client, but no HandshakeRequest ever comes.
    let rig = support::Rig::start_with(
        |config| config.agent.enabled = false,
        |tunnel| tunnel.handshake_timeout = Duration::from_secs(1),
    )
    .await;
    let mut events = rig.tunnel.subscribe();
    let cause = support::wait_event(&mut events, Duration::from_secs(15), "Disconnected", |e| {
        matches!(e, ssm_tether::events::EventKind::Disconnected { .. })
    })
    .await;
    let ssm_tether::events::EventKind::Disconnected { cause } = cause else {
        unreachable!("matched above");
    };
    assert_eq!(cause.kind(), "handshake_failed", "{cause}");
    support::wait_event(&mut events, Duration::from_secs(15), "Restarting", |e| {
        matches!(e, ssm_tether::events::EventKind::Restarting { .. })
    })
    .await;
    rig.tunnel.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_to_a_keepalive_agent_outlives_the_smux_timeout() {
    // Agents up to 3.1.1511.0 keep smux keepalive on and drop every stream when a check
    // window (30 s, here compressed to 3 s) passes without a frame (§6.1): the client must
    // send NOPs, or an idle connection dies.
    let rig = Rig::start_with(
        |config| {
            config.agent.version = "3.1.1000.0".into();
            config.agent.smux_keepalive_interval = Duration::from_secs(1);
            config.agent.smux_keepalive_timeout = Duration::from_secs(3);
        },
        |tunnel| tunnel.smux_keepalive = Duration::from_secs(1),
    )
    .await;
    let mut socket = tokio::net::TcpStream::connect(rig.local())
        .await
        .expect("connect");
    let mut byte = [0u8; 1];
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    socket.write_all(b"a").await.expect("write");
    socket
        .read_exact(&mut byte)
        .await
        .expect("echo before idling");
    // Longer than two of the agent's check windows.
    tokio::time::sleep(Duration::from_secs(7)).await;
    socket.write_all(b"b").await.expect("write after idling");
    let echoed = tokio::time::timeout(Duration::from_secs(10), socket.read_exact(&mut byte)).await;
    assert!(
        matches!(echoed, Ok(Ok(_))),
        "the idle connection survived: {echoed:?}"
    );
    assert_eq!(&byte, b"b");
    let smux_deaths = rig.emulator.events().counter("agent.smux_closed");
    assert_eq!(smux_deaths, 0, "the agent's smux session never timed out");
    assert_eq!(rig.tunnel.status().borrow().restarts, 0);
    rig.tunnel.shutdown().await.expect("clean shutdown");
}
