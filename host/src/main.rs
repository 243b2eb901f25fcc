//! The `fnhost` binary: parses the command line and reports errors; the work is in the library.

use std::process::ExitCode;

use clap::Parser;

// sled allocates and frees many small nodes per write; mimalloc handles that pattern far better
// than glibc's allocator (see docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
