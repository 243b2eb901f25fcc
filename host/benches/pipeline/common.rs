//! What the parts share: the session workload and its native twin, the pipeline they run
//! through (`localrun`'s, on the embedded engine), its executors, and the machine's counters.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use fnhost::embedded::EmbeddedStore;
use fnhost::engine::broker::{Broker, OutMessage, Position, SubscriptionSpec};
use fnhost::engine::state::StateStore;
use fnhost::function::{FunctionConfig, Ordering, ProcessingGuarantee, SharedLogLevel};
use fnhost::instance::{
    self, Executor, FunctionLauncher, LogSink, MessageContext, NativeExecutor, RunUntil, WasmExecutor,
};
use fnhost::limits::MAX_BATCH_MESSAGES;
use fnhost::names::{Fqfn, TopicName};
use fnhost::runtime::{GuestMessage, HostContext, InstanceLimits, LogLevel, Runtime, RuntimeConfig};
use fnhost::worker::{Worker, WorkerConfig};

pub(crate) const USERS: usize = 10_000;

// The `fnhost` binary's allocator, so that the figures are the binary's.

/// A worker in this process, with its data directory and caches under `scratch`, for up to
/// `max_instances` instances.
pub(crate) fn in_process_worker(scratch: &Path, max_instances: u32) -> anyhow::Result<Worker> {
    let store = EmbeddedStore::open(&scratch.join("data"))?;
    // A compiled-component cache, as a worker has: functions after the first load rather than compile.
    let runtime = Runtime::new(RuntimeConfig { cache_dir: Some(scratch.join("compiled")), max_instances })?;
    let config = WorkerConfig {
        cache_dir: scratch.join("cache"),
        max_instances,
        cluster: None,
        access: Default::default(),
        disk_guard: None,
        batch_max_delay: Duration::ZERO,
    };
    Worker::open(config, Arc::new(store), runtime)
}

/// The value of `field` (in kB) in a /proc file, in bytes.
pub(crate) fn proc_kilobytes(file: &str, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(file)?;
    let line =
        text.lines().find(|line| line.starts_with(field)).ok_or_else(|| anyhow::anyhow!("no {field} in {file}"))?;
    let kilobytes: u64 = line.split_whitespace().nth(1).ok_or_else(|| anyhow::anyhow!("bad {field} line"))?.parse()?;
    Ok(kilobytes * 1024)
}

pub(crate) fn resident_bytes() -> anyhow::Result<u64> {
    proc_kilobytes("/proc/self/status", "VmRSS:")
}

pub(crate) fn memory_total_bytes() -> anyhow::Result<u64> {
    proc_kilobytes("/proc/meminfo", "MemTotal:")
}

/// The CPU time so far of `clock` (this process, or the calling thread).
pub(crate) fn cpu_time(clock: rustix::time::ClockId) -> Duration {
    let time = rustix::time::clock_gettime(clock);
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

/// How many times the throughput figures run the native function and the guest, alternately:
/// this virtual machine's speed drifts by a quarter within minutes, so one run of each says little.
pub(crate) const ROUNDS: usize = 5;

/// The messages in the output topic.
pub(crate) fn count_outputs(store: &dyn Broker) -> anyhow::Result<usize> {
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

/// Logins and logouts for `USERS` users, alternating per user, as the seed's JSON.
pub(crate) fn session_events(count: usize) -> Vec<OutMessage> {
    session_events_of(USERS, count)
}

/// `count` session events of `users` users, in rounds: every user logs in, then every user logs out.
pub(crate) fn session_events_of(users: usize, count: usize) -> Vec<OutMessage> {
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

pub(crate) fn input() -> TopicName {
    TopicName::parse("input-topic").expect("a valid topic")
}

pub(crate) fn output() -> TopicName {
    TopicName::parse("outputs").expect("a valid topic")
}

pub(crate) fn produce(store: &EmbeddedStore, events: &[OutMessage]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for chunk in events.chunks(MAX_BATCH_MESSAGES) {
        store.produce(&input(), chunk.to_vec())?;
    }
    Ok(started.elapsed())
}

pub(crate) fn raw_storage(dir: &Path, events: &[OutMessage]) -> anyhow::Result<(Duration, Duration)> {
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
pub(crate) enum Code<'a> {
    Native,
    Wasm(&'a Path),
    /// The guest with commits that keep no history (what each message changed, and the values
    /// before): the cost of history, measured.
    WasmWithoutHistory(&'a Path),
}

/// A function's logic run natively in the host.
pub(crate) type NativeFunction = fn(&GuestMessage, &mut MessageContext) -> Result<Option<Vec<u8>>, String>;

/// What a pipeline run pushes through, the same logic natively, and which events write an output.
pub(crate) struct Workload<'a> {
    pub(crate) events: &'a [OutMessage],
    pub(crate) native: NativeFunction,
    /// The index of the event behind each output, in output order (one instance keeps input order).
    pub(crate) output_sources: Vec<usize>,
}

impl<'a> Workload<'a> {
    /// The seed's session events: every logout (every other round of users) ends a session, unless
    /// a user's events were processed out of order.
    pub(crate) fn sessions(events: &'a [OutMessage]) -> Self {
        Self::sessions_of(USERS, events)
    }

    /// [`Workload::sessions`] of [`session_events_of`] with `users` users.
    pub(crate) fn sessions_of(users: usize, events: &'a [OutMessage]) -> Self {
        let output_sources = (0..events.len()).filter(|i| (i / users) % 2 == 1).collect();
        Self { events, native: native_session_duration, output_sources }
    }

    /// Words for the stateless exclamation function: an output for each.
    pub(crate) fn words(events: &'a [OutMessage]) -> Self {
        Self { events, native: native_exclamation, output_sources: (0..events.len()).collect() }
    }

    pub(crate) fn outputs(&self) -> usize {
        self.output_sources.len()
    }
}

/// The function's settings in every pipeline run: as `localrun` gives them, one output topic.
pub(crate) fn pipeline_config(
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
        log_level: SharedLogLevel::new(LogLevel::Warn),
        guarantee,
        ordering,
        parallelism,
        ..FunctionConfig::new(fqfn, vec![input()])
    })
}

/// One executor per instance of `config`, running `code` (or `native` for [`Code::Native`]).
pub(crate) fn executors(
    store: &dyn StateStore,
    config: &FunctionConfig,
    code: Code<'_>,
    native: NativeFunction,
) -> anyhow::Result<Vec<Box<dyn Executor>>> {
    match code {
        Code::Native => (0..config.parallelism)
            .map(|instance_id| {
                let context = MessageContext::new(config, instance_id, store.table(&config.fqfn)?, LogSink::default());
                Ok(Box::new(NativeExecutor::new(native, context)) as Box<dyn Executor>)
            })
            .collect(),
        Code::WasmWithoutHistory(path) => {
            let runtime = Runtime::new(RuntimeConfig { cache_dir: None, max_instances: config.parallelism + 1 })?;
            let code = runtime.load(path)?;
            let function = code.prepare::<MessageContext>()?;
            (0..config.parallelism)
                .map(|instance_id| {
                    let context =
                        MessageContext::new(config, instance_id, store.table(&config.fqfn)?, LogSink::default());
                    let details = Arc::new(config.details(code.digest(), instance_id, config.parallelism));
                    let executor = WasmExecutor::start(function.clone(), details, config.limits, context)
                        .map_err(|error| anyhow::anyhow!("the guest did not start: {error}"))?;
                    Ok(Box::new(executor) as Box<dyn Executor>)
                })
                .collect()
        }
        Code::Wasm(path) => {
            let runtime = Runtime::new(RuntimeConfig { cache_dir: None, max_instances: config.parallelism + 1 })?;
            let code = runtime.load(path)?;
            let launcher = FunctionLauncher::new(
                config,
                code.prepare::<MessageContext>()?,
                code.digest(),
                store,
                LogSink::default(),
            )?;
            Ok(launcher.executors()?)
        }
    }
}

pub(crate) fn pipeline(
    dir: &Path,
    workload: &Workload<'_>,
    code: Code<'_>,
    settings: (ProcessingGuarantee, Ordering, u32),
) -> anyhow::Result<Duration> {
    Ok(pipeline_measured(dir, workload, code, settings)?.elapsed)
}

/// How long a pipeline run took, and the CPU time the process spent in it.
pub(crate) struct Measured {
    pub(crate) elapsed: Duration,
    pub(crate) cpu: Duration,
}

/// The median over rounds of `with`'s cost against `without` (the same round's run without the
/// feature), as `of` measures it: 0.03 is 3% more.
pub(crate) fn median_cost(with: &[Measured], without: &[Measured], of: fn(&Measured) -> Duration) -> f64 {
    let mut ratios: Vec<f64> =
        with.iter().zip(without).map(|(with, without)| of(with).as_secs_f64() / of(without).as_secs_f64()).collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2] - 1.0
}

/// The median rate of runs that each took `items` through.
pub(crate) fn median_rate(runs: &[Measured], items: usize) -> f64 {
    let mut rates: Vec<f64> = runs.iter().map(|run| items as f64 / run.elapsed.as_secs_f64()).collect();
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// [`pipeline`], also measuring its CPU time.
pub(crate) fn pipeline_measured(
    dir: &Path,
    workload: &Workload<'_>,
    code: Code<'_>,
    (guarantee, ordering, parallelism): (ProcessingGuarantee, Ordering, u32),
) -> anyhow::Result<Measured> {
    let config = pipeline_config(guarantee, ordering, parallelism)?;
    pipeline_measured_with(&EmbeddedStore::open(dir)?, workload, code, &config)
}

/// [`pipeline_measured`] on `store` with `config` as it is.
pub(crate) fn pipeline_measured_with(
    store: &EmbeddedStore,
    workload: &Workload<'_>,
    code: Code<'_>,
    config: &FunctionConfig,
) -> anyhow::Result<Measured> {
    let (guarantee, ordering, parallelism) = (config.guarantee, config.ordering, config.parallelism);
    let events = workload.events;
    produce(store, events)?;
    let config = config.clone();
    let executors = executors(store, &config, code, workload.native)?;
    let cpu_before = cpu_time(rustix::time::ClockId::ProcessCPUTime);
    let started = Instant::now();
    let stats = instance::run(store, &config, executors, RunUntil::Idle, &AtomicBool::new(false))?;
    let elapsed = started.elapsed();
    let cpu = cpu_time(rustix::time::ClockId::ProcessCPUTime).saturating_sub(cpu_before);
    let succeeded: u64 = stats.iter().map(|instance| instance.succeeded).sum();
    anyhow::ensure!(
        succeeded as usize == events.len(),
        "{guarantee:?} {ordering:?} x{parallelism}: only {succeeded} of {} messages succeeded: {:?}",
        events.len(),
        stats.iter().find_map(|instance| instance.last_exception().map(|exception| exception.exception_string.clone()))
    );
    let written = count_outputs(store)?;
    let expected = workload.outputs();
    anyhow::ensure!(written == expected, "{guarantee:?} {ordering:?} x{parallelism}: {written} outputs of {expected}");
    Ok(Measured { elapsed, cpu })
}

/// The exclamation example's logic, natively.
pub(crate) fn native_exclamation(message: &GuestMessage, _: &mut MessageContext) -> Result<Option<Vec<u8>>, String> {
    let mut output = message.value.clone();
    output.push(b'!');
    Ok(Some(output))
}

/// The session-duration example's logic, natively.
pub(crate) fn native_session_duration(
    message: &GuestMessage,
    ctx: &mut MessageContext,
) -> Result<Option<Vec<u8>>, String> {
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
