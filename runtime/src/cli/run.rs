//! `ssm-tether run POLICY.toml`: keep every tunnel of a policy file up until a signal.
//!
//! Beside the tunnels it serves what operators use (`ssm_tether::ops`): the control socket
//! (`status`, `reload`), `/metrics`, `/healthz` and `/readyz` when the policy has
//! `[metrics]`, and systemd notifications when started with `NOTIFY_SOCKET`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use ssm_tether::aws::SsmApi;
use ssm_tether::events::{EventKind, TunnelEvent};
use ssm_tether::ops::control::{self, ControlError, ControlSocket, ReloadReport, ReloadRequest};
use ssm_tether::ops::http::HttpEndpoint;
use ssm_tether::ops::notify::Notifier;
use ssm_tether::ops::{Board, Heartbeat};
use ssm_tether::plugin::PluginEngine;
use ssm_tether::policy;
use ssm_tether::reload::Reloader;
use ssm_tether::tunnel::{Tunnel, TunnelConfig, TunnelError};
use tokio::sync::{broadcast, mpsc};

use super::{EXIT_BIND, EXIT_FAILURE, EXIT_USAGE};

/// Loads the policy, starts every tunnel, and runs until SIGINT/SIGTERM (exit 0 after a clean
/// TerminateSession of every session) or until a tunnel gives up (exit 1, the others stopped
/// cleanly). `control` overrides the control socket's default path.
pub(crate) fn run(path: &Path, control: Option<&Path>) -> anyhow::Result<ExitCode> {
    super::init_logging();
    let policy = match policy::load(path) {
        Ok(policy) => policy,
        Err(err) => {
            eprintln!("ssm-tether: {err}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Before anything is started: SIGHUP's default action would end the process.
        let hangup = super::signal::Reload::register().context("cannot handle SIGHUP")?;
        let shutdown = super::shutdown_signal().context("cannot handle SIGTERM/SIGINT")?;
        let heartbeat = Heartbeat::start();
        let notifier = Notifier::from_env();
        // Our own listeners first: a second `run` of the same policy stops here, before it
        // starts any session.
        let control_socket = match bind_control(path, control) {
            Ok(socket) => socket,
            Err(code) => return Ok(code),
        };
        let metrics_endpoint = match policy.metrics {
            Some(settings) => match HttpEndpoint::bind(settings.listen).await {
                Ok(endpoint) => Some(endpoint),
                Err(err) => {
                    eprintln!(
                        "ssm-tether: [metrics]: cannot listen on {}: {err}",
                        settings.listen
                    );
                    return Ok(ExitCode::from(EXIT_BIND));
                }
            },
            None => None,
        };
        let engine = PluginEngine::new(PluginEngine::default_cache_dir())?;
        let (mut reloader, mut plugins) = match Reloader::start(engine, path, &policy).await {
            Ok(started) => started,
            Err(err) => {
                eprintln!("ssm-tether: {err}");
                return Ok(ExitCode::from(EXIT_USAGE));
            }
        };
        let mut tunnels = Vec::new();
        let mut plugin_sets = Vec::new();
        for (index, spec) in policy.tunnels.iter().enumerate() {
            let mut config = TunnelConfig::from_spec(spec, super::jitter_seed(index));
            if let Some(receiver) = plugins.remove(&spec.name) {
                config.plugins = receiver;
            }
            let plugin_set = config.plugins.clone();
            match Tunnel::start(config, SsmApi::new(spec.aws.clone())).await {
                Ok(tunnel) => {
                    tokio::spawn(log_events(tunnel.subscribe()));
                    tracing::info!(tunnel = %spec.name, local = %tunnel.local(), "listening");
                    tunnels.push(tunnel);
                    plugin_sets.push(plugin_set);
                }
                Err(err) => {
                    eprintln!("ssm-tether: {err}");
                    stop_all(tunnels).await;
                    return Ok(ExitCode::from(EXIT_BIND));
                }
            }
        }
        let policy_path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        let board = Board::start(
            policy_path.display().to_string(),
            tunnels.iter().zip(plugin_sets).collect(),
        );
        let (reload_requests, reloads) = mpsc::channel(4);
        let mut servers = Vec::new();
        if let Some(endpoint) = metrics_endpoint {
            let address = endpoint.local_addr();
            board.set_metrics_address(format!("http://{address}/metrics"));
            tracing::info!(%address, "serving /metrics, /healthz and /readyz");
            servers.push(tokio::spawn(endpoint.serve(board.clone(), heartbeat.clone())));
        }
        if let Some(socket) = control_socket {
            tracing::info!(path = %socket.path().display(),
                "control socket: `ssm-tether status` and `ssm-tether reload` reach this run");
            servers.push(tokio::spawn(socket.serve(board.clone(), reload_requests)));
        }
        // Every listener is bound: the tunnels', the metrics endpoint, the control socket.
        // The summary follows from here on (changes from now on reach it), then READY=1.
        notifier.spawn_status(board.clone());
        notifier.ready(&board.summary());
        notifier.spawn_watchdog(heartbeat);
        let outcome = tokio::select! {
            signal = shutdown => Ok(signal),
            failed = first_failure(&mut tunnels) => Err(failed),
            never = reload_loop(&mut reloader, hangup, reloads, &notifier, &board) => match never {},
        };
        notifier.stopping();
        let live: Vec<_> = tunnels.iter().map(Tunnel::live_sessions).collect();
        let code = match outcome {
            Ok(signal) => {
                tracing::info!(signal, "stopping: terminating sessions");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("ssm-tether: {err}");
                ExitCode::from(EXIT_FAILURE)
            }
        };
        let stopped = super::stop_or_second_signal(stop_all(tunnels), &live).await;
        // The control socket's file goes with its task.
        for server in servers {
            server.abort();
            let _ = server.await;
        }
        if stopped {
            Ok(code)
        } else {
            Ok(ExitCode::from(EXIT_FAILURE))
        }
    })
}

/// Binds the control socket: `explicit`, or the policy file's default path. Another `run`
/// holding it, or an explicit path that cannot be bound, stops this one (exit 3); a default
/// path that cannot be set up (a read-only directory) only costs `status` and `reload`.
fn bind_control(policy: &Path, explicit: Option<&Path>) -> Result<Option<ControlSocket>, ExitCode> {
    let path = explicit.map_or_else(|| control::default_path(policy), Path::to_owned);
    match ControlSocket::bind(&path) {
        Ok(socket) => Ok(Some(socket)),
        Err(err @ ControlError::InUse { .. }) => {
            eprintln!("ssm-tether: {err}");
            Err(ExitCode::from(EXIT_BIND))
        }
        Err(err) if explicit.is_some() => {
            eprintln!("ssm-tether: {err}");
            Err(ExitCode::from(EXIT_BIND))
        }
        Err(err) => {
            tracing::warn!(error = %err,
                "no control socket: `ssm-tether status` and `reload` cannot reach this run \
                 (give it one with --control PATH)");
            Ok(None)
        }
    }
}

/// Reloads plugins on SIGHUP (Unix), on `ssm-tether reload` (control endpoint), or when the policy
/// file or a plugin file changes (file-system events, debounced; an mtime poll every second
/// only where no watcher can be created: `Reloader::changed`); a failed reload keeps the
/// running plugins and logs why. Every trigger takes the same path and logs the same lines;
/// systemd hears `RELOADING=1` before and `READY=1` after.
async fn reload_loop(
    reloader: &mut Reloader,
    mut hangup: super::signal::Reload,
    mut requests: mpsc::Receiver<ReloadRequest>,
    notifier: &Notifier,
    board: &Board,
) -> std::convert::Infallible {
    loop {
        let (trigger, answer) = tokio::select! {
            () = hangup.recv() => ("SIGHUP", None),
            Some(request) = requests.recv() => ("ssm-tether reload", Some(request.answer)),
            () = reloader.changed() => ("file change", None),
        };
        notifier.reloading();
        let report = match reloader.reload().await {
            Ok(tunnels) => {
                tracing::info!(trigger, tunnels, "plugins reloaded");
                ReloadReport {
                    reloaded: true,
                    tunnels,
                    message: format!("plugins reloaded ({tunnels} tunnel(s))"),
                }
            }
            Err(err) => {
                tracing::error!(trigger, error = %err, "reload failed; the running plugins stay");
                ReloadReport {
                    reloaded: false,
                    tunnels: 0,
                    message: format!("reload failed; the running plugins stay: {err}"),
                }
            }
        };
        board.metrics().reloaded(report.reloaded);
        notifier.ready(&board.summary());
        if let Some(answer) = answer {
            // The client may have given up waiting.
            let _ = answer.send(report);
        }
    }
}

/// Waits until one tunnel stops on its own and returns why.
async fn first_failure(tunnels: &mut [Tunnel]) -> TunnelError {
    let waits = tunnels.iter_mut().map(|tunnel| Box::pin(tunnel.wait()));
    let (result, _, _) = futures_util::future::select_all(waits).await;
    result.err().unwrap_or_else(|| TunnelError::Internal {
        name: "?".into(),
        detail: "a tunnel stopped without an error".into(),
    })
}

async fn stop_all(tunnels: Vec<Tunnel>) {
    let stops = tunnels
        .into_iter()
        .filter(|t| !t.is_finished())
        .map(Tunnel::shutdown);
    for result in futures_util::future::join_all(stops).await {
        if let Err(err) = result {
            tracing::warn!(error = %err, "tunnel stopped with an error");
        }
    }
}

/// Log lines for the events the tunnel does not log itself; per-frame detail stays at debug
/// level in the tunnel.
async fn log_events(mut events: broadcast::Receiver<TunnelEvent>) {
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let tunnel = event.tunnel;
        match event.kind {
            EventKind::SessionStarted { session_id } => {
                tracing::info!(%tunnel, %session_id, "session started");
            }
            EventKind::ProbeResult {
                check,
                outcome,
                consecutive_failures,
                duration,
            } => {
                tracing::info!(%tunnel, %check, ?outcome, consecutive_failures, ?duration, "health check");
            }
            EventKind::ConnectionOpened { id, peer } => {
                tracing::debug!(%tunnel, id, %peer, "connection opened");
            }
            EventKind::ConnectionClosed {
                id,
                bytes_up,
                bytes_down,
                reason,
            } => {
                tracing::debug!(%tunnel, id, bytes_up, bytes_down, %reason, "connection closed");
            }
            // Lifecycle steps (forwarding, disconnects, attempts, resumes, restarts, rotations,
            // giving up) are logged by the tunnel itself, once.
            _ => {}
        }
    }
}
