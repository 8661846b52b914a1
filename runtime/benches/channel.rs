//! The reliable channel alone (`runtime/src/channel`, sans-IO): a client channel and an agent
//! channel wired back to back in simulated time, with no socket, runtime or emulator between
//! them. Prints numbers, asserts nothing.
//!
//! `cargo bench --profile release -p ssm-tether --bench channel [-- MESSAGES]` (default
//! 200 000 per run).
//!
//! What one run measures: MESSAGES data messages of 1024 bytes (the agent's largest) sent by
//! the client, each encoded with its SHA-256 digest, decoded and verified by the agent,
//! delivered in order and acknowledged with a JSON ack that the client decodes in turn — the
//! whole per-message work of a data channel except the WebSocket. Frames of both directions
//! are dropped independently with the given probability; simulated time advances 1 ms per
//! round, so retransmission timers and loss detection run exactly as they would on a socket,
//! but the wall time is spent on the channels' own work. The figure is messages delivered per
//! second of wall time: what one core can push through a channel pair, far above what the
//! agent's pacing (1024 B per ms, 1 000 messages/s per session) ever asks of it.

#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use ssm_tether::channel::{Channel, ChannelConfig, ChannelEvent, Role};
use ssm_tether::protocol::PayloadType;

/// Messages offered to the client channel per round (1 ms of simulated time): 64 MiB/s of
/// simulated traffic, enough to keep the send window busy without dwarfing it.
const PER_ROUND: usize = 64;

/// Runs of each loss rate; the median is reported.
const SAMPLES: usize = 5;

/// A small deterministic generator, so that every run drops the same frames.
struct XorShift(u64);

impl XorShift {
    fn chance(&mut self, probability: f64) -> bool {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64 <= probability
    }
}

struct Run {
    wall: Duration,
    simulated: Duration,
    retransmitted: u64,
    duplicates: u64,
    lost_frames: u64,
}

fn run(messages: u64, loss: f64, seed: u64) -> Run {
    let start = Instant::now();
    let unix_ms = 1_700_000_000_000;
    let mut client = Channel::new(ChannelConfig::default(), start, unix_ms);
    let mut agent = Channel::new(
        ChannelConfig {
            role: Role::Agent,
            ..ChannelConfig::default()
        },
        start,
        unix_ms,
    );
    client.on_connected(start);
    agent.on_connected(start);
    let payload = Bytes::from(vec![0x5a_u8; 1024]);
    let mut rng = XorShift(seed | 1);
    let (mut now, mut sent, mut delivered, mut lost_frames) = (start, 0u64, 0u64, 0u64);
    let wall = Instant::now();
    while delivered < messages {
        // A stuck pair would be a bug in the channel; print what was reached instead of
        // spinning for ever.
        if now - start > Duration::from_secs(3600) {
            eprintln!(
                "gave up after an hour of simulated time: {delivered} of {messages} delivered"
            );
            break;
        }
        for _ in 0..PER_ROUND {
            if sent == messages || client.send_capacity() == 0 {
                break;
            }
            client
                .send(PayloadType::OUTPUT, payload.clone(), now)
                .unwrap();
            sent += 1;
        }
        while let Some(frame) = client.poll_transmit() {
            if rng.chance(loss) {
                lost_frames += 1;
            } else {
                // An error would be a frame the channel itself wrote: worth seeing, not fatal.
                if let Err(error) = agent.handle_frame(frame, now) {
                    eprintln!("agent refused a frame: {error}");
                }
            }
        }
        while let Some(event) = agent.poll_event() {
            if let ChannelEvent::Message(message) = event {
                // The sequence number doubles as a check of in-order, exactly-once delivery.
                if message.sequence_number != delivered as i64 {
                    eprintln!(
                        "out of order: got seq {}, expected {delivered}",
                        message.sequence_number
                    );
                }
                delivered += 1;
            }
        }
        while let Some(frame) = agent.poll_transmit() {
            if rng.chance(loss) {
                lost_frames += 1;
            } else if let Err(error) = client.handle_frame(frame, now) {
                eprintln!("client refused a frame: {error}");
            }
        }
        now += Duration::from_millis(1);
        for channel in [&mut client, &mut agent] {
            if channel.poll_timeout().is_some_and(|at| at <= now) {
                channel.handle_timeout(now);
            }
        }
    }
    Run {
        wall: wall.elapsed(),
        simulated: now - start,
        retransmitted: client.stats().retransmitted,
        duplicates: agent.stats().duplicates,
        lost_frames,
    }
}

fn main() {
    // `cargo bench` passes harness flags (e.g. --bench); the first number is MESSAGES.
    let messages: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    for loss in [0.0, 0.01, 0.05] {
        let mut runs: Vec<Run> = (0..SAMPLES as u64)
            .map(|i| run(messages, loss, 0x9e37_79b9_7f4a_7c15 ^ i))
            .collect();
        runs.sort_by_key(|r| r.wall);
        let rates: Vec<f64> = runs
            .iter()
            .map(|r| messages as f64 / r.wall.as_secs_f64())
            .collect();
        let median = &runs[runs.len() / 2];
        let rate = rates[rates.len() / 2];
        println!(
            "channel pair, loss {:>2.0} % each way: {messages} x 1024 B, median of {SAMPLES}: {:.0} msg/s ({:.1} MB/s payload, {:.2} us/msg; range {:.0}..{:.0} msg/s); \
             lost frames {}, retransmitted {}, duplicates at the agent {}, simulated {:.1} s",
            loss * 100.0,
            rate,
            rate * 1024.0 / 1e6,
            1e6 / rate,
            rates[rates.len() - 1],
            rates[0],
            median.lost_frames,
            median.retransmitted,
            median.duplicates,
            median.simulated.as_secs_f64(),
        );
    }
}
