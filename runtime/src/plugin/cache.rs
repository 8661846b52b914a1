//! Compiled components on disk, so a restart or reload does not pay Cranelift again.
//!
//! Loading a compiled component runs its bytes as native code, so an entry is used only if
//! nobody but this user can have written it, and only for the component it was compiled
//! from:
//!
//! * the directory is opened without following a symbolic link and must belong to the
//!   effective uid and be writable by nobody else; entries are opened relative to it without
//!   following links, and must be regular files of the effective uid that group and others
//!   cannot write ([`TrustedDir`]). Under `sudo` with the caller's `HOME`, the caller's cache
//!   fails these checks instead of handing root code to run;
//! * every entry carries an HMAC-SHA256 under a random per-user key (32 bytes from the OS
//!   RNG, file `hmac-key` in the directory, mode 0600), over the component's sha256, the
//!   engine's compatibility hash and the compiled bytes. A changed file, or a valid entry of
//!   another component put in its place, fails the check;
//! * a refused entry is a warning naming its path, never an error for the tunnel: the
//!   component is compiled again and the entry replaced. A directory or key that fails the
//!   checks distrusts the whole cache: components are compiled in memory and nothing is
//!   written.
//!
//! Entries are named by the sha256 of the component and (a prefix of) the engine's
//! compatibility hash (wasmtime version, target, every `Config` setting that changes the
//! code), so an upgrade or a different configuration looks for another file. Entries are
//! written atomically (private temporary file, fsync, rename). Problems that are not about
//! trust (no home directory, read-only file system) leave the cache unused, logged at debug
//! level.
//!
//! The cache is bounded: after every store, entries are evicted least recently used first
//! until their total is within the cap ([`DEFAULT_CACHE_MAX_BYTES`], or
//! `SSM_TETHER_PLUGIN_CACHE_MAX_MB`). A hit sets the entry's modification time to now, so
//! the modification time is the last use; that needs no index, which concurrent processes
//! would have to lock. Only files named like entries (this format's and the first one's)
//! and stale temporary files of entries are ever deleted, and only regular files of this
//! user: never the key, nor anything else found in the directory. A component larger than
//! the cap is not stored at all.

use std::hash::Hasher;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use rand::TryRngCore as _;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::trusted_dir::{DirFile, Distrust, Privacy, TrustedDir};

/// First bytes of every entry: the format (a change makes old entries fail as unknown).
const MAGIC: &[u8; 8] = b"ssmtcw\x00\x02";
/// What the MAC is for, so that it can never be confused with another use of the key.
const MAC_CONTEXT: &[u8] = b"ssm-tether compiled plugin cache entry v2\0";
/// Length of the tag after [`MAGIC`].
const TAG_LEN: usize = 32;
/// The key file, in the cache directory.
const KEY_FILE: &str = "hmac-key";
/// Key length: the output size of SHA-256, as RFC 2104 recommends.
const KEY_LEN: usize = 32;
/// Largest entry read. A compiled component is about twice its component (an 18 MB Python
/// component compiles to 35 MB) and components are at most 64 MiB.
pub(crate) const MAX_ENTRY_BYTES: u64 = 512 << 20;

/// Default bound of the cache: a few Python components (35 MB compiled each) and dozens of
/// Rust ones.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 256 << 20;
/// Environment variable that sets the cache's bound, in MiB (`0`: store nothing).
pub const CACHE_MAX_ENV: &str = "SSM_TETHER_PLUGIN_CACHE_MAX_MB";
/// Most files looked at in one listing: a directory stuffed with files cannot make eviction
/// or `plugin cache list` unbounded.
const MAX_LISTED: usize = 100_000;
/// A temporary file older than this is a crashed writer's leftover, not a write in flight.
const STALE_TEMP: Duration = Duration::from_secs(3600);

type HmacSha256 = Hmac<Sha256>;

/// Directory of compiled components.
#[derive(Debug, Clone)]
pub(crate) struct ComponentCache {
    dir: PathBuf,
    /// Hex prefix of `engine_hash`, for file names.
    engine_key: String,
    /// sha256 of the engine's compatibility hash; authenticated with every entry.
    engine_hash: [u8; 32],
    /// Bound of the total size of the entries, bytes.
    max_bytes: u64,
}

/// One compiled component in the cache, as `ssm-tether plugin cache list` shows it.
#[derive(Clone, Debug)]
pub struct CacheEntry {
    /// The file name.
    pub file: String,
    /// sha256 of the component it was compiled from, hex.
    pub component_sha256: String,
    /// Whether this runtime's engine can use it (other entries are from another version or
    /// configuration and are only waiting to be evicted).
    pub current: bool,
    /// Size, bytes.
    pub size: u64,
    /// When it was last used (stored or loaded).
    pub last_used: SystemTime,
}

/// The contents of the cache.
#[derive(Clone, Debug)]
pub struct CacheListing {
    /// The cache directory.
    pub dir: PathBuf,
    /// Entries, most recently used first.
    pub entries: Vec<CacheEntry>,
    /// Total size of the entries, bytes.
    pub total: u64,
    /// The bound of the total, bytes.
    pub max_bytes: u64,
}

/// What clearing the cache removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheCleared {
    /// Files removed.
    pub files: usize,
    /// Their total size, bytes.
    pub bytes: u64,
}

/// Why the cache could not be listed or cleared.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The engine has no cache directory (no `XDG_CACHE_HOME` or `HOME`).
    #[error("no compiled-plugin cache: neither XDG_CACHE_HOME nor HOME is set")]
    NoCache,
    /// The directory fails the trust checks, so nothing in it is touched.
    #[error("the compiled-plugin cache {} is not trusted: {reason}", dir.display())]
    Distrusted {
        /// The directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// Reading the directory or removing a file failed.
    #[error("the compiled-plugin cache {}: {source}", dir.display())]
    Io {
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// What a file name of the cache directory stands for; `None` for anything not ours.
#[derive(Debug, PartialEq, Eq)]
enum FileKind<'a> {
    /// An entry: the component's sha256 and the engine key, both hex.
    Entry { component: &'a str, engine: &'a str },
    /// The temporary file of an entry being written (or of a crashed writer).
    Temp,
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Recognises the names this cache writes: `SHA256-ENGINE.v2.cwasm`, the first format's
/// `SHA256-ENGINE.cwasm`, and their temporary files `.NAME.RANDOM.tmp`.
fn classify(name: &str) -> Option<FileKind<'_>> {
    if let Some(inner) = name.strip_prefix('.') {
        let (entry, random) = inner.strip_suffix(".tmp")?.rsplit_once('.')?;
        return (is_hex(random, 16) && matches!(classify(entry)?, FileKind::Entry { .. }))
            .then_some(FileKind::Temp);
    }
    let stem = name
        .strip_suffix(".v2.cwasm")
        .or_else(|| name.strip_suffix(".cwasm"))?;
    let (component, engine) = stem.split_once('-')?;
    (is_hex(component, 64) && is_hex(engine, 16)).then_some(FileKind::Entry { component, engine })
}

/// The cache's bound from [`CACHE_MAX_ENV`], else the default; a bad value is a warning.
fn max_bytes_from_env() -> u64 {
    let Some(value) = std::env::var_os(CACHE_MAX_ENV) else {
        return DEFAULT_CACHE_MAX_BYTES;
    };
    match value.to_str().and_then(|v| v.trim().parse::<u64>().ok()) {
        Some(mb) => mb.saturating_mul(1 << 20),
        None => {
            tracing::warn!(
                "{CACHE_MAX_ENV} is not a number of MiB; the compiled-plugin cache keeps its \
                 default bound of {} MiB",
                DEFAULT_CACHE_MAX_BYTES >> 20
            );
            DEFAULT_CACHE_MAX_BYTES
        }
    }
}

impl ComponentCache {
    /// A cache in `dir` (created private to the user on first use).
    pub(crate) fn new(dir: PathBuf, engine: &Engine) -> Self {
        let mut hasher = ShaHasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        let engine_hash: [u8; 32] = hasher.0.finalize().into();
        let engine_key = hex::encode(&engine_hash[..8]);
        Self {
            dir,
            engine_key,
            engine_hash,
            max_bytes: max_bytes_from_env(),
        }
    }

    /// The cache's contents, most recently used first. A cache that does not exist yet is
    /// empty (and is not created).
    pub(crate) fn list(&self) -> Result<CacheListing, CacheError> {
        let mut listing = CacheListing {
            dir: self.dir.clone(),
            entries: Vec::new(),
            total: 0,
            max_bytes: self.max_bytes,
        };
        let Some(dir) = self.open_for_maintenance()? else {
            return Ok(listing);
        };
        let files = dir
            .files(|name| classify(name).is_some(), MAX_LISTED)
            .map_err(|source| self.io_error(source))?;
        for file in files {
            if let Some(FileKind::Entry { component, engine }) = classify(&file.name) {
                listing.total = listing.total.saturating_add(file.size);
                listing.entries.push(CacheEntry {
                    component_sha256: component.to_owned(),
                    current: engine == self.engine_key && file.name.ends_with(".v2.cwasm"),
                    size: file.size,
                    last_used: file.modified,
                    file: file.name,
                });
            }
        }
        listing
            .entries
            .sort_by(|a, b| b.last_used.cmp(&a.last_used).then(a.file.cmp(&b.file)));
        Ok(listing)
    }

    /// Removes every entry and temporary file of entries; the key and any other file stay.
    pub(crate) fn clear(&self) -> Result<CacheCleared, CacheError> {
        let mut cleared = CacheCleared::default();
        let Some(dir) = self.open_for_maintenance()? else {
            return Ok(cleared);
        };
        let files = dir
            .files(|name| classify(name).is_some(), MAX_LISTED)
            .map_err(|source| self.io_error(source))?;
        for file in files {
            // A writer whose temporary file goes only loses its store (a compile next time).
            if dir
                .remove(&file.name)
                .map_err(|source| self.io_error(source))?
            {
                cleared.files += 1;
                cleared.bytes = cleared.bytes.saturating_add(file.size);
            }
        }
        Ok(cleared)
    }

    /// The directory, checked, for `list` and `clear`; `None` if it does not exist.
    fn open_for_maintenance(&self) -> Result<Option<TrustedDir>, CacheError> {
        match std::fs::symlink_metadata(&self.dir) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(self.io_error(source)),
            Ok(_) => {}
        }
        match TrustedDir::open(&self.dir) {
            Ok(dir) => Ok(Some(dir)),
            Err(Distrust::Io(source)) => Err(self.io_error(source)),
            Err(reason) => Err(CacheError::Distrusted {
                dir: self.dir.clone(),
                reason: reason.to_string(),
            }),
        }
    }

    fn io_error(&self, source: std::io::Error) -> CacheError {
        CacheError::Io {
            dir: self.dir.clone(),
            source,
        }
    }

    /// The default location: `$XDG_CACHE_HOME/ssm-tether/plugins`, else
    /// `~/.cache/ssm-tether/plugins`. Both come from the environment, which may be another
    /// user's (`sudo`); [`Self::open`]'s checks are what make that safe.
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

    /// The cache, checked and with its key, for one load; `None` when it must not or cannot
    /// be used (a distrusted directory or key is a warning naming the path).
    pub(crate) fn open(&self) -> Option<OpenCache<'_>> {
        let dir = match TrustedDir::open(&self.dir) {
            Ok(dir) => dir,
            Err(Distrust::Io(err)) => {
                tracing::debug!(path = %self.dir.display(), error = %err, "plugin cache unavailable");
                return None;
            }
            Err(reason) => {
                tracing::warn!(
                    path = %self.dir.display(),
                    "not using the compiled-plugin cache {}: {reason}; plugins are compiled \
                     in memory and nothing is written",
                    self.dir.display()
                );
                return None;
            }
        };
        let key = load_or_create_key(&dir)?;
        Some(OpenCache {
            cache: self,
            dir,
            key,
        })
    }

    fn entry_name(&self, sha256: &[u8; 32]) -> String {
        // `.v2`: the first format had no MAC; its files are not even looked at.
        format!("{}-{}.v2.cwasm", hex::encode(sha256), self.engine_key)
    }

    fn mac(&self, key: &[u8; KEY_LEN], sha256: &[u8; 32]) -> HmacSha256 {
        // Fixed-length fields before the only variable one: the encoding is unambiguous.
        let mut mac = match HmacSha256::new_from_slice(key) {
            Ok(mac) => mac,
            // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
            Err(_) => unreachable!("HMAC accepts a {KEY_LEN}-byte key"),
        };
        mac.update(MAC_CONTEXT);
        mac.update(sha256);
        mac.update(&self.engine_hash);
        mac
    }
}

/// The key, read or (first use) created; `None` distrusts the cache for this load.
fn load_or_create_key(dir: &TrustedDir) -> Option<[u8; KEY_LEN]> {
    let path = dir.path().join(KEY_FILE);
    // Two rounds: another process may create the key between our read and our create.
    for _ in 0..2 {
        match dir.read(KEY_FILE, Privacy::OwnerOnly, KEY_LEN as u64) {
            Ok(Some(bytes)) => {
                if let Ok(key) = <[u8; KEY_LEN]>::try_from(bytes.as_slice()) {
                    return Some(key);
                }
                tracing::warn!(
                    path = %path.display(),
                    "not using the compiled-plugin cache: its key {} has {} bytes, not \
                     {KEY_LEN}; delete the file to start a new cache",
                    path.display(),
                    bytes.len()
                );
                return None;
            }
            Ok(None) => {}
            Err(Distrust::Io(err)) => {
                tracing::debug!(path = %path.display(), error = %err, "plugin cache key unreadable");
                return None;
            }
            Err(reason) => {
                tracing::warn!(
                    path = %path.display(),
                    "not using the compiled-plugin cache: its key {} is not trusted: \
                     {reason}; plugins are compiled in memory and nothing is written",
                    path.display()
                );
                return None;
            }
        }
        let mut key = [0u8; KEY_LEN];
        if let Err(err) = rand::rngs::OsRng.try_fill_bytes(&mut key) {
            tracing::debug!(error = %err, "no OS randomness for the plugin cache key");
            return None;
        }
        match dir.create_new(KEY_FILE, &key) {
            Ok(true) => return Some(key),
            // Someone else created it first: read theirs.
            Ok(false) => {}
            Err(err) => {
                tracing::debug!(path = %path.display(), error = %err, "plugin cache key not created");
                return None;
            }
        }
    }
    None
}

/// The cache during one load: directory checked, key in hand.
#[derive(Debug)]
pub(crate) struct OpenCache<'a> {
    cache: &'a ComponentCache,
    dir: TrustedDir,
    key: [u8; KEY_LEN],
}

impl OpenCache<'_> {
    /// The compiled component for the component whose sha256 is `sha256`, if a trusted,
    /// authentic entry exists. A refused entry is a warning naming its path.
    pub(crate) fn load(&self, engine: &Engine, sha256: &[u8; 32]) -> Option<Component> {
        let name = self.cache.entry_name(sha256);
        let path = self.dir.path().join(&name);
        let refused = |reason: &dyn std::fmt::Display| {
            tracing::warn!(
                path = %path.display(),
                "refusing compiled-plugin cache entry {}: {reason}; compiling the plugin afresh",
                path.display()
            );
        };
        let bytes = match self
            .dir
            .read(&name, Privacy::NotWritableByOthers, MAX_ENTRY_BYTES)
        {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return None,
            Err(Distrust::Io(err)) => {
                tracing::debug!(path = %path.display(), error = %err, "plugin cache entry unreadable");
                return None;
            }
            Err(reason) => {
                refused(&reason);
                return None;
            }
        };
        let artifact = match self.verify(sha256, &bytes) {
            Ok(artifact) => artifact,
            Err(reason) => {
                refused(&reason);
                return None;
            }
        };
        match deserialize(engine, artifact) {
            Ok(component) => {
                self.touch(&name);
                Some(component)
            }
            Err(err) => {
                // Authentic but unusable (wasmtime's own header check disagrees): replace it.
                refused(&format_args!("{err:#}"));
                None
            }
        }
    }

    /// Stores `artifact`, the compiled form of the component whose sha256 is `sha256`,
    /// replacing whatever entry was there. Failure only costs a compile next time.
    /// Stores nothing if the entry alone would exceed the cache's bound; otherwise evicts
    /// the least recently used other entries until the total is within it.
    pub(crate) fn store(&self, sha256: &[u8; 32], artifact: &[u8]) {
        let name = self.cache.entry_name(sha256);
        let path = self.dir.path().join(&name);
        let size = (MAGIC.len() + TAG_LEN + artifact.len()) as u64;
        if size > self.cache.max_bytes {
            tracing::debug!(path = %path.display(), size, max = self.cache.max_bytes,
                "compiled plugin larger than the cache's bound; not stored");
            return;
        }
        let mut mac = self.cache.mac(&self.key, sha256);
        mac.update(artifact);
        let tag = mac.finalize().into_bytes();
        if let Err(err) = self.dir.replace(&name, &[MAGIC, &tag, artifact]) {
            tracing::debug!(path = %path.display(), error = %err, "plugin cache entry not written");
            return;
        }
        self.evict(&name);
    }

    /// Records a use of entry `name` (its modification time), for eviction.
    fn touch(&self, name: &str) {
        if let Err(err) = self.dir.touch(name) {
            let path = self.dir.path().join(name);
            tracing::debug!(path = %path.display(), error = %err, "plugin cache entry not touched");
        }
    }

    /// Deletes least recently used entries other than `keep` until the entries total at
    /// most the bound, and temporary files of crashed writers. Other processes may evict at
    /// the same time: a file already gone is simply skipped.
    fn evict(&self, keep: &str) {
        let files = match self.dir.files(|name| classify(name).is_some(), MAX_LISTED) {
            Ok(files) => files,
            Err(err) => {
                tracing::debug!(path = %self.dir.path().display(), error = %err,
                    "plugin cache not listed for eviction");
                return;
            }
        };
        let now = SystemTime::now();
        let mut total = 0u64;
        let mut candidates: Vec<DirFile> = Vec::new();
        for file in files {
            let temp = classify(&file.name) == Some(FileKind::Temp);
            let stale = now
                .duration_since(file.modified)
                .is_ok_and(|age| age > STALE_TEMP);
            if temp && stale {
                self.remove(&file.name);
                continue;
            }
            // A write in flight counts (it will be an entry) but is not ours to delete.
            total = total.saturating_add(file.size);
            if !temp && file.name != keep {
                candidates.push(file);
            }
        }
        candidates.sort_by(|a, b| a.modified.cmp(&b.modified).then(a.name.cmp(&b.name)));
        for file in candidates {
            if total <= self.cache.max_bytes {
                break;
            }
            self.remove(&file.name);
            total = total.saturating_sub(file.size);
        }
    }

    fn remove(&self, name: &str) {
        let path = self.dir.path().join(name);
        match self.dir.remove(name) {
            Ok(_) => tracing::debug!(path = %path.display(), "plugin cache entry evicted"),
            Err(err) => {
                tracing::debug!(path = %path.display(), error = %err, "plugin cache entry not evicted");
            }
        }
    }

    /// The compiled bytes of an entry, if it is authentic and for this component.
    fn verify<'b>(&self, sha256: &[u8; 32], entry: &'b [u8]) -> Result<&'b [u8], &'static str> {
        let Some(rest) = entry.strip_prefix(MAGIC) else {
            return Err("not an entry of this format");
        };
        let Some((tag, artifact)) = rest.split_at_checked(TAG_LEN) else {
            return Err("truncated");
        };
        let mut mac = self.cache.mac(&self.key, sha256);
        mac.update(artifact);
        // Constant-time comparison.
        mac.verify_slice(tag).map_err(|_| {
            "its authentication code does not match (altered, written without this \
             user's key, or compiled from another component)"
        })?;
        Ok(artifact)
    }
}

/// Turns compiled bytes into a component.
///
/// Only for bytes that this user's ssm-tether produced: an entry whose HMAC under the
/// user's key checked out ([`OpenCache::load`]), or the output of our own compiler just now
/// ([`super::compile`]).
#[allow(unsafe_code)]
pub(crate) fn deserialize(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `Component::deserialize` runs the bytes as native code, so they must come from
    // `Engine::precompile_component` of a compatible engine and be unaltered. Both callers
    // guarantee that: the cache verified an HMAC under a key only this user can read over
    // exactly these bytes (and the component and engine they are for); the compiler is this
    // process, or a child running this same executable (see `compile`). wasmtime itself
    // still checks the header against the engine's configuration.
    unsafe { Component::deserialize(engine, artifact) }
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

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn cache(dir: &std::path::Path, engine_hash: [u8; 32]) -> ComponentCache {
        ComponentCache {
            dir: dir.to_owned(),
            engine_key: hex::encode(&engine_hash[..8]),
            engine_hash,
            max_bytes: DEFAULT_CACHE_MAX_BYTES,
        }
    }

    /// A real engine and the compiled bytes of an empty component: what `load` can
    /// deserialize, so that a hit (and its touch) is the real code path.
    fn engine_and_artifact() -> (Engine, Vec<u8>) {
        let engine = Engine::new(&super::super::engine::engine_config()).expect("engine");
        let component = wat::parse_str("(component)").expect("wat");
        let artifact = engine
            .precompile_component(&component)
            .expect("precompiles");
        (engine, artifact)
    }

    fn set_age(path: &std::path::Path, age: Duration) {
        let file = std::fs::File::options()
            .write(true)
            .open(path)
            .expect("open");
        file.set_modified(SystemTime::now() - age)
            .expect("set mtime");
    }

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn entries_total(this: &ComponentCache) -> u64 {
        this.list().expect("lists").total
    }

    #[test]
    fn eviction_keeps_the_bound_and_evicts_the_least_recently_used_first() {
        let root = tempfile::tempdir().expect("temp dir");
        let (engine, artifact) = engine_and_artifact();
        let entry_size = (MAGIC.len() + TAG_LEN + artifact.len()) as u64;
        let mut this = cache(root.path(), [1; 32]);
        // Room for three entries and a half.
        this.max_bytes = entry_size * 7 / 2;
        let open = this.open().expect("trusted");
        let (a, b, c, d, e) = ([0xa; 32], [0xb; 32], [0xc; 32], [0xd; 32], [0xe; 32]);
        for (sha, age) in [(a, 300), (b, 200), (c, 100)] {
            open.store(&sha, &artifact);
            set_age(
                &root.path().join(this.entry_name(&sha)),
                Duration::from_secs(age),
            );
        }
        // A hit makes `a`, the oldest, the most recently used.
        assert!(open.load(&engine, &a).is_some(), "a hit");
        open.store(&d, &artifact);
        let present = |sha: &[u8; 32]| root.path().join(this.entry_name(sha)).exists();
        assert!(!present(&b), "b was the least recently used");
        assert!(present(&a) && present(&c) && present(&d));
        assert!(entries_total(&this) <= this.max_bytes);

        set_age(
            &root.path().join(this.entry_name(&d)),
            Duration::from_secs(50),
        );
        open.store(&e, &artifact);
        assert!(!present(&c), "then c");
        assert!(present(&a) && present(&d) && present(&e));
        assert!(entries_total(&this) <= this.max_bytes);
        let listing = this.list().expect("lists");
        let order: Vec<&str> = listing
            .entries
            .iter()
            .map(|e| &e.component_sha256[..2])
            .collect();
        assert_eq!(order, ["0e", "0a", "0d"], "most recently used first");
    }

    #[test]
    fn eviction_and_clear_never_touch_the_key_or_files_not_ours() {
        let root = tempfile::tempdir().expect("temp dir");
        let outside = tempfile::tempdir().expect("temp dir");
        let mut this = cache(root.path(), [1; 32]);
        this.max_bytes = 100;
        let open = this.open().expect("trusted");
        let dir = root.path();
        let entry_like = format!("{}-{}.v2.cwasm", "1".repeat(64), "2".repeat(16));
        std::fs::write(dir.join("notes.txt"), vec![0u8; 4096]).expect("write");
        std::fs::write(dir.join("almost.v2.cwasm"), vec![0u8; 4096]).expect("write");
        // A link named like an entry, to a file elsewhere: neither is deleted.
        let target = outside.path().join("precious");
        std::fs::write(&target, vec![0u8; 4096]).expect("write");
        std::os::unix::fs::symlink(&target, dir.join(&entry_like)).expect("symlink");
        // A directory named like an entry.
        let dir_like = format!("{}-{}.cwasm", "3".repeat(64), "4".repeat(16));
        std::fs::create_dir(dir.join(&dir_like)).expect("mkdir");
        // Temporary files of entries: a crashed writer's (old) and one in flight (new).
        let stale = format!(
            ".{}-{}.v2.cwasm.{}.tmp",
            "5".repeat(64),
            "6".repeat(16),
            "7".repeat(16)
        );
        let fresh = format!(
            ".{}-{}.v2.cwasm.{}.tmp",
            "8".repeat(64),
            "9".repeat(16),
            "a".repeat(16)
        );
        std::fs::write(dir.join(&stale), b"x").expect("write");
        set_age(&dir.join(&stale), STALE_TEMP * 2);
        std::fs::write(dir.join(&fresh), b"x").expect("write");

        // A store that cannot fit writes nothing; one that fits evicts down to the bound.
        open.store(&[1; 32], &[0u8; 200]);
        assert!(!dir.join(this.entry_name(&[1; 32])).exists());
        open.store(&[2; 32], &[0u8; 10]);
        open.store(&[3; 32], &[0u8; 10]);
        assert!(!dir.join(this.entry_name(&[2; 32])).exists(), "evicted");
        assert!(
            dir.join(this.entry_name(&[3; 32])).exists(),
            "the new one stays"
        );
        assert!(
            !dir.join(&stale).exists(),
            "a crashed writer's leftover goes"
        );
        for kept in [
            KEY_FILE,
            "notes.txt",
            "almost.v2.cwasm",
            &entry_like,
            &dir_like,
            &fresh,
        ] {
            assert!(
                std::fs::symlink_metadata(dir.join(kept)).is_ok(),
                "{kept} kept by eviction"
            );
        }

        let cleared = this.clear().expect("clears");
        assert_eq!(
            cleared.files, 2,
            "the entry and the temporary file in flight"
        );
        assert!(this.list().expect("lists").entries.is_empty());
        let left = names(dir);
        for kept in [
            KEY_FILE,
            "notes.txt",
            "almost.v2.cwasm",
            &entry_like,
            &dir_like,
        ] {
            assert!(
                left.iter().any(|n| n == kept),
                "{kept} kept by clear: {left:?}"
            );
        }
        assert!(target.exists(), "the link's target is untouched");
        // The key survived: a new entry verifies with the same key.
        let reopened = this.open().expect("trusted");
        assert_eq!(reopened.key, open.key);
    }

    #[test]
    fn names_of_entries_and_their_temporary_files_are_recognised() {
        let (sha, engine) = ("ab".repeat(32), "cd".repeat(8));
        let entry = format!("{sha}-{engine}.v2.cwasm");
        assert_eq!(
            classify(&entry),
            Some(FileKind::Entry {
                component: &sha,
                engine: &engine
            })
        );
        assert!(matches!(
            classify(&format!("{sha}-{engine}.cwasm")),
            Some(FileKind::Entry { .. })
        ));
        assert_eq!(
            classify(&format!(".{entry}.{}.tmp", "0".repeat(16))),
            Some(FileKind::Temp)
        );
        for not_ours in [
            KEY_FILE.to_owned(),
            format!(".{KEY_FILE}.{}.tmp", "0".repeat(16)),
            format!("{}-{engine}.v2.cwasm", "AB".repeat(32)),
            format!("{sha}-{engine}.v2.cwasm.bak"),
            format!("{sha}.v2.cwasm"),
            format!(".{entry}.xyz.tmp"),
            "notes.txt".to_owned(),
        ] {
            assert_eq!(classify(&not_ours), None, "{not_ours}");
        }
    }

    #[test]
    fn a_missing_cache_lists_empty_without_being_created() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("not-yet");
        let this = cache(&dir, [1; 32]);
        let listing = this.list().expect("lists");
        assert!(listing.entries.is_empty() && listing.total == 0);
        assert_eq!(this.clear().expect("clears"), CacheCleared::default());
        assert!(!dir.exists());
    }

    #[test]
    fn the_mac_binds_the_component_the_engine_and_the_bytes() {
        let root = tempfile::tempdir().expect("temp dir");
        let this = cache(root.path(), [1; 32]);
        let open = this.open().expect("a fresh cache is trusted");
        let sha = [7; 32];
        open.store(&sha, b"compiled");
        let entry = std::fs::read(root.path().join(this.entry_name(&sha))).expect("entry");
        assert_eq!(open.verify(&sha, &entry), Ok(&b"compiled"[..]));

        assert!(open.verify(&[8; 32], &entry).is_err(), "another component");
        let other_engine = cache(root.path(), [2; 32]);
        let other = other_engine.open().expect("same directory, same key");
        assert!(other.verify(&sha, &entry).is_err(), "another engine");
        let mut altered = entry.clone();
        if let Some(last) = altered.last_mut() {
            *last ^= 0x80;
        }
        assert!(open.verify(&sha, &altered).is_err(), "altered bytes");
        assert!(open.verify(&sha, &entry[..20]).is_err(), "truncated");
        assert!(open.verify(&sha, &entry[8..]).is_err(), "no header");
    }

    #[test]
    fn another_key_does_not_verify() {
        let (a, b) = (
            tempfile::tempdir().expect("temp dir"),
            tempfile::tempdir().expect("temp dir"),
        );
        let (cache_a, cache_b) = (cache(a.path(), [1; 32]), cache(b.path(), [1; 32]));
        let (open_a, open_b) = (
            cache_a.open().expect("trusted"),
            cache_b.open().expect("trusted"),
        );
        let sha = [3; 32];
        open_a.store(&sha, b"compiled");
        let entry = std::fs::read(a.path().join(cache_a.entry_name(&sha))).expect("entry");
        assert!(open_b.verify(&sha, &entry).is_err());
    }
}
