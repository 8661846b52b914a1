//! `session-manager-plugin`: ssm-tether in place of the official plugin under the AWS CLI.
//!
//! The AWS CLI calls StartSession itself and then runs whatever `session-manager-plugin` is on
//! `PATH` with the response and the request (docs/protocol.md §8.2). Run under that name (a
//! link or a copy) or as `ssm-tether session-manager-plugin ARGS…`, this module takes over the
//! session with the same resilient tunnel as `run`: resumed with fresh credentials of the
//! CLI's profile and region, restarted from the CLI's request while the local end stays bound.

mod api;
mod args;
mod kind;
mod session;
pub(crate) mod ssh_proxy;
mod terminal;

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Context;
use ssm_tether::aws::{AwsSettings, SsmApi};

use self::args::{ArgsError, Invocation};
use self::kind::Kind;
use self::session::LocalEnd;
use super::EXIT_USAGE;

/// The name under which the AWS CLI looks the plugin up on `PATH`.
pub(crate) const PLUGIN_NAME: &str = "session-manager-plugin";
/// The plugin's file name: [`PLUGIN_NAME`], with `.exe` on Windows.
#[cfg(not(windows))]
pub(crate) const PLUGIN_FILE: &str = PLUGIN_NAME;
/// The plugin's file name: [`PLUGIN_NAME`], with `.exe` on Windows.
#[cfg(windows)]
pub(crate) const PLUGIN_FILE: &str = "session-manager-plugin.exe";

/// What `--version` prints: a dotted version the AWS CLI accepts without its outdated-plugin
/// warning (it wants ≥ 1.2.764.0, and > 1.2.497.0 to pass the response in an environment
/// variable). `1.2.1000` sits above every official release; the fourth component is
/// ssm-tether's own version as MAJOR·10000 + MINOR·100 + PATCH.
pub(crate) fn plugin_version() -> String {
    let part = |s: &str| s.parse::<u64>().unwrap_or(0);
    let major = part(env!("CARGO_PKG_VERSION_MAJOR"));
    let minor = part(env!("CARGO_PKG_VERSION_MINOR"));
    let patch = part(env!("CARGO_PKG_VERSION_PATCH"));
    format!("1.2.1000.{}", major * 10_000 + minor * 100 + patch)
}

/// Whether the process was started under the plugin's name (argv[0]'s file name; on
/// Windows its name without `.exe`, in any case, as the file system ignores case).
pub(crate) fn invoked_as_plugin(argv0: Option<&OsString>) -> bool {
    let Some(name) = argv0
        .map(std::path::Path::new)
        .and_then(std::path::Path::file_name)
    else {
        return false;
    };
    #[cfg(windows)]
    {
        let name = name.to_string_lossy().to_ascii_lowercase();
        name.strip_suffix(".exe").unwrap_or(&name) == PLUGIN_NAME
    }
    #[cfg(not(windows))]
    {
        name == PLUGIN_NAME
    }
}

/// Runs a `session-manager-plugin` call; `args` are the arguments after the program name.
pub(crate) fn run(args: &[OsString]) -> anyhow::Result<ExitCode> {
    let invocation = args::parse(args, |name| std::env::var(name).ok());
    // The response holds the session token: like the official plugin, take it out of the
    // environment so that nothing started later inherits it.
    if let Some(name) = args.first().and_then(|a| a.to_str())
        && name.starts_with(args::RESPONSE_ENV_PREFIX)
    {
        // SAFETY: called from `main` before any thread exists (no runtime yet, no logging
        // thread), so nothing reads the environment concurrently.
        #[allow(unsafe_code)]
        unsafe {
            std::env::remove_var(name);
        }
    }
    let session = match invocation {
        Ok(Invocation::Installed) => {
            print!(
                "\nThe Session Manager plugin was installed successfully. Use the AWS CLI to start a session.\n\n"
            );
            return Ok(ExitCode::SUCCESS);
        }
        Ok(Invocation::Version) => {
            println!("{}", plugin_version());
            return Ok(ExitCode::SUCCESS);
        }
        Ok(Invocation::Session(session)) => *session,
        Err(err) => return Ok(usage(&err)),
    };
    let kind = kind::classify(&session.request);
    // A stdin/stdout session's stderr is shown by ssh on every connection: like the official
    // plugin, say nothing there unless something fails for good.
    // A shell's terminal is in raw mode, where a log line would also land in the middle of
    // the remote screen: errors only there too.
    let quiet = matches!(
        kind,
        Ok(Kind::StandardStream | Kind::Shell | Kind::Undecided)
    );
    super::init_logging_with(if quiet { "error" } else { "warn" });
    let settings = AwsSettings {
        region: Some(session.region.clone()).filter(|r| !r.is_empty()),
        profile: session.profile.clone(),
        endpoint_url: Some(session.endpoint.clone()).filter(|e| !e.is_empty()),
        ..AwsSettings::default()
    };
    let api = SsmApi::new(settings);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let end = kind.map(|kind| match kind {
        Kind::Port(local) => LocalEnd::Listener(local),
        Kind::StandardStream => LocalEnd::Stream,
        Kind::Shell => LocalEnd::Shell,
        Kind::Undecided => LocalEnd::Undecided,
    });
    let result = match end {
        Ok(end) => runtime.block_on(session::run(session.grant, session.request, end, api)),
        Err(err) => {
            eprintln!("ssm-tether: {err}");
            runtime.block_on(terminate(&session, &api));
            Ok(ExitCode::from(EXIT_USAGE))
        }
    };
    // Nothing left to wait for: tasks still running (a connection draining into an
    // application that stopped reading) must not hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    result
}

fn usage(err: &ArgsError) -> ExitCode {
    eprintln!("ssm-tether {PLUGIN_NAME}: {err}");
    ExitCode::from(EXIT_USAGE)
}

async fn terminate(session: &args::CliSession, api: &SsmApi) {
    if let Err(err) = api.terminate_session(&session.grant.session_id).await {
        tracing::warn!(error = %err, "TerminateSession failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_passes_the_aws_clis_checks() {
        let version = plugin_version();
        let parts: Vec<u64> = version
            .split('.')
            .map(|p| p.parse().expect("numeric"))
            .collect();
        assert_eq!(parts.len(), 4, "{version}");
        // ≥ 1.2.764.0: no outdated-plugin warning; > 1.2.497.0: the response comes in the
        // environment, not on the command line.
        assert!(parts.as_slice() >= [1, 2, 764, 0].as_slice(), "{version}");
    }

    #[test]
    fn recognises_its_name_through_a_link() {
        let name = |s: &str| invoked_as_plugin(Some(&OsString::from(s)));
        assert!(name("/usr/local/bin/session-manager-plugin"));
        assert!(name("session-manager-plugin"));
        assert!(!name("/usr/bin/ssm-tether"));
        assert!(!name("session-manager-plugin.old"));
        assert!(!invoked_as_plugin(None));
    }

    #[cfg(windows)]
    #[test]
    fn recognises_its_name_in_any_case_with_or_without_exe() {
        let name = |s: &str| invoked_as_plugin(Some(&OsString::from(s)));
        assert!(name(r"C:\Program Files\bin\Session-Manager-Plugin.EXE"));
        assert!(name("session-manager-plugin.exe"));
        assert!(!name("session-manager-plugin.exe.orig"));
        assert!(!name("ssm-tether.exe"));
    }
}
