//! How throughput grows with message size and with state size (`sizes`).

use std::path::Path;

use fnhost::engine::broker::OutMessage;
use fnhost::function::{Ordering, ProcessingGuarantee};

use crate::common::{Code, Workload, pipeline, raw_storage, session_events_of};
use crate::latency::latency_run;

/// Message sizes of the sizes part, in bytes.
pub(crate) const MESSAGE_SIZES: [usize; 3] = [100, 1024, 64 * 1024];

/// Most bytes of messages in one message-size run: bounds the memory of the 64 KiB run.
pub(crate) const SIZE_RUN_BYTES: usize = 512 << 20;

/// The input rate of the message-size rows' latency runs: the 64 KiB row's bytes stay below the
/// disk's bandwidth at it.
pub(crate) const SIZE_LATENCY_RATE: f64 = 1_000.0;

/// Most messages of each latency run of the message-size rows.
const SIZE_LATENCY_MESSAGES: usize = 5_000;

/// Users of the sizes part's state runs: about this many keys are live in the function's state.
pub(crate) const STATE_KEYS: [usize; 4] = [1_000, 10_000, 100_000, 1_000_000];

/// How cost grows with work: the exclamation function on messages of each of `MESSAGE_SIZES`
/// (at most `run_bytes` of them per run) beside raw appends, with the guest's produce-to-output
/// latency at `SIZE_LATENCY_RATE`; and the session function with each of `keys` users (at least
/// two events per user, so that every user logs in and out).
pub(crate) fn sizes(
    session: &Path,
    exclamation: &Path,
    messages: usize,
    run_bytes: usize,
    keys: &[usize],
) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let at_least_once = (ProcessingGuarantee::AtLeastOnce, Ordering::Unordered, 1);
    println!();
    println!(
        "| exclamation, message size | messages | raw append MB/s | native msg/s | guest msg/s | guest MB/s | guest time vs native | guest p50 ms at {SIZE_LATENCY_RATE:.0} msg/s | p99 ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for size in MESSAGE_SIZES {
        let count = messages.min(run_bytes / size).max(1);
        let events: Vec<OutMessage> = (0..count)
            .map(|i| {
                let mut value = format!("word {i} ").into_bytes();
                value.resize(size, b'.');
                OutMessage::new(value)
            })
            .collect();
        let words = Workload::words(&events);
        let dir = |name: &str| scratch.path().join(format!("{name}-{size}"));
        let (append, _) = raw_storage(&dir("raw"), &events)?;
        let native = pipeline(&dir("native"), &words, Code::Native, at_least_once)?;
        let guest = pipeline(&dir("guest"), &words, Code::Wasm(exclamation), at_least_once)?;
        let timed = &events[..count.min(SIZE_LATENCY_MESSAGES)];
        let latencies =
            latency_run(&dir("latency"), &Workload::words(timed), Code::Wasm(exclamation), Some(SIZE_LATENCY_RATE))?;
        let megabytes = (count * size) as f64 / 1e6;
        println!(
            "| {size} B | {count} | {:.0} | {:.0} | {:.0} | {:.1} | {:.2} | {:.2} | {:.2} |",
            megabytes / append.as_secs_f64(),
            count as f64 / native.as_secs_f64(),
            count as f64 / guest.as_secs_f64(),
            megabytes / guest.as_secs_f64(),
            guest.as_secs_f64() / native.as_secs_f64(),
            latencies.percentile(0.5),
            latencies.percentile(0.99),
        );
    }
    println!();
    println!("| session-duration, live state keys | messages | native msg/s | guest msg/s | guest time vs native |");
    println!("|---|---|---|---|---|");
    for &users in keys {
        let count = messages.max(2 * users);
        let events = session_events_of(users, count);
        let sessions = Workload::sessions_of(users, &events);
        let native = pipeline(&scratch.path().join(format!("native-{users}")), &sessions, Code::Native, at_least_once)?;
        let guest =
            pipeline(&scratch.path().join(format!("guest-{users}")), &sessions, Code::Wasm(session), at_least_once)?;
        println!(
            "| {users} | {count} | {:.0} | {:.0} | {:.2} |",
            count as f64 / native.as_secs_f64(),
            count as f64 / guest.as_secs_f64(),
            guest.as_secs_f64() / native.as_secs_f64(),
        );
    }
    Ok(())
}
