//! Command-line interface: argument parsing and dispatch to one module per command.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod check;
mod control;
#[cfg(feature = "emulator")]
mod demo;
mod docs;
pub(crate) mod drop_in;
#[cfg(feature = "emulator")]
mod emulator;
mod frame;
mod install;
mod logging;
mod plugin;
mod run;
pub(crate) mod signal;
#[cfg(feature = "emulator")]
mod soak;

use std::path::PathBuf;

pub(crate) use logging::{flush_logs, init_logging, init_logging_with};
pub(crate) use signal::shutdown_signal;

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
    /// Log lines as text (the default) or as JSON objects, one a line, for log collectors.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        value_name = "FORMAT"
    )]
    log_format: logging::LogFormat,
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
        /// $XDG_RUNTIME_DIR/ssm-tether/NAME-HASH.sock, or .NAME.sock next to the policy file
        /// (Windows: the named pipe \\.\pipe\ssm-tether-NAME-HASH).
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
    /// Days of the service's failures compressed into minutes against the built-in emulator
    /// (recycles, stale cells, failing resumes, frame loss, black holes, terminations,
    /// rotation), with checksummed traffic; reports what survived and exits 1 on any loss.
    #[cfg(feature = "emulator")]
    Soak(soak::SoakArgs),
    /// Decode or encode SSM data-channel frames (ClientMessage), e.g. captured from a session.
    #[command(subcommand)]
    Frame(frame::FrameCommand),
    /// Tools for plugins: inspect a component, call it with a sample event, pin its sha256,
    /// list or clear the compile cache.
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
    /// Print a shell completion script to stdout: bash, zsh, fish, elvish or powershell.
    Completions(docs::CompletionsArgs),
    /// Print the manual page (roff) to stdout, or write one page per command into DIR.
    Man(docs::ManArgs),
}

/// Runs the parsed command and returns the process exit status.
pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    logging::set_log_format(cli.log_format);
    if cli.command.prints_and_exits() {
        signal::die_quietly_on_closed_stdout();
    }
    match cli.command {
        Command::Run { policy, control } => run::run(&policy, control.as_deref()),
        Command::Status(args) => control::status(&args),
        Command::Reload(target) => control::reload(&target),
        Command::Check { policy, online } => check::run(&policy, online),
        #[cfg(feature = "emulator")]
        Command::Demo(args) => demo::run(args),
        #[cfg(feature = "emulator")]
        Command::Soak(args) => soak::run(args),
        Command::Frame(command) => frame::run(command),
        Command::Plugin(command) => plugin::run(command),
        #[cfg(feature = "emulator")]
        Command::Emulator(args) => emulator::run(args),
        Command::SessionManagerPlugin { args } => drop_in::run(&args),
        Command::InstallPlugin(args) => install::run(&args),
        Command::SshProxy(args) => drop_in::ssh_proxy::run(args),
        Command::Completions(args) => docs::completions(&args),
        Command::Man(args) => docs::man(&args),
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
            | Self::Reload(_)
            | Self::Completions(_)
            | Self::Man(_) => true,
            // They keep tunnels (or an emulator) up: a closed log reader must not end them,
            // and stdout of a stream session is the stream (a write error ends it cleanly).
            Self::Run { .. } | Self::SessionManagerPlugin { .. } | Self::SshProxy(_) => false,
            #[cfg(feature = "emulator")]
            Self::Demo(_) | Self::Soak(_) | Self::Emulator(_) => false,
        }
    }
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
