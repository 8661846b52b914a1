//! The plugins of one tunnel, and the tasks that run its health checks and event hooks.
//!
//! A tunnel holds its plugin set behind a `watch` channel: a reload builds a complete new set
//! first (every plugin loaded and initialised) and then swaps it in one step, so a tunnel
//! never runs with half a reload. The driver reads the reconnect policy from the current set
//! on each decision; the [`supervise`] task restarts health checks and hooks when the set
//! changes. Nothing here touches the tunnel's bytes.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;

use super::capability::TunnelLink;
use super::engine::PluginEngine;
use super::error::LoadError;
use super::instance::{PluginInstance, TunnelInfo};
use super::spec::{Role, TunnelPluginSpecs};
use crate::recovery::ProbeFailure;
use crate::session::{EventKind, ProbeOutcome, TunnelEvent, TunnelState, TunnelStatus};

/// A health check with its schedule.
#[derive(Debug)]
pub struct HealthCheck {
    /// The plugin.
    pub plugin: PluginInstance,
    /// Time between runs.
    pub interval: Duration,
    /// Consecutive unhealthy runs that make the tunnel's reconnect policy step in.
    pub unhealthy_after: u32,
}

/// Every plugin of one tunnel.
#[derive(Debug, Default)]
pub struct TunnelPlugins {
    /// The reconnect policy; `None`: the built-in policy.
    pub reconnect: Option<Arc<PluginInstance>>,
    /// Health checks.
    pub health_checks: Vec<Arc<HealthCheck>>,
    /// Event hooks.
    pub hooks: Vec<Arc<PluginInstance>>,
    /// Where the plugins reach the tunnel.
    pub link: TunnelLink,
}

impl TunnelPlugins {
    /// No plugins: the built-in policy decides, nothing probes or observes.
    pub fn none() -> Self {
        Self::default()
    }

    /// Loads and initialises every plugin of `specs` for the tunnel `tunnel`.
    ///
    /// # Errors
    /// The first plugin that fails, naming it.
    pub async fn load(
        engine: &PluginEngine,
        specs: &TunnelPluginSpecs,
        tunnel: &TunnelInfo,
        link: TunnelLink,
    ) -> Result<Self, LoadError> {
        let start =
            |spec, role| PluginInstance::start(engine, spec, role, tunnel.clone(), link.clone());
        let reconnect = match &specs.reconnect {
            Some(spec) => Some(Arc::new(start(spec, Role::ReconnectPolicy).await?)),
            None => None,
        };
        let mut health_checks = Vec::new();
        for check in &specs.health_checks {
            health_checks.push(Arc::new(HealthCheck {
                plugin: start(&check.plugin, Role::HealthCheck).await?,
                interval: check.interval,
                unhealthy_after: check.unhealthy_after,
            }));
        }
        let mut hooks = Vec::new();
        for hook in &specs.hooks {
            hooks.push(Arc::new(start(hook, Role::EventHook).await?));
        }
        Ok(Self {
            reconnect,
            health_checks,
            hooks,
            link,
        })
    }

    /// Whether the set has no plugin at all.
    pub fn is_empty(&self) -> bool {
        self.reconnect.is_none() && self.health_checks.is_empty() && self.hooks.is_empty()
    }
}

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
        let started = Instant::now();
        let outcome = match check.plugin.check(consecutive).await {
            Ok(outcome) => outcome,
            Err(failure) => {
                // The plugin's failure is no verdict on the tunnel.
                tracing::warn!(tunnel = %side.name, error = %failure, "health check failed to run");
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
        // A hook is not told about its own failures: that could feed on itself.
        if let EventKind::PluginFailed { plugin, .. } = &event.kind
            && plugin == hook.label()
        {
            continue;
        }
        let last = event.kind == EventKind::Stopped;
        if let Err(failure) = hook.on_event(&event).await {
            tracing::warn!(tunnel = %side.name, error = %failure, "event hook failed");
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
