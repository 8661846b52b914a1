//! Compiling a component within a time and a memory budget.
//!
//! Cranelift's time and memory grow with the component, and a hostile component can make
//! both huge; a reload compiles again within a second of every change to the file. wasmtime
//! 48 has no setting that bounds either (its `Config` limits what *running* code may use:
//! stack, memories, tables, fuel, epochs, none of which apply to compiling). So the bound
//! comes from the operating system: the component is compiled by a child process, this same
//! executable started in worker mode ([`compile_worker_main`]), with
//!
//! * `RLIMIT_DATA` = the memory budget. On Linux (since 4.7) it counts every private
//!   writable mapping (heap, `mmap`ed allocations, thread stacks) but not address space
//!   that is only reserved, so it bounds what the compiler can actually use without having
//!   to guess how much address space allocator arenas and threads reserve (`RLIMIT_AS`
//!   would, and on a many-core machine that is gigabytes of untouched reservations). An
//!   allocation beyond it fails and the worker aborts. Other Unixes enforce `RLIMIT_DATA`
//!   for `brk` only; there the time bound is what holds;
//! * at most [`WORKER_THREADS`] compiler threads (`RAYON_NUM_THREADS`), so that the memory
//!   needed does not grow with the machine's core count: the 18 MB componentize-py example
//!   compiles within 448 MiB with 4 threads but needs more than 512 MiB with 8;
//! * `RLIMIT_CPU` = the time budget times the threads, a backstop in case this process dies
//!   without killing the worker; `RLIMIT_CORE` = 0 and `RLIMIT_FSIZE` = 0 (it writes no
//!   files, and a crash leaves no core file of hundreds of megabytes);
//! * a wall-clock deadline, after which the parent kills it: [`LoadError::CompileTimeout`].
//!
//! The worker reads the component on stdin and writes the compiled bytes to stdout (both
//! pipes private to the two processes). Those bytes are deserialized (`unsafe`: they run as
//! native code) without a further check: the worker is this executable
//! (`/proc/self/exe` on Linux, which stays the running binary even if the file is replaced),
//! so its output is exactly as trustworthy as compiling in this process; a MAC the parent
//! computed over it would authenticate whatever arrived and add nothing, and whoever could
//! tamper with the pipes runs as this user and could already change this process. wasmtime's
//! header check still refuses output from an incompatible engine. The parent then
//! authenticates the bytes into the cache like any other compile.
//!
//! Library users whose `main` does not call [`compile_worker_main`] (and this crate's tests)
//! compile on a thread of their own process: the deadline still fails the load, but the
//! thread cannot be stopped and runs to completion, and memory is not bounded.

use std::ffi::OsStr;
use std::io::{Read, Write as _};
use std::path::PathBuf;
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::Engine;

use super::cache::MAX_ENTRY_BYTES;
use super::engine::{MAX_PLUGIN_BYTES, engine_config};
use super::error::LoadError;

/// The argument that starts this executable as a compile worker.
const WORKER_ARG: &str = "__compile-plugin-worker";
/// The default time budget: 10 times what the largest real component we know of (an 18 MB
/// componentize-py component) takes in a release build (6 s; 20 s in a debug build on a
/// busy 2-core machine), so a slow or busy machine passes.
pub const DEFAULT_COMPILE_TIMEOUT: Duration = Duration::from_secs(60);
/// The default memory budget: more than twice what that component needs in a worker
/// (less than 448 MiB, with the worker's 4 compiler threads).
pub const DEFAULT_COMPILE_MEMORY: u64 = 1 << 30;
/// Most compiler threads in a worker.
const WORKER_THREADS: usize = 4;
/// Most of a worker's error message that is kept.
const MAX_MESSAGE_BYTES: usize = 4 << 10;

/// Set by [`compile_worker_main`]: this executable can serve as a compile worker.
static WORKER_AVAILABLE: AtomicBool = AtomicBool::new(false);

/// How plugins are compiled, and within which bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    /// Wall-clock time one compile may take; beyond it the load fails with
    /// [`LoadError::CompileTimeout`].
    pub timeout: Duration,
    /// Memory one compile may use, in bytes; enforced in a [`Isolation::Worker`] (see the
    /// module documentation for how).
    pub memory_limit: u64,
    /// Where components are compiled.
    pub isolation: Isolation,
}

/// Where components are compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// In a child process running this program, an executable whose `main` calls
    /// [`compile_worker_main`] first: time and memory are bounded.
    Worker(PathBuf),
    /// On a thread of this process: a compile that overruns its time fails the load but
    /// keeps running to completion, and memory is not bounded.
    InProcess,
}

impl Default for CompileOptions {
    /// The default budgets, in a worker if this executable can serve as one (its `main`
    /// called [`compile_worker_main`]), else in this process.
    fn default() -> Self {
        Self {
            timeout: DEFAULT_COMPILE_TIMEOUT,
            memory_limit: DEFAULT_COMPILE_MEMORY,
            isolation: if WORKER_AVAILABLE.load(Ordering::Relaxed) {
                this_executable().map_or(Isolation::InProcess, Isolation::Worker)
            } else {
                Isolation::InProcess
            },
        }
    }
}

/// This process's executable, for starting a worker. On Linux `/proc/self/exe`: the binary
/// that is running, even if its file was replaced by an upgrade since.
fn this_executable() -> Option<PathBuf> {
    let proc_self = PathBuf::from("/proc/self/exe");
    if cfg!(target_os = "linux") && proc_self.exists() {
        return Some(proc_self);
    }
    std::env::current_exe().ok()
}

/// Call first in `main` of an executable that loads plugins. If the process was started as a
/// compile worker, compiles the component on stdin to stdout and returns the exit status
/// (return it from `main`). Otherwise returns `None` and records that this executable can
/// serve as a worker, so that [`CompileOptions::default`] (and so every
/// [`super::PluginEngine::new`]) compiles in one, within a memory budget.
pub fn compile_worker_main() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() == Some(OsStr::new(WORKER_ARG)) && args.next().is_none() {
        return Some(serve());
    }
    WORKER_AVAILABLE.store(true, Ordering::Relaxed);
    None
}

/// The worker: component on stdin, compiled bytes on stdout. Exit status 1: the component
/// does not compile (wasmtime's message on stderr); 2: the worker could not do its job.
fn serve() -> ExitCode {
    let mut input = Vec::new();
    if let Err(err) = std::io::stdin()
        .lock()
        .take(MAX_PLUGIN_BYTES + 1)
        .read_to_end(&mut input)
    {
        eprintln!("cannot read the component: {err}");
        return ExitCode::from(2);
    }
    if input.len() as u64 > MAX_PLUGIN_BYTES {
        eprintln!(
            "the component is larger than {} MiB",
            MAX_PLUGIN_BYTES >> 20
        );
        return ExitCode::from(2);
    }
    // The same configuration as the parent's engine, or the parent refuses the output.
    let engine = match Engine::new(&engine_config()) {
        Ok(engine) => engine,
        Err(err) => {
            eprintln!("cannot create the engine: {err:#}");
            return ExitCode::from(2);
        }
    };
    match engine.precompile_component(&input) {
        Ok(artifact) => {
            let mut stdout = std::io::stdout().lock();
            match stdout.write_all(&artifact).and_then(|()| stdout.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("cannot write the compiled component: {err}");
                    ExitCode::from(2)
                }
            }
        }
        Err(err) => {
            eprintln!("{err:#}");
            ExitCode::from(1)
        }
    }
}

/// Compiles `bytes` (the plugin `label`) into what `Engine::precompile_component` returns,
/// within `options`' budgets.
pub(super) fn compile(
    options: &CompileOptions,
    engine: &Engine,
    label: &str,
    bytes: &Arc<[u8]>,
) -> Result<Vec<u8>, LoadError> {
    match &options.isolation {
        Isolation::InProcess => in_process(options, engine, label, bytes),
        Isolation::Worker(program) => in_worker(options, program, label, bytes),
    }
}

fn compile_error(label: &str, detail: String) -> LoadError {
    // The compiler quotes names from the component: plugin text, bounded and escaped.
    LoadError::Compile {
        plugin: label.to_owned(),
        detail: super::text::bounded_owned(detail, super::text::MAX_TEXT),
    }
}

fn in_process(
    options: &CompileOptions,
    engine: &Engine,
    label: &str,
    bytes: &Arc<[u8]>,
) -> Result<Vec<u8>, LoadError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let engine = engine.clone();
    let bytes = Arc::clone(bytes);
    std::thread::Builder::new()
        .name("plugin-compile".into())
        .spawn(move || {
            let result = engine
                .precompile_component(&bytes)
                .map_err(|e| format!("{e:#}"));
            // The receiver is gone if the compile overran its time: nobody wants the result.
            let _ = tx.send(result);
        })
        .map_err(|e| compile_error(label, format!("cannot start a compiler thread: {e}")))?;
    match rx.recv_timeout(options.timeout) {
        Ok(Ok(artifact)) => Ok(artifact),
        Ok(Err(detail)) => Err(compile_error(label, detail)),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(LoadError::CompileTimeout {
            plugin: label.to_owned(),
            budget: options.timeout,
        }),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            Err(compile_error(label, "the compiler panicked".into()))
        }
    }
}

fn in_worker(
    options: &CompileOptions,
    program: &std::path::Path,
    label: &str,
    bytes: &[u8],
) -> Result<Vec<u8>, LoadError> {
    let mut command = std::process::Command::new(program);
    command
        .arg(WORKER_ARG)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RAYON_NUM_THREADS", worker_threads().to_string());
    #[cfg(unix)]
    limits::apply_on_exec(&mut command, options);
    let deadline = Instant::now() + options.timeout;
    let mut child = command.spawn().map_err(|e| {
        compile_error(
            label,
            format!("cannot start the compiler {}: {e}", program.display()),
        )
    })?;
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    // Feeding and draining on threads of their own: the worker reads all of its input before
    // it writes, and a full pipe must not stall the deadline below.
    let (status, output, message) = std::thread::scope(|scope| {
        scope.spawn(move || {
            if let Some(mut stdin) = stdin {
                // A worker that died early closes the pipe; its exit status says why.
                let _ = stdin.write_all(bytes);
            }
        });
        let output = scope.spawn(move || stdout.map(|s| read_at_most(s, MAX_ENTRY_BYTES)));
        let message = scope.spawn(move || stderr.map(read_message));
        let status = wait_until(&mut child, deadline);
        (status, output.join(), message.join())
    });
    let message = match message {
        Ok(Some(message)) => message,
        _ => String::new(),
    };
    let status = match status {
        Ok(Some(status)) => status,
        Ok(None) => {
            return Err(LoadError::CompileTimeout {
                plugin: label.to_owned(),
                budget: options.timeout,
            });
        }
        Err(err) => return Err(compile_error(label, format!("compiler process: {err}"))),
    };
    if !status.success() {
        return Err(compile_error(label, failure(options, status, &message)));
    }
    match output {
        Ok(Some(Ok(artifact))) if !artifact.is_empty() => Ok(artifact),
        Ok(Some(Ok(_))) => Err(compile_error(label, "the compiler produced nothing".into())),
        Ok(Some(Err(err))) => Err(compile_error(label, format!("compiler output: {err}"))),
        _ => Err(compile_error(label, "compiler output lost".into())),
    }
}

/// Compiler threads in a worker: one per core, at most [`WORKER_THREADS`].
fn worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(WORKER_THREADS))
}

/// What a failed worker's status and message say, for [`LoadError::Compile`].
fn failure(options: &CompileOptions, status: ExitStatus, message: &str) -> String {
    let message = message.trim();
    #[cfg(not(unix))]
    let _ = options;
    #[cfg(unix)]
    if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&status) {
        let text = format!(
            "the compiler process was killed by signal {signal} (it may use {} MiB of \
             memory and {} s of CPU time; an allocation beyond the memory budget aborts)",
            options.memory_limit >> 20,
            limits::cpu_seconds(options.timeout),
        );
        return if message.is_empty() {
            text
        } else {
            format!("{text}: {message}")
        };
    }
    match status.code() {
        Some(1) if !message.is_empty() => message.to_owned(),
        _ if message.is_empty() => format!("the compiler process failed ({status})"),
        _ => format!("the compiler process failed ({status}): {message}"),
    }
}

/// Waits for `child` until `deadline`; then kills it and returns `None`.
fn wait_until(
    child: &mut std::process::Child,
    deadline: Instant,
) -> std::io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(Some(status)),
            Ok(None) => {}
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(err);
            }
        }
        let now = Instant::now();
        if now >= deadline {
            // Killing a process that has just exited fails harmlessly; `wait` reaps it.
            let _ = child.kill();
            child.wait()?;
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// All of `reader`, refused beyond `max` bytes (dropping the pipe then stops the writer).
fn read_at_most(reader: impl Read, max: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::other(format!(
            "more than {} MiB of compiled code",
            max >> 20
        )));
    }
    Ok(bytes)
}

/// The first [`MAX_MESSAGE_BYTES`] of `reader`; the rest is read and dropped so that the
/// writer never blocks.
fn read_message(mut reader: impl Read) -> String {
    let mut head = Vec::new();
    let _ = (&mut reader)
        .take(MAX_MESSAGE_BYTES as u64)
        .read_to_end(&mut head);
    let _ = std::io::copy(&mut reader, &mut std::io::sink());
    String::from_utf8_lossy(&head).into_owned()
}

#[cfg(unix)]
mod limits {
    use std::os::unix::process::CommandExt as _;
    use std::time::Duration;

    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

    use super::CompileOptions;

    /// CPU seconds for a time budget: every compiler thread may be busy all the time.
    pub(super) fn cpu_seconds(timeout: Duration) -> u64 {
        let threads = super::worker_threads() as u64;
        timeout.as_secs().saturating_add(1).saturating_mul(threads)
    }

    /// `value`, but never above the hard limit this process already has for `resource`
    /// (raising it would fail without privileges).
    fn capped(resource: Resource, value: u64) -> u64 {
        getrlimit(resource)
            .maximum
            .map_or(value, |hard| hard.min(value))
    }

    fn both(value: u64) -> Rlimit {
        Rlimit {
            current: Some(value),
            maximum: Some(value),
        }
    }

    /// Makes the worker start with its limits (computed here, before `fork`, so the closure
    /// only makes system calls).
    pub(super) fn apply_on_exec(command: &mut std::process::Command, options: &CompileOptions) {
        let data = both(capped(Resource::Data, options.memory_limit));
        let cpu_seconds = cpu_seconds(options.timeout);
        // Soft limit: SIGXCPU; one second later the hard limit: SIGKILL.
        let cpu = Rlimit {
            current: Some(capped(Resource::Cpu, cpu_seconds)),
            maximum: Some(capped(Resource::Cpu, cpu_seconds.saturating_add(1))),
        };
        let core = both(0);
        let fsize = both(0);
        let set = move || -> std::io::Result<()> {
            setrlimit(Resource::Data, data)?;
            setrlimit(Resource::Cpu, cpu)?;
            setrlimit(Resource::Core, core)?;
            setrlimit(Resource::Fsize, fsize)?;
            Ok(())
        };
        #[allow(unsafe_code)]
        // SAFETY: the closure runs between `fork` and `exec`, where only async-signal-safe
        // operations are allowed: it makes four `setrlimit` system calls on values computed
        // beforehand, and allocates nothing (an `Errno` converts to `io::Error` without
        // allocating).
        unsafe {
            command.pre_exec(set);
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;

    use super::*;

    #[test]
    fn output_beyond_the_bound_is_refused() {
        assert_eq!(
            read_at_most(&[1u8; 10][..], 10).expect("fits"),
            vec![1u8; 10]
        );
        assert!(read_at_most(&[1u8; 11][..], 10).is_err());
    }

    #[test]
    fn messages_are_bounded() {
        let long = vec![b'x'; MAX_MESSAGE_BYTES * 3];
        assert_eq!(read_message(&long[..]).len(), MAX_MESSAGE_BYTES);
    }

    #[test]
    fn failures_say_what_happened() {
        let options = CompileOptions {
            timeout: Duration::from_secs(10),
            memory_limit: 64 << 20,
            isolation: Isolation::InProcess,
        };
        // Exit status 1: wasmtime's message alone.
        let exited = ExitStatus::from_raw(1 << 8);
        assert_eq!(failure(&options, exited, "bad section\n"), "bad section");
        // Killed: the signal and the budgets, then what it printed.
        let killed = ExitStatus::from_raw(6);
        let text = failure(&options, killed, "memory allocation of 8 bytes failed");
        assert!(text.contains("signal 6"), "{text}");
        assert!(text.contains("64 MiB"), "{text}");
        assert!(
            text.ends_with("memory allocation of 8 bytes failed"),
            "{text}"
        );
    }

    #[test]
    fn the_default_compiles_in_process_unless_main_offered_a_worker() {
        // Test binaries do not call `compile_worker_main`.
        assert_eq!(CompileOptions::default().isolation, Isolation::InProcess);
    }
}
