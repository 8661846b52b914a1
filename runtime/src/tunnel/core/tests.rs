//! The core's answers to results that arrive out of turn: every one of them was a bug of
//! the old driver or found in review. Whole-tunnel behaviour is tested in simulated time in
//! `runtime/tests/simulated.rs`.

use std::time::{Duration, Instant};

use super::*;
use crate::aws::ApiErrorKind;
use crate::events::Cause;

fn grant(id: &str) -> SessionGrant {
    SessionGrant {
        session_id: id.into(),
        token_value: "token".into(),
        stream_url: format!("ws://127.0.0.1:1/v1/data-channel/{id}"),
    }
}

fn throttled(operation: &'static str) -> ApiError {
    ApiError::new(operation, ApiErrorKind::Throttling, "slow down")
}

fn actions(core: &mut Core) -> Vec<Action> {
    std::iter::from_fn(|| core.poll_action()).collect()
}

fn start_op(actions: &[Action]) -> OpId {
    actions
        .iter()
        .find_map(|a| match a {
            Action::StartSession { op } => Some(*op),
            _ => None,
        })
        .expect("a StartSession")
}

fn terminations(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::TerminateSession { session_id, .. } => Some(session_id.clone()),
            _ => None,
        })
        .collect()
}

/// A core whose first session is up on a socket (handshake not needed for these tests).
fn connected(now: Instant) -> (Core, SocketId) {
    let mut core = Core::new(CoreConfig::default(), now, 1);
    let op = start_op(&actions(&mut core));
    core.handle_started(op, Ok(grant("s-1")), now);
    let socket = actions(&mut core)
        .iter()
        .find_map(|a| match a {
            Action::Connect { socket, .. } => Some(*socket),
            _ => None,
        })
        .expect("a Connect");
    core.handle_connected(socket, Ok(()), now);
    actions(&mut core);
    (core, socket)
}

#[test]
fn a_resume_answer_arriving_after_a_restart_began_is_ignored() {
    let t0 = Instant::now();
    let (mut core, socket) = connected(t0);
    // The socket fails; the policy resumes after a short backoff.
    core.handle_socket_closed(socket, SocketClose::Failed("reset".into()), t0);
    let later = t0 + Duration::from_secs(2);
    core.handle_timeout(later);
    let resume = actions(&mut core)
        .iter()
        .find_map(|a| match a {
            Action::ResumeSession { op, .. } => Some(*op),
            _ => None,
        })
        .expect("a resume in flight");
    // While it is in flight the session turns out gone (a channel_closed held back, a
    // probe): a restart begins.
    let key = core.sessions[0].key;
    core.disconnected(key, Cause::SessionGone("channel_closed".into()), later);
    let restart = actions(&mut core);
    let start = start_op(&restart);
    assert_eq!(terminations(&restart), vec!["s-1".to_owned()]);
    // The resume's late answer must not start a second recovery beside the restart.
    core.handle_resumed(resume, Ok(Some(grant("s-1"))), later);
    let after = actions(&mut core);
    assert!(
        !after.iter().any(|a| matches!(a, Action::Connect { .. })),
        "a stale resume was acted on: {after:?}"
    );
    // The restart carries on.
    core.handle_started(start, Ok(grant("s-2")), later);
    assert!(
        actions(&mut core)
            .iter()
            .any(|a| matches!(a, Action::Connect { grant, .. } if grant.session_id == "s-2"))
    );
}

#[test]
fn a_session_started_for_a_superseded_plan_is_terminated_not_adopted() {
    let t0 = Instant::now();
    let mut core = Core::new(CoreConfig::default(), t0, 1);
    let stale = start_op(&actions(&mut core));
    // The plan changed meanwhile: here a failure reported for the same session.
    let key = core.sessions[0].key;
    core.failed(key, Cause::StartFailed(throttled("StartSession")), t0);
    actions(&mut core);
    core.handle_started(stale, Ok(grant("s-late")), t0);
    let after = actions(&mut core);
    assert_eq!(terminations(&after), vec!["s-late".to_owned()]);
    assert!(
        core.sessions[0].id.is_none(),
        "the stale session was not adopted"
    );
}

#[test]
fn a_connect_for_a_replaced_socket_is_closed() {
    let t0 = Instant::now();
    let mut core = Core::new(CoreConfig::default(), t0, 1);
    let op = start_op(&actions(&mut core));
    core.handle_started(op, Ok(grant("s-1")), t0);
    actions(&mut core);
    // A socket nobody asked for (or no longer waits for) opens.
    core.handle_connected(SocketId(999), Ok(()), t0);
    assert!(actions(&mut core).contains(&Action::CloseSocket {
        socket: SocketId(999),
        graceful: false
    }));
}

#[test]
fn shutdown_terminates_a_session_whose_start_was_in_flight() {
    let t0 = Instant::now();
    let mut core = Core::new(CoreConfig::default(), t0, 1);
    let op = start_op(&actions(&mut core));
    core.shutdown(t0);
    assert!(
        core.stopped().is_none(),
        "it waits for the StartSession in flight"
    );
    core.handle_started(op, Ok(grant("s-1")), t0 + Duration::from_millis(500));
    let after = actions(&mut core);
    assert_eq!(terminations(&after), vec!["s-1".to_owned()]);
    let terminate = after
        .iter()
        .find_map(|a| match a {
            Action::TerminateSession { op, .. } => Some(*op),
            _ => None,
        })
        .expect("terminate");
    assert!(
        core.stopped().is_none(),
        "it waits for the TerminateSession"
    );
    core.handle_terminated(terminate, Ok(()), t0 + Duration::from_secs(1));
    assert_eq!(core.stopped(), Some(&Stopped::Requested));
}

#[test]
fn shutdown_gives_up_on_an_unanswered_start_at_its_deadline() {
    let t0 = Instant::now();
    let config = CoreConfig::default();
    let deadline = config.flag_grace + config.terminate_budget;
    let mut core = Core::new(config, t0, 1);
    actions(&mut core);
    core.shutdown(t0);
    core.handle_timeout(t0 + deadline - Duration::from_millis(1));
    assert!(core.stopped().is_none());
    core.handle_timeout(t0 + deadline);
    assert_eq!(core.stopped(), Some(&Stopped::Requested));
}

#[test]
fn connections_waiting_for_a_session_are_bounded() {
    let t0 = Instant::now();
    let config = CoreConfig {
        max_waiting: 3,
        ..CoreConfig::default()
    };
    let mut core = Core::new(config, t0, 1);
    for _ in 0..3 {
        assert!(core.is_accepting());
        core.handle_accept("peer".into(), t0);
    }
    assert!(
        !core.is_accepting(),
        "no session forwards: three wait, no more"
    );
}

#[test]
fn a_planned_close_resumes_without_any_delay() {
    let t0 = Instant::now();
    let (mut core, socket) = connected(t0);
    core.handle_socket_closed(
        socket,
        SocketClose::Closed {
            code: 1000,
            reason: "Bye".into(),
        },
        t0,
    );
    assert!(
        actions(&mut core)
            .iter()
            .any(|a| matches!(a, Action::ResumeSession { .. })),
        "ResumeSession right away, not after a timer"
    );
}

/// A message from the agent: the first of its stream (sequence 0).
fn agent_first_message(
    payload_type: crate::protocol::PayloadType,
    payload: &'static [u8],
) -> bytes::Bytes {
    use crate::protocol::message::{FLAG_SYN, SCHEMA_VERSION};
    use crate::protocol::{ClientMessage, MessageType};
    ClientMessage {
        message_type: MessageType::OutputStreamData,
        schema_version: SCHEMA_VERSION,
        created_date: 1,
        sequence_number: 0,
        flags: FLAG_SYN,
        message_id: uuid::Uuid::new_v4(),
        payload_type,
        payload: bytes::Bytes::from_static(payload),
    }
    .encode()
}

#[test]
fn a_handshake_for_anything_but_a_port_session_is_refused_at_once() {
    let t0 = Instant::now();
    let (mut core, socket) = connected(t0);
    let request = agent_first_message(
        crate::protocol::PayloadType::HANDSHAKE_REQUEST,
        br#"{"AgentVersion":"3.3.987.0","RequestedClientActions":[{"ActionType":"SessionType","ActionParameters":{"SessionType":"Standard_Stream","Properties":{}}}]}"#,
    );
    core.handle_frame(socket, request, t0);
    // A new session of the same document would be a shell again: no restart, the tunnel
    // ends with a reason that says what the document is.
    let actions = actions(&mut core);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::StartSession { .. })),
        "{actions:?}"
    );
    assert_eq!(terminations(&actions), ["s-1"]);
    let events: Vec<EventKind> = std::iter::from_fn(|| core.poll_event())
        .map(|e| e.kind)
        .collect();
    assert!(
        events.iter().any(|e| matches!(
            e,
            EventKind::GivingUp { reason } if reason.contains("Standard_Stream")
        )),
        "{events:?}"
    );
    for action in &actions {
        if let Action::TerminateSession { op, .. } = action {
            core.handle_terminated(*op, Ok(()), t0);
        }
    }
    assert!(
        matches!(core.stopped(), Some(Stopped::GaveUp(reason)) if reason.contains("not a port session")),
        "{:?}",
        core.stopped()
    );
}

#[test]
fn output_before_any_handshake_is_a_shell_session_and_ends_the_tunnel() {
    let t0 = Instant::now();
    let (mut core, socket) = connected(t0);
    // How a shell session without KMS begins: the shell's first output, no handshake.
    let output = agent_first_message(crate::protocol::PayloadType::OUTPUT, b"sh-5.2$ ");
    core.handle_frame(socket, output, t0);
    let actions = actions(&mut core);
    assert_eq!(terminations(&actions), ["s-1"], "{actions:?}");
    let events: Vec<EventKind> = std::iter::from_fn(|| core.poll_event())
        .map(|e| e.kind)
        .collect();
    assert!(
        events.iter().any(|e| matches!(
            e,
            EventKind::GivingUp { reason } if reason.contains("shell or command session")
        )),
        "{events:?}"
    );
}

/// A message from the agent at `seq`.
fn agent_message(
    seq: i64,
    payload_type: crate::protocol::PayloadType,
    payload: &'static [u8],
) -> bytes::Bytes {
    use crate::protocol::message::SCHEMA_VERSION;
    use crate::protocol::{ClientMessage, MessageType};
    ClientMessage {
        message_type: MessageType::OutputStreamData,
        schema_version: SCHEMA_VERSION,
        created_date: 1,
        sequence_number: seq,
        flags: 0,
        message_id: uuid::Uuid::new_v4(),
        payload_type,
        payload: bytes::Bytes::from_static(payload),
    }
    .encode()
}

const MUX_REQUEST: &[u8] = br#"{"AgentVersion":"3.3.987.0","RequestedClientActions":[{"ActionType":"SessionType","ActionParameters":{"SessionType":"Port","Properties":{"portNumber":"80","type":"LocalPortForwarding"}}}]}"#;
const BASIC_REQUEST: &[u8] = br#"{"AgentVersion":"3.0.0.0","RequestedClientActions":[{"ActionType":"SessionType","ActionParameters":{"SessionType":"Port","Properties":{"portNumber":"80","type":"LocalPortForwarding"}}}]}"#;
const COMPLETE: &[u8] = br#"{"HandshakeTimeToComplete":1000000,"CustomerMessage":""}"#;

/// Input-stream messages (ours) among the frames of `actions`, as (seq, payload type).
fn sent_messages(actions: &[Action]) -> Vec<(i64, crate::protocol::PayloadType)> {
    use crate::protocol::{ClientMessage, MessageType};
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { frames, .. } => Some(frames),
            _ => None,
        })
        .flatten()
        .filter_map(|f| match f {
            OutFrame::Binary(bytes) => ClientMessage::decode(bytes.clone()).ok(),
            OutFrame::Ping => None,
        })
        .map(|d| d.message)
        .filter(|m| m.message_type == MessageType::InputStreamData)
        .map(|m| (m.sequence_number, m.payload_type))
        .collect()
}

#[test]
fn a_second_handshake_cannot_switch_the_mode_of_a_negotiated_session() {
    use crate::protocol::PayloadType;
    let t0 = Instant::now();
    let (mut core, socket) = connected(t0);
    core.handle_frame(
        socket,
        agent_message(0, PayloadType::HANDSHAKE_REQUEST, MUX_REQUEST),
        t0,
    );
    core.handle_frame(
        socket,
        agent_message(1, PayloadType::HANDSHAKE_COMPLETE, COMPLETE),
        t0,
    );
    let conn = core.handle_accept("peer".into(), t0);
    let bound = actions(&mut core);
    assert!(
        bound
            .iter()
            .any(|a| matches!(a, Action::Bind { conn: c, .. } if *c == conn)),
        "{bound:?}"
    );
    let mode = |core: &Core| {
        core.sessions[0]
            .data
            .as_ref()
            .and_then(|d| d.mode())
            .expect("negotiated")
    };
    assert!(matches!(mode(&core), handshake::PortMode::Mux { .. }));
    // The agent (or something posing as it) starts over, offering basic mode.
    core.handle_frame(
        socket,
        agent_message(2, PayloadType::HANDSHAKE_REQUEST, BASIC_REQUEST),
        t0,
    );
    core.handle_frame(
        socket,
        agent_message(3, PayloadType::HANDSHAKE_COMPLETE, COMPLETE),
        t0,
    );
    let after = actions(&mut core);
    assert!(
        !sent_messages(&after)
            .iter()
            .any(|(_, t)| *t == PayloadType::HANDSHAKE_RESPONSE),
        "the late request was answered: {after:?}"
    );
    assert!(matches!(mode(&core), handshake::PortMode::Mux { .. }));
    // The connection still has its stream and carries on.
    assert!(core.conns.get(conn).is_some_and(|c| c.stream.is_some()));
    assert!(
        !after.iter().any(|a| matches!(a, Action::CloseLocal { .. })),
        "{after:?}"
    );
    assert!(
        core.sessions[0]
            .data
            .as_ref()
            .is_some_and(|d| d.late_handshake_logged)
    );
}

#[test]
fn a_second_handshake_request_before_the_first_completes_is_ignored_too() {
    use crate::protocol::PayloadType;
    let t0 = Instant::now();
    let (mut core, socket) = connected(t0);
    core.handle_frame(
        socket,
        agent_message(0, PayloadType::HANDSHAKE_REQUEST, MUX_REQUEST),
        t0,
    );
    core.handle_frame(
        socket,
        agent_message(1, PayloadType::HANDSHAKE_REQUEST, BASIC_REQUEST),
        t0,
    );
    core.handle_frame(
        socket,
        agent_message(2, PayloadType::HANDSHAKE_COMPLETE, COMPLETE),
        t0,
    );
    let responses = sent_messages(&actions(&mut core))
        .into_iter()
        .filter(|(_, t)| *t == PayloadType::HANDSHAKE_RESPONSE)
        .count();
    assert_eq!(responses, 1);
    assert!(matches!(
        core.sessions[0].data.as_ref().and_then(|d| d.mode()),
        Some(handshake::PortMode::Mux { .. })
    ));
}

/// The last upload-gate change among `actions`.
fn gate(actions: &[Action]) -> Option<bool> {
    actions.iter().rev().find_map(|a| match a {
        Action::Uploads { open, .. } => Some(*open),
        _ => None,
    })
}

#[test]
fn a_gap_the_agent_never_fills_closes_the_upload_gate_only_for_a_while() {
    use crate::protocol::PayloadType;
    let t0 = Instant::now();
    let (mut core, socket) = connected(t0);
    core.handle_frame(
        socket,
        agent_message(0, PayloadType::HANDSHAKE_REQUEST, MUX_REQUEST),
        t0,
    );
    core.handle_frame(
        socket,
        agent_message(1, PayloadType::HANDSHAKE_COMPLETE, COMPLETE),
        t0,
    );
    assert_eq!(gate(&actions(&mut core)), Some(true));
    // 2100 messages behind a gap at 2 that never fills.
    for seq in 3..2103 {
        core.handle_frame(socket, agent_message(seq, PayloadType::OUTPUT, b"x"), t0);
    }
    assert_eq!(
        gate(&actions(&mut core)),
        Some(false),
        "throttled behind the gap"
    );
    let patience = ChannelConfig::default().gap_patience;
    let mut now = t0;
    let mut reopened = None;
    while now < t0 + 2 * patience {
        now = core.poll_timeout().expect("a timer").max(now);
        core.handle_timeout(now);
        // Keep the socket alive meanwhile.
        core.handle_socket_activity(socket, now);
        if gate(&actions(&mut core)) == Some(true) {
            reopened = Some(now);
            break;
        }
    }
    assert_eq!(reopened, Some(t0 + patience), "the gate stayed shut");
}

#[test]
fn a_wake_resumes_a_forwarding_session_at_once_and_ends_a_backoff_wait() {
    let t0 = Instant::now();
    let (mut core, socket) = connected(t0);
    let wake = crate::wake::Wake::Slept(Duration::from_secs(3600));
    core.handle_wake(&wake, t0);
    let after = actions(&mut core);
    assert!(
        after.iter().any(
            |a| matches!(a, Action::CloseSocket { socket: s, graceful: false } if *s == socket)
        ),
        "the suspect socket is dropped: {after:?}"
    );
    // The builtin policy resumes a wake at once: no timer needs to pass.
    let resume = after
        .iter()
        .find_map(|a| match a {
            Action::ResumeSession { op, session_id } if session_id == "s-1" => Some(*op),
            _ => None,
        })
        .expect("a resume right away");
    // The resume fails (the network is not back yet): the session waits out a backoff…
    core.handle_resumed(resume, Err(throttled("ResumeSession")), t0);
    let waiting = actions(&mut core);
    assert!(
        !waiting
            .iter()
            .any(|a| matches!(a, Action::ResumeSession { .. })),
        "{waiting:?}"
    );
    // …which a second sign (the network came back) cuts short.
    let back = crate::wake::Wake::NetworkChanged("10.0.0.7 appeared".into());
    core.handle_wake(&back, t0);
    assert!(
        actions(&mut core)
            .iter()
            .any(|a| matches!(a, Action::ResumeSession { .. })),
        "the wait ended at the sign"
    );
}

#[test]
fn a_wake_during_shutdown_changes_nothing() {
    let t0 = Instant::now();
    let (mut core, _socket) = connected(t0);
    core.shutdown(t0);
    actions(&mut core);
    core.handle_wake(&crate::wake::Wake::Slept(Duration::from_secs(60)), t0);
    let after = actions(&mut core);
    assert!(
        !after.iter().any(|a| matches!(
            a,
            Action::ResumeSession { .. } | Action::StartSession { .. }
        )),
        "{after:?}"
    );
}
