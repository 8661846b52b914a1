//! Single-stream tunnels in simulated time: the local end is one byte stream that exists
//! before the first session (stdin/stdout of an SSH `ProxyCommand`) against
//! `AWS-StartSSHSession`-like sessions (basic mode, no `type` property). Resume must keep the
//! stream exact through every fault; a session that is really gone ends the tunnel with a
//! reason instead of a restart that would break the stream; the stream's own end (EOF, or
//! the agent ending the session) ends the tunnel once what was sent is delivered.

mod sim;

use std::time::Duration;

use sim::{AppSpec, Pair, compound};
use ssm_emulator::sim::{SimApiError, SimConfig};
use ssm_tether::events::EventKind;
use ssm_tether::tunnel::core::{CoreConfig, Stopped};

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
        single_stream: true,
        ..defaults
    }
}

fn sim() -> SimConfig {
    SimConfig {
        stale_cell: true,
        stream: true,
        ..SimConfig::default()
    }
}

fn restarts(pair: &Pair) -> usize {
    pair.count_events(|e| matches!(e, EventKind::Restarting { .. }))
}

#[test]
fn a_stream_stays_exact_through_a_thousand_recycles_with_compound_faults() {
    let mut pair = Pair::new(config(), sim(), 7);
    // The stream exists before the session, as stdin/stdout do.
    let stream = pair.open(AppSpec::stream(8 * 1024));
    // Black holes, throttled resumes with resets, skewed recycles with stale cells; no
    // service-side termination (that ends a stream, tested below).
    compound(&mut pair, 1_000, Duration::from_millis(500), 0);
    pair.stop_writing();
    let app_done = pair.run_until_cond(Duration::from_secs(60), |p| {
        p.apps.values().all(|a| a.received == a.sent)
    });
    let app = &pair.apps[&stream];
    assert!(
        !app.corrupted,
        "the stream's bytes were corrupted or reordered"
    );
    assert!(app_done, "{} of {} bytes came back", app.received, app.sent);
    assert!(app.sent > 1_000_000, "only {} bytes crossed", app.sent);
    assert_eq!(app.closed, None, "the stream was closed");
    assert!(pair.core.stopped().is_none(), "{:?}", pair.core.stopped());
    assert_eq!(
        pair.world.stats().started,
        1,
        "a second session was started"
    );
    assert_eq!(restarts(&pair), 0);
    assert!(pair.core.status().resumes >= 1_000);
}

#[test]
fn end_of_file_ends_the_session_after_everything_sent_has_arrived() {
    let mut pair = Pair::new(config(), sim(), 8);
    let total = 300 * 1024;
    let stream = pair.open(AppSpec {
        chunk: 64 * 1024,
        every: Duration::from_millis(1),
        ..AppSpec::short(1, total)
    });
    assert!(pair.run_until_cond(Duration::from_secs(30), |p| p.apps[&stream].sent == total));
    // EOF right behind the last write: most of it is still on its way to the agent.
    pair.close_app(stream);
    assert!(pair.run_until_cond(Duration::from_secs(40), |p| p.core.stopped().is_some()));
    assert!(
        matches!(pair.core.stopped(), Some(Stopped::Ended(_))),
        "{:?}",
        pair.core.stopped()
    );
    let sessions = pair.world.sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(
        sessions[0].agent_received, total,
        "the agent got less than was sent"
    );
    assert!(!sessions[0].active, "the session was not ended");
}

#[test]
fn a_session_that_is_gone_ends_the_stream_with_a_reason_instead_of_a_restart() {
    let mut pair = Pair::new(config(), sim(), 9);
    let stream = pair.open(AppSpec::stream(4 * 1024));
    pair.run_for(Duration::from_secs(3));
    let session = pair.active_sessions()[0].clone();
    // The client is away (its resumes throttled) while the service ends the session: the
    // channel_closed never reaches it, and its next resume finds the session gone.
    pair.world.fail_resumes(&[SimApiError::Throttling; 2]);
    let now = pair.now;
    pair.world.reset_client(now, &session);
    pair.run_for(Duration::from_millis(30));
    let now = pair.now;
    pair.world.terminate(now, &session);
    assert!(pair.run_until_cond(Duration::from_secs(20), |p| p.core.stopped().is_some()));
    match pair.core.stopped() {
        Some(Stopped::GaveUp(reason)) => {
            assert!(reason.contains(&session), "{reason}");
            assert!(reason.contains("cannot move to a new session"), "{reason}");
        }
        other => panic!("expected GaveUp, got {other:?}"),
    }
    assert_eq!(pair.world.stats().started, 1, "a restart broke the stream");
    assert!(pair.apps[&stream].closed.is_some());
}

#[test]
fn the_agent_ending_the_session_delivers_what_arrived_and_ends_the_stream() {
    let mut pair = Pair::new(config(), sim(), 10);
    let total = 100 * 1024;
    let stream = pair.open(AppSpec {
        close_when_done: false,
        ..AppSpec::short(64 * 1024, total)
    });
    assert!(pair.run_until_cond(Duration::from_secs(30), |p| {
        p.apps[&stream].received == total
    }));
    let session = pair.active_sessions()[0].clone();
    let now = pair.now;
    pair.world.terminate(now, &session);
    assert!(pair.run_until_cond(Duration::from_secs(5), |p| p.core.stopped().is_some()));
    assert!(
        matches!(pair.core.stopped(), Some(Stopped::Ended(_))),
        "{:?}",
        pair.core.stopped()
    );
    assert!(!pair.apps[&stream].corrupted);
    // The service ended it: nothing is terminated a second time.
    assert_eq!(pair.world.stats().terminated, 1);
}

#[test]
fn failures_that_would_escalate_to_a_restart_keep_resuming_a_stream() {
    let mut config = config();
    config.recovery.resume_attempts_before_restart = 2;
    let mut pair = Pair::new(config, sim(), 11);
    let stream = pair.open(AppSpec::stream(4 * 1024));
    pair.run_for(Duration::from_secs(2));
    let session = pair.active_sessions()[0].clone();
    // Six failed resumes: the built-in policy escalates after two, which a stream cannot
    // take; the session is alive, so resuming on keeps the stream.
    pair.world.fail_resumes(&[SimApiError::Throttling; 6]);
    let now = pair.now;
    pair.world.reset_client(now, &session);
    pair.run_for(Duration::from_secs(15));
    pair.stop_writing();
    assert!(pair.run_until_cond(Duration::from_secs(30), |p| {
        p.apps.values().all(|a| a.received == a.sent)
    }));
    let app = &pair.apps[&stream];
    assert!(!app.corrupted);
    assert_eq!(app.closed, None);
    assert!(pair.core.stopped().is_none());
    assert_eq!(pair.world.stats().started, 1);
    assert!(pair.world.stats().resume_failures >= 6);
}
