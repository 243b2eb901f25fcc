//! The function worker: many functions of many tenants in one process, managed while they run.
//!
//! The worker keeps each function's record (its config as given, its code's digest, which
//! instances an operator stopped) and its code in the engine's metadata store, so that a
//! restart, even after SIGKILL, runs the same functions again; they resume from their
//! subscriptions' committed positions with their state, because both live in the engine.
//! In a cluster ([`cluster`]) every worker knows every function, and runs the instances the
//! leader assigns to it.
//! Changing a function (update, restart, stop) drains its instances first: each finishes and
//! commits the batch it holds, then its consumer leaves, so nothing is lost or applied twice.
//!
//! [`admin`] serves this over HTTP; the worker itself knows nothing of HTTP.

pub mod access;
pub mod admin;
pub mod cluster;
pub mod disk_guard;
mod ledger;
mod prometheus;
mod rest_consumer;
mod tenant_gate;
mod tenant_rates;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ledger::Footprint;
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::engine::broker::{BrokerError, Message, OutMessage, Position, SubscriptionSpec};
use crate::engine::state::{StateValue, Versioned};
use crate::function::{Code, FunctionConfig, FunctionKind, ProcessingGuarantee};
use crate::guest_build::Builder;
use crate::instance::{
    self, INPUT_MESSAGE_ID_PROPERTY, INPUT_TOPIC_PROPERTY, LogSink, MessageContext, RunningInstance, WasmExecutor,
};
use crate::limits::{
    MAX_BATCH_MESSAGES, MAX_HELD_REQUESTS_PER_TENANT, MAX_PACKAGE_SIZE, MAX_STATE_KEY_LEN, MAX_STATE_VALUE_SIZE,
    TRIGGER_TIMEOUT_MS,
};
use crate::metrics::{InstanceMetrics, Stats};
use crate::names::{Fqfn, TopicName};
use crate::runtime::{FunctionCode, PreparedFunction, Runtime};
use crate::spec::FunctionSpec;

/// Metadata keys of function records start with this.
const FUNCTION_RECORD_PREFIX: &str = "function/";
/// How often trigger looks for the output of the message it produced.
const TRIGGER_POLL: Duration = Duration::from_millis(20);

/// Why a worker request failed; each kind has its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The request is wrong: a bad config, component, key or value.
    #[error("{0}")]
    BadRequest(String),
    /// No such function, instance, key or message.
    #[error("{0}")]
    NotFound(String),
    /// The function already exists, or its state forbids the request.
    #[error("{0}")]
    Conflict(String),
    /// The request would cross a tenant's boundary or exceed its quota.
    #[error("{0}")]
    Forbidden(String),
    /// The function did not answer in time.
    #[error("{0}")]
    Timeout(String),
    /// The caller has too much open at once, or is past a rate; it may try again after
    /// `retry_after`.
    #[error("{reason}")]
    Busy { reason: String, retry_after: Duration },
    /// The worker's disk is below its reserve of free space: no new writes until space is freed.
    #[error("{0}")]
    InsufficientStorage(String),
    /// The worker itself failed.
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

fn already_exists(fqfn: &Fqfn) -> WorkerError {
    WorkerError::Conflict(format!("function {fqfn} already exists; update it, or delete it first"))
}

fn not_found(fqfn: &Fqfn) -> WorkerError {
    WorkerError::NotFound(format!("function {fqfn} does not exist; `fnhost functions list` shows the functions"))
}

/// What the worker keeps about a function, durably.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct FunctionRecord {
    /// The config as given (tenant, namespace and name filled in; no local component path).
    spec: FunctionSpec,
    /// The SHA-256 of the component, under which the metadata store keeps it.
    digest: String,
    /// Instances an operator stopped.
    stopped: BTreeSet<u32>,
    /// In a cluster, how many times an operator restarted each instance: a change tells the
    /// worker running it to restart it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    restarts: BTreeMap<u32, u64>,
}

/// A function the worker runs.
struct Function {
    record: FunctionRecord,
    config: Arc<FunctionConfig>,
    prepared: PreparedFunction<MessageContext>,
    instances: Vec<InstanceSlot>,
}

/// One instance: its counts, which outlive restarts, and its loop while it runs.
#[derive(Default)]
struct InstanceSlot {
    metrics: Arc<InstanceMetrics>,
    running: Option<RunningInstance>,
    /// Why the instance last failed to start or stopped with an error.
    error: Option<String>,
}

impl InstanceSlot {
    /// Collects the loop's result if it ended on its own.
    fn reap(&mut self) {
        if self.running.as_ref().is_some_and(RunningInstance::is_finished)
            && let Some(running) = self.running.take()
            && let Err(error) = running.join()
        {
            self.error = Some(error.to_string());
        }
    }

    fn is_running(&mut self) -> bool {
        self.reap();
        self.running.is_some()
    }

    fn stop(&mut self) {
        if let Some(running) = self.running.take()
            && let Err(error) = running.stop()
        {
            self.error = Some(error.to_string());
        }
    }
}

/// Where the worker keeps its data and how much it may run.
pub struct WorkerConfig {
    /// Where components built from Python and JavaScript sources are cached.
    pub cache_dir: PathBuf,
    /// Most instances across all functions.
    pub max_instances: u32,
    /// How to take part in a cluster; `None`: the worker runs every instance itself.
    pub cluster: Option<cluster::ClusterConfig>,
    /// Tokens, topic grants and quotas.
    pub access: access::Access,
    /// The free space kept in the data directory, for a worker that stores there.
    pub disk_guard: Option<disk_guard::DiskGuard>,
}

/// Memory maps an idle instance adds to the process (its thread's stack and signal stack with their
/// guard pages, its pool slots): nine measured (docs/BENCHMARKS.md), with room to spare.
const MAPS_PER_INSTANCE: usize = 12;

/// The process's memory maps and the most the system allows (vm.max_map_count), where Linux says.
pub fn memory_maps() -> Option<(usize, usize)> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?.lines().count();
    let limit = std::fs::read_to_string("/proc/sys/vm/max_map_count").ok()?.trim().parse().ok()?;
    Some((maps, limit))
}

/// The function worker.
pub struct Worker {
    store: Arc<dyn Engine>,
    runtime: Runtime,
    builder: Builder,
    max_instances: u32,
    functions: Mutex<BTreeMap<Fqfn, Arc<Mutex<Function>>>>,
    cluster: Option<cluster::Cluster>,
    access: access::Access,
    /// Held by every change to one function and, in a cluster, by a round while it catches up
    /// with that function's record, so that a round never sees a change half made.
    changes: ledger::ChangeLocks,
    /// What every function reserves of quotas and capacity, checked and taken in one step.
    ledger: ledger::Ledger,
    /// How fast each tenant may change functions and receive over HTTP.
    rates: Arc<tenant_rates::TenantRates>,
    consumer_gate: rest_consumer::ConsumerGate,
    /// Requests each tenant has held until its rates or caps let them through.
    held: tenant_gate::TenantGate,
    disk_guard: Option<disk_guard::DiskGuard>,
    /// Recorded functions that could not be resumed when the worker opened, with why: they stay
    /// stopped until deleted or created again, and every other function runs.
    failed: Mutex<BTreeMap<Fqfn, String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a function's lock leaves its slots as they were: each update is one assignment.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The JSON form of a message, as `topics consume --json` prints it.
pub fn message_json(message: &Message) -> serde_json::Value {
    use base64::Engine as _;
    let body = &message.body;
    let mut json = serde_json::json!({
        "messageId": message.id(),
        "topic": message.topic.as_str(),
        "key": body.key,
        "properties": body.properties.iter().cloned().collect::<BTreeMap<_, _>>(),
        "eventTime": body.event_time,
        "publishTime": body.publish_time,
        "redeliveryCount": message.redelivery_count,
    });
    match std::str::from_utf8(&body.value) {
        Ok(text) => json["value"] = text.into(),
        Err(_) => json["valueBase64"] = base64::engine::general_purpose::STANDARD.encode(&body.value).into(),
    }
    json
}

/// Bytes that `message` takes in [`message_json`]'s encoding, at most: what bounds an answer and
/// counts against a tenant's receive rate, since text of control characters takes six times its
/// size once escaped.
pub fn message_json_len(message: &Message) -> usize {
    /// The fixed fields and their names, with the longest numbers and topic name.
    const FIELDS: usize = 256 + crate::limits::MAX_TOPIC_NAME_LEN;
    let body = &message.body;
    let value = match std::str::from_utf8(&body.value) {
        Ok(text) => escaped_len(text),
        Err(_) => body.value.len().div_ceil(3) * 4,
    };
    let key = body.key.as_deref().map_or(0, escaped_len);
    let properties: usize =
        body.properties.iter().map(|(name, value)| escaped_len(name) + escaped_len(value) + 6).sum();
    FIELDS + value + key + properties
}

/// The length of `text` as a JSON string, quotes included.
fn escaped_len(text: &str) -> usize {
    2 + text
        .bytes()
        .map(|byte| match byte {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..0x20 => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// A state value as Pulsar's `FunctionState` JSON: numberValue for counters, stringValue for
/// UTF-8, else byteValue (base64).
pub fn state_json(key: &str, stored: Versioned) -> serde_json::Value {
    use base64::Engine as _;
    let mut json = serde_json::json!({ "key": key, "version": stored.version });
    match stored.value {
        StateValue::Counter(value) => json["numberValue"] = value.into(),
        StateValue::Bytes(bytes) => match String::from_utf8(bytes) {
            Ok(text) => json["stringValue"] = text.into(),
            Err(error) => json["byteValue"] = base64::engine::general_purpose::STANDARD.encode(error.as_bytes()).into(),
        },
    }
    json
}

impl Worker {
    /// Opens the worker on `store` and starts every function recorded there; in a cluster the
    /// functions start when [`Worker::run_cluster`] has learnt which instances are this worker's.
    pub fn open(config: WorkerConfig, store: Arc<dyn Engine>, runtime: Runtime) -> anyhow::Result<Self> {
        let worker = Self {
            store,
            runtime,
            builder: Builder::new(&config.cache_dir),
            max_instances: config.max_instances,
            functions: Mutex::new(BTreeMap::new()),
            cluster: config.cluster.map(cluster::Cluster::new),
            access: config.access,
            changes: ledger::ChangeLocks::default(),
            ledger: ledger::Ledger::default(),
            rates: Arc::default(),
            consumer_gate: rest_consumer::ConsumerGate::default(),
            held: tenant_gate::TenantGate::new(MAX_HELD_REQUESTS_PER_TENANT),
            disk_guard: config.disk_guard,
            failed: Mutex::new(BTreeMap::new()),
        };
        if worker.cluster.is_some() {
            return Ok(worker);
        }
        for (key, bytes) in worker.store.records(FUNCTION_RECORD_PREFIX)? {
            let Some(fqfn) = key.strip_prefix(FUNCTION_RECORD_PREFIX).and_then(|name| Fqfn::parse(name).ok()) else {
                tracing::error!(key, "a function record under a name that is not a function's; remove it");
                continue;
            };
            if let Err(error) = worker.resume(&fqfn, &bytes) {
                let reason = format!("{error:#}");
                tracing::error!(%fqfn, "cannot resume the function, which stays stopped: {reason}");
                lock(&worker.failed).insert(fqfn, reason);
            }
        }
        Ok(worker)
    }

    /// Starts a recorded function again, as its record and the tenant's quota allow today.
    fn resume(&self, fqfn: &Fqfn, bytes: &[u8]) -> anyhow::Result<()> {
        let record: FunctionRecord =
            serde_json::from_slice(bytes).context("its record is damaged; delete the function and create it again")?;
        anyhow::ensure!(record.spec.fqfn()? == *fqfn, "its record names another function");
        let config = self.function_config(&record.spec)?;
        let code = self.load_package(&record.digest)?;
        let prepared = code.prepare::<MessageContext>()?;
        instance::check_kind(&prepared, &config).map_err(|reason| anyhow::anyhow!(reason))?;
        self.reserve(fqfn, &config)?;
        let mut function = Function { instances: Vec::new(), config: Arc::new(config), prepared, record };
        if let Err(error) = self.start_instances(&mut function) {
            stop_instances(&mut function);
            self.ledger.release(fqfn);
            return Err(error.into());
        }
        tracing::info!(%fqfn, instances = function.config.parallelism, "resumed function");
        lock(&self.functions).insert(fqfn.clone(), Arc::new(Mutex::new(function)));
        Ok(())
    }

    fn load_package(&self, digest: &str) -> anyhow::Result<FunctionCode> {
        let bytes = self.store.package(digest)?.with_context(|| {
            format!("the component {digest} is missing from the metadata store; create the function again")
        })?;
        Ok(self.runtime.load_bytes(&bytes, &format!("package {digest}"))?)
    }

    /// Keeps a component's bytes under its digest, durably.
    fn save_package(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
        Ok(self.store.put_package(digest, bytes)?)
    }

    fn save_record(&self, fqfn: &Fqfn, record: &FunctionRecord) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(record).expect("a record serializes");
        Ok(self.store.put_record(&format!("{FUNCTION_RECORD_PREFIX}{fqfn}"), &bytes)?)
    }

    /// The function `fqfn`, for a caller that does not hold its change lock.
    fn function(&self, fqfn: &Fqfn) -> Result<Arc<Mutex<Function>>, WorkerError> {
        self.find_function(fqfn, false)
    }

    /// The function `fqfn`, for a caller that holds its change lock.
    fn changing_function(&self, fqfn: &Fqfn) -> Result<Arc<Mutex<Function>>, WorkerError> {
        self.find_function(fqfn, true)
    }

    fn find_function(&self, fqfn: &Fqfn, change_lock_held: bool) -> Result<Arc<Mutex<Function>>, WorkerError> {
        if let Some(function) = lock(&self.functions).get(fqfn) {
            return Ok(function.clone());
        }
        if let Some(reason) = lock(&self.failed).get(fqfn) {
            return Err(WorkerError::Conflict(format!(
                "function {fqfn} could not be resumed when the worker started ({reason}); delete it, or create it again"
            )));
        }
        // Another worker of the cluster may have created it since this one's last round.
        if self.cluster.is_some() {
            let changes = (!change_lock_held).then(|| self.changes.of(fqfn));
            let _changing = changes.as_ref().map(|changes| lock(changes));
            self.catch_up_with(fqfn).map_err(WorkerError::Internal)?;
        }
        lock(&self.functions).get(fqfn).cloned().ok_or_else(|| not_found(fqfn))
    }

    /// The component's bytes: uploaded, or read from the component the config names, or built
    /// from the source file it names.
    fn package_bytes(
        &self,
        spec: &FunctionSpec,
        world: FunctionKind,
        uploaded: Option<Vec<u8>>,
    ) -> Result<Option<(Vec<u8>, String)>, WorkerError> {
        if let Some(bytes) = uploaded {
            return Ok(Some((bytes, "the uploaded component".into())));
        }
        let bad = |reason: String| WorkerError::BadRequest(reason);
        let Some(code) = spec.code().map_err(|error| bad(error.to_string()))? else { return Ok(None) };
        let code = match code {
            Code::Wasm(path) => {
                let text = path.to_string_lossy();
                Code::Wasm(PathBuf::from(text.strip_prefix("file://").unwrap_or(&text)))
            }
            source => source,
        };
        let file = self.builder.component_file(&code, world).map_err(|error| bad(error.to_string()))?;
        let path = file.display();
        let size = std::fs::metadata(&file)
            .map_err(|error| {
                bad(format!(
                    "the worker cannot read the component {path}: {error}; upload the file instead (multipart field `data`)"
                ))
            })?
            .len();
        if size > MAX_PACKAGE_SIZE as u64 {
            return Err(bad(format!(
                "the component {path} is {size} bytes; the limit (MAX_PACKAGE_SIZE) is {MAX_PACKAGE_SIZE}"
            )));
        }
        let bytes = std::fs::read(&file)
            .map_err(|error| bad(format!("the worker cannot read the component {path}: {error}")))?;
        Ok(Some((bytes, path.to_string())))
    }

    /// Compiles and links a component, refusing anything that is not an fnhost function.
    fn prepare(&self, bytes: &[u8], shown: &str) -> Result<(String, PreparedFunction<MessageContext>), WorkerError> {
        let refused = |error: crate::runtime::LoadError| WorkerError::BadRequest(error.to_string());
        let code = self.runtime.load_bytes(bytes, shown).map_err(refused)?;
        let prepared = code.prepare::<MessageContext>().map_err(refused)?;
        Ok((code.digest().to_owned(), prepared))
    }

    /// Refuses a write while the data directory's disk is below its reserve of free space.
    fn check_disk(&self) -> Result<(), WorkerError> {
        self.disk_guard.as_ref().map_or(Ok(()), disk_guard::DiskGuard::check)
    }

    /// `consumer`, held by the free-space guard, if the worker has one.
    fn guarded(
        &self,
        consumer: Box<dyn crate::engine::broker::Subscription>,
    ) -> Box<dyn crate::engine::broker::Subscription> {
        match &self.disk_guard {
            Some(guard) => guard.guard(consumer),
            None => consumer,
        }
    }

    /// Reserves what `config` needs for `fqfn` (replacing what it held) if its tenant's quota and
    /// the worker's capacity allow; returns what it held, for [`ledger::Ledger::restore`].
    fn reserve(&self, fqfn: &Fqfn, config: &FunctionConfig) -> Result<Option<Footprint>, WorkerError> {
        // A cluster counts its tenants' functions in the records that every worker shares; read
        // before the ledger is locked, so that no store call holds up other reservations.
        let recorded = match self.cluster {
            Some(_) => Some(self.recorded_footprints(fqfn)?),
            None => None,
        };
        let footprint = Footprint::of(config);
        self.ledger.reserve(fqfn, footprint, |reserved| {
            let besides = || reserved.iter().filter(|(other, _)| *other != fqfn);
            let tenant_others: Vec<Footprint> = match recorded {
                Some(recorded) => recorded,
                None => besides().filter(|(other, _)| other.tenant() == fqfn.tenant()).map(|(_, it)| *it).collect(),
            };
            self.check_quota(fqfn, footprint, &tenant_others)?;
            self.check_capacity(fqfn, footprint.instances, besides().map(|(_, it)| it.instances).sum())
        })
    }

    /// The footprints of the recorded functions of `fqfn`'s tenant, but `fqfn`.
    fn recorded_footprints(&self, fqfn: &Fqfn) -> Result<Vec<Footprint>, WorkerError> {
        let records = self.store.records(FUNCTION_RECORD_PREFIX).map_err(anyhow::Error::from)?;
        Ok(records
            .into_iter()
            .filter_map(|(_, bytes)| serde_json::from_slice::<FunctionRecord>(&bytes).ok()?.spec.resolve().ok())
            .filter(|other| other.fqfn.tenant() == fqfn.tenant() && other.fqfn != *fqfn)
            .map(|other| Footprint::of(&other))
            .collect())
    }

    /// Refuses `parallelism` more instances if, beside the `others` that other functions take,
    /// they would pass the worker's capacity or the system's memory maps.
    fn check_capacity(&self, fqfn: &Fqfn, parallelism: u32, others: u32) -> Result<(), WorkerError> {
        if others + parallelism > self.max_instances {
            return Err(WorkerError::BadRequest(format!(
                "{fqfn} needs {parallelism} instance(s) but the worker runs at most {} (--max-instances) and {others} are taken; lower --parallelism or start the worker with more",
                self.max_instances
            )));
        }
        // Past the kernel's limit on memory maps a new instance's thread cannot start, and the
        // whole process aborts: refuse before that.
        if let Some((maps, limit)) = memory_maps() {
            let needed = maps + parallelism as usize * MAPS_PER_INSTANCE;
            if needed > limit {
                return Err(WorkerError::BadRequest(format!(
                    "{fqfn} needs {parallelism} more instance(s), which would take this process to about {needed} memory maps, past the system's {limit} (vm.max_map_count); raise it (`sysctl -w vm.max_map_count=262144`) or lower --parallelism"
                )));
            }
        }
        Ok(())
    }

    /// The access rules this worker was started with.
    pub fn access(&self) -> &access::Access {
        &self.access
    }

    /// The config of a function as this worker runs it: limited to its tenant's topics and grants.
    fn function_config(&self, spec: &FunctionSpec) -> Result<FunctionConfig, WorkerError> {
        let config = spec.resolve().map_err(|error| WorkerError::BadRequest(error.to_string()))?;
        let access = self.access.topic_access(config.fqfn.tenant());
        config.within(access).map_err(|error| WorkerError::Forbidden(error.to_string()))
    }

    /// Refuses a function of `footprint` beside the tenant's `others` if it would take its tenant
    /// past its quota.
    fn check_quota(&self, fqfn: &Fqfn, footprint: Footprint, others: &[Footprint]) -> Result<(), WorkerError> {
        let tenant = fqfn.tenant();
        let quota = self.access.quota(tenant);
        let functions = others.len() + 1;
        let instances: u64 = others.iter().chain([&footprint]).map(|other| u64::from(other.instances)).sum();
        let memory: u64 = others.iter().chain([&footprint]).map(|other| other.memory_bytes).sum();
        let refuse = |what: String, field: &str| {
            Err(WorkerError::Forbidden(format!(
                "tenant `{tenant}` would have {what} with {fqfn}; the operator can raise {field} of tenant `{tenant}` in the worker's access file"
            )))
        };
        if functions > quota.max_functions as usize {
            return refuse(format!("{functions} functions, past its quota of {}", quota.max_functions), "maxFunctions");
        }
        if instances > u64::from(quota.max_instances) {
            return refuse(format!("{instances} instances, past its quota of {}", quota.max_instances), "maxInstances");
        }
        if memory > quota.max_memory_bytes {
            return refuse(
                format!(
                    "instances reserving {memory} bytes of memory (--ram × --parallelism), past its quota of {}",
                    quota.max_memory_bytes
                ),
                "maxMemoryBytes",
            );
        }
        Ok(())
    }

    /// Creates a function and starts its instances; returns its config as stored.
    pub fn create(&self, spec: FunctionSpec, uploaded: Option<Vec<u8>>) -> Result<FunctionSpec, WorkerError> {
        let bad = |error: crate::spec::ConfigError| WorkerError::BadRequest(error.to_string());
        let fqfn = spec.fqfn().map_err(bad)?;
        let config = self.function_config(&spec)?;
        for note in crate::spec::pulsar::notes(&spec).unwrap_or_default() {
            tracing::info!(%fqfn, "{note}");
        }
        if lock(&self.functions).contains_key(&fqfn) {
            return Err(already_exists(&fqfn));
        }
        self.check_disk()?;
        self.rates.take_change(fqfn.tenant(), self.access.quota(fqfn.tenant()).max_function_changes_per_minute)?;
        // Built and compiled before any lock is taken: a slow compile holds up no one else.
        let Some((bytes, shown)) = self.package_bytes(&spec, spec.world(), uploaded)? else {
            return Err(WorkerError::BadRequest(
                "no component: upload it (multipart field `data`) or name a file the worker can read (`url`, or `wasm` in the config)".into(),
            ));
        };
        let (digest, prepared) = self.prepare(&bytes, &shown)?;
        instance::check_kind(&prepared, &config).map_err(WorkerError::BadRequest)?;
        let changes = self.changes.of(&fqfn);
        let _changing = lock(&changes);
        if lock(&self.functions).contains_key(&fqfn) {
            return Err(already_exists(&fqfn));
        }
        self.reserve(&fqfn, &config)?;
        let spec = FunctionSpec {
            tenant: Some(fqfn.tenant().into()),
            namespace: Some(fqfn.namespace().into()),
            name: Some(fqfn.name().into()),
            ..spec.without_code()
        };
        let record = FunctionRecord { spec: spec.clone(), digest, stopped: BTreeSet::new(), restarts: BTreeMap::new() };
        // The record is saved only once the instances have started: a create that fails leaves
        // nothing that the next start of the worker would trip over.
        let mut function = Function { record, config: Arc::new(config), prepared, instances: Vec::new() };
        let started = self
            .save_package(&function.record.digest, &bytes)
            .map_err(WorkerError::from)
            .and_then(|()| self.start_instances(&mut function))
            .and_then(|()| Ok(self.save_record(&fqfn, &function.record)?));
        if let Err(error) = started {
            stop_instances(&mut function);
            self.ledger.release(&fqfn);
            return Err(error);
        }
        lock(&self.failed).remove(&fqfn);
        tracing::info!(%fqfn, instances = function.config.parallelism, "created function");
        lock(&self.functions).insert(fqfn, Arc::new(Mutex::new(function)));
        Ok(spec)
    }

    /// Changes a function's config (the fields `changes` sets) and, if given, its code: drains the
    /// old instances, then starts new ones on the same subscription and state. The caller has
    /// checked that `changes` names no other function.
    pub fn update(
        &self,
        fqfn: &Fqfn,
        changes: FunctionSpec,
        uploaded: Option<Vec<u8>>,
    ) -> Result<FunctionSpec, WorkerError> {
        let change_lock = self.changes.of(fqfn);
        let _changing = lock(&change_lock);
        let function = self.changing_function(fqfn)?;
        let current = lock(&function).record.clone();
        let spec = current.spec.clone().overlay(changes.clone().without_code());
        if spec.sub_name != current.spec.sub_name {
            return Err(WorkerError::BadRequest(format!(
                "update cannot change the subscription name of {fqfn} (its position is kept under it); delete and create the function instead"
            )));
        }
        let config = self.function_config(&spec)?;
        self.check_disk()?;
        self.rates.take_change(fqfn.tenant(), self.access.quota(fqfn.tenant()).max_function_changes_per_minute)?;
        // Built and compiled under this function's change lock only.
        let package = self.package_bytes(&changes, spec.world(), uploaded)?;
        let prepared = match &package {
            Some((bytes, shown)) => Some(self.prepare(bytes, shown)?),
            None => None,
        };
        match &prepared {
            Some((_, prepared)) => instance::check_kind(prepared, &config),
            None => instance::check_kind(&lock(&function).prepared, &config),
        }
        .map_err(WorkerError::BadRequest)?;
        let previous = self.reserve(fqfn, &config)?;
        if let (Some((bytes, _)), Some((digest, _))) = (&package, &prepared)
            && let Err(error) = self.save_package(digest, bytes)
        {
            self.ledger.restore(fqfn, previous);
            return Err(error.into());
        }
        drain(&function, None);
        let mut function = lock(&function);
        let parallelism = config.parallelism;
        function.record.spec = spec.clone();
        function.record.stopped.retain(|&instance_id| instance_id < parallelism);
        if let Some((digest, prepared)) = prepared {
            function.record.digest = digest;
            function.prepared = prepared;
        }
        function.config = Arc::new(config);
        let record = function.record.clone();
        self.save_record(fqfn, &record)?;
        self.start_instances(&mut function)?;
        drop(function);
        if record.digest != current.digest {
            self.remove_unused_packages(&current.digest);
        }
        tracing::info!(%fqfn, instances = parallelism, "updated function");
        Ok(spec)
    }

    /// Stops a function's instances and forgets it, its subscription (unless `cleanupSubscription`
    /// is false) and its state.
    pub fn delete(&self, fqfn: &Fqfn) -> Result<(), WorkerError> {
        let changes = self.changes.of(fqfn);
        let _changing = lock(&changes);
        if lock(&self.failed).contains_key(fqfn) {
            return self.delete_failed(fqfn);
        }
        if !lock(&self.functions).contains_key(fqfn) {
            return Err(not_found(fqfn));
        }
        self.rates.take_change(fqfn.tenant(), self.access.quota(fqfn.tenant()).max_function_changes_per_minute)?;
        let function = lock(&self.functions).remove(fqfn).ok_or_else(|| not_found(fqfn))?;
        drain(&function, None);
        self.ledger.release(fqfn);
        let function = lock(&function);
        // The record goes first: a crash after it leaves unused data, never a function that
        // resumes without its state.
        self.store.remove_record(&format!("{FUNCTION_RECORD_PREFIX}{fqfn}")).map_err(anyhow::Error::from)?;
        if function.record.spec.cleanup_subscription.unwrap_or(true) {
            let config = &function.config;
            self.store.delete_subscription(&config.subscription, &config.inputs).map_err(anyhow::Error::from)?;
        }
        self.store.delete_table(fqfn).map_err(anyhow::Error::from)?;
        let digest = function.record.digest.clone();
        drop(function);
        self.remove_unused_packages(&digest);
        tracing::info!(%fqfn, "deleted function");
        Ok(())
    }

    /// Deletes a function that could not be resumed: its record, its state, and its subscription
    /// if its record still says which.
    fn delete_failed(&self, fqfn: &Fqfn) -> Result<(), WorkerError> {
        let key = format!("{FUNCTION_RECORD_PREFIX}{fqfn}");
        let record =
            self.store.records(&key).map_err(anyhow::Error::from)?.into_iter().find(|(found, _)| *found == key);
        let record = record.and_then(|(_, bytes)| serde_json::from_slice::<FunctionRecord>(&bytes).ok());
        self.store.remove_record(&key).map_err(anyhow::Error::from)?;
        if let Some(config) = record.as_ref().and_then(|record| record.spec.resolve().ok())
            && record.as_ref().is_some_and(|record| record.spec.cleanup_subscription.unwrap_or(true))
        {
            self.store.delete_subscription(&config.subscription, &config.inputs).map_err(anyhow::Error::from)?;
        }
        self.store.delete_table(fqfn).map_err(anyhow::Error::from)?;
        lock(&self.failed).remove(fqfn);
        if let Some(record) = record {
            self.remove_unused_packages(&record.digest);
        }
        tracing::info!(%fqfn, "deleted function");
        Ok(())
    }

    /// Removes the package `digest` if no function record names it any more (a function that
    /// could not be resumed still needs its package); the caller holds no function's lock.
    fn remove_unused_packages(&self, digest: &str) {
        let records = match self.store.records(FUNCTION_RECORD_PREFIX) {
            Ok(records) => records,
            Err(error) => {
                tracing::warn!(digest, "cannot read the function records, so the component is kept: {error}");
                return;
            }
        };
        let functions: Vec<Arc<Mutex<Function>>> = lock(&self.functions).values().cloned().collect();
        let used = functions.iter().any(|function| lock(function).record.digest == digest)
            || records.iter().any(|(_, bytes)| {
                serde_json::from_slice::<FunctionRecord>(bytes).map_or(true, |record| record.digest == digest)
            });
        if !used && let Err(error) = self.store.remove_package(digest) {
            tracing::warn!(digest, "cannot remove the unused component: {error}");
        }
    }

    /// The function's config, as stored.
    pub fn get(&self, fqfn: &Fqfn) -> Result<FunctionSpec, WorkerError> {
        let function = self.function(fqfn)?;
        let spec = lock(&function).record.spec.clone();
        Ok(spec)
    }

    /// The names of the functions in a namespace.
    pub fn list(&self, tenant: &str, namespace: &str) -> Result<Vec<String>, WorkerError> {
        let keep = |fqfn: &Fqfn| fqfn.tenant() == tenant && fqfn.namespace() == namespace;
        if self.cluster.is_some() {
            // The records, not this worker's copy, which may be a round behind the cluster.
            let records = self.store.records(FUNCTION_RECORD_PREFIX).map_err(anyhow::Error::from)?;
            let names =
                records.iter().filter_map(|(key, _)| Fqfn::parse(key.strip_prefix(FUNCTION_RECORD_PREFIX)?).ok());
            return Ok(names.filter(keep).map(|fqfn| fqfn.name().to_owned()).collect());
        }
        let functions = lock(&self.functions);
        let failed = lock(&self.failed);
        Ok(functions.keys().chain(failed.keys()).filter(|fqfn| keep(fqfn)).map(|fqfn| fqfn.name().to_owned()).collect())
    }

    /// True when instance `instance_id` of `fqfn` is this worker's to run.
    fn runs_here(&self, fqfn: &Fqfn, instance_id: u32) -> bool {
        self.cluster.as_ref().is_none_or(|cluster| cluster.runs_here(fqfn, instance_id))
    }

    /// Starts every instance of this worker not stopped by an operator that is not running, and
    /// stops those the cluster has moved to another worker.
    fn start_instances(&self, function: &mut Function) -> Result<(), WorkerError> {
        let count = function.config.parallelism;
        let fqfn = function.config.fqfn.clone();
        function.instances.resize_with(count as usize, InstanceSlot::default);
        for (instance_id, slot) in function.instances.iter_mut().enumerate() {
            if slot.running.is_some() && !self.runs_here(&fqfn, instance_id as u32) {
                tracing::info!(%fqfn, instance_id, "instance moved to another worker");
                slot.stop();
            }
        }
        let mut idle = Vec::new();
        for instance_id in 0..count {
            let slot = &mut function.instances[instance_id as usize];
            if !function.record.stopped.contains(&instance_id)
                && self.runs_here(&fqfn, instance_id)
                && !slot.is_running()
            {
                idle.push(instance_id);
            }
        }
        // Every consumer joins before any fetches, so that the first cannot take what the others would get.
        let mut consumers = Vec::new();
        for &instance_id in &idle {
            match self.store.subscribe(function.config.subscription_spec(instance_id, count)) {
                Ok(consumer) => consumers.push((instance_id, self.guarded(consumer))),
                // In a cluster the engine may be electing a leader: the next round tries again.
                Err(error) if self.cluster.is_some() => {
                    tracing::warn!(%fqfn, instance_id, "cannot subscribe yet: {error}");
                    function.instances[instance_id as usize].error = Some(format!("cannot subscribe: {error}"));
                }
                Err(error @ BrokerError::Mismatch { .. }) => return Err(WorkerError::Conflict(error.to_string())),
                Err(error @ BrokerError::TooManyTopics { .. }) => {
                    return Err(WorkerError::BadRequest(error.to_string()));
                }
                Err(error) => return Err(anyhow::Error::from(error).into()),
            }
        }
        for (instance_id, consumer) in consumers {
            self.start_instance(function, instance_id, consumer)?;
        }
        Ok(())
    }

    fn start_instance(
        &self,
        function: &mut Function,
        instance_id: u32,
        consumer: Box<dyn crate::engine::broker::Subscription>,
    ) -> Result<(), WorkerError> {
        let config = &function.config;
        let details = Arc::new(config.details(&function.record.digest, instance_id, config.parallelism));
        let table = self.store.table(&config.fqfn).map_err(anyhow::Error::from)?;
        let context = MessageContext::new(config, instance_id, table, LogSink::Tracing);
        let slot = &mut function.instances[instance_id as usize];
        match WasmExecutor::start(function.prepared.clone(), details, config.limits, context) {
            Ok(executor) => {
                slot.error = None;
                slot.running = Some(instance::spawn(
                    config.clone(),
                    instance_id,
                    consumer,
                    Box::new(executor),
                    slot.metrics.clone(),
                ));
            }
            Err(error) => {
                tracing::error!(fqfn = %config.fqfn, instance_id, "cannot start the instance: {error}");
                slot.error = Some(format!("cannot start the instance: {error}"));
            }
        }
        Ok(())
    }

    /// Checks `instance` against the function's instances.
    fn instance_ids(function: &Function, instance: Option<u32>) -> Result<Vec<u32>, WorkerError> {
        let count = function.config.parallelism;
        match instance {
            Some(instance_id) if instance_id >= count => Err(WorkerError::NotFound(format!(
                "{} has instances 0 to {}; there is no instance {instance_id}",
                function.config.fqfn,
                count - 1
            ))),
            Some(instance_id) => Ok(vec![instance_id]),
            None => Ok((0..count).collect()),
        }
    }

    /// Starts the function's instances (or one), which stay started across worker restarts.
    pub fn start(&self, fqfn: &Fqfn, instance: Option<u32>) -> Result<(), WorkerError> {
        let changes = self.changes.of(fqfn);
        let _changing = lock(&changes);
        let function = self.changing_function(fqfn)?;
        let mut function = lock(&function);
        for instance_id in Self::instance_ids(&function, instance)? {
            function.record.stopped.remove(&instance_id);
        }
        let record = function.record.clone();
        self.save_record(fqfn, &record)?;
        self.start_instances(&mut function)
    }

    /// Stops the function's instances (or one) after their current batch; they stay stopped
    /// across worker restarts until started.
    pub fn stop(&self, fqfn: &Fqfn, instance: Option<u32>) -> Result<(), WorkerError> {
        let changes = self.changes.of(fqfn);
        let _changing = lock(&changes);
        let function = self.changing_function(fqfn)?;
        let ids = {
            let mut function = lock(&function);
            let ids = Self::instance_ids(&function, instance)?;
            function.record.stopped.extend(&ids);
            let record = function.record.clone();
            self.save_record(fqfn, &record)?;
            ids
        };
        drain(&function, Some(&ids));
        Ok(())
    }

    /// Restarts the function's running instances (or one, which starts it if it was stopped).
    pub fn restart(&self, fqfn: &Fqfn, instance: Option<u32>) -> Result<(), WorkerError> {
        let changes = self.changes.of(fqfn);
        let _changing = lock(&changes);
        let function = self.changing_function(fqfn)?;
        let ids = Self::instance_ids(&lock(&function), instance)?;
        drain(&function, Some(&ids));
        let mut function = lock(&function);
        if instance.is_some() || self.cluster.is_some() {
            if instance.is_some() {
                function.record.stopped.retain(|id| !ids.contains(id));
            }
            if self.cluster.is_some() {
                for &instance_id in &ids {
                    *function.record.restarts.entry(instance_id).or_default() += 1;
                }
            }
            let record = function.record.clone();
            self.save_record(fqfn, &record)?;
        }
        for &instance_id in &ids {
            function.instances[instance_id as usize].metrics.record_restart();
        }
        self.start_instances(&mut function)
    }

    /// Pulsar's FunctionStatus for the function, or for one instance.
    pub fn status(&self, fqfn: &Fqfn, instance: Option<u32>) -> Result<serde_json::Value, WorkerError> {
        let function = self.function(fqfn)?;
        let mut function = lock(&function);
        let ids = Self::instance_ids(&function, instance)?;
        let mut instances = Vec::new();
        let mut running_count = 0;
        for instance_id in ids {
            if let Some(cluster) = &self.cluster
                && !cluster.runs_here(fqfn, instance_id)
            {
                let status = cluster.remote_status(fqfn, instance_id);
                running_count += u32::from(status["running"] == true);
                instances.push(serde_json::json!({ "instanceId": instance_id, "status": status }));
                continue;
            }
            let slot = &mut function.instances[instance_id as usize];
            let running = slot.is_running();
            running_count += u32::from(running);
            let stats = slot.metrics.snapshot();
            let error = slot.error.clone().unwrap_or_default();
            instances.push(serde_json::json!({
                "instanceId": instance_id,
                "status": {
                    "running": running,
                    "error": error,
                    "numRestarts": stats.restarts,
                    "numReceived": stats.received,
                    "numSuccessfullyProcessed": stats.succeeded,
                    "numUserExceptions": stats.user_exceptions,
                    "latestUserExceptions": stats.latest_user_exceptions,
                    "numSystemExceptions": stats.system_exceptions,
                    "latestSystemExceptions": stats.latest_system_exceptions,
                    "numDeadLettered": stats.dead_lettered,
                    "averageLatency": stats.latency.mean_millis(),
                    "lastInvocationTime": stats.last_invocation.unwrap_or(0),
                    "workerId": self.cluster.as_ref().map_or("embedded", |cluster| cluster.worker_id()),
                },
            }));
        }
        if instance.is_some() {
            return Ok(instances.remove(0)["status"].take());
        }
        Ok(serde_json::json!({
            "numInstances": function.config.parallelism,
            "numRunning": running_count,
            "instances": instances,
        }))
    }

    /// Pulsar's FunctionStats for the function, or FunctionInstanceStats for one instance.
    pub fn stats(&self, fqfn: &Fqfn, instance: Option<u32>) -> Result<serde_json::Value, WorkerError> {
        let function = self.function(fqfn)?;
        let function = lock(&function);
        let ids = Self::instance_ids(&function, instance)?;
        if let Some(cluster) = &self.cluster
            && ids.iter().any(|&instance_id| !cluster.runs_here(fqfn, instance_id))
        {
            let mut instances = Vec::new();
            for instance_id in ids {
                let metrics = &function.instances[instance_id as usize].metrics;
                let stats = match cluster.runs_here(fqfn, instance_id) {
                    true => stats_json(&metrics.snapshot(), &metrics.last_minute()),
                    false => cluster.remote_stats(fqfn, instance_id)?,
                };
                instances.push((instance_id, stats));
            }
            if instance.is_some() {
                return Ok(instances.remove(0).1);
            }
            return Ok(cluster::total_stats(instances));
        }
        let per_instance: Vec<(u32, Stats, crate::metrics::MinuteCounts)> = ids
            .iter()
            .map(|&instance_id| {
                let metrics = &function.instances[instance_id as usize].metrics;
                (instance_id, metrics.snapshot(), metrics.last_minute())
            })
            .collect();
        let instances: Vec<serde_json::Value> = per_instance
            .iter()
            .map(|(instance_id, stats, minute)| {
                serde_json::json!({ "instanceId": instance_id, "metrics": stats_json(stats, minute) })
            })
            .collect();
        if instance.is_some() {
            return Ok(instances[0]["metrics"].clone());
        }
        let total = Stats::total(per_instance.iter().map(|(_, stats, _)| stats));
        let mut minute = crate::metrics::MinuteCounts::default();
        for (_, _, instance_minute) in &per_instance {
            minute.add(instance_minute);
        }
        let mut json = stats_json(&total, &minute);
        json["instances"] = instances.into();
        Ok(json)
    }

    /// Every instance's counts, labelled, for `/metrics`.
    fn instance_stats(&self) -> Vec<(Fqfn, u32, Stats)> {
        let functions: Vec<(Fqfn, Arc<Mutex<Function>>)> =
            lock(&self.functions).iter().map(|(fqfn, function)| (fqfn.clone(), function.clone())).collect();
        let mut all = Vec::new();
        for (fqfn, function) in functions {
            let function = lock(&function);
            for (instance_id, slot) in function.instances.iter().enumerate() {
                if self.runs_here(&fqfn, instance_id as u32) {
                    all.push((fqfn.clone(), instance_id as u32, slot.metrics.snapshot()));
                }
            }
        }
        all
    }

    /// Prometheus text for every instance of every function.
    pub fn metrics_text(&self) -> String {
        prometheus::render(&self.instance_stats())
    }

    /// Puts `value` on `topic` (default: the function's only input topic), waits until the function
    /// has processed it, and returns its output, if it had one.
    pub fn trigger(&self, fqfn: &Fqfn, topic: Option<&str>, value: Vec<u8>) -> Result<serde_json::Value, WorkerError> {
        let function = self.function(fqfn)?;
        self.check_disk()?;
        let config = {
            let mut function = lock(&function);
            // In a cluster the instances may run on other workers; their status tells.
            if self.cluster.is_none() && !function.instances.iter_mut().any(InstanceSlot::is_running) {
                return Err(WorkerError::Conflict(format!(
                    "{fqfn} has no running instance to process the trigger; start it first"
                )));
            }
            function.config.clone()
        };
        let topic = match topic {
            Some(name) => {
                let topic = TopicName::parse(name).map_err(|error| WorkerError::BadRequest(error.to_string()))?;
                let input = config.inputs.topics.contains(&topic)
                    || config.inputs.pattern.as_ref().is_some_and(|pattern| pattern.matches(&topic));
                if !input {
                    return Err(WorkerError::BadRequest(format!("{topic} is not an input of {fqfn}")));
                }
                topic
            }
            None => match config.inputs.topics.as_slice() {
                [only] if config.inputs.pattern.is_none() => only.clone(),
                _ => {
                    return Err(WorkerError::BadRequest(format!(
                        "{fqfn} has several inputs; name the one to trigger with --topic"
                    )));
                }
            },
        };
        let message = OutMessage::new(value);
        instance::check_message(&message).map_err(WorkerError::BadRequest)?;
        // The reader starts before the message exists, so the output cannot slip past it.
        let reader = match &config.output {
            Some(output) => Some(
                self.store
                    .subscribe(SubscriptionSpec::single(vec![output.clone()], None, Position::Latest))
                    .map_err(anyhow::Error::from)?,
            ),
            None => None,
        };
        let sequence = self.store.produce(&topic, vec![message]).map_err(anyhow::Error::from)?[0];
        let message_id = crate::engine::broker::message_id(sequence);
        let deadline = Instant::now() + Duration::from_millis(TRIGGER_TIMEOUT_MS);
        let is_output = |message: &Message| {
            let property = |name: &str| {
                message.body.properties.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
            };
            property(INPUT_TOPIC_PROPERTY) == Some(topic.as_str())
                && property(INPUT_MESSAGE_ID_PROPERTY) == Some(message_id.as_str())
        };
        // Under ATMOST_ONCE the acknowledgement comes before processing, so only an output tells
        // that the message was processed.
        let acknowledged_when_processed = config.guarantee != ProcessingGuarantee::AtMostOnce;
        loop {
            // Read after the check: once acknowledged, the output (committed with it) is readable.
            let processed = acknowledged_when_processed
                && self.store.is_acknowledged(&config.subscription, &topic, sequence).map_err(anyhow::Error::from)?;
            if let Some(reader) = &reader {
                loop {
                    let messages = reader.fetch(MAX_BATCH_MESSAGES, Duration::ZERO).map_err(anyhow::Error::from)?;
                    if let Some(output) = messages.iter().find(|message| is_output(message)) {
                        let mut json = message_json(output);
                        json["inputMessageId"] = message_id.clone().into();
                        return Ok(json);
                    }
                    if messages.is_empty() {
                        break;
                    }
                }
            }
            if processed {
                return Ok(serde_json::json!({ "inputMessageId": message_id, "value": null }));
            }
            if Instant::now() >= deadline {
                let why = if acknowledged_when_processed {
                    "did not process"
                } else {
                    "gave no output for (under ATMOST_ONCE only an output shows that a message was processed)"
                };
                return Err(WorkerError::Timeout(format!(
                    "{fqfn} {why} message {message_id} of {topic} within TRIGGER_TIMEOUT_MS ({TRIGGER_TIMEOUT_MS} ms); see its status"
                )));
            }
            std::thread::sleep(TRIGGER_POLL);
        }
    }

    /// The committed value of a state key, as FunctionState JSON.
    pub fn query_state(&self, fqfn: &Fqfn, key: &str) -> Result<serde_json::Value, WorkerError> {
        self.function(fqfn)?;
        crate::engine::state::check_user_key(key).map_err(WorkerError::BadRequest)?;
        let stored = self.store.table(fqfn).and_then(|table| table.get(key)).map_err(anyhow::Error::from)?;
        match stored {
            Some(stored) => Ok(state_json(key, stored)),
            None => Err(WorkerError::NotFound(format!("function {fqfn} has no state under key `{key}`"))),
        }
    }

    /// Sets a state key to bytes; counters are refused, both as the new value and as the old one.
    pub fn put_state(&self, fqfn: &Fqfn, key: &str, value: Vec<u8>) -> Result<serde_json::Value, WorkerError> {
        self.function(fqfn)?;
        self.check_disk()?;
        crate::engine::state::check_user_key(key).map_err(WorkerError::BadRequest)?;
        if key.len() > MAX_STATE_KEY_LEN {
            return Err(WorkerError::BadRequest(format!(
                "state key is {} bytes; the limit (MAX_STATE_KEY_LEN) is {MAX_STATE_KEY_LEN}",
                key.len()
            )));
        }
        if value.len() > MAX_STATE_VALUE_SIZE {
            return Err(WorkerError::BadRequest(format!(
                "state value is {} bytes; the limit (MAX_STATE_VALUE_SIZE) is {MAX_STATE_VALUE_SIZE}",
                value.len()
            )));
        }
        let current = self.store.table(fqfn).and_then(|table| table.get(key)).map_err(anyhow::Error::from)?;
        if matches!(current, Some(Versioned { value: StateValue::Counter(_), .. })) {
            return Err(WorkerError::BadRequest(format!(
                "state key `{key}` of {fqfn} is a counter; putstate does not set counters, only the function's incr-counter changes them"
            )));
        }
        let stored = self.store.put(fqfn, key, StateValue::Bytes(value)).map_err(anyhow::Error::from)?;
        Ok(state_json(key, stored))
    }

    /// Appends messages to a topic; returns their ids.
    pub fn produce(&self, topic: &TopicName, messages: Vec<OutMessage>) -> Result<Vec<String>, WorkerError> {
        for (index, message) in messages.iter().enumerate() {
            instance::check_message(message)
                .map_err(|limit| WorkerError::BadRequest(format!("message {} was refused: {limit}", index + 1)))?;
        }
        self.check_disk()?;
        let sequences = self.store.produce(topic, messages).map_err(anyhow::Error::from)?;
        Ok(sequences.into_iter().map(crate::engine::broker::message_id).collect())
    }

    /// Stops every instance after its current batch: what the worker does before it exits.
    pub fn shutdown(&self) {
        self.leave_cluster();
        let functions: Vec<Arc<Mutex<Function>>> = lock(&self.functions).values().cloned().collect();
        // Every instance is asked first, so that they all wind down together.
        let taken: Vec<_> =
            functions.iter().map(|function| (function, take_running(&mut lock(function), None))).collect();
        for (function, running) in taken {
            wait_for_stops(function, running);
        }
    }
}

/// Takes the loops of the function's instances (all, or those in `ids`) out of their slots and
/// asks each to stop; [`wait_for_stops`] waits for them.
fn take_running(function: &mut Function, ids: Option<&[u32]>) -> Vec<(u32, RunningInstance)> {
    let mut taken = Vec::new();
    for (instance_id, slot) in function.instances.iter_mut().enumerate() {
        let instance_id = instance_id as u32;
        if ids.is_none_or(|ids| ids.contains(&instance_id))
            && let Some(running) = slot.running.take()
        {
            running.request_stop();
            taken.push((instance_id, running));
        }
    }
    taken
}

/// Waits for taken loops to end, without the function's lock (its status and stats answer
/// meanwhile), and notes in their slots how those that failed ended.
fn wait_for_stops(function: &Mutex<Function>, taken: Vec<(u32, RunningInstance)>) {
    let ended: Vec<(u32, Result<(), instance::RunError>)> =
        taken.into_iter().map(|(instance_id, running)| (instance_id, running.stop())).collect();
    let mut function = lock(function);
    for (instance_id, result) in ended {
        if let (Err(error), Some(slot)) = (result, function.instances.get_mut(instance_id as usize)) {
            slot.error = Some(error.to_string());
        }
    }
}

/// Stops the function's instances (all, or those in `ids`) and waits for them, holding its lock
/// only to take them out; the caller holds its change lock, so that nothing starts them meanwhile.
fn drain(function: &Mutex<Function>, ids: Option<&[u32]>) {
    let taken = take_running(&mut lock(function), ids);
    wait_for_stops(function, taken);
}

/// Stops the instances of a function no one else can see yet (one whose start failed).
fn stop_instances(function: &mut Function) {
    for slot in &function.instances {
        if let Some(running) = &slot.running {
            running.request_stop();
        }
    }
    for slot in &mut function.instances {
        slot.stop();
    }
}

fn stats_json(stats: &Stats, minute: &crate::metrics::MinuteCounts) -> serde_json::Value {
    let user_metrics: BTreeMap<&String, f64> =
        stats.user_metrics.iter().map(|(name, (count, sum))| (name, sum / (*count).max(1) as f64)).collect();
    serde_json::json!({
        "receivedTotal": stats.received,
        "processedSuccessfullyTotal": stats.succeeded,
        "systemExceptionsTotal": stats.system_exceptions,
        "userExceptionsTotal": stats.user_exceptions,
        "deadLetteredTotal": stats.dead_lettered,
        "avgProcessLatency": stats.latency.mean_millis(),
        "oneMin": {
            "receivedTotal": minute.received,
            "processedSuccessfullyTotal": minute.succeeded,
            "systemExceptionsTotal": minute.system_exceptions,
            "userExceptionsTotal": minute.user_exceptions,
            "avgProcessLatency": minute.mean_latency_millis(),
        },
        "lastInvocation": stats.last_invocation.unwrap_or(0),
        "userMetrics": user_metrics,
    })
}
