//! Where the control endpoint of a policy file is: its default name, and how a client finds
//! it.

use std::path::{Path, PathBuf};

use super::ControlError;

/// The default control endpoint of the policy file at `policy`. Unix: a socket under
/// `$XDG_RUNTIME_DIR/ssm-tether/` when the variable is set, else next to the file. Windows:
/// the named pipe `\\.\pipe\ssm-tether-STEM-HASH`.
pub fn default_path(policy: &Path) -> PathBuf {
    let canonical = std::fs::canonicalize(policy).unwrap_or_else(|_| policy.to_owned());
    #[cfg(unix)]
    {
        match runtime_dir() {
            Some(dir) => dir.join(socket_name(&canonical)),
            None => beside(&canonical),
        }
    }
    #[cfg(windows)]
    {
        PathBuf::from(format!("{PIPE_PREFIX}{}", stem_and_hash(&canonical)))
    }
}

/// Where a client looks for the control endpoint of `policy`: the default, then (Unix) the
/// place next to the file (where a `run` without `$XDG_RUNTIME_DIR` put it).
pub fn candidates(policy: &Path) -> Vec<PathBuf> {
    #[cfg(unix)]
    {
        let canonical = std::fs::canonicalize(policy).unwrap_or_else(|_| policy.to_owned());
        let mut paths = vec![default_path(policy)];
        let next_to = beside(&canonical);
        if !paths.contains(&next_to) {
            paths.push(next_to);
        }
        paths
    }
    #[cfg(windows)]
    {
        vec![default_path(policy)]
    }
}

/// The control endpoint a client of `policy` should use: the first candidate that exists,
/// else the default. (On Windows the only candidate, untested: probing a named pipe would
/// connect to it.)
pub fn locate(policy: &Path) -> PathBuf {
    let candidates = candidates(policy);
    if candidates.len() > 1
        && let Some(found) = candidates.iter().find(|p| p.exists())
    {
        return found.clone();
    }
    candidates
        .into_iter()
        .next()
        .unwrap_or_else(|| default_path(policy))
}

/// The control endpoint when neither a path nor a policy file was given: the only socket
/// under `$XDG_RUNTIME_DIR/ssm-tether/` (Unix), the only `ssm-tether-*` pipe (Windows).
///
/// # Errors
/// [`ControlError::NotFound`] when there is none, or more than one.
pub fn find_only() -> Result<PathBuf, ControlError> {
    #[cfg(unix)]
    let (dir, mut found) = {
        let Some(dir) = runtime_dir() else {
            return Err(ControlError::NotFound(
                "$XDG_RUNTIME_DIR is not set: give the policy file or --control PATH".to_owned(),
            ));
        };
        let found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "sock"))
                    .take(64)
                    .collect()
            })
            .unwrap_or_default();
        (dir, found)
    };
    #[cfg(windows)]
    let (dir, mut found) = {
        // Listing `\\.\pipe\` names the pipes without connecting to any.
        let dir = PathBuf::from(PIPE_PREFIX);
        let found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .starts_with(PIPE_NAME_PREFIX)
                    })
                    .map(|e| dir.join(e.file_name()))
                    .take(64)
                    .collect()
            })
            .unwrap_or_default();
        (dir, found)
    };
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(ControlError::NotFound(format!(
            "no {} in {}: is ssm-tether run running? Give the policy file or --control PATH",
            super::ENDPOINT,
            dir.display()
        ))),
        _ => Err(ControlError::NotFound(format!(
            "several {}s in {} ({}): give the policy file or --control PATH",
            super::ENDPOINT,
            dir.display(),
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The namespace of named pipes.
#[cfg(windows)]
pub(super) const PIPE_PREFIX: &str = r"\\.\pipe\";
/// How the names of ssm-tether's pipes begin.
#[cfg(windows)]
const PIPE_NAME_PREFIX: &str = "ssm-tether-";

/// `$XDG_RUNTIME_DIR/ssm-tether`, if the variable names an absolute path.
#[cfg(unix)]
fn runtime_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("XDG_RUNTIME_DIR")?);
    dir.is_absolute().then(|| dir.join("ssm-tether"))
}

/// `STEM-HASH.sock`: readable, unique per policy file, and short enough for `sun_path`.
#[cfg(unix)]
fn socket_name(canonical: &Path) -> String {
    format!("{}.sock", stem_and_hash(canonical))
}

/// `STEM-HASH` (`HASH` alone for a file without a usable name): STEM from the policy file's
/// name, HASH from its canonical path.
fn stem_and_hash(canonical: &Path) -> String {
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
        hash
    } else {
        format!("{stem}-{hash}")
    }
}

/// `.NAME.sock` next to the policy file.
#[cfg(unix)]
fn beside(canonical: &Path) -> PathBuf {
    let name = canonical
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "tunnels".to_owned());
    let parent = canonical.parent().unwrap_or(Path::new("."));
    parent.join(format!(".{name}.sock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
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

    #[cfg(windows)]
    #[test]
    fn default_pipe_names_differ_per_policy() {
        let a = default_path(Path::new(r"C:\ssm-tether\tunnels.toml"));
        let b = default_path(Path::new(r"C:\Users\me\tunnels.toml"));
        assert_ne!(a, b);
        let a = a.to_string_lossy();
        assert!(a.starts_with(r"\\.\pipe\ssm-tether-tunnels-"), "{a}");
    }
}
