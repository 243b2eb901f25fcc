//! The data directory's size over a long run (`soak`): session events at `SOAK_RATE` a second
//! through two chained functions (the session guest, then the exclamation guest on its outputs,
//! whose outputs a durable subscription acknowledges), with the directory's disk use sampled as
//! it goes. With every subscription keeping up, it should stay flat within a segment per topic.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use fnhost::embedded::EmbeddedStore;
use fnhost::engine::broker::{Acks, Broker, Effects, Position, SubscriptionSpec};
use fnhost::function::{FunctionConfig, Ordering, ProcessingGuarantee};
use fnhost::instance::{self, RunUntil};
use fnhost::limits::{DEFAULT_LOG_SEGMENT_BYTES, MAX_BATCH_MESSAGES};
use fnhost::names::{Fqfn, SubscriptionName, TopicName};

use crate::common::{
    Code, USERS, executors, input, native_exclamation, native_session_duration, output, pipeline_config, session_events,
};

/// Events a second the producer appends.
pub(crate) const SOAK_RATE: usize = 20_000;
/// Samples of the directory's size over the run.
const SAMPLES: usize = 30;
/// Distinct events the producer cycles through (then it starts again, which logs the users in again).
const EVENT_POOL: usize = 20 * USERS;

fn chained() -> TopicName {
    TopicName::parse("chained").expect("a valid topic")
}

/// Bytes the files under `dir` take on disk (allocated blocks, so preallocated segments count whole).
pub(crate) fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(metadata) if metadata.is_dir() => disk_bytes(&entry.path()),
            Ok(metadata) => metadata.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Runs the chain for `seconds` and prints the data directory's size every `seconds / SAMPLES`.
pub(crate) fn soak(wasm: &Path, exclamation: &Path, seconds: u64) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let dir = scratch.path().join("db");
    let store = EmbeddedStore::open(&dir)?;
    let sessions = pipeline_config(ProcessingGuarantee::AtLeastOnce, Ordering::Unordered, 1)?;
    let shouting = FunctionConfig {
        output: Some(chained()),
        ..FunctionConfig::new(Fqfn::parse("public/default/exclamation")?, vec![output()])
    };
    let first = executors(&store, &sessions, Code::Wasm(wasm), native_session_duration)?;
    let second = executors(&store, &shouting, Code::Wasm(exclamation), native_exclamation)?;
    let sink_name = SubscriptionName::new("public", "default", "sink")?;
    let sink = store.subscribe(SubscriptionSpec::single(vec![chained()], Some(sink_name), Position::Earliest))?;
    let pool = session_events(EVENT_POOL);
    let stop = AtomicBool::new(false);
    let every = Duration::from_secs(seconds).div_f64(SAMPLES as f64);
    println!();
    println!(
        "| soak: {SOAK_RATE} session events/s through two chained guests for {seconds} s, segments of {} MiB | elapsed s | produced | data directory MiB | log MiB (written) |",
        DEFAULT_LOG_SEGMENT_BYTES >> 20
    );
    println!("|---|---|---|---|---|");
    let started = Instant::now();
    let samples = std::thread::scope(|scope| -> anyhow::Result<Vec<(f64, u64)>> {
        let one = scope.spawn(|| instance::run(&store, &sessions, first, RunUntil::Stopped, &stop));
        let two = scope.spawn(|| instance::run(&store, &shouting, second, RunUntil::Stopped, &stop));
        let draining = scope.spawn(|| -> anyhow::Result<u64> {
            let mut acknowledged = 0;
            while !stop.load(AtomicOrdering::Acquire) {
                let messages = sink.fetch(MAX_BATCH_MESSAGES, Duration::from_millis(100))?;
                acknowledged += messages.len() as u64;
                sink.commit(Effects { acks: Acks::of(&messages), ..Effects::default() })?;
            }
            Ok(acknowledged)
        });
        let mut samples = Vec::with_capacity(SAMPLES);
        let mut sent = 0usize;
        let mut next_sample = every;
        let produced = (|| -> anyhow::Result<()> {
            while started.elapsed() < Duration::from_secs(seconds) {
                let due = (started.elapsed().as_secs_f64() * SOAK_RATE as f64) as usize;
                if due <= sent {
                    std::thread::sleep(Duration::from_micros(500));
                } else {
                    let count = (due - sent).min(MAX_BATCH_MESSAGES);
                    let batch = (sent..sent + count).map(|index| pool[index % pool.len()].clone()).collect();
                    store.produce(&input(), batch)?;
                    sent += count;
                }
                if started.elapsed() >= next_sample {
                    let bytes = disk_bytes(&dir);
                    println!(
                        "| | {:.0} | {sent} | {:.1} | {:.1} |",
                        started.elapsed().as_secs_f64(),
                        bytes as f64 / (1 << 20) as f64,
                        store.log_bytes() as f64 / (1 << 20) as f64
                    );
                    samples.push((started.elapsed().as_secs_f64(), bytes));
                    next_sample += every;
                }
            }
            Ok(())
        })();
        stop.store(true, AtomicOrdering::Release);
        let acknowledged = draining.join().expect("the sink panicked")?;
        one.join().expect("the first function panicked")?;
        two.join().expect("the second function panicked")?;
        produced?;
        anyhow::ensure!(acknowledged > 0, "the chain's sink received nothing");
        Ok(samples)
    })?;
    let most = samples.iter().map(|(_, bytes)| *bytes).max().unwrap_or_default();
    let late: Vec<u64> = samples.iter().skip(samples.len() / 2).map(|(_, bytes)| *bytes).collect();
    println!();
    println!(
        "largest {:.1} MiB; over the second half {:.1} to {:.1} MiB",
        most as f64 / (1 << 20) as f64,
        late.iter().min().copied().unwrap_or_default() as f64 / (1 << 20) as f64,
        late.iter().max().copied().unwrap_or_default() as f64 / (1 << 20) as f64
    );
    Ok(())
}
