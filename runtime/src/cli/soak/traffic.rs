//! The soak's traffic through the tunnel to an echo server: every byte is position-dependent
//! pseudo-random data, and every byte that comes back is checked.
//!
//! * long-lived connections streaming chunks of varying sizes at varying pauses,
//! * idle connections that send a little, then say nothing for hours of service time,
//! * one slow reader, which takes bursts in small sips (data waits in the tunnel for it),
//! * a new short connection every second (wall time), of a random size.
//!
//! The echo makes every connection carry data in both directions. Connections that end
//! are reopened; how each one ended goes to the [`Ledger`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::ledger::{Fate, Ledger};

/// Short connections open at once at most; a new one is skipped (and counted) beyond this.
const MAX_SHORT_IN_FLIGHT: usize = 32;
/// How long a connection with bytes outstanding may see nothing come back.
const STALL_LIMIT: Duration = Duration::from_secs(60);
/// How long the end of the run waits for every sent byte to come back.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);
/// The largest read, and the slow reader's sip.
const READ_BUFFER: usize = 64 * 1024;
const SLOW_SIP: usize = 512;

/// What a connection does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// Streams 256 B – 16 KiB chunks every 20–200 ms.
    Long,
    /// Sends 64 B – 4 KiB, then idles 2–6 service hours.
    Idle,
    /// Receives 32 KiB bursts every second in 512-byte sips, 5 ms apart.
    Slow,
    /// Sends 1 B – 64 KiB once, reads it back, closes.
    Short,
}

/// Counters of the traffic, shared by every connection.
#[derive(Default)]
pub(super) struct Counters {
    /// Bytes that came back as they were sent.
    pub(super) verified: AtomicU64,
    /// Bytes that came back different.
    pub(super) corrupted: AtomicU64,
    /// Connections opened.
    pub(super) opened: AtomicU64,
    /// Short connections that completed.
    pub(super) short_completed: AtomicU64,
    /// Short connections not started because too many were open.
    pub(super) short_skipped: AtomicU64,
}

/// The traffic generator.
#[derive(Clone)]
pub(super) struct Traffic {
    /// The tunnel's local end.
    pub(super) local: SocketAddr,
    /// One service hour.
    pub(super) hour: Duration,
    /// Seeds every connection's data and plan.
    pub(super) seed: u64,
    /// Cancelled at the end of the run: writers stop, readers drain.
    pub(super) stop: CancellationToken,
    /// Shared counters.
    pub(super) counters: Arc<Counters>,
    /// Connection fates.
    pub(super) ledger: Arc<Mutex<Ledger>>,
}

impl Traffic {
    /// Runs `long` long-lived, `idle` idle connections, one slow reader and a short
    /// connection per second until [`Self::stop`], then waits for every connection to drain.
    pub(super) async fn run(self, long: u64, idle: u64) {
        let mut tasks = JoinSet::new();
        let persistent = (0..long)
            .map(|_| Kind::Long)
            .chain((0..idle).map(|_| Kind::Idle))
            .chain(std::iter::once(Kind::Slow));
        for (id, kind) in persistent.enumerate() {
            tasks.spawn(self.clone().persistent(kind, id as u64));
        }
        let shorts = Arc::new(Semaphore::new(MAX_SHORT_IN_FLIGHT));
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut serial = 0u64;
        loop {
            tokio::select! {
                () = self.stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let Ok(permit) = shorts.clone().try_acquire_owned() else {
                self.counters.short_skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            serial += 1;
            let traffic = self.clone();
            // Short connections get seeds of their own range, apart from the persistent ones.
            let seed = traffic_seed(self.seed, (1 << 40) | serial);
            tasks.spawn(async move {
                if traffic.one_connection(Kind::Short, seed).await == Some(Fate::ClosedByUs) {
                    traffic
                        .counters
                        .short_completed
                        .fetch_add(1, Ordering::Relaxed);
                }
                drop(permit);
            });
            // Reap finished short connections so the set stays as small as what is open.
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    }

    /// One connection of `kind` after another until the stop.
    async fn persistent(self, kind: Kind, id: u64) {
        let mut generation = 0u64;
        while !self.stop.is_cancelled() {
            let seed = traffic_seed(self.seed, (id << 20) | generation);
            generation += 1;
            if self.one_connection(kind, seed).await != Some(Fate::ClosedByUs) {
                // Let a restarting session come back before reconnecting.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// One connection: writes its plan, checks every echoed byte, and reports its fate to the
    /// ledger (also returned; `None` if it could not connect).
    async fn one_connection(&self, kind: Kind, seed: u64) -> Option<Fate> {
        let socket = match TcpStream::connect(self.local).await {
            Ok(socket) => socket,
            Err(err) => {
                self.ledger().connect_failed(&err);
                return None;
            }
        };
        self.counters.opened.fetch_add(1, Ordering::Relaxed);
        let port = socket.local_addr().map_or(0, |a| a.port());
        let (mut read, write) = socket.into_split();
        let sent = Arc::new(AtomicU64::new(0));
        let write_failed = Arc::new(AtomicBool::new(false));
        let done = self.stop.child_token();
        let writer = tokio::spawn(write_plan(
            write,
            kind,
            seed,
            self.hour,
            sent.clone(),
            write_failed.clone(),
            done.clone(),
        ));
        let mut buf = vec![0u8; READ_BUFFER];
        let mut got = 0u64;
        let mut progress = Instant::now();
        let mut drain_deadline: Option<Instant> = None;
        let fate = loop {
            // Whether the writer is done first, then what it sent: nothing can be added after.
            let written = writer.is_finished() && !write_failed.load(Ordering::SeqCst);
            let outstanding = sent.load(Ordering::SeqCst).saturating_sub(got);
            if self.stop.is_cancelled() && drain_deadline.is_none() {
                drain_deadline = Some(Instant::now() + DRAIN_LIMIT);
            }
            if written && outstanding == 0 {
                break Fate::ClosedByUs;
            }
            if outstanding > 0 && progress.elapsed() > STALL_LIMIT
                || drain_deadline.is_some_and(|d| Instant::now() > d)
            {
                break Fate::Stalled {
                    in_flight: outstanding,
                };
            }
            let want = if kind == Kind::Slow {
                SLOW_SIP
            } else {
                buf.len()
            };
            match tokio::time::timeout(Duration::from_millis(200), read.read(&mut buf[..want]))
                .await
            {
                Err(_) => {}
                Ok(Ok(0) | Err(_)) => {
                    break Fate::EndedEarly {
                        slow_reader: kind == Kind::Slow,
                        in_flight: outstanding,
                    };
                }
                Ok(Ok(n)) => {
                    let wrong = buf[..n]
                        .iter()
                        .enumerate()
                        .filter(|(i, b)| **b != pattern(seed, got + *i as u64))
                        .count() as u64;
                    got += n as u64;
                    progress = Instant::now();
                    self.counters
                        .verified
                        .fetch_add(n as u64 - wrong, Ordering::Relaxed);
                    if wrong > 0 {
                        self.counters.corrupted.fetch_add(wrong, Ordering::Relaxed);
                    }
                    if kind == Kind::Slow {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        };
        done.cancel();
        // The write half is dropped here, with the read half: the connection closes.
        let _ = writer.await;
        self.ledger().traffic_ended(port, fate);
        Some(fate)
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Writes `kind`'s chunks until `done` (a short connection: one chunk). Returns the write
/// half so that the connection stays open until its reader is finished with it.
async fn write_plan(
    mut write: tokio::net::tcp::OwnedWriteHalf,
    kind: Kind,
    seed: u64,
    hour: Duration,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicBool>,
    done: CancellationToken,
) -> tokio::net::tcp::OwnedWriteHalf {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut buf = Vec::new();
    let mut at = 0u64;
    while !done.is_cancelled() {
        let size = match kind {
            Kind::Long => rng.random_range(256..=16 * 1024),
            Kind::Idle => rng.random_range(64..=4 * 1024),
            Kind::Slow => 32 * 1024,
            Kind::Short => rng.random_range(1..=64 * 1024),
        };
        buf.clear();
        buf.extend((0..size as u64).map(|i| pattern(seed, at + i)));
        let write_all = tokio::select! {
            () = done.cancelled() => break,
            result = write.write_all(&buf) => result,
        };
        if write_all.is_err() {
            failed.store(true, Ordering::SeqCst);
            break;
        }
        at += size as u64;
        sent.store(at, Ordering::SeqCst);
        let pause = match kind {
            Kind::Long => Duration::from_millis(rng.random_range(20..=200)),
            Kind::Idle => hour.mul_f64(rng.random_range(2.0..=6.0)),
            Kind::Slow => Duration::from_secs(1),
            Kind::Short => break,
        };
        tokio::select! {
            () = done.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
    write
}

/// A connection's seed: the run's seed in the high bits, the connection's number below.
fn traffic_seed(run: u64, connection: u64) -> u64 {
    run.rotate_left(48) ^ connection
}

/// Pseudo-random, position-dependent bytes: any loss, duplication or reordering shows.
fn pattern(seed: u64, at: u64) -> u8 {
    let x = at.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
    (x >> 29) as u8
}
