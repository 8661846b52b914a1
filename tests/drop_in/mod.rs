//! What the suites that drive ssm-tether as the AWS CLI's `session-manager-plugin` share:
//! the AWS CLI itself (installed from PyPI on first use), a workspace with the plugin link,
//! and the emulator's view of its sessions.

#![allow(dead_code, unreachable_pub)] // each suite uses its own part

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ssm_tether_e2e::ssm_tether;

use crate::child::{Emulator, Process, get_json};

pub const TARGET: &str = "i-0123456789abcdef0";
/// The secret access key the AWS CLI and the plugin get: it must never reach a log.
pub const SECRET_KEY: &str = "SECRET-awscli-suite";

/// The AWS CLI, installed on first use; `None` (with a loud message) where it cannot be.
pub fn aws_cli() -> Option<PathBuf> {
    static AWS: OnceLock<Option<PathBuf>> = OnceLock::new();
    AWS.get_or_init(|| installed("install-awscli.sh", "the AWS CLI").map(PathBuf::from))
        .clone()
}

/// Runs `tests/tools/SCRIPT`, which installs a tool and prints what the tests need (a path);
/// `None`, with a loud message naming the suite's tool, where it cannot be installed.
pub fn installed(script: &str, tool: &str) -> Option<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tools")
        .join(script);
    let output = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("the install script runs");
    if !output.status.success() {
        eprintln!(
            "\n*** SKIPPED: {tool} cannot be installed here ({}, exit {:?}); the tests that \
             need it did not run ***\n",
            script.display(),
            output.status.code()
        );
        return None;
    }
    Some(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A scratch directory with `session-manager-plugin` linked to ssm-tether by
/// `ssm-tether install-plugin`, and an environment for the AWS CLI that reads nothing of the
/// machine's own AWS configuration.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Self {
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

    pub fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// `aws ARGS` with the plugin link first on PATH and dummy credentials.
    pub fn aws(&self, aws: &Path, emulator: &Emulator) -> Command {
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
pub fn signal_group(process: &Process, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{}", process.0.id())])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

pub fn active_sessions(emulator: &Emulator) -> Vec<serde_json::Value> {
    let sessions = get_json(&format!("{}/sessions", emulator.admin));
    sessions
        .as_array()
        .expect("a list")
        .iter()
        .filter(|s| s["state"] == "active")
        .cloned()
        .collect()
}

pub async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Tokens (StartSession/ResumeSession responses, the OpenDataChannel frame), signatures, the
/// StreamUrl's query and the secret key stay out of every log line, even at trace level.
pub fn assert_no_secret(lines: &[String]) {
    for secret in [
        "TokenValue",
        "Signature=",
        "cell-number=",
        "X-Amz-Security-Token",
        SECRET_KEY,
    ] {
        let leaked: Vec<_> = lines.iter().filter(|l| l.contains(secret)).collect();
        assert!(leaked.is_empty(), "{secret} in the log: {leaked:?}");
    }
}
