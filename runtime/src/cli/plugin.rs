//! `ssm-tether plugin inspect|test|pin|cache`: tools for plugin authors and operators.
//!
//! Whatever a plugin said is printed escaped (`plugin::text`): a plugin cannot forge lines
//! of this output or drive the terminal.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use ssm_tether::aws::{ApiError, ApiErrorKind};
use ssm_tether::events::{Cause, ConnectFailure, EventKind, ProbeFailure, SessionRef, TunnelEvent};
use ssm_tether::plugin::text::escape;
use ssm_tether::plugin::{
    CACHE_MAX_ENV, PACKAGE_VERSION, PluginEngine, PluginInstance, TcpTarget, TunnelInfo, TunnelLink,
};
use ssm_tether::policy::{LocalAddress, PluginSource, PluginSpec, Role};
use ssm_tether::recovery::DecisionContext;
use ssm_tether::transport::connect::ConnectError;

use super::{EXIT_FAILURE, EXIT_USAGE};

/// Plugin tools.
#[derive(Debug, Subcommand)]
pub(crate) enum PluginCommand {
    /// Show a plugin's world, WIT package version, imports and describe().
    Inspect {
        /// The component (.wasm), or builtin:NAME.
        plugin: String,
    },
    /// Call a plugin once with a sample event and print its answer.
    Test(TestArgs),
    /// Print the `sha256 = "…"` line that pins a plugin entry to this exact component.
    Pin {
        /// The component (.wasm), or builtin:NAME.
        plugin: String,
    },
    /// The compiled-plugin cache.
    #[command(subcommand)]
    Cache(CacheCommand),
}

/// `plugin cache` commands.
#[derive(Debug, Subcommand)]
pub(crate) enum CacheCommand {
    /// List the compiled plugins: component, size, last use, and the total against the bound
    /// (SSM_TETHER_PLUGIN_CACHE_MAX_MB, default 256).
    List,
    /// Delete every compiled plugin (each is compiled again at its next load).
    Clear,
}

/// `plugin test` arguments.
#[derive(Debug, Args)]
pub(crate) struct TestArgs {
    /// The component (.wasm), or builtin:NAME.
    plugin: String,
    /// What to send. Reconnect policy: a cause (planned-close, transport-error,
    /// ping-timeout, connect-failed, resume-failed, start-failed, handshake-failed,
    /// session-gone, protocol-error, probe-failed, max-duration-reached). Health check:
    /// probe. Event hook: an event (listening, session-started, connected, forwarding,
    /// disconnected, resuming, resumed, restarting, restarted, giving-up,
    /// connection-opened, connection-closed, stopped). Default: the first of the world.
    #[arg(long)]
    event: Option<String>,
    /// The config table, as JSON (what `init` receives).
    #[arg(long, default_value = "{}")]
    config: String,
    /// Reconnect policy: failed attempts so far in the outage.
    #[arg(long, default_value_t = 0)]
    attempt: u32,
    /// Reconnect policy: failed resumes so far in the outage.
    #[arg(long, default_value_t = 0)]
    failed_resumes: u32,
    /// Health check: where `tunnel-tcp` connects (e.g. a local Redis), standing in for the
    /// tunnel. Grants `tunnel-tcp`.
    #[arg(long)]
    connect: Option<SocketAddr>,
    /// Wall-clock limit of the call, e.g. 5s (default: the world's, as in a policy file).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// CPU budget of the call, e.g. 50ms (default: the world's).
    #[arg(long, value_parser = humantime::parse_duration)]
    cpu: Option<Duration>,
    /// Memory cap in MiB (default: 32).
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..=4096))]
    memory_mb: Option<u64>,
}

pub(crate) fn run(command: PluginCommand) -> anyhow::Result<ExitCode> {
    super::init_logging();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // `pin` only reads and hashes: no engine.
        let engine = || PluginEngine::new(PluginEngine::default_cache_dir());
        match command {
            PluginCommand::Inspect { plugin } => inspect(&engine()?, &plugin).await,
            PluginCommand::Test(args) => test(&engine()?, args).await,
            PluginCommand::Pin { plugin } => pin(&plugin).await,
            PluginCommand::Cache(CacheCommand::List) => cache_list(&engine()?),
            PluginCommand::Cache(CacheCommand::Clear) => cache_clear(&engine()?),
        }
    })
}

/// Prints exactly the line to paste into the plugin's entry, on stdout alone, so that
/// `plugin pin F >> …` or a script can use it as it is.
async fn pin(plugin: &str) -> anyhow::Result<ExitCode> {
    match PluginEngine::fingerprint(&source(plugin)).await {
        Ok(pin) => {
            println!("sha256 = \"{pin}\"");
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!("ssm-tether: {}", escape(&err.to_string()));
            Ok(ExitCode::from(EXIT_USAGE))
        }
    }
}

fn cache_list(engine: &PluginEngine) -> anyhow::Result<ExitCode> {
    let listing = match engine.cache_list() {
        Ok(listing) => listing,
        Err(err) => {
            eprintln!("ssm-tether: {err}");
            return Ok(ExitCode::from(EXIT_FAILURE));
        }
    };
    println!(
        "cache:    {} (bound {}, {CACHE_MAX_ENV})",
        listing.dir.display(),
        size(listing.max_bytes)
    );
    if !listing.entries.is_empty() {
        println!("{:<20}  {:>10}  component sha256", "last used", "size");
    }
    for entry in &listing.entries {
        let when = humantime::format_rfc3339_seconds(entry.last_used);
        let note = if entry.current {
            ""
        } else {
            "  (another ssm-tether version or configuration)"
        };
        println!(
            "{when:<20}  {:>10}  {}{note}",
            size(entry.size),
            entry.component_sha256
        );
    }
    println!(
        "total:    {} entr{}, {} of {}",
        listing.entries.len(),
        if listing.entries.len() == 1 {
            "y"
        } else {
            "ies"
        },
        size(listing.total),
        size(listing.max_bytes)
    );
    Ok(ExitCode::SUCCESS)
}

fn cache_clear(engine: &PluginEngine) -> anyhow::Result<ExitCode> {
    match engine.cache_clear() {
        Ok(cleared) => {
            println!(
                "cleared:  {} file(s), {}",
                cleared.files,
                size(cleared.bytes)
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!("ssm-tether: {err}");
            Ok(ExitCode::from(EXIT_FAILURE))
        }
    }
}

/// Bytes in the largest binary unit that keeps a number ≥ 1, one decimal.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    #[allow(clippy::cast_precision_loss)] // a display value
    let mut value = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1} {unit}")
}

fn source(text: &str) -> PluginSource {
    PluginSource::parse(text, std::path::Path::new(""))
}

async fn inspect(engine: &PluginEngine, plugin: &str) -> anyhow::Result<ExitCode> {
    let loaded = match engine.load(&source(plugin)).await {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("ssm-tether: {}", escape(&err.to_string()));
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    println!("plugin:   {}", loaded.label);
    println!(
        "world:    ssm-tether:plugin/{}@{} (this runtime provides {PACKAGE_VERSION}, accepts 0.1.x)",
        loaded.world, loaded.version
    );
    println!("size:     {} bytes", loaded.size);
    println!("sha256:   {}", loaded.sha256);
    println!(
        "imports:  {}",
        if loaded.imports.is_empty() {
            "(none)".to_owned()
        } else {
            loaded.imports.join(", ")
        }
    );
    if loaded.uses_tunnel_tcp() {
        println!("needs:    grants = [\"tunnel-tcp\"] to open connections through the tunnel");
    }
    match loaded.describe().await {
        Ok(info) => {
            println!("name:     {}", escape(&info.name));
            println!("version:  {}", escape(&info.version));
            println!("about:    {}", escape(&info.description));
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!("ssm-tether: {}", escape(&err.to_string()));
            Ok(ExitCode::from(EXIT_FAILURE))
        }
    }
}

fn sample_tunnel() -> TunnelInfo {
    TunnelInfo {
        name: "sample".into(),
        target: "i-0123456789abcdef0".into(),
        remote_host: None,
        remote_port: 5432,
        local_address: "127.0.0.1:15432".into(),
    }
}

async fn test(engine: &PluginEngine, args: TestArgs) -> anyhow::Result<ExitCode> {
    let source = source(&args.plugin);
    let world = match engine.load(&source).await {
        Ok(loaded) => loaded.world,
        Err(err) => {
            eprintln!("ssm-tether: {}", escape(&err.to_string()));
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let mut spec = PluginSpec::new(source, world);
    spec.config = args.config.clone();
    if let Some(timeout) = args.timeout {
        spec.limits.timeout = timeout;
    }
    if let Some(cpu) = args.cpu {
        spec.limits.cpu = cpu;
    }
    if let Some(mb) = args.memory_mb {
        spec.limits.memory = mb << 20;
    }
    let link = match args.connect {
        Some(address) => {
            spec.grants.tunnel_tcp = true;
            TunnelLink::to(TcpTarget {
                address: LocalAddress::Tcp(address),
                status: None,
            })
        }
        None => TunnelLink::new(),
    };
    let plugin = match PluginInstance::start(engine, &spec, world, sample_tunnel(), link).await {
        Ok(plugin) => plugin,
        Err(err) => {
            eprintln!("ssm-tether: {}", escape(&err.to_string()));
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let event = args.event.as_deref();
    let answer = match world {
        Role::ReconnectPolicy => {
            let cause = match sample_cause(event.unwrap_or("planned-close")) {
                Ok(cause) => cause,
                Err(err) => {
                    eprintln!("ssm-tether: {err}");
                    return Ok(ExitCode::from(EXIT_USAGE));
                }
            };
            println!("cause:    {cause}");
            let context = DecisionContext {
                session: SessionRef {
                    stripe: 0,
                    serial: 1,
                    session_id: Some("sample-session-0123456789abcdef".into()),
                },
                cause,
                attempt: args.attempt,
                failed_resumes: args.failed_resumes,
                outage: Duration::from_millis(1500),
                session_age: Duration::from_secs(3600),
                last_delay: None,
                history: Vec::new(),
            };
            plugin.decide(&context).await.map(|d| format!("{d:?}"))
        }
        Role::HealthCheck => {
            if let Some(other) = event.filter(|e| *e != "probe") {
                eprintln!("ssm-tether: a health check takes --event probe, not `{other}`");
                return Ok(ExitCode::from(EXIT_USAGE));
            }
            plugin.check(0).await.map(|o| format!("{o:?}"))
        }
        Role::EventHook => {
            let kind = match sample_event(event.unwrap_or("disconnected")) {
                Ok(kind) => kind,
                Err(err) => {
                    eprintln!("ssm-tether: {err}");
                    return Ok(ExitCode::from(EXIT_USAGE));
                }
            };
            println!("event:    {kind:?}");
            let event = TunnelEvent {
                tunnel: "sample".into(),
                session: None,
                at: std::time::SystemTime::now(),
                kind,
            };
            plugin
                .on_event(&event)
                .await
                .map(|()| "accepted".to_owned())
        }
    };
    match answer {
        Ok(answer) => {
            println!("answer:   {}", escape(&answer));
            Ok(ExitCode::SUCCESS)
        }
        Err(failure) => {
            println!("failed:   {}", escape(&failure.reason));
            println!("          (the runtime's built-in fallback would decide instead)");
            Ok(ExitCode::from(EXIT_FAILURE))
        }
    }
}

fn api_error(operation: &'static str, kind: ApiErrorKind, code: &str) -> ApiError {
    ApiError {
        operation,
        kind,
        code: Some(code.to_owned()),
        message: format!("sample {code}"),
    }
}

fn sample_cause(name: &str) -> anyhow::Result<Cause> {
    Ok(match name {
        "planned-close" => Cause::PlannedClose,
        "transport-error" => Cause::TransportError("connection reset by peer".into()),
        "ping-timeout" => Cause::PingTimeout,
        "connect-failed" => {
            Cause::ConnectFailed(ConnectFailure::Upgrade(ConnectError::Refused(403)))
        }
        "resume-failed" => Cause::ResumeFailed(api_error(
            "ResumeSession",
            ApiErrorKind::Throttling,
            "ThrottlingException",
        )),
        "start-failed" => Cause::StartFailed(api_error(
            "StartSession",
            ApiErrorKind::TargetNotConnected,
            "TargetNotConnected",
        )),
        "handshake-failed" => Cause::HandshakeFailed("no handshake within 30s".into()),
        "session-gone" => Cause::SessionGone("channel_closed".into()),
        "protocol-error" => Cause::ProtocolError("bad smux version".into()),
        "probe-failed" => Cause::ProbeFailed(ProbeFailure {
            check: "tcp-connect".into(),
            consecutive_failures: 3,
            reason: "connect timed out".into(),
        }),
        "max-duration-reached" => Cause::MaxDurationReached,
        other => anyhow::bail!("unknown cause `{other}` for a reconnect policy (see --help)"),
    })
}

fn sample_event(name: &str) -> anyhow::Result<EventKind> {
    let local: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 15432));
    Ok(match name {
        "listening" => EventKind::Listening {
            local: local.to_string(),
        },
        "session-started" => EventKind::SessionStarted {
            session_id: "sample-0123456789abcdef0".into(),
        },
        "connected" => EventKind::Connected {
            session_id: "sample-0123456789abcdef0".into(),
        },
        "forwarding" => EventKind::Forwarding {
            session_id: "sample-0123456789abcdef0".into(),
            mode: "mux",
            agent_version: "3.3.1142.0".into(),
        },
        "disconnected" => EventKind::Disconnected {
            cause: Cause::PlannedClose,
        },
        "resuming" => EventKind::Resuming {
            attempt: 1,
            outage: Duration::from_millis(12),
        },
        "resumed" => EventKind::Resumed {
            outage: Duration::from_millis(40),
        },
        "restarting" => EventKind::Restarting {
            cause: Cause::SessionGone("channel_closed".into()),
            attempt: 1,
            outage: Duration::from_millis(5),
        },
        "restarted" => EventKind::Restarted {
            session_id: "sample-1".into(),
            outage: Duration::from_millis(900),
        },
        "giving-up" => EventKind::GivingUp {
            reason: "sample".into(),
        },
        "connection-opened" => EventKind::ConnectionOpened {
            id: 7,
            peer: SocketAddr::from(([127, 0, 0, 1], 50123)).to_string(),
        },
        "connection-closed" => EventKind::ConnectionClosed {
            id: 7,
            bytes_up: 1200,
            bytes_down: 34000,
            reason: ssm_tether::events::CloseReason::ClientClosed,
        },
        "stopped" => EventKind::Stopped,
        other => anyhow::bail!("unknown event `{other}` for an event hook (see --help)"),
    })
}
