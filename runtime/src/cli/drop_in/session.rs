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
use ssm_tether::tunnel::{StartRequest, Tunnel, TunnelConfig, TunnelError};
use tokio::sync::broadcast;

use super::api::CliStartedApi;
use super::args::printable;
use crate::cli::{EXIT_BIND, EXIT_FAILURE};

/// Runs until SIGINT, SIGTERM or SIGHUP (exit 0 after terminating the session), until a
/// stdin/stdout stream ends (exit 0), or until the session cannot go on (exit 1).
pub(super) async fn run(
    grant: SessionGrant,
    request: StartRequest,
    local: LocalAddress,
    api: SsmApi,
) -> anyhow::Result<ExitCode> {
    let stop = stop_signal().context("cannot handle SIGINT/SIGTERM/SIGHUP")?;
    let stream = local.is_stream();
    let session_id = printable(&grant.session_id);
    if stream {
        tracing::info!(%session_id, "starting session");
    } else {
        print_now(&format!(
            "\nStarting session with SessionId: {session_id}\n"
        ));
    }
    let name = printable(&request.target);
    let config = TunnelConfig::new(name, request, local, crate::cli::jitter_seed(0));
    let api = CliStartedApi::new(grant, api);
    let mut tunnel = match Tunnel::start(config, api).await {
        Ok(tunnel) => tunnel,
        Err(err) => {
            eprintln!("ssm-tether: {err}");
            return Ok(ExitCode::from(EXIT_BIND));
        }
    };
    tokio::spawn(narrate(
        tunnel.subscribe(),
        tunnel.local().clone(),
        session_id,
    ));
    let stopped = tokio::select! {
        signal = stop => Ok(signal),
        result = tunnel.wait() => Err(result),
    };
    match stopped {
        Ok(signal) => {
            tracing::info!(signal, "stopping: terminating the session");
            let live = [tunnel.live_sessions()];
            let stop = async {
                if let Err(err) = tunnel.shutdown().await {
                    tracing::warn!(error = %err, "tunnel stopped with an error");
                }
            };
            if crate::cli::stop_or_second_signal(stop, &live).await {
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::from(EXIT_FAILURE))
            }
        }
        // A stream ends without error when its application or the agent ends it.
        Err(Ok(())) if stream => Ok(ExitCode::SUCCESS),
        Err(result) => {
            eprintln!("ssm-tether: {}", ending_line(result));
            Ok(ExitCode::from(EXIT_FAILURE))
        }
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
/// connections...`, `Connection accepted…` once); for every kind, one line on stderr
/// whenever the session had to be replaced, which the official plugin never survives.
async fn narrate(
    mut events: broadcast::Receiver<TunnelEvent>,
    local: LocalAddress,
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

/// SIGINT, SIGTERM or SIGHUP (the terminal closed), registered before the session is
/// touched so that none of them can end the process without terminating it.
fn stop_signal() -> anyhow::Result<impl Future<Output = &'static str>> {
    let shutdown = crate::cli::shutdown_signal()?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(async move {
        tokio::select! {
            signal = shutdown => signal,
            _ = hangup.recv() => "SIGHUP",
        }
    })
}
