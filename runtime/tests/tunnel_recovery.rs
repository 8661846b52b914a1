//! Tunnels survive the faults that kill the official client's tunnels (docs/protocol.md §9.5, §13),
//! end to end against the emulator. Every test checks the bytes, not internals.

mod support;

use std::time::Duration;

use ssm_emulator::events::Event;
use ssm_emulator::faults::{FrameFaults, ResumeFailCode, SideSelection};
use ssm_tether::events::EventKind;
use support::{Rig, assert_streams_survive, echo_through, wait_event};
use tokio::io::AsyncReadExt;

const LIMIT: Duration = Duration::from_secs(150);

fn api_calls(rig: &Rig, operation: &str, ok: bool) -> usize {
    rig.emulator
        .events()
        .snapshot()
        .iter()
        .filter(|r| {
            matches!(&r.event, Event::Api { operation: op, error, .. }
                if op == operation && error.is_none() == ok)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycling_every_second_on_both_sides_for_a_minute_loses_nothing() {
    let rig = Rig::start(|config| {
        config.faults.recycle_every = Some(Duration::from_secs(1));
        config.faults.recycle_skew = Duration::from_millis(300);
        config.faults.recycle_side = SideSelection::Both;
    })
    .await;
    let bytes = tokio::time::timeout(
        LIMIT,
        assert_streams_survive(
            rig.local(),
            4,
            Duration::from_secs(60),
            // Frames the agent sends while the client is away are dropped and come back only
            // through its head-only resend (10 per second); at one recycle per second, a higher
            // rate builds a backlog on a loaded machine that no client can shorten.
            16 * 1024,
        ),
    )
    .await
    .expect("streams finished in time");
    let status = rig.tunnel.status().borrow().clone();
    assert!(
        status.resumes >= 30,
        "resumed only {} times",
        status.resumes
    );
    assert_eq!(status.restarts, 0, "a recycle must never cost the session");
    assert!(bytes > 0);
    rig.tunnel.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_cell_urls_are_never_reused() {
    let rig = Rig::start(|config| {
        config.faults.recycle_every = Some(Duration::from_millis(700));
        config.faults.stale_cell = true;
    })
    .await;
    tokio::time::timeout(
        LIMIT,
        assert_streams_survive(rig.local(), 2, Duration::from_secs(5), 128 * 1024),
    )
    .await
    .expect("streams finished in time");
    let rejected = rig
        .emulator
        .events()
        .counter("socket.client.upgrade_rejected");
    assert_eq!(rejected, 0, "the client dialled a stale StreamUrl");
    assert!(api_calls(&rig, "ResumeSession", true) >= 3);
    assert_eq!(rig.tunnel.status().borrow().restarts, 0);
    rig.tunnel.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_session_failing_for_ten_seconds_is_ridden_out() {
    let rig = Rig::start_with(
        |_| {},
        |tunnel| {
            tunnel.recovery.resume_attempts_before_restart = 1000;
        },
    )
    .await;
    let faults = rig.emulator.faults().clone();
    let traffic = tokio::spawn(assert_streams_survive(
        rig.local(),
        2,
        Duration::from_secs(16),
        128 * 1024,
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    faults.fail_resume(
        0,
        Some(Duration::from_secs(10)),
        ResumeFailCode::AccessDenied,
    );
    faults
        .recycle(None, SideSelection::Both)
        .await
        .expect("recycle");
    tokio::time::timeout(LIMIT, traffic)
        .await
        .expect("in time")
        .expect("streams intact");
    assert!(
        api_calls(&rig, "ResumeSession", false) >= 3,
        "resume failures were injected"
    );
    let status = rig.tunnel.status().borrow().clone();
    assert_eq!(status.restarts, 0, "the same session must come back");
    assert!(
        status.longest_outage >= Duration::from_secs(9),
        "{status:?}"
    );
    rig.tunnel.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_credentials_then_a_rewritten_credentials_file() {
    let rig = Rig::start_with(
        |config| config.faults.credential_ttl = Some(Duration::from_secs(2)),
        |tunnel| tunnel.recovery.resume_attempts_before_restart = 1000,
    )
    .await;
    let traffic = tokio::spawn(assert_streams_survive(
        rig.local(),
        2,
        Duration::from_secs(10),
        128 * 1024,
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    rig.emulator
        .faults()
        .recycle(None, SideSelection::Both)
        .await
        .expect("recycle");
    // The resume fails while the old key is expired...
    let expired = rig
        .emulator
        .events()
        .wait_for(Duration::from_secs(10), |e| {
            matches!(e, Event::Api { error: Some(code), .. } if code == "ExpiredTokenException")
        })
        .await;
    assert!(expired.is_some(), "the old key was refused");
    // ...until the credentials file is rewritten, as a credential helper would.
    rig.files.rotate("AKIDTEST0002");
    tokio::time::timeout(LIMIT, traffic)
        .await
        .expect("in time")
        .expect("streams intact");
    let recovered = rig.emulator.events().snapshot().iter().any(|r| {
        matches!(&r.event, Event::Api { operation, access_key_id: Some(key), error: None, .. }
            if operation == "ResumeSession" && key == "AKIDTEST0002")
    });
    assert!(recovered, "ResumeSession succeeded with the new key");
    rig.tunnel.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_side_termination_restarts_and_the_listener_keeps_accepting() {
    let rig = Rig::start(|_| {}).await;
    let (sent, received) = echo_through(rig.local(), 1, 100_000).await;
    assert_eq!(sent, received);
    // A connection open on the old session is closed, not left hanging.
    let mut events = rig.tunnel.subscribe();
    let mut open = tokio::net::TcpStream::connect(rig.local())
        .await
        .expect("connect");
    wait_event(
        &mut events,
        Duration::from_secs(5),
        "ConnectionOpened",
        |e| matches!(e, EventKind::ConnectionOpened { .. }),
    )
    .await;
    rig.emulator
        .faults()
        .terminate(None)
        .await
        .expect("terminate");
    wait_event(&mut events, Duration::from_secs(10), "Restarting", |e| {
        matches!(e, EventKind::Restarting { .. })
    })
    .await;
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), open.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "old connection closed: {closed:?}"
    );
    // Connect while the restart is in progress: the listener is still bound and the connection
    // is carried by the new session once it is up.
    let during = tokio::spawn(echo_through(rig.local(), 2, 200_000));
    wait_event(&mut events, Duration::from_secs(30), "Restarted", |e| {
        matches!(e, EventKind::Restarted { .. })
    })
    .await;
    let (sent, received) = tokio::time::timeout(LIMIT, during)
        .await
        .expect("in time")
        .expect("task");
    assert_eq!(
        sent, received,
        "a connection accepted during the restart works"
    );
    let (sent, received) = echo_through(rig.local(), 3, 100_000).await;
    assert_eq!(sent, received, "new connections after the restart work");
    assert_eq!(api_calls(&rig, "StartSession", true), 2);
    rig.tunnel.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_duplicating_reordering_relay_keeps_bytes_intact() {
    let faults = FrameFaults {
        drop_rate: 0.05,
        dup_rate: 0.05,
        reorder_rate: 0.05,
        acks_only: false,
    };
    let rig = Rig::start(|config| {
        config.faults.to_agent = faults.clone();
        config.faults.to_client = faults.clone();
    })
    .await;
    tokio::time::timeout(
        LIMIT,
        assert_streams_survive(rig.local(), 3, Duration::from_secs(8), 32 * 1024),
    )
    .await
    .expect("streams finished in time");
    let counters = rig.emulator.events().counters();
    let injected: u64 = ["dropped", "duplicated", "delayed"]
        .iter()
        .flat_map(|what| ["client", "agent"].map(|side| format!("frame.{side}.{what}")))
        .map(|name| counters.get(&name).copied().unwrap_or(0))
        .sum();
    assert!(injected > 50, "faults were injected: {counters:?}");
    rig.tunnel.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_acks_in_both_directions_keep_bytes_intact() {
    let acks = FrameFaults {
        drop_rate: 0.1,
        dup_rate: 0.0,
        reorder_rate: 0.0,
        acks_only: true,
    };
    let rig = Rig::start(|config| {
        config.faults.to_agent = acks.clone();
        config.faults.to_client = acks.clone();
    })
    .await;
    tokio::time::timeout(
        LIMIT,
        assert_streams_survive(rig.local(), 2, Duration::from_secs(6), 32 * 1024),
    )
    .await
    .expect("streams finished in time");
    rig.tunnel.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_socket_is_detected_by_the_ping_deadline_and_resumed() {
    let rig = Rig::start(|_| {}).await;
    let traffic = tokio::spawn(assert_streams_survive(
        rig.local(),
        2,
        // Whatever the agent sends into the black hole is lost and comes back only through
        // its head-only resend (10 messages/s): keep that backlog small.
        Duration::from_secs(8),
        16 * 1024,
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut events = rig.tunnel.subscribe();
    rig.emulator
        .faults()
        .black_hole(None, SideSelection::Client, true)
        .expect("black hole");
    let detected = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(event) = events.recv().await
                && let EventKind::Disconnected { cause } = event.kind
            {
                return cause;
            }
        }
    })
    .await
    .expect("the dead socket was noticed");
    assert_eq!(detected.kind(), "ping_timeout");
    tokio::time::timeout(LIMIT, traffic)
        .await
        .expect("in time")
        .expect("streams intact");
    assert!(rig.tunnel.status().borrow().resumes >= 1);
    rig.tunnel.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_destination_closes_that_connection_and_the_tunnel_stays_up() {
    let rig = Rig::start(|_| {}).await;
    let mut events = rig.tunnel.subscribe();
    rig.emulator.faults().refuse_destination(true);
    let mut refused = tokio::net::TcpStream::connect(rig.local())
        .await
        .expect("connect");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), refused.read(&mut buf))
        .await
        .expect("the refused connection is closed, not left hanging");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "refused connection closed: {read:?}"
    );
    let unreachable = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(event) = events.recv().await
                && let EventKind::DestinationUnreachable { destination } = event.kind
            {
                return destination;
            }
        }
    })
    .await
    .expect("the refusal is reported");
    assert!(
        unreachable.ends_with(&format!(":{}", 0)) || unreachable.contains(':'),
        "{unreachable}"
    );
    rig.emulator.faults().refuse_destination(false);
    let (sent, received) = echo_through(rig.local(), 9, 50_000).await;
    assert_eq!(sent, received, "the tunnel still carries new connections");
    assert_eq!(rig.tunnel.status().borrow().restarts, 0);
    rig.tunnel.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_the_flag_and_terminate_session_reaches_the_service() {
    let rig = Rig::start(|_| {}).await;
    let (sent, received) = echo_through(rig.local(), 1, 10_000).await;
    assert_eq!(sent, received);
    let events = rig.emulator.events().clone();
    rig.tunnel.shutdown().await.expect("clean shutdown");
    let terminated = events
        .wait_for(Duration::from_secs(5), |e| {
            matches!(e, Event::Api { operation, error: None, .. } if operation == "TerminateSession")
        })
        .await;
    assert!(
        terminated.is_some(),
        "TerminateSession reached the emulator"
    );
    let flag = events
        .wait_for(Duration::from_secs(5), |e| {
            matches!(e, Event::Agent { what, detail, .. } if what == "flag_received" && detail.contains("TerminateSession"))
        })
        .await;
    assert!(flag.is_some(), "the agent got the TerminateSession flag");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_response_survives_hundreds_of_recycles_of_both_sides() {
    // One byte at a time, so that every recycle catches a request or its answer in the
    // hand-over between sockets: a frame lost there must be resent, an ack lost there must not
    // leave the agent holding the answer back, and neither side may be left paused.
    let rig = Rig::start(|_| {}).await;
    let mut socket = tokio::net::TcpStream::connect(rig.local())
        .await
        .expect("connect");
    socket.set_nodelay(true).expect("nodelay");
    let mut byte = [0u8; 1];
    for round in 0..200 {
        for _ in 0..10 {
            tokio::io::AsyncWriteExt::write_all(&mut socket, b"x")
                .await
                .expect("write");
            socket.read_exact(&mut byte).await.expect("echo");
        }
        rig.emulator
            .faults()
            .recycle(None, SideSelection::Both)
            .await
            .expect("recycle");
        tokio::io::AsyncWriteExt::write_all(&mut socket, b"y")
            .await
            .expect("write");
        tokio::time::timeout(Duration::from_secs(10), socket.read_exact(&mut byte))
            .await
            .unwrap_or_else(|_| panic!("round {round}: the answer never came"))
            .expect("echo");
        assert_eq!(&byte, b"y");
    }
    assert!(rig.tunnel.status().borrow().resumes >= 200);
    rig.tunnel.shutdown().await.expect("clean shutdown");
}
