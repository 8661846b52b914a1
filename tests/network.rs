//! The network paths of `ssm-tether run` and `check --online`, as users meet them:
//!
//! * a real HTTP proxy (tinyproxy from Debian, `tests/tools/install-tinyproxy.sh`, started by
//!   the test on loopback with its own config) between ssm-tether and the emulator, carrying
//!   both the SDK's API calls and the data channel's `CONNECT`, without and with Basic
//!   authentication (the password never in a log, even at trace level), and `NO_PROXY`
//!   sending both around it;
//! * `ssmmessages_endpoint` moving the data channel to another address that forwards to the
//!   emulator, the upgrade signed for `ssmmessages` and the host dialled;
//! * a `tag:Name=bastion` target resolved through DescribeInstanceInformation, and again
//!   after the emulator replaced the instance and the session ended;
//! * every AWS error the emulator can answer with, and name, connection and proxy failures,
//!   each one line with its remedy in `check --online` and in `run`'s log.

mod child;
mod drop_in;
#[path = "../runtime/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use child::{Process, free_port};
use drop_in::installed;
use ssm_emulator::api_faults::ApiFailCode;
use ssm_emulator::instances::{InstanceSettings, PingStatus};
use ssm_tether_e2e::ssm_tether;
use support::{AwsFiles, echo_server, emulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TARGET: &str = "i-0123456789abcdef0";
/// The proxy password of the authenticated suite: it must never reach a log.
const PROXY_PASSWORD: &str = "Pr0xy-S3cret-network";

/// Every variable a proxy setting can come from: cleared for every child, so that the
/// machine's own proxy settings cannot change what a test sees.
const PROXY_VARS: &[&str] = &[
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// `ssm-tether ARGS…` with no proxy variables and no AWS variables of the machine.
fn clean_command() -> Command {
    let mut command = ssm_tether();
    for var in PROXY_VARS {
        command.env_remove(var);
    }
    for var in [
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ACCESS_KEY_ID",
    ] {
        command.env_remove(var);
    }
    command.env("AWS_EC2_METADATA_DISABLED", "true");
    command
}

/// A policy with one tunnel `net` to the echo destination, the AWS files next to it, and
/// `defaults`/`tunnel` lines added to the two tables.
fn write_policy(
    files: &AwsFiles,
    endpoint_url: &str,
    target: &str,
    echo: u16,
    port: u16,
    defaults: &str,
    tunnel: &str,
) -> PathBuf {
    let policy = files.dir.path().join("tunnels.toml");
    std::fs::write(
        &policy,
        format!(
            "[defaults]\nregion = \"us-east-1\"\nprofile = \"test\"\nendpoint_url = \"{endpoint_url}\"\n\
             aws_config_file = \"config\"\naws_credentials_file = \"credentials\"\n\
             ping_interval = \"1s\"\npong_timeout = \"3s\"\n{defaults}\n\
             [defaults.recovery]\nbase_delay = \"100ms\"\nmax_delay = \"1s\"\n\n\
             [[tunnel]]\nname = \"net\"\ntarget = \"{target}\"\nremote_port = {echo}\n\
             local = \"127.0.0.1:{port}\"\n{tunnel}"
        ),
    )
    .expect("policy");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o600));
    }
    policy
}

/// A running `ssm-tether run`, its stderr collected as it comes.
struct Run {
    process: Process,
    lines: Arc<Mutex<Vec<String>>>,
    port: u16,
}

impl Run {
    fn start(mut command: Command, policy: &Path, port: u16) -> Self {
        let mut child = command
            .arg("run")
            .arg(policy)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run starts");
        let stderr = child.stderr.take().expect("piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(line);
            }
        });
        Self {
            process: Process(child),
            lines,
            port,
        }
    }

    fn log(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// Waits up to `limit` for a log line containing every one of `needles`.
    async fn wait_line(&self, needles: &[&str], limit: Duration) -> String {
        let started = Instant::now();
        loop {
            if let Some(line) = self
                .log()
                .into_iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return line;
            }
            assert!(
                started.elapsed() < limit,
                "no line with {needles:?} within {limit:?}; ssm-tether's own log lines:\n{}",
                self.log()
                    .iter()
                    .filter(|l| l.contains("ssm_tether"))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Bytes through the tunnel, exact, once its listener is up.
    async fn echo(&self, seed: u64) {
        let local = format!("127.0.0.1:{}", self.port).parse().expect("addr");
        let started = Instant::now();
        while tokio::net::TcpStream::connect(local).await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "no listener");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (sent, received) = support::echo_through(local, seed, 200_000).await;
        assert_eq!(
            sent,
            received,
            "bytes through the tunnel; the log:\n{}",
            self.log().join("\n")
        );
    }

    /// SIGTERM; the exit code and the whole log.
    async fn stop(self) -> (Option<i32>, Vec<String>) {
        let Self {
            mut process, lines, ..
        } = self;
        let pid = process.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = tokio::task::spawn_blocking(move || {
            let status = process.0.wait();
            (status, process)
        })
        .await
        .expect("join");
        // Let the reader thread take the last lines.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let log = lines.lock().expect("lines").clone();
        (status.0.ok().and_then(|s| s.code()), log)
    }
}

/// tinyproxy on loopback with a config of its own, logging every request to a file.
struct Tinyproxy {
    _process: Process,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    /// Starts tinyproxy (installing it first if needed), with Basic authentication when
    /// `auth` is given; `None` (loudly) where it cannot be installed.
    fn start(auth: Option<(&str, &str)>) -> Option<Self> {
        let binary = installed("install-tinyproxy.sh", "tinyproxy")?;
        let dir = tempfile::tempdir().expect("tempdir");
        for _ in 0..5 {
            let port = free_port();
            let log = dir.path().join("tinyproxy.log");
            let config = dir.path().join("tinyproxy.conf");
            let mut text = format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 100\nLogLevel Info\n\
                 LogFile \"{}\"\nAllow 127.0.0.1\nDisableViaHeader Yes\n",
                log.display()
            );
            if let Some((user, password)) = auth {
                text.push_str(&format!("BasicAuth {user} {password}\n"));
            }
            std::fs::write(&config, text).expect("tinyproxy config");
            let mut child = Process(
                Command::new(&binary)
                    .arg("-d")
                    .arg("-c")
                    .arg(&config)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("tinyproxy starts"),
            );
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(Self {
                        _process: child,
                        port,
                        log,
                        _dir: dir,
                    });
                }
                if let Ok(Some(_)) = child.0.try_wait() {
                    break; // the port was taken after all: another one
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.0.kill();
        }
        panic!("tinyproxy did not start");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The requests it handled (`CONNECT host:port …`, `POST http://… …`).
    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once("): ").map(|(_, request)| request.to_owned()))
            .filter(|r| r.contains(" HTTP/1."))
            .collect()
    }
}

/// The emulator's `127.0.0.1:PORT`.
fn authority(endpoint_url: &str) -> String {
    endpoint_url
        .strip_prefix("http://")
        .expect("http endpoint")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_the_data_channel_go_through_a_real_proxy() {
    let Some(proxy) = Tinyproxy::start(None) else {
        return;
    };
    let emulator = emulator(|_| {}).await;
    let echo = echo_server().await;
    let files = AwsFiles::new("AKIDPROXY");
    let port = free_port();
    let endpoint = emulator.endpoint_url();
    let policy = write_policy(&files, &endpoint, TARGET, echo, port, "", "");
    let mut command = clean_command();
    // Lowercase, as curl reads it: the emulator is http:// and ws://.
    command.env("http_proxy", proxy.url());
    let run = Run::start(command, &policy, port);
    run.echo(1).await;
    // A recycle: ResumeSession and a new data channel, through the proxy again.
    emulator
        .faults()
        .recycle(None, ssm_emulator::faults::SideSelection::Both)
        .await
        .expect("recycle");
    run.echo(2).await;
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{}", log.join("\n"));
    let requests = proxy.requests();
    let host = authority(&endpoint);
    let connects = requests
        .iter()
        .filter(|r| r.starts_with(&format!("CONNECT {host} ")))
        .count();
    assert!(
        connects >= 2,
        "two data channels through CONNECT: {requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with(&format!("POST http://{host}/ "))),
        "the SDK's calls through the proxy: {requests:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_authentication_from_the_policy_and_no_password_in_any_log() {
    let Some(proxy) = Tinyproxy::start(Some(("alice", PROXY_PASSWORD))) else {
        return;
    };
    let emulator = emulator(|_| {}).await;
    let echo = echo_server().await;
    let files = AwsFiles::new("AKIDAUTH");
    let port = free_port();
    let endpoint = emulator.endpoint_url();
    let proxy_line = format!(
        "proxy = \"http://alice:{PROXY_PASSWORD}@127.0.0.1:{}\"\n",
        proxy.port
    );
    let policy = write_policy(&files, &endpoint, TARGET, echo, port, &proxy_line, "");
    let mut command = clean_command();
    command.env("RUST_LOG", "trace");
    let run = Run::start(command, &policy, port);
    run.echo(3).await;
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{}", log.join("\n"));
    let host = authority(&endpoint);
    let requests = proxy.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with(&format!("CONNECT {host} "))),
        "{requests:?}"
    );
    assert!(log.len() > 50, "a trace-level log");
    // "alice:PASSWORD" in Basic, as the header would carry it.
    let basic = "YWxpY2U6UHIweHktUzNjcmV0LW5ldHdvcms";
    for secret in [PROXY_PASSWORD, basic] {
        let leaked: Vec<&String> = log.iter().filter(|l| l.contains(secret)).collect();
        assert!(leaked.is_empty(), "{secret} in the log: {leaked:?}");
    }

    // A wrong password, for the data channel only: the API is reached as `localhost`, which
    // NO_PROXY exempts; the StreamUrl's 127.0.0.1 goes through the proxy, which answers 407.
    let wrong = write_policy(
        &files,
        &endpoint.replace("127.0.0.1", "localhost"),
        TARGET,
        echo,
        free_port(),
        &format!(
            "proxy = \"http://alice:wrong-{PROXY_PASSWORD}@127.0.0.1:{}\"\n",
            proxy.port
        ),
        "",
    );
    let mut command = clean_command();
    command
        .env("NO_PROXY", "localhost")
        .env("RUST_LOG", "trace");
    let run = Run::start(command, &wrong, 0);
    let line = run
        .wait_line(
            &[
                "recovery attempt failed",
                "refused the credentials it was given",
            ],
            Duration::from_secs(30),
        )
        .await;
    assert!(line.contains("http://***@127.0.0.1:"), "{line}");
    assert!(
        line.contains("check user and password"),
        "the remedy: {line}"
    );
    let (_, log) = run.stop().await;
    let leaked: Vec<&String> = log.iter().filter(|l| l.contains(PROXY_PASSWORD)).collect();
    assert!(leaked.is_empty(), "the password in the log: {leaked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_sends_both_paths_around_the_proxy() {
    let Some(proxy) = Tinyproxy::start(None) else {
        return;
    };
    let emulator = emulator(|_| {}).await;
    let echo = echo_server().await;
    let files = AwsFiles::new("AKIDNOPROXY");
    let port = free_port();
    let policy = write_policy(&files, &emulator.endpoint_url(), TARGET, echo, port, "", "");
    let mut command = clean_command();
    command
        .env("HTTPS_PROXY", proxy.url())
        .env("HTTP_PROXY", proxy.url())
        .env("NO_PROXY", "example.com,127.0.0.0/8");
    let run = Run::start(command, &policy, port);
    run.echo(4).await;
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{}", log.join("\n"));
    assert_eq!(
        proxy.requests(),
        Vec::<String>::new(),
        "nothing went through the proxy"
    );
}

/// A TCP forwarder on `bind` to `upstream` that records the request head of every
/// connection.
async fn forwarder(bind: &str, upstream: String) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind(bind).await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match client.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                seen.lock()
                    .expect("heads")
                    .push(String::from_utf8_lossy(&head).into_owned());
                let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                if server.write_all(&head).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    (port, heads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssmmessages_endpoint_dials_the_data_channel_there() {
    let emulator = emulator(|_| {}).await;
    let echo = echo_server().await;
    let files = AwsFiles::new("AKIDVPCE");
    let port = free_port();
    let endpoint = emulator.endpoint_url();
    // A second loopback address where the system has one (Linux), else another port.
    let bind = if tokio::net::TcpListener::bind("127.0.0.2:0").await.is_ok() {
        "127.0.0.2:0"
    } else {
        "127.0.0.1:0"
    };
    let (fwd_port, heads) = forwarder(bind, authority(&endpoint)).await;
    let fwd_host = bind.trim_end_matches(":0");
    let policy = write_policy(
        &files,
        &endpoint,
        TARGET,
        echo,
        port,
        &format!("ssmmessages_endpoint = \"ws://{fwd_host}:{fwd_port}\"\n"),
        "",
    );
    let run = Run::start(clean_command(), &policy, port);
    run.echo(5).await;
    emulator
        .faults()
        .recycle(None, ssm_emulator::faults::SideSelection::Both)
        .await
        .expect("recycle");
    run.echo(6).await;
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{}", log.join("\n"));
    let heads = heads.lock().expect("heads").clone();
    assert!(
        heads.len() >= 2,
        "both data channels went to the endpoint: {heads:?}"
    );
    for head in &heads {
        assert!(head.starts_with("GET /v1/data-channel/"), "{head}");
        let lower = head.to_ascii_lowercase();
        assert!(
            lower.contains(&format!("host: {fwd_host}:{fwd_port}\r\n")),
            "signed for the host dialled: {head}"
        );
        assert!(
            head.contains("/us-east-1/ssmmessages/aws4_request"),
            "signed for ssmmessages in the region: {head}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_target_is_resolved_again_after_its_instance_is_replaced() {
    let emulator = emulator(|config| {
        config.instances = vec![
            InstanceSettings::online("i-0bbb0000000000000", &[("Name", "bastion")]),
            InstanceSettings::online("i-0aaa0000000000000", &[("Name", "bastion")]),
            InstanceSettings::online("i-0000000000000web0", &[("Name", "web")]),
        ];
    })
    .await;
    let echo = echo_server().await;
    let files = AwsFiles::new("AKIDTAG");
    let port = free_port();
    let policy = write_policy(
        &files,
        &emulator.endpoint_url(),
        "tag:Name=bastion",
        echo,
        port,
        "",
        "",
    );
    let run = Run::start(clean_command(), &policy, port);
    run.echo(7).await;
    let line = run
        .wait_line(
            &["target resolved", "i-0aaa0000000000000"],
            Duration::from_secs(10),
        )
        .await;
    assert!(line.contains("matched=2"), "how many matched: {line}");
    let targets = |emulator: &ssm_emulator::Emulator| -> Vec<String> {
        emulator
            .faults()
            .sessions()
            .into_iter()
            .filter(|s| s.state == "active")
            .map(|s| s.target)
            .collect()
    };
    assert_eq!(targets(&emulator), ["i-0aaa0000000000000"]);

    // The Auto Scaling group replaces the bastion; the old one's session ends.
    let new_id = emulator
        .faults()
        .replace_instance("i-0aaa0000000000000")
        .expect("replaced");
    emulator.faults().terminate(None).await.expect("terminate");
    let expected = std::cmp::min(new_id.clone(), "i-0bbb0000000000000".to_owned());
    let started = Instant::now();
    while targets(&emulator) != [expected.clone()] {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the restart went to {:?}, not {expected}; the log:\n{}",
            targets(&emulator),
            run.log().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    run.echo(8).await;
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{}", log.join("\n"));
    let resolved = log.iter().filter(|l| l.contains("target resolved")).count();
    assert_eq!(
        resolved, 2,
        "one lookup per StartSession, none per resume: {log:?}"
    );
}

/// `check --online` on `policy`: (exit code, stdout).
fn check_online(command: Command, policy: &Path) -> (Option<i32>, String) {
    let mut command = command;
    let out = command
        .args(["check", "--online"])
        .arg(policy)
        .output()
        .expect("check runs");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The line about `what` (`credentials`, `target`, `document`) of a `check --online` run.
fn line_about<'a>(output: &'a str, what: &str) -> &'a str {
    output
        .lines()
        .find(|l| l.contains(&format!(": {what}: ")))
        .unwrap_or_else(|| panic!("no {what} line in:\n{output}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_proves_credentials_target_and_document() {
    let emulator = emulator(|config| {
        config.instances = vec![InstanceSettings::online(TARGET, &[("Name", "bastion")])];
    })
    .await;
    let files = AwsFiles::new("AKIDCHECK");
    let policy = write_policy(
        &files,
        &emulator.endpoint_url(),
        TARGET,
        1,
        free_port(),
        "",
        "",
    );
    let (code, output) = tokio::task::spawn_blocking({
        let policy = policy.clone();
        move || check_online(clean_command(), &policy)
    })
    .await
    .expect("join");
    assert_eq!(code, Some(0), "{output}");
    assert!(
        line_about(&output, "credentials").starts_with("ok "),
        "{output}"
    );
    assert!(
        line_about(&output, "target").contains(&format!("{TARGET} is online")),
        "{output}"
    );
    assert!(
        line_about(&output, "document").contains("AWS-StartPortForwardingSession (Session"),
        "{output}"
    );
    assert!(output.contains("every tunnel's credentials, target and document work"));

    let tagged = write_policy(
        &files,
        &emulator.endpoint_url(),
        "tag:Name=bastion",
        1,
        free_port(),
        "",
        "",
    );
    let (code, output) =
        tokio::task::spawn_blocking(move || check_online(clean_command(), &tagged))
            .await
            .expect("join");
    assert_eq!(code, Some(0), "{output}");
    assert!(
        line_about(&output, "target").contains(&format!("tag:Name=bastion is {TARGET}")),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_explains_each_failure_in_one_line() {
    let emulator = emulator(|config| {
        config.instances = vec![InstanceSettings::online(TARGET, &[("Name", "bastion")])];
    })
    .await;
    let files = AwsFiles::new("AKIDERRORS");
    let endpoint = emulator.endpoint_url();
    let policy = write_policy(&files, &endpoint, TARGET, 1, free_port(), "", "");
    let tagged = files.dir.path().join("tagged.toml");
    std::fs::write(
        &tagged,
        std::fs::read_to_string(&policy)
            .expect("policy")
            .replace(TARGET, "tag:Name=bastion"),
    )
    .expect("tagged policy");
    let check = |policy: PathBuf| async move {
        tokio::task::spawn_blocking(move || check_online(clean_command(), &policy))
            .await
            .expect("join")
    };
    // (operation, code, which line, the remedy's words); two failures each, so that the SDK's
    // one retry of retryable errors fails too.
    let cases: [(&str, ApiFailCode, &str, &str); 6] = [
        (
            "DescribeInstanceInformation",
            ApiFailCode::ExpiredToken,
            "target",
            "aws sso login --profile test",
        ),
        (
            "DescribeInstanceInformation",
            ApiFailCode::Throttling,
            "target",
            "backs off",
        ),
        (
            "GetDocument",
            ApiFailCode::InvalidDocument,
            "document",
            "the session document does not exist in this region",
        ),
        (
            "GetDocument",
            ApiFailCode::UnrecognizedClient,
            "document",
            "AWS does not know this access key id",
        ),
        (
            "GetDocument",
            ApiFailCode::Internal,
            "document",
            "the SSM service failed",
        ),
        (
            "DescribeInstanceInformation",
            ApiFailCode::AccessDenied,
            "target",
            "allow ssm:DescribeInstanceInformation for this assumed role",
        ),
    ];
    for (operation, code, what, remedy) in cases {
        emulator.faults().fail_api(Some(operation), code, 2);
        // An access denied lookup fails a tag target (run needs it), so use one there.
        let file = if code == ApiFailCode::AccessDenied {
            tagged.clone()
        } else {
            policy.clone()
        };
        let (exit, output) = check(file).await;
        let line = line_about(&output, what);
        assert!(line.starts_with("FAIL"), "{code:?}: {output}");
        assert!(line.contains(" — remedy: "), "{code:?}: {line}");
        assert!(line.contains(remedy), "{code:?}: {line}");
        assert_eq!(exit, Some(1), "{code:?}: {output}");
        // What the SDK's retry did not use up must not fail the next case.
        emulator.faults().clear_api_failures();
    }

    // A node whose agent is gone.
    emulator
        .faults()
        .set_ping_status(TARGET, PingStatus::ConnectionLost)
        .expect("known node");
    let (exit, output) = check(policy.clone()).await;
    let line = line_about(&output, "target");
    assert!(
        line.starts_with("FAIL")
            && line.contains("is ConnectionLost")
            && line.contains("describe-instance-information"),
        "{output}"
    );
    assert_eq!(exit, Some(1));
    let (_, output) = check(tagged.clone()).await;
    let line = line_about(&output, "target");
    assert!(
        line.contains("no online managed node has the tag Name=bastion")
            && line.contains("the target's SSM agent is not online"),
        "{output}"
    );
    emulator
        .faults()
        .set_ping_status(TARGET, PingStatus::Online)
        .expect("known node");

    // Nothing listens at the endpoint.
    let dead = write_policy(
        &files,
        &format!("http://127.0.0.1:{}", free_port()),
        TARGET,
        1,
        free_port(),
        "",
        "",
    );
    let (exit, output) = check(dead).await;
    let line = line_about(&output, "target");
    assert!(
        line.starts_with("FAIL") && line.contains("firewall"),
        "{output}"
    );
    assert_eq!(exit, Some(1));

    // An SSO profile whose cached token has expired: `aws sso login --profile sso`.
    let home = tempfile::tempdir().expect("home");
    let cache = home.path().join(".aws/sso/cache");
    std::fs::create_dir_all(&cache).expect("cache dir");
    let sha1 = Command::new("sh")
        .args(["-c", "printf corp | sha1sum | cut -d' ' -f1"])
        .output()
        .expect("sha1sum");
    let key = String::from_utf8_lossy(&sha1.stdout).trim().to_owned();
    assert_eq!(key.len(), 40, "sha1 of the session name");
    std::fs::write(
        cache.join(format!("{key}.json")),
        r#"{"accessToken":"expired-token","expiresAt":"2020-01-01T00:00:00Z","region":"us-east-1","startUrl":"https://example.awsapps.com/start"}"#,
    )
    .expect("cached token");
    std::fs::write(
        files.dir.path().join("sso-config"),
        "[profile sso]\nsso_session = corp\nsso_account_id = 123456789012\nsso_role_name = Dev\n\
         region = us-east-1\n\n[sso-session corp]\nsso_start_url = https://example.awsapps.com/start\n\
         sso_region = us-east-1\n",
    )
    .expect("sso config");
    std::fs::write(files.dir.path().join("sso-credentials"), "").expect("no credentials");
    let sso = files.dir.path().join("sso.toml");
    std::fs::write(
        &sso,
        std::fs::read_to_string(&policy)
            .expect("policy")
            .replace("profile = \"test\"", "profile = \"sso\"")
            .replace(
                "aws_config_file = \"config\"",
                "aws_config_file = \"sso-config\"",
            )
            .replace(
                "aws_credentials_file = \"credentials\"",
                "aws_credentials_file = \"sso-credentials\"",
            ),
    )
    .expect("sso policy");
    let mut command = clean_command();
    command.env("HOME", home.path());
    let (exit, output) = tokio::task::spawn_blocking(move || check_online(command, &sso))
        .await
        .expect("join");
    let line = line_about(&output, "credentials");
    assert!(
        line.starts_with("FAIL") && line.contains("aws sso login --profile sso"),
        "{output}"
    );
    assert_eq!(exit, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_logs_start_failures_with_their_remedy_and_recovers() {
    let emulator = emulator(|config| {
        config.instances = vec![InstanceSettings {
            ping_status: PingStatus::ConnectionLost,
            ..InstanceSettings::online(TARGET, &[])
        }];
    })
    .await;
    let echo = echo_server().await;
    let files = AwsFiles::new("AKIDRUNERR");
    let port = free_port();
    let policy = write_policy(&files, &emulator.endpoint_url(), TARGET, echo, port, "", "");
    let run = Run::start(clean_command(), &policy, port);
    let line = run
        .wait_line(
            &[
                "TargetNotConnected",
                "remedy: the target's SSM agent is not online",
            ],
            Duration::from_secs(20),
        )
        .await;
    assert!(!line.contains('\n'));
    emulator
        .faults()
        .fail_api(Some("StartSession"), ApiFailCode::AccessDenied, 1);
    emulator
        .faults()
        .set_ping_status(TARGET, PingStatus::Online)
        .expect("known node");
    run.wait_line(
        &[
            "AccessDeniedException",
            "remedy: allow ssm:StartSession for this assumed role",
        ],
        Duration::from_secs(20),
    )
    .await;
    run.echo(9).await;
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{}", log.join("\n"));
}
