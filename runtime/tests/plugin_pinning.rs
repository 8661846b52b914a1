//! Pinning plugins by hash and the compiled-plugin cache's commands.
//!
//! * `sha256 = "…"` on a plugin entry: a component that hashes to it loads; any other is
//!   refused at `check`, at start and at hot reload, and the message names both hashes.
//! * `ssm-tether plugin pin FILE` prints the line that, pasted into the entry, makes the
//!   policy load (files and built-ins alike).
//! * `ssm-tether plugin cache list|clear` show and empty the cache (the key and foreign files
//!   stay), and `SSM_TETHER_PLUGIN_CACHE_MAX_MB` bounds it.
//!
//! Every command runs with its own `XDG_CACHE_HOME`, so no test touches the user's cache.

#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use ssm_tether::plugin::{LoadError, PluginEngine, TunnelPlugins};
use ssm_tether::reload::{ReloadError, Reloader};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/plugins")
        .join(format!("{name}.wasm"))
}

fn sha256_hex(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).expect("read")))
}

/// The binary, with `cache` as its cache home.
fn ssm_tether(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ssm-tether"))
        .args(args)
        .env("XDG_CACHE_HOME", cache)
        .env_remove("SSM_TETHER_PLUGIN_CACHE_MAX_MB")
        .env("RUST_LOG", "warn")
        .output()
        .expect("ssm-tether runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A policy with one tunnel whose reconnect policy is `plugin`, with `extra` lines in its
/// entry.
fn policy(plugin: &str, extra: &str) -> String {
    format!(
        "[[tunnel]]\nname = \"db\"\ntarget = \"i-0123456789abcdef0\"\nremote_port = 5432\n\
         local = \"127.0.0.1:0\"\n\n[tunnel.reconnect]\nplugin = \"{plugin}\"\n{extra}"
    )
}

/// A directory with `policy.wasm` (a copy of `fixture`) and the cache home.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(fixture_name: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::copy(fixture(fixture_name), dir.path().join("policy.wasm")).expect("copy");
        Self { dir }
    }

    fn plugin(&self) -> PathBuf {
        self.dir.path().join("policy.wasm")
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn policy_path(&self) -> PathBuf {
        self.dir.path().join("tunnels.toml")
    }

    fn write_policy(&self, extra: &str) -> PathBuf {
        let path = self.policy_path();
        std::fs::write(&path, policy("policy.wasm", extra)).expect("write policy");
        path
    }

    fn run(&self, args: &[&str]) -> Output {
        ssm_tether(&self.cache(), args)
    }

    /// Replaces the plugin the way an editor or a build does: a new file renamed into place.
    fn replace_plugin(&self, fixture_name: &str) {
        let tmp = self.dir.path().join(".policy.wasm.new");
        std::fs::copy(fixture(fixture_name), &tmp).expect("copy");
        std::fs::rename(&tmp, self.plugin()).expect("rename into place");
    }
}

#[test]
fn plugin_pin_prints_the_line_that_makes_check_accept_the_plugin() {
    let setup = Setup::new("hostile-policy");
    let plugin = setup.plugin();
    let pin = setup.run(&["plugin", "pin", plugin.to_str().expect("utf-8")]);
    assert!(pin.status.success(), "{}", stderr(&pin));
    let line = stdout(&pin);
    let expected = sha256_hex(&plugin);
    assert_eq!(
        line,
        format!("sha256 = \"{expected}\"\n"),
        "exactly one line to paste"
    );

    // Pasted as it is into the entry, the policy checks.
    let path = setup.write_policy(&line);
    let check = setup.run(&["check", path.to_str().expect("utf-8")]);
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(
        stdout(&check).contains(&format!("(sha256 {expected}, as pinned)")),
        "{}",
        stdout(&check)
    );
}

#[test]
fn check_refuses_a_plugin_that_does_not_match_its_pin_naming_both_hashes() {
    let setup = Setup::new("hostile-policy");
    let pinned = sha256_hex(&setup.plugin());
    let path = setup.write_policy(&format!("sha256 = \"{pinned}\"\n"));
    setup.replace_plugin("legacy-policy");
    let actual = sha256_hex(&setup.plugin());
    assert_ne!(pinned, actual);

    let check = setup.run(&["check", path.to_str().expect("utf-8")]);
    assert_eq!(check.status.code(), Some(2), "{}", stdout(&check));
    let message = stderr(&check);
    assert!(
        message.contains(&format!("pins sha256 = \"{pinned}\"")),
        "{message}"
    );
    assert!(
        message.contains(&format!("sha256 is {actual}")),
        "{message}"
    );
    assert!(
        message.contains("policy.wasm"),
        "names the plugin: {message}"
    );
}

#[test]
fn a_pin_that_is_not_a_sha256_is_a_policy_error_with_its_place() {
    let setup = Setup::new("hostile-policy");
    let upper = sha256_hex(&setup.plugin()).to_uppercase();
    for bad in [upper.as_str(), "abc", "sha256:0000"] {
        let path = setup.write_policy(&format!("sha256 = \"{bad}\"\n"));
        let check = setup.run(&["check", path.to_str().expect("utf-8")]);
        assert_eq!(check.status.code(), Some(2));
        let message = stderr(&check);
        assert!(
            message.contains("tunnels.toml:9:10: tunnel[0].reconnect.sha256:")
                && message.contains(&format!("\"{bad}\"")),
            "{message}"
        );
    }
}

#[test]
fn a_builtin_can_be_pinned_too() {
    let setup = Setup::new("hostile-policy");
    let pin = setup.run(&["plugin", "pin", "builtin:exponential-backoff"]);
    assert!(pin.status.success(), "{}", stderr(&pin));
    let line = stdout(&pin);
    let path = setup.policy_path();
    std::fs::write(&path, policy("builtin:exponential-backoff", &line)).expect("write");
    let check = setup.run(&["check", path.to_str().expect("utf-8")]);
    assert!(check.status.success(), "{}", stderr(&check));

    let wrong = format!("sha256 = \"{}\"\n", "0".repeat(64));
    std::fs::write(&path, policy("builtin:exponential-backoff", &wrong)).expect("write");
    let check = setup.run(&["check", path.to_str().expect("utf-8")]);
    assert_eq!(check.status.code(), Some(2));
    assert!(
        stderr(&check).contains(&"0".repeat(64)),
        "{}",
        stderr(&check)
    );
}

#[test]
fn plugin_pin_refuses_what_is_not_a_component() {
    let setup = Setup::new("hostile-policy");
    let text = setup.dir.path().join("notes.txt");
    std::fs::write(&text, "not wasm").expect("write");
    let pin = setup.run(&["plugin", "pin", text.to_str().expect("utf-8")]);
    assert_eq!(pin.status.code(), Some(2));
    assert!(stdout(&pin).is_empty(), "no line to paste");
    assert!(stderr(&pin).contains("not a WebAssembly component"));
}

// ---- at load: start and hot reload -----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_and_hot_reload_refuse_a_plugin_that_does_not_match_its_pin() {
    let setup = Setup::new("hostile-policy");
    let cache = setup.cache();
    let engine = PluginEngine::new(Some(cache)).expect("engine");
    let first = sha256_hex(&setup.plugin());
    let path = setup.write_policy(&format!("sha256 = \"{first}\"\n"));
    let loaded = ssm_tether::policy::load(&path).expect("valid policy");
    let (mut reloader, mut receivers) = Reloader::start(engine.clone(), &path, &loaded)
        .await
        .expect("a matching pin loads");
    let receiver = receivers.remove("db").expect("the tunnel's plugins");
    let running = |r: &tokio::sync::watch::Receiver<Arc<TunnelPlugins>>| {
        let set = Arc::clone(&r.borrow());
        set.reconnect
            .as_ref()
            .expect("a reconnect policy")
            .info()
            .name
            .clone()
    };
    assert_eq!(running(&receiver), "hostile-policy");

    // The file is replaced: the reload is refused, naming both hashes; the plugin stays.
    setup.replace_plugin("legacy-policy");
    let second = sha256_hex(&setup.plugin());
    let err = reloader.reload().await.expect_err("a mismatch is refused");
    match &err {
        ReloadError::Plugin(LoadError::PinMismatch {
            expected, actual, ..
        }) => {
            assert_eq!((expected, actual), (&first, &second));
        }
        other => panic!("expected a pin mismatch, got {other}"),
    }
    let text = err.to_string();
    assert!(text.contains(&first) && text.contains(&second), "{text}");
    assert_eq!(
        running(&receiver),
        "hostile-policy",
        "the running plugin stays"
    );

    // Pinned again, the new plugin takes over.
    std::fs::write(
        &path,
        policy("policy.wasm", &format!("sha256 = \"{second}\"\n")),
    )
    .expect("write");
    assert_eq!(reloader.reload().await.expect("reload"), 1);
    assert_eq!(running(&receiver), "legacy-policy");

    // And a start with a wrong pin fails the same way.
    std::fs::write(
        &path,
        policy("policy.wasm", &format!("sha256 = \"{first}\"\n")),
    )
    .expect("write");
    let loaded = ssm_tether::policy::load(&path).expect("valid policy");
    let err = Reloader::start(engine, &path, &loaded)
        .await
        .expect_err("a mismatch is refused at start");
    assert!(
        matches!(&err, LoadError::PinMismatch { expected, actual, .. }
            if *expected == first && *actual == second),
        "{err}"
    );
}

// ---- the cache commands ----------------------------------------------------------------

#[test]
fn plugin_cache_list_and_clear() {
    let setup = Setup::new("hostile-policy");
    let cache_home = setup.cache();
    let cache_dir = cache_home.join("ssm-tether/plugins");

    let empty = setup.run(&["plugin", "cache", "list"]);
    assert!(empty.status.success(), "{}", stderr(&empty));
    assert!(
        stdout(&empty).contains("total:    0 entries"),
        "{}",
        stdout(&empty)
    );
    assert!(!cache_dir.exists(), "listing does not create the cache");

    let inspect = setup.run(&["plugin", "inspect", "builtin:log"]);
    assert!(inspect.status.success(), "{}", stderr(&inspect));
    let pin = stdout(&setup.run(&["plugin", "pin", "builtin:log"]));
    let sha = pin
        .trim()
        .strip_prefix("sha256 = \"")
        .and_then(|s| s.strip_suffix('"'))
        .expect("a pin line")
        .to_owned();

    let list = setup.run(&["plugin", "cache", "list"]);
    let text = stdout(&list);
    assert!(list.status.success(), "{}", stderr(&list));
    assert!(text.contains(&cache_dir.display().to_string()), "{text}");
    assert!(text.contains(&sha), "the entry of builtin:log: {text}");
    assert!(text.contains("total:    1 entry, "), "{text}");
    assert!(text.contains("of 256.0 MiB"), "the default bound: {text}");

    std::fs::write(cache_dir.join("notes.txt"), "mine").expect("write");
    let clear = setup.run(&["plugin", "cache", "clear"]);
    assert!(clear.status.success(), "{}", stderr(&clear));
    assert!(
        stdout(&clear).starts_with("cleared:  1 file(s), "),
        "{}",
        stdout(&clear)
    );
    let list = stdout(&setup.run(&["plugin", "cache", "list"]));
    assert!(list.contains("total:    0 entries"), "{list}");
    assert!(cache_dir.join("hmac-key").exists(), "the key stays");
    assert!(cache_dir.join("notes.txt").exists(), "files not ours stay");
}

#[test]
fn the_cache_bound_comes_from_the_environment() {
    let setup = Setup::new("hostile-policy");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ssm-tether"))
            .args(args)
            .env("XDG_CACHE_HOME", setup.cache())
            .env("SSM_TETHER_PLUGIN_CACHE_MAX_MB", "0")
            .output()
            .expect("ssm-tether runs")
    };
    let inspect = run(&["plugin", "inspect", "builtin:log"]);
    assert!(inspect.status.success(), "{}", stderr(&inspect));
    let list = stdout(&run(&["plugin", "cache", "list"]));
    assert!(list.contains("(bound 0 B,"), "{list}");
    assert!(
        list.contains("total:    0 entries"),
        "a bound of 0 stores nothing: {list}"
    );
}
