//! The simulated-time suite's speed: recycles per second of wall time, for the compound-fault
//! scenario of `tests/simulated.rs` (recycles with skew and stale cells, black holes,
//! throttled resumes with abrupt resets, service-side terminations). Prints numbers, asserts
//! nothing.
//!
//! `cargo bench --profile release -p ssm-tether --bench simulated [-- RECYCLES]` (default
//! 10 000).

#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../tests/sim/mod.rs"]
mod sim;

use std::time::{Duration, Instant};

use sim::{AppSpec, Pair, compound};
use ssm_emulator::sim::SimConfig;
use ssm_tether::tunnel::core::CoreConfig;

fn main() {
    let recycles: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000);
    let defaults = CoreConfig::default();
    let mut config = CoreConfig {
        ping_interval: Duration::from_millis(500),
        pong_timeout: Duration::from_secs(2),
        recovery: ssm_tether::policy::RecoverySettings {
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
            ..defaults.recovery
        },
        ..defaults
    };
    for stripes in [1u8, 4] {
        config.stripes = stripes;
        let sim = SimConfig {
            stale_cell: true,
            ..SimConfig::default()
        };
        let started = Instant::now();
        let mut pair = Pair::new(config.clone(), sim, 42);
        pair.run_for(Duration::from_secs(1));
        for _ in 0..3 * usize::from(stripes) {
            pair.open(AppSpec::stream(4 * 1024));
        }
        let injected = compound(&mut pair, recycles, Duration::from_millis(500), 2_400);
        let wall = started.elapsed();
        let stall = pair
            .apps
            .values()
            .map(|a| a.worst_stall)
            .max()
            .unwrap_or_default()
            .max(injected.retired_stall);
        let bytes: u64 = pair.apps.values().map(|a| a.received).sum();
        println!(
            "simulated, {stripes} session(s): {recycles} recycles ({:.0} s simulated, {} steps, {:.1} MB echoed) in {:.2} s wall = {:.0} recycles/s; worst stall {stall:?}",
            pair.elapsed().as_secs_f64(),
            pair.steps,
            bytes as f64 / 1e6,
            wall.as_secs_f64(),
            recycles as f64 / wall.as_secs_f64(),
        );
    }
}
