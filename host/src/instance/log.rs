//! Where an instance's log lines go: the worker's log (within a budget) or standard output.

use std::io::{BufWriter, Stdout, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::live_log::LiveLog;
use crate::limits::MAX_WORKER_LOG_LINES_PER_SECOND;
use crate::names::Fqfn;
use crate::runtime::LogLevel;
use crate::token_bucket::TokenBucket;

/// Where function log lines go (besides the log topic).
#[derive(Clone)]
pub enum LogSink {
    /// Stdout, as `LEVEL [name] line`, buffered and flushed after every batch: for `localrun`.
    Stdout(Arc<Mutex<BufWriter<Stdout>>>),
    /// For the worker: every line into the function's live log, and (within a budget, see
    /// `LogBudget`) tracing events with the function's name and instance id as fields into the
    /// worker's log, which carries many functions.
    Worker(Arc<LiveLog>),
    /// Kept in memory, level and line, for whoever made the sink: a replay's results.
    Capture(Arc<Mutex<Vec<(LogLevel, String)>>>),
}

impl Default for LogSink {
    fn default() -> Self {
        Self::Stdout(Arc::new(Mutex::new(BufWriter::new(std::io::stdout()))))
    }
}

impl LogSink {
    pub(super) fn write_line(&self, level: LogLevel, fqfn: &Fqfn, instance_id: u32, message: &str) {
        match self {
            Self::Stdout(out) => {
                let mut out = out.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                // A closed stdout must not stop processing; the log topic (if any) still gets the line.
                let _ = writeln!(out, "{} [{}] {message}", level_name(level), fqfn.name());
            }
            Self::Capture(lines) => {
                lines.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push((level, message.to_owned()))
            }
            Self::Worker(_) => match level {
                LogLevel::Trace => tracing::trace!(target: "fnhost::function", %fqfn, instance_id, "{message}"),
                LogLevel::Debug => tracing::debug!(target: "fnhost::function", %fqfn, instance_id, "{message}"),
                LogLevel::Info => tracing::info!(target: "fnhost::function", %fqfn, instance_id, "{message}"),
                LogLevel::Warn => tracing::warn!(target: "fnhost::function", %fqfn, instance_id, "{message}"),
                LogLevel::Error => tracing::error!(target: "fnhost::function", %fqfn, instance_id, "{message}"),
            },
        }
    }

    /// Writes out buffered lines.
    pub fn flush(&self) {
        if let Self::Stdout(out) = self {
            let mut out = out.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let _ = out.flush();
        }
    }
}

/// The name of a log level as Pulsar writes it.
pub fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "TRACE",
        LogLevel::Debug => "DEBUG",
        LogLevel::Info => "INFO",
        LogLevel::Warn => "WARN",
        LogLevel::Error => "ERROR",
    }
}

pub(super) fn level_rank(level: LogLevel) -> u8 {
    level as u8
}

/// How many guest log lines an instance may still write into the worker's log: a bucket that
/// fills at MAX_WORKER_LOG_LINES_PER_SECOND and holds a second's worth.
pub(super) struct LogBudget {
    bucket: TokenBucket,
    /// Lines left out since the last one written.
    left_out: u64,
}

impl Default for LogBudget {
    fn default() -> Self {
        let rate = MAX_WORKER_LOG_LINES_PER_SECOND;
        Self { bucket: TokenBucket::full(rate, f64::from(rate), Instant::now()), left_out: 0 }
    }
}

impl LogBudget {
    /// Takes one line at `now`: `None` if it is left out, else how many were left out before it.
    pub(super) fn take(&mut self, now: Instant) -> Option<u64> {
        match self.bucket.take(now) {
            Ok(()) => Some(std::mem::take(&mut self.left_out)),
            Err(_) => {
                self.left_out += 1;
                None
            }
        }
    }
}
