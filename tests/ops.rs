//! Operating `ssm-tether run` as an operator, a scraper and a service manager do, against the
//! in-process emulator: `/metrics` (parsed strictly), `/healthz`, `/readyz`, `ssm-tether
//! status`, `ssm-tether reload`, and systemd's notification socket.

mod child;
mod prometheus;
#[path = "../runtime/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use child::{Process, free_port, line_stream, signal};
use ssm_emulator::faults::{ResumeFailCode, SideSelection};
use ssm_tether_e2e::ssm_tether;
use support::{AwsFiles, echo_server, emulator};

/// One echo tunnel named `echo` on `127.0.0.1:port`, with test-sized timers; `extra` is
/// appended (plugin tables of the tunnel, a `[metrics]` table).
fn policy(endpoint_url: &str, echo: u16, port: u16, extra: &str) -> String {
    format!(
        "[defaults]\nregion = \"us-east-1\"\nprofile = \"test\"\nendpoint_url = \"{endpoint_url}\"\n\
         aws_config_file = \"config\"\naws_credentials_file = \"credentials\"\n\
         ping_interval = \"500ms\"\npong_timeout = \"2s\"\n\n\
         [defaults.recovery]\nbase_delay = \"50ms\"\nmax_delay = \"1s\"\n\n\
         [[tunnel]]\nname = \"echo\"\ntarget = \"i-0123456789abcdef0\"\n\
         remote_port = {echo}\nlocal = \"127.0.0.1:{port}\"\n{extra}"
    )
}

fn metrics_table(port: u16) -> String {
    format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n")
}

/// SIGTERM, then the exit code.
async fn stop(mut process: Process) -> Option<i32> {
    signal(&process.0, "TERM");
    tokio::task::spawn_blocking(move || process.0.wait())
        .await
        .expect("join")
        .expect("waits")
        .code()
}

/// `GET path` on loopback `port`: the status code and the body.
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        socket.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        socket.read_to_end(&mut response).await.ok()?;
        let response = String::from_utf8(response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        let code = head.split(' ').nth(1)?.parse().ok()?;
        Some((code, body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `limit`.
async fn eventually<T>(
    limit: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Scrapes `/metrics` and parses it strictly.
async fn scrape(port: u16) -> prometheus::Exposition {
    let (code, body) = get(port, "/metrics").await.expect("/metrics answers");
    assert_eq!(code, 200, "{body}");
    prometheus::parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

/// `ssm-tether run --control CONTROL POLICY`; stderr is piped only when the test reads it (a
/// full pipe would cost log lines).
fn spawn_run(policy: &Path, control: &Path, envs: &[(&str, &str)], read_stderr: bool) -> Process {
    let mut command = ssm_tether();
    command
        .arg("run")
        .arg("--control")
        .arg(control)
        .arg(policy)
        .stdout(Stdio::null())
        .stderr(if read_stderr {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    for (key, value) in envs {
        command.env(key, value);
    }
    Process(command.spawn().expect("runs"))
}

/// The child's stderr lines, as they come.
fn stderr_lines(process: &mut Process) -> mpsc::Receiver<String> {
    line_stream(process.0.stderr.take().expect("piped stderr"))
}

/// Waits (off the async runtime) for a stderr line containing every one of `needles`.
async fn wait_line(
    lines: mpsc::Receiver<String>,
    needles: &'static [&'static str],
) -> (mpsc::Receiver<String>, String) {
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if needles.iter().all(|n| line.contains(n)) => return (lines, line),
                Ok(_) => {}
                Err(_) => panic!("no stderr line containing {needles:?}"),
            }
        }
    })
    .await
    .expect("join")
}

/// `ssm-tether ARGS`: exit code, stdout, stderr.
async fn ssm_tether_output(
    args: Vec<std::ffi::OsString>,
    envs: Vec<(String, String)>,
) -> (Option<i32>, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = ssm_tether().args(&args).envs(envs).output().expect("runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("join")
}

fn args(items: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<std::ffi::OsString> {
    items.iter().map(|a| a.as_ref().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_through_recycles_and_parse_as_prometheus_text() {
    let emulator = emulator(|config| {
        config.faults.recycle_every = Some(Duration::from_millis(700));
    })
    .await;
    let echo = echo_server().await;
    let files = AwsFiles::new("AKIDMETRICS");
    let (port, metrics) = (free_port(), free_port());
    let path = files.dir.path().join("tunnels.toml");
    let plugins = "\n[tunnel.reconnect]\nplugin = \"builtin:exponential-backoff\"\n\
                   config = { base_ms = 50, cap_ms = 1000 }\n\n\
                   [[tunnel.health_check]]\nplugin = \"builtin:tcp-connect\"\n\
                   grants = [\"tunnel-tcp\"]\ninterval = \"500ms\"\n";
    std::fs::write(
        &path,
        policy(
            &emulator.endpoint_url(),
            echo,
            port,
            &format!("{plugins}{}", metrics_table(metrics)),
        ),
    )
    .expect("policy");
    let process = spawn_run(&path, &files.dir.path().join("control.sock"), &[], false);

    let first = eventually(Duration::from_secs(30), "the tunnel forwards", async || {
        let exposition = prometheus::parse(&get(metrics, "/metrics").await?.1).ok()?;
        (exposition.value("ssm_tether_tunnel_up", &[("tunnel", "echo")]) == Some(1.0))
            .then_some(exposition)
    })
    .await;
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        first.value("ssm_tether_build_info", &[("version", version)]),
        Some(1.0)
    );
    let local = format!("127.0.0.1:{port}").parse().expect("addr");
    let (sent, received) = support::echo_through(local, 3, 300_000).await;
    assert_eq!(sent, received, "bytes through the recycling tunnel");
    // Several recycles, and health checks between them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = scrape(metrics).await;

    let tunnel = [("tunnel", "echo")];
    let resumes = |e: &prometheus::Exposition| e.value("ssm_tether_resumes_total", &tunnel);
    assert!(
        resumes(&second) > resumes(&first).map(|n| n + 1.0),
        "resumes move: {:?} then {:?}",
        resumes(&first),
        resumes(&second)
    );
    for direction in ["up", "down"] {
        let bytes = second
            .value(
                "ssm_tether_bytes_total",
                &[("tunnel", "echo"), ("direction", direction)],
            )
            .expect("bytes_total");
        assert!(bytes >= 300_000.0, "{direction}: {bytes}");
    }
    let opened = second
        .value("ssm_tether_connections_total", &tunnel)
        .expect("connections_total");
    assert!(opened >= 1.0, "{opened}");
    let closed = second.sum("ssm_tether_connections_closed_total", &tunnel);
    assert!(closed >= 1.0, "{closed}");
    assert!(second.value("ssm_tether_connections", &tunnel).is_some());
    let outages = second
        .value("ssm_tether_outage_seconds_count", &tunnel)
        .expect("outage histogram");
    assert!(outages >= 2.0, "{outages}");
    assert!(second.value("ssm_tether_restarts_total", &tunnel).is_some());
    assert_eq!(second.value("ssm_tether_sessions", &tunnel), Some(1.0));
    let healthy = second
        .value(
            "ssm_tether_probe_results_total",
            &[
                ("tunnel", "echo"),
                ("plugin", "builtin:tcp-connect"),
                ("result", "healthy"),
            ],
        )
        .expect("probe results, labelled with the policy file's plugin");
    assert!(healthy >= 1.0, "{healthy}");
    // Exactly one state at a time.
    assert_eq!(second.sum("ssm_tether_tunnel_state", &tunnel), 1.0);
    for (family, (kind, help)) in &second.families {
        assert!(family.starts_with("ssm_tether_"), "{family}");
        assert!(!help.is_empty(), "{family} ({kind:?}) has help");
    }
    assert_eq!(
        second
            .families
            .get("ssm_tether_outage_seconds")
            .map(|f| f.0),
        Some(prometheus::Kind::Histogram)
    );
    assert_eq!(stop(process).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_during_a_black_hole_and_200_again_while_healthz_stays_200() {
    let emulator = emulator(|_| {}).await;
    let echo = echo_server().await;
    let files = AwsFiles::new("AKIDREADY");
    let (port, metrics) = (free_port(), free_port());
    let path = files.dir.path().join("tunnels.toml");
    std::fs::write(
        &path,
        policy(
            &emulator.endpoint_url(),
            echo,
            port,
            &metrics_table(metrics),
        ),
    )
    .expect("policy");
    let process = spawn_run(&path, &files.dir.path().join("control.sock"), &[], false);

    let ready = async || {
        get(metrics, "/readyz")
            .await
            .filter(|(code, _)| *code == 200)
    };
    let (_, body) = eventually(Duration::from_secs(30), "ready", ready).await;
    assert_eq!(body.trim(), r#"{"ready":true}"#);
    assert_eq!(get(metrics, "/healthz").await.map(|r| r.0), Some(200));

    // Noticed at the pong timeout (2 s); resumes are then refused for 3 s, after which one
    // opens a socket the black hole does not swallow (or a restart does).
    emulator.faults().fail_resume(
        0,
        Some(Duration::from_secs(3)),
        ResumeFailCode::AccessDenied,
    );
    emulator
        .faults()
        .black_hole(None, SideSelection::Client, true)
        .expect("black hole");
    let (_, body) = eventually(Duration::from_secs(15), "not ready", async || {
        get(metrics, "/readyz")
            .await
            .filter(|(code, _)| *code == 503)
    })
    .await;
    let json: serde_json::Value = serde_json::from_str(body.trim()).expect("JSON body");
    assert_eq!(json["ready"], false, "{json}");
    assert_eq!(json["not_ready"][0]["tunnel"], "echo", "{json}");
    assert_ne!(json["not_ready"][0]["state"], "forwarding", "{json}");
    assert_eq!(get(metrics, "/healthz").await.map(|r| r.0), Some(200));

    eventually(Duration::from_secs(20), "ready again", ready).await;
    // Recovered by a resume once resumes were accepted again, or by a restart.
    let exposition = scrape(metrics).await;
    let tunnel = [("tunnel", "echo")];
    let recoveries = exposition.sum("ssm_tether_resumes_total", &tunnel)
        + exposition.sum("ssm_tether_restarts_total", &tunnel);
    assert!(recoveries >= 1.0, "{recoveries}");
    assert!(
        exposition
            .value("ssm_tether_outage_seconds_sum", &tunnel)
            .is_some_and(|s| s >= 2.0),
        "the outage lasted the pong timeout at least"
    );
    let local = format!("127.0.0.1:{port}").parse().expect("addr");
    let (sent, received) = support::echo_through(local, 4, 50_000).await;
    assert_eq!(sent, received);
    assert_eq!(get(metrics, "/nowhere").await.map(|r| r.0), Some(404));
    assert_eq!(stop(process).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_a_running_run_as_json_and_a_table_and_a_second_run_is_refused() {
    let emulator = emulator(|_| {}).await;
    let echo = echo_server().await;
    let files = AwsFiles::new("AKIDSTATUS");
    let port = free_port();
    let path = files.dir.path().join("tunnels.toml");
    std::fs::write(
        &path,
        policy(
            &emulator.endpoint_url(),
            echo,
            port,
            "\n[[tunnel.hook]]\nplugin = \"builtin:log\"\n",
        ),
    )
    .expect("policy");
    // The default control socket, under a private $XDG_RUNTIME_DIR.
    let runtime_dir = tempfile::tempdir().expect("tempdir");
    let xdg = runtime_dir.path().to_string_lossy().into_owned();
    let mut command = ssm_tether();
    command
        .arg("run")
        .arg(&path)
        .env("XDG_RUNTIME_DIR", &xdg)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let process = Process(command.spawn().expect("runs"));
    let env = vec![("XDG_RUNTIME_DIR".to_owned(), xdg.clone())];

    let status_json = async || {
        let (code, stdout, _) =
            ssm_tether_output(args(&[&"status", &"--json", &path]), env.clone()).await;
        (code == Some(0)).then(|| serde_json::from_str::<serde_json::Value>(&stdout).expect("JSON"))
    };
    eventually(Duration::from_secs(30), "forwarding", async || {
        status_json()
            .await
            .filter(|s| s["tunnels"][0]["state"] == "forwarding")
    })
    .await;
    let local = format!("127.0.0.1:{port}").parse().expect("addr");
    let (sent, received) = support::echo_through(local, 5, 100_000).await;
    assert_eq!(sent, received);
    let report = status_json().await.expect("status");

    assert_eq!(report["pid"], process.0.id(), "{report}");
    assert_eq!(report["ready"], true, "{report}");
    assert_eq!(report["version"], env!("CARGO_PKG_VERSION"));
    let tunnel = &report["tunnels"][0];
    assert_eq!(tunnel["name"], "echo", "{report}");
    assert_eq!(tunnel["local"], format!("127.0.0.1:{port}"));
    assert_eq!(tunnel["state"], "forwarding");
    assert!(tunnel["for_seconds"].as_f64().is_some(), "{tunnel}");
    assert!(
        tunnel["since"].as_str().is_some_and(|s| s.ends_with('Z')),
        "{tunnel}"
    );
    assert!(
        tunnel["bytes_up"].as_u64().is_some_and(|n| n >= 100_000),
        "{tunnel}"
    );
    assert!(
        tunnel["bytes_down"].as_u64().is_some_and(|n| n >= 100_000),
        "{tunnel}"
    );
    assert!(
        tunnel["connections_total"].as_u64().is_some_and(|n| n >= 1),
        "{tunnel}"
    );
    assert_eq!(tunnel["sessions_forwarding"], 1, "{tunnel}");
    let session_id = emulator.faults().sessions()[0].session_id.clone();
    assert_eq!(tunnel["sessions"][0]["session_id"], session_id.as_str());
    assert_eq!(tunnel["plugins"][0]["plugin"], "builtin:log", "{tunnel}");
    assert_eq!(tunnel["plugins"][0]["role"], "event-hook", "{tunnel}");
    assert_eq!(tunnel["plugins"][0]["health"], "ok", "{tunnel}");

    // A recycle shows up as the last outage, with its cause.
    emulator
        .faults()
        .recycle(None, SideSelection::Both)
        .await
        .expect("recycle");
    let report = eventually(Duration::from_secs(15), "an outage", async || {
        status_json()
            .await
            .filter(|s| !s["tunnels"][0]["last_outage"].is_null())
    })
    .await;
    let outage = &report["tunnels"][0]["last_outage"];
    assert_eq!(outage["cause"], "planned close (1000)", "{outage}");
    assert_eq!(outage["restarted"], false, "{outage}");

    // The table, found without naming the policy (the only socket there is).
    let (code, table, stderr) = ssm_tether_output(args(&[&"status"]), env.clone()).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(table.contains("1/1 tunnels forwarding"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("echo "))
        .unwrap_or_else(|| panic!("a row for echo: {table}"));
    assert!(
        row.contains("forwarding") && row.contains("planned close"),
        "{row}"
    );
    assert!(
        table.contains("event-hook") && table.contains("builtin:log"),
        "{table}"
    );

    // A second run of the same policy stops at the control socket, before any session.
    let (code, _, stderr) = ssm_tether_output(args(&[&"run", &path]), env.clone()).await;
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("already serves the control socket"),
        "{stderr}"
    );
    assert_eq!(emulator.faults().sessions().len(), 1, "no session started");
    // The first one still answers.
    assert!(status_json().await.is_some());

    assert_eq!(stop(process).await, Some(0));
    let (code, _, stderr) = ssm_tether_output(args(&[&"status", &path]), env).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no ssm-tether run serves"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_does_what_sighup_does_and_says_how_it_went() {
    let emulator = emulator(|_| {}).await;
    let echo = echo_server().await;
    let files = AwsFiles::new("AKIDRELOAD");
    let port = free_port();
    let plugin = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../runtime/tests/plugins/hostile-policy.wasm"
    );
    let policy_text = |mode: &str| {
        policy(
            &emulator.endpoint_url(),
            echo,
            port,
            &format!(
                "\n[tunnel.reconnect]\nplugin = \"{plugin}\"\nconfig = {{ mode = \"{mode}\" }}\n"
            ),
        )
    };
    let path = files.dir.path().join("tunnels.toml");
    std::fs::write(&path, policy_text("ok")).expect("policy");
    let control: PathBuf = files.dir.path().join("control.sock");
    let mut process = spawn_run(&path, &control, &[("RUST_LOG", "info")], true);
    let lines = stderr_lines(&mut process);
    let (lines, _) = wait_line(lines, &["control socket"]).await;
    let reload =
        async || ssm_tether_output(args(&[&"reload", &"--control", &control]), vec![]).await;

    let (code, stdout, stderr) = reload().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.trim(), "ssm-tether: plugins reloaded (1 tunnel(s))");
    let (lines, by_control) = wait_line(lines, &["plugins reloaded", "ssm-tether reload"]).await;
    signal(&process.0, "HUP");
    let (lines, by_signal) = wait_line(lines, &["plugins reloaded", "SIGHUP"]).await;
    // The same outcome line, whoever asked.
    let outcome = |line: &str| {
        line.split_once("plugins reloaded").map(|(_, rest)| {
            rest.replace("SIGHUP", "")
                .replace("ssm-tether reload", "")
                .replace("trigger=\"\"", "")
                .trim()
                .to_owned()
        })
    };
    assert!(by_control.contains("ssm-tether reload"), "{by_control}");
    assert!(by_signal.contains("SIGHUP"), "{by_signal}");
    assert_eq!(
        outcome(&by_control),
        outcome(&by_signal),
        "{by_control} / {by_signal}"
    );

    // A broken edit: the reload fails with the plugin's own message, the running plugins
    // stay, and SIGHUP says the same.
    std::fs::write(&path, policy_text("reject")).expect("policy");
    let (code, stdout, stderr) = reload().await;
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stderr.starts_with("ssm-tether: reload failed; the running plugins stay:")
            && stderr.contains("rejected on purpose"),
        "{stderr}"
    );
    let (lines, _) = wait_line(lines, &["reload failed", "ssm-tether reload"]).await;
    signal(&process.0, "HUP");
    let (lines, failed) = wait_line(lines, &["reload failed", "SIGHUP"]).await;
    assert!(failed.contains("rejected on purpose"), "{failed}");

    let local = format!("127.0.0.1:{port}").parse().expect("addr");
    let (sent, received) = support::echo_through(local, 6, 50_000).await;
    assert_eq!(sent, received, "the tunnel is untouched by reloads");
    drop(lines);
    assert_eq!(stop(process).await, Some(0));
    assert!(!control.exists(), "the control socket is removed at exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_socket_hears_ready_status_watchdog_reloading_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let emulator = emulator(|_| {}).await;
    let echo = echo_server().await;
    let files = AwsFiles::new("AKIDNOTIFY");
    let port = free_port();
    let path = files.dir.path().join("tunnels.toml");
    std::fs::write(&path, policy(&emulator.endpoint_url(), echo, port, "")).expect("policy");
    let socket_path = files.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let (tx, datagrams) = mpsc::channel::<(Instant, String)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        loop {
            match socket.recv(&mut buf) {
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if tx.send((Instant::now(), text)).is_err() {
                        return;
                    }
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return,
            }
        }
    });
    let notify = socket_path.to_string_lossy().into_owned();
    let started = Instant::now();
    let process = spawn_run(
        &path,
        &files.dir.path().join("control.sock"),
        &[("NOTIFY_SOCKET", &notify), ("WATCHDOG_USEC", "400000")],
        false,
    );
    let next = |needle: &'static str, datagrams: mpsc::Receiver<(Instant, String)>| {
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut skipped = Vec::new();
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match datagrams.recv_timeout(left) {
                    Ok((at, text)) if text.lines().any(|l| l.starts_with(needle)) => {
                        return (datagrams, at, text, skipped);
                    }
                    Ok((_, text)) => skipped.push(text),
                    Err(_) => panic!("no {needle:?} datagram; got {skipped:?}"),
                }
            }
        })
    };

    let (datagrams, _, ready, before) = next("READY=1", datagrams).await.expect("join");
    assert!(ready.contains("STATUS="), "{ready}");
    assert!(before.is_empty(), "READY=1 comes first: {before:?}");
    // Ready means bound: the tunnel accepts at once.
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the tunnel's listener is bound at READY=1");
    // The summary follows the tunnel's state (unless it already forwarded at READY=1).
    let datagrams = if ready.contains("STATUS=1/1 tunnels forwarding") {
        datagrams
    } else {
        let (datagrams, _, status, _) = next("STATUS=1/1 tunnels forwarding", datagrams)
            .await
            .expect("join");
        assert_eq!(status.trim(), "STATUS=1/1 tunnels forwarding");
        datagrams
    };
    let (datagrams, _, _, _) = next("WATCHDOG=1", datagrams).await.expect("join");
    let (datagrams, second, _, _) = next("WATCHDOG=1", datagrams).await.expect("join");
    let (datagrams, third, _, _) = next("WATCHDOG=1", datagrams).await.expect("join");
    // Half of WATCHDOG_USEC apart (200 ms), give or take scheduling on a busy machine.
    let gap = third - second;
    assert!(
        gap >= Duration::from_millis(150) && gap <= Duration::from_secs(3),
        "{gap:?}"
    );

    signal(&process.0, "HUP");
    let (datagrams, _, reloading, _) = next("RELOADING=1", datagrams).await.expect("join");
    let usec = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("MONOTONIC_USEC with RELOADING=1: {reloading:?}"));
    assert!(usec > 0);
    let (datagrams, _, again, _) = next("READY=1", datagrams).await.expect("join");
    assert!(again.contains("STATUS="), "{again}");

    signal(&process.0, "TERM");
    let (_, _, _, _) = next("STOPPING=1", datagrams).await.expect("join");
    let status = tokio::task::spawn_blocking({
        let mut process = process;
        move || process.0.wait()
    })
    .await
    .expect("join")
    .expect("waits");
    assert_eq!(status.code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// Lines of a unit file that are not comments.
fn directives(unit: &str) -> Vec<&str> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .collect()
}

#[test]
fn the_example_systemd_unit_is_type_notify_hardened_and_leaves_the_jit_alone() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/systemd/ssm-tether.service"
    ))
    .expect("the example unit");
    let lines = directives(&unit);
    for wanted in [
        "Type=notify",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "Restart=on-failure",
        "ReadWritePaths=%C/ssm-tether",
        "CacheDirectory=ssm-tether",
        "Environment=XDG_CACHE_HOME=%C",
    ] {
        assert!(lines.contains(&wanted), "{wanted} in the unit");
    }
    assert!(lines.iter().any(|l| l.starts_with("WatchdogSec=")));
    // Cranelift writes machine code and then executes it.
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("MemoryDenyWriteExecute")),
        "MemoryDenyWriteExecute breaks every plugin"
    );
    assert!(unit.contains("MemoryDenyWriteExecute= must NOT be set"));
    // The commands it runs are commands this binary has.
    for (key, command) in [("ExecStart=", "run"), ("ExecReload=", "reload")] {
        let line = lines
            .iter()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("{key}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.get(1), Some(&command), "{line}");
        assert!(words.contains(&"--control"), "{line}");
        let out = ssm_tether()
            .args([command, "--help"])
            .output()
            .expect("runs");
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("--control"),
            "{out:?}"
        );
    }
}

#[test]
fn the_kubernetes_example_has_a_valid_policy_and_probes_the_real_endpoints() {
    let manifest = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/kubernetes/ssm-tether-sidecar.yaml"
    ))
    .expect("the example manifest");
    // The ConfigMap's `tunnels.toml: |` block: every line indented deeper than its key.
    let mut lines = manifest
        .lines()
        .skip_while(|l| l.trim() != "tunnels.toml: |");
    let key_indent = lines
        .next()
        .map(|l| l.len() - l.trim_start().len())
        .expect("a tunnels.toml block");
    let policy_text: String = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > key_indent)
        .map(|l| format!("{}\n", l.get(key_indent + 2..).unwrap_or("")))
        .collect();
    let policy = ssm_tether::policy::parse("tunnels.toml", &policy_text)
        .unwrap_or_else(|e| panic!("{e}\n{policy_text}"));
    let metrics = policy.metrics.expect("a [metrics] table");
    assert_eq!(metrics.listen.to_string(), "0.0.0.0:9464");
    assert!(manifest.contains("containerPort: 9464"));
    for path in ["path: /readyz", "path: /healthz", "path: /metrics"] {
        assert!(manifest.contains(path), "{path}");
    }
    assert!(manifest.contains("livenessProbe") && manifest.contains("readinessProbe"));
}
