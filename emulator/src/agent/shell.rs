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

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rustix::fs::{Mode, OFlags};
use rustix::process::{Pid, Signal};
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;
use serde::Deserialize;
use serde_json::Value;
use ssm_tether_protocol::PayloadType;
use ssm_tether_protocol::message::MAX_STREAM_PAYLOAD;
use tokio::io::AsyncReadExt;
use tokio::io::unix::AsyncFd;
use tokio::process::Command;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

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

/// A running shell plugin: the process, its pty or pipes, and its tasks.
pub(crate) struct ShellProcess {
    kind: ShellKind,
    pid: Option<Pid>,
    /// Set by the waiter task once the leader has been reaped (its pid may be reused).
    reaped: Arc<AtomicBool>,
    /// The process leads a session of its own (the pty kinds).
    session_leader: bool,
    master: Option<Arc<AsyncFd<OwnedFd>>>,
    input: Option<mpsc::UnboundedSender<Bytes>>,
    input_pending: Arc<AtomicUsize>,
    input_failed: bool,
    output_file: Option<PathBuf>,
    tasks: JoinSet<()>,
    events: mpsc::Sender<ShellEvent>,
    paused: watch::Receiver<bool>,
    settings: ShellSettings,
}

impl std::fmt::Debug for ShellProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShellProcess")
            .field("kind", &self.kind)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl Drop for ShellProcess {
    fn drop(&mut self) {
        if let Some(pid) = self.pid
            && !self.reaped.load(Ordering::Acquire)
        {
            // The whole group: `sh -c` children and pipelines die with their shell.
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
            let _ = rustix::process::kill_process(pid, Signal::KILL);
        }
        if let Some(leader) = self.pid.filter(|_| self.session_leader) {
            kill_session(leader);
        }
        self.tasks.abort_all();
        self.input = None;
        self.master = None;
        if let Some(path) = self.output_file.take() {
            let _ = std::fs::remove_file(path);
        }
    }
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

impl ShellProcess {
    /// Starts a Standard_Stream shell or an InteractiveCommands `sh -c <commands>` on a new
    /// pty, its write pump and input writer, and types the shell profile.
    ///
    /// # Errors
    /// [`StartError::Pty`] if the pty or the process cannot be created.
    pub(crate) fn spawn_pty(
        kind: ShellKind,
        commands: &str,
        settings: ShellSettings,
        events: mpsc::Sender<ShellEvent>,
        paused: watch::Receiver<bool>,
    ) -> Result<Self, StartError> {
        let failed = |what: &str, err: std::io::Error| {
            StartError::Pty(format!("Failed to start pty: {what}: {err}\n"))
        };
        let (master, slave) = open_pty().map_err(|e| failed("open pty", e))?;
        let mut command = Command::new(&settings.shell);
        if kind == ShellKind::InteractiveCommands && !commands.trim().is_empty() {
            command.arg("-c").arg(commands);
        }
        agent_environment(&mut command);
        let stdio = |fd: &OwnedFd| fd.try_clone().map(Stdio::from);
        command
            .stdin(stdio(&slave).map_err(|e| failed("stdin", e))?)
            .stdout(stdio(&slave).map_err(|e| failed("stdout", e))?)
            .stderr(stdio(&slave).map_err(|e| failed("stderr", e))?)
            .kill_on_drop(true);
        become_session_leader(&mut command, slave);
        let child = command.spawn().map_err(|e| failed(&settings.shell, e))?;
        // Dropping `command` closed the parent's copies of the slave: EOF on the master now
        // means that every process of the session has let go of the terminal.
        drop(command);
        rustix::io::ioctl_fionbio(&master, true)
            .map_err(|e| failed("non-blocking master", e.into()))?;
        let master = Arc::new(register(master).map_err(|e| failed("register master", e))?);
        let mut shell = Self::new(kind, &child, settings, events, paused);
        shell.session_leader = true;
        shell.master = Some(master.clone());
        let (input_tx, input_rx) = mpsc::unbounded_channel();
        shell.input = Some(input_tx);
        shell.tasks.spawn(pty_writer(
            master.clone(),
            input_rx,
            shell.input_pending.clone(),
            shell.events.clone(),
        ));
        shell.tasks.spawn(pty_write_pump(
            master,
            shell.settings.first_read_delay,
            shell.settings.pacing,
            shell.events.clone(),
            shell.paused.clone(),
        ));
        shell.watch_exit(child);
        if kind == ShellKind::StandardStream
            && let Some(profile) = shell.settings.profile.clone()
        {
            shell.write_input(Bytes::from(format!("{profile}\n")));
        }
        Ok(shell)
    }

    /// Starts a NonInteractiveCommands command: split shell-style, executed without a shell
    /// or stdin; stdout and stderr on two pipes (`separate`) or both into one file streamed
    /// after the command ends.
    ///
    /// # Errors
    /// [`StartError::Parse`] for a command line that does not split, [`StartError::Exec`]
    /// when it cannot be executed.
    pub(crate) fn spawn_command(
        props: &ShellProps,
        separate: bool,
        settings: ShellSettings,
        events: mpsc::Sender<ShellEvent>,
        paused: watch::Receiver<bool>,
    ) -> Result<Self, StartError> {
        let argv = split_command(&props.commands).map_err(StartError::Parse)?;
        let Some((program, args)) = argv.split_first() else {
            return Err(StartError::Exec("exec: no command".to_owned()));
        };
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null()).kill_on_drop(true);
        // The agent's command shares the agent's process group; the emulator's gets its own,
        // so that killing the group on cancel cannot hit the emulator.
        command.process_group(0);
        agent_environment(&mut command);
        let mut output_file = None;
        if separate {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
        } else {
            let (path, file) = create_output_file(&settings.session_id).map_err(|e| {
                StartError::Exec(format!(
                    "Failed to open file for writing command output. error: {e}\n"
                ))
            })?;
            let stderr = file
                .try_clone()
                .map_err(|e| StartError::Exec(e.to_string()))?;
            command
                .stdout(Stdio::from(file))
                .stderr(Stdio::from(stderr));
            output_file = Some(path);
        }
        let spawned = command.spawn();
        drop(command);
        let mut child = match spawned {
            Ok(child) => child,
            Err(err) => {
                if let Some(path) = output_file {
                    let _ = std::fs::remove_file(path);
                }
                return Err(StartError::Exec(exec_error_text(program, &err)));
            }
        };
        let mut shell = Self::new(
            ShellKind::NonInteractiveCommands,
            &child,
            settings,
            events,
            paused,
        );
        shell.output_file = output_file;
        if separate {
            let stdout = child.stdout.take();
            let stderr = child.stderr.take();
            if let Some(stdout) = stdout {
                shell.tasks.spawn(pipe_reader(
                    stdout,
                    false,
                    props.stdout_prefix.clone().into_bytes(),
                    shell.events.clone(),
                    shell.paused.clone(),
                ));
            }
            if let Some(stderr) = stderr {
                shell.tasks.spawn(pipe_reader(
                    stderr,
                    true,
                    props.stderr_prefix.clone().into_bytes(),
                    shell.events.clone(),
                    shell.paused.clone(),
                ));
            }
        }
        shell.watch_exit(child);
        Ok(shell)
    }

    fn new(
        kind: ShellKind,
        child: &tokio::process::Child,
        settings: ShellSettings,
        events: mpsc::Sender<ShellEvent>,
        paused: watch::Receiver<bool>,
    ) -> Self {
        Self {
            kind,
            pid: child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .and_then(Pid::from_raw),
            reaped: Arc::new(AtomicBool::new(false)),
            session_leader: false,
            master: None,
            input: None,
            input_pending: Arc::new(AtomicUsize::new(0)),
            input_failed: false,
            output_file: None,
            tasks: JoinSet::new(),
            events,
            paused,
            settings,
        }
    }

    /// Reaps the process in a task and reports its exit code.
    fn watch_exit(&mut self, mut child: tokio::process::Child) {
        let events = self.events.clone();
        let reaped = self.reaped.clone();
        self.tasks.spawn(async move {
            let (code, detail) = match child.wait().await {
                Ok(status) => {
                    reaped.store(true, Ordering::Release);
                    match status.code() {
                        Some(code) => (code, format!("exit status {code}")),
                        // Go's ExitCode() of a process ended by a signal.
                        None => (-1, format!("terminated by a signal ({status})")),
                    }
                }
                Err(err) => (1, format!("wait failed: {err}")),
            };
            let _ = events.send(ShellEvent::Exited { code, detail }).await;
        });
    }

    /// Whether the pty handler takes input (the pty exists and writing has not failed).
    pub(crate) fn pty_ready(&self) -> bool {
        self.input.is_some() && !self.input_failed
    }

    /// Queues client input for the pty. `false` (leave the message unacked) when too much is
    /// queued already or writing has failed.
    pub(crate) fn write_input(&mut self, data: Bytes) -> bool {
        let Some(input) = &self.input else {
            return false;
        };
        if self.input_failed {
            return false;
        }
        let pending = self.input_pending.load(Ordering::Acquire);
        if pending > 0 && pending + data.len() > MAX_INPUT_PENDING {
            return false;
        }
        self.input_pending.fetch_add(data.len(), Ordering::AcqRel);
        input.send(data).is_ok()
    }

    /// Writing to the pty failed: later input is left unacked, as the agent's failing write.
    pub(crate) fn input_failed(&mut self) {
        self.input_failed = true;
    }

    /// Applies a terminal size to the pty (`TIOCSWINSZ`, each value truncated to 16 bits).
    ///
    /// # Errors
    /// No pty, or the ioctl failed.
    pub(crate) fn resize(&self, cols: u32, rows: u32) -> Result<(), String> {
        let master = self.master.as_ref().ok_or("no pty")?;
        let size = Winsize {
            ws_row: rows as u16,
            ws_col: cols as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(master.get_ref(), size)
            .map_err(|err| format!("set pty size failed: {err}"))
    }

    /// Sends `signal` to the command (NonInteractiveCommands' Ctrl-C / Ctrl-\).
    ///
    /// # Errors
    /// The process is gone.
    pub(crate) fn signal(&self, signal: Signal) -> Result<(), String> {
        let pid = self.pid.ok_or("no process")?;
        if self.reaped.load(Ordering::Acquire) {
            return Err("os: process already finished".to_owned());
        }
        rustix::process::kill_process(pid, signal).map_err(|err| err.to_string())
    }

    /// Streams the output file of a non-separate command (the agent's write pump with no
    /// initial wait), after the command ended.
    pub(crate) fn stream_output_file(&mut self) {
        let Some(path) = self.output_file.clone() else {
            let events = self.events.clone();
            self.tasks.spawn(async move {
                let _ = events.send(ShellEvent::FileDone).await;
            });
            return;
        };
        self.tasks.spawn(file_write_pump(
            path,
            self.settings.pacing,
            self.events.clone(),
            self.paused.clone(),
        ));
    }
}

/// The events channel for one shell.
pub(crate) fn event_channel() -> (mpsc::Sender<ShellEvent>, mpsc::Receiver<ShellEvent>) {
    mpsc::channel(EVENT_QUEUE)
}

/// Environment additions of the agent's `StartCommandExecutor`.
fn agent_environment(command: &mut Command) {
    command.env("TERM", TERM);
    if std::env::var_os("LANG").is_none_or(|lang| lang.is_empty()) {
        command.env("LANG", LANG);
    }
}

/// A new pty pair: the master, and the slave opened without becoming anyone's terminal.
fn open_pty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok((master, slave))
}

/// Makes the child a session leader with the pty slave as its controlling terminal (what
/// creack/pty's `Setsid` and `Setctty` do), so that the terminal's line discipline turns
/// Ctrl-C into SIGINT for the remote foreground process group.
#[allow(unsafe_code)]
fn become_session_leader(command: &mut Command, slave: OwnedFd) {
    // SAFETY: the closure runs in the forked child before exec and makes only two system
    // calls (setsid, ioctl TIOCSCTTY) on a descriptor it owns; it does not allocate, lock or
    // touch any other state of the parent.
    unsafe {
        command.pre_exec(move || {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(&slave)?;
            Ok(())
        });
    }
}

/// SIGKILL to every process of the session `leader` led. A session id stays taken while the
/// session has members, so no unrelated process can match, even after the leader was reaped.
fn kill_session(leader: Pid) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(raw) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
            .filter(|raw| *raw > 0)
        else {
            continue;
        };
        // `pid (comm) state ppid pgrp session …`; the command name may contain spaces and
        // parentheses, so count from the last ")".
        let session = std::fs::read_to_string(format!("/proc/{raw}/stat"))
            .ok()
            .and_then(|stat| {
                let (_, rest) = stat.rsplit_once(") ")?;
                rest.split(' ').nth(3)?.parse::<i32>().ok()
            });
        if session == Some(leader.as_raw_nonzero().get())
            && let Some(pid) = Pid::from_raw(raw)
        {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
        }
    }
}

/// Hands the (non-blocking) pty master to tokio's reactor.
#[allow(unsafe_code)]
fn register(master: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `AsyncFd` takes ownership of the `OwnedFd`, which stays open and returns the
    // same descriptor for as long as it lives; nothing else closes or replaces it.
    unsafe { AsyncFd::register(master) }.map_err(|err| std::io::Error::other(err.to_string()))
}

/// The output file of a non-separate command, created exclusively in the temp directory.
fn create_output_file(session_id: &str) -> std::io::Result<(PathBuf, std::fs::File)> {
    let safe: String = session_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64)
        .collect();
    let path = std::env::temp_dir().join(format!(
        "ssm-emulator-{safe}-{:016x}.out",
        rand::random::<u64>()
    ));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    Ok((path, file))
}

/// Go's `exec.Cmd.Start` error text.
fn exec_error_text(program: &str, err: &std::io::Error) -> String {
    let reason = match err.kind() {
        std::io::ErrorKind::NotFound if !program.contains('/') => {
            return format!("exec: {program:?}: executable file not found in $PATH");
        }
        std::io::ErrorKind::NotFound => "no such file or directory".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => err.to_string(),
    };
    format!("fork/exec {program}: {reason}")
}

/// Reads the pty master (≤ 1024 bytes); `Ok(0)` or an error (EIO once every slave is closed)
/// ends the session.
async fn read_master(master: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        let mut guard = master.readable().await?;
        match guard.try_io(|fd| rustix::io::read(fd.get_ref(), &mut *buf).map_err(Into::into)) {
            Ok(result) => return result,
            Err(_would_block) => {}
        }
    }
}

/// The agent's `writePump` for a pty: wait, then read ≤ 1024 bytes per round unless paused,
/// send the UTF-8-chunked bytes, sleep the pacing.
async fn pty_write_pump(
    master: Arc<AsyncFd<OwnedFd>>,
    first_read_delay: Duration,
    pacing: Duration,
    events: mpsc::Sender<ShellEvent>,
    mut paused: watch::Receiver<bool>,
) {
    tokio::time::sleep(first_read_delay).await;
    let mut buf = vec![0u8; MAX_STREAM_PAYLOAD];
    let mut chunker = Utf8Chunker::default();
    loop {
        if *paused.borrow_and_update() {
            // The agent polls IsActive every millisecond; waiting for the change is the same
            // without the spinning.
            if paused.wait_for(|paused| !paused).await.is_err() {
                return;
            }
        }
        match read_master(&master, &mut buf).await {
            Ok(0) => {
                let _ = events.send(ShellEvent::PtyClosed("EOF".to_owned())).await;
                return;
            }
            Ok(n) => {
                let payload = chunker.process(&[], &buf[..n]);
                if !payload.is_empty() {
                    let event = ShellEvent::Output {
                        payload_type: PayloadType::OUTPUT,
                        payload: payload.into(),
                    };
                    if events.send(event).await.is_err() {
                        return;
                    }
                }
            }
            Err(err) => {
                let text = format!("read /dev/ptmx: {}", io_error_text(&err));
                let _ = events.send(ShellEvent::PtyClosed(text)).await;
                return;
            }
        }
        if !pacing.is_zero() {
            tokio::time::sleep(pacing).await;
        }
    }
}

/// Writes queued client input into the pty master, in order.
async fn pty_writer(
    master: Arc<AsyncFd<OwnedFd>>,
    mut input: mpsc::UnboundedReceiver<Bytes>,
    pending: Arc<AtomicUsize>,
    events: mpsc::Sender<ShellEvent>,
) {
    while let Some(data) = input.recv().await {
        let mut rest: &[u8] = &data;
        while !rest.is_empty() {
            let written = async {
                loop {
                    let mut guard = master.writable().await?;
                    match guard
                        .try_io(|fd| rustix::io::write(fd.get_ref(), rest).map_err(Into::into))
                    {
                        Ok(result) => return result,
                        Err(_would_block) => {}
                    }
                }
            }
            .await;
            match written {
                Ok(n) => rest = &rest[n..],
                Err(err) => {
                    let text = format!("write /dev/ptmx: {}", io_error_text(&err));
                    let _ = events.send(ShellEvent::InputFailed(text)).await;
                    return;
                }
            }
        }
        pending.fetch_sub(data.len(), Ordering::AcqRel);
    }
}

/// The agent's separate-stream pipe reader: checks the data channel before every read and
/// gives up for good when it is paused (keeping the pipe open, as the agent does, so the
/// command may block on a full pipe); reads ≤ 1024 − prefix bytes; puts the prefix in front of
/// a chunk when the previous one ended in a newline.
async fn pipe_reader(
    mut pipe: impl tokio::io::AsyncRead + Unpin,
    stderr: bool,
    prefix: Vec<u8>,
    events: mpsc::Sender<ShellEvent>,
    paused: watch::Receiver<bool>,
) {
    let payload_type = if stderr {
        PayloadType::STD_ERR
    } else {
        PayloadType::OUTPUT
    };
    let mut buf = vec![0u8; MAX_STREAM_PAYLOAD.saturating_sub(prefix.len()).max(1)];
    let mut chunker = Utf8Chunker::default();
    let mut need_prefix = true;
    loop {
        if *paused.borrow() {
            let _ = events
                .send(ShellEvent::PipeDone {
                    stderr,
                    broken: true,
                })
                .await;
            // Hold the pipe open without reading it: what the agent's abandoned pipe does.
            std::future::pending::<()>().await;
        }
        let n = match pipe.read(&mut buf).await {
            Ok(0) => {
                let _ = events
                    .send(ShellEvent::PipeDone {
                        stderr,
                        broken: false,
                    })
                    .await;
                return;
            }
            Ok(n) => n,
            Err(_) => {
                let _ = events
                    .send(ShellEvent::PipeDone {
                        stderr,
                        broken: true,
                    })
                    .await;
                return;
            }
        };
        let prefix_now: &[u8] = if need_prefix { &prefix } else { &[] };
        need_prefix = buf[n - 1] == b'\n';
        let payload = chunker.process(prefix_now, &buf[..n]);
        if !payload.is_empty() {
            let event = ShellEvent::Output {
                payload_type,
                payload: payload.into(),
            };
            if events.send(event).await.is_err() {
                return;
            }
        }
    }
}

/// The agent's write pump over the output file of a non-separate command (no initial wait).
async fn file_write_pump(
    path: PathBuf,
    pacing: Duration,
    events: mpsc::Sender<ShellEvent>,
    mut paused: watch::Receiver<bool>,
) {
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(_) => {
            let _ = events.send(ShellEvent::FileDone).await;
            return;
        }
    };
    let mut buf = vec![0u8; MAX_STREAM_PAYLOAD];
    let mut chunker = Utf8Chunker::default();
    loop {
        if *paused.borrow_and_update() && paused.wait_for(|paused| !paused).await.is_err() {
            return;
        }
        match file.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = events.send(ShellEvent::FileDone).await;
                return;
            }
            Ok(n) => {
                let payload = chunker.process(&[], &buf[..n]);
                if !payload.is_empty() {
                    let event = ShellEvent::Output {
                        payload_type: PayloadType::OUTPUT,
                        payload: payload.into(),
                    };
                    if events.send(event).await.is_err() {
                        return;
                    }
                }
            }
        }
        if !pacing.is_zero() {
            tokio::time::sleep(pacing).await;
        }
    }
}

/// An I/O error as Go prints it (`input/output error`), without Rust's `(os error N)`.
fn io_error_text(err: &std::io::Error) -> String {
    let text = err.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text).to_owned();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
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

    #[test]
    fn exec_errors_read_like_go() {
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(
            exec_error_text("nosuchcmd", &missing),
            "exec: \"nosuchcmd\": executable file not found in $PATH"
        );
        assert_eq!(
            exec_error_text("/no/such", &missing),
            "fork/exec /no/such: no such file or directory"
        );
        assert_eq!(
            io_error_text(&std::io::Error::from_raw_os_error(5)),
            "input/output error"
        );
    }
}
