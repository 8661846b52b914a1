//! Rate limits per plugin: token buckets for connection opens and log lines.
//!
//! Counts per call (open connections, bytes) do not bound what a plugin does over time: a
//! probe may open and close connections as fast as it can, a hook may log a line per event.
//! A bucket is shared by every instance a plugin gets (a trap and a fresh instance do not
//! refill it), and owned by the plugin's `PluginInstance`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A token bucket: `burst` tokens at most, one more every `every`.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    burst: u32,
    every: Duration,
    tokens: u32,
    /// When the last token was added (or the bucket was last found full).
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(burst: u32, every: Duration, now: Instant) -> Self {
        Self {
            burst,
            every,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        let every = self.every.as_nanos().max(1);
        let earned = elapsed.as_nanos() / every;
        let room = u128::from(self.burst - self.tokens);
        if earned >= room {
            // Full: time spent full earns nothing later.
            self.tokens = self.burst;
            self.last = now;
        } else if earned > 0 {
            // `earned < room <= u32::MAX`, so both conversions are exact.
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            self.tokens += earned;
            self.last += self.every * earned;
        }
    }
}

/// What [`LogGate::admit`] allows.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Write the line; first say that this many lines were dropped before it.
    Write {
        /// Lines dropped since the last one written.
        suppressed: u64,
    },
    /// Drop the line (it is counted).
    Drop,
}

/// A token bucket for log lines that counts what it drops, so the next line written can
/// say how many were lost.
#[derive(Debug)]
pub(crate) struct LogGate {
    bucket: TokenBucket,
    suppressed: u64,
}

impl LogGate {
    /// A gate letting `burst` lines through at once and one more every `every`.
    pub(crate) fn new(burst: u32, every: Duration) -> Self {
        Self {
            bucket: TokenBucket::new(burst, every, Instant::now()),
            suppressed: 0,
        }
    }

    /// Whether a line may be written now.
    pub(crate) fn admit(&mut self, now: Instant) -> Admit {
        if self.bucket.take(now) {
            Admit::Write {
                suppressed: std::mem::take(&mut self.suppressed),
            }
        } else {
            self.suppressed += 1;
            Admit::Drop
        }
    }

    /// Lines dropped and not yet reported (reported when the gate's owner goes away).
    pub(crate) fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

/// `host.log` lines a plugin may write at once…
pub(crate) const LOG_BURST: u32 = 200;
/// …and then one every this long (5 a second, 300 a minute; with lines of at most
/// [`MAX_LOG_LINE`](super::text::MAX_LOG_LINE) bytes, at most about 1.2 MiB a minute).
pub(crate) const LOG_EVERY: Duration = Duration::from_millis(200);
/// Failure reports (trap, timeout, quarantine) logged for one plugin at once…
pub(crate) const FAILURE_LOG_BURST: u32 = 10;
/// …and then one every this long (10 a minute).
pub(crate) const FAILURE_LOG_EVERY: Duration = Duration::from_secs(6);
/// Connections a plugin may open at once through `tunnel-tcp`…
pub(crate) const CONNECT_BURST: u32 = 8;
/// …and then one every this long (4 a second).
pub(crate) const CONNECT_EVERY: Duration = Duration::from_millis(250);

/// The rate limits of one plugin, shared by all its instances.
#[derive(Clone, Debug)]
pub(crate) struct PluginRates {
    /// `host.log` lines.
    pub(crate) log: Arc<Mutex<LogGate>>,
    /// Failure reports written by the host about the plugin.
    pub(crate) failures: Arc<Mutex<LogGate>>,
    /// `tunnel-tcp` connection opens.
    pub(crate) connects: Arc<Mutex<TokenBucket>>,
}

impl Default for PluginRates {
    fn default() -> Self {
        Self {
            log: Arc::new(Mutex::new(LogGate::new(LOG_BURST, LOG_EVERY))),
            failures: Arc::new(Mutex::new(LogGate::new(
                FAILURE_LOG_BURST,
                FAILURE_LOG_EVERY,
            ))),
            connects: Arc::new(Mutex::new(TokenBucket::new(
                CONNECT_BURST,
                CONNECT_EVERY,
                Instant::now(),
            ))),
        }
    }
}

/// Locks a gate; a panic while holding it cannot leave a bucket inconsistent.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(8, Duration::from_millis(250), start);
        assert_eq!((0..20).filter(|_| bucket.take(start)).count(), 8);
        let later = start + Duration::from_millis(600);
        assert_eq!((0..20).filter(|_| bucket.take(later)).count(), 2);
        // The 100 ms left over count towards the next token.
        assert!(bucket.take(later + Duration::from_millis(150)));
        assert!(!bucket.take(later + Duration::from_millis(150)));
        // A long pause refills to the burst, not beyond.
        let much_later = later + Duration::from_secs(3600);
        assert_eq!((0..20).filter(|_| bucket.take(much_later)).count(), 8);
    }

    #[test]
    fn a_gate_counts_dropped_lines_and_reports_them_once() {
        let mut gate = LogGate::new(2, Duration::from_secs(1));
        let now = Instant::now();
        assert_eq!(gate.admit(now), Admit::Write { suppressed: 0 });
        assert_eq!(gate.admit(now), Admit::Write { suppressed: 0 });
        assert_eq!(gate.admit(now), Admit::Drop);
        assert_eq!(gate.admit(now), Admit::Drop);
        let later = now + Duration::from_secs(1);
        assert_eq!(gate.admit(later), Admit::Write { suppressed: 2 });
        assert_eq!(gate.admit(later), Admit::Drop);
        assert_eq!(gate.take_suppressed(), 1);
        assert_eq!(gate.take_suppressed(), 0);
    }
}
