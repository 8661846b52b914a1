//! The control endpoint on Unix: a socket of mode 0600 in a private directory, its peers
//! checked by user id, one `run` per path through a lock file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::ControlError;
use super::protocol::{ReloadRequest, Service};
use crate::ops::board::Board;

/// Longest Unix socket path (`sun_path` less its NUL on macOS and the BSDs).
const MAX_PATH_BYTES: usize = 103;

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
        let service = Service::new(board, reloads);
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
            service.spawn(stream);
        }
    }
}

/// Connects to the control socket at `path`.
pub(super) async fn connect(path: &Path) -> std::io::Result<tokio::net::UnixStream> {
    tokio::net::UnixStream::connect(path).await
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

#[cfg(test)]
mod tests {
    use super::*;

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
