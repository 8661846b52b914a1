//! `ssm-tether run POLICY.toml`: keep every tunnel of a policy file up until a signal.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use ssm_tether::aws::SsmApi;
use ssm_tether::events::{EventKind, TunnelEvent};
use ssm_tether::plugin::PluginEngine;
use ssm_tether::policy;
use ssm_tether::reload::Reloader;
use ssm_tether::tunnel::{Tunnel, TunnelConfig, TunnelError};
use tokio::sync::broadcast;

use super::{EXIT_BIND, EXIT_FAILURE, EXIT_USAGE};

/// Loads the policy, starts every tunnel, and runs until SIGINT/SIGTERM (exit 0 after a clean
/// TerminateSession of every session) or until a tunnel gives up (exit 1, the others stopped
/// cleanly).
pub(crate) fn run(path: &Path) -> anyhow::Result<ExitCode> {
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
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot handle SIGHUP")?;
        let shutdown = super::shutdown_signal().context("cannot handle SIGTERM/SIGINT")?;
        let engine = PluginEngine::new(PluginEngine::default_cache_dir())?;
        let (mut reloader, mut plugins) = match Reloader::start(engine, path, &policy).await {
            Ok(started) => started,
            Err(err) => {
                eprintln!("ssm-tether: {err}");
                return Ok(ExitCode::from(EXIT_USAGE));
            }
        };
        let mut tunnels = Vec::new();
        for (index, spec) in policy.tunnels.iter().enumerate() {
            let mut config = TunnelConfig::from_spec(spec, super::jitter_seed(index));
            if let Some(receiver) = plugins.remove(&spec.name) {
                config.plugins = receiver;
            }
            match Tunnel::start(config, SsmApi::new(spec.aws.clone())).await {
                Ok(tunnel) => {
                    tokio::spawn(log_events(tunnel.subscribe()));
                    tracing::info!(tunnel = %spec.name, local = %tunnel.local(), "listening");
                    tunnels.push(tunnel);
                }
                Err(err) => {
                    eprintln!("ssm-tether: {err}");
                    stop_all(tunnels).await;
                    return Ok(ExitCode::from(EXIT_BIND));
                }
            }
        }
        let outcome = tokio::select! {
            signal = shutdown => Ok(signal),
            failed = first_failure(&mut tunnels) => Err(failed),
            never = reload_loop(&mut reloader, hangup) => match never {},
        };
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
        if super::stop_or_second_signal(stop_all(tunnels), &live).await {
            Ok(code)
        } else {
            Ok(ExitCode::from(EXIT_FAILURE))
        }
    })
}

/// Reloads plugins on SIGHUP or when the policy file or a plugin file changes (polled every
/// second); a failed reload keeps the running plugins and logs why.
async fn reload_loop(
    reloader: &mut Reloader,
    mut hangup: tokio::signal::unix::Signal,
) -> std::convert::Infallible {
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    loop {
        let trigger = tokio::select! {
            _ = hangup.recv() => "SIGHUP",
            _ = poll.tick() => {
                if !reloader.files_changed() {
                    continue;
                }
                "file change"
            }
        };
        match reloader.reload().await {
            Ok(tunnels) => tracing::info!(trigger, tunnels, "plugins reloaded"),
            Err(err) => tracing::error!(trigger, error = %err,
                "reload failed; the running plugins stay"),
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
