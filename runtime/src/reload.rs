//! Hot reload: SIGHUP or a changed policy/plugin file swaps every tunnel's plugins at once.
//!
//! A reload re-reads the policy file and loads *every* tunnel's new plugin set (compiled,
//! instantiated, `init` accepted) before any is swapped in; if anything fails, nothing
//! changes and the error says why. Tunnels, sessions and connections are never touched: only
//! the plugin sections take effect on reload (other changes need a restart, and a warning
//! says so).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::plugin::{LoadError, PluginEngine, TunnelInfo, TunnelLink, TunnelPlugins};
use crate::policy::{self, PluginSource, Policy, PolicyError, TunnelSpec};

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The policy file is invalid now.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A plugin of the new policy could not be loaded.
    #[error(transparent)]
    Plugin(#[from] LoadError),
}

struct Slot {
    sender: watch::Sender<Arc<TunnelPlugins>>,
    spec: TunnelSpec,
}

/// Owns the plugin channels of every running tunnel and swaps their contents.
pub struct Reloader {
    engine: PluginEngine,
    path: PathBuf,
    slots: HashMap<String, Slot>,
    stamps: Vec<(PathBuf, Option<(SystemTime, u64)>)>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The static facts plugins see about a tunnel of the policy file.
pub fn tunnel_info(spec: &TunnelSpec) -> TunnelInfo {
    TunnelInfo {
        name: spec.name.clone(),
        target: spec.target.clone(),
        remote_host: spec.remote_host.clone(),
        remote_port: spec.remote_port,
        local_address: spec.local.to_string(),
    }
}

impl Reloader {
    /// Loads every tunnel's plugins of `policy` (read from `path`); returns the reloader and,
    /// per tunnel name, the channel to put in its `TunnelConfig::plugins`.
    ///
    /// # Errors
    /// The first plugin that cannot be loaded, naming it.
    pub async fn start(
        engine: PluginEngine,
        path: &Path,
        policy: &Policy,
    ) -> Result<(Self, HashMap<String, watch::Receiver<Arc<TunnelPlugins>>>), LoadError> {
        let mut slots = HashMap::new();
        let mut receivers = HashMap::new();
        for spec in &policy.tunnels {
            let set = TunnelPlugins::load(
                &engine,
                &spec.plugins,
                &tunnel_info(spec),
                TunnelLink::new(),
            )
            .await?;
            let (sender, receiver) = watch::channel(Arc::new(set));
            receivers.insert(spec.name.clone(), receiver);
            slots.insert(
                spec.name.clone(),
                Slot {
                    sender,
                    spec: spec.clone(),
                },
            );
        }
        let mut reloader = Self {
            engine,
            path: path.to_owned(),
            slots,
            stamps: Vec::new(),
        };
        reloader.stamps = reloader.watched_files(policy);
        Ok((reloader, receivers))
    }

    /// Re-reads the policy file and swaps in every tunnel's new plugins, or none.
    /// Returns how many tunnels got a new set.
    ///
    /// # Errors
    /// The policy file is invalid or a plugin fails to load; the running plugins stay.
    pub async fn reload(&mut self) -> Result<usize, ReloadError> {
        let policy = policy::load(&self.path)?;
        // Record what was read, so a failed reload is not retried until something changes.
        self.stamps = self.watched_files(&policy);
        let mut staged = Vec::new();
        for spec in &policy.tunnels {
            let Some(slot) = self.slots.get(&spec.name) else {
                tracing::warn!(tunnel = %spec.name,
                    "tunnel added to the policy file; restart ssm-tether to start it");
                continue;
            };
            let mut running = slot.spec.clone();
            running.plugins = spec.plugins.clone();
            if &running != spec {
                tracing::warn!(tunnel = %spec.name,
                    "tunnel settings other than plugins changed; restart ssm-tether to apply them");
            }
            let link = slot.sender.borrow().link.clone();
            let set =
                TunnelPlugins::load(&self.engine, &spec.plugins, &tunnel_info(&slot.spec), link)
                    .await?;
            staged.push((spec.name.clone(), spec.plugins.clone(), set));
        }
        for name in self.slots.keys() {
            if !policy.tunnels.iter().any(|t| &t.name == name) {
                tracing::warn!(tunnel = %name,
                    "tunnel removed from the policy file; it keeps running until ssm-tether restarts");
            }
        }
        let swapped = staged.len();
        for (name, specs, set) in staged {
            if let Some(slot) = self.slots.get_mut(&name) {
                slot.spec.plugins = specs;
                let _ = slot.sender.send(Arc::new(set));
            }
        }
        Ok(swapped)
    }

    /// Whether the policy file or a plugin file changed (mtime or size) since the last load.
    pub fn files_changed(&self) -> bool {
        self.stamps
            .iter()
            .any(|(path, stamp)| stamp_of(path) != *stamp)
    }

    fn watched_files(&self, policy: &Policy) -> Vec<(PathBuf, Option<(SystemTime, u64)>)> {
        let mut paths = vec![self.path.clone()];
        for tunnel in &policy.tunnels {
            for (_, spec) in tunnel.plugins.entries() {
                if let PluginSource::File(path) = &spec.source
                    && !paths.contains(path)
                {
                    paths.push(path.clone());
                }
            }
        }
        paths
            .into_iter()
            .map(|p| {
                let stamp = stamp_of(&p);
                (p, stamp)
            })
            .collect()
    }
}

fn stamp_of(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
