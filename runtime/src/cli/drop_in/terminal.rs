//! The local terminal of a shell session: in raw mode while the session runs, its size sent
//! to the remote terminal at the start and on every change, and restored on every way out —
//! normal end, error, signal, second signal and panic.
//!
//! A change of size is noticed by SIGWINCH on Unix; Windows has no such signal, so there the
//! size is read every 500 ms (as the official plugin does) and only a change is sent.
//!
//! Raw, not the official client's cbreak: every key reaches the remote terminal as typed,
//! Ctrl-C/Ctrl-Z/Ctrl-\ included (the remote terminal turns them into its signals), and the
//! keys a local cbreak terminal swallows (Ctrl-S/Ctrl-Q flow control, Ctrl-O, Ctrl-V, and
//! Ctrl-Y, which ends the official client's session on macOS) work too. Enter arrives as CR,
//! which is what a remote terminal expects.
//!
//! When stdin is not a terminal (input from a pipe), nothing is changed: the bytes are sent
//! as read, and the end of the input becomes an end-of-input character for the remote shell
//! (see the tunnel core), so `echo 'uname -a' | …` runs the command and ends.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

/// The size the official client reports when stdout is not a terminal.
const SIZE_WITHOUT_TERMINAL: (u16, u16) = (300, 100);

/// Whether raw mode is on now: the panic hook restores the terminal only then.
static RAW: AtomicBool = AtomicBool::new(false);

/// Raw mode, for as long as this value lives.
pub(super) struct RawMode(());

impl RawMode {
    /// Raw mode on stdin's terminal; `None` when stdin is not a terminal (nothing to do).
    ///
    /// # Errors
    /// The terminal's mode cannot be read or set.
    pub(super) fn enter() -> std::io::Result<Option<Self>> {
        if !std::io::stdin().is_terminal() {
            return Ok(None);
        }
        install_panic_hook();
        crossterm::terminal::enable_raw_mode()?;
        RAW.store(true, Ordering::SeqCst);
        Ok(Some(Self(())))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

fn restore() {
    if RAW.swap(false, Ordering::SeqCst) {
        // Nothing else can be done about a terminal that cannot be restored.
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// A panic prints its message with the terminal restored, not in raw mode (where the lines
/// would stair-step and the user's shell would be left unusable).
fn install_panic_hook() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// The size to report: the terminal's, or the official client's fallback without one.
pub(super) fn size() -> (u16, u16) {
    if std::io::stdout().is_terminal()
        && let Ok((cols, rows)) = crossterm::terminal::size()
        && cols > 0
        && rows > 0
    {
        return (cols, rows);
    }
    SIZE_WITHOUT_TERMINAL
}

/// How often the size is read where no signal announces a change (Windows).
#[cfg(windows)]
const SIZE_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// Calls `send` with the size now, then with every new size, on a task of its own. Must be
/// called within a tokio runtime.
///
/// # Errors
/// The size's changes cannot be watched (Unix: SIGWINCH cannot be handled).
pub(super) fn follow_size(
    mut send: impl FnMut((u16, u16)) + Send + 'static,
) -> std::io::Result<()> {
    let first = size();
    send(first);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut changes = signal(SignalKind::window_change())?;
        tokio::spawn(async move {
            while changes.recv().await.is_some() {
                send(size());
            }
        });
    }
    #[cfg(windows)]
    tokio::spawn(async move {
        let mut last = first;
        let mut ticks = tokio::time::interval(SIZE_POLL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let now = size();
            if now != last {
                last = now;
                send(now);
            }
        }
    });
    Ok(())
}
