//! Shell sessions (Standard_Stream, InteractiveCommands, NonInteractiveCommands) and KMS
//! encryption, end to end: the scripted raw client against the API, the relay, the agent
//! model and a real `/bin/sh` on a real pty.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use aes_gcm::aead::Aead;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde_json::{Value, json};
use ssm_emulator::events::Event;
use ssm_emulator::faults::{KmsDeny, SideSelection};
use ssm_emulator::{Emulator, EmulatorConfig, FaultSettings};
use ssm_tether_protocol::payload::{
    AcknowledgeContent, ActionStatus, ActionType, ChannelClosed, EncryptionChallenge,
    HandshakeComplete, HandshakeRequest, HandshakeResponse, KmsEncryptionRequest,
    ProcessedClientAction, SizeData,
};
use ssm_tether_protocol::{ClientMessage, MessageType, PayloadType};
use support::*;

const TARGET: &str = "i-0123456789abcdef0";
const KMS_KEY: &str = "alias/ssm-emulator";

/// A test emulator: no pacing, a short wait before the first pty read.
fn shell_config(faults: FaultSettings) -> EmulatorConfig {
    let mut config = config(faults);
    config.agent.shell_first_read_delay = Duration::from_millis(50);
    config
}

fn kms_config() -> EmulatorConfig {
    let mut config = shell_config(FaultSettings::default());
    config.agent.kms_key_id = Some(KMS_KEY.to_owned());
    config
}

/// StartSession with `document` (none: the default shell) and `parameters`.
async fn start_shell(emulator: &Emulator, document: Option<&str>, parameters: Value) -> Started {
    let mut body = json!({"Target": TARGET, "Parameters": parameters});
    if let Some(document) = document {
        body["DocumentName"] = json!(document);
    }
    let response = ssm_call(&emulator.endpoint_url(), "StartSession", "AKIDTEST", body).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let json = response.json();
    Started {
        session_id: json["SessionId"].as_str().expect("id").to_owned(),
        token: json["TokenValue"].as_str().expect("token").to_owned(),
        stream_url: json["StreamUrl"].as_str().expect("url").to_owned(),
    }
}

/// A KMS call on the emulator's endpoint.
async fn kms_call(emulator: &Emulator, operation: &str, body: Value) -> HttpResponse {
    http(
        "POST",
        &format!("{}/", emulator.endpoint_url()),
        &[
            ("content-type", "application/x-amz-json-1.1".to_owned()),
            ("x-amz-target", format!("TrentService.{operation}")),
            (
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDTEST/20240101/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=0".to_owned(),
            ),
        ],
        body.to_string(),
    )
    .await
}

/// The client's halves of a 64-byte data key: it decrypts with the first and encrypts with
/// the second (random nonces, like the official client).
struct ClientCipher {
    decrypt: Aes256Gcm,
    encrypt: Aes256Gcm,
}

impl ClientCipher {
    fn new(data_key: &[u8]) -> Self {
        assert_eq!(data_key.len(), 64);
        Self {
            decrypt: Aes256Gcm::new_from_slice(&data_key[..32]).expect("key"),
            encrypt: Aes256Gcm::new_from_slice(&data_key[32..]).expect("key"),
        }
    }

    fn open(&self, payload: &[u8]) -> Option<Vec<u8>> {
        let (nonce, sealed) = payload.split_at_checked(12)?;
        self.decrypt.decrypt(Nonce::from_slice(nonce), sealed).ok()
    }

    fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let nonce: [u8; 12] = rand::random();
        let mut out = nonce.to_vec();
        out.extend(
            self.encrypt
                .encrypt(Nonce::from_slice(&nonce), plaintext)
                .expect("encrypts"),
        );
        out
    }
}

/// A shell client: acks and orders the agent's data, collects Output, StdErr and ExitCode
/// (decrypting when the session is encrypted), and sends input until it is acked.
struct Shell {
    ep: Endpoint,
    expected: i64,
    early: BTreeMap<i64, ClientMessage>,
    acked: HashSet<i64>,
    cipher: Option<ClientCipher>,
    output: Vec<u8>,
    stderr: Vec<u8>,
    exit_code: Vec<String>,
    /// In-order data messages of every payload type, as received (still encrypted).
    data: Vec<ClientMessage>,
    closed: Option<ChannelClosed>,
}

impl Shell {
    fn new(ep: Endpoint) -> Self {
        Self {
            ep,
            expected: 0,
            early: BTreeMap::new(),
            acked: HashSet::new(),
            cipher: None,
            output: Vec::new(),
            stderr: Vec::new(),
            exit_code: Vec::new(),
            data: Vec::new(),
            closed: None,
        }
    }

    async fn connect(started: &Started) -> Self {
        Self::new(Endpoint::client(&started.stream_url, &started.token).await)
    }

    /// Handles one frame; `false` when nothing came within `timeout` or the socket closed.
    async fn pump(&mut self, timeout: Duration) -> bool {
        let Some(message) = self.ep.recv_within(timeout).await else {
            return false;
        };
        match message.message_type {
            MessageType::Acknowledge => {
                if let Ok(ack) = AcknowledgeContent::from_payload(&message.payload) {
                    self.acked.insert(ack.sequence_number);
                }
            }
            MessageType::ChannelClosed => {
                self.closed = Some(ChannelClosed::from_payload(&message.payload).expect("json"));
            }
            MessageType::OutputStreamData => {
                self.ep.ack(&message).await;
                if message.sequence_number >= self.expected {
                    self.early.insert(message.sequence_number, message);
                }
                while let Some(next) = self.early.remove(&self.expected) {
                    self.expected += 1;
                    self.take(next);
                }
            }
            _ => {}
        }
        true
    }

    fn take(&mut self, message: ClientMessage) {
        let plain = |payload: &Bytes, cipher: &Option<ClientCipher>| match cipher {
            Some(cipher) => cipher
                .open(payload)
                .expect("agent data decrypts with key[0..32]"),
            None => payload.to_vec(),
        };
        match message.payload_type {
            PayloadType::OUTPUT => self.output.extend(plain(&message.payload, &self.cipher)),
            PayloadType::STD_ERR => self.stderr.extend(plain(&message.payload, &self.cipher)),
            PayloadType::EXIT_CODE => self
                .exit_code
                .push(String::from_utf8(plain(&message.payload, &self.cipher)).expect("text")),
            _ => {}
        }
        self.data.push(message);
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }

    /// Pumps until the Output contains `needle` after byte `from`; returns the Output.
    async fn wait_for_output(&mut self, needle: &str, from: usize) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.text();
            if text.get(from..).is_some_and(|t| t.contains(needle)) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the output: {text:?}"
            );
            self.pump(Duration::from_millis(100)).await;
        }
    }

    /// Pumps until the shell prompt (`$ `, or `# ` for root) appears after byte `from`.
    async fn wait_for_prompt(&mut self, from: usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.text();
            let fresh = text.get(from..).unwrap_or_default();
            if fresh.contains("$ ") || fresh.contains("# ") {
                return;
            }
            assert!(Instant::now() < deadline, "no prompt in {text:?}");
            self.pump(Duration::from_millis(100)).await;
        }
    }

    /// Pumps until the service's `channel_closed` arrives.
    async fn wait_closed(&mut self) -> ChannelClosed {
        let deadline = Instant::now() + WAIT;
        while self.closed.is_none() {
            assert!(Instant::now() < deadline, "no channel_closed");
            self.pump(Duration::from_millis(100)).await;
        }
        self.closed.clone().expect("closed")
    }

    /// Sends stream data and resends it until the agent acks it, meanwhile taking in what
    /// the agent sends.
    async fn send(&mut self, payload_type: PayloadType, payload: Vec<u8>) {
        let message = self.ep.data(payload_type, payload);
        let seq = message.sequence_number;
        let frame = message.encode();
        let deadline = Instant::now() + WAIT;
        while !self.acked.contains(&seq) {
            assert!(Instant::now() < deadline, "seq {seq} never acked");
            self.ep.send_raw(frame.clone()).await;
            let resend_at = Instant::now() + Duration::from_millis(300);
            while !self.acked.contains(&seq) && Instant::now() < resend_at {
                self.pump(Duration::from_millis(50)).await;
            }
        }
    }

    /// Types `text` into the shell (encrypted when the session is).
    async fn type_text(&mut self, text: &str) {
        let payload = match &self.cipher {
            Some(cipher) => cipher.seal(text.as_bytes()),
            None => text.as_bytes().to_vec(),
        };
        self.send(PayloadType::OUTPUT, payload).await;
    }

    /// A Size message (never encrypted).
    async fn size(&mut self, cols: u32, rows: u32) {
        self.send(
            PayloadType::SIZE,
            SizeData { cols, rows }.to_payload().to_vec(),
        )
        .await;
    }
}

/// The raw JSON of the `ActionParameters` of every requested action, in order.
fn action_parameters(request: &[u8]) -> Vec<Value> {
    let value: Value = serde_json::from_slice(request).expect("json");
    value["RequestedClientActions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|action| action["ActionParameters"].clone())
        .collect()
}

/// The handshake of an encrypted session, as a client that answers the random challenge
/// (`acknowledge`) and binds its data key to `context_session`; returns the data key.
async fn kms_handshake(
    emulator: &Emulator,
    shell: &mut Shell,
    context_session: &str,
    acknowledge: bool,
) -> (Bytes, Vec<u8>) {
    let request = shell
        .ep
        .recv_matching(WAIT, |m| m.payload_type == PayloadType::HANDSHAKE_REQUEST)
        .await
        .expect("HandshakeRequest");
    assert_eq!((request.sequence_number, request.flags), (0, 1));
    shell.ep.ack(&request).await;
    shell.expected = 1;
    let parsed = HandshakeRequest::from_payload(&request.payload).expect("parses");
    let kms_action = parsed
        .requested_client_actions
        .iter()
        .find(|a| a.action_type == ActionType::KmsEncryption)
        .expect("KMSEncryption action");
    let kms = KmsEncryptionRequest::from_action_parameters(&kms_action.action_parameters)
        .expect("KMSEncryption parameters");
    let mut context = json!({"aws:ssm:SessionId": context_session, "aws:ssm:TargetId": TARGET});
    if acknowledge {
        context["aws:ssm:RandomChallenge"] = json!(kms.challenge);
    }
    let generated = kms_call(
        emulator,
        "GenerateDataKey",
        json!({"KeyId": kms.kms_key_id, "NumberOfBytes": 64, "EncryptionContext": context}),
    )
    .await;
    assert_eq!(generated.status, 200, "{}", generated.body);
    let generated = generated.json();
    let data_key = STANDARD
        .decode(generated["Plaintext"].as_str().expect("Plaintext"))
        .expect("base64");
    let mut result = json!({
        "KMSCipherTextKey": generated["CiphertextBlob"],
        "KMSCipherTextHash": null,
    });
    if acknowledge {
        result["ChallengeAcknowledgement"] = json!(true);
    }
    let response = HandshakeResponse {
        client_version: CLIENT_VERSION.into(),
        processed_client_actions: vec![
            ProcessedClientAction {
                action_type: ActionType::SessionType,
                action_status: ActionStatus::SUCCESS,
                action_result: Value::Null,
                error: String::new(),
            },
            ProcessedClientAction {
                action_type: ActionType::KmsEncryption,
                action_status: ActionStatus::SUCCESS,
                action_result: result,
                error: String::new(),
            },
        ],
        errors: None,
    };
    let message = shell
        .ep
        .data(PayloadType::HANDSHAKE_RESPONSE, response.to_payload());
    shell.ep.send(&message).await;
    (request.payload, data_key)
}

// ---------------------------------------------------------------------------------------------
// Standard_Stream and InteractiveCommands

#[tokio::test]
async fn default_shell_starts_without_handshake_echoes_input_and_ends_on_exit() {
    let emulator = start(shell_config(FaultSettings::default())).await;
    let started = start_shell(&emulator, None, json!({})).await;
    let mut shell = Shell::connect(&started).await;
    // No handshake: the first agent message is Output seq 0 with SYN.
    let first = shell
        .ep
        .recv_matching(WAIT, |m| m.message_type == MessageType::OutputStreamData)
        .await
        .expect("first output");
    assert_eq!(first.payload_type, PayloadType::OUTPUT);
    assert_eq!((first.sequence_number, first.flags), (0, 1));
    shell.ep.pending.push_front(first);
    shell.wait_for_prompt(0).await;
    agent_event(&emulator, "handshake_skipped").await;

    shell.size(100, 30).await;
    let mark = shell.output.len();
    shell.type_text("echo hello-$((6*7))\r").await;
    // The pty echoes the typed line (ONLCR: CR LF), then the command prints its result.
    let text = shell.wait_for_output("hello-42\r\n", mark).await;
    assert!(text[mark..].contains("echo hello-$((6*7))"), "{text:?}");

    let mark = shell.output.len();
    shell.type_text("exit\r").await;
    let closed = shell.wait_closed().await;
    assert_eq!(closed.output, "", "the client prints its own exit line");
    assert!(shell.text()[mark..].contains("exit"));
    let ended = emulator
        .events()
        .wait_for(WAIT, |e| {
            matches!(e, Event::Session { state, reason, .. }
                if state == "terminated" && reason == "agent_terminated")
        })
        .await;
    assert!(ended.is_some());
    assert!(
        agent_event(&emulator, "shell_ended")
            .await
            .contains("pty closed")
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn size_messages_resize_the_pty() {
    let emulator = start(shell_config(FaultSettings::default())).await;
    let started = start_shell(&emulator, None, json!({})).await;
    let mut shell = Shell::connect(&started).await;
    shell.wait_for_prompt(0).await;
    shell.size(123, 45).await;
    let mark = shell.output.len();
    shell.type_text("stty size\r").await;
    shell.wait_for_output("45 123\r\n", mark).await;
    shell.size(80, 24).await;
    let mark = shell.output.len();
    shell.type_text("stty size\r").await;
    shell.wait_for_output("24 80\r\n", mark).await;
    // A Size that does not parse is left unacked, as the agent's handler errs.
    let bad = shell
        .ep
        .send_data(PayloadType::SIZE, Bytes::from_static(b"80x24"))
        .await;
    assert!(
        shell
            .ep
            .recv_matching(Duration::from_millis(500), |m| {
                m.message_type == MessageType::Acknowledge
                    && AcknowledgeContent::from_payload(&m.payload)
                        .is_ok_and(|a| a.sequence_number == bad.sequence_number)
            })
            .await
            .is_none()
    );
    assert!(
        agent_event(&emulator, "size_invalid")
            .await
            .contains("Size")
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn ctrl_c_interrupts_the_foreground_command() {
    let emulator = start(shell_config(FaultSettings::default())).await;
    let started = start_shell(&emulator, None, json!({})).await;
    let mut shell = Shell::connect(&started).await;
    shell.wait_for_prompt(0).await;
    let mark = shell.output.len();
    shell.type_text("sleep 30\r").await;
    shell.wait_for_output("sleep 30\r\n", mark).await;
    let interrupted = Instant::now();
    // Ctrl-C is one byte of Output; the pty's line discipline makes it SIGINT.
    shell.type_text("\u{3}").await;
    let mark = shell.output.len();
    shell.type_text("echo done-$((2+3))\r").await;
    shell.wait_for_output("done-5\r\n", mark).await;
    assert!(interrupted.elapsed() < Duration::from_secs(10));
    emulator.shutdown().await;
}

#[tokio::test]
async fn interactive_command_runs_sh_c_on_a_pty_and_ends_with_it() {
    let emulator = start(shell_config(FaultSettings::default())).await;
    let started = start_shell(
        &emulator,
        Some("AWS-StartInteractiveCommand"),
        json!({"command": ["test -t 0 && echo on-a-tty; echo \"$TERM\"; exit 4"]}),
    )
    .await;
    let mut shell = Shell::connect(&started).await;
    shell.wait_for_output("xterm-256color\r\n", 0).await;
    assert!(shell.text().contains("on-a-tty"));
    // The exit status is not reported for interactive commands.
    shell.wait_closed().await;
    assert!(shell.exit_code.is_empty());
    assert!(
        shell
            .data
            .iter()
            .all(|m| m.payload_type == PayloadType::OUTPUT)
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn shell_survives_a_recycle_with_a_stale_cell() {
    let emulator = start(shell_config(FaultSettings {
        stale_cell: true,
        ..FaultSettings::default()
    }))
    .await;
    let started = start_shell(&emulator, None, json!({})).await;
    let mut shell = Shell::connect(&started).await;
    shell.wait_for_prompt(0).await;
    shell.type_text("X=kept\r").await;
    emulator
        .faults()
        .recycle(Some(&started.session_id), SideSelection::Both)
        .await
        .expect("recycle");
    shell.ep.closed(WAIT).await.expect("client closed");
    agent_event(&emulator, "rejoin_ok").await;
    assert_eq!(dial(&started.stream_url).await.err(), Some(403));
    let resumed = resumed(&emulator.endpoint_url(), &started.session_id).await;
    // Same process: sequence numbers and the shell's state carry on.
    let mut fresh = Endpoint::client(&resumed.stream_url, &resumed.token).await;
    fresh.next_seq = shell.ep.next_seq;
    shell.ep = fresh;
    let mark = shell.output.len();
    shell.type_text("echo $X-$((1+1))\r").await;
    shell.wait_for_output("kept-2\r\n", mark).await;
    emulator.shutdown().await;
}

#[tokio::test]
async fn terminate_session_kills_the_shell_and_its_jobs() {
    let emulator = start(shell_config(FaultSettings::default())).await;
    let started = start_shell(&emulator, None, json!({})).await;
    let mut shell = Shell::connect(&started).await;
    shell.wait_for_prompt(0).await;
    let mark = shell.output.len();
    shell
        .type_text("sleep 300 & echo pids:$$:$!:$((1+1))\r")
        .await;
    // The echoed line has "$((1+1))"; only the output has the 2.
    let text = shell.wait_for_output(":2\r\n", mark).await;
    let line = text[mark..]
        .lines()
        .find(|l| l.starts_with("pids:") && l.trim_end().ends_with(":2"))
        .unwrap_or_else(|| panic!("pid line in {:?}", &text[mark..]))
        .to_owned();
    let pids: Vec<u32> = line
        .trim_end()
        .trim_end_matches(":2")
        .split(':')
        .filter_map(|p| p.parse().ok())
        .collect();
    assert_eq!(pids.len(), 2, "{line:?}");
    let response = ssm_call(
        &emulator.endpoint_url(),
        "TerminateSession",
        "AKIDTEST",
        json!({"SessionId": started.session_id}),
    )
    .await;
    assert_eq!(response.status, 200);
    shell.wait_closed().await;
    // Dead, or a zombie waiting for its reaper.
    let alive = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
                .is_some_and(|state| state != 'Z' && state != 'X')
        })
    };
    let deadline = Instant::now() + WAIT;
    while pids.iter().any(alive) {
        assert!(Instant::now() < deadline, "{pids:?} still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    emulator.shutdown().await;
}

#[tokio::test]
async fn preferences_document_types_the_profile_and_a_forced_handshake_comes_first() {
    let mut config = shell_config(FaultSettings::default());
    config.agent.force_handshake = true;
    config
        .documents
        .add(
            ssm_emulator::documents::SessionDocument::from_value(
                "SSM-SessionManagerRunShell",
                &json!({
                    "schemaVersion": "1.0",
                    "sessionType": "Standard_Stream",
                    "inputs": {"shellProfile": {"linux": "echo profile-$((3*3))"}}
                }),
            )
            .expect("loads"),
        )
        .expect("replaces the built-in preferences");
    let emulator = start(config).await;
    let started = start_shell(&emulator, None, json!({})).await;
    let mut shell = Shell::connect(&started).await;
    let request = shell.ep.handshake().await;
    shell.expected = 2;
    let session = request.session_type().expect("valid").expect("SessionType");
    assert_eq!(session.session_type, "Standard_Stream");
    assert_eq!(request.requested_client_actions.len(), 1, "no KMS");
    shell.wait_for_output("profile-9\r\n", 0).await;
    emulator.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// NonInteractiveCommands

#[tokio::test]
async fn non_interactive_separate_streams_report_the_exit_code() {
    let emulator = start(shell_config(FaultSettings::default())).await;
    let started = start_shell(
        &emulator,
        Some("AWS-StartNonInteractiveCommand"),
        json!({
            "command": ["sh -c 'echo out; echo err >&2; exit 3'"],
            "separateOutputStream": ["true"],
        }),
    )
    .await;
    let mut shell = Shell::connect(&started).await;
    // Always a handshake, with Properties null.
    let request = shell.ep.handshake().await;
    shell.expected = 2;
    let session = request.session_type().expect("valid").expect("SessionType");
    assert_eq!(session.session_type, "NonInteractiveCommands");
    assert!(session.properties.is_empty());
    let closed = shell.wait_closed().await;
    assert_eq!(closed.output, "");
    assert_eq!(shell.text(), "out\n");
    assert_eq!(String::from_utf8_lossy(&shell.stderr), "err\n");
    assert_eq!(shell.exit_code, ["EXIT_CODE: 3"]);
    // The exit code is the last data message.
    assert_eq!(
        shell.data.last().map(|m| m.payload_type),
        Some(PayloadType::EXIT_CODE)
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn non_interactive_ctrl_c_signals_the_command_and_a_signal_death_is_minus_one() {
    let emulator = start(shell_config(FaultSettings::default())).await;
    let started = start_shell(
        &emulator,
        Some("AWS-StartNonInteractiveCommand"),
        json!({"command": ["sleep 30"], "separateOutputStream": ["true"]}),
    )
    .await;
    let mut shell = Shell::connect(&started).await;
    shell.ep.handshake().await;
    shell.expected = 2;
    agent_event(&emulator, "shell_started").await;
    let interrupted = Instant::now();
    // Size is acked and ignored; Output is only scanned for 0x03 / 0x1C.
    shell.size(80, 24).await;
    shell.type_text("ignored\u{3}").await;
    shell.wait_closed().await;
    assert!(interrupted.elapsed() < Duration::from_secs(10));
    assert_eq!(shell.exit_code, ["EXIT_CODE: -1"]);
    assert_eq!(agent_event(&emulator, "signal_sent").await, "SIGINT");
    emulator.shutdown().await;
}

#[tokio::test]
async fn non_interactive_without_separate_streams_sends_the_output_after_the_exit() {
    let emulator = start(shell_config(FaultSettings::default())).await;
    let started = start_shell(
        &emulator,
        Some("AWS-StartNonInteractiveCommand"),
        json!({"command": ["sh -c 'echo one; echo two >&2; exit 5'"]}),
    )
    .await;
    let mut shell = Shell::connect(&started).await;
    shell.ep.handshake().await;
    shell.expected = 2;
    shell.wait_closed().await;
    assert_eq!(shell.text(), "one\ntwo\n", "one file for both streams");
    assert!(shell.exit_code.is_empty() && shell.stderr.is_empty());
    emulator.shutdown().await;
}

#[tokio::test]
async fn non_interactive_command_that_cannot_start_reports_exit_code_1_and_the_error() {
    let emulator = start(shell_config(FaultSettings::default())).await;
    let started = start_shell(
        &emulator,
        Some("AWS-StartNonInteractiveCommand"),
        json!({"command": ["no-such-command-xyz --flag"], "separateOutputStream": ["true"]}),
    )
    .await;
    let mut shell = Shell::connect(&started).await;
    shell.ep.handshake().await;
    shell.expected = 2;
    shell.wait_closed().await;
    assert_eq!(shell.exit_code, ["EXIT_CODE: 1"]);
    assert_eq!(
        String::from_utf8_lossy(&shell.stderr),
        "exec: \"no-such-command-xyz\": executable file not found in $PATH"
    );
    emulator.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// KMS

#[tokio::test]
async fn kms_session_exchanges_the_key_and_encrypts_both_ways() {
    let emulator = start(kms_config()).await;
    let started = start_shell(&emulator, None, json!({})).await;
    let mut shell = Shell::connect(&started).await;
    let (request, data_key) = kms_handshake(&emulator, &mut shell, &started.session_id, true).await;
    // The agent's field order, Properties null, the challenge as 16 bytes of base64.
    let parameters = action_parameters(&request);
    assert_eq!(
        parameters[0],
        json!({"SessionType": "Standard_Stream", "Properties": null})
    );
    assert_eq!(parameters[1]["KMSKeyId"], KMS_KEY);
    let challenge = parameters[1]["Challenge"].as_str().expect("challenge");
    assert_eq!(STANDARD.decode(challenge).expect("base64").len(), 16);

    // EncChallengeRequest (seq 1): 64 bytes under the agent's half, answered under ours.
    let cipher = ClientCipher::new(&data_key);
    let challenge = shell
        .ep
        .recv_matching(WAIT, |m| {
            m.payload_type == PayloadType::ENC_CHALLENGE_REQUEST
        })
        .await
        .expect("EncChallengeRequest");
    assert_eq!(challenge.sequence_number, 1);
    shell.ep.ack(&challenge).await;
    let sealed = EncryptionChallenge::from_payload(&challenge.payload)
        .expect("json")
        .challenge;
    assert_eq!(sealed.len(), 12 + 64 + 16);
    let plain = cipher.open(&sealed).expect("decrypts with key[0..32]");
    let answer = EncryptionChallenge {
        challenge: cipher.seal(&plain),
    };
    let message = shell
        .ep
        .data(PayloadType::ENC_CHALLENGE_RESPONSE, answer.to_payload());
    shell.ep.send(&message).await;
    let complete = shell
        .ep
        .recv_matching(WAIT, |m| m.payload_type == PayloadType::HANDSHAKE_COMPLETE)
        .await
        .expect("HandshakeComplete");
    assert_eq!(complete.sequence_number, 2);
    shell.ep.ack(&complete).await;
    shell.expected = 3;
    let complete = HandshakeComplete::from_payload(&complete.payload).expect("json");
    assert_eq!(
        complete.customer_message,
        "This session is encrypted using AWS KMS."
    );

    // Output is encrypted with the first half: the second half does not open it.
    let first = shell
        .ep
        .recv_matching(WAIT, |m| m.payload_type == PayloadType::OUTPUT)
        .await
        .expect("output");
    let wrong_half = ClientCipher::new(&[&data_key[32..], &data_key[..32]].concat());
    assert!(wrong_half.open(&first.payload).is_none());
    shell.ep.pending.push_front(first);
    shell.cipher = Some(cipher);
    shell.wait_for_prompt(0).await;
    // Input encrypted with the second half; Size in the clear.
    shell.size(90, 20).await;
    let mark = shell.output.len();
    shell.type_text("echo kms-$((40+2)); stty size\r").await;
    shell.wait_for_output("kms-42\r\n20 90\r\n", mark).await;
    // Plaintext input does not decrypt on the agent: left unacked.
    let clear = shell
        .ep
        .send_data(PayloadType::OUTPUT, Bytes::from_static(b"echo clear\r"))
        .await;
    assert!(
        shell
            .ep
            .recv_matching(Duration::from_millis(500), |m| {
                m.message_type == MessageType::Acknowledge
                    && AcknowledgeContent::from_payload(&m.payload)
                        .is_ok_and(|a| a.sequence_number == clear.sequence_number)
            })
            .await
            .is_none()
    );
    assert!(
        agent_event(&emulator, "decrypt_failed")
            .await
            .contains("sequence")
    );

    // Both KMS calls are in the event log, with the session; the key never is.
    let records = emulator.events().snapshot();
    let calls: Vec<(String, Option<String>)> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Api {
                operation,
                session_id,
                error,
                ..
            } if operation == "GenerateDataKey" || operation == "Decrypt" => {
                assert_eq!(error, &None);
                Some((operation.clone(), session_id.clone()))
            }
            _ => None,
        })
        .collect();
    let session = Some(started.session_id.clone());
    assert_eq!(
        calls,
        [
            ("GenerateDataKey".to_owned(), session.clone()),
            ("Decrypt".to_owned(), session)
        ]
    );
    let log =
        serde_json::to_string(&records.iter().map(|r| &r.event).collect::<Vec<_>>()).expect("json");
    assert!(!log.contains(&STANDARD.encode(&data_key)));
    assert!(!log.contains(&STANDARD.encode(&data_key[..32])));
    emulator.shutdown().await;
}

#[tokio::test]
async fn kms_with_a_wrong_encryption_context_fails_the_handshake() {
    let emulator = start(kms_config()).await;
    let started = start_shell(&emulator, None, json!({})).await;
    let mut shell = Shell::connect(&started).await;
    kms_handshake(&emulator, &mut shell, "some-other-session", false).await;
    let failed = agent_event(&emulator, "kms_decrypt_failed").await;
    assert!(failed.contains("InvalidCiphertextException"), "{failed}");
    let failed = agent_event(&emulator, "handshake_failed").await;
    assert!(failed.starts_with("Fetching data key failed"), "{failed}");
    shell.wait_closed().await;
    assert!(
        !shell
            .data
            .iter()
            .any(|m| m.payload_type == PayloadType::ENC_CHALLENGE_REQUEST)
    );

    // Acknowledging the challenge without binding it fails the same way: the agent adds
    // the challenge to its Decrypt context.
    let started = start_shell(&emulator, None, json!({})).await;
    let mut shell = Shell::connect(&started).await;
    kms_handshake_claiming_ack(&emulator, &mut shell, &started.session_id).await;
    let session = started.session_id.clone();
    let failed = emulator
        .events()
        .wait_for(WAIT, |e| {
            matches!(e, Event::Agent { session_id, what, detail }
                if *session_id == session && what == "kms_decrypt_failed"
                    && detail.contains("InvalidCiphertextException"))
        })
        .await;
    assert!(failed.is_some());
    shell.wait_closed().await;
    emulator.shutdown().await;
}

/// A client that claims `ChallengeAcknowledgement` but leaves the challenge out of its
/// GenerateDataKey context: the agent's Decrypt context then differs.
async fn kms_handshake_claiming_ack(emulator: &Emulator, shell: &mut Shell, session_id: &str) {
    let request = shell
        .ep
        .recv_matching(WAIT, |m| m.payload_type == PayloadType::HANDSHAKE_REQUEST)
        .await
        .expect("HandshakeRequest");
    shell.ep.ack(&request).await;
    let generated = kms_call(
        emulator,
        "GenerateDataKey",
        json!({"KeyId": KMS_KEY, "NumberOfBytes": 64,
               "EncryptionContext": {"aws:ssm:SessionId": session_id, "aws:ssm:TargetId": TARGET}}),
    )
    .await
    .json();
    let response = HandshakeResponse {
        client_version: CLIENT_VERSION.into(),
        processed_client_actions: vec![ProcessedClientAction {
            action_type: ActionType::KmsEncryption,
            action_status: ActionStatus::SUCCESS,
            action_result: json!({"KMSCipherTextKey": generated["CiphertextBlob"],
                                  "KMSCipherTextHash": null, "ChallengeAcknowledgement": true}),
            error: String::new(),
        }],
        errors: None,
    };
    let message = shell
        .ep
        .data(PayloadType::HANDSHAKE_RESPONSE, response.to_payload());
    shell.ep.send(&message).await;
}

#[tokio::test]
async fn kms_challenge_mismatch_times_out_and_unacknowledged_challenges_can_be_required() {
    let mut config = kms_config();
    config.agent.handshake_timeout = Duration::from_millis(600);
    let emulator = start(config).await;
    let started = start_shell(&emulator, None, json!({})).await;
    let mut shell = Shell::connect(&started).await;
    kms_handshake(&emulator, &mut shell, &started.session_id, false).await;
    let challenge = shell
        .ep
        .recv_matching(WAIT, |m| {
            m.payload_type == PayloadType::ENC_CHALLENGE_REQUEST
        })
        .await
        .expect("EncChallengeRequest");
    shell.ep.ack(&challenge).await;
    // Garbage instead of the re-encrypted challenge: never acked, then the wait times out.
    let wrong = EncryptionChallenge {
        challenge: vec![0; 92],
    };
    shell
        .ep
        .send_data(PayloadType::ENC_CHALLENGE_RESPONSE, wrong.to_payload())
        .await;
    let failed = agent_event(&emulator, "handshake_failed").await;
    assert_eq!(failed, "Timed out waiting for encryption challenge.");
    shell.wait_closed().await;
    emulator.shutdown().await;

    let mut config = kms_config();
    config.agent.require_kms_challenge_response = true;
    let emulator = start(config).await;
    let started = start_shell(&emulator, None, json!({})).await;
    let mut shell = Shell::connect(&started).await;
    kms_handshake(&emulator, &mut shell, &started.session_id, false).await;
    let failed = agent_event(&emulator, "handshake_failed").await;
    assert_eq!(
        failed,
        "client does not support required encryption context random challenge"
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn fake_kms_errors_are_aws_shaped() {
    let emulator = start(kms_config()).await;
    let unknown = kms_call(
        &emulator,
        "GenerateDataKey",
        json!({"KeyId": "alias/nope", "NumberOfBytes": 64}),
    )
    .await;
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.json()["__type"], "NotFoundException");
    emulator
        .faults()
        .patch(&json!({"kms_deny": "generate-data-key"}))
        .expect("patch");
    let denied = kms_call(
        &emulator,
        "GenerateDataKey",
        json!({"KeyId": KMS_KEY, "NumberOfBytes": 64}),
    )
    .await;
    assert_eq!(denied.status, 400);
    assert_eq!(denied.json()["__type"], "AccessDeniedException");
    let message = denied.json()["message"]
        .as_str()
        .expect("message")
        .to_owned();
    assert!(
        message.contains("kms:GenerateDataKey") && message.contains("arn:aws:kms:"),
        "{message}"
    );
    assert_eq!(
        emulator.faults().settings().kms_deny,
        KmsDeny::GenerateDataKey
    );
    emulator.shutdown().await;
}
