//! The `fnhost` binary: parses the command line and reports errors; the work is in the library.

use std::process::ExitCode;

use clap::Parser;

// jemalloc: the pipeline frees on its commit thread what it allocated on its processing thread,
// which glibc's malloc does slowly (the native session pipeline ran 1.7 times as fast), and its
// per-thread caches stay small (an idle instance, a thread, costs 80 KiB; mimalloc's heaps cost
// 280 KiB). docs/BENCHMARKS.md has the figures.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A function's lines are filtered by its own level (`--log-level`, changed while it runs),
        // so the worker's filter lets all of them through.
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FNHOST_LOG")
                .unwrap_or_else(|_| "fnhost=info,fnhost::function=trace".into()),
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
