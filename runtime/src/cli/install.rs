//! `ssm-tether install-plugin [DIR]`: a `session-manager-plugin` link to this binary, so that
//! the AWS CLI runs ssm-tether for `aws ssm start-session`.
//!
//! On Unix the link is symbolic. On Windows it is `session-manager-plugin.exe`, a hard link
//! (a symbolic link needs a privilege or developer mode there); it must be on the binary's
//! volume, and after ssm-tether is replaced by a new build it still runs the old one until
//! `install-plugin` is run again.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use super::EXIT_USAGE;
use super::drop_in::PLUGIN_FILE;

/// Arguments of `install-plugin`.
#[derive(Debug, clap::Args)]
pub(crate) struct InstallArgs {
    /// Directory for the link (default: the directory of this binary); it should be on PATH
    /// ahead of any official plugin.
    dir: Option<PathBuf>,
    /// Replace an existing `session-manager-plugin` (it is kept as
    /// `session-manager-plugin.orig`).
    #[arg(long)]
    force: bool,
}

/// Creates the link and says what it did; refuses to replace another plugin without `--force`.
pub(crate) fn run(args: &InstallArgs) -> anyhow::Result<ExitCode> {
    let binary = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .context("cannot find this binary's path")?;
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => binary
            .parent()
            .context("this binary's path has no directory")?
            .to_path_buf(),
    };
    if !dir.is_dir() {
        eprintln!("ssm-tether: {} is not a directory", dir.display());
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let link = dir.join(PLUGIN_FILE);
    match std::fs::symlink_metadata(&link) {
        Ok(_) if points_to(&link, &binary) => {
            println!("{} already runs {}", link.display(), binary.display());
            warn_about_path(&dir, &link);
            return Ok(ExitCode::SUCCESS);
        }
        Ok(_) if !args.force => {
            eprintln!(
                "ssm-tether: {} already exists and is not ssm-tether (the official plugin?); \
                 pass --force to replace it (it is kept as {PLUGIN_FILE}.orig)",
                link.display()
            );
            return Ok(ExitCode::from(EXIT_USAGE));
        }
        Ok(_) => {
            let backup = dir.join(format!("{PLUGIN_FILE}.orig"));
            std::fs::rename(&link, &backup).with_context(|| {
                format!("cannot move {} to {}", link.display(), backup.display())
            })?;
            println!(
                "moved the previous {} to {}",
                link.display(),
                backup.display()
            );
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("cannot inspect {}", link.display())),
    }
    // Create under a temporary name and rename: the link appears whole or not at all.
    let staging = dir.join(format!(".{PLUGIN_FILE}.{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    #[cfg(unix)]
    let linked = std::os::unix::fs::symlink(&binary, &staging);
    #[cfg(windows)]
    let linked = std::fs::hard_link(&binary, &staging);
    linked.with_context(|| format!("cannot create a link in {}", dir.display()))?;
    if let Err(err) = std::fs::rename(&staging, &link) {
        let _ = std::fs::remove_file(&staging);
        return Err(err).with_context(|| format!("cannot create {}", link.display()));
    }
    println!("linked {} -> {}", link.display(), binary.display());
    warn_about_path(&dir, &link);
    Ok(ExitCode::SUCCESS)
}

/// Whether `link` runs `binary`: resolves to it (Unix), or is the same file — or a copy of
/// it, byte for byte (Windows, where a hard link cannot be told from its target without
/// unstable APIs).
fn points_to(link: &Path, binary: &Path) -> bool {
    #[cfg(unix)]
    {
        std::fs::canonicalize(link).is_ok_and(|target| target == binary)
    }
    #[cfg(windows)]
    {
        let same_size = match (std::fs::metadata(link), std::fs::metadata(binary)) {
            (Ok(a), Ok(b)) => a.len() == b.len(),
            _ => false,
        };
        same_size && same_bytes(link, binary).unwrap_or(false)
    }
}

/// Whether two files hold the same bytes.
#[cfg(windows)]
fn same_bytes(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let (mut a, mut b) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let (mut x, mut y) = (vec![0; 1 << 16], vec![0; 1 << 16]);
    loop {
        let n = a.read(&mut x)?;
        if n == 0 {
            return Ok(b.read(&mut y[..1])? == 0);
        }
        b.read_exact(&mut y[..n])?;
        if x[..n] != y[..n] {
            return Ok(false);
        }
    }
}

/// The AWS CLI runs the first `session-manager-plugin` on PATH: say so if that is not ours.
fn warn_about_path(dir: &Path, link: &Path) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let first = std::env::split_paths(&path)
        .map(|entry| entry.join(PLUGIN_FILE))
        .find(|candidate| candidate.exists());
    let ours = std::fs::canonicalize(link).ok();
    match first {
        Some(found) if std::fs::canonicalize(&found).ok() == ours => {}
        Some(found) => eprintln!(
            "note: {} comes first on PATH; put {} before its directory",
            found.display(),
            dir.display()
        ),
        None => eprintln!("note: {} is not on PATH; add it", dir.display()),
    }
}
