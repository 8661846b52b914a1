//! The compiled-plugin cache runs native code, so it must only ever load entries this user's
//! ssm-tether wrote for that very component: planted, altered, swapped, linked or
//! loosely-permissioned entries are refused with a warning naming the path (the plugin still
//! loads, compiled afresh, and the entry is replaced); a linked or loosely-permissioned
//! directory, or a key file with the wrong mode, distrusts the whole cache (nothing is
//! written). Compiling is bounded in time (a load error naming the plugin) and, in a worker
//! process, in memory.
//!
//! Tests that need another owner chown to `nobody` (uid 65534) and so only run as root; as
//! another user they print a note and skip that case.

#![cfg(unix)]

use std::io::Write;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};
use std::time::Duration;

use sha2::{Digest, Sha256};
use ssm_tether::plugin::{CompileOptions, Isolation, LoadError, PluginEngine};
use ssm_tether::policy::PluginSource;

const NOBODY: u32 = 65534;

// ---- log capture ------------------------------------------------------------------------

/// Everything logged at warn level or above by any test of this binary.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capture once. Global, not per test: loads log from blocking-pool threads.
fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        tracing_subscriber::fmt()
            .with_writer(|| Capture)
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .init();
    });
}

/// Warnings whose text names `path` (each test works in its own directory).
fn warnings_naming(path: &Path) -> Vec<String> {
    let logs = LOGS.lock().expect("log buffer");
    let needle = path.display().to_string();
    String::from_utf8_lossy(&logs)
        .lines()
        .filter(|line| line.contains("WARN") && line.contains(&needle))
        .map(str::to_owned)
        .collect()
}

// ---- helpers ----------------------------------------------------------------------------

fn worker() -> Isolation {
    Isolation::Worker(PathBuf::from(env!("CARGO_BIN_EXE_ssm-tether")))
}

fn engine_with(cache: Option<&Path>, isolation: Isolation) -> PluginEngine {
    capture_logs();
    let options = CompileOptions {
        isolation,
        ..CompileOptions::default()
    };
    PluginEngine::with_options(cache.map(Path::to_owned), options).expect("engine")
}

fn engine(cache: &Path) -> PluginEngine {
    engine_with(Some(cache), Isolation::InProcess)
}

fn builtin(name: &str) -> PluginSource {
    PluginSource::Builtin(name.to_owned())
}

/// Loads `builtin:NAME` and returns the name its `describe` reports.
async fn describe(engine: &PluginEngine, name: &str) -> String {
    let loaded = engine.load(&builtin(name)).await.expect("plugin loads");
    loaded.describe().await.expect("describe").name
}

/// The cache entry of `builtin:NAME` in `dir`, once a load has written it.
fn entry(dir: &Path, name: &str) -> PathBuf {
    let bytes = ssm_tether::builtin::get(name).expect("a built-in plugin");
    let prefix = format!("{}-", hex::encode(Sha256::digest(bytes)));
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("cache dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".cwasm"))
        })
        .collect();
    assert_eq!(found.len(), 1, "one entry for builtin:{name} in {found:?}");
    found.into_iter().next().expect("one entry")
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
            })
            .count()
        })
        .unwrap_or(0)
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).expect("metadata").mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn is_root() -> bool {
    euid() == 0
}

fn euid() -> u32 {
    // The owner of a file this process just created is its effective uid.
    let probe = tempfile::NamedTempFile::new().expect("probe file");
    probe.as_file().metadata().expect("probe metadata").uid()
}

/// A cache directory holding valid entries for `builtin:log` and `builtin:http`.
async fn warm_cache() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().expect("temp dir");
    let dir = root.path().join("plugins");
    let engine = engine(&dir);
    assert_eq!(describe(&engine, "log").await, "log");
    assert_eq!(describe(&engine, "http").await, "http");
    (root, dir)
}

/// After a refused entry: the plugin still is itself, a warning names the entry, and the
/// entry was replaced by a trusted one that loads without a warning next time.
async fn assert_refused_and_replaced(dir: &Path, entry: &Path, why: &str) {
    assert_eq!(
        describe(&engine(dir), "log").await,
        "log",
        "{why}: the plugin is compiled afresh"
    );
    let warned = warnings_naming(entry);
    assert_eq!(
        warned.len(),
        1,
        "{why}: one warning names {entry:?}: {warned:?}"
    );
    let meta = std::fs::symlink_metadata(entry).expect("entry rewritten");
    assert!(meta.file_type().is_file(), "{why}: a regular file again");
    assert_eq!(meta.mode() & 0o777, 0o600, "{why}: private again");
    assert_eq!(meta.uid(), euid(), "{why}: ours again");
    assert_eq!(describe(&engine(dir), "log").await, "log");
    assert_eq!(
        warnings_naming(entry).len(),
        1,
        "{why}: the replaced entry is trusted"
    );
}

// ---- entries ----------------------------------------------------------------------------

/// The measured attack: the entry of `builtin:log` replaced by the valid one of
/// `builtin:http` made `plugin inspect builtin:log` describe http.
#[tokio::test]
async fn a_valid_entry_of_another_plugin_swapped_in_is_refused() {
    let (_root, dir) = warm_cache().await;
    let log = entry(&dir, "log");
    std::fs::copy(entry(&dir, "http"), &log).expect("swap");
    chmod(&log, 0o600);
    assert_refused_and_replaced(&dir, &log, "swapped").await;
    assert!(warnings_naming(&log)[0].contains("authentication code"));
}

#[tokio::test]
async fn an_altered_entry_is_refused() {
    let (_root, dir) = warm_cache().await;
    let log = entry(&dir, "log");
    let mut bytes = std::fs::read(&log).expect("entry");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&log, &bytes).expect("alter");
    assert_refused_and_replaced(&dir, &log, "altered").await;
}

#[tokio::test]
async fn a_planted_entry_without_the_format_is_refused() {
    let (_root, dir) = warm_cache().await;
    let log = entry(&dir, "log");
    // A bare wasmtime artifact, as the cache used to store them.
    let bytes = std::fs::read(&log).expect("entry");
    std::fs::write(&log, &bytes[40..]).expect("plant");
    assert_refused_and_replaced(&dir, &log, "planted").await;
}

#[tokio::test]
async fn an_entry_writable_by_group_or_others_is_refused() {
    for loose in [0o620, 0o602] {
        let (_root, dir) = warm_cache().await;
        let log = entry(&dir, "log");
        chmod(&log, loose);
        assert_refused_and_replaced(&dir, &log, &format!("mode {loose:o}")).await;
        assert!(warnings_naming(&log)[0].contains("mode"));
    }
}

#[tokio::test]
async fn an_entry_of_another_user_is_refused() {
    if !is_root() {
        eprintln!("note: not root, cannot chown to nobody; skipping the wrong-owner entry case");
        return;
    }
    let (_root, dir) = warm_cache().await;
    let log = entry(&dir, "log");
    std::os::unix::fs::chown(&log, Some(NOBODY), None).expect("chown");
    assert_refused_and_replaced(&dir, &log, "owned by nobody").await;
    assert!(warnings_naming(&log)[0].contains("owned by uid 65534"));
}

#[tokio::test]
async fn a_symlinked_entry_is_refused() {
    let (_root, dir) = warm_cache().await;
    let log = entry(&dir, "log");
    let http = entry(&dir, "http");
    std::fs::remove_file(&log).expect("remove");
    std::os::unix::fs::symlink(&http, &log).expect("symlink");
    assert_refused_and_replaced(&dir, &log, "symlink").await;
    assert!(warnings_naming(&log)[0].contains("symbolic link"));
    // The link's target was left alone.
    assert!(std::fs::symlink_metadata(&http).expect("http").is_file());
}

#[tokio::test]
async fn a_fifo_entry_is_refused_without_hanging() {
    let (_root, dir) = warm_cache().await;
    let log = entry(&dir, "log");
    std::fs::remove_file(&log).expect("remove");
    let made = std::process::Command::new("mkfifo")
        .arg(&log)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let loaded = tokio::time::timeout(Duration::from_secs(60), describe(&engine(&dir), "log"))
        .await
        .expect("no hang on a FIFO");
    assert_eq!(loaded, "log");
    assert!(warnings_naming(&log)[0].contains("not a regular file"));
    assert!(std::fs::symlink_metadata(&log).expect("entry").is_file());
}

// ---- the directory and the key -----------------------------------------------------------

/// Asserts that loading through `dir` works but neither uses nor writes the cache.
async fn assert_distrusted(dir: &Path, named: &Path, written_to: &Path, why: &str) {
    let before = entries(written_to);
    assert_eq!(describe(&engine(dir), "log").await, "log", "{why}");
    assert_eq!(describe(&engine(dir), "http").await, "http", "{why}");
    assert_eq!(entries(written_to), before, "{why}: nothing written");
    let warned = warnings_naming(named);
    assert_eq!(
        warned.len(),
        2,
        "{why}: every load warns about {named:?}: {warned:?}"
    );
}

#[tokio::test]
async fn a_symlinked_cache_dir_is_refused() {
    let (root, real) = warm_cache().await;
    std::fs::remove_file(entry(&real, "log")).expect("remove");
    // A swapped entry in the target: it would be loaded if the link were followed.
    std::fs::copy(entry(&real, "http"), real.join("decoy")).expect("copy");
    let link = root.path().join("linked");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    assert_distrusted(&link, &link, &real, "symlinked dir").await;
    assert!(warnings_naming(&link)[0].contains("symbolic link"));
}

#[tokio::test]
async fn a_cache_dir_writable_by_others_is_distrusted() {
    let (_root, dir) = warm_cache().await;
    std::fs::remove_file(entry(&dir, "log")).expect("remove");
    chmod(&dir, 0o777);
    assert_distrusted(&dir, &dir, &dir, "dir 0777").await;
}

#[tokio::test]
async fn a_cache_dir_of_another_user_is_distrusted() {
    if !is_root() {
        eprintln!("note: not root, cannot chown to nobody; skipping the wrong-owner dir case");
        return;
    }
    // The `sudo` case: HOME (and so the cache) is another user's.
    let (_root, dir) = warm_cache().await;
    std::fs::remove_file(entry(&dir, "log")).expect("remove");
    std::os::unix::fs::chown(&dir, Some(NOBODY), None).expect("chown");
    assert_distrusted(&dir, &dir, &dir, "dir of nobody").await;
}

#[tokio::test]
async fn a_key_file_with_the_wrong_mode_distrusts_the_cache() {
    let (_root, dir) = warm_cache().await;
    let log = entry(&dir, "log");
    // A swapped entry that would be loaded if the cache were used.
    std::fs::copy(entry(&dir, "http"), &log).expect("swap");
    let key = dir.join("hmac-key");
    chmod(&key, 0o640);
    let before = std::fs::read(&log).expect("entry");
    assert_distrusted(&dir, &key, &dir, "key 0640").await;
    assert_eq!(
        std::fs::read(&log).expect("entry"),
        before,
        "entry untouched"
    );
    assert!(warnings_naming(&key)[0].contains("mode"));
}

#[tokio::test]
async fn a_key_file_of_another_user_distrusts_the_cache() {
    if !is_root() {
        eprintln!("note: not root, cannot chown to nobody; skipping the wrong-owner key case");
        return;
    }
    let (_root, dir) = warm_cache().await;
    std::fs::remove_file(entry(&dir, "log")).expect("remove");
    let key = dir.join("hmac-key");
    std::os::unix::fs::chown(&key, Some(NOBODY), None).expect("chown");
    assert_distrusted(&dir, &key, &dir, "key of nobody").await;
}

#[tokio::test]
async fn a_symlinked_key_file_distrusts_the_cache() {
    let (root, dir) = warm_cache().await;
    std::fs::remove_file(entry(&dir, "log")).expect("remove");
    let key = dir.join("hmac-key");
    let elsewhere = root.path().join("key");
    std::fs::rename(&key, &elsewhere).expect("move key");
    std::os::unix::fs::symlink(&elsewhere, &key).expect("symlink");
    assert_distrusted(&dir, &key, &dir, "symlinked key").await;
}

#[tokio::test]
async fn the_key_is_random_private_and_kept() {
    let root = tempfile::tempdir().expect("temp dir");
    let dir = root.path().join("a").join("plugins");
    assert_eq!(describe(&engine(&dir), "log").await, "log");
    assert_eq!(mode(&dir), 0o700, "created private");
    let key = dir.join("hmac-key");
    assert_eq!(mode(&key), 0o600);
    let bytes = std::fs::read(&key).expect("key");
    assert_eq!(bytes.len(), 32);
    // Another engine (another process, in effect) uses the same key and trusts the entry.
    assert_eq!(describe(&engine(&dir), "log").await, "log");
    assert_eq!(std::fs::read(&key).expect("key"), bytes);
    assert!(warnings_naming(&dir).is_empty());
    // Another user's cache has another key.
    let other = root.path().join("b");
    assert_eq!(describe(&engine(&other), "log").await, "log");
    assert_ne!(std::fs::read(other.join("hmac-key")).expect("key"), bytes);
}

// ---- compile budgets ---------------------------------------------------------------------

fn options(isolation: Isolation, timeout: Duration, memory_limit: u64) -> CompileOptions {
    CompileOptions {
        timeout,
        memory_limit,
        isolation,
    }
}

#[tokio::test]
async fn a_compile_over_its_time_budget_is_a_load_error_naming_the_plugin() {
    for isolation in [Isolation::InProcess, worker()] {
        let engine = PluginEngine::with_options(
            None,
            options(isolation.clone(), Duration::from_millis(1), 1 << 30),
        )
        .expect("engine");
        let err = engine
            .load(&builtin("log"))
            .await
            .expect_err("1 ms is too short to compile");
        assert!(
            matches!(&err, LoadError::CompileTimeout { plugin, .. } if plugin == "builtin:log"),
            "{isolation:?}: {err}"
        );
        assert!(err.to_string().contains("builtin:log"), "{err}");
    }
}

#[tokio::test]
async fn a_compile_over_its_memory_budget_in_a_worker_is_a_load_error_naming_the_plugin() {
    // 8 MiB: the worker starts but Cranelift cannot get the memory it needs. Depending on
    // where an allocation fails the worker aborts, or hangs until the deadline.
    let engine =
        PluginEngine::with_options(None, options(worker(), Duration::from_secs(30), 8 << 20))
            .expect("engine");
    let err = engine
        .load(&builtin("log"))
        .await
        .expect_err("8 MiB is too little to compile");
    assert!(
        matches!(
            &err,
            LoadError::Compile { plugin, .. } | LoadError::CompileTimeout { plugin, .. }
                if plugin == "builtin:log"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_worker_compiles_and_its_output_is_cached() {
    let root = tempfile::tempdir().expect("temp dir");
    let dir = root.path().join("plugins");
    let engine = engine_with(Some(&dir), worker());
    assert_eq!(describe(&engine, "log").await, "log");
    let log = entry(&dir, "log");
    assert_eq!(mode(&log), 0o600);
    // The entry the worker's output became is trusted by an in-process engine too.
    assert_eq!(
        describe(&engine_with(Some(&dir), Isolation::InProcess), "log").await,
        "log"
    );
    assert!(warnings_naming(&dir).is_empty());
}

#[tokio::test]
async fn a_component_that_does_not_compile_is_a_compile_error_from_the_worker() {
    let root = tempfile::tempdir().expect("temp dir");
    // A component header and nothing else.
    let path = root.path().join("broken.wasm");
    std::fs::write(&path, [0, b'a', b's', b'm', 0x0d, 0, 1, 0, 0xff]).expect("write");
    let engine = engine_with(None, worker());
    let err = engine
        .load(&PluginSource::File(path.clone()))
        .await
        .expect_err("does not compile");
    assert!(
        matches!(&err, LoadError::Compile { plugin, .. } if plugin == &path.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn a_plugin_file_over_64_mib_is_refused_before_compiling() {
    let root = tempfile::tempdir().expect("temp dir");
    let path = root.path().join("huge.wasm");
    let file = std::fs::File::create(&path).expect("create");
    // Sparse: no 64 MiB written.
    file.set_len((64 << 20) + 1).expect("grow");
    let err = engine_with(None, Isolation::InProcess)
        .load(&PluginSource::File(path))
        .await
        .expect_err("too large");
    assert!(matches!(err, LoadError::Read { .. }), "{err}");
    assert!(err.to_string().contains("64 MiB"), "{err}");
}
