//! Log output of every command: stderr, text or JSON lines, colour only for a person at a
//! terminal, written by a thread of its own so that a stuck reader never stalls a tunnel.

use std::ffi::OsStr;
use std::sync::OnceLock;

/// How log lines are written (`--log-format`, a global option).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// One line of text per event, for people.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields, spans), for log
    /// collectors.
    Json,
}

/// The format chosen on the command line; commands initialise logging themselves, with a
/// default level of their own, so the choice is kept here until they do.
static LOG_FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Records `--log-format` for the logging that the command initialises later.
pub(crate) fn set_log_format(format: LogFormat) {
    // A second call (tests) keeps the first choice.
    let _ = LOG_FORMAT.set(format);
}

/// Logs to stderr; `RUST_LOG` overrides the default (`info`, the AWS SDK's configuration
/// loader at `warn`).
pub(crate) fn init_logging() {
    // The SDK's loader says "loaded base credentials" at `info` every time a client is set
    // up, which is on every StartSession attempt: two lines of noise per attempt around the
    // one that matters.
    init_logging_with("info,aws_config=warn");
}

/// Logs to stderr; `RUST_LOG` overrides `default` (an `EnvFilter` directive).
///
/// Whatever `RUST_LOG` says, the libraries that see secrets are held at `debug`: at `trace`
/// the WebSocket library prints the upgrade request (signed URL, `Authorization`) and every
/// frame (the OpenDataChannel token), and the AWS SDK prints response bodies (StartSession's
/// and ResumeSession's `TokenValue`). The same filter holds for both formats.
pub(crate) fn init_logging_with(default: &str) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, fmt};
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let secrets = SECRET_SEEING_TARGETS.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |targets, target| targets.with_target(*target, LevelFilter::DEBUG),
    );
    // Written by a thread of its own through a bounded queue that drops lines when full: a
    // log reader that stops reading (a paused pager, a stuck pipe) must never stall tunnels.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("ssm-tether-log")
        .finish(std::io::stderr());
    let format = LOG_FORMAT.get().copied().unwrap_or_default();
    // `log_internal_errors(false)`: its default reports a failed write with `eprintln!`,
    // which panics when stderr is a closed pipe; a daemon whose log reader went away must
    // keep its tunnels up.
    let layer = match format {
        LogFormat::Text => fmt::layer()
            .with_writer(writer)
            .with_ansi(colour(
                std::io::IsTerminal::is_terminal(&std::io::stderr()),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .log_internal_errors(false)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .with_writer(writer)
            .with_ansi(false)
            .log_internal_errors(false)
            .boxed(),
    };
    let layer = layer.with_filter(filter).with_filter(secrets);
    // A second initialisation (tests) is harmless.
    if tracing_subscriber::registry()
        .with(layer)
        .try_init()
        .is_ok()
    {
        *log_guard() = Some(guard);
    }
}

/// Whether text log lines carry colour codes: only for a person at a terminal (not into a
/// log file, a pipe or ssh's stderr), and never when `NO_COLOR` is set to a non-empty value
/// (<https://no-color.org>).
fn colour(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// Lines the log queue holds before it drops new ones (each line is bounded: plugin text is
/// cut at 4 KiB, everything else is ours).
const LOG_QUEUE_LINES: usize = 10_000;

fn log_guard() -> std::sync::MutexGuard<'static, Option<tracing_appender::non_blocking::WorkerGuard>>
{
    static GUARD: std::sync::Mutex<Option<tracing_appender::non_blocking::WorkerGuard>> =
        std::sync::Mutex::new(None);
    GUARD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes out what the log queue still holds (waiting at most about a second, the
/// appender's own bound); call before the process exits.
pub(crate) fn flush_logs() {
    drop(log_guard().take());
}

/// Crates whose `trace` output carries tokens, credentials or signed URLs.
const SECRET_SEEING_TARGETS: &[&str] = &[
    "tungstenite",
    "tokio_tungstenite",
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_http_client",
    "aws_sigv4",
    "aws_config",
    "hyper",
    "hyper_util",
    "h2",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color() {
        assert!(colour(true, None));
        assert!(
            !colour(false, None),
            "a pipe or a file gets no colour codes"
        );
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, Some(OsStr::new("1"))));
        // no-color.org: set *and not empty*.
        assert!(colour(true, Some(OsStr::new(""))));
    }
}
