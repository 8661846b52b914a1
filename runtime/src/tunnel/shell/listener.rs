//! A tunnel's local end: where its connections come from. A TCP listener, a Unix socket
//! listener created with mode 0600, or the process's stdin/stdout as one stream.

use std::io;
use std::net::SocketAddr;
#[cfg(unix)]
use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::policy::LocalAddress;

/// One accepted local connection, split for its reader and writer tasks.
pub(crate) struct LocalStream {
    pub(crate) read: Box<dyn AsyncRead + Send + Unpin>,
    pub(crate) write: Box<dyn AsyncWrite + Send + Unpin>,
}

impl LocalStream {
    fn tcp(socket: TcpStream) -> Self {
        // Latency over batching: interactive protocols (SSH, psql) need small writes now.
        let _ = socket.set_nodelay(true);
        let (read, write) = socket.into_split();
        Self {
            read: Box::new(read),
            write: Box::new(write),
        }
    }
}

/// A bound local end.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(UnixEnd),
}

/// A Unix socket listener and the path it owns (removed when dropped).
#[cfg(unix)]
#[derive(Debug)]
pub(crate) struct UnixEnd {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

#[cfg(unix)]
impl Drop for UnixEnd {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Listener {
    /// Binds `local`; returns the listener and the address it got (a TCP port 0 resolved).
    pub(crate) async fn bind(local: &LocalAddress) -> io::Result<(Self, LocalAddress)> {
        match local {
            LocalAddress::Tcp(addr) => {
                let listener = TcpListener::bind(addr).await?;
                let bound = listener.local_addr()?;
                Ok((Self::Tcp(listener), LocalAddress::Tcp(bound)))
            }
            #[cfg(unix)]
            LocalAddress::Unix(path) => {
                let listener = bind_unix(path)?;
                Ok((
                    Self::Unix(UnixEnd {
                        listener,
                        path: path.clone(),
                    }),
                    LocalAddress::Unix(path.clone()),
                ))
            }
            #[cfg(not(unix))]
            LocalAddress::Unix(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "Unix socket listeners need a Unix system",
            )),
            LocalAddress::Stdio => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "stdin/stdout is a stream, not a listener",
            )),
        }
    }

    /// The next connection and a description of its peer.
    pub(crate) async fn accept(&self) -> io::Result<(LocalStream, String)> {
        match self {
            Self::Tcp(listener) => {
                let (socket, peer): (TcpStream, SocketAddr) = listener.accept().await?;
                Ok((LocalStream::tcp(socket), peer.to_string()))
            }
            #[cfg(unix)]
            Self::Unix(end) => {
                let (socket, _) = end.listener.accept().await?;
                let (read, write) = socket.into_split();
                Ok((
                    LocalStream {
                        read: Box::new(read),
                        write: Box::new(write),
                    },
                    "unix".to_owned(),
                ))
            }
        }
    }
}

/// Binds a Unix socket at `path`, mode 0600, without a moment in which anyone else could
/// connect: the socket is created inside a fresh private (0700) directory next to `path`,
/// restricted, then renamed into place. A stale socket file nobody listens on is replaced;
/// a live one, or any other kind of file, is an error.
#[cfg(unix)]
fn bind_unix(path: &Path) -> io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("another process listens on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let staging = tempfile::Builder::new()
        .prefix(".ssm-tether-")
        .tempdir_in(parent)?;
    std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o700))?;
    let staged = staging.path().join("socket");
    let listener = std::os::unix::net::UnixListener::bind(&staged)?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&staged, path)?;
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}
