//! The WebAssembly runtime: the only module that uses wasmtime.
//!
//! One [`Runtime`] holds the engine; [`Runtime::load`] turns a component file into a
//! [`FunctionCode`] (compiled once, then cached on disk); [`FunctionCode::prepare`] links it
//! against the context into a [`PreparedFunction`]; and [`PreparedFunction::instantiate`] makes an
//! [`Instance`] with its own store, memory cap and time limit.
//! The runtime knows nothing of topics or state: every context call goes to a [`HostContext`]
//! that the caller provides.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, ComponentExportIndex, HasSelf, InstancePre, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;

mod environment;
mod instance;
mod stdio;
mod store;

pub use environment::GuestReads;
pub use instance::Instance;
pub use store::StoreData;

use self::environment::Environment;
use self::instance::{Exports, describe_trap, next_check};
use self::stdio::GuestOutput;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "function",
    });
}

use bindings::fnhost::function::{context, types};
pub use context::Identity;
pub use types::{ContextError, LogLevel, Message as GuestMessage, Window as GuestWindow};

/// How often the epoch ticks; per-message time limits are rounded up to it.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Most ticks a running guest goes without the store asking whether its instance was told to
/// stop (20 ticks, 100 ms): a stop interrupts even a guest with an hour's time limit.
const STOP_CHECK_TICKS: u64 = 20;

/// What the host does for a function's context calls.
///
/// Implemented by the instance loop; the runtime only forwards to it.
pub trait HostContext: Send + 'static {
    /// A log line from the function (or a line it wrote to stdout or stderr).
    fn log(&mut self, level: LogLevel, message: String);
    /// One observation of a user metric.
    fn record_metric(&mut self, name: String, value: f64);
    /// The value under `key`, as the function would see it now.
    fn get_state(&mut self, key: String) -> Result<Option<Vec<u8>>, ContextError>;
    /// Stores bytes under `key`.
    fn put_state(&mut self, key: String, value: Vec<u8>) -> Result<(), ContextError>;
    /// Stores bytes under `key` for `ttl_ms` milliseconds from the commit.
    fn put_state_ttl(&mut self, key: String, value: Vec<u8>, ttl_ms: u64) -> Result<(), ContextError>;
    /// A page of the function's state keys, as the function would see them now.
    fn list_state_keys(
        &mut self,
        prefix: String,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<String>, ContextError>;
    /// Removes `key`.
    fn delete_state(&mut self, key: String) -> Result<(), ContextError>;
    /// Adds to the counter `key` and returns its new value.
    fn incr_counter(&mut self, key: String, amount: i64) -> Result<i64, ContextError>;
    /// The counter `key`.
    fn get_counter(&mut self, key: String) -> Result<i64, ContextError>;
    /// Publishes a message to `topic`.
    fn publish(
        &mut self,
        topic: String,
        value: Vec<u8>,
        key: Option<String>,
        properties: Vec<(String, String)>,
    ) -> Result<(), ContextError>;
    /// Acknowledges the current message.
    fn ack(&mut self);
    /// The lowest level [`HostContext::log`] writes.
    fn min_log_level(&mut self) -> LogLevel;
    /// True once the instance was told to stop: a running call is interrupted at the store's next
    /// check, and its message is left for the next delivery.
    fn stop_requested(&self) -> bool {
        false
    }
    /// The function finished the current message of a batch with `result` at `finished_at`
    /// (the next message starts then: one clock read serves both); the answer says whether it
    /// should go on with the next one.
    /// `reads` says whether the message read the clock or random numbers.
    fn finish_message(
        &mut self,
        result: Result<Option<Vec<u8>>, ProcessError>,
        finished_at: Instant,
        reads: GuestReads,
    ) -> bool;
}

/// What a function can ask about itself: fixed for the life of an instance.
#[derive(Clone, Debug)]
pub struct FunctionDetails {
    /// Who the function and the instance are.
    pub identity: Identity,
    /// Fully qualified input topic names.
    pub input_topics: Vec<String>,
    /// Fully qualified output topic name.
    pub output_topic: Option<String>,
    /// User config: each top-level key with its value as JSON text.
    pub user_config: BTreeMap<String, String>,
    /// Secrets by name.
    pub secrets: BTreeMap<String, String>,
    /// Whether its clocks and random numbers depend on the message alone (`--deterministic`).
    pub deterministic: bool,
}

/// Engine settings shared by every function of a runtime.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Where compiled components are cached, or `None` to compile every time.
    pub cache_dir: Option<PathBuf>,
    /// How many instances may exist at once (the size of the pooling allocator).
    pub max_instances: u32,
}

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read the component {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not WebAssembly.
    #[error(
        "{path} is not a WebAssembly file (it does not start with \\0asm); pass the .wasm component your build produced"
    )]
    NotWasm {
        /// The file.
        path: String,
    },
    /// The file is a core module, not a component.
    #[error(
        "{path} is a core WebAssembly module, not a component; build it with `cargo build --target wasm32-wasip2` (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule {
        /// The file.
        path: String,
    },
    /// The component does not validate or compile.
    #[error("{path} is not a valid WebAssembly component: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What wasmtime said.
        reason: String,
    },
    /// The component is valid but is not an fnhost function.
    #[error(
        "{path} does not implement the fnhost:function/function world ({reason}); build it against wit/function.wit, for example with the fnhost-guest SDK"
    )]
    NotAFunction {
        /// The file.
        path: String,
        /// What linking said.
        reason: String,
    },
    /// The engine could not be set up.
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
}

/// Why processing one message failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ProcessError {
    /// The function returned an error: a user exception. The instance stays usable.
    #[error("user exception: {0}")]
    User(String),
    /// The instance trapped, ran out of time or memory: a system exception. The instance must be replaced.
    #[error("system exception: {0}")]
    System(String),
    /// The host's storage failed while the function ran (a state read, say): not the message's
    /// fault, so it is neither counted as a try nor dead-lettered. The instance stops uncommitted
    /// and is started again, and the message comes again.
    #[error("host failure: {0}")]
    Host(String),
}

/// The environment variable that, when set, makes compiled guest code visible to `perf`.
pub const PERF_MAP_VARIABLE: &str = "FNHOST_PERFMAP";

/// The wasm engine and the settings every instance shares.
pub struct Runtime {
    engine: Engine,
    config: RuntimeConfig,
}

impl Runtime {
    /// Builds the engine and starts the epoch ticker that enforces time limits.
    pub fn new(config: RuntimeConfig) -> Result<Self, LoadError> {
        let mut wasm = Config::new();
        wasm.wasm_component_model(true);
        wasm.epoch_interruption(true);
        // Component-model async is unused; turning it off makes every call cheaper.
        wasm.concurrency_support(false);
        // For `perf report`: wasmtime writes /tmp/perf-PID.map, naming the guests' functions.
        if std::env::var_os(PERF_MAP_VARIABLE).is_some() {
            wasm.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let instances = config.max_instances.max(1);
        let mut pool = PoolingAllocationConfig::default();
        // Components from all three SDKs have one linear memory. Each memory slot reserves 4 GiB
        // of address space (so that compiled code needs no bounds checks), and x86-64 gives a
        // process 128 TiB: a slot per instance is what lets a worker hold MAX_WORKER_INSTANCES.
        pool.total_component_instances(instances)
            .total_core_instances(instances.saturating_mul(8))
            .total_memories(instances)
            .total_tables(instances.saturating_mul(8))
            .max_memory_size(crate::limits::MAX_RAM_BYTES as usize);
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(|error| LoadError::Engine(format!("{error:#}")))?;
        let weak = engine.weak();
        thread::Builder::new()
            .name("fnhost-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|error| LoadError::Engine(error.to_string()))?;
        Ok(Self { engine, config })
    }

    /// Reads, validates and compiles (or loads from the cache) the component at `path`.
    pub fn load(&self, path: &Path) -> Result<FunctionCode, LoadError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read { path: shown.clone(), source })?;
        self.load_bytes(&bytes, &shown)
    }

    /// Validates and compiles (or loads from the cache) a component given as bytes; `shown` names
    /// it in errors.
    pub fn load_bytes(&self, bytes: &[u8], shown: &str) -> Result<FunctionCode, LoadError> {
        let shown = shown.to_owned();
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(LoadError::NotWasm { path: shown });
        }
        if bytes[4..8] == [1, 0, 0, 0] {
            return Err(LoadError::CoreModule { path: shown });
        }
        let digest = hex(&Sha256::digest(bytes));
        let component = match &self.config.cache_dir {
            Some(dir) => self.load_cached(dir, &digest, bytes, &shown)?,
            None => self.compile(bytes, &shown)?,
        };
        Ok(FunctionCode { engine: self.engine.clone(), component, digest, path: shown })
    }

    fn compile(&self, bytes: &[u8], shown: &str) -> Result<Component, LoadError> {
        Component::from_binary(&self.engine, bytes)
            .map_err(|error| LoadError::Invalid { path: shown.into(), reason: format!("{error:#}") })
    }

    fn load_cached(&self, dir: &Path, digest: &str, bytes: &[u8], shown: &str) -> Result<Component, LoadError> {
        let mut hasher = DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut hasher);
        let file = dir.join(format!("{digest}-{:016x}.cwasm", hasher.finish()));
        if file.exists() {
            match deserialize(&self.engine, &file) {
                Ok(component) => {
                    tracing::info!("loaded {shown} from the compiled-component cache");
                    return Ok(component);
                }
                Err(error) => tracing::warn!("ignoring unusable cached component {}: {error:#}", file.display()),
            }
        }
        let started = Instant::now();
        let component = self.compile(bytes, shown)?;
        tracing::info!("compiled {shown} in {} ms", started.elapsed().as_millis());
        let written = component.serialize().map_err(std::io::Error::other).and_then(|compiled| {
            std::fs::create_dir_all(dir)?;
            let partial = file.with_extension(format!("partial-{}", std::process::id()));
            std::fs::write(&partial, compiled)?;
            std::fs::rename(&partial, &file)
        });
        if let Err(error) = written {
            tracing::warn!("cannot cache the compiled component in {}: {error}", dir.display());
        }
        Ok(component)
    }
}

/// Loads a compiled component that this process (or an earlier one with the same engine) wrote.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, file: &Path) -> wasmtime::Result<Component> {
    // SAFETY: the file is in fnhost's own cache directory, was written by `Component::serialize`
    // with an engine whose compatibility hash is part of its name, and is replaced atomically, so
    // it is never a partial or foreign artifact. wasmtime also checks its header and version.
    unsafe { Component::deserialize_file(engine, file) }
}

/// A compiled component, not yet linked.
pub struct FunctionCode {
    engine: Engine,
    component: Component,
    digest: String,
    path: String,
}

impl FunctionCode {
    /// The SHA-256 of the component file, in hex: the function's version.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Links the component against the context, checking that it is an fnhost function (of the
    /// `function` world) or window function (of the `window-function` world).
    pub fn prepare<H: HostContext>(&self) -> Result<PreparedFunction<H>, LoadError> {
        let not_a_function = |reason: String| LoadError::NotAFunction { path: self.path.clone(), reason };
        let mut linker = Linker::<StoreData<H>>::new(&self.engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        bindings::Function::add_to_linker::<StoreData<H>, HasSelf<StoreData<H>>>(&mut linker, |data| data)
            .map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let instance_pre =
            linker.instantiate_pre(&self.component).map_err(|error| not_a_function(format!("{error:#}")))?;
        let exports = match self.component.get_export_index(None, PROCESS_WINDOW) {
            Some(process_window) => PreparedExports::Window {
                pre: instance_pre,
                process_window,
                event_times: self.component.get_export_index(None, EVENT_TIMES),
            },
            None => PreparedExports::Batch(bindings::FunctionPre::new(instance_pre).map_err(|error| {
                not_a_function(format!("{error:#} (a window function exports `{PROCESS_WINDOW}` instead)"))
            })?),
        };
        Ok(PreparedFunction { engine: self.engine.clone(), exports })
    }
}

/// The exports of the `window-function` world; a component without `event-times` gets none asked.
const PROCESS_WINDOW: &str = "process-window";
const EVENT_TIMES: &str = "event-times";

/// The kind of a function: which WIT world its component exports, and so how the instance loop
/// calls it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FunctionKind {
    /// `function`: one message at a time, in batches.
    Function,
    /// `window-function`: one window's records at a time.
    WindowFunction,
}

impl FunctionKind {
    /// The world's name in `wit/function.wit`.
    pub fn wit_name(self) -> &'static str {
        match self {
            Self::Function => "function",
            Self::WindowFunction => "window-function",
        }
    }
}

/// A linked function, ready to instantiate many times.
pub struct PreparedFunction<H: 'static> {
    engine: Engine,
    exports: PreparedExports<H>,
}

/// What a linked component exports, by the world it was built for.
enum PreparedExports<H: 'static> {
    /// The `function` world: `process-batch`.
    Batch(bindings::FunctionPre<StoreData<H>>),
    /// The `window-function` world: `process-window` and, optionally, `event-times`.
    Window {
        pre: InstancePre<StoreData<H>>,
        process_window: ComponentExportIndex,
        event_times: Option<ComponentExportIndex>,
    },
}

// Not derived: a derive would require `H: Clone`, which the host context need not be.
impl<H: 'static> Clone for PreparedExports<H> {
    fn clone(&self) -> Self {
        match self {
            Self::Batch(pre) => Self::Batch(pre.clone()),
            Self::Window { pre, process_window, event_times } => {
                Self::Window { pre: pre.clone(), process_window: *process_window, event_times: *event_times }
            }
        }
    }
}

impl<H: 'static> Clone for PreparedFunction<H> {
    fn clone(&self) -> Self {
        Self { engine: self.engine.clone(), exports: self.exports.clone() }
    }
}

/// Limits of one instance.
#[derive(Clone, Copy, Debug)]
pub struct InstanceLimits {
    /// Linear memory, in bytes (`--ram`).
    pub memory_bytes: u64,
    /// Time to process one message (`--timeout-ms`).
    pub timeout: Duration,
}

impl<H: HostContext> PreparedFunction<H> {
    /// The world the component was built for, by what it exports.
    pub fn kind(&self) -> FunctionKind {
        match self.exports {
            PreparedExports::Batch(_) => FunctionKind::Function,
            PreparedExports::Window { .. } => FunctionKind::WindowFunction,
        }
    }

    /// Creates an instance in a store of its own.
    pub fn instantiate(
        &self,
        host: H,
        details: Arc<FunctionDetails>,
        limits: InstanceLimits,
    ) -> Result<Instance<H>, (H, ProcessError)> {
        let stdout = GuestOutput::default();
        let stderr = GuestOutput::default();
        // No preopened directories, environment, arguments or network: the context is the only door.
        let environment = Environment::new(details.deterministic, &details.identity.function_id);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(stdout.clone()).stderr(stderr.clone());
        environment.install(&mut wasi);
        let wasi = wasi.build();
        let data = StoreData {
            host,
            details,
            wasi,
            table: ResourceTable::new(),
            memory_limit: limits.memory_bytes,
            stdout,
            stderr,
            timeout: limits.timeout,
            message_deadline: Instant::now() + limits.timeout,
            unfinished: 0,
            batch_len: 0,
            environment,
        };
        let mut store = Store::new(&self.engine, data);
        store.limiter(|data| data);
        // The time limit is per message, and a batch's messages are finished inside one call: at
        // each tick past the deadline the store checks the current message's own deadline.
        store.epoch_deadline_callback(|store| {
            if store.data().host.stop_requested() {
                return Ok(UpdateDeadline::Interrupt);
            }
            let left = store.data().message_deadline.saturating_duration_since(Instant::now());
            Ok(if left.is_zero() { UpdateDeadline::Interrupt } else { UpdateDeadline::Continue(next_check(left)) })
        });
        store.set_epoch_deadline(next_check(limits.timeout));
        let exports = match &self.exports {
            PreparedExports::Batch(pre) => pre.instantiate(&mut store).map(Exports::Batch),
            PreparedExports::Window { pre, process_window, event_times } => {
                pre.instantiate(&mut store).and_then(|instance| {
                    let process_window = instance.get_func(&mut store, process_window).ok_or_else(|| {
                        wasmtime::Error::msg(format!("the component has no `{PROCESS_WINDOW}` function"))
                    })?;
                    let event_times = event_times.and_then(|index| instance.get_func(&mut store, index));
                    Ok(Exports::Window { process_window, event_times })
                })
            }
        };
        match exports {
            Ok(exports) => Ok(Instance { store, exports, timeout: limits.timeout }),
            Err(error) => {
                let message = describe_trap(&error, &store, limits.timeout);
                Err((store.into_data().host, ProcessError::System(format!("instantiation failed: {message}"))))
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
