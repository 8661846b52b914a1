//! Plugins against the runtime and the emulator: the default plugins do their jobs, hostile
//! plugins cannot stop a tunnel (the built-in fallback decides, bytes keep flowing), load
//! errors name the plugin and the reason, and a hot reload swaps the policy under a live
//! stream without losing a byte.
//!
//! The hostile plugins are built from `plugins/testing/` by `plugins/build.sh` into
//! `runtime/tests/plugins/` (CI checks they are current).

mod support;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ssm_emulator::faults::SideSelection;
use ssm_tether::events::{EventKind, ProbeOutcome, TunnelEvent};
use ssm_tether::plugin::{
    LoadError, PluginEngine, PluginInstance, TunnelInfo, TunnelLink, TunnelPlugins,
};
use ssm_tether::policy::{HealthCheckSpec, PluginSource, PluginSpec, Role, TunnelPluginSpecs};
use ssm_tether::recovery::{Cause, Decision, DecisionContext};
use ssm_tether::reload::Reloader;
use support::{Rig, echo_for, echo_through, wait_event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, watch};

const LIMIT: Duration = Duration::from_secs(60);

/// One engine (and compile cache) for every test of this binary.
fn engine() -> PluginEngine {
    static ENGINE: OnceLock<(PluginEngine, tempfile::TempDir)> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("cache dir");
            let engine = PluginEngine::new(Some(dir.path().to_owned())).expect("engine");
            (engine, dir)
        })
        .0
        .clone()
}

fn fixture(name: &str) -> PluginSource {
    PluginSource::File(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/plugins")
            .join(format!("{name}.wasm")),
    )
}

fn spec(source: PluginSource, role: Role, config: &str) -> PluginSpec {
    let mut spec = PluginSpec::new(source, role);
    spec.config = config.to_owned();
    spec
}

fn info() -> TunnelInfo {
    TunnelInfo {
        name: "test".into(),
        target: "i-0123456789abcdef0".into(),
        remote_host: None,
        remote_port: 1,
        local_address: "127.0.0.1:0".into(),
    }
}

/// A rig whose tunnel runs `specs`.
async fn rig_with(specs: TunnelPluginSpecs) -> Rig {
    let plugins = TunnelPlugins::load(&engine(), &specs, &info(), TunnelLink::new())
        .await
        .expect("plugins load");
    let (_tx, rx) = watch::channel(Arc::new(plugins));
    Rig::start_with(|_| {}, move |config| config.plugins = rx).await
}

fn reconnect(source: PluginSource, config: &str) -> TunnelPluginSpecs {
    TunnelPluginSpecs {
        reconnect: Some(spec(source, Role::ReconnectPolicy, config)),
        ..TunnelPluginSpecs::default()
    }
}

fn health(source: PluginSource, config: &str, grant: bool, every: Duration) -> TunnelPluginSpecs {
    let mut plugin = spec(source, Role::HealthCheck, config);
    plugin.grants.tunnel_tcp = grant;
    plugin.limits.timeout = Duration::from_secs(2);
    TunnelPluginSpecs {
        health_checks: vec![HealthCheckSpec {
            plugin,
            interval: every,
            unhealthy_after: 2,
        }],
        ..TunnelPluginSpecs::default()
    }
}

async fn forwarding(rig: &Rig) {
    let mut status = rig.tunnel.status();
    tokio::time::timeout(
        LIMIT,
        status.wait_for(|s| s.state == ssm_tether::events::TunnelState::Forwarding),
    )
    .await
    .expect("forwarding in time")
    .expect("status");
}

async fn bytes_flow(rig: &Rig, seed: u64) {
    let (sent, received) = tokio::time::timeout(LIMIT, echo_through(rig.local(), seed, 64 * 1024))
        .await
        .expect("echo in time");
    assert_eq!(sent, received, "bytes through the tunnel");
}

/// A tunnel probed every 100 ms by the `hostile-probe` fixture with `config`.
async fn hostile_probe(config: &str, grant: bool) -> Rig {
    rig_with(health(
        fixture("hostile-probe"),
        config,
        grant,
        Duration::from_millis(100),
    ))
    .await
}

/// The next health check verdict.
async fn next_probe(events: &mut broadcast::Receiver<TunnelEvent>) -> ProbeOutcome {
    match wait_event(events, LIMIT, "probe result", |k| {
        matches!(k, EventKind::ProbeResult { .. })
    })
    .await
    {
        EventKind::ProbeResult { outcome, .. } => outcome,
        _ => unreachable!(),
    }
}

/// The next plugin failure: plugin, role, reason, quarantined.
async fn next_failure(
    events: &mut broadcast::Receiver<TunnelEvent>,
) -> (String, Role, String, bool) {
    match wait_event(events, LIMIT, "plugin failure", |k| {
        matches!(k, EventKind::PluginFailed { .. })
    })
    .await
    {
        EventKind::PluginFailed {
            plugin,
            role,
            reason,
            quarantined,
        } => (plugin, role, reason, quarantined),
        _ => unreachable!(),
    }
}

// ----- hostile reconnect policies ---------------------------------------------------------

/// A reconnect policy that misbehaves in `mode`: on a planned close the fallback resumes,
/// the tunnel keeps its connection, and an event names what the plugin did.
async fn hostile_policy_is_overruled(mode: &str, reason: &str) {
    let rig = rig_with(reconnect(
        fixture("hostile-policy"),
        &format!(r#"{{"mode":"{mode}"}}"#),
    ))
    .await;
    forwarding(&rig).await;
    let mut events = rig.tunnel.subscribe();
    // A connection that lives through the disconnect and the failed decision.
    let stream = tokio::spawn(echo_for(rig.local(), 9, Duration::from_secs(3), 64 * 1024));
    tokio::time::sleep(Duration::from_millis(500)).await;
    rig.emulator
        .faults()
        .recycle(None, SideSelection::Client)
        .await
        .expect("recycle");
    let (plugin, role, got, _) = next_failure(&mut events).await;
    assert!(plugin.ends_with("hostile-policy.wasm"), "{plugin}");
    assert_eq!(role, Role::ReconnectPolicy);
    assert!(got.contains(reason), "reason {got:?} should say {reason:?}");
    wait_event(&mut events, LIMIT, "resume by the fallback", |k| {
        matches!(k, EventKind::Resumed { .. })
    })
    .await;
    let (sent, received, _) = stream.await.expect("stream");
    assert_eq!(sent, received, "the connection survived");
    bytes_flow(&rig, 1).await;
    rig.tunnel.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_stopped_by_its_cpu_budget() {
    hostile_policy_is_overruled("loop", "CPU budget").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_hits_its_cap() {
    hostile_policy_is_overruled("hog", "memory limit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_traps_and_the_fallback_decides() {
    hostile_policy_is_overruled("panic", "unreachable").await;
}

// ----- hostile health checks --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_sleeping_in_a_host_call_hits_the_wall_timeout_and_is_quarantined() {
    let rig = hostile_probe(r#"{"mode":"sleep"}"#, true).await;
    let mut events = rig.tunnel.subscribe();
    let mut quarantined = false;
    for _ in 0..3 {
        let (_, role, reason, q) = next_failure(&mut events).await;
        assert_eq!(role, Role::HealthCheck);
        assert!(reason.contains("wall-clock timeout"), "{reason}");
        quarantined = q;
    }
    assert!(quarantined, "three failures in a row quarantine the plugin");
    // A broken probe is no verdict on the tunnel: it was never declared dead.
    let status = rig.tunnel.status().borrow().clone();
    assert_eq!(status.restarts, 0);
    bytes_flow(&rig, 2).await;
    rig.tunnel.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ungranted_capability_is_a_typed_denial() {
    let rig = hostile_probe(r#"{"mode":"deny"}"#, false).await;
    let mut events = rig.tunnel.subscribe();
    match next_probe(&mut events).await {
        ProbeOutcome::Degraded(reason) => {
            assert!(
                reason.contains("denied") && reason.contains("tunnel-tcp"),
                "{reason}"
            )
        }
        other => panic!("expected a denial reported as degraded, got {other:?}"),
    }
    bytes_flow(&rig, 3).await;
    rig.tunnel.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_probe_is_stopped_and_the_tunnel_carries_on() {
    let rig = hostile_probe(r#"{"mode":"loop"}"#, true).await;
    let mut events = rig.tunnel.subscribe();
    let (_, _, reason, _) = next_failure(&mut events).await;
    assert!(reason.contains("CPU budget"), "{reason}");
    bytes_flow(&rig, 4).await;
    rig.tunnel.shutdown().await.expect("shutdown");
}

// ----- default plugins --------------------------------------------------------------------

/// A minimal HTTP server: `200 ok` to every request, one per connection.
async fn http_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_probe_detects_a_dead_upstream_and_triggers_a_restart() {
    let port = http_server().await;
    let specs = health(
        PluginSource::Builtin("http".into()),
        r#"{"path":"/health","connect_timeout_ms":1000,"response_timeout_ms":1000}"#,
        true,
        Duration::from_millis(300),
    );
    let plugins = TunnelPlugins::load(&engine(), &specs, &info(), TunnelLink::new())
        .await
        .expect("plugins load");
    let (_tx, rx) = watch::channel(Arc::new(plugins));
    let rig = Rig::start_with(
        |_| {},
        move |config| {
            config
                .parameters
                .insert("portNumber".into(), vec![port.to_string()]);
            config.plugins = rx;
        },
    )
    .await;
    let mut events = rig.tunnel.subscribe();
    wait_event(&mut events, LIMIT, "a healthy probe", |k| {
        matches!(
            k,
            EventKind::ProbeResult {
                outcome: ProbeOutcome::Healthy,
                ..
            }
        )
    })
    .await;
    // The upstream dies: the agent can no longer reach it, the socket stays up.
    rig.emulator.faults().refuse_destination(true);
    let disconnected = wait_event(&mut events, LIMIT, "a probe-failed disconnect", |k| {
        matches!(
            k,
            EventKind::Disconnected {
                cause: Cause::ProbeFailed(_)
            }
        )
    })
    .await;
    let EventKind::Disconnected {
        cause: Cause::ProbeFailed(failure),
    } = disconnected
    else {
        unreachable!()
    };
    assert_eq!(failure.check, "http");
    assert_eq!(failure.consecutive_failures, 2);
    rig.emulator.faults().refuse_destination(false);
    wait_event(&mut events, LIMIT, "a restart", |k| {
        matches!(k, EventKind::Restarted { .. })
    })
    .await;
    wait_event(
        &mut events,
        LIMIT,
        "a healthy probe after the restart",
        |k| {
            matches!(
                k,
                EventKind::ProbeResult {
                    outcome: ProbeOutcome::Healthy,
                    ..
                }
            )
        },
    )
    .await;
    rig.tunnel.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tcp_connect_probe_reports_a_healthy_tunnel() {
    let rig = rig_with(health(
        PluginSource::Builtin("tcp-connect".into()),
        "{}",
        true,
        Duration::from_millis(200),
    ))
    .await;
    let mut events = rig.tunnel.subscribe();
    let EventKind::ProbeResult {
        check,
        consecutive_failures,
        ..
    } = wait_event(&mut events, LIMIT, "a healthy probe", |k| {
        matches!(
            k,
            EventKind::ProbeResult {
                outcome: ProbeOutcome::Healthy,
                ..
            }
        )
    })
    .await
    else {
        unreachable!()
    };
    assert_eq!((check.as_str(), consecutive_failures), ("tcp-connect", 0));
    rig.tunnel.shutdown().await.expect("shutdown");
}

fn context(cause: Cause, attempt: u32, failed_resumes: u32) -> DecisionContext {
    DecisionContext {
        session: ssm_tether::events::SessionRef::default(),
        cause,
        attempt,
        failed_resumes,
        outage: Duration::from_secs(1),
        session_age: Duration::from_secs(60),
        last_delay: None,
        history: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backoff_policy_follows_its_config() {
    let config = r#"{"base_ms":100,"cap_ms":400,"resume_attempts_before_restart":3,"seed":5}"#;
    let policy = PluginInstance::start(
        &engine(),
        &spec(
            PluginSource::Builtin("exponential-backoff".into()),
            Role::ReconnectPolicy,
            config,
        ),
        Role::ReconnectPolicy,
        info(),
        TunnelLink::new(),
    )
    .await
    .expect("starts");
    assert_eq!(
        policy
            .decide(&context(Cause::PlannedClose, 0, 0))
            .await
            .expect("answer"),
        Decision::Resume {
            after: Duration::ZERO
        }
    );
    for attempt in 1..8u32 {
        let ceiling = Duration::from_millis((100u64 << attempt).min(400));
        match policy
            .decide(&context(Cause::PingTimeout, attempt, attempt.min(2)))
            .await
            .expect("answer")
        {
            Decision::Resume { after } => assert!(after <= ceiling, "{attempt}: {after:?}"),
            other => panic!("attempt {attempt}: {other:?}"),
        }
    }
    assert!(matches!(
        policy
            .decide(&context(Cause::PingTimeout, 3, 3))
            .await
            .expect("answer"),
        Decision::Restart { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backoff_policy_escalates_to_restart_end_to_end() {
    // One failed resume is enough for this configuration; the built-in default waits for 10.
    let rig = rig_with(reconnect(
        PluginSource::Builtin("exponential-backoff".into()),
        r#"{"base_ms":20,"cap_ms":50,"resume_attempts_before_restart":1}"#,
    ))
    .await;
    forwarding(&rig).await;
    let mut events = rig.tunnel.subscribe();
    rig.emulator
        .faults()
        .fail_resume(5, None, ssm_emulator::faults::ResumeFailCode::Throttling);
    rig.emulator
        .faults()
        .reset(None, SideSelection::Client)
        .await
        .expect("reset");
    wait_event(&mut events, LIMIT, "a restart decided by the plugin", |k| {
        matches!(k, EventKind::Restarting { .. })
    })
    .await;
    wait_event(&mut events, LIMIT, "restarted", |k| {
        matches!(k, EventKind::Restarted { .. })
    })
    .await;
    bytes_flow(&rig, 5).await;
    rig.tunnel.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_hook_sees_events_without_failing() {
    let specs = TunnelPluginSpecs {
        hooks: vec![spec(
            PluginSource::Builtin("log".into()),
            Role::EventHook,
            "{}",
        )],
        ..TunnelPluginSpecs::default()
    };
    let rig = rig_with(specs).await;
    let mut events = rig.tunnel.subscribe();
    forwarding(&rig).await;
    bytes_flow(&rig, 6).await;
    rig.emulator
        .faults()
        .recycle(None, SideSelection::Client)
        .await
        .expect("recycle");
    wait_event(&mut events, LIMIT, "resumed", |k| {
        matches!(k, EventKind::Resumed { .. })
    })
    .await;
    rig.tunnel.shutdown().await.expect("shutdown");
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(event.kind, EventKind::PluginFailed { .. }),
            "{event:?}"
        );
    }
}

// ----- load errors ------------------------------------------------------------------------

async fn start_error(source: PluginSource, role: Role, config: &str) -> LoadError {
    PluginInstance::start(
        &engine(),
        &spec(source, role, config),
        role,
        info(),
        TunnelLink::new(),
    )
    .await
    .expect_err("must not start")
}

#[tokio::test]
async fn load_errors_name_the_plugin_and_the_reason() {
    let missing = fixture("no-such-plugin");
    let err = start_error(missing, Role::ReconnectPolicy, "{}").await;
    assert!(matches!(err, LoadError::Read { .. }), "{err}");
    assert!(err.to_string().contains("no-such-plugin.wasm"), "{err}");

    let dir = tempfile::tempdir().expect("dir");
    let text = dir.path().join("policy.wasm");
    std::fs::write(&text, "not wasm").expect("write");
    let err = start_error(PluginSource::File(text), Role::ReconnectPolicy, "{}").await;
    assert!(matches!(err, LoadError::NotAComponent { .. }), "{err}");
    assert!(err.to_string().contains("policy.wasm"), "{err}");

    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").expect("write");
    let err = start_error(PluginSource::File(core), Role::ReconnectPolicy, "{}").await;
    assert!(err.to_string().contains("core WebAssembly module"), "{err}");

    let err = start_error(
        PluginSource::Builtin("log".into()),
        Role::ReconnectPolicy,
        "{}",
    )
    .await;
    assert!(
        matches!(
            err,
            LoadError::WrongWorld {
                found: Role::EventHook,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("builtin:log"), "{err}");

    let err = start_error(fixture("future-policy"), Role::ReconnectPolicy, "{}").await;
    assert!(
        matches!(err, LoadError::IncompatibleVersion { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("@0.2.0"), "{err}");

    let err = start_error(
        fixture("hostile-policy"),
        Role::ReconnectPolicy,
        r#"{"mode":"reject"}"#,
    )
    .await;
    assert!(matches!(err, LoadError::ConfigRejected { .. }), "{err}");
    assert!(err.to_string().contains("rejected on purpose"), "{err}");

    let err = start_error(
        PluginSource::Builtin("exponential-backoff".into()),
        Role::ReconnectPolicy,
        r#"{"bas_ms":1}"#,
    )
    .await;
    assert!(err.to_string().contains("bas_ms"), "{err}");

    let err = start_error(PluginSource::Builtin("nope".into()), Role::EventHook, "{}").await;
    assert!(
        err.to_string().contains("builtin:exponential-backoff"),
        "{err}"
    );
}

// ----- hot reload -------------------------------------------------------------------------

fn policy_text(rig_endpoint: &str, mode: &str) -> String {
    let policy = fixture("hostile-policy");
    let PluginSource::File(path) = policy else {
        unreachable!()
    };
    format!(
        r#"
[[tunnel]]
name = "test"
target = "i-0123456789abcdef0"
remote_port = 1
local = "127.0.0.1:0"
endpoint_url = "{rig_endpoint}"

[tunnel.reconnect]
plugin = "{}"
config = {{ mode = "{mode}" }}
"#,
        path.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_the_policy_under_a_live_stream() {
    let emulator = support::emulator(|_| {}).await;
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("tunnels.toml");
    std::fs::write(&path, policy_text(&emulator.endpoint_url(), "ok")).expect("write");
    let policy = ssm_tether::policy::load(&path).expect("valid policy");
    let (mut reloader, mut receivers) = Reloader::start(engine(), &path, &policy)
        .await
        .expect("plugins start");
    let receiver = receivers.remove("test").expect("the tunnel's plugins");
    let port = support::echo_server().await;
    let files = support::AwsFiles::new("AKIDTEST0001");
    let mut config = support::tunnel_config(port);
    config.plugins = receiver;
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
        11,
        Duration::from_secs(4),
        64 * 1024,
    ));
    // The old policy (resume) decides a disconnect during the stream.
    tokio::time::sleep(Duration::from_millis(500)).await;
    emulator
        .faults()
        .recycle(None, SideSelection::Client)
        .await
        .expect("recycle");
    wait_event(&mut events, LIMIT, "resumed", |k| {
        matches!(k, EventKind::Resumed { .. })
    })
    .await;

    // Swap to a policy that restarts, while the stream runs.
    assert!(!reloader.files_changed());
    std::fs::write(&path, policy_text(&emulator.endpoint_url(), "restart")).expect("write");
    assert!(reloader.files_changed(), "the rewrite is noticed");
    assert_eq!(reloader.reload().await.expect("reload"), 1);

    // A broken edit keeps the running plugins.
    std::fs::write(&path, policy_text(&emulator.endpoint_url(), "reject")).expect("write");
    let err = reloader.reload().await.expect_err("rejected config");
    assert!(err.to_string().contains("rejected on purpose"), "{err}");

    let (sent, received, bytes) = stream.await.expect("stream");
    assert_eq!(sent, received, "no byte lost across the reload");
    assert!(bytes > 0);
    assert_eq!(tunnel.status().borrow().restarts, 0);

    // The new policy decides the next disconnect.
    emulator
        .faults()
        .recycle(None, SideSelection::Client)
        .await
        .expect("recycle");
    wait_event(&mut events, LIMIT, "a restart by the new policy", |k| {
        matches!(k, EventKind::Restarting { .. })
    })
    .await;
    wait_event(&mut events, LIMIT, "restarted", |k| {
        matches!(k, EventKind::Restarted { .. })
    })
    .await;
    tunnel.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasi_gives_a_plugin_no_network_files_or_environment() {
    // A listener the plugin could reach if WASI sockets were open to it.
    let bait = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = bait.local_addr().expect("addr");
    let rig = hostile_probe(
        &format!(r#"{{"mode":"escape","address":"{address}"}}"#),
        true,
    )
    .await;
    let mut events = rig.tunnel.subscribe();
    match next_probe(&mut events).await {
        ProbeOutcome::Degraded(reason) => assert!(reason.starts_with("sandboxed"), "{reason}"),
        other => panic!("the plugin got out of its sandbox: {other:?}"),
    }
    rig.tunnel.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_see_the_port_a_listener_got() {
    // The tunnel is configured with 127.0.0.1:0 (see `info`); plugins see the bound port.
    let rig = hostile_probe(r#"{"mode":"info"}"#, false).await;
    let mut events = rig.tunnel.subscribe();
    assert_eq!(
        next_probe(&mut events).await,
        ProbeOutcome::Degraded(rig.local().to_string())
    );
    rig.tunnel.shutdown().await.expect("shutdown");
}

// ----- WIT versions and the call's session --------------------------------------------

async fn policy(source: PluginSource, config: &str) -> PluginInstance {
    PluginInstance::start(
        &engine(),
        &spec(source, Role::ReconnectPolicy, config),
        Role::ReconnectPolicy,
        info(),
        TunnelLink::new(),
    )
    .await
    .expect("starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_built_for_an_earlier_0_1_version_loads_and_decides() {
    // Its exports are ssm-tether:plugin/reconnect@0.1.0 and /plugin@0.1.0 (its own frozen
    // copy of the WIT); the host binds @0.1.1 and finds them semver-compatibly.
    let policy = policy(fixture("legacy-policy"), "{}").await;
    assert_eq!(
        policy
            .decide(&context(Cause::PingTimeout, 1, 0))
            .await
            .expect("answer"),
        Decision::Resume {
            after: Duration::from_millis(7)
        }
    );
    // And one for a later minor version is refused, naming both versions.
    let err = start_error(fixture("future-policy"), Role::ReconnectPolicy, "{}").await;
    let text = err.to_string();
    assert!(text.contains("@0.2.0") && text.contains("@0.1.1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_is_told_which_session_a_decision_is_about() {
    let policy = policy(fixture("hostile-policy"), r#"{"mode":"session"}"#).await;
    let mut context = context(Cause::PlannedClose, 0, 0);
    context.session = ssm_tether::events::SessionRef {
        stripe: 2,
        serial: 5,
        session_id: Some("sess-5".into()),
    };
    assert_eq!(
        policy.decide(&context).await.expect("answer"),
        Decision::Resume {
            after: Duration::from_millis(5002)
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_reconnect_policy_is_skipped_without_a_failure_per_decision() {
    let rig = rig_with(reconnect(fixture("hostile-policy"), r#"{"mode":"panic"}"#)).await;
    forwarding(&rig).await;
    let mut events = rig.tunnel.subscribe();
    let failures = std::cell::Cell::new(0);
    // Ten planned closes: three failures quarantine the plugin; the seven decisions after
    // that are the built-in policy's, without a failure event each.
    for _ in 0..10 {
        rig.emulator
            .faults()
            .recycle(None, SideSelection::Client)
            .await
            .expect("recycle");
        wait_event(&mut events, LIMIT, "resume", |k| {
            if matches!(k, EventKind::PluginFailed { .. }) {
                failures.set(failures.get() + 1);
            }
            matches!(k, EventKind::Resumed { .. })
        })
        .await;
        // The service registers the new socket a moment after the client sees it open.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    bytes_flow(&rig, 3).await;
    rig.tunnel.shutdown().await.expect("shutdown");
    let failures = failures.get();
    assert_eq!(
        failures, 3,
        "failure events for a plugin quarantined after three"
    );
}
