mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Output piped into `head` and closed early ends the process quietly, as for any Unix tool,
    // instead of a panic in println!.
    // SAFETY: restores the default disposition at start-up, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
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
