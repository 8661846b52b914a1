//! End-to-end tunnel benchmarks against the in-process emulator; prints numbers, asserts
//! nothing (targets are judged by reading them, never by a timed test).
//!
//! Run with `cargo bench --profile release -p ssm-tether --bench tunnel [-- SECTION...]`
//! (sections: recovery, throughput, paced, memory, striping, connections, many; none: all).
//! Targets (issue #4, on a 2-core machine, emulator pacing 0 unless stated):
//! * recovery after a planned close, until bytes flow again: p50 ≤ 50 ms, p99 ≤ 250 ms;
//! * single-connection upload and download: ≥ 20 MB/s each way;
//! * download with the real agent's pacing (1 ms per 1024-byte message): ≥ 90 % of its ceiling;
//! * idle tunnel: ≤ 10 MiB resident memory added per tunnel;
//! * striping with the real agent's pacing (1 ms): aggregate echo throughput of K sessions
//!   ≥ 0.9 · K × 1.024 MB/s for K = 1, 2, 4, 8.
//!
//! Without targets, measured for BENCHMARKS.md (issue #14):
//! * `connections`: aggregate upload and download of 1, 8 and 64 concurrent connections
//!   through one session, with pacing 0 and with the agent's 1 ms;
//! * `many`: 1 000 tunnels in one process — time until all forward, resident memory per
//!   tunnel, CPU over an idle interval (`--tunnels=N`, `--idle=SECONDS`, `--pacing-ms=N`,
//!   `--settle=SECONDS`).

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

/// One upload sample of [`concurrent`]: `connections` sockets each write `per` bytes to the
/// counting sink; aggregate MB/s until the sink has them all.
async fn transfer_up(
    local: std::net::SocketAddr,
    received: &AtomicU64,
    connections: usize,
    per: u64,
) -> f64 {
    let target = received.load(Ordering::SeqCst) + per * connections as u64;
    let start = Instant::now();
    let mut writers = Vec::new();
    for _ in 0..connections {
        writers.push(tokio::spawn(async move {
            let mut socket = TcpStream::connect(local).await.unwrap();
            let buf = vec![0xa5u8; 64 * 1024];
            let mut sent = 0;
            while sent < per {
                let n = (per - sent).min(buf.len() as u64) as usize;
                socket.write_all(&buf[..n]).await.unwrap();
                sent += n as u64;
            }
            // Closed only once everything arrived: a close may discard what is still queued.
            socket
        }));
    }
    let mut sockets = Vec::new();
    for writer in writers {
        sockets.push(writer.await.unwrap());
    }
    while received.load(Ordering::SeqCst) < target {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (per * connections as u64) as f64 / start.elapsed().as_secs_f64() / MB
}

/// One download sample of [`concurrent`]: `connections` sockets each read the `per` bytes the
/// source writes; aggregate MB/s until the last byte.
async fn transfer_down(local: std::net::SocketAddr, connections: usize, per: u64) -> f64 {
    let start = Instant::now();
    let mut readers = Vec::new();
    for _ in 0..connections {
        readers.push(tokio::spawn(async move {
            let mut socket = TcpStream::connect(local).await.unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0;
            while got < per {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "download ended early");
                got += n as u64;
            }
        }));
    }
    for reader in readers {
        reader.await.unwrap();
    }
    (per * connections as u64) as f64 / start.elapsed().as_secs_f64() / MB
}

/// Aggregate upload and download of `connections` concurrent connections through one tunnel
/// (one session), `total` bytes split evenly among them, `samples` transfers each way. Timed
/// from the first connect to the last byte, so stream opens are included. Returns the
/// samples, upload and download, in MB/s.
async fn concurrent(
    pacing: Duration,
    connections: &[usize],
    total: u64,
    samples: usize,
) -> Vec<(usize, Vec<f64>, Vec<f64>)> {
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
    // Bytes the source writes to each accepted connection; set before each transfer.
    let per_connection = Arc::new(AtomicU64::new(0));
    let amount = per_connection.clone();
    let source = serve(move |mut socket| {
        let bytes = amount.load(Ordering::SeqCst);
        async move {
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
        }
    })
    .await;
    let up = Tunnel::start(tunnel_config("up", sink), aws.api(&emulator))
        .await
        .unwrap();
    let down = Tunnel::start(tunnel_config("down", source), aws.api(&emulator))
        .await
        .unwrap();
    wait_forwarding(&up).await;
    wait_forwarding(&down).await;
    let mut results = Vec::new();
    for &n in connections {
        let per = total / n as u64;
        per_connection.store(per, Ordering::SeqCst);
        let mut ups = Vec::new();
        let mut downs = Vec::new();
        for _ in 0..samples {
            ups.push(transfer_up(up.tcp_addr().unwrap(), &received, n, per).await);
            downs.push(transfer_down(down.tcp_addr().unwrap(), n, per).await);
        }
        results.push((n, ups, downs));
    }
    up.shutdown().await.unwrap();
    down.shutdown().await.unwrap();
    emulator.shutdown().await;
    results
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// Utime + stime of the whole process (every thread, the emulator's included), from
/// `/proc/self/stat` (Linux only; elsewhere 0).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) may contain spaces; fields are counted after its ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the file, 12 and 13 after the ')'.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // In USER_HZ, which the kernel fixes at 100 for user space on every Linux architecture
    // this runs on (the kernel's own HZ does not leak through /proc).
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// `count` tunnels in one process against the in-process emulator (agent pacing `pacing`, 1 ms
/// by default as the real agent): time until every one forwards, resident memory per tunnel, CPU while idle.
/// Each tunnel has its own AWS client, as `ssm-tether run` gives every tunnel of a file.
async fn many_tunnels(count: usize, pacing: Duration, settle: Duration, idle: Duration) {
    let emulator = emulator(pacing).await;
    let aws = Aws::new();
    let echo = echo_server().await;
    // One tunnel first, so that lazily initialised process-wide state is not counted.
    let warm = Tunnel::start(tunnel_config("warm", echo), aws.api(&emulator))
        .await
        .unwrap();
    wait_forwarding(&warm).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = resident_bytes();

    let start = Instant::now();
    let mut tunnels = Vec::new();
    let mut waiters = Vec::new();
    for i in 0..count {
        let tunnel = Tunnel::start(tunnel_config(&format!("many{i}"), echo), aws.api(&emulator))
            .await
            .unwrap();
        let mut status = tunnel.status();
        waiters.push(tokio::spawn(async move {
            status
                .wait_for(|s| s.state == TunnelState::Forwarding)
                .await
                .unwrap();
            start.elapsed()
        }));
        tunnels.push(tunnel);
    }
    let started = start.elapsed();
    let mut ready = Vec::new();
    for waiter in waiters {
        ready.push(waiter.await.unwrap());
    }
    let all = start.elapsed();
    ready.sort();
    println!(
        "many tunnels: {count} started (bound, sessions requested) in {:.2} s; all forwarding after {:.2} s (per tunnel: p50 {:.2} s, p99 {:.2} s)",
        started.as_secs_f64(),
        all.as_secs_f64(),
        ready[ready.len() / 2].as_secs_f64(),
        ready[(ready.len() * 99 / 100).min(ready.len() - 1)].as_secs_f64(),
    );

    // Settle (handshakes, first pings, allocator), then memory and an idle interval.
    tokio::time::sleep(settle).await;
    let rss_after = resident_bytes();
    let per_tunnel = rss_after.saturating_sub(rss_before) as f64 / count as f64 / 1024.0;
    println!(
        "many tunnels: RSS {:.0} MiB -> {:.0} MiB = +{per_tunnel:.0} KiB per forwarding tunnel after {settle:?} (emulator's service and agent side of each session included)",
        rss_before as f64 / (1024.0 * 1024.0),
        rss_after as f64 / (1024.0 * 1024.0),
    );
    let (cpu_start, wall_start) = (cpu_seconds(), Instant::now());
    tokio::time::sleep(idle).await;
    let cpu = cpu_seconds() - cpu_start;
    let wall = wall_start.elapsed().as_secs_f64();
    println!(
        "many tunnels: idle {wall:.0} s, no traffic: {cpu:.2} CPU s = {:.1} % of one core for {count} tunnels = {:.1} CPU ms per tunnel per minute (emulator included)",
        cpu / wall * 100.0,
        cpu / wall * 60.0 * 1e3 / count as f64,
    );

    // Still forwarding after the idle interval: one round trip through every tunnel.
    let mut checks = Vec::new();
    for tunnel in &tunnels {
        let local = tunnel.tcp_addr().unwrap();
        checks.push(tokio::spawn(async move {
            let attempt = async {
                let mut socket = TcpStream::connect(local).await.ok()?;
                socket.write_all(b"ping").await.ok()?;
                let mut back = [0u8; 4];
                socket.read_exact(&mut back).await.ok()?;
                Some(&back == b"ping")
            };
            tokio::time::timeout(Duration::from_secs(30), attempt)
                .await
                .ok()
                .flatten()
                .unwrap_or(false)
        }));
    }
    let check_start = Instant::now();
    let mut echoed = 0;
    for check in checks {
        echoed += usize::from(check.await.unwrap());
    }
    println!(
        "many tunnels: after idling, {echoed} of {count} echoed a round trip ({:.2} s for all)",
        check_start.elapsed().as_secs_f64()
    );

    let stop = Instant::now();
    let shutdowns: Vec<_> = tunnels
        .into_iter()
        .map(|t| tokio::spawn(t.shutdown()))
        .collect();
    for shutdown in shutdowns {
        let _ = shutdown.await;
    }
    println!(
        "many tunnels: {count} shut down in {:.2} s",
        stop.elapsed().as_secs_f64()
    );
    warm.shutdown().await.unwrap();
    emulator.shutdown().await;
}

fn main() {
    // `cargo bench` passes harness flags (e.g. --bench); a plain binary ignores them.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // `cargo bench -p ssm-tether --bench tunnel -- recovery` runs one section
    // (recovery|throughput|paced|memory|striping|connections|many); no name runs all.
    // `many` takes `--tunnels=N` (default 1000), `--idle=SECONDS` (default 60), and, to
    // compare with `memory`, `--pacing-ms=N` (default 1) and `--settle=SECONDS` (default 5).
    let args: Vec<String> = std::env::args().skip(1).collect();
    let wanted: Vec<String> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .cloned()
        .collect();
    let option = |name: &str, default: u64| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}="))?.parse().ok())
            .unwrap_or(default)
    };
    let run = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    runtime.block_on(async {
        // The resident-memory sections first: heap that earlier sections allocated and freed
        // is reused without growing RSS, and made `memory` read 0.2 instead of 1.0 MiB per
        // tunnel when it ran after `throughput`.
        if run("memory") {
            idle_memory().await;
        }
        if run("many") {
            let count = option("tunnels", 1000) as usize;
            let pacing = Duration::from_millis(option("pacing-ms", 1));
            let settle = Duration::from_secs(option("settle", 5));
            let idle = Duration::from_secs(option("idle", 60));
            many_tunnels(count, pacing, settle, idle).await;
        }
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
        if run("connections") {
            // Pacing 0: the tunnel's and the emulator's own speed, no ceiling but the CPU.
            for (n, ups, downs) in concurrent(Duration::ZERO, &[1, 8, 64], 64 << 20, 3).await {
                println!(
                    "{n:>2} connection(s), one session, pacing 0: upload {:.1} MB/s, download {:.1} MB/s (median of {}; samples up {:?}, down {:?})",
                    median(&ups),
                    median(&downs),
                    ups.len(),
                    ups.iter().map(|r| (r * 10.0).round() / 10.0).collect::<Vec<_>>(),
                    downs.iter().map(|r| (r * 10.0).round() / 10.0).collect::<Vec<_>>(),
                );
            }
            // The agent's pacing bounds only what the agent sends: the download.
            let ceiling = 1024.0 / 0.001 / MB;
            for (n, ups, downs) in
                concurrent(Duration::from_millis(1), &[1, 8, 64], 4 << 20, 3).await
            {
                println!(
                    "{n:>2} connection(s), one session, agent pacing 1 ms: upload {:.2} MB/s, download {:.3} MB/s = {:.0} % of the {ceiling:.3} MB/s ceiling (median of {}; samples up {:?}, down {:?})",
                    median(&ups),
                    median(&downs),
                    median(&downs) / ceiling * 100.0,
                    ups.len(),
                    ups.iter().map(|r| (r * 100.0).round() / 100.0).collect::<Vec<_>>(),
                    downs.iter().map(|r| (r * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
                );
            }
        }
    });
}
