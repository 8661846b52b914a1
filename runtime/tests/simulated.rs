//! Whole-tunnel tests in simulated time: the sans-IO tunnel core against the emulator's
//! sans-IO service and agent (see `sim/mod.rs`), with simulated applications streaming
//! checksummed bytes through the tunnel. Every run is a pure function of its seed, and an
//! hour of faults takes a fraction of a second.
//!
//! Stall bound (docs/design.md §5): an application waits for its echo at most as long as the
//! fault lasts, plus the time to notice it (`pong_timeout` for a silent socket, at once for
//! a close), plus the backoff the policy chose (at most `max_delay`), plus the agent's
//! head-only retransmission of what it sent into the outage (about a second at these rates).

mod sim;

use std::time::Duration;

use sim::{AppSpec, Pair, compound};
use ssm_emulator::sim::{SimApiError, SimConfig};
use ssm_tether::events::{Cause, CloseReason, EventKind, SessionRole};
use ssm_tether::policy::{RotationSettings, SlowReaderSettings};
use ssm_tether::recovery::Decision;
use ssm_tether::tunnel::core::{ConnId, CoreConfig, PolicyAnswer};

const PONG_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_DELAY: Duration = Duration::from_secs(1);
/// Retransmission of what the agent sent into an outage, and the round trips of a resume.
const RECOVERY_SLACK: Duration = Duration::from_millis(1500);

fn config() -> CoreConfig {
    let defaults = CoreConfig::default();
    CoreConfig {
        ping_interval: Duration::from_millis(500),
        pong_timeout: PONG_TIMEOUT,
        recovery: ssm_tether::policy::RecoverySettings {
            base_delay: Duration::from_millis(50),
            max_delay: MAX_DELAY,
            ..defaults.recovery
        },
        ..defaults
    }
}

fn sim() -> SimConfig {
    SimConfig {
        stale_cell: true,
        ..SimConfig::default()
    }
}

/// Every application still open got back every byte it sent, unchanged.
fn assert_intact(pair: &mut Pair) {
    pair.stop_writing();
    let drained = pair.run_until_cond(Duration::from_secs(120), |p| {
        p.apps
            .values()
            .filter(|a| a.closed.is_none() && a.spec.reads)
            .all(|a| a.received == a.sent)
    });
    for (id, app) in &pair.apps {
        assert!(
            !app.corrupted,
            "connection {id}: bytes corrupted or reordered"
        );
        if app.closed.is_none() && app.spec.reads {
            assert_eq!(
                app.received, app.sent,
                "connection {id}: {} of {} bytes came back (drained: {drained})",
                app.received, app.sent
            );
        }
    }
}

fn worst_stall(pair: &Pair) -> (Duration, Option<ConnId>) {
    pair.apps
        .iter()
        .map(|(id, a)| (a.worst_stall, Some(*id)))
        .max()
        .unwrap_or((Duration::ZERO, None))
}

#[test]
fn ten_thousand_recycles_with_compound_faults_lose_and_reorder_nothing() {
    let started = std::time::Instant::now();
    let mut pair = Pair::new(config(), sim(), 42);
    pair.run_for(Duration::from_secs(1));
    // Three long-lived connections, each with data in flight at every moment; modest rates
    // keep hours of simulated traffic cheap to check.
    for _ in 0..3 {
        pair.open(AppSpec::stream(4 * 1024));
    }
    let injected = compound(&mut pair, 10_000, Duration::from_millis(500), 2_400);
    assert_intact(&mut pair);
    let (stall, conn) = worst_stall(&pair);
    let stall = stall.max(injected.retired_stall);
    let resumes = pair.core.status().resumes;
    let restarts = pair.core.status().restarts;
    let wall = started.elapsed();
    println!(
        "10 000 recycles in {:?} simulated, {wall:?} wall ({:.0} recycles/s): {resumes} \
         resumes, {restarts} restarts, worst stall {stall:?} (connection {conn:?})",
        pair.elapsed(),
        10_000.0 / wall.as_secs_f64(),
    );
    assert!(resumes >= 10_000, "{resumes} resumes");
    assert_eq!(
        restarts, injected.terminations,
        "one restart per service-side termination, no other"
    );
    assert!(injected.terminations >= 4);
    let bound = injected.worst_fault + PONG_TIMEOUT + MAX_DELAY + RECOVERY_SLACK;
    assert!(stall <= bound, "worst stall {stall:?} exceeds {bound:?}");
    let unexpected: Vec<_> = pair
        .apps
        .values()
        .filter_map(|a| a.closed)
        .filter(|r| *r != CloseReason::SessionRestarted)
        .collect();
    assert!(unexpected.is_empty(), "connections closed: {unexpected:?}");
}

#[test]
fn planned_closes_resume_at_once_however_often_they_come() {
    let mut pair = Pair::new(config(), sim(), 7);
    pair.run_for(Duration::from_secs(1));
    pair.open(AppSpec::stream(16 * 1024));
    // Far more often than stable_after (60 s): the old driver counted every recycle as a
    // further attempt of one outage and backed off more and more.
    for _ in 0..2_000 {
        pair.run_for(Duration::from_millis(250));
        let now = pair.now;
        for id in pair.active_sessions() {
            pair.world.recycle(now, &id, Duration::from_millis(50));
        }
    }
    let outages: Vec<Duration> = pair
        .events
        .iter()
        .filter_map(|(_, e)| match &e.kind {
            EventKind::Resumed { outage } => Some(*outage),
            _ => None,
        })
        .collect();
    assert!(outages.len() >= 1_900, "{} resumes", outages.len());
    let longest = outages.iter().max().copied().unwrap_or_default();
    // Two API round trips and a connect: no backoff at all.
    assert!(
        longest <= Duration::from_millis(200),
        "a planned resume took {longest:?}"
    );
    let delayed = pair.count_events(|e| matches!(e, EventKind::AttemptFailed { .. }));
    assert_eq!(delayed, 0, "no attempt of a planned resume failed");
    assert_intact(&mut pair);
}

#[test]
fn unplanned_failures_back_off_on_their_own_count_between_planned_closes() {
    let mut pair = Pair::new(config(), sim(), 9);
    pair.run_for(Duration::from_secs(1));
    pair.open(AppSpec::stream(8 * 1024));
    for round in 0..200 {
        pair.run_for(Duration::from_millis(500));
        let now = pair.now;
        let Some(id) = pair.active_sessions().first().cloned() else {
            continue;
        };
        // A fault only while the tunnel is up, so that each outage has its own faults.
        if pair.world.client_of(&id).is_none() {
            continue;
        }
        if round % 2 == 0 {
            pair.world.recycle(now, &id, Duration::ZERO);
        } else {
            pair.world.fail_resumes(&[SimApiError::Throttling; 2]);
            pair.world.reset_client(now, &id);
        }
    }
    // Each unplanned outage continues only the previous unplanned one's two failed attempts
    // (flapping: they are less than stable_after apart), so its three delays are drawn below
    // base·2^2, base·2^3 and base·2^4 (1.4 s with base 50 ms) — however long this goes on,
    // and whatever the planned closes in between do.
    let outages: Vec<Duration> = pair
        .events
        .iter()
        .filter_map(|(_, e)| match &e.kind {
            EventKind::Resumed { outage } => Some(*outage),
            _ => None,
        })
        .collect();
    let worst = outages.iter().max().copied().unwrap_or_default();
    assert!(
        worst < Duration::from_millis(1500),
        "an outage took {worst:?}"
    );
    let late = &outages[outages.len() - 40..];
    let late_worst = late.iter().max().copied().unwrap_or_default();
    assert!(
        late_worst < Duration::from_millis(1500),
        "outages grew: {late_worst:?} late in the run"
    );
    assert_eq!(
        pair.core.status().restarts,
        0,
        "a session that resumes is never replaced"
    );
    assert_intact(&mut pair);
}

#[test]
fn a_reconnect_policy_decides_every_step_and_a_failing_one_falls_back() {
    let mut pair = Pair::new(config(), sim(), 11);
    pair.core.set_reconnect_plugin(true);
    let mut asked = 0u32;
    pair.policy = Some(Box::new(move |context| {
        asked += 1;
        if asked.is_multiple_of(5) {
            return PolicyAnswer::Failed(ssm_tether::plugin::CallFailure {
                plugin: "sim-policy".into(),
                reason: "trapped".into(),
                quarantined: false,
            });
        }
        match context.cause {
            Cause::SessionGone(_) | Cause::MaxDurationReached => {
                PolicyAnswer::Decided(Decision::Restart {
                    after: Duration::from_millis(10),
                })
            }
            _ => PolicyAnswer::Decided(Decision::Resume {
                after: Duration::from_millis(5 * u64::from(context.attempt)),
            }),
        }
    }));
    pair.run_for(Duration::from_secs(1));
    pair.open(AppSpec::stream(16 * 1024));
    let injected = compound(&mut pair, 500, Duration::from_secs(1), 0);
    let (stall, _) = worst_stall(&pair);
    let bound = injected.worst_fault + PONG_TIMEOUT + MAX_DELAY + RECOVERY_SLACK;
    assert!(stall <= bound, "worst stall {stall:?} exceeds {bound:?}");
    let fallbacks = pair.count_events(|e| matches!(e, EventKind::PluginFailed { .. }));
    assert!(fallbacks >= 50, "{fallbacks} fallbacks");
    assert!(pair.core.status().resumes >= 400);
    assert_intact(&mut pair);
    assert!(pair.apps.values().all(|a| a.closed.is_none()));
}

#[test]
fn a_slow_reader_is_closed_alone_and_the_others_keep_flowing() {
    let mut config = config();
    config.slow_reader = SlowReaderSettings {
        buffer: 1 << 20,
        tunnel_buffer: 4 << 20,
        timeout: Duration::from_secs(60),
    };
    let mut pair = Pair::new(config, sim(), 3);
    pair.run_for(Duration::from_secs(1));
    let slow = pair.open(AppSpec {
        chunk: 64 * 1024,
        every: Duration::from_millis(10),
        reads: false,
        total: 32 << 20,
        close_when_done: false,
    });
    let live = pair.open(AppSpec::stream(16 * 1024));
    pair.run_for(Duration::from_secs(20));
    assert_eq!(pair.apps[&slow].closed, Some(CloseReason::SlowReader));
    assert!(pair.apps[&live].closed.is_none());
    assert!(
        pair.apps[&live].worst_stall < Duration::from_millis(500),
        "the live connection stalled {:?}",
        pair.apps[&live].worst_stall
    );
    assert_eq!(pair.core.status().slow_reader_closes, 1);
    assert_intact(&mut pair);
}

#[test]
fn a_reader_that_stops_accepting_is_closed_at_its_stall_deadline() {
    let mut config = config();
    config.slow_reader = SlowReaderSettings {
        buffer: 16 << 20,
        tunnel_buffer: 64 << 20,
        timeout: Duration::from_secs(5),
    };
    let mut pair = Pair::new(config, sim(), 4);
    pair.run_for(Duration::from_secs(1));
    // Far below its budget, but nothing it is sent is ever accepted.
    let stuck = pair.open(AppSpec {
        chunk: 1024,
        every: Duration::from_millis(100),
        reads: false,
        total: 64 * 1024,
        close_when_done: false,
    });
    pair.run_for(Duration::from_secs(4));
    assert_eq!(pair.apps[&stuck].closed, None, "not before its deadline");
    pair.run_for(Duration::from_secs(3));
    assert_eq!(pair.apps[&stuck].closed, Some(CloseReason::SlowReader));
}

#[test]
fn striped_sessions_recover_independently() {
    let mut config = config();
    config.stripes = 4;
    let mut pair = Pair::new(config, sim(), 5);
    pair.run_for(Duration::from_secs(1));
    assert_eq!(
        pair.active_sessions().len(),
        4,
        "four sessions to the target"
    );
    let apps: Vec<ConnId> = (0..8)
        .map(|_| pair.open(AppSpec::stream(16 * 1024)))
        .collect();
    pair.run_for(Duration::from_secs(2));
    let per_session = pair
        .core
        .status()
        .sessions
        .iter()
        .map(|s| s.connections)
        .collect::<Vec<_>>();
    assert_eq!(per_session, vec![2, 2, 2, 2], "connections are spread");
    // A black hole on one session: its two connections wait (until the pong timeout
    // replaces its socket), the six others never do.
    let victim = pair.active_sessions()[0].clone();
    let now = pair.now;
    pair.world.black_hole(now, &victim, true);
    pair.run_for(Duration::from_millis(200));
    let before: Vec<u64> = apps.iter().map(|id| pair.apps[id].received).collect();
    pair.run_for(Duration::from_millis(1500));
    let moved: Vec<bool> = apps
        .iter()
        .zip(before)
        .map(|(id, before)| pair.apps[id].received >= before + 16 * 1024)
        .collect();
    assert_eq!(
        moved.iter().filter(|m| **m).count(),
        6,
        "the other sessions' connections kept flowing: {moved:?}"
    );
    let now = pair.now;
    pair.world.black_hole(now, &victim, false);
    pair.run_for(Duration::from_secs(5));
    assert_intact(&mut pair);
}

#[test]
fn rotation_is_make_before_break() {
    let mut config = config();
    config.rotation = Some(RotationSettings {
        max_session_duration: Duration::from_secs(60),
        rotate_before: Duration::from_secs(10),
    });
    let sim = SimConfig {
        max_session_duration: Some(Duration::from_secs(60)),
        ..sim()
    };
    let mut pair = Pair::new(config, sim, 6);
    pair.run_for(Duration::from_secs(1));
    let long = pair.open(AppSpec::stream(4 * 1024));
    // A new 5 s connection every 500 ms for four session lifetimes.
    let mut short = Vec::new();
    for i in 0..480u32 {
        pair.run_for(Duration::from_millis(500));
        short.push(pair.open(AppSpec::short(8 * 1024, 5 * 8 * 1024)));
        if i % 4 == 0 {
            let now = pair.now;
            for id in pair.active_sessions() {
                pair.world.recycle(now, &id, Duration::from_millis(100));
            }
        }
    }
    pair.run_for(Duration::from_secs(8));
    for id in &short {
        let app = &pair.apps[id];
        assert_eq!(
            app.closed,
            Some(CloseReason::ClientClosed),
            "short connection {id} ({} of {} bytes back)",
            app.received,
            app.spec.total
        );
        assert_eq!(
            app.bound_at,
            Some(app.opened),
            "connection {id} waited for a session"
        );
    }
    assert_eq!(
        pair.apps[&long].closed,
        Some(CloseReason::MaxDuration),
        "the long connection outlived its session"
    );
    let rotated = pair.count_events(|e| matches!(e, EventKind::Rotated { .. }));
    assert!(rotated >= 3, "{rotated} rotations");
    let gone = pair.count_events(|e| matches!(e, EventKind::Restarting { .. }));
    assert_eq!(gone, 0, "no session ended before its successor took over");
    // Every rotation in order: rotating, then rotated, then the predecessor ends.
    let steps: Vec<&str> = pair
        .events
        .iter()
        .filter_map(|(_, e)| match e.kind {
            EventKind::Rotating { .. } => Some("rotating"),
            EventKind::Rotated { .. } => Some("rotated"),
            EventKind::SessionEnded { .. } => Some("ended"),
            _ => None,
        })
        .collect();
    for window in steps.chunks(3).filter(|c| c.len() == 3) {
        assert_eq!(window, ["rotating", "rotated", "ended"], "{steps:?}");
    }
    let roles: Vec<SessionRole> = pair.core.status().sessions.iter().map(|s| s.role).collect();
    assert!(roles.len() <= 2, "{roles:?}");
    assert_intact(&mut pair);
}

#[test]
fn a_session_the_service_ends_at_its_limit_without_a_successor_asks_the_policy() {
    let mut config = config();
    // The configured limit is a little longer than the service's: the successor would be
    // started only after the service has already ended the session at its limit.
    config.rotation = Some(RotationSettings {
        max_session_duration: Duration::from_millis(30_500),
        rotate_before: Duration::from_millis(200),
    });
    let sim = SimConfig {
        max_session_duration: Some(Duration::from_secs(30)),
        ..sim()
    };
    let mut pair = Pair::new(config, sim, 8);
    pair.run_for(Duration::from_secs(1));
    let app = pair.open(AppSpec::stream(4 * 1024));
    pair.run_for(Duration::from_secs(35));
    let reached = pair.count_events(|e| {
        matches!(
            e,
            EventKind::Disconnected {
                cause: Cause::MaxDurationReached
            }
        )
    });
    assert_eq!(reached, 1, "the end at the limit is recognised");
    assert_eq!(pair.apps[&app].closed, Some(CloseReason::SessionRestarted));
    assert_eq!(
        pair.core.status().restarts,
        1,
        "the built-in policy restarted at once"
    );
}

#[test]
fn the_default_reconnect_plugin_decides_in_simulated_time() {
    use ssm_tether::plugin::{PluginEngine, PluginInstance, TunnelInfo, TunnelLink};
    use ssm_tether::policy::{PluginSource, PluginSpec, Role};

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let plugin = runtime.block_on(async {
        let engine = PluginEngine::new(None).expect("engine");
        let mut spec = PluginSpec::new(
            PluginSource::Builtin("exponential-backoff".into()),
            Role::ReconnectPolicy,
        );
        spec.config = r#"{"base_ms":50,"cap_ms":1000}"#.into();
        let tunnel = TunnelInfo {
            name: "sim".into(),
            target: "i-0123456789abcdef0".into(),
            remote_host: None,
            remote_port: 7,
            local_address: "127.0.0.1:0".into(),
        };
        PluginInstance::start(
            &engine,
            &spec,
            Role::ReconnectPolicy,
            tunnel,
            TunnelLink::new(),
        )
        .await
        .expect("the plugin starts")
    });
    let mut pair = Pair::new(config(), sim(), 12);
    pair.core.set_reconnect_plugin(true);
    pair.policy = Some(Box::new(move |context| {
        match runtime.block_on(plugin.decide(context)) {
            Ok(decision) => PolicyAnswer::Decided(decision),
            Err(failure) => PolicyAnswer::Failed(failure),
        }
    }));
    pair.run_for(Duration::from_secs(1));
    for _ in 0..2 {
        pair.open(AppSpec::stream(4 * 1024));
    }
    let injected = compound(&mut pair, 300, Duration::from_millis(500), 0);
    assert_eq!(
        pair.count_events(|e| matches!(e, EventKind::PluginFailed { .. })),
        0,
        "the plugin answered every decision"
    );
    assert!(pair.core.status().resumes >= 300);
    assert_eq!(pair.core.status().restarts, 0);
    let (stall, _) = worst_stall(&pair);
    let bound = injected.worst_fault + PONG_TIMEOUT + MAX_DELAY + RECOVERY_SLACK;
    assert!(stall <= bound, "worst stall {stall:?} exceeds {bound:?}");
    assert_intact(&mut pair);
}

#[test]
fn shutdown_terminates_every_session_including_a_successor_and_stops() {
    let mut config = config();
    config.stripes = 2;
    config.rotation = Some(RotationSettings {
        max_session_duration: Duration::from_secs(30),
        rotate_before: Duration::from_secs(5),
    });
    let sim = SimConfig {
        max_session_duration: Some(Duration::from_secs(30)),
        ..sim()
    };
    let mut pair = Pair::new(config, sim, 13);
    pair.run_for(Duration::from_secs(1));
    let app = pair.open(AppSpec::stream(4 * 1024));
    // Just after a rotation: both successors forward; the predecessor that carries the
    // connection drains, the other one has already ended.
    pair.run_for(Duration::from_secs(25));
    assert_eq!(
        pair.active_sessions().len(),
        3,
        "{:?}",
        pair.core.status().sessions
    );
    let now = pair.now;
    pair.core.shutdown(now);
    pair.perform();
    let stopped = pair.run_until_cond(Duration::from_secs(20), |p| p.core.stopped().is_some());
    assert!(stopped, "the tunnel stops");
    assert_eq!(pair.apps[&app].closed, Some(CloseReason::TunnelStopped));
    assert!(
        pair.active_sessions().is_empty(),
        "{:?}",
        pair.world.sessions()
    );
    let by_api = pair
        .world
        .sessions()
        .iter()
        .filter(|s| {
            s.ended
                .as_deref()
                .is_some_and(|why| why.contains("TerminateSession") || why.contains("agent"))
        })
        .count();
    assert_eq!(by_api, 4, "every session was ended by us, not by a timeout");
    assert!(pair.world.sessions().iter().all(|s| !s.active));
    // Nothing is left to do, and nothing spins.
    assert_eq!(pair.core.poll_timeout(), None);
}

#[test]
fn a_refused_destination_closes_only_that_connection() {
    let sim = SimConfig {
        refuse_destination: true,
        ..sim()
    };
    let mut pair = Pair::new(config(), sim, 14);
    pair.run_for(Duration::from_secs(1));
    let refused = pair.open(AppSpec::stream(4 * 1024));
    pair.run_for(Duration::from_secs(1));
    assert_eq!(
        pair.apps[&refused].closed,
        Some(CloseReason::DestinationUnreachable)
    );
    assert_eq!(
        pair.count_events(|e| matches!(e, EventKind::DestinationUnreachable { .. })),
        1
    );
    assert_eq!(pair.core.status().restarts, 0, "the session itself is fine");
}

/// An agent message the service relays as if from the agent: output at `seq`.
fn agent_output(seq: i64, payload: Vec<u8>) -> bytes::Bytes {
    use ssm_tether::protocol::{ClientMessage, MessageType, PayloadType};
    ClientMessage {
        message_type: MessageType::OutputStreamData,
        schema_version: 1,
        created_date: 1_700_000_000_000,
        sequence_number: seq,
        flags: 0,
        message_id: uuid::Uuid::from_u128(seq as u128),
        payload_type: PayloadType::OUTPUT,
        payload: bytes::Bytes::from(payload),
    }
    .encode()
}

#[test]
fn an_oversized_frame_drops_only_that_socket_and_the_session_resumes_intact() {
    let mut pair = Pair::new(config(), sim(), 21);
    pair.run_for(Duration::from_secs(1));
    for _ in 0..2 {
        pair.open(AppSpec::stream(16 * 1024));
    }
    pair.run_for(Duration::from_secs(2));
    let session = pair.active_sessions()[0].clone();
    // A well-formed message, only too large: its size alone condemns the socket.
    let frame = agent_output(1 << 40, vec![7; ssm_tether::channel::MAX_FRAME_LEN]);
    let now = pair.now;
    pair.world.inject_to_client(now, &session, frame);
    pair.run_for(Duration::from_secs(5));
    assert_intact(&mut pair);
    let dropped = pair.count_events(|e| {
        matches!(e, EventKind::Disconnected { cause: Cause::TransportError(detail) }
            if detail.contains("exceeds"))
    });
    assert_eq!(
        dropped, 1,
        "the socket was not dropped for the oversized frame"
    );
    assert!(pair.core.status().resumes >= 1);
    assert_eq!(pair.core.status().restarts, 0);
    assert_eq!(pair.world.stats().started, 1, "the session was replaced");
    assert!(pair.apps.values().all(|a| a.closed.is_none()));
    assert!(pair.core.stopped().is_none());
}

#[test]
fn a_flood_of_far_future_sequence_numbers_does_not_stop_uploads() {
    let mut pair = Pair::new(config(), sim(), 22);
    pair.run_for(Duration::from_secs(1));
    for _ in 0..2 {
        pair.open(AppSpec::stream(16 * 1024));
    }
    pair.run_for(Duration::from_secs(2));
    let session = pair.active_sessions()[0].clone();
    // Numbers the agent will never reach in this test, more than enough to fill the old
    // reorder buffer (and, with it, to close the upload gate for good).
    let now = pair.now;
    for i in 0..20_000 {
        pair.world
            .inject_to_client(now, &session, agent_output(1_000_000 + i, vec![9; 1024]));
    }
    let before: Vec<u64> = pair.apps.values().map(|a| a.sent).collect();
    pair.run_for(Duration::from_secs(10));
    for (app, before) in pair.apps.values().zip(before) {
        assert!(
            app.sent >= before + 140 * 1024,
            "uploads stalled: {} bytes in 10 s",
            app.sent - before
        );
    }
    assert_intact(&mut pair);
    assert_eq!(pair.core.status().restarts, 0);
    assert!(pair.apps.values().all(|a| a.closed.is_none()));
}
