//! The unmodified AWS CLI (`aws ssm start-session`, installed from PyPI by
//! `tests/tools/install-awscli.sh`) with ssm-tether linked as its `session-manager-plugin`,
//! against `ssm-tether emulator`: port forwarding through recycles with skew and stale cells,
//! a service-side termination (a new session, the same listener), a clean Ctrl-C, and one
//! clear line for everything it cannot do.

mod child;
#[path = "../runtime/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use child::{Emulator, Process, collect_lines, emulator, free_port, get_json, http_json};
use ssm_tether_e2e::ssm_tether;

const TARGET: &str = "i-0123456789abcdef0";
/// The secret access key the AWS CLI and the plugin get: it must never reach a log.
const SECRET_KEY: &str = "SECRET-awscli-suite";

/// The AWS CLI, installed on first use; `None` (with a loud message) where it cannot be.
fn aws_cli() -> Option<PathBuf> {
    static AWS: OnceLock<Option<PathBuf>> = OnceLock::new();
    AWS.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/install-awscli.sh");
        let output = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .expect("the install script runs");
        if !output.status.success() {
            eprintln!(
                "\n*** SKIPPED: the AWS CLI cannot be installed here ({}, exit {:?}); the \
                 AWS CLI drop-in suite did not run ***\n",
                script.display(),
                output.status.code()
            );
            return None;
        }
        let path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        Some(PathBuf::from(path))
    })
    .clone()
}

/// A scratch directory with `session-manager-plugin` linked to ssm-tether by
/// `ssm-tether install-plugin`, and an environment for the AWS CLI that reads nothing of the
/// machine's own AWS configuration.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("bin")).expect("bin");
        let install = ssm_tether()
            .arg("install-plugin")
            .arg(dir.path().join("bin"))
            .output()
            .expect("install-plugin runs");
        let said = String::from_utf8_lossy(&install.stdout);
        assert!(install.status.success(), "{install:?}");
        assert!(said.contains("linked"), "{said}");
        Self { dir }
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// `aws ARGS` with the plugin link first on PATH and dummy credentials.
    fn aws(&self, aws: &Path, emulator: &Emulator) -> Command {
        let mut command = Command::new(aws);
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![self.bin()];
        paths.extend(std::env::split_paths(&path));
        command
            .env("PATH", std::env::join_paths(paths).expect("PATH"))
            .env("AWS_ACCESS_KEY_ID", "AKIDAWSCLI")
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", self.dir.path().join("no-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.dir.path().join("no-credentials"),
            )
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .args(["ssm", "start-session", "--endpoint-url", &emulator.endpoint]);
        command
    }
}

/// Sends `signal` to the process group the child leads (as a terminal's Ctrl-C does).
fn signal_group(process: &Process, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{}", process.0.id())])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

fn active_sessions(emulator: &Emulator) -> Vec<serde_json::Value> {
    let sessions = get_json(&format!("{}/sessions", emulator.admin));
    sessions
        .as_array()
        .expect("a list")
        .iter()
        .filter(|s| s["state"] == "active")
        .cloned()
        .collect()
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_start_session_port_forwarding_survives_recycles_and_a_termination() {
    let Some(aws) = aws_cli() else { return };
    let echo = support::echo_server().await;
    let emulator = emulator(&[
        "--pacing",
        "0",
        "--recycle-every",
        "2s",
        "--recycle-skew",
        "300ms",
        "--stale-cell",
    ]);
    let workspace = Workspace::new();
    let port = free_port();
    let parameters = format!(r#"{{"portNumber":["{echo}"],"localPortNumber":["{port}"]}}"#);
    let mut command = workspace.aws(&aws, &emulator);
    command
        .args([
            "--target",
            TARGET,
            "--document-name",
            "AWS-StartPortForwardingSession",
        ])
        .args(["--parameters", &parameters])
        // Every log line the plugin can write, to prove that none carries a secret.
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut cli = Process(command.spawn().expect("aws runs"));
    let stderr = collect_lines(cli.0.stderr.take().expect("piped"));
    let mut stdout = BufReader::new(cli.0.stdout.take().expect("piped"));
    // The official plugin's lines, in its order, before the first connection.
    let mut said = Vec::new();
    while !said
        .iter()
        .any(|l: &String| l.contains("Waiting for connections..."))
    {
        let mut line = String::new();
        let n = stdout.read_line(&mut line).expect("stdout");
        assert!(n > 0, "the plugin ended early: {said:?}, stderr: {:?}", {
            signal_group(&cli, "TERM");
            let _ = cli.0.wait();
            stderr.join()
        });
        said.push(line.trim_end().to_owned());
    }
    let session_id = said
        .iter()
        .find_map(|l| l.strip_prefix("Starting session with SessionId: "))
        .expect("the Starting line")
        .to_owned();
    assert!(
        said.contains(&format!("Port {port} opened for sessionId {session_id}.")),
        "{said:?}"
    );
    let stdout = collect_lines(stdout);
    let local = format!("127.0.0.1:{port}").parse().expect("addr");

    // Long-lived and new connections through recycles every 2 s with skew and stale cells.
    let long: Vec<_> = (0..2)
        .map(|seed| {
            tokio::spawn(support::echo_for(
                local,
                seed,
                Duration::from_secs(10),
                64 * 1024,
            ))
        })
        .collect();
    support::assert_short_connections_survive(
        local,
        Duration::from_secs(9),
        Duration::from_millis(500),
        Duration::from_millis(800),
    )
    .await;
    for (i, handle) in long.into_iter().enumerate() {
        let (sent, received, bytes) = handle
            .await
            .unwrap_or_else(|_| panic!("long connection {i} broke"));
        assert_eq!(sent, received, "long connection {i}");
        assert!(bytes > 0, "long connection {i} carried bytes");
    }

    // The service ends the session: a new one is started from the CLI's request, on the
    // same local port.
    let terminated = http_json("POST", &format!("{}/faults/terminate", emulator.admin));
    assert_eq!(terminated["sessions"], 1, "{terminated}");
    wait_until("a new session", Duration::from_secs(20), || {
        active_sessions(&emulator)
            .iter()
            .any(|s| s["session_id"] != session_id.as_str() && s["client_connected"] == true)
    })
    .await;
    let (sent, received, _) = support::echo_for(local, 7, Duration::from_secs(2), 32 * 1024).await;
    assert_eq!(sent, received, "the same port carries the new session");

    // Ctrl-C: the plugin terminates its session and exits 0, and so does the CLI.
    signal_group(&cli, "INT");
    let status = cli.0.wait().expect("aws exits");
    let stderr = stderr.join().expect("stderr");
    assert_eq!(status.code(), Some(0), "stderr: {stderr:?}");
    assert!(
        stderr.iter().any(|l| l.contains("continuing on session")),
        "the restart is reported: {stderr:?}"
    );
    assert!(
        !stderr.iter().any(|l| l.contains("outdated")),
        "no outdated-plugin warning: {stderr:?}"
    );
    // Tokens (StartSession/ResumeSession responses, the OpenDataChannel frame), signatures,
    // the StreamUrl's query and the secret key stay out of even a trace-level log.
    for secret in [
        "TokenValue",
        "Signature=",
        "cell-number=",
        "X-Amz-Security-Token",
        SECRET_KEY,
    ] {
        let leaked: Vec<_> = stderr.iter().filter(|l| l.contains(secret)).collect();
        assert!(leaked.is_empty(), "{secret} in the log: {leaked:?}");
    }
    let stdout = stdout.join().expect("stdout");
    assert!(
        stdout
            .iter()
            .any(|l| l.contains("Connection accepted for session")),
        "{stdout:?}"
    );
    wait_until("every session terminated", Duration::from_secs(10), || {
        active_sessions(&emulator).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_session_kind_gets_one_line_and_is_terminated() {
    let Some(aws) = aws_cli() else { return };
    let emulator = emulator(&["--pacing", "0"]);
    let workspace = Workspace::new();
    let output = workspace
        .aws(&aws, &emulator)
        .args(["--target", TARGET, "--document-name", "AWS-StartSSHSession"])
        .args(["--parameters", "portNumber=22"])
        .stdin(Stdio::null())
        .output()
        .expect("aws runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{output:?}");
    assert!(
        stderr.contains(
            "standard-stream (stdin/stdout) sessions (AWS-StartSSHSession) are not supported yet"
        ),
        "{stderr}"
    );
    wait_until("the session terminated", Duration::from_secs(10), || {
        active_sessions(&emulator).is_empty()
    })
    .await;
}

/// `session-manager-plugin ARGS` through the link, with `env` set.
fn plugin(workspace: &Workspace, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(workspace.bin().join("session-manager-plugin"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("the plugin runs")
}

#[test]
fn the_link_speaks_the_plugin_contract() {
    let workspace = Workspace::new();
    let installed = plugin(&workspace, &[], &[]);
    assert!(installed.status.success());
    assert_eq!(
        String::from_utf8_lossy(&installed.stdout),
        "\nThe Session Manager plugin was installed successfully. Use the AWS CLI to start a session.\n\n"
    );
    let version = plugin(&workspace, &["--version"], &[]);
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(version.starts_with("1.2.1000."), "{version}");
    // The subcommand is the same contract.
    let via_subcommand = ssm_tether()
        .args(["session-manager-plugin", "--version"])
        .output()
        .expect("runs");
    assert_eq!(String::from_utf8_lossy(&via_subcommand.stdout), version);

    // A second install is a no-op; another file in the way needs --force.
    let again = ssm_tether()
        .arg("install-plugin")
        .arg(workspace.bin())
        .output()
        .expect("runs");
    assert!(String::from_utf8_lossy(&again.stdout).contains("already runs"));
    let other = tempfile::tempdir().expect("tempdir");
    std::fs::write(other.path().join("session-manager-plugin"), "#!/bin/sh\n").expect("file");
    let refused = ssm_tether()
        .arg("install-plugin")
        .arg(other.path())
        .output()
        .expect("runs");
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("pass --force"));
    let forced = ssm_tether()
        .args(["install-plugin", "--force"])
        .arg(other.path())
        .output()
        .expect("runs");
    assert!(forced.status.success(), "{forced:?}");
    assert!(other.path().join("session-manager-plugin.orig").exists());
}

#[test]
fn argument_errors_are_one_line_without_the_token() {
    const ENV_NAME: &str = "AWS_SSM_START_SESSION_RESPONSE";
    const NO_URL: &str = r#"{"SessionId":"s-1","TokenValue":"tok-SECRET"}"#;
    const NO_ID: &str = r#"{"TokenValue":"tok-SECRET","StreamUrl":"ws://127.0.0.1:9/x"}"#;
    const REQUEST: &str = r#"{"Target":"i-1","DocumentName":"AWS-StartPortForwardingSession"}"#;
    // The six arguments as the AWS CLI passes them, with `response` first.
    let call = |response: &'static str| {
        vec![
            response,
            "us-east-1",
            "StartSession",
            "",
            REQUEST,
            "http://127.0.0.1:9",
        ]
    };
    // (arguments, environment, what stderr must say)
    type Case = (
        Vec<&'static str>,
        &'static [(&'static str, &'static str)],
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (vec!["a", "b"], &[], "expected 6 arguments"),
        (
            call(ENV_NAME),
            &[],
            "names the environment variable AWS_SSM_START_SESSION_RESPONSE, which is not set",
        ),
        (
            call(ENV_NAME),
            &[(ENV_NAME, NO_URL)],
            "no string field \"StreamUrl\"",
        ),
        (
            call("{\"TokenValue\":\"tok-SECRET\""),
            &[],
            "is not a JSON object",
        ),
        (call(NO_ID), &[], "no string field \"SessionId\""),
    ];
    let workspace = Workspace::new();
    for (args, env, expected) in &cases {
        let output = plugin(&workspace, args, env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        assert!(!stderr.contains("tok-SECRET"), "{stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
}
