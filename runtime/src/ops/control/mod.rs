//! The control endpoint of `ssm-tether run`, which `ssm-tether status` and `ssm-tether
//! reload` talk to: a Unix socket on Unix, a named pipe on Windows, with one protocol.
//!
//! **Where.** `--control PATH`, or by default, on Unix,
//! `$XDG_RUNTIME_DIR/ssm-tether/STEM-HASH.sock` (STEM: the policy file's name, HASH: of its
//! canonical path, so two policies never share a socket and `status` finds the right one from
//! any directory), or, without `$XDG_RUNTIME_DIR`, `.NAME.sock` next to the policy file; on
//! Windows the pipe `\\.\pipe\ssm-tether-STEM-HASH` ([`default_path`], [`locate`]).
//!
//! **Who.** Unix (`socket`): a Unix socket with mode 0600, created inside a private
//! staging directory and renamed into place, so that nobody else can connect even for a
//! moment; a peer whose user is neither ours nor root is refused (`SO_PEERCRED`). One process
//! serves a path: `run` holds an exclusive lock on `PATH.lock` for its life, and a second
//! `run` on the same path fails with [`ControlError::InUse`] instead of taking the socket
//! over. A socket file left by a process that died is replaced. Windows (`pipe`): only the
//! user who started `run`, LocalSystem and the Administrators may write to the pipe (its
//! default security descriptor), and the first instance is created exclusively, so a second
//! `run` — or anyone holding the name — fails with [`ControlError::InUse`].
//!
//! **Protocol** (`protocol`). One request per connection: the client writes one line of
//! JSON, `{"command":"status"}` or `{"command":"reload"}`, and reads one line back: a
//! [`Response`] with `ok`, and `status` ([`StatusReport`](super::StatusReport)), `reload`
//! ([`ReloadReport`]) or `error`. Requests are at most [`MAX_REQUEST`] bytes and must arrive
//! within 5 s; at most [`MAX_CLIENTS`] are served at once.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod place;
mod protocol;

#[cfg(windows)]
mod pipe;
#[cfg(unix)]
mod socket;

#[cfg(windows)]
pub use pipe::ControlSocket;
pub use place::{candidates, default_path, find_only, locate};
pub use protocol::{
    MAX_CLIENTS, MAX_REQUEST, MAX_RESPONSE, PROTOCOL, RELOAD_TIMEOUT, ReloadReport, ReloadRequest,
    Request, Response,
};
#[cfg(unix)]
pub use socket::ControlSocket;

/// What the control endpoint is called in messages.
#[cfg(unix)]
const ENDPOINT: &str = "control socket";
/// What the control endpoint is called in messages.
#[cfg(windows)]
const ENDPOINT: &str = "control pipe";

/// What went wrong with the control endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another `ssm-tether run` serves this control endpoint.
    #[error(
        "another ssm-tether run already serves the {} {}; stop it, or give this one another \
         path with --control",
        ENDPOINT,
        path.display()
    )]
    InUse {
        /// The socket or pipe.
        path: PathBuf,
    },
    /// The path cannot hold the endpoint (too long, not a socket file).
    #[error("{} {}: {reason}", ENDPOINT, path.display())]
    BadPath {
        /// The socket or pipe.
        path: PathBuf,
        /// Why not.
        reason: String,
    },
    /// The socket, its lock or its directory, or the pipe, could not be set up.
    #[error("{} {}: {source}", ENDPOINT, path.display())]
    Setup {
        /// The socket or pipe.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Nothing serves the endpoint: `run` is not running, or uses another path.
    #[error(
        "no ssm-tether run serves {} ({source}); is it running, with this policy file or \
         --control path?",
        path.display()
    )]
    NotRunning {
        /// The socket or pipe.
        path: PathBuf,
        /// The OS error of the connect.
        #[source]
        source: io::Error,
    },
    /// Connected, but the exchange failed (I/O error, timeout, an answer that is no
    /// response).
    #[error("{} {}: {detail}", ENDPOINT, path.display())]
    Exchange {
        /// The socket or pipe.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// No path given and none found.
    #[error("{0}")]
    NotFound(String),
}

/// Sends `request` to the control endpoint at `path` and returns the response, waiting at
/// most `timeout` for it.
///
/// # Errors
/// [`ControlError::NotRunning`] when nothing serves `path`; [`ControlError::Exchange`] when
/// the answer does not come or is no response.
pub async fn exchange(
    path: &Path,
    request: Request,
    timeout: Duration,
) -> Result<Response, ControlError> {
    #[cfg(unix)]
    let connected = socket::connect(path).await;
    #[cfg(windows)]
    let connected = pipe::connect(path).await;
    let mut stream = connected.map_err(|source| ControlError::NotRunning {
        path: path.to_owned(),
        source,
    })?;
    protocol::ask(&mut stream, request, timeout)
        .await
        .map_err(|detail| ControlError::Exchange {
            path: path.to_owned(),
            detail,
        })
}
