//! End-to-end tests of the `ssm-tether` binary, run as a user runs it: `check`, `run`,
//! `frame`, `demo` and `emulator` as child processes, against the emulator (in-process or
//! the binary's own `emulator` command) and, in later suites, real outside tools.
//!
//! The tests live in this directory's `*.rs` files; this library only locates the binary.

use std::path::PathBuf;
use std::process::Command;

/// The `ssm-tether` binary of this build: `SSM_TETHER_BIN` if set, else the one next to
/// the test executables (`cargo test --workspace` builds it, since the runtime package has
/// integration tests of its own), else one built now with `cargo build`.
///
/// # Panics
/// When no binary can be found or built.
pub fn binary() -> PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("SSM_TETHER_BIN") {
                return PathBuf::from(path);
            }
            let exe = std::env::current_exe().expect("the test executable's path");
            // target/<profile>/deps/<test> → target/<profile>/ssm-tether
            let profile_dir = exe
                .parent()
                .and_then(|deps| deps.parent())
                .expect("target/<profile>/deps");
            let candidate = profile_dir.join(format!("ssm-tether{}", std::env::consts::EXE_SUFFIX));
            if !candidate.exists() {
                let status = Command::new(env!("CARGO"))
                    .args(["build", "-p", "ssm-tether", "--bin", "ssm-tether"])
                    .status()
                    .expect("cargo runs");
                assert!(
                    status.success(),
                    "cargo build of the ssm-tether binary failed"
                );
            }
            assert!(
                candidate.exists(),
                "no ssm-tether binary at {}; build it or set SSM_TETHER_BIN",
                candidate.display()
            );
            candidate
        })
        .clone()
}

/// A command running the binary.
pub fn ssm_tether() -> Command {
    Command::new(binary())
}
