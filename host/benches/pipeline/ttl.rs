//! State that expires (issue 31): what `--state-ttl` costs the live pipeline over 1,000,000
//! keys, beside the same pipeline without it, alternated; and how fast the embedded store's
//! sweep removes 1,000,000 expired keys afterwards.

use std::time::{Duration, Instant};

use fnhost::embedded::EmbeddedStore;
use fnhost::engine::state::StateStore;
use fnhost::function::{Ordering, ProcessingGuarantee};

use crate::common::{Code, Measured, Workload, pipeline_config, pipeline_measured_with, session_events_of};

/// A time to live that passes within the run, so that the cleaner's sweeps remove keys while the
/// pipeline writes.
const RUN_TTL: Duration = Duration::from_secs(1);

pub(crate) fn ttl(wasm: &std::path::Path, keys: usize, rounds: usize) -> anyhow::Result<()> {
    // Every user logs in once: `keys` keys, none removed by a logout.
    let events = session_events_of(keys, keys);
    let logins = Workload::sessions_of(keys, &events);
    let scratch = tempfile::tempdir()?;
    let config = pipeline_config(ProcessingGuarantee::AtLeastOnce, Ordering::Unordered, 1)?;
    let expiring = fnhost::function::FunctionConfig { state_ttl: Some(RUN_TTL), ..config.clone() };
    let mut measured: [Vec<Measured>; 2] = [Vec::new(), Vec::new()];
    let mut sweeps = Vec::new();
    for round in 0..rounds {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for run in order {
            let dir = scratch.path().join(format!("ttl-{round}-{run}"));
            let store = EmbeddedStore::open(&dir)?;
            let config = if run == 0 { &config } else { &expiring };
            measured[run].push(pipeline_measured_with(&store, &logins, Code::Wasm(wasm), config)?);
            if run == 1 {
                sweeps.push(sweep_all(&store, &config.fqfn)?);
            }
            drop(store);
            std::fs::remove_dir_all(&dir)?;
        }
    }
    let cost = |of: fn(&Measured) -> Duration| {
        let mut ratios: Vec<f64> = measured[1]
            .iter()
            .zip(&measured[0])
            .map(|(with, without)| of(with).as_secs_f64() / of(without).as_secs_f64())
            .collect();
        ratios.sort_by(f64::total_cmp);
        ratios[ratios.len() / 2] - 1.0
    };
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let rate = |run: usize| median(measured[run].iter().map(|run| keys as f64 / run.elapsed.as_secs_f64()).collect());
    println!(
        "| {keys} logins (one key each), ATLEAST_ONCE, median of {rounds} alternated runs | without TTL msg/s | with --state-ttl 1s msg/s | TTL's cost in elapsed time | in CPU time (medians of the rounds' ratios) | sweep of the {keys} expired keys afterwards, keys/s |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| session-duration | {:.0} | {:.0} | {:+.1}% | {:+.1}% | {:.0} |",
        rate(0),
        rate(1),
        cost(|run| run.elapsed) * 100.0,
        cost(|run| run.cpu) * 100.0,
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
        let (swept, scanned) = store.sweep_expired()?;
        removed += swept;
        // A pass that read less than it may has come to the end of the table.
        if scanned < fnhost::embedded::MAX_KEYS_SCANNED_PER_SWEEP {
            break;
        }
    }
    let elapsed = started.elapsed();
    Ok(removed as f64 / elapsed.as_secs_f64().max(1e-9))
}
