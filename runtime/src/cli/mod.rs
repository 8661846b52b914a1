//! Command-line interface: argument parsing and dispatch to one module per command.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod check;
mod control;
#[cfg(feature = "emulator")]
mod demo;
pub(crate) mod drop_in;
#[cfg(feature = "emulator")]
mod emulator;
mod frame;
mod install;
mod plugin;
mod run;

use std::path::PathBuf;

/// Exit status: an unrecoverable error at run time (a tunnel gave up, the demo lost bytes).
pub(crate) const EXIT_FAILURE: u8 = 1;
/// Exit status: invalid command line or policy file; nothing was started.
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit status: a local listener could not be bound (address in use, permission).
pub(crate) const EXIT_BIND: u8 = 3;

/// ssm-tether keeps AWS SSM port-forwarding tunnels alive for days.
#[derive(Debug, Parser)]
#[command(name = "ssm-tether", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Command {
    /// Run the tunnels of a policy file until SIGINT/SIGTERM.
    Run {
        /// The policy file (TOML), e.g. examples/tunnels.toml.
        policy: PathBuf,
        /// The control socket `status` and `reload` talk to. Default:
        /// $XDG_RUNTIME_DIR/ssm-tether/NAME-HASH.sock, or .NAME.sock next to the policy file.
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
    },
    /// Show the tunnels of a running `ssm-tether run`: state and since when, sessions,
    /// resumes, restarts, connections, bytes, last outage, plugin health.
    Status(control::StatusArgs),
    /// Reload the plugins of a running `ssm-tether run`, as SIGHUP does, and print the
    /// outcome.
    Reload(control::Target),
    /// Validate a policy file without connecting; errors name file, line, field and value.
    Check {
        /// The policy file (TOML).
        policy: PathBuf,
        /// Also call AWS once per tunnel (read-only: DescribeInstanceInformation, GetDocument)
        /// to prove its credentials, target and document; each failure is one line with its
        /// remedy, and any failure exits 1.
        #[arg(long)]
        online: bool,
    },
    /// Watch a tunnel survive compressed hourly recycling, stale cells and a service-side
    /// termination, against the built-in emulator (no AWS account needed).
    #[cfg(feature = "emulator")]
    Demo(demo::DemoArgs),
    /// Decode or encode SSM data-channel frames (ClientMessage), e.g. captured from a session.
    #[command(subcommand)]
    Frame(frame::FrameCommand),
    /// Tools for plugin authors: inspect a component, call it with a sample event.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Run a local SSM service and agent emulator with fault injection (no AWS needed).
    #[cfg(feature = "emulator")]
    Emulator(ssm_emulator::cli::EmulatorArgs),
    /// Act as the AWS CLI's `session-manager-plugin` (what a link of that name runs):
    /// RESPONSE REGION OPERATION PROFILE PARAMETERS ENDPOINT, `--version`, or nothing.
    #[command(name = "session-manager-plugin")]
    SessionManagerPlugin {
        /// The arguments the AWS CLI passes.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Link `session-manager-plugin` to this binary so that `aws ssm start-session` uses it.
    InstallPlugin(install::InstallArgs),
    /// SSH over SSM on stdin/stdout, resumed across recycles: `ProxyCommand ssm-tether
    /// ssh-proxy %h %p` in ~/.ssh/config.
    SshProxy(drop_in::ssh_proxy::SshProxyArgs),
}

/// Runs the parsed command and returns the process exit status.
pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if cli.command.prints_and_exits() {
        die_quietly_on_closed_stdout();
    }
    match cli.command {
        Command::Run { policy, control } => run::run(&policy, control.as_deref()),
        Command::Status(args) => control::status(&args),
        Command::Reload(target) => control::reload(&target),
        Command::Check { policy, online } => check::run(&policy, online),
        #[cfg(feature = "emulator")]
        Command::Demo(args) => demo::run(args),
        Command::Frame(command) => frame::run(command),
        Command::Plugin(command) => plugin::run(command),
        #[cfg(feature = "emulator")]
        Command::Emulator(args) => emulator::run(args),
        Command::SessionManagerPlugin { args } => drop_in::run(&args),
        Command::InstallPlugin(args) => install::run(&args),
        Command::SshProxy(args) => drop_in::ssh_proxy::run(args),
    }
}

impl Command {
    /// Whether the command prints its result and ends, like a Unix filter: its reader going
    /// away (`… | head -1`) should end it quietly, not with a panic.
    fn prints_and_exits(&self) -> bool {
        match self {
            Self::Check { .. }
            | Self::Frame(_)
            | Self::Plugin(_)
            | Self::InstallPlugin(_)
            | Self::Status(_)
            | Self::Reload(_) => true,
            // They keep tunnels (or an emulator) up: a closed log reader must not end them,
            // and stdout of a stream session is the stream (a write error ends it cleanly).
            Self::Run { .. } | Self::SessionManagerPlugin { .. } | Self::SshProxy(_) => false,
            #[cfg(feature = "emulator")]
            Self::Demo(_) | Self::Emulator(_) => false,
        }
    }
}

/// Restores the default action of SIGPIPE, which Rust programs start with ignored: a write to
/// a closed stdout then ends the process with SIGPIPE (status 141 in a shell), as Unix tools
/// do, instead of `println!` panicking with a backtrace.
fn die_quietly_on_closed_stdout() {
    // SAFETY: called on the main thread before any other thread exists (no runtime yet);
    // setting a signal's disposition to its default touches no memory of ours.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Logs to stderr; `RUST_LOG` overrides the default (`info`).
pub(crate) fn init_logging() {
    init_logging_with("info");
}

/// Logs to stderr; `RUST_LOG` overrides `default` (an `EnvFilter` directive).
///
/// Whatever `RUST_LOG` says, the libraries that see secrets are held at `debug`: at `trace`
/// the WebSocket library prints the upgrade request (signed URL, `Authorization`) and every
/// frame (the OpenDataChannel token), and the AWS SDK prints response bodies (StartSession's
/// and ResumeSession's `TokenValue`).
pub(crate) fn init_logging_with(default: &str) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, fmt};
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let secrets = SECRET_SEEING_TARGETS.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |targets, target| targets.with_target(*target, LevelFilter::DEBUG),
    );
    // Written by a thread of its own through a bounded queue that drops lines when full: a
    // log reader that stops reading (a paused pager, a stuck pipe) must never stall tunnels.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("ssm-tether-log")
        .finish(std::io::stderr());
    let layer = fmt::layer()
        .with_writer(writer)
        // Colour codes only for a person at a terminal, not into a log file or ssh's stderr.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // Its default reports a failed write with `eprintln!`, which panics when stderr is a
        // closed pipe: a daemon whose log reader went away must keep its tunnels up.
        .log_internal_errors(false)
        .with_filter(filter)
        .with_filter(secrets);
    // A second initialisation (tests) is harmless.
    if tracing_subscriber::registry()
        .with(layer)
        .try_init()
        .is_ok()
    {
        *log_guard() = Some(guard);
    }
}

/// Lines the log queue holds before it drops new ones (each line is bounded: plugin text is
/// cut at 4 KiB, everything else is ours).
const LOG_QUEUE_LINES: usize = 10_000;

fn log_guard() -> std::sync::MutexGuard<'static, Option<tracing_appender::non_blocking::WorkerGuard>>
{
    static GUARD: std::sync::Mutex<Option<tracing_appender::non_blocking::WorkerGuard>> =
        std::sync::Mutex::new(None);
    GUARD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes out what the log queue still holds (waiting at most about a second, the
/// appender's own bound); call before the process exits.
pub(crate) fn flush_logs() {
    drop(log_guard().take());
}

/// Crates whose `trace` output carries tokens, credentials or signed URLs.
const SECRET_SEEING_TARGETS: &[&str] = &[
    "tungstenite",
    "tokio_tungstenite",
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_http_client",
    "aws_sigv4",
    "aws_config",
    "hyper",
    "hyper_util",
    "h2",
];

/// Handles SIGINT and SIGTERM from now on; the future resolves with the signal's name.
/// Registering early matters: until then either signal ends the process without terminating
/// the sessions it may already have started.
pub(crate) fn shutdown_signal() -> anyhow::Result<impl Future<Output = &'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        }
    })
}

/// Runs `stop` (a shutdown that terminates sessions, which may take up to the tunnel's
/// terminate budget when the API is slow) unless SIGINT or SIGTERM arrives again: then it is
/// cut short at once, and one line names the sessions that may remain at the service until it
/// times them out. Afterwards the same is said, as a warning, of any session whose
/// termination did not succeed. Returns `false` when cut short.
pub(crate) async fn stop_or_second_signal(
    stop: impl Future<Output = ()>,
    live: &[ssm_tether::tunnel::LiveSessions],
) -> bool {
    let remaining = || -> Vec<String> { live.iter().flat_map(|l| l.ids()).collect() };
    let second = match shutdown_signal() {
        Ok(second) => second,
        Err(err) => {
            tracing::warn!(error = %err, "cannot handle a second signal");
            stop.await;
            return true;
        }
    };
    let completed = tokio::select! {
        () = stop => true,
        signal = second => {
            eprintln!(
                "ssm-tether: {signal} again: exiting without waiting; sessions that may remain \
                 until the service times them out: {}",
                list_or_none(&remaining())
            );
            false
        }
    };
    if completed {
        let left = remaining();
        if !left.is_empty() {
            tracing::warn!(sessions = %list_or_none(&left),
                "these sessions could not be terminated and may remain until the service \
                 times them out");
        }
    }
    completed
}

fn list_or_none(ids: &[String]) -> String {
    if ids.is_empty() {
        "none".to_owned()
    } else {
        ids.join(", ")
    }
}

/// Jitter seed for the tunnel at `index`: different across tunnels and runs, so a fleet does
/// not retry in lockstep.
pub(crate) fn jitter_seed(index: usize) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    u64::from(nanos) ^ ((index as u64) << 32) ^ u64::from(std::process::id())
}
