//! The shell plugin and KMS encryption inside the session core (PROTOCOL-SESSIONS.md §1, §3,
//! §4): the shell HandshakeRequest, the KMS key exchange and challenge, delivery of client
//! Output and Size to the pty or the command, and what the shell's tasks report.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Serialize;
use ssm_tether_protocol::payload::{
    EncryptionChallenge, HandshakeComplete, KmsEncryptionRequest, KmsEncryptionResponse, SizeData,
};
use ssm_tether_protocol::{ClientMessage, PayloadType};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::super::crypto::{
    self, BlockCipher, CONTEXT_RANDOM_CHALLENGE, CONTEXT_SESSION_ID, CONTEXT_TARGET_ID,
    ENC_CHALLENGE_BYTES,
};
use super::super::port::compare_versions;
use super::super::shell::{
    Interrupt, ShellEvent, ShellKind, ShellProcess, ShellProps, ShellSettings, StartError,
    shell_props, valid_prefix,
};
use super::{AgentOutcome, Handshake, PortSide, VecDeque};

/// The CustomerMessage of an encrypted session's HandshakeComplete.
const KMS_CUSTOMER_MESSAGE: &str = "This session is encrypted using AWS KMS.";
/// Clients up to this version cannot tell StdErr from Output.
const CLIENT_VERSION_WITHOUT_OUTPUT_SEPARATION: &str = "1.2.295";
/// The upgrade notice for such clients in a separate-stream session.
const SEPARATION_UPGRADE_MESSAGE: &str = "Please update session manager plugin version (minimum required version 1.2.312.0) for fully support of separate StdOut/StdErr output.\r\n";
/// The agent's pause before it sends a command's start error as StdErr
/// (`sendErrorToDataChannel`).
const START_ERROR_DELAY: std::time::Duration = std::time::Duration::from_secs(1);
/// The agent's extra pause after a failed `StartCommandExecutor`.
const EXECUTOR_ERROR_DELAY: std::time::Duration = std::time::Duration::from_secs(2);

/// The shell plugin's state in the core.
pub(super) struct ShellSide {
    kind: ShellKind,
    props: Result<ShellProps, String>,
    settings: ShellSettings,
    events: mpsc::Sender<ShellEvent>,
    paused: watch::Receiver<bool>,
    process: Option<ShellProcess>,
    /// Delayed reports (start errors).
    aux: JoinSet<()>,
    /// Payloads to send, in order, not yet numbered (Output, StdErr, ExitCode).
    queue: VecDeque<(PayloadType, Bytes)>,
    queued: usize,
    stdout_done: bool,
    stderr_done: bool,
    exit_code: Option<i32>,
    /// The plugin has finished (the session is ending).
    finished: bool,
}

impl ShellSide {
    /// A shell plugin that has not started yet.
    pub(super) fn new(
        kind: ShellKind,
        properties: &BTreeMap<String, serde_json::Value>,
        settings: ShellSettings,
        events: mpsc::Sender<ShellEvent>,
        paused: watch::Receiver<bool>,
    ) -> Self {
        // Standard_Stream runs with empty shell properties, whatever the document says.
        let props = match kind {
            ShellKind::StandardStream => shell_props(&BTreeMap::new()),
            _ => shell_props(properties),
        };
        Self {
            kind,
            props,
            settings,
            events,
            paused,
            process: None,
            aux: JoinSet::new(),
            queue: VecDeque::new(),
            queued: 0,
            stdout_done: false,
            stderr_done: false,
            exit_code: None,
            finished: false,
        }
    }

    /// The plugin.
    pub(super) fn kind(&self) -> ShellKind {
        self.kind
    }

    /// Bytes queued and not yet sent.
    pub(super) fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// The next payload to send.
    pub(super) fn pop(&mut self) -> Option<(PayloadType, Bytes)> {
        let (payload_type, payload) = self.queue.pop_front()?;
        self.queued -= payload.len();
        Some((payload_type, payload))
    }

    fn push(&mut self, payload_type: PayloadType, payload: Bytes) {
        // The agent never sends an empty payload.
        if payload.is_empty() {
            return;
        }
        self.queued += payload.len();
        self.queue.push_back((payload_type, payload));
    }

    /// Whether a NonInteractiveCommands session separates its streams.
    fn separate(&self) -> bool {
        self.kind == ShellKind::NonInteractiveCommands
            && matches!(&self.props, Ok(props) if props.separate_output == Ok(true))
    }

    /// What the agent checks before its handshake: the properties' shape, and for
    /// NonInteractiveCommands whether `separateOutputStream` converts to a boolean.
    pub(super) fn check_before_handshake(&self) -> Result<(), String> {
        let props = self.props.as_ref().map_err(Clone::clone)?;
        if self.kind == ShellKind::NonInteractiveCommands
            && let Err(err) = &props.separate_output
        {
            return Err(format!("Fail to get separateOutPutStream property: {err}"));
        }
        Ok(())
    }
}

/// The KMS encryption of a shell session, on the agent's side.
pub(super) struct KmsState {
    key_id: String,
    /// The random challenge offered for the encryption context (base64 of 16 bytes).
    challenge: String,
    require_acknowledgement: bool,
    endpoint: String,
    cipher: Option<BlockCipher>,
    /// The result of the Decrypt call the receive path waited for, not yet used.
    decrypted: Option<Result<Vec<u8>, String>>,
    /// The plaintext of the EncChallengeRequest, once sent.
    enc_challenge: Option<Vec<u8>>,
}

impl KmsState {
    /// Encryption under `key_id`, with a fresh random challenge.
    pub(super) fn new(key_id: &str, require_acknowledgement: bool, endpoint: &str) -> Self {
        Self {
            key_id: key_id.to_owned(),
            challenge: crypto::random_challenge(),
            require_acknowledgement,
            endpoint: endpoint.to_owned(),
            cipher: None,
            decrypted: None,
            enc_challenge: None,
        }
    }

    /// The session cipher, once the data key is known.
    pub(super) fn cipher_mut(&mut self) -> Option<&mut BlockCipher> {
        self.cipher.as_mut()
    }

    /// The result of the Decrypt call.
    pub(super) fn set_decrypted(&mut self, result: Result<Vec<u8>, String>) {
        self.decrypted = Some(result);
    }
}

/// A KMS Decrypt the receive path must wait for.
pub(super) struct KmsCall {
    /// The HandshakeResponse to deliver again once the data key (or the error) is known.
    pub(super) message: ClientMessage,
    /// The KMS endpoint.
    pub(super) endpoint: String,
    /// The client's ciphertext blob.
    pub(super) blob: Vec<u8>,
    /// The encryption context.
    pub(super) context: BTreeMap<String, String>,
    /// The key id of the session preferences.
    pub(super) key_id: String,
}

impl KmsCall {
    /// For the event log: key, context names and blob size, never key material.
    pub(super) fn describe(&self) -> String {
        let names: Vec<&str> = self.context.keys().map(String::as_str).collect();
        format!(
            "key_id={} context=[{}] blob={} bytes",
            self.key_id,
            names.join(","),
            self.blob.len()
        )
    }
}

/// What processing a `KMSEncryption` action result came to.
pub(super) enum KmsStep {
    /// The data key is set up.
    Ready,
    /// The action failed (the handshake fails with this text).
    Failed(String),
    /// A KMS Decrypt call has to be made first.
    Waiting,
}

/// The HandshakeRequest of a shell session: its `SessionType` with `Properties: null`, and
/// the `KMSEncryption` action when encrypted. Written with the agent's field order.
pub(super) fn handshake_request(
    agent_version: &str,
    kind: ShellKind,
    kms: Option<&KmsState>,
) -> Bytes {
    #[derive(Serialize)]
    struct Request<'a> {
        #[serde(rename = "AgentVersion")]
        agent_version: &'a str,
        #[serde(rename = "RequestedClientActions")]
        actions: Vec<Action<'a>>,
    }
    #[derive(Serialize)]
    struct Action<'a> {
        #[serde(rename = "ActionType")]
        action_type: &'a str,
        #[serde(rename = "ActionParameters")]
        parameters: Parameters<'a>,
    }
    #[derive(Serialize)]
    #[serde(untagged)]
    enum Parameters<'a> {
        SessionType {
            #[serde(rename = "SessionType")]
            session_type: &'a str,
            /// Shell plugins return no parameters: `null`.
            #[serde(rename = "Properties")]
            properties: Option<()>,
        },
        Kms(KmsEncryptionRequest),
    }
    let mut actions = vec![Action {
        action_type: "SessionType",
        parameters: Parameters::SessionType {
            session_type: kind.name(),
            properties: None,
        },
    }];
    if let Some(kms) = kms {
        actions.push(Action {
            action_type: "KMSEncryption",
            parameters: Parameters::Kms(KmsEncryptionRequest {
                kms_key_id: kms.key_id.clone(),
                challenge: kms.challenge.clone(),
            }),
        });
    }
    match serde_json::to_vec(&Request {
        agent_version,
        actions,
    }) {
        Ok(json) => json.into(),
        Err(err) => unreachable!("the request always serializes: {err}"),
    }
}

impl PortSide {
    /// The agent's `finalizeKMSEncryption`: read the client's result, then (after the receive
    /// path waited for KMS Decrypt) split the data key.
    pub(super) fn finalize_kms(
        &mut self,
        message: &ClientMessage,
        result: &serde_json::Value,
    ) -> KmsStep {
        let session_id = self.session_id.clone();
        let instance_id = self.instance_id.clone();
        let Some(kms) = self.kms.as_mut() else {
            // Encryption was not offered; the agent would have no cipher to set up.
            return KmsStep::Ready;
        };
        if let Some(decrypted) = kms.decrypted.take() {
            return match decrypted.and_then(|key| {
                BlockCipher::new(&key).map_err(|err| format!("Unable to retrieve data key, {err}"))
            }) {
                Ok(cipher) => {
                    kms.cipher = Some(cipher);
                    KmsStep::Ready
                }
                Err(err) => KmsStep::Failed(format!("Fetching data key failed: {err}")),
            };
        }
        let response = match KmsEncryptionResponse::from_action_result(result) {
            Ok(response) => response,
            Err(err) => return KmsStep::Failed(err.to_string()),
        };
        if kms.require_acknowledgement && !response.acknowledged() {
            return KmsStep::Failed(
                "client does not support required encryption context random challenge".to_owned(),
            );
        }
        let mut context = BTreeMap::from([
            (CONTEXT_SESSION_ID.to_owned(), session_id),
            (CONTEXT_TARGET_ID.to_owned(), instance_id),
        ]);
        if response.acknowledged() {
            context.insert(CONTEXT_RANDOM_CHALLENGE.to_owned(), kms.challenge.clone());
        }
        self.kms_call = Some(KmsCall {
            message: message.clone(),
            endpoint: kms.endpoint.clone(),
            blob: response.kms_cipher_text_key,
            context,
            key_id: kms.key_id.clone(),
        });
        KmsStep::Waiting
    }

    /// Sends EncChallengeRequest: 64 random bytes encrypted with the agent's key. Without a
    /// data key nothing can be sent, and the wait simply times out, as on the agent.
    pub(super) fn send_challenge(&mut self, started: Instant, now: Instant) {
        let deadline = now + self.handshake_timeout;
        self.handshake = Handshake::Challenge { started, deadline };
        let Some(kms) = self.kms.as_mut() else {
            return;
        };
        let plain: Vec<u8> = (0..ENC_CHALLENGE_BYTES)
            .map(|_| rand::random::<u8>())
            .collect();
        let Some(cipher) = kms.cipher.as_mut() else {
            self.emit("challenge_not_sent", "no data key");
            return;
        };
        match cipher.encrypt(&plain) {
            Ok(sealed) => {
                kms.enc_challenge = Some(plain);
                let payload = EncryptionChallenge { challenge: sealed }.to_payload();
                self.out.push((PayloadType::ENC_CHALLENGE_REQUEST, payload));
                self.emit("challenge_sent", "64 bytes, encrypted");
            }
            Err(err) => self.emit("challenge_not_sent", err.to_string()),
        }
    }

    /// The agent's `handleEncryptionChallengeResponse`: a response that does not decrypt or
    /// does not match is left unacked (the client resends it) and the wait runs on until it
    /// times out.
    pub(super) fn on_challenge_response(&mut self, message: &ClientMessage, now: Instant) -> bool {
        let Handshake::Challenge { started, .. } = self.handshake else {
            return true;
        };
        let response = match EncryptionChallenge::from_payload(&message.payload) {
            Ok(response) => response,
            Err(err) => {
                self.emit(
                    "challenge_invalid",
                    format!("Unmarshalling of EncryptionChallengeResponse message failed, {err}"),
                );
                return false;
            }
        };
        let Some(kms) = self.kms.as_ref() else {
            return true;
        };
        let (Some(cipher), Some(expected)) = (&kms.cipher, &kms.enc_challenge) else {
            self.emit("challenge_invalid", "no challenge was sent");
            return false;
        };
        match cipher.decrypt(&response.challenge) {
            Err(err) => {
                self.emit("challenge_invalid", err.to_string());
                false
            }
            Ok(plain) if plain != *expected => {
                self.emit("challenge_mismatch", "Encryption challenge does not match!");
                false
            }
            Ok(_) => {
                self.emit("challenge_confirmed", "");
                self.complete_handshake(started, now);
                true
            }
        }
    }

    /// HandshakeComplete (with the agent's CustomerMessage), then the plugin starts.
    pub(super) fn complete_handshake(&mut self, started: Instant, now: Instant) {
        let elapsed = now.saturating_duration_since(started);
        let mut customer_message = String::new();
        if self.shell.as_ref().is_some_and(ShellSide::separate)
            && compare_versions(
                &self.client_version,
                CLIENT_VERSION_WITHOUT_OUTPUT_SEPARATION,
            ) != std::cmp::Ordering::Greater
        {
            customer_message.push_str(SEPARATION_UPGRADE_MESSAGE);
        }
        if self.kms.is_some() {
            customer_message.push_str(KMS_CUSTOMER_MESSAGE);
        }
        let complete = HandshakeComplete {
            handshake_time_to_complete: i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX),
            customer_message,
        };
        self.out
            .push((PayloadType::HANDSHAKE_COMPLETE, complete.to_payload()));
        self.handshake = Handshake::Complete;
        self.emit(
            "handshake_complete",
            format!(
                "client_version={} time_to_complete={elapsed:?} encrypted={}",
                self.client_version,
                self.kms.is_some()
            ),
        );
        if self.shell.is_some() {
            self.start_shell();
        } else {
            self.start_port();
        }
    }

    /// The shell plugin could not run: drain, no `Terminating`.
    pub(super) fn fail_shell(&mut self, text: String) {
        if let Some(shell) = self.shell.as_mut() {
            shell.finished = true;
        }
        self.finish_with(
            AgentOutcome::ShellFailed(text.clone()),
            "shell_failed",
            text,
            true,
            false,
        );
    }

    /// Starts the process: after the handshake, or at once when there is none.
    pub(super) fn start_shell(&mut self) {
        let Some(shell) = self.shell.as_mut() else {
            return;
        };
        let props = match &shell.props {
            Ok(props) => props.clone(),
            Err(err) => {
                let text = err.clone();
                self.fail_shell(text);
                return;
            }
        };
        let kind = shell.kind;
        if kind != ShellKind::StandardStream && props.commands.trim().is_empty() {
            self.fail_shell(format!(
                "Commands cannot be empty for session type {}",
                kind.name()
            ));
            return;
        }
        let separate = shell.separate();
        if separate {
            for (name, prefix) in [
                ("stdoutSeparatorPrefix", &props.stdout_prefix),
                ("stderrSeparatorPrefix", &props.stderr_prefix),
            ] {
                if !valid_prefix(prefix) {
                    self.fail_shell(format!("invalid {name} {prefix}"));
                    return;
                }
            }
        }
        let settings = shell.settings.clone();
        let events = shell.events.clone();
        let paused = shell.paused.clone();
        let started = match kind {
            ShellKind::NonInteractiveCommands => {
                ShellProcess::spawn_command(&props, separate, settings, events.clone(), paused)
            }
            _ => ShellProcess::spawn_pty(kind, &props.commands, settings, events.clone(), paused),
        };
        match started {
            Ok(process) => {
                self.emit(
                    "shell_started",
                    format!("{} ({process:?}) separate_streams={separate}", kind.name()),
                );
                if let Some(shell) = self.shell.as_mut() {
                    shell.process = Some(process);
                }
            }
            Err(StartError::Exec(text)) => {
                // The agent reports the exit code 1 at once (separate streams), then, after a
                // second, the error as StdErr, then ends the session normally.
                self.emit("shell_start_failed", text.clone());
                if let Some(shell) = self.shell.as_mut() {
                    if separate {
                        shell.push(PayloadType::EXIT_CODE, Bytes::from_static(b"EXIT_CODE: 1"));
                    }
                    shell
                        .aux
                        .spawn(report(events, START_ERROR_DELAY, text, true));
                }
            }
            Err(err @ StartError::Parse(_)) => {
                // Only NonInteractiveCommands sends this text: after two seconds and one more.
                let text = err.to_string();
                self.emit("shell_start_failed", text.clone());
                if let Some(shell) = self.shell.as_mut() {
                    shell.aux.spawn(report(
                        events,
                        EXECUTOR_ERROR_DELAY + START_ERROR_DELAY,
                        text,
                        false,
                    ));
                }
            }
            Err(err @ StartError::Pty(_)) => self.fail_shell(err.to_string()),
        }
    }

    /// Client stream data for the shell, after the handshake. `false` leaves it unacked.
    pub(super) fn deliver_to_shell(&mut self, message: &ClientMessage) -> bool {
        let mut payload = message.payload.clone();
        if message.payload_type == PayloadType::OUTPUT
            && let Some(cipher) = self.kms.as_ref().and_then(|kms| kms.cipher.as_ref())
        {
            match cipher.decrypt(&payload) {
                Ok(plain) => payload = plain.into(),
                Err(err) => {
                    self.emit(
                        "decrypt_failed",
                        format!(
                            "Error decrypting stream data message sequence {}, err: {err}",
                            message.sequence_number
                        ),
                    );
                    return false;
                }
            }
        }
        let Some(shell) = self.shell.as_mut() else {
            return true;
        };
        if shell.kind == ShellKind::NonInteractiveCommands {
            // No stdin: input is only scanned for the two control characters.
            if message.payload_type != PayloadType::OUTPUT {
                return true;
            }
            let Some(signal) = payload.iter().find_map(|byte| match byte {
                0x03 => Some(Interrupt::Int),
                0x1c => Some(Interrupt::Quit),
                _ => None,
            }) else {
                return true;
            };
            let Some(process) = shell.process.as_ref() else {
                return true;
            };
            let name = if signal == Interrupt::Int {
                "SIGINT"
            } else {
                "SIGQUIT"
            };
            return match process.signal(signal) {
                Ok(()) => {
                    self.emit("signal_sent", name);
                    true
                }
                Err(err) => {
                    self.emit("signal_failed", format!("{name}: {err}"));
                    false
                }
            };
        }
        // The pty handler is not ready until the pty exists: leave everything unacked.
        let Some(process) = shell.process.as_mut().filter(|p| p.pty_ready()) else {
            return false;
        };
        match message.payload_type {
            PayloadType::OUTPUT => {
                let accepted = process.write_input(payload);
                if !accepted {
                    self.emit("input_refused", "pty input queue full or broken");
                }
                accepted
            }
            PayloadType::SIZE => {
                let size = match SizeData::from_payload(&payload) {
                    Ok(size) => size,
                    Err(err) => {
                        self.emit("size_invalid", err.to_string());
                        return false;
                    }
                };
                match process.resize(size.cols, size.rows) {
                    Ok(()) => {
                        self.emit("resize", format!("{}x{}", size.cols, size.rows));
                        true
                    }
                    Err(err) => {
                        self.emit("resize_failed", err);
                        false
                    }
                }
            }
            _ => true,
        }
    }

    /// What a shell task reported. `paused`: the data channel is paused right now.
    pub(super) fn on_shell_event(&mut self, event: ShellEvent, paused: bool) {
        let Some(shell) = self.shell.as_mut() else {
            return;
        };
        match event {
            ShellEvent::Output {
                payload_type,
                payload,
            } => shell.push(payload_type, payload),
            ShellEvent::PtyClosed(reason) => {
                // The agent's write pump ended: drain, Terminating, close.
                self.end_shell(format!("pty closed: {reason}"));
            }
            ShellEvent::Exited { code, detail } => {
                shell.exit_code = Some(code);
                let kind = shell.kind;
                let separate = shell.separate();
                self.emit("process_exited", detail);
                if kind == ShellKind::NonInteractiveCommands {
                    if separate {
                        self.maybe_send_exit_code(paused);
                    } else if let Some(process) =
                        self.shell.as_mut().and_then(|s| s.process.as_mut())
                    {
                        process.stream_output_file();
                    }
                }
            }
            ShellEvent::PipeDone { stderr, broken } => {
                if stderr {
                    shell.stderr_done = true;
                } else {
                    shell.stdout_done = true;
                }
                if broken {
                    let stream = if stderr { "stderr" } else { "stdout" };
                    self.emit(
                        "pipe_abandoned",
                        format!("{stream}: Data Channel not in active status"),
                    );
                }
                self.maybe_send_exit_code(paused);
            }
            ShellEvent::FileDone => {
                let code = shell.exit_code.unwrap_or_default();
                self.end_shell(format!("command ended with exit code {code}"));
            }
            ShellEvent::InputFailed(text) => {
                if let Some(process) = shell.process.as_mut() {
                    process.input_failed();
                }
                self.emit("input_failed", text);
            }
            ShellEvent::StartError(text, terminating) => {
                shell.push(PayloadType::STD_ERR, Bytes::from(text.clone()));
                if terminating {
                    self.end_shell(format!("command did not start: {}", text.trim_end()));
                } else {
                    self.fail_shell(text.trim_end().to_owned());
                }
            }
        }
    }

    /// Separate streams: once both pipes are done and the command has been reaped, the exit
    /// code (`EXIT_CODE: n`, dropped if the data channel is paused right then, like the
    /// agent's `sendExitCode`), then the end.
    fn maybe_send_exit_code(&mut self, paused: bool) {
        let Some(shell) = self.shell.as_mut() else {
            return;
        };
        let (true, true, Some(code)) = (shell.stdout_done, shell.stderr_done, shell.exit_code)
        else {
            return;
        };
        if shell.finished {
            return;
        }
        if paused {
            self.emit(
                "exit_code_dropped",
                "failed to send exit code as data channel closed",
            );
        } else {
            shell.push(
                PayloadType::EXIT_CODE,
                Bytes::from(format!("EXIT_CODE: {code}")),
            );
            self.emit("exit_code_sent", code.to_string());
        }
        self.end_shell(format!("command ended with exit code {code}"));
    }

    /// The plugin completed: drain, `Terminating`, close.
    fn end_shell(&mut self, detail: String) {
        if let Some(shell) = self.shell.as_mut() {
            if shell.finished {
                return;
            }
            shell.finished = true;
        }
        self.finish_with(
            AgentOutcome::ShellEnded(detail.clone()),
            "shell_ended",
            detail,
            true,
            true,
        );
    }
}

/// A delayed start-error report.
async fn report(
    events: mpsc::Sender<ShellEvent>,
    delay: std::time::Duration,
    text: String,
    terminating: bool,
) {
    tokio::time::sleep(delay).await;
    let _ = events.send(ShellEvent::StartError(text, terminating)).await;
}
