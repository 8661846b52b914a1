//! The emulated service's shared state and the operations every front end uses: the SSM API,
//! the data-channel relay, the admin endpoint and [`crate::FaultControl`].

mod actions;
mod resume_fail;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use uuid::Uuid;

pub(crate) use self::actions::{Termination, send_control};
use self::resume_fail::ResumeFailState;
use crate::agent_link::{self, AgentControls};
use crate::config::{AgentSettings, EmulatorConfig};
use crate::documents::{Documents, ResolvedDocument};
use crate::events::{Event, EventLog, Side};
use crate::faults::{FaultSettings, SideSelection};
use crate::kms::Kms;
use crate::sessions::{Session, SessionDocumentInfo};

/// The service.
pub(crate) struct Service {
    /// Where every event goes.
    pub(crate) events: EventLog,
    /// Knobs for agents started from now on.
    pub(crate) agent: AgentSettings,
    /// The documents StartSession resolves.
    pub(crate) documents: Documents,
    /// Fake managed nodes and injected API errors (`crate::api_ext`).
    pub(crate) extras: crate::api_ext::Extras,
    /// The fake KMS served on the same endpoint.
    pub(crate) kms: Kms,
    faults: Mutex<FaultSettings>,
    resume_fail: Mutex<ResumeFailState>,
    credentials: Mutex<HashMap<String, Instant>>,
    rng: Mutex<StdRng>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    bases: OnceLock<(String, String)>,
    next_conn: AtomicU64,
    /// Flips to true when the emulator shuts down.
    pub(crate) shutdown: watch::Sender<bool>,
}

impl Service {
    /// A service configured from `config` (servers not bound yet).
    pub(crate) fn new(config: &EmulatorConfig) -> Self {
        let mut resume_fail = ResumeFailState::default();
        resume_fail.arm(&config.faults.resume_fail);
        Self {
            events: config.events.clone(),
            agent: config.agent.clone(),
            documents: config.documents.clone(),
            extras: crate::api_ext::Extras::new(config),
            kms: Kms::new(
                config
                    .agent
                    .kms_key_id
                    .as_deref()
                    .unwrap_or(crate::kms::DEFAULT_KEY_ID),
            ),
            faults: Mutex::new(config.faults.clone()),
            resume_fail: Mutex::new(resume_fail),
            credentials: Mutex::new(HashMap::new()),
            rng: Mutex::new(StdRng::seed_from_u64(config.seed)),
            sessions: Mutex::new(HashMap::new()),
            bases: OnceLock::new(),
            next_conn: AtomicU64::new(1),
            shutdown: watch::channel(false).0,
        }
    }

    /// Records the bound address once the server listens.
    pub(crate) fn set_bases(&self, http_base: String, ws_base: String) {
        let _ = self.bases.set((http_base, ws_base));
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn http_base(&self) -> &str {
        self.bases.get().map_or("", |b| b.0.as_str())
    }

    /// `ws://127.0.0.1:PORT`.
    pub(crate) fn ws_base(&self) -> &str {
        self.bases.get().map_or("", |b| b.1.as_str())
    }

    /// The current fault settings.
    pub(crate) fn faults(&self) -> FaultSettings {
        lock(&self.faults).clone()
    }

    /// Replaces the fault settings; applies the switches that live in running agents.
    pub(crate) fn set_faults(&self, settings: FaultSettings) {
        let refuse = settings.refuse_destination;
        let resume_changed = {
            let mut current = lock(&self.faults);
            let changed = current.resume_fail != settings.resume_fail;
            *current = settings.clone();
            changed
        };
        if resume_changed {
            lock(&self.resume_fail).arm(&settings.resume_fail);
        }
        for session in self.all_sessions() {
            session
                .controls
                .refuse_destination
                .store(refuse, Ordering::Relaxed);
        }
    }

    /// Records `access_key_id` and says whether its credentials have expired.
    pub(crate) fn credentials_expired(&self, access_key_id: &str) -> bool {
        let ttl = lock(&self.faults).credential_ttl;
        let first_seen = *lock(&self.credentials)
            .entry(access_key_id.to_owned())
            .or_insert_with(Instant::now);
        ttl.is_some_and(|ttl| first_seen.elapsed() > ttl)
    }

    /// Runs `f` with the seeded RNG.
    pub(crate) fn with_rng<T>(&self, f: impl FnOnce(&mut StdRng) -> T) -> T {
        f(&mut lock(&self.rng))
    }

    /// A random base64url string from `bytes` random bytes.
    pub(crate) fn random_text(&self, bytes: usize) -> String {
        let raw: Vec<u8> = self.with_rng(|rng| (0..bytes).map(|_| rng.random()).collect());
        base64url(&raw)
    }

    /// A random UUID (v4 layout) from the seeded RNG.
    pub(crate) fn random_uuid(&self) -> Uuid {
        let bits: u128 = self.with_rng(|rng| rng.random());
        uuid::Builder::from_random_bytes(bits.to_be_bytes()).into_uuid()
    }

    /// A fresh connection id.
    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// The session with this id.
    pub(crate) fn session(&self, id: &str) -> Option<Arc<Session>> {
        lock(&self.sessions).get(id).cloned()
    }

    /// Every session, in id order.
    pub(crate) fn all_sessions(&self) -> Vec<Arc<Session>> {
        let mut all: Vec<_> = lock(&self.sessions).values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Sessions named by `id`, or all active ones when `id` is `None`.
    pub(crate) fn select(&self, id: Option<&str>) -> Vec<Arc<Session>> {
        match id {
            Some(id) => self.session(id).into_iter().collect(),
            None => self
                .all_sessions()
                .into_iter()
                .filter(|s| s.state().terminated.is_none())
                .collect(),
        }
    }

    /// Creates a session, starts its agent and its supervisor; returns it with its first token.
    pub(crate) fn start_session(
        self: &Arc<Self>,
        target: &str,
        document: ResolvedDocument,
    ) -> (Arc<Session>, String) {
        let id = format!("emulator-{}", self.random_hex(17));
        let token = self.random_text(96);
        let cell = self.random_text(48);
        let controls = Arc::new(AgentControls::default());
        controls
            .refuse_destination
            .store(lock(&self.faults).refuse_destination, Ordering::Relaxed);
        // The session preferences: a shell document's own kmsKeyId, else the account's.
        let kms_key_id = if document.session_type.is_shell() {
            document
                .inputs
                .kms_key_id
                .clone()
                .or_else(|| self.agent.kms_key_id.clone())
        } else {
            None
        };
        if let Some(key) = &kms_key_id {
            // Preferences that name a key imply that the account has it.
            self.kms.ensure_key(key);
        }
        let session = Arc::new(Session::new(
            id.clone(),
            target.to_owned(),
            SessionDocumentInfo {
                name: document.name,
                session_type: document.session_type.as_str().to_owned(),
                properties: document.properties,
                kms_key_id: kms_key_id.clone(),
            },
            cell,
            token.clone(),
            controls.clone(),
        ));
        lock(&self.sessions).insert(id.clone(), session.clone());
        self.events.emit(Event::Session {
            session_id: id.clone(),
            state: "started".to_owned(),
            reason: format!("StartSession target={target} document={}", session.document),
        });
        let seed = self.with_rng(|rng| rng.random());
        if !self.agent.enabled {
            crate::supervisor::spawn(self.clone(), session.clone());
            return (session, token);
        }
        let handle = agent_link::spawn(agent_link::AgentStart {
            session_id: id,
            instance_id: target.to_owned(),
            http_base: self.http_base().to_owned(),
            ws_base: self.ws_base().to_owned(),
            session_type: session.session_type.clone(),
            properties: session.properties.clone(),
            shell_profile: document.inputs.shell_profile,
            kms_key_id,
            settings: self.agent.clone(),
            seed,
            controls,
            events: self.events.clone(),
        });
        session.state().agent_task = Some(handle);
        crate::supervisor::spawn(self.clone(), session.clone());
        (session, token)
    }

    fn random_hex(&self, digits: usize) -> String {
        self.with_rng(|rng| {
            (0..digits)
                .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
                .collect()
        })
    }

    /// The StreamUrl for a session's current cell.
    pub(crate) fn stream_url(&self, session: &Session) -> String {
        let cell = session.state().cell.clone();
        format!(
            "{}/v1/data-channel/{}?role=publish_subscribe&cell-number={cell}",
            self.ws_base(),
            session.id
        )
    }

    /// Issues a new single-use client token (ResumeSession), invalidating the previous one.
    pub(crate) fn issue_client_token(&self, session: &Session) -> Option<String> {
        let token = self.random_text(96);
        let mut state = session.state();
        if state.terminated.is_some() {
            return None;
        }
        state.client_token = Some(token.clone());
        Some(token)
    }

    /// Issues a new single-use agent token (CreateDataChannel); `None` once terminated.
    pub(crate) fn issue_agent_token(&self, session: &Session) -> Option<String> {
        let token = self.random_text(96);
        let mut state = session.state();
        if state.terminated.is_some() {
            return None;
        }
        state.agent_token = Some(token.clone());
        Some(token)
    }
}

/// The name `SideSelection` has in flags and events.
pub(crate) fn side_selection_name(sides: SideSelection) -> &'static str {
    match sides {
        SideSelection::Client => "client",
        SideSelection::Agent => "agent",
        SideSelection::Both => "both",
    }
}

/// The name a side has in events.
pub(crate) fn side_name(side: Side) -> &'static str {
    match side {
        Side::Client => "client",
        Side::Agent => "agent",
    }
}

/// Milliseconds since the Unix epoch (never 0: the plugin rejects a zero CreatedDate).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(1)
        .max(1)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Unpadded base64url, the alphabet real cell numbers and tokens use.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_known_vectors() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }
}
