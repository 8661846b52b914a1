//! A laptop closing its lid, played by SIGSTOP: `run` notices on waking that it did not run
//! for a while and resumes at once, long before the pong deadline would have told it.

mod child;
#[path = "../runtime/tests/support/mod.rs"]
mod support;

use std::process::Stdio;
use std::time::Duration;

use child::{free_port, line_stream, signal};
use support::{AwsFiles, echo_server, emulator};

use ssm_tether_e2e::ssm_tether;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_stopped_past_its_pong_timeout_resumes_on_waking_and_loses_nothing() {
    // A pong timeout shorter than the stop, as the issue has it; the stop is longer than the
    // sleep threshold, so the watcher sees it whichever of the two fires first.
    nap("5s", &["did not run for"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wake_itself_resumes_the_session_long_before_its_pong_deadline() {
    // Here only the watcher can end the session within the wait: its pong deadline is a
    // minute away, so the disconnect must carry the wake as its cause.
    nap("60s", &["disconnected", "cause=wakeup"]).await;
}

/// Streams through `run` (with `pong_timeout`) while it is stopped for 7 s, waits for a log
/// line containing every one of `needles`, and checks every byte and a clean exit.
async fn nap(pong_timeout: &str, needles: &'static [&'static str]) {
    let emulator = emulator(|_| {}).await;
    let echo = echo_server().await;
    let files = AwsFiles::new("AKIDWAKE");
    let port = free_port();
    let policy = files.dir.path().join("tunnels.toml");
    std::fs::write(
        &policy,
        format!(
            "[defaults]\nregion = \"us-east-1\"\nprofile = \"test\"\nendpoint_url = \"{}\"\n\
             aws_config_file = \"config\"\naws_credentials_file = \"credentials\"\n\
             ping_interval = \"1s\"\npong_timeout = \"{pong_timeout}\"\n\n\
             [[tunnel]]\nname = \"echo\"\ntarget = \"i-0123456789abcdef0\"\n\
             remote_port = {echo}\nlocal = \"127.0.0.1:{port}\"\n",
            emulator.endpoint_url()
        ),
    )
    .expect("policy");
    let mut child = ssm_tether()
        .arg("run")
        .arg(&policy)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    let lines = line_stream(child.stderr.take().expect("piped"));
    let local = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(local).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "the listener came up");

    // One connection streams through the whole nap.
    let stream = tokio::spawn(support::echo_for(local, 7, Duration::from_secs(14), 20_000));
    tokio::time::sleep(Duration::from_secs(3)).await;
    signal(&child, "STOP");
    tokio::time::sleep(Duration::from_secs(7)).await;
    signal(&child, "CONT");

    let seen = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match lines.recv_timeout(left) {
                Ok(line) => {
                    let woke = needles.iter().all(|n| line.contains(n));
                    seen.push(line);
                    if woke {
                        return (true, seen);
                    }
                }
                Err(_) => break,
            }
        }
        (false, seen)
    })
    .await
    .expect("join");
    assert!(
        seen.0,
        "no log line with {needles:?}:\n{}",
        seen.1.join("\n")
    );

    let (sent, received, bytes) = stream.await.expect("stream");
    assert!(bytes > 0);
    assert_eq!(sent, received, "every byte came back through the nap");

    signal(&child, "TERM");
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("waits");
    assert_eq!(exit.code(), Some(0));
}
