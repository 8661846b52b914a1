//! systemd's notification protocol (`sd_notify`, through the `sd-notify` crate), for
//! `Type=notify` units:
//!
//! * `READY=1` once every listener is bound (tunnels, metrics, control socket), and again
//!   after each reload;
//! * `STATUS=` a one-line summary (`2/3 tunnels forwarding; not forwarding: db (resuming)`)
//!   whenever a tunnel's state changes, at most once a second ([`STATUS_EVERY`]);
//! * `WATCHDOG=1` at half of `WATCHDOG_USEC`, only while the [`Heartbeat`] is fresh, so a
//!   stuck event loop is restarted by systemd;
//! * `RELOADING=1` with `MONOTONIC_USEC` (systemd ≥ 253 wants both, for `Type=notify-reload`)
//!   when a reload begins;
//! * `STOPPING=1` when shutdown begins.
//!
//! Without `NOTIFY_SOCKET` every call does nothing. Datagrams are sent by a thread of their
//! own through a bounded queue, so a service manager that stops reading never stalls a
//! tunnel (a full queue drops the message).

use std::sync::Arc;
use std::time::Duration;

use super::board::Board;
use super::heartbeat::Heartbeat;

/// Shortest time between two `STATUS=` lines; changes in between are coalesced.
pub const STATUS_EVERY: Duration = Duration::from_secs(1);
/// Messages waiting for the sending thread before new ones are dropped.
const QUEUE: usize = 64;

/// One notification.
#[derive(Debug, Clone, PartialEq)]
enum Message {
    Ready { status: String },
    Reloading { monotonic_usec: Option<i128> },
    Stopping,
    Status(String),
    Watchdog,
}

/// Sends notifications to the service manager, if there is one. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    queue: Option<std::sync::mpsc::SyncSender<Message>>,
}

impl Notifier {
    /// A notifier for the service manager named by `NOTIFY_SOCKET`, or one that does
    /// nothing when the variable is unset (not started by systemd).
    pub fn from_env() -> Self {
        if std::env::var_os("NOTIFY_SOCKET").is_none() || cfg!(not(unix)) {
            return Self::default();
        }
        let (queue, messages) = std::sync::mpsc::sync_channel(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("ssm-tether-notify".into())
            .spawn(move || {
                for message in messages {
                    send(&message);
                }
            });
        match spawned {
            Ok(_) => Self { queue: Some(queue) },
            Err(err) => {
                tracing::warn!(error = %err, "cannot start the systemd notifier");
                Self::default()
            }
        }
    }

    /// Whether a service manager listens.
    pub fn is_enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// `READY=1` with a `STATUS=` line.
    pub fn ready(&self, status: &str) {
        self.push(Message::Ready {
            status: one_line(status),
        });
    }

    /// `RELOADING=1` and `MONOTONIC_USEC` (now).
    pub fn reloading(&self) {
        self.push(Message::Reloading {
            monotonic_usec: monotonic_usec(),
        });
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.push(Message::Stopping);
    }

    /// `STATUS=` with `line` (newlines replaced).
    pub fn status(&self, line: &str) {
        self.push(Message::Status(one_line(line)));
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.push(Message::Watchdog);
    }

    fn push(&self, message: Message) {
        if let Some(queue) = &self.queue
            && queue.try_send(message).is_err()
        {
            tracing::debug!("systemd notification dropped: the queue is full");
        }
    }

    /// Pings the watchdog at half of `WATCHDOG_USEC` while `heartbeat` is fresh, if the
    /// service manager asked for it (and `WATCHDOG_PID`, when set, is this process).
    pub fn spawn_watchdog(&self, heartbeat: Heartbeat) {
        if !self.is_enabled() {
            return;
        }
        let Some(interval) = watchdog_interval() else {
            return;
        };
        let period = (interval / 2).max(Duration::from_millis(10));
        tracing::debug!(?interval, "systemd watchdog enabled");
        let notifier = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut stale = false;
            loop {
                ticks.tick().await;
                if heartbeat.is_fresh() {
                    if stale {
                        tracing::warn!("the event loop's heartbeat is fresh again");
                        stale = false;
                    }
                    notifier.watchdog();
                } else if !stale {
                    tracing::error!(age = ?heartbeat.age(),
                        "the event loop's heartbeat is stale; no more watchdog pings");
                    stale = true;
                }
            }
        });
    }

    /// Sends `board`'s summary as `STATUS=` whenever a tunnel's state changes, at most once
    /// per [`STATUS_EVERY`].
    pub fn spawn_status(&self, board: Arc<Board>) {
        if !self.is_enabled() {
            return;
        }
        let notifier = self.clone();
        // Subscribed and read now, so that no change after this call goes unannounced.
        let mut changes = board.changes();
        let mut last = board.summary();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                changes.borrow_and_update();
                let line = board.summary();
                if line != last {
                    notifier.status(&line);
                    last = line;
                }
                tokio::time::sleep(STATUS_EVERY).await;
            }
        });
    }
}

/// A `STATUS=` value is one line.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

#[cfg(unix)]
fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

#[cfg(not(unix))]
fn watchdog_interval() -> Option<Duration> {
    None
}

#[cfg(unix)]
fn monotonic_usec() -> Option<i128> {
    match sd_notify::NotifyState::monotonic_usec_now() {
        Ok(sd_notify::NotifyState::MonotonicUsec(usec)) => Some(usec),
        _ => None,
    }
}

#[cfg(not(unix))]
fn monotonic_usec() -> Option<i128> {
    None
}

#[cfg(unix)]
fn send(message: &Message) {
    use sd_notify::NotifyState;
    let states: Vec<NotifyState<'_>> = match message {
        Message::Ready { status } => vec![NotifyState::Ready, NotifyState::Status(status)],
        Message::Reloading { monotonic_usec } => {
            let mut states = vec![NotifyState::Reloading];
            states.extend(monotonic_usec.map(NotifyState::MonotonicUsec));
            states
        }
        Message::Stopping => vec![NotifyState::Stopping],
        Message::Status(line) => vec![NotifyState::Status(line)],
        Message::Watchdog => vec![NotifyState::Watchdog],
    };
    if let Err(err) = sd_notify::notify(&states) {
        tracing::debug!(error = %err, "systemd notification failed");
    }
}

#[cfg(not(unix))]
fn send(_: &Message) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_notify_socket_nothing_is_sent() {
        let notifier = Notifier::default();
        assert!(!notifier.is_enabled());
        notifier.ready("1/1 tunnels forwarding");
        notifier.status("x");
    }

    #[test]
    fn a_status_line_stays_one_line() {
        assert_eq!(one_line("a\nb\rc"), "a b c");
    }
}
