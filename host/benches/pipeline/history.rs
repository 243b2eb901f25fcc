//! A function's history (issue 30): what keeping it costs the live pipeline, beside the same
//! pipeline without it and the native function, alternated; and how long a replay of one message
//! and of a range of 10,000 takes, beside processing the same messages live.

use std::path::Path;
use std::time::{Duration, Instant};

use fnhost::embedded::EmbeddedStore;
use fnhost::engine::history::StateHistory;
use fnhost::engine::topics::{NamespacePolicies, Retention, TopicAdmin};
use fnhost::function::{Ordering, ProcessingGuarantee};
use fnhost::instance::MessageContext;
use fnhost::limits::MAX_REPLAY_MESSAGES;
use fnhost::runtime::{Runtime, RuntimeConfig};

use crate::common::{Code, Measured, Workload, input, pipeline, pipeline_config, pipeline_measured, session_events};

const SETTINGS: (ProcessingGuarantee, Ordering, u32) = (ProcessingGuarantee::AtLeastOnce, Ordering::Unordered, 1);

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

pub(crate) fn history(wasm: &Path, messages: usize, rounds: usize) -> anyhow::Result<()> {
    let events = session_events(messages);
    let sessions = Workload::sessions(&events);
    let scratch = tempfile::tempdir()?;
    let runs = [Code::Native, Code::WasmWithoutHistory(wasm), Code::Wasm(wasm)];
    let mut measured: Vec<Vec<Measured>> = runs.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        // Each run's writes are still reaching the disk as the next starts: the two guest runs
        // take turns going second, so neither always follows the other.
        let order: [usize; 3] = if round % 2 == 0 { [0, 1, 2] } else { [0, 2, 1] };
        for run in order {
            let dir = scratch.path().join(format!("history-{round}"));
            measured[run].push(pipeline_measured(&dir, &sessions, runs[run], SETTINGS)?);
            std::fs::remove_dir_all(&dir)?;
        }
    }
    // The machine is shared: each round's ratio compares runs made moments apart. CPU time is
    // the steadier measure of what history adds; elapsed time is what a user sees.
    let cost = |of: fn(&Measured) -> Duration| {
        let mut ratios: Vec<f64> = measured[2]
            .iter()
            .zip(&measured[1])
            .map(|(with, without)| of(with).as_secs_f64() / of(without).as_secs_f64())
            .collect();
        ratios.sort_by(f64::total_cmp);
        ratios[ratios.len() / 2] - 1.0
    };
    let (elapsed_cost, cpu_cost) = (cost(|run| run.elapsed), cost(|run| run.cpu));
    let [native, without, with] =
        [0, 1, 2].map(|run| median(measured[run].iter().map(|measured| measured.elapsed).collect()));
    let rate = |elapsed: Duration| messages as f64 / elapsed.as_secs_f64();
    println!(
        "| {messages} session events, ATLEAST_ONCE, median of {rounds} alternated runs | native msg/s | guest without history msg/s | guest with history msg/s | history's cost in elapsed time | in CPU time (medians of the rounds' ratios) |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| session-duration | {:.0} | {:.0} | {:.0} | {:+.1}% | {:+.1}% |",
        rate(native),
        rate(without),
        rate(with),
        elapsed_cost * 100.0,
        cpu_cost * 100.0
    );

    // Replays on a data directory the pipeline with history left, kept whole by retention.
    let dir = scratch.path().join("replayed");
    let forever = Retention { time: None, size_bytes: None };
    EmbeddedStore::open(&dir)?.set_policies(
        "public",
        "default",
        &NamespacePolicies { retention: Some(forever), ..Default::default() },
    )?;
    let live = pipeline(&dir, &sessions, Code::Wasm(wasm), SETTINGS)?;
    let store = EmbeddedStore::open(&dir)?;
    let config = pipeline_config(SETTINGS.0, SETTINGS.1, SETTINGS.2)?;
    let runtime = Runtime::new(RuntimeConfig { cache_dir: None, max_instances: 2 })?;
    let code = runtime.load(wasm)?;
    let range = messages.min(MAX_REPLAY_MESSAGES);
    let middle = messages / 2;
    let first = middle.saturating_sub(range / 2);
    let replay = |from: usize, count: usize| -> anyhow::Result<Duration> {
        let started = Instant::now();
        let messages =
            store.messages(&input(), &from.to_string(), &(from + count - 1).to_string(), MAX_REPLAY_MESSAGES)?;
        let replayed =
            fnhost::instance::replay(&config, code.prepare::<MessageContext>()?, code.digest(), &store, messages)?;
        let elapsed = started.elapsed();
        anyhow::ensure!(replayed.first_processed && replayed.messages.len() == count, "the replay missed messages");
        anyhow::ensure!(replayed.messages.iter().all(|message| message.exception.is_none()), "a replay failed");
        Ok(elapsed)
    };
    let one = median((0..rounds).map(|_| replay(middle, 1)).collect::<Result<_, _>>()?);
    let many = median((0..rounds).map(|_| replay(first, range)).collect::<Result<_, _>>()?);
    let live_per_range = live.as_secs_f64() * range as f64 / messages as f64;
    println!();
    println!(
        "| replay on {messages} committed events, median of {rounds} | one message, ms | {range} messages, ms | the same {range} live (share of the run), ms | replay vs live |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| session-duration | {:.1} | {:.0} | {:.0} | {:.1} |",
        one.as_secs_f64() * 1e3,
        many.as_secs_f64() * 1e3,
        live_per_range * 1e3,
        many.as_secs_f64() / live_per_range
    );
    Ok(())
}
