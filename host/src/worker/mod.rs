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
pub mod api;
pub mod client;
pub mod cluster;
mod data;
pub mod disk_guard;
mod history;
mod ledger;
mod lifecycle;
mod live_logs;
mod placement;
pub mod produce_batch;
mod prometheus;
mod quota;
mod records;
mod reports;
mod rest_consumer;
mod tenant_gate;
mod tenant_rates;
pub mod tls;
mod topic_admin;

pub use data::message_json_len;
pub use history::AsOf;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use ledger::Footprint;
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::function::FunctionConfig;
use crate::guest_build::Builder;
use crate::instance::{MessageContext, RunningInstance};
use crate::limits::MAX_HELD_REQUESTS_PER_TENANT;
use crate::metrics::InstanceMetrics;
use crate::names::Fqfn;
use crate::runtime::{PreparedFunction, Runtime};
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
    /// The engine cannot do what was asked (a verb JetStream lacks); the reason says what to do instead.
    #[error("{0}")]
    Unsupported(String),
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
    /// How long a REST producer's messages wait for others' to be appended with them
    /// (`--batch-max-delay-ms`; zero: each request alone).
    pub batch_max_delay: Duration,
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
    /// Where instances run; the cluster itself when there is one.
    placement: Arc<dyn placement::Placement>,
    cluster: Option<Arc<cluster::Cluster>>,
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
    /// Held while a namespace's policies are read, changed and written back, so that two
    /// changes (retention and TTL, say) do not undo each other.
    policy_changes: Mutex<()>,
    /// The REST producers' open batches.
    produce_batches: produce_batch::ProduceBatches,
    /// Functions being re-driven: one re-drive of a function at a time.
    redrives: Mutex<BTreeSet<Fqfn>>,
    /// The recent log lines of each function this worker runs.
    live_logs: live_logs::LiveLogs,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a function's lock leaves its slots as they were: each update is one assignment.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Worker {
    /// Opens the worker on `store` and starts every function recorded there; in a cluster the
    /// functions start when [`Worker::run_cluster`] has learnt which instances are this worker's.
    pub fn open(config: WorkerConfig, store: Arc<dyn Engine>, runtime: Runtime) -> anyhow::Result<Self> {
        let cluster = config.cluster.map(|config| Arc::new(cluster::Cluster::new(config)));
        let placement: Arc<dyn placement::Placement> = match &cluster {
            Some(cluster) => cluster.clone(),
            None => Arc::new(placement::Alone),
        };
        let worker = Self {
            placement,
            produce_batches: produce_batch::ProduceBatches::new(store.clone(), config.batch_max_delay),
            store,
            runtime,
            builder: Builder::new(&config.cache_dir),
            max_instances: config.max_instances,
            functions: Mutex::new(BTreeMap::new()),
            cluster,
            access: config.access,
            changes: ledger::ChangeLocks::default(),
            ledger: ledger::Ledger::default(),
            rates: Arc::default(),
            consumer_gate: rest_consumer::ConsumerGate::default(),
            held: tenant_gate::TenantGate::new(MAX_HELD_REQUESTS_PER_TENANT),
            disk_guard: config.disk_guard,
            failed: Mutex::new(BTreeMap::new()),
            policy_changes: Mutex::new(()),
            redrives: Mutex::default(),
            live_logs: live_logs::LiveLogs::default(),
        };
        // Shared functions start when the worker knows which instances are its own.
        if worker.placement.shares_records() {
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
        config.check_kind(prepared.kind()).map_err(|reason| anyhow::anyhow!(reason))?;
        self.reserve(fqfn, &config)?;
        let mut function = Function { instances: Vec::new(), config: Arc::new(config), prepared, record };
        if let Err(error) = self.start_instances(&mut function) {
            lifecycle::stop_instances(&mut function);
            self.ledger.release(fqfn);
            return Err(error.into());
        }
        tracing::info!(%fqfn, instances = function.config.parallelism, "resumed function");
        lock(&self.functions).insert(fqfn.clone(), Arc::new(Mutex::new(function)));
        Ok(())
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
        if self.placement.shares_records() {
            let changes = (!change_lock_held).then(|| self.changes.of(fqfn));
            let _changing = changes.as_ref().map(|changes| lock(changes));
            self.catch_up_with(fqfn).map_err(WorkerError::Internal)?;
        }
        lock(&self.functions).get(fqfn).cloned().ok_or_else(|| not_found(fqfn))
    }

    /// Compiles and links a component, refusing anything that is not an fnhost function.
    fn prepare(&self, bytes: &[u8], shown: &str) -> Result<(String, PreparedFunction<MessageContext>), WorkerError> {
        let refused = |error: crate::runtime::LoadError| WorkerError::BadRequest(error.to_string());
        let code = self.runtime.load_bytes(bytes, shown).map_err(refused)?;
        let prepared = code.prepare::<MessageContext>().map_err(refused)?;
        Ok((code.digest().to_owned(), prepared))
    }

    /// Whether this worker is one of a cluster.
    pub fn in_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// The access rules this worker was started with.
    pub fn access(&self) -> &access::Access {
        &self.access
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
        if self.placement.shares_records() {
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
}
