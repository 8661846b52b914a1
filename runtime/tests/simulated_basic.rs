//! Basic mode (agents up to 3.0.196.0) with a listener, in simulated time. Basic mode has no
//! stream ids and no end marker (docs/protocol.md §6.3): bytes the agent sent for one local
//! connection cannot be told apart from bytes for the next. So a session carries one
//! connection in its life, a fresh one (started as soon as the previous one was taken) takes
//! the next, and a used session ends once what its connection sent is acknowledged
//! (docs/design.md §7).

mod sim;

use std::time::Duration;

use sim::{AppSpec, Pair};
use ssm_emulator::sim::SimConfig;
use ssm_tether::events::{CloseReason, EventKind};
use ssm_tether::tunnel::core::CoreConfig;

fn config() -> CoreConfig {
    let defaults = CoreConfig::default();
    CoreConfig {
        ping_interval: Duration::from_millis(500),
        pong_timeout: Duration::from_secs(2),
        recovery: ssm_tether::policy::RecoverySettings {
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
            ..defaults.recovery
        },
        ..defaults
    }
}

/// An old agent: basic mode. Paced like the real agent, so that its echo lags behind.
fn sim() -> SimConfig {
    SimConfig {
        agent_version: "3.0.0.0".into(),
        pacing: Duration::from_millis(1),
        stale_cell: true,
        ..SimConfig::default()
    }
}

fn forwarding(pair: &Pair) -> usize {
    pair.count_events(|e| matches!(e, EventKind::Forwarding { .. }))
}

#[test]
fn bytes_in_flight_for_a_closed_connection_never_reach_the_next_one() {
    let mut pair = Pair::new(config(), sim(), 1);
    assert!(pair.run_until_cond(Duration::from_secs(5), |p| forwarding(p) == 1));
    // The first application sends 100 KiB at once; the agent echoes it at 1 KiB per ms.
    let total = 100 * 1024;
    let first = pair.open(AppSpec {
        chunk: total as usize,
        ..AppSpec::short(1, total)
    });
    pair.run_for(Duration::from_millis(30));
    assert_eq!(pair.apps[&first].sent, total);
    assert!(
        pair.apps[&first].received < total,
        "the echo is still on its way"
    );
    // It closes with most of its echo still to come, and the next application connects at
    // once (to the same port: it may be another local user).
    pair.close_app(first);
    let second = pair.open(AppSpec::stream(32 * 1024));
    pair.run_for(Duration::from_secs(5));
    let app = &pair.apps[&second];
    assert!(
        !app.corrupted,
        "the first connection's bytes reached the second"
    );
    assert!(app.received > 0, "the second connection carries nothing");
    let sessions = pair.world.sessions();
    // What the first sent reached the agent before its session was ended.
    assert_eq!(sessions[0].agent_received, total);
    assert!(!sessions[0].active, "the used session was not ended");
    assert!(sessions[1].active && sessions[1].agent_received > 0);
    // The second connection is on the fresh session, which started its own spare.
    assert_eq!(sessions.len(), 3);
    assert_eq!(pair.core.status().restarts, 0);
    pair.stop_writing();
    assert!(pair.run_until_cond(Duration::from_secs(10), |p| {
        p.apps[&second].received == p.apps[&second].sent
    }));
    assert!(!pair.apps[&second].corrupted);
}

#[test]
fn connections_one_after_another_each_get_a_fresh_session_through_recycles() {
    let mut pair = Pair::new(config(), sim(), 2);
    let mut done = Vec::new();
    for round in 0..20u32 {
        let id = pair.open(AppSpec {
            chunk: 4 * 1024,
            every: Duration::from_millis(10),
            ..AppSpec::short(1, 40 * 1024)
        });
        // A planned recycle of every session in the middle of some transfers.
        if round % 3 == 0 {
            pair.run_for(Duration::from_millis(40));
            let now = pair.now;
            for session in pair.active_sessions() {
                pair.world.recycle(now, &session, Duration::from_millis(20));
            }
        }
        assert!(
            pair.run_until_cond(Duration::from_secs(20), |p| p.apps[&id].closed.is_some()),
            "connection {round} did not finish"
        );
        done.push(id);
    }
    for id in &done {
        let app = &pair.apps[id];
        assert!(!app.corrupted, "connection {id:?}: bytes corrupted");
        assert_eq!(app.received, app.sent, "connection {id:?}");
        assert_eq!(app.closed, Some(CloseReason::ClientClosed));
    }
    // One session per connection, plus the spare for the next; every used one ended.
    pair.run_for(Duration::from_secs(1));
    assert_eq!(pair.world.stats().started, 21);
    assert_eq!(pair.active_sessions().len(), 1);
    assert_eq!(pair.core.status().restarts, 0);
    assert!(pair.core.status().resumes > 0);
    let ended = pair.count_events(|e| matches!(e, EventKind::SessionEnded { .. }));
    assert_eq!(ended, 20);
}

#[test]
fn a_second_connection_is_served_while_the_first_stays_open() {
    let mut pair = Pair::new(config(), sim(), 3);
    let first = pair.open(AppSpec::stream(16 * 1024));
    pair.run_for(Duration::from_secs(1));
    // The first holds its session; the second gets the spare started for it.
    let second = pair.open(AppSpec::stream(16 * 1024));
    pair.run_for(Duration::from_secs(3));
    for id in [first, second] {
        assert!(pair.apps[&id].received > 16 * 1024, "{id:?} is not served");
    }
    pair.stop_writing();
    assert!(pair.run_until_cond(Duration::from_secs(10), |p| {
        p.apps.values().all(|a| a.received == a.sent)
    }));
    assert!(
        pair.apps
            .values()
            .all(|a| !a.corrupted && a.closed.is_none())
    );
    // Two sessions carry one connection each, and a third waits for the next.
    assert_eq!(pair.active_sessions().len(), 3);
}

#[test]
fn shutdown_ends_the_used_session_its_spare_and_stops() {
    let mut pair = Pair::new(config(), sim(), 4);
    let first = pair.open(AppSpec::stream(16 * 1024));
    pair.run_for(Duration::from_secs(2));
    assert!(pair.apps[&first].received > 0);
    assert_eq!(pair.active_sessions().len(), 2);
    let now = pair.now;
    pair.core.shutdown(now);
    pair.perform();
    assert!(pair.run_until_cond(Duration::from_secs(20), |p| p.core.stopped().is_some()));
    assert!(
        pair.active_sessions().is_empty(),
        "a session was left behind"
    );
    assert_eq!(pair.core.poll_timeout(), None);
}
