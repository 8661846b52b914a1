//! The service's session records: who is connected, which token and cell are current, and the
//! timers the service enforces.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};

use crate::agent_link::{AgentControls, AgentHandle};
use crate::events::Side;

/// What a connection's writer task is asked to do.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// Send one binary frame.
    Frame(Bytes),
    /// Send a close frame with this code and reason, then stop writing.
    Close(u16, String),
    /// Stop writing at once, without a close frame (an abrupt connection loss).
    Abort,
}

/// The service's handle on one open, authenticated data-channel socket.
#[derive(Clone)]
pub(crate) struct Peer {
    /// Distinguishes this socket from a later one of the same side.
    pub(crate) conn_id: u64,
    /// Frames and closes for the socket's writer task.
    pub(crate) tx: mpsc::Sender<Outbound>,
    /// While set, the socket is neither read nor written (a half-open connection).
    pub(crate) black_hole: Arc<AtomicBool>,
    /// Wakes the reader after `black_hole` changed.
    pub(crate) wake: Arc<Notify>,
    /// Ends the connection without a close handshake.
    pub(crate) kill: Arc<Notify>,
}

impl Peer {
    /// Whether the socket is black-holed.
    pub(crate) fn is_black_holed(&self) -> bool {
        self.black_hole.load(Ordering::Relaxed)
    }

    /// Starts or stops black-holing the socket.
    pub(crate) fn set_black_hole(&self, on: bool) {
        self.black_hole.store(on, Ordering::Relaxed);
        self.wake.notify_one();
    }
}

/// What a session runs: its document, as resolved at StartSession.
pub(crate) struct SessionDocumentInfo {
    /// The document name.
    pub(crate) name: String,
    /// The document's `sessionType`.
    pub(crate) session_type: String,
    /// Substituted document properties.
    pub(crate) properties: BTreeMap<String, Value>,
    /// The KMS key of an encrypted shell session.
    pub(crate) kms_key_id: Option<String>,
}

/// One session in the service.
pub(crate) struct Session {
    /// The session id.
    pub(crate) id: String,
    /// The StartSession target (instance id).
    pub(crate) target: String,
    /// The document name.
    pub(crate) document: String,
    /// The document's `sessionType`.
    pub(crate) session_type: String,
    /// Substituted document properties.
    pub(crate) properties: BTreeMap<String, Value>,
    /// The KMS key shell data is encrypted under, if the session is encrypted.
    pub(crate) kms_key_id: Option<String>,
    /// When StartSession created it.
    pub(crate) started: Instant,
    /// The agent model's runtime switches.
    pub(crate) controls: Arc<AgentControls>,
    state: Mutex<SessionState>,
    /// Held while a socket joins or leaves, from the state change until its
    /// pause/start_publication frames are queued: two sockets changing at once must not have
    /// their frames overtake each other (a pause decided first but queued last would leave a
    /// side paused while both are connected).
    pub(crate) publication: tokio::sync::Mutex<()>,
}

/// The mutable part of a session.
pub(crate) struct SessionState {
    /// Why the session ended, once it has.
    pub(crate) terminated: Option<String>,
    /// The one client token that may open a client socket (single use).
    pub(crate) client_token: Option<String>,
    /// The one agent token that may open an agent socket (single use).
    pub(crate) agent_token: Option<String>,
    /// The current `cell-number`; upgrades naming another cell are refused.
    pub(crate) cell: String,
    /// The client's open socket.
    pub(crate) client: Option<Peer>,
    /// The agent's open socket.
    pub(crate) agent: Option<Peer>,
    /// Whether a client socket was ever opened.
    pub(crate) client_seen: bool,
    /// Whether an agent socket was ever opened.
    pub(crate) agent_seen: bool,
    /// Since when no client socket has been open (starts at StartSession).
    pub(crate) client_away_since: Option<Instant>,
    /// Last stream-data frame relayed in either direction (the idle timer).
    pub(crate) last_traffic: Instant,
    /// Whether the agent was last sent `pause_publication`.
    pub(crate) agent_paused: bool,
    /// Whether the client was last sent `pause_publication`.
    pub(crate) client_paused: bool,
    /// The agent said `Terminating`; its socket closing ends the session.
    pub(crate) agent_terminating: bool,
    /// The running agent model, until the session ends.
    pub(crate) agent_task: Option<AgentHandle>,
}

impl Session {
    /// A new, active session.
    pub(crate) fn new(
        id: String,
        target: String,
        document: SessionDocumentInfo,
        cell: String,
        client_token: String,
        controls: Arc<AgentControls>,
    ) -> Self {
        let now = Instant::now();
        Self {
            id,
            target,
            document: document.name,
            session_type: document.session_type,
            properties: document.properties,
            kms_key_id: document.kms_key_id,
            started: now,
            controls,
            publication: tokio::sync::Mutex::new(()),
            state: Mutex::new(SessionState {
                terminated: None,
                client_token: Some(client_token),
                agent_token: None,
                cell,
                client: None,
                agent: None,
                client_seen: false,
                agent_seen: false,
                client_away_since: Some(now),
                last_traffic: now,
                agent_paused: false,
                client_paused: false,
                agent_terminating: false,
                agent_task: None,
            }),
        }
    }

    /// Locks the mutable state. Never held across an `.await`.
    pub(crate) fn state(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The open socket of `side`, if any.
    pub(crate) fn peer(&self, side: Side) -> Option<Peer> {
        let state = self.state();
        match side {
            Side::Client => state.client.clone(),
            Side::Agent => state.agent.clone(),
        }
    }

    /// A serializable summary (no tokens).
    pub(crate) fn info(&self) -> SessionInfo {
        let state = self.state();
        SessionInfo {
            session_id: self.id.clone(),
            target: self.target.clone(),
            document_name: self.document.clone(),
            session_type: self.session_type.clone(),
            properties: self.properties.clone(),
            kms_key_id: self.kms_key_id.clone(),
            age_ms: millis(self.started.elapsed()),
            state: match &state.terminated {
                Some(_) => "terminated".to_owned(),
                None => "active".to_owned(),
            },
            termination_reason: state.terminated.clone(),
            client_connected: state.client.is_some(),
            agent_connected: state.agent.is_some(),
            client_black_holed: state.client.as_ref().is_some_and(Peer::is_black_holed),
            agent_black_holed: state.agent.as_ref().is_some_and(Peer::is_black_holed),
            idle_ms: millis(state.last_traffic.elapsed()),
        }
    }
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl SessionState {
    /// The open socket of `side`.
    pub(crate) fn peer_mut(&mut self, side: Side) -> &mut Option<Peer> {
        match side {
            Side::Client => &mut self.client,
            Side::Agent => &mut self.agent,
        }
    }
}

/// What `GET /sessions` and [`crate::FaultControl::sessions`] report about a session.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SessionInfo {
    /// The session id.
    pub session_id: String,
    /// The StartSession target.
    pub target: String,
    /// The document name.
    pub document_name: String,
    /// The document's `sessionType` (`Port`, `Standard_Stream`, …).
    pub session_type: String,
    /// Substituted document properties.
    pub properties: BTreeMap<String, Value>,
    /// The KMS key the session is encrypted under; `None`: not encrypted.
    pub kms_key_id: Option<String>,
    /// Milliseconds since StartSession.
    pub age_ms: u64,
    /// `active` or `terminated`.
    pub state: String,
    /// Why it was terminated, if it was.
    pub termination_reason: Option<String>,
    /// Whether a client socket is open.
    pub client_connected: bool,
    /// Whether an agent socket is open.
    pub agent_connected: bool,
    /// Whether the client socket is black-holed.
    pub client_black_holed: bool,
    /// Whether the agent socket is black-holed.
    pub agent_black_holed: bool,
    /// Milliseconds since the last stream-data frame.
    pub idle_ms: u64,
}
