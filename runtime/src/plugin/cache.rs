//! Compiled components on disk, so a restart or reload does not pay Cranelift again.
//!
//! A cache file is named by the sha256 of the component bytes and of the engine's
//! compatibility hash (wasmtime version, target, every `Config` setting that changes the
//! code), so an upgrade or a different configuration never loads code compiled for another.
//! Any read or deserialize error is a cache miss: the component is compiled again.

use std::hash::Hasher;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Directory of compiled components.
#[derive(Debug, Clone)]
pub(crate) struct ComponentCache {
    dir: PathBuf,
    engine_key: String,
}

impl ComponentCache {
    /// A cache in `dir` (created on first write, private to the user).
    pub(crate) fn new(dir: PathBuf, engine: &Engine) -> Self {
        let mut hasher = ShaHasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        let engine_key = hex::encode(&hasher.0.finalize()[..8]);
        Self { dir, engine_key }
    }

    /// The default location: `$XDG_CACHE_HOME/ssm-tether/plugins`, else
    /// `~/.cache/ssm-tether/plugins`.
    pub(crate) fn default_dir() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".cache"))
            })?;
        Some(base.join("ssm-tether").join("plugins"))
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    /// The compiled component for `bytes`, from the cache or compiled (and stored).
    pub(crate) fn load_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
        sha256: &str,
    ) -> wasmtime::Result<Component> {
        let path = self.path(sha256);
        if let Some(component) = read(engine, &path) {
            return Ok(component);
        }
        let compiled = engine.precompile_component(bytes)?;
        if let Err(err) = write_atomically(&self.dir, &path, &compiled) {
            tracing::debug!(path = %path.display(), error = %err, "plugin cache not written");
        }
        deserialize(engine, &compiled)
    }
}

/// A cached component, or `None` on any problem (missing, truncated, other engine).
fn read(engine: &Engine, path: &Path) -> Option<Component> {
    let bytes = std::fs::read(path).ok()?;
    match deserialize(engine, &bytes) {
        Ok(component) => Some(component),
        Err(err) => {
            tracing::debug!(path = %path.display(), error = %err, "plugin cache entry ignored");
            None
        }
    }
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `Component::deserialize` runs the bytes as native code. They are only ever
    // bytes this engine produced: either just now, or read from a file this process (or an
    // earlier one of the same user) wrote into a directory created private to the user.
    // wasmtime still checks the header against the engine's configuration and rejects a
    // mismatch, which we treat as a miss.
    unsafe { Component::deserialize(engine, bytes) }
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    create_private_dir(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Feeds `Hash` output into sha256, for a key that is stable across processes (unlike
/// `DefaultHasher`).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
