//! Shell sessions through the drop-in, driven through a pseudo-terminal as a person would,
//! against `ssm-tether emulator`'s shell agent (a real `/bin/sh` on a pty): typing commands
//! and reading their output, resizing, Ctrl-C, a command across many recycles with stale
//! cells, the exit code of a non-interactive command, KMS encryption and its refusal, with
//! `ssm-tether session-manager-plugin` directly and with the AWS CLI in front — and the
//! terminal restored after every way of ending.

mod child;
mod drop_in;
mod pty;
#[path = "../runtime/tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use child::{Emulator, Process, get_json};
use drop_in::{
    SECRET_KEY, TARGET, Workspace, active_sessions, assert_no_secret, aws_cli, wait_until,
};
use pty::Pty;
use ssm_tether_e2e::ssm_tether;

/// How long the screen may take to show what a test waits for.
const SHOWS: Duration = Duration::from_secs(20);
const PROMPT: &str = "tether$ ";

/// `ssm-tether emulator ARGS` with a recognisable prompt and a short wait before the
/// shell's first read.
fn emulator(args: &[&str]) -> Emulator {
    let mut child = ssm_tether()
        .arg("emulator")
        .args(["--pacing", "0", "--shell-first-read-delay", "50ms"])
        .args(args)
        .env("PS1", PROMPT)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the emulator starts");
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the ready line");
    let ready: serde_json::Value = serde_json::from_str(&line).expect("ready JSON");
    let url = |key: &str| ready[key].as_str().expect("a URL").to_owned();
    Emulator {
        endpoint: url("endpoint_url"),
        admin: url("admin_url"),
        process: Process(child),
    }
}

/// A session started the way the AWS CLI starts it, and the plugin command that takes it
/// over (as the CLI runs it).
async fn plugin_command(
    emulator: &Emulator,
    document: &str,
    parameters: &[(&str, &str)],
) -> (Command, String) {
    let files = support::AwsFiles::new("AKIDSHELL");
    let parameters: BTreeMap<String, Vec<String>> = parameters
        .iter()
        .map(|(k, v)| ((*k).to_owned(), vec![(*v).to_owned()]))
        .collect();
    let grant = files
        .api(emulator.endpoint.clone())
        .start_session(TARGET, document, &parameters, None)
        .await
        .expect("a session");
    let response = serde_json::json!({
        "SessionId": grant.session_id,
        "TokenValue": grant.token_value,
        "StreamUrl": grant.stream_url,
    })
    .to_string();
    let request = serde_json::json!({
        "Target": TARGET,
        "DocumentName": document,
        "Parameters": parameters,
    })
    .to_string();
    let mut command = ssm_tether();
    command
        .args(["session-manager-plugin", "AWS_SSM_START_SESSION_RESPONSE"])
        .args([
            "us-east-1",
            "StartSession",
            "",
            &request,
            &emulator.endpoint,
        ])
        .env("AWS_SSM_START_SESSION_RESPONSE", response)
        .env("AWS_ACCESS_KEY_ID", "AKIDSHELL")
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_ENDPOINT_URL_KMS", &emulator.endpoint)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE");
    (command, grant.session_id)
}

fn recycles(emulator: &Emulator) -> u64 {
    get_json(&format!("{}/counters", emulator.admin))["fault.recycle"]
        .as_u64()
        .unwrap_or(0)
}

/// Types `exit` and checks the plugin ends with 0 and leaves the terminal as it found it.
fn exit_cleanly(pty: &mut Pty) {
    pty.type_in(b"exit\r");
    let status = pty.child.wait().expect("the plugin ends");
    pty.drain(Duration::from_millis(200));
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&pty.seen)
    );
    assert!(pty.is_cooked(), "the terminal was left in raw mode");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_runs_commands_resizes_takes_ctrl_c_and_restores_the_terminal() {
    let emulator = emulator(&[]);
    let (mut command, session_id) =
        plugin_command(&emulator, "SSM-SessionManagerRunShell", &[]).await;
    let mut pty = tokio::task::spawn_blocking(move || {
        let mut pty = Pty::spawn(&mut command, 80, 24);
        let at = pty.wait_for(0, PROMPT, SHOWS);
        // Echo comes from the remote terminal: typed once, shown once.
        pty.type_in(b"echo hello-$((6*7))\r");
        let at = pty.wait_for(at, "hello-42", SHOWS);
        assert!(!pty.is_cooked(), "raw mode while the shell runs");
        pty.type_in(b"stty size\r");
        let at = pty.wait_for(at, "24 80", SHOWS);
        pty.resize(100, 30);
        std::thread::sleep(Duration::from_millis(300));
        pty.type_in(b"stty size\r");
        let at = pty.wait_for(at, "30 100", SHOWS);
        // Ctrl-C reaches the remote terminal: the sleep ends, the shell stays.
        pty.type_in(b"sleep 30\r");
        std::thread::sleep(Duration::from_millis(500));
        let started = std::time::Instant::now();
        pty.type_in(b"\x03");
        pty.type_in(b"echo still-$((1+1))\r");
        pty.wait_for(at, "still-2", SHOWS);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "Ctrl-C did not stop sleep"
        );
        exit_cleanly(&mut pty);
        pty
    })
    .await
    .expect("the shell");
    let screen = String::from_utf8_lossy(&pty.seen).into_owned();
    assert!(
        screen.contains(&format!("Exiting session with sessionId: {session_id}")),
        "{screen}"
    );
    wait_until("the session ended", Duration::from_secs(10), || {
        active_sessions(&emulator).is_empty()
    })
    .await;
    let _ = &mut pty;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_keeps_running_through_ten_recycles_with_stale_cells() {
    let emulator = emulator(&[
        "--recycle-every",
        "400ms",
        "--recycle-skew",
        "100ms",
        "--stale-cell",
    ]);
    let (mut command, _) = plugin_command(&emulator, "SSM-SessionManagerRunShell", &[]).await;
    let before = recycles(&emulator);
    tokio::task::spawn_blocking(move || {
        let mut pty = Pty::spawn(&mut command, 80, 24);
        let at = pty.wait_for(0, PROMPT, SHOWS);
        // About six seconds of output, a line every 100 ms.
        pty.type_in(b"i=0; while [ $i -lt 60 ]; do i=$((i+1)); echo line-$i-of-60; sleep 0.1; done; echo all-$((1+1))-done\r");
        let end = pty.wait_for(at, "all-2-done\r\n", Duration::from_secs(60));
        let screen = String::from_utf8_lossy(&pty.seen[at..end]).into_owned();
        for i in 1..=60 {
            assert!(screen.contains(&format!("line-{i}-of-60\r\n")), "line {i} lost: {screen}");
        }
        exit_cleanly(&mut pty);
    })
    .await
    .expect("the command");
    let during = recycles(&emulator) - before;
    assert!(during >= 10, "only {during} recycles");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_interactive_command_gives_its_output_streams_and_exit_code() {
    let emulator = emulator(&[]);
    let (mut command, _) = plugin_command(
        &emulator,
        "AWS-StartNonInteractiveCommand",
        &[
            (
                "command",
                "sh -c 'echo to-stdout; echo to-stderr >&2; exit 3'",
            ),
            ("separateOutputStream", "true"),
        ],
    )
    .await;
    let output = tokio::task::spawn_blocking(move || {
        command
            .stdin(Stdio::null())
            .output()
            .expect("the plugin runs")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stdout} / {stderr}");
    assert!(stdout.contains("to-stdout"), "{stdout}");
    assert!(!stdout.contains("to-stderr"), "{stdout}");
    assert!(stderr.contains("to-stderr"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_input_runs_and_its_output_arrives_before_the_session_ends() {
    let emulator = emulator(&[]);
    let (mut command, _) = plugin_command(&emulator, "SSM-SessionManagerRunShell", &[]).await;
    let output = tokio::task::spawn_blocking(move || {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the plugin runs");
        let mut stdin = child.stdin.take().expect("piped");
        std::io::Write::write_all(&mut stdin, b"echo piped-$((20+3))\n").expect("write");
        drop(stdin);
        child.wait_with_output().expect("ends")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout} / {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("piped-23"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kms_encrypted_shell_works_and_says_so() {
    let emulator = emulator(&["--kms"]);
    let (mut command, _) = plugin_command(&emulator, "SSM-SessionManagerRunShell", &[]).await;
    command.env("RUST_LOG", "trace");
    let screen = tokio::task::spawn_blocking(move || {
        let mut pty = Pty::spawn(&mut command, 80, 24);
        let at = pty.wait_for(0, "This session is encrypted using AWS KMS.", SHOWS);
        let at = pty.wait_for(at, PROMPT, SHOWS);
        pty.type_in(b"echo secret-$((40+2))\r");
        pty.wait_for(at, "secret-42", SHOWS);
        exit_cleanly(&mut pty);
        String::from_utf8_lossy(&pty.seen).into_owned()
    })
    .await
    .expect("the shell");
    let lines: Vec<String> = screen.lines().map(str::to_owned).collect();
    assert_no_secret(&lines);
    assert!(!screen.contains("Plaintext"), "a data key in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kms_key_that_is_refused_is_one_line_and_exit_1() {
    let emulator = emulator(&["--kms", "--kms-deny", "generate-data-key"]);
    let (mut command, _) = plugin_command(&emulator, "SSM-SessionManagerRunShell", &[]).await;
    let output = tokio::task::spawn_blocking(move || {
        command
            .stdin(Stdio::null())
            .output()
            .expect("the plugin runs")
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("Starting session"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("KMS"), "{stderr}");
    wait_until("the session ended", Duration::from_secs(10), || {
        active_sessions(&emulator).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_shell_and_restores_the_terminal() {
    let emulator = emulator(&[]);
    let (mut command, _) = plugin_command(&emulator, "SSM-SessionManagerRunShell", &[]).await;
    tokio::task::spawn_blocking(move || {
        let mut pty = Pty::spawn(&mut command, 80, 24);
        pty.wait_for(0, PROMPT, SHOWS);
        assert!(!pty.is_cooked());
        let status = Command::new("kill")
            .args(["-TERM", &pty.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let status = pty.child.wait().expect("ends");
        assert_eq!(status.code(), Some(0));
        assert!(pty.is_cooked(), "the terminal was left in raw mode");
    })
    .await
    .expect("the shell");
    wait_until("the session terminated", Duration::from_secs(10), || {
        active_sessions(&emulator).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_start_session_opens_a_shell_through_the_drop_in() {
    let Some(aws) = aws_cli() else { return };
    let emulator = emulator(&["--recycle-every", "1s", "--stale-cell"]);
    let workspace = Workspace::new();
    let mut command = workspace.aws(&aws, &emulator);
    command
        .args(["--target", TARGET])
        .env("AWS_ENDPOINT_URL_KMS", &emulator.endpoint);
    tokio::task::spawn_blocking(move || {
        let mut pty = Pty::spawn(&mut command, 80, 24);
        let at = pty.wait_for(0, PROMPT, Duration::from_secs(60));
        pty.type_in(b"sleep 2; echo through-$((3*3))-recycles\r");
        pty.wait_for(at, "through-9-recycles", SHOWS);
        exit_cleanly(&mut pty);
    })
    .await
    .expect("the shell");
    wait_until("the session ended", Duration::from_secs(10), || {
        active_sessions(&emulator).is_empty()
    })
    .await;
}
