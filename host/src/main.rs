//! The `fnhost` binary: parses the command line and reports errors; the work is in the library.

use std::process::ExitCode;

use clap::Parser;

// The system allocator, not mimalloc: mimalloc's per-thread heaps made an idle instance (a
// thread) cost 280 KiB instead of 46 KiB; mimalloc was faster in the commit path
// (docs/BENCHMARKS.md, Density).

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FNHOST_LOG").unwrap_or_else(|_| "fnhost=info".into()),
        )
        .init();
    match fnhost::cli::run(fnhost::cli::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
