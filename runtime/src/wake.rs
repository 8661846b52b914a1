//! Noticing that the machine slept or moved networks, so that tunnels resume at once.
//!
//! A laptop that wakes from sleep has WebSockets that look open but lead nowhere: the NAT
//! entries and often the local address behind them are gone. Left alone, each socket is
//! declared dead only when its pong deadline passes (30 s by default) — and on Linux and macOS
//! the monotonic clock that deadline is measured on does not even advance while the machine
//! sleeps. So one process-wide thread watches for the signs instead:
//!
//! * a one-second sleep that returns far too late (the process was stopped or starved),
//! * the wall clock running ahead of the monotonic clock (the machine was suspended),
//! * a non-loopback address of the machine disappearing, or an IPv4 one appearing.
//!
//! Each sign bumps a generation in a [`watch`] channel; every tunnel subscribes and treats a
//! new generation as "every socket is suspect": online sessions resume now, sessions waiting
//! out a backoff try now. A false alarm costs one resume, which loses no byte.
//!
//! New IPv6 addresses alone are ignored on purpose: hosts with privacy extensions add a
//! temporary address every few hours without any socket breaking.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

/// How often the watcher looks at the clocks.
pub const TICK: Duration = Duration::from_secs(1);
/// How many ticks between two looks at the machine's addresses.
const ADDRESS_EVERY: u32 = 2;
/// A tick this much later than asked, or a wall clock this much ahead of the monotonic
/// one, counts as a sleep. Large enough that a busy machine or an NTP slew never trips it.
pub const SLEEP_THRESHOLD: Duration = Duration::from_secs(4);

/// Why the watcher thinks the sockets are suspect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// The process did not run for this long (stopped, or the machine suspended).
    Slept(Duration),
    /// The machine's network addresses changed.
    NetworkChanged(String),
}

impl std::fmt::Display for Wake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Slept(gap) => write!(
                f,
                "the process did not run for {} (sleep or stop); sockets are presumed dead",
                humantime::format_duration(Duration::from_secs(gap.as_secs().max(1)))
            ),
            Self::NetworkChanged(what) => {
                write!(f, "the network changed ({what}); sockets are presumed dead")
            }
        }
    }
}

/// One sign, numbered: tunnels act on every new number once.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WakeSignal {
    /// Increases with every sign; 0 before the first.
    pub generation: u64,
    /// The latest sign.
    pub wake: Option<Wake>,
}

/// The clock half of the watcher, without I/O: fed the two clocks at every tick.
#[derive(Debug)]
pub struct ClockWatch {
    last: (Instant, SystemTime),
    tick: Duration,
}

impl ClockWatch {
    /// Starts from the clocks' readings now.
    pub fn new(mono: Instant, wall: SystemTime, tick: Duration) -> Self {
        Self {
            last: (mono, wall),
            tick,
        }
    }

    /// The clocks after one more tick; returns how long the process was away, if it was.
    pub fn observe(&mut self, mono: Instant, wall: SystemTime) -> Option<Duration> {
        let (last_mono, last_wall) = std::mem::replace(&mut self.last, (mono, wall));
        let mono_gap = mono.saturating_duration_since(last_mono);
        // A wall clock set backwards is no sleep; treat it as no time passing.
        let wall_gap = wall.duration_since(last_wall).unwrap_or_default();
        let late = mono_gap.saturating_sub(self.tick);
        // Suspended: the monotonic clock stood still while the wall clock went on.
        let hidden = wall_gap.saturating_sub(mono_gap);
        let away = late.max(hidden);
        (away >= SLEEP_THRESHOLD).then_some(mono_gap.max(wall_gap))
    }
}

/// The address half of the watcher, without I/O: fed the machine's addresses.
#[derive(Debug, Default)]
pub struct AddressWatch {
    known: Option<BTreeSet<IpAddr>>,
}

impl AddressWatch {
    /// The machine's addresses now; returns what changed, if it matters to open sockets.
    pub fn observe(&mut self, addresses: impl IntoIterator<Item = IpAddr>) -> Option<String> {
        let now: BTreeSet<IpAddr> = addresses
            .into_iter()
            .filter(|ip| !ip.is_loopback() && !is_link_local(ip))
            .collect();
        let before = self.known.replace(now.clone())?;
        let gone: Vec<String> = before.difference(&now).map(IpAddr::to_string).collect();
        let new_v4: Vec<String> = now
            .difference(&before)
            .filter(|ip| ip.is_ipv4())
            .map(IpAddr::to_string)
            .collect();
        match (gone.is_empty(), new_v4.is_empty()) {
            (true, true) => None,
            (false, true) => Some(format!("{} went away", gone.join(", "))),
            (true, false) => Some(format!("{} appeared", new_v4.join(", "))),
            (false, false) => Some(format!(
                "{} went away, {} appeared",
                gone.join(", "),
                new_v4.join(", ")
            )),
        }
    }
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Subscribes to the process-wide watcher, starting it on first use. Set
/// `SSM_TETHER_NO_WAKE_WATCH=1` to do without it (the pong deadline still applies).
pub fn subscribe() -> watch::Receiver<WakeSignal> {
    static SIGNAL: OnceLock<watch::Sender<WakeSignal>> = OnceLock::new();
    SIGNAL
        .get_or_init(|| {
            let (tx, _) = watch::channel(WakeSignal::default());
            let disabled = std::env::var_os("SSM_TETHER_NO_WAKE_WATCH").is_some_and(|v| v == "1");
            if !disabled {
                let sender = tx.clone();
                // A thread, not a task: it must not belong to one runtime, and a thread that
                // oversleeps is exactly what it measures.
                let spawned = std::thread::Builder::new()
                    .name("ssm-tether-wake".into())
                    .spawn(move || watch_forever(&sender));
                if let Err(err) = spawned {
                    tracing::warn!(error = %err, "cannot start the sleep/network watcher");
                }
            }
            tx
        })
        .subscribe()
}

fn watch_forever(signal: &watch::Sender<WakeSignal>) {
    let mut clocks = ClockWatch::new(Instant::now(), SystemTime::now(), TICK);
    let mut addresses = AddressWatch::default();
    let mut ticks = 0u32;
    loop {
        std::thread::sleep(TICK);
        let mut wake = clocks
            .observe(Instant::now(), SystemTime::now())
            .map(Wake::Slept);
        if ticks.is_multiple_of(ADDRESS_EVERY) || wake.is_some() {
            match if_addrs::get_if_addrs() {
                Ok(list) => {
                    if let Some(change) = addresses.observe(list.iter().map(|i| i.ip())) {
                        wake.get_or_insert(Wake::NetworkChanged(change));
                    }
                }
                // Not fatal: the clocks still work; say it once in a while at most.
                Err(err) if ticks.is_multiple_of(3600) => {
                    tracing::debug!(error = %err, "cannot list the machine's addresses");
                }
                Err(_) => {}
            }
        }
        ticks = ticks.wrapping_add(1);
        if let Some(wake) = wake {
            tracing::info!(%wake, "resuming every tunnel now");
            signal.send_modify(|s| {
                s.generation += 1;
                s.wake = Some(wake);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn a_tick_on_time_or_a_little_late_is_no_sleep() {
        let (m, w) = (Instant::now(), SystemTime::now());
        let mut clocks = ClockWatch::new(m, w, TICK);
        let step = Duration::from_millis(1_900);
        assert_eq!(clocks.observe(m + TICK, w + TICK), None);
        assert_eq!(clocks.observe(m + TICK + step, w + TICK + step), None);
    }

    #[test]
    fn a_stopped_process_wakes_late_on_both_clocks() {
        let (m, w) = (Instant::now(), SystemTime::now());
        let mut clocks = ClockWatch::new(m, w, TICK);
        let gap = Duration::from_secs(40);
        assert_eq!(clocks.observe(m + gap, w + gap), Some(gap));
        // The next tick is on time again.
        assert_eq!(clocks.observe(m + gap + TICK, w + gap + TICK), None);
    }

    #[test]
    fn a_suspend_shows_as_wall_time_the_monotonic_clock_did_not_see() {
        let (m, w) = (Instant::now(), SystemTime::now());
        let mut clocks = ClockWatch::new(m, w, TICK);
        let hour = Duration::from_secs(3600);
        assert_eq!(clocks.observe(m + TICK, w + hour), Some(hour));
    }

    #[test]
    fn a_wall_clock_set_back_is_no_sleep() {
        let (m, w) = (Instant::now(), SystemTime::now());
        let mut clocks = ClockWatch::new(m, w, TICK);
        let back = w.checked_sub(Duration::from_secs(600)).expect("time");
        assert_eq!(clocks.observe(m + TICK, back), None);
    }

    #[test]
    fn the_first_look_at_the_addresses_only_learns_them() {
        let mut watch = AddressWatch::default();
        assert_eq!(watch.observe([ip("192.168.1.5"), ip("127.0.0.1")]), None);
        assert_eq!(watch.observe([ip("192.168.1.5")]), None);
    }

    #[test]
    fn an_address_that_goes_away_or_a_new_ipv4_one_is_a_change() {
        let mut watch = AddressWatch::default();
        watch.observe([ip("192.168.1.5"), ip("2001:db8::5")]);
        let change = watch.observe([ip("2001:db8::5")]).expect("a change");
        assert!(change.contains("192.168.1.5 went away"), "{change}");
        let change = watch
            .observe([ip("10.0.0.7"), ip("2001:db8::5")])
            .expect("a change");
        assert!(change.contains("10.0.0.7 appeared"), "{change}");
    }

    #[test]
    fn new_ipv6_loopback_and_link_local_addresses_are_not_a_change() {
        let mut watch = AddressWatch::default();
        watch.observe([ip("192.168.1.5")]);
        let more = [
            ip("192.168.1.5"),
            ip("2001:db8::77"),
            ip("fe80::1"),
            ip("169.254.3.4"),
            ip("127.0.0.2"),
        ];
        assert_eq!(watch.observe(more), None);
        // Link-local and loopback addresses going away do not matter either.
        assert_eq!(watch.observe([ip("192.168.1.5"), ip("2001:db8::77")]), None);
    }
}
