//! `ssm-tether run` with striping and rotation against `ssm-tether emulator`, both as child
//! processes, as a user would run them: sessions = 2 opens two sessions at the service, and
//! rotation ahead of a (compressed) maximum session duration never breaks a connection that
//! is shorter than `rotate_before`.

mod child;
#[path = "../runtime/tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use child::{Process, emulator, free_port, get_json};
use ssm_tether_e2e::ssm_tether;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_stripes_two_sessions_and_rotates_without_breaking_short_connections() {
    let echo = support::echo_server().await;
    let emulator = emulator(&[
        "--pacing",
        "0",
        "--max-session-duration",
        "6s",
        "--recycle-every",
        "2s",
        "--recycle-skew",
        "300ms",
        "--stale-cell",
    ]);
    let files = support::AwsFiles::new("AKIDE2E");
    let port = free_port();
    let policy = files.dir.path().join("tunnels.toml");
    std::fs::write(
        &policy,
        format!(
            "[defaults]\nregion = \"us-east-1\"\nprofile = \"test\"\nendpoint_url = \"{}\"\n\
             aws_config_file = \"config\"\naws_credentials_file = \"credentials\"\n\
             ping_interval = \"1s\"\npong_timeout = \"3s\"\n\n\
             [[tunnel]]\nname = \"echo\"\ntarget = \"i-0123456789abcdef0\"\nremote_port = {echo}\n\
             local = \"127.0.0.1:{port}\"\nsessions = 2\nmax_session_duration = \"6s\"\n\
             rotate_before = \"2s\"\n",
            emulator.endpoint
        ),
    )
    .expect("policy");
    let check = ssm_tether()
        .arg("check")
        .arg(&policy)
        .output()
        .expect("check");
    let checked = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{check:?}");
    assert!(
        checked.contains("2 sessions, rotated 2s before its 6s limit"),
        "{checked}"
    );
    let run = ssm_tether()
        .arg("run")
        .arg(&policy)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run starts");
    let mut run = Process(run);
    let stderr = run.0.stderr.take().expect("piped");
    let log = child::collect_lines(stderr);
    let local = format!("127.0.0.1:{port}").parse().expect("addr");
    // Wait for the listener, then two sessions at the service.
    let started = Instant::now();
    while tokio::net::TcpStream::connect(local).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "no listener");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut active = 0;
    while started.elapsed() < Duration::from_secs(30) {
        let sessions = get_json(&format!("{}/sessions", emulator.admin));
        active = sessions
            .as_array()
            .expect("a list")
            .iter()
            .filter(|s| s["state"] == "active" && s["client_connected"] == true)
            .count();
        if active >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(active >= 2, "two sessions connected at the service");
    // A new one-second echo connection every 250 ms across four session lifetimes, through
    // recycles every 2 s: none may break.
    support::assert_short_connections_survive(
        local,
        Duration::from_secs(24),
        Duration::from_millis(250),
        Duration::from_secs(1),
    )
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &run.0.id().to_string()])
        .status();
    let status = run.0.wait().expect("run exits");
    assert_eq!(status.code(), Some(0), "run exits 0 after SIGTERM");
    let lines = log.join().expect("log");
    let rotated = lines.iter().filter(|l| l.contains("rotated")).count();
    assert!(
        rotated >= 4,
        "rotations logged: {rotated}\n{}",
        lines.join("\n")
    );
    assert!(
        !lines.iter().any(|l| l.contains("restarting the session")),
        "no session was lost:\n{}",
        lines.join("\n")
    );
}
