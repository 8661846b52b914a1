//! Shell and command sessions (`Standard_Stream`, `InteractiveCommands`,
//! `NonInteractiveCommands`; docs/protocol.md §11 and the session notes): one stream — the
//! local terminal, or stdin/stdout — carried as Output messages, with Size messages for the
//! terminal's size and, when the account asks for it, KMS encryption.
//!
//! How a shell session begins depends on the agent: without encryption the first message is
//! simply the shell's output (no handshake at all), and the session counts as negotiated
//! from it; with encryption the agent's HandshakeRequest carries a `KMSEncryption` action,
//! answered only once KMS has generated a data key, followed by a challenge round trip.
//! Output, StdErr and ExitCode from the agent are decrypted when the session is encrypted;
//! Output to the agent is encrypted, Size never is.

use std::time::Instant;

use base64::Engine;
use bytes::Bytes;

use super::encryption::{self, SessionCipher};
use super::handshake::{self, KmsAnswer, Negotiated, PortMode, SessionKind};
use super::session::{Forward, PendingKms, ShellOut};
use super::{Action, ConnId, Core, Op, OpId, OpKind, SessionKey};
use crate::aws::ApiError;
use crate::protocol::PayloadType;
use crate::protocol::message::MAX_STREAM_PAYLOAD;
use crate::protocol::payload::HandshakeRequest;

/// Key of the encryption context entry naming the session.
const CONTEXT_SESSION: &str = "aws:ssm:SessionId";
/// Key naming the target.
const CONTEXT_TARGET: &str = "aws:ssm:TargetId";
/// Key binding the agent's random challenge.
const CONTEXT_CHALLENGE: &str = "aws:ssm:RandomChallenge";
/// The byte a terminal sends for end of input (Ctrl-D).
const END_OF_INPUT: u8 = 0x04;
/// Longest ExitCode payload read (`EXIT_CODE: -2147483648`).
const MAX_EXIT_CODE_TEXT: usize = 64;

impl Core {
    /// Whether this tunnel carries a shell: configured so, or an automatic one whose agent
    /// said so.
    pub(super) fn is_shell(&self) -> bool {
        self.config.kind == SessionKind::Shell
    }

    /// An automatic tunnel (`SessionKind::Auto`) learns what it carries from the agent's first
    /// message; from then on it is that kind.
    pub(super) fn settle_kind(&mut self, kind: SessionKind) {
        if self.config.kind == SessionKind::Auto {
            tracing::debug!(?kind, "the agent's first message decides the session kind");
            self.config.kind = kind;
        }
    }

    /// Output before any handshake settles an automatic tunnel as a shell: that is how a
    /// shell without encryption begins.
    pub(super) fn output_first_makes_a_shell(&mut self, key: SessionKey) -> bool {
        let before_handshake = self
            .session(key)
            .and_then(|s| s.data.as_ref())
            .is_some_and(|d| d.pending.is_none() && d.negotiated.is_none() && d.kms.is_none());
        if self.config.kind == SessionKind::Auto && before_handshake {
            self.settle_kind(SessionKind::Shell);
            return true;
        }
        false
    }

    /// A HandshakeRequest of a shell tunnel that asks for KMS encryption: the answer waits
    /// for a data key. Returns `false` when the request asks for none.
    pub(super) fn shell_handshake(&mut self, key: SessionKey, request: HandshakeRequest) -> bool {
        if !self.is_shell() {
            return false;
        }
        let Some(kms) = handshake::kms_request(&request) else {
            return false;
        };
        let op = self.next_op();
        let target = self.config.target.clone();
        let Some(session) = self.session_mut(key) else {
            return true;
        };
        let session_id = session.id.clone().unwrap_or_default();
        let epoch = session.recovery.epoch();
        let Some(data) = session.data.as_mut() else {
            return true;
        };
        let mut context = vec![
            (CONTEXT_SESSION.to_owned(), session_id),
            (CONTEXT_TARGET.to_owned(), target),
        ];
        if let Some(challenge) = &kms.challenge {
            context.push((CONTEXT_CHALLENGE.to_owned(), challenge.clone()));
        }
        data.kms = Some(PendingKms {
            request,
            op,
            acknowledged: kms.challenge.is_some(),
        });
        self.ops.insert(
            op,
            Op {
                session: key,
                epoch,
                kind: OpKind::DataKey,
            },
        );
        tracing::debug!(key_id = %kms.key_id, "the session is encrypted: asking KMS for a data key");
        self.actions.push_back(Action::GenerateDataKey {
            op,
            key_id: kms.key_id,
            context,
        });
        true
    }

    pub(super) fn on_data_key(
        &mut self,
        op: OpId,
        result: Result<encryption::DataKey, ApiError>,
        now: Instant,
    ) {
        let Some(info) = self.ops.remove(&op) else {
            return;
        };
        let key = info.session;
        let Some(data) = self.session_mut(key).and_then(|s| s.data.as_mut()) else {
            return;
        };
        let Some(pending) = data.kms.take_if(|p| p.op == op) else {
            return;
        };
        let (answer, failure) = match result.map_err(|err| err.to_string()).and_then(|key| {
            SessionCipher::new(&key.plaintext)
                .map(|cipher| (cipher, key.ciphertext_blob))
                .map_err(|err| err.to_string())
        }) {
            Ok((cipher, ciphertext_blob)) => {
                data.cipher = Some(cipher);
                let answer = KmsAnswer::Key {
                    ciphertext_blob,
                    acknowledged: pending.acknowledged,
                };
                (answer, None)
            }
            Err(why) => (KmsAnswer::Failed(why.clone()), Some(why)),
        };
        let (response, negotiated) =
            handshake::answer(&pending.request, SessionKind::Shell, Some(&answer));
        if let Err(err) =
            data.channel
                .send(PayloadType::HANDSHAKE_RESPONSE, response.to_payload(), now)
        {
            tracing::warn!(error = %err, "cannot answer the handshake");
        }
        match (negotiated, failure) {
            (Ok(negotiated), None) => data.pending = Some(negotiated),
            // The agent cancels the session on a failed action; another session would ask
            // for the same key again.
            (_, Some(why)) => {
                data.unusable = Some(format!(
                    "the session is encrypted with KMS, and its data key could not be \
                     generated: {why}"
                ));
            }
            (Err(err), None) => data.unusable = Some(err.to_string()),
        }
        self.process(key, now);
    }

    /// The agent's encryption challenge: decrypted with the agent's key, encrypted with ours.
    pub(super) fn on_challenge(&mut self, key: SessionKey, payload: &[u8], now: Instant) {
        let Some(data) = self.session_mut(key).and_then(|s| s.data.as_mut()) else {
            return;
        };
        let Some(cipher) = &data.cipher else {
            tracing::warn!("an encryption challenge for a session that is not encrypted");
            return;
        };
        let answer = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v.get("Challenge")?.as_str().map(str::to_owned))
            .and_then(|text| base64::engine::general_purpose::STANDARD.decode(text).ok())
            .ok_or_else(|| "unreadable challenge".to_owned())
            .and_then(|challenge| {
                cipher
                    .answer_challenge(&challenge)
                    .map_err(|err| err.to_string())
            });
        match answer {
            Ok(answer) => {
                let text = base64::engine::general_purpose::STANDARD.encode(answer);
                let payload = serde_json::json!({ "Challenge": text }).to_string();
                if let Err(err) = data.channel.send(
                    PayloadType::ENC_CHALLENGE_RESPONSE,
                    Bytes::from(payload),
                    now,
                ) {
                    tracing::warn!(error = %err, "cannot answer the encryption challenge");
                }
            }
            Err(why) => {
                data.unusable = Some(format!("the agent's encryption challenge failed: {why}"));
            }
        }
    }

    /// Output, StdErr or ExitCode of a shell session. The first Output of a session without
    /// a handshake negotiates it: that is how plain shells begin.
    pub(super) fn on_shell_output(
        &mut self,
        key: SessionKey,
        payload_type: PayloadType,
        payload: Bytes,
        now: Instant,
    ) {
        let Some(data) = self.session_mut(key).and_then(|s| s.data.as_mut()) else {
            return;
        };
        if data.negotiated.is_none() {
            if data.pending.is_some() || data.kms.is_some() || payload_type != PayloadType::OUTPUT {
                tracing::debug!(
                    ?payload_type,
                    "shell output before the handshake ended; ignored"
                );
                return;
            }
            data.pending = Some(Negotiated {
                agent_version: String::new(),
                mode: PortMode::Shell,
                destination: "Standard_Stream".to_owned(),
            });
            self.on_handshake_complete(key, &[], now);
        }
        let Some(data) = self.session_mut(key).and_then(|s| s.data.as_mut()) else {
            return;
        };
        let bytes = match &data.cipher {
            Some(cipher) => match cipher.decrypt(&payload) {
                Ok(plain) => Bytes::from(plain),
                Err(err) => {
                    // A message that does not decrypt is not acknowledged by the official
                    // client either; here it is already delivered by the channel, so the
                    // session is unusable rather than silently missing bytes.
                    data.unusable = Some(format!("shell output does not decrypt: {err}"));
                    return;
                }
            },
            None => payload,
        };
        match payload_type {
            PayloadType::OUTPUT => {
                let conn = match &data.forward {
                    Forward::Shell { active, .. } => *active,
                    _ => None,
                };
                if let Some(conn) = conn {
                    self.deliver(conn, bytes, now);
                }
            }
            PayloadType::STD_ERR => self.actions.push_back(Action::WriteStderr { data: bytes }),
            _ => {
                let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_EXIT_CODE_TEXT)]);
                match parse_exit_code(&text) {
                    Some(code) => {
                        tracing::debug!(code, "the command's exit code");
                        self.status.remote_exit_code = Some(code);
                        self.status_dirty = true;
                    }
                    None => tracing::warn!(text = %text.escape_debug(), "unreadable ExitCode"),
                }
            }
        }
    }

    /// Keystrokes of the shell's one connection, in messages the channel can carry (room
    /// left for encryption when the session is encrypted).
    pub(super) fn shell_input(&mut self, key: SessionKey, conn: ConnId, data: &Bytes) -> bool {
        let Some(state) = self.session_mut(key).and_then(|s| s.data.as_mut()) else {
            return false;
        };
        let chunk = if state.cipher.is_some() {
            MAX_STREAM_PAYLOAD - encryption::OVERHEAD
        } else {
            MAX_STREAM_PAYLOAD
        };
        let Forward::Shell {
            active,
            out,
            out_bytes,
        } = &mut state.forward
        else {
            return false;
        };
        if *active != Some(conn) {
            return false;
        }
        for piece in data.chunks(chunk) {
            *out_bytes += piece.len();
            out.push_back(ShellOut::Input(data.slice_ref(piece)));
        }
        true
    }

    /// The end of the local input of a shell: the remote terminal gets an end-of-input
    /// character, so a shell fed from a pipe runs what it was given and exits, and its
    /// output still arrives. Returns `false` when `conn` is not a shell's.
    pub(super) fn shell_input_ended(&mut self, conn: ConnId, now: Instant) -> bool {
        if !self.is_shell() || self.stopping.is_some() {
            return false;
        }
        let Some(conn_state) = self.conns.get(conn) else {
            return false;
        };
        let Some(key) = conn_state.session else {
            // Before the shell runs (input from /dev/null, say): the end of input waits for
            // it, so that the shell still starts, runs and ends by itself.
            self.input_ended_early = true;
            return true;
        };
        tracing::debug!("local input ended: sending end of input to the remote terminal");
        let queued = self.shell_input(key, conn, &Bytes::from_static(&[END_OF_INPUT]));
        if queued {
            self.pump(key, now);
        }
        queued
    }

    pub(super) fn on_resize(&mut self, cols: u16, rows: u16, now: Instant) {
        self.terminal_size = Some((cols, rows));
        for key in self.keys() {
            self.send_size(key, now);
        }
    }

    /// The terminal is attached to a shell session: its size, and an end of input that came
    /// before.
    pub(super) fn shell_attached(&mut self, key: SessionKey, conn: ConnId, now: Instant) {
        self.send_size(key, now);
        if std::mem::take(&mut self.input_ended_early) {
            self.shell_input(key, conn, &Bytes::from_static(&[END_OF_INPUT]));
            self.pump(key, now);
        }
    }

    /// Tells a negotiated shell session the terminal's size, if it is known.
    pub(super) fn send_size(&mut self, key: SessionKey, now: Instant) {
        let Some((cols, rows)) = self.terminal_size else {
            return;
        };
        let Some(data) = self.session_mut(key).and_then(|s| s.data.as_mut()) else {
            return;
        };
        let Forward::Shell { out, out_bytes, .. } = &mut data.forward else {
            return;
        };
        // The agent's `SizeData`, keys in its order.
        let json = Bytes::from(format!(r#"{{"cols":{cols},"rows":{rows}}}"#));
        *out_bytes += json.len();
        out.push_back(ShellOut::Size(json));
        self.pump(key, now);
    }

    /// The next shell message for the channel: its type and payload, encrypted if need be.
    pub(super) fn next_shell_message(
        forward: &mut Forward,
        cipher: Option<&SessionCipher>,
    ) -> Option<(PayloadType, Bytes)> {
        let Forward::Shell { out, out_bytes, .. } = forward else {
            return None;
        };
        loop {
            match out.pop_front()? {
                ShellOut::Size(json) => {
                    *out_bytes -= json.len();
                    return Some((PayloadType::SIZE, json));
                }
                ShellOut::Input(bytes) => {
                    *out_bytes -= bytes.len();
                    let Some(cipher) = cipher else {
                        return Some((PayloadType::OUTPUT, bytes));
                    };
                    match cipher.encrypt(&bytes) {
                        Ok(sealed) => return Some((PayloadType::OUTPUT, Bytes::from(sealed))),
                        Err(err) => tracing::error!(error = %err, "keystrokes not encrypted"),
                    }
                }
            }
        }
    }
}

/// `EXIT_CODE: <n>`, the agent's ExitCode text.
fn parse_exit_code(text: &str) -> Option<i32> {
    text.trim().strip_prefix("EXIT_CODE:")?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use base64::Engine;
    use bytes::Bytes;

    use super::*;
    use crate::aws::SessionGrant;
    use crate::protocol::message::{FLAG_SYN, SCHEMA_VERSION};
    use crate::protocol::{ClientMessage, MessageType};
    use crate::tunnel::core::{CoreConfig, SocketId, Stopped};

    #[test]
    fn exit_codes_are_read_as_the_agent_writes_them() {
        assert_eq!(parse_exit_code("EXIT_CODE: 3"), Some(3));
        assert_eq!(parse_exit_code("EXIT_CODE: -1"), Some(-1));
        assert_eq!(parse_exit_code("EXIT_CODE:0"), Some(0));
        assert_eq!(parse_exit_code("exit 3"), None);
        assert_eq!(parse_exit_code("EXIT_CODE: many"), None);
    }

    /// A shell tunnel whose session is online, its stream (stdin/stdout) accepted; the agent
    /// side is played by the test, one sequence number after another.
    struct Rig {
        core: Core,
        socket: SocketId,
        conn: ConnId,
        agent_seq: i64,
        now: Instant,
        /// Messages the client sent (not acks), decoded.
        sent: Vec<ClientMessage>,
        written: Vec<u8>,
        stderr: Vec<u8>,
        data_keys: Vec<DataKeyCall>,
    }

    /// A GenerateDataKey the core asked for: its op, key and encryption context.
    type DataKeyCall = (OpId, String, Vec<(String, String)>);

    impl Rig {
        fn new(kind: SessionKind) -> Self {
            let now = Instant::now();
            let config = CoreConfig {
                kind,
                target: "i-0123".into(),
                ..CoreConfig::default()
            };
            let mut core = Core::new(config, now, 1);
            let conn = core.handle_accept("stdio".into(), now);
            let mut rig = Self {
                core,
                socket: SocketId(0),
                conn,
                agent_seq: 0,
                now,
                sent: Vec::new(),
                written: Vec::new(),
                stderr: Vec::new(),
                data_keys: Vec::new(),
            };
            let op = rig
                .drain()
                .into_iter()
                .find_map(|a| match a {
                    Action::StartSession { op } => Some(op),
                    _ => None,
                })
                .expect("a StartSession");
            let grant = SessionGrant {
                session_id: "s-1".into(),
                token_value: "token".into(),
                stream_url: "ws://127.0.0.1:1/x".into(),
            };
            rig.core.handle_started(op, Ok(grant), now);
            rig.socket = rig
                .drain()
                .into_iter()
                .find_map(|a| match a {
                    Action::Connect { socket, .. } => Some(socket),
                    _ => None,
                })
                .expect("a Connect");
            rig.core.handle_connected(rig.socket, Ok(()), now);
            rig.drain();
            rig
        }

        /// Performs the core's actions as far as the tests need.
        fn drain(&mut self) -> Vec<Action> {
            let actions: Vec<Action> = std::iter::from_fn(|| self.core.poll_action()).collect();
            for action in &actions {
                match action {
                    Action::Send { socket, frames } => {
                        let bytes: usize = frames.iter().map(super::super::OutFrame::len).sum();
                        for frame in frames {
                            if let super::super::OutFrame::Binary(frame) = frame
                                && let Ok(decoded) = ClientMessage::decode(frame.clone())
                                && decoded.message.message_type == MessageType::InputStreamData
                            {
                                self.sent.push(decoded.message);
                            }
                        }
                        self.core.handle_socket_flushed(*socket, bytes, self.now);
                    }
                    Action::WriteLocal { conn, data } => {
                        assert_eq!(*conn, self.conn);
                        self.written.extend_from_slice(data);
                    }
                    Action::WriteStderr { data } => self.stderr.extend_from_slice(data),
                    Action::GenerateDataKey {
                        op,
                        key_id,
                        context,
                    } => self.data_keys.push((*op, key_id.clone(), context.clone())),
                    _ => {}
                }
            }
            actions
        }

        /// The agent's next stream message.
        fn agent(&mut self, payload_type: PayloadType, payload: Vec<u8>) {
            let message = ClientMessage {
                message_type: MessageType::OutputStreamData,
                schema_version: SCHEMA_VERSION,
                created_date: 1,
                sequence_number: self.agent_seq,
                flags: if self.agent_seq == 0 { FLAG_SYN } else { 0 },
                message_id: uuid::Uuid::new_v4(),
                payload_type,
                payload: Bytes::from(payload),
            };
            self.agent_seq += 1;
            self.core
                .handle_frame(self.socket, message.encode(), self.now);
            self.drain();
        }

        fn sent_of(&self, payload_type: PayloadType) -> Vec<&ClientMessage> {
            self.sent
                .iter()
                .filter(|m| m.payload_type == payload_type)
                .collect()
        }
    }

    #[test]
    fn a_plain_shell_begins_with_its_output_and_carries_keys_and_sizes() {
        let mut rig = Rig::new(SessionKind::Shell);
        rig.core.handle_resize(120, 40, rig.now);
        rig.drain();
        assert!(
            rig.sent_of(PayloadType::SIZE).is_empty(),
            "no size before the shell runs"
        );
        // No handshake: the shell's prompt is the first message.
        rig.agent(PayloadType::OUTPUT, b"sh-5.2$ ".to_vec());
        assert_eq!(rig.written, b"sh-5.2$ ");
        let sizes = rig.sent_of(PayloadType::SIZE);
        assert_eq!(sizes.len(), 1);
        assert_eq!(&sizes[0].payload[..], br#"{"cols":120,"rows":40}"#);
        rig.core
            .handle_local_data(rig.conn, Bytes::from_static(b"ls\r"), rig.now);
        rig.core.handle_resize(80, 24, rig.now);
        rig.drain();
        let keys = rig.sent_of(PayloadType::OUTPUT);
        assert_eq!(keys.len(), 1);
        assert_eq!(&keys[0].payload[..], b"ls\r");
        assert_eq!(rig.sent_of(PayloadType::SIZE).len(), 2);
        // Sequence numbers: one space for every message of this direction, in order.
        let seqs: Vec<i64> = rig.sent.iter().map(|m| m.sequence_number).collect();
        assert_eq!(seqs, [0, 1, 2]);
    }

    #[test]
    fn standard_error_and_the_exit_code_of_a_command_are_kept_apart() {
        let mut rig = Rig::new(SessionKind::Shell);
        let handshake = br#"{"AgentVersion":"3.3.987.0","RequestedClientActions":[{"ActionType":"SessionType","ActionParameters":{"SessionType":"NonInteractiveCommands","Properties":null}}]}"#;
        rig.agent(PayloadType::HANDSHAKE_REQUEST, handshake.to_vec());
        let answer = rig.sent_of(PayloadType::HANDSHAKE_RESPONSE);
        assert_eq!(answer.len(), 1);
        assert!(
            std::str::from_utf8(&answer[0].payload)
                .expect("json")
                .contains(r#""ActionStatus":1"#)
        );
        rig.agent(
            PayloadType::HANDSHAKE_COMPLETE,
            br#"{"HandshakeTimeToComplete":1,"CustomerMessage":""}"#.to_vec(),
        );
        rig.agent(PayloadType::OUTPUT, b"out\n".to_vec());
        rig.agent(PayloadType::STD_ERR, b"err\n".to_vec());
        rig.agent(PayloadType::EXIT_CODE, b"EXIT_CODE: 3".to_vec());
        assert_eq!(rig.written, b"out\n");
        assert_eq!(rig.stderr, b"err\n");
        rig.core.poll_status(rig.now);
        assert_eq!(rig.core.status().remote_exit_code, Some(3));
    }

    #[test]
    fn the_end_of_piped_input_ends_the_remote_shell_and_its_output_still_arrives() {
        let mut rig = Rig::new(SessionKind::Shell);
        rig.agent(PayloadType::OUTPUT, b"$ ".to_vec());
        rig.core
            .handle_local_data(rig.conn, Bytes::from_static(b"uname\n"), rig.now);
        rig.core.handle_local_eof(rig.conn, rig.now);
        rig.drain();
        let keys: Vec<Vec<u8>> = rig
            .sent_of(PayloadType::OUTPUT)
            .iter()
            .map(|m| m.payload.to_vec())
            .collect();
        assert_eq!(keys, [b"uname\n".to_vec(), vec![END_OF_INPUT]]);
        rig.agent(PayloadType::OUTPUT, b"Linux\r\n".to_vec());
        assert_eq!(rig.written, b"$ Linux\r\n");
        assert!(rig.core.stopped().is_none());
    }

    #[test]
    fn input_that_ends_before_the_shell_runs_ends_it_once_it_does() {
        let mut rig = Rig::new(SessionKind::Shell);
        rig.core.handle_local_eof(rig.conn, rig.now);
        rig.drain();
        assert!(rig.core.stopped().is_none());
        assert!(rig.sent_of(PayloadType::OUTPUT).is_empty());
        rig.agent(PayloadType::OUTPUT, b"$ ".to_vec());
        let keys: Vec<Vec<u8>> = rig
            .sent_of(PayloadType::OUTPUT)
            .iter()
            .map(|m| m.payload.to_vec())
            .collect();
        assert_eq!(keys, [vec![END_OF_INPUT]]);
    }

    /// The agent's cipher: it encrypts with the data key's first half, decrypts with the
    /// second.
    fn agent_cipher(data_key: &[u8]) -> SessionCipher {
        let mut swapped = data_key[32..].to_vec();
        swapped.extend_from_slice(&data_key[..32]);
        SessionCipher::new(&swapped).expect("64 bytes")
    }

    #[test]
    fn a_kms_session_gets_its_key_answers_the_challenge_and_encrypts_output_only() {
        let mut rig = Rig::new(SessionKind::Shell);
        let request = br#"{"AgentVersion":"3.3.987.0","RequestedClientActions":[{"ActionType":"SessionType","ActionParameters":{"SessionType":"Standard_Stream","Properties":null}},{"ActionType":"KMSEncryption","ActionParameters":{"KMSKeyId":"alias/ssm","Challenge":"c2VjcmV0LWNoYWxsZW5nZQ=="}}]}"#;
        rig.agent(PayloadType::HANDSHAKE_REQUEST, request.to_vec());
        assert!(
            rig.sent_of(PayloadType::HANDSHAKE_RESPONSE).is_empty(),
            "the answer waits for the key"
        );
        let (op, key_id, context) = rig.data_keys.pop().expect("GenerateDataKey");
        assert_eq!(key_id, "alias/ssm");
        assert_eq!(
            context,
            [
                ("aws:ssm:SessionId".to_owned(), "s-1".to_owned()),
                ("aws:ssm:TargetId".to_owned(), "i-0123".to_owned()),
                (
                    "aws:ssm:RandomChallenge".to_owned(),
                    "c2VjcmV0LWNoYWxsZW5nZQ==".to_owned()
                ),
            ]
        );
        let data_key: Vec<u8> = (0..64).map(|i| i * 3).collect();
        rig.core.handle_data_key(
            op,
            Ok(encryption::DataKey {
                ciphertext_blob: vec![9, 9, 9],
                plaintext: zeroize::Zeroizing::new(data_key.clone()),
            }),
            rig.now,
        );
        rig.drain();
        let answer = rig.sent_of(PayloadType::HANDSHAKE_RESPONSE);
        assert_eq!(
            std::str::from_utf8(&answer[0].payload).expect("json"),
            r#"{"ClientVersion":"1.2.650.0","ProcessedClientActions":[{"ActionType":"SessionType","ActionStatus":1,"ActionResult":null,"Error":""},{"ActionType":"KMSEncryption","ActionStatus":1,"ActionResult":{"ChallengeAcknowledgement":true,"KMSCipherTextHash":null,"KMSCipherTextKey":"CQkJ"},"Error":""}],"Errors":null}"#
        );
        // The challenge round trip.
        let agent = agent_cipher(&data_key);
        let secret = [42u8; 64];
        let challenge = agent.encrypt(&secret).expect("encrypt");
        let b64 = base64::engine::general_purpose::STANDARD;
        let payload = format!(r#"{{"Challenge":"{}"}}"#, b64.encode(&challenge));
        rig.agent(PayloadType::ENC_CHALLENGE_REQUEST, payload.into_bytes());
        let response = rig.sent_of(PayloadType::ENC_CHALLENGE_RESPONSE);
        let value: serde_json::Value = serde_json::from_slice(&response[0].payload).expect("json");
        let echoed = b64
            .decode(value["Challenge"].as_str().expect("a string"))
            .expect("base64");
        assert_eq!(agent.decrypt(&echoed).expect("the agent reads it"), secret);
        rig.agent(
            PayloadType::HANDSHAKE_COMPLETE,
            br#"{"HandshakeTimeToComplete":1,"CustomerMessage":"This session is encrypted using AWS KMS."}"#.to_vec(),
        );
        rig.core.handle_resize(100, 30, rig.now);
        rig.agent(PayloadType::OUTPUT, agent.encrypt(b"# ").expect("encrypt"));
        assert_eq!(rig.written, b"# ");
        rig.core
            .handle_local_data(rig.conn, Bytes::from(vec![b'x'; 1500]), rig.now);
        rig.drain();
        let keys = rig.sent_of(PayloadType::OUTPUT);
        assert_eq!(keys.len(), 2, "1500 bytes in two messages of at most 1024");
        let mut typed = Vec::new();
        for message in keys {
            assert!(message.payload.len() <= MAX_STREAM_PAYLOAD);
            typed.extend(agent.decrypt(&message.payload).expect("the agent decrypts"));
        }
        assert_eq!(typed, vec![b'x'; 1500]);
        // Size travels in clear.
        let sizes = rig.sent_of(PayloadType::SIZE);
        assert_eq!(&sizes[0].payload[..], br#"{"cols":100,"rows":30}"#);
        // Output that does not decrypt is never shown.
        rig.agent(PayloadType::OUTPUT, b"plain text".to_vec());
        assert_eq!(rig.written, b"# ");
    }

    #[test]
    fn a_key_kms_refuses_is_one_reason_and_the_end_of_the_tunnel() {
        let mut rig = Rig::new(SessionKind::Shell);
        let request = br#"{"AgentVersion":"3.3.987.0","RequestedClientActions":[{"ActionType":"SessionType","ActionParameters":{"SessionType":"Standard_Stream","Properties":null}},{"ActionType":"KMSEncryption","ActionParameters":{"KMSKeyId":"alias/nope"}}]}"#;
        rig.agent(PayloadType::HANDSHAKE_REQUEST, request.to_vec());
        let (op, _, context) = rig.data_keys.pop().expect("GenerateDataKey");
        assert_eq!(
            context.len(),
            2,
            "no challenge, no challenge in the context"
        );
        rig.core.handle_data_key(
            op,
            Err(ApiError::new(
                "GenerateDataKey",
                crate::aws::ApiErrorKind::AccessDenied,
                "not authorized to perform kms:GenerateDataKey",
            )),
            rig.now,
        );
        let actions = rig.drain();
        let answer = rig.sent_of(PayloadType::HANDSHAKE_RESPONSE);
        let text = std::str::from_utf8(&answer[0].payload).expect("json");
        assert!(
            text.contains(r#""ActionStatus":2"#)
                && text.contains("Failed to process action KMSEncryption"),
            "{text}"
        );
        for action in &actions {
            if let Action::TerminateSession { op, .. } = action {
                rig.core.handle_terminated(*op, Ok(()), rig.now);
            }
        }
        match rig.core.stopped() {
            Some(Stopped::GaveUp(reason)) => {
                assert!(reason.contains("kms:GenerateDataKey"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_automatic_tunnel_is_what_the_agent_says() {
        let mut shell = Rig::new(SessionKind::Auto);
        shell.agent(PayloadType::OUTPUT, b"$ ".to_vec());
        assert_eq!(shell.written, b"$ ");
        assert!(shell.core.is_shell());

        let mut port = Rig::new(SessionKind::Auto);
        let handshake = br#"{"AgentVersion":"3.3.987.0","RequestedClientActions":[{"ActionType":"SessionType","ActionParameters":{"SessionType":"Port","Properties":{"portNumber":"22"}}}]}"#;
        port.agent(PayloadType::HANDSHAKE_REQUEST, handshake.to_vec());
        port.agent(
            PayloadType::HANDSHAKE_COMPLETE,
            br#"{"HandshakeTimeToComplete":1,"CustomerMessage":""}"#.to_vec(),
        );
        assert!(!port.core.is_shell());
        port.agent(PayloadType::OUTPUT, b"SSH-2.0-OpenSSH\r\n".to_vec());
        assert_eq!(port.written, b"SSH-2.0-OpenSSH\r\n");
    }
}
