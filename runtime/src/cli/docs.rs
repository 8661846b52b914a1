//! `ssm-tether completions SHELL` and `ssm-tether man [DIR]`: shell completion scripts and
//! roff manual pages, generated from the clap definition that parses the command line, so
//! that they cannot drift from it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;

use super::Cli;

/// Arguments of `ssm-tether completions`.
#[derive(Debug, clap::Args)]
pub(crate) struct CompletionsArgs {
    /// The shell, e.g. `ssm-tether completions bash > ~/.local/share/bash-completion/completions/ssm-tether`.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// Arguments of `ssm-tether man`.
#[derive(Debug, clap::Args)]
pub(crate) struct ManArgs {
    /// Write ssm-tether.1 and one page per command (ssm-tether-run.1, …) into this directory,
    /// created if missing, and print their paths; without it, ssm-tether.1 goes to stdout.
    #[arg(value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// The program name that completions and pages are written for.
const BIN_NAME: &str = "ssm-tether";

/// Prints the completion script of `args.shell`.
pub(crate) fn completions(args: &CompletionsArgs) -> anyhow::Result<ExitCode> {
    // Into memory first: the generators panic on a write error, and stdout may be closed.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), BIN_NAME, &mut script);
    write_stdout(&script)?;
    Ok(ExitCode::SUCCESS)
}

/// Prints the top-level manual page, or writes every page into `args.dir`.
pub(crate) fn man(args: &ManArgs) -> anyhow::Result<ExitCode> {
    let root = manual_command();
    match &args.dir {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(root)
                .render(&mut page)
                .context("cannot render the manual page")?;
            write_stdout(&page)?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let mut written = Vec::new();
            write_pages(root, dir, &mut written)
                .with_context(|| format!("cannot write manual pages into {}", dir.display()))?;
            let list: String = written
                .iter()
                .map(|path| format!("{}\n", path.display()))
                .collect();
            write_stdout(list.as_bytes())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The command tree as the pages show it: without clap's `help` subcommand (a page of its
/// own would say nothing), built so that subcommands carry their full names
/// (`ssm-tether-run`), which name their pages.
fn manual_command() -> clap::Command {
    let mut root = Cli::command()
        .bin_name(BIN_NAME)
        .disable_help_subcommand(true);
    root.build();
    root
}

/// Writes the page of `command` and of every visible subcommand below it, appending each
/// file's path to `written` (subcommands first, as clap_mangen's own `generate_to` does).
fn write_pages(
    command: clap::Command,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        write_pages(sub.clone(), dir, written)?;
    }
    written.push(clap_mangen::Man::new(command).generate_to(dir)?);
    Ok(())
}

fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        // clap's own checks (a global option clashing with a command's, duplicate names):
        // completions and pages are generated from this definition.
        Cli::command().debug_assert();
    }

    #[test]
    fn every_page_is_named_after_its_full_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut written = Vec::new();
        write_pages(manual_command(), dir.path(), &mut written).expect("pages");
        let names: Vec<String> = written
            .iter()
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        for expected in [
            "ssm-tether.1",
            "ssm-tether-run.1",
            "ssm-tether-completions.1",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} in {names:?}"
            );
        }
        assert!(
            !names.iter().any(|n| n.contains("-help")),
            "no page for clap's help: {names:?}"
        );
    }
}
