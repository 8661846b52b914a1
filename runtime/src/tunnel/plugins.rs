//! A tunnel's health checks and event hooks: tasks beside the tunnel that probe it through
//! its local end and observe its events, restarted whenever a reload swaps its plugins.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;

use crate::events::{
    EventKind, ProbeFailure, ProbeOutcome, Role, TunnelEvent, TunnelState, TunnelStatus,
};
use crate::plugin::{HealthCheck, PluginInstance, TunnelPlugins};

/// What the supervisor needs of its tunnel.
pub(crate) struct TunnelSide {
    pub(crate) name: String,
    pub(crate) events: broadcast::Sender<TunnelEvent>,
    pub(crate) status: watch::Receiver<TunnelStatus>,
    pub(crate) probe_failures: mpsc::Sender<ProbeFailure>,
}

impl TunnelSide {
    fn emit(&self, kind: EventKind) {
        let _ = self.events.send(TunnelEvent {
            tunnel: self.name.clone(),
            session: None,
            at: SystemTime::now(),
            kind,
        });
    }
}

/// Runs the health checks and hooks of the current set, restarting them on every change,
/// until the tunnel stops. Hook subscriptions for the initial set are taken before this
/// returns, so hooks see the tunnel's very first event.
pub(crate) fn supervise(
    mut plugins: watch::Receiver<Arc<TunnelPlugins>>,
    side: TunnelSide,
) -> tokio::task::JoinHandle<()> {
    let side = Arc::new(side);
    let mut tasks = JoinSet::new();
    spawn_all(&plugins.borrow_and_update(), &side, &mut tasks);
    let mut status = side.status.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = plugins.changed() => {
                    if changed.is_err() {
                        // No more reloads; keep the current tasks until the tunnel stops.
                        stopped(&mut status).await;
                        break;
                    }
                    tasks.abort_all();
                    let set = plugins.borrow_and_update().clone();
                    spawn_all(&set, &side, &mut tasks);
                }
                () = stopped(&mut status) => break,
            }
        }
        // Hooks finish on their own after delivering `stopped`; probes stop now.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
    })
}

/// Returns when the tunnel has stopped (or its driver is gone).
async fn stopped(status: &mut watch::Receiver<TunnelStatus>) {
    let _ = status
        .wait_for(|s| s.state == TunnelState::Stopped)
        .await
        .map(|_| ());
}

fn spawn_all(set: &TunnelPlugins, side: &Arc<TunnelSide>, tasks: &mut JoinSet<()>) {
    for check in &set.health_checks {
        tasks.spawn(probe_loop(Arc::clone(check), Arc::clone(side)));
    }
    for hook in &set.hooks {
        let events = side.events.subscribe();
        tasks.spawn(hook_loop(Arc::clone(hook), events, Arc::clone(side)));
    }
}

async fn probe_loop(check: Arc<HealthCheck>, side: Arc<TunnelSide>) {
    let mut consecutive = 0u32;
    let mut status = side.status.clone();
    let mut next = tokio::time::Instant::now() + check.interval;
    loop {
        tokio::time::sleep_until(next).await;
        next += check.interval;
        let state = status.borrow_and_update().state;
        match state {
            TunnelState::Stopped => return,
            // Probing a tunnel that is recovering says nothing new.
            TunnelState::Forwarding => {}
            _ => continue,
        }
        // The failure that quarantined it was reported; a skipped run says nothing new.
        if check.plugin.quarantined() {
            continue;
        }
        let started = Instant::now();
        let outcome = match check.plugin.check(consecutive).await {
            Ok(outcome) => outcome,
            Err(failure) => {
                // The plugin's failure is no verdict on the tunnel.
                check.plugin.log_failure(&failure);
                side.emit(EventKind::PluginFailed {
                    plugin: failure.plugin,
                    role: Role::HealthCheck,
                    reason: failure.reason,
                    quarantined: failure.quarantined,
                });
                continue;
            }
        };
        let reason = match &outcome {
            ProbeOutcome::Unhealthy(reason) => {
                consecutive += 1;
                Some(reason.clone())
            }
            ProbeOutcome::Healthy | ProbeOutcome::Degraded(_) => {
                consecutive = 0;
                None
            }
        };
        let name = check.plugin.info().name.clone();
        side.emit(EventKind::ProbeResult {
            check: name.clone(),
            outcome,
            consecutive_failures: consecutive,
            duration: started.elapsed(),
        });
        if let Some(reason) = reason
            && consecutive >= check.unhealthy_after
        {
            tracing::warn!(tunnel = %side.name, check = %name, consecutive, %reason,
                "health check failed; asking the reconnect policy");
            let failure = ProbeFailure {
                check: name,
                consecutive_failures: consecutive,
                reason,
            };
            if side.probe_failures.send(failure).await.is_err() {
                return;
            }
            consecutive = 0;
        }
    }
}

async fn hook_loop(
    hook: Arc<PluginInstance>,
    mut events: broadcast::Receiver<TunnelEvent>,
    side: Arc<TunnelSide>,
) {
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(tunnel = %side.name, plugin = %hook.label(), missed,
                    "event hook too slow; events dropped");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        // Hooks are not told about hook failures, their own or another's: two failing
        // hooks would otherwise fail on each other's reports forever.
        if let EventKind::PluginFailed {
            role: Role::EventHook,
            ..
        } = &event.kind
        {
            continue;
        }
        let last = event.kind == EventKind::Stopped;
        // A quarantined hook misses the event silently: the failure that quarantined it was
        // reported, and a report per skipped event would be a flood of its own.
        if hook.quarantined() {
            if last {
                return;
            }
            continue;
        }
        if let Err(failure) = hook.on_event(&event).await {
            hook.log_failure(&failure);
            side.emit(EventKind::PluginFailed {
                plugin: failure.plugin,
                role: Role::EventHook,
                reason: failure.reason,
                quarantined: failure.quarantined,
            });
        }
        if last {
            return;
        }
    }
}
