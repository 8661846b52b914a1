//! The agent's shell plugins (PROTOCOL-SESSIONS.md §3; agent `session/shell`,
//! `session/plugins/{standardstream,interactivecommands,noninteractivecommands}`): the process
//! (a shell or `sh -c <command>` on a real pty, or a command on pipes), its readers, and the
//! output chunking.
//!
//! The process runs as the emulator's user, in the emulator's working directory, with the
//! emulator's environment plus `TERM=xterm-256color` and `LANG=C.UTF-8` (when `LANG` is unset),
//! as the agent adds them; RunAs users and `HOME` are not modelled.
//!
//! Readers run as tasks and report [`ShellEvent`]s to the session core over one bounded
//! channel, so the core's backpressure stops them. Each reader does what the agent's goroutine
//! does: the pty's write pump waits before its first read, reads at most 1024 bytes at a time,
//! skips reads while the data channel is paused and sleeps the pacing after each round; the
//! separate-stream pipe readers read without sleeping and give up for good when they find the
//! data channel paused; the output file of a non-separate command is streamed like the pty
//! once the command has ended.
//!
//! Dropping a [`ShellProcess`] kills it: SIGKILL to its process group while its leader has not
//! been reaped, SIGKILL to the leader, the pty master closed (the kernel then hangs up the
//! session), the tasks stopped and the output file removed. A pty session's other processes
//! (background jobs in process groups of their own) are killed too: the agent leaves them
//! running, but an emulator must not leave processes behind.

// Without a process to run (not Unix) most of the shell's machinery has no caller.
#![cfg_attr(not(unix), allow(dead_code))]

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use ssm_tether_protocol::PayloadType;
use tokio::sync::mpsc;

// The process itself needs a pty and process groups: Unix only. Elsewhere the emulator
// refuses shell sessions (the port and stream sessions it serves do not need one).
#[cfg(unix)]
mod process;
#[cfg(not(unix))]
#[path = "shell/unsupported.rs"]
mod process;
pub(crate) use process::ShellProcess;

/// A signal the client can ask for with a control byte (NonInteractiveCommands' Ctrl-C and
/// Ctrl-\).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Interrupt {
    /// SIGINT.
    Int,
    /// SIGQUIT.
    Quit,
}

/// `TERM` the agent sets for the shell.
const TERM: &str = "xterm-256color";
/// `LANG` the agent sets when the agent's own is empty.
const LANG: &str = "C.UTF-8";
/// Input queued for the pty and not yet written, in bytes: beyond this, client Output is left
/// unacked (resent later) instead of buffered without bound. The agent's write blocks its
/// receive path instead.
const MAX_INPUT_PENDING: usize = 64 * 1024;
/// Events a shell's tasks can have in flight before they wait for the core.
const EVENT_QUEUE: usize = 8;
/// The agent's prefix check (`separateOutputStreamPrefixRegex`): `^[0-9a-zA-Z\r\n_:-]{0,30}$`.
const MAX_PREFIX: usize = 30;
/// `utf8.UTFMax`.
const UTF_MAX: usize = 4;

/// Which shell plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ShellKind {
    /// `Standard_Stream`: the shell on a pty.
    StandardStream,
    /// `InteractiveCommands`: `sh -c <commands>` on a pty.
    InteractiveCommands,
    /// `NonInteractiveCommands`: the command split shell-style, run directly on pipes.
    NonInteractiveCommands,
}

impl ShellKind {
    /// The plugin for a document's `sessionType`, if it is a shell type.
    pub(crate) fn from_session_type(session_type: &str) -> Option<Self> {
        match session_type {
            "Standard_Stream" => Some(Self::StandardStream),
            "InteractiveCommands" => Some(Self::InteractiveCommands),
            "NonInteractiveCommands" => Some(Self::NonInteractiveCommands),
            _ => None,
        }
    }

    /// The plugin (and handshake `SessionType`) name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::StandardStream => "Standard_Stream",
            Self::InteractiveCommands => "InteractiveCommands",
            Self::NonInteractiveCommands => "NonInteractiveCommands",
        }
    }
}

/// The `linux` section of a shell document's properties, as the agent's `ShellConfig`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LinuxConfig {
    commands: String,
    #[serde(rename = "runAsElevated")]
    _run_as_elevated: bool,
    #[serde(rename = "separateOutputStream")]
    separate_output_stream: Value,
    #[serde(rename = "stdOutSeparatorPrefix")]
    stdout_prefix: String,
    #[serde(rename = "stdErrSeparatorPrefix")]
    stderr_prefix: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ShellPropertiesContent {
    linux: LinuxConfig,
}

/// What a shell plugin needs from the document properties.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ShellProps {
    /// `linux.commands`.
    pub(crate) commands: String,
    /// `linux.separateOutputStream`, converted like Go's `parameters.ConvertToBool`.
    pub(crate) separate_output: Result<bool, String>,
    /// `linux.stdOutSeparatorPrefix`.
    pub(crate) stdout_prefix: String,
    /// `linux.stdErrSeparatorPrefix`.
    pub(crate) stderr_prefix: String,
}

/// Reads the properties as the agent remarshals them into `ShellProperties`.
///
/// # Errors
/// The properties do not have that shape (the agent's "Invalid format in session
/// properties").
pub(crate) fn shell_props(properties: &BTreeMap<String, Value>) -> Result<ShellProps, String> {
    let value = Value::Object(properties.clone().into_iter().collect());
    let content = ShellPropertiesContent::deserialize(&value)
        .map_err(|err| format!("Invalid format in session properties {value};\nerror {err}"))?;
    let linux = content.linux;
    Ok(ShellProps {
        commands: linux.commands,
        separate_output: convert_to_bool(&linux.separate_output_stream)
            .map_err(|err| format!("unable to convert separateOutPutStream: {err}")),
        stdout_prefix: linux.stdout_prefix,
        stderr_prefix: linux.stderr_prefix,
    })
}

/// Go's `parameters.ConvertToBool`: null and `""` are false, booleans are themselves, other
/// strings go through `strconv.ParseBool`.
fn convert_to_bool(value: &Value) -> Result<bool, String> {
    match value {
        Value::Null => Ok(false),
        Value::Bool(b) => Ok(*b),
        Value::String(text) => match text.as_str() {
            "" => Ok(false),
            "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
            "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
            other => Err(format!(
                "invalid input strconv.ParseBool: parsing {other:?}: invalid syntax"
            )),
        },
        _ => Err("invalid parameter type".to_owned()),
    }
}

/// The agent's check of a separator prefix.
pub(crate) fn valid_prefix(prefix: &str) -> bool {
    prefix.len() <= MAX_PREFIX
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"\r\n_:-".contains(&b))
}

/// Splits a command line shell-style, as the agent does with google/shlex for
/// NonInteractiveCommands: words separated by blanks, `'…'` literal, `"…"` with `\` escaping
/// `"` and `\`, `\` escaping any character outside quotes, `#` starting a comment at the start
/// of a word. No expansions, pipes or redirections.
///
/// # Errors
/// An unclosed quote or a trailing backslash (google/shlex's texts).
pub(crate) fn split_command(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\r' | '\n' => {
                if let Some(done) = word.take() {
                    words.push(done);
                }
            }
            '#' if word.is_none() => {
                // A comment runs to the end of the line.
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '\\' => {
                let next = chars
                    .next()
                    .ok_or_else(|| "EOF found after escape character".to_owned())?;
                word.get_or_insert_with(String::new).push(next);
            }
            '\'' => {
                let current = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => current.push(c),
                        None => return Err("EOF found when expecting closing quote".to_owned()),
                    }
                }
            }
            '"' => {
                let current = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => current.push(c),
                            Some(c) => {
                                current.push('\\');
                                current.push(c);
                            }
                            None => {
                                return Err("EOF found when expecting closing quote".to_owned());
                            }
                        },
                        Some(c) => current.push(c),
                        None => return Err("EOF found when expecting closing quote".to_owned()),
                    }
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// The agent's `processStdoutData`: each read is re-chunked on UTF-8 boundaries. An invalid
/// sequence starting within the last three bytes is held back and put in front of the next
/// read (so a payload can carry up to 1027 bytes); elsewhere an invalid byte passes alone.
/// Like the agent, a *valid* U+FFFD is mistaken for an invalid byte: only its first byte is
/// sent. Held-back bytes at EOF are never sent.
#[derive(Debug, Default)]
pub(crate) struct Utf8Chunker {
    carry: Vec<u8>,
}

impl Utf8Chunker {
    /// Processes `prefix ‖ read` after the held-back bytes; returns the payload to send
    /// (possibly empty: the agent never sends an empty payload).
    pub(crate) fn process(&mut self, prefix: &[u8], read: &[u8]) -> Vec<u8> {
        let mut input = std::mem::take(&mut self.carry);
        input.extend_from_slice(prefix);
        input.extend_from_slice(read);
        let mut out = Vec::with_capacity(input.len());
        let mut i = 0;
        while i < input.len() {
            let (valid, size) = decode_rune(&input[i..]);
            if valid {
                out.extend_from_slice(&input[i..i + size]);
            } else {
                if input.len() - i < UTF_MAX {
                    break;
                }
                out.push(input[i]);
            }
            i += size;
        }
        self.carry = input.split_off(i.min(input.len()));
        out
    }
}

/// Go's `utf8.DecodeRune` reduced to what `processStdoutData` looks at: whether the rune is
/// `RuneError` (an invalid or incomplete sequence, width 1, or a genuine U+FFFD, width 3)
/// and its width.
fn decode_rune(bytes: &[u8]) -> (bool, usize) {
    let Some(&first) = bytes.first() else {
        return (false, 1);
    };
    if first < 0x80 {
        return (true, 1);
    }
    let width = match first {
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => return (false, 1),
    };
    match bytes.get(..width).map(std::str::from_utf8) {
        Some(Ok("\u{fffd}")) => (false, width),
        Some(Ok(_)) => (true, width),
        _ => (false, 1),
    }
}

/// What a shell's tasks report to the session core.
#[derive(Debug)]
pub(crate) enum ShellEvent {
    /// A payload to send (Output, StdErr), already chunked.
    Output {
        /// Output or StdErr.
        payload_type: PayloadType,
        /// The bytes.
        payload: Bytes,
    },
    /// The pty read failed or hit EOF: the shell's session is over.
    PtyClosed(String),
    /// The process ended; the exit code as Go's `ExitCode()` gives it (-1 after a signal).
    Exited {
        /// The code.
        code: i32,
        /// How it ended, for the event log.
        detail: String,
    },
    /// A separate-stream pipe reader finished: EOF, or gave up because the data channel was
    /// paused (`broken`).
    PipeDone {
        /// The stderr reader (else stdout).
        stderr: bool,
        /// It gave up while paused.
        broken: bool,
    },
    /// The output file of a non-separate command was streamed to its end.
    FileDone,
    /// Writing client input to the pty failed.
    InputFailed(String),
    /// The error text the agent sends as StdErr after a command failed to start, and
    /// whether the agent then ends the session normally (with `Terminating`).
    StartError(String, bool),
}

/// The knobs a shell needs.
#[derive(Clone, Debug)]
pub(crate) struct ShellSettings {
    /// The shell (`sh` of the agent).
    pub(crate) shell: String,
    /// The write pump's wait before the first pty read.
    pub(crate) first_read_delay: Duration,
    /// The write pump's sleep after each round.
    pub(crate) pacing: Duration,
    /// Typed into a Standard_Stream shell after it starts.
    pub(crate) profile: Option<String>,
    /// Names the output file of non-separate commands.
    pub(crate) session_id: String,
}

/// Why a shell could not be started, with the agent's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StartError {
    /// The pty or the process could not be set up (Standard_Stream, InteractiveCommands):
    /// the session fails without a word to the client.
    #[error("Unable to start command: {0}\n")]
    Pty(String),
    /// The command line does not split (NonInteractiveCommands).
    #[error("Unable to start command: Failed to parse commands input: {0}\n\n")]
    Parse(String),
    /// The command could not be executed (NonInteractiveCommands): the agent reports the exec
    /// error text as StdErr.
    #[error("{0}")]
    Exec(String),
}

/// The events channel for one shell.
pub(crate) fn event_channel() -> (mpsc::Sender<ShellEvent>, mpsc::Receiver<ShellEvent>) {
    mpsc::channel(EVENT_QUEUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_rechunked_with_a_carry_of_at_most_three_bytes() {
        let mut chunker = Utf8Chunker::default();
        // "é" = C3 A9 split across reads: held back, then completed.
        assert_eq!(chunker.process(&[], b"ab\xc3"), b"ab");
        assert_eq!(chunker.process(&[], b"\xa9c"), "éc".as_bytes());
        // A 4-byte emoji split 1 + 3.
        assert_eq!(chunker.process(&[], b"\xf0"), b"");
        assert_eq!(chunker.process(&[], b"\x9f\x98\x80"), "😀".as_bytes());
        // An invalid byte followed by at least three more passes alone.
        assert_eq!(chunker.process(&[], b"\xffabcd"), b"\xffabcd");
        // ... but within the last three bytes it is held back.
        assert_eq!(chunker.process(&[], b"x\xff"), b"x");
        assert_eq!(chunker.process(&[], b"yzw"), b"\xffyzw");
    }

    #[test]
    fn a_valid_replacement_character_loses_two_bytes_like_the_agent() {
        let mut chunker = Utf8Chunker::default();
        let mut input = "\u{fffd}".as_bytes().to_vec();
        input.extend_from_slice(b"tail");
        assert_eq!(chunker.process(&[], &input), b"\xeftail");
        // At the end of a read it is held back as if incomplete.
        assert_eq!(chunker.process(&[], "a\u{fffd}".as_bytes()), b"a");
    }

    #[test]
    fn prefixes_go_after_the_carry() {
        let mut chunker = Utf8Chunker::default();
        assert_eq!(chunker.process(b"OUT:", b"line\n"), b"OUT:line\n");
    }

    #[test]
    fn commands_split_like_google_shlex() {
        assert_eq!(
            split_command("echo 'a b' \"c \\\"d\\\"\" e\\ f").expect("splits"),
            ["echo", "a b", "c \"d\"", "e f"]
        );
        assert_eq!(
            split_command("  ls   -l # list\n/tmp").expect("splits"),
            ["ls", "-l", "/tmp"]
        );
        assert_eq!(split_command("a#b").expect("splits"), ["a#b"]);
        assert!(split_command("echo 'open").is_err());
        assert!(split_command("echo \\").is_err());
        assert!(split_command("").expect("splits").is_empty());
    }

    #[test]
    fn properties_are_read_like_the_agent_remarshals_them() {
        let props: BTreeMap<String, Value> = serde_json::from_value(serde_json::json!({
            "linux": {"commands": "ls", "runAsElevated": false, "separateOutputStream": "true",
                      "stdOutSeparatorPrefix": "OUT:", "extra": 1},
            "windows": {"commands": "dir"}
        }))
        .expect("map");
        let parsed = shell_props(&props).expect("valid");
        assert_eq!(parsed.commands, "ls");
        assert_eq!(parsed.separate_output, Ok(true));
        assert_eq!(parsed.stdout_prefix, "OUT:");
        let bad: BTreeMap<String, Value> =
            serde_json::from_value(serde_json::json!({"linux": {"runAsElevated": "no"}}))
                .expect("map");
        assert!(
            shell_props(&bad)
                .expect_err("invalid")
                .starts_with("Invalid format")
        );
        for (value, expected) in [
            (serde_json::json!(null), Ok(false)),
            (serde_json::json!(""), Ok(false)),
            (serde_json::json!(true), Ok(true)),
            (serde_json::json!("T"), Ok(true)),
            (serde_json::json!("False"), Ok(false)),
        ] {
            assert_eq!(convert_to_bool(&value), expected);
        }
        assert!(convert_to_bool(&serde_json::json!("yes")).is_err());
        assert!(convert_to_bool(&serde_json::json!(1)).is_err());
        assert!(valid_prefix("STD_OUT:\n"));
        assert!(!valid_prefix("STD@OUT"));
        assert!(!valid_prefix(&"x".repeat(31)));
    }
}
