//! End-to-end tunnel benchmarks against the in-process emulator; prints numbers, asserts
//! nothing (targets are judged by reading them, never by a timed test).
//!
//! Run with `cargo bench -p ssm-tether --bench tunnel` (release build). Targets (issue #4, on a
//! 2-core machine, emulator pacing 0 unless stated):
//! * recovery after a planned close, until bytes flow again: p50 ≤ 50 ms, p99 ≤ 250 ms;
//! * single-connection upload and download: ≥ 20 MB/s each way;
//! * download with the real agent's pacing (1 ms per 1024-byte message): ≥ 90 % of its ceiling;
//! * idle tunnel: ≤ 10 MiB resident memory added per tunnel;
//! * striping with the real agent's pacing (1 ms): aggregate echo throughput of K sessions
//!   ≥ 0.9 · K × 1.024 MB/s for K = 1, 2, 4, 8.

#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ssm_emulator::faults::SideSelection;
use ssm_emulator::{Emulator, EmulatorConfig};
use ssm_tether::aws::SsmApi;
use ssm_tether::events::{EventKind, TunnelState};
use ssm_tether::policy::{AwsSettings, LocalAddress, TunnelSpec};
use ssm_tether::tunnel::{Tunnel, TunnelConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MB: f64 = 1_000_000.0;

struct Aws {
    dir: tempfile::TempDir,
}

impl Aws {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config"),
            "[profile bench]\nregion = us-east-1\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("credentials"),
            "[bench]\naws_access_key_id = AKIDBENCH\naws_secret_access_key = bench\n",
        )
        .unwrap();
        Self { dir }
    }

    fn api(&self, emulator: &Emulator) -> SsmApi {
        SsmApi::new(AwsSettings {
            region: Some("us-east-1".into()),
            profile: Some("bench".into()),
            endpoint_url: Some(emulator.endpoint_url()),
            config_file: Some(self.dir.path().join("config")),
            credentials_file: Some(self.dir.path().join("credentials")),
            ..AwsSettings::default()
        })
    }
}

fn tunnel_config(name: &str, destination: u16) -> TunnelConfig {
    let mut spec = TunnelSpec::new(name, "i-0123456789abcdef0", destination);
    spec.local = LocalAddress::Tcp("127.0.0.1:0".parse().unwrap());
    let mut config = TunnelConfig::from_spec(&spec, 1);
    config.connect_timeout = Duration::from_secs(10);
    config
}

async fn emulator(pacing: Duration) -> Emulator {
    let mut config = EmulatorConfig::default();
    config.agent.pacing = pacing;
    Emulator::start(config).await.unwrap()
}

async fn wait_forwarding(tunnel: &Tunnel) {
    let mut status = tunnel.status();
    while status.borrow_and_update().state != TunnelState::Forwarding {
        status.changed().await.unwrap();
    }
}

/// A destination that echoes.
async fn echo_server() -> u16 {
    ssm_emulator::destination::echo_server()
        .await
        .unwrap()
        .port()
}

async fn serve<F, Fut>(handler: F) -> u16
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(handler(socket));
        }
    });
    port
}

async fn recovery_after_planned_close() {
    let emulator = emulator(Duration::ZERO).await;
    let aws = Aws::new();
    let tunnel = Tunnel::start(
        tunnel_config("recovery", echo_server().await),
        aws.api(&emulator),
    )
    .await
    .unwrap();
    wait_forwarding(&tunnel).await;
    let mut socket = TcpStream::connect(tunnel.tcp_addr().unwrap())
        .await
        .unwrap();
    socket.set_nodelay(true).unwrap();
    let mut samples = Vec::new();
    let mut resumes = Vec::new();
    let mut events = tunnel.subscribe();
    let mut byte = [0u8; 1];
    for _ in 0..50 {
        // Steady ping-pong, then a planned close of both sockets; the sample is the time from
        // the close to the first round trip that completes after it.
        for _ in 0..20 {
            socket.write_all(b"x").await.unwrap();
            socket.read_exact(&mut byte).await.unwrap();
        }
        let faults = emulator.faults().clone();
        let closed = Instant::now();
        faults.recycle(None, SideSelection::Both).await.unwrap();
        socket.write_all(b"x").await.unwrap();
        socket.read_exact(&mut byte).await.unwrap();
        samples.push(closed.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
        while let Ok(event) = events.try_recv() {
            if let EventKind::Resumed { outage } = event.kind {
                resumes.push(outage);
            }
        }
    }
    resumes.sort();
    if !resumes.is_empty() {
        println!(
            "  of which ssm-tether's own resume (socket lost -> new socket open): p50 {:.1} ms, p99 {:.1} ms",
            resumes[resumes.len() / 2].as_secs_f64() * 1e3,
            resumes[(resumes.len() * 99 / 100).min(resumes.len() - 1)].as_secs_f64() * 1e3,
        );
    }
    samples.sort();
    let pct = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];
    println!(
        "recovery after planned close (both sides, n={}): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms   [target p50 <= 50 ms, p99 <= 250 ms]",
        samples.len(),
        pct(50).as_secs_f64() * 1e3,
        pct(99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
    );
    tunnel.shutdown().await.unwrap();
    emulator.shutdown().await;
}

async fn throughput(pacing: Duration, bytes: u64) -> (f64, f64) {
    let emulator = emulator(pacing).await;
    let aws = Aws::new();
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let sink = serve(move |mut socket| {
        let counter = counter.clone();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = socket.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                counter.fetch_add(n as u64, Ordering::SeqCst);
            }
        }
    })
    .await;
    let source = serve(move |mut socket| async move {
        let buf = vec![0x5au8; 64 * 1024];
        let mut sent = 0;
        while sent < bytes {
            let n = (bytes - sent).min(buf.len() as u64) as usize;
            if socket.write_all(&buf[..n]).await.is_err() {
                return;
            }
            sent += n as u64;
        }
        // Keep the socket open until the client has read everything (no half-close in smux).
        let mut one = [0u8; 1];
        let _ = socket.read(&mut one).await;
    })
    .await;

    let up = Tunnel::start(tunnel_config("up", sink), aws.api(&emulator))
        .await
        .unwrap();
    wait_forwarding(&up).await;
    let mut socket = TcpStream::connect(up.tcp_addr().unwrap()).await.unwrap();
    let buf = vec![0xa5u8; 64 * 1024];
    let start = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        let n = (bytes - sent).min(buf.len() as u64) as usize;
        socket.write_all(&buf[..n]).await.unwrap();
        sent += n as u64;
    }
    while received.load(Ordering::SeqCst) < bytes {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let upload = bytes as f64 / start.elapsed().as_secs_f64() / MB;
    drop(socket);
    up.shutdown().await.unwrap();

    let down = Tunnel::start(tunnel_config("down", source), aws.api(&emulator))
        .await
        .unwrap();
    wait_forwarding(&down).await;
    let mut socket = TcpStream::connect(down.tcp_addr().unwrap()).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    let start = Instant::now();
    while got < bytes {
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "download ended early");
        got += n as u64;
    }
    let download = bytes as f64 / start.elapsed().as_secs_f64() / MB;
    drop(socket);
    down.shutdown().await.unwrap();
    emulator.shutdown().await;
    (upload, download)
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

async fn idle_memory() {
    const TUNNELS: usize = 20;
    let emulator = emulator(Duration::ZERO).await;
    let aws = Aws::new();
    let echo = echo_server().await;
    // One tunnel first, so that lazily initialised process-wide state is not counted.
    let warm = Tunnel::start(tunnel_config("warm", echo), aws.api(&emulator))
        .await
        .unwrap();
    wait_forwarding(&warm).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = resident_bytes();
    let mut tunnels = Vec::new();
    for i in 0..TUNNELS {
        let tunnel = Tunnel::start(tunnel_config(&format!("idle{i}"), echo), aws.api(&emulator))
            .await
            .unwrap();
        wait_forwarding(&tunnel).await;
        tunnels.push(tunnel);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = resident_bytes();
    let per_tunnel = after.saturating_sub(before) as f64 / TUNNELS as f64 / (1024.0 * 1024.0);
    println!(
        "idle tunnel memory: +{per_tunnel:.2} MiB RSS per tunnel ({TUNNELS} tunnels, including the emulator's side of each session)   [target <= 10 MiB]"
    );
    for tunnel in tunnels {
        tunnel.shutdown().await.unwrap();
    }
    warm.shutdown().await.unwrap();
    emulator.shutdown().await;
}

/// Aggregate echo throughput over `sessions` striped sessions with the agent's 1 ms pacing:
/// two connections per session, each keeping up to 256 KiB in flight (an echo client that
/// writes as fast as its echo comes back, not a flood that only fills buffers).
async fn striping(sessions: u8) -> f64 {
    const IN_FLIGHT: u64 = 256 * 1024;
    let emulator = emulator(Duration::from_millis(1)).await;
    let aws = Aws::new();
    let mut config = tunnel_config("striped", echo_server().await);
    config.sessions = sessions;
    let tunnel = Tunnel::start(config, aws.api(&emulator)).await.unwrap();
    let mut status = tunnel.status();
    status
        .wait_for(|s| {
            s.sessions
                .iter()
                .filter(|s| s.state == TunnelState::Forwarding)
                .count()
                == usize::from(sessions)
        })
        .await
        .unwrap();
    let local = tunnel.tcp_addr().unwrap();
    let echoed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..2 * usize::from(sessions) {
        let socket = TcpStream::connect(local).await.unwrap();
        let (mut read, mut write) = socket.into_split();
        let (echoed, stop) = (echoed.clone(), stop.clone());
        let received = Arc::new(AtomicU64::new(0));
        let back = received.clone();
        let writer_stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let chunk = vec![0x3cu8; 16 * 1024];
            let mut sent = 0u64;
            while !writer_stop.load(Ordering::Relaxed) {
                if sent - back.load(Ordering::Relaxed) > IN_FLIGHT {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                if write.write_all(&chunk).await.is_err() {
                    break;
                }
                sent += chunk.len() as u64;
            }
        }));
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(100), read.read(&mut buf)).await {
                    Ok(Ok(0) | Err(_)) => break,
                    Ok(Ok(n)) => {
                        received.fetch_add(n as u64, Ordering::Relaxed);
                        echoed.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(_) => {}
                }
            }
        }));
    }
    // Past the ramp-up, over a steady five seconds.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (start, before) = (Instant::now(), echoed.load(Ordering::Relaxed));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let bytes = echoed.load(Ordering::Relaxed) - before;
    let rate = bytes as f64 / start.elapsed().as_secs_f64() / MB;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    tunnel.shutdown().await.unwrap();
    emulator.shutdown().await;
    rate
}

fn main() {
    // `cargo bench` passes harness flags (e.g. --bench); a plain binary ignores them.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // `cargo bench -p ssm-tether --bench tunnel -- recovery` runs one section
    // (recovery|throughput|paced|memory|striping); no name runs all.
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    runtime.block_on(async {
        if run("recovery") {
            recovery_after_planned_close().await;
        }
        if run("throughput") {
            let (up, down) = throughput(Duration::ZERO, 200_000_000).await;
            println!(
                "single connection, pacing 0: upload {up:.1} MB/s, download {down:.1} MB/s   [target >= 20 MB/s each way]"
            );
        }
        if run("paced") {
            let (_, paced) = throughput(Duration::from_millis(1), 10_000_000).await;
            // The agent's ceiling: one 1024-byte message per 1 ms pacing interval.
            let ceiling = 1024.0 / 0.001 / MB;
            println!(
                "download with the real agent's pacing (1 ms): {paced:.3} MB/s = {:.0} % of the {ceiling:.3} MB/s ceiling   [target >= 90 %]",
                paced / ceiling * 100.0
            );
        }
        if run("memory") {
            idle_memory().await;
        }
        if run("striping") {
            // One session's ceiling: one 1024-byte message per 1 ms pacing interval.
            let ceiling = 1024.0 / 0.001 / MB;
            for k in [1u8, 2, 4, 8] {
                let rate = striping(k).await;
                let target = 0.9 * f64::from(k) * ceiling;
                println!(
                    "striping, {k} session(s), agent pacing 1 ms: echo {rate:.2} MB/s = {:.0} % of {:.3} MB/s   [target >= {target:.2} MB/s]",
                    rate / (f64::from(k) * ceiling) * 100.0,
                    f64::from(k) * ceiling,
                );
            }
        }
    });
}
