//! Runs a session the AWS CLI (or `ssh-proxy`) started, with the same resilient tunnel as
//! `run`: port forwarding on a listener, or one stream over stdin/stdout.
//!
//! Port forwarding prints what the official plugin prints on stdout, so that scripts parsing
//! it keep working. A stdin/stdout session keeps stdout for the remote's bytes alone: the
//! official plugin writes its "Starting session" line into the stream, which OpenSSH skips
//! but any other protocol would take for data.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use ssm_tether::aws::{SessionGrant, SsmApi};
use ssm_tether::events::{EventKind, TunnelEvent};
use ssm_tether::policy::LocalAddress;
use ssm_tether::tunnel::core::handshake::SessionKind;
use ssm_tether::tunnel::{Resizer, StartRequest, Tunnel, TunnelConfig, TunnelError};
use tokio::sync::broadcast;

use super::api::CliStartedApi;
use super::args::printable;
use super::terminal;
use crate::cli::{EXIT_BIND, EXIT_FAILURE};

/// What the local end of a session is.
#[derive(Clone, Debug)]
pub(super) enum LocalEnd {
    /// Port forwarding on this listener.
    Listener(LocalAddress),
    /// One Port stream over stdin/stdout.
    Stream,
    /// A shell or command on this terminal (or stdin/stdout).
    Shell,
    /// Stdin/stdout as a Port stream or a shell's terminal, as the agent's first message
    /// says.
    Undecided,
}

/// Runs until SIGINT, SIGTERM or SIGHUP (exit 0 after terminating the session), until a
/// stdin/stdout stream or a shell ends (exit 0, or a command's reported exit code), or until
/// the session cannot go on (exit 1).
pub(super) async fn run(
    grant: SessionGrant,
    request: StartRequest,
    end: LocalEnd,
    api: SsmApi,
) -> anyhow::Result<ExitCode> {
    let stop = stop_signal().context("cannot handle SIGINT/SIGTERM/SIGHUP")?;
    let session_id = printable(&grant.session_id);
    let (local, kind) = match &end {
        LocalEnd::Listener(local) => {
            print_now(&format!(
                "\nStarting session with SessionId: {session_id}\n"
            ));
            (local.clone(), SessionKind::Port)
        }
        LocalEnd::Stream => {
            tracing::info!(%session_id, "starting session");
            (LocalAddress::Stdio, SessionKind::Port)
        }
        LocalEnd::Shell => {
            // On stderr: stdout is the remote terminal's alone.
            eprintln!("\nStarting session with SessionId: {session_id}\n");
            (LocalAddress::Stdio, SessionKind::Shell)
        }
        LocalEnd::Undecided => {
            tracing::info!(%session_id, "starting session");
            (LocalAddress::Stdio, SessionKind::Auto)
        }
    };
    let shell = kind == SessionKind::Shell;
    let undecided = kind == SessionKind::Auto;
    let name = printable(&request.target);
    let mut config = TunnelConfig::new(name, request, local, crate::cli::jitter_seed(0));
    config.kind = kind;
    let api = CliStartedApi::new(grant, api);
    // Raw mode before the first byte of the session can arrive; restored when this is
    // dropped, whichever way this function ends.
    let terminal = Terminal::default();
    if shell {
        terminal.enter()?;
    }
    let mut tunnel = match Tunnel::start(config, api).await {
        Ok(tunnel) => tunnel,
        Err(err) => {
            terminal.restore();
            eprintln!("ssm-tether: {err}");
            return Ok(ExitCode::from(EXIT_BIND));
        }
    };
    if shell {
        follow_terminal_size(&tunnel)?;
    } else if undecided {
        // Raw mode and the terminal's size once the agent says it runs a shell.
        let (mut events, terminal) = (tunnel.subscribe(), terminal.clone());
        let sizes = tunnel.resizer();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => {
                        if let EventKind::Forwarding { mode, .. } = event.kind {
                            if mode.starts_with("shell") {
                                let entered = terminal.enter();
                                if let Err(err) = entered.and_then(|()| follow_size(sizes)) {
                                    tracing::error!(error = %format!("{err:#}"),
                                        "the shell's terminal");
                                }
                            }
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
    tokio::spawn(narrate(
        tunnel.subscribe(),
        tunnel.local().clone(),
        shell || undecided,
        session_id.clone(),
    ));
    let stopped = tokio::select! {
        signal = stop => Ok(signal),
        result = tunnel.wait() => Err(result),
    };
    let exit_code = tunnel.status().borrow().remote_exit_code;
    match stopped {
        Ok(signal) => {
            tracing::info!(signal, "stopping: terminating the session");
            let live = [tunnel.live_sessions()];
            let stop = async {
                if let Err(err) = tunnel.shutdown().await {
                    tracing::warn!(error = %err, "tunnel stopped with an error");
                }
            };
            let completed = crate::cli::stop_or_second_signal(stop, &live).await;
            terminal.restore();
            if completed {
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::from(EXIT_FAILURE))
            }
        }
        // A stream or a shell ends without error when its application or the agent ends
        // it; a command that reported its exit code ends with it.
        Err(Ok(())) if !matches!(end, LocalEnd::Listener(_)) => {
            let was_shell = terminal.restore();
            if shell || was_shell {
                eprintln!("\nExiting session with sessionId: {session_id}.\n");
            }
            Ok(exit_code.map_or(ExitCode::SUCCESS, command_exit_code))
        }
        Err(result) => {
            terminal.restore();
            eprintln!("ssm-tether: {}", ending_line(result));
            Ok(ExitCode::from(EXIT_FAILURE))
        }
    }
}

/// A remote command's exit code as this process's: 0–255 as they are; a command killed by a
/// signal (the agent reports -1) or any other value out of range as 1.
fn command_exit_code(code: i32) -> ExitCode {
    u8::try_from(code).map_or(ExitCode::from(EXIT_FAILURE), ExitCode::from)
}

/// Sends the terminal's size now and on every change (Unix: on every SIGWINCH; Windows:
/// [`terminal::follow_size`]).
fn follow_terminal_size(tunnel: &Tunnel) -> anyhow::Result<()> {
    follow_size(tunnel.resizer())
}

fn follow_size(sizes: Resizer) -> anyhow::Result<()> {
    terminal::follow_size(move |(cols, rows)| sizes.resize(cols, rows))
        .context("cannot watch the terminal's size")
}

/// The terminal's raw mode, entered now or later (when a session turns out to be a shell),
/// and restored once by whichever way the session ends.
#[derive(Clone, Default)]
struct Terminal(std::sync::Arc<std::sync::Mutex<Option<Option<terminal::RawMode>>>>);

impl Terminal {
    fn enter(&self) -> anyhow::Result<()> {
        let raw = terminal::RawMode::enter().context("cannot put the terminal in raw mode")?;
        *self.lock() = Some(raw);
        Ok(())
    }

    /// Restores the terminal; returns whether the session had one (it was a shell).
    fn restore(&self) -> bool {
        self.lock().take().is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Option<terminal::RawMode>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The one line that says why a session stopped on its own.
fn ending_line(result: Result<(), TunnelError>) -> String {
    match result {
        Ok(()) => "the tunnel stopped".to_owned(),
        Err(err) => printable_line(&err.to_string()),
    }
}

/// `text` as one line: control characters escaped, at most 300 characters.
fn printable_line(text: &str) -> String {
    let mut line: String = text
        .chars()
        .take(300)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if text.chars().count() > 300 {
        line.push('…');
    }
    line
}

/// For a listener, the official plugin's lines on stdout (`Port N opened…`, `Waiting for
/// connections...`, `Connection accepted…` once); for a shell, on stderr, that the session
/// is encrypted; for every kind, one line on stderr whenever the session had to be replaced,
/// which the official plugin never survives.
async fn narrate(
    mut events: broadcast::Receiver<TunnelEvent>,
    local: LocalAddress,
    shell: bool,
    session_id: String,
) {
    let (mut opened, mut accepted) = (false, false);
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        match event.kind {
            EventKind::Forwarding { mode, .. } if shell && !opened => {
                opened = true;
                if mode.contains("KMS") {
                    // The terminal is in raw mode: a line needs its carriage return.
                    eprint!("This session is encrypted using AWS KMS.\r\n");
                }
            }
            EventKind::Forwarding { .. } if !opened => {
                opened = true;
                let opened = match &local {
                    LocalAddress::Tcp(addr) => {
                        format!("Port {} opened for sessionId {session_id}.", addr.port())
                    }
                    LocalAddress::Unix(path) => format!(
                        "Unix socket {} opened for sessionId {session_id}.",
                        path.display()
                    ),
                    // stdout carries the stream.
                    LocalAddress::Stdio => continue,
                };
                print_now(&format!("{opened}\nWaiting for connections...\n"));
            }
            EventKind::ConnectionOpened { .. } if !accepted && !local.is_stream() => {
                accepted = true;
                print_now(&format!(
                    "\nConnection accepted for session [{session_id}]\n"
                ));
            }
            EventKind::Restarted {
                session_id: new, ..
            } => eprintln!(
                "ssm-tether: session {session_id} ended; continuing on session {} (same {local})",
                printable(&new)
            ),
            _ => {}
        }
    }
}

/// Writes to stdout at once: the CLI's caller may be a script waiting for the line.
fn print_now(text: &str) {
    let mut stdout = std::io::stdout().lock();
    // A closed stdout (the caller went away) must not stop the tunnel.
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// SIGINT, SIGTERM or SIGHUP (the terminal closed; Windows: Ctrl-C, Ctrl-Break, system
/// shutdown or the console closed), registered before the session is touched so that none of
/// them can end the process without terminating it.
fn stop_signal() -> anyhow::Result<impl Future<Output = &'static str>> {
    let shutdown = crate::cli::shutdown_signal()?;
    let hangup = crate::cli::signal::hangup()?;
    Ok(async move {
        tokio::select! {
            signal = shutdown => signal,
            signal = hangup => signal,
        }
    })
}
