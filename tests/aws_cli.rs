//! The unmodified AWS CLI (`aws ssm start-session`, installed from PyPI by
//! `tests/tools/install-awscli.sh`) with ssm-tether linked as its `session-manager-plugin`,
//! against `ssm-tether emulator`: port forwarding through recycles with skew and stale cells,
//! a service-side termination (a new session, the same listener), a clean Ctrl-C, and one
//! clear line for everything it cannot do.

mod child;
mod drop_in;
#[path = "../runtime/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use child::{Process, collect_lines, emulator, free_port, http_json};
use drop_in::{
    SECRET_KEY, TARGET, Workspace, active_sessions, assert_no_secret, aws_cli, signal_group,
    wait_until,
};
use ssm_tether_e2e::ssm_tether;

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
    assert_no_secret(&stderr);
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
async fn a_session_that_is_not_what_the_request_says_is_one_line_and_is_terminated() {
    let emulator = emulator(&["--pacing", "0"]);
    // A Port session, handed over with a request that says it is the default document (a
    // shell): the agent's handshake contradicts the request.
    let files = support::AwsFiles::new("AKIDSHELL");
    let parameters =
        std::collections::BTreeMap::from([("portNumber".to_owned(), vec!["22".to_owned()])]);
    let grant = files
        .api(emulator.endpoint.clone())
        .start_session(TARGET, "AWS-StartSSHSession", &parameters, None)
        .await
        .expect("a session");
    let response = serde_json::json!({
        "SessionId": grant.session_id,
        "TokenValue": grant.token_value,
        "StreamUrl": grant.stream_url,
    })
    .to_string();
    let request = serde_json::json!({ "Target": TARGET }).to_string();
    let workspace = Workspace::new();
    let args = [
        "AWS_SSM_START_SESSION_RESPONSE",
        "us-east-1",
        "StartSession",
        "",
        &request,
        &emulator.endpoint,
    ];
    let env = [
        ("AWS_SSM_START_SESSION_RESPONSE", response.as_str()),
        ("AWS_ACCESS_KEY_ID", "AKIDSHELL"),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
    ];
    let output = plugin(&workspace, &args, &env);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the document starts a Port session, not a shell or command"),
        "{stderr}"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("Starting session"))
        .collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(!stderr.contains(&grant.token_value), "{stderr}");
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
