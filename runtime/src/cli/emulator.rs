//! `ssm-tether emulator`: the local SSM service + agent emulator, for trying policies and
//! plugins without AWS. All flags are documented in `emulator/README.md`.

use std::process::ExitCode;

use anyhow::Context;

/// Runs the emulator on its own tokio runtime until SIGINT/SIGTERM.
pub(crate) fn run(args: ssm_emulator::cli::EmulatorArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(ssm_emulator::cli::run(args))?;
    Ok(ExitCode::SUCCESS)
}
