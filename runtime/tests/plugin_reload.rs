//! Hot reload from file-system events: a plugin file replaced under a live stream is noticed
//! from the event (the mtime poll is disabled here, so nothing else could notice it), the
//! new plugin takes over, and not a byte of the stream is lost.

#![cfg(unix)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ssm_tether::events::EventKind;
use ssm_tether::plugin::{PluginEngine, TunnelPlugins};
use ssm_tether::reload::{Reloader, WatchMode};
use support::{echo_for, wait_event};
use tokio::sync::watch;

const LIMIT: Duration = Duration::from_secs(60);

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/plugins")
        .join(format!("{name}.wasm"))
}

/// Replaces `path` the way editors and `cargo build` save: a new file renamed into place.
fn rename_into_place(from: &Path, path: &Path) {
    let tmp = path.with_extension("wasm.tmp");
    std::fs::copy(from, &tmp).expect("copy");
    std::fs::rename(&tmp, path).expect("rename into place");
}

fn running(plugins: &watch::Receiver<Arc<TunnelPlugins>>) -> String {
    let set = Arc::clone(&plugins.borrow());
    set.reconnect
        .as_ref()
        .expect("a reconnect policy")
        .info()
        .name
        .clone()
}

/// Waits for the reloader to notice a change, and reloads.
async fn reload_on_event(reloader: &mut Reloader) -> Duration {
    let start = Instant::now();
    tokio::time::timeout(LIMIT, reloader.changed())
        .await
        .expect("the change is noticed from its file-system event");
    let noticed = start.elapsed();
    assert_eq!(reloader.reload().await.expect("reload"), 1);
    noticed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_saved_under_a_live_stream_takes_over_from_its_file_event() {
    let cache = tempfile::tempdir().expect("cache dir");
    let engine = PluginEngine::new(Some(cache.path().to_owned())).expect("engine");
    let dir = tempfile::tempdir().expect("dir");
    let plugin = dir.path().join("policy.wasm");
    std::fs::copy(fixture("hostile-policy"), &plugin).expect("copy");
    let path = dir.path().join("tunnels.toml");
    std::fs::write(
        &path,
        "[[tunnel]]\nname = \"test\"\ntarget = \"i-0123456789abcdef0\"\nremote_port = 1\n\
         local = \"127.0.0.1:0\"\n\n[tunnel.reconnect]\nplugin = \"policy.wasm\"\n",
    )
    .expect("write policy");
    let policy = ssm_tether::policy::load(&path).expect("valid policy");
    let (mut reloader, mut receivers) = Reloader::start(engine, &path, &policy)
        .await
        .expect("plugins start");
    // Only an event can wake `changed` now.
    reloader.set_poll_fallback(false);
    assert_eq!(reloader.watch(), WatchMode::Events);
    let plugins = receivers.remove("test").expect("the tunnel's plugins");
    assert_eq!(running(&plugins), "hostile-policy");

    let emulator = support::emulator(|_| {}).await;
    let port = support::echo_server().await;
    let files = support::AwsFiles::new("AKIDTEST0001");
    let mut config = support::tunnel_config(port);
    config.plugins = plugins.clone();
    let tunnel = ssm_tether::tunnel::Tunnel::start(config, files.api(emulator.endpoint_url()))
        .await
        .expect("tunnel");
    let mut events = tunnel.subscribe();
    wait_event(&mut events, LIMIT, "forwarding", |k| {
        matches!(k, EventKind::Forwarding { .. })
    })
    .await;
    let stream = tokio::spawn(echo_for(
        tunnel.tcp_addr().expect("a TCP listener"),
        23,
        Duration::from_secs(3),
        64 * 1024,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A save by rename into place, mid-stream.
    rename_into_place(&fixture("legacy-policy"), &plugin);
    let first = reload_on_event(&mut reloader).await;
    assert_eq!(running(&plugins), "legacy-policy", "the saved plugin runs");

    // A save by writing the file in place.
    let bytes = std::fs::read(fixture("hostile-policy")).expect("read");
    std::fs::write(&plugin, bytes).expect("write in place");
    let second = reload_on_event(&mut reloader).await;
    assert_eq!(running(&plugins), "hostile-policy");
    // Not asserted (a loaded CI machine may be slow), but shown: tens of milliseconds.
    eprintln!("changes noticed after {first:?} and {second:?}");

    let (sent, received, bytes) = stream.await.expect("stream");
    assert_eq!(sent, received, "no byte lost across the reloads");
    assert!(bytes > 0);
    assert_eq!(tunnel.status().borrow().restarts, 0);
    tunnel.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_the_watched_files_does_not_count_as_a_change() {
    let cache = tempfile::tempdir().expect("cache dir");
    let engine = PluginEngine::new(Some(cache.path().to_owned())).expect("engine");
    let dir = tempfile::tempdir().expect("dir");
    let plugin = dir.path().join("policy.wasm");
    std::fs::copy(fixture("hostile-policy"), &plugin).expect("copy");
    let path = dir.path().join("tunnels.toml");
    std::fs::write(
        &path,
        "[[tunnel]]\nname = \"test\"\ntarget = \"i-0123456789abcdef0\"\nremote_port = 1\n\
         local = \"127.0.0.1:0\"\n\n[tunnel.reconnect]\nplugin = \"policy.wasm\"\n",
    )
    .expect("write policy");
    let policy = ssm_tether::policy::load(&path).expect("valid policy");
    let (mut reloader, _receivers) = Reloader::start(engine, &path, &policy)
        .await
        .expect("plugins start");
    reloader.set_poll_fallback(false);
    assert_eq!(reloader.watch(), WatchMode::Events);
    // A reload reads both files (open and close events), and another file of the
    // directory changes: neither wakes `changed`. (Can only pass falsely on a slow machine,
    // never fail falsely.)
    assert_eq!(reloader.reload().await.expect("reload"), 1);
    std::fs::write(dir.path().join("notes.txt"), "unrelated").expect("write");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), reloader.changed())
            .await
            .is_err(),
        "woken without a change of a watched file"
    );
    // A plugin path changed by the reload is watched from then on.
    let other = dir.path().join("other.wasm");
    std::fs::copy(fixture("legacy-policy"), &other).expect("copy");
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&path, text.replace("policy.wasm", "other.wasm")).expect("write");
    tokio::time::timeout(LIMIT, reloader.changed())
        .await
        .expect("the policy's change is noticed");
    assert_eq!(reloader.reload().await.expect("reload"), 1);
    rename_into_place(&fixture("hostile-policy"), &other);
    tokio::time::timeout(LIMIT, reloader.changed())
        .await
        .expect("the new plugin file's change is noticed");
}
