//! Proof that the event loop runs: a task beats every second; `/healthz` and the systemd
//! watchdog trust the process only while the last beat is recent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the heartbeat task beats.
pub const BEAT_EVERY: Duration = Duration::from_secs(1);

/// A beat older than this means the event loop is stuck (or starved): `/healthz` answers 503
/// and watchdog pings stop.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// The time of the last beat. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    origin: Instant,
    /// Milliseconds from `origin` to the last beat.
    last: Arc<AtomicU64>,
}

impl Heartbeat {
    /// Starts beating on the current tokio runtime, every [`BEAT_EVERY`], until the runtime
    /// shuts down.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start() -> Self {
        let heartbeat = Self::stopped();
        let beating = heartbeat.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(BEAT_EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                beating.beat();
            }
        });
        heartbeat
    }

    /// A heartbeat that beat once, now, and beats again only when [`beat`](Self::beat) is
    /// called (tests).
    pub fn stopped() -> Self {
        Self {
            origin: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records a beat now.
    pub fn beat(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }

    /// Whether the last beat is younger than [`STALE_AFTER`].
    pub fn is_fresh(&self) -> bool {
        self.age() < STALE_AFTER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_is_fresh_after_a_beat_and_ages_from_it() {
        let heartbeat = Heartbeat::stopped();
        assert!(heartbeat.is_fresh());
        std::thread::sleep(Duration::from_millis(20));
        assert!(heartbeat.age() >= Duration::from_millis(20));
        heartbeat.beat();
        assert!(heartbeat.age() < Duration::from_millis(20));
    }
}
