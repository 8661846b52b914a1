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

use std::hash::Hasher;
use std::path::PathBuf;

use hmac::{Hmac, Mac};
use rand::TryRngCore as _;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::trusted_dir::{Distrust, Privacy, TrustedDir};

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

type HmacSha256 = Hmac<Sha256>;

/// Directory of compiled components.
#[derive(Debug, Clone)]
pub(crate) struct ComponentCache {
    dir: PathBuf,
    /// Hex prefix of `engine_hash`, for file names.
    engine_key: String,
    /// sha256 of the engine's compatibility hash; authenticated with every entry.
    engine_hash: [u8; 32],
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
            Ok(component) => Some(component),
            Err(err) => {
                // Authentic but unusable (wasmtime's own header check disagrees): replace it.
                refused(&format_args!("{err:#}"));
                None
            }
        }
    }

    /// Stores `artifact`, the compiled form of the component whose sha256 is `sha256`,
    /// replacing whatever entry was there. Failure only costs a compile next time.
    pub(crate) fn store(&self, sha256: &[u8; 32], artifact: &[u8]) {
        let name = self.cache.entry_name(sha256);
        let mut mac = self.cache.mac(&self.key, sha256);
        mac.update(artifact);
        let tag = mac.finalize().into_bytes();
        if let Err(err) = self.dir.replace(&name, &[MAGIC, &tag, artifact]) {
            let path = self.dir.path().join(&name);
            tracing::debug!(path = %path.display(), error = %err, "plugin cache entry not written");
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
        }
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
