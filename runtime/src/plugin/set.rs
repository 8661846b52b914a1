//! The plugins of one tunnel, loaded and initialised together.
//!
//! A tunnel holds its plugin set behind a `watch` channel: a reload builds a complete new set
//! first (every plugin loaded and initialised) and then swaps it in one step, so a tunnel
//! never runs with half a reload. The tunnel reads the reconnect policy from the current set
//! on each decision and restarts health checks and hooks when the set changes
//! (`crate::tunnel`). Nothing here touches the tunnel's bytes.

use std::sync::Arc;
use std::time::Duration;

use super::capability::TunnelLink;
use super::engine::PluginEngine;
use super::error::LoadError;
use super::instance::{PluginInstance, TunnelInfo};
use crate::policy::{Role, TunnelPluginSpecs};

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
