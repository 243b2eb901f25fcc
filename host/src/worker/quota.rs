//! What a function may take: the disk guard, quotas and the worker's capacity, checked and
//! reserved before anything starts.

use super::disk_guard;
use super::ledger::Footprint;
use super::{FUNCTION_RECORD_PREFIX, FunctionRecord, MAPS_PER_INSTANCE, Worker, WorkerError, memory_maps};
use crate::function::FunctionConfig;
use crate::names::Fqfn;
use crate::spec::FunctionSpec;

impl Worker {
    /// Refuses a write while the data directory's disk is below its reserve of free space.
    pub(super) fn check_disk(&self) -> Result<(), WorkerError> {
        self.disk_guard.as_ref().map_or(Ok(()), disk_guard::DiskGuard::check)
    }

    /// `consumer`, held by the free-space guard, if the worker has one.
    pub(super) fn guarded(
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
    pub(super) fn reserve(&self, fqfn: &Fqfn, config: &FunctionConfig) -> Result<Option<Footprint>, WorkerError> {
        // A cluster counts its tenants' functions in the records that every worker shares; read
        // before the ledger is locked, so that no store call holds up other reservations.
        let recorded = match self.placement.shares_records() {
            true => Some(self.recorded_footprints(fqfn)?),
            false => None,
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
    pub(super) fn recorded_footprints(&self, fqfn: &Fqfn) -> Result<Vec<Footprint>, WorkerError> {
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
    pub(super) fn check_capacity(&self, fqfn: &Fqfn, parallelism: u32, others: u32) -> Result<(), WorkerError> {
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

    /// The config of a function as this worker runs it: limited to its tenant's topics and grants.
    pub(super) fn function_config(&self, spec: &FunctionSpec) -> Result<FunctionConfig, WorkerError> {
        let config = spec.resolve().map_err(|error| WorkerError::BadRequest(error.to_string()))?;
        let access = self.access.topic_access(config.fqfn.tenant());
        config.within(access).map_err(|error| WorkerError::Forbidden(error.to_string()))
    }

    /// Refuses a function of `footprint` beside the tenant's `others` if it would take its tenant
    /// past its quota.
    pub(super) fn check_quota(
        &self,
        fqfn: &Fqfn,
        footprint: Footprint,
        others: &[Footprint],
    ) -> Result<(), WorkerError> {
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
}
