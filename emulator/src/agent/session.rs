//! The agent session core: one task that owns every piece of session state (the reliable
//! channel, the handshake with its KMS key exchange, the port session and its smux server or
//! the shell plugin and its process, the current socket) and drives it from the WebSocket,
//! the destination connections, the shell's tasks and its timers.
//!
//! Why one owner instead of the agent's goroutines and mutexes: the model must be exact about
//! *what* the agent does, not about its races, and a single owner makes every rule a plain
//! function of the state. The places where the agent's concurrency is observable are kept:
//! writes go through a separate writer task (a stalled socket never freezes the agent), the
//! outgoing byte stream is paced by a timer instead of a sleep (so input and acks are still
//! processed, as on the agent's other goroutines), and destination reads stop while paused.
//! The agent's KMS Decrypt runs inside its receive path, so while it is in flight the model
//! reads no frame either.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ssm_tether_protocol::message::{FLAGS_CONTROL, SCHEMA_VERSION};
use ssm_tether_protocol::payload::{
    AcknowledgeContent, ActionParameters, ActionStatus, ActionType, AgentSessionState,
    ChannelClosed, Flag, HandshakeRequest, HandshakeResponse, RequestedClientAction, SessionState,
    SessionTypeRequest,
};
use ssm_tether_protocol::smux::{self, Command, Frame, FrameDecoder};
use ssm_tether_protocol::{ClientMessage, MessageType, PayloadType};
use tokio::sync::mpsc::{self, OwnedPermit};
use tokio::sync::{oneshot, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use uuid::Uuid;

use super::dest::{self, ConnKey, DestEvent, DialEvent};
use super::mgs::{self, Mgs, MgsError, Ws};
use super::port::{self, Destination, PortMode};
use super::reliable::{Arrival, RESEND_INTERVAL, Reliable};
use super::shell::{ShellEvent, ShellKind, ShellSettings};
use super::{AgentConfig, AgentControls, AgentOutcome};
use crate::events::{Event, EventLog};

/// Stop reading destinations while this much of the outgoing byte stream is not yet sent:
/// the agent reads its mux socket only as fast as it sends, so TCP backpressure reaches the
/// destination. Large enough to keep the pipe full at full speed.
const PENDING_HIGH_WATER: usize = 256 * 1024;
/// Frames queued to the writer before the pump waits (backpressure from a slow socket, as the
/// agent's synchronous WebSocket write gives).
const WRITER_QUEUE: usize = 512;
/// Frames the writer feeds before one flush.
const WRITE_BATCH: usize = 256;
/// Output messages the pump sends per wake-up when unpaced, so input is still served.
const PUMP_BURST: usize = 128;
/// Destination events buffered between the connections and the core.
const DEST_QUEUE: usize = 64;
/// How long the agent waits for its last frames and close frame to go out when it ends.
const CLOSE_DRAIN: Duration = Duration::from_secs(2);
/// The error text of the agent's handshake timeout.
const HANDSHAKE_TIMED_OUT: &str = "Handshake timed out. Please ensure that you have the latest version of the session manager plugin.";
/// The error text of the agent's wait for the EncChallengeResponse.
const CHALLENGE_TIMED_OUT: &str = "Timed out waiting for encryption challenge.";
/// Stop taking shell output from the shell's tasks while this much is queued and not yet sent
/// (the reads then block, as the agent's do on its synchronous send).
const SHELL_QUEUE_HIGH_WATER: usize = 64 * 1024;

mod shell_side;

use shell_side::{KmsCall, KmsState, KmsStep, ShellSide};

/// Records an agent event.
pub(super) fn emit(events: &EventLog, session_id: &str, what: &str, detail: impl Into<String>) {
    events.emit(Event::Agent {
        session_id: session_id.to_owned(),
        what: what.to_owned(),
        detail: detail.into(),
    });
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        // CreatedDate must be non-zero for the client to accept the frame.
        .unwrap_or(1)
}

/// A random (v4) message id from the session's generator: cheaper than the OS generator per
/// message and reproducible from the seed.
fn new_id(rng: &mut StdRng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
}

/// What the reader saw.
enum WsRead {
    Message(Message),
    Ended,
    Error(String),
    Deadline,
}

/// Commands for the writer task.
enum WriterCmd {
    /// A binary frame.
    Frame(Bytes),
    /// Send a normal close frame, then stop.
    Close(oneshot::Sender<()>),
}

/// The current socket's writer task.
struct Writer {
    ctl: mpsc::UnboundedSender<WriterCmd>,
    data: mpsc::Sender<Bytes>,
    abort: AbortHandle,
}

/// The current socket's read half and read deadline.
struct Conn {
    stream: SplitStream<Ws>,
    deadline: Instant,
}

/// Results of the rejoin task.
enum RejoinEvent {
    Connected { ws: Box<Ws>, attempt: usize },
    AlreadyTerminated(String),
    GaveUp(String),
}

/// Where the handshake is.
#[derive(Clone, Copy, Debug)]
enum Handshake {
    NotStarted,
    /// The plugin needs no handshake (shells without KMS): data flows at once.
    Skipped,
    /// Waiting for the HandshakeResponse.
    Waiting {
        started: Instant,
        deadline: Instant,
    },
    /// KMS: EncChallengeRequest sent, waiting for the EncChallengeResponse.
    Challenge {
        started: Instant,
        deadline: Instant,
    },
    Complete,
    Failed,
}

impl Handshake {
    /// Client data reaches the plugin (the agent's "skipped or complete").
    fn passes_data(self) -> bool {
        matches!(self, Self::Skipped | Self::Complete)
    }
}

/// A KMS Decrypt the receive path waits for: the message to deliver again once it answered,
/// and the answer (the data key, or the agent's error text).
type KmsWait = (ClientMessage, oneshot::Receiver<Result<Vec<u8>, String>>);

/// Why and how the session ends.
struct Ending {
    outcome: AgentOutcome,
    what: &'static str,
    detail: String,
    /// Send what is still buffered first and wait (at most [`CLOSE_DRAIN`]) for its acks,
    /// as the agent's `PrepareToCloseChannel` (the agent ended the session itself).
    drain: bool,
    /// Send `agent_session_state` Terminating before closing (the plugin completed).
    terminating: bool,
}

/// One destination connection as the core sees it.
struct Link {
    key: ConnKey,
    tx: mpsc::UnboundedSender<Bytes>,
}

/// The smux v1 server.
struct Mux {
    decoder: FrameDecoder,
    streams: HashMap<u32, Link>,
    keepalive: bool,
    /// A frame arrived since the last keepalive check (smux `dataReady`).
    data_ready: bool,
}

/// The plugin (port or shell) and the handshake: everything stream-data delivery touches,
/// kept apart from the reliable channel so that delivery can run inside [`Reliable::receive`].
struct PortSide {
    session_id: String,
    /// The target, bound into the KMS encryption context.
    instance_id: String,
    events: EventLog,
    controls: Arc<AgentControls>,
    properties: BTreeMap<String, serde_json::Value>,
    default_host: String,
    handshake: Handshake,
    client_version: String,
    /// The modelled agent's own version (old agents have no mux, or always keep alive).
    agent_version: String,
    mode: Option<PortMode>,
    dest: Option<Destination>,
    /// The port plugin's handler is registered (mux: at once; basic: after the first dial).
    ready: bool,
    /// The outgoing byte stream (smux frames or raw bytes) not yet cut into Output messages.
    pending: BytesMut,
    /// Stream-data messages (other than Output) to send once delivery returns.
    out: Vec<(PayloadType, Bytes)>,
    end: Option<Ending>,
    mux: Option<Mux>,
    basic: Option<Link>,
    next_conn: u64,
    dest_tasks: JoinSet<()>,
    dial_tx: mpsc::UnboundedSender<DialEvent>,
    dest_tx: mpsc::Sender<DestEvent>,
    /// How long each handshake wait lasts.
    handshake_timeout: Duration,
    /// The shell plugin, for the shell session types.
    shell: Option<ShellSide>,
    /// KMS encryption of a shell session.
    kms: Option<KmsState>,
    /// A KMS Decrypt the receive path waits for (set by delivery, started by the core).
    kms_call: Option<KmsCall>,
}

/// The agent session.
pub(super) struct Core {
    cfg: AgentConfig,
    mgs: Mgs,
    rel: Reliable,
    port: PortSide,
    conn: Option<Conn>,
    writer: Option<Writer>,
    tasks: JoinSet<()>,
    rng: StdRng,
    rejoin_tx: mpsc::UnboundedSender<RejoinEvent>,
    rejoin_rx: mpsc::UnboundedReceiver<RejoinEvent>,
    rejoining: bool,
    dial_rx: mpsc::UnboundedReceiver<DialEvent>,
    dest_rx: mpsc::Receiver<DestEvent>,
    pace_at: Option<Instant>,
    /// The pacing schedule: when the last paced message was due.
    pace_due: Option<Instant>,
    smux_nop: Option<Interval>,
    smux_check: Option<Interval>,
    /// What the shell's tasks report.
    shell_events: mpsc::Receiver<ShellEvent>,
    /// Tells the shell's readers whether the data channel is paused.
    paused_tx: watch::Sender<bool>,
    /// The receive path waits for KMS Decrypt: the message to deliver again, and the result.
    blocked: Option<KmsWait>,
}

impl Core {
    /// A session that has not connected yet.
    pub(super) fn new(cfg: AgentConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let client_id = new_id(&mut rng).to_string();
        let mgs = Mgs::new(
            &cfg.mgs_http_base,
            &cfg.mgs_ws_base,
            &cfg.session_id,
            &cfg.instance_id,
            client_id,
        );
        let (rejoin_tx, rejoin_rx) = mpsc::unbounded_channel();
        let (dial_tx, dial_rx) = mpsc::unbounded_channel();
        let (dest_tx, dest_rx) = mpsc::channel(DEST_QUEUE);
        let (shell_tx, shell_events) = super::shell::event_channel();
        let (paused_tx, paused_rx) = watch::channel(false);
        let shell = ShellKind::from_session_type(&cfg.session_type).map(|kind| {
            ShellSide::new(
                kind,
                &cfg.properties,
                ShellSettings {
                    shell: cfg.shell.clone(),
                    first_read_delay: cfg.shell_first_read_delay,
                    pacing: cfg.pacing,
                    profile: cfg.shell_profile.clone(),
                    session_id: cfg.session_id.clone(),
                },
                shell_tx,
                paused_rx,
            )
        });
        let kms = match (&shell, cfg.kms_key_id.as_deref().map(str::trim)) {
            (Some(_), Some(key_id)) if !key_id.is_empty() => Some(KmsState::new(
                key_id,
                cfg.require_kms_challenge_response,
                &cfg.kms_endpoint,
            )),
            _ => None,
        };
        let port = PortSide {
            session_id: cfg.session_id.clone(),
            instance_id: cfg.instance_id.clone(),
            events: cfg.events.clone(),
            controls: cfg.controls.clone(),
            properties: cfg.properties.clone(),
            default_host: cfg.default_host.clone(),
            handshake: Handshake::NotStarted,
            client_version: String::new(),
            agent_version: cfg.agent_version.clone(),
            mode: None,
            dest: None,
            ready: false,
            pending: BytesMut::new(),
            out: Vec::new(),
            end: None,
            mux: None,
            basic: None,
            next_conn: 1,
            dest_tasks: JoinSet::new(),
            dial_tx,
            dest_tx,
            handshake_timeout: cfg.handshake_timeout,
            shell,
            kms,
            kms_call: None,
        };
        Self {
            cfg,
            mgs,
            rel: Reliable::new(),
            port,
            conn: None,
            writer: None,
            tasks: JoinSet::new(),
            rng,
            rejoin_tx,
            rejoin_rx,
            rejoining: false,
            dial_rx,
            dest_rx,
            pace_at: None,
            pace_due: None,
            smux_nop: None,
            smux_check: None,
            shell_events,
            paused_tx,
            blocked: None,
        }
    }

    fn emit(&self, what: &str, detail: impl Into<String>) {
        emit(&self.cfg.events, &self.cfg.session_id, what, detail);
    }

    /// Runs the session until it ends; returns how it ended.
    pub(super) async fn run(mut self) -> AgentOutcome {
        let request_id = Uuid::new_v4().to_string();
        match self.mgs.connect(&request_id).await {
            Ok(ws) => {
                self.attach(ws);
                self.emit("data_channel_opened", "");
            }
            Err(err) => {
                let text = err.to_string();
                self.emit("open_failed", text.clone());
                return AgentOutcome::OpenFailed(text);
            }
        }
        self.send_session_state(SessionState::Connected);
        self.begin();

        let mut resend = tokio::time::interval(RESEND_INTERVAL);
        resend.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // An agent that ends the session itself first sends what it still has and waits
        // (at most CLOSE_DRAIN) for it to be acknowledged, like the agent's data channel
        // before it closes: output read just before the destination closed is not lost.
        let mut draining: Option<(Ending, Instant)> = None;
        loop {
            let paused = self.rel.paused();
            let shell_queued = self.port.shell.as_ref().map_or(0, ShellSide::queued_bytes);
            let pump_ready = !paused && (!self.port.pending.is_empty() || shell_queued > 0);
            let dest_ready = !paused && self.port.pending.len() < PENDING_HIGH_WATER;
            let shell_ready = self.port.shell.is_some() && shell_queued < SHELL_QUEUE_HIGH_WATER;
            let handshake_deadline = match self.port.handshake {
                Handshake::Waiting { deadline, .. } | Handshake::Challenge { deadline, .. } => {
                    Some(deadline)
                }
                _ => None,
            };
            let ending = self.port.end.is_some();
            let writer_data = if pump_ready {
                self.writer.as_ref().map(|w| w.data.clone())
            } else {
                None
            };
            tokio::select! {
                // Delivery asked to end the session: handle it before waiting for anything.
                () = std::future::ready(()), if ending => {}
                read = read_ws(&mut self.conn), if self.blocked.is_none() => self.on_ws_read(read),
                result = kms_result(&mut self.blocked), if self.blocked.is_some() => {
                    self.on_kms_result(result);
                }
                Some(event) = self.shell_events.recv(), if shell_ready => {
                    let paused = self.rel.paused();
                    self.port.on_shell_event(event, paused);
                }
                Some(event) = self.dial_rx.recv() => self.port.on_dial(event),
                Some(event) = self.dest_rx.recv(), if dest_ready => {
                    self.port.on_dest(event);
                    while self.port.dest_tasks.try_join_next().is_some() {}
                }
                permit = pump_slot(writer_data, self.pace_at), if pump_ready => self.pump(permit),
                _ = resend.tick() => self.resend(),
                Some(event) = self.rejoin_rx.recv() => self.on_rejoin(event),
                () = sleep_until_opt(handshake_deadline), if handshake_deadline.is_some() => {
                    let text = match self.port.handshake {
                        Handshake::Challenge { .. } => CHALLENGE_TIMED_OUT,
                        _ => HANDSHAKE_TIMED_OUT,
                    };
                    self.port.fail_handshake(text.to_owned());
                }
                () = tick_opt(&mut self.smux_nop) => {
                    if self.port.mux.is_some() {
                        Frame::nop().encode_into(&mut self.port.pending);
                    }
                }
                () = tick_opt(&mut self.smux_check) => self.port.smux_keepalive_check(),
                () = sleep_until_opt(draining.as_ref().map(|(_, until)| *until)),
                    if draining.is_some() => {}
            }
            self.flush_port_out();
            self.start_kms_call();
            self.arm_smux_keepalive();
            // The shell's readers look at this before each read, as the agent's IsActive().
            let paused = self.rel.paused();
            self.paused_tx.send_if_modified(|current| {
                let changed = *current != paused;
                *current = paused;
                changed
            });
            if let Some(ending) = self.port.end.take() {
                if ending.drain && draining.is_none() {
                    draining = Some((ending, Instant::now() + CLOSE_DRAIN));
                } else {
                    return self.finish(ending).await;
                }
            }
            if let Some((_, until)) = &draining {
                let drained = self.port.pending.is_empty()
                    && self
                        .port
                        .shell
                        .as_ref()
                        .is_none_or(|s| s.queued_bytes() == 0)
                    && self.rel.unacked() == 0;
                if (drained || Instant::now() >= *until)
                    && let Some((ending, _)) = draining.take()
                {
                    return self.finish(ending).await;
                }
            }
        }
    }

    /// Starts the plugin's side of the session: the handshake (Port always; shells when the
    /// agent does one: NonInteractiveCommands, KMS, or the forced handshake) or, for a shell
    /// without one, the shell itself.
    fn begin(&mut self) {
        let now = Instant::now();
        let payload = match &self.port.shell {
            None => HandshakeRequest {
                agent_version: self.cfg.agent_version.clone(),
                requested_client_actions: vec![RequestedClientAction {
                    action_type: ActionType::SessionType,
                    action_parameters: ActionParameters::SessionType(SessionTypeRequest {
                        session_type: "Port".to_owned(),
                        properties: self.cfg.properties.clone(),
                    }),
                }],
            }
            .to_payload(),
            Some(shell) => {
                if let Err(text) = shell.check_before_handshake() {
                    self.port.fail_shell(text);
                    return;
                }
                let kind = shell.kind();
                let handshake = kind == ShellKind::NonInteractiveCommands
                    || self.port.kms.is_some()
                    || self.cfg.force_handshake;
                if !handshake {
                    self.port.handshake = Handshake::Skipped;
                    self.emit("handshake_skipped", kind.name());
                    self.port.start_shell();
                    return;
                }
                shell_side::handshake_request(&self.cfg.agent_version, kind, self.port.kms.as_ref())
            }
        };
        self.send_stream(PayloadType::HANDSHAKE_REQUEST, payload);
        self.port.handshake = Handshake::Waiting {
            started: now,
            deadline: now + self.cfg.handshake_timeout,
        };
        self.emit(
            "handshake_request_sent",
            format!(
                "agent_version={} session_type={} encrypted={}",
                self.cfg.agent_version,
                self.cfg.session_type,
                self.port.kms.is_some()
            ),
        );
    }

    /// Starts the KMS Decrypt delivery asked for; the receive path waits for it.
    fn start_kms_call(&mut self) {
        let Some(call) = self.port.kms_call.take() else {
            return;
        };
        self.emit("kms_decrypt_requested", call.describe());
        let (tx, rx) = oneshot::channel();
        let KmsCall {
            message,
            endpoint,
            blob,
            context,
            key_id,
        } = call;
        self.tasks.spawn(async move {
            let result = super::crypto::kms_decrypt(&endpoint, &blob, &context, &key_id).await;
            let _ = tx.send(result);
        });
        self.blocked = Some((message, rx));
    }

    /// KMS answered: deliver the HandshakeResponse again, now with the data key (or the
    /// error), and read frames again.
    fn on_kms_result(
        &mut self,
        result: Result<Result<Vec<u8>, String>, oneshot::error::RecvError>,
    ) {
        let Some((message, _)) = self.blocked.take() else {
            return;
        };
        let result = result.unwrap_or_else(|_| Err("the KMS call was abandoned".to_owned()));
        match &result {
            Ok(_) => self.emit("kms_decrypt_ok", ""),
            Err(err) => self.emit("kms_decrypt_failed", err.clone()),
        }
        if let Some(kms) = self.port.kms.as_mut() {
            kms.set_decrypted(result);
        }
        self.on_stream_data(message);
    }

    /// Installs a freshly opened socket: read half here, write half in a new writer task.
    fn attach(&mut self, ws: Ws) {
        let (sink, stream) = ws.split();
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let (data_tx, data_rx) = mpsc::channel(WRITER_QUEUE);
        let abort = self
            .tasks
            .spawn(writer_task(sink, ctl_rx, data_rx, self.cfg.ping_interval));
        self.writer = Some(Writer {
            ctl: ctl_tx,
            data: data_tx,
            abort,
        });
        self.conn = Some(Conn {
            stream,
            deadline: Instant::now() + self.cfg.ping_interval + self.cfg.pong_wait,
        });
    }

    fn on_ws_read(&mut self, read: WsRead) {
        match read {
            WsRead::Message(Message::Binary(frame)) => self.on_frame(frame),
            WsRead::Message(Message::Pong(_)) => {
                if let Some(conn) = self.conn.as_mut() {
                    conn.deadline = Instant::now() + self.cfg.pong_wait;
                }
            }
            WsRead::Message(Message::Close(frame)) => {
                let reason = match frame {
                    Some(frame) => format!(
                        "websocket: close {} ({}): {}",
                        u16::from(frame.code),
                        frame.code,
                        frame.reason
                    ),
                    None => "websocket: close 1005 (no status)".to_owned(),
                };
                self.socket_lost(reason);
            }
            WsRead::Message(Message::Text(_) | Message::Ping(_) | Message::Frame(_)) => {}
            WsRead::Ended => self.socket_lost("EOF".to_owned()),
            WsRead::Error(err) => self.socket_lost(err),
            WsRead::Deadline => self.socket_lost("i/o timeout".to_owned()),
        }
    }

    /// The socket is dead: drop it (the agent closes TCP without a close handshake) and
    /// rejoin. Everything else survives.
    fn socket_lost(&mut self, reason: String) {
        self.emit("socket_lost", reason);
        self.conn = None;
        if let Some(writer) = self.writer.take() {
            writer.abort.abort();
        }
        self.start_rejoin();
    }

    fn start_rejoin(&mut self) {
        if self.rejoining {
            return;
        }
        self.rejoining = true;
        // The agent draws the initial delay once per outage: rand.Intn(100) + 100 ms.
        let initial = Duration::from_millis(self.rng.random_range(100..200));
        let delays = mgs::rejoin_delays(initial);
        let mgs = self.mgs.clone();
        let tx = self.rejoin_tx.clone();
        let events = self.cfg.events.clone();
        let session_id = self.cfg.session_id.clone();
        self.tasks.spawn(async move {
            // One RequestId for the whole outage, as the agent's onErrorHandler does.
            let request_id = Uuid::new_v4().to_string();
            let mut last: Option<MgsError> = None;
            for attempt in 1..=mgs::REJOIN_ATTEMPTS {
                emit(
                    &events,
                    &session_id,
                    "rejoin_attempt",
                    format!("attempt {attempt}"),
                );
                match mgs.connect(&request_id).await {
                    Ok(ws) => {
                        let _ = tx.send(RejoinEvent::Connected {
                            ws: Box::new(ws),
                            attempt,
                        });
                        return;
                    }
                    Err(err) => {
                        emit(
                            &events,
                            &session_id,
                            "rejoin_failed",
                            format!("attempt {attempt}: {err}"),
                        );
                        if err.is_terminal() {
                            let _ = tx.send(RejoinEvent::AlreadyTerminated(err.to_string()));
                            return;
                        }
                        last = Some(err);
                    }
                }
                if let Some(delay) = delays.get(attempt - 1) {
                    tokio::time::sleep(*delay).await;
                }
            }
            let text = last.map_or_else(String::new, |err| err.to_string());
            let _ = tx.send(RejoinEvent::GaveUp(text));
        });
    }

    fn on_rejoin(&mut self, event: RejoinEvent) {
        match event {
            RejoinEvent::Connected { ws, attempt } => {
                self.rejoining = false;
                // Forget the finished rejoin task and the aborted writer of the old socket, so
                // a long run of recycles does not accumulate them.
                while self.tasks.try_join_next().is_some() {}
                self.attach(*ws);
                // Reconnect clears Pause; the resend scheduler then resends the head.
                self.rel.set_paused(false);
                self.emit(
                    "rejoin_ok",
                    format!(
                        "attempt {attempt}; next seq {}, expected {}, unacked {}, buffered incoming {}",
                        self.rel.next_sequence(),
                        self.rel.expected(),
                        self.rel.unacked(),
                        self.rel.buffered_incoming()
                    ),
                );
            }
            RejoinEvent::AlreadyTerminated(err) => {
                self.emit("rejoin_gave_up", err.clone());
                self.port.finish(
                    AgentOutcome::SessionAlreadyTerminated(err.clone()),
                    "terminated",
                    err,
                    false,
                );
            }
            RejoinEvent::GaveUp(err) => {
                self.port.finish(
                    AgentOutcome::RejoinGaveUp(err.clone()),
                    "rejoin_gave_up",
                    format!("after {} attempts: {err}", mgs::REJOIN_ATTEMPTS),
                    false,
                );
            }
        }
    }

    fn on_frame(&mut self, frame: Bytes) {
        let message = match ClientMessage::decode(frame) {
            Ok(decoded) => decoded.message,
            Err(err) => {
                self.emit("invalid_frame", err.to_string());
                return;
            }
        };
        // The agent's Validate(): a zero CreatedDate is invalid. It never checks the digest.
        if message.created_date == 0 {
            self.emit("invalid_frame", "CreatedDate is 0");
            return;
        }
        match message.message_type {
            MessageType::InputStreamData => self.on_stream_data(message),
            MessageType::Acknowledge => {
                // Pause is cleared before the payload is even parsed.
                self.rel.set_paused(false);
                if let Ok(ack) = AcknowledgeContent::from_payload(&message.payload) {
                    self.rel
                        .on_ack(Instant::now().into_std(), ack.sequence_number);
                }
            }
            MessageType::ChannelClosed => {
                let output = ChannelClosed::from_payload(&message.payload)
                    .map(|closed| closed.output)
                    .unwrap_or_default();
                self.port.finish(
                    AgentOutcome::ChannelClosed(output.clone()),
                    "terminated",
                    format!("channel_closed: {output}"),
                    false,
                );
            }
            MessageType::PausePublication => {
                self.rel.set_paused(true);
                self.emit("paused", "");
            }
            MessageType::StartPublication => {
                self.rel.set_paused(false);
                self.emit("resumed_publication", "");
            }
            _ => {}
        }
    }

    fn on_stream_data(&mut self, message: ClientMessage) {
        let now = Instant::now();
        let seq = message.sequence_number;
        let port = &mut self.port;
        let received = self.rel.receive(message, |m| port.deliver(m, now));
        if let Some(ack) = received.ack {
            let id = new_id(&mut self.rng);
            self.send_control(ack.into_message(now_ms(), id).encode());
        }
        match received.arrival {
            Arrival::Duplicate => self.emit("duplicate_reacked", format!("seq {seq}")),
            Arrival::Dropped => self.emit("incoming_dropped", format!("seq {seq}")),
            Arrival::Delivered(_) | Arrival::NotReady | Arrival::Buffered => {}
        }
    }

    /// Writes a non-sequenced frame (ack, session state) if a socket is up.
    fn send_control(&self, frame: Bytes) {
        if let Some(writer) = &self.writer {
            let _ = writer.ctl.send(WriterCmd::Frame(frame));
        }
    }

    /// Sends a stream-data message outside the Output pump (handshake, flags).
    fn send_stream(&mut self, payload_type: PayloadType, payload: Bytes) {
        // The agent ignores empty stream-data payloads.
        if payload.is_empty() {
            return;
        }
        let id = new_id(&mut self.rng);
        let sent = self.rel.send(
            Instant::now().into_std(),
            now_ms(),
            id,
            payload_type,
            payload,
        );
        if !sent.buffered {
            self.emit(
                "outgoing_buffer_full",
                format!("seq {} not buffered", sent.seq),
            );
        }
        if sent.transmit {
            self.send_control(sent.frame);
        }
    }

    fn send_session_state(&mut self, state: SessionState) {
        let name = state.as_str().to_owned();
        let content = AgentSessionState {
            schema_version: 1,
            session_state: state,
            session_id: self.cfg.session_id.clone(),
        };
        let message = ClientMessage {
            message_type: MessageType::AgentSessionState,
            schema_version: SCHEMA_VERSION,
            created_date: now_ms(),
            sequence_number: 0,
            flags: FLAGS_CONTROL,
            message_id: new_id(&mut self.rng),
            payload_type: PayloadType::UNSPECIFIED,
            payload: content.to_payload(),
        };
        self.send_control(message.encode());
        self.emit("session_state_sent", name);
    }

    fn flush_port_out(&mut self) {
        if self.port.out.is_empty() {
            return;
        }
        for (payload_type, payload) in std::mem::take(&mut self.port.out) {
            self.send_stream(payload_type, payload);
        }
    }

    /// Sends Output messages cut from the pending byte stream: one, then either waits
    /// `pacing` or (unpaced) continues while the writer has room.
    fn pump(&mut self, first: Option<OwnedPermit<Bytes>>) {
        self.pace_at = None;
        let frame = self.next_frame();
        if let (Some(permit), Some(frame)) = (first, frame) {
            permit.send(frame);
        }
        // A shell's readers pace themselves (the agent sleeps after each read, not each send).
        if !self.cfg.pacing.is_zero() && self.port.shell.is_none() {
            // The real agent sleeps 1 ms after each message, and Go's sleep is accurate to
            // tens of microseconds. A tokio timer rounds up to the next millisecond tick, so
            // sleeping "now + pacing" would halve the rate; keep an absolute schedule instead,
            // with at most one interval of catch-up after a late wake-up or an idle spell.
            let now = Instant::now();
            let due = match self.pace_due {
                Some(previous) => {
                    let floor = now.checked_sub(self.cfg.pacing).unwrap_or(now);
                    (previous + self.cfg.pacing).max(floor)
                }
                None => now + self.cfg.pacing,
            };
            self.pace_due = Some(due);
            self.pace_at = Some(due);
            return;
        }
        let writer = self.writer.as_ref().map(|writer| writer.data.clone());
        for _ in 1..PUMP_BURST {
            let queued = !self.port.pending.is_empty()
                || self
                    .port
                    .shell
                    .as_ref()
                    .is_some_and(|s| s.queued_bytes() > 0);
            if !queued || self.rel.paused() {
                break;
            }
            match &writer {
                Some(data) => {
                    let Ok(permit) = data.try_reserve() else {
                        break;
                    };
                    if let Some(frame) = self.next_frame() {
                        permit.send(frame);
                    }
                }
                // Socket down: the message only goes into the resend buffer.
                None => {
                    self.next_frame();
                }
            }
        }
    }

    /// Numbers and buffers the next outgoing data message: a shell's next payload (encrypted
    /// when the session is: Output, StdErr and ExitCode) or the next chunk of the port's byte
    /// stream. Returns the frame if it is to be written now.
    fn next_frame(&mut self) -> Option<Bytes> {
        let Some(shell) = self.port.shell.as_mut() else {
            return next_output_frame(&mut self.rel, &mut self.port.pending, &mut self.rng);
        };
        let (payload_type, payload) = shell.pop()?;
        let payload = match self.port.kms.as_mut().and_then(KmsState::cipher_mut) {
            Some(cipher)
                if matches!(
                    payload_type,
                    PayloadType::OUTPUT | PayloadType::STD_ERR | PayloadType::EXIT_CODE
                ) =>
            {
                match cipher.encrypt(&payload) {
                    Ok(sealed) => Bytes::from(sealed),
                    Err(err) => {
                        self.emit("encrypt_failed", err.to_string());
                        return None;
                    }
                }
            }
            _ => payload,
        };
        let sent = self.rel.send(
            Instant::now().into_std(),
            now_ms(),
            new_id(&mut self.rng),
            payload_type,
            payload,
        );
        sent.transmit.then_some(sent.frame)
    }

    fn resend(&mut self) {
        if let Some((seq, frame)) = self.rel.poll_resend(Instant::now().into_std()) {
            self.emit(
                "resend",
                format!(
                    "seq {seq} rto {:?} rtt {:?} rttvar {:?} unacked {}",
                    self.rel.rto(),
                    self.rel.rtt(),
                    self.rel.rttvar(),
                    self.rel.unacked()
                ),
            );
            self.send_control(frame);
        }
    }

    fn arm_smux_keepalive(&mut self) {
        if self.smux_nop.is_some() || !self.port.mux.as_ref().is_some_and(|mux| mux.keepalive) {
            return;
        }
        let now = Instant::now();
        let (every, timeout) = (
            self.cfg.smux_keepalive_interval,
            self.cfg.smux_keepalive_timeout,
        );
        let mut nop = tokio::time::interval_at(now + every, every);
        nop.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut check = tokio::time::interval_at(now + timeout, timeout);
        check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        self.smux_nop = Some(nop);
        self.smux_check = Some(check);
    }

    /// Ends the session: reports Terminating if the agent ended it, closes the socket
    /// normally, closes every destination connection and stops every task.
    async fn finish(mut self, ending: Ending) -> AgentOutcome {
        self.emit(ending.what, ending.detail.clone());
        if ending.terminating {
            self.send_session_state(SessionState::Terminating);
        }
        if let Some(writer) = self.writer.take() {
            let (done_tx, done_rx) = oneshot::channel();
            if writer.ctl.send(WriterCmd::Close(done_tx)).is_ok() {
                let _ = tokio::time::timeout(CLOSE_DRAIN, done_rx).await;
            }
            writer.abort.abort();
        }
        self.conn = None;
        self.port.mux = None;
        self.port.basic = None;
        // Dropping the shell kills its process group and closes the pty.
        self.port.shell = None;
        // The agent writes what a client sends to the destination as it processes each
        // message, so everything received before the end has reached the destination by
        // now; here those writes run in tasks, which get to finish them (bounded).
        let writes_done = async { while self.port.dest_tasks.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(CLOSE_DRAIN, writes_done).await;
        self.port.dest_tasks.abort_all();
        self.tasks.abort_all();
        ending.outcome
    }
}

/// Cuts one Output message off `pending` and numbers/buffers it; returns the frame if it is
/// to be written now.
fn next_output_frame(
    rel: &mut Reliable,
    pending: &mut BytesMut,
    rng: &mut StdRng,
) -> Option<Bytes> {
    let chunk = port::take_chunk(pending);
    if chunk.is_empty() {
        return None;
    }
    let sent = rel.send(
        Instant::now().into_std(),
        now_ms(),
        new_id(rng),
        PayloadType::OUTPUT,
        chunk,
    );
    // A full buffer (100 000 unacked messages) means the message is sent once, never resent.
    sent.transmit.then_some(sent.frame)
}

async fn read_ws(conn: &mut Option<Conn>) -> WsRead {
    let Some(conn) = conn.as_mut() else {
        return std::future::pending().await;
    };
    match tokio::time::timeout_at(conn.deadline, conn.stream.next()).await {
        Err(_) => WsRead::Deadline,
        Ok(None) => WsRead::Ended,
        Ok(Some(Err(err))) => WsRead::Error(err.to_string()),
        Ok(Some(Ok(message))) => WsRead::Message(message),
    }
}

/// The result of the KMS call the receive path waits for.
async fn kms_result(
    blocked: &mut Option<KmsWait>,
) -> Result<Result<Vec<u8>, String>, oneshot::error::RecvError> {
    match blocked {
        Some((_, result)) => result.await,
        None => std::future::pending().await,
    }
}

/// Waits until the pump may send: the pacing delay, then room in the writer's queue (no wait
/// when the socket is down: the message just goes into the buffer).
async fn pump_slot(
    writer: Option<mpsc::Sender<Bytes>>,
    pace_at: Option<Instant>,
) -> Option<OwnedPermit<Bytes>> {
    if let Some(at) = pace_at {
        tokio::time::sleep_until(at).await;
    }
    match writer {
        Some(tx) => tx.reserve_owned().await.ok(),
        None => None,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn tick_opt(interval: &mut Option<Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Owns the socket's write half: frames in order, batched into one flush; `keepalive` pings
/// every ping interval (first after one interval, like the agent's ticker). After a write
/// error it keeps draining its queues so the core never blocks on a dead socket.
async fn writer_task(
    mut sink: SplitSink<Ws, Message>,
    mut ctl: mpsc::UnboundedReceiver<WriterCmd>,
    mut data: mpsc::Receiver<Bytes>,
    ping_interval: Duration,
) {
    let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut healthy = true;
    loop {
        tokio::select! {
            biased;
            cmd = ctl.recv() => match cmd {
                None => return,
                Some(WriterCmd::Close(done)) => {
                    if healthy {
                        let close = Message::Close(Some(CloseFrame {
                            code: CloseCode::Normal,
                            reason: "".into(),
                        }));
                        let _ = sink.send(close).await;
                    }
                    let _ = done.send(());
                    return;
                }
                Some(WriterCmd::Frame(frame)) => {
                    if healthy {
                        healthy = write_batch(&mut sink, frame, &mut data).await;
                    }
                }
            },
            frame = data.recv() => match frame {
                None => return,
                Some(frame) => {
                    if healthy {
                        healthy = write_batch(&mut sink, frame, &mut data).await;
                    }
                }
            },
            _ = ping.tick(), if healthy => {
                healthy = sink
                    .send(Message::Ping(Bytes::from_static(b"keepalive")))
                    .await
                    .is_ok();
            }
        }
    }
}

/// Feeds `first` and whatever else is queued (up to a batch), then flushes once.
async fn write_batch(
    sink: &mut SplitSink<Ws, Message>,
    first: Bytes,
    data: &mut mpsc::Receiver<Bytes>,
) -> bool {
    if sink.feed(Message::Binary(first)).await.is_err() {
        return false;
    }
    for _ in 1..WRITE_BATCH {
        match data.try_recv() {
            Ok(frame) => {
                if sink.feed(Message::Binary(frame)).await.is_err() {
                    return false;
                }
            }
            Err(_) => break,
        }
    }
    sink.flush().await.is_ok()
}

impl PortSide {
    fn emit(&self, what: &str, detail: impl Into<String>) {
        emit(&self.events, &self.session_id, what, detail);
    }

    /// Requests the end of the session (the first request wins); `terminating`: the agent
    /// ended it itself, so it drains and reports `Terminating`.
    fn finish(
        &mut self,
        outcome: AgentOutcome,
        what: &'static str,
        detail: String,
        terminating: bool,
    ) {
        self.finish_with(outcome, what, detail, terminating, terminating);
    }

    /// Requests the end of the session, draining first or not, with or without
    /// `Terminating` (the first request wins).
    fn finish_with(
        &mut self,
        outcome: AgentOutcome,
        what: &'static str,
        detail: String,
        drain: bool,
        terminating: bool,
    ) {
        if self.end.is_none() {
            self.end = Some(Ending {
                outcome,
                what,
                detail,
                drain,
                terminating,
            });
        }
    }

    /// Processes one in-order client stream-data message; `false` = handler not ready or the
    /// processing failed (leave it unacked so the client resends).
    fn deliver(&mut self, message: &ClientMessage, now: Instant) -> bool {
        if self.end.is_some() {
            return true;
        }
        match message.payload_type {
            PayloadType::HANDSHAKE_RESPONSE => return self.on_handshake_response(message, now),
            PayloadType::ENC_CHALLENGE_RESPONSE => {
                return self.on_challenge_response(message, now);
            }
            _ => {}
        }
        if !self.handshake.passes_data() {
            // Until the handshake completes the agent acks and discards everything else.
            self.emit(
                "discarded_before_handshake",
                format!(
                    "seq {} payload type {:?}",
                    message.sequence_number, message.payload_type
                ),
            );
            return true;
        }
        if self.shell.is_some() {
            return self.deliver_to_shell(message);
        }
        match message.payload_type {
            _ if !self.ready => false,
            PayloadType::OUTPUT => {
                self.on_output(&message.payload);
                true
            }
            PayloadType::FLAG => {
                self.on_flag(&message.payload);
                true
            }
            _ => true,
        }
    }

    /// The agent's `handleHandshakeResponse`. `false`: not processed (unparsable, or the KMS
    /// data key must be fetched first), so not acked.
    fn on_handshake_response(&mut self, message: &ClientMessage, now: Instant) -> bool {
        // A late or repeated response (new sequence number) is ignored once decided.
        let Handshake::Waiting { started, .. } = self.handshake else {
            return true;
        };
        let response = match HandshakeResponse::from_payload(&message.payload) {
            Ok(response) => response,
            Err(err) => {
                // The agent's handler fails before the ack: the client resends, and the
                // handshake times out unless a valid response comes.
                self.emit(
                    "handshake_response_invalid",
                    format!("processing of HandshakeResponse message failed, Unmarshalling of HandshakeResponse message failed, {err}"),
                );
                return false;
            }
        };
        // Every action is processed; a failure cancels the session (the last one is told).
        let mut error = None;
        for action in &response.processed_client_actions {
            if action.action_status != ActionStatus::SUCCESS {
                error = Some(format!(
                    "{} failed on client with status {} error: {}",
                    action.action_type.as_str(),
                    action.action_status.0,
                    action.error
                ));
                continue;
            }
            match &action.action_type {
                ActionType::KmsEncryption => {
                    match self.finalize_kms(message, &action.action_result) {
                        KmsStep::Ready => {}
                        KmsStep::Failed(text) => error = Some(text),
                        KmsStep::Waiting => return false,
                    }
                }
                ActionType::SessionType => {}
                other => self.emit("unknown_client_action", other.as_str().to_owned()),
            }
        }
        if let Some(error) = error {
            self.fail_handshake(error);
            return true;
        }
        self.client_version = response.client_version;
        if self.kms.is_some() {
            self.send_challenge(started, now);
        } else {
            self.complete_handshake(started, now);
        }
        true
    }

    fn fail_handshake(&mut self, error: String) {
        self.handshake = Handshake::Failed;
        self.finish(
            AgentOutcome::HandshakeFailed(error.clone()),
            "handshake_failed",
            error,
            true,
        );
    }

    /// The port plugin starts after the handshake: mode from the client version, then the
    /// smux server (ready at once) or the first destination dial (ready when connected).
    fn start_port(&mut self) {
        let mode = port::select_mode(&self.properties, &self.client_version, &self.agent_version);
        let dest = match port::destination(&self.properties, &self.default_host) {
            Ok(dest) => dest,
            Err(err) => {
                self.finish(
                    AgentOutcome::PortSessionFailed(err.clone()),
                    "port_failed",
                    err,
                    true,
                );
                return;
            }
        };
        self.emit(
            "port_session_started",
            format!("mode={mode:?} destination={dest}"),
        );
        self.mode = Some(mode);
        self.dest = Some(dest);
        match mode {
            PortMode::Mux { keepalive } => {
                self.mux = Some(Mux {
                    decoder: FrameDecoder::new(),
                    streams: HashMap::new(),
                    keepalive,
                    data_ready: false,
                });
                self.ready = true;
            }
            PortMode::Basic { .. } => {
                self.basic = self.open_link(0, None);
            }
        }
    }

    /// Starts a destination connection (dial, then copy) for `stream_id` (0 in basic mode),
    /// with `first` queued for writing once connected.
    fn open_link(&mut self, stream_id: u32, first: Option<Bytes>) -> Option<Link> {
        let dest = self.dest.clone()?;
        let key = ConnKey {
            id: self.next_conn,
            stream_id,
        };
        self.next_conn += 1;
        let (tx, rx) = mpsc::unbounded_channel();
        if let Some(first) = first {
            let _ = tx.send(first);
        }
        self.dest_tasks.spawn(dest::run(
            key,
            dest,
            self.controls.clone(),
            rx,
            self.dial_tx.clone(),
            self.dest_tx.clone(),
        ));
        Some(Link { key, tx })
    }

    fn on_output(&mut self, payload: &Bytes) {
        if self.mux.is_none() {
            // Basic mode: raw bytes; redial lazily if the destination was closed.
            match &self.basic {
                Some(link) => {
                    let _ = link.tx.send(payload.clone());
                }
                None => {
                    self.emit("redial", "next client data after the destination closed");
                    self.basic = self.open_link(0, Some(payload.clone()));
                }
            }
            return;
        }
        if let Some(mux) = self.mux.as_mut() {
            mux.decoder.push(payload);
        }
        loop {
            let Some(mux) = self.mux.as_mut() else {
                return;
            };
            match mux.decoder.next_frame() {
                Ok(None) => return,
                Ok(Some(frame)) => {
                    mux.data_ready = true;
                    self.on_smux_frame(frame);
                }
                Err(err) => {
                    self.smux_closed(format!("smux protocol error: {err}"));
                    return;
                }
            }
        }
    }

    fn on_smux_frame(&mut self, frame: Frame) {
        let sid = frame.stream_id;
        match frame.command {
            Command::Syn => {
                if self
                    .mux
                    .as_ref()
                    .is_some_and(|mux| mux.streams.contains_key(&sid))
                {
                    return;
                }
                self.emit("stream_opened", format!("stream {sid}"));
                if let Some(link) = self.open_link(sid, None)
                    && let Some(mux) = self.mux.as_mut()
                {
                    mux.streams.insert(sid, link);
                }
            }
            Command::Psh => {
                // Frames for unknown streams are read and discarded, as smux does.
                if let Some(link) = self.mux.as_ref().and_then(|mux| mux.streams.get(&sid)) {
                    let _ = link.tx.send(frame.data);
                }
            }
            Command::Fin => {
                if self.remove_stream(sid).is_some() {
                    self.emit("stream_closed", format!("stream {sid}: client FIN"));
                }
            }
            Command::Nop => {}
        }
    }

    /// Forgets a stream (its connection closes once queued writes are done) and sends FIN,
    /// as the agent's `stream.Close()` does when its copy ends.
    fn remove_stream(&mut self, sid: u32) -> Option<Link> {
        let link = self.mux.as_mut()?.streams.remove(&sid)?;
        Frame::fin(sid).encode_into(&mut self.pending);
        Some(link)
    }

    fn link_matches(&self, key: ConnKey) -> bool {
        match &self.mux {
            Some(mux) => mux
                .streams
                .get(&key.stream_id)
                .is_some_and(|link| link.key == key),
            None => self.basic.as_ref().is_some_and(|link| link.key == key),
        }
    }

    fn on_dial(&mut self, event: DialEvent) {
        match event {
            DialEvent::Connected { key, addr } => {
                if !self.link_matches(key) {
                    return;
                }
                self.emit("dial_ok", format!("stream {} -> {addr}", key.stream_id));
                if self.mux.is_none() {
                    self.ready = true;
                }
            }
            DialEvent::Failed { key, error } => {
                if !self.link_matches(key) {
                    return;
                }
                self.emit("dial_failed", format!("stream {}: {error}", key.stream_id));
                if self.mux.is_some() {
                    // Flag first, then the stream's FIN, like handleServerConnections.
                    self.out
                        .push((PayloadType::FLAG, Flag::ConnectToPortError.to_payload()));
                    self.remove_stream(key.stream_id);
                } else {
                    self.basic = None;
                    let text = format!("Unable to connect to specified port: {error}");
                    self.finish(
                        AgentOutcome::PortSessionFailed(text.clone()),
                        "port_failed",
                        text,
                        true,
                    );
                }
            }
        }
    }

    fn on_dest(&mut self, event: DestEvent) {
        match event {
            DestEvent::Data { key, data } => {
                if !self.link_matches(key) {
                    return;
                }
                if self.mux.is_some() {
                    // One destination read = one smux write, split at 32 KiB like smux.
                    smux::encode_data(
                        key.stream_id,
                        &data,
                        smux::MAX_FRAME_SIZE,
                        &mut self.pending,
                    );
                } else {
                    self.pending.extend_from_slice(&data);
                }
            }
            DestEvent::Closed { key, reason } => {
                if !self.link_matches(key) {
                    return;
                }
                if self.mux.is_some() {
                    self.remove_stream(key.stream_id);
                    self.emit(
                        "stream_closed",
                        format!("stream {}: destination {reason}", key.stream_id),
                    );
                    return;
                }
                self.basic = None;
                self.emit("stream_closed", format!("destination {reason}"));
                if let Some(PortMode::Basic {
                    eof_ends_session: true,
                }) = self.mode
                {
                    let text = format!("destination closed: {reason}");
                    self.finish(
                        AgentOutcome::PortSessionFailed(text.clone()),
                        "port_session_ended",
                        text,
                        true,
                    );
                }
            }
        }
    }

    fn on_flag(&mut self, payload: &[u8]) {
        let Ok(flag) = Flag::from_payload(payload) else {
            return;
        };
        self.emit("flag_received", format!("{flag:?}"));
        match flag {
            Flag::TerminateSession => self.finish(
                AgentOutcome::TerminatedByClient,
                "terminated",
                "TerminateSession flag received".to_owned(),
                true,
            ),
            // Basic mode only; the mux session ignores it.
            Flag::DisconnectToPort if self.mux.is_none() && self.basic.take().is_some() => {
                self.emit("stream_closed", "DisconnectToPort");
            }
            _ => {}
        }
    }

    /// smux's keepalive check: no frame since the last one closes the smux session.
    fn smux_keepalive_check(&mut self) {
        let Some(mux) = self.mux.as_mut() else {
            return;
        };
        if mux.data_ready {
            mux.data_ready = false;
        } else {
            self.smux_closed("smux keepalive timeout".to_owned());
        }
    }

    /// The smux session died: every stream dies with it and the port session ends.
    fn smux_closed(&mut self, reason: String) {
        self.mux = None;
        self.emit("smux_closed", reason.clone());
        self.finish(
            AgentOutcome::PortSessionFailed(reason.clone()),
            "port_failed",
            reason,
            true,
        );
    }
}
