//! What stops or reloads a command from outside: signals on Unix, console events on Windows.
//!
//! * SIGINT and SIGTERM — on Windows Ctrl-C, Ctrl-Break and a system shutdown — stop a
//!   command ([`shutdown_signal`]).
//! * SIGHUP — on Windows the console closing — stops a session ([`hangup`]). `run` reloads
//!   on SIGHUP instead ([`Reload`]); Windows has no such signal, so there `run` reloads
//!   through `ssm-tether reload` (the control endpoint) alone.
//!
//! Windows ends a process soon after the console closes or the system shuts down (a few
//! seconds at most), so the sessions' termination may not finish there.

use std::future::Future;

/// Handles SIGINT and SIGTERM (Windows: Ctrl-C, Ctrl-Break and system shutdown) from now on;
/// the future resolves with the signal's name. Registering early matters: until then either
/// signal ends the process without terminating the sessions it may already have started.
#[cfg(unix)]
pub(crate) fn shutdown_signal() -> anyhow::Result<impl Future<Output = &'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        }
    })
}

/// Handles SIGINT and SIGTERM (Windows: Ctrl-C, Ctrl-Break and system shutdown) from now on;
/// the future resolves with the signal's name. Registering early matters: until then either
/// signal ends the process without terminating the sessions it may already have started.
#[cfg(windows)]
pub(crate) fn shutdown_signal() -> anyhow::Result<impl Future<Output = &'static str>> {
    use tokio::signal::windows::{ctrl_break, ctrl_c, ctrl_shutdown};
    let mut interrupt = ctrl_c()?;
    let mut brk = ctrl_break()?;
    let mut shutdown = ctrl_shutdown()?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => "Ctrl-C",
            _ = brk.recv() => "Ctrl-Break",
            _ = shutdown.recv() => "system shutdown",
        }
    })
}

/// Handles the loss of the terminal from now on: SIGHUP, or on Windows the console closing;
/// the future resolves with its name.
#[cfg(unix)]
pub(crate) fn hangup() -> std::io::Result<impl Future<Output = &'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(async move {
        hangup.recv().await;
        "SIGHUP"
    })
}

/// Handles the loss of the terminal from now on: SIGHUP, or on Windows the console closing;
/// the future resolves with its name.
#[cfg(windows)]
pub(crate) fn hangup() -> std::io::Result<impl Future<Output = &'static str>> {
    let mut close = tokio::signal::windows::ctrl_close()?;
    Ok(async move {
        close.recv().await;
        "console closed"
    })
}

/// `run`'s reload signal: SIGHUP. Windows has none; there `ssm-tether reload` (the control
/// endpoint) and file changes reload, and [`Reload::recv`] never resolves.
pub(crate) struct Reload {
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
}

impl Reload {
    /// Handles SIGHUP from now on (before this, its default action would end the process).
    pub(crate) fn register() -> std::io::Result<Self> {
        Ok(Self {
            #[cfg(unix)]
            hangup: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?,
        })
    }

    /// The next reload signal.
    pub(crate) async fn recv(&mut self) {
        #[cfg(unix)]
        {
            if self.hangup.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        #[cfg(windows)]
        std::future::pending::<()>().await;
    }
}

/// Restores the default action of SIGPIPE, which Rust programs start with ignored: a write to
/// a closed stdout then ends the process with SIGPIPE (status 141 in a shell), as Unix tools
/// do, instead of `println!` panicking with a backtrace. Windows has no SIGPIPE: nothing to do.
pub(crate) fn die_quietly_on_closed_stdout() {
    // SAFETY: called on the main thread before any other thread exists (no runtime yet);
    // setting a signal's disposition to its default touches no memory of ours.
    #[cfg(unix)]
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
