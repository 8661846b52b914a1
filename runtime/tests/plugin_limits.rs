//! Hostile plugins against the sandbox's store-wide and rate limits, with test-only
//! components built here from WAT: the core module is hand-written (so it can do what no
//! guest toolchain would: several memories, megabytes of text with forged log lines, a
//! connect loop), and `wit-component` wraps it into a component of one of the worlds in
//! `wit/`, so its types are exactly the published ones.
//!
//! * the memory cap holds for all memories of a store together, not per memory;
//! * two failing event hooks do not feed each other;
//! * plugin text is bounded and escaped wherever the host keeps, logs or prints it, and
//!   `host.log` is rate-limited;
//! * `tunnel-tcp` connection opens are rate-limited and bytes are budgeted per call.

mod support;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ssm_tether::events::{EventKind, ProbeOutcome, TunnelEvent};
use ssm_tether::plugin::text::{MAX_NAME, MAX_TEXT, TRUNCATED};
use ssm_tether::plugin::{
    LoadError, PluginEngine, PluginInstance, TcpTarget, TunnelInfo, TunnelLink, TunnelPlugins,
};
use ssm_tether::policy::{
    HealthCheckSpec, LocalAddress, PluginSource, PluginSpec, Role, TunnelPluginSpecs,
};
use ssm_tether::recovery::{Cause, Decision, DecisionContext};
use support::{Rig, echo_through};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, watch};

const LIMIT: Duration = Duration::from_secs(60);

// ----- building test components -----------------------------------------------------------

/// Where the big text lives in a test module's memory, and how long it is (4 MiB).
const BIG: u32 = 1 << 20;
const BIG_LEN: u32 = 4 << 20;
/// What the big text starts with: a line break and a complete, plausible log line, then
/// terminal control sequences. The rest of it is `A`s.
const FORGED: &str = "\\r\\n2026-01-01T00:00:00.000000Z  INFO ssm_tether: forged line\\n\\1b[2J";
/// The forged line as it would appear in a log if it got through unescaped.
const FORGED_LINE: &str = "2026-01-01T00:00:00.000000Z  INFO ssm_tether: forged line";

/// A core module with a bump allocator (`cabi_realloc`), the plugin interface and `body`
/// (the role's export and anything else). `memory` is the main memory's size in pages;
/// the heap starts at `heap`. `$fill_big` writes the big text (call it before using it).
fn module(imports: &str, memory: u32, heap: u32, describe_name: (u32, u32), body: &str) -> String {
    let (name, name_len) = describe_name;
    let big_fill = BIG_LEN - 128;
    format!(
        r#"(module
  {imports}
  (memory (export "memory") {memory})
  (global $heap (mut i32) (i32.const {heap}))
  (func $alloc (param $align i32) (param $size i32) (result i32)
    (local $p i32) (local $end i32)
    (local.set $p (i32.and
      (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
      (i32.sub (i32.const 0) (local.get $align))))
    (local.set $end (i32.add (local.get $p) (local.get $size)))
    (if (i32.gt_u (local.get $end) (i32.shl (memory.size) (i32.const 16)))
      (then
        (if (i32.eq
              (memory.grow (i32.add (i32.const 1) (i32.shr_u
                (i32.sub (local.get $end) (i32.shl (memory.size) (i32.const 16)))
                (i32.const 16))))
              (i32.const -1))
          (then unreachable))))
    (global.set $heap (local.get $end))
    (local.get $p))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (call $alloc (local.get 2) (local.get 3)))
  (data (i32.const 16) "wat-test")
  (data (i32.const 32) "0.0.0")
  (data (i32.const 48) "a test component")
  (func $fill_big
    (memory.fill (i32.const {big_fill_at}) (i32.const 0x41) (i32.const {big_fill}))
    (memory.init $forged (i32.const {BIG}) (i32.const 0) (i32.const 128)))
  (data $forged "{FORGED}{pad}")
  (func (export "ssm-tether:plugin/plugin@0.1.1#describe") (result i32)
    {fill_for_name}
    (i32.store (i32.const 1024) (i32.const {name}))
    (i32.store (i32.const 1028) (i32.const {name_len}))
    (i32.store (i32.const 1032) (i32.const 32))
    (i32.store (i32.const 1036) (i32.const 5))
    (i32.store (i32.const 1040) (i32.const 48))
    (i32.store (i32.const 1044) (i32.const 16))
    (i32.const 1024))
  {body}
)"#,
        big_fill_at = BIG + 128,
        pad = " ".repeat(128 - forged_len()),
        fill_for_name = if name == BIG { "(call $fill_big)" } else { "" },
    )
}

/// Bytes of [`FORGED`] once the WAT escapes are read.
fn forged_len() -> usize {
    let text = FORGED
        .replace("\\r", "r")
        .replace("\\n", "n")
        .replace("\\1b", "e");
    text.len()
}

/// `init` that accepts any config.
const INIT_OK: &str = r#"
  (func (export "ssm-tether:plugin/plugin@0.1.1#init") (param i32 i32) (result i32)
    (i32.store8 (i32.const 1056) (i32.const 0))
    (i32.const 1056))"#;

/// A health check's `check` (flat parameters: the probe context) running `body`, which
/// leaves the address of a `probe-outcome` on the stack.
fn check_export(locals: &str, body: &str) -> String {
    format!(
        r#"
  (func (export "ssm-tether:plugin/health@0.1.1#check")
    (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
    {locals}
    {body})"#
    )
}

/// A `probe-outcome` of `healthy` at 1088.
const HEALTHY: &str = "(i32.store8 (i32.const 1088) (i32.const 0)) (i32.const 1088)";

/// `unhealthy` with the text at `ptr`/`len`.
fn unhealthy(ptr: &str, len: &str) -> String {
    format!(
        "(i32.store8 (i32.const 1088) (i32.const 2)) (i32.store (i32.const 1092) {ptr}) \
         (i32.store (i32.const 1096) {len}) (i32.const 1088)"
    )
}

const TCP: &str = r#"
  (import "ssm-tether:plugin/tunnel-tcp@0.1.1" "connect" (func $connect (param i32 i32)))
  (import "ssm-tether:plugin/tunnel-tcp@0.1.1" "[method]connection.write"
    (func $write (param i32 i32 i32 i32 i32)))
  (import "ssm-tether:plugin/tunnel-tcp@0.1.1" "[method]connection.read"
    (func $read (param i32 i32 i32 i32)))
  (import "ssm-tether:plugin/tunnel-tcp@0.1.1" "[method]connection.close"
    (func $close (param i32)))
  (import "ssm-tether:plugin/tunnel-tcp@0.1.1" "[resource-drop]connection"
    (func $drop (param i32)))"#;

const LOG: &str = r#"
  (import "ssm-tether:plugin/host@0.1.1" "log" (func $log (param i32 i32 i32)))"#;

/// The component of `world` whose core module is `wat`, written to a file.
fn component(world: &str, wat: &str) -> PluginSource {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let mut module = wat::parse_str(wat).unwrap_or_else(|e| panic!("{e}\n{wat}"));
    let mut resolve = wit_parser::Resolve::default();
    let wit = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../wit");
    let (package, _) = resolve.push_dir(&wit).expect("wit/ parses");
    let world = resolve
        .select_world(&[package], Some(world))
        .expect("world");
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .expect("metadata");
    let bytes = wit_component::ComponentEncoder::default()
        .module(&module)
        .expect("module")
        .validate(true)
        .encode()
        .expect("component");
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("dir"));
    let path = dir.path().join(format!(
        "test-{}.wasm",
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, bytes).expect("write");
    PluginSource::File(path)
}

/// A health check: `check` runs `body` (with `locals`).
fn probe(imports: &str, locals: &str, body: &str) -> PluginSource {
    component(
        "health-check",
        &module(
            imports,
            100,
            6 << 20,
            (16, 8),
            &format!("{INIT_OK}{}", check_export(locals, body)),
        ),
    )
}

/// `on-event`'s flat parameters: the tunnel event, its variant cases joined.
const ON_EVENT_PARAMS: &str = "(param i32 i32 i64 i32 i64 i64 i64 i32 i32 i32 i64 i32 i64)";

/// A health check with a small main memory (128 KiB) whose `check` runs `body`, and `extra`
/// definitions in its core module.
fn small_check(extra: &str, body: &str) -> PluginSource {
    component(
        "health-check",
        &module(
            "",
            2,
            65536,
            (16, 8),
            &format!("{INIT_OK}{} {extra}", check_export("", body)),
        ),
    )
}

/// An event hook whose `on-event` runs `body`.
fn hook(body: &str) -> PluginSource {
    component(
        "event-hook",
        &module(
            "",
            2,
            65536,
            (16, 8),
            &format!(
                r#"{INIT_OK}
  (func (export "ssm-tether:plugin/hooks@0.1.1#on-event") {ON_EVENT_PARAMS} {body})"#
            ),
        ),
    )
}

// ----- running them -----------------------------------------------------------------------

/// One engine for the binary; no disk cache (the components are built per run).
fn engine() -> PluginEngine {
    static ENGINE: OnceLock<PluginEngine> = OnceLock::new();
    ENGINE
        .get_or_init(|| PluginEngine::new(None).expect("engine"))
        .clone()
}

fn spec(source: PluginSource, role: Role) -> PluginSpec {
    PluginSpec::new(source, role)
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

/// Starts a health check.
async fn start(spec: &PluginSpec, link: TunnelLink) -> Result<PluginInstance, LoadError> {
    PluginInstance::start(&engine(), spec, Role::HealthCheck, info(), link).await
}

/// A health check with a memory cap of `mb` MiB.
async fn check_with_memory(source: PluginSource, mb: u64) -> Result<PluginInstance, LoadError> {
    let mut spec = spec(source, Role::HealthCheck);
    spec.limits.memory = mb << 20;
    start(&spec, TunnelLink::new()).await
}

/// A health check granted `tunnel-tcp` to `address`.
async fn check_at(source: PluginSource, address: SocketAddr) -> PluginInstance {
    let mut spec = spec(source, Role::HealthCheck);
    spec.grants.tunnel_tcp = true;
    spec.limits.timeout = Duration::from_secs(10);
    spec.limits.cpu = Duration::from_secs(2);
    let link = TunnelLink::to(TcpTarget {
        address: LocalAddress::Tcp(address),
        status: None,
    });
    start(&spec, link).await.expect("starts")
}

/// Whether `text` is bounded by `max` (plus the mark) and carries no raw control character.
fn assert_safe(text: &str, max: usize) {
    assert!(
        text.len() <= max + TRUNCATED.len(),
        "{} bytes: {}…",
        text.len(),
        &text[..80.min(text.len())]
    );
    assert!(
        !text.chars().any(char::is_control),
        "a control character got through: {text:?}"
    );
}

// ----- item: the memory cap is per store ---------------------------------------------------

#[tokio::test]
async fn the_memory_cap_holds_for_all_memories_of_a_store_together() {
    // Two extra memories (multi-memory), each grown by 3 MiB in `check`: 6 MiB in total,
    // within a 4 MiB cap per memory but not in total.
    let grow = small_check(
        "(memory $a 1) (memory $b 1)",
        &format!(
            "(drop (memory.grow $a (i32.const 48))) (drop (memory.grow $b (i32.const 48))) \
             (if (result i32) (i32.eq (memory.size $b) (i32.const 49)) \
               (then {HEALTHY}) (else {}))",
            unhealthy("(i32.const 16)", "(i32.const 8)")
        ),
    );
    // With room for all of it, the component works: the failure below is the cap's.
    let roomy = check_with_memory(grow.clone(), 8).await.expect("starts");
    assert_eq!(roomy.check(0).await.expect("answer"), ProbeOutcome::Healthy);
    let tight = check_with_memory(grow, 4).await.expect("starts");
    let failure = tight.check(0).await.expect_err("over the cap");
    assert!(failure.reason.contains("memory limit"), "{failure}");

    // The same at instantiation: two extra memories of 3 MiB each, a 4 MiB cap.
    let big_memories = small_check("(memory $a 48) (memory $b 48)", HEALTHY);
    assert!(check_with_memory(big_memories.clone(), 8).await.is_ok());
    let err = check_with_memory(big_memories, 4)
        .await
        .expect_err("6 MiB of memories under a 4 MiB cap");
    assert!(err.to_string().contains("memory"), "{err}");

    // And a component cannot have many more memories than components need.
    let many = small_check(&" (memory 0)".repeat(40), HEALTHY);
    let err = check_with_memory(many, 32)
        .await
        .expect_err("40 memories are refused");
    assert!(err.to_string().contains("memor"), "{err}");
}

// ----- item: failing hooks do not feed each other -------------------------------------------

async fn rig_with(specs: TunnelPluginSpecs) -> Rig {
    let plugins = TunnelPlugins::load(&engine(), &specs, &info(), TunnelLink::new())
        .await
        .expect("plugins load");
    let (_tx, rx) = watch::channel(Arc::new(plugins));
    Rig::start_with(|_| {}, move |config| config.plugins = rx).await
}

/// Every event that arrives within `period`; panics if the receiver lagged (a flood).
async fn events_for(
    events: &mut broadcast::Receiver<TunnelEvent>,
    period: Duration,
) -> Vec<EventKind> {
    let mut seen = Vec::new();
    let end = tokio::time::Instant::now() + period;
    loop {
        match tokio::time::timeout_at(end, events.recv()).await {
            Err(_) => return seen,
            Ok(Ok(event)) => seen.push(event.kind),
            Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                panic!("{n} events lost: a flood (after {} events)", seen.len())
            }
            Ok(Err(broadcast::error::RecvError::Closed)) => return seen,
        }
    }
}

fn failures(events: &[EventKind]) -> usize {
    events
        .iter()
        .filter(|k| matches!(k, EventKind::PluginFailed { .. }))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_failing_hooks_produce_a_bounded_number_of_events() {
    let specs = TunnelPluginSpecs {
        hooks: vec![
            spec(hook("unreachable"), Role::EventHook),
            spec(hook("unreachable"), Role::EventHook),
        ],
        ..TunnelPluginSpecs::default()
    };
    let rig = rig_with(specs).await;
    let mut events = rig.tunnel.subscribe();
    // Every event of the start (listening, session started, connected, forwarding) fails
    // each hook; the third failure quarantines it. Without the fix, each hook's failure
    // report failed the other hook, and so on: thousands of events a second.
    let seen = events_for(&mut events, Duration::from_secs(3)).await;
    let failed = failures(&seen);
    assert!(
        failed <= 2 * ssm_tether::plugin::QUARANTINE_AFTER as usize,
        "{failed} failure events in 3 s: {:?}",
        &seen[..seen.len().min(20)]
    );
    assert!(seen.len() < 40, "{} events in 3 s", seen.len());

    // Quarantined hooks skip events silently: traffic (connection events) reports nothing.
    let (sent, received) = tokio::time::timeout(LIMIT, echo_through(rig.local(), 1, 4096))
        .await
        .expect("echo in time");
    assert_eq!(sent, received);
    let later = events_for(&mut events, Duration::from_secs(1)).await;
    assert_eq!(failures(&later), 0, "{later:?}");
    rig.tunnel.shutdown().await.expect("shutdown");
}

// ----- item: plugin text is bounded and escaped ------------------------------------------

#[tokio::test]
async fn plugin_text_is_bounded_and_escaped_where_it_enters_the_host() {
    let big = format!("(i32.const {BIG})");
    let big_len = format!("(i32.const {BIG_LEN})");

    // A probe's reason: 4 MiB, starting with a forged log line.
    let shout = probe(
        "",
        "",
        &format!("(call $fill_big) {}", unhealthy(&big, &big_len)),
    );
    let check = check_with_memory(shout, 32).await.expect("starts");
    match check.check(0).await.expect("answer") {
        ProbeOutcome::Unhealthy(reason) => {
            assert_safe(&reason, MAX_TEXT);
            assert!(reason.starts_with("\\r\\n2026-01-01"), "{reason}");
            assert!(reason.ends_with(TRUNCATED), "{reason}");
        }
        other => panic!("{other:?}"),
    }

    // `init` rejecting its config with 4 MiB.
    let reject = component(
        "health-check",
        &module(
            "",
            100,
            6 << 20,
            (16, 8),
            &format!(
                r#"
  (func (export "ssm-tether:plugin/plugin@0.1.1#init") (param i32 i32) (result i32)
    (call $fill_big)
    (i32.store8 (i32.const 1056) (i32.const 1))
    (i32.store (i32.const 1060) {big})
    (i32.store (i32.const 1064) {big_len})
    (i32.const 1056)) {}"#,
                check_export("", HEALTHY)
            ),
        ),
    );
    match check_with_memory(reject, 32).await {
        Err(LoadError::ConfigRejected { message, .. }) => assert_safe(&message, MAX_TEXT),
        other => panic!("{other:?}"),
    }

    // `describe` naming itself with 4 MiB.
    let named = component(
        "health-check",
        &module(
            "",
            100,
            6 << 20,
            (BIG, BIG_LEN),
            &format!("{INIT_OK}{}", check_export("", HEALTHY)),
        ),
    );
    let plugin = check_with_memory(named, 32).await.expect("starts");
    assert_safe(&plugin.info().name, MAX_NAME);

    // A reconnect policy giving up with 4 MiB.
    let give_up = component(
        "reconnect-policy",
        &module(
            "",
            100,
            6 << 20,
            (16, 8),
            &format!(
                r#"{INIT_OK}
  (func (export "ssm-tether:plugin/reconnect@0.1.1#decide") (param i32) (result i32)
    (call $fill_big)
    (i32.store8 (i32.const 1088) (i32.const 2))
    (i32.store (i32.const 1096) {big})
    (i32.store (i32.const 1100) {big_len})
    (i32.const 1088))"#
            ),
        ),
    );
    let policy = PluginInstance::start(
        &engine(),
        &spec(give_up, Role::ReconnectPolicy),
        Role::ReconnectPolicy,
        info(),
        TunnelLink::new(),
    )
    .await
    .expect("starts");
    let context = DecisionContext {
        session: ssm_tether::events::SessionRef::default(),
        cause: Cause::PingTimeout,
        attempt: 0,
        failed_resumes: 0,
        outage: Duration::from_secs(1),
        session_age: Duration::from_secs(60),
        last_delay: None,
        history: Vec::new(),
    };
    match policy.decide(&context).await.expect("answer") {
        Decision::GiveUp { reason } => assert_safe(&reason, MAX_TEXT),
        other => panic!("{other:?}"),
    }
}

/// A writer collecting everything a tracing subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn host_log_lines_are_escaped_and_rate_limited() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    // This test's runtime runs on this thread only, so a thread-local subscriber sees all.
    let _guard = tracing::subscriber::set_default(subscriber);

    // 1000 lines of 8 KiB per call, each starting with a forged log line.
    let flood = probe(
        LOG,
        "(local $i i32)",
        &format!(
            "(call $fill_big) \
             (loop $again \
               (call $log (i32.const 2) (i32.const {BIG}) (i32.const 8192)) \
               (local.set $i (i32.add (local.get $i) (i32.const 1))) \
               (br_if $again (i32.lt_u (local.get $i) (i32.const 1000)))) \
             {HEALTHY}"
        ),
    );
    let mut spec = spec(flood, Role::HealthCheck);
    spec.limits.cpu = Duration::from_secs(2);
    spec.limits.timeout = Duration::from_secs(10);
    let plugin = start(&spec, TunnelLink::new()).await.expect("starts");
    for _ in 0..5 {
        assert_eq!(
            plugin.check(0).await.expect("answer"),
            ProbeOutcome::Healthy
        );
    }
    drop(plugin);

    let log = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        !lines.iter().any(|l| l.starts_with(FORGED_LINE)),
        "a plugin forged a log line"
    );
    // 5000 lines asked for; 200 at once are let through, plus a few said to have been
    // suppressed (and those the bucket refills while the test runs).
    let written = lines.iter().filter(|l| l.contains("forged line")).count();
    assert!(
        (150..=230).contains(&written),
        "{written} plugin lines written of 5000"
    );
    assert!(log.contains("suppressed"), "the drop is reported");
    for line in &lines {
        assert!(line.len() < 4096 + 512, "a {} byte line", line.len());
    }
    assert!(
        log.len() < (230 + 5) * (4096 + 512),
        "{} bytes logged",
        log.len()
    );
}

#[test]
fn the_cli_prints_plugin_text_escaped_and_bounded() {
    let home = tempfile::tempdir().expect("home");
    let ssm_tether = || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ssm-tether"));
        command
            .env("HOME", home.path())
            .env("XDG_CACHE_HOME", home.path().join("cache"))
            .env("RUST_LOG", "info");
        command
    };
    let big = format!("(i32.const {BIG})");
    let big_len = format!("(i32.const {BIG_LEN})");
    let shout = probe(
        LOG,
        "(local $i i32)",
        &format!(
            "(call $fill_big) \
             (loop $again \
               (call $log (i32.const 3) (i32.const {BIG}) (i32.const 8192)) \
               (local.set $i (i32.add (local.get $i) (i32.const 1))) \
               (br_if $again (i32.lt_u (local.get $i) (i32.const 1000)))) \
             {}",
            unhealthy(&big, &big_len)
        ),
    );
    let PluginSource::File(shout) = shout else {
        unreachable!()
    };
    let out = ssm_tether()
        .args(["plugin", "test"])
        .arg(&shout)
        .args(["--event", "probe", "--cpu", "2s", "--timeout", "10s"])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("answer:   Unhealthy"), "{stdout}");
    assert!(stdout.len() < 4096, "{} bytes of stdout", stdout.len());
    assert!(
        stderr.len() < 300 * 9000,
        "{} bytes of stderr",
        stderr.len()
    );
    for text in [&stdout, &stderr] {
        assert!(
            !text.lines().any(|l| l.starts_with(FORGED_LINE)),
            "a plugin forged a line"
        );
    }

    let named = component(
        "health-check",
        &module(
            "",
            100,
            6 << 20,
            (BIG, BIG_LEN),
            &format!("{INIT_OK}{}", check_export("", HEALTHY)),
        ),
    );
    let PluginSource::File(named) = named else {
        unreachable!()
    };
    let out = ssm_tether()
        .args(["plugin", "inspect"])
        .arg(&named)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.len() < 4096, "{} bytes of stdout", stdout.len());
    assert!(
        !stdout.lines().any(|l| l.starts_with(FORGED_LINE)),
        "{stdout}"
    );
    assert!(stdout.contains(TRUNCATED), "{stdout}");

    // `check` with a hook whose `init` rejects its config with 4 MiB.
    let reject = component(
        "event-hook",
        &module(
            "",
            100,
            6 << 20,
            (16, 8),
            &format!(
                r#"
  (func (export "ssm-tether:plugin/plugin@0.1.1#init") (param i32 i32) (result i32)
    (call $fill_big)
    (i32.store8 (i32.const 1056) (i32.const 1))
    (i32.store (i32.const 1060) {big})
    (i32.store (i32.const 1064) {big_len})
    (i32.const 1056))
  (func (export "ssm-tether:plugin/hooks@0.1.1#on-event") {ON_EVENT_PARAMS})"#
            ),
        ),
    );
    let PluginSource::File(reject) = reject else {
        unreachable!()
    };
    let policy = home.path().join("tunnels.toml");
    let mut file = std::fs::File::create(&policy).expect("policy");
    write!(
        file,
        "[[tunnel]]\nname = \"db\"\ntarget = \"i-0123456789abcdef0\"\nremote_port = 5432\n\n\
         [[tunnel.hook]]\nplugin = \"{}\"\n",
        reject.display()
    )
    .expect("write");
    drop(file);
    let out = ssm_tether()
        .arg("check")
        .arg(&policy)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(stderr.contains("rejected its config"), "{stderr}");
    assert!(stderr.len() < 4096, "{} bytes of stderr", stderr.len());
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

// ----- item: tunnel-tcp rate and byte limits ----------------------------------------------

/// A listener counting accepted connections, the bytes received, and sending `send` bytes
/// on each connection before closing it.
async fn counting_server(send: usize) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr");
    let (accepted, received) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, r) = (accepted.clone(), received.clone());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::Relaxed);
            let r = r.clone();
            tokio::spawn(async move {
                let chunk = vec![7u8; 64 << 10];
                let mut sent = 0;
                while sent < send {
                    let n = chunk.len().min(send - sent);
                    if socket.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    sent += n;
                }
                if send > 0 {
                    let _ = socket.shutdown().await;
                }
                let mut buf = vec![0; 64 << 10];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    r.fetch_add(n, Ordering::Relaxed);
                }
            });
        }
    });
    (address, accepted, received)
}

/// `check` opening and closing 100 connections as fast as it can.
fn connect_flood() -> PluginSource {
    probe(
        TCP,
        "(local $i i32)",
        &format!(
            "(loop $again \
               (call $connect (i32.const 1000) (i32.const 2048)) \
               (if (i32.eqz (i32.load8_u (i32.const 2048))) \
                 (then \
                   (call $close (i32.load (i32.const 2052))) \
                   (call $drop (i32.load (i32.const 2052))))) \
               (local.set $i (i32.add (local.get $i) (i32.const 1))) \
               (br_if $again (i32.lt_u (local.get $i) (i32.const 100)))) \
             {HEALTHY}"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_opens_are_rate_limited_per_plugin() {
    let (address, accepted, _) = counting_server(0).await;
    let plugin = check_at(connect_flood(), address).await;
    let started = Instant::now();
    assert_eq!(
        plugin.check(0).await.expect("answer"),
        ProbeOutcome::Healthy
    );
    assert_eq!(
        plugin.check(0).await.expect("answer"),
        ProbeOutcome::Healthy
    );
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A burst of 8, then 4 a second; a new call does not refill the bucket.
    let allowed = 8 + 4 * (elapsed.as_secs() as usize + 1);
    let got = accepted.load(Ordering::Relaxed);
    assert!(
        (8..=allowed).contains(&got),
        "{got} connections opened in {elapsed:?} (allowed {allowed}) of 200 tried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_may_write_and_read_only_its_byte_budget() {
    // 64 writes of 64 KiB (4 MiB) on one connection.
    let (address, _, received) = counting_server(0).await;
    let writer = probe(
        TCP,
        "(local $i i32) (local $c i32)",
        &format!(
            "(call $connect (i32.const 1000) (i32.const 2048)) \
             (local.set $c (i32.load (i32.const 2052))) \
             (loop $again \
               (call $write (local.get $c) (i32.const {BIG}) (i32.const 65536) \
                 (i32.const 5000) (i32.const 2048)) \
               (local.set $i (i32.add (local.get $i) (i32.const 1))) \
               (br_if $again (i32.lt_u (local.get $i) (i32.const 64)))) \
             (call $drop (local.get $c)) \
             {HEALTHY}"
        ),
    );
    let plugin = check_at(writer, address).await;
    assert_eq!(
        plugin.check(0).await.expect("answer"),
        ProbeOutcome::Healthy
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = received.load(Ordering::Relaxed);
    assert!(
        (64 << 10..=256 << 10).contains(&got),
        "{got} bytes written in one call"
    );

    // A server sending 4 MiB; the probe reads until an error or the end, and is
    // unhealthy if it got more than 256 KiB.
    let (address, _, _) = counting_server(4 << 20).await;
    let reader = probe(
        TCP,
        "(local $i i32) (local $c i32) (local $sum i32)",
        &format!(
            "(call $connect (i32.const 1000) (i32.const 2048)) \
             (local.set $c (i32.load (i32.const 2052))) \
             (block $done (loop $again \
               (call $read (local.get $c) (i32.const 65536) (i32.const 5000) (i32.const 2048)) \
               (br_if $done (i32.load8_u (i32.const 2048))) \
               (br_if $done (i32.eqz (i32.load (i32.const 2056)))) \
               (local.set $sum (i32.add (local.get $sum) (i32.load (i32.const 2056)))) \
               (local.set $i (i32.add (local.get $i) (i32.const 1))) \
               (br_if $again (i32.lt_u (local.get $i) (i32.const 10000))))) \
             (call $drop (local.get $c)) \
             (if (result i32) (i32.gt_u (local.get $sum) (i32.const {budget})) \
               (then {over}) (else {HEALTHY}))",
            budget = 256 << 10,
            over = unhealthy("(i32.const 16)", "(i32.const 8)"),
        ),
    );
    let plugin = check_at(reader, address).await;
    assert_eq!(
        plugin.check(0).await.expect("answer"),
        ProbeOutcome::Healthy,
        "read more than 256 KiB in one call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_flooding_probe_does_not_flood_the_tunnel() {
    let mut plugin = spec(connect_flood(), Role::HealthCheck);
    plugin.grants.tunnel_tcp = true;
    plugin.limits.timeout = Duration::from_secs(5);
    plugin.limits.cpu = Duration::from_secs(1);
    let specs = TunnelPluginSpecs {
        health_checks: vec![HealthCheckSpec {
            plugin,
            interval: Duration::from_millis(100),
            unhealthy_after: 2,
        }],
        ..TunnelPluginSpecs::default()
    };
    // The plugin's bucket is full from its start on: no more can be opened in all than its
    // burst and its rate since then allow.
    let started = Instant::now();
    let rig = rig_with(specs).await;
    let mut events = rig.tunnel.subscribe();
    // The application's traffic flows while the probe keeps trying.
    let echo = tokio::spawn(echo_through(rig.local(), 2, 256 << 10));
    let seen = events_for(&mut events, Duration::from_secs(2)).await;
    let (sent, received) = tokio::time::timeout(LIMIT, echo)
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(sent, received, "bytes through the tunnel");
    let window = started.elapsed();
    assert!(
        seen.iter()
            .any(|k| matches!(k, EventKind::ProbeResult { .. })),
        "the probe ran: {seen:?}"
    );
    let opened = seen
        .iter()
        .filter(|k| matches!(k, EventKind::ConnectionOpened { .. }))
        .count();
    // The burst, 4 a second, and the application's connection.
    let allowed = 8 + 4 * (window.as_secs() as usize + 1) + 1;
    assert!(
        opened <= allowed,
        "{opened} connections opened in {window:?} (allowed {allowed})"
    );
    rig.tunnel.shutdown().await.expect("shutdown");
}
