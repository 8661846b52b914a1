//! `ssm-tether check` and `ssm-tether run` as a user runs them, against the emulator.

mod child;
#[path = "../runtime/tests/support/mod.rs"]
mod support;

use std::process::Stdio;
use std::time::Duration;

use child::{free_port, line_stream, signal};
use ssm_emulator::events::Event;
use support::{AwsFiles, echo_server, emulator};

use ssm_tether_e2e::ssm_tether;

/// A policy with one tunnel `echo` from `127.0.0.1:port` to the emulator's agent, which dials
/// `echo`; the AWS files are the `AwsFiles` next to the policy.
fn echo_tunnel(endpoint_url: &str, echo: u16, port: u16) -> String {
    format!(
        "[defaults]\nregion = \"us-east-1\"\nprofile = \"test\"\nendpoint_url = \"{endpoint_url}\"\n\
         aws_config_file = \"config\"\naws_credentials_file = \"credentials\"\n\n\
         [[tunnel]]\nname = \"echo\"\ntarget = \"i-0123456789abcdef0\"\n\
         remote_port = {echo}\nlocal = \"127.0.0.1:{port}\"\n"
    )
}

#[test]
fn check_reports_a_bad_file_with_location_and_exit_code_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tunnels.toml");
    std::fs::write(
        &path,
        "[[tunnel]]\nname = \"db\"\ntarget = \"i-0123\"\nremote_port = 70000\n",
    )
    .expect("write");
    let out = ssm_tether().arg("check").arg(&path).output().expect("runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tunnels.toml:4:15"), "{stderr}");
    assert!(
        stderr.contains("tunnel[0].remote_port") && stderr.contains("70000"),
        "{stderr}"
    );

    let out = ssm_tether()
        .arg("check")
        .arg("examples/does-not-exist.toml")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn check_accepts_the_documented_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/tunnels.toml");
    let out = ssm_tether()
        .arg("check")
        .arg(example)
        .output()
        .expect("runs");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_forwards_and_sigterm_terminates_the_session_with_exit_0() {
    let emulator = emulator(|_| {}).await;
    let echo = echo_server().await;
    let files = AwsFiles::new("AKIDRUN");
    let port = free_port();
    let policy = files.dir.path().join("tunnels.toml");
    std::fs::write(&policy, echo_tunnel(&emulator.endpoint_url(), echo, port)).expect("policy");
    let child = ssm_tether()
        .arg("run")
        .arg(&policy)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    let local = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut connected = None;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(local).await.is_ok() {
            connected = Some(());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(connected.is_some(), "the listener came up");
    let (sent, received) = support::echo_through(local, 5, 200_000).await;
    assert_eq!(sent, received, "bytes through `ssm-tether run`");

    signal(&child, "TERM");
    let exit = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("waits");
    assert_eq!(
        exit.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&exit.stderr)
    );
    let terminated = emulator.events().snapshot().iter().any(|r| {
        matches!(&r.event, Event::Api { operation, error: None, .. } if operation == "TerminateSession")
    });
    assert!(terminated, "TerminateSession reached the emulator");
}

#[test]
fn check_fails_with_the_plugins_own_message_when_it_rejects_its_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tunnels.toml");
    std::fs::write(
        &path,
        "[[tunnel]]\nname = \"db\"\ntarget = \"i-0123\"\nremote_port = 5432\n\n\
         [tunnel.reconnect]\nplugin = \"builtin:exponential-backoff\"\n\
         config = { base_ms = 100, cap_ms = 10 }\n",
    )
    .expect("write");
    let out = ssm_tether().arg("check").arg(&path).output().expect("runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("builtin:exponential-backoff") && stderr.contains("cap_ms"),
        "{stderr}"
    );
}

#[test]
fn plugin_inspect_and_test_talk_to_authors() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../runtime/tests/plugins");
    let out = ssm_tether()
        .args(["plugin", "inspect", "builtin:tcp-connect"])
        .output()
        .expect("runs");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ssm-tether:plugin/health-check@0.1.1")
            && stdout.contains("name:     tcp-connect")
            && stdout.contains("tunnel-tcp"),
        "{stdout}"
    );

    let out = ssm_tether()
        .args(["plugin", "test", "builtin:exponential-backoff"])
        .args(["--event", "session-gone"])
        .output()
        .expect("runs");
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("answer:   Restart"),
        "{out:?}"
    );

    let out = ssm_tether()
        .args(["plugin", "test", &format!("{fixtures}/hostile-policy.wasm")])
        .args(["--config", r#"{"mode":"loop"}"#])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("CPU budget"),
        "{out:?}"
    );

    let out = ssm_tether()
        .args([
            "plugin",
            "inspect",
            &format!("{fixtures}/future-policy.wasm"),
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ssm-tether:plugin@0.2.0"),
        "{out:?}"
    );
}

/// Lines of a child's stderr, as they come.
fn stderr_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    line_stream(child.stderr.take().expect("piped stderr"))
}

fn wait_line(lines: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(_) => panic!("no stderr line containing {needle:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reloads_plugins_on_sighup_and_keeps_them_when_a_reload_fails() {
    let emulator = emulator(|_| {}).await;
    let echo = echo_server().await;
    let files = AwsFiles::new("AKIDRUN");
    let port = free_port();
    let plugin = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../runtime/tests/plugins/hostile-policy.wasm"
    );
    let policy_text = |mode: &str| {
        format!(
            "{}\n[tunnel.reconnect]\nplugin = \"{plugin}\"\nconfig = {{ mode = \"{mode}\" }}\n",
            echo_tunnel(&emulator.endpoint_url(), echo, port)
        )
    };
    let policy = files.dir.path().join("tunnels.toml");
    std::fs::write(&policy, policy_text("ok")).expect("policy");
    let mut child = ssm_tether()
        .arg("run")
        .arg(&policy)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    let lines = stderr_lines(&mut child);
    let lines = tokio::task::spawn_blocking(move || {
        wait_line(&lines, "listening");
        lines
    })
    .await
    .expect("join");

    signal(&child, "HUP");
    let lines = tokio::task::spawn_blocking(move || {
        wait_line(&lines, "plugins reloaded");
        lines
    })
    .await
    .expect("join");

    // A broken edit is noticed by itself and changes nothing.
    std::fs::write(&policy, policy_text("reject")).expect("policy");
    let (lines, failed) = tokio::task::spawn_blocking(move || {
        let line = wait_line(&lines, "reload failed");
        (lines, line)
    })
    .await
    .expect("join");
    assert!(failed.contains("rejected on purpose"), "{failed}");

    let local = format!("127.0.0.1:{port}").parse().expect("addr");
    let (sent, received) = support::echo_through(local, 6, 100_000).await;
    assert_eq!(sent, received, "the tunnel is untouched by reloads");
    // The log reader goes away (as when a supervisor's pipe closes): shutdown must still be
    // clean, not a panic on the first failed write.
    drop(lines);

    signal(&child, "TERM");
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("waits");
    assert_eq!(exit.code(), Some(0), "exit status of run after SIGTERM");
}

/// `ssm-tether run` of one echo tunnel whose SSM API goes through a proxy the test can
/// freeze; returns the child, the local address, the freeze flag and the session id, once
/// bytes flow.
async fn run_behind_a_freezable_api(
    emulator: &ssm_emulator::Emulator,
    files: &AwsFiles,
) -> (
    std::process::Child,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    String,
) {
    let (endpoint, frozen) = support::freezable_api_proxy(emulator.endpoint_url()).await;
    let echo = echo_server().await;
    let port = free_port();
    let policy = files.dir.path().join("tunnels.toml");
    std::fs::write(&policy, echo_tunnel(&endpoint, echo, port)).expect("policy");
    let child = ssm_tether()
        .arg("run")
        .arg(&policy)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    let local = format!("127.0.0.1:{port}").parse().expect("addr");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(local).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (sent, received) = support::echo_through(local, 6, 50_000).await;
    assert_eq!(sent, received, "bytes through `ssm-tether run`");
    let session_id = emulator.faults().sessions()[0].session_id.clone();
    (child, frozen, session_id)
}

fn terminate_calls(emulator: &ssm_emulator::Emulator) -> usize {
    emulator
        .events()
        .snapshot()
        .iter()
        .filter(|r| {
            matches!(&r.event, Event::Api { operation, error: None, .. } if operation == "TerminateSession")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_api_at_shutdown_still_gets_every_session_terminated() {
    let emulator = emulator(|_| {}).await;
    let files = AwsFiles::new("AKIDSLOW");
    let (child, frozen, _) = run_behind_a_freezable_api(&emulator, &files).await;
    // The API answers nothing for 12 s, as slow SSO or credential_process loading would
    // make it (longer than the 10 s the budget used to be).
    frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    signal(&child, "TERM");
    tokio::time::sleep(Duration::from_secs(12)).await;
    frozen.store(false, std::sync::atomic::Ordering::SeqCst);
    let exit = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("waits");
    let stderr = String::from_utf8_lossy(&exit.stderr);
    assert_eq!(exit.status.code(), Some(0), "{stderr}");
    assert_eq!(terminate_calls(&emulator), 1, "{stderr}");
    assert!(!stderr.contains("may remain"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_and_names_the_sessions_that_may_remain() {
    let emulator = emulator(|_| {}).await;
    let files = AwsFiles::new("AKIDTWICE");
    let (mut child, frozen, session_id) = run_behind_a_freezable_api(&emulator, &files).await;
    let lines = stderr_lines(&mut child);
    frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    signal(&child, "INT");
    // Shutdown is waiting for the API (up to its budget, a minute); the user insists.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "still shutting down"
    );
    let asked = std::time::Instant::now();
    signal(&child, "INT");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("waits");
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    frozen.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(status.code(), Some(1));
    let said: Vec<String> = lines.try_iter().collect();
    let line = said
        .iter()
        .find(|l| l.contains("SIGINT again"))
        .unwrap_or_else(|| panic!("no line about the second signal: {said:?}"));
    assert!(line.contains(&session_id), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_at_trace_level_logs_no_token_credential_or_signature() {
    trace_log_has_no_secret(&[]).await;
}

/// JSON lines carry the same fields as text lines, escaped differently: the same scan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_at_trace_level_have_no_token_credential_or_signature() {
    let log = trace_log_has_no_secret(&["--log-format", "json"]).await;
    for line in &log {
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
        assert!(
            parsed.is_ok_and(|v| v.is_object()),
            "not a JSON object: {line}"
        );
    }
}

/// Runs a tunnel at `RUST_LOG=trace` through traffic and a recycle, with a session token and
/// proxy passwords in play, and checks that the log names none of them; returns the log.
async fn trace_log_has_no_secret(global: &[&str]) -> Vec<String> {
    const SECRET: &str = "SECRETKEY-trace-scan";
    const SESSION_TOKEN: &str = "SESSIONTOKEN-trace-scan";
    const PROXY_PASSWORD: &str = "PROXYPASSWORD-trace-scan";
    let emulator = emulator(|_| {}).await;
    let echo = echo_server().await;
    let files = AwsFiles::new("AKIDTRACE");
    std::fs::write(
        files.credentials(),
        format!(
            "[test]\naws_access_key_id = AKIDTRACE\naws_secret_access_key = {SECRET}\n\
             aws_session_token = {SESSION_TOKEN}\n"
        ),
    )
    .expect("credentials");
    let port = free_port();
    let policy = files.dir.path().join("tunnels.toml");
    // A proxy with a password, which NO_PROXY leaves unused for the emulator on loopback.
    let with_proxy = echo_tunnel(&emulator.endpoint_url(), echo, port).replacen(
        "[defaults]\n",
        &format!("[defaults]\nproxy = \"http://alice:{PROXY_PASSWORD}@proxy.invalid:3128\"\n"),
        1,
    );
    std::fs::write(&policy, with_proxy).expect("policy");
    let mut child = ssm_tether()
        .args(global)
        .arg("run")
        .arg(&policy)
        .env("RUST_LOG", "trace")
        .env("NO_PROXY", "127.0.0.1")
        .env(
            "HTTPS_PROXY",
            format!("http://bob:{PROXY_PASSWORD}@proxy.invalid:3128"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    // Read as it comes: a full pipe would block the logging tunnel.
    let lines = stderr_lines(&mut child);
    let local = format!("127.0.0.1:{port}").parse().expect("addr");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(local).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (sent, received) = support::echo_through(local, 8, 100_000).await;
    assert_eq!(sent, received);
    // A recycle: ResumeSession's answer (a new token) and a new signed upgrade.
    emulator
        .faults()
        .recycle(None, ssm_emulator::faults::SideSelection::Both)
        .await
        .expect("recycle");
    let (sent, received) = support::echo_through(local, 9, 100_000).await;
    assert_eq!(sent, received);
    signal(&child, "TERM");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("waits");
    assert_eq!(status.code(), Some(0));
    let log: Vec<String> = lines.iter().collect();
    assert!(log.len() > 50, "a trace-level log: {log:?}");
    for secret in [
        SECRET,
        SESSION_TOKEN,
        PROXY_PASSWORD,
        "TokenValue",
        "Signature=",
        "X-Amz-Signature",
        "x-amz-security-token",
        "X-Amz-Security-Token",
        "cell-number=",
    ] {
        let leaked: Vec<&String> = log.iter().filter(|l| l.contains(secret)).collect();
        assert!(leaked.is_empty(), "{secret} in the log: {leaked:?}");
    }
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_reader_that_stops_reading_does_not_stall_the_tunnel() {
    let emulator = emulator(|_| {}).await;
    let echo = echo_server().await;
    let files = AwsFiles::new("AKIDSTUCK");
    let port = free_port();
    let policy = files.dir.path().join("tunnels.toml");
    std::fs::write(&policy, echo_tunnel(&emulator.endpoint_url(), echo, port)).expect("policy");
    // stderr is a pipe nobody reads: at trace level it is full within moments.
    let mut child = ssm_tether()
        .arg("run")
        .arg(&policy)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    let local = format!("127.0.0.1:{port}").parse().expect("addr");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(local).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let moved = tokio::time::timeout(
        Duration::from_secs(30),
        support::echo_through(local, 10, 2_000_000),
    )
    .await;
    let (sent, received) = moved.expect("bytes still flow while the log is stuck");
    assert_eq!(sent, received);
    signal(&child, "TERM");
    // Let it write what it can now, so that it can end.
    let stderr = child.stderr.take().expect("piped");
    std::thread::spawn(move || std::io::copy(&mut { stderr }, &mut std::io::sink()));
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("waits");
    assert_eq!(status.code(), Some(0));
}
