//! Reading the files that decide what ssm-tether does — the policy file and plugin components —
//! without trusting what sits at their path.
//!
//! * Only regular files are read, and they are opened without blocking, so a FIFO, a device
//!   such as `/dev/zero` or a directory is an error instead of a hang or an endless read.
//! * At most a given number of bytes is read; a larger file is an error naming the limit.
//! * A file that users other than its owner may write is reported: whoever can write it
//!   decides which tunnels run or which code the plugin host executes.

use std::io::Read;
use std::path::Path;

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Opening or reading failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The path is not a regular file (a directory, FIFO, socket or device).
    #[error("not a regular file")]
    NotAFile,
    /// The file is larger than the limit.
    #[error("larger than {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
}

/// The contents of the regular file at `path`, at most `limit` bytes.
///
/// # Errors
/// [`ReadError`]: the file cannot be opened or read, is not a regular file, or is larger than
/// `limit`.
pub fn read(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        // Opening a FIFO for reading would otherwise wait for a writer.
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(ReadError::NotAFile);
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge { limit });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // The file may grow between the check and the read.
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge { limit });
    }
    Ok(bytes)
}

/// Whether the file at `path` may be written by users other than its owner (group or other
/// write permission). `false` when it cannot be inspected (it is then reported elsewhere).
pub fn writable_by_others(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o022 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

/// Logs a warning when `path` may be written by users other than its owner; `what` says
/// what the file is ("policy file", "plugin").
pub fn warn_if_writable_by_others(path: &Path, what: &str) {
    if writable_by_others(path) {
        tracing::warn!(
            path = %path.display(),
            "{what} is writable by group or others: whoever can write it decides what \
             ssm-tether runs (chmod go-w)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_small_regular_file_and_refuses_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("policy.toml");
        std::fs::write(&file, "x = 1\n").expect("write");
        assert_eq!(read(&file, 1024).expect("read"), b"x = 1\n");
        assert!(matches!(
            read(&file, 3),
            Err(ReadError::TooLarge { limit: 3 })
        ));
        assert!(matches!(read(dir.path(), 1024), Err(ReadError::NotAFile)));
        assert!(matches!(
            read(Path::new("/dev/zero"), 1024),
            Err(ReadError::NotAFile)
        ));
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(status.success());
        assert!(matches!(read(&fifo, 1024), Err(ReadError::NotAFile)));
    }

    #[cfg(unix)]
    #[test]
    fn group_or_other_write_permission_is_noticed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("p.toml");
        std::fs::write(&file, "").expect("write");
        for (mode, expected) in [(0o600, false), (0o644, false), (0o664, true), (0o646, true)] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).expect("chmod");
            assert_eq!(writable_by_others(&file), expected, "{mode:o}");
        }
    }
}
