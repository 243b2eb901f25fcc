//! Where a function's instances run: the one thing that differs between a worker alone and a
//! worker in a cluster, behind one trait, so that the rest of the worker does not branch on
//! cluster mode.

use super::WorkerError;
use super::api::{InstanceStats, InstanceStatus};
use crate::names::Fqfn;

/// Where instances run, and where the truth about functions is kept.
pub(super) trait Placement: Send + Sync {
    /// This worker's name, as statuses show it.
    fn worker_id(&self) -> &str;

    /// True when instance `instance_id` of `fqfn` is this worker's to run.
    fn runs_here(&self, fqfn: &Fqfn, instance_id: u32) -> bool;

    /// True when other workers change the function records too: then the records, not this
    /// worker's copy (which may be a round behind), say which functions exist and what each
    /// tenant holds; functions start once this worker knows which instances are its own; and a
    /// failure to subscribe waits for the next round rather than failing the change.
    fn shares_records(&self) -> bool;

    /// The status of an instance another worker runs, asked of that worker; `None` when it
    /// runs here.
    fn status_elsewhere(&self, fqfn: &Fqfn, instance_id: u32) -> Option<InstanceStatus>;

    /// The stats of an instance another worker runs, asked of that worker; `None` when it
    /// runs here.
    fn stats_elsewhere(&self, fqfn: &Fqfn, instance_id: u32) -> Option<Result<InstanceStats, WorkerError>>;
}

/// A worker alone: every instance is its own.
pub(super) struct Alone;

impl Placement for Alone {
    fn worker_id(&self) -> &str {
        "embedded"
    }

    fn runs_here(&self, _fqfn: &Fqfn, _instance_id: u32) -> bool {
        true
    }

    fn shares_records(&self) -> bool {
        false
    }

    fn status_elsewhere(&self, _fqfn: &Fqfn, _instance_id: u32) -> Option<InstanceStatus> {
        None
    }

    fn stats_elsewhere(&self, _fqfn: &Fqfn, _instance_id: u32) -> Option<Result<InstanceStats, WorkerError>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_alone_runs_every_instance_and_asks_no_one() {
        let fqfn = Fqfn::parse("a/b/c").unwrap();
        let alone = Alone;
        assert!((0..4).all(|instance_id| alone.runs_here(&fqfn, instance_id)));
        assert!(alone.status_elsewhere(&fqfn, 0).is_none());
        assert!(alone.stats_elsewhere(&fqfn, 0).is_none());
        assert!(!alone.shares_records());
    }
}
