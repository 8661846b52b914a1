//! Hot reload: SIGHUP or a changed policy/plugin file swaps every tunnel's plugins at once.
//!
//! A reload re-reads the policy file and loads *every* tunnel's new plugin set (compiled,
//! instantiated, `init` accepted) before any is swapped in; if anything fails, nothing
//! changes and the error says why. Tunnels, sessions and connections are never touched: only
//! the plugin sections take effect on reload (other changes need a restart, and a warning
//! says so).
//!
//! Changed files are noticed from file-system events ([`Reloader::changed`], the `notify`
//! crate: inotify, FSEvents, kqueue): the *directories* holding the policy file and the
//! plugin files are watched, not the files, so that an editor's save by writing a new file
//! and renaming it into place is seen like an in-place write. Events are debounced
//! ([`DEBOUNCE`]), so a save that is several writes reloads once, a few tens of
//! milliseconds after it ends. Where no watcher can be had (inotify watches exhausted, an
//! unsupported platform), the files' mtimes and sizes are polled every [`POLL_INTERVAL`]
//! instead; with a watcher nothing polls.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use notify::Watcher as _;
use tokio::sync::{Notify, watch};

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

/// Quiet time after a file event before the reload: the rest of a save's writes arrive in it.
pub const DEBOUNCE: Duration = Duration::from_millis(50);
/// Longest wait for a quiet moment: a file written continuously still reloads.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);
/// Interval of the mtime poll, used only when no file-system watcher can be created.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How a [`Reloader`] notices changed files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchMode {
    /// File-system events; nothing polls.
    Events,
    /// The mtime poll every [`POLL_INTERVAL`]: no watcher could be created.
    Poll,
    /// Neither: no watcher, and the poll fallback is disabled
    /// ([`Reloader::set_poll_fallback`]). Only SIGHUP and `ssm-tether reload` reload.
    Off,
}

/// The state of change detection; started by the first [`Reloader::changed`].
enum Watch {
    /// Not started: `check` and tests that reload by hand never create a watcher.
    Idle,
    /// Watching the directories of the files.
    Events(EventWatch),
    /// Polling mtimes.
    Poll(tokio::time::Interval),
    /// Nothing notices changes.
    Off,
}

/// A file-system watcher on the directories of the watched files.
struct EventWatch {
    watcher: notify::RecommendedWatcher,
    /// Directories being watched.
    dirs: HashSet<PathBuf>,
    /// The files whose events count; shared with the watcher's thread.
    files: Arc<Mutex<HashSet<PathBuf>>>,
    /// Woken by the watcher's thread on a relevant event.
    signal: Arc<Notify>,
}

impl EventWatch {
    fn new() -> notify::Result<Self> {
        let files: Arc<Mutex<HashSet<PathBuf>>> = Arc::default();
        let signal = Arc::new(Notify::new());
        let (watched, woken) = (Arc::clone(&files), Arc::clone(&signal));
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let relevant = match &event {
                Ok(event) => {
                    event.need_rescan()
                        || (changes_content(&event.kind)
                            && event.paths.iter().any(|path| {
                                watched
                                    .lock()
                                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                                    .contains(path)
                            }))
                }
                // The watcher lost track (e.g. its queue overflowed): a change may be missed,
                // so reload rather than run stale plugins.
                Err(_) => true,
            };
            if relevant {
                // Stores a permit if nobody waits: a change while a reload runs is not lost.
                woken.notify_one();
            }
        })?;
        Ok(Self {
            watcher,
            dirs: HashSet::new(),
            files,
            signal,
        })
    }

    /// Watches the directories of `paths` (and of the files their symbolic links point to)
    /// and no others.
    fn set_files(&mut self, paths: &[PathBuf]) -> notify::Result<()> {
        let mut files = HashSet::new();
        for path in paths {
            let absolute = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            // Editing the target of a link changes the file read, in another directory.
            if let Ok(real) = std::fs::canonicalize(&absolute) {
                files.insert(real);
            }
            files.insert(absolute);
        }
        let dirs: HashSet<PathBuf> = files
            .iter()
            .filter_map(|file| file.parent().map(Path::to_path_buf))
            .collect();
        for dir in self.dirs.difference(&dirs) {
            // It may be gone already; nothing to undo then.
            let _ = self.watcher.unwatch(dir);
        }
        let mut watched = HashSet::new();
        for dir in &dirs {
            if self.dirs.contains(dir) {
                watched.insert(dir.clone());
                continue;
            }
            match self.watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    watched.insert(dir.clone());
                }
                // A plugin path naming a directory that does not exist: its load fails
                // anyway, and fixing the policy file (watched) retries. Falling back to
                // polling everything for a typo would be the worse trade.
                Err(err) if is_not_found(&err) => {
                    tracing::debug!(path = %dir.display(), "directory to watch does not exist");
                }
                Err(err) => return Err(err),
            }
        }
        self.dirs = watched;
        *self
            .files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = files;
        Ok(())
    }

    /// Waits for an event, then for [`DEBOUNCE`] without one (at most [`MAX_DEBOUNCE`]).
    async fn next_change(&self) {
        self.signal.notified().await;
        let deadline = tokio::time::Instant::now() + MAX_DEBOUNCE;
        loop {
            let quiet = tokio::time::sleep(DEBOUNCE);
            tokio::select! {
                () = self.signal.notified() => {}
                () = quiet => return,
            }
            if tokio::time::Instant::now() >= deadline {
                return;
            }
        }
    }
}

fn is_not_found(err: &notify::Error) -> bool {
    match &err.kind {
        notify::ErrorKind::PathNotFound => true,
        notify::ErrorKind::Io(io) => io.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

/// Whether an event can mean new contents: creation, removal, a write, a rename, a change of
/// attributes (`touch`). Not reads: the reload's own reads must not trigger a reload.
fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Other => false,
    }
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
    watch: Watch,
    /// Whether to poll when no watcher can be created.
    poll_fallback: bool,
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
            watch: Watch::Idle,
            poll_fallback: true,
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
        let policy = match policy::load(&self.path) {
            Ok(policy) => policy,
            Err(err) => {
                // A broken edit is not retried until the file changes again.
                let stamp = stamp_of(&self.path);
                if let Some(entry) = self.stamps.iter_mut().find(|(p, _)| *p == self.path) {
                    entry.1 = stamp;
                }
                return Err(err.into());
            }
        };
        // Record what was read, so a failed reload is not retried until something changes.
        self.stamps = self.watched_files(&policy);
        self.rewatch();
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

    /// Whether [`Self::changed`] may poll mtimes when no file-system watcher can be created
    /// (default: yes). Tests turn it off to prove that a change was noticed from an event.
    pub fn set_poll_fallback(&mut self, allowed: bool) {
        self.poll_fallback = allowed;
    }

    /// How changes are noticed; `None` before the first [`Self::changed`].
    pub fn watch_mode(&self) -> Option<WatchMode> {
        match self.watch {
            Watch::Idle => None,
            Watch::Events(_) => Some(WatchMode::Events),
            Watch::Poll(_) => Some(WatchMode::Poll),
            Watch::Off => Some(WatchMode::Off),
        }
    }

    /// Waits until the policy file or a plugin file changes: a file-system event followed by
    /// [`DEBOUNCE`] of quiet, or (no watcher) a changed mtime or size at a poll. The first
    /// call starts watching, and returns at once if a file changed since the last load.
    /// Cancel-safe: a change seen while nobody waits is kept for the next call. Never
    /// returns with [`WatchMode::Off`].
    pub async fn changed(&mut self) {
        if matches!(self.watch, Watch::Idle) {
            self.watch();
            // Changes between the load and the watcher's start produced no event for it.
            if self.files_changed() {
                return;
            }
        }
        match &mut self.watch {
            Watch::Events(events) => events.next_change().await,
            Watch::Poll(interval) => loop {
                interval.tick().await;
                if stamps_changed(&self.stamps) {
                    return;
                }
            },
            Watch::Idle | Watch::Off => std::future::pending().await,
        }
    }

    /// Starts noticing changes now (the first [`Self::changed`] does otherwise) and says how
    /// they are noticed. Call it within a Tokio runtime (the poll fallback's timer).
    pub fn watch(&mut self) -> WatchMode {
        if matches!(self.watch, Watch::Idle) {
            let files = self.files();
            self.watch = match EventWatch::new().and_then(|mut events| {
                events.set_files(&files)?;
                Ok(events)
            }) {
                Ok(events) => Watch::Events(events),
                Err(err) => self.fallback(&err),
            };
        }
        self.watch_mode().unwrap_or(WatchMode::Off)
    }

    /// Follows the files of the policy just loaded: plugin paths may have changed.
    fn rewatch(&mut self) {
        let files = self.files();
        if let Watch::Events(events) = &mut self.watch
            && let Err(err) = events.set_files(&files)
        {
            self.watch = self.fallback(&err);
        }
    }

    /// What to do without a watcher.
    fn fallback(&self, err: &notify::Error) -> Watch {
        if self.poll_fallback {
            tracing::info!(error = %err,
                "no file-system watcher for hot reload; checking the policy and plugin files \
                 every {}s instead", POLL_INTERVAL.as_secs());
            let mut interval = tokio::time::interval(POLL_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            Watch::Poll(interval)
        } else {
            tracing::warn!(error = %err,
                "no file-system watcher for hot reload; changed files are not noticed \
                 (reload with SIGHUP or `ssm-tether reload`)");
            Watch::Off
        }
    }

    fn files(&self) -> Vec<PathBuf> {
        self.stamps.iter().map(|(path, _)| path.clone()).collect()
    }

    /// Whether the policy file or a plugin file changed (mtime or size) since the last load.
    pub fn files_changed(&self) -> bool {
        stamps_changed(&self.stamps)
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

fn stamps_changed(stamps: &[(PathBuf, Option<(SystemTime, u64)>)]) -> bool {
    stamps.iter().any(|(path, stamp)| stamp_of(path) != *stamp)
}

fn stamp_of(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(test)]
mod tests {
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind, RemoveKind,
        RenameMode,
    };

    use super::*;

    #[test]
    fn reads_are_not_changes_and_writes_renames_and_removals_are() {
        for read in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Read),
            EventKind::Other,
        ] {
            assert!(!changes_content(&read), "{read:?}");
        }
        for change in [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Content)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
        ] {
            assert!(changes_content(&change), "{change:?}");
        }
    }

    #[test]
    fn a_missing_directory_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().expect("dir");
        let mut events = match EventWatch::new() {
            Ok(events) => events,
            // No watcher on this machine: what the poll fallback is for.
            Err(_) => return,
        };
        let files = [
            dir.path().join("tunnels.toml"),
            dir.path().join("missing/plugin.wasm"),
        ];
        events
            .set_files(&files)
            .expect("the missing directory is skipped");
        assert_eq!(events.dirs, HashSet::from([dir.path().to_owned()]));
    }
}
