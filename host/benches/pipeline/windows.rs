//! Records per second through count and sliding time windows, beside the same pipeline without
//! windows (`windows`).

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use fnhost::embedded::EmbeddedStore;
use fnhost::engine::broker::OutMessage;
use fnhost::function::{FunctionConfig, Ordering, ProcessingGuarantee};
use fnhost::instance::{self, RunUntil};
use fnhost::limits::DEFAULT_WATERMARK_INTERVAL_MS;
use fnhost::metrics::Stats;
use fnhost::window::{Extent, TimeBase, WindowConfig, WindowSpec};

use crate::common::{Code, count_outputs, executors, native_exclamation, pipeline_config, produce, session_events};

/// Records per window in the windows part's count windows.
pub(crate) const WINDOW_RECORDS: u64 = 1_000;

/// The windows part's time windows: 10 s every 5 s, as in `examples/sliding-average`.
pub(crate) const WINDOW_LENGTH_MS: u64 = 10_000;

pub(crate) const WINDOW_SLIDE_MS: u64 = 5_000;

/// Least event time the windows part's records span.
pub(crate) const WINDOW_SPAN_MS: u64 = 100_000;

/// Records per second through window functions, beside the same pipeline without windows: the
/// user-counts guest over tumbling windows of `WINDOW_RECORDS` records and over sliding event-time
/// windows, against the exclamation guest (one output per record) over the same session events,
/// which carry event times 1 ms apart (further apart when there are fewer than `WINDOW_SPAN_MS`).
pub(crate) fn windows(exclamation: &Path, user_counts: &Path, messages: usize) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    // At least `WINDOW_SPAN_MS` of event time, so that even the quick mode's few records fill windows.
    let spacing = (WINDOW_SPAN_MS / messages as u64).max(1);
    let events: Vec<OutMessage> = session_events(messages)
        .into_iter()
        .enumerate()
        .map(|(i, event)| OutMessage { event_time: Some(i as u64 * spacing), ..event })
        .collect();
    let count = WindowConfig {
        spec: WindowSpec {
            length: Extent::Count(WINDOW_RECORDS),
            slide: Extent::Count(WINDOW_RECORDS),
            time: TimeBase::Processing,
        },
        late_data_topic: None,
    };
    let sliding = WindowConfig {
        spec: WindowSpec {
            length: Extent::DurationMs(WINDOW_LENGTH_MS),
            slide: Extent::DurationMs(WINDOW_SLIDE_MS),
            time: TimeBase::Event { max_lag_ms: 0, watermark_interval_ms: DEFAULT_WATERMARK_INTERVAL_MS },
        },
        late_data_topic: None,
    };
    let baseline = window_run(&scratch.path().join("none"), &events, exclamation, None)?;
    let rows = [
        ("exclamation guest, no windows (one output per record)", baseline),
        (
            "user-counts guest, tumbling windows of 1,000 records",
            window_run(&scratch.path().join("count"), &events, user_counts, Some(count))?,
        ),
        (
            "user-counts guest, 10 s windows every 5 s on event time",
            window_run(&scratch.path().join("sliding"), &events, user_counts, Some(sliding))?,
        ),
    ];
    println!();
    println!(
        "| window functions ({messages} records, ATLEAST_ONCE, 1 instance) | seconds | records/s | outputs | vs no windows |"
    );
    println!("|---|---|---|---|---|");
    for (name, (elapsed, outputs)) in rows {
        println!(
            "| {name} | {:.2} | {:.0} | {outputs} | {:.2} |",
            elapsed.as_secs_f64(),
            messages as f64 / elapsed.as_secs_f64(),
            baseline.0.as_secs_f64() / elapsed.as_secs_f64()
        );
    }
    Ok(())
}

/// One run of `wasm` over `events` (with `window` settings, if any) until they are drained;
/// returns the time and the outputs written.
pub(crate) fn window_run(
    dir: &Path,
    events: &[OutMessage],
    wasm: &Path,
    window: Option<WindowConfig>,
) -> anyhow::Result<(Duration, usize)> {
    let store = EmbeddedStore::open(dir)?;
    produce(&store, events)?;
    let config =
        FunctionConfig { window, ..pipeline_config(ProcessingGuarantee::AtLeastOnce, Ordering::Unordered, 1)? };
    let executors = executors(&store, &config, Code::Wasm(wasm), native_exclamation)?;
    let started = Instant::now();
    let stats = instance::run(&store, &config, executors, RunUntil::Idle, &AtomicBool::new(false))?;
    let elapsed = started.elapsed();
    let received: u64 = stats.iter().map(|instance| instance.received).sum();
    anyhow::ensure!(received as usize == events.len(), "only {received} of {} records arrived", events.len());
    let failures: u64 = stats.iter().map(|instance| instance.user_exceptions + instance.system_exceptions).sum();
    anyhow::ensure!(failures == 0, "{failures} failures: {:?}", stats.iter().find_map(Stats::last_exception));
    let written = count_outputs(&store)?;
    anyhow::ensure!(written > 0, "the run wrote no outputs");
    Ok((elapsed, written))
}
