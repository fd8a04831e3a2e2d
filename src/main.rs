mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // Stopped by Ctrl-C / SIGTERM with its checkpoint saved: the shell's status for SIGINT.
        Err(e) if e.is::<ltrain::train::Interrupted>() => {
            eprintln!("ltrain: {e}");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
