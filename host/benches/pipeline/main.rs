//! The pipeline benchmark: session events through `localrun`'s pipeline (embedded topic in,
//! function, sled state, output topic, durable batch commit), for the Rust guest and for the same
//! logic as a native Rust function in the host, with raw sled appends and reads as the storage
//! ceiling, all in one run.
//!
//! `throughput` runs only the native and guest session pipelines, alternated, and reports medians.
//! Further parts: produce-to-output latency at a fixed rate and at saturation (`latency`); how
//! throughput grows with message size and state size (`sizes`); the same session logic as a Rust,
//! Python and JavaScript guest, each beside its logic run natively (Rust in the host, CPython,
//! node), with first deployment (build and compile), restart from the compiled cache and instance
//! start per language (`languages`); idle instances in one worker (`density`); records per second
//! through count and sliding time windows beside the same pipeline without windows (`windows`).
//!
//! Run it with `scripts/bench` (which builds the guests first), or:
//! `cargo bench -p fnhost --bench pipeline -- PATH/TO/session_duration.wasm [MESSAGES] [all|throughput|guarantees|latency|sizes|languages|density|windows]`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use fnhost::embedded::EmbeddedStore;
use fnhost::engine::broker::{Broker, OutMessage, Position, SubscriptionSpec};
use fnhost::engine::state::StateStore;
use fnhost::function::{FunctionConfig, Ordering, ProcessingGuarantee};
use fnhost::function::{FunctionKind, Source};
use fnhost::guest_build::{Builder, WEVAL_OFF};
use fnhost::instance::{self, Executor, LogSink, MessageContext, NativeExecutor, RunUntil, WasmExecutor};
use fnhost::limits::{DEFAULT_WATERMARK_INTERVAL_MS, MAX_BATCH_MESSAGES, MAX_PARALLELISM};
use fnhost::metrics::Stats;
use fnhost::names::{Fqfn, SubscriptionName, TopicName};
use fnhost::runtime::{GuestMessage, HostContext, InstanceLimits, LogLevel, Runtime, RuntimeConfig};
use fnhost::spec::FunctionSpec;
use fnhost::window::{Extent, TimeBase, WindowConfig, WindowSpec};
use fnhost::worker::{Worker, WorkerConfig};

mod hostile;

use hostile::{HOSTILE_MESSAGES, hostile};

const USERS: usize = 10_000;

// The `fnhost` binary's allocator, so that the figures are the binary's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|arg| arg != "--bench").collect();
    if args.is_empty() {
        return quick();
    }
    let wasm =
        args.first().ok_or_else(|| anyhow::anyhow!("usage: pipeline PATH/TO/session_duration.wasm [MESSAGES]"))?;
    let messages: usize = args.get(1).map_or(Ok(1_000_000), |n| n.parse())?;
    let part = args.get(2).map_or("all", String::as_str);
    if !["all", "throughput", "guarantees", "latency", "sizes", "languages", "density", "windows", "cluster", "hostile"]
        .contains(&part)
    {
        anyhow::bail!(
            "unknown part `{part}`: give all, throughput, guarantees, latency, sizes, languages, density, windows, cluster or hostile"
        );
    }
    // scripts/bench builds the exclamation guest beside the session-duration one.
    let exclamation = Path::new(wasm).with_file_name("exclamation.wasm");
    if part == "throughput" {
        throughput(Path::new(wasm), messages, ROUNDS)?;
    }
    if part == "all" || part == "guarantees" {
        guarantees(Path::new(wasm), &exclamation, messages, ROUNDS)?;
    }
    if part == "all" || part == "latency" {
        latency(Path::new(wasm), messages.min(LATENCY_MESSAGES))?;
    }
    if part == "all" || part == "sizes" {
        sizes(Path::new(wasm), &exclamation, messages, SIZE_RUN_BYTES, &STATE_KEYS)?;
    }
    if part == "all" || part == "languages" {
        languages(Path::new(wasm), messages.min(LANGUAGE_MESSAGES))?;
    }
    if part == "all" || part == "density" {
        density(&exclamation, &DENSITY_STEPS)?;
    }
    if part == "all" || part == "windows" {
        windows(&exclamation, &Path::new(wasm).with_file_name("user_counts.wasm"), messages)?;
    }
    if part == "all" || part == "cluster" {
        cluster(Path::new(wasm), messages.min(CLUSTER_MESSAGES), ROUNDS)?;
    }
    if part == "all" || part == "hostile" {
        hostile(
            Path::new(wasm),
            &Path::new(wasm).with_file_name("misbehave.wasm"),
            messages.min(HOSTILE_MESSAGES),
            ROUNDS,
        )?;
    }
    Ok(())
}

/// Events per pipeline in the quick mode.
const QUICK_MESSAGES: usize = 2_000;
/// Bytes of messages in each of the quick mode's message-size runs.
const QUICK_SIZE_RUN_BYTES: usize = 16 << 20;
/// Idle instances in the quick mode's density part.
const QUICK_INSTANCES: usize = 100;

/// Every part on small inputs, when run without arguments (`cargo test --bench pipeline`, which
/// scripts/test runs), so that the benchmark cannot rot. Each part fails unless every message
/// succeeded and every instance started; how fast they were is not checked.
fn quick() -> anyhow::Result<()> {
    let guests = build_guests()?;
    let wasm = guests.join("session_duration.wasm");
    throughput(&wasm, QUICK_MESSAGES, 1)?;
    guarantees(&wasm, &guests.join("exclamation.wasm"), QUICK_MESSAGES, 1)?;
    latency(&wasm, QUICK_MESSAGES)?;
    sizes(&wasm, &guests.join("exclamation.wasm"), QUICK_MESSAGES, QUICK_SIZE_RUN_BYTES, &STATE_KEYS[..1])?;
    languages(&wasm, QUICK_MESSAGES)?;
    density(&guests.join("exclamation.wasm"), &[QUICK_INSTANCES])?;
    windows(&guests.join("exclamation.wasm"), &guests.join("user_counts.wasm"), QUICK_MESSAGES)?;
    cluster(&wasm, QUICK_MESSAGES, 1)?;
    hostile(&wasm, &guests.join("misbehave.wasm"), QUICK_MESSAGES, 1)
}

/// Builds the session-duration, exclamation, user-counts and misbehave guests in a target directory of the benchmark's
/// own (a nested build in the running one's would wait for its lock); returns their folder.
fn build_guests() -> anyhow::Result<std::path::PathBuf> {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-guests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .args([
            "build",
            "--target",
            "wasm32-wasip2",
            "--profile",
            "guest",
            "-p",
            "session-duration",
            "-p",
            "exclamation",
            "-p",
            "user-counts",
            "-p",
            "misbehave",
        ])
        .arg("--target-dir")
        .arg(&target)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "building the guests failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(target.join("wasm32-wasip2").join("guest"))
}

/// How many idle instances the density part measures at, in one worker.
const DENSITY_STEPS: [usize; 2] = [1_000, 10_000];
/// How long the density part watches the idle worker's CPU time at each step.
const IDLE_WATCH: Duration = Duration::from_secs(5);

/// A worker in this process, with its data directory and caches under `scratch`, for up to
/// `max_instances` instances.
fn in_process_worker(scratch: &Path, max_instances: u32) -> anyhow::Result<Worker> {
    let store = EmbeddedStore::open(&scratch.join("data"))?;
    // A compiled-component cache, as a worker has: functions after the first load rather than compile.
    let runtime = Runtime::new(RuntimeConfig { cache_dir: Some(scratch.join("compiled")), max_instances })?;
    let config = WorkerConfig {
        cache_dir: scratch.join("cache"),
        max_instances,
        cluster: None,
        access: Default::default(),
        disk_guard: None,
    };
    Worker::open(config, Arc::new(store), runtime)
}

/// Idle instances of the exclamation function in one in-process worker, created through the
/// worker's own API in functions of `MAX_PARALLELISM` instances: resident memory, the time to
/// start them, and the CPU the idle instances burn.
fn density(exclamation: &Path, steps: &[usize]) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let most = steps.iter().copied().max().unwrap_or_default();
    let worker = in_process_worker(scratch.path(), most as u32)?;
    let wasm = std::fs::read(exclamation)?;
    let before = resident_bytes()?;
    let maps =
        || fnhost::worker::memory_maps().ok_or_else(|| anyhow::anyhow!("no /proc/self/maps or vm.max_map_count"));
    let (maps_before, map_limit) = maps()?;
    println!();
    println!(
        "| idle exclamation instances in one worker | resident MiB | KiB per instance | memory maps per instance | start ms per instance | idle CPU (% of one core) |"
    );
    println!("|---|---|---|---|---|---|");
    let mut created = 0;
    let mut per_instance = 0;
    let mut maps_per_instance = 0;
    for &step in steps {
        // Past the kernel's limit on memory maps a thread cannot start and the process aborts.
        let maps_needed = maps_before + step * maps_per_instance * 5 / 4;
        if maps_per_instance > 0 && maps_needed > map_limit {
            println!(
                "| {step} | not run: needs about {maps_needed} memory maps, and vm.max_map_count is {map_limit} (`sysctl -w vm.max_map_count=262144`) | | | | |"
            );
            break;
        }
        let started = Instant::now();
        while created < step {
            let parallelism = (step - created).min(MAX_PARALLELISM as usize);
            let spec: FunctionSpec = serde_json::from_value(serde_json::json!({
                "name": format!("shout-{created}"),
                "inputs": [format!("words-{created}")],
                "parallelism": parallelism,
            }))?;
            worker.create(spec, Some(wasm.clone()))?;
            created += parallelism;
        }
        let start = started.elapsed();
        // The instances' threads reach their first idle wait before anything is read.
        std::thread::sleep(Duration::from_secs(1));
        let resident = resident_bytes()?;
        let cpu_before = cpu_time()?;
        std::thread::sleep(IDLE_WATCH);
        let idle = (cpu_time()? - cpu_before).as_secs_f64() / IDLE_WATCH.as_secs_f64();
        per_instance = resident.saturating_sub(before) / created as u64;
        maps_per_instance = maps()?.0.saturating_sub(maps_before).div_ceil(created);
        println!(
            "| {created} | {:.0} | {:.0} | {maps_per_instance} | {:.3} | {:.0} |",
            resident as f64 / (1 << 20) as f64,
            per_instance as f64 / 1024.0,
            start.as_secs_f64() * 1e3 / created as f64,
            idle * 100.0,
        );
    }
    let memory = memory_total_bytes()?;
    println!();
    let resident_before = before as f64 / (1 << 20) as f64;
    if per_instance == 0 {
        // Density runs after the other parts (in the quick mode and `all`): the instances may fit in memory they freed.
        println!(
            "Resident before the first instance: {resident_before:.0} MiB. The instances fit in memory the process had already: no figure per instance."
        );
    } else {
        println!(
            "Resident before the first instance: {resident_before:.0} MiB. At {:.0} KiB an instance, this machine's {:.1} GiB would hold about {} idle instances.",
            per_instance as f64 / 1024.0,
            memory as f64 / (1u64 << 30) as f64,
            memory.saturating_sub(before) / per_instance,
        );
    }
    let started = Instant::now();
    worker.shutdown();
    println!("Stopping all {created} took {:.1} s.", started.elapsed().as_secs_f64());
    Ok(())
}

/// The value of `field` (in kB) in a /proc file, in bytes.
fn proc_kilobytes(file: &str, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(file)?;
    let line =
        text.lines().find(|line| line.starts_with(field)).ok_or_else(|| anyhow::anyhow!("no {field} in {file}"))?;
    let kilobytes: u64 = line.split_whitespace().nth(1).ok_or_else(|| anyhow::anyhow!("bad {field} line"))?.parse()?;
    Ok(kilobytes * 1024)
}

fn resident_bytes() -> anyhow::Result<u64> {
    proc_kilobytes("/proc/self/status", "VmRSS:")
}

fn memory_total_bytes() -> anyhow::Result<u64> {
    proc_kilobytes("/proc/meminfo", "MemTotal:")
}

/// User and system CPU time of this process so far.
fn cpu_time() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name, which is in parentheses: utime and stime are the 12th and 13th.
    let after_name = stat.rsplit_once(')').ok_or_else(|| anyhow::anyhow!("bad /proc/self/stat"))?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // Linux reports these in USER_HZ, which is 100 on every architecture it supports.
    Ok(Duration::from_millis(ticks * 10))
}

/// Most events the language comparison pushes through each pipeline: the Python and JavaScript
/// guests take tens of microseconds per message.
const LANGUAGE_MESSAGES: usize = 100_000;
/// Instantiations timed per language.
const INSTANCE_STARTS: usize = 200;

/// How many times the throughput figures run the native function and the guest, alternately:
/// this virtual machine's speed drifts by a quarter within minutes, so one run of each says little.
const ROUNDS: usize = 5;

/// The session function natively and as the Rust guest under ATLEAST_ONCE, alternated `rounds`
/// times on fresh data directories; returns the median time of each.
fn alternated(wasm: &Path, sessions: &Workload<'_>, scratch: &Path, rounds: usize) -> anyhow::Result<[Duration; 2]> {
    let mut times = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for (code, times) in [Code::Native, Code::Wasm(wasm)].into_iter().zip(&mut times) {
            let dir = scratch.join(format!("alternated-{round}"));
            times.push(pipeline(&dir, sessions, code, (ProcessingGuarantee::AtLeastOnce, Ordering::Unordered, 1))?);
            std::fs::remove_dir_all(&dir)?;
        }
    }
    Ok(times.map(|mut times| {
        times.sort();
        times[times.len() / 2]
    }))
}

/// The first target's figures alone: the session function natively and as the Rust guest, the
/// median of `rounds` alternated runs each (also the part to run under a profiler).
fn throughput(wasm: &Path, messages: usize, rounds: usize) -> anyhow::Result<()> {
    let events = session_events(messages);
    let scratch = tempfile::tempdir()?;
    let [native, guest] = alternated(wasm, &Workload::sessions(&events), scratch.path(), rounds)?;
    let rate = |elapsed: Duration| messages as f64 / elapsed.as_secs_f64();
    println!(
        "| {messages} session events, ATLEAST_ONCE, median of {rounds} alternated runs | native msg/s | guest msg/s | guest time vs native |"
    );
    println!("|---|---|---|---|");
    println!(
        "| session-duration | {:.0} | {:.0} | {:.2} |",
        rate(native),
        rate(guest),
        guest.as_secs_f64() / native.as_secs_f64()
    );
    Ok(())
}

fn guarantees(wasm: &Path, exclamation: &Path, messages: usize, rounds: usize) -> anyhow::Result<()> {
    let events = session_events(messages);
    let scratch = tempfile::tempdir()?;
    let sessions = Workload::sessions(&events);

    let (append, read) = raw_storage(&scratch.path().join("raw"), &events)?;
    let run = |name: &str, code: Code<'_>, guarantee: ProcessingGuarantee, ordering: Ordering, parallelism: u32| {
        pipeline(&scratch.path().join(name), &sessions, code, (guarantee, ordering, parallelism))
    };
    let (unordered, by_key) = (Ordering::Unordered, Ordering::RetainKey);
    let guest = || Code::Wasm(wasm);
    let [native, at_least_once] = alternated(wasm, &sessions, scratch.path(), rounds)?;
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
fn stateless(wasm: &Path, messages: usize, scratch: &Path) -> anyhow::Result<()> {
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

/// Records per window in the windows part's count windows.
const WINDOW_RECORDS: u64 = 1_000;
/// The windows part's time windows: 10 s every 5 s, as in `examples/sliding-average`.
const WINDOW_LENGTH_MS: u64 = 10_000;
const WINDOW_SLIDE_MS: u64 = 5_000;
/// Least event time the windows part's records span.
const WINDOW_SPAN_MS: u64 = 100_000;

/// The messages in the output topic.
fn count_outputs(store: &dyn Broker) -> anyhow::Result<usize> {
    let outputs = store.subscribe(SubscriptionSpec::single(vec![output()], None, Position::Earliest))?;
    let mut written = 0;
    loop {
        let read = outputs.fetch(MAX_BATCH_MESSAGES, Duration::ZERO)?.len();
        if read == 0 {
            return Ok(written);
        }
        written += read;
    }
}

/// Records per second through window functions, beside the same pipeline without windows: the
/// user-counts guest over tumbling windows of `WINDOW_RECORDS` records and over sliding event-time
/// windows, against the exclamation guest (one output per record) over the same session events,
/// which carry event times 1 ms apart (further apart when there are fewer than `WINDOW_SPAN_MS`).
fn windows(exclamation: &Path, user_counts: &Path, messages: usize) -> anyhow::Result<()> {
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
fn window_run(
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

/// Most events of the latency part: it runs at a fixed rate, so its time grows with them.
const LATENCY_MESSAGES: usize = 200_000;
/// The fixed input rate of the latency part, in messages per second.
const LATENCY_RATE: f64 = 10_000.0;
/// The share of the saturated throughput at which the latency part also runs.
const LATENCY_LOAD: f64 = 0.8;
/// How long the latency part waits for an output before it gives up on the run.
const OUTPUT_PATIENCE: Duration = Duration::from_secs(60);

/// Produce-to-output latency of the session function, native and guest, under ATLEAST_ONCE with
/// one instance: at `LATENCY_RATE`, saturated (the producer appends as fast as it can, so later
/// messages wait behind the backlog), and at `LATENCY_LOAD` of the rate reached saturated.
fn latency(wasm: &Path, messages: usize) -> anyhow::Result<()> {
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
struct Latencies {
    /// Events appended per second while the producer ran.
    input_rate: f64,
    /// Events processed per second, from the first append to the last output (events after the
    /// last event with an output do not count).
    output_rate: f64,
    sorted: Vec<Duration>,
}

impl Latencies {
    /// The `quantile` (0 to 1) of the latencies, in milliseconds.
    fn percentile(&self, quantile: f64) -> f64 {
        let rank = (self.sorted.len() as f64 * quantile).ceil() as usize;
        self.sorted
            .get(rank.saturating_sub(1).min(self.sorted.len().saturating_sub(1)))
            .map_or(0.0, |latency| latency.as_secs_f64() * 1e3)
    }
}

/// Appends the workload's events at `rate` messages per second (as fast as appends go if `None`)
/// in appends of at most `MAX_BATCH_MESSAGES`, while one instance processes them and a consumer
/// of the output topic notes when each output arrives.
fn latency_run(dir: &Path, workload: &Workload<'_>, code: Code<'_>, rate: Option<f64>) -> anyhow::Result<Latencies> {
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

/// Message sizes of the sizes part, in bytes.
const MESSAGE_SIZES: [usize; 3] = [100, 1024, 64 * 1024];
/// Most bytes of messages in one message-size run: bounds the memory of the 64 KiB run.
const SIZE_RUN_BYTES: usize = 512 << 20;
/// Users of the sizes part's state runs: about this many keys are live in the function's state.
const STATE_KEYS: [usize; 4] = [1_000, 10_000, 100_000, 1_000_000];

/// How cost grows with work: the exclamation function on messages of each of `MESSAGE_SIZES`
/// (at most `run_bytes` of them per run) beside raw appends, and the session function with each
/// of `keys` users (at least two events per user, so that every user logs in and out).
fn sizes(session: &Path, exclamation: &Path, messages: usize, run_bytes: usize, keys: &[usize]) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let at_least_once = (ProcessingGuarantee::AtLeastOnce, Ordering::Unordered, 1);
    println!();
    println!(
        "| exclamation, message size | messages | raw append MB/s | native msg/s | guest msg/s | guest MB/s | guest time vs native |"
    );
    println!("|---|---|---|---|---|---|---|");
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
        let megabytes = (count * size) as f64 / 1e6;
        println!(
            "| {size} B | {count} | {:.0} | {:.0} | {:.0} | {:.1} | {:.2} |",
            megabytes / append.as_secs_f64(),
            count as f64 / native.as_secs_f64(),
            count as f64 / guest.as_secs_f64(),
            megabytes / guest.as_secs_f64(),
            guest.as_secs_f64() / native.as_secs_f64(),
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

/// One language's guest, built from its source as `fnhost localrun --py` or `--js` would.
struct Language {
    name: &'static str,
    source: Option<Source>,
    /// The builder for it, given its own cache directory.
    builder: fn(&Path) -> Builder,
    /// Its logic run natively, outside the sandbox.
    native: Duration,
}

fn languages(rust_wasm: &Path, messages: usize) -> anyhow::Result<()> {
    let events = session_events(messages);
    let scratch = tempfile::tempdir()?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ is in the workspace");
    // Python: `fnhost new`'s template, which writes an output per logout as the others do.
    let python = scratch.path().join("python/session.py");
    std::fs::create_dir_all(python.parent().expect("a folder"))?;
    let template = include_str!("../../src/cli/templates/python/function.py");
    std::fs::write(
        &python,
        template.replace("__NAME__", "session").replace("__MODULE__", "session").replace("__CLASS__", "Session"),
    )?;
    let js = Source::JavaScript { file: workspace.join("examples/js-session-duration/session_duration.js") };
    let interpreted = |dir: &Path| Builder::new(dir).interpreted_javascript();
    let node = native_script("node", &[workspace.join("host/benches/native/session.mjs").as_path()], messages, None)?;
    let mut languages = vec![
        Language {
            name: "Rust",
            source: None,
            builder: Builder::new,
            native: pipeline(
                &scratch.path().join("native"),
                &Workload::sessions(&events),
                Code::Native,
                (ProcessingGuarantee::AtLeastOnce, Ordering::Unordered, 1),
            )?,
        },
        Language {
            name: "Python",
            source: Some(Source::Python { file: python.clone(), classname: "session.Session".into() }),
            builder: Builder::new,
            native: native_script(
                "python3",
                &[workspace.join("host/benches/native/session.py").as_path(), &python],
                messages,
                Some(&workspace.join("guest-sdk/python/src")),
            )?,
        },
        Language { name: "JavaScript", source: Some(js.clone()), builder: interpreted, native: node },
    ];
    // scripts/bench names the weval it installed; without it there is no ahead-of-time build.
    let weval = std::env::var_os("FNHOST_WEVAL").filter(|value| value != WEVAL_OFF);
    if weval.is_some() {
        let name = "JavaScript, ahead of time (weval)";
        languages.push(Language { name, source: Some(js), builder: Builder::new, native: node });
    }
    println!();
    println!(
        "| language ({messages} session events, ATLEAST_ONCE, 1 instance) | build s | compile s | restart from cache ms | instance start p50 µs | p99 µs | guest msg/s | native msg/s | guest / native |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for language in &languages {
        let native = language.native;
        // weval takes its paths in one space-separated string, so folders are named without spaces.
        let folder: String = language.name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        // A builder of its own, so that the build is measured rather than found in the cache.
        let started = Instant::now();
        let wasm = match &language.source {
            None => rust_wasm.to_owned(),
            Some(source) => (language.builder)(&scratch.path().join(format!("build-{folder}")))
                .component(source, FunctionKind::Function)?,
        };
        let build = started.elapsed();
        let compiled = scratch.path().join(format!("compiled-{folder}"));
        let runtime = || Runtime::new(RuntimeConfig { cache_dir: Some(compiled.clone()), max_instances: 4 });
        let started = Instant::now();
        runtime()?.load(&wasm)?;
        let compile = started.elapsed();
        let (restart, starts) = starts(runtime()?, &wasm, &scratch.path().join(format!("starts-{folder}")))?;
        let elapsed = pipeline(
            &scratch.path().join(&folder),
            &Workload::sessions(&events),
            Code::Wasm(&wasm),
            (ProcessingGuarantee::AtLeastOnce, Ordering::Unordered, 1),
        )?;
        let rate = |elapsed: Duration| messages as f64 / elapsed.as_secs_f64();
        let build = if language.source.is_some() { format!("{:.1}", build.as_secs_f64()) } else { "(cargo)".into() };
        println!(
            "| {} | {build} | {:.2} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} |",
            language.name,
            compile.as_secs_f64(),
            restart.as_secs_f64() * 1e3,
            starts[starts.len() / 2].as_secs_f64() * 1e6,
            starts[starts.len() * 99 / 100].as_secs_f64() * 1e6,
            rate(elapsed),
            rate(native),
            rate(elapsed) / rate(native),
        );
    }
    Ok(())
}

/// A restart from the compiled cache (load, link, first instance), then `INSTANCE_STARTS`
/// instantiations from the linked function, sorted.
fn starts(runtime: Runtime, wasm: &Path, dir: &Path) -> anyhow::Result<(Duration, Vec<Duration>)> {
    let store = EmbeddedStore::open(dir)?;
    let fqfn = Fqfn::parse("public/default/starts")?;
    let config = FunctionConfig::new(fqfn.clone(), vec![input()]);
    let limits = InstanceLimits { memory_bytes: 128 << 20, timeout: Duration::from_secs(10) };
    let context = || -> anyhow::Result<MessageContext> {
        Ok(MessageContext::new(&config, 0, store.table(&fqfn)?, LogSink::default()))
    };
    let started = Instant::now();
    let code = runtime.load(wasm)?;
    let prepared = code.prepare::<MessageContext>()?;
    let details = Arc::new(config.details(code.digest(), 0, 1));
    let first =
        prepared.instantiate(context()?, details.clone(), limits).map_err(|(_, error)| anyhow::anyhow!("{error}"))?;
    let restart = started.elapsed();
    drop(first);
    let mut times = Vec::with_capacity(INSTANCE_STARTS);
    for _ in 0..INSTANCE_STARTS {
        let host = context()?;
        let started = Instant::now();
        let instance =
            prepared.instantiate(host, details.clone(), limits).map_err(|(_, error)| anyhow::anyhow!("{error}"))?;
        times.push(started.elapsed());
        drop(instance);
    }
    times.sort();
    Ok((restart, times))
}

/// Runs a native script over the benchmark's events; it prints the seconds its loop took.
fn native_script(
    program: &str,
    args: &[&Path],
    messages: usize,
    python_path: Option<&Path>,
) -> anyhow::Result<Duration> {
    let mut command = std::process::Command::new(program);
    command.args(args).args([messages.to_string(), USERS.to_string()]);
    if let Some(path) = python_path {
        command.env("PYTHONPATH", path);
    }
    let output = command.output().map_err(|error| anyhow::anyhow!("cannot run {program}: {error}"))?;
    anyhow::ensure!(output.status.success(), "{program} failed: {}", String::from_utf8_lossy(&output.stderr));
    let seconds: f64 = String::from_utf8_lossy(&output.stdout).trim().parse()?;
    Ok(Duration::from_secs_f64(seconds))
}

/// Logins and logouts for `USERS` users, alternating per user, as the seed's JSON.
fn session_events(count: usize) -> Vec<OutMessage> {
    session_events_of(USERS, count)
}

/// `count` session events of `users` users, in rounds: every user logs in, then every user logs out.
fn session_events_of(users: usize, count: usize) -> Vec<OutMessage> {
    (0..count)
        .map(|i| {
            let user = i % users;
            let round = i / users;
            let event = if round.is_multiple_of(2) { "login" } else { "logout" };
            let timestamp = 1_678_886_400 + round as u64 * 10;
            let value = format!(r#"{{"user_id": "user{user}", "event_type": "{event}", "timestamp": {timestamp}}}"#);
            OutMessage { key: Some(format!("user{user}")), ..OutMessage::new(value) }
        })
        .collect()
}

fn input() -> TopicName {
    TopicName::parse("input-topic").expect("a valid topic")
}

fn output() -> TopicName {
    TopicName::parse("outputs").expect("a valid topic")
}

fn produce(store: &EmbeddedStore, events: &[OutMessage]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for chunk in events.chunks(MAX_BATCH_MESSAGES) {
        store.produce(&input(), chunk.to_vec())?;
    }
    Ok(started.elapsed())
}

fn raw_storage(dir: &Path, events: &[OutMessage]) -> anyhow::Result<(Duration, Duration)> {
    let store = EmbeddedStore::open(dir)?;
    let append = produce(&store, events)?;
    let subscription = store.subscribe(SubscriptionSpec::single(vec![input()], None, Position::Earliest))?;
    let started = Instant::now();
    let mut read = 0;
    while read < events.len() {
        read += subscription.fetch(MAX_BATCH_MESSAGES, Duration::ZERO)?.len();
    }
    Ok((append, started.elapsed()))
}

#[derive(Clone, Copy)]
enum Code<'a> {
    Native,
    Wasm(&'a Path),
}

/// A function's logic run natively in the host.
type NativeFunction = fn(&GuestMessage, &mut MessageContext) -> Result<Option<Vec<u8>>, String>;

/// What a pipeline run pushes through, the same logic natively, and which events write an output.
struct Workload<'a> {
    events: &'a [OutMessage],
    native: NativeFunction,
    /// The index of the event behind each output, in output order (one instance keeps input order).
    output_sources: Vec<usize>,
}

impl<'a> Workload<'a> {
    /// The seed's session events: every logout (every other round of users) ends a session, unless
    /// a user's events were processed out of order.
    fn sessions(events: &'a [OutMessage]) -> Self {
        Self::sessions_of(USERS, events)
    }

    /// [`Workload::sessions`] of [`session_events_of`] with `users` users.
    fn sessions_of(users: usize, events: &'a [OutMessage]) -> Self {
        let output_sources = (0..events.len()).filter(|i| (i / users) % 2 == 1).collect();
        Self { events, native: native_session_duration, output_sources }
    }

    /// Words for the stateless exclamation function: an output for each.
    fn words(events: &'a [OutMessage]) -> Self {
        Self { events, native: native_exclamation, output_sources: (0..events.len()).collect() }
    }

    fn outputs(&self) -> usize {
        self.output_sources.len()
    }
}

/// The function's settings in every pipeline run: as `localrun` gives them, one output topic.
fn pipeline_config(
    guarantee: ProcessingGuarantee,
    ordering: Ordering,
    parallelism: u32,
) -> anyhow::Result<FunctionConfig> {
    let fqfn = Fqfn::parse("public/default/session-duration")?;
    Ok(FunctionConfig {
        output: Some(output()),
        limits: InstanceLimits { memory_bytes: 128 << 20, timeout: Duration::from_secs(10) },
        // Production setting: the function's info lines are filtered in the host, so the
        // benchmark measures processing, not the terminal.
        log_level: LogLevel::Warn,
        guarantee,
        ordering,
        parallelism,
        ..FunctionConfig::new(fqfn, vec![input()])
    })
}

/// One executor per instance of `config`, running `code` (or `native` for [`Code::Native`]).
fn executors(
    store: &dyn StateStore,
    config: &FunctionConfig,
    code: Code<'_>,
    native: NativeFunction,
) -> anyhow::Result<Vec<Box<dyn Executor>>> {
    let parallelism = config.parallelism;
    let logs = LogSink::default();
    let mut executors: Vec<Box<dyn Executor>> = Vec::new();
    let prepared = match code {
        Code::Native => None,
        Code::Wasm(path) => {
            let runtime = Runtime::new(RuntimeConfig { cache_dir: None, max_instances: parallelism + 1 })?;
            let function_code = runtime.load(path)?;
            Some((function_code.prepare::<MessageContext>()?, function_code.digest().to_owned()))
        }
    };
    for instance_id in 0..parallelism {
        let context = MessageContext::new(config, instance_id, store.table(&config.fqfn)?, logs.clone());
        executors.push(match &prepared {
            None => Box::new(NativeExecutor::new(native, context)),
            Some((function, digest)) => {
                let details = Arc::new(config.details(digest, instance_id, parallelism));
                Box::new(WasmExecutor::start(function.clone(), details, config.limits, context)?)
            }
        });
    }
    Ok(executors)
}

fn pipeline(
    dir: &Path,
    workload: &Workload<'_>,
    code: Code<'_>,
    (guarantee, ordering, parallelism): (ProcessingGuarantee, Ordering, u32),
) -> anyhow::Result<Duration> {
    let events = workload.events;
    let store = EmbeddedStore::open(dir)?;
    produce(&store, events)?;
    let config = pipeline_config(guarantee, ordering, parallelism)?;
    let executors = executors(&store, &config, code, workload.native)?;
    let started = Instant::now();
    let stats = instance::run(&store, &config, executors, RunUntil::Idle, &AtomicBool::new(false))?;
    let elapsed = started.elapsed();
    let succeeded: u64 = stats.iter().map(|instance| instance.succeeded).sum();
    anyhow::ensure!(
        succeeded as usize == events.len(),
        "{guarantee:?} {ordering:?} x{parallelism}: only {succeeded} of {} messages succeeded: {:?}",
        events.len(),
        stats.iter().find_map(|instance| instance.last_exception().map(|exception| exception.exception_string.clone()))
    );
    let written = count_outputs(&store)?;
    let expected = workload.outputs();
    anyhow::ensure!(written == expected, "{guarantee:?} {ordering:?} x{parallelism}: {written} outputs of {expected}");
    Ok(elapsed)
}

/// The exclamation example's logic, natively.
fn native_exclamation(message: &GuestMessage, _: &mut MessageContext) -> Result<Option<Vec<u8>>, String> {
    let mut output = message.value.clone();
    output.push(b'!');
    Ok(Some(output))
}

/// The session-duration example's logic, natively.
fn native_session_duration(message: &GuestMessage, ctx: &mut MessageContext) -> Result<Option<Vec<u8>>, String> {
    #[derive(serde::Serialize)]
    struct SessionEnded {
        user_id: String,
        duration: i64,
    }
    #[derive(serde::Deserialize)]
    struct Event {
        user_id: Option<String>,
        event_type: Option<String>,
        timestamp: Option<i64>,
    }
    let data = String::from_utf8_lossy(&message.value);
    let Ok(Event { user_id: Some(user), event_type: Some(kind), timestamp: Some(timestamp) }) =
        serde_json::from_str(&data)
    else {
        ctx.log(LogLevel::Warn, format!("Skipping malformed record: {data}"));
        return Ok(None);
    };
    match kind.as_str() {
        "login" => {
            ctx.put_state(user.clone(), timestamp.to_string().into_bytes()).map_err(|e| format!("{e:?}"))?;
            ctx.log(LogLevel::Info, format!("User {user} logged in at {timestamp}"));
            Ok(None)
        }
        "logout" => match ctx.get_state(user.clone()).map_err(|e| format!("{e:?}"))? {
            Some(login) => {
                let login: i64 = String::from_utf8_lossy(&login).parse().map_err(|e| format!("{e}"))?;
                let duration = timestamp - login;
                ctx.log(LogLevel::Info, format!("User {user} session duration: {duration} seconds"));
                ctx.delete_state(user.clone()).map_err(|e| format!("{e:?}"))?;
                let ended = SessionEnded { user_id: user, duration };
                Ok(Some(serde_json::to_vec(&ended).map_err(|e| e.to_string())?))
            }
            None => {
                ctx.log(LogLevel::Warn, format!("User {user} logged out without a prior login."));
                Ok(None)
            }
        },
        _ => Ok(None),
    }
}

/// Events per run of the cluster part: NATS is several times slower than sled here.
const CLUSTER_MESSAGES: usize = 200_000;
/// Messages per fetch in the raw JetStream ceiling, as the issue measured it.
const RAW_FETCH: usize = 500;

/// A `nats-server` with JetStream on a loopback port of its own and a scratch store, stopped on drop.
struct NatsServer {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let binary = std::env::var("FNHOST_NATS_SERVER").unwrap_or_else(|_| {
            if Path::new("/usr/sbin/nats-server").exists() {
                "/usr/sbin/nats-server".into()
            } else {
                "nats-server".into()
            }
        });
        let child = std::process::Command::new(&binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|error| anyhow::anyhow!("cannot run {binary} ({error}); apt-get install nats-server"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { child, url: format!("nats://127.0.0.1:{port}"), _dir: dir })
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The session-duration guest in cluster mode (one NATS server, the NATS engine under the same
/// pipeline), beside the engine's own ceiling measured on the same server (raw JetStream fetch in
/// batches of 500 with an acknowledgement per message) and beside the same fetches doing the raw
/// writes of the function's mapping, and of a batched state layout. Alternated, `rounds` times; medians.
fn cluster(wasm: &Path, messages: usize, rounds: usize) -> anyhow::Result<()> {
    let events = session_events(messages);
    let mut raw = Vec::new();
    let mut mapped = Vec::new();
    let mut batched = Vec::new();
    let mut guest = Vec::new();
    for round in 0..rounds {
        let server = NatsServer::start()?;
        raw.push(raw_jetstream(&server.url, &events, round, RawWork::FetchAndAck)?);
        mapped.push(raw_jetstream(&server.url, &events, round, RawWork::SessionMapping)?);
        batched.push(raw_jetstream(&server.url, &events, round, RawWork::BatchedState)?);
        let engine = fnhost::nats::NatsEngine::connect(&server.url, 1)?;
        let config = FunctionConfig {
            subscription: SubscriptionName::new("public", "default", &format!("bench-{round}"))?,
            ..pipeline_config(ProcessingGuarantee::AtLeastOnce, Ordering::Unordered, 1)?
        };
        for chunk in events.chunks(MAX_BATCH_MESSAGES) {
            engine.produce(&input(), chunk.to_vec())?;
        }
        let executors = executors(&engine, &config, Code::Wasm(wasm), native_session_duration)?;
        let started = Instant::now();
        let stats = instance::run(&engine, &config, executors, RunUntil::Idle, &AtomicBool::new(false))?;
        guest.push(started.elapsed());
        let succeeded: u64 = stats.iter().map(|instance| instance.succeeded).sum();
        anyhow::ensure!(
            succeeded as usize == events.len(),
            "cluster: {succeeded} of {} messages succeeded",
            events.len()
        );
        let written = count_outputs(&engine)?;
        let expected = Workload::sessions(&events).outputs();
        anyhow::ensure!(written == expected, "cluster: {written} outputs of {expected}");
    }
    let rate = |times: &mut Vec<Duration>| {
        times.sort();
        messages as f64 / times[times.len() / 2].as_secs_f64()
    };
    let (raw, mapped, batched, guest) = (rate(&mut raw), rate(&mut mapped), rate(&mut batched), rate(&mut guest));
    println!();
    println!(
        "| cluster mode, one NATS server, {messages} events, median of {rounds} | messages/s | of the ceiling | of the mapping's own work |"
    );
    println!("|---|---|---|---|");
    println!("| raw JetStream fetch ({RAW_FETCH}) and ack (ceiling) | {raw:.0} | 1.00 | |");
    println!(
        "| raw JetStream fetch, the session mapping's writes, ack (no wasm, no host) | {mapped:.0} | {:.2} | 1.00 |",
        mapped / raw
    );
    println!(
        "| raw JetStream fetch, the outputs and one state message per batch, ack (no wasm, no host) | {batched:.0} | {:.2} | |",
        batched / raw
    );
    println!("| session-duration guest, ATLEAST_ONCE | {guest:.0} | {:.2} | {:.2} |", guest / raw, guest / mapped);
    Ok(())
}

/// What a raw JetStream consumer does with each fetched batch.
#[derive(Clone, Copy, PartialEq)]
enum RawWork {
    /// Acknowledge each message: what any JetStream consumer pays.
    FetchAndAck,
    /// First write what the session function's mapping writes, with every write's server
    /// acknowledgement awaited (a key-value put for a login, a key-value delete and an output
    /// message with a `Nats-Msg-Id` for a logout), then acknowledge each message: the least any
    /// host of this function on this mapping can do, with no wasm, JSON or bookkeeping.
    SessionMapping,
    /// As `SessionMapping`, but with the batch's state changes written as one message: the
    /// least a host could do with a state layout other than the issue's key-value bucket, since
    /// each output must still be a message of its own.
    BatchedState,
}

/// Publishes `events` to a stream of their own, then times fetching them in batches of
/// `RAW_FETCH` through a durable pull consumer and doing `work` with each batch.
fn raw_jetstream(url: &str, events: &[OutMessage], round: usize, work: RawWork) -> anyhow::Result<Duration> {
    use futures_util::StreamExt as _;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let client = async_nats::connect(url).await?;
        let jetstream = async_nats::jetstream::new(client.clone());
        let prefix = match work {
            RawWork::FetchAndAck => format!("raw{round}"),
            RawWork::SessionMapping => format!("mapped{round}"),
            RawWork::BatchedState => format!("batched{round}"),
        };
        let stream = jetstream
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: prefix.to_uppercase(),
                subjects: vec![format!("{prefix}.>")],
                ..Default::default()
            })
            .await?;
        jetstream
            .create_key_value(async_nats::jetstream::kv::Config {
                bucket: format!("{prefix}-state"),
                ..Default::default()
            })
            .await?;
        let mut acks = Vec::new();
        for event in events {
            acks.push(jetstream.publish(format!("{prefix}.events"), event.value.clone().into()).await?);
        }
        for ack in acks {
            ack.await?;
        }
        let consumer: async_nats::jetstream::consumer::PullConsumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                durable_name: Some("raw".into()),
                ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await?;
        let started = Instant::now();
        let mut acknowledged = 0;
        while acknowledged < events.len() {
            let mut batch = consumer.fetch().max_messages(RAW_FETCH).messages().await?;
            let mut messages = Vec::new();
            while let Some(message) = batch.next().await {
                messages.push(message.map_err(|e| anyhow::anyhow!("{e}"))?);
            }
            if work != RawWork::FetchAndAck {
                let mut writes = Vec::new();
                let mut changes = Vec::new();
                for message in &messages {
                    let event = std::str::from_utf8(&message.payload)?;
                    let user = event.split('"').nth(3).ok_or_else(|| anyhow::anyhow!("no user in {event}"))?;
                    // The key-value bucket's own subjects, so its writes are pipelined like the outputs.
                    let key = || format!("$KV.{prefix}-state.{user}");
                    let login = event.contains("login");
                    if work == RawWork::BatchedState {
                        changes.extend_from_slice(user.as_bytes());
                        changes.extend_from_slice(if login { b"=1678886400;" } else { b";" });
                    } else if login {
                        writes.push(jetstream.publish(key(), "1678886400".into()).await?);
                    } else {
                        let mut delete = async_nats::HeaderMap::new();
                        delete.insert("KV-Operation", "DEL");
                        writes.push(jetstream.publish_with_headers(key(), delete, "".into()).await?);
                    }
                    if !login {
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert(
                            "Nats-Msg-Id",
                            message.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence.to_string(),
                        );
                        let output = format!(r#"{{"user_id":"{user}","duration":10}}"#);
                        writes.push(
                            jetstream.publish_with_headers(format!("{prefix}.outputs"), headers, output.into()).await?,
                        );
                    }
                }
                if work == RawWork::BatchedState {
                    writes.push(jetstream.publish(format!("{prefix}.state"), changes.into()).await?);
                }
                for write in writes {
                    write.await?;
                }
            }
            for message in messages {
                message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                acknowledged += 1;
            }
        }
        client.flush().await?;
        anyhow::Ok(started.elapsed())
    })
}
