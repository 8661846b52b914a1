//! Shared harness for end-to-end tests: the emulator in-process, a TCP echo destination, a
//! tunnel pointed at them, and traffic checked byte for byte.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};
use ssm_emulator::{Emulator, EmulatorConfig};
use ssm_tether::aws::SsmApi;
use ssm_tether::policy::{AwsSettings, LocalAddress, TunnelSpec};
use ssm_tether::recovery::RecoverySettings;
use ssm_tether::tunnel::{Tunnel, TunnelConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP echo server on loopback; returns its port.
pub async fn echo_server() -> u16 {
    ssm_emulator::destination::echo_server()
        .await
        .expect("bind echo")
        .port()
}

/// Credentials for the emulator, in files the SDK reads afresh on every call.
pub struct AwsFiles {
    pub dir: tempfile::TempDir,
}

impl AwsFiles {
    pub fn new(access_key: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("config"),
            "[profile test]\nregion = us-east-1\n",
        )
        .expect("config");
        let files = Self { dir };
        files.rotate(access_key);
        files
    }

    /// Rewrites the credentials file, as a credential helper would.
    pub fn rotate(&self, access_key: &str) {
        let text = format!(
            "[test]\naws_access_key_id = {access_key}\naws_secret_access_key = secret-{access_key}\n"
        );
        let tmp = self.dir.path().join("credentials.tmp");
        std::fs::write(&tmp, text).expect("credentials");
        std::fs::rename(&tmp, self.credentials()).expect("rename");
    }

    pub fn credentials(&self) -> PathBuf {
        self.dir.path().join("credentials")
    }

    pub fn api(&self, endpoint_url: String) -> SsmApi {
        SsmApi::new(AwsSettings {
            region: Some("us-east-1".into()),
            profile: Some("test".into()),
            endpoint_url: Some(endpoint_url),
            config_file: Some(self.dir.path().join("config")),
            credentials_file: Some(self.credentials()),
            ..AwsSettings::default()
        })
    }
}

/// An emulator with pacing 0 and the given tweaks.
pub async fn emulator(tweak: impl FnOnce(&mut EmulatorConfig)) -> Emulator {
    let mut config = EmulatorConfig::default();
    config.agent.pacing = Duration::ZERO;
    config.seed = 7;
    tweak(&mut config);
    Emulator::start(config).await.expect("emulator starts")
}

/// A loopback tunnel to `destination_port` with test-sized timers.
pub fn tunnel_config(destination_port: u16) -> TunnelConfig {
    let mut spec = TunnelSpec::new("test", "i-0123456789abcdef0", destination_port);
    spec.local = LocalAddress::Tcp("127.0.0.1:0".parse().expect("addr"));
    let mut config = TunnelConfig::from_spec(&spec, 1);
    config.ping_interval = Duration::from_millis(500);
    config.pong_timeout = Duration::from_secs(2);
    config.connect_timeout = Duration::from_secs(5);
    config.recovery = RecoverySettings {
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_secs(1),
        ..RecoverySettings::default()
    };
    config
}

/// Everything for one test: emulator, echo destination, credentials, a running tunnel.
pub struct Rig {
    pub emulator: Emulator,
    pub files: AwsFiles,
    pub tunnel: Tunnel,
}

impl Rig {
    pub async fn start(tweak: impl FnOnce(&mut EmulatorConfig)) -> Self {
        Self::start_with(tweak, |_| {}).await
    }

    pub async fn start_with(
        tweak: impl FnOnce(&mut EmulatorConfig),
        tweak_tunnel: impl FnOnce(&mut TunnelConfig),
    ) -> Self {
        let emulator = emulator(tweak).await;
        let port = echo_server().await;
        let files = AwsFiles::new("AKIDTEST0001");
        let mut config = tunnel_config(port);
        tweak_tunnel(&mut config);
        let tunnel = Tunnel::start(config, files.api(emulator.endpoint_url()))
            .await
            .expect("tunnel");
        Self {
            emulator,
            files,
            tunnel,
        }
    }

    pub fn local(&self) -> SocketAddr {
        self.tunnel.tcp_addr().expect("a TCP listener")
    }
}

/// Deterministic pseudo-random bytes: connection `seed`, offset `at`.
pub fn pattern(seed: u64, at: u64, out: &mut [u8]) {
    for (i, byte) in out.iter_mut().enumerate() {
        let x = (at + i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
        *byte = (x >> 29) as u8;
    }
}

/// Sends `total` bytes through `local` and reads them back from the echo destination,
/// concurrently; returns (sent digest, received digest).
pub async fn echo_through(local: SocketAddr, seed: u64, total: u64) -> ([u8; 32], [u8; 32]) {
    let socket = TcpStream::connect(local)
        .await
        .expect("connect to the tunnel");
    let (mut read, mut write) = socket.into_split();
    let writer = tokio::spawn(async move {
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 16 * 1024];
        let mut at = 0u64;
        while at < total {
            let n = (total - at).min(buf.len() as u64) as usize;
            pattern(seed, at, &mut buf[..n]);
            write.write_all(&buf[..n]).await.expect("write");
            hash.update(&buf[..n]);
            at += n as u64;
        }
        // Keep the write half open until everything is echoed: smux has no half-close.
        (hash.finalize().into(), write)
    });
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    while got < total {
        let n = read.read(&mut buf).await.expect("read");
        assert!(n > 0, "connection closed after {got} of {total} bytes");
        hash.update(&buf[..n]);
        got += n as u64;
    }
    let (sent, _write) = writer.await.expect("writer");
    (sent, hash.finalize().into())
}

/// Streams pseudo-random bytes through `local` for `duration` while reading the echo back,
/// then drains the echo. Returns (sent digest, received digest, bytes).
pub async fn echo_for(
    local: SocketAddr,
    seed: u64,
    duration: Duration,
    bytes_per_second: u64,
) -> ([u8; 32], [u8; 32], u64) {
    let socket = TcpStream::connect(local)
        .await
        .expect("connect to the tunnel");
    let (mut read, mut write) = socket.into_split();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<u64>();
    let writer = tokio::spawn(async move {
        let mut hash = Sha256::new();
        // Paced, so that data is in flight at every moment of the test, not just at first.
        let chunk = (bytes_per_second / 100).clamp(1, 64 * 1024) as usize;
        let mut buf = vec![0u8; chunk];
        let mut at = 0u64;
        let start = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while start.elapsed() < duration {
            tick.tick().await;
            pattern(seed, at, &mut buf);
            write.write_all(&buf).await.expect("write to the tunnel");
            hash.update(&buf);
            at += buf.len() as u64;
        }
        let _ = done_tx.send(at);
        (hash.finalize().into(), write)
    });
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    let mut total = None;
    let mut done_rx = Some(done_rx);
    loop {
        if total.is_some_and(|t| got >= t) {
            break;
        }
        tokio::select! {
            n = read.read(&mut buf) => {
                let n = n.expect("read from the tunnel");
                assert!(n > 0, "connection {seed} closed after {got} bytes");
                hash.update(&buf[..n]);
                got += n as u64;
            }
            sent = async { done_rx.as_mut().expect("pending").await }, if done_rx.is_some() => {
                total = Some(sent.expect("writer finished"));
                done_rx = None;
            }
        }
    }
    let (sent, _write) = writer.await.expect("writer");
    (sent, hash.finalize().into(), got)
}

/// Runs `connections` long-lived echo streams of `bytes_per_second` each for `duration` and
/// asserts every byte came back.
pub async fn assert_streams_survive(
    local: SocketAddr,
    connections: u64,
    duration: Duration,
    bytes_per_second: u64,
) -> u64 {
    let streams: Vec<_> = (0..connections)
        .map(|seed| tokio::spawn(echo_for(local, seed, duration, bytes_per_second)))
        .collect();
    let mut total = 0;
    for (seed, stream) in streams.into_iter().enumerate() {
        let (sent, received, bytes) = stream.await.expect("stream task");
        assert_eq!(
            sent, received,
            "connection {seed}: echoed bytes differ after {bytes} bytes"
        );
        total += bytes;
    }
    total
}

/// Opens a new echo connection lasting `each` (32 KiB/s) every `every` for `window`, then
/// asserts that every one of them came back whole. Returns how many there were.
pub async fn assert_short_connections_survive(
    local: SocketAddr,
    window: Duration,
    every: Duration,
    each: Duration,
) -> usize {
    let mut short = Vec::new();
    let until = tokio::time::Instant::now() + window;
    while tokio::time::Instant::now() < until {
        // Seeds apart from assert_streams_survive's, so that no two streams share a pattern.
        let seed = 1_000 + short.len() as u64;
        short.push(tokio::spawn(echo_for(local, seed, each, 32 * 1024)));
        tokio::time::sleep(every).await;
    }
    let total = short.len();
    for (i, handle) in short.into_iter().enumerate() {
        let (sent, received, _) = handle
            .await
            .unwrap_or_else(|_| panic!("short connection {i} of {total} broke"));
        assert_eq!(sent, received, "short connection {i}");
    }
    total
}

/// The next tunnel event matching `matches`, or a panic naming `what` after `timeout`.
pub async fn wait_event(
    events: &mut tokio::sync::broadcast::Receiver<ssm_tether::events::TunnelEvent>,
    timeout: Duration,
    what: &str,
    matches: impl Fn(&ssm_tether::events::EventKind) -> bool,
) -> ssm_tether::events::EventKind {
    tokio::time::timeout(timeout, async {
        loop {
            match events.recv().await {
                Ok(event) if matches(&event.kind) => return event.kind,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    panic!("tunnel events ended before {what}")
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} within {timeout:?}"))
}

/// A TCP proxy in front of an HTTP endpoint (`http://host:port`) that holds every chunk of
/// every response for `delay`: a slow SSM endpoint, so that a test can act while an API call
/// is in flight (the service has acted on it, the client does not know yet). Returns the
/// proxy's URL.
pub async fn slow_api_proxy(upstream: String, delay: Duration) -> String {
    let upstream = upstream
        .strip_prefix("http://")
        .expect("an http:// endpoint")
        .to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match server_read.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    tokio::time::sleep(delay).await;
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// A TCP proxy in front of an HTTP endpoint (`http://host:port`) that can be frozen at will:
/// while the returned flag is set, no byte passes in either direction, so a request made then
/// reaches the service only once the flag is cleared. An SSM endpoint that stops answering —
/// or a credential source that takes its time before the request can even be signed — at a
/// moment the test chooses. Returns the proxy's URL and the flag.
pub async fn freezable_api_proxy(
    upstream: String,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let frozen = Arc::new(AtomicBool::new(false));
    let upstream = upstream
        .strip_prefix("http://")
        .expect("an http:// endpoint")
        .to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("addr");
    let flag = frozen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (upstream, frozen) = (upstream.clone(), flag.clone());
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump_unless_frozen(
                    client_read,
                    server_write,
                    frozen.clone(),
                ));
                pump_unless_frozen(server_read, client_write, frozen).await;
            });
        }
    });
    (format!("http://{addr}"), frozen)
}

async fn pump_unless_frozen(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
