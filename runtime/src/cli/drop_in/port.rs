//! The port-forwarding kind: the same resilient tunnel as `run`, started on the AWS CLI's
//! session, printing what the official plugin prints so that scripts parsing it keep working.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use ssm_tether::aws::SsmApi;
use ssm_tether::events::{EventKind, TunnelEvent};
use ssm_tether::policy::LocalAddress;
use ssm_tether::tunnel::{Tunnel, TunnelConfig};
use tokio::sync::broadcast;

use super::api::CliStartedApi;
use super::args::{CliSession, printable};
use crate::cli::{EXIT_BIND, EXIT_FAILURE};

/// Runs until SIGINT, SIGTERM or SIGHUP (exit 0 after terminating the session) or until the
/// recovery policy gives up (exit 1).
pub(super) async fn run(
    session: CliSession,
    local: LocalAddress,
    api: SsmApi,
) -> anyhow::Result<ExitCode> {
    let stop = stop_signal().context("cannot handle SIGINT/SIGTERM/SIGHUP")?;
    let session_id = printable(&session.grant.session_id);
    print_now(&format!(
        "\nStarting session with SessionId: {session_id}\n"
    ));
    let name = printable(&session.request.target);
    let config = TunnelConfig::new(name, session.request, local, crate::cli::jitter_seed(0));
    let api = CliStartedApi::new(session.grant, api);
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
            if let Err(err) = tunnel.shutdown().await {
                tracing::warn!(error = %err, "tunnel stopped with an error");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(result) => {
            match result {
                Ok(()) => eprintln!("ssm-tether: the tunnel stopped"),
                Err(err) => eprintln!("ssm-tether: {err}"),
            }
            Ok(ExitCode::from(EXIT_FAILURE))
        }
    }
}

/// The official plugin's lines on stdout (`Port N opened…`, `Waiting for connections...`,
/// `Connection accepted…` once), and one line on stderr whenever the session had to be
/// replaced, which the official plugin never survives.
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
                };
                print_now(&format!("{opened}\nWaiting for connections...\n"));
            }
            EventKind::ConnectionOpened { .. } if !accepted => {
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
            EventKind::GivingUp { reason } => {
                eprintln!("ssm-tether: giving up: {}", printable(&reason));
            }
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
