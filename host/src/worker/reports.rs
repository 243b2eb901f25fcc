//! What the worker tells about its functions: status, stats and `/metrics`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::cluster;
use super::prometheus;
use super::{Function, Worker, WorkerError, lock};
use crate::metrics::Stats;
use crate::names::Fqfn;

impl Worker {
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
    pub(super) fn instance_stats(&self) -> Vec<(Fqfn, u32, Stats)> {
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
}

pub(super) fn stats_json(stats: &Stats, minute: &crate::metrics::MinuteCounts) -> serde_json::Value {
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
