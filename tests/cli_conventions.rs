//! Command-line conventions, tried as a new user tries them: `run` against an endpoint that
//! is not there (one log line per failed attempt, "starting" until a session existed, colour
//! only on a terminal and never with `NO_COLOR`), `--log-format json`, `completions` and
//! `man`.

mod pty;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pty::Pty;
use ssm_tether_e2e::ssm_tether;

/// How long a line the test waits for may take.
const SHOWS: Duration = Duration::from_secs(30);

/// A loopback port nobody listens on (now).
fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
    probe.local_addr().expect("addr").port()
}

/// A policy of one tunnel whose API endpoint refuses every connection, with its AWS files,
/// in a directory of its own.
struct Unreachable {
    dir: tempfile::TempDir,
}

impl Unreachable {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("config"),
            "[profile test]\nregion = us-east-1\n",
        )
        .expect("config");
        std::fs::write(
            dir.path().join("credentials"),
            "[test]\naws_access_key_id = AKIDCONV\naws_secret_access_key = SECRET-conventions\n",
        )
        .expect("credentials");
        std::fs::write(
            dir.path().join("tunnels.toml"),
            format!(
                "[defaults]\nregion = \"us-east-1\"\nprofile = \"test\"\n\
                 endpoint_url = \"http://127.0.0.1:{}\"\n\
                 aws_config_file = \"config\"\naws_credentials_file = \"credentials\"\n\n\
                 [[tunnel]]\nname = \"echo\"\ntarget = \"i-0123456789abcdef0\"\n\
                 remote_port = 7\nlocal = \"127.0.0.1:{}\"\n",
                free_port(),
                free_port()
            ),
        )
        .expect("policy");
        Self { dir }
    }

    fn policy(&self) -> PathBuf {
        self.dir.path().join("tunnels.toml")
    }

    fn control(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    /// `ssm-tether [global…] run POLICY --control SOCKET`, with the environment a user's
    /// shell has by default (no `RUST_LOG`, no `NO_COLOR`).
    fn run(&self, global: &[&str]) -> Command {
        let mut command = ssm_tether();
        command
            .args(global)
            .arg("run")
            .arg(self.policy())
            .arg("--control")
            .arg(self.control())
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR");
        command
    }
}

/// Lines of a child's stderr as raw bytes (so that escape codes are seen as they are).
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<Vec<u8>> {
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).split(b'\n') {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Collects lines into `log` until one contains `needle`.
fn wait_line(lines: &mpsc::Receiver<Vec<u8>>, log: &mut Vec<Vec<u8>>, needle: &str) {
    let deadline = Instant::now() + SHOWS;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let found = String::from_utf8_lossy(&line).contains(needle);
                log.push(line);
                if found {
                    return;
                }
            }
            Err(_) => panic!(
                "no stderr line containing {needle:?}; so far:\n{}",
                text(log).join("\n")
            ),
        }
    }
}

fn text(log: &[Vec<u8>]) -> Vec<String> {
    log.iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect()
}

/// SIGTERM, then the exit status and every line that is left.
fn stop(mut child: Child, lines: &mpsc::Receiver<Vec<u8>>, log: &mut Vec<Vec<u8>>) -> Option<i32> {
    let sent = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    assert!(sent.is_ok_and(|s| s.success()), "SIGTERM sent");
    let status = child.wait().expect("waits");
    // The reader thread ends at EOF, when the child is gone.
    log.extend(lines.iter());
    status.code()
}

/// The number after `attempt=` (text) in a line.
fn attempt_of(line: &str) -> Option<u32> {
    let rest = &line[line.find("attempt=")? + "attempt=".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[test]
fn run_into_a_pipe_logs_each_failed_start_once_without_colour_and_says_starting() {
    let setup = Unreachable::new();
    let mut child = setup
        .run(&[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    let lines = stderr_lines(&mut child);
    let mut log = Vec::new();
    wait_line(&lines, &mut log, "attempt=3");
    // What `status` reports meanwhile: nothing ever started, so nothing is restarting.
    let status = ssm_tether()
        .args(["status", "--json", "--control"])
        .arg(setup.control())
        .output()
        .expect("status runs");
    assert!(status.status.success(), "{status:?}");
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).expect("JSON");
    assert_eq!(report["tunnels"][0]["state"], "starting", "{report}");
    assert_eq!(report["tunnels"][0]["restarts"], 0, "{report}");

    let code = stop(child, &lines, &mut log);
    let said = text(&log);
    assert_eq!(code, Some(0), "{}", said.join("\n"));
    assert!(
        !log.iter().flatten().any(|&b| b == 0x1b),
        "no escape codes into a pipe:\n{}",
        said.join("\n")
    );
    // Every line about a failed attempt names it: each attempt exactly once, in order.
    let failed: Vec<&String> = said
        .iter()
        .filter(|l| l.contains("Connection refused"))
        .collect();
    let attempts: Vec<Option<u32>> = failed.iter().map(|l| attempt_of(l)).collect();
    let expected: Vec<Option<u32>> = (1..).take(failed.len()).map(Some).collect();
    assert!(failed.len() >= 3, "{}", said.join("\n"));
    assert_eq!(
        attempts,
        expected,
        "one line per attempt:\n{}",
        said.join("\n")
    );
    for line in &failed {
        assert!(line.contains("starting the session failed"), "{line}");
    }
    for word in ["restart", "recovery", "loaded base credentials"] {
        let wrong: Vec<&String> = said.iter().filter(|l| l.contains(word)).collect();
        assert!(
            wrong.is_empty(),
            "{word:?} before any session existed: {wrong:?}"
        );
    }
}

#[test]
fn log_format_json_writes_one_parseable_object_per_line() {
    let setup = Unreachable::new();
    // A global option: accepted before the command as well as after it.
    for global in [&["--log-format", "json"][..], &[]] {
        let mut command = setup.run(global);
        if global.is_empty() {
            command.args(["--log-format", "json"]);
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runs");
        let lines = stderr_lines(&mut child);
        let mut log = Vec::new();
        wait_line(&lines, &mut log, "starting the session failed");
        let code = stop(child, &lines, &mut log);
        let said = text(&log);
        assert_eq!(code, Some(0), "{}", said.join("\n"));
        let objects: Vec<serde_json::Value> = said
            .iter()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
            })
            .collect();
        for object in &objects {
            assert!(object["timestamp"].is_string(), "{object}");
            assert!(object["level"].is_string(), "{object}");
            assert!(object["target"].is_string(), "{object}");
            assert!(object["fields"]["message"].is_string(), "{object}");
        }
        let listening = objects
            .iter()
            .find(|o| o["fields"]["message"] == "listening")
            .unwrap_or_else(|| panic!("a listening line: {}", said.join("\n")));
        assert_eq!(listening["level"], "INFO");
        assert_eq!(listening["fields"]["tunnel"], "echo");
        let failed = objects
            .iter()
            .find(|o| o["fields"]["message"] == "starting the session failed")
            .expect("a failed attempt");
        assert_eq!(failed["level"], "WARN");
        assert_eq!(failed["fields"]["attempt"], 1);
        assert!(
            failed["fields"]["cause"]
                .as_str()
                .is_some_and(|c| c.contains("StartSession")),
            "{failed}"
        );
        // The tunnel's span names the tunnel.
        assert_eq!(failed["span"]["name"], "tunnel", "{failed}");
        assert_eq!(failed["span"]["tunnel"], "echo", "{failed}");
        assert!(!said.iter().any(|l| l.contains("SECRET-conventions")));
    }
}

#[test]
fn colour_on_a_terminal_unless_no_color_is_set() {
    let setup = Unreachable::new();
    for (no_color, coloured) in [(None, true), (Some("1"), false), (Some(""), true)] {
        let mut command = setup.run(&[]);
        if let Some(value) = no_color {
            command.env("NO_COLOR", value);
        }
        let mut terminal = Pty::spawn(&mut command, 200, 50);
        terminal.wait_for(0, "listening", SHOWS);
        let _ = terminal.child.kill();
        let _ = terminal.child.wait();
        let _ = std::fs::remove_file(setup.control());
        assert_eq!(
            terminal.seen.contains(&0x1b),
            coloured,
            "NO_COLOR={no_color:?}: {:?}",
            String::from_utf8_lossy(&terminal.seen)
        );
    }
}

fn succeeds(args: &[&str]) -> Output {
    let out = ssm_tether().args(args).output().expect("runs");
    assert!(out.status.success(), "{args:?}: {out:?}");
    out
}

#[test]
fn completions_are_printed_for_every_shell() {
    let bash = String::from_utf8(succeeds(&["completions", "bash"]).stdout).expect("UTF-8");
    for word in [
        "ssm-tether",
        "run",
        "status",
        "check",
        "completions",
        "--log-format",
    ] {
        assert!(bash.contains(word), "{word} in the bash script");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let script = succeeds(&["completions", shell]).stdout;
        let script = String::from_utf8_lossy(&script);
        assert!(
            script.contains("ssm-tether") && script.contains("status"),
            "{shell}: {script}"
        );
    }
    let out = ssm_tether()
        .args(["completions", "tcsh"])
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

/// Whether `page` is a roff manual page.
fn is_roff(page: &[u8]) -> bool {
    page.starts_with(b".TH") || page.starts_with(b".ie")
}

#[test]
fn man_prints_a_roff_page_or_writes_one_per_command() {
    let page = succeeds(&["man"]).stdout;
    assert!(is_roff(&page), "{}", String::from_utf8_lossy(&page));
    let page = String::from_utf8_lossy(&page);
    // roff escapes the dash of names and options.
    for word in ["ssm\\-tether", "completions", "\\-\\-log\\-format"] {
        assert!(page.contains(word), "{word} in {page}");
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("man1");
    let listed = succeeds(&["man", out_dir.to_str().expect("UTF-8 path")]).stdout;
    let listed = String::from_utf8(listed).expect("UTF-8");
    for name in ["ssm-tether.1", "ssm-tether-run.1", "ssm-tether-man.1"] {
        let path = out_dir.join(name);
        assert!(
            listed.lines().any(|l| Path::new(l) == path),
            "{name} listed: {listed}"
        );
        let page = std::fs::read(&path).expect("the page was written");
        assert!(is_roff(&page), "{name}");
    }
}
