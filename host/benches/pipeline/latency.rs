//! Produce-to-output latency at a fixed rate and at saturation, guest beside native (`latency`).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use fnhost::embedded::EmbeddedStore;
use fnhost::engine::broker::{Broker, Position, SubscriptionSpec};
use fnhost::function::{Ordering, ProcessingGuarantee};
use fnhost::instance::{self, RunUntil};
use fnhost::limits::MAX_BATCH_MESSAGES;

use crate::common::{Code, USERS, Workload, executors, input, output, pipeline_config, session_events_of};

/// Most events of the latency part: it runs at a fixed rate, so its time grows with them.
pub(crate) const LATENCY_MESSAGES: usize = 200_000;

/// The fixed input rate of the latency part, in messages per second.
pub(crate) const LATENCY_RATE: f64 = 10_000.0;

/// The share of the saturated throughput at which the latency part also runs.
pub(crate) const LATENCY_LOAD: f64 = 0.8;

/// `fdatasync`s in the floor row measured before each function's runs.
const FLOOR_SYNCS: usize = 2_000;

/// Bytes each `fdatasync` of the floor row writes: about one log record of a commit with one
/// session output and its cursor and state changes.
const FLOOR_BYTES: usize = 256;

/// How long the latency part waits for an output before it gives up on the run.
pub(crate) const OUTPUT_PATIENCE: Duration = Duration::from_secs(60);

/// Produce-to-output latency of the session function, native and guest, under ATLEAST_ONCE with
/// one instance: at `LATENCY_RATE`, saturated (the producer appends as fast as it can, so later
/// messages wait behind the backlog), and at `LATENCY_LOAD` of the rate reached saturated.
pub(crate) fn latency(wasm: &Path, messages: usize) -> anyhow::Result<()> {
    // Fewer users than events, so that half the events are logouts, which write the outputs timed.
    let users = USERS.min(messages / 2).max(1);
    let events = session_events_of(users, messages);
    let sessions = Workload::sessions_of(users, &events);
    let scratch = tempfile::tempdir()?;
    println!();
    println!(
        "| produce to output ({messages} session events, ATLEAST_ONCE) | input msg/s | output msg/s | p50 ms | p99 ms | p999 ms | max ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, code) in [("native Rust function", Code::Native), ("Rust guest", Code::Wasm(wasm))] {
        // The disk's floor in this run: a produce and a commit are a durable step each.
        let measured = crate::log::lone_fdatasyncs(scratch.path(), FLOOR_SYNCS, FLOOR_BYTES)?;
        let mut floor = measured.clone();
        floor.sort_unstable();
        let floor_ms = |q: f64| crate::log::quantile(&floor, q);
        println!(
            "| a lone {FLOOR_BYTES} B fdatasync, before the {name} runs | | | {:.2} | {:.2} | {:.2} | {:.2} |",
            floor_ms(0.5),
            floor_ms(0.99),
            floor_ms(0.999),
            floor_ms(1.0)
        );
        // The path of every message holds two durable steps in a row: its produce, and then the
        // commit that writes its output. Consecutive syncs of the floor, paired, are that floor.
        let mut pairs: Vec<Duration> = measured.chunks_exact(2).map(|pair| pair[0] + pair[1]).collect();
        pairs.sort_unstable();
        let pair_ms = |q: f64| crate::log::quantile(&pairs, q);
        println!(
            "| two of those fdatasyncs in a row (a produce, then a commit), before the {name} runs | | | {:.2} | {:.2} | {:.2} | {:.2} |",
            pair_ms(0.5),
            pair_ms(0.99),
            pair_ms(0.999),
            pair_ms(1.0)
        );
        let run = |label: &str, rate: Option<f64>| {
            latency_run(&scratch.path().join(format!("{name} {label}")), &sessions, code, rate)
        };
        let fixed = run("fixed", Some(LATENCY_RATE))?;
        let saturated = run("saturated", None)?;
        anyhow::ensure!(saturated.output_rate > 0.0, "the saturated run of the {name} wrote no outputs");
        let loaded = run("loaded", Some(saturated.output_rate * LATENCY_LOAD))?;
        for (label, latencies) in [
            (format!("{LATENCY_RATE:.0} msg/s"), fixed),
            ("saturated".to_owned(), saturated),
            (format!("{:.0}% of saturated", LATENCY_LOAD * 100.0), loaded),
        ] {
            println!(
                "| {name}, {label} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
                latencies.input_rate,
                latencies.output_rate,
                latencies.percentile(0.5),
                latencies.percentile(0.99),
                latencies.percentile(0.999),
                latencies.percentile(1.0),
            );
        }
    }
    Ok(())
}

/// What one latency run measured.
pub(crate) struct Latencies {
    /// Events appended per second while the producer ran.
    input_rate: f64,
    /// Events processed per second, from the first append to the last output (events after the
    /// last event with an output do not count).
    output_rate: f64,
    sorted: Vec<Duration>,
}

impl Latencies {
    /// The `quantile` (0 to 1) of the latencies, in milliseconds.
    pub(crate) fn percentile(&self, quantile: f64) -> f64 {
        let rank = (self.sorted.len() as f64 * quantile).ceil() as usize;
        self.sorted
            .get(rank.saturating_sub(1).min(self.sorted.len().saturating_sub(1)))
            .map_or(0.0, |latency| latency.as_secs_f64() * 1e3)
    }
}

/// Appends the workload's events at `rate` messages per second (as fast as appends go if `None`)
/// in appends of at most `MAX_BATCH_MESSAGES`, while one instance processes them and a consumer
/// of the output topic notes when each output arrives.
pub(crate) fn latency_run(
    dir: &Path,
    workload: &Workload<'_>,
    code: Code<'_>,
    rate: Option<f64>,
) -> anyhow::Result<Latencies> {
    let store = EmbeddedStore::open(dir)?;
    let config = pipeline_config(ProcessingGuarantee::AtLeastOnce, Ordering::Unordered, 1)?;
    let executors = executors(&store, &config, code, workload.native)?;
    let outputs = store.subscribe(SubscriptionSpec::single(vec![output()], None, Position::Earliest))?;
    let events = workload.events;
    // Nanoseconds from `started` to the append of each event.
    let appended_at: Vec<AtomicU64> = events.iter().map(|_| AtomicU64::new(0)).collect();
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let running = scope.spawn(|| instance::run(&store, &config, executors, RunUntil::Stopped, &stop));
        let receiving = scope.spawn(|| -> anyhow::Result<(Vec<Duration>, Duration)> {
            let mut latencies = Vec::with_capacity(workload.outputs());
            let mut last_output = Instant::now();
            while latencies.len() < workload.outputs() {
                let received = outputs.fetch(MAX_BATCH_MESSAGES, Duration::from_millis(100))?.len();
                let now = started.elapsed();
                for source in &workload.output_sources[latencies.len()..latencies.len() + received] {
                    latencies.push(
                        now.saturating_sub(Duration::from_nanos(appended_at[*source].load(AtomicOrdering::Acquire))),
                    );
                }
                if received > 0 {
                    last_output = Instant::now();
                }
                anyhow::ensure!(
                    last_output.elapsed() < OUTPUT_PATIENCE,
                    "no output for {OUTPUT_PATIENCE:?} after {} of {}",
                    latencies.len(),
                    workload.outputs()
                );
            }
            Ok((latencies, started.elapsed()))
        });
        let producing = (|| -> anyhow::Result<Duration> {
            let mut sent = 0;
            while sent < events.len() {
                let due = rate.map_or(events.len(), |rate| (started.elapsed().as_secs_f64() * rate) as usize + 1);
                if due <= sent {
                    std::thread::sleep(Duration::from_micros(100));
                    continue;
                }
                let end = due.min(events.len()).min(sent + MAX_BATCH_MESSAGES);
                let chunk = events[sent..end].to_vec();
                let now = started.elapsed().as_nanos() as u64;
                for slot in &appended_at[sent..end] {
                    slot.store(now, AtomicOrdering::Release);
                }
                store.produce(&input(), chunk)?;
                sent = end;
            }
            Ok(started.elapsed())
        })();
        let received = receiving.join().expect("the output consumer panicked");
        stop.store(true, AtomicOrdering::Release);
        running.join().expect("the instance panicked")?;
        let producing = producing?;
        let (mut sorted, finished) = received?;
        sorted.sort_unstable();
        Ok(Latencies {
            input_rate: events.len() as f64 / producing.as_secs_f64(),
            output_rate: workload.output_sources.last().map_or(0, |last| last + 1) as f64 / finished.as_secs_f64(),
            sorted,
        })
    })
}
