//! The shell plugin's process on Unix: a pty (or pipes), its readers and writers, and the
//! cleanup that leaves no process behind.

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
use ssm_tether_protocol::PayloadType;
use ssm_tether_protocol::message::MAX_STREAM_PAYLOAD;
use tokio::io::AsyncReadExt;
use tokio::io::unix::AsyncFd;
use tokio::process::Command;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::{
    Interrupt, LANG, MAX_INPUT_PENDING, ShellEvent, ShellKind, ShellProps, ShellSettings,
    StartError, TERM, Utf8Chunker, split_command,
};

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
        default_interrupts(&mut command);
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
        default_interrupts(&mut command);
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
    pub(crate) fn signal(&self, signal: Interrupt) -> Result<(), String> {
        let signal = match signal {
            Interrupt::Int => Signal::INT,
            Interrupt::Quit => Signal::QUIT,
        };
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

/// Environment additions of the agent's `StartCommandExecutor`.
fn agent_environment(command: &mut Command) {
    command.env("TERM", TERM);
    if std::env::var_os("LANG").is_none_or(|lang| lang.is_empty()) {
        command.env("LANG", LANG);
    }
}

/// A new pty pair: the master, and the slave opened without becoming anyone's terminal.
fn open_pty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    // macOS's posix_openpt takes no O_CLOEXEC: set it right after (a child forked in between
    // would only hold one more copy of the master).
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    let master = {
        let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY)?;
        rustix::io::fcntl_setfd(&master, rustix::io::FdFlags::CLOEXEC)?;
        master
    };
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

/// Gives the child the default action for SIGINT and SIGQUIT. Ignored signals survive exec,
/// and an emulator started in the background by a non-interactive shell (`cmd &`, as CI
/// scripts do) has both ignored: its shells would then shrug off Ctrl-C, which the agent's,
/// started by a service manager, never do.
#[allow(unsafe_code)]
fn default_interrupts(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls signal(2), which
    // is async-signal-safe; it touches no other state of the parent.
    unsafe {
        command.pre_exec(|| {
            for signal in [libc::SIGINT, libc::SIGQUIT] {
                if libc::signal(signal, libc::SIG_DFL) == libc::SIG_ERR {
                    return Err(std::io::Error::last_os_error());
                }
            }
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
