//! What the worker tells about its functions: status, stats and `/metrics`.

use std::sync::{Arc, Mutex};

use super::api::{
    FunctionStats, FunctionStatus, InstanceStats, InstanceStatsEntry, InstanceStatus, InstanceStatusEntry,
};
use super::prometheus;
use super::{Function, Worker, WorkerError, lock};
use crate::metrics::{MinuteCounts, Stats};
use crate::names::Fqfn;

impl Worker {
    /// Pulsar's FunctionStatus: every instance's status.
    pub fn status(&self, fqfn: &Fqfn) -> Result<FunctionStatus, WorkerError> {
        let function = self.function(fqfn)?;
        let mut function = lock(&function);
        let ids = Self::instance_ids(&function, None)?;
        let instances: Vec<InstanceStatusEntry> = ids
            .into_iter()
            .map(|instance_id| InstanceStatusEntry {
                instance_id,
                status: self.instance_status_of(fqfn, &mut function, instance_id),
            })
            .collect();
        Ok(FunctionStatus {
            num_instances: function.config.parallelism,
            num_running: instances.iter().filter(|instance| instance.status.running).count() as u32,
            instances,
        })
    }

    /// Pulsar's FunctionInstanceStatusData of one instance.
    pub fn instance_status(&self, fqfn: &Fqfn, instance_id: u32) -> Result<InstanceStatus, WorkerError> {
        let function = self.function(fqfn)?;
        let mut function = lock(&function);
        Self::instance_ids(&function, Some(instance_id))?;
        Ok(self.instance_status_of(fqfn, &mut function, instance_id))
    }

    /// An instance's status, asked of the worker that runs it when that is another.
    fn instance_status_of(&self, fqfn: &Fqfn, function: &mut Function, instance_id: u32) -> InstanceStatus {
        if let Some(status) = self.placement.status_elsewhere(fqfn, instance_id) {
            return status;
        }
        let slot = &mut function.instances[instance_id as usize];
        let running = slot.is_running();
        let error = slot.error.clone().unwrap_or_default();
        InstanceStatus::new(running, error, &slot.metrics.snapshot(), self.placement.worker_id())
    }

    /// Pulsar's FunctionStats: the totals over the instances, then each instance's.
    pub fn stats(&self, fqfn: &Fqfn) -> Result<FunctionStats, WorkerError> {
        let function = self.function(fqfn)?;
        let function = lock(&function);
        let ids = Self::instance_ids(&function, None)?;
        let mut instances = Vec::new();
        let (mut local_total, mut local_minute) = (Vec::new(), MinuteCounts::default());
        for instance_id in ids {
            let metrics = match self.placement.stats_elsewhere(fqfn, instance_id) {
                Some(elsewhere) => elsewhere?,
                None => {
                    let metrics = &function.instances[instance_id as usize].metrics;
                    let (stats, minute) = (metrics.snapshot(), metrics.last_minute());
                    local_minute.add(&minute);
                    let instance = InstanceStats::new(&stats, &minute);
                    local_total.push(stats);
                    instance
                }
            };
            instances.push(InstanceStatsEntry { instance_id, metrics });
        }
        // Here the counts themselves are known, and metric means combine exactly; from other
        // workers only their stats are.
        let totals = match local_total.len() == instances.len() {
            true => InstanceStats::new(&Stats::total(local_total.iter()), &local_minute),
            false => InstanceStats::total(instances.iter().map(|instance| &instance.metrics)),
        };
        Ok(FunctionStats { totals, instances })
    }

    /// Pulsar's FunctionInstanceStatsData of one instance.
    pub fn instance_stats(&self, fqfn: &Fqfn, instance_id: u32) -> Result<InstanceStats, WorkerError> {
        let function = self.function(fqfn)?;
        let function = lock(&function);
        Self::instance_ids(&function, Some(instance_id))?;
        if let Some(elsewhere) = self.placement.stats_elsewhere(fqfn, instance_id) {
            return elsewhere;
        }
        let metrics = &function.instances[instance_id as usize].metrics;
        Ok(InstanceStats::new(&metrics.snapshot(), &metrics.last_minute()))
    }

    /// Every instance's counts, labelled, for `/metrics`.
    pub(super) fn labelled_stats(&self) -> Vec<(Fqfn, u32, Stats)> {
        let functions: Vec<(Fqfn, Arc<Mutex<Function>>)> =
            lock(&self.functions).iter().map(|(fqfn, function)| (fqfn.clone(), function.clone())).collect();
        let mut all = Vec::new();
        for (fqfn, function) in functions {
            let function = lock(&function);
            for (instance_id, slot) in function.instances.iter().enumerate() {
                if self.placement.runs_here(&fqfn, instance_id as u32) {
                    all.push((fqfn.clone(), instance_id as u32, slot.metrics.snapshot()));
                }
            }
        }
        all
    }

    /// Prometheus text for every instance of every function.
    pub fn metrics_text(&self) -> String {
        prometheus::render(&self.labelled_stats())
    }
}
