//! One wasmtime engine per process, the linker with the host's imports, and loading:
//! bytes → compiled component (cached) → world detected → imports checked once
//! (`InstancePre`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, InstancePre, Linker};
use wasmtime::{Config, Engine};

use super::bindings::{self, health, hooks, plugin, reconnect};
use super::cache::{self, CacheCleared, CacheError, CacheListing, ComponentCache};
use super::compile::{self, CompileOptions};
use super::error::LoadError;
use super::sandbox::StoreState;
use super::text;
use crate::builtin;
use crate::policy::{PluginSource, Role, Sha256Pin};

/// The WIT package version this runtime provides. Guests built for any `0.1.x` load: imports
/// and exports are matched semver-compatibly (an older guest simply does not use what later
/// versions added; a newer one that imports something this host lacks fails to link, naming
/// it).
pub const PACKAGE_VERSION: &str = "0.1.1";
/// The versions accepted: the same major and minor version (0.x semver).
const COMPATIBLE: &str = "0.1";
/// The WIT package name.
const PACKAGE: &str = "ssm-tether:plugin";

/// Epoch tick: the granularity of CPU budgets.
pub(crate) const TICK: Duration = Duration::from_millis(10);

/// The plugin engine: compiles, caches and links plugins. Cheap to clone.
#[derive(Clone)]
pub struct PluginEngine {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<StoreState>,
    cache: Option<ComponentCache>,
    compile: CompileOptions,
    /// Held while compiling.
    compile_slot: std::sync::Mutex<()>,
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEngine")
            .field("cache", &self.inner.cache)
            .field("compile", &self.inner.compile)
            .finish_non_exhaustive()
    }
}

impl PluginEngine {
    /// An engine caching compiled plugins in `cache_dir` (`None`: no disk cache) and
    /// compiling with the default [`CompileOptions`], with an epoch ticker thread that ends
    /// when the engine is dropped.
    ///
    /// # Errors
    /// wasmtime rejects the configuration, or the linker cannot be built.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, LoadError> {
        Self::with_options(cache_dir, CompileOptions::default())
    }

    /// Like [`Self::new`], compiling within `compile`'s budgets.
    ///
    /// # Errors
    /// wasmtime rejects the configuration, or the linker cannot be built.
    pub fn with_options(
        cache_dir: Option<PathBuf>,
        compile: CompileOptions,
    ) -> Result<Self, LoadError> {
        let engine =
            Engine::new(&engine_config()).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        // Rust's wasm32-wasip2 std imports some WASI interfaces; they are served by an empty,
        // deny-all context (see `sandbox`).
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        bindings::Host_::add_to_linker::<_, HasSelf<StoreState>>(&mut linker, |s| s)
            .map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let cache = cache_dir.map(|dir| ComponentCache::new(dir, &engine));
        spawn_ticker(&engine);
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                cache,
                compile,
                compile_slot: std::sync::Mutex::new(()),
            }),
        })
    }

    /// The default cache directory (`$XDG_CACHE_HOME/ssm-tether/plugins` or
    /// `~/.cache/ssm-tether/plugins`), if a home is known.
    pub fn default_cache_dir() -> Option<PathBuf> {
        ComponentCache::default_dir()
    }

    /// The compiled-plugin cache's entries, most recently used first
    /// (`ssm-tether plugin cache list`).
    ///
    /// # Errors
    /// No cache directory, a distrusted one, or the directory cannot be read.
    pub fn cache_list(&self) -> Result<CacheListing, CacheError> {
        self.inner.cache.as_ref().ok_or(CacheError::NoCache)?.list()
    }

    /// Empties the compiled-plugin cache (`ssm-tether plugin cache clear`): every entry goes,
    /// its key and files that are not entries stay.
    ///
    /// # Errors
    /// No cache directory, a distrusted one, or a file cannot be removed.
    pub fn cache_clear(&self) -> Result<CacheCleared, CacheError> {
        self.inner
            .cache
            .as_ref()
            .ok_or(CacheError::NoCache)?
            .clear()
    }

    /// Loads a plugin: reads it, compiles it (or takes it from the cache), finds its world and
    /// checks its imports. Does not run any of its code.
    ///
    /// # Errors
    /// See [`LoadError`]; every variant names the plugin.
    pub async fn load(&self, source: &PluginSource) -> Result<Arc<LoadedPlugin>, LoadError> {
        self.load_pinned(source, None).await
    }

    /// Like [`Self::load`], refusing the plugin unless the bytes read hash to `pin` (the
    /// entry's `sha256`). The check is on the very bytes that are then compiled, before the
    /// compiler or the cache sees them.
    ///
    /// # Errors
    /// [`LoadError::PinMismatch`] naming both hashes, or any error of [`Self::load`].
    pub async fn load_pinned(
        &self,
        source: &PluginSource,
        pin: Option<&Sha256Pin>,
    ) -> Result<Arc<LoadedPlugin>, LoadError> {
        let label = source.to_string();
        let bytes = read_source(source, &label).await?;
        let pin = pin.copied();
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.load_blocking(label, bytes, pin))
            .await
            .map_err(|e| LoadError::Engine(format!("compile task failed: {e}")))?
    }

    /// The sha256 of a plugin's component, read exactly as a load reads it, for
    /// `sha256 = "…"` (`ssm-tether plugin pin`). Nothing is compiled; bytes that are not a
    /// component are refused, so that a pin is never written for the wrong file.
    ///
    /// # Errors
    /// The file cannot be read or is not a component ([`LoadError`]).
    pub async fn fingerprint(source: &PluginSource) -> Result<Sha256Pin, LoadError> {
        let label = source.to_string();
        let bytes = read_source(source, &label).await?;
        tokio::task::spawn_blocking(move || {
            check_header(&label, &bytes)?;
            Ok(Sha256Pin(digest(&bytes)))
        })
        .await
        .map_err(|e| LoadError::Engine(format!("hash task failed: {e}")))?
    }

    fn load_blocking(
        &self,
        label: String,
        bytes: Arc<[u8]>,
        pin: Option<Sha256Pin>,
    ) -> Result<Arc<LoadedPlugin>, LoadError> {
        let digest = digest(&bytes);
        if let Some(pin) = pin
            && pin.0 != digest
        {
            return Err(LoadError::PinMismatch {
                plugin: label,
                expected: pin.to_string(),
                actual: hex::encode(digest),
            });
        }
        check_header(&label, &bytes)?;
        let sha256 = hex::encode(digest);
        let engine = &self.inner.engine;
        let component = self.compiled(&label, &bytes, &digest)?;
        let (world, version) = detect_world(&label, engine, &component)?;
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link {
                plugin: label.clone(),
                detail: text::bounded(&format!("{e:#}"), text::MAX_TEXT),
            })?;
        let link = |e: wasmtime::Error| LoadError::Link {
            plugin: label.clone(),
            detail: text::bounded(&format!("{e:#}"), text::MAX_TEXT),
        };
        let plugin_exports = plugin::GuestIndices::new(&pre).map_err(link)?;
        let role_exports = match world {
            Role::ReconnectPolicy => {
                RoleIndices::Reconnect(reconnect::GuestIndices::new(&pre).map_err(link)?)
            }
            Role::HealthCheck => {
                RoleIndices::Health(health::GuestIndices::new(&pre).map_err(link)?)
            }
            Role::EventHook => RoleIndices::Hooks(hooks::GuestIndices::new(&pre).map_err(link)?),
        };
        let imports = component
            .component_type()
            .imports(engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        Ok(Arc::new(LoadedPlugin {
            label,
            world,
            version,
            sha256,
            size: bytes.len(),
            imports,
            pre,
            plugin_exports,
            role_exports,
        }))
    }
}

impl PluginEngine {
    /// The compiled component: from the cache if it holds a trusted entry for these bytes,
    /// else compiled within the budgets (and then stored).
    fn compiled(
        &self,
        label: &str,
        bytes: &Arc<[u8]>,
        sha256: &[u8; 32],
    ) -> Result<Component, LoadError> {
        let engine = &self.inner.engine;
        let cache = self.inner.cache.as_ref().and_then(ComponentCache::open);
        let cached = || cache.as_ref().and_then(|c| c.load(engine, sha256));
        if let Some(component) = cached() {
            return Ok(component);
        }
        // One compile at a time, so that the memory budget bounds the process too, not each
        // of many tunnels loading plugins at once.
        let _slot = match self.inner.compile_slot.try_lock() {
            Ok(slot) => slot,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                let slot = self
                    .inner
                    .compile_slot
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                // The compile we waited for may have been of the same component.
                if let Some(component) = cached() {
                    return Ok(component);
                }
                slot
            }
        };
        let artifact = compile::compile(&self.inner.compile, engine, label, bytes)?;
        if let Some(cache) = &cache {
            cache.store(sha256, &artifact);
        }
        cache::deserialize(engine, &artifact).map_err(|e| LoadError::Compile {
            plugin: label.to_owned(),
            detail: text::bounded(&format!("{e:#}"), text::MAX_TEXT),
        })
    }
}

/// The engine's configuration; the compile worker builds its engine from it too, so what
/// it compiles loads here.
pub(super) fn engine_config() -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    // Deep recursion traps instead of overflowing the host's stack.
    config.max_wasm_stack(512 << 10);
    config
}

/// A compiled, linked plugin: instantiating it is cheap and cannot fail on imports.
pub struct LoadedPlugin {
    /// As written in the policy file.
    pub label: String,
    /// The world it implements.
    pub world: Role,
    /// The WIT package version it was built for, e.g. `0.1.0`.
    pub version: String,
    /// sha256 of the component bytes, hex.
    pub sha256: String,
    /// Size of the component, bytes.
    pub size: usize,
    /// Every import name (interfaces), e.g. `ssm-tether:plugin/tunnel-tcp@0.1.1`.
    pub imports: Vec<String>,
    pub(crate) pre: InstancePre<StoreState>,
    pub(crate) plugin_exports: plugin::GuestIndices,
    pub(crate) role_exports: RoleIndices,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("label", &self.label)
            .field("world", &self.world)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

impl LoadedPlugin {
    /// Runs the plugin's `describe` in a sandbox with its world's default limits.
    ///
    /// # Errors
    /// The plugin traps or exceeds its limits while starting.
    pub async fn describe(self: &Arc<Self>) -> Result<super::PluginInfo, LoadError> {
        super::sandbox::Sandbox::describe(
            Arc::clone(self),
            crate::policy::Limits::default_for(self.world),
        )
        .await
    }

    /// Whether it imports the `tunnel-tcp` capability (and so needs the grant to do its job).
    pub fn uses_tunnel_tcp(&self) -> bool {
        self.imports
            .iter()
            .any(|i| i.starts_with(&format!("{PACKAGE}/tunnel-tcp@")))
    }

    /// Fails unless it implements `role`'s world.
    ///
    /// # Errors
    /// [`LoadError::WrongWorld`].
    pub fn expect_role(&self, role: Role) -> Result<(), LoadError> {
        if self.world == role {
            Ok(())
        } else {
            Err(LoadError::WrongWorld {
                plugin: self.label.clone(),
                expected: role,
                found: self.world,
            })
        }
    }
}

pub(crate) enum RoleIndices {
    Reconnect(reconnect::GuestIndices),
    Health(health::GuestIndices),
    Hooks(hooks::GuestIndices),
}

/// Largest plugin file accepted. Real components are far smaller (componentize-py embeds
/// CPython in about 18 MB, componentize-js SpiderMonkey in about 12 MB, Rust ones are tens
/// of kilobytes); the bound keeps what a hostile file can make the compiler chew on, and
/// the memory that holds it, in proportion.
pub(super) const MAX_PLUGIN_BYTES: u64 = 64 << 20;

async fn read_bounded(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let path = path.to_owned();
    let read = tokio::task::spawn_blocking(move || {
        crate::trusted_file::read(&path, MAX_PLUGIN_BYTES).map_err(|err| match err {
            crate::trusted_file::ReadError::Io(err) => err,
            crate::trusted_file::ReadError::TooLarge { .. } => std::io::Error::other(format!(
                "larger than the {} MiB a plugin may have",
                MAX_PLUGIN_BYTES >> 20
            )),
            other => std::io::Error::other(other.to_string()),
        })
    });
    read.await.map_err(std::io::Error::other)?
}

/// The bytes of a plugin: embedded, or read from its file as a trusted file (bounded, regular
/// files only). Read once: what is hashed, pinned and compiled is this one buffer.
async fn read_source(source: &PluginSource, label: &str) -> Result<Arc<[u8]>, LoadError> {
    Ok(match source {
        PluginSource::Builtin(name) => builtin::get(name)
            .ok_or_else(|| LoadError::UnknownBuiltin {
                plugin: label.to_owned(),
                known: builtin::names(),
            })?
            .into(),
        PluginSource::File(path) => read_bounded(path)
            .await
            .map_err(|source| LoadError::Read {
                plugin: label.to_owned(),
                path: path.clone(),
                source,
            })?
            .into(),
    })
}

/// The sha256 of a component: the compile cache's key and what `sha256 = "…"` pins.
fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Recognises a component before handing it to Cranelift, for a message that says what the
/// file is instead.
fn check_header(label: &str, bytes: &[u8]) -> Result<(), LoadError> {
    let not = |detail: String| LoadError::NotAComponent {
        plugin: label.to_owned(),
        detail,
    };
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Err(not(
            "it is a core WebAssembly module; build a component, e.g. \
             `cargo build --target wasm32-wasip2`"
                .into(),
        )),
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => Ok(()),
        _ => {
            let head = &bytes[..bytes.len().min(8)];
            Err(not(format!(
                "no WebAssembly header ({} bytes, starting {})",
                bytes.len(),
                hex::encode(head)
            )))
        }
    }
}

/// The world, from the component's exports: unused imports are dropped at build time, so
/// only exports tell the worlds apart.
fn detect_world(
    label: &str,
    engine: &Engine,
    component: &Component,
) -> Result<(Role, String), LoadError> {
    let exports: Vec<String> = component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    let mut found = None;
    for name in &exports {
        let Some(rest) = name.strip_prefix(PACKAGE).and_then(|r| r.strip_prefix('/')) else {
            continue;
        };
        let (interface, version) = rest.split_once('@').unwrap_or((rest, ""));
        let role = match interface {
            "reconnect" => Role::ReconnectPolicy,
            "health" => Role::HealthCheck,
            "hooks" => Role::EventHook,
            _ => continue,
        };
        if !compatible(version) {
            return Err(LoadError::IncompatibleVersion {
                plugin: label.to_owned(),
                found: if version.is_empty() {
                    "(unversioned)".to_owned()
                } else {
                    text::bounded(version, text::MAX_NAME)
                },
                supported: PACKAGE_VERSION,
            });
        }
        found = Some((role, version.to_owned()));
    }
    found.ok_or_else(|| LoadError::NoWorld {
        plugin: label.to_owned(),
        // Export names come from the component: bounded and escaped like any plugin text.
        exports: if exports.is_empty() {
            "nothing".to_owned()
        } else {
            text::bounded(&exports.join(", "), text::MAX_TEXT)
        },
    })
}

/// Whether a guest built for `version` works with this host: any `0.1.x`.
fn compatible(version: &str) -> bool {
    version
        .strip_prefix(COMPATIBLE)
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|patch| !patch.is_empty() && patch.chars().all(|c| c.is_ascii_digit()))
}

/// Advances the engine's epoch every [`TICK`] until the engine is dropped.
fn spawn_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("plugin-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(TICK);
            }
        });
    if let Err(err) = spawned {
        // Without the ticker, calls run until their wall-clock timeout instead of their CPU
        // budget: degraded, not unsafe.
        tracing::error!(error = %err, "plugin epoch ticker not started");
    }
}
