//! The control socket of `ssm-tether run`, which `ssm-tether status` and `ssm-tether reload`
//! talk to.
//!
//! **Where.** `--control PATH`, or by default `$XDG_RUNTIME_DIR/ssm-tether/STEM-HASH.sock`
//! (STEM: the policy file's name, HASH: of its canonical path, so two policies never share a
//! socket and `status` finds the right one from any directory), or, without
//! `$XDG_RUNTIME_DIR`, `.NAME.sock` next to the policy file.
//!
//! **Who.** A Unix socket with mode 0600, created inside a private staging directory and
//! renamed into place, so that nobody else can connect even for a moment; a peer whose user
//! is neither ours nor root is refused (`SO_PEERCRED`). One process serves a path: `run`
//! holds an exclusive lock on `PATH.lock` for its life, and a second `run` on the same path
//! fails with [`ControlError::InUse`] instead of taking the socket over. A socket file left by
//! a process that died is replaced.
//!
//! **Protocol.** One request per connection: the client writes one line of JSON,
//! `{"command":"status"}` or `{"command":"reload"}`, and reads one line back: a
//! [`Response`] with `ok`, and `status` ([`StatusReport`]), `reload` ([`ReloadReport`]) or
//! `error`. Requests are at most [`MAX_REQUEST`] bytes and must arrive within 5 s; at most
//! [`MAX_CLIENTS`] are served at once.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::board::{Board, StatusReport};

/// Longest request line, newline included.
pub const MAX_REQUEST: usize = 4 * 1024;
/// Longest response line a client reads.
pub const MAX_RESPONSE: usize = 16 << 20;
/// Connections served at once; more are closed at once.
pub const MAX_CLIENTS: usize = 8;
/// The protocol's version, in every response.
pub const PROTOCOL: u32 = 1;
/// Time a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a reload may take: every plugin of the policy is loaded (each compile is bounded at
/// 60 s, one after another).
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// Time to write a response to a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest Unix socket path (`sun_path` less its NUL on macOS and the BSDs).
const MAX_PATH_BYTES: usize = 103;

/// What went wrong with the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another `ssm-tether run` serves this control socket.
    #[error(
        "another ssm-tether run already serves the control socket {}; stop it, or give this \
         one another path with --control",
        path.display()
    )]
    InUse {
        /// The socket.
        path: PathBuf,
    },
    /// The path cannot hold a socket (too long, not a socket file).
    #[error("control socket {}: {reason}", path.display())]
    BadPath {
        /// The socket.
        path: PathBuf,
        /// Why not.
        reason: String,
    },
    /// The socket, its lock or its directory could not be set up.
    #[error("control socket {}: {source}", path.display())]
    Setup {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Nothing serves the socket: `run` is not running, or uses another path.
    #[error(
        "no ssm-tether run serves {} ({source}); is it running, with this policy file or \
         --control path?",
        path.display()
    )]
    NotRunning {
        /// The socket.
        path: PathBuf,
        /// The OS error of the connect.
        #[source]
        source: io::Error,
    },
    /// Connected, but the exchange failed (I/O error, timeout, an answer that is no
    /// response).
    #[error("control socket {}: {detail}", path.display())]
    Exchange {
        /// The socket.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// No path given and none found.
    #[error("{0}")]
    NotFound(String),
}

/// A request: one line of JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// Everything `ssm-tether status` shows.
    Status,
    /// Reload every tunnel's plugins, as SIGHUP does.
    Reload,
}

/// A response: one line of JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// [`PROTOCOL`].
    #[serde(default)]
    pub protocol: u32,
    /// Whether the request was carried out (a failed reload is `ok: false`).
    pub ok: bool,
    /// The answer to `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusReport>,
    /// The answer to `reload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadReport>,
    /// Why the request failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    fn error(message: impl Into<String>) -> Self {
        Self {
            protocol: PROTOCOL,
            ok: false,
            status: None,
            reload: None,
            error: Some(message.into()),
        }
    }
}

/// The outcome of a reload, as `run` logs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// Whether the new plugins replaced the running ones.
    pub reloaded: bool,
    /// Tunnels that got a new plugin set.
    pub tunnels: usize,
    /// The outcome in words: `plugins reloaded (N tunnel(s))`, or `reload failed; the running
    /// plugins stay: WHY`.
    pub message: String,
}

/// A reload asked for through the control socket; whoever owns the reloader answers.
#[derive(Debug)]
pub struct ReloadRequest {
    /// Where the outcome goes.
    pub answer: oneshot::Sender<ReloadReport>,
}

/// The default control socket of the policy file at `policy`: under `$XDG_RUNTIME_DIR`
/// when it is set, else next to the file.
pub fn default_path(policy: &Path) -> PathBuf {
    let canonical = std::fs::canonicalize(policy).unwrap_or_else(|_| policy.to_owned());
    match runtime_dir() {
        Some(dir) => dir.join(socket_name(&canonical)),
        None => beside(&canonical),
    }
}

/// Where a client looks for the control socket of `policy`: the default, then the place
/// next to the file (where a `run` without `$XDG_RUNTIME_DIR` put it).
pub fn candidates(policy: &Path) -> Vec<PathBuf> {
    let canonical = std::fs::canonicalize(policy).unwrap_or_else(|_| policy.to_owned());
    let mut paths = vec![default_path(policy)];
    let next_to = beside(&canonical);
    if !paths.contains(&next_to) {
        paths.push(next_to);
    }
    paths
}

/// The control socket when neither a path nor a policy file was given: the only one under
/// `$XDG_RUNTIME_DIR/ssm-tether/`.
///
/// # Errors
/// [`ControlError::NotFound`] when there is none, or more than one.
pub fn find_only() -> Result<PathBuf, ControlError> {
    let Some(dir) = runtime_dir() else {
        return Err(ControlError::NotFound(
            "$XDG_RUNTIME_DIR is not set: give the policy file or --control PATH".to_owned(),
        ));
    };
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "sock"))
                .take(64)
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(ControlError::NotFound(format!(
            "no control socket in {}: is ssm-tether run running? Give the policy file or \
             --control PATH",
            dir.display()
        ))),
        _ => Err(ControlError::NotFound(format!(
            "several control sockets in {} ({}): give the policy file or --control PATH",
            dir.display(),
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// `$XDG_RUNTIME_DIR/ssm-tether`, if the variable names an absolute path.
fn runtime_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("XDG_RUNTIME_DIR")?);
    dir.is_absolute().then(|| dir.join("ssm-tether"))
}

/// `STEM-HASH.sock`: readable, unique per policy file, and short enough for `sun_path`.
fn socket_name(canonical: &Path) -> String {
    use sha2::{Digest, Sha256};
    let stem: String = canonical
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(32)
        .collect();
    let digest = Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    let hash = hex::encode(&digest[..6]);
    if stem.is_empty() {
        format!("{hash}.sock")
    } else {
        format!("{stem}-{hash}.sock")
    }
}

/// `.NAME.sock` next to the policy file.
fn beside(canonical: &Path) -> PathBuf {
    let name = canonical
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "tunnels".to_owned());
    let parent = canonical.parent().unwrap_or(Path::new("."));
    parent.join(format!(".{name}.sock"))
}

/// A bound control socket, its lock held. Dropping it removes the socket file.
#[derive(Debug)]
pub struct ControlSocket {
    listener: tokio::net::UnixListener,
    path: PathBuf,
    /// Held (locked) for the life of the socket; the lock file itself stays, so that a
    /// process that opened it before we exit cannot end up sharing the path with a third.
    _lock: std::fs::File,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ControlSocket {
    /// Takes the lock of `path` and binds it, mode 0600 (creating a missing parent
    /// directory with mode 0700). Must be called within a tokio runtime.
    ///
    /// # Errors
    /// [`ControlError::InUse`] if another process holds it; [`ControlError::BadPath`] if the
    /// path is too long or holds something else; [`ControlError::Setup`] for OS errors.
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};

        let setup = |source| ControlError::Setup {
            path: path.to_owned(),
            source,
        };
        let bad = |reason: &str| ControlError::BadPath {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        if path.as_os_str().len() > MAX_PATH_BYTES {
            return Err(bad(
                "is longer than the 103 bytes a Unix socket path may have; choose a shorter \
                 one with --control",
            ));
        }
        let Some(name) = path.file_name() else {
            return Err(bad("names no file"));
        };
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&parent)
            .map_err(setup)?;
        check_private_dir(&parent).map_err(|reason| ControlError::BadPath {
            path: path.to_owned(),
            reason,
        })?;

        let mut lock_name = name.to_owned();
        lock_name.push(".lock");
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(parent.join(lock_name))
            .map_err(setup)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(ControlError::InUse {
                    path: path.to_owned(),
                });
            }
            Err(std::fs::TryLockError::Error(err)) => return Err(setup(err)),
        }

        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(bad("exists and is not a socket"));
            }
            // Held by a build without the lock, perhaps: never take over a live socket.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ControlError::InUse {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(setup)?;
        }
        let staging = tempfile::Builder::new()
            .prefix(".ssm-tether-")
            .tempdir_in(&parent)
            .map_err(setup)?;
        std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o700))
            .map_err(setup)?;
        let staged = staging.path().join("socket");
        let listener = std::os::unix::net::UnixListener::bind(&staged).map_err(setup)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600)).map_err(setup)?;
        std::fs::rename(&staged, path).map_err(setup)?;
        listener.set_nonblocking(true).map_err(setup)?;
        let listener = tokio::net::UnixListener::from_std(listener).map_err(setup)?;
        Ok(Self {
            listener,
            path: path.to_owned(),
            _lock: lock,
        })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers requests until the task is dropped: `status` from `board`, `reload` by
    /// asking through `reloads` and waiting for the outcome.
    pub async fn serve(self, board: Arc<Board>, reloads: mpsc::Sender<ReloadRequest>) {
        let permits = Arc::new(Semaphore::new(MAX_CLIENTS));
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "control socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if !peer_allowed(&stream) {
                tracing::warn!("control socket: a peer of another user was refused");
                continue;
            }
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                continue;
            };
            let (board, reloads) = (Arc::clone(&board), reloads.clone());
            tokio::spawn(async move {
                serve_one(stream, &board, &reloads).await;
                drop(permit);
            });
        }
    }
}

/// The parent of a control socket must be a real directory of ours that nobody else may
/// write to (else someone could swap the socket under a client).
fn check_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let me = rustix::process::geteuid().as_raw();
    // The sticky bit lets a shared directory such as /tmp through: nobody else can remove
    // or rename our socket there.
    let sticky = meta.mode() & 0o1000 != 0;
    if meta.uid() != me && meta.uid() != 0 {
        return Err(format!("{} belongs to another user", dir.display()));
    }
    if meta.mode() & 0o022 != 0 && !sticky {
        return Err(format!(
            "{} is writable by group or others; choose a private directory with --control",
            dir.display()
        ));
    }
    Ok(())
}

fn peer_allowed(stream: &tokio::net::UnixStream) -> bool {
    let me = rustix::process::geteuid().as_raw();
    match stream.peer_cred() {
        Ok(cred) => cred.uid() == me || cred.uid() == 0,
        Err(_) => false,
    }
}

/// Reads one request, answers it, closes.
async fn serve_one(
    stream: tokio::net::UnixStream,
    board: &Board,
    reloads: &mpsc::Sender<ReloadRequest>,
) {
    let (read, mut write) = stream.into_split();
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, read_line(read, MAX_REQUEST)).await {
        Err(_) => Response::error("no request within 5 s"),
        Ok(Err(why)) => Response::error(why),
        Ok(Ok(line)) => match serde_json::from_slice::<Request>(&line) {
            Err(err) => Response::error(format!(
                "not a request ({err}); expected {{\"command\":\"status\"}} or \
                 {{\"command\":\"reload\"}}"
            )),
            Ok(Request::Status) => Response {
                protocol: PROTOCOL,
                ok: true,
                status: Some(board.report()),
                reload: None,
                error: None,
            },
            Ok(Request::Reload) => reload(reloads).await,
        },
    };
    let mut line = serde_json::to_vec(&response).unwrap_or_default();
    line.push(b'\n');
    let written = tokio::time::timeout(WRITE_TIMEOUT, async {
        write.write_all(&line).await?;
        write.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        tracing::debug!("control socket: the client did not take its answer");
    }
}

async fn reload(reloads: &mpsc::Sender<ReloadRequest>) -> Response {
    let (answer, outcome) = oneshot::channel();
    if reloads.send(ReloadRequest { answer }).await.is_err() {
        return Response::error("reloading is not possible now (shutting down)");
    }
    match tokio::time::timeout(RELOAD_TIMEOUT, outcome).await {
        Ok(Ok(report)) => Response {
            protocol: PROTOCOL,
            ok: report.reloaded,
            status: None,
            reload: Some(report),
            error: None,
        },
        Ok(Err(_)) => Response::error("the reload was abandoned (shutting down)"),
        Err(_) => Response::error("the reload did not finish in time"),
    }
}

/// One line of at most `max` bytes (newline included), without the newline.
async fn read_line(read: impl tokio::io::AsyncRead + Unpin, max: usize) -> Result<Vec<u8>, String> {
    let limit = u64::try_from(max).unwrap_or(u64::MAX);
    let mut reader = tokio::io::BufReader::new(read.take(limit));
    let mut line = Vec::new();
    reader
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("read failed: {e}"))?;
    if line.last() == Some(&b'\n') {
        line.pop();
        return Ok(line);
    }
    if line.len() >= max {
        return Err(format!("line longer than {max} bytes"));
    }
    // The peer ended its side after a last line without a newline: take it.
    if line.is_empty() {
        Err("no request".to_owned())
    } else {
        Ok(line)
    }
}

/// Sends `request` to the control socket at `path` and returns the response, waiting at
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
    let failed = |detail: String| ControlError::Exchange {
        path: path.to_owned(),
        detail,
    };
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|source| ControlError::NotRunning {
            path: path.to_owned(),
            source,
        })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(&request).map_err(|e| failed(e.to_string()))?;
    line.push(b'\n');
    let exchanged = tokio::time::timeout(timeout, async {
        write
            .write_all(&line)
            .await
            .map_err(|e| format!("write failed: {e}"))?;
        read_line(read, MAX_RESPONSE).await
    })
    .await;
    let answer = match exchanged {
        Ok(Ok(answer)) => answer,
        Ok(Err(why)) => return Err(failed(why)),
        Err(_) => return Err(failed(format!("no answer within {timeout:?}"))),
    };
    serde_json::from_slice(&answer).map_err(|e| failed(format!("not a response: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_small_json_object() {
        assert_eq!(
            serde_json::to_string(&Request::Status).expect("json"),
            r#"{"command":"status"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"command":"reload"}"#).expect("parses"),
            Request::Reload
        );
        assert!(serde_json::from_str::<Request>(r#"{"command":"rm -rf"}"#).is_err());
    }

    #[test]
    fn default_names_differ_per_policy_and_fit_a_socket_path() {
        let a = socket_name(Path::new("/etc/ssm-tether/tunnels.toml"));
        let b = socket_name(Path::new("/home/me/tunnels.toml"));
        assert_ne!(a, b);
        assert!(a.starts_with("tunnels-") && a.ends_with(".sock"), "{a}");
        let long = socket_name(Path::new(&format!("/x/{}.toml", "y".repeat(500))));
        assert!(long.len() <= 32 + 1 + 12 + 5, "{long}");
        assert_eq!(
            beside(Path::new("/etc/ssm-tether/tunnels.toml")),
            Path::new("/etc/ssm-tether/.tunnels.toml.sock")
        );
    }

    #[tokio::test]
    async fn a_line_longer_than_the_bound_is_refused() {
        let long = vec![b'x'; MAX_REQUEST + 10];
        let result = read_line(&long[..], MAX_REQUEST).await;
        assert!(result.is_err(), "{result:?}");
        let ok = read_line(&b"{\"command\":\"status\"}\nrest"[..], MAX_REQUEST).await;
        assert_eq!(ok.expect("a line"), b"{\"command\":\"status\"}");
    }

    #[tokio::test]
    async fn a_second_bind_of_the_same_path_fails_and_a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.sock");
        let first = ControlSocket::bind(&path).expect("binds");
        let second = ControlSocket::bind(&path);
        assert!(
            matches!(second, Err(ControlError::InUse { .. })),
            "{second:?}"
        );
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .expect("exists")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        drop(first);
        assert!(!path.exists(), "removed when dropped");
        // A socket file whose process died (no lock, nobody listening) is replaced.
        let stale = std::os::unix::net::UnixListener::bind(&path).expect("stale");
        drop(stale);
        let again = ControlSocket::bind(&path).expect("replaces the stale socket");
        drop(again);
    }
}
