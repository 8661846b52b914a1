//! Several sessions per tunnel, end to end against the emulator with real sockets: a slow
//! reader beside a live connection, striping, make-before-break rotation at the service's
//! maximum session duration, and a Unix socket local end.

mod support;

use std::time::{Duration, Instant};

use ssm_emulator::faults::SideSelection;
use ssm_tether::events::{CloseReason, EventKind, SessionRole, TunnelEvent};
use ssm_tether::policy::{RotationSettings, SlowReaderSettings};
use support::{Rig, wait_event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast;

const LIMIT: Duration = Duration::from_secs(120);

/// One 1 KiB echo round trip on an open connection.
async fn round_trip(socket: &mut TcpStream, seed: u8) -> std::io::Result<()> {
    let sent = [seed; 1024];
    socket.write_all(&sent).await?;
    let mut back = [0u8; 1024];
    socket.read_exact(&mut back).await?;
    assert_eq!(back, sent, "the echo differs");
    Ok(())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Collects the events of a tunnel until dropped.
fn record(
    mut events: broadcast::Receiver<TunnelEvent>,
) -> tokio::task::JoinHandle<Vec<TunnelEvent>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            match events.recv().await {
                Ok(event) => {
                    let last = event.kind == EventKind::Stopped;
                    seen.push(event);
                    if last {
                        return seen;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return seen,
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_closed_and_the_other_connections_keep_their_round_trips() {
    let budget = 4u64 << 20;
    let rig = Rig::start_with(
        |_| {},
        |tunnel| {
            tunnel.slow_reader = SlowReaderSettings {
                buffer: budget,
                tunnel_buffer: 4 * budget,
                timeout: Duration::from_secs(60),
            }
        },
    )
    .await;
    let mut events = rig.tunnel.subscribe();
    let mut live = TcpStream::connect(rig.local()).await.expect("connect");
    round_trip(&mut live, 1).await.expect("a round trip before");
    let rss_before = rss_kib();
    // 32 MiB through the echo, and never a byte read back.
    let slow = TcpStream::connect(rig.local()).await.expect("connect");
    let (_slow_read, mut slow_write) = slow.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![7u8; 64 * 1024];
        let mut written = 0u64;
        while written < 32 << 20 {
            if slow_write.write_all(&chunk).await.is_err() {
                break;
            }
            written += chunk.len() as u64;
        }
        written
    });
    let closed = wait_event(&mut events, LIMIT, "the slow reader's close", |e| {
        matches!(
            e,
            EventKind::ConnectionClosed {
                reason: CloseReason::SlowReader,
                ..
            }
        )
    })
    .await;
    let EventKind::ConnectionClosed { bytes_down, .. } = closed else {
        unreachable!("matched above");
    };
    // What it was handed stays within its budget plus what the kernel buffers took.
    assert!(
        bytes_down <= budget + (16 << 20),
        "{bytes_down} bytes queued for it"
    );
    for seed in 0..8 {
        tokio::time::timeout(Duration::from_secs(3), round_trip(&mut live, seed))
            .await
            .expect("a round trip within 3 s")
            .expect("the live connection works");
    }
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(grown < 96 * 1024, "memory grew by {grown} KiB");
    let _ = writer.await;
    assert_eq!(rig.tunnel.status().borrow().slow_reader_closes, 1);
    rig.tunnel.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn striping_spreads_connections_and_one_session_stalling_does_not_stall_the_others() {
    let rig = Rig::start_with(|_| {}, |tunnel| tunnel.sessions = 3).await;
    let mut status = rig.tunnel.status();
    tokio::time::timeout(
        LIMIT,
        status.wait_for(|s| {
            s.sessions
                .iter()
                .filter(|s| s.state == ssm_tether::events::TunnelState::Forwarding)
                .count()
                == 3
        }),
    )
    .await
    .expect("three sessions forward")
    .expect("status");
    let active: Vec<_> = rig
        .emulator
        .faults()
        .sessions()
        .into_iter()
        .filter(|s| s.state == "active")
        .collect();
    assert_eq!(active.len(), 3, "three sessions at the service");
    let mut sockets = Vec::new();
    for _ in 0..6 {
        let mut socket = TcpStream::connect(rig.local()).await.expect("connect");
        round_trip(&mut socket, 0).await.expect("round trip");
        sockets.push(socket);
    }
    let per_session: Vec<usize> = rig
        .tunnel
        .status()
        .borrow()
        .sessions
        .iter()
        .map(|s| s.connections)
        .collect();
    assert_eq!(per_session, vec![2, 2, 2], "connections are spread");
    // One session's socket goes silent: its connections wait for the pong timeout and a
    // resume; every connection on the two others keeps its round trips meanwhile.
    let victim = rig.tunnel.status().borrow().sessions[0]
        .session
        .session_id
        .clone()
        .expect("an id");
    rig.emulator
        .faults()
        .black_hole(Some(&victim), SideSelection::Client, true)
        .expect("black hole");
    let started = Instant::now();
    let mut on_others = 0;
    let mut stalled = 0;
    for (i, socket) in sockets.iter_mut().enumerate() {
        match tokio::time::timeout(Duration::from_millis(800), round_trip(socket, i as u8)).await {
            Ok(result) => {
                result.expect("round trip");
                on_others += 1;
            }
            Err(_) => stalled += 1,
        }
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        (on_others, stalled),
        (4, 2),
        "only the victim's connections waited"
    );
    rig.tunnel.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_never_breaks_a_short_connection_and_never_makes_one_wait() {
    let max = Duration::from_secs(8);
    let rig = Rig::start_with(
        |config| config.faults.max_session_duration = Some(max),
        |tunnel| {
            tunnel.rotation = Some(RotationSettings {
                max_session_duration: max,
                rotate_before: Duration::from_secs(3),
            })
        },
    )
    .await;
    let recorder = record(rig.tunnel.subscribe());
    let local = rig.local();
    wait_event(&mut rig.tunnel.subscribe(), LIMIT, "forwarding", |e| {
        matches!(e, EventKind::Forwarding { .. })
    })
    .await;
    // A long-lived connection on the first session, and a new 2-second echo connection
    // every 250 ms across four session ends.
    let long = tokio::spawn(async move {
        let mut socket = TcpStream::connect(local).await.expect("connect");
        let mut trips = 0u32;
        loop {
            if round_trip(&mut socket, 9).await.is_err() {
                return trips;
            }
            trips += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    support::assert_short_connections_survive(
        local,
        Duration::from_secs(30),
        Duration::from_millis(250),
        Duration::from_secs(2),
    )
    .await;
    let trips = tokio::time::timeout(LIMIT, long)
        .await
        .expect("ended")
        .expect("task");
    assert!(
        trips > 10,
        "the long connection worked until its session ended"
    );
    let status = rig.tunnel.status().borrow().clone();
    assert!(status.rotations >= 3, "{status:?}");
    assert_eq!(status.restarts, 0, "no session was lost: {status:?}");
    rig.tunnel.shutdown().await.expect("clean shutdown");
    let events = recorder.await.expect("events");
    let long_closed = events.iter().any(|e| {
        matches!(
            e.kind,
            EventKind::ConnectionClosed {
                reason: CloseReason::MaxDuration,
                ..
            }
        )
    });
    assert!(
        long_closed,
        "the long connection was closed at its session's end"
    );
    // In order, per rotation: rotating (predecessor), rotated (successor), ended.
    let steps: Vec<&str> = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Rotating { .. } => Some("rotating"),
            EventKind::Rotated { .. } => Some("rotated"),
            EventKind::SessionEnded { .. } => Some("ended"),
            _ => None,
        })
        .collect();
    let complete: Vec<_> = steps.chunks(3).filter(|c| c.len() == 3).collect();
    assert!(complete.len() >= 3, "{steps:?}");
    for step in complete {
        assert_eq!(step, ["rotating", "rotated", "ended"], "{steps:?}");
    }
    let draining = status
        .sessions
        .iter()
        .filter(|s| s.role == SessionRole::Draining)
        .count();
    assert!(draining <= 1);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_local_end_is_private_and_carries_bytes() {
    use ssm_tether::policy::LocalAddress;
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db.sock");
    // A stale socket left by a crashed run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("stale socket"));
    let rig = Rig::start_with(
        |_| {},
        |tunnel| tunnel.local = LocalAddress::Unix(path.clone()),
    )
    .await;
    let mode = std::fs::metadata(&path)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "only the owner may connect");
    let mut socket = tokio::net::UnixStream::connect(&path)
        .await
        .expect("connect");
    let sent = vec![3u8; 256 * 1024];
    let (mut read, mut write) = socket.split();
    let (written, echoed) = tokio::join!(write.write_all(&sent), async {
        let mut back = vec![0u8; sent.len()];
        read.read_exact(&mut back).await.map(|_| back)
    });
    written.expect("write");
    assert_eq!(echoed.expect("echo"), sent);
    // A second tunnel on the same live socket is refused.
    let mut second = support::tunnel_config(1);
    second.local = LocalAddress::Unix(path.clone());
    let err = ssm_tether::tunnel::Tunnel::start(second, rig.files.api(rig.emulator.endpoint_url()))
        .await
        .expect_err("the path is taken");
    assert!(err.to_string().contains("another process listens"), "{err}");
    rig.tunnel.shutdown().await.expect("clean shutdown");
    assert!(!path.exists(), "the socket file is removed at shutdown");
}
