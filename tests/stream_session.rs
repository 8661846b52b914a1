//! Sessions over stdin/stdout, driven as users drive them, against `ssm-tether emulator`
//! with recycles every 1.5 s, skew and stale cells:
//!
//! * `aws ssm start-session --document-name AWS-StartSSHSession` (the unmodified AWS CLI
//!   from PyPI) with ssm-tether as its `session-manager-plugin`;
//! * `ssm-tether ssh-proxy`, the native ProxyCommand;
//! * real OpenSSH (`ssh` with either as its ProxyCommand, an `sshd` of the test's own on
//!   loopback), where the machine has it or can install it (`tests/tools/install-openssh.sh`).
//!
//! Bytes must arrive exact through every recycle; the end of stdin, the end of the agent's
//! side and a session that is really gone each end the process as documented.

mod child;
mod drop_in;
#[path = "../runtime/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use child::{Emulator, Process, collect_lines, emulator, free_port, get_json, http_json};
use drop_in::{
    SECRET_KEY, TARGET, Workspace, active_sessions, assert_no_secret, aws_cli, installed,
    wait_until,
};
use sha2::{Digest, Sha256};
use ssm_tether_e2e::ssm_tether;

/// The emulator of every test here: planned recycles every 1.5 s with skew, stale cells.
fn recycling_emulator() -> Emulator {
    emulator(&[
        "--pacing",
        "0",
        "--recycle-every",
        "1500ms",
        "--recycle-skew",
        "300ms",
        "--stale-cell",
    ])
}

fn recycles(emulator: &Emulator) -> u64 {
    get_json(&format!("{}/counters", emulator.admin))["fault.recycle"]
        .as_u64()
        .unwrap_or(0)
}

/// At least `at_least` recycles happened since the count was `before`, and every session
/// has been terminated at the service (none was left to time out).
async fn recycled_then_terminated(emulator: &Emulator, before: u64, at_least: u64) {
    let during = recycles(emulator) - before;
    assert!(during >= at_least, "only {during} recycles");
    wait_until("every session terminated", Duration::from_secs(10), || {
        active_sessions(emulator).is_empty()
    })
    .await;
}

/// Writes `total` pseudo-random bytes to `stdin` at about `rate` bytes per second, keeps it
/// open until `release` fires (the echo is all back: the protocol has no half-close), then
/// closes it. Returns the digest of what was written.
fn feed(
    mut stdin: ChildStdin,
    seed: u64,
    total: u64,
    rate: u64,
    release: mpsc::Receiver<()>,
) -> std::thread::JoinHandle<[u8; 32]> {
    std::thread::spawn(move || {
        let mut hash = Sha256::new();
        let chunk = (rate / 20).max(1) as usize;
        let mut buf = vec![0u8; chunk];
        let started = Instant::now();
        let mut at = 0u64;
        while at < total {
            let n = (total - at).min(chunk as u64) as usize;
            support::pattern(seed, at, &mut buf[..n]);
            stdin.write_all(&buf[..n]).expect("write to stdin");
            hash.update(&buf[..n]);
            at += n as u64;
            let due = Duration::from_secs_f64(at as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let _ = release.recv_timeout(Duration::from_secs(60));
        drop(stdin);
        hash.finalize().into()
    })
}

/// Reads `stdout` to its end; once `total` bytes are in, fires `release`. Returns the
/// digest and the count.
fn drain(
    mut stdout: impl Read + Send + 'static,
    total: u64,
    release: mpsc::Sender<()>,
) -> std::thread::JoinHandle<([u8; 32], u64)> {
    std::thread::spawn(move || {
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0u64;
        loop {
            let n = match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            hash.update(&buf[..n]);
            got += n as u64;
            if got >= total {
                let _ = release.send(());
            }
        }
        (hash.finalize().into(), got)
    })
}

/// Streams `total` bytes through a child's stdin/stdout and checks they come back exact.
fn stream_through(stdin: ChildStdin, stdout: ChildStdout, seed: u64, total: u64, rate: u64) {
    let (release_tx, release_rx) = mpsc::channel();
    let writer = feed(stdin, seed, total, rate, release_rx);
    let reader = drain(stdout, total, release_tx);
    let sent = writer.join().expect("writer");
    let (received, count) = reader.join().expect("reader");
    assert_eq!(count, total, "{count} of {total} bytes came back");
    assert_eq!(sent, received, "the bytes that came back differ");
}

/// A child with its stdin and stdout piped to the test and its stderr collected as lines.
struct Piped {
    process: Process,
    stdin: ChildStdin,
    stdout: ChildStdout,
    stderr: std::thread::JoinHandle<Vec<String>>,
}

impl Piped {
    fn spawn(command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the command runs");
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            panic!("pipes were asked for");
        };
        Self {
            process: Process(child),
            stdin,
            stdout,
            stderr: collect_lines(stderr),
        }
    }
}

/// Waits for `process` to end on its own while `stdin` stays open (nothing but the session
/// itself may end it); returns its exit code and stderr.
async fn exit_of(
    mut process: Process,
    stdin: Option<ChildStdin>,
    stderr: std::thread::JoinHandle<Vec<String>>,
) -> (Option<i32>, Vec<String>) {
    let status = tokio::task::spawn_blocking(move || {
        let _keep_stdin_open = stdin;
        process.0.wait()
    })
    .await
    .expect("join")
    .expect("the process ends");
    (status.code(), stderr.join().expect("stderr"))
}

/// `ssm-tether ssh-proxy TARGET PORT` against `emulator`, with dummy credentials.
fn ssh_proxy(emulator: &Emulator, port: u16) -> Command {
    let mut command = ssm_tether();
    command
        .args(["ssh-proxy", TARGET, &port.to_string()])
        .args([
            "--endpoint-url",
            &emulator.endpoint,
            "--region",
            "us-east-1",
        ])
        .env("AWS_ACCESS_KEY_ID", "AKIDSSHPROXY")
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE");
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_start_ssh_session_keeps_stdin_and_stdout_exact_through_recycles() {
    let Some(aws) = aws_cli() else { return };
    let echo = support::echo_server().await;
    let emulator = recycling_emulator();
    let workspace = Workspace::new();
    let mut command = workspace.aws(&aws, &emulator);
    command
        .args(["--target", TARGET, "--document-name", "AWS-StartSSHSession"])
        .args(["--parameters", &format!("portNumber={echo}")])
        // Every log line the plugin can write, to prove that none carries a secret and
        // that none reaches stdout.
        .env("RUST_LOG", "trace");
    let Piped {
        process,
        stdin,
        stdout,
        stderr,
    } = Piped::spawn(&mut command);
    let before = recycles(&emulator);
    // 2 MiB at 300 KiB/s: about seven seconds, four or five recycles.
    tokio::task::spawn_blocking(move || stream_through(stdin, stdout, 1, 2 << 20, 300 << 10))
        .await
        .expect("the stream");
    let (status, stderr) = exit_of(process, None, stderr).await;
    assert_eq!(status, Some(0), "end of stdin ends it: {stderr:?}");
    assert_no_secret(&stderr);
    recycled_then_terminated(&emulator, before, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_proxy_streams_exact_and_says_in_one_line_when_the_session_is_gone() {
    let echo = support::echo_server().await;
    let emulator = recycling_emulator();
    let Piped {
        process,
        mut stdin,
        mut stdout,
        stderr,
    } = Piped::spawn(&mut ssh_proxy(&emulator, echo));
    // Through two recycles, request by request: every answer must be exact.
    let started = Instant::now();
    let mut rounds = 0u64;
    while started.elapsed() < Duration::from_secs(4) {
        let mut out = vec![0u8; 4096];
        support::pattern(rounds, 0, &mut out);
        stdin.write_all(&out).expect("write");
        let mut back = vec![0u8; out.len()];
        stdout.read_exact(&mut back).expect("the echo");
        assert_eq!(out, back, "round {rounds}");
        rounds += 1;
    }
    // The client is away (its resumes throttled) while the service ends the session: the
    // next resume finds it gone, and the stream cannot be continued on a new session.
    http_json(
        "POST",
        &format!(
            "{}/faults/resume-fail?for=3s&code=throttling",
            emulator.admin
        ),
    );
    http_json(
        "POST",
        &format!("{}/faults/reset?side=client", emulator.admin),
    );
    std::thread::sleep(Duration::from_millis(300));
    http_json("POST", &format!("{}/faults/terminate", emulator.admin));
    let (status, stderr) = exit_of(process, Some(stdin), stderr).await;
    assert_eq!(status, Some(1), "{stderr:?}");
    assert_eq!(stderr.len(), 1, "one line: {stderr:?}");
    assert!(
        stderr[0].contains("cannot move to a new session"),
        "{stderr:?}"
    );
    assert_no_secret(&stderr);
    // Nothing but the remote's bytes ever reached stdout.
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).expect("stdout");
    assert!(rest.is_empty(), "{} stray bytes on stdout", rest.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_proxy_delivers_everything_when_the_destination_closes_and_exits_0() {
    // A destination that says its piece and hangs up (sshd after `exit`, say).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut said = vec![0u8; 300_000];
    support::pattern(9, 0, &mut said);
    let expected: [u8; 32] = Sha256::digest(&said).into();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        tokio::io::AsyncWriteExt::write_all(&mut socket, &said)
            .await
            .expect("write");
    });
    let emulator = recycling_emulator();
    let Piped {
        process,
        stdin,
        stdout,
        stderr,
    } = Piped::spawn(&mut ssh_proxy(&emulator, port));
    let (release, _unused) = mpsc::channel();
    let (received, count) = drain(stdout, u64::MAX, release).join().expect("reader");
    let (status, stderr) = exit_of(process, Some(stdin), stderr).await;
    assert_eq!(count, 300_000, "{stderr:?}");
    assert_eq!(received, expected);
    assert_eq!(status, Some(0), "{stderr:?}");
    assert!(stderr.is_empty(), "{stderr:?}");
}

/// An `sshd` of the test's own on a loopback port: its own host key, config and
/// authorized key; logs in as the user running the test.
struct Sshd {
    _process: Process,
    dir: tempfile::TempDir,
    port: u16,
    ssh: PathBuf,
}

impl Sshd {
    fn start() -> Option<Self> {
        let tools = installed("install-openssh.sh", "OpenSSH")?;
        let mut lines = tools.lines();
        let (sshd, ssh) = (lines.next()?.to_owned(), PathBuf::from(lines.next()?));
        let dir = tempfile::tempdir().expect("tempdir");
        let keygen = |name: &str| {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.path().join(name))
                .status()
                .expect("ssh-keygen runs");
            assert!(status.success());
        };
        keygen("host_key");
        keygen("user_key");
        std::fs::copy(
            dir.path().join("user_key.pub"),
            dir.path().join("authorized_keys"),
        )
        .expect("authorized_keys");
        if whoami("-u") == "0" {
            // sshd running as root needs its privilege separation directory.
            std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        }
        let port = free_port();
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("sshd_config"),
            format!(
                "ListenAddress 127.0.0.1:{port}\nHostKey {d}/host_key\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nPermitRootLogin prohibit-password\nLogLevel ERROR\n"
            ),
        )
        .expect("sshd_config");
        let process = Process(
            Command::new(&sshd)
                .args(["-D", "-e", "-f"])
                .arg(dir.path().join("sshd_config"))
                .stderr(Stdio::null())
                .spawn()
                .expect("sshd starts"),
        );
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "sshd does not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Self {
            _process: process,
            dir,
            port,
            ssh,
        })
    }

    /// `ssh` to TARGET with `proxy_command`, running `remote`.
    fn ssh(&self, proxy_command: &str, remote: &str) -> Command {
        let d = self.dir.path();
        let mut command = Command::new(&self.ssh);
        command
            .args(["-F", "/dev/null", "-T", "-p", &self.port.to_string()])
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
            .arg("-i")
            .arg(d.join("user_key"))
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                d.join("known_hosts").display()
            ))
            .args([
                "-o",
                "StrictHostKeyChecking=accept-new",
                "-o",
                "LogLevel=ERROR",
            ])
            .arg("-o")
            .arg(format!("ProxyCommand={proxy_command}"))
            .arg(format!("{}@{TARGET}", whoami("-un")))
            .arg(remote);
        command
    }
}

fn whoami(flag: &str) -> String {
    let output = Command::new("id").arg(flag).output().expect("id runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Runs `ssh … cat` with 1.5 MiB through it at 256 KiB/s (six seconds, several recycles)
/// and checks every byte; then a command's output.
fn ssh_round_trips(sshd: &Sshd, proxy_command: &str, env: &[(&str, String)]) {
    let mut command = sshd.ssh(proxy_command, "cat");
    command.envs(env.iter().map(|(k, v)| (k, v)));
    let Piped {
        mut process,
        stdin,
        stdout,
        stderr,
    } = Piped::spawn(&mut command);
    stream_through(stdin, stdout, 3, 1536 << 10, 256 << 10);
    let status = process.0.wait().expect("ssh exits");
    let stderr = stderr.join().expect("stderr");
    assert!(status.success(), "ssh failed: {stderr:?}");
    assert_no_secret(&stderr);

    let output = sshd
        .ssh(proxy_command, "echo remote says hello; exit 7")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .expect("ssh runs");
    assert_eq!(
        output.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<String> = BufReader::new(&output.stdout[..])
        .lines()
        .map_while(Result::ok)
        .collect();
    assert_eq!(lines, ["remote says hello"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_through_aws_start_session_and_through_ssh_proxy_survives_recycles() {
    let Some(sshd) = tokio::task::spawn_blocking(Sshd::start)
        .await
        .expect("join")
    else {
        return;
    };
    let emulator = recycling_emulator();
    let before = recycles(&emulator);
    let credentials = [
        ("AWS_ACCESS_KEY_ID", "AKIDOPENSSH".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ];
    let binary = ssm_tether_e2e::binary();
    let native = format!(
        "{} ssh-proxy %h %p --endpoint-url {} --region us-east-1",
        binary.display(),
        emulator.endpoint
    );
    let endpoint = emulator.endpoint.clone();
    let sshd = tokio::task::spawn_blocking(move || {
        ssh_round_trips(&sshd, &native, &credentials);
        sshd
    })
    .await
    .expect("ssh through ssh-proxy");

    if let Some(aws) = aws_cli() {
        let workspace = Workspace::new();
        let path = std::env::join_paths(std::iter::once(workspace.bin()).chain(
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
        ))
        .expect("PATH");
        let env = [
            ("AWS_ACCESS_KEY_ID", "AKIDOPENSSH".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
            ("AWS_DEFAULT_REGION", "us-east-1".to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
            (
                "AWS_CONFIG_FILE",
                workspace.dir.path().join("none").display().to_string(),
            ),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                workspace.dir.path().join("none").display().to_string(),
            ),
            ("PATH", path.to_string_lossy().into_owned()),
        ];
        // The ProxyCommand the AWS documentation gives, pointed at the emulator.
        let proxy = format!(
            "{} ssm start-session --target %h --document-name AWS-StartSSHSession \
             --parameters portNumber=%p --endpoint-url {endpoint}",
            aws.display()
        );
        tokio::task::spawn_blocking(move || ssh_round_trips(&sshd, &proxy, &env))
            .await
            .expect("ssh through the AWS CLI");
    }
    recycled_then_terminated(&emulator, before, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_terminates_the_stream_session_and_exits_0() {
    let echo = support::echo_server().await;
    let emulator = recycling_emulator();
    let Piped {
        process,
        mut stdin,
        mut stdout,
        stderr,
    } = Piped::spawn(&mut ssh_proxy(&emulator, echo));
    stdin.write_all(b"ping\n").expect("write");
    let mut back = [0u8; 5];
    stdout.read_exact(&mut back).expect("the echo");
    assert_eq!(&back, b"ping\n");
    assert_eq!(active_sessions(&emulator).len(), 1);
    let status = Command::new("kill")
        .args(["-TERM", &process.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let (status, stderr) = exit_of(process, Some(stdin), stderr).await;
    assert_eq!(status, Some(0), "{stderr:?}");
    // Terminated at the service before the process ended, not left to time out.
    assert!(active_sessions(&emulator).is_empty());
}

#[test]
fn ssh_proxy_refuses_a_cleartext_endpoint_on_another_host() {
    let output = ssm_tether()
        .args([
            "ssh-proxy",
            TARGET,
            "--endpoint-url",
            "http://10.0.0.1:4566",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--allow-insecure-endpoint"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(output.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_piped_in_before_the_end_of_input_reaches_the_destination() {
    // A destination that keeps what it receives.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let received = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut socket, &mut got).await;
        got
    });
    let emulator = recycling_emulator();
    let mut sent = vec![0u8; 200_000];
    support::pattern(11, 0, &mut sent);
    let input = sent.clone();
    let status = tokio::task::spawn_blocking(move || {
        let mut child = ssh_proxy(&emulator, port)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh-proxy runs");
        // All of it at once, and the end of input right behind it.
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(&input).expect("write");
        drop(stdin);
        let status = child.wait().expect("exits");
        (status, emulator)
    })
    .await
    .expect("join");
    let (status, emulator) = status;
    assert_eq!(status.code(), Some(0));
    // The session is over, so the agent has closed the destination connection.
    let got = tokio::time::timeout(Duration::from_secs(10), received)
        .await
        .expect("the destination was closed")
        .expect("join");
    assert_eq!(got.len(), sent.len(), "bytes lost at the end of input");
    assert!(got == sent, "bytes altered");
    drop(emulator);
}
