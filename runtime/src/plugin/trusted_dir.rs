//! The file-system half of the compiled-plugin cache's trust: a directory opened once without
//! following a symbolic link and checked (owner, mode), and files opened and replaced
//! relative to that open directory, never by path again.
//!
//! Working relative to the directory's descriptor (`openat`, `renameat`, `linkat`) means
//! that swapping a directory on the path for a symbolic link after the check redirects
//! nothing: reads and writes stay in the directory that was checked. That is why this uses
//! rustix rather than std and `libc::O_NOFOLLOW`: std has no `*at` calls, and libc's would
//! each need an `unsafe` block.
//!
//! On other platforms than Unix there is no owner to check and no `O_NOFOLLOW`, so nothing
//! is trusted: every operation fails and the cache stays unused.

use std::path::{Path, PathBuf};

/// Why a directory or file of the cache is not trusted.
#[derive(Debug, thiserror::Error)]
#[cfg_attr(not(unix), allow(dead_code))] // nothing is checked, so nothing is refused
pub(crate) enum Distrust {
    /// The path is a symbolic link.
    #[error("it is a symbolic link")]
    Symlink,
    /// The path is not the kind of file expected.
    #[error("it is not a {0}")]
    WrongType(&'static str),
    /// Another user owns it.
    #[error("it is owned by uid {owner}, not by uid {euid} that runs ssm-tether")]
    Owner {
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        euid: u32,
    },
    /// Its permission bits let others in.
    #[error("its mode is {mode:03o}; {rule}")]
    Mode {
        /// The permission bits.
        mode: u32,
        /// What they must not allow.
        rule: &'static str,
    },
    /// It is larger than anything this cache writes.
    #[error("it has {size} bytes, more than the {max} an entry may have")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The bound.
        max: u64,
    },
    /// The operating system refused an operation (not a sign of tampering).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Which permission bits a file may not have.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Privacy {
    /// Group and others may read, not write (a compiled component: code, not a secret).
    NotWritableByOthers,
    /// Group and others may do nothing (the key).
    OwnerOnly,
}

#[cfg_attr(not(unix), allow(dead_code))]
impl Privacy {
    fn forbidden(self) -> u32 {
        match self {
            Self::NotWritableByOthers => 0o022,
            Self::OwnerOnly => 0o077,
        }
    }

    fn rule(self) -> &'static str {
        match self {
            Self::NotWritableByOthers => "group and others must not have write permission",
            Self::OwnerOnly => "group and others must have no permission at all (0600)",
        }
    }
}

/// A directory that exists, is not a symbolic link, belongs to this process's effective uid
/// and is writable by nobody else, held open.
#[derive(Debug)]
pub(crate) struct TrustedDir {
    path: PathBuf,
    #[cfg(unix)]
    fd: std::os::fd::OwnedFd,
}

impl TrustedDir {
    /// Where it is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// A regular file of this user in a [`TrustedDir`], as [`TrustedDir::files`] lists it.
#[derive(Clone, Debug)]
pub(crate) struct DirFile {
    /// Its name in the directory.
    pub(crate) name: String,
    /// Its size, bytes.
    pub(crate) size: u64,
    /// Its modification time: for a cache entry, its last use.
    pub(crate) modified: std::time::SystemTime,
}

#[cfg(unix)]
mod imp {
    use std::fs::File;
    use std::io::{Read as _, Write as _};
    use std::path::Path;

    use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
    use rustix::io::Errno;

    use super::{DirFile, Distrust, Privacy, TrustedDir};

    impl TrustedDir {
        /// Opens `path`, creating it (and missing parents) private to the user first if it
        /// does not exist, and checks it.
        pub(crate) fn open(path: &Path) -> Result<Self, Distrust> {
            match std::fs::symlink_metadata(path) {
                Ok(meta) if meta.file_type().is_symlink() => return Err(Distrust::Symlink),
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => create_private(path)?,
                Err(err) => return Err(err.into()),
            }
            // The check above only gives a clear message; this open is what guarantees that
            // the directory used is not reached through a link as its last component.
            let fd = rustix::fs::open(
                path,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| match e {
                Errno::LOOP => Distrust::Symlink,
                Errno::NOTDIR => Distrust::WrongType("directory"),
                e => Distrust::Io(e.into()),
            })?;
            let stat = rustix::fs::fstat(&fd).map_err(std::io::Error::from)?;
            check(
                &stat,
                FileType::Directory,
                "directory",
                Privacy::NotWritableByOthers,
            )?;
            Ok(Self {
                path: path.to_owned(),
                fd,
            })
        }

        /// The contents of `name`: `None` if it does not exist; refused unless it is a
        /// regular file (not a link) of this user with `privacy`, of at most `max` bytes.
        pub(crate) fn read(
            &self,
            name: &str,
            privacy: Privacy,
            max: u64,
        ) -> Result<Option<Vec<u8>>, Distrust> {
            // NONBLOCK: opening a FIFO planted under this name must not hang the load; the
            // type check below then refuses it.
            let flags = OFlags::RDONLY
                | OFlags::NOFOLLOW
                | OFlags::CLOEXEC
                | OFlags::NONBLOCK
                | OFlags::NOCTTY;
            let fd = match rustix::fs::openat(&self.fd, name, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => return Ok(None),
                Err(Errno::LOOP) => return Err(Distrust::Symlink),
                Err(e) => return Err(Distrust::Io(e.into())),
            };
            let stat = rustix::fs::fstat(&fd).map_err(std::io::Error::from)?;
            check(&stat, FileType::RegularFile, "regular file", privacy)?;
            let size = u64::try_from(stat.st_size).unwrap_or(u64::MAX);
            if size > max {
                return Err(Distrust::TooLarge { size, max });
            }
            let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            // `take`: the file may grow between fstat and read.
            File::from(fd).take(max + 1).read_to_end(&mut bytes)?;
            if bytes.len() as u64 > max {
                return Err(Distrust::TooLarge {
                    size: bytes.len() as u64,
                    max,
                });
            }
            Ok(Some(bytes))
        }

        /// Replaces `name` with the concatenation of `parts`, atomically: a private temporary
        /// file in this directory, synced, then renamed over `name` (which may be a link or
        /// a refused file: the rename replaces the entry, it does not follow it).
        pub(crate) fn replace(&self, name: &str, parts: &[&[u8]]) -> std::io::Result<()> {
            let tmp = self.write_temp(name, parts)?;
            let renamed = rustix::fs::renameat(&self.fd, &tmp, &self.fd, name);
            if renamed.is_err() {
                let _ = rustix::fs::unlinkat(&self.fd, &tmp, AtFlags::empty());
            }
            renamed?;
            self.sync();
            Ok(())
        }

        /// Creates `name` holding `bytes` unless it exists: `Ok(false)` if it did. Readers
        /// never see it partly written (hard link of a complete temporary file, which fails
        /// instead of replacing).
        pub(crate) fn create_new(&self, name: &str, bytes: &[u8]) -> std::io::Result<bool> {
            let tmp = self.write_temp(name, &[bytes])?;
            let linked = rustix::fs::linkat(&self.fd, &tmp, &self.fd, name, AtFlags::empty());
            let _ = rustix::fs::unlinkat(&self.fd, &tmp, AtFlags::empty());
            match linked {
                Ok(()) => {
                    self.sync();
                    Ok(true)
                }
                Err(Errno::EXIST) => Ok(false),
                Err(e) => Err(e.into()),
            }
        }

        /// Sets the modification (and access) time of `name` to now, without following a
        /// link: how the cache records that an entry was used, for least-recently-used
        /// eviction (atime alone is unreliable: `noatime`, `relatime`).
        pub(crate) fn touch(&self, name: &str) -> std::io::Result<()> {
            let now = rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_NOW,
            };
            let times = rustix::fs::Timestamps {
                last_access: now,
                last_modification: now,
            };
            rustix::fs::utimensat(&self.fd, name, &times, AtFlags::SYMLINK_NOFOLLOW)?;
            Ok(())
        }

        /// Every regular file of this user in the directory whose name `wanted` accepts, at
        /// most `max` of them (a directory stuffed with garbage cannot make a listing
        /// unbounded). Links, other users' files and anything else are left out; a file
        /// that vanishes while listed (another process evicted it) is skipped.
        pub(crate) fn files(
            &self,
            wanted: impl Fn(&str) -> bool,
            max: usize,
        ) -> std::io::Result<Vec<DirFile>> {
            let euid = rustix::process::geteuid().as_raw();
            let mut files = Vec::new();
            for entry in rustix::fs::Dir::read_from(&self.fd)? {
                let entry = entry?;
                let Ok(name) = entry.file_name().to_str() else {
                    continue;
                };
                if !wanted(name) {
                    continue;
                }
                let stat = match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(stat) => stat,
                    Err(Errno::NOENT) => continue,
                    Err(e) => return Err(e.into()),
                };
                if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile
                    || stat.st_uid != euid
                {
                    continue;
                }
                let modified = std::time::UNIX_EPOCH
                    + std::time::Duration::new(
                        u64::try_from(stat.st_mtime).unwrap_or(0),
                        u32::try_from(stat.st_mtime_nsec).unwrap_or(0),
                    );
                files.push(DirFile {
                    name: name.to_owned(),
                    size: u64::try_from(stat.st_size).unwrap_or(0),
                    modified,
                });
                if files.len() >= max {
                    break;
                }
            }
            Ok(files)
        }

        /// Removes `name` (never a directory); `Ok(false)` if it was already gone.
        pub(crate) fn remove(&self, name: &str) -> std::io::Result<bool> {
            match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
                Ok(()) => Ok(true),
                Err(Errno::NOENT) => Ok(false),
                Err(e) => Err(e.into()),
            }
        }

        /// A new file, mode 0600, holding `parts`, synced; its name.
        fn write_temp(&self, name: &str, parts: &[&[u8]]) -> std::io::Result<String> {
            let tmp = format!(".{name}.{:016x}.tmp", rand::random::<u64>());
            let fd = rustix::fs::openat(
                &self.fd,
                &tmp,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::RUSR | Mode::WUSR,
            )?;
            let mut file = File::from(fd);
            let written = parts
                .iter()
                .try_for_each(|part| file.write_all(part))
                .and_then(|()| file.sync_all());
            if let Err(err) = written {
                drop(file);
                let _ = rustix::fs::unlinkat(&self.fd, &tmp, AtFlags::empty());
                return Err(err);
            }
            Ok(tmp)
        }

        /// Makes a rename or link durable; failing only costs a recompile after a crash.
        fn sync(&self) {
            if let Err(err) = rustix::fs::fsync(&self.fd) {
                tracing::debug!(path = %self.path.display(), error = %err, "plugin cache directory not synced");
            }
        }
    }

    /// Creates `path` with mode 0700 (and missing parents, also 0700). Another process
    /// creating it at the same time is fine: the open that follows checks whatever exists.
    fn create_private(path: &Path) -> std::io::Result<()> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(path)
    }

    fn check(
        stat: &Stat,
        expected: FileType,
        kind: &'static str,
        privacy: Privacy,
    ) -> Result<(), Distrust> {
        if FileType::from_raw_mode(stat.st_mode) != expected {
            return Err(Distrust::WrongType(kind));
        }
        let euid = rustix::process::geteuid().as_raw();
        if stat.st_uid != euid {
            return Err(Distrust::Owner {
                owner: stat.st_uid,
                euid,
            });
        }
        let mode = Mode::from_raw_mode(stat.st_mode).bits();
        #[allow(clippy::useless_conversion)] // `mode_t` is u16 on some Unixes
        let mode = u32::from(mode) & 0o7777;
        if mode & privacy.forbidden() != 0 {
            return Err(Distrust::Mode {
                mode,
                rule: privacy.rule(),
            });
        }
        Ok(())
    }
}

#[cfg(not(unix))]
mod imp {
    use std::path::Path;

    use super::{DirFile, Distrust, Privacy, TrustedDir};

    fn unsupported() -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "the compiled-plugin cache needs Unix file ownership and O_NOFOLLOW",
        )
    }

    impl TrustedDir {
        /// Never: nothing is trusted on this platform.
        pub(crate) fn open(_path: &Path) -> Result<Self, Distrust> {
            Err(Distrust::Io(unsupported()))
        }

        /// Never called: no `TrustedDir` exists on this platform.
        pub(crate) fn read(
            &self,
            _name: &str,
            _privacy: Privacy,
            _max: u64,
        ) -> Result<Option<Vec<u8>>, Distrust> {
            Err(Distrust::Io(unsupported()))
        }

        /// Never called: no `TrustedDir` exists on this platform.
        pub(crate) fn replace(&self, _name: &str, _parts: &[&[u8]]) -> std::io::Result<()> {
            Err(unsupported())
        }

        /// Never called: no `TrustedDir` exists on this platform.
        pub(crate) fn create_new(&self, _name: &str, _bytes: &[u8]) -> std::io::Result<bool> {
            Err(unsupported())
        }

        /// Never called: no `TrustedDir` exists on this platform.
        pub(crate) fn touch(&self, _name: &str) -> std::io::Result<()> {
            Err(unsupported())
        }

        /// Never called: no `TrustedDir` exists on this platform.
        pub(crate) fn files(
            &self,
            _wanted: impl Fn(&str) -> bool,
            _max: usize,
        ) -> std::io::Result<Vec<DirFile>> {
            Err(unsupported())
        }

        /// Never called: no `TrustedDir` exists on this platform.
        pub(crate) fn remove(&self, _name: &str) -> std::io::Result<bool> {
            Err(unsupported())
        }
    }
}
