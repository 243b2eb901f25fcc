//! State that expires (issue 31): what `--state-ttl` costs the live pipeline over 1,000,000
//! keys, beside the same pipeline without it, alternated: with a time to live that does not pass
//! during the run (the expiry kept with each value, and the sweeps' reads), and with one that
//! passes within a second (the sweeps then remove keys as fast as they may while the pipeline
//! writes); and how fast the embedded store's sweep removes 1,000,000 expired keys afterwards.

use std::time::{Duration, Instant};

use fnhost::embedded::EmbeddedStore;
use fnhost::engine::state::StateStore;
use fnhost::function::{Ordering, ProcessingGuarantee};

use crate::common::{
    Code, Measured, Workload, median_cost, median_rate, pipeline_config, pipeline_measured_with, session_events_of,
};

/// A time to live that passes within the run, so that the cleaner's sweeps remove keys while the
/// pipeline writes.
const RUN_TTL: Duration = Duration::from_secs(1);
/// A time to live that outlasts the run.
const LONG_TTL: Duration = Duration::from_secs(3600);

pub(crate) fn ttl(wasm: &std::path::Path, keys: usize, rounds: usize) -> anyhow::Result<()> {
    // Every user logs in once: `keys` keys, none removed by a logout.
    let events = session_events_of(keys, keys);
    let logins = Workload::sessions_of(keys, &events);
    let scratch = tempfile::tempdir()?;
    let config = pipeline_config(ProcessingGuarantee::AtLeastOnce, Ordering::Unordered, 1)?;
    let with_ttl = |ttl| fnhost::function::FunctionConfig { state_ttl: Some(ttl), ..config.clone() };
    let configs = [config.clone(), with_ttl(LONG_TTL), with_ttl(RUN_TTL)];
    let mut measured: [Vec<Measured>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut sweeps = Vec::new();
    for round in 0..rounds {
        let order = [[0, 1, 2], [2, 1, 0], [1, 0, 2], [2, 0, 1], [0, 2, 1], [1, 2, 0]][round % 6];
        for run in order {
            let dir = scratch.path().join(format!("ttl-{round}-{run}"));
            let store = EmbeddedStore::open(&dir)?;
            let config = &configs[run];
            measured[run].push(pipeline_measured_with(&store, &logins, Code::Wasm(wasm), config)?);
            if run == 2 {
                sweeps.push(sweep_all(&store, &config.fqfn)?);
            }
            drop(store);
            std::fs::remove_dir_all(&dir)?;
        }
    }
    let cost = |run: usize, of: fn(&Measured) -> Duration| median_cost(&measured[run], &measured[0], of);
    let rate = |run: usize| median_rate(&measured[run], keys);
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    println!(
        "| {keys} logins (one key each), ATLEAST_ONCE, median of {rounds} alternated runs | msg/s | cost in elapsed time | in CPU time (medians of the rounds' ratios) |"
    );
    println!("|---|---|---|---|");
    println!("| without TTL | {:.0} | | |", rate(0));
    for (run, what) in [
        (1, "--state-ttl 1h (nothing expires during the run)"),
        (2, "--state-ttl 1s (the sweeps remove keys while the pipeline writes)"),
    ] {
        println!(
            "| {what} | {:.0} | {:+.1}% | {:+.1}% |",
            rate(run),
            cost(run, |measured| measured.elapsed) * 100.0,
            cost(run, |measured| measured.cpu) * 100.0
        );
    }
    println!();
    println!("| sweep of {keys} expired keys after the run, median of {rounds} | keys/s |");
    println!("|---|---|");
    println!(
        "| embedded store, {} keys read a pass | {:.0} |",
        fnhost::embedded::MAX_KEYS_SCANNED_PER_SWEEP,
        median(sweeps)
    );
    Ok(())
}

/// Checkpoints, lets every key expire, and sweeps until nothing is left; returns keys a second.
fn sweep_all(store: &EmbeddedStore, fqfn: &fnhost::names::Fqfn) -> anyhow::Result<f64> {
    store.checkpoint_state(fqfn)?;
    store.clock().advance(RUN_TTL * 2);
    let started = Instant::now();
    let mut removed = 0;
    loop {
        // Every key has expired: passes remove what they read until they come round to the
        // keys already removed (pending their checkpoint), and find nothing.
        let (swept, _) = store.sweep_expired()?;
        if swept == 0 {
            break;
        }
        removed += swept;
    }
    let elapsed = started.elapsed();
    Ok(removed as f64 / elapsed.as_secs_f64().max(1e-9))
}
