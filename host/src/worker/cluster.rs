//! Cluster mode: several workers on one distributed engine share every function, and each runs
//! the instances the leader assigns to it.
//!
//! Every worker renews its membership each [`TICK`] and tries to take or renew the leader lease;
//! both expire on their own when a worker dies.
//! The leader keeps the assignment record (`cluster/assignments`): instances keep their worker
//! while it lives, and the others go to the live worker with the fewest (Pulsar's round-robin
//! scheduler); a rebalance request (`cluster/rebalance`) spreads them all again.
//! Each round, every worker reads the function records and the assignments and catches up:
//! it loads functions created elsewhere, applies updates, drops deleted functions, and starts
//! and stops its instances to match.
//! Admin requests about an instance that runs elsewhere are asked of its worker over HTTP.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::api::{ClusterInfo, InstanceStats, InstanceStatus, WorkerInfo};
use super::client::{Body, Client, encode_segment};
use super::placement::Placement;
use super::{FUNCTION_RECORD_PREFIX, Footprint, Function, FunctionRecord, Worker, WorkerError, lock};
use crate::engine::metadata::Membership;
use crate::instance::MessageContext;
use crate::names::Fqfn;

/// How often a worker renews its membership, and the leader schedules.
pub const TICK: Duration = Duration::from_millis(500);
/// How often the leader brings the state views up to their functions' latest commits.
const MATERIALISE_EVERY: Duration = Duration::from_millis(500);
/// How often, in rounds of MATERIALISE_EVERY, the leader frees what every subscription has
/// acknowledged.
const FREE_EVERY_ROUNDS: u32 = 10;
/// The metadata record of the assignments.
const ASSIGNMENTS_RECORD: &str = "cluster/assignments";
/// The metadata record that asks the leader to spread every instance again.
const REBALANCE_RECORD: &str = "cluster/rebalance";
/// How long a request to another worker may take.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// How a worker takes part in a cluster.
pub struct ClusterConfig {
    /// Membership and the leader lease, in the shared engine.
    pub membership: Arc<dyn Membership>,
    /// This worker's name, unique in the cluster.
    pub worker_id: String,
    /// Where other workers reach this worker's admin API.
    pub url: String,
    /// The operator token this worker presents to the others, when they require tokens.
    pub token: Option<String>,
    /// The authority that signed the other workers' certificates, when they serve HTTPS.
    pub authority: Option<super::tls::TrustedAuthority>,
}

/// Which worker runs each instance of each function.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Assignments(BTreeMap<String, Vec<Option<String>>>);

/// What a worker knows of the cluster.
pub(super) struct Cluster {
    config: ClusterConfig,
    assignments: Mutex<Assignments>,
    /// Live workers and their admin URLs.
    members: Mutex<BTreeMap<String, String>>,
    leading: AtomicBool,
    stopping: AtomicBool,
    /// When this worker last renewed its membership.
    renewed: Mutex<Instant>,
}

impl Cluster {
    pub(super) fn new(config: ClusterConfig) -> Self {
        Self {
            config,
            assignments: Mutex::default(),
            members: Mutex::default(),
            leading: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            renewed: Mutex::new(Instant::now()),
        }
    }

    fn owner(&self, fqfn: &Fqfn, instance_id: u32) -> Option<String> {
        lock(&self.assignments).0.get(&fqfn.to_string())?.get(instance_id as usize)?.clone()
    }

    /// Asks the worker running an instance for `what` (`status` or `stats`) of it.
    fn ask_owner<T: DeserializeOwned>(&self, fqfn: &Fqfn, instance_id: u32, what: &str) -> Result<T, String> {
        let owner = self.owner(fqfn, instance_id).ok_or("the instance is not assigned to a live worker yet")?;
        let url = lock(&self.members).get(&owner).cloned().ok_or(format!("its worker {owner} is not live"))?;
        let path = format!(
            "/admin/v3/functions/{}/{}/{}/{instance_id}/{what}",
            encode_segment(fqfn.tenant()),
            encode_segment(fqfn.namespace()),
            encode_segment(fqfn.name())
        );
        Client::new(&url, PEER_TIMEOUT, self.config.token.clone(), self.config.authority.as_ref())
            .call("GET", &path, Body::Empty)
            .map_err(|error| format!("its worker {owner} did not answer: {error}"))
    }

    /// Live workers, the leader and the assignments, as `GET /admin/v2/worker/cluster` shows them.
    pub(super) fn describe(&self, leader: Option<String>) -> ClusterInfo {
        let workers = lock(&self.members)
            .iter()
            .map(|(worker, url)| WorkerInfo { worker_id: worker.clone(), url: url.clone() })
            .collect();
        ClusterInfo { workers, leader, assignments: lock(&self.assignments).0.clone() }
    }
}

/// In a cluster, an instance runs where the leader's assignment puts it.
impl Placement for Cluster {
    fn worker_id(&self) -> &str {
        &self.config.worker_id
    }

    fn runs_here(&self, fqfn: &Fqfn, instance_id: u32) -> bool {
        self.owner(fqfn, instance_id).as_deref() == Some(self.worker_id())
    }

    fn shares_records(&self) -> bool {
        true
    }

    fn status_elsewhere(&self, fqfn: &Fqfn, instance_id: u32) -> Option<InstanceStatus> {
        if self.runs_here(fqfn, instance_id) {
            return None;
        }
        Some(self.ask_owner(fqfn, instance_id, "status").unwrap_or_else(|error| InstanceStatus {
            running: false,
            error,
            worker_id: self.owner(fqfn, instance_id),
            ..InstanceStatus::default()
        }))
    }

    fn stats_elsewhere(&self, fqfn: &Fqfn, instance_id: u32) -> Option<Result<InstanceStats, WorkerError>> {
        if self.runs_here(fqfn, instance_id) {
            return None;
        }
        Some(
            self.ask_owner(fqfn, instance_id, "stats")
                .map_err(|error| WorkerError::Conflict(format!("instance {instance_id} of {fqfn}: {error}"))),
        )
    }
}

/// The assignments after `current`, for `functions` (name and instance count) and the live
/// `workers`: instances keep a live worker (unless `rebalance`), the rest go to the worker with
/// the fewest, the first by name on a tie.
fn schedule(
    current: &Assignments,
    functions: &[(String, u32)],
    workers: &BTreeSet<String>,
    rebalance: bool,
) -> Assignments {
    let mut load: BTreeMap<&str, usize> = workers.iter().map(|worker| (worker.as_str(), 0)).collect();
    let mut next = Assignments::default();
    for (fqfn, parallelism) in functions {
        let kept: Vec<Option<String>> = (0..*parallelism as usize)
            .map(|instance_id| {
                let owner = current.0.get(fqfn)?.get(instance_id)?.as_ref()?;
                (!rebalance && workers.contains(owner)).then(|| owner.clone())
            })
            .collect();
        for owner in kept.iter().flatten() {
            *load.get_mut(owner.as_str()).expect("kept owners are live") += 1;
        }
        next.0.insert(fqfn.clone(), kept);
    }
    for owners in next.0.values_mut() {
        for owner in owners.iter_mut().filter(|owner| owner.is_none()) {
            let Some((&fewest, _)) = load.iter().min_by_key(|(worker, count)| (**count, **worker)) else {
                return next;
            };
            *load.get_mut(fewest).expect("from the map") += 1;
            *owner = Some(fewest.to_owned());
        }
    }
    next
}

impl Worker {
    /// Runs the cluster's rounds on a thread of its own until [`Worker::shutdown`]; a worker
    /// without a cluster returns at once.
    pub fn run_cluster(self: &Arc<Self>) -> anyhow::Result<()> {
        let Some(cluster) = &self.cluster else { return Ok(()) };
        // The first round runs here, so that a worker that cannot reach the engine fails to start.
        self.cluster_round().context("cannot join the cluster")?;
        tracing::info!(worker = cluster.worker_id(), "joined the cluster");
        let worker: Weak<Self> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("fnhost-cluster".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(TICK);
                    let Some(worker) = worker.upgrade() else { return };
                    if worker.cluster.as_ref().is_none_or(|cluster| cluster.stopping.load(Ordering::Relaxed)) {
                        return;
                    }
                    if let Err(error) = worker.cluster_round() {
                        tracing::warn!("cluster round failed: {error:#}");
                    }
                }
            })
            .context("cannot start the cluster thread")?;
        // The leader's upkeep, on a thread of its own, so that it never delays a membership renewal.
        let worker: Weak<Self> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("fnhost-upkeep".into())
            .spawn(move || {
                for round in 1_u32.. {
                    std::thread::sleep(MATERIALISE_EVERY);
                    let Some(worker) = worker.upgrade() else { return };
                    let Some(cluster) = &worker.cluster else { return };
                    if cluster.stopping.load(Ordering::Relaxed) {
                        return;
                    }
                    if !cluster.leading.load(Ordering::Relaxed) {
                        continue;
                    }
                    if let Err(error) = worker.store.materialise_views() {
                        tracing::warn!("cannot bring the state views up to date: {error}");
                    }
                    if round.is_multiple_of(FREE_EVERY_ROUNDS) {
                        match worker.store.free_acknowledged() {
                            Ok(0) => {}
                            Ok(freed) => tracing::debug!(freed, "freed acknowledged entries"),
                            Err(error) => tracing::warn!("cannot free acknowledged entries: {error}"),
                        }
                    }
                }
            })
            .context("cannot start the upkeep thread")?;
        Ok(())
    }

    /// One round: renew membership, lead if possible, then catch up with records and assignments.
    fn cluster_round(&self) -> anyhow::Result<()> {
        let cluster = self.cluster.as_ref().expect("called in a cluster");
        let membership = &cluster.config.membership;
        let info = serde_json::to_string(&WorkerInfo { worker_id: String::new(), url: cluster.config.url.clone() })?;
        if let Err(error) = membership.heartbeat(cluster.worker_id(), info.as_bytes()) {
            // Past half the membership's lease, the leader may soon give this worker's instances
            // to others: stop them first, so that no instance runs twice.
            let fence_after = membership.lease() / 2;
            if lock(&cluster.renewed).elapsed() > fence_after && !lock(&cluster.assignments).0.is_empty() {
                tracing::warn!("cannot renew membership; stopping every instance here until it can");
                *lock(&cluster.assignments) = Assignments::default();
                let functions: Vec<Arc<Mutex<Function>>> = lock(&self.functions).values().cloned().collect();
                for function in functions {
                    self.start_instances(&mut lock(&function))?;
                }
            }
            return Err(error.into());
        }
        *lock(&cluster.renewed) = Instant::now();
        let members: BTreeMap<String, String> = membership
            .members()?
            .into_iter()
            .filter_map(|(worker, info)| {
                let info: WorkerInfo = serde_json::from_slice(&info).ok()?;
                Some((worker, info.url))
            })
            .collect();
        *lock(&cluster.members) = members.clone();
        let records = self.store.records(FUNCTION_RECORD_PREFIX)?;
        let leads = membership.lead(cluster.worker_id())?;
        if leads != cluster.leading.swap(leads, Ordering::Relaxed) {
            tracing::info!(worker = cluster.worker_id(), leads, "leadership changed");
        }
        let stored = self.record(ASSIGNMENTS_RECORD).and_then(|bytes| match bytes {
            Some(bytes) => serde_json::from_slice(&bytes).context("the assignment record is damaged"),
            None => Ok(Assignments::default()),
        });
        // The leader replaces a damaged record; the others wait for it to.
        let assignments = match leads {
            true => self.schedule(&records, &members.keys().cloned().collect(), stored.unwrap_or_default())?,
            false => stored?,
        };
        *lock(&cluster.assignments) = assignments;
        self.catch_up(records);
        Ok(())
    }

    /// The metadata record under exactly `key`, if there is one.
    fn record(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.store.records(key)?.into_iter().find(|(found, _)| found == key).map(|(_, bytes)| bytes))
    }

    /// The leader's part of a round: the assignments after `current`, written if instances
    /// need a worker.
    fn schedule(
        &self,
        records: &[(String, Vec<u8>)],
        workers: &BTreeSet<String>,
        current: Assignments,
    ) -> anyhow::Result<Assignments> {
        let functions: Vec<(String, u32)> = records
            .iter()
            .filter_map(|(key, bytes)| {
                let record: FunctionRecord = serde_json::from_slice(bytes).ok()?;
                let parallelism = record.spec.resolve().ok()?.parallelism;
                Some((key.strip_prefix(FUNCTION_RECORD_PREFIX)?.to_owned(), parallelism))
            })
            .collect();
        let rebalance = self.record(REBALANCE_RECORD)?.is_some();
        let next = schedule(&current, &functions, workers, rebalance);
        if next != current {
            tracing::info!(?next, "assigned instances");
            self.store.put_record(ASSIGNMENTS_RECORD, &serde_json::to_vec(&next).expect("serializes"))?;
        }
        if rebalance {
            self.store.remove_record(REBALANCE_RECORD)?;
        }
        Ok(next)
    }

    /// Loads, updates and drops functions to match `records`, and runs this worker's instances.
    /// Each function is caught up under its change lock, with its record read again where a
    /// change made here since `records` were read could make them stale.
    fn catch_up(&self, records: Vec<(String, Vec<u8>)>) {
        let mut seen = BTreeSet::new();
        for (key, bytes) in records {
            let record: FunctionRecord = match serde_json::from_slice(&bytes) {
                Ok(record) => record,
                Err(error) => {
                    tracing::error!(key, "the function record is damaged: {error}");
                    continue;
                }
            };
            let Ok(fqfn) = record.spec.fqfn() else { continue };
            seen.insert(fqfn.clone());
            let changes = self.changes.of(&fqfn);
            let _changing = lock(&changes);
            let known = lock(&self.functions).get(&fqfn).cloned();
            let caught_up = match known {
                // Only the assignments may have changed.
                Some(function) if lock(&function).record == record => {
                    self.start_instances(&mut lock(&function)).map_err(anyhow::Error::from)
                }
                _ => self.catch_up_with(&fqfn),
            };
            if let Err(error) = caught_up {
                tracing::error!(%fqfn, "cannot run the function here: {error:#}");
            }
        }
        let unseen: Vec<Fqfn> = lock(&self.functions).keys().filter(|fqfn| !seen.contains(*fqfn)).cloned().collect();
        for fqfn in unseen {
            let changes = self.changes.of(&fqfn);
            let _changing = lock(&changes);
            match self.record(&format!("{FUNCTION_RECORD_PREFIX}{fqfn}")) {
                // Created here since the records were read.
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%fqfn, "cannot read the function's record, so it runs on: {error:#}");
                    continue;
                }
            }
            let Some(function) = lock(&self.functions).remove(&fqfn) else { continue };
            super::lifecycle::drain(&function, None);
            self.ledger.release(&fqfn);
            self.live_logs.remove(&fqfn);
            tracing::info!(%fqfn, "function deleted on another worker");
        }
    }

    /// Loads `fqfn` now if it has a record: for a request that names a function this worker has
    /// not caught up with yet, or a round whose record of it may be stale. The caller holds the
    /// function's change lock.
    pub(super) fn catch_up_with(&self, fqfn: &Fqfn) -> anyhow::Result<()> {
        let Some(bytes) = self.record(&format!("{FUNCTION_RECORD_PREFIX}{fqfn}"))? else { return Ok(()) };
        self.catch_up_function(fqfn, serde_json::from_slice(&bytes).context("the function record is damaged")?)
    }

    fn catch_up_function(&self, fqfn: &Fqfn, record: FunctionRecord) -> anyhow::Result<()> {
        let existing = lock(&self.functions).get(fqfn).cloned();
        let Some(function) = existing else {
            let config = self.function_config(&record.spec)?;
            let prepared = self.load_package(&record.digest)?.prepare::<MessageContext>()?;
            config.check_kind(prepared.kind()).map_err(anyhow::Error::msg)?;
            self.ledger.set(fqfn, Footprint::of(&config));
            let mut function = Function { instances: Vec::new(), config: Arc::new(config), prepared, record };
            self.start_instances(&mut function)?;
            lock(&self.functions).insert(fqfn.clone(), Arc::new(Mutex::new(function)));
            return Ok(());
        };
        let same_config = {
            let known = lock(&function);
            let same =
                known.record.spec.same_apart_from_log_level(&record.spec) && known.record.digest == record.digest;
            if same {
                // Another worker's update of the level alone: the running instances take it.
                known.config.log_level.set(record.spec.log_level());
            }
            same
        };
        if !same_config {
            super::lifecycle::drain(&function, None);
            let config = self.function_config(&record.spec)?;
            let prepared = match lock(&function).record.digest != record.digest {
                true => Some(self.load_package(&record.digest)?.prepare::<MessageContext>()?),
                false => None,
            };
            self.ledger.set(fqfn, Footprint::of(&config));
            let mut function = lock(&function);
            if let Some(prepared) = prepared {
                function.prepared = prepared;
            }
            function.config = Arc::new(config);
        } else {
            let restarted: Vec<u32> = {
                let known = lock(&function);
                (0..known.instances.len() as u32)
                    .filter(|instance_id| {
                        record.stopped.contains(instance_id)
                            || record.restarts.get(instance_id) != known.record.restarts.get(instance_id)
                    })
                    .collect()
            };
            super::lifecycle::drain(&function, Some(&restarted));
            let known = lock(&function);
            for &instance_id in &restarted {
                if record.restarts.get(&instance_id) != known.record.restarts.get(&instance_id) {
                    known.instances[instance_id as usize].metrics.record_restart();
                }
            }
        }
        let mut function = lock(&function);
        function.record = record;
        self.start_instances(&mut function)?;
        Ok(())
    }

    /// Asks the leader to spread every instance over the live workers again.
    pub fn rebalance(&self) -> Result<(), WorkerError> {
        self.cluster()?;
        Ok(self.store.put_record(REBALANCE_RECORD, b"{}").map_err(anyhow::Error::from)?)
    }

    /// The cluster: live workers, the leader and the assignments.
    pub fn cluster_info(&self) -> Result<ClusterInfo, WorkerError> {
        let cluster = self.cluster()?;
        let leader = cluster.config.membership.leader().map_err(anyhow::Error::from)?;
        Ok(cluster.describe(leader))
    }

    fn cluster(&self) -> Result<&Cluster, WorkerError> {
        self.cluster
            .as_deref()
            .ok_or_else(|| WorkerError::BadRequest("this worker is not in a cluster (start it with --cluster)".into()))
    }

    /// Leaves the cluster: no more rounds, and membership and leadership given up at once.
    pub(super) fn leave_cluster(&self) {
        if let Some(cluster) = &self.cluster {
            cluster.stopping.store(true, Ordering::Relaxed);
            cluster.config.membership.leave(cluster.worker_id());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workers(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    fn count(assignments: &Assignments, worker: &str) -> usize {
        assignments.0.values().flatten().filter(|owner| owner.as_deref() == Some(worker)).count()
    }

    #[test]
    fn instances_spread_evenly_and_keep_their_worker_until_it_dies() {
        let functions = vec![("t/n/a".to_owned(), 3), ("t/n/b".to_owned(), 2)];
        let first = schedule(&Assignments::default(), &functions, &workers(&["w1", "w2", "w3"]), false);
        assert_eq!([count(&first, "w1"), count(&first, "w2"), count(&first, "w3")], [2, 2, 1]);
        assert!(first.0.values().flatten().all(Option::is_some));

        let again = schedule(&first, &functions, &workers(&["w1", "w2", "w3"]), false);
        assert_eq!(again, first, "a stable cluster moves nothing");

        let after_death = schedule(&first, &functions, &workers(&["w1", "w3"]), false);
        for (fqfn, owners) in &first.0 {
            for (instance_id, owner) in owners.iter().enumerate() {
                let now = &after_death.0[fqfn][instance_id];
                if owner.as_deref() == Some("w2") {
                    assert_ne!(now.as_deref(), Some("w2"), "{fqfn} {instance_id} left the dead worker");
                } else {
                    assert_eq!(now, owner, "{fqfn} {instance_id} stayed");
                }
            }
        }
        assert_eq!(count(&after_death, "w1") + count(&after_death, "w3"), 5);

        let joined = schedule(&after_death, &functions, &workers(&["w1", "w2", "w3"]), false);
        assert_eq!(count(&joined, "w2"), 0, "a new worker gets nothing until a rebalance");
        let rebalanced = schedule(&joined, &functions, &workers(&["w1", "w2", "w3"]), true);
        assert_eq!([count(&rebalanced, "w1"), count(&rebalanced, "w2"), count(&rebalanced, "w3")], [2, 2, 1]);
    }
}
