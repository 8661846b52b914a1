//! The `ssm-tether` command line.

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("ssm-tether: {err:#}");
            ExitCode::from(cli::EXIT_FAILURE)
        }
    }
}
