//! The session pipeline, native beside guest, alternated (`throughput`); every processing
//! guarantee beside raw storage (`guarantees`); a stateless function (`stateless`).

use std::path::Path;
use std::time::Duration;

use fnhost::engine::broker::OutMessage;
use fnhost::function::{Ordering, ProcessingGuarantee};
use fnhost::limits::MAX_BATCH_MESSAGES;

use crate::common::{Code, Workload, pipeline, raw_storage, session_events};

/// The session function natively and as the Rust guest under ATLEAST_ONCE, and then each of
/// `extra` guest settings (guarantee, ordering, parallelism), alternated `rounds` times on fresh
/// data directories; returns the median time of each, in that order.
pub(crate) fn alternated(
    wasm: &Path,
    sessions: &Workload<'_>,
    scratch: &Path,
    rounds: usize,
    extra: &[(ProcessingGuarantee, Ordering, u32)],
) -> anyhow::Result<Vec<Duration>> {
    let single = (ProcessingGuarantee::AtLeastOnce, Ordering::Unordered, 1);
    let runs: Vec<(Code<'_>, (ProcessingGuarantee, Ordering, u32))> =
        [(Code::Native, single), (Code::Wasm(wasm), single)]
            .into_iter()
            .chain(extra.iter().map(|settings| (Code::Wasm(wasm), *settings)))
            .collect();
    let mut times = vec![Vec::new(); runs.len()];
    for round in 0..rounds {
        for ((code, settings), times) in runs.iter().zip(&mut times) {
            let dir = scratch.join(format!("alternated-{round}"));
            times.push(pipeline(&dir, sessions, *code, *settings)?);
            std::fs::remove_dir_all(&dir)?;
        }
    }
    Ok(times
        .into_iter()
        .map(|mut times| {
            times.sort();
            times[times.len() / 2]
        })
        .collect())
}

/// Two instances of the guest, keeping each user's events in order: how a saturated function
/// uses a second core.
const TWO_INSTANCES: (ProcessingGuarantee, Ordering, u32) = (ProcessingGuarantee::AtLeastOnce, Ordering::RetainKey, 2);

/// The first target's figures alone: the session function natively and as the Rust guest, and
/// the guest as two key-ordered instances, the median of `rounds` alternated runs each (also the
/// part to run under a profiler).
pub(crate) fn throughput(wasm: &Path, messages: usize, rounds: usize) -> anyhow::Result<()> {
    let events = session_events(messages);
    let scratch = tempfile::tempdir()?;
    let times = alternated(wasm, &Workload::sessions(&events), scratch.path(), rounds, &[TWO_INSTANCES])?;
    let [native, guest, two] = times[..] else { anyhow::bail!("three medians expected") };
    let rate = |elapsed: Duration| messages as f64 / elapsed.as_secs_f64();
    println!(
        "| {messages} session events, ATLEAST_ONCE, median of {rounds} alternated runs | native msg/s | guest msg/s | guest time vs native | guest, --retain-key-ordering --parallelism 2, msg/s |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| session-duration | {:.0} | {:.0} | {:.2} | {:.0} |",
        rate(native),
        rate(guest),
        guest.as_secs_f64() / native.as_secs_f64(),
        rate(two)
    );
    Ok(())
}

pub(crate) fn guarantees(wasm: &Path, exclamation: &Path, messages: usize, rounds: usize) -> anyhow::Result<()> {
    let events = session_events(messages);
    let scratch = tempfile::tempdir()?;
    let sessions = Workload::sessions(&events);

    let (append, read) = raw_storage(&scratch.path().join("raw"), &events)?;
    let run = |name: &str, code: Code<'_>, guarantee: ProcessingGuarantee, ordering: Ordering, parallelism: u32| {
        pipeline(&scratch.path().join(name), &sessions, code, (guarantee, ordering, parallelism))
    };
    let (unordered, by_key) = (Ordering::Unordered, Ordering::RetainKey);
    let guest = || Code::Wasm(wasm);
    let times = alternated(wasm, &sessions, scratch.path(), rounds, &[])?;
    let [native, at_least_once] = times[..] else { anyhow::bail!("two medians expected") };
    let others = [
        ("ATMOST_ONCE", run("at-most-once", guest(), ProcessingGuarantee::AtMostOnce, unordered, 1)?),
        ("EFFECTIVELY_ONCE", run("effectively-once", guest(), ProcessingGuarantee::EffectivelyOnce, unordered, 1)?),
        ("MANUAL (the guest acks every message)", run("manual", guest(), ProcessingGuarantee::Manual, unordered, 1)?),
        // Sessions need each user's events in order, so parallel runs are key-shared.
        (
            "ATLEAST_ONCE, --retain-key-ordering, --parallelism 1",
            run("keyed-1", guest(), ProcessingGuarantee::AtLeastOnce, by_key, 1)?,
        ),
        (
            "ATLEAST_ONCE, --retain-key-ordering, --parallelism 2",
            run("keyed-2", guest(), ProcessingGuarantee::AtLeastOnce, by_key, 2)?,
        ),
    ];

    let rate = |elapsed: Duration| messages as f64 / elapsed.as_secs_f64();
    // Throughput relative to the Rust guest under ATLEAST_ONCE with one instance.
    let ratio = |elapsed: Duration| at_least_once.as_secs_f64() / elapsed.as_secs_f64();
    println!("| measurement ({messages} session events) | seconds | messages/s | throughput vs guest ATLEAST_ONCE |");
    println!("|---|---|---|---|");
    println!(
        "| raw sled append (produce, batches of {MAX_BATCH_MESSAGES}, flushed) | {:.2} | {:.0} | |",
        append.as_secs_f64(),
        rate(append)
    );
    println!("| raw sled read (subscription fetch) | {:.2} | {:.0} | |", read.as_secs_f64(), rate(read));
    println!(
        "| native Rust function, ATLEAST_ONCE (median of {rounds}) | {:.2} | {:.0} | {:.2} |",
        native.as_secs_f64(),
        rate(native),
        ratio(native)
    );
    println!(
        "| Rust guest, ATLEAST_ONCE (median of {rounds}) | {:.2} | {:.0} | 1.00 |",
        at_least_once.as_secs_f64(),
        rate(at_least_once)
    );
    for (name, elapsed) in others {
        println!(
            "| Rust guest, {name} | {:.2} | {:.0} | {:.2} |",
            elapsed.as_secs_f64(),
            rate(elapsed),
            ratio(elapsed)
        );
    }
    stateless(exclamation, messages, scratch.path())
}

/// The stateless exclamation function under each guarantee, beside the same logic natively.
/// MANUAL is left out: the example does not acknowledge, so its messages would come back.
pub(crate) fn stateless(wasm: &Path, messages: usize, scratch: &Path) -> anyhow::Result<()> {
    let events: Vec<OutMessage> = (0..messages).map(|i| OutMessage::new(format!("word {i}"))).collect();
    let words = Workload::words(&events);
    let run = |name: &str, code: Code<'_>, guarantee: ProcessingGuarantee, parallelism: u32| {
        pipeline(&scratch.join(name), &words, code, (guarantee, Ordering::Unordered, parallelism))
    };
    let guest = || Code::Wasm(wasm);
    let at_least_once = run("words-at-least-once", guest(), ProcessingGuarantee::AtLeastOnce, 1)?;
    let rows = [
        ("native Rust function, ATLEAST_ONCE", run("words-native", Code::Native, ProcessingGuarantee::AtLeastOnce, 1)?),
        ("Rust guest, ATLEAST_ONCE", at_least_once),
        ("Rust guest, ATMOST_ONCE", run("words-at-most-once", guest(), ProcessingGuarantee::AtMostOnce, 1)?),
        (
            "Rust guest, EFFECTIVELY_ONCE",
            run("words-effectively-once", guest(), ProcessingGuarantee::EffectivelyOnce, 1)?,
        ),
        (
            "Rust guest, ATLEAST_ONCE, --parallelism 2",
            run("words-shared-2", guest(), ProcessingGuarantee::AtLeastOnce, 2)?,
        ),
    ];
    println!();
    println!("| exclamation (stateless, {messages} words) | seconds | messages/s | throughput vs guest ATLEAST_ONCE |");
    println!("|---|---|---|---|");
    for (name, elapsed) in rows {
        println!(
            "| {name} | {:.2} | {:.0} | {:.2} |",
            elapsed.as_secs_f64(),
            messages as f64 / elapsed.as_secs_f64(),
            at_least_once.as_secs_f64() / elapsed.as_secs_f64()
        );
    }
    Ok(())
}
