//! The control endpoint on Windows: a named pipe, `\\.\pipe\ssm-tether-STEM-HASH` by
//! default.
//!
//! **Who.** The pipe gets the default security descriptor, whose access list gives full
//! control to the user who created it (the `run`), LocalSystem and the Administrators, and
//! only read access to everyone else; a client opens the pipe for reading *and* writing, so
//! that nobody else can send a request. Remote clients are refused. The client connects with
//! the default quality of service (`SECURITY_IDENTIFICATION`), so the server cannot act as its
//! client.
//!
//! **One `run` per name.** The first instance is created with
//! `FILE_FLAG_FIRST_PIPE_INSTANCE`: if any process, of any user, already holds the name, `run`
//! stops with [`ControlError::InUse`] rather than share it, so no one can squat the name and
//! receive the requests. The next instance is always created before the connected one is
//! handed over, so the name never lapses while `run` lives; when the process ends, the name
//! is gone with it (no stale file to replace).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::windows::named_pipe::{
    ClientOptions, NamedPipeClient, NamedPipeServer, ServerOptions,
};
use tokio::sync::mpsc;

use super::ControlError;
use super::place::PIPE_PREFIX;
use super::protocol::{ReloadRequest, Service};
use crate::ops::board::Board;

/// Longest pipe name Windows accepts, `\\.\pipe\` included.
const MAX_NAME_CHARS: usize = 256;
/// `ERROR_ACCESS_DENIED`: what creating a first instance of a name that exists fails with.
const ERROR_ACCESS_DENIED: i32 = 5;
/// `ERROR_PIPE_BUSY`: every instance is connected; another comes within moments.
const ERROR_PIPE_BUSY: i32 = 231;
/// Time a client keeps trying a pipe whose instances are all busy.
const BUSY_WAIT: Duration = Duration::from_secs(2);

/// A named pipe serving the control protocol, its name held for the life of the value.
#[derive(Debug)]
pub struct ControlSocket {
    /// The instance that waits for the next client.
    server: NamedPipeServer,
    path: PathBuf,
}

impl ControlSocket {
    /// Creates the first instance of the pipe `path` (`\\.\pipe\` is prepended to a bare
    /// name). Must be called within a tokio runtime.
    ///
    /// # Errors
    /// [`ControlError::InUse`] if the name exists (another `run`, or anyone else);
    /// [`ControlError::BadPath`] if the name is too long; [`ControlError::Setup`] for other
    /// OS errors.
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        let name = pipe_name(path);
        if name.as_os_str().len() > MAX_NAME_CHARS {
            return Err(ControlError::BadPath {
                path: path.to_owned(),
                reason: "is longer than the 256 characters a pipe name may have; choose a \
                         shorter one with --control"
                    .to_owned(),
            });
        }
        let server = ServerOptions::new()
            .first_pipe_instance(true)
            .reject_remote_clients(true)
            .create(&name)
            .map_err(|source| {
                if source.raw_os_error() == Some(ERROR_ACCESS_DENIED) {
                    ControlError::InUse { path: name.clone() }
                } else {
                    ControlError::Setup {
                        path: name.clone(),
                        source,
                    }
                }
            })?;
        Ok(Self { server, path: name })
    }

    /// Its name.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers requests until the task is dropped: `status` from `board`, `reload` by
    /// asking through `reloads` and waiting for the outcome.
    pub async fn serve(mut self, board: Arc<Board>, reloads: mpsc::Sender<ReloadRequest>) {
        let service = Service::new(board, reloads);
        loop {
            let connected = self.server.connect().await;
            // The next instance exists before this one is let go: the name never lapses.
            let next = match self.next_instance() {
                Ok(next) => next,
                Err(err) => {
                    tracing::warn!(error = %err, "control pipe: cannot create an instance");
                    if connected.is_ok() {
                        service.answer_here(&mut self.server).await;
                    }
                    let _ = self.server.disconnect();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let client = std::mem::replace(&mut self.server, next);
            match connected {
                Ok(()) => service.spawn(client),
                Err(err) => {
                    tracing::warn!(error = %err, "control pipe: connect failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn next_instance(&self) -> std::io::Result<NamedPipeServer> {
        ServerOptions::new()
            .reject_remote_clients(true)
            .create(&self.path)
    }
}

/// Opens the pipe `path` for reading and writing, waiting up to [`BUSY_WAIT`] while every
/// instance is busy.
pub(super) async fn connect(path: &Path) -> std::io::Result<NamedPipeClient> {
    let name = pipe_name(path);
    let deadline = tokio::time::Instant::now() + BUSY_WAIT;
    loop {
        match ClientOptions::new().open(&name) {
            Err(err)
                if err.raw_os_error() == Some(ERROR_PIPE_BUSY)
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            opened => return opened,
        }
    }
}

/// `path` as a pipe name: as it is under `\\.\pipe\`, else a name within it.
fn pipe_name(path: &Path) -> PathBuf {
    let text = path.as_os_str().to_string_lossy();
    let under_pipe = text
        .get(..PIPE_PREFIX.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(PIPE_PREFIX));
    if under_pipe {
        path.to_owned()
    } else {
        PathBuf::from(format!("{PIPE_PREFIX}{text}"))
    }
}
