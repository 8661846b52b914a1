//! Command-line interface: argument parsing and dispatch to one module per command.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod emulator;
mod frame;

/// Exit status for a command that failed (bad input, or an unrecoverable error).
pub(crate) const EXIT_FAILURE: u8 = 1;

/// ssm-tether keeps AWS SSM port-forwarding tunnels alive for days.
#[derive(Debug, Parser)]
#[command(name = "ssm-tether", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Decode or encode SSM data-channel frames (ClientMessage), e.g. captured from a session.
    #[command(subcommand)]
    Frame(frame::FrameCommand),
    /// Run a local SSM service and agent emulator with fault injection (no AWS needed).
    Emulator(ssm_emulator::cli::EmulatorArgs),
}

/// Runs the parsed command and returns the process exit status.
pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Frame(command) => frame::run(command),
        Command::Emulator(args) => emulator::run(args),
    }
}
