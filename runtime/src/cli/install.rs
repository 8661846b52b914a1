//! `ssm-tether install-plugin [DIR]`: a `session-manager-plugin` link to this binary, so that
//! the AWS CLI runs ssm-tether for `aws ssm start-session`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use super::EXIT_USAGE;
use super::drop_in::PLUGIN_NAME;

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
    let link = dir.join(PLUGIN_NAME);
    match std::fs::symlink_metadata(&link) {
        Ok(_) if points_to(&link, &binary) => {
            println!("{} already runs {}", link.display(), binary.display());
            warn_about_path(&dir, &link);
            return Ok(ExitCode::SUCCESS);
        }
        Ok(_) if !args.force => {
            eprintln!(
                "ssm-tether: {} already exists and is not ssm-tether (the official plugin?); \
                 pass --force to replace it (it is kept as {PLUGIN_NAME}.orig)",
                link.display()
            );
            return Ok(ExitCode::from(EXIT_USAGE));
        }
        Ok(_) => {
            let backup = dir.join(format!("{PLUGIN_NAME}.orig"));
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
    let staging = dir.join(format!(".{PLUGIN_NAME}.{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    std::os::unix::fs::symlink(&binary, &staging)
        .with_context(|| format!("cannot create a link in {}", dir.display()))?;
    if let Err(err) = std::fs::rename(&staging, &link) {
        let _ = std::fs::remove_file(&staging);
        return Err(err).with_context(|| format!("cannot create {}", link.display()));
    }
    println!("linked {} -> {}", link.display(), binary.display());
    warn_about_path(&dir, &link);
    Ok(ExitCode::SUCCESS)
}

fn points_to(link: &Path, binary: &Path) -> bool {
    std::fs::canonicalize(link).is_ok_and(|target| target == binary)
}

/// The AWS CLI runs the first `session-manager-plugin` on PATH: say so if that is not ours.
fn warn_about_path(dir: &Path, link: &Path) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let first = std::env::split_paths(&path)
        .map(|entry| entry.join(PLUGIN_NAME))
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
