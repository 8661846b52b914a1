//! The `ssm-tether` command line.

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    // Plugins compile in a child process of this binary, within time and memory limits.
    if let Some(code) = ssm_tether::plugin::compile_worker_main() {
        return code;
    }
    let mut argv = std::env::args_os();
    // A link named `session-manager-plugin`: the AWS CLI's argument convention, not clap's.
    let result = if cli::drop_in::invoked_as_plugin(argv.next().as_ref()) {
        cli::drop_in::run(&argv.collect::<Vec<_>>())
    } else {
        cli::run(cli::Cli::parse())
    };
    cli::flush_logs();
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("ssm-tether: {err:#}");
            ExitCode::from(cli::EXIT_FAILURE)
        }
    }
}
