//! A function's life in the worker: create, update and delete, and starting, stopping and
//! draining its instances.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use super::{
    FUNCTION_RECORD_PREFIX, Function, FunctionRecord, InstanceSlot, Worker, WorkerError, already_exists, lock,
    not_found,
};
use crate::engine::broker::BrokerError;
use crate::engine::state::StateStore;
use crate::instance::{self, FunctionLauncher, LaunchError, LogSink, RunningInstance};
use crate::names::Fqfn;
use crate::spec::FunctionSpec;

impl Worker {
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
        config.check_kind(prepared.kind()).map_err(WorkerError::BadRequest)?;
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
        if uploaded.is_none() && matches!(changes.code(), Ok(None)) && spec.same_apart_from_log_level(&current.spec) {
            return self.set_log_level(fqfn, &function, spec);
        }
        // Built and compiled under this function's change lock only.
        let package = self.package_bytes(&changes, spec.world(), uploaded)?;
        let prepared = match &package {
            Some((bytes, shown)) => Some(self.prepare(bytes, shown)?),
            None => None,
        };
        match &prepared {
            Some((_, prepared)) => config.check_kind(prepared.kind()),
            None => config.check_kind(lock(&function).prepared.kind()),
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

    /// An update that changes only the log level: the running instances take it at their next
    /// line, with no drain and no restart (Pulsar restarts the function for any update).
    fn set_log_level(
        &self,
        fqfn: &Fqfn,
        function: &Arc<Mutex<Function>>,
        spec: FunctionSpec,
    ) -> Result<FunctionSpec, WorkerError> {
        let mut function = lock(function);
        let mut record = function.record.clone();
        record.spec = spec.clone();
        self.save_record(fqfn, &record)?;
        function.config.log_level.set(spec.log_level());
        function.record = record;
        tracing::info!(%fqfn, level = ?spec.log_level(), "changed the function's log level");
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
        self.live_logs.remove(fqfn);
        tracing::info!(%fqfn, "deleted function");
        Ok(())
    }

    /// Deletes a function that could not be resumed: its record, its state, and its subscription
    /// if its record still says which.
    pub(super) fn delete_failed(&self, fqfn: &Fqfn) -> Result<(), WorkerError> {
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
    pub(super) fn remove_unused_packages(&self, digest: &str) {
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

    /// Starts every instance of this worker not stopped by an operator that is not running, and
    /// stops those the cluster has moved to another worker.
    pub(super) fn start_instances(&self, function: &mut Function) -> Result<(), WorkerError> {
        let count = function.config.parallelism;
        let fqfn = function.config.fqfn.clone();
        function.instances.resize_with(count as usize, InstanceSlot::default);
        for (instance_id, slot) in function.instances.iter_mut().enumerate() {
            if slot.running.is_some() && !self.placement.runs_here(&fqfn, instance_id as u32) {
                tracing::info!(%fqfn, instance_id, "instance moved to another worker");
                slot.stop();
            }
        }
        let mut idle = Vec::new();
        for instance_id in 0..count {
            let slot = &mut function.instances[instance_id as usize];
            if !function.record.stopped.contains(&instance_id)
                && self.placement.runs_here(&fqfn, instance_id)
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
                Err(error) if self.placement.shares_records() => {
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

    pub(super) fn start_instance(
        &self,
        function: &mut Function,
        instance_id: u32,
        consumer: Box<dyn crate::engine::broker::Subscription>,
    ) -> Result<(), WorkerError> {
        let config = &function.config;
        let (prepared, digest) = (function.prepared.clone(), &function.record.digest);
        let launcher = FunctionLauncher::new(
            config,
            prepared,
            digest,
            &*self.store as &dyn StateStore,
            LogSink::Worker(self.live_logs.of(&config.fqfn)),
        )
        .map_err(|error| WorkerError::BadRequest(error.to_string()))?;
        let slot = &mut function.instances[instance_id as usize];
        match launcher.executor(instance_id) {
            Err(error @ LaunchError::State(_)) => return Err(anyhow::Error::from(error).into()),
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
    pub(super) fn instance_ids(function: &Function, instance: Option<u32>) -> Result<Vec<u32>, WorkerError> {
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
        // Other workers learn of a restart from the record.
        let shared = self.placement.shares_records();
        if instance.is_some() || shared {
            if instance.is_some() {
                function.record.stopped.retain(|id| !ids.contains(id));
            }
            if shared {
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
pub(super) fn take_running(function: &mut Function, ids: Option<&[u32]>) -> Vec<(u32, RunningInstance)> {
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
pub(super) fn wait_for_stops(function: &Mutex<Function>, taken: Vec<(u32, RunningInstance)>) {
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
pub(super) fn drain(function: &Mutex<Function>, ids: Option<&[u32]>) {
    let taken = take_running(&mut lock(function), ids);
    wait_for_stops(function, taken);
}

/// Stops the instances of a function no one else can see yet (one whose start failed).
pub(super) fn stop_instances(function: &mut Function) {
    for slot in &function.instances {
        if let Some(running) = &slot.running {
            running.request_stop();
        }
    }
    for slot in &mut function.instances {
        slot.stop();
    }
}
