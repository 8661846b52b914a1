//! `ssm-tether demo`: the hourly-recycle failure, compressed into seconds, against the built-in
//! emulator — and a tunnel that carries every byte through it.
//!
//! The emulator recycles both WebSockets every few seconds with skew between the sides (the
//! service's hourly `close 1000 Bye`), refuses the old StreamUrl after each recycle (stale cell)
//! and terminates the session once, service-side, halfway through. Several long-lived
//! connections stream pseudo-random data to an echo server through the tunnel; every byte that
//! comes back is compared with what was sent.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use ssm_emulator::faults::SideSelection;
use ssm_emulator::{Emulator, EmulatorConfig};
use ssm_tether::aws::SsmApi;
use ssm_tether::events::TunnelStatus;
use ssm_tether::plugin::{PluginEngine, TunnelLink, TunnelPlugins};
use ssm_tether::policy::{AwsSettings, RecoverySettings, TunnelSpec};
use ssm_tether::policy::{
    HealthCheckSpec, LocalAddress, PluginSource, PluginSpec, Role, TunnelPluginSpecs,
};
use ssm_tether::tunnel::{Tunnel, TunnelConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::EXIT_FAILURE;

/// Options of `ssm-tether demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// How long to run, e.g. `30s`, `5m`.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Long-lived connections streaming through the tunnel.
    #[arg(long, default_value_t = 4)]
    connections: u64,
    /// The compressed "hour": how often the service recycles the WebSockets.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    recycle_every: Duration,
    /// Seed of the emulator's faults (runs are reproducible per seed).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Byte counters shared by the streaming connections.
#[derive(Default)]
struct Traffic {
    verified: AtomicU64,
    sent: AtomicU64,
    corrupted: AtomicBool,
    /// Bytes sent on connections that the restart closed before they came back.
    interrupted: AtomicU64,
    reopened: AtomicU64,
}

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    if args.connections == 0 {
        anyhow::bail!("--connections must be at least 1");
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(demo(args))
}

async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let mut config = EmulatorConfig {
        seed: args.seed,
        ..EmulatorConfig::default()
    };
    config.faults.recycle_every = Some(args.recycle_every);
    config.faults.recycle_skew = args.recycle_every / 5;
    config.faults.recycle_side = SideSelection::Both;
    config.faults.stale_cell = true;
    let emulator = Emulator::start(config)
        .await
        .context("cannot start the emulator")?;
    let echo = ssm_emulator::destination::echo_server()
        .await
        .context("cannot start the echo server")?;

    // Dummy credentials in files of our own: the demo never touches the user's AWS setup.
    let aws_dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let (config_file, credentials_file) = (
        aws_dir.path().join("config"),
        aws_dir.path().join("credentials"),
    );
    std::fs::write(
        &config_file,
        "[profile ssm-tether-demo]\nregion = us-east-1\n",
    )?;
    std::fs::write(
        &credentials_file,
        "[ssm-tether-demo]\naws_access_key_id = AKIDDEMO\naws_secret_access_key = demo\n",
    )?;
    let mut spec = TunnelSpec::new("demo", "i-0123456789abcdef0", echo.port());
    spec.local = LocalAddress::Tcp(SocketAddr::from(([127, 0, 0, 1], 0)));
    spec.aws = AwsSettings {
        region: Some("us-east-1".into()),
        profile: Some("ssm-tether-demo".into()),
        endpoint_url: Some(emulator.endpoint_url()),
        config_file: Some(config_file),
        credentials_file: Some(credentials_file),
        ..AwsSettings::default()
    };
    spec.transport.ping_interval = Duration::from_secs(2);
    spec.transport.pong_timeout = Duration::from_secs(5);
    spec.recovery = RecoverySettings {
        base_delay: Duration::from_millis(100),
        ..spec.recovery
    };
    // The default plugins, embedded in the binary: the reconnect policy decides every
    // recovery step, a health check probes the echo server through the tunnel.
    spec.plugins = demo_plugins();
    let engine = PluginEngine::new(PluginEngine::default_cache_dir())?;
    let plugins = TunnelPlugins::load(
        &engine,
        &spec.plugins,
        &ssm_tether::reload::tunnel_info(&spec),
        TunnelLink::new(),
    )
    .await
    .context("cannot start the default plugins")?;
    let mut config = TunnelConfig::from_spec(&spec, args.seed);
    let (_plugins_tx, plugins_rx) = tokio::sync::watch::channel(Arc::new(plugins));
    config.plugins = plugins_rx;
    let tunnel = Tunnel::start(config, SsmApi::new(spec.aws.clone()))
        .await
        .context("cannot start the tunnel")?;
    let local = tunnel
        .tcp_addr()
        .context("the demo tunnel listens on TCP")?;
    let plugin_stats = Arc::new(PluginStats::default());
    tokio::spawn(count_plugin_events(
        tunnel.subscribe(),
        plugin_stats.clone(),
    ));

    println!(
        "ssm-tether demo: tunnel {local} -> emulator (SSM API {}) -> agent -> echo {echo}",
        emulator.endpoint_url()
    );
    println!(
        "faults: recycle both WebSockets every {} (skewed), stale StreamUrl after each recycle, \
         one service-side termination at {}",
        humantime::format_duration(args.recycle_every),
        humantime::format_duration(args.duration / 2),
    );

    let traffic = Arc::new(Traffic::default());
    let stop = Arc::new(AtomicBool::new(false));
    let status = tunnel.status();
    let streams: Vec<_> = (0..args.connections)
        .map(|id| {
            tokio::spawn(stream(
                local,
                id,
                traffic.clone(),
                stop.clone(),
                status.clone(),
            ))
        })
        .collect();

    let started = Instant::now();
    let interactive = std::io::stdout().is_terminal();
    let mut terminated = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while started.elapsed() < args.duration {
        tick.tick().await;
        if !terminated && started.elapsed() >= args.duration / 2 {
            terminated = true;
            let _ = emulator.faults().terminate(None).await;
        }
        let line = status_line(started.elapsed(), &status.borrow(), &traffic);
        if interactive {
            print!("\r{line}   ");
            let _ = std::io::stdout().flush();
        } else if started.elapsed().as_secs().is_multiple_of(5) {
            println!("{line}");
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut lost = 0u64;
    for handle in streams {
        lost += handle.await.unwrap_or(0);
    }
    if interactive {
        println!();
    }
    let final_status = status.borrow().clone();
    let recycles = emulator.events().counter("fault.recycle");
    tunnel
        .shutdown()
        .await
        .context("tunnel stopped with an error")?;
    emulator.shutdown().await;

    let corrupted = traffic.corrupted.load(Ordering::SeqCst);
    println!(
        "--- summary after {} ---",
        humantime::format_duration(round(started.elapsed()))
    );
    println!("recycles injected     {recycles}");
    println!("resumes               {}", final_status.resumes);
    println!("restarts              {}", final_status.restarts);
    println!("longest outage        {:?}", final_status.longest_outage);
    println!(
        "bytes verified        {}",
        megabytes(traffic.verified.load(Ordering::SeqCst))
    );
    println!(
        "connections reopened  {} (closed by the service-side termination, {} in flight)",
        traffic.reopened.load(Ordering::SeqCst),
        megabytes(traffic.interrupted.load(Ordering::SeqCst)),
    );
    println!(
        "health checks         {} healthy of {} (builtin:tcp-connect through the tunnel)",
        plugin_stats.healthy.load(Ordering::SeqCst),
        plugin_stats.probes.load(Ordering::SeqCst),
    );
    println!(
        "plugin failures       {} (the built-in fallback would have decided)",
        plugin_stats.failures.load(Ordering::SeqCst),
    );
    println!("bytes lost            {lost}");
    println!(
        "bytes corrupted       {}",
        if corrupted { "YES" } else { "0" }
    );
    if corrupted || lost > 0 || traffic.verified.load(Ordering::SeqCst) == 0 {
        println!("result: FAILED");
        return Ok(ExitCode::from(EXIT_FAILURE));
    }
    println!("result: every byte intact");
    Ok(ExitCode::SUCCESS)
}

/// `builtin:exponential-backoff` decides, `builtin:tcp-connect` probes every 2 s.
fn demo_plugins() -> TunnelPluginSpecs {
    let mut reconnect = PluginSpec::new(
        PluginSource::Builtin("exponential-backoff".into()),
        Role::ReconnectPolicy,
    );
    reconnect.config = r#"{"base_ms":100}"#.into();
    let mut probe = PluginSpec::new(
        PluginSource::Builtin("tcp-connect".into()),
        Role::HealthCheck,
    );
    probe.grants.tunnel_tcp = true;
    TunnelPluginSpecs {
        reconnect: Some(reconnect),
        health_checks: vec![HealthCheckSpec {
            plugin: probe,
            interval: Duration::from_secs(2),
            unhealthy_after: 3,
        }],
        hooks: Vec::new(),
    }
}

#[derive(Default)]
struct PluginStats {
    probes: AtomicU64,
    healthy: AtomicU64,
    failures: AtomicU64,
}

async fn count_plugin_events(
    mut events: tokio::sync::broadcast::Receiver<ssm_tether::events::TunnelEvent>,
    stats: Arc<PluginStats>,
) {
    use ssm_tether::events::{EventKind, ProbeOutcome};
    loop {
        match events.recv().await {
            Ok(event) => match event.kind {
                EventKind::ProbeResult { outcome, .. } => {
                    stats.probes.fetch_add(1, Ordering::SeqCst);
                    if outcome == ProbeOutcome::Healthy {
                        stats.healthy.fetch_add(1, Ordering::SeqCst);
                    }
                }
                EventKind::PluginFailed { .. } => {
                    stats.failures.fetch_add(1, Ordering::SeqCst);
                }
                _ => {}
            },
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn status_line(elapsed: Duration, status: &TunnelStatus, traffic: &Traffic) -> String {
    format!(
        "[{:>4}s] {:<11} resumes {:>3}  restarts {}  verified {:>10}  conns {}",
        elapsed.as_secs(),
        status.state.name(),
        status.resumes,
        status.restarts,
        megabytes(traffic.verified.load(Ordering::Relaxed)),
        status.connections,
    )
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_000_000.0)
}

fn round(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs())
}

/// Pseudo-random, position-dependent bytes: any loss, duplication or reordering shows.
fn pattern(seed: u64, at: u64) -> u8 {
    let x = at.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
    (x >> 29) as u8
}

/// Streams through the tunnel until `stop`, reopening the connection if the service-side
/// termination closed it. Returns the bytes lost on connections that ended otherwise.
async fn stream(
    local: SocketAddr,
    id: u64,
    traffic: Arc<Traffic>,
    stop: Arc<AtomicBool>,
    status: tokio::sync::watch::Receiver<TunnelStatus>,
) -> u64 {
    let mut generation = 0u64;
    let mut lost = 0;
    while !stop.load(Ordering::SeqCst) {
        let seed = id << 32 | generation;
        generation += 1;
        let restarts_before = status.borrow().restarts;
        if let Err(in_flight) = one_connection(local, seed, &traffic, &stop).await {
            // The tunnel closes a connection only when its session is gone (a restart): its
            // in-flight bytes went with that session. Anything else is a loss.
            // A restart closes its connections before the new session is up: give it time
            // to complete before calling the close a loss.
            let mut watch = status.clone();
            let restart = tokio::time::timeout(Duration::from_secs(15), async {
                loop {
                    if watch.borrow_and_update().restarts > restarts_before {
                        return;
                    }
                    if watch.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            })
            .await
            .is_ok();
            if restart {
                traffic.interrupted.fetch_add(in_flight, Ordering::SeqCst);
                traffic.reopened.fetch_add(1, Ordering::SeqCst);
            } else {
                lost += in_flight.max(1);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    lost
}

/// One connection: write paced chunks, check every echoed byte. `Err(bytes in flight)` if the
/// connection closed before everything came back.
async fn one_connection(
    local: SocketAddr,
    seed: u64,
    traffic: &Traffic,
    stop: &AtomicBool,
) -> Result<(), u64> {
    let Ok(socket) = TcpStream::connect(local).await else {
        return Err(0);
    };
    let (mut read, mut write) = socket.into_split();
    let sent = Arc::new(AtomicU64::new(0));
    let writer_sent = sent.clone();
    let writer_stop = Arc::new(AtomicBool::new(false));
    let writer_done = writer_stop.clone();
    let writer = tokio::spawn(async move {
        // 200 KB/s per connection: under the real agent's ~1 MB/s ceiling for all of them.
        let mut buf = vec![0u8; 2 * 1024];
        let mut at = 0u64;
        while !writer_done.load(Ordering::SeqCst) {
            for (i, byte) in buf.iter_mut().enumerate() {
                *byte = pattern(seed, at + i as u64);
            }
            if write.write_all(&buf).await.is_err() {
                break;
            }
            at += buf.len() as u64;
            writer_sent.store(at, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        write
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    let mut drain_deadline: Option<Instant> = None;
    let result = loop {
        if stop.load(Ordering::SeqCst) && drain_deadline.is_none() {
            writer_stop.store(true, Ordering::SeqCst);
            drain_deadline = Some(Instant::now() + Duration::from_secs(20));
        }
        if drain_deadline.is_some() && writer.is_finished() && got >= sent.load(Ordering::SeqCst) {
            break Ok(());
        }
        if drain_deadline.is_some_and(|d| Instant::now() > d) {
            break Err(sent.load(Ordering::SeqCst).saturating_sub(got));
        }
        match tokio::time::timeout(Duration::from_millis(200), read.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0) | Err(_)) => break Err(sent.load(Ordering::SeqCst).saturating_sub(got)),
            Ok(Ok(n)) => {
                if buf[..n]
                    .iter()
                    .enumerate()
                    .any(|(i, b)| *b != pattern(seed, got + i as u64))
                {
                    traffic.corrupted.store(true, Ordering::SeqCst);
                }
                got += n as u64;
                traffic.verified.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    };
    writer_stop.store(true, Ordering::SeqCst);
    let _ = writer.await;
    traffic
        .sent
        .fetch_add(sent.load(Ordering::SeqCst), Ordering::Relaxed);
    result
}
